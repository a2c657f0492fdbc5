/*
 * test_redirect.c - detour's own redirect answers, with real clients
 * (libcurl and raw sockets) against build/detour in front of dt_origin:
 * every key of the redirect table (to and each template variable, status,
 * percent, ramp, sticky, window, when_file, targets, retry_after, dry_run,
 * map), the answer itself (headers, escaped HTML, HEAD), matching (host,
 * prefix, path, regex, methods, file order, inactive routes falling
 * through), request bodies that are never forwarded yet leave the
 * connection usable, Expect: 100-continue, CR/LF injection attempts, and a
 * Location too long to send.
 *
 * A relayed request lands on dt_origin's /echo, which names the target it
 * got in X-Origin-Target: that is how "fell through to the next route" is
 * told apart from a redirect.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "harness.h"
#include "ops_util.h"

#define IO_MS 5000
#define ONE_MIB (1024 * 1024)

static th_env *env_of(void **state)
{
    return *state;
}

/* ---- starting detour ------------------------------------------------------------ */

/*
 * Start detour with ROUTES (each ending in ","), then a catch-all relay
 * "origin" to dt_origin. EXTRA goes at the top level (admin, access_log).
 */
static void start_routes(th_env *e, const char *extra, const char *routes)
{
    int rc =
        th_detour_start(e,
                        "listen = \"127.0.0.1:%d\";\n"
                        "workers = 2;\n"
                        "timeouts = { drain_ms = 3000; };\n"
                        "%s\n"
                        "upstreams = { o = { url = \"http://127.0.0.1:%d\"; }; };\n"
                        "routes = (\n"
                        "%s\n"
                        "  { name = \"origin\"; match = { prefix = \"/\"; };\n"
                        "    relay = { upstream = \"o\"; }; }\n"
                        ");\n",
                        e->port, extra ? extra : "access_log = \"off\";", e->origin_port, routes);
    assert_int_equal(rc, 0);
}

/* Stop detour (it must exit 0) and start it again with the same config. */
static void restart_detour(th_env *e)
{
    char *cfg = ops_read_file(e->cfg_path);
    assert_non_null(cfg);
    assert_int_equal(th_proc_stop(&e->detour, 10000), 0);
    assert_int_equal(th_detour_start(e, "%s", cfg), 0);
    free(cfg);
}

