/*
 * test_shipped_rules_live.c - every config shipped in rules/, running: a copy
 * whose addresses are moved to free ports (listen 127.0.0.1:8080, admin
 * 127.0.0.1:9901, the origin at 127.0.0.1:9000 / localhost:9000, and the
 * absolute maintenance flag) is checked with `detour -t`, started in front
 * of a real dt_origin, and a few of its expect cases are replayed with
 * libcurl. The unit tests run `-t` on the originals; this shows the same
 * answers come out of a live server.
 *
 * Cases that depend on the clock (ramps, windows) compute what must happen
 * today, so the test holds on any date.
 */
#include <dirent.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "harness.h"
#include "ops_util.h"

#define IO_MS 5000

/* Every file in rules/ that has live cases below. */
static const char *const covered[] = {"bulkmap.cfg", "detour.cfg", "loadbalance.cfg",
                                      "maintenance.cfg", "migration.cfg"};

typedef struct live {
    th_env *e;
    int admin_port;
    char rules[TH_DIR_MAX + 8];  /* the copy of rules/ */
    char cfg[TH_DIR_MAX + 80];   /* the config under test, in the copy */
    char mflag[TH_DIR_MAX + 32]; /* detour.cfg's maintenance flag, moved into the copy */
} live;

static th_env *env_of(void **state)
{
    return *state;
}

static void source_rules(char *out, size_t cap)
{
    snprintf(out, cap, "%s/rules", th_env_or("DETOUR_SOURCE_DIR", "."));
}

static void detour_bin(char *out, size_t cap)
{
    const char *env = getenv("DETOUR_BIN");
    if (env != NULL && *env != '\0')
        snprintf(out, cap, "%s", env);
    else
        snprintf(out, cap, "%s/build/detour", th_env_or("DETOUR_SOURCE_DIR", "."));
}

/* TEXT with every FROM replaced by TO (malloc'd). */
static char *replace_all(char *text, const char *from, const char *to)
{
    size_t fl = strlen(from), tl = strlen(to), n = 0;
    for (const char *p = strstr(text, from); p != NULL; p = strstr(p + fl, from))
        n++;
    char *out = malloc(strlen(text) + n * (tl > fl ? tl - fl : 0) + 1), *o = out;
    assert_non_null(out);
    const char *s = text;
    for (const char *p = strstr(s, from); p != NULL; p = strstr(s, from)) {
        memcpy(o, s, (size_t)(p - s));
        o += p - s;
        memcpy(o, to, tl);
        o += tl;
        s = p + fl;
    }
    strcpy(o, s);
    free(text);
    return out;
}

/* Copy rules/ into the test directory with every address moved to this test's ports. */
static void copy_rules(live *l)
{
    char src[TH_PATH_MAX], from[TH_PATH_MAX * 2], to[TH_PATH_MAX * 2], a[64], b[64];
    th_env *e = l->e;
    source_rules(src, sizeof(src));
    snprintf(l->rules, sizeof(l->rules), "%s/rules", e->dir);
    snprintf(l->mflag, sizeof(l->mflag), "%s/detour-maintenance", l->rules);
    assert_int_equal(mkdir(l->rules, 0755), 0);
    DIR *d = opendir(src);
    assert_non_null(d);
    for (struct dirent *de; (de = readdir(d)) != NULL;) {
        if (de->d_name[0] == '.')
            continue;
        snprintf(from, sizeof(from), "%s/%s", src, de->d_name);
        snprintf(to, sizeof(to), "%s/%s", l->rules, de->d_name);
        char *text = ops_read_file(from);
        assert_non_null(text);
        snprintf(b, sizeof(b), "127.0.0.1:%d", e->origin_port);
        text = replace_all(text, "127.0.0.1:9000", b);
        snprintf(b, sizeof(b), "localhost:%d", e->origin_port);
        text = replace_all(text, "localhost:9000", b);
        snprintf(b, sizeof(b), "127.0.0.1:%d", e->port);
        text = replace_all(text, "127.0.0.1:8080", b);
        snprintf(a, sizeof(a), "127.0.0.1:%d", l->admin_port);
        text = replace_all(text, "127.0.0.1:9901", a);
        text = replace_all(text, "/tmp/detour-maintenance", l->mflag);
        assert_int_equal(th_write_file(to, "%s", text), 0);
        free(text);
    }
    closedir(d);
}

