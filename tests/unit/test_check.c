/*
 * test_check.c - `detour -t` (shadowed routes, redirect chains and loops,
 * golden cases) and `detour --explain`, on the configs in tests/data/check/
 * and tests/data/rules/. Output is compared line for line.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include <cmocka.h>

#include "detour/check.h"
#include "detour/rules.h"

static char dir[512];

static dt_config *load(const char *sub, const char *name)
{
    const char *src = getenv("DETOUR_SOURCE_DIR");
    char path[1024], err[512];
    snprintf(dir, sizeof(dir), "%s/tests/data/%s/", src && *src ? src : ".", sub);
    snprintf(path, sizeof(path), "%s%s", dir, name);
    dt_config *cfg = NULL;
    if (dt_config_load(path, &cfg, err, sizeof(err)) != DT_OK)
        fail_msg("%s", err);
    return cfg;
}

/* Everything FN printed, with the config directory cut out of file names. */
typedef struct capture {
    char *buf;
    size_t len;
    FILE *f;
} capture;

static FILE *capture_start(capture *c)
{
    c->f = open_memstream(&c->buf, &c->len);
    assert_non_null(c->f);
    return c->f;
}

static char *capture_end(capture *c)
{
    fclose(c->f);
    size_t dl = strlen(dir);
    char *w = c->buf;
    for (const char *r = c->buf; *r;) {
        if (strncmp(r, dir, dl) == 0) {
            r += dl;
            continue;
        }
        *w++ = *r++;
    }
    *w = '\0';
    return c->buf;
}

static void check_output(const char *sub, const char *name, int want_errors, const char *want)
{
    dt_config *cfg = load(sub, name);
    capture c;
    int errors = dt_check_config(cfg, capture_start(&c));
    char *got = capture_end(&c);
    if (strcmp(got, want) != 0)
        fail_msg("%s: got\n%s\nwant\n%s", name, got, want);
    assert_int_equal(errors, want_errors);
    free(c.buf);
    dt_config_unref(cfg);
}

static void test_shadowed_routes(void **state)
{
    check_output(
        "check", "shadow.cfg", 0,
        "shadow.cfg:10: warning: route \"api-users\" can never match: route \"api\" (line 6) "
        "always matches first\n"
        "shadow.cfg:14: warning: route \"api-regex\" can never match: route \"api\" (line 6) "
        "always matches first\n"
        "shadow.cfg:26: warning: route \"sub\" can never match: route \"wild\" (line 22) always "
        "matches first\n"
        "shadow.cfg:38: warning: route \"heads\" can never match: route \"reads\" (line 34) "
        "always matches first\n"
        "shadow.cfg:58: warning: route \"r42\" can never match: route \"digits\" (line 54) "
        "always matches first\n");
}

static void test_redirect_chains(void **state)
{
    check_output("check", "chains.cfg", 0,
                 "chains.cfg:6: warning: route \"one\" redirects to /two, which route \"two\" "
                 "(line 10) redirects again (chain)\n"
                 "chains.cfg:14: warning: route \"ping\" redirects to /pong, which route \"pong\" "
                 "(line 18) redirects again (loop)\n"
                 "chains.cfg:18: warning: route \"pong\" redirects to /ping, which route \"ping\" "
                 "(line 14) redirects again (loop)\n"
                 "chains.cfg:22: warning: route \"self\" redirects to /self/x, which route "
                 "\"self\" (line 22) redirects again (loop)\n"
                 "chains.cfg:30: warning: route \"abs-ours\" redirects to "
                 "https://shop.example/two, which route \"two\" (line 10) redirects again "
                 "(chain)\n"
                 "chains.cfg:46: warning: route \"bulk\" redirects to /m2, which route \"bulk\" "
                 "(line 46) redirects again (chain)\n"
                 "chains.cfg:46: warning: route \"bulk\" redirects to /one, which route \"one\" "
                 "(line 6) redirects again (chain)\n");
}

static void test_switched_off_routes_still_linted(void **state)
{
    /* The flag file does not exist today; the loop is there the day it does. */
    check_output("check", "maintenance-loop.cfg", 0,
                 "maintenance-loop.cfg:6: warning: route \"maintenance\" redirects to "
                 "/maintenance.html, which route \"maintenance\" (line 6) redirects again "
                 "(loop)\n");
    check_output("check", "clean.cfg", 0, "");
}

static void test_expect_cases(void **state)
{
    check_output("check", "expects.cfg", 3,
                 "expects.cfg:18: error: expected \"307 /new/b\", got \"307 /new/a\"\n"
                 "expects.cfg:19: error: expected \"404\", got \"relay legacy\"\n"
                 "expects.cfg:21: error: bad expect \"GET /relative -> relay legacy\": "
                 "\"/relative\" is not an absolute http(s) URL\n");
}

static void expect_parse_error(const dt_config *cfg, const char *text, const char *needle)
{
    char got[256];
    int rc = dt_check_expect(cfg, text, got, sizeof(got));
    if (rc != DT_EINVAL || !strstr(got, needle))
        fail_msg("\"%s\": rc %d, \"%s\" (want \"%s\")", text, rc, got, needle);
}

