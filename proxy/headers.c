/*
 * headers.c - header syntax checks, the hop-by-hop filter and request
 * hygiene. Pure functions over byte strings; no allocation, no I/O.
 *
 * libmicrohttpd 0.9.75 lets through several request-smuggling shapes (see
 * DESIGN.md); everything refused here is refused before any upstream work.
 */
#include <inttypes.h>

#include "detour/headers.h"

/* RFC 9110 5.6.2: tchar = "!#$%&'*+-.^_`|~" / DIGIT / ALPHA */
static bool is_tchar(unsigned char c)
{
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9'))
        return true;
    return c != 0 && strchr("!#$%&'*+-.^_`|~", c) != NULL;
}

static bool is_ows(char c)
{
    return c == ' ' || c == '\t';
}

/* S without leading and trailing SP/HT. */
static dt_str trim_ows(dt_str s)
{
    while (s.n > 0 && is_ows(s.p[0])) {
        s.p++;
        s.n--;
    }
    while (s.n > 0 && is_ows(s.p[s.n - 1]))
        s.n--;
    return s;
}

bool dt_is_token(dt_str s)
{
    if (s.n == 0 || s.p == NULL)
        return false;
    for (size_t i = 0; i < s.n; i++)
        if (!is_tchar((unsigned char)s.p[i]))
            return false;
    return true;
}

bool dt_header_value_ok(dt_str v)
{
    for (size_t i = 0; i < v.n; i++) {
        unsigned char c = (unsigned char)v.p[i];
        /* obs-text (0x80-0xff) stays allowed: legacy apps send Latin-1 values. */
        if ((c < 0x20 && c != '\t') || c == 0x7f)
            return false;
    }
    return true;
}

static const char *const hop_by_hop[] = {
    "Connection", "Keep-Alive", "Proxy-Connection", "TE", "Trailer", "Transfer-Encoding", "Upgrade",
};

bool dt_header_is_hop_by_hop(dt_str name)
{
    for (size_t i = 0; i < DT_ARRAY_LEN(hop_by_hop); i++)
        if (dt_str_ieq_cstr(name.p, name.n, hop_by_hop[i]))
            return true;
    return false;
}

static void conn_token_push(dt_conn_tokens *t, dt_str tok)
{
    if (tok.n == 0)
        return; /* "a,,b" and a trailing comma carry no token */
    if (t->n == DT_CONN_TOKENS_MAX) {
        t->overflow = true;
        return;
    }
    t->tok[t->n++] = tok;
}

void dt_conn_tokens_add(dt_conn_tokens *t, dt_str value)
{
    size_t start = 0;
    for (size_t i = 0; i <= value.n; i++) {
        if (i < value.n && value.p[i] != ',')
            continue;
        conn_token_push(t, trim_ows((dt_str){value.p + start, i - start}));
        start = i + 1;
    }
}

bool dt_conn_tokens_has(const dt_conn_tokens *t, dt_str name)
{
    if (t == NULL)
        return false;
    for (size_t i = 0; i < t->n; i++)
        if (dt_str_ieq(t->tok[i], name))
            return true;
    return false;
}

bool dt_header_drop(dt_str name, const dt_conn_tokens *t)
{
    return dt_header_is_hop_by_hop(name) || dt_conn_tokens_has(t, name);
}

void dt_hygiene_init(dt_hygiene *h)
{
    memset(h, 0, sizeof(*h));
}

static void refuse(dt_hygiene *h, int status, const char *reason)
{
    if (h->status != 0)
        return; /* the first problem wins */
    h->status = status;
    h->reason = reason;
}

/*
 * 1*DIGIT into *out. Returns false for an empty string, any other byte
 * (so list values like "5, 5" fail) or a value over UINT64_MAX.
 */
static bool parse_u64(dt_str s, uint64_t *out)
{
    uint64_t v = 0;
    if (s.n == 0)
        return false;
    for (size_t i = 0; i < s.n; i++) {
        unsigned d = (unsigned char)s.p[i] - '0';
        if (d > 9)
            return false;
        if (v > (UINT64_MAX - d) / 10)
            return false;
        v = v * 10 + d;
    }
    *out = v;
    return true;
}

static void add_content_length(dt_hygiene *h, dt_str value)
{
    uint64_t v;
    if (++h->n_content_length > 1) {
        refuse(h, 400, "several Content-Length headers");
        return;
    }
    if (!parse_u64(trim_ows(value), &v)) {
        refuse(h, 400, "malformed Content-Length");
        return;
    }
    h->content_length = v;
}

static void add_transfer_encoding(dt_hygiene *h, dt_str value)
{
    dt_str v = trim_ows(value);
    /* A second Transfer-Encoding header makes the combined list longer than
     * "chunked", which is the only coding relayed. */
    if (h->has_te) {
        h->chunked = false;
        refuse(h, 501, "unsupported transfer coding");
        return;
    }
    h->has_te = true;
    if (v.n == 0) {
        refuse(h, 400, "empty Transfer-Encoding");
        return;
    }
    if (!dt_str_ieq_cstr(v.p, v.n, "chunked")) {
        refuse(h, 501, "unsupported transfer coding");
        return;
    }
    h->chunked = true;
}

