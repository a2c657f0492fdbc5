/*
 * test_pump.c - one tunnel direction between real loopback TCP sockets:
 * bytes arrive whole and in order, a destination that does not read holds
 * the source back without losing anything, an end comes after the last
 * byte, a flush moves only what was there, and a broken destination is
 * reported.
 *
 *   peer_a --TCP--> src  [pump]  dst --TCP--> peer_b
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "detour/pump.h"

typedef struct fixture {
    int peer_a, src, dst, peer_b;
    dt_pump pump;
    char *scratch;
} fixture;

static unsigned char pattern_at(uint64_t i)
{
    return (unsigned char)((i * 7 + (i >> 13)) & 0xff);
}

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void nonblocking(int fd)
{
    assert_int_equal(fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK), 0);
}

/* A connected loopback TCP pair: *A connects, *B is accepted. */
static void tcp_pair(int *a, int *b)
{
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof sa;
    int l = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_true(l >= 0);
    assert_int_equal(bind(l, (struct sockaddr *)&sa, sizeof sa), 0);
    assert_int_equal(listen(l, 1), 0);
    assert_int_equal(getsockname(l, (struct sockaddr *)&sa, &len), 0);
    *a = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_true(*a >= 0);
    assert_int_equal(connect(*a, (struct sockaddr *)&sa, sizeof sa), 0);
    *b = accept(l, NULL, NULL);
    assert_true(*b >= 0);
    close(l);
}

static int setup(void **state)
{
    fixture *f = calloc(1, sizeof *f);
    assert_non_null(f);
    tcp_pair(&f->peer_a, &f->src);
    tcp_pair(&f->dst, &f->peer_b);
    nonblocking(f->src);
    nonblocking(f->dst);
    nonblocking(f->peer_a);
    nonblocking(f->peer_b);
    f->scratch = malloc(DT_PUMP_CHUNK);
    assert_non_null(f->scratch);
    dt_pump_init(&f->pump, f->src, f->dst);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture *f = *state;
    int fds[] = {f->peer_a, f->src, f->dst, f->peer_b};
    for (size_t i = 0; i < sizeof fds / sizeof fds[0]; i++)
        if (fds[i] >= 0)
            close(fds[i]);
    free(f->scratch);
    free(f);
    return 0;
}

/* Write pattern bytes [*off, total) into FD as far as it takes them. */
static void feed(int fd, uint64_t *off, uint64_t total)
{
    unsigned char buf[65536];
    while (*off < total) {
        size_t k = total - *off < sizeof buf ? (size_t)(total - *off) : sizeof buf;
        for (size_t i = 0; i < k; i++)
            buf[i] = pattern_at(*off + i);
        ssize_t n = send(fd, buf, k, MSG_DONTWAIT | MSG_NOSIGNAL);
        if (n <= 0)
            return;
        *off += (uint64_t)n;
    }
}

/* Read what FD has, checking it against the pattern from *off. -1 on a mismatch. */
static int drain(int fd, uint64_t *off)
{
    unsigned char buf[65536];
    for (;;) {
        ssize_t n = recv(fd, buf, sizeof buf, MSG_DONTWAIT);
        if (n <= 0)
            return 0;
        for (ssize_t i = 0; i < n; i++)
            if (buf[i] != pattern_at(*off + (uint64_t)i))
                return -1;
        *off += (uint64_t)n;
    }
}

/* Run the pump as an event loop would: a writable destination unblocks it. */
static int run(fixture *f, bool *progress)
{
    struct pollfd p = {.fd = f->dst, .events = POLLOUT};
    if (f->pump.blocked && poll(&p, 1, 0) == 1)
        f->pump.blocked = false;
    return dt_pump_run(&f->pump, f->scratch, progress);
}

static void test_moves_bytes_in_order(void **state)
{
    fixture *f = *state;
    const uint64_t total = 24u << 20;
    uint64_t sent = 0, got = 0;
    int64_t deadline = now_ms() + 20000;
    bool progress = false;

    while (got < total && now_ms() < deadline) {
        feed(f->peer_a, &sent, total);
        assert_int_equal(run(f, &progress), 0);
        assert_int_equal(drain(f->peer_b, &got), 0);
    }
    assert_true(got == total);
    assert_true(f->pump.bytes == total);
    assert_true(progress);
    assert_false(f->pump.src_eof);
}

/* peer_b reads nothing: the pump stops, what is unsent stays in the source's
 * kernel buffer, and nothing is lost once peer_b reads again. */
