/*
 * check.c - `detour -t` (lint and golden cases) and `detour --explain`.
 *
 * Everything here runs the server's own rule engine (rules.c) on requests
 * built from text, so what it prints is what the server would do. It runs
 * once per command line, never on the request path: allocation and plain
 * linear scans are fine here.
 */
#include "detour/check.h"

#include <stdarg.h>
#include <stdlib.h>

#include "detour/flag.h"
#include "detour/map.h"
#include "detour/rules.h"
#include "detour/target.h"
#include "detour/template.h"

#define CASE_HEADERS_MAX 16
#define CHAIN_HOPS_MAX 8          /* how far a redirect chain is followed */
#define MAP_CHAIN_WARNINGS_MAX 10 /* per map route; the rest is counted */
#define SAMPLE_PATH_MAX 1100      /* a route's literal (at most 1024 here) and a tail */

/* printf into ERR and return false: the shape of every parse failure here. */
__attribute__((format(printf, 3, 4))) static bool say(char *err, size_t errlen, const char *fmt,
                                                      ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
    return false;
}

/* ---- requests written as text -------------------------------------------- */

/* "METHOD URL [TOKEN...]" parsed; every string points into `copy`. */
typedef struct case_req {
    char *copy;
    dt_str method;
    dt_target target;
    const char *client;
    const char *hname[CASE_HEADERS_MAX], *hval[CASE_HEADERS_MAX];
    size_t nh;
    char *cookie; /* the Cookie header built from cookie: tokens, or NULL */
    size_t cookie_len;
    int64_t now;
    int flag_override;
} case_req;

static void case_req_free(case_req *c)
{
    free(c->copy);
    free(c->cookie);
}

static const char *case_header(void *ctx, const char *name, size_t *len)
{
    const case_req *c = ctx;
    if (c->cookie && strcasecmp(name, "Cookie") == 0) {
        *len = c->cookie_len;
        return c->cookie;
    }
    for (size_t i = 0; i < c->nh; i++)
        if (strcasecmp(c->hname[i], name) == 0) {
            *len = strlen(c->hval[i]);
            return c->hval[i];
        }
    return NULL;
}

/* "2026-12-01T00:00:00Z" or with a "+HH:MM" / "-HH:MM" offset. */
static bool parse_time(const char *s, int64_t *out)
{
    struct tm tm = {0};
    int n = 0, oh = 0, om = 0;
    char sign = 0;
    if (sscanf(s, "%4d-%2d-%2dT%2d:%2d:%2d%n", &tm.tm_year, &tm.tm_mon, &tm.tm_mday, &tm.tm_hour,
               &tm.tm_min, &tm.tm_sec, &n) != 6)
        return false;
    if (strcmp(s + n, "Z") != 0 && !(sscanf(s + n, "%c%2d:%2d", &sign, &oh, &om) == 3 &&
                                     (sign == '+' || sign == '-') && strlen(s + n) == 6))
        return false;
    if (tm.tm_mon < 1 || tm.tm_mon > 12 || tm.tm_mday < 1 || tm.tm_mday > 31 || tm.tm_hour > 23 ||
        tm.tm_min > 59 || tm.tm_sec > 60 || oh > 23 || om > 59)
        return false;
    tm.tm_year -= 1900;
    tm.tm_mon -= 1;
    int64_t offset = (int64_t)(oh * 3600 + om * 60) * (sign == '-' ? -1 : 1);
    *out = (int64_t)timegm(&tm) - offset;
    return true;
}

static bool add_cookie(case_req *c, const char *pair, size_t cap)
{
    if (!c->cookie && !(c->cookie = calloc(1, cap)))
        return false;
    size_t used = strlen(c->cookie);
    snprintf(c->cookie + used, cap - used, "%s%s", used ? "; " : "", pair);
    c->cookie_len = strlen(c->cookie);
    return true;
}

