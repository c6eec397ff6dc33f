#!/usr/bin/env bash
# Scale benchmark: keygate with 1 000 000 keys in SQLite (and PostgreSQL).
#
#   bench/scale/run.sh                         SQLite, 1 M keys (about 10 minutes)
#   BACKENDS="sqlite postgres" bench/scale/run.sh
#   bench/scale/run.sh --smoke                 SQLite, 20 000 keys, 2 000 hot, debug keygate (CI)
#   KEYS=1000000 HOT=100000 SMALL=1000 MISS_SAMPLES=2000 BUILD=0 bench/scale/run.sh
#   USAGE_FLUSH_SECONDS=3600 bench/scale/run.sh  the latencies without a usage flush during them
#
# Per backend, on a fresh database:
#   1. bulk create: `keygate import` of a KEYS-key file (the production bulk path), the
#      loading floor (multi-row INSERTs straight into the schema, `scale load`) on a
#      second database, and the one-key-at-a-time create path (`scale create`, 2 000 keys,
#      extrapolated); database size after the import.
#   2. cold start: `keygate serve` over the KEYS-key database, from exec to the first 200
#      of /readyz; resident memory (VmRSS) idle, then after HOT distinct keys were verified
#      over HTTP (they are then cached): bytes per cached key.
#   3. latency, one request at a time (wrk -t1 -c1, so the figures are service times, not
#      queueing): forward-auth cache hits over the HOT cached keys, and cache misses over
#      keys never asked before; the same hits on a SMALL-key database.
#   4. in process (no HTTP): cache-miss verify p50/p99 in a fresh engine (MISS_SAMPLES
#      random keys), at SMALL and at KEYS keys.
# PostgreSQL: a throwaway cluster (scripts/pg-throwaway, fsync on, as SQLite's
# synchronous=FULL) of its own unless
# KEYGATE_BENCH_POSTGRES names a database to use (it is written to).
# keygate serve and the client are pinned to CPU 0 and 1 (taskset). Output: Markdown on
# stdout and in $OUT (default target/bench-results/scale-<UTC time>.md).
set -euo pipefail
cd "$(dirname "$0")/../.."
. bench/lib.sh
if [ "$SMOKE" = 1 ]; then
  KEYS=${KEYS:-20000}; HOT=${HOT:-2000}; SMALL=${SMALL:-1000}; MISS_SAMPLES=${MISS_SAMPLES:-500}
  CREATE=${CREATE:-100}; DURATION=${DURATION:-2}; PROFILE=${PROFILE:-debug}
else
  KEYS=${KEYS:-1000000}; HOT=${HOT:-100000}; SMALL=${SMALL:-1000}; MISS_SAMPLES=${MISS_SAMPLES:-2000}
  CREATE=${CREATE:-2000}; DURATION=${DURATION:-10}; PROFILE=${PROFILE:-release}
fi
BACKENDS=${BACKENDS:-sqlite}
# keygate's default; a long interval shows what the usage flush costs the latencies.
USAGE_FLUSH_SECONDS=${USAGE_FLUSH_SECONDS:-5}
results_file scale

require_tools wrk curl python3 taskset

TARGET_DIR=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
if [ "${BUILD:-1}" = 1 ]; then
  echo "building keygate ($PROFILE) and the bench programs ..." >&2
  if [ "$PROFILE" = release ]; then
    cargo build --release --locked -q -p keygate
  else
    cargo build --locked -q -p keygate
  fi
  if [ "$SMOKE" = 1 ]; then
    cargo build --locked -q -p keygate-bench --bin scale
  else
    cargo build --profile bench --locked -q -p keygate-bench --bin scale
  fi
fi
if [ "$PROFILE" = release ]; then KEYGATE="$TARGET_DIR/release/keygate"; else KEYGATE="$TARGET_DIR/debug/keygate"; fi
# The smoke mode builds nothing optimised (CI has the debug build already).
if [ "$SMOKE" = 1 ]; then SCALE="$TARGET_DIR/debug/scale"; else SCALE="$TARGET_DIR/release/scale"; fi
PEPPER=$("$SCALE" pepper)

