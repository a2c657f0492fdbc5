/*
 * rules.c - the route decision and the match index behind it.
 *
 * The index puts every route in exactly one place, chosen by its most
 * selective key: an exact `path` in a hash; a literal prefix (`prefix`, or
 * the literal start of a `^...` regex) in a hash probed once per distinct
 * prefix length; a `map` route in a short list probed with one map lookup
 * each; a route with only `host` in an exact or a wildcard-suffix hash;
 * everything else in an "always" list. A decision gathers the candidates for
 * its request from all of them, sorts them back into file order and runs the
 * full match (every key, then activation) on each until one wins. The index
 * only ever narrows the search: a route that is not a candidate cannot
 * match, so the answer is the one a scan of every route would give.
 */
#include "detour/rules.h"

#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "detour/flag.h"
#include "detour/map.h"
#include "detour/sticky.h"
#include "detour/template.h"

#define FNV64_OFFSET 0xcbf29ce484222325ull
#define FNV64_PRIME 0x100000001b3ull
#define GROUPS_MAX 10 /* $0 (whole match) and $1..$9 */
#define GO_ON 1       /* evaluate(): this route did not decide, try the next */

/* ---- hash tables: key -> ascending list of route indices ---------------- */

typedef struct slot {
    const char *key; /* NULL: empty slot */
    size_t len;
    uint64_t hash;
    uint32_t *routes;
    uint32_t n, cap;
} slot;

typedef struct table {
    slot *slots; /* NULL when the table is empty */
    size_t mask;
    bool icase; /* hosts: keys compared without case */
} table;

typedef struct dt_ruleset dt_ruleset;

/*
 * A regex's literal start, and whether the whole regex is "^LITERAL(.*)$" or
 * "^LITERAL(.*)": the shape of most migration rules. Such a regex matches
 * exactly the paths that start with LITERAL (and hold no NUL, which '.' does
 * not match), with $1 the rest, so it is decided without regexec(): glibc
 * takes about 1 us for a match with groups, a prefix test a few ns.
 */
typedef struct regex_info {
    char *lit; /* NULL when the route has no regex */
    size_t lit_len;
    bool simple;
} regex_info;

struct dt_ruleset {
    const dt_route *routes;
    size_t nroutes;
    table paths;         /* exact `path` */
    table prefixes;      /* literal prefixes */
    size_t *prefix_lens; /* distinct prefix lengths, ascending */
    size_t nprefix_lens;
    table hosts;     /* exact host names */
    table wildcards; /* wildcard suffixes, ".example.com" */
    uint32_t *maps;  /* routes found through their map */
    size_t nmaps;
    uint32_t *always; /* routes every request must try */
    size_t nalways;
    struct regex_info *regex; /* per route, what the index knows of its regex */
};

static uint64_t hash_step(uint64_t h, char c, bool icase)
{
    return (h ^ (unsigned char)(icase ? dt_ascii_lower(c) : c)) * FNV64_PRIME;
}

static uint64_t hash_bytes(const char *p, size_t n, bool icase)
{
    uint64_t h = FNV64_OFFSET;
    for (size_t i = 0; i < n; i++)
        h = hash_step(h, p[i], icase);
    return h;
}

static bool table_init(table *t, size_t nkeys, bool icase)
{
    size_t cap = 8;
    while (cap < nkeys * 2)
        cap *= 2;
    t->icase = icase;
    t->mask = cap - 1;
    t->slots = calloc(cap, sizeof(*t->slots));
    return t->slots != NULL;
}

static void table_free(table *t)
{
    if (!t->slots)
        return;
    for (size_t i = 0; i <= t->mask; i++)
        free(t->slots[i].routes);
    free(t->slots);
}

/* The slot holding KEY, or the empty slot where it would go. */
static slot *table_probe(const table *t, uint64_t h, const char *key, size_t len)
{
    for (size_t i = h & t->mask;; i = (i + 1) & t->mask) {
        slot *s = &t->slots[i];
        if (!s->key)
            return s;
        if (s->hash == h && s->len == len &&
            (t->icase ? dt_str_ieq((dt_str){s->key, len}, (dt_str){key, len})
                      : memcmp(s->key, key, len) == 0))
            return s;
    }
}

