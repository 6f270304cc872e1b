/*
 * test_h1.c - the strict HTTP/1.1 head parser and body framer.
 *
 * Every input is copied to the end of a readable page followed by a
 * PROT_NONE page, so that reading one byte past the input faults.
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

#include "h1.h"

#define NSLOTS 4
/* clang-format off */
#define S(lit) {lit, sizeof(lit) - 1}
/* clang-format on */

struct guarded {
    char *map;   /* mapping: readable pages then one guard page */
    size_t size; /* whole mapping */
};

static struct guarded slots[NSLOTS];
static unsigned next_slot;

/* Copy S[0..LEN) so that its last byte is the last readable byte of a page. */
static const char *at_page_end(const char *s, size_t len)
{
    size_t pg = (size_t)sysconf(_SC_PAGESIZE);
    size_t readable = (len / pg + 1) * pg;
    struct guarded *g = &slots[next_slot++ % NSLOTS];

    if (g->map != NULL)
        munmap(g->map, g->size);
    g->size = readable + pg;
    g->map = mmap(NULL, g->size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    assert_true(g->map != MAP_FAILED);
    assert_int_equal(mprotect(g->map + readable, pg, PROT_NONE), 0);
    memcpy(g->map + readable - len, s, len);
    return g->map + readable - len;
}

static int release_slots(void **state)
{
    for (unsigned i = 0; i < NSLOTS; i++) {
        if (slots[i].map != NULL)
            munmap(slots[i].map, slots[i].size);
        slots[i].map = NULL;
    }
    return 0;
}

static struct h1_header hdrs[64];

static enum h1_status parse_req_n(struct h1_request *req, const char *s, size_t len,
                                  size_t max_headers, bool underscores)
{
    const char *buf = at_page_end(s, len);

    memset(req, 0xa5, sizeof(*req));
    req->headers = hdrs;
    req->max_headers = max_headers;
    return h1_parse_request(req, buf, len, underscores);
}

/* A head that h1_head_end delimits exactly, then parsed. */
static enum h1_status parse_req(struct h1_request *req, const char *s)
{
    size_t len = strlen(s);

    assert_int_equal(h1_head_end(at_page_end(s, len), len), (ssize_t)len);
    return parse_req_n(req, s, len, 64, false);
}

static enum h1_status parse_resp(struct h1_response *resp, const char *s, bool head_request)
{
    size_t len = strlen(s);
    const char *buf = at_page_end(s, len);

    assert_int_equal(h1_head_end(buf, len), (ssize_t)len);
    memset(resp, 0xa5, sizeof(*resp));
    resp->headers = hdrs;
    resp->max_headers = 64;
    return h1_parse_response(resp, buf, len, head_request);
}

static bool slice_is(const char *p, size_t n, const char *lit)
{
    return p != NULL && n == strlen(lit) && memcmp(p, lit, n) == 0;
}

/* Feed LEN bytes whole; returns the status, *USED set. */
static enum h1_body_status feed(struct h1_parser *p, const char *s, size_t len, size_t *used)
{
    return h1_body_feed(p, at_page_end(s, len), len, used);
}

/* Feed one byte at a time; returns the status and the total bytes used. */
static enum h1_body_status feed_bytewise(struct h1_parser *p, const char *s, size_t len,
                                         size_t *total)
{
    enum h1_body_status st = H1_BODY_MORE;

    *total = 0;
    for (size_t i = 0; i < len && st == H1_BODY_MORE; i++) {
        size_t used;
        st = h1_body_feed(p, at_page_end(s + i, 1), 1, &used);
        *total += used;
    }
    return st;
}

/* Take the payload out of BODY (framed as RESP_HEAD says) in pieces of at
 * most STEP bytes, as an HTTP/2 data source does; returns the payload
 * length, the payload in OUT, and the last status in *ST. */
static size_t payload_of(const char *resp_head, const char *body, size_t step, char *out,
                         enum h1_body_status *st)
{
    struct h1_response resp;
    size_t len = strlen(body), pos = 0, n = 0;

    assert_int_equal(parse_resp(&resp, resp_head, false), H1_OK);
    *st = H1_BODY_MORE;
    while (pos < len && *st == H1_BODY_MORE) {
        size_t take = len - pos < step ? len - pos : step, used = 0;
        bool payload = false;
        *st = h1_body_feed_run(&resp.parser, at_page_end(body + pos, take), take, &used, &payload);
        if (*st == H1_BODY_ERROR || used == 0)
            break;
        if (payload) {
            memcpy(out + n, body + pos, used);
            n += used;
        }
        pos += used;
    }
    return n;
}

static void test_feed_run_dechunks(void **state)
{
    static const char chunked[] = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
    static const char body[] = "5;ext=1\r\nhello\r\n1\r\n \r\n6\r\nworld!\r\n"
                               "0\r\nX-Trailer: t\r\n\r\nNEXT";
    char out[64];
    enum h1_body_status st;

    for (size_t step = 1; step <= sizeof(body); step++) {
        size_t n = payload_of(chunked, body, step, out, &st);
        assert_int_equal(st, H1_BODY_DONE);
        assert_int_equal(n, 12);
        assert_memory_equal(out, "hello world!", 12);
    }
    /* A length-delimited body is payload throughout, and ends at its length. */
    size_t n = payload_of("HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\n", "abcdNEXT", 3, out, &st);
    assert_int_equal(st, H1_BODY_DONE);
    assert_int_equal(n, 4);
    assert_memory_equal(out, "abcd", 4);
    /* Broken framing is an error, never payload. */
    n = payload_of(chunked, "5\r\nhelloXX", 64, out, &st);
    assert_int_equal(st, H1_BODY_ERROR);
    assert_int_equal(n, 5);
}

/* --- h1_head_end ------------------------------------------------------------------------- */

static ssize_t head_end(const char *s, size_t len)
{
    return h1_head_end(at_page_end(s, len), len);
}

/* A control character anywhere in a long value is refused, at every offset
 * a word-at-a-time scan could miss (word boundaries, the tail); HTAB, SP and
 * obs-text (0x80-0xff) pass wherever they are. */
static void test_value_controls_at_every_offset(void **state)
{
    static const unsigned char bad[] = {0x01, 0x08, 0x0b, 0x1f, 0x7f};
    static const unsigned char good[] = {'\t', ' ', 0x80, 0xa0, 0xff, '~', 0x20, 0x7e};
    struct h1_request req;
    char head[256];

    for (size_t len = 1; len <= 40; len++) {
        for (size_t at = 0; at < len; at++) {
            char value[64];
            memset(value, 'v', len);
            value[len] = '\0';
            for (size_t b = 0; b < sizeof(bad); b++) {
                value[at] = (char)bad[b];
                int n = snprintf(head, sizeof(head), "GET / HTTP/1.1\r\nHost: a\r\nX-V: %s\r\n\r\n",
                                 value);
                if (parse_req_n(&req, head, (size_t)n, 64, false) != H1_BAD_REQUEST)
                    fail_msg("byte 0x%02x at %zu of %zu accepted", bad[b], at, len);
            }
            for (size_t g = 0; g < sizeof(good); g++) {
                value[at] = (char)good[g];
                if (at == 0 && (good[g] == '\t' || good[g] == ' '))
                    continue; /* leading OWS is trimmed, not part of the value */
                int n = snprintf(head, sizeof(head), "GET / HTTP/1.1\r\nHost: a\r\nX-V: %s\r\n\r\n",
                                 value);
                if (parse_req_n(&req, head, (size_t)n, 64, false) != H1_OK)
                    fail_msg("byte 0x%02x at %zu of %zu refused", good[g], at, len);
            }
        }
    }
}

static void test_head_end(void **state)
{
    const char *ok = "GET / HTTP/1.1\r\nHost: a\r\n\r\n";
    size_t n = strlen(ok);

    assert_int_equal(head_end(ok, n), (ssize_t)n);
    /* every proper prefix needs more */
    for (size_t i = 0; i < n; i++)
        assert_int_equal(head_end(ok, i), -2);
    /* bytes after the head are not part of it */
    assert_int_equal(head_end("GET / HTTP/1.1\r\n\r\nXYZ", 21), 18);
}

static void test_head_end_rejects(void **state)
{
    static const struct {
        const char *s;
        size_t len;
    } bad[] = {
        S("GET / HTTP/1.1\nHost: a\r\n\r\n"),          /* bare LF */
        S("GET / HTTP/1.1\r\nHost: a\n\r\n"),          /* bare LF */
        S("GET / HTTP/1.1\r\nHost: a\r\n\n"),          /* bare LF at the end */
        S("GET / HTTP/1.1\rHost: a\r\n\r\n"),          /* bare CR */
        S("GET / HTTP/1.1\r\nHost: a\rb\r\n\r\n"),     /* bare CR in a value */
        S("GET / HTTP/1.1\r\nHost: a\0b\r\n\r\n"),     /* NUL */
        S("GET / HTTP/1.1\r\nHost: a\r\n b\r\n\r\n"),  /* obs-fold */
        S("GET / HTTP/1.1\r\nHost: a\r\n\tb\r\n\r\n"), /* obs-fold, HTAB */
        S("GET / HTTP/1.1\r\n Host: a\r\n\r\n"),       /* space before first header */
        S("\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n"),    /* leading empty line */
        S("GET / HTTP/1.1\r\n\r\r\n"),                 /* CR CR */
    };

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        struct h1_request req;
        assert_int_equal(head_end(bad[i].s, bad[i].len), -1);
        /* the parser refuses the same bytes on its own */
        assert_int_not_equal(parse_req_n(&req, bad[i].s, bad[i].len, 64, false), H1_OK);
    }
    /* a CR as the last byte may still be followed by LF */
    assert_int_equal(head_end("GET / HTTP/1.1\r", 15), -2);
    assert_int_equal(head_end("GET / HTTP/1.1\r\nA: b\r\n\r", 23), -2);
}

