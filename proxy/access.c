/*
 * access.c - forward-mode access control and loop detection.
 */
#include <arpa/inet.h>
#include <netinet/in.h>

#include "detour/access.h"
#include "detour/target.h"

/* The address bytes of SA, with IPv4-mapped IPv6 seen as IPv4. */
static int addr_bytes(const struct sockaddr *sa, const uint8_t **bytes, unsigned *port)
{
    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)sa;
        *bytes = (const uint8_t *)&in->sin_addr;
        *port = ntohs(in->sin_port);
        return AF_INET;
    }
    if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)sa;
        *port = ntohs(in6->sin6_port);
        if (IN6_IS_ADDR_V4MAPPED(&in6->sin6_addr)) {
            *bytes = &in6->sin6_addr.s6_addr[12];
            return AF_INET;
        }
        *bytes = in6->sin6_addr.s6_addr;
        return AF_INET6;
    }
    return -1;
}

static bool prefix_equal(const uint8_t *a, const uint8_t *b, int bits)
{
    int whole = bits / 8, rest = bits % 8;

    if (memcmp(a, b, (size_t)whole) != 0)
        return false;
    if (rest == 0)
        return true;
    uint8_t mask = (uint8_t)(0xff << (8 - rest));
    return (a[whole] & mask) == (b[whole] & mask);
}

bool dt_cidr_contains(const dt_cidr *cidr, const struct sockaddr *sa)
{
    const uint8_t *bytes = NULL;
    unsigned port = 0;
    int family = addr_bytes(sa, &bytes, &port);

    return family == cidr->family && prefix_equal(bytes, cidr->addr, cidr->bits);
}

bool dt_access_client(const dt_forward *fw, const struct sockaddr *sa)
{
    for (size_t i = 0; i < fw->nallow_clients; i++)
        if (dt_cidr_contains(&fw->allow_clients[i], sa))
            return true;
    return false;
}

static bool host_matches(const dt_host_pattern *p, dt_str host)
{
    if (!p->wildcard)
        return dt_str_ieq(host, (dt_str){p->name, p->len});
    /* ".example.com": any subdomain, at any depth. */
    return host.n > p->len &&
           dt_str_ieq((dt_str){host.p + host.n - p->len, p->len}, (dt_str){p->name, p->len});
}

/* An address literal as a sockaddr, for CIDR rules checked by name. */
static bool literal_addr(dt_str host, unsigned port, struct sockaddr_storage *ss)
{
    char buf[64];

    if (host.n >= 2 && host.p[0] == '[' && host.p[host.n - 1] == ']')
        host = (dt_str){host.p + 1, host.n - 2};
    if (host.n == 0 || host.n >= sizeof buf)
        return false;
    memcpy(buf, host.p, host.n);
    buf[host.n] = '\0';
    memset(ss, 0, sizeof *ss);
    struct sockaddr_in *in = (struct sockaddr_in *)ss;
    struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)ss;
    if (inet_pton(AF_INET, buf, &in->sin_addr) == 1) {
        in->sin_family = AF_INET;
        in->sin_port = htons((uint16_t)port);
        return true;
    }
    if (inet_pton(AF_INET6, buf, &in6->sin6_addr) == 1) {
        in6->sin6_family = AF_INET6;
        in6->sin6_port = htons((uint16_t)port);
        return true;
    }
    return false;
}

dt_access dt_access_dest_name(const dt_forward *fw, dt_str host, unsigned port)
{
    struct sockaddr_storage ss;
    bool any_cidr = false;

    if (fw->nallow_destinations == 0)
        return DT_ACCESS_ALLOW;
    if (literal_addr(host, port, &ss))
        return dt_access_dest_addr(fw, (struct sockaddr *)&ss) ? DT_ACCESS_ALLOW : DT_ACCESS_DENY;
    for (size_t i = 0; i < fw->nallow_destinations; i++) {
        const dt_dest_rule *d = &fw->allow_destinations[i];
        if (d->is_cidr) {
            any_cidr = true;
            continue;
        }
        if ((d->port == 0 || d->port == port) && host_matches(&d->host, host))
            return DT_ACCESS_ALLOW;
    }
    return any_cidr ? DT_ACCESS_BY_ADDRESS : DT_ACCESS_DENY;
}

bool dt_access_dest_addr(const dt_forward *fw, const struct sockaddr *sa)
{
    const uint8_t *bytes = NULL;
    unsigned port = 0;

    if (fw->nallow_destinations == 0)
        return true;
    if (addr_bytes(sa, &bytes, &port) < 0)
        return false;
    for (size_t i = 0; i < fw->nallow_destinations; i++) {
        const dt_dest_rule *d = &fw->allow_destinations[i];
        if (d->is_cidr && (d->port == 0 || d->port == port) && dt_cidr_contains(&d->cidr, sa))
            return true;
    }
    return false;
}

static bool is_wildcard(const struct sockaddr *sa)
{
    const uint8_t *bytes = NULL;
    unsigned port = 0;
    static const uint8_t zero[16];
    int family = addr_bytes(sa, &bytes, &port);

    return family >= 0 && memcmp(bytes, zero, family == AF_INET ? 4 : 16) == 0;
}

static bool same_addr(const struct sockaddr *a, const struct sockaddr *b)
{
    const uint8_t *x = NULL, *y = NULL;
    unsigned px = 0, py = 0;
    int fa = addr_bytes(a, &x, &px), fb = addr_bytes(b, &y, &py);

    return fa >= 0 && fa == fb && memcmp(x, y, fa == AF_INET ? 4 : 16) == 0;
}

static bool is_loopback(const struct sockaddr *sa)
{
    const uint8_t *b = NULL;
    unsigned port = 0;
    static const uint8_t loop6[16] = {[15] = 1};
    int family = addr_bytes(sa, &b, &port);

    return (family == AF_INET && b[0] == 127) || (family == AF_INET6 && memcmp(b, loop6, 16) == 0);
}

bool dt_access_is_self(const dt_config *cfg, const struct sockaddr *sa,
                       const struct sockaddr_storage *local, size_t nlocal)
{
    const uint8_t *bytes = NULL;
    unsigned port = 0, lport = 0;

    int family = addr_bytes(sa, &bytes, &port);
    /* connect() to 0.0.0.0 or :: reaches this host's loopback of that family. */
    bool unspecified = is_wildcard(sa);

    if (family < 0)
        return false;
    for (size_t i = 0; i < cfg->nlisten; i++) {
        const struct sockaddr *l = (const struct sockaddr *)&cfg->listen[i].addr;
        const uint8_t *lb = NULL;
        if (addr_bytes(l, &lb, &lport) != family || lport != port)
            continue;
        if (same_addr(l, sa) || (unspecified && is_loopback(l)))
            return true;
        if (!is_wildcard(l))
            continue;
        if (is_loopback(sa))
            return true;
        for (size_t j = 0; j < nlocal; j++)
            if (same_addr((const struct sockaddr *)&local[j], sa))
                return true;
    }
    return false;
}

bool dt_access_connect_port(const dt_forward *fw, unsigned port)
{
    for (size_t i = 0; i < fw->nconnect_ports; i++)
        if (fw->connect_ports[i] == port)
            return true;
    return false;
}
