/*
 * test_rules.c - the route decision.
 *
 * The golden cases are data: tests/data/rules_cases.txt holds lines
 *
 *   CONFIG | METHOD URL [client=IP] [header:NAME=VALUE] [at=ISO8601] -> RESULT
 *
 * with CONFIG a file under tests/data/rules/ and RESULT "307 LOCATION",
 * "relay NAME", "relay" or "404" (the syntax of `expect`, see check.h, run by
 * dt_check_expect()). The tests below the case runner cover what a table
 * cannot: statistical properties of percent and ramps, the round-robin
 * cursor, buffer limits, and that the match index never changes an answer
 * (random route sets decided with and without the index).
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
#include "detour/template.h"

static dt_str S(const char *s)
{
    return (dt_str){s, s ? strlen(s) : 0};
}

/* ---- the data-driven cases ----------------------------------------------- */

static const char *source_dir(void)
{
    const char *d = getenv("DETOUR_SOURCE_DIR");
    return d && *d ? d : ".";
}

/* Configs are loaded once each and kept for the whole run. */
typedef struct loaded {
    char name[128];
    dt_config *cfg;
} loaded;

static loaded cache[64];
static size_t ncache;

static dt_config *config_for(const char *name)
{
    for (size_t i = 0; i < ncache; i++)
        if (strcmp(cache[i].name, name) == 0)
            return cache[i].cfg;
    char path[512], err[512];
    snprintf(path, sizeof(path), "%s/tests/data/rules/%s", source_dir(), name);
    dt_config *cfg = NULL;
    if (dt_config_load(path, &cfg, err, sizeof(err)) != DT_OK)
        fail_msg("%s: %s", name, err);
    assert_true(ncache < DT_ARRAY_LEN(cache));
    snprintf(cache[ncache].name, sizeof(cache[ncache].name), "%s", name);
    cache[ncache++].cfg = cfg;
    return cfg;
}

static char *trim(char *s)
{
    while (*s == ' ' || *s == '\t')
        s++;
    size_t n = strlen(s);
    while (n > 0 && (s[n - 1] == ' ' || s[n - 1] == '\t' || s[n - 1] == '\n' || s[n - 1] == '\r'))
        s[--n] = '\0';
    return s;
}

/* Run one "CONFIG | CASE" line; returns false (after printing why) when it fails. */
static bool run_case_line(const char *file, int lineno, char *line)
{
    char *bar = strchr(line, '|');
    if (!bar) {
        printf("%s:%d: no '|' between config and case\n", file, lineno);
        return false;
    }
    *bar = '\0';
    char *cfgname = trim(line), *text = trim(bar + 1), got[DT_LOCATION_MAX + 256];
    int rc = dt_check_expect(config_for(cfgname), text, got, sizeof(got));
    if (rc == 1)
        return true;
    if (rc < 0)
        printf("%s:%d: bad case: %s\n", file, lineno, got);
    else
        printf("%s:%d: %s: %s\n  got: %s\n", file, lineno, cfgname, text, got);
    return false;
}

static void test_cases_file(void **state)
{
    char path[512], line[4096];
    snprintf(path, sizeof(path), "%s/tests/data/rules_cases.txt", source_dir());
    FILE *f = fopen(path, "r");
    if (!f)
        fail_msg("%s: cannot open", path);
    int lineno = 0, ran = 0, failed = 0;
    while (fgets(line, sizeof(line), f)) {
        lineno++;
        char *t = trim(line);
        if (*t == '\0' || *t == '#')
            continue;
        ran++;
        failed += !run_case_line("rules_cases.txt", lineno, t);
    }
    fclose(f);
    printf("rules_cases.txt: %d cases, %d failed\n", ran, failed);
    assert_true(ran >= 50);
    assert_int_equal(failed, 0);
}

/* ---- requests ------------------------------------------------------------ */

