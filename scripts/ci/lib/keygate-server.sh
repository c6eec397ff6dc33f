# Sourced by scripts/ci/*.sh: starts a keygate binary on SQLite in a temp dir and stops it
# (and removes the dir) when the script exits.
#
#   start_keygate NAME [VAR=value...]   sets WORK, URL, ADMIN_TOKEN, SERVER_PID
#
# The binary is $KEYGATE_BIN, or target/debug/keygate after a `cargo build -p keygate`
# (always run without KEYGATE_BIN: a binary left from an older checkout would serve an
# older document). The server sees only the settings given here, not the caller's KEYGATE_*.

_keygate_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)
_random_hex() { od -An -tx1 -N32 /dev/urandom | tr -d ' \n'; }

start_keygate() {
    local name=$1
    shift
    local bin=${KEYGATE_BIN:-${CARGO_TARGET_DIR:-$_keygate_root/target}/debug/keygate}
    if [[ -z ${KEYGATE_BIN:-} ]]; then
        (cd "$_keygate_root" && cargo build -q --locked -p keygate)
    fi
    while read -r var; do unset "$var"; done < <(compgen -e | grep '^KEYGATE_' || true)
    export NO_PROXY="127.0.0.1,localhost" no_proxy="127.0.0.1,localhost"

    WORK=$(mktemp -d "${TMPDIR:-/tmp}/keygate-$name.XXXXXX")
    SERVER_PID=""
    trap _stop_keygate EXIT
    ADMIN_TOKEN="kgadm_$(_random_hex)"
    local port
    port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    URL="http://127.0.0.1:$port"
    (
        cd "$WORK"
        exec env KEYGATE_ADMIN_TOKEN="$ADMIN_TOKEN" KEYGATE_PEPPER="$(_random_hex)" \
            KEYGATE_LISTEN="127.0.0.1:$port" KEYGATE_LOG=warn "$@" "$bin" serve
    ) >"$WORK/server.log" 2>&1 &
    SERVER_PID=$!
    for _ in $(seq 300); do
        curl -fsS -m 2 "$URL/healthz" >/dev/null 2>&1 && return 0
        kill -0 "$SERVER_PID" 2>/dev/null || { cat "$WORK/server.log" >&2; return 1; }
        sleep 0.1
    done
    echo "keygate did not answer /healthz in 30 s" >&2
    return 1
}

# The server's last lines, after a failure.
server_log_tail() {
    tail -n "${1:-40}" "$WORK/server.log" | sed 's/^/    /' >&2
}

_stop_keygate() {
    if [[ -n ${SERVER_PID:-} ]]; then
        kill -TERM "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
    fi
    [[ -n ${WORK:-} ]] && rm -rf "$WORK"
}