/* One optional TOKEN; false with a reason in ERR when it is not one. */
static bool case_token(case_req *c, char *tok, size_t textlen, char *err, size_t errlen)
{
    char *eq = strchr(tok, '=');
    if (strncmp(tok, "client=", 7) == 0) {
        c->client = tok + 7;
    } else if (strncmp(tok, "at=", 3) == 0) {
        if (!parse_time(tok + 3, &c->now))
            return say(err, errlen, "bad time \"%s\" (want 2026-12-01T00:00:00Z)", tok + 3);
    } else if (strcmp(tok, "when_file=present") == 0 || strcmp(tok, "when_file=absent") == 0) {
        c->flag_override = tok[10] == 'p' ? 1 : -1;
    } else if (strncmp(tok, "header:", 7) == 0 && eq && eq > tok + 7) {
        if (c->nh == CASE_HEADERS_MAX)
            return say(err, errlen, "more than %d header: tokens", CASE_HEADERS_MAX);
        *eq = '\0';
        c->hname[c->nh] = tok + 7;
        c->hval[c->nh++] = eq + 1;
    } else if (strncmp(tok, "cookie:", 7) == 0 && eq && eq > tok + 7) {
        if (!add_cookie(c, tok + 7, textlen + 1))
            return say(err, errlen, "out of memory");
    } else {
        return say(err, errlen, "unknown token \"%s\"", tok);
    }
    return true;
}

/* Parse "METHOD URL [TOKEN...]" from TEXT into C. */
static bool case_parse(case_req *c, const char *text, char *err, size_t errlen)
{
    memset(c, 0, sizeof(*c));
    c->client = "127.0.0.1";
    c->now = dt_wall_s();
    if (!(c->copy = strdup(text)))
        return say(err, errlen, "out of memory");
    char *save = NULL, *method = strtok_r(c->copy, " \t", &save);
    char *url = method ? strtok_r(NULL, " \t", &save) : NULL;
    if (!url)
        return say(err, errlen, "want \"METHOD URL\"");
    c->method = (dt_str){method, strlen(method)};
    if (dt_target_parse((dt_str){url, strlen(url)}, false, &c->target) != DT_OK ||
        c->target.form != DT_TARGET_ABSOLUTE)
        return say(err, errlen, "\"%s\" is not an absolute http(s) URL", url);
    for (char *tok; (tok = strtok_r(NULL, " \t", &save));)
        if (!case_token(c, tok, strlen(text), err, errlen))
            return false;
    return true;
}

static dt_request_info case_info(case_req *c)
{
    dt_request_info r = {0};
    r.method = c->method;
    r.scheme = c->target.scheme;
    r.host = c->target.host;
    r.path = c->target.path;
    r.query = c->target.query;
    r.client_ip = (dt_str){c->client, strlen(c->client)};
    r.header = case_header;
    r.header_ctx = c;
    r.now = c->now;
    r.flag_override = c->flag_override;
    return r;
}

/* ---- answers as text ----------------------------------------------------- */

/* The main part of an answer: "307 /new", "relay legacy", "relay" or "404". */
static void format_answer(const dt_config *cfg, int rc, const dt_verdict *v, char *out, size_t cap)
{
    if (rc == DT_ETOOBIG)
        snprintf(out, cap, "500 (Location longer than %d bytes)", DT_LOCATION_MAX - 1);
    else if (v->kind == DT_VERDICT_REDIRECT)
        snprintf(out, cap, "%d %s", v->status, v->location);
    else if (v->kind == DT_VERDICT_RELAY && v->upstream)
        snprintf(out, cap, "relay %s", v->upstream->name);
    else if (v->kind == DT_VERDICT_RELAY || cfg->mode != DT_MODE_REVERSE)
        snprintf(out, cap, "relay");
    else
        snprintf(out, cap, "404");
}

static void format_dry_runs(const dt_verdict *v, char *out, size_t cap)
{
    size_t o = 0;
    out[0] = '\0';
    for (size_t i = 0; i < v->ndry_run && o < cap; i++)
        o += (size_t)snprintf(out + o, cap - o, "%s%s", i ? "," : "", v->dry_run[i]->name);
}

/* ---- golden cases -------------------------------------------------------- */

/* The expected side: its main part and the optional extension tokens. */
typedef struct expected {
    char *copy;        /* owns the strings below */
    char *main;        /* "307 /new", "relay legacy", "relay", "404" (malloc'd) */
    const char *dry;   /* dry_run= value, or NULL when not compared */
    const char *retry; /* retry_after= value, or NULL when not compared */
} expected;