typedef struct hdrs {
    const char *name[4], *value[4];
    size_t n;
} hdrs;

static const char *hdr_lookup(void *ctx, const char *name, size_t *len)
{
    const hdrs *h = ctx;
    for (size_t i = 0; i < h->n; i++)
        if (strcasecmp(h->name[i], name) == 0) {
            *len = strlen(h->value[i]);
            return h->value[i];
        }
    return NULL;
}

static dt_request_info req_make(const char *method, const char *host, const char *path,
                                const char *query, const char *client)
{
    dt_request_info r = {0};
    r.method = S(method);
    r.scheme = S("http");
    r.host = S(host);
    r.path = S(path);
    r.query = S(query ? query : "");
    r.client_ip = S(client ? client : "127.0.0.1");
    r.now = 1800000000; /* 2027-01-15 */
    return r;
}

static char locbuf[DT_LOCATION_MAX];

static dt_verdict decide(const dt_config *cfg, const dt_request_info *req)
{
    dt_verdict v = {.location = locbuf, .location_cap = sizeof(locbuf)};
    assert_int_equal(dt_rules_decide(cfg, req, &v), DT_OK);
    return v;
}

/* ---- hand-built route sets (for properties and random equivalence) ------- */

typedef struct spec {
    const char *name;
    const char *hosts;   /* space-separated patterns, or NULL */
    const char *prefix;  /* NULL: none */
    const char *path;    /* NULL: none */
    const char *regex;   /* NULL: none */
    const char *methods; /* space-separated, or NULL */
    const char *to;      /* Location template; NULL: a relay route */
    int percent;         /* redirect: 0 means the default 100 */
} spec;

static dt_upstream upstream_legacy = {.name = "legacy", .url = "http://127.0.0.1:9000"};

static size_t split_words(const char *s, char ***out)
{
    size_t n = 0;
    char *copy = strdup(s), *save = NULL;
    *out = calloc(16, sizeof(char *));
    for (char *w = strtok_r(copy, " ", &save); w && n < 16; w = strtok_r(NULL, " ", &save))
        (*out)[n++] = strdup(w);
    free(copy);
    return n;
}

static void build_hosts(dt_match *m, const char *hosts)
{
    char **words;
    m->nhosts = split_words(hosts, &words);
    m->hosts = calloc(m->nhosts, sizeof(*m->hosts));
    for (size_t i = 0; i < m->nhosts; i++) {
        bool wild = strncmp(words[i], "*.", 2) == 0;
        m->hosts[i].wildcard = wild;
        m->hosts[i].name = strdup(words[i] + (wild ? 1 : 0));
        m->hosts[i].len = strlen(m->hosts[i].name);
        free(words[i]);
    }
    free(words);
}

static void build_match(dt_match *m, const spec *s)
{
    if (s->hosts)
        build_hosts(m, s->hosts);
    if (s->prefix) {
        m->prefix = strdup(s->prefix);
        m->prefix_len = strlen(s->prefix);
    }
    if (s->path) {
        m->path = strdup(s->path);
        m->path_len = strlen(s->path);
    }
    if (s->regex) {
        m->regex_src = strdup(s->regex);
        assert_int_equal(regcomp(&m->regex, s->regex, REG_EXTENDED), 0);
        m->regex_groups = m->regex.re_nsub;
    }
    if (s->methods)
        m->nmethods = split_words(s->methods, &m->methods);
}

static void build_route(dt_route *r, const spec *s, size_t index)
{
    char err[128];
    memset(r, 0, sizeof(*r));
    r->name = strdup(s->name);
    r->index = index;
    r->line = (int)index + 1;
    build_match(&r->match, s);
    if (!s->to) {
        r->kind = DT_ROUTE_RELAY;
        r->relay.upstream = &upstream_legacy;
        return;
    }
    r->kind = DT_ROUTE_REDIRECT;
    r->redirect.to = dt_template_compile(s->to, err, sizeof(err));
    assert_non_null(r->redirect.to);
    r->redirect.status = 307;
    r->redirect.percent = s->percent ? s->percent : 100;
    r->redirect.retry_after = -1;
    r->redirect.rr = calloc(1, sizeof(atomic_uint));
}

