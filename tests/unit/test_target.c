/*
 * test_target.c - request-target forms and authority splitting, checked
 * byte for byte (nothing may be decoded or normalised).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>

#include <cmocka.h>

#include "detour/target.h"

static dt_str cstr(const char *s)
{
    return (dt_str){s, s ? strlen(s) : 0};
}

/* Compare a parsed part with the expected text (NULL: must be empty). */
static void expect_part(const char *raw, const char *what, dt_str got, const char *want)
{
    dt_str w = cstr(want ? want : "");
    if (!dt_str_eq(got, w))
        fail_msg("%s: %s is \"%.*s\", expected \"%s\"", raw, what, (int)got.n, got.p ? got.p : "",
                 w.p);
}

typedef struct target_case {
    const char *raw;
    bool connect;
    int rc;
    dt_target_form form;
    const char *scheme, *authority, *host;
    unsigned port;
    const char *path, *query;
    bool has_query;
    const char *origin_form; /* as dt_target_origin_form() writes it */
} target_case;

/* A target that must be refused. */
#define BAD(r, c)                                                                                  \
    {                                                                                              \
        .raw = (r), .connect = (c), .rc = DT_EINVAL                                                \
    }

static const target_case target_cases[] = {
    /* origin-form: raw bytes kept, only split at the first '?' */
    {"/", false, DT_OK, DT_TARGET_ORIGIN, NULL, NULL, NULL, 0, "/", NULL, false, "/"},
    {"/a%2Fb/../c?x=%20&y", false, DT_OK, DT_TARGET_ORIGIN, NULL, NULL, NULL, 0, "/a%2Fb/../c",
     "x=%20&y", true, "/a%2Fb/../c?x=%20&y"},
    {"/p?", false, DT_OK, DT_TARGET_ORIGIN, NULL, NULL, NULL, 0, "/p", NULL, true, "/p?"},
    {"/p?a?b", false, DT_OK, DT_TARGET_ORIGIN, NULL, NULL, NULL, 0, "/p", "a?b", true, "/p?a?b"},
    {"//double//slash", false, DT_OK, DT_TARGET_ORIGIN, NULL, NULL, NULL, 0, "//double//slash",
     NULL, false, "//double//slash"},
    {"/caf\xc3\xa9", false, DT_OK, DT_TARGET_ORIGIN, NULL, NULL, NULL, 0, "/caf\xc3\xa9", NULL,
     false, "/caf\xc3\xa9"},
    /* asterisk-form */
    {"*", false, DT_OK, DT_TARGET_ASTERISK, NULL, NULL, NULL, 0, "*", NULL, false, "*"},
    /* absolute-form */
    {"http://example.com/a?b", false, DT_OK, DT_TARGET_ABSOLUTE, "http", "example.com",
     "example.com", 0, "/a", "b", true, "/a?b"},
    {"HTTPS://Example.COM:8443", false, DT_OK, DT_TARGET_ABSOLUTE, "HTTPS", "Example.COM:8443",
     "Example.COM", 8443, "/", NULL, false, "/"},
    {"http://h?q=1", false, DT_OK, DT_TARGET_ABSOLUTE, "http", "h", "h", 0, "/", "q=1", true,
     "/?q=1"},
    {"http://[::1]:8080/x%2F", false, DT_OK, DT_TARGET_ABSOLUTE, "http", "[::1]:8080", "[::1]",
     8080, "/x%2F", NULL, false, "/x%2F"},
    {"http://[fe80::1%25eth0]/", false, DT_OK, DT_TARGET_ABSOLUTE, "http", "[fe80::1%25eth0]",
     "[fe80::1%25eth0]", 0, "/", NULL, false, "/"},
    {"http://h:/p", false, DT_OK, DT_TARGET_ABSOLUTE, "http", "h:", "h", 0, "/p", NULL, false,
     "/p"},
    BAD("ftp://example.com/", false),
    BAD("http:/example.com/", false),
    BAD("http://", false),
    BAD("http:///path", false),
    BAD("http://user:pw@example.com/", false),
    BAD("http://h:0/", false),
    BAD("http://h:65536/", false),
    BAD("http://h:80x/", false),
    BAD("http://[::1/", false),
    BAD("http://[::1]x/", false),
    BAD("http://a:b:c/", false),
    BAD("http://h#frag", false),
    BAD("example.com:443", false),
    BAD("", false),
    BAD("/a b", false),
    BAD("/a\tb", false),
    BAD("/a\rb", false),
    BAD("/a\x7f", false),
    /* authority-form (CONNECT only) */
    {"example.com:443", true, DT_OK, DT_TARGET_AUTHORITY, NULL, "example.com:443", "example.com",
     443, NULL, NULL, false, ""},
    {"[2001:db8::1]:8443", true, DT_OK, DT_TARGET_AUTHORITY, NULL, "[2001:db8::1]:8443",
     "[2001:db8::1]", 8443, NULL, NULL, false, ""},
    {"example.com:1", true, DT_OK, DT_TARGET_AUTHORITY, NULL, "example.com:1", "example.com", 1,
     NULL, NULL, false, ""},
    {"example.com:65535", true, DT_OK, DT_TARGET_AUTHORITY, NULL, "example.com:65535",
     "example.com", 65535, NULL, NULL, false, ""},
    BAD("example.com", true),
    BAD("example.com:", true),
    BAD("example.com:0", true),
    BAD("example.com:65536", true),
    BAD("example.com:99999", true),
    BAD("example.com:4a3", true),
    BAD(":443", true),
    BAD("/path", true),
    BAD("http://example.com:443/", true),
    BAD("user@example.com:443", true),
    BAD("*", true),
};

