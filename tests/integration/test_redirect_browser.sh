#!/usr/bin/env bash
# test_redirect_browser.sh - a real browser (headless Chromium) in front of
# detour and dt_origin's legacy app, without and with rewrite_302: what the
# app receives after the browser followed the app's 302.
#
#  1. The legacy form, as a person uses it: Chromium loads /legacy/form
#     through detour, the form is submitted (form.submit(), over the DevTools
#     protocol on --remote-debugging-pipe, driven from this script), the
#     browser follows the 302 (or the 307) and the page it lands on shows
#     the method, body length and SHA-256 the app received.
#  2. --dump-dom of a page whose form posts to detour on load: the same
#     answer, read from the DOM Chromium prints.
#  3. fetch() from the form's page: PUT and DELETE keep their method and
#     body on a 302 in a browser (the Fetch standard only turns POST into
#     GET), a POST does not, unless detour made the 302 a 307.
#
# Without the rewrite the form's POST arrives as a GET with no body; with it,
# as a POST with the form's bytes. Exit 77 (skipped) only when Chromium is not
# installed. Every wait is bounded; Chromium runs under timeout(1).
set -u -o pipefail
. "$(dirname "${BASH_SOURCE[0]}")/detour_env.sh" || exit 1

CHROMIUM=${CHROMIUM:-$(command -v chromium || command -v chromium-browser || true)}
if [ -z "$CHROMIUM" ] || [ ! -x "$CHROMIUM" ]; then
    de_skip "chromium is not installed (scripts/deps.sh test installs Debian's chromium)"
fi
command -v sha256sum >/dev/null || de_skip "sha256sum is not installed (coreutils)"
de_init redirect-browser
trap '' PIPE # a write to a Chromium that died fails (and is reported), it does not kill us

CHROME_LIMIT_S=90 # one Chromium run, whatever happens
WAIT_S=15         # one page load or one DevTools answer
EMPTY_SHA=$(printf '' | sha256sum | cut -d' ' -f1)
FORM_SHA=$(printf 'item=42' | sha256sum | cut -d' ' -f1)
PUT_SHA=$(printf 'qty=3' | sha256sum | cut -d' ' -f1)
DEL_SHA=$(printf 'id=7' | sha256sum | cut -d' ' -f1)

# Flags for a closed network: without the background-networking ones Chromium
# keeps dialling out, and those connections are refused here. Each run also
# gets its own --user-data-dir.
CHROME_FLAGS=(--headless --no-sandbox --disable-gpu --disable-quic --no-first-run
    --disable-background-networking --disable-component-update --disable-sync
    --disable-default-apps --disable-extensions --mute-audio)

# ---- 2. --dump-dom of an auto-submitting form -------------------------------------------

dump_dom_landed() { # -> "METHOD LENGTH SHA256" the app got
    local page=$DE_DIR/autosubmit.html profile
    profile=$(mktemp -d "$DE_DIR/profile.XXXXXX")
    cat >"$page" <<EOF
<!doctype html><html><body onload="document.forms[0].submit()">
<form method="post" action="$DE_URL/legacy/submit"><input name="item" value="42"></form>
</body></html>
EOF
    timeout -k 5 "$CHROME_LIMIT_S" "$CHROMIUM" "${CHROME_FLAGS[@]}" --user-data-dir="$profile" \
        --virtual-time-budget=10000 --dump-dom "file://$page" \
        2>>"$DE_DIR/chromium-dump.err" | tee -a "$DE_DIR/dump-dom.html" | de_done_fields
    rm -rf "$profile" # megabytes of browser state, useless after the run
}

# ---- 1 and 3. Chromium driven over the DevTools protocol -----------------------------------

CDP_PID=
CDP_DIR=
CDP_W=
CDP_R=
CDP_ID=0
CDP_SESSION=
CDP_REPLY=
CDP_VALUE=

