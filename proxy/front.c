/*
 * front.c - the client side of detour on libmicrohttpd 0.9.75.
 *
 * Each worker runs its daemons in external-epoll mode with no listening
 * socket of their own: the worker accepts and hands sockets over with
 * MHD_add_connection. A request's life, as libmicrohttpd drives it:
 *
 *   uri_cb        request line read: the dt_req is born, the raw target kept
 *   access_cb #1  head complete: validate, decide, start the upstream transfer
 *                 or prepare a local answer
 *   access_cb #k  body bytes: into the upload ring (suspend when full), or
 *                 discarded for a local answer
 *   access_cb #n  body complete (*upload_data_size == 0): queue the answer,
 *                 or suspend until the upstream's head (or whole small body)
 *                 is there
 *   reader        streamed response body out of the download ring; suspends
 *                 when the ring is empty
 *   completed_cb  log, count, drop libmicrohttpd's reference
 *
 * Rules of libmicrohttpd this file lives by (see DESIGN.md): a response is
 * queued only in the first call (which makes libmicrohttpd close the
 * connection afterwards: used for errors) or in the final call (keep-alive
 * preserved); returning without a response or a 0 from the reader is only
 * allowed together with MHD_suspend_connection; a resume is noticed only by
 * the next MHD_run, so the worker runs the daemons after every batch of
 * events.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <microhttpd.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/epoll.h>
#include <unistd.h>

#include "detour/access.h"
#include "detour/front.h"
#include "detour/leaklog.h"
#include "detour/log.h"
#include "detour/page.h"
#include "detour/rewrite.h"
#include "detour/rules.h"
#include "detour/target.h"
#include "detour/upstream.h"

/* The most request headers relayed; a larger head is refused with 431. */
#define DT_REQ_HEADERS_MAX 256
/* Block size of streamed responses: bigger blocks cost memset time in MHD. */
#define DT_STREAM_BLOCK (16 * 1024)

static dt_conn *conn_of(struct MHD_Connection *c)
{
    const union MHD_ConnectionInfo *i =
        MHD_get_connection_info(c, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
    return i != NULL ? i->socket_context : NULL;
}

/* ------------------------------------------------------------ request objects */

static dt_req *req_new(dt_worker *w, dt_conn *k, struct MHD_Connection *c, const char *uri)
{
    dt_req *r = dt_cache_get(&w->req_cache);
    size_t len = strlen(uri);

    if (r == NULL)
        return NULL;
    memset(r, 0, sizeof *r);
    r->target = len < sizeof r->target_inline ? r->target_inline : malloc(len + 1);
    if (r->target == NULL) {
        dt_cache_put(&w->req_cache, r);
        return NULL;
    }
    memcpy(r->target, uri, len + 1);
    r->target_len = len;
    r->up_target = r->target;
    r->w = w;
    r->conn = k;
    r->mhd = c;
    r->cfg = dt_config_ref(w->cfg);
    r->refs = 1;
    r->content_length = -1;
    r->resp_length = -1;
    r->start_us = dt_now_us();
    r->start_wall = dt_wall_s();
    r->client_ev.kind = DT_EV_CLIENT;
    r->action = DT_ACTION_RELAY;
    dt_list_init(&r->link);
    dt_list_init(&r->timer);
    dt_list_init(&r->susp_link);
    dt_list_init(&r->small_link);
    return r;
}

static void req_unref(dt_req *r)
{
    if (--r->refs > 0)
        return;
    dt_upstream_abort(r);
    if (r->resp != NULL)
        MHD_destroy_response(r->resp);
    dt_ring_free(&r->up);
    dt_ring_free(&r->down);
    free(r->small_buf);
    dt_cache_put(&r->w->rh_cache, r->rh_buf);
    free(r->location);
    free(r->url);
    if (r->up_target != r->target)
        free(r->up_target);
    if (r->target != r->target_inline)
        free(r->target);
    dt_config_unref(r->cfg);
    dt_cache_put(&r->w->req_cache, r);
}

/* ------------------------------------------------------------ suspend / resume */

/*
 * A suspended connection has left libmicrohttpd's epoll set, so a client
 * hanging up goes unnoticed. Watching every suspension would cost two
 * epoll_ctl calls per request; instead the sweep watches the ones suspended
 * for longer than DT_HANGUP_WATCH_MS (dt_front_sweep), which bounds how long
 * an abandoned request can hold its upstream.
 */
#define DT_HANGUP_WATCH_MS 1000

static void suspend(dt_req *r, dt_wait why)
{
    r->wait = why;
    MHD_suspend_connection(r->mhd);
    r->suspended_at = dt_now_ms();
    dt_list_append(&r->w->suspended, &r->susp_link);
}

static void unwatch(dt_req *r)
{
    if (r->watching) {
        dt_worker_unwatch(r->w, r->conn->fd);
        r->watching = false;
    }
}

static void resume(dt_req *r)
{
    if (r->wait == DT_WAIT_NONE)
        return;
    unwatch(r);
    dt_list_remove(&r->susp_link);
    dt_list_remove(&r->small_link);
    r->wait = DT_WAIT_NONE;
    MHD_resume_connection(r->mhd);
    r->w->mhd_pending = true;
}

void dt_front_client_hangup(dt_req *r)
{
    r->client_gone = true;
    dt_upstream_abort(r);
    resume(r);
}

/* ------------------------------------------------------------ local answers */

static struct MHD_Response *page_response(dt_req *r, int status, const char *detail)
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

static void set_answer(dt_req *r, int status, struct MHD_Response *resp)
{
    if (r->resp != NULL)
        MHD_destroy_response(r->resp);
    r->resp = resp;
    r->status = status;
}

static enum MHD_Result queue(dt_req *r)
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
static enum MHD_Result answer_and_close(dt_req *r, int status, const char *detail)
{
    r->action = DT_ACTION_ERROR;
    r->close_after = true;
    set_answer(r, status, page_response(r, status, detail));
    return queue(r);
}

/*
 * Answer with R's prepared response without relaying the body. Without a
 * body it goes out at the final call so the connection stays usable; a body
 * is read and dropped when it is small enough to be worth keeping the
 * connection for, otherwise the answer goes out now and the connection closes.
 * A client waiting for "100 Continue" never sent its body: answer at once.
 */
static enum MHD_Result answer_locally(dt_req *r, bool expect_continue)
{
    r->state = DT_REQ_LOCAL;
    if (!r->has_body)
        return MHD_YES;
    if (expect_continue || (!r->chunked && r->content_length > DT_DISCARD_MAX)) {
        r->close_after = true;
        return queue(r);
    }
    r->discard = true;
    return MHD_YES;
}

static enum MHD_Result answer_error(dt_req *r, int status, const char *detail, bool expect_continue)
{
    r->action = DT_ACTION_ERROR;
    set_answer(r, status, page_response(r, status, detail));
    return answer_locally(r, expect_continue);
}

static enum MHD_Result answer_redirect(dt_req *r, const dt_verdict *v, bool expect_continue)
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
    r->location = strndup(v->location, v->location_len);
    set_answer(r, v->status, resp);
    return answer_locally(r, expect_continue);
}