/* `detour -t` on the copy must still pass: the rewrite kept every expect case true. */
static void check_copy(live *l)
{
    char bin[TH_PATH_MAX];
    th_proc p = {0};
    detour_bin(bin, sizeof(bin));
    char *argv[] = {bin, "-t", "-c", l->cfg, NULL};
    assert_int_equal(th_proc_spawn(&p, l->e->dir, "check", argv), 0);
    int rc = ops_wait_exit(&p, 10000);
    if (rc != 0) {
        th_proc_dump(&p, 4000);
        fail_msg("detour -t -c %s: exit %d", l->cfg, rc);
    }
}

/* Copy rules/, check NAME, start detour on it (and wait for the admin port when it has one). */
static void start_shipped(th_env *e, live *l, const char *name)
{
    char bin[TH_PATH_MAX];
    int avoid[] = {e->port, e->origin_port};
    memset(l, 0, sizeof(*l));
    l->e = e;
    l->admin_port = ops_free_port_not(avoid, 2);
    copy_rules(l);
    snprintf(l->cfg, sizeof(l->cfg), "%s/%.64s", l->rules, name);
    check_copy(l);
    detour_bin(bin, sizeof(bin));
    char *argv[] = {bin, "-c", l->cfg, NULL};
    assert_int_equal(th_proc_spawn(&e->detour, e->dir, "detour", argv), 0);
    if (th_proc_wait_port(&e->detour, e->port, 10000) != 0) {
        th_proc_dump(&e->detour, 4000);
        fail_msg("detour did not start with %s", name);
    }
    if (ops_file_contains(l->cfg, "admin ="))
        assert_int_equal(th_proc_wait_port(&e->detour, l->admin_port, 5000), 0);
}

/* ---- requests -------------------------------------------------------------------------- */

static th_resp send_one(th_env *e, const char *method, const char *target, const char *header)
{
    const char *const headers[] = {header, NULL};
    th_req rq = {.method = method,
                 .url = e->url,
                 .target = target,
                 .headers = header ? headers : NULL,
                 .body = method && strcmp(method, "POST") == 0 ? "a=1" : NULL,
                 .body_len = 3,
                 .keep_body = true,
                 .timeout_ms = 10000};
    th_resp rs;
    th_http(&rq, &rs);
    if (rs.rc != CURLE_OK)
        fail_msg("%s %s: curl: %s", method ? method : "GET", target, rs.err);
    return rs;
}

/* detour answered STATUS with LOCATION (and Retry-After RETRY, -1: none). */
static void expect_answer(th_env *e, const char *method, const char *target, const char *header,
                          long status, const char *location, int retry)
{
    th_resp rs = send_one(e, method, target, header);
    const char *loc = th_resp_hdr(&rs, "Location"), *ra = th_resp_hdr(&rs, "Retry-After");
    if (rs.status != status || loc == NULL || strcmp(loc, location) != 0)
        fail_msg("%s %s: %ld %s, expected %ld %s", method ? method : "GET", target, rs.status,
                 loc ? loc : "(no Location)", status, location);
    if (retry < 0)
        assert_null(ra);
    else if (ra == NULL || atoi(ra) != retry)
        fail_msg("%s: Retry-After %s, expected %d", target, ra ? ra : "(none)", retry);
    assert_string_equal(th_resp_hdr(&rs, "Cache-Control"), "no-store");
    th_resp_free(&rs);
}

/* Relayed: the origin answered (whatever the status). */
static void expect_relay(th_env *e, const char *method, const char *target, const char *header)
{
    th_resp rs = send_one(e, method, target, header);
    const char *server = th_resp_hdr(&rs, "Server");
    if (server == NULL || strcmp(server, "dt-origin") != 0)
        fail_msg("%s %s: status %ld, Location %s: not relayed to the origin",
                 method ? method : "GET", target, rs.status,
                 th_resp_hdr(&rs, "Location") ? th_resp_hdr(&rs, "Location") : "-");
    th_resp_free(&rs);
}

/* Repeat until the maintenance switch is seen (it is polled once a second). */
static void expect_answer_soon(th_env *e, const char *method, const char *target, long status)
{
    int64_t deadline = th_now_ms() + 3000;
    for (;;) {
        th_resp rs = send_one(e, method, target, NULL);
        long got = rs.status;
        th_resp_free(&rs);
        if (got == status)
            return;
        if (th_now_ms() > deadline)
            fail_msg("%s: still %ld 3 s after the flag file appeared", target, got);
        th_sleep_ms(50);
    }
}

