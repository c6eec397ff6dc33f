#!/usr/bin/env bash
# The micro-benchmarks in a quick smoke mode: they must keep compiling and running.
set -euo pipefail
cargo bench --locked -p keygate-engine --bench verify -- --warm-up-time 0.2 --measurement-time 0.5
