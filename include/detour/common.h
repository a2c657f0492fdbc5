/*
 * common.h - things every detour module shares: the version, the one error
 * enum with its strerror table, and small inline helpers for byte strings and
 * clocks.
 */
#ifndef DETOUR_COMMON_H
#define DETOUR_COMMON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

#define DT_VERSION "0.1.0"

/*
 * One error space for the whole program. Functions return 0 (DT_OK) or one
 * of these negative codes; dt_strerror() names them. The upstream failure
 * classes stay distinct all the way to the layer that picks the HTTP status
 * (502 for refused/reset/empty/too large, 504 for timeouts).
 */
#define DT_ERRNO_MAP(X)                                                                            \
    X(OK, 0, "success")                                                                            \
    X(ENOMEM, -1, "out of memory")                                                                 \
    X(EINVAL, -2, "invalid argument")                                                              \
    X(EIO, -3, "input/output error")                                                               \
    X(ETOOBIG, -4, "too large")                                                                    \
    X(ENOTFOUND, -5, "not found")                                                                  \
    X(ECONFIG, -6, "invalid configuration")                                                        \
    X(EREFUSED, -7, "upstream refused the connection")                                             \
    X(ERESET, -8, "upstream reset the connection")                                                 \
    X(ETIMEDOUT, -9, "upstream timed out")                                                         \
    X(ECONNTIMEDOUT, -10, "upstream connect timed out")                                            \
    X(EEMPTY, -11, "upstream closed without a response")                                           \
    X(EHDRTOOBIG, -12, "upstream response head too large")                                         \
    X(ERESOLVE, -13, "upstream host could not be resolved")                                        \
    X(ETLS, -14, "upstream TLS failure")                                                           \
    X(EPROTO, -15, "upstream protocol error")                                                      \
    X(ECLIENT, -16, "client went away")                                                            \
    X(ELOOP, -17, "request loop")                                                                  \
    X(EFORBIDDEN, -18, "destination not allowed")

typedef enum dt_err {
#define DT_ERR_ENUM(name, val, msg) DT_##name = (val),
    DT_ERRNO_MAP(DT_ERR_ENUM)
#undef DT_ERR_ENUM
} dt_err;

/* Never returns NULL; unknown codes map to "unknown error". */
const char *dt_strerror(int err);

/* A borrowed byte string: not NUL-terminated unless said so. */
typedef struct dt_str {
    const char *p;
    size_t n;
} dt_str;

#define DT_STR_LIT(s) ((dt_str){(s), sizeof(s) - 1})
#define DT_ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))
#define DT_UNUSED(x) ((void)(x))

static inline bool dt_str_eq(dt_str a, dt_str b)
{
    return a.n == b.n && (a.n == 0 || memcmp(a.p, b.p, a.n) == 0);
}

static inline char dt_ascii_lower(char c)
{
    return (c >= 'A' && c <= 'Z') ? (char)(c + ('a' - 'A')) : c;
}

/* Case-insensitive (ASCII) equality of two byte ranges. */
static inline bool dt_str_ieq(dt_str a, dt_str b)
{
    if (a.n != b.n)
        return false;
    for (size_t i = 0; i < a.n; i++)
        if (dt_ascii_lower(a.p[i]) != dt_ascii_lower(b.p[i]))
            return false;
    return true;
}

/* Case-insensitive equality of a byte range and a NUL-terminated string. */
static inline bool dt_str_ieq_cstr(const char *p, size_t n, const char *s)
{
    return dt_str_ieq((dt_str){p, n}, (dt_str){s, strlen(s)});
}

/*
 * S as a decimal number no larger than MAX: digits only (no sign, no
 * spaces, not empty). False when it is anything else or too large.
 */
static inline bool dt_str_to_u64(dt_str s, uint64_t max, uint64_t *out)
{
    uint64_t v = 0;

    if (s.n == 0)
        return false;
    for (size_t i = 0; i < s.n; i++) {
        unsigned d = (unsigned)(s.p[i] - '0');
        if (s.p[i] < '0' || s.p[i] > '9' || v > (max - d) / 10)
            return false;
        v = v * 10 + d;
    }
    *out = v;
    return true;
}

/* Monotonic milliseconds; for deadlines and durations. */
static inline int64_t dt_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Monotonic microseconds; for latency measurements. */
static inline int64_t dt_now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

/* Wall-clock seconds since the epoch; for windows, ramps and logs. */
static inline int64_t dt_wall_s(void)
{
    return (int64_t)time(NULL);
}

#endif
