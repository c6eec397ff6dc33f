#!/usr/bin/env bash
# HTTP benchmark: keygate's forward-auth `GET /v1/auth` and `POST /v1/verify` against the
# floor for "HTTP handling with a key check": nginx answering from a `map` on the
# Authorization header (204 for the one static key, 401 otherwise). Same load generators,
# same pinning, one run, targets interleaved.
#
#   bench/http/run.sh              3 repetitions x 10 s per target (about 6 minutes)
#   bench/http/run.sh --smoke      1 repetition x 2 s; reuses the debug build (CI smoke)
#   REPS=5 DURATION=20 CONNECTIONS=64 bench/http/run.sh
#   BUILD=0 bench/http/run.sh      use target/release/keygate as it is
#   PROFILE=debug bench/http/run.sh
#
# Peak throughput: wrk -t1 -cCONNECTIONS -dDURATION (keep-alive). Latency at half load:
# `openloop` (bench/keygate-bench/src/bin/openloop.rs) sends 50 % of that target's median
# peak at a fixed rate over OPEN_CONNECTIONS connections for DURATION and reports the p99
# of every request, counted from when each request was due (open loop, like wrk2: a
# late answer is counted in full, queueing is not hidden). It replaced oha, which needs
# the whole load CPU at these rates and then sets the p99 itself (BENCHMARKS.md).
# A control row runs nginx at keygate's /v1/auth rate. Pinning (2 cores): the server
# under test (keygate or nginx, one worker) on CPU SERVER_CPU, the load generator on
# LOAD_CPU; both at nice -10 when root. keygate runs with KEYGATE_LOG=warn (no access log
# line per request) and KEYGATE_FAILED_AUTH_LIMIT=off (the invalid-key runs would be
# throttled otherwise), like nginx with access_log off.
#
# Results: a Markdown table on stdout (also written to $OUT, default
# target/bench-results/http-<UTC time>.md) with medians, min-max and ratios to nginx.
set -euo pipefail
cd "$(dirname "$0")/../.."
. bench/lib.sh
if [ "$SMOKE" = 1 ]; then
  REPS=${REPS:-1}; DURATION=${DURATION:-2}; PROFILE=${PROFILE:-debug}
else
  REPS=${REPS:-3}; DURATION=${DURATION:-10}; PROFILE=${PROFILE:-release}
fi
CONNECTIONS=${CONNECTIONS:-64}
OPEN_CONNECTIONS=${OPEN_CONNECTIONS:-64}
results_file http

require_tools wrk nginx curl python3 taskset
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
NICE=()
[ "$(id -u)" = 0 ] && NICE=(nice -n -10)

TARGET_DIR=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
if [ "$PROFILE" = release ]; then
  KEYGATE="$TARGET_DIR/release/keygate"
  [ "${BUILD:-1}" = 1 ] && { echo "building keygate --release ..." >&2; cargo build --release --locked -q -p keygate; }
else
  KEYGATE="$TARGET_DIR/debug/keygate"
  [ "${BUILD:-1}" = 1 ] && { echo "building keygate (debug) ..." >&2; cargo build --locked -q -p keygate; }
fi
[ -x "$KEYGATE" ] || { echo "no keygate binary at $KEYGATE" >&2; exit 1; }
if [ "$PROFILE" = release ]; then
  [ "${BUILD:-1}" = 1 ] && cargo build --profile bench --locked -q -p keygate-bench --bin openloop
else
  [ "${BUILD:-1}" = 1 ] && cargo build --locked -q -p keygate-bench --bin openloop
fi
OPENLOOP="$TARGET_DIR/$PROFILE/openloop"
[ -x "$OPENLOOP" ] || { echo "no openloop binary at $OPENLOOP" >&2; exit 1; }

WORK=$(mktemp -d)
cleanup() { stop_started; rm -rf "$WORK"; }
trap cleanup EXIT

KG_PORT=$(free_port); NGINX_PORT=$(free_port)
ADMIN_TOKEN="kgadm_bench_$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')"
KEYGATE_ADMIN_TOKEN="$ADMIN_TOKEN" \
KEYGATE_DATABASE_URL="sqlite://$WORK/keygate.db" \
KEYGATE_LISTEN="127.0.0.1:$KG_PORT" \
KEYGATE_LOG=warn \
KEYGATE_FAILED_AUTH_LIMIT=off \
  taskset -c "$SERVER_CPU" "${NICE[@]}" "$KEYGATE" serve 2>"$WORK/keygate.log" &
