/*
 * test_httpdate.c - the Date value detour formats itself: every field
 * against glibc's gmtime_r/strftime over leap days, century years, month
 * and year ends and a sweep of seconds, the clamped ends, and the
 * once-a-second cache.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <string.h>
#include <time.h>

#include "detour/httpdate.h"

/* What strftime says (the C locale's day and month names are the HTTP ones). */
static void reference(int64_t sec, char out[64])
{
    time_t t = (time_t)sec;
    struct tm tm;
    assert_non_null(gmtime_r(&t, &tm));
    assert_int_equal(strftime(out, 64, "%a, %d %b %Y %H:%M:%S GMT", &tm), DT_HTTPDATE_LEN);
}

static void check(int64_t sec)
{
    char want[64], got[DT_HTTPDATE_LEN + 1];
    reference(sec, want);
    assert_int_equal(dt_httpdate_format(sec, got), DT_HTTPDATE_LEN);
    assert_string_equal(got, want);
}

static void test_known_dates(void **state)
{
    char got[DT_HTTPDATE_LEN + 1];
    (void)state;

    dt_httpdate_format(784111777, got);
    assert_string_equal(got, "Sun, 06 Nov 1994 08:49:37 GMT"); /* RFC 9110 §5.6.7 */
    dt_httpdate_format(0, got);
    assert_string_equal(got, "Thu, 01 Jan 1970 00:00:00 GMT");
    dt_httpdate_format(951782400, got);
    assert_string_equal(got, "Tue, 29 Feb 2000 00:00:00 GMT"); /* a 400-year leap day */
    dt_httpdate_format(4107542400, got);
    assert_string_equal(got, "Mon, 01 Mar 2100 00:00:00 GMT"); /* 2100 has no 29 Feb */
}

static void test_agrees_with_gmtime(void **state)
{
    (void)state;
    /* Around every month end from 1970 to 2200, and the last second of 9999. */
    for (int64_t day = 0; day < 84000; day++) {
        int64_t sec = day * 86400;
        check(sec);
        check(sec + 86399);
    }
    check(253402300799LL);
    /* A sweep of odd seconds across decades, for the time of day. */
    for (int64_t sec = 1; sec < 4102444800LL; sec += 7919 * 13 + 1)
        check(sec);
}

static void test_clamps_out_of_range(void **state)
{
    char got[DT_HTTPDATE_LEN + 1];
    (void)state;

    dt_httpdate_format(-5, got);
    assert_string_equal(got, "Thu, 01 Jan 1970 00:00:00 GMT");
    dt_httpdate_format(INT64_MAX, got);
    assert_string_equal(got, "Fri, 31 Dec 9999 23:59:59 GMT");
}

static void test_formats_once_a_second(void **state)
{
    dt_httpdate d = {0};
    (void)state;

    const char *a = dt_httpdate_at(&d, 0); /* a zeroed cache still formats */
    assert_string_equal(a, "Thu, 01 Jan 1970 00:00:00 GMT");
    assert_string_equal(dt_httpdate_at(&d, 784111777), "Sun, 06 Nov 1994 08:49:37 GMT");
    d.text[5] = 'X'; /* the same second must not format again */
    assert_int_equal(dt_httpdate_at(&d, 784111777)[5], 'X');
    assert_string_equal(dt_httpdate_at(&d, 784111778), "Sun, 06 Nov 1994 08:49:38 GMT");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_known_dates),
        cmocka_unit_test(test_agrees_with_gmtime),
        cmocka_unit_test(test_clamps_out_of_range),
        cmocka_unit_test(test_formats_once_a_second),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
