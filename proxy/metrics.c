/*
 * metrics.c - per-worker counters, summed when scraped.
 *
 * Each worker slot holds a fixed-size open-addressing table of labelled
 * counters, written only by its worker: a new key is published by a release
 * store after its count is set, and a scrape reads keys with acquire loads,
 * so a reader never sees a half-made entry and the writer never waits. The
 * table never grows (no rehash to race with a reader); when it is full, new
 * label sets are counted in one overflow cell.
 *
 * Keys pack a family and its label ids: route and upstream names are
 * interned in a registry (ids are dense and never reused), codes and kinds
 * are small numbers.
 */
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>

#include "detour/config.h"
#include "detour/metrics.h"

#define TABLE_SIZE 65536u /* per worker; 1 MiB */
#define NBUCKETS 14

enum { FAM_REQ = 1, FAM_UPERR, FAM_LEAK, FAM_DRY, FAM_OVERFLOW };

static const double bucket_le[NBUCKETS - 1] = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                                               0.25,  0.5,    1,     2.5,  5,     10};

typedef struct cell {
    _Atomic uint64_t key;
    _Atomic uint64_t count;
} cell;

struct dt_metrics_worker {
    cell *table;
    _Atomic uint64_t rewrites[2]; /* 302->307, 301->308 */
    _Atomic int64_t connections;
    _Atomic uint64_t buckets[NBUCKETS];
    _Atomic uint64_t duration_sum_us;
    _Atomic uint64_t duration_count;
} __attribute__((aligned(64)));

/* What every interned label value starts with. */
typedef struct cell_head {
    char *name;
    uint32_t id; /* dense, in order of creation, never reused */
} cell_head;

struct dt_route_stats {
    cell_head head;
    _Atomic int64_t last_hit;
};

struct dt_upstream_stats {
    cell_head head;
};

/* Names to cells: an array by id, and an open-addressing index by name. */
typedef struct name_table {
    cell_head **by_id;
    size_t n, cap;
    uint32_t *index; /* id + 1, 0 = empty; size idx_size (a power of two) */
    size_t idx_size;
} name_table;

typedef struct registry {
    pthread_mutex_t lock;
    name_table routes, ups;
} registry;

static registry reg = {.lock = PTHREAD_MUTEX_INITIALIZER};
static dt_metrics_worker *slots;
static int nslots;
static _Atomic uint64_t reloads_ok, reloads_err;

const char *dt_action_name(dt_action a)
{
    static const char *const names[] = {"relay", "redirect", "rewrite", "error", "dry_run"};
    return a < DT_ACTION_COUNT ? names[a] : "unknown";
}

/* ------------------------------------------------------------ the registry */

static uint64_t name_hash(const char *s)
{
    uint64_t h = 14695981039346656037ull;
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 1099511628211ull;
    return h;
}

/* Rebuild the index at twice the size (load factor stays <= 1/2). */
static bool index_grow(name_table *t)
{
    size_t size = t->idx_size ? t->idx_size * 2 : 256;
    uint32_t *idx = calloc(size, sizeof *idx);

    if (idx == NULL)
        return false;
    for (size_t id = 0; id < t->n; id++) {
        size_t i = name_hash(t->by_id[id]->name) & (size - 1);
        while (idx[i] != 0)
            i = (i + 1) & (size - 1);
        idx[i] = (uint32_t)id + 1;
    }
    free(t->index);
    t->index = idx;
    t->idx_size = size;
    return true;
}

/*
 * The cell named NAME, or a new zeroed one of SIZE bytes (a cell_head first).
 * Config load time only, under reg.lock: O(1) per name, so a config with
 * 10,000 routes loads as fast as one with ten.
 */
static cell_head *intern(name_table *t, const char *name, size_t size)
{
    size_t i;
    cell_head *c;

    if ((t->n + 1) * 2 > t->idx_size && !index_grow(t))
        return NULL;
    for (i = name_hash(name) & (t->idx_size - 1); t->index[i] != 0; i = (i + 1) & (t->idx_size - 1))
        if (strcmp(t->by_id[t->index[i] - 1]->name, name) == 0)
            return t->by_id[t->index[i] - 1];
    if (t->n == t->cap) {
        size_t cap = t->cap ? t->cap * 2 : 64;
        cell_head **p = realloc(t->by_id, cap * sizeof *p);
        if (p == NULL)
            return NULL;
        t->by_id = p;
        t->cap = cap;
    }
    c = calloc(1, size);
    if (c == NULL || (c->name = strdup(name)) == NULL) {
        free(c);
        return NULL;
    }
    c->id = (uint32_t)t->n;
    t->by_id[t->n++] = c;
    t->index[i] = c->id + 1;
    return c;
}