WORK=$(mktemp -d "${TMPDIR:-/tmp}/keygate-scale.XXXXXX")
PG_STARTED=0
PG_TMP=
cleanup() {
  stop_started
  if [ "$PG_STARTED" = 1 ]; then TMPDIR="$PG_TMP" bash scripts/pg-throwaway stop || true; fi
  rm -rf "$WORK" "${PG_TMP:-}"
}
trap cleanup EXIT

rss_kib() { awk '$1 == "VmRSS:" {print $2}' "/proc/$1/status"; }
rotate_lua "$WORK/rotate.lua"

# serve DB_URL -> sets SERVE_PID, SERVE_ADDR, READY_MS
serve() {
  local url=$1 port
  port=$(free_port)
  SERVE_ADDR="127.0.0.1:$port"
  local since; since=$(date +%s%N)
  KEYGATE_DATABASE_URL="$url" KEYGATE_PEPPER="$PEPPER" KEYGATE_LISTEN="$SERVE_ADDR" \
  KEYGATE_ADMIN_TOKEN="kgadm_scale_bench_token_0123456789" KEYGATE_LOG=warn KEYGATE_FAILED_AUTH_LIMIT=off \
  KEYGATE_USAGE_FLUSH_SECONDS="$USAGE_FLUSH_SECONDS" \
    taskset -c "$SERVER_CPU" "$KEYGATE" serve 2>>"$WORK/serve.log" &
  SERVE_PID=$!
  PIDS+=("$SERVE_PID")
  READY_MS=$(field "$(taskset -c "$LOAD_CPU" "$SCALE" wait-ready "http://$SERVE_ADDR/readyz" "$since")" ready_ms)
}
stop_serve() { kill -TERM "$SERVE_PID"; wait "$SERVE_PID" 2>/dev/null || true; }

# wrk_c1 KEYFILE FIRST -> "p50_ms p99_ms req/s non2xx"
wrk_c1() {
  local out
  out=$(taskset -c "$LOAD_CPU" wrk -t1 -c1 -d"${DURATION}s" --latency -s "$WORK/rotate.lua" \
    "http://$SERVE_ADDR/v1/auth" -- "$1" "$2")
  echo "$(to_ms "$(awk '$1 == "50%" {print $2}' <<<"$out")") $(to_ms "$(awk '$1 == "99%" {print $2}' <<<"$out")") $(awk '/^Requests\/sec:/ {print $2}' <<<"$out") $(awk '/Non-2xx/ {print $5}' <<<"$out")"
}

REPORT="$WORK/report.md"; : >"$REPORT"
row() { echo "$*" >>"$REPORT"; echo "$*" >&2; }

run_backend() {
  local backend=$1 url floor_url small_url
  case $backend in
    sqlite)
      url="sqlite://$WORK/big.db"; floor_url="sqlite://$WORK/floor.db"; small_url="sqlite://$WORK/small.db" ;;
    postgres)
      local base=${KEYGATE_BENCH_POSTGRES:-}
      if [ -z "$base" ]; then
        # A directory the postgres user can enter ($WORK is private to us).
        PG_TMP=$(mktemp -d "${TMPDIR:-/tmp}/keygate-scale-pg.XXXXXX")
        chmod 755 "$PG_TMP"
        eval "$(TMPDIR="$PG_TMP" PG_FSYNC=on bash scripts/pg-throwaway start)"
        PG_STARTED=1
        base=$KEYGATE_TEST_POSTGRES
      fi
      local admin_url=$base
      for db in kg_big kg_floor kg_small; do
        python3 - "$admin_url" "$db" <<'EOF'
import subprocess, sys, urllib.parse
u = urllib.parse.urlparse(sys.argv[1])
subprocess.run(["psql", "-q", "-h", u.hostname, "-p", str(u.port), "-U", u.username or "postgres",
                "-d", u.path.lstrip("/") or "postgres", "-c", f"DROP DATABASE IF EXISTS {sys.argv[2]}",
                "-c", f"CREATE DATABASE {sys.argv[2]}"], check=True, capture_output=True)
