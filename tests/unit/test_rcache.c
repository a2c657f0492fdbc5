/*
 * test_rcache.c - the per-worker cache of redirect answers: what an answer
 * carries, hits and misses by the whole key, pinned entries never evicted,
 * over-long Locations never cached, and teardown (LSan checks it frees all).
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <microhttpd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "detour/page.h"
#include "detour/rcache.h"

/* 1994-11-06 08:49:37 UTC, RFC 9110's example date */
#define NOW 784111777

static dt_str str_of(const char *s)
{
    return (dt_str){s, strlen(s)};
}

static void test_answer_headers(void **state)
{
    const char *loc = "https://new.example/a?b=1&c=<2>";
    char note[512];
    size_t n = 0;
    (void)state;

    struct MHD_Response *resp = dt_redirect_response(307, str_of(loc), -1, NULL, &n);
    assert_non_null(resp);
    assert_int_equal(n, dt_page_redirect(note, sizeof note, 307, str_of(loc)));
    assert_string_equal(MHD_get_response_header(resp, "Location"), loc);
    assert_string_equal(MHD_get_response_header(resp, "Cache-Control"), "no-store");
    assert_string_equal(MHD_get_response_header(resp, "Content-Type"), "text/html; charset=utf-8");
    assert_null(MHD_get_response_header(resp, "Retry-After"));
    assert_null(MHD_get_response_header(resp, "Connection"));
    assert_null(MHD_get_response_header(resp, "Date")); /* libmicrohttpd adds it */
    MHD_destroy_response(resp);

    resp = dt_redirect_response(302, str_of("/x"), 120, "Sun, 06 Nov 1994 08:49:37 GMT", &n);
    assert_non_null(resp);
    assert_string_equal(MHD_get_response_header(resp, "Retry-After"), "120");
    assert_string_equal(MHD_get_response_header(resp, "Date"), "Sun, 06 Nov 1994 08:49:37 GMT");
    MHD_destroy_response(resp);
}

static void test_hit_needs_the_whole_key(void **state)
{
    dt_rcache *c = calloc(1, sizeof *c);
    (void)state;
    assert_non_null(c);

    dt_rcache_entry *a = dt_rcache_get(c, 307, str_of("/v2/a"), -1, NOW);
    assert_non_null(a);
    assert_int_equal(c->misses, 1);
    dt_rcache_entry *again = dt_rcache_get(c, 307, str_of("/v2/a"), -1, NOW);
    assert_ptr_equal(again, a);
    assert_int_equal(c->hits, 1);
    assert_int_equal(a->pins, 2);
    assert_string_equal(MHD_get_response_header(a->resp, "Location"), "/v2/a");

    /* Another status, Retry-After or Location is another answer. */
    const struct {
        int status, retry;
        const char *loc;
    } other[] = {{308, -1, "/v2/a"}, {307, 30, "/v2/a"}, {307, -1, "/v2/a/"}, {307, -1, "/v2/b"}};
    for (size_t i = 0; i < sizeof other / sizeof other[0]; i++) {
        unsigned long misses = (unsigned long)c->misses;
        dt_rcache_entry *e =
            dt_rcache_get(c, other[i].status, str_of(other[i].loc), other[i].retry, NOW);
        assert_int_equal(c->misses, misses + 1);
        assert_ptr_not_equal(e, a); /* NULL (a's slot, pinned) or another slot */
        if (e != NULL) {
            assert_int_equal(e->status, other[i].status);
            assert_int_equal(e->retry_after, other[i].retry);
            assert_string_equal(e->location, other[i].loc);
            dt_rcache_unpin(e);
        }
    }
    dt_rcache_unpin(a);
    dt_rcache_unpin(again);
    assert_int_equal(a->pins, 0);
    dt_rcache_clear(c);
    free(c);
}

