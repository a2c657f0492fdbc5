/*
 * forwarded.c - request and response header rewriting for relaying.
 */
#include <stdio.h>

#include "detour/forwarded.h"

static bool name_is(dt_str name, const char *s)
{
    return dt_str_ieq_cstr(name.p, name.n, s);
}

/* Headers the upstream side regenerates or that we set ourselves. */
static bool request_header_replaced(dt_str name)
{
    return name_is(name, "Content-Length") || name_is(name, "Expect") ||
           name_is(name, "X-Forwarded-For") || name_is(name, "X-Forwarded-Proto") ||
           name_is(name, "X-Forwarded-Host");
}

/* Join every X-Forwarded-For value and the client into XFF. */
static size_t build_xff(const dt_header_field *in, size_t n, dt_str client, char *xff, size_t cap)
{
    size_t len = 0;

    for (size_t i = 0; i < n; i++) {
        if (!name_is(in[i].name, "X-Forwarded-For") || in[i].value.n == 0)
            continue;
        /* Keep room for ", client"; drop what does not fit rather than cut an address. */
        if (len + in[i].value.n + 2 + client.n + 1 > cap)
            break;
        if (len > 0) {
            memcpy(xff + len, ", ", 2);
            len += 2;
        }
        memcpy(xff + len, in[i].value.p, in[i].value.n);
        len += in[i].value.n;
    }
    if (len + 2 + client.n + 1 > cap)
        len = 0;
    if (len > 0) {
        memcpy(xff + len, ", ", 2);
        len += 2;
    }
    memcpy(xff + len, client.p, client.n);
    len += client.n;
    xff[len] = '\0';
    return len;
}

static dt_str decremented(dt_str value, char *scratch)
{
    uint64_t v;

    /* Not a number (or 0): pass it on untouched. */
    if (!dt_str_to_u64(value, UINT64_MAX, &v) || v == 0)
        return value;
    int len = snprintf(scratch, 32, "%llu", (unsigned long long)(v - 1));
    return (dt_str){scratch, (size_t)len};
}

void dt_fwd_request_headers(const dt_header_field *in, size_t n, const dt_fwd_ctx *c, char *scratch,
                            char *xff, size_t xff_cap, dt_fwd_emit_fn emit, void *ctx)
{
    dt_conn_tokens conn = {0};
    bool via_emitted = false, host_emitted = false;
    char via[128];
    int via_len = snprintf(via, sizeof via, "1.1 %.*s", (int)c->via_name.n, c->via_name.p);
    dt_str our_via = {via, (size_t)via_len};

    for (size_t i = 0; i < n; i++)
        if (name_is(in[i].name, "Connection"))
            dt_conn_tokens_add(&conn, in[i].value);

    for (size_t i = 0; i < n; i++) {
        dt_str name = in[i].name, value = in[i].value;

        if (dt_header_drop(name, &conn) || request_header_replaced(name))
            continue;
        /* Credentials for the proxy must never travel on to every origin. */
        if (c->proxy_auth_consumed && name_is(name, "Proxy-Authorization"))
            continue;
        if (name_is(name, "Host")) {
            if (host_emitted)
                continue; /* hygiene refuses two Hosts; never send two */
            host_emitted = true;
            if (c->replace_host.p != NULL)
                value = c->replace_host;
        } else if (name_is(name, "Max-Forwards") && c->max_forwards)
            value = decremented(value, scratch);
        emit(ctx, name, value);
        /* Our Via goes right after the last Via received, keeping the chain in order. */
        if (name_is(name, "Via")) {
            bool more = false;
            for (size_t j = i + 1; j < n && !more; j++)
                more = name_is(in[j].name, "Via");
            if (!more) {
                emit(ctx, DT_STR_LIT("Via"), our_via);
                via_emitted = true;
            }
        }
    }
    if (!host_emitted && c->replace_host.p != NULL)
        emit(ctx, DT_STR_LIT("Host"), c->replace_host);
    if (!via_emitted)
        emit(ctx, DT_STR_LIT("Via"), our_via);
    size_t xlen = build_xff(in, n, c->client_ip, xff, xff_cap);
    emit(ctx, DT_STR_LIT("X-Forwarded-For"), (dt_str){xff, xlen});
    emit(ctx, DT_STR_LIT("X-Forwarded-Proto"), c->proto);
    if (c->host.n > 0)
        emit(ctx, DT_STR_LIT("X-Forwarded-Host"), c->host);
}

bool dt_fwd_response_keep(dt_str name, const dt_conn_tokens *conn)
{
    return !dt_header_drop(name, conn) && !name_is(name, "Content-Length");
}
