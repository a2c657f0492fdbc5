/*
 * rewrite.h - what detour changes in an upstream's answer: the 302->307 and
 * 301->308 status rewrite for methods other than GET and HEAD, and the
 * Location rewrite from the upstream's own origin to the client's. Pure.
 */
#ifndef DETOUR_REWRITE_H
#define DETOUR_REWRITE_H

#include "detour/config.h"

/*
 * The status the client receives for upstream STATUS answering METHOD on a
 * relay with the given settings: 307 for 302 (rewrite_302), 308 for 301
 * (rewrite_301), when METHOD is neither GET nor HEAD; otherwise STATUS.
 */
int dt_rewrite_status(dt_str method, int status, bool rewrite_302, bool rewrite_301);

typedef enum dt_location_result {
    DT_LOCATION_KEPT = 0,  /* relative, or names some other public origin */
    DT_LOCATION_REWRITTEN, /* named the upstream's origin; now the client's */
    DT_LOCATION_LEAK,      /* names an internal origin and was left as is */
} dt_location_result;

/*
 * Rewrite LOCATION when it names UP's origin (scheme, host and port, the
 * default port made explicit or not) and ENABLED: the result, written to OUT
 * (CAP bytes, NUL-terminated), is CLIENT_SCHEME "://" CLIENT_AUTHORITY (the
 * Host the client used, with its port) followed by the rest of LOCATION
 * unchanged. A Location left alone that names a loopback or private address,
 * "localhost", or any upstream of CFG is a leak. *OUT_LEN is set when
 * rewritten. A rewrite that does not fit in OUT keeps the original.
 */
dt_location_result dt_rewrite_location(dt_str location, const dt_upstream *up, bool enabled,
                                       const dt_config *cfg, dt_str client_scheme,
                                       dt_str client_authority, char *out, size_t cap,
                                       size_t *out_len);

/* Is HOST (no port, IPv6 with or without brackets) loopback, private or link-local? */
bool dt_host_is_internal(dt_str host);

#endif
