/*
 * log.c - error log lines on stderr and the access log.
 *
 * The access log file descriptor number never changes while detour runs:
 * a reopen (SIGUSR1, logrotate) or a reload to another path opens the new
 * file and dup2()s it onto the same number, so workers writing concurrently
 * never see a closed or reused descriptor. Workers buffer whole lines and write them with one
 * write(), which O_APPEND keeps from interleaving.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "detour/log.h"

static atomic_int log_level = DT_LOG_INFO;
/*
 * The access log descriptor. Once opened its number never changes while
 * workers may write to it: a reopen or a reload to another path dup2()s the
 * new file onto it; "-" is a dup() of stdout so that it can be replaced the
 * same way; "off" only clears access_on (the descriptor stays, harmless).
 */
static atomic_int access_fd = -1;
static atomic_bool access_on;
static char *access_path; /* the file to reopen on SIGUSR1; NULL for "-" */

void dt_log_set_level(dt_log_level level)
{
    atomic_store(&log_level, (int)level);
}

bool dt_log_enabled(dt_log_level level)
{
    return (int)level <= atomic_load_explicit(&log_level, memory_order_relaxed);
}

static const char *level_name(dt_log_level level)
{
    static const char *const names[] = {"error", "warning", "info", "debug"};
    return names[level];
}

static size_t utc_stamp(char *out, size_t cap, int64_t t, const char *fmt)
{
    struct tm tm;
    time_t tt = (time_t)t;

    gmtime_r(&tt, &tm);
    return strftime(out, cap, fmt, &tm);
}

void dt_log(dt_log_level level, const char *fmt, ...)
{
    char line[2048];
    size_t n;
    va_list ap;

    if (!dt_log_enabled(level))
        return;
    n = utc_stamp(line, sizeof line, dt_wall_s(), "%Y-%m-%dT%H:%M:%SZ");
    n += (size_t)snprintf(line + n, sizeof line - n, " detour[%d]: %s: ", (int)getpid(),
                          level_name(level));
    va_start(ap, fmt);
    int m = vsnprintf(line + n, sizeof line - n - 1, fmt, ap);
    va_end(ap);
    n += m < 0 ? 0 : (size_t)m;
    if (n > sizeof line - 2)
        n = sizeof line - 2;
    line[n++] = '\n';
    /* One write per line keeps lines whole across threads. */
    if (write(STDERR_FILENO, line, n) < 0)
        return;
}

/* ------------------------------------------------------------ access log */

/* A descriptor for TARGET ("-" or a path), or -1 with errno set. */
static int open_target(const char *target)
{
    if (strcmp(target, "-") == 0)
        return fcntl(STDOUT_FILENO, F_DUPFD_CLOEXEC, 3);
    return open(target, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0640);
}

/* Make the stable descriptor point at FD (consumed). */
static int install_fd(int fd)
{
    int cur = atomic_load(&access_fd);

    if (cur < 0) {
        atomic_store(&access_fd, fd);
        return DT_OK;
    }
    if (dup2(fd, cur) < 0) {
        close(fd);
        return DT_EIO;
    }
    close(fd);
    return DT_OK;
}

int dt_access_log_open(const dt_config *cfg)
{
    char *path = NULL;
    int fd;

    if (cfg->access_log == NULL) {
        atomic_store(&access_on, false);
        return DT_OK;
    }
    if (strcmp(cfg->access_log, "-") != 0 && (path = strdup(cfg->access_log)) == NULL)
        return DT_ENOMEM;
    fd = open_target(cfg->access_log);
    if (fd < 0 || install_fd(fd) != DT_OK) {
        free(path);
        return DT_EIO;
    }
    free(access_path);
    access_path = path;
    atomic_store(&access_on, true);
    return DT_OK;
}

int dt_access_log_reopen(void)
{
    int fd;

    if (access_path == NULL || !atomic_load(&access_on))
        return DT_OK;
    fd = open_target(access_path);
    if (fd < 0)
        return DT_EIO;
    return install_fd(fd);
}

void dt_access_log_close(void)
{
    int fd = atomic_exchange(&access_fd, -1);

    atomic_store(&access_on, false);
    if (fd >= 0)
        close(fd);
    free(access_path);
    access_path = NULL;
}

bool dt_access_log_enabled(void)
{
    return atomic_load_explicit(&access_on, memory_order_relaxed);
}

void dt_access_log_write_raw(const char *buf, size_t len)
{
    int fd = atomic_load_explicit(&access_fd, memory_order_relaxed);

    while (len > 0 && fd >= 0) {
        ssize_t n = write(fd, buf, len);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return; /* a full disk must not stop the proxy */
        }
        buf += n;
        len -= (size_t)n;
    }
}

