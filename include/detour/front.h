/*
 * front.h - the client side: libmicrohttpd daemons in external-epoll mode,
 * request validation, the route decision, local answers (redirects, errors)
 * and the client half of relaying (body in, response out). The only module
 * that includes <microhttpd.h>.
 *
 * All functions run on the worker's own thread.
 */
#ifndef DETOUR_FRONT_H
#define DETOUR_FRONT_H

#include "detour/loop.h"

/*
 * Start one daemon per listener kind for W (plain, and one per TLS
 * listener), none of them listening: the worker accepts and hands
 * connections over. DT_OK, or DT_EIO with a message in err.
 */
int dt_front_start(dt_worker *w, char *err, size_t errlen);
void dt_front_stop(dt_worker *w);

/*
 * Try every TLS listener's certificate and key the way the server will
 * (for `detour -t`). DT_OK, or DT_ECONFIG with "FILE:LINE: ..." in err.
 * Any thread; touches no worker.
 */
int dt_front_check_tls(const dt_config *cfg, char *err, size_t errlen);

/* Hand an accepted socket to daemon DAEMON. On failure the socket is closed. */
int dt_front_add_connection(dt_worker *w, int daemon, int fd, const struct sockaddr *sa,
                            socklen_t salen, const dt_conn_init *init);

/* Run the daemons once (non-blocking) if they have anything to do. */
void dt_front_run(dt_worker *w, int64_t now);

/* Milliseconds until the daemons need to run again. */
int64_t dt_front_timeout(dt_worker *w, int64_t now);

/* Close connections whose request head is late (timeouts.header_ms): 408. */
void dt_front_sweep(dt_worker *w, int64_t now);

/* Stop accepting new requests on keep-alive connections (drain). */
void dt_front_quiesce(dt_worker *w);

/* The upstream side has news for R: resume its connection if it waits. */
void dt_front_upstream_head(dt_req *r); /* final response head complete */
void dt_front_upstream_body(dt_req *r); /* more body in r->down */
void dt_front_upstream_done(dt_req *r); /* transfer finished (ok or r->transfer_err) */
void dt_front_upload_space(dt_req *r);  /* r->up has room again */

/* End of a loop turn: small bodies still incomplete switch to streaming. */
void dt_front_flush_small(dt_worker *w);

/* The client of a suspended request hung up. */
void dt_front_client_hangup(dt_req *r);

#endif
