/*
 * test_tls.c - TLS on both sides, with a CA and certificates made at test
 * time by the openssl command line tool (the test is skipped, saying so,
 * when there is none).
 *
 * Client side: a TLS listener next to a plain one; answers, keep-alive and
 * bodies both ways over TLS; X-Forwarded-Proto and $scheme follow the
 * listener; the certificate served is the configured one; plain HTTP on
 * the TLS port is not served.
 *
 * Upstream side: a second detour terminates TLS in front of dt_origin, and
 * the detour under test relays to it over https: verified against ca_file,
 * refused (502, kind="tls") with the wrong CA or the system bundle, taken
 * with tls_verify = false; Locations naming the https upstream are
 * rewritten to the client's origin. New upstream connections resume TLS
 * sessions (openssl s_server as the upstream says which were resumed).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "harness.h"
#include "ops_util.h"

#define TLS_UPLOAD (1024 * 1024)
#define TLS_DOWNLOAD 3000000

static th_env *env_of(void **state)
{
    return *state;
}

/* ---- certificates ------------------------------------------------------------- */

/* The openssl executable from PATH (th_proc_spawn wants a path), or false. */
static bool find_openssl(char *out, size_t cap)
{
    const char *path = th_env_or("PATH", "/usr/bin:/bin");
    while (*path != '\0') {
        size_t n = strcspn(path, ":");
        snprintf(out, cap, "%.*s/openssl", (int)n, path);
        if (n > 0 && access(out, X_OK) == 0)
            return true;
        path += n + (path[n] == ':');
    }
    return false;
}

static void run_openssl(const char *bin, const char *dir, char *const args[])
{
    char *argv[32];
    th_proc p;
    size_t n = 0;
    argv[n++] = (char *)bin;
    while (args[n - 1] != NULL && n < 31) {
        argv[n] = args[n - 1];
        n++;
    }
    argv[n] = NULL;
    assert_int_equal(th_proc_spawn(&p, dir, "openssl", argv), 0);
    int rc = ops_wait_exit(&p, 20000);
    if (rc != 0) {
        th_proc_dump(&p, 2000);
        fail_msg("openssl %s exited with %d", args[0], rc);
    }
}

/* A self-signed CA: DIR/NAME.pem and DIR/NAME.key. */
static void make_ca(const char *bin, const char *dir, const char *name)
{
    char key[TH_PATH_MAX], pem[TH_PATH_MAX], subj[64];
    snprintf(key, sizeof(key), "%s/%s.key", dir, name);
    snprintf(pem, sizeof(pem), "%s/%s.pem", dir, name);
    snprintf(subj, sizeof(subj), "/CN=detour test %s", name);
    char *args[] = {
        "req",    "-x509",   "-newkey", "ec",   "-pkeyopt", "ec_paramgen_curve:prime256v1",
        "-nodes", "-keyout", key,       "-out", pem,        "-days",
        "2",      "-subj",   subj,      NULL};
    run_openssl(bin, dir, args);
}

/* DIR/server.pem and DIR/server.key for localhost and 127.0.0.1, signed by DIR/ca. */
static void make_server_cert(const char *bin, const char *dir)
{
    char key[TH_PATH_MAX], csr[TH_PATH_MAX], pem[TH_PATH_MAX], ext[TH_PATH_MAX];
    char ca[TH_PATH_MAX], ca_key[TH_PATH_MAX];
    snprintf(key, sizeof(key), "%s/server.key", dir);
    snprintf(csr, sizeof(csr), "%s/server.csr", dir);
    snprintf(pem, sizeof(pem), "%s/server.pem", dir);
    snprintf(ext, sizeof(ext), "%s/server.ext", dir);
    snprintf(ca, sizeof(ca), "%s/ca.pem", dir);
    snprintf(ca_key, sizeof(ca_key), "%s/ca.key", dir);
    assert_int_equal(th_write_file(ext, "subjectAltName = DNS:localhost, IP:127.0.0.1\n"
                                        "basicConstraints = CA:FALSE\n"
                                        "keyUsage = critical, digitalSignature\n"
                                        "extendedKeyUsage = serverAuth\n"),
                     0);
    char *req[] = {
        "req",           "-new",    "-newkey", "ec",   "-pkeyopt", "ec_paramgen_curve:prime256v1",
        "-nodes",        "-keyout", key,       "-out", csr,        "-subj",
        "/CN=localhost", NULL};
    run_openssl(bin, dir, req);
    char *sign[] = {"x509",     "-req", "-in",         csr, "-CA",   ca,
                    "-CAkey",   ca_key, "-set_serial", "2", "-days", "2",
                    "-extfile", ext,    "-out",        pem, NULL};
    run_openssl(bin, dir, sign);
}

