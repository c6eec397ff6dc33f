#!/usr/bin/env bash
# Server CPU per request as instructions (valgrind callgrind), not seconds: the count does
# not move with the machine's load, so it can be measured on a busy shared machine where
# req/s cannot. Each server runs under callgrind; after a warm-up its counters are zeroed,
# wrk sends requests for DURATION seconds, the counters are dumped, and the total
# instructions (every thread: for keygate the tokio workers and the log writer) are divided
# by the requests wrk completed. Targets: nginx answering from a `map` (the floor, as in
# run.sh), keygate `GET /v1/auth` and `POST /v1/verify` with KEYGATE_LOG=warn, and
# `GET /v1/auth` as shipped (default log level: an access-log line per request).
#
#   bench/http/instructions.sh            release build, 3 repetitions x 5 s
#   REPS=1 DURATION=2 bench/http/instructions.sh
#   BUILD=0 bench/http/instructions.sh    use target/release/keygate as it is
#   KEYGATE_BIN=/path/keygate KEEP_PROFILE=/tmp/cg BUILD=0 bench/http/instructions.sh
#                                         another binary; keep the profiles in /tmp/cg
#   bench/http/instructions.sh --smoke    1 repetition x 1 s on the debug build (CI)
set -euo pipefail
cd "$(dirname "$0")/../.."
. bench/lib.sh
if [ "$SMOKE" = 1 ]; then
  REPS=${REPS:-1}; DURATION=${DURATION:-1}; PROFILE=${PROFILE:-debug}
else
  REPS=${REPS:-3}; DURATION=${DURATION:-5}; PROFILE=${PROFILE:-release}
fi
results_file http-instructions
require_tools wrk nginx curl python3 valgrind
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
TARGET_DIR=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
KEYGATE="${KEYGATE_BIN:-$TARGET_DIR/$PROFILE/keygate}"
if [ "${BUILD:-1}" = 1 ]; then
  if [ "$PROFILE" = release ]; then cargo build --release --locked -q -p keygate; else cargo build --locked -q -p keygate; fi
fi
WORK=$(mktemp -d)
cleanup() { stop_started; rm -rf "$WORK"; }
trap cleanup EXIT

# A keygate server (not under valgrind) only to issue the key the targets check.
SETUP_PORT=$(free_port)
ADMIN_TOKEN="kgadm_bench_$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')"
PEPPER=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
export KEYGATE_ADMIN_TOKEN="$ADMIN_TOKEN" KEYGATE_PEPPER="$PEPPER" \
  KEYGATE_DATABASE_URL="sqlite://$WORK/keygate.db" KEYGATE_FAILED_AUTH_LIMIT=off
KEYGATE_LISTEN="127.0.0.1:$SETUP_PORT" "$KEYGATE" serve 2>"$WORK/setup.log" &
SETUP_PID=$!
wait_port "$SETUP_PORT"
admin() { curl -sf -H "Authorization: Bearer $ADMIN_TOKEN" -H 'Content-Type: application/json' "$@"; }
json_field() { python3 -c "import json,sys; print(json.load(sys.stdin)[\"$1\"])"; }
ACCOUNT=$(admin -X POST "http://127.0.0.1:$SETUP_PORT/v1/accounts" -d '{"name":"Bench","plan":"unlimited"}' | json_field id)
KEY=$(admin -X POST "http://127.0.0.1:$SETUP_PORT/v1/api-keys" \
  -d "{\"account_id\":\"$ACCOUNT\",\"name\":\"bench\",\"scope\":\"read\"}" | json_field key)
kill "$SETUP_PID"; wait "$SETUP_PID" 2>/dev/null || true

PORT=$(free_port)
cat >"$WORK/nginx.conf" <<NGINX
$(nginx_conf_head)
    map_hash_bucket_size 128;
    keepalive_requests 100000000;
    map \$http_authorization \$kg_ok { "Bearer $KEY" 1; default 0; }
    server {
        listen 127.0.0.1:$PORT;
        location / { if (\$kg_ok = 0) { return 401; } return 204; }
    }
}
NGINX
cat >"$WORK/verify.lua" <<LUA
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"key":"$KEY","method":"GET","path":"/api/v1/invoices/42"}'
LUA

# measure NAME URL EXPECTED LUA COMMAND...: instructions per request under callgrind.
# With LUA (the /v1/verify body), the caller is the admin token, as in run.sh.
measure() {
  local name=$1 url=$2 expected=$3 lua=$4; shift 4
  local out="$WORK/cg-$name" script=() bearer=$KEY
  [ -n "$lua" ] && script=(-s "$lua") && bearer=$ADMIN_TOKEN
  valgrind --tool=callgrind --callgrind-out-file="$out.%p" "$@" >"$WORK/$name.stdout" 2>"$WORK/$name.stderr" &
  local pid=$!
  wait_port "$PORT"
  local status
  status=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $bearer" \
    ${lua:+-X POST -H 'Content-Type: application/json' -d "{\"key\":\"$KEY\",\"method\":\"GET\",\"path\":\"/api/v1/invoices/42\"}"} "$url")
  [ "$status" = "$expected" ] || { echo "$name answered $status, not $expected" >&2; kill "$pid"; exit 1; }
  callgrind_per_request "$pid" "$out" "$url" -H "Authorization: Bearer $bearer" "${script[@]}"
}

declare -A RESULTS
for rep in $(seq 1 "$REPS"); do
  RESULTS[nginx]+=" $(measure nginx "http://127.0.0.1:$PORT/api/v1/invoices/42" 204 "" \
    "$NGINX" -p "$WORK" -c "$WORK/nginx.conf" -e "$WORK/nginx-error.log" -g "daemon off; master_process off; pid $WORK/nginx.pid;")"
  RESULTS[auth]+=" $(KEYGATE_LISTEN="127.0.0.1:$PORT" KEYGATE_LOG=warn measure auth \
    "http://127.0.0.1:$PORT/v1/auth/api/v1/invoices/42" 204 "" "$KEYGATE" serve)"
  RESULTS[verify]+=" $(KEYGATE_LISTEN="127.0.0.1:$PORT" KEYGATE_LOG=warn measure verify \
    "http://127.0.0.1:$PORT/v1/verify" 200 "$WORK/verify.lua" "$KEYGATE" serve)"
  RESULTS[shipped]+=" $(KEYGATE_LISTEN="127.0.0.1:$PORT" KEYGATE_LOG=info measure shipped \
    "http://127.0.0.1:$PORT/v1/auth/api/v1/invoices/42" 204 "" "$KEYGATE" serve)"
done

python3 - "${RESULTS[nginx]}" "${RESULTS[auth]}" "${RESULTS[verify]}" "${RESULTS[shipped]}" <<'PY' | tee "$OUT"
import statistics, sys
rows = [("nginx `map` (floor)", sys.argv[1]), ("keygate `GET /v1/auth`, log=warn", sys.argv[2]),
        ("keygate `POST /v1/verify`, log=warn", sys.argv[3]), ("keygate `GET /v1/auth` as shipped (log=info)", sys.argv[4])]
floor = statistics.median(int(v) for v in rows[0][1].split())
print("| target | instructions per request (median) | min–max | × nginx |")
print("|---|---|---|---|")
for name, values in rows:
    v = [int(x) for x in values.split()]
    m = statistics.median(v)
    print(f"| {name} | {m:,.0f} | {min(v):,}–{max(v):,} | {m / floor:.2f}× |")
PY
