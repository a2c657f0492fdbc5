/*
 * worker.c - one event loop thread: listening sockets, the epoll loop that
 * drives libmicrohttpd and curl, timers, and the worker's share of
 * accounting and logging.
 *
 * One loop iteration:
 *   1. timeout = the nearest of libmicrohttpd's, curl's, the upstream
 *      deadline list's and the head-timeout sweep's (0 when work is pending:
 *      a resume libmicrohttpd has not seen, a curl unpause);
 *   2. epoll_wait; accept on listeners, hand curl its ready sockets, notice
 *      client hang-ups of suspended requests (skipped for a while when only
 *      libmicrohttpd has work and plenty of it: see mhd_again);
 *   3. curl timers, unpauses, finished transfers, upstream timeouts;
 *   4. MHD_run on every daemon (it also sees the resumes of step 2-3);
 *   5. the head-timeout sweep, and the drain check.
 * No call in the loop blocks: sockets are non-blocking, curl resolves names
 * in its own threads, files are only touched by the main thread.
 */
#include <errno.h>
#include <fcntl.h>
#include <ifaddrs.h>
#include <netinet/in.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "detour/front.h"
#include "detour/log.h"
#include "detour/rcache.h"
#include "detour/resolve.h"
#include "detour/server.h"
#include "detour/tunnel.h"
#include "detour/upstream.h"

/* From <linux/netfilter_ipv4.h> and <linux/netfilter_ipv6/ip6_tables.h>,
 * which cannot be included together with the libc socket headers. */
#ifndef SO_ORIGINAL_DST
#define SO_ORIGINAL_DST 80
#endif
#ifndef IP6T_SO_ORIGINAL_DST
#define IP6T_SO_ORIGINAL_DST 80
#endif

#define DT_SWEEP_MS 250
#define DT_LOG_FLUSH 32768
#define DT_ACCEPT_BATCH 64

/* ------------------------------------------------------------ epoll services */

int dt_worker_watch(dt_worker *w, int fd, uint32_t events, dt_ev *ev)
{
    struct epoll_event e = {.events = events, .data.ptr = ev};
    return epoll_ctl(w->epfd, EPOLL_CTL_ADD, fd, &e);
}

int dt_worker_rewatch(dt_worker *w, int fd, uint32_t events, dt_ev *ev)
{
    struct epoll_event e = {.events = events, .data.ptr = ev};
    return epoll_ctl(w->epfd, EPOLL_CTL_MOD, fd, &e);
}

void dt_worker_unwatch(dt_worker *w, int fd)
{
    epoll_ctl(w->epfd, EPOLL_CTL_DEL, fd, NULL);
}

/* ------------------------------------------------------------ block caches */

void *dt_cache_get(dt_cache *c)
{
    return c->n > 0 ? c->items[--c->n] : malloc(c->size);
}

void dt_cache_put(dt_cache *c, void *p)
{
    if (p == NULL)
        return;
    if (c->n < DT_CACHE_MAX)
        c->items[c->n++] = p;
    else
        free(p);
}

void dt_cache_clear(dt_cache *c)
{
    while (c->n > 0)
        free(c->items[--c->n]);
}

/* ------------------------------------------------------------ listeners */

static void listeners_pause(dt_worker *w, bool pause)
{
    for (size_t i = 0; i < w->nlisteners; i++) {
        dt_listener *l = &w->listeners[i];
        if (l->fd < 0 || l->paused == pause)
            continue;
        if (pause)
            dt_worker_unwatch(w, l->fd);
        else
            dt_worker_watch(w, l->fd, EPOLLIN, &l->ev);
        l->paused = pause;
    }
}

void dt_worker_conn_closed(dt_worker *w)
{
    dt_server_conn_release(w->srv);
    if (!w->draining)
        listeners_pause(w, false);
}

/* Where a kernel-redirected connection was headed (iptables REDIRECT). */
static bool original_destination(int fd, struct sockaddr_storage *out)
{
    struct sockaddr_storage local;
    socklen_t len = sizeof *out, llen = sizeof local;

    if (getsockopt(fd, SOL_IP, SO_ORIGINAL_DST, out, &len) != 0) {
        len = sizeof *out;
        if (getsockopt(fd, SOL_IPV6, IP6T_SO_ORIGINAL_DST, out, &len) != 0)
            return false;
    }
    /* conntrack answers for every tracked connection, redirected or not: one
     * whose original destination is this socket's own address was made to
     * detour directly. */
    if (getsockname(fd, (struct sockaddr *)&local, &llen) != 0)
        return true;
    if (local.ss_family == AF_INET && out->ss_family == AF_INET) {
        const struct sockaddr_in *a = (const struct sockaddr_in *)&local;
        const struct sockaddr_in *b = (const struct sockaddr_in *)out;
        return a->sin_port != b->sin_port || a->sin_addr.s_addr != b->sin_addr.s_addr;
    }
    if (local.ss_family == AF_INET6 && out->ss_family == AF_INET6) {
        const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)&local;
        const struct sockaddr_in6 *b = (const struct sockaddr_in6 *)out;
        return a->sin6_port != b->sin6_port ||
               memcmp(&a->sin6_addr, &b->sin6_addr, sizeof a->sin6_addr) != 0;
    }
    return true;
}

