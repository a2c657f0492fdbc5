/*
 * template.c - Location templates: compile once into literal and variable
 * pieces, expand in one pass into a caller buffer.
 *
 * Literal text is stored already URI-safe: a control byte or a space in a
 * literal is a compile error (it cannot be meant), and the other bytes that
 * may not appear in a URI (>= 0x80, " < > \ ^ ` { | }) are percent-encoded
 * once at compile time, so expansion only has to encode substituted values.
 */
#include "detour/template.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

typedef struct piece {
    bool is_var;
    dt_tvar var;   /* when is_var */
    size_t off, n; /* when !is_var: bytes in dt_template.lit */
} piece;

struct dt_template {
    char *src; /* as given */
    char *lit; /* literal bytes of every literal piece, URI-safe */
    piece *pieces;
    size_t npieces;
    uint32_t uses;
};

/* Variable names in dt_tvar order (the groups are handled apart). */
static const char *const var_names[DT_TVAR_GROUP1] = {
    [DT_TVAR_SCHEME] = "scheme",   [DT_TVAR_HOST] = "host",
    [DT_TVAR_URI] = "uri",         [DT_TVAR_ARGS] = "args",
    [DT_TVAR_IS_ARGS] = "is_args", [DT_TVAR_REQUEST_URI] = "request_uri",
    [DT_TVAR_SUFFIX] = "suffix",   [DT_TVAR_TARGET] = "target",
    [DT_TVAR_MAPPED] = "mapped",
};

static const char hex_digits[] = "0123456789ABCDEF";

/* Bytes that may not appear in a URI as they are (RFC 3986 plus the unwise set). */
static bool uri_unsafe(unsigned char c)
{
    if (c <= 0x20 || c >= 0x7f)
        return true;
    switch (c) {
    case '"':
    case '<':
    case '>':
    case '\\':
    case '^':
    case '`':
    case '{':
    case '|':
    case '}':
        return true;
    default:
        return false;
    }
}

static bool ident_char(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_';
}

long dt_uri_encode_into(dt_str src, char *out, size_t cap)
{
    size_t o = 0;
    for (size_t i = 0; i < src.n; i++) {
        unsigned char c = (unsigned char)src.p[i];
        size_t need = uri_unsafe(c) ? 3 : 1;
        if (o + need >= cap)
            return -1;
        if (need == 1) {
            out[o++] = (char)c;
        } else {
            out[o++] = '%';
            out[o++] = hex_digits[c >> 4];
            out[o++] = hex_digits[c & 15];
        }
    }
    if (o >= cap)
        return -1;
    out[o] = '\0';
    return (long)o;
}

/* Growing arrays used only while compiling. */
typedef struct builder {
    dt_template *t;
    size_t lit_len, lit_cap;
    size_t pieces_cap;
    char *err;
    size_t errlen;
} builder;

