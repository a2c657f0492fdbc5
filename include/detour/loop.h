/*
 * loop.h - the per-thread state that the event loop's modules share:
 * worker.c (the loop, listeners, timers), front.c (libmicrohttpd, the client
 * side), upstream.c (libcurl, the upstream side) and tunnel.c (CONNECT).
 *
 * Ownership, in one place:
 * - dt_worker is created and freed by the main thread, used only by its own
 *   thread in between.
 * - dt_conn is one client connection known to libmicrohttpd: allocated in the
 *   connection-started notification, freed in the connection-closed one.
 * - dt_req is one request: allocated when libmicrohttpd has read the request
 *   line (the URI log callback), freed when its last reference goes. It has
 *   up to two references: libmicrohttpd's (dropped in the request-completed
 *   notification) and the streaming response's (dropped when libmicrohttpd
 *   destroys the response). So neither callback can free it under the other.
 *   The request also owns its curl easy handle while a transfer runs; the
 *   handle goes back to the worker's pool when the transfer ends.
 * Nothing here is freed inside a callback that is still using it.
 */
#ifndef DETOUR_LOOP_H
#define DETOUR_LOOP_H

#include <netinet/in.h>
#include <pthread.h>
#include <sys/socket.h>

#include "detour/config.h"
#include "detour/headers.h"
#include "detour/list.h"
#include "detour/metrics.h"
#include "detour/ring.h"
#include "detour/worker.h"

struct MHD_Daemon;
struct MHD_Connection;
struct MHD_Response;

/* Kinds of things registered in a worker's epoll set; first member of each. */
typedef enum dt_ev_kind {
    DT_EV_WAKE = 1,  /* the worker's eventfd */
    DT_EV_LISTEN,    /* a listening socket */
    DT_EV_MHD,       /* a libmicrohttpd daemon's epoll fd */
    DT_EV_CURL,      /* a socket curl asked us to watch */
    DT_EV_CLIENT,    /* a suspended request's client socket (hang-up watch) */
    DT_EV_PEEK,      /* a new connection whose first bytes we wait for */
    DT_EV_TUNNEL,    /* the client side of a CONNECT tunnel */
    DT_EV_TUNNEL_UP, /* the upstream side of a CONNECT tunnel */
} dt_ev_kind;

typedef struct dt_ev {
    dt_ev_kind kind;
} dt_ev;

/* Body buffers: a relayed body only ever passes through these. */
#define DT_RING_SIZE (128 * 1024)
/* curl's receive buffer: one write callback brings at most this much. */
#define DT_CURL_BUFFER (16 * 1024)
/* A response body up to this size (known Content-Length) is collected whole
 * and sent with its head in one write; larger ones are streamed. */
#define DT_SMALL_BODY (64 * 1024)
/* The most request body detour reads and throws away to keep a connection
 * usable after answering without the body (redirects, early errors). */
#define DT_DISCARD_MAX (4 * 1024 * 1024)
/* The largest upstream response head accepted (502 beyond). */
#define DT_UPSTREAM_HEAD_MAX (12 * 1024)
/* Upstream heads start in a block of this size (cached per worker), and
 * move to the heap in the rare case they outgrow it. */
#define DT_RH_BLOCK 4096
/* Concurrent curl transfers per worker; more wait in a queue (curl scans its
 * connection cache linearly for each new transfer). */
#define DT_MAX_ACTIVE_TRANSFERS 64

typedef struct dt_listener {
    dt_ev ev;
    int fd;
    const dt_listen *conf; /* in the worker's snapshot at start-up */
    int daemon;            /* index into dt_worker.daemons */
    bool tls;
    bool paused; /* removed from epoll while at the connection limit */
    struct dt_worker *w;
} dt_listener;

typedef struct dt_daemon {
    dt_ev ev;
    struct MHD_Daemon *mhd;
    int epfd;
    bool tls;
    struct dt_worker *w;
} dt_daemon;

/* What the accept path learnt about a connection before libmicrohttpd sees it. */
typedef struct dt_conn_init {
    const dt_listener *listener;
    bool has_orig_dst;
    struct sockaddr_storage orig_dst; /* transparent mode: where the client meant to go */
    int64_t accepted_ms;
} dt_conn_init;

