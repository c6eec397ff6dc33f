#!/usr/bin/env bash
# Capacity check: three keygate nodes on one PostgreSQL, the per-node figures that
# docs/capacity.md's model is built from, measured together.
#
#   bench/capacity/three-nodes.sh              200 000 keys, 20 000 hot, 20 s of load (~3 min)
#   bench/capacity/three-nodes.sh --smoke      20 000 keys, 2 000 hot, 3 s, debug build (CI)
#   KEYS=1000000 HOT=100000 DURATION=30 BUILD=0 bench/capacity/three-nodes.sh
#   FLUSH_BUDGET=2000 bench/capacity/three-nodes.sh   with usage_flush_max_keys_per_second
#
# 1. Loads KEYS bench keys straight into a fresh database (multi-row INSERTs).
# 2. Starts three `keygate serve` nodes on it (KEYGATE_LOG=warn, usage flush every
#    USAGE_FLUSH_SECONDS), each LISTENing for key changes, and verifies the HOT keys once on
#    each (so every node has them cached, as behind a load balancer that spreads a key's
#    requests over all nodes).
# 3. Drives all three at once for DURATION seconds (one wrk per node, forward-auth cache
#    hits rotating over the HOT keys), then waits one flush interval so the last counts are
#    written. Between a snapshot before and after: each node's verifications, CPU time,
#    usage flushes (keys written, time spent), PostgreSQL's rows written, commits, WAL bytes,
#    CPU time and connections.
# 4. Management writes: creates through node A while all three listen (POST /v1/api-keys),
#    and how long until nodes B and C refuse a key revoked through A.
# Output: Markdown on stdout and in $OUT (default target/bench-results/capacity-<time>.md).
# PostgreSQL: a throwaway cluster (fsync on) unless KEYGATE_BENCH_POSTGRES names a database
# server to use (a database kg_capacity is made on it).
set -euo pipefail
cd "$(dirname "$0")/../.."
. bench/lib.sh
if [ "$SMOKE" = 1 ]; then
  KEYS=${KEYS:-20000}; HOT=${HOT:-2000}; DURATION=${DURATION:-3}; PROFILE=${PROFILE:-debug}
  CREATES=${CREATES:-50}; REVOKES=${REVOKES:-5}
else
  KEYS=${KEYS:-200000}; HOT=${HOT:-20000}; DURATION=${DURATION:-20}; PROFILE=${PROFILE:-release}
  CREATES=${CREATES:-1000}; REVOKES=${REVOKES:-50}
fi
USAGE_FLUSH_SECONDS=${USAGE_FLUSH_SECONDS:-5}
FLUSH_BUDGET=${FLUSH_BUDGET:-0}
CONNECTIONS=${CONNECTIONS:-16}
results_file capacity
require_tools wrk curl python3 psql

TARGET_DIR=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
if [ "${BUILD:-1}" = 1 ]; then
  echo "building keygate ($PROFILE) and the bench programs ..." >&2
  if [ "$PROFILE" = release ]; then
    cargo build --release --locked -q -p keygate
    cargo build --profile bench --locked -q -p keygate-bench --bin scale
  else
    cargo build --locked -q -p keygate -p keygate-bench --bin keygate --bin scale
  fi
fi
if [ "$PROFILE" = release ]; then BIN_DIR="$TARGET_DIR/release"; else BIN_DIR="$TARGET_DIR/debug"; fi
KEYGATE=${KEYGATE_BIN:-$BIN_DIR/keygate}
SCALE="$BIN_DIR/scale"
PEPPER=$("$SCALE" pepper)
ADMIN_TOKEN="kgadm_capacity_bench_token_0123456789"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/keygate-capacity.XXXXXX")
PG_STARTED=0
PG_TMP=
cleanup() {
  stop_started
  if [ "$PG_STARTED" = 1 ]; then TMPDIR="$PG_TMP" bash scripts/pg-throwaway stop || true; fi
  rm -rf "$WORK" "${PG_TMP:-}"
}
trap cleanup EXIT

base=${KEYGATE_BENCH_POSTGRES:-}
if [ -z "$base" ]; then
  PG_TMP=$(mktemp -d "${TMPDIR:-/tmp}/keygate-capacity-pg.XXXXXX")
  chmod 755 "$PG_TMP"
  eval "$(TMPDIR="$PG_TMP" PG_FSYNC=on bash scripts/pg-throwaway start)"
  PG_STARTED=1
  base=$KEYGATE_TEST_POSTGRES
fi
psql -q -d "$base" -c "DROP DATABASE IF EXISTS kg_capacity" -c "CREATE DATABASE kg_capacity" >/dev/null
URL="${base%/*}/kg_capacity"

echo "== loading $KEYS keys" >&2
"$SCALE" load "$URL" "$KEYS" >/dev/null
"$SCALE" keys 0 "$HOT" >"$WORK/hot.txt"

ADDRS=()
NODE_PIDS=()
for node in a b c; do
  port=$(free_port)
  KEYGATE_DATABASE_URL="$URL" KEYGATE_PEPPER="$PEPPER" KEYGATE_LISTEN="127.0.0.1:$port" \
  KEYGATE_ADMIN_TOKEN="$ADMIN_TOKEN" KEYGATE_LOG=warn KEYGATE_FAILED_AUTH_LIMIT=off \
  KEYGATE_USAGE_FLUSH_SECONDS="$USAGE_FLUSH_SECONDS" \
  KEYGATE_USAGE_FLUSH_MAX_KEYS_PER_SECOND="$FLUSH_BUDGET" \
    "$KEYGATE" serve 2>>"$WORK/serve-$node.log" &
  PIDS+=("$!")
  NODE_PIDS+=("$!")
  ADDRS+=("127.0.0.1:$port")
done
for addr in "${ADDRS[@]}"; do
  "$SCALE" wait-ready "http://$addr/readyz" "$(date +%s%N)" >/dev/null
  "$SCALE" warm "$addr" 0 "$HOT" 8 >/dev/null
done
# The warm-up's usage is flushed before the first snapshot.
sleep $((USAGE_FLUSH_SECONDS + 1))

rotate_lua "$WORK/rotate.lua"

BASE="$base" URL="$URL" WORK="$WORK" ADDRS="${ADDRS[*]}" NODE_PIDS="${NODE_PIDS[*]}" \
DURATION="$DURATION" CONNECTIONS="$CONNECTIONS" HOT="$HOT" KEYS="$KEYS" \
USAGE_FLUSH_SECONDS="$USAGE_FLUSH_SECONDS" FLUSH_BUDGET="$FLUSH_BUDGET" CREATES="$CREATES" \
REVOKES="$REVOKES" ADMIN_TOKEN="$ADMIN_TOKEN" \
  python3 bench/capacity/measure.py >"$WORK/report.md"

{
  echo "### Three nodes on one PostgreSQL ($STAMP)"
  echo
  echo "- command: \`$([ "$SMOKE" = 1 ] && echo "bench/capacity/three-nodes.sh --smoke" || echo "KEYS=$KEYS HOT=$HOT DURATION=$DURATION CONNECTIONS=$CONNECTIONS USAGE_FLUSH_SECONDS=$USAGE_FLUSH_SECONDS FLUSH_BUDGET=$FLUSH_BUDGET bench/capacity/three-nodes.sh")\`"
  echo "- machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(uname -r); load average $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "- keygate $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- crates || echo ' + local changes') ($PROFILE build), $(psql -d "$base" -Atc 'show server_version')"
  echo
  cat "$WORK/report.md"
} | tee "$OUT"
echo "written to $OUT" >&2
