/*
 * harness.c - see harness.h. Test code: it favours plain blocking calls
 * with explicit deadlines over cleverness, and says why a step failed.
 */
#include "harness.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <gnutls/crypto.h>
#include <gnutls/gnutls.h>
#include <libgen.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <setjmp.h> /* before cmocka.h, which needs jmp_buf */
#include <cmocka.h>

#define TH_BODY_KEEP_MAX (16u * 1024 * 1024)
#define TH_RAW_BODY_KEEP (1u * 1024 * 1024)
#define TH_HEAD_MAX (1024 * 1024)
#define TH_START_TIMEOUT_MS 10000
#define TH_STOP_GRACE_MS 15000

/* ---- time, environment --------------------------------------------------- */

int64_t th_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void th_sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
        ;
}

const char *th_env_or(const char *name, const char *dflt)
{
    const char *v = getenv(name);
    return (v && *v) ? v : dflt;
}

static int remaining_ms(int64_t deadline)
{
    int64_t left = deadline - th_now_ms();
    return left > 0 ? (int)left : 0;
}

/* ---- ports and directories ----------------------------------------------- */

int th_free_port(void)
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof(a);
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int port = -1;
    if (fd < 0)
        return -1;
    if (bind(fd, (struct sockaddr *)&a, sizeof(a)) == 0 &&
        getsockname(fd, (struct sockaddr *)&a, &len) == 0)
        port = ntohs(a.sin_port);
    close(fd);
    return port;
}

static int mkdir_p(const char *path)
{
    char tmp[TH_PATH_MAX];
    snprintf(tmp, sizeof(tmp), "%s", path);
    for (char *p = tmp + 1; *p; p++) {
        if (*p != '/')
            continue;
        *p = '\0';
        if (mkdir(tmp, 0755) < 0 && errno != EEXIST)
            return -1;
        *p = '/';
    }
    return (mkdir(tmp, 0755) < 0 && errno != EEXIST) ? -1 : 0;
}

int th_mkdir_test(char *out, size_t cap, const char *name)
{
    static int seq;
    const char *base = th_env_or("DETOUR_TEST_TMP", "/tmp/detour-tests");
    int n = snprintf(out, cap, "%s/%s-%d-%d", base, name, (int)getpid(), ++seq);
    if (n < 0 || (size_t)n >= cap || mkdir_p(out) < 0) {
        fprintf(stderr, "harness: cannot create %s: %s\n", out, strerror(errno));
        return -1;
    }
    return 0;
}

static int vwrite_file(const char *path, const char *fmt, va_list ap)
{
    FILE *f = fopen(path, "w");
    if (f == NULL) {
        fprintf(stderr, "harness: cannot write %s: %s\n", path, strerror(errno));
        return -1;
    }
    int rc = vfprintf(f, fmt, ap) < 0 ? -1 : 0;
    if (fclose(f) != 0)
        rc = -1;
    return rc;
}

int th_write_file(const char *path, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int rc = vwrite_file(path, fmt, ap);
    va_end(ap);
    return rc;
}

/* ---- child processes ------------------------------------------------------- */