cdp_start() {
    local d profile
    d=$(mktemp -d "$DE_DIR/cdp.XXXXXX")
    CDP_DIR=$d
    profile=$d/profile
    mkfifo "$d/in" "$d/out" || de_die "mkfifo failed"
    # fd 3: commands to Chromium; fd 4: its answers (NUL-terminated JSON).
    timeout -k 5 "$CHROME_LIMIT_S" "$CHROMIUM" "${CHROME_FLAGS[@]}" --user-data-dir="$profile" \
        --remote-debugging-pipe about:blank 3<"$d/in" 4>"$d/out" 2>>"$DE_DIR/chromium-cdp.err" &
    CDP_PID=$!
    DE_PIDS+=("$CDP_PID")
    exec {CDP_W}>"$d/in" {CDP_R}<"$d/out"
    CDP_ID=0
}

cdp_stop() {
    cdp_call Browser.close '{}' >/dev/null 2>&1
    exec {CDP_W}>&- {CDP_R}<&-
    de_stop_pid "$CDP_PID" 10
    rm -rf "$CDP_DIR/profile"
}

json_str() { # TEXT -> a JSON string literal
    local s=${1//\\/\\\\}
    s=${s//\"/\\\"}
    s=${s//$'\n'/\\n}
    printf '"%s"' "$s"
}

# Send METHOD with PARAMS (JSON) to the attached page (or the browser before
# attaching); the answer with our id goes to CDP_REPLY. Events are skipped.
cdp_call() { # METHOD PARAMS
    local msg
    CDP_ID=$((CDP_ID + 1))
    msg="{\"id\":$CDP_ID,\"method\":\"$1\",\"params\":$2${CDP_SESSION:+,\"sessionId\":\"$CDP_SESSION\"}}"
    printf '%s\0' "$msg" >&"$CDP_W" || return 1
    while IFS= read -r -d '' -t "$WAIT_S" -u "$CDP_R" CDP_REPLY; do
        case $CDP_REPLY in
        "{\"id\":$CDP_ID,"*) ;;
        *) continue ;;
        esac
        case $CDP_REPLY in *'"error":{'*) echo "# $1: $CDP_REPLY" >&2; return 1 ;; esac
        return 0
    done
    echo "# $1: no answer from Chromium within $WAIT_S s" >&2
    return 1
}

cdp_attach() {
    local target
    CDP_SESSION=
    cdp_call Target.getTargets '{}' || de_die "DevTools: Target.getTargets failed"
    target=$(sed -n 's/.*"targetId":"\([0-9A-F]*\)","type":"page".*/\1/p' <<<"$CDP_REPLY")
    [ -n "$target" ] || de_die "DevTools: no page target in $CDP_REPLY"
    cdp_call Target.attachToTarget "{\"targetId\":\"$target\",\"flatten\":true}" ||
        de_die "DevTools: attach failed"
    CDP_SESSION=$(sed -n 's/.*"sessionId":"\([0-9A-F]*\)".*/\1/p' <<<"$CDP_REPLY")
    [ -n "$CDP_SESSION" ] || de_die "DevTools: no session in $CDP_REPLY"
}

# Evaluate JS (awaiting a promise) in the page; its string result goes to CDP_VALUE.
cdp_eval() { # EXPRESSION
    CDP_VALUE=
    cdp_call Runtime.evaluate \
        "{\"expression\":$(json_str "$1"),\"returnByValue\":true,\"awaitPromise\":true}" || return 1
    CDP_VALUE=$(sed -n 's/.*"result":{"type":"string","value":"\([^"]*\)".*/\1/p' <<<"$CDP_REPLY")
}

# Wait until the page at PATH has loaded.
cdp_wait_page() { # PATH
    local deadline=$((SECONDS + WAIT_S))
    while ((SECONDS <= deadline)); do
        cdp_eval "document.readyState + ' ' + location.pathname" &&
            [ "$CDP_VALUE" = "complete $1" ] && return 0
        sleep 0.1
    done
    echo "# page: '$CDP_VALUE', waited for 'complete $1'" >&2
    return 1
}

