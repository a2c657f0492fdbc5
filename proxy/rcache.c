/*
 * rcache.c - redirect answers made once per worker and queued again when
 * the same status, Location and Retry-After come round (see rcache.h).
 */
#include <microhttpd.h>
#include <stdio.h>
#include <stdlib.h>

#include "detour/page.h"
#include "detour/rcache.h"

struct MHD_Response *dt_redirect_response(int status, dt_str location, int retry_after,
                                          const char *date, size_t *body_len)
{
    size_t cap = dt_page_redirect_size(location);
    char *body = malloc(cap);
    struct MHD_Response *resp;
    size_t n;

    *body_len = 0;
    if (body == NULL)
        return NULL;
    n = dt_page_redirect(body, cap, status, location);
    resp = MHD_create_response_from_buffer(n, body, MHD_RESPMEM_MUST_FREE);
    if (resp == NULL) {
        free(body);
        return NULL;
    }
    /* The Location came from dt_template_expand, which never lets CR, LF or
     * NUL through; libmicrohttpd refuses such a value anyway. */
    if ((date != NULL && MHD_add_response_header(resp, "Date", date) != MHD_YES) ||
        MHD_add_response_header(resp, "Location", location.p) != MHD_YES ||
        MHD_add_response_header(resp, "Cache-Control", "no-store") != MHD_YES ||
        MHD_add_response_header(resp, "Content-Type", "text/html; charset=utf-8") != MHD_YES)
        goto fail;
    if (retry_after >= 0) {
        char ra[16];
        snprintf(ra, sizeof ra, "%d", retry_after);
        if (MHD_add_response_header(resp, "Retry-After", ra) != MHD_YES)
            goto fail;
    }
    *body_len = n;
    return resp;
fail:
    MHD_destroy_response(resp);
    return NULL;
}

/* FNV-1a 64 over the Location, then the two numbers. */
static uint64_t key_hash(int status, dt_str location, int retry_after)
{
    uint64_t h = 0xcbf29ce484222325ull;

    for (size_t i = 0; i < location.n; i++)
        h = (h ^ (unsigned char)location.p[i]) * 0x100000001b3ull;
    h = (h ^ (uint64_t)(unsigned)status) * 0x100000001b3ull;
    h = (h ^ (uint64_t)(unsigned)retry_after) * 0x100000001b3ull;
    return h ^ (h >> 32);
}

static bool entry_is(const dt_rcache_entry *e, uint64_t h, int status, dt_str location,
                     int retry_after)
{
    return e->resp != NULL && e->hash == h && e->status == status &&
           e->retry_after == retry_after && e->location_len == location.n &&
           memcmp(e->location, location.p, location.n) == 0;
}

static void entry_drop(dt_rcache_entry *e)
{
    if (e->resp != NULL)
        MHD_destroy_response(e->resp);
    free(e->location);
    memset(e, 0, sizeof *e);
}

dt_rcache_entry *dt_rcache_get(dt_rcache *c, int status, dt_str location, int retry_after,
                               int64_t now)
{
    uint64_t h;
    dt_rcache_entry *e;
    char *copy;

    if (location.n > DT_RCACHE_LOCATION_MAX)
        return NULL;
    h = key_hash(status, location, retry_after);
    e = &c->slots[h % DT_RCACHE_SLOTS];
    if (entry_is(e, h, status, location, retry_after) && e->date_sec == now) {
        c->hits++;
        e->pins++;
        return e;
    }
    c->misses++;
    if (e->pins > 0)
        return NULL; /* a request still holds the old answer (or last second's) */
    entry_drop(e);
    copy = strndup(location.p, location.n);
    if (copy == NULL)
        return NULL;
    e->resp = dt_redirect_response(status, (dt_str){copy, location.n}, retry_after,
                                   dt_httpdate_at(&c->date, now), &e->body_len);
    if (e->resp == NULL) {
        free(copy);
        return NULL;
    }
    e->hash = h;
    e->status = status;
    e->retry_after = retry_after;
    e->location = copy;
    e->location_len = location.n;
    e->date_sec = now;
    e->pins = 1;
    return e;
}

void dt_rcache_unpin(dt_rcache_entry *e)
{
    if (e->pins > 0)
        e->pins--;
}

void dt_rcache_clear(dt_rcache *c)
{
    for (size_t i = 0; i < DT_RCACHE_SLOTS; i++)
        entry_drop(&c->slots[i]);
}