static void expected_free(expected *e)
{
    free(e->copy);
    free(e->main);
}

static bool is_redirect_status(const char *s)
{
    static const char *const codes[] = {"301", "302", "303", "307", "308"};
    for (size_t i = 0; i < DT_ARRAY_LEN(codes); i++)
        if (strcmp(s, codes[i]) == 0)
            return true;
    return false;
}

/* The result's own tokens: "STATUS LOCATION", "relay [NAME]" or "404". */
static bool expected_main(expected *e, const char *first, const char *second, char *err,
                          size_t errlen)
{
    bool redirect = is_redirect_status(first), relay = strcmp(first, "relay") == 0;
    if (!redirect && !relay && strcmp(first, "404") != 0)
        return say(err, errlen,
                   "want \"-> STATUS LOCATION\", \"-> relay [NAME]\" or \"-> 404\", not \"%s\"",
                   first);
    if (redirect && !second)
        return say(err, errlen, "a redirect needs a Location");
    if (!redirect && !relay && second)
        return say(err, errlen, "unexpected \"%s\" after 404", second);
    if (asprintf(&e->main, "%s%s%s", first, second ? " " : "", second ? second : "") < 0) {
        e->main = NULL;
        return say(err, errlen, "out of memory");
    }
    return true;
}

/* Parse the text after "->". */
static bool parse_expected(const char *rhs, expected *e, char *err, size_t errlen)
{
    memset(e, 0, sizeof(*e));
    if (!(e->copy = strdup(rhs)))
        return say(err, errlen, "out of memory");
    char *save = NULL, *first = strtok_r(e->copy, " \t", &save), *second = NULL, *tok;
    if (!first)
        return say(err, errlen, "nothing after \"->\"");
    while ((tok = strtok_r(NULL, " \t", &save))) {
        if (strncmp(tok, "dry_run=", 8) == 0)
            e->dry = tok + 8;
        else if (strncmp(tok, "retry_after=", 12) == 0)
            e->retry = tok + 12;
        else if (!second && !e->dry && !e->retry)
            second = tok;
        else
            return say(err, errlen, "unexpected \"%s\" after the result", tok);
    }
    return expected_main(e, first, second, err, errlen);
}

/* "EXPECTED" and "GOT", each with the extension tokens the case compares. */
static void format_pair(const expected *e, const char *got_main, const char *got_dry,
                        const dt_verdict *v, char *got, size_t cap)
{
    size_t o = (size_t)snprintf(got, cap, "%s", got_main);
    if (e->dry && o < cap)
        o += (size_t)snprintf(got + o, cap - o, " dry_run=%s", got_dry);
    if (e->retry && o < cap) {
        if (v->kind == DT_VERDICT_REDIRECT && v->retry_after >= 0)
            snprintf(got + o, cap - o, " retry_after=%d", v->retry_after);
        else
            snprintf(got + o, cap - o, " retry_after=none");
    }
}

static bool outcome_matches(const expected *e, const char *got_main, const char *got_dry,
                            const dt_verdict *v)
{
    char retry[32] = "none";
    if (v->kind == DT_VERDICT_REDIRECT && v->retry_after >= 0)
        snprintf(retry, sizeof(retry), "%d", v->retry_after);
    return strcmp(e->main, got_main) == 0 && (!e->dry || strcmp(e->dry, got_dry) == 0) &&
           (!e->retry || strcmp(e->retry, retry) == 0);
}

/* Decide C's request and compare with E; GOT receives what detour would do. */
static int run_case(const dt_config *cfg, case_req *c, const expected *e, char *got, size_t cap)
{
    char *loc = malloc(DT_LOCATION_MAX), *main_part = malloc(DT_LOCATION_MAX + 64), dry[512];
    if (!loc || !main_part) {
        free(loc);
        free(main_part);
        snprintf(got, cap, "out of memory");
        return DT_ENOMEM;
    }
    dt_verdict v = {.location = loc, .location_cap = DT_LOCATION_MAX};
    dt_request_info req = case_info(c);
    int rc = dt_rules_decide(cfg, &req, &v);
    format_answer(cfg, rc, &v, main_part, DT_LOCATION_MAX + 64);
    format_dry_runs(&v, dry, sizeof(dry));
    format_pair(e, main_part, dry, &v, got, cap);
    bool ok = outcome_matches(e, main_part, dry, &v);
    free(loc);
    free(main_part);
    return ok ? 1 : 0;
}