typedef struct dt_conn {
    struct dt_worker *w;
    int fd;
    bool tls;
    const dt_listener *listener;
    char client_ip[64]; /* textual, without port */
    struct sockaddr_storage client_sa;
    bool has_orig_dst;
    struct sockaddr_storage orig_dst;
    int64_t head_since; /* monotonic ms a request head began, 0 = none pending */
    int64_t idle_since; /* monotonic ms the previous request ended */
    dt_list head_link;  /* in worker.head_wait while a request head is awaited */
    unsigned nrequests;
    struct dt_req *req; /* the request in progress, if any */
} dt_conn;

typedef enum dt_req_state {
    DT_REQ_NEW = 0, /* request line read, head not yet complete */
    DT_REQ_LOCAL,   /* detour answers itself; any body is discarded */
    DT_REQ_RELAY,   /* relaying to an upstream */
    DT_REQ_QUEUED,  /* the response is queued with libmicrohttpd */
} dt_req_state;

/* Why a request's connection is suspended. */
typedef enum dt_wait {
    DT_WAIT_NONE = 0,
    DT_WAIT_UPLOAD,   /* body ring full: wait for curl to drain it */
    DT_WAIT_RESPONSE, /* body complete: wait for the upstream's response */
    DT_WAIT_BODY,     /* streaming: wait for more upstream body */
} dt_wait;

/* An upstream response header kept until the client response is built. */
typedef struct dt_hdr {
    uint32_t name, value; /* offsets into dt_req.rh_buf */
    uint32_t name_len, value_len;
} dt_hdr;

#define DT_RESP_HDRS_MAX 128
/* Upstream response headers kept in the request itself; more move to the heap. */
#define DT_RESP_HDRS_INLINE 24

/*
 * A worker's share of one config snapshot. Requests and tunnels count
 * themselves here, on their worker's thread, instead of in the snapshot's
 * atomic count: that count is shared by every worker, and touching it twice
 * per request would bounce its cache line between all cores. A lease holds
 * one reference to its snapshot until it is retired (a reload, or the
 * worker's end) and its last user has given it back.
 */
typedef struct dt_cfg_lease {
    dt_config *cfg;
    unsigned users;
    bool retired;
} dt_cfg_lease;

