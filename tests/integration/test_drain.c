/*
 * test_drain.c - graceful stop. With requests in flight (a slow origin, a
 * slow upload, a slow response body) SIGTERM must: close the listeners (new
 * connections refused), close idle keep-alive connections, answer 503 on
 * /healthz, let the requests in flight finish intact, then exit 0 without
 * waiting for the deadline. A request slower than timeouts.drain_ms is cut
 * at the deadline and the exit status is still 0. SIGINT drains as well.
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
#include <strings.h>
#include <unistd.h>

#include <cmocka.h>

#include "harness.h"
#include "ops_util.h"

#define UPLOAD_BYTES (200 * 1024)
#define UPLOAD_STEPS 20
#define UPLOAD_GAP_MS 75 /* 20 pieces: ~1.5 s */
#define SLOWBODY_BYTES 100000

static th_env *env_of(void **state)
{
    return *state;
}

/* One request on its own thread, so that the test can signal detour meanwhile. */
typedef struct flight {
    th_req rq;
    char url[256];
    th_resp rs;
    int64_t ended_ms;
    atomic_int *ended; /* shared count of finished flights */
    pthread_t thread;
} flight;

/* The slow upload: a pattern body in pieces, UPLOAD_GAP_MS apart. */
typedef struct trickle {
    uint64_t off;
} trickle;

static size_t trickle_gen(void *ctx, char *buf, size_t cap)
{
    trickle *t = ctx;
    size_t step = UPLOAD_BYTES / UPLOAD_STEPS;
    size_t k = UPLOAD_BYTES - t->off < step ? (size_t)(UPLOAD_BYTES - t->off) : step;
    k = k < cap ? k : cap;
    if (t->off > 0 && k > 0)
        th_sleep_ms(UPLOAD_GAP_MS);
    th_pattern_fill(t->off, (unsigned char *)buf, k);
    t->off += k;
    return k;
}

static void *flight_main(void *arg)
{
    flight *f = arg;
    th_http(&f->rq, &f->rs);
    f->ended_ms = th_now_ms();
    atomic_fetch_add(f->ended, 1);
    return NULL;
}

static void flight_start(flight *f, th_env *e, const char *path, atomic_int *ended)
{
    memset(&f->rs, 0, sizeof(f->rs));
    snprintf(f->url, sizeof(f->url), "%s%s", e->url, path);
    f->rq.url = f->url;
    f->rq.keep_body = true;
    f->rq.timeout_ms = 15000;
    f->ended = ended;
    assert_int_equal(pthread_create(&f->thread, NULL, flight_main, f), 0);
}

static int start_detour(th_env *e, int drain_ms)
{
    int avoid[] = {e->port, e->origin_port};
    int admin = ops_free_port_not(avoid, 2);
    assert_true(admin > 0);
    assert_int_equal(th_detour_start(e,
                                     "listen = \"127.0.0.1:%d\";\n"
                                     "admin = \"127.0.0.1:%d\";\n"
                                     "workers = 2;\n"
                                     "access_log = \"off\";\n"
                                     "timeouts = { drain_ms = %d; idle_ms = 60000; };\n"
                                     "upstreams = { o = { url = \"http://127.0.0.1:%d\"; }; };\n"
                                     "routes = ( { name = \"all\"; match = { prefix = \"/\"; };\n"
                                     "             relay = { upstream = \"o\"; }; } );\n",
                                     e->port, admin, drain_ms, e->origin_port),
                     0);
    assert_int_equal(th_proc_wait_port(&e->detour, admin, 5000), 0);
    return admin;
}

/* A keep-alive connection that has had one answer and now sits idle. */
static int idle_connection(th_env *e)
{
    th_raw_resp r;
    int fd = th_connect(e->port, 2000);
    assert_true(fd >= 0);
    assert_int_equal(th_send_str(fd, "GET /echo/idle HTTP/1.1\r\nHost: t\r\n\r\n", 2000), 0);
    assert_int_equal(th_recv_response(fd, false, &r, 5000), 0);
    assert_int_equal(r.status, 200);
    assert_true(r.complete && !r.closed);
    th_raw_resp_free(&r);
    return fd;
}

