/*
 * upstream.h - the upstream side: one curl multi handle per worker, driven
 * through CURLMOPT_SOCKETFUNCTION / TIMERFUNCTION from the worker's epoll.
 * The only module that includes <curl/curl.h>.
 *
 * All functions run on the worker's own thread. None of them may be called
 * from inside a libmicrohttpd callback except dt_upstream_start,
 * dt_upstream_abort and dt_upstream_wake (which only queues work).
 */
#ifndef DETOUR_UPSTREAM_H
#define DETOUR_UPSTREAM_H

#include "detour/loop.h"

/* Process-wide curl_global_init; once, before any thread starts. */
int dt_upstream_global_init(void);
void dt_upstream_global_cleanup(void);

int dt_upstream_init(dt_worker *w);
void dt_upstream_cleanup(dt_worker *w);

/*
 * Start relaying R to its upstream (r->upstream, or r->url for a request's own
 * destination). Builds the upstream request from the client's headers
 * (hop-by-hop removed, Via and X-Forwarded-* added) via FRONT's header walk.
 * DT_OK, or a dt_err after which the caller answers with an error.
 */
typedef struct dt_req_header {
    dt_str name, value;
} dt_req_header;
int dt_upstream_start(dt_req *r, const dt_req_header *hdrs, size_t nhdrs);

/*
 * Start the transfer of a request whose small body was buffered (r->up_buffered)
 * once the body is complete; a no-op when the transfer already started.
 * DT_OK or DT_ENOMEM.
 */
int dt_upstream_begin(dt_req *r);

/* Stop R's transfer now (client gone, request finished). Safe at any state. */
void dt_upstream_abort(dt_req *r);

/* The client side made room (download) or brought data/EOF (upload): unpause soon. */
void dt_upstream_wake(dt_req *r);

/* A curl socket is ready. */
void dt_upstream_socket_event(dt_worker *w, dt_curl_sock *s, uint32_t events);

/* Run due curl timers, pending unpauses and finished transfers; then upstream timeouts. */
void dt_upstream_process(dt_worker *w, int64_t now);

/* Free what was closed during this loop iteration (after the event batch). */
void dt_upstream_reap(dt_worker *w);

/* Milliseconds until dt_upstream_process must run; -1 none, 0 now. */
int64_t dt_upstream_timeout(dt_worker *w, int64_t now);

#endif
