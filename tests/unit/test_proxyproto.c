/*
 * test_proxyproto.c - PROXY protocol v1/v2 parsing. Every input sits at the
 * end of a page followed by a guard page, so an over-read faults.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>

#include <cmocka.h>

#include "proxyproto.h"

static unsigned char *guarded(const void *data, size_t len)
{
    static unsigned char *page;
    long ps = sysconf(_SC_PAGESIZE);

    if (page == NULL) {
        page = mmap(NULL, (size_t)ps * 2, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
                    -1, 0);
        assert_true(page != MAP_FAILED);
        assert_int_equal(mprotect(page + ps, (size_t)ps, PROT_NONE), 0);
    }
    assert_true(len <= (size_t)ps);
    unsigned char *p = page + ps - len;
    memcpy(p, data, len);
    return p;
}

static ssize_t parse(const void *data, size_t len, enum proxyproto_result *res,
                     struct sockaddr_storage *ss)
{
    socklen_t sl = 0;
    return proxyproto_parse(guarded(data, len), len, res, ss, &sl);
}

static void test_v1_tcp4(void **state)
{
    const char *h = "PROXY TCP4 203.0.113.7 10.0.0.1 56324 443\r\nGET";
    enum proxyproto_result res;
    struct sockaddr_storage ss;
    char ip[64];

    assert_int_equal(parse(h, strlen(h), &res, &ss), strlen(h) - 3);
    assert_int_equal(res, PROXYPROTO_ADDR);
    assert_int_equal(ss.ss_family, AF_INET);
    inet_ntop(AF_INET, &((struct sockaddr_in *)&ss)->sin_addr, ip, sizeof(ip));
    assert_string_equal(ip, "203.0.113.7");
    assert_int_equal(ntohs(((struct sockaddr_in *)&ss)->sin_port), 56324);
}

static void test_v1_tcp6_and_unknown(void **state)
{
    const char *h6 = "PROXY TCP6 2001:db8::1 2001:db8::2 1 2\r\n";
    const char *hu = "PROXY UNKNOWN ffff:f...f:ffff 1 2\r\n";
    enum proxyproto_result res;
    struct sockaddr_storage ss;

    assert_int_equal(parse(h6, strlen(h6), &res, &ss), strlen(h6));
    assert_int_equal(ss.ss_family, AF_INET6);
    assert_int_equal(parse(hu, strlen(hu), &res, &ss), strlen(hu));
    assert_int_equal(res, PROXYPROTO_LOCAL);
    assert_int_equal(parse("PROXY UNKNOWN\r\n", 15, &res, &ss), 15);
}

static void test_v1_incomplete(void **state)
{
    const char *h = "PROXY TCP4 203.0.113.7 10.0.0.1 56324 443\r\n";
    enum proxyproto_result res;
    struct sockaddr_storage ss;

    for (size_t n = 1; n < strlen(h); n++)
        assert_int_equal(parse(h, n, &res, &ss), -2);
}

static void test_v1_bad(void **state)
{
    static const char *const bad[] = {
        "GET / HTTP/1.1\r\n\r\n",
        "PROXY TCP4 203.0.113.7 10.0.0.1 56324 443\n",
        "PROXY TCP4 203.0.113.7 10.0.0.1 56324 443\rX",
        "PROXY TCP4  203.0.113.7 10.0.0.1 56324 443\r\n",
        "PROXY TCP4 203.0.113.7 10.0.0.1 56324 443 \r\n",
        "PROXY TCP4 203.0.113.7 10.0.0.1 56324\r\n",
        "PROXY TCP4 203.0.113.7 10.0.0.1 56324 443 9\r\n",
        "PROXY TCP4 2001:db8::1 10.0.0.1 1 2\r\n",
        "PROXY TCP6 203.0.113.7 2001:db8::2 1 2\r\n",
        "PROXY TCP4 203.0.113.256 10.0.0.1 1 2\r\n",
        "PROXY TCP4 203.0.113.7 10.0.0.1 65536 443\r\n",
        "PROXY TCP4 203.0.113.7 10.0.0.1 0443 443\r\n",
        "PROXY TCP4 203.0.113.7 10.0.0.1 -1 443\r\n",
        "PROXY UDP4 203.0.113.7 10.0.0.1 1 2\r\n",
        "proxy TCP4 203.0.113.7 10.0.0.1 1 2\r\n",
    };
    enum proxyproto_result res;
    struct sockaddr_storage ss;

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        assert_int_equal(parse(bad[i], strlen(bad[i]), &res, &ss), -1);
    }
    static const char nul[] = "PROXY TCP4 203.0.113.7\0 10.0.0.1 1 2\r\n";
    assert_int_equal(parse(nul, sizeof(nul) - 1, &res, &ss), -1);
    /* No CRLF within the longest legal v1 line. */
    char longline[200];
    memset(longline, 'A', sizeof(longline));
    memcpy(longline, "PROXY ", 6);
    assert_int_equal(parse(longline, sizeof(longline), &res, &ss), -1);
}