/* The "->" between request and result (the first one with a blank before it). */
static const char *find_arrow(const char *text)
{
    for (const char *p = strstr(text, "->"); p; p = strstr(p + 2, "->"))
        if (p > text && (p[-1] == ' ' || p[-1] == '\t'))
            return p;
    return NULL;
}

int dt_check_expect(const dt_config *cfg, const char *text, char *got, size_t gotcap)
{
    const char *arrow = find_arrow(text);
    case_req c = {0};
    expected e = {0};
    int rc = DT_EINVAL;
    char *lhs = arrow ? strndup(text, (size_t)(arrow - text)) : NULL;
    if (!arrow)
        say(got, gotcap, "no \" -> \" between request and result");
    else if (!lhs)
        say(got, gotcap, "out of memory");
    else if (parse_expected(arrow + 2, &e, got, gotcap) && case_parse(&c, lhs, got, gotcap))
        rc = run_case(cfg, &c, &e, got, gotcap);
    case_req_free(&c);
    expected_free(&e);
    free(lhs);
    return rc;
}

/* The expected side of TEXT re-joined ("307 /x dry_run=a"), for messages. */
static void expected_text(const char *text, char *out, size_t cap)
{
    const char *arrow = find_arrow(text);
    const char *p = arrow ? arrow + 2 : "";
    size_t o = 0;
    while (*p == ' ' || *p == '\t')
        p++;
    for (; *p && o + 1 < cap; p++)
        if (!((*p == ' ' || *p == '\t') && (p[1] == ' ' || p[1] == '\t' || p[1] == '\0')))
            out[o++] = *p == '\t' ? ' ' : *p;
    out[o] = '\0';
}

static int run_expects(const dt_config *cfg, FILE *out)
{
    size_t cap = DT_LOCATION_MAX + 1024;
    char *got = malloc(cap), *want = malloc(cap);
    int errors = 0;
    for (size_t i = 0; got && want && i < cfg->nexpects; i++) {
        const dt_expect *x = &cfg->expects[i];
        int rc = dt_check_expect(cfg, x->text, got, cap);
        if (rc == 1)
            continue;
        errors++;
        expected_text(x->text, want, cap);
        if (rc == 0)
            fprintf(out, "%s:%d: error: expected \"%s\", got \"%s\"\n", cfg->path, x->line, want,
                    got);
        else
            fprintf(out, "%s:%d: error: bad expect \"%s\": %s\n", cfg->path, x->line, x->text, got);
    }
    if (!got || !want)
        errors++;
    free(got);
    free(want);
    return errors;
}

/* ---- lint: routes that can never match ----------------------------------- */

/* Does route A fire for every request its match holds for? */
static bool always_fires(const dt_route *a)
{
    if (a->kind == DT_ROUTE_RELAY)
        return true;
    const dt_redirect *rd = &a->redirect;
    return rd->nramp == 0 && rd->percent >= 100 && !rd->has_from && !rd->has_until &&
           !rd->when_file && !rd->dry_run && !rd->map;
}

static bool pattern_covers(const dt_host_pattern *a, const dt_host_pattern *b)
{
    dt_str an = {a->name, a->len}, bn = {b->name, b->len};
    if (!a->wildcard)
        return !b->wildcard && dt_str_ieq(an, bn);
    /* ".example.com" covers "x.example.com" and ".x.example.com" (and itself). */
    if (bn.n < an.n || (!b->wildcard && bn.n == an.n))
        return false;
    return dt_str_ieq((dt_str){bn.p + bn.n - an.n, an.n}, an);
}

static bool hosts_cover(const dt_match *a, const dt_match *b)
{
    if (a->nhosts == 0)
        return true;
    if (b->nhosts == 0)
        return false;
    for (size_t j = 0; j < b->nhosts; j++) {
        bool covered = false;
        for (size_t i = 0; i < a->nhosts && !covered; i++)
            covered = pattern_covers(&a->hosts[i], &b->hosts[j]);
        if (!covered)
            return false;
    }
    return true;
}

