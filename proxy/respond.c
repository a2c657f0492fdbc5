/*
 * respond.c - the upstream's answer on its way to the client: status and
 * Location rewrites, header filtering, small bodies answered from memory,
 * streamed bodies read out of the download ring, and failures made visible.
 */
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>

#include "detour/front_int.h"
#include "detour/leaklog.h"
#include "detour/log.h"
#include "detour/page.h"
#include "detour/rewrite.h"
#include "detour/upstream.h"

/* Block size of streamed responses: bigger blocks cost memset time in MHD. */
#define DT_STREAM_BLOCK (64 * 1024)

/* ------------------------------------------------------------ streamed responses */

/*
 * End a streamed response as broken: the client must see a truncated message
 * (no final chunk, or fewer bytes than Content-Length), and see it now.
 * libmicrohttpd 0.9.75 marks the connection closed when a chunked reader
 * reports an error but, in external-epoll mode, only releases it on the
 * connection's next timeout (its idle loop breaks out before the cleanup
 * step). So shut the socket down ourselves, and give the connection a
 * timeout of its own: connections with one are visited on every MHD_run,
 * which completes the cleanup at once.
 */
static ssize_t reader_fail(dt_req *r)
{
    unsigned idle_s = (unsigned)((r->cfg->timeouts.idle_ms + 999) / 1000);

    if (r->conn != NULL && r->conn->fd >= 0)
        shutdown(r->conn->fd, SHUT_RDWR);
    MHD_set_connection_option(r->mhd, MHD_CONNECTION_OPTION_TIMEOUT, idle_s == 1 ? 2u : 1u);
    r->w->mhd_pending = true;
    return MHD_CONTENT_READER_END_WITH_ERROR;
}

