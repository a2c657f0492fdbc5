/*
 * test_headers.c - header syntax, the hop-by-hop filter, request hygiene,
 * the libmicrohttpd buffer-layout checks and Via parsing.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>

#include <cmocka.h>

#include "detour/headers.h"

/* A dt_str over a literal that may contain NUL bytes. */
#define S(lit) ((dt_str){(lit), sizeof(lit) - 1})

static dt_str cstr(const char *s)
{
    return (dt_str){s, strlen(s)};
}

static void test_token(void **state)
{
    static const struct {
        dt_str s;
        bool ok;
    } cases[] = {
        {S("Content-Length"), true},
        {S("x!#$%&'*+-.^_`|~09"), true},
        {S("a"), true},
        {S(""), false},
        {S("Transfer-Encoding "), false},
        {S(" Host"), false},
        {S("Bad[Name]"), false},
        {S("a:b"), false},
        {S("a\tb"), false},
        {S("a\0b"), false},
        {S("caf\xc3\xa9"), false},
        {S("a\"b"), false},
        {S("a/b"), false},
        {S("\x7f"), false},
    };
    for (size_t i = 0; i < DT_ARRAY_LEN(cases); i++) {
        if (dt_is_token(cases[i].s) != cases[i].ok)
            fail_msg("case %zu: dt_is_token(%.*s) != %d", i, (int)cases[i].s.n, cases[i].s.p,
                     cases[i].ok);
    }
    assert_false(dt_is_token((dt_str){NULL, 0}));
}

static void test_value(void **state)
{
    static const struct {
        dt_str v;
        bool ok;
    } cases[] = {
        {S(""), true},          {S("text/html; charset=utf-8"), true},
        {S("a\tb"), true},      {S("caf\xc3\xa9 \xff"), true},
        {S("a\rb"), false},     {S("a\nb"), false},
        {S("a\0b"), false},     {S("a\x01"), false},
        {S("\x1f"), false},     {S("del\x7f"), false},
        {S("\x1b[31m"), false},
    };
    for (size_t i = 0; i < DT_ARRAY_LEN(cases); i++) {
        if (dt_header_value_ok(cases[i].v) != cases[i].ok)
            fail_msg("case %zu: dt_header_value_ok != %d", i, cases[i].ok);
    }
}

static void test_hop_by_hop(void **state)
{
    static const struct {
        const char *name;
        bool hop;
    } cases[] = {
        {"Connection", true},
        {"connection", true},
        {"KEEP-ALIVE", true},
        {"Proxy-Connection", true},
        {"TE", true},
        {"te", true},
        {"Trailer", true},
        {"Transfer-Encoding", true},
        {"Upgrade", true},
        {"Trailers", false},
        {"Content-Length", false},
        {"Host", false},
        {"Keep-Alive2", false},
        {"T", false},
        {"Set-Cookie", false},
        {"Via", false},
        {"Proxy-Authorization", false},
    };
    for (size_t i = 0; i < DT_ARRAY_LEN(cases); i++) {
        if (dt_header_is_hop_by_hop(cstr(cases[i].name)) != cases[i].hop)
            fail_msg("%s: expected hop-by-hop=%d", cases[i].name, cases[i].hop);
    }
}

static void test_conn_tokens(void **state)
{
    dt_conn_tokens t = {0};
    dt_conn_tokens_add(&t, cstr("close-me, X-Private"));
    dt_conn_tokens_add(&t, cstr(" ,\tkeep-alive ,, Upgrade,"));
    assert_int_equal(t.n, 4);
    assert_false(t.overflow);
    assert_true(dt_str_eq(t.tok[0], cstr("close-me")));
    assert_true(dt_str_eq(t.tok[1], cstr("X-Private")));
    assert_true(dt_str_eq(t.tok[2], cstr("keep-alive")));
    assert_true(dt_str_eq(t.tok[3], cstr("Upgrade")));
    assert_true(dt_conn_tokens_has(&t, cstr("x-private")));
    assert_false(dt_conn_tokens_has(&t, cstr("x-privat")));
    assert_false(dt_conn_tokens_has(NULL, cstr("x-private")));

    assert_true(dt_header_drop(cstr("X-PRIVATE"), &t));
    assert_true(dt_header_drop(cstr("te"), &t));
    assert_true(dt_header_drop(cstr("Transfer-Encoding"), NULL));
    assert_false(dt_header_drop(cstr("X-Kept"), &t));
    assert_false(dt_header_drop(cstr("Set-Cookie"), NULL));
}

