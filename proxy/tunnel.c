/*
 * tunnel.c - forward mode's connection triage and CONNECT tunnels.
 *
 * The CONNECT head is read here because libmicrohttpd cannot hand over a
 * connection after a 200 (only after a 101 upgrade). The parser is the
 * smallest that is safe: request line "CONNECT host:port HTTP/1.x", header
 * lines checked with the same hygiene rules as every other request (tokens,
 * no control bytes, no obs-fold), and a size cap.
 *
 * Life of a tunnel: HEAD (reading the head) -> RESOLVING -> CONNECTING ->
 * REPLY (our answer is being written) -> OPEN (pumping) -> FLUSH (one side
 * ended; delivering what the other side had sent by then) -> LINGER (both
 * sides shut for writing; what they still send is read and dropped until
 * they close) -> freed. An error answer goes REPLY -> LINGER -> freed. Every
 * state has a deadline checked by dt_tunnel_sweep().
 *
 * An open tunnel is two pumps (pump.h), client -> upstream and upstream ->
 * client, sharing the worker's scratch buffer.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/epoll.h>
#include <linux/sockios.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include "detour/access.h"
#include "detour/front.h"
#include "detour/headers.h"
#include "detour/log.h"
#include "detour/page.h"
#include "detour/pump.h"
#include "detour/resolve.h"
#include "detour/target.h"
#include "detour/tunnel.h"

#define LINGER_ROUNDS 16
/* How long a closing tunnel waits for its peers to close once they have
 * every byte detour had for them. */
#define DT_LINGER_MS 2000

typedef struct dt_peek {
    dt_ev ev;
    dt_worker *w;
    int fd;
    struct sockaddr_storage sa;
    socklen_t salen;
    dt_conn_init init;
    int64_t deadline;
    dt_list link;
} dt_peek;

typedef enum tstate {
    T_HEAD,
    T_RESOLVING,
    T_CONNECTING,
    T_REPLY,
    T_OPEN,
    T_FLUSH,
    T_LINGER,
    T_DEAD
} tstate;

typedef struct dt_tunnel {
    dt_ev cev, uev;
    dt_worker *w;
    dt_cfg_lease *lease;
    dt_config *cfg; /* lease->cfg */
    tstate state;
    int cfd, ufd;
    uint32_t cmask, umask;
    int64_t deadline;
    char *head;
    size_t head_len;
    size_t early_off; /* bytes after the head: client data to send first */
    char reply[1024];
    size_t reply_len, reply_off;
    bool close_after_reply;
    bool logged;
    uint64_t linger_unacked; /* LINGER: bytes the peers had not acknowledged at the last look */
    int64_t linger_moved_ms; /* LINGER: when they last acknowledged some */
    dt_resolve *res;
    struct addrinfo *ai, *ai_next;
    bool name_allowed;
    int fail_status; /* the answer if no address works */
    dt_pump cu, uc;
    char client_ip[64];
    struct sockaddr_storage client_sa;
    char target[300];
    dt_str host;
    unsigned port;
    int status;
    int64_t start_us, start_wall;
    dt_list link;
} dt_tunnel;

static void set_mask(dt_worker *w, int fd, uint32_t *cur, uint32_t want, dt_ev *ev)
{
    if (fd < 0 || *cur == want)
        return;
    if (*cur == 0)
        dt_worker_watch(w, fd, want, ev);
    else if (want == 0)
        dt_worker_unwatch(w, fd);
    else
        dt_worker_rewatch(w, fd, want, ev);
    *cur = want;
}

/* ------------------------------------------------------------ logging and freeing */

static void log_tunnel(dt_tunnel *t)
{
    char line[2048];
    dt_access_entry e = {
        .client_ip = {t->client_ip, strlen(t->client_ip)},
        .time_s = t->start_wall,
        .method = DT_STR_LIT("CONNECT"),
        .target = {t->target, strlen(t->target)},
        .version = DT_STR_LIT("HTTP/1.1"),
        .status = t->status,
        .bytes_sent = t->uc.bytes,
        .host = t->host,
        .route = DT_STR_LIT("-"),
        .action = t->status == 200 ? DT_STR_LIT("relay") : DT_STR_LIT("error"),
        .duration_us = dt_now_us() - t->start_us,
    };

    dt_metrics_request(t->w->metrics, NULL, t->status == 200 ? DT_ACTION_RELAY : DT_ACTION_ERROR,
                       t->status, e.duration_us, t->start_wall);
    if (!dt_access_log_enabled())
        return;
    size_t n = dt_access_log_format(&e, t->cfg->log_format, line, sizeof line);
    if (n <= sizeof line)
        dt_worker_log_access(t->w, line, n);
}

