/*
 * map.c - bulk redirect maps ("old-path  new-location" lines).
 *
 * The file is read into one buffer and compacted in place into packed
 * "key\0value\0" entries in file order: comments, blank lines and extra
 * blanks are squeezed out, and every field ends up NUL-terminated, so a value
 * is found right after its key. An open-addressing table of 32-bit offsets
 * into that buffer (power-of-two size, load <= 0.5, linear probing) gives
 * O(1) lookups. Memory is the packed buffer plus 4 bytes per slot: for a
 * typical map well under twice the file size, with no per-entry allocation.
 *
 * A map is immutable after dt_map_load() and may be read by any number of
 * threads at once.
 */
#include "detour/map.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#define EMPTY_SLOT UINT32_MAX
#define MIN_SLOTS 16
/* Keys quoted in error messages are cut to this many bytes. */
#define QUOTE_MAX 80

struct dt_map {
    char *path;
    char *buf;       /* packed "key\0value\0" entries */
    size_t buflen;   /* bytes used in buf */
    size_t bufsize;  /* bytes allocated for buf (up to 1/8 more than used, see load) */
    size_t count;    /* entries */
    uint32_t *slots; /* offset of a key in buf, or EMPTY_SLOT */
    size_t nslots;   /* a power of two, >= 2 * count */
};

#define FNV_OFFSET 0xcbf29ce484222325ull
#define FNV_PRIME 0x100000001b3ull

/* FNV-1a 64, high bits folded in: the table indexes by the low bits. */
static uint64_t hash_bytes(const char *p, size_t n)
{
    uint64_t h = FNV_OFFSET;
    for (size_t i = 0; i < n; i++)
        h = (h ^ (unsigned char)p[i]) * FNV_PRIME;
    return h ^ (h >> 32);
}

/* hash_bytes() of a NUL-terminated key, measuring it in the same pass. */
static uint64_t hash_cstr(const char *p, size_t *len)
{
    uint64_t h = FNV_OFFSET;
    size_t i = 0;
    for (; p[i]; i++)
        h = (h ^ (unsigned char)p[i]) * FNV_PRIME;
    *len = i;
    return h ^ (h >> 32);
}

/*
 * Read all of PATH into a fresh buffer with one spare byte: the scanner's
 * '\n' sentinel, which the compaction may overwrite with the last NUL.
 */
static char *read_all(const char *path, size_t *len, char *err, size_t errlen)
{
    char *buf = NULL;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) != 0) {
        snprintf(err, errlen, "%s: cannot open: %s", path, strerror(errno));
        goto out;
    }
    if ((uint64_t)st.st_size >= EMPTY_SLOT - 1) {
        snprintf(err, errlen, "%s: too large for a map (4 GiB at most)", path);
        goto out;
    }
    buf = malloc((size_t)st.st_size + 1);
    if (!buf) {
        snprintf(err, errlen, "%s: out of memory", path);
        goto out;
    }
    size_t got = 0;
    while (got < (size_t)st.st_size) {
        ssize_t r = read(fd, buf + got, (size_t)st.st_size - got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            snprintf(err, errlen, "%s: read error: %s", path, strerror(errno));
            free(buf);
            buf = NULL;
            goto out;
        }
        if (r == 0)
            break; /* the file shrank while we read it: take what is there */
        got += (size_t)r;
    }
    *len = got;
out:
    if (fd >= 0)
        close(fd);
    return buf;
}

/*
 * Byte classes for the line scanner. Macros rather than functions: the scan
 * loops run once per byte of a possibly huge file, and must stay fast in
 * unoptimised and sanitizer builds too.
 */
#define IS_FIELD_BYTE(c) ((unsigned char)(c) > 0x20 && (unsigned char)(c) != 0x7f)
#define IS_BLANK(c) ((c) == ' ' || (c) == '\t')
#define IS_CONTROL(c) (!IS_FIELD_BYTE(c) && !IS_BLANK(c) && (c) != '\n')

/* A scan position: the buffer ends with a '\n' sentinel, so no bounds checks. */
typedef struct scan {
    char *buf;
    size_t p;
    size_t line;
} scan;

/* The offset after this line's '\n' (the sentinel ends the last line). */
static size_t next_line(const scan *sc, size_t len)
{
    const char *nl = memchr(sc->buf + sc->p, '\n', len + 1 - sc->p);
    return (size_t)(nl - sc->buf) + 1;
}

