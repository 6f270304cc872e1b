/*
 * test_cidr.c - CIDR parsing, masking and set membership, IPv4 and IPv6.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cmocka.h>

#include "guard.h"

#include "cidr.h"

/* ---- cidr_parse -------------------------------------------------------- */

static void expect_net(const char *text, int family, const char *addr, unsigned prefix)
{
    struct cidr c, want = {0};

    memset(&c, 0xa5, sizeof(c));
    if (cidr_parse(text, &c) != 0)
        fail_msg("\"%s\": refused", text);
    assert_int_equal(inet_pton(family, addr, want.addr), 1);
    assert_int_equal(c.family, family);
    assert_int_equal(c.prefix, prefix);
    if (memcmp(c.addr, want.addr, sizeof(c.addr)) != 0)
        fail_msg("\"%s\": network address differs from %s", text, addr);
}

static void test_parse_v4(void **state)
{
    expect_net("10.0.0.0/8", AF_INET, "10.0.0.0", 8);
    expect_net("192.168.1.0/24", AF_INET, "192.168.1.0", 24);
    expect_net("172.16.0.0/12", AF_INET, "172.16.0.0", 12);
    expect_net("203.0.113.7", AF_INET, "203.0.113.7", 32);
    expect_net("203.0.113.7/32", AF_INET, "203.0.113.7", 32);
    expect_net("203.0.113.6/31", AF_INET, "203.0.113.6", 31);
    expect_net("0.0.0.0/0", AF_INET, "0.0.0.0", 0);
    expect_net("10.0.0.0/08", AF_INET, "10.0.0.0", 8);
    expect_net("10.0.0.0/0000000008", AF_INET, "10.0.0.0", 8);
}

static void test_parse_v6(void **state)
{
    expect_net("::1", AF_INET6, "::1", 128);
    expect_net("::1/128", AF_INET6, "::1", 128);
    expect_net("2001:db8::/32", AF_INET6, "2001:db8::", 32);
    expect_net("2001:DB8::/32", AF_INET6, "2001:db8::", 32);
    expect_net("2001:db8::80/121", AF_INET6, "2001:db8::80", 121);
    expect_net("fe80::/10", AF_INET6, "fe80::", 10);
    expect_net("::/0", AF_INET6, "::", 0);
}

/* Mapped networks covering the mapping become IPv4 networks. */
static void test_parse_mapped(void **state)
{
    expect_net("::ffff:10.0.0.0/104", AF_INET, "10.0.0.0", 8);
    expect_net("::ffff:10.1.2.3", AF_INET, "10.1.2.3", 32);
    expect_net("::ffff:0:0/96", AF_INET, "0.0.0.0", 0);
    expect_net("::fffe:0:0/95", AF_INET6, "::fffe:0:0", 95);
}

/* Bits set after the prefix: refused, with the network that was probably
 * meant, written back in the form it was given. */
static void expect_host_bits(const char *text, const char *meant)
{
    struct cidr c;
    char buf[CIDR_FORMAT_MAX];

    memset(&c, 0xa5, sizeof(c));
    if (cidr_parse(text, &c) != CIDR_HOST_BITS)
        fail_msg("\"%s\": host bits not reported", text);
    assert_int_equal(cidr_format(&c, buf, sizeof(buf)), 0);
    if (strcmp(buf, meant) != 0)
        fail_msg("\"%s\": meant \"%s\", not \"%s\"", text, buf, meant);
}

