/*
 * config.h - the configuration snapshot.
 *
 * dt_config_load() turns a libconfig file into one immutable dt_config:
 * every default merged, every route compiled (templates, regexes, maps, the
 * match index), every cross reference resolved. Nothing in a snapshot changes
 * after load except the few runtime cells that are atomics by design (flag
 * file presence, the round-robin cursor of redirect targets).
 *
 * A snapshot is reference counted. The server holds one reference to the
 * current snapshot; every request takes its own for its whole life, so a
 * reload can swap snapshots while requests in flight finish under theirs.
 * The last dt_config_unref() frees everything the snapshot owns.
 */
#ifndef DETOUR_CONFIG_H
#define DETOUR_CONFIG_H

#include <netinet/in.h>
#include <regex.h>
#include <stdatomic.h>
#include <sys/socket.h>

#include "detour/common.h"

struct dt_template;
struct dt_map;
struct dt_flag;
struct dt_ruleset;
struct dt_route_stats;
struct dt_upstream_stats;

typedef enum dt_mode { DT_MODE_REVERSE = 0, DT_MODE_FORWARD, DT_MODE_TRANSPARENT } dt_mode;

typedef enum dt_log_format { DT_LOG_COMBINED = 0, DT_LOG_JSON } dt_log_format;

/* One address to listen on. */
typedef struct dt_listen {
    char *text;                   /* as written, e.g. "[::]:8080" */
    struct sockaddr_storage addr; /* numeric address and port */
    socklen_t addrlen;
    char *tls_cert; /* PEM file paths; both NULL for plain HTTP */
    char *tls_key;
    int line; /* 0 for the built-in default "127.0.0.1:8080" */
} dt_listen;

/* A named upstream origin. */
typedef struct dt_upstream {
    char *name;
    char *url;       /* normalised: scheme://authority, no trailing slash */
    bool https;      /* scheme is https */
    char *host;      /* host as written, lower case, IPv6 without brackets */
    unsigned port;   /* explicit or the scheme's default */
    char *authority; /* host[:port] as a client would write it in Location */
    bool tls_verify; /* verify the upstream certificate (https only) */
    char *ca_file;   /* CA bundle for verification, NULL = system default */
    int line;
    size_t index;                    /* position in dt_config.upstreams */
    struct dt_upstream_stats *stats; /* metrics cell, shared across reloads by name */
} dt_upstream;

/* One `host` pattern: "example.com" or "*.example.com" (stored lower case). */
typedef struct dt_host_pattern {
    char *name; /* for a wildcard, the suffix including the dot: ".example.com" */
    size_t len;
    bool wildcard;
} dt_host_pattern;

typedef struct dt_match {
    dt_host_pattern *hosts; /* any of them; nhosts == 0 means any host */
    size_t nhosts;
    char *prefix; /* NULL when not given */
    size_t prefix_len;
    char *path; /* NULL when not given */
    size_t path_len;
    char *regex_src;     /* NULL when not given */
    regex_t regex;       /* compiled with REG_EXTENDED; valid only when regex_src */
    size_t regex_groups; /* re_nsub */
    char **methods;      /* upper case tokens; nmethods == 0 means any method */
    size_t nmethods;
} dt_match;

typedef enum dt_sticky_kind {
    DT_STICKY_CLIENT_IP = 0,
    DT_STICKY_HEADER,
    DT_STICKY_COOKIE
} dt_sticky_kind;

typedef struct dt_ramp_step {
    int64_t at; /* unix seconds */
    int percent;
} dt_ramp_step;

typedef struct dt_redirect {
    struct dt_template *to; /* compiled Location template */
    int status;             /* 301, 302, 303, 307 (default) or 308 */
    int percent;            /* 0..100; 100 when neither percent nor ramp is given */
    dt_ramp_step *ramp;     /* sorted by `at`; nramp == 0 when none */
    size_t nramp;
    dt_sticky_kind sticky;
    char *sticky_name; /* header or cookie name for DT_STICKY_HEADER/COOKIE */
    bool has_from, has_until;
    int64_t from, until;       /* window ends, unix seconds */
    struct dt_flag *when_file; /* NULL = always */
    char **targets;            /* round-robin origins for $target; ntargets == 0: none */
    size_t ntargets;
    atomic_uint *rr; /* round-robin cursor (runtime cell owned by the snapshot) */
    int retry_after; /* seconds, -1 = none */
    bool dry_run;
    struct dt_map *map; /* NULL = none */
} dt_redirect;

typedef struct dt_relay {
    const dt_upstream *upstream; /* NULL: the request's own destination (forward/transparent) */
    bool rewrite_302;            /* merged: route value, else the global one */
    bool rewrite_301;
    bool rewrite_location;
} dt_relay;

