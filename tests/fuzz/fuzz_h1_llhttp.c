/*
 * fuzz_h1_llhttp.c - differential fuzz target: flowgate's HTTP/1 parser
 * (gateway/h1.c) against llhttp, built in its strict mode (Debian's
 * node-llhttp, compiled by the Makefile for this target only). llhttp is not
 * in flowgate; here it is an independent reading of the same bytes, as
 * libjwt is for tokens in fuzz_jwt.c.
 *
 * Input: the first byte chooses what the rest is: bit 0 set, a response
 * (bit 1: to a HEAD request); clear, a request. The rest is one message,
 * head and body, possibly cut short or followed by other bytes.
 *
 * What "agree" means. flowgate may refuse what llhttp accepts (it is
 * stricter by design: bare LF, obs-fold, a Transfer-Encoding other than
 * chunked on a request, Host rules, ...); that is never a finding. When
 * flowgate accepts the head (h1_head_end, then h1_parse_request with every
 * header kept, or h1_parse_response; H1_EXPECTATION counts as accepted, its
 * fields are set), llhttp must
 *   - accept every byte flowgate accepted: no llhttp error at or before the
 *     last byte flowgate took as part of the message;
 *   - read the same head: method number and spelling, request-target, HTTP
 *     version, status code and reason phrase, and the header list in order,
 *     names byte for byte and values byte for byte once llhttp's value has
 *     its trailing whitespace (SP, HTAB) removed (flowgate trims it; RFC 9110
 *     5.5: OWS is not part of the value);
 *   - frame the body alike: chunked, Content-Length n (0 is the same as no
 *     body), until EOF, or none; a response to HEAD, a 1xx, 204 or 304 has
 *     no body whatever its headers say (RFC 9112 6.3 rule 1: llhttp leaves
 *     that to its user, so on_headers_complete here tells it "no body");
 *   - end the message at the same byte, or both not yet (flowgate reaches
 *     EOF-delimited ends through h1_body_eof, llhttp through llhttp_finish);
 *   - see the same payload: the bytes flowgate calls data
 *     (h1_body_in_data) are, in order, those llhttp hands to on_body.
 * Trailer fields are not compared (flowgate checks their grammar and cuts
 * them; fuzz_request checks the cut), and a Content-Length among them, which
 * strict llhttp refuses, is no finding: flowgate never forwards it (a
 * Transfer-Encoding there it refuses, as llhttp does).
 *
 * Two RFC rules make flowgate accept heads llhttp refuses, on purpose:
 * identical Content-Length values repeated or listed ("5, 5", RFC 9110 8.6)
 * are merged, and a response with both Transfer-Encoding and Content-Length
 * is framed by the Transfer-Encoding (RFC 9112 6.3, and flowgate closes the
 * connection after it). When llhttp refuses such a head (and only such a
 * head) with a Content-Length error, llhttp reads it again with
 * those lines replaced by the single line of flowgate's decision, and every
 * rule above applies to that reading (the framing lines themselves left out
 * of the header comparison).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <llhttp.h>

#include "h1.h"

#define MAX_HEADERS 64
#define MAX_INPUT 65536

#define CHECK(cond, what)                                                                          \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "fuzz_h1_llhttp: %s\n", what);                                         \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

/* The numbering configurations and logs rely on: flowgate's methods are
 * llhttp's, number for number. */
#define SAME_NUMBER(num, name, str) _Static_assert(H1_METHOD_##name == HTTP_##name, #name);
H1_METHOD_MAP(SAME_NUMBER)
#undef SAME_NUMBER

/* A growable copy of the spans llhttp reports. */
struct span {
    char *p;
    size_t len;
};

struct ll_header {
    struct span name, value;
};

/* What llhttp saw. */
struct ll_result {
    struct span method, url, status_text, body;
    struct ll_header headers[MAX_HEADERS];
    size_t nheaders;
    bool in_value;     /* the last span was a value (the next name is a new header) */
    bool overflow;     /* more than MAX_HEADERS header lines */
    bool head_done;    /* on_headers_complete ran */
    bool msg_done;     /* on_message_complete ran */
    bool head_request; /* responses: no body follows */
    int framing;       /* enum h1_framing, from the head */
    uint64_t content_length;
};

