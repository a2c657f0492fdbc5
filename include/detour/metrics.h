/*
 * metrics.h - counters for /metrics, kept per worker without locks.
 *
 * Every worker thread owns a dt_metrics_worker and is its only writer: the
 * request path does plain relaxed stores into memory no other thread writes.
 * A scrape sums all workers' cells (relaxed loads), so a scrape may be a few
 * requests behind but never blocks a worker.
 *
 * Label values that outlive a reload (route and upstream names) are interned
 * once in a registry and never freed, so counters keep counting across
 * reloads and a snapshot's routes point straight at their cells.
 */
#ifndef DETOUR_METRICS_H
#define DETOUR_METRICS_H

#include "detour/common.h"

typedef struct dt_route_stats dt_route_stats;
typedef struct dt_upstream_stats dt_upstream_stats;
typedef struct dt_metrics_worker dt_metrics_worker;

typedef enum dt_action {
    DT_ACTION_RELAY = 0,
    DT_ACTION_REDIRECT,
    DT_ACTION_REWRITE,
    DT_ACTION_ERROR,
    DT_ACTION_DRY_RUN, /* only for dry-run hits, never a request's final action */
    DT_ACTION_COUNT
} dt_action;

const char *dt_action_name(dt_action a);

/*
 * Set up the registry for NWORKERS worker slots (plus one slot for the main
 * thread, index NWORKERS). Call once, before any worker starts; tests may call
 * it again after dt_metrics_shutdown().
 */
int dt_metrics_init(int nworkers);
void dt_metrics_shutdown(void);

/*
 * The stats cell for route NAME, created on first use and kept for the life
 * of the process. Thread-safe (a mutex; config load time only). NULL on ENOMEM.
 * Works before dt_metrics_init() too (for -t and --explain), with no slots.
 */
dt_route_stats *dt_metrics_route(const char *name);
dt_upstream_stats *dt_metrics_upstream(const char *name);

/* The calling worker's slot (index 0..nworkers-1, or nworkers for the main thread). */
dt_metrics_worker *dt_metrics_worker_slot(int index);

/* One finished request. ROUTE may be NULL (no route). DURATION in microseconds. */
void dt_metrics_request(dt_metrics_worker *w, dt_route_stats *route, dt_action action, int code,
                        int64_t duration_us, int64_t now_s);
/* A dry-run route that would have redirected. */
void dt_metrics_dry_run(dt_metrics_worker *w, dt_route_stats *route, int64_t now_s);
/* An upstream 30x rewritten: FROM -> TO (302->307 or 301->308). */
void dt_metrics_rewrite(dt_metrics_worker *w, int from, int to);
/* An upstream failure of class KIND (a dt_err). */
void dt_metrics_upstream_error(dt_metrics_worker *w, dt_upstream_stats *up, int kind);
/* An upstream Location that names an internal origin and was not rewritten. */
void dt_metrics_location_leak(dt_metrics_worker *w, dt_upstream_stats *up);
/* Active client connections of this worker: +1 / -1. */
void dt_metrics_connections(dt_metrics_worker *w, int delta);
/* A config reload attempt. */
void dt_metrics_reload(bool ok);

struct dt_config;

/*
 * Render every family in Prometheus text format into a malloc'd buffer
 * (*out, *len); the caller frees it. Per-route gauges cover the routes of
 * CFG (the running snapshot). Any thread. Returns DT_OK or DT_ENOMEM.
 */
int dt_metrics_render(const struct dt_config *cfg, char **out, size_t *len);

#endif
