/*
 * map.h - bulk redirect maps: files of "old-path  new-location" lines.
 *
 * Blank lines and lines whose first non-blank byte is '#' are ignored; every
 * other line holds exactly two fields separated by spaces or tabs, the first
 * starting with '/' (so a trailing "# comment" is a third field: an error).
 * A field with a control byte is an error; a CRLF line end is accepted. A
 * duplicate old path is an error naming both lines. Lookup is an exact
 * byte match in O(1). The whole file is read into one buffer that the table
 * indexes by 32-bit offsets, so a map takes little more than its file size
 * in memory (a 1,000,000-line map loads in well under 2 s).
 */
#ifndef DETOUR_MAP_H
#define DETOUR_MAP_H

#include "detour/common.h"

typedef struct dt_map dt_map;

/*
 * Load PATH. Returns NULL on error with "PATH:LINE: message" (or
 * "PATH: message") in err. The result is owned by the caller: dt_map_free().
 */
dt_map *dt_map_load(const char *path, char *err, size_t errlen);
void dt_map_free(dt_map *m);

/* The new location for KEY, or NULL; *len receives its length. Thread-safe. */
const char *dt_map_lookup(const dt_map *m, const char *key, size_t keylen, size_t *len);

/* Number of entries. */
size_t dt_map_count(const dt_map *m);

/* Bytes held (file buffer plus table), for the memory test and metrics. */
size_t dt_map_memory(const dt_map *m);

/* Iterate: calls FN for every entry in file order until it returns false. */
void dt_map_foreach(const dt_map *m, bool (*fn)(void *ctx, dt_str key, dt_str value), void *ctx);

#endif
