#!/usr/bin/env bash
# Gateway CPU per request as instructions (valgrind callgrind), not seconds: the count does
# not move with the machine's load, so it can be compared on a busy shared machine where
# req/s cannot (the method of bench/http/instructions.sh). The proxy under test runs under
# callgrind; the upstream (examples/invoices-api, release) and wrk run outside it. After a
# warm-up the counters are zeroed, wrk sends `GET /api/v1/invoices` for DURATION seconds,
# the counters are dumped and the instructions of every thread are divided by the requests
# wrk completed. Targets: nginx `proxy_pass` with the same key check and header rewriting
# as run.sh's nginx (a static-key `map`, credential removed, X-Forwarded-*, X-Real-IP, the
# key id passed on, keep-alive to the upstream), and keygate's gateway (KEYGATE_LOG=warn).
#
#   bench/gateway/instructions.sh            release build, 3 repetitions x 5 s
#   REPS=1 DURATION=2 bench/gateway/instructions.sh
#   BUILD=0 bench/gateway/instructions.sh    use the release binaries as they are
#   bench/gateway/instructions.sh --smoke    1 repetition x 1 s on the debug builds (CI)
set -euo pipefail
cd "$(dirname "$0")/../.."
. bench/lib.sh
if [ "$SMOKE" = 1 ]; then
  REPS=${REPS:-1}; DURATION=${DURATION:-1}; PROFILE=${PROFILE:-debug}
else
  REPS=${REPS:-3}; DURATION=${DURATION:-5}; PROFILE=${PROFILE:-release}
fi
results_file gateway-instructions
require_tools wrk nginx curl python3 valgrind
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
if [ "${BUILD:-1}" = 1 ]; then
  if [ "$PROFILE" = release ]; then
    cargo build --release --locked -q -p keygate -p invoices-api
  else
    cargo build --locked -q -p keygate -p invoices-api
  fi
fi
TARGET_DIR=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
KEYGATE="${KEYGATE_BIN:-$TARGET_DIR/$PROFILE/keygate}"
UPSTREAM_BIN="$TARGET_DIR/$PROFILE/invoices-api"
WORK=$(mktemp -d)
cleanup() { stop_started; rm -rf "$WORK"; }
trap cleanup EXIT

UP_PORT=$(free_port)
"$UPSTREAM_BIN" --listen "127.0.0.1:$UP_PORT" --name bench 2>"$WORK/upstream.log" &
PIDS+=($!)

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
CREATED=$(admin -X POST "http://127.0.0.1:$SETUP_PORT/v1/api-keys" \
  -d "{\"account_id\":\"$ACCOUNT\",\"name\":\"bench\",\"scope\":\"all\"}")
KEY=$(json_field key <<<"$CREATED")
KEY_ID=$(json_field id <<<"$CREATED")
kill "$SETUP_PID"; wait "$SETUP_PID" 2>/dev/null || true

PORT=$(free_port); ADMIN_PORT=$(free_port)
cat >"$WORK/nginx.conf" <<NGINX
$(nginx_conf_head)
    map_hash_bucket_size 128;
    keepalive_requests 100000000;
    map \$http_authorization \$kg_key_id { "Bearer $KEY" "$KEY_ID"; default ""; }
    upstream api { server 127.0.0.1:$UP_PORT; keepalive 64; keepalive_requests 100000000; }
    server {
        listen 127.0.0.1:$PORT;
        location / {
            if (\$kg_key_id = "") { return 401; }
            proxy_pass http://api;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Authorization "";
            proxy_set_header Host \$proxy_host;
            proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto \$scheme;
            proxy_set_header X-Forwarded-Host \$host;
            proxy_set_header X-Real-IP \$remote_addr;
            proxy_set_header X-Keygate-Key-Id \$kg_key_id;
        }
    }
}
NGINX

# measure NAME COMMAND...: instructions per request of the proxy on $PORT under callgrind.
measure() {
  local name=$1; shift
  local out="$WORK/cg-$name" url="http://127.0.0.1:$PORT/api/v1/invoices"
  valgrind --tool=callgrind --callgrind-out-file="$out.%p" "$@" >"$WORK/$name.stdout" 2>"$WORK/$name.stderr" &
  local pid=$!
  wait_port "$PORT"
  local status
  status=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $KEY" "$url")
  [ "$status" = 200 ] || { echo "$name answered $status, not 200" >&2; kill "$pid"; exit 1; }
  status=$(curl -s -o /dev/null -w '%{http_code}' "$url")
  [ "$status" = 401 ] || { echo "$name let a request without a key through ($status)" >&2; kill "$pid"; exit 1; }
  callgrind_per_request "$pid" "$out" "$url" -H "Authorization: Bearer $KEY"
}

declare -A RESULTS
for rep in $(seq 1 "$REPS"); do
  RESULTS[nginx]+=" $(measure nginx "$NGINX" -p "$WORK" -c "$WORK/nginx.conf" -e "$WORK/nginx-error.log" \
    -g "daemon off; master_process off; pid $WORK/nginx.pid;")"
  RESULTS[gateway]+=" $(KEYGATE_LISTEN="127.0.0.1:$ADMIN_PORT" KEYGATE_GATEWAY_LISTEN="127.0.0.1:$PORT" \
    KEYGATE_UPSTREAM="http://127.0.0.1:$UP_PORT" KEYGATE_LOG=warn measure gateway "$KEYGATE" serve)"
done

python3 - "${RESULTS[nginx]}" "${RESULTS[gateway]}" <<'PY' | tee "$OUT"
import statistics, sys
rows = [("nginx `proxy_pass` + static-key `map`", sys.argv[1]), ("keygate gateway, log=warn", sys.argv[2])]
floor = statistics.median(int(v) for v in rows[0][1].split())
print("| proxy | instructions per request (median) | min–max | × nginx |")
print("|---|---|---|---|")
for name, values in rows:
    v = [int(x) for x in values.split()]
    m = statistics.median(v)
    print(f"| {name} | {m:,.0f} | {min(v):,}–{max(v):,} | {m / floor:.2f}× |")
PY
