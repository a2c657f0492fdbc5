/*
 * test_redirect_rewrite.c - why rewrite_302 / rewrite_301 exist, shown with
 * libcurl following redirects (CURLOPT_FOLLOWLOCATION) through build/detour
 * to dt_origin's legacy app, each case without and with the rewrite: what
 * the app finally receives (method, body length, SHA-256 of the body).
 *
 * Also: 301 -> 308, GET/HEAD and 303 never rewritten, 307/308 untouched, a
 * route's setting over the global one, the Location rewritten to the
 * client's Host (and left alone, and counted as a leak on /metrics, with
 * rewrite_location = false), a leak named in the error log once per upstream
 * and minute however often it happens, and action=rewrite in the access log.
 *
 * Redirects are only ever followed to 127.0.0.1: a Location naming any other
 * address is checked without following it.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include <cmocka.h>

#include "harness.h"

#define XFER_TIMEOUT_MS 15000L
#define LOG_WAIT_MS 10000
#define BIG_BODY (256 * 1024 + 17) /* several reads, not a round number */

static th_env *env_of(void **state)
{
    return *state;
}

/* ---- detour with the settings under test ---------------------------------------- */

static int g_admin_port;

static int free_port_not(const th_env *e)
{
    for (int i = 0; i < 50; i++) {
        int p = th_free_port();
        if (p > 0 && p != e->port && p != e->origin_port)
            return p;
    }
    return -1;
}

/*
 * Start detour relaying everything to dt_origin ("o"), with GLOBALS at the
 * top level (e.g. "rewrite_302 = true;") and ROUTES (each ending in ",")
 * tried before the catch-all relay route "all". An admin listener serves
 * /metrics; the access log goes to DIR/access.log.
 */
static void start(th_env *e, const char *globals, const char *routes)
{
    g_admin_port = free_port_not(e);
    assert_true(g_admin_port > 0);
    int rc = th_detour_start(e,
                             "listen = \"127.0.0.1:%d\";\n"
                             "admin = \"127.0.0.1:%d\";\n"
                             "access_log = \"%s/access.log\";\n"
                             "workers = 2;\n"
                             "timeouts = { drain_ms = 3000; };\n"
                             "%s\n"
                             "upstreams = { o = { url = \"http://127.0.0.1:%d\"; }; };\n"
                             "routes = (\n%s\n"
                             "  { name = \"all\"; match = { prefix = \"/\"; };\n"
                             "    relay = { upstream = \"o\"; }; }\n"
                             ");\n",
                             e->port, g_admin_port, e->dir, globals ? globals : "", e->origin_port,
                             routes ? routes : "");
    assert_int_equal(rc, 0);
    /* The harness waited for the main listener; the admin one opens just after. */
    assert_int_equal(th_proc_wait_port(&e->detour, g_admin_port, 10000), 0);
}

/* ---- one libcurl transfer, optionally following redirects ------------------------ */

typedef enum body_kind {
    BODY_NONE,   /* no request body */
    BODY_FIELDS, /* CURLOPT_POSTFIELDS: how most code sends a body with libcurl */
    BODY_UPLOAD, /* CURLOPT_UPLOAD with a read and a seek callback (curl -T) */
} body_kind;

typedef struct xreq {
    const char *method; /* NULL: POST (BODY_FIELDS), PUT (BODY_UPLOAD), GET (BODY_NONE) */
    const char *url;
    const char *body;
    size_t body_len;
    body_kind kind;
    bool follow;
    const char *resolve;  /* CURLOPT_RESOLVE "host:port:127.0.0.1", or NULL */
    const char *host_hdr; /* "Host: ..." to send instead of the URL's, or NULL */
} xreq;

/* What came back, and what the legacy app says it received (done page or /echo). */
typedef struct xresp {
    CURLcode rc;
    long status; /* of the last response */
    long redirects;
    char head[8192]; /* the last response head */
    char *body;
    size_t body_len;
    char app_method[32]; /* "" when the last page is neither /legacy/done nor /echo */
    long app_length;
    char app_sha[65];
} xresp;

typedef struct xfer {
    const xreq *rq;
    size_t up_off;
    xresp *out;
} xfer;

static size_t on_head(char *p, size_t size, size_t n, void *ud)
{
    xresp *r = ud;
    size_t len = size * n, have = strlen(r->head);
    if (len >= 5 && memcmp(p, "HTTP/", 5) == 0) {
        r->head[0] = '\0'; /* a new response: keep only the last head */
        have = 0;
    }
    if (have + len < sizeof r->head) {
        memcpy(r->head + have, p, len);
        r->head[have + len] = '\0';
    }
    return len;
}

