#!/usr/bin/env bash
# test_redirect_clients.sh - the curl command line following a legacy app's
# redirects through detour, without and with rewrite_302 / rewrite_301, and
# what the app finally receives (method, body length, body SHA-256, read from
# dt_origin's /legacy/done page).
#
# Without the rewrite `curl -L` turns the POST into a GET and drops the body
# (RFC 9110 15.4.3 allows it, every browser does it); `-X PUT -d` keeps the
# method string but drops the body. With it, the 302 reaches curl as a 307
# (301 as 308) and the request is repeated whole. GET, HEAD and 303 are never
# rewritten. Exit 77 (skipped) only when curl is not installed.
set -u -o pipefail
. "$(dirname "${BASH_SOURCE[0]}")/detour_env.sh" || exit 1

command -v curl >/dev/null || de_skip "curl is not installed (scripts/deps.sh test installs it)"
command -v sha256sum >/dev/null || de_skip "sha256sum is not installed (coreutils)"
de_init redirect-clients

EMPTY_SHA=$(printf '' | sha256sum | cut -d' ' -f1)
FORM_SHA=$(printf 'item=42' | sha256sum | cut -d' ' -f1)
DEL_SHA=$(printf 'id=7' | sha256sum | cut -d' ' -f1)
BODY=$DE_DIR/body.bin
head -c 300007 /dev/urandom >"$BODY" # binary, NULs included, several reads
BODY_LEN=$(stat -c %s "$BODY")
BODY_SHA=$(de_sha256 "$BODY")
CURL=(curl -sS --max-time 15 --proto '=http' --proto-redir '=http' -H 'Expect:')

# curl ARGS... against detour, following redirects: "METHOD LENGTH SHA256" the app got.
landed() {
    "${CURL[@]}" -L "$@" 2>>"$DE_DIR/curl.err" | de_done_fields
}

# The status detour answers, not following.
status() {
    "${CURL[@]}" -o /dev/null -w '%{http_code}' "$@" 2>>"$DE_DIR/curl.err"
}

de_start_origin

# ---- without the rewrite (rewrite_302 and rewrite_301 default to false) ----------
de_start_detour ""
echo "# without the rewrite"
de_check "POST /legacy/submit: the app answers 302" 302 \
    "$(status -d item=42 "$DE_URL/legacy/submit")"
de_check "curl -L -d: the POST arrives as a GET, its body gone" "GET 0 $EMPTY_SHA" \
    "$(landed --data-binary "@$BODY" "$DE_URL/legacy/submit")"
de_check "curl -L -d item=42 (a form): GET, body gone" "GET 0 $EMPTY_SHA" \
    "$(landed -d item=42 "$DE_URL/legacy/submit")"
de_check "curl -L -X PUT -d: the method string stays, the body is gone" "PUT 0 $EMPTY_SHA" \
    "$(landed -X PUT --data-binary "@$BODY" "$DE_URL/legacy/submit")"
de_check "curl -L -X DELETE -d: the body is gone" "DELETE 0 $EMPTY_SHA" \
    "$(landed -X DELETE -d id=7 "$DE_URL/legacy/submit")"
de_check "curl -L -T (an upload PUT): curl itself keeps PUT and body on 302" \
    "PUT $BODY_LEN $BODY_SHA" "$(landed -T "$BODY" "$DE_URL/legacy/submit")"
de_check "POST answered 301: stays 301" 301 \
    "$(status -d item=42 "$DE_URL/status/301?location=/legacy/done")"
de_check "curl -L -d on a 301: GET, body gone" "GET 0 $EMPTY_SHA" \
    "$(landed -d item=42 "$DE_URL/status/301?location=/legacy/done")"
de_check "curl --post302 -L: the client-side opt-in keeps the POST (when you own the client)" \
    "POST 7 $FORM_SHA" "$(landed --post302 -d item=42 "$DE_URL/legacy/submit")"
de_stop_detour

# ---- with the rewrite ------------------------------------------------------------------
de_start_detour "rewrite_302 = true;
rewrite_301 = true;"
echo "# with rewrite_302 = true; rewrite_301 = true;"
de_check "POST /legacy/submit: detour answers 307" 307 \
    "$(status -d item=42 "$DE_URL/legacy/submit")"
de_check "the 307 keeps the app's Location" "/legacy/done" \
    "$("${CURL[@]}" -o /dev/null -w '%{redirect_url}' -d item=42 "$DE_URL/legacy/submit" |
        sed "s|^$DE_URL||")"
de_check "curl -L -d: the POST arrives as a POST with its body" "POST $BODY_LEN $BODY_SHA" \
    "$(landed --data-binary "@$BODY" "$DE_URL/legacy/submit")"
de_check "curl -L -d item=42 (a form): POST with the form" "POST 7 $FORM_SHA" \
    "$(landed -d item=42 "$DE_URL/legacy/submit")"
de_check "curl -L -X PUT -d: PUT with its body" "PUT $BODY_LEN $BODY_SHA" \
    "$(landed -X PUT --data-binary "@$BODY" "$DE_URL/legacy/submit")"
de_check "curl -L -X DELETE -d: DELETE with its body" "DELETE 4 $DEL_SHA" \
    "$(landed -X DELETE -d id=7 "$DE_URL/legacy/submit")"
de_check "curl -L -T: PUT with its body" "PUT $BODY_LEN $BODY_SHA" \
    "$(landed -T "$BODY" "$DE_URL/legacy/submit")"
de_check "POST answered 301: detour answers 308" 308 \
    "$(status -d item=42 "$DE_URL/status/301?location=/legacy/done")"
de_check "curl -L -d on a 301 made 308: POST with its body" "POST $BODY_LEN $BODY_SHA" \
    "$(landed --data-binary "@$BODY" "$DE_URL/status/301?location=/legacy/done")"
de_check "one redirect followed" 1 \
    "$("${CURL[@]}" -L -o /dev/null -w '%{num_redirects}' -d item=42 "$DE_URL/legacy/submit")"
de_check "GET is never rewritten" 302 "$(status "$DE_URL/legacy/submit")"
de_check "HEAD is never rewritten" 302 "$(status -I "$DE_URL/legacy/submit")"
de_check "GET on a 301 is never rewritten" 301 "$(status "$DE_URL/status/301?location=/x")"
de_check "303 is never rewritten" 303 \
    "$(status -d item=42 "$DE_URL/status/303?location=/legacy/done")"
de_check "curl -L -d on a 303: GET, as 303 means" "GET 0 $EMPTY_SHA" \
    "$(landed -d item=42 "$DE_URL/status/303?location=/legacy/done")"
de_check "curl -L (GET) through a 302: GET" "GET 0 $EMPTY_SHA" "$(landed "$DE_URL/legacy/submit")"
log_line=$(de_wait_line "$DE_DIR/access.log" '"POST /legacy/submit HTTP/1.1" 307 .*action=rewrite' 5)
de_check "the access log says action=rewrite for the 307" yes "$([ -n "$log_line" ] && echo yes || echo no)"
log_line=$(de_wait_line "$DE_DIR/access.log" '"GET /legacy/submit HTTP/1.1" 302 .*action=relay' 5)
de_check "and action=relay for the GET" yes "$([ -n "$log_line" ] && echo yes || echo no)"
de_stop_detour

de_finish