static void child_exec(const th_proc *p, char *const argv[])
{
    int out = open(p->out_path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    int err = open(p->err_path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (out < 0 || err < 0)
        _exit(126);
    dup2(out, 1);
    dup2(err, 2);
    /* A test that dies must not leave servers behind. */
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    signal(SIGPIPE, SIG_DFL);
    execv(argv[0], argv);
    dprintf(2, "harness: exec %s: %s\n", argv[0], strerror(errno));
    _exit(127);
}

int th_proc_spawn(th_proc *p, const char *dir, const char *name, char *const argv[])
{
    memset(p, 0, sizeof(*p));
    snprintf(p->name, sizeof(p->name), "%s", name);
    snprintf(p->out_path, sizeof(p->out_path), "%s/%s.out", dir, name);
    snprintf(p->err_path, sizeof(p->err_path), "%s/%s.err", dir, name);
    if (access(argv[0], X_OK) != 0) {
        fprintf(stderr, "harness: %s is not executable: %s\n", argv[0], strerror(errno));
        return -1;
    }
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0)
        return -1;
    if (pid == 0)
        child_exec(p, argv);
    p->pid = pid;
    return 0;
}

bool th_proc_running(th_proc *p)
{
    if (p->pid <= 0 || p->reaped)
        return false;
    pid_t r = waitpid(p->pid, &p->wstatus, WNOHANG);
    if (r == p->pid)
        p->reaped = true;
    return r == 0;
}

static bool port_accepts(int port, int timeout_ms)
{
    int fd = th_connect(port, timeout_ms);
    if (fd < 0)
        return false;
    close(fd);
    return true;
}

int th_proc_wait_port(th_proc *p, int port, int timeout_ms)
{
    int64_t deadline = th_now_ms() + timeout_ms;
    while (th_now_ms() < deadline) {
        if (!th_proc_running(p)) {
            fprintf(stderr, "harness: %s exited before listening on %d\n", p->name, port);
            return -1;
        }
        if (port_accepts(port, 200))
            return 0;
        th_sleep_ms(20);
    }
    fprintf(stderr, "harness: %s not accepting on %d after %d ms\n", p->name, port, timeout_ms);
    return -1;
}

static int decode_status(int ws)
{
    if (WIFEXITED(ws))
        return WEXITSTATUS(ws);
    if (WIFSIGNALED(ws))
        return 128 + WTERMSIG(ws);
    return -1;
}

/* Poll for the child's end until the deadline. */
static bool reap_by(th_proc *p, int64_t deadline)
{
    do {
        if (!th_proc_running(p))
            return p->reaped;
        th_sleep_ms(10);
    } while (th_now_ms() < deadline);
    return !th_proc_running(p) && p->reaped;
}

int th_proc_stop(th_proc *p, int grace_ms)
{
    if (p->pid <= 0)
        return -1;
    if (!p->reaped) {
        kill(p->pid, SIGTERM);
        if (!reap_by(p, th_now_ms() + grace_ms)) {
            fprintf(stderr, "harness: %s ignored SIGTERM for %d ms, killing it\n", p->name,
                    grace_ms);
            kill(p->pid, SIGKILL);
            p->killed = true;
            reap_by(p, th_now_ms() + 5000);
        }
    }
    return p->reaped ? decode_status(p->wstatus) : -1;
}

static void dump_tail(const char *label, const char *path, size_t tail)
{
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return;
    fseek(f, 0, SEEK_END);
    long size = ftell(f);
    long from = size > (long)tail ? size - (long)tail : 0;
    fseek(f, from, SEEK_SET);
    fprintf(stderr, "---- %s (%s, last %ld bytes) ----\n", label, path, size - from);
    char buf[4096];
    size_t n;
    while ((n = fread(buf, 1, sizeof(buf), f)) > 0)
        fwrite(buf, 1, n, stderr);
    fprintf(stderr, "---- end of %s ----\n", label);
    fclose(f);
}

void th_proc_dump(const th_proc *p, size_t tail)
{
    if (p->pid <= 0)
        return;
    dump_tail(p->err_path, p->err_path, tail);
    dump_tail(p->out_path, p->out_path, tail);
}

static long status_field_kb(pid_t pid, const char *field)
{
    char path[64], line[256];
    long kb = -1;
    size_t fl = strlen(field);
    snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return -1;
    while (fgets(line, sizeof(line), f))
        if (strncmp(line, field, fl) == 0 && line[fl] == ':')
            kb = strtol(line + fl + 1, NULL, 10);
    fclose(f);
    return kb;
}

long th_proc_vmhwm_kb(pid_t pid)
{
    return status_field_kb(pid, "VmHWM");
}

long th_proc_vmrss_kb(pid_t pid)
{
    return status_field_kb(pid, "VmRSS");
}

bool th_proc_sanitized(pid_t pid)
{
    char path[64], line[512];
    bool asan = false;
    snprintf(path, sizeof(path), "/proc/%d/maps", (int)pid);
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return false;
    while (!asan && fgets(line, sizeof(line), f))
        asan = strstr(line, "libasan") != NULL;
    fclose(f);
    return asan;
}

/* ---- dt_origin behind detour ------------------------------------------------ */

static void self_dir(char *out, size_t cap)
{
    char exe[TH_PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
    exe[n > 0 ? n : 0] = '\0';
    snprintf(out, cap, "%s", n > 0 ? dirname(exe) : ".");
}

static void origin_bin(char *out, size_t cap)
{
    char dir[TH_DIR_MAX];
    const char *env = getenv("DT_ORIGIN_BIN");
    if (env && *env) {
        snprintf(out, cap, "%s", env);
        return;
    }
    self_dir(dir, sizeof(dir));
    snprintf(out, cap, "%s/dt_origin", dir);
}

static void detour_bin(char *out, size_t cap)
{
    const char *env = getenv("DETOUR_BIN");
    if (env && *env)
        snprintf(out, cap, "%s", env);
    else
        snprintf(out, cap, "%s/build/detour", th_env_or("DETOUR_SOURCE_DIR", "."));
}

int th_env_init(th_env *e, const char *name)
{
    memset(e, 0, sizeof(*e));
    if (th_mkdir_test(e->dir, sizeof(e->dir), name) < 0)
        return -1;
    e->origin_port = th_free_port();
    do {
        e->port = th_free_port();
    } while (e->port == e->origin_port);
    if (e->origin_port < 0 || e->port < 0)
        return -1;
    snprintf(e->url, sizeof(e->url), "http://127.0.0.1:%d", e->port);
    snprintf(e->origin_url, sizeof(e->origin_url), "http://127.0.0.1:%d", e->origin_port);
    snprintf(e->cfg_path, sizeof(e->cfg_path), "%s/detour.cfg", e->dir);
    return 0;
}

int th_origin_start(th_env *e)
{
    char bin[TH_PATH_MAX], listen[64];
    origin_bin(bin, sizeof(bin));
    snprintf(listen, sizeof(listen), "127.0.0.1:%d", e->origin_port);
    char *argv[] = {bin, "-l", listen, NULL};
    if (th_proc_spawn(&e->origin, e->dir, "origin", argv) < 0)
        return -1;
    if (th_proc_wait_port(&e->origin, e->origin_port, TH_START_TIMEOUT_MS) < 0) {
        th_proc_dump(&e->origin, 2000);
        return -1;
    }
    return 0;
}

static int detour_spawn(th_env *e)
{
    char bin[TH_PATH_MAX];
    detour_bin(bin, sizeof(bin));
    char *argv[] = {bin, "-c", e->cfg_path, NULL};
    if (th_proc_spawn(&e->detour, e->dir, "detour", argv) < 0)
        return -1;
    if (th_proc_wait_port(&e->detour, e->port, TH_START_TIMEOUT_MS) < 0) {
        th_proc_dump(&e->detour, 4000);
        return -1;
    }
    return 0;
}

int th_detour_start(th_env *e, const char *cfg_fmt, ...)
{
    va_list ap;
    va_start(ap, cfg_fmt);
    int rc = vwrite_file(e->cfg_path, cfg_fmt, ap);
    va_end(ap);
    return rc < 0 ? -1 : detour_spawn(e);
}

int th_detour_std(th_env *e, const char *timeouts, const char *limits)
{
    bool lim = limits && *limits;
    return th_detour_start(e,
                           "listen = \"127.0.0.1:%d\";\n"
                           "workers = 2;\n"
                           "timeouts = { drain_ms = 3000; %s };\n"
                           "%s%s%s"
                           "upstreams = { o = { url = \"http://127.0.0.1:%d\"; }; };\n"
                           "routes = (\n"
                           "  { name = \"all\"; match = { prefix = \"/\"; };\n"
                           "    relay = { upstream = \"o\"; }; }\n"
                           ");\n",
                           e->port, timeouts ? timeouts : "", lim ? "limits = { " : "",
                           lim ? limits : "", lim ? " };\n" : "", e->origin_port);
}

int th_env_stop(th_env *e)
{
    int rc = 0;
    if (e->detour.pid > 0) {
        rc = th_proc_stop(&e->detour, TH_STOP_GRACE_MS);
        if (rc != 0) {
            fprintf(stderr, "harness: detour ended with status %d%s\n", rc,
                    e->detour.killed ? " (SIGKILL needed)" : "");
            th_proc_dump(&e->detour, 4000);
        }
    }
    if (e->origin.pid > 0 && th_proc_stop(&e->origin, 5000) != 0)
        th_proc_dump(&e->origin, 2000);
    return rc;
}

int th_it_setup(void **state)
{
    th_env *e = calloc(1, sizeof(*e));
    if (e == NULL || th_env_init(e, program_invocation_short_name) < 0 || th_origin_start(e) < 0) {
        free(e);
        return -1;
    }
    *state = e;
    return 0;
}

int th_it_teardown(void **state)
{
    th_env *e = *state;
    int rc = e ? th_env_stop(e) : 0;
    free(e);
    *state = NULL;
    return rc == 0 ? 0 : -1;
}

unsigned long th_origin_requests(th_env *e)
{
    char url[128];
    unsigned long n = 0;
    th_resp rs;
    snprintf(url, sizeof(url), "%s/stats", e->origin_url);
    th_req rq = {.url = url, .keep_body = true};
    assert_int_equal(th_http(&rq, &rs), 0);
    assert_int_equal(sscanf(rs.body, "requests: %lu", &n), 1);
    th_resp_free(&rs);
    return n;
}

const char *th_echo_header(const char *body, const char *name, size_t nth, char *out, size_t cap)
{
    size_t nl = strlen(name);
    for (const char *line = body; line && *line; line = strchr(line, '\n')) {
        if (*line == '\n')
            line++;
        if (strncmp(line, "header: ", 8) != 0 || strncasecmp(line + 8, name, nl) != 0 ||
            strncmp(line + 8 + nl, ": ", 2) != 0 || nth-- > 0)
            continue;
        const char *v = line + 8 + nl + 2;
        size_t vn = strcspn(v, "\n");
        vn = vn < cap - 1 ? vn : cap - 1;
        memcpy(out, v, vn);
        out[vn] = '\0';
        return out;
    }
    return NULL;
}

/* ---- raw sockets --------------------------------------------------------------- */

static int wait_fd(int fd, short events, int64_t deadline)
{
    struct pollfd p = {.fd = fd, .events = events};
    for (;;) {
        int r = poll(&p, 1, remaining_ms(deadline));
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return -1;
        return p.revents;
    }
}

int th_connect(int port, int timeout_ms)
{
    struct sockaddr_in a = {.sin_family = AF_INET,
                            .sin_port = htons((uint16_t)port),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    int one = 1, err = 0;
    socklen_t el = sizeof(err);
    if (fd < 0)
        return -1;
    if (connect(fd, (struct sockaddr *)&a, sizeof(a)) < 0 && errno != EINPROGRESS)
        goto fail;
    if (wait_fd(fd, POLLOUT, th_now_ms() + timeout_ms) < 0)
        goto fail;
    if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &el) < 0 || err != 0)
        goto fail;
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK);
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    return fd;
fail:
    close(fd);
    return -1;
}