static void test_parse_host_bits(void **state)
{
    expect_host_bits("192.168.1.5/24", "192.168.1.0/24");
    expect_host_bits("10.1.2.3/8", "10.0.0.0/8");
    expect_host_bits("192.168.1.255/24", "192.168.1.0/24");
    expect_host_bits("172.31.255.255/12", "172.16.0.0/12");
    expect_host_bits("203.0.113.7/31", "203.0.113.6/31");
    expect_host_bits("255.255.255.255/0", "0.0.0.0/0");
    expect_host_bits("10.0.0.1/0008", "10.0.0.0/8");
    expect_host_bits("2001:db8::1/64", "2001:db8::/64");
    expect_host_bits("2001:DB8:ffff::1/32", "2001:db8::/32");
    expect_host_bits("2001:db8::ff/121", "2001:db8::80/121");
    expect_host_bits("febf::1/10", "fe80::/10");
    expect_host_bits("ffff::/0", "::/0");
    expect_host_bits("::1/127", "::/127");
    expect_host_bits("::ffff:10.1.2.3/104", "::ffff:10.0.0.0/104");
    expect_host_bits("::ffff:0:0/95", "::fffe:0:0/95");
}

static void test_format(void **state)
{
    struct cidr c;
    char buf[CIDR_FORMAT_MAX];

    assert_int_equal(cidr_parse("10.0.0.0/8", &c), CIDR_OK);
    assert_int_equal(cidr_format(&c, buf, sizeof(buf)), 0);
    assert_string_equal(buf, "10.0.0.0/8");
    assert_int_equal(cidr_format(&c, buf, sizeof("10.0.0.0/8") - 1), -1);
    assert_int_equal(cidr_parse("::ffff:10.0.0.0/104", &c), CIDR_OK); /* canonical: IPv4 */
    assert_int_equal(cidr_format(&c, buf, sizeof(buf)), 0);
    assert_string_equal(buf, "10.0.0.0/8");
    assert_int_equal(cidr_parse("ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255", &c), CIDR_OK);
    assert_int_equal(cidr_format(&c, buf, sizeof(buf)), 0);
    assert_string_equal(buf, "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff/128");
}

static void test_parse_bad(void **state)
{
    static const char *bad[] = {
        "", "/", "/8", "1.2.3.4/", "1.2.3.4/33", "1.2.3.4/-1", "1.2.3.4/+8", "1.2.3.4/8/8",
        "1.2.3.4/ 8", "1.2.3.4 /8", " 1.2.3.4", "1.2.3.4 ", "1.2.3.4/8 ", "1.2.3.4/8x",
        "1.2.3.4/4294967304", "1.2.3", "1.2.3.4.5", "256.0.0.0", "01.2.3.4", "1.2.3.4a",
        "0x0a.0.0.1", "10/8", "::1/129", "::1/1280", "[::1]", "[::1]/128", "::1]", "2001:db8:::1",
        "fe80::1%eth0", "fe80::1%1/64", "::g", "localhost", "1.2.3.4/8.0",
        "1111111111111111111111111111111111111111111111111111111111111111111111",
    };

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        struct cidr c;

        if (cidr_parse(bad[i], &c) != CIDR_MALFORMED)
            fail_msg("\"%s\": accepted", bad[i]);
    }
    assert_int_equal(cidr_parse(NULL, &(struct cidr){0}), CIDR_MALFORMED);
}

/* ---- membership -------------------------------------------------------- */

static struct cidr_set make_set(const char **nets, size_t n)
{
    struct cidr_set set = {calloc(n, sizeof(struct cidr)), n};

    assert_non_null(set.items);
    for (size_t i = 0; i < n; i++)
        assert_int_equal(cidr_parse(nets[i], &set.items[i]), 0);
    return set;
}

/* The text is read from the end of a page followed by a PROT_NONE page. */
static bool has_text(const struct cidr_set *set, const char *addr)
{
    size_t n = strlen(addr);

    return cidr_set_contains_text(set, guarded(addr, n), n);
}

static bool has_sa4(const struct cidr_set *set, const char *addr)
{
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons(1234)};

    assert_int_equal(inet_pton(AF_INET, addr, &sin.sin_addr), 1);
    return cidr_set_contains(set, (const struct sockaddr *)&sin);
}

static bool has_sa6(const struct cidr_set *set, const char *addr)
{
    struct sockaddr_in6 sin6 = {.sin6_family = AF_INET6, .sin6_port = htons(1234)};

    assert_int_equal(inet_pton(AF_INET6, addr, &sin6.sin6_addr), 1);
    return cidr_set_contains(set, (const struct sockaddr *)&sin6);
}