static void close_fd(int *fd)
{
    if (*fd >= 0)
        close(*fd);
    *fd = -1;
}

static void tunnel_free(dt_tunnel *t)
{
    dt_worker *w = t->w;

    if (t->status != 0 && !t->logged)
        log_tunnel(t);
    set_mask(w, t->cfd, &t->cmask, 0, &t->cev);
    set_mask(w, t->ufd, &t->umask, 0, &t->uev);
    close_fd(&t->cfd);
    close_fd(&t->ufd);
    dt_resolve_cancel(t->res);
    t->res = NULL;
    if (t->ai != NULL)
        freeaddrinfo(t->ai);
    t->ai = NULL;
    /* The other side's event may still be in this iteration's batch: free later. */
    t->state = T_DEAD;
    dt_list_remove(&t->link);
    dt_list_append(&w->dead_tunnels, &t->link);
    w->nconns--;
    dt_metrics_connections(w->metrics, -1);
    dt_worker_conn_closed(w);
}

/* ------------------------------------------------------------ answering */

static void reply_error(dt_tunnel *t, int status, const char *detail)
{
    char body[512];
    int blen = snprintf(body, sizeof body, "%d %s: %s\n", status, dt_status_reason(status), detail);
    int n = snprintf(t->reply, sizeof t->reply,
                     "HTTP/1.1 %d %s\r\nContent-Type: text/plain; charset=utf-8\r\n"
                     "Content-Length: %d\r\nConnection: close\r\n\r\n%s",
                     status, dt_status_reason(status), blen, body);

    t->reply_len = n > 0 && (size_t)n < sizeof t->reply ? (size_t)n : 0;
    t->reply_off = 0;
    t->status = status;
    t->close_after_reply = true;
    t->state = T_REPLY;
    set_mask(t->w, t->ufd, &t->umask, 0, &t->uev);
    close_fd(&t->ufd);
    set_mask(t->w, t->cfd, &t->cmask, EPOLLOUT, &t->cev);
}

static void reply_ok(dt_tunnel *t)
{
    /* RFC 9110 9.3.6: a 2xx to CONNECT has no Content-Length or Transfer-Encoding. */
    static const char ok[] = "HTTP/1.1 200 Connection Established\r\n\r\n";

    memcpy(t->reply, ok, sizeof ok - 1);
    t->reply_len = sizeof ok - 1;
    t->reply_off = 0;
    t->status = 200;
    t->close_after_reply = false;
    t->state = T_REPLY;
    set_mask(t->w, t->ufd, &t->umask, 0, &t->uev);
    set_mask(t->w, t->cfd, &t->cmask, EPOLLOUT, &t->cev);
}

static void start_pumping(dt_tunnel *t);

/* Returns false when the tunnel was freed. */
/* ------------------------------------------------------------ closing */

static char *scratch_of(dt_worker *w);

/* Read and drop what one side still sends; close it at its end. */
static void linger_side(dt_tunnel *t, int *fd, uint32_t *mask, dt_ev *ev, char *buf)
{
    if (*fd < 0)
        return;
    /* Only input now: a socket shut for writing always reads as writable. */
    set_mask(t->w, *fd, mask, EPOLLIN, ev);
    for (int i = 0; i < LINGER_ROUNDS; i++) {
        ssize_t n = recv(*fd, buf, DT_PUMP_CHUNK, MSG_TRUNC | MSG_DONTWAIT);
        if (n < 0 && (errno == EAGAIN || errno == EINTR))
            return;
        if (n <= 0) {
            set_mask(t->w, *fd, mask, 0, ev);
            close_fd(fd);
            return;
        }
    }
}

static void linger_run(dt_tunnel *t)
{
    char *buf = scratch_of(t->w);

    if (buf == NULL) {
        tunnel_free(t);
        return;
    }
    linger_side(t, &t->cfd, &t->cmask, &t->cev, buf);
    linger_side(t, &t->ufd, &t->umask, &t->uev, buf);
    if (t->cfd < 0 && t->ufd < 0)
        tunnel_free(t);
}

