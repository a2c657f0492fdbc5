/*
 * flag.c - `when_file` flags: a registry of "does this file exist" bits.
 *
 * The registry is a short linked list under one mutex: it is touched only at
 * config load (dt_flag_get) and by the watcher once a second (poll_all), never
 * on the request path, which reads the atomic `present` bit and nothing else.
 * Flags are never freed while the process runs, so a snapshot may keep plain
 * pointers to them across any number of reloads.
 */
#include "detour/flag.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <sys/stat.h>

struct dt_flag {
    char *path;
    atomic_bool present;
    struct dt_flag *next;
};

static pthread_mutex_t registry_lock = PTHREAD_MUTEX_INITIALIZER;
static dt_flag *registry;

/* Caller holds registry_lock. */
static dt_flag *find_locked(const char *path)
{
    for (dt_flag *f = registry; f; f = f->next)
        if (strcmp(f->path, path) == 0)
            return f;
    return NULL;
}

/* Caller holds registry_lock. NULL on ENOMEM. */
static dt_flag *create_locked(const char *path)
{
    dt_flag *f = calloc(1, sizeof(*f));
    if (!f)
        return NULL;
    f->path = strdup(path);
    if (!f->path) {
        free(f);
        return NULL;
    }
    atomic_init(&f->present, false);
    f->next = registry;
    registry = f;
    return f;
}

dt_flag *dt_flag_get(const char *path)
{
    pthread_mutex_lock(&registry_lock);
    dt_flag *f = find_locked(path);
    if (!f) {
        f = create_locked(path);
        if (f)
            dt_flag_poll(f);
    }
    pthread_mutex_unlock(&registry_lock);
    return f;
}

/*
 * Any stat() failure counts as "absent": an operator who removes the switch
 * file, or makes it unreadable, turns the route off either way.
 */
bool dt_flag_poll(dt_flag *f)
{
    struct stat st;
    bool present = stat(f->path, &st) == 0;
    atomic_store_explicit(&f->present, present, memory_order_relaxed);
    return present;
}

void dt_flag_poll_all(void)
{
    pthread_mutex_lock(&registry_lock);
    for (dt_flag *f = registry; f; f = f->next)
        dt_flag_poll(f);
    pthread_mutex_unlock(&registry_lock);
}

bool dt_flag_present(const dt_flag *f)
{
    return atomic_load_explicit(&f->present, memory_order_relaxed);
}

void dt_flag_set(dt_flag *f, bool present)
{
    atomic_store_explicit(&f->present, present, memory_order_relaxed);
}

const char *dt_flag_path(const dt_flag *f)
{
    return f->path;
}

void dt_flag_registry_clear(void)
{
    pthread_mutex_lock(&registry_lock);
    dt_flag *f = registry;
    registry = NULL;
    pthread_mutex_unlock(&registry_lock);
    while (f) {
        dt_flag *next = f->next;
        free(f->path);
        free(f);
        f = next;
    }
}
