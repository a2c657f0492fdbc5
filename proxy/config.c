/*
 * config.c - load a libconfig file into an immutable dt_config snapshot.
 *
 * Keys (contract section 2; "ext" marks an extension), with their defaults:
 *
 *   listen       "127.0.0.1:8080"   a string or a list. Items: "IPv4:port",
 *                                   "[IPv6]:port", "*:port" (= 0.0.0.0:port), or
 *                                   (ext) a group { address = "..."; tls = {
 *                                   cert = "FILE"; key = "FILE"; }; }.
 *                                   Port 1..65535; no address twice.
 *   mode         "reverse"          reverse | forward | transparent
 *   admin        none               an address as for listen (string only); it
 *                                   must not collide with a listen address
 *                                   (same port and same or wildcard address).
 *   access_log   "-"                "-" stdout, a path, or "off"
 *   log_format   "combined"         combined | json
 *   workers      0                  0..256; 0 = number of online CPUs
 *   timeouts     { connect_ms 5000; upstream_ms 60000; header_ms 10000;
 *                  idle_ms 60000; drain_ms 10000; }   each 1..86400000
 *   limits       { max_connections 10000 (1..1000000);
 *                  max_body_bytes 1073741824 (>= 0; write values over 2^31-1
 *                  plainly or with libconfig's L suffix, both work);
 *                  max_header_bytes 16384 (ext; 1024..1048576) }
 *   rewrite_302  false              default for relay routes
 *   rewrite_301  false              default for relay routes
 *   via_name     "detour"           an HTTP token, 1..64 bytes
 *   upstreams    { NAME = { url = "http[s]://host[:port][/]";   required
 *                           tls_verify = true; ca_file = "FILE"; }; ... }
 *                host: a name, an IPv4 address or [IPv6]; no user info, no
 *                path other than "/", no query.
 *   routes       ( { name; match; redirect | relay; }, ... )
 *     name       "route-N" (1-based position); unique; letters, digits and
 *                . _ - : / @ + (it appears in logs and metric labels), 1..128
 *     match      { host = "a.example" | "*.example" | [..];  stored lower case
 *                  prefix = "/..."; path = "/..."; regex = "ERE";
 *                  methods = ["GET", ..]; }   all optional; absent = any
 *     redirect   { to (template; default "$mapped" when map is given);
 *                  status 307 (301|302|303|307|308); percent 100 (0..100);
 *                  ramp = ( { at = "YYYY-MM-DDTHH:MM:SSZ"; percent = N; }, ..)
 *                  (strictly increasing at; excludes percent);
 *                  sticky "client_ip" | "header:NAME" | "cookie:NAME";
 *                  window = { from = TIME; until = TIME; } (either optional);
 *                  when_file = "FILE"; targets = ["..", ..] (non-empty);
 *                  retry_after (seconds >= 0); dry_run false; map = "FILE"; }
 *     relay      { upstream (required in reverse mode; else absent = the
 *                  request's own destination); rewrite_302, rewrite_301
 *                  (default: the global values); rewrite_location true; }
 *   forward      { allow_clients ["127.0.0.0/8", "::1/128"] (CIDRs; a bare
 *                  address is /32 or /128; the default applies whenever the
 *                  key is absent, block or not; an empty list is an error);
 *                  allow_destinations [] = any (host, "*.suffix" or CIDR,
 *                  each with an optional ":port"; IPv6 as "[2001:db8::/32]:443"
 *                  or bare "2001:db8::/32");
 *                  connect_ports [443] (1..65535; [] = no CONNECT at all) }
 *   expect       ( "METHOD URL -> ...", ... )   golden cases, see check.h
 *
 * Relative file names (map, when_file, ca_file, tls cert/key, access_log and
 * @include) are resolved against the directory of the config file, so a
 * config and its maps can move together. detour never changes directory.
 * tls cert/key and ca_file must be readable at load; when_file need not exist.
 *
 * Every error is "FILE:LINE: message", FILE being the file that holds the
 * setting (an @include'd file has its own name). libconfig 1.5 gives a list's
 * string element the line of the token after it, and silently wraps integers
 * that do not fit in 32 bits, so both are read again from the file text by a
 * small scanner that knows libconfig's lexical rules (comments, strings and
 * brackets); when the scanner cannot place a value libconfig's answer stands.
 *
 * Loading is a fixed pipeline: apply every top-level key through a table of
 * handlers (routes are only remembered), parse the routes once the upstreams
 * and the mode are known, merge defaults and route-over-global inheritance in
 * merge_defaults(), run the checks that span keys in validate(), then attach
 * metrics cells and build the match index.
 */
#include "detour/config.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <libconfig.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "detour/flag.h"
#include "detour/map.h"
#include "detour/metrics.h"
#include "detour/rules.h"
#include "detour/template.h"

#define UNSET (-1)
#define DEFAULT_LISTEN "127.0.0.1:8080"
#define MAX_WORKERS 256
#define MAX_TIMEOUT_MS 86400000
#define MAX_NAME_LEN 128
#define MAX_VIA_LEN 64
#define MAX_SOURCES 32 /* the config file and the files it @includes */

/* ------------------------------------------------------------------------ */
/* The file text, for the lines and numbers libconfig gets wrong.            */

typedef struct source {
    char *file;  /* the name libconfig records in its settings */
    char *shown; /* the path it was read from, for messages */
    char *text;  /* NUL-terminated; NULL when the file could not be read */
    size_t len;
    size_t *lines; /* offset where each line starts; lines[0] == 0 */
    size_t nlines;
} source;

static bool name_char(char c)
{
    return isalnum((unsigned char)c) || c == '_' || c == '-' || c == '*';
}

/* Skip blanks and the three comment styles (# // and slash-star). */
static size_t skip_space(const source *src, size_t p)
{
    const char *t = src->text;
    while (p < src->len) {
        if (isspace((unsigned char)t[p])) {
            p++;
        } else if (t[p] == '#' || (t[p] == '/' && t[p + 1] == '/')) {
            while (p < src->len && t[p] != '\n')
                p++;
        } else if (t[p] == '/' && t[p + 1] == '*') {
            const char *e = strstr(t + p + 2, "*/");
            p = e ? (size_t)(e - t) + 2 : src->len;
        } else {
            break;
        }
    }
    return p;
}

/* P is at a '"': the offset after the closing quote. */
static size_t skip_string(const source *src, size_t p)
{
    for (p++; p < src->len && src->text[p] != '"'; p++)
        if (src->text[p] == '\\' && p + 1 < src->len)
            p++;
    return p < src->len ? p + 1 : p;
}

/* P is at an opening bracket: the offset after its partner. */
static size_t skip_aggregate(const source *src, size_t p)
{
    int depth = 0;
    while (p < src->len) {
        char c = src->text[p];
        size_t q = skip_space(src, p);
        if (q != p) {
            p = q;
        } else if (c == '"') {
            p = skip_string(src, p);
        } else {
            depth += (c == '{' || c == '(' || c == '[') - (c == '}' || c == ')' || c == ']');
            p++;
            if (depth == 0)
                break;
        }
    }
    return p;
}

/* Skip one value: adjacent strings (libconfig joins them), an aggregate, or a scalar. */
static size_t skip_value(const source *src, size_t p)
{
    char c = src->text[p];
    if (c == '"') {
        p = skip_string(src, p);
        for (size_t q = skip_space(src, p); q < src->len && src->text[q] == '"';
             q = skip_space(src, p))
            p = skip_string(src, q);
        return p;
    }
    if (c == '{' || c == '(' || c == '[')
        return skip_aggregate(src, p);
    while (p < src->len && !isspace((unsigned char)src->text[p]) &&
           !strchr(",;)]}#/", src->text[p]))
        p++;
    return p;
}

/*
 * The offset of the value of setting NAME written on LINE (1-based), or -1.
 * WANT, when not 0, is the character the value must start with; it tells
 * apart two settings of the same name on one line.
 */
static long find_named_value(const source *src, unsigned line, const char *name, char want)
{
    if (line == 0 || line > src->nlines)
        return -1;
    size_t p = src->lines[line - 1];
    size_t eol = line < src->nlines ? src->lines[line] : src->len;
    size_t nlen = strlen(name);
    while (p < eol) {
        char c = src->text[p];
        if (c == '"') {
            p = skip_string(src, p);
        } else if (name_char(c)) {
            size_t start = p;
            while (p < src->len && name_char(src->text[p]))
                p++;
            if (p - start != nlen || strncmp(src->text + start, name, nlen) != 0)
                continue;
            size_t q = skip_space(src, p);
            if (q >= src->len || (src->text[q] != '=' && src->text[q] != ':'))
                continue;
            q = skip_space(src, q + 1);
            if (q < src->len && (!want || src->text[q] == want))
                return (long)q;
        } else {
            size_t q = skip_space(src, p);
            p = q > p ? q : p + 1;
        }
    }
    return -1;
}

/* Offsets of the first N elements of the list or array opening at OPEN. */
static bool list_offsets(const source *src, size_t open, size_t *offs, size_t n)
{
    size_t p = open + 1;
    for (size_t i = 0; i < n; i++) {
        p = skip_space(src, p);
        if (p >= src->len || src->text[p] == ')' || src->text[p] == ']')
            return false;
        offs[i] = p;
        p = skip_space(src, skip_value(src, p));
        if (p < src->len && src->text[p] == ',')
            p++;
    }
    return true;
}

static unsigned line_of(const source *src, size_t off)
{
    size_t lo = 0, hi = src->nlines; /* lines[lo] <= off < lines[hi] */
    while (hi - lo > 1) {
        size_t mid = lo + (hi - lo) / 2;
        if (src->lines[mid] <= off)
            lo = mid;
        else
            hi = mid;
    }
    return (unsigned)lo + 1;
}

static void source_free(source *src)
{
    free(src->file);
    free(src->shown);
    free(src->text);
    free(src->lines);
}

/* Read PATH into SRC->text (NUL-terminated); false with errno set on failure. */
static bool source_read(source *src, const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return false;
    size_t cap = 0;
    bool ok = true;
    for (;;) {
        if (src->len + 1 >= cap) {
            size_t ncap = cap ? cap * 2 : 8192;
            char *t = realloc(src->text, ncap);
            if (!t) {
                ok = false;
                errno = ENOMEM;
                break;
            }
            src->text = t;
            cap = ncap;
        }
        size_t got = fread(src->text + src->len, 1, cap - src->len - 1, f);
        src->len += got;
        if (got == 0)
            break;
    }
    if (ok && ferror(f)) {
        ok = false;
        errno = EIO;
    }
    fclose(f);
    if (ok)
        src->text[src->len] = '\0';
    return ok;
}

/* Index the line starts of SRC. */
static bool source_index(source *src)
{
    size_t n = 1;
    for (size_t i = 0; i < src->len; i++)
        n += src->text[i] == '\n';
    src->lines = malloc(n * sizeof(*src->lines));
    if (!src->lines)
        return false;
    src->lines[0] = 0;
    src->nlines = 1;
    for (size_t i = 0; i < src->len; i++)
        if (src->text[i] == '\n')
            src->lines[src->nlines++] = i + 1;
    return true;
}

/* ------------------------------------------------------------------------ */
/* The loader: everything a load needs besides the snapshot it builds.        */

