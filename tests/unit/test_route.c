/*
 * test_route.c - host normalisation, prefix matching, route choice, preview
 * host names. Route tables are built by hand, independent of the loader.
 * Hosts are read from the end of a page followed by a PROT_NONE page.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cmocka.h>

#include "guard.h"

#include "route.h"

/* ---- route_host_normalize ---------------------------------------------- */

struct host_case {
    const char *in;
    const char *want; /* NULL: refused */
    int port;
};

static const struct host_case host_cases[] = {
    {"example.com", "example.com", -1},
    {"Example.COM", "example.com", -1},
    {"example.com:8443", "example.com", 8443},
    {"EXAMPLE.com:1", "example.com", 1},
    {"example.com:65535", "example.com", 65535},
    {"example.com:080", "example.com", 80},
    {"example.com.", "example.com", -1},
    {"a-b.c-d.example", "a-b.c-d.example", -1},
    {"127.0.0.1:80", "127.0.0.1", 80},
    {"localhost", "localhost", -1},
    {"[::1]", "[::1]", -1},
    {"[::1]:8443", "[::1]", 8443},
    {"[2001:DB8::A]:443", "[2001:db8::a]", 443},
    {"[::ffff:1.2.3.4]", "[::ffff:1.2.3.4]", -1},
    /* refused */
    {"", NULL, -1},
    {":80", NULL, -1},
    {"example.com:", NULL, -1},
    {"example.com:0", NULL, -1},
    {"example.com:65536", NULL, -1},
    {"example.com:99999999999999999999", NULL, -1},
    {"example.com:80a", NULL, -1},
    {"example.com:-1", NULL, -1},
    {"example.com:+80", NULL, -1},
    {"example.com:80:80", NULL, -1},
    {"example.com: 80", NULL, -1},
    {"user@example.com", NULL, -1},
    {"user:pw@example.com", NULL, -1},
    {"example.com@evil.test", NULL, -1},
    {"exa mple.com", NULL, -1},
    {"example_host.com", NULL, -1},
    {"example.com/", NULL, -1},
    {"ex\xc3\xa4mple.com", NULL, -1},
    {".example.com", NULL, -1},
    {"example..com", NULL, -1},
    {".", NULL, -1},
    {"example.com..", NULL, -1},
    {"[::1", NULL, -1},
    {"::1", NULL, -1},
    {"[]", NULL, -1},
    {"[::1]x", NULL, -1},
    {"[::1]:", NULL, -1},
    {"[::1]:0", NULL, -1},
    {"[fe80::1%eth0]", NULL, -1},
    {"[1.2.3.4]", NULL, -1},
    {"[v1.abc]", NULL, -1},
    {"[::g]", NULL, -1},
};

static void test_host_table(void **state)
{
    for (size_t i = 0; i < sizeof(host_cases) / sizeof(host_cases[0]); i++) {
        const struct host_case *c = &host_cases[i];
        size_t n = strlen(c->in);
        char out[128];
        int port = 12345;
        ssize_t r = route_host_normalize(guarded(c->in, n), n, out, sizeof(out), &port);

        if (c->want == NULL) {
            if (r != -1)
                fail_msg("\"%s\": want -1, got %zd", c->in, r);
            continue;
        }
        if (r != (ssize_t)strlen(c->want) || strcmp(out, c->want) != 0 || port != c->port)
            fail_msg("\"%s\": want \"%s\" port %d, got %zd port %d", c->in, c->want, c->port, r,
                     port);
    }
}

static void test_host_embedded_nul(void **state)
{
    char out[64];
    int port;

    assert_int_equal(route_host_normalize(guarded("a\0b", 3), 3, out, sizeof(out), &port), -1);
    assert_int_equal(route_host_normalize(guarded("a:8\0", 4), 4, out, sizeof(out), &port), -1);
}

static void test_host_outcap(void **state)
{
    char out[16];
    int port;

    /* 11 bytes need 12 with the NUL */
    assert_int_equal(route_host_normalize("example.com", 11, out, 12, &port), 11);
    assert_int_equal(route_host_normalize("example.com", 11, out, 11, &port), -1);
    assert_int_equal(route_host_normalize("[::1]", 5, out, 6, &port), 5);
    assert_int_equal(route_host_normalize("[::1]", 5, out, 5, &port), -1);
    assert_int_equal(route_host_normalize("a", 1, out, 0, &port), -1);
}

