#!/usr/bin/env bash
# Gateway benchmark: keygate's gateway (verification on) vs nginx proxy_pass (checking the
# key against a static map, rewriting the same headers), both in front of the same upstream (examples/invoices-api, release build), same load generator (wrk),
# same CPU pinning, in one run. Also measures the gateway process's peak memory while a
# 200 MB upload and a 200 MB download stream through it.
#
#   bench/gateway/run.sh            3 repetitions x 10 s per target (about 2 minutes)
#   bench/gateway/run.sh --smoke    1 repetition x 2 s, 20 MB streams, debug build (CI smoke)
#   REPS=5 DURATION=20 CONNECTIONS=64 bench/gateway/run.sh
#   BUILD=0 bench/gateway/run.sh     use the release binaries already built
#
# Pinning (2 cores): the proxy under test (keygate or nginx) on core 0; wrk and the
# upstream on core 1. Targets are interleaved (nginx, keygate, nginx, keygate, ...) so that
# noise from the machine hits both alike. Results: medians, spread (min-max) and the ratio.
set -euo pipefail
cd "$(dirname "$0")/../.."
. bench/lib.sh

if [ "$SMOKE" = 1 ]; then
  REPS=${REPS:-1}; DURATION=${DURATION:-2}; STREAM_MB=${STREAM_MB:-20}
else
  REPS=${REPS:-3}; DURATION=${DURATION:-10}; STREAM_MB=${STREAM_MB:-200}
fi
CONNECTIONS=${CONNECTIONS:-64}
PROXY_CPU=${PROXY_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}

require_tools wrk nginx curl
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
# Other processes on the machine (builds) would take their share of the pinned cores and
# decide the req/s; as root, everything the benchmark starts runs at a high priority.
PRIO=""
if [ "$(id -u)" = 0 ] && [ "${NICE:-1}" != 0 ]; then PRIO="nice -n -15"; fi
ncpu=$(nproc)
if [ "$ncpu" -lt 2 ]; then PROXY_CPU=0; LOAD_CPU=0; fi

# The smoke mode only checks that everything works: it uses the debug binaries that
# `cargo test` has already built (its numbers mean nothing). Measurements use --release.
if [ "$SMOKE" = 1 ]; then PROFILE=debug; PROFILE_FLAG=(); else PROFILE=release; PROFILE_FLAG=(--release); fi
if [ "${BUILD:-1}" = 1 ]; then
  echo "building $PROFILE binaries (keygate, invoices-api)..."
  cargo build "${PROFILE_FLAG[@]}" --locked -q -p keygate -p invoices-api
fi
TARGET_DIR=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
KEYGATE="${KEYGATE_BIN:-$TARGET_DIR/$PROFILE/keygate}"
UPSTREAM_BIN="$TARGET_DIR/$PROFILE/invoices-api"

WORK=$(mktemp -d)
cleanup() { stop_started; rm -rf "$WORK"; }
trap cleanup EXIT

UP_PORT=$(free_port); ADMIN_PORT=$(free_port); GW_PORT=$(free_port); NGINX_PORT=$(free_port)
NGINX_AUTH_PORT=$(free_port)

$PRIO taskset -c "$LOAD_CPU" "$UPSTREAM_BIN" --listen "127.0.0.1:$UP_PORT" --name bench 2>"$WORK/upstream.log" &
PIDS+=($!)

ADMIN_TOKEN="kgadm_bench_$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')"
KEYGATE_ADMIN_TOKEN="$ADMIN_TOKEN" \
KEYGATE_DATABASE_URL="sqlite://$WORK/keygate.db" \
KEYGATE_LISTEN="127.0.0.1:$ADMIN_PORT" \
KEYGATE_UPSTREAM="http://127.0.0.1:$UP_PORT" \
KEYGATE_GATEWAY_LISTEN="127.0.0.1:$GW_PORT" \
KEYGATE_LOG=warn \
  $PRIO taskset -c "$PROXY_CPU" "$KEYGATE" serve 2>"$WORK/keygate.log" &
KEYGATE_PID=$!
PIDS+=($KEYGATE_PID)

wait_port "$UP_PORT"; wait_port "$ADMIN_PORT"; wait_port "$GW_PORT"

admin() { curl -sf -H "Authorization: Bearer $ADMIN_TOKEN" -H 'Content-Type: application/json' "$@"; }
ACCOUNT=$(admin -X POST "http://127.0.0.1:$ADMIN_PORT/v1/accounts" -d '{"name":"Bench","plan":"unlimited"}' \
  | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
CREATED=$(admin -X POST "http://127.0.0.1:$ADMIN_PORT/v1/api-keys" \
  -d "{\"account_id\":\"$ACCOUNT\",\"name\":\"bench\",\"scope\":\"all\"}")
KEY=$(python3 -c 'import json,sys; print(json.load(sys.stdin)["key"])' <<<"$CREATED")
KEY_ID=$(python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])' <<<"$CREATED")