static size_t on_body(char *p, size_t size, size_t n, void *ud)
{
    xresp *r = ud;
    size_t len = size * n;
    char *grown = realloc(r->body, r->body_len + len + 1);
    if (grown == NULL)
        return 0;
    r->body = grown;
    memcpy(r->body + r->body_len, p, len);
    r->body_len += len;
    r->body[r->body_len] = '\0';
    return len;
}

static size_t on_read(char *buf, size_t size, size_t n, void *ud)
{
    xfer *x = ud;
    size_t k = x->rq->body_len - x->up_off;
    k = k < size * n ? k : size * n;
    memcpy(buf, x->rq->body + x->up_off, k);
    x->up_off += k;
    return k;
}

/* libcurl rewinds the upload here when a 307/308 (or a kept PUT) sends it again. */
static int on_seek(void *ud, curl_off_t off, int origin)
{
    xfer *x = ud;
    if (origin != SEEK_SET || off < 0 || (size_t)off > x->rq->body_len)
        return CURL_SEEKFUNC_FAIL;
    x->up_off = (size_t)off;
    return CURL_SEEKFUNC_OK;
}

static void set_method(CURL *h, xfer *x)
{
    const xreq *rq = x->rq;
    /* What libcurl sends without CURLOPT_CUSTOMREQUEST. */
    const char *natural = rq->kind == BODY_FIELDS   ? "POST"
                          : rq->kind == BODY_UPLOAD ? "PUT"
                                                    : "GET";
    const char *m = rq->method ? rq->method : natural;
    if (rq->kind == BODY_FIELDS) {
        curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)rq->body_len);
        curl_easy_setopt(h, CURLOPT_POSTFIELDS, rq->body);
    } else if (rq->kind == BODY_UPLOAD) {
        curl_easy_setopt(h, CURLOPT_UPLOAD, 1L);
        curl_easy_setopt(h, CURLOPT_READFUNCTION, on_read);
        curl_easy_setopt(h, CURLOPT_READDATA, x);
        curl_easy_setopt(h, CURLOPT_SEEKFUNCTION, on_seek);
        curl_easy_setopt(h, CURLOPT_SEEKDATA, x);
        curl_easy_setopt(h, CURLOPT_INFILESIZE_LARGE, (curl_off_t)rq->body_len);
    }
    if (strcmp(m, "HEAD") == 0)
        curl_easy_setopt(h, CURLOPT_NOBODY, 1L);
    else if (strcmp(m, natural) != 0)
        curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, m);
}

/* The method, length and digest the app printed: /legacy/done HTML or /echo text. */
static void parse_app(xresp *r)
{
    const char *b = r->body ? r->body : "";
    const char *m = strstr(b, "<p id=\"method\">"), *l = strstr(b, "<p id=\"length\">");
    const char *s = strstr(b, "<p id=\"sha256\">");
    r->app_method[0] = r->app_sha[0] = '\0';
    r->app_length = -1;
    if (m && l && s) {
        sscanf(m, "<p id=\"method\">%31[^<]", r->app_method);
        sscanf(l, "<p id=\"length\">%ld", &r->app_length);
        sscanf(s, "<p id=\"sha256\">%64[0-9a-f]", r->app_sha);
        return;
    }
    m = strstr(b, "method: ");
    l = strstr(b, "\nbody-length: ");
    s = strstr(b, "\nbody-sha256: ");
    if (m == b && l && s) {
        sscanf(m, "method: %31s", r->app_method);
        sscanf(l, "\nbody-length: %ld", &r->app_length);
        sscanf(s, "\nbody-sha256: %64s", r->app_sha);
    }
}

static void perform(const xreq *rq, xresp *out)
{
    xfer x = {.rq = rq, .out = out};
    struct curl_slist *hdrs = NULL, *res = NULL;
    CURL *h = curl_easy_init();
    assert_non_null(h);
    memset(out, 0, sizeof *out);
    curl_easy_setopt(h, CURLOPT_URL, rq->url);
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, XFER_TIMEOUT_MS);
    curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS, 5000L);
    curl_easy_setopt(h, CURLOPT_FOLLOWLOCATION, rq->follow ? 1L : 0L);
    curl_easy_setopt(h, CURLOPT_MAXREDIRS, 5L);
    curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "http");
    curl_easy_setopt(h, CURLOPT_REDIR_PROTOCOLS_STR, "http");
    curl_easy_setopt(h, CURLOPT_HEADERFUNCTION, on_head);
    curl_easy_setopt(h, CURLOPT_HEADERDATA, out);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, out);
    /* No "Expect: 100-continue" pause: every request looks like a browser's. */
    hdrs = curl_slist_append(hdrs, "Expect:");
    if (rq->host_hdr)
        hdrs = curl_slist_append(hdrs, rq->host_hdr);
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, hdrs);
    if (rq->resolve) {
        res = curl_slist_append(NULL, rq->resolve);
        curl_easy_setopt(h, CURLOPT_RESOLVE, res);
    }
    set_method(h, &x);
    out->rc = curl_easy_perform(h);
    curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &out->status);
    curl_easy_getinfo(h, CURLINFO_REDIRECT_COUNT, &out->redirects);
    curl_easy_cleanup(h);
    curl_slist_free_all(hdrs);
    curl_slist_free_all(res);
    parse_app(out);
}

