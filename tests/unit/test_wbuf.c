/*
 * test_wbuf.c - the head writer: pieces land in order in one reservation,
 * numbers are decimal, and a piece that does not fit commits nothing at all
 * (no partial head ever reaches a peer) without writing past the space.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <event2/buffer.h>

#include "wbuf.h"

static char *drain(struct evbuffer *b)
{
    size_t len = evbuffer_get_length(b);
    char *s = calloc(1, len + 1);

    evbuffer_remove(b, s, len);
    return s;
}

static void test_pieces_in_order(void **state)
{
    struct evbuffer *out = evbuffer_new();
    struct wbuf b;

    evbuffer_add(out, "before|", 7);
    wbuf_begin(&b, out, 256);
    wbuf_lit(&b, "HTTP/1.1 ");
    wbuf_u64(&b, 200);
    wbuf_put(&b, NULL, 0);
    wbuf_str(&b, " OK\r\n");
    wbuf_header(&b, "Content-Length", 14, "12", 2);
    wbuf_lit(&b, "\r\n");
    assert_int_equal(wbuf_len(&b), strlen("HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\n"));
    assert_int_equal(wbuf_end(&b), 0);
    char *s = drain(out);
    assert_string_equal(s, "before|HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\n");
    free(s);
    evbuffer_free(out);
}

static void test_numbers(void **state)
{
    static const struct {
        uint64_t v;
        const char *text;
    } cases[] = {
        {0, "0"}, {7, "7"}, {10, "10"}, {1048576, "1048576"},
        {UINT64_MAX, "18446744073709551615"},
    };

    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct evbuffer *out = evbuffer_new();
        struct wbuf b;
        wbuf_begin(&b, out, 32);
        wbuf_u64(&b, cases[i].v);
        assert_int_equal(wbuf_end(&b), 0);
        char *s = drain(out);
        assert_string_equal(s, cases[i].text);
        free(s);
        evbuffer_free(out);
    }
}

/* The reservation may be larger than asked; fill it exactly, then one more
 * byte: nothing is committed and the bytes already there stay as they were. */
static void test_overflow_commits_nothing(void **state)
{
    struct evbuffer *out = evbuffer_new();
    struct wbuf b;

    evbuffer_add(out, "kept", 4);
    wbuf_begin(&b, out, 16);
    size_t room = b.s.cap - b.s.len;
    assert_true(room >= 16);
    char *fill = malloc(room);
    memset(fill, 'x', room);
    wbuf_put(&b, fill, room);
    assert_false(b.s.overflow);
    wbuf_lit(&b, "!");
    assert_true(b.s.overflow);
    wbuf_lit(&b, "more");
    assert_int_equal(wbuf_end(&b), -1);
    char *s = drain(out);
    assert_string_equal(s, "kept");
    free(s);
    free(fill);

    /* The buffer is usable after a failed head. */
    wbuf_begin(&b, out, 8);
    wbuf_lit(&b, "next");
    assert_int_equal(wbuf_end(&b), 0);
    s = drain(out);
    assert_string_equal(s, "next");
    free(s);
    evbuffer_free(out);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_pieces_in_order),
        cmocka_unit_test(test_numbers),
        cmocka_unit_test(test_overflow_commits_nothing),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