/* Wait until detour holds at least N client connections. */
static void wait_connections(int admin, int n)
{
    double v = ops_wait_metric(admin, "detour_active_connections", n, 5000);
    if (v < n)
        fail_msg("detour_active_connections = %g, expected %d requests in flight", v, n);
}

static void expect_healthz_503(int admin)
{
    th_resp rs;
    int64_t deadline = th_now_ms() + 2000;
    for (;;) {
        ops_get(admin, "/healthz", &rs);
        if (rs.status == 503 || th_now_ms() >= deadline)
            break;
        th_resp_free(&rs);
        th_sleep_ms(10);
    }
    if (rs.status != 503)
        fail_msg("/healthz answered %ld while draining (%s)", rs.status,
                 rs.rc == CURLE_OK ? "ok" : rs.err);
    th_resp_free(&rs);
}

static void expect_refused(int port)
{
    int64_t deadline = th_now_ms() + 2000;
    int fd;
    while ((fd = th_connect(port, 200)) >= 0 && th_now_ms() < deadline) {
        close(fd);
        th_sleep_ms(10);
    }
    if (fd >= 0) {
        close(fd);
        fail_msg("port %d still accepts connections 2 s into the drain", port);
    }
}

/* HEAD_IN_DRAIN: the response head was made after SIGTERM, so it can say so. */
static void expect_ok(const flight *f, const char *what, bool head_in_drain)
{
    if (f->rs.rc != CURLE_OK || f->rs.status != 200)
        fail_msg("%s: status %ld (%s), expected 200 after the drain", what, f->rs.status,
                 f->rs.rc == CURLE_OK ? "ok" : f->rs.err);
    if (!head_in_drain)
        return;
    /* The connection is not kept for another request: detour is going away. */
    const char *conn = th_resp_hdr(&f->rs, "Connection");
    if (conn == NULL || strcasecmp(conn, "close") != 0)
        fail_msg("%s: answered during the drain with Connection: %s, expected close", what,
                 conn ? conn : "(none)");
    /* Adding Connection: close must not make libmicrohttpd add a Date of its own. */
    if (th_resp_hdr_count(&f->rs, "Date") != 1)
        fail_msg("%s: %zu Date headers, expected 1", what, th_resp_hdr_count(&f->rs, "Date"));
}

static void test_drain_finishes_in_flight(void **state)
{
    th_env *e = env_of(state);
    atomic_int ended = 0;
    flight slow = {0}, upload = {0}, body = {0};
    trickle src = {0};
    char want_upload[65], want_body[65], path[64];
    int admin = start_detour(e, 8000);

    int idle = idle_connection(e);
    flight_start(&slow, e, "/slow?ms=1500", &ended);
    upload.rq.method = "POST";
    upload.rq.gen = trickle_gen;
    upload.rq.gen_ctx = &src;
    upload.rq.upload_len = UPLOAD_BYTES;
    flight_start(&upload, e, "/echo/drain-upload", &ended);
    snprintf(path, sizeof(path), "/slowbody?ms=1500&n=%d", SLOWBODY_BYTES);
    flight_start(&body, e, path, &ended);
    wait_connections(admin, 4);
    th_sleep_ms(200); /* the upload is streaming, the origin is sleeping */
    assert_int_equal(atomic_load(&ended), 0);

    int64_t t_term = th_now_ms();
    assert_int_equal(kill(e->detour.pid, SIGTERM), 0);
    expect_healthz_503(admin);
    expect_refused(e->port);
    if (!th_wait_closed(idle, 1000))
        fail_msg("the idle keep-alive connection is still open 1 s into the drain");
    close(idle);
    /* All of the above happened while the three requests were still running. */
    assert_int_equal(atomic_load(&ended), 0);

    pthread_join(slow.thread, NULL);
    pthread_join(upload.thread, NULL);
    pthread_join(body.thread, NULL);
    expect_ok(&slow, "GET /slow?ms=1500", true);
    th_assert_contains(slow.rs.body, "slept 1500 ms");
    expect_ok(&upload, "slow POST upload", true);
    th_pattern_sha256(UPLOAD_BYTES, want_upload);
    assert_string_equal(th_resp_hdr(&upload.rs, "X-Body-Sha256"), want_upload);
    expect_ok(&body, "GET /slowbody", false); /* its head went out at once */
    th_pattern_sha256(SLOWBODY_BYTES, want_body);
    assert_int_equal(body.rs.body_total, SLOWBODY_BYTES);
    assert_string_equal(body.rs.sha, want_body);

    /* Exit 0 once the last request is done, long before the 8 s deadline. */
    assert_int_equal(ops_wait_exit(&e->detour, 5000), 0);
    int64_t exit_ms = th_now_ms() - t_term;
    print_message("detour exited %lld ms after SIGTERM\n", (long long)exit_ms);
    assert_true(exit_ms < 4000);
    th_resp_free(&slow.rs);
    th_resp_free(&upload.rs);
    th_resp_free(&body.rs);
}

