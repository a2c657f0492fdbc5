/*
 * test_access.c - forward-mode access control and loop detection
 * (proxy/access.c): which clients may use the proxy (IPv4, IPv6 and
 * IPv4-mapped addresses against CIDRs, and the loopback-only default),
 * destinations by name (exact and wildcard hosts, ports, address literals,
 * "decide by address" when only CIDR rules could allow it), destinations by
 * resolved address, CONNECT ports, and whether an address is detour itself
 * (specific and wildcard listeners).
 *
 * Every table row is loaded through dt_config_load() from a config written
 * to a temporary directory, so the rules are exactly what the loader builds
 * from the text an operator writes.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include <arpa/inet.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include "detour/access.h"
#include "detour/config.h"

static char tmpdir[PATH_MAX - 64];

static int group_setup(void **state)
{
    const char *base = getenv("DETOUR_TEST_TMP");
    if (base == NULL || *base == '\0')
        base = "/tmp";
    mkdir(base, 0755); /* ctest's testtmp may not exist yet */
    snprintf(tmpdir, sizeof tmpdir, "%s/detour-access-XXXXXX", base);
    return mkdtemp(tmpdir) != NULL ? 0 : -1;
}

static int group_teardown(void **state)
{
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/access.cfg", tmpdir);
    unlink(path);
    rmdir(tmpdir);
    return 0;
}

/* Load a config made of TEXT; fail the test with the loader's message if it is refused. */
static dt_config *load(const char *text)
{
    char path[PATH_MAX], err[512] = "";
    dt_config *cfg = NULL;

    snprintf(path, sizeof path, "%s/access.cfg", tmpdir);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    assert_true(fputs(text, f) >= 0);
    assert_int_equal(fclose(f), 0);
    if (dt_config_load(path, &cfg, err, sizeof err) != DT_OK)
        fail_msg("config refused: %s\n%s", err, text);
    assert_non_null(cfg);
    return cfg;
}

/* A forward-mode config whose forward block holds BODY (NULL: no forward block). */
static dt_config *load_forward(const char *body)
{
    char text[2048];
    if (body == NULL)
        snprintf(text, sizeof text, "mode = \"forward\";\n");
    else
        snprintf(text, sizeof text, "mode = \"forward\";\nforward = { %s };\n", body);
    return load(text);
}

/* "10.0.0.1", "2001:db8::1" or "::ffff:10.0.0.1" and PORT as a sockaddr. */
static const struct sockaddr *addr(const char *text, unsigned port, struct sockaddr_storage *ss)
{
    struct sockaddr_in *in = (struct sockaddr_in *)ss;
    struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)ss;

    memset(ss, 0, sizeof *ss);
    if (inet_pton(AF_INET, text, &in->sin_addr) == 1) {
        in->sin_family = AF_INET;
        in->sin_port = htons((uint16_t)port);
    } else if (inet_pton(AF_INET6, text, &in6->sin6_addr) == 1) {
        in6->sin6_family = AF_INET6;
        in6->sin6_port = htons((uint16_t)port);
    } else {
        fail_msg("test table: \"%s\" is not an address", text);
    }
    return (const struct sockaddr *)ss;
}

static dt_str S(const char *s)
{
    return (dt_str){s, strlen(s)};
}

/* ---- clients ------------------------------------------------------------------ */

typedef struct client_case {
    const char *forward; /* the forward block's body, NULL for none */
    const char *client;
    bool allowed;
} client_case;

#define NO_BLOCK NULL
#define ONLY_PORTS "connect_ports = [443]"

