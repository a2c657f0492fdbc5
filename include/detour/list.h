/*
 * list.h - an intrusive doubly-linked list (the Linux kernel's shape).
 *
 * Used for the worker's queues and its deadline lists: every entry of one
 * deadline list has the same timeout, so appending at the tail keeps the list
 * sorted and the earliest deadline is always at the head (O(1) insert,
 * refresh and expiry, no heap).
 */
#ifndef DETOUR_LIST_H
#define DETOUR_LIST_H

#include <stddef.h>
#include <stdbool.h>

typedef struct dt_list {
    struct dt_list *prev, *next;
} dt_list;

static inline void dt_list_init(dt_list *l)
{
    l->prev = l->next = l;
}

static inline bool dt_list_empty(const dt_list *l)
{
    return l->next == l;
}

/* An unlinked node points at itself, so "is it linked?" is O(1). */
static inline bool dt_list_linked(const dt_list *n)
{
    return n->next != n && n->next != NULL;
}

static inline void dt_list_append(dt_list *head, dt_list *n)
{
    n->prev = head->prev;
    n->next = head;
    head->prev->next = n;
    head->prev = n;
}

static inline void dt_list_remove(dt_list *n)
{
    if (!dt_list_linked(n))
        return;
    n->prev->next = n->next;
    n->next->prev = n->prev;
    n->prev = n->next = n;
}

#define dt_container_of(ptr, type, member) ((type *)((char *)(ptr)-offsetof(type, member)))

#endif
