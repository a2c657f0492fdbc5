/*
 * flag.h - `when_file` flags: a route is active only while a file exists.
 *
 * The request path never calls stat(): a flag holds an atomic "present" bit
 * that the server's watcher refreshes (dt_flag_poll) once a second and at
 * load. Flags are shared by path between snapshots through a small registry,
 * so a reload does not reset them.
 */
#ifndef DETOUR_FLAG_H
#define DETOUR_FLAG_H

#include "detour/common.h"

typedef struct dt_flag dt_flag;

/*
 * The flag for PATH, created on first use and polled once immediately.
 * Flags live until dt_flag_registry_clear() (process exit). NULL on ENOMEM.
 * Thread-safe.
 */
dt_flag *dt_flag_get(const char *path);

/* Re-check the file (stat); returns the new state. Any thread. */
bool dt_flag_poll(dt_flag *f);

/* Re-check every registered flag. Called by the watcher once a second. */
void dt_flag_poll_all(void);

/* Last observed state: does the file exist? Lock-free, any thread. */
bool dt_flag_present(const dt_flag *f);

/* Override the state; for unit tests. */
void dt_flag_set(dt_flag *f, bool present);

const char *dt_flag_path(const dt_flag *f);

/* Free every flag (at exit, when no snapshot uses them any more). */
void dt_flag_registry_clear(void);

#endif
