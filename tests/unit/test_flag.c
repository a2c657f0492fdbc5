/*
 * test_flag.c - when_file flags: the registry shares one flag per path, a
 * poll follows the file's existence, and the state can be forced for tests.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include "detour/flag.h"

static char tmpdir[1024];

static const char *tmp_path(const char *name, char *buf, size_t cap)
{
    snprintf(buf, cap, "%s/%s", tmpdir, name);
    return buf;
}

static void touch(const char *path)
{
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    assert_int_equal(fclose(f), 0);
}

static int group_setup(void **state)
{
    const char *base = getenv("DETOUR_TEST_TMP");
    if (!base || !*base)
        base = "/tmp";
    mkdir(base, 0755);
    snprintf(tmpdir, sizeof(tmpdir), "%s/detour-flag-XXXXXX", base);
    return mkdtemp(tmpdir) ? 0 : -1;
}

static int group_teardown(void **state)
{
    char path[1200];
    static const char *files[] = {"a.flag", "b.flag"};
    for (size_t i = 0; i < sizeof(files) / sizeof(files[0]); i++)
        unlink(tmp_path(files[i], path, sizeof(path)));
    dt_flag_registry_clear();
    return rmdir(tmpdir);
}

/* A new flag is polled at once: it reflects the file as it is. */
static void test_initial_state(void **state)
{
    char a[1200], b[1200];
    tmp_path("a.flag", a, sizeof(a));
    tmp_path("b.flag", b, sizeof(b));
    touch(b);
    dt_flag *fa = dt_flag_get(a);
    dt_flag *fb = dt_flag_get(b);
    assert_non_null(fa);
    assert_non_null(fb);
    assert_false(dt_flag_present(fa));
    assert_true(dt_flag_present(fb));
    assert_string_equal(dt_flag_path(fa), a);
    assert_string_equal(dt_flag_path(fb), b);
}

/* One flag per path, shared by every snapshot that names it. */
static void test_shared_by_path(void **state)
{
    char a[1200], b[1200];
    dt_flag *f1 = dt_flag_get(tmp_path("a.flag", a, sizeof(a)));
    dt_flag *f2 = dt_flag_get(a);
    dt_flag *f3 = dt_flag_get(tmp_path("b.flag", b, sizeof(b)));
    assert_ptr_equal(f1, f2);
    assert_ptr_not_equal(f1, f3);
}

static void test_poll_follows_file(void **state)
{
    char a[1200];
    dt_flag *f = dt_flag_get(tmp_path("a.flag", a, sizeof(a)));
    unlink(a);
    assert_false(dt_flag_poll(f));
    touch(a);
    assert_false(dt_flag_present(f)); /* not seen until polled */
    assert_true(dt_flag_poll(f));
    assert_true(dt_flag_present(f));
    assert_int_equal(unlink(a), 0);
    dt_flag_poll_all();
    assert_false(dt_flag_present(f));
    touch(a);
    dt_flag_poll_all();
    assert_true(dt_flag_present(f));
}

static void test_set_override(void **state)
{
    char b[1200];
    dt_flag *f = dt_flag_get(tmp_path("b.flag", b, sizeof(b)));
    assert_true(dt_flag_poll(f));
    dt_flag_set(f, false);
    assert_false(dt_flag_present(f));
    dt_flag_set(f, true);
    assert_true(dt_flag_present(f));
    dt_flag_set(f, false);
    assert_true(dt_flag_poll(f)); /* a poll sees the real file again */
}

#define GET_THREADS 4
#define GET_ROUNDS 2000

static void *get_worker(void *arg)
{
    dt_flag **seen = arg;
    char path[1200];
    for (int i = 0; i < GET_ROUNDS; i++) {
        dt_flag *f = dt_flag_get(tmp_path("t0.flag", path, sizeof(path)));
        if (i == 0)
            *seen = f;
        else if (f != *seen)
            return (void *)1;
    }
    return NULL;
}

/* Concurrent first use of a path still yields a single flag. */
static void test_concurrent_get(void **state)
{
    pthread_t th[GET_THREADS];
    dt_flag *seen[GET_THREADS] = {0};
    for (int i = 0; i < GET_THREADS; i++)
        assert_int_equal(pthread_create(&th[i], NULL, get_worker, &seen[i]), 0);
    for (int i = 0; i < GET_THREADS; i++) {
        void *rc;
        assert_int_equal(pthread_join(th[i], &rc), 0);
        assert_null(rc);
    }
    for (int i = 1; i < GET_THREADS; i++)
        assert_ptr_equal(seen[i], seen[0]);
    assert_non_null(seen[0]);
}

/* After a clear, a path gets a fresh flag that polls the file again. */
static void test_clear(void **state)
{
    char b[1200];
    dt_flag_registry_clear();
    dt_flag *f = dt_flag_get(tmp_path("b.flag", b, sizeof(b)));
    assert_non_null(f);
    assert_true(dt_flag_present(f));
    assert_string_equal(dt_flag_path(f), b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_initial_state),     cmocka_unit_test(test_shared_by_path),
        cmocka_unit_test(test_poll_follows_file), cmocka_unit_test(test_set_override),
        cmocka_unit_test(test_concurrent_get),    cmocka_unit_test(test_clear),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
