/*
 * test_sticky.c - the stickiness hash (fixed values, so every instance and
 * every release agree), the percent threshold and the Cookie lookup.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include <cmocka.h>

#include "detour/sticky.h"

static dt_str S(const char *s)
{
    return (dt_str){s, strlen(s)};
}

static void test_hash_is_fnv1a_64(void **state)
{
    /* FNV-1a 64 of the single byte 0x00 (empty name, separator, empty key). */
    assert_true(dt_sticky_hash(S(""), S("")) == 0xaf63bd4c8601b7dfull);
    /* A pinned value: changing the hash would move clients between sides. */
    assert_true(dt_sticky_hash(S("v1-to-v2"), S("203.0.113.7")) == 0x82916afc39da80f6ull);
    assert_int_equal(dt_sticky_bucket(S("v1-to-v2"), S("203.0.113.7")), 822);
    /* The separator keeps name and key apart. */
    assert_true(dt_sticky_hash(S("ab"), S("c")) != dt_sticky_hash(S("a"), S("bc")));
}

static void test_percent_edges(void **state)
{
    /* Bucket 822 is in at 9% (< 900) and out at 8% (>= 800). */
    assert_true(dt_sticky_selected(S("v1-to-v2"), S("203.0.113.7"), 9));
    assert_false(dt_sticky_selected(S("v1-to-v2"), S("203.0.113.7"), 8));
    assert_false(dt_sticky_selected(S("r"), S("x"), 0));
    assert_false(dt_sticky_selected(S("r"), S("x"), -5));
    assert_true(dt_sticky_selected(S("r"), S("x"), 100));
    assert_true(dt_sticky_selected(S("r"), S("x"), 250));
}

static void ip_of(unsigned i, char *buf, size_t cap)
{
    snprintf(buf, cap, "10.%u.%u.%u", (i >> 16) & 255, (i >> 8) & 255, i & 255);
}

static void test_distribution_and_superset(void **state)
{
    const int steps[] = {1, 5, 25, 50, 75, 99};
    unsigned in[DT_ARRAY_LEN(steps)] = {0};
    char ip[32];
    for (unsigned i = 0; i < 10000; i++) {
        ip_of(i, ip, sizeof(ip));
        bool was_in = false;
        for (size_t s = 0; s < DT_ARRAY_LEN(steps); s++) {
            bool now_in = dt_sticky_selected(S("v1-to-v2"), S(ip), steps[s]);
            /* A client selected at a lower percent stays selected at a higher one. */
            assert_true(!was_in || now_in);
            was_in = now_in;
            in[s] += now_in;
        }
    }
    for (size_t s = 0; s < DT_ARRAY_LEN(steps); s++) {
        int want = steps[s] * 100;
        if ((int)in[s] < want - 200 || (int)in[s] > want + 200)
            fail_msg("%d%%: %u of 10000 selected", steps[s], in[s]);
    }
}

static void test_routes_are_independent(void **state)
{
    /* The same clients must not always land on the same side of every route. */
    char ip[32];
    unsigned both = 0;
    for (unsigned i = 0; i < 10000; i++) {
        ip_of(i, ip, sizeof(ip));
        both += dt_sticky_selected(S("route-a"), S(ip), 50) &&
                dt_sticky_selected(S("route-b"), S(ip), 50);
    }
    assert_in_range(both, 2300, 2700);
}

static void expect_cookie(const char *header, const char *name, const char *want)
{
    dt_str v = {0};
    bool found = dt_cookie_find(S(header), S(name), &v);
    if (!want) {
        if (found)
            fail_msg("%s in \"%s\": found \"%.*s\"", name, header, (int)v.n, v.p);
        return;
    }
    if (!found)
        fail_msg("%s in \"%s\": not found", name, header);
    if (!dt_str_eq(v, S(want)))
        fail_msg("%s in \"%s\": \"%.*s\", want \"%s\"", name, header, (int)v.n, v.p, want);
}

static void test_cookie_find(void **state)
{
    expect_cookie("uid=42", "uid", "42");
    expect_cookie("a=1; uid=42; b=2", "uid", "42");
    expect_cookie("a=1;uid=42", "uid", "42");
    expect_cookie("  uid = 42 ;", "uid", "42");
    expect_cookie("xuid=1; uidx=2; uid=3", "uid", "3");
    expect_cookie("uid=", "uid", "");
    expect_cookie("uid=\"q\"", "uid", "\"q\"");
    expect_cookie("tok=a=b", "tok", "a=b");
    expect_cookie("UID=1", "uid", NULL);
    expect_cookie("flag; uid", "uid", NULL);
    expect_cookie("", "uid", NULL);
    expect_cookie(";;;", "uid", NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_hash_is_fnv1a_64),
        cmocka_unit_test(test_percent_edges),
        cmocka_unit_test(test_distribution_and_superset),
        cmocka_unit_test(test_routes_are_independent),
        cmocka_unit_test(test_cookie_find),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
