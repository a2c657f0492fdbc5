/*
 * leaklog.h - how often a Location leak reaches the error log: at most once
 * per upstream per minute. detour_location_leaks_total counts every leak; the
 * log line is there to tell an operator which Location leaked, and an
 * upstream that leaks on every answer must not flood the log with it.
 *
 * A fixed table keyed by a 64-bit hash of the upstream name. Each slot holds
 * the earliest time its next line may go out and how many leaks were held
 * back since the last one. Deciding costs a hash, a few atomic loads and at
 * most one compare-and-swap: no lock, no allocation, any thread.
 *
 * Names are not stored: a config snapshot frees its upstream names on reload,
 * and the same name must keep its budget across reloads. Two names whose
 * hashes collide would share one budget; with 64 bits that does not happen
 * in practice. Slots are never given back: past DT_LEAKLOG_SLOTS distinct
 * names (over the life of the process), the rest share one spill slot, which
 * still bounds the log to one line a minute for all of them together.
 */
#ifndef DETOUR_LEAKLOG_H
#define DETOUR_LEAKLOG_H

#include <stdatomic.h>

#include "detour/common.h"

#define DT_LEAKLOG_SLOTS 64
#define DT_LEAKLOG_INTERVAL_S 60
#define DT_LEAKLOG_LOCATION_MAX 256 /* bytes of the Location quoted in a line */

typedef struct dt_leaklog_slot {
    _Atomic uint64_t key;   /* hash of the name, never 0; 0 = free */
    _Atomic int64_t next_s; /* no line before this time */
    _Atomic uint64_t held;  /* leaks not logged since the last line */
} dt_leaklog_slot;

/* All zero is a valid, empty table (static storage needs no init). */
typedef struct dt_leaklog {
    dt_leaklog_slot slot[DT_LEAKLOG_SLOTS];
    dt_leaklog_slot spill;
} dt_leaklog;

/* Empty L. Not thread-safe: call before L is shared. */
void dt_leaklog_init(dt_leaklog *l);

/* The process-wide table dt_leaklog_report() uses. Never NULL. */
dt_leaklog *dt_leaklog_global(void);

/*
 * Should a leak by upstream NAME at NOW_S be logged? NOW_S is in seconds,
 * >= 0, from a clock that does not jump (dt_now_ms() / 1000). True for the
 * first leak of NAME and then for the first one at least
 * DT_LEAKLOG_INTERVAL_S after the previous true; false otherwise. When
 * several threads ask at once, exactly one of them gets true. On true,
 * *HELD (may be NULL) is set to the number of NAME's leaks answered false
 * since the previous true. A clock that went back by more than the interval
 * (a caller passing wall time) opens the budget again rather than muting
 * the upstream until the clock catches up. Any thread.
 */
bool dt_leaklog_due(dt_leaklog *l, dt_str name, int64_t now_s, uint64_t *held);

/*
 * The log line for a leak, without level or newline:
 *   upstream NAME: Location "LOC" names an internal origin and reaches the
 *   client unchanged (N more since the last report)
 * LOC is cut to DT_LEAKLOG_LOCATION_MAX bytes (then "..." follows) and its
 * bytes outside printable ASCII, '"' and '\' are written as \xHH, so a
 * Location cannot forge log lines. The "(N more ...)" part is left out when
 * HELD is 0. Writes at most CAP bytes including the NUL; returns the length
 * it needed (like snprintf). Pure.
 */
size_t dt_leaklog_format(char *out, size_t cap, dt_str upstream, dt_str location, uint64_t held);

/*
 * Decide with the global table at the monotonic clock and, when due, write
 * dt_leaklog_format()'s line as a warning to the error log. Counting is the
 * caller's (dt_metrics_location_leak), once per leak, logged or not.
 * UPSTREAM may be NULL (a relay to the request's own destination): "-".
 * Any thread; lock-free unless a line is written.
 */
void dt_leaklog_report(const char *upstream, dt_str location);

#endif