/* "YYYY-MM-DDTHH:MM:SSZ" for now + DELTA seconds. */
static void iso_at(char *out, size_t cap, long delta)
{
    time_t t = time(NULL) + delta;
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(out, cap, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

/* ---- requests ------------------------------------------------------------------- */

/* METHOD TARGET (raw) through detour, body kept. EASY: reuse that handle, or NULL. */
static th_resp req_on(th_env *e, CURL *easy, const char *method, const char *target,
                      const char *const *headers)
{
    th_req rq = {.method = method,
                 .url = e->url,
                 .target = target,
                 .headers = headers,
                 .keep_body = true,
                 .timeout_ms = 10000,
                 .easy = easy};
    th_resp rs;
    th_http(&rq, &rs);
    if (rs.rc != CURLE_OK)
        fail_msg("%s %s: curl: %s", method ? method : "GET", target, rs.err);
    return rs;
}

static th_resp req(th_env *e, const char *method, const char *target, const char *const *headers)
{
    return req_on(e, NULL, method, target, headers);
}

static th_resp get_host(th_env *e, const char *host, const char *target)
{
    char h[256];
    snprintf(h, sizeof(h), "Host: %s", host);
    const char *const headers[] = {h, NULL};
    return req(e, NULL, target, headers);
}

/* The HTML escaping the redirect body must use for its link. */
static void html_escape(const char *s, char *out, size_t cap)
{
    size_t n = 0;
    for (; *s != '\0' && n + 7 < cap; s++) {
        const char *rep = *s == '&'    ? "&amp;"
                          : *s == '<'  ? "&lt;"
                          : *s == '>'  ? "&gt;"
                          : *s == '"'  ? "&quot;"
                          : *s == '\'' ? "&#39;"
                                       : NULL;
        if (rep != NULL) {
            memcpy(out + n, rep, strlen(rep));
            n += strlen(rep);
        } else {
            out[n++] = *s;
        }
    }
    out[n] = '\0';
}

/* A redirect as the contract describes it, with LOCATION exactly. */
static void expect_redirect(const th_resp *rs, long status, const char *location, const char *what)
{
    const char *loc = th_resp_hdr(rs, "Location");
    if (rs->status != status)
        fail_msg("%s: status %ld, expected %ld (Location %s, X-Origin-Target %s)", what, rs->status,
                 status, loc ? loc : "-",
                 th_resp_hdr(rs, "X-Origin-Target") ? th_resp_hdr(rs, "X-Origin-Target") : "-");
    if (loc == NULL || strcmp(loc, location) != 0)
        fail_msg("%s: Location \"%s\", expected \"%s\"", what, loc ? loc : "(none)", location);
    assert_int_equal(th_resp_hdr_count(rs, "Location"), 1);
    assert_non_null(th_resp_hdr(rs, "Cache-Control"));
    assert_string_equal(th_resp_hdr(rs, "Cache-Control"), "no-store");
    assert_non_null(th_resp_hdr(rs, "Content-Type"));
    assert_string_equal(th_resp_hdr(rs, "Content-Type"), "text/html; charset=utf-8");
    assert_null(th_resp_hdr(rs, "X-Origin-Target")); /* detour answered, not the origin */
    size_t cap = strlen(location) * 6 + 16;
    char *esc = malloc(cap), *link = malloc(cap + 16);
    assert_non_null(esc);
    assert_non_null(link);
    html_escape(location, esc, cap);
    snprintf(link, cap + 16, "href=\"%s\"", esc);
    th_assert_contains(rs->body, link);
    free(esc);
    free(link);
    assert_non_null(th_resp_hdr(rs, "Content-Length"));
    assert_int_equal(strtoull(th_resp_hdr(rs, "Content-Length"), NULL, 10), rs->body_len);
}

/* Relayed to the origin's /echo with TARGET untouched. */
static void expect_relayed(const th_resp *rs, const char *target, const char *what)
{
    const char *got = th_resp_hdr(rs, "X-Origin-Target");
    if (rs->status != 200 || got == NULL || strcmp(got, target) != 0)
        fail_msg("%s: status %ld, X-Origin-Target %s, Location %s; expected a relay of %s", what,
                 rs->status, got ? got : "-",
                 th_resp_hdr(rs, "Location") ? th_resp_hdr(rs, "Location") : "-", target);
}

static void check_redirect(th_env *e, const char *method, const char *target, long status,
                           const char *location)
{
    th_resp rs = req(e, method, target, NULL);
    expect_redirect(&rs, status, location, target);
    th_resp_free(&rs);
}

static void check_relayed(th_env *e, const char *method, const char *target)
{
    th_resp rs = req(e, method, target, NULL);
    expect_relayed(&rs, target, target);
    th_resp_free(&rs);
}

/* Relayed to a path the origin does not serve: its own 404. */
static void check_origin(th_env *e, const char *method, const char *target)
{
    th_resp rs = req(e, method, target, NULL);
    const char *server = th_resp_hdr(&rs, "Server");
    if (rs.status != 404 || server == NULL || strcmp(server, "dt-origin") != 0)
        fail_msg("%s: status %ld, Server %s; expected the origin's 404", target, rs.status,
                 server ? server : "-");
    th_resp_free(&rs);
}

/* ---- raw sockets ------------------------------------------------------------------- */

/* A connection to detour from source address SRC (any 127.0.0.0/8 address works). */
static int connect_from(const char *src, int port)
{
    struct sockaddr_in from = {.sin_family = AF_INET}, to = {.sin_family = AF_INET};
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_true(fd >= 0);
    assert_int_equal(inet_pton(AF_INET, src, &from.sin_addr), 1);
    assert_int_equal(inet_pton(AF_INET, "127.0.0.1", &to.sin_addr), 1);
    to.sin_port = htons((uint16_t)port);
    if (bind(fd, (struct sockaddr *)&from, sizeof(from)) != 0 ||
        connect(fd, (struct sockaddr *)&to, sizeof(to)) != 0)
        fail_msg("connect from %s: %s", src, strerror(errno));
    return fd;
}

/* Send LEN bytes of REQ on FD and read one response. */
static void raw_exchange(int fd, const char *rq, size_t len, bool head, th_raw_resp *r)
{
    assert_int_equal(th_send_all(fd, rq, len, IO_MS), 0);
    if (th_recv_response(fd, head, r, IO_MS) != 0)
        fail_msg("no response to %.*s (closed: %d)", (int)(len < 80 ? len : 80), rq, r->closed);
}

/*
 * A response head that cannot have been split: every CR is followed by LF,
 * every LF preceded by CR, and no injected header name starts a line.
 */
static void expect_clean_head(const char *head, const char *what)
{
    const char *end = strstr(head, "\r\n\r\n");
    end = end != NULL ? end + 4 : head + strlen(head);
    for (const char *p = head; p < end; p++) {
        if ((*p == '\r' && p[1] != '\n') || (*p == '\n' && (p == head || p[-1] != '\r')))
            fail_msg("%s: a bare CR or LF in the response head:\n%s", what, head);
        if ((*p == '\n' || p == head) && (strncasecmp(p + (*p == '\n'), "X-Injected", 10) == 0 ||
                                          strncasecmp(p + (*p == '\n'), "Set-Cookie", 10) == 0))
            fail_msg("%s: an injected header line:\n%s", what, head);
    }
}

/* ---- the answer ---------------------------------------------------------------------- */

static const char *const status_routes =
    "  { name = \"s301\"; match = { path = \"/s/301\"; }; redirect = { to = \"/n/301\"; "
    "status = 301; }; },\n"
    "  { name = \"s302\"; match = { path = \"/s/302\"; }; redirect = { to = \"/n/302\"; "
    "status = 302; }; },\n"
    "  { name = \"s303\"; match = { path = \"/s/303\"; }; redirect = { to = \"/n/303\"; "
    "status = 303; }; },\n"
    "  { name = \"s307\"; match = { path = \"/s/307\"; }; redirect = { to = \"/n/307\"; "
    "status = 307; }; },\n"
    "  { name = \"s308\"; match = { path = \"/s/308\"; }; redirect = { to = \"/n/308\"; "
    "status = 308; }; },\n"
    "  { name = \"sdef\"; match = { path = \"/s/default\"; }; redirect = { to = \"/n/default\"; "
    "}; },\n"
    "  { name = \"abs\"; match = { path = \"/s/abs\"; };\n"
    "    redirect = { to = \"https://new.example:8443/a?b=1&c='d'\"; }; },\n"
    "  { name = \"later\"; match = { path = \"/s/later\"; };\n"
    "    redirect = { to = \"/n/later\"; status = 303; retry_after = 600; }; },\n";

static void test_status_codes_and_headers(void **state)
{
    static const struct {
        const char *target;
        long status;
        const char *location;
    } cases[] = {
        {"/s/301", 301, "/n/301"},
        {"/s/302", 302, "/n/302"},
        {"/s/303", 303, "/n/303"},
        {"/s/307", 307, "/n/307"},
        {"/s/308", 308, "/n/308"},
        {"/s/default", 307, "/n/default"},
        {"/s/default?x=1", 307, "/n/default"}, /* the query is not part of path */
        {"/s/abs", 307, "https://new.example:8443/a?b=1&c='d'"},
    };
    th_env *e = env_of(state);
    start_routes(e, NULL, status_routes);
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        th_resp rs = req(e, NULL, cases[i].target, NULL);
        expect_redirect(&rs, cases[i].status, cases[i].location, cases[i].target);
        assert_null(th_resp_hdr(&rs, "Retry-After"));
        th_resp_free(&rs);
    }
    /* Statuses that keep the method keep it for any method: detour never rewrites them. */
    check_redirect(e, "DELETE", "/s/308", 308, "/n/308");
    check_redirect(e, "POST", "/s/303", 303, "/n/303");
    /* The body escapes the link: & and ' of the query. */
    th_resp rs = req(e, NULL, "/s/abs", NULL);
    th_assert_contains(rs.body, "href=\"https://new.example:8443/a?b=1&amp;c=&#39;d&#39;\"");
    assert_null(strstr(rs.body, "c='d'"));
    th_resp_free(&rs);
    /* A path that is not listed goes on to the relay (the origin's 404). */
    check_origin(e, NULL, "/s/3070");
}

static void test_retry_after(void **state)
{
    th_env *e = env_of(state);
    start_routes(e, NULL, status_routes);
    th_resp rs = req(e, "PUT", "/s/later", NULL);
    expect_redirect(&rs, 303, "/n/later", "/s/later");
    assert_non_null(th_resp_hdr(&rs, "Retry-After"));
    assert_string_equal(th_resp_hdr(&rs, "Retry-After"), "600");
    assert_int_equal(th_resp_hdr_count(&rs, "Retry-After"), 1);
    th_resp_free(&rs);
}

static void test_head_gets_headers_without_body(void **state)
{
    th_env *e = env_of(state);
    th_raw_resp r;
    char v[256];
    start_routes(e, NULL, status_routes);

    th_resp get = req(e, NULL, "/s/302", NULL);
    expect_redirect(&get, 302, "/n/302", "GET");
    th_resp head = req(e, "HEAD", "/s/302", NULL);
    assert_int_equal(head.status, 302);
    assert_string_equal(th_resp_hdr(&head, "Location"), "/n/302");
    assert_string_equal(th_resp_hdr(&head, "Cache-Control"), "no-store");
    assert_string_equal(th_resp_hdr(&head, "Content-Type"), "text/html; charset=utf-8");
    assert_int_equal(head.body_total, 0);
    th_resp_free(&get);
    th_resp_free(&head);

    /* On the wire: no body bytes after the HEAD answer, so the next answer parses. */
    int fd = th_connect(e->port, IO_MS);
    assert_true(fd >= 0);
    const char *both = "HEAD /s/later HTTP/1.1\r\nHost: a\r\n\r\n"
                       "GET /s/301 HTTP/1.1\r\nHost: a\r\n\r\n";
    raw_exchange(fd, both, strlen(both), true, &r);
    assert_int_equal(r.status, 303);
    assert_string_equal(th_head_header(r.head, "Location", v, sizeof(v)), "/n/later");
    assert_string_equal(th_head_header(r.head, "Retry-After", v, sizeof(v)), "600");
    th_raw_resp_free(&r);
    assert_int_equal(th_recv_response(fd, false, &r, IO_MS), 0);
    assert_int_equal(r.status, 301);
    assert_true(r.complete);
    assert_string_equal(th_head_header(r.head, "Location", v, sizeof(v)), "/n/301");
    th_assert_contains(r.body, "href=\"/n/301\"");
    th_raw_resp_free(&r);
    close(fd);
}

/* ---- the Location template -------------------------------------------------------------- */

static void test_template_variables(void **state)
{
    th_env *e = env_of(state);
    start_routes(
        e, NULL,
        "  { name = \"vars\"; match = { prefix = \"/tv/\"; };\n"
        "    redirect = { to = \"https://new.example/v?s=$scheme&h=$host&u=$uri&a=$args&i=$is_args"
        "&r=$request_uri&x=$suffix&d=$$&b=${host}x\"; }; },\n"
        "  { name = \"groups\"; match = { regex = \"^/g/(a)(b)(c)(d)(e)(f)(g)(h)(i)$\"; };\n"
        "    redirect = { to = \"/gg/$9$8$7$6$5$4$3$2$1/$12\"; }; },\n"
        "  { name = \"optional-group\"; match = { regex = \"^/og/([a-z]+)(-([0-9]+))?$\"; };\n"
        "    redirect = { to = \"/og2/$1/$3\"; }; },\n"
        "  { name = \"same-path\"; match = { prefix = \"/same/\"; };\n"
        "    redirect = { to = \"$uri\"; status = 302; }; },\n");

    th_resp rs = get_host(e, "new-host.example:8080", "/tv/one/two?k=v&z=1");
    expect_redirect(&rs, 307,
                    "https://new.example/v?s=http&h=new-host.example&u=/tv/one/two&a=k=v&z=1&i=?"
                    "&r=/tv/one/two?k=v&z=1&x=one/two&d=$&b=new-host.examplex",
                    "every variable");
    th_resp_free(&rs);
    /* No query: $args empty, $is_args empty, $request_uri just the path. */
    rs = get_host(e, "h.example", "/tv/");
    expect_redirect(
        &rs, 307,
        "https://new.example/v?s=http&h=h.example&u=/tv/&a=&i=&r=/tv/&x=&d=$&b=h.examplex",
        "no query");
    th_resp_free(&rs);
    /* "?" alone: an empty query, so no $is_args. */
    rs = get_host(e, "h.example", "/tv/q?");
    expect_redirect(
        &rs, 307,
        "https://new.example/v?s=http&h=h.example&u=/tv/q&a=&i=&r=/tv/q&x=q&d=$&b=h.examplex",
        "empty query");
    th_resp_free(&rs);

    /* $1..$9 in any order; $12 is $1 then "2". */
    check_redirect(e, NULL, "/g/abcdefghi", 307, "/gg/ihgfedcba/a2");
    /* A group that did not take part is empty. */
    check_redirect(e, NULL, "/og/abc-42", 307, "/og2/abc/42");
    check_redirect(e, NULL, "/og/abc", 307, "/og2/abc/");
    /* Values are raw: an encoded byte stays encoded, nothing is decoded or normalised. */
    check_redirect(e, NULL, "/tv/%41%2F/../b?q=%26", 307,
                   "https://new.example/v?s=http&h=127.0.0.1&u=/tv/%41%2F/../b&a=q=%26&i=?"
                   "&r=/tv/%41%2F/../b?q=%26&x=%41%2F/../b&d=$&b=127.0.0.1x");
    /* A relative Location is sent as it is. */
    check_redirect(e, NULL, "/same/x", 302, "/same/x");
}

static void test_guard_against_open_redirect(void **state)
{
    th_env *e = env_of(state);
    start_routes(e, NULL,
                 "  { name = \"any\"; match = { regex = \"^//\"; };\n"
                 "    redirect = { to = \"$uri\"; }; },\n");
    check_redirect(e, NULL, "//evil.example/x", 307, "/%2Fevil.example/x");
    check_redirect(e, NULL, "///evil.example/x", 307, "/%2F/evil.example/x");
}

/* ---- matching ------------------------------------------------------------------------------ */

static void test_match_host(void **state)
{
    th_env *e = env_of(state);
    start_routes(e, NULL,
                 "  { name = \"exact\"; match = { host = \"shop.example\"; prefix = \"/echo/h/\"; "
                 "};\n"
                 "    redirect = { to = \"/exact\"; }; },\n"
                 "  { name = \"wild\"; match = { host = \"*.wild.example\"; "
                 "prefix = \"/echo/h/\"; };\n"
                 "    redirect = { to = \"/wild\"; }; },\n"
                 "  { name = \"list\"; match = { host = [\"one.test\", \"*.two.test\"];\n"
                 "    prefix = \"/echo/h/\"; }; redirect = { to = \"/list\"; }; },\n");
    static const struct {
        const char *host;
        const char *location; /* NULL: relayed */
    } cases[] = {
        {"shop.example", "/exact"},   {"SHOP.Example", "/exact"},  {"shop.example:8080", "/exact"},
        {"Shop.EXAMPLE:1", "/exact"}, {"shop.example.", "/exact"}, {"shop.example.org", NULL},
        {"xshop.example", NULL},      {"a.wild.example", "/wild"}, {"a.b.wild.example:81", "/wild"},
        {"A.WILD.EXAMPLE", "/wild"},  {"wild.example", NULL},      {"awild.example", NULL},
        {"one.test", "/list"},        {"x.two.test", "/list"},     {"two.test", NULL},
        {"three.test", NULL},         {"127.0.0.1", NULL},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        th_resp rs = get_host(e, cases[i].host, "/echo/h/x");
        if (cases[i].location)
            expect_redirect(&rs, 307, cases[i].location, cases[i].host);
        else
            expect_relayed(&rs, "/echo/h/x", cases[i].host);
        th_resp_free(&rs);
    }
}

static void test_match_path_prefix_regex_methods(void **state)
{
    th_env *e = env_of(state);
    start_routes(
        e, NULL,
        "  { name = \"path\"; match = { path = \"/echo/about\"; }; redirect = { to = \"/p\"; }; "
        "},\n"
        "  { name = \"prefix\"; match = { prefix = \"/echo/pre/\"; }; redirect = { to = \"/x\"; "
        "}; },\n"
        "  { name = \"regex\"; match = { regex = \"^/echo/u/([0-9]+)$\"; };\n"
        "    redirect = { to = \"/users/$1\"; }; },\n"
        "  { name = \"unanchored\"; match = { regex = \"\\\\.php$\"; };\n"
        "    redirect = { to = \"/php$uri\"; }; },\n"
        "  { name = \"writes\"; match = { prefix = \"/echo/w/\"; methods = [\"POST\", \"PUT\"]; "
        "};\n"
        "    redirect = { to = \"/w\"; }; },\n"
        "  { name = \"reads\"; match = { prefix = \"/echo/r/\"; methods = [\"GET\"]; };\n"
        "    redirect = { to = \"/r\"; }; },\n");

    check_redirect(e, NULL, "/echo/about", 307, "/p");
    check_redirect(e, NULL, "/echo/about?x=1", 307, "/p");
    check_relayed(e, NULL, "/echo/about/");
    check_relayed(e, NULL, "/echo/abou");
    check_relayed(e, NULL, "/echo/%61bout"); /* raw bytes: not decoded */

    check_redirect(e, NULL, "/echo/pre/", 307, "/x");
    check_redirect(e, NULL, "/echo/pre/a/b?c", 307, "/x");
    check_relayed(e, NULL, "/echo/pre");
    check_relayed(e, NULL, "/echo/PRE/a"); /* paths are case-sensitive */

    check_redirect(e, NULL, "/echo/u/42", 307, "/users/42");
    check_relayed(e, NULL, "/echo/u/42/");
    check_relayed(e, NULL, "/echo/u/x");
    check_redirect(e, NULL, "/echo/old/index.php", 307, "/php/echo/old/index.php");
    check_relayed(e, NULL, "/echo/old/index.php5");

    check_redirect(e, "POST", "/echo/w/1", 307, "/w");
    check_redirect(e, "PUT", "/echo/w/1", 307, "/w");
    check_relayed(e, NULL, "/echo/w/1");
    check_relayed(e, "DELETE", "/echo/w/1");
    check_redirect(e, NULL, "/echo/r/1", 307, "/r");
    check_relayed(e, "POST", "/echo/r/1");
    /* GET takes HEAD too. */
    th_resp rs = req(e, "HEAD", "/echo/r/1", NULL);
    assert_int_equal(rs.status, 307);
    assert_string_equal(th_resp_hdr(&rs, "Location"), "/r");
    th_resp_free(&rs);
}

static void test_first_active_route_wins(void **state)
{
    char path[TH_PATH_MAX + 16];
    th_env *e = env_of(state);
    snprintf(path, sizeof(path), "%s/absent.flag", e->dir);
    char routes[4096];
    snprintf(routes, sizeof(routes),
             "  { name = \"first\"; match = { prefix = \"/echo/o/\"; }; redirect = { "
             "to = \"/first\"; }; },\n"
             "  { name = \"second\"; match = { prefix = \"/echo/o/\"; }; redirect = { "
             "to = \"/second\"; }; },\n"
             "  { name = \"off-percent\"; match = { prefix = \"/echo/f/\"; };\n"
             "    redirect = { to = \"/off1\"; percent = 0; }; },\n"
             "  { name = \"off-flag\"; match = { prefix = \"/echo/f/\"; };\n"
             "    redirect = { to = \"/off2\"; when_file = \"%s\"; }; },\n"
             "  { name = \"off-dry\"; match = { prefix = \"/echo/f/\"; };\n"
             "    redirect = { to = \"/off3\"; dry_run = true; }; },\n"
             "  { name = \"relay-first\"; match = { prefix = \"/echo/f/relay/\"; };\n"
             "    relay = { upstream = \"o\"; }; },\n"
             "  { name = \"on\"; match = { prefix = \"/echo/f/\"; }; redirect = { "
             "to = \"/on$uri\"; }; },\n",
             path);
    start_routes(e, NULL, routes);
    check_redirect(e, NULL, "/echo/o/1", 307, "/first");
    check_redirect(e, NULL, "/echo/f/1", 307, "/on/echo/f/1");
    /* A relay route is always active: it wins over the redirect after it. */
    check_relayed(e, NULL, "/echo/f/relay/1");
}

/* ---- percent and sticky ------------------------------------------------------------------------
 */

/* The documented stickiness: FNV-1a 64 of name, 0x00, key; bucket = h mod 10000. */
static bool oracle_in(const char *route, const char *key, int percent)
{
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i <= strlen(route); i++) { /* the NUL is the 0x00 separator */
        h ^= (unsigned char)route[i];
        h *= 0x100000001b3ull;
    }
    for (const char *p = key; *p != '\0'; p++) {
        h ^= (unsigned char)*p;
        h *= 0x100000001b3ull;
    }
    return h % 10000 < (uint64_t)percent * 100;
}