/* ca (trusted), wrong-ca (a stranger) and the server certificate, or skip. */
static void make_pki(const char *dir)
{
    char bin[TH_PATH_MAX];
    if (!find_openssl(bin, sizeof(bin))) {
        print_message(
            "skipped: no openssl executable in PATH (scripts/deps.sh test installs it)\n");
        skip();
    }
    make_ca(bin, dir, "ca");
    make_ca(bin, dir, "wrong-ca");
    make_server_cert(bin, dir);
}

/* ---- https requests ------------------------------------------------------------ */

/* th_http with the trust anchor CAINFO; keeps the connection when RQ->easy is given. */
static int https(const th_req *rq, const char *cainfo, th_resp *rs)
{
    th_xfer x;
    if (th_xfer_init(&x, rq) < 0) {
        memset(rs, 0, sizeof(*rs));
        rs->rc = CURLE_FAILED_INIT;
        return -1;
    }
    curl_easy_setopt(x.easy, CURLOPT_CAINFO, cainfo);
    curl_easy_setopt(x.easy, CURLOPT_SSL_VERIFYPEER, 1L);
    curl_easy_setopt(x.easy, CURLOPT_SSL_VERIFYHOST, 2L);
    CURLcode rc = curl_easy_perform(x.easy);
    th_xfer_done(&x, rc);
    th_xfer_cleanup(&x);
    *rs = x.resp;
    return rc == CURLE_OK ? 0 : -1;
}

static void expect_status(const th_resp *rs, long status, const char *what)
{
    if (rs->status != status)
        fail_msg("%s: status %ld (%s), expected %ld", what, rs->status,
                 rs->rc == CURLE_OK ? "ok" : rs->err, status);
}

/* The one value of NAME the origin saw, per its /echo body. */
static void expect_echo_header(const th_resp *rs, const char *name, const char *want)
{
    char v[256], second[256];
    if (th_echo_header(rs->body, name, 0, v, sizeof(v)) == NULL)
        fail_msg("the origin saw no %s header:\n%s", name, rs->body);
    if (th_echo_header(rs->body, name, 1, second, sizeof(second)) != NULL)
        fail_msg("the origin saw %s twice: \"%s\", \"%s\"", name, v, second);
    assert_string_equal(v, want);
}

/* ---- client side: the TLS listener --------------------------------------------- */

typedef struct tls_front {
    int tls_port;
    char tls_url[64];
    char ca[TH_PATH_MAX], wrong_ca[TH_PATH_MAX];
} tls_front;

/* A plain and a TLS listener; cert and key relative to the config's directory. */
static void start_tls_front(th_env *e, tls_front *t)
{
    int avoid[] = {e->port, e->origin_port};
    make_pki(e->dir);
    t->tls_port = ops_free_port_not(avoid, 2);
    snprintf(t->tls_url, sizeof(t->tls_url), "https://127.0.0.1:%d", t->tls_port);
    snprintf(t->ca, sizeof(t->ca), "%s/ca.pem", e->dir);
    snprintf(t->wrong_ca, sizeof(t->wrong_ca), "%s/wrong-ca.pem", e->dir);
    assert_int_equal(
        th_detour_start(
            e,
            "listen = ( \"127.0.0.1:%d\",\n"
            "           { address = \"127.0.0.1:%d\";\n"
            "             tls = { cert = \"server.pem\"; key = \"server.key\"; }; } );\n"
            "workers = 2;\n"
            "access_log = \"off\";\n"
            "timeouts = { drain_ms = 3000; };\n"
            "upstreams = { o = { url = \"http://127.0.0.1:%d\"; }; };\n"
            "routes = (\n"
            "  { name = \"where\"; match = { path = \"/where\"; };\n"
            "    redirect = { to = \"$scheme://$host/elsewhere$is_args$args\"; }; },\n"
            "  { name = \"all\"; match = { prefix = \"/\"; }; relay = { upstream = \"o\"; }; }\n"
            ");\n",
            e->port, t->tls_port, e->origin_port),
        0);
    assert_int_equal(th_proc_wait_port(&e->detour, t->tls_port, 5000), 0);
}