/* Bytes sent to the peers and not yet acknowledged by them. */
static uint64_t linger_unacked(const dt_tunnel *t)
{
    uint64_t sum = 0;
    int q;

    if (t->cfd >= 0 && ioctl(t->cfd, SIOCOUTQ, &q) == 0 && q > 0)
        sum += (uint64_t)q;
    if (t->ufd >= 0 && ioctl(t->ufd, SIOCOUTQ, &q) == 0 && q > 0)
        sum += (uint64_t)q;
    return sum;
}

/*
 * Close without losing the last bytes. A socket closed with unread data
 * sends a reset, and a reset makes the system drop what detour had queued
 * for the peer but not yet sent; so both sides are shut for writing (their
 * queued bytes go out, then an end), and what they still send is read and
 * dropped until they close. The wait ends DT_LINGER_MS after the peers have
 * everything, or when a peer stops taking bytes for timeouts.idle_ms (see
 * dt_tunnel_sweep).
 */
static void linger_start(dt_tunnel *t)
{
    if (t->status != 0 && !t->logged)
        log_tunnel(t); /* the tunnel's life ends here, not when the peers hang up */
    t->logged = true;
    if (t->cfd >= 0)
        shutdown(t->cfd, SHUT_WR);
    if (t->ufd >= 0)
        shutdown(t->ufd, SHUT_WR);
    t->state = T_LINGER;
    t->linger_unacked = linger_unacked(t);
    t->linger_moved_ms = dt_now_ms();
    t->deadline = t->linger_moved_ms + DT_LINGER_MS;
    linger_run(t);
}

static bool write_reply(dt_tunnel *t)
{
    while (t->reply_off < t->reply_len) {
        ssize_t n = send(t->cfd, t->reply + t->reply_off, t->reply_len - t->reply_off,
                         MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n < 0 && errno == EAGAIN)
            return true;
        if (n <= 0) {
            tunnel_free(t);
            return false;
        }
        t->reply_off += (size_t)n;
    }
    if (t->close_after_reply) {
        linger_start(t);
        return false;
    }
    start_pumping(t);
    return true;
}

/* ------------------------------------------------------------ connecting */

static void try_connect(dt_tunnel *t);

static void connected(dt_tunnel *t)
{
    int err = 0;
    socklen_t len = sizeof err;

    if (getsockopt(t->ufd, SOL_SOCKET, SO_ERROR, &err, &len) != 0 || err != 0) {
        set_mask(t->w, t->ufd, &t->umask, 0, &t->uev);
        close_fd(&t->ufd);
        dt_log_debug("CONNECT %s: %s", t->target, strerror(err));
        try_connect(t);
        return;
    }
    reply_ok(t);
}

/* Is this address allowed, and not detour itself? Sets fail_status when not. */
static bool address_ok(dt_tunnel *t, const struct sockaddr *sa)
{
    if (dt_access_is_self(t->cfg, sa, t->w->local_addrs, t->w->nlocal)) {
        t->fail_status = 508;
        return false;
    }
    if (!t->name_allowed && !dt_access_dest_addr(&t->cfg->forward, sa)) {
        if (t->fail_status != 508)
            t->fail_status = 403;
        return false;
    }
    return true;
}

static void try_connect(dt_tunnel *t)
{
    for (; t->ai_next != NULL; t->ai_next = t->ai_next->ai_next) {
        struct addrinfo *a = t->ai_next;
        if (!address_ok(t, a->ai_addr))
            continue;
        int fd = socket(a->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd < 0)
            continue;
        if (connect(fd, a->ai_addr, a->ai_addrlen) == 0 || errno == EINPROGRESS) {
            t->ai_next = a->ai_next;
            t->ufd = fd;
            t->state = T_CONNECTING;
            set_mask(t->w, t->ufd, &t->umask, EPOLLOUT, &t->uev);
            return;
        }
        close(fd);
    }
    if (t->fail_status == 508)
        reply_error(t, 508, "the destination is this proxy");
    else if (t->fail_status == 403)
        reply_error(t, 403, "destination not allowed");
    else
        reply_error(t, 502, "cannot connect to the destination");
}