dt_route_stats *dt_metrics_route(const char *name)
{
    pthread_mutex_lock(&reg.lock);
    cell_head *c = intern(&reg.routes, name, sizeof(dt_route_stats));
    pthread_mutex_unlock(&reg.lock);
    return (dt_route_stats *)c;
}

dt_upstream_stats *dt_metrics_upstream(const char *name)
{
    pthread_mutex_lock(&reg.lock);
    cell_head *c = intern(&reg.ups, name, sizeof(dt_upstream_stats));
    pthread_mutex_unlock(&reg.lock);
    return (dt_upstream_stats *)c;
}

/* ------------------------------------------------------------ slots */

int dt_metrics_init(int nworkers)
{
    dt_metrics_shutdown();
    slots = aligned_alloc(64, sizeof *slots * (size_t)(nworkers + 1));
    if (slots == NULL)
        return DT_ENOMEM;
    memset(slots, 0, sizeof *slots * (size_t)(nworkers + 1));
    nslots = nworkers + 1;
    for (int i = 0; i < nslots; i++) {
        slots[i].table = calloc(TABLE_SIZE, sizeof(cell));
        if (slots[i].table == NULL)
            return DT_ENOMEM;
    }
    return DT_OK;
}

void dt_metrics_shutdown(void)
{
    for (int i = 0; i < nslots; i++)
        free(slots[i].table);
    free(slots);
    slots = NULL;
    nslots = 0;
}

dt_metrics_worker *dt_metrics_worker_slot(int index)
{
    return index >= 0 && index < nslots ? &slots[index] : NULL;
}

/* ------------------------------------------------------------ counting */

static uint64_t make_key(unsigned fam, uint32_t id, unsigned a, unsigned b)
{
    return (uint64_t)fam << 60 | (uint64_t)(id & 0x0fffffffu) << 32 |
           (uint64_t)(a & 0xffffu) << 16 | (b & 0xffffu);
}

/* Single writer: plain load + store, no read-modify-write instruction needed. */
static void bump(_Atomic uint64_t *c, uint64_t by)
{
    atomic_store_explicit(c, atomic_load_explicit(c, memory_order_relaxed) + by,
                          memory_order_relaxed);
}

static void count(dt_metrics_worker *w, uint64_t key)
{
    uint64_t h = key * 0x9e3779b97f4a7c15ull;
    uint32_t i = (uint32_t)(h >> 48) & (TABLE_SIZE - 1);

    for (uint32_t probe = 0; probe < 64; probe++, i = (i + 1) & (TABLE_SIZE - 1)) {
        cell *c = &w->table[i];
        uint64_t k = atomic_load_explicit(&c->key, memory_order_relaxed);
        if (k == key) {
            bump(&c->count, 1);
            return;
        }
        if (k == 0) {
            atomic_store_explicit(&c->count, 1, memory_order_relaxed);
            atomic_store_explicit(&c->key, key, memory_order_release);
            return;
        }
    }
    if (key != make_key(FAM_OVERFLOW, 0, 0, 0))
        count(w, make_key(FAM_OVERFLOW, 0, 0, 0));
}

void dt_metrics_request(dt_metrics_worker *w, dt_route_stats *route, dt_action action, int code,
                        int64_t duration_us, int64_t now_s)
{
    size_t b = 0;
    double secs = (double)duration_us / 1e6;

    if (w == NULL)
        return;
    count(w,
          make_key(FAM_REQ, route != NULL ? route->head.id + 1 : 0, (unsigned)action, (unsigned)code));
    /* Shared between workers, so only write when the second changed. */
    if (route != NULL && atomic_load_explicit(&route->last_hit, memory_order_relaxed) != now_s)
        atomic_store_explicit(&route->last_hit, now_s, memory_order_relaxed);
    while (b < NBUCKETS - 1 && secs > bucket_le[b])
        b++;
    bump(&w->buckets[b], 1);
    bump(&w->duration_sum_us, (uint64_t)(duration_us > 0 ? duration_us : 0));
    bump(&w->duration_count, 1);
}