/* --- good requests ------------------------------------------------------------------------- */

static void test_get(void **state)
{
    struct h1_request req;
    size_t used;

    assert_int_equal(parse_req(&req, "GET /a/b?x=1&y HTTP/1.1\r\nHost: Example.COM\r\n"
                                     "User-Agent:  t/1 \r\nAccept: */*\r\n\r\n"),
                     H1_OK);
    assert_int_equal(req.method, H1_METHOD_GET);
    assert_true(slice_is(req.method_str, req.method_len, "GET"));
    assert_true(slice_is(req.target, req.target_len, "/a/b?x=1&y"));
    assert_true(slice_is(req.path, req.path_len, "/a/b"));
    assert_true(slice_is(req.query, req.query_len, "x=1&y"));
    assert_int_equal(req.version_minor, 1);
    assert_true(slice_is(req.host, req.host_len, "Example.COM"));
    assert_int_equal(req.nheaders, 3);
    assert_true(slice_is(req.headers[1].name, req.headers[1].name_len, "User-Agent"));
    assert_true(slice_is(req.headers[1].value, req.headers[1].value_len, "t/1"));
    assert_int_equal(req.framing, H1_FRAMING_NONE);
    assert_true(req.keep_alive);
    assert_false(req.expect_continue);
    assert_false(req.upgrade);
    assert_int_equal(h1_body_feed(&req.parser, "GET", 3, &used), H1_BODY_DONE);
    assert_int_equal(used, 0);

    const struct h1_header *h = h1_find(req.headers, req.nheaders, "accept");
    assert_non_null(h);
    assert_true(slice_is(h->value, h->value_len, "*/*"));
    assert_null(h1_find(req.headers, req.nheaders, "cookie"));
    assert_null(req.reason);
}

static void test_post_length(void **state)
{
    struct h1_request req;
    size_t used;

    assert_int_equal(parse_req(&req, "POST /submit HTTP/1.1\r\nHost: a\r\n"
                                     "Content-Length: 11\r\n\r\n"),
                     H1_OK);
    assert_int_equal(req.method, H1_METHOD_POST);
    assert_null(req.query);
    assert_int_equal(req.framing, H1_FRAMING_LENGTH);
    assert_int_equal(req.content_length, 11);
    assert_int_equal(feed(&req.parser, "hello", 5, &used), H1_BODY_MORE);
    assert_int_equal(used, 5);
    assert_int_equal(feed(&req.parser, " worldGET / HTTP/1.1\r\n", 22, &used), H1_BODY_DONE);
    assert_int_equal(used, 6);
    /* done stays done */
    assert_int_equal(feed(&req.parser, "x", 1, &used), H1_BODY_DONE);
    assert_int_equal(used, 0);
    assert_int_equal(h1_body_eof(&req.parser), H1_BODY_DONE);
}

static void test_content_length_zero(void **state)
{
    struct h1_request req;
    size_t used;

    assert_int_equal(parse_req(&req, "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n"),
                     H1_OK);
    assert_int_equal(req.framing, H1_FRAMING_LENGTH);
    assert_int_equal(req.content_length, 0);
    assert_int_equal(feed(&req.parser, "GET", 3, &used), H1_BODY_DONE);
    assert_int_equal(used, 0);
}

static void test_content_length_merged(void **state)
{
    struct h1_request req;

    assert_int_equal(parse_req(&req, "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\n\r\n"),
                     H1_OK);
    assert_int_equal(req.content_length, 5);
    assert_int_equal(parse_req(&req, "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 7\r\n"
                                     "X: y\r\ncontent-length:7\r\n\r\n"),
                     H1_OK);
    assert_int_equal(req.framing, H1_FRAMING_LENGTH);
    assert_int_equal(req.content_length, 7);

    size_t used;
    assert_int_equal(feed(&req.parser, "1234567", 7, &used), H1_BODY_DONE);
    assert_int_equal(used, 7);
}

static void test_pipelined(void **state)
{
    static const char two[] = "POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n"
                              "helloGET /b HTTP/1.1\r\nHost: x\r\n\r\n";
    const char *buf = at_page_end(two, sizeof(two) - 1);
    size_t len = sizeof(two) - 1, used;
    struct h1_request req;

    ssize_t n = h1_head_end(buf, len);
    assert_true(n > 0);
    req.headers = hdrs;
    req.max_headers = 64;
    assert_int_equal(h1_parse_request(&req, buf, (size_t)n, false), H1_OK);
    assert_true(slice_is(req.path, req.path_len, "/a"));
    assert_int_equal(h1_body_feed(&req.parser, buf + n, len - (size_t)n, &used), H1_BODY_DONE);
    assert_int_equal(used, 5);
    buf += (size_t)n + used;
    len -= (size_t)n + used;

    n = h1_head_end(buf, len);
    assert_int_equal(n, (ssize_t)len);
    assert_int_equal(h1_parse_request(&req, buf, (size_t)n, false), H1_OK);
    assert_int_equal(req.method, H1_METHOD_GET);
    assert_true(slice_is(req.path, req.path_len, "/b"));
    assert_int_equal(h1_body_feed(&req.parser, buf + n, 0, &used), H1_BODY_DONE);
}

static const char chunked_body[] = "5;ext=1\r\nhello\r\n"
                                   "1A\r\nabcdefghijklmnopqrstuvwxyz\r\n"
                                   "0\r\nX-Trailer: t\r\n\r\n";

