/*
 * server.c - process life: start-up, signals, reload, drain.
 */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <netinet/in.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include "detour/admin.h"
#include "detour/flag.h"
#include "detour/log.h"
#include "detour/loop.h"
#include "detour/metrics.h"
#include "detour/server.h"
#include "detour/upstream.h"

struct dt_server {
    pthread_mutex_t lock; /* guards cfg */
    dt_config *cfg;
    dt_worker **workers;
    int nworkers;
    atomic_int conns;
    int max_conns;
    dt_admin *admin;
};

dt_config *dt_server_config(dt_server *srv)
{
    dt_config *cfg;

    pthread_mutex_lock(&srv->lock);
    cfg = srv->cfg != NULL ? dt_config_ref(srv->cfg) : NULL;
    pthread_mutex_unlock(&srv->lock);
    return cfg;
}

bool dt_server_conn_acquire(dt_server *srv)
{
    if (atomic_fetch_add_explicit(&srv->conns, 1, memory_order_relaxed) < srv->max_conns)
        return true;
    atomic_fetch_sub_explicit(&srv->conns, 1, memory_order_relaxed);
    return false;
}

void dt_server_conn_release(dt_server *srv)
{
    atomic_fetch_sub_explicit(&srv->conns, 1, memory_order_relaxed);
}

bool dt_server_conn_available(dt_server *srv)
{
    return atomic_load_explicit(&srv->conns, memory_order_relaxed) < srv->max_conns;
}

/* Each client connection may need an upstream one: room for both, and slack. */
static void raise_fd_limit(int max_connections)
{
    struct rlimit rl;
    rlim_t want = (rlim_t)max_connections * 2 + 1024;

    if (getrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_cur >= want)
        return;
    if (rl.rlim_max < want) {
        struct rlimit hard = {want, want};
        if (setrlimit(RLIMIT_NOFILE, &hard) == 0)
            return;
        want = rl.rlim_max;
    }
    rl.rlim_cur = want;
    if (setrlimit(RLIMIT_NOFILE, &rl) != 0 || want < (rlim_t)max_connections * 2)
        dt_log_warn("open file limit is %llu: fewer than limits.max_connections = %d need",
                    (unsigned long long)want, max_connections);
}

/* Settings that only a restart applies; say so rather than pretend. */
static void warn_restart_needed(const dt_config *old, const dt_config *cfg)
{
    bool same_listen = old->nlisten == cfg->nlisten;

    for (size_t i = 0; same_listen && i < cfg->nlisten; i++)
        same_listen = strcmp(old->listen[i].text, cfg->listen[i].text) == 0 &&
                      !strcmp(old->listen[i].tls_cert ? old->listen[i].tls_cert : "",
                              cfg->listen[i].tls_cert ? cfg->listen[i].tls_cert : "");
    if (!same_listen)
        dt_log_warn(
            "%s: listen changed: the new listeners need a restart; still serving the old ones",
            cfg->path);
    if (old->workers != cfg->workers)
        dt_log_warn("%s: workers changed: needs a restart", cfg->path);
    if (old->mode != cfg->mode)
        dt_log_warn("%s: mode changed: needs a restart to apply to accepted connections",
                    cfg->path);
    if ((old->admin == NULL) != (cfg->admin == NULL) ||
        (old->admin && strcmp(old->admin->text, cfg->admin->text) != 0))
        dt_log_warn("%s: admin changed: needs a restart", cfg->path);
    if (old->limits.max_connections != cfg->limits.max_connections ||
        old->limits.max_header_bytes != cfg->limits.max_header_bytes ||
        old->timeouts.idle_ms != cfg->timeouts.idle_ms)
        dt_log_warn("%s: limits.max_connections, limits.max_header_bytes and timeouts.idle_ms "
                    "changes need a restart",
                    cfg->path);
}

int dt_server_reload(dt_server *srv)
{
    char err[1024];
    dt_config *cfg = NULL, *old;
    dt_config *cur = dt_server_config(srv);
    int rc;

    rc = dt_config_load(cur->path, &cfg, err, sizeof err);
    if (rc != DT_OK) {
        dt_log_error("reload refused, keeping the running config: %s", err);
        dt_metrics_reload(false);
        dt_config_unref(cur);
        return rc;
    }
    warn_restart_needed(cur, cfg);
    if ((cur->access_log == NULL) != (cfg->access_log == NULL) ||
        (cur->access_log && strcmp(cur->access_log, cfg->access_log) != 0)) {
        if (dt_access_log_open(cfg) != DT_OK)
            dt_log_error("%s: cannot open access log %s: %s", cfg->path, cfg->access_log,
                         strerror(errno));
    }
    dt_config_unref(cur);
    pthread_mutex_lock(&srv->lock);
    old = srv->cfg;
    srv->cfg = cfg;
    pthread_mutex_unlock(&srv->lock);
    for (int i = 0; i < srv->nworkers; i++)
        dt_worker_post_reload(srv->workers[i]);
    dt_config_unref(old);
    dt_metrics_reload(true);
    dt_log_info("reloaded %s: %zu routes", cfg->path, cfg->nroutes);
    return DT_OK;
}

