/*
 * upstream.c - relaying to upstreams with one curl multi handle per worker.
 *
 * curl is driven by the worker's epoll through the socket API: curl tells us
 * which sockets to watch (socket_cb) and when to call it back (timer_cb, kept
 * in a variable: a timerfd cost ~12% CPU in a profile). Every transfer gets
 * a new easy handle (easy_new says why none is recycled); connections stay
 * in the multi's cache for keep-alive reuse.
 *
 * Backpressure both ways goes through the request's two fixed rings: when a
 * ring is full curl is paused (CURL_WRITEFUNC_PAUSE / CURL_READFUNC_PAUSE),
 * and the client side asks for an unpause when it made room. curl_easy_pause
 * may call the write callback synchronously, so it is only ever called from
 * the loop (dt_upstream_process), never from inside a libmicrohttpd callback.
 *
 * Timeouts: curl's connect timeout bounds connecting; timeouts.upstream_ms is
 * ours: the time a request waits on the upstream without any progress, kept
 * in a deadline list (every entry has the same timeout, so the list is
 * sorted by construction). Time spent paused because the client is slow is
 * not the upstream's fault and is not counted.
 */
#include <curl/curl.h>
#include <errno.h>
#include <stdlib.h>
#include <sys/epoll.h>
#include <unistd.h>

#include "detour/access.h"
#include "detour/forwarded.h"
#include "detour/front.h"
#include "detour/log.h"
#include "detour/upstream.h"

int dt_upstream_global_init(void)
{
    return curl_global_init(CURL_GLOBAL_DEFAULT) == CURLE_OK ? DT_OK : DT_EIO;
}

void dt_upstream_global_cleanup(void)
{
    curl_global_cleanup();
}

/* ------------------------------------------------------------ curl driving */

/*
 * curl says "stop watching" (CURL_POLL_REMOVE) whenever a transfer ends and
 * its connection goes back to the cache, and "watch" again when the next
 * transfer reuses it: two epoll_ctl calls per request for nothing. So a
 * removed socket stays registered, marked idle; the next "watch" of the same
 * fd is free when the events are unchanged. An idle socket that wakes us
 * (the upstream closed it) is unregistered then. curl closes sockets through
 * close_socket() below, which forgets them before the fd number can be
 * reused.
 */
static dt_curl_sock **sock_slot(dt_worker *w, int fd)
{
    dt_curl_sock **p = &w->curl_socks[(unsigned)fd % DT_CURL_SOCK_BUCKETS];

    while (*p != NULL && (*p)->fd != fd)
        p = &(*p)->next;
    return p;
}

static void sock_unregister(dt_worker *w, dt_curl_sock *s)
{
    if (s->events != 0)
        dt_worker_unwatch(w, s->fd);
    s->events = 0;
}

static int socket_cb(CURL *easy, curl_socket_t fd, int what, void *userp, void *socketp)
{
    dt_worker *w = userp;
    dt_curl_sock **slot = sock_slot(w, fd);
    dt_curl_sock *s = *slot;
    uint32_t events;

    (void)easy;
    (void)socketp;
    if (what == CURL_POLL_REMOVE) {
        if (s != NULL)
            s->idle = true;
        return 0;
    }
    events = ((what & CURL_POLL_IN) ? EPOLLIN : 0) | ((what & CURL_POLL_OUT) ? EPOLLOUT : 0);
    if (s == NULL) {
        s = calloc(1, sizeof *s);
        if (s == NULL)
            return -1;
        s->ev.kind = DT_EV_CURL;
        s->fd = fd;
        *slot = s;
    }
    s->idle = false;
    if ((uint32_t)s->events == events)
        return 0;
    if ((s->events == 0 ? dt_worker_watch(w, fd, events, &s->ev)
                        : dt_worker_rewatch(w, fd, events, &s->ev)) != 0)
        return -1;
    s->events = (int)events;
    return 0;
}

static int close_socket(void *clientp, curl_socket_t fd)
{
    dt_worker *w = clientp;
    dt_curl_sock **slot = sock_slot(w, fd);
    dt_curl_sock *s = *slot;

    if (s != NULL) {
        sock_unregister(w, s);
        *slot = s->next;
        /* An event for it may still sit in this iteration's epoll batch. */
        s->fd = -1;
        s->next = w->dead_socks;
        w->dead_socks = s;
    }
    return close(fd);
}

static int timer_cb(CURLM *multi, long timeout_ms, void *userp)
{
    dt_worker *w = userp;

    (void)multi;
    w->curl_deadline = timeout_ms < 0 ? -1 : dt_worker_now_ms(w) + timeout_ms;
    return 0;
}

