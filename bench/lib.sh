# Helpers shared by the bench scripts (sourced, not run, from the repository's root).

ROOT=$(pwd)
# 1 when the script was called with --smoke (CI: brief runs on the debug build).
SMOKE=0
if [ "${1:-}" = "--smoke" ]; then SMOKE=1; fi
# The server under test and the load generator, on different CPUs.
SERVER_CPU=${SERVER_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
if [ "$(nproc)" -lt 2 ]; then SERVER_CPU=0; LOAD_CPU=0; fi
STAMP=$(date -u +%Y%m%dT%H%M%SZ)

# results_file NAME: sets OUT (unless given) to where the script keeps its Markdown.
results_file() {
  OUT=${OUT:-$ROOT/target/bench-results/$1-$STAMP.md}
  mkdir -p "$(dirname "$OUT")"
}

need() { command -v "$1" >/dev/null 2>&1; }

# require_tools TOOL...: installs the missing ones from Debian's packages when root, else
# says what is missing and exits.
require_tools() {
  local missing=() pkgs=() tool
  for tool in "$@"; do need "$tool" || missing+=("$tool"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ "$(id -u)" != 0 ]; then
    echo "$0: needs ${missing[*]} (run scripts/install-deps as root)" >&2
    exit 1
  fi
  for tool in "${missing[@]}"; do
    case $tool in taskset) pkgs+=(util-linux) ;; *) pkgs+=("$tool") ;; esac
  done
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null
}

# Processes started in the background are added to PIDS; stop_started ends them.
PIDS=()
stop_started() {
  local pid
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }

wait_port() {
  for _ in $(seq 1 400); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    sleep 0.05
  done
  echo "nothing listens on port $1" >&2
  return 1
}

# field "a=1 b=2" b -> 2
field() { tr ' ' '\n' <<<"$1" | awk -F= -v k="$2" '$1 == k {print $2}'; }

# wrk's durations (850.00us, 1.20ms, 2.00s) in milliseconds.
to_ms() {
  python3 -c 'import sys,re
v=sys.argv[1]; m=re.match(r"([0-9.]+)(us|ms|s)$", v)
n=float(m.group(1)); print({"us":n/1000,"ms":n,"s":n*1000}[m.group(2)])' "$1"
}

# The start of an nginx.conf for a one-worker benchmark server (files under $WORK), up to
# and including the opening of the http block.
nginx_conf_head() {
  if [ "$(id -u)" = 0 ]; then echo "user root;"; fi
  cat <<NGINX
worker_processes 1;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $WORK/body; proxy_temp_path $WORK/proxy;
    fastcgi_temp_path $WORK/fastcgi; uwsgi_temp_path $WORK/uwsgi; scgi_temp_path $WORK/scgi;
NGINX
}

# rotate_lua FILE: writes a wrk script of forward-auth requests (GET /api/v1/invoices/42),
# each with the next key of a file. wrk arguments after `--`: the key file, the first line.
rotate_lua() {
  cat >"$1" <<'LUA'
local keys, i = {}, 0
function init(args)
  for line in io.lines(args[1]) do keys[#keys + 1] = line end
  i = tonumber(args[2] or "0")
end
function request()
  i = i + 1
  if i > #keys then i = 1 end
  return wrk.format("GET", "/v1/auth", {
    ["Authorization"] = "Bearer " .. keys[i],
    ["X-Original-Method"] = "GET",
    ["X-Original-URI"] = "/api/v1/invoices/42",
  })
end
LUA
}

# Instructions per request of a server started under callgrind (PID, writing OUT.%p) that
# serves URL: a 2 s warm-up, the counters zeroed, DURATION seconds of wrk (the arguments
# after URL go to wrk), the counters dumped and the server stopped. KEEP_PROFILE=DIR keeps
# the dumps for callgrind_annotate. Used by bench/http and bench/gateway instructions.sh.
callgrind_per_request() {
  local pid=$1 out=$2 url=$3; shift 3
  wrk -t1 -c8 -d2s "$@" "$url" >/dev/null
  callgrind_control -z "$pid" >/dev/null 2>&1
  local requests
  requests=$(wrk -t1 -c8 -d"${DURATION}s" "$@" "$url" | awk '/requests in/ {print $1}')
  callgrind_control -d "$pid" >/dev/null 2>&1
  sleep 0.5
  local total
  total=$(cat "$out".* | awk '/^totals:/ {print $2}' | sort -n | tail -1)
  kill -TERM "$pid"; wait "$pid" 2>/dev/null || true
  if [ -n "${KEEP_PROFILE:-}" ]; then mkdir -p "$KEEP_PROFILE"; cp "$out".* "$KEEP_PROFILE"/; fi
  rm -f "$out".*
  python3 -c "print(round($total / $requests))"
}