static void resolved(void *ctx, struct addrinfo *res, int gai_err)
{
    dt_tunnel *t = ctx;

    t->res = NULL;
    if (res == NULL) {
        dt_log_debug("CONNECT %s: %s", t->target, gai_strerror(gai_err));
        reply_error(t, 502, "cannot resolve the destination");
        return;
    }
    t->ai = t->ai_next = res;
    t->deadline = dt_now_ms() + t->cfg->timeouts.connect_ms;
    try_connect(t);
}

/* ------------------------------------------------------------ the CONNECT head */

static const char *find_head_end(const char *p, size_t n)
{
    for (size_t i = 3; i < n; i++)
        if (p[i] == '\n' && p[i - 1] == '\r' && p[i - 2] == '\n' && p[i - 3] == '\r')
            return p + i + 1;
    return NULL;
}

/* Check the header lines between LINE and END; 0 or the status to answer. */
static int check_headers(dt_tunnel *t, const char *line, const char *end, bool *loop)
{
    dt_hygiene h;
    dt_str via = {t->cfg->via_name, strlen(t->cfg->via_name)};

    dt_hygiene_init(&h);
    while (line < end - 2) {
        const char *eol = memchr(line, '\r', (size_t)(end - line));
        if (eol == NULL || eol[1] != '\n')
            return 400;
        if (line[0] == ' ' || line[0] == '\t')
            return 400; /* obs-fold */
        const char *colon = memchr(line, ':', (size_t)(eol - line));
        if (colon == NULL)
            return 400;
        dt_str name = {line, (size_t)(colon - line)};
        const char *v = colon + 1;
        while (v < eol && (*v == ' ' || *v == '\t'))
            v++;
        const char *ve = eol;
        while (ve > v && (ve[-1] == ' ' || ve[-1] == '\t'))
            ve--;
        dt_str value = {v, (size_t)(ve - v)};
        dt_hygiene_add(&h, name, value);
        if (dt_str_ieq_cstr(name.p, name.n, "Via") && dt_via_names(value, via))
            *loop = true;
        line = eol + 2;
    }
    return dt_hygiene_finish(&h);
}

static void handle_head(dt_tunnel *t, const char *end)
{
    const char *p = t->head, *eol = memchr(p, '\r', (size_t)(end - p));
    dt_target target;
    bool loop = false;
    int status;

    t->early_off = (size_t)(end - t->head);
    /* "CONNECT " authority " HTTP/1.x" */
    const char *sp1 = memchr(p, ' ', (size_t)(eol - p));
    const char *sp2 = sp1 ? memchr(sp1 + 1, ' ', (size_t)(eol - sp1 - 1)) : NULL;
    if (sp1 == NULL || sp2 == NULL || (size_t)(eol - sp2 - 1) != 8 ||
        (memcmp(sp2 + 1, "HTTP/1.1", 8) != 0 && memcmp(sp2 + 1, "HTTP/1.0", 8) != 0)) {
        reply_error(t, 400, "malformed CONNECT request line");
        return;
    }
    snprintf(t->target, sizeof t->target, "%.*s", (int)(sp2 - sp1 - 1), sp1 + 1);
    if (dt_target_parse((dt_str){sp1 + 1, (size_t)(sp2 - sp1 - 1)}, true, &target) != DT_OK) {
        reply_error(t, 400, "CONNECT needs host:port with a port in 1..65535");
        return;
    }
    t->host = (dt_str){t->target + (target.host.p - (sp1 + 1)), target.host.n};
    t->port = target.port;
    if ((status = check_headers(t, eol + 2, end, &loop)) != 0) {
        reply_error(t, status, "malformed request header");
        return;
    }
    if (loop) {
        reply_error(t, 508, "this request already passed through this proxy");
        return;
    }
    const dt_forward *fw = &t->cfg->forward;
    if (!dt_access_client(fw, (struct sockaddr *)&t->client_sa)) {
        reply_error(t, 403, "this client may not use the proxy");
        return;
    }
    if (!dt_access_connect_port(fw, t->port)) {
        reply_error(t, 403, "CONNECT to this port is not allowed");
        return;
    }
    dt_access a = dt_access_dest_name(fw, t->host, t->port);
    if (a == DT_ACCESS_DENY) {
        reply_error(t, 403, "destination not allowed");
        return;
    }
    t->name_allowed = a == DT_ACCESS_ALLOW;
    t->state = T_RESOLVING;
    set_mask(t->w, t->cfd, &t->cmask, 0, &t->cev);
    t->deadline = dt_now_ms() + t->cfg->timeouts.connect_ms;
    t->res = dt_resolve_start(t->w, t->host, t->port, resolved, t);
    if (t->res == NULL)
        reply_error(t, 502, "cannot resolve the destination");
}

