/*
 * log.h - the error log (stderr) and the access log.
 *
 * Error log lines: "2026-11-22T14:38:56Z detour[PID]: LEVEL: message".
 * The access log is one line per request, in Apache/nginx combined format
 * followed by " route=NAME action=ACTION", or one JSON object a line. Each
 * worker formats into its own buffer and writes whole lines with one write();
 * the file is reopened on SIGUSR1 (logrotate).
 */
#ifndef DETOUR_LOG_H
#define DETOUR_LOG_H

#include "detour/common.h"
#include "detour/config.h"

typedef enum dt_log_level { DT_LOG_ERROR = 0, DT_LOG_WARN, DT_LOG_INFO, DT_LOG_DEBUG } dt_log_level;

/* Minimum level printed (default INFO; DETOUR_DEBUG=1 in the environment sets DEBUG). */
void dt_log_set_level(dt_log_level level);
bool dt_log_enabled(dt_log_level level);

/* printf-style line to stderr. Thread-safe (one write per line). */
void dt_log(dt_log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define dt_log_error(...) dt_log(DT_LOG_ERROR, __VA_ARGS__)
#define dt_log_warn(...) dt_log(DT_LOG_WARN, __VA_ARGS__)
#define dt_log_info(...) dt_log(DT_LOG_INFO, __VA_ARGS__)
#define dt_log_debug(...)                                                                          \
    do {                                                                                           \
        if (dt_log_enabled(DT_LOG_DEBUG))                                                          \
            dt_log(DT_LOG_DEBUG, __VA_ARGS__);                                                     \
    } while (0)

/* One finished request, as the access log needs it. All strings borrowed. */
typedef struct dt_access_entry {
    dt_str client_ip;
    int64_t time_s; /* wall clock at the start of the request */
    dt_str method;
    dt_str target;  /* raw request target */
    dt_str version; /* "HTTP/1.1" */
    int status;
    uint64_t bytes_sent; /* response body bytes */
    dt_str referer;
    dt_str user_agent;
    dt_str host;
    dt_str route;    /* "-" when none */
    dt_str action;   /* relay, redirect, rewrite, error */
    dt_str location; /* redirect or rewritten Location; may be empty */
    dt_str upstream; /* upstream name; may be empty */
    dt_str dry_run;  /* dry-run routes that would have redirected, "a,b"; may be empty */
    int64_t duration_us;
} dt_access_entry;

/*
 * Open the access log described by CFG ("-", a path, or off). Returns DT_OK
 * or DT_EIO with errno set. Call from the main thread; replaces any log open.
 */
int dt_access_log_open(const dt_config *cfg);
/* Reopen the same path (SIGUSR1). Main thread. */
int dt_access_log_reopen(void);
void dt_access_log_close(void);
bool dt_access_log_enabled(void);

/* Format ENTRY and write it (one write() per line). Any thread. */
void dt_access_log_write(const dt_access_entry *entry, dt_log_format fmt);

/* Write whole lines already formatted (a worker's buffer). Any thread. */
void dt_access_log_write_raw(const char *buf, size_t len);

/*
 * Format ENTRY as one line (with '\n') into OUT. Pure. Returns the line
 * length, or the length it would need when it does not fit in CAP.
 */
size_t dt_access_log_format(const dt_access_entry *entry, dt_log_format fmt, char *out, size_t cap);

#endif