static void test_tls_listener_relays(void **state)
{
    th_env *e = env_of(state);
    tls_front t;
    char url[256];
    th_resp rs;
    start_tls_front(e, &t);

    snprintf(url, sizeof(url), "%s/echo/tls?x=1", t.tls_url);
    th_req rq = {.url = url, .keep_body = true};
    assert_int_equal(https(&rq, t.ca, &rs), 0);
    expect_status(&rs, 200, "GET over TLS");
    assert_string_equal(th_resp_hdr(&rs, "X-Origin-Target"), "/echo/tls?x=1");
    expect_echo_header(&rs, "X-Forwarded-Proto", "https");
    th_resp_free(&rs);

    /* The plain listener of the same process says http. */
    snprintf(url, sizeof(url), "%s/echo/plain", e->url);
    th_req plain = {.url = url, .keep_body = true};
    assert_int_equal(th_http(&plain, &rs), 0);
    expect_status(&rs, 200, "GET over plain HTTP");
    expect_echo_header(&rs, "X-Forwarded-Proto", "http");
    th_resp_free(&rs);
}

static void test_tls_scheme_in_redirect(void **state)
{
    th_env *e = env_of(state);
    tls_front t;
    char url[256];
    th_resp rs;
    start_tls_front(e, &t);

    snprintf(url, sizeof(url), "%s/where?a=b", t.tls_url);
    th_req rq = {.url = url};
    assert_int_equal(https(&rq, t.ca, &rs), 0);
    expect_status(&rs, 307, "redirect over TLS");
    assert_string_equal(th_resp_hdr(&rs, "Location"), "https://127.0.0.1/elsewhere?a=b");
    th_resp_free(&rs);

    snprintf(url, sizeof(url), "%s/where?a=b", e->url);
    th_req plain = {.url = url};
    assert_int_equal(th_http(&plain, &rs), 0);
    expect_status(&rs, 307, "redirect over plain HTTP");
    assert_string_equal(th_resp_hdr(&rs, "Location"), "http://127.0.0.1/elsewhere?a=b");
    th_resp_free(&rs);
}

/* Bodies both ways and keep-alive: the streaming paths over TLS. */
static void test_tls_bodies_and_keepalive(void **state)
{
    th_env *e = env_of(state);
    tls_front t;
    char url[256], want[65];
    th_resp rs;
    long connects = 0;
    CURL *easy = curl_easy_init();
    assert_non_null(easy);
    start_tls_front(e, &t);

    th_pattern_src src;
    th_pattern_src_init(&src, TLS_UPLOAD);
    snprintf(url, sizeof(url), "%s/echo/upload", t.tls_url);
    th_req up = {.method = "POST",
                 .url = url,
                 .gen = th_pattern_gen,
                 .gen_ctx = &src,
                 .upload_len = TLS_UPLOAD,
                 .easy = easy};
    assert_int_equal(https(&up, t.ca, &rs), 0);
    expect_status(&rs, 200, "1 MiB POST over TLS");
    th_sha_final(&src.sha, want);
    assert_string_equal(th_resp_hdr(&rs, "X-Body-Sha256"), want);
    connects += rs.num_connects;
    th_resp_free(&rs);

    snprintf(url, sizeof(url), "%s/bytes?n=%d", t.tls_url, TLS_DOWNLOAD);
    th_req down = {.url = url, .easy = easy};
    assert_int_equal(https(&down, t.ca, &rs), 0);
    expect_status(&rs, 200, "3 MB GET over TLS");
    th_pattern_sha256(TLS_DOWNLOAD, want);
    assert_int_equal(rs.body_total, TLS_DOWNLOAD);
    assert_string_equal(rs.sha, want);
    connects += rs.num_connects;
    th_resp_free(&rs);

    for (int i = 0; i < 5; i++) {
        snprintf(url, sizeof(url), "%s/echo/ka?i=%d", t.tls_url, i);
        th_req rq = {.url = url, .easy = easy};
        assert_int_equal(https(&rq, t.ca, &rs), 0);
        expect_status(&rs, 200, "keep-alive GET over TLS");
        connects += rs.num_connects;
        th_resp_free(&rs);
    }
    curl_easy_cleanup(easy);
    assert_int_equal(connects, 1); /* seven requests, one TLS connection */
}

