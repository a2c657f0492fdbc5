/*
 * test_forward.c - build/detour as an HTTP proxy (mode = "forward") in front
 * of a real dt_origin: absolute-form requests relayed to their own origin
 * with Host replaced by the target's authority, routes applied to them,
 * CONNECT tunnels driven by curl --proxytunnel and by raw sockets (the 200
 * head, malformed lines, 403/431/408/502/504/508, bulk transfers with
 * backpressure, close propagation, orderly close while a peer still sends
 * and its time bound, idle timeout), access control with and
 * without a forward block, loops, and Max-Forwards for TRACE and OPTIONS in
 * the forward, reverse and transparent modes (transparent here without
 * kernel redirection, so the Host header decides; the redirected case is
 * test_transparent.sh).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <errno.h>
#include <ifaddrs.h>
#include <net/if.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <sys/socket.h>

#include <cmocka.h>

#include "harness.h"

#define MIB (1024ULL * 1024)

static th_env *env_of(void **state)
{
    return *state;
}

/* ---- starting detour ---------------------------------------------------------- */

/*
 * Forward mode on 127.0.0.1:e->port. TIMEOUTS: inside of the timeouts group;
 * FORWARD: inside of the forward block (NULL: no block at all); REST: more
 * top-level settings (upstreams, routes). Any may be NULL.
 */
static void start_forward(th_env *e, const char *timeouts, const char *forward, const char *rest)
{
    int rc = th_detour_start(e,
                             "listen = \"127.0.0.1:%d\";\n"
                             "mode = \"forward\";\n"
                             "workers = 2;\n"
                             "timeouts = { drain_ms = 3000; %s };\n"
                             "%s%s%s"
                             "%s\n",
                             e->port, timeouts ? timeouts : "", forward ? "forward = { " : "",
                             forward ? forward : "", forward ? " };\n" : "", rest ? rest : "");
    assert_int_equal(rc, 0);
}

/* Forward mode with CONNECT allowed to dt_origin's port. */
static void start_tunnels(th_env *e, const char *timeouts)
{
    char fw[128];
    snprintf(fw, sizeof(fw), "connect_ports = [443, %d];", e->origin_port);
    start_forward(e, timeouts, fw, NULL);
}

/* ---- requests through the proxy --------------------------------------------------- */

/*
 * Perform RQ with detour as curl's proxy (absolute-form), or through a
 * CONNECT tunnel when TUNNEL. *CONNECT_CODE (may be NULL) gets the status of
 * the CONNECT answer. Returns 0 when curl completed.
 */
static int via_proxy(th_env *e, const th_req *rq, bool tunnel, th_resp *rs, long *connect_code)
{
    th_xfer x;
    if (th_xfer_init(&x, rq) < 0) {
        memset(rs, 0, sizeof(*rs));
        rs->rc = CURLE_FAILED_INIT;
        return -1;
    }
    curl_easy_setopt(x.easy, CURLOPT_PROXY, e->url);
    curl_easy_setopt(x.easy, CURLOPT_NOPROXY, "");
    curl_easy_setopt(x.easy, CURLOPT_HTTPPROXYTUNNEL, tunnel ? 1L : 0L);
    CURLcode rc = curl_easy_perform(x.easy);
    th_xfer_done(&x, rc);
    if (connect_code != NULL) {
        *connect_code = 0;
        curl_easy_getinfo(x.easy, CURLINFO_HTTP_CONNECTCODE, connect_code);
    }
    th_xfer_cleanup(&x);
    *rs = x.resp;
    return rc == CURLE_OK ? 0 : -1;
}

static th_resp proxy_get(th_env *e, const char *url, const char *const *headers)
{
    th_resp rs;
    th_req rq = {.url = url, .headers = headers, .keep_body = true, .timeout_ms = 10000};
    via_proxy(e, &rq, false, &rs, NULL);
    return rs;
}

static void expect_status(const th_resp *rs, long status)
{
    if (rs->status != status)
        fail_msg("status %ld (curl: %s), expected %ld", rs->status,
                 rs->rc == CURLE_OK ? "ok" : rs->err, status);
}

/* The value of NAME as dt_origin's /echo saw it, or fail. */
static void expect_echo_header(const th_resp *rs, const char *name, const char *want)
{
    char v[512];
    if (th_echo_header(rs->body, name, 0, v, sizeof(v)) == NULL)
        fail_msg("the origin saw no %s header:\n%s", name, rs->body ? rs->body : "(no body)");
    if (strcmp(v, want) != 0)
        fail_msg("the origin saw %s: %s, expected %s", name, v, want);
}

static void expect_no_echo_header(const th_resp *rs, const char *name)
{
    char v[512];
    if (th_echo_header(rs->body, name, 0, v, sizeof(v)) != NULL)
        fail_msg("the origin saw %s: %s, expected none", name, v);
}

/* ---- raw sockets ---------------------------------------------------------------------- */

/* Read a response head byte by byte (never past it) into BUF. Returns its length or -1. */
static long read_head(int fd, char *buf, size_t cap, int timeout_ms)
{
    int64_t deadline = th_now_ms() + timeout_ms;
    size_t n = 0;
    while (n + 1 < cap) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        int left = (int)(deadline - th_now_ms());
        if (left <= 0 || poll(&p, 1, left) <= 0)
            return -1;
        ssize_t r = recv(fd, buf + n, 1, 0);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return -1;
        n++;
        buf[n] = '\0';
        if (n >= 4 && memcmp(buf + n - 4, "\r\n\r\n", 4) == 0)
            return (long)n;
    }
    return -1;
}

/* Open a connection to detour and send TEXT. */
static int raw_send(th_env *e, const char *text)
{
    int fd = th_connect(e->port, 3000);
    assert_true(fd >= 0);
    assert_int_equal(th_send_str(fd, text, 3000), 0);
    return fd;
}

/* CONNECT to AUTHORITY; the answer's head goes to HEAD. Returns the fd (status in *status). */
static int open_tunnel(th_env *e, const char *authority, char *head, size_t cap, int *status)
{
    char req[1200];
    int len = snprintf(req, sizeof(req), "CONNECT %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: test\r\n\r\n",
                       authority, authority);
    assert_true(len > 0 && (size_t)len < sizeof(req));
    int fd = raw_send(e, req);
    long n = read_head(fd, head, cap, 5000);
    *status = n > 0 ? th_parse_status(head, (size_t)n) : -1;
    return fd;
}

/* A tunnel to dt_origin that must open. */
static int tunnel_to_origin(th_env *e)
{
    char authority[64], head[1024];
    int status;
    snprintf(authority, sizeof(authority), "127.0.0.1:%d", e->origin_port);
    int fd = open_tunnel(e, authority, head, sizeof(head), &status);
    if (status != 200)
        fail_msg("CONNECT %s: status %d, head:\n%s", authority, status, head);
    return fd;
}

/* Send a raw request, read one response and expect STATUS and a close. */
static void raw_expect(th_env *e, const char *req, int status, bool closes)
{
    th_raw_resp rr;
    int fd = raw_send(e, req);
    int rc = th_recv_response(fd, false, &rr, 5000);
    if (rc != 0 || rr.status != status)
        fail_msg("%.60s...: status %d (%s), expected %d", req, rr.status,
                 rc != 0 ? "no response" : "answered", status);
    if (closes) {
        char conn[32];
        assert_non_null(th_head_header(rr.head, "Connection", conn, sizeof(conn)));
        assert_string_equal(conn, "close");
        assert_true(th_wait_closed(fd, 3000));
    }
    th_raw_resp_free(&rr);
    close(fd);
}

/* Receive exactly N bytes, hashing them; SLOW_BPS > 0 reads at about that rate. */
static int recv_hash(int fd, uint64_t n, th_sha *sha, int64_t slow_bps, int timeout_ms)
{
    static char buf[256 * 1024];
    int64_t start = th_now_ms(), deadline = start + timeout_ms;
    uint64_t got = 0;
    while (got < n) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        int left = (int)(deadline - th_now_ms());
        if (left <= 0 || poll(&p, 1, left) <= 0)
            return -1;
        size_t want = n - got < sizeof(buf) ? (size_t)(n - got) : sizeof(buf);
        if (slow_bps > 0 && want > 16384)
            want = 16384;
        ssize_t r = recv(fd, buf, want, 0);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return -1;
        th_sha_update(sha, buf, (size_t)r);
        got += (uint64_t)r;
        if (slow_bps > 0) {
            int64_t due = start + (int64_t)(got * 1000 / (uint64_t)slow_bps);
            if (due > th_now_ms())
                th_sleep_ms((int)(due - th_now_ms()));
        }
    }
    return 0;
}

/* The Content-Length of a head, or -1. */
static long long head_length(const char *head)
{
    char v[32];
    return th_head_header(head, "Content-Length", v, sizeof(v)) ? atoll(v) : -1;
}