static void test_conn_tokens_overflow(void **state)
{
    dt_conn_tokens t = {0};
    for (int i = 0; i < DT_CONN_TOKENS_MAX; i++)
        dt_conn_tokens_add(&t, cstr("a"));
    assert_int_equal(t.n, DT_CONN_TOKENS_MAX);
    assert_false(t.overflow);
    dt_conn_tokens_add(&t, cstr(" , ")); /* empty elements are not tokens */
    assert_false(t.overflow);
    dt_conn_tokens_add(&t, cstr("b"));
    assert_true(t.overflow);
    assert_int_equal(t.n, DT_CONN_TOKENS_MAX);
}

/* One request head as name/value pairs, and what hygiene must say. */
typedef struct hyg_case {
    const char *what;
    dt_str hdr[8][2];
    int status;
} hyg_case;

#define H(n, v)                                                                                    \
    {                                                                                              \
        S(n), S(v)                                                                                 \
    }

static const hyg_case hyg_cases[] = {
    {"plain GET", {H("Host", "a"), H("Accept", "*/*")}, 0},
    {"CL+TE", {H("Content-Length", "5"), H("Transfer-Encoding", "chunked")}, 400},
    {"TE+CL", {H("Transfer-Encoding", "chunked"), H("Content-Length", "5")}, 400},
    {"two CL same value", {H("Content-Length", "5"), H("Content-Length", "5")}, 400},
    {"two CL different", {H("Content-Length", "5"), H("Content-Length", "6")}, 400},
    {"CL list", {H("Content-Length", "5, 5")}, 400},
    {"CL negative", {H("Content-Length", "-1")}, 400},
    {"CL hex", {H("Content-Length", "0x10")}, 400},
    {"CL plus sign", {H("Content-Length", "+5")}, 400},
    {"CL empty", {H("Content-Length", "")}, 400},
    {"CL overflow", {H("Content-Length", "18446744073709551616")}, 400},
    {"CL inner space", {H("Content-Length", "1 0")}, 400},
    {"CL max", {H("Content-Length", "18446744073709551615")}, 0},
    {"CL with OWS", {H("Content-Length", " 12 ")}, 0},
    {"TE chunked", {H("Transfer-Encoding", "chunked")}, 0},
    {"TE CHUNKED", {H("Transfer-Encoding", "CHUNKED")}, 0},
    {"TE gzip, chunked", {H("Transfer-Encoding", "gzip, chunked")}, 501},
    {"TE gzip", {H("Transfer-Encoding", "gzip")}, 501},
    {"TE chunked, chunked", {H("Transfer-Encoding", "chunked, chunked")}, 501},
    {"TE twice", {H("Transfer-Encoding", "chunked"), H("Transfer-Encoding", "chunked")}, 501},
    {"TE identity", {H("Transfer-Encoding", "identity")}, 501},
    {"TE empty", {H("Transfer-Encoding", "")}, 400},
    {"TE name with space", {H("Transfer-Encoding ", "chunked")}, 400},
    {"name with bracket", {H("Bad[Name]", "x")}, 400},
    {"empty name", {H("", "x")}, 400},
    {"CR in value", {H("X-A", "a\rb")}, 400},
    {"LF in value", {H("X-A", "a\nb")}, 400},
    {"NUL in value", {H("X-A", "a\0b")}, 400},
    {"CTL in value", {H("X-A", "a\x01")}, 400},
    {"DEL in value", {H("X-A", "\x7f")}, 400},
    {"HTAB in value", {H("X-A", "a\tb")}, 0},
    {"two Hosts", {H("Host", "a"), H("host", "b")}, 400},
    {"first problem wins", {H("X-A", "\r"), H("Transfer-Encoding", "gzip")}, 400},
    {"501 then 400", {H("Transfer-Encoding", "gzip"), H("X-A", "\r")}, 501},
    {"Connection 16 tokens",
     {H("Connection", "a,b,c,d,e,f,g,h"), H("Connection", "i,j,k,l,m,n,o,p")},
     0},
    {"Connection 17 tokens",
     {H("Connection", "a,b,c,d,e,f,g,h"), H("Connection", "i,j,k,l,m,n,o,p,q")},
     400},
};

static void run_hygiene(const hyg_case *c, dt_hygiene *h)
{
    dt_hygiene_init(h);
    for (size_t j = 0; j < DT_ARRAY_LEN(c->hdr) && c->hdr[j][0].p != NULL; j++)
        dt_hygiene_add(h, c->hdr[j][0], c->hdr[j][1]);
}

