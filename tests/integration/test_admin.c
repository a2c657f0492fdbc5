/*
 * test_admin.c - the admin listener and the access log: /healthz, /metrics
 * in the Prometheus text format with every family the contract names
 * (values checked against the traffic that was sent: relay, redirect,
 * 302->307 rewrite, a dry run, a Location leak, 404 and a refused upstream),
 * the histogram's invariants, the connection gauge, and SIGUSR1 reopening
 * the access log the way logrotate needs.
 */
#include <ctype.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "harness.h"
#include "ops_util.h"

#define PROM_MAX_FAMILIES 64
#define PROM_MAX_SERIES 1024

typedef struct admin_env {
    th_env *e;
    int admin_port;
    int dead_port; /* nothing listens there: the "down" upstream */
    char access_log[TH_PATH_MAX];
} admin_env;

static th_env *env_of(void **state)
{
    return *state;
}

/*
 * Routes for every kind of answer the metrics distinguish. "idle" is never
 * hit; "dry" only counts; "leaky" lets an internal Location through.
 */
static void start_detour(th_env *e, admin_env *a)
{
    int avoid[] = {e->port, e->origin_port};
    a->e = e;
    a->admin_port = ops_free_port_not(avoid, 2);
    int avoid2[] = {e->port, e->origin_port, a->admin_port};
    a->dead_port = ops_free_port_not(avoid2, 3);
    snprintf(a->access_log, sizeof(a->access_log), "%s/access.log", e->dir);
    assert_int_equal(
        th_detour_start(e,
                        "listen = \"127.0.0.1:%d\";\n"
                        "admin = \"127.0.0.1:%d\";\n"
                        "workers = 2;\n"
                        "access_log = \"%s\";\n"
                        "timeouts = { drain_ms = 3000; };\n"
                        "upstreams = { o = { url = \"http://127.0.0.1:%d\"; };\n"
                        "              down = { url = \"http://127.0.0.1:%d\"; }; };\n"
                        "routes = (\n"
                        "  { name = \"idle\"; match = { path = \"/never\"; }; relay = { upstream = "
                        "\"o\"; }; },\n"
                        "  { name = \"old\"; match = { prefix = \"/old/\"; };\n"
                        "    redirect = { to = \"/echo/new/$suffix$is_args$args\"; }; },\n"
                        "  { name = \"dry\"; match = { prefix = \"/echo/dry\"; };\n"
                        "    redirect = { to = \"/elsewhere\"; dry_run = true; }; },\n"
                        "  { name = \"dead\"; match = { prefix = \"/dead\"; }; relay = { upstream "
                        "= \"down\"; }; },\n"
                        "  { name = \"legacy\"; match = { prefix = \"/legacy/\"; };\n"
                        "    relay = { upstream = \"o\"; rewrite_302 = true; }; },\n"
                        "  { name = \"leaky\"; match = { prefix = \"/status/\"; };\n"
                        "    relay = { upstream = \"o\"; rewrite_location = false; }; },\n"
                        "  { name = \"slow\"; match = { prefix = \"/slow\"; }; relay = { upstream "
                        "= \"o\"; }; },\n"
                        "  { name = \"echo\"; match = { prefix = \"/echo\"; }; relay = { upstream "
                        "= \"o\"; }; }\n"
                        ");\n",
                        e->port, a->admin_port, a->access_log, e->origin_port, a->dead_port),
        0);
    /* The harness waited for the proxy port; the admin listener starts after it. */
    assert_int_equal(th_proc_wait_port(&e->detour, a->admin_port, 5000), 0);
}

/* A request through detour; checks the status it must get. */
static void send_expect(th_env *e, const char *method, const char *path, long status)
{
    char url[512];
    th_resp rs;
    snprintf(url, sizeof(url), "%s%s", e->url, path);
    th_req rq = {.method = method,
                 .url = url,
                 .body = method != NULL ? "form=1" : NULL,
                 .body_len = method != NULL ? 6 : 0,
                 .timeout_ms = 10000};
    th_http(&rq, &rs);
    if (rs.status != status)
        fail_msg("%s %s: status %ld (%s), expected %ld", method ? method : "GET", path, rs.status,
                 rs.rc == CURLE_OK ? "ok" : rs.err, status);
    th_resp_free(&rs);
}

