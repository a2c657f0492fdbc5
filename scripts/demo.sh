#!/usr/bin/env bash
# demo.sh - install what detour needs, build it, and run it in front of a real
# origin on loopback: dt_origin (the test suite's origin server) on
# 127.0.0.1:9000 and detour with rules/detour.cfg on 127.0.0.1:8080.
# Ctrl-C stops both.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/deps.sh build
command -v curl >/dev/null || bash scripts/deps.sh test
cmake -S . -B build >/dev/null
cmake --build build -j"$(nproc)" --target detour dt_origin

build/tests/dt_origin -l 127.0.0.1:9000 &
origin=$!
trap 'kill "$origin" "${proxy:-}" 2>/dev/null; wait 2>/dev/null' EXIT INT TERM
build/detour -t -c rules/detour.cfg
build/detour -c rules/detour.cfg &
proxy=$!

for _ in $(seq 50); do
    curl -s -o /dev/null http://127.0.0.1:8080/echo && break
    sleep 0.1
done

cat <<'TXT'

detour is running on http://127.0.0.1:8080 in front of dt_origin on 127.0.0.1:9000.
Try, in another terminal:

  curl -i http://127.0.0.1:8080/echo                      # relayed: the origin echoes what it got
  curl -i http://127.0.0.1:8080/docs/install?lang=en      # 307 answered by detour itself
  curl -i -X POST -d 'a=1' http://127.0.0.1:8080/legacy/submit    # upstream 302 -> 307 for a POST
  curl -L -d 'a=1' http://127.0.0.1:8080/legacy/submit    # curl follows the 307 and re-POSTs the body
  touch /tmp/detour-maintenance; curl -i -X POST http://127.0.0.1:8080/checkout/pay; rm /tmp/detour-maintenance
  build/detour -c rules/detour.cfg --explain 'POST http://127.0.0.1:8080/api/v1/orders'
  curl -s http://127.0.0.1:9901/metrics | grep detour_requests_total

Access log below. Ctrl-C stops detour and the origin.
TXT
wait "$proxy"