/* ---- detour's process and its log -------------------------------------------------- */

/* CPU seconds (user + system) PID has used, or -1. */
static double proc_cpu_s(pid_t pid)
{
    char path[64], buf[1024];
    snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return -1;
    size_t n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = '\0';
    const char *p = strrchr(buf, ')');
    unsigned long ut = 0, st = 0;
    if (p == NULL ||
        sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &ut, &st) != 2)
        return -1;
    return (double)(ut + st) / (double)sysconf(_SC_CLK_TCK);
}

/* Does detour's access log (its stdout) hold NEEDLE within TIMEOUT_MS? */
static bool log_has(th_env *e, const char *needle, int timeout_ms)
{
    int64_t deadline = th_now_ms() + timeout_ms;
    for (;;) {
        FILE *f = fopen(e->detour.out_path, "r");
        if (f != NULL) {
            char line[4096];
            bool found = false;
            while (!found && fgets(line, sizeof(line), f))
                found = strstr(line, needle) != NULL;
            fclose(f);
            if (found)
                return true;
        }
        if (th_now_ms() >= deadline)
            return false;
        th_sleep_ms(50);
    }
}

static void expect_log(th_env *e, const char *needle)
{
    if (!log_has(e, needle, 3000)) {
        th_proc_dump(&e->detour, 3000);
        fail_msg("no access log line with: %s", needle);
    }
}

/* The origin's count of open connections (the /stats request's own counted). */
static unsigned long origin_active(th_env *e)
{
    char url[128];
    unsigned long req, conns, active;
    th_resp rs;
    snprintf(url, sizeof(url), "%s/stats", e->origin_url);
    th_req rq = {.url = url, .keep_body = true};
    assert_int_equal(th_http(&rq, &rs), 0);
    assert_int_equal(
        sscanf(rs.body, "requests: %lu\nconnections: %lu\nactive: %lu", &req, &conns, &active), 3);
    th_resp_free(&rs);
    return active;
}

/* Poll the origin until WANT connections are open (or TIMEOUT_MS pass); the last count. */
static unsigned long wait_active(th_env *e, unsigned long want, int timeout_ms)
{
    int64_t deadline = th_now_ms() + timeout_ms;
    unsigned long n;
    while ((n = origin_active(e)) != want && th_now_ms() < deadline)
        th_sleep_ms(50);
    return n;
}

/* ---- absolute-form ------------------------------------------------------------------- */

static void test_absolute_form_get_post(void **state)
{
    static const char *const spoof[] = {"Host: wrong.example", NULL};
    th_env *e = env_of(state);
    char url[256], authority[64];
    start_forward(e, NULL, NULL, NULL);
    snprintf(authority, sizeof(authority), "127.0.0.1:%d", e->origin_port);

    /* GET: the origin gets origin-form, Host is the target's authority. */
    snprintf(url, sizeof(url), "http://%s/echo/a%%2Fb?x=1&y=%%20", authority);
    th_resp rs = proxy_get(e, url, spoof);
    expect_status(&rs, 200);
    expect_echo_header(&rs, "Host", authority);
    th_assert_contains(rs.body, "target: /echo/a%2Fb?x=1&y=%20\n");
    expect_echo_header(&rs, "X-Forwarded-For", "127.0.0.1");
    expect_echo_header(&rs, "Via", "1.1 detour");
    th_assert_contains(th_resp_hdr(&rs, "Via"), "1.1 detour");
    th_resp_free(&rs);

    /* The authority as the client wrote it: a name, with its port. */
    snprintf(url, sizeof(url), "http://localhost:%d/echo", e->origin_port);
    rs = proxy_get(e, url, NULL);
    expect_status(&rs, 200);
    snprintf(authority, sizeof(authority), "localhost:%d", e->origin_port);
    expect_echo_header(&rs, "Host", authority);
    th_resp_free(&rs);

    /* POST with a 3 MiB streamed body, intact. */
    th_pattern_src src;
    char want[65], len[32];
    th_pattern_src_init(&src, 3 * MIB);
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/echo/post", e->origin_port);
    th_req post = {.method = "POST",
                   .url = url,
                   .gen = th_pattern_gen,
                   .gen_ctx = &src,
                   .upload_len = (int64_t)(3 * MIB),
                   .keep_body = true,
                   .timeout_ms = 30000};
    via_proxy(e, &post, false, &rs, NULL);
    th_sha_final(&src.sha, want);
    expect_status(&rs, 200);
    assert_string_equal(th_resp_hdr(&rs, "X-Origin-Method"), "POST");
    snprintf(len, sizeof(len), "%llu", 3 * MIB);
    assert_string_equal(th_resp_hdr(&rs, "X-Body-Length"), len);
    assert_string_equal(th_resp_hdr(&rs, "X-Body-Sha256"), want);
    th_resp_free(&rs);

    /* A large response streams back intact. */
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/bytes?n=%llu", e->origin_port, 20 * MIB);
    th_req big = {.url = url, .timeout_ms = 30000};
    via_proxy(e, &big, false, &rs, NULL);
    expect_status(&rs, 200);
    th_pattern_sha256(20 * MIB, want);
    assert_true(rs.body_total == 20 * MIB);
    assert_string_equal(rs.sha, want);
    th_resp_free(&rs);

    char logline[256];
    snprintf(logline, sizeof(logline), "\"POST http://127.0.0.1:%d/echo/post HTTP/1.1\" 200",
             e->origin_port);
    expect_log(e, logline);
}

/* Raw absolute-form: Host replaced (or added), proxy hop-by-hop headers gone, keep-alive. */
static void test_absolute_form_raw(void **state)
{
    th_env *e = env_of(state);
    char req[512], authority[64], v[256];
    th_raw_resp rr;
    start_forward(e, NULL, NULL, NULL);
    snprintf(authority, sizeof(authority), "127.0.0.1:%d", e->origin_port);

    snprintf(req, sizeof(req),
             "GET http://%s/echo/1 HTTP/1.1\r\nHost: spoofed.example\r\n"
             "Proxy-Connection: keep-alive\r\nX-Keep: 1\r\n\r\n",
             authority);
    int fd = raw_send(e, req);
    assert_int_equal(th_recv_response(fd, false, &rr, 5000), 0);
    assert_int_equal(rr.status, 200);
    assert_true(rr.complete);
    assert_non_null(th_echo_header(rr.body, "Host", 0, v, sizeof(v)));
    assert_string_equal(v, authority);
    assert_null(th_echo_header(rr.body, "Host", 1, v, sizeof(v)));
    assert_null(th_echo_header(rr.body, "Proxy-Connection", 0, v, sizeof(v)));
    assert_non_null(th_echo_header(rr.body, "X-Keep", 0, v, sizeof(v)));
    th_raw_resp_free(&rr);

    /* Same connection, no Host header at all: the authority is sent as Host. */
    snprintf(req, sizeof(req), "GET http://%s/echo/2 HTTP/1.1\r\n\r\n", authority);
    assert_int_equal(th_send_str(fd, req, 3000), 0);
    assert_int_equal(th_recv_response(fd, false, &rr, 5000), 0);
    assert_int_equal(rr.status, 200);
    th_assert_contains(rr.body, "target: /echo/2\n");
    assert_non_null(th_echo_header(rr.body, "Host", 0, v, sizeof(v)));
    assert_string_equal(v, authority);
    th_raw_resp_free(&rr);

    /* CONNECT is only for the first request of a connection. */
    snprintf(req, sizeof(req), "CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n", authority, authority);
    assert_int_equal(th_send_str(fd, req, 3000), 0);
    assert_int_equal(th_recv_response(fd, false, &rr, 5000), 0);
    assert_int_equal(rr.status, 405);
    assert_true(th_wait_closed(fd, 3000));
    th_raw_resp_free(&rr);
    close(fd);
}

