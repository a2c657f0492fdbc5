# shellcheck shell=bash disable=SC2034 # variables are for the scripts that source this
# detour_env.sh - sourced by the shell integration tests (test_*.sh): free
# ports, dt_origin and build/detour as background processes with bounded
# start and stop, a temporary directory, and ok / not ok bookkeeping.
#
# Environment (as ctest sets it): DETOUR_BIN, DT_ORIGIN_BIN, DETOUR_SOURCE_DIR,
# DETOUR_TEST_TMP. Only processes started here are signalled, by PID.

DE_SRC=${DETOUR_SOURCE_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}
DE_DETOUR=${DETOUR_BIN:-$DE_SRC/build/detour}
DE_ORIGIN_BIN=${DT_ORIGIN_BIN:-$(dirname "$DE_DETOUR")/tests/dt_origin}
DE_PASS=0
DE_FAIL=0
DE_PIDS=()
DE_DIR=
DE_ORIGIN_PORT=
DE_ORIGIN_PID=
DE_PORT=
DE_PID=
DE_URL=
DE_RC=

de_skip() { # REASON: exit 77, which ctest reports as skipped (never as passed)
    echo "SKIP: $*"
    exit 77
}

de_die() {
    echo "FATAL: $*" >&2
    de_dump
    exit 1
}

# A fresh directory under $DETOUR_TEST_TMP, and the cleanup trap.
de_init() { # NAME
    local base=${DETOUR_TEST_TMP:-/tmp/detour-tests}
    mkdir -p "$base" || de_die "cannot create $base"
    DE_DIR=$(mktemp -d "$base/$1.XXXXXX") || de_die "mktemp failed"
    [ -x "$DE_DETOUR" ] || de_die "$DE_DETOUR is not executable (set DETOUR_BIN)"
    [ -x "$DE_ORIGIN_BIN" ] || de_die "$DE_ORIGIN_BIN is not executable (set DT_ORIGIN_BIN)"
    trap de_cleanup EXIT
}

de_alive() { kill -0 "$1" 2>/dev/null; }

# Does 127.0.0.1:PORT accept a connection?
de_port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# A port nothing listens on right now. A server started on it may still lose a
# race with another process: the starters below retry with a new port.
de_free_port() {
    local p i
    for ((i = 0; i < 200; i++)); do
        p=$((20000 + RANDOM % 40000))
        de_port_open "$p" || { echo "$p"; return 0; }
    done
    return 1
}

de_wait_port() { # PORT PID SECONDS: 0 once PORT accepts, 1 when PID died or time ran out
    local deadline=$((SECONDS + $3))
    while ((SECONDS < deadline)); do
        de_alive "$2" || return 1
        de_port_open "$1" && return 0
        sleep 0.05
    done
    return 1
}

# Stop PID: SIGTERM, up to SECONDS, then SIGKILL; its exit status goes to
# DE_RC. Not in $(...): only this shell can wait for its children.
de_stop_pid() { # PID SECONDS
    local pid=$1 deadline=$((SECONDS + $2))
    if de_alive "$pid"; then
        kill -TERM "$pid" 2>/dev/null
        while de_alive "$pid" && ((SECONDS < deadline)); do sleep 0.05; done
        if de_alive "$pid"; then
            kill -KILL "$pid" 2>/dev/null
            echo "de_stop_pid: $pid ignored SIGTERM for $2 s, killed" >&2
        fi
    fi
    wait "$pid" 2>/dev/null
    DE_RC=$?
}

de_cleanup() {
    local pid
    for pid in "${DE_PIDS[@]}"; do
        de_alive "$pid" && de_stop_pid "$pid" 5
    done
    DE_PIDS=()
}