/* ---- the Prometheus text format ------------------------------------------------ */

typedef struct prom_family {
    char name[128];
    char type[32];
} prom_family;

typedef struct prom_check {
    prom_family fam[PROM_MAX_FAMILIES];
    size_t nfam;
    char *series[PROM_MAX_SERIES];
    size_t nseries;
} prom_check;

static bool is_name_start(int c)
{
    return isalpha(c) || c == '_' || c == ':';
}

static bool is_name_char(int c)
{
    return isalnum(c) || c == '_' || c == ':';
}

/* Length of a metric (or, without colons, label) name at P; 0 when none. */
static size_t name_len(const char *p, bool label)
{
    size_t n = 0;
    if (!is_name_start((unsigned char)p[0]) || (label && p[0] == ':'))
        return 0;
    while (is_name_char((unsigned char)p[n]) && !(label && p[n] == ':'))
        n++;
    return n;
}

/* `{name="value",...}` at P: its length, or 0 when malformed. Only \\ \" \n escapes. */
static size_t labels_len(const char *p)
{
    const char *s = p;
    if (*s++ != '{')
        return 0;
    while (*s != '}') {
        size_t n = name_len(s, true);
        if (n == 0 || s[n] != '=' || s[n + 1] != '"')
            return 0;
        for (s += n + 2; *s != '"'; s++) {
            if (*s == '\0' || *s == '\n')
                return 0;
            if (*s == '\\' && s[1] != '\\' && s[1] != '"' && s[1] != 'n')
                return 0;
            if (*s == '\\')
                s++;
        }
        s++;
        if (*s == ',')
            s++;
        else if (*s != '}')
            return 0;
    }
    return (size_t)(s + 1 - p);
}

static bool is_value(const char *v, size_t n)
{
    char buf[64], *end;
    if (n == 0 || n >= sizeof(buf))
        return false;
    memcpy(buf, v, n);
    buf[n] = '\0';
    if (strcmp(buf, "+Inf") == 0 || strcmp(buf, "-Inf") == 0 || strcmp(buf, "NaN") == 0)
        return true;
    strtod(buf, &end);
    return *end == '\0';
}

static prom_family *family(prom_check *pc, const char *name, size_t n)
{
    for (size_t i = 0; i < pc->nfam; i++)
        if (strlen(pc->fam[i].name) == n && strncmp(pc->fam[i].name, name, n) == 0)
            return &pc->fam[i];
    return NULL;
}

/* The family a sample belongs to: a histogram's _bucket/_sum/_count map to its base. */
static prom_family *family_of_sample(prom_check *pc, const char *name, size_t n)
{
    static const char *const suffixes[] = {"_bucket", "_sum", "_count"};
    prom_family *f = family(pc, name, n);
    for (size_t i = 0; f == NULL && i < 3; i++) {
        size_t sl = strlen(suffixes[i]);
        prom_family *base = n > sl && strncmp(name + n - sl, suffixes[i], sl) == 0
                                ? family(pc, name, n - sl)
                                : NULL;
        if (base != NULL && strcmp(base->type, "histogram") == 0)
            f = base;
    }
    return f;
}

static void check_comment(prom_check *pc, const char *line, size_t len, int lineno)
{
    char name[128], type[32];
    if (strncmp(line, "# TYPE ", 7) != 0)
        return; /* HELP and free comments: anything goes */
    if (sscanf(line, "# TYPE %127s %31s", name, type) != 2)
        fail_msg("metrics line %d: malformed TYPE: %.*s", lineno, (int)len, line);
    if (strcmp(type, "counter") != 0 && strcmp(type, "gauge") != 0 &&
        strcmp(type, "histogram") != 0 && strcmp(type, "summary") != 0 &&
        strcmp(type, "untyped") != 0)
        fail_msg("metrics line %d: unknown type %s", lineno, type);
    if (family(pc, name, strlen(name)) != NULL)
        fail_msg("metrics line %d: second TYPE for %s", lineno, name);
    assert_true(pc->nfam < PROM_MAX_FAMILIES);
    snprintf(pc->fam[pc->nfam].name, sizeof(pc->fam[0].name), "%s", name);
    snprintf(pc->fam[pc->nfam].type, sizeof(pc->fam[0].type), "%s", type);
    pc->nfam++;
}

