# Sourced by scripts/ci/*.sh: a virtualenv with the pinned tools of requirements.txt (kept
# between runs; reinstalled when the pins change), its bin/ first on PATH.
#   KEYGATE_CI_VENV=...   another place for it
_requirements="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/requirements.txt"
KEYGATE_CI_VENV=${KEYGATE_CI_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/keygate-ci/venv}
_stamp="$KEYGATE_CI_VENV/.requirements.sha256"
_want=$(sha256sum "$_requirements" | cut -d' ' -f1)
if [[ ! -x $KEYGATE_CI_VENV/bin/python || $(cat "$_stamp" 2>/dev/null) != "$_want" ]]; then
    python3 -m venv "$KEYGATE_CI_VENV"
    "$KEYGATE_CI_VENV/bin/pip" install --quiet --disable-pip-version-check -r "$_requirements"
    echo "$_want" >"$_stamp"
fi
export PATH="$KEYGATE_CI_VENV/bin:$PATH"
unset _requirements _stamp _want
