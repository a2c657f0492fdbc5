/*
 * tunnel.h - forward mode's first look at a connection, and CONNECT tunnels.
 *
 * libmicrohttpd cannot tunnel (it only upgrades with 101), so in forward
 * mode the worker keeps a new connection until its first bytes arrive: a
 * connection that starts with "CONNECT " becomes a tunnel run by this module
 * in the same event loop; anything else is handed to libmicrohttpd, keep-alive
 * and all. Only the first request on a connection can be CONNECT.
 *
 * A tunnel reads and checks the CONNECT head (port in forward.connect_ports,
 * client and destination allowed, not a loop), resolves and connects without
 * blocking, answers 200 (no Content-Length, no Transfer-Encoding), then moves
 * bytes both ways with two pumps (pump.h): what cannot move yet stays in the
 * kernel's socket buffers, so TCP's flow control holds a fast side back
 * (backpressure) and a tunnel owns no buffer of its own. When either side
 * closes, what the other side had sent by then is delivered, both sides are
 * shut for writing, and what the peers still send is dropped until they
 * close (no reset that would lose the last bytes). A tunnel with no traffic
 * for timeouts.idle_ms is closed.
 *
 * All functions run on the worker's thread.
 */
#ifndef DETOUR_TUNNEL_H
#define DETOUR_TUNNEL_H

#include "detour/loop.h"

/* Take a freshly accepted forward-mode socket and wait for its first bytes. */
void dt_tunnel_peek_start(dt_worker *w, int fd, const struct sockaddr *sa, socklen_t salen,
                          const dt_conn_init *init);

/* A socket registered by this module is ready. */
void dt_tunnel_event(dt_worker *w, dt_ev *ev, uint32_t events);

/* Time out slow first bytes, slow CONNECT heads, slow connects and idle tunnels. */
void dt_tunnel_sweep(dt_worker *w, int64_t now);

/* Close the connections still waiting for their first bytes (drain). */
void dt_tunnel_close_peeks(dt_worker *w);

/* Close every peek and tunnel now (worker exit). */
void dt_tunnel_close_all(dt_worker *w);

/* Free tunnels closed during this loop iteration (after the event batch). */
void dt_tunnel_reap(dt_worker *w);

/* Open tunnels and pending peeks (for the drain check). */
size_t dt_tunnel_count(const dt_worker *w);

#endif
