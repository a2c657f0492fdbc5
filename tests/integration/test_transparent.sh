#!/usr/bin/env bash
# test_transparent.sh - transparent mode with real kernel interception.
#
# Three network namespaces joined by veth pairs:
#
#   client 10.231.1.2 --- 10.231.1.1 router 10.231.2.1 --- 10.231.2.2 origin
#          fd42:231:1::2     fd42:231:1::1 fd42:231:2::1      fd42:231:2::2
#
# dt_origin listens on port 80 at the origin's addresses; detour runs in the
# router with mode = "transparent", and the router redirects TCP port 80
# arriving from the client side to it:
#
#   iptables -t nat -A PREROUTING -i r0 -p tcp --dport 80 -j REDIRECT --to-ports 3128
#
# From the client, a plain `curl http://10.231.2.2/...` must then be relayed
# (the origin sees Host: 10.231.2.2, X-Forwarded-For: the client, Via),
# redirected by a route (307 answered by detour), and rewritten by a relay
# route with rewrite_302 (a POST's 302 reaches the client as 307); Max-Forwards
# is honoured; a request made to detour's own port (not redirected) falls back
# to the Host header, and a Host naming detour itself is a loop (508). Also:
# IPv6 interception through ip6tables (IP6T_SO_ORIGINAL_DST) when the kernel
# has IPv6 NAT, interception of the router's own outgoing traffic in OUTPUT
# with detour's uid excluded (-m owner), and forward mode's default access
# (a client outside loopback is refused without a forward block).
#
# Needs root, iproute2 and iptables (scripts/deps.sh test installs them).
# Where namespaces or NAT are not available it exits 77 (skipped) with the
# reason, never 0. Every process and namespace it creates is removed on every
# exit path.
set -u -o pipefail
. "$(dirname "${BASH_SOURCE[0]}")/detour_env.sh"

[ "$(id -u)" -eq 0 ] || de_skip "needs root to create network namespaces and iptables rules"
for tool in ip curl timeout sha256sum; do
    command -v "$tool" >/dev/null || de_skip "$tool is not installed (scripts/deps.sh test installs it)"
done
IPT=
for t in iptables iptables-legacy; do
    command -v "$t" >/dev/null && { IPT=$t; break; }
done
[ -n "$IPT" ] || de_skip "iptables is not installed (scripts/deps.sh test installs it)"

de_init transparent
chmod 755 "$DE_DIR"

TAG=dt$$
NS_C=${TAG}c NS_R=${TAG}r NS_O=${TAG}o
NAMESPACES=()
PORT=3128       # detour in the router (namespaces have their own port space)
LPORT=3129      # detour for the router's own outgoing traffic (OUTPUT)
FPORT=3130      # detour in forward mode
C4=10.231.1.2 R4=10.231.1.1 O4=10.231.2.2
C6=fd42:231:1::2 O6=fd42:231:2::2
NOBODY=65534

cleanup() {
    de_cleanup
    local ns
    for ns in "${NAMESPACES[@]}"; do
        ip netns del "$ns" 2>/dev/null
    done
    rm -rf "$DE_DIR"
}
trap cleanup EXIT
trap 'exit 1' INT TERM

in_ns() { # NS COMMAND...: bounded by a timeout
    local ns=$1
    shift
    timeout 20 ip netns exec "$ns" "$@"
}

# ---- the network --------------------------------------------------------------

for ns in "$NS_C" "$NS_R" "$NS_O"; do
    err=$(ip netns add "$ns" 2>&1) || de_skip "cannot create a network namespace: $err"
    NAMESPACES+=("$ns")
    ip -n "$ns" link set lo up || de_skip "cannot bring up lo in a namespace"
done
err=$(ip link add c0 netns "$NS_C" type veth peer name r0 netns "$NS_R" 2>&1) ||
    de_skip "cannot create a veth pair: $err"
err=$(ip link add o0 netns "$NS_O" type veth peer name r1 netns "$NS_R" 2>&1) ||
    de_skip "cannot create a veth pair: $err"

