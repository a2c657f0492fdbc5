/*
 * origin.c - dt_origin, the origin server the integration tests put behind
 * detour.
 *
 *   dt_origin -l 127.0.0.1:PORT      (or -l [::1]:PORT); runs until SIGTERM/SIGINT, exit 0
 *
 * It reads requests from raw sockets itself, one thread per connection,
 * instead of using libmicrohttpd: the tests must see the request exactly as
 * detour put it on the wire (header order, case and duplicates, the raw
 * target, the framing), which libmicrohttpd decodes and normalises, and
 * several endpoints misbehave on purpose (reset, close mid-body, no
 * response at all), which a well-behaved server library does not allow.
 * Keep-alive, Content-Length and chunked request bodies, Expect:
 * 100-continue and HTTP/1.0 are supported. Request bodies are hashed while
 * they stream, never stored.
 *
 * Every response carries "Server: dt-origin" and a Date. HEAD works on every
 * endpoint: the GET head (same Content-Length or framing), no body. Query
 * values are decimal numbers unless said otherwise. Endpoints (path = target
 * up to '?'):
 *
 *   /echo...[?rate=B]   any method, any path starting with /echo: 200, text body of lines
 *                       "method: M", "target: T" (raw), "version: V",
 *                       "header: Name: value" per request header in order,
 *                       "body-length: N", "body-sha256: HEX"; response headers
 *                       X-Origin-Method, X-Origin-Target, X-Body-Length, X-Body-Sha256.
 *                       rate=B reads the request body at about B bytes/s (a slow
 *                       origin, so that a proxy without backpressure would buffer).
 *   /bytes?n=N[&chunked=1]   N bytes of the pattern in tests/harness/pattern.h
 *                       (byte i = (i * 131 + (i >> 16)) & 0xff), Content-Length or chunked.
 *   /status/CODE[?location=URL]   status CODE (200-599), optional Location (URL
 *                       percent-decoded once), short body (none for 204/304).
 *   /cookies?n=K        K Set-Cookie headers (c1=v1 ...), X-Kept: yes, and hop-by-hop
 *                       noise detour must strip: Connection: close-me, X-Private;
 *                       X-Private: secret; Keep-Alive: timeout=5; Upgrade: foo; Trailer: x.
 *   /slow?ms=N          wait N ms (at most 120000), then 200 "slept N ms" + target line.
 *   /slowbody?ms=N&n=N  head (Content-Length N) at once, the N pattern bytes after N ms.
 *   /truncate?send=N&cl=M     Content-Length M, only N (< M) pattern bytes, then close.
 *   /truncate-chunked?send=N  chunked, N pattern bytes in chunks, close without the last chunk.
 *   /reset              reset the connection (SO_LINGER 0), no response.
 *   /empty              close the connection, no response.
 *   /bigheaders?bytes=N a response head of at least N bytes (X-Big-NNNNN headers).
 *   /foldhead           a 200 head whose first header line is an obs-fold
 *                       continuation (malformed), Content-Length 2; keeps the connection.
 *   /badframing?kind=K  a 200 with framing a proxy must refuse, body "hello":
 *                       K=1 two different Content-Length, K=2 Content-Length and
 *                       chunked, K=3 a Content-Length that is not a number.
 *   /nolength?n=N       N pattern bytes delimited by close (no Content-Length, no chunked).
 *   /head               200 with a short body; meant for HEAD.
 *   /nocontent          204.      /notmodified   304 with an ETag.
 *   /legacy/form        GET: HTML page with a POST form to /legacy/submit.
 *   /legacy/submit      any method: 302, Location: /legacy/done.
 *   /legacy/done        200 HTML showing the method, body length and body SHA-256.
 *   /via                body "via: VALUE" per Via header of the request ("via: -" when none).
 *   /stats              "requests: N", "connections: M", "active: K" (this request
 *                       counted); headers X-Requests, X-Connections.
 *   anything else       404.
 * A request the origin cannot parse gets 400 and a close.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <gnutls/crypto.h>
#include <gnutls/gnutls.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "pattern.h"

#define BUF_CAP (256 * 1024) /* per-connection read buffer; bounds the request head */
#define HDR_MAX 1024         /* request headers kept per request */
#define IO_BLOCK (64 * 1024) /* body bytes per send() */
#define IDLE_TIMEOUT_S 120   /* a connection silent this long is closed */
#define SLOW_MAX_MS 120000

static volatile sig_atomic_t g_stop;
static atomic_ulong g_requests, g_connections, g_active;

/* ---- growable text buffer --------------------------------------------- */

typedef struct dbuf {
    char *p;
    size_t n, cap;
} dbuf;

static void db_reserve(dbuf *b, size_t more)
{
    if (b->n + more + 1 <= b->cap)
        return;
    size_t cap = b->cap ? b->cap : 1024;
    while (cap < b->n + more + 1)
        cap *= 2;
    b->p = realloc(b->p, cap);
    if (b->p == NULL) {
        perror("dt_origin: realloc");
        abort();
    }
    b->cap = cap;
}