static bool lists_method(const dt_match *m, const char *method)
{
    for (size_t i = 0; i < m->nmethods; i++)
        if (strcmp(m->methods[i], method) == 0 ||
            (strcmp(method, "HEAD") == 0 && strcmp(m->methods[i], "GET") == 0))
            return true;
    return false;
}

static bool methods_cover(const dt_match *a, const dt_match *b)
{
    if (a->nmethods == 0)
        return true;
    if (b->nmethods == 0)
        return false;
    for (size_t j = 0; j < b->nmethods; j++)
        if (!lists_method(a, b->methods[j]))
            return false;
    return true;
}

static bool starts_with(dt_str s, const char *prefix, size_t n)
{
    return s.n >= n && memcmp(s.p, prefix, n) == 0;
}

/* The literal every path B matches starts with (its path, prefix or regex prefix). */
static dt_str guaranteed_prefix(const dt_match *b, char *buf, size_t cap)
{
    if (b->path)
        return (dt_str){b->path, b->path_len};
    dt_str lit = {b->prefix ? b->prefix : "", b->prefix ? b->prefix_len : 0};
    size_t n = b->regex_src ? dt_regex_literal_prefix(b->regex_src, buf, cap) : 0;
    return n > lit.n ? (dt_str){buf, n} : lit;
}

/* Does every path B matches satisfy A's path, prefix and regex? */
static bool paths_cover(const dt_match *a, const dt_match *b)
{
    char buf[1024];
    dt_str lit = guaranteed_prefix(b, buf, sizeof(buf));
    if (a->path && !(b->path && dt_str_eq(lit, (dt_str){a->path, a->path_len})))
        return false;
    if (a->prefix && !starts_with(lit, a->prefix, a->prefix_len))
        return false;
    if (a->regex_src) {
        regmatch_t pm[1] = {{0, (regoff_t)lit.n}};
        bool same = b->regex_src && strcmp(a->regex_src, b->regex_src) == 0;
        bool exact = b->path && regexec(&a->regex, lit.p, 1, pm, REG_STARTEND) == 0;
        if (!same && !exact)
            return false;
    }
    return true;
}

static bool shadows(const dt_route *a, const dt_route *b)
{
    return always_fires(a) && methods_cover(&a->match, &b->match) &&
           hosts_cover(&a->match, &b->match) && paths_cover(&a->match, &b->match);
}

static void lint_shadowed(const dt_config *cfg, FILE *out)
{
    for (size_t j = 1; j < cfg->nroutes; j++) {
        const dt_route *b = &cfg->routes[j];
        for (size_t i = 0; i < j; i++) {
            const dt_route *a = &cfg->routes[i];
            if (!shadows(a, b))
                continue;
            fprintf(out,
                    "%s:%d: warning: route \"%s\" can never match: route \"%s\" (line %d) always "
                    "matches first\n",
                    cfg->path, b->line, b->name, a->name, a->line);
            break;
        }
    }
}

/* ---- lint: redirect chains and loops ------------------------------------- */

/* Can route R redirect at all, some time, for some client? */
static bool may_redirect(const dt_route *r, int64_t now)
{
    if (r->kind != DT_ROUTE_REDIRECT)
        return false;
    const dt_redirect *rd = &r->redirect;
    if (rd->dry_run || (rd->has_until && rd->until <= now))
        return false;
    if (rd->nramp == 0)
        return rd->percent > 0;
    return rd->ramp[rd->nramp - 1].percent > 0;
}

/* One hop: a request and the route that answers it when every route is active. */
typedef struct hop {
    char method[32];
    char scheme[8];
    char host[256];
    char *url; /* path?query, malloc'd */
} hop;

static dt_request_info hop_info(const hop *h, const char *q)
{
    dt_request_info r = {0};
    r.method = (dt_str){h->method, strlen(h->method)};
    r.scheme = (dt_str){h->scheme, strlen(h->scheme)};
    r.host = (dt_str){h->host, strlen(h->host)};
    r.path = (dt_str){h->url, q ? (size_t)(q - h->url) : strlen(h->url)};
    r.query = q ? (dt_str){q + 1, strlen(q + 1)} : (dt_str){"", 0};
    r.client_ip = DT_STR_LIT("127.0.0.1");
    r.now = dt_wall_s();
    return r;
}

