/*
 * head.c - a complete request head: validation the library does not do,
 * the route decision, and the start of a relay or a local answer.
 */
#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>

#include "detour/access.h"
#include "detour/front_int.h"
#include "detour/rules.h"
#include "detour/target.h"
#include "detour/template.h"
#include "detour/upstream.h"

/* The most request headers relayed; a larger head is refused with 431. */
#define DT_REQ_HEADERS_MAX 256

/* ------------------------------------------------------------ the request head */

typedef struct head_scan {
    dt_hygiene hyg;
    dt_req_header hdrs[DT_REQ_HEADERS_MAX];
    size_t n;
    bool too_many;
    bool folded;
    dt_str host_header;
    bool via_loop;
    dt_str via_name;
} head_scan;

static enum MHD_Result scan_header(void *cls, enum MHD_ValueKind kind, const char *key,
                                   size_t key_size, const char *value, size_t value_size)
{
    head_scan *s = cls;
    dt_str name = {key, key_size}, val = {value != NULL ? value : "", value_size};

    (void)kind;
    if (value != NULL && !dt_header_layout_ok(key, key_size, value))
        s->folded = true;
    dt_hygiene_add(&s->hyg, name, val);
    if (dt_str_ieq_cstr(key, key_size, "Host") && s->host_header.p == NULL)
        s->host_header = val;
    if (dt_str_ieq_cstr(key, key_size, "Via") && dt_via_names(val, s->via_name))
        s->via_loop = true;
    if (s->n == DT_REQ_HEADERS_MAX) {
        s->too_many = true;
        return MHD_NO;
    }
    s->hdrs[s->n].name = name;
    s->hdrs[s->n].value = val;
    s->n++;
    return MHD_YES;
}

static const char *lookup_header(void *ctx, const char *name, size_t *len)
{
    const char *v = NULL;

    if (MHD_lookup_connection_value_n(ctx, MHD_HEADER_KIND, name, strlen(name), &v, len) != MHD_YES)
        return NULL;
    return v;
}

static enum MHD_Result start_relay(dt_req *r, const head_scan *s, bool expect_continue);

/* Host for matching and $host: the absolute-form authority, else the Host header. */
static void set_host(dt_req *r, const dt_target *t, dt_str host_header)
{
    dt_str host = {"", 0};
    unsigned port;

    if (t->form == DT_TARGET_ABSOLUTE)
        host = t->host;
    else if (host_header.p != NULL && dt_authority_split(host_header, &host, &port) != DT_OK)
        host = (dt_str){"", 0};
    if (dt_host_lower(host, r->host, sizeof r->host) < 0)
        r->host[0] = '\0';
}

/*
 * Remember where the request itself is headed, for forward and transparent
 * modes (the absolute-form authority, the original destination of a
 * redirected connection, or the Host header), and make the origin-form target
 * the upstream will get. DT_ENOMEM only.
 */
static int set_destination(dt_req *r, const dt_target *t, dt_str host_header)
{
    dt_str authority = {NULL, 0};
    bool https = false;

    if (t->form == DT_TARGET_ABSOLUTE) {
        size_t cap = t->origin_form.n + 2;
        r->up_target = malloc(cap);
        if (r->up_target == NULL || dt_target_origin_form(t, r->up_target, cap) < 0)
            return DT_ENOMEM;
        authority = t->authority;
        https = dt_str_ieq(t->scheme, DT_STR_LIT("https"));
    } else if (host_header.p != NULL) {
        authority = host_header;
    }
    if (r->cfg->mode == DT_MODE_TRANSPARENT && r->conn->has_orig_dst) {
        char ip[INET6_ADDRSTRLEN];
        const struct sockaddr *sa = (const struct sockaddr *)&r->conn->orig_dst;
        unsigned port;
        if (sa->sa_family == AF_INET6) {
            inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)sa)->sin6_addr, ip, sizeof ip);
            port = ntohs(((const struct sockaddr_in6 *)sa)->sin6_port);
            snprintf(r->dest, sizeof r->dest, "[%s]:%u", ip, port);
        } else {
            inet_ntop(AF_INET, &((const struct sockaddr_in *)sa)->sin_addr, ip, sizeof ip);
            port = ntohs(((const struct sockaddr_in *)sa)->sin_port);
            snprintf(r->dest, sizeof r->dest, "%s:%u", ip, port);
        }
        r->dest_https = false;
        return DT_OK;
    }
    if (authority.p != NULL && authority.n < sizeof r->dest) {
        memcpy(r->dest, authority.p, authority.n);
        r->dest[authority.n] = '\0';
        r->dest_https = https;
        /* RFC 9112 3.2.2: a proxy replaces Host with the target's authority,
         * whichever upstream the request goes to. */
        if (t->form == DT_TARGET_ABSOLUTE)
            r->replace_host = (dt_str){r->dest, authority.n};
    }
    return DT_OK;
}

/* Relay to the request's own destination (forward and transparent modes). */
static enum MHD_Result relay_own_destination(dt_req *r, const head_scan *s, bool expect)
{
    dt_str host;
    unsigned port = 0;

