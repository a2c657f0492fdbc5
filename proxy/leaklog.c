/*
 * leaklog.c - once per upstream per minute for Location leak log lines.
 */
#include <stdio.h>

#include "detour/leaklog.h"
#include "detour/log.h"

static dt_leaklog g_leaklog;

void dt_leaklog_init(dt_leaklog *l)
{
    memset(l, 0, sizeof *l);
}

dt_leaklog *dt_leaklog_global(void)
{
    return &g_leaklog;
}

/* FNV-1a 64 of NAME; 0 is the free-slot mark, so it never comes out. */
static uint64_t name_key(dt_str name)
{
    uint64_t h = 0xcbf29ce484222325ull;

    for (size_t i = 0; i < name.n; i++) {
        h ^= (unsigned char)name.p[i];
        h *= 0x100000001b3ull;
    }
    return h != 0 ? h : 1;
}

/*
 * The slot of KEY: found by linear probing from KEY's home, claimed with a
 * compare-and-swap when the probe reaches a free slot first. A slot is never
 * freed, so a key once found stays where it is.
 */
static dt_leaklog_slot *slot_for(dt_leaklog *l, uint64_t key)
{
    size_t home = (size_t)(key % DT_LEAKLOG_SLOTS);

    for (size_t i = 0; i < DT_LEAKLOG_SLOTS; i++) {
        dt_leaklog_slot *s = &l->slot[(home + i) % DT_LEAKLOG_SLOTS];
        uint64_t k = atomic_load_explicit(&s->key, memory_order_acquire);
        if (k == 0) {
            /* On failure K becomes the key another thread put there. */
            if (atomic_compare_exchange_strong_explicit(&s->key, &k, key, memory_order_acq_rel,
                                                        memory_order_acquire))
                return s;
        }
        if (k == key)
            return s;
    }
    return &l->spill;
}

bool dt_leaklog_due(dt_leaklog *l, dt_str name, int64_t now_s, uint64_t *held)
{
    dt_leaklog_slot *s = slot_for(l, name_key(name));
    int64_t next = atomic_load_explicit(&s->next_s, memory_order_relaxed);
    /* NEXT is the last line's time plus one interval. */
    bool clock_went_back = next - now_s > 2 * DT_LEAKLOG_INTERVAL_S;

    /* The CAS picks one winner among threads that all saw the budget open. */
    if ((now_s < next && !clock_went_back) ||
        !atomic_compare_exchange_strong_explicit(&s->next_s, &next, now_s + DT_LEAKLOG_INTERVAL_S,
                                                 memory_order_relaxed, memory_order_relaxed)) {
        atomic_fetch_add_explicit(&s->held, 1, memory_order_relaxed);
        return false;
    }
    uint64_t h = atomic_exchange_explicit(&s->held, 0, memory_order_relaxed);
    if (held != NULL)
        *held = h;
    return true;
}

/* Append LOC to OUT at *N (snprintf-style: counts what does not fit). */
static void put_escaped(char *out, size_t cap, size_t *n, dt_str loc)
{
    static const char hex[] = "0123456789abcdef";
    size_t take = loc.n < DT_LEAKLOG_LOCATION_MAX ? loc.n : DT_LEAKLOG_LOCATION_MAX;

    for (size_t i = 0; i < take; i++) {
        unsigned char c = (unsigned char)loc.p[i];
        char esc[4] = {'\\', 'x', hex[c >> 4], hex[c & 15]};
        bool plain = c >= 0x20 && c < 0x7f && c != '"' && c != '\\';
        for (size_t k = 0; k < (plain ? 1u : 4u); k++, (*n)++)
            if (*n + 1 < cap)
                out[*n] = plain ? (char)c : esc[k];
    }
    for (const char *d = take < loc.n ? "..." : ""; *d != '\0'; d++, (*n)++)
        if (*n + 1 < cap)
            out[*n] = *d;
}

size_t dt_leaklog_format(char *out, size_t cap, dt_str upstream, dt_str location, uint64_t held)
{
    char tail[96] = "";
    size_t n;
    int k = snprintf(out, cap, "upstream %.*s: Location \"", (int)upstream.n, upstream.p);

    n = k > 0 ? (size_t)k : 0;
    put_escaped(out, cap, &n, location);
    if (held > 0)
        snprintf(tail, sizeof tail, " (%llu more since the last report)", (unsigned long long)held);
    k = snprintf(n < cap ? out + n : NULL, n < cap ? cap - n : 0,
                 "\" names an internal origin and reaches the client unchanged%s", tail);
    n += k > 0 ? (size_t)k : 0;
    if (cap > 0)
        out[n < cap ? n : cap - 1] = '\0';
    return n;
}

void dt_leaklog_report(const char *upstream, dt_str location)
{
    dt_str name = upstream != NULL ? (dt_str){upstream, strlen(upstream)} : DT_STR_LIT("-");
    uint64_t held = 0;
    char line[DT_LEAKLOG_LOCATION_MAX * 4 + 512];

    if (!dt_leaklog_due(&g_leaklog, name, dt_now_ms() / 1000, &held))
        return;
    dt_leaklog_format(line, sizeof line, name, location, held);
    dt_log_warn("%s", line);
}