static const slot *table_find(const table *t, uint64_t h, const char *key, size_t len)
{
    if (!t->slots)
        return NULL;
    const slot *s = table_probe(t, h, key, len);
    return s->key ? s : NULL;
}

/* Add ROUTE under KEY (routes arrive in ascending order). */
static bool table_add(table *t, const char *key, size_t len, uint32_t route)
{
    uint64_t h = hash_bytes(key, len, t->icase);
    slot *s = table_probe(t, h, key, len);
    if (!s->key) {
        s->key = key;
        s->len = len;
        s->hash = h;
    }
    if (s->n > 0 && s->routes[s->n - 1] == route)
        return true; /* the same route listed the same host twice */
    if (s->n == s->cap) {
        uint32_t ncap = s->cap ? s->cap * 2 : 2;
        uint32_t *nr = realloc(s->routes, ncap * sizeof(*nr));
        if (!nr)
            return false;
        s->routes = nr;
        s->cap = ncap;
    }
    s->routes[s->n++] = route;
    return true;
}

/* ---- regex literal prefixes ---------------------------------------------- */

/* Width of the literal character at P (1, or 2 for an escaped one), or 0 for a metacharacter. */
static size_t literal_width(const char *p, char *c)
{
    if (*p == '\\') {
        /* Only an escaped ERE special is a plain literal; GNU gives \w \b \< ... meanings. */
        if (p[1] == '\0' || !strchr("^.[]$()|*+?{}\\", p[1]))
            return 0;
        *c = p[1];
        return 2;
    }
    if (strchr(".[]()*+?{}^$", *p))
        return 0;
    *c = *p;
    return 1;
}

/* The literal start of REGEX into OUT; *rest receives where the scan stopped. */
static size_t literal_scan(const char *regex, char *out, size_t cap, const char **rest)
{
    size_t n = 0;
    *rest = NULL;
    /* Alternation anywhere may escape the anchor ("^/a|/b"): no prefix then. */
    if (regex[0] == '^' && !strchr(regex, '|')) {
        const char *p = regex + 1;
        char c;
        size_t w;
        while (*p && (w = literal_width(p, &c)) > 0 && n + 1 < cap) {
            char next = p[w];
            if (next == '?' || next == '*' || next == '{')
                break; /* C may occur zero times */
            out[n++] = c;
            p += w;
            if (next == '+')
                break; /* C occurs at least once; what follows repeats it */
        }
        *rest = p;
    }
    out[n] = '\0';
    return n;
}

size_t dt_regex_literal_prefix(const char *regex, char *out, size_t cap)
{
    const char *rest;
    return cap == 0 ? 0 : literal_scan(regex, out, cap, &rest);
}

/* ---- building the index -------------------------------------------------- */

typedef enum index_kind { IDX_PATH, IDX_PREFIX, IDX_MAP, IDX_HOST, IDX_ALWAYS } index_kind;

/* The literal every path this route matches starts with (the longer of prefix and regex). */
static dt_str route_literal(const dt_ruleset *rs, size_t i)
{
    const dt_match *m = &rs->routes[i].match;
    dt_str lit = {m->prefix, m->prefix ? m->prefix_len : 0};
    const regex_info *ri = &rs->regex[i];
    if (ri->lit && ri->lit_len > lit.n)
        lit = (dt_str){ri->lit, ri->lit_len};
    return lit;
}

static index_kind route_index_kind(const dt_ruleset *rs, size_t i)
{
    const dt_route *r = &rs->routes[i];
    if (r->match.path)
        return IDX_PATH;
    if (route_literal(rs, i).n > 0)
        return IDX_PREFIX;
    if (r->kind == DT_ROUTE_REDIRECT && r->redirect.map)
        return IDX_MAP;
    if (r->match.nhosts > 0)
        return IDX_HOST;
    return IDX_ALWAYS;
}

static bool analyse_regexes(dt_ruleset *rs)
{
    rs->regex = calloc(rs->nroutes ? rs->nroutes : 1, sizeof(*rs->regex));
    if (!rs->regex)
        return false;
    for (size_t i = 0; i < rs->nroutes; i++) {
        const char *src = rs->routes[i].match.regex_src, *rest;
        regex_info *ri = &rs->regex[i];
        if (!src)
            continue;
        if (!(ri->lit = malloc(strlen(src) + 1)))
            return false;
        ri->lit_len = literal_scan(src, ri->lit, strlen(src) + 1, &rest);
        ri->simple =
            ri->lit_len > 0 && rest && (strcmp(rest, "(.*)$") == 0 || strcmp(rest, "(.*)") == 0);
    }
    return true;
}

