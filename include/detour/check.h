/*
 * check.h - the operator tools: `detour -t` (lint and golden cases) and
 * `detour --explain 'METHOD URL'`.
 *
 * Both work on a loaded snapshot and print to a stream; neither touches the
 * network. They share the rule engine with the server, so what they print is
 * what the server would do.
 */
#ifndef DETOUR_CHECK_H
#define DETOUR_CHECK_H

#include <stdio.h>

#include "detour/config.h"

/*
 * Golden cases, in `expect` and in the test data:
 *
 *   METHOD URL [TOKEN ...] -> RESULT [dry_run=NAME[,NAME...]] [retry_after=N]
 *
 * URL is absolute (http://host/path?query). RESULT is "STATUS LOCATION"
 * (301, 302, 303, 307 or 308), "relay NAME" (an upstream), "relay" (the
 * request's own destination: forward and transparent modes), or "404" (no
 * route in reverse mode). The optional TOKENs shape the request:
 *   client=IP            the client address (default 127.0.0.1)
 *   header:NAME=VALUE    a request header (repeatable)
 *   cookie:NAME=VALUE    a cookie, sent in one Cookie header (repeatable)
 *   at=ISO8601           the time, "2026-12-01T00:00:00Z" (default: now)
 *   when_file=present|absent   the state of every when_file flag (default:
 *                        the files' real state)
 * After RESULT, dry_run= names the dry-run routes that must have been hit
 * (in order; "dry_run=" alone: none) and retry_after= the Retry-After; when
 * absent they are not compared.
 */

/*
 * Lint CFG and run its `expect` cases. Prints "FILE:LINE: warning: ..." for
 * routes that can never match (shadowed by an earlier route that always
 * matches first) and for redirect loops and chains within the config, and
 * "FILE:LINE: error: expected ..., got ..." for each failing expectation.
 * Returns the number of errors (0: the config passes).
 */
int dt_check_config(const dt_config *cfg, FILE *out);

/*
 * Print which route REQUEST ("METHOD URL", URL absolute) would take, why the
 * routes before it were passed over, and what detour would answer (status
 * and Location, or the upstream). Returns DT_OK, or DT_EINVAL with a message
 * on OUT when REQUEST cannot be parsed.
 */
int dt_explain(const dt_config *cfg, const char *request, FILE *out);

/*
 * Run one golden case TEXT against CFG. Returns 1 when it holds and 0 when
 * it does not, with what detour would do written to GOT in the same syntax
 * ("307 /new", "relay legacy", "404", ...); DT_EINVAL when TEXT cannot be
 * parsed, with the reason in GOT.
 */
int dt_check_expect(const dt_config *cfg, const char *text, char *got, size_t gotcap);

#endif