static void span_add(struct span *s, const char *at, size_t n)
{
    char *p = realloc(s->p, s->len + n + 1);

    CHECK(p != NULL, "out of memory");
    memcpy(p + s->len, at, n);
    s->p = p;
    s->len += n;
}

static void span_free(struct span *s)
{
    free(s->p);
    *s = (struct span){0};
}

static void ll_result_free(struct ll_result *r)
{
    span_free(&r->method);
    span_free(&r->url);
    span_free(&r->status_text);
    span_free(&r->body);
    for (size_t i = 0; i < r->nheaders; i++) {
        span_free(&r->headers[i].name);
        span_free(&r->headers[i].value);
    }
}

static struct ll_result *res(llhttp_t *p)
{
    return p->data;
}

static int on_method(llhttp_t *p, const char *at, size_t n)
{
    span_add(&res(p)->method, at, n);
    return 0;
}

static int on_url(llhttp_t *p, const char *at, size_t n)
{
    span_add(&res(p)->url, at, n);
    return 0;
}

static int on_status(llhttp_t *p, const char *at, size_t n)
{
    span_add(&res(p)->status_text, at, n);
    return 0;
}

/* Header lines of the head only: trailer fields come after head_done. */
static int on_header_field(llhttp_t *p, const char *at, size_t n)
{
    struct ll_result *r = res(p);

    if (r->head_done)
        return 0;
    if (r->in_value || r->nheaders == 0) {
        if (r->nheaders == MAX_HEADERS) {
            r->overflow = true;
            return 0;
        }
        r->nheaders++;
        r->in_value = false;
    }
    span_add(&r->headers[r->nheaders - 1].name, at, n);
    return 0;
}

static int on_header_value(llhttp_t *p, const char *at, size_t n)
{
    struct ll_result *r = res(p);

    if (r->head_done || r->overflow)
        return 0;
    r->in_value = true;
    span_add(&r->headers[r->nheaders - 1].value, at, n);
    return 0;
}

/* An empty value gets no on_header_value call: the next name still starts
 * a new header. */
static int on_header_value_complete(llhttp_t *p)
{
    res(p)->in_value = true;
    return 0;
}

static int on_headers_complete(llhttp_t *p)
{
    struct ll_result *r = res(p);
    bool no_body = p->type == HTTP_RESPONSE && (r->head_request || p->status_code < 200 ||
                                                p->status_code == 204 || p->status_code == 304);

    r->head_done = true;
    if (no_body)
        r->framing = H1_FRAMING_NONE;
    else if (p->flags & F_CHUNKED)
        r->framing = H1_FRAMING_CHUNKED;
    else if ((p->flags & F_CONTENT_LENGTH) && p->content_length > 0)
        r->framing = H1_FRAMING_LENGTH;
    else if (llhttp_message_needs_eof(p))
        r->framing = H1_FRAMING_EOF;
    else
        r->framing = H1_FRAMING_NONE;
    r->content_length = r->framing == H1_FRAMING_LENGTH ? p->content_length : 0;
    return no_body ? 1 : 0; /* llhttp leaves these to its user */
}

static int on_body(llhttp_t *p, const char *at, size_t n)
{
    span_add(&res(p)->body, at, n);
    return 0;
}

static int on_message_complete(llhttp_t *p)
{
    res(p)->msg_done = true;
    return HPE_PAUSED; /* stop at the message's last byte */
}

static const llhttp_settings_t settings = {
    .on_method = on_method,
    .on_url = on_url,
    .on_status = on_status,
    .on_header_field = on_header_field,
    .on_header_value = on_header_value,
    .on_header_value_complete = on_header_value_complete,
    .on_headers_complete = on_headers_complete,
    .on_body = on_body,
    .on_message_complete = on_message_complete,
};

/*
 * llhttp (P, initialised) over BUF[0..LEN), then EOF. Returns -1 when it
 * completed the message or ran out of bytes without an error, else the
 * offset of the byte it refused, its error in *ERR. *END is the message's
 * length when it completed.
 */