static void check_sample(prom_check *pc, const char *line, size_t len, int lineno)
{
    size_t n = name_len(line, false), l = 0;
    if (n == 0)
        fail_msg("metrics line %d: no metric name: %.*s", lineno, (int)len, line);
    if (line[n] == '{' && (l = labels_len(line + n)) == 0)
        fail_msg("metrics line %d: malformed labels: %.*s", lineno, (int)len, line);
    if (n + l >= len || line[n + l] != ' ')
        fail_msg("metrics line %d: no space before the value: %.*s", lineno, (int)len, line);
    const char *v = line + n + l + 1;
    size_t vn = len - (n + l + 1);
    const char *ts = memchr(v, ' ', vn);
    if (ts != NULL) { /* an optional integer timestamp */
        for (const char *d = ts + 1; d < line + len; d++)
            if (!isdigit((unsigned char)*d) && !(d == ts + 1 && *d == '-'))
                fail_msg("metrics line %d: bad timestamp: %.*s", lineno, (int)len, line);
        vn = (size_t)(ts - v);
    }
    if (!is_value(v, vn))
        fail_msg("metrics line %d: bad value: %.*s", lineno, (int)len, line);
    if (family_of_sample(pc, line, n) == NULL)
        fail_msg("metrics line %d: sample before (or without) its TYPE: %.*s", lineno, (int)len,
                 line);
    for (size_t i = 0; i < pc->nseries; i++)
        if (strlen(pc->series[i]) == n + l && strncmp(pc->series[i], line, n + l) == 0)
            fail_msg("metrics line %d: series given twice: %.*s", lineno, (int)(n + l), line);
    assert_true(pc->nseries < PROM_MAX_SERIES);
    pc->series[pc->nseries++] = strndup(line, n + l);
}

/* Every line a comment, blank, or `name{labels} value [timestamp]`; the text ends with \n. */
static void check_prometheus_text(const char *text, prom_check *pc)
{
    int lineno = 0;
    memset(pc, 0, sizeof(*pc));
    assert_true(strlen(text) > 0 && text[strlen(text) - 1] == '\n');
    for (const char *line = text; *line != '\0';) {
        const char *nl = strchr(line, '\n');
        size_t len = (size_t)(nl - line);
        lineno++;
        if (len > 0 && line[len - 1] == '\r')
            fail_msg("metrics line %d: CR in the text format", lineno);
        if (len > 0 && line[0] == '#')
            check_comment(pc, line, len, lineno);
        else if (len > 0)
            check_sample(pc, line, len, lineno);
        line = nl + 1;
    }
}

static void prom_check_free(prom_check *pc)
{
    for (size_t i = 0; i < pc->nseries; i++)
        free(pc->series[i]);
}

static void expect_type(prom_check *pc, const char *name, const char *type)
{
    prom_family *f = family(pc, name, strlen(name));
    if (f == NULL)
        fail_msg("no TYPE line for %s", name);
    if (strcmp(f->type, type) != 0)
        fail_msg("%s is a %s, expected a %s", name, f->type, type);
}

static void expect_sample(const char *text, const char *series, double want)
{
    double got = ops_metric(text, series);
    if (got != want)
        fail_msg("%s is %g, expected %g\n%s", series, got, want, text);
}

/* ---- tests -------------------------------------------------------------------- */