static const client_case client_cases[] = {
    /* No forward block: loopback only, IPv4 and IPv6, mapped seen as IPv4. */
    {NO_BLOCK, "127.0.0.1", true},
    {NO_BLOCK, "127.255.255.254", true},
    {NO_BLOCK, "::1", true},
    {NO_BLOCK, "::ffff:127.0.0.1", true},
    {NO_BLOCK, "10.0.0.1", false},
    {NO_BLOCK, "192.0.2.2", false},
    {NO_BLOCK, "128.0.0.1", false},
    {NO_BLOCK, "0.0.0.0", false},
    {NO_BLOCK, "::2", false},
    {NO_BLOCK, "::", false},
    {NO_BLOCK, "fe80::1", false},
    {NO_BLOCK, "::ffff:10.0.0.1", false},
    /* A forward block without allow_clients keeps the loopback default. */
    {ONLY_PORTS, "127.0.0.1", true},
    {ONLY_PORTS, "::1", true},
    {ONLY_PORTS, "10.1.1.1", false},
    /* An explicit list replaces the default. */
    {"allow_clients = [\"10.0.0.0/8\"]", "10.0.0.0", true},
    {"allow_clients = [\"10.0.0.0/8\"]", "10.255.255.255", true},
    {"allow_clients = [\"10.0.0.0/8\"]", "9.255.255.255", false},
    {"allow_clients = [\"10.0.0.0/8\"]", "11.0.0.0", false},
    {"allow_clients = [\"10.0.0.0/8\"]", "127.0.0.1", false},
    {"allow_clients = [\"10.0.0.0/8\"]", "::1", false},
    {"allow_clients = [\"10.0.0.0/8\"]", "::ffff:10.1.2.3", true},
    {"allow_clients = [\"10.0.0.0/8\"]", "::ffff:11.1.2.3", false},
    /* Prefixes that do not end on a byte. */
    {"allow_clients = [\"192.168.1.128/25\"]", "192.168.1.128", true},
    {"allow_clients = [\"192.168.1.128/25\"]", "192.168.1.255", true},
    {"allow_clients = [\"192.168.1.128/25\"]", "192.168.1.127", false},
    {"allow_clients = [\"172.16.0.0/12\"]", "172.31.255.255", true},
    {"allow_clients = [\"172.16.0.0/12\"]", "172.32.0.0", false},
    {"allow_clients = [\"172.16.0.0/12\"]", "172.15.255.255", false},
    /* Host bits written in the range are ignored. */
    {"allow_clients = [\"172.16.9.9/12\"]", "172.20.1.1", true},
    /* A bare address is one host. */
    {"allow_clients = [\"203.0.113.7\"]", "203.0.113.7", true},
    {"allow_clients = [\"203.0.113.7\"]", "203.0.113.6", false},
    {"allow_clients = [\"203.0.113.7\"]", "203.0.113.8", false},
    {"allow_clients = [\"2001:db8::7\"]", "2001:db8::7", true},
    {"allow_clients = [\"2001:db8::7\"]", "2001:db8::8", false},
    /* IPv6 ranges. */
    {"allow_clients = [\"2001:db8::/32\"]", "2001:db8:ffff:ffff::1", true},
    {"allow_clients = [\"2001:db8::/32\"]", "2001:db9::", false},
    {"allow_clients = [\"2001:db8::/32\"]", "2001:db7:ffff::", false},
    {"allow_clients = [\"2001:db8::/33\"]", "2001:db8:7fff::1", true},
    {"allow_clients = [\"2001:db8::/33\"]", "2001:db8:8000::1", false},
    /* 32.1.13.184 is 0x20010db8: as a mapped address it is IPv4, not 2001:db8::/32. */
    {"allow_clients = [\"2001:db8::/32\"]", "::ffff:32.1.13.184", false},
    /* /0 covers its own family only. */
    {"allow_clients = [\"0.0.0.0/0\"]", "8.8.8.8", true},
    {"allow_clients = [\"0.0.0.0/0\"]", "::ffff:8.8.8.8", true},
    {"allow_clients = [\"0.0.0.0/0\"]", "2001:db8::1", false},
    {"allow_clients = [\"::/0\"]", "2001:db8::1", true},
    {"allow_clients = [\"::/0\"]", "::1", true},
    {"allow_clients = [\"::/0\"]", "8.8.8.8", false},
    {"allow_clients = [\"::/0\"]", "::ffff:8.8.8.8", false},
    /* Several ranges: any of them. */
    {"allow_clients = [\"10.0.0.0/8\", \"::1\"]", "10.9.8.7", true},
    {"allow_clients = [\"10.0.0.0/8\", \"::1\"]", "::1", true},
    {"allow_clients = [\"10.0.0.0/8\", \"::1\"]", "127.0.0.1", false},
};

