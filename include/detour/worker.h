/*
 * worker.h - one event loop per thread.
 *
 * A worker owns everything a request touches: its listening sockets (bound
 * with SO_REUSEPORT, so the kernel spreads accepts between workers), one
 * libmicrohttpd daemon per listener kind (plain, or one per TLS certificate)
 * in external-epoll mode, one curl multi handle driven through its socket
 * API, and one epoll instance that waits on all of them. Nothing is shared
 * between workers but the read-only config snapshot and relaxed counters, so
 * the request path takes no lock.
 *
 * Threads: dt_worker_create/start/stop/destroy are called by the main thread;
 * dt_worker_post_* are the only functions another thread may call on a worker
 * (they write to its eventfd).
 */
#ifndef DETOUR_WORKER_H
#define DETOUR_WORKER_H

#include "detour/config.h"

typedef struct dt_worker dt_worker;
struct dt_server;

/*
 * Create worker INDEX for snapshot CFG (a reference is taken): open its
 * listening sockets, start its daemons and its curl multi. Returns NULL with a
 * message in err on failure (bind errors name the address).
 */
dt_worker *dt_worker_create(struct dt_server *srv, int index, dt_config *cfg, char *err,
                            size_t errlen);

/* Start the worker's thread. DT_OK or DT_EIO. */
int dt_worker_start(dt_worker *w);

/* Ask the worker to switch to the server's current snapshot. Any thread. */
void dt_worker_post_reload(dt_worker *w);

/*
 * Ask the worker to stop accepting and drain: finish requests in flight, close
 * idle keep-alive connections, and leave its loop when nothing is left or at
 * DEADLINE_MS (monotonic). Any thread.
 */
void dt_worker_post_drain(dt_worker *w, int64_t deadline_ms);

/* Wait for the thread to end, then free everything. Main thread. */
void dt_worker_join(dt_worker *w);
void dt_worker_destroy(dt_worker *w);

/* Reopen the access log from the worker's side (flush its buffer first). */
void dt_worker_post_logrotate(dt_worker *w);

#endif
