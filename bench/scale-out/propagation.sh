#!/usr/bin/env bash
# Revoke-to-refusal time across keygate nodes. Three in-process nodes (each its own engine,
# connection pool and change listener) share one PostgreSQL database; every key is cached on
# nodes B and C, revoked through node A, and B and C are polled without pause from the
# moment the revoke call returns until both refuse it. Prints p50/p99/max.
#
#   bash bench/scale-out/propagation.sh            # 100 revocations
#   KEYGATE_BENCH_REVOCATIONS=1000 bash bench/scale-out/propagation.sh
#
# Uses the server at KEYGATE_TEST_POSTGRES when set; otherwise starts a throwaway cluster
# (scripts/pg-throwaway, in a private directory) and stops it at the end. Builds with the
# optimised `bench` profile (the first build takes a few minutes).
set -euo pipefail
cd "$(dirname "$0")/../.."

if [ -z "${KEYGATE_TEST_POSTGRES:-}" ]; then
  private=$(mktemp -d)
  chmod 755 "$private"
  export TMPDIR=$private
  eval "$(bash scripts/pg-throwaway start)"
  trap 'bash scripts/pg-throwaway stop; rm -rf "$private"' EXIT
fi

out=$(mktemp)
status=0
cargo test --profile bench -p keygate-server --test multinode \
  revocation_propagation_p50_p99_max -- --exact --nocapture >"$out" 2>&1 || status=$?
if [ "$status" = 0 ]; then
  grep -E '^(revoke-to-refusal|\||p99)' "$out"
else
  cat "$out"
fi
rm -f "$out"
exit "$status"