int dt_upstream_init(dt_worker *w)
{
    CURLM *m = curl_multi_init();

    if (m == NULL)
        return DT_ENOMEM;
    curl_multi_setopt(m, CURLMOPT_SOCKETFUNCTION, socket_cb);
    curl_multi_setopt(m, CURLMOPT_SOCKETDATA, w);
    curl_multi_setopt(m, CURLMOPT_TIMERFUNCTION, timer_cb);
    curl_multi_setopt(m, CURLMOPT_TIMERDATA, w);
    /* Keep an idle connection for every transfer slot so keep-alive reuse holds. */
    curl_multi_setopt(m, CURLMOPT_MAXCONNECTS, (long)DT_MAX_ACTIVE_TRANSFERS * 2);
    w->multi = m;
    /* Connections and DNS answers live in the multi; TLS sessions live in
     * each easy handle unless shared. Every transfer has a new handle, so
     * share them per worker (one thread: no locks) and let a new upstream
     * connection resume a session instead of a full handshake. Without
     * the share, upstream TLS still works, only without resumption. */
    w->tls_sessions = curl_share_init();
    if (w->tls_sessions != NULL &&
        curl_share_setopt(w->tls_sessions, CURLSHOPT_SHARE, CURL_LOCK_DATA_SSL_SESSION) !=
            CURLSHE_OK) {
        curl_share_cleanup(w->tls_sessions);
        w->tls_sessions = NULL;
    }
    w->curl_deadline = -1;
    dt_list_init(&w->waitq);
    dt_list_init(&w->unpauseq);
    dt_list_init(&w->up_timers);
    return DT_OK;
}

void dt_upstream_cleanup(dt_worker *w)
{
    if (w->multi != NULL)
        curl_multi_cleanup(w->multi);
    w->multi = NULL;
    /* Refused (CURLSHE_IN_USE) only while a handle curl would not release
     * still points at it; the process is ending then anyway. */
    if (w->tls_sessions != NULL)
        curl_share_cleanup(w->tls_sessions);
    w->tls_sessions = NULL;
    dt_upstream_reap(w);
    /* Sockets curl left open at cleanup (none, normally) are only forgotten here. */
    for (size_t i = 0; i < DT_CURL_SOCK_BUCKETS; i++)
        while (w->curl_socks[i] != NULL) {
            dt_curl_sock *s = w->curl_socks[i];
            w->curl_socks[i] = s->next;
            free(s);
        }
}

void dt_upstream_socket_event(dt_worker *w, dt_curl_sock *s, uint32_t events)
{
    int flags = 0, running;

    if (s->fd < 0)
        return; /* closed earlier in this batch */
    if (s->idle) {
        sock_unregister(w, s); /* an idle connection closed or sent junk: curl finds out on reuse */
        return;
    }
    if (events & (EPOLLIN | EPOLLHUP | EPOLLRDHUP))
        flags |= CURL_CSELECT_IN;
    if (events & EPOLLOUT)
        flags |= CURL_CSELECT_OUT;
    if (events & EPOLLERR)
        flags |= CURL_CSELECT_ERR;
    curl_multi_socket_action(w->multi, s->fd, flags, &running);
}

void dt_upstream_reap(dt_worker *w)
{
    while (w->dead_socks != NULL) {
        dt_curl_sock *s = w->dead_socks;
        w->dead_socks = s->next;
        free(s);
    }
}

/* ------------------------------------------------------------ the deadline list */

static void timer_arm(dt_req *r)
{
    dt_list_remove(&r->timer);
    if (!r->transfer_active || r->recv_paused || r->send_paused)
        return;
    r->deadline = dt_worker_now_ms(r->w) + r->cfg->timeouts.upstream_ms;
    dt_list_append(&r->w->up_timers, &r->timer);
}

/* ------------------------------------------------------------ callbacks */

static bool starts_with(const char *p, size_t n, const char *lit)
{
    size_t l = strlen(lit);
    return n >= l && memcmp(p, lit, l) == 0;
}

static int parse_status(const char *p, size_t n)
{
    /* "HTTP/1.1 302 Found" */
    const char *sp = memchr(p, ' ', n);
    if (sp == NULL || (size_t)(sp - p) + 4 > n)
        return -1;
    int code = 0;
    for (int i = 1; i <= 3; i++) {
        if (sp[i] < '0' || sp[i] > '9')
            return -1;
        code = code * 10 + (sp[i] - '0');
    }
    return code;
}

