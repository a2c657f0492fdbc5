/*
 * ring.c - fixed-capacity byte ring. head and tail only grow; the index is
 * taken modulo the power-of-two capacity, so "full" and "empty" never look
 * alike and no byte of capacity is wasted.
 */
#include <stdlib.h>

#include "detour/ring.h"

int dt_ring_init(dt_ring *r, size_t cap)
{
    size_t c = 64;

    while (c < cap)
        c <<= 1;
    r->buf = malloc(c);
    if (r->buf == NULL)
        return DT_ENOMEM;
    r->cap = c;
    r->head = r->tail = 0;
    return DT_OK;
}

void dt_ring_free(dt_ring *r)
{
    free(r->buf);
    r->buf = NULL;
    r->cap = r->head = r->tail = 0;
}

size_t dt_ring_write(dt_ring *r, const void *src, size_t n)
{
    size_t space = dt_ring_space(r);
    size_t off, first;

    if (n > space)
        n = space;
    off = r->tail & (r->cap - 1);
    first = r->cap - off < n ? r->cap - off : n;
    memcpy(r->buf + off, src, first);
    memcpy(r->buf, (const char *)src + first, n - first);
    r->tail += n;
    return n;
}

size_t dt_ring_read(dt_ring *r, void *dst, size_t n)
{
    size_t used = dt_ring_used(r);
    size_t off, first;

    if (n > used)
        n = used;
    off = r->head & (r->cap - 1);
    first = r->cap - off < n ? r->cap - off : n;
    memcpy(dst, r->buf + off, first);
    memcpy((char *)dst + first, r->buf, n - first);
    r->head += n;
    return n;
}