    if (r->dest[0] == '\0' ||
        dt_authority_split((dt_str){r->dest, strlen(r->dest)}, &host, &port) != DT_OK)
        return dt_front_answer_error(r, 400, "no destination: absolute-form target or Host needed",
                                     expect);
    if (port == 0)
        port = r->dest_https ? 443 : 80;
    if (r->cfg->mode == DT_MODE_FORWARD) {
        dt_access a = dt_access_dest_name(&r->cfg->forward, host, port);
        if (a == DT_ACCESS_DENY)
            return dt_front_answer_error(r, 403, "destination not allowed", expect);
        r->check_addr = a == DT_ACCESS_BY_ADDRESS;
        /* RFC 9112 3.2.2: a proxy replaces Host with the target's authority. */
        r->replace_host = (dt_str){r->dest, strlen(r->dest)};
    }
    if (asprintf(&r->url, "%s://%s", r->dest_https ? "https" : "http", r->dest) < 0) {
        r->url = NULL;
        return dt_front_answer_error(r, 500, "out of memory", expect);
    }
    return start_relay(r, s, expect);
}

static enum MHD_Result start_relay(dt_req *r, const head_scan *s, bool expect_continue)
{
    int rc = dt_upstream_start(r, s->hdrs, s->n);

    if (rc != DT_OK)
        return dt_front_answer_error(r, 500, "detour could not start the upstream request",
                                     expect_continue);
    r->state = DT_REQ_RELAY;
    return MHD_YES;
}

static enum MHD_Result on_max_forwards_zero(dt_req *r, bool expect_continue)
{
    struct MHD_Response *resp;

    if (!dt_str_eq((dt_str){r->method, r->method_len}, DT_STR_LIT("OPTIONS")))
        return dt_front_answer_error(r, 405, "TRACE with Max-Forwards: 0 is not answered by detour",
                                     expect_continue);
    resp = MHD_create_response_from_buffer(0, (void *)"", MHD_RESPMEM_PERSISTENT);
    if (resp != NULL)
        MHD_add_response_header(resp, "Allow", "GET, HEAD, POST, PUT, DELETE, PATCH, OPTIONS");
    r->action = DT_ACTION_ERROR;
    dt_front_set_answer(r, 200, resp);
    return dt_front_answer_locally(r, expect_continue);
}

static enum MHD_Result decide(dt_req *r, const head_scan *s, const dt_target *t,
                              bool expect_continue)
{
    char location[DT_LOCATION_MAX];
    dt_verdict v = {.location = location, .location_cap = sizeof location};
    dt_request_info ri = {
        .method = {r->method, r->method_len},
        .scheme = {r->scheme, strlen(r->scheme)},
        .host = {r->host, strlen(r->host)},
        .path = t->path,
        .query = t->query,
        .client_ip = {r->conn->client_ip, strlen(r->conn->client_ip)},
        .header = lookup_header,
        .header_ctx = r->mhd,
        .now = r->start_wall,
    };

    if (dt_rules_decide(r->cfg, &ri, &v) != DT_OK)
        return dt_front_answer_error(r, 500, "the redirect Location would be too long",
                                     expect_continue);
    for (size_t i = 0, n = 0; i < v.ndry_run; i++) {
        dt_metrics_dry_run(r->w->metrics, v.dry_run[i]->stats, r->start_wall);
        int k = snprintf(r->dry_run + n, sizeof r->dry_run - n, "%s%s", i ? "," : "",
                         v.dry_run[i]->name);
        n = k < 0 || (size_t)k >= sizeof r->dry_run - n ? n : n + (size_t)k;
    }
    r->route = v.route;
    switch (v.kind) {
    case DT_VERDICT_REDIRECT:
        /* HTTP/1.0 without Host: "https://$host/..." would have no authority at all. */
        if (r->host[0] == '\0' &&
            (dt_template_uses(v.route->redirect.to) & (1u << DT_TVAR_HOST)) != 0)
            return dt_front_answer_error(r, 400, "this redirect needs a Host header",
                                         expect_continue);
        return dt_front_answer_redirect(r, &v, expect_continue);
    case DT_VERDICT_RELAY:
        r->upstream = v.upstream;
        break;
    case DT_VERDICT_NO_ROUTE:
        break;
    }
    if (r->upstream != NULL)
        return start_relay(r, s, expect_continue);
    if (r->cfg->mode == DT_MODE_REVERSE)
        return dt_front_answer_error(r, 404, "no route for this request", expect_continue);
    return relay_own_destination(r, s, expect_continue);
}

/* RFC 9112 3.2: HTTP/1.1 needs a Host; a Host given must be a valid authority (nginx: not empty). */
static bool host_header_ok(dt_str host_header, const char *version)
{
    dt_str host;
    unsigned port;

    if (host_header.p == NULL)
        return strcmp(version, "HTTP/1.1") != 0;
    return dt_authority_split(host_header, &host, &port) == DT_OK;
}

