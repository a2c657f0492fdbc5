/*
 * pump.c - one direction of a tunnel: peek, send, discard (see pump.h).
 *
 * Why not splice() through a pipe, which copies nothing: measured on the
 * machines detour is benchmarked on, sending spliced page references cost
 * more than two copies of large chunks (0.59x of a direct stream against
 * 0.95x; docs/performance.md).
 */
#include <errno.h>
#include <sys/ioctl.h>
#include <sys/socket.h>

#include "detour/pump.h"

#define PUMP_ROUNDS 16
#define PUMP_MIN (16 * 1024) /* smallest peek after the destination took part of one */

void dt_pump_init(dt_pump *p, int src, int dst)
{
    *p = (dt_pump){.src = src, .dst = dst, .cap = DT_PUMP_CHUNK};
}

bool dt_pump_wants_input(const dt_pump *p)
{
    return !p->src_eof && !p->blocked && (!p->flushing || p->flush_left > 0);
}

/* At most one chunk per call, so that one busy tunnel cannot hold up the
 * other connections of its thread (level-triggered epoll brings it back). */
int dt_pump_run(dt_pump *p, char *buf, bool *progress)
{
    size_t moved = 0;

    for (int i = 0; i < PUMP_ROUNDS && moved < DT_PUMP_CHUNK && dt_pump_wants_input(p); i++) {
        size_t want = p->cap;
        if (p->flushing && p->flush_left < want)
            want = (size_t)p->flush_left;
        ssize_t n = recv(p->src, buf, want, MSG_PEEK | MSG_DONTWAIT);
        if (n < 0 && (errno == EAGAIN || errno == EINTR))
            break;
        if (n <= 0) {
            p->src_eof = true; /* a reset reads as an end */
            *progress = true;
            break;
        }
        ssize_t w = send(p->dst, buf, (size_t)n, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (w < 0 && errno == EAGAIN) {
            p->blocked = true;
            break;
        }
        if (w <= 0)
            return -1;
        /* Drop from the source exactly what went on; it is already queued. */
        if (recv(p->src, buf, (size_t)w, MSG_TRUNC | MSG_DONTWAIT) != w)
            return -1;
        p->bytes += (uint64_t)w;
        moved += (size_t)w;
        if (p->flushing)
            p->flush_left -= (uint64_t)w;
        *progress = true;
        if (w < n) {
            /* Offer about what it took next time: less peeked in vain. */
            p->cap = (size_t)w < PUMP_MIN ? PUMP_MIN : (size_t)w;
            p->blocked = true;
            break;
        }
        if ((size_t)n == p->cap && p->cap < DT_PUMP_CHUNK)
            p->cap = p->cap * 2 < DT_PUMP_CHUNK ? p->cap * 2 : DT_PUMP_CHUNK;
    }
    return 0;
}

void dt_pump_start_flush(dt_pump *p)
{
    int avail = 0;

    p->flushing = true;
    p->flush_left = 0;
    if (!p->src_eof && ioctl(p->src, FIONREAD, &avail) == 0 && avail > 0)
        p->flush_left = (uint64_t)avail;
}