/* ------------------------------------------------------------ the request head */

typedef struct head_scan {
    dt_hygiene hyg;
    dt_req_header hdrs[DT_REQ_HEADERS_MAX];
    size_t n;
    bool too_many;
    bool folded;
    dt_str host_header;
    bool via_loop;
    dt_str via_name;
} head_scan;

static enum MHD_Result scan_header(void *cls, enum MHD_ValueKind kind, const char *key,
                                   size_t key_size, const char *value, size_t value_size)
{
    head_scan *s = cls;
    dt_str name = {key, key_size}, val = {value != NULL ? value : "", value_size};

    (void)kind;
    if (value != NULL && !dt_header_layout_ok(key, key_size, value))
        s->folded = true;
    dt_hygiene_add(&s->hyg, name, val);
    if (dt_str_ieq_cstr(key, key_size, "Host") && s->host_header.p == NULL)
        s->host_header = val;
    if (dt_str_ieq_cstr(key, key_size, "Via") && dt_via_names(val, s->via_name))
        s->via_loop = true;
    if (s->n == DT_REQ_HEADERS_MAX) {
        s->too_many = true;
        return MHD_NO;
    }
    s->hdrs[s->n].name = name;
    s->hdrs[s->n].value = val;
    s->n++;
    return MHD_YES;
}

static const char *lookup_header(void *ctx, const char *name, size_t *len)
{
    const char *v = NULL;

    if (MHD_lookup_connection_value_n(ctx, MHD_HEADER_KIND, name, strlen(name), &v, len) !=
        MHD_YES)
        return NULL;
    return v;
}

static enum MHD_Result start_relay(dt_req *r, const head_scan *s, bool expect_continue);

/* Host for matching and $host: the absolute-form authority, else the Host header. */
static void set_host(dt_req *r, const dt_target *t, dt_str host_header)
{
    dt_str host = {"", 0};
    unsigned port;

    if (t->form == DT_TARGET_ABSOLUTE)
        host = t->host;
    else if (host_header.p != NULL && dt_authority_split(host_header, &host, &port) != DT_OK)
        host = (dt_str){"", 0};
    if (dt_host_lower(host, r->host, sizeof r->host) < 0)
        r->host[0] = '\0';
}

/*
 * Remember where the request itself is headed, for forward and transparent
 * modes (the absolute-form authority, the original destination of a
 * redirected connection, or the Host header), and make the origin-form target
 * the upstream will get. DT_ENOMEM only.
 */
static int set_destination(dt_req *r, const dt_target *t, dt_str host_header)
{
    dt_str authority = {NULL, 0};
    bool https = false;

    if (t->form == DT_TARGET_ABSOLUTE) {
        size_t cap = t->origin_form.n + 2;
        r->up_target = malloc(cap);
        if (r->up_target == NULL || dt_target_origin_form(t, r->up_target, cap) < 0)
            return DT_ENOMEM;
        authority = t->authority;
        https = dt_str_ieq(t->scheme, DT_STR_LIT("https"));
    } else if (host_header.p != NULL) {
        authority = host_header;
    }
    if (r->cfg->mode == DT_MODE_TRANSPARENT && r->conn->has_orig_dst) {
        char ip[INET6_ADDRSTRLEN];
        const struct sockaddr *sa = (const struct sockaddr *)&r->conn->orig_dst;
        unsigned port;
        if (sa->sa_family == AF_INET6) {
            inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)sa)->sin6_addr, ip, sizeof ip);
            port = ntohs(((const struct sockaddr_in6 *)sa)->sin6_port);
            snprintf(r->dest, sizeof r->dest, "[%s]:%u", ip, port);
        } else {
            inet_ntop(AF_INET, &((const struct sockaddr_in *)sa)->sin_addr, ip, sizeof ip);
            port = ntohs(((const struct sockaddr_in *)sa)->sin_port);
            snprintf(r->dest, sizeof r->dest, "%s:%u", ip, port);
        }
        r->dest_https = false;
        return DT_OK;
    }
    if (authority.p != NULL && authority.n < sizeof r->dest) {
        memcpy(r->dest, authority.p, authority.n);
        r->dest[authority.n] = '\0';
        r->dest_https = https;
        /* RFC 9112 3.2.2: a proxy replaces Host with the target's authority,
         * whichever upstream the request goes to. */
        if (t->form == DT_TARGET_ABSOLUTE)
            r->replace_host = (dt_str){r->dest, authority.n};
    }
    return DT_OK;
}

