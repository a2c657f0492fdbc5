/*
 * bench_rules.c - cost of one route decision as the config grows.
 *
 * Four generated configs, loaded with dt_config_load() like the server does:
 *   10 routes        a mix of path, prefix, regex, host and catch-all routes
 *   10,000 prefixes  "/svcN/" routes
 *   1,000 regexes    "^/svcN/(.*)$" (anchored, with a literal prefix)
 *   1,000,000 map    one map route with a million entries
 * Each is driven with a fixed mix of hits and misses; the figure is the mean
 * ns per dt_rules_decide() over the best of several rounds (other processes
 * only ever add time), and its ratio to the 10-route config. The index is
 * meant to keep every ratio within 2x.
 *
 * Usage: bench_rules [DIR]   (generated files go to DIR, default a fresh
 * directory under /tmp, removed afterwards). Built by CMake, never run by
 * ctest.
 */
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "detour/config.h"
#include "detour/rules.h"

#define NREQ 4096            /* distinct requests per config, cycled */
#define ROUND_NS 250000000LL /* one timed round */
#define ROUNDS 7             /* the best round counts: the machine may be shared */

static char workdir[512];

static void die(const char *what)
{
    fprintf(stderr, "bench_rules: %s\n", what);
    exit(1);
}

static FILE *create(const char *name, char *path, size_t cap)
{
    snprintf(path, cap, "%s/%s", workdir, name);
    FILE *f = fopen(path, "w");
    if (!f)
        die(path);
    return f;
}

static void header(FILE *f)
{
    fprintf(f, "upstreams = { legacy = { url = \"http://127.0.0.1:9000\"; }; };\nroutes = (\n");
}

static void footer(FILE *f)
{
    fprintf(f, "  { name = \"catch-all\"; match = { prefix = \"/\"; };\n"
               "    relay = { upstream = \"legacy\"; }; }\n);\n");
    fclose(f);
}

static void gen_small(char *path, size_t cap)
{
    FILE *f = create("small.cfg", path, cap);
    header(f);
    fprintf(
        f, "  { name = \"about\"; match = { path = \"/about\"; }; redirect = { to = \"/about-us\"; "
           "}; },\n"
           "  { name = \"checkout\"; match = { host = \"shop.example\"; prefix = \"/checkout/\"; "
           "methods = [\"POST\", \"PUT\"]; };\n"
           "    redirect = { to = \"https://maint.example/checkout/$suffix$is_args$args\"; }; },\n"
           "  { name = \"v1\"; match = { regex = \"^/api/v1/(.*)$\"; };\n"
           "    redirect = { to = \"/api/v2/$1$is_args$args\"; percent = 25; }; },\n"
           "  { name = \"static\"; match = { prefix = \"/static/\"; }; relay = { upstream = "
           "\"legacy\"; }; },\n"
           "  { name = \"apps\"; match = { host = \"*.apps.example\"; };\n"
           "    redirect = { to = \"https://apps.example$uri\"; }; },\n"
           "  { name = \"images\"; match = { prefix = \"/img/\"; methods = [\"GET\"]; };\n"
           "    redirect = { to = \"https://cdn.example/img/$suffix\"; }; },\n"
           "  { name = \"users\"; match = { regex = \"^/users/([0-9]+)$\"; }; redirect = { to = "
           "\"/u/$1\"; }; },\n"
           "  { name = \"blog\"; match = { prefix = \"/blog/\"; }; redirect = { to = "
           "\"https://blog.example/$suffix\"; status = 301; }; },\n"
           "  { name = \"health\"; match = { path = \"/healthz\"; }; relay = { upstream = "
           "\"legacy\"; }; },\n");
    footer(f);
}

static void gen_prefixes(char *path, size_t cap, int n)
{
    FILE *f = create("prefixes.cfg", path, cap);
    header(f);
    for (int i = 0; i < n; i++)
        fprintf(f,
                "  { name = \"svc%d\"; match = { prefix = \"/svc%d/\"; }; redirect = { to = "
                "\"/new/svc%d/$suffix\"; }; },\n",
                i, i, i);
    footer(f);
}

static void gen_regexes(char *path, size_t cap, int n)
{
    FILE *f = create("regexes.cfg", path, cap);
    header(f);
    for (int i = 0; i < n; i++)
        fprintf(f,
                "  { name = \"svc%d\"; match = { regex = \"^/svc%d/(.*)$\"; }; redirect = { to = "
                "\"/new/svc%d/$1\"; }; },\n",
                i, i, i);
    footer(f);
}

static void gen_map(char *path, size_t cap, int n)
{
    char mpath[600];
    FILE *m = create("big.map", mpath, sizeof(mpath));
    for (int i = 0; i < n; i++)
        fprintf(m, "/old/page-%d.html /new/%d\n", i, i);
    fclose(m);
    FILE *f = create("map.cfg", path, cap);
    header(f);
    fprintf(f, "  { name = \"bulk\"; redirect = { map = \"big.map\"; status = 301; }; },\n");
    footer(f);
}

