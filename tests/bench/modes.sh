#!/usr/bin/env bash
# modes.sh - what forward mode and CONNECT tunnels cost, measured in one run.
# Run by hand, never in CI: it saturates the machine for a minute or two.
#
#   1. relay: the same small request (100-byte body, keep-alive) relayed by
#      detour in reverse mode (wrk GET /small) and in forward mode (wrk sending
#      the absolute-form "GET http://ORIGIN/small", no route: the request's own
#      destination), rounds alternating which goes first; the medians' ratio.
#      Target: forward costs no more than 1.1x reverse (rps_forward >=
#      rps_reverse / 1.1).
#   2. tunnel: a 1 GiB stream from a byte source (bench_stream serve) read
#      through a CONNECT tunnel in detour, and straight from the source,
#      alternating; the medians' ratio. Target: >= 0.9 of the direct rate.
#      Both ends cost next to nothing, so this ratio is the tunnel's own cost.
#      For reference, the same as a client sees it: curl downloading 1 GiB from
#      dt_origin's /bytes directly and with -p (--proxytunnel) through detour
#      (when dt_origin is built); there the ends cost more and hide part of it.
#
#   bash tests/bench/modes.sh                   # 3 rounds, 5 s per wrk run
#   BENCH_QUICK=1 bash tests/bench/modes.sh     # smoke run: 1 round, 2 s, 256 MiB
#
# Environment:
#   DETOUR_BIN          detour to measure (default build/detour)
#   BENCH_STREAM        the bench_stream helper (default: tests/bench_stream beside detour)
#   DT_ORIGIN_BIN       dt_origin, the origin when nginx is not installed
#                       (default: tests/dt_origin beside detour)
#   NGINX, WRK          binaries (default: found on PATH); nginx is the origin when present
#   BENCH_ROUNDS        rounds (default 3, quick 1)
#   BENCH_DURATION      seconds per wrk run (default 5, quick 2), after a 1 s warm-up
#   BENCH_CONNS         wrk connections (default 64); BENCH_THREADS wrk threads (default 2)
#   BENCH_WORKERS       detour workers (default 2)
#   BENCH_STREAM_BYTES  bytes per stream (default 1073741824, quick 268435456)
#   BENCH_KEEP_TMP=1    keep the temp dir (configs, logs) and print its path
# Exit status: 0, or 1 when a full (not quick) run misses a target; 2 on a setup error.
# Only processes started here are stopped, by PID.
set -u -o pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
quick=${BENCH_QUICK:-0}
DETOUR_BIN=${DETOUR_BIN:-$repo/build/detour}
BENCH_STREAM=${BENCH_STREAM:-$(dirname "$DETOUR_BIN")/tests/bench_stream}
DT_ORIGIN_BIN=${DT_ORIGIN_BIN:-$(dirname "$DETOUR_BIN")/tests/dt_origin}
WRK=${WRK:-$(command -v wrk || true)}
NGINX=${NGINX:-$(command -v nginx || true)}
ROUNDS=${BENCH_ROUNDS:-$([ "$quick" = 1 ] && echo 1 || echo 3)}
DURATION=${BENCH_DURATION:-$([ "$quick" = 1 ] && echo 2 || echo 5)}
CONNS=${BENCH_CONNS:-64}
THREADS=${BENCH_THREADS:-2}
WORKERS=${BENCH_WORKERS:-2}
STREAM_BYTES=${BENCH_STREAM_BYTES:-$([ "$quick" = 1 ] && echo 268435456 || echo 1073741824)}

die() { echo "modes.sh: $*" >&2; exit 2; }
[ -x "$DETOUR_BIN" ] || die "$DETOUR_BIN is not built (cmake --build build)"
[ -x "$BENCH_STREAM" ] || die "$BENCH_STREAM is not built (it is tests/bench/bench_stream.c)"
[ -n "$WRK" ] || die "wrk is not installed (scripts/deps.sh bench)"