static void test_host_port_null(void **state)
{
    char out[32];

    assert_int_equal(route_host_normalize("a.b:81", 6, out, sizeof(out), NULL), 3);
    assert_string_equal(out, "a.b");
}

/* ---- route_prefix_match ------------------------------------------------ */

static bool pm(const char *prefix, const char *path)
{
    size_t n = strlen(path);

    return route_prefix_match(prefix, strlen(prefix), guarded(path, n), n);
}

static void test_prefix_boundary(void **state)
{
    assert_true(pm("/api", "/api"));
    assert_true(pm("/api", "/api/"));
    assert_true(pm("/api", "/api/x"));
    assert_false(pm("/api", "/apix"));
    assert_false(pm("/api", "/ap"));
    assert_false(pm("/api", "/API"));
    assert_true(pm("/api/", "/api/x"));
    assert_true(pm("/api/", "/api/"));
    assert_false(pm("/api/", "/api"));
    assert_false(pm("/api/", "/apix/"));
    assert_true(pm("/", "/"));
    assert_true(pm("/", "/anything/at/all"));
    assert_true(pm("/a/b", "/a/b/c"));
    assert_false(pm("/a/b", "/a/bc"));
    assert_false(pm("", "/"));
}

/* ---- route_match ------------------------------------------------------- */

#define R(h, p) {.host = (char *)(h), .host_len = sizeof(h) - 1, .path = (char *)(p), \
                 .path_len = sizeof(p) - 1}

static const struct fg_route *match(struct fg_route *routes, size_t n, const char *host,
                                    const char *path)
{
    struct fg_config cfg = {.routes = routes, .nroutes = n};

    return route_match(&cfg, host, strlen(host), path, strlen(path));
}

/* Written out of the loader's order on purpose: the answer must not depend on it. */
static struct fg_route unsorted[] = {
    R("", "/"),
    R("", "/api"),
    R("", "/api/auth/"),
    R("admin.example.com", "/"),
    R("api.example.com", "/api"),
    R("", "/static/"),
};

static void test_match_longest_prefix(void **state)
{
    size_t n = sizeof(unsorted) / sizeof(unsorted[0]);

    assert_ptr_equal(match(unsorted, n, "x.test", "/api/auth/login"), &unsorted[2]);
    assert_ptr_equal(match(unsorted, n, "x.test", "/api/auth"), &unsorted[1]);
    assert_ptr_equal(match(unsorted, n, "x.test", "/api/users"), &unsorted[1]);
    assert_ptr_equal(match(unsorted, n, "x.test", "/api"), &unsorted[1]);
    assert_ptr_equal(match(unsorted, n, "x.test", "/apix"), &unsorted[0]);
    assert_ptr_equal(match(unsorted, n, "x.test", "/static"), &unsorted[0]);
    assert_ptr_equal(match(unsorted, n, "x.test", "/static/a.js"), &unsorted[5]);
}

static void test_match_host_specific(void **state)
{
    size_t n = sizeof(unsorted) / sizeof(unsorted[0]);

    /* equal length: host-specific beats host-less */
    assert_ptr_equal(match(unsorted, n, "api.example.com", "/api/x"), &unsorted[4]);
    assert_ptr_equal(match(unsorted, n, "admin.example.com", "/x"), &unsorted[3]);
    /* the host decides first (like nginx's server blocks): a matching
     * host-specific route beats even a longer host-less prefix */
    assert_ptr_equal(match(unsorted, n, "api.example.com", "/api/auth/x"), &unsorted[4]);
    assert_ptr_equal(match(unsorted, n, "admin.example.com", "/api"), &unsorted[3]);
    /* no host-specific route matches the path: host-less routes apply */
    assert_ptr_equal(match(unsorted, n, "api.example.com", "/static/x"), &unsorted[5]);
    /* other hosts never get a host-specific route */
    assert_ptr_equal(match(unsorted, n, "evil.example.com", "/x"), &unsorted[0]);
    assert_ptr_equal(match(unsorted, n, "api.example.com.evil", "/api"), &unsorted[1]);
    assert_ptr_equal(match(unsorted, n, "pi.example.com", "/api"), &unsorted[1]);
}

static void test_match_sorted_order(void **state)
{
    /* host-less first at equal length: the scan must still pick the host route */
    struct fg_route routes[] = {R("", "/api"), R("a.test", "/api"), R("b.test", "/api")};

    assert_ptr_equal(match(routes, 3, "a.test", "/api/v1"), &routes[1]);
    assert_ptr_equal(match(routes, 3, "b.test", "/api/v1"), &routes[2]);
    assert_ptr_equal(match(routes, 3, "c.test", "/api/v1"), &routes[0]);
}