static void check_target(const target_case *c)
{
    dt_target t;
    int rc = dt_target_parse(cstr(c->raw), c->connect, &t);
    if (rc != c->rc)
        fail_msg("\"%s\" (connect=%d): rc %d, expected %d", c->raw, c->connect, rc, c->rc);
    if (rc != DT_OK)
        return;
    if (t.form != c->form)
        fail_msg("%s: form %d, expected %d", c->raw, (int)t.form, (int)c->form);
    expect_part(c->raw, "scheme", t.scheme, c->scheme);
    expect_part(c->raw, "authority", t.authority, c->authority);
    expect_part(c->raw, "host", t.host, c->host);
    expect_part(c->raw, "path", t.path, c->path);
    expect_part(c->raw, "query", t.query, c->query);
    if (t.port != c->port || t.has_query != c->has_query)
        fail_msg("%s: port %u has_query %d", c->raw, t.port, t.has_query);

    char buf[256];
    long n = dt_target_origin_form(&t, buf, sizeof(buf));
    if (c->form == DT_TARGET_AUTHORITY)
        return; /* CONNECT has no origin-form */
    if (n < 0 || strcmp(buf, c->origin_form) != 0 || (size_t)n != strlen(c->origin_form))
        fail_msg("%s: origin-form \"%s\" (%ld), expected \"%s\"", c->raw, n >= 0 ? buf : "", n,
                 c->origin_form);
}

static void test_target_table(void **state)
{
    for (size_t i = 0; i < DT_ARRAY_LEN(target_cases); i++)
        check_target(&target_cases[i]);
}

/* Parts borrow from the input: nothing is copied or decoded. */
static void test_target_borrows(void **state)
{
    static const char raw[] = "http://example.com:81/p%41th?q=%2F";
    dt_target t;
    assert_int_equal(dt_target_parse(cstr(raw), false, &t), DT_OK);
    assert_ptr_equal(t.scheme.p, raw);
    assert_ptr_equal(t.host.p, raw + 7);
    assert_ptr_equal(t.path.p, raw + 21);
    assert_ptr_equal(t.origin_form.p, raw + 21);
    assert_int_equal(t.origin_form.n, strlen(raw) - 21);
    assert_false(t.origin_form_slash);
}