/*
 * Room for NEED more bytes of upstream head. Heads come in a small cached
 * block; a larger one (rare) moves to the heap, never beyond
 * DT_UPSTREAM_HEAD_MAX (a 502 then).
 */
static bool rh_reserve(dt_req *r, size_t need)
{
    if (r->rh_len + need > DT_UPSTREAM_HEAD_MAX)
        return false;
    if (r->rh_buf == NULL) {
        r->rh_buf = dt_cache_get(&r->w->rh_cache);
        if (r->rh_buf == NULL)
            return false;
        r->rh_cap = DT_RH_BLOCK;
    }
    if (r->rh_len + need > r->rh_cap) {
        char *big = malloc(DT_UPSTREAM_HEAD_MAX);
        if (big == NULL)
            return false;
        memcpy(big, r->rh_buf, r->rh_len);
        dt_cache_put(&r->w->rh_cache, r->rh_buf);
        r->rh_buf = big;
        r->rh_cap = DT_UPSTREAM_HEAD_MAX;
    }
    return true;
}

static bool rh_append(dt_req *r, const char *p, size_t n, uint32_t *off)
{
    if (!rh_reserve(r, n + 1))
        return false;
    *off = r->rh_len;
    memcpy(r->rh_buf + r->rh_len, p, n);
    r->rh_buf[r->rh_len + n] = '\0';
    r->rh_len += (uint32_t)n + 1;
    return true;
}

static void trim(const char **p, size_t *n)
{
    while (*n > 0 && ((*p)[0] == ' ' || (*p)[0] == '\t')) {
        (*p)++;
        (*n)--;
    }
    while (*n > 0 && ((*p)[*n - 1] == ' ' || (*p)[*n - 1] == '\t' || (*p)[*n - 1] == '\r' ||
                      (*p)[*n - 1] == '\n'))
        (*n)--;
}

/* Room for one more header index entry: past the inline ones, the full array on the heap. */
static bool rh_room(dt_req *r)
{
    if (r->nrh < DT_RESP_HDRS_INLINE || r->rh != r->rh_inline)
        return true;
    dt_hdr *all = malloc(DT_RESP_HDRS_MAX * sizeof *all);
    if (all == NULL)
        return false;
    memcpy(all, r->rh_inline, sizeof r->rh_inline);
    r->rh = all;
    return true;
}

/* An obs-fold continuation: join it to the previous value with one space (RFC 9112 5.2). */
static bool fold_continuation(dt_req *r, const char *p, size_t n)
{
    if (r->nrh == 0)
        return false;
    dt_hdr *h = &r->rh[r->nrh - 1];
    if (h->value + h->value_len + 1 != r->rh_len || !rh_reserve(r, n + 1))
        return false;
    r->rh_buf[r->rh_len - 1] = ' ';
    memcpy(r->rh_buf + r->rh_len, p, n);
    r->rh_buf[r->rh_len + n] = '\0';
    h->value_len += 1 + (uint32_t)n;
    r->rh_len += (uint32_t)n;
    return true;
}

static bool header_line(dt_req *r, const char *p, size_t n)
{
    bool fold = n > 0 && (p[0] == ' ' || p[0] == '\t');
    trim(&p, &n);
    if (fold)
        return fold_continuation(r, p, n);
    const char *colon = memchr(p, ':', n);
    if (colon == NULL || colon == p || r->nrh == DT_RESP_HDRS_MAX || !rh_room(r))
        return false;
    const char *name = p, *value = colon + 1;
    size_t name_len = (size_t)(colon - p), value_len = n - name_len - 1;
    trim(&value, &value_len);
    if (!dt_is_token((dt_str){name, name_len}))
        return false;
    dt_hdr *h = &r->rh[r->nrh];
    if (!rh_append(r, name, name_len, &h->name) || !rh_append(r, value, value_len, &h->value))
        return false;
    h->name_len = (uint32_t)name_len;
    h->value_len = (uint32_t)value_len;
    r->nrh++;
    return true;
}

/*
 * Response framing a proxy must refuse (RFC 9112 6.3): Content-Length values
 * that are not a number or disagree, or a Content-Length next to a
 * Transfer-Encoding. curl would settle on one reading, the upstream may mean
 * another, and the next answer on that connection would be misread: the
 * transfer fails (502) and curl drops the connection.
 */