static void on_accept(dt_worker *w, dt_listener *l)
{
    for (int i = 0; i < DT_ACCEPT_BATCH; i++) {
        struct sockaddr_storage ss;
        socklen_t len = sizeof ss;
        dt_conn_init init = {.listener = l};
        int fd;

        if (!dt_server_conn_acquire(w->srv)) {
            /* At limits.max_connections: leave new connections in the kernel's
             * queue until one closes. */
            listeners_pause(w, true);
            return;
        }
        fd = accept4(l->fd, (struct sockaddr *)&ss, &len, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            dt_server_conn_release(w->srv);
            if (errno == EMFILE || errno == ENFILE)
                dt_log_error("accept on %s: %s", l->conf->text, strerror(errno));
            return;
        }
        init.accepted_ms = dt_now_ms();
        if (w->cfg->mode == DT_MODE_TRANSPARENT)
            init.has_orig_dst = original_destination(fd, &init.orig_dst);
        if (w->boot_cfg->mode == DT_MODE_FORWARD && !l->tls) {
            /* CONNECT or not? The first bytes decide (tunnel.c). */
            dt_tunnel_peek_start(w, fd, (struct sockaddr *)&ss, len, &init);
            continue;
        }
        if (dt_front_add_connection(w, l->daemon, fd, (struct sockaddr *)&ss, len, &init) != DT_OK)
            dt_server_conn_release(w->srv); /* libmicrohttpd closed the socket */
    }
}

static int open_listener(const char *path, const dt_listen *conf, char *err, size_t errlen)
{
    int one = 1;
    int fd = socket(conf->addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);

    if (fd < 0)
        goto fail;
    /* Every worker binds the same address; the kernel spreads new connections. */
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0 ||
        setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) != 0)
        goto fail;
    /* "[::]:80" and "0.0.0.0:80" may both be listed: keep the families apart. */
    if (conf->addr.ss_family == AF_INET6 &&
        setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one) != 0)
        goto fail;
    if (bind(fd, (const struct sockaddr *)&conf->addr, conf->addrlen) != 0 || listen(fd, 4096) != 0)
        goto fail;
    return fd;
fail:
    snprintf(err, errlen, "%s:%d: cannot listen on %s: %s", path, conf->line, conf->text,
             strerror(errno));
    if (fd >= 0)
        close(fd);
    return -1;
}

static int open_listeners(dt_worker *w, char *err, size_t errlen)
{
    /* Listeners and daemons keep pointing into the snapshot they were made
     * from, which the worker holds for its whole life (a reload that changes
     * them needs a restart). */
    const dt_config *cfg = w->boot_cfg;

    w->listeners = calloc(cfg->nlisten, sizeof *w->listeners);
    if (w->listeners == NULL)
        return DT_ENOMEM;
    for (size_t i = 0; i < cfg->nlisten; i++) {
        dt_listener *l = &w->listeners[i];
        l->ev.kind = DT_EV_LISTEN;
        l->w = w;
        l->conf = &cfg->listen[i];
        l->tls = cfg->listen[i].tls_cert != NULL;
        l->fd = open_listener(cfg->path, &cfg->listen[i], err, errlen);
        w->nlisteners++;
        if (l->fd < 0)
            return DT_EIO;
        if (dt_worker_watch(w, l->fd, EPOLLIN, &l->ev) != 0)
            return DT_EIO;
    }
    return DT_OK;
}

static void close_listeners(dt_worker *w)
{
    for (size_t i = 0; i < w->nlisteners; i++) {
        dt_listener *l = &w->listeners[i];
        if (l->fd >= 0) {
            if (!l->paused)
                dt_worker_unwatch(w, l->fd);
            close(l->fd);
            l->fd = -1;
        }
    }
}

/* ------------------------------------------------------------ access log buffer */

static void log_flush(dt_worker *w)
{
    if (w->loglen > 0) {
        dt_access_log_write_raw(w->logbuf, w->loglen);
        w->loglen = 0;
    }
}