/* Relay to the request's own destination (forward and transparent modes). */
static enum MHD_Result relay_own_destination(dt_req *r, const head_scan *s, bool expect)
{
    dt_str host;
    unsigned port = 0;

    if (r->dest[0] == '\0' ||
        dt_authority_split((dt_str){r->dest, strlen(r->dest)}, &host, &port) != DT_OK)
        return answer_error(r, 400, "no destination: absolute-form target or Host needed", expect);
    if (port == 0)
        port = r->dest_https ? 443 : 80;
    if (r->cfg->mode == DT_MODE_FORWARD) {
        dt_access a = dt_access_dest_name(&r->cfg->forward, host, port);
        if (a == DT_ACCESS_DENY)
            return answer_error(r, 403, "destination not allowed", expect);
        r->check_addr = a == DT_ACCESS_BY_ADDRESS;
        /* RFC 9112 3.2.2: a proxy replaces Host with the target's authority. */
        r->replace_host = (dt_str){r->dest, strlen(r->dest)};
    }
    if (asprintf(&r->url, "%s://%s", r->dest_https ? "https" : "http", r->dest) < 0) {
        r->url = NULL;
        return answer_error(r, 500, "out of memory", expect);
    }
    return start_relay(r, s, expect);
}

static enum MHD_Result start_relay(dt_req *r, const head_scan *s, bool expect_continue)
{
    int rc = dt_upstream_start(r, s->hdrs, s->n);

    if (rc != DT_OK)
        return answer_error(r, 500, "detour could not start the upstream request",
                            expect_continue);
    r->state = DT_REQ_RELAY;
    return MHD_YES;
}

static enum MHD_Result on_max_forwards_zero(dt_req *r, bool expect_continue)
{
    struct MHD_Response *resp;

    if (!dt_str_eq((dt_str){r->method, r->method_len}, DT_STR_LIT("OPTIONS")))
        return answer_error(r, 405, "TRACE with Max-Forwards: 0 is not answered by detour",
                            expect_continue);
    resp = MHD_create_response_from_buffer(0, (void *)"", MHD_RESPMEM_PERSISTENT);
    if (resp != NULL)
        MHD_add_response_header(resp, "Allow", "GET, HEAD, POST, PUT, DELETE, PATCH, OPTIONS");
    r->action = DT_ACTION_ERROR;
    set_answer(r, 200, resp);
    return answer_locally(r, expect_continue);
}

static enum MHD_Result decide(dt_req *r, const head_scan *s, const dt_target *t, bool expect_continue)
{
    char location[DT_LOCATION_MAX];
    dt_verdict v = {.location = location, .location_cap = sizeof location};
    dt_request_info ri = {
        .method = {r->method, r->method_len},
        .scheme = {r->scheme, strlen(r->scheme)},
        .host = {r->host, strlen(r->host)},
        .path = t->path,
        .query = t->query,
        .client_ip = {r->conn->client_ip, strlen(r->conn->client_ip)},
        .header = lookup_header,
        .header_ctx = r->mhd,
        .now = r->start_wall,
    };

    if (dt_rules_decide(r->cfg, &ri, &v) != DT_OK)
        return answer_error(r, 500, "the redirect Location would be too long", expect_continue);
    for (size_t i = 0; i < v.ndry_run; i++)
        dt_metrics_dry_run(r->w->metrics, v.dry_run[i]->stats, r->start_wall);
    r->route = v.route;
    switch (v.kind) {
    case DT_VERDICT_REDIRECT:
        return answer_redirect(r, &v, expect_continue);
    case DT_VERDICT_RELAY:
        r->upstream = v.upstream;
        break;
    case DT_VERDICT_NO_ROUTE:
        break;
    }
    if (r->upstream != NULL)
        return start_relay(r, s, expect_continue);
    if (r->cfg->mode == DT_MODE_REVERSE)
        return answer_error(r, 404, "no route for this request", expect_continue);
    return relay_own_destination(r, s, expect_continue);
}

static enum MHD_Result on_head(dt_req *r, const char *method, const char *version)
{
    head_scan *s;
    dt_target t;
    const union MHD_ConnectionInfo *hs;
    enum MHD_Result ret;

    r->method = method;
    r->method_len = strlen(method);
    r->version = version;
    r->is_head = strcmp(method, "HEAD") == 0;
    snprintf(r->scheme, sizeof r->scheme, "%s", r->conn->tls ? "https" : "http");
    dt_list_remove(&r->conn->head_link);
    r->conn->head_since = 0;

    hs = MHD_get_connection_info(r->mhd, MHD_CONNECTION_INFO_REQUEST_HEADER_SIZE);
    if (hs != NULL && hs->header_size > (size_t)r->cfg->limits.max_header_bytes)
        return answer_and_close(r, 431, "the request head is too large");

