/*
 * test_rewrite.c - what detour changes in an upstream's answer (rewrite.c):
 * the status (methods x statuses x settings, route over global as the
 * config loader merges it) and the Location (every form a Location takes,
 * which are rewritten to the client's origin, which are leaks).
 *
 * The upstreams and routes are tests/data/rewrite.cfg, loaded with the real
 * config loader so that host, port and scheme are normalised as in detour.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include <cmocka.h>

#include "detour/config.h"
#include "detour/rewrite.h"

static dt_str S(const char *s)
{
    return (dt_str){s, s ? strlen(s) : 0};
}

static dt_config *g_cfg;

static int load_cfg(void **state)
{
    const char *dir = getenv("DETOUR_SOURCE_DIR");
    char path[512], err[512];

    snprintf(path, sizeof path, "%s/tests/data/rewrite.cfg", dir && *dir ? dir : ".");
    if (dt_config_load(path, &g_cfg, err, sizeof err) != DT_OK) {
        fprintf(stderr, "%s\n", err);
        return -1;
    }
    return 0;
}

static int unload_cfg(void **state)
{
    dt_config_unref(g_cfg);
    g_cfg = NULL;
    return 0;
}

static const dt_upstream *up(const char *name)
{
    const dt_upstream *u = name ? dt_config_upstream(g_cfg, name) : NULL;
    if (name != NULL && u == NULL)
        fail_msg("no upstream %s in rewrite.cfg", name);
    return u;
}

static const dt_route *route(const char *name)
{
    for (size_t i = 0; i < g_cfg->nroutes; i++)
        if (strcmp(g_cfg->routes[i].name, name) == 0)
            return &g_cfg->routes[i];
    fail_msg("no route %s in rewrite.cfg", name);
    return NULL;
}

/* ---- the status --------------------------------------------------------------- */

typedef struct status_case {
    const char *method;
    int status;
    bool r302, r301;
    int want;
} status_case;

static const status_case status_cases[] = {
    /* The point of the feature: a form POST answered with 302 or 301. */
    {"POST", 302, true, false, 307},
    {"POST", 301, false, true, 308},
    {"POST", 302, false, true, 302}, /* each setting covers its own code only */
    {"POST", 301, true, false, 301},
    {"POST", 302, true, true, 307},
    {"POST", 301, true, true, 308},
    {"POST", 302, false, false, 302},
    {"POST", 301, false, false, 301},
    /* Every method other than GET and HEAD, known or not. */
    {"PUT", 302, true, false, 307},
    {"DELETE", 302, true, false, 307},
    {"PATCH", 301, false, true, 308},
    {"OPTIONS", 302, true, false, 307},
    {"FROBNICATE", 302, true, false, 307},
    /* Methods are case-sensitive: "get" is not GET. */
    {"get", 302, true, false, 307},
    /* GET and HEAD: never. */
    {"GET", 302, true, true, 302},
    {"GET", 301, true, true, 301},
    {"HEAD", 302, true, true, 302},
    {"HEAD", 301, true, true, 301},
    /* 303 means "GET the result elsewhere": never changed. */
    {"POST", 303, true, true, 303},
    /* Already right, or not a redirect. */
    {"POST", 307, true, true, 307},
    {"POST", 308, true, true, 308},
    {"POST", 200, true, true, 200},
    {"POST", 304, true, true, 304},
    {"POST", 300, true, true, 300},
    {"POST", 502, true, true, 502},
};

static void test_status_table(void **state)
{
    for (size_t i = 0; i < DT_ARRAY_LEN(status_cases); i++) {
        const status_case *c = &status_cases[i];
        int got = dt_rewrite_status(S(c->method), c->status, c->r302, c->r301);
        if (got != c->want)
            fail_msg("%s %d (rewrite_302=%d rewrite_301=%d): got %d, want %d", c->method, c->status,
                     c->r302, c->r301, got, c->want);
    }
}