static void xresp_free(xresp *r)
{
    free(r->body);
    r->body = NULL;
}

/* Value of header NAME in the last head, "" when absent. */
static const char *last_hdr(const xresp *r, const char *name, char *out, size_t cap)
{
    const char *v = th_head_header(r->head, name, out, cap);
    return v ? v : (out[0] = '\0', out);
}

static void expect_done(const xresp *r)
{
    if (r->rc != CURLE_OK || r->status != 200 || r->app_method[0] == '\0')
        fail_msg("transfer: curl %d (%s), status %ld, body:\n%s", r->rc, curl_easy_strerror(r->rc),
                 r->status, r->body ? r->body : "(none)");
}

/* The app received METHOD with exactly BODY (NULL, 0: no body). */
static void expect_app_got(const xresp *r, const char *method, const char *body, size_t len)
{
    char sha[65];
    expect_done(r);
    th_sha256_hex(body ? body : "", len, sha);
    if (strcmp(r->app_method, method) != 0 || r->app_length != (long)len ||
        strcmp(r->app_sha, sha) != 0)
        fail_msg("the app received %s with %ld bytes (sha256 %s), expected %s with %zu bytes "
                 "(sha256 %s)",
                 r->app_method, r->app_length, r->app_sha, method, len, sha);
}

static char *big_body(void)
{
    char *b = malloc(BIG_BODY);
    assert_non_null(b);
    th_pattern_fill(0, (unsigned char *)b, BIG_BODY);
    return b;
}

static void url(char *out, size_t cap, const th_env *e, const char *path)
{
    snprintf(out, cap, "%s%s", e->url, path);
}

/* One request without following: the status and Location detour answered. */
static long status_of(th_env *e, const char *method, const char *path, body_kind kind,
                      const char *host_hdr, char *location, size_t cap)
{
    char u[512];
    xresp r;
    url(u, sizeof u, e, path);
    xreq rq = {.method = method,
               .url = u,
               .kind = kind,
               .body = "item=42",
               .body_len = 7,
               .host_hdr = host_hdr};
    perform(&rq, &r);
    if (r.rc != CURLE_OK)
        fail_msg("%s %s: curl %s", method, path, curl_easy_strerror(r.rc));
    if (location)
        last_hdr(&r, "Location", location, cap);
    long st = r.status;
    xresp_free(&r);
    return st;
}

/* ---- the metrics and the access log ---------------------------------------------- */

/* The value of the /metrics sample starting with SERIES (name and labels); 0 when absent. */
static unsigned long long metric(const char *series)
{
    char u[128];
    th_resp rs;
    unsigned long long v = 0;
    snprintf(u, sizeof u, "http://127.0.0.1:%d/metrics", g_admin_port);
    th_req rq = {.url = u, .keep_body = true};
    assert_int_equal(th_http(&rq, &rs), 0);
    assert_int_equal(rs.status, 200);
    size_t n = strlen(series);
    for (const char *line = rs.body; line && *line; line = strchr(line, '\n')) {
        line += *line == '\n';
        if (strncmp(line, series, n) == 0 && line[n] == ' ')
            v = strtoull(line + n + 1, NULL, 10);
    }
    th_resp_free(&rs);
    return v;
}

/*
 * detour_requests_total counts a request when libmicrohttpd reports it
 * complete, just after the last byte went out: the client can read the answer
 * and scrape before the worker has counted it. Scrape until SERIES reaches
 * WANT (bounded); returns the last value seen.
 */
static unsigned long long metric_reaches(const char *series, unsigned long long want)
{
    unsigned long long v;
    for (int64_t deadline = th_now_ms() + 3000;
         (v = metric(series)) < want && th_now_ms() < deadline;)
        th_sleep_ms(20);
    return v;
}