EOF
      done
      url="${base%/*}/kg_big"; floor_url="${base%/*}/kg_floor"; small_url="${base%/*}/kg_small" ;;
  esac

  echo "== $backend: $KEYS keys" >&2
  # The loading floor first, on a database of its own that goes before the import (disk).
  local floor; floor=$("$SCALE" load "$floor_url" "$KEYS")
  if [ "$backend" = sqlite ]; then rm -f "$WORK"/floor.db*; fi
  # The import file goes through a pipe (`keygate import -`; a file of 1 M keys is ~520 MB);
  # the time to generate it alone is measured first and subtracted.
  local t0 t1 gen_ns import_s size
  t0=$(date +%s%N)
  "$SCALE" export-file "$KEYS" /dev/null
  t1=$(date +%s%N)
  gen_ns=$((t1 - t0))
  t0=$(date +%s%N)
  "$SCALE" export-file "$KEYS" /dev/stdout \
    | KEYGATE_DATABASE_URL="$url" KEYGATE_PEPPER="$PEPPER" "$KEYGATE" import - 2>>"$WORK/import.log"
  t1=$(date +%s%N)
  import_s=$(python3 -c "print(round(($t1 - $t0 - $gen_ns) / 1e9, 1))")
  "$SCALE" export-file "$SMALL" "$WORK/small.jsonl"
  local size_line; size_line=$("$SCALE" load "$url" 0)
  size=$(field "$size_line" database_bytes)
  KEYGATE_DATABASE_URL="$small_url" KEYGATE_PEPPER="$PEPPER" "$KEYGATE" import "$WORK/small.jsonl" 2>>"$WORK/import.log"
  local created; created=$("$SCALE" create "$url" "$CREATE")

  # Cold start, memory, latency over HTTP on the big database.
  serve "$url"
  local ready_big=$READY_MS
  sleep 1
  local rss_idle; rss_idle=$(rss_kib "$SERVE_PID")
  local warmed; warmed=$(taskset -c "$LOAD_CPU" "$SCALE" warm "$SERVE_ADDR" 0 "$HOT" 32)
  sleep 1
  local rss_hot; rss_hot=$(rss_kib "$SERVE_PID")
  local cached; cached=$(curl -s "http://$SERVE_ADDR/metrics" | awk '$1 == "keygate_cache_keys" {print $2}')
  "$SCALE" keys 0 "$HOT" >"$WORK/hot.txt"
  # Never asked before: each request a cache miss (as long as fewer are sent).
  "$SCALE" keys "$HOT" $(( KEYS < HOT + 200000 ? KEYS : HOT + 200000 )) >"$WORK/cold.txt"
  local hit_big miss_big
  hit_big=$(wrk_c1 "$WORK/hot.txt" 0)
  miss_big=$(wrk_c1 "$WORK/cold.txt" 0)
  local rss_after; rss_after=$(rss_kib "$SERVE_PID")
  stop_serve

  # The same hits on the small database.
  serve "$small_url"
  local ready_small=$READY_MS
  taskset -c "$LOAD_CPU" "$SCALE" warm "$SERVE_ADDR" 0 "$SMALL" 8 >/dev/null
  "$SCALE" keys 0 "$SMALL" >"$WORK/small.txt"
  local hit_small; hit_small=$(wrk_c1 "$WORK/small.txt" 0)
  stop_serve

  # In process: cache misses in a fresh engine.
  local miss_small_ip miss_big_ip
  miss_small_ip=$(taskset -c "$SERVER_CPU" "$SCALE" miss "$small_url" "$SMALL" "$(( MISS_SAMPLES < SMALL ? MISS_SAMPLES : SMALL ))")
  miss_big_ip=$(taskset -c "$SERVER_CPU" "$SCALE" miss "$url" "$KEYS" "$MISS_SAMPLES")

  local per_key
  per_key=$(python3 -c "print(round(($rss_hot - $rss_idle) * 1024 / $HOT))")
  set -- $hit_big; local hb50=$1 hb99=$2 hbrps=$3
  set -- $miss_big; local mb50=$1 mb99=$2 mbrps=$3 mbnon=${4:-0}
  set -- $hit_small; local hs50=$1 hs99=$2 hsrps=$3
  row ""
  row "#### $backend, $KEYS keys"
  row ""
  row "| measure | value |"
  row "|---|---|"
  row "| bulk create: \`keygate import\` of $KEYS keys | $import_s s ($(python3 -c "print(f'{$KEYS / $import_s:,.0f}')") keys/s) |"
  row "| bulk create floor: multi-row INSERTs (\`scale load\`) | $(field "$floor" seconds) s ($(python3 -c "print(f'{float($(field "$floor" keys_per_second)):,.0f}')") keys/s) |"
  row "| create path, one key per call (\`Engine::create_key\`, $CREATE keys) | $(field "$created" keys_per_second) keys/s, p50 $(field "$created" p50_ms) ms, p99 $(field "$created" p99_ms) ms → $KEYS keys ≈ $(python3 -c "print(round($(field "$created" extrapolated_1m_seconds) * $KEYS / 1e6 / 60, 1))") min |"
  row "| database size after the import | $(python3 -c "print(f'{$size / 1048576:,.0f}')") MiB ($(python3 -c "print(round($size / $KEYS))") bytes per key) |"
  row "| cold start of \`keygate serve\` (exec → /readyz 200) | $ready_big ms ($SMALL keys: $ready_small ms) |"
  row "| resident memory idle → after $HOT keys verified (cached: ${cached:-?}) | $(python3 -c "print(f'{$rss_idle/1024:.1f} → {$rss_hot/1024:.1f} MiB')") ; after the latency runs $(python3 -c "print(f'{$rss_after/1024:.1f}')") MiB |"
  row "| bytes per cached key (ΔRSS / $HOT) | $per_key |"
  row "| forward-auth cache hit, one at a time, $HOT hot keys of $KEYS | p50 $hb50 ms, p99 $hb99 ms ($hbrps req/s) |"
  row "| forward-auth cache hit, one at a time, $SMALL keys of $SMALL | p50 $hs50 ms, p99 $hs99 ms ($hsrps req/s) |"
  row "| forward-auth cache miss, one at a time, $KEYS keys | p50 $mb50 ms, p99 $mb99 ms ($mbrps req/s; refused: ${mbnon}) |"
  row "| in-process cache-miss verify, $MISS_SAMPLES keys of $KEYS | p50 $(field "$miss_big_ip" p50_us) µs, p99 $(field "$miss_big_ip" p99_us) µs, max $(field "$miss_big_ip" max_us) µs |"
  row "| in-process cache-miss verify, $(field "$miss_small_ip" samples) keys of $SMALL | p50 $(field "$miss_small_ip" p50_us) µs, p99 $(field "$miss_small_ip" p99_us) µs, max $(field "$miss_small_ip" max_us) µs |"
}

UPTIME_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
for backend in $BACKENDS; do run_backend "$backend"; done
UPTIME_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)
{
  echo "### Scale ($STAMP)"
  echo
  echo "- command: \`$([ "$SMOKE" = 1 ] && echo "bench/scale/run.sh --smoke" || echo "BACKENDS=\"$BACKENDS\" KEYS=$KEYS HOT=$HOT SMALL=$SMALL MISS_SAMPLES=$MISS_SAMPLES CREATE=$CREATE DURATION=$DURATION USAGE_FLUSH_SECONDS=$USAGE_FLUSH_SECONDS bench/scale/run.sh")\`"
  echo "- machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(free -g | awk '/Mem:/ {print $2}') GiB, $(uname -r); load average before $UPTIME_BEFORE, after $UPTIME_AFTER"
  echo "- keygate $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- crates || echo ' + local changes') ($PROFILE build), $(wrk --version 2>&1 | head -1 | cut -d' ' -f1-2)"
  cat "$REPORT"
} | tee "$OUT"
echo >&2
echo "written to $OUT" >&2