int th_send_all(int fd, const void *buf, size_t n, int timeout_ms)
{
    const char *p = buf;
    int64_t deadline = th_now_ms() + timeout_ms;
    while (n > 0) {
        if (wait_fd(fd, POLLOUT, deadline) < 0)
            return -1;
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (w < 0 && (errno == EINTR || errno == EAGAIN))
            continue;
        if (w <= 0)
            return -1;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

int th_send_str(int fd, const char *s, int timeout_ms)
{
    return th_send_all(fd, s, strlen(s), timeout_ms);
}

size_t th_send_watch(int fd, const void *buf, size_t n, size_t step, int timeout_ms)
{
    const char *p = buf;
    size_t sent = 0;
    int64_t deadline = th_now_ms() + timeout_ms;
    while (sent < n && th_now_ms() < deadline) {
        struct pollfd pf = {.fd = fd, .events = POLLIN};
        if (poll(&pf, 1, 0) > 0)
            break; /* the peer answered or closed: stop writing */
        size_t k = n - sent < step ? n - sent : step;
        if (th_send_all(fd, p + sent, k, remaining_ms(deadline)) < 0)
            break;
        sent += k;
    }
    return sent;
}

int th_recv_all(int fd, th_raw *r, size_t cap, int timeout_ms)
{
    int64_t deadline = th_now_ms() + timeout_ms;
    size_t have = 0;
    memset(r, 0, sizeof(*r));
    r->data = malloc(cap + 1);
    if (r->data == NULL)
        return -1;
    while (have < cap) {
        if (wait_fd(fd, POLLIN, deadline) < 0) {
            r->timed_out = true;
            break;
        }
        ssize_t n = recv(fd, r->data + have, cap - have, MSG_DONTWAIT);
        if (n < 0 && (errno == EINTR || errno == EAGAIN))
            continue;
        if (n <= 0) {
            r->closed = true;
            r->reset = n < 0 && errno == ECONNRESET;
            break;
        }
        have += (size_t)n;
    }
    r->len = have;
    r->data[have] = '\0';
    return 0;
}

void th_raw_free(th_raw *r)
{
    free(r->data);
    r->data = NULL;
}

/* One byte, waiting until the deadline. 1, 0 at EOF/reset, -1 on timeout. */
static int recv_byte(int fd, char *c, int64_t deadline)
{
    for (;;) {
        if (wait_fd(fd, POLLIN, deadline) < 0)
            return -1;
        ssize_t n = recv(fd, c, 1, MSG_DONTWAIT);
        if (n < 0 && (errno == EINTR || errno == EAGAIN))
            continue;
        return n == 1 ? 1 : 0;
    }
}

/*
 * A head, byte by byte so that nothing after it is consumed. Returns its
 * length, 0 when the peer closed, -1 on timeout or overflow.
 */
static long recv_head(int fd, char *buf, size_t cap, int64_t deadline)
{
    size_t n = 0;
    while (n + 1 < cap) {
        int r = recv_byte(fd, buf + n, deadline);
        if (r <= 0)
            return r == 0 ? 0 : -1;
        n++;
        buf[n] = '\0';
        if (n >= 4 && memcmp(buf + n - 4, "\r\n\r\n", 4) == 0)
            return (long)n;
        if (n >= 2 && memcmp(buf + n - 2, "\n\n", 2) == 0)
            return (long)n;
    }
    return -1;
}

static long recv_line(int fd, char *buf, size_t cap, int64_t deadline)
{
    size_t n = 0;
    while (n + 1 < cap) {
        int r = recv_byte(fd, buf + n, deadline);
        if (r <= 0)
            return -1;
        if (buf[n++] == '\n') {
            buf[n] = '\0';
            return (long)n;
        }
    }
    return -1;
}

/* Read N body bytes (keeping the first TH_RAW_BODY_KEEP). 0, or -1 when it ended early. */
static int recv_body_bytes(int fd, th_raw_resp *out, uint64_t n, int64_t deadline)
{
    char buf[16384];
    while (n > 0) {
        if (wait_fd(fd, POLLIN, deadline) < 0)
            return -1;
        size_t want = n < sizeof(buf) ? (size_t)n : sizeof(buf);
        ssize_t r = recv(fd, buf, want, MSG_DONTWAIT);
        if (r < 0 && (errno == EINTR || errno == EAGAIN))
            continue;
        if (r <= 0) {
            out->closed = true;
            return -1;
        }
        if (out->body_len < TH_RAW_BODY_KEEP) {
            size_t keep = TH_RAW_BODY_KEEP - (size_t)out->body_len;
            keep = keep < (size_t)r ? keep : (size_t)r;
            memcpy(out->body + out->body_len, buf, keep);
            out->body[out->body_len + keep] = '\0';
        }
        out->body_len += (uint64_t)r;
        n -= (uint64_t)r;
    }
    return 0;
}

static int recv_chunked(int fd, th_raw_resp *out, int64_t deadline)
{
    char line[1024];
    for (int i = 0; i < 10000000; i++) {
        if (recv_line(fd, line, sizeof(line), deadline) < 0)
            return -1;
        char *end;
        unsigned long long size = strtoull(line, &end, 16);
        if (end == line)
            return -1;
        if (size == 0)
            break;
        if (recv_body_bytes(fd, out, size, deadline) < 0 ||
            recv_line(fd, line, sizeof(line), deadline) < 0)
            return -1;
    }
    for (int i = 0; i < 1000; i++) { /* trailers up to the empty line */
        long n = recv_line(fd, line, sizeof(line), deadline);
        if (n < 0)
            return -1;
        if (line[0] == '\r' || line[0] == '\n')
            return 0;
    }
    return -1;
}

static int recv_until_close(int fd, th_raw_resp *out, int64_t deadline)
{
    for (;;) {
        if (recv_body_bytes(fd, out, 16384, deadline) < 0)
            return out->closed ? 0 : -1;
    }
}

/* Framing of the body after HEAD per RFC 9112 6.3. */
static int recv_body(int fd, bool head_request, th_raw_resp *out, int64_t deadline)
{
    char v[64];
    if (head_request || out->status == 204 || out->status == 304)
        return 0;
    const char *te = th_head_header(out->head, "Transfer-Encoding", v, sizeof(v));
    if (te && strcasestr(te, "chunked")) {
        out->chunked = true;
        return recv_chunked(fd, out, deadline);
    }
    if (th_head_header(out->head, "Content-Length", v, sizeof(v)))
        return recv_body_bytes(fd, out, strtoull(v, NULL, 10), deadline);
    return recv_until_close(fd, out, deadline);
}

int th_recv_response(int fd, bool head_request, th_raw_resp *out, int timeout_ms)
{
    int64_t deadline = th_now_ms() + timeout_ms;
    memset(out, 0, sizeof(*out));
    out->status = -1;
    out->head = malloc(TH_HEAD_MAX);
    out->body = malloc(TH_RAW_BODY_KEEP + 1);
    if (out->head == NULL || out->body == NULL)
        return -1;
    out->head[0] = out->body[0] = '\0';
    for (int i = 0; i < 10; i++) { /* skip interim 1xx heads */
        long n = recv_head(fd, out->head, TH_HEAD_MAX, deadline);
        if (n <= 0) {
            out->closed = n == 0;
            return -1;
        }
        out->status = th_parse_status(out->head, (size_t)n);
        if (out->status < 100 || out->status >= 200)
            break;
    }
    out->complete = recv_body(fd, head_request, out, deadline) == 0;
    return 0;
}

void th_raw_resp_free(th_raw_resp *r)
{
    free(r->head);
    free(r->body);
    r->head = r->body = NULL;
}

int th_parse_status(const char *buf, size_t n)
{
    if (n < 12 || strncmp(buf, "HTTP/1.", 7) != 0 || buf[8] != ' ')
        return -1;
    int code = 0;
    for (int i = 9; i < 12; i++) {
        if (buf[i] < '0' || buf[i] > '9')
            return -1;
        code = code * 10 + (buf[i] - '0');
    }
    return code;
}

const char *th_head_header(const char *head, const char *name, char *out, size_t cap)
{
    size_t nl = strlen(name);
    const char *line = strchr(head, '\n');
    while (line != NULL && line[1] != '\0') {
        line++;
        if (strncasecmp(line, name, nl) == 0 && line[nl] == ':') {
            const char *v = line + nl + 1;
            while (*v == ' ' || *v == '\t')
                v++;
            size_t vn = strcspn(v, "\r\n");
            vn = vn < cap - 1 ? vn : cap - 1;
            memcpy(out, v, vn);
            out[vn] = '\0';
            return out;
        }
        line = strchr(line, '\n');
    }
    return NULL;
}

bool th_wait_closed(int fd, int timeout_ms)
{
    char buf[4096];
    int64_t deadline = th_now_ms() + timeout_ms;
    for (;;) {
        if (wait_fd(fd, POLLIN, deadline) < 0)
            return false;
        ssize_t n = recv(fd, buf, sizeof(buf), MSG_DONTWAIT);
        if (n < 0 && (errno == EINTR || errno == EAGAIN))
            continue;
        if (n <= 0)
            return true;
    }
}

int th_blackhole_listen(int *port, int *fill_fds, int nfill)
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof(a);
    int lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (lfd < 0)
        return -1;
    /* Backlog 0: the accept queue is full after one connection that is never
     * accepted; further SYNs are dropped and connects hang. */
    if (bind(lfd, (struct sockaddr *)&a, sizeof(a)) < 0 || listen(lfd, 0) < 0 ||
        getsockname(lfd, (struct sockaddr *)&a, &len) < 0) {
        close(lfd);
        return -1;
    }
    *port = ntohs(a.sin_port);
    for (int i = 0; i < nfill; i++) {
        fill_fds[i] = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        if (fill_fds[i] >= 0)
            connect(fill_fds[i], (struct sockaddr *)&a, sizeof(a));
    }
    th_sleep_ms(50); /* let the handshakes that can complete do so */
    return lfd;
}

/* ---- SHA-256 ------------------------------------------------------------------ */

int th_sha_init(th_sha *s)
{
    gnutls_hash_hd_t h;
    if (gnutls_hash_init(&h, GNUTLS_DIG_SHA256) < 0) {
        s->h = NULL;
        return -1;
    }
    s->h = h;
    return 0;
}

void th_sha_update(th_sha *s, const void *p, size_t n)
{
    if (s->h && n > 0)
        gnutls_hash((gnutls_hash_hd_t)s->h, p, n);
}

void th_sha_final(th_sha *s, char hex[65])
{
    unsigned char d[32];
    hex[0] = '\0';
    if (s->h == NULL)
        return;
    gnutls_hash_deinit((gnutls_hash_hd_t)s->h, d);
    s->h = NULL;
    for (int i = 0; i < 32; i++)
        sprintf(hex + 2 * i, "%02x", d[i]);
}

void th_sha_discard(th_sha *s)
{
    char hex[65];
    th_sha_final(s, hex);
}

void th_sha256_hex(const void *p, size_t n, char hex[65])
{
    th_sha s;
    th_sha_init(&s);
    th_sha_update(&s, p, n);
    th_sha_final(&s, hex);
}

void th_pattern_sha256(uint64_t n, char hex[65])
{
    th_pattern_src src;
    char buf[65536];
    th_pattern_src_init(&src, n);
    while (th_pattern_gen(&src, buf, sizeof(buf)) > 0)
        ;
    th_sha_final(&src.sha, hex);
}

void th_pattern_src_init(th_pattern_src *s, uint64_t n)
{
    s->off = 0;
    s->n = n;
    th_sha_init(&s->sha);
}

size_t th_pattern_gen(void *ctx, char *buf, size_t cap)
{
    th_pattern_src *s = ctx;
    size_t k = (s->n - s->off) < cap ? (size_t)(s->n - s->off) : cap;
    th_pattern_fill(s->off, (unsigned char *)buf, k);
    th_sha_update(&s->sha, buf, k);
    s->off += k;
    return k;
}

/* ---- libcurl -------------------------------------------------------------------- */

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;

static void curl_init_once(void)
{
    curl_global_init(CURL_GLOBAL_DEFAULT);
    gnutls_global_init();
}

static void hdrs_clear(th_resp *rs)
{
    for (size_t i = 0; i < rs->nhdr; i++) {
        free(rs->hdr[i].name);
        free(rs->hdr[i].value);
    }
    free(rs->hdr);
    rs->hdr = NULL;
    rs->nhdr = 0;
}

static void hdr_push(th_resp *rs, const char *line, size_t n)
{
    const char *colon = memchr(line, ':', n);
    if (colon == NULL)
        return;
    const char *v = colon + 1, *end = line + n;
    while (v < end && (*v == ' ' || *v == '\t'))
        v++;
    while (end > v && (end[-1] == '\r' || end[-1] == '\n' || end[-1] == ' ' || end[-1] == '\t'))
        end--;
    th_hdr *grown = realloc(rs->hdr, (rs->nhdr + 1) * sizeof(*grown));
    if (grown == NULL)
        return;
    rs->hdr = grown;
    rs->hdr[rs->nhdr].name = strndup(line, (size_t)(colon - line));
    rs->hdr[rs->nhdr].value = strndup(v, (size_t)(end - v));
    rs->nhdr++;
}

static size_t on_header(char *p, size_t size, size_t nitems, void *ud)
{
    th_xfer *x = ud;
    size_t n = size * nitems;
    if (n >= 5 && memcmp(p, "HTTP/", 5) == 0)
        hdrs_clear(&x->resp); /* a new head (after 1xx or a redirect): keep only the last */
    else if (n > 2)
        hdr_push(&x->resp, p, n);
    return n;
}

static size_t on_body(char *p, size_t size, size_t nmemb, void *ud)
{
    th_xfer *x = ud;
    size_t n = size * nmemb;
    th_sha_update(&x->sha, p, n);
    x->resp.body_total += n;
    if (x->req.keep_body && x->resp.body_len + n <= TH_BODY_KEEP_MAX) {
        if (x->resp.body_len + n + 1 > x->body_cap) {
            size_t cap = x->body_cap ? x->body_cap : 4096;
            while (cap < x->resp.body_len + n + 1)
                cap *= 2;
            char *grown = realloc(x->resp.body, cap);
            if (grown == NULL)
                return 0;
            x->resp.body = grown;
            x->body_cap = cap;
        }
        memcpy(x->resp.body + x->resp.body_len, p, n);
        x->resp.body_len += n;
        x->resp.body[x->resp.body_len] = '\0';
    }
    return n;
}

static size_t on_read(char *buf, size_t size, size_t nitems, void *ud)
{
    th_xfer *x = ud;
    size_t cap = size * nitems;
    if (x->req.gen)
        return x->req.gen(x->req.gen_ctx, buf, cap);
    size_t k = x->req.body_len - x->up_off;
    k = k < cap ? k : cap;
    memcpy(buf, x->req.body + x->up_off, k);
    x->up_off += k;
    return k;
}

static void setup_method(th_xfer *x)
{
    CURL *h = x->easy;
    const th_req *rq = &x->req;
    const char *m = rq->method ? rq->method : "GET";
    bool upload = rq->body != NULL || rq->gen != NULL;
    if (strcmp(m, "HEAD") == 0) {
        curl_easy_setopt(h, CURLOPT_NOBODY, 1L);
        return;
    }
    if (upload) {
        /* UPLOAD + CUSTOMREQUEST sends any method with a body and no Content-Type. */
        int64_t len = rq->gen ? rq->upload_len : (rq->chunked ? -1 : (int64_t)rq->body_len);
        curl_easy_setopt(h, CURLOPT_UPLOAD, 1L);
        curl_easy_setopt(h, CURLOPT_READFUNCTION, on_read);
        curl_easy_setopt(h, CURLOPT_READDATA, x);
        curl_easy_setopt(h, CURLOPT_INFILESIZE_LARGE, (curl_off_t)len);
    }
    if (strcmp(m, "GET") != 0 || upload)
        curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, rq->method ? rq->method : "POST");
}