void dt_metrics_dry_run(dt_metrics_worker *w, dt_route_stats *route, int64_t now_s)
{
    (void)now_s;
    if (w != NULL && route != NULL)
        count(w, make_key(FAM_DRY, route->head.id + 1, 0, 0));
}

void dt_metrics_rewrite(dt_metrics_worker *w, int from, int to)
{
    (void)to;
    if (w != NULL)
        bump(&w->rewrites[from == 302 ? 0 : 1], 1);
}

void dt_metrics_upstream_error(dt_metrics_worker *w, dt_upstream_stats *up, int kind)
{
    if (w != NULL)
        count(w, make_key(FAM_UPERR, up != NULL ? up->head.id + 1 : 0, (unsigned)-kind, 0));
}

void dt_metrics_location_leak(dt_metrics_worker *w, dt_upstream_stats *up)
{
    if (w != NULL)
        count(w, make_key(FAM_LEAK, up != NULL ? up->head.id + 1 : 0, 0, 0));
}

void dt_metrics_connections(dt_metrics_worker *w, int delta)
{
    if (w != NULL)
        atomic_store_explicit(&w->connections,
                              atomic_load_explicit(&w->connections, memory_order_relaxed) + delta,
                              memory_order_relaxed);
}

void dt_metrics_reload(bool ok)
{
    atomic_fetch_add(ok ? &reloads_ok : &reloads_err, 1);
}

/* ------------------------------------------------------------ scraping */

typedef struct kv {
    uint64_t key, count;
} kv;

typedef struct text {
    char *p;
    size_t len, cap;
    bool failed;
} text;

