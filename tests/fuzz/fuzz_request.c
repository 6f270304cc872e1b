/*
 * fuzz_request.c - libFuzzer target for the request head parser, the body
 * framer and path normalisation.
 *
 * The input is one client byte stream: heads are delimited and parsed, bodies
 * fed in small pieces (the piece size comes from the first byte), pipelined
 * requests follow one another. Besides crashes it traps on broken contracts:
 * a slice outside the input, a body that claims more bytes than it was fed,
 * or a chunked body that, with its trailer fields cut, is not a complete
 * chunked body without them.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "h1.h"
#include "uri.h"

#define MAX_HEADERS 32
#define MAX_MESSAGES 8

static void check_slice(const char *p, size_t n, const char *buf, size_t len)
{
    if (p != NULL && (p < buf || p + n > buf + len))
        __builtin_trap();
}

static void check_request(const struct h1_request *req, const char *buf, size_t len)
{
    for (size_t i = 0; i < req->nheaders; i++) {
        check_slice(req->headers[i].name, req->headers[i].name_len, buf, len);
        check_slice(req->headers[i].value, req->headers[i].value_len, buf, len);
    }
    check_slice(req->target, req->target_len, buf, len);
    check_slice(req->query, req->query_len, buf, len);
    check_slice(req->host, req->host_len, buf, len);
    if (!(req->path_len == 1 && req->path[0] == '/'))
        check_slice(req->path, req->path_len, buf, len);
    if (req->nheaders > req->max_headers)
        __builtin_trap();
}

static void normalize(const struct h1_request *req)
{
    char *out = malloc(req->path_len + 1);

    if (out == NULL)
        return;
    ssize_t n = uri_normalize_path(req->path, req->path_len, out, req->path_len + 1);
    if (n > (ssize_t)req->path_len)
        __builtin_trap();
    free(out);
}

/*
 * What a proxy forwards of a complete chunked body (FWD[0..N), trailer fields
 * cut out) must be a complete chunked body with no trailer field: framed by a
 * fresh parser, it ends exactly at N and nothing is cut.
 */
static void check_forwarded(const char *fwd, size_t n)
{
    static const char head[] = "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n";
    struct h1_header headers[MAX_HEADERS];
    struct h1_request req = {.headers = headers, .max_headers = MAX_HEADERS};
    struct h1_cut cut;
    size_t used;

    if (h1_parse_request(&req, head, sizeof(head) - 1, false) != H1_OK)
        __builtin_trap();
    if (h1_body_feed_cut(&req.parser, fwd, n, &used, &cut) != H1_BODY_DONE || used != n ||
        cut.len != 0)
        __builtin_trap();
}

/* The body of REQ from BUF[0..LEN) in pieces of PIECE, trailer fields cut
 * as the proxy cuts them. Returns bytes used, or -1. */
static ssize_t feed_body(struct h1_request *req, const char *buf, size_t len, size_t piece)
{
    char *fwd = malloc(len + 1);
    size_t off = 0, n = 0;
    ssize_t ret = -1;

    if (fwd == NULL)
        return -1;
    while (off < len) {
        size_t k = len - off < piece ? len - off : piece, used;
        struct h1_cut cut;
        enum h1_body_status st = h1_body_feed_cut(&req->parser, buf + off, k, &used, &cut);
        if (used > k || cut.off + cut.len > used)
            __builtin_trap();
        memcpy(fwd + n, buf + off, cut.off);
        n += cut.off;
        memcpy(fwd + n, buf + off + cut.off + cut.len, used - cut.off - cut.len);
        n += used - cut.off - cut.len;
        off += used;
        if (st == H1_BODY_DONE) {
            if (req->framing == H1_FRAMING_CHUNKED)
                check_forwarded(fwd, n);
            ret = (ssize_t)off;
            break;
        }
        if (st == H1_BODY_ERROR)
            break;
    }
    if (off >= len && ret < 0)
        h1_body_eof(&req->parser);
    free(fwd);
    return ret;
}

/* The same head read as a response, for the other half of the parser. */
static void parse_as_response(const char *buf, size_t len, bool head_request)
{
    struct h1_header headers[MAX_HEADERS];
    struct h1_response resp = {.headers = headers, .max_headers = MAX_HEADERS};

    if (h1_parse_response(&resp, buf, len, head_request) == H1_OK) {
        size_t used;
        h1_body_feed(&resp.parser, buf, 0, &used);
        h1_body_eof(&resp.parser);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct h1_header headers[MAX_HEADERS];
    const char *buf = (const char *)data;
    size_t piece = size ? (size_t)(data[0] % 7) + 1 : 1;
    bool underscores = size > 1 && (data[1] & 1);

    for (int m = 0; m < MAX_MESSAGES && size > 0; m++) {
        struct h1_request req = {.headers = headers, .max_headers = MAX_HEADERS};
        ssize_t head = h1_head_end(buf, size);
        if (head < 0) {
            /* the parser must hold on bytes the delimiter refused, too */
            h1_parse_request(&req, buf, size, underscores);
            return 0;
        }
        parse_as_response(buf, (size_t)head, underscores);
        if (h1_parse_request(&req, buf, (size_t)head, underscores) != H1_OK)
            return 0;
        check_request(&req, buf, (size_t)head);
        normalize(&req);
        ssize_t body = feed_body(&req, buf + head, size - (size_t)head, piece);
        if (body < 0)
            return 0;
        buf += (size_t)head + (size_t)body;
        size -= (size_t)head + (size_t)body;
    }
    return 0;
}
