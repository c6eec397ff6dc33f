#!/usr/bin/env bash
# The micro-benchmarks in a quick smoke mode: they must keep compiling and running. Run
# as tests (criterion runs each benchmark once), on the debug build the test step made, so
# CI does not pay for an optimised build; the figures come from `cargo bench`, not from here.
set -euo pipefail
cargo test --locked -p keygate-engine --benches