/*
 * libmicrohttpd hands the URI over as a C string in its read buffer, followed
 * by one NUL (where the space was) and the version: a NUL inside the target
 * shows as a gap between the two.
 */
static bool target_has_nul(const dt_req *r, const char *version)
{
    uintptr_t end = (uintptr_t)r->uri_raw + r->target_len + 1, v = (uintptr_t)version;
    return r->uri_raw != NULL && v > end && v - end <= (uintptr_t)r->cfg->limits.max_header_bytes;
}

enum MHD_Result dt_front_on_head(dt_req *r, const char *method, const char *version)
{
    head_scan *s;
    dt_target t;
    const union MHD_ConnectionInfo *hs;
    enum MHD_Result ret;

    r->method = method;
    r->method_len = strlen(method);
    r->version = version;
    r->is_head = strcmp(method, "HEAD") == 0;
    const char *scheme = r->conn->tls ? "https" : "http";
    memcpy(r->scheme, scheme, strlen(scheme) + 1); /* fits: scheme[8] */
    dt_list_remove(&r->conn->head_link);
    r->conn->head_since = 0;

    hs = MHD_get_connection_info(r->mhd, MHD_CONNECTION_INFO_REQUEST_HEADER_SIZE);
    if (hs != NULL && hs->header_size > (size_t)r->cfg->limits.max_header_bytes)
        return dt_front_answer_and_close(r, 431, "the request head is too large");

    /* One scratch scan per worker: a head is scanned start to end without re-entry. */
    if (r->w->scan == NULL)
        r->w->scan = malloc(sizeof *s);
    s = r->w->scan;
    if (s == NULL)
        return MHD_NO;
    memset(&s->hyg, 0, sizeof s->hyg);
    dt_hygiene_init(&s->hyg);
    s->n = 0;
    s->too_many = s->folded = s->via_loop = false;
    s->host_header = (dt_str){NULL, 0};
    s->via_name = (dt_str){r->cfg->via_name, strlen(r->cfg->via_name)};
    MHD_get_connection_values_n(r->mhd, MHD_HEADER_KIND, scan_header, s);
    /* libmicrohttpd measures values with strlen: "a<NUL>b" arrives as "a". */
    for (size_t i = 0; i < s->n && !s->folded; i++)
        if (!dt_header_value_end_ok(s->hdrs[i].value.p, s->hdrs[i].value.n,
                                    i + 1 < s->n ? s->hdrs[i + 1].name.p : NULL))
            s->folded = true;
    ret = MHD_YES;
    if (s->too_many)
        ret = dt_front_answer_and_close(r, 431, "too many request headers");
    else if (s->folded)
        ret = dt_front_answer_and_close(r, 400,
                                        "obsolete line folding or a NUL byte in a request header");
    else if (dt_hygiene_finish(&s->hyg) != 0)
        ret = dt_front_answer_and_close(r, s->hyg.status, s->hyg.reason);
    else if (target_has_nul(r, version))
        ret = dt_front_answer_and_close(r, 400, "a NUL byte in the request target");
    else if (dt_target_parse((dt_str){r->target, r->target_len}, strcmp(method, "CONNECT") == 0,
                             &t) != DT_OK)
        ret = dt_front_answer_and_close(r, 400, "malformed request target");
    else if (t.form == DT_TARGET_ORIGIN && !host_header_ok(s->host_header, version))
        ret = dt_front_answer_and_close(r, 400, "missing or invalid Host header");
    if (r->state == DT_REQ_QUEUED || ret == MHD_NO)
        goto out;

    bool expect = s->hyg.expect_continue;
    r->chunked = s->hyg.chunked;
    r->content_length = s->hyg.n_content_length == 1 ? (int64_t)s->hyg.content_length : -1;
    r->has_body = r->chunked || r->content_length > 0;
    set_host(r, &t, s->host_header);
    if (set_destination(r, &t, s->host_header) != DT_OK) {
        ret = MHD_NO;
        goto out;
    }

    if (t.form == DT_TARGET_AUTHORITY)
        ret = dt_front_answer_and_close(
            r, 405, "CONNECT is only served in forward mode, as a first request");
    else if (r->cfg->mode == DT_MODE_FORWARD &&
             !dt_access_client(&r->cfg->forward, (struct sockaddr *)&r->conn->client_sa))
        ret = dt_front_answer_error(r, 403, "this client may not use the proxy", expect);
    else if (s->via_loop)
        ret =
            dt_front_answer_error(r, 508, "this request already passed through this proxy", expect);
    else if (r->content_length >= 0 && (uint64_t)r->content_length > r->cfg->limits.max_body_bytes)
        ret = dt_front_answer_error(r, 413, "the request body is larger than this proxy accepts",
                                    expect);
    else if (s->hyg.max_forwards_seen && s->hyg.max_forwards == 0 &&
             (strcmp(method, "TRACE") == 0 || strcmp(method, "OPTIONS") == 0))
        ret = on_max_forwards_zero(r, expect);
    else
        ret = decide(r, s, &t, expect);
out:
    return ret;
}
