#!/usr/bin/env bash
# The benchmarks in a quick smoke mode: they must keep compiling and running (the figures
# printed here mean nothing). Everything runs on the debug build the test step made: an
# optimised build of the workspace alone would take CI several minutes. The figures come
# from `cargo bench` and the scripts' full modes (bench/README.md).
set -euo pipefail
# Micro: criterion runs each benchmark once as a test; the cached-keys one at 1 k keys.
cargo test --locked -p keygate-engine --benches
cargo test --locked -p keygate-tower --benches
KEYGATE_BENCH_SIZES=1000 cargo test --locked -p keygate-bench --benches
# The profiling loop.
cargo run --locked -q -p keygate-bench --bin verify-loop -- verify,floor,invalid 10000 100
# HTTP and scale scripts end to end: 1 x 2 s per target; 20 000 keys.
bash bench/http/run.sh --smoke
bash bench/scale/run.sh --smoke
