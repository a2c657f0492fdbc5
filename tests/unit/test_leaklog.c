/*
 * test_leaklog.c - the once-per-upstream-per-minute budget of Location leak
 * log lines: per name, across the interval boundary, with held-back counts,
 * a clock that went back, more names than slots, many threads at once, and
 * the line's escaping.
 */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include <cmocka.h>

#include "detour/leaklog.h"

static dt_str S(const char *s)
{
    return (dt_str){s, strlen(s)};
}

static dt_leaklog *fresh(void)
{
    dt_leaklog *l = malloc(sizeof *l);
    assert_non_null(l);
    dt_leaklog_init(l);
    return l;
}

static void test_once_per_interval(void **state)
{
    dt_leaklog *l = fresh();
    uint64_t held = 99;
    const int64_t t0 = 1000;

    assert_true(dt_leaklog_due(l, S("legacy"), t0, &held));
    assert_int_equal(held, 0);
    for (int64_t t = t0; t < t0 + DT_LEAKLOG_INTERVAL_S; t += 7)
        assert_false(dt_leaklog_due(l, S("legacy"), t, &held));
    assert_false(dt_leaklog_due(l, S("legacy"), t0 + DT_LEAKLOG_INTERVAL_S - 1, NULL));
    /* Exactly one interval later the next line may go out, with the count. */
    held = 0;
    assert_true(dt_leaklog_due(l, S("legacy"), t0 + DT_LEAKLOG_INTERVAL_S, &held));
    assert_int_equal(held, 10); /* 9 in the loop + 1 */
    /* The budget restarts from the line that went out, not from t0. */
    assert_false(dt_leaklog_due(l, S("legacy"), t0 + 2 * DT_LEAKLOG_INTERVAL_S - 1, NULL));
    assert_true(dt_leaklog_due(l, S("legacy"), t0 + 2 * DT_LEAKLOG_INTERVAL_S, &held));
    assert_int_equal(held, 1);
    free(l);
}

static void test_time_zero_and_long_silence(void **state)
{
    dt_leaklog *l = fresh();
    uint64_t held = 7;

    /* A zeroed table must not mistake t = 0 for "logged at 0". */
    assert_true(dt_leaklog_due(l, S("a"), 0, &held));
    assert_int_equal(held, 0);
    assert_false(dt_leaklog_due(l, S("a"), 0, NULL));
    assert_true(dt_leaklog_due(l, S("a"), 1000000, &held));
    assert_int_equal(held, 1);
    free(l);
}

static void test_names_are_independent(void **state)
{
    dt_leaklog *l = fresh();

    assert_true(dt_leaklog_due(l, S("legacy"), 50, NULL));
    assert_true(dt_leaklog_due(l, S("billing"), 51, NULL));
    assert_false(dt_leaklog_due(l, S("legacy"), 52, NULL));
    assert_false(dt_leaklog_due(l, S("billing"), 52, NULL));
    /* Names are bytes: case and prefixes make other names. */
    assert_true(dt_leaklog_due(l, S("Legacy"), 52, NULL));
    assert_true(dt_leaklog_due(l, S("legacy2"), 52, NULL));
    assert_true(dt_leaklog_due(l, S(""), 52, NULL));
    assert_false(dt_leaklog_due(l, S(""), 53, NULL));
    free(l);
}

static void test_clock_went_back(void **state)
{
    dt_leaklog *l = fresh();

    assert_true(dt_leaklog_due(l, S("u"), 100000, NULL));
    /* Less than an interval back: still inside the budget. */
    assert_false(dt_leaklog_due(l, S("u"), 100000 - 10, NULL));
    /* Far back (wall time set back by hours): not muted until it catches up. */
    assert_true(dt_leaklog_due(l, S("u"), 100000 - 7200, NULL));
    assert_false(dt_leaklog_due(l, S("u"), 100000 - 7200 + 1, NULL));
    free(l);
}

static void test_more_names_than_slots(void **state)
{
    dt_leaklog *l = fresh();
    char name[32];
    size_t n = DT_LEAKLOG_SLOTS + 40;

    for (size_t i = 0; i < DT_LEAKLOG_SLOTS; i++) {
        snprintf(name, sizeof name, "up-%zu", i);
        assert_true(dt_leaklog_due(l, S(name), 10, NULL));
    }
    /* The table is full: the rest share the spill slot, one line for all. */
    size_t spilled_true = 0;
    for (size_t i = DT_LEAKLOG_SLOTS; i < n; i++) {
        snprintf(name, sizeof name, "up-%zu", i);
        spilled_true += dt_leaklog_due(l, S(name), 10, NULL);
    }
    assert_int_equal(spilled_true, 1);
    /* Names that own a slot keep it. */
    for (size_t i = 0; i < DT_LEAKLOG_SLOTS; i++) {
        snprintf(name, sizeof name, "up-%zu", i);
        assert_false(dt_leaklog_due(l, S(name), 11, NULL));
        assert_true(dt_leaklog_due(l, S(name), 10 + DT_LEAKLOG_INTERVAL_S, NULL));
    }
    free(l);
}

typedef struct race {
    dt_leaklog *l;
    pthread_barrier_t *go;
    int64_t now;
    unsigned wins;
} race;

