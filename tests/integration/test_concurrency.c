/*
 * test_concurrency.c - many requests: 1,000 sequential keep-alive requests
 * on one client connection, 500 concurrent connections (curl multi), every
 * answer checked against the request that caused it; and a flood of
 * pipelined redirects that must leave room for everything else the worker
 * does (new connections, relays, reloads).
 */
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "harness.h"
#include "ops_util.h"

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

/* ---- a redirect flood leaves room ------------------------------------------ */

/*
 * While libmicrohttpd alone has plenty of work, the worker asks it for more
 * without polling its own epoll set (mhd_again in worker.c). These tests
 * keep one worker that busy with pipelined redirects on several
 * connections and check that what only the worker's own set announces
 * still happens promptly: a new connection is accepted, a relay finds its
 * upstream, a SIGHUP reload takes effect.
 */
#define FLOOD_CONNS 8
#define FLOOD_BATCH 64
#define FLOOD_REQ "HEAD /flood/x HTTP/1.1\r\nHost: t\r\n\r\n"
#define PROMPT_MS 1000 /* a generous bound: the worker's own bound is 1 ms */

typedef struct flood {
    int port;
    atomic_bool *stop;
    atomic_long answers;
    char err[160]; /* set once, before the thread ends */
} flood;

/* One connection's flood: batches of FLOOD_BATCH pipelined HEADs, each
 * batch read whole (all answers are the same length) before the next. */
static void *flood_main(void *arg)
{
    flood *f = arg;
    char *batch = NULL;
    size_t one = 0, req_len = strlen(FLOOD_REQ);
    int fd = th_connect(f->port, 2000);
    th_raw_resp first = {0}; /* th_recv_response allocates even when it fails */

    if (fd < 0 || th_send_str(fd, FLOOD_REQ, 2000) != 0 ||
        th_recv_response(fd, true, &first, 2000) != 0) {
        snprintf(f->err, sizeof(f->err), "no first answer");
        th_raw_resp_free(&first);
        goto out;
    }
    one = strlen(first.head);
    if (first.status != 307)
        snprintf(f->err, sizeof(f->err), "first answer %d", first.status);
    th_raw_resp_free(&first);
    batch = malloc(req_len * FLOOD_BATCH);
    if (batch == NULL || f->err[0] != '\0')
        goto out;
    for (int k = 0; k < FLOOD_BATCH; k++)
        memcpy(batch + (size_t)k * req_len, FLOOD_REQ, req_len);
    while (!atomic_load(f->stop)) {
        th_raw got;
        if (th_send_all(fd, batch, req_len * FLOOD_BATCH, 5000) != 0 ||
            th_recv_all(fd, &got, one * FLOOD_BATCH, 5000) != 0) {
            snprintf(f->err, sizeof(f->err), "batch failed");
            break;
        }
        for (int k = 0; k < FLOOD_BATCH && f->err[0] == '\0'; k++)
            if (got.len != one * FLOOD_BATCH ||
                th_parse_status(got.data + (size_t)k * one, one) != 307)
                snprintf(f->err, sizeof(f->err), "answer %d of a batch: %zu of %zu bytes", k,
                         got.len, one * FLOOD_BATCH);
        th_raw_free(&got);
        if (f->err[0] != '\0')
            break;
        atomic_fetch_add(&f->answers, FLOOD_BATCH);
    }
out:
    free(batch);
    if (fd >= 0)
        close(fd);
    return NULL;
}

static long flood_answers(flood *fs)
{
    long n = 0;
    for (int i = 0; i < FLOOD_CONNS; i++)
        n += atomic_load(&fs[i].answers);
    return n;
}

static void write_flood_config(th_env *e, const char *probe_to)
{
    assert_int_equal(
        th_write_file(e->cfg_path,
                      "listen = \"127.0.0.1:%d\";\n"
                      "workers = 1;\n"
                      "access_log = \"off\";\n"
                      "timeouts = { drain_ms = 3000; };\n"
                      "upstreams = { o = { url = \"http://127.0.0.1:%d\"; }; };\n"
                      "routes = (\n"
                      "  { name = \"flood\"; match = { prefix = \"/flood/\"; };\n"
                      "    redirect = { to = \"http://new.example$request_uri\"; }; },\n"
                      "  { name = \"probe\"; match = { prefix = \"/probe/\"; };\n"
                      "    redirect = { to = \"%s\"; }; },\n"
                      "  { name = \"origin\"; match = { prefix = \"/\"; };\n"
                      "    relay = { upstream = \"o\"; }; }\n"
                      ");\n",
                      e->port, e->origin_port, probe_to),
        0);
}