static void read_head(dt_tunnel *t)
{
    size_t cap = (size_t)t->cfg->limits.max_header_bytes;
    const char *end;

    for (;;) {
        ssize_t n = recv(t->cfd, t->head + t->head_len, cap - t->head_len, MSG_DONTWAIT);
        if (n < 0 && errno == EAGAIN)
            return;
        if (n <= 0) {
            tunnel_free(t); /* the client left before finishing its request */
            return;
        }
        t->head_len += (size_t)n;
        if ((end = find_head_end(t->head, t->head_len)) != NULL) {
            handle_head(t, end);
            return;
        }
        if (t->head_len == cap) {
            reply_error(t, 431, "the request head is too large");
            return;
        }
    }
}

/* ------------------------------------------------------------ pumping */

/* The worker's pumping buffer, made on its first tunnel (NULL if out of memory). */
static char *scratch_of(dt_worker *w)
{
    if (w->tunnel_buf == NULL)
        w->tunnel_buf = malloc(DT_PUMP_CHUNK);
    return w->tunnel_buf;
}

static void update_masks(dt_tunnel *t)
{
    uint32_t cm = 0, um = 0;

    if (dt_pump_wants_input(&t->cu))
        cm |= EPOLLIN;
    if (dt_pump_wants_input(&t->uc))
        um |= EPOLLIN;
    if (t->uc.blocked)
        cm |= EPOLLOUT;
    if (t->cu.blocked)
        um |= EPOLLOUT;
    set_mask(t->w, t->cfd, &t->cmask, cm, &t->cev);
    set_mask(t->w, t->ufd, &t->umask, um, &t->uev);
}

static void pump_both(dt_tunnel *t, uint32_t cev, uint32_t uev)
{
    bool progress = false;
    char *buf = scratch_of(t->w);

    /* A writable destination may take more: offer again. */
    if (uev & (EPOLLOUT | EPOLLERR | EPOLLHUP))
        t->cu.blocked = false;
    if (cev & (EPOLLOUT | EPOLLERR | EPOLLHUP))
        t->uc.blocked = false;
    if (buf == NULL || dt_pump_run(&t->cu, buf, &progress) < 0 ||
        dt_pump_run(&t->uc, buf, &progress) < 0) {
        tunnel_free(t);
        return;
    }
    if (progress)
        t->deadline = dt_now_ms() + t->cfg->timeouts.idle_ms;
    if (t->state == T_OPEN && (t->cu.src_eof || t->uc.src_eof)) {
        /* The ended direction has delivered everything (its end is read
         * only after its last byte went on); the other delivers what it had
         * received by now, then both sides close. */
        t->state = T_FLUSH;
        dt_pump_start_flush(&t->cu);
        dt_pump_start_flush(&t->uc);
        if (dt_pump_run(&t->cu, buf, &progress) < 0 || dt_pump_run(&t->uc, buf, &progress) < 0) {
            tunnel_free(t);
            return;
        }
    }
    if (t->state == T_FLUSH && !dt_pump_wants_input(&t->cu) && !dt_pump_wants_input(&t->uc) &&
        !t->cu.blocked && !t->uc.blocked) {
        linger_start(t);
        return;
    }
    update_masks(t);
}

/* Client bytes that arrived with the head go first, before any pumping. */
static bool send_early(dt_tunnel *t)
{
    while (t->early_off < t->head_len) {
        ssize_t n = send(t->ufd, t->head + t->early_off, t->head_len - t->early_off,
                         MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n < 0 && errno == EAGAIN)
            return false;
        if (n <= 0)
            return false;
        t->early_off += (size_t)n;
        t->cu.bytes += (uint64_t)n;
    }
    return true;
}

static void start_pumping(dt_tunnel *t)
{
    dt_pump_init(&t->cu, t->cfd, t->ufd);
    dt_pump_init(&t->uc, t->ufd, t->cfd);
    t->state = T_OPEN;
    t->deadline = dt_now_ms() + t->cfg->timeouts.idle_ms;
    if (!send_early(t)) {
        /* Rare: the upstream cannot take a few hundred bytes yet. Drop the
         * tunnel rather than juggle a third buffer. */
        tunnel_free(t);
        return;
    }
    pump_both(t, 0, 0);
}