static void emit(text *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void emit(text *t, const char *fmt, ...)
{
    va_list ap;

    for (int attempt = 0; attempt < 2 && !t->failed; attempt++) {
        va_start(ap, fmt);
        int n = vsnprintf(t->p + t->len, t->cap - t->len, fmt, ap);
        va_end(ap);
        if (n < 0) {
            t->failed = true;
            return;
        }
        if ((size_t)n < t->cap - t->len) {
            t->len += (size_t)n;
            return;
        }
        size_t cap = (t->cap + (size_t)n) * 2;
        char *p = realloc(t->p, cap);
        if (p == NULL) {
            t->failed = true;
            return;
        }
        t->p = p;
        t->cap = cap;
    }
}

/* A label value with \ " and newline escaped, as the text format wants. */
static void emit_label(text *t, const char *s)
{
    for (; *s; s++) {
        if (*s == '\\' || *s == '"')
            emit(t, "\\%c", *s);
        else if (*s == '\n')
            emit(t, "\\n");
        else
            emit(t, "%c", *s);
    }
}

static int kv_cmp(const void *a, const void *b)
{
    uint64_t x = ((const kv *)a)->key, y = ((const kv *)b)->key;
    return x < y ? -1 : x > y;
}

/* Every (key, count) over all workers, summed per key and sorted. */
static kv *collect(size_t *n)
{
    size_t cap = 1024, len = 0;
    kv *all = malloc(cap * sizeof *all);

    for (int s = 0; all != NULL && s < nslots; s++)
        for (uint32_t i = 0; i < TABLE_SIZE; i++) {
            uint64_t key = atomic_load_explicit(&slots[s].table[i].key, memory_order_acquire);
            if (key == 0)
                continue;
            if (len == cap) {
                kv *p = realloc(all, cap * 2 * sizeof *all);
                if (p == NULL) {
                    free(all);
                    return NULL;
                }
                all = p;
                cap *= 2;
            }
            all[len].key = key;
            all[len++].count = atomic_load_explicit(&slots[s].table[i].count, memory_order_relaxed);
        }
    if (all == NULL)
        return NULL;
    qsort(all, len, sizeof *all, kv_cmp);
    size_t out = 0;
    for (size_t i = 0; i < len; i++) {
        if (out > 0 && all[out - 1].key == all[i].key)
            all[out - 1].count += all[i].count;
        else
            all[out++] = all[i];
    }
    *n = out;
    return all;
}

static unsigned fam_of(uint64_t k)
{
    return (unsigned)(k >> 60);
}
static uint32_t id_of(uint64_t k)
{
    return (uint32_t)(k >> 32) & 0x0fffffffu;
}
static unsigned a_of(uint64_t k)
{
    return (unsigned)(k >> 16) & 0xffffu;
}
static unsigned b_of(uint64_t k)
{
    return (unsigned)k & 0xffffu;
}

static const char *route_name(uint32_t id)
{
    return id == 0 ? "-" : (id - 1 < reg.routes.n ? reg.routes.by_id[id - 1]->name : "?");
}

static const char *upstream_name(uint32_t id)
{
    return id == 0 ? "-" : (id - 1 < reg.ups.n ? reg.ups.by_id[id - 1]->name : "?");
}

static const char *error_kind(int err)
{
    switch (err) {
    case DT_EREFUSED:
        return "refused";
    case DT_ERESET:
        return "reset";
    case DT_ETIMEDOUT:
        return "timeout";
    case DT_ECONNTIMEDOUT:
        return "connect_timeout";
    case DT_EEMPTY:
        return "empty_reply";
    case DT_EHDRTOOBIG:
        return "header_too_large";
    case DT_ERESOLVE:
        return "resolve";
    case DT_ETLS:
        return "tls";
    case DT_EPROTO:
        return "protocol";
    default:
        return "other";
    }
}

static void render_requests(text *t, const kv *all, size_t n)
{
    emit(t, "# HELP detour_requests_total Requests answered, by route, action and status code.\n"
            "# TYPE detour_requests_total counter\n");
    for (size_t i = 0; i < n; i++) {
        if (fam_of(all[i].key) != FAM_REQ)
            continue;
        emit(t, "detour_requests_total{route=\"");
        emit_label(t, route_name(id_of(all[i].key)));
        emit(t, "\",action=\"%s\",code=\"%u\"} %llu\n", dt_action_name((dt_action)a_of(all[i].key)),
             b_of(all[i].key), (unsigned long long)all[i].count);
    }
    emit(t, "# HELP detour_redirects_total Requests answered with a redirect, by route.\n"
            "# TYPE detour_redirects_total counter\n");
    for (size_t i = 0; i < n;) {
        uint32_t id = id_of(all[i].key);
        uint64_t sum = 0;
        size_t j = i;
        for (; j < n && fam_of(all[j].key) == fam_of(all[i].key) && id_of(all[j].key) == id; j++)
            if (fam_of(all[j].key) == FAM_REQ && a_of(all[j].key) == DT_ACTION_REDIRECT)
                sum += all[j].count;
        if (sum > 0) {
            emit(t, "detour_redirects_total{route=\"");
            emit_label(t, route_name(id));
            emit(t, "\"} %llu\n", (unsigned long long)sum);
        }
        i = j;
    }
    emit(t, "# HELP detour_dry_run_total Requests a dry-run route would have redirected.\n"
            "# TYPE detour_dry_run_total counter\n");
    for (size_t i = 0; i < n; i++)
        if (fam_of(all[i].key) == FAM_DRY) {
            emit(t, "detour_dry_run_total{route=\"");
            emit_label(t, route_name(id_of(all[i].key)));
            emit(t, "\"} %llu\n", (unsigned long long)all[i].count);
        }
}

static void render_upstreams(text *t, const kv *all, size_t n)
{
    emit(t, "# HELP detour_upstream_errors_total Upstream failures, by upstream and kind.\n"
            "# TYPE detour_upstream_errors_total counter\n");
    for (size_t i = 0; i < n; i++)
        if (fam_of(all[i].key) == FAM_UPERR) {
            emit(t, "detour_upstream_errors_total{upstream=\"");
            emit_label(t, upstream_name(id_of(all[i].key)));
            emit(t, "\",kind=\"%s\"} %llu\n", error_kind(-(int)a_of(all[i].key)),
                 (unsigned long long)all[i].count);
        }
    emit(t, "# HELP detour_location_leaks_total Upstream Locations naming an internal origin, "
            "not rewritten.\n# TYPE detour_location_leaks_total counter\n");
    for (size_t i = 0; i < n; i++)
        if (fam_of(all[i].key) == FAM_LEAK) {
            emit(t, "detour_location_leaks_total{upstream=\"");
            emit_label(t, upstream_name(id_of(all[i].key)));
            emit(t, "\"} %llu\n", (unsigned long long)all[i].count);
        }
}

static void render_routes(text *t, const struct dt_config *cfg)
{
    emit(t, "# HELP detour_route_last_hit_timestamp_seconds When a route last answered a request "
            "(0: never since start).\n# TYPE detour_route_last_hit_timestamp_seconds gauge\n");
    for (size_t i = 0; cfg != NULL && i < cfg->nroutes; i++) {
        const dt_route_stats *rs = cfg->routes[i].stats;
        if (rs == NULL)
            continue;
        emit(t, "detour_route_last_hit_timestamp_seconds{route=\"");
        emit_label(t, rs->head.name);
        emit(t, "\"} %lld\n", (long long)atomic_load_explicit(&rs->last_hit, memory_order_relaxed));
    }
}

static void render_totals(text *t)
{
    uint64_t rw[2] = {0, 0}, buckets[NBUCKETS] = {0}, sum = 0, cnt = 0;
    int64_t conns = 0;

    for (int s = 0; s < nslots; s++) {
        for (int i = 0; i < 2; i++)
            rw[i] += atomic_load_explicit(&slots[s].rewrites[i], memory_order_relaxed);
        for (int b = 0; b < NBUCKETS; b++)
            buckets[b] += atomic_load_explicit(&slots[s].buckets[b], memory_order_relaxed);
        sum += atomic_load_explicit(&slots[s].duration_sum_us, memory_order_relaxed);
        cnt += atomic_load_explicit(&slots[s].duration_count, memory_order_relaxed);
        conns += atomic_load_explicit(&slots[s].connections, memory_order_relaxed);
    }
    emit(t,
         "# HELP detour_rewrites_total Upstream redirects rewritten to keep the method.\n"
         "# TYPE detour_rewrites_total counter\n"
         "detour_rewrites_total{from=\"302\",to=\"307\"} %llu\n"
         "detour_rewrites_total{from=\"301\",to=\"308\"} %llu\n",
         (unsigned long long)rw[0], (unsigned long long)rw[1]);
    emit(t,
         "# HELP detour_active_connections Client connections open now.\n"
         "# TYPE detour_active_connections gauge\ndetour_active_connections %lld\n",
         (long long)conns);
    emit(t, "# HELP detour_request_duration_seconds Time from request line to completion.\n"
            "# TYPE detour_request_duration_seconds histogram\n");
    uint64_t acc = 0;
    for (int b = 0; b < NBUCKETS - 1; b++) {
        acc += buckets[b];
        emit(t, "detour_request_duration_seconds_bucket{le=\"%g\"} %llu\n", bucket_le[b],
             (unsigned long long)acc);
    }
    acc += buckets[NBUCKETS - 1];
    emit(t, "detour_request_duration_seconds_bucket{le=\"+Inf\"} %llu\n", (unsigned long long)acc);
    emit(t,
         "detour_request_duration_seconds_sum %.6f\ndetour_request_duration_seconds_count %llu\n",
         (double)sum / 1e6, (unsigned long long)cnt);
    emit(t,
         "# HELP detour_config_reloads_total Config reloads, by result.\n"
         "# TYPE detour_config_reloads_total counter\n"
         "detour_config_reloads_total{result=\"ok\"} %llu\n"
         "detour_config_reloads_total{result=\"error\"} %llu\n",
         (unsigned long long)atomic_load(&reloads_ok),
         (unsigned long long)atomic_load(&reloads_err));
}

int dt_metrics_render(const struct dt_config *cfg, char **out, size_t *len)
{
    text t = {malloc(16384), 0, 16384, false};
    size_t n = 0;
    kv *all;

    if (t.p == NULL)
        return DT_ENOMEM;
    pthread_mutex_lock(&reg.lock);
    all = collect(&n);
    if (all != NULL) {
        render_requests(&t, all, n);
        render_upstreams(&t, all, n);
        render_routes(&t, cfg);
        render_totals(&t);
    }
    pthread_mutex_unlock(&reg.lock);
    free(all);
    if (all == NULL || t.failed) {
        free(t.p);
        return DT_ENOMEM;
    }
    *out = t.p;
    *len = t.len;
    return DT_OK;
}
