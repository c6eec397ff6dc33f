#!/usr/bin/env bash
# The README quickstart in Python and Node against a real server.
set -euo pipefail
bash scripts/quickstart-check