typedef enum dt_route_kind { DT_ROUTE_RELAY = 0, DT_ROUTE_REDIRECT } dt_route_kind;

typedef struct dt_route {
    char *name; /* unique; "route-N" (1-based) when the file gives none */
    int line;
    size_t index; /* position in dt_config.routes (file order) */
    dt_match match;
    dt_route_kind kind;
    dt_redirect redirect;         /* valid when kind == DT_ROUTE_REDIRECT */
    dt_relay relay;               /* valid when kind == DT_ROUTE_RELAY */
    struct dt_route_stats *stats; /* metrics cell, shared across reloads by name */
} dt_route;

/* An address range: family AF_INET or AF_INET6, network bytes, prefix bits. */
typedef struct dt_cidr {
    int family;
    uint8_t addr[16];
    int bits;
} dt_cidr;

typedef struct dt_dest_rule {
    bool is_cidr;
    dt_host_pattern host; /* when !is_cidr */
    dt_cidr cidr;         /* when is_cidr */
    unsigned port;        /* 0 = any port */
} dt_dest_rule;

typedef struct dt_forward {
    bool given;             /* a `forward` block was present */
    dt_cidr *allow_clients; /* default: 127.0.0.0/8 and ::1/128 */
    size_t nallow_clients;
    dt_dest_rule *allow_destinations; /* ndest == 0: any destination */
    size_t nallow_destinations;
    unsigned *connect_ports; /* default: 443; nconnect_ports == 0 (written []): no CONNECT */
    size_t nconnect_ports;
} dt_forward;

/* One golden case from `expect`, kept as written; check.c parses it. */
typedef struct dt_expect {
    char *text;
    int line;
} dt_expect;

typedef struct dt_timeouts {
    int connect_ms;  /* 5000 */
    int upstream_ms; /* 60000 */
    int header_ms;   /* 10000 */
    int idle_ms;     /* 60000 */
    int drain_ms;    /* 10000 */
} dt_timeouts;

typedef struct dt_limits {
    int max_connections;     /* 10000 */
    uint64_t max_body_bytes; /* 1 GiB */
    int max_header_bytes;    /* extension; 16384: larger request heads get 431 */
} dt_limits;

typedef struct dt_config {
    atomic_int refs;
    char *path; /* the file it was loaded from */

    dt_listen *listen; /* at least one */
    size_t nlisten;
    dt_mode mode;
    dt_listen *admin; /* NULL when not configured */
    char *access_log; /* "-" stdout, a path, or NULL for "off" */
    dt_log_format log_format;
    int workers; /* resolved: never 0 after load (0 in the file = online CPUs) */
    dt_timeouts timeouts;
    dt_limits limits;
    bool rewrite_302;
    bool rewrite_301;
    char *via_name; /* "detour" */

    dt_upstream *upstreams;
    size_t nupstreams;
    dt_route *routes;
    size_t nroutes;
    dt_forward forward;
    dt_expect *expects;
    size_t nexpects;

    struct dt_ruleset *rules; /* the compiled match index over routes */
} dt_config;

/*
 * Load and validate FILE. On success returns DT_OK and stores a snapshot with
 * one reference in *out. On failure returns DT_ECONFIG (or DT_ENOMEM) and
 * writes "FILE:LINE: message" (NUL-terminated, truncated to errlen; err may
 * be NULL) to err; *out is left NULL. FILE is the file holding the mistake:
 * the config, a file it @includes, or a redirect map. A file that cannot be
 * read at all gives "FILE: cannot read: reason". Relative file names inside
 * the config are resolved against its directory. Safe to call from any
 * thread; touches no global state other than the metrics registry of route
 * names and the when_file flag registry.
 */
int dt_config_load(const char *path, dt_config **out, char *err, size_t errlen);

/* Take one more reference. Thread-safe. */
dt_config *dt_config_ref(dt_config *cfg);

/* Drop a reference; the last one frees the snapshot. NULL is allowed. Thread-safe. */
void dt_config_unref(dt_config *cfg);

/* The upstream called NAME, or NULL. */
const dt_upstream *dt_config_upstream(const dt_config *cfg, const char *name);

/*
 * The distinct when_file flags of the snapshot's routes, for the watcher:
 * writes at most CAP of them to OUT and returns how many there are (call
 * with CAP 0 to size OUT).
 */
size_t dt_config_flags(const dt_config *cfg, struct dt_flag **out, size_t cap);

/* "reverse", "forward" or "transparent" ("unknown" for anything else). */
const char *dt_mode_name(dt_mode mode);

#endif