/* The served certificate is the configured one: another CA does not vouch for it. */
static void test_tls_serves_configured_cert(void **state)
{
    th_env *e = env_of(state);
    tls_front t;
    char url[256];
    th_resp rs;
    start_tls_front(e, &t);
    snprintf(url, sizeof(url), "%s/echo/x", t.tls_url);
    th_req rq = {.url = url};
    assert_int_equal(https(&rq, t.wrong_ca, &rs), -1);
    if (rs.rc != CURLE_PEER_FAILED_VERIFICATION)
        fail_msg("with the wrong CA: curl %d (%s), expected a verification failure", rs.rc, rs.err);
    th_resp_free(&rs);
}

/* Plain HTTP sent to the TLS port is not served as HTTP, and harms nothing. */
static void test_tls_port_refuses_plain_http(void **state)
{
    th_env *e = env_of(state);
    tls_front t;
    char url[256];
    th_raw raw;
    th_resp rs;
    start_tls_front(e, &t);
    int fd = th_connect(t.tls_port, 2000);
    assert_true(fd >= 0);
    assert_int_equal(th_send_str(fd, "GET /echo/x HTTP/1.1\r\nHost: a\r\n\r\n", 2000), 0);
    assert_int_equal(th_recv_all(fd, &raw, 65536, 5000), 0);
    close(fd);
    assert_true(raw.closed);
    assert_true(raw.len < 5 || memcmp(raw.data, "HTTP/", 5) != 0);
    th_raw_free(&raw);

    snprintf(url, sizeof(url), "%s/echo/after", t.tls_url);
    th_req rq = {.url = url};
    assert_int_equal(https(&rq, t.ca, &rs), 0);
    expect_status(&rs, 200, "GET over TLS after a plain-text client");
    th_resp_free(&rs);
}

/* ---- upstream side: https upstreams -------------------------------------------- */

typedef struct tls_chain {
    th_proc term; /* the second detour: TLS in front of dt_origin */
    int term_port;
    int admin_port;
} tls_chain;

static void detour_path(char *out, size_t cap)
{
    const char *env = getenv("DETOUR_BIN");
    if (env && *env)
        snprintf(out, cap, "%s", env);
    else
        snprintf(out, cap, "%s/build/detour", th_env_or("DETOUR_SOURCE_DIR", "."));
}

/* The TLS terminator: listens with server.pem, relays to dt_origin as "tlsterm". */
static void start_terminator(th_env *e, tls_chain *c)
{
    char cfg[TH_PATH_MAX], bin[TH_PATH_MAX];
    int avoid[] = {e->port, e->origin_port};
    c->term_port = ops_free_port_not(avoid, 2);
    snprintf(cfg, sizeof(cfg), "%s/term.cfg", e->dir);
    assert_int_equal(
        th_write_file(cfg,
                      "listen = ( { address = \"127.0.0.1:%d\";\n"
                      "             tls = { cert = \"server.pem\"; key = \"server.key\"; }; } );\n"
                      "workers = 1;\n"
                      "access_log = \"off\";\n"
                      "via_name = \"tlsterm\";\n"
                      "timeouts = { drain_ms = 2000; };\n"
                      "upstreams = { o = { url = \"http://127.0.0.1:%d\"; }; };\n"
                      "routes = ( { name = \"all\"; match = { prefix = \"/\"; };\n"
                      "             relay = { upstream = \"o\"; }; } );\n",
                      c->term_port, e->origin_port),
        0);
    detour_path(bin, sizeof(bin));
    char *argv[] = {bin, "-c", cfg, NULL};
    assert_int_equal(th_proc_spawn(&c->term, e->dir, "term", argv), 0);
    if (th_proc_wait_port(&c->term, c->term_port, 5000) < 0) {
        th_proc_dump(&c->term, 2000);
        fail();
    }
}