static void skip_blanks(scan *sc)
{
    while (IS_BLANK(sc->buf[sc->p]))
        sc->p++;
}

/* At the end of the line: a '\n', or a "\r\n" (files edited on Windows). */
static bool at_eol(const scan *sc)
{
    const char *c = sc->buf + sc->p;
    return c[0] == '\n' || (c[0] == '\r' && c[1] == '\n');
}

static bool scan_error(const dt_map *m, const scan *sc, char *err, size_t errlen, const char *what)
{
    snprintf(err, errlen, "%s:%zu: %s", m->path, sc->line, what);
    return false;
}

/* Read one field of FIELD_BYTEs; false (with the error written) on a control byte inside it. */
static bool scan_field(const dt_map *m, scan *sc, size_t *start, size_t *end, const char *name,
                       char *err, size_t errlen)
{
    *start = sc->p;
    while (IS_FIELD_BYTE(sc->buf[sc->p]))
        sc->p++;
    *end = sc->p;
    unsigned char c = (unsigned char)sc->buf[sc->p];
    if (!IS_CONTROL(c) || at_eol(sc))
        return true;
    snprintf(err, errlen, "%s:%zu: control byte 0x%02x in %s", m->path, sc->line, c, name);
    return false;
}

/*
 * Scan the line at sc->p, which is not blank or a comment: exactly two
 * fields, the first starting with '/'. Leaves sc->p at the end of the line.
 */
static bool scan_entry(const dt_map *m, scan *sc, size_t f[4], char *err, size_t errlen)
{
    if (!scan_field(m, sc, &f[0], &f[1], "the old path", err, errlen))
        return false;
    skip_blanks(sc);
    if (at_eol(sc))
        return scan_error(m, sc, err, errlen,
                          "expected two fields (old-path new-location), found one");
    if (sc->buf[f[0]] != '/')
        return scan_error(m, sc, err, errlen, "the old path must start with '/'");
    if (!scan_field(m, sc, &f[2], &f[3], "the new location", err, errlen))
        return false;
    skip_blanks(sc);
    if (!at_eol(sc))
        return scan_error(m, sc, err, errlen,
                          "expected two fields (old-path new-location), found more");
    return true;
}

/*
 * Walk the lines of buf[0, len) and pack every entry to the front of the
 * buffer as "key\0value\0". Writing never overtakes reading: an entry packed
 * takes no more bytes than its line (two NULs replace at least one blank and
 * the newline, or the sentinel at the end).
 */
static bool pack_entries(dt_map *m, char *buf, size_t len, char *err, size_t errlen)
{
    scan sc = {buf, 0, 0};
    size_t w = 0;
    buf[len] = '\n'; /* sentinel */
    while (sc.p < len) {
        sc.line++;
        skip_blanks(&sc);
        if (buf[sc.p] == '#' || at_eol(&sc)) {
            sc.p = next_line(&sc, len);
            continue;
        }
        size_t f[4];
        if (!scan_entry(m, &sc, f, err, errlen))
            return false;
        sc.p = next_line(&sc, len); /* before packing: the last NUL may replace the sentinel */
        for (int i = 0; i < 4; i += 2) {
            memmove(buf + w, buf + f[i], f[i + 1] - f[i]);
            w += f[i + 1] - f[i];
            buf[w++] = '\0';
        }
        m->count++;
    }
    m->buf = buf;
    m->buflen = w;
    m->bufsize = len + 1;
    return true;
}

/*
 * Line numbers of the first and second entries whose old path is KEY, found
 * by reading the file again: only needed for the duplicate-key error, so the
 * table does not carry line numbers for every entry.
 */
static void duplicate_lines(const char *path, const char *key, size_t *first, size_t *second)
{
    char scratch[256];
    size_t len = 0, keylen = strlen(key);
    char *buf = read_all(path, &len, scratch, sizeof(scratch));
    *first = *second = 0;
    if (!buf)
        return;
    buf[len] = '\n';
    scan sc = {buf, 0, 0};
    while (sc.p < len && !*second) {
        sc.line++;
        skip_blanks(&sc);
        size_t start = sc.p;
        while (IS_FIELD_BYTE(buf[sc.p]))
            sc.p++;
        if (sc.p - start == keylen && memcmp(buf + start, key, keylen) == 0)
            *(*first ? second : first) = sc.line;
        sc.p = next_line(&sc, len);
    }
    free(buf);
}