static void test_clients(void **state)
{
    for (size_t i = 0; i < DT_ARRAY_LEN(client_cases); i++) {
        const client_case *c = &client_cases[i];
        struct sockaddr_storage ss;
        dt_config *cfg = load_forward(c->forward);
        bool got = dt_access_client(&cfg->forward, addr(c->client, 40000, &ss));
        dt_config_unref(cfg);
        if (got != c->allowed)
            fail_msg("client %s with forward { %s }: %s, expected %s", c->client,
                     c->forward ? c->forward : "(none)", got ? "allowed" : "refused",
                     c->allowed ? "allowed" : "refused");
    }
}

/* The same checks straight on dt_cidr_contains, with hand-made ranges. */
static void test_cidr_contains(void **state)
{
    struct sockaddr_storage ss;
    dt_cidr v4 = {.family = AF_INET, .addr = {10, 1, 0, 0}, .bits = 16};
    dt_cidr v6 = {.family = AF_INET6, .addr = {0x20, 0x01, 0x0d, 0xb8, 0x80}, .bits = 33};
    dt_cidr all4 = {.family = AF_INET, .bits = 0};
    dt_cidr one6 = {.family = AF_INET6, .addr = {[15] = 1}, .bits = 128};

    assert_true(dt_cidr_contains(&v4, addr("10.1.255.255", 1, &ss)));
    assert_true(dt_cidr_contains(&v4, addr("::ffff:10.1.0.1", 1, &ss)));
    assert_false(dt_cidr_contains(&v4, addr("10.2.0.0", 1, &ss)));
    /* An IPv4-compatible address (::10.1.0.1) is not a mapped one. */
    assert_false(dt_cidr_contains(&v4, addr("::a01:1", 1, &ss)));
    assert_true(dt_cidr_contains(&v6, addr("2001:db8:8000::", 1, &ss)));
    assert_true(dt_cidr_contains(&v6, addr("2001:db8:ffff:ffff:ffff:ffff:ffff:ffff", 1, &ss)));
    assert_false(dt_cidr_contains(&v6, addr("2001:db8:7fff:ffff::", 1, &ss)));
    assert_true(dt_cidr_contains(&all4, addr("255.255.255.255", 1, &ss)));
    assert_false(dt_cidr_contains(&all4, addr("::", 1, &ss)));
    assert_true(dt_cidr_contains(&one6, addr("::1", 1, &ss)));
    assert_false(dt_cidr_contains(&one6, addr("::ffff:127.0.0.1", 1, &ss)));

    /* A family detour does not know is never inside. */
    struct sockaddr unix_sa = {.sa_family = AF_UNIX};
    assert_false(dt_cidr_contains(&all4, &unix_sa));
    assert_false(
        dt_access_client(&(dt_forward){.allow_clients = &all4, .nallow_clients = 1}, &unix_sa));
}

/* ---- destinations by name ------------------------------------------------------ */

typedef struct name_case {
    const char *dests; /* allow_destinations list text, NULL: key absent */
    const char *host;
    unsigned port;
    dt_access want;
} name_case;

#define ALLOW DT_ACCESS_ALLOW
#define DENY DT_ACCESS_DENY
#define BY_ADDR DT_ACCESS_BY_ADDRESS

