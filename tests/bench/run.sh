#!/usr/bin/env bash
# run.sh - detour side by side with nginx and HAProxy, run by hand (never in CI).
#
#   bash tests/bench/run.sh                 # full: every scenario, 3 rounds, medians (~20 min)
#   BENCH_QUICK=1 bash tests/bench/run.sh   # smoke: small/big/redir, 1 round (~2 min)
#   BENCH_HOLD=0 bash tests/bench/run.sh    # skip the 10,000-connection hold test
#
# 1. ../shared/bench/peers.sh with detour as peer F (tests/bench/detour-peer.sh
#    renders tests/bench/detour.cfg.in): direct, nginx (1 and 2 workers) and
#    HAProxy (2 threads) in the same run; small and 1 MiB GETs, 4 KiB POSTs,
#    c=64 and c=512, the proxy's own 307; rps, p50/p99, peak RSS, CPU/request,
#    ratios. The TSV lands in $BENCH_OUT (default /tmp/peers.tsv).
# 2. The hold test: 10,000 concurrent keep-alive connections through detour
#    (wrk -c10000 for BENCH_HOLD_SECONDS), reported with wrk's error counts and
#    detour's peak RSS. Passes when wrk reports no socket error and no non-2xx.
#
# Needs nginx, haproxy, wrk, curl (bash scripts/deps.sh bench) and a built
# build/detour (cmake --build build). The machine's cores are shared with wrk
# and the origin: read ratios from one run, repeat, quote medians.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
peers=${PEERS_SH:-$root/../shared/bench/peers.sh}
[ -x "$peers" ] || peers=/work/shared/bench/peers.sh
export DETOUR_BIN=${DETOUR_BIN:-$root/build/detour}
[ -x "$DETOUR_BIN" ] || { echo "run.sh: build detour first ($DETOUR_BIN)" >&2; exit 1; }
export DETOUR_CMD="exec $here/detour-peer.sh"

if [ "${BENCH_SKIP_PEERS:-0}" != 1 ]; then
    BENCH_PEERS=${BENCH_PEERS:-"direct nginx-w1 nginx-w2 haproxy-t2"} bash "$peers"
fi

[ "${BENCH_HOLD:-1}" = 1 ] || exit 0

# ---------------------------------------------------------------- 10,000 connections
conns=${BENCH_HOLD_CONNS:-10000}
secs=${BENCH_HOLD_SECONDS:-15}
ulimit -n "$(ulimit -Hn)"
tmp=$(mktemp -d)
cleanup() { [ -n "${dpid:-}" ] && kill "$dpid" 2>/dev/null; [ -n "${opid:-}" ] && kill "$opid" 2>/dev/null; wait 2>/dev/null; rm -rf "$tmp"; }
trap cleanup EXIT
cat >"$tmp/origin.conf" <<NGX
worker_processes 1; daemon off; pid $tmp/o.pid; error_log $tmp/o.err warn;
worker_rlimit_nofile 65536;
events { worker_connections 20000; }
http { access_log off; keepalive_requests 1000000; keepalive_timeout 120s;
  server { listen 127.0.0.1:18180 backlog=16384; location / { return 200 "hold\n"; } } }
NGX
nginx -p "$tmp" -c "$tmp/origin.conf" &
opid=$!
DETOUR_LISTEN=127.0.0.1:18190 BENCH_ORIGIN=127.0.0.1:18180 BENCH_RUN_DIR=$tmp \
    EXTRA_CFG='timeouts = { idle_ms = 120000; };' \
    "$here/detour-peer.sh" >"$tmp/detour.log" 2>&1 &
dpid=$!
for _ in $(seq 100); do curl -s -o /dev/null http://127.0.0.1:18190/ && break; sleep 0.1; done
echo "# hold: $conns keep-alive connections for ${secs}s through detour"
wrk -t2 -c"$conns" -d"${secs}s" --timeout 30s http://127.0.0.1:18190/ | tee "$tmp/wrk.out"
hwm=$(awk '/^VmHWM:/ { print $2 }' "/proc/$dpid/status")
echo "# detour peak RSS: $((hwm / 1024)) MiB"
if grep -q "Socket errors\|Non-2xx" "$tmp/wrk.out"; then
    echo "# hold: FAILED (errors above)"
    exit 1
fi
echo "# hold: ok, no errors"
