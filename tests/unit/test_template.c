/*
 * test_template.c - Location templates: compile errors, expansion, encoding
 * of substituted values, buffer limits.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "detour/template.h"

static dt_str S(const char *s)
{
    return (dt_str){s, strlen(s)};
}

/* Variables of a request for /old/a.html?x=1 on shop.example. */
static dt_template_vars sample_vars(void)
{
    dt_template_vars v = {0};
    v.v[DT_TVAR_SCHEME] = S("https");
    v.v[DT_TVAR_HOST] = S("shop.example");
    v.v[DT_TVAR_URI] = S("/old/a.html");
    v.v[DT_TVAR_ARGS] = S("x=1");
    v.v[DT_TVAR_SUFFIX] = S("a.html");
    v.v[DT_TVAR_GROUP1] = S("a");
    v.v[DT_TVAR_GROUP1 + 1] = S("html");
    return v;
}

/* Compile SRC (must succeed) and expand it with VARS; returns a static buffer. */
static const char *expand(const char *src, const dt_template_vars *vars)
{
    static char out[1024];
    char err[128];
    dt_template *t = dt_template_compile(src, err, sizeof(err));
    if (!t)
        fail_msg("compile \"%s\": %s", src, err);
    long n = dt_template_expand(t, vars, out, sizeof(out));
    assert_true(n >= 0);
    assert_int_equal((size_t)n, strlen(out));
    dt_template_free(t);
    return out;
}

static void expect_compile_error(const char *src, const char *needle)
{
    char err[128];
    dt_template *t = dt_template_compile(src, err, sizeof(err));
    if (t)
        fail_msg("\"%s\" compiled", src);
    if (!strstr(err, needle))
        fail_msg("\"%s\": error \"%s\" lacks \"%s\"", src, err, needle);
}

static void test_compile_errors(void **state)
{
    expect_compile_error("$urifoo", "unknown variable \"$urifoo\"");
    expect_compile_error("/a/$nope", "unknown variable \"$nope\"");
    expect_compile_error("/a/${nope}x", "unknown variable \"$nope\"");
    expect_compile_error("/a/${uri", "unterminated");
    expect_compile_error("/a/$0", "unknown variable \"$0\"");
    expect_compile_error("/a/$", "'$' must start a variable");
    expect_compile_error("/a/$/b", "'$' must start a variable");
    expect_compile_error("/a b", "space");
    expect_compile_error("/a\r\nX-Evil: 1", "control");
    expect_compile_error("/a\tb", "control");
    expect_compile_error("/a\x7f", "control");
}

static void test_variables(void **state)
{
    dt_template_vars v = sample_vars();
    assert_string_equal(expand("https://new.example/$suffix$is_args$args", &v),
                        "https://new.example/a.html?x=1");
    assert_string_equal(expand("$scheme://$host$uri", &v), "https://shop.example/old/a.html");
    assert_string_equal(expand("/v2/$1.$2", &v), "/v2/a.html");
    assert_string_equal(expand("/v2/$12", &v), "/v2/a2");
    assert_string_equal(expand("/v2/${uri}x", &v), "/v2//old/a.htmlx");
    assert_string_equal(expand("/price/$$5", &v), "/price/$5");
    assert_string_equal(expand("/g/$3/$9", &v), "/g//");
    assert_string_equal(expand("/static", &v), "/static");
    assert_string_equal(expand("", &v), "");
}

static void test_derived_variables(void **state)
{
    dt_template_vars v = sample_vars();
    /* $request_uri and $is_args are derived when the caller leaves them unset. */
    assert_string_equal(expand("$request_uri", &v), "/old/a.html?x=1");
    v.v[DT_TVAR_ARGS] = S("");
    assert_string_equal(expand("/n$is_args$args", &v), "/n");
    assert_string_equal(expand("$request_uri", &v), "/old/a.html");
    /* A value the caller gives wins (the raw "path?" with an empty query). */
    v.v[DT_TVAR_REQUEST_URI] = S("/old/a.html?");
    assert_string_equal(expand("$request_uri", &v), "/old/a.html?");
}