/* Per-route facts the cross-key checks need; not part of the snapshot. */
typedef struct route_src {
    const config_setting_t *group;
    const config_setting_t *name, *redirect, *relay;
    const config_setting_t *to, *percent, *ramp, *until;
    int rewrite_302, rewrite_301, rewrite_location; /* UNSET until merged */
} route_src;

typedef struct loader {
    config_t lc;
    dt_config *cfg;
    const char *path;
    char *dir; /* directory of the config file, NULL when it is the cwd */
    char *err;
    size_t errlen;
    source src[MAX_SOURCES];
    size_t nsrc;
    const config_setting_t *routes; /* remembered until upstreams and mode are known */
    const config_setting_t *admin;  /* for the listen/admin collision check */
    route_src *rsrc;                /* one per route */
    int rewrite_302, rewrite_301, workers, log_format; /* UNSET until merged */
    dt_mode mode;
    bool mode_set;
    bool access_log_set; /* "off" leaves access_log NULL, so NULL alone cannot say "not given" */
} loader;

/* Join the config directory and a relative NAME; absolute names are copied. */
static char *resolve_path(const loader *ld, const char *name)
{
    if (name[0] == '/' || !ld->dir)
        return strdup(name);
    size_t dl = strlen(ld->dir), nl = strlen(name);
    char *p = malloc(dl + nl + 2);
    if (!p)
        return NULL;
    memcpy(p, ld->dir, dl);
    size_t at = dl;
    if (at == 0 || p[at - 1] != '/')
        p[at++] = '/';
    memcpy(p + at, name, nl + 1);
    return p;
}

/*
 * The cache entry for file F as libconfig names it (index 0, also for NULL,
 * is the config file itself), read on first use. NULL only on ENOMEM or a
 * full cache; an entry whose text is NULL could not be read and is not
 * tried again.
 */
static source *source_entry_named(loader *ld, const char *f)
{
    if (!f || strcmp(f, ld->path) == 0)
        return &ld->src[0];
    for (size_t i = 1; i < ld->nsrc; i++)
        if (strcmp(ld->src[i].file, f) == 0)
            return &ld->src[i];
    if (ld->nsrc == MAX_SOURCES)
        return NULL;
    source *src = &ld->src[ld->nsrc];
    src->file = strdup(f);
    src->shown = resolve_path(ld, f); /* where libconfig found it: the include dir */
    if (!src->file || !src->shown) {
        source_free(src);
        memset(src, 0, sizeof(*src));
        return NULL;
    }
    if (!source_read(src, src->shown) || !source_index(src)) {
        free(src->text);
        src->text = NULL;
    }
    ld->nsrc++;
    return src;
}

static source *source_entry(loader *ld, const config_setting_t *s)
{
    return source_entry_named(ld, s ? config_setting_source_file(s) : NULL);
}

/* The scanned text holding S, or NULL when it is not available. */
static const source *source_for(loader *ld, const config_setting_t *s)
{
    const source *src = source_entry(ld, s);
    return src && src->text ? src : NULL;
}

/* The file a setting came from, as the operator should see it. */
static const char *setting_file(loader *ld, const config_setting_t *s)
{
    const source *src = source_entry(ld, s);
    if (src && src->shown)
        return src->shown;
    const char *f = s ? config_setting_source_file(s) : NULL;
    return f ? f : ld->path;
}

static char opening_char(const config_setting_t *s)
{
    switch (config_setting_type(s)) {
    case CONFIG_TYPE_GROUP:
        return '{';
    case CONFIG_TYPE_LIST:
        return '(';
    case CONFIG_TYPE_ARRAY:
        return '[';
    case CONFIG_TYPE_STRING:
        return '"';
    default:
        return 0;
    }
}

/* Where the value of S starts in its file, or -1 when the scanner cannot tell. */
static long value_offset(loader *ld, const config_setting_t *s)
{
    const source *src = source_for(ld, s);
    const config_setting_t *parent = config_setting_parent(s);
    if (!src || !parent)
        return -1;
    if (config_setting_name(s))
        return find_named_value(src, config_setting_source_line(s), config_setting_name(s),
                                opening_char(s));
    long open = value_offset(ld, parent);
    int idx = config_setting_index(s);
    if (open < 0 || idx < 0 || src->text[open] != opening_char(parent))
        return -1;
    size_t *offs = malloc(((size_t)idx + 1) * sizeof(*offs));
    long at = offs && list_offsets(src, (size_t)open, offs, (size_t)idx + 1) ? (long)offs[idx] : -1;
    free(offs);
    return at;
}

/*
 * The line of S. Only a scalar element of a list can be misplaced by
 * libconfig (strings are joined with a following string, so it reads ahead);
 * everything else keeps libconfig's line.
 */
static int setting_line(loader *ld, const config_setting_t *s)
{
    if (!s)
        return 0;
    if (!config_setting_name(s) && !config_setting_is_aggregate(s) && config_setting_parent(s)) {
        long off = value_offset(ld, s);
        if (off >= 0)
            return (int)line_of(source_for(ld, s), (size_t)off);
    }
    return (int)config_setting_source_line(s);
}

/* Write "FILE:LINE: message" for setting S (NULL: the file itself). Returns DT_ECONFIG. */
__attribute__((format(printf, 3, 4))) static int fail(loader *ld, const config_setting_t *s,
                                                      const char *fmt, ...)
{
    if (!ld->err || ld->errlen == 0)
        return DT_ECONFIG;
    int n = snprintf(ld->err, ld->errlen, "%s:%d: ", setting_file(ld, s), setting_line(ld, s));
    if (n >= 0 && (size_t)n < ld->errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(ld->err + n, ld->errlen - (size_t)n, fmt, ap);
        va_end(ap);
    }
    return DT_ECONFIG;
}

static int fail_nomem(loader *ld)
{
    if (ld->err && ld->errlen)
        snprintf(ld->err, ld->errlen, "%s: out of memory", ld->path);
    return DT_ENOMEM;
}

/* Is S one route, an element of the top-level `routes` list? */
static bool is_route_group(const config_setting_t *s)
{
    const config_setting_t *list = config_setting_parent(s);
    return list && !config_setting_name(s) && config_setting_name(list) &&
           strcmp(config_setting_name(list), "routes") == 0 && config_setting_parent(list) &&
           config_setting_is_root(config_setting_parent(list));
}

/*
 * The dotted name of S for messages: "redirect.status", "timeouts.idle_ms",
 * "listen.tls.cert". It starts below the route a setting belongs to (the
 * line already says which route); list elements are named after their list.
 */
static const char *setting_path(const config_setting_t *s, char *buf, size_t cap)
{
    const char *names[8];
    size_t n = 0;
    for (; s && !is_route_group(s) && n < DT_ARRAY_LEN(names); s = config_setting_parent(s))
        if (config_setting_name(s))
            names[n++] = config_setting_name(s);
    buf[0] = '\0';
    for (size_t i = n, at = 0; i-- > 0 && at < cap;)
        at += (size_t)snprintf(buf + at, cap - at, "%s%s", names[i], i ? "." : "");
    return buf;
}

/* ------------------------------------------------------------------------ */
/* Typed access to settings. Each returns DT_OK or a FILE:LINE error.         */

#define PATHBUF 128
#define SPATH(s) setting_path((s), (char[PATHBUF]){0}, PATHBUF)

static bool is_list(const config_setting_t *s)
{
    return config_setting_is_list(s) || config_setting_is_array(s);
}

/* "A string or a list of them" keys: a scalar counts as a list of one. */
static size_t item_count(const config_setting_t *s)
{
    return is_list(s) ? (size_t)config_setting_length(s) : 1;
}

static const config_setting_t *item_at(const config_setting_t *s, size_t i)
{
    return is_list(s) ? config_setting_get_elem(s, (unsigned)i) : s;
}

static int get_string(loader *ld, const config_setting_t *s, const char **out)
{
    *out = NULL;
    if (config_setting_type(s) != CONFIG_TYPE_STRING)
        return fail(ld, s, "%s: must be a string", SPATH(s));
    *out = config_setting_get_string(s);
    if (!**out)
        return fail(ld, s, "%s: must not be empty", SPATH(s));
    return DT_OK;
}

static int get_bool(loader *ld, const config_setting_t *s, bool *out)
{
    *out = false;
    if (config_setting_type(s) != CONFIG_TYPE_BOOL)
        return fail(ld, s, "%s: must be true or false", SPATH(s));
    *out = config_setting_get_bool(s) != 0;
    return DT_OK;
}

/*
 * libconfig 1.5 stores a literal without an L suffix in an int, wrapping
 * anything beyond 32 bits. Read the literal again (decimal or 0x hex, as
 * libconfig does) and believe it when it wraps to the value libconfig kept,
 * which also guards against the scanner having found another setting.
 */
static long long literal_int(loader *ld, const config_setting_t *s, long long v)
{
    long off = value_offset(ld, s);
    if (off < 0)
        return v;
    const char *t = source_for(ld, s)->text + off;
    const char *digits = t + (*t == '-' || *t == '+');
    bool hex = digits[0] == '0' && (digits[1] == 'x' || digits[1] == 'X');
    char *end;
    errno = 0;
    long long lit = strtoll(t, &end, hex ? 16 : 10);
    if (end == t)
        return v;
    if (errno == ERANGE)
        return lit; /* LLONG_MIN/MAX: out of every range we accept */
    return (int)(unsigned)lit == (int)v ? lit : v;
}

static int get_int(loader *ld, const config_setting_t *s, long long lo, long long hi,
                   long long *out)
{
    *out = 0;
    int type = config_setting_type(s);
    if (type != CONFIG_TYPE_INT && type != CONFIG_TYPE_INT64)
        return fail(ld, s, "%s: must be an integer", SPATH(s));
    long long v = config_setting_get_int64(s);
    if (type == CONFIG_TYPE_INT)
        v = literal_int(ld, s, v);
    if (v < lo || v > hi)
        return fail(ld, s, "%s: %lld is out of range (%lld..%lld)", SPATH(s), v, lo, hi);
    *out = v;
    return DT_OK;
}

static int get_int_in(loader *ld, const config_setting_t *s, int lo, int hi, int *out)
{
    *out = 0;
    long long v = 0;
    int rc = get_int(ld, s, lo, hi, &v);
    if (rc == DT_OK)
        *out = (int)v;
    return rc;
}

/* One of NAMES (by position) or an error listing them. */
static int get_enum(loader *ld, const config_setting_t *s, const char *const *names, size_t n,
                    int *out)
{
    const char *v;
    int rc = get_string(ld, s, &v);
    if (rc)
        return rc;
    char list[160] = "";
    for (size_t i = 0, at = 0; i < n; i++) {
        if (strcmp(v, names[i]) == 0) {
            *out = (int)i;
            return DT_OK;
        }
        if (at < sizeof(list))
            at += (size_t)snprintf(list + at, sizeof(list) - at, "%s%s", i ? ", " : "", names[i]);
    }
    return fail(ld, s, "%s: \"%s\" is not one of %s", SPATH(s), v, list);
}

static int need_group(loader *ld, const config_setting_t *s)
{
    if (!config_setting_is_group(s))
        return fail(ld, s, "%s: must be a group { ... }", SPATH(s));
    return DT_OK;
}

/* A string or a list; an empty list is refused since it is always a mistake here. */
static int need_items(loader *ld, const config_setting_t *s)
{
    if (is_list(s) && config_setting_length(s) == 0)
        return fail(ld, s, "%s: empty list", SPATH(s));
    return DT_OK;
}