/* Routes apply to absolute-form requests; no route relays to the request's own destination. */
static void test_routes_apply(void **state)
{
    th_env *e = env_of(state);
    char rest[1024], url[256], authority[64];
    snprintf(rest, sizeof(rest),
             "upstreams = { o = { url = \"http://127.0.0.1:%d\"; }; };\n"
             "routes = (\n"
             "  { name = \"moved\"; match = { host = \"shop.example\"; prefix = \"/old/\"; };\n"
             "    redirect = { to = \"https://new.example/$suffix$is_args$args\"; }; },\n"
             "  { name = \"legacy\"; match = { host = \"*.legacy.example\"; };\n"
             "    relay = { upstream = \"o\"; }; },\n"
             "  { name = \"nowhere\"; match = { prefix = \"/to-nowhere/\"; };\n"
             "    redirect = { to = \"/elsewhere/$suffix\"; status = 308; }; }\n"
             ");\n",
             e->origin_port);
    start_forward(e, NULL, NULL, rest);

    /* A redirect route: detour answers, no DNS for shop.example is needed. */
    th_resp rs = proxy_get(e, "http://shop.example/old/cart?x=1", NULL);
    expect_status(&rs, 307);
    assert_string_equal(th_resp_hdr(&rs, "Location"), "https://new.example/cart?x=1");
    th_resp_free(&rs);
    expect_log(e, "\"GET http://shop.example/old/cart?x=1 HTTP/1.1\" 307");
    expect_log(e, "route=moved action=redirect");

    /* A route without a host matches absolute-form requests to any origin. */
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/to-nowhere/a?b", e->origin_port);
    rs = proxy_get(e, url, NULL);
    expect_status(&rs, 308);
    assert_string_equal(th_resp_hdr(&rs, "Location"), "/elsewhere/a");
    th_resp_free(&rs);

    /* A relay route to a named upstream: app.legacy.example needs no DNS either. */
    rs = proxy_get(e, "http://app.legacy.example/echo/named?q=1", NULL);
    expect_status(&rs, 200);
    th_assert_contains(rs.body, "target: /echo/named?q=1\n");
    expect_echo_header(&rs, "Host", "app.legacy.example");
    th_resp_free(&rs);
    expect_log(e, "route=legacy action=relay");

    /* No route: the request's own destination. */
    snprintf(authority, sizeof(authority), "127.0.0.1:%d", e->origin_port);
    snprintf(url, sizeof(url), "http://%s/echo/own", authority);
    rs = proxy_get(e, url, NULL);
    expect_status(&rs, 200);
    th_assert_contains(rs.body, "target: /echo/own\n");
    expect_echo_header(&rs, "Host", authority);
    th_resp_free(&rs);

    /* A route's host matches the absolute-form authority, not the Host header:
     * relayed to dt_origin, which has no /old/ (404). */
    snprintf(url, sizeof(url), "http://%s/old/cart", authority);
    rs = proxy_get(e, url, (const char *const[]){"Host: shop.example", NULL});
    expect_status(&rs, 404);
    assert_string_equal(th_resp_hdr(&rs, "Server"), "dt-origin");
    th_resp_free(&rs);
}

/*
 * RFC 9112 3.2.2: a proxy ignores the Host header of an absolute-form
 * request and sends the target's authority, whichever upstream a route
 * picks; X-Forwarded-Host names that authority too.
 */
static void test_route_relay_replaces_host(void **state)
{
    th_env *e = env_of(state);
    char rest[512], v[256];
    th_raw_resp rr;
    snprintf(rest, sizeof(rest),
             "upstreams = { o = { url = \"http://127.0.0.1:%d\"; }; };\n"
             "routes = ( { name = \"legacy\"; match = { host = \"legacy.example\"; };\n"
             "             relay = { upstream = \"o\"; }; } );\n",
             e->origin_port);
    start_forward(e, NULL, NULL, rest);
    int fd = raw_send(e, "GET http://legacy.example/echo HTTP/1.1\r\nHost: other.example\r\n\r\n");
    assert_int_equal(th_recv_response(fd, false, &rr, 5000), 0);
    assert_int_equal(rr.status, 200);
    assert_non_null(th_echo_header(rr.body, "Host", 0, v, sizeof(v)));
    if (strcmp(v, "legacy.example") != 0)
        fail_msg("the upstream saw Host: %s, expected the target's authority legacy.example", v);
    assert_non_null(th_echo_header(rr.body, "X-Forwarded-Host", 0, v, sizeof(v)));
    assert_string_equal(v, "legacy.example");
    th_raw_resp_free(&rr);
    close(fd);
}

/* ---- CONNECT ------------------------------------------------------------------------- */

static void test_connect_tunnel_curl(void **state)
{
    th_env *e = env_of(state);
    char url[256], want[65];
    long code = 0;
    th_resp rs;
    start_tunnels(e, NULL);

    /* Plain HTTP inside the tunnel: the origin sees the client's own request, no Via. */
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/echo/tunnel?z=9", e->origin_port);
    th_req rq = {.url = url, .keep_body = true, .timeout_ms = 10000};
    assert_int_equal(via_proxy(e, &rq, true, &rs, &code), 0);
    assert_int_equal(code, 200);
    expect_status(&rs, 200);
    th_assert_contains(rs.body, "target: /echo/tunnel?z=9\n");
    expect_no_echo_header(&rs, "Via");
    expect_no_echo_header(&rs, "X-Forwarded-For");
    assert_null(th_resp_hdr(&rs, "Via"));
    th_resp_free(&rs);

    /* A body up and a body down through the tunnel. */
    th_pattern_src src;
    th_pattern_src_init(&src, 5 * MIB);
    th_req put = {.method = "PUT",
                  .url = url,
                  .gen = th_pattern_gen,
                  .gen_ctx = &src,
                  .upload_len = (int64_t)(5 * MIB),
                  .timeout_ms = 30000};
    assert_int_equal(via_proxy(e, &put, true, &rs, &code), 0);
    th_sha_final(&src.sha, want);
    expect_status(&rs, 200);
    assert_string_equal(th_resp_hdr(&rs, "X-Body-Sha256"), want);
    th_resp_free(&rs);

    snprintf(url, sizeof(url), "http://127.0.0.1:%d/bytes?n=%llu&chunked=1", e->origin_port,
             7 * MIB);
    th_req big = {.url = url, .timeout_ms = 30000};
    assert_int_equal(via_proxy(e, &big, true, &rs, &code), 0);
    th_pattern_sha256(7 * MIB, want);
    assert_true(rs.body_total == 7 * MIB);
    assert_string_equal(rs.sha, want);
    th_resp_free(&rs);

    char logline[128];
    snprintf(logline, sizeof(logline), "\"CONNECT 127.0.0.1:%d HTTP/1.1\" 200", e->origin_port);
    expect_log(e, logline);
}

/* The 200's exact head, and bytes sent together with the CONNECT head. */
static void test_connect_reply_head(void **state)
{
    th_env *e = env_of(state);
    char req[512], head[1024];
    th_raw_resp rr;
    start_tunnels(e, NULL);

    snprintf(req, sizeof(req), "127.0.0.1:%d", e->origin_port);
    int status;
    int fd = open_tunnel(e, req, head, sizeof(head), &status);
    assert_int_equal(status, 200);
    /* RFC 9110 9.3.6: no Content-Length or Transfer-Encoding on a 2xx to CONNECT. */
    assert_int_equal(strncmp(head, "HTTP/1.1 200 ", 13), 0);
    assert_null(strcasestr(head, "Content-Length"));
    assert_null(strcasestr(head, "Transfer-Encoding"));
    /* A request through the tunnel, then another on the same inner connection. */
    for (int i = 0; i < 2; i++) {
        assert_int_equal(th_send_str(fd, "GET /echo/in HTTP/1.1\r\nHost: inner\r\n\r\n", 3000), 0);
        assert_int_equal(th_recv_response(fd, false, &rr, 5000), 0);
        assert_int_equal(rr.status, 200);
        th_assert_contains(rr.body, "header: Host: inner\n");
        th_raw_resp_free(&rr);
    }
    close(fd);

    /* The CONNECT head and the first request in one write: nothing is lost. */
    snprintf(req, sizeof(req),
             "CONNECT 127.0.0.1:%d HTTP/1.1\r\nHost: x\r\n\r\n"
             "GET /echo/early HTTP/1.1\r\nHost: early\r\n\r\n",
             e->origin_port);
    fd = raw_send(e, req);
    assert_true(read_head(fd, head, sizeof(head), 5000) > 0);
    assert_int_equal(th_parse_status(head, strlen(head)), 200);
    assert_int_equal(th_recv_response(fd, false, &rr, 5000), 0);
    assert_int_equal(rr.status, 200);
    th_assert_contains(rr.body, "target: /echo/early\n");
    th_raw_resp_free(&rr);
    close(fd);
}

static void test_connect_port_refused(void **state)
{
    th_env *e = env_of(state);
    char url[256], req[256], logline[128];
    long code = 0;
    th_resp rs;
    start_forward(e, NULL, NULL, NULL); /* connect_ports: the default [443] */

    snprintf(url, sizeof(url), "http://127.0.0.1:%d/echo", e->origin_port);
    th_req rq = {.url = url, .timeout_ms = 10000};
    assert_int_not_equal(via_proxy(e, &rq, true, &rs, &code), 0);
    assert_int_equal(code, 403);
    th_resp_free(&rs);

    snprintf(req, sizeof(req), "CONNECT 127.0.0.1:%d HTTP/1.1\r\nHost: x\r\n\r\n", e->origin_port);
    raw_expect(e, req, 403, true);
    snprintf(logline, sizeof(logline), "\"CONNECT 127.0.0.1:%d HTTP/1.1\" 403", e->origin_port);
    expect_log(e, logline);

    /* Absolute-form to the same port is not CONNECT: it is relayed. */
    th_resp ok = proxy_get(e, url, NULL);
    expect_status(&ok, 200);
    th_resp_free(&ok);
}