int th_xfer_init(th_xfer *x, const th_req *rq)
{
    pthread_once(&curl_once, curl_init_once);
    memset(x, 0, sizeof(*x));
    x->req = *rq;
    x->own_easy = rq->easy == NULL;
    x->easy = rq->easy ? rq->easy : curl_easy_init();
    if (x->easy == NULL || th_sha_init(&x->sha) < 0)
        return -1;
    CURL *h = x->easy;
    curl_easy_reset(h); /* keeps the connection cache: reuse stays possible */
    curl_easy_setopt(h, CURLOPT_URL, rq->url);
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, rq->timeout_ms ? rq->timeout_ms : 30000L);
    curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS, 5000L);
    curl_easy_setopt(h, CURLOPT_PATH_AS_IS, 1L);
    curl_easy_setopt(h, CURLOPT_HTTP_CONTENT_DECODING, 0L);
    curl_easy_setopt(h, CURLOPT_HTTP_VERSION,
                     rq->http10 ? CURL_HTTP_VERSION_1_0 : CURL_HTTP_VERSION_1_1);
    curl_easy_setopt(h, CURLOPT_ERRORBUFFER, x->resp.err);
    curl_easy_setopt(h, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(h, CURLOPT_HEADERDATA, x);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, x);
    if (rq->target)
        curl_easy_setopt(h, CURLOPT_REQUEST_TARGET, rq->target);
    if (rq->max_recv_bps > 0)
        curl_easy_setopt(h, CURLOPT_MAX_RECV_SPEED_LARGE, (curl_off_t)rq->max_recv_bps);
    for (size_t i = 0; rq->headers && rq->headers[i]; i++)
        x->slist = curl_slist_append(x->slist, rq->headers[i]);
    if (x->slist)
        curl_easy_setopt(h, CURLOPT_HTTPHEADER, x->slist);
    setup_method(x);
    return 0;
}