/* The detour under test: one upstream per way of trusting the terminator. */
static void start_chain(th_env *e, tls_chain *c)
{
    make_pki(e->dir);
    start_terminator(e, c);
    int avoid[] = {e->port, e->origin_port, c->term_port};
    c->admin_port = ops_free_port_not(avoid, 3);
    int t = c->term_port;
    assert_int_equal(
        th_detour_start(
            e,
            "listen = \"127.0.0.1:%d\";\n"
            "admin = \"127.0.0.1:%d\";\n"
            "workers = 2;\n"
            "access_log = \"off\";\n"
            "via_name = \"edge\";\n"
            "timeouts = { drain_ms = 3000; };\n"
            "upstreams = {\n"
            "  good = { url = \"https://127.0.0.1:%d\"; tls_verify = true; ca_file = \"ca.pem\"; "
            "};\n"
            "  wrongca = { url = \"https://127.0.0.1:%d\"; ca_file = \"wrong-ca.pem\"; };\n"
            "  sysca = { url = \"https://127.0.0.1:%d\"; };\n"
            "  noverify = { url = \"https://127.0.0.1:%d\"; tls_verify = false; };\n"
            "};\n"
            "routes = (\n"
            "  { name = \"bad\"; match = { prefix = \"/echo/bad\"; }; relay = { upstream = "
            "\"wrongca\"; }; },\n"
            "  { name = \"sys\"; match = { prefix = \"/echo/sys\"; }; relay = { upstream = "
            "\"sysca\"; }; },\n"
            "  { name = \"nov\"; match = { prefix = \"/echo/nov\"; }; relay = { upstream = "
            "\"noverify\"; }; },\n"
            "  { name = \"good\"; match = { prefix = \"/\"; }; relay = { upstream = \"good\"; }; "
            "}\n"
            ");\n",
            e->port, c->admin_port, t, t, t, t),
        0);
    assert_int_equal(th_proc_wait_port(&e->detour, c->admin_port, 5000), 0);
}

static th_resp via_chain(th_env *e, const char *path)
{
    char url[512];
    th_resp rs;
    snprintf(url, sizeof(url), "%s%s", e->url, path);
    th_req rq = {.url = url, .keep_body = true, .timeout_ms = 10000};
    th_http(&rq, &rs);
    return rs;
}

static void stop_terminator(tls_chain *c)
{
    int rc = th_proc_stop(&c->term, 5000);
    if (rc != 0)
        th_proc_dump(&c->term, 2000);
    assert_int_equal(rc, 0);
}

static void test_https_upstream_verified(void **state)
{
    th_env *e = env_of(state);
    tls_chain c;
    char want[65], loc[128], path[256];
    start_chain(e, &c);

    th_resp rs = via_chain(e, "/echo/good?q=1");
    expect_status(&rs, 200, "through an https upstream");
    assert_string_equal(th_resp_hdr(&rs, "X-Origin-Target"), "/echo/good?q=1");
    /* Both hops relayed, in order; the last hop arrived over TLS. */
    char via0[64], via1[64];
    assert_non_null(th_echo_header(rs.body, "Via", 0, via0, sizeof(via0)));
    assert_non_null(th_echo_header(rs.body, "Via", 1, via1, sizeof(via1)));
    assert_string_equal(via0, "1.1 edge");
    assert_string_equal(via1, "1.1 tlsterm");
    expect_echo_header(&rs, "X-Forwarded-Proto", "https");
    th_resp_free(&rs);

    /* A body up through the https upstream, and one down from it. */
    th_pattern_src src;
    char url[256];
    th_pattern_src_init(&src, 300000);
    snprintf(url, sizeof(url), "%s/echo/good-upload", e->url);
    th_req up = {
        .method = "POST", .url = url, .gen = th_pattern_gen, .gen_ctx = &src, .upload_len = 300000};
    assert_int_equal(th_http(&up, &rs), 0);
    expect_status(&rs, 200, "POST through an https upstream");
    th_sha_final(&src.sha, want);
    assert_string_equal(th_resp_hdr(&rs, "X-Body-Sha256"), want);
    th_resp_free(&rs);
    rs = via_chain(e, "/bytes?n=2000000");
    expect_status(&rs, 200, "GET /bytes through an https upstream");
    th_pattern_sha256(2000000, want);
    assert_string_equal(rs.sha, want);
    th_resp_free(&rs);

    /* A Location naming the https upstream's origin becomes the client's. */
    snprintf(path, sizeof(path), "/status/302?location=https://127.0.0.1:%d/landing", c.term_port);
    rs = via_chain(e, path);
    expect_status(&rs, 302, "redirect from an https upstream");
    snprintf(loc, sizeof(loc), "http://127.0.0.1:%d/landing", e->port);
    assert_string_equal(th_resp_hdr(&rs, "Location"), loc);
    th_resp_free(&rs);
    stop_terminator(&c);
}