typedef struct dt_req {
    struct dt_worker *w;
    dt_conn *conn;
    struct MHD_Connection *mhd;
    dt_cfg_lease *lease; /* taken for the request's life */
    dt_config *cfg;       /* lease->cfg */
    int refs;
    dt_req_state state;
    dt_wait wait;
    dt_ev client_ev; /* DT_EV_CLIENT while suspended */
    bool watching;   /* client_ev registered in the worker's epoll */

    /* The request as received. */
    char *target;    /* raw request target, NUL-terminated (inline or heap): for logs */
    char *up_target; /* origin-form target sent upstream: r->target, or a heap copy */
    size_t target_len;
    char target_inline[192];
    const char *uri_raw; /* libmicrohttpd's URI (uri_cb), valid until the head is handled */
    const char *method; /* libmicrohttpd's copy, valid for the request's life */
    size_t method_len;
    const char *version;
    bool is_head;
    bool has_body; /* Content-Length > 0 or chunked */
    bool chunked;
    int64_t content_length; /* -1 when not given */
    uint64_t body_received;
    uint64_t body_discarded;
    bool discard; /* read and drop the rest of the body */
    bool upload_done;
    int64_t start_us;
    int64_t start_wall;
    char host[256]; /* Host (or target authority) without port, lower case */
    char scheme[8]; /* "http" or "https" as the client used */

    /* The decision. */
    const dt_route *route;
    dt_action action;
    const dt_upstream *upstream;
    char *location; /* heap copy of a redirect or rewritten Location, for the log */
    char dry_run[256]; /* dry-run routes that fired, "a,b", for the log */

    /* The answer. */
    int status;                /* status sent to the client */
    struct MHD_Response *resp; /* built, not yet queued */
    struct dt_rcache_entry *shared; /* resp is this cached answer's, borrowed */
    bool close_after;          /* ask libmicrohttpd to close after the response */
    uint64_t bytes_sent;

    /* Relaying. */
    void *easy;      /* CURL * while a transfer runs */
    void *hdrs;      /* struct curl_slist * */
    char *url;       /* heap URL for forward/transparent destinations */
    bool check_addr; /* forward mode: the resolved address must pass allow_destinations */
    char dest[300];  /* forward/transparent: the request's own destination authority */
    bool dest_https;
    dt_str replace_host; /* forward mode: the Host to send (the target authority) */
    bool up_buffered;    /* a small body is read whole, then sent with the head */
    char *up_buf;        /* that body (content_length bytes) */
    dt_ring up;          /* client body -> upstream (streamed bodies) */
    dt_ring down;        /* upstream body -> client (streamed responses) */
    bool begun; /* the transfer was started or queued */
    bool transfer_active;
    bool transfer_done;
    int transfer_err; /* dt_err class when the transfer failed */
    bool head_done;   /* the upstream's final response head is complete */
    int up_status;
    bool rewritten; /* 302->307 or 301->308 applied */
    bool recv_paused, send_paused;
    bool client_gone;
    bool small; /* collect the whole body, then answer from memory */
    char *small_buf;
    size_t small_len, small_cap;
    int64_t resp_length; /* upstream Content-Length, -1 unknown */
    char *rh_buf;        /* upstream response head bytes (names and values) */
    uint32_t rh_len, rh_cap;
    unsigned nrh;
    dt_list link;       /* in one of the worker's queues (wait, unpause) */
    dt_list susp_link;  /* in worker.suspended while its connection is suspended */
    dt_list small_link; /* in worker.small_pending while a small body is collected */
    int64_t suspended_at;
    dt_list timer;    /* in worker.up_timers while waiting on the upstream */
    int64_t deadline; /* for timer */
    /* The response's header index: rh_inline, or DT_RESP_HDRS_MAX entries
     * on the heap once a response has more (the request's memory stays
     * small for the common answer). Only rh[0..nrh) is ever read, so the
     * inline array is last and not cleared for a new request. */
    dt_hdr *rh;
    dt_hdr rh_inline[DT_RESP_HDRS_INLINE];
} dt_req;

typedef struct dt_curl_sock {
    dt_ev ev;
    int fd;
    int events;                /* EPOLLIN/EPOLLOUT currently registered in epoll */
    bool idle;                 /* curl stopped watching it; still registered until it wakes us */
    struct dt_curl_sock *next; /* hash chain in dt_worker.curl_socks */
} dt_curl_sock;

#define DT_CURL_SOCK_BUCKETS 256

/*
 * A per-worker cache of same-sized blocks: request objects and upstream head
 * buffers are reused instead of going through malloc for every request. Only
 * the worker's thread touches it.
 */
#define DT_CACHE_MAX 256
typedef struct dt_cache {
    void *items[DT_CACHE_MAX];
    size_t n;
    size_t size;
} dt_cache;

/* A block of c->size bytes (contents undefined), or NULL. */
void *dt_cache_get(dt_cache *c);
/* Give a block back (freed when the cache is full). NULL is allowed. */
void dt_cache_put(dt_cache *c, void *p);
void dt_cache_clear(dt_cache *c);

