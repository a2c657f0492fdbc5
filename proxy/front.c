/*
 * front.c - the client side of detour on libmicrohttpd 0.9.75: daemons,
 * connections, the request callbacks and the request's life cycle.
 *
 * Each worker runs its daemons in external-epoll mode with no listening
 * socket of their own: the worker accepts and hands sockets over with
 * MHD_add_connection. A request's life, as libmicrohttpd drives it:
 *
 *   uri_cb        request line read: the dt_req is born, the raw target kept
 *   access_cb #1  head complete: validate and decide (head.c), start the
 *                 upstream transfer or prepare a local answer (answer.c)
 *   access_cb #k  body bytes: into the upload ring (suspend when full), or
 *                 discarded for a local answer
 *   access_cb #n  body complete (*upload_data_size == 0): queue the answer,
 *                 or suspend until the upstream's head (or whole small body)
 *                 is there (respond.c)
 *   reader        streamed response body out of the download ring (respond.c)
 *   completed_cb  log, count, drop libmicrohttpd's reference
 *
 * Rules of libmicrohttpd these files live by (see DESIGN.md): a response is
 * queued only in the first call (which makes libmicrohttpd close the
 * connection afterwards: used for errors) or in the final call (keep-alive
 * preserved); returning without a response or a 0 from the reader is only
 * allowed together with MHD_suspend_connection; a resume is noticed only by
 * the next MHD_run, so the worker runs the daemons after every batch of
 * events.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/tcp.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/epoll.h>
#include <unistd.h>

#include "detour/front_int.h"
#include "detour/log.h"
#include "detour/upstream.h"

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
    memset(r, 0, offsetof(dt_req, rh));
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
    r->lease = dt_worker_lease(w);
    r->cfg = r->lease->cfg;
    r->rh = r->rh_inline;
    r->refs = 1;
    r->content_length = -1;
    r->resp_length = -1;
    r->start_us = w->now_us;
    r->start_wall = dt_wall_s();
    r->client_ev.kind = DT_EV_CLIENT;
    r->action = DT_ACTION_RELAY;
    dt_list_init(&r->link);
    dt_list_init(&r->timer);
    dt_list_init(&r->susp_link);
    dt_list_init(&r->small_link);
    return r;
}

void dt_front_req_unref(dt_req *r)
{
    if (--r->refs > 0)
        return;
    dt_upstream_abort(r);
    dt_front_drop_answer(r);
    dt_ring_free(&r->up);
    dt_ring_free(&r->down);
    free(r->small_buf);
    free(r->up_buf);
    if (r->rh != r->rh_inline)
        free(r->rh);
    if (r->rh_cap == DT_RH_BLOCK)
        dt_cache_put(&r->w->rh_cache, r->rh_buf);
    else
        free(r->rh_buf);
    free(r->location);
    free(r->url);
    if (r->up_target != r->target)
        free(r->up_target);
    if (r->target != r->target_inline)
        free(r->target);
    dt_lease_drop(r->lease);
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

void dt_front_suspend(dt_req *r, dt_wait why)
{
    r->wait = why;
    MHD_suspend_connection(r->mhd);
    r->suspended_at = dt_worker_now_ms(r->w);
    dt_list_append(&r->w->suspended, &r->susp_link);
}

static void unwatch(dt_req *r)
{
    if (r->watching) {
        dt_worker_unwatch(r->w, r->conn->fd);
        r->watching = false;
    }
}

void dt_front_resume(dt_req *r)
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
    dt_front_resume(r);
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
        dt_front_set_answer(
            r, 413, dt_front_page(r, 413, "the request body is larger than this proxy accepts"));
        return discard_body(r, size);
    }
    if (r->up_buffered) {
        /* libmicrohttpd never passes more than the Content-Length it parsed. */
        size_t room = (size_t)r->content_length - r->body_received;
        n = *size < room ? *size : room;
        memcpy(r->up_buf + r->body_received, data, n);
        r->body_received += n;
        *size = 0;
        return MHD_YES;
    }
    n = dt_ring_write(&r->up, data, *size);
    r->body_received += n;
    *size -= n;
    if (n > 0)
        dt_upstream_wake(r);
    if (*size > 0)
        dt_front_suspend(r, DT_WAIT_UPLOAD);
    return MHD_YES;
}