static bool add_prefix_len(dt_ruleset *rs, size_t len)
{
    size_t k = 0;
    while (k < rs->nprefix_lens && rs->prefix_lens[k] < len)
        k++;
    if (k < rs->nprefix_lens && rs->prefix_lens[k] == len)
        return true;
    size_t *nl = realloc(rs->prefix_lens, (rs->nprefix_lens + 1) * sizeof(*nl));
    if (!nl)
        return false;
    rs->prefix_lens = nl;
    memmove(nl + k + 1, nl + k, (rs->nprefix_lens - k) * sizeof(*nl));
    nl[k] = len;
    rs->nprefix_lens++;
    return true;
}

static bool add_host_patterns(dt_ruleset *rs, const dt_match *m, uint32_t i)
{
    for (size_t h = 0; h < m->nhosts; h++) {
        const dt_host_pattern *hp = &m->hosts[h];
        table *t = hp->wildcard ? &rs->wildcards : &rs->hosts;
        if (!table_add(t, hp->name, hp->len, i))
            return false;
    }
    return true;
}

static bool index_route(dt_ruleset *rs, size_t i)
{
    const dt_route *r = &rs->routes[i];
    dt_str lit;
    switch (route_index_kind(rs, i)) {
    case IDX_PATH:
        return table_add(&rs->paths, r->match.path, r->match.path_len, (uint32_t)i);
    case IDX_PREFIX:
        lit = route_literal(rs, i);
        return table_add(&rs->prefixes, lit.p, lit.n, (uint32_t)i) && add_prefix_len(rs, lit.n);
    case IDX_MAP:
        rs->maps[rs->nmaps++] = (uint32_t)i;
        return true;
    case IDX_HOST:
        return add_host_patterns(rs, &r->match, (uint32_t)i);
    case IDX_ALWAYS:
        rs->always[rs->nalways++] = (uint32_t)i;
        return true;
    }
    return false;
}

static bool init_tables(dt_ruleset *rs)
{
    size_t nhosts = 0;
    for (size_t i = 0; i < rs->nroutes; i++)
        nhosts += rs->routes[i].match.nhosts;
    size_t n = rs->nroutes ? rs->nroutes : 1;
    rs->maps = malloc(n * sizeof(*rs->maps));
    rs->always = malloc(n * sizeof(*rs->always));
    return rs->maps && rs->always && table_init(&rs->paths, rs->nroutes, false) &&
           table_init(&rs->prefixes, rs->nroutes, false) && table_init(&rs->hosts, nhosts, true) &&
           table_init(&rs->wildcards, nhosts, true);
}

struct dt_ruleset *dt_ruleset_build(const dt_route *routes, size_t nroutes)
{
    dt_ruleset *rs = calloc(1, sizeof(*rs));
    if (!rs)
        return NULL;
    rs->routes = routes;
    rs->nroutes = nroutes;
    if (nroutes > UINT32_MAX || !analyse_regexes(rs) || !init_tables(rs))
        goto fail;
    for (size_t i = 0; i < nroutes; i++)
        if (!index_route(rs, i))
            goto fail;
    return rs;
fail:
    dt_ruleset_free(rs);
    return NULL;
}

void dt_ruleset_free(struct dt_ruleset *rs)
{
    if (!rs)
        return;
    table_free(&rs->paths);
    table_free(&rs->prefixes);
    table_free(&rs->hosts);
    table_free(&rs->wildcards);
    if (rs->regex)
        for (size_t i = 0; i < rs->nroutes; i++)
            free(rs->regex[i].lit);
    free(rs->regex);
    free(rs->prefix_lens);
    free(rs->maps);
    free(rs->always);
    free(rs);
}

/* ---- gathering candidates ------------------------------------------------ */

typedef struct cands {
    uint32_t idx[DT_RULES_CANDIDATES_MAX];
    size_t n;
    bool overflow; /* more than fit: the caller scans every route instead */
} cands;