static void test_pinned_entry_is_never_evicted(void **state)
{
    dt_rcache *c = calloc(1, sizeof *c);
    char loc[32];
    dt_rcache_entry *e = NULL;
    int i;
    (void)state;
    assert_non_null(c);

    dt_rcache_entry *a = dt_rcache_get(c, 307, str_of("/held"), -1, NOW);
    assert_non_null(a);
    /* Find a Location that maps to a's slot: it cannot be cached while a is held. */
    for (i = 0; i < 100000; i++) {
        snprintf(loc, sizeof loc, "/other/%d", i);
        e = dt_rcache_get(c, 307, str_of(loc), -1, NOW);
        if (e == NULL)
            break;
        dt_rcache_unpin(e);
    }
    assert_null(e);
    assert_string_equal(a->location, "/held");
    assert_string_equal(MHD_get_response_header(a->resp, "Location"), "/held");

    /* Once let go, the slot takes the new answer. */
    dt_rcache_unpin(a);
    e = dt_rcache_get(c, 307, str_of(loc), -1, NOW);
    assert_ptr_equal(e, a);
    assert_string_equal(e->location, loc);
    assert_string_equal(MHD_get_response_header(e->resp, "Location"), loc);
    dt_rcache_unpin(e);
    dt_rcache_clear(c);
    free(c);
}

static void test_long_location_not_cached(void **state)
{
    dt_rcache *c = calloc(1, sizeof *c);
    char *loc = malloc(DT_RCACHE_LOCATION_MAX + 2);
    (void)state;
    assert_non_null(c);
    assert_non_null(loc);

    memset(loc, 'a', DT_RCACHE_LOCATION_MAX + 1);
    loc[0] = '/';
    loc[DT_RCACHE_LOCATION_MAX + 1] = '\0';
    assert_null(dt_rcache_get(c, 307, str_of(loc), -1, NOW));
    loc[DT_RCACHE_LOCATION_MAX] = '\0'; /* the longest that is kept */
    dt_rcache_entry *e = dt_rcache_get(c, 307, str_of(loc), -1, NOW);
    assert_non_null(e);
    assert_int_equal(e->location_len, DT_RCACHE_LOCATION_MAX);
    dt_rcache_unpin(e);
    dt_rcache_clear(c);
    free(c);
    free(loc);
}

/* A cached answer carries the Date of its second and is remade in the next. */
static void test_answer_date_is_current(void **state)
{
    dt_rcache *c = calloc(1, sizeof *c);
    (void)state;
    assert_non_null(c);

    dt_rcache_entry *e = dt_rcache_get(c, 307, str_of("/d"), -1, NOW);
    assert_non_null(e);
    assert_string_equal(MHD_get_response_header(e->resp, "Date"), "Sun, 06 Nov 1994 08:49:37 GMT");
    dt_rcache_unpin(e);
    e = dt_rcache_get(c, 307, str_of("/d"), -1, NOW);
    assert_int_equal(c->hits, 1);
    dt_rcache_unpin(e);

    e = dt_rcache_get(c, 307, str_of("/d"), -1, NOW + 1);
    assert_non_null(e);
    assert_int_equal(c->hits, 1);
    assert_int_equal(e->date_sec, NOW + 1);
    assert_string_equal(MHD_get_response_header(e->resp, "Date"), "Sun, 06 Nov 1994 08:49:38 GMT");

    /* Held by a request, last second's answer is not remade under it. */
    assert_null(dt_rcache_get(c, 307, str_of("/d"), -1, NOW + 2));
    assert_string_equal(MHD_get_response_header(e->resp, "Date"), "Sun, 06 Nov 1994 08:49:38 GMT");
    dt_rcache_unpin(e);
    dt_rcache_clear(c);
    free(c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_answer_headers),
        cmocka_unit_test(test_hit_needs_the_whole_key),
        cmocka_unit_test(test_pinned_entry_is_never_evicted),
        cmocka_unit_test(test_long_location_not_cached),
        cmocka_unit_test(test_answer_date_is_current),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