static enum MHD_Result on_final(dt_req *r)
{
    if (r->client_gone)
        return MHD_NO;
    if (r->state == DT_REQ_RELAY && !r->upload_done) {
        r->upload_done = true;
        if (r->up_buffered && dt_upstream_begin(r) != DT_OK) {
            r->transfer_err = DT_ENOMEM;
            dt_front_set_answer(r, 500, dt_front_page(r, 500, "out of memory"));
        }
        dt_upstream_wake(r);
    }
    if (r->resp != NULL)
        return dt_front_queue(r);
    if (r->state == DT_REQ_LOCAL)
        return MHD_NO; /* a local answer without a response: out of memory */
    dt_front_suspend(r, DT_WAIT_RESPONSE);
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
        return dt_front_on_head(r, method, version);
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

/* ------------------------------------------------------------ logging */

static dt_str header_or_empty(struct MHD_Connection *c, const char *name)
{
    const char *v = NULL;
    size_t len = 0;

    if (MHD_lookup_connection_value_n(c, MHD_HEADER_KIND, name, strlen(name), &v, &len) != MHD_YES)
        return (dt_str){"", 0};
    return (dt_str){v, len};
}

/* Count the request, and log it when the access log is on. */
static void log_request(dt_req *r)
{
    char line[8192];
    int64_t dur = r->w->now_us - r->start_us;
    int status = r->status != 0 ? r->status : (r->client_gone ? 499 : 0);

    dt_metrics_request(r->w->metrics, r->route != NULL ? r->route->stats : NULL, r->action, status,
                       dur, r->start_wall);
    if (!dt_access_log_enabled())
        return;
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
        .route =
            r->route != NULL ? (dt_str){r->route->name, strlen(r->route->name)} : DT_STR_LIT("-"),
        .action = {dt_action_name(r->action), strlen(dt_action_name(r->action))},
        .location = {r->location != NULL ? r->location : "",
                     r->location != NULL ? strlen(r->location) : 0},
        .upstream = r->upstream != NULL ? (dt_str){r->upstream->name, strlen(r->upstream->name)}
                                        : (dt_str){"", 0},
        .dry_run = {r->dry_run, strlen(r->dry_run)},
        .duration_us = dur,
    };
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
    /* Never queued (the client left first). Dropping a streamed response
     * drops its reference to r; libmicrohttpd's own keeps r alive here. */
    dt_front_drop_answer(r);
    if (r->method != NULL)
        log_request(r);
    if (k != NULL) {
        k->req = NULL;
        k->nrequests++;
        k->idle_since = dt_worker_now_ms(r->w);
        k->head_since = 0;
        dt_list_remove(&k->head_link);
        dt_list_append(&r->w->head_wait, &k->head_link);
    }
    (void)c;
    dt_front_req_unref(r);
}

/* ------------------------------------------------------------ connections */

static void *uri_cb(void *cls, const char *uri, struct MHD_Connection *c)
{
    dt_worker *w = cls;
    dt_conn *k = conn_of(c);
    dt_req *r;

    w->heads++;
    if (k == NULL)
        return NULL;
    if (k->head_since == 0)
        k->head_since = dt_worker_now_ms(w);
    r = req_new(w, k, c, uri);
    if (r != NULL)
        r->uri_raw = uri;
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
        const union MHD_ConnectionInfo *fd =
            MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
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

/*
 * libmicrohttpd's per-connection pool holds the request head while it is read
 * and the response head while it is written (it shrinks the read buffer to
 * what was used before building the reply), and it is memset on every
 * keep-alive request, so its size is both memory and time per request. It
 * fits a request head of limits.max_header_bytes with room for a response
 * head; respond.c answers 502 when the two together would not fit.
 */
unsigned dt_front_pool_size(const dt_config *cfg)
{
    unsigned need = (unsigned)cfg->limits.max_header_bytes + DT_POOL_SLACK;
    return need < DT_POOL_MIN ? DT_POOL_MIN : need;
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
    d = MHD_start_daemon(flags, 0, NULL, NULL, access_cb, w, MHD_OPTION_EXTERNAL_LOGGER, mhd_log,
                         NULL, MHD_OPTION_URI_LOG_CALLBACK, uri_cb, w, MHD_OPTION_NOTIFY_COMPLETED,
                         completed_cb, w, MHD_OPTION_NOTIFY_CONNECTION, conn_cb, w,
                         MHD_OPTION_CONNECTION_LIMIT, (unsigned)cfg->limits.max_connections + 16,
                         MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)dt_front_pool_size(cfg),
                         MHD_OPTION_CONNECTION_TIMEOUT, idle_s,
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
