/*
 * test_stream.c - bodies far larger than detour may hold: 1 GiB up and
 * 1 GiB down with the SHA-256 intact, plus a fast client against a slow
 * origin and a slow client against a fast origin, where only backpressure
 * keeps memory flat. Every case checks detour's peak RSS (VmHWM) < 64 MiB.
 *
 * DT_STREAM_BYTES overrides the 1 GiB (for a quick local run).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "harness.h"

#define GIB (1024ULL * 1024 * 1024)
#define MIB (1024ULL * 1024)
#define VMHWM_LIMIT_KB (64L * 1024)

static th_env *env_of(void **state)
{
    return *state;
}

static uint64_t big_size(void)
{
    const char *v = getenv("DT_STREAM_BYTES");
    return v && *v ? strtoull(v, NULL, 10) : GIB;
}

/* Room for 1 GiB and a little more: the default limit is exactly 1 GiB. */
static void start(th_env *e)
{
    assert_int_equal(th_detour_std(e, "upstream_ms = 300000;", "max_body_bytes = 2000000000;"), 0);
}

static void check_memory(th_env *e, const char *what)
{
    long hwm = th_proc_vmhwm_kb(e->detour.pid);
    assert_true(hwm > 0);
    print_message("%s: detour VmHWM %ld KiB\n", what, hwm);
    if (th_proc_sanitized(e->detour.pid)) {
        print_message("%s: detour runs under AddressSanitizer; the 64 MiB bound is not checked\n",
                      what);
        return;
    }
    if (hwm >= VMHWM_LIMIT_KB)
        fail_msg("%s: detour VmHWM %ld KiB, limit %ld KiB", what, hwm, VMHWM_LIMIT_KB);
}

static void upload(th_env *e, const char *path, uint64_t n, bool chunked)
{
    char url[256], want[65], len[32];
    th_pattern_src src;
    th_resp rs;
    snprintf(url, sizeof(url), "%s%s", e->url, path);
    th_pattern_src_init(&src, n);
    th_req rq = {.method = "PUT",
                 .url = url,
                 .gen = th_pattern_gen,
                 .gen_ctx = &src,
                 .upload_len = chunked ? -1 : (int64_t)n,
                 .timeout_ms = 300000};
    int64_t t0 = th_now_ms();
    th_http(&rq, &rs);
    th_sha_final(&src.sha, want);
    print_message("upload %s %llu bytes%s: %lld ms\n", path, (unsigned long long)n,
                  chunked ? " chunked" : "", (long long)(th_now_ms() - t0));
    if (rs.rc != CURLE_OK || rs.status != 200)
        fail_msg("upload: status %ld, %s", rs.status, rs.err);
    snprintf(len, sizeof(len), "%llu", (unsigned long long)n);
    assert_string_equal(th_resp_hdr(&rs, "X-Body-Length"), len);
    assert_string_equal(th_resp_hdr(&rs, "X-Body-Sha256"), want);
    th_resp_free(&rs);
}

static void download(th_env *e, uint64_t n, bool chunked, int64_t recv_bps)
{
    char url[256], want[65];
    th_resp rs;
    snprintf(url, sizeof(url), "%s/bytes?n=%llu%s", e->url, (unsigned long long)n,
             chunked ? "&chunked=1" : "");
    th_req rq = {.url = url, .timeout_ms = 300000, .max_recv_bps = recv_bps};
    int64_t t0 = th_now_ms();
    th_http(&rq, &rs);
    print_message("download %llu bytes%s: %lld ms\n", (unsigned long long)n,
                  chunked ? " chunked" : "", (long long)(th_now_ms() - t0));
    th_pattern_sha256(n, want);
    if (rs.rc != CURLE_OK || rs.status != 200)
        fail_msg("download: status %ld, %s", rs.status, rs.err);
    assert_true(rs.body_total == n);
    assert_string_equal(rs.sha, want);
    th_resp_free(&rs);
}

static void test_upload_1gib(void **state)
{
    th_env *e = env_of(state);
    start(e);
    upload(e, "/echo/upload", big_size(), false);
    check_memory(e, "large upload");
}

static void test_download_1gib(void **state)
{
    th_env *e = env_of(state);
    start(e);
    download(e, big_size(), false, 0);
    check_memory(e, "large download");
}

static void test_chunked_both_ways(void **state)
{
    th_env *e = env_of(state);
    start(e);
    upload(e, "/echo/upload", 256 * MIB, true);
    download(e, 256 * MIB, true, 0);
    check_memory(e, "256 MiB chunked up and down");
}

/* The origin reads at 64 MiB/s, the client sends as fast as it can. */
static void test_slow_origin_reader(void **state)
{
    th_env *e = env_of(state);
    start(e);
    upload(e, "/echo/slow?rate=67108864", 192 * MIB, false);
    check_memory(e, "fast client, slow origin");
}

/* The client reads at 48 MiB/s, the origin sends as fast as it can. */
static void test_slow_client_reader(void **state)
{
    th_env *e = env_of(state);
    start(e);
    download(e, 192 * MIB, false, 48 * (int64_t)MIB);
    check_memory(e, "fast origin, slow client");
}

int main(void)
{
#define T(f) cmocka_unit_test_setup_teardown(f, th_it_setup, th_it_teardown)
    const struct CMUnitTest tests[] = {
        T(test_upload_1gib),        T(test_download_1gib),      T(test_chunked_both_ways),
        T(test_slow_origin_reader), T(test_slow_client_reader),
    };
#undef T
    return cmocka_run_group_tests(tests, NULL, NULL);
}