static dt_config *config_from_specs(const spec *specs, size_t n)
{
    dt_config *cfg = calloc(1, sizeof(*cfg));
    cfg->routes = calloc(n ? n : 1, sizeof(dt_route));
    cfg->nroutes = n;
    for (size_t i = 0; i < n; i++)
        build_route(&cfg->routes[i], &specs[i], i);
    cfg->rules = dt_ruleset_build(cfg->routes, n);
    assert_non_null(cfg->rules);
    return cfg;
}

static void free_words(char **w, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(w[i]);
    free(w);
}

static void free_route(dt_route *r)
{
    dt_match *m = &r->match;
    for (size_t h = 0; h < m->nhosts; h++)
        free(m->hosts[h].name);
    free(m->hosts);
    free(m->prefix);
    free(m->path);
    if (m->regex_src)
        regfree(&m->regex);
    free(m->regex_src);
    free_words(m->methods, m->nmethods);
    if (r->kind == DT_ROUTE_REDIRECT) {
        dt_template_free(r->redirect.to);
        free(r->redirect.rr);
        free_words(r->redirect.targets, r->redirect.ntargets);
    }
    free(r->name);
}

static void free_specs_config(dt_config *cfg)
{
    dt_ruleset_free(cfg->rules);
    for (size_t i = 0; i < cfg->nroutes; i++)
        free_route(&cfg->routes[i]);
    free(cfg->routes);
    free(cfg);
}

/* ---- properties ---------------------------------------------------------- */

static void client_ip(unsigned i, char *buf, size_t cap)
{
    snprintf(buf, cap, "198.%u.%u.%u", (i >> 16) & 255, (i >> 8) & 255, i & 255);
}

static void test_percent_distribution(void **state)
{
    const spec specs[] = {
        {.name = "v2", .prefix = "/api/", .to = "/v2$uri", .percent = 25},
        {.name = "rest", .prefix = "/"},
    };
    dt_config *cfg = config_from_specs(specs, DT_ARRAY_LEN(specs));
    char ip[32];
    int redirected = 0;
    for (unsigned i = 0; i < 10000; i++) {
        client_ip(i, ip, sizeof(ip));
        dt_request_info req = req_make("GET", "a.example", "/api/x", NULL, ip);
        dt_verdict v = decide(cfg, &req);
        if (v.kind == DT_VERDICT_REDIRECT) {
            redirected++;
            assert_string_equal(v.location, "/v2/api/x");
        } else {
            assert_int_equal(v.kind, DT_VERDICT_RELAY);
            assert_string_equal(v.route->name, "rest");
        }
        /* The same client gets the same answer every time. */
        dt_verdict again = decide(cfg, &req);
        assert_int_equal(again.kind, v.kind);
    }
    assert_in_range(redirected, 2300, 2700);
    free_specs_config(cfg);
}