void th_xfer_done(th_xfer *x, CURLcode rc)
{
    long port = 0;
    x->resp.rc = rc;
    curl_easy_getinfo(x->easy, CURLINFO_RESPONSE_CODE, &x->resp.status);
    curl_easy_getinfo(x->easy, CURLINFO_NUM_CONNECTS, &x->resp.num_connects);
    curl_easy_getinfo(x->easy, CURLINFO_LOCAL_PORT, &port);
    curl_easy_getinfo(x->easy, CURLINFO_TOTAL_TIME, &x->resp.total_s);
    x->resp.local_port = port;
    th_sha_final(&x->sha, x->resp.sha);
    if (rc != CURLE_OK && x->resp.err[0] == '\0')
        snprintf(x->resp.err, sizeof(x->resp.err), "%s", curl_easy_strerror(rc));
}

void th_xfer_cleanup(th_xfer *x)
{
    if (x->easy) {
        /* The handle may outlive X (reuse): it must not point into X any more. */
        curl_easy_setopt(x->easy, CURLOPT_ERRORBUFFER, NULL);
        curl_easy_setopt(x->easy, CURLOPT_HTTPHEADER, NULL);
    }
    curl_slist_free_all(x->slist);
    x->slist = NULL;
    if (x->own_easy && x->easy)
        curl_easy_cleanup(x->easy);
    x->easy = NULL;
    th_sha_discard(&x->sha);
}