/* Is the response a redirect (to LOCATION) or a relay? Anything else fails. */
static bool redirected(const th_resp *rs, const char *location, const char *what)
{
    if (rs->status == 307) {
        const char *loc = th_resp_hdr(rs, "Location");
        if (loc == NULL || strcmp(loc, location) != 0)
            fail_msg("%s: Location %s, expected %s", what, loc ? loc : "(none)", location);
        return true;
    }
    if (rs->status != 200 || th_resp_hdr(rs, "X-Origin-Target") == NULL)
        fail_msg("%s: status %ld, neither a redirect nor a relay", what, rs->status);
    return false;
}

#define SPLIT_CLIENTS 240

static const char *const percent_routes =
    "  { name = \"never\"; match = { prefix = \"/echo/p0/\"; };\n"
    "    redirect = { to = \"/p0\"; percent = 0; sticky = \"header:X-Client\"; }; },\n"
    "  { name = \"always\"; match = { prefix = \"/echo/p100/\"; };\n"
    "    redirect = { to = \"/p100\"; percent = 100; sticky = \"header:X-Client\"; }; },\n"
    "  { name = \"half\"; match = { prefix = \"/echo/p50/\"; };\n"
    "    redirect = { to = \"/p50\"; percent = 50; sticky = \"header:X-Client\"; }; },\n";