    /* One scratch scan per worker: a head is scanned start to end without re-entry. */
    if (r->w->scan == NULL)
        r->w->scan = malloc(sizeof *s);
    s = r->w->scan;
    if (s == NULL)
        return MHD_NO;
    memset(&s->hyg, 0, sizeof s->hyg);
    dt_hygiene_init(&s->hyg);
    s->n = 0;
    s->too_many = s->folded = s->via_loop = false;
    s->host_header = (dt_str){NULL, 0};
    s->via_name = (dt_str){r->cfg->via_name, strlen(r->cfg->via_name)};
    MHD_get_connection_values_n(r->mhd, MHD_HEADER_KIND, scan_header, s);
    /* libmicrohttpd measures values with strlen: "a<NUL>b" arrives as "a". */
    for (size_t i = 0; i < s->n && !s->folded; i++)
        if (!dt_header_value_end_ok(s->hdrs[i].value.p, s->hdrs[i].value.n,
                                    i + 1 < s->n ? s->hdrs[i + 1].name.p : NULL))
            s->folded = true;
    ret = MHD_YES;
    if (s->too_many)
        ret = answer_and_close(r, 431, "too many request headers");
    else if (s->folded)
        ret = answer_and_close(r, 400, "obsolete line folding or a NUL byte in a request header");
    else if (dt_hygiene_finish(&s->hyg) != 0)
        ret = answer_and_close(r, s->hyg.status, s->hyg.reason);
    else if (dt_target_parse((dt_str){r->target, r->target_len}, strcmp(method, "CONNECT") == 0,
                             &t) != DT_OK)
        ret = answer_and_close(r, 400, "malformed request target");
    if (r->state == DT_REQ_QUEUED || ret == MHD_NO)
        goto out;

    bool expect = s->hyg.expect_continue;
    r->chunked = s->hyg.chunked;
    r->content_length = s->hyg.n_content_length == 1 ? (int64_t)s->hyg.content_length : -1;
    r->has_body = r->chunked || r->content_length > 0;
    set_host(r, &t, s->host_header);
    if (set_destination(r, &t, s->host_header) != DT_OK) {
        ret = MHD_NO;
        goto out;
    }

    if (t.form == DT_TARGET_AUTHORITY)
        ret = answer_and_close(r, 405, "CONNECT is only served in forward mode, as a first request");
    else if (r->cfg->mode == DT_MODE_FORWARD &&
             !dt_access_client(&r->cfg->forward, (struct sockaddr *)&r->conn->client_sa))
        ret = answer_error(r, 403, "this client may not use the proxy", expect);
    else if (s->via_loop)
        ret = answer_error(r, 508, "this request already passed through this proxy", expect);
    else if (r->content_length >= 0 &&
             (uint64_t)r->content_length > r->cfg->limits.max_body_bytes)
        ret = answer_error(r, 413, "the request body is larger than this proxy accepts", expect);
    else if (s->hyg.max_forwards_seen && s->hyg.max_forwards == 0 &&
             (strcmp(method, "TRACE") == 0 || strcmp(method, "OPTIONS") == 0))
        ret = on_max_forwards_zero(r, expect);
    else
        ret = decide(r, s, &t, expect);
out:
    return ret;
}

/* ------------------------------------------------------------ body and final calls */

static enum MHD_Result discard_body(dt_req *r, size_t *size)
{
    r->body_discarded += *size;
    *size = 0;
    /* Past this, reading on costs more than a new connection: close instead. */
    return r->body_discarded > DT_DISCARD_MAX ? MHD_NO : MHD_YES;
}

static enum MHD_Result on_relay_body(dt_req *r, const char *data, size_t *size)
{
    size_t n;

    if (r->client_gone)
        return MHD_NO;
    if (r->discard)
        return discard_body(r, size);
    if (r->body_received + *size > r->cfg->limits.max_body_bytes) {
        /* A chunked body crossed the limit mid-way: stop relaying, answer 413
         * once the client is done sending (or close if it sends too much). */
        dt_upstream_abort(r);
        r->discard = true;
        r->action = DT_ACTION_ERROR;
        set_answer(r, 413, page_response(r, 413, "the request body is larger than this proxy accepts"));
        return discard_body(r, size);
    }
    n = dt_ring_write(&r->up, data, *size);
    r->body_received += n;
    *size -= n;
    if (n > 0)
        dt_upstream_wake(r);
    if (*size > 0)
        suspend(r, DT_WAIT_UPLOAD);
    return MHD_YES;
}

static enum MHD_Result on_final(dt_req *r)
{
    if (r->client_gone)
        return MHD_NO;
    if (r->state == DT_REQ_RELAY && !r->upload_done) {
        r->upload_done = true;
        dt_upstream_wake(r);
    }
    if (r->resp != NULL)
        return queue(r);
    if (r->state == DT_REQ_LOCAL)
        return MHD_NO; /* a local answer without a response: out of memory */
    suspend(r, DT_WAIT_RESPONSE);
    return MHD_YES;
}

