/*
 * test_page.c - the HTML bodies of detour's own answers: reason phrases,
 * escaping, the exact redirect note, sizing and truncation.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <string.h>

#include "detour/page.h"

static dt_str str_of(const char *s)
{
    return (dt_str){s, strlen(s)};
}

static void test_reasons(void **state)
{
    (void)state;
    assert_string_equal(dt_status_reason(301), "Moved Permanently");
    assert_string_equal(dt_status_reason(302), "Found");
    assert_string_equal(dt_status_reason(303), "See Other");
    assert_string_equal(dt_status_reason(307), "Temporary Redirect");
    assert_string_equal(dt_status_reason(308), "Permanent Redirect");
    assert_string_equal(dt_status_reason(508), "Loop Detected");
    assert_string_equal(dt_status_reason(299), "Unknown");
}

static void test_escape(void **state)
{
    char out[128];
    (void)state;
    size_t n = dt_html_escape(out, sizeof out, str_of("a&b<c>d\"e'f"));
    assert_int_equal(n, strlen("a&amp;b&lt;c&gt;d&quot;e&#39;f"));
    assert_memory_equal(out, "a&amp;b&lt;c&gt;d&quot;e&#39;f", n);

    /* Too small: nothing written past CAP, the full length still reported. */
    memset(out, '#', sizeof out);
    n = dt_html_escape(out, 4, str_of("&&"));
    assert_int_equal(n, 10);
    assert_int_equal(out[4], '#');
}

static void test_redirect_note(void **state)
{
    static const char want[] =
        "<!DOCTYPE html>\n<html><head><title>307 Temporary Redirect</title></head>\n"
        "<body><h1>Temporary Redirect</h1>\n<p>The document is at "
        "<a href=\"http://new.example/old?a=1&amp;b=&quot;2&quot;\">this location</a>.</p>"
        "</body></html>\n";
    dt_str loc = str_of("http://new.example/old?a=1&b=\"2\"");
    char out[1024];
    (void)state;

    size_t cap = dt_page_redirect_size(loc);
    assert_true(cap <= sizeof out);
    size_t n = dt_page_redirect(out, cap, 307, loc);
    assert_int_equal(n, sizeof want - 1);
    assert_true(n <= cap);
    assert_memory_equal(out, want, n);

    n = dt_page_redirect(out, sizeof out, 301, str_of("/x"));
    assert_int_equal(n, strlen(out));
    assert_non_null(strstr(out, "<title>301 Moved Permanently</title>"));
    assert_non_null(strstr(out, "<h1>Moved Permanently</h1>"));
}

/* A location made only of bytes that escape to six: the size bound holds. */
static void test_redirect_size_bound(void **state)
{
    char loc[300], out[4096];
    (void)state;
    memset(loc, '"', sizeof loc);
    dt_str s = {loc, sizeof loc};
    size_t cap = dt_page_redirect_size(s);
    assert_true(cap <= sizeof out);
    size_t n = dt_page_redirect(out, cap, 308, s);
    assert_true(n < cap);
}

static void test_redirect_truncated(void **state)
{
    char out[64];
    (void)state;
    memset(out, '#', sizeof out);
    size_t full = dt_page_redirect(out, 32, 307, str_of("/somewhere"));
    assert_true(full > 32);
    for (size_t i = 32; i < sizeof out; i++)
        assert_int_equal(out[i], '#');
}

static void test_error_page(void **state)
{
    char out[2048];
    (void)state;
    size_t n = dt_page_error(out, sizeof out, 502, "upstream <b> refused");
    assert_true(n > 0 && n < sizeof out);
    assert_non_null(strstr(out, "<title>502 Bad Gateway</title>"));
    assert_non_null(strstr(out, "upstream &lt;b&gt; refused"));
    assert_null(strstr(out, "<b>"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_reasons),
        cmocka_unit_test(test_escape),
        cmocka_unit_test(test_redirect_note),
        cmocka_unit_test(test_redirect_size_bound),
        cmocka_unit_test(test_redirect_truncated),
        cmocka_unit_test(test_error_page),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