/* Nothing listening: 502; a destination that never answers: 504 after connect_ms. */
static void test_connect_unreachable(void **state)
{
    th_env *e = env_of(state);
    int fill[8], bh_port = 0, dead_port = th_free_port();
    char fw[160], req[256];
    int bh = th_blackhole_listen(&bh_port, fill, 8);
    assert_true(bh >= 0);
    snprintf(fw, sizeof(fw), "connect_ports = [%d, %d];", dead_port, bh_port);
    start_forward(e, "connect_ms = 700;", fw, NULL);

    snprintf(req, sizeof(req), "CONNECT 127.0.0.1:%d HTTP/1.1\r\n\r\n", dead_port);
    raw_expect(e, req, 502, true);

    int64_t t0 = th_now_ms();
    snprintf(req, sizeof(req), "CONNECT 127.0.0.1:%d HTTP/1.1\r\n\r\n", bh_port);
    raw_expect(e, req, 504, true);
    int64_t took = th_now_ms() - t0;
    print_message("CONNECT to a blackhole answered after %lld ms\n", (long long)took);
    assert_true(took >= 600 && took < 3000);

    close(bh);
    for (int i = 0; i < 8; i++)
        if (fill[i] >= 0)
            close(fill[i]);
}

typedef struct bad_connect {
    const char *what;
    const char *text; /* %d: dt_origin's port (allowed by connect_ports) */
    int status;
} bad_connect;

static const bad_connect bad_connects[] = {
    {"no port", "CONNECT 127.0.0.1 HTTP/1.1\r\n\r\n", 400},
    {"empty port", "CONNECT 127.0.0.1: HTTP/1.1\r\n\r\n", 400},
    {"port 0", "CONNECT 127.0.0.1:0 HTTP/1.1\r\n\r\n", 400},
    {"port 70000", "CONNECT 127.0.0.1:70000 HTTP/1.1\r\n\r\n", 400},
    {"port 65536", "CONNECT 127.0.0.1:65536 HTTP/1.1\r\n\r\n", 400},
    {"signed port", "CONNECT 127.0.0.1:+%d HTTP/1.1\r\n\r\n", 400},
    {"empty host", "CONNECT :%d HTTP/1.1\r\n\r\n", 400},
    {"open bracket", "CONNECT [::1:%d HTTP/1.1\r\n\r\n", 400},
    {"userinfo", "CONNECT user@127.0.0.1:%d HTTP/1.1\r\n\r\n", 400},
    {"absolute URI", "CONNECT http://127.0.0.1:%d/ HTTP/1.1\r\n\r\n", 400},
    {"missing version", "CONNECT 127.0.0.1:%d\r\n\r\n", 400},
    {"bad version", "CONNECT 127.0.0.1:%d HTTQ/1.1\r\n\r\n", 400},
    {"two spaces", "CONNECT 127.0.0.1:%d  HTTP/1.1\r\n\r\n", 400},
    {"garbage", "CONNECT \x01\x02garbage\x7f\r\n\r\n", 400},
    {"three words", "CONNECT a b c\r\n\r\n", 400},
    {"obs-fold", "CONNECT 127.0.0.1:%d HTTP/1.1\r\nHost: x\r\n folded\r\n\r\n", 400},
    {"tab fold", "CONNECT 127.0.0.1:%d HTTP/1.1\r\nX-A: 1\r\n\tfolded\r\n\r\n", 400},
    {"header without colon", "CONNECT 127.0.0.1:%d HTTP/1.1\r\nNoColon\r\n\r\n", 400},
    {"space in name", "CONNECT 127.0.0.1:%d HTTP/1.1\r\nBad Name: a\r\n\r\n", 400},
    {"space before colon", "CONNECT 127.0.0.1:%d HTTP/1.1\r\nHost : a\r\n\r\n", 400},
    {"DEL in value", "CONNECT 127.0.0.1:%d HTTP/1.1\r\nX: a\x7f\r\n\r\n", 400},
    {"lone CR in value", "CONNECT 127.0.0.1:%d HTTP/1.1\r\nX: a\rb\r\n\r\n", 400},
    {"two Hosts", "CONNECT 127.0.0.1:%d HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400},
    {"loop", "CONNECT 127.0.0.1:%d HTTP/1.1\r\nVia: 1.0 x, 1.1 detour\r\n\r\n", 508},
};

static void test_connect_malformed(void **state)
{
    th_env *e = env_of(state);
    char req[512];
    int failures = 0;
    start_tunnels(e, NULL);
    for (size_t i = 0; i < sizeof(bad_connects) / sizeof(bad_connects[0]); i++) {
        const bad_connect *b = &bad_connects[i];
        th_raw_resp rr;
        snprintf(req, sizeof(req), b->text, e->origin_port);
        int fd = raw_send(e, req);
        int rc = th_recv_response(fd, false, &rr, 5000);
        char conn[32] = "";
        th_head_header(rc == 0 ? rr.head : "", "Connection", conn, sizeof(conn));
        bool closed = rc == 0 && th_wait_closed(fd, 3000);
        if (rc != 0 || rr.status != b->status || strcmp(conn, "close") != 0 || !closed) {
            print_error("%s: status %d, Connection: %s, %s; expected %d and a close\n", b->what,
                        rc == 0 ? rr.status : -1, conn, closed ? "closed" : "not closed",
                        b->status);
            failures++;
        }
        if (rc == 0)
            th_raw_resp_free(&rr);
        close(fd);
    }
    assert_int_equal(failures, 0);
    expect_log(e, "\"CONNECT 127.0.0.1:70000 HTTP/1.1\" 400");
}

static void test_connect_oversized_head(void **state)
{
    th_env *e = env_of(state);
    size_t big = 20000; /* over limits.max_header_bytes' default 16384 */
    char *req = malloc(big + 256);
    assert_non_null(req);
    start_tunnels(e, NULL);
    int n = snprintf(req, 256, "CONNECT 127.0.0.1:%d HTTP/1.1\r\nX-Long: ", e->origin_port);
    memset(req + n, 'a', big);
    strcpy(req + n + big, "\r\n\r\n");
    int fd = th_connect(e->port, 3000);
    assert_true(fd >= 0);
    th_send_watch(fd, req, strlen(req), 1024, 5000);
    th_raw_resp rr;
    assert_int_equal(th_recv_response(fd, false, &rr, 5000), 0);
    assert_int_equal(rr.status, 431);
    assert_true(th_wait_closed(fd, 3000));
    th_raw_resp_free(&rr);
    close(fd);
    free(req);
}

/* header_ms bounds the whole CONNECT head, however it trickles in. */
static void test_connect_slow_head(void **state)
{
    th_env *e = env_of(state);
    char req[128];
    th_raw_resp rr;
    start_tunnels(e, "header_ms = 1000;");

    /* Stalls after the request line. */
    snprintf(req, sizeof(req), "CONNECT 127.0.0.1:%d HTTP/1.1\r\n", e->origin_port);
    int64_t t0 = th_now_ms();
    int fd = raw_send(e, req);
    assert_int_equal(th_recv_response(fd, false, &rr, 5000), 0);
    int64_t took = th_now_ms() - t0;
    assert_int_equal(rr.status, 408);
    assert_true(took >= 900 && took < 3000);
    assert_true(th_wait_closed(fd, 3000));
    th_raw_resp_free(&rr);
    close(fd);

    /* Keeps trickling one header line every 200 ms: still 408 at about 1 s. */
    t0 = th_now_ms();
    fd = raw_send(e, req);
    int sent = 0;
    while (th_now_ms() - t0 < 4000) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        if (poll(&p, 1, 200) > 0)
            break;
        if (th_send_str(fd, "X-Slow: 1\r\n", 1000) < 0)
            break;
        sent++;
    }
    assert_int_equal(th_recv_response(fd, false, &rr, 3000), 0);
    took = th_now_ms() - t0;
    assert_int_equal(rr.status, 408);
    assert_true(sent >= 3);
    assert_true(took < 3000);
    th_raw_resp_free(&rr);
    close(fd);
}

/* ---- bytes through a tunnel ------------------------------------------------------------ */

/*
 * 100 MB down a tunnel to a client that reads slowly at first: detour keeps
 * nothing of its own (bytes wait in the kernel's socket buffers, so its RSS
 * does not grow) and does not spin while the client is slow; then everything arrives
 * with the right SHA-256.
 */
