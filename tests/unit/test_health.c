/* Unit tests for health.c: the reading of a check's status line, and the
 * verdicts on the addresses of names as the workers read them. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <string.h>
#include <arpa/inet.h>
#include <netinet/in.h>

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

static struct sockaddr_storage ip(const char *text, uint16_t port)
{
    struct sockaddr_storage ss;

    memset(&ss, 0, sizeof(ss));
    if (strchr(text, ':') != NULL) {
        struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&ss;
        s6->sin6_family = AF_INET6;
        s6->sin6_port = htons(port);
        assert_int_equal(inet_pton(AF_INET6, text, &s6->sin6_addr), 1);
    } else {
        struct sockaddr_in *s4 = (struct sockaddr_in *)&ss;
        s4->sin_family = AF_INET;
        s4->sin_port = htons(port);
        assert_int_equal(inet_pton(AF_INET, text, &s4->sin_addr), 1);
    }
    return ss;
}

/* An entry holds one address, the port aside, in its family; a freed
 * entry holds none; each change of address is between two bumps of seq. */
static void test_addr_entries_are_keyed_by_address(void **state)
{
    struct fg_addr_health t[FG_NAME_HEALTH_ADDRS];
    struct sockaddr_storage a = ip("10.0.0.7", 8080), b = ip("10.0.0.8", 8080);
    struct sockaddr_storage v6 = ip("::1", 8080), mapped = ip("a00:7::", 8080);

    memset(t, 0, sizeof(t));
    assert_false(health_addr_down(t, &a)); /* not checked yet: healthy */
    health_addr_set(&t[5], &a);
    assert_int_equal(t[5].seq, 2);
    assert_false(health_addr_down(t, &a));
    t[5].down = 1;
    assert_true(health_addr_down(t, &a));
    struct sockaddr_storage other_port = ip("10.0.0.7", 9090);
    assert_true(health_addr_down(t, &other_port));
    assert_false(health_addr_down(t, &b));
    assert_false(health_addr_down(t, &mapped)); /* 10.0.0.7's bytes, but IPv6 */
    health_addr_set(&t[31], &v6);
    t[31].down = 1;
    assert_true(health_addr_down(t, &v6));
    health_addr_set(&t[5], &b); /* the entry moves: a fresh verdict */
    assert_int_equal(t[5].seq, 4);
    assert_false(health_addr_down(t, &a));
    assert_false(health_addr_down(t, &b));
    health_addr_set(&t[31], NULL);
    assert_false(health_addr_down(t, &v6));
}

/* An upstream of one address (server 0) and one name (server 1, its
 * entries first in the table): an unhealthy address is skipped until
 * every server and address checked is unhealthy (panic mode). */
static void test_addr_usable_and_panic_count_names(void **state)
{
    struct fg_server_health flags[2];
    struct fg_addr_health t[FG_NAME_HEALTH_ADDRS];
    struct fg_upstream u;
    struct sockaddr_storage a = ip("10.0.0.7", 80), b = ip("10.0.0.8", 80);
    struct sockaddr_storage c = ip("10.0.0.9", 80);

    memset(flags, 0, sizeof(flags));
    memset(t, 0, sizeof(t));
    memset(&u, 0, sizeof(u));
    u.nservers = 2;
    u.nnames = 1;
    u.health = flags;
    u.name_health = t;
    u.health_nchecked = 1; /* the server given as an address */
    health_addr_set(&t[0], &a);
    health_addr_set(&t[1], &b);
    u.health_nchecked += 2;
    t[0].down = 1;
    u.health_ndown = 1;
    assert_false(health_addr_usable(&u, 0, &a));
    assert_true(health_addr_usable(&u, 0, &b));
    assert_true(health_addr_usable(&u, 0, &c)); /* not checked yet */
    assert_true(health_usable(&u, 0));
    flags[0].down = 1;
    u.health_ndown = 2;
    assert_false(health_usable(&u, 0));
    assert_false(health_addr_usable(&u, 0, &a)); /* b is still healthy */
    t[1].down = 1;
    u.health_ndown = 3;
    assert_true(health_panic(&u));
    assert_true(health_addr_usable(&u, 0, &a));
    assert_true(health_addr_usable(&u, 0, &b));
    assert_true(health_usable(&u, 0));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_pass_is_2xx),
        cmocka_unit_test(test_other_status_fails),
        cmocka_unit_test(test_garbage_is_bad_response),
        cmocka_unit_test(test_result_names),
        cmocka_unit_test(test_addr_entries_are_keyed_by_address),
        cmocka_unit_test(test_addr_usable_and_panic_count_names),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