static void cands_add(cands *c, const uint32_t *list, size_t n)
{
    if (c->n + n > DT_RULES_CANDIDATES_MAX) {
        c->overflow = true;
        return;
    }
    memcpy(c->idx + c->n, list, n * sizeof(*list));
    c->n += n;
}

static void cands_add_slot(cands *c, const slot *s)
{
    if (s)
        cands_add(c, s->routes, s->n);
}

/* One probe per distinct prefix length, hashing the path incrementally. */
static void gather_prefixes(const dt_ruleset *rs, dt_str path, cands *c)
{
    uint64_t h = FNV64_OFFSET;
    size_t len = 0;
    for (size_t k = 0; k < rs->nprefix_lens && rs->prefix_lens[k] <= path.n; k++) {
        while (len < rs->prefix_lens[k])
            h = hash_step(h, path.p[len++], false);
        cands_add_slot(c, table_find(&rs->prefixes, h, path.p, len));
    }
}

static void gather_hosts(const dt_ruleset *rs, dt_str host, cands *c)
{
    if (host.n == 0)
        return;
    cands_add_slot(c, table_find(&rs->hosts, hash_bytes(host.p, host.n, true), host.p, host.n));
    if (!rs->wildcards.slots)
        return;
    /* "*.example.com" is stored as ".example.com": try the suffix at every dot. */
    for (size_t i = 1; i < host.n; i++) {
        if (host.p[i] != '.')
            continue;
        dt_str sfx = {host.p + i, host.n - i};
        cands_add_slot(c, table_find(&rs->wildcards, hash_bytes(sfx.p, sfx.n, true), sfx.p, sfx.n));
    }
}

static void gather_maps(const dt_ruleset *rs, dt_str path, cands *c)
{
    for (size_t i = 0; i < rs->nmaps; i++) {
        size_t len;
        const dt_map *m = rs->routes[rs->maps[i]].redirect.map;
        if (dt_map_lookup(m, path.p, path.n, &len))
            cands_add(c, &rs->maps[i], 1);
    }
}

/* Insertion sort (the list is short and mostly sorted) that drops duplicates. */
static void cands_sort_unique(cands *c)
{
    for (size_t i = 1; i < c->n; i++) {
        uint32_t v = c->idx[i];
        size_t j = i;
        while (j > 0 && c->idx[j - 1] > v) {
            c->idx[j] = c->idx[j - 1];
            j--;
        }
        c->idx[j] = v;
    }
    size_t w = 0;
    for (size_t i = 0; i < c->n; i++)
        if (w == 0 || c->idx[w - 1] != c->idx[i])
            c->idx[w++] = c->idx[i];
    c->n = w;
}

/* Fill C with the routes that may match; false when they do not fit. */
static bool gather(const dt_ruleset *rs, dt_str path, dt_str host, cands *c)
{
    c->n = 0;
    c->overflow = false;
    cands_add(c, rs->always, rs->nalways);
    cands_add_slot(c, table_find(&rs->paths, hash_bytes(path.p, path.n, false), path.p, path.n));
    gather_prefixes(rs, path, c);
    gather_maps(rs, path, c);
    gather_hosts(rs, host, c);
    if (c->overflow)
        return false;
    cands_sort_unique(c);
    return true;
}

/* ---- matching one route -------------------------------------------------- */

/* Why a route did not win (W_MATCH: it did). */
typedef enum why {
    W_MATCH = 0,
    W_METHOD,
    W_HOST,
    W_PATH,
    W_PREFIX,
    W_REGEX,
    W_MAP,
    W_NOT_YET,
    W_ENDED,
    W_FLAG,
    W_PERCENT,
    W_DRY_RUN,
} why;

/* What matching found out about the request, for the Location and for --explain. */
typedef struct eval {
    regmatch_t groups[GROUPS_MAX];
    size_t ngroups;
    dt_str mapped;
    int percent;       /* W_PERCENT: the percent in force */
    dt_str key;        /* W_PERCENT: the sticky key used */
    bool key_fallback; /* the header or cookie was missing: the client IP was used */
} eval;