static void test_tunnel_download_backpressure(void **state)
{
    th_env *e = env_of(state);
    const uint64_t n = 100000000;
    const uint64_t slow_part = 3 * MIB;
    const int64_t slow_bps = 1000000;
    char req[128], head[2048], want[65], got[65];
    th_sha sha;
    start_tunnels(e, NULL);

    int fd = tunnel_to_origin(e);
    long rss0 = th_proc_vmrss_kb(e->detour.pid);
    snprintf(req, sizeof(req), "GET /bytes?n=%llu HTTP/1.1\r\nHost: t\r\n\r\n",
             (unsigned long long)n);
    assert_int_equal(th_send_str(fd, req, 3000), 0);
    assert_true(read_head(fd, head, sizeof(head), 5000) > 0);
    assert_int_equal(th_parse_status(head, strlen(head)), 200);
    assert_true(head_length(head) == (long long)n);

    assert_int_equal(th_sha_init(&sha), 0);
    double cpu0 = proc_cpu_s(e->detour.pid);
    int64_t t0 = th_now_ms();
    assert_int_equal(recv_hash(fd, slow_part, &sha, slow_bps, 30000), 0);
    double cpu = proc_cpu_s(e->detour.pid) - cpu0;
    double wall = (double)(th_now_ms() - t0) / 1000.0;
    long rss1 = th_proc_vmrss_kb(e->detour.pid);
    print_message("slow phase: %.1f s, detour CPU %.2f s, RSS %ld -> %ld KiB\n", wall, cpu, rss0,
                  rss1);
    /* A busy loop on a full socket would burn a whole core for the whole phase. */
    assert_true(cpu < 0.3 * wall);
    if (!th_proc_sanitized(e->detour.pid))
        assert_true(rss1 - rss0 < 16 * 1024);

    assert_int_equal(recv_hash(fd, n - slow_part, &sha, 0, 120000), 0);
    th_sha_final(&sha, got);
    th_pattern_sha256(n, want);
    assert_string_equal(got, want);

    /* The tunnel still works after the bulk transfer. */
    th_raw_resp rr;
    assert_int_equal(th_send_str(fd, "GET /echo/after HTTP/1.1\r\nHost: t\r\n\r\n", 3000), 0);
    assert_int_equal(th_recv_response(fd, false, &rr, 5000), 0);
    assert_int_equal(rr.status, 200);
    th_raw_resp_free(&rr);
    close(fd);
}

/* Upload into an origin that reads at 8 MB/s: the client is held back, detour stays idle. */
static void test_tunnel_upload_backpressure(void **state)
{
    th_env *e = env_of(state);
    const uint64_t n = 48 * MIB;
    char req[256], want[65], v[80];
    th_raw_resp rr;
    th_pattern_src src;
    static char buf[64 * 1024];
    start_tunnels(e, NULL);

    int fd = tunnel_to_origin(e);
    snprintf(req, sizeof(req),
             "PUT /echo/up?rate=8000000 HTTP/1.1\r\nHost: t\r\nContent-Length: %llu\r\n\r\n",
             (unsigned long long)n);
    assert_int_equal(th_send_str(fd, req, 3000), 0);
    th_pattern_src_init(&src, n);
    long rss0 = th_proc_vmrss_kb(e->detour.pid);
    double cpu0 = proc_cpu_s(e->detour.pid);
    int64_t t0 = th_now_ms();
    for (;;) {
        size_t k = th_pattern_gen(&src, buf, sizeof(buf));
        if (k == 0)
            break;
        assert_int_equal(th_send_all(fd, buf, k, 30000), 0);
    }
    double wall = (double)(th_now_ms() - t0) / 1000.0;
    double cpu = proc_cpu_s(e->detour.pid) - cpu0;
    th_sha_final(&src.sha, want);
    print_message("upload into a slow origin: %.1f s, detour CPU %.2f s\n", wall, cpu);
    /* The origin's pace holds the client back: 48 MiB at 8 MB/s takes over 6 s;
     * socket buffers on the way (autotuned, up to tcp_rmem's maximum) absorb
     * a part, detour itself nothing (its RSS does not grow). */
    assert_true(wall > 1.0);
    if (!th_proc_sanitized(e->detour.pid))
        assert_true(th_proc_vmrss_kb(e->detour.pid) - rss0 < 16 * 1024);
    assert_true(cpu < 0.3 * wall);
    assert_int_equal(th_recv_response(fd, false, &rr, 30000), 0);
    assert_int_equal(rr.status, 200);
    assert_non_null(th_head_header(rr.head, "X-Body-Sha256", v, sizeof(v)));
    assert_string_equal(v, want);
    th_raw_resp_free(&rr);
    close(fd);
}

/*
 * The origin sends 8 MiB and closes while most of it still sits in detour's
 * socket buffers (the client has a small receive buffer and waits
 * before reading): all of it is delivered, then the client sees the close.
 */
static void test_tunnel_upstream_close_flushes(void **state)
{
    th_env *e = env_of(state);
    const uint64_t n = 8 * MIB;
    char req[256], head[2048], want[65], got[65];
    th_sha sha;
    start_tunnels(e, NULL);

    int fd = tunnel_to_origin(e);
    int small = 16 * 1024;
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &small, sizeof(small));
    snprintf(req, sizeof(req), "GET /bytes?n=%llu HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
             (unsigned long long)n);
    assert_int_equal(th_send_str(fd, req, 3000), 0);
    th_sleep_ms(1500); /* the origin writes what fits and closes meanwhile */
    assert_true(read_head(fd, head, sizeof(head), 5000) > 0);
    assert_true(head_length(head) == (long long)n);
    assert_int_equal(th_sha_init(&sha), 0);
    assert_int_equal(recv_hash(fd, n, &sha, 0, 60000), 0);
    th_sha_final(&sha, got);
    th_pattern_sha256(n, want);
    assert_string_equal(got, want);
    assert_true(th_wait_closed(fd, 5000));
    close(fd);
}

/*
 * A careful origin: answers at once (before the request body is in), ends
 * its side, then reads what the client still sends until the client closes.
 */
typedef struct early_origin {
    int lfd, port;
    uint64_t answer_bytes;
    pthread_t thread;
    bool answered;
} early_origin;

static void *early_origin_main(void *arg)
{
    early_origin *o = arg;
    struct pollfd p = {.fd = o->lfd, .events = POLLIN};
    static char buf[64 * 1024];
    if (poll(&p, 1, 10000) != 1)
        return NULL;
    int fd = accept(o->lfd, NULL, NULL);
    if (fd < 0)
        return NULL;
    struct timeval tv = {.tv_sec = 10};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    size_t have = 0;
    while (have < sizeof(buf) - 1) { /* the request head */
        ssize_t n = recv(fd, buf + have, sizeof(buf) - 1 - have, 0);
        if (n <= 0)
            goto out;
        have += (size_t)n;
        buf[have] = '\0';
        if (strstr(buf, "\r\n\r\n") != NULL)
            break;
    }
    char head[128];
    int hl = snprintf(head, sizeof(head),
                      "HTTP/1.1 413 Content Too Large\r\nContent-Length: %llu\r\n"
                      "Connection: close\r\n\r\n",
                      (unsigned long long)o->answer_bytes);
    if (th_send_all(fd, head, (size_t)hl, 10000) != 0)
        goto out;
    th_pattern_src src;
    char hex[65];
    bool sent_all = true;
    th_pattern_src_init(&src, o->answer_bytes);
    for (;;) {
        size_t k = th_pattern_gen(&src, buf, sizeof(buf));
        if (k == 0)
            break;
        if (th_send_all(fd, buf, k, 10000) != 0) {
            sent_all = false;
            break;
        }
    }
    o->answered = sent_all;
    th_sha_final(&src.sha, hex); /* frees the digest's state */
    shutdown(fd, SHUT_WR);
    int64_t until = th_now_ms() + 15000;
    while (th_now_ms() < until && recv(fd, buf, sizeof(buf), 0) > 0)
        ;
out:
    close(fd);
    return NULL;
}

/*
 * The origin answers a large upload early and ends its side while the
 * client is still sending. detour must not reset the client's connection
 * when it closes the tunnel (a close with unread bytes sends a reset, which
 * drops whatever detour had not yet delivered): the whole answer arrives,
 * then an orderly end.
 */
/* Listen for early_origin_main on an ephemeral port and start detour with CONNECT allowed to it. */
static void early_origin_start(th_env *e, early_origin *o)
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t alen = sizeof(a);
    char fw[128];

    o->lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_true(o->lfd >= 0);
    assert_int_equal(bind(o->lfd, (struct sockaddr *)&a, sizeof(a)), 0);
    assert_int_equal(listen(o->lfd, 4), 0);
    assert_int_equal(getsockname(o->lfd, (struct sockaddr *)&a, &alen), 0);
    o->port = ntohs(a.sin_port);
    snprintf(fw, sizeof(fw), "connect_ports = [%d];", o->port);
    start_forward(e, NULL, fw, NULL);
    assert_int_equal(pthread_create(&o->thread, NULL, early_origin_main, o), 0);
}