static void test_chunked_whole(void **state)
{
    static const char in[] = "5;ext=1\r\nhello\r\n1A\r\nabcdefghijklmnopqrstuvwxyz\r\n"
                             "0\r\nX-Trailer: t\r\n\r\nNEXT";
    struct h1_request req;
    size_t used;

    assert_int_equal(parse_req(&req, "POST / HTTP/1.1\r\nHost: a\r\n"
                                     "Transfer-Encoding: chunked\r\n\r\n"),
                     H1_OK);
    assert_int_equal(req.framing, H1_FRAMING_CHUNKED);
    assert_int_equal(feed(&req.parser, in, sizeof(in) - 1, &used), H1_BODY_DONE);
    assert_int_equal(used, sizeof(chunked_body) - 1);
}

static void test_chunked_bytewise(void **state)
{
    struct h1_request req;
    size_t total;

    assert_int_equal(parse_req(&req, "POST / HTTP/1.1\r\nHost: a\r\n"
                                     "Transfer-Encoding:\tChunked \r\n\r\n"),
                     H1_OK);
    assert_int_equal(req.framing, H1_FRAMING_CHUNKED);
    assert_int_equal(feed_bytewise(&req.parser, chunked_body, sizeof(chunked_body) - 1, &total),
                     H1_BODY_DONE);
    assert_int_equal(total, sizeof(chunked_body) - 1);

    /* the same body cut short is an error at EOF */
    assert_int_equal(parse_req(&req, "POST / HTTP/1.1\r\nHost: a\r\n"
                                     "Transfer-Encoding: chunked\r\n\r\n"),
                     H1_OK);
    assert_int_equal(feed_bytewise(&req.parser, chunked_body, 20, &total), H1_BODY_MORE);
    assert_int_equal(total, 20);
    assert_int_equal(h1_body_eof(&req.parser), H1_BODY_ERROR);
}

/* The engine may copy a request between its head and its body. */
static void test_moved_request(void **state)
{
    struct h1_request req, moved;
    size_t used;

    assert_int_equal(parse_req(&req, "POST / HTTP/1.1\r\nHost: a\r\n"
                                     "Transfer-Encoding: chunked\r\n\r\n"),
                     H1_OK);
    moved = req;
    memset(&req, 0xa5, sizeof(req));
    assert_int_equal(feed(&moved.parser, "3\r\nabc\r\n0\r\n\r\n", 13, &used), H1_BODY_DONE);
    assert_int_equal(used, 13);
}

static void test_length_bytewise(void **state)
{
    static const char body[] = "0123456789GET";
    struct h1_request req;
    size_t total;

    assert_int_equal(parse_req(&req, "PUT /x HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\n"),
                     H1_OK);
    assert_int_equal(feed_bytewise(&req.parser, body, sizeof(body) - 1, &total), H1_BODY_DONE);
    assert_int_equal(total, 10);
}

static void test_bad_chunks(void **state)
{
    static const char *bad[] = {
        "zz\r\nhello\r\n0\r\n\r\n",      "-1\r\nhello\r\n0\r\n\r\n",
        "0x10\r\nhello\r\n0\r\n\r\n",    "fffffffffffffffffffff\r\nhello\r\n0\r\n\r\n",
        "5\r\nhelloXX0\r\n\r\n",         "5\r\nhello0\r\n\r\n",
        " 5\r\nhello\r\n0\r\n\r\n",      "5\nhello\r\n0\r\n\r\n",
        "5\rhello\r\n0\r\n\r\n",         "5\r\nhello\n0\r\n\r\n",
        "5\r\nhello\r\n0\r\nX: y\n\r\n", "5\r\nhello\r\n0\r\nX : y\r\n\r\n",
        "5\r\nhello\r\n0\r\n\n",         "5\r\nhello\r\n0\r\n\rX",
        "5;a\x01\r\nhello\r\n0\r\n\r\n", "\r\n5\r\nhello\r\n0\r\n\r\n",
        /* chunk extensions as strict llhttp reads them (RFC 9112 7.1.1, no BWS) */
        "5 \r\nhello\r\n0\r\n\r\n",      "5;\r\nhello\r\n0\r\n\r\n",
        "5; a\r\nhello\r\n0\r\n\r\n",    "5;a =b\r\nhello\r\n0\r\n\r\n",
        "5;a=\r\nhello\r\n0\r\n\r\n",    "5;a=b c\r\nhello\r\n0\r\n\r\n",
        "5;a=b;c\r\nhello\r\n0\r\n\r\n", "5;a=\"x\\\"y\"\r\nhello\r\n0\r\n\r\n",
        "5;a=\"x\"y\r\nhello\r\n0\r\n\r\n",
    };

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        struct h1_request req;
        size_t used, total;

        assert_int_equal(parse_req(&req, "POST / HTTP/1.1\r\nHost: a\r\n"
                                         "Transfer-Encoding: chunked\r\n\r\n"),
                         H1_OK);
        if (feed(&req.parser, bad[i], strlen(bad[i]), &used) != H1_BODY_ERROR)
            print_error("chunk case %zu accepted\n", i);
        assert_int_equal(feed(&req.parser, bad[i], strlen(bad[i]), &used), H1_BODY_ERROR);
        /* errors are sticky */
        assert_int_equal(feed(&req.parser, "0\r\n\r\n", 5, &used), H1_BODY_ERROR);

        assert_int_equal(parse_req(&req, "POST / HTTP/1.1\r\nHost: a\r\n"
                                         "Transfer-Encoding: chunked\r\n\r\n"),
                         H1_OK);
        assert_int_equal(feed_bytewise(&req.parser, bad[i], strlen(bad[i]), &total), H1_BODY_ERROR);
    }
}

/* Chunk extensions that follow the grammar pass, byte by byte too. */
static void test_chunk_extensions(void **state)
{
    static const char *good[] = {
        "5;a\r\nhello\r\n0\r\n\r\n",
        "5;a;b\r\nhello\r\n0\r\n\r\n",
        "5;a=\"q v;\"\r\nhello\r\n0\r\n\r\n",
        "5;a=\"\";b=c\r\nhello\r\n0;last\r\n\r\n",
    };

    for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
        struct h1_request req;
        size_t used, total;

        assert_int_equal(parse_req(&req, "POST / HTTP/1.1\r\nHost: a\r\n"
                                         "Transfer-Encoding: chunked\r\n\r\n"),
                         H1_OK);
        assert_int_equal(feed(&req.parser, good[i], strlen(good[i]), &used), H1_BODY_DONE);
        assert_int_equal(used, strlen(good[i]));
        assert_int_equal(parse_req(&req, "POST / HTTP/1.1\r\nHost: a\r\n"
                                         "Transfer-Encoding: chunked\r\n\r\n"),
                         H1_OK);
        assert_int_equal(feed_bytewise(&req.parser, good[i], strlen(good[i]), &total),
                         H1_BODY_DONE);
        assert_int_equal(total, strlen(good[i]));
    }
}

/* --- trailer cut ---------------------------------------------------------------------------- */

/*
 * Feed IN[0..LEN) in pieces of PIECE bytes and append to OUT what a proxy
 * forwards: each feed's used bytes without its cut. Checks the cut lies in
 * the used bytes. Returns the last status; *TOTAL is the bytes used.
 */