/* Ask for every client on route PREFIX; SIDES[i] records each answer. Returns how many moved. */
static int ask_clients(th_env *e, CURL *easy, const char *prefix, const char *location, bool *sides)
{
    int moved = 0;
    for (int i = 0; i < SPLIT_CLIENTS; i++) {
        char hdr[64], target[64];
        snprintf(hdr, sizeof(hdr), "x-client: user-%d", i); /* header names are case-insensitive */
        snprintf(target, sizeof(target), "%s%d", prefix, i);
        const char *const headers[] = {hdr, NULL};
        th_resp rs = req_on(e, easy, NULL, target, headers);
        sides[i] = redirected(&rs, location, hdr);
        moved += sides[i];
        th_resp_free(&rs);
    }
    return moved;
}

static void test_percent_split_is_sticky(void **state)
{
    th_env *e = env_of(state);
    static bool first[SPLIT_CLIENTS], again[SPLIT_CLIENTS], after[SPLIT_CLIENTS];
    CURL *easy = curl_easy_init();
    assert_non_null(easy);
    start_routes(e, NULL, percent_routes);

    assert_int_equal(ask_clients(e, easy, "/echo/p0/", "/p0", first), 0);
    assert_int_equal(ask_clients(e, easy, "/echo/p100/", "/p100", first), SPLIT_CLIENTS);

    int moved = ask_clients(e, easy, "/echo/p50/", "/p50", first);
    if (moved < SPLIT_CLIENTS * 35 / 100 || moved > SPLIT_CLIENTS * 65 / 100)
        fail_msg("50%% moved %d of %d clients", moved, SPLIT_CLIENTS);
    for (int i = 0; i < SPLIT_CLIENTS; i++) {
        char key[32];
        snprintf(key, sizeof(key), "user-%d", i);
        if (first[i] != oracle_in("half", key, 50))
            fail_msg("client %s: %s, the documented hash says otherwise", key,
                     first[i] ? "redirected" : "relayed");
    }
    /* The same clients on the same side, request after request... */
    assert_int_equal(ask_clients(e, easy, "/echo/p50/", "/p50", again), moved);
    assert_memory_equal(first, again, sizeof(first));
    /* ...and after a restart: nothing is kept in memory. */
    restart_detour(e);
    assert_int_equal(ask_clients(e, easy, "/echo/p50/", "/p50", after), moved);
    assert_memory_equal(first, after, sizeof(first));

    /* No X-Client (or an empty one): the client address decides. */
    bool by_ip = oracle_in("half", "127.0.0.1", 50);
    for (int i = 0; i < 2; i++) {
        const char *const empty[] = {"X-Client;", NULL}; /* curl: an empty header */
        th_resp rs = req_on(e, easy, NULL, "/echo/p50/anon", i == 0 ? NULL : empty);
        assert_int_equal(redirected(&rs, "/p50", "no X-Client"), by_ip);
        th_resp_free(&rs);
    }
    curl_easy_cleanup(easy);
}

static void test_sticky_client_ip(void **state)
{
    th_env *e = env_of(state);
    int moved = 0, nclients = 48;
    start_routes(e, NULL,
                 "  { name = \"by-ip\"; match = { prefix = \"/echo/ip/\"; };\n"
                 "    redirect = { to = \"/ip\"; percent = 50; }; },\n");
    for (int i = 0; i < nclients; i++) {
        char src[32], rq[128], v[64];
        th_raw_resp r;
        snprintf(src, sizeof(src), "127.0.0.%d", i + 1);
        bool want = oracle_in("by-ip", src, 50);
        int fd = connect_from(src, e->port);
        /* Twice on one connection, with a header that must not matter. */
        for (int k = 0; k < 2; k++) {
            snprintf(rq, sizeof(rq), "GET /echo/ip/%d HTTP/1.1\r\nHost: a\r\nX-Client: c%d\r\n\r\n",
                     k, k);
            raw_exchange(fd, rq, strlen(rq), false, &r);
            bool got = r.status == 307;
            if (got != want)
                fail_msg("client %s: status %d, the documented hash says %s", src, r.status,
                         want ? "redirect" : "relay");
            if (got)
                assert_string_equal(th_head_header(r.head, "Location", v, sizeof(v)), "/ip");
            else
                assert_int_equal(r.status, 200);
            th_raw_resp_free(&r);
        }
        close(fd);
        moved += want;
    }
    /* Enough addresses on both sides that the check above means something. */
    assert_true(moved > 0 && moved < nclients);
}

static void test_sticky_cookie(void **state)
{
    th_env *e = env_of(state);
    int moved = 0, n = 80;
    start_routes(e, NULL,
                 "  { name = \"by-cookie\"; match = { prefix = \"/echo/ck/\"; };\n"
                 "    redirect = { to = \"/ck\"; percent = 50; sticky = \"cookie:session\"; }; "
                 "},\n");
    for (int i = 0; i < n; i++) {
        char cookie[128], key[32];
        snprintf(key, sizeof(key), "s%03d", i);
        snprintf(cookie, sizeof(cookie), "Cookie: Session=no; a=1; session=%s; z=%d", key, i);
        const char *const headers[] = {cookie, NULL};
        th_resp rs = req(e, NULL, "/echo/ck/x", headers);
        bool got = redirected(&rs, "/ck", cookie);
        th_resp_free(&rs);
        if (got != oracle_in("by-cookie", key, 50))
            fail_msg("%s: %s, the documented hash says otherwise", cookie,
                     got ? "redirected" : "relayed");
        moved += got;
    }
    assert_true(moved > n / 4 && moved < n * 3 / 4);
    /* Without the cookie (other cookies only): by client address. */
    const char *const other[] = {"Cookie: SESSION=x; sessionx=y", NULL};
    th_resp rs = req(e, NULL, "/echo/ck/y", other);
    assert_int_equal(redirected(&rs, "/ck", "no session cookie"),
                     oracle_in("by-cookie", "127.0.0.1", 50));
    th_resp_free(&rs);
}

/* ---- ramp and window ----------------------------------------------------------------------------
 */

static void test_ramp(void **state)
{
    char d2[32], d1[32], h1[32], f1[32], f2[32], routes[4096];
    th_env *e = env_of(state);
    static bool sides[SPLIT_CLIENTS];
    iso_at(d2, sizeof(d2), -2 * 86400);
    iso_at(d1, sizeof(d1), -86400);
    iso_at(h1, sizeof(h1), -3600);
    iso_at(f1, sizeof(f1), 3600);
    iso_at(f2, sizeof(f2), 86400);
    snprintf(routes, sizeof(routes),
             /* The last step that has passed is 100: everyone. */
             "  { name = \"ramp-full\"; match = { prefix = \"/echo/rf/\"; };\n"
             "    redirect = { to = \"/rf\"; sticky = \"header:X-Client\";\n"
             "      ramp = ( { at = \"%s\"; percent = 5; }, { at = \"%s\"; percent = 100; },\n"
             "               { at = \"%s\"; percent = 0; } ); }; },\n"
             /* Before the first step: 0. */
             "  { name = \"ramp-future\"; match = { prefix = \"/echo/rz/\"; };\n"
             "    redirect = { to = \"/rz\"; sticky = \"header:X-Client\";\n"
             "      ramp = ( { at = \"%s\"; percent = 100; } ); }; },\n"
             /* 50 in force now, 100 later. */
             "  { name = \"ramp-half\"; match = { prefix = \"/echo/rh/\"; };\n"
             "    redirect = { to = \"/rh\"; sticky = \"header:X-Client\";\n"
             "      ramp = ( { at = \"%s\"; percent = 10; }, { at = \"%s\"; percent = 50; },\n"
             "               { at = \"%s\"; percent = 100; } ); }; },\n"
             /* A past step that brought it down to 0. */
             "  { name = \"ramp-down\"; match = { prefix = \"/echo/rd/\"; };\n"
             "    redirect = { to = \"/rd\"; sticky = \"header:X-Client\";\n"
             "      ramp = ( { at = \"%s\"; percent = 100; }, { at = \"%s\"; percent = 0; } ); }; "
             "},\n",
             d2, d1, f1, f2, d1, h1, f2, d2, h1);
    start_routes(e, NULL, routes);
    CURL *easy = curl_easy_init();
    assert_non_null(easy);
    assert_int_equal(ask_clients(e, easy, "/echo/rf/", "/rf", sides), SPLIT_CLIENTS);
    assert_int_equal(ask_clients(e, easy, "/echo/rz/", "/rz", sides), 0);
    assert_int_equal(ask_clients(e, easy, "/echo/rd/", "/rd", sides), 0);
    int moved = ask_clients(e, easy, "/echo/rh/", "/rh", sides);
    for (int i = 0; i < SPLIT_CLIENTS; i++) {
        char key[32];
        snprintf(key, sizeof(key), "user-%d", i);
        if (sides[i] != oracle_in("ramp-half", key, 50))
            fail_msg("ramp at 50%%: client %s %s", key, sides[i] ? "redirected" : "relayed");
    }
    assert_true(moved > SPLIT_CLIENTS / 4 && moved < SPLIT_CLIENTS * 3 / 4);
    curl_easy_cleanup(easy);
}