static bool framing_ok(const dt_req *r)
{
    const char *cl = NULL;
    size_t cl_len = 0;
    bool te = false;

    for (unsigned i = 0; i < r->nrh; i++) {
        const dt_hdr *h = &r->rh[i];
        const char *name = r->rh_buf + h->name, *value = r->rh_buf + h->value;
        uint64_t n;
        if (dt_str_ieq_cstr(name, h->name_len, "transfer-encoding")) {
            te = true;
        } else if (dt_str_ieq_cstr(name, h->name_len, "content-length")) {
            if (!dt_str_to_u64((dt_str){value, h->value_len}, INT64_MAX, &n))
                return false;
            if (cl != NULL && (cl_len != h->value_len || memcmp(cl, value, cl_len) != 0))
                return false;
            cl = value;
            cl_len = h->value_len;
        }
    }
    return !(te && cl != NULL);
}

static size_t header_cb(char *buf, size_t size, size_t nitems, void *userdata)
{
    dt_req *r = userdata;
    size_t n = size * nitems;

    if (r->head_done)
        return n; /* trailers after a chunked body: not relayed */
    timer_arm(r);
    if (starts_with(buf, n, "HTTP/")) {
        r->up_status = parse_status(buf, n);
        r->nrh = 0;
        r->rh_len = 0;
        if (r->up_status < 100) {
            r->transfer_err = DT_EPROTO;
            return 0;
        }
        return n;
    }
    if (n <= 2 && (buf[0] == '\r' || buf[0] == '\n')) {
        if (r->up_status >= 200) {
            r->head_done = true;
            if (!framing_ok(r)) {
                r->transfer_err = DT_EPROTO;
                return 0;
            }
            dt_front_upstream_head(r);
            if (r->transfer_err != DT_OK)
                return 0; /* fails the transfer; dt_front_upstream_done answers */
        }
        return n; /* a 1xx block ends: its headers are dropped, the next status follows */
    }
    if (!header_line(r, buf, n)) {
        r->transfer_err = r->rh_len + n + 1 > DT_UPSTREAM_HEAD_MAX || r->nrh == DT_RESP_HDRS_MAX
                              ? DT_EHDRTOOBIG
                              : DT_EPROTO;
        return 0;
    }
    return n;
}

static size_t write_cb(char *buf, size_t size, size_t nitems, void *userdata)
{
    dt_req *r = userdata;
    size_t n = size * nitems;

    if (r->client_gone)
        return 0;
    if (r->small) {
        if (r->small_len + n > r->small_cap) {
            r->transfer_err = DT_EPROTO; /* more than the announced Content-Length */
            return 0;
        }
        memcpy(r->small_buf + r->small_len, buf, n);
        r->small_len += n;
        timer_arm(r);
        return n;
    }
    if (dt_ring_space(&r->down) < n) {
        /* curl hands the same bytes again after the unpause: take all or nothing. */
        r->recv_paused = true;
        dt_list_remove(&r->timer);
        return CURL_WRITEFUNC_PAUSE;
    }
    dt_ring_write(&r->down, buf, n);
    timer_arm(r);
    dt_front_upstream_body(r);
    return n;
}

static size_t read_cb(char *buf, size_t size, size_t nitems, void *userdata)
{
    dt_req *r = userdata;
    size_t n = dt_ring_read(&r->up, buf, size * nitems);

    if (n > 0) {
        timer_arm(r);
        dt_front_upload_space(r);
        return n;
    }
    if (r->upload_done)
        return 0;
    if (r->client_gone)
        return CURL_READFUNC_ABORT;
    /* Waiting on the client, not the upstream: the upstream clock stops. */
    r->send_paused = true;
    dt_list_remove(&r->timer);
    return CURL_READFUNC_PAUSE;
}

/* ------------------------------------------------------------ starting a transfer */

/*
 * A new easy handle for every transfer, never a recycled one: curl 7.88
 * keeps a pointer to the previous response's last header across transfers
 * on one handle (curl issue #11101, fixed in 8.1.0), and an upstream whose
 * first header line starts with a space makes it "unfold" into that freed
 * memory, a double free that kills the process. A fresh handle costs an
 * allocation and these options; connections and DNS stay cached in the
 * multi, so keep-alive reuse is unaffected.
 */
static CURL *easy_new(dt_worker *w)
{
    CURL *e = curl_easy_init();
    if (e == NULL)
        return NULL;
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_TCP_NODELAY, 1L);
    curl_easy_setopt(e, CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_1_1);
    /* Bodies pass verbatim: no decoding, no Accept-Encoding of our own. */
    curl_easy_setopt(e, CURLOPT_HTTP_CONTENT_DECODING, 0L);
    curl_easy_setopt(e, CURLOPT_PATH_AS_IS, 1L);
    /* Never let the environment (http_proxy, ...) send upstream traffic elsewhere. */
    curl_easy_setopt(e, CURLOPT_PROXY, "");
    curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, header_cb);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, write_cb);
    curl_easy_setopt(e, CURLOPT_READFUNCTION, read_cb);
    curl_easy_setopt(e, CURLOPT_BUFFERSIZE, (long)DT_CURL_BUFFER);
    curl_easy_setopt(e, CURLOPT_CLOSESOCKETFUNCTION, close_socket);
    curl_easy_setopt(e, CURLOPT_CLOSESOCKETDATA, w);
    if (w->tls_sessions != NULL)
        curl_easy_setopt(e, CURLOPT_SHARE, w->tls_sessions);
    return e;
}