static void test_substituted_values_are_encoded(void **state)
{
    dt_template_vars v = {0};
    v.v[DT_TVAR_URI] = (dt_str){"/a\r\nSet-Cookie: x\0y", 19};
    assert_string_equal(expand("$uri", &v), "/a%0D%0ASet-Cookie:%20x%00y");
    v.v[DT_TVAR_URI] = S("/\"<>\\^`{|}\x7f\x01");
    assert_string_equal(expand("$uri", &v), "/%22%3C%3E%5C%5E%60%7B%7C%7D%7F%01");
    v.v[DT_TVAR_URI] = S("/caf\xc3\xa9");
    assert_string_equal(expand("$uri", &v), "/caf%C3%A9");
    /* Never decoded: an encoded CR LF stays as the client sent it. */
    v.v[DT_TVAR_URI] = S("/a%0d%0aX:%20y");
    assert_string_equal(expand("$uri", &v), "/a%0d%0aX:%20y");
    /* Everything a URI may hold passes untouched. */
    v.v[DT_TVAR_ARGS] = S("a=1&b=%2F;c=~!*'()[]@:,+$#");
    assert_string_equal(expand("/$args", &v), "/a=1&b=%2F;c=~!*'()[]@:,+$#");
}

static void test_literals(void **state)
{
    dt_template_vars v = {0};
    assert_string_equal(expand("/caf\xc3\xa9/{x}", &v), "/caf%C3%A9/%7Bx%7D");
    char err[64];
    dt_template *t = dt_template_compile("/caf\xc3\xa9$uri", err, sizeof(err));
    assert_non_null(t);
    assert_string_equal(dt_template_source(t), "/caf\xc3\xa9$uri");
    assert_true(dt_template_is_relative(t));
    dt_template_free(t);
    t = dt_template_compile("https://x/", err, sizeof(err));
    assert_false(dt_template_is_relative(t));
    dt_template_free(t);
}

static void test_uses(void **state)
{
    char err[64];
    dt_template *t = dt_template_compile("$target/$1$mapped${suffix}$9$$", err, sizeof(err));
    assert_non_null(t);
    uint32_t want = (1u << DT_TVAR_TARGET) | (1u << DT_TVAR_GROUP1) | (1u << DT_TVAR_MAPPED) |
                    (1u << DT_TVAR_SUFFIX) | (1u << (DT_TVAR_GROUP1 + 8));
    assert_int_equal(dt_template_uses(t), want);
    dt_template_free(t);
}

static void test_protocol_relative_guard(void **state)
{
    dt_template_vars v = {0};
    v.v[DT_TVAR_GROUP1] = S("/evil.example/x");
    assert_string_equal(expand("/$1", &v), "/%2Fevil.example/x");
    v.v[DT_TVAR_URI] = S("//evil.example/");
    assert_string_equal(expand("$uri", &v), "/%2Fevil.example/");
    assert_string_equal(expand("/new$uri", &v), "/new//evil.example/");
    /* The operator's own "//", literal or from the map, is kept. */
    assert_string_equal(expand("//cdn.example$uri", &v), "//cdn.example//evil.example/");
    v.v[DT_TVAR_MAPPED] = S("//cdn.example/a");
    assert_string_equal(expand("$mapped", &v), "//cdn.example/a");
}

static void test_buffer_limits(void **state)
{
    char err[64], out[32];
    dt_template_vars v = {0};
    v.v[DT_TVAR_URI] = S("/abcdefghij"); /* 11 bytes */
    dt_template *t = dt_template_compile("/x$uri/", err, sizeof(err));
    assert_non_null(t);
    /* "/x/abcdefghij/" is 14 bytes: needs 15 with the NUL. */
    assert_int_equal(dt_template_expand(t, &v, out, 15), 14);
    assert_string_equal(out, "/x/abcdefghij/");
    assert_int_equal(dt_template_expand(t, &v, out, 14), -1);
    assert_int_equal(dt_template_expand(t, &v, out, 0), -1);
    /* Encoding counts: three bytes per encoded byte. */
    v.v[DT_TVAR_URI] = S("/\r\r\r\r");
    assert_int_equal(dt_template_expand(t, &v, out, 17), 16);
    assert_string_equal(out, "/x/%0D%0D%0D%0D/");
    assert_int_equal(dt_template_expand(t, &v, out, 16), -1);
    dt_template_free(t);

    assert_int_equal(dt_uri_encode_into(S("a b"), out, 6), 5);
    assert_string_equal(out, "a%20b");
    assert_int_equal(dt_uri_encode_into(S("a b"), out, 5), -1);
    assert_int_equal(dt_uri_encode_into(S(""), out, 1), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_compile_errors),
        cmocka_unit_test(test_variables),
        cmocka_unit_test(test_derived_variables),
        cmocka_unit_test(test_substituted_values_are_encoded),
        cmocka_unit_test(test_literals),
        cmocka_unit_test(test_uses),
        cmocka_unit_test(test_protocol_relative_guard),
        cmocka_unit_test(test_buffer_limits),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