/* A tunnel to the early origin with a large upload announced. */
static int early_origin_tunnel(th_env *e, const early_origin *o)
{
    char authority[64], head[1024];
    int status;
    snprintf(authority, sizeof(authority), "127.0.0.1:%d", o->port);
    int fd = open_tunnel(e, authority, head, sizeof(head), &status);
    assert_int_equal(status, 200);
    int small = 16 * 1024;
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &small, sizeof(small));
    assert_int_equal(th_send_str(fd, "PUT /up HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000000\r\n\r\n",
                                 3000), 0);
    return fd;
}

typedef struct upload_read {
    char head[1024];
    size_t head_len;
    bool head_done;
    bool ended;     /* the answer's end was read */
    int reset_err;  /* errno of the first failed send or receive, 0 if none */
    uint64_t body;  /* answer body bytes read */
    th_sha sha;     /* of the body */
} upload_read;

/* Send whenever the socket takes bytes: what a client still uploading does. */
static void upload_some(int fd, upload_read *u)
{
    static char up[64 * 1024];
    memset(up, 'u', sizeof(up));
    if (send(fd, up, sizeof(up), MSG_DONTWAIT | MSG_NOSIGNAL) < 0 && errno != EAGAIN &&
        errno != EINTR && u->reset_err == 0)
        u->reset_err = errno; /* a reset shows on whichever call comes first */
}

/*
 * Keep uploading while reading the answer at about BPS bytes/s until its
 * end, a reset or TIMEOUT_MS, as a client does that has not noticed an
 * early answer yet.
 */
static void upload_while_reading(int fd, upload_read *u, uint64_t bps, int timeout_ms)
{
    static char in[16 * 1024];
    int64_t start = th_now_ms(), deadline = start + timeout_ms;
    memset(u, 0, sizeof(*u));
    assert_int_equal(th_sha_init(&u->sha), 0);
    while (!u->ended && u->reset_err == 0 && th_now_ms() < deadline) {
        struct pollfd p = {.fd = fd, .events = POLLIN | POLLOUT};
        if (poll(&p, 1, 1000) < 0)
            break;
        if (p.revents & POLLOUT)
            upload_some(fd, u);
        if (!(p.revents & (POLLIN | POLLHUP | POLLERR)))
            continue;
        ssize_t n = recv(fd, in, sizeof(in), MSG_DONTWAIT);
        if (n < 0 && (errno == EAGAIN || errno == EINTR))
            continue;
        if (n <= 0) {
            if (n < 0 && u->reset_err == 0)
                u->reset_err = errno;
            u->ended = true;
            break;
        }
        size_t off = 0;
        if (!u->head_done) {
            size_t room = sizeof(u->head) - 1 - u->head_len;
            size_t k = (size_t)n < room ? (size_t)n : room;
            memcpy(u->head + u->head_len, in, k);
            u->head_len += k;
            u->head[u->head_len] = '\0';
            char *end = strstr(u->head, "\r\n\r\n");
            if (end == NULL)
                continue;
            u->head_done = true;
            off = k - (u->head_len - (size_t)(end + 4 - u->head));
        }
        th_sha_update(&u->sha, in + off, (size_t)n - off);
        u->body += (uint64_t)n - off;
        int64_t due = start + (int64_t)(u->body * 1000 / bps);
        if (due > th_now_ms())
            th_sleep_ms((int)(due - th_now_ms()));
    }
}

/*
 * The origin answers a large upload early and ends its side while the
 * client is still sending. detour must not reset the client's connection
 * when it closes the tunnel (a close with unread bytes sends a reset, which
 * drops whatever detour had not yet delivered): the whole answer arrives,
 * then an orderly end.
 */
static void test_tunnel_close_keeps_last_bytes(void **state)
{
    th_env *e = env_of(state);
    early_origin o = {.answer_bytes = 4 * MIB};
    upload_read u;
    char want[65], got[65];

    early_origin_start(e, &o);
    int fd = early_origin_tunnel(e, &o);
    upload_while_reading(fd, &u, 8000000, 30000);
    print_message("answer: %llu of %llu body bytes, end: %s\n", (unsigned long long)u.body,
                  (unsigned long long)o.answer_bytes, u.reset_err ? strerror(u.reset_err) : "orderly");
    close(fd);
    pthread_join(o.thread, NULL);
    close(o.lfd);
    th_sha_final(&u.sha, got);

    assert_true(o.answered);
    assert_true(u.head_done);
    assert_int_equal(th_parse_status(u.head, u.head_len), 413);
    assert_true(u.ended);
    assert_int_equal(u.reset_err, 0); /* an end, not a reset */
    assert_true(u.body == o.answer_bytes);
    th_pattern_sha256(o.answer_bytes, want);
    assert_string_equal(got, want);
}

/*
 * The same, but the client never stops sending: once the answer is
 * delivered, detour stops waiting for it after about two seconds (it does not
 * hold the connection open for as long as a peer keeps talking).
 */
static void test_tunnel_linger_is_bounded(void **state)
{
    th_env *e = env_of(state);
    early_origin o = {.answer_bytes = 1000};
    upload_read u;
    char hex[65];

    early_origin_start(e, &o);
    int fd = early_origin_tunnel(e, &o);
    upload_while_reading(fd, &u, 1000000, 10000);
    th_sha_final(&u.sha, hex);
    assert_true(u.ended);
    assert_int_equal(u.reset_err, 0);
    assert_true(u.body == o.answer_bytes);

    int64_t t0 = th_now_ms();
    while (u.reset_err == 0 && th_now_ms() - t0 < 15000) {
        struct pollfd p = {.fd = fd, .events = POLLOUT};
        if (poll(&p, 1, 200) > 0)
            upload_some(fd, &u);
    }
    int64_t took = th_now_ms() - t0;
    print_message("still sending after the end: cut off after %lld ms (%s)\n", (long long)took,
                  u.reset_err ? strerror(u.reset_err) : "never");
    close(fd);
    pthread_join(o.thread, NULL);
    close(o.lfd);
    assert_true(u.reset_err == ECONNRESET || u.reset_err == EPIPE);
    assert_true(took >= 1000 && took < 8000);
}

/* The client goes away: detour closes the origin's side as well. */
static void test_tunnel_client_close_closes_upstream(void **state)
{
    th_env *e = env_of(state);
    th_raw_resp rr;
    start_tunnels(e, NULL);

    /* Only the /stats request itself is open at the origin. */
    assert_int_equal(wait_active(e, 1, 3000), 1);
    int fd = tunnel_to_origin(e);
    assert_int_equal(th_send_str(fd, "GET /echo HTTP/1.1\r\nHost: t\r\n\r\n", 3000), 0);
    assert_int_equal(th_recv_response(fd, false, &rr, 5000), 0);
    th_raw_resp_free(&rr);
    assert_int_equal(wait_active(e, 2, 3000), 2);

    close(fd);
    assert_int_equal(wait_active(e, 1, 5000), 1);
}

static void test_tunnel_idle_timeout(void **state)
{
    th_env *e = env_of(state);
    th_raw_resp rr;
    start_tunnels(e, "idle_ms = 1000;");

    int fd = tunnel_to_origin(e);
    /* Traffic every 400 ms keeps it open well past idle_ms. */
    int64_t t0 = th_now_ms();
    for (int i = 0; i < 6; i++) {
        assert_int_equal(th_send_str(fd, "GET /echo HTTP/1.1\r\nHost: t\r\n\r\n", 3000), 0);
        assert_int_equal(th_recv_response(fd, false, &rr, 3000), 0);
        assert_int_equal(rr.status, 200);
        th_raw_resp_free(&rr);
        th_sleep_ms(400);
    }
    assert_true(th_now_ms() - t0 > 2000);
    /* Then silence: closed after about idle_ms. */
    int64_t quiet = th_now_ms();
    assert_true(th_wait_closed(fd, 5000));
    int64_t took = th_now_ms() - quiet;
    print_message("idle tunnel closed after %lld ms of silence\n", (long long)took);
    assert_true(took >= 500 && took < 3000);
    close(fd);

    /* A tunnel that never carries a byte times out as well. */
    fd = tunnel_to_origin(e);
    quiet = th_now_ms();
    assert_true(th_wait_closed(fd, 5000));
    assert_true(th_now_ms() - quiet < 3000);
    close(fd);
}

/* ---- access control ---------------------------------------------------------------------- */

/* An IPv4 address of this host other than loopback, or false. */
static bool non_loopback_addr(char *out, size_t cap)
{
    struct ifaddrs *ifa;
    bool found = false;
    if (getifaddrs(&ifa) != 0)
        return false;
    for (struct ifaddrs *i = ifa; i != NULL && !found; i = i->ifa_next) {
        if (i->ifa_addr == NULL || i->ifa_addr->sa_family != AF_INET ||
            (i->ifa_flags & IFF_LOOPBACK) || !(i->ifa_flags & IFF_UP))
            continue;
        const struct sockaddr_in *in = (const struct sockaddr_in *)i->ifa_addr;
        if ((ntohl(in->sin_addr.s_addr) >> 24) == 127)
            continue;
        found = inet_ntop(AF_INET, &in->sin_addr, out, (socklen_t)cap) != NULL;
    }
    freeifaddrs(ifa);
    return found;
}