static void test_window(void **state)
{
    char past[32], past2[32], future[32], routes[4096];
    th_env *e = env_of(state);
    iso_at(past2, sizeof(past2), -7200);
    iso_at(past, sizeof(past), -60);
    iso_at(future, sizeof(future), 3600);
    snprintf(routes, sizeof(routes),
             "  { name = \"inside\"; match = { prefix = \"/echo/wi/\"; };\n"
             "    redirect = { to = \"/wi\"; window = { from = \"%s\"; until = \"%s\"; }; }; },\n"
             "  { name = \"ended\"; match = { prefix = \"/echo/we/\"; };\n"
             "    redirect = { to = \"/we\"; window = { from = \"%s\"; until = \"%s\"; }; }; },\n"
             "  { name = \"not-yet\"; match = { prefix = \"/echo/wn/\"; };\n"
             "    redirect = { to = \"/wn\"; window = { from = \"%s\"; }; }; },\n"
             "  { name = \"open-end\"; match = { prefix = \"/echo/wf/\"; };\n"
             "    redirect = { to = \"/wf\"; window = { from = \"%s\"; }; }; },\n"
             "  { name = \"open-start\"; match = { prefix = \"/echo/wu/\"; };\n"
             "    redirect = { to = \"/wu\"; window = { until = \"%s\"; }; }; },\n"
             "  { name = \"open-start-ended\"; match = { prefix = \"/echo/wx/\"; };\n"
             "    redirect = { to = \"/wx\"; window = { until = \"%s\"; }; }; },\n"
             /* an ended window falls through to the next redirect */
             "  { name = \"after-ended\"; match = { prefix = \"/echo/we/\"; };\n"
             "    redirect = { to = \"/next\"; }; },\n",
             past, future, past2, past, future, past, future, past);
    start_routes(e, NULL, routes);
    check_redirect(e, NULL, "/echo/wi/1", 307, "/wi");
    check_redirect(e, NULL, "/echo/we/1", 307, "/next");
    check_relayed(e, NULL, "/echo/wn/1");
    check_redirect(e, NULL, "/echo/wf/1", 307, "/wf");
    check_redirect(e, NULL, "/echo/wu/1", 307, "/wu");
    check_relayed(e, NULL, "/echo/wx/1");
}

/* ---- when_file
 * ------------------------------------------------------------------------------------ */

/* Poll TARGET until it is (or is no longer) redirected; the milliseconds it took, -1 at 3 s. */
static int64_t wait_switch(th_env *e, const char *target, bool want_redirect)
{
    int64_t t0 = th_now_ms();
    while (th_now_ms() - t0 < 3000) {
        th_resp rs = req(e, NULL, target, NULL);
        bool now = rs.status == 303;
        if (!now)
            expect_relayed(&rs, target, "maintenance off");
        th_resp_free(&rs);
        if (now == want_redirect)
            return th_now_ms() - t0;
        th_sleep_ms(25);
    }
    return -1;
}

static void test_when_file(void **state)
{
    char flag[TH_PATH_MAX + 16], routes[4096];
    th_env *e = env_of(state);
    snprintf(flag, sizeof(flag), "%s/maintenance.flag", e->dir);
    snprintf(routes, sizeof(routes),
             "  { name = \"page\"; match = { path = \"/echo/m/page\"; }; relay = { "
             "upstream = \"o\"; }; },\n"
             "  { name = \"switch\"; match = { prefix = \"/echo/m/\"; };\n"
             "    redirect = { to = \"/echo/m/page\"; status = 303; retry_after = 120;\n"
             "                 when_file = \"maintenance.flag\"; }; },\n");
    unlink(flag);
    start_routes(e, NULL, routes);
    check_relayed(e, "POST", "/echo/m/cart");

    assert_int_equal(th_write_file(flag, "on\n"), 0);
    int64_t on = wait_switch(e, "/echo/m/cart", true);
    if (on < 0 || on > 2000)
        fail_msg("the flag file was noticed after %lld ms (-1: not in 3 s)", (long long)on);
    th_resp rs = req(e, "POST", "/echo/m/cart", NULL);
    expect_redirect(&rs, 303, "/echo/m/page", "maintenance on");
    assert_string_equal(th_resp_hdr(&rs, "Retry-After"), "120");
    th_resp_free(&rs);
    check_relayed(e, NULL, "/echo/m/page"); /* the page itself is not redirected */

    assert_int_equal(unlink(flag), 0);
    int64_t off = wait_switch(e, "/echo/m/cart", false);
    if (off < 0 || off > 2000)
        fail_msg("the flag file's removal was noticed after %lld ms", (long long)off);
    check_relayed(e, "POST", "/echo/m/cart");
    assert_true(th_proc_running(&e->detour)); /* no restart was needed */
}

/* ---- targets
 * ---------------------------------------------------------------------------------------- */

static void test_targets_round_robin(void **state)
{
    static const char *const mirrors[] = {"https://m1.example", "https://m2.example:8443",
                                          "http://m3.example"};
    th_env *e = env_of(state);
    start_routes(e, NULL,
                 "  { name = \"mirrors\"; match = { prefix = \"/dl/\"; methods = [\"GET\"]; };\n"
                 "    redirect = { to = \"$target/files/$suffix$is_args$args\"; status = 302;\n"
                 "      targets = [\"https://m1.example\", \"https://m2.example:8443\",\n"
                 "                 \"http://m3.example\"]; }; },\n");
    /* A request that does not match does not move the cursor. */
    check_origin(e, "POST", "/dl/none");
    for (int i = 0; i < 7; i++) {
        char target[64], want[128];
        snprintf(target, sizeof(target), "/dl/f%d.tar?v=%d", i, i);
        snprintf(want, sizeof(want), "%s/files/f%d.tar?v=%d", mirrors[i % 3], i, i);
        check_redirect(e, NULL, target, 302, want);
    }
}

/* ---- dry_run
 * ------------------------------------------------------------------------------------------ */

static void test_dry_run_counted_and_relayed(void **state)
{
    char extra[TH_PATH_MAX * 2], routes[4096], absent[TH_PATH_MAX + 16], log[TH_PATH_MAX + 16];
    th_env *e = env_of(state);
    int avoid[] = {e->port, e->origin_port};
    int admin = ops_free_port_not(avoid, 2);
    snprintf(log, sizeof(log), "%s/access.log", e->dir);
    snprintf(absent, sizeof(absent), "%s/never.flag", e->dir);
    snprintf(extra, sizeof(extra), "admin = \"127.0.0.1:%d\";\naccess_log = \"%s\";", admin, log);
    snprintf(routes, sizeof(routes),
             "  { name = \"would-move\"; match = { prefix = \"/echo/dr/\"; };\n"
             "    redirect = { to = \"/v2/$suffix\"; dry_run = true; }; },\n"
             "  { name = \"would-move-flag\"; match = { prefix = \"/echo/dr/\"; };\n"
             "    redirect = { to = \"/v3/$suffix\"; dry_run = true; when_file = \"%s\"; }; },\n"
             "  { name = \"would-move-none\"; match = { prefix = \"/echo/dr/\"; };\n"
             "    redirect = { to = \"/v4/$suffix\"; dry_run = true; percent = 0; }; },\n"
             "  { name = \"would-move-too\"; match = { prefix = \"/echo/dr/b\"; };\n"
             "    redirect = { to = \"/v5/$suffix\"; dry_run = true; }; },\n",
             absent);
    start_routes(e, extra, routes);
    assert_int_equal(th_proc_wait_port(&e->detour, admin, 5000), 0);

    check_relayed(e, NULL, "/echo/dr/a1");
    check_relayed(e, "POST", "/echo/dr/a2?x=1");
    check_relayed(e, NULL, "/echo/dr/b3");
    check_relayed(e, NULL, "/echo/other");

    double n = ops_wait_metric(admin, "detour_dry_run_total{route=\"would-move\"}", 3, 3000);
    char *m = ops_scrape(admin);
    assert_non_null(m);
    if (n != 3)
        fail_msg("detour_dry_run_total{route=\"would-move\"} = %g, expected 3\n%s", n, m);
    /* Several dry-run routes can fire for one request. */
    assert_true(ops_metric(m, "detour_dry_run_total{route=\"would-move-too\"}") == 1);
    /* Inactive dry runs (flag absent, client not in the percent) count nothing. */
    assert_true(ops_metric(m, "detour_dry_run_total{route=\"would-move-flag\"}") <= 0);
    assert_true(ops_metric(m, "detour_dry_run_total{route=\"would-move-none\"}") <= 0);
    /* Nothing was redirected; the relay answered all four. */
    assert_true(ops_metric(m, "detour_redirects_total{route=\"would-move\"}") <= 0);
    ops_wait_metric(admin, "detour_requests_total{route=\"origin\",action=\"relay\",code=\"200\"}",
                    4, 3000);
    free(m);
    m = ops_scrape(admin);
    assert_true(
        ops_metric(m, "detour_requests_total{route=\"origin\",action=\"relay\",code=\"200\"}") ==
        4);
    free(m);

    /* The access log has the relay, and names the dry-run route that would have moved it. */
    assert_true(ops_wait_file_contains(log, "/echo/dr/b3", 3000));
    char *text = ops_read_file(log), bad[2048] = "";
    int lines = 0;
    assert_non_null(text);
    for (const char *line = text; *line != '\0';) {
        const char *nl = strchr(line, '\n');
        size_t len = nl ? (size_t)(nl - line) : strlen(line);
        char one[2048];
        snprintf(one, sizeof(one), "%.*s", (int)len, line);
        if (strstr(one, " /echo/dr/") != NULL) {
            lines++;
            if (bad[0] == '\0' && (strstr(one, "route=origin action=relay") == NULL ||
                                   strstr(one, "would-move") == NULL))
                snprintf(bad, sizeof(bad), "%s", one);
        }
        line += len + (nl != NULL);
    }
    free(text);
    assert_int_equal(lines, 3);
    if (bad[0] != '\0')
        fail_msg("the access log line of a dry-run hit names no dry-run route: %s", bad);
}

