/*
 * test_reload.c - SIGHUP under load. Client threads send a steady few
 * hundred requests a second (GETs, POSTs with bodies whose SHA-256 the
 * origin echoes, slow uploads that span reloads) while detour is reloaded
 * 20 times, alternating two configs that differ in their routes and in
 * via_name. Every answer must be exactly what one of the two configs
 * gives for that request: 0 failed or altered requests. Then the refusals:
 * a config with a semantic error and one with a syntax error are refused
 * with FILE:LINE in the log, counted as result="error", and the old rules
 * keep answering; a listen change is reported as needing a restart; a new
 * access_log path takes effect.
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

#define RELOADS 20
#define LOAD_THREADS 3
#define LOAD_PERIOD_MS 10   /* per thread: ~100 requests/s each */
#define FRESH_CONN_EVERY 16 /* a new connection now and then, so accepts happen too */
#define BODY_MAX 65536
#define SLOW_BODY 16000 /* sent in SLOW_STEPS pieces SLOW_GAP_MS apart: ~0.4 s each */
#define SLOW_STEPS 8
#define SLOW_GAP_MS 50
#define MAX_REPORTED 8

static const char OK_RELOAD[] = "detour_config_reloads_total{result=\"ok\"}";
static const char ERR_RELOAD[] = "detour_config_reloads_total{result=\"error\"}";

typedef struct reload_env {
    th_env *e;
    int admin_port;
    char access_log[TH_PATH_MAX]; /* "off" unless a test sets it */
} reload_env;

static th_env *env_of(void **state)
{
    return *state;
}

/*
 * Config 'a': "moved-a" redirects /echo/moved/..., everything else relays.
 * Config 'b': no redirect route, everything relays. Each names itself in
 * via_name, so every relayed answer says which snapshot served it. LISTEN
 * is the proxy port; TOP goes before the upstreams and ROUTE first in the
 * routes (both to break a config on purpose).
 */
static void config_text(char *out, size_t cap, const reload_env *r, char variant, int listen,
                        const char *top, const char *route)
{
    int n = snprintf(
        out, cap,
        "listen = \"127.0.0.1:%d\";\n"
        "admin = \"127.0.0.1:%d\";\n"
        "workers = 2;\n"
        "access_log = \"%s\";\n"
        "via_name = \"cfg-%c\";\n"
        "timeouts = { drain_ms = 3000; };\n"
        "%s"
        "upstreams = { o = { url = \"http://127.0.0.1:%d\"; }; };\n"
        "routes = (\n"
        "%s%s"
        "  { name = \"all-%c\"; match = { prefix = \"/\"; }; relay = { upstream = \"o\"; }; }\n"
        ");\n",
        listen, r->admin_port, r->access_log[0] ? r->access_log : "off", variant, top ? top : "",
        r->e->origin_port, route ? route : "",
        variant == 'a' ? "  { name = \"moved-a\"; match = { prefix = \"/echo/moved/\"; };\n"
                         "    redirect = { to = \"/echo/new/$suffix$is_args$args\"; }; },\n"
                       : "",
        variant);
    assert_true(n > 0 && (size_t)n < cap);
}

/* Replace the running config file (atomically, as an operator should). */
static int write_config(const char *path, const reload_env *r, char variant, int listen,
                        const char *top, const char *route)
{
    char text[4096];
    config_text(text, sizeof(text), r, variant, listen, top, route);
    return ops_write_atomic(path, "%s", text);
}

static void start_detour(th_env *e, reload_env *r)
{
    char text[4096];
    int avoid[] = {e->port, e->origin_port};
    r->e = e;
    r->access_log[0] = '\0';
    r->admin_port = ops_free_port_not(avoid, 2);
    assert_true(r->admin_port > 0);
    config_text(text, sizeof(text), r, 'a', e->port, NULL, NULL);
    assert_int_equal(th_detour_start(e, "%s", text), 0);
    /* The harness waited for the proxy port; the admin listener starts after it. */
    assert_int_equal(th_proc_wait_port(&e->detour, r->admin_port, 5000), 0);
}

/* ---- one request and what it must get ------------------------------------------- */

typedef enum req_kind { K_GET, K_POST, K_MOVED_GET, K_MOVED_POST, K_SLOW_POST } req_kind;

typedef struct answer {
    char variant;  /* 'a' or 'b': the config the answer belongs to; 0 unknown */
    char why[384]; /* empty when the answer is one of the two correct ones */
} answer;

