/*
 * harness.h - helpers for the integration tests: free ports, temporary
 * directories, dt_origin and detour as child processes, config files, raw
 * sockets, libcurl requests that stream bodies, SHA-256.
 *
 * Every wait here has a deadline. Functions return 0 / a value >= 0 on
 * success and -1 on failure (with a message on stderr saying why), so tests
 * assert on them. Nothing here is thread-safe unless said so.
 *
 * Environment: DETOUR_BIN (default ./build/detour), DT_ORIGIN_BIN (default
 * dt_origin next to the test executable), DETOUR_TEST_TMP (default
 * /tmp/detour-tests).
 */
#ifndef DT_HARNESS_H
#define DT_HARNESS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include <curl/curl.h>

#include "pattern.h"

#define TH_PATH_MAX 512
#define TH_DIR_MAX 384 /* a directory, leaving room for file names */

/* ---- time, environment ------------------------------------------------- */

int64_t th_now_ms(void);
void th_sleep_ms(int ms);
/* getenv(NAME), or DFLT when unset or empty. */
const char *th_env_or(const char *name, const char *dflt);

/* ---- ports and directories --------------------------------------------- */

/* A TCP port on 127.0.0.1 that was free a moment ago (bind :0, close). */
int th_free_port(void);

/* Create $DETOUR_TEST_TMP/NAME-PID-N (fresh each call) into OUT. */
int th_mkdir_test(char *out, size_t cap, const char *name);