static void test_hygiene_table(void **state)
{
    for (size_t i = 0; i < DT_ARRAY_LEN(hyg_cases); i++) {
        dt_hygiene h;
        run_hygiene(&hyg_cases[i], &h);
        int st = dt_hygiene_finish(&h);
        if (st != hyg_cases[i].status)
            fail_msg("%s: status %d, expected %d", hyg_cases[i].what, st, hyg_cases[i].status);
        if (st != 0 && (h.reason == NULL || h.reason[0] == '\0'))
            fail_msg("%s: refused without a reason", hyg_cases[i].what);
        assert_int_equal(h.status, st);
    }
}

static void test_hygiene_facts(void **state)
{
    dt_hygiene h;
    dt_hygiene_init(&h);
    dt_hygiene_add(&h, S("Host"), S("example.com"));
    dt_hygiene_add(&h, S("Content-Length"), S("1073741824"));
    dt_hygiene_add(&h, S("expect"), S("100-Continue"));
    dt_hygiene_add(&h, S("Via"), S("1.1 other"));
    dt_hygiene_add(&h, S("Connection"), S("keep-alive, X-Private"));
    assert_int_equal(dt_hygiene_finish(&h), 0);
    assert_int_equal(h.n_content_length, 1);
    assert_true(h.content_length == 1073741824ULL);
    assert_true(h.expect_continue);
    assert_true(h.via_seen);
    assert_int_equal(h.n_host, 1);
    assert_false(h.has_te);
    assert_int_equal(h.conn.n, 2);
    assert_true(dt_conn_tokens_has(&h.conn, S("x-private")));
    assert_false(h.max_forwards_seen);

    dt_hygiene_init(&h);
    dt_hygiene_add(&h, S("Transfer-Encoding"), S(" Chunked "));
    assert_int_equal(dt_hygiene_finish(&h), 0);
    assert_true(h.has_te);
    assert_true(h.chunked);
    assert_int_equal(h.n_content_length, 0);
    assert_false(h.expect_continue);
}

static void test_max_forwards(void **state)
{
    static const struct {
        dt_str v1, v2; /* v2.p == NULL: a single header */
        int64_t want;
    } cases[] = {
        {S("0"), {NULL, 0}, 0},
        {S("5"), {NULL, 0}, 5},
        {S(" 10 "), {NULL, 0}, 10},
        {S("99999999999999999999999"), {NULL, 0}, INT64_MAX},
        {S("9223372036854775808"), {NULL, 0}, INT64_MAX},
        {S("-1"), {NULL, 0}, -1},
        {S(""), {NULL, 0}, -1},
        {S("1x"), {NULL, 0}, -1},
        {S("1, 2"), {NULL, 0}, -1},
        {S("1"), S("2"), -1},
    };
    for (size_t i = 0; i < DT_ARRAY_LEN(cases); i++) {
        dt_hygiene h;
        dt_hygiene_init(&h);
        dt_hygiene_add(&h, S("Max-Forwards"), cases[i].v1);
        if (cases[i].v2.p)
            dt_hygiene_add(&h, S("max-forwards"), cases[i].v2);
        assert_int_equal(dt_hygiene_finish(&h), 0);
        assert_true(h.max_forwards_seen);
        if (h.max_forwards != cases[i].want)
            fail_msg("case %zu: max_forwards %lld, expected %lld", i, (long long)h.max_forwards,
                     (long long)cases[i].want);
    }
}

/*
 * Layouts as libmicrohttpd 0.9.75 leaves them in its read buffer: the line
 * "Name: value\r\n" becomes "Name\0 value\0\0".
 */
static void test_layout_ok(void **state)
{
    static char buf[] = "Host\0 example.com\0\0X-A\0\t \tv\0\0X-E\0\0\0";
    char *host = buf, *host_v = buf + 6;
    char *xa = buf + 19, *xa_v = buf + 26;
    char *xe = buf + 29, *xe_v = buf + 33;
    assert_string_equal(host_v, "example.com");
    assert_string_equal(xa_v, "v");
    assert_string_equal(xe, "X-E");
    assert_true(dt_header_layout_ok(host, 4, host_v));
    assert_true(dt_header_layout_ok(xa, 3, xa_v));
    assert_true(dt_header_layout_ok(xe, 3, xe_v)); /* empty value right after the NUL */

    /* Not a NUL after the name, or not OWS before the value. */
    assert_false(dt_header_layout_ok(host, 3, host_v));
    assert_false(dt_header_layout_ok(host, 4, host_v + 1));
    /* Value at or before the end of the name. */
    assert_false(dt_header_layout_ok(host, 4, host + 4));
    assert_false(dt_header_layout_ok(xa, 3, host_v));
    assert_false(dt_header_layout_ok(NULL, 0, host_v));
    assert_false(dt_header_layout_ok(host, 4, NULL));
}