/* Wait (bounded) until the access log has a line containing every one of WANT[]. */
static bool access_log_has(th_env *e, const char *const *want, char *line_out, size_t cap)
{
    char path[TH_PATH_MAX], line[4096];
    snprintf(path, sizeof path, "%s/access.log", e->dir);
    for (int64_t deadline = th_now_ms() + LOG_WAIT_MS; th_now_ms() < deadline; th_sleep_ms(50)) {
        FILE *f = fopen(path, "r");
        while (f && fgets(line, sizeof line, f)) {
            bool all = true;
            for (size_t i = 0; want[i] && all; i++)
                all = strstr(line, want[i]) != NULL;
            if (all) {
                snprintf(line_out, cap, "%s", line);
                fclose(f);
                return true;
            }
        }
        if (f)
            fclose(f);
    }
    return false;
}

/* ---- POST answered with 302: what libcurl makes of it --------------------------------- */

/* Without the rewrite libcurl follows a 302 with GET and drops the body (RFC 9110 15.4.3). */
static void test_libcurl_post_302_without_rewrite(void **state)
{
    th_env *e = env_of(state);
    char u[256], loc[512];
    xresp r;
    char *body = big_body();
    start(e, "rewrite_302 = false;", NULL);

    assert_int_equal(status_of(e, "POST", "/legacy/submit", BODY_FIELDS, NULL, loc, sizeof loc),
                     302);
    assert_string_equal(loc, "/legacy/done");

    url(u, sizeof u, e, "/legacy/submit");
    xreq rq = {.url = u, .body = body, .body_len = BIG_BODY, .kind = BODY_FIELDS, .follow = true};
    perform(&rq, &r);
    assert_int_equal(r.redirects, 1);
    expect_app_got(&r, "GET", NULL, 0);
    xresp_free(&r);
    free(body);
}

/* With it the 302 reaches libcurl as 307, which repeats the POST with its body. */
static void test_libcurl_post_302_with_rewrite(void **state)
{
    th_env *e = env_of(state);
    char u[256], v[256];
    xresp r;
    char *body = big_body();
    start(e, "rewrite_302 = true;", NULL);

    /* The 307 is the upstream's answer with only the status changed. */
    url(u, sizeof u, e, "/legacy/submit");
    xreq one = {.url = u, .body = "item=42", .body_len = 7, .kind = BODY_FIELDS};
    perform(&one, &r);
    assert_int_equal(r.rc, CURLE_OK);
    assert_int_equal(r.status, 307);
    assert_string_equal(last_hdr(&r, "Location", v, sizeof v), "/legacy/done");
    assert_string_equal(last_hdr(&r, "Content-Type", v, sizeof v), "text/html; charset=utf-8");
    assert_string_equal(last_hdr(&r, "Server", v, sizeof v), "dt-origin");
    th_assert_contains(r.body, "<a href=\"/legacy/done\">done</a>");
    xresp_free(&r);

    xreq rq = {.url = u, .body = body, .body_len = BIG_BODY, .kind = BODY_FIELDS, .follow = true};
    perform(&rq, &r);
    assert_int_equal(r.redirects, 1);
    expect_app_got(&r, "POST", body, BIG_BODY);
    xresp_free(&r);

    /* A small urlencoded form, as a browser would send it. */
    xreq form = {.url = u, .body = "item=42", .body_len = 7, .kind = BODY_FIELDS, .follow = true};
    perform(&form, &r);
    expect_app_got(&r, "POST", "item=42", 7);
    xresp_free(&r);
    free(body);
}

/* ---- PUT and DELETE --------------------------------------------------------------- */

/*
 * Browsers keep PUT and DELETE on a 302 (the Fetch standard changes only
 * POST). libcurl keeps the method string of CURLOPT_CUSTOMREQUEST but, for a
 * body given with CURLOPT_POSTFIELDS, drops the body on a 301/302 as for a
 * POST: the app gets a PUT without its body. A CURLOPT_UPLOAD PUT keeps both
 * when libcurl can rewind the upload.
 */
static void test_put_delete_without_rewrite(void **state)
{
    th_env *e = env_of(state);
    char u[256];
    xresp r;
    start(e, NULL, NULL); /* rewrite_302 defaults to false */
    url(u, sizeof u, e, "/legacy/submit");

    xreq put = {.method = "PUT",
                .url = u,
                .body = "{\"qty\":3}",
                .body_len = 9,
                .kind = BODY_FIELDS,
                .follow = true};
    perform(&put, &r);
    expect_app_got(&r, "PUT", NULL, 0);
    xresp_free(&r);

    xreq del = {.method = "DELETE",
                .url = u,
                .body = "id=7",
                .body_len = 4,
                .kind = BODY_FIELDS,
                .follow = true};
    perform(&del, &r);
    expect_app_got(&r, "DELETE", NULL, 0);
    xresp_free(&r);

    xreq upload = {
        .url = u, .body = "{\"qty\":3}", .body_len = 9, .kind = BODY_UPLOAD, .follow = true};
    perform(&upload, &r);
    expect_app_got(&r, "PUT", "{\"qty\":3}", 9);
    xresp_free(&r);
}