int th_http(const th_req *rq, th_resp *rs)
{
    th_xfer x;
    if (th_xfer_init(&x, rq) < 0) {
        memset(rs, 0, sizeof(*rs));
        rs->rc = CURLE_FAILED_INIT;
        return -1;
    }
    CURLcode rc = curl_easy_perform(x.easy);
    th_xfer_done(&x, rc);
    th_xfer_cleanup(&x);
    *rs = x.resp;
    return rc == CURLE_OK ? 0 : -1;
}

void th_resp_free(th_resp *rs)
{
    hdrs_clear(rs);
    free(rs->body);
    rs->body = NULL;
    rs->body_len = 0;
}

const char *th_resp_hdr_nth(const th_resp *rs, const char *name, size_t nth)
{
    for (size_t i = 0; i < rs->nhdr; i++)
        if (strcasecmp(rs->hdr[i].name, name) == 0 && nth-- == 0)
            return rs->hdr[i].value;
    return NULL;
}

const char *th_resp_hdr(const th_resp *rs, const char *name)
{
    return th_resp_hdr_nth(rs, name, 0);
}

size_t th_resp_hdr_count(const th_resp *rs, const char *name)
{
    size_t n = 0;
    for (size_t i = 0; i < rs->nhdr; i++)
        n += strcasecmp(rs->hdr[i].name, name) == 0;
    return n;
}