/* ------------------------------------------------------------ triage */

static void tunnel_start(dt_peek *pk)
{
    dt_worker *w = pk->w;
    dt_tunnel *t = calloc(1, sizeof *t);

    if (t != NULL)
        t->head = malloc((size_t)w->cfg->limits.max_header_bytes);
    if (t == NULL || t->head == NULL) {
        free(t);
        close(pk->fd);
        dt_worker_conn_closed(w);
        return;
    }
    t->cev.kind = DT_EV_TUNNEL;
    t->uev.kind = DT_EV_TUNNEL_UP;
    t->w = w;
    t->lease = dt_worker_lease(w);
    t->cfg = t->lease->cfg;
    t->cfd = pk->fd;
    t->ufd = -1;
    t->state = T_HEAD;
    t->deadline = pk->init.accepted_ms + t->cfg->timeouts.header_ms;
    t->client_sa = pk->sa;
    t->start_us = dt_now_us();
    t->start_wall = dt_wall_s();
    if (pk->sa.ss_family == AF_INET)
        inet_ntop(AF_INET, &((struct sockaddr_in *)&pk->sa)->sin_addr, t->client_ip,
                  sizeof t->client_ip);
    else
        inet_ntop(AF_INET6, &((struct sockaddr_in6 *)&pk->sa)->sin6_addr, t->client_ip,
                  sizeof t->client_ip);
    dt_list_append(&w->tunnels, &t->link);
    w->nconns++;
    dt_metrics_connections(w->metrics, 1);
    set_mask(w, t->cfd, &t->cmask, EPOLLIN, &t->cev);
    read_head(t);
}

static void peek_free(dt_peek *pk, bool close_fd_too)
{
    dt_worker_unwatch(pk->w, pk->fd);
    dt_list_remove(&pk->link);
    if (close_fd_too) {
        close(pk->fd);
        dt_worker_conn_closed(pk->w);
    }
    free(pk);
}

/* What the first bytes say: a tunnel, a request for libmicrohttpd, or wait. */
static void peek_decide(dt_peek *pk, const char *buf, ssize_t n)
{
    static const char connect_[] = "CONNECT ";
    dt_worker *w = pk->w;

    if (n < 0 && errno == EAGAIN)
        return;
    if (n <= 0) {
        peek_free(pk, true);
        return;
    }
    if ((size_t)n < sizeof connect_ - 1 && memcmp(buf, connect_, (size_t)n) == 0)
        return; /* could still be CONNECT: wait for more (edge-triggered) */
    if ((size_t)n >= sizeof connect_ - 1 && memcmp(buf, connect_, sizeof connect_ - 1) == 0) {
        dt_worker_unwatch(w, pk->fd);
        dt_list_remove(&pk->link);
        tunnel_start(pk);
        free(pk);
        return;
    }
    int fd = pk->fd;
    struct sockaddr_storage sa = pk->sa;
    socklen_t salen = pk->salen;
    dt_conn_init init = pk->init;
    const dt_listener *l = init.listener;
    peek_free(pk, false);
    if (dt_front_add_connection(w, l->daemon, fd, (struct sockaddr *)&sa, salen, &init) != DT_OK)
        dt_worker_conn_closed(w);
}

void dt_tunnel_peek_start(dt_worker *w, int fd, const struct sockaddr *sa, socklen_t salen,
                          const dt_conn_init *init)
{
    dt_peek *pk = calloc(1, sizeof *pk);

    if (pk == NULL) {
        close(fd);
        dt_worker_conn_closed(w);
        return;
    }
    pk->ev.kind = DT_EV_PEEK;
    pk->w = w;
    pk->fd = fd;
    memcpy(&pk->sa, sa, salen);
    pk->salen = salen;
    pk->init = *init;
    pk->deadline = init->accepted_ms + w->cfg->timeouts.header_ms;
    dt_list_append(&w->peeks, &pk->link);
    /* Edge-triggered: a partial "CONN" must not wake us again until more arrives. */
    if (dt_worker_watch(w, fd, EPOLLIN | EPOLLRDHUP | EPOLLET, &pk->ev) != 0)
        peek_free(pk, true);
}