static const name_case name_cases[] = {
    /* No rule, or an empty list: any destination. */
    {NULL, "anything.example", 80, ALLOW},
    {NULL, "10.1.2.3", 22, ALLOW},
    {"[]", "anything.example", 443, ALLOW},
    /* Exact names, case-insensitive, any port. */
    {"[\"api.example.com\"]", "api.example.com", 443, ALLOW},
    {"[\"api.example.com\"]", "API.Example.COM", 80, ALLOW},
    {"[\"API.EXAMPLE.COM\"]", "api.example.com", 80, ALLOW},
    {"[\"api.example.com\"]", "x.api.example.com", 443, DENY},
    {"[\"api.example.com\"]", "example.com", 443, DENY},
    {"[\"api.example.com\"]", "pi.example.com", 443, DENY},
    {"[\"api.example.com\"]", "api.example.com.evil.net", 443, DENY},
    {"[\"api.example.com\"]", "api.example.co", 443, DENY},
    {"[\"api.example.com\"]", "", 443, DENY},
    /* A name rule never lets an address literal through. */
    {"[\"api.example.com\"]", "10.1.2.3", 443, DENY},
    {"[\"api.example.com\"]", "[::1]", 443, DENY},
    /* Wildcards: any subdomain at any depth, never the bare domain or a look-alike. */
    {"[\"*.example.com\"]", "a.example.com", 443, ALLOW},
    {"[\"*.example.com\"]", "a.b.c.example.com", 443, ALLOW},
    {"[\"*.example.com\"]", "A.EXAMPLE.COM", 443, ALLOW},
    {"[\"*.example.com\"]", "example.com", 443, DENY},
    {"[\"*.example.com\"]", ".example.com", 443, DENY},
    {"[\"*.example.com\"]", "badexample.com", 443, DENY},
    {"[\"*.example.com\"]", "a.example.com.evil.net", 443, DENY},
    {"[\"*.example.com\"]", "a.example.org", 443, DENY},
    /* Ports on name rules. */
    {"[\"*.example.net:8443\"]", "a.example.net", 8443, ALLOW},
    {"[\"*.example.net:8443\"]", "a.example.net", 443, DENY},
    {"[\"api.example.com:443\", \"api.example.com:80\"]", "api.example.com", 80, ALLOW},
    {"[\"api.example.com:443\", \"api.example.com:80\"]", "api.example.com", 8080, DENY},
    /* Names plus CIDRs: a name no name rule allows is decided by its address. */
    {"[\"api.example.com:443\", \"10.0.0.0/8:80\"]", "api.example.com", 443, ALLOW},
    {"[\"api.example.com:443\", \"10.0.0.0/8:80\"]", "api.example.com", 80, BY_ADDR},
    {"[\"api.example.com:443\", \"10.0.0.0/8:80\"]", "other.example", 80, BY_ADDR},
    {"[\"api.example.com:443\", \"10.0.0.0/8:80\"]", "other.example", 443, BY_ADDR},
    /* ... but an address literal is decided right away. */
    {"[\"api.example.com:443\", \"10.0.0.0/8:80\"]", "10.1.2.3", 80, ALLOW},
    {"[\"api.example.com:443\", \"10.0.0.0/8:80\"]", "10.1.2.3", 443, DENY},
    {"[\"api.example.com:443\", \"10.0.0.0/8:80\"]", "11.0.0.1", 80, DENY},
    {"[\"api.example.com:443\", \"10.0.0.0/8:80\"]", "[::1]", 80, DENY},
    {"[\"api.example.com:443\", \"10.0.0.0/8:80\"]", "::ffff:10.0.0.9", 80, ALLOW},
    {"[\"api.example.com:443\", \"10.0.0.0/8:80\"]", "[::ffff:10.0.0.9]", 80, ALLOW},
    /* Only CIDR rules: every name goes by address. */
    {"[\"10.0.0.0/8\"]", "db.internal", 5432, BY_ADDR},
    {"[\"10.0.0.0/8\"]", "localhost", 80, BY_ADDR},
    {"[\"10.0.0.0/8\"]", "10.9.9.9", 22, ALLOW},
    {"[\"10.0.0.0/8\"]", "127.0.0.1", 22, DENY},
    /* A bare IPv4 address is a /32 rule. */
    {"[\"192.0.2.10\"]", "192.0.2.10", 80, ALLOW},
    {"[\"192.0.2.10\"]", "192.0.2.11", 80, DENY},
    /* IPv6 ranges, bracketed with a port or bare. */
    {"[\"[2001:db8::/32]:443\"]", "[2001:db8::5]", 443, ALLOW},
    {"[\"[2001:db8::/32]:443\"]", "2001:db8::5", 443, ALLOW},
    {"[\"[2001:db8::/32]:443\"]", "[2001:db8::5]", 80, DENY},
    {"[\"[2001:db8::/32]:443\"]", "[2001:db9::5]", 443, DENY},
    {"[\"[2001:db8::/32]:443\"]", "v6.example", 443, BY_ADDR},
    {"[\"2001:db8::/32\"]", "[2001:db8::1]", 8080, ALLOW},
    {"[\"2001:db8::/32\"]", "192.0.2.1", 8080, DENY},
    /* A malformed bracket literal is a name, not an address. */
    {"[\"[2001:db8::/32]:443\"]", "[2001:db8::5", 443, BY_ADDR},
};