void dt_worker_log_access(dt_worker *w, const char *line, size_t len)
{
    if (w->logbuf == NULL) {
        w->logbuf = malloc(DT_LOG_FLUSH * 2);
        if (w->logbuf == NULL) {
            dt_access_log_write_raw(line, len);
            return;
        }
        w->logcap = DT_LOG_FLUSH * 2;
    }
    if (w->loglen + len > w->logcap)
        log_flush(w);
    if (len > w->logcap) {
        dt_access_log_write_raw(line, len);
        return;
    }
    memcpy(w->logbuf + w->loglen, line, len);
    w->loglen += len;
    if (w->loglen >= DT_LOG_FLUSH)
        log_flush(w);
}

/* ------------------------------------------------------------ messages from other threads */

void dt_worker_post(dt_worker *w, unsigned bit)
{
    uint64_t one = 1;

    atomic_fetch_or(&w->posted, bit);
    if (write(w->wake_fd, &one, sizeof one) < 0 && errno != EAGAIN)
        dt_log_error("worker %d: cannot wake: %s", w->index, strerror(errno));
}

void dt_worker_post_reload(dt_worker *w)
{
    dt_worker_post(w, DT_POST_RELOAD);
}

void dt_worker_post_drain(dt_worker *w, int64_t deadline_ms)
{
    w->drain_deadline = deadline_ms; /* published by the eventfd write below */
    dt_worker_post(w, DT_POST_DRAIN);
}

void dt_worker_post_logrotate(dt_worker *w)
{
    dt_worker_post(w, DT_POST_LOGROTATE);
}

static void start_drain(dt_worker *w)
{
    if (w->draining)
        return;
    w->draining = true;
    /* Take what the kernel already queued for us, then stop listening. */
    for (size_t i = 0; i < w->nlisteners; i++)
        if (w->listeners[i].fd >= 0 && !w->listeners[i].paused)
            on_accept(w, &w->listeners[i]);
    close_listeners(w);
    dt_front_quiesce(w);
    dt_tunnel_close_peeks(w);
}

static dt_cfg_lease *lease_new(dt_config *cfg)
{
    dt_cfg_lease *l = calloc(1, sizeof *l);

    if (l != NULL)
        l->cfg = dt_config_ref(cfg);
    return l;
}

static void lease_free(dt_cfg_lease *l)
{
    dt_config_unref(l->cfg);
    free(l);
}

/* W no longer hands out L; it goes when its last user gives it back. */
static void lease_retire(dt_cfg_lease *l)
{
    if (l == NULL)
        return;
    l->retired = true;
    if (l->users == 0)
        lease_free(l);
}

dt_cfg_lease *dt_worker_lease(dt_worker *w)
{
    w->lease->users++;
    return w->lease;
}

void dt_lease_drop(dt_cfg_lease *l)
{
    if (--l->users == 0 && l->retired)
        lease_free(l);
}

static void on_wake(dt_worker *w)
{
    uint64_t v;
    unsigned bits;

    if (read(w->wake_fd, &v, sizeof v) < 0 && errno != EAGAIN)
        return;
    bits = atomic_exchange(&w->posted, 0u);
    if (bits & DT_POST_RELOAD) {
        dt_config *cfg = dt_server_config(w->srv);
        dt_cfg_lease *l = cfg != NULL ? lease_new(cfg) : NULL;
        if (l != NULL) {
            lease_retire(w->lease);
            w->lease = l;
            dt_config_unref(w->cfg);
            w->cfg = cfg;
        } else if (cfg != NULL) {
            dt_log_error("worker %d: out of memory: the reload waits for the next one", w->index);
            dt_config_unref(cfg);
        }
    }
    if (bits & DT_POST_LOGROTATE)
        log_flush(w);
    if (bits & DT_POST_RESOLVED)
        dt_resolve_deliver(w);
    if (bits & DT_POST_DRAIN)
        start_drain(w);
}

/* ------------------------------------------------------------ the loop */

static void dispatch(dt_worker *w, const struct epoll_event *e)
{
    dt_ev *ev = e->data.ptr;

    switch (ev->kind) {
    case DT_EV_WAKE:
        on_wake(w);
        break;
    case DT_EV_LISTEN:
        on_accept(w, (dt_listener *)ev);
        break;
    case DT_EV_MHD:
        w->mhd_pending = true;
        break;
    case DT_EV_CURL:
        dt_upstream_socket_event(w, (dt_curl_sock *)ev, e->events);
        break;
    case DT_EV_CLIENT:
        dt_front_client_hangup(dt_container_of(ev, dt_req, client_ev));
        break;
    case DT_EV_PEEK:
    case DT_EV_TUNNEL:
    case DT_EV_TUNNEL_UP:
        dt_tunnel_event(w, ev, e->events);
        break;
    }
}