static ssize_t body_reader(void *cls, uint64_t pos, char *buf, size_t max)
{
    dt_req *r = cls;
    size_t n;

    (void)pos;
    if (r->client_gone)
        return reader_fail(r);
    n = dt_ring_read(&r->down, buf, max);
    if (n > 0) {
        r->bytes_sent += n;
        dt_upstream_wake(r);
        return (ssize_t)n;
    }
    if (r->transfer_done)
        return r->transfer_err != DT_OK ? reader_fail(r) : MHD_CONTENT_READER_END_OF_STREAM;
    /* libmicrohttpd sends the head and body blocks with MSG_MORE/TCP_CORK,
     * expecting more to follow at once; when the upstream is slower than
     * that, what was written would wait in the kernel (a long poll would
     * never see its head). Setting TCP_NODELAY pushes it out now. */
    if (r->conn != NULL) {
        int one = 1;
        setsockopt(r->conn->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    }
    dt_front_suspend(r, DT_WAIT_BODY);
    return 0;
}

static void body_reader_free(void *cls)
{
    dt_front_req_unref(cls);
}

/* ------------------------------------------------------------ upstream answers */

static dt_str rh_name(const dt_req *r, unsigned i)
{
    return (dt_str){r->rh_buf + r->rh[i].name, r->rh[i].name_len};
}

static dt_str rh_value(const dt_req *r, unsigned i)
{
    return (dt_str){r->rh_buf + r->rh[i].value, r->rh[i].value_len};
}

static int64_t parse_length(dt_str v)
{
    uint64_t n;

    return dt_str_to_u64(v, INT64_MAX, &n) ? (int64_t)n : -1;
}

static void count_leak(dt_req *r, dt_str location)
{
    dt_metrics_location_leak(r->w->metrics, r->upstream != NULL ? r->upstream->stats : NULL);
    dt_leaklog_report(r->upstream != NULL ? r->upstream->name : NULL, location);
}

static bool add_location(dt_req *r, struct MHD_Response *resp, dt_str value)
{
    char out[DT_LOCATION_MAX];
    size_t out_len = 0;
    const dt_relay *relay =
        r->route != NULL && r->route->kind == DT_ROUTE_RELAY ? &r->route->relay : NULL;
    bool enabled = relay == NULL || relay->rewrite_location;
    const char *host = NULL;
    size_t host_len = 0;

    if (MHD_lookup_connection_value_n(r->mhd, MHD_HEADER_KIND, "Host", 4, &host, &host_len) !=
        MHD_YES) {
        host = "";
        host_len = 0;
    }
    switch (dt_rewrite_location(value, r->upstream, enabled, r->cfg,
                                (dt_str){r->scheme, strlen(r->scheme)}, (dt_str){host, host_len},
                                out, sizeof out, &out_len)) {
    case DT_LOCATION_REWRITTEN:
        free(r->location);
        r->location = strndup(out, out_len);
        return MHD_add_response_header(resp, "Location", out) == MHD_YES;
    case DT_LOCATION_LEAK:
        count_leak(r, value);
        break;
    case DT_LOCATION_KEPT:
        break;
    }
    char *copy = strndup(value.p, value.n);
    bool ok = copy != NULL && MHD_add_response_header(resp, "Location", copy) == MHD_YES;
    if (r->rewritten && copy != NULL) {
        free(r->location);
        r->location = copy;
    } else {
        free(copy);
    }
    return ok;
}

/* Copy the upstream's end-to-end headers onto RESP, then our Via. */
static bool add_upstream_headers(dt_req *r, struct MHD_Response *resp)
{
    dt_conn_tokens conn = {0};
    char via[160];

    for (unsigned i = 0; i < r->nrh; i++)
        if (dt_str_ieq_cstr(rh_name(r, i).p, rh_name(r, i).n, "Connection"))
            dt_conn_tokens_add(&conn, rh_value(r, i));
    for (unsigned i = 0; i < r->nrh; i++) {
        dt_str name = rh_name(r, i), value = rh_value(r, i);
        if (!dt_header_drop(name, &conn) && !dt_str_ieq_cstr(name.p, name.n, "Content-Length")) {
            if (!dt_header_value_ok(value))
                return false;
            if (value.n == 0)
                continue; /* libmicrohttpd cannot send an empty value */
            if (dt_str_ieq_cstr(name.p, name.n, "Location")) {
                if (!add_location(r, resp, value))
                    return false;
                continue;
            }
            /* rh_buf holds NUL-terminated names and values. */
            if (MHD_add_response_header(resp, name.p, value.p) != MHD_YES)
                return false;
        }
    }
    snprintf(via, sizeof via, "1.1 %s", r->cfg->via_name);
    return MHD_add_response_header(resp, "Via", via) == MHD_YES;
}

static bool status_has_body(int status)
{
    return status >= 200 && status != 204 && status != 304;
}

static int error_status(int err)
{
    switch (err) {
    case DT_ETIMEDOUT:
    case DT_ECONNTIMEDOUT:
        return 504;
    case DT_ELOOP:
        return 508;
    case DT_EFORBIDDEN:
        return 403;
    default:
        return 502;
    }
}

static void answer_upstream_error(dt_req *r)
{
    int status = error_status(r->transfer_err);

    dt_metrics_upstream_error(r->w->metrics, r->upstream != NULL ? r->upstream->stats : NULL,
                              r->transfer_err);
    r->action = DT_ACTION_ERROR;
    dt_front_set_answer(r, status, dt_front_page(r, status, dt_strerror(r->transfer_err)));
}

/*
 * Will the response head fit in libmicrohttpd's pool next to the request
 * head? If not, libmicrohttpd would drop the connection without a word:
 * answer 502 instead. The margin covers the status line, the headers
 * libmicrohttpd adds and its per-header bookkeeping.
 */
static bool head_fits(dt_req *r)
{
    const union MHD_ConnectionInfo *hs =
        MHD_get_connection_info(r->mhd, MHD_CONNECTION_INFO_REQUEST_HEADER_SIZE);
    size_t req = hs != NULL ? hs->header_size : 0;
    size_t resp = r->rh_len + 2u * r->nrh + 1536u;

    return req + resp <= dt_front_pool_size(r->cfg);
}

void dt_front_upstream_head(dt_req *r)
{
    struct MHD_Response *resp;
    const dt_relay *relay =
        r->route != NULL && r->route->kind == DT_ROUTE_RELAY ? &r->route->relay : NULL;
    int status = dt_rewrite_status((dt_str){r->method, r->method_len}, r->up_status,
                                   relay != NULL ? relay->rewrite_302 : r->cfg->rewrite_302,
                                   relay != NULL ? relay->rewrite_301 : r->cfg->rewrite_301);

    if (r->resp != NULL || r->state != DT_REQ_RELAY)
        return; /* an answer is already decided (413 mid-body) */
    /* Failures below only set transfer_err: this runs inside curl's header
     * callback, which then fails the transfer (a transfer cannot be removed
     * from inside its own callback), and dt_front_upstream_done answers. */
    if (!head_fits(r)) {
        r->transfer_err = DT_EHDRTOOBIG;
        return;
    }
    if (status != r->up_status) {
        r->rewritten = true;
        r->action = DT_ACTION_REWRITE;
        dt_metrics_rewrite(r->w->metrics, r->up_status, status);
    }
    for (unsigned i = 0; i < r->nrh; i++)
        if (dt_str_ieq_cstr(rh_name(r, i).p, rh_name(r, i).n, "Content-Length"))
            r->resp_length = parse_length(rh_value(r, i));
    if (!r->is_head && status_has_body(status) && r->resp_length >= 0 &&
        r->resp_length <= DT_SMALL_BODY) {
        /* Small: collect it whole, answer when the transfer is done. */
        r->small = true;
        r->status = status;
        r->small_cap = (size_t)r->resp_length;
        r->small_buf = r->small_cap > 0 ? malloc(r->small_cap) : NULL;
        if (r->small_cap > 0 && r->small_buf == NULL) {
            r->transfer_err = DT_ENOMEM;
            return;
        }
        /* If the body is not all here by the end of this loop turn, stream it
         * instead (dt_front_flush_small): the head must not wait for a slow body. */
        dt_list_append(&r->w->small_pending, &r->small_link);
        return;
    }
    if (status == 204) {
        resp = MHD_create_response_from_buffer(0, (void *)"", MHD_RESPMEM_PERSISTENT);
    } else {
        /* HEAD and 304 carry the length a GET would have had, and no body:
         * libmicrohttpd takes that length from the size and never calls the
         * reader. Everything else streams from the download ring. */
        bool body = !r->is_head && status_has_body(status);
        uint64_t size = r->resp_length >= 0 ? (uint64_t)r->resp_length
                                            : (body || r->is_head ? MHD_SIZE_UNKNOWN : 0);
        if (body && dt_ring_init(&r->down, DT_RING_SIZE) != DT_OK) {
            r->transfer_err = DT_ENOMEM;
            return;
        }
        resp = MHD_create_response_from_callback(size, DT_STREAM_BLOCK, body_reader, r,
                                                 body_reader_free);
        if (resp != NULL)
            r->refs++;
    }
    if (resp == NULL || !add_upstream_headers(r, resp)) {
        if (resp != NULL)
            MHD_destroy_response(resp);
        r->transfer_err = resp == NULL ? DT_ENOMEM : DT_EPROTO;
        return;
    }
    dt_front_set_answer(r, status, resp);
    if (r->wait == DT_WAIT_RESPONSE)
        dt_front_resume(r);
}

void dt_front_upstream_body(dt_req *r)
{
    if (r->wait == DT_WAIT_BODY)
        dt_front_resume(r);
}

static void answer_small(dt_req *r)
{
    int status = r->status; /* the client status chosen when the head arrived */
    struct MHD_Response *resp;

    dt_list_remove(&r->small_link);
    if (r->small_len != r->small_cap) {
        r->transfer_err = DT_ERESET;
        answer_upstream_error(r);
        return;
    }
    resp = MHD_create_response_from_buffer(r->small_len, r->small_len ? r->small_buf : (void *)"",
                                           r->small_len ? MHD_RESPMEM_MUST_FREE
                                                        : MHD_RESPMEM_PERSISTENT);
    if (resp == NULL) {
        r->transfer_err = DT_ENOMEM;
        answer_upstream_error(r);
        return;
    }
    if (r->small_len)
        r->small_buf = NULL; /* libmicrohttpd owns it now */
    r->bytes_sent = r->small_len;
    if (!add_upstream_headers(r, resp)) {
        MHD_destroy_response(resp);
        r->transfer_err = DT_EPROTO;
        answer_upstream_error(r);
        return;
    }
    dt_front_set_answer(r, status, resp);
}

/* A small body that did not arrive with its head: stream what is there and the rest. */
static void small_to_stream(dt_req *r)
{
    struct MHD_Response *resp;

    if (dt_ring_init(&r->down, DT_RING_SIZE) != DT_OK)
        goto fail;
    /* The ring holds at least DT_SMALL_BODY, so the whole body fits. */
    dt_ring_write(&r->down, r->small_buf, r->small_len);
    free(r->small_buf);
    r->small_buf = NULL;
    r->small = false;
    resp = MHD_create_response_from_callback((uint64_t)r->small_cap, DT_STREAM_BLOCK, body_reader,
                                             r, body_reader_free);
    if (resp == NULL)
        goto fail;
    r->refs++;
    if (!add_upstream_headers(r, resp)) {
        MHD_destroy_response(resp);
        goto fail;
    }
    dt_front_set_answer(r, r->status, resp);
    if (r->wait == DT_WAIT_RESPONSE)
        dt_front_resume(r);
    return;
fail:
    r->transfer_err = DT_ENOMEM;
    dt_upstream_abort(r);
    answer_upstream_error(r);
    if (r->wait == DT_WAIT_RESPONSE)
        dt_front_resume(r);
}

void dt_front_flush_small(dt_worker *w)
{
    while (!dt_list_empty(&w->small_pending)) {
        dt_req *r = dt_container_of(w->small_pending.next, dt_req, small_link);
        dt_list_remove(&r->small_link);
        if (r->small && !r->transfer_done && r->state == DT_REQ_RELAY && r->resp == NULL &&
            !r->client_gone)
            small_to_stream(r);
    }
}

void dt_front_upstream_done(dt_req *r)
{
    if (r->state == DT_REQ_QUEUED) {
        /* Streaming: the reader reports the end (or the failure) to the client. */
        if (r->wait == DT_WAIT_BODY)
            dt_front_resume(r);
        return;
    }
    if (r->state != DT_REQ_RELAY)
        return;
    if (r->client_gone)
        return;
    if (r->action == DT_ACTION_ERROR && r->resp != NULL) {
        /* 413 already decided */
    } else if (r->transfer_err != DT_OK) {
        /* Nothing has reached the client yet: a clean error answer is still possible. */
        answer_upstream_error(r);
    } else if (r->small) {
        answer_small(r);
    }
    if (!r->upload_done)
        r->discard = true; /* the upstream is done; the rest of the body goes nowhere */
    if (r->wait == DT_WAIT_RESPONSE || r->wait == DT_WAIT_UPLOAD)
        dt_front_resume(r);
}

void dt_front_upload_space(dt_req *r)
{
    if (r->wait == DT_WAIT_UPLOAD && dt_ring_space(&r->up) >= DT_RING_SIZE / 4)
        dt_front_resume(r);
}