static enum MHD_Result access_cb(void *cls, struct MHD_Connection *c, const char *url,
                                 const char *method, const char *version, const char *upload_data,
                                 size_t *upload_data_size, void **req_cls)
{
    dt_req *r = *req_cls;

    (void)cls;
    (void)url;
    (void)c;
    if (r == NULL || r->conn == NULL)
        return MHD_NO;
    switch (r->state) {
    case DT_REQ_NEW:
        return on_head(r, method, version);
    case DT_REQ_LOCAL:
        if (*upload_data_size > 0)
            return discard_body(r, upload_data_size);
        return on_final(r);
    case DT_REQ_RELAY:
        if (*upload_data_size > 0)
            return on_relay_body(r, upload_data, upload_data_size);
        return on_final(r);
    case DT_REQ_QUEUED:
        break;
    }
    return MHD_YES;
}

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
    suspend(r, DT_WAIT_BODY);
    return 0;
}

static void body_reader_free(void *cls)
{
    req_unref(cls);
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
    int64_t n = 0;

    if (v.n == 0 || v.n > 18)
        return -1;
    for (size_t i = 0; i < v.n; i++) {
        if (v.p[i] < '0' || v.p[i] > '9')
            return -1;
        n = n * 10 + (v.p[i] - '0');
    }
    return n;
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
    const dt_relay *relay = r->route != NULL && r->route->kind == DT_ROUTE_RELAY ? &r->route->relay
                                                                                 : NULL;
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
    set_answer(r, status, page_response(r, status, dt_strerror(r->transfer_err)));
}

void dt_front_upstream_head(dt_req *r)
{
    struct MHD_Response *resp;
    const dt_relay *relay = r->route != NULL && r->route->kind == DT_ROUTE_RELAY ? &r->route->relay
                                                                                 : NULL;
    int status = dt_rewrite_status((dt_str){r->method, r->method_len}, r->up_status,
                                   relay != NULL ? relay->rewrite_302 : r->cfg->rewrite_302,
                                   relay != NULL ? relay->rewrite_301 : r->cfg->rewrite_301);

    if (r->resp != NULL || r->state != DT_REQ_RELAY)
        return; /* an answer is already decided (413 mid-body) */
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
            dt_upstream_abort(r);
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
            dt_upstream_abort(r);
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
        dt_upstream_abort(r);
        answer_upstream_error(r);
    } else {
        set_answer(r, status, resp);
    }
    if (r->wait == DT_WAIT_RESPONSE)
        resume(r);
}

void dt_front_upstream_body(dt_req *r)
{
    if (r->wait == DT_WAIT_BODY)
        resume(r);
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
    set_answer(r, status, resp);
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
    set_answer(r, r->status, resp);
    if (r->wait == DT_WAIT_RESPONSE)
        resume(r);
    return;
fail:
    r->transfer_err = DT_ENOMEM;
    dt_upstream_abort(r);
    answer_upstream_error(r);
    if (r->wait == DT_WAIT_RESPONSE)
        resume(r);
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
            resume(r);
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
        resume(r);
}

void dt_front_upload_space(dt_req *r)
{
    if (r->wait == DT_WAIT_UPLOAD && dt_ring_space(&r->up) >= DT_RING_SIZE / 4)
        resume(r);
}

/* ------------------------------------------------------------ logging */

static dt_str header_or_empty(struct MHD_Connection *c, const char *name)
{
    const char *v = NULL;
    size_t len = 0;

    if (MHD_lookup_connection_value_n(c, MHD_HEADER_KIND, name, strlen(name), &v, &len) != MHD_YES)
        return (dt_str){"", 0};
    return (dt_str){v, len};
}

static void log_request(dt_req *r, bool completed_ok)
{
    char line[8192];
    int64_t dur = dt_now_us() - r->start_us;
    int status = r->status != 0 ? r->status : (r->client_gone ? 499 : 0);
    dt_access_entry e = {
        .client_ip = {r->conn->client_ip, strlen(r->conn->client_ip)},
        .time_s = r->start_wall,
        .method = {r->method != NULL ? r->method : "-", r->method != NULL ? r->method_len : 1},
        .target = {r->target, r->target_len},
        .version = {r->version != NULL ? r->version : "HTTP/1.1",
                    r->version != NULL ? strlen(r->version) : 8},
        .status = status,
        .bytes_sent = r->bytes_sent,
        .referer = header_or_empty(r->mhd, "Referer"),
        .user_agent = header_or_empty(r->mhd, "User-Agent"),
        .host = {r->host, strlen(r->host)},
        .route = r->route != NULL ? (dt_str){r->route->name, strlen(r->route->name)}
                                  : DT_STR_LIT("-"),
        .action = {dt_action_name(r->action), strlen(dt_action_name(r->action))},
        .location = {r->location != NULL ? r->location : "",
                     r->location != NULL ? strlen(r->location) : 0},
        .upstream = r->upstream != NULL ? (dt_str){r->upstream->name, strlen(r->upstream->name)}
                                        : (dt_str){"", 0},
        .duration_us = dur,
    };

    (void)completed_ok;
    dt_metrics_request(r->w->metrics, r->route != NULL ? r->route->stats : NULL, r->action, status,
                       dur, r->start_wall);
    if (!dt_access_log_enabled())
        return;
    size_t n = dt_access_log_format(&e, r->cfg->log_format, line, sizeof line);
    if (n <= sizeof line)
        dt_worker_log_access(r->w, line, n);
}

static void completed_cb(void *cls, struct MHD_Connection *c, void **req_cls,
                         enum MHD_RequestTerminationCode toe)
{
    dt_req *r = *req_cls;
    dt_conn *k;