static int loop_timeout(dt_worker *w, int64_t now)
{
    int64_t t = dt_front_timeout(w, now);
    int64_t u = dt_upstream_timeout(w, now);
    int64_t s = w->next_sweep > now ? w->next_sweep - now : 0;

    if (u >= 0 && (t < 0 || u < t))
        t = u;
    if (t < 0 || s < t)
        t = s;
    if (w->draining) {
        int64_t d = w->drain_deadline > now ? w->drain_deadline - now : 0;
        if (d < t)
            t = d;
    }
    return (int)(t > 60000 ? 60000 : t);
}

/*
 * Whether the next turn may skip our epoll_wait and go straight to
 * libmicrohttpd. Its epoll set is nested in ours, so a turn normally costs
 * two epoll_waits for the same news: ours says "libmicrohttpd has work",
 * then MHD_run asks its own set what it is. After a turn in which
 * libmicrohttpd parsed two or more request heads, the next batch is usually
 * already on its sockets (about 4 times in 5 at 64 connections), and asking
 * libmicrohttpd directly saves a system call per turn: 3-4% of the CPU of a
 * redirect. A turn with one head (a lone client) does not qualify: its next
 * request is rarely there yet, and the look would cost a system call per
 * request.
 *
 * Only with one libmicrohttpd daemon (each TLS listener adds a daemon with
 * a set of its own, and which one has work is only known from ours), and
 * only while nothing else waits on our set: no upstream transfer, tunnel,
 * suspended request (hang-up watch), forward-mode peek, name lookup or
 * posted work, and not draining. And never longer than DT_MHD_AGAIN_US
 * after our set was last polled, so a new connection, a signal or a timer
 * waits at most that long behind a stream of requests.
 */
#define DT_MHD_AGAIN_US 1000

static bool mhd_again(dt_worker *w, uint64_t heads_before, int64_t polled_us)
{
    return w->heads - heads_before >= 2 && w->now_us - polled_us < DT_MHD_AGAIN_US &&
           w->ndaemons == 1 && w->active_transfers == 0 && w->resolving == 0 && !w->draining &&
           dt_list_empty(&w->suspended) && dt_list_empty(&w->tunnels) &&
           dt_list_empty(&w->peeks) &&
           atomic_load_explicit(&w->posted, memory_order_relaxed) == 0;
}

static void *worker_main(void *arg)
{
    dt_worker *w = arg;
    struct epoll_event evs[256];
    int64_t now = dt_worker_tick(w);
    int64_t polled_us = w->now_us; /* when our epoll set was last asked */
    bool again = false;

    w->next_sweep = now + DT_SWEEP_MS;
    while (!w->stop) {
        uint64_t heads = w->heads;
        if (again) {
            now = dt_worker_tick(w);
            w->mhd_pending = true;
        } else {
            int timeout = loop_timeout(w, now);
            if (timeout != 0)
                log_flush(w);
            int n = epoll_wait(w->epfd, evs, (int)DT_ARRAY_LEN(evs), timeout);
            now = dt_worker_tick(w);
            polled_us = w->now_us;
            for (int i = 0; i < n; i++)
                dispatch(w, &evs[i]);
        }
        /* Let both sides settle before waiting again: a transfer added by
         * libmicrohttpd's handler wants curl now, a resume from curl wants
         * libmicrohttpd now. A few passes save an epoll_wait round each. */
        for (int pass = 0; pass < 4; pass++) {
            if (pass > 0)
                now = dt_worker_tick(w);
            dt_upstream_process(w, now);
            dt_front_run(w, now);
            if (dt_upstream_timeout(w, now) != 0 && !w->mhd_pending && w->mhd_due > now)
                break;
        }
        if (now >= w->next_sweep) {
            dt_front_sweep(w, now);
            dt_tunnel_sweep(w, now);
            /* A connection closing on another worker freed a slot for us too. */
            if (!w->draining && dt_server_conn_available(w->srv))
                listeners_pause(w, false);
            w->next_sweep = now + DT_SWEEP_MS;
        }
        dt_front_flush_small(w);
        dt_upstream_reap(w);
        dt_tunnel_reap(w);
        if (w->draining && (w->nconns == 0 || now >= w->drain_deadline))
            w->stop = true;
        again = mhd_again(w, heads, polled_us);
    }
    log_flush(w);
    return NULL;
}

