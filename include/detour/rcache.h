/*
 * rcache.h - detour's own redirect answers, made once and sent many times.
 *
 * A redirect answer is fully determined by its status, Location and
 * Retry-After: the HTML note, Cache-Control and Content-Type follow from
 * them, plus the Date of the second it was made (httpdate.h); libmicrohttpd
 * adds Content-Length when it sends. Building
 * the response object costs a dozen allocations and copies per redirect; a
 * libmicrohttpd response can be queued on any number of connections, so each
 * worker keeps the answers it made recently and queues the same object again
 * when the same Location comes round (a maintenance page, a moved site's
 * popular URLs, a bulk map's hot entries).
 *
 * One cache per worker thread, no locking. Entries are direct-mapped by a
 * hash of the key; a request holding an entry's response pins it until the
 * response is queued (libmicrohttpd then holds its own reference) or
 * dropped, and a pinned entry is never evicted. Nothing in an entry depends
 * on the configuration, so reloads leave the cache alone.
 */
#ifndef DETOUR_RCACHE_H
#define DETOUR_RCACHE_H

#include "detour/common.h"
#include "detour/httpdate.h"

struct MHD_Response;

/* Entries per worker, and the longest Location worth keeping. */
#define DT_RCACHE_SLOTS 128
#define DT_RCACHE_LOCATION_MAX 1024

typedef struct dt_rcache_entry {
    struct MHD_Response *resp; /* the cache's reference; NULL = free slot */
    uint64_t hash;
    int status;
    int retry_after; /* seconds, -1 = none */
    size_t body_len;
    int64_t date_sec; /* the second in resp's Date: a later second remakes it */
    unsigned pins;    /* requests holding resp until they queue or drop it */
    char *location;   /* owned, NUL-terminated */
    size_t location_len;
} dt_rcache_entry;

typedef struct dt_rcache {
    dt_rcache_entry slots[DT_RCACHE_SLOTS];
    dt_httpdate date;      /* the worker's Date value, for cached and private answers */
    uint64_t hits, misses; /* for tests and benchmarks */
} dt_rcache;

/*
 * A new response (the caller's reference) for the redirect STATUS to
 * LOCATION (NUL-terminated at location.n) with RETRY_AFTER (seconds, -1 =
 * none): the escaped HTML note, Date (DATE; NULL lets libmicrohttpd add it),
 * Location, Cache-Control: no-store, Content-Type and Retry-After.
 * *BODY_LEN gets the note's length. NULL when out of memory.
 */
struct MHD_Response *dt_redirect_response(int status, dt_str location, int retry_after,
                                          const char *date, size_t *body_len);

/*
 * The cached answer for the key at NOW (Unix seconds), made now if needed,
 * pinned for the caller. An answer made in an earlier second is made again
 * so that its Date is current. NULL when it cannot be cached (Location too
 * long, its slot pinned by another key or by the previous second's answer,
 * out of memory): make a private one with dt_redirect_response.
 */
dt_rcache_entry *dt_rcache_get(dt_rcache *c, int status, dt_str location, int retry_after,
                               int64_t now);

/* The caller is done with E's response (queued or dropped). */
void dt_rcache_unpin(dt_rcache_entry *e);

/* Drop every entry's response (worker teardown: no request holds one). */
void dt_rcache_clear(dt_rcache *c);

#endif