static void db_add(dbuf *b, const void *p, size_t n)
{
    db_reserve(b, n);
    memcpy(b->p + b->n, p, n);
    b->n += n;
    b->p[b->n] = '\0';
}

__attribute__((format(printf, 2, 3))) static void db_printf(dbuf *b, const char *fmt, ...)
{
    va_list ap, again;
    va_start(ap, fmt);
    va_copy(again, ap);
    db_reserve(b, 256);
    int n = vsnprintf(b->p + b->n, b->cap - b->n, fmt, ap);
    if (n >= 0 && (size_t)n >= b->cap - b->n) {
        db_reserve(b, (size_t)n);
        vsnprintf(b->p + b->n, b->cap - b->n, fmt, again);
    }
    if (n > 0)
        b->n += (size_t)n;
    va_end(again);
    va_end(ap);
}

/* ---- one connection: buffered reads, whole writes --------------------- */

typedef struct conn {
    int fd;
    char *buf; /* BUF_CAP bytes; [start, end) not consumed yet */
    size_t start, end;
    uint64_t rate;      /* request body bytes/s, 0 = as fast as possible */
    int64_t body_t0_ms; /* when the current body started */
} conn;

/* Read more bytes. Returns the number read, 0 at EOF, -1 on error or idle timeout. */
static ssize_t conn_fill(conn *c)
{
    if (c->start > 0 && c->start == c->end)
        c->start = c->end = 0;
    if (c->end == BUF_CAP && c->start > 0) {
        memmove(c->buf, c->buf + c->start, c->end - c->start);
        c->end -= c->start;
        c->start = 0;
    }
    if (c->end == BUF_CAP)
        return -1;
    for (;;) {
        ssize_t r = recv(c->fd, c->buf + c->end, BUF_CAP - c->end, 0);
        if (r < 0 && errno == EINTR)
            continue;
        if (r > 0)
            c->end += (size_t)r;
        return r;
    }
}

