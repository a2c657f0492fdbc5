#!/usr/bin/env bash
# deps.sh [build|test|bench] - install the Debian 12 packages detour needs.
#   build: compiler, CMake and the four libraries (enough for the demo)
#   test:  build + what the test suite drives (curl, chromium, iproute2, iptables)
#   bench: build + the peers of the benchmark (nginx, haproxy, wrk)
# Installs only what is missing; needs root (or sudo) when something is.
set -euo pipefail

what=${1:-build}
pkgs=(build-essential cmake pkg-config libmicrohttpd-dev libcurl4-openssl-dev libconfig-dev
      libcmocka-dev libgnutls28-dev ca-certificates)
case $what in
    build) ;;
    test) pkgs+=(curl chromium iproute2 iptables procps openssl) ;;
    bench) pkgs+=(curl nginx haproxy wrk procps linux-perf) ;;
    *) echo "usage: $0 [build|test|bench]" >&2; exit 2 ;;
esac

missing=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0

sudo=()
[ "$(id -u)" -eq 0 ] || sudo=(sudo)
echo "deps.sh: installing ${missing[*]}"
"${sudo[@]}" apt-get update -qq
DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