static void test_origin_form_cap(void **state)
{
    dt_target t;
    char buf[6];
    assert_int_equal(dt_target_parse(cstr("http://h?q=1"), false, &t), DT_OK);
    assert_true(t.origin_form_slash);
    assert_int_equal(dt_target_origin_form(&t, buf, sizeof(buf)), 5);
    assert_string_equal(buf, "/?q=1");
    assert_int_equal(dt_target_origin_form(&t, buf, 5), -1); /* no room for the NUL */
    assert_int_equal(dt_target_origin_form(&t, NULL, 0), -1);
}

static void test_authority_split(void **state)
{
    static const struct {
        const char *in;
        int rc;
        const char *host;
        unsigned port;
    } cases[] = {
        {"example.com", DT_OK, "example.com", 0},
        {"Example.COM:8080", DT_OK, "Example.COM", 8080},
        {"127.0.0.1:80", DT_OK, "127.0.0.1", 80},
        {"[::1]", DT_OK, "[::1]", 0},
        {"[::1]:443", DT_OK, "[::1]", 443},
        {"[::ffff:10.0.0.1]:1", DT_OK, "[::ffff:10.0.0.1]", 1},
        {"host:", DT_OK, "host", 0},
        {"a%41b", DT_OK, "a%41b", 0},
        {"under_score.example", DT_OK, "under_score.example", 0},
        {"h:080", DT_OK, "h", 80},
        {"", DT_EINVAL, NULL, 0},
        {":80", DT_EINVAL, NULL, 0},
        {"h:0", DT_EINVAL, NULL, 0},
        {"h:65536", DT_EINVAL, NULL, 0},
        {"h:123456", DT_EINVAL, NULL, 0},
        {"h:-1", DT_EINVAL, NULL, 0},
        {"h: 80", DT_EINVAL, NULL, 0},
        {"a b", DT_EINVAL, NULL, 0},
        {"a/b", DT_EINVAL, NULL, 0},
        {"a\rb", DT_EINVAL, NULL, 0},
        {"a%4", DT_EINVAL, NULL, 0},
        {"a%zz", DT_EINVAL, NULL, 0},
        {"::1", DT_EINVAL, NULL, 0},
        {"[::1", DT_EINVAL, NULL, 0},
        {"[]", DT_EINVAL, NULL, 0},
        {"[abc]", DT_EINVAL, NULL, 0},
        {"[::1]80", DT_EINVAL, NULL, 0},
        {"[::1]:", DT_OK, "[::1]", 0},
        {"[::1/x]", DT_EINVAL, NULL, 0},
        {"caf\xc3\xa9.example", DT_EINVAL, NULL, 0},
    };
    for (size_t i = 0; i < DT_ARRAY_LEN(cases); i++) {
        dt_str host = {NULL, 0};
        unsigned port = 99;
        int rc = dt_authority_split(cstr(cases[i].in), &host, &port);
        if (rc != cases[i].rc)
            fail_msg("\"%s\": rc %d, expected %d", cases[i].in, rc, cases[i].rc);
        if (rc != DT_OK)
            continue;
        expect_part(cases[i].in, "host", host, cases[i].host);
        if (port != cases[i].port)
            fail_msg("\"%s\": port %u, expected %u", cases[i].in, port, cases[i].port);
    }
}

static void test_host_lower(void **state)
{
    char out[16];
    assert_int_equal(dt_host_lower(cstr("Example.COM"), out, sizeof(out)), 11);
    assert_string_equal(out, "example.com");
    assert_int_equal(dt_host_lower(cstr("[FE80::A]"), out, sizeof(out)), 9);
    assert_string_equal(out, "[fe80::a]");
    assert_int_equal(dt_host_lower(cstr(""), out, sizeof(out)), 0);
    assert_string_equal(out, "");
    /* 16 bytes need 17 with the NUL. */
    assert_int_equal(dt_host_lower(cstr("0123456789abcdef"), out, sizeof(out)), -1);
    assert_int_equal(dt_host_lower(cstr("0123456789abcde"), out, sizeof(out)), 15);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_target_table),    cmocka_unit_test(test_target_borrows),
        cmocka_unit_test(test_origin_form_cap), cmocka_unit_test(test_authority_split),
        cmocka_unit_test(test_host_lower),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
