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
    dt_str scheme; /* empty for a network-path reference ("//host/...") */
    dt_str host;   /* without brackets, zone id or trailing dot */
    unsigned port; /* explicit; 0: the scheme's default; PORT_INVALID: unreadable */
    dt_str rest;   /* from the first '/', '?' or '#' after the authority */
} abs_url;

/* Split "[scheme:]//" off S; false when S has no authority. */
static bool split_scheme(dt_str s, dt_str *scheme, const char **authority)
{
    size_t i = 0;

    while (i < s.n && s.p[i] != ':' && s.p[i] != '/')
        i++;
    if (i < s.n && s.p[i] == ':')
        *scheme = (dt_str){s.p, i++};
    else if (i == 0)
        *scheme = (dt_str){s.p, 0}; /* "//host": the scheme of the request */
    else
        return false;
    if (i + 2 > s.n || s.p[i] != '/' || s.p[i + 1] != '/' || (scheme->n == 0 && i != 0))
        return false;
    *authority = s.p + i + 2;
    return true;
}

#define PORT_INVALID 65536u /* matches no origin; the host may still leak */

/* ":digits" (or ":" alone, the default: 0) after the host; else PORT_INVALID. */
static unsigned parse_port(const char *a, const char *ae)
{
    unsigned p = 0;

    if (a == ae)
        return 0;
    if (*a != ':')
        return PORT_INVALID;
    for (const char *d = a + 1; d < ae; d++) {
        if (*d < '0' || *d > '9' || p > 65535)
            return PORT_INVALID;
        p = p * 10 + (unsigned)(*d - '0');
    }
    return p <= 65535 ? p : PORT_INVALID;
}

/* Parse "[scheme:]//[userinfo@]host[:port]rest"; false for anything else. */
static bool parse_abs(dt_str s, abs_url *u)
{
    const char *a, *end = s.p + s.n;

    if (!split_scheme(s, &u->scheme, &a))
        return false;
    const char *ae = a;
    while (ae < end && *ae != '/' && *ae != '?' && *ae != '#')
        ae++;
    u->rest = (dt_str){ae, (size_t)(end - ae)};
    for (const char *at = a; at < ae; at++)
        if (*at == '@')
            a = at + 1; /* userinfo is not part of the origin */
    const char *hs = a, *he;
    if (a < ae && *a == '[') {
        hs = a + 1;
        he = memchr(hs, ']', (size_t)(ae - hs));
        if (he == NULL)
            return false;
        a = he + 1;
        const char *zone = memchr(hs, '%', (size_t)(he - hs));
        he = zone != NULL ? zone : he; /* [fe80::1%25eth0] */
    } else {
        he = memchr(a, ':', (size_t)(ae - a));
        he = he != NULL ? he : ae;
        a = he;
    }
    u->port = parse_port(a, ae);
    if (he > hs && he[-1] == '.')
        he--; /* "example.com." is "example.com" */
    u->host = (dt_str){hs, (size_t)(he - hs)};
    return u->host.n > 0;
}

/* U's port, with a missing one taken from its scheme (or UP's, for "//host"). */
static unsigned port_of(const abs_url *u, bool up_https)
{
    bool https = u->scheme.n == 0 ? up_https : dt_str_ieq(u->scheme, DT_STR_LIT("https"));

    return u->port != 0 ? u->port : (https ? 443 : 80);
}

static bool same_host(const abs_url *u, const dt_upstream *up)
{
    return dt_str_ieq(u->host, (dt_str){up->host, strlen(up->host)});
}

/* Does U name UP's origin: scheme (when given), host and port? */
static bool names_origin(const abs_url *u, const dt_upstream *up)
{
    dt_str scheme = up->https ? DT_STR_LIT("https") : DT_STR_LIT("http");

    return (u->scheme.n == 0 || dt_str_ieq(u->scheme, scheme)) &&
           port_of(u, up->https) == up->port && same_host(u, up);
}

static bool v4_internal(const unsigned char a[4])
{
    return a[0] == 127 || a[0] == 10 || a[0] == 0 || (a[0] == 172 && (a[1] & 0xf0) == 16) ||
           (a[0] == 192 && a[1] == 168) || (a[0] == 169 && a[1] == 254) ||
           (a[0] == 100 && (a[1] & 0xc0) == 64); /* 100.64.0.0/10, carrier-grade NAT */
}

