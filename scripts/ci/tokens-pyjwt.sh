#!/usr/bin/env bash
# keygate's short-lived tokens checked by an independent JWT library: PyJWT (with
# `cryptography` for Ed25519) verifies a token from POST /v1/tokens with the keys of
# /.well-known/jwks.json and refuses it tampered, expired or for another audience; and a
# token PyJWT signs with a key of its own is refused by keygate. Starts keygate on SQLite.
#
#   bash scripts/ci/tokens-pyjwt.sh      (KEYGATE_BIN=... to use a built binary)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
say() { printf 'tokens-pyjwt: %s\n' "$*"; }
# A virtualenv of its own (PyJWT and cryptography, pinned), kept between runs.
requirements="$ROOT/scripts/ci/tokens/requirements.txt"
VENV=${KEYGATE_TOKENS_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/keygate-ci/venv-tokens}
want=$(sha256sum "$requirements" | cut -d' ' -f1)
if [[ ! -x $VENV/bin/python || $(cat "$VENV/.requirements.sha256" 2>/dev/null) != "$want" ]]; then
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check -r "$requirements"
    echo "$want" >"$VENV/.requirements.sha256"
fi
source "$ROOT/scripts/ci/lib/keygate-server.sh"

start_keygate tokens-pyjwt KEYGATE_TOKEN_MAX_TTL_SECONDS=600
say "keygate is up at $URL"
status=0
KEYGATE_URL="$URL" KEYGATE_ADMIN_TOKEN="$ADMIN_TOKEN" \
    "$VENV/bin/python" "$ROOT/scripts/ci/tokens/check_tokens.py" || status=$?
if ((status != 0)); then
    say "the check failed (exit $status); server log:" >&2
    server_log_tail
    exit "$status"
fi
say "ok"