static size_t v2(unsigned char *out, unsigned cmd, unsigned fam, const unsigned char *addr,
                 size_t alen)
{
    static const unsigned char sig[12] = {0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D,
                                          0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A};
    memcpy(out, sig, 12);
    out[12] = (unsigned char)(0x20 | cmd);
    out[13] = (unsigned char)fam;
    out[14] = (unsigned char)(alen >> 8);
    out[15] = (unsigned char)alen;
    memcpy(out + 16, addr, alen);
    return 16 + alen;
}

static void test_v2(void **state)
{
    unsigned char b[600], a4[12] = {198, 51, 100, 9, 10, 0, 0, 1, 0x1f, 0x90, 0x01, 0xbb};
    unsigned char a6[36] = {0x20, 0x01, 0x0d, 0xb8};
    enum proxyproto_result res;
    struct sockaddr_storage ss;
    char ip[64];

    size_t n = v2(b, 1, 0x11, a4, sizeof(a4));
    assert_int_equal(parse(b, n, &res, &ss), n);
    assert_int_equal(res, PROXYPROTO_ADDR);
    inet_ntop(AF_INET, &((struct sockaddr_in *)&ss)->sin_addr, ip, sizeof(ip));
    assert_string_equal(ip, "198.51.100.9");
    assert_int_equal(ntohs(((struct sockaddr_in *)&ss)->sin_port), 8080);
    for (size_t k = 1; k < n; k++)
        assert_int_equal(parse(b, k, &res, &ss), -2);

    n = v2(b, 1, 0x21, a6, sizeof(a6));
    assert_int_equal(parse(b, n, &res, &ss), n);
    assert_int_equal(ss.ss_family, AF_INET6);

    n = v2(b, 0, 0x11, a4, sizeof(a4)); /* LOCAL */
    assert_int_equal(parse(b, n, &res, &ss), n);
    assert_int_equal(res, PROXYPROTO_LOCAL);

    n = v2(b, 1, 0x11, a4, 8); /* address block too short for IPv4 */
    assert_int_equal(parse(b, n, &res, &ss), -1);
    n = v2(b, 1, 0x12, a4, sizeof(a4)); /* UDP */
    assert_int_equal(parse(b, n, &res, &ss), -1);
    n = v2(b, 2, 0x11, a4, sizeof(a4)); /* unknown command */
    assert_int_equal(parse(b, n, &res, &ss), -1);
    n = v2(b, 1, 0x11, a4, sizeof(a4));
    b[12] = 0x11; /* version 1 in a v2 frame */
    assert_int_equal(parse(b, n, &res, &ss), -1);
    n = v2(b, 1, 0x11, a4, sizeof(a4));
    b[14] = 0x10; /* 4 KiB of TLVs: more than flowgate buffers */
    assert_int_equal(parse(b, n, &res, &ss), -1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_v1_tcp4),     cmocka_unit_test(test_v1_tcp6_and_unknown),
        cmocka_unit_test(test_v1_incomplete), cmocka_unit_test(test_v1_bad),
        cmocka_unit_test(test_v2),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
