/*
 * main.c - the command line: detour [-c FILE] [-t] [--explain 'METHOD URL'] [-h] [-V]
 *
 * Exit status: 0 ok, 1 invalid config, 2 bad command line.
 */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>

#include "detour/check.h"
#include "detour/config.h"
#include "detour/front.h"
#include "detour/log.h"
#include "detour/server.h"

#define DEFAULT_CONFIG "rules/detour.cfg"

static void usage(FILE *out)
{
    fprintf(
        out,
        "usage: detour [-c FILE] [-t | --check] [--explain 'METHOD URL'] [-h] [-V]\n"
        "\n"
        "  -c, --config FILE        config file (default %s)\n"
        "  -t, --check              load and validate the config, run its expect cases,\n"
        "                           print findings; exit 0 (valid) or 1\n"
        "      --explain 'M URL'    print which route the request would take and what\n"
        "                           detour would answer; URL is absolute\n"
        "  -V, --version            print the version\n"
        "  -h, --help               this help\n"
        "\n"
        "signals: HUP reloads the config, TERM/INT drain and stop, USR1 reopens the access log\n",
        DEFAULT_CONFIG);
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {
        {"config", required_argument, NULL, 'c'},  {"check", no_argument, NULL, 't'},
        {"explain", required_argument, NULL, 'E'}, {"version", no_argument, NULL, 'V'},
        {"help", no_argument, NULL, 'h'},          {NULL, 0, NULL, 0},
    };
    const char *path = DEFAULT_CONFIG, *explain = NULL;
    bool check = false;
    char err[2048];
    dt_config *cfg = NULL;
    int c;

    if (getenv("DETOUR_DEBUG") != NULL && strcmp(getenv("DETOUR_DEBUG"), "1") == 0)
        dt_log_set_level(DT_LOG_DEBUG);
    while ((c = getopt_long(argc, argv, "c:tVh", opts, NULL)) != -1) {
        switch (c) {
        case 'c':
            path = optarg;
            break;
        case 't':
            check = true;
            break;
        case 'E':
            explain = optarg;
            break;
        case 'V':
            printf("detour %s\n", DT_VERSION);
            return 0;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "detour: unexpected argument '%s'\n", argv[optind]);
        usage(stderr);
        return 2;
    }
    if (dt_config_load(path, &cfg, err, sizeof err) != DT_OK) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    if (check || explain != NULL) {
        int rc = 0;
        if (check) {
            int errors = dt_check_config(cfg, stdout);
            if (dt_front_check_tls(cfg, err, sizeof err) != DT_OK) {
                fprintf(stderr, "%s\n", err);
                errors++;
            }
            if (errors == 0)
                printf("%s: ok (%zu routes, %zu expectations)\n", cfg->path, cfg->nroutes,
                       cfg->nexpects);
            rc = errors == 0 ? 0 : 1;
        }
        if (explain != NULL && dt_explain(cfg, explain, stdout) != DT_OK)
            rc = 2;
        dt_config_unref(cfg);
        return rc;
    }
    return dt_server_run(cfg);
}