typedef struct decision {
    const dt_ruleset *rs; /* NULL: no index (hand-built configs, dt_rules_route_apply) */
    const dt_request_info *req;
    dt_str host; /* req->host without a trailing dot */
    dt_verdict *out;
    dt_rules_trace_fn trace;
    void *trace_ctx;
} decision;

static bool host_pattern_matches(const dt_host_pattern *hp, dt_str host)
{
    if (!hp->wildcard)
        return dt_str_ieq(host, (dt_str){hp->name, hp->len});
    return host.n > hp->len &&
           dt_str_ieq((dt_str){host.p + host.n - hp->len, hp->len}, (dt_str){hp->name, hp->len});
}

static dt_str strip_trailing_dot(dt_str host)
{
    if (host.n > 0 && host.p[host.n - 1] == '.')
        host.n--;
    return host;
}

bool dt_rules_host_matches(const dt_match *match, dt_str host)
{
    if (match->nhosts == 0)
        return true;
    host = strip_trailing_dot(host);
    for (size_t i = 0; i < match->nhosts; i++)
        if (host_pattern_matches(&match->hosts[i], host))
            return true;
    return false;
}

/* Methods are case-sensitive tokens; a route that lists GET also takes HEAD. */
static bool method_listed(const dt_match *m, dt_str method)
{
    if (m->nmethods == 0)
        return true;
    bool head = dt_str_eq(method, DT_STR_LIT("HEAD"));
    for (size_t i = 0; i < m->nmethods; i++) {
        dt_str listed = {m->methods[i], strlen(m->methods[i])};
        if (dt_str_eq(listed, method) || (head && dt_str_eq(listed, DT_STR_LIT("GET"))))
            return true;
    }
    return false;
}

static bool has_prefix(dt_str s, const char *prefix, size_t n)
{
    return n == 0 || (s.n >= n && memcmp(s.p, prefix, n) == 0);
}

/* Does R's Location use $1..$9? Only then are submatches worth their cost. */
static bool wants_groups(const dt_route *r)
{
    const uint32_t groups = ((1u << 9) - 1) << DT_TVAR_GROUP1;
    return r->kind == DT_ROUTE_REDIRECT && (dt_template_uses(r->redirect.to) & groups);
}

/*
 * "^LITERAL(.*)$" without regexec() (see regex_info). Returns 1 or 0 for a
 * certain answer, -1 when only regexec() can tell: a NUL in the path, or a
 * multibyte locale where '.' does not match every byte.
 */
static int simple_regex_matches(const regex_info *ri, dt_str path, eval *ev)
{
    if (!ri || !ri->simple || MB_CUR_MAX != 1)
        return -1;
    if (!has_prefix(path, ri->lit, ri->lit_len))
        return 0;
    if (memchr(path.p + ri->lit_len, '\0', path.n - ri->lit_len))
        return -1;
    ev->groups[0] = (regmatch_t){0, (regoff_t)path.n};
    ev->groups[1] = (regmatch_t){(regoff_t)ri->lit_len, (regoff_t)path.n};
    ev->ngroups = 2;
    return 1;
}

static bool regex_matches(const dt_route *r, const decision *d, eval *ev)
{
    const dt_match *m = &r->match;
    dt_str path = d->req->path;
    int simple = simple_regex_matches(d->rs ? &d->rs->regex[r - d->rs->routes] : NULL, path, ev);
    if (simple >= 0)
        return simple == 1;
    /* REG_STARTEND: the path is not NUL-terminated and may not be copied. */
    ev->ngroups = 1;
    if (wants_groups(r))
        ev->ngroups = m->regex_groups + 1 < GROUPS_MAX ? m->regex_groups + 1 : GROUPS_MAX;
    ev->groups[0].rm_so = 0;
    ev->groups[0].rm_eo = (regoff_t)path.n;
    return regexec(&m->regex, path.p ? path.p : "", ev->ngroups, ev->groups, REG_STARTEND) == 0;
}

