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

#endif
