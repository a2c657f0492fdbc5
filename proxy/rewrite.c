/*
 * rewrite.c - status and Location rewriting of upstream answers.
 */
#include <arpa/inet.h>
#include <stdlib.h>

#include "detour/rewrite.h"

int dt_rewrite_status(dt_str method, int status, bool rewrite_302, bool rewrite_301)
{
    if (dt_str_eq(method, DT_STR_LIT("GET")) || dt_str_eq(method, DT_STR_LIT("HEAD")))
        return status;
    if (status == 302 && rewrite_302)
        return 307;
    if (status == 301 && rewrite_301)
        return 308;
    return status;
}

typedef struct abs_url {
    dt_str scheme;
    dt_str host; /* without brackets */
    unsigned port; /* explicit, else the scheme's default */
    dt_str rest;   /* from the first '/', '?' or '#' after the authority */
} abs_url;

/* Parse "scheme://[userinfo@]host[:port]rest"; false for anything else. */
static bool parse_abs(dt_str s, abs_url *u)
{
    size_t i = 0;

    while (i < s.n && s.p[i] != ':' && s.p[i] != '/')
        i++;
    if (i == 0 || i + 2 >= s.n || s.p[i] != ':' || s.p[i + 1] != '/' || s.p[i + 2] != '/')
        return false;
    u->scheme = (dt_str){s.p, i};
    const char *a = s.p + i + 3, *end = s.p + s.n;
    const char *ae = a;
    while (ae < end && *ae != '/' && *ae != '?' && *ae != '#')
        ae++;
    u->rest = (dt_str){ae, (size_t)(end - ae)};
    for (const char *at = a; at < ae; at++)
        if (*at == '@')
            a = at + 1;
    const char *hs = a, *he;
    if (a < ae && *a == '[') {
        hs = a + 1;
        he = memchr(hs, ']', (size_t)(ae - hs));
        if (he == NULL)
            return false;
        a = he + 1;
    } else {
        he = a;
        while (he < ae && *he != ':')
            he++;
        a = he;
    }
    u->host = (dt_str){hs, (size_t)(he - hs)};
    bool https = dt_str_ieq(u->scheme, DT_STR_LIT("https"));
    u->port = https ? 443 : 80;
    if (a < ae && *a == ':' && a + 1 < ae) {
        unsigned p = 0;
        for (const char *d = a + 1; d < ae; d++) {
            if (*d < '0' || *d > '9' || p > 65535)
                return false;
            p = p * 10 + (unsigned)(*d - '0');
        }
        u->port = p;
    }
    return u->host.n > 0;
}

static bool names_upstream(const abs_url *u, const dt_upstream *up)
{
    dt_str scheme = up->https ? DT_STR_LIT("https") : DT_STR_LIT("http");

    return dt_str_ieq(u->scheme, scheme) && u->port == up->port &&
           dt_str_ieq(u->host, (dt_str){up->host, strlen(up->host)});
}

bool dt_host_is_internal(dt_str host)
{
    char buf[64];
    unsigned char a[16];

    if (host.n >= 2 && host.p[0] == '[' && host.p[host.n - 1] == ']')
        host = (dt_str){host.p + 1, host.n - 2};
    if (dt_str_ieq(host, DT_STR_LIT("localhost")) || host.n >= sizeof buf)
        return dt_str_ieq(host, DT_STR_LIT("localhost"));
    memcpy(buf, host.p, host.n);
    buf[host.n] = '\0';
    if (inet_pton(AF_INET, buf, a) == 1)
        return a[0] == 127 || a[0] == 10 || (a[0] == 172 && (a[1] & 0xf0) == 16) ||
               (a[0] == 192 && a[1] == 168) || (a[0] == 169 && a[1] == 254) || a[0] == 0;
    if (inet_pton(AF_INET6, buf, a) == 1) {
        static const unsigned char loop[16] = {[15] = 1};
        return memcmp(a, loop, 16) == 0 || (a[0] & 0xfe) == 0xfc ||
               (a[0] == 0xfe && (a[1] & 0xc0) == 0x80);
    }
    return false;
}

dt_location_result dt_rewrite_location(dt_str location, const dt_upstream *up, bool enabled,
                                       const dt_config *cfg, dt_str client_scheme,
                                       dt_str client_authority, char *out, size_t cap,
                                       size_t *out_len)
{
    abs_url u;

    if (!parse_abs(location, &u))
        return DT_LOCATION_KEPT; /* relative: already the client's origin */
    if (enabled && up != NULL && names_upstream(&u, up) && client_authority.n > 0) {
        size_t n = client_scheme.n + 3 + client_authority.n + u.rest.n;
        if (n < cap) {
            char *p = out;
            memcpy(p, client_scheme.p, client_scheme.n);
            p += client_scheme.n;
            memcpy(p, "://", 3);
            p += 3;
            memcpy(p, client_authority.p, client_authority.n);
            p += client_authority.n;
            memcpy(p, u.rest.p, u.rest.n);
            p[u.rest.n] = '\0';
            *out_len = n;
            return DT_LOCATION_REWRITTEN;
        }
    }
    if (dt_host_is_internal(u.host))
        return DT_LOCATION_LEAK;
    for (size_t i = 0; cfg != NULL && i < cfg->nupstreams; i++)
        if (names_upstream(&u, &cfg->upstreams[i]))
            return DT_LOCATION_LEAK;
    return DT_LOCATION_KEPT;
}