static void test_put_delete_with_rewrite(void **state)
{
    th_env *e = env_of(state);
    char u[256];
    xresp r;
    char *body = big_body();
    start(e, "rewrite_302 = true;", NULL);
    url(u, sizeof u, e, "/legacy/submit");

    assert_int_equal(status_of(e, "PUT", "/legacy/submit", BODY_FIELDS, NULL, NULL, 0), 307);
    assert_int_equal(status_of(e, "DELETE", "/legacy/submit", BODY_NONE, NULL, NULL, 0), 307);

    xreq put = {.method = "PUT",
                .url = u,
                .body = body,
                .body_len = BIG_BODY,
                .kind = BODY_FIELDS,
                .follow = true};
    perform(&put, &r);
    expect_app_got(&r, "PUT", body, BIG_BODY);
    xresp_free(&r);

    xreq del = {.method = "DELETE",
                .url = u,
                .body = "id=7",
                .body_len = 4,
                .kind = BODY_FIELDS,
                .follow = true};
    perform(&del, &r);
    expect_app_got(&r, "DELETE", "id=7", 4);
    xresp_free(&r);

    xreq bare = {.method = "DELETE", .url = u, .kind = BODY_NONE, .follow = true};
    perform(&bare, &r);
    expect_app_got(&r, "DELETE", NULL, 0);
    xresp_free(&r);

    xreq upload = {
        .url = u, .body = body, .body_len = BIG_BODY, .kind = BODY_UPLOAD, .follow = true};
    perform(&upload, &r);
    expect_app_got(&r, "PUT", body, BIG_BODY);
    xresp_free(&r);

    xreq patch = {.method = "PATCH",
                  .url = u,
                  .body = "x=1",
                  .body_len = 3,
                  .kind = BODY_FIELDS,
                  .follow = true};
    perform(&patch, &r);
    expect_app_got(&r, "PATCH", "x=1", 3);
    xresp_free(&r);
    free(body);
}

/* ---- 301 -> 308 --------------------------------------------------------------------- */

#define MOVED "/status/301?location=/legacy/done"

static void test_301_without_rewrite(void **state)
{
    th_env *e = env_of(state);
    char u[256];
    xresp r;
    start(e, "rewrite_302 = true;", NULL); /* 302 only: a 301 stays a 301 */
    assert_int_equal(status_of(e, "POST", MOVED, BODY_FIELDS, NULL, NULL, 0), 301);
    url(u, sizeof u, e, MOVED);
    xreq rq = {.url = u, .body = "item=42", .body_len = 7, .kind = BODY_FIELDS, .follow = true};
    perform(&rq, &r);
    expect_app_got(&r, "GET", NULL, 0);
    xresp_free(&r);
}

static void test_301_with_rewrite(void **state)
{
    th_env *e = env_of(state);
    char u[256], loc[256];
    xresp r;
    char *body = big_body();
    start(e, "rewrite_301 = true;", NULL);
    assert_int_equal(status_of(e, "POST", MOVED, BODY_FIELDS, NULL, loc, sizeof loc), 308);
    assert_string_equal(loc, "/legacy/done");
    /* rewrite_301 alone leaves a 302 alone. */
    assert_int_equal(status_of(e, "POST", "/legacy/submit", BODY_FIELDS, NULL, NULL, 0), 302);

    url(u, sizeof u, e, MOVED);
    xreq rq = {.url = u, .body = body, .body_len = BIG_BODY, .kind = BODY_FIELDS, .follow = true};
    perform(&rq, &r);
    expect_app_got(&r, "POST", body, BIG_BODY);
    xresp_free(&r);
    free(body);
}

/* ---- what is never rewritten -------------------------------------------------------- */

