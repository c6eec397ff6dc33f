#!/usr/bin/env bash
# Every fuzz target for a few seconds, from its seeds: the targets keep building and a short
# run finds nothing. `scripts/fuzz-long 4h` is the real thing.
set -euo pipefail
cd "$(dirname "$0")/../.."
exec scripts/fuzz-long --smoke