static const char *access_name(dt_access a)
{
    return a == DT_ACCESS_ALLOW ? "ALLOW" : a == DT_ACCESS_DENY ? "DENY" : "BY_ADDRESS";
}

static void test_destination_names(void **state)
{
    char body[512];

    for (size_t i = 0; i < DT_ARRAY_LEN(name_cases); i++) {
        const name_case *c = &name_cases[i];
        if (c->dests != NULL)
            snprintf(body, sizeof body, "allow_destinations = %s", c->dests);
        else
            snprintf(body, sizeof body, "connect_ports = [443]");
        dt_config *cfg = load_forward(body);
        dt_access got = dt_access_dest_name(&cfg->forward, S(c->host), c->port);
        dt_config_unref(cfg);
        if (got != c->want)
            fail_msg("destination %s port %u with %s: %s, expected %s", c->host, c->port, body,
                     access_name(got), access_name(c->want));
    }
}

/* ---- destinations by address ---------------------------------------------------- */

typedef struct addr_case {
    const char *dests;
    const char *addr;
    unsigned port;
    bool allowed;
} addr_case;

#define MIXED "[\"10.0.0.0/8:80\", \"[2001:db8::/32]:443\", \"192.0.2.0/24\", \"*.example.com\"]"

static const addr_case addr_cases[] = {
    {NULL, "203.0.113.1", 1, true},
    {NULL, "::1", 65535, true},
    {MIXED, "10.1.1.1", 80, true},
    {MIXED, "10.1.1.1", 81, false},
    {MIXED, "11.1.1.1", 80, false},
    {MIXED, "::ffff:10.0.0.1", 80, true},
    {MIXED, "2001:db8::1", 443, true},
    {MIXED, "2001:db8::1", 80, false},
    {MIXED, "2001:db9::1", 443, false},
    {MIXED, "192.0.2.200", 1, true},
    {MIXED, "192.0.2.200", 65535, true},
    {MIXED, "192.0.3.1", 80, false},
    {MIXED, "127.0.0.1", 80, false},
    /* Name rules say nothing about addresses: with no CIDR rule, no address is allowed. */
    {"[\"*.example.com\"]", "93.184.216.34", 443, false},
};

static void test_destination_addresses(void **state)
{
    char body[512];

    for (size_t i = 0; i < DT_ARRAY_LEN(addr_cases); i++) {
        const addr_case *c = &addr_cases[i];
        struct sockaddr_storage ss;
        if (c->dests != NULL)
            snprintf(body, sizeof body, "allow_destinations = %s", c->dests);
        else
            snprintf(body, sizeof body, "connect_ports = [443]");
        dt_config *cfg = load_forward(body);
        bool got = dt_access_dest_addr(&cfg->forward, addr(c->addr, c->port, &ss));
        dt_config_unref(cfg);
        if (got != c->allowed)
            fail_msg("address %s port %u with %s: %s, expected %s", c->addr, c->port, body,
                     got ? "allowed" : "refused", c->allowed ? "allowed" : "refused");
    }
    /* An unknown address family is refused when rules exist. */
    dt_config *cfg = load_forward("allow_destinations = [\"0.0.0.0/0\", \"::/0\"]");
    struct sockaddr unix_sa = {.sa_family = AF_UNIX};
    assert_false(dt_access_dest_addr(&cfg->forward, &unix_sa));
    dt_config_unref(cfg);
}

