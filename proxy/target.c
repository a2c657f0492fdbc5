/*
 * target.c - request-target forms (RFC 9112 section 3.2) and authorities.
 *
 * Nothing is decoded or normalised: detour relays the target byte for byte,
 * so parsing only finds where the parts are.
 */
#include "detour/target.h"

static bool is_alnum(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
}

static bool is_hex(char c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

/* RFC 3986 reg-name bytes: unreserved / sub-delims ('%' handled apart). */
static bool is_regname_char(char c)
{
    /* A table rather than strchr: every request's Host comes through here. */
    static const bool other[128] = {
        ['-'] = true, ['.'] = true, ['_'] = true,  ['~'] = true, ['!'] = true,
        ['$'] = true, ['&'] = true, ['\''] = true, ['('] = true, [')'] = true,
        ['*'] = true, ['+'] = true, [','] = true,  [';'] = true, ['='] = true};
    unsigned char u = (unsigned char)c;
    return is_alnum(c) || (u < 128 && other[u]);
}

/* Inside "[...]": IPv6 hex groups, dots of an embedded IPv4, a zone id. */
static bool is_ipliteral_char(char c)
{
    return is_alnum(c) || c == ':' || c == '.' || c == '%' || c == '-' || c == '_' || c == '~';
}

static bool regname_ok(dt_str h)
{
    for (size_t i = 0; i < h.n; i++) {
        if (h.p[i] == '%') {
            if (i + 2 >= h.n || !is_hex(h.p[i + 1]) || !is_hex(h.p[i + 2]))
                return false;
            i += 2;
        } else if (!is_regname_char(h.p[i])) {
            return false;
        }
    }
    return true;
}

/* H includes its brackets. */
static bool ipliteral_ok(dt_str h)
{
    bool colon = false;
    if (h.n < 4 || h.p[0] != '[' || h.p[h.n - 1] != ']')
        return false;
    for (size_t i = 1; i + 1 < h.n; i++) {
        if (!is_ipliteral_char(h.p[i]))
            return false;
        colon = colon || h.p[i] == ':';
    }
    return colon;
}

/* 1*5DIGIT in 1..65535. */
static int parse_port(dt_str s, unsigned *port)
{
    uint64_t v;

    if (s.n > 5 || !dt_str_to_u64(s, 65535, &v) || v == 0)
        return DT_EINVAL;
    *port = (unsigned)v;
    return DT_OK;
}

/* Where the host ends: after "]" for an IP literal, else at the last ':'. */
static size_t host_end(dt_str a)
{
    if (a.n > 0 && a.p[0] == '[') {
        const char *rb = memchr(a.p, ']', a.n);
        return rb ? (size_t)(rb - a.p) + 1 : a.n;
    }
    const char *colon = memchr(a.p, ':', a.n);
    return colon ? (size_t)(colon - a.p) : a.n;
}

int dt_authority_split(dt_str authority, dt_str *host, unsigned *port)
{
    size_t he = host_end(authority);
    dt_str h = {authority.p, he};
    dt_str rest = {authority.p + he, authority.n - he};
    unsigned pv = 0;

    if (h.n == 0)
        return DT_EINVAL;
    if (h.p[0] == '[' ? !ipliteral_ok(h) : !regname_ok(h))
        return DT_EINVAL;
    if (rest.n > 0) {
        if (rest.p[0] != ':')
            return DT_EINVAL; /* bytes after "]" */
        /* RFC 3986 allows an empty port ("host:"): it means the default. */
        if (rest.n > 1 && parse_port((dt_str){rest.p + 1, rest.n - 1}, &pv) != DT_OK)
            return DT_EINVAL;
    }
    *host = h;
    *port = pv;
    return DT_OK;
}

long dt_host_lower(dt_str host, char *out, size_t cap)
{
    if (out == NULL || host.n >= cap)
        return -1;
    for (size_t i = 0; i < host.n; i++)
        out[i] = dt_ascii_lower(host.p[i]);
    out[host.n] = '\0';
    return (long)host.n;
}

/* No SP, CTL or DEL anywhere: those would end or corrupt a request line. */
static bool target_bytes_ok(dt_str raw)
{
    for (size_t i = 0; i < raw.n; i++) {
        unsigned char c = (unsigned char)raw.p[i];
        if (c <= 0x20 || c == 0x7f)
            return false;
    }
    return true;
}

/* Split "path[?query]" starting at s into path, query and origin_form. */
static void split_path_query(dt_str s, dt_target *out)
{
    const char *q = memchr(s.p, '?', s.n);
    out->origin_form = s;
    if (q == NULL) {
        out->path = s;
        return;
    }
    out->path = (dt_str){s.p, (size_t)(q - s.p)};
    out->has_query = true;
    out->query = (dt_str){q + 1, s.n - out->path.n - 1};
}

static int parse_connect(dt_str raw, dt_target *out)
{
    if (memchr(raw.p, '/', raw.n) || memchr(raw.p, '?', raw.n) || memchr(raw.p, '@', raw.n))
        return DT_EINVAL;
    if (dt_authority_split(raw, &out->host, &out->port) != DT_OK || out->port == 0)
        return DT_EINVAL;
    out->form = DT_TARGET_AUTHORITY;
    out->authority = raw;
    return DT_OK;
}

static int parse_absolute(dt_str raw, dt_target *out)
{
    static const char slash[] = "/";
    const char *sep = memchr(raw.p, ':', raw.n);
    if (sep == NULL || (size_t)(raw.p + raw.n - sep) < 3 || sep[1] != '/' || sep[2] != '/')
        return DT_EINVAL;
    dt_str scheme = {raw.p, (size_t)(sep - raw.p)};
    if (!dt_str_ieq_cstr(scheme.p, scheme.n, "http") &&
        !dt_str_ieq_cstr(scheme.p, scheme.n, "https"))
        return DT_EINVAL;

    const char *a = sep + 3, *end = raw.p + raw.n, *ae = a;
    while (ae < end && *ae != '/' && *ae != '?')
        ae++;
    dt_str authority = {a, (size_t)(ae - a)};
    /* userinfo in an http(s) URI is deprecated and a phishing vector (RFC 9110 4.2.4) */
    if (memchr(authority.p, '@', authority.n))
        return DT_EINVAL;
    if (dt_authority_split(authority, &out->host, &out->port) != DT_OK)
        return DT_EINVAL;

    out->form = DT_TARGET_ABSOLUTE;
    out->scheme = scheme;
    out->authority = authority;
    split_path_query((dt_str){ae, (size_t)(end - ae)}, out);
    if (out->path.n == 0) {
        /* RFC 9112 3.2.1: an empty path is sent as "/". */
        out->path = (dt_str){slash, 1};
        if (out->has_query)
            out->origin_form_slash = true; /* origin_form is "?query" */
        else
            out->origin_form = out->path;
    }
    return DT_OK;
}

int dt_target_parse(dt_str raw, bool is_connect, dt_target *out)
{
    memset(out, 0, sizeof(*out));
    if (raw.p == NULL || raw.n == 0 || !target_bytes_ok(raw))
        return DT_EINVAL;
    if (is_connect)
        return parse_connect(raw, out);
    if (raw.n == 1 && raw.p[0] == '*') {
        out->form = DT_TARGET_ASTERISK;
        out->path = raw;
        out->origin_form = raw;
        return DT_OK;
    }
    if (raw.p[0] == '/') {
        out->form = DT_TARGET_ORIGIN;
        split_path_query(raw, out);
        return DT_OK;
    }
    return parse_absolute(raw, out);
}

long dt_target_origin_form(const dt_target *t, char *out, size_t cap)
{
    size_t pre = t->origin_form_slash ? 1 : 0;
    size_t n = pre + t->origin_form.n;
    if (out == NULL || n >= cap)
        return -1;
    if (pre)
        out[0] = '/';
    if (t->origin_form.n > 0)
        memcpy(out + pre, t->origin_form.p, t->origin_form.n);
    out[n] = '\0';
    return (long)n;
}
