/*
 * rules.h - the route decision: a pure function from (snapshot, request) to a
 * verdict. No I/O, no globals, no allocation on the request path; the only
 * shared state it reads are the snapshot's atomic runtime cells (flag file
 * presence, the targets round-robin cursor).
 *
 * Routes are tried in file order and the first route whose match holds and
 * that is active wins. Matching cost does not grow with the number of routes:
 * dt_ruleset_build() indexes routes by exact path, by literal prefix (for
 * `prefix` and for regexes that start with ^ and a literal), by map and by
 * host, so a decision only looks at the few candidate routes for a request.
 */
#ifndef DETOUR_RULES_H
#define DETOUR_RULES_H

#include "detour/config.h"

/* The longest Location detour will build; longer ones are an error (500). */
#define DT_LOCATION_MAX 16384
/* Dry-run hits remembered in one verdict (for logs and counters). */
#define DT_DRY_RUN_MAX 4
/*
 * Candidate routes one decision gathers from the index on its stack. When a
 * request has more (e.g. hundreds of routes with neither path, literal prefix,
 * map nor host), the decision scans every route in order instead: slower,
 * never different.
 */
#define DT_RULES_CANDIDATES_MAX 256

/*
 * What the rule engine sees of a request. Every string is borrowed from the
 * caller and raw as received (no decoding). Lengths are explicit; strings need
 * not be NUL-terminated.
 */
typedef struct dt_request_info {
    dt_str method;    /* "GET" */
    dt_str scheme;    /* "http" or "https": the scheme the client used */
    dt_str host;      /* Host (or the absolute-form authority) without port; may be empty */
    dt_str path;      /* raw path, before '?'; "*" for asterisk-form */
    dt_str query;     /* raw query after '?', without it; .n == 0 when none */
    dt_str client_ip; /* textual client address, for sticky = client_ip */
    /*
     * First value of the request header NAME (case-insensitive), or NULL when
     * absent; *len receives its length. Used for sticky header: and cookie:
     * keys. May be NULL when the caller has no headers (then keys are absent).
     */
    const char *(*header)(void *ctx, const char *name, size_t *len);
    void *header_ctx;
    int64_t now; /* unix seconds, for windows and ramps */
    /*
     * when_file flags: 0 (the default) uses each flag's observed state; 1
     * treats every flag as present, -1 as absent. For `expect` cases and
     * tests, which must not depend on files of the machine running them.
     */
    int flag_override;
} dt_request_info;

typedef enum dt_verdict_kind {
    DT_VERDICT_RELAY = 0, /* relay to verdict.upstream (NULL: the request's own destination) */
    DT_VERDICT_REDIRECT,  /* answer verdict.status with verdict.location */
    DT_VERDICT_NO_ROUTE,  /* no route matched: 404 in reverse mode, own destination otherwise */
} dt_verdict_kind;

typedef struct dt_verdict {
    dt_verdict_kind kind;
    const dt_route *route;       /* the winning route; NULL for NO_ROUTE */
    const dt_upstream *upstream; /* RELAY: the route's upstream (may be NULL) */
    int status;                  /* REDIRECT: 301/302/303/307/308 */
    int retry_after;             /* REDIRECT: seconds, -1 = none */
    char *location;              /* REDIRECT: caller's buffer, NUL-terminated */
    size_t location_len;
    size_t location_cap;                     /* set by the caller before the call */
    const dt_route *dry_run[DT_DRY_RUN_MAX]; /* dry-run routes that would have redirected */
    size_t ndry_run;
} dt_verdict;

/*
 * Called by dt_rules_decide_trace() for each candidate route it examines, in
 * order, with a short reason ("matched", "outside window", "client not in
 * 25%", ...). For --explain.
 */
typedef void (*dt_rules_trace_fn)(void *ctx, const dt_route *route, const char *why);

/*
 * Build the match index for ROUTES (kept by pointer; they must outlive it).
 * Returns NULL on allocation failure. Called once per snapshot by config.c.
 */
struct dt_ruleset *dt_ruleset_build(const dt_route *routes, size_t nroutes);
void dt_ruleset_free(struct dt_ruleset *rs);

/*
 * Decide what to do with REQ. The caller sets out->location and
 * out->location_cap (DT_LOCATION_MAX is enough) before the call.
 * Returns DT_OK with *out filled, or DT_ETOOBIG when a Location would not fit
 * in the caller's buffer (then out->kind is REDIRECT, out->route the route
 * and the location empty, so the caller can answer 500 and log the route).
 * Thread-safe; never blocks; allocates nothing itself (glibc's regexec()
 * may use the heap internally for a `regex` route).
 */
int dt_rules_decide(const dt_config *cfg, const dt_request_info *req, dt_verdict *out);

/* dt_rules_decide() that reports every candidate it examines to TRACE. */
int dt_rules_decide_trace(const dt_config *cfg, const dt_request_info *req, dt_verdict *out,
                          dt_rules_trace_fn trace, void *trace_ctx);

/*
 * Evaluate ROUTE alone for REQ, ignoring whether it is active (window,
 * when_file, percent, dry_run): for the linter, which asks what a route does
 * when it fires. Returns DT_ENOTFOUND when its match does not hold; DT_OK
 * with *out filled as dt_rules_decide() would (a redirect's Location built,
 * the targets cursor read but not advanced); DT_ETOOBIG when the Location
 * does not fit.
 */
int dt_rules_route_apply(const dt_route *route, const dt_request_info *req, dt_verdict *out);

/*
 * The literal every path matching REGEX must start with: the bytes after a
 * leading '^' up to the first metacharacter (a character made optional by a
 * following ? * { is dropped; any '|' means no prefix). Writes it to OUT
 * (cap bytes, NUL-terminated) and returns its length; 0 when there is none.
 */
size_t dt_regex_literal_prefix(const char *regex, char *out, size_t cap);

/* The percent in force for a redirect at NOW (ramp steps or fixed percent). */
int dt_rules_percent_at(const dt_redirect *rd, int64_t now);

/*
 * Does HOST (no port, any case) match one of MATCH's host patterns? A
 * trailing dot (an FQDN "example.com.") is ignored. "*.example.com" matches
 * every subdomain at any depth, not example.com itself.
 */
bool dt_rules_host_matches(const dt_match *match, dt_str host);

#endif
