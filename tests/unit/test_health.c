/* Unit tests for health.c's reading of a check's status line. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <string.h>

#include <cmocka.h>

#include "health.h"

static enum health_result parse(const char *line)
{
    return health_parse_status(line, strlen(line));
}

static void test_pass_is_2xx(void **state)
{
    assert_int_equal(parse("HTTP/1.1 200 OK\r"), HEALTH_PASS);
    assert_int_equal(parse("HTTP/1.1 204 No Content"), HEALTH_PASS);
    assert_int_equal(parse("HTTP/1.0 299 \r"), HEALTH_PASS);
    assert_int_equal(parse("HTTP/1.1 200\r"), HEALTH_PASS); /* empty reason, no SP */
}

static void test_other_status_fails(void **state)
{
    assert_int_equal(parse("HTTP/1.1 500 Internal Server Error\r"), HEALTH_STATUS);
    assert_int_equal(parse("HTTP/1.1 301 Moved\r"), HEALTH_STATUS);
    assert_int_equal(parse("HTTP/1.1 404 Not Found\r"), HEALTH_STATUS);
    assert_int_equal(parse("HTTP/1.1 100 Continue\r"), HEALTH_STATUS);
}

static void test_garbage_is_bad_response(void **state)
{
    assert_int_equal(parse(""), HEALTH_BAD_RESPONSE);
    assert_int_equal(parse("\r"), HEALTH_BAD_RESPONSE);
    assert_int_equal(parse("hello world\r"), HEALTH_BAD_RESPONSE);
    assert_int_equal(parse("HTTP/2 200 OK\r"), HEALTH_BAD_RESPONSE);
    assert_int_equal(parse("HTTP/1.2 200 OK\r"), HEALTH_BAD_RESPONSE);
    assert_int_equal(parse("HTTP/1.1 2000 OK\r"), HEALTH_BAD_RESPONSE);
    assert_int_equal(parse("HTTP/1.1 20 OK\r"), HEALTH_BAD_RESPONSE);
    assert_int_equal(parse("HTTP/1.1 2x0 OK\r"), HEALTH_BAD_RESPONSE);
    assert_int_equal(parse("HTTP/1.1 600 OK\r"), HEALTH_BAD_RESPONSE);
    assert_int_equal(parse("HTTP/1.1  200 OK\r"), HEALTH_BAD_RESPONSE);
    assert_int_equal(parse("http/1.1 200 OK\r"), HEALTH_BAD_RESPONSE);
}

static void test_result_names(void **state)
{
    assert_string_equal(health_result_str(HEALTH_PASS), "pass");
    assert_string_equal(health_result_str(HEALTH_STATUS), "status");
    assert_string_equal(health_result_str(HEALTH_TIMEOUT), "timeout");
    assert_string_equal(health_result_str(HEALTH_REFUSED), "refused");
    assert_string_equal(health_result_str(HEALTH_BAD_RESPONSE), "bad_response");
    assert_string_equal(health_result_str(HEALTH_ERROR), "error");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_pass_is_2xx),
        cmocka_unit_test(test_other_status_fails),
        cmocka_unit_test(test_garbage_is_bad_response),
        cmocka_unit_test(test_result_names),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
