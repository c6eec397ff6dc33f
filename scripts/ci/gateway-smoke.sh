#!/usr/bin/env bash
# The gateway benchmark in its smoke mode (a few seconds of load, 20 MB streams): the
# script, the release binaries and the nginx comparison must keep working.
set -euo pipefail
bash bench/gateway/run.sh --smoke