static enum h1_body_status feed_forward(struct h1_parser *p, const char *in, size_t len,
                                        size_t piece, char *out, size_t *outlen, size_t *total)
{
    enum h1_body_status st = H1_BODY_MORE;

    *outlen = 0;
    *total = 0;
    for (size_t i = 0; i < len && st == H1_BODY_MORE; i += piece) {
        size_t n = len - i < piece ? len - i : piece, used;
        struct h1_cut cut = {99, 99};
        const char *buf = at_page_end(in + i, n);
        st = h1_body_feed_cut(p, buf, n, &used, &cut);
        assert_true(cut.off + cut.len <= used);
        memcpy(out + *outlen, buf, cut.off);
        *outlen += cut.off;
        memcpy(out + *outlen, buf + cut.off + cut.len, used - cut.off - cut.len);
        *outlen += used - cut.off - cut.len;
        *total += used;
    }
    return st;
}

static const char chunked_head[] =
    "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n";

/* Every piece size, one byte at a time included, forwards the same bytes:
 * the chunks, the last-chunk line and the final CRLF, never a trailer field. */
static void test_trailer_cut(void **state)
{
    static const struct {
        const char *in, *want;
    } cases[] = {
        {"5\r\nhello\r\n0\r\nX-User-Id: 1\r\nHost: evil\r\nContent-Length: 5\r\n\r\n",
         "5\r\nhello\r\n0\r\n\r\n"},
        {"3;a=b\r\nabc\r\n0;last=1\r\nAuthorization: Bearer x\r\n\r\n",
         "3;a=b\r\nabc\r\n0;last=1\r\n\r\n"},
        {"0\r\nCookie: session=s\r\nX-Forwarded-For: 10.0.0.1\r\n\r\n", "0\r\n\r\n"},
        {"0\r\nX:\r\n\r\n", "0\r\n\r\n"},
        {"2\r\n\r\n\r\n0\r\n\r\n", "2\r\n\r\n\r\n0\r\n\r\n"},
        {"5\r\n0\r\n\r\n\r\n0\r\n\r\n", "5\r\n0\r\n\r\n\r\n0\r\n\r\n"},
        {chunked_body, "5;ext=1\r\nhello\r\n1A\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\n\r\n"},
    };

    for (size_t c = 0; c < sizeof(cases) / sizeof(cases[0]); c++) {
        size_t len = strlen(cases[c].in);
        for (size_t piece = 1; piece <= len; piece++) {
            struct h1_request req;
            char out[256];
            size_t outlen, total;

            assert_int_equal(parse_req(&req, chunked_head), H1_OK);
            enum h1_body_status st =
                feed_forward(&req.parser, cases[c].in, len, piece, out, &outlen, &total);
            if (st != H1_BODY_DONE)
                fail_msg("case %zu, pieces of %zu: status %d", c, piece, (int)st);
            assert_int_equal(total, len);
            if (outlen != strlen(cases[c].want) || memcmp(out, cases[c].want, outlen) != 0)
                fail_msg("case %zu, pieces of %zu: forwarded \"%.*s\"", c, piece, (int)outlen, out);
        }
    }
}

/* The next message after the body is not the body's: it is neither used nor cut. */
static void test_trailer_cut_pipelined(void **state)
{
    static const char in[] = "0\r\nX-A: 1\r\n\r\nGET / HTTP/1.1\r\n";
    struct h1_request req;
    struct h1_cut cut;
    size_t used;

    assert_int_equal(parse_req(&req, chunked_head), H1_OK);
    assert_int_equal(
        h1_body_feed_cut(&req.parser, at_page_end(in, sizeof(in) - 1), sizeof(in) - 1, &used, &cut),
        H1_BODY_DONE);
    assert_int_equal(used, 13);
    assert_int_equal(cut.off, 3);
    assert_int_equal(cut.len, 8);
}

/* Only the chunked coding has trailers: a Content-Length body that looks
 * like one is passed on whole, and a framing error cuts nothing. */
static void test_trailer_cut_other_bodies(void **state)
{
    static const char body[] = "0\r\nX-A: 1\r\n\r\n";
    struct h1_request req;
    struct h1_cut cut;
    size_t used;
    char out[64];
    size_t outlen, total;

    assert_int_equal(parse_req(&req, "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 13\r\n\r\n"),
                     H1_OK);
    assert_int_equal(feed_forward(&req.parser, body, 13, 1, out, &outlen, &total), H1_BODY_DONE);
    assert_int_equal(outlen, 13);
    assert_memory_equal(out, body, 13);

    assert_int_equal(parse_req(&req, chunked_head), H1_OK);
    assert_int_equal(
        h1_body_feed_cut(&req.parser, at_page_end("0\r\nX-A: 1\n", 10), 10, &used, &cut),
        H1_BODY_ERROR);
    assert_int_equal(used, 0);
    assert_int_equal(cut.len, 0);
    /* llhttp refuses Transfer-Encoding in a trailer section outright */
    assert_int_equal(parse_req(&req, chunked_head), H1_OK);
    assert_int_equal(feed_forward(&req.parser, "0\r\nTransfer-Encoding: chunked\r\n\r\n", 33, 1,
                                  out, &outlen, &total),
                     H1_BODY_ERROR);
    /* a bad trailer field split across feeds is still refused */
    assert_int_equal(parse_req(&req, chunked_head), H1_OK);
    assert_int_equal(feed_forward(&req.parser, "0\r\nX A: 1\r\n\r\n", 14, 1, out, &outlen, &total),
                     H1_BODY_ERROR);
}

