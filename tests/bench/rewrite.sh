#!/usr/bin/env bash
# rewrite.sh - what rewrite_302 costs: detour without and with
# `rewrite_302 = true;` as two peers of ../shared/bench/peers.sh in ONE run
# (same origin, same machine state, interleaved), and the ratio of the two.
# Run by hand, never in CI: it saturates the machine for minutes.
#
#   bash tests/bench/rewrite.sh                  # 4 rounds of small + post4k, ~2 min
#   BENCH_QUICK=1 bash tests/bench/rewrite.sh    # smoke run: 1 round, 3 s each, ~30 s
#
# How two detours fit in one peers.sh run: peers.sh has one detour slot
# (DETOUR_CMD, labelled DETOUR_NAME), but runs every name in BENCH_PEERS, so
# BENCH_PEERS="detour detour" measures the slot twice per round. DETOUR_CMD
# is this script in --peer mode: each start takes the next entry of a fixed
# schedule, off or on, and execs tests/bench/detour-peer.sh with EXTRA_CFG
# set accordingly. peers.sh starts peers in a known order (one check start per
# listed peer, then one start per measured run, since retries are turned off
# here), so the n-th detour row of its per-run TSV is the n-th measured start.
# Within each round the two variants alternate which goes first.
#
# Environment (besides everything peers.sh reads; see its header):
#   PEERS_SH        peers.sh to run (default: ../shared/bench/peers.sh beside this repo)
#   DETOUR_BIN      the detour to measure (default: build/detour)
#   BENCH_SCENARIOS pass-through scenarios (default "small post4k"; post4k is a
#                   POST, the method the rewrite looks at)
#   BENCH_REPEAT    rounds (default 4, quick 1); medians and per-round ratios are reported
#   REWRITE_EXTRA_PEERS  more peers for reference, e.g. "nginx-w1" (default none)
#   REWRITE_MAX_COST     allowed slowdown in percent (default 3): a full run whose
#                   median rps ratio is worse exits 1
# Ports are picked free unless BENCH_ORIGIN_PORT / DETOUR_PORT are set.
set -u -o pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
self=$here/$(basename "${BASH_SOURCE[0]}")

# ---- --peer: started by peers.sh as DETOUR_CMD ------------------------------------------
if [ "${1:-}" = --peer ]; then
    state=${REWRITE_BENCH_STATE:?--peer is for peers.sh}
    n=$(cat "$state/starts" 2>/dev/null || echo 0)
    echo $((n + 1)) >"$state/starts"
    # Starts 0 and 1 are peers.sh's functional checks (one per listed name);
    # after that, pair p (two measured runs) goes off,on when p is even, else on,off.
    if [ "$n" -lt 2 ]; then
        [ "$n" -eq 0 ] && v=off || v=on
    else
        m=$((n - 2))
        [ $(((m % 2) == ((m / 2) % 2))) -eq 1 ] && v=off || v=on
    fi
    printf '%s\t%s\t%s\n' "$n" "$v" "${BENCH_RUN_DIR:-}" >>"$state/starts.tsv"
    if [ "$v" = on ]; then export EXTRA_CFG='rewrite_302 = true;'; else unset EXTRA_CFG; fi
    exec bash "$here/detour-peer.sh"
fi

# ---- the run -----------------------------------------------------------------------------
die() { echo "rewrite.sh: $*" >&2; exit 2; }

PEERS_SH=${PEERS_SH:-$repo/../shared/bench/peers.sh}
[ -r "$PEERS_SH" ] || die "no peers.sh at $PEERS_SH (set PEERS_SH)"
export DETOUR_BIN=${DETOUR_BIN:-$repo/build/detour}
[ -x "$DETOUR_BIN" ] || die "$DETOUR_BIN is not built (cmake --build build)"
QUICK=${BENCH_QUICK:-0}
MAX_COST=${REWRITE_MAX_COST:-3}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
free_port() {
    local p
    for ((i = 0; i < 200; i++)); do
        p=$((20000 + RANDOM % 40000))
        port_open "$p" || { echo "$p"; return 0; }
    done
    die "no free port"
}

work=$(mktemp -d "${TMPDIR:-/tmp}/rewrite-bench.XXXXXX") || die "mktemp failed"
: >"$work/starts.tsv"
export REWRITE_BENCH_STATE=$work
export DETOUR_NAME=detour
export DETOUR_CMD="exec bash '$self' --peer"
export BENCH_PEERS="${REWRITE_EXTRA_PEERS:+$REWRITE_EXTRA_PEERS }detour detour"
export BENCH_SCENARIOS=${BENCH_SCENARIOS:-small post4k}
[ "$QUICK" = 1 ] && def_rep=1 || def_rep=4
export BENCH_REPEAT=${BENCH_REPEAT:-$def_rep}
export BENCH_RETRIES=0 # one start per measured run: the schedule depends on it
export BENCH_BASELINE=${BENCH_BASELINE:-detour}
export BENCH_OUT=$work/peers.tsv
export BENCH_ORIGIN_PORT=${BENCH_ORIGIN_PORT:-$(free_port)}
DETOUR_PORT=${DETOUR_PORT:-$(free_port)}
while [ "$DETOUR_PORT" = "$BENCH_ORIGIN_PORT" ]; do DETOUR_PORT=$(free_port); done
export DETOUR_PORT