static ssize_t ll_run(llhttp_t *p, const char *buf, size_t len, size_t *end, int *err)
{
    struct ll_result *r = res(p);

    *err = llhttp_execute(p, buf, len);
    if (r->msg_done && (*err == HPE_PAUSED || *err == HPE_PAUSED_UPGRADE)) {
        *end = (size_t)(llhttp_get_error_pos(p) - buf);
        return -1;
    }
    if (*err == HPE_PAUSED_UPGRADE)
        return -1; /* stops after the head: nothing more is parsed */
    if (*err != HPE_OK)
        return llhttp_get_error_pos(p) - buf;
    if (r->head_done) {
        *err = llhttp_finish(p);
        if (*err != HPE_OK && *err != HPE_PAUSED)
            return (ssize_t)len;
        if (r->msg_done)
            *end = len;
    }
    return -1;
}

/* What flowgate saw of the message. */
struct fg_result {
    bool response;
    struct h1_request req;
    struct h1_response resp;
    struct h1_header headers[MAX_HEADERS];
    size_t head_len;
    ssize_t end;      /* message length; -1 not complete */
    size_t accepted;  /* bytes taken as part of the message */
    bool body_error;  /* flowgate refused a body byte (at offset accepted) */
    struct span body; /* the bytes h1_body_in_data called payload */
};

/* Feed the body one byte at a time, noting which bytes are payload. */
static void fg_body(struct fg_result *f, struct h1_parser *p, const char *buf, size_t len)
{
    size_t used;
    enum h1_body_status st = h1_body_feed(p, buf + f->head_len, 0, &used);

    f->accepted = f->head_len;
    f->end = -1;
    for (size_t i = f->head_len; i < len && st == H1_BODY_MORE; i++) {
        bool data = h1_body_in_data(p);
        st = h1_body_feed(p, buf + i, 1, &used);
        if (st == H1_BODY_ERROR)
            break;
        if (used == 1 && data)
            span_add(&f->body, buf + i, 1);
        f->accepted += used;
    }
    if (st == H1_BODY_MORE)
        st = h1_body_eof(p) == H1_BODY_DONE ? H1_BODY_DONE : H1_BODY_MORE;
    if (st == H1_BODY_DONE)
        f->end = (ssize_t)f->accepted;
    f->body_error = st == H1_BODY_ERROR;
}

/* Flowgate's reading; false when it refuses the head (nothing to compare). */
static bool fg_run(struct fg_result *f, const char *buf, size_t len, bool head_request)
{
    ssize_t head = h1_head_end(buf, len);

    if (head < 0)
        return false;
    f->head_len = (size_t)head;
    if (f->response) {
        f->resp = (struct h1_response){.headers = f->headers, .max_headers = MAX_HEADERS};
        if (h1_parse_response(&f->resp, buf, f->head_len, head_request) != H1_OK)
            return false;
        fg_body(f, &f->resp.parser, buf, len);
        return true;
    }
    f->req = (struct h1_request){.headers = f->headers, .max_headers = MAX_HEADERS};
    enum h1_status st = h1_parse_request(&f->req, buf, f->head_len, true);
    if (st != H1_OK && st != H1_EXPECTATION)
        return false;
    fg_body(f, &f->req.parser, buf, len);
    return true;
}

static bool span_is(const struct span *s, const char *p, size_t n)
{
    return s->len == n && (n == 0 || memcmp(s->p, p, n) == 0);
}

static bool is_framing_name(const char *n, size_t len)
{
    return h1_token_eq(n, len, "content-length") || h1_token_eq(n, len, "transfer-encoding");
}