static void *race_main(void *arg)
{
    race *r = arg;
    pthread_barrier_wait(r->go);
    for (int i = 0; i < 20000; i++)
        r->wins += dt_leaklog_due(r->l, S(i % 2 ? "odd" : "even"), r->now + i / 10000, NULL);
    return NULL;
}

/* Many workers leaking at once: still exactly one line per name and minute. */
static void test_threads_agree(void **state)
{
    enum { NTHREADS = 8 };
    dt_leaklog *l = fresh();
    pthread_barrier_t go;
    pthread_t t[NTHREADS];
    race r[NTHREADS];
    unsigned wins = 0;
    uint64_t held = 0;

    pthread_barrier_init(&go, NULL, NTHREADS);
    for (int i = 0; i < NTHREADS; i++) {
        r[i] = (race){.l = l, .go = &go, .now = 5000};
        assert_int_equal(pthread_create(&t[i], NULL, race_main, &r[i]), 0);
    }
    for (int i = 0; i < NTHREADS; i++) {
        pthread_join(t[i], NULL);
        wins += r[i].wins;
    }
    pthread_barrier_destroy(&go);
    /* now and now + 1 are one interval for both names: one win each. */
    assert_int_equal(wins, 2);
    /* Every other call was held back and is reported with the next line. */
    assert_true(dt_leaklog_due(l, S("odd"), 5000 + DT_LEAKLOG_INTERVAL_S, &held));
    assert_int_equal(held, NTHREADS * 10000 - 1);
    free(l);
}

static void test_format(void **state)
{
    char out[1024];
    size_t n;

    n = dt_leaklog_format(out, sizeof out, S("legacy"), S("http://10.0.0.5:9000/x?y=1"), 0);
    assert_string_equal(out, "upstream legacy: Location \"http://10.0.0.5:9000/x?y=1\" names an "
                             "internal origin and reaches the client unchanged");
    assert_int_equal(n, strlen(out));

    dt_leaklog_format(out, sizeof out, S("legacy"), S("http://127.0.0.1/"), 41);
    const char *tail = "unchanged (41 more since the last report)";
    assert_non_null(strstr(out, tail));
    assert_int_equal(strlen(strstr(out, tail)), strlen(tail));
}

static void test_format_escapes(void **state)
{
    char out[1024];
    /* A Location cannot forge a second log line or break the quoting. */
    dt_str loc = {"http://10.0.0.1/a\r\nfake: \"x\"\\\x01\xc3\xa9", 32};

    dt_leaklog_format(out, sizeof out, S("u"), loc, 0);
    assert_null(strchr(out, '\r'));
    assert_null(strchr(out, '\n'));
    assert_non_null(
        strstr(out, "\"http://10.0.0.1/a\\x0d\\x0afake: \\x22x\\x22\\x5c\\x01\\xc3\\xa9\" "));
}

static void test_format_bounds(void **state)
{
    char big[DT_LEAKLOG_LOCATION_MAX + 100];
    char out[2048], small[16];

    memset(big, 'a', sizeof big);
    size_t n = dt_leaklog_format(out, sizeof out, S("u"), (dt_str){big, sizeof big}, 0);
    assert_int_equal(n, strlen(out));
    /* Cut to the maximum, marked with "...". */
    char want[DT_LEAKLOG_LOCATION_MAX + 8];
    memset(want, 'a', DT_LEAKLOG_LOCATION_MAX);
    memcpy(want + DT_LEAKLOG_LOCATION_MAX, "...\"", 5);
    assert_non_null(strstr(out, want));

    /* A small buffer gets a NUL-terminated prefix; the return says what was needed. */
    memset(small, 'z', sizeof small);
    size_t need = dt_leaklog_format(small, sizeof small, S("legacy"), S("http://10.0.0.1/"), 3);
    assert_int_equal(strlen(small), sizeof small - 1);
    assert_memory_equal(small, "upstream legacy", 15);
    dt_leaklog_format(out, sizeof out, S("legacy"), S("http://10.0.0.1/"), 3);
    assert_int_equal(need, strlen(out));
    assert_int_equal(dt_leaklog_format(NULL, 0, S("legacy"), S("http://10.0.0.1/"), 3), need);
}

static void test_global_table(void **state)
{
    assert_non_null(dt_leaklog_global());
    assert_ptr_equal(dt_leaklog_global(), dt_leaklog_global());
    /* The report path decides on the global table: its first leak is due. */
    dt_leaklog_report("test-global", S("http://127.0.0.1/"));
    assert_false(dt_leaklog_due(dt_leaklog_global(), S("test-global"), dt_now_ms() / 1000, NULL));
    dt_leaklog_report(NULL, S("http://127.0.0.1/"));
    assert_false(dt_leaklog_due(dt_leaklog_global(), S("-"), dt_now_ms() / 1000, NULL));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_once_per_interval),
        cmocka_unit_test(test_time_zero_and_long_silence),
        cmocka_unit_test(test_names_are_independent),
        cmocka_unit_test(test_clock_went_back),
        cmocka_unit_test(test_more_names_than_slots),
        cmocka_unit_test(test_threads_agree),
        cmocka_unit_test(test_format),
        cmocka_unit_test(test_format_escapes),
        cmocka_unit_test(test_format_bounds),
        cmocka_unit_test(test_global_table),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