/* Max-Forwards = 1*DIGIT; huge values saturate, anything else is -1. */
static void add_max_forwards(dt_hygiene *h, dt_str value)
{
    uint64_t v;
    dt_str s = trim_ows(value);
    bool digits = s.n > 0;
    for (size_t i = 0; i < s.n; i++)
        digits = digits && s.p[i] >= '0' && s.p[i] <= '9';
    if (h->max_forwards_seen || !digits)
        h->max_forwards = -1; /* a second header is as ambiguous as garbage */
    else if (!parse_u64(s, &v) || v > INT64_MAX)
        h->max_forwards = INT64_MAX;
    else
        h->max_forwards = (int64_t)v;
    h->max_forwards_seen = true;
}

static void add_known(dt_hygiene *h, dt_str name, dt_str value)
{
    if (dt_str_ieq_cstr(name.p, name.n, "Content-Length")) {
        add_content_length(h, value);
    } else if (dt_str_ieq_cstr(name.p, name.n, "Transfer-Encoding")) {
        add_transfer_encoding(h, value);
    } else if (dt_str_ieq_cstr(name.p, name.n, "Host")) {
        if (++h->n_host > 1)
            refuse(h, 400, "several Host headers");
    } else if (dt_str_ieq_cstr(name.p, name.n, "Connection")) {
        dt_conn_tokens_add(&h->conn, value);
        if (h->conn.overflow)
            refuse(h, 400, "too many Connection tokens");
    } else if (dt_str_ieq_cstr(name.p, name.n, "Via")) {
        h->via_seen = true;
    } else if (dt_str_ieq_cstr(name.p, name.n, "Max-Forwards")) {
        add_max_forwards(h, value);
    } else if (dt_str_ieq_cstr(name.p, name.n, "Expect")) {
        dt_str v = trim_ows(value);
        if (dt_str_ieq_cstr(v.p, v.n, "100-continue"))
            h->expect_continue = true;
    }
}

void dt_hygiene_add(dt_hygiene *h, dt_str name, dt_str value)
{
    if (h->status != 0)
        return;
    if (!dt_is_token(name)) {
        refuse(h, 400, "malformed header name");
        return;
    }
    if (!dt_header_value_ok(value)) {
        refuse(h, 400, "forbidden byte in header value");
        return;
    }
    add_known(h, name, value);
}

int dt_hygiene_finish(dt_hygiene *h)
{
    /* Checked at the end so that the order of the two headers does not matter. */
    if (h->n_content_length > 0 && h->has_te)
        refuse(h, 400, "Content-Length with Transfer-Encoding");
    return h->status;
}

bool dt_header_layout_ok(const char *name, size_t name_len, const char *value)
{
    if (name == NULL || value == NULL)
        return false;
    /* Integers, not pointers: after an obs-fold the name may live in another
     * pool block, and comparing unrelated pointers is undefined. */
    uintptr_t end = (uintptr_t)name + name_len;
    uintptr_t v = (uintptr_t)value;
    if (v <= end || v - end > 64)
        return false;
    /* Only now are the bytes in between known to be inside one buffer. */
    if (name[name_len] != '\0')
        return false;
    for (const char *p = name + name_len + 1; p < value; p++)
        if (!is_ows(*p))
            return false;
    return true;
}

bool dt_header_value_end_ok(const char *value, size_t value_len, const char *next_name)
{
    if (value == NULL || value[value_len] != '\0')
        return false;
    if (next_name == NULL)
        return value[value_len + 1] == '\0';
    uintptr_t end = (uintptr_t)value + value_len;
    uintptr_t next = (uintptr_t)next_name;
    if (next == end + 1)
        return true; /* bare LF */
    return next == end + 2 && value[value_len + 1] == '\0';
}

/* Skip a comment starting at s[i] == '(' (nested, with quoted-pairs). */
static size_t skip_comment(dt_str s, size_t i)
{
    int depth = 0;
    for (; i < s.n; i++) {
        if (s.p[i] == '\\') {
            i++;
        } else if (s.p[i] == '(') {
            depth++;
        } else if (s.p[i] == ')' && --depth == 0) {
            return i + 1;
        }
    }
    return s.n;
}

static size_t skip_ows(dt_str s, size_t i)
{
    while (i < s.n && is_ows(s.p[i]))
        i++;
    return i;
}

/* A word of one Via element: up to OWS, ',' or '('. */
static size_t word_end(dt_str s, size_t i)
{
    while (i < s.n && !is_ows(s.p[i]) && s.p[i] != ',' && s.p[i] != '(')
        i++;
    return i;
}

/* From i, skip the rest of one element up to and including its ','. */
static size_t next_element(dt_str s, size_t i)
{
    while (i < s.n && s.p[i] != ',')
        i = s.p[i] == '(' ? skip_comment(s, i) : i + 1;
    return i < s.n ? i + 1 : s.n;
}

/* Via = #( received-protocol RWS received-by [ RWS comment ] ) */
bool dt_via_names(dt_str value, dt_str name)
{
    size_t i = 0;
    if (name.n == 0)
        return false;
    while (i < value.n) {
        size_t p0 = skip_ows(value, i);
        size_t p1 = word_end(value, p0);
        size_t b0 = skip_ows(value, p1);
        size_t b1 = word_end(value, b0);
        if (p1 > p0 && b0 > p1 && dt_str_ieq((dt_str){value.p + b0, b1 - b0}, name))
            return true;
        i = next_element(value, b1); /* always past b1, or the end */
    }
    return false;
}