/* ------------------------------------------------------------ events */

void dt_tunnel_event(dt_worker *w, dt_ev *ev, uint32_t events)
{
    (void)w;
    if (ev->kind == DT_EV_PEEK) {
        dt_peek *pk = (dt_peek *)ev;
        char buf[8];
        ssize_t n = recv(pk->fd, buf, sizeof buf, MSG_PEEK | MSG_DONTWAIT);
        peek_decide(pk, buf, n);
        return;
    }
    dt_tunnel *t = ev->kind == DT_EV_TUNNEL ? dt_container_of(ev, dt_tunnel, cev)
                                            : dt_container_of(ev, dt_tunnel, uev);
    switch (t->state) {
    case T_HEAD:
        read_head(t);
        break;
    case T_CONNECTING:
        if (ev->kind == DT_EV_TUNNEL_UP)
            connected(t);
        break;
    case T_REPLY:
        if (ev->kind == DT_EV_TUNNEL)
            write_reply(t);
        break;
    case T_LINGER:
        linger_run(t);
        break;
    case T_OPEN:
    case T_FLUSH:
        pump_both(t, ev->kind == DT_EV_TUNNEL ? events : 0, ev->kind == DT_EV_TUNNEL_UP ? events : 0);
        break;
    case T_RESOLVING:
    case T_DEAD:
        break;
    }
}

/* ------------------------------------------------------------ time */

void dt_tunnel_sweep(dt_worker *w, int64_t now)
{
    dt_list *pos = w->peeks.next;
    while (pos != &w->peeks) {
        dt_peek *pk = dt_container_of(pos, dt_peek, link);
        pos = pos->next;
        if (now >= pk->deadline)
            peek_free(pk, true);
    }
    pos = w->tunnels.next;
    while (pos != &w->tunnels) {
        dt_tunnel *t = dt_container_of(pos, dt_tunnel, link);
        pos = pos->next;
        if (now < t->deadline)
            continue;
        switch (t->state) {
        case T_HEAD:
            reply_error(t, 408, "the request head did not arrive in time");
            t->deadline = now + 1000; /* time to write the answer */
            break;
        case T_RESOLVING:
        case T_CONNECTING:
            reply_error(t, 504, "connecting to the destination timed out");
            t->deadline = now + 1000;
            break;
        case T_LINGER: {
            /* Still delivering: wait while the peers take bytes, and up to
             * idle_ms after they last did. */
            uint64_t unacked = linger_unacked(t);
            if (unacked < t->linger_unacked)
                t->linger_moved_ms = now;
            t->linger_unacked = unacked;
            if (unacked > 0 && now - t->linger_moved_ms < t->cfg->timeouts.idle_ms)
                t->deadline = now + DT_LINGER_MS;
            else
                tunnel_free(t);
            break;
        }
        default:
            tunnel_free(t); /* idle tunnel, or an answer the client never read */
            break;
        }
    }
}

void dt_tunnel_close_peeks(dt_worker *w)
{
    while (!dt_list_empty(&w->peeks))
        peek_free(dt_container_of(w->peeks.next, dt_peek, link), true);
}

void dt_tunnel_close_all(dt_worker *w)
{
    while (!dt_list_empty(&w->peeks))
        peek_free(dt_container_of(w->peeks.next, dt_peek, link), true);
    while (!dt_list_empty(&w->tunnels))
        tunnel_free(dt_container_of(w->tunnels.next, dt_tunnel, link));
    dt_tunnel_reap(w);
    free(w->tunnel_buf);
    w->tunnel_buf = NULL;
}

void dt_tunnel_reap(dt_worker *w)
{
    while (!dt_list_empty(&w->dead_tunnels)) {
        dt_tunnel *t = dt_container_of(w->dead_tunnels.next, dt_tunnel, link);
        dt_list_remove(&t->link);
        free(t->head);
        dt_lease_drop(t->lease);
        free(t);
    }
}

size_t dt_tunnel_count(const dt_worker *w)
{
    size_t n = 0;
    for (const dt_list *p = w->peeks.next; p != &w->peeks; p = p->next)
        n++;
    for (const dt_list *p = w->tunnels.next; p != &w->tunnels; p = p->next)
        n++;
    return n;
}