/* Connect from ADDR (this host's) to ADDR:PORT, so that detour sees ADDR as the client. */
static int connect_from(const char *addr, int port)
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    struct sockaddr_in src = {.sin_family = AF_INET};
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct timeval tv = {.tv_sec = 3};
    if (fd < 0 || inet_pton(AF_INET, addr, &a.sin_addr) != 1 ||
        inet_pton(AF_INET, addr, &src.sin_addr) != 1)
        return -1;
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    if (bind(fd, (struct sockaddr *)&src, sizeof(src)) != 0 ||
        connect(fd, (struct sockaddr *)&a, sizeof(a)) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

/* Send REQ from ADDR to detour; return the status (-1: no answer). */
static int status_from(th_env *e, const char *addr, const char *req)
{
    th_raw_resp rr;
    int fd = connect_from(addr, e->port);
    if (fd < 0)
        return -1;
    int status = -1;
    if (th_send_str(fd, req, 3000) == 0 && th_recv_response(fd, false, &rr, 5000) == 0) {
        status = rr.status;
        th_raw_resp_free(&rr);
    }
    close(fd);
    return status;
}

static void start_on_any(th_env *e, const char *forward)
{
    int rc = th_detour_start(e,
                             "listen = \"0.0.0.0:%d\";\n"
                             "mode = \"forward\";\n"
                             "workers = 1;\n"
                             "timeouts = { drain_ms = 3000; };\n"
                             "%s%s%s",
                             e->port, forward ? "forward = { " : "", forward ? forward : "",
                             forward ? " };\n" : "");
    assert_int_equal(rc, 0);
}

/* With no forward block only loopback clients are served; allow_clients replaces that. */
static void test_client_access(void **state)
{
    th_env *e = env_of(state);
    char me[64], get[256], conn[256], fw[128], logline[256];
    if (!non_loopback_addr(me, sizeof(me))) {
        print_message("no non-loopback IPv4 address on this host: client access is covered by "
                      "test_access (unit) and test_transparent.sh\n");
        skip();
    }
    snprintf(get, sizeof(get), "GET http://127.0.0.1:%d/echo HTTP/1.1\r\nHost: x\r\n\r\n",
             e->origin_port);
    snprintf(conn, sizeof(conn), "CONNECT 127.0.0.1:%d HTTP/1.1\r\nHost: x\r\n\r\n",
             e->origin_port);

    start_on_any(e, NULL);
    assert_int_equal(status_from(e, "127.0.0.1", get), 200);
    assert_int_equal(status_from(e, me, get), 403);
    assert_int_equal(status_from(e, me, "CONNECT 127.0.0.1:443 HTTP/1.1\r\n\r\n"), 403);
    snprintf(logline, sizeof(logline), "%s - - ", me);
    expect_log(e, logline);
    snprintf(logline, sizeof(logline), "\"GET http://127.0.0.1:%d/echo HTTP/1.1\" 403",
             e->origin_port);
    expect_log(e, logline);
    expect_log(e, "\"CONNECT 127.0.0.1:443 HTTP/1.1\" 403");
    assert_int_equal(th_proc_stop(&e->detour, 5000), 0);

    /* allow_clients naming this address: it is served, loopback no longer is. */
    snprintf(fw, sizeof(fw), "allow_clients = [\"%s/32\"]; connect_ports = [%d];", me,
             e->origin_port);
    start_on_any(e, fw);
    assert_int_equal(status_from(e, me, get), 200);
    assert_int_equal(status_from(e, "127.0.0.1", get), 403);
    int fd = connect_from(me, e->port);
    assert_true(fd >= 0);
    char head[1024];
    assert_int_equal(th_send_str(fd, conn, 3000), 0);
    assert_true(read_head(fd, head, sizeof(head), 5000) > 0);
    assert_int_equal(th_parse_status(head, strlen(head)), 200);
    close(fd);
    assert_int_equal(status_from(e, "127.0.0.1", conn), 403);
}

static void test_allow_destinations(void **state)
{
    th_env *e = env_of(state);
    char fw[256], url[256], req[256], logline[256];
    int other = th_free_port();
    th_resp rs;

    /* Only dt_origin's address and port. */
    snprintf(fw, sizeof(fw),
             "allow_destinations = [\"127.0.0.1/32:%d\"]; connect_ports = [%d, %d];",
             e->origin_port, e->origin_port, other);
    start_forward(e, NULL, fw, NULL);
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/echo", e->origin_port);
    rs = proxy_get(e, url, NULL);
    expect_status(&rs, 200);
    th_resp_free(&rs);
    /* A name is decided by the address it resolves to. */
    snprintf(url, sizeof(url), "http://localhost:%d/echo", e->origin_port);
    rs = proxy_get(e, url, NULL);
    expect_status(&rs, 200);
    th_resp_free(&rs);
    /* Another address, another port. */
    snprintf(url, sizeof(url), "http://127.0.0.2:%d/echo", e->origin_port);
    rs = proxy_get(e, url, NULL);
    expect_status(&rs, 403);
    th_resp_free(&rs);
    snprintf(logline, sizeof(logline), "\"GET http://127.0.0.2:%d/echo HTTP/1.1\" 403",
             e->origin_port);
    expect_log(e, logline);
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/echo", other);
    rs = proxy_get(e, url, NULL);
    expect_status(&rs, 403);
    th_resp_free(&rs);
    snprintf(req, sizeof(req), "CONNECT 127.0.0.2:%d HTTP/1.1\r\n\r\n", e->origin_port);
    raw_expect(e, req, 403, true);
    snprintf(req, sizeof(req), "CONNECT 127.0.0.1:%d HTTP/1.1\r\n\r\n", other);
    raw_expect(e, req, 403, true);
    snprintf(logline, sizeof(logline), "\"CONNECT 127.0.0.1:%d HTTP/1.1\" 403", other);
    expect_log(e, logline);
    assert_int_equal(th_proc_stop(&e->detour, 5000), 0);

    /* A CIDR that does not cover where the name resolves: refused after resolution. */
    snprintf(fw, sizeof(fw), "allow_destinations = [\"10.0.0.0/8\"]; connect_ports = [%d];",
             e->origin_port);
    start_forward(e, NULL, fw, NULL);
    snprintf(url, sizeof(url), "http://localhost:%d/echo", e->origin_port);
    rs = proxy_get(e, url, NULL);
    expect_status(&rs, 403);
    th_resp_free(&rs);
    snprintf(req, sizeof(req), "CONNECT localhost:%d HTTP/1.1\r\n\r\n", e->origin_port);
    raw_expect(e, req, 403, true);
    snprintf(logline, sizeof(logline), "\"CONNECT localhost:%d HTTP/1.1\" 403", e->origin_port);
    expect_log(e, logline);
    assert_int_equal(th_proc_stop(&e->detour, 5000), 0);

    /* Name rules: the name is allowed, the address literal is not. */
    snprintf(fw, sizeof(fw), "allow_destinations = [\"localhost:%d\"]; connect_ports = [%d];",
             e->origin_port, e->origin_port);
    start_forward(e, NULL, fw, NULL);
    snprintf(url, sizeof(url), "http://LocalHost:%d/echo", e->origin_port);
    rs = proxy_get(e, url, NULL);
    expect_status(&rs, 200);
    th_resp_free(&rs);
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/echo", e->origin_port);
    rs = proxy_get(e, url, NULL);
    expect_status(&rs, 403);
    th_resp_free(&rs);
    long code = 0;
    snprintf(url, sizeof(url), "http://localhost:%d/echo", e->origin_port);
    th_req rq = {.url = url, .timeout_ms = 10000};
    assert_int_equal(via_proxy(e, &rq, true, &rs, &code), 0);
    assert_int_equal(code, 200);
    expect_status(&rs, 200);
    th_resp_free(&rs);
}

/* ---- loops -------------------------------------------------------------------------------- */

static void test_loop_508(void **state)
{
    th_env *e = env_of(state);
    char fw[128], url[256], req[256];
    th_resp rs;
    snprintf(fw, sizeof(fw), "connect_ports = [%d, %d];", e->port, e->origin_port);
    start_forward(e, NULL, fw, NULL);

    const char *hosts[] = {"127.0.0.1", "localhost"};
    for (size_t i = 0; i < 2; i++) {
        snprintf(url, sizeof(url), "http://%s:%d/echo", hosts[i], e->port);
        rs = proxy_get(e, url, NULL);
        expect_status(&rs, 508);
        th_resp_free(&rs);
        snprintf(req, sizeof(req), "CONNECT %s:%d HTTP/1.1\r\n\r\n", hosts[i], e->port);
        raw_expect(e, req, 508, true);
    }
    snprintf(req, sizeof(req), "CONNECT [::ffff:127.0.0.1]:%d HTTP/1.1\r\n\r\n", e->port);
    raw_expect(e, req, 508, true);
    char logline[128];
    snprintf(logline, sizeof(logline), "\"CONNECT 127.0.0.1:%d HTTP/1.1\" 508", e->port);
    expect_log(e, logline);
    snprintf(logline, sizeof(logline), "\"GET http://127.0.0.1:%d/echo HTTP/1.1\" 508", e->port);
    expect_log(e, logline);

    /* A request that already passed through detour. */
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/echo", e->origin_port);
    rs = proxy_get(e, url, (const char *const[]){"Via: 1.1 detour", NULL});
    expect_status(&rs, 508);
    th_resp_free(&rs);
}

/* connect() to 0.0.0.0 reaches 127.0.0.1: that is detour itself, not a destination. */
static void test_loop_unspecified_address(void **state)
{
    th_env *e = env_of(state);
    char fw[128], req[256];
    snprintf(fw, sizeof(fw), "connect_ports = [%d];", e->port);
    start_forward(e, NULL, fw, NULL);
    snprintf(req, sizeof(req), "CONNECT 0.0.0.0:%d HTTP/1.1\r\n\r\n", e->port);
    raw_expect(e, req, 508, true);
}

/* ---- Max-Forwards ---------------------------------------------------------------------- */

static void perform(th_env *e, const th_req *rq, bool proxy, th_resp *rs)
{
    if (proxy)
        via_proxy(e, rq, false, rs, NULL);
    else
        th_http(rq, rs);
}

/* TRACE and OPTIONS with Max-Forwards through detour at URL; PROXY: as a forward proxy. */
static void check_max_forwards(th_env *e, const char *url, bool proxy, const char *mode)
{
    static const char *const mf0[] = {"Max-Forwards: 0", NULL};
    static const char *const mf5[] = {"Max-Forwards: 5", NULL};
    static const char *const mf1[] = {"Max-Forwards: 1", NULL};
    th_resp rs;

    print_message("Max-Forwards in %s mode\n", mode);
    /* 0: detour answers OPTIONS itself, with Allow, and the origin never sees it. */
    th_req opt0 = {.method = "OPTIONS", .url = url, .headers = mf0, .keep_body = true};
    perform(e, &opt0, proxy, &rs);
    expect_status(&rs, 200);
    assert_non_null(th_resp_hdr(&rs, "Allow"));
    th_assert_contains(th_resp_hdr(&rs, "Allow"), "OPTIONS");
    assert_null(th_resp_hdr(&rs, "X-Origin-Method"));
    th_resp_free(&rs);
    /* 0: TRACE is answered by detour (refused: 405 or 501), never relayed. */
    th_req trace0 = {.method = "TRACE", .url = url, .headers = mf0, .keep_body = true};
    perform(e, &trace0, proxy, &rs);
    if (rs.status != 405 && rs.status != 501)
        fail_msg("%s mode: TRACE with Max-Forwards: 0 got %ld, expected 405 or 501", mode,
                 rs.status);
    assert_null(th_resp_hdr(&rs, "X-Origin-Method"));
    th_resp_free(&rs);
    /* Otherwise relayed with the value decremented. */
    th_req opt5 = {.method = "OPTIONS", .url = url, .headers = mf5, .keep_body = true};
    perform(e, &opt5, proxy, &rs);
    expect_status(&rs, 200);
    assert_string_equal(th_resp_hdr(&rs, "X-Origin-Method"), "OPTIONS");
    expect_echo_header(&rs, "Max-Forwards", "4");
    th_resp_free(&rs);
    th_req trace1 = {.method = "TRACE", .url = url, .headers = mf1, .keep_body = true};
    perform(e, &trace1, proxy, &rs);
    expect_status(&rs, 200);
    assert_string_equal(th_resp_hdr(&rs, "X-Origin-Method"), "TRACE");
    expect_echo_header(&rs, "Max-Forwards", "0");
    th_resp_free(&rs);
    /* Other methods carry Max-Forwards untouched, 0 included. */
    th_req get0 = {.url = url, .headers = mf0, .keep_body = true};
    perform(e, &get0, proxy, &rs);
    expect_status(&rs, 200);
    expect_echo_header(&rs, "Max-Forwards", "0");
    th_resp_free(&rs);
    /* No Max-Forwards: none is added. */
    th_req opt = {.method = "OPTIONS", .url = url, .keep_body = true};
    perform(e, &opt, proxy, &rs);
    expect_status(&rs, 200);
    expect_no_echo_header(&rs, "Max-Forwards");
    th_resp_free(&rs);
}

static void test_max_forwards_forward(void **state)
{
    th_env *e = env_of(state);
    char url[256];
    start_forward(e, NULL, NULL, NULL);
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/echo/mf", e->origin_port);
    check_max_forwards(e, url, true, "forward");
}

static void test_max_forwards_reverse(void **state)
{
    th_env *e = env_of(state);
    char url[256];
    assert_int_equal(th_detour_std(e, NULL, NULL), 0);
    snprintf(url, sizeof(url), "%s/echo/mf", e->url);
    check_max_forwards(e, url, false, "reverse");
}

/* Transparent mode without kernel redirection: the Host header names the origin. */
static void test_max_forwards_transparent(void **state)
{
    th_env *e = env_of(state);
    char url[256], host[64];
    assert_int_equal(th_detour_start(e,
                                     "listen = \"127.0.0.1:%d\";\n"
                                     "mode = \"transparent\";\n"
                                     "workers = 1;\n"
                                     "timeouts = { drain_ms = 3000; };\n",
                                     e->port),
                     0);
    /* curl sends Host from the URL: name detour's address, then override Host. */
    snprintf(url, sizeof(url), "%s/echo/mf", e->url);
    snprintf(host, sizeof(host), "Host: 127.0.0.1:%d", e->origin_port);
    th_resp rs;
    th_req rq = {.url = url, .headers = (const char *const[]){host, NULL}, .keep_body = true};
    th_http(&rq, &rs);
    expect_status(&rs, 200);
    expect_echo_header(&rs, "Host", host + 6);
    th_resp_free(&rs);

    const char *h0[] = {host, "Max-Forwards: 0", NULL};
    const char *h3[] = {host, "Max-Forwards: 3", NULL};
    th_req opt0 = {.method = "OPTIONS", .url = url, .headers = h0, .keep_body = true};
    th_http(&opt0, &rs);
    expect_status(&rs, 200);
    assert_non_null(th_resp_hdr(&rs, "Allow"));
    assert_null(th_resp_hdr(&rs, "X-Origin-Method"));
    th_resp_free(&rs);
    th_req trace0 = {.method = "TRACE", .url = url, .headers = h0, .keep_body = true};
    th_http(&trace0, &rs);
    assert_true(rs.status == 405 || rs.status == 501);
    th_resp_free(&rs);
    th_req opt3 = {.method = "OPTIONS", .url = url, .headers = h3, .keep_body = true};
    th_http(&opt3, &rs);
    expect_status(&rs, 200);
    expect_echo_header(&rs, "Max-Forwards", "2");
    th_resp_free(&rs);

    /* Host naming detour itself is a loop. */
    th_req self = {.url = url, .keep_body = true};
    th_http(&self, &rs);
    expect_status(&rs, 508);
    th_resp_free(&rs);
}

int main(void)
{
#define T(f) cmocka_unit_test_setup_teardown(f, th_it_setup, th_it_teardown)
    const struct CMUnitTest tests[] = {
        T(test_absolute_form_get_post),
        T(test_absolute_form_raw),
        T(test_routes_apply),
        T(test_route_relay_replaces_host),
        T(test_connect_tunnel_curl),
        T(test_connect_reply_head),
        T(test_connect_port_refused),
        T(test_connect_unreachable),
        T(test_connect_malformed),
        T(test_connect_oversized_head),
        T(test_connect_slow_head),
        T(test_tunnel_download_backpressure),
        T(test_tunnel_upload_backpressure),
        T(test_tunnel_upstream_close_flushes),
        T(test_tunnel_close_keeps_last_bytes),
        T(test_tunnel_linger_is_bounded),
        T(test_tunnel_client_close_closes_upstream),
        T(test_tunnel_idle_timeout),
        T(test_client_access),
        T(test_allow_destinations),
        T(test_loop_508),
        T(test_loop_unspecified_address),
        T(test_max_forwards_forward),
        T(test_max_forwards_reverse),
        T(test_max_forwards_transparent),
    };
#undef T
    return cmocka_run_group_tests(tests, NULL, NULL);
}