/* Cut, not answered: the origin would have needed 6 s. */
static void expect_cut(const flight *f, int64_t t_term, const char *what)
{
    print_message("%s ended %lld ms after SIGTERM: status %ld, %s\n", what,
                  (long long)(f->ended_ms - t_term), f->rs.status,
                  f->rs.rc == CURLE_OK ? "ok" : f->rs.err);
    if (f->rs.rc == CURLE_OK && f->rs.status == 200)
        fail_msg("%s completed although it needed 6 s and drain_ms is 500", what);
    assert_true(f->ended_ms - t_term < 3000);
}

/*
 * Past timeouts.drain_ms the requests still running are cut: one waiting
 * for the origin's head, one whose head went out and whose body is late.
 */
static void test_drain_deadline_cuts_slow_request(void **state)
{
    th_env *e = env_of(state);
    atomic_int ended = 0;
    flight head = {0}, body = {0};
    int admin = start_detour(e, 500);

    flight_start(&head, e, "/slow?ms=6000", &ended);
    flight_start(&body, e, "/slowbody?ms=6000&n=1000", &ended);
    wait_connections(admin, 2);
    th_sleep_ms(200);
    int64_t t_term = th_now_ms();
    assert_int_equal(kill(e->detour.pid, SIGTERM), 0);
    int rc = ops_wait_exit(&e->detour, 4000);
    int64_t exit_ms = th_now_ms() - t_term;
    pthread_join(head.thread, NULL);
    pthread_join(body.thread, NULL);
    print_message("detour exited with %d %lld ms after SIGTERM (drain_ms = 500)\n", rc,
                  (long long)exit_ms);
    expect_cut(&head, t_term, "GET /slow?ms=6000");
    expect_cut(&body, t_term, "GET /slowbody?ms=6000");
    th_resp_free(&head.rs);
    th_resp_free(&body.rs);
    assert_int_equal(rc, 0);
    assert_true(exit_ms >= 400 && exit_ms < 2500);
}

static void test_sigint_drains_too(void **state)
{
    th_env *e = env_of(state);
    atomic_int ended = 0;
    flight slow = {0};
    int admin = start_detour(e, 5000);

    flight_start(&slow, e, "/slow?ms=800", &ended);
    wait_connections(admin, 1);
    th_sleep_ms(100);
    assert_int_equal(kill(e->detour.pid, SIGINT), 0);
    expect_refused(e->port);
    pthread_join(slow.thread, NULL);
    expect_ok(&slow, "GET /slow?ms=800", true);
    assert_int_equal(ops_wait_exit(&e->detour, 5000), 0);
    th_resp_free(&slow.rs);
}

int main(void)
{
#define T(f) cmocka_unit_test_setup_teardown(f, th_it_setup, th_it_teardown)
    const struct CMUnitTest tests[] = {
        T(test_drain_finishes_in_flight),
        T(test_drain_deadline_cuts_slow_request),
        T(test_sigint_drains_too),
    };
#undef T
    return cmocka_run_group_tests(tests, NULL, NULL);
}