/* Does R's match hold for the request (activation aside)? */
static why route_match(const dt_route *r, const decision *d, eval *ev)
{
    const dt_match *m = &r->match;
    dt_str path = d->req->path;
    ev->ngroups = 0;
    ev->mapped = (dt_str){NULL, 0};
    ev->percent = 100;
    if (!method_listed(m, d->req->method))
        return W_METHOD;
    if (!dt_rules_host_matches(m, d->host))
        return W_HOST;
    if (m->path && !dt_str_eq(path, (dt_str){m->path, m->path_len}))
        return W_PATH;
    if (m->prefix && !has_prefix(path, m->prefix, m->prefix_len))
        return W_PREFIX;
    if (m->regex_src && !regex_matches(r, d, ev))
        return W_REGEX;
    if (r->kind == DT_ROUTE_REDIRECT && r->redirect.map) {
        ev->mapped.p = dt_map_lookup(r->redirect.map, path.p, path.n, &ev->mapped.n);
        if (!ev->mapped.p)
            return W_MAP;
    }
    return W_MATCH;
}

int dt_rules_percent_at(const dt_redirect *rd, int64_t now)
{
    if (rd->nramp == 0)
        return rd->percent;
    int percent = 0; /* before the first step */
    for (size_t i = 0; i < rd->nramp && rd->ramp[i].at <= now; i++)
        percent = rd->ramp[i].percent;
    return percent;
}

/* The value that keeps a client on one side; the client IP when the header or cookie is absent. */
static dt_str sticky_key(const dt_redirect *rd, const dt_request_info *req, bool *fallback)
{
    dt_str v = {NULL, 0};
    *fallback = false;
    if (rd->sticky != DT_STICKY_CLIENT_IP && req->header) {
        bool cookie = rd->sticky == DT_STICKY_COOKIE;
        v.p = req->header(req->header_ctx, cookie ? "Cookie" : rd->sticky_name, &v.n);
        if (v.p && cookie &&
            !dt_cookie_find(v, (dt_str){rd->sticky_name, strlen(rd->sticky_name)}, &v))
            v.p = NULL;
    }
    if (v.p && v.n > 0)
        return v;
    *fallback = rd->sticky != DT_STICKY_CLIENT_IP;
    return req->client_ip;
}

static bool flag_present(const dt_flag *f, const dt_request_info *req)
{
    if (req->flag_override != 0)
        return req->flag_override > 0;
    return dt_flag_present(f);
}

/* Is the (matching) route active for this request? */
static why route_active(const dt_route *r, const dt_request_info *req, eval *ev)
{
    if (r->kind != DT_ROUTE_REDIRECT)
        return W_MATCH;
    const dt_redirect *rd = &r->redirect;
    if (rd->has_from && req->now < rd->from)
        return W_NOT_YET;
    if (rd->has_until && req->now >= rd->until)
        return W_ENDED;
    if (rd->when_file && !flag_present(rd->when_file, req))
        return W_FLAG;
    ev->percent = dt_rules_percent_at(rd, req->now);
    if (ev->percent < 100) {
        ev->key = sticky_key(rd, req, &ev->key_fallback);
        if (!dt_sticky_selected((dt_str){r->name, strlen(r->name)}, ev->key, ev->percent))
            return W_PERCENT;
    }
    return rd->dry_run ? W_DRY_RUN : W_MATCH;
}

/* ---- building the answer ------------------------------------------------- */

static dt_str group_value(const eval *ev, size_t g, dt_str path)
{
    if (g >= ev->ngroups || ev->groups[g].rm_so < 0)
        return (dt_str){NULL, 0};
    return (dt_str){path.p + ev->groups[g].rm_so,
                    (size_t)(ev->groups[g].rm_eo - ev->groups[g].rm_so)};
}

static dt_str pick_target(const dt_redirect *rd, bool advance)
{
    if (rd->ntargets == 0)
        return (dt_str){NULL, 0};
    unsigned n = 0;
    if (rd->rr)
        n = advance ? atomic_fetch_add_explicit(rd->rr, 1, memory_order_relaxed)
                    : atomic_load_explicit(rd->rr, memory_order_relaxed);
    const char *t = rd->targets[n % rd->ntargets];
    return (dt_str){t, strlen(t)};
}

static void clear_location(dt_verdict *out)
{
    out->location_len = 0;
    if (out->location && out->location_cap)
        out->location[0] = '\0';
}