static void test_healthz(void **state)
{
    th_env *e = env_of(state);
    admin_env a;
    th_resp rs;
    char url[128];
    start_detour(e, &a);

    assert_int_equal(ops_get(a.admin_port, "/healthz", &rs), 0);
    assert_int_equal(rs.status, 200);
    assert_string_equal(rs.body, "ok\n");
    th_resp_free(&rs);

    assert_int_equal(ops_get(a.admin_port, "/nope", &rs), 0);
    assert_int_equal(rs.status, 404);
    th_resp_free(&rs);

    snprintf(url, sizeof(url), "http://127.0.0.1:%d/healthz", a.admin_port);
    th_req post = {.method = "POST", .url = url, .body = "x", .body_len = 1};
    th_http(&post, &rs);
    if (rs.status != 405)
        fail_msg("POST /healthz: status %ld (%s), expected 405", rs.status,
                 rs.rc == CURLE_OK ? "ok" : rs.err);
    th_resp_free(&rs);

    /* The proxy port never answers admin paths: /metrics there goes through the routes. */
    assert_int_equal(ops_get(e->port, "/metrics", &rs), 0);
    assert_int_equal(rs.status, 404);
    assert_null(strstr(rs.body ? rs.body : "", "detour_requests_total"));
    th_resp_free(&rs);
}

/* The traffic whose counts test_metrics_families checks: 11 requests. */
static void send_mixed_traffic(th_env *e)
{
    char leak[160];
    for (int i = 0; i < 3; i++)
        send_expect(e, NULL, "/echo/a", 200);
    send_expect(e, NULL, "/old/x?a=1", 307);
    send_expect(e, NULL, "/old/y", 307);
    send_expect(e, NULL, "/nothing/here", 404);
    send_expect(e, NULL, "/dead", 502);
    send_expect(e, NULL, "/echo/dry", 200);        /* counted by "dry", answered by "echo" */
    send_expect(e, "POST", "/legacy/submit", 307); /* the origin's 302, rewritten */
    snprintf(leak, sizeof(leak), "/status/302?location=http://127.0.0.1:%d/inside", e->origin_port);
    send_expect(e, NULL, leak, 302); /* GET is never rewritten; the Location leaks */
    send_expect(e, NULL, "/slow?ms=300", 200);
}

static void check_counters(const char *m)
{
    expect_sample(m, "detour_requests_total{route=\"echo\",action=\"relay\",code=\"200\"}", 4);
    expect_sample(m, "detour_requests_total{route=\"old\",action=\"redirect\",code=\"307\"}", 2);
    expect_sample(m, "detour_requests_total{route=\"dead\",action=\"error\",code=\"502\"}", 1);
    expect_sample(m, "detour_requests_total{route=\"legacy\",action=\"rewrite\",code=\"307\"}", 1);
    expect_sample(m, "detour_requests_total{route=\"leaky\",action=\"relay\",code=\"302\"}", 1);
    expect_sample(m, "detour_requests_total{route=\"slow\",action=\"relay\",code=\"200\"}", 1);
    /* No route matched: reverse mode's 404 is an error without a route. */
    expect_sample(m, "detour_requests_total{route=\"-\",action=\"error\",code=\"404\"}", 1);
    expect_sample(m, "detour_redirects_total{route=\"old\"}", 2);
    expect_sample(m, "detour_dry_run_total{route=\"dry\"}", 1);
    expect_sample(m, "detour_rewrites_total{from=\"302\",to=\"307\"}", 1);
    expect_sample(m, "detour_upstream_errors_total{upstream=\"down\",kind=\"refused\"}", 1);
    expect_sample(m, "detour_location_leaks_total{upstream=\"o\"}", 1);
    expect_sample(m, "detour_config_reloads_total{result=\"ok\"}", 0);
    expect_sample(m, "detour_config_reloads_total{result=\"error\"}", 0);
    if (ops_metric(m, "detour_active_connections") < 0)
        fail_msg("no detour_active_connections sample:\n%s", m);
}