/* ---- map
 * ------------------------------------------------------------------------------------------------
 */

static void test_map(void **state)
{
    char path[TH_PATH_MAX + 16];
    th_env *e = env_of(state);
    snprintf(path, sizeof(path), "%s/old.map", e->dir);
    assert_int_equal(th_write_file(path, "# the old site\n"
                                         "/old/a.html   /new/a\n"
                                         "\n"
                                         "/old/b.html\thttps://elsewhere.example/b\n"
                                         "   # indented comment\n"
                                         "/old/c%%20d.html  /new/c-d\n"
                                         "/args/x  /new/x\n"),
                     0);
    start_routes(e, NULL,
                 "  { name = \"old-site\"; match = { prefix = \"/old/\"; };\n"
                 "    redirect = { map = \"old.map\"; status = 301; }; },\n"
                 "  { name = \"with-args\"; match = { prefix = \"/args/\"; };\n"
                 "    redirect = { map = \"old.map\"; to = \"$mapped$is_args$args\"; }; },\n"
                 "  { name = \"unmatched\"; match = { prefix = \"/old/\"; methods = [\"GET\"]; };\n"
                 "    redirect = { to = \"/fallback$uri\"; }; },\n");
    check_redirect(e, NULL, "/old/a.html", 301, "/new/a");
    check_redirect(e, NULL, "/old/a.html?lang=en", 301, "/new/a"); /* the query is not looked up */
    check_redirect(e, "POST", "/old/b.html", 301, "https://elsewhere.example/b");
    check_redirect(e, NULL, "/old/c%20d.html", 301, "/new/c-d");
    check_redirect(e, NULL, "/args/x?y=1&z", 307, "/new/x?y=1&z");
    /* Paths not in the map fall through to the next routes. */
    check_redirect(e, NULL, "/old/a.htm", 307, "/fallback/old/a.htm");
    check_redirect(e, NULL, "/old/c%20d.htm", 307, "/fallback/old/c%20d.htm");
    check_origin(e, "POST", "/old/nothing");
    check_origin(e, NULL, "/args/y");
}

/* ---- request bodies
 * -------------------------------------------------------------------------------------- */

static const char *const body_routes =
    "  { name = \"post\"; match = { prefix = \"/echo/post/\"; };\n"
    "    redirect = { to = \"/v2/$suffix\"; }; },\n";

static void test_post_body_dropped_connection_kept(void **state)
{
    th_env *e = env_of(state);
    char *body = malloc(ONE_MIB);
    assert_non_null(body);
    th_pattern_fill(0, (unsigned char *)body, ONE_MIB);
    start_routes(e, NULL, body_routes);
    unsigned long before = th_origin_requests(e);

    CURL *easy = curl_easy_init();
    assert_non_null(easy);
    const char *const no_expect[] = {"Expect:", NULL};
    th_req post = {.method = "POST",
                   .url = e->url,
                   .target = "/echo/post/form?a=1",
                   .headers = no_expect,
                   .body = body,
                   .body_len = ONE_MIB,
                   .keep_body = true,
                   .timeout_ms = 10000,
                   .easy = easy};
    th_resp rs;
    assert_int_equal(th_http(&post, &rs), 0);
    expect_redirect(&rs, 307, "/v2/form", "1 MiB POST");
    assert_int_equal(rs.num_connects, 1);
    const char *conn = th_resp_hdr(&rs, "Connection");
    if (conn != NULL && strcasecmp(conn, "close") == 0)
        fail_msg("a 1 MiB body closed the connection");
    th_resp_free(&rs);
    /* The next request rides the same connection. */
    rs = req_on(e, easy, NULL, "/echo/post/next", NULL);
    expect_redirect(&rs, 307, "/v2/next", "after the POST");
    assert_int_equal(rs.num_connects, 0);
    th_resp_free(&rs);
    /* Chunked, the same. */
    th_req chunked = post;
    chunked.chunked = true;
    chunked.target = "/echo/post/chunked";
    assert_int_equal(th_http(&chunked, &rs), 0);
    expect_redirect(&rs, 307, "/v2/chunked", "1 MiB chunked POST");
    assert_int_equal(rs.num_connects, 0);
    th_resp_free(&rs);
    rs = req_on(e, easy, "PUT", "/echo/post/last", NULL);
    expect_redirect(&rs, 307, "/v2/last", "after the chunked POST");
    assert_int_equal(rs.num_connects, 0);
    th_resp_free(&rs);
    curl_easy_cleanup(easy);

    /* The origin saw none of it: only the second /stats. */
    assert_int_equal(th_origin_requests(e), before + 1);
    free(body);
}

static void test_post_body_raw_socket(void **state)
{
    th_env *e = env_of(state);
    th_raw_resp r;
    char head[256], v[256];
    char *body = malloc(ONE_MIB);
    assert_non_null(body);
    th_pattern_fill(0, (unsigned char *)body, ONE_MIB);
    start_routes(e, NULL, body_routes);
    unsigned long before = th_origin_requests(e);

    int fd = th_connect(e->port, IO_MS);
    assert_true(fd >= 0);
    snprintf(head, sizeof(head),
             "POST /echo/post/raw HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n", ONE_MIB);
    assert_int_equal(th_send_str(fd, head, IO_MS), 0);
    assert_int_equal(th_send_all(fd, body, ONE_MIB, 10000), 0);
    assert_int_equal(th_recv_response(fd, false, &r, IO_MS), 0);
    assert_int_equal(r.status, 307);
    assert_true(r.complete);
    assert_string_equal(th_head_header(r.head, "Location", v, sizeof(v)), "/v2/raw");
    th_raw_resp_free(&r);
    /* The same socket: a second request is read as a request, not as body bytes. */
    const char *next = "GET /echo/post/second HTTP/1.1\r\nHost: a\r\n\r\n";
    raw_exchange(fd, next, strlen(next), false, &r);
    assert_int_equal(r.status, 307);
    assert_string_equal(th_head_header(r.head, "Location", v, sizeof(v)), "/v2/second");
    th_raw_resp_free(&r);
    /* And a relayed one after that, on the same socket too. */
    const char *relay = "GET /echo/after HTTP/1.1\r\nHost: a\r\n\r\n";
    raw_exchange(fd, relay, strlen(relay), false, &r);
    assert_int_equal(r.status, 200);
    th_assert_contains(r.body, "target: /echo/after\n");
    th_assert_contains(r.body, "body-length: 0\n");
    th_raw_resp_free(&r);
    close(fd);
    assert_int_equal(th_origin_requests(e), before + 2); /* /echo/after and this /stats */
    free(body);
}

/* Connect and send a POST head for /echo/post/NAME that waits for 100 Continue. */
static int send_expect_continue(th_env *e, const char *name)
{
    char head[256];
    int fd = th_connect(e->port, IO_MS);
    assert_true(fd >= 0);
    snprintf(head, sizeof(head),
             "POST /echo/post/%s HTTP/1.1\r\nHost: a\r\n"
             "Content-Length: 2000000\r\nExpect: 100-continue\r\n\r\n",
             name);
    assert_int_equal(th_send_str(fd, head, IO_MS), 0);
    return fd;
}

static void test_expect_continue_answered_at_once(void **state)
{
    th_env *e = env_of(state);
    th_raw raw;
    start_routes(e, NULL, body_routes);
    unsigned long before = th_origin_requests(e);

    int fd = send_expect_continue(e, "ask");
    /* Everything detour sends, up to its close: no 100 Continue, then the 307. */
    assert_int_equal(th_recv_all(fd, &raw, 65536, IO_MS), 0);
    assert_false(raw.timed_out);
    assert_true(raw.closed);
    if (strncmp(raw.data, "HTTP/1.1 307 ", 13) != 0)
        fail_msg("expected the 307 first, got:\n%s", raw.data);
    assert_null(strstr(raw.data, " 100 "));
    th_assert_contains(raw.data, "Location: /v2/ask\r\n");
    expect_clean_head(raw.data, "Expect: 100-continue");
    th_raw_free(&raw);
    close(fd);

    /* libcurl sends Expect: 100-continue with an upload and waits 1 s for it. */
    char body[4096];
    memset(body, 'b', sizeof(body));
    th_req rq = {.method = "PUT",
                 .url = e->url,
                 .target = "/echo/post/curl",
                 .body = body,
                 .body_len = sizeof(body),
                 .keep_body = true,
                 .timeout_ms = 10000};
    th_resp rs;
    th_http(&rq, &rs);
    expect_redirect(&rs, 307, "/v2/curl", "curl upload with Expect");
    if (rs.total_s >= 0.9)
        fail_msg("the answer took %.3f s: curl waited for a 100 Continue", rs.total_s);
    th_resp_free(&rs);
    assert_int_equal(th_origin_requests(e), before + 1);
}