typedef struct dt_worker {
    struct dt_server *srv;
    int index;
    pthread_t thread;
    bool started;
    int epfd;
    dt_ev wake_ev;
    int wake_fd;             /* eventfd */
    _Atomic unsigned posted; /* DT_POST_* bits set by other threads */
    dt_config *cfg;          /* the snapshot new requests use (one reference) */
    dt_cfg_lease *lease;     /* cfg's lease: what new requests and tunnels take */
    dt_config *boot_cfg;     /* the snapshot listeners and daemons were made from */
    dt_metrics_worker *metrics;

    dt_listener *listeners;
    size_t nlisteners;
    dt_daemon *daemons;
    size_t ndaemons;
    bool mhd_pending; /* run libmicrohttpd again before blocking (resumes) */
    uint64_t heads;   /* request heads libmicrohttpd has parsed: how busy a turn was */

    void *multi;                                    /* CURLM * */
    void *tls_sessions; /* CURLSH *: TLS sessions shared by the worker's transfers */
    dt_curl_sock *curl_socks[DT_CURL_SOCK_BUCKETS]; /* every curl socket we know, by fd */
    dt_curl_sock *dead_socks; /* closed this iteration; freed once no event can name them */
    int64_t curl_deadline;    /* monotonic ms, -1 none */
    unsigned active_transfers;
    dt_list waitq;         /* requests waiting for a transfer slot */
    dt_list unpauseq;      /* requests whose curl transfer must be unpaused */
    dt_list up_timers;     /* requests waiting on the upstream, by deadline */
    dt_list head_wait;     /* connections awaiting a request head */
    dt_list suspended;     /* suspended requests, oldest first (hang-up watch) */
    dt_list small_pending; /* small bodies started this loop turn */
    int64_t mhd_due;       /* monotonic ms when libmicrohttpd's own timeout falls due */
    int64_t now_us;        /* the loop's clock: monotonic us, read once per pass (dt_worker_tick) */
    int64_t next_sweep;
    int64_t last_sweep;

    unsigned nconns; /* client connections of this worker */
    bool draining;
    int64_t drain_deadline;
    bool stop;

    /* Stashed for the connection-started notification of MHD_add_connection. */
    const dt_conn_init *adding;

    pthread_mutex_t resolve_lock; /* guards resolved: filled by resolver threads */
    dt_list resolved;             /* finished lookups waiting for their callback */
    int resolving;                /* lookups started and not yet delivered */
    dt_list tunnels;              /* open CONNECT tunnels */
    dt_list dead_tunnels;         /* closed this iteration; freed at its end */
    dt_list peeks;                /* new forward-mode connections, waiting for their first bytes */
    char *tunnel_buf;             /* tunnels' pump scratch (DT_PUMP_CHUNK), made on first use */
    struct sockaddr_storage *local_addrs; /* this host's addresses (loop checks) */
    size_t nlocal;

    dt_cache req_cache; /* dt_req objects */
    dt_cache rh_cache;  /* DT_RH_BLOCK buffers for upstream heads */
    struct dt_rcache *rcache; /* redirect answers made recently; NULL = none */
    void *scan;         /* front.c's header scan scratch, one per worker */

    char *logbuf; /* access log lines waiting for one write */
    size_t loglen, logcap;
} dt_worker;

#define DT_POST_RELOAD 1u
#define DT_POST_DRAIN 2u
#define DT_POST_LOGROTATE 4u
#define DT_POST_RESOLVED 8u

/* Wake worker W from another thread with the DT_POST_* BIT. */
void dt_worker_post(dt_worker *w, unsigned bit);

/*
 * The loop's clock, as nginx keeps its cached time: one clock read per loop
 * pass serves every request handled in it (start, end, idle and head
 * times), where reading the clock for each would cost several reads per
 * request. Durations are exact to one pass. dt_worker_tick reads the clock.
 */
static inline int64_t dt_worker_tick(dt_worker *w)
{
    w->now_us = dt_now_us();
    return w->now_us / 1000;
}
static inline int64_t dt_worker_now_ms(const dt_worker *w)
{
    return w->now_us / 1000;
}

/* worker.c services for the other loop modules. */
int dt_worker_watch(dt_worker *w, int fd, uint32_t events, dt_ev *ev);   /* EPOLL_CTL_ADD */
int dt_worker_rewatch(dt_worker *w, int fd, uint32_t events, dt_ev *ev); /* EPOLL_CTL_MOD */
void dt_worker_unwatch(dt_worker *w, int fd);                            /* EPOLL_CTL_DEL */
void dt_worker_conn_closed(dt_worker *w); /* a client connection ended */
void dt_worker_log_access(dt_worker *w, const char *line, size_t len);

/* Server-wide connection accounting (limits.max_connections), any worker. */
bool dt_server_conn_acquire(struct dt_server *srv);
void dt_server_conn_release(struct dt_server *srv);
bool dt_server_conn_available(struct dt_server *srv);

/* The lease of W's current snapshot for a new request or tunnel (W's thread). */
dt_cfg_lease *dt_worker_lease(struct dt_worker *w);

/* Give back a lease from dt_worker_lease; a retired one goes with its last user. */
void dt_lease_drop(dt_cfg_lease *l);

#endif
