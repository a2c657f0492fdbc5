/*
 * answer.c - the answers detour gives itself: error pages, redirects, and
 * the rule for when an answer may go out (see dt_front_answer_locally).
 */
#include <stdlib.h>
#include <strings.h>

#include "detour/front_int.h"
#include "detour/log.h"
#include "detour/page.h"
#include "detour/rcache.h"

/* ------------------------------------------------------------ local answers */

struct MHD_Response *dt_front_page(dt_req *r, int status, const char *detail)
{
    char buf[2048];
    size_t n = dt_page_error(buf, sizeof buf, status, detail);
    struct MHD_Response *resp;

    if (n >= sizeof buf)
        n = 0;
    resp = MHD_create_response_from_buffer(n, buf, MHD_RESPMEM_MUST_COPY);
    r->bytes_sent = r->is_head ? 0 : n;

    if (resp != NULL)
        MHD_add_response_header(resp, "Content-Type", "text/html; charset=utf-8");
    return resp;
}

/*
 * Let go of R's answer: unpin a cached one, destroy our reference to a
 * private one. R forgets it first: destroying a streamed response drops the
 * response's reference to R, which may end R.
 */
void dt_front_drop_answer(dt_req *r)
{
    struct MHD_Response *resp = r->resp;
    dt_rcache_entry *shared = r->shared;

    r->resp = NULL;
    r->shared = NULL;
    if (shared != NULL)
        dt_rcache_unpin(shared);
    else if (resp != NULL)
        MHD_destroy_response(resp);
}

void dt_front_set_answer(dt_req *r, int status, struct MHD_Response *resp)
{
    dt_front_drop_answer(r);
    r->resp = resp;
    r->status = status;
}

/* The Date for R's own redirect: the worker's, formatted once a second. */
static const char *redirect_date(dt_req *r)
{
    return r->w->rcache != NULL ? dt_httpdate_at(&r->w->rcache->date, (int64_t)time(NULL)) : NULL;
}

/* Swap a cached answer for a private copy that may take more headers. */
static bool own_answer(dt_req *r)
{
    const dt_rcache_entry *e = r->shared;
    struct MHD_Response *copy;
    size_t n;

    if (e == NULL)
        return true;
    copy = dt_redirect_response(e->status, (dt_str){e->location, e->location_len}, e->retry_after,
                                redirect_date(r), &n);
    dt_front_set_answer(r, r->status, copy); /* unpins e */
    return copy != NULL;
}

static enum MHD_Result find_date(void *cls, enum MHD_ValueKind kind, const char *name,
                                 const char *value)
{
    const char **date = cls;
    if (kind != MHD_HEADER_KIND || strcasecmp(name, "Date") != 0)
        return MHD_YES;
    date[0] = name;
    date[1] = value;
    return MHD_NO;
}

/*
 * Add Connection: close to RESP. libmicrohttpd 0.9.75 assigns its record of
 * the special headers a response has when a Connection header is added,
 * rather than adding to it, so it forgets the Date RESP carries (the
 * upstream's, or a redirect's) and would send a second one of its own. Taking
 * the Date out and putting it back sets the record right.
 */
static void add_connection_close(struct MHD_Response *resp)
{
    const char *date[2] = {NULL, NULL};
    char *name, *value;

    MHD_get_response_headers(resp, find_date, date);
    MHD_add_response_header(resp, "Connection", "close");
    if (date[0] == NULL)
        return;
    name = strdup(date[0]); /* the originals go with the removed header */
    value = strdup(date[1]);
    if (name != NULL && value != NULL && MHD_del_response_header(resp, name, value) == MHD_YES)
        MHD_add_response_header(resp, name, value); /* failing, libmicrohttpd adds one */
    free(name);
    free(value);
}

enum MHD_Result dt_front_queue(dt_req *r)
{
    enum MHD_Result ok;

    if (r->resp == NULL)
        return MHD_NO; /* out of memory: close rather than hang */
    if (r->close_after || r->w->draining) {
        if (!own_answer(r))
            return MHD_NO;
        add_connection_close(r->resp);
    }
    ok = MHD_queue_response(r->mhd, (unsigned)r->status, r->resp);
    dt_front_drop_answer(r); /* libmicrohttpd holds its own reference now */
    r->state = DT_REQ_QUEUED;
    return ok;
}

/* Answer right away and close: for requests that must not be read any further. */
enum MHD_Result dt_front_answer_and_close(dt_req *r, int status, const char *detail)
{
    r->action = DT_ACTION_ERROR;
    r->close_after = true;
    dt_front_set_answer(r, status, dt_front_page(r, status, detail));
    return dt_front_queue(r);
}

/*
 * Answer with R's prepared response without relaying the body. Without a
 * body it goes out at the final call so the connection stays usable; a body
 * is read and dropped when it is small enough to be worth keeping the
 * connection for, otherwise the answer goes out now and the connection closes.
 * A client waiting for "100 Continue" never sent its body: answer at once.
 */
enum MHD_Result dt_front_answer_locally(dt_req *r, bool expect_continue)
{
    r->state = DT_REQ_LOCAL;
    if (!r->has_body)
        return MHD_YES;
    if (expect_continue || (!r->chunked && r->content_length > DT_DISCARD_MAX)) {
        r->close_after = true;
        return dt_front_queue(r);
    }
    r->discard = true;
    return MHD_YES;
}

enum MHD_Result dt_front_answer_error(dt_req *r, int status, const char *detail,
                                      bool expect_continue)
{
    r->action = DT_ACTION_ERROR;
    dt_front_set_answer(r, status, dt_front_page(r, status, detail));
    return dt_front_answer_locally(r, expect_continue);
}

/* A cached answer when the same redirect was made recently (see rcache.h). */
enum MHD_Result dt_front_answer_redirect(dt_req *r, const dt_verdict *v, bool expect_continue)
{
    dt_str loc = {v->location, v->location_len};
    dt_rcache_entry *e = r->w->rcache != NULL ? dt_rcache_get(r->w->rcache, v->status, loc,
                                                              v->retry_after, (int64_t)time(NULL))
                                              : NULL;
    size_t n = 0;

    r->action = DT_ACTION_REDIRECT;
    if (dt_access_log_enabled()) /* only the log reads it */
        r->location = strndup(v->location, v->location_len);
    if (e != NULL) {
        dt_front_set_answer(r, v->status, e->resp);
        r->shared = e;
        n = e->body_len;
    } else {
        dt_front_set_answer(
            r, v->status,
            dt_redirect_response(v->status, loc, v->retry_after, redirect_date(r), &n));
    }
    r->bytes_sent = r->is_head ? 0 : n;
    return dt_front_answer_locally(r, expect_continue);
}