static void test_backpressure_keeps_bytes_in_source(void **state)
{
    fixture *f = *state;
    const uint64_t total = 64u << 20;
    uint64_t sent = 0, got = 0;
    bool progress = false;
    int waiting = 0;

    for (int i = 0; i < 200 && !f->pump.blocked; i++) {
        feed(f->peer_a, &sent, total);
        assert_int_equal(dt_pump_run(&f->pump, f->scratch, &progress), 0);
    }
    assert_true(f->pump.blocked);
    assert_false(dt_pump_wants_input(&f->pump));
    feed(f->peer_a, &sent, total);
    assert_int_equal(ioctl(f->src, FIONREAD, &waiting), 0);
    assert_true(waiting > 0);
    assert_true(f->pump.bytes < sent);

    /* A blocked pump moves nothing, even when run again. */
    uint64_t before = f->pump.bytes;
    assert_int_equal(dt_pump_run(&f->pump, f->scratch, &progress), 0);
    assert_true(f->pump.bytes == before);

    int64_t deadline = now_ms() + 20000;
    while (got < total && now_ms() < deadline) {
        assert_int_equal(drain(f->peer_b, &got), 0);
        assert_int_equal(run(f, &progress), 0);
        feed(f->peer_a, &sent, total);
    }
    assert_true(got == total);
    assert_true(f->pump.bytes == total);
}

static void test_end_after_last_byte(void **state)
{
    fixture *f = *state;
    const uint64_t total = 300000;
    uint64_t sent = 0, got = 0;
    bool progress = false;
    int64_t deadline = now_ms() + 10000;

    while (sent < total && now_ms() < deadline) {
        feed(f->peer_a, &sent, total);
        assert_int_equal(run(f, &progress), 0);
        assert_int_equal(drain(f->peer_b, &got), 0);
    }
    assert_int_equal(shutdown(f->peer_a, SHUT_WR), 0);
    while (!f->pump.src_eof && now_ms() < deadline) {
        assert_int_equal(run(f, &progress), 0);
        assert_int_equal(drain(f->peer_b, &got), 0);
    }
    assert_true(f->pump.src_eof);
    assert_true(f->pump.bytes == total);
    assert_int_equal(drain(f->peer_b, &got), 0);
    assert_true(got == total);
    assert_false(dt_pump_wants_input(&f->pump));
}

/* What arrives after the flush started is not moved. */
static void test_flush_moves_only_what_was_there(void **state)
{
    fixture *f = *state;
    uint64_t sent = 0, got = 0;
    bool progress = false;
    int avail = 0;

    feed(f->peer_a, &sent, 50000);
    assert_true(sent == 50000);
    int64_t deadline = now_ms() + 5000;
    while (avail < 50000 && now_ms() < deadline)
        assert_int_equal(ioctl(f->src, FIONREAD, &avail), 0);
    assert_int_equal(avail, 50000);

    dt_pump_start_flush(&f->pump);
    assert_true(f->pump.flush_left == 50000);
    feed(f->peer_a, &sent, 60000); /* 10,000 more, too late */
    while (dt_pump_wants_input(&f->pump) && now_ms() < deadline)
        assert_int_equal(run(f, &progress), 0);
    assert_true(f->pump.bytes == 50000);
    assert_true(f->pump.flush_left == 0);
    assert_false(dt_pump_wants_input(&f->pump));

    int64_t quiet = now_ms() + 200;
    while (now_ms() < quiet)
        assert_int_equal(drain(f->peer_b, &got), 0);
    assert_true(got == 50000);
}

static void test_broken_destination(void **state)
{
    fixture *f = *state;
    uint64_t sent = 0;
    bool progress = false;
    int rc = 0;

    close(f->peer_b);
    f->peer_b = -1;
    int64_t deadline = now_ms() + 5000;
    while (rc == 0 && now_ms() < deadline) {
        feed(f->peer_a, &sent, sent + 65536);
        f->pump.blocked = false;
        rc = dt_pump_run(&f->pump, f->scratch, &progress);
    }
    assert_int_equal(rc, -1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_moves_bytes_in_order, setup, teardown),
        cmocka_unit_test_setup_teardown(test_backpressure_keeps_bytes_in_source, setup, teardown),
        cmocka_unit_test_setup_teardown(test_end_after_last_byte, setup, teardown),
        cmocka_unit_test_setup_teardown(test_flush_moves_only_what_was_there, setup, teardown),
        cmocka_unit_test_setup_teardown(test_broken_destination, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