static size_t slots_for(size_t count)
{
    size_t n = MIN_SLOTS;
    while (n < count * 2)
        n *= 2;
    return n;
}

/* Index every packed entry; a duplicate key is an error naming both lines. */
static bool build_index(dt_map *m, char *err, size_t errlen)
{
    m->nslots = slots_for(m->count);
    m->slots = malloc(m->nslots * sizeof(*m->slots));
    if (!m->slots) {
        snprintf(err, errlen, "%s: out of memory", m->path);
        return false;
    }
    memset(m->slots, 0xff, m->nslots * sizeof(*m->slots));
    size_t off = 0, mask = m->nslots - 1;
    for (size_t i = 0; i < m->count; i++) {
        const char *key = m->buf + off;
        size_t keylen;
        size_t s = hash_cstr(key, &keylen) & mask;
        while (m->slots[s] != EMPTY_SLOT) {
            if (strcmp(m->buf + m->slots[s], key) == 0) {
                size_t first, second;
                duplicate_lines(m->path, key, &first, &second);
                snprintf(err, errlen, "%s:%zu: duplicate old path \"%.*s\" (first on line %zu)",
                         m->path, second, QUOTE_MAX, key, first);
                return false;
            }
            s = (s + 1) & mask;
        }
        m->slots[s] = (uint32_t)off;
        off += keylen + 1;
        off += strlen(m->buf + off) + 1;
    }
    return true;
}

dt_map *dt_map_load(const char *path, char *err, size_t errlen)
{
    size_t len = 0;
    char *buf = NULL;
    dt_map *m = calloc(1, sizeof(*m));
    if (!m || !(m->path = strdup(path))) {
        snprintf(err, errlen, "%s: out of memory", path);
        goto fail;
    }
    buf = read_all(path, &len, err, errlen);
    if (!buf)
        goto fail;
    if (!pack_entries(m, buf, len, err, errlen))
        goto fail;
    buf = NULL; /* owned by m now */
    /*
     * Give back what comments and blanks took when that is worth a copy (a
     * realloc may move the whole buffer); keep the buffer if realloc says no.
     */
    if (m->buflen < len - len / 8) {
        char *shrunk = realloc(m->buf, m->buflen ? m->buflen : 1);
        if (shrunk) {
            m->buf = shrunk;
            m->bufsize = m->buflen ? m->buflen : 1;
        }
    }
    if (!build_index(m, err, errlen))
        goto fail;
    return m;
fail:
    free(buf);
    dt_map_free(m);
    return NULL;
}

void dt_map_free(dt_map *m)
{
    if (!m)
        return;
    free(m->slots);
    free(m->buf);
    free(m->path);
    free(m);
}

const char *dt_map_lookup(const dt_map *m, const char *key, size_t keylen, size_t *len)
{
    /* A key with a NUL can match nothing, and comparing it could read past an entry. */
    if (keylen == 0 || memchr(key, '\0', keylen))
        return NULL;
    size_t mask = m->nslots - 1;
    for (size_t s = hash_bytes(key, keylen) & mask, probes = 0; probes < m->nslots;
         s = (s + 1) & mask, probes++) {
        if (m->slots[s] == EMPTY_SLOT)
            return NULL;
        const char *k = m->buf + m->slots[s];
        /* strncmp stops at k's NUL, so k[keylen] is inside the entry when it matches. */
        if (strncmp(k, key, keylen) == 0 && k[keylen] == '\0') {
            const char *v = k + keylen + 1;
            if (len)
                *len = strlen(v);
            return v;
        }
    }
    return NULL;
}

size_t dt_map_count(const dt_map *m)
{
    return m->count;
}

size_t dt_map_memory(const dt_map *m)
{
    return sizeof(*m) + strlen(m->path) + 1 + m->bufsize + m->nslots * sizeof(*m->slots);
}

void dt_map_foreach(const dt_map *m, bool (*fn)(void *ctx, dt_str key, dt_str value), void *ctx)
{
    size_t off = 0;
    for (size_t i = 0; i < m->count; i++) {
        dt_str key = {m->buf + off, strlen(m->buf + off)};
        off += key.n + 1;
        dt_str value = {m->buf + off, strlen(m->buf + off)};
        off += value.n + 1;
        if (!fn(ctx, key, value))
            return;
    }
}
