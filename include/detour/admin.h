/*
 * admin.h - the admin listener: GET /healthz and GET /metrics.
 *
 * It runs its own small libmicrohttpd daemon with an internal thread, on an
 * address that never serves proxied traffic, so a scrape never competes with
 * a worker's loop.
 */
#ifndef DETOUR_ADMIN_H
#define DETOUR_ADMIN_H

#include "detour/config.h"

typedef struct dt_admin dt_admin;
struct dt_server;

/* Start serving on ADDR. NULL with a message in err on failure. Main thread. */
dt_admin *dt_admin_start(struct dt_server *srv, const dt_listen *addr, char *err, size_t errlen);

/* From now on /healthz answers 503 (the load balancer takes us out). Any thread. */
void dt_admin_set_draining(dt_admin *a);

void dt_admin_stop(dt_admin *a);

#endif