static void test_expect_syntax(void **state)
{
    dt_config *cfg = load("rules", "basic.cfg");
    char got[256];
    assert_int_equal(dt_check_expect(cfg, "GET http://a/x   ->   relay   legacy  ", got, 256), 1);
    assert_int_equal(dt_check_expect(cfg, "GET http://a/x?a->b -> relay legacy", got, 256), 1);
    assert_int_equal(dt_check_expect(cfg, "GET http://a/x -> relay", got, sizeof(got)), 0);
    assert_string_equal(got, "relay legacy");
    expect_parse_error(cfg, "GET http://a/x", "no \" -> \"");
    expect_parse_error(cfg, "GET http://a/x -> 200 /x", "not \"200\"");
    expect_parse_error(cfg, "GET http://a/x -> 307", "needs a Location");
    expect_parse_error(cfg, "GET http://a/x -> 404 /x", "after 404");
    expect_parse_error(cfg, "GET http://a/x -> relay a b", "unexpected \"b\"");
    expect_parse_error(cfg, "GET -> relay", "METHOD URL");
    expect_parse_error(cfg, "GET ftp://a/x -> relay", "absolute");
    expect_parse_error(cfg, "GET http://a/x at=yesterday -> relay", "bad time");
    expect_parse_error(cfg, "GET http://a/x at=2026-01-01T00:00:00 -> relay", "bad time");
    expect_parse_error(cfg, "GET http://a/x colour=red -> relay", "unknown token");
    dt_config_unref(cfg);
}

static char *explain(const char *sub, const char *name, const char *request, int want_rc)
{
    dt_config *cfg = load(sub, name);
    capture c;
    assert_int_equal(dt_explain(cfg, request, capture_start(&c)), want_rc);
    dt_config_unref(cfg);
    return capture_end(&c);
}

/* Every line of WANT appears in GOT, in order. */
static void assert_lines_in_order(const char *got, const char *want)
{
    const char *at = got;
    char line[512];
    for (const char *w = want; *w;) {
        size_t n = strcspn(w, "\n");
        snprintf(line, sizeof(line), "%.*s\n", (int)n, w);
        const char *hit = strstr(at, line);
        if (!hit)
            fail_msg("missing \"%.*s\" in:\n%s", (int)n, w, got);
        at = hit + strlen(line);
        w += n + (w[n] == '\n');
    }
}

static void test_explain(void **state)
{
    char *out =
        explain("rules", "basic.cfg", "GET http://shop.example/api/v1/x client=10.0.0.1", 0);
    assert_lines_in_order(out, "request: GET http://shop.example/api/v1/x client=10.0.0.1\n"
                               "  route \"v1-to-v2\" (line 11): client not in 25% (sticky "
                               "client_ip = \"10.0.0.1\", bucket 7743 of 10000)\n"
                               "  route \"legacy\" (line 15): matched\n"
                               "answer: relay to upstream legacy (http://127.0.0.1:9000)\n");
    free(out);
    out = explain("rules", "basic.cfg", "POST http://shop.example/checkout/pay?x=1", 0);
    assert_lines_in_order(out, "  route \"checkout-maintenance\" (line 7): matched\n"
                               "answer: 307 Location: https://maint.example/checkout/pay?x=1\n");
    free(out);
    out = explain("rules", "activation.cfg",
                  "GET http://x.example/dry/real/a client=10.0.0.4 when_file=present", 0);
    assert_lines_in_order(out, "  route \"shadow-v2\" (line 53): dry run: would redirect (307) "
                               "to /v2/dry/real/a; matching goes on\n"
                               "  route \"after-dry\" (line 61): matched\n"
                               "answer: 307 Location: /real/a\n");
    free(out);
    out = explain("rules", "activation.cfg", "GET http://x.example/shop/a when_file=present", 0);
    assert_lines_in_order(out, "answer: 302 Location: /maintenance.html\n"
                               "        Retry-After: 120\n");
    free(out);
    out = explain("rules", "activation.cfg", "GET http://x.example/sale/a at=2026-11-20T00:00:00Z",
                  0);
    assert_lines_in_order(out, "  client 127.0.0.1, at 2026-11-20T00:00:00Z\n"
                               "  route \"window\" (line 6): window not open yet (from "
                               "2026-11-27T00:00:00Z)\n");
    free(out);
}

static void test_explain_no_route(void **state)
{
    char *out = explain("rules", "forward.cfg", "GET http://nowhere.example/", 0);
    assert_lines_in_order(out, "  (no route could match this request)\n"
                               "answer: relay to the request's own destination\n");
    free(out);
    out = explain("check", "shadow.cfg", "GET http://x.example/nothing/here", 0);
    assert_lines_in_order(out, "answer: 404 no route\n");
    free(out);
    out = explain("rules", "inject.cfg", "GET /relative", DT_EINVAL);
    assert_lines_in_order(out, "cannot explain \"GET /relative\": \"/relative\" is not an "
                               "absolute http(s) URL\n");
    free(out);
    out = explain("rules", "inject.cfg", "", DT_EINVAL);
    free(out);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_shadowed_routes),
        cmocka_unit_test(test_redirect_chains),
        cmocka_unit_test(test_switched_off_routes_still_linted),
        cmocka_unit_test(test_expect_cases),
        cmocka_unit_test(test_expect_syntax),
        cmocka_unit_test(test_explain),
        cmocka_unit_test(test_explain_no_route),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