/* The documented stickiness (docs/rules.md): FNV-1a 64 of name, 0x00, key. */
static bool in_percent(const char *route, const char *key, int percent)
{
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i <= strlen(route); i++) {
        h ^= (unsigned char)route[i];
        h *= 0x100000001b3ull;
    }
    for (const char *p = key; *p != '\0'; p++) {
        h ^= (unsigned char)*p;
        h *= 0x100000001b3ull;
    }
    return h % 10000 < (uint64_t)percent * 100;
}

static time_t utc(int y, int mo, int d, int h)
{
    struct tm tm = {.tm_year = y - 1900, .tm_mon = mo - 1, .tm_mday = d, .tm_hour = h};
    return timegm(&tm);
}

/* ---- tests -------------------------------------------------------------------------------- */

static void test_every_shipped_file_is_covered(void **state)
{
    char src[TH_PATH_MAX];
    (void)state;
    source_rules(src, sizeof(src));
    DIR *d = opendir(src);
    assert_non_null(d);
    int n = 0;
    for (struct dirent *de; (de = readdir(d)) != NULL;) {
        size_t len = strlen(de->d_name);
        if (len < 4 || strcmp(de->d_name + len - 4, ".cfg") != 0)
            continue;
        bool found = false;
        for (size_t i = 0; i < sizeof(covered) / sizeof(covered[0]); i++)
            found = found || strcmp(covered[i], de->d_name) == 0;
        if (!found)
            fail_msg("rules/%s has no live cases in test_shipped_rules_live.c", de->d_name);
        n++;
    }
    closedir(d);
    assert_int_equal(n, (int)(sizeof(covered) / sizeof(covered[0])));
}

static void test_detour_cfg(void **state)
{
    th_env *e = env_of(state);
    live l;
    th_resp rs;
    start_shipped(e, &l, "detour.cfg");
    expect_answer(e, NULL, "/docs/install?lang=en", NULL, 307,
                  "https://docs.example.com/install?lang=en", -1);
    /* 25% by client address: this client is on the side the documented hash says. */
    if (in_percent("api-v1-to-v2", "127.0.0.1", 25))
        expect_answer(e, "POST", "/api/v1/orders", NULL, 307, "/api/v2/orders", -1);
    else
        expect_relay(e, "POST", "/api/v1/orders", NULL);
    expect_relay(e, NULL, "/legacy/form", NULL);
    /* The legacy app's 302 after a form POST comes back as a 307. */
    rs = send_one(e, "POST", "/legacy/submit", NULL);
    assert_int_equal(rs.status, 307);
    assert_string_equal(th_resp_hdr(&rs, "Location"), "/legacy/done");
    th_resp_free(&rs);
    /* The maintenance switch, off then on. */
    expect_relay(e, "POST", "/checkout/pay", NULL);
    assert_int_equal(th_write_file(l.mflag, "on\n"), 0);
    expect_answer_soon(e, "POST", "/checkout/pay", 307);
    expect_answer(e, "POST", "/checkout/pay?x=1", NULL, 307,
                  "https://maint.example.com/checkout/pay?x=1", 300);
    expect_relay(e, NULL, "/checkout/pay", NULL); /* GET is not listed */
    assert_int_equal(ops_get(l.admin_port, "/healthz", &rs), 0);
    assert_int_equal(rs.status, 200);
    th_resp_free(&rs);
}

static void test_maintenance_cfg(void **state)
{
    th_env *e = env_of(state);
    live l;
    char flag[TH_DIR_MAX + 32];
    start_shipped(e, &l, "maintenance.cfg");
    time_t now = time(NULL);
    if (now >= utc(2026, 12, 6, 1) && now < utc(2026, 12, 6, 3))
        expect_answer(e, NULL, "/shop/cart", NULL, 303, "/maintenance.html", 7200);
    else
        expect_relay(e, NULL, "/shop/cart", NULL);
    snprintf(flag, sizeof(flag), "%s/maintenance.flag", l.rules);
    assert_int_equal(th_write_file(flag, "on\n"), 0);
    expect_answer_soon(e, "POST", "/shop/cart?step=2", 303);
    expect_answer(e, "POST", "/shop/cart?step=2", NULL, 303, "/maintenance.html",
                  now >= utc(2026, 12, 6, 1) && now < utc(2026, 12, 6, 3) ? 7200 : 600);
    expect_relay(e, NULL, "/maintenance.html", NULL);
    expect_relay(e, NULL, "/healthz", NULL);
    assert_int_equal(unlink(flag), 0);
}