static th_xfer *xfer_of(th_xfer *xs, size_t n, CURL *easy)
{
    for (size_t i = 0; i < n; i++)
        if (xs[i].easy == easy)
            return &xs[i];
    return NULL;
}

/* Collect finished transfers. Returns how many ended. */
static size_t multi_collect(CURLM *m, th_xfer *xs, size_t n, bool *done)
{
    size_t ended = 0;
    int left;
    CURLMsg *msg;
    while ((msg = curl_multi_info_read(m, &left)) != NULL) {
        if (msg->msg != CURLMSG_DONE)
            continue;
        th_xfer *x = xfer_of(xs, n, msg->easy_handle);
        if (x == NULL)
            continue;
        th_xfer_done(x, msg->data.result);
        done[x - xs] = true;
        curl_multi_remove_handle(m, x->easy);
        ended++;
    }
    return ended;
}

size_t th_multi_run(th_xfer *xs, size_t n, int timeout_ms)
{
    CURLM *m = curl_multi_init();
    bool *done = calloc(n, sizeof(*done));
    size_t ended = 0, ok = 0;
    int running = 1;
    int64_t deadline = th_now_ms() + timeout_ms;
    if (m == NULL || done == NULL)
        goto out;
    curl_multi_setopt(m, CURLMOPT_MAXCONNECTS, (long)n);
    for (size_t i = 0; i < n; i++)
        curl_multi_add_handle(m, xs[i].easy);
    while (ended < n && th_now_ms() < deadline) {
        curl_multi_perform(m, &running);
        ended += multi_collect(m, xs, n, done);
        if (ended < n)
            curl_multi_poll(m, NULL, 0, 100, NULL);
    }
    for (size_t i = 0; i < n; i++) {
        if (!done[i]) {
            curl_multi_remove_handle(m, xs[i].easy);
            th_xfer_done(&xs[i], CURLE_OPERATION_TIMEDOUT);
        }
        ok += xs[i].resp.rc == CURLE_OK;
    }
out:
    free(done);
    if (m)
        curl_multi_cleanup(m);
    return ok;
}