static void test_https_upstream_wrong_ca(void **state)
{
    th_env *e = env_of(state);
    tls_chain c;
    start_chain(e, &c);

    th_resp rs = via_chain(e, "/echo/bad");
    expect_status(&rs, 502, "https upstream signed by another CA");
    th_resp_free(&rs);
    rs = via_chain(e, "/echo/sys");
    expect_status(&rs, 502, "https upstream checked against the system bundle");
    th_resp_free(&rs);
    rs = via_chain(e, "/echo/nov");
    expect_status(&rs, 200, "https upstream with tls_verify = false");
    th_resp_free(&rs);

    const char *series[] = {"detour_upstream_errors_total{upstream=\"wrongca\",kind=\"tls\"}",
                            "detour_upstream_errors_total{upstream=\"sysca\",kind=\"tls\"}",
                            "detour_requests_total{route=\"bad\",action=\"error\",code=\"502\"}"};
    for (size_t i = 0; i < 3; i++) {
        double v = ops_wait_metric(c.admin_port, series[i], 1, 3000);
        if (v != 1) {
            char *m = ops_scrape(c.admin_port);
            fail_msg("%s = %g, expected 1:\n%s", series[i], v, m ? m : "(no scrape)");
        }
    }
    stop_terminator(&c);
}

/*
 * A new upstream TLS connection resumes the session of an earlier one: every
 * transfer has a new curl handle, so the sessions must be shared per worker.
 * `openssl s_server -www` closes after each answer (every request is a new
 * connection) and its status page says "New" or "Reused" for the session.
 */
static void test_https_upstream_resumes_sessions(void **state)
{
    th_env *e = env_of(state);
    char bin[TH_PATH_MAX], cert[TH_PATH_MAX], key[TH_PATH_MAX], accept[32];
    th_proc server;
    make_pki(e->dir);
    assert_true(find_openssl(bin, sizeof(bin)));
    int avoid[] = {e->port, e->origin_port};
    int port = ops_free_port_not(avoid, 2);
    snprintf(accept, sizeof(accept), "127.0.0.1:%d", port);
    snprintf(cert, sizeof(cert), "%s/server.pem", e->dir);
    snprintf(key, sizeof(key), "%s/server.key", e->dir);
    char *argv[] = {bin, "s_server", "-accept", accept, "-cert", cert, "-key", key, "-www",
                    "-quiet", NULL};
    assert_int_equal(th_proc_spawn(&server, e->dir, "s_server", argv), 0);
    assert_int_equal(th_proc_wait_port(&server, port, 5000), 0);
    assert_int_equal(th_detour_start(e,
                                     "listen = \"127.0.0.1:%d\";\n"
                                     "workers = 1;\n"
                                     "access_log = \"off\";\n"
                                     "timeouts = { drain_ms = 2000; };\n"
                                     "upstreams = { s = { url = \"https://127.0.0.1:%d\"; "
                                     "ca_file = \"ca.pem\"; }; };\n"
                                     "routes = ( { name = \"all\"; match = { prefix = \"/\"; };\n"
                                     "             relay = { upstream = \"s\"; }; } );\n",
                                     e->port, port),
                     0);
    /* Collected first, checked after s_server is stopped, so a failure
     * leaves no process behind. */
    int ok = 0, fresh = 0, reused = 0;
    for (int i = 0; i < 3; i++) {
        th_resp rs = via_chain(e, "/");
        const char *body = rs.body != NULL ? rs.body : "";
        ok += rs.status == 200;
        fresh += i == 0 && strstr(body, "\nNew, ") != NULL;
        reused += i > 0 && strstr(body, "\nReused, ") != NULL;
        th_resp_free(&rs);
    }
    th_proc_stop(&server, 3000);
    if (ok != 3)
        fail_msg("%d of 3 requests through openssl s_server answered 200", ok);
    if (fresh != 1)
        fail_msg("the first upstream connection did not start a new TLS session");
    if (reused != 2)
        fail_msg("%d of 2 later upstream connections resumed the TLS session", reused);
}

int main(void)
{
#define T(f) cmocka_unit_test_setup_teardown(f, th_it_setup, th_it_teardown)
    const struct CMUnitTest tests[] = {
        T(test_tls_listener_relays),         T(test_tls_scheme_in_redirect),
        T(test_tls_bodies_and_keepalive),    T(test_tls_serves_configured_cert),
        T(test_tls_port_refuses_plain_http), T(test_https_upstream_verified),
        T(test_https_upstream_wrong_ca),      T(test_https_upstream_resumes_sessions),
    };
#undef T
    return cmocka_run_group_tests(tests, NULL, NULL);
}