static void test_migration_cfg(void **state)
{
    static const struct {
        int y, mo, d, percent;
    } ramp[] = {{2026, 12, 1, 5}, {2026, 12, 8, 25}, {2026, 12, 15, 50}, {2027, 1, 5, 100}};
    th_env *e = env_of(state);
    live l;
    start_shipped(e, &l, "migration.cfg");
    expect_relay(e, "POST", "/api/v1/orders/17", NULL);
    double n =
        ops_wait_metric(l.admin_port, "detour_dry_run_total{route=\"orders-v2-dry-run\"}", 1, 3000);
    if (n != 1)
        fail_msg("detour_dry_run_total{route=\"orders-v2-dry-run\"} = %g after one request", n);
    expect_answer(e, "POST", "/api/v1/reports/2026/q4?format=csv", NULL, 307,
                  "/api/v2/reports/2026/q4?format=csv", -1);
    expect_relay(e, NULL, "/api/v2/reports/2026/q4", NULL);
    /* The ramp as of today, for two users. */
    int percent = 0;
    for (size_t i = 0; i < sizeof(ramp) / sizeof(ramp[0]); i++)
        if (time(NULL) >= utc(ramp[i].y, ramp[i].mo, ramp[i].d, 0))
            percent = ramp[i].percent;
    static const char *const users[] = {"oscar", "dave", "alice"};
    for (size_t i = 0; i < 3; i++) {
        char cookie[64];
        snprintf(cookie, sizeof(cookie), "Cookie: theme=dark; session=%s", users[i]);
        if (in_percent("users-v1-to-v2", users[i], percent))
            expect_answer(e, NULL, "/api/v1/users/7?fields=name", cookie, 307,
                          "/api/v2/users/7?fields=name", -1);
        else
            expect_relay(e, NULL, "/api/v1/users/7?fields=name", cookie);
    }
}

static void test_loadbalance_cfg(void **state)
{
    th_env *e = env_of(state);
    live l;
    char m1[128], m2[128];
    start_shipped(e, &l, "loadbalance.cfg");
    expect_relay(e, "POST", "/downloads/upload", NULL);
    snprintf(m1, sizeof(m1), "http://127.0.0.1:%d/downloads/detour-0.1.0.tar.gz", e->origin_port);
    snprintf(m2, sizeof(m2), "http://localhost:%d/downloads/detour-0.1.0.tar.gz", e->origin_port);
    expect_answer(e, NULL, "/downloads/detour-0.1.0.tar.gz", NULL, 302, m1, -1);
    expect_answer(e, NULL, "/downloads/detour-0.1.0.tar.gz", NULL, 302, m2, -1);
    snprintf(m1, sizeof(m1), "http://127.0.0.1:%d/downloads/sums.txt?v=2", e->origin_port);
    th_resp rs = send_one(e, "HEAD", "/downloads/sums.txt?v=2", NULL);
    assert_int_equal(rs.status, 302);
    assert_string_equal(th_resp_hdr(&rs, "Location"), m1);
    assert_int_equal(rs.body_total, 0);
    th_resp_free(&rs);
    /* The Location names the live mirror: following it reaches the origin directly. */
    th_req follow = {.url = m2, .timeout_ms = 5000};
    assert_int_equal(th_http(&follow, &rs), 0);
    assert_string_equal(th_resp_hdr(&rs, "Server"), "dt-origin");
    assert_null(th_resp_hdr(&rs, "Via"));
    th_resp_free(&rs);
    expect_relay(e, NULL, "/index.html", NULL);
}

static void test_bulkmap_cfg(void **state)
{
    th_env *e = env_of(state);
    live l;
    start_shipped(e, &l, "bulkmap.cfg");
    expect_answer(e, NULL, "/about.php", NULL, 301, "/about", -1);
    expect_answer(e, NULL, "/about.php?lang=en", NULL, 301, "/about", -1);
    expect_answer(e, NULL, "/catalog/shoes.html", NULL, 301, "/shop/shoes", -1);
    expect_answer(e, "POST", "/press/2019.html", NULL, 301, "https://news.example.org/2019", -1);
    expect_relay(e, NULL, "/about", NULL);
    expect_relay(e, NULL, "/catalog/hats.html", NULL);
}

int main(void)
{
#define T(f) cmocka_unit_test_setup_teardown(f, th_it_setup, th_it_teardown)
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_every_shipped_file_is_covered),
        T(test_detour_cfg),
        T(test_maintenance_cfg),
        T(test_migration_cfg),
        T(test_loadbalance_cfg),
        T(test_bulkmap_cfg),
    };
#undef T
    return cmocka_run_group_tests(tests, NULL, NULL);
}