static void test_get_head_303_never(void **state)
{
    th_env *e = env_of(state);
    char u[256];
    xresp r;
    start(e, "rewrite_302 = true;\nrewrite_301 = true;", NULL);

    assert_int_equal(status_of(e, "GET", "/legacy/submit", BODY_NONE, NULL, NULL, 0), 302);
    assert_int_equal(status_of(e, "HEAD", "/legacy/submit", BODY_NONE, NULL, NULL, 0), 302);
    assert_int_equal(status_of(e, "GET", MOVED, BODY_NONE, NULL, NULL, 0), 301);
    assert_int_equal(status_of(e, "HEAD", MOVED, BODY_NONE, NULL, NULL, 0), 301);
    /* 303 says "GET the answer over there": a POST must become a GET. */
    assert_int_equal(
        status_of(e, "POST", "/status/303?location=/legacy/done", BODY_FIELDS, NULL, NULL, 0), 303);
    url(u, sizeof u, e, "/status/303?location=/legacy/done");
    xreq rq = {.url = u, .body = "item=42", .body_len = 7, .kind = BODY_FIELDS, .follow = true};
    perform(&rq, &r);
    expect_app_got(&r, "GET", NULL, 0);
    xresp_free(&r);
    /* Already method-preserving, or not a redirect at all. */
    assert_int_equal(status_of(e, "POST", "/status/307?location=/x", BODY_FIELDS, NULL, NULL, 0),
                     307);
    assert_int_equal(status_of(e, "POST", "/status/308?location=/x", BODY_FIELDS, NULL, NULL, 0),
                     308);
    assert_int_equal(status_of(e, "POST", "/status/200", BODY_FIELDS, NULL, NULL, 0), 200);
    /* A GET followed through a 302 is an ordinary GET. */
    url(u, sizeof u, e, "/legacy/submit");
    xreq get = {.url = u, .follow = true};
    perform(&get, &r);
    expect_app_got(&r, "GET", NULL, 0);
    xresp_free(&r);
}

/* ---- a route's setting wins over the global one --------------------------------------- */

static void test_route_overrides_global(void **state)
{
    th_env *e = env_of(state);
    char u[256], resolve[128];
    xresp r;
    /* Globally on; the route for strict.test turns it off, fixed.test turns 301 on. */
    start(e, "rewrite_302 = true;",
          "  { name = \"strict\"; match = { host = \"strict.test\"; };\n"
          "    relay = { upstream = \"o\"; rewrite_302 = false; }; },\n"
          "  { name = \"fixed\"; match = { host = \"fixed.test\"; };\n"
          "    relay = { upstream = \"o\"; rewrite_301 = true; }; },");

    assert_int_equal(status_of(e, "POST", "/legacy/submit", BODY_FIELDS, NULL, NULL, 0), 307);
    assert_int_equal(
        status_of(e, "POST", "/legacy/submit", BODY_FIELDS, "Host: strict.test", NULL, 0), 302);
    assert_int_equal(
        status_of(e, "POST", "/legacy/submit", BODY_FIELDS, "Host: fixed.test", NULL, 0), 307);
    assert_int_equal(status_of(e, "POST", MOVED, BODY_FIELDS, "Host: fixed.test", NULL, 0), 308);
    assert_int_equal(status_of(e, "POST", MOVED, BODY_FIELDS, NULL, NULL, 0), 301);

    /* End to end through the route that turned it off: the body is lost again. */
    snprintf(u, sizeof u, "http://strict.test:%d/legacy/submit", e->port);
    snprintf(resolve, sizeof resolve, "strict.test:%d:127.0.0.1", e->port);
    xreq rq = {.url = u,
               .body = "item=42",
               .body_len = 7,
               .kind = BODY_FIELDS,
               .follow = true,
               .resolve = resolve};
    perform(&rq, &r);
    expect_app_got(&r, "GET", NULL, 0);
    xresp_free(&r);
}

static void test_route_turns_it_on(void **state)
{
    th_env *e = env_of(state);
    char u[256], resolve[128];
    xresp r;
    start(e, "rewrite_302 = false;",
          "  { name = \"fixed\"; match = { host = \"fixed.test\"; };\n"
          "    relay = { upstream = \"o\"; rewrite_302 = true; }; },");

    assert_int_equal(status_of(e, "POST", "/legacy/submit", BODY_FIELDS, NULL, NULL, 0), 302);
    assert_int_equal(
        status_of(e, "POST", "/legacy/submit", BODY_FIELDS, "Host: fixed.test", NULL, 0), 307);

    snprintf(u, sizeof u, "http://fixed.test:%d/legacy/submit", e->port);
    snprintf(resolve, sizeof resolve, "fixed.test:%d:127.0.0.1", e->port);
    xreq rq = {.url = u,
               .body = "item=42",
               .body_len = 7,
               .kind = BODY_FIELDS,
               .follow = true,
               .resolve = resolve};
    perform(&rq, &r);
    expect_app_got(&r, "POST", "item=42", 7);
    xresp_free(&r);
}

/* ---- Location rewriting and leaks ------------------------------------------------------- */

/* /status/302 answering with an absolute Location on the origin itself. */
static void origin_redirect_path(const th_env *e, const char *to, char *out, size_t cap)
{
    snprintf(out, cap, "/status/302?location=http%%3A%%2F%%2F127.0.0.1%%3A%d%s", e->origin_port,
             to);
}