/* HEAD without its Date line, for comparing two answers made at different times. */
static void head_without_date(const char *head, char *out, size_t cap)
{
    const char *date = strstr(head, "\r\nDate: ");
    const char *after = date != NULL ? strstr(date + 2, "\r\n") : NULL;
    if (date == NULL || after == NULL)
        snprintf(out, cap, "%s", head);
    else
        snprintf(out, cap, "%.*s%s", (int)(date - head), head, after);
}

/* HEAD has exactly one Date, an IMF-fixdate within a few seconds of now. */
static void expect_one_current_date(const char *head)
{
    const char *d = strstr(head, "\r\nDate: ");
    struct tm tm = {0};
    assert_non_null(d);
    if (strstr(d + 2, "\r\nDate: ") != NULL)
        fail_msg("two Date headers in\n%s", head);
    const char *end = strptime(d + 8, "%a, %d %b %Y %H:%M:%S GMT", &tm);
    if (end == NULL || strncmp(end, "\r\n", 2) != 0)
        fail_msg("Date is not an IMF-fixdate in\n%s", head);
    double off = difftime(timegm(&tm), time(NULL));
    if (off < -5 || off > 5)
        fail_msg("Date is %.0f s away from now in\n%s", off, head);
}

/*
 * The same redirect again is the same answer (a worker queues the response
 * it made before, see rcache.h): byte for byte apart from Date, for GET and
 * HEAD. An answer that must close its connection adds Connection: close to
 * a copy of its own, never to the one later clients get.
 */
static void test_repeated_answer_unchanged(void **state)
{
    th_env *e = env_of(state);
    th_raw_resp first, r;
    char want[1024], got[1024], v[128], cl[32];
    /* One worker: every connection meets the same cached answer. */
    int rc = th_detour_start(e,
                             "listen = \"127.0.0.1:%d\";\nworkers = 1;\naccess_log = \"off\";\n"
                             "upstreams = { o = { url = \"http://127.0.0.1:%d\"; }; };\n"
                             "routes = (\n%s"
                             "  { name = \"origin\"; match = { prefix = \"/\"; };\n"
                             "    relay = { upstream = \"o\"; }; }\n);\n",
                             e->port, e->origin_port, body_routes);
    assert_int_equal(rc, 0);
    const char *get = "GET /echo/post/same HTTP/1.1\r\nHost: a\r\n\r\n";
    int fd = th_connect(e->port, IO_MS);
    assert_true(fd >= 0);
    raw_exchange(fd, get, strlen(get), false, &first);
    assert_int_equal(first.status, 307);
    assert_string_equal(th_head_header(first.head, "Location", v, sizeof(v)), "/v2/same");
    assert_null(th_head_header(first.head, "Connection", v, sizeof(v)));
    expect_one_current_date(first.head);
    head_without_date(first.head, want, sizeof(want));
    for (int i = 0; i < 3; i++) {
        raw_exchange(fd, get, strlen(get), false, &r);
        head_without_date(r.head, got, sizeof(got));
        assert_string_equal(got, want);
        assert_int_equal(r.body_len, first.body_len);
        assert_string_equal(r.body, first.body);
        th_raw_resp_free(&r);
    }
    const char *head = "HEAD /echo/post/same HTTP/1.1\r\nHost: a\r\n\r\n";
    raw_exchange(fd, head, strlen(head), true, &r);
    expect_one_current_date(r.head);
    head_without_date(r.head, got, sizeof(got));
    assert_string_equal(got, want);
    assert_int_equal(r.body_len, 0);
    snprintf(cl, sizeof(cl), "%llu", (unsigned long long)first.body_len);
    assert_string_equal(th_head_header(r.head, "Content-Length", v, sizeof(v)), cl);
    th_raw_resp_free(&r);

    /* A client waiting for 100 Continue: the same answer, closing. */
    int fd2 = send_expect_continue(e, "same");
    assert_int_equal(th_recv_response(fd2, false, &r, IO_MS), 0);
    assert_int_equal(r.status, 307);
    assert_string_equal(th_head_header(r.head, "Location", v, sizeof(v)), "/v2/same");
    assert_string_equal(th_head_header(r.head, "Connection", v, sizeof(v)), "close");
    expect_one_current_date(r.head);
    assert_string_equal(r.body, first.body);
    th_raw_resp_free(&r);
    assert_true(th_wait_closed(fd2, IO_MS));
    close(fd2);

    /* The kept connection's next answer is still the keep-alive one. */
    for (int i = 0; i < 2; i++) {
        raw_exchange(fd, get, strlen(get), false, &r);
        head_without_date(r.head, got, sizeof(got));
        assert_string_equal(got, want);
        th_raw_resp_free(&r);
    }
    close(fd);
    th_raw_resp_free(&first);
}

static void test_large_body_answered_and_closed(void **state)
{
    th_env *e = env_of(state);
    th_raw_resp r;
    char head[256], chunk[65536], v[128];
    start_routes(e, NULL, body_routes);
    int fd = th_connect(e->port, IO_MS);
    assert_true(fd >= 0);
    snprintf(head, sizeof(head),
             "POST /echo/post/huge HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n",
             64 * ONE_MIB);
    memset(chunk, 'x', sizeof(chunk));
    assert_int_equal(th_send_str(fd, head, IO_MS), 0);
    th_send_watch(fd, chunk, sizeof(chunk), 4096, IO_MS);
    /* Answered without the 64 MiB, then closed cleanly. */
    assert_int_equal(th_recv_response(fd, false, &r, IO_MS), 0);
    assert_int_equal(r.status, 307);
    assert_string_equal(th_head_header(r.head, "Location", v, sizeof(v)), "/v2/huge");
    th_raw_resp_free(&r);
    assert_true(th_wait_closed(fd, IO_MS));
    close(fd);
    check_redirect(e, NULL, "/echo/post/alive", 307, "/v2/alive");
}

/* ---- injection
 * ---------------------------------------------------------------------------------------------- */

static const char *const inject_routes =
    "  { name = \"go\"; match = { prefix = \"/go/\"; };\n"
    "    redirect = { to = \"/went/$suffix$is_args$args\"; }; },\n";

static void test_encoded_crlf_stays_encoded(void **state)
{
    static const struct {
        const char *target, *location;
    } cases[] = {
        {"/go/a%0d%0aSet-Cookie:x=1", "/went/a%0d%0aSet-Cookie:x=1"},
        {"/go/a?q=%0D%0AX-Injected:%201", "/went/a?q=%0D%0AX-Injected:%201"},
        {"/go/%0d%0a%0d%0a<html>", "/went/%0d%0a%0d%0a%3Chtml%3E"},
        {"/go/%00x?%00", "/went/%00x?%00"},
    };
    th_env *e = env_of(state);
    start_routes(e, NULL, inject_routes);
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        th_resp rs = req(e, NULL, cases[i].target, NULL);
        expect_redirect(&rs, 307, cases[i].location, cases[i].target);
        assert_null(th_resp_hdr(&rs, "Set-Cookie"));
        assert_null(th_resp_hdr(&rs, "X-Injected"));
        th_resp_free(&rs);
    }
    /* The HTML body never carries markup from the request. */
    th_resp rs = req(e, NULL, "/go/%22%3E?x=\"><script>", NULL);
    if (rs.status == 307) {
        assert_null(strstr(rs.body, "<script>"));
        assert_null(strstr(rs.body, "\"><"));
    } else {
        assert_int_equal(rs.status, 400);
    }
    th_resp_free(&rs);
}

/* A raw request with bytes no client library would send: refused (400) or safely encoded. */
static void raw_inject(th_env *e, const char *rq, size_t len, const char *want_location)
{
    th_raw_resp r;
    char v[512];
    int fd = th_connect(e->port, IO_MS);
    assert_true(fd >= 0);
    th_send_watch(fd, rq, len, 4096, IO_MS);
    bool answered = th_recv_response(fd, false, &r, IO_MS) == 0;
    bool closed = r.closed;
    int status = r.status;
    char head[2048];
    snprintf(head, sizeof(head), "%s", r.head ? r.head : "");
    v[0] = '\0';
    if (answered)
        th_head_header(r.head, "Location", v, sizeof(v));
    th_raw_resp_free(&r);
    close(fd);
    if (!answered) {
        /* Closing without an answer is also safe, but must happen promptly. */
        assert_true(closed);
        return;
    }
    expect_clean_head(head, want_location);
    if (status == 307 && strcmp(v, want_location) != 0)
        fail_msg("Location \"%s\", expected \"%s\"", v, want_location);
    if (status != 307 && status != 400)
        fail_msg("status %d for a raw %s", status, want_location);
}

