/*
 * admin.c - /healthz and /metrics on their own libmicrohttpd daemon.
 */
#include <errno.h>
#include <microhttpd.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>

#include "detour/admin.h"
#include "detour/metrics.h"
#include "detour/server.h"

struct dt_admin {
    struct MHD_Daemon *mhd;
    struct dt_server *srv;
    atomic_bool draining;
};

static enum MHD_Result send_text(struct MHD_Connection *c, unsigned status, const char *type,
                                 char *body, size_t len, enum MHD_ResponseMemoryMode mode)
{
    struct MHD_Response *r = MHD_create_response_from_buffer(len, body, mode);
    enum MHD_Result ok;

    if (r == NULL)
        return MHD_NO;
    MHD_add_response_header(r, "Content-Type", type);
    MHD_add_response_header(r, "Cache-Control", "no-store");
    ok = MHD_queue_response(c, status, r);
    MHD_destroy_response(r);
    return ok;
}

static enum MHD_Result handle(void *cls, struct MHD_Connection *c, const char *url,
                              const char *method, const char *version, const char *upload_data,
                              size_t *upload_data_size, void **req_cls)
{
    dt_admin *a = cls;
    static int first_call_marker;

    (void)version;
    (void)upload_data;
    if (*req_cls == NULL) {
        *req_cls = &first_call_marker;
        return MHD_YES;
    }
    if (*upload_data_size > 0) {
        *upload_data_size = 0; /* the admin endpoints take no body */
        return MHD_YES;
    }
    if (strcmp(method, "GET") != 0 && strcmp(method, "HEAD") != 0)
        return send_text(c, 405, "text/plain", "method not allowed\n", 19, MHD_RESPMEM_PERSISTENT);
    if (strcmp(url, "/healthz") == 0) {
        if (atomic_load(&a->draining))
            return send_text(c, 503, "text/plain", "draining\n", 9, MHD_RESPMEM_PERSISTENT);
        return send_text(c, 200, "text/plain", "ok\n", 3, MHD_RESPMEM_PERSISTENT);
    }
    if (strcmp(url, "/metrics") == 0) {
        char *body = NULL;
        size_t len = 0;
        dt_config *cfg = dt_server_config(a->srv);
        int rc = dt_metrics_render(cfg, &body, &len);
        dt_config_unref(cfg);
        if (rc != DT_OK)
            return send_text(c, 500, "text/plain", "out of memory\n", 14, MHD_RESPMEM_PERSISTENT);
        return send_text(c, 200, "text/plain; version=0.0.4; charset=utf-8", body, len,
                         MHD_RESPMEM_MUST_FREE);
    }
    return send_text(c, 404, "text/plain", "not found\n", 10, MHD_RESPMEM_PERSISTENT);
}

static const char *srv_path(struct dt_server *srv)
{
    static __thread char path[512];
    dt_config *cfg = dt_server_config(srv);

    snprintf(path, sizeof path, "%s", cfg != NULL ? cfg->path : "config");
    dt_config_unref(cfg);
    return path;
}

dt_admin *dt_admin_start(struct dt_server *srv, const dt_listen *addr, char *err, size_t errlen)
{
    dt_admin *a = calloc(1, sizeof *a);
    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL;

    if (a == NULL) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    a->srv = srv;
    if (addr->addr.ss_family == AF_INET6)
        flags |= MHD_USE_IPv6;
    a->mhd = MHD_start_daemon(flags, 0, NULL, NULL, handle, a, MHD_OPTION_SOCK_ADDR,
                              (const struct sockaddr *)&addr->addr, MHD_OPTION_CONNECTION_TIMEOUT,
                              10u, MHD_OPTION_CONNECTION_LIMIT, 64u, MHD_OPTION_END);
    if (a->mhd == NULL) {
        snprintf(err, errlen, "%s:%d: admin: cannot listen on %s: %s", srv_path(srv), addr->line,
                 addr->text, strerror(errno));
        free(a);
        return NULL;
    }
    return a;
}

void dt_admin_set_draining(dt_admin *a)
{
    atomic_store(&a->draining, true);
}

void dt_admin_stop(dt_admin *a)
{
    if (a == NULL)
        return;
    MHD_stop_daemon(a->mhd);
    free(a);
}
