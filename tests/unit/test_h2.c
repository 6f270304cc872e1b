/*
 * test_h2.c - the HTTP/1.1 response head an engine writes, as HTTP/2
 * fields (h2_head_to_nv).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "h1.h"
#include "h2.h"

#define MAX_NV 16

struct conv {
    char head[1024];
    struct h1_header hdrs[MAX_NV];
    struct h1_response resp;
    nghttp2_nv nv[MAX_NV];
    char status[4];
    int n;
};

static void convert(struct conv *c, const char *head, bool head_request, size_t max_nv)
{
    size_t len = strlen(head);

    memcpy(c->head, head, len);
    c->resp.headers = c->hdrs;
    c->resp.max_headers = MAX_NV;
    c->n = h2_head_to_nv(c->head, len, head_request, &c->resp, c->nv, max_nv, c->status);
}

static bool nv_is(const nghttp2_nv *nv, const char *name, const char *value)
{
    return nv->namelen == strlen(name) && memcmp(nv->name, name, nv->namelen) == 0 &&
           nv->valuelen == strlen(value) && memcmp(nv->value, value, nv->valuelen) == 0;
}

static void test_fields_lowercased_and_connection_specific_dropped(void **state)
{
    struct conv c;

    convert(&c,
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n"
            "Keep-Alive: timeout=5\r\nTransfer-Encoding: chunked\r\nSet-Cookie: a=1\r\n"
            "Proxy-Connection: x\r\nUpgrade: h2c\r\nTE: trailers\r\nX-Request-Id: abc\r\n\r\n",
            false, MAX_NV);
    assert_int_equal(c.n, 4);
    assert_true(nv_is(&c.nv[0], ":status", "200"));
    assert_true(nv_is(&c.nv[1], "content-type", "text/plain"));
    assert_true(nv_is(&c.nv[2], "set-cookie", "a=1"));
    assert_true(nv_is(&c.nv[3], "x-request-id", "abc"));
    assert_int_equal(c.resp.framing, H1_FRAMING_CHUNKED);
    assert_false(c.resp.parser.msg_done);
}

static void test_bodiless_responses(void **state)
{
    struct conv c;

    convert(&c, "HTTP/1.1 204 No Content\r\nVary: Origin\r\n\r\n", false, MAX_NV);
    assert_int_equal(c.n, 2);
    assert_true(nv_is(&c.nv[0], ":status", "204"));
    assert_true(c.resp.parser.msg_done);
    /* HEAD: the Content-Length stays (RFC 9110 8.6), no body follows. */
    convert(&c, "HTTP/1.1 200 OK\r\nContent-Length: 42\r\n\r\n", true, MAX_NV);
    assert_int_equal(c.n, 2);
    assert_true(nv_is(&c.nv[1], "content-length", "42"));
    assert_true(c.resp.parser.msg_done);
    convert(&c, "HTTP/1.1 100 Continue\r\n\r\n", false, MAX_NV);
    assert_int_equal(c.n, 1);
    assert_true(nv_is(&c.nv[0], ":status", "100"));
}

static void test_refused_heads(void **state)
{
    struct conv c;

    convert(&c, "HTTP/1.1 200 OK\r\nBad Name: x\r\n\r\n", false, MAX_NV);
    assert_int_equal(c.n, -1);
    convert(&c, "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", false, MAX_NV);
    assert_int_equal(c.n, -1);
    convert(&c, "HTTP/1.1 200 OK\r\nA: 1\r\nB: 2\r\n\r\n", false, 2); /* no room */
    assert_int_equal(c.n, -1);
    convert(&c, "HTTP/1.1 200 OK\r\nA: 1\r\nB: 2\r\n\r\n", false, 3);
    assert_int_equal(c.n, 3);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fields_lowercased_and_connection_specific_dropped),
        cmocka_unit_test(test_bodiless_responses),
        cmocka_unit_test(test_refused_heads),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
