/*
 * test_config.c - dt_config_load(): every default, every parsed value,
 * route-over-global inheritance, reference counting, and a table of invalid
 * configs, each with the line and the message it must produce.
 *
 * Config files are written to a fresh directory under $DETOUR_TEST_TMP
 * (or /tmp) and removed at the end.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <ftw.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include "detour/config.h"
#include "detour/flag.h"
#include "detour/map.h"
#include "detour/template.h"

static char tmpdir[1024];

static void write_file(const char *name, const char *text)
{
    char path[PATH_MAX];
    snprintf(path, sizeof(path), "%s/%s", tmpdir, name);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    assert_int_equal(fputs(text, f) >= 0, 1);
    assert_int_equal(fclose(f), 0);
}

static const char *tmp_path(const char *name, char *buf, size_t cap)
{
    snprintf(buf, cap, "%s/%s", tmpdir, name);
    return buf;
}

/* Write TEXT as NAME in the temp dir and load it. */
static int load_text(const char *name, const char *text, dt_config **cfg, char *err, size_t errlen)
{
    char path[PATH_MAX];
    write_file(name, text);
    return dt_config_load(tmp_path(name, path, sizeof(path)), cfg, err, errlen);
}

static dt_config *load_ok(const char *text)
{
    char err[512] = "";
    dt_config *cfg = NULL;
    int rc = load_text("ok.cfg", text, &cfg, err, sizeof(err));
    if (rc != DT_OK)
        fail_msg("unexpected error: %s", err);
    assert_non_null(cfg);
    return cfg;
}

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    return remove(path);
}

static int group_setup(void **state)
{
    const char *base = getenv("DETOUR_TEST_TMP");
    if (!base || !*base)
        base = "/tmp";
    mkdir(base, 0755); /* ctest's testtmp may not exist yet */
    snprintf(tmpdir, sizeof(tmpdir), "%s/detour-config-XXXXXX", base);
    if (!mkdtemp(tmpdir))
        return -1;
    char path[PATH_MAX];
    static const char *files[] = {"cert.pem", "key.pem", "ca.pem"};
    for (size_t i = 0; i < DT_ARRAY_LEN(files); i++) {
        FILE *f = fopen(tmp_path(files[i], path, sizeof(path)), "w");
        if (!f)
            return -1;
        fputs("-----BEGIN TEST-----\n", f);
        fclose(f);
    }
    return 0;
}