# What the /legacy/done page in the tab says: "METHOD LENGTH SHA256".
DONE_FIELDS_JS="['method', 'length', 'sha256'].map(function (id) {
    var e = document.getElementById(id); return e ? e.textContent : '-'; }).join(' ')"

# fetch() METHOD with BODY to /legacy/submit from the page; the done page it lands on, parsed.
fetch_js() { # METHOD BODY
    echo "fetch('/legacy/submit', {method: '$1', body: '$2'})
      .then(function (r) { return r.text(); })
      .then(function (t) {
        var document = new DOMParser().parseFromString(t, 'text/html');
        return $DONE_FIELDS_JS; })"
}

# The form on /legacy/form, loaded through detour, submitted; fetch() after it.
browser_session() { # EXPECT_FORM EXPECT_FETCH_POST
    cdp_start
    cdp_attach
    cdp_call Page.navigate "{\"url\":\"$DE_URL/legacy/form\"}" || de_die "navigate failed"
    cdp_wait_page /legacy/form || de_die "the form did not load through detour"
    cdp_eval "document.forms[0].method + ' ' + document.forms[0].action"
    de_check "Chromium shows the legacy form, served through detour" \
        "post $DE_URL/legacy/submit" "$CDP_VALUE"
    cdp_eval "document.forms[0].submit(), 'submitted'"
    if cdp_wait_page /legacy/done; then
        cdp_eval "$DONE_FIELDS_JS"
    else
        CDP_VALUE="did not land on /legacy/done"
    fi
    de_check "the submitted form lands on /legacy/done: what the app received" "$1" "$CDP_VALUE"

    cdp_call Page.navigate "{\"url\":\"$DE_URL/legacy/form\"}" || de_die "navigate failed"
    cdp_wait_page /legacy/form || de_die "the form did not load again"
    cdp_eval "$(fetch_js PUT qty=3)"
    de_check "fetch PUT: a browser keeps PUT and its body" "PUT 5 $PUT_SHA" "$CDP_VALUE"
    cdp_eval "$(fetch_js DELETE id=7)"
    de_check "fetch DELETE: a browser keeps DELETE and its body" "DELETE 4 $DEL_SHA" "$CDP_VALUE"
    cdp_eval "$(fetch_js POST item=42)"
    de_check "fetch POST: what the app received" "$2" "$CDP_VALUE"
    cdp_stop
}

# ---- the runs ---------------------------------------------------------------------------

de_start_origin

de_start_detour ""
echo "# without the rewrite"
browser_session "GET 0 $EMPTY_SHA" "GET 0 $EMPTY_SHA"
de_check "--dump-dom: the auto-submitted POST arrives as a GET, no body" "GET 0 $EMPTY_SHA" \
    "$(dump_dom_landed)"
line=$(de_wait_line "$DE_DIR/access.log" '"POST /legacy/submit HTTP/1.1" 302 .*HeadlessChrome.*action=relay' 5)
de_check "the browser's POST went through detour and got the app's 302" yes \
    "$([ -n "$line" ] && echo yes || echo no)"
de_stop_detour
mv "$DE_DIR/access.log" "$DE_DIR/access-without.log"

de_start_detour "rewrite_302 = true;"
echo "# with rewrite_302 = true;"
browser_session "POST 7 $FORM_SHA" "POST 7 $FORM_SHA"
de_check "--dump-dom: the auto-submitted POST arrives as a POST with the form" \
    "POST 7 $FORM_SHA" "$(dump_dom_landed)"
line=$(de_wait_line "$DE_DIR/access.log" '"POST /legacy/submit HTTP/1.1" 307 .*HeadlessChrome.*action=rewrite' 5)
de_check "the browser got a 307 from detour (action=rewrite)" yes \
    "$([ -n "$line" ] && echo yes || echo no)"
de_stop_detour

de_finish