static int send_all(int fd, const void *p, size_t n)
{
    const char *s = p;
    while (n > 0) {
        ssize_t w = send(fd, s, n, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return -1;
        s += w;
        n -= (size_t)w;
    }
    return 0;
}

/* One line (without CRLF/LF) into OUT. Returns its length or -1 (EOF, too long). */
static long conn_line(conn *c, char *out, size_t cap)
{
    for (;;) {
        char *nl = memchr(c->buf + c->start, '\n', c->end - c->start);
        if (nl != NULL) {
            size_t n = (size_t)(nl - (c->buf + c->start));
            size_t len = (n > 0 && nl[-1] == '\r') ? n - 1 : n;
            if (len >= cap)
                return -1;
            memcpy(out, c->buf + c->start, len);
            out[len] = '\0';
            c->start += n + 1;
            return (long)len;
        }
        if (c->end - c->start >= cap || conn_fill(c) <= 0)
            return -1;
    }
}

/* ---- the request ------------------------------------------------------- */

typedef struct header {
    char *name, *value;
} header;

typedef struct request {
    char *head; /* private copy of the head; the strings below point into it */
    char *method, *target, *version;
    char *path, *query; /* copies: path without the query, query without '?' ("" when none) */
    header hdr[HDR_MAX];
    size_t nhdr;
    bool head_only;  /* HEAD: no body bytes in the response */
    bool keep_alive; /* the client allows another request on this connection */
    bool chunked;
    bool has_length;
    uint64_t length;
    bool expect_continue;
    /* filled by body_read() */
    uint64_t body_len;
    char body_sha[65];
} request;

static const char *req_header(const request *r, const char *name)
{
    for (size_t i = 0; i < r->nhdr; i++)
        if (strcasecmp(r->hdr[i].name, name) == 0)
            return r->hdr[i].value;
    return NULL;
}

/* Does a comma-separated header value list TOKEN (case-insensitive)? */
static bool list_has(const char *value, const char *token)
{
    size_t tn = strlen(token);
    const char *p = value;
    while (p && *p) {
        while (*p == ' ' || *p == '\t' || *p == ',')
            p++;
        size_t n = strcspn(p, ", \t");
        if (n == tn && strncasecmp(p, token, n) == 0)
            return true;
        p += n;
    }
    return false;
}

static char *trim(char *s)
{
    while (*s == ' ' || *s == '\t')
        s++;
    size_t n = strlen(s);
    while (n > 0 && (s[n - 1] == ' ' || s[n - 1] == '\t'))
        s[--n] = '\0';
    return s;
}

/*
 * Wait for a whole head in the buffer. Returns its length including the
 * blank line, 0 on a clean EOF before any byte, -1 on error/EOF mid-head,
 * -2 when it does not fit the buffer.
 */
static long head_wait(conn *c)
{
    for (;;) {
        char *b = c->buf + c->start;
        size_t n = c->end - c->start;
        for (size_t i = 0; i + 1 < n; i++) {
            if (b[i] == '\n' && b[i + 1] == '\n')
                return (long)(i + 2);
            if (b[i] == '\n' && b[i + 1] == '\r' && i + 2 < n && b[i + 2] == '\n')
                return (long)(i + 3);
        }
        if (n == BUF_CAP)
            return -2;
        ssize_t r = conn_fill(c);
        if (r <= 0)
            return (r == 0 && c->end == c->start) ? 0 : -1;
    }
}

static bool parse_request_line(request *r, char *line)
{
    r->method = line;
    char *sp1 = strchr(line, ' ');
    if (sp1 == NULL)
        return false;
    *sp1 = '\0';
    r->target = sp1 + 1;
    char *sp2 = strchr(r->target, ' ');
    if (sp2 == NULL)
        return false;
    *sp2 = '\0';
    r->version = sp2 + 1;
    return r->method[0] && r->target[0] && strncmp(r->version, "HTTP/1.", 7) == 0;
}

static bool parse_header_line(request *r, char *line)
{
    char *colon = strchr(line, ':');
    if (colon == NULL || colon == line || r->nhdr == HDR_MAX)
        return false;
    *colon = '\0';
    r->hdr[r->nhdr].name = line;
    r->hdr[r->nhdr].value = trim(colon + 1);
    r->nhdr++;
    return true;
}

/* Framing and connection facts from the headers. */
static bool parse_framing(request *r)
{
    const char *te = req_header(r, "Transfer-Encoding");
    const char *cl = req_header(r, "Content-Length");
    const char *conn_hdr = req_header(r, "Connection");
    const char *expect = req_header(r, "Expect");
    bool http10 = strcmp(r->version, "HTTP/1.0") == 0;

    r->keep_alive = http10 ? (conn_hdr && list_has(conn_hdr, "keep-alive"))
                           : !(conn_hdr && list_has(conn_hdr, "close"));
    r->head_only = strcmp(r->method, "HEAD") == 0;
    r->expect_continue = expect && strcasecmp(expect, "100-continue") == 0;
    if (te != NULL) {
        r->chunked = list_has(te, "chunked");
        return r->chunked;
    }
    if (cl != NULL) {
        char *end;
        errno = 0;
        r->length = strtoull(cl, &end, 10);
        r->has_length = true;
        return errno == 0 && *cl >= '0' && *cl <= '9' && *end == '\0';
    }
    return true;
}

static void split_target(request *r)
{
    const char *q = strchr(r->target, '?');
    size_t plen = q ? (size_t)(q - r->target) : strlen(r->target);
    r->path = strndup(r->target, plen);
    r->query = strdup(q ? q + 1 : "");
}

/* Parse the head of HEAD_LEN bytes at the buffer start; consumes it. */
static bool request_parse(conn *c, request *r, size_t head_len)
{
    memset(r, 0, sizeof(*r));
    r->head = malloc(head_len + 1);
    if (r->head == NULL)
        return false;
    memcpy(r->head, c->buf + c->start, head_len);
    r->head[head_len] = '\0';
    c->start += head_len;

    char *save = NULL;
    char *line = strtok_r(r->head, "\n", &save);
    for (size_t i = 0; line != NULL; i++, line = strtok_r(NULL, "\n", &save)) {
        size_t n = strlen(line);
        if (n > 0 && line[n - 1] == '\r')
            line[--n] = '\0';
        if (n == 0)
            break;
        if (i == 0 ? !parse_request_line(r, line) : !parse_header_line(r, line))
            return false;
    }
    if (r->method == NULL)
        return false;
    split_target(r);
    return parse_framing(r);
}

static void request_free(request *r)
{
    free(r->head);
    free(r->path);
    free(r->query);
}

static uint64_t q_u64(const char *query, const char *key, uint64_t dflt);

/* ---- request bodies, hashed while they stream --------------------------- */

static void hex_digest(const unsigned char *d, size_t n, char *out)
{
    for (size_t i = 0; i < n; i++)
        sprintf(out + 2 * i, "%02x", d[i]);
}

static int64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* With a rate set, sleep until TOTAL bytes are due. */
static void pace(const conn *c, uint64_t total)
{
    if (c->rate == 0)
        return;
    int64_t due = c->body_t0_ms + (int64_t)(total * 1000 / c->rate);
    int64_t now = mono_ms();
    if (due > now) {
        struct timespec ts = {(time_t)((due - now) / 1000), (long)((due - now) % 1000) * 1000000L};
        nanosleep(&ts, NULL);
    }
}

/* Consume N body bytes into the hash. Returns 0 or -1 (EOF, error). */
static int body_take(conn *c, gnutls_hash_hd_t h, uint64_t n, uint64_t *total)
{
    while (n > 0) {
        pace(c, *total);
        if (c->end == c->start && conn_fill(c) <= 0)
            return -1;
        size_t avail = c->end - c->start;
        size_t k = avail < n ? avail : (size_t)n;
        gnutls_hash(h, c->buf + c->start, k);
        c->start += k;
        n -= k;
        *total += k;
    }
    return 0;
}

static int body_chunked(conn *c, gnutls_hash_hd_t h, uint64_t *total)
{
    char line[4096];
    for (int guard = 0; guard < 100000000; guard++) {
        if (conn_line(c, line, sizeof(line)) < 0)
            return -1;
        char *end;
        errno = 0;
        uint64_t size = strtoull(line, &end, 16);
        if (end == line || errno != 0 || (*end != '\0' && *end != ';' && *end != ' '))
            return -1;
        if (size == 0)
            break;
        if (body_take(c, h, size, total) < 0 || conn_line(c, line, sizeof(line)) != 0)
            return -1;
    }
    /* trailer section up to the empty line */
    for (int i = 0; i < 1000; i++) {
        long n = conn_line(c, line, sizeof(line));
        if (n <= 0)
            return (int)n;
    }
    return -1;
}

/* Read the whole request body (if any), filling body_len and body_sha. */
static int body_read(conn *c, request *r)
{
    gnutls_hash_hd_t h;
    unsigned char digest[32];
    int rc = 0;

    if (r->expect_continue && (r->chunked || (r->has_length && r->length > 0))) {
        static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
        if (send_all(c->fd, cont, sizeof(cont) - 1) < 0)
            return -1;
    }
    if (gnutls_hash_init(&h, GNUTLS_DIG_SHA256) < 0)
        return -1;
    c->rate = strncmp(r->path, "/echo", 5) == 0 ? q_u64(r->query, "rate", 0) : 0;
    c->body_t0_ms = mono_ms();
    if (r->chunked)
        rc = body_chunked(c, h, &r->body_len);
    else if (r->has_length)
        rc = body_take(c, h, r->length, &r->body_len);
    gnutls_hash_deinit(h, digest);
    hex_digest(digest, sizeof(digest), r->body_sha);
    return rc;
}

/* ---- responses ----------------------------------------------------------- */

typedef enum framing { FR_LENGTH, FR_CHUNKED, FR_CLOSE, FR_NONE } framing;

/* What a handler asks the connection loop to do next. */
typedef enum next { NEXT_KEEP, NEXT_CLOSE } next;

static const char *reason_phrase(int status)
{
    switch (status) {
    case 200:
        return "OK";
    case 201:
        return "Created";
    case 204:
        return "No Content";
    case 301:
        return "Moved Permanently";
    case 302:
        return "Found";
    case 303:
        return "See Other";
    case 304:
        return "Not Modified";
    case 307:
        return "Temporary Redirect";
    case 308:
        return "Permanent Redirect";
    case 400:
        return "Bad Request";
    case 404:
        return "Not Found";
    case 431:
        return "Request Header Fields Too Large";
    case 500:
        return "Internal Server Error";
    case 502:
        return "Bad Gateway";
    case 503:
        return "Service Unavailable";
    default:
        return "Status";
    }
}

/*
 * Send the head: status line, Server, EXTRA (complete header lines), the
 * framing header, Connection: close when the connection ends after this.
 */
static int head_send(conn *c, const request *r, int status, const dbuf *extra, framing fr,
                     uint64_t length)
{
    dbuf h = {0};
    char date[64];
    time_t now = time(NULL);
    struct tm tm;
    /* An origin with a clock sends Date (RFC 9110 6.6.1); detour must relay it, once. */
    strftime(date, sizeof date, "%a, %d %b %Y %H:%M:%S GMT", gmtime_r(&now, &tm));
    db_printf(&h, "HTTP/1.1 %d %s\r\nServer: dt-origin\r\nDate: %s\r\n", status,
              reason_phrase(status), date);
    if (extra && extra->n)
        db_add(&h, extra->p, extra->n);
    if (fr == FR_LENGTH)
        db_printf(&h, "Content-Length: %llu\r\n", (unsigned long long)length);
    else if (fr == FR_CHUNKED)
        db_printf(&h, "Transfer-Encoding: chunked\r\n");
    if (fr == FR_CLOSE || !r->keep_alive)
        db_printf(&h, "Connection: close\r\n");
    db_add(&h, "\r\n", 2);
    int rc = send_all(c->fd, h.p, h.n);
    free(h.p);
    return rc;
}

static next next_after(const request *r, int rc)
{
    return (rc == 0 && r->keep_alive) ? NEXT_KEEP : NEXT_CLOSE;
}

/* A whole response with a body from memory. */
static next respond(conn *c, const request *r, int status, const dbuf *extra, const char *body,
                    size_t n)
{
    bool bodyless = status == 204 || status == 304 || (status >= 100 && status < 200);
    int rc = head_send(c, r, status, extra, bodyless ? FR_NONE : FR_LENGTH, n);
    if (rc == 0 && !bodyless && !r->head_only && n > 0)
        rc = send_all(c->fd, body, n);
    return next_after(r, rc);
}

static next respond_text(conn *c, const request *r, int status, const char *text)
{
    dbuf extra = {0};
    db_printf(&extra, "Content-Type: text/plain\r\n");
    next nx = respond(c, r, status, &extra, text, strlen(text));
    free(extra.p);
    return nx;
}

/* Pattern bytes [0, n), sized or as chunks of at most IO_BLOCK. */
static int send_pattern(conn *c, uint64_t n, bool chunked)
{
    unsigned char *blk = malloc(IO_BLOCK);
    int rc = blk ? 0 : -1;
    for (uint64_t off = 0; rc == 0 && off < n;) {
        size_t k = (n - off) < IO_BLOCK ? (size_t)(n - off) : IO_BLOCK;
        th_pattern_fill(off, blk, k);
        if (chunked) {
            char sz[32];
            int m = snprintf(sz, sizeof(sz), "%zx\r\n", k);
            rc = send_all(c->fd, sz, (size_t)m);
        }
        if (rc == 0)
            rc = send_all(c->fd, blk, k);
        if (rc == 0 && chunked)
            rc = send_all(c->fd, "\r\n", 2);
        off += k;
    }
    free(blk);
    return rc;
}

/* ---- query strings --------------------------------------------------------- */

/* Raw value of KEY in the query into OUT; false when absent. */
static bool q_get(const char *query, const char *key, char *out, size_t cap)
{
    size_t kn = strlen(key);
    for (const char *p = query; p && *p;) {
        size_t n = strcspn(p, "&");
        if (n > kn && strncmp(p, key, kn) == 0 && p[kn] == '=') {
            size_t vn = n - kn - 1;
            if (vn >= cap)
                vn = cap - 1;
            memcpy(out, p + kn + 1, vn);
            out[vn] = '\0';
            return true;
        }
        p += n + (p[n] == '&');
    }
    return false;
}

static uint64_t q_u64(const char *query, const char *key, uint64_t dflt)
{
    char v[32];
    if (!q_get(query, key, v, sizeof(v)) || v[0] < '0' || v[0] > '9')
        return dflt;
    return strtoull(v, NULL, 10);
}

static void pct_decode(char *s)
{
    char *w = s;
    for (char *p = s; *p; p++) {
        unsigned v;
        if (*p == '%' && sscanf(p + 1, "%2x", &v) == 1 && p[1] && p[2]) {
            *w++ = (char)v;
            p += 2;
        } else {
            *w++ = *p;
        }
    }
    *w = '\0';
}

static void sleep_ms(uint64_t ms)
{
    if (ms > SLOW_MAX_MS)
        ms = SLOW_MAX_MS;
    struct timespec ts = {(time_t)(ms / 1000), (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR && !g_stop)
        ;
}

/* ---- endpoints ----------------------------------------------------------- */

static next ep_echo(conn *c, request *r)
{
    dbuf body = {0}, extra = {0};
    db_printf(&body, "method: %s\ntarget: %s\nversion: %s\n", r->method, r->target, r->version);
    for (size_t i = 0; i < r->nhdr; i++)
        db_printf(&body, "header: %s: %s\n", r->hdr[i].name, r->hdr[i].value);
    db_printf(&body, "body-length: %llu\nbody-sha256: %s\n", (unsigned long long)r->body_len,
              r->body_sha);
    db_printf(&extra,
              "Content-Type: text/plain\r\nX-Origin-Method: %s\r\nX-Origin-Target: %s\r\n"
              "X-Body-Length: %llu\r\nX-Body-Sha256: %s\r\n",
              r->method, r->target, (unsigned long long)r->body_len, r->body_sha);
    next nx = respond(c, r, 200, &extra, body.p, body.n);
    free(body.p);
    free(extra.p);
    return nx;
}

static next ep_bytes(conn *c, request *r)
{
    uint64_t n = q_u64(r->query, "n", 0);
    bool chunked = q_u64(r->query, "chunked", 0) != 0;
    dbuf extra = {0};
    db_printf(&extra, "Content-Type: application/octet-stream\r\n");
    int rc = head_send(c, r, 200, &extra, chunked ? FR_CHUNKED : FR_LENGTH, n);
    free(extra.p);
    if (rc == 0 && !r->head_only) {
        rc = send_pattern(c, n, chunked);
        if (rc == 0 && chunked)
            rc = send_all(c->fd, "0\r\n\r\n", 5);
    }
    return next_after(r, rc);
}

static next ep_status(conn *c, request *r)
{
    int code = atoi(r->path + strlen("/status/"));
    char loc[2048], text[64];
    if (code < 200 || code > 599)
        return respond_text(c, r, 400, "status must be 200-599\n");
    dbuf extra = {0};
    if (q_get(r->query, "location", loc, sizeof(loc))) {
        pct_decode(loc);
        db_printf(&extra, "Location: %s\r\n", loc);
    }
    db_printf(&extra, "Content-Type: text/plain\r\n");
    snprintf(text, sizeof(text), "status %d\n", code);
    next nx = respond(c, r, code, &extra, text, strlen(text));
    free(extra.p);
    return nx;
}

static next ep_cookies(conn *c, request *r)
{
    uint64_t n = q_u64(r->query, "n", 1);
    char text[64];
    dbuf extra = {0};
    if (n > 1000)
        n = 1000;
    for (uint64_t i = 1; i <= n; i++)
        db_printf(&extra, "Set-Cookie: c%llu=v%llu; Path=/\r\n", (unsigned long long)i,
                  (unsigned long long)i);
    db_printf(&extra, "Connection: close-me, X-Private\r\nX-Private: secret\r\n"
                      "Keep-Alive: timeout=5\r\nUpgrade: foo\r\nTrailer: x\r\nX-Kept: yes\r\n"
                      "Content-Type: text/plain\r\n");
    snprintf(text, sizeof(text), "cookies %llu\n", (unsigned long long)n);
    next nx = respond(c, r, 200, &extra, text, strlen(text));
    free(extra.p);
    return nx;
}

static next ep_slow(conn *c, request *r)
{
    uint64_t ms = q_u64(r->query, "ms", 1000);
    dbuf body = {0};
    sleep_ms(ms);
    db_printf(&body, "slept %llu ms\ntarget: %s\n", (unsigned long long)ms, r->target);
    next nx = respond_text(c, r, 200, body.p);
    free(body.p);
    return nx;
}

static next ep_slowbody(conn *c, request *r)
{
    uint64_t ms = q_u64(r->query, "ms", 1000), n = q_u64(r->query, "n", 100);
    int rc = head_send(c, r, 200, NULL, FR_LENGTH, n);
    if (rc == 0 && !r->head_only) {
        sleep_ms(ms);
        rc = send_pattern(c, n, false);
    }
    return next_after(r, rc);
}

static next ep_truncate(conn *c, request *r)
{
    uint64_t cl = q_u64(r->query, "cl", 1000), send = q_u64(r->query, "send", 100);
    if (send >= cl && cl > 0)
        send = cl - 1;
    if (head_send(c, r, 200, NULL, FR_LENGTH, cl) == 0 && !r->head_only)
        send_pattern(c, send, false);
    return NEXT_CLOSE;
}

static next ep_truncate_chunked(conn *c, request *r)
{
    uint64_t send = q_u64(r->query, "send", 100);
    if (head_send(c, r, 200, NULL, FR_CHUNKED, 0) == 0 && !r->head_only)
        send_pattern(c, send, true); /* and never the last chunk */
    return NEXT_CLOSE;
}

static next ep_reset(conn *c, request *r)
{
    struct linger lg = {1, 0};
    setsockopt(c->fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
    return NEXT_CLOSE;
}

static next ep_empty(conn *c, request *r)
{
    return NEXT_CLOSE;
}

static next ep_bigheaders(conn *c, request *r)
{
    uint64_t want = q_u64(r->query, "bytes", 65536);
    dbuf extra = {0};
    char fill[101];
    memset(fill, 'a', 100);
    fill[100] = '\0';
    if (want > 64 * 1024 * 1024)
        want = 64 * 1024 * 1024;
    for (unsigned i = 0; extra.n < want; i++)
        db_printf(&extra, "X-Big-%05u: %s\r\n", i, fill);
    db_printf(&extra, "Content-Type: text/plain\r\n");
    next nx = respond(c, r, 200, &extra, "big\n", 4);
    free(extra.p);
    return nx;
}

static next ep_foldhead(conn *c, request *r)
{
    static const char head[] = "HTTP/1.1 200 OK\r\n folded: x\r\nServer: dt-origin\r\n"
                               "Content-Length: 2\r\n\r\nok";
    return send_all(c->fd, head, r->head_only ? sizeof(head) - 3 : sizeof(head) - 1) == 0
               ? NEXT_KEEP
               : NEXT_CLOSE;
}

static next ep_badframing(conn *c, request *r)
{
    static const char *const heads[] = {
        "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 7\r\n\r\nhello",
        "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
        "5\r\nhello\r\n0\r\n\r\n",
        "HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\nhello",
    };
    uint64_t k = q_u64(r->query, "kind", 1);
    const char *h = heads[k >= 1 && k <= 3 ? k - 1 : 0];
    send_all(c->fd, h, strlen(h));
    return NEXT_CLOSE;
}

static next ep_nolength(conn *c, request *r)
{
    uint64_t n = q_u64(r->query, "n", 100);
    if (head_send(c, r, 200, NULL, FR_CLOSE, 0) == 0 && !r->head_only)
        send_pattern(c, n, false);
    return NEXT_CLOSE;
}

static next ep_head(conn *c, request *r)
{
    return respond_text(c, r, 200, "head endpoint\n");
}

static next ep_nocontent(conn *c, request *r)
{
    return respond(c, r, 204, NULL, NULL, 0);
}

static next ep_notmodified(conn *c, request *r)
{
    dbuf extra = {0};
    db_printf(&extra, "ETag: \"dt-origin\"\r\n");
    next nx = respond(c, r, 304, &extra, NULL, 0);
    free(extra.p);
    return nx;
}

static next respond_html(conn *c, const request *r, int status, const dbuf *more, const char *html)
{
    dbuf extra = {0};
    db_printf(&extra, "Content-Type: text/html; charset=utf-8\r\n");
    if (more && more->n)
        db_add(&extra, more->p, more->n);
    next nx = respond(c, r, status, &extra, html, strlen(html));
    free(extra.p);
    return nx;
}

static next ep_legacy_form(conn *c, request *r)
{
    return respond_html(c, r, 200, NULL,
                        "<!doctype html><html><body><h1>legacy form</h1>\n"
                        "<form method=\"post\" action=\"/legacy/submit\">\n"
                        "<input name=\"item\" value=\"42\"><button type=\"submit\">Send</button>\n"
                        "</form></body></html>\n");
}

static next ep_legacy_submit(conn *c, request *r)
{
    dbuf more = {0};
    db_printf(&more, "Location: /legacy/done\r\n");
    next nx = respond_html(c, r, 302, &more,
                           "<!doctype html><html><body><a href=\"/legacy/done\">done</a>"
                           "</body></html>\n");
    free(more.p);
    return nx;
}

static next ep_legacy_done(conn *c, request *r)
{
    dbuf html = {0};
    db_printf(&html,
              "<!doctype html><html><body><h1>done</h1>\n<p id=\"method\">%s</p>\n"
              "<p id=\"length\">%llu</p>\n<p id=\"sha256\">%s</p>\n</body></html>\n",
              r->method, (unsigned long long)r->body_len, r->body_sha);
    next nx = respond_html(c, r, 200, NULL, html.p);
    free(html.p);
    return nx;
}

static next ep_via(conn *c, request *r)
{
    dbuf body = {0};
    for (size_t i = 0; i < r->nhdr; i++)
        if (strcasecmp(r->hdr[i].name, "Via") == 0)
            db_printf(&body, "via: %s\n", r->hdr[i].value);
    if (body.n == 0)
        db_printf(&body, "via: -\n");
    next nx = respond_text(c, r, 200, body.p);
    free(body.p);
    return nx;
}

static next ep_stats(conn *c, request *r)
{
    dbuf body = {0}, extra = {0};
    unsigned long req = atomic_load(&g_requests), con = atomic_load(&g_connections);
    db_printf(&body, "requests: %lu\nconnections: %lu\nactive: %lu\n", req, con,
              (unsigned long)atomic_load(&g_active));
    db_printf(&extra, "Content-Type: text/plain\r\nX-Requests: %lu\r\nX-Connections: %lu\r\n", req,
              con);
    next nx = respond(c, r, 200, &extra, body.p, body.n);
    free(body.p);
    free(extra.p);
    return nx;
}

typedef struct endpoint {
    const char *path;
    bool prefix;
    next (*fn)(conn *, request *);
} endpoint;

static const endpoint endpoints[] = {
    {"/echo", true, ep_echo},
    {"/bytes", false, ep_bytes},
    {"/status/", true, ep_status},
    {"/cookies", false, ep_cookies},
    {"/slowbody", false, ep_slowbody},
    {"/slow", false, ep_slow},
    {"/truncate-chunked", false, ep_truncate_chunked},
    {"/truncate", false, ep_truncate},
    {"/reset", false, ep_reset},
    {"/empty", false, ep_empty},
    {"/bigheaders", false, ep_bigheaders},
    {"/foldhead", false, ep_foldhead},
    {"/badframing", false, ep_badframing},
    {"/nolength", false, ep_nolength},
    {"/head", false, ep_head},
    {"/nocontent", false, ep_nocontent},
    {"/notmodified", false, ep_notmodified},
    {"/legacy/form", false, ep_legacy_form},
    {"/legacy/submit", false, ep_legacy_submit},
    {"/legacy/done", false, ep_legacy_done},
    {"/via", false, ep_via},
    {"/stats", false, ep_stats},
};

static next dispatch(conn *c, request *r)
{
    for (size_t i = 0; i < sizeof(endpoints) / sizeof(endpoints[0]); i++) {
        const endpoint *e = &endpoints[i];
        bool hit = e->prefix ? strncmp(r->path, e->path, strlen(e->path)) == 0
                             : strcmp(r->path, e->path) == 0;
        if (hit)
            return e->fn(c, r);
    }
    return respond_text(c, r, 404, "no such endpoint\n");
}

/* ---- connections and the listener ---------------------------------------- */

/* One request. Returns NEXT_KEEP to wait for another. */
static next serve_one(conn *c)
{
    request r;
    long head_len = head_wait(c);
    if (head_len == -2) {
        static const char big[] =
            "HTTP/1.1 431 Request Header Fields Too Large\r\n"
            "Server: dt-origin\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
        send_all(c->fd, big, sizeof(big) - 1);
    }
    if (head_len <= 0)
        return NEXT_CLOSE;
    atomic_fetch_add(&g_requests, 1);
    next nx = NEXT_CLOSE;
    if (!request_parse(c, &r, (size_t)head_len)) {
        static const char bad[] = "HTTP/1.1 400 Bad Request\r\nServer: dt-origin\r\n"
                                  "Content-Length: 0\r\nConnection: close\r\n\r\n";
        send_all(c->fd, bad, sizeof(bad) - 1);
    } else if (strcmp(r.path, "/reset") == 0 || strcmp(r.path, "/empty") == 0) {
        nx = dispatch(c, &r); /* before the body: they answer nothing anyway */
    } else if (body_read(c, &r) == 0) {
        nx = dispatch(c, &r);
    }
    request_free(&r);
    return nx;
}

static void *conn_main(void *arg)
{
    conn c = {.fd = (int)(intptr_t)arg};
    c.buf = malloc(BUF_CAP);
    struct timeval tv = {IDLE_TIMEOUT_S, 0};
    int one = 1;
    setsockopt(c.fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    setsockopt(c.fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    setsockopt(c.fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    while (c.buf != NULL && !g_stop && serve_one(&c) == NEXT_KEEP)
        ;
    close(c.fd);
    free(c.buf);
    atomic_fetch_sub(&g_active, 1);
    return NULL;
}

static int listen_on(const char *spec)
{
    struct sockaddr_storage ss = {0};
    socklen_t len;
    char host[128];
    const char *colon = strrchr(spec, ':');
    if (colon == NULL || (size_t)(colon - spec) >= sizeof(host))
        return -1;
    memcpy(host, spec, (size_t)(colon - spec));
    host[colon - spec] = '\0';
    int port = atoi(colon + 1);
    if (host[0] == '[') {
        struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)&ss;
        host[strlen(host) - 1] = '\0';
        a6->sin6_family = AF_INET6;
        a6->sin6_port = htons((uint16_t)port);
        if (inet_pton(AF_INET6, host + 1, &a6->sin6_addr) != 1)
            return -1;
        len = sizeof(*a6);
    } else {
        struct sockaddr_in *a4 = (struct sockaddr_in *)&ss;
        a4->sin_family = AF_INET;
        a4->sin_port = htons((uint16_t)port);
        if (inet_pton(AF_INET, host, &a4->sin_addr) != 1)
            return -1;
        len = sizeof(*a4);
    }
    int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int one = 1;
    if (fd < 0)
        return -1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (bind(fd, (struct sockaddr *)&ss, len) < 0 || listen(fd, 4096) < 0) {
        close(fd);
        return -1;
    }
    return fd;
}

static void on_stop(int sig)
{
    g_stop = 1;
}

static void start_conn_thread(int fd, const pthread_attr_t *attr)
{
    pthread_t t;
    atomic_fetch_add(&g_connections, 1);
    atomic_fetch_add(&g_active, 1);
    if (pthread_create(&t, attr, conn_main, (void *)(intptr_t)fd) != 0) {
        close(fd);
        atomic_fetch_sub(&g_active, 1);
    }
}

static void accept_loop(int lfd)
{
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    pthread_attr_setstacksize(&attr, 256 * 1024);
    while (!g_stop) {
        struct pollfd p = {.fd = lfd, .events = POLLIN};
        if (poll(&p, 1, 100) <= 0)
            continue; /* the timeout lets a SIGTERM between checks be seen */
        int fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
        if (fd >= 0)
            start_conn_thread(fd, &attr);
    }
    pthread_attr_destroy(&attr);
}

static void usage(void)
{
    fprintf(stderr, "usage: dt_origin -l ADDRESS:PORT   (127.0.0.1:8081 or [::1]:8081)\n");
}

int main(int argc, char **argv)
{
    const char *spec = NULL;
    int opt;
    while ((opt = getopt(argc, argv, "l:h")) != -1) {
        if (opt == 'l') {
            spec = optarg;
        } else {
            usage();
            return opt == 'h' ? 0 : 2;
        }
    }
    if (spec == NULL) {
        usage();
        return 2;
    }
    struct sigaction sa = {.sa_handler = on_stop};
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    gnutls_global_init();

    int lfd = listen_on(spec);
    if (lfd < 0) {
        fprintf(stderr, "dt_origin: cannot listen on %s: %s\n", spec, strerror(errno));
        return 1;
    }
    printf("dt_origin: listening on %s\n", spec);
    fflush(stdout);
    accept_loop(lfd);
    close(lfd);
    printf("dt_origin: stopped after %lu requests on %lu connections\n",
           (unsigned long)atomic_load(&g_requests), (unsigned long)atomic_load(&g_connections));
    fflush(stdout);
    /* Connection threads are detached and may be blocked in recv(); exiting
     * the process ends them. */
    _exit(0);
}
