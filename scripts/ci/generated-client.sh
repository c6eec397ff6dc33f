#!/usr/bin/env bash
# A client generated from the served /openapi.json (openapi-python-client, pinned in
# lib/requirements.txt) runs the quickstart: starts keygate on SQLite, generates the client
# into a temp dir, and runs examples/quickstart/quickstart_generated.py with it (create an
# account and a key, verify, list, revoke), which checks every answer. It fails when the
# document is wrong enough that the generated client cannot do the quickstart: a missing
# operation, a wrong model, an undocumented status (the client raises on those).
#
#   bash scripts/ci/generated-client.sh      (KEYGATE_BIN=... to use a built binary)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
say() { printf 'generated-client: %s\n' "$*"; }
source "$ROOT/scripts/ci/lib/python-tools.sh"
source "$ROOT/scripts/ci/lib/keygate-server.sh"

start_keygate generated-client
say "keygate is up at $URL; generating the client"
curl -fsS "$URL/openapi.json" -o "$WORK/openapi.json"
# Warnings are failures: a skipped operation or model is a document the client cannot use.
(cd "$WORK" && openapi-python-client generate --path openapi.json --meta none \
    --output-path keygate_client --fail-on-warning) >"$WORK/generate.log" 2>&1 || {
    say "openapi-python-client failed:" >&2
    sed 's/^/    /' "$WORK/generate.log" >&2
    exit 1
}
status=0
PYTHONPATH="$WORK" KEYGATE_URL="$URL" KEYGATE_ADMIN_TOKEN="$ADMIN_TOKEN" \
    python "$ROOT/examples/quickstart/quickstart_generated.py" || status=$?
if ((status != 0)); then
    say "the quickstart failed (exit $status); server log:" >&2
    server_log_tail
    exit "$status"
fi
say "ok"
