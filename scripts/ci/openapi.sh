#!/usr/bin/env bash
# The OpenAPI document against the real server: starts keygate on SQLite, checks that
# /openapi.json is a valid OpenAPI 3.1 document (openapi-spec-validator), then runs
# `schemathesis run --checks all` on every documented operation with the admin token (a key
# for forward-auth and key info): every phase (examples, coverage, fuzzing, stateful),
# every check. Any failure or error fails.
# Tools pinned in lib/requirements.txt; a fixed seed and example count keep it short.
#
# - The failed-attempt throttle is off: schemathesis sends many bad credentials from one
#   address, and the throttle would answer 429 to all of them before the handlers run.
# - Security parameters are not generated: the run brings its credentials. A generated
#   X-API-Key next to them would be a second, different credential, which keygate
#   refuses (400 ambiguous_credentials, documented).
# - lib/schemathesis_hooks.py drops the generated "valid" requests that break a rule JSON
#   Schema cannot state (a time in the future, either-or fields), and forward-auth's 204 to
#   a method OpenAPI 3.1 cannot list (QUERY): see the file.
# - One worker: the coverage phase on two threads trips a CPython 3.11 bug ("AST
#   constructor recursion depth mismatch", python/cpython#106905) in hypothesis.
#
#   bash scripts/ci/openapi.sh        (KEYGATE_BIN=... to use a built binary)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
say() { printf 'openapi: %s\n' "$*"; }
source "$ROOT/scripts/ci/lib/python-tools.sh"
source "$ROOT/scripts/ci/lib/keygate-server.sh"

# GitHub's key list is not fetched from the internet: nothing listens on port 9, so the
# one fetch an unknown identifier may cause fails fast (503, documented). Generated
# signatures never verify: /v1/leaks/github answers 401 (tests/api/leaks.rs signs).
start_keygate openapi KEYGATE_FAILED_AUTH_LIMIT=off KEYGATE_GITHUB_SCANNING_KEYS_URL=http://127.0.0.1:9/keys
say "keygate is up at $URL"

curl -fsS "$URL/openapi.json" -o "$WORK/openapi.json"
python - "$WORK/openapi.json" <<'PY'
import json, sys
from openapi_spec_validator import validate
from openapi_spec_validator.validation import OpenAPIV31SpecValidator

document = json.load(open(sys.argv[1]))
assert document["openapi"].startswith("3.1."), document["openapi"]
validate(document, cls=OpenAPIV31SpecValidator)
print(f"openapi: the document is valid OpenAPI {document['openapi']} ({len(document['paths'])} paths)")
PY

# Forward-auth, key info and tokens take a key, not the admin token: those operations get a key
# with every permission, so that their allowed answers (204 and the identity headers, the
# key's record) are checked too. Credentials reach schemathesis through its config file's
# environment variables, not its command line.
admin_post() {
    curl -fsS -H "Authorization: Bearer $ADMIN_TOKEN" -H 'Content-Type: application/json' \
        -d "$2" "$URL$1" | python -c "import json, sys; print(json.load(sys.stdin)['$3'])"
}
account_id=$(admin_post /v1/accounts '{"name": "schemathesis"}' id)
export KEYGATE_CI_API_KEY KEYGATE_CI_ADMIN_TOKEN="$ADMIN_TOKEN"
KEYGATE_CI_API_KEY=$(admin_post /v1/api-keys \
    "{\"account_id\": \"$account_id\", \"name\": \"schemathesis\", \"scope\": \"all\"}" key)
cat >"$WORK/schemathesis.toml" <<'TOML'
headers = { Authorization = "Bearer ${KEYGATE_CI_ADMIN_TOKEN}" }

[[operations]]
include-path-regex = "^/v1/auth"
headers = { Authorization = "Bearer ${KEYGATE_CI_API_KEY}" }

[[operations]]
include-path = "/v1/api-key-info"
headers = { Authorization = "Bearer ${KEYGATE_CI_API_KEY}" }

[[operations]]
include-path = "/v1/tokens"
headers = { Authorization = "Bearer ${KEYGATE_CI_API_KEY}" }
TOML

status=0
# Run from the temp dir: schemathesis reads schemathesis.toml and writes its cache there.
# /v1/key-changes is left out: its answer is an event stream that never ends, which
# schemathesis can only report as a timeout (tests/remote.rs in keygate-tower checks it).
# /v1/api-keys/import too: its body is JSON lines naming accounts that exist, a binary
# upload to OpenAPI, so no generated body is a valid one and every invalid one is a 400;
# crates/keygate-server/tests/api/legacy_import.rs tests its answers.
(cd "$WORK" && PYTHONPATH="$ROOT/scripts/ci/lib" SCHEMATHESIS_HOOKS=schemathesis_hooks \
    timeout 600 schemathesis run "$URL/openapi.json" \
    --checks all --generation-with-security-parameters false --exclude-path /v1/key-changes \
    --exclude-path /v1/api-keys/import \
    --max-examples 25 --seed 1 --workers 1 --request-timeout 10 \
    --suppress-health-check all --no-color) || status=$?
if ((status != 0)); then
    say "schemathesis failed (exit $status); server log:" >&2
    server_log_tail
    exit "$status"
fi
kill -0 "$SERVER_PID" 2>/dev/null || { say "the server exited during the run" >&2; exit 1; }
say "ok"