typedef struct reqset {
    char paths[NREQ][64];
    const char *hosts[NREQ];
    const char *methods[NREQ];
} reqset;

static void fill_small(reqset *r)
{
    static const char *const paths[] = {
        "/about",    "/checkout/pay",    "/api/v1/users/7", "/static/app.js", "/img/logo.png",
        "/users/42", "/blog/2026/hello", "/healthz",        "/other/page",    "/api/v2/x"};
    static const char *const hosts[] = {"shop.example", "x.apps.example", "www.example"};
    static const char *const methods[] = {"GET", "POST", "GET", "HEAD"};
    for (int i = 0; i < NREQ; i++) {
        snprintf(r->paths[i], sizeof(r->paths[i]), "%s", paths[i % 10]);
        r->hosts[i] = hosts[i % 3];
        r->methods[i] = methods[i % 4];
    }
}

/* Hits on random routes of N, one request in eight a miss. */
static void fill_numbered(reqset *r, int n, const char *fmt, const char *miss)
{
    unsigned seed = 42;
    for (int i = 0; i < NREQ; i++) {
        if (i % 8 == 7)
            snprintf(r->paths[i], sizeof(r->paths[i]), "%s", miss);
        else
            snprintf(r->paths[i], sizeof(r->paths[i]), fmt, rand_r(&seed) % n);
        r->hosts[i] = "www.example";
        r->methods[i] = "GET";
    }
}

/* Mean ns per decision over one round of at least ROUND_NS. */
static double round_ns(const dt_config *cfg, const dt_request_info *req)
{
    static char loc[DT_LOCATION_MAX];
    long long n = 0, t0 = dt_now_us() * 1000, t;
    do {
        for (int i = 0; i < NREQ; i++) {
            dt_verdict v = {.location = loc, .location_cap = sizeof(loc)};
            if (dt_rules_decide(cfg, &req[i], &v) != DT_OK)
                die("decide failed");
        }
        n += NREQ;
        t = dt_now_us() * 1000;
    } while (t - t0 < ROUND_NS);
    return (double)(t - t0) / (double)n;
}

static double run(const dt_config *cfg, const reqset *r)
{
    static dt_request_info req[NREQ];
    static char ips[NREQ][16];
    for (int i = 0; i < NREQ; i++) {
        snprintf(ips[i], sizeof(ips[i]), "10.0.%d.%d", (i >> 8) & 255, i & 255);
        req[i] = (dt_request_info){.method = {r->methods[i], strlen(r->methods[i])},
                                   .scheme = DT_STR_LIT("http"),
                                   .host = {r->hosts[i], strlen(r->hosts[i])},
                                   .path = {r->paths[i], strlen(r->paths[i])},
                                   .query = DT_STR_LIT("a=1"),
                                   .client_ip = {ips[i], strlen(ips[i])},
                                   .now = dt_wall_s()};
    }
    double best = 0;
    for (int k = 0; k < ROUNDS; k++) {
        double ns = round_ns(cfg, req);
        if (k == 0 || ns < best)
            best = ns;
    }
    return best;
}

static dt_config *load(const char *path)
{
    char err[512];
    dt_config *cfg = NULL;
    int64_t t0 = dt_now_ms();
    if (dt_config_load(path, &cfg, err, sizeof(err)) != DT_OK)
        die(err);
    fprintf(stderr, "loaded %s in %lld ms\n", path, (long long)(dt_now_ms() - t0));
    return cfg;
}

static double bench(const char *label, const char *path, const reqset *r, double base)
{
    dt_config *cfg = load(path);
    double ns = run(cfg, r);
    printf("%-26s %8.1f ns/decision  %5.2fx\n", label, ns, base > 0 ? ns / base : 1.0);
    dt_config_unref(cfg);
    unlink(path);
    return ns;
}

int main(int argc, char **argv)
{
    char path[600];
    bool own = argc < 2;
    snprintf(workdir, sizeof(workdir), "%s", own ? "/tmp/bench_rules.XXXXXX" : argv[1]);
    if (own && !mkdtemp(workdir))
        die("mkdtemp");
    reqset *r = malloc(sizeof(*r));
    if (!r)
        die("out of memory");

    gen_small(path, sizeof(path));
    fill_small(r);
    double base = bench("10 routes", path, r, 0);

    gen_prefixes(path, sizeof(path), 10000);
    fill_numbered(r, 10000, "/svc%d/some/page", "/nosuch/page");
    bench("10,000 prefix routes", path, r, base);

    gen_regexes(path, sizeof(path), 1000);
    fill_numbered(r, 1000, "/svc%d/some/page", "/nosuch/page");
    bench("1,000 regex routes", path, r, base);

    gen_map(path, sizeof(path), 1000000);
    fill_numbered(r, 1000000, "/old/page-%d.html", "/old/missing.html");
    bench("1,000,000-entry map route", path, r, base);

    snprintf(path, sizeof(path), "%s/big.map", workdir);
    unlink(path);
    if (own)
        rmdir(workdir);
    free(r);
    return 0;
}
