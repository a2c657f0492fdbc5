/*
 * target.h - request targets and authorities (RFC 9112 section 3.2), parsed
 * without decoding anything.
 */
#ifndef DETOUR_TARGET_H
#define DETOUR_TARGET_H

#include "detour/common.h"

typedef enum dt_target_form {
    DT_TARGET_ORIGIN = 0, /* /path?query */
    DT_TARGET_ABSOLUTE,   /* http://host:port/path?query */
    DT_TARGET_AUTHORITY,  /* host:port (CONNECT) */
    DT_TARGET_ASTERISK,   /* * (OPTIONS) */
} dt_target_form;

typedef struct dt_target {
    dt_target_form form;
    dt_str scheme;      /* absolute-form only, as written */
    dt_str authority;   /* absolute- and authority-form: host[:port] as written */
    dt_str host;        /* without port; IPv6 keeps its brackets */
    unsigned port;      /* explicit port, else 0 */
    dt_str path;        /* raw; for absolute-form without a path: "/" */
    dt_str query;       /* after '?', without it; .n == 0 when none */
    bool has_query;     /* a '?' was present (even with an empty query) */
    dt_str origin_form; /* path[?query] as it must be sent to an origin server */
    /*
     * Absolute-form with a query but no path ("http://h?q"): the "/" to send
     * is not in RAW, so origin_form is "?q" and a "/" must precede it.
     * dt_target_origin_form() writes the complete string in every case.
     */
    bool origin_form_slash;
} dt_target;

/*
 * Parse RAW (the request target exactly as received). Returns DT_OK or
 * DT_EINVAL for a target that fits no form (empty, contains SP/CTL, a bad
 * authority, userinfo, a scheme other than http/https in absolute-form).
 * All dt_str fields borrow from RAW (the defaulted "/" path is static).
 * For CONNECT, pass is_connect = true: only authority-form with a port in
 * 1..65535 is valid then.
 */
int dt_target_parse(dt_str raw, bool is_connect, dt_target *out);

/*
 * Split a Host header value or an authority into host and port. The host
 * keeps IPv6 brackets; *port is 0 when absent or empty ("host:", which RFC
 * 3986 allows). Returns DT_EINVAL for an empty host, a bad port (not
 * 1..65535, not digits), or bytes a host may not contain (reg-name:
 * unreserved, sub-delims, %XX; IP literal: hex, ':', '.', zone id).
 */
int dt_authority_split(dt_str authority, dt_str *host, unsigned *port);

/*
 * Write T's origin-form (with the "/" that origin_form_slash asks for),
 * NUL-terminated, into OUT (cap bytes). Returns its length, or -1 when it
 * does not fit. Asterisk-form writes "*".
 */
long dt_target_origin_form(const dt_target *t, char *out, size_t cap);

/* Copy HOST lower-cased into OUT (cap bytes, NUL-terminated). Returns length or -1. */
long dt_host_lower(dt_str host, char *out, size_t cap);

#endif
