/*
 * test_rl_sentinel.c - reading a Sentinel's +switch-master message: only the
 * configured master's, with the new address (IPv4 or IPv6) and a valid
 * port; anything else is ignored.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "rl_sentinel.h"

static void test_switch_of_our_master(void **state)
{
    char ip[64];
    int port = 0;

    assert_int_equal(
        rl_sentinel_parse_switch("m1 127.0.0.1 6379 127.0.0.2 6380", "m1", ip, sizeof(ip), &port),
        0);
    assert_string_equal(ip, "127.0.0.2");
    assert_int_equal(port, 6380);
    assert_int_equal(
        rl_sentinel_parse_switch("m1 ::1 6379 fd00::2 7000", "m1", ip, sizeof(ip), &port), 0);
    assert_string_equal(ip, "fd00::2");
    assert_int_equal(port, 7000);
}

/* Another master's switch, a name that only starts like ours, and
 * malformed messages change nothing. */
static void test_switch_ignored(void **state)
{
    static const char *const bad[] = {
        "m2 127.0.0.1 6379 127.0.0.2 6380",
        "m10 127.0.0.1 6379 127.0.0.2 6380",
        "m1 127.0.0.1 6379 127.0.0.2",
        "m1 127.0.0.1 6379 127.0.0.2 0",
        "m1 127.0.0.1 6379 127.0.0.2 65536",
        "m1 127.0.0.1 6379 127.0.0.2 6380 x",
        "m1",
        "",
    };
    char ip[64] = "unchanged";
    int port = 0;

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        assert_int_equal(rl_sentinel_parse_switch(bad[i], "m1", ip, sizeof(ip), &port), -1);
    assert_string_equal(ip, "unchanged");
    /* no room for the address: refused, not cut */
    assert_int_equal(
        rl_sentinel_parse_switch("m1 127.0.0.1 6379 127.0.0.2 6380", "m1", ip, 8, &port), -1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_switch_of_our_master),
        cmocka_unit_test(test_switch_ignored),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