/* Expand R's Location into the verdict's buffer. ADVANCE: move the targets cursor. */
static int build_location(const dt_route *r, const dt_request_info *req, const eval *ev,
                          dt_verdict *out, bool advance)
{
    const dt_redirect *rd = &r->redirect;
    dt_template_vars v = {0};
    v.v[DT_TVAR_SCHEME] = req->scheme;
    v.v[DT_TVAR_HOST] = req->host;
    v.v[DT_TVAR_URI] = req->path;
    v.v[DT_TVAR_ARGS] = req->query;
    /* $is_args and $request_uri are derived by the template from $uri and $args. */
    size_t skip = r->match.prefix ? r->match.prefix_len : 0;
    v.v[DT_TVAR_SUFFIX] = (dt_str){req->path.p + skip, req->path.n - skip};
    for (size_t g = 1; g < GROUPS_MAX; g++)
        v.v[DT_TVAR_GROUP1 + g - 1] = group_value(ev, g, req->path);
    if (dt_template_uses(rd->to) & (1u << DT_TVAR_TARGET))
        v.v[DT_TVAR_TARGET] = pick_target(rd, advance);
    v.v[DT_TVAR_MAPPED] = ev->mapped;
    long n = out->location && out->location_cap
                 ? dt_template_expand(rd->to, &v, out->location, out->location_cap)
                 : -1;
    if (n < 0) {
        clear_location(out);
        return DT_ETOOBIG;
    }
    out->location_len = (size_t)n;
    return DT_OK;
}

/* R won: fill the verdict. */
static int fill_verdict(const dt_route *r, const dt_request_info *req, const eval *ev,
                        dt_verdict *out, bool advance)
{
    out->route = r;
    if (r->kind == DT_ROUTE_RELAY) {
        out->kind = DT_VERDICT_RELAY;
        out->upstream = r->relay.upstream;
        clear_location(out);
        return DT_OK;
    }
    out->kind = DT_VERDICT_REDIRECT;
    out->status = r->redirect.status;
    out->retry_after = r->redirect.retry_after;
    return build_location(r, req, ev, out, advance);
}

/* ---- tracing (--explain) ------------------------------------------------- */

static const char *sticky_kind_name(dt_sticky_kind k)
{
    return k == DT_STICKY_HEADER ? "header" : k == DT_STICKY_COOKIE ? "cookie" : "client_ip";
}

/* "matched; client in 25% (...)" or "client not in 25% (...)". */
static void format_percent(const dt_route *r, const eval *ev, bool in, char *buf, size_t cap)
{
    const dt_redirect *rd = &r->redirect;
    unsigned bucket = dt_sticky_bucket((dt_str){r->name, strlen(r->name)}, ev->key);
    snprintf(buf, cap, "%s %d%% (sticky %s%s%s%s = \"%.*s\", bucket %u of 10000)",
             in ? "matched; client in" : "client not in", ev->percent, sticky_kind_name(rd->sticky),
             rd->sticky_name ? ":" : "", rd->sticky_name ? rd->sticky_name : "",
             ev->key_fallback ? " absent, client_ip" : "", (int)ev->key.n,
             ev->key.p ? ev->key.p : "", bucket);
}

