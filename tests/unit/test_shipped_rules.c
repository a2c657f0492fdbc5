/*
 * test_shipped_rules.c - every config shipped in rules/ loads, lints clean
 * and passes its own `expect` cases: an example that does not work is worse
 * than none.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include <cmocka.h>
#include <dirent.h>

#include "detour/check.h"

static int by_name(const struct dirent **a, const struct dirent **b)
{
    return strcmp((*a)->d_name, (*b)->d_name);
}

static int is_cfg(const struct dirent *e)
{
    size_t n = strlen(e->d_name);
    return n > 4 && strcmp(e->d_name + n - 4, ".cfg") == 0;
}

/* Load PATH and run `detour -t` on it; fails on an error or a warning. */
static void check_one(const char *path)
{
    char err[1024], *out = NULL;
    size_t outlen = 0;
    dt_config *cfg = NULL;
    if (dt_config_load(path, &cfg, err, sizeof(err)) != DT_OK)
        fail_msg("%s", err);
    FILE *f = open_memstream(&out, &outlen);
    assert_non_null(f);
    int errors = dt_check_config(cfg, f);
    fclose(f);
    printf("%s: %zu expect cases, %d errors\n%s", path, cfg->nexpects, errors, out);
    assert_int_equal(errors, 0);
    if (strstr(out, "warning:"))
        fail_msg("%s: lint warnings", path);
    free(out);
    dt_config_unref(cfg);
}

static void test_every_shipped_config(void **state)
{
    const char *src = getenv("DETOUR_SOURCE_DIR");
    char dir[1024], path[2048];
    snprintf(dir, sizeof(dir), "%s/rules", src && *src ? src : ".");
    struct dirent **names;
    int n = scandir(dir, &names, is_cfg, by_name);
    if (n < 0)
        fail_msg("%s: cannot list", dir);
    for (int i = 0; i < n; i++) {
        snprintf(path, sizeof(path), "%s/%s", dir, names[i]->d_name);
        check_one(path);
        free(names[i]);
    }
    free(names);
    /* maintenance, migration, loadbalance and bulkmap at least */
    assert_true(n >= 4);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_every_shipped_config),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