/* ---- CONNECT ports -------------------------------------------------------------- */

static void test_connect_ports(void **state)
{
    dt_config *cfg = load_forward(NO_BLOCK);
    assert_int_equal(cfg->forward.nconnect_ports, 1);
    assert_true(dt_access_connect_port(&cfg->forward, 443));
    assert_false(dt_access_connect_port(&cfg->forward, 80));
    assert_false(dt_access_connect_port(&cfg->forward, 8443));
    assert_false(dt_access_connect_port(&cfg->forward, 0));
    assert_false(dt_access_connect_port(&cfg->forward, 443 + 65536));
    dt_config_unref(cfg);

    cfg = load_forward("connect_ports = [443, 8443, 65535]");
    assert_true(dt_access_connect_port(&cfg->forward, 443));
    assert_true(dt_access_connect_port(&cfg->forward, 8443));
    assert_true(dt_access_connect_port(&cfg->forward, 65535));
    assert_false(dt_access_connect_port(&cfg->forward, 80));
    assert_false(dt_access_connect_port(&cfg->forward, 0));
    dt_config_unref(cfg);

    /* An empty list turns CONNECT off altogether. */
    cfg = load_forward("connect_ports = []");
    assert_false(dt_access_connect_port(&cfg->forward, 443));
    assert_false(dt_access_connect_port(&cfg->forward, 80));
    dt_config_unref(cfg);

    /* allow_clients alone keeps the default port. */
    cfg = load_forward("allow_clients = [\"10.0.0.0/8\"]");
    assert_true(dt_access_connect_port(&cfg->forward, 443));
    assert_false(dt_access_connect_port(&cfg->forward, 80));
    dt_config_unref(cfg);
}

/* ---- self ---------------------------------------------------------------------- */

typedef struct self_case {
    const char *listen; /* the listen setting's value */
    const char *dest;
    unsigned port;
    bool self;
} self_case;

/* This host's addresses for the wildcard cases, as getifaddrs() would list them. */
static const char *const local_addrs[] = {"127.0.0.1", "::1", "192.0.2.2", "10.0.0.5", "fd00::2"};

static const self_case self_cases[] = {
    /* A specific listener: that address and port only. */
    {"\"127.0.0.1:8080\"", "127.0.0.1", 8080, true},
    {"\"127.0.0.1:8080\"", "::ffff:127.0.0.1", 8080, true},
    {"\"127.0.0.1:8080\"", "127.0.0.1", 8081, false},
    {"\"127.0.0.1:8080\"", "127.0.0.2", 8080, false},
    {"\"127.0.0.1:8080\"", "192.0.2.2", 8080, false},
    {"\"127.0.0.1:8080\"", "::1", 8080, false},
    {"\"192.0.2.2:80\"", "192.0.2.2", 80, true},
    {"\"192.0.2.2:80\"", "127.0.0.1", 80, false},
    {"\"[fd00::2]:80\"", "fd00::2", 80, true},
    {"\"[fd00::2]:80\"", "fd00::3", 80, false},
    /* An IPv4 wildcard: loopback and every address of this host on that port. */
    {"\"0.0.0.0:8080\"", "127.0.0.1", 8080, true},
    {"\"0.0.0.0:8080\"", "127.8.9.1", 8080, true},
    {"\"0.0.0.0:8080\"", "192.0.2.2", 8080, true},
    {"\"0.0.0.0:8080\"", "10.0.0.5", 8080, true},
    {"\"0.0.0.0:8080\"", "::ffff:10.0.0.5", 8080, true},
    {"\"0.0.0.0:8080\"", "0.0.0.0", 8080, true},
    {"\"0.0.0.0:8080\"", "10.0.0.6", 8080, false},
    {"\"0.0.0.0:8080\"", "192.0.2.2", 9090, false},
    {"\"*:8080\"", "192.0.2.2", 8080, true},
    {"\"*:8080\"", "203.0.113.9", 8080, false},
    /* An IPv6 wildcard. */
    {"\"[::]:8080\"", "::1", 8080, true},
    {"\"[::]:8080\"", "fd00::2", 8080, true},
    {"\"[::]:8080\"", "::", 8080, true},
    {"\"[::]:8080\"", "fd00::3", 8080, false},
    {"\"[::]:8080\"", "fd00::2", 8081, false},
    /* Several listeners: any of them. */
    {"[\"127.0.0.1:8080\", \"192.0.2.2:3128\"]", "192.0.2.2", 3128, true},
    {"[\"127.0.0.1:8080\", \"192.0.2.2:3128\"]", "127.0.0.1", 8080, true},
    {"[\"127.0.0.1:8080\", \"192.0.2.2:3128\"]", "127.0.0.1", 3128, false},
    {"[\"127.0.0.1:8080\", \"192.0.2.2:3128\"]", "192.0.2.2", 8080, false},
};