/*
 * The upstream header list. curl_slist_append() costs two allocations a
 * header; instead the list is laid out in one block (the nodes, then the
 * "Name: value" strings) built in two passes over the same headers: one to
 * measure, one to write. curl only reads the list (struct curl_slist is
 * public) while the transfer runs; the block is freed with free().
 */
typedef struct slist_builder {
    struct curl_slist *nodes; /* NULL while measuring */
    char *text;
    size_t n;     /* nodes used */
    size_t chars; /* text bytes used */
    bool has_accept, has_content_type;
} slist_builder;

static void slist_raw(slist_builder *b, const char *a, size_t alen, const char *sep, dt_str v)
{
    size_t slen = strlen(sep), need = alen + slen + v.n + 1;

    if (b->nodes != NULL) {
        char *t = b->text + b->chars;
        memcpy(t, a, alen);
        memcpy(t + alen, sep, slen);
        memcpy(t + alen + slen, v.p, v.n);
        t[need - 1] = '\0';
        b->nodes[b->n].data = t;
        b->nodes[b->n].next = NULL;
        if (b->n > 0)
            b->nodes[b->n - 1].next = &b->nodes[b->n];
    }
    b->n++;
    b->chars += need;
}

static void slist_emit(void *ctx, dt_str name, dt_str value)
{
    slist_builder *b = ctx;

    if (dt_str_ieq_cstr(name.p, name.n, "Accept"))
        b->has_accept = true;
    else if (dt_str_ieq_cstr(name.p, name.n, "Content-Type"))
        b->has_content_type = true;
    /* "Name;" makes curl send a header with an empty value ("Name:" would remove it). */
    slist_raw(b, name.p, name.n, value.n == 0 ? ";" : ": ", value);
}

/* One pass over the headers, measuring (b->nodes == NULL) or writing. */
static void slist_fill(dt_req *r, const dt_req_header *hdrs, size_t n, slist_builder *b)
{
    char scratch[32], xff[2048];
    dt_str method = {r->method, r->method_len};
    dt_fwd_ctx c = {
        .client_ip = {r->conn->client_ip, strlen(r->conn->client_ip)},
        .proto = {r->scheme, strlen(r->scheme)},
        .via_name = {r->cfg->via_name, strlen(r->cfg->via_name)},
        .replace_host = r->replace_host,
        .proxy_auth_consumed = r->cfg->mode == DT_MODE_FORWARD,
        .max_forwards =
            dt_str_eq(method, DT_STR_LIT("TRACE")) || dt_str_eq(method, DT_STR_LIT("OPTIONS")),
    };

    for (size_t i = 0; i < n; i++)
        if (dt_str_ieq_cstr(hdrs[i].name.p, hdrs[i].name.n, "Host")) {
            c.host = hdrs[i].value;
            break;
        }
    if (r->replace_host.p != NULL)
        c.host = r->replace_host; /* X-Forwarded-Host: the host the client asked for */
    _Static_assert(sizeof(dt_req_header) == sizeof(dt_header_field), "same layout");
    dt_fwd_request_headers((const dt_header_field *)hdrs, n, &c, scratch, xff, sizeof xff,
                           slist_emit, b);
    /* Suppress what curl would add on its own: "Name:" removes a header. */
    if (!b->has_accept)
        slist_raw(b, "Accept:", 7, "", DT_STR_LIT(""));
    if (r->up_buffered && !b->has_content_type)
        slist_raw(b, "Content-Type:", 13, "", DT_STR_LIT("")); /* POSTFIELDS would add one */
    slist_raw(b, "Expect:", 7, "", DT_STR_LIT(""));
}

static struct curl_slist *build_headers(dt_req *r, const dt_req_header *hdrs, size_t n)
{
    slist_builder measure = {0}, b = {0};
    char *block;

    slist_fill(r, hdrs, n, &measure);
    block = malloc(measure.n * sizeof(struct curl_slist) + measure.chars);
    if (block == NULL)
        return NULL;
    b.nodes = (struct curl_slist *)block;
    b.text = block + measure.n * sizeof(struct curl_slist);
    slist_fill(r, hdrs, n, &b);
    return b.nodes;
}