    (void)cls;
    if (r == NULL)
        return;
    *req_cls = NULL;
    k = r->conn;
    unwatch(r);
    dt_list_remove(&r->susp_link);
    dt_list_remove(&r->small_link);
    if (toe != MHD_REQUEST_TERMINATED_COMPLETED_OK && r->transfer_active)
        r->client_gone = true;
    dt_upstream_abort(r);
    if (r->resp != NULL) {
        /* Never queued (the client left first). Destroying a streamed response
         * drops its reference to r; libmicrohttpd's own keeps r alive here. */
        struct MHD_Response *pending = r->resp;
        r->resp = NULL;
        MHD_destroy_response(pending);
    }
    if (r->method != NULL)
        log_request(r, toe == MHD_REQUEST_TERMINATED_COMPLETED_OK);
    if (k != NULL) {
        k->req = NULL;
        k->nrequests++;
        k->idle_since = dt_now_ms();
        k->head_since = 0;
        dt_list_remove(&k->head_link);
        dt_list_append(&r->w->head_wait, &k->head_link);
    }
    (void)c;
    req_unref(r);
}

/* ------------------------------------------------------------ connections */

static void *uri_cb(void *cls, const char *uri, struct MHD_Connection *c)
{
    dt_worker *w = cls;
    dt_conn *k = conn_of(c);
    dt_req *r;

    if (k == NULL)
        return NULL;
    if (k->head_since == 0)
        k->head_since = dt_now_ms();
    r = req_new(w, k, c, uri);
    k->req = r;
    return r;
}

static void client_ip(const struct sockaddr *sa, char *out, size_t cap)
{
    out[0] = '\0';
    if (sa == NULL)
        return;
    if (sa->sa_family == AF_INET) {
        inet_ntop(AF_INET, &((const struct sockaddr_in *)sa)->sin_addr, out, (socklen_t)cap);
    } else if (sa->sa_family == AF_INET6) {
        const struct in6_addr *a = &((const struct sockaddr_in6 *)sa)->sin6_addr;
        /* Show IPv4 clients of a dual-stack socket as IPv4. */
        if (IN6_IS_ADDR_V4MAPPED(a))
            inet_ntop(AF_INET, &a->s6_addr[12], out, (socklen_t)cap);
        else
            inet_ntop(AF_INET6, a, out, (socklen_t)cap);
    }
}

static void conn_cb(void *cls, struct MHD_Connection *c, void **socket_context,
                    enum MHD_ConnectionNotificationCode code)
{
    dt_worker *w = cls;
    dt_conn *k;