KEYGATE_PID=$!
PIDS+=("$KEYGATE_PID")
wait_port "$KG_PORT"

# The same server as shipped: default log level (an access-log line per request, written
# to a file as a service manager would keep it), default failed-auth throttle.
KS_PORT=$(free_port)
KEYGATE_ADMIN_TOKEN="$ADMIN_TOKEN" \
KEYGATE_DATABASE_URL="sqlite://$WORK/keygate.db" \
KEYGATE_LISTEN="127.0.0.1:$KS_PORT" \
  taskset -c "$SERVER_CPU" "${NICE[@]}" "$KEYGATE" serve 2>"$WORK/shipped.log" &
SHIPPED_PID=$!
PIDS+=("$SHIPPED_PID")
wait_port "$KS_PORT"

admin() { curl -sf -H "Authorization: Bearer $ADMIN_TOKEN" -H 'Content-Type: application/json' "$@"; }
json_field() { python3 -c "import json,sys; print(json.load(sys.stdin)[\"$1\"])"; }
ACCOUNT=$(admin -X POST "http://127.0.0.1:$KG_PORT/v1/accounts" -d '{"name":"Bench","plan":"unlimited"}' | json_field id)
KEY=$(admin -X POST "http://127.0.0.1:$KG_PORT/v1/api-keys" \
  -d "{\"account_id\":\"$ACCOUNT\",\"name\":\"bench\",\"scope\":\"read\"}" | json_field key)
# Well-formed (checksum right) but unknown: the invalid-key path, not the malformed one.
UNKNOWN=$(python3 - "$KEY" <<'EOF'
import sys, zlib
key = sys.argv[1]
head = key[: -64] + "0" * 56
print(head + format(zlib.crc32(head.encode()), "08x"))
EOF
)

cat >"$WORK/nginx.conf" <<EOF
$(nginx_conf_head)
    map_hash_bucket_size 128;
    keepalive_requests 100000000;  # like keygate: no limit on requests per connection
    map \$http_authorization \$kg_ok {
        "Bearer $KEY" 1;
        default 0;
    }
    server {
        listen 127.0.0.1:$NGINX_PORT;
        location / {
            if (\$kg_ok = 0) { return 401; }
            return 204;
        }
    }
}
EOF
taskset -c "$SERVER_CPU" "${NICE[@]}" "$NGINX" -p "$WORK" -c "$WORK/nginx.conf" -e "$WORK/nginx-error.log" \
  -g "daemon off; pid $WORK/nginx.pid;" &
PIDS+=($!)
wait_port "$NGINX_PORT"
sleep 0.2
NGINX_WORKER=$(pgrep -P "$(cat "$WORK/nginx.pid")" | head -1)

KG="http://127.0.0.1:$KG_PORT"
NG="http://127.0.0.1:$NGINX_PORT"
VERIFY_BODY="{\"key\":\"$KEY\",\"method\":\"GET\",\"path\":\"/api/v1/invoices/42\"}"
VERIFY_BODY_UNKNOWN="{\"key\":\"$UNKNOWN\",\"method\":\"GET\",\"path\":\"/api/v1/invoices/42\"}"