/*
 * For a request's own destination (forward and transparent modes), look at
 * each resolved address before connecting: detour itself is a loop (508), and
 * in forward mode an address outside allow_destinations is refused (403)
 * when no name rule allowed the host.
 */
static curl_socket_t open_socket(void *clientp, curlsocktype purpose, struct curl_sockaddr *a)
{
    dt_req *r = clientp;
    const struct sockaddr *sa = &a->addr;

    (void)purpose;
    if (dt_access_is_self(r->cfg, sa, r->w->local_addrs, r->w->nlocal)) {
        r->transfer_err = DT_ELOOP;
        return CURL_SOCKET_BAD;
    }
    if (r->check_addr && !dt_access_dest_addr(&r->cfg->forward, sa)) {
        r->transfer_err = DT_EFORBIDDEN;
        return CURL_SOCKET_BAD;
    }
    return socket(a->family, a->socktype | SOCK_CLOEXEC, a->protocol);
}

static void set_request_options(dt_req *r, CURL *e)
{
    const dt_upstream *up = r->upstream;
    bool upload = !r->up_buffered && !r->is_head && (r->content_length >= 0 || r->chunked);
    bool plain_get = !upload && !r->up_buffered &&
                     dt_str_eq((dt_str){r->method, r->method_len}, DT_STR_LIT("GET"));

    curl_easy_setopt(e, CURLOPT_URL, r->url != NULL ? r->url : up->url);
    curl_easy_setopt(e, CURLOPT_REQUEST_TARGET, r->up_target);
    /*
     * The handle is new, so only what differs from curl's defaults is set.
     * The order matters: POSTFIELDS sets the method to POST, UPLOAD to PUT,
     * NOBODY to HEAD; CUSTOMREQUEST then only changes the word sent. A small
     * body already read whole goes out with the head in one write
     * (POSTFIELDS); any other body streams through the read callback.
     */
    if (r->up_buffered) {
        curl_easy_setopt(e, CURLOPT_POSTFIELDS, r->up_buf != NULL ? r->up_buf : "");
        curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)r->body_received);
    } else if (upload) {
        curl_easy_setopt(e, CURLOPT_UPLOAD, 1L);
        curl_easy_setopt(e, CURLOPT_INFILESIZE_LARGE,
                         (curl_off_t)(r->chunked ? -1 : r->content_length));
    } else if (r->is_head) {
        curl_easy_setopt(e, CURLOPT_NOBODY, 1L);
    }
    if (!r->is_head && !plain_get)
        curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, r->method);
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, (struct curl_slist *)r->hdrs);
    curl_easy_setopt(e, CURLOPT_PRIVATE, r);
    curl_easy_setopt(e, CURLOPT_HEADERDATA, r);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, r);
    curl_easy_setopt(e, CURLOPT_READDATA, r);
    curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, (long)r->cfg->timeouts.connect_ms);
    if (r->url != NULL) {
        /* forward and transparent modes: each address curl connects to is
         * checked for a loop and against forward.allow_destinations */
        curl_easy_setopt(e, CURLOPT_OPENSOCKETFUNCTION, open_socket);
        curl_easy_setopt(e, CURLOPT_OPENSOCKETDATA, r);
    }
    /* curl verifies peers by default, against the system's CA bundle. */
    if (up != NULL && up->https && !up->tls_verify) {
        curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, 0L);
        curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, 0L);
    }
    if (up != NULL && up->https && up->ca_file != NULL)
        curl_easy_setopt(e, CURLOPT_CAINFO, up->ca_file);
}

/* Take an easy handle and add the transfer to the multi. DT_OK or DT_ENOMEM. */
static int transfer_begin(dt_req *r)
{
    dt_worker *w = r->w;
    CURL *e = easy_new(w);

    if (e == NULL)
        return DT_ENOMEM;
    r->easy = e;
    set_request_options(r, e);
    if (curl_multi_add_handle(w->multi, e) != CURLM_OK) {
        curl_easy_cleanup(e);
        r->easy = NULL;
        return DT_ENOMEM;
    }
    w->active_transfers++;
    r->transfer_active = true;
    timer_arm(r);
    return DT_OK;
}