static void test_location_rewritten_to_client_host(void **state)
{
    th_env *e = env_of(state);
    char path[256], u[512], resolve[128], want[256], loc[512], v[256];
    xresp r;
    start(e, "rewrite_302 = true;", NULL);
    origin_redirect_path(e, "/echo/after", path, sizeof path);

    /* The client asked for shop.test:PORT: that is where the Location sends it back to. */
    assert_int_equal(
        status_of(e, "POST", path, BODY_FIELDS, "Host: shop.test:8443", loc, sizeof loc), 307);
    assert_string_equal(loc, "http://shop.test:8443/echo/after");
    assert_int_equal(status_of(e, "GET", path, BODY_NONE, "Host: shop.test", loc, sizeof loc), 302);
    assert_string_equal(loc, "http://shop.test/echo/after");

    /* Followed for real: the POST comes back through detour (Via), body intact. */
    snprintf(u, sizeof u, "http://shop.test:%d%s", e->port, path);
    snprintf(resolve, sizeof resolve, "shop.test:%d:127.0.0.1", e->port);
    xreq rq = {.url = u,
               .body = "item=42",
               .body_len = 7,
               .kind = BODY_FIELDS,
               .follow = true,
               .resolve = resolve};
    perform(&rq, &r);
    expect_app_got(&r, "POST", "item=42", 7);
    th_assert_contains(r.body, "header: Via: 1.1 detour\n");
    snprintf(want, sizeof want, "header: Host: shop.test:%d\n", e->port);
    th_assert_contains(r.body, want);
    assert_string_equal(last_hdr(&r, "Via", v, sizeof v), "1.1 detour");
    xresp_free(&r);
    assert_int_equal(metric("detour_location_leaks_total{upstream=\"o\"}"), 0);
}

static void test_location_kept_and_counted_as_leak(void **state)
{
    th_env *e = env_of(state);
    char path[256], want[256], loc[512], u[512];
    xresp r;
    start(e, "rewrite_302 = true;",
          "  { name = \"raw\"; match = { host = \"raw.test\"; };\n"
          "    relay = { upstream = \"o\"; rewrite_location = false; }; },");
    origin_redirect_path(e, "/echo/after", path, sizeof path);
    assert_int_equal(metric("detour_location_leaks_total{upstream=\"o\"}"), 0);

    /* rewrite_location = false: the origin's own address reaches the client. */
    snprintf(want, sizeof want, "http://127.0.0.1:%d/echo/after", e->origin_port);
    assert_int_equal(status_of(e, "POST", path, BODY_FIELDS, "Host: raw.test", loc, sizeof loc),
                     307);
    assert_string_equal(loc, want);
    assert_int_equal(metric("detour_location_leaks_total{upstream=\"o\"}"), 1);

    /* And the client then bypasses detour: the origin sees no Via. */
    snprintf(u, sizeof u, "%s%s", e->url, path);
    xreq rq = {.url = u,
               .body = "item=42",
               .body_len = 7,
               .kind = BODY_FIELDS,
               .follow = true,
               .host_hdr = "Host: raw.test"};
    perform(&rq, &r);
    expect_app_got(&r, "POST", "item=42", 7);
    if (strstr(r.body, "header: Via:") != NULL)
        fail_msg("the follow-up went through detour:\n%s", r.body);
    xresp_free(&r);
    assert_int_equal(metric("detour_location_leaks_total{upstream=\"o\"}"), 2);

    /* Rewritten ones (the default route) are not leaks. */
    assert_int_equal(status_of(e, "POST", path, BODY_FIELDS, NULL, loc, sizeof loc), 307);
    snprintf(want, sizeof want, "http://127.0.0.1:%d/echo/after", e->port);
    assert_string_equal(loc, want);
    /* An internal address that is not the upstream: kept (never followed here), a leak. */
    assert_int_equal(status_of(e, "GET", "/status/302?location=http%3A%2F%2F10.0.0.9%2Fadmin",
                               BODY_NONE, NULL, loc, sizeof loc),
                     302);
    assert_string_equal(loc, "http://10.0.0.9/admin");
    /* A public one: kept, not a leak. */
    assert_int_equal(status_of(e, "GET", "/status/302?location=https%3A%2F%2Fwww.example.org%2F",
                               BODY_NONE, NULL, loc, sizeof loc),
                     302);
    assert_string_equal(loc, "https://www.example.org/");
    assert_int_equal(metric("detour_location_leaks_total{upstream=\"o\"}"), 3);
}

