#!/usr/bin/env bash
# The benchmarks in a quick smoke mode: they must keep compiling and running (the figures
# printed here mean nothing). Everything runs on the debug build of the whole workspace
# that .ci/run made before the tests: building with `-p` here would resolve features for a
# subset and recompile dependencies, which cost CI minutes. The figures come from
# `cargo bench` and the scripts' full modes (bench/README.md).
set -euo pipefail
TARGET_DIR=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
# Micro: criterion runs each benchmark once as a test; the cached-keys one at 1 k keys.
KEYGATE_BENCH_SIZES=1000 cargo test --locked --workspace --benches
# The profiling loop.
"$TARGET_DIR/debug/verify-loop" verify,floor,invalid 10000 100
# Bytes per cached key (SQLite, 2 000 keys).
"$TARGET_DIR/debug/cache-memory" sqlite 2000
# HTTP and scale scripts end to end on the debug binaries: 1 x 2 s per target; 20 000 keys.
BUILD=0 bash bench/http/run.sh --smoke
BUILD=0 bash bench/scale/run.sh --smoke
# Three nodes on one PostgreSQL (the capacity check behind docs/capacity.md), on the
# PostgreSQL server CI already runs.
BUILD=0 KEYGATE_BENCH_POSTGRES=${KEYGATE_TEST_POSTGRES:-} bash bench/capacity/three-nodes.sh --smoke
# Instructions per request under callgrind (load-independent), one short run.
BUILD=0 bash bench/http/instructions.sh --smoke