static void test_contains_v4(void **state)
{
    const char *nets[] = {"10.0.0.0/8", "192.168.1.0/24", "203.0.113.7", "198.51.100.0/25"};
    struct cidr_set set = make_set(nets, 4);

    assert_true(has_sa4(&set, "10.0.0.0"));
    assert_true(has_sa4(&set, "10.255.255.255"));
    assert_false(has_sa4(&set, "11.0.0.0"));
    assert_false(has_sa4(&set, "9.255.255.255"));
    assert_true(has_sa4(&set, "192.168.1.77"));
    assert_false(has_sa4(&set, "192.168.2.1"));
    assert_true(has_sa4(&set, "203.0.113.7"));
    assert_false(has_sa4(&set, "203.0.113.6"));
    assert_false(has_sa4(&set, "203.0.113.8"));
    assert_true(has_sa4(&set, "198.51.100.127"));
    assert_false(has_sa4(&set, "198.51.100.128"));

    assert_true(has_text(&set, "10.9.8.7"));
    assert_false(has_text(&set, "11.9.8.7"));
    assert_true(has_text(&set, "203.0.113.7"));
    /* a v4 network never matches a plain v6 client */
    assert_false(has_sa6(&set, "::a00:1"));
    assert_false(has_text(&set, "::10.0.0.1"));
    cidr_set_free(&set);
}

static void test_contains_v6(void **state)
{
    const char *nets[] = {"2001:db8::/32", "::1", "fe80::/10", "2001:db8:1::80/121"};
    struct cidr_set set = make_set(nets, 4);

    assert_true(has_sa6(&set, "2001:db8::1"));
    assert_true(has_sa6(&set, "2001:db8:ffff:ffff:ffff:ffff:ffff:ffff"));
    assert_false(has_sa6(&set, "2001:db9::"));
    assert_true(has_sa6(&set, "::1"));
    assert_false(has_sa6(&set, "::2"));
    assert_false(has_sa6(&set, "::"));
    assert_true(has_sa6(&set, "febf::1"));
    assert_false(has_sa6(&set, "fec0::1"));
    assert_true(has_text(&set, "2001:DB8::abcd"));
    assert_true(has_text(&set, "::1"));
    assert_false(has_text(&set, "::2"));
    /* v6 networks never match v4 clients, even ::/0 style ones below */
    assert_false(has_sa4(&set, "0.0.0.1"));
    cidr_set_free(&set);
}

static void test_contains_boundaries(void **state)
{
    const char *all4[] = {"0.0.0.0/0"};
    const char *all6[] = {"::/0"};
    const char *host6[] = {"2001:db8::5/128"};
    struct cidr_set s4 = make_set(all4, 1);
    struct cidr_set s6 = make_set(all6, 1);
    struct cidr_set h6 = make_set(host6, 1);

    assert_true(has_sa4(&s4, "0.0.0.0"));
    assert_true(has_sa4(&s4, "255.255.255.255"));
    assert_true(has_sa6(&s4, "::ffff:1.2.3.4"));
    assert_false(has_sa6(&s4, "2001:db8::1"));

    assert_true(has_sa6(&s6, "2001:db8::1"));
    assert_true(has_sa6(&s6, "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"));
    assert_false(has_sa4(&s6, "1.2.3.4"));
    assert_false(has_sa6(&s6, "::ffff:1.2.3.4"));

    assert_true(has_sa6(&h6, "2001:db8::5"));
    assert_false(has_sa6(&h6, "2001:db8::4"));
    assert_false(has_sa6(&h6, "2001:db8::6"));
    cidr_set_free(&s4);
    cidr_set_free(&s6);
    cidr_set_free(&h6);
}