/* Does any route name HOST explicitly? (An absolute Location to another site is not ours.) */
static bool config_serves_host(const dt_config *cfg, dt_str host)
{
    for (size_t i = 0; i < cfg->nroutes; i++)
        if (cfg->routes[i].match.nhosts > 0 && dt_rules_host_matches(&cfg->routes[i].match, host))
            return true;
    return false;
}

/*
 * Turn a redirect (STATUS, LOCATION) into the next request of H, as a browser
 * would: 301, 302 and 303 turn the method into GET (HEAD stays HEAD). False
 * when the Location leaves this config (another site) or cannot be parsed.
 */
static bool hop_follow(const dt_config *cfg, hop *h, int status, const char *location)
{
    char *url = NULL;
    dt_target t;
    if (location[0] == '/' && location[1] != '/') {
        url = strdup(location);
    } else {
        if (dt_target_parse((dt_str){location, strlen(location)}, false, &t) != DT_OK ||
            t.form != DT_TARGET_ABSOLUTE || t.host.n >= sizeof(h->host) ||
            t.scheme.n >= sizeof(h->scheme) || !config_serves_host(cfg, t.host))
            return false;
        size_t cap = strlen(location) + 2;
        if ((url = malloc(cap)) && dt_target_origin_form(&t, url, cap) < 0)
            url[0] = '\0';
        snprintf(h->scheme, sizeof(h->scheme), "%.*s", (int)t.scheme.n, t.scheme.p);
        snprintf(h->host, sizeof(h->host), "%.*s", (int)t.host.n, t.host.p);
    }
    if (!url)
        return false;
    free(h->url);
    h->url = url;
    if (status != 307 && status != 308 && strcmp(h->method, "HEAD") != 0)
        snprintf(h->method, sizeof(h->method), "GET");
    return true;
}

/*
 * The first route that would redirect H's request, treating every route as
 * active (a chain through a route that is off today is still a chain), or
 * NULL when the request would be relayed or find no route. LOC receives the
 * Location.
 */
static const dt_route *hop_redirector(const dt_config *cfg, const hop *h, char *loc, size_t cap)
{
    dt_request_info req = hop_info(h, strchr(h->url, '?'));
    int64_t now = req.now;
    for (size_t i = 0; i < cfg->nroutes; i++) {
        const dt_route *r = &cfg->routes[i];
        if (r->kind == DT_ROUTE_REDIRECT && !may_redirect(r, now))
            continue;
        dt_verdict v = {.location = loc, .location_cap = cap};
        int rc = dt_rules_route_apply(r, &req, &v);
        if (rc == DT_ENOTFOUND)
            continue;
        return rc == DT_OK && v.kind == DT_VERDICT_REDIRECT ? r : NULL;
    }
    return NULL;
}

/* Requests of one chain, as "host url", to see it come back. */
typedef struct visited {
    char *req[CHAIN_HOPS_MAX + 2];
    size_t n;
} visited;

/* Remember H's request; true when it was seen before in this chain. */
static bool visit(visited *v, const hop *h)
{
    char *key = NULL;
    if (asprintf(&key, "%s %s", h->host, h->url) < 0)
        return false;
    for (size_t i = 0; i < v->n; i++)
        if (strcmp(v->req[i], key) == 0) {
            free(key);
            return true;
        }
    if (v->n < DT_ARRAY_LEN(v->req))
        v->req[v->n++] = key;
    else
        free(key);
    return false;
}

static void visited_free(visited *v)
{
    for (size_t i = 0; i < v->n; i++)
        free(v->req[i]);
}

/*
 * H was redirected once, with STATUS to LOC. Follow it and return the first route that
 * redirects it again, or NULL. *loop is set when the chain comes back to a
 * request seen before, or is still redirecting after CHAIN_HOPS_MAX hops
 * (e.g. "/a/" -> "/a/b$uri", which grows forever).
 */
