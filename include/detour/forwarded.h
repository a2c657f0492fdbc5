/*
 * forwarded.h - what a relayed message's headers become on the other side.
 *
 * Requests: every end-to-end header in arrival order, duplicates and case
 * kept; hop-by-hop headers and the ones named in Connection dropped; framing
 * (Content-Length, Transfer-Encoding) and Expect dropped because the upstream
 * client generates its own; X-Forwarded-For extended with the client,
 * X-Forwarded-Proto and X-Forwarded-Host set; our Via appended; Host replaced
 * with the target's authority in forward mode; Max-Forwards decremented for
 * TRACE and OPTIONS.
 *
 * Responses: dt_fwd_response_keep() says which upstream headers the client
 * may see. Pure functions: no I/O, no allocation.
 */
#ifndef DETOUR_FORWARDED_H
#define DETOUR_FORWARDED_H

#include "detour/common.h"
#include "detour/headers.h"

typedef struct dt_header_field {
    dt_str name, value;
} dt_header_field;

typedef struct dt_fwd_ctx {
    dt_str client_ip;         /* appended to X-Forwarded-For */
    dt_str proto;             /* "http" or "https": X-Forwarded-Proto */
    dt_str host;              /* the client's Host as received (X-Forwarded-Host); may be empty */
    dt_str via_name;          /* our Via pseudonym */
    dt_str replace_host;      /* .p != NULL: send this as Host (forward mode) */
    bool max_forwards;        /* TRACE/OPTIONS: decrement Max-Forwards */
    bool proxy_auth_consumed; /* forward mode: Proxy-Authorization was meant for us, not the origin
                               */
} dt_fwd_ctx;

typedef void (*dt_fwd_emit_fn)(void *ctx, dt_str name, dt_str value);

/*
 * Emit the upstream request's headers for the client headers IN (N of them,
 * in arrival order). Numbers are formatted into SCRATCH (at least 32 bytes),
 * the combined X-Forwarded-For into XFF (XFF_CAP bytes; when the chain does
 * not fit it is cut at a whole element and the client still appended).
 */
void dt_fwd_request_headers(const dt_header_field *in, size_t n, const dt_fwd_ctx *c, char *scratch,
                            char *xff, size_t xff_cap, dt_fwd_emit_fn emit, void *ctx);

/*
 * Should the upstream response header NAME reach the client? False for
 * hop-by-hop headers, those named in the response's Connection tokens, and
 * Content-Length (the client side frames the body itself).
 */
bool dt_fwd_response_keep(dt_str name, const dt_conn_tokens *conn);

#endif