setup_net() {
    ip -n "$NS_C" addr add $C4/24 dev c0 &&
        ip -n "$NS_R" addr add $R4/24 dev r0 &&
        ip -n "$NS_R" addr add 10.231.2.1/24 dev r1 &&
        ip -n "$NS_O" addr add $O4/24 dev o0 &&
        ip -n "$NS_C" -6 addr add $C6/64 dev c0 nodad &&
        ip -n "$NS_R" -6 addr add fd42:231:1::1/64 dev r0 nodad &&
        ip -n "$NS_R" -6 addr add fd42:231:2::1/64 dev r1 nodad &&
        ip -n "$NS_O" -6 addr add $O6/64 dev o0 nodad &&
        ip -n "$NS_C" link set c0 up &&
        ip -n "$NS_R" link set r0 up &&
        ip -n "$NS_R" link set r1 up &&
        ip -n "$NS_O" link set o0 up &&
        ip -n "$NS_C" route add default via $R4 &&
        ip -n "$NS_O" route add default via 10.231.2.1 &&
        ip -n "$NS_C" -6 route add default via fd42:231:1::1 &&
        ip -n "$NS_O" -6 route add default via fd42:231:2::1 &&
        in_ns "$NS_R" sysctl -qw net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1
}
setup_net || de_die "cannot configure the namespaces' addresses and routes"

# ---- processes ----------------------------------------------------------------

# Does ADDR:PORT accept a connection from inside NS?
ns_port_open() { # NS ADDR PORT
    timeout 2 ip netns exec "$1" bash -c "exec 3<>/dev/tcp/$2/$3" 2>/dev/null
}

ns_wait_port() { # NS ADDR PORT PID SECONDS
    local deadline=$((SECONDS + $5))
    while ((SECONDS < deadline)); do
        de_alive "$4" || return 1
        ns_port_open "$1" "$2" "$3" && return 0
        sleep 0.1
    done
    return 1
}

# Start COMMAND... in NS in the background, logs to $DE_DIR/NAME.{out,err}; sets STARTED_PID.
ns_start() { # NS NAME COMMAND...
    local ns=$1 name=$2
    shift 2
    ip netns exec "$ns" "$@" >"$DE_DIR/$name.out" 2>"$DE_DIR/$name.err" &
    STARTED_PID=$!
    DE_PIDS+=("$STARTED_PID")
}

ns_start "$NS_O" origin "$DE_ORIGIN_BIN" -l "$O4:80"
ORIGIN_PID=$STARTED_PID
ns_wait_port "$NS_O" $O4 80 "$ORIGIN_PID" 10 || de_die "dt_origin did not start on $O4:80"
ns_start "$NS_O" origin6 "$DE_ORIGIN_BIN" -l "[$O6]:80"
ORIGIN6_PID=$STARTED_PID
ns_wait_port "$NS_O" "$O6" 80 "$ORIGIN6_PID" 10 || de_die "dt_origin did not start on [$O6]:80"

write_config() { # FILE LISTEN MODE EXTRA
    cat >"$1" <<EOF
listen = $2;
mode = "$3";
workers = 2;
access_log = "$DE_DIR/${1##*/}.log";
timeouts = { drain_ms = 3000; };
$4
EOF
}

ROUTES='routes = (
  { name = "moved"; match = { prefix = "/old/"; };
    redirect = { to = "/new/$suffix$is_args$args"; }; },
  { name = "legacy"; match = { prefix = "/legacy/"; };
    relay = { rewrite_302 = true; }; }
);'
write_config "$DE_DIR/transparent.cfg" "[\"0.0.0.0:$PORT\", \"[::]:$PORT\"]" transparent "$ROUTES"
ACCESS_LOG=$DE_DIR/transparent.cfg.log
ns_start "$NS_R" detour "$DE_DETOUR" -c "$DE_DIR/transparent.cfg"
DETOUR_PID=$STARTED_PID
ns_wait_port "$NS_R" 127.0.0.1 $PORT "$DETOUR_PID" 15 || de_die "detour did not start"