/*
 * A new connection's redirect for /probe/: its Location into LOC; returns
 * the time taken in ms, or -1. No assertions: the flood threads must be
 * stopped before the test may fail.
 */
static int64_t probe(th_env *e, char *loc, size_t cap)
{
    int64_t t0 = th_now_ms(), took = -1;
    int fd = th_connect(e->port, 3000);
    th_raw_resp r = {0}; /* th_recv_response allocates even when it fails */

    loc[0] = '\0';
    if (fd < 0)
        return -1;
    if (th_send_str(fd, "GET /probe/p HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
                    3000) == 0 &&
        th_recv_response(fd, false, &r, 3000) == 0 && r.status == 307 &&
        th_head_header(r.head, "Location", loc, cap) != NULL)
        took = th_now_ms() - t0;
    th_raw_resp_free(&r);
    close(fd);
    return took;
}

static void test_redirect_flood_leaves_room(void **state)
{
    th_env *e = env_of(state);
    flood fs[FLOOD_CONNS];
    pthread_t th[FLOOD_CONNS];
    atomic_bool stop = false;
    char loc[256];
    int64_t worst = 0;

    write_flood_config(e, "http://a.example/");
    char *cfg = ops_read_file(e->cfg_path);
    assert_non_null(cfg);
    assert_int_equal(th_detour_start(e, "%s", cfg), 0);
    free(cfg);
    memset(fs, 0, sizeof(fs));
    for (int i = 0; i < FLOOD_CONNS; i++) {
        fs[i].port = e->port;
        fs[i].stop = &stop;
        if (pthread_create(&th[i], NULL, flood_main, &fs[i]) != 0) {
            atomic_store(&stop, true);
            while (i-- > 0)
                pthread_join(th[i], NULL);
            fail_msg("cannot start flood thread");
        }
    }
    /* The flood is on once every connection has had a batch answered. */
    for (int64_t end = th_now_ms() + 5000; th_now_ms() < end;) {
        bool all = true;
        for (int i = 0; i < FLOOD_CONNS; i++)
            all = all && atomic_load(&fs[i].answers) > 0;
        if (all)
            break;
        th_sleep_ms(5);
    }
    long before = flood_answers(fs);

    /* New connections are accepted and answered. */
    for (int i = 0; i < 20 && worst >= 0; i++) {
        int64_t took = probe(e, loc, sizeof(loc));
        worst = took < 0 || strcmp(loc, "http://a.example/") != 0 ? -1
                : took > worst                                   ? took
                                                                 : worst;
    }
    /* A relay gets through: its upstream socket lives in the worker's set. */
    char url[256];
    snprintf(url, sizeof(url), "%s/echo/during-flood", e->url);
    th_req rq = {.url = url, .keep_body = true, .timeout_ms = 3000};
    th_resp rs;
    int64_t t0 = th_now_ms();
    th_http(&rq, &rs);
    int64_t relay_ms = th_now_ms() - t0;
    bool relay_ok = rs.rc == CURLE_OK && rs.status == 200;
    th_resp_free(&rs);
    /* A reload is noticed: SIGHUP reaches the worker through its set. */
    write_flood_config(e, "http://b.example/");
    int sent = kill(e->detour.pid, SIGHUP);
    for (int64_t end = th_now_ms() + 5000; th_now_ms() < end;)
        if (probe(e, loc, sizeof(loc)) >= 0 && strcmp(loc, "http://b.example/") == 0)
            break;
    long during = flood_answers(fs) - before;

    atomic_store(&stop, true);
    for (int i = 0; i < FLOOD_CONNS; i++)
        pthread_join(th[i], NULL);
    for (int i = 0; i < FLOOD_CONNS; i++)
        if (fs[i].err[0] != '\0')
            fail_msg("flood connection %d: %s", i, fs[i].err);
    print_message("flood: %ld redirects while probing; slowest new connection %lld ms, "
                  "relay %lld ms\n",
                  during, (long long)worst, (long long)relay_ms);
    /* The flood really ran alongside: otherwise this tested nothing. */
    assert_true(during >= FLOOD_BATCH * FLOOD_CONNS);
    assert_true(worst >= 0 && worst < PROMPT_MS);
    assert_true(relay_ok && relay_ms < PROMPT_MS);
    assert_int_equal(sent, 0);
    assert_string_equal(loc, "http://b.example/");
}

int main(void)
{
#define T(f) cmocka_unit_test_setup_teardown(f, th_it_setup, th_it_teardown)
    const struct CMUnitTest tests[] = {
        T(test_sequential_keepalive),
        T(test_concurrent_connections),
        T(test_redirect_flood_leaves_room),
    };
#undef T
    return cmocka_run_group_tests(tests, NULL, NULL);
}
