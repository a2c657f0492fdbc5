/*
 * ring.h - a fixed-capacity byte ring: the only buffer a relayed body ever
 * passes through. Its capacity is set at creation and never grows, which is
 * what bounds a request's memory however large the body is.
 */
#ifndef DETOUR_RING_H
#define DETOUR_RING_H

#include "detour/common.h"

typedef struct dt_ring {
    char *buf;
    size_t cap;  /* power of two */
    size_t head; /* total bytes ever read */
    size_t tail; /* total bytes ever written */
} dt_ring;

/* Allocate CAP bytes (rounded up to a power of two). DT_OK or DT_ENOMEM. */
int dt_ring_init(dt_ring *r, size_t cap);
void dt_ring_free(dt_ring *r);

static inline size_t dt_ring_used(const dt_ring *r)
{
    return r->tail - r->head;
}

static inline size_t dt_ring_space(const dt_ring *r)
{
    return r->cap - (r->tail - r->head);
}

/* Copy up to N bytes in; returns how many fit. */
size_t dt_ring_write(dt_ring *r, const void *src, size_t n);

/* Copy up to N bytes out; returns how many were there. */
size_t dt_ring_read(dt_ring *r, void *dst, size_t n);

#endif