static void bad(answer *an, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void bad(answer *an, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(an->why, sizeof(an->why), fmt, ap);
    va_end(ap);
}

/* The snapshot that relayed: response Via and the Via the origin saw must agree. */
static void check_via(const th_resp *rs, answer *an)
{
    char seen[64];
    const char *via = th_resp_hdr(rs, "Via");
    if (via == NULL || th_echo_header(rs->body, "Via", 0, seen, sizeof(seen)) == NULL) {
        bad(an, "relayed answer without Via (response %s)", via ? via : "-");
        return;
    }
    if (strcmp(via, seen) != 0)
        bad(an, "response Via \"%s\" but the origin saw \"%s\": two snapshots in one request", via,
            seen);
    else if (strcmp(via, "1.1 cfg-a") == 0 || strcmp(via, "1.1 cfg-b") == 0)
        an->variant = via[strlen(via) - 1];
    else
        bad(an, "Via \"%s\" names neither config", via);
}

static void check_relayed(const th_resp *rs, const char *target, const char *sha, answer *an)
{
    const char *t = th_resp_hdr(rs, "X-Origin-Target");
    const char *s = th_resp_hdr(rs, "X-Body-Sha256");
    if (rs->status != 200) {
        bad(an, "status %ld", rs->status);
        return;
    }
    if (t == NULL || strcmp(t, target) != 0) {
        bad(an, "answer for target %s", t ? t : "(none)");
        return;
    }
    if (sha != NULL && (s == NULL || strcmp(s, sha) != 0)) {
        bad(an, "body altered: origin saw sha %s", s ? s : "(none)");
        return;
    }
    check_via(rs, an);
}

/* /echo/moved/SUFFIX?q=N: config a answers 307 itself, config b relays. */
static void check_moved(const th_resp *rs, const char *target, const char *sha, answer *an)
{
    char want[256];
    const char *loc = th_resp_hdr(rs, "Location");
    if (rs->status != 307) {
        check_relayed(rs, target, sha, an);
        if (an->why[0] == '\0' && an->variant != 'b')
            bad(an, "relayed by config %c, which redirects this path", an->variant);
        return;
    }
    snprintf(want, sizeof(want), "/echo/new/%s", target + strlen("/echo/moved/"));
    if (loc == NULL || strcmp(loc, want) != 0)
        bad(an, "307 to %s, expected %s", loc ? loc : "(none)", want);
    else
        an->variant = 'a';
}

static void check_answer(req_kind k, const th_resp *rs, const char *target, const char *sha,
                         answer *an)
{
    memset(an, 0, sizeof(*an));
    if (rs->rc != CURLE_OK)
        bad(an, "transfer failed: %s", rs->err);
    else if (k == K_MOVED_GET || k == K_MOVED_POST)
        check_moved(rs, target, sha, an);
    else
        check_relayed(rs, target, sha, an);
}

/* ---- the load ------------------------------------------------------------------ */

typedef struct load {
    th_env *e;
    int id;
    atomic_bool *stop;
    long sent, failed, by_variant[2], moved_by_variant[2];
    char failures[MAX_REPORTED][1024];
    unsigned char *buf; /* BODY_MAX + 256 bytes this thread takes bodies from */
} load;

static void record(load *l, req_kind k, const char *target, const answer *an)
{
    l->sent++;
    if (an->why[0] != '\0') {
        if (l->failed < MAX_REPORTED)
            snprintf(l->failures[l->failed], sizeof(l->failures[0]), "thread %d, kind %d, %s: %s",
                     l->id, (int)k, target, an->why);
        l->failed++;
        return;
    }
    l->by_variant[an->variant == 'b']++;
    if (k == K_MOVED_GET || k == K_MOVED_POST)
        l->moved_by_variant[an->variant == 'b']++;
}

/* An upload that trickles: a reload lands while detour is still streaming it. */
typedef struct slow_src {
    uint64_t off;
} slow_src;

static size_t slow_gen(void *ctx, char *buf, size_t cap)
{
    slow_src *s = ctx;
    size_t step = SLOW_BODY / SLOW_STEPS;
    size_t k = SLOW_BODY - s->off < step ? (size_t)(SLOW_BODY - s->off) : step;
    k = k < cap ? k : cap;
    if (s->off > 0 && k > 0)
        th_sleep_ms(SLOW_GAP_MS);
    th_pattern_fill(s->off, (unsigned char *)buf, k);
    s->off += k;
    return k;
}

static void one_request(load *l, CURL *easy, req_kind k, long i)
{
    char target[128], url[256], sha[65];
    const char *paths[] = {"/echo/get/", "/echo/post/", "/echo/moved/", "/echo/moved/",
                           "/echo/slow/"};
    bool post = k == K_POST || k == K_MOVED_POST || k == K_SLOW_POST;
    size_t len = k == K_SLOW_POST ? SLOW_BODY : 1 + (size_t)(i * 7919) % BODY_MAX;
    const char *body = (const char *)l->buf + i % 251;
    slow_src src = {0};

    snprintf(target, sizeof(target), "%st%d-%ld?q=%ld", paths[k], l->id, i, i);
    snprintf(url, sizeof(url), "%s%s", l->e->url, target);
    if (k == K_SLOW_POST)
        th_pattern_sha256(SLOW_BODY, sha);
    else if (post)
        th_sha256_hex(body, len, sha);
    th_req rq = {.method = post ? "POST" : NULL,
                 .url = url,
                 .body = post && k != K_SLOW_POST ? body : NULL,
                 .body_len = post && k != K_SLOW_POST ? len : 0,
                 .gen = k == K_SLOW_POST ? slow_gen : NULL,
                 .gen_ctx = &src,
                 .upload_len = (int64_t)len,
                 .keep_body = true,
                 .timeout_ms = 10000,
                 .easy = easy};
    th_resp rs;
    answer an;
    th_http(&rq, &rs);
    check_answer(k, &rs, target, post ? sha : NULL, &an);
    record(l, k, target, &an);
    th_resp_free(&rs);
}

/* A steady pace: request I starts at T0 + I * LOAD_PERIOD_MS, whatever the last took. */
static void *load_main(void *arg)
{
    load *l = arg;
    CURL *easy = curl_easy_init();
    int64_t t0 = th_now_ms();
    for (long i = 0; easy != NULL && !atomic_load(l->stop); i++) {
        int64_t wait = t0 + i * LOAD_PERIOD_MS - th_now_ms();
        if (wait > 0)
            th_sleep_ms((int)wait);
        if (i % FRESH_CONN_EVERY == FRESH_CONN_EVERY - 1) {
            curl_easy_cleanup(easy);
            easy = curl_easy_init();
        }
        one_request(l, easy, (req_kind)(i % 4), i);
    }
    if (easy != NULL)
        curl_easy_cleanup(easy);
    return NULL;
}

/* Uploads slow enough that reloads happen while they are in flight. */
static void *slow_main(void *arg)
{
    load *l = arg;
    CURL *easy = curl_easy_init();
    for (long i = 0; easy != NULL && !atomic_load(l->stop); i++)
        one_request(l, easy, K_SLOW_POST, i);
    if (easy != NULL)
        curl_easy_cleanup(easy);
    return NULL;
}

static void load_init(load *l, th_env *e, int id, atomic_bool *stop)
{
    memset(l, 0, sizeof(*l));
    l->e = e;
    l->id = id;
    l->stop = stop;
    l->buf = malloc(BODY_MAX + 256);
    assert_non_null(l->buf);
    for (size_t k = 0; k < BODY_MAX + 256; k++)
        l->buf[k] = (unsigned char)((k * 131 + (size_t)id * 17 + (k >> 9)) & 0xff);
}

/* ---- reloading ------------------------------------------------------------------- */

/* Replace the config, SIGHUP, and wait until detour counted the reload. */
static void reload_to(th_env *e, reload_env *r, char variant, int n_ok)
{
    assert_int_equal(write_config(e->cfg_path, r, variant, e->port, NULL, NULL), 0);
    assert_int_equal(kill(e->detour.pid, SIGHUP), 0);
    double got = ops_wait_metric(r->admin_port, OK_RELOAD, n_ok, 5000);
    if (got != n_ok)
        fail_msg("after reload %d: %s = %g", n_ok, OK_RELOAD, got);
}

static void report(load *ls, size_t n, long *sent, long *failed)
{
    *sent = *failed = 0;
    for (size_t t = 0; t < n; t++) {
        for (long f = 0; f < ls[t].failed && f < MAX_REPORTED; f++)
            fprintf(stderr, "  %s\n", ls[t].failures[f]);
        *sent += ls[t].sent;
        *failed += ls[t].failed;
    }
}

static void test_reload_under_load(void **state)
{
    th_env *e = env_of(state);
    reload_env r;
    load ls[LOAD_THREADS + 1];
    pthread_t th[LOAD_THREADS + 1];
    atomic_bool stop = false;
    long sent, failed, by[2] = {0, 0}, moved[2] = {0, 0};
    start_detour(e, &r);

    for (int t = 0; t <= LOAD_THREADS; t++) {
        load_init(&ls[t], e, t, &stop);
        assert_int_equal(
            pthread_create(&th[t], NULL, t < LOAD_THREADS ? load_main : slow_main, &ls[t]), 0);
    }
    int64_t t0 = th_now_ms();
    th_sleep_ms(300);
    for (int k = 1; k <= RELOADS; k++) {
        reload_to(e, &r, k % 2 ? 'b' : 'a', k);
        th_sleep_ms(200); /* some load under each config */
    }
    atomic_store(&stop, true);
    for (int t = 0; t <= LOAD_THREADS; t++)
        pthread_join(th[t], NULL);
    double secs = (double)(th_now_ms() - t0) / 1000.0;

    report(ls, LOAD_THREADS + 1, &sent, &failed);
    for (int t = 0; t <= LOAD_THREADS; t++) {
        for (int v = 0; v < 2; v++) {
            by[v] += ls[t].by_variant[v];
            moved[v] += ls[t].moved_by_variant[v];
        }
        free(ls[t].buf);
    }
    print_message("%ld requests in %.1f s (%.0f/s) across %d reloads: %ld failed; "
                  "config a answered %ld, config b %ld\n",
                  sent, secs, (double)sent / secs, RELOADS, failed, by[0], by[1]);
    assert_int_equal(failed, 0);
    /* A steady load: at least 150 requests a second over the whole run. */
    assert_true((double)sent >= 150.0 * secs);
    /* Both configs really served: the redirect route came and went. */
    assert_true(moved[0] > 0 && moved[1] > 0);
    /* The slow uploads (one at a time, ~0.4 s each) ran all along. */
    assert_true(ls[LOAD_THREADS].sent >= 5);

    char *m = ops_scrape(r.admin_port);
    assert_non_null(m);
    assert_true(ops_metric(m, OK_RELOAD) == RELOADS);
    assert_true(ops_metric(m, ERR_RELOAD) == 0);
    free(m);
    /* 20 reloads from a end on a: the redirect route is live again. */
    th_resp rs;
    assert_int_equal(ops_get(e->port, "/echo/moved/final?x=1", &rs), 0);
    assert_int_equal(rs.status, 307);
    assert_string_equal(th_resp_hdr(&rs, "Location"), "/echo/new/final?x=1");
    th_resp_free(&rs);
}

/* ---- refused reloads --------------------------------------------------------------- */

/* 1-based line of the first line of the file that contains NEEDLE, 0 when none. */
static int line_of(const char *path, const char *needle)
{
    char *text = ops_read_file(path);
    int line = 0;
    if (text != NULL && strstr(text, needle) != NULL) {
        line = 1;
        for (const char *p = text; p < strstr(text, needle); p++)
            line += *p == '\n';
    }
    free(text);
    return line;
}

/* Which rules answer: a redirects /echo/moved, b relays it; each relays via cfg-VARIANT. */
static void expect_rules(th_env *e, char variant)
{
    th_resp rs;
    char via[64];
    assert_int_equal(ops_get(e->port, "/echo/moved/probe", &rs), 0);
    assert_int_equal(rs.status, variant == 'a' ? 307 : 200);
    th_resp_free(&rs);
    assert_int_equal(ops_get(e->port, "/echo/probe", &rs), 0);
    assert_int_equal(rs.status, 200);
    snprintf(via, sizeof(via), "1.1 cfg-%c", variant);
    assert_string_equal(th_resp_hdr(&rs, "Via"), via);
    th_resp_free(&rs);
}

/* SIGHUP with a broken config in place; wait for the refusal to be counted. */
static void refuse(th_env *e, reload_env *r, int n_err, const char *needle)
{
    char where[TH_PATH_MAX + 32];
    int line = line_of(e->cfg_path, needle);
    assert_true(line > 0);
    assert_int_equal(kill(e->detour.pid, SIGHUP), 0);
    double got = ops_wait_metric(r->admin_port, ERR_RELOAD, n_err, 5000);
    if (got != n_err)
        fail_msg("%s = %g after a broken config, expected %d", ERR_RELOAD, got, n_err);
    snprintf(where, sizeof(where), "%s:%d: ", e->cfg_path, line);
    if (!ops_wait_file_contains(e->detour.err_path, where, 3000)) {
        th_proc_dump(&e->detour, 2000);
        fail_msg("the log does not name %s", where);
    }
}

static void test_reload_refuses_invalid_config(void **state)
{
    th_env *e = env_of(state);
    reload_env r;
    start_detour(e, &r);
    expect_rules(e, 'a');

    /* A semantic error: a route relaying to an upstream that does not exist. */
    assert_int_equal(write_config(e->cfg_path, &r, 'b', e->port, NULL,
                                  "  { name = \"bad\"; match = { prefix = \"/bad\"; };\n"
                                  "    relay = { upstream = \"nope\"; }; },\n"),
                     0);
    refuse(e, &r, 1, "upstream = \"nope\"");
    expect_rules(e, 'a');
    assert_true(ops_metric_now(r.admin_port, OK_RELOAD) == 0);
    assert_true(ops_metric_now(r.admin_port, ERR_RELOAD) == 1);

    /* A syntax error, reported on its line. */
    assert_int_equal(write_config(e->cfg_path, &r, 'b', e->port, "rewrite_302 = = false;\n", NULL),
                     0);
    refuse(e, &r, 2, "rewrite_302 = = false;");
    expect_rules(e, 'a');

    /* A good config is taken again afterwards. */
    reload_to(e, &r, 'b', 1);
    expect_rules(e, 'b');
    assert_true(ops_metric_now(r.admin_port, ERR_RELOAD) == 2);
    assert_true(th_proc_running(&e->detour));
}

/* A new listen address cannot be applied by a reload: said in the log, rules still applied. */
static void test_reload_listen_change_needs_restart(void **state)
{
    th_env *e = env_of(state);
    reload_env r;
    start_detour(e, &r);
    int avoid[] = {e->port, e->origin_port, r.admin_port};
    int other = ops_free_port_not(avoid, 3);
    assert_int_equal(write_config(e->cfg_path, &r, 'b', other, NULL, NULL), 0);
    assert_int_equal(kill(e->detour.pid, SIGHUP), 0);
    assert_true(ops_wait_metric(r.admin_port, OK_RELOAD, 1, 5000) == 1);
    assert_true(ops_wait_file_contains(e->detour.err_path, "listen changed", 3000));
    expect_rules(e, 'b'); /* the old port, the new rules */
    assert_true(th_connect(other, 300) < 0);
}

/* A new access_log path takes effect on reload: later lines go to the new file. */
static void test_reload_moves_access_log(void **state)
{
    th_env *e = env_of(state);
    reload_env r;
    char first[TH_DIR_MAX + 16], second[TH_DIR_MAX + 16];
    th_resp rs;
    start_detour(e, &r);
    snprintf(first, sizeof(first), "%s/first.log", e->dir);
    snprintf(second, sizeof(second), "%s/second.log", e->dir);

    snprintf(r.access_log, sizeof(r.access_log), "%s", first);
    reload_to(e, &r, 'a', 1);
    assert_int_equal(ops_get(e->port, "/echo/one", &rs), 0);
    th_resp_free(&rs);
    assert_true(ops_wait_file_contains(first, "/echo/one", 3000));

    snprintf(r.access_log, sizeof(r.access_log), "%s", second);
    reload_to(e, &r, 'a', 2);
    assert_int_equal(ops_get(e->port, "/echo/two", &rs), 0);
    th_resp_free(&rs);
    assert_true(ops_wait_file_contains(second, "/echo/two", 3000));
    assert_false(ops_file_contains(first, "/echo/two"));
    assert_false(ops_file_contains(second, "/echo/one"));
}

int main(void)
{
#define T(f) cmocka_unit_test_setup_teardown(f, th_it_setup, th_it_teardown)
    const struct CMUnitTest tests[] = {
        T(test_reload_under_load),
        T(test_reload_refuses_invalid_config),
        T(test_reload_listen_change_needs_restart),
        T(test_reload_moves_access_log),
    };
#undef T
    return cmocka_run_group_tests(tests, NULL, NULL);
}