static const dt_route *chain_after(const dt_config *cfg, hop *h, int status, const char *loc,
                                   bool *loop)
{
    char *buf = malloc(DT_LOCATION_MAX);
    const dt_route *second = NULL;
    visited v = {0};
    *loop = false;
    visit(&v, h);
    if (!buf || !hop_follow(cfg, h, status, loc)) {
        free(buf);
        visited_free(&v);
        return NULL;
    }
    for (int n = 0; !*loop; n++) {
        const dt_route *r = hop_redirector(cfg, h, buf, DT_LOCATION_MAX);
        if (!r)
            break;
        if (!second)
            second = r;
        *loop = visit(&v, h) || n == CHAIN_HOPS_MAX;
        if (!hop_follow(cfg, h, r->redirect.status, buf))
            break;
    }
    free(buf);
    visited_free(&v);
    return second;
}

static void hop_init(hop *h, const dt_route *r, const char *path)
{
    const dt_match *m = &r->match;
    snprintf(h->method, sizeof(h->method), "%s", m->nmethods ? m->methods[0] : "GET");
    snprintf(h->scheme, sizeof(h->scheme), "http");
    if (m->nhosts == 0)
        snprintf(h->host, sizeof(h->host), "localhost");
    else
        snprintf(h->host, sizeof(h->host), "%s%s", m->hosts[0].wildcard ? "www" : "",
                 m->hosts[0].name);
    h->url = strdup(path);
}

typedef enum chain_result { CHAIN_NO_MATCH, CHAIN_CLEAN, CHAIN_FOUND } chain_result;

/*
 * Check route R on the request for PATH: CHAIN_NO_MATCH when R does not
 * match that request (try another), else whether R's Location is redirected
 * again (then a warning goes to OUT, unless OUT is NULL: only counting).
 */
static chain_result lint_chain_from(const dt_config *cfg, const dt_route *r, const char *path,
                                    FILE *out)
{
    char *loc = malloc(DT_LOCATION_MAX);
    chain_result res = CHAIN_NO_MATCH;
    hop h;
    hop_init(&h, r, path);
    dt_request_info req = hop_info(&h, NULL);
    dt_verdict v = {.location = loc, .location_cap = DT_LOCATION_MAX};
    if (loc && h.url && dt_rules_route_apply(r, &req, &v) == DT_OK) {
        bool loop;
        const dt_route *again = chain_after(cfg, &h, v.status, loc, &loop);
        res = again ? CHAIN_FOUND : CHAIN_CLEAN;
        if (again && out)
            fprintf(out,
                    "%s:%d: warning: route \"%s\" redirects to %s, which route \"%s\" (line %d) "
                    "redirects again (%s)\n",
                    cfg->path, r->line, r->name, loc, again->name, again->line,
                    loop ? "loop" : "chain");
    }
    free(h.url);
    free(loc);
    return res;
}

/* Paths a route is likely to match, most typical first. */
static size_t sample_paths(const dt_route *r, char (*out)[SAMPLE_PATH_MAX], size_t cap)
{
    const dt_match *m = &r->match;
    char lit[1024];
    static const char *const tails[] = {"x", "1", "x/y", "", "x.html"};
    if (m->path) {
        snprintf(out[0], sizeof(out[0]), "%s", m->path);
        return 1;
    }
    dt_str g = guaranteed_prefix(m, lit, sizeof(lit));
    if (g.n == 0)
        g = DT_STR_LIT("/");
    size_t n = 0;
    for (; n < DT_ARRAY_LEN(tails) && n < cap; n++)
        snprintf(out[n], sizeof(out[n]), "%.*s%s", (int)g.n, g.p, tails[n]);
    return n;
}

typedef struct map_lint {
    const dt_config *cfg;
    const dt_route *route;
    FILE *out;
    size_t warned, more;
} map_lint;

/* Every map entry is a request of its own: check them all, print the first few. */
static bool lint_map_entry(void *ctx, dt_str key, dt_str value)
{
    map_lint *ml = ctx;
    char *path = strndup(key.p, key.n);
    if (!path)
        return false;
    bool quiet = ml->warned >= MAP_CHAIN_WARNINGS_MAX;
    if (lint_chain_from(ml->cfg, ml->route, path, quiet ? NULL : ml->out) == CHAIN_FOUND)
        *(quiet ? &ml->more : &ml->warned) += 1;
    free(path);
    return true;
}