/* Write a file from a printf-style template. */
int th_write_file(const char *path, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* ---- child processes ----------------------------------------------------- */

typedef struct th_proc {
    pid_t pid; /* 0 when not started */
    char name[32];
    char out_path[TH_PATH_MAX]; /* the child's stdout */
    char err_path[TH_PATH_MAX]; /* the child's stderr */
    int wstatus;                /* raw wait status, valid when reaped */
    bool reaped;
    bool killed; /* SIGKILL was needed */
} th_proc;

/* Start ARGV[0] with stdout/stderr to DIR/NAME.out and DIR/NAME.err. */
int th_proc_spawn(th_proc *p, const char *dir, const char *name, char *const argv[]);

/* Wait until 127.0.0.1:PORT accepts, the child exits (-1) or TIMEOUT_MS pass (-1). */
int th_proc_wait_port(th_proc *p, int port, int timeout_ms);

/* Is the child still running (reaps it when not)? */
bool th_proc_running(th_proc *p);

/*
 * SIGTERM, wait up to GRACE_MS, then SIGKILL (p->killed) and wait again.
 * Returns the exit code, 128 + signal when a signal ended it, -1 when it
 * could not be reaped or was never started.
 */
int th_proc_stop(th_proc *p, int grace_ms);

/* Print the last TAIL bytes of the child's stderr and stdout to stderr. */
void th_proc_dump(const th_proc *p, size_t tail);

/* Peak resident set (VmHWM) / current (VmRSS) of PID in KiB, -1 when unknown. */
long th_proc_vmhwm_kb(pid_t pid);
long th_proc_vmrss_kb(pid_t pid);

/* Is PID built with AddressSanitizer (libasan mapped)? Its memory then says little. */
bool th_proc_sanitized(pid_t pid);

/* ---- dt_origin behind detour --------------------------------------------- */

typedef struct th_env {
    char dir[TH_DIR_MAX];
    char cfg_path[TH_PATH_MAX];
    int origin_port; /* chosen at init, even when no origin is started */
    int port;        /* detour's listening port */
    th_proc origin, detour;
    char url[64];        /* http://127.0.0.1:PORT (detour) */
    char origin_url[64]; /* http://127.0.0.1:ORIGIN_PORT */
} th_env;

/* Directory and both ports; starts nothing. */
int th_env_init(th_env *e, const char *name);
/* Start dt_origin on e->origin_port and wait until it accepts. */
int th_origin_start(th_env *e);
/* Write the config from a template (the test passes the ports) and start detour. */
int th_detour_start(th_env *e, const char *cfg_fmt, ...) __attribute__((format(printf, 2, 3)));
/*
 * The standard config: listen on e->port, workers = 2, upstream "o" =
 * dt_origin, one route "all" (prefix "/") relaying to it. TIMEOUTS and
 * LIMITS are the insides of those groups ("upstream_ms = 1000;") or NULL;
 * drain_ms = 3000 is always set so that stopping stays quick.
 */
int th_detour_std(th_env *e, const char *timeouts, const char *limits);
/*
 * Stop detour then dt_origin. Returns detour's exit code (contract: 0
 * after SIGTERM), 0 when it was never started, and dumps its logs when it
 * is not 0.
 */
int th_env_stop(th_env *e);

/*
 * cmocka fixtures. th_it_setup: a th_env (in *state) with dt_origin running;
 * the test then starts detour with the config it needs. th_it_teardown
 * stops both and fails when detour did not exit 0 after SIGTERM.
 */
int th_it_setup(void **state);
int th_it_teardown(void **state);

/* The origin's request counter from its /stats (that request itself included). */
unsigned long th_origin_requests(th_env *e);

/*
 * The value of the NTH (0-based) "header: NAME: value" line of a dt_origin
 * /echo body (NAME case-insensitive) into OUT; NULL when there is none.
 */
const char *th_echo_header(const char *body, const char *name, size_t nth, char *out, size_t cap);

/* ---- raw sockets ----------------------------------------------------------- */

/* Connect to 127.0.0.1:PORT (TCP_NODELAY). Returns the fd or -1. */
int th_connect(int port, int timeout_ms);

/* Send all bytes. Returns 0, or -1 (error, peer closed, deadline). */
int th_send_all(int fd, const void *buf, size_t n, int timeout_ms);
int th_send_str(int fd, const char *s, int timeout_ms);

/*
 * Send in STEP-byte pieces and stop early once the peer has something to
 * say (data, close or reset): a server refusing a large request answers
 * before reading it all, and writing on would turn its answer into a reset.
 * Returns the number of bytes sent.
 */
size_t th_send_watch(int fd, const void *buf, size_t n, size_t step, int timeout_ms);

/* Everything one socket received. */
typedef struct th_raw {
    char *data; /* NUL-terminated; may contain NULs */
    size_t len;
    bool closed;    /* EOF or reset seen */
    bool reset;     /* ECONNRESET */
    bool timed_out; /* the deadline passed first */
} th_raw;

/* Read until close, CAP bytes or the deadline. Returns 0 (check the flags) or -1. */
int th_recv_all(int fd, th_raw *r, size_t cap, int timeout_ms);
void th_raw_free(th_raw *r);

/* One response read from a socket without reading past it. */
typedef struct th_raw_resp {
    int status;
    char *head;        /* the head, NUL-terminated */
    char *body;        /* the first 1 MiB of the body, NUL-terminated */
    uint64_t body_len; /* all body bytes (de-chunked) */
    bool chunked;
    bool complete; /* the body ended as its framing says */
    bool closed;   /* the connection closed (EOF/reset) while reading */
} th_raw_resp;

/*
 * Read one response (a 1xx head is skipped). HEAD_REQUEST: no body expected.
 * Returns 0 when a whole head arrived (then check complete), -1 otherwise
 * (closed / timed out before a head; out->closed tells which).
 */
int th_recv_response(int fd, bool head_request, th_raw_resp *out, int timeout_ms);
void th_raw_resp_free(th_raw_resp *r);

/* "HTTP/1.x NNN ..." -> NNN, or -1. */
int th_parse_status(const char *buf, size_t n);

/* Value of the first NAME header in a head (case-insensitive) into OUT; NULL when absent. */
const char *th_head_header(const char *head, const char *name, char *out, size_t cap);

/* Wait for EOF or a reset, discarding data. True when it came before the deadline. */
bool th_wait_closed(int fd, int timeout_ms);

/*
 * A listening socket whose accept queue is full: connecting to it hangs in
 * SYN_SENT, which makes a connect timeout reproducible without a routed
 * blackhole. Returns the listening fd (close it, and *fill_fds[0..nfill),
 * when done) and its port in *port, or -1.
 */
int th_blackhole_listen(int *port, int *fill_fds, int nfill);

/* ---- SHA-256 ----------------------------------------------------------------- */

typedef struct th_sha {
    void *h; /* gnutls_hash_hd_t */
} th_sha;

int th_sha_init(th_sha *s);
void th_sha_update(th_sha *s, const void *p, size_t n);
/* Writes 64 hex digits and a NUL. */
void th_sha_final(th_sha *s, char hex[65]);
/* Free a hash that will not be finished (a transfer that failed). */
void th_sha_discard(th_sha *s);
void th_sha256_hex(const void *p, size_t n, char hex[65]);
/* SHA-256 of the first N bytes of the pattern (pattern.h). */
void th_pattern_sha256(uint64_t n, char hex[65]);

/* ---- libcurl ----------------------------------------------------------------- */

/* Produces upload bytes: up to CAP into BUF, returns the count, 0 at the end. */
typedef size_t (*th_gen_fn)(void *ctx, char *buf, size_t cap);

/* A generator of the first n pattern bytes; hashes what it produced. */
typedef struct th_pattern_src {
    uint64_t off, n;
    th_sha sha;
} th_pattern_src;
void th_pattern_src_init(th_pattern_src *s, uint64_t n);
size_t th_pattern_gen(void *ctx, char *buf, size_t cap);

typedef struct th_req {
    const char *method; /* NULL: GET */
    const char *url;
    const char *target;         /* raw request target (CURLOPT_REQUEST_TARGET), or NULL */
    const char *const *headers; /* NULL-terminated "Name: value" lines, sent in this order */
    const char *body;           /* small body from memory, or NULL */
    size_t body_len;
    th_gen_fn gen; /* streamed body (instead of body) */
    void *gen_ctx;
    int64_t upload_len; /* with gen: the Content-Length; -1: chunked */
    bool chunked;       /* a memory body goes chunked */
    bool keep_body;     /* keep up to 16 MiB of the response body */
    bool http10;
    long timeout_ms;      /* whole transfer; 0: 30 s */
    int64_t max_recv_bps; /* a slow reader: at most this many body bytes/s; 0: unlimited */
    CURL *easy;           /* reuse this handle (and its connection); NULL: a fresh one */
} th_req;

typedef struct th_hdr {
    char *name, *value;
} th_hdr;

typedef struct th_resp {
    CURLcode rc;
    char err[CURL_ERROR_SIZE];
    long status;
    th_hdr *hdr; /* the final response head, in order, duplicates kept */
    size_t nhdr;
    char *body; /* keep_body: NUL-terminated */
    size_t body_len;
    uint64_t body_total; /* bytes received */
    char sha[65];        /* of the received body */
    long num_connects;   /* new connections this transfer needed */
    long local_port;
    double total_s;
} th_resp;

/* Perform RQ. Returns 0 when curl completed (rs->rc == CURLE_OK), else -1; RS is always filled. */
int th_http(const th_req *rq, th_resp *rs);
void th_resp_free(th_resp *rs);
const char *th_resp_hdr(const th_resp *rs, const char *name);
const char *th_resp_hdr_nth(const th_resp *rs, const char *name, size_t nth);
size_t th_resp_hdr_count(const th_resp *rs, const char *name);

/* A prepared transfer, for curl multi. */
typedef struct th_xfer {
    CURL *easy;
    bool own_easy;
    struct curl_slist *slist;
    th_req req;
    th_resp resp;
    th_sha sha;
    size_t body_cap;
    size_t up_off; /* memory-body read position */
} th_xfer;

/* Set up X for RQ (strings in RQ must outlive the transfer). */
int th_xfer_init(th_xfer *x, const th_req *rq);
/* Fill x->resp after the transfer ended with RC. */
void th_xfer_done(th_xfer *x, CURLcode rc);
/* Free everything but x->resp (th_resp_free that). */
void th_xfer_cleanup(th_xfer *x);
/*
 * Run N prepared transfers at once on one multi handle until all end or
 * TIMEOUT_MS pass (the rest end with CURLE_OPERATION_TIMEDOUT). Returns the
 * number that completed with CURLE_OK.
 */
size_t th_multi_run(th_xfer *xs, size_t n, int timeout_ms);

/* Assert-style check for cmocka tests that prints both values of a string mismatch. */
#define th_assert_contains(hay, needle)                                                            \
    do {                                                                                           \
        const char *th_h_ = (hay), *th_n_ = (needle);                                              \
        if (th_h_ == NULL || strstr(th_h_, th_n_) == NULL) {                                       \
            fprintf(stderr, "expected to find \"%s\" in:\n%s\n", th_n_, th_h_ ? th_h_ : "(null)"); \
            fail();                                                                                \
        }                                                                                          \
    } while (0)

#endif
