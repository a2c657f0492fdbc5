/*
 * resolve.c - getaddrinfo_a() lookups delivered to the worker's loop.
 *
 * Ownership: a dt_resolve belongs to this module from start to delivery. The
 * completion runs on a glibc thread: it only moves the request onto the
 * worker's locked list and wakes the worker. A cancelled request is freed at
 * delivery without calling back, so the caller may go away at any time.
 */
#include <arpa/inet.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "detour/resolve.h"

struct dt_resolve {
    dt_worker *w;
    struct gaicb cb;
    struct addrinfo hints;
    char host[256];
    char port[8];
    dt_resolve_cb fn;
    void *ctx;
    bool cancelled;
    int err;
    dt_list link;
};

static void completed(union sigval sv)
{
    dt_resolve *r = sv.sival_ptr;
    dt_worker *w = r->w;

    r->err = gai_error(&r->cb);
    pthread_mutex_lock(&w->resolve_lock);
    dt_list_append(&w->resolved, &r->link);
    pthread_mutex_unlock(&w->resolve_lock);
    dt_worker_post(w, DT_POST_RESOLVED);
}

dt_resolve *dt_resolve_start(dt_worker *w, dt_str host, unsigned port, dt_resolve_cb fn, void *ctx)
{
    dt_resolve *r = calloc(1, sizeof *r);
    struct gaicb *list[1];
    struct sigevent sev = {0};

    if (r == NULL)
        return NULL;
    if (host.n >= 2 && host.p[0] == '[' && host.p[host.n - 1] == ']')
        host = (dt_str){host.p + 1, host.n - 2};
    if (host.n >= sizeof r->host) {
        free(r);
        return NULL;
    }
    memcpy(r->host, host.p, host.n);
    snprintf(r->port, sizeof r->port, "%u", port);
    r->w = w;
    r->fn = fn;
    r->ctx = ctx;
    dt_list_init(&r->link);
    r->hints.ai_socktype = SOCK_STREAM;
    r->hints.ai_flags = AI_NUMERICSERV | AI_ADDRCONFIG;
    r->cb.ar_name = r->host;
    r->cb.ar_service = r->port;
    r->cb.ar_request = &r->hints;
    list[0] = &r->cb;
    sev.sigev_notify = SIGEV_THREAD;
    sev.sigev_notify_function = completed;
    sev.sigev_value.sival_ptr = r;
    if (getaddrinfo_a(GAI_NOWAIT, list, 1, &sev) != 0) {
        free(r);
        return NULL;
    }
    w->resolving++;
    return r;
}

void dt_resolve_cancel(dt_resolve *r)
{
    if (r != NULL)
        r->cancelled = true;
}

void dt_resolve_deliver(dt_worker *w)
{
    dt_list done;

    dt_list_init(&done);
    pthread_mutex_lock(&w->resolve_lock);
    while (!dt_list_empty(&w->resolved)) {
        dt_list *n = w->resolved.next;
        dt_list_remove(n);
        dt_list_append(&done, n);
    }
    pthread_mutex_unlock(&w->resolve_lock);
    while (!dt_list_empty(&done)) {
        dt_resolve *r = dt_container_of(done.next, dt_resolve, link);
        dt_list_remove(&r->link);
        w->resolving--;
        if (r->cancelled) {
            if (r->cb.ar_result != NULL)
                freeaddrinfo(r->cb.ar_result);
        } else {
            r->fn(r->ctx, r->err == 0 ? r->cb.ar_result : NULL, r->err);
        }
        free(r);
    }
}

void dt_resolve_shutdown(dt_worker *w)
{
    /* Completion threads still hold pointers to the worker: wait for them. */
    for (int i = 0; i < 500 && w->resolving > 0; i++) {
        dt_resolve_deliver(w);
        if (w->resolving > 0)
            usleep(10000);
    }
}