static void test_ramp_superset(void **state)
{
    const spec specs[] = {{.name = "ramped", .prefix = "/", .to = "/new$uri"}};
    dt_config *cfg = config_from_specs(specs, 1);
    dt_ramp_step steps[] = {{1000, 5}, {2000, 25}, {3000, 75}, {4000, 100}};
    cfg->routes[0].redirect.ramp = steps;
    cfg->routes[0].redirect.nramp = DT_ARRAY_LEN(steps);
    const int64_t at[] = {999, 1000, 2500, 3000, 3999, 4000};
    const int want_pct[] = {0, 5, 25, 75, 75, 100};
    int counts[DT_ARRAY_LEN(at)] = {0};
    char ip[32];
    for (unsigned i = 0; i < 10000; i++) {
        client_ip(i, ip, sizeof(ip));
        bool was_in = false;
        for (size_t k = 0; k < DT_ARRAY_LEN(at); k++) {
            dt_request_info req = req_make("GET", "", "/p", NULL, ip);
            req.now = at[k];
            bool in = decide(cfg, &req).kind == DT_VERDICT_REDIRECT;
            assert_true(!was_in || in); /* once in, in for good as the ramp grows */
            was_in = in;
            counts[k] += in;
        }
    }
    for (size_t k = 0; k < DT_ARRAY_LEN(at); k++) {
        assert_int_equal(dt_rules_percent_at(&cfg->routes[0].redirect, at[k]), want_pct[k]);
        if (abs(counts[k] - want_pct[k] * 100) > 200)
            fail_msg("at %lld: %d of 10000 in, want %d%%", (long long)at[k], counts[k],
                     want_pct[k]);
    }
    cfg->routes[0].redirect.ramp = NULL;
    cfg->routes[0].redirect.nramp = 0;
    free_specs_config(cfg);
}

static void test_sticky_header_and_cookie(void **state)
{
    const spec specs[] = {{.name = "by-user", .prefix = "/", .to = "/b", .percent = 50}};
    dt_config *cfg = config_from_specs(specs, 1);
    dt_redirect *rd = &cfg->routes[0].redirect;
    rd->sticky = DT_STICKY_HEADER;
    rd->sticky_name = "X-User";
    /* The same user from many addresses: one answer. */
    hdrs h = {.name = {"x-user"}, .value = {"alice"}, .n = 1};
    char ip[32];
    int first = -1;
    for (unsigned i = 0; i < 200; i++) {
        client_ip(i, ip, sizeof(ip));
        dt_request_info req = req_make("GET", "", "/p", NULL, ip);
        req.header = hdr_lookup;
        req.header_ctx = &h;
        int k = decide(cfg, &req).kind;
        if (first < 0)
            first = k;
        assert_int_equal(k, first);
    }
    /* Without the header the client IP decides: both sides occur. */
    int seen[3] = {0};
    for (unsigned i = 0; i < 200; i++) {
        client_ip(i, ip, sizeof(ip));
        dt_request_info req = req_make("GET", "", "/p", NULL, ip);
        seen[decide(cfg, &req).kind]++;
    }
    assert_true(seen[DT_VERDICT_REDIRECT] > 50 && seen[DT_VERDICT_NO_ROUTE] > 50);
    /* cookie:uid reads the Cookie header. */
    rd->sticky = DT_STICKY_COOKIE;
    rd->sticky_name = "uid";
    hdrs c = {.name = {"Cookie"}, .value = {"a=1; uid=alice"}, .n = 1};
    for (unsigned i = 0; i < 200; i++) {
        client_ip(i, ip, sizeof(ip));
        dt_request_info req = req_make("GET", "", "/p", NULL, ip);
        req.header = hdr_lookup;
        req.header_ctx = &c;
        assert_int_equal(decide(cfg, &req).kind, first);
    }
    rd->sticky_name = NULL;
    free_specs_config(cfg);
}

static void test_targets_round_robin(void **state)
{
    const spec specs[] = {{.name = "lb", .prefix = "/", .to = "$target$request_uri"}};
    dt_config *cfg = config_from_specs(specs, 1);
    dt_redirect *rd = &cfg->routes[0].redirect;
    rd->ntargets =
        split_words("https://a.example https://b.example https://c.example", &rd->targets);
    const char *want[] = {"https://a.example/x?q=1", "https://b.example/x?q=1",
                          "https://c.example/x?q=1"};
    for (int i = 0; i < 9; i++) {
        dt_request_info req = req_make("GET", "", "/x", "q=1", NULL);
        dt_verdict v = decide(cfg, &req);
        assert_string_equal(v.location, want[i % 3]);
    }
    free_specs_config(cfg);
}

