/*
 * test_uri.c - uri_normalize_path, table-driven.
 *
 * Every input is copied to the very end of a readable page that is followed
 * by a PROT_NONE page, and every output buffer ends exactly at such a page,
 * so a read past LEN or a write past OUTCAP faults instead of passing.
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

#include "uri.h"

struct guard {
    char *base;  /* two pages: readable, then PROT_NONE */
    size_t page; /* page size */
};

static struct guard in_guard, out_guard;

static void guard_init(struct guard *g)
{
    g->page = (size_t)sysconf(_SC_PAGESIZE);
    g->base = mmap(NULL, 2 * g->page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    assert_true(g->base != MAP_FAILED);
    assert_int_equal(mprotect(g->base + g->page, g->page, PROT_NONE), 0);
}

static void guard_fini(struct guard *g)
{
    munmap(g->base, 2 * g->page);
    g->base = NULL;
}

/* N bytes whose last one is the last readable byte of the page. */
static char *guard_tail(struct guard *g, size_t n)
{
    assert_true(n <= g->page);
    return g->base + g->page - n;
}

static int setup(void **state)
{
    guard_init(&in_guard);
    guard_init(&out_guard);
    return 0;
}

static int teardown(void **state)
{
    guard_fini(&in_guard);
    guard_fini(&out_guard);
    return 0;
}

/* Normalise S (length N) with exactly OUTCAP bytes of output space. */
static ssize_t run(const char *s, size_t n, size_t outcap, char **outp)
{
    char *in = guard_tail(&in_guard, n);
    char *out = guard_tail(&out_guard, outcap);

    memcpy(in, s, n);
    memset(out, 'Z', outcap);
    *outp = out;
    return uri_normalize_path(in, n, out, outcap);
}

struct uri_case {
    const char *in;
    const char *want; /* NULL: refused */
};

static const struct uri_case cases[] = {
    /* plain paths and slash merging */
    {"/", "/"},
    {"/a", "/a"},
    {"/a/b/", "/a/b/"},
    {"//", "/"},
    {"//api//x", "/api/x"},
    {"/a///b////", "/a/b/"},
    /* dot segments (RFC 3986 5.2.4) */
    {"/.", "/"},
    {"/./", "/"},
    {"/a/./b/../c", "/a/c"},
    {"/a/b/..", "/a/"},
    {"/a/b/.", "/a/b/"},
    {"/a/b/../", "/a/"},
    {"/a/..", "/"},
    {"/api/../admin", "/admin"},
    {"/a/b/c/../../d", "/a/d"},
    {"/a//..//b", "/b"},
    {"/...", "/..."},
    {"/a/.../b", "/a/.../b"},
    {"/.a/..b/a.", "/.a/..b/a."},
    /* climbing above the root */
    {"/..", NULL},
    {"/../", NULL},
    {"/../x", NULL},
    {"/a/../..", NULL},
    {"/a/../../b", NULL},
    {"/api/%2e%2e/%2e%2e/etc", NULL},
    {"/%2e%2e/x", NULL},
    {"/.%2e/", NULL},
    {"/%2E./", NULL},
    /* decoding happens before dot removal */
    {"/a/%2e%2e/b", "/b"},
    {"/a/%2e/b", "/a/b"},
    {"/a/.%2E", "/"},
    /* dot segments with path parameters */
    {"/..;/x", NULL},
    {"/public/..;/admin", NULL},
    {"/a/.;x/b", NULL},
    {"/a/%2e%2e;/b", NULL},
    /* any path parameter: a servlet container serves "/api;/x" as "/api/x" */
    {"/a;b/c", NULL},
    {"/a/..x;/b", NULL},
    {"/api;/x", NULL},
    {"/api;jsessionid=1/x", NULL},
    {"/a%70i;/x", NULL},
    {"/api/x;", NULL},
    {"/;/api/x", NULL},
    {"/;", NULL},
    {";", NULL},
    {"/api/x;a=1", NULL},
    {"/api%3B/x", NULL},
    {"/api%3b/x", NULL},
    {"/%3B", NULL},
    {"/a/%3bjsessionid=1", NULL},
    /* neighbours of ';' that carry no parameter stay */
    {"/a,b=c", "/a,b=c"},
    {"/a%3a%3C", "/a%3A%3C"},
    /* unreserved escapes decoded, others kept uppercased */
    {"/%41", "/A"},
    {"/%7e%5F%2d%30%7A", "/~_-0z"},
    {"/%3f", "/%3F"},
    {"/a%20b", "/a%20b"},
    {"/a%2a%7b", "/a%2A%7B"},
    {"/a%c3%a9", "/a%C3%A9"},
    {"/%25", "/%25"},
    {"/%252e%252e", "/%252e%252e"},
    {"/%0a", "/%0A"},
    /* refused escapes and bytes */
    {"/%2F", NULL},
    {"/a%2fb", NULL},
    {"/a%5cb", NULL},
    {"/a%5Cb", NULL},
    {"/%00", NULL},
    {"/a\\b", NULL},
    {"/%", NULL},
    {"/%4", NULL},
    {"/a%zz", NULL},
    {"/%g1", NULL},
    {"/%1", NULL},
    {"/a b", NULL},
    {"/a\tb", NULL},
    {"/a\x7f", NULL},
    {"/a\x80", NULL},
    {"/\xc3\xa9", NULL},
    {"/a#b", NULL},
    {"/a?b", NULL},
    /* not a path at all */
    {"a/b", NULL},
    {"", NULL},
    {"*", NULL},
    {"http://x/", NULL},
};

static void test_table(void **state)
{
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        const struct uri_case *c = &cases[i];
        size_t n = strlen(c->in);
        char *out;
        ssize_t r = run(c->in, n, n + 1, &out);

        if (c->want == NULL) {
            if (r != -1)
                fail_msg("\"%s\": want -1, got %zd \"%.*s\"", c->in, r, (int)r, out);
            continue;
        }
        if (r != (ssize_t)strlen(c->want) || strcmp(out, c->want) != 0)
            fail_msg("\"%s\": want \"%s\", got %zd", c->in, c->want, r);
    }
}

