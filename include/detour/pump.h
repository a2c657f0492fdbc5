/*
 * pump.h - one direction of a byte tunnel between two non-blocking TCP
 * sockets, moved without a buffer of its own.
 *
 * A pump peeks at what its source socket holds (recv with MSG_PEEK) into a
 * caller's scratch buffer, sends it to its destination, and then discards
 * from the source exactly what the destination accepted (recv with
 * MSG_TRUNC, which copies nothing). Bytes the destination cannot take yet
 * stay in the source's kernel receive buffer, so TCP's own flow control
 * holds a fast sender back, and one scratch buffer serves any number of
 * pumps run one after another on a thread.
 *
 * The caller watches the source for input while dt_pump_wants_input() and
 * the destination for output while blocked is set; it clears blocked when
 * the destination reports output (or an error) and runs the pump again.
 */
#ifndef DETOUR_PUMP_H
#define DETOUR_PUMP_H

#include "detour/common.h"

/* The scratch buffer's size and the most one dt_pump_run moves. Large
 * chunks keep the per-call cost low (docs/performance.md). */
#define DT_PUMP_CHUNK (4 * 1024 * 1024)

typedef struct dt_pump {
    int src, dst;
    size_t cap;          /* next peek size: shrinks while the destination is the slow side */
    bool src_eof;        /* the source ended (or was reset); all it sent before went on */
    bool blocked;        /* the destination took less than offered: wait until writable */
    bool flushing;       /* move only flush_left more bytes, then stop */
    uint64_t flush_left;
    uint64_t bytes;      /* bytes the destination accepted */
} dt_pump;

void dt_pump_init(dt_pump *p, int src, int dst);

/* Should the caller read the source now? */
bool dt_pump_wants_input(const dt_pump *p);

/*
 * Move what can move without blocking, up to DT_PUMP_CHUNK bytes, through
 * BUF (DT_PUMP_CHUNK bytes). Sets *PROGRESS when a byte moved or the source
 * ended. -1 when the destination is broken (the tunnel should close).
 */
int dt_pump_run(dt_pump *p, char *buf, bool *progress);

/* The other direction ended: from now on move only what the source had
 * received by this moment, then stop. */
void dt_pump_start_flush(dt_pump *p);

#endif
