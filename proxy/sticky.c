/*
 * sticky.c - the deterministic stickiness hash behind `percent` and `ramp`,
 * and the Cookie header lookup used for sticky = "cookie:NAME".
 */
#include "detour/sticky.h"

#define FNV64_OFFSET 0xcbf29ce484222325ull
#define FNV64_PRIME 0x100000001b3ull
#define STICKY_BUCKETS 10000u

static uint64_t fnv1a_bytes(uint64_t h, const char *p, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        h ^= (unsigned char)p[i];
        h *= FNV64_PRIME;
    }
    return h;
}

uint64_t dt_sticky_hash(dt_str route_name, dt_str key)
{
    /* The 0x00 separator keeps ("ab", "c") and ("a", "bc") apart. */
    uint64_t h = fnv1a_bytes(FNV64_OFFSET, route_name.p, route_name.n);
    h = fnv1a_bytes(h, "", 1);
    return fnv1a_bytes(h, key.p, key.n);
}

unsigned dt_sticky_bucket(dt_str route_name, dt_str key)
{
    return (unsigned)(dt_sticky_hash(route_name, key) % STICKY_BUCKETS);
}

bool dt_sticky_selected(dt_str route_name, dt_str key, int percent)
{
    if (percent <= 0)
        return false;
    if (percent >= 100)
        return true;
    return dt_sticky_bucket(route_name, key) < (unsigned)percent * 100u;
}

static bool cookie_space(char c)
{
    return c == ' ' || c == '\t';
}

bool dt_cookie_find(dt_str cookie_header, dt_str name, dt_str *value)
{
    const char *p = cookie_header.p, *end = p + cookie_header.n;
    while (p < end) {
        while (p < end && (cookie_space(*p) || *p == ';'))
            p++;
        const char *pair = p;
        while (p < end && *p != ';')
            p++;
        const char *eq = memchr(pair, '=', (size_t)(p - pair));
        if (!eq)
            continue;
        const char *nend = eq;
        while (nend > pair && cookie_space(nend[-1]))
            nend--;
        /* Cookie names are case-sensitive (RFC 6265 section 5.4). */
        if (!dt_str_eq((dt_str){pair, (size_t)(nend - pair)}, name))
            continue;
        const char *v = eq + 1, *vend = p;
        while (v < vend && cookie_space(*v))
            v++;
        while (vend > v && cookie_space(vend[-1]))
            vend--;
        *value = (dt_str){v, (size_t)(vend - v)};
        return true;
    }
    return false;
}