void dt_access_log_write(const dt_access_entry *entry, dt_log_format fmt)
{
    char line[8192];
    size_t n = dt_access_log_format(entry, fmt, line, sizeof line);

    if (n <= sizeof line)
        dt_access_log_write_raw(line, n);
}

/* ------------------------------------------------------------ formatting */

typedef struct out_buf {
    char *p;
    size_t cap, len;
} out_buf;

static void put(out_buf *o, const char *s, size_t n)
{
    if (o->len < o->cap)
        memcpy(o->p + o->len, s, o->len + n <= o->cap ? n : o->cap - o->len);
    o->len += n;
}

static void puts_c(out_buf *o, const char *s)
{
    put(o, s, strlen(s));
}

static void putf(out_buf *o, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void putf(out_buf *o, const char *fmt, ...)
{
    char tmp[64];
    va_list ap;

    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (n > 0)
        put(o, tmp, (size_t)n < sizeof tmp ? (size_t)n : sizeof tmp - 1);
}

/* Combined format quotes fields; escape what would break a line or a quote (nginx style). */
static void put_escaped(out_buf *o, dt_str s, bool json)
{
    for (size_t i = 0; i < s.n; i++) {
        unsigned char c = (unsigned char)s.p[i];
        if (c == '"' || c == '\\') {
            char e[2] = {'\\', (char)c};
            put(o, e, 2);
        } else if (c < 0x20 || c == 0x7f || (json && c >= 0x80)) {
            putf(o, json ? "\\u%04x" : "\\x%02X", c);
        } else {
            put(o, (const char *)&c, 1);
        }
    }
}

static void put_field(out_buf *o, dt_str s)
{
    if (s.n == 0)
        put(o, "-", 1);
    else
        put_escaped(o, s, false);
}

static void format_combined(const dt_access_entry *e, out_buf *o)
{
    char when[40];

    utc_stamp(when, sizeof when, e->time_s, "%d/%b/%Y:%H:%M:%S +0000");
    put_field(o, e->client_ip);
    puts_c(o, " - - [");
    puts_c(o, when);
    puts_c(o, "] \"");
    put_escaped(o, e->method, false);
    put(o, " ", 1);
    put_escaped(o, e->target, false);
    put(o, " ", 1);
    put_escaped(o, e->version, false);
    putf(o, "\" %d %llu \"", e->status, (unsigned long long)e->bytes_sent);
    put_field(o, e->referer);
    puts_c(o, "\" \"");
    put_field(o, e->user_agent);
    puts_c(o, "\" route=");
    put_field(o, e->route);
    puts_c(o, " action=");
    put_field(o, e->action);
    if (e->dry_run.n > 0) {
        puts_c(o, " dry_run=");
        put_field(o, e->dry_run);
    }
    putf(o, " rt=%.6f", (double)e->duration_us / 1e6);
    if (e->upstream.n > 0) {
        puts_c(o, " upstream=");
        put_field(o, e->upstream);
    }
    if (e->location.n > 0) {
        puts_c(o, " location=\"");
        put_escaped(o, e->location, false);
        puts_c(o, "\"");
    }
    put(o, "\n", 1);
}

static void json_str(out_buf *o, const char *key, dt_str v, bool first)
{
    if (!first)
        put(o, ",", 1);
    put(o, "\"", 1);
    puts_c(o, key);
    puts_c(o, "\":\"");
    put_escaped(o, v, true);
    put(o, "\"", 1);
}

static void format_json(const dt_access_entry *e, out_buf *o)
{
    char when[40];

    utc_stamp(when, sizeof when, e->time_s, "%Y-%m-%dT%H:%M:%SZ");
    json_str(o, "time", (dt_str){when, strlen(when)}, true);
    json_str(o, "client", e->client_ip, false);
    json_str(o, "method", e->method, false);
    json_str(o, "target", e->target, false);
    json_str(o, "version", e->version, false);
    json_str(o, "host", e->host, false);
    putf(o, ",\"status\":%d", e->status);
    putf(o, ",\"bytes\":%llu", (unsigned long long)e->bytes_sent);
    json_str(o, "referer", e->referer, false);
    json_str(o, "user_agent", e->user_agent, false);
    json_str(o, "route", e->route, false);
    json_str(o, "action", e->action, false);
    json_str(o, "upstream", e->upstream, false);
    json_str(o, "location", e->location, false);
    json_str(o, "dry_run", e->dry_run, false);
    putf(o, ",\"duration\":%.6f", (double)e->duration_us / 1e6);
    puts_c(o, "}\n");
}

size_t dt_access_log_format(const dt_access_entry *entry, dt_log_format fmt, char *out, size_t cap)
{
    out_buf o = {out, cap, 0};

    if (fmt == DT_LOG_JSON) {
        put(&o, "{", 1);
        format_json(entry, &o);
    } else {
        format_combined(entry, &o);
    }
    return o.len;
}