tmp=$(mktemp -d /tmp/detour-modes-bench.XXXXXX) || die "mktemp failed"
pids=()
cleanup() {
    local pid i
    for pid in "${pids[@]}"; do
        kill -TERM "$pid" 2>/dev/null
    done
    for pid in "${pids[@]}"; do
        for ((i = 0; i < 100; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
        kill -KILL "$pid" 2>/dev/null
        wait "$pid" 2>/dev/null
    done
    if [ "${BENCH_KEEP_TMP:-0}" = 1 ]; then echo "kept $tmp"; else rm -rf "$tmp"; fi
}
trap cleanup EXIT
trap 'exit 2' INT TERM

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
# Below the ephemeral range, so that no client connection (or its TIME-WAIT) holds the port.
read -r EPHEMERAL_LOW _ </proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || EPHEMERAL_LOW=32768
free_port() {
    local p i span=$((EPHEMERAL_LOW > 12000 ? EPHEMERAL_LOW - 10000 : 2000))
    for ((i = 0; i < 200; i++)); do
        p=$((10000 + RANDOM % span))
        port_open "$p" || { echo "$p"; return 0; }
    done
    return 1
}
wait_port() { # PORT PID
    local i
    for ((i = 0; i < 200; i++)); do
        kill -0 "$2" 2>/dev/null || return 1
        port_open "$1" && return 0
        sleep 0.05
    done
    return 1
}
start() { # NAME PORT COMMAND...: background, logs in $tmp/NAME.{out,err}
    local name=$1 port=$2
    shift 2
    "$@" >"$tmp/$name.out" 2>"$tmp/$name.err" &
    pids+=($!)
    wait_port "$port" $! || { tail -n 5 "$tmp/$name.err" >&2; die "$name did not start"; }
}
cpu_s() { # CPU seconds (user + system) of PID
    awk -v hz="$(getconf CLK_TCK)" '{ sub(/.*\) /, ""); print ($12 + $13) / hz }' "/proc/$1/stat"
}
median() { sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

# ---- the origin, the byte source, two detours --------------------------------------

ORIGIN_PORT=$(free_port) || die "no free port"
if [ -n "$NGINX" ]; then
    mkdir -p "$tmp/nginx"
    cat >"$tmp/nginx/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $tmp/nginx/nginx.pid;
error_log $tmp/nginx/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $tmp/nginx/body;
    proxy_temp_path $tmp/nginx/proxy;
    fastcgi_temp_path $tmp/nginx/fastcgi;
    uwsgi_temp_path $tmp/nginx/uwsgi;
    scgi_temp_path $tmp/nginx/scgi;
    keepalive_requests 1000000;
    server {
        listen 127.0.0.1:$ORIGIN_PORT backlog=4096;
        location = /small {
            return 200 "012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789012345678\n";
        }
    }
}
EOF
    start origin "$ORIGIN_PORT" "$NGINX" -p "$tmp/nginx" -c "$tmp/nginx/nginx.conf"
    SMALL=/small
    origin_name="nginx (1 worker)"
else
    [ -x "$DT_ORIGIN_BIN" ] || die "neither nginx nor $DT_ORIGIN_BIN"
    start origin "$ORIGIN_PORT" "$DT_ORIGIN_BIN" -l "127.0.0.1:$ORIGIN_PORT"
    SMALL="/bytes?n=100"
    origin_name="dt_origin"
fi

SOURCE_PORT=$(free_port) || die "no free port"
start source "$SOURCE_PORT" "$BENCH_STREAM" serve "$SOURCE_PORT"
BYTES_PORT=
if [ -x "$DT_ORIGIN_BIN" ]; then
    BYTES_PORT=$(free_port) || die "no free port"
    start bytes "$BYTES_PORT" "$DT_ORIGIN_BIN" -l "127.0.0.1:$BYTES_PORT"
fi

REV_PORT=$(free_port) || die "no free port"
cat >"$tmp/reverse.cfg" <<EOF
listen = "127.0.0.1:$REV_PORT";
workers = $WORKERS;
access_log = "off";
limits = { max_connections = 20000; };
upstreams = { origin = { url = "http://127.0.0.1:$ORIGIN_PORT"; }; };
routes = ( { name = "all"; match = { prefix = "/"; }; relay = { upstream = "origin"; }; } );
EOF
start reverse "$REV_PORT" "$DETOUR_BIN" -c "$tmp/reverse.cfg"
REV_PID=${pids[-1]}

FWD_PORT=$(free_port) || die "no free port"
cat >"$tmp/forward.cfg" <<EOF
listen = "127.0.0.1:$FWD_PORT";
mode = "forward";
workers = $WORKERS;
access_log = "off";
limits = { max_connections = 20000; };
forward = { connect_ports = [$SOURCE_PORT${BYTES_PORT:+, $BYTES_PORT}]; };
EOF
start forward "$FWD_PORT" "$DETOUR_BIN" -c "$tmp/forward.cfg"
FWD_PID=${pids[-1]}

# Forward mode: wrk connects to detour and sends the absolute-form target.
printf 'wrk.path = "http://127.0.0.1:%s%s"\n' "$ORIGIN_PORT" "$SMALL" >"$tmp/absolute.lua"

# Both must answer 200 before anything is measured.
for url in "http://127.0.0.1:$REV_PORT$SMALL"; do
    [ "$(curl -s -o /dev/null -w '%{http_code}' "$url")" = 200 ] || die "reverse detour does not relay $url"
done
[ "$(curl -s -o /dev/null -w '%{http_code}' -x "http://127.0.0.1:$FWD_PORT" \
    "http://127.0.0.1:$ORIGIN_PORT$SMALL")" = 200 ] || die "forward detour does not relay"

# ---- 1. relay: reverse vs forward -----------------------------------------------------

run_wrk() { # MODE SECONDS: prints "rps cpu_us_per_request"
    local mode=$1 secs=$2 pid url out args=()
    if [ "$mode" = reverse ]; then
        pid=$REV_PID url="http://127.0.0.1:$REV_PORT$SMALL"
    else
        pid=$FWD_PID url="http://127.0.0.1:$FWD_PORT/" args=(-s "$tmp/absolute.lua")
    fi
    local c0 c1
    c0=$(cpu_s "$pid")
    out=$("$WRK" -t "$THREADS" -c "$CONNS" -d "${secs}s" "${args[@]}" "$url" 2>&1)
    c1=$(cpu_s "$pid")
    if grep -q 'Non-2xx\|Socket errors' <<<"$out"; then
        echo "modes.sh: $mode run had errors:" >&2
        grep 'Non-2xx\|Socket errors' <<<"$out" >&2
    fi
    local rps reqs
    rps=$(awk '/^Requests\/sec:/ { print $2 }' <<<"$out")
    reqs=$(awk '/requests in/ { print $1 }' <<<"$out")
    [ -n "$rps" ] && [ -n "$reqs" ] || { echo "$out" >&2; die "cannot read wrk's output"; }
    awk -v r="$rps" -v n="$reqs" -v c0="$c0" -v c1="$c1" 'BEGIN { printf "%.0f %.1f\n", r, (c1 - c0) * 1e6 / n }'
}

echo "# $(nproc) CPUs, load average $(cut -d' ' -f1-3 /proc/loadavg) (other load on the machine skews every figure)"
echo "# relay of GET $SMALL (100 bytes) from $origin_name: wrk -t$THREADS -c$CONNS -d${DURATION}s, detour workers = $WORKERS"
printf '%-6s %-8s %10s %14s\n' round mode rps "cpu us/req"
: >"$tmp/reverse.rps"
: >"$tmp/forward.rps"
: >"$tmp/reverse.cpu"
: >"$tmp/forward.cpu"
for ((r = 1; r <= ROUNDS; r++)); do
    if ((r % 2)); then order=(reverse forward); else order=(forward reverse); fi
    for mode in "${order[@]}"; do
        run_wrk "$mode" 1 >/dev/null # warm-up: connections, caches
        read -r rps cpu < <(run_wrk "$mode" "$DURATION")
        echo "$rps" >>"$tmp/$mode.rps"
        echo "$cpu" >>"$tmp/$mode.cpu"
        printf '%-6s %-8s %10s %14s\n' "$r" "$mode" "$rps" "$cpu"
    done
done
rev=$(median <"$tmp/reverse.rps")
fwd=$(median <"$tmp/forward.rps")
relay_cost=$(awk -v a="$rev" -v b="$fwd" 'BEGIN { printf "%.3f", a / b }')
relay_ok=$(awk -v c="$relay_cost" 'BEGIN { print (c <= 1.1) ? "ok" : "MISSED" }')
echo "median rps: reverse $rev, forward $fwd; forward costs ${relay_cost}x reverse (target <= 1.1): $relay_ok"
echo "median detour CPU per request: reverse $(median <"$tmp/reverse.cpu") us, forward $(median <"$tmp/forward.cpu") us"

# ---- 2. tunnel: CONNECT vs direct --------------------------------------------------------

echo
echo "# a $STREAM_BYTES-byte stream: direct vs through a CONNECT tunnel"
printf '%-6s %-8s %10s %10s %16s\n' round path MB/s seconds "detour cpu s"
: >"$tmp/direct.rate"
: >"$tmp/tunnel.rate"
for ((r = 1; r <= ROUNDS; r++)); do
    if ((r % 2)); then order=(direct tunnel); else order=(tunnel direct); fi
    for path in "${order[@]}"; do
        c0=$(cpu_s "$FWD_PID")
        if [ "$path" = direct ]; then
            out=$("$BENCH_STREAM" get "$SOURCE_PORT" "$STREAM_BYTES") || die "direct stream failed"
        else
            out=$("$BENCH_STREAM" tunnel "$FWD_PORT" "$SOURCE_PORT" "$STREAM_BYTES") || die "tunnel stream failed"
        fi
        c1=$(cpu_s "$FWD_PID")
        read -r _ _ _ secs _ rate <<<"$out"
        echo "$rate" >>"$tmp/$path.rate"
        printf '%-6s %-8s %10s %10s %16s\n' "$r" "$path" "$rate" "$secs" \
            "$(awk -v a="$c0" -v b="$c1" 'BEGIN { printf "%.2f", b - a }')"
    done
done
direct=$(median <"$tmp/direct.rate")
tunnel=$(median <"$tmp/tunnel.rate")
tunnel_ratio=$(awk -v a="$tunnel" -v b="$direct" 'BEGIN { printf "%.3f", a / b }')
tunnel_ok=$(awk -v c="$tunnel_ratio" 'BEGIN { print (c >= 0.9) ? "ok" : "MISSED" }')
echo "median MB/s: direct $direct, tunnel $tunnel; tunnel/direct = $tunnel_ratio (target >= 0.9): $tunnel_ok"

if [ -n "$BYTES_PORT" ]; then
    echo
    echo "# for reference: curl -o /dev/null, $STREAM_BYTES bytes of dt_origin's /bytes, direct vs -p through detour"
    printf '%-6s %-8s %10s\n' round path MB/s
    : >"$tmp/curl-direct.rate"
    : >"$tmp/curl-tunnel.rate"
    url="http://127.0.0.1:$BYTES_PORT/bytes?n=$STREAM_BYTES"
    for ((r = 1; r <= ROUNDS; r++)); do
        if ((r % 2)); then order=(direct tunnel); else order=(tunnel direct); fi
        for path in "${order[@]}"; do
            args=()
            [ "$path" = tunnel ] && args=(-p -x "http://127.0.0.1:$FWD_PORT")
            bps=$(curl -sS -o /dev/null -w '%{speed_download}' "${args[@]}" "$url") || die "curl $path failed"
            rate=$(awk -v b="$bps" 'BEGIN { printf "%.1f", b / 1e6 }')
            echo "$rate" >>"$tmp/curl-$path.rate"
            printf '%-6s %-8s %10s\n' "$r" "$path" "$rate"
        done
    done
    cd_=$(median <"$tmp/curl-direct.rate")
    ct_=$(median <"$tmp/curl-tunnel.rate")
    echo "median MB/s: direct $cd_, tunnel $ct_; tunnel/direct = $(awk -v a="$ct_" -v b="$cd_" 'BEGIN { printf "%.3f", a / b }')"
fi

echo
echo "relay: forward/reverse cost ${relay_cost}x ($relay_ok); tunnel: ${tunnel_ratio} of direct ($tunnel_ok)"
if [ "$quick" != 1 ] && { [ "$relay_ok" != ok ] || [ "$tunnel_ok" != ok ]; }; then
    exit 1
fi
exit 0