static int dup_str(loader *ld, const char *v, char **out)
{
    *out = strdup(v);
    return *out ? DT_OK : fail_nomem(ld);
}

/* A file name: resolved against the config directory and copied. */
static int get_path(loader *ld, const config_setting_t *s, char **out)
{
    *out = NULL;
    const char *v;
    int rc = get_string(ld, s, &v);
    if (rc)
        return rc;
    *out = resolve_path(ld, v);
    return *out ? DT_OK : fail_nomem(ld);
}

/* get_path() for a file detour must be able to read when it starts. */
static int get_readable_path(loader *ld, const config_setting_t *s, char **out)
{
    *out = NULL;
    int rc = get_path(ld, s, out);
    if (rc == DT_OK && access(*out, R_OK) != 0)
        return fail(ld, s, "%s: cannot read \"%s\": %s", SPATH(s), *out, strerror(errno));
    return rc;
}

/* ------------------------------------------------------------------------ */
/* Small pure parsers.                                                        */

/* RFC 9110 tchar. */
static bool is_token(const char *s)
{
    if (!*s)
        return false;
    for (; *s; s++)
        if (!isalnum((unsigned char)*s) && !strchr("!#$%&'*+-.^_`|~", *s))
            return false;
    return true;
}

/*
 * A raw path or URI piece: no control byte and no space. Bytes >= 0x80 are
 * allowed: matching is bytewise, and some clients send raw UTF-8 paths.
 */
static bool is_uri_text(const char *s)
{
    for (; *s; s++)
        if ((unsigned char)*s <= 0x20 || (unsigned char)*s == 0x7f)
            return false;
    return true;
}

/* Decimal 1..65535 filling all of S[0, n). */
static bool parse_port(const char *s, size_t n, unsigned *port)
{
    unsigned v = 0;
    if (n == 0 || n > 5)
        return false;
    for (size_t i = 0; i < n; i++) {
        if (!isdigit((unsigned char)s[i]))
            return false;
        v = v * 10 + (unsigned)(s[i] - '0');
    }
    if (v == 0 || v > 65535)
        return false;
    *port = v;
    return true;
}

/* Copy S[0, n) into BUF (cap bytes) as a string; false when it does not fit. */
static bool copy_n(char *buf, size_t cap, const char *s, size_t n)
{
    if (n >= cap)
        return false;
    memcpy(buf, s, n);
    buf[n] = '\0';
    return true;
}

/* "IPv4:port", "[IPv6]:port" or "*:port" into a numeric socket address. */
static bool parse_sockaddr(const char *text, struct sockaddr_storage *ss, socklen_t *len)
{
    char host[INET6_ADDRSTRLEN];
    const char *port;
    unsigned p;
    memset(ss, 0, sizeof(*ss));
    if (text[0] == '[') {
        const char *close = strchr(text, ']');
        struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)ss;
        if (!close || close[1] != ':' ||
            !copy_n(host, sizeof(host), text + 1, (size_t)(close - text - 1)))
            return false;
        port = close + 2;
        if (inet_pton(AF_INET6, host, &a6->sin6_addr) != 1 || !parse_port(port, strlen(port), &p))
            return false;
        a6->sin6_family = AF_INET6;
        a6->sin6_port = htons((uint16_t)p);
        *len = sizeof(*a6);
        return true;
    }
    const char *colon = strchr(text, ':');
    struct sockaddr_in *a4 = (struct sockaddr_in *)ss;
    if (!colon || !copy_n(host, sizeof(host), text, (size_t)(colon - text)))
        return false;
    port = colon + 1;
    if (!parse_port(port, strlen(port), &p))
        return false;
    if (strcmp(host, "*") == 0)
        a4->sin_addr.s_addr = htonl(INADDR_ANY);
    else if (inet_pton(AF_INET, host, &a4->sin_addr) != 1)
        return false;
    a4->sin_family = AF_INET;
    a4->sin_port = htons((uint16_t)p);
    *len = sizeof(*a4);
    return true;
}

/* Port of a parsed listen address and whether the address is a wildcard. */
static unsigned sockaddr_port(const struct sockaddr_storage *ss, bool *any)
{
    if (ss->ss_family == AF_INET6) {
        const struct sockaddr_in6 *a6 = (const struct sockaddr_in6 *)ss;
        *any = IN6_IS_ADDR_UNSPECIFIED(&a6->sin6_addr);
        return ntohs(a6->sin6_port);
    }
    const struct sockaddr_in *a4 = (const struct sockaddr_in *)ss;
    *any = a4->sin_addr.s_addr == htonl(INADDR_ANY);
    return ntohs(a4->sin_port);
}

static bool same_sockaddr(const dt_listen *a, const dt_listen *b)
{
    return a->addrlen == b->addrlen && memcmp(&a->addr, &b->addr, a->addrlen) == 0;
}

/* Would binding both fail or steal each other's connections? */
static bool sockaddr_collides(const dt_listen *a, const dt_listen *b)
{
    bool any_a, any_b;
    if (sockaddr_port(&a->addr, &any_a) != sockaddr_port(&b->addr, &any_b))
        return false;
    return any_a || any_b || same_sockaddr(a, b);
}

/* "addr" or "addr/bits", IPv4 or IPv6, into OUT with the host bits cleared. */
static bool parse_cidr(const char *text, dt_cidr *out)
{
    char addr[INET6_ADDRSTRLEN];
    const char *slash = strchr(text, '/');
    size_t alen = slash ? (size_t)(slash - text) : strlen(text);
    memset(out, 0, sizeof(*out));
    if (!copy_n(addr, sizeof(addr), text, alen))
        return false;
    if (inet_pton(AF_INET, addr, out->addr) == 1)
        out->family = AF_INET;
    else if (inet_pton(AF_INET6, addr, out->addr) == 1)
        out->family = AF_INET6;
    else
        return false;
    int max = out->family == AF_INET ? 32 : 128;
    out->bits = max;
    if (slash) {
        char *end;
        errno = 0;
        long bits = strtol(slash + 1, &end, 10);
        if (!isdigit((unsigned char)slash[1]) || *end || errno || bits < 0 || bits > max)
            return false;
        out->bits = (int)bits;
    }
    for (int i = out->bits; i < max; i++)
        out->addr[i / 8] &= (uint8_t) ~(0x80u >> (i % 8));
    return true;
}

/* A DNS name or IPv4 address: labels of letters, digits, '-' and '_'. */
static bool is_host_name(const char *s, size_t n)
{
    if (n == 0 || n > 253 || s[0] == '.' || s[n - 1] == '.')
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (c == '.' ? s[i + 1] == '.' : !(isalnum((unsigned char)c) || c == '-' || c == '_'))
            return false;
    }
    return true;
}

/* "name", "*.suffix" or "[IPv6]" into a lower-case dt_host_pattern. */
static int parse_host_pattern(loader *ld, const config_setting_t *s, const char *text,
                              dt_host_pattern *out)
{
    char v6[INET6_ADDRSTRLEN];
    size_t n = strlen(text);
    bool wildcard = n > 2 && text[0] == '*' && text[1] == '.';
    bool ok = wildcard ? is_host_name(text + 2, n - 2) : is_host_name(text, n);
    struct in6_addr a6;
    if (!ok && n > 2 && text[0] == '[' && text[n - 1] == ']')
        ok = copy_n(v6, sizeof(v6), text + 1, n - 2) && inet_pton(AF_INET6, v6, &a6) == 1;
    if (!ok)
        return fail(ld, s, "%s: \"%s\" is not a host name, \"*.suffix\" or [IPv6] (without a port)",
                    SPATH(s), text);
    const char *from = wildcard ? text + 1 : text; /* keep the dot of "*.": ".suffix" */
    out->len = strlen(from);
    out->wildcard = wildcard;
    out->name = strdup(from);
    if (!out->name)
        return fail_nomem(ld);
    for (char *p = out->name; *p; p++)
        *p = dt_ascii_lower(*p);
    return DT_OK;
}

