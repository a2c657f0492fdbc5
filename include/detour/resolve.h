/*
 * resolve.h - asynchronous name resolution for the loop threads.
 *
 * getaddrinfo() blocks, so a worker never calls it: dt_resolve_start() hands
 * the lookup to glibc's getaddrinfo_a(), whose completion thread queues the
 * result and wakes the worker; the worker runs the callback on its own thread
 * (dt_resolve_deliver). Address literals are answered without any lookup.
 * (Relays resolve through curl's own threaded resolver; this is for tunnels.)
 */
#ifndef DETOUR_RESOLVE_H
#define DETOUR_RESOLVE_H

#include <netdb.h>

#include "detour/loop.h"

typedef struct dt_resolve dt_resolve;

/* RES (freeaddrinfo() it) or NULL with GAI_ERR set. Runs on the worker thread. */
typedef void (*dt_resolve_cb)(void *ctx, struct addrinfo *res, int gai_err);

/*
 * Resolve HOST (IPv6 may keep brackets) for TCP port PORT. CB is called later
 * on W's thread, never from inside this call. NULL on ENOMEM.
 */
dt_resolve *dt_resolve_start(dt_worker *w, dt_str host, unsigned port, dt_resolve_cb cb, void *ctx);

/* The callback will not run; memory is reclaimed when the lookup completes. */
void dt_resolve_cancel(dt_resolve *r);

/* Run the callbacks of finished lookups. W's thread (on its wake-up). */
void dt_resolve_deliver(dt_worker *w);

/* At worker exit: wait for lookups still running (bounded) and free them. */
void dt_resolve_shutdown(dt_worker *w);

#endif