static void test_self(void **state)
{
    struct sockaddr_storage local[DT_ARRAY_LEN(local_addrs)];
    char text[256];

    for (size_t i = 0; i < DT_ARRAY_LEN(local_addrs); i++)
        addr(local_addrs[i], 0, &local[i]);
    for (size_t i = 0; i < DT_ARRAY_LEN(self_cases); i++) {
        const self_case *c = &self_cases[i];
        struct sockaddr_storage ss;
        snprintf(text, sizeof text, "listen = %s;\nmode = \"forward\";\n", c->listen);
        dt_config *cfg = load(text);
        bool got =
            dt_access_is_self(cfg, addr(c->dest, c->port, &ss), local, DT_ARRAY_LEN(local_addrs));
        dt_config_unref(cfg);
        if (got != c->self)
            fail_msg("%s:%u with listen = %s: %s, expected %s", c->dest, c->port, c->listen,
                     got ? "self" : "not self", c->self ? "self" : "not self");
    }
}

/* Without the host's address list a wildcard listener still knows loopback is itself. */
static void test_self_without_local_list(void **state)
{
    struct sockaddr_storage ss;
    dt_config *cfg = load("listen = \"0.0.0.0:8080\";\n");
    assert_true(dt_access_is_self(cfg, addr("127.0.0.1", 8080, &ss), NULL, 0));
    assert_false(dt_access_is_self(cfg, addr("192.0.2.2", 8080, &ss), NULL, 0));
    struct sockaddr unix_sa = {.sa_family = AF_UNIX};
    assert_false(dt_access_is_self(cfg, &unix_sa, NULL, 0));
    dt_config_unref(cfg);
}

/*
 * connect() to the unspecified address reaches this host (Linux treats
 * 0.0.0.0 as 127.0.0.1 and :: as ::1), so "0.0.0.0:PORT" is detour itself
 * whenever detour listens on loopback at that port, even with a specific
 * listener.
 */
static void test_self_unspecified_destination(void **state)
{
    struct sockaddr_storage ss;
    dt_config *cfg = load("listen = [\"127.0.0.1:8080\", \"[::1]:8080\"];\n");
    assert_true(dt_access_is_self(cfg, addr("0.0.0.0", 8080, &ss), NULL, 0));
    assert_true(dt_access_is_self(cfg, addr("::", 8080, &ss), NULL, 0));
    assert_false(dt_access_is_self(cfg, addr("0.0.0.0", 8081, &ss), NULL, 0));
    dt_config_unref(cfg);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_clients),
        cmocka_unit_test(test_cidr_contains),
        cmocka_unit_test(test_destination_names),
        cmocka_unit_test(test_destination_addresses),
        cmocka_unit_test(test_connect_ports),
        cmocka_unit_test(test_self),
        cmocka_unit_test(test_self_without_local_list),
        cmocka_unit_test(test_self_unspecified_destination),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