static bool is_leap(int y)
{
    return (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
}

/* Exactly "YYYY-MM-DDTHH:MM:SSZ" (UTC) into unix seconds. */
static bool parse_time(const char *s, int64_t *out)
{
    static const char shape[] = "dddd-dd-ddTdd:dd:ddZ";
    static const int mdays[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    if (strlen(s) != sizeof(shape) - 1)
        return false;
    for (size_t i = 0; shape[i]; i++)
        if (shape[i] == 'd' ? !isdigit((unsigned char)s[i]) : s[i] != shape[i])
            return false;
    struct tm tm = {0};
    if (sscanf(s, "%4d-%2d-%2dT%2d:%2d:%2d", &tm.tm_year, &tm.tm_mon, &tm.tm_mday, &tm.tm_hour,
               &tm.tm_min, &tm.tm_sec) != 6)
        return false;
    if (tm.tm_year < 1970 || tm.tm_mon < 1 || tm.tm_mon > 12 || tm.tm_mday < 1 ||
        tm.tm_mday > mdays[tm.tm_mon - 1] + (tm.tm_mon == 2 && is_leap(tm.tm_year)) ||
        tm.tm_hour > 23 || tm.tm_min > 59 || tm.tm_sec > 59)
        return false;
    tm.tm_year -= 1900;
    tm.tm_mon -= 1;
    *out = (int64_t)timegm(&tm);
    return true;
}

static int get_time(loader *ld, const config_setting_t *s, int64_t *out)
{
    *out = 0;
    const char *v;
    int rc = get_string(ld, s, &v);
    if (rc == DT_OK && !parse_time(v, out))
        return fail(ld, s, "%s: \"%s\" is not a UTC time like \"2026-12-01T00:00:00Z\"", SPATH(s),
                    v);
    return rc;
}

/* ------------------------------------------------------------------------ */
/* Key tables: one small handler per key, unknown keys refused.               */

/*
 * A handler gets the setting, the object being filled (a route, a listen
 * item, ...) and ARG, a field offset for handlers shared by several keys.
 */
typedef int (*key_fn)(loader *ld, const config_setting_t *s, void *obj, size_t arg);

typedef struct key_spec {
    const char *name;
    key_fn fn;
    size_t arg;
} key_spec;

/* Levenshtein distance, capped: enough to suggest a key for a typo. */
static size_t edit_distance(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b), row[33];
    if (la > 32 || lb > 32)
        return SIZE_MAX;
    for (size_t j = 0; j <= lb; j++)
        row[j] = j;
    for (size_t i = 1; i <= la; i++) {
        size_t diag = row[0];
        row[0] = i;
        for (size_t j = 1; j <= lb; j++) {
            size_t up = row[j];
            size_t best = diag + (a[i - 1] != b[j - 1]);
            if (up + 1 < best)
                best = up + 1;
            if (row[j - 1] + 1 < best)
                best = row[j - 1] + 1;
            row[j] = best;
            diag = up;
        }
    }
    return row[lb];
}

static int unknown_key(loader *ld, const config_setting_t *s, const key_spec *keys, size_t n)
{
    const char *name = config_setting_name(s), *near = NULL;
    size_t best = 3; /* suggest only within two edits */
    for (size_t i = 0; i < n; i++) {
        size_t d = edit_distance(name, keys[i].name);
        if (d < best) {
            best = d;
            near = keys[i].name;
        }
    }
    const config_setting_t *parent = config_setting_parent(s);
    const char *in = parent ? SPATH(parent) : "";
    char where[PATHBUF + 8] = "";
    if (*in)
        snprintf(where, sizeof(where), " in %s", in);
    if (near)
        return fail(ld, s, "unknown key \"%s\"%s (did you mean \"%s\"?)", name, where, near);
    return fail(ld, s, "unknown key \"%s\"%s", name, where);
}

/* Run the handler of every member of GROUP, in file order. */
static int apply_keys(loader *ld, const config_setting_t *group, const key_spec *keys, size_t n,
                      void *obj)
{
    int count = config_setting_length(group);
    for (int i = 0; i < count; i++) {
        const config_setting_t *s = config_setting_get_elem(group, (unsigned)i);
        const key_spec *k = NULL;
        for (size_t j = 0; j < n && !k; j++)
            if (strcmp(keys[j].name, config_setting_name(s)) == 0)
                k = &keys[j];
        if (!k)
            return unknown_key(ld, s, keys, n);
        int rc = k->fn(ld, s, obj, k->arg);
        if (rc)
            return rc;
    }
    return DT_OK;
}

/* apply_keys() after checking that S is a group. */
static int apply_group(loader *ld, const config_setting_t *s, const key_spec *keys, size_t n,
                       void *obj)
{
    int rc = need_group(ld, s);
    return rc ? rc : apply_keys(ld, s, keys, n, obj);
}

#define FIELD(obj, type, off) ((type *)(void *)((char *)(obj) + (off)))

/* Shared handlers: ARG is the offset of the field in OBJ. */
static int key_bool_field(loader *ld, const config_setting_t *s, void *obj, size_t arg)
{
    return get_bool(ld, s, FIELD(obj, bool, arg));
}

/* A bool kept as an int, so that "not given" (UNSET) stays visible until the merge. */
static int key_tristate_field(loader *ld, const config_setting_t *s, void *obj, size_t arg)
{
    bool v = false;
    int rc = get_bool(ld, s, &v);
    if (rc == DT_OK)
        *FIELD(obj, int, arg) = v;
    return rc;
}

static int key_ms_field(loader *ld, const config_setting_t *s, void *obj, size_t arg)
{
    return get_int_in(ld, s, 1, MAX_TIMEOUT_MS, FIELD(obj, int, arg));
}

static int key_path_field(loader *ld, const config_setting_t *s, void *obj, size_t arg)
{
    char **field = FIELD(obj, char *, arg);
    free(*field);
    *field = NULL;
    return get_readable_path(ld, s, field);
}

/* ------------------------------------------------------------------------ */
/* listen and admin                                                           */

static int set_address(loader *ld, const config_setting_t *s, const char *text, dt_listen *l)
{
    if (!parse_sockaddr(text, &l->addr, &l->addrlen))
        return fail(ld, s,
                    "%s: cannot parse address \"%s\" (expected IPv4:port, [IPv6]:port or *:port "
                    "with a port 1-65535)",
                    SPATH(s), text);
    l->line = setting_line(ld, s);
    return dup_str(ld, text, &l->text);
}

static int key_listen_address(loader *ld, const config_setting_t *s, void *obj, size_t arg)
{
    const char *text;
    int rc = get_string(ld, s, &text);
    return rc ? rc : set_address(ld, s, text, obj);
}

static const key_spec tls_keys[] = {
    {"cert", key_path_field, offsetof(dt_listen, tls_cert)},
    {"key", key_path_field, offsetof(dt_listen, tls_key)},
};

static int key_listen_tls(loader *ld, const config_setting_t *s, void *obj, size_t arg)
{
    dt_listen *l = obj;
    int rc = apply_group(ld, s, tls_keys, DT_ARRAY_LEN(tls_keys), l);
    if (rc == DT_OK && (!l->tls_cert || !l->tls_key))
        return fail(ld, s, "%s: both cert and key are required", SPATH(s));
    return rc;
}

static const key_spec listen_item_keys[] = {
    {"address", key_listen_address, 0},
    {"tls", key_listen_tls, 0},
};

static int parse_listen_item(loader *ld, const config_setting_t *s, dt_listen *l)
{
    if (config_setting_is_group(s)) {
        int rc = apply_keys(ld, s, listen_item_keys, DT_ARRAY_LEN(listen_item_keys), l);
        if (rc == DT_OK && !l->text)
            return fail(ld, s, "%s: a group item needs an address", SPATH(s));
        if (rc == DT_OK)
            l->line = setting_line(ld, s);
        return rc;
    }
    const char *text;
    int rc = get_string(ld, s, &text);
    return rc ? rc : set_address(ld, s, text, l);
}

static int key_listen(loader *ld, const config_setting_t *s, void *obj, size_t arg)
{
    dt_config *cfg = ld->cfg;
    size_t n = item_count(s);
    int rc = need_items(ld, s);
    if (rc)
        return rc;
    cfg->listen = calloc(n, sizeof(*cfg->listen));
    if (!cfg->listen)
        return fail_nomem(ld);
    for (size_t i = 0; i < n; i++) {
        const config_setting_t *item = item_at(s, i);
        cfg->nlisten = i + 1; /* counted before parsing: a half-filled item is freed too */
        if ((rc = parse_listen_item(ld, item, &cfg->listen[i])))
            return rc;
        for (size_t j = 0; j < i; j++)
            if (same_sockaddr(&cfg->listen[j], &cfg->listen[i]))
                return fail(ld, item, "listen: \"%s\" is listed twice", cfg->listen[i].text);
    }
    return DT_OK;
}

static int key_admin(loader *ld, const config_setting_t *s, void *obj, size_t arg)
{
    const char *text;
    int rc = get_string(ld, s, &text);
    if (rc)
        return rc;
    ld->cfg->admin = calloc(1, sizeof(*ld->cfg->admin));
    if (!ld->cfg->admin)
        return fail_nomem(ld);
    ld->admin = s;
    return set_address(ld, s, text, ld->cfg->admin);
}

/* ------------------------------------------------------------------------ */
/* Scalar top-level keys                                                      */

static const char *const mode_names[] = {"reverse", "forward", "transparent"};
static const char *const log_format_names[] = {"combined", "json"};

static int key_mode(loader *ld, const config_setting_t *s, void *obj, size_t arg)
{
    int v = 0;
    int rc = get_enum(ld, s, mode_names, DT_ARRAY_LEN(mode_names), &v);
    if (rc == DT_OK) {
        ld->mode = (dt_mode)v;
        ld->mode_set = true;
    }
    return rc;
}

static int key_access_log(loader *ld, const config_setting_t *s, void *obj, size_t arg)
{
    const char *v;
    int rc = get_string(ld, s, &v);
    if (rc)
        return rc;
    ld->cfg->access_log = NULL; /* "off" */
    ld->access_log_set = true;
    if (strcmp(v, "off") == 0)
        return DT_OK;
    ld->cfg->access_log = strcmp(v, "-") == 0 ? strdup(v) : resolve_path(ld, v);
    return ld->cfg->access_log ? DT_OK : fail_nomem(ld);
}

static int key_log_format(loader *ld, const config_setting_t *s, void *obj, size_t arg)
{
    int v = 0;
    int rc = get_enum(ld, s, log_format_names, DT_ARRAY_LEN(log_format_names), &v);
    if (rc == DT_OK)
        ld->log_format = v;
    return rc;
}

static int key_workers(loader *ld, const config_setting_t *s, void *obj, size_t arg)
{
    return get_int_in(ld, s, 0, MAX_WORKERS, &ld->workers);
}

static int key_rewrite(loader *ld, const config_setting_t *s, void *obj, size_t arg)
{
    return key_tristate_field(ld, s, ld, arg);
}

static int key_via_name(loader *ld, const config_setting_t *s, void *obj, size_t arg)
{
    const char *v;
    int rc = get_string(ld, s, &v);
    if (rc)
        return rc;
    if (!is_token(v) || strlen(v) > MAX_VIA_LEN)
        return fail(ld, s, "via_name: \"%s\" is not an HTTP token of at most %d bytes", v,
                    MAX_VIA_LEN);
    return dup_str(ld, v, &ld->cfg->via_name);
}

static const key_spec timeout_keys[] = {
    {"connect_ms", key_ms_field, offsetof(dt_timeouts, connect_ms)},
    {"upstream_ms", key_ms_field, offsetof(dt_timeouts, upstream_ms)},
    {"header_ms", key_ms_field, offsetof(dt_timeouts, header_ms)},
    {"idle_ms", key_ms_field, offsetof(dt_timeouts, idle_ms)},
    {"drain_ms", key_ms_field, offsetof(dt_timeouts, drain_ms)},
};

static int key_timeouts(loader *ld, const config_setting_t *s, void *obj, size_t arg)
{
    return apply_group(ld, s, timeout_keys, DT_ARRAY_LEN(timeout_keys), &ld->cfg->timeouts);
}

static int key_max_connections(loader *ld, const config_setting_t *s, void *obj, size_t arg)
{
    return get_int_in(ld, s, 1, 1000000, &ld->cfg->limits.max_connections);
}

static int key_max_body_bytes(loader *ld, const config_setting_t *s, void *obj, size_t arg)
{
    long long v = 0;
    int rc = get_int(ld, s, 0, LLONG_MAX, &v);
    if (rc == DT_OK)
        ld->cfg->limits.max_body_bytes = (uint64_t)v;
    return rc;
}

static int key_max_header_bytes(loader *ld, const config_setting_t *s, void *obj, size_t arg)
{
    return get_int_in(ld, s, 1024, 1048576, &ld->cfg->limits.max_header_bytes);
}

static const key_spec limit_keys[] = {
    {"max_connections", key_max_connections, 0},
    {"max_body_bytes", key_max_body_bytes, 0},
    {"max_header_bytes", key_max_header_bytes, 0},
};

static int key_limits(loader *ld, const config_setting_t *s, void *obj, size_t arg)
{
    return apply_group(ld, s, limit_keys, DT_ARRAY_LEN(limit_keys), NULL);
}

/* ------------------------------------------------------------------------ */
/* upstreams                                                                  */

/* The pieces of an upstream URL, pointing into the setting's string. */
typedef struct url_parts {
    bool https;
    const char *host;
    size_t hostlen;
    bool v6;
    unsigned port;
} url_parts;

/* Split "http[s]://host[:port][/]"; NULL on success, else what is wrong. */
static const char *split_url(const char *url, url_parts *u)
{
    const char *p;
    if (strncasecmp(url, "http://", 7) == 0)
        p = url + 7;
    else if (strncasecmp(url, "https://", 8) == 0)
        p = url + 8, u->https = true;
    else
        return "must start with http:// or https://";
    size_t alen = strcspn(p, "/?#");
    if (strpbrk(p, "?#"))
        return "must not have a query or a fragment";
    if (p[alen] == '/' && p[alen + 1] != '\0')
        return "must not have a path (detour relays the request target unchanged)";
    if (memchr(p, '@', alen))
        return "must not carry user info";
    const char *port = NULL;
    u->host = p;
    if (*p == '[') {
        const char *close = memchr(p, ']', alen);
        if (!close)
            return "has an unterminated [IPv6] address";
        u->host = p + 1;
        u->hostlen = (size_t)(close - p - 1);
        u->v6 = true;
        port = close + 1 < p + alen ? close + 1 : NULL;
        if (port && *port != ':')
            return "has junk after the [IPv6] address";
    } else {
        port = memchr(p, ':', alen);
        u->hostlen = port ? (size_t)(port - p) : alen;
    }
    u->port = u->https ? 443 : 80;
    if (port && !parse_port(port + 1, (size_t)(p + alen - port - 1), &u->port))
        return "has a port that is not 1-65535";
    return NULL;
}

static bool valid_url_host(const url_parts *u)
{
    char buf[INET6_ADDRSTRLEN];
    struct in6_addr a6;
    if (!u->v6)
        return is_host_name(u->host, u->hostlen);
    return copy_n(buf, sizeof(buf), u->host, u->hostlen) && inet_pton(AF_INET6, buf, &a6) == 1;
}

/* Fill host, port, authority and the normalised url of U from its parts. */
static int fill_upstream_url(loader *ld, dt_upstream *up, const url_parts *u)
{
    bool dflt = u->port == (u->https ? 443u : 80u);
    char port[8] = "";
    if (!dflt)
        snprintf(port, sizeof(port), ":%u", u->port);
    up->https = u->https;
    up->port = u->port;
    up->host = strndup(u->host, u->hostlen);
    if (!up->host)
        return fail_nomem(ld);
    for (char *c = up->host; *c; c++)
        *c = dt_ascii_lower(*c);
    if (asprintf(&up->authority, u->v6 ? "[%s]%s" : "%s%s", up->host, port) < 0) {
        up->authority = NULL;
        return fail_nomem(ld);
    }
    if (asprintf(&up->url, "%s://%s", u->https ? "https" : "http", up->authority) < 0) {
        up->url = NULL;
        return fail_nomem(ld);
    }
    return DT_OK;
}

static int key_upstream_url(loader *ld, const config_setting_t *s, void *obj, size_t arg)
{
    const char *v, *why;
    url_parts u = {0};
    int rc = get_string(ld, s, &v);
    if (rc)
        return rc;
    if ((why = split_url(v, &u)) != NULL)
        return fail(ld, s, "%s: \"%s\" %s", SPATH(s), v, why);
    if (!valid_url_host(&u))
        return fail(ld, s, "%s: \"%s\" has no valid host", SPATH(s), v);
    return fill_upstream_url(ld, obj, &u);
}

static const key_spec upstream_keys[] = {
    {"url", key_upstream_url, 0},
    {"tls_verify", key_bool_field, offsetof(dt_upstream, tls_verify)},
    {"ca_file", key_path_field, offsetof(dt_upstream, ca_file)},
};

static int parse_upstream(loader *ld, const config_setting_t *s, dt_upstream *up)
{
    up->tls_verify = true;
    up->line = setting_line(ld, s);
    int rc = dup_str(ld, config_setting_name(s), &up->name);
    if (rc == DT_OK)
        rc = apply_group(ld, s, upstream_keys, DT_ARRAY_LEN(upstream_keys), up);
    if (rc == DT_OK && !up->url)
        return fail(ld, s, "%s: url is required", SPATH(s));
    return rc;
}

static int key_upstreams(loader *ld, const config_setting_t *s, void *obj, size_t arg)
{
    dt_config *cfg = ld->cfg;
    int rc = need_group(ld, s);
    if (rc)
        return rc;
    size_t n = (size_t)config_setting_length(s);
    cfg->upstreams = calloc(n ? n : 1, sizeof(*cfg->upstreams));
    if (!cfg->upstreams)
        return fail_nomem(ld);
    for (size_t i = 0; i < n; i++) {
        cfg->nupstreams = i + 1;
        cfg->upstreams[i].index = i;
        rc = parse_upstream(ld, config_setting_get_elem(s, (unsigned)i), &cfg->upstreams[i]);
        if (rc)
            return rc;
    }
    return DT_OK;
}

/* ------------------------------------------------------------------------ */
/* forward                                                                    */

static int key_allow_clients(loader *ld, const config_setting_t *s, void *obj, size_t arg)
{
    dt_forward *fw = &ld->cfg->forward;
    size_t n = item_count(s);
    int rc = need_items(ld, s);
    if (rc)
        return rc;
    fw->allow_clients = calloc(n, sizeof(*fw->allow_clients));
    if (!fw->allow_clients)
        return fail_nomem(ld);
    for (size_t i = 0; i < n; i++) {
        const config_setting_t *item = item_at(s, i);
        const char *v;
        if ((rc = get_string(ld, item, &v)))
            return rc;
        if (!parse_cidr(v, &fw->allow_clients[i]))
            return fail(ld, item, "%s: \"%s\" is not an address or a CIDR range", SPATH(item), v);
        fw->nallow_clients = i + 1;
    }
    return DT_OK;
}

/* "host", "*.suffix", "CIDR" or "[IPv6 CIDR]", each with an optional ":port". */
static int parse_destination(loader *ld, const config_setting_t *s, const char *v, dt_dest_rule *d)
{
    char what[INET6_ADDRSTRLEN + 8];
    const char *text = v, *port = NULL, *colon = strchr(v, ':');
    size_t n = strlen(v);
    if (v[0] == '[') { /* "[2001:db8::/32]" or "[2001:db8::/32]:443" */
        const char *close = strchr(v, ']');
        n = close ? (size_t)(close - v - 1) : SIZE_MAX;
        port = close && close[1] == ':' ? close + 2 : NULL;
        if (!close || (close[1] && !port))
            n = SIZE_MAX;
        v++;
    } else if (colon && !strchr(colon + 1, ':')) { /* one colon: a port */
        n = (size_t)(colon - v);
        port = colon + 1;
    }
    if (port && !parse_port(port, strlen(port), &d->port))
        return fail(ld, s, "%s: \"%s\" has a port that is not 1-65535", SPATH(s), text);
    if (n != SIZE_MAX && copy_n(what, sizeof(what), v, n) && parse_cidr(what, &d->cidr)) {
        d->is_cidr = true;
        return DT_OK;
    }
    if (n == SIZE_MAX || !copy_n(what, sizeof(what), v, n) || strchr(what, '/') ||
        strchr(what, ':'))
        return fail(ld, s, "%s: cannot parse \"%s\"", SPATH(s), text);
    return parse_host_pattern(ld, s, what, &d->host);
}

static int key_allow_destinations(loader *ld, const config_setting_t *s, void *obj, size_t arg)
{
    dt_forward *fw = &ld->cfg->forward;
    size_t n = item_count(s);
    fw->allow_destinations = calloc(n ? n : 1, sizeof(*fw->allow_destinations));
    if (!fw->allow_destinations)
        return fail_nomem(ld);
    for (size_t i = 0; i < n; i++) {
        const config_setting_t *item = item_at(s, i);
        const char *v;
        fw->nallow_destinations = i + 1;
        int rc = get_string(ld, item, &v);
        if (rc == DT_OK)
            rc = parse_destination(ld, item, v, &fw->allow_destinations[i]);
        if (rc)
            return rc;
    }
    return DT_OK;
}

static int key_connect_ports(loader *ld, const config_setting_t *s, void *obj, size_t arg)
{
    dt_forward *fw = &ld->cfg->forward;
    size_t n = item_count(s);
    fw->connect_ports = calloc(n ? n : 1, sizeof(*fw->connect_ports));
    if (!fw->connect_ports)
        return fail_nomem(ld);
    for (size_t i = 0; i < n; i++) {
        int port = 0;
        int rc = get_int_in(ld, item_at(s, i), 1, 65535, &port);
        if (rc)
            return rc;
        fw->connect_ports[fw->nconnect_ports++] = (unsigned)port;
    }
    return DT_OK;
}

static const key_spec forward_keys[] = {
    {"allow_clients", key_allow_clients, 0},
    {"allow_destinations", key_allow_destinations, 0},
    {"connect_ports", key_connect_ports, 0},
};

static int key_forward(loader *ld, const config_setting_t *s, void *obj, size_t arg)
{
    ld->cfg->forward.given = true;
    return apply_group(ld, s, forward_keys, DT_ARRAY_LEN(forward_keys), NULL);
}

/* ------------------------------------------------------------------------ */
/* expect                                                                     */

/*
 * Lines of the N elements of list S, found in one pass over the file text
 * (check.c prints them for failing cases, so they must be right even when
 * libconfig gives a string the line of the ")" after it).
 */
static void element_lines(loader *ld, const config_setting_t *s, int *lines, size_t n)
{
    long open = is_list(s) ? value_offset(ld, s) : -1;
    const source *src = source_for(ld, s);
    size_t *offs = open >= 0 ? calloc(n ? n : 1, sizeof(*offs)) : NULL;
    bool ok = offs && list_offsets(src, (size_t)open, offs, n);
    for (size_t i = 0; i < n; i++)
        lines[i] = ok ? (int)line_of(src, offs[i]) : (int)config_setting_source_line(item_at(s, i));
    free(offs);
}

static int key_expect(loader *ld, const config_setting_t *s, void *obj, size_t arg)
{
    dt_config *cfg = ld->cfg;
    size_t n = item_count(s);
    cfg->expects = calloc(n ? n : 1, sizeof(*cfg->expects));
    int *lines = calloc(n ? n : 1, sizeof(*lines));
    int rc = cfg->expects && lines ? DT_OK : fail_nomem(ld);
    if (rc == DT_OK)
        element_lines(ld, s, lines, n);
    for (size_t i = 0; i < n && rc == DT_OK; i++) {
        const char *v;
        if ((rc = get_string(ld, item_at(s, i), &v)))
            break;
        cfg->expects[i].line = lines[i];
        rc = dup_str(ld, v, &cfg->expects[i].text);
        cfg->nexpects = i + 1;
    }
    free(lines);
    return rc;
}

/* ------------------------------------------------------------------------ */
/* routes: match                                                              */

/* What a route handler fills: the route and the facts kept for the checks. */
typedef struct route_ctx {
    dt_route *r;
    route_src *rs;
} route_ctx;

static int key_match_host(loader *ld, const config_setting_t *s, void *obj, size_t arg)
{
    dt_match *m = &((route_ctx *)obj)->r->match;
    size_t n = item_count(s);
    int rc = need_items(ld, s);
    if (rc)
        return rc;
    m->hosts = calloc(n, sizeof(*m->hosts));
    if (!m->hosts)
        return fail_nomem(ld);
    for (size_t i = 0; i < n; i++) {
        const config_setting_t *item = item_at(s, i);
        const char *v;
        m->nhosts = i + 1;
        if ((rc = get_string(ld, item, &v)) || (rc = parse_host_pattern(ld, item, v, &m->hosts[i])))
            return rc;
    }
    return DT_OK;
}

/* prefix and path: raw bytes starting with '/'. */
static int get_request_path(loader *ld, const config_setting_t *s, char **out, size_t *len)
{
    *out = NULL;
    *len = 0;
    const char *v;
    int rc = get_string(ld, s, &v);
    if (rc)
        return rc;
    if (v[0] != '/' || !is_uri_text(v))
        return fail(ld, s, "%s: \"%s\" must start with '/' and hold no space or control byte",
                    SPATH(s), v);
    *len = strlen(v);
    return dup_str(ld, v, out);
}

static int key_match_prefix(loader *ld, const config_setting_t *s, void *obj, size_t arg)
{
    dt_match *m = &((route_ctx *)obj)->r->match;
    return get_request_path(ld, s, &m->prefix, &m->prefix_len);
}

static int key_match_path(loader *ld, const config_setting_t *s, void *obj, size_t arg)
{
    dt_match *m = &((route_ctx *)obj)->r->match;
    return get_request_path(ld, s, &m->path, &m->path_len);
}

static int key_match_regex(loader *ld, const config_setting_t *s, void *obj, size_t arg)
{
    dt_match *m = &((route_ctx *)obj)->r->match;
    const char *v;
    int rc = get_string(ld, s, &v);
    if (rc)
        return rc;
    int rerr = regcomp(&m->regex, v, REG_EXTENDED);
    if (rerr != 0) {
        char msg[160];
        regerror(rerr, &m->regex, msg, sizeof(msg));
        return fail(ld, s, "%s: bad regular expression \"%s\": %s", SPATH(s), v, msg);
    }
    m->regex_groups = m->regex.re_nsub;
    /* Set only now: regex_src says the regex_t is compiled and must be freed. */
    m->regex_src = strdup(v);
    if (!m->regex_src) {
        regfree(&m->regex);
        return fail_nomem(ld);
    }
    return DT_OK;
}

static int key_match_methods(loader *ld, const config_setting_t *s, void *obj, size_t arg)
{
    dt_match *m = &((route_ctx *)obj)->r->match;
    size_t n = item_count(s);
    int rc = need_items(ld, s);
    if (rc)
        return rc;
    m->methods = calloc(n, sizeof(*m->methods));
    if (!m->methods)
        return fail_nomem(ld);
    for (size_t i = 0; i < n; i++) {
        const config_setting_t *item = item_at(s, i);
        const char *v;
        if ((rc = get_string(ld, item, &v)))
            return rc;
        if (!is_token(v))
            return fail(ld, item, "%s: \"%s\" is not a method name", SPATH(item), v);
        if ((rc = dup_str(ld, v, &m->methods[i])))
            return rc;
        m->nmethods = i + 1;
        for (char *c = m->methods[i]; *c; c++)
            *c = (char)toupper((unsigned char)*c);
    }
    return DT_OK;
}

static const key_spec match_keys[] = {
    {"host", key_match_host, 0},   {"prefix", key_match_prefix, 0},   {"path", key_match_path, 0},
    {"regex", key_match_regex, 0}, {"methods", key_match_methods, 0},
};

static int key_route_match(loader *ld, const config_setting_t *s, void *obj, size_t arg)
{
    return apply_group(ld, s, match_keys, DT_ARRAY_LEN(match_keys), obj);
}

/* ------------------------------------------------------------------------ */
/* routes: redirect                                                           */

static dt_redirect *redirect_of(void *obj)
{
    return &((route_ctx *)obj)->r->redirect;
}

static int key_redirect_to(loader *ld, const config_setting_t *s, void *obj, size_t arg)
{
    const char *v;
    char terr[200] = "";
    int rc = get_string(ld, s, &v);
    if (rc)
        return rc;
    redirect_of(obj)->to = dt_template_compile(v, terr, sizeof(terr));
    if (!redirect_of(obj)->to)
        return fail(ld, s, "%s: %s", SPATH(s), terr[0] ? terr : "cannot compile the template");
    ((route_ctx *)obj)->rs->to = s;
    return DT_OK;
}

static int key_redirect_status(loader *ld, const config_setting_t *s, void *obj, size_t arg)
{
    int v = 0;
    int rc = get_int_in(ld, s, 100, 999, &v);
    if (rc == DT_OK && v != 301 && v != 302 && v != 303 && v != 307 && v != 308)
        return fail(ld, s, "%s: %d is not one of 301, 302, 303, 307, 308", SPATH(s), v);
    if (rc == DT_OK)
        redirect_of(obj)->status = v;
    return rc;
}

static int key_redirect_percent(loader *ld, const config_setting_t *s, void *obj, size_t arg)
{
    ((route_ctx *)obj)->rs->percent = s;
    return get_int_in(ld, s, 0, 100, &redirect_of(obj)->percent);
}

static int key_step_at(loader *ld, const config_setting_t *s, void *obj, size_t arg)
{
    return get_time(ld, s, &((dt_ramp_step *)obj)->at);
}

static int key_step_percent(loader *ld, const config_setting_t *s, void *obj, size_t arg)
{
    return get_int_in(ld, s, 0, 100, &((dt_ramp_step *)obj)->percent);
}

static const key_spec ramp_step_keys[] = {
    {"at", key_step_at, 0},
    {"percent", key_step_percent, 0},
};

static int parse_ramp_step(loader *ld, const config_setting_t *s, dt_ramp_step *st,
                           const dt_ramp_step *prev)
{
    st->at = INT64_MIN;
    st->percent = UNSET;
    int rc = apply_group(ld, s, ramp_step_keys, DT_ARRAY_LEN(ramp_step_keys), st);
    if (rc == DT_OK && (st->at == INT64_MIN || st->percent == UNSET))
        return fail(ld, s, "%s: each step needs both at and percent", SPATH(s));
    if (rc == DT_OK && prev && st->at <= prev->at)
        return fail(ld, config_setting_get_member(s, "at"),
                    "%s: steps must be in strictly increasing time order", SPATH(s));
    return rc;
}

static int key_redirect_ramp(loader *ld, const config_setting_t *s, void *obj, size_t arg)
{
    dt_redirect *rd = redirect_of(obj);
    if (!is_list(s) || config_setting_length(s) == 0)
        return fail(ld, s, "%s: must be a non-empty list of { at = ...; percent = ...; }",
                    SPATH(s));
    size_t n = (size_t)config_setting_length(s);
    ((route_ctx *)obj)->rs->ramp = s;
    rd->ramp = calloc(n, sizeof(*rd->ramp));
    if (!rd->ramp)
        return fail_nomem(ld);
    for (size_t i = 0; i < n; i++) {
        int rc = parse_ramp_step(ld, item_at(s, i), &rd->ramp[i], i ? &rd->ramp[i - 1] : NULL);
        if (rc)
            return rc;
        rd->nramp = i + 1;
    }
    return DT_OK;
}

static int key_redirect_sticky(loader *ld, const config_setting_t *s, void *obj, size_t arg)
{
    dt_redirect *rd = redirect_of(obj);
    const char *v;
    int rc = get_string(ld, s, &v);
    if (rc)
        return rc;
    const char *name = NULL;
    if (strcmp(v, "client_ip") == 0)
        rd->sticky = DT_STICKY_CLIENT_IP;
    else if (strncmp(v, "header:", 7) == 0)
        rd->sticky = DT_STICKY_HEADER, name = v + 7;
    else if (strncmp(v, "cookie:", 7) == 0)
        rd->sticky = DT_STICKY_COOKIE, name = v + 7;
    else
        return fail(ld, s, "%s: \"%s\" is not client_ip, header:NAME or cookie:NAME", SPATH(s), v);
    if (name && !is_token(name))
        return fail(ld, s, "%s: \"%s\" is not a valid header or cookie name", SPATH(s), name);
    free(rd->sticky_name);
    rd->sticky_name = NULL;
    return name ? dup_str(ld, name, &rd->sticky_name) : DT_OK;
}

static int key_window_from(loader *ld, const config_setting_t *s, void *obj, size_t arg)
{
    redirect_of(obj)->has_from = true;
    return get_time(ld, s, &redirect_of(obj)->from);
}

static int key_window_until(loader *ld, const config_setting_t *s, void *obj, size_t arg)
{
    ((route_ctx *)obj)->rs->until = s;
    redirect_of(obj)->has_until = true;
    return get_time(ld, s, &redirect_of(obj)->until);
}

static const key_spec window_keys[] = {
    {"from", key_window_from, 0},
    {"until", key_window_until, 0},
};

static int key_redirect_window(loader *ld, const config_setting_t *s, void *obj, size_t arg)
{
    return apply_group(ld, s, window_keys, DT_ARRAY_LEN(window_keys), obj);
}

static int key_redirect_when_file(loader *ld, const config_setting_t *s, void *obj, size_t arg)
{
    char *path;
    int rc = get_path(ld, s, &path);
    if (rc)
        return rc;
    redirect_of(obj)->when_file = dt_flag_get(path);
    free(path);
    return redirect_of(obj)->when_file ? DT_OK : fail_nomem(ld);
}

static int key_redirect_targets(loader *ld, const config_setting_t *s, void *obj, size_t arg)
{
    dt_redirect *rd = redirect_of(obj);
    size_t n = item_count(s);
    int rc = need_items(ld, s);
    if (rc)
        return rc;
    rd->targets = calloc(n, sizeof(*rd->targets));
    rd->rr = malloc(sizeof(*rd->rr));
    if (!rd->targets || !rd->rr)
        return fail_nomem(ld);
    atomic_init(rd->rr, 0);
    for (size_t i = 0; i < n; i++) {
        const config_setting_t *item = item_at(s, i);
        const char *v;
        if ((rc = get_string(ld, item, &v)))
            return rc;
        if (!is_uri_text(v))
            return fail(ld, item, "%s: \"%s\" holds a space or a control byte", SPATH(item), v);
        if ((rc = dup_str(ld, v, &rd->targets[i])))
            return rc;
        rd->ntargets = i + 1;
    }
    return DT_OK;
}

static int key_redirect_retry_after(loader *ld, const config_setting_t *s, void *obj, size_t arg)
{
    return get_int_in(ld, s, 0, INT_MAX, &redirect_of(obj)->retry_after);
}

static int key_redirect_dry_run(loader *ld, const config_setting_t *s, void *obj, size_t arg)
{
    return get_bool(ld, s, &redirect_of(obj)->dry_run);
}

/*
 * The map's own errors ("MAPFILE:LINE: ...") are passed on as they are: the
 * line to fix is in the map. Only a map that cannot be opened is reported at
 * the `map` setting.
 */
static int key_redirect_map(loader *ld, const config_setting_t *s, void *obj, size_t arg)
{
    char *path;
    int rc = get_readable_path(ld, s, &path);
    if (rc == DT_OK) {
        redirect_of(obj)->map = dt_map_load(path, ld->err, ld->errlen);
        if (!redirect_of(obj)->map)
            rc = DT_ECONFIG;
    }
    free(path);
    return rc;
}

static const key_spec redirect_keys[] = {
    {"to", key_redirect_to, 0},
    {"status", key_redirect_status, 0},
    {"percent", key_redirect_percent, 0},
    {"ramp", key_redirect_ramp, 0},
    {"sticky", key_redirect_sticky, 0},
    {"window", key_redirect_window, 0},
    {"when_file", key_redirect_when_file, 0},
    {"targets", key_redirect_targets, 0},
    {"retry_after", key_redirect_retry_after, 0},
    {"dry_run", key_redirect_dry_run, 0},
    {"map", key_redirect_map, 0},
};

static int key_route_redirect(loader *ld, const config_setting_t *s, void *obj, size_t arg)
{
    route_ctx *c = obj;
    c->r->kind = DT_ROUTE_REDIRECT;
    c->rs->redirect = s;
    return apply_group(ld, s, redirect_keys, DT_ARRAY_LEN(redirect_keys), obj);
}

/* ------------------------------------------------------------------------ */
/* routes: relay                                                              */

static int key_relay_upstream(loader *ld, const config_setting_t *s, void *obj, size_t arg)
{
    route_ctx *c = obj;
    const char *v;
    int rc = get_string(ld, s, &v);
    if (rc)
        return rc;
    c->r->relay.upstream = dt_config_upstream(ld->cfg, v);
    if (!c->r->relay.upstream)
        return fail(ld, s, "%s: unknown upstream \"%s\"", SPATH(s), v);
    return DT_OK;
}

static int key_relay_rewrite(loader *ld, const config_setting_t *s, void *obj, size_t arg)
{
    return key_tristate_field(ld, s, ((route_ctx *)obj)->rs, arg);
}

static const key_spec relay_keys[] = {
    {"upstream", key_relay_upstream, 0},
    {"rewrite_302", key_relay_rewrite, offsetof(route_src, rewrite_302)},
    {"rewrite_301", key_relay_rewrite, offsetof(route_src, rewrite_301)},
    {"rewrite_location", key_relay_rewrite, offsetof(route_src, rewrite_location)},
};

static int key_route_relay(loader *ld, const config_setting_t *s, void *obj, size_t arg)
{
    route_ctx *c = obj;
    c->r->kind = DT_ROUTE_RELAY;
    c->rs->relay = s;
    return apply_group(ld, s, relay_keys, DT_ARRAY_LEN(relay_keys), obj);
}

/* ------------------------------------------------------------------------ */
/* routes                                                                     */

/* Route names show up in logs ("route=NAME") and metric labels: keep them plain. */
static bool is_route_name(const char *v)
{
    size_t n = strlen(v);
    if (n == 0 || n > MAX_NAME_LEN)
        return false;
    for (; *v; v++)
        if (!isalnum((unsigned char)*v) && !strchr("._-:/@+", *v))
            return false;
    return true;
}

static int key_route_name(loader *ld, const config_setting_t *s, void *obj, size_t arg)
{
    route_ctx *c = obj;
    const char *v;
    int rc = get_string(ld, s, &v);
    if (rc)
        return rc;
    if (!is_route_name(v))
        return fail(ld, s, "name: \"%s\" must be 1-%d letters, digits or . _ - : / @ +", v,
                    MAX_NAME_LEN);
    c->rs->name = s;
    return dup_str(ld, v, &c->r->name);
}

static const key_spec route_keys[] = {
    {"name", key_route_name, 0},
    {"match", key_route_match, 0},
    {"redirect", key_route_redirect, 0},
    {"relay", key_route_relay, 0},
};

static int load_route(loader *ld, const config_setting_t *s, dt_route *r, route_src *rs)
{
    route_ctx c = {r, rs};
    r->redirect.percent = UNSET;
    r->redirect.retry_after = UNSET;
    rs->rewrite_302 = rs->rewrite_301 = rs->rewrite_location = UNSET;
    rs->group = s;
    if (!config_setting_is_group(s))
        return fail(ld, s, "routes: each route must be a group { ... }");
    r->line = setting_line(ld, s);
    return apply_keys(ld, s, route_keys, DT_ARRAY_LEN(route_keys), &c);
}

static int load_routes(loader *ld)
{
    dt_config *cfg = ld->cfg;
    const config_setting_t *s = ld->routes;
    if (!s)
        return DT_OK;
    if (!config_setting_is_list(s))
        return fail(ld, s, "routes: must be a list of groups: ( { ... }, { ... } )");
    size_t n = (size_t)config_setting_length(s);
    cfg->routes = calloc(n ? n : 1, sizeof(*cfg->routes));
    ld->rsrc = calloc(n ? n : 1, sizeof(*ld->rsrc));
    if (!cfg->routes || !ld->rsrc)
        return fail_nomem(ld);
    cfg->nroutes = n; /* zeroed routes free cleanly if a later one fails */
    for (size_t i = 0; i < n; i++) {
        int rc =
            load_route(ld, config_setting_get_elem(s, (unsigned)i), &cfg->routes[i], &ld->rsrc[i]);
        if (rc)
            return rc;
    }
    return DT_OK;
}

static int key_routes(loader *ld, const config_setting_t *s, void *obj, size_t arg)
{
    ld->routes = s; /* parsed after every other key: relays refer to upstreams and the mode */
    return DT_OK;
}

static const key_spec top_keys[] = {
    {"listen", key_listen, 0},
    {"mode", key_mode, 0},
    {"admin", key_admin, 0},
    {"access_log", key_access_log, 0},
    {"log_format", key_log_format, 0},
    {"workers", key_workers, 0},
    {"timeouts", key_timeouts, 0},
    {"limits", key_limits, 0},
    {"rewrite_302", key_rewrite, offsetof(loader, rewrite_302)},
    {"rewrite_301", key_rewrite, offsetof(loader, rewrite_301)},
    {"via_name", key_via_name, 0},
    {"upstreams", key_upstreams, 0},
    {"routes", key_routes, 0},
    {"forward", key_forward, 0},
    {"expect", key_expect, 0},
};

/* ------------------------------------------------------------------------ */
/* Defaults and inheritance, all in one place.                                */

static int default_workers(void)
{
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n < 1 ? 1 : n > MAX_WORKERS ? MAX_WORKERS : (int)n;
}

static void merge_int(int *v, int dflt)
{
    if (*v == UNSET)
        *v = dflt;
}

static int merge_globals(loader *ld)
{
    dt_config *cfg = ld->cfg;
    cfg->mode = ld->mode_set ? ld->mode : DT_MODE_REVERSE;
    cfg->log_format = ld->log_format == UNSET ? DT_LOG_COMBINED : (dt_log_format)ld->log_format;
    cfg->workers = ld->workers == UNSET || ld->workers == 0 ? default_workers() : ld->workers;
    cfg->rewrite_302 = ld->rewrite_302 == 1;
    cfg->rewrite_301 = ld->rewrite_301 == 1;
    merge_int(&cfg->timeouts.connect_ms, 5000);
    merge_int(&cfg->timeouts.upstream_ms, 60000);
    merge_int(&cfg->timeouts.header_ms, 10000);
    merge_int(&cfg->timeouts.idle_ms, 60000);
    merge_int(&cfg->timeouts.drain_ms, 10000);
    merge_int(&cfg->limits.max_connections, 10000);
    merge_int(&cfg->limits.max_header_bytes, 16384);
    if (cfg->limits.max_body_bytes == UINT64_MAX)
        cfg->limits.max_body_bytes = 1073741824;
    if (!cfg->via_name && !(cfg->via_name = strdup("detour")))
        return fail_nomem(ld);
    if (!ld->access_log_set && !(cfg->access_log = strdup("-")))
        return fail_nomem(ld);
    return DT_OK;
}

static int merge_listen(loader *ld)
{
    dt_config *cfg = ld->cfg;
    if (cfg->nlisten > 0)
        return DT_OK;
    cfg->listen = calloc(1, sizeof(*cfg->listen));
    if (!cfg->listen || !(cfg->listen[0].text = strdup(DEFAULT_LISTEN)))
        return fail_nomem(ld);
    cfg->nlisten = 1;
    parse_sockaddr(DEFAULT_LISTEN, &cfg->listen[0].addr, &cfg->listen[0].addrlen);
    return DT_OK;
}

static int merge_forward(loader *ld)
{
    dt_forward *fw = &ld->cfg->forward;
    if (!fw->allow_clients) {
        fw->allow_clients = calloc(2, sizeof(*fw->allow_clients));
        if (!fw->allow_clients)
            return fail_nomem(ld);
        parse_cidr("127.0.0.0/8", &fw->allow_clients[0]);
        parse_cidr("::1/128", &fw->allow_clients[1]);
        fw->nallow_clients = 2;
    }
    if (!fw->connect_ports) {
        fw->connect_ports = calloc(1, sizeof(*fw->connect_ports));
        if (!fw->connect_ports)
            return fail_nomem(ld);
        fw->connect_ports[0] = 443;
        fw->nconnect_ports = 1;
    }
    return DT_OK;
}

static int merge_route(loader *ld, size_t i)
{
    dt_config *cfg = ld->cfg;
    dt_route *r = &cfg->routes[i];
    const route_src *rs = &ld->rsrc[i];
    dt_redirect *rd = &r->redirect;
    if (!r->name && asprintf(&r->name, "route-%zu", i + 1) < 0) {
        r->name = NULL;
        return fail_nomem(ld);
    }
    r->relay.rewrite_302 = rs->rewrite_302 == UNSET ? cfg->rewrite_302 : rs->rewrite_302 == 1;
    r->relay.rewrite_301 = rs->rewrite_301 == UNSET ? cfg->rewrite_301 : rs->rewrite_301 == 1;
    r->relay.rewrite_location = rs->rewrite_location != 0; /* UNSET: true */
    if (rd->status == 0)
        rd->status = 307;
    if (rd->percent == UNSET)
        rd->percent = rd->nramp ? 0 : 100;
    if (!rd->to && rd->map) {
        char terr[128];
        rd->to = dt_template_compile("$mapped", terr, sizeof(terr));
        if (!rd->to)
            return fail_nomem(ld);
    }
    return DT_OK;
}

/* Globals first: routes inherit from them. */
static int merge_defaults(loader *ld)
{
    int rc = merge_globals(ld);
    if (rc == DT_OK)
        rc = merge_listen(ld);
    if (rc == DT_OK)
        rc = merge_forward(ld);
    for (size_t i = 0; rc == DT_OK && i < ld->cfg->nroutes; i++)
        rc = merge_route(ld, i);
    return rc;
}

/* ------------------------------------------------------------------------ */
/* Checks that span keys (run after the merge, so they see final values).     */

/* Of two settings in the same group, the one written last. */
static const config_setting_t *later(const config_setting_t *a, const config_setting_t *b)
{
    return config_setting_index(a) > config_setting_index(b) ? a : b;
}

#define TVAR(v) (1u << (v))

/* Every variable the template uses must have something to expand to. */
static int check_template(loader *ld, const dt_route *r, const config_setting_t *at)
{
    const dt_redirect *rd = &r->redirect;
    const dt_match *m = &r->match;
    uint32_t uses = dt_template_uses(rd->to);
    if ((uses & TVAR(DT_TVAR_TARGET)) && rd->ntargets == 0)
        return fail(ld, at, "%s: $target is used but the route has no targets", SPATH(at));
    if ((uses & TVAR(DT_TVAR_MAPPED)) && !rd->map)
        return fail(ld, at, "%s: $mapped is used but the route has no map", SPATH(at));
    if ((uses & TVAR(DT_TVAR_SUFFIX)) && !m->prefix)
        return fail(ld, at, "%s: $suffix is used but the route has no match.prefix", SPATH(at));
    for (size_t g = 9; g >= 1; g--) {
        if (!(uses & TVAR(DT_TVAR_GROUP1 + g - 1)))
            continue;
        if (!m->regex_src)
            return fail(ld, at, "%s: $%zu is used but the route has no match.regex", SPATH(at), g);
        if (m->regex_groups < g)
            return fail(ld, at, "%s: $%zu is used but match.regex has only %zu group(s)", SPATH(at),
                        g, m->regex_groups);
        break; /* the highest group used decides */
    }
    return DT_OK;
}

static int validate_redirect(loader *ld, const dt_route *r, const route_src *rs)
{
    const dt_redirect *rd = &r->redirect;
    if (rs->percent && rs->ramp)
        return fail(ld, later(rs->percent, rs->ramp),
                    "redirect: percent and ramp exclude each other (a ramp sets the percent)");
    if (rd->has_from && rd->has_until && rd->from >= rd->until)
        return fail(ld, rs->until, "redirect.window: until must be later than from");
    if (!rd->to)
        return fail(ld, rs->redirect,
                    "redirect: to is required (it defaults to $mapped only with a map)");
    return check_template(ld, r, rs->to ? rs->to : rs->redirect);
}

static int validate_route(loader *ld, const dt_route *r, const route_src *rs)
{
    if (rs->redirect && rs->relay)
        return fail(ld, later(rs->redirect, rs->relay),
                    "a route has exactly one of redirect and relay, this one has both");
    if (!rs->redirect && !rs->relay)
        return fail(ld, rs->group, "route \"%s\" has neither redirect nor relay", r->name);
    if (rs->redirect)
        return validate_redirect(ld, r, rs);
    if (!r->relay.upstream && ld->cfg->mode == DT_MODE_REVERSE)
        return fail(ld, rs->relay, "relay: upstream is required in reverse mode");
    return DT_OK;
}

static int cmp_route_name(const void *a, const void *b, void *ctx)
{
    const dt_config *cfg = ctx;
    size_t ia = *(const size_t *)a, ib = *(const size_t *)b;
    int c = strcmp(cfg->routes[ia].name, cfg->routes[ib].name);
    return c ? c : (ia > ib) - (ia < ib);
}

/* Names are unique, explicit and default ones alike: metrics and logs key on them. */
static int check_unique_names(loader *ld)
{
    dt_config *cfg = ld->cfg;
    size_t n = cfg->nroutes;
    size_t *order = malloc((n ? n : 1) * sizeof(*order));
    if (!order)
        return fail_nomem(ld);
    for (size_t i = 0; i < n; i++)
        order[i] = i;
    qsort_r(order, n, sizeof(*order), cmp_route_name, cfg);
    int rc = DT_OK;
    for (size_t i = 1; i < n && rc == DT_OK; i++) {
        const dt_route *a = &cfg->routes[order[i - 1]], *b = &cfg->routes[order[i]];
        const route_src *rs = &ld->rsrc[order[i]];
        if (strcmp(a->name, b->name) == 0)
            rc = fail(ld, rs->name ? rs->name : rs->group,
                      "duplicate route name \"%s\" (also the route on line %d)", b->name, a->line);
    }
    free(order);
    return rc;
}

static int validate(loader *ld)
{
    dt_config *cfg = ld->cfg;
    for (size_t i = 0; cfg->admin && i < cfg->nlisten; i++)
        if (sockaddr_collides(cfg->admin, &cfg->listen[i]))
            return fail(ld, ld->admin, "admin: \"%s\" collides with listen address \"%s\"",
                        cfg->admin->text, cfg->listen[i].text);
    for (size_t i = 0; i < cfg->nroutes; i++) {
        int rc = validate_route(ld, &cfg->routes[i], &ld->rsrc[i]);
        if (rc)
            return rc;
    }
    return check_unique_names(ld);
}

/* Attach metrics cells and build the match index: the snapshot is complete after this. */
static int finish(loader *ld)
{
    dt_config *cfg = ld->cfg;
    for (size_t i = 0; i < cfg->nroutes; i++) {
        cfg->routes[i].index = i;
        cfg->routes[i].stats = dt_metrics_route(cfg->routes[i].name);
        if (!cfg->routes[i].stats)
            return fail_nomem(ld);
    }
    for (size_t i = 0; i < cfg->nupstreams; i++) {
        cfg->upstreams[i].stats = dt_metrics_upstream(cfg->upstreams[i].name);
        if (!cfg->upstreams[i].stats)
            return fail_nomem(ld);
    }
    cfg->rules = dt_ruleset_build(cfg->routes, cfg->nroutes);
    return cfg->rules ? DT_OK : fail_nomem(ld);
}

/* ------------------------------------------------------------------------ */
/* Freeing                                                                    */

static void free_hosts(dt_host_pattern *h, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(h[i].name);
    free(h);
}

static void free_strings(char **v, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(v[i]);
    free(v);
}

static void free_route(dt_route *r)
{
    dt_match *m = &r->match;
    dt_redirect *rd = &r->redirect;
    free(r->name);
    free_hosts(m->hosts, m->nhosts);
    free(m->prefix);
    free(m->path);
    if (m->regex_src)
        regfree(&m->regex);
    free(m->regex_src);
    free_strings(m->methods, m->nmethods);
    dt_template_free(rd->to);
    free(rd->ramp);
    free(rd->sticky_name);
    free_strings(rd->targets, rd->ntargets);
    free(rd->rr);
    dt_map_free(rd->map); /* when_file flags belong to the registry */
}

static void free_listen(dt_listen *l)
{
    free(l->text);
    free(l->tls_cert);
    free(l->tls_key);
}

static void free_upstream(dt_upstream *u)
{
    free(u->name);
    free(u->url);
    free(u->host);
    free(u->authority);
    free(u->ca_file);
}

static void free_forward(dt_forward *fw)
{
    free(fw->allow_clients);
    for (size_t i = 0; i < fw->nallow_destinations; i++)
        free(fw->allow_destinations[i].host.name);
    free(fw->allow_destinations);
    free(fw->connect_ports);
}

/* Frees a complete or a half-built snapshot: every count covers only what was set up. */
static void config_free(dt_config *cfg)
{
    if (!cfg)
        return;
    dt_ruleset_free(cfg->rules); /* before the routes it points into */
    for (size_t i = 0; i < cfg->nroutes; i++)
        free_route(&cfg->routes[i]);
    free(cfg->routes);
    for (size_t i = 0; i < cfg->nupstreams; i++)
        free_upstream(&cfg->upstreams[i]);
    free(cfg->upstreams);
    for (size_t i = 0; i < cfg->nlisten; i++)
        free_listen(&cfg->listen[i]);
    free(cfg->listen);
    if (cfg->admin)
        free_listen(cfg->admin);
    free(cfg->admin);
    for (size_t i = 0; i < cfg->nexpects; i++)
        free(cfg->expects[i].text);
    free(cfg->expects);
    free_forward(&cfg->forward);
    free(cfg->access_log);
    free(cfg->via_name);
    free(cfg->path);
    free(cfg);
}

/* ------------------------------------------------------------------------ */
/* Loading                                                                    */

static void set_unset(loader *ld)
{
    dt_config *cfg = ld->cfg;
    ld->rewrite_302 = ld->rewrite_301 = ld->workers = ld->log_format = UNSET;
    cfg->timeouts = (dt_timeouts){UNSET, UNSET, UNSET, UNSET, UNSET};
    cfg->limits.max_connections = cfg->limits.max_header_bytes = UNSET;
    cfg->limits.max_body_bytes = UINT64_MAX;
}

/* Directory part of PATH ("rules" for "rules/detour.cfg"), NULL for a bare name. */
static char *dir_of(const char *path)
{
    const char *slash = strrchr(path, '/');
    if (!slash)
        return NULL;
    return strndup(path, slash == path ? 1 : (size_t)(slash - path));
}

static int loader_init(loader *ld, const char *path, char *err, size_t errlen)
{
    ld->path = path;
    ld->err = err;
    ld->errlen = errlen;
    config_init(&ld->lc);
    ld->cfg = calloc(1, sizeof(*ld->cfg));
    source *main_src = &ld->src[ld->nsrc++];
    if (!ld->cfg || !(ld->cfg->path = strdup(path)) || !(main_src->file = strdup(path)) ||
        !(main_src->shown = strdup(path)) ||
        ((ld->dir = dir_of(path)) == NULL && strchr(path, '/')))
        return fail_nomem(ld);
    atomic_init(&ld->cfg->refs, 1);
    set_unset(ld);
    if (!source_read(main_src, path)) {
        if (err && errlen)
            snprintf(err, errlen, "%s: cannot read: %s", path, strerror(errno));
        return errno == ENOMEM ? DT_ENOMEM : DT_ECONFIG;
    }
    return source_index(main_src) ? DT_OK : fail_nomem(ld);
}

static void loader_free(loader *ld)
{
    config_destroy(&ld->lc);
    config_free(ld->cfg);
    for (size_t i = 0; i < ld->nsrc; i++)
        source_free(&ld->src[i]);
    free(ld->rsrc);
    free(ld->dir);
}

/* libconfig's own errors, as FILE:LINE: text. */
static int parse_file(loader *ld)
{
    if (ld->dir)
        config_set_include_dir(&ld->lc, ld->dir);
    if (config_read_file(&ld->lc, ld->path))
        return DT_OK;
    if (config_error_type(&ld->lc) == CONFIG_ERR_FILE_IO) {
        if (ld->err && ld->errlen)
            snprintf(ld->err, ld->errlen, "%s: cannot read: %s", ld->path, strerror(errno));
        return DT_ECONFIG;
    }
    const char *file = config_error_file(&ld->lc);
    const source *src = source_entry_named(ld, file);
    if (src && src->shown)
        file = src->shown;
    if (ld->err && ld->errlen)
        snprintf(ld->err, ld->errlen, "%s:%d: %s", file ? file : ld->path,
                 config_error_line(&ld->lc), config_error_text(&ld->lc));
    return DT_ECONFIG;
}

int dt_config_load(const char *path, dt_config **out, char *err, size_t errlen)
{
    loader ld = {0};
    *out = NULL;
    if (err && errlen)
        err[0] = '\0';
    int rc = loader_init(&ld, path, err, errlen);
    if (rc)
        goto out;
    if ((rc = parse_file(&ld)))
        goto out;
    const config_setting_t *root = config_root_setting(&ld.lc);
    if ((rc = apply_keys(&ld, root, top_keys, DT_ARRAY_LEN(top_keys), NULL)))
        goto out;
    if ((rc = load_routes(&ld)) || (rc = merge_defaults(&ld)) || (rc = validate(&ld)) ||
        (rc = finish(&ld)))
        goto out;
    *out = ld.cfg;
    ld.cfg = NULL;
out:
    loader_free(&ld);
    return rc;
}

dt_config *dt_config_ref(dt_config *cfg)
{
    atomic_fetch_add_explicit(&cfg->refs, 1, memory_order_relaxed);
    return cfg;
}

void dt_config_unref(dt_config *cfg)
{
    /* acq_rel: the freeing thread must see every write made under other references. */
    if (cfg && atomic_fetch_sub_explicit(&cfg->refs, 1, memory_order_acq_rel) == 1)
        config_free(cfg);
}

const dt_upstream *dt_config_upstream(const dt_config *cfg, const char *name)
{
    for (size_t i = 0; i < cfg->nupstreams; i++)
        if (cfg->upstreams[i].name && strcmp(cfg->upstreams[i].name, name) == 0)
            return &cfg->upstreams[i];
    return NULL;
}

size_t dt_config_flags(const dt_config *cfg, struct dt_flag **out, size_t cap)
{
    size_t n = 0;
    for (size_t i = 0; i < cfg->nroutes; i++) {
        dt_flag *f = cfg->routes[i].redirect.when_file;
        bool seen = false;
        for (size_t j = 0; f && j < i && !seen; j++)
            seen = cfg->routes[j].redirect.when_file == f;
        if (!f || seen)
            continue;
        if (n < cap)
            out[n] = f;
        n++;
    }
    return n;
}

const char *dt_mode_name(dt_mode mode)
{
    return mode >= DT_MODE_REVERSE && mode <= DT_MODE_TRANSPARENT ? mode_names[mode] : "unknown";
}
