/*
 * bench_stream.c - a byte source and a sink for measuring a stream through
 * a CONNECT tunnel against the same stream on a direct connection
 * (tests/bench/modes.sh). Nothing in it is detour's: both ends are as cheap
 * as a socket allows, so that the difference is the tunnel's cost.
 *
 *   bench_stream serve PORT            source on 127.0.0.1:PORT: a connection sends
 *                                      "GET /N ..." and gets a 200 with N bytes, then a close
 *   bench_stream get PORT N            read N bytes straight from the source
 *   bench_stream tunnel PROXY PORT N   the same through detour at 127.0.0.1:PROXY
 *                                      ("CONNECT 127.0.0.1:PORT")
 *
 * get and tunnel print one line: "bytes N seconds S MBps R" (MB = 10^6
 * bytes) and exit 0, or a reason on stderr and exit 1.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define BLOCK (256 * 1024)

static char block[BLOCK];

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int send_all(int fd, const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return -1;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

/* Read up to the end of a head ("\r\n\r\n") without reading past it. */
static int read_head(int fd, char *buf, size_t cap)
{
    size_t n = 0;
    while (n + 1 < cap) {
        ssize_t r = recv(fd, buf + n, 1, 0);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return -1;
        n++;
        buf[n] = '\0';
        if (n >= 4 && memcmp(buf + n - 4, "\r\n\r\n", 4) == 0)
            return 0;
    }
    return -1;
}

/* ---- the source ------------------------------------------------------------- */

static void *serve_one(void *arg)
{
    int fd = (int)(intptr_t)arg;
    char head[4096], line[128];
    unsigned long long n = 0;

    if (read_head(fd, head, sizeof(head)) == 0 && sscanf(head, "GET /%llu ", &n) == 1) {
        int len =
            snprintf(line, sizeof(line),
                     "HTTP/1.1 200 OK\r\nContent-Length: %llu\r\nConnection: close\r\n\r\n", n);
        if (send_all(fd, line, (size_t)len) == 0)
            while (n > 0) {
                size_t k = n < BLOCK ? (size_t)n : BLOCK;
                if (send_all(fd, block, k) < 0)
                    break;
                n -= k;
            }
    }
    close(fd);
    return NULL;
}

static int listen_on(int port)
{
    struct sockaddr_in a = {.sin_family = AF_INET,
                            .sin_port = htons((uint16_t)port),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    int one = 1, fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) != 0 ||
        bind(fd, (struct sockaddr *)&a, sizeof(a)) != 0 || listen(fd, 128) != 0) {
        perror("bench_stream: listen");
        return -1;
    }
    return fd;
}

static int serve(int port)
{
    int lfd = listen_on(port);
    if (lfd < 0)
        return 1;
    for (;;) {
        int fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
        pthread_t t;
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            perror("bench_stream: accept");
            return 1;
        }
        if (pthread_create(&t, NULL, serve_one, (void *)(intptr_t)fd) != 0) {
            close(fd);
            continue;
        }
        pthread_detach(t);
    }
}

/* ---- the sink ----------------------------------------------------------------- */

static int connect_to(int port)
{
    struct sockaddr_in a = {.sin_family = AF_INET,
                            .sin_port = htons((uint16_t)port),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    int one = 1, fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof(a)) != 0) {
        perror("bench_stream: connect");
        return -1;
    }
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    return fd;
}

static int fetch(int proxy, int port, unsigned long long n)
{
    static char buf[BLOCK];
    char req[256], head[4096];
    unsigned long long got = 0, want = 0;
    int fd = connect_to(proxy > 0 ? proxy : port);
    if (fd < 0)
        return 1;
    double t0 = now_s();
    if (proxy > 0) {
        int len =
            snprintf(req, sizeof(req),
                     "CONNECT 127.0.0.1:%d HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n\r\n", port, port);
        if (send_all(fd, req, (size_t)len) < 0 || read_head(fd, head, sizeof(head)) < 0 ||
            strncmp(head, "HTTP/1.1 200", 12) != 0) {
            fprintf(stderr, "bench_stream: CONNECT refused: %.80s\n", head);
            return 1;
        }
    }
    int len = snprintf(req, sizeof(req), "GET /%llu HTTP/1.1\r\nHost: x\r\n\r\n", n);
    if (send_all(fd, req, (size_t)len) < 0 || read_head(fd, head, sizeof(head)) < 0 ||
        sscanf(head, "HTTP/1.1 200 OK\r\nContent-Length: %llu", &want) != 1 || want != n) {
        fprintf(stderr, "bench_stream: bad answer: %.80s\n", head);
        return 1;
    }
    while (got < n) {
        ssize_t r = recv(fd, buf, sizeof(buf), 0);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0) {
            fprintf(stderr, "bench_stream: the stream ended after %llu of %llu bytes\n", got, n);
            return 1;
        }
        got += (unsigned long long)r;
    }
    double s = now_s() - t0;
    close(fd);
    printf("bytes %llu seconds %.3f MBps %.1f\n", got, s, (double)got / s / 1e6);
    return 0;
}

int main(int argc, char **argv)
{
    signal(SIGPIPE, SIG_IGN);
    memset(block, 'x', sizeof(block));
    if (argc == 3 && strcmp(argv[1], "serve") == 0)
        return serve(atoi(argv[2]));
    if (argc == 4 && strcmp(argv[1], "get") == 0)
        return fetch(0, atoi(argv[2]), strtoull(argv[3], NULL, 10));
    if (argc == 5 && strcmp(argv[1], "tunnel") == 0)
        return fetch(atoi(argv[2]), atoi(argv[3]), strtoull(argv[4], NULL, 10));
    fprintf(stderr, "usage: bench_stream serve PORT | get PORT N | tunnel PROXY PORT N\n");
    return 2;
}