static int group_teardown(void **state)
{
    nftw(tmpdir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    dt_flag_registry_clear();
    return 0;
}

/* ------------------------------------------------------------------------ */

static void test_defaults(void **state)
{
    dt_config *cfg = load_ok("# nothing but a comment\n");
    assert_int_equal(cfg->nlisten, 1);
    assert_string_equal(cfg->listen[0].text, "127.0.0.1:8080");
    const struct sockaddr_in *a4 = (const struct sockaddr_in *)&cfg->listen[0].addr;
    assert_int_equal(a4->sin_family, AF_INET);
    assert_int_equal(ntohs(a4->sin_port), 8080);
    assert_int_equal(ntohl(a4->sin_addr.s_addr), 0x7f000001);
    assert_null(cfg->listen[0].tls_cert);
    assert_int_equal(cfg->mode, DT_MODE_REVERSE);
    assert_null(cfg->admin);
    assert_string_equal(cfg->access_log, "-");
    assert_int_equal(cfg->log_format, DT_LOG_COMBINED);
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    assert_int_equal(cfg->workers, cpus < 1 ? 1 : cpus > 256 ? 256 : cpus);
    assert_int_equal(cfg->timeouts.connect_ms, 5000);
    assert_int_equal(cfg->timeouts.upstream_ms, 60000);
    assert_int_equal(cfg->timeouts.header_ms, 10000);
    assert_int_equal(cfg->timeouts.idle_ms, 60000);
    assert_int_equal(cfg->timeouts.drain_ms, 10000);
    assert_int_equal(cfg->limits.max_connections, 10000);
    assert_int_equal(cfg->limits.max_body_bytes, 1073741824);
    assert_int_equal(cfg->limits.max_header_bytes, 16384);
    assert_false(cfg->rewrite_302);
    assert_false(cfg->rewrite_301);
    assert_string_equal(cfg->via_name, "detour");
    assert_int_equal(cfg->nupstreams, 0);
    assert_int_equal(cfg->nroutes, 0);
    assert_int_equal(cfg->nexpects, 0);
    assert_false(cfg->forward.given);
    assert_int_equal(cfg->forward.nallow_clients, 2);
    assert_int_equal(cfg->forward.allow_clients[0].family, AF_INET);
    assert_int_equal(cfg->forward.allow_clients[0].bits, 8);
    assert_int_equal(cfg->forward.allow_clients[0].addr[0], 127);
    assert_int_equal(cfg->forward.allow_clients[1].family, AF_INET6);
    assert_int_equal(cfg->forward.allow_clients[1].bits, 128);
    assert_int_equal(cfg->forward.allow_clients[1].addr[15], 1);
    assert_int_equal(cfg->forward.nallow_destinations, 0);
    assert_int_equal(cfg->forward.nconnect_ports, 1);
    assert_int_equal(cfg->forward.connect_ports[0], 443);
    assert_non_null(cfg->rules);
    assert_int_equal(atomic_load(&cfg->refs), 1);
    assert_true(strstr(cfg->path, "/ok.cfg") != NULL);
    dt_config_unref(cfg);
}

/* The contract's own example loads as written. */
static void test_contract_example(void **state)
{
    dt_config *cfg = load_ok(
        "listen = \"127.0.0.1:8080\";\n"
        "mode = \"reverse\";\n"
        "admin = \"127.0.0.1:9901\";\n"
        "access_log = \"-\";\n"
        "log_format = \"combined\";\n"
        "workers = 0;\n"
        "timeouts = { connect_ms = 5000; upstream_ms = 60000; header_ms = 10000; idle_ms = 60000; "
        "drain_ms = 10000; };\n"
        "limits   = { max_connections = 10000; max_body_bytes = 1073741824; };\n"
        "rewrite_302 = false;\n"
        "rewrite_301 = false;\n"
        "upstreams = {\n"
        "  legacy = { url = \"http://127.0.0.1:9000\"; };\n"
        "};\n"
        "routes = (\n"
        "  { name = \"checkout-maintenance\";\n"
        "    match = { host = \"shop.example\"; prefix = \"/checkout/\"; methods = [\"POST\", "
        "\"PUT\"]; };\n"
        "    redirect = { to = \"https://maint.example/checkout/$suffix$is_args$args\"; };\n"
        "  },\n"
        "  { name = \"v1-to-v2\";\n"
        "    match = { regex = \"^/api/v1/(.*)$\"; };\n"
        "    redirect = { to = \"/api/v2/$1$is_args$args\"; percent = 25; };\n"
        "  },\n"
        "  { name = \"legacy\";\n"
        "    match = { prefix = \"/\"; };\n"
        "    relay = { upstream = \"legacy\"; rewrite_302 = true; };\n"
        "  }\n"
        ");\n"
        "expect = (\n"
        "  \"POST http://shop.example/checkout/pay?x=1 -> 307 "
        "https://maint.example/checkout/pay?x=1\",\n"
        "  \"GET http://shop.example/about -> relay legacy\"\n"
        ");\n");
    assert_int_equal(cfg->nroutes, 3);
    assert_string_equal(cfg->routes[0].name, "checkout-maintenance");
    assert_int_equal(cfg->routes[0].line, 15);
    assert_int_equal(cfg->routes[1].redirect.percent, 25);
    assert_int_equal(cfg->routes[1].match.regex_groups, 1);
    assert_ptr_equal(cfg->routes[2].relay.upstream, &cfg->upstreams[0]);
    assert_true(cfg->routes[2].relay.rewrite_302);
    assert_int_equal(cfg->nexpects, 2);
    assert_int_equal(cfg->expects[0].line, 29);
    assert_int_equal(cfg->expects[1].line, 30); /* libconfig alone says 31, the ")" line */
    dt_config_unref(cfg);
}

static const char full_config[] =
    "listen = ( \"*:8080\",\n" /* 1 */
    "  \"[::1]:8081\",\n"      /* 2 */
    "  { address = \"127.0.0.2:8443\"; tls = { cert = \"cert.pem\"; key = \"/dev/null\"; }; }\n"
    ");\n"                                /* 4 */
    "mode = \"forward\";\n"               /* 5 */
    "admin = \"127.0.0.1:9901\";\n"       /* 6 */
    "access_log = \"logs/access.log\";\n" /* 7 */
    "log_format = \"json\";\n"            /* 8 */
    "workers = 3;\n"                      /* 9 */
    "timeouts = { connect_ms = 1; upstream_ms = 2; header_ms = 3; idle_ms = 4; drain_ms = "
    "86400000; };\n"
    "limits = { max_connections = 1000000; max_body_bytes = 5000000000; max_header_bytes = 1024; "
    "};\n"
    "rewrite_302 = true;\n"                                   /* 12 */
    "rewrite_301 = false;\n"                                  /* 13 */
    "via_name = \"edge-1\";\n"                                /* 14 */
    "upstreams = {\n"                                         /* 15 */
    "  plain = { url = \"http://Origin.Example:8000/\"; };\n" /* 16 */
    "  secure = { url = \"https://secure.example\"; tls_verify = false; ca_file = \"ca.pem\"; };\n"
    "  v6 = { url = \"http://[2001:DB8::1]:80\"; };\n" /* 18 */
    "};\n"                                             /* 19 */
    "routes = (\n"                                     /* 20 */
    "  { name = \"everything\";\n"                     /* 21 */
    "    match = { host = [\"Shop.Example\", \"*.Example.ORG\"]; prefix = \"/p/\"; path = "
    "\"/p/x\";\n"
    "              regex = \"^/p/(a)(b)?$\"; methods = [\"get\", \"PURGE\"]; };\n"
    "    redirect = { to = \"$target/$2/$suffix\"; status = 308;\n"     /* 24 */
    "      ramp = ( { at = \"2026-12-01T00:00:00Z\"; percent = 5; },\n" /* 25 */
    "               { at = \"2026-12-08T00:00:00Z\"; percent = 50; } );\n"
    "      sticky = \"header:X-User\";\n" /* 27 */
    "      window = { from = \"2026-11-22T01:00:00Z\"; until = \"2026-11-22T03:00:00Z\"; };\n"
    "      when_file = \"maint.flag\";\n"                               /* 29 */
    "      targets = [\"https://a.example\", \"https://b.example\"];\n" /* 30 */
    "      retry_after = 120; dry_run = true; };\n"                     /* 31 */
    "  },\n"                                                            /* 32 */
    "  { match = { path = \"/old\"; };\n"                               /* 33 */
    "    redirect = { map = \"moves.map\"; sticky = \"cookie:uid\"; window = { until = "
    "\"2030-01-01T00:00:00Z\"; }; };\n"
    "  },\n"                                      /* 35 */
    "  { relay = { upstream = \"plain\"; }; },\n" /* 36 */
    "  { name = \"own\"; relay = { rewrite_302 = false; rewrite_301 = true; rewrite_location = "
    "false; }; }\n"
    ");\n"          /* 38 */
    "forward = {\n" /* 39 */
    "  allow_clients = [\"10.1.2.3\", \"192.168.7.9/16\", \"2001:db8::/32\"];\n"
    "  allow_destinations = [\"api.example.com\", \"*.example.net:8443\", \"10.0.0.0/8:80\",\n"
    "                        \"[2001:db8::/48]:443\", \"2001:db8:1::/64\"];\n"
    "  connect_ports = [443, 8443];\n"         /* 43 */
    "};\n"                                     /* 44 */
    "expect = (\n"                             /* 45 */
    "  \"GET http://x/ -> 404\",\n"            /* 46 */
    "  \"GET http://x/a -> \"\n"               /* 47 */
    "  \"404\" # joined with the line above\n" /* 48 */
    ");\n";                                    /* 49 */

static void check_full_globals(const dt_config *cfg)
{
    char path[PATH_MAX];
    assert_int_equal(cfg->nlisten, 3);
    assert_string_equal(cfg->listen[0].text, "*:8080");
    assert_int_equal(cfg->listen[0].addr.ss_family, AF_INET);
    assert_int_equal(((const struct sockaddr_in *)&cfg->listen[0].addr)->sin_addr.s_addr, 0);
    assert_int_equal(cfg->listen[1].addr.ss_family, AF_INET6);
    assert_int_equal(ntohs(((const struct sockaddr_in6 *)&cfg->listen[1].addr)->sin6_port), 8081);
    assert_int_equal(cfg->listen[1].addrlen, sizeof(struct sockaddr_in6));
    assert_int_equal(cfg->listen[1].line, 2);
    assert_string_equal(cfg->listen[2].text, "127.0.0.2:8443");
    assert_string_equal(cfg->listen[2].tls_cert, tmp_path("cert.pem", path, sizeof(path)));
    assert_string_equal(cfg->listen[2].tls_key, "/dev/null");
    assert_int_equal(cfg->mode, DT_MODE_FORWARD);
    assert_string_equal(cfg->admin->text, "127.0.0.1:9901");
    assert_string_equal(cfg->access_log, tmp_path("logs/access.log", path, sizeof(path)));
    assert_int_equal(cfg->log_format, DT_LOG_JSON);
    assert_int_equal(cfg->workers, 3);
    assert_int_equal(cfg->timeouts.connect_ms, 1);
    assert_int_equal(cfg->timeouts.upstream_ms, 2);
    assert_int_equal(cfg->timeouts.header_ms, 3);
    assert_int_equal(cfg->timeouts.idle_ms, 4);
    assert_int_equal(cfg->timeouts.drain_ms, 86400000);
    assert_int_equal(cfg->limits.max_connections, 1000000);
    assert_true(cfg->limits.max_body_bytes == 5000000000ull); /* libconfig alone wraps it */
    assert_int_equal(cfg->limits.max_header_bytes, 1024);
    assert_true(cfg->rewrite_302);
    assert_false(cfg->rewrite_301);
    assert_string_equal(cfg->via_name, "edge-1");
}

static void check_full_upstreams(const dt_config *cfg)
{
    char path[PATH_MAX];
    assert_int_equal(cfg->nupstreams, 3);
    const dt_upstream *p = dt_config_upstream(cfg, "plain");
    assert_non_null(p);
    assert_string_equal(p->url, "http://origin.example:8000");
    assert_string_equal(p->host, "origin.example");
    assert_string_equal(p->authority, "origin.example:8000");
    assert_int_equal(p->port, 8000);
    assert_false(p->https);
    assert_true(p->tls_verify);
    assert_null(p->ca_file);
    assert_int_equal(p->line, 16);
    assert_int_equal(p->index, 0);
    const dt_upstream *s = dt_config_upstream(cfg, "secure");
    assert_string_equal(s->url, "https://secure.example");
    assert_string_equal(s->authority, "secure.example");
    assert_int_equal(s->port, 443);
    assert_true(s->https);
    assert_false(s->tls_verify);
    assert_string_equal(s->ca_file, tmp_path("ca.pem", path, sizeof(path)));
    const dt_upstream *v6 = dt_config_upstream(cfg, "v6");
    assert_string_equal(v6->host, "2001:db8::1");
    assert_string_equal(v6->authority, "[2001:db8::1]");
    assert_string_equal(v6->url, "http://[2001:db8::1]");
    assert_int_equal(v6->port, 80);
    assert_int_equal(v6->index, 2);
    assert_null(dt_config_upstream(cfg, "nope"));
}

static void check_full_route0(const dt_config *cfg)
{
    const dt_route *r = &cfg->routes[0];
    assert_string_equal(r->name, "everything");
    assert_int_equal(r->line, 21);
    assert_int_equal(r->index, 0);
    assert_non_null(r->stats);
    assert_int_equal(r->kind, DT_ROUTE_REDIRECT);
    assert_int_equal(r->match.nhosts, 2);
    assert_string_equal(r->match.hosts[0].name, "shop.example");
    assert_false(r->match.hosts[0].wildcard);
    assert_string_equal(r->match.hosts[1].name, ".example.org");
    assert_int_equal(r->match.hosts[1].len, 12);
    assert_true(r->match.hosts[1].wildcard);
    assert_string_equal(r->match.prefix, "/p/");
    assert_int_equal(r->match.prefix_len, 3);
    assert_string_equal(r->match.path, "/p/x");
    assert_int_equal(r->match.path_len, 4);
    assert_string_equal(r->match.regex_src, "^/p/(a)(b)?$");
    assert_int_equal(r->match.regex_groups, 2);
    assert_int_equal(regexec(&r->match.regex, "/p/ab", 0, NULL, 0), 0);
    assert_int_equal(r->match.nmethods, 2);
    assert_string_equal(r->match.methods[0], "GET");
    assert_string_equal(r->match.methods[1], "PURGE");
    const dt_redirect *rd = &r->redirect;
    assert_string_equal(dt_template_source(rd->to), "$target/$2/$suffix");
    assert_int_equal(rd->status, 308);
    assert_int_equal(rd->nramp, 2);
    assert_int_equal(rd->ramp[0].at, 1796083200); /* 2026-12-01T00:00:00Z */
    assert_int_equal(rd->ramp[0].percent, 5);
    assert_int_equal(rd->ramp[1].at, 1796083200 + 7 * 86400);
    assert_int_equal(rd->ramp[1].percent, 50);
    assert_int_equal(rd->sticky, DT_STICKY_HEADER);
    assert_string_equal(rd->sticky_name, "X-User");
    assert_true(rd->has_from && rd->has_until);
    assert_int_equal(rd->until - rd->from, 7200);
    assert_non_null(rd->when_file);
    assert_false(dt_flag_present(rd->when_file));
    assert_int_equal(rd->ntargets, 2);
    assert_string_equal(rd->targets[1], "https://b.example");
    assert_non_null(rd->rr);
    assert_int_equal(atomic_load(rd->rr), 0);
    assert_int_equal(rd->retry_after, 120);
    assert_true(rd->dry_run);
    assert_null(rd->map);
}

static void check_full_routes(const dt_config *cfg)
{
    char path[PATH_MAX];
    assert_int_equal(cfg->nroutes, 4);
    check_full_route0(cfg);
    const dt_route *m = &cfg->routes[1];
    assert_string_equal(m->name, "route-2");
    assert_int_equal(m->index, 1);
    assert_string_equal(dt_template_source(m->redirect.to), "$mapped");
    assert_non_null(m->redirect.map);
    assert_int_equal(dt_map_count(m->redirect.map), 2);
    assert_int_equal(m->redirect.status, 307);
    assert_int_equal(m->redirect.percent, 100);
    assert_int_equal(m->redirect.retry_after, -1);
    assert_int_equal(m->redirect.sticky, DT_STICKY_COOKIE);
    assert_string_equal(m->redirect.sticky_name, "uid");
    assert_false(m->redirect.has_from);
    assert_true(m->redirect.has_until);
    assert_null(m->redirect.when_file);
    assert_int_equal(m->redirect.ntargets, 0);
    assert_false(m->redirect.dry_run);
    const dt_route *a = &cfg->routes[2];
    assert_string_equal(a->name, "route-3");
    assert_int_equal(a->kind, DT_ROUTE_RELAY);
    assert_ptr_equal(a->relay.upstream, dt_config_upstream(cfg, "plain"));
    assert_int_equal(a->match.nhosts + a->match.nmethods, 0);
    assert_null(a->match.prefix);
    assert_null(a->match.regex_src);
    const dt_route *own = &cfg->routes[3];
    assert_null(own->relay.upstream); /* forward mode: the request's own destination */
    struct dt_flag *flags[4];
    assert_int_equal(dt_config_flags(cfg, flags, 4), 1);
    assert_string_equal(dt_flag_path(flags[0]), tmp_path("maint.flag", path, sizeof(path)));
}

static void check_full_forward(const dt_config *cfg)
{
    const dt_forward *fw = &cfg->forward;
    assert_true(fw->given);
    assert_int_equal(fw->nallow_clients, 3);
    assert_int_equal(fw->allow_clients[0].bits, 32);
    assert_int_equal(fw->allow_clients[0].addr[3], 3);
    assert_int_equal(fw->allow_clients[1].bits, 16);
    assert_int_equal(fw->allow_clients[1].addr[2], 0); /* host bits cleared */
    assert_int_equal(fw->allow_clients[2].family, AF_INET6);
    assert_int_equal(fw->allow_clients[2].bits, 32);
    assert_int_equal(fw->nallow_destinations, 5);
    const dt_dest_rule *d = fw->allow_destinations;
    assert_false(d[0].is_cidr);
    assert_string_equal(d[0].host.name, "api.example.com");
    assert_int_equal(d[0].port, 0);
    assert_true(d[1].host.wildcard);
    assert_string_equal(d[1].host.name, ".example.net");
    assert_int_equal(d[1].port, 8443);
    assert_true(d[2].is_cidr);
    assert_int_equal(d[2].cidr.family, AF_INET);
    assert_int_equal(d[2].cidr.bits, 8);
    assert_int_equal(d[2].port, 80);
    assert_true(d[3].is_cidr);
    assert_int_equal(d[3].cidr.family, AF_INET6);
    assert_int_equal(d[3].cidr.bits, 48);
    assert_int_equal(d[3].port, 443);
    assert_int_equal(d[4].cidr.bits, 64);
    assert_int_equal(d[4].port, 0);
    assert_int_equal(fw->nconnect_ports, 2);
    assert_int_equal(fw->connect_ports[1], 8443);
}

static void test_full(void **state)
{
    write_file("moves.map", "# moved pages\n/old /new\n/older https://x.example/newer\n");
    dt_config *cfg = load_ok(full_config);
    check_full_globals(cfg);
    check_full_upstreams(cfg);
    check_full_routes(cfg);
    check_full_forward(cfg);
    assert_int_equal(cfg->nexpects, 2);
    assert_string_equal(cfg->expects[0].text, "GET http://x/ -> 404");
    assert_int_equal(cfg->expects[0].line, 46);
    assert_string_equal(cfg->expects[1].text, "GET http://x/a -> 404");
    assert_int_equal(cfg->expects[1].line, 47);
    assert_string_equal(dt_mode_name(cfg->mode), "forward");
    assert_string_equal(dt_mode_name(DT_MODE_TRANSPARENT), "transparent");
    assert_string_equal(dt_mode_name(DT_MODE_REVERSE), "reverse");
    dt_config_unref(cfg);
}

/* Relay routes take the global rewrite_302/301 unless they set their own. */
static void test_inheritance(void **state)
{
    static const struct {
        const char *global, *route;
        bool r302, r301, location;
    } cases[] = {
        {"", "", false, false, true},
        {"rewrite_302 = true;", "", true, false, true},
        {"rewrite_301 = true;", "", false, true, true},
        {"rewrite_302 = true; rewrite_301 = true;", "rewrite_302 = false;", false, true, true},
        {"", "rewrite_302 = true; rewrite_301 = true;", true, true, true},
        {"rewrite_302 = true;", "rewrite_location = false;", true, false, false},
    };
    for (size_t i = 0; i < DT_ARRAY_LEN(cases); i++) {
        char text[512];
        snprintf(text, sizeof(text),
                 "%s\nupstreams = { u = { url = \"http://127.0.0.1:9\"; }; };\n"
                 "routes = ( { relay = { upstream = \"u\"; %s }; } );\n",
                 cases[i].global, cases[i].route);
        dt_config *cfg = load_ok(text);
        const dt_relay *rl = &cfg->routes[0].relay;
        if (rl->rewrite_302 != cases[i].r302 || rl->rewrite_301 != cases[i].r301 ||
            rl->rewrite_location != cases[i].location)
            fail_msg("case %zu: got 302=%d 301=%d location=%d", i, rl->rewrite_302, rl->rewrite_301,
                     rl->rewrite_location);
        dt_config_unref(cfg);
    }
}

/* ------------------------------------------------------------------------ */
/* Invalid configs: each must name its file and line and say what is wrong.  */

typedef struct bad_case {
    const char *text;
    int line;
    const char *msg;  /* a substring of the message */
    const char *file; /* file the error names, relative to tmpdir; NULL: the config */
} bad_case;

#define UP "upstreams = { u = { url = \"http://127.0.0.1:9000\"; }; };\n"

static const bad_case bad_cases[] = {
    /* libconfig's own errors */
    {"a = 1;\nlisten = ;\n", 2, "syntax error", NULL},
    /* a string where a name belongs: libconfig leaks the string (tests/lsan.supp) */
    {"upstreams = {\n\"u\" = 1; };\n", 2, "syntax error", NULL},
    {"mode = \"reverse\";\nmode = \"forward\";\n", 2, "duplicate setting", NULL},
    /* unknown keys at every level */
    {"\nlistn = \"*:80\";\n", 2, "unknown key \"listn\" (did you mean \"listen\"?)", NULL},
    {"timeouts = {\n connect_ms = 1;\n idle = 5; };\n", 3, "unknown key \"idle\" in timeouts",
     NULL},
    {"limits = { max_conns = 5; };\n", 1, "unknown key \"max_conns\" in limits", NULL},
    {"upstreams = {\n u = { url = \"http://a\";\n verify = true; }; };\n", 3,
     "unknown key \"verify\" in upstreams.u", NULL},
    {"routes = ( {\n matcher = {}; } );\n", 2, "unknown key \"matcher\" (did you mean \"match\"?)",
     NULL},
    {"routes = ( { match = {\n hosts = \"a\"; }; redirect = { to = \"/\"; }; } );\n", 2,
     "unknown key \"hosts\" in match", NULL},
    {"routes = ( { redirect = {\n tu = \"/x\"; }; } );\n", 2,
     "unknown key \"tu\" in redirect (did you mean \"to\"?)", NULL},
    {UP "routes = ( { relay = {\n upstream = \"u\"; rewrite = true; }; } );\n", 3,
     "unknown key \"rewrite\" in relay", NULL},
    {"forward = {\n allow = []; };\n", 2, "unknown key \"allow\" in forward", NULL},
    {"listen = ( {\n address = \"*:80\"; cert = \"x\"; } );\n", 2, "unknown key \"cert\" in listen",
     NULL},
    {"routes = ( { redirect = { to = \"/\"; ramp = ( {\n at = \"2026-01-01T00:00:00Z\"; "
     "pct = 5; } ); }; } );\n",
     2, "unknown key \"pct\"", NULL},
    {"routes = ( { redirect = { to = \"/\"; window = {\n since = \"x\"; }; }; } );\n", 2,
     "unknown key \"since\"", NULL},
    /* wrong types */
    {"workers = \"4\";\n", 1, "workers: must be an integer", NULL},
    {"workers = 1.5;\n", 1, "workers: must be an integer", NULL},
    {"rewrite_302 = \"yes\";\n", 1, "rewrite_302: must be true or false", NULL},
    {"mode = reverse;\n", 1, "syntax error", NULL},
    {"timeouts = 5;\n", 1, "timeouts: must be a group", NULL},
    {"routes = { };\n", 1, "routes: must be a list", NULL},
    {"routes = ( \"x\" );\n", 1, "each route must be a group", NULL},
    {"routes = ( { redirect = { to = \"/\"; dry_run = 1; }; } );\n", 1,
     "redirect.dry_run: must be true or false", NULL},
    {"routes = ( { redirect = { to = \"/\"; when_file = 5; }; } );\n", 1,
     "redirect.when_file: must be a string", NULL},
    {"expect = ( \"GET http://a/ -> 404\",\n 5 );\n", 2, "expect: must be a string", NULL},
    {"access_log = \"\";\n", 1, "access_log: must not be empty", NULL},
    /* out of range */
    {"\n\nworkers = 257;\n", 3, "workers: 257 is out of range (0..256)", NULL},
    {"workers = -1;\n", 1, "out of range", NULL},
    {"timeouts = { connect_ms = 0; };\n", 1, "timeouts.connect_ms: 0 is out of range", NULL},
    {"timeouts = { drain_ms = 86400001; };\n", 1, "timeouts.drain_ms: 86400001 is out of range",
     NULL},
    {"limits = { max_connections = 0; };\n", 1, "limits.max_connections: 0 is out of range", NULL},
    {"limits = { max_connections = 4294967297; };\n", 1, "4294967297 is out of range", NULL},
    {"limits = { max_body_bytes = -1; };\n", 1, "limits.max_body_bytes: -1 is out of range", NULL},
    {"limits = { max_header_bytes = 512; };\n", 1, "max_header_bytes: 512 is out of range", NULL},
    {"mode = \"sideways\";\n", 1, "mode: \"sideways\" is not one of reverse, forward, transparent",
     NULL},
    {"log_format = \"xml\";\n", 1, "log_format: \"xml\" is not one of combined, json", NULL},
    {"via_name = \"de tour\";\n", 1, "via_name: \"de tour\" is not an HTTP token", NULL},
    /* addresses */
    {"listen = \"localhost:80\";\n", 1, "listen: cannot parse address \"localhost:80\"", NULL},
    {"listen = \"127.0.0.1\";\n", 1, "cannot parse address", NULL},
    {"listen = \"127.0.0.1:0\";\n", 1, "cannot parse address", NULL},
    {"listen = \"127.0.0.1:65536\";\n", 1, "cannot parse address", NULL},
    {"listen = \"::1:80\";\n", 1, "cannot parse address", NULL},
    {"listen = [ \"127.0.0.1:80\",\n  \"[::1]:x\"\n];\n", 2, "cannot parse address \"[::1]:x\"",
     NULL},
    {"listen = [ \"127.0.0.1:80\",\n  \"127.0.0.1:80\" ];\n", 2, "listed twice", NULL},
    {"listen = [];\n", 1, "listen: empty list", NULL},
    {"listen = ( {\n tls = { cert = \"cert.pem\"; key = \"key.pem\"; }; } );\n", 1,
     "listen: a group item needs an address", NULL},
    {"listen = ( { address = \"*:443\";\n tls = { cert = \"cert.pem\"; }; } );\n", 2,
     "both cert and key are required", NULL},
    {"listen = ( { address = \"*:443\";\n tls = { cert = \"nonexistent.pem\"; key = \"key.pem\"; "
     "}; } );\n",
     2, "cannot read", NULL},
    {"admin = \"127.0.0.1:99999\";\n", 1, "admin: cannot parse address", NULL},
    {"listen = \"*:8080\";\nadmin = \"127.0.0.1:8080\";\n", 2,
     "admin: \"127.0.0.1:8080\" collides with listen address \"*:8080\"", NULL},
    {"admin = \"127.0.0.1:8080\";\n", 1, "collides with listen address \"127.0.0.1:8080\"", NULL},
    /* upstreams */
    {"upstreams = {\n u = { tls_verify = true; };\n};\n", 2, "upstreams.u: url is required", NULL},
    {"upstreams = { u = {\n url = \"ftp://a\"; }; };\n", 2, "must start with http:// or https://",
     NULL},
    {"upstreams = { u = { url = \"http://a/app\"; }; };\n", 1, "must not have a path", NULL},
    {"upstreams = { u = { url = \"http://a/?x=1\"; }; };\n", 1, "must not have a query", NULL},
    {"upstreams = { u = { url = \"http://a:0\"; }; };\n", 1, "port that is not 1-65535", NULL},
    {"upstreams = { u = { url = \"http://user@a\"; }; };\n", 1, "user info", NULL},
    {"upstreams = { u = { url = \"http://\"; }; };\n", 1, "has no valid host", NULL},
    {"upstreams = { u = { url = \"http://[::g]:80\"; }; };\n", 1, "has no valid host", NULL},
    {"upstreams = { u = { url = \"https://a\";\n ca_file = \"missing.pem\"; }; };\n", 2,
     "upstreams.u.ca_file: cannot read", NULL},
    {"upstreams = { u = 5; };\n", 1, "upstreams.u: must be a group", NULL},
    /* routes: shape */
    {UP "routes = (\n { match = { prefix = \"/\"; };\n   redirect = { to = \"/x\"; };\n"
        "   relay = { upstream = \"u\"; }; } );\n",
     5, "exactly one of redirect and relay", NULL},
    {"routes = (\n {\n   match = { prefix = \"/\"; }; } );\n", 2, "has neither redirect nor relay",
     NULL},
    {UP "routes = ( { relay = {\n upstream = \"nope\"; }; } );\n", 3,
     "relay.upstream: unknown upstream \"nope\"", NULL},
    {UP "routes = ( { match = { prefix = \"/\"; };\n relay = { rewrite_302 = true; }; } );\n", 3,
     "relay: upstream is required in reverse mode", NULL},
    {"routes = ( { name = \"a\"; redirect = { to = \"/\"; }; },\n"
     " { name = \"a\"; redirect = { to = \"/\"; }; } );\n",
     2, "duplicate route name \"a\" (also the route on line 1)", NULL},
    {"routes = ( { redirect = { to = \"/\"; }; },\n"
     " { name = \"route-1\"; redirect = { to = \"/\"; }; } );\n",
     2, "duplicate route name \"route-1\"", NULL},
    {"routes = ( { name = \"a b\"; redirect = { to = \"/\"; }; } );\n", 1,
     "name: \"a b\" must be 1-128 letters", NULL},
    /* match */
    {"routes = ( { match = {\n prefix = \"api/\"; }; redirect = { to = \"/\"; }; } );\n", 2,
     "match.prefix: \"api/\" must start with '/'", NULL},
    {"routes = ( { match = { path = \"/a b\"; }; redirect = { to = \"/\"; }; } );\n", 1,
     "match.path: \"/a b\" must start with '/'", NULL},
    {"routes = ( { match = {\n regex = \"^/(a\"; }; redirect = { to = \"/\"; }; } );\n", 2,
     "match.regex: bad regular expression \"^/(a\": ", NULL},
    {"routes = ( { match = { host = [\"a.example\",\n \"exa mple.com\"\n ]; };\n"
     " redirect = { to = \"/\"; }; } );\n",
     2, "match.host: \"exa mple.com\" is not a host name", NULL},
    {"routes = ( { match = { host = \"a.example:80\"; }; redirect = { to = \"/\"; }; } );\n", 1,
     "without a port", NULL},
    {"routes = ( { match = { host = \"*\"; }; redirect = { to = \"/\"; }; } );\n", 1,
     "is not a host name", NULL},
    {"routes = ( { match = { host = []; }; redirect = { to = \"/\"; }; } );\n", 1,
     "match.host: empty list", NULL},
    {"routes = ( { match = { methods = [\"GET\", \"GE T\"]; }; redirect = { to = \"/\"; }; } );\n",
     1, "match.methods: \"GE T\" is not a method name", NULL},
    /* redirect */
    {"routes = ( { match = { prefix = \"/\"; };\n redirect = { status = 301; }; } );\n", 2,
     "redirect: to is required", NULL},
    {"routes = ( { redirect = { to = \"/\";\n status = 305; }; } );\n", 2,
     "redirect.status: 305 is not one of 301, 302, 303, 307, 308", NULL},
    {"routes = ( { redirect = { to = \"/\"; percent = 101; }; } );\n", 1,
     "redirect.percent: 101 is out of range (0..100)", NULL},
    {"routes = ( { redirect = { to = \"/\"; percent = 5;\n"
     " ramp = ( { at = \"2026-01-01T00:00:00Z\"; percent = 5; } ); }; } );\n",
     2, "percent and ramp exclude each other", NULL},
    {"routes = ( { redirect = { to = \"/\"; ramp = (\n"
     " { at = \"2026-01-02T00:00:00Z\"; percent = 5; },\n"
     " { at = \"2026-01-01T00:00:00Z\"; percent = 9; } ); }; } );\n",
     3, "strictly increasing", NULL},
    {"routes = ( { redirect = { to = \"/\"; ramp = (\n { at = \"2026-01-01T00:00:00Z\"; } ); }; } "
     ");\n",
     2, "needs both at and percent", NULL},
    {"routes = ( { redirect = { to = \"/\"; ramp = (\n { at = \"2026-02-30T00:00:00Z\"; percent = "
     "1; "
     "} ); }; } );\n",
     2, "is not a UTC time", NULL},
    {"routes = ( { redirect = { to = \"/\"; ramp = (); }; } );\n", 1, "non-empty list", NULL},
    {"routes = ( { redirect = { to = \"/\";\n sticky = \"ip\"; }; } );\n", 2,
     "redirect.sticky: \"ip\" is not client_ip, header:NAME or cookie:NAME", NULL},
    {"routes = ( { redirect = { to = \"/\"; sticky = \"header:\"; }; } );\n", 1,
     "not a valid header or cookie name", NULL},
    {"routes = ( { redirect = { to = \"/\"; sticky = \"cookie:a b\"; }; } );\n", 1,
     "not a valid header or cookie name", NULL},
    {"routes = ( { redirect = { to = \"/\"; window = { from = \"2026-01-02T00:00:00Z\";\n"
     " until = \"2026-01-01T00:00:00Z\"; }; }; } );\n",
     2, "redirect.window: until must be later than from", NULL},
    {"routes = ( { redirect = { to = \"/\"; window = {\n from = \"2026-01-02\"; }; }; } );\n", 2,
     "redirect.window.from: \"2026-01-02\" is not a UTC time", NULL},
    {"routes = ( { redirect = { to = \"$target\"; targets = []; }; } );\n", 1,
     "redirect.targets: empty list", NULL},
    {"routes = ( { redirect = { to = \"/\"; retry_after = -1; }; } );\n", 1,
     "redirect.retry_after: -1 is out of range", NULL},
    /* templates */
    {"routes = ( { redirect = {\n to = \"$target/x\"; }; } );\n", 2,
     "redirect.to: $target is used but the route has no targets", NULL},
    {"routes = ( { redirect = {\n to = \"/$mapped\"; }; } );\n", 2,
     "$mapped is used but the route has no map", NULL},
    {"routes = ( { match = { regex = \"^/(a)$\"; };\n redirect = { to = \"/$2\"; }; } );\n", 2,
     "$2 is used but match.regex has only 1 group(s)", NULL},
    {"routes = ( { match = { prefix = \"/a\"; };\n redirect = { to = \"/$1\"; }; } );\n", 2,
     "$1 is used but the route has no match.regex", NULL},
    {"routes = ( { match = { path = \"/a\"; };\n redirect = { to = \"/$suffix\"; }; } );\n", 2,
     "$suffix is used but the route has no match.prefix", NULL},
    {"routes = ( { redirect = {\n to = \"/$nope\"; }; } );\n", 2, "redirect.to: ", NULL},
    /* forward */
    {"forward = { allow_clients = [\"127.0.0.1\",\n \"10.0.0.0/33\"\n]; };\n", 2,
     "forward.allow_clients: \"10.0.0.0/33\" is not an address or a CIDR range", NULL},
    {"forward = { allow_clients = []; };\n", 1, "forward.allow_clients: empty list", NULL},
    {"forward = { allow_destinations = [\"a.example\", \"foo/bar\"]; };\n", 1,
     "forward.allow_destinations: cannot parse \"foo/bar\"", NULL},
    {"forward = { allow_destinations = [\"a.example:0\"]; };\n", 1, "port that is not 1-65535",
     NULL},
    {"forward = { allow_destinations = [\"[2001:db8::/32]x\"]; };\n", 1, "cannot parse", NULL},
    {"forward = { connect_ports = [443,\n 70000]; };\n", 2,
     "forward.connect_ports: 70000 is out of range (1..65535)", NULL},
    /* maps: the map's own errors name the map file and its line */
    {"routes = ( { redirect = {\n map = \"missing.map\"; }; } );\n", 2, "redirect.map: cannot read",
     NULL},
    {"routes = ( { redirect = { map = \"dup.map\"; }; } );\n", 3, "duplicate old path \"/a\"",
     "dup.map"},
    /* @include: errors name the included file */
    {"mode = \"forward\";\n@include \"inc-bad.cfg\"\n", 2, "syntax error", "inc-bad.cfg"},
    {"@include \"inc-unknown.cfg\"\n", 3, "unknown key \"bogus\"", "inc-unknown.cfg"},
};

static void check_bad_case(size_t i, const bad_case *c)
{
    char err[512] = "", expect[PATH_MAX + 32], path[PATH_MAX];
    static dt_config sentinel;
    dt_config *cfg = &sentinel; /* must come back NULL */
    int rc = load_text("bad.cfg", c->text, &cfg, err, sizeof(err));
    snprintf(expect, sizeof(expect),
             "%s:%d: ", tmp_path(c->file ? c->file : "bad.cfg", path, sizeof(path)), c->line);
    if (rc != DT_ECONFIG || cfg != NULL)
        fail_msg("case %zu (%s): rc %d, expected an error", i, c->msg, rc);
    if (strncmp(err, expect, strlen(expect)) != 0 || !strstr(err, c->msg))
        fail_msg("case %zu:\n  got      %s\n  expected %s...%s", i, err, expect, c->msg);
    if (getenv("DETOUR_TEST_VERBOSE"))
        print_message("%s\n", err + strlen(tmpdir) + 1);
}

static void test_bad_configs(void **state)
{
    write_file("dup.map", "/a /b\n# c\n/a /c\n");
    write_file("inc-bad.cfg", "workers = 2;\nx = ;\n");
    write_file("inc-unknown.cfg", "workers = 2;\n\nbogus = 1;\n");
    for (size_t i = 0; i < DT_ARRAY_LEN(bad_cases); i++)
        check_bad_case(i, &bad_cases[i]);
}

static void test_missing_file(void **state)
{
    char err[256], path[PATH_MAX];
    dt_config *cfg = NULL;
    tmp_path("does-not-exist.cfg", path, sizeof(path));
    assert_int_equal(dt_config_load(path, &cfg, err, sizeof(err)), DT_ECONFIG);
    assert_null(cfg);
    assert_true(strncmp(err, path, strlen(path)) == 0);
    assert_non_null(strstr(err, "No such file"));
}

/* A tiny error buffer truncates the message, never overflows it. */
static void test_short_error_buffer(void **state)
{
    char err[12];
    memset(err, 'x', sizeof(err));
    dt_config *cfg = NULL;
    assert_int_equal(load_text("short.cfg", "workers = 999;\n", &cfg, err, 8), DT_ECONFIG);
    assert_int_equal(strlen(err), 7);
    assert_int_equal(err[8], 'x');
}

/* @include is resolved against the config's directory, and included settings apply. */
static void test_include(void **state)
{
    write_file("inc-good.cfg", "workers = 7;\n");
    dt_config *cfg = load_ok("@include \"inc-good.cfg\"\nvia_name = \"inc\";\n");
    assert_int_equal(cfg->workers, 7);
    assert_string_equal(cfg->via_name, "inc");
    dt_config_unref(cfg);
}

/* ------------------------------------------------------------------------ */
/* Reference counting                                                         */

#define REF_THREADS 4
#define REF_ROUNDS 20000

static void *ref_worker(void *arg)
{
    dt_config *cfg = arg;
    for (int i = 0; i < REF_ROUNDS; i++) {
        dt_config *mine = dt_config_ref(cfg);
        dt_config_unref(mine);
    }
    return NULL;
}

static void test_refcount(void **state)
{
    dt_config *cfg = load_ok("routes = ( { redirect = { to = \"/x\"; targets = [\"a\"]; }; } );\n");
    assert_ptr_equal(dt_config_ref(cfg), cfg);
    assert_int_equal(atomic_load(&cfg->refs), 2);
    dt_config_unref(cfg);
    assert_int_equal(atomic_load(&cfg->refs), 1);
    pthread_t th[REF_THREADS];
    for (int i = 0; i < REF_THREADS; i++)
        assert_int_equal(pthread_create(&th[i], NULL, ref_worker, cfg), 0);
    for (int i = 0; i < REF_THREADS; i++)
        assert_int_equal(pthread_join(th[i], NULL), 0);
    assert_int_equal(atomic_load(&cfg->refs), 1);
    dt_config_unref(cfg); /* the last one frees: ASan reports a leak or a double free */
    dt_config_unref(NULL);
}

/* Loading many times leaks nothing and reuses metrics cells by name (checked under ASan). */
static void test_reload_cycle(void **state)
{
    write_file("cycle.map", "/a /b\n");
    for (int i = 0; i < 20; i++) {
        dt_config *cfg =
            load_ok("routes = ( { name = \"m\"; redirect = { map = \"cycle.map\"; when_file = "
                    "\"f\"; }; },\n"
                    " { match = { regex = \"^/(x)\"; }; redirect = { to = \"/$1\"; }; } );\n");
        assert_int_equal(cfg->nroutes, 2);
        dt_config_unref(cfg);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_defaults),
        cmocka_unit_test(test_contract_example),
        cmocka_unit_test(test_full),
        cmocka_unit_test(test_inheritance),
        cmocka_unit_test(test_bad_configs),
        cmocka_unit_test(test_missing_file),
        cmocka_unit_test(test_short_error_buffer),
        cmocka_unit_test(test_include),
        cmocka_unit_test(test_refcount),
        cmocka_unit_test(test_reload_cycle),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