    if (code == MHD_CONNECTION_NOTIFY_STARTED) {
        const dt_conn_init *init = w->adding;
        const union MHD_ConnectionInfo *fd = MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
        const union MHD_ConnectionInfo *addr =
            MHD_get_connection_info(c, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
        k = calloc(1, sizeof *k);
        *socket_context = k;
        if (k == NULL)
            return;
        k->w = w;
        k->fd = fd != NULL ? fd->connect_fd : -1;
        client_ip(addr != NULL ? addr->client_addr : NULL, k->client_ip, sizeof k->client_ip);
        if (addr != NULL && addr->client_addr != NULL)
            memcpy(&k->client_sa, addr->client_addr,
                   addr->client_addr->sa_family == AF_INET6 ? sizeof(struct sockaddr_in6)
                                                            : sizeof(struct sockaddr_in));
        if (init != NULL) {
            k->listener = init->listener;
            k->tls = init->listener != NULL && init->listener->tls;
            k->has_orig_dst = init->has_orig_dst;
            k->orig_dst = init->orig_dst;
            k->head_since = init->accepted_ms;
        } else {
            k->head_since = dt_now_ms();
        }
        dt_list_init(&k->head_link);
        dt_list_append(&w->head_wait, &k->head_link);
        w->nconns++;
        dt_metrics_connections(w->metrics, 1);
        return;
    }
    k = *socket_context;
    *socket_context = NULL;
    if (k != NULL) {
        dt_list_remove(&k->head_link);
        free(k);
    }
    w->nconns--;
    dt_metrics_connections(w->metrics, -1);
    dt_worker_conn_closed(w);
}

static void mhd_log(void *cls, const char *fmt, va_list ap)
{
    char msg[512];

    (void)cls;
    if (!dt_log_enabled(DT_LOG_DEBUG))
        return;
    vsnprintf(msg, sizeof msg, fmt, ap);
    msg[strcspn(msg, "\n")] = '\0';
    dt_log(DT_LOG_DEBUG, "libmicrohttpd: %s", msg);
}

/* ------------------------------------------------------------ daemons */

static int64_t dt_front_timeout_raw(dt_worker *w);

static char *read_file(const char *path, char *err, size_t errlen)
{
    FILE *f = fopen(path, "rb");
    char *buf = NULL;
    long n;

    if (f == NULL) {
        snprintf(err, errlen, "%s: %s", path, strerror(errno));
        return NULL;
    }
    if (fseek(f, 0, SEEK_END) == 0 && (n = ftell(f)) >= 0 && n < (1 << 24) &&
        fseek(f, 0, SEEK_SET) == 0 && (buf = malloc((size_t)n + 1)) != NULL) {
        if (fread(buf, 1, (size_t)n, f) == (size_t)n) {
            buf[n] = '\0';
        } else {
            free(buf);
            buf = NULL;
        }
    }
    fclose(f);
    if (buf == NULL)
        snprintf(err, errlen, "%s: cannot read the file", path);
    return buf;
}

static unsigned pool_size(const dt_config *cfg)
{
    /* The pool holds the request head and the response head: room for both. */
    unsigned need = (unsigned)cfg->limits.max_header_bytes + DT_UPSTREAM_HEAD_MAX + 4096;
    return need < 32 * 1024 ? 32 * 1024 : need;
}

static struct MHD_Daemon *start_daemon(const dt_config *cfg, dt_worker *w, const dt_listen *tls,
                                       char *err, size_t errlen)
{
    unsigned flags = MHD_USE_EPOLL | MHD_ALLOW_SUSPEND_RESUME | MHD_USE_TURBO |
                     MHD_USE_NO_LISTEN_SOCKET | MHD_USE_ERROR_LOG;
    unsigned idle_s = (unsigned)((cfg->timeouts.idle_ms + 999) / 1000);
    char *cert = NULL, *key = NULL;
    struct MHD_Daemon *d = NULL;

    if (tls != NULL) {
        cert = read_file(tls->tls_cert, err, errlen);
        key = cert != NULL ? read_file(tls->tls_key, err, errlen) : NULL;
        if (cert == NULL || key == NULL)
            goto out;
        flags |= MHD_USE_TLS;
    }
    /* Without TLS the option list ends before the certificate options. */
    d = MHD_start_daemon(
        flags, 0, NULL, NULL, access_cb, w, MHD_OPTION_EXTERNAL_LOGGER, mhd_log, NULL,
        MHD_OPTION_URI_LOG_CALLBACK, uri_cb, w, MHD_OPTION_NOTIFY_COMPLETED, completed_cb, w,
        MHD_OPTION_NOTIFY_CONNECTION, conn_cb, w, MHD_OPTION_CONNECTION_LIMIT,
        (unsigned)cfg->limits.max_connections + 16, MHD_OPTION_CONNECTION_MEMORY_LIMIT,
        (size_t)pool_size(cfg), MHD_OPTION_CONNECTION_TIMEOUT, idle_s,
        tls != NULL ? MHD_OPTION_HTTPS_MEM_CERT : MHD_OPTION_END, cert,
        MHD_OPTION_HTTPS_MEM_KEY, key, MHD_OPTION_END);
    if (d == NULL && tls != NULL)
        snprintf(err, errlen, "%s:%d: listen %s: the TLS certificate %s and key %s cannot be used",
                 cfg->path, tls->line, tls->text, tls->tls_cert, tls->tls_key);
    else if (d == NULL)
        snprintf(err, errlen, "libmicrohttpd daemon could not start");
out:
    free(cert);
    free(key);
    return d;
}

int dt_front_start(dt_worker *w, char *err, size_t errlen)
{
    size_t ntls = 0;

    for (size_t i = 0; i < w->nlisteners; i++)
        ntls += w->listeners[i].tls;
    w->daemons = calloc(1 + ntls, sizeof *w->daemons);
    if (w->daemons == NULL)
        return DT_ENOMEM;
    /* Daemon 0 serves every plain listener; each TLS listener has its own
     * (libmicrohttpd takes one certificate per daemon). */
    w->daemons[0].mhd = start_daemon(w->cfg, w, NULL, err, errlen);
    if (w->daemons[0].mhd == NULL)
        return DT_EIO;
    w->ndaemons = 1;
    for (size_t i = 0; i < w->nlisteners; i++) {
        dt_listener *l = &w->listeners[i];
        l->daemon = 0;
        if (!l->tls)
            continue;
        w->daemons[w->ndaemons].mhd = start_daemon(w->cfg, w, l->conf, err, errlen);
        if (w->daemons[w->ndaemons].mhd == NULL)
            return DT_EIO;
        l->daemon = (int)w->ndaemons++;
    }
    for (size_t i = 0; i < w->ndaemons; i++) {
        dt_daemon *d = &w->daemons[i];
        const union MHD_DaemonInfo *info = MHD_get_daemon_info(d->mhd, MHD_DAEMON_INFO_EPOLL_FD);
        d->ev.kind = DT_EV_MHD;
        d->w = w;
        d->tls = i > 0;
        d->epfd = info != NULL ? info->epoll_fd : -1;
        if (d->epfd < 0 || dt_worker_watch(w, d->epfd, EPOLLIN, &d->ev) != 0) {
            snprintf(err, errlen, "cannot watch the libmicrohttpd epoll fd");
            return DT_EIO;
        }
    }
    return DT_OK;
}

int dt_front_check_tls(const dt_config *cfg, char *err, size_t errlen)
{
    for (size_t i = 0; i < cfg->nlisten; i++) {
        const dt_listen *l = &cfg->listen[i];
        struct MHD_Daemon *d;
        if (l->tls_cert == NULL)
            continue;
        d = start_daemon(cfg, NULL, l, err, errlen);
        if (d == NULL)
            return DT_ECONFIG;
        MHD_stop_daemon(d);
    }
    return DT_OK;
}

void dt_front_stop(dt_worker *w)
{
    /* libmicrohttpd refuses to stop with suspended connections (it aborts):
     * end those requests as abandoned and let the daemons finish them. */
    for (int round = 0; round < 8 && !dt_list_empty(&w->suspended); round++) {
        size_t n = 0;
        while (!dt_list_empty(&w->suspended) && n++ < 100000)
            dt_front_client_hangup(dt_container_of(w->suspended.next, dt_req, susp_link));
        for (size_t i = 0; i < w->ndaemons; i++)
            if (w->daemons[i].mhd != NULL)
                MHD_run(w->daemons[i].mhd);
    }
    for (size_t i = 0; i < w->ndaemons; i++)
        if (w->daemons[i].mhd != NULL)
            MHD_stop_daemon(w->daemons[i].mhd);
    free(w->daemons);
    w->daemons = NULL;
    w->ndaemons = 0;
}

int dt_front_add_connection(dt_worker *w, int daemon, int fd, const struct sockaddr *sa,
                            socklen_t salen, const dt_conn_init *init)
{
    enum MHD_Result ok;

    w->adding = init;
    ok = MHD_add_connection(w->daemons[daemon].mhd, fd, sa, salen);
    w->adding = NULL;
    w->mhd_pending = true;
    return ok == MHD_YES ? DT_OK : DT_EIO;
}

void dt_front_run(dt_worker *w, int64_t now)
{
    /* MHD_run costs an epoll_wait of its own: only when something is due. */
    if (!w->mhd_pending && now < w->mhd_due)
        return;
    w->mhd_pending = false;
    for (size_t i = 0; i < w->ndaemons; i++)
        MHD_run(w->daemons[i].mhd);
    w->mhd_due = now + dt_front_timeout_raw(w);
}

/* libmicrohttpd's own next deadline (connection timeouts), capped at a minute. */
static int64_t dt_front_timeout_raw(dt_worker *w)
{
    int64_t best = 60000;

    for (size_t i = 0; i < w->ndaemons; i++) {
        MHD_UNSIGNED_LONG_LONG t;
        if (MHD_get_timeout(w->daemons[i].mhd, &t) == MHD_YES && (int64_t)t < best)
            best = (int64_t)t;
    }
    return best;
}

int64_t dt_front_timeout(dt_worker *w, int64_t now)
{
    if (w->mhd_pending)
        return 0;
    return w->mhd_due > now ? w->mhd_due - now : 0;
}

/* ------------------------------------------------------------ head timeouts */

static void close_late(dt_conn *k)
{
    static const char resp[] = "HTTP/1.1 408 Request Timeout\r\nConnection: close\r\n"
                               "Content-Length: 0\r\n\r\n";

    /* libmicrohttpd has written nothing for this request yet, so a plain-text
     * answer on the socket cannot interleave with its output. Over TLS we can
     * only close. Shutting the socket down makes libmicrohttpd see the end and
     * clean up through its usual path. */
    if (!k->tls && send(k->fd, resp, sizeof resp - 1, MSG_NOSIGNAL | MSG_DONTWAIT) < 0)
        dt_log_debug("408 to %s not sent: %s", k->client_ip, strerror(errno));
    shutdown(k->fd, SHUT_RDWR);
    dt_list_remove(&k->head_link);
    dt_log_debug("closed connection from %s: request head not complete in time", k->client_ip);
}

/*
 * Has the peer sent anything since SINCE (monotonic ms)? From the kernel's
 * TCP_INFO, whose clock ticks in jiffies (up to 10 ms): bytes of the previous
 * request can look a few ms younger than its end, so allow a margin. A head
 * that keeps trickling updates the time and is caught on a later sweep.
 */
#define DT_TCPINFO_SLACK_MS 50

static bool data_since(const dt_conn *k, int64_t now, int64_t since)
{
    struct tcp_info ti;
    socklen_t len = sizeof ti;

    if (getsockopt(k->fd, IPPROTO_TCP, TCP_INFO, &ti, &len) != 0)
        return false;
    return now - (int64_t)ti.tcpi_last_data_recv > since + DT_TCPINFO_SLACK_MS;
}

static void watch_long_suspensions(dt_worker *w, int64_t now)
{
    for (dt_list *pos = w->suspended.next; pos != &w->suspended; pos = pos->next) {
        dt_req *r = dt_container_of(pos, dt_req, susp_link);
        if (now - r->suspended_at < DT_HANGUP_WATCH_MS)
            break; /* oldest first: the rest are younger */
        if (!r->watching && r->conn != NULL &&
            dt_worker_watch(w, r->conn->fd, EPOLLRDHUP | EPOLLET, &r->client_ev) == 0)
            r->watching = true;
    }
}

void dt_front_sweep(dt_worker *w, int64_t now)
{
    int64_t limit = w->cfg->timeouts.header_ms;
    dt_list *pos = w->head_wait.next;

    watch_long_suspensions(w, now);
    while (pos != &w->head_wait) {
        dt_conn *k = dt_container_of(pos, dt_conn, head_link);
        pos = pos->next;
        if (k->fd < 0)
            continue;
        if (k->head_since == 0 && k->nrequests > 0 && data_since(k, now, k->idle_since))
            /* A keep-alive connection started a new head since the last sweep. */
            k->head_since = w->last_sweep > k->idle_since ? w->last_sweep : k->idle_since;
        if (k->head_since != 0 && now - k->head_since >= limit)
            close_late(k);
    }
    w->last_sweep = now;
}

void dt_front_quiesce(dt_worker *w)
{
    dt_list *pos = w->head_wait.next;

    /* Idle keep-alive connections and fresh ones with no head yet: close now. */
    while (pos != &w->head_wait) {
        dt_conn *k = dt_container_of(pos, dt_conn, head_link);
        pos = pos->next;
        if (k->req == NULL && k->fd >= 0) {
            shutdown(k->fd, SHUT_RDWR);
            dt_list_remove(&k->head_link);
        }
    }
}