# ---- requests from the client --------------------------------------------------

CURL=(curl -sS --connect-timeout 3 --max-time 10 -H 'Expect:')

# curl ARGS... from the client namespace: the body (and the head with -i).
from_client() { in_ns "$NS_C" "${CURL[@]}" "$@" 2>>"$DE_DIR/curl.err"; }
# The status only.
status_from_client() { from_client -o /dev/null -w '%{http_code}' "$@"; }
# The value of header NAME as dt_origin's /echo reported it (body on stdin).
echo_header() { sed -n "s/^header: $1: //p" | head -n 1; }
# The value of response header NAME in a head from curl -i (on stdin).
resp_header() { tr -d '\r' | sed -n "s/^$1: //Ip" | head -n 1; }
origin_requests() { # how many requests dt_origin has served (read from the router, not intercepted)
    in_ns "$NS_R" "${CURL[@]}" "http://$O4/stats" 2>/dev/null | sed -n 's/^requests: //p'
}

echo "# before interception: the client reaches the origin directly"
body=$(from_client "http://$O4/echo/direct")
de_check "direct request: no Via" "" "$(echo_header Via <<<"$body")"
de_check "direct request: no X-Forwarded-For" "" "$(echo_header X-Forwarded-For <<<"$body")"

err=$(in_ns "$NS_R" "$IPT" -t nat -A PREROUTING -i r0 -p tcp --dport 80 -j REDIRECT \
    --to-ports $PORT 2>&1) || de_skip "$IPT cannot add a nat REDIRECT rule here: $err"

echo "# intercepted: plain curl http://$O4/..."
body=$(from_client "http://$O4/echo/relay?x=1")
de_check "relayed: the origin sees the raw target" "target: /echo/relay?x=1" \
    "$(grep '^target: ' <<<"$body")"
de_check "relayed: the origin sees Host" "$O4" "$(echo_header Host <<<"$body")"
de_check "relayed: the origin sees X-Forwarded-For = the client" "$C4" \
    "$(echo_header X-Forwarded-For <<<"$body")"
de_check "relayed: the origin sees Via" "1.1 detour" "$(echo_header Via <<<"$body")"
de_check "relayed: the access log names the client" "yes" \
    "$(de_wait_line "$ACCESS_LOG" "^$C4 .*\"GET /echo/relay\\?x=1 HTTP/1.1\" 200 .*action=relay" 5 \
        >/dev/null && echo yes)"

head=$(from_client -o /dev/null -D - "http://$O4/echo/relay")
de_check "relayed: the client sees Via on the answer" "1.1 detour" "$(resp_header Via <<<"$head")"

big=$(from_client --max-time 60 "http://$O4/bytes?n=30000000" | sha256sum | cut -d' ' -f1)
want=$(in_ns "$NS_R" "${CURL[@]}" --max-time 60 "http://$O4/bytes?n=30000000" | sha256sum | cut -d' ' -f1)
de_check "relayed: 30 MB arrive intact" "$want" "$big"

before=$(origin_requests)
head=$(from_client -o /dev/null -D - "http://$O4/old/page?x=1")
after=$(origin_requests)
de_check "route redirect: status" "307" "$(head -n 1 <<<"$head" | cut -d' ' -f2)"
de_check "route redirect: Location" "/new/page?x=1" "$(resp_header Location <<<"$head")"
de_check "route redirect: answered by detour (the origin saw only the /stats)" \
    "$((before + 1))" "$after"
de_check "route redirect: logged with the route" "yes" \
    "$(de_wait_line "$ACCESS_LOG" "\"GET /old/page\\?x=1 HTTP/1.1\" 307 .*route=moved action=redirect" 5 \
        >/dev/null && echo yes)"