static void test_location_overflow(void **state)
{
    const spec specs[] = {{.name = "long", .prefix = "/", .to = "https://new.example$uri"}};
    dt_config *cfg = config_from_specs(specs, 1);
    char small[32];
    dt_verdict v = {.location = small, .location_cap = sizeof(small)};
    /* "https://new.example" (19) + "/abcdefghijkl" (13) = 32: one byte short for the NUL. */
    dt_request_info req = req_make("GET", "", "/abcdefghijkl", NULL, NULL);
    assert_int_equal(dt_rules_decide(cfg, &req, &v), DT_ETOOBIG);
    assert_int_equal(v.kind, DT_VERDICT_REDIRECT);
    assert_ptr_equal(v.route, &cfg->routes[0]);
    assert_int_equal(v.location_len, 0);
    req.path = S("/abcdefghijk");
    assert_int_equal(dt_rules_decide(cfg, &req, &v), DT_OK);
    assert_string_equal(v.location, "https://new.example/abcdefghijk");
    /* Encoding grows a value threefold; the limit counts encoded bytes. */
    req.path = S("/\r\n\r");
    assert_int_equal(dt_rules_decide(cfg, &req, &v), DT_OK);
    assert_string_equal(v.location, "https://new.example/%0D%0A%0D");
    req.path = S("/\r\n\r\n");
    assert_int_equal(dt_rules_decide(cfg, &req, &v), DT_ETOOBIG);
    free_specs_config(cfg);
}

static void assert_location_clean(const dt_verdict *v)
{
    assert_int_equal(v->location_len, strlen(v->location));
    for (size_t i = 0; i < v->location_len; i++)
        assert_true((unsigned char)v->location[i] > 0x20 && (unsigned char)v->location[i] < 0x7f);
}

/* Raw bytes from the request (which the cases file cannot hold) reach Location encoded. */
static void test_raw_bytes_encoded(void **state)
{
    const spec specs[] = {
        {.name = "g", .regex = "^/g/([^/]*)/(.*)$", .to = "https://$host/n/$2/$1$is_args$args"},
        {.name = "p", .prefix = "/p/", .to = "/n/$suffix"},
    };
    dt_config *cfg = config_from_specs(specs, DT_ARRAY_LEN(specs));
    dt_request_info req = req_make("GET", "h.example\r\nX: y",
                                   "/g/a\r\nSet-Cookie: s=1/\x7f\xc3\xa9 \t", "q=\n", NULL);
    dt_verdict v = decide(cfg, &req);
    assert_string_equal(v.location, "https://h.example%0D%0AX:%20y/n/%7F%C3%A9%20%09/"
                                    "a%0D%0ASet-Cookie:%20s=1?q=%0A");
    assert_location_clean(&v);
    /* A NUL cannot come through the server's request line, but would be encoded too. */
    req.path = (dt_str){"/p/a\0b\r", 7};
    v = decide(cfg, &req);
    assert_string_equal(v.location, "/n/a%00b%0D");
    assert_location_clean(&v);
    free_specs_config(cfg);
}

static void test_regex_literal_prefix(void **state)
{
    const struct {
        const char *re, *want;
    } cases[] = {
        {"^/api/v1/(.*)$", "/api/v1/"},
        {"^/svc123/(.*)$", "/svc123/"},
        {"/api/", ""},    /* not anchored */
        {"^/a|^/b", ""},  /* alternation */
        {"^/ab?c", "/a"}, /* b is optional */
        {"^/ab*c", "/a"},
        {"^/ab{0,2}", "/a"},
        {"^/ab+c", "/ab"},     /* b at least once, then more b's */
        {"^/a\\.b/", "/a.b/"}, /* an escaped special is literal */
        {"^/a\\wb", "/a"},     /* GNU \w is not */
        {"^/a.b", "/a"},
        {"^/x[0-9]", "/x"},
        {"^/(a)", "/"},
        {"^/files\\$", "/files$"},
        {"^/end$", "/end"},
        {"^", ""},
        {"^*", ""},
    };
    char out[64];
    for (size_t i = 0; i < DT_ARRAY_LEN(cases); i++) {
        size_t n = dt_regex_literal_prefix(cases[i].re, out, sizeof(out));
        if (strcmp(out, cases[i].want) != 0 || n != strlen(out))
            fail_msg("%s: \"%s\", want \"%s\"", cases[i].re, out, cases[i].want);
    }
    assert_int_equal(dt_regex_literal_prefix("^/abcdef", out, 4), 3);
    assert_string_equal(out, "/ab");
}