/* Inputs with embedded NUL cannot live in a string table. */
static void test_raw_nul(void **state)
{
    char *out;

    assert_int_equal(run("/a\0b", 4, 5, &out), -1);
    assert_int_equal(run("/\0", 2, 3, &out), -1);
}

/* The length bounds the input: bytes after LEN are never looked at. */
static void test_len_bounds_input(void **state)
{
    char *out;

    assert_int_equal(run("/abc/..", 4, 5, &out), 4);
    assert_string_equal(out, "/abc");
    /* an escape cut by LEN is malformed, whatever follows */
    assert_int_equal(run("/a%41", 4, 5, &out), -1);
}

static void test_outcap_exact(void **state)
{
    char *out;

    assert_int_equal(run("/abc", 4, 5, &out), 4);
    assert_string_equal(out, "/abc");
    assert_int_equal(run("/", 1, 2, &out), 1);
    assert_string_equal(out, "/");
}

static void test_outcap_too_small(void **state)
{
    char *out;

    /* no room for the NUL */
    assert_int_equal(run("/abc", 4, 4, &out), -1);
    assert_int_equal(run("/abc", 4, 1, &out), -1);
    assert_int_equal(run("/", 1, 1, &out), -1);
    assert_int_equal(run("/%3f", 4, 4, &out), -1);
    assert_int_equal(run("/a/b", 4, 2, &out), -1);
}

/* Writes stay inside OUTCAP even when the input is much longer. */
static void test_outcap_small_long_input(void **state)
{
    char in[512];
    char *out;

    memset(in, 'x', sizeof(in));
    in[0] = '/';
    assert_int_equal(run(in, sizeof(in), 16, &out), -1);
    assert_int_equal(run(in, sizeof(in), sizeof(in) + 1, &out), (ssize_t)sizeof(in));
}

static void test_null_args(void **state)
{
    char out[8];

    assert_int_equal(uri_normalize_path(NULL, 1, out, sizeof(out)), -1);
    assert_int_equal(uri_normalize_path("/", 1, NULL, 8), -1);
}

/* Normalising a normalised path changes nothing. */
static void test_idempotent(void **state)
{
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        const char *w = cases[i].want;
        char *out;

        if (w == NULL)
            continue;
        size_t n = strlen(w);
        assert_int_equal(run(w, n, n + 1, &out), (ssize_t)n);
        assert_string_equal(out, w);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_table),
        cmocka_unit_test(test_raw_nul),
        cmocka_unit_test(test_len_bounds_input),
        cmocka_unit_test(test_outcap_exact),
        cmocka_unit_test(test_outcap_too_small),
        cmocka_unit_test(test_outcap_small_long_input),
        cmocka_unit_test(test_null_args),
        cmocka_unit_test(test_idempotent),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