static void test_layout_far_apart(void **state)
{
    /* 64 bytes apart is the most a single line may put between them. */
    static char buf[128];
    memset(buf, ' ', sizeof(buf));
    memcpy(buf, "Name", 4);
    buf[4] = '\0';
    assert_true(dt_header_layout_ok(buf, 4, buf + 4 + 64));
    assert_false(dt_header_layout_ok(buf, 4, buf + 4 + 65));
    /* A name elsewhere in memory: never dereferenced between the two. */
    static const char other[] = "Name-continued";
    assert_false(dt_header_layout_ok(other, 4, buf + 10));
}

/*
 * obs-fold: "X-A: a\r\n b\r\n". libmicrohttpd reallocates the name with the
 * continuation appended ("X-Ab"), in place when it can: either way the value
 * no longer follows "name\0 OWS".
 */
static void test_layout_obs_fold(void **state)
{
    static char inplace[] = "X-Ab\0\0\0\0 b\0\0";
    const char *value = inplace + 5; /* MHD kept the old value pointer */
    assert_false(dt_header_layout_ok(inplace, 4, value - 1));
    assert_false(dt_header_layout_ok(inplace, 4, inplace + 3));

    static char moved_name[] = "X-Ab";
    static char readbuf[] = "\0\0\0\0 a\0\0 b\0\0";
    assert_false(dt_header_layout_ok(moved_name, 4, readbuf + 5));
}

static void test_value_end(void **state)
{
    /* CRLF lines: "A: 1\r\nB: 2\r\n\r\n" */
    static char crlf[] = "A\0 1\0\0B\0 2\0\0\0\0";
    assert_true(dt_header_value_end_ok(crlf + 3, 1, crlf + 6));
    assert_true(dt_header_value_end_ok(crlf + 9, 1, NULL));
    /* Bare LF lines: "A: 1\nB: 2\n\n" */
    static char lf[] = "A\0 1\0B\0 2\0\0";
    assert_true(dt_header_value_end_ok(lf + 3, 1, lf + 5));
    assert_true(dt_header_value_end_ok(lf + 8, 1, NULL));
    /* A NUL inside the value: "A: 1<NUL>x\r\nB: 2<NUL>y\r\n\r\n" arrives cut short. */
    static char nul[] = "A\0 1\0x\0\0B\0 2\0y\0\0\0\0";
    assert_false(dt_header_value_end_ok(nul + 3, 1, nul + 8));
    assert_false(dt_header_value_end_ok(nul + 11, 1, NULL));
    /* The value does not end at its NUL. */
    assert_false(dt_header_value_end_ok(crlf + 3, 0, crlf + 6));
    assert_false(dt_header_value_end_ok(NULL, 0, NULL));
}

static void test_via(void **state)
{
    static const struct {
        const char *value, *name;
        bool named;
    } cases[] = {
        {"1.1 detour", "detour", true},
        {"1.1 DETOUR", "detour", true},
        {"HTTP/1.1 detour", "detour", true},
        {"1.0 fred, 1.1 detour (Apache/1.1)", "detour", true},
        {"1.0 fred,1.1 detour", "detour", true},
        {"  1.1   detour  ", "detour", true},
        {"1.1 detour(comment)", "detour", true},
        {"1.1 fred (see 1.1 detour, really)", "detour", false},
        {"1.1 fred (nested (1.1 detour), x), 1.1 detour", "detour", true},
        {"1.1 detour2", "detour", false},
        {"1.1 my-detour", "detour", false},
        {"detour", "detour", false},
        {"detour 1.1", "detour", false},
        {"1.1 detour:8080", "detour", false},
        {"", "detour", false},
        {",,, ,", "detour", false},
        {"1.1 (unterminated, 1.1 detour", "detour", false},
        {"1.1 origin", "", false},
    };
    for (size_t i = 0; i < DT_ARRAY_LEN(cases); i++) {
        bool got = dt_via_names(cstr(cases[i].value), cstr(cases[i].name));
        if (got != cases[i].named)
            fail_msg("Via \"%s\" names \"%s\": got %d", cases[i].value, cases[i].name, got);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_token),
        cmocka_unit_test(test_value),
        cmocka_unit_test(test_hop_by_hop),
        cmocka_unit_test(test_conn_tokens),
        cmocka_unit_test(test_conn_tokens_overflow),
        cmocka_unit_test(test_hygiene_table),
        cmocka_unit_test(test_hygiene_facts),
        cmocka_unit_test(test_max_forwards),
        cmocka_unit_test(test_layout_ok),
        cmocka_unit_test(test_layout_far_apart),
        cmocka_unit_test(test_layout_obs_fold),
        cmocka_unit_test(test_value_end),
        cmocka_unit_test(test_via),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