static bool v6_internal(const unsigned char a[16])
{
    static const unsigned char mapped[12] = {[10] = 0xff, [11] = 0xff};
    static const unsigned char zero[16];

    if (memcmp(a, mapped, 12) == 0)
        return v4_internal(a + 12); /* ::ffff:10.0.0.1 */
    if (memcmp(a, zero, 15) == 0)
        return a[15] <= 1; /* :: and ::1 */
    return (a[0] & 0xfe) == 0xfc || (a[0] == 0xfe && (a[1] & 0xc0) == 0x80);
}

/* "localhost", "localhost." and every name under it (RFC 6761 6.3). */
static bool is_localhost(dt_str h)
{
    static const char suffix[] = ".localhost";
    size_t sn = sizeof suffix - 1;

    if (h.n > 0 && h.p[h.n - 1] == '.')
        h.n--;
    return dt_str_ieq(h, DT_STR_LIT("localhost")) ||
           (h.n > sn && dt_str_ieq((dt_str){h.p + h.n - sn, sn}, (dt_str){suffix, sn}));
}

bool dt_host_is_internal(dt_str host)
{
    char buf[64];
    unsigned char a[16];
    struct in_addr v4;

    if (host.n >= 2 && host.p[0] == '[' && host.p[host.n - 1] == ']')
        host = (dt_str){host.p + 1, host.n - 2};
    if (is_localhost(host))
        return true;
    const char *zone = memchr(host.p, '%', host.n);
    if (zone != NULL && memchr(host.p, ':', host.n) != NULL)
        host.n = (size_t)(zone - host.p); /* fe80::1%eth0 */
    if (host.n > 0 && host.p[host.n - 1] == '.')
        host.n--;
    if (host.n == 0 || host.n >= sizeof buf)
        return false;
    memcpy(buf, host.p, host.n);
    buf[host.n] = '\0';
    /* inet_aton, not inet_pton: browsers read "127.1" and "0x7f000001" as
     * IPv4 too, and a leak written that way is still a leak. */
    if (memchr(buf, ':', host.n) == NULL && inet_aton(buf, &v4) == 1)
        return v4_internal((const unsigned char *)&v4.s_addr);
    if (inet_pton(AF_INET6, buf, a) == 1)
        return v6_internal(a);
    return false;
}

/* Write CLIENT_SCHEME://CLIENT_AUTHORITY REST into OUT; false when it does not fit. */
static bool build_location(dt_str scheme, dt_str authority, dt_str rest, char *out, size_t cap,
                           size_t *out_len)
{
    size_t n = scheme.n + 3 + authority.n + rest.n;

    if (n >= cap)
        return false;
    memcpy(out, scheme.p, scheme.n);
    memcpy(out + scheme.n, "://", 3);
    memcpy(out + scheme.n + 3, authority.p, authority.n);
    memcpy(out + scheme.n + 3 + authority.n, rest.p, rest.n);
    out[n] = '\0';
    *out_len = n;
    return true;
}

/*
 * Does U name the host of UP or of any upstream of CFG, or, behind an
 * upstream, an internal address? Without UP (forward and transparent relays
 * to the request's own destination) the client chose the destination itself,
 * internal or not, and a Location naming it tells the client nothing new.
 */
static bool is_leak(const abs_url *u, const dt_upstream *up, const dt_config *cfg)
{
    if (up != NULL && (dt_host_is_internal(u->host) || same_host(u, up)))
        return true;
    for (size_t i = 0; cfg != NULL && i < cfg->nupstreams; i++)
        if (same_host(u, &cfg->upstreams[i]))
            return true;
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
    if (enabled && up != NULL && names_origin(&u, up) && client_authority.n > 0 &&
        build_location(client_scheme, client_authority, u.rest, out, cap, out_len))
        return DT_LOCATION_REWRITTEN;
    return is_leak(&u, up, cfg) ? DT_LOCATION_LEAK : DT_LOCATION_KEPT;
}