static void test_match_case_via_normalize(void **state)
{
    size_t n = sizeof(unsorted) / sizeof(unsorted[0]);
    char host[64];
    int port;
    ssize_t hl = route_host_normalize("API.Example.COM:8443", 20, host, sizeof(host), &port);
    struct fg_config cfg = {.routes = unsorted, .nroutes = n};

    assert_int_equal(hl, 15);
    assert_ptr_equal(route_match(&cfg, host, (size_t)hl, "/api/x", 6), &unsorted[4]);
}

static void test_match_none(void **state)
{
    struct fg_route routes[] = {R("", "/api/"), R("a.test", "/")};
    struct fg_config empty = {.routes = NULL, .nroutes = 0};

    assert_null(match(routes, 2, "b.test", "/"));
    assert_null(match(routes, 2, "b.test", "/api"));
    assert_null(match(routes, 2, "b.test", "/apix/"));
    assert_ptr_equal(match(routes, 2, "a.test", "/apix/"), &routes[1]);
    assert_null(route_match(&empty, "a.test", 6, "/", 1));
    assert_null(route_match(NULL, "a.test", 6, "/", 1));
}

/* The host length bounds the comparison: a longer buffer is not a match. */
static void test_match_host_len(void **state)
{
    struct fg_route routes[] = {R("a.test", "/")};
    struct fg_config cfg = {.routes = routes, .nroutes = 1};

    assert_ptr_equal(route_match(&cfg, "a.test", 6, "/", 1), &routes[0]);
    assert_null(route_match(&cfg, "a.testx", 7, "/", 1));
    assert_null(route_match(&cfg, "a.test", 5, "/", 1));
}

/* ---- route_preview_name ------------------------------------------------ */

static struct fg_previews pv = {
    .enabled = true,
    .host_prefix = "mvp-",
    .host_suffix = ".preview.example.com",
};

static ssize_t preview(const struct fg_previews *p, const char *host, char *name, size_t cap)
{
    size_t n = strlen(host);

    return route_preview_name(p, guarded(host, n), n, name, cap);
}

static void test_preview_valid(void **state)
{
    char name[64];

    assert_int_equal(preview(&pv, "mvp-abc.preview.example.com", name, sizeof(name)), 3);
    assert_string_equal(name, "abc");
    assert_int_equal(preview(&pv, "mvp-a.preview.example.com", name, sizeof(name)), 1);
    assert_string_equal(name, "a");
    assert_int_equal(preview(&pv, "mvp-my-app-2.preview.example.com", name, sizeof(name)), 8);
    assert_string_equal(name, "my-app-2");
    assert_int_equal(preview(&pv, "mvp-0.preview.example.com", name, sizeof(name)), 1);
    assert_int_equal(preview(&pv, "mvp-a--b.preview.example.com", name, sizeof(name)), 4);
}

static void test_preview_bad_names(void **state)
{
    char name[64];

    assert_int_equal(preview(&pv, "mvp--abc.preview.example.com", name, sizeof(name)), -1);
    assert_int_equal(preview(&pv, "mvp-abc-.preview.example.com", name, sizeof(name)), -1);
    assert_int_equal(preview(&pv, "mvp--.preview.example.com", name, sizeof(name)), -1);
    assert_int_equal(preview(&pv, "mvp-.preview.example.com", name, sizeof(name)), -1);
    assert_int_equal(preview(&pv, "mvp-ABC.preview.example.com", name, sizeof(name)), -1);
    assert_int_equal(preview(&pv, "mvp-a.b.preview.example.com", name, sizeof(name)), -1);
    assert_int_equal(preview(&pv, "mvp-a_b.preview.example.com", name, sizeof(name)), -1);
    assert_int_equal(preview(&pv, "mvp-a b.preview.example.com", name, sizeof(name)), -1);
}

