/*
 * ops_util.h - helpers shared by the operations tests (test_admin,
 * test_reload, test_drain, test_tls): the admin listener, Prometheus
 * samples, log files that fill in asynchronously, configs replaced
 * atomically. Header-only (static inline) because tests/CMakeLists.txt
 * builds each tests/integration/test_*.c on its own with dt_harness.
 *
 * Every wait has a deadline; nothing here is thread-safe unless said so.
 */
#ifndef DT_OPS_UTIL_H
#define DT_OPS_UTIL_H

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"

/* A free port that is none of AVOID[0..N). */
static inline int ops_free_port_not(const int *avoid, size_t n)
{
    for (int attempt = 0; attempt < 100; attempt++) {
        int p = th_free_port();
        bool clash = p < 0;
        for (size_t i = 0; i < n && !clash; i++)
            clash = avoid[i] == p;
        if (!clash)
            return p;
    }
    return -1;
}

/* GET http://127.0.0.1:PORT PATH into RS (body kept). Thread-safe. */
static inline int ops_get(int port, const char *path, th_resp *rs)
{
    char url[512];
    snprintf(url, sizeof(url), "http://127.0.0.1:%d%s", port, path);
    th_req rq = {.url = url, .keep_body = true, .timeout_ms = 5000};
    return th_http(&rq, rs);
}

/* The body of GET /metrics on the admin PORT (malloc'd), or NULL unless it answered 200. */
static inline char *ops_scrape(int admin_port)
{
    th_resp rs;
    char *body = NULL;
    if (ops_get(admin_port, "/metrics", &rs) == 0 && rs.status == 200 && rs.body != NULL) {
        body = rs.body;
        rs.body = NULL;
    }
    th_resp_free(&rs);
    return body;
}

/*
 * The value of the sample SERIES, written exactly as detour writes it
 * ("detour_requests_total{route=\"a\",action=\"relay\",code=\"200\"}" or
 * "detour_active_connections"), in the text TEXT; -1 when absent.
 */
static inline double ops_metric(const char *text, const char *series)
{
    size_t n = strlen(series);
    for (const char *line = text; line != NULL && *line != '\0';) {
        if (strncmp(line, series, n) == 0 && line[n] == ' ')
            return strtod(line + n + 1, NULL);
        line = strchr(line, '\n');
        if (line != NULL)
            line++;
    }
    return -1;
}

/* Scrape and read one sample; -1 when absent or the scrape failed. */
static inline double ops_metric_now(int admin_port, const char *series)
{
    char *text = ops_scrape(admin_port);
    double v = text != NULL ? ops_metric(text, series) : -1;
    free(text);
    return v;
}

/* Scrape until SERIES is at least WANT or TIMEOUT_MS pass; returns the last value seen. */
static inline double ops_wait_metric(int admin_port, const char *series, double want,
                                     int timeout_ms)
{
    int64_t deadline = th_now_ms() + timeout_ms;
    double v;
    while ((v = ops_metric_now(admin_port, series)) < want && th_now_ms() < deadline)
        th_sleep_ms(20);
    return v;
}

/* The whole file, NUL-terminated (malloc'd), or NULL. */
static inline char *ops_read_file(const char *path)
{
    FILE *f = fopen(path, "rb");
    char *buf = NULL;
    size_t len = 0, cap = 0, got;
    if (f == NULL)
        return NULL;
    do {
        if (cap - len < 4096) {
            cap = cap ? cap * 2 : 8192;
            char *p = realloc(buf, cap + 1);
            if (p == NULL)
                break;
            buf = p;
        }
        got = fread(buf + len, 1, cap - len, f);
        len += got;
    } while (got > 0);
    fclose(f);
    if (buf != NULL)
        buf[len] = '\0';
    return buf;
}

static inline bool ops_file_contains(const char *path, const char *needle)
{
    char *text = ops_read_file(path);
    bool found = text != NULL && strstr(text, needle) != NULL;
    free(text);
    return found;
}

/* Logs are written by other processes and threads: wait for NEEDLE to show up. */
static inline bool ops_wait_file_contains(const char *path, const char *needle, int timeout_ms)
{
    int64_t deadline = th_now_ms() + timeout_ms;
    for (;;) {
        if (ops_file_contains(path, needle))
            return true;
        if (th_now_ms() >= deadline)
            return false;
        th_sleep_ms(20);
    }
}

/*
 * Replace PATH by a file written from a template, atomically (write
 * PATH.tmp, rename): a reload must never read a half-written config, and
 * this is how an operator should replace one too.
 */
static inline int ops_write_atomic(const char *path, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static inline int ops_write_atomic(const char *path, const char *fmt, ...)
{
    char tmp[TH_PATH_MAX + 8];
    va_list ap;
    snprintf(tmp, sizeof(tmp), "%s.tmp", path);
    FILE *f = fopen(tmp, "w");
    if (f == NULL)
        return -1;
    va_start(ap, fmt);
    int rc = vfprintf(f, fmt, ap) < 0 ? -1 : 0;
    va_end(ap);
    if (fclose(f) != 0 || rc < 0 || rename(tmp, path) != 0) {
        fprintf(stderr, "ops: cannot replace %s: %s\n", path, strerror(errno));
        return -1;
    }
    return 0;
}

/* Wait for a child to exit by itself (no signal sent). Its exit code, or -1 at the deadline. */
static inline int ops_wait_exit(th_proc *p, int timeout_ms)
{
    int64_t deadline = th_now_ms() + timeout_ms;
    while (th_proc_running(p)) {
        if (th_now_ms() >= deadline)
            return -1;
        th_sleep_ms(10);
    }
    if (!p->reaped)
        return -1;
    return th_proc_stop(p, 0); /* already reaped: just decodes the status */
}

#endif