static void check_last_hit(const char *m, time_t t0, time_t t1)
{
    static const char *const hit[] = {"old", "dead", "legacy", "leaky", "slow", "echo"};
    char series[128];
    for (size_t i = 0; i < sizeof(hit) / sizeof(hit[0]); i++) {
        snprintf(series, sizeof(series), "detour_route_last_hit_timestamp_seconds{route=\"%s\"}",
                 hit[i]);
        double v = ops_metric(m, series);
        if (v < (double)t0 || v > (double)t1)
            fail_msg("%s = %.0f, expected within [%lld, %lld]", series, v, (long long)t0,
                     (long long)t1);
    }
    /* A route that never answered is listed, at 0, so that "never" is visible too. */
    expect_sample(m, "detour_route_last_hit_timestamp_seconds{route=\"idle\"}", 0);
}

/* Buckets in increasing le, cumulative, +Inf last and equal to _count. */
static void check_histogram(const char *m, double want_count, double min_sum)
{
    const char *prefix = "detour_request_duration_seconds_bucket{le=\"";
    double prev_le = -1, prev_count = -1, inf_count = -1;
    int nbuckets = 0;
    for (const char *p = strstr(m, prefix); p != NULL; p = strstr(p + 1, prefix)) {
        const char *le = p + strlen(prefix);
        const char *close = strstr(le, "\"} ");
        assert_non_null(close);
        double count = strtod(close + 3, NULL);
        bool inf = strncmp(le, "+Inf\"", 5) == 0;
        double lev = inf ? 1e300 : strtod(le, NULL);
        if (inf_count >= 0)
            fail_msg("a bucket after le=\"+Inf\"");
        if (lev <= prev_le || count < prev_count)
            fail_msg("bucket le=%.*s (%g) after le=%g (%g): not increasing/cumulative",
                     (int)(close - le), le, count, prev_le, prev_count);
        prev_le = lev;
        prev_count = count;
        if (inf)
            inf_count = count;
        nbuckets++;
    }
    assert_true(nbuckets >= 2);
    expect_sample(m, "detour_request_duration_seconds_count", want_count);
    assert_true(inf_count == want_count);
    double sum = ops_metric(m, "detour_request_duration_seconds_sum");
    if (sum < min_sum)
        fail_msg("detour_request_duration_seconds_sum = %g, expected at least %g", sum, min_sum);
    /* The 300 ms request is not in the 250 ms bucket: durations are seconds. */
    double le025 = ops_metric(m, "detour_request_duration_seconds_bucket{le=\"0.25\"}");
    if (le025 < 0 || le025 > want_count - 1)
        fail_msg("bucket le=0.25 holds %g of %g requests, one took 300 ms", le025, want_count);
}

static void test_metrics_families(void **state)
{
    th_env *e = env_of(state);
    admin_env a;
    prom_check pc;
    start_detour(e, &a);

    time_t t0 = time(NULL);
    send_mixed_traffic(e);
    /* Requests are counted when they complete, just after the client has its answer. */
    ops_wait_metric(a.admin_port, "detour_request_duration_seconds_count", 11, 3000);
    time_t t1 = time(NULL);
    char *m = ops_scrape(a.admin_port);
    assert_non_null(m);

    check_prometheus_text(m, &pc);
    expect_type(&pc, "detour_requests_total", "counter");
    expect_type(&pc, "detour_redirects_total", "counter");
    expect_type(&pc, "detour_rewrites_total", "counter");
    expect_type(&pc, "detour_upstream_errors_total", "counter");
    expect_type(&pc, "detour_location_leaks_total", "counter");
    expect_type(&pc, "detour_config_reloads_total", "counter");
    expect_type(&pc, "detour_active_connections", "gauge");
    expect_type(&pc, "detour_route_last_hit_timestamp_seconds", "gauge");
    expect_type(&pc, "detour_request_duration_seconds", "histogram");
    prom_check_free(&pc);

    check_counters(m);
    check_last_hit(m, t0, t1);
    check_histogram(m, 11, 0.3);
    free(m);
}