head=$(from_client -o /dev/null -D - -d 'item=42' "http://$O4/legacy/submit")
de_check "rewrite_302: a POST's 302 reaches the client as 307" "307" \
    "$(head -n 1 <<<"$head" | cut -d' ' -f2)"
de_check "rewrite_302: the app's Location is kept" "/legacy/done" "$(resp_header Location <<<"$head")"
de_check "rewrite_302: GET stays 302" "302" "$(status_from_client "http://$O4/legacy/submit")"
FORM_SHA=$(printf 'item=42' | sha256sum | cut -d' ' -f1)
de_check "rewrite_302: curl -L repeats the POST with its body" "POST 7 $FORM_SHA" \
    "$(from_client -L -d 'item=42' "http://$O4/legacy/submit" | de_done_fields)"
de_check "rewrite_302: logged as a rewrite" "yes" \
    "$(de_wait_line "$ACCESS_LOG" "\"POST /legacy/submit HTTP/1.1\" 307 .*route=legacy action=rewrite" 5 \
        >/dev/null && echo yes)"

head=$(from_client -o /dev/null -D - -X OPTIONS -H 'Max-Forwards: 0' "http://$O4/echo/mf")
de_check "Max-Forwards: 0 on OPTIONS: detour answers" "200" "$(head -n 1 <<<"$head" | cut -d' ' -f2)"
de_check "Max-Forwards: 0 on OPTIONS: with Allow" "yes" \
    "$(resp_header Allow <<<"$head" | grep -q OPTIONS && echo yes)"
de_check "Max-Forwards: 0 on OPTIONS: not from the origin" "" "$(resp_header X-Origin-Method <<<"$head")"
code=$(status_from_client -X TRACE -H 'Max-Forwards: 0' "http://$O4/echo/mf")
de_check "Max-Forwards: 0 on TRACE: refused by detour" "yes" \
    "$([ "$code" = 405 ] || [ "$code" = 501 ] && echo yes)"
body=$(from_client -X OPTIONS -H 'Max-Forwards: 2' "http://$O4/echo/mf")
de_check "Max-Forwards: 2 on OPTIONS: relayed as 1" "1" "$(echo_header Max-Forwards <<<"$body")"

echo "# not redirected: straight to detour's port"
de_check "direct connection with Host: the origin: relayed" "200" \
    "$(status_from_client -H "Host: $O4" "http://$R4:$PORT/echo/fallback")"
body=$(from_client -H "Host: $O4" "http://$R4:$PORT/echo/fallback")
de_check "direct connection: the Host header decides" "target: /echo/fallback" \
    "$(grep '^target: ' <<<"$body")"
de_check "direct connection: the origin sees Host" "$O4" "$(echo_header Host <<<"$body")"
de_check "Host naming detour itself: 508" "508" "$(status_from_client "http://$R4:$PORT/echo")"
de_check "Host naming detour by another of its addresses: 508" "508" \
    "$(status_from_client -H "Host: 10.231.2.1:$PORT" "http://$R4:$PORT/echo")"

echo "# IPv6 (ip6tables REDIRECT, IP6T_SO_ORIGINAL_DST)"
if err=$(in_ns "$NS_R" "${IPT/iptables/ip6tables}" -t nat -A PREROUTING -i r0 -p tcp --dport 80 \
    -j REDIRECT --to-ports $PORT 2>&1); then
    body=$(from_client -g "http://[$O6]/echo/v6")
    de_check "IPv6 relayed: Host" "[$O6]" "$(echo_header Host <<<"$body")"
    de_check "IPv6 relayed: X-Forwarded-For = the client" "$C6" \
        "$(echo_header X-Forwarded-For <<<"$body")"
    de_check "IPv6 relayed: Via" "1.1 detour" "$(echo_header Via <<<"$body")"
    head=$(from_client -g -o /dev/null -D - "http://[$O6]/old/v6")
    de_check "IPv6 route redirect" "/new/v6" "$(resp_header Location <<<"$head")"
else
    echo "# IPv6 part skipped: ip6tables cannot add a nat REDIRECT rule here: $err"