# name | url | expected status
declare -A URL STATUS SERVER ADDR
declare -a NAMES=(nginx auth shipped verify nginx_invalid auth_invalid verify_invalid)
URL[nginx]="$NG/"; STATUS[nginx]=204; SERVER[nginx]=$NGINX_WORKER
URL[nginx_invalid]="$NG/"; STATUS[nginx_invalid]=401; SERVER[nginx_invalid]=$NGINX_WORKER
URL[auth]="$KG/v1/auth"; STATUS[auth]=204; SERVER[auth]=$KEYGATE_PID
URL[shipped]="http://127.0.0.1:$KS_PORT/v1/auth"; STATUS[shipped]=204; SERVER[shipped]=$SHIPPED_PID
ADDR[shipped]="127.0.0.1:$KS_PORT"
URL[auth_invalid]="$KG/v1/auth"; STATUS[auth_invalid]=401; SERVER[auth_invalid]=$KEYGATE_PID
URL[verify]="$KG/v1/verify"; STATUS[verify]=200; SERVER[verify]=$KEYGATE_PID
URL[verify_invalid]="$KG/v1/verify"; STATUS[verify_invalid]=200; SERVER[verify_invalid]=$KEYGATE_PID
for name in nginx nginx_invalid; do ADDR[$name]="127.0.0.1:$NGINX_PORT"; done
for name in auth auth_invalid verify verify_invalid; do ADDR[$name]="127.0.0.1:$KG_PORT"; done
declare -A LABEL=(
  [nginx]="nginx \`map\`, valid key (204)"
  [auth]="keygate \`GET /v1/auth\`, valid key (204)"
  [shipped]="keygate \`GET /v1/auth\` as shipped (access log on), valid key (204)"
  [verify]="keygate \`POST /v1/verify\`, valid key (200)"
  [nginx_invalid]="nginx \`map\`, unknown key (401)"
  [auth_invalid]="keygate \`GET /v1/auth\`, unknown key (401)"
  [verify_invalid]="keygate \`POST /v1/verify\`, unknown key (200, valid: false)"
)
# The request each target gets: forward-auth headers as nginx auth_request sends them.
headers_of() {
  case $1 in
    nginx|auth|shipped) printf '%s\n' "Authorization: Bearer $KEY" "X-Original-Method: GET" "X-Original-URI: /api/v1/invoices/42" ;;
    nginx_invalid|auth_invalid) printf '%s\n' "Authorization: Bearer $UNKNOWN" "X-Original-Method: GET" "X-Original-URI: /api/v1/invoices/42" ;;
    verify|verify_invalid) printf '%s\n' "Authorization: Bearer $ADMIN_TOKEN" "Content-Type: application/json" ;;
  esac
}
body_of() {
  case $1 in verify) echo "$VERIFY_BODY" ;; verify_invalid) echo "$VERIFY_BODY_UNKNOWN" ;; *) echo "" ;; esac
}

for name in "${NAMES[@]}"; do
  args=()
  while IFS= read -r h; do args+=(-H "$h"); done < <(headers_of "$name")
  body=$(body_of "$name")
  if [ -n "$body" ]; then
    got=$(curl -s -o "$WORK/body.json" -w '%{http_code}' -X POST "${args[@]}" -d "$body" "${URL[$name]}")
  else
    got=$(curl -s -o /dev/null -w '%{http_code}' "${args[@]}" "${URL[$name]}")
  fi
  [ "$got" = "${STATUS[$name]}" ] || { echo "sanity check $name: HTTP $got, wanted ${STATUS[$name]}" >&2; exit 1; }
  if [ "$name" = verify ]; then grep -q '"valid":true' "$WORK/body.json" || { echo "verify: not valid" >&2; exit 1; }; fi
  if [ "$name" = verify_invalid ]; then grep -q '"code":"invalid_key"' "$WORK/body.json" || { echo "verify_invalid: not invalid_key" >&2; exit 1; }; fi
  # wrk takes the method and body from a Lua script.
  {
    echo "wrk.method = \"$([ -n "$body" ] && echo POST || echo GET)\""
    [ -n "$body" ] && printf 'wrk.body = [[%s]]\n' "$body"
    while IFS= read -r h; do
      printf 'wrk.headers["%s"] = [[%s]]\n' "${h%%: *}" "${h#*: }"
    done < <(headers_of "$name")
  } >"$WORK/$name.lua"
  # The same request as raw bytes, for openloop.
  {
    printf '%s %s HTTP/1.1\r\nHost: 127.0.0.1\r\n' "$([ -n "$body" ] && echo POST || echo GET)" "/${URL[$name]#http://*/}"
    while IFS= read -r h; do printf '%s\r\n' "$h"; done < <(headers_of "$name")
    [ -n "$body" ] && printf 'Content-Length: %s\r\n' "${#body}"
    printf '\r\n%s' "$body"
  } >"$WORK/$name.req"