#define RAW(lit) lit, sizeof(lit) - 1

static void test_raw_bytes_never_split_a_header(void **state)
{
    th_env *e = env_of(state);
    start_routes(e, NULL, inject_routes);
    raw_inject(e, RAW("GET /go/a\rX-Injected:1 HTTP/1.1\r\nHost: a\r\n\r\n"),
               "/went/a%0DX-Injected:1");
    raw_inject(e, RAW("GET /go/a?\rSet-Cookie:x=1 HTTP/1.1\r\nHost: a\r\n\r\n"),
               "/went/a?%0DSet-Cookie:x=1");
    raw_inject(e, RAW("GET /go/a\nX-Injected:1 HTTP/1.1\r\nHost: a\r\n\r\n"),
               "/went/a%0AX-Injected:1");
    raw_inject(e, RAW("GET /go/caf\xC3\xA9/\xFF?q=\x80\x7f HTTP/1.1\r\nHost: a\r\n\r\n"),
               "/went/caf%C3%A9/%FF?q=%80%7F");
    raw_inject(e, RAW("GET /go/\"<>\\^`{|} HTTP/1.1\r\nHost: a\r\n\r\n"),
               "/went/%22%3C%3E%5C%5E%60%7B%7C%7D");
    /* A UTF-8 target end to end: encoded in the Location. */
    th_raw_resp r;
    char v[256];
    int fd = th_connect(e->port, IO_MS);
    assert_true(fd >= 0);
    raw_exchange(fd, RAW("GET /go/\xC3\xA9t\xC3\xA9 HTTP/1.1\r\nHost: a\r\n\r\n"), false, &r);
    assert_int_equal(r.status, 307);
    assert_string_equal(th_head_header(r.head, "Location", v, sizeof(v)), "/went/%C3%A9t%C3%A9");
    th_raw_resp_free(&r);
    close(fd);
    /* And detour is still there, answering. */
    assert_true(th_proc_running(&e->detour));
    check_redirect(e, NULL, "/go/ok", 307, "/went/ok");
}

/* A NUL in the target is refused, as it is in a header value; never cut short. */
static void test_raw_nul_in_target(void **state)
{
    th_env *e = env_of(state);
    start_routes(e, NULL, inject_routes);
    raw_inject(e, RAW("GET /go/a\0X-Injected:1 HTTP/1.1\r\nHost: a\r\n\r\n"),
               "/went/a%00X-Injected:1");
    raw_inject(e, RAW("GET /go/b?x=\0y HTTP/1.1\r\nHost: a\r\n\r\n"), "/went/b?x=%00y");
}

/*
 * $host needs a host. RFC 9112 3.2: an HTTP/1.1 request without Host, or
 * with an invalid one, gets 400. A Location with an empty authority
 * ("https:///evil.example/x") must never go out: browsers read it as
 * https://evil.example/x, an open redirect.
 */
static void test_host_missing_or_invalid(void **state)
{
    static const struct {
        const char *what, *rq;
        size_t len;
    } cases[] = {
        {"HTTP/1.1 without Host", RAW("GET /all/evil.example/x HTTP/1.1\r\n\r\n")},
        {"empty Host", RAW("GET /all/evil.example/x HTTP/1.1\r\nHost: \r\n\r\n")},
        {"Host with a slash", RAW("GET /all/evil.example/x HTTP/1.1\r\nHost: a/b\r\n\r\n")},
        {"Host with UTF-8",
         RAW("GET /all/evil.example/x HTTP/1.1\r\nHost: ex\xC3\xA9.test\r\n\r\n")},
        {"Host with a bad port", RAW("GET /all/evil.example/x HTTP/1.1\r\nHost: a.test:x\r\n\r\n")},
        {"HTTP/1.0 without Host", RAW("GET /all/evil.example/x HTTP/1.0\r\n\r\n")},
    };
    th_env *e = env_of(state);
    int failures = 0;
    start_routes(e, NULL,
                 "  { name = \"to-https\"; match = { prefix = \"/all/\"; };\n"
                 "    redirect = { to = \"https://$host$request_uri\"; status = 301; }; },\n");
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        th_raw_resp r;
        char loc[512] = "";
        int fd = th_connect(e->port, IO_MS);
        assert_true(fd >= 0);
        raw_exchange(fd, cases[i].rq, cases[i].len, false, &r);
        th_head_header(r.head, "Location", loc, sizeof(loc));
        bool http10 = strstr(cases[i].rq, "HTTP/1.0") != NULL;
        if (strncmp(loc, "https:///", 9) == 0 || (!http10 && r.status != 400)) {
            print_error("%s: status %d, Location \"%s\"; expected 400\n", cases[i].what, r.status,
                        loc);
            failures++;
        }
        th_raw_resp_free(&r);
        close(fd);
    }
    assert_int_equal(failures, 0);
    /* A good Host still works, with its port dropped. */
    const char *const hdr[] = {"Host: Shop.Example:8080", NULL};
    th_resp rs = req(e, NULL, "/all/x?y=1", hdr);
    expect_redirect(&rs, 301, "https://shop.example/all/x?y=1", "a good Host");
    th_resp_free(&rs);
}

/* ---- a Location too long to send
 * ---------------------------------------------------------------------- */

static void test_location_overflow_is_500(void **state)
{
    th_env *e = env_of(state);
    th_raw_resp r;
    char v[64];
    start_routes(e, NULL,
                 "  { name = \"five\"; match = { prefix = \"/big/\"; };\n"
                 "    redirect = { to = \"/x$uri$uri$uri$uri$uri\"; }; },\n");
    /* 5 x 3005 + 2 = 15027 bytes: sent. */
    size_t n = 3000;
    char *target = malloc(8192), *want = malloc(20000);
    assert_non_null(target);
    assert_non_null(want);
    strcpy(target, "/big/");
    memset(target + 5, 'a', n);
    target[5 + n] = '\0';
    snprintf(want, 20000, "/x%s%s%s%s%s", target, target, target, target, target);
    check_redirect(e, NULL, target, 307, want);

    /* 5 x 4005 + 2 > 16 KiB: a 500, and the connection goes on. */
    n = 4000;
    memset(target + 5, 'b', n);
    target[5 + n] = '\0';
    char *rq = malloc(8192);
    assert_non_null(rq);
    snprintf(rq, 8192, "GET %s HTTP/1.1\r\nHost: a\r\n\r\n", target);
    int fd = th_connect(e->port, IO_MS);
    assert_true(fd >= 0);
    raw_exchange(fd, rq, strlen(rq), false, &r);
    assert_int_equal(r.status, 500);
    assert_null(th_head_header(r.head, "Location", v, sizeof(v)));
    assert_true(r.complete);
    th_raw_resp_free(&r);
    /* Percent-encoding can overflow it too: 1,400 raw bytes become 4,200. */
    memset(rq, 0, 8192);
    memcpy(rq, "GET /big/", 9);
    memset(rq + 9, 0xE9, 1400);
    strcpy(rq + 9 + 1400, " HTTP/1.1\r\nHost: a\r\n\r\n");
    raw_exchange(fd, rq, strlen(rq), false, &r);
    assert_true(r.status == 500 || r.status == 400);
    assert_null(th_head_header(r.head, "Location", v, sizeof(v)));
    th_raw_resp_free(&r);
    if (th_wait_closed(fd, 0) == false) {
        const char *ok = "GET /big/ok HTTP/1.1\r\nHost: a\r\n\r\n";
        raw_exchange(fd, ok, strlen(ok), false, &r);
        assert_int_equal(r.status, 307);
        th_raw_resp_free(&r);
    }
    close(fd);
    assert_true(th_proc_running(&e->detour));
    check_redirect(e, NULL, "/big/", 307, "/x/big//big//big//big//big/");
    free(rq);
    free(target);
    free(want);
}

int main(void)
{
#define T(f) cmocka_unit_test_setup_teardown(f, th_it_setup, th_it_teardown)
    const struct CMUnitTest tests[] = {
        T(test_status_codes_and_headers),
        T(test_retry_after),
        T(test_head_gets_headers_without_body),
        T(test_template_variables),
        T(test_guard_against_open_redirect),
        T(test_match_host),
        T(test_match_path_prefix_regex_methods),
        T(test_first_active_route_wins),
        T(test_percent_split_is_sticky),
        T(test_sticky_client_ip),
        T(test_sticky_cookie),
        T(test_ramp),
        T(test_window),
        T(test_when_file),
        T(test_targets_round_robin),
        T(test_dry_run_counted_and_relayed),
        T(test_map),
        T(test_post_body_dropped_connection_kept),
        T(test_post_body_raw_socket),
        T(test_expect_continue_answered_at_once),
        T(test_repeated_answer_unchanged),
        T(test_large_body_answered_and_closed),
        T(test_encoded_crlf_stays_encoded),
        T(test_raw_bytes_never_split_a_header),
        T(test_raw_nul_in_target),
        T(test_host_missing_or_invalid),
        T(test_location_overflow_is_500),
    };
#undef T
    return cmocka_run_group_tests(tests, NULL, NULL);
}