/* The header lists, in order; REBUILT: framing lines left out on both sides. */
static void compare_headers(const struct fg_result *f, const struct ll_result *r, bool rebuilt)
{
    const struct h1_header *h = f->response ? f->resp.headers : f->req.headers;
    size_t n = f->response ? f->resp.nheaders : f->req.nheaders;
    size_t j = 0;

    CHECK(!r->overflow, "llhttp read more header lines than flowgate allows");
    for (size_t i = 0; i < n; i++) {
        if (rebuilt && is_framing_name(h[i].name, h[i].name_len))
            continue;
        while (rebuilt && j < r->nheaders &&
               is_framing_name(r->headers[j].name.p, r->headers[j].name.len))
            j++;
        CHECK(j < r->nheaders, "flowgate has a header llhttp does not");
        const struct ll_header *l = &r->headers[j++];
        size_t vlen = l->value.len;
        while (vlen > 0 && (l->value.p[vlen - 1] == ' ' || l->value.p[vlen - 1] == '\t'))
            vlen--;
        CHECK(span_is(&l->name, h[i].name, h[i].name_len), "header name differs");
        CHECK(vlen == h[i].value_len && (vlen == 0 || memcmp(l->value.p, h[i].value, vlen) == 0),
              "header value differs");
    }
    while (rebuilt && j < r->nheaders &&
           is_framing_name(r->headers[j].name.p, r->headers[j].name.len))
        j++;
    CHECK(j == r->nheaders, "llhttp has a header flowgate does not");
}

static void compare_head(const struct fg_result *f, const struct ll_result *r, const llhttp_t *p,
                         bool rebuilt)
{
    CHECK(r->head_done, "flowgate parsed a head llhttp did not finish");
    if (f->response) {
        CHECK(p->status_code == f->resp.status, "status code differs");
        CHECK(span_is(&r->status_text, f->resp.reason_phrase, f->resp.reason_len),
              "reason phrase differs");
        CHECK(p->http_major == 1 && p->http_minor == f->resp.version_minor, "version differs");
    } else {
        CHECK(p->method == f->req.method, "method number differs");
        CHECK(span_is(&r->method, f->req.method_str, f->req.method_len), "method differs");
        CHECK(span_is(&r->url, f->req.target, f->req.target_len), "request-target differs");
        CHECK(p->http_major == 1 && p->http_minor == f->req.version_minor, "version differs");
    }
    compare_headers(f, r, rebuilt);
}

static void compare_framing(const struct fg_result *f, const struct ll_result *r)
{
    enum h1_framing fr = f->response ? f->resp.framing : f->req.framing;
    uint64_t cl = f->response ? f->resp.content_length : f->req.content_length;

    if (fr == H1_FRAMING_LENGTH && cl == 0)
        fr = H1_FRAMING_NONE;
    CHECK((int)fr == r->framing, "framing differs");
    CHECK(fr != H1_FRAMING_LENGTH || cl == r->content_length, "Content-Length differs");
}

/*
 * The head with every Content-Length and Transfer-Encoding line replaced by
 * the one line of flowgate's framing decision, then the body bytes. Returns
 * the new head's length; *OUT is malloc'ed.
 */
static size_t rebuild(const struct fg_result *f, const char *buf, size_t len, char **out,
                      size_t *out_len)
{
    enum h1_framing fr = f->response ? f->resp.framing : f->req.framing;
    uint64_t cl = f->response ? f->resp.content_length : f->req.content_length;
    char *b = malloc(len + 64);
    size_t n = 0, pos = 0;

    CHECK(b != NULL, "out of memory");
    for (;;) {
        const char *eol = memmem(buf + pos, f->head_len - pos, "\r\n", 2);
        size_t end = (size_t)(eol - buf) + 2;
        const char *colon = memchr(buf + pos, ':', end - pos);
        if (end - pos == 2)
            break;
        if (pos == 0 || colon == NULL || !is_framing_name(buf + pos, (size_t)(colon - buf) - pos)) {
            memcpy(b + n, buf + pos, end - pos);
            n += end - pos;
        }
        pos = end;
    }
    if (fr == H1_FRAMING_CHUNKED)
        n += (size_t)sprintf(b + n, "Transfer-Encoding: chunked\r\n");
    else if (fr == H1_FRAMING_LENGTH)
        n += (size_t)sprintf(b + n, "Content-Length: %llu\r\n", (unsigned long long)cl);
    memcpy(b + n, "\r\n", 2);
    n += 2;
    size_t head = n;
    memcpy(b + n, buf + f->head_len, len - f->head_len);
    *out = b;
    *out_len = n + len - f->head_len;
    return head;
}