cat >"$WORK/nginx.conf" <<EOF
$(nginx_conf_head)
    # Client and upstream connections kept for the whole run (nginx's default closes them
    # after 1 000 requests; keygate keeps them).
    keepalive_requests 100000000;
    upstream api { server 127.0.0.1:$UP_PORT; keepalive 64; keepalive_requests 100000000; }
    upstream keygate { server 127.0.0.1:$ADMIN_PORT; keepalive 64; keepalive_requests 100000000; }
    # nginx + auth_request to keygate's /v1/auth (docs/nginx.md, shortened): the other way
    # to put keygate's verification in front of the same API.
    server {
        listen 127.0.0.1:$NGINX_AUTH_PORT;
        location / {
            auth_request /_keygate/auth;
            auth_request_set \$keygate_key_id \$upstream_http_x_keygate_key_id;
            proxy_set_header Authorization "";
            proxy_set_header X-Keygate-Key-Id \$keygate_key_id;
            proxy_pass http://api;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host \$host;
            proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
        }
        location = /_keygate/auth {
            internal;
            proxy_pass http://keygate/v1/auth;
            proxy_pass_request_body off;
            proxy_set_header Content-Length "";
            proxy_set_header X-Original-Method \$request_method;
            proxy_set_header X-Original-URI \$request_uri;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
    # nginx proxy_pass with an equivalent key check (a static-key map, as bench/http's
    # floor) and the header rewriting the gateway does: credential removed, key id passed
    # on, X-Forwarded-*, X-Real-IP; keep-alive to the upstream as keygate's pool.
    map_hash_bucket_size 128;
    map \$http_authorization \$kg_key_id { "Bearer $KEY" "$KEY_ID"; default ""; }
    server {
        listen 127.0.0.1:$NGINX_PORT;
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
EOF
$PRIO taskset -c "$PROXY_CPU" "$NGINX" -p "$WORK" -c "$WORK/nginx.conf" -e "$WORK/nginx-error.log" \
  -g "daemon off; pid $WORK/nginx.pid;" &
PIDS+=($!)

wait_port "$NGINX_PORT"; wait_port "$NGINX_AUTH_PORT"

PATH_UNDER_TEST=/api/v1/invoices
check() {
  local code
  code=$(curl -s -o /dev/null -w '%{http_code}' "$@")
  [ "$code" = 200 ] || { echo "sanity check failed ($code): $*" >&2; exit 1; }
}
check -H "Authorization: Bearer $KEY" "http://127.0.0.1:$GW_PORT$PATH_UNDER_TEST"
check -H "Authorization: Bearer $KEY" "http://127.0.0.1:$NGINX_PORT$PATH_UNDER_TEST"
check -H "Authorization: Bearer $KEY" "http://127.0.0.1:$NGINX_AUTH_PORT$PATH_UNDER_TEST"
[ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$GW_PORT$PATH_UNDER_TEST")" = 401 ] \
  || { echo "the gateway let a request without a key through" >&2; exit 1; }
[ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$NGINX_PORT$PATH_UNDER_TEST")" = 401 ] \
  || { echo "nginx let a request without a key through" >&2; exit 1; }

# --- Streaming memory: the gateway process's peak RSS (VmHWM) -----------------------------
rss_kib() { awk -v f="$2" '$1 == f":" {print $2}' "/proc/$1/status"; }
before=$(rss_kib "$KEYGATE_PID" VmRSS)
up_bytes=$(head -c "${STREAM_MB}M" /dev/zero | curl -s -X POST -T - -H "Authorization: Bearer $KEY" \
  "http://127.0.0.1:$GW_PORT/api/v1/uploads" | python3 -c 'import json,sys; print(json.load(sys.stdin)["bytes"])')
down_bytes=$(curl -s -o /dev/null -w '%{size_download}' -H "Authorization: Bearer $KEY" \
  "http://127.0.0.1:$GW_PORT/api/v1/downloads/$((STREAM_MB * 1024 * 1024))")
hwm=$(rss_kib "$KEYGATE_PID" VmHWM)
want=$((STREAM_MB * 1024 * 1024))
[ "$up_bytes" = "$want" ] && [ "$down_bytes" = "$want" ] \
  || { echo "streamed $up_bytes up / $down_bytes down, wanted $want" >&2; exit 1; }
echo
echo "streaming ${STREAM_MB} MB up and ${STREAM_MB} MB down through the gateway:"
echo "  keygate VmRSS before: $((before / 1024)) MiB; VmHWM (peak) after: $((hwm / 1024)) MiB"
if [ "$hwm" -gt $((before + 64 * 1024)) ]; then
  echo "  FAIL: peak memory grew by more than 64 MiB while streaming" >&2; exit 1
fi

# --- Throughput and latency ---------------------------------------------------------------
cpu_ticks() { # utime+stime of processes (with their threads; children excluded)
  local total=0 pid
  for pid in $1; do total=$((total + $(awk '{print $14 + $15}' "/proc/$pid/stat"))); done
  echo "$total"
}
NGINX_WORKER=$(pgrep -P "$(cat "$WORK/nginx.pid")" | head -1)
HZ=$(getconf CLK_TCK)

RESULTS="$WORK/results.tsv"
: >"$RESULTS"
run() { # name url "pids" [header]
  local name=$1 url=$2 pid=$3; shift 3
  local t0 t1 out rps p50 p99 cpu
  t0=$(cpu_ticks "$pid")
  out=$($PRIO taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" --latency "$@" "$url")
  t1=$(cpu_ticks "$pid")
  rps=$(awk '/^Requests\/sec:/ {print $2}' <<<"$out")
  p50=$(to_ms "$(awk '$1 == "50%" {print $2}' <<<"$out")")
  p99=$(to_ms "$(awk '$1 == "99%" {print $2}' <<<"$out")")
  if grep -q "Non-2xx" <<<"$out"; then echo "$name: non-2xx answers:"; echo "$out"; exit 1; fi
  # CPU microseconds the proxy spent per request.
  cpu=$(python3 -c "print(round(($t1 - $t0) / $HZ * 1e6 / ($rps * $DURATION), 1))")
  printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$rps" "$p50" "$p99" "$cpu" >>"$RESULTS"
  printf '  %-12s %10.0f req/s   p50 %7.3f ms   p99 %7.3f ms   proxy CPU %6.1f us/req\n' \
    "$name" "$rps" "$p50" "$p99" "$cpu"
}

echo
echo "wrk -t1 -c$CONNECTIONS -d${DURATION}s GET $PATH_UNDER_TEST; proxy on CPU $PROXY_CPU, wrk + upstream on CPU $LOAD_CPU"
# Warm-up (connection pools, caches), not recorded.
$PRIO taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNECTIONS" -d1s -H "Authorization: Bearer $KEY" \
  "http://127.0.0.1:$NGINX_PORT$PATH_UNDER_TEST" >/dev/null
$PRIO taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNECTIONS" -d1s -H "Authorization: Bearer $KEY" \
  "http://127.0.0.1:$GW_PORT$PATH_UNDER_TEST" >/dev/null
for rep in $(seq 1 "$REPS"); do
  echo "repetition $rep/$REPS"
  run nginx "http://127.0.0.1:$NGINX_PORT$PATH_UNDER_TEST" "$NGINX_WORKER" -H "Authorization: Bearer $KEY"
  run keygate "http://127.0.0.1:$GW_PORT$PATH_UNDER_TEST" "$KEYGATE_PID" -H "Authorization: Bearer $KEY"
  run nginx+auth "http://127.0.0.1:$NGINX_AUTH_PORT$PATH_UNDER_TEST" "$NGINX_WORKER $KEYGATE_PID" \
    -H "Authorization: Bearer $KEY"
done

[ "$SMOKE" = 1 ] && echo "(smoke mode: debug build, short runs; these numbers are not measurements)"
python3 - "$RESULTS" <<'EOF'
import statistics, sys
rows = [l.split("\t") for l in open(sys.argv[1]).read().splitlines()]
by = {}
for name, rps, p50, p99, cpu in rows:
    by.setdefault(name, []).append((float(rps), float(p50), float(p99), float(cpu)))
def med(name, i): return statistics.median(r[i] for r in by[name])
def spread(name, i): return min(r[i] for r in by[name]), max(r[i] for r in by[name])
print()
print("| target | req/s (median) | req/s min-max | p50 ms | p99 ms | proxy CPU us/req |")
print("|---|---|---|---|---|---|")
for name, label in [("nginx", "nginx proxy_pass (static-key map check)"), ("keygate", "keygate gateway (verify on)"),
                    ("nginx+auth", "nginx auth_request to keygate /v1/auth (verify on)")]:
    lo, hi = spread(name, 0)
    print(f"| {label} | {med(name,0):.0f} | {lo:.0f}-{hi:.0f} | {med(name,1):.3f} | {med(name,2):.3f} | {med(name,3):.1f} |")
ratio = med("keygate", 0) / med("nginx", 0)
print()
print(f"keygate / nginx throughput: {ratio:.2f}x (target >= 0.85x); "
      f"CPU per request: {med('keygate',3) / med('nginx',3):.2f}x nginx's")
print(f"keygate gateway / nginx+auth_request throughput: {med('keygate',0) / med('nginx+auth',0):.2f}x")
EOF
