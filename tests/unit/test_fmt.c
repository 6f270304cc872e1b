/*
 * test_fmt.c - decimal formatting and the fixed-array string builder: the
 * same text as printf for every edge value, and an overflow writes nothing
 * past the array and says so.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "fmt.h"

static void test_numbers_match_printf(void **state)
{
    static const int64_t cases[] = {0, 1, 9, 10, 99, 100, 12345, -1, -10, 4294967295LL,
                                    INT64_MAX, INT64_MIN, INT64_MIN + 1};
    char got[FMT_U64_MAX + 1], want[32];

    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        size_t n = fmt_i64(got, cases[i]);
        snprintf(want, sizeof(want), "%lld", (long long)cases[i]);
        assert_int_equal(n, strlen(want));
        assert_memory_equal(got, want, n);
        if (cases[i] >= 0) {
            n = fmt_u64(got, (uint64_t)cases[i]);
            assert_memory_equal(got, want, n);
        }
    }
    size_t n = fmt_u64(got, UINT64_MAX);
    assert_int_equal(n, FMT_U64_MAX);
    assert_memory_equal(got, "18446744073709551615", n);
}

static void test_sbuf_builds_and_refuses_overflow(void **state)
{
    char buf[16];
    struct sbuf b = {buf, 0, sizeof(buf), false};

    sbuf_lit(&b, "ip:");
    sbuf_str(&b, "10.0.0.1");
    sbuf_lit(&b, "/");
    sbuf_u64(&b, 24);
    assert_int_equal(sbuf_end(&b), 14);
    assert_string_equal(buf, "ip:10.0.0.1/24");

    /* 15 bytes fit with the NUL; 16 do not, and nothing past buf is written. */
    char guard[32];
    memset(guard, 'G', sizeof(guard));
    struct sbuf c = {guard, 0, 16, false};
    sbuf_put(&c, "0123456789abcde", 15);
    assert_int_equal(sbuf_end(&c), 15);
    struct sbuf d = {guard, 0, 16, false};
    sbuf_put(&d, "0123456789abcdef", 16);
    assert_int_equal(sbuf_end(&d), -1);
    sbuf_put(&d, "x", 1);
    assert_true(d.overflow);
    for (size_t i = 16; i < sizeof(guard); i++)
        assert_int_equal(guard[i], 'G');
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_numbers_match_printf),
        cmocka_unit_test(test_sbuf_builds_and_refuses_overflow),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
