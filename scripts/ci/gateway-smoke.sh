#!/usr/bin/env bash
# The gateway benchmark in its smoke mode (a few seconds of load, 20 MB streams): the
# script, the binaries and the nginx comparison must keep working. It uses the debug build
# .ci/run made of the whole workspace (BUILD=0).
set -euo pipefail
BUILD=0 bash bench/gateway/run.sh --smoke
BUILD=0 bash bench/gateway/instructions.sh --smoke
