/*
 * sticky.h - the deterministic stickiness hash behind `percent` and `ramp`.
 *
 * bucket = FNV-1a-64(route name, 0x00, key) mod 10000. A client is
 * redirected when bucket < percent * 100. The hash depends only on the route
 * name and the key, so every instance and every restart agrees without any
 * shared state, and a client redirected at 25% stays redirected at 75%
 * (the threshold only grows).
 */
#ifndef DETOUR_STICKY_H
#define DETOUR_STICKY_H

#include "detour/common.h"

uint64_t dt_sticky_hash(dt_str route_name, dt_str key);

/* The client's bucket in [0, 10000). */
unsigned dt_sticky_bucket(dt_str route_name, dt_str key);

/* Is a client with KEY inside PERCENT (0..100) for ROUTE_NAME? */
bool dt_sticky_selected(dt_str route_name, dt_str key, int percent);

/*
 * The value of cookie NAME in a Cookie header value, or false when absent.
 * Cookie pairs are separated by ';' with optional spaces.
 */
bool dt_cookie_find(dt_str cookie_header, dt_str name, dt_str *value);

#endif
