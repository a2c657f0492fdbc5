/*
 * server.h - the process: workers, the current config snapshot, signals,
 * reload, drain, and the admin listener.
 *
 * The main thread owns the server. It starts the workers, then waits for
 * signals: SIGHUP reloads (a new snapshot is built here, off the request path,
 * and swapped in only when it is complete), SIGTERM/SIGINT drain and stop,
 * SIGUSR1 reopens the access log. Once a second it refreshes the when_file
 * flags.
 */
#ifndef DETOUR_SERVER_H
#define DETOUR_SERVER_H

#include "detour/config.h"

typedef struct dt_server dt_server;

/*
 * Run detour with the loaded snapshot CFG (the server takes the reference)
 * until SIGTERM/SIGINT. Returns the process exit status: 0 after a clean
 * drain, 1 when start-up failed (the reason is logged).
 */
int dt_server_run(dt_config *cfg);

/* A new reference to the current snapshot, or NULL. Any thread. */
dt_config *dt_server_config(dt_server *srv);

/* Reload from the current snapshot's path now, as SIGHUP does. Main thread. */
int dt_server_reload(dt_server *srv);

#endif