/* Lines of detour's error log containing NEEDLE. */
static int err_lines_with(const th_env *e, const char *needle)
{
    char line[4096];
    int n = 0;
    FILE *f = fopen(e->detour.err_path, "r");
    while (f && fgets(line, sizeof line, f))
        n += strstr(line, needle) != NULL;
    if (f)
        fclose(f);
    return n;
}

/* Every leak is counted; the error log names it once per upstream and minute. */
static void test_leak_logged_once_per_minute(void **state)
{
    th_env *e = env_of(state);
    char loc[256];
    const char *line = "warning: upstream o: Location \"http://10.0.0.9/admin\" names an internal "
                       "origin and reaches the client unchanged";
    start(e, NULL, NULL);
    for (int i = 0; i < 5; i++)
        assert_int_equal(status_of(e, "GET", "/status/302?location=http%3A%2F%2F10.0.0.9%2Fadmin",
                                   BODY_NONE, NULL, loc, sizeof loc),
                         302);
    assert_int_equal(metric("detour_location_leaks_total{upstream=\"o\"}"), 5);
    for (int64_t end = th_now_ms() + LOG_WAIT_MS;
         err_lines_with(e, line) == 0 && th_now_ms() < end;)
        th_sleep_ms(50);
    th_sleep_ms(200); /* a second line, if any, would be written by now */
    if (err_lines_with(e, line) != 1) {
        th_proc_dump(&e->detour, 4000);
        fail_msg("%d leak lines in the error log, expected exactly 1", err_lines_with(e, line));
    }
    assert_int_equal(err_lines_with(e, "names an internal origin"), 1);
}

/* ---- the access log and the rewrite counters ------------------------------------------- */

static void test_access_log_and_counters(void **state)
{
    th_env *e = env_of(state);
    char line[4096];
    start(e, "rewrite_302 = true;\nrewrite_301 = true;", NULL);
    assert_int_equal(metric("detour_rewrites_total{from=\"302\",to=\"307\"}"), 0);

    assert_int_equal(status_of(e, "POST", "/legacy/submit", BODY_FIELDS, NULL, NULL, 0), 307);
    assert_int_equal(status_of(e, "PUT", "/legacy/submit", BODY_FIELDS, NULL, NULL, 0), 307);
    assert_int_equal(status_of(e, "POST", MOVED, BODY_FIELDS, NULL, NULL, 0), 308);
    assert_int_equal(status_of(e, "GET", "/legacy/submit", BODY_NONE, NULL, NULL, 0), 302);

    assert_int_equal(metric("detour_rewrites_total{from=\"302\",to=\"307\"}"), 2);
    assert_int_equal(metric("detour_rewrites_total{from=\"301\",to=\"308\"}"), 1);
    assert_int_equal(
        metric_reaches("detour_requests_total{route=\"all\",action=\"rewrite\",code=\"307\"}", 2),
        2);
    assert_int_equal(
        metric_reaches("detour_requests_total{route=\"all\",action=\"rewrite\",code=\"308\"}", 1),
        1);
    assert_int_equal(
        metric_reaches("detour_requests_total{route=\"all\",action=\"relay\",code=\"302\"}", 1), 1);

    const char *const post[] = {"\"POST /legacy/submit HTTP/1.1\" 307 ", "route=all",
                                "action=rewrite", NULL};
    if (!access_log_has(e, post, line, sizeof line))
        fail_msg("no access log line for the rewritten POST");
    const char *const moved[] = {"\"POST " MOVED " HTTP/1.1\" 308 ", "action=rewrite", NULL};
    if (!access_log_has(e, moved, line, sizeof line))
        fail_msg("no access log line for the rewritten 301");
    const char *const get[] = {"\"GET /legacy/submit HTTP/1.1\" 302 ", "action=relay", NULL};
    if (!access_log_has(e, get, line, sizeof line))
        fail_msg("no access log line for the GET");
}

int main(void)
{
#define T(f) cmocka_unit_test_setup_teardown(f, th_it_setup, th_it_teardown)
    const struct CMUnitTest tests[] = {
        T(test_libcurl_post_302_without_rewrite),
        T(test_libcurl_post_302_with_rewrite),
        T(test_put_delete_without_rewrite),
        T(test_put_delete_with_rewrite),
        T(test_301_without_rewrite),
        T(test_301_with_rewrite),
        T(test_get_head_303_never),
        T(test_route_overrides_global),
        T(test_route_turns_it_on),
        T(test_location_rewritten_to_client_host),
        T(test_location_kept_and_counted_as_leak),
        T(test_leak_logged_once_per_minute),
        T(test_access_log_and_counters),
    };
#undef T
    curl_global_init(CURL_GLOBAL_DEFAULT);
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    curl_global_cleanup();
    return rc;
}