done

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
HZ=$(getconf CLK_TCK)
RAW="$WORK/peak.tsv"; : >"$RAW"
peak() { # name
  local name=$1 pid=${SERVER[$1]} t0 t1 out rps p50 p99 cpu non2xx
  t0=$(cpu_ticks "$pid")
  out=$(taskset -c "$LOAD_CPU" "${NICE[@]}" wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" --latency -s "$WORK/$name.lua" "${URL[$name]}")
  t1=$(cpu_ticks "$pid")
  rps=$(awk '/^Requests\/sec:/ {print $2}' <<<"$out")
  p50=$(to_ms "$(awk '$1 == "50%" {print $2}' <<<"$out")")
  p99=$(to_ms "$(awk '$1 == "99%" {print $2}' <<<"$out")")
  non2xx=$(awk '/Non-2xx or 3xx responses:/ {print $5}' <<<"$out"); non2xx=${non2xx:-0}
  case ${STATUS[$name]} in 401) : ;; *) [ "$non2xx" = 0 ] || { echo "$name: $non2xx non-2xx answers" >&2; echo "$out" >&2; exit 1; } ;; esac
  if grep -q "Socket errors" <<<"$out"; then echo "$name: $(grep 'Socket errors' <<<"$out")" >&2; fi
  cpu=$(python3 -c "print(round(($t1 - $t0) / $HZ * 1e6 / ($rps * $DURATION), 1))")
  printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$rps" "$p50" "$p99" "$cpu" >>"$RAW"
  printf '  %-15s %9.0f req/s   wrk p50 %7.3f ms   p99 %7.3f ms   server CPU %5.1f us/req\n' \
    "$name" "$rps" "$p50" "$p99" "$cpu" >&2
}

HALF_RAW="$WORK/half.tsv"; : >"$HALF_RAW"
half() { # name rate [label]
  local name=$1 rate=$2 label=${3:-$1} out
  out=$(taskset -c "$LOAD_CPU" "${NICE[@]}" "$OPENLOOP" "${ADDR[$name]}" "$WORK/$name.req" "$rate" \
    "$DURATION" "$OPEN_CONNECTIONS" "${STATUS[$name]}")
  [ "$(field "$out" wrong_status)" = 0 ] || echo "$name: $(field "$out" wrong_status) answers other than ${STATUS[$name]}" >&2
  printf '%s\t%s\t%s\t%s\t%s\n' "$label" "$rate" "$(field "$out" rate)" \
    "$(python3 -c "print($(field "$out" p50_us) / 1000)")" "$(python3 -c "print($(field "$out" p99_us) / 1000)")" >>"$HALF_RAW"
  tail -1 "$HALF_RAW" | awk -F'\t' '{printf "  %-18s asked %7.0f req/s, got %7.0f   p50 %7.3f ms   p99 %7.3f ms\n", $1, $2, $3, $4, $5}' >&2
}

echo >&2
echo "peak: wrk -t1 -c$CONNECTIONS -d${DURATION}s; server on CPU $SERVER_CPU, wrk on CPU $LOAD_CPU; $REPS repetition(s)" >&2
for name in "${NAMES[@]}"; do  # warm-up, not recorded
  taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNECTIONS" -d1s -s "$WORK/$name.lua" "${URL[$name]}" >/dev/null
done
UPTIME_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
for rep in $(seq 1 "$REPS"); do
  echo "repetition $rep/$REPS" >&2
  for name in "${NAMES[@]}"; do peak "$name"; done
done

echo >&2
echo "latency at 50 % of each target's median peak: openloop, ${DURATION}s, $OPEN_CONNECTIONS connections" >&2
declare -A MEDIAN
while IFS=$'\t' read -r name med; do MEDIAN[$name]=$med; done < <(python3 - "$RAW" <<'EOF'
import statistics, sys
rows = [l.split("\t") for l in open(sys.argv[1]).read().splitlines()]
by = {}
for r in rows: by.setdefault(r[0], []).append(float(r[1]))
for k, v in by.items(): print(f"{k}\t{statistics.median(v)}")
EOF
)
for rep in $(seq 1 "$REPS"); do
  echo "repetition $rep/$REPS" >&2
  for name in "${NAMES[@]}"; do half "$name" "$(python3 -c "print(round(${MEDIAN[$name]} / 2))")"; done
  # Control: nginx at the rate keygate's /v1/auth got, to tell the load generator's own
  # latency at that rate from the server's.
  half nginx "$(python3 -c "print(round(${MEDIAN[auth]} / 2))")" nginx_at_auth_rate
done
UPTIME_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)
# The as-shipped row means something only if that server really logged each request.
grep -q '/v1/auth' "$WORK/shipped.log" || { echo "the as-shipped server wrote no access log" >&2; exit 1; }