/* More candidates than DT_RULES_CANDIDATES_MAX: the scan fallback gives the same answer. */
static void test_candidate_overflow(void **state)
{
    size_t n = DT_RULES_CANDIDATES_MAX + 50;
    spec *specs = calloc(n, sizeof(*specs));
    char(*names)[16] = calloc(n, 16);
    for (size_t i = 0; i < n - 1; i++) {
        snprintf(names[i], 16, "m%zu", i);
        specs[i] = (spec){.name = names[i], .methods = "PATCH", .to = "/patched"};
    }
    specs[n - 1] = (spec){.name = "last", .prefix = "/", .to = "/last$uri"};
    dt_config *cfg = config_from_specs(specs, n);
    dt_request_info req = req_make("GET", "", "/x", NULL, NULL);
    dt_verdict v = decide(cfg, &req);
    assert_string_equal(v.location, "/last/x");
    req.method = S("PATCH");
    v = decide(cfg, &req);
    assert_string_equal(v.route->name, "m0");
    free_specs_config(cfg);
    free(specs);
    free(names);
}

/* "^LIT(.*)$" is decided without regexec(); a NUL in the path goes back to regexec(). */
static void test_simple_regex_fast_path(void **state)
{
    const spec specs[] = {
        {.name = "a", .regex = "^/a/(.*)$", .to = "/t/$1"},
        {.name = "b", .regex = "^/b/(.*)", .to = "/u/$1"},
    };
    dt_config *cfg = config_from_specs(specs, DT_ARRAY_LEN(specs));
    const dt_str paths[] = {S("/a/x/y"),    S("/a/"),       S("/a"),       S("/b/q"),
                            {"/a/x\0y", 6}, {"/b/x\0y", 6}, S("/a/\xff\n")};
    for (size_t i = 0; i < DT_ARRAY_LEN(paths); i++) {
        dt_request_info req = req_make("GET", "h", "/", NULL, NULL);
        req.path = paths[i];
        dt_verdict fast = decide(cfg, &req);
        char fastloc[64];
        snprintf(fastloc, sizeof(fastloc), "%s", fast.location);
        struct dt_ruleset *rs = cfg->rules;
        cfg->rules = NULL;
        dt_verdict slow = decide(cfg, &req);
        cfg->rules = rs;
        assert_int_equal(fast.kind, slow.kind);
        assert_string_equal(fastloc, slow.location);
    }
    dt_request_info req = req_make("GET", "h", "/a/x/y", NULL, NULL);
    assert_string_equal(decide(cfg, &req).location, "/t/x/y");
    free_specs_config(cfg);
}

/* ---- the index never changes an answer ----------------------------------- */

static const char *const pick_paths[] = {"/x.y/z", "/api/", "/a/\xff",   "/",         "/a",
                                         "/a/",    "/a/b",  "/a/b/c",    "/api/v1/x", "/api/v2",
                                         "/b",     "/b/1",  "/static/x", "/x.y",      "/svc7/q"};
static const char *const pick_hosts[] = {"a.example",  "b.example", "x.a.example", "A.Example",
                                         "a.example.", "",          "c.test"};
static const char *const pick_methods[] = {"GET", "HEAD", "POST", "PUT", "DELETE"};