static void test_preview_lookalikes(void **state)
{
    char name[64];

    assert_int_equal(preview(&pv, "mvp-a.preview.example.com.evil.test", name, sizeof(name)), -1);
    assert_int_equal(preview(&pv, "xmvp-a.preview.example.com", name, sizeof(name)), -1);
    assert_int_equal(preview(&pv, "mvp-a.preview.example.comx", name, sizeof(name)), -1);
    assert_int_equal(preview(&pv, "mvp-a.xpreview.example.com", name, sizeof(name)), -1);
    assert_int_equal(preview(&pv, "mvp-a-preview.example.com", name, sizeof(name)), -1);
    assert_int_equal(preview(&pv, "mvp.preview.example.com", name, sizeof(name)), -1);
    assert_int_equal(preview(&pv, "preview.example.com", name, sizeof(name)), -1);
    assert_int_equal(preview(&pv, "mvp-preview.example.com", name, sizeof(name)), -1);
    assert_int_equal(preview(&pv, "", name, sizeof(name)), -1);
    assert_int_equal(preview(&pv, "mvp-a.preview.example.com:443", name, sizeof(name)), -1);
}

/* "mvp-" + name is one DNS label: at most 63 bytes, so name at most 59. */
static void test_preview_label_length(void **state)
{
    char host[256], name[128];

    memset(name, 'a', 59);
    snprintf(host, sizeof(host), "mvp-%.59s.preview.example.com", name);
    assert_int_equal(preview(&pv, host, name, sizeof(name)), 59);

    memset(name, 'a', 60);
    snprintf(host, sizeof(host), "mvp-%.60s.preview.example.com", name);
    assert_int_equal(preview(&pv, host, name, sizeof(name)), -1);
}

/* Only the prefix's last label shares the name's DNS label. */
static void test_preview_dotted_prefix(void **state)
{
    struct fg_previews dotted = {
        .enabled = true, .host_prefix = "apps.mvp-", .host_suffix = ".example.com"};
    char host[256], name[128];

    memset(name, 'b', 59);
    snprintf(host, sizeof(host), "apps.mvp-%.59s.example.com", name);
    assert_int_equal(preview(&dotted, host, name, sizeof(name)), 59);

    memset(name, 'b', 60);
    snprintf(host, sizeof(host), "apps.mvp-%.60s.example.com", name);
    assert_int_equal(preview(&dotted, host, name, sizeof(name)), -1);
}

/* A suffix that continues the label counts toward it too. */
static void test_preview_suffix_in_label(void **state)
{
    struct fg_previews tail = {
        .enabled = true, .host_prefix = "", .host_suffix = "-pr.example.com"};
    char host[256], name[128];

    memset(name, 'c', 60);
    snprintf(host, sizeof(host), "%.60s-pr.example.com", name);
    assert_int_equal(preview(&tail, host, name, sizeof(name)), 60);

    memset(name, 'c', 61);
    snprintf(host, sizeof(host), "%.61s-pr.example.com", name);
    assert_int_equal(preview(&tail, host, name, sizeof(name)), -1);
}

static void test_preview_namecap(void **state)
{
    char name[8];

    assert_int_equal(preview(&pv, "mvp-abcdefg.preview.example.com", name, 8), 7);
    assert_string_equal(name, "abcdefg");
    assert_int_equal(preview(&pv, "mvp-abcdefgh.preview.example.com", name, 8), -1);
}

static void test_preview_disabled(void **state)
{
    struct fg_previews off = {.enabled = false};
    struct fg_previews half = pv;
    char name[64];

    assert_int_equal(preview(&off, "mvp-a.preview.example.com", name, sizeof(name)), -1);
    half.enabled = false;
    assert_int_equal(preview(&half, "mvp-a.preview.example.com", name, sizeof(name)), -1);
    assert_int_equal(preview(NULL, "mvp-a.preview.example.com", name, sizeof(name)), -1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_host_table),
        cmocka_unit_test(test_host_embedded_nul),
        cmocka_unit_test(test_host_outcap),
        cmocka_unit_test(test_host_port_null),
        cmocka_unit_test(test_prefix_boundary),
        cmocka_unit_test(test_match_longest_prefix),
        cmocka_unit_test(test_match_host_specific),
        cmocka_unit_test(test_match_sorted_order),
        cmocka_unit_test(test_match_case_via_normalize),
        cmocka_unit_test(test_match_none),
        cmocka_unit_test(test_match_host_len),
        cmocka_unit_test(test_preview_valid),
        cmocka_unit_test(test_preview_bad_names),
        cmocka_unit_test(test_preview_lookalikes),
        cmocka_unit_test(test_preview_label_length),
        cmocka_unit_test(test_preview_dotted_prefix),
        cmocka_unit_test(test_preview_suffix_in_label),
        cmocka_unit_test(test_preview_namecap),
        cmocka_unit_test(test_preview_disabled),
    };
    return cmocka_run_group_tests(tests, guard_setup, guard_teardown);
}