static void test_metrics_content_type(void **state)
{
    th_env *e = env_of(state);
    admin_env a;
    th_resp rs;
    start_detour(e, &a);
    assert_int_equal(ops_get(a.admin_port, "/metrics", &rs), 0);
    assert_int_equal(rs.status, 200);
    /* What Prometheus sends in Accept for the classic text format. */
    th_assert_contains(th_resp_hdr(&rs, "Content-Type"), "text/plain");
    th_assert_contains(th_resp_hdr(&rs, "Content-Type"), "version=0.0.4");
    th_resp_free(&rs);
}

/* The gauge follows a connection that stays open, and comes back down. */
static void test_active_connections(void **state)
{
    th_env *e = env_of(state);
    admin_env a;
    th_raw_resp r;
    start_detour(e, &a);
    int fd = th_connect(e->port, 2000);
    assert_true(fd >= 0);
    assert_int_equal(th_send_str(fd, "GET /echo/ka HTTP/1.1\r\nHost: a\r\n\r\n", 2000), 0);
    assert_int_equal(th_recv_response(fd, false, &r, 5000), 0);
    assert_int_equal(r.status, 200);
    th_raw_resp_free(&r);

    int64_t deadline = th_now_ms() + 3000;
    double v;
    while ((v = ops_metric_now(a.admin_port, "detour_active_connections")) != 1 &&
           th_now_ms() < deadline)
        th_sleep_ms(20);
    if (v != 1)
        fail_msg("detour_active_connections = %g with one keep-alive connection open", v);

    close(fd);
    deadline = th_now_ms() + 3000;
    while ((v = ops_metric_now(a.admin_port, "detour_active_connections")) != 0 &&
           th_now_ms() < deadline)
        th_sleep_ms(20);
    if (v != 0)
        fail_msg("detour_active_connections = %g after the only client left", v);
}

static void expect_file_contains(const char *path, const char *needle)
{
    char *text = ops_read_file(path);
    th_assert_contains(text, needle);
    free(text);
}

static void test_sigusr1_reopens_access_log(void **state)
{
    th_env *e = env_of(state);
    admin_env a;
    char rotated[TH_PATH_MAX + 8];
    start_detour(e, &a);
    snprintf(rotated, sizeof(rotated), "%s.1", a.access_log);

    send_expect(e, NULL, "/echo/before-rotate", 200);
    assert_true(ops_wait_file_contains(a.access_log, "/echo/before-rotate", 3000));
    expect_file_contains(a.access_log, " route=echo action=relay");

    /* logrotate renames first: detour keeps writing to the renamed file... */
    assert_int_equal(rename(a.access_log, rotated), 0);
    send_expect(e, NULL, "/echo/after-rename", 200);
    assert_true(ops_wait_file_contains(rotated, "/echo/after-rename", 3000));

    /* ...until postrotate sends USR1: the old path is created again. */
    assert_int_equal(kill(e->detour.pid, SIGUSR1), 0);
    int64_t deadline = th_now_ms() + 3000;
    while (access(a.access_log, F_OK) != 0 && th_now_ms() < deadline)
        th_sleep_ms(20);
    assert_int_equal(access(a.access_log, F_OK), 0);

    send_expect(e, NULL, "/echo/after-usr1", 200);
    assert_true(ops_wait_file_contains(a.access_log, "/echo/after-usr1", 3000));
    assert_false(ops_file_contains(rotated, "/echo/after-usr1"));
    assert_false(ops_file_contains(a.access_log, "/echo/before-rotate"));
    /* Still a combined line with the route and action after it. */
    expect_file_contains(a.access_log, "\"GET /echo/after-usr1 HTTP/1.1\" 200 ");
    assert_true(th_proc_running(&e->detour));
}

int main(void)
{
#define T(f) cmocka_unit_test_setup_teardown(f, th_it_setup, th_it_teardown)
    const struct CMUnitTest tests[] = {
        T(test_healthz),
        T(test_metrics_families),
        T(test_metrics_content_type),
        T(test_active_connections),
        T(test_sigusr1_reopens_access_log),
    };
#undef T
    return cmocka_run_group_tests(tests, NULL, NULL);
}