static void format_time(int64_t t, char *buf, size_t cap)
{
    time_t tt = (time_t)t;
    struct tm tm;
    gmtime_r(&tt, &tm);
    strftime(buf, cap, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

static void format_why(const dt_route *r, const decision *d, const eval *ev, why w, char *buf,
                       size_t cap)
{
    const dt_match *m = &r->match;
    const dt_redirect *rd = &r->redirect;
    char when[32];
    switch (w) {
    case W_MATCH:
        if (r->kind == DT_ROUTE_REDIRECT && ev->percent < 100)
            format_percent(r, ev, true, buf, cap);
        else
            snprintf(buf, cap, "matched");
        break;
    case W_METHOD:
        snprintf(buf, cap, "method %.*s not listed", (int)d->req->method.n, d->req->method.p);
        break;
    case W_HOST:
        snprintf(buf, cap, "host \"%.*s\" does not match", (int)d->host.n, d->host.p);
        break;
    case W_PATH:
        snprintf(buf, cap, "path is not \"%s\"", m->path);
        break;
    case W_PREFIX:
        snprintf(buf, cap, "path does not start with \"%s\"", m->prefix);
        break;
    case W_REGEX:
        snprintf(buf, cap, "regex \"%s\" does not match", m->regex_src);
        break;
    case W_MAP:
        snprintf(buf, cap, "path not in the map");
        break;
    case W_NOT_YET:
        format_time(rd->from, when, sizeof(when));
        snprintf(buf, cap, "window not open yet (from %s)", when);
        break;
    case W_ENDED:
        format_time(rd->until, when, sizeof(when));
        snprintf(buf, cap, "window closed (until %s)", when);
        break;
    case W_FLAG:
        snprintf(buf, cap, "when_file %s is absent", dt_flag_path(rd->when_file));
        break;
    case W_PERCENT:
        format_percent(r, ev, false, buf, cap);
        break;
    case W_DRY_RUN:
        snprintf(buf, cap, "dry run: would redirect (%d) to %s; matching goes on", rd->status,
                 d->out->location_len ? d->out->location : "(too long)");
        break;
    }
}

static void trace_route(const dt_route *r, const decision *d, const eval *ev, why w)
{
    char buf[512];
    if (!d->trace)
        return;
    if (w == W_DRY_RUN) /* show where it would go: the buffer is overwritten by the answer */
        build_location(r, d->req, ev, d->out, false);
    format_why(r, d, ev, w, buf, sizeof(buf));
    d->trace(d->trace_ctx, r, buf);
}

/* ---- the decision -------------------------------------------------------- */

/* Try route R: DT_OK or DT_ETOOBIG when it decides, GO_ON to try the next. */
static int evaluate(const dt_route *r, decision *d)
{
    eval ev;
    why w = route_match(r, d, &ev);
    if (w == W_MATCH)
        w = route_active(r, d->req, &ev);
    trace_route(r, d, &ev, w);
    if (w == W_DRY_RUN && d->out->ndry_run < DT_DRY_RUN_MAX)
        d->out->dry_run[d->out->ndry_run++] = r;
    if (w != W_MATCH)
        return GO_ON;
    return fill_verdict(r, d->req, &ev, d->out, true);
}

static void verdict_reset(dt_verdict *out)
{
    out->kind = DT_VERDICT_NO_ROUTE;
    out->route = NULL;
    out->upstream = NULL;
    out->status = 0;
    out->retry_after = -1;
    clear_location(out);
    out->ndry_run = 0;
}

static int decide_scan(const dt_route *routes, size_t n, decision *d)
{
    for (size_t i = 0; i < n; i++) {
        int rc = evaluate(&routes[i], d);
        if (rc != GO_ON)
            return rc;
    }
    return GO_ON;
}

static int decide_indexed(const dt_ruleset *rs, decision *d)
{
    cands c;
    if (!gather(rs, d->req->path, d->host, &c))
        return decide_scan(rs->routes, rs->nroutes, d);
    for (size_t i = 0; i < c.n; i++) {
        int rc = evaluate(&rs->routes[c.idx[i]], d);
        if (rc != GO_ON)
            return rc;
    }
    return GO_ON;
}

int dt_rules_decide_trace(const dt_config *cfg, const dt_request_info *req, dt_verdict *out,
                          dt_rules_trace_fn trace, void *trace_ctx)
{
    decision d = {.rs = cfg->rules,
                  .req = req,
                  .host = strip_trailing_dot(req->host),
                  .out = out,
                  .trace = trace,
                  .trace_ctx = trace_ctx};
    verdict_reset(out);
    int rc =
        cfg->rules ? decide_indexed(cfg->rules, &d) : decide_scan(cfg->routes, cfg->nroutes, &d);
    if (rc != GO_ON)
        return rc;
    clear_location(out); /* a dry-run trace may have used the buffer */
    return DT_OK;
}

int dt_rules_decide(const dt_config *cfg, const dt_request_info *req, dt_verdict *out)
{
    return dt_rules_decide_trace(cfg, req, out, NULL, NULL);
}

int dt_rules_route_apply(const dt_route *route, const dt_request_info *req, dt_verdict *out)
{
    decision d = {.req = req, .host = strip_trailing_dot(req->host), .out = out};
    eval ev;
    verdict_reset(out);
    if (route_match(route, &d, &ev) != W_MATCH)
        return DT_ENOTFOUND;
    return fill_verdict(route, req, &ev, out, false);
}