/*
 * Did llhttp refuse the head (error ERR) for one of the two RFC rules
 * flowgate follows and it does not: Content-Length given more than once (in
 * lines or in a list; flowgate merges identical values and refuses others),
 * or a response with both Transfer-Encoding and Content-Length?
 */
static bool merge_refusal(const struct fg_result *f, int err)
{
    const struct h1_header *h = f->response ? f->resp.headers : f->req.headers;
    size_t n = f->response ? f->resp.nheaders : f->req.nheaders;
    size_t ncl = 0;
    bool te = false;

    if (err != HPE_UNEXPECTED_CONTENT_LENGTH && err != HPE_INVALID_CONTENT_LENGTH)
        return false;
    for (size_t i = 0; i < n; i++) {
        if (h1_token_eq(h[i].name, h[i].name_len, "content-length"))
            ncl += memchr(h[i].value, ',', h[i].value_len) != NULL ? 2 : 1;
        te |= h1_token_eq(h[i].name, h[i].name_len, "transfer-encoding");
    }
    return ncl > 1 || (f->response && te && ncl > 0);
}

/*
 * llhttp's reading of BUF[0..LEN), held to flowgate's F. SHIFT maps
 * llhttp's offsets to flowgate's (the rebuilt head's length minus the
 * original's; 0 for the bytes as sent). Returns false when llhttp refused
 * the head for its framing lines alone (the caller then tries the rebuilt
 * head).
 */
static bool compare(const struct fg_result *f, const char *buf, size_t len, bool head_request,
                    bool rebuilt, ssize_t shift)
{
    struct ll_result r = {.head_request = head_request};
    ssize_t ll_head = (ssize_t)f->head_len + shift;
    llhttp_t p;
    size_t end = 0;
    int err;

    llhttp_init(&p, f->response ? HTTP_RESPONSE : HTTP_REQUEST, &settings);
    p.data = &r;
    ssize_t bad = ll_run(&p, buf, len, &end, &err);
    if (bad >= 0 && !r.head_done && !rebuilt && merge_refusal(f, err)) {
        ll_result_free(&r);
        return false;
    }
    if (bad >= 0 && r.head_done && r.framing == H1_FRAMING_CHUNKED &&
        (err == HPE_UNEXPECTED_CONTENT_LENGTH || err == HPE_INVALID_CONTENT_LENGTH)) {
        ll_result_free(&r); /* a Content-Length trailer field: flowgate cuts it */
        return true;
    }
    if (bad >= 0) {
        /* llhttp refused byte BAD: flowgate must have refused it too */
        CHECK(bad >= ll_head, "llhttp refused a head flowgate accepted");
        CHECK(bad - shift >= (ssize_t)f->accepted, "flowgate accepted a body byte llhttp refused");
        ll_result_free(&r);
        return true;
    }
    compare_head(f, &r, &p, rebuilt);
    compare_framing(f, &r);
    if (!f->body_error) {
        CHECK((f->end < 0) == !r.msg_done, "one parser ended the message, the other did not");
        CHECK(f->end < 0 || (ssize_t)end - shift == f->end, "the message ends elsewhere");
        CHECK(span_is(&r.body, f->body.p, f->body.len), "payload differs");
    }
    ll_result_free(&r);
    return true;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct fg_result f = {0};

    if (size < 1 || size > MAX_INPUT)
        return 0;
    f.response = data[0] & 1;
    bool head_request = f.response && (data[0] & 2);
    const char *buf = (const char *)data + 1;
    size_t len = size - 1;

    if (fg_run(&f, buf, len, head_request) && !compare(&f, buf, len, head_request, false, 0)) {
        char *b;
        size_t blen;
        size_t head = rebuild(&f, buf, len, &b, &blen);
        compare(&f, b, blen, head_request, true, (ssize_t)head - (ssize_t)f.head_len);
        free(b);
    }
    span_free(&f.body);
    return 0;
}
