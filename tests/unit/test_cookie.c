/*
 * test_cookie.c - the one cookie-string reader: pieces, names, values.
 *
 * Every input ends right before a PROT_NONE page (guard.h), so reading one
 * byte past it faults.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "cookie.h"
#include "guard.h"

/* The pieces of IN as "name|value" joined by ",", with '!' after a name
 * that matched MATCH. */
static void pieces(const char *in, const char *match, char *out, size_t cap)
{
    size_t n = strlen(in), o = 0;
    const char *g = guarded(in, n);
    struct cookie c;

    out[0] = '\0';
    for (size_t pos = 0; cookie_next(g, n, &pos, &c);) {
        assert_true(c.pair >= g && c.pair + c.pair_len <= g + n);
        assert_true(c.name >= c.pair && c.value + c.value_len == c.pair + c.pair_len);
        o += (size_t)snprintf(out + o, cap - o, "%s%.*s%s|%.*s", o ? "," : "", (int)c.name_len,
                              c.name, cookie_name_is(&c, match) ? "!" : "", (int)c.value_len,
                              c.value);
        assert_true(o < cap);
    }
}

static void test_pieces(void **state)
{
    static const struct {
        const char *in, *want;
    } cases[] = {
        {"a=1; b=2", "a|1,b|2"},
        {"a=1;b=2", "a|1,b|2"},
        {"  a=1 ;\tb=2\t", "a|1,b|2"},
        {";;a=1;;", "a|1"},
        {"", ""},
        {" ; \t; ", ""},
        {"a", "a|"}, /* no '=': named by all of it */
        {"a b", "a b|"},
        {"a =1", "a|1"},    /* the name is trimmed */
        {"a= 1", "a| 1"},   /* the value as sent */
        {"a=b=c", "a|b=c"}, /* the first '=' splits */
        {"=1", "|1"},
        {"a=", "a|"},
        {"a=\"x;y\"", "a|\"x,y\"|"}, /* ';' splits inside DQUOTEs too */
        {"a=1\r\n", "a|1\r\n"},      /* CR and LF are not OWS */
    };
    char out[256];

    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        pieces(cases[i].in, "-", out, sizeof(out));
        if (strcmp(out, cases[i].want) != 0)
            fail_msg("case %zu \"%s\": got \"%s\", want \"%s\"", i, cases[i].in, out,
                     cases[i].want);
    }
}

/* Names compare byte for byte: case, length and every byte count. */
static void test_name_is(void **state)
{
    char out[256];

    pieces("session=1; Session=2; SESSION=3; sessionx=4; session", "session", out, sizeof(out));
    assert_string_equal(out, "session!|1,Session|2,SESSION|3,sessionx|4,session!|");
    pieces("__Host-t=1; __HOST-t=2", "__Host-t", out, sizeof(out));
    assert_string_equal(out, "__Host-t!|1,__HOST-t|2");
    pieces(" sess =1", "sess", out, sizeof(out));
    assert_string_equal(out, "sess!|1");
    pieces("sess=1", "sess ", out, sizeof(out));
    assert_string_equal(out, "sess|1");
}

/* The position moves past each piece and stops at the length, not at a
 * NUL: a caller can start anywhere, as the Set-Cookie attribute check does. */
static void test_position(void **state)
{
    const char *in = "a=1; Domain=x; Path=/";
    size_t n = strlen(in), pos = 3;
    const char *g = guarded(in, n);
    struct cookie c;

    assert_true(cookie_next(g, n, &pos, &c));
    assert_int_equal(c.name_len, 6);
    assert_memory_equal(c.name, "Domain", 6);
    assert_int_equal(pos, 14);
    assert_true(cookie_next(g, n, &pos, &c));
    assert_memory_equal(c.pair, "Path=/", c.pair_len);
    assert_int_equal(pos, n);
    assert_false(cookie_next(g, n, &pos, &c));
    pos = 0;
    assert_true(cookie_next("a=1\0b=2", 7, &pos, &c));
    assert_int_equal(c.value_len, 5); /* a NUL is a byte like any other */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_pieces),
        cmocka_unit_test(test_name_is),
        cmocka_unit_test(test_position),
    };

    return cmocka_run_group_tests(tests, guard_setup, guard_teardown);
}
