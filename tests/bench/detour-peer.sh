#!/usr/bin/env bash
# The command peers.sh runs as DETOUR_CMD: render the config for the ports it
# hands over, then exec detour in the foreground (so its PID is detour's).
# EXTRA_CFG (optional) is appended to the config, e.g. 'rewrite_302 = true;'.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
bin=${DETOUR_BIN:-$here/../../build/detour}
cfg=${BENCH_RUN_DIR:-/tmp}/detour.cfg
sed -e "s|@LISTEN@|${DETOUR_LISTEN:-127.0.0.1:18090}|" -e "s|@ORIGIN@|${BENCH_ORIGIN:-127.0.0.1:18080}|" \
    "$here/${DETOUR_BENCH_CFG:-detour.cfg.in}" >"$cfg"
[ -n "${EXTRA_CFG:-}" ] && printf '%s\n' "$EXTRA_CFG" >>"$cfg"
exec "$bin" -c "$cfg"