int dt_upstream_start(dt_req *r, const dt_req_header *hdrs, size_t nhdrs)
{
    if (r->is_head && (r->content_length >= 0 || r->chunked)) {
        /* curl sends a HEAD only without content, and content in a HEAD has
         * no defined meaning (RFC 9110 9.3.2): the method is kept and the
         * body is read and dropped (bounded), never relayed as a POST or
         * PUT. */
        r->discard = true;
        r->hdrs = build_headers(r, hdrs, nhdrs);
        return r->hdrs == NULL ? DT_ENOMEM : dt_upstream_begin(r);
    }
    /* A small body of known size is read whole first (as nginx buffers
     * request bodies), then sent with the head; the upstream connection is
     * not held while a slow client uploads. */
    r->up_buffered = !r->chunked && r->content_length >= 0 && r->content_length <= DT_SMALL_BODY;
    if (r->up_buffered && r->content_length > 0 &&
        (r->up_buf = malloc((size_t)r->content_length)) == NULL)
        return DT_ENOMEM;
    if (!r->up_buffered && (r->content_length > 0 || r->chunked) &&
        dt_ring_init(&r->up, DT_RING_SIZE) != DT_OK)
        return DT_ENOMEM;
    r->hdrs = build_headers(r, hdrs, nhdrs);
    if (r->hdrs == NULL)
        return DT_ENOMEM;
    return r->up_buffered ? DT_OK : dt_upstream_begin(r);
}

int dt_upstream_begin(dt_req *r)
{
    dt_worker *w = r->w;

    if (r->begun)
        return DT_OK;
    r->begun = true;
    r->resp_length = -1;
    if (w->active_transfers >= DT_MAX_ACTIVE_TRANSFERS) {
        /* Queued requests hold no easy handle (and none of its buffers). */
        dt_list_append(&w->waitq, &r->link);
        return DT_OK;
    }
    return transfer_begin(r);
}

/* ------------------------------------------------------------ ending a transfer */

static void transfer_release(dt_req *r)
{
    dt_worker *w = r->w;

    dt_list_remove(&r->timer);
    dt_list_remove(&r->link);
    if (r->easy != NULL) {
        bool removed = true;
        if (r->transfer_active) {
            /* Never from inside one of the transfer's own callbacks: curl refuses. */
            removed = curl_multi_remove_handle(w->multi, r->easy) == CURLM_OK;
            w->active_transfers--;
        }
        /* A handle curl still holds cannot be freed safely: it is dropped. */
        if (removed)
            curl_easy_cleanup(r->easy);
        else
            dt_log_error("curl refused to release a transfer; its handle is dropped");
        r->easy = NULL;
    }
    r->transfer_active = false;
    free(r->hdrs);
    r->hdrs = NULL;
}

void dt_upstream_abort(dt_req *r)
{
    /* Nothing to stop: never started, already finished (no handle), or not
     * queued. A queued request has no handle but sits in the wait queue. */
    if (r->easy == NULL && !dt_list_linked(&r->link)) {
        /* A buffered upload that never completed built its header list
         * but no transfer: the list is all there is to release. */
        free(r->hdrs);
        r->hdrs = NULL;
        return;
    }
    transfer_release(r);
    if (!r->transfer_done) {
        r->transfer_done = true;
        if (r->transfer_err == DT_OK)
            r->transfer_err = DT_ECLIENT;
    }
}

static int classify(dt_req *r, CURLcode rc)
{
    long oserr = 0;

    if (r->transfer_err != DT_OK)
        return r->transfer_err; /* we aborted it ourselves, for a reason we know */
    switch (rc) {
    case CURLE_OK:
        return DT_OK;
    case CURLE_COULDNT_CONNECT:
        curl_easy_getinfo(r->easy, CURLINFO_OS_ERRNO, &oserr);
        return oserr == ETIMEDOUT ? DT_ECONNTIMEDOUT : DT_EREFUSED;
    case CURLE_OPERATION_TIMEDOUT: {
        double connect = 0;
        curl_easy_getinfo(r->easy, CURLINFO_CONNECT_TIME, &connect);
        return connect > 0 ? DT_ETIMEDOUT : DT_ECONNTIMEDOUT;
    }
    case CURLE_COULDNT_RESOLVE_HOST:
        return DT_ERESOLVE;
    case CURLE_GOT_NOTHING:
        return DT_EEMPTY;
    case CURLE_RECV_ERROR:
    case CURLE_SEND_ERROR:
    case CURLE_PARTIAL_FILE:
        return DT_ERESET;
    case CURLE_SSL_CONNECT_ERROR:
    case CURLE_PEER_FAILED_VERIFICATION:
    case CURLE_SSL_CERTPROBLEM:
    case CURLE_SSL_CIPHER:
    case CURLE_SSL_CACERT_BADFILE:
        return DT_ETLS;
    default:
        return DT_EPROTO;
    }
}