/* A response's trailers are cut the same way. */
static void test_trailer_cut_response(void **state)
{
    static const char body[] = "2\r\nok\r\n0\r\nSet-Cookie: s=1; Domain=example.com\r\n\r\n";
    static const char want[] = "2\r\nok\r\n0\r\n\r\n";
    struct h1_response resp;
    char out[64];
    size_t outlen, total;

    assert_int_equal(
        parse_resp(&resp, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", false), H1_OK);
    assert_int_equal(feed_forward(&resp.parser, body, sizeof(body) - 1, 7, out, &outlen, &total),
                     H1_BODY_DONE);
    assert_int_equal(total, sizeof(body) - 1);
    assert_int_equal(outlen, sizeof(want) - 1);
    assert_memory_equal(out, want, sizeof(want) - 1);
}

static void test_http10(void **state)
{
    struct h1_request req;

    assert_int_equal(parse_req(&req, "GET / HTTP/1.0\r\n\r\n"), H1_OK);
    assert_int_equal(req.version_minor, 0);
    assert_null(req.host);
    assert_false(req.keep_alive);
    assert_int_equal(parse_req(&req, "GET / HTTP/1.0\r\nConnection: Keep-Alive\r\nHost: h\r\n\r\n"),
                     H1_OK);
    assert_true(req.keep_alive);
    assert_true(slice_is(req.host, req.host_len, "h"));
}

static void test_keep_alive(void **state)
{
    struct h1_request req;

    assert_int_equal(parse_req(&req, "GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"),
                     H1_OK);
    assert_false(req.keep_alive);
    assert_int_equal(parse_req(&req, "GET / HTTP/1.1\r\nHost: a\r\n"
                                     "Connection: foo, CLOSE\r\n\r\n"),
                     H1_OK);
    assert_false(req.keep_alive);
    assert_int_equal(parse_req(&req, "GET / HTTP/1.1\r\nHost: a\r\nConnection: closed\r\n\r\n"),
                     H1_OK);
    assert_true(req.keep_alive);
    assert_int_equal(parse_req(&req, "GET / HTTP/1.0\r\nConnection: keep-alive, close\r\n\r\n"),
                     H1_OK);
    assert_false(req.keep_alive);
}

static void test_upgrade(void **state)
{
    struct h1_request req;

    assert_int_equal(parse_req(&req, "GET /ws HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, "
                                     "Upgrade\r\nUpgrade: websocket\r\n\r\n"),
                     H1_OK);
    assert_true(req.upgrade);
    assert_int_equal(parse_req(&req, "GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n\r\n"),
                     H1_OK);
    assert_false(req.upgrade);
    assert_int_equal(parse_req(&req, "GET /ws HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\n\r\n"),
                     H1_OK);
    assert_false(req.upgrade);
}

static void test_expect(void **state)
{
    struct h1_request req;

    assert_int_equal(parse_req(&req, "PUT / HTTP/1.1\r\nHost: a\r\nExpect: 100-Continue\r\n"
                                     "Content-Length: 3\r\n\r\n"),
                     H1_OK);
    assert_true(req.expect_continue);
    assert_int_equal(parse_req(&req, "PUT / HTTP/1.0\r\nExpect: 100-continue\r\n\r\n"), H1_OK);
    assert_false(req.expect_continue);
    assert_int_equal(parse_req(&req, "PUT / HTTP/1.1\r\nHost: a\r\nExpect: 200-ok\r\n\r\n"),
                     H1_EXPECTATION);
    assert_non_null(req.reason);
    assert_int_equal(req.framing, H1_FRAMING_NONE);
    assert_true(req.keep_alive);
    assert_int_equal(
        parse_req(&req, "PUT / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue, x\r\n\r\n"),
        H1_EXPECTATION);
    assert_false(req.expect_continue);
    assert_int_equal(parse_req(&req, "PUT / HTTP/1.0\r\nExpect: x\r\n\r\n"), H1_EXPECTATION);
}

/* A 417 is answered from a parsed head: the caller learns the body's framing
 * (to close after a body it did not read) and the connection options. */
static void test_expect_fields(void **state)
{
    struct h1_request req;

    assert_int_equal(parse_req(&req, "POST /p HTTP/1.1\r\nHost: a\r\nExpect: x\r\n"
                                     "Content-Length: 5\r\nConnection: close\r\n\r\n"),
                     H1_EXPECTATION);
    assert_int_equal(req.framing, H1_FRAMING_LENGTH);
    assert_int_equal(req.content_length, 5);
    assert_false(req.keep_alive);
    assert_int_equal(req.path_len, 2);
    assert_int_equal(parse_req(&req, "POST / HTTP/1.1\r\nHost: a\r\nExpect: x\r\n"
                                     "Transfer-Encoding: chunked\r\n\r\n"),
                     H1_EXPECTATION);
    assert_int_equal(req.framing, H1_FRAMING_CHUNKED);
    /* A head that is bad besides is a 400, whatever it expects. */
    assert_int_equal(parse_req(&req, "POST / HTTP/1.1\r\nExpect: x\r\n\r\n"), H1_BAD_REQUEST);
    assert_int_equal(parse_req(&req, "POST / HTTP/1.1\r\nHost: a\r\nExpect: x\r\n"
                                     "Content-Length: 1\r\nContent-Length: 2\r\n\r\n"),
                     H1_BAD_REQUEST);
}

static void test_underscores(void **state)
{
    static const char in[] = "GET / HTTP/1.1\r\nHost: a\r\nX_Real_IP: 1.2.3.4\r\nX-A: b\r\n\r\n";
    struct h1_request req;

    assert_int_equal(parse_req_n(&req, in, sizeof(in) - 1, 64, false), H1_OK);
    assert_int_equal(req.nheaders, 2);
    assert_null(h1_find(req.headers, req.nheaders, "x_real_ip"));
    assert_non_null(h1_find(req.headers, req.nheaders, "x-a"));
    assert_int_equal(parse_req_n(&req, in, sizeof(in) - 1, 64, true), H1_OK);
    assert_int_equal(req.nheaders, 3);
    assert_non_null(h1_find(req.headers, req.nheaders, "X_REAL_IP"));
    /* dropped headers still count toward the limit */
    assert_int_equal(parse_req_n(&req, in, sizeof(in) - 1, 2, false), H1_HEAD_TOO_LARGE);
    assert_int_equal(parse_req_n(&req, in, sizeof(in) - 1, 3, false), H1_OK);
}

static void test_too_many_headers(void **state)
{
    char in[2048];
    struct h1_request req;
    int n = snprintf(in, sizeof(in), "GET / HTTP/1.1\r\nHost: a\r\n");

    for (int i = 0; i < 9; i++)
        n += snprintf(in + n, sizeof(in) - (size_t)n, "X-%d: v\r\n", i);
    n += snprintf(in + n, sizeof(in) - (size_t)n, "\r\n");
    assert_int_equal(parse_req_n(&req, in, (size_t)n, 10, false), H1_OK);
    assert_int_equal(req.nheaders, 10);
    assert_int_equal(parse_req_n(&req, in, (size_t)n, 9, false), H1_HEAD_TOO_LARGE);
    assert_non_null(req.reason);
}

static void test_absolute_form(void **state)
{
    struct h1_request req;

    assert_int_equal(parse_req(&req, "GET http://Example.com:8080/p/q?z HTTP/1.1\r\n"
                                     "Host: example.COM:8080\r\n\r\n"),
                     H1_OK);
    assert_true(slice_is(req.path, req.path_len, "/p/q"));
    assert_true(slice_is(req.query, req.query_len, "z"));
    assert_int_equal(req.host_len, strlen("example.com:8080"));
    assert_int_equal(parse_req(&req, "GET https://a.b HTTP/1.1\r\nHost: a.b\r\n\r\n"), H1_OK);
    assert_true(slice_is(req.path, req.path_len, "/"));
    assert_null(req.query);
    assert_int_equal(parse_req(&req, "GET http://a.b?x=1 HTTP/1.1\r\nHost: a.b\r\n\r\n"), H1_OK);
    assert_true(slice_is(req.path, req.path_len, "/"));
    assert_true(slice_is(req.query, req.query_len, "x=1"));
    /* HTTP/1.0 absolute-form without Host: the authority is the host */
    assert_int_equal(parse_req(&req, "GET http://c.d/x HTTP/1.0\r\n\r\n"), H1_OK);
    assert_true(slice_is(req.host, req.host_len, "c.d"));
}

static void test_asterisk_form(void **state)
{
    struct h1_request req;

    assert_int_equal(parse_req(&req, "OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n"), H1_OK);
    assert_int_equal(req.method, H1_METHOD_OPTIONS);
    assert_true(slice_is(req.path, req.path_len, "*"));
}

/* --- bad requests -------------------------------------------------------------------------- */

struct bad_case {
    const char *head;
    enum h1_status want;
};

static const struct bad_case bad_requests[] = {
    /* framing: CL + TE, TE obfuscations */
    {"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
     H1_BAD_REQUEST},
    {"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 0\r\n\r\n",
     H1_BAD_REQUEST},
    {"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", H1_BAD_REQUEST},
    {"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, chunked\r\n\r\n", H1_BAD_REQUEST},
    {"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n", H1_BAD_REQUEST},
    {"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked;x\r\n\r\n", H1_BAD_REQUEST},
    {"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: \x0b"
     "chunked\r\n\r\n",
     H1_BAD_REQUEST},
    {"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding : chunked\r\n\r\n", H1_BAD_REQUEST},
    {"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n"
     "Transfer-Encoding: chunked\r\n\r\n",
     H1_BAD_REQUEST},
    {"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: identity\r\n\r\n", H1_BAD_REQUEST},
    {"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\r\n\r\n", H1_BAD_REQUEST},
    {"POST / HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n", H1_BAD_REQUEST},
    {"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\t\r\n\r\n", H1_BAD_REQUEST},
    /* Content-Length */
    {"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
     H1_BAD_REQUEST},
    {"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 6\r\n\r\n", H1_BAD_REQUEST},
    {"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\n", H1_BAD_REQUEST},
    {"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -5\r\n\r\n", H1_BAD_REQUEST},
    {"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5 5\r\n\r\n", H1_BAD_REQUEST},
    {"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0x10\r\n\r\n", H1_BAD_REQUEST},
    {"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: \r\n\r\n", H1_BAD_REQUEST},
    {"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5,\r\n\r\n", H1_BAD_REQUEST},
    {"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\t\r\n\r\n", H1_BAD_REQUEST},
    {"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999999\r\n\r\n",
     H1_BAD_REQUEST},
    {"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 18446744073709551616\r\n\r\n", H1_BAD_REQUEST},
    /* header syntax */
    {"GET / HTTP/1.1\r\nHost : a\r\n\r\n", H1_BAD_REQUEST},
    {"GET / HTTP/1.1\r\nHost: a\r\n: empty\r\n\r\n", H1_BAD_REQUEST},
    {"GET / HTTP/1.1\r\nHost: a\r\nX(y): z\r\n\r\n", H1_BAD_REQUEST},
    {"GET / HTTP/1.1\r\nHost: a\r\nX\x7fY: z\r\n\r\n", H1_BAD_REQUEST},
    {"GET / HTTP/1.1\r\nHost: a\r\nX\xc3\xa9: z\r\n\r\n", H1_BAD_REQUEST},
    {"GET / HTTP/1.1\r\nHost: a\r\nNoColon\r\n\r\n", H1_BAD_REQUEST},
    {"GET / HTTP/1.1\r\nHost: a\r\nX: a\x01"
     "b\r\n\r\n",
     H1_BAD_REQUEST},
    {"GET / HTTP/1.1\r\nHost: a\r\nX: a\x7f\r\n\r\n", H1_BAD_REQUEST},
    {"GET / HTTP/1.1\r\nHost: a\r\nX: \x1b[0m\r\n\r\n", H1_BAD_REQUEST},
    /* Host */
    {"GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n", H1_BAD_REQUEST},
    {"GET / HTTP/1.1\r\nHost: a\r\nhost: b\r\n\r\n", H1_BAD_REQUEST},
    {"GET / HTTP/1.1\r\nX: y\r\n\r\n", H1_BAD_REQUEST},
    {"GET / HTTP/1.1\r\nHost:\r\n\r\n", H1_BAD_REQUEST},
    {"GET / HTTP/1.1\r\nHost: a b\r\n\r\n", H1_BAD_REQUEST},
    {"GET / HTTP/1.1\r\nHost: user@a\r\n\r\n", H1_BAD_REQUEST},
    {"GET / HTTP/1.1\r\nHost: a/b\r\n\r\n", H1_BAD_REQUEST},
    {"GET http://a.com/ HTTP/1.1\r\nHost: b.com\r\n\r\n", H1_BAD_REQUEST},
    {"GET http://a.com:80/ HTTP/1.1\r\nHost: a.com\r\n\r\n", H1_BAD_REQUEST},
    {"GET http://u@a.com/ HTTP/1.1\r\nHost: a.com\r\n\r\n", H1_BAD_REQUEST},
    {"GET http:///x HTTP/1.1\r\nHost: a.com\r\n\r\n", H1_BAD_REQUEST},
    /* request line and target */
    {"GET * HTTP/1.1\r\nHost: a\r\n\r\n", H1_BAD_REQUEST},
    {"CONNECT a.com:443 HTTP/1.1\r\nHost: a.com:443\r\n\r\n", H1_UNSUPPORTED},
    {"GET a.com:443 HTTP/1.1\r\nHost: a.com:443\r\n\r\n", H1_BAD_REQUEST},
    {"GET ftp://a.com/ HTTP/1.1\r\nHost: a.com\r\n\r\n", H1_BAD_REQUEST},
    {"GET /a#frag HTTP/1.1\r\nHost: a\r\n\r\n", H1_BAD_REQUEST},
    {"GET / HTTP/2.0\r\nHost: a\r\n\r\n", H1_UNSUPPORTED},
    {"GET / HTTP/1.2\r\nHost: a\r\n\r\n", H1_UNSUPPORTED},
    {"GET / HTTP/0.9\r\nHost: a\r\n\r\n", H1_UNSUPPORTED},
    {"GET / HTTP/1.1 \r\nHost: a\r\n\r\n", H1_BAD_REQUEST},
    {"GET / HTTP/1.1x\r\nHost: a\r\n\r\n", H1_BAD_REQUEST},
    {"GET / http/1.1\r\nHost: a\r\n\r\n", H1_BAD_REQUEST},
    {"GET / HTTP/11\r\nHost: a\r\n\r\n", H1_BAD_REQUEST},
    {"GET /  HTTP/1.1\r\nHost: a\r\n\r\n", H1_BAD_REQUEST},
    {"GET  / HTTP/1.1\r\nHost: a\r\n\r\n", H1_BAD_REQUEST},
    {"GET\t/ HTTP/1.1\r\nHost: a\r\n\r\n", H1_BAD_REQUEST},
    {"GET /\xff HTTP/1.1\r\nHost: a\r\n\r\n", H1_BAD_REQUEST},
    {"GET /\x7f HTTP/1.1\r\nHost: a\r\n\r\n", H1_BAD_REQUEST},
    {"GET / HTTP/1.1\r\n", H1_BAD_REQUEST}, /* not a whole head */
    {"G(T / HTTP/1.1\r\nHost: a\r\n\r\n", H1_BAD_REQUEST},
    {"FOO / HTTP/1.1\r\nHost: a\r\n\r\n", H1_BAD_REQUEST},  /* llhttp: unknown method */
    {"GET / HTTP/1.1\r\nHost: a\r\n\r\nX", H1_BAD_REQUEST}, /* bytes after the head */
    {"/ HTTP/1.1\r\nHost: a\r\n\r\n", H1_BAD_REQUEST},
    {"\r\n\r\n", H1_BAD_REQUEST},
};

static void test_bad_requests(void **state)
{
    for (size_t i = 0; i < sizeof(bad_requests) / sizeof(bad_requests[0]); i++) {
        const struct bad_case *c = &bad_requests[i];
        struct h1_request req;
        enum h1_status st = parse_req_n(&req, c->head, strlen(c->head), 64, false);

        if (st != c->want)
            print_error("case %zu: %s: got %s (%s)\n", i, c->head, h1_status_str(st),
                        req.reason ? req.reason : "-");
        assert_int_equal(st, c->want);
        assert_non_null(req.reason);
        /* a refused head frames nothing */
        size_t used;
        if (st != H1_OK && req.parser.error_state != 0)
            assert_int_equal(h1_body_feed(&req.parser, "0\r\n\r\n", 5, &used), H1_BODY_ERROR);
    }
}

/* --- responses ----------------------------------------------------------------------------- */

static void test_response_length(void **state)
{
    struct h1_response resp;
    size_t used;

    assert_int_equal(parse_resp(&resp,
                                "HTTP/1.1 200 OK\r\nContent-Length: 4\r\n"
                                "Content-Type: text/plain\r\n\r\n",
                                false),
                     H1_OK);
    assert_int_equal(resp.status, 200);
    assert_true(slice_is(resp.reason_phrase, resp.reason_len, "OK"));
    assert_int_equal(resp.framing, H1_FRAMING_LENGTH);
    assert_int_equal(resp.content_length, 4);
    assert_true(resp.keep_alive);
    assert_int_equal(feed(&resp.parser, "abcdHTTP", 8, &used), H1_BODY_DONE);
    assert_int_equal(used, 4);

    /* truncated */
    assert_int_equal(parse_resp(&resp, "HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\n", false),
                     H1_OK);
    assert_int_equal(feed(&resp.parser, "ab", 2, &used), H1_BODY_MORE);
    assert_int_equal(h1_body_eof(&resp.parser), H1_BODY_ERROR);
}

static void test_response_no_body(void **state)
{
    struct h1_response resp;
    size_t used;

    assert_int_equal(parse_resp(&resp, "HTTP/1.1 204 No Content\r\n\r\n", false), H1_OK);
    assert_int_equal(resp.framing, H1_FRAMING_NONE);
    assert_true(resp.keep_alive);
    assert_int_equal(feed(&resp.parser, "HTTP/1.1", 8, &used), H1_BODY_DONE);
    assert_int_equal(used, 0);

    assert_int_equal(
        parse_resp(&resp, "HTTP/1.1 304 Not Modified\r\nContent-Length: 99\r\n\r\n", false), H1_OK);
    assert_int_equal(resp.framing, H1_FRAMING_NONE);
    assert_int_equal(feed(&resp.parser, "HTTP/1.1", 8, &used), H1_BODY_DONE);
    assert_int_equal(used, 0);

    assert_int_equal(parse_resp(&resp, "HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n", true),
                     H1_OK);
    assert_int_equal(resp.framing, H1_FRAMING_NONE);
    assert_true(resp.keep_alive);
    assert_int_equal(feed(&resp.parser, "HTTP/1.1", 8, &used), H1_BODY_DONE);
    assert_int_equal(used, 0);
    assert_int_equal(h1_body_eof(&resp.parser), H1_BODY_DONE);

    assert_int_equal(
        parse_resp(&resp, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", true), H1_OK);
    assert_int_equal(resp.framing, H1_FRAMING_NONE);

    assert_int_equal(parse_resp(&resp, "HTTP/1.1 100 Continue\r\n\r\n", false), H1_OK);
    assert_int_equal(resp.status, 100);
    assert_int_equal(resp.framing, H1_FRAMING_NONE);
    assert_int_equal(parse_resp(&resp,
                                "HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade"
                                "\r\nUpgrade: websocket\r\n\r\n",
                                false),
                     H1_OK);
    assert_int_equal(resp.framing, H1_FRAMING_NONE);
}

static void test_response_chunked(void **state)
{
    struct h1_response resp;
    size_t total, used;

    assert_int_equal(
        parse_resp(&resp, "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", false),
        H1_OK);
    assert_int_equal(resp.framing, H1_FRAMING_CHUNKED);
    assert_true(resp.keep_alive);
    assert_int_equal(feed_bytewise(&resp.parser, chunked_body, sizeof(chunked_body) - 1, &total),
                     H1_BODY_DONE);
    assert_int_equal(total, sizeof(chunked_body) - 1);

    /* TE wins over CL, but the connection is not reused */
    assert_int_equal(parse_resp(&resp,
                                "HTTP/1.1 200 OK\r\nContent-Length: 3\r\n"
                                "Transfer-Encoding: chunked\r\n\r\n",
                                false),
                     H1_OK);
    assert_int_equal(resp.framing, H1_FRAMING_CHUNKED);
    assert_false(resp.keep_alive);
    assert_int_equal(feed(&resp.parser, "3\r\nabc\r\n0\r\n\r\n", 13, &used), H1_BODY_DONE);
    assert_int_equal(used, 13);

    /* chunked not last: until close */
    assert_int_equal(
        parse_resp(&resp, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n", false),
        H1_OK);
    assert_int_equal(resp.framing, H1_FRAMING_EOF);
    assert_false(resp.keep_alive);

    /* chunked on HTTP/1.0 is framed, but the connection is not reused */
    assert_int_equal(parse_resp(&resp,
                                "HTTP/1.0 200 OK\r\nConnection: keep-alive\r\n"
                                "Transfer-Encoding: chunked\r\n\r\n",
                                false),
                     H1_OK);
    assert_int_equal(resp.framing, H1_FRAMING_CHUNKED);
    assert_false(resp.keep_alive);
}

static void test_response_eof(void **state)
{
    struct h1_response resp;
    size_t used;

    assert_int_equal(parse_resp(&resp, "HTTP/1.0 200 OK\r\nServer: x\r\n\r\n", false), H1_OK);
    assert_int_equal(resp.version_minor, 0);
    assert_int_equal(resp.framing, H1_FRAMING_EOF);
    assert_false(resp.keep_alive);
    assert_int_equal(feed(&resp.parser, "anything at all", 15, &used), H1_BODY_MORE);
    assert_int_equal(used, 15);
    assert_int_equal(h1_body_eof(&resp.parser), H1_BODY_DONE);

    /* an empty EOF-delimited body */
    assert_int_equal(parse_resp(&resp, "HTTP/1.1 200 OK\r\n\r\n", false), H1_OK);
    assert_int_equal(resp.framing, H1_FRAMING_EOF);
    assert_int_equal(h1_body_eof(&resp.parser), H1_BODY_DONE);

    /* keep-alive on 1.0 needs a length */
    assert_int_equal(parse_resp(&resp,
                                "HTTP/1.0 200 OK\r\nConnection: keep-alive\r\n"
                                "Content-Length: 0\r\n\r\n",
                                false),
                     H1_OK);
    assert_true(resp.keep_alive);
    assert_int_equal(parse_resp(&resp,
                                "HTTP/1.1 200 OK\r\nConnection: close\r\n"
                                "Content-Length: 0\r\n\r\n",
                                false),
                     H1_OK);
    assert_false(resp.keep_alive);
}

static void test_bad_responses(void **state)
{
    static const char *bad[] = {
        "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
        "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
        "HTTP/1.1 20 OK\r\n\r\n",
        "HTTP/1.1 2000 OK\r\n\r\n",
        "HTTP/1.1 099 OK\r\n\r\n",
        "HTTP/2.0 200 OK\r\n\r\n",
        "HTTP/1.1 200 OK\r\nBad Name: x\r\n\r\n",
        "HTTP/1.1 200 O\x01K\r\n\r\n",
        "ICY 200 OK\r\n\r\n",
        /* framing llhttp reads differently: an empty coding list, a tab after a value */
        "HTTP/1.1 200 OK\r\nTransfer-Encoding:\r\nContent-Length: 3\r\n\r\n",
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\t\r\n\r\n",
        "HTTP/1.1 200 OK\r\nContent-Length: 3\t\r\n\r\n",
    };
    struct h1_response resp;

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        assert_int_equal(parse_resp(&resp, bad[i], false), H1_BAD_REQUEST);
        assert_non_null(resp.reason);
    }
    assert_int_equal(parse_resp(&resp, "HTTP/1.1 200\r\nContent-Length: 0\r\n\r\n", false), H1_OK);
    assert_int_equal(resp.reason_len, 0);
}

/* --- helpers ------------------------------------------------------------------------------- */

static void test_helpers(void **state)
{
    assert_true(h1_token_eq("Chunked", 7, "chunked"));
    assert_false(h1_token_eq("chunke", 6, "chunked"));
    assert_false(h1_token_eq("chunkedx", 8, "chunked"));
    assert_true(h1_list_has("keep-alive,  Upgrade ", 21, "upgrade"));
    assert_true(h1_list_has(",,close", 7, "close"));
    assert_false(h1_list_has("closed, x", 9, "close"));
    assert_false(h1_list_has("", 0, "close"));
    /* the length bounds the scan, not a NUL */
    assert_false(h1_list_has("clos"
                             "e",
                             4, "close"));
    assert_string_equal(h1_status_str(H1_HEAD_TOO_LARGE), "head_too_large");
    assert_string_equal(h1_status_str(H1_OK), "ok");
    assert_string_equal(h1_status_str(H1_EXPECTATION), "expectation");
}

/* RFC 9110 5.6.2: tchar = "!" / "#" / "$" / "%" / "&" / "'" / "*" / "+" /
 * "-" / "." / "^" / "_" / "`" / "|" / "~" / DIGIT / ALPHA; every other
 * byte (controls, SP, separators, DEL, 0x80 and above) is none. */
static void test_tchar(void **state)
{
    static const char extra[] = "!#$%&'*+-.^_`|~";

    for (int c = 0; c < 256; c++) {
        bool want = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                    (c != 0 && memchr(extra, c, sizeof(extra) - 1) != NULL);
        if (h1_is_tchar((unsigned char)c) != want)
            fail_msg("byte 0x%02x: got %d", c, !want);
    }
    assert_true(h1_is_token("X-Request-Id", 12));
    assert_true(h1_is_token("!#$%&'*+-.^_`|~", 15));
    assert_false(h1_is_token("", 0));
    assert_false(h1_is_token("a b", 3));
    assert_false(h1_is_token("a:", 2));
    assert_false(h1_is_token("a\0b", 3));
    assert_false(h1_is_token("\xc3\xa4", 2));
    /* the length bounds the scan, not a NUL */
    assert_true(h1_is_token("ab c", 2));
}

static void test_trim_ows(void **state)
{
    static const struct {
        const char *in, *want;
    } cases[] = {
        {" \t a b \t ", "a b"}, {"ab", "ab"}, {" \t ", ""},   {"", ""},
        {"\r a", "\r a"},      /* CR, LF and VT are not OWS */
        {"a\n", "a\n"},         {"\va\v", "\va\v"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        const char *v = cases[i].in;
        size_t n = strlen(v);
        h1_trim_ows(&v, &n);
        if (n != strlen(cases[i].want) || memcmp(v, cases[i].want, n) != 0)
            fail_msg("case %zu: got \"%.*s\"", i, (int)n, v);
    }
    assert_true(h1_is_ows(' ') && h1_is_ows('\t'));
    assert_false(h1_is_ows('\r') || h1_is_ows('\n') || h1_is_ows('\0') || h1_is_ows('\v'));
}

/* The byte-by-byte definition of h1_head_end's verdicts (RFC 9112 2.2,
 * 5.2): the first offending byte decides, running out of input is -2. */
static ssize_t head_end_reference(const char *buf, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        char c = buf[i];
        if (c == '\0')
            return -1;
        if (c == '\r') {
            if (i + 1 == len)
                return -2;
            if (buf[i + 1] != '\n')
                return -1;
            continue;
        }
        if (c != '\n')
            continue;
        if (i == 0 || buf[i - 1] != '\r' || i == 1)
            return -1;
        if (i + 1 == len)
            return -2;
        if (buf[i + 1] == ' ' || buf[i + 1] == '\t')
            return -1;
        if (buf[i + 1] == '\r') {
            if (i + 2 == len)
                return -2;
            return buf[i + 2] != '\n' ? -1 : (ssize_t)(i + 3);
        }
    }
    return -2;
}

/* Every string up to 7 bytes over the bytes that matter, then longer
 * random ones: the scanner agrees with the definition on each. */
static void test_head_end_matches_reference(void **state)
{
    static const char alpha[] = {'a', ':', ' ', '\t', '\r', '\n', '\0'};
    char buf[64];
    uint64_t rnd = 0x9e3779b97f4a7c15ULL;
    size_t pg = (size_t)sysconf(_SC_PAGESIZE);
    /* One page followed by a guard page: each input ends at the boundary,
     * so a read past it faults. */
    char *map = mmap(NULL, 2 * pg, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    assert_true(map != MAP_FAILED);
    assert_int_equal(mprotect(map + pg, pg, PROT_NONE), 0);
#define guarded(b, n) ((char *)memcpy(map + pg - (n), (b), (n)))

    for (size_t len = 0; len <= 7; len++) {
        size_t total = 1;
        for (size_t k = 0; k < len; k++)
            total *= sizeof(alpha);
        for (size_t n = 0; n < total; n++) {
            size_t x = n;
            for (size_t k = 0; k < len; k++, x /= sizeof(alpha))
                buf[k] = alpha[x % sizeof(alpha)];
            char *g = guarded(buf, len);
            if (h1_head_end(g, len) != head_end_reference(buf, len))
                fail_msg("length %zu, case %zu: %zd, expected %zd", len, n, h1_head_end(g, len),
                         head_end_reference(buf, len));
        }
    }
    for (int n = 0; n < 200000; n++) {
        rnd ^= rnd << 13, rnd ^= rnd >> 7, rnd ^= rnd << 17;
        size_t len = rnd % sizeof(buf);
        for (size_t k = 0; k < len; k++) {
            rnd ^= rnd << 13, rnd ^= rnd >> 7, rnd ^= rnd << 17;
            /* mostly letters, so long lines and real heads occur too */
            buf[k] = (rnd & 3) ? 'a' : alpha[(rnd >> 2) % sizeof(alpha)];
        }
        char *g = guarded(buf, len);
        assert_int_equal(h1_head_end(g, len), head_end_reference(buf, len));
    }
#undef guarded
    munmap(map, 2 * pg);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_head_end, release_slots),
        cmocka_unit_test_teardown(test_head_end_rejects, release_slots),
        cmocka_unit_test_teardown(test_value_controls_at_every_offset, release_slots),
        cmocka_unit_test_teardown(test_get, release_slots),
        cmocka_unit_test_teardown(test_post_length, release_slots),
        cmocka_unit_test_teardown(test_content_length_zero, release_slots),
        cmocka_unit_test_teardown(test_content_length_merged, release_slots),
        cmocka_unit_test_teardown(test_pipelined, release_slots),
        cmocka_unit_test_teardown(test_chunked_whole, release_slots),
        cmocka_unit_test_teardown(test_chunked_bytewise, release_slots),
        cmocka_unit_test_teardown(test_length_bytewise, release_slots),
        cmocka_unit_test_teardown(test_moved_request, release_slots),
        cmocka_unit_test_teardown(test_bad_chunks, release_slots),
        cmocka_unit_test_teardown(test_trailer_cut, release_slots),
        cmocka_unit_test_teardown(test_trailer_cut_pipelined, release_slots),
        cmocka_unit_test_teardown(test_trailer_cut_other_bodies, release_slots),
        cmocka_unit_test_teardown(test_trailer_cut_response, release_slots),
        cmocka_unit_test_teardown(test_http10, release_slots),
        cmocka_unit_test_teardown(test_keep_alive, release_slots),
        cmocka_unit_test_teardown(test_upgrade, release_slots),
        cmocka_unit_test_teardown(test_expect, release_slots),
        cmocka_unit_test_teardown(test_expect_fields, release_slots),
        cmocka_unit_test_teardown(test_underscores, release_slots),
        cmocka_unit_test_teardown(test_too_many_headers, release_slots),
        cmocka_unit_test_teardown(test_absolute_form, release_slots),
        cmocka_unit_test_teardown(test_asterisk_form, release_slots),
        cmocka_unit_test_teardown(test_bad_requests, release_slots),
        cmocka_unit_test_teardown(test_response_length, release_slots),
        cmocka_unit_test_teardown(test_response_no_body, release_slots),
        cmocka_unit_test_teardown(test_response_chunked, release_slots),
        cmocka_unit_test_teardown(test_response_eof, release_slots),
        cmocka_unit_test_teardown(test_bad_responses, release_slots),
        cmocka_unit_test_teardown(test_chunk_extensions, release_slots),
        cmocka_unit_test_teardown(test_feed_run_dechunks, release_slots),
        cmocka_unit_test_teardown(test_helpers, release_slots),
        cmocka_unit_test(test_head_end_matches_reference),
        cmocka_unit_test(test_tchar),
        cmocka_unit_test(test_trim_ows),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