echo "# rewrite.sh: detour off (no rewrite) vs on (rewrite_302 = true), one peers.sh run"
echo "# scenarios: $BENCH_SCENARIOS; rounds: $BENCH_REPEAT; detour: $DETOUR_BIN; work dir: $work"
bash "$PEERS_SH" 2>&1 | tee "$work/peers.log"
rc=${PIPESTATUS[0]}
[ "$rc" -eq 0 ] || die "peers.sh failed (exit $rc); see $work/peers.log"

runs=${BENCH_OUT%.tsv}.runs.tsv
[ -r "$runs" ] || die "peers.sh wrote no $runs"
# The n-th detour row is start n + 2 (after the two check starts).
awk -F'\t' -v starts="$work/starts.tsv" -v quick="$QUICK" -v max_cost="$MAX_COST" '
BEGIN {
    while ((getline line < starts) > 0) { split(line, f, "\t"); variant[f[1]] = f[2]; nstarts++ }
}
function median(arr, n,   i, j, t, a) {
    for (i = 1; i <= n; i++) a[i] = arr[i]
    for (i = 2; i <= n; i++) { t = a[i]; j = i - 1; while (j > 0 && a[j] > t) { a[j + 1] = a[j]; j-- } a[j + 1] = t }
    return n == 0 ? "" : (n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2)
}
NR == 1 { next }
$4 != "detour" { next }
{
    v = variant[rows + 2]; rows++
    if (v == "") { print "rewrite.sh: more detour rows than starts; the schedule is off" > "/dev/stderr"; bad = 1; next }
    if ($6 != "ok") { failed++; next }
    sc = $1
    if (!(sc in seen)) { seen[sc] = 1; order[++nsc] = sc }
    k = sc SUBSEP v
    cnt[k]++; rps[k, cnt[k]] = $7; p99[k, cnt[k]] = $9; cpu[k, cnt[k]] = $12
    # per round: the on/off ratio of the pair measured back to back
    r = sc SUBSEP $5
    if (v == "off") off_r[r] = $7; else on_r[r] = $7
    rounds[r] = 1
}
END {
    if (nstarts != rows + 2) { printf "rewrite.sh: %d starts for %d measured rows (+2 checks); the schedule is off\n", nstarts, rows > "/dev/stderr"; bad = 1 }
    printf "\n# rewrite_302 cost (on = rewrite_302 = true; ratio = on / off; rps < 1 and p99 > 1 mean slower)\n"
    printf "%-9s %10s %10s %9s %9s %9s %9s %10s  %s\n", "scenario", "rps_off", "rps_on", "rps_x", "pair_x", "p99_x", "cpu_x", "runs", "verdict"
    worst = 1
    for (i = 1; i <= nsc; i++) {
        sc = order[i]; ko = sc SUBSEP "off"; kn = sc SUBSEP "on"
        no = cnt[ko] + 0; nn = cnt[kn] + 0
        delete a; for (j = 1; j <= no; j++) a[j] = rps[ko, j]; ro = median(a, no)
        delete a; for (j = 1; j <= nn; j++) a[j] = rps[kn, j]; rn = median(a, nn)
        delete a; for (j = 1; j <= no; j++) a[j] = p99[ko, j]; po = median(a, no)
        delete a; for (j = 1; j <= nn; j++) a[j] = p99[kn, j]; pn = median(a, nn)
        delete a; m = 0; for (j = 1; j <= no; j++) if (cpu[ko, j] != "-") a[++m] = cpu[ko, j]; co = median(a, m)
        delete a; m = 0; for (j = 1; j <= nn; j++) if (cpu[kn, j] != "-") a[++m] = cpu[kn, j]; cn = median(a, m)
        delete a; m = 0
        for (r in rounds) { split(r, rp, SUBSEP); if (rp[1] == sc && (r in off_r) && (r in on_r) && off_r[r] > 0) a[++m] = on_r[r] / off_r[r] }
        px = median(a, m)
        if (ro == "" || rn == "" || ro <= 0) { printf "%-9s %10s %10s %9s %9s %9s %9s %10s  %s\n", sc, ro, rn, "-", "-", "-", "-", no "+" nn, "no data"; bad = 1; continue }
        rx = rn / ro
        if (rx < worst) worst = rx
        verdict = (rx >= 1 - max_cost / 100) ? "within " max_cost "%" : "SLOWER by more than " max_cost "%"
        printf "%-9s %10.1f %10.1f %9.3f %9s %9s %9s %10s  %s\n", sc, ro, rn, rx, (px == "" ? "-" : sprintf("%.3f", px)), \
            (po > 0 ? sprintf("%.3f", pn / po) : "-"), (co > 0 ? sprintf("%.3f", cn / co) : "-"), no "+" nn, verdict
    }
    printf "# rps_x: median rps on / off; pair_x: median of the per-round ratios (each pair measured back to back)\n"
    printf "# failed runs: %d; rows: %d; schedule: %s\n", failed, rows, starts
    if (bad || failed) exit 2
    if (quick != 1 && worst < 1 - max_cost / 100) exit 1
}' "$runs"
rc=$?
echo "# TSVs: $BENCH_OUT, $runs"
[ "$QUICK" = 1 ] && [ "$rc" -eq 1 ] && rc=0 # a smoke run checks the plumbing, not the number
exit "$rc"