static void transfer_finished(dt_worker *w, CURL *e, CURLcode rc)
{
    dt_req *r = NULL;

    curl_easy_getinfo(e, CURLINFO_PRIVATE, (char **)&r);
    if (r == NULL)
        return;
    r->transfer_err = classify(r, rc);
    if (r->transfer_err == DT_OK && !r->head_done)
        r->transfer_err = DT_EEMPTY;
    if (r->transfer_err != DT_OK)
        dt_log_debug("upstream transfer for %s failed: %s (curl: %s)", r->target,
                     dt_strerror(r->transfer_err), curl_easy_strerror(rc));
    transfer_release(r);
    r->transfer_done = true;
    dt_front_upstream_done(r);
}

static void start_waiting(dt_worker *w)
{
    while (w->active_transfers < DT_MAX_ACTIVE_TRANSFERS && !dt_list_empty(&w->waitq)) {
        dt_req *r = dt_container_of(w->waitq.next, dt_req, link);
        dt_list_remove(&r->link);
        if (transfer_begin(r) != DT_OK) {
            r->transfer_done = true;
            r->transfer_err = DT_ENOMEM;
            dt_front_upstream_done(r);
        }
    }
}

/* ------------------------------------------------------------ loop services */

void dt_upstream_wake(dt_req *r)
{
    if (!r->transfer_active || (!r->recv_paused && !r->send_paused))
        return;
    if (!dt_list_linked(&r->link))
        dt_list_append(&r->w->unpauseq, &r->link);
}

static void run_unpauses(dt_worker *w)
{
    /* Take the queue first: an unpause may run callbacks that queue again. */
    dt_list q;
    dt_list_init(&q);
    if (!dt_list_empty(&w->unpauseq)) {
        q.next = w->unpauseq.next;
        q.prev = w->unpauseq.prev;
        q.next->prev = &q;
        q.prev->next = &q;
        dt_list_init(&w->unpauseq);
    }
    while (!dt_list_empty(&q)) {
        dt_req *r = dt_container_of(q.next, dt_req, link);
        dt_list_remove(&r->link);
        if (!r->transfer_active)
            continue;
        bool recv = r->recv_paused && dt_ring_space(&r->down) >= DT_CURL_BUFFER;
        bool send = r->send_paused && (dt_ring_used(&r->up) > 0 || r->upload_done);
        if (!recv && !send)
            continue;
        if (recv)
            r->recv_paused = false;
        if (send)
            r->send_paused = false;
        timer_arm(r);
        int mask = (r->recv_paused ? CURLPAUSE_RECV : 0) | (r->send_paused ? CURLPAUSE_SEND : 0);
        curl_easy_pause(r->easy, mask);
    }
}

static void run_timeouts(dt_worker *w, int64_t now)
{
    while (!dt_list_empty(&w->up_timers)) {
        dt_req *r = dt_container_of(w->up_timers.next, dt_req, timer);
        if (r->deadline > now)
            break;
        dt_list_remove(&r->timer);
        r->transfer_err = DT_ETIMEDOUT;
        dt_log_debug("upstream timeout for %s after %d ms", r->target,
                     r->cfg->timeouts.upstream_ms);
        transfer_release(r);
        r->transfer_done = true;
        dt_front_upstream_done(r);
    }
}

void dt_upstream_process(dt_worker *w, int64_t now)
{
    int running, pending;
    CURLMsg *msg;

    if (w->curl_deadline >= 0 && w->curl_deadline <= now) {
        w->curl_deadline = -1;
        curl_multi_socket_action(w->multi, CURL_SOCKET_TIMEOUT, 0, &running);
    }
    run_unpauses(w);
    while ((msg = curl_multi_info_read(w->multi, &pending)) != NULL)
        if (msg->msg == CURLMSG_DONE)
            transfer_finished(w, msg->easy_handle, msg->data.result);
    run_timeouts(w, now);
    start_waiting(w);
}

int64_t dt_upstream_timeout(dt_worker *w, int64_t now)
{
    int64_t t = -1;

    if (!dt_list_empty(&w->unpauseq))
        return 0;
    if (w->curl_deadline >= 0)
        t = w->curl_deadline > now ? w->curl_deadline - now : 0;
    if (!dt_list_empty(&w->up_timers)) {
        dt_req *r = dt_container_of(w->up_timers.next, dt_req, timer);
        int64_t d = r->deadline > now ? r->deadline - now : 0;
        if (t < 0 || d < t)
            t = d;
    }
    return t;
}