static void drain(dt_server *srv)
{
    dt_config *cfg = dt_server_config(srv);
    int64_t deadline = dt_now_ms() + cfg->timeouts.drain_ms;

    dt_log_info("stopping: draining requests in flight (up to %d ms)", cfg->timeouts.drain_ms);
    dt_config_unref(cfg);
    if (srv->admin != NULL)
        dt_admin_set_draining(srv->admin);
    for (int i = 0; i < srv->nworkers; i++)
        dt_worker_post_drain(srv->workers[i], deadline);
    for (int i = 0; i < srv->nworkers; i++)
        dt_worker_join(srv->workers[i]);
}

/*
 * Workers bind with SO_REUSEPORT, which would let a second detour (or anything
 * else with SO_REUSEPORT) share the port silently, each getting a part of the
 * connections. Refuse to start when the address is taken: bind once without
 * SO_REUSEPORT first.
 */
static int probe_listeners(const dt_config *cfg)
{
    int one = 1;

    for (size_t i = 0; i < cfg->nlisten; i++) {
        const dt_listen *l = &cfg->listen[i];
        int fd = socket(l->addr.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
        int rc = fd < 0 ? -1 : 0;
        if (rc == 0)
            setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        if (rc == 0 && l->addr.ss_family == AF_INET6)
            setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one);
        if (rc == 0)
            rc = bind(fd, (const struct sockaddr *)&l->addr, l->addrlen);
        int err = errno;
        if (fd >= 0)
            close(fd);
        if (rc != 0) {
            dt_log_error("%s:%d: cannot listen on %s: %s%s", cfg->path, l->line, l->text,
                         strerror(err),
                         err == EADDRINUSE ? " (is another detour already running?)" : "");
            return DT_EIO;
        }
    }
    return DT_OK;
}

static int start_workers(dt_server *srv, dt_config *cfg)
{
    char err[512];

    srv->workers = calloc((size_t)cfg->workers, sizeof *srv->workers);
    if (srv->workers == NULL)
        return DT_ENOMEM;
    for (int i = 0; i < cfg->workers; i++) {
        srv->workers[i] = dt_worker_create(srv, i, cfg, err, sizeof err);
        if (srv->workers[i] == NULL) {
            dt_log_error("%s", err);
            return DT_EIO;
        }
        srv->nworkers++;
    }
    for (int i = 0; i < srv->nworkers; i++)
        if (dt_worker_start(srv->workers[i]) != DT_OK) {
            dt_log_error("cannot start worker thread %d", i);
            return DT_EIO;
        }
    return DT_OK;
}

static void serve_signals(dt_server *srv, const sigset_t *set)
{
    for (;;) {
        struct timespec second = {1, 0};
        int sig = sigtimedwait(set, NULL, &second);

        if (sig < 0) {
            /* Once a second: when_file flags, without a stat on the request path. */
            dt_flag_poll_all();
            continue;
        }
        switch (sig) {
        case SIGHUP:
            dt_server_reload(srv);
            break;
        case SIGUSR1:
            if (dt_access_log_reopen() != DT_OK)
                dt_log_error("cannot reopen the access log: %s", strerror(errno));
            for (int i = 0; i < srv->nworkers; i++)
                dt_worker_post_logrotate(srv->workers[i]);
            break;
        case SIGTERM:
        case SIGINT:
            return;
        }
    }
}

int dt_server_run(dt_config *cfg)
{
    dt_server srv = {.cfg = cfg, .max_conns = cfg->limits.max_connections};
    sigset_t set;
    int rc = 1;

    pthread_mutex_init(&srv.lock, NULL);
    sigemptyset(&set);
    sigaddset(&set, SIGHUP);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGUSR1);
    /* Every thread inherits this mask; only the main thread takes the signals. */
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    signal(SIGPIPE, SIG_IGN);
    raise_fd_limit(cfg->limits.max_connections);

    if (dt_metrics_init(cfg->workers) != DT_OK || dt_upstream_global_init() != DT_OK)
        goto out;
    if (dt_access_log_open(cfg) != DT_OK) {
        dt_log_error("%s: cannot open access log %s: %s", cfg->path, cfg->access_log,
                     strerror(errno));
        goto out;
    }
    /* Admin first: a health probe must not be refused once proxying starts. */
    if (cfg->admin != NULL) {
        char err[512];
        srv.admin = dt_admin_start(&srv, cfg->admin, err, sizeof err);
        if (srv.admin == NULL) {
            dt_log_error("%s", err);
            goto out;
        }
    }
    if (probe_listeners(cfg) != DT_OK || start_workers(&srv, cfg) != DT_OK)
        goto out;
    dt_log_info("detour %s listening on %s%s (%s mode, %d workers)", DT_VERSION,
                cfg->listen[0].text, cfg->nlisten > 1 ? " and more" : "", dt_mode_name(cfg->mode),
                srv.nworkers);
    serve_signals(&srv, &set);
    drain(&srv);
    rc = 0;
    dt_log_info("stopped");
out:
    if (rc != 0) {
        for (int i = 0; i < srv.nworkers; i++)
            dt_worker_post_drain(srv.workers[i], dt_now_ms());
        for (int i = 0; i < srv.nworkers; i++)
            dt_worker_join(srv.workers[i]);
    }
    if (srv.admin != NULL)
        dt_admin_stop(srv.admin);
    for (int i = 0; i < srv.nworkers; i++)
        dt_worker_destroy(srv.workers[i]);
    free(srv.workers);
    dt_access_log_close();
    dt_config_unref(srv.cfg);
    dt_upstream_global_cleanup();
    dt_metrics_shutdown();
    pthread_mutex_destroy(&srv.lock);
    return rc;
}
