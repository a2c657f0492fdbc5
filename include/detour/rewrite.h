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
 * default port made explicit or not; a network-path reference "//host:port/x"
 * takes UP's scheme) and ENABLED: the result, written to OUT (CAP bytes,
 * NUL-terminated), is CLIENT_SCHEME "://" CLIENT_AUTHORITY (the Host the
 * client used, with its port) followed by the rest of LOCATION (path, query,
 * fragment) unchanged; userinfo is dropped. *OUT_LEN is set when rewritten.
 *
 * A Location left alone is a leak when its host is the host of UP or of any
 * upstream of CFG, on any scheme and port, or, when UP is given, an internal
 * one (dt_host_is_internal): the name of a machine behind detour reached the
 * client. Without UP (a relay to the request's own destination, chosen by
 * the client) an internal address alone is not a leak.
 * An empty CLIENT_AUTHORITY (no Host) or a rewrite that does not fit in OUT
 * keeps the original, which then counts as a leak. Relative Locations and
 * other schemes' URIs (mailto:) are kept. Pure; UP and CFG may be NULL.
 */
dt_location_result dt_rewrite_location(dt_str location, const dt_upstream *up, bool enabled,
                                       const dt_config *cfg, dt_str client_scheme,
                                       dt_str client_authority, char *out, size_t cap,
                                       size_t *out_len);

/*
 * Is HOST (no port; IPv6 with or without brackets, with or without a zone)
 * internal: "localhost" or a name under it; an IPv4 address (in any form a
 * browser reads as one: "127.1", "0x7f000001") in 0/8, 10/8, 100.64/10,
 * 127/8, 169.254/16, 172.16/12 or 192.168/16; the IPv6 ::, ::1, fc00::/7,
 * fe80::/10, or an IPv4-mapped ::ffff: form of an internal IPv4 address.
 * A trailing dot is ignored. Pure.
 */
bool dt_host_is_internal(dt_str host);

#endif