/* ------------------------------------------------------------ life cycle */

/* This host's addresses, for "is that destination detour itself?" (wildcard listeners). */
static void load_local_addrs(dt_worker *w)
{
    struct ifaddrs *ifa, *i;
    size_t n = 0;

    if (getifaddrs(&ifa) != 0)
        return;
    for (i = ifa; i != NULL; i = i->ifa_next)
        if (i->ifa_addr != NULL &&
            (i->ifa_addr->sa_family == AF_INET || i->ifa_addr->sa_family == AF_INET6))
            n++;
    w->local_addrs = calloc(n ? n : 1, sizeof *w->local_addrs);
    for (i = ifa; w->local_addrs != NULL && i != NULL; i = i->ifa_next) {
        if (i->ifa_addr == NULL)
            continue;
        if (i->ifa_addr->sa_family == AF_INET)
            memcpy(&w->local_addrs[w->nlocal++], i->ifa_addr, sizeof(struct sockaddr_in));
        else if (i->ifa_addr->sa_family == AF_INET6)
            memcpy(&w->local_addrs[w->nlocal++], i->ifa_addr, sizeof(struct sockaddr_in6));
    }
    freeifaddrs(ifa);
}

dt_worker *dt_worker_create(struct dt_server *srv, int index, dt_config *cfg, char *err,
                            size_t errlen)
{
    dt_worker *w = calloc(1, sizeof *w);

    if (w == NULL) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    w->srv = srv;
    w->index = index;
    w->cfg = dt_config_ref(cfg);
    w->boot_cfg = dt_config_ref(cfg);
    w->lease = lease_new(cfg);
    w->metrics = dt_metrics_worker_slot(index);
    w->wake_fd = -1;
    w->wake_ev.kind = DT_EV_WAKE;
    w->req_cache.size = sizeof(dt_req);
    w->rh_cache.size = DT_RH_BLOCK;
    w->rcache = calloc(1, sizeof *w->rcache); /* without it, redirects are made each time */
    dt_list_init(&w->head_wait);
    dt_list_init(&w->suspended);
    dt_list_init(&w->small_pending);
    dt_list_init(&w->resolved);
    dt_list_init(&w->tunnels);
    dt_list_init(&w->dead_tunnels);
    dt_list_init(&w->peeks);
    pthread_mutex_init(&w->resolve_lock, NULL);
    if (w->lease == NULL) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    load_local_addrs(w);
    w->epfd = epoll_create1(EPOLL_CLOEXEC);
    w->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (w->epfd < 0 || w->wake_fd < 0 ||
        dt_worker_watch(w, w->wake_fd, EPOLLIN, &w->wake_ev) != 0) {
        snprintf(err, errlen, "worker %d: %s", index, strerror(errno));
        goto fail;
    }
    if (dt_upstream_init(w) != DT_OK) {
        snprintf(err, errlen, "worker %d: cannot create the curl multi handle", index);
        goto fail;
    }
    if (open_listeners(w, err, errlen) != DT_OK || dt_front_start(w, err, errlen) != DT_OK)
        goto fail;
    return w;
fail:
    dt_worker_destroy(w);
    return NULL;
}

int dt_worker_start(dt_worker *w)
{
    if (pthread_create(&w->thread, NULL, worker_main, w) != 0)
        return DT_EIO;
    w->started = true;
    return DT_OK;
}

void dt_worker_join(dt_worker *w)
{
    if (w->started)
        pthread_join(w->thread, NULL);
    w->started = false;
}

void dt_worker_destroy(dt_worker *w)
{
    if (w == NULL)
        return;
    dt_tunnel_close_all(w);
    dt_resolve_shutdown(w);
    dt_front_stop(w); /* completes every request, which releases their transfers */
    close_listeners(w);
    free(w->listeners);
    dt_upstream_cleanup(w);
    log_flush(w);
    free(w->logbuf);
    if (w->wake_fd >= 0)
        close(w->wake_fd);
    if (w->epfd >= 0)
        close(w->epfd);
    lease_retire(w->lease); /* after every request and tunnel gave theirs back */
    dt_config_unref(w->cfg);
    dt_config_unref(w->boot_cfg);
    free(w->local_addrs);
    dt_cache_clear(&w->req_cache);
    dt_cache_clear(&w->rh_cache);
    if (w->rcache != NULL)
        dt_rcache_clear(w->rcache); /* after dt_front_stop: no request holds an answer */
    free(w->rcache);
    free(w->scan);
    pthread_mutex_destroy(&w->resolve_lock);
    free(w);
}