de_dump() {
    local f
    for f in "$DE_DIR"/*.err "$DE_DIR"/*.out; do
        [ -s "$f" ] || continue
        echo "---- $f (last lines) ----" >&2
        tail -n 20 "$f" >&2
    done
}

de_start_origin() {
    local try
    for ((try = 0; try < 5; try++)); do
        DE_ORIGIN_PORT=$(de_free_port) || de_die "no free port"
        "$DE_ORIGIN_BIN" -l "127.0.0.1:$DE_ORIGIN_PORT" >"$DE_DIR/origin.out" 2>"$DE_DIR/origin.err" &
        DE_ORIGIN_PID=$!
        DE_PIDS+=("$DE_ORIGIN_PID")
        de_wait_port "$DE_ORIGIN_PORT" "$DE_ORIGIN_PID" 10 && return 0
        de_stop_pid "$DE_ORIGIN_PID" 2
    done
    de_die "dt_origin did not start"
}

# Start detour relaying everything to dt_origin (upstream "o", route "all"),
# with EXTRA (top-level settings such as "rewrite_302 = true;") in the config.
# The access log goes to $DE_DIR/access.log.
de_start_detour() { # [EXTRA]
    local try
    for ((try = 0; try < 5; try++)); do
        DE_PORT=$(de_free_port) || de_die "no free port"
        cat >"$DE_DIR/detour.cfg" <<EOF
listen = "127.0.0.1:$DE_PORT";
workers = 2;
access_log = "$DE_DIR/access.log";
timeouts = { drain_ms = 3000; };
${1:-}
upstreams = { o = { url = "http://127.0.0.1:$DE_ORIGIN_PORT"; }; };
routes = ( { name = "all"; match = { prefix = "/"; }; relay = { upstream = "o"; }; } );
EOF
        "$DE_DETOUR" -c "$DE_DIR/detour.cfg" >"$DE_DIR/detour.out" 2>"$DE_DIR/detour.err" &
        DE_PID=$!
        DE_PIDS+=("$DE_PID")
        DE_URL=http://127.0.0.1:$DE_PORT
        de_wait_port "$DE_PORT" "$DE_PID" 10 && return 0
        de_stop_pid "$DE_PID" 2
    done
    de_die "detour did not start"
}

# Stop detour; the contract says it exits 0 after SIGTERM.
de_stop_detour() {
    de_stop_pid "$DE_PID" 15
    de_check "detour exits 0 after SIGTERM" 0 "$DE_RC"
}

de_check() { # WHAT EXPECTED ACTUAL
    if [ "$2" = "$3" ]; then
        DE_PASS=$((DE_PASS + 1))
        echo "ok - $1: $3"
    else
        DE_FAIL=$((DE_FAIL + 1))
        echo "not ok - $1"
        echo "#   expected: $2"
        echo "#   actual:   $3"
    fi
}

de_finish() {
    echo "$DE_PASS passed, $DE_FAIL failed"
    [ "$DE_FAIL" -eq 0 ] || { de_dump; exit 1; }
    exit 0
}

# Print the first line of FILE matching the extended REGEX, waiting up to
# SECONDS for it (logs are written a little after the response).
de_wait_line() { # FILE REGEX SECONDS
    local deadline=$((SECONDS + $3))
    while ((SECONDS <= deadline)); do
        grep -m1 -E -- "$2" "$1" 2>/dev/null && return 0
        sleep 0.05
    done
    return 1
}

# The SHA-256 (hex) of a file, or of stdin with "-".
de_sha256() { sha256sum "$1" | cut -d' ' -f1; }

# "METHOD LENGTH SHA256" from dt_origin's /legacy/done page on stdin ("- - -" when it is not one).
de_done_fields() {
    local page m l s
    page=$(cat)
    m=$(sed -n 's|.*<p id="method">\([^<]*\)</p>.*|\1|p' <<<"$page")
    l=$(sed -n 's|.*<p id="length">\([^<]*\)</p>.*|\1|p' <<<"$page")
    s=$(sed -n 's|.*<p id="sha256">\([^<]*\)</p>.*|\1|p' <<<"$page")
    echo "${m:--} ${l:--} ${s:--}"
}
