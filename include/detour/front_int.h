/*
 * front_int.h - what the client-side files share: front.c (daemons,
 * connections, callbacks), head.c (a complete request head), answer.c
 * (detour's own answers) and respond.c (the upstream's answer). Together they
 * are the front-end module, the only code that includes <microhttpd.h>; no
 * other module includes this header.
 *
 * All functions run on the worker's thread, inside or outside libmicrohttpd
 * callbacks as noted.
 */
#ifndef DETOUR_FRONT_INT_H
#define DETOUR_FRONT_INT_H

#include <microhttpd.h>

#include "detour/front.h"
#include "detour/rules.h"

/* Suspend R's connection because of WHY (inside a callback of R's). */
void dt_front_suspend(dt_req *r, dt_wait why);
/* Resume R's connection if it is suspended; the loop runs the daemons next. */
void dt_front_resume(dt_req *r);
/* Drop one reference to R; the last frees it. */
void dt_front_req_unref(dt_req *r);

/* A short HTML error page for STATUS; counts its size as R's body bytes. NULL on ENOMEM. */
struct MHD_Response *dt_front_page(dt_req *r, int status, const char *detail);
/* R's answer from now on (a previous, unqueued one is dropped). */
void dt_front_set_answer(dt_req *r, int status, struct MHD_Response *resp);
/* Let go of R's unqueued answer, if any: a cached one is unpinned, a private one destroyed. */
void dt_front_drop_answer(dt_req *r);
/* Queue R's answer (first or final access-handler call only). */
enum MHD_Result dt_front_queue(dt_req *r);

/* Answer now and close: the request must not be read any further (400, 431...). */
enum MHD_Result dt_front_answer_and_close(dt_req *r, int status, const char *detail);
/*
 * Answer with R's prepared response without relaying the body: at the final
 * call when there is no body (keep-alive), after reading and dropping a body
 * of up to DT_DISCARD_MAX, or now with a close (larger bodies, and clients
 * waiting for 100 Continue).
 */
enum MHD_Result dt_front_answer_locally(dt_req *r, bool expect_continue);
enum MHD_Result dt_front_answer_error(dt_req *r, int status, const char *detail,
                                      bool expect_continue);
enum MHD_Result dt_front_answer_redirect(dt_req *r, const dt_verdict *v, bool expect_continue);

/* libmicrohttpd's per-connection memory pool for CFG, and its bounds. */
#define DT_POOL_MIN (20 * 1024)
#define DT_POOL_SLACK (4 * 1024)
unsigned dt_front_pool_size(const dt_config *cfg);

/* The first access-handler call: the head is complete. */
enum MHD_Result dt_front_on_head(dt_req *r, const char *method, const char *version);

#endif