{
  echo "### HTTP: keygate vs nginx \`map\` ($STAMP)"
  echo
  echo "- command: \`$([ "$SMOKE" = 1 ] && echo "bench/http/run.sh --smoke" || echo "REPS=$REPS DURATION=$DURATION CONNECTIONS=$CONNECTIONS OPEN_CONNECTIONS=$OPEN_CONNECTIONS bench/http/run.sh")\` (keygate $PROFILE build)"
  echo "- machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(uname -r); load average before $UPTIME_BEFORE, after $UPTIME_AFTER"
  echo "- keygate $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- crates || echo ' + local changes'), $("$NGINX" -v 2>&1 | sed 's/.*: //'), $(wrk --version 2>&1 | head -1 | cut -d' ' -f1-2)"
  echo
  python3 - "$RAW" "$HALF_RAW" <<'EOF'
import statistics, sys
peak = [l.split("\t") for l in open(sys.argv[1]).read().splitlines()]
half = [l.split("\t") for l in open(sys.argv[2]).read().splitlines()]
labels = {
    "nginx": "nginx `map`, valid key (204)",
    "auth": "keygate `GET /v1/auth`, valid key (204)",
    "shipped": "keygate `GET /v1/auth` as shipped (access log on), valid key (204)",
    "verify": "keygate `POST /v1/verify`, valid key (200)",
    "nginx_invalid": "nginx `map`, unknown key (401)",
    "auth_invalid": "keygate `GET /v1/auth`, unknown key (401)",
    "verify_invalid": "keygate `POST /v1/verify`, unknown key (200, `valid: false`)",
}
P, H = {}, {}
for name, rps, p50, p99, cpu in peak:
    P.setdefault(name, []).append((float(rps), float(p50), float(p99), float(cpu)))
for name, rate, got, p50, p99 in half:
    H.setdefault(name, []).append((float(rate), float(got or 0), float(p50 or 0), float(p99 or 0)))
control = H.pop("nginx_at_auth_rate", [])
med = lambda xs: statistics.median(xs)
floor = {"nginx": "nginx", "auth": "nginx", "shipped": "nginx", "verify": "nginx",
         "nginx_invalid": "nginx_invalid", "auth_invalid": "nginx_invalid", "verify_invalid": "nginx_invalid"}
print("| target | req/s median | min–max | ratio to nginx | server CPU µs/req | p99 at 50 % load (median, min–max) | p50 at 50 % load | req/s asked → got at 50 % |")
print("|---|---|---|---|---|---|---|---|")
for name in labels:
    if name not in P: continue
    r = [x[0] for x in P[name]]
    ratio = med(r) / med([x[0] for x in P[floor[name]]])
    h = H.get(name, [])
    p99s = [x[3] for x in h]; p50s = [x[2] for x in h]
    print(f"| {labels[name]} | {med(r):,.0f} | {min(r):,.0f}–{max(r):,.0f} | {ratio:.2f}× | {med([x[3] for x in P[name]]):.1f} | "
          f"{med(p99s):.3f} ms ({min(p99s):.3f}–{max(p99s):.3f}) | {med(p50s):.3f} ms | "
          f"{med([x[0] for x in h]):,.0f} → {med([x[1] for x in h]):,.0f} |")
print()
a = med([x[0] for x in P["auth"]]); ai = med([x[0] for x in P["auth_invalid"]])
v = med([x[0] for x in P["verify"]]); vi = med([x[0] for x in P["verify_invalid"]])
print(f"Invalid vs valid key, same endpoint: `/v1/auth` {ai / a:.2f}×, `/v1/verify` {vi / v:.2f}× the req/s "
      f"(CPU per request {med([x[3] for x in P['auth_invalid']]) / med([x[3] for x in P['auth']]):.2f}× and "
      f"{med([x[3] for x in P['verify_invalid']]) / med([x[3] for x in P['verify']]):.2f}×).")
if "shipped" in P:
    s = med([x[0] for x in P["shipped"]])
    print()
    print(f"As shipped (access log on) vs `KEYGATE_LOG=warn`: {s / a:.2f}× the req/s "
          f"(CPU per request {med([x[3] for x in P['shipped']]) / med([x[3] for x in P['auth']]):.2f}×).")
if control:
    print()
    print(f"Control for the load generator: nginx at the rate asked of keygate's `/v1/auth` "
          f"({med([x[0] for x in control]):,.0f} req/s): p99 {med([x[3] for x in control]):.3f} ms "
          f"({min(x[3] for x in control):.3f}–{max(x[3] for x in control):.3f}), p50 {med([x[2] for x in control]):.3f} ms.")
print()
print("Per repetition (req/s, wrk p99 ms at peak, server CPU µs/req):")
print()
for name in labels:
    if name not in P: continue
    print(f"- {name}: " + "; ".join(f"{x[0]:,.0f} / {x[2]:.2f} / {x[3]:.1f}" for x in P[name]))
EOF
} | tee "$OUT"
echo >&2
echo "written to $OUT" >&2
