/*
 * httpdate.h - the HTTP Date header value (IMF-fixdate, RFC 9110 §5.6.7),
 * formatted once per second per worker.
 *
 * libmicrohttpd formats Date for every response it sends with gmtime_r,
 * which takes glibc's process-wide time-zone lock: two workers answering
 * redirects contend on that lock for a value that changes once a second.
 * detour's own redirects carry a Date made here instead (libmicrohttpd then
 * adds none), from plain arithmetic on the Unix time.
 */
#ifndef DETOUR_HTTPDATE_H
#define DETOUR_HTTPDATE_H

#include "detour/common.h"

/* "Sun, 06 Nov 1994 08:49:37 GMT" */
#define DT_HTTPDATE_LEN 29

/*
 * Write the IMF-fixdate for SEC (seconds since the Unix epoch, years 1970 to
 * 9999) into OUT and NUL-terminate it; returns DT_HTTPDATE_LEN. Times outside
 * that range are clamped to its ends.
 */
size_t dt_httpdate_format(int64_t sec, char out[DT_HTTPDATE_LEN + 1]);

/* The last second formatted, so a worker formats once per second. */
typedef struct dt_httpdate {
    int64_t sec; /* of text; a zeroed struct has formatted nothing */
    char text[DT_HTTPDATE_LEN + 1];
} dt_httpdate;

/* The Date value for NOW (Unix seconds), reformatted only when it changed. */
const char *dt_httpdate_at(dt_httpdate *d, int64_t now);

#endif