fi

echo "# the router's own traffic, intercepted in OUTPUT, detour's uid excluded"
if setpriv --reuid=$NOBODY --regid=$NOBODY --clear-groups "$DE_DETOUR" -V >/dev/null 2>&1; then
    write_config "$DE_DIR/local.cfg" "\"127.0.0.1:$LPORT\"" transparent "$ROUTES"
    touch "$DE_DIR/local.cfg.log" && chown $NOBODY "$DE_DIR/local.cfg.log"
    ns_start "$NS_R" local setpriv --reuid=$NOBODY --regid=$NOBODY --clear-groups \
        "$DE_DETOUR" -c "$DE_DIR/local.cfg"
    LOCAL_PID=$STARTED_PID
    ns_wait_port "$NS_R" 127.0.0.1 $LPORT "$LOCAL_PID" 15 || de_die "detour (uid $NOBODY) did not start"
    err=$(in_ns "$NS_R" "$IPT" -t nat -A OUTPUT -p tcp -d $O4 --dport 80 \
        -m owner ! --uid-owner $NOBODY -j REDIRECT --to-ports $LPORT 2>&1) ||
        de_die "cannot add the OUTPUT rule: $err"
    body=$(in_ns "$NS_R" "${CURL[@]}" "http://$O4/echo/local")
    de_check "OUTPUT interception: relayed once (no loop through detour's own connection)" \
        "1.1 detour" "$(echo_header Via <<<"$body")"
    de_check "OUTPUT interception: the origin sees Host" "$O4" "$(echo_header Host <<<"$body")"
    head=$(in_ns "$NS_R" "${CURL[@]}" -o /dev/null -D - "http://$O4/old/local")
    de_check "OUTPUT interception: route redirect" "/new/local" "$(resp_header Location <<<"$head")"
    in_ns "$NS_R" "$IPT" -t nat -D OUTPUT -p tcp -d $O4 --dport 80 \
        -m owner ! --uid-owner $NOBODY -j REDIRECT --to-ports $LPORT
    de_stop_pid "$LOCAL_PID" 15
    de_check "detour (uid $NOBODY) exits 0 after SIGTERM" 0 "$DE_RC"
else
    echo "# OUTPUT part skipped: $DE_DETOUR cannot run as uid $NOBODY (a directory on its path is private)"
fi

echo "# forward mode without a forward block: loopback clients only"
write_config "$DE_DIR/forward.cfg" "\"0.0.0.0:$FPORT\"" forward ""
ns_start "$NS_R" forward "$DE_DETOUR" -c "$DE_DIR/forward.cfg"
FORWARD_PID=$STARTED_PID
ns_wait_port "$NS_R" 127.0.0.1 $FPORT "$FORWARD_PID" 15 || de_die "detour (forward) did not start"
de_check "a client outside loopback is refused" "403" \
    "$(status_from_client -x "http://$R4:$FPORT" "http://$O4/echo")"
de_check "... CONNECT too" "403" \
    "$(in_ns "$NS_C" "${CURL[@]}" -o /dev/null -w '%{http_connect}' -p -x "http://$R4:$FPORT" \
        "http://$O4:443/" 2>/dev/null)"
de_check "... and logged" "yes" \
    "$(de_wait_line "$DE_DIR/forward.cfg.log" "^$C4 .*\"GET http://$O4/echo HTTP/1.1\" 403" 5 \
        >/dev/null && echo yes)"
de_check "a loopback client is served" "200" \
    "$(in_ns "$NS_R" "${CURL[@]}" -o /dev/null -w '%{http_code}' -x "http://127.0.0.1:$FPORT" \
        "http://$O4/echo")"
de_stop_pid "$FORWARD_PID" 15
de_check "detour (forward) exits 0 after SIGTERM" 0 "$DE_RC"

de_stop_pid "$DETOUR_PID" 15
de_check "detour exits 0 after SIGTERM" 0 "$DE_RC"
de_finish