/* Every method x every 1xx-5xx code x every setting: only 302/301 ever move. */
static void test_status_sweep(void **state)
{
    static const char *const methods[] = {"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "X"};
    for (size_t m = 0; m < DT_ARRAY_LEN(methods); m++)
        for (int code = 100; code < 600; code++)
            for (int set = 0; set < 4; set++) {
                bool r302 = set & 1, r301 = set & 2;
                bool safe = m < 2;
                int want = code;
                if (!safe && code == 302 && r302)
                    want = 307;
                if (!safe && code == 301 && r301)
                    want = 308;
                assert_int_equal(dt_rewrite_status(S(methods[m]), code, r302, r301), want);
            }
}

/* What the loader hands the relay: the route's value, else the global one. */
static void test_route_over_global(void **state)
{
    assert_true(g_cfg->rewrite_302);
    assert_false(g_cfg->rewrite_301);

    const dt_relay *inherit = &route("inherit")->relay;
    assert_true(inherit->rewrite_302);
    assert_false(inherit->rewrite_301);
    assert_true(inherit->rewrite_location);

    const dt_relay *no302 = &route("no-302")->relay;
    assert_false(no302->rewrite_302);
    assert_int_equal(dt_rewrite_status(S("POST"), 302, no302->rewrite_302, no302->rewrite_301),
                     302);

    const dt_relay *w301 = &route("with-301")->relay;
    assert_true(w301->rewrite_302);
    assert_true(w301->rewrite_301);
    assert_int_equal(dt_rewrite_status(S("POST"), 301, w301->rewrite_302, w301->rewrite_301), 308);
    assert_int_equal(dt_rewrite_status(S("POST"), 302, w301->rewrite_302, w301->rewrite_301), 307);

    assert_false(route("keep-loc")->relay.rewrite_location);
    assert_true(route("all")->relay.rewrite_location);
}

/* ---- the Location --------------------------------------------------------------- */

#define RW DT_LOCATION_REWRITTEN
#define LEAK DT_LOCATION_LEAK
#define KEPT DT_LOCATION_KEPT

typedef struct loc_case {
    const char *location;
    const char *upstream; /* NULL: a relay to the request's own destination */
    bool enabled;
    const char *scheme, *authority; /* what the client used */
    dt_location_result want;
    const char *want_out; /* when rewritten */
} loc_case;

#define CLIENT "http", "shop.example:8080"

static const loc_case loc_cases[] = {
    /* The upstream's own origin becomes the client's; the rest is untouched. */
    {"http://127.0.0.1:9000/legacy/done?x=1&y=%2F#top", "legacy", true, CLIENT, RW,
     "http://shop.example:8080/legacy/done?x=1&y=%2F#top"},
    {"HTTP://127.0.0.1:9000/a", "legacy", true, CLIENT, RW, "http://shop.example:8080/a"},
    {"http://127.0.0.1:9000", "legacy", true, CLIENT, RW, "http://shop.example:8080"},
    {"http://127.0.0.1:9000?q=1", "legacy", true, CLIENT, RW, "http://shop.example:8080?q=1"},
    {"http://127.0.0.1:9000#f", "legacy", true, CLIENT, RW, "http://shop.example:8080#f"},
    {"http://127.0.0.1:09000/a", "legacy", true, CLIENT, RW, "http://shop.example:8080/a"},
    /* Userinfo is not part of the origin, and must not reach the client. */
    {"http://user:secret@127.0.0.1:9000/a", "legacy", true, CLIENT, RW,
     "http://shop.example:8080/a"},
    /* A network-path reference takes the upstream's scheme. */
    {"//127.0.0.1:9000/a", "legacy", true, CLIENT, RW, "http://shop.example:8080/a"},
    /* The client's scheme and Host, whatever they are. */
    {"http://127.0.0.1:9000/a", "legacy", true, "https", "shop.example", RW,
     "https://shop.example/a"},
    {"http://127.0.0.1:9000/a", "legacy", true, "http", "[::1]:8080", RW, "http://[::1]:8080/a"},
    /* Default port written or not, host case and a trailing dot. */
    {"http://legacy.internal/x", "web", true, CLIENT, RW, "http://shop.example:8080/x"},
    {"http://legacy.internal:80/x", "web", true, CLIENT, RW, "http://shop.example:8080/x"},
    {"http://Legacy.INTERNAL./x", "web", true, CLIENT, RW, "http://shop.example:8080/x"},
    {"http://legacy.internal:/x", "web", true, CLIENT, RW, "http://shop.example:8080/x"},
    {"https://app.internal.example/p", "tls", true, "https", "shop.example", RW,
     "https://shop.example/p"},
    {"https://app.internal.example:443/p", "tls", true, "https", "shop.example", RW,
     "https://shop.example/p"},
    {"//app.internal.example/p", "tls", true, "https", "shop.example", RW,
     "https://shop.example/p"},
    /* IPv6 upstream, brackets and case. */
    {"http://[fd00::5]:8080/x", "v6", true, CLIENT, RW, "http://shop.example:8080/x"},
    {"http://[FD00::5]:8080/x", "v6", true, CLIENT, RW, "http://shop.example:8080/x"},
    {"https://api.example.com:8443/v1", "pub", true, CLIENT, RW, "http://shop.example:8080/v1"},

    /* Another port, scheme or host of an internal machine: not the origin, a leak. */
    {"http://127.0.0.1:9001/a", "legacy", true, CLIENT, LEAK, NULL},
    {"https://127.0.0.1:9000/a", "legacy", true, CLIENT, LEAK, NULL},
    {"http://127.0.0.1/a", "legacy", true, CLIENT, LEAK, NULL},
    {"http://127.0.0.1:/a", "legacy", true, CLIENT, LEAK, NULL},
    {"http://app.internal.example/p", "tls", true, "https", "shop.example", LEAK, NULL},
    {"http://[fd00::5]/x", "v6", true, CLIENT, LEAK, NULL},
    /* Another configured upstream, on any port: its name is internal knowledge. */
    {"http://legacy.internal/x", "legacy", true, CLIENT, LEAK, NULL},
    {"http://legacy.internal:8081/x", "legacy", true, CLIENT, LEAK, NULL},
    {"https://api.example.com/v1", "pub", true, CLIENT, LEAK, NULL},
    {"https://api.example.com:8443/v1", "legacy", true, CLIENT, LEAK, NULL},
    /* Internal addresses in every form. */
    {"http://10.1.2.3/x", "legacy", true, CLIENT, LEAK, NULL},
    {"http://192.168.1.1/", "legacy", true, CLIENT, LEAK, NULL},
    {"http://172.16.0.1/", "legacy", true, CLIENT, LEAK, NULL},
    {"http://172.31.255.255/", "legacy", true, CLIENT, LEAK, NULL},
    {"http://169.254.169.254/latest/meta-data", "legacy", true, CLIENT, LEAK, NULL},
    {"http://100.64.0.1/", "legacy", true, CLIENT, LEAK, NULL},
    {"http://localhost:3000/", "legacy", true, CLIENT, LEAK, NULL},
    {"http://LOCALHOST./", "legacy", true, CLIENT, LEAK, NULL},
    {"http://app.localhost/", "legacy", true, CLIENT, LEAK, NULL},
    {"http://127.1/", "legacy", true, CLIENT, LEAK, NULL},
    {"http://0x7f000001/", "legacy", true, CLIENT, LEAK, NULL},
    {"http://[::1]:9000/", "legacy", true, CLIENT, LEAK, NULL},
    {"http://[fe80::1%25eth0]/", "legacy", true, CLIENT, LEAK, NULL},
    {"http://[::ffff:10.0.0.1]/", "legacy", true, CLIENT, LEAK, NULL},
    {"//10.0.0.7/x", "legacy", true, CLIENT, LEAK, NULL},
    {"http://user@evil.example@10.0.0.1/", "legacy", true, CLIENT, LEAK, NULL},

    /* Rewrite off (rewrite_location = false): the upstream origin stays, and leaks. */
    {"http://127.0.0.1:9000/a", "legacy", false, CLIENT, LEAK, NULL},
    {"https://api.example.com:8443/v1", "pub", false, CLIENT, LEAK, NULL},
    /* No Host to rewrite to (HTTP/1.0): left alone, a leak. */
    {"http://127.0.0.1:9000/a", "legacy", true, "http", "", LEAK, NULL},

    /* Relative: already on the client's origin. */
    {"/legacy/done", "legacy", true, CLIENT, KEPT, NULL},
    {"done", "legacy", true, CLIENT, KEPT, NULL},
    {"../done?x", "legacy", true, CLIENT, KEPT, NULL},
    {"?page=2", "legacy", true, CLIENT, KEPT, NULL},
    {"#frag", "legacy", true, CLIENT, KEPT, NULL},
    {"", "legacy", true, CLIENT, KEPT, NULL},
    {"/", "legacy", true, CLIENT, KEPT, NULL},
    /* Public origins and other schemes. */
    {"https://www.example.org/x", "legacy", true, CLIENT, KEPT, NULL},
    {"http://172.32.0.1/", "legacy", true, CLIENT, KEPT, NULL},
    {"http://8.8.8.8/", "legacy", true, CLIENT, KEPT, NULL},
    {"http://[2001:db8::1]/", "legacy", true, CLIENT, KEPT, NULL},
    {"http://10.0.0.1@evil.example/", "legacy", true, CLIENT, KEPT, NULL},
    {"http://notlocalhost/", "legacy", true, CLIENT, KEPT, NULL},
    {"mailto:ops@10.0.0.1", "legacy", true, CLIENT, KEPT, NULL},
    /* A port no client can use: never the origin, but the host still leaks. */
    {"http://127.0.0.1:99999/a", "legacy", true, CLIENT, LEAK, NULL},
    {"http://127.0.0.1:9000x/a", "legacy", true, CLIENT, LEAK, NULL},
    {"http://legacy.internal:-1/x", "web", true, CLIENT, LEAK, NULL},
    {"http://8.8.8.8:99999/a", "legacy", true, CLIENT, KEPT, NULL},
    /* Not a URL a client could follow: passed through, not judged. */
    {"http://[fd00::5:8080/x", "v6", true, CLIENT, KEPT, NULL},
    {"http://", "legacy", true, CLIENT, KEPT, NULL},
    {"//", "legacy", true, CLIENT, KEPT, NULL},

    /* A relay to the request's own destination (forward, transparent): nothing
     * to rewrite, and the client chose that destination, internal or not; a
     * configured upstream's name is still a leak. */
    {"http://10.0.0.5/login", NULL, true, CLIENT, KEPT, NULL},
    {"http://localhost:3000/", NULL, true, CLIENT, KEPT, NULL},
    {"http://127.0.0.1:9000/a", NULL, true, CLIENT, LEAK, NULL},
    {"http://legacy.internal/", NULL, true, CLIENT, LEAK, NULL},
    {"http://203.0.113.9/", NULL, true, CLIENT, KEPT, NULL},
};

static const char *result_name(dt_location_result r)
{
    return r == RW ? "rewritten" : r == LEAK ? "leak" : "kept";
}

static void test_location_table(void **state)
{
    int failed = 0;

    for (size_t i = 0; i < DT_ARRAY_LEN(loc_cases); i++) {
        const loc_case *c = &loc_cases[i];
        char out[512];
        size_t out_len = 12345;
        memset(out, '#', sizeof out);
        dt_location_result got =
            dt_rewrite_location(S(c->location), up(c->upstream), c->enabled, g_cfg, S(c->scheme),
                                S(c->authority), out, sizeof out, &out_len);
        bool ok = got == c->want;
        if (ok && got == RW)
            ok = strcmp(out, c->want_out) == 0 && out_len == strlen(c->want_out);
        if (ok && got != RW)
            ok = out_len == 12345; /* untouched */
        if (!ok) {
            printf("\"%s\" via %s (enabled=%d, client %s://%s): got %s%s%s, want %s %s\n",
                   c->location, c->upstream ? c->upstream : "-", c->enabled, c->scheme,
                   c->authority, result_name(got), got == RW ? " " : "", got == RW ? out : "",
                   result_name(c->want), c->want_out ? c->want_out : "");
            failed++;
        }
    }
    assert_int_equal(failed, 0);
}

/* Without a config only the upstream itself and internal addresses are leaks. */
static void test_location_without_config(void **state)
{
    char out[64];
    size_t n = 0;

    assert_int_equal(dt_rewrite_location(S("http://10.0.0.1/"), up("web"), true, NULL, S("http"),
                                         S("h"), out, sizeof out, &n),
                     LEAK);
    assert_int_equal(dt_rewrite_location(S("http://10.0.0.1/"), NULL, true, NULL, S("http"), S("h"),
                                         out, sizeof out, &n),
                     KEPT);
    assert_int_equal(dt_rewrite_location(S("http://127.0.0.1:9000/"), up("web"), true, NULL,
                                         S("http"), S("h"), out, sizeof out, &n),
                     LEAK);
    assert_int_equal(dt_rewrite_location(S("http://legacy.internal:81/"), up("legacy"), true, NULL,
                                         S("http"), S("h"), out, sizeof out, &n),
                     KEPT);
    /* The upstream itself still counts when the rewrite is off. */
    assert_int_equal(dt_rewrite_location(S("http://legacy.internal/"), up("web"), false, NULL,
                                         S("http"), S("h"), out, sizeof out, &n),
                     LEAK);
}

/* A rewrite that does not fit keeps the original (and so counts as a leak). */
static void test_location_buffer(void **state)
{
    const char *loc = "http://127.0.0.1:9000/abc";
    const char *want = "http://shop.example:8080/abc";
    char out[64];
    size_t n = 0, need = strlen(want);

    assert_int_equal(dt_rewrite_location(S(loc), up("legacy"), true, g_cfg, S("http"),
                                         S("shop.example:8080"), out, need + 1, &n),
                     RW);
    assert_string_equal(out, want);
    assert_int_equal(n, need);

    memset(out, '#', sizeof out);
    n = 777;
    assert_int_equal(dt_rewrite_location(S(loc), up("legacy"), true, g_cfg, S("http"),
                                         S("shop.example:8080"), out, need, &n),
                     LEAK);
    assert_int_equal(n, 777);
    assert_int_equal(out[0], '#');
}

/* Location values are byte ranges, not C strings: nothing past N is read. */
static void test_location_not_terminated(void **state)
{
    const char buf[] = "http://127.0.0.1:9000/a/b/c-and-more";
    char out[128];
    size_t n = 0;

    assert_int_equal(dt_rewrite_location((dt_str){buf, 27}, up("legacy"), true, g_cfg, S("http"),
                                         S("h:1"), out, sizeof out, &n),
                     RW);
    assert_string_equal(out, "http://h:1/a/b/c");
    assert_int_equal(dt_rewrite_location((dt_str){buf, 15}, up("legacy"), true, g_cfg, S("http"),
                                         S("h:1"), out, sizeof out, &n),
                     LEAK); /* "http://127.0.0" is still internal (inet_aton) */
}

typedef struct host_case {
    const char *host;
    bool internal;
} host_case;

static const host_case host_cases[] = {
    {"127.0.0.1", true},
    {"127.255.255.254", true},
    {"10.0.0.1", true},
    {"10.255.255.255", true},
    {"172.16.0.0", true},
    {"172.15.255.255", false},
    {"172.31.0.1", true},
    {"172.32.0.1", false},
    {"192.168.0.1", true},
    {"192.169.0.1", false},
    {"169.254.1.1", true},
    {"169.255.1.1", false},
    {"100.64.0.0", true},
    {"100.127.255.255", true},
    {"100.63.255.255", false},
    {"100.128.0.0", false},
    {"0.0.0.0", true},
    {"8.8.8.8", false},
    {"127.1", true},
    {"2130706433", true},
    {"0x7f.1", true},
    {"127.0.0.1.", true},
    {"1.2.3.4.5", false},
    {"999.1.1.1", false},
    {"::1", true},
    {"[::1]", true},
    {"::", true},
    {"::2", false},
    {"fc00::1", true},
    {"fdff:ffff::1", true},
    {"fe80::1", true},
    {"febf::1", true},
    {"fec0::1", false},
    {"fe80::1%eth0", true},
    {"[fe80::1%25eth0]", true},
    {"::ffff:10.0.0.1", true},
    {"::ffff:127.0.0.1", true},
    {"::ffff:8.8.8.8", false},
    {"2001:db8::1", false},
    {"localhost", true},
    {"LocalHost", true},
    {"localhost.", true},
    {"a.b.localhost", true},
    {"localhost.example", false},
    {"notlocalhost", false},
    {"example.com", false},
    {"", false},
    {"[]", false},
    {"10.0.0.1.example", false},
    {"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", false},
};

static void test_host_is_internal(void **state)
{
    int failed = 0;
    for (size_t i = 0; i < DT_ARRAY_LEN(host_cases); i++)
        if (dt_host_is_internal(S(host_cases[i].host)) != host_cases[i].internal) {
            printf("\"%s\": want %s\n", host_cases[i].host,
                   host_cases[i].internal ? "internal" : "not internal");
            failed++;
        }
    assert_int_equal(failed, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_status_table),
        cmocka_unit_test(test_status_sweep),
        cmocka_unit_test(test_route_over_global),
        cmocka_unit_test(test_location_table),
        cmocka_unit_test(test_location_without_config),
        cmocka_unit_test(test_location_buffer),
        cmocka_unit_test(test_location_not_terminated),
        cmocka_unit_test(test_host_is_internal),
    };
    return cmocka_run_group_tests(tests, load_cfg, unload_cfg);
}
