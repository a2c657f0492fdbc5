/*
 * answer.c - the answers detour gives itself: error pages, redirects, and
 * the rule for when an answer may go out (see dt_front_answer_locally).
 */
#include <stdio.h>
#include <stdlib.h>

#include "detour/front_int.h"
#include "detour/log.h"
#include "detour/page.h"

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

void dt_front_set_answer(dt_req *r, int status, struct MHD_Response *resp)
{
    if (r->resp != NULL)
        MHD_destroy_response(r->resp);
    r->resp = resp;
    r->status = status;
}

enum MHD_Result dt_front_queue(dt_req *r)
{
    enum MHD_Result ok;

    if (r->resp == NULL)
        return MHD_NO; /* out of memory: close rather than hang */
    if (r->close_after || r->w->draining)
        MHD_add_response_header(r->resp, "Connection", "close");
    ok = MHD_queue_response(r->mhd, (unsigned)r->status, r->resp);
    MHD_destroy_response(r->resp);
    r->resp = NULL;
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

enum MHD_Result dt_front_answer_redirect(dt_req *r, const dt_verdict *v, bool expect_continue)
{
    dt_str loc = {v->location, v->location_len};
    size_t cap = dt_page_redirect_size(loc);
    char *body = malloc(cap);
    struct MHD_Response *resp = NULL;

    if (body != NULL) {
        size_t n = dt_page_redirect(body, cap, v->status, loc);
        resp = MHD_create_response_from_buffer(n, body, MHD_RESPMEM_MUST_FREE);
        if (resp == NULL)
            free(body);
        r->bytes_sent = r->is_head ? 0 : n;
    }
    if (resp != NULL) {
        char ra[32];
        MHD_add_response_header(resp, "Location", v->location);
        MHD_add_response_header(resp, "Cache-Control", "no-store");
        MHD_add_response_header(resp, "Content-Type", "text/html; charset=utf-8");
        if (v->retry_after >= 0) {
            snprintf(ra, sizeof ra, "%d", v->retry_after);
            MHD_add_response_header(resp, "Retry-After", ra);
        }
    }
    r->action = DT_ACTION_REDIRECT;
    if (dt_access_log_enabled()) /* only the log reads it */
        r->location = strndup(v->location, v->location_len);
    dt_front_set_answer(r, v->status, resp);
    return dt_front_answer_locally(r, expect_continue);
}
