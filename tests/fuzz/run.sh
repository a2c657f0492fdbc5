#!/usr/bin/env bash
# run.sh - hostile-input soak of the sanitizer build, run by hand (never in CI).
#
#   bash tests/fuzz/run.sh              # 120 s per client, seeds 1..3
#   FUZZ_SECONDS=600 FUZZ_SEED=7 bash tests/fuzz/run.sh
#
# Builds detour with ASan+UBSan (build-asan/) and runs three instances side
# by side, each fed by several seeded clients at once:
#   reverse  - hostile_client.py's malformed requests, in front of dt_origin
#   upstream - well-formed requests, in front of hostile_origin.py
#   forward  - absolute-form and CONNECT requests (forward mode) to both origins
# Passes when every client finds detour still accepting after each of its
# connections, and every instance then drains on SIGTERM and exits 0 with no
# sanitizer report (a report makes the process exit non-zero). The seeds make
# a failing mix repeatable; tests/asan.supp and tests/lsan.supp apply.
# Needs python3 besides the test dependencies.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
here=$root/tests/fuzz
secs=${FUZZ_SECONDS:-120}
seed=${FUZZ_SEED:-1}
build=$root/build-asan
command -v python3 >/dev/null || { echo "run.sh: needs python3 (apt-get install -y python3)" >&2; exit 1; }

cmake -S "$root" -B "$build" -DDETOUR_SANITIZE=ON -DCMAKE_BUILD_TYPE=Debug >/dev/null
cmake --build "$build" -j"$(nproc)" --target detour dt_origin >/dev/null

tmp=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$tmp"; }
trap cleanup EXIT
export ASAN_OPTIONS="detect_leaks=1:halt_on_error=1:suppressions=$root/tests/asan.supp"
export LSAN_OPTIONS="suppressions=$root/tests/lsan.supp"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"

"$build/tests/dt_origin" -l 127.0.0.1:18480 >"$tmp/origin.log" 2>&1 & pids+=($!)
python3 "$here/hostile_origin.py" 18481 "$seed" >"$tmp/hostile.log" 2>&1 & pids+=($!)

common='access_log = "off"; workers = 2;
timeouts = { connect_ms = 2000; upstream_ms = 3000; header_ms = 2000; idle_ms = 3000; drain_ms = 2000; };
limits = { max_body_bytes = 100000; };'
cat >"$tmp/reverse.cfg" <<CFG
listen = "127.0.0.1:18490"; $common
upstreams = { o = { url = "http://127.0.0.1:18480"; }; };
routes = (
  { name = "old"; match = { regex = "^/old/(.*)\$"; };
    redirect = { to = "/new/\$1\$is_args\$args"; percent = 50; sticky = "header:X-K"; }; },
  { name = "legacy"; match = { prefix = "/legacy/"; };
    relay = { upstream = "o"; rewrite_302 = true; rewrite_301 = true; }; },
  { name = "all"; match = { prefix = "/"; }; relay = { upstream = "o"; }; }
);
CFG
cat >"$tmp/upstream.cfg" <<CFG
listen = "127.0.0.1:18491"; $common
upstreams = { h = { url = "http://127.0.0.1:18481"; }; };
routes = ( { name = "all"; match = { prefix = "/"; }; relay = { upstream = "h"; rewrite_302 = true; }; } );
CFG
cat >"$tmp/forward.cfg" <<CFG
mode = "forward"; listen = "127.0.0.1:18492"; $common
forward = { allow_clients = ["127.0.0.0/8"]; allow_destinations = ["127.0.0.1"];
            connect_ports = [18480, 443]; };
routes = ( { name = "old"; match = { prefix = "/old/"; }; redirect = { to = "http://x.example/\$suffix"; }; } );
CFG

declare -A dpid
for name in reverse upstream forward; do
    "$build/detour" -c "$tmp/$name.cfg" >"$tmp/$name.log" 2>&1 &
    dpid[$name]=$!
    pids+=($!)
done
for port in 18490 18491 18492; do
    for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.1; done
done

echo "fuzz: $secs s, seeds from $seed; logs in $tmp until the end"
cpids=()
for i in 0 1 2; do
    s=$((seed + i))
    python3 "$here/hostile_client.py" 18490 "$secs" "$s" & cpids+=($!)
    FUZZ_WELLFORMED=1 python3 "$here/hostile_client.py" 18491 "$secs" "$s" & cpids+=($!)
done
python3 "$here/hostile_client.py" 18492 "$secs" "$seed" http://127.0.0.1:18480 & cpids+=($!)
FUZZ_WELLFORMED=1 python3 "$here/hostile_client.py" 18492 "$secs" "$seed" http://127.0.0.1:18481 & cpids+=($!)

failed=0
for p in "${cpids[@]}"; do wait "$p" || failed=1; done
for name in reverse upstream forward; do
    kill -TERM "${dpid[$name]}" 2>/dev/null || true
    if ! wait "${dpid[$name]}"; then
        echo "fuzz: the $name instance did not exit cleanly:"; tail -n 40 "$tmp/$name.log"; failed=1
    elif grep -q -E 'Sanitizer|runtime error' "$tmp/$name.log"; then
        echo "fuzz: the $name instance reported:"; grep -A20 -E 'Sanitizer|runtime error' "$tmp/$name.log" | head -40; failed=1
    fi
done
[ "$failed" = 0 ] && echo "fuzz: passed (3 instances, no crash, no sanitizer report)"
exit "$failed"