static bool fail(builder *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static bool fail(builder *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(b->err, b->errlen, fmt, ap);
    va_end(ap);
    return false;
}

static bool push_piece(builder *b, piece p)
{
    dt_template *t = b->t;
    if (t->npieces == b->pieces_cap) {
        size_t ncap = b->pieces_cap ? b->pieces_cap * 2 : 8;
        piece *np = realloc(t->pieces, ncap * sizeof(*np));
        if (!np)
            return fail(b, "out of memory");
        t->pieces = np;
        b->pieces_cap = ncap;
    }
    t->pieces[t->npieces++] = p;
    return true;
}

/* Append one literal byte (encoded when needed), extending the last literal piece. */
static bool push_lit(builder *b, unsigned char c)
{
    dt_template *t = b->t;
    if (b->lit_len + 4 > b->lit_cap) {
        size_t ncap = b->lit_cap ? b->lit_cap * 2 : 64;
        char *nl = realloc(t->lit, ncap);
        if (!nl)
            return fail(b, "out of memory");
        t->lit = nl;
        b->lit_cap = ncap;
    }
    if (t->npieces == 0 || t->pieces[t->npieces - 1].is_var)
        if (!push_piece(b, (piece){.is_var = false, .off = b->lit_len}))
            return false;
    long n = dt_uri_encode_into((dt_str){(const char *)&c, 1}, t->lit + b->lit_len, 4);
    b->lit_len += (size_t)n;
    t->pieces[t->npieces - 1].n += (size_t)n;
    return true;
}

static bool push_var(builder *b, dt_tvar v)
{
    b->t->uses |= 1u << v;
    return push_piece(b, (piece){.is_var = true, .var = v});
}

/* The variable called NAME (N bytes), or -1. */
static int lookup_var(const char *name, size_t n)
{
    if (n == 1 && name[0] >= '1' && name[0] <= '9')
        return DT_TVAR_GROUP1 + (name[0] - '1');
    for (int v = 0; v < DT_TVAR_GROUP1; v++)
        if (strlen(var_names[v]) == n && memcmp(var_names[v], name, n) == 0)
            return v;
    return -1;
}

/* Length of the variable name at S: "{name}", one digit, or the longest identifier. */
static size_t var_name_span(const char *s, const char **name, size_t *n)
{
    if (s[0] == '{') {
        const char *end = strchr(s, '}');
        if (!end)
            return 0;
        *name = s + 1;
        *n = (size_t)(end - *name);
        return *n + 2;
    }
    *name = s;
    if (s[0] >= '0' && s[0] <= '9')
        return *n = 1; /* $1..$9 take one digit: "$12" is $1 then "2" */
    for (*n = 0; ident_char(s[*n]); (*n)++)
        ;
    return *n;
}

/*
 * Parse the variable reference after a '$' (S points past it). Returns the
 * number of bytes consumed after the '$', or 0 on error.
 */
static size_t parse_var(builder *b, const char *s)
{
    const char *name;
    size_t n;
    size_t used = var_name_span(s, &name, &n);
    if (used == 0) {
        if (s[0] == '{')
            fail(b, "unterminated \"${%s\"", s + 1);
        else
            fail(b, "'$' must start a variable name (write $$ for a literal '$')");
        return 0;
    }
    int v = lookup_var(name, n);
    if (v < 0) {
        fail(b, "unknown variable \"$%.*s\"", (int)n, name);
        return 0;
    }
    return push_var(b, (dt_tvar)v) ? used : 0;
}

static bool compile_into(builder *b, const char *src)
{
    for (size_t i = 0; src[i] != '\0';) {
        unsigned char c = (unsigned char)src[i];
        if (c == '$' && src[i + 1] == '$') {
            if (!push_lit(b, '$'))
                return false;
            i += 2;
        } else if (c == '$') {
            size_t used = parse_var(b, src + i + 1);
            if (used == 0)
                return false;
            i += 1 + used;
        } else if (c < 0x20 || c == 0x7f || c == ' ') {
            return fail(b, "a control byte or a space in a Location template");
        } else {
            if (!push_lit(b, c))
                return false;
            i++;
        }
    }
    return true;
}

dt_template *dt_template_compile(const char *src, char *err, size_t errlen)
{
    char dummy[1];
    if (!err || errlen == 0) {
        err = dummy;
        errlen = sizeof(dummy);
    }
    err[0] = '\0';
    dt_template *t = calloc(1, sizeof(*t));
    if (!t || !(t->src = strdup(src))) {
        snprintf(err, errlen, "out of memory");
        free(t);
        return NULL;
    }
    builder b = {.t = t, .err = err, .errlen = errlen};
    if (!compile_into(&b, src)) {
        dt_template_free(t);
        return NULL;
    }
    return t;
}

void dt_template_free(dt_template *t)
{
    if (!t)
        return;
    free(t->src);
    free(t->lit);
    free(t->pieces);
    free(t);
}

uint32_t dt_template_uses(const dt_template *t)
{
    return t->uses;
}

const char *dt_template_source(const dt_template *t)
{
    return t->src;
}

bool dt_template_is_relative(const dt_template *t)
{
    return t->src[0] == '/';
}

/* Append the value of V (derived variables computed when the caller left them unset). */
static long expand_var(dt_tvar v, const dt_template_vars *vars, char *out, size_t cap)
{
    const dt_str *val = &vars->v[v];
    if (val->p)
        return dt_uri_encode_into(*val, out, cap);
    if (v == DT_TVAR_IS_ARGS)
        return dt_uri_encode_into(vars->v[DT_TVAR_ARGS].n ? DT_STR_LIT("?") : DT_STR_LIT(""), out,
                                  cap);
    if (v == DT_TVAR_REQUEST_URI) {
        long a = expand_var(DT_TVAR_URI, vars, out, cap);
        long b = a < 0 ? -1 : expand_var(DT_TVAR_IS_ARGS, vars, out + a, cap - (size_t)a);
        long c = b < 0 ? -1 : expand_var(DT_TVAR_ARGS, vars, out + a + b, cap - (size_t)(a + b));
        return c < 0 ? -1 : a + b + c;
    }
    return dt_uri_encode_into(DT_STR_LIT(""), out, cap);
}

/* Values that come from the request (not from the operator's config or map). */
static bool var_from_request(dt_tvar v)
{
    return v != DT_TVAR_TARGET && v != DT_TVAR_MAPPED;
}

/*
 * "//host/..." is a protocol-relative URL. A Location that starts with it
 * because of a value from the request (e.g. "/$1" or "$uri" and a request
 * for "//evil.example") would send the client to a site of the requester's
 * choice. The second slash is encoded then; when the config itself wrote
 * both slashes (literal, $target, $mapped) the Location is left alone.
 */
static long guard_protocol_relative(char *out, size_t len, size_t cap, size_t trusted)
{
    if (len < 2 || out[0] != '/' || out[1] != '/' || trusted >= 2)
        return (long)len;
    if (len + 2 >= cap)
        return -1;
    memmove(out + 4, out + 2, len - 2 + 1);
    memcpy(out + 1, "%2F", 3);
    return (long)len + 2;
}

long dt_template_expand(const dt_template *t, const dt_template_vars *vars, char *out, size_t cap)
{
    size_t o = 0;
    size_t trusted = SIZE_MAX; /* output bytes written before the first request value */
    if (cap == 0)
        return -1;
    out[0] = '\0';
    for (size_t i = 0; i < t->npieces; i++) {
        const piece *p = &t->pieces[i];
        if (p->is_var) {
            if (trusted == SIZE_MAX && var_from_request(p->var))
                trusted = o;
            long n = expand_var(p->var, vars, out + o, cap - o);
            if (n < 0)
                return -1;
            o += (size_t)n;
        } else {
            if (o + p->n >= cap)
                return -1;
            memcpy(out + o, t->lit + p->off, p->n);
            o += p->n;
            out[o] = '\0';
        }
    }
    return guard_protocol_relative(out, o, cap, trusted);
}
