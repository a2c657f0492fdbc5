/*
 * pattern.h - the deterministic byte pattern dt_origin serves and the tests
 * upload, so that both ends can compute the expected SHA-256 without
 * storing a body: byte i of a body is (i * 131 + (i >> 16)) & 0xff.
 * The (i >> 16) term shifts the pattern every 64 KiB, so a block that is
 * dropped, repeated or reordered changes the digest.
 */
#ifndef DT_TEST_PATTERN_H
#define DT_TEST_PATTERN_H

#include <stddef.h>
#include <stdint.h>

/* Fill BUF with bytes [off, off + n) of the pattern. */
static inline void th_pattern_fill(uint64_t off, unsigned char *buf, size_t n)
{
    for (size_t k = 0; k < n; k++) {
        uint64_t i = off + k;
        buf[k] = (unsigned char)((i * 131 + (i >> 16)) & 0xff);
    }
}

#endif