/* A dual-stack socket reports IPv4 peers as ::ffff:a.b.c.d. */
static void test_contains_mapped(void **state)
{
    const char *nets[] = {"10.0.0.0/8", "::ffff:192.0.2.0/120"};
    struct cidr_set set = make_set(nets, 2);

    assert_true(has_sa6(&set, "::ffff:10.1.2.3"));
    assert_false(has_sa6(&set, "::ffff:11.1.2.3"));
    assert_true(has_text(&set, "::ffff:10.1.2.3"));
    assert_true(has_text(&set, "::FFFF:10.1.2.3"));
    /* a mapped network matches plain v4 and mapped clients alike */
    assert_true(has_sa4(&set, "192.0.2.200"));
    assert_true(has_sa6(&set, "::ffff:192.0.2.1"));
    assert_false(has_sa4(&set, "192.0.3.1"));
    /* v4-compatible (deprecated) and NAT64 forms are not mapped addresses */
    assert_false(has_sa6(&set, "::10.1.2.3"));
    assert_false(has_sa6(&set, "64:ff9b::10.1.2.3"));
    cidr_set_free(&set);
}

static void test_contains_text_bad(void **state)
{
    const char *nets[] = {"0.0.0.0/0", "::/0"};
    struct cidr_set set = make_set(nets, 2);

    assert_true(has_text(&set, "1.2.3.4"));
    assert_false(has_text(&set, ""));
    assert_false(has_text(&set, " 1.2.3.4"));
    assert_false(has_text(&set, "1.2.3.4 "));
    assert_false(has_text(&set, "[::1]"));
    assert_false(has_text(&set, "1.2.3.4:80"));
    assert_false(has_text(&set, "1.2.3.4/32"));
    assert_false(has_text(&set, "unknown"));
    assert_false(has_text(&set, "::1%lo"));
    assert_false(has_text(&set, "0:0:0:0:0:0:0:0:0:0:0:0:0:0:0:0:0:0:0:0:0:0:0:1"));
    /* LEN bounds the text: a longer buffer or embedded NUL is not an address */
    assert_false(cidr_set_contains_text(&set, "1.2.3.4\0x", 9));
    assert_true(cidr_set_contains_text(&set, "1.2.3.4xyz", 7));
    assert_false(cidr_set_contains_text(&set, NULL, 0));
    cidr_set_free(&set);
}

static void test_empty_and_null(void **state)
{
    struct cidr_set empty = {NULL, 0};
    struct sockaddr_un_like {
        sa_family_t family;
        char path[16];
    } un = {AF_UNIX, "x"};
    const char *nets[] = {"0.0.0.0/0"};
    struct cidr_set set = make_set(nets, 1);

    assert_false(has_sa4(&empty, "1.2.3.4"));
    assert_false(has_text(&empty, "1.2.3.4"));
    assert_false(cidr_set_contains(NULL, NULL));
    assert_false(cidr_set_contains(&set, NULL));
    assert_false(cidr_set_contains(&set, (const struct sockaddr *)&un));
    assert_false(cidr_set_contains_text(NULL, "1.2.3.4", 7));
    cidr_set_free(&set);
}

static void test_free_zeroes(void **state)
{
    const char *nets[] = {"10.0.0.0/8", "::1"};
    struct cidr_set set = make_set(nets, 2);

    cidr_set_free(&set);
    assert_null(set.items);
    assert_int_equal(set.n, 0);
    cidr_set_free(&set); /* again: harmless */
    cidr_set_free(NULL);
    assert_false(has_text(&set, "10.0.0.1"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_v4),
        cmocka_unit_test(test_parse_v6),
        cmocka_unit_test(test_parse_mapped),
        cmocka_unit_test(test_parse_host_bits),
        cmocka_unit_test(test_format),
        cmocka_unit_test(test_parse_bad),
        cmocka_unit_test(test_contains_v4),
        cmocka_unit_test(test_contains_v6),
        cmocka_unit_test(test_contains_boundaries),
        cmocka_unit_test(test_contains_mapped),
        cmocka_unit_test(test_contains_text_bad),
        cmocka_unit_test(test_empty_and_null),
        cmocka_unit_test(test_free_zeroes),
    };
    return cmocka_run_group_tests(tests, guard_setup, guard_teardown);
}