static void lint_map_chains(const dt_config *cfg, const dt_route *r, FILE *out)
{
    map_lint ml = {.cfg = cfg, .route = r, .out = out};
    dt_map_foreach(r->redirect.map, lint_map_entry, &ml);
    if (ml.more > 0)
        fprintf(out,
                "%s:%d: warning: route \"%s\": %zu more map entries redirect to a path that is "
                "redirected again\n",
                cfg->path, r->line, r->name, ml.more);
}

static void lint_chains(const dt_config *cfg, FILE *out)
{
    char paths[5][SAMPLE_PATH_MAX];
    int64_t now = dt_wall_s();
    for (size_t i = 0; i < cfg->nroutes; i++) {
        const dt_route *r = &cfg->routes[i];
        if (!may_redirect(r, now))
            continue;
        if (r->redirect.map) {
            lint_map_chains(cfg, r, out);
            continue;
        }
        size_t n = sample_paths(r, paths, DT_ARRAY_LEN(paths));
        for (size_t k = 0; k < n; k++)
            if (lint_chain_from(cfg, r, paths[k], out) != CHAIN_NO_MATCH)
                break;
    }
}

int dt_check_config(const dt_config *cfg, FILE *out)
{
    lint_shadowed(cfg, out);
    lint_chains(cfg, out);
    return run_expects(cfg, out);
}

/* ---- --explain ----------------------------------------------------------- */

typedef struct explain_ctx {
    FILE *out;
    size_t examined;
} explain_ctx;

static void explain_trace(void *ctx, const dt_route *route, const char *why)
{
    explain_ctx *e = ctx;
    e->examined++;
    fprintf(e->out, "  route \"%s\" (line %d): %s\n", route->name, route->line, why);
}

static void explain_answer(const dt_config *cfg, int rc, const dt_verdict *v, FILE *out)
{
    if (rc == DT_ETOOBIG)
        fprintf(out, "answer: 500 (route \"%s\": Location longer than %d bytes)\n", v->route->name,
                DT_LOCATION_MAX - 1);
    else if (v->kind == DT_VERDICT_REDIRECT) {
        fprintf(out, "answer: %d Location: %s\n", v->status, v->location);
        if (v->retry_after >= 0)
            fprintf(out, "        Retry-After: %d\n", v->retry_after);
    } else if (v->kind == DT_VERDICT_RELAY && v->upstream)
        fprintf(out, "answer: relay to upstream %s (%s)\n", v->upstream->name, v->upstream->url);
    else if (v->kind == DT_VERDICT_RELAY || cfg->mode != DT_MODE_REVERSE)
        fprintf(out, "answer: relay to the request's own destination\n");
    else
        fprintf(out, "answer: 404 no route\n");
}

static void explain_header(const case_req *c, const char *request, FILE *out)
{
    char when[32];
    time_t t = (time_t)c->now;
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%SZ", &tm);
    fprintf(out, "request: %s\n  client %s, at %s\n", request, c->client, when);
}

int dt_explain(const dt_config *cfg, const char *request, FILE *out)
{
    case_req c;
    char err[256];
    if (!case_parse(&c, request, err, sizeof(err))) {
        fprintf(out, "cannot explain \"%s\": %s\n", request, err);
        case_req_free(&c);
        return DT_EINVAL;
    }
    char *loc = malloc(DT_LOCATION_MAX);
    if (!loc) {
        case_req_free(&c);
        return DT_ENOMEM;
    }
    explain_header(&c, request, out);
    explain_ctx e = {.out = out};
    dt_verdict v = {.location = loc, .location_cap = DT_LOCATION_MAX};
    dt_request_info req = case_info(&c);
    int rc = dt_rules_decide_trace(cfg, &req, &v, explain_trace, &e);
    if (e.examined == 0)
        fprintf(out, "  (no route could match this request)\n");
    explain_answer(cfg, rc, &v, out);
    free(loc);
    case_req_free(&c);
    return DT_OK;
}