static const char *pick(unsigned *seed, const char *const *from, size_t n)
{
    return from[(size_t)rand_r(seed) % n];
}

static void random_spec(unsigned *seed, spec *s, char *name, size_t cap, size_t i)
{
    static const char *const hosts[] = {"a.example", "*.a.example", "b.example a.example",
                                        "*.example", "c.test"};
    static const char *const regexes[] = {
        "^/api/v[0-9]/(.*)$", "^/a/(b)",   "/b",         "^/svc7/",    "^/a?b", "x\\.y$",
        "^/(a|b)/",           "^/a/(.*)$", "^/api/(.*)", "^/x\\.(.*)$"};
    static const char *const methods[] = {"GET", "POST PUT", "DELETE"};
    snprintf(name, cap, "r%zu", i);
    memset(s, 0, sizeof(*s));
    s->name = name;
    switch (rand_r(seed) % 5) {
    case 0:
        s->path = pick(seed, pick_paths, DT_ARRAY_LEN(pick_paths));
        break;
    case 1:
        s->prefix = pick(seed, pick_paths, DT_ARRAY_LEN(pick_paths));
        break;
    case 2:
        s->regex = regexes[rand_r(seed) % DT_ARRAY_LEN(regexes)];
        break;
    default:
        break;
    }
    if (rand_r(seed) % 3 == 0)
        s->hosts = hosts[rand_r(seed) % DT_ARRAY_LEN(hosts)];
    if (rand_r(seed) % 4 == 0)
        s->methods = methods[rand_r(seed) % DT_ARRAY_LEN(methods)];
    if (rand_r(seed) % 2)
        s->to = "/to/$1$suffix";
}

static void test_index_equals_scan(void **state)
{
    unsigned seed = 12345;
    for (int round = 0; round < 200; round++) {
        spec specs[12];
        char names[12][16];
        size_t n = 1 + (size_t)rand_r(&seed) % 12;
        for (size_t i = 0; i < n; i++)
            random_spec(&seed, &specs[i], names[i], sizeof(names[i]), i);
        dt_config *cfg = config_from_specs(specs, n);
        for (int q = 0; q < 100; q++) {
            dt_request_info req =
                req_make(pick(&seed, pick_methods, DT_ARRAY_LEN(pick_methods)),
                         pick(&seed, pick_hosts, DT_ARRAY_LEN(pick_hosts)),
                         pick(&seed, pick_paths, DT_ARRAY_LEN(pick_paths)), NULL, NULL);
            dt_verdict a = decide(cfg, &req);
            struct dt_ruleset *rs = cfg->rules;
            cfg->rules = NULL; /* decide by scanning every route */
            char scanbuf[256];
            dt_verdict b = {.location = scanbuf, .location_cap = sizeof(scanbuf)};
            assert_int_equal(dt_rules_decide(cfg, &req, &b), DT_OK);
            cfg->rules = rs;
            assert_int_equal(a.kind, b.kind);
            assert_ptr_equal(a.route, b.route);
            if (a.kind == DT_VERDICT_REDIRECT)
                assert_string_equal(a.location, b.location);
        }
        free_specs_config(cfg);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_cases_file),          cmocka_unit_test(test_percent_distribution),
        cmocka_unit_test(test_ramp_superset),       cmocka_unit_test(test_sticky_header_and_cookie),
        cmocka_unit_test(test_targets_round_robin), cmocka_unit_test(test_location_overflow),
        cmocka_unit_test(test_raw_bytes_encoded),   cmocka_unit_test(test_regex_literal_prefix),
        cmocka_unit_test(test_candidate_overflow),  cmocka_unit_test(test_simple_regex_fast_path),
        cmocka_unit_test(test_index_equals_scan),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    for (size_t i = 0; i < ncache; i++)
        dt_config_unref(cache[i].cfg);
    return rc;
}
