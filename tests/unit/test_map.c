/*
 * test_map.c - redirect maps: parsing, comments, errors with their lines,
 * duplicates, lookups, iteration, and a 1,000,000-line map that must load
 * in under 2 s and take at most twice its file size.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include "detour/map.h"

static char tmpdir[1024];

static const char *tmp_path(const char *name, char *buf, size_t cap)
{
    snprintf(buf, cap, "%s/%s", tmpdir, name);
    return buf;
}

/* Write TEXT (LEN bytes, so NULs are possible) as NAME; returns the path in BUF. */
static const char *write_map(const char *name, const char *text, size_t len, char *buf, size_t cap)
{
    FILE *f = fopen(tmp_path(name, buf, cap), "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(text, 1, len, f), len);
    assert_int_equal(fclose(f), 0);
    return buf;
}

static dt_map *load_str(const char *text, char *err, size_t errlen)
{
    char path[1200];
    return dt_map_load(write_map("t.map", text, strlen(text), path, sizeof(path)), err, errlen);
}

static int group_setup(void **state)
{
    const char *base = getenv("DETOUR_TEST_TMP");
    if (!base || !*base)
        base = "/tmp";
    mkdir(base, 0755);
    snprintf(tmpdir, sizeof(tmpdir), "%s/detour-map-XXXXXX", base);
    return mkdtemp(tmpdir) ? 0 : -1;
}

static int group_teardown(void **state)
{
    char path[1200];
    static const char *files[] = {"t.map", "big.map"};
    for (size_t i = 0; i < sizeof(files) / sizeof(files[0]); i++)
        unlink(tmp_path(files[i], path, sizeof(path)));
    return rmdir(tmpdir);
}

static void assert_maps_to(const dt_map *m, const char *key, const char *want)
{
    size_t len = 999;
    const char *v = dt_map_lookup(m, key, strlen(key), &len);
    if (!want) {
        assert_null(v);
        return;
    }
    assert_non_null(v);
    assert_int_equal(len, strlen(want));
    assert_memory_equal(v, want, len);
}

static void test_parse(void **state)
{
    char err[256] = "";
    dt_map *m = load_str("# header comment\n"
                         "\n"
                         "/old   /new\n"
                         "  \t# indented comment\n"
                         "\t/tabbed\thttps://x.example/t?a=1#frag  \n"
                         "/crlf /crlf-new\r\n"
                         "   \n"
                         "/last https://y.example/last",
                         err, sizeof(err));
    if (!m)
        fail_msg("load failed: %s", err);
    assert_int_equal(dt_map_count(m), 4);
    assert_maps_to(m, "/old", "/new");
    assert_maps_to(m, "/tabbed", "https://x.example/t?a=1#frag");
    assert_maps_to(m, "/crlf", "/crlf-new");
    assert_maps_to(m, "/last", "https://y.example/last");
    assert_maps_to(m, "/ol", NULL);      /* a prefix of a key */
    assert_maps_to(m, "/old/", NULL);    /* a key plus more */
    assert_maps_to(m, "/OLD", NULL);     /* bytes, not case-insensitive */
    assert_maps_to(m, "/new", NULL);     /* values are not keys */
    assert_maps_to(m, "# header", NULL); /* comments are not entries */
    assert_null(dt_map_lookup(m, "/old\0x", 6, NULL));
    assert_null(dt_map_lookup(m, "", 0, NULL));
    /* Lookup by length: the key need not be NUL-terminated. */
    assert_non_null(dt_map_lookup(m, "/oldXYZ", 4, NULL));
    dt_map_free(m);
}

static void test_empty(void **state)
{
    char err[256] = "";
    dt_map *m = load_str("# only comments\n\n", err, sizeof(err));
    assert_non_null(m);
    assert_int_equal(dt_map_count(m), 0);
    assert_maps_to(m, "/x", NULL);
    assert_true(dt_map_memory(m) > 0);
    dt_map_free(m);
    m = load_str("", err, sizeof(err));
    assert_non_null(m);
    assert_int_equal(dt_map_count(m), 0);
    dt_map_free(m);
    dt_map_free(NULL);
}

/* A NUL byte in a comment is harmless: it does not end the line early. */
static void test_nul_in_comment(void **state)
{
    static const char text[] = "# a\0b\n/x /y\n# \0\0 /z";
    char path[1200], err[256] = "";
    dt_map *m = dt_map_load(write_map("t.map", text, sizeof(text) - 1, path, sizeof(path)), err,
                            sizeof(err));
    if (!m)
        fail_msg("load failed: %s", err);
    assert_int_equal(dt_map_count(m), 1);
    assert_maps_to(m, "/x", "/y");
    dt_map_free(m);
}

typedef struct walk {
    int seen;
    int stop_after;
    char keys[4][16];
} walk;

static bool collect(void *ctx, dt_str key, dt_str value)
{
    walk *w = ctx;
    assert_true(key.n < sizeof(w->keys[0]));
    assert_true(value.n > 0);
    memcpy(w->keys[w->seen], key.p, key.n);
    w->keys[w->seen][key.n] = '\0';
    w->seen++;
    return w->seen < w->stop_after;
}

static void test_foreach(void **state)
{
    char err[256];
    dt_map *m = load_str("/c 1\n# x\n/a 2\n/b 3\n", err, sizeof(err));
    assert_non_null(m);
    walk all = {.stop_after = 4};
    dt_map_foreach(m, collect, &all);
    assert_int_equal(all.seen, 3);
    assert_string_equal(all.keys[0], "/c"); /* file order */
    assert_string_equal(all.keys[1], "/a");
    assert_string_equal(all.keys[2], "/b");
    walk some = {.stop_after = 2};
    dt_map_foreach(m, collect, &some);
    assert_int_equal(some.seen, 2);
    dt_map_free(m);
}

typedef struct bad_map {
    const char *text;
    size_t len; /* 0: strlen */
    int line;
    const char *msg;
} bad_map;

static const bad_map bad_maps[] = {
    {"/a /b\n/c\n", 0, 2, "expected two fields (old-path new-location), found one"},
    {"/a /b\n\n# c\n/c /d /e\n", 0, 4, "expected two fields (old-path new-location), found more"},
    {"/a /b # trailing comment\n", 0, 1, "found more"},
    {"a /b\n", 0, 1, "the old path must start with '/'"},
    {"/a /b\n/c /d\x01x\n", 0, 2, "control byte 0x01 in the new location"},
    {"/a\x7f /b\n", 0, 1, "control byte 0x7f in the old path"},
    {"/a /b\n/x\r /y\n", 0, 2, "control byte 0x0d in the old path"},
    {"/a /b\n/n\0ul /c\n", 15, 2, "control byte 0x00 in the old path"},
    {"/a /b\n/c /d\n# x\n/a /e\n", 0, 4, "duplicate old path \"/a\" (first on line 1)"},
    {"/x /1\n/y /2\n\n/y /3\n/y /4\n", 0, 4, "duplicate old path \"/y\" (first on line 2)"},
};

static void test_errors(void **state)
{
    char path[1200], err[256], want[1300];
    for (size_t i = 0; i < sizeof(bad_maps) / sizeof(bad_maps[0]); i++) {
        const bad_map *b = &bad_maps[i];
        size_t len = b->len ? b->len : strlen(b->text);
        write_map("t.map", b->text, len, path, sizeof(path));
        err[0] = '\0';
        dt_map *m = dt_map_load(path, err, sizeof(err));
        snprintf(want, sizeof(want), "%s:%d: ", path, b->line);
        if (m || strncmp(err, want, strlen(want)) != 0 || !strstr(err, b->msg))
            fail_msg("case %zu: got \"%s\", expected \"%s...%s\"", i, err, want, b->msg);
    }
}

static void test_missing(void **state)
{
    char path[1200], err[256] = "";
    tmp_path("nope.map", path, sizeof(path));
    assert_null(dt_map_load(path, err, sizeof(err)));
    assert_true(strncmp(err, path, strlen(path)) == 0);
    assert_non_null(strstr(err, ": cannot open: No such file"));
}

/* ------------------------------------------------------------------------ */

#define BIG_LINES 1000000

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* A realistic bulk map: "/legacy/catalog/item-N.html https://shop.example/p/N". */
static size_t write_big_map(char *path, size_t cap)
{
    FILE *f = fopen(tmp_path("big.map", path, cap), "w");
    assert_non_null(f);
    fputs("# generated\n", f);
    for (int i = 0; i < BIG_LINES; i++)
        fprintf(f, "/legacy/catalog/item-%d.html https://shop.example/p/%d\n", i, i);
    assert_int_equal(fclose(f), 0);
    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    return (size_t)st.st_size;
}

static void test_million_lines(void **state)
{
    char path[1200], err[256] = "";
    size_t fsize = write_big_map(path, sizeof(path));
    double t0 = now_s();
    dt_map *m = dt_map_load(path, err, sizeof(err));
    double took = now_s() - t0;
    if (!m)
        fail_msg("load failed: %s", err);
    print_message("1,000,000-line map (%zu bytes): %.3f s, %zu bytes held\n", fsize, took,
                  dt_map_memory(m));
    assert_int_equal(dt_map_count(m), BIG_LINES);
#if defined(__SANITIZE_ADDRESS__)
    /* Sanitizer builds run several times slower: the bound is for real builds. */
    (void)took;
#else
    assert_true(took < 2.0);
#endif
    assert_true(dt_map_memory(m) <= 2 * fsize);
    assert_maps_to(m, "/legacy/catalog/item-0.html", "https://shop.example/p/0");
    assert_maps_to(m, "/legacy/catalog/item-499999.html", "https://shop.example/p/499999");
    assert_maps_to(m, "/legacy/catalog/item-999999.html", "https://shop.example/p/999999");
    assert_maps_to(m, "/legacy/catalog/item-1000000.html", NULL);
    /* Every key is found: the table lost nothing to collisions. */
    char key[64];
    size_t found = 0;
    for (int i = 0; i < BIG_LINES; i += 997) {
        int n = snprintf(key, sizeof(key), "/legacy/catalog/item-%d.html", i);
        found += dt_map_lookup(m, key, (size_t)n, NULL) != NULL;
    }
    assert_int_equal(found, (BIG_LINES + 996) / 997);
    dt_map_free(m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse),          cmocka_unit_test(test_empty),
        cmocka_unit_test(test_nul_in_comment), cmocka_unit_test(test_foreach),
        cmocka_unit_test(test_errors),         cmocka_unit_test(test_missing),
        cmocka_unit_test(test_million_lines),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
