/*
 * test_concurrency.c - many requests: 1,000 sequential keep-alive requests
 * on one client connection, and 500 concurrent connections (curl multi),
 * every answer checked against the request that caused it.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "harness.h"

#define SEQUENTIAL 1000
#define CONCURRENT 500
#define POST_BODY 10000

static th_env *env_of(void **state)
{
    return *state;
}

static void test_sequential_keepalive(void **state)
{
    th_env *e = env_of(state);
    CURL *easy = curl_easy_init();
    long connects = 0, first_port = -1;
    char url[256], target[64];
    assert_non_null(easy);
    assert_int_equal(th_detour_std(e, NULL, NULL), 0);
    for (int i = 0; i < SEQUENTIAL; i++) {
        snprintf(target, sizeof(target), "/echo/seq?i=%d", i);
        snprintf(url, sizeof(url), "%s%s", e->url, target);
        th_req rq = {.url = url, .easy = easy, .timeout_ms = 10000};
        th_resp rs;
        th_http(&rq, &rs);
        if (rs.rc != CURLE_OK || rs.status != 200)
            fail_msg("request %d: status %ld, %s", i, rs.status, rs.err);
        if (th_resp_hdr(&rs, "X-Origin-Target") == NULL ||
            strcmp(th_resp_hdr(&rs, "X-Origin-Target"), target) != 0)
            fail_msg("request %d: answer for %s", i, th_resp_hdr(&rs, "X-Origin-Target"));
        connects += rs.num_connects;
        if (first_port < 0)
            first_port = rs.local_port;
        if (rs.local_port != first_port)
            fail_msg("request %d went out from port %ld, the first from %ld", i, rs.local_port,
                     first_port);
        th_resp_free(&rs);
    }
    curl_easy_cleanup(easy);
    assert_int_equal(connects, 1);
}

/* Every fifth transfer is a POST with its own body, the rest wait at the origin. */
typedef struct conc {
    char url[256];
    char target[64];
    char *body;
    char want_sha[65];
} conc;

static void conc_prepare(th_env *e, conc *c, th_xfer *x, int i)
{
    bool post = i % 5 == 0;
    if (post) {
        snprintf(c->target, sizeof(c->target), "/echo/conc?id=%d", i);
        c->body = malloc(POST_BODY);
        assert_non_null(c->body);
        for (int k = 0; k < POST_BODY; k++)
            c->body[k] = (char)('a' + (i + k) % 26);
        th_sha256_hex(c->body, POST_BODY, c->want_sha);
    } else {
        snprintf(c->target, sizeof(c->target), "/slow?ms=300&id=%d", i);
    }
    snprintf(c->url, sizeof(c->url), "%s%s", e->url, c->target);
    th_req rq = {.method = post ? "POST" : NULL,
                 .url = c->url,
                 .body = c->body,
                 .body_len = post ? POST_BODY : 0,
                 .keep_body = true,
                 .timeout_ms = 60000};
    assert_int_equal(th_xfer_init(x, &rq), 0);
}

static void conc_check(const conc *c, const th_xfer *x, int i)
{
    char line[96];
    const th_resp *rs = &x->resp;
    if (rs->rc != CURLE_OK || rs->status != 200)
        fail_msg("transfer %d (%s): status %ld, %s", i, c->target, rs->status, rs->err);
    snprintf(line, sizeof(line), "target: %s\n", c->target);
    th_assert_contains(rs->body, line);
    if (c->body)
        assert_string_equal(th_resp_hdr(rs, "X-Body-Sha256"), c->want_sha);
}

static void test_concurrent_connections(void **state)
{
    th_env *e = env_of(state);
    conc *cs = calloc(CONCURRENT, sizeof(*cs));
    th_xfer *xs = calloc(CONCURRENT, sizeof(*xs));
    long connects = 0;
    assert_non_null(cs);
    assert_non_null(xs);
    assert_int_equal(th_detour_std(e, "upstream_ms = 60000;", NULL), 0);
    for (int i = 0; i < CONCURRENT; i++)
        conc_prepare(e, &cs[i], &xs[i], i);
    int64_t t0 = th_now_ms();
    size_t ok = th_multi_run(xs, CONCURRENT, 120000);
    print_message("%zu of %d concurrent transfers ok in %lld ms\n", ok, CONCURRENT,
                  (long long)(th_now_ms() - t0));
    for (int i = 0; i < CONCURRENT; i++) {
        conc_check(&cs[i], &xs[i], i);
        connects += xs[i].resp.num_connects;
    }
    /* Each transfer had a connection of its own: they really were concurrent. */
    assert_int_equal(connects, CONCURRENT);
    assert_int_equal(ok, CONCURRENT);
    for (int i = 0; i < CONCURRENT; i++) {
        th_xfer_cleanup(&xs[i]);
        th_resp_free(&xs[i].resp);
        free(cs[i].body);
    }
    free(xs);
    free(cs);
}

int main(void)
{
#define T(f) cmocka_unit_test_setup_teardown(f, th_it_setup, th_it_teardown)
    const struct CMUnitTest tests[] = {
        T(test_sequential_keepalive),
        T(test_concurrent_connections),
    };
#undef T
    return cmocka_run_group_tests(tests, NULL, NULL);
}
