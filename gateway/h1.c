/*
 * h1.c - strict HTTP/1.1 heads and body framing.
 *
 * One reader: the head is delimited by a byte scan (h1_head_end), split into
 * slices line by line, and judged by the rules of RFC 9112 and flowgate's
 * stricter ones (see the README); the framing it decides is the framing the
 * body is read with, by the same h1_parser, so there is no second opinion to
 * disagree with. llhttp reads the same bytes in tests/fuzz/fuzz_h1_llhttp.c
 * instead, where any message flowgate accepts differently is a crash.
 *
 * Body framing, as seen by h1_body_feed:
 *
 *   NONE, LENGTH 0 ----------------------------------> msg_done
 *   LENGTH n  --n bytes-->                             msg_done
 *   CHUNKED   --chunk_scan reaches CS_DONE-->          msg_done
 *   EOF       --h1_body_eof-->                         msg_done
 *   any       --framing error--> error_state (sticky)
 */
#include "h1.h"

#include <stdio.h>
#include <string.h>

/* RFC 9110 5.6.2: tchar. */
static const unsigned char tchar_map[256] = {
    ['!'] = 1, ['#'] = 1, ['$'] = 1, ['%'] = 1, ['&'] = 1, ['\''] = 1, ['*'] = 1, ['+'] = 1,
    ['-'] = 1, ['.'] = 1, ['^'] = 1, ['_'] = 1, ['`'] = 1, ['|'] = 1,  ['~'] = 1, ['0'] = 1,
    ['1'] = 1, ['2'] = 1, ['3'] = 1, ['4'] = 1, ['5'] = 1, ['6'] = 1,  ['7'] = 1, ['8'] = 1,
    ['9'] = 1, ['A'] = 1, ['B'] = 1, ['C'] = 1, ['D'] = 1, ['E'] = 1,  ['F'] = 1, ['G'] = 1,
    ['H'] = 1, ['I'] = 1, ['J'] = 1, ['K'] = 1, ['L'] = 1, ['M'] = 1,  ['N'] = 1, ['O'] = 1,
    ['P'] = 1, ['Q'] = 1, ['R'] = 1, ['S'] = 1, ['T'] = 1, ['U'] = 1,  ['V'] = 1, ['W'] = 1,
    ['X'] = 1, ['Y'] = 1, ['Z'] = 1, ['a'] = 1, ['b'] = 1, ['c'] = 1,  ['d'] = 1, ['e'] = 1,
    ['f'] = 1, ['g'] = 1, ['h'] = 1, ['i'] = 1, ['j'] = 1, ['k'] = 1,  ['l'] = 1, ['m'] = 1,
    ['n'] = 1, ['o'] = 1, ['p'] = 1, ['q'] = 1, ['r'] = 1, ['s'] = 1,  ['t'] = 1, ['u'] = 1,
    ['v'] = 1, ['w'] = 1, ['x'] = 1, ['y'] = 1, ['z'] = 1,
};

bool h1_is_tchar(unsigned char c)
{
    return tchar_map[c] != 0;
}

bool h1_is_token(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!h1_is_tchar((unsigned char)s[i]))
            return false;
    return n > 0;
}

static char ascii_lower(char c)
{
    return (c >= 'A' && c <= 'Z') ? (char)(c + ('a' - 'A')) : c;
}

static bool is_digit(char c)
{
    return c >= '0' && c <= '9';
}

void h1_trim_ows(const char **v, size_t *n)
{
    while (*n > 0 && h1_is_ows((*v)[0])) {
        (*v)++;
        (*n)--;
    }
    while (*n > 0 && h1_is_ows((*v)[*n - 1]))
        (*n)--;
}

const char *h1_status_str(enum h1_status st)
{
    switch (st) {
    case H1_OK: return "ok";
    case H1_BAD_REQUEST: return "bad_request";
    case H1_HEAD_TOO_LARGE: return "head_too_large";
    case H1_UNSUPPORTED: return "unsupported";
    case H1_EXPECTATION: return "expectation";
    }
    return "unknown";
}

bool h1_token_eq_n(const char *a, size_t alen, const char *b, size_t blen)
{
    if (alen != blen)
        return false;
    for (size_t i = 0; i < alen; i++) {
        if (ascii_lower(a[i]) != ascii_lower(b[i]))
            return false;
    }
    return true;
}

const struct h1_header *h1_find_n(const struct h1_header *h, size_t n, const char *name,
                                  size_t name_len)
{
    for (size_t i = 0; i < n; i++) {
        if (h[i].name_len == name_len && h1_token_eq_n(h[i].name, h[i].name_len, name, name_len))
            return &h[i];
    }
    return NULL;
}

bool h1_list_has(const char *value, size_t len, const char *token)
{
    size_t start = 0;

    for (size_t i = 0; i <= len; i++) {
        if (i < len && value[i] != ',')
            continue;
        const char *elem = value + start;
        size_t elen = i - start;
        h1_trim_ows(&elem, &elen);
        if (h1_token_eq(elem, elen, token))
            return true;
        start = i + 1;
    }
    return false;
}

/* RFC 6455 4.1 / RFC 9110 7.8: a GET over HTTP/1.1 without a body, with
 * Connection: upgrade (h->upgrade) and Upgrade listing websocket. */
bool h1_is_websocket(const struct h1_request *h)
{
    const struct h1_header *up;

    if (!h->upgrade || h->method != H1_METHOD_GET || h->version_minor != 1 ||
        h->framing != H1_FRAMING_NONE)
        return false;
    up = h1_find(h->headers, h->nheaders, "Upgrade");
    return up != NULL && h1_list_has(up->value, up->value_len, "websocket");
}

/*
 * RFC 9112 2.2: lines end in CRLF only. A bare LF or a CR not followed by LF
 * is refused rather than repaired, as is NUL; a line that starts with
 * whitespace is obs-fold (5.2) or whitespace before the first header (2.2),
 * both refused by a security gateway.
 */
ssize_t h1_head_end(const char *buf, size_t len)
{
    size_t pos = 0;

    /* Line by line with memchr: the same verdicts as a byte-by-byte scan
     * (the first offending byte decides; running out of input is -2). */
    for (;;) {
        const char *nl = memchr(buf + pos, '\n', len - pos);
        size_t stop = nl ? (size_t)(nl - buf) : len; /* this line is [pos, stop) */
        const char *cr = memchr(buf + pos, '\r', stop - pos);

        if (memchr(buf + pos, '\0', stop - pos) != NULL)
            return -1;
        if (cr != NULL && (size_t)(cr - buf) + 1 < stop)
            return -1; /* a CR not followed by LF */
        if (nl == NULL)
            return -2;
        if (stop == 0 || buf[stop - 1] != '\r')
            return -1; /* a bare LF */
        if (stop == 1)
            return -1; /* leading empty line */
        if (stop + 1 == len)
            return -2;
        if (h1_is_ows(buf[stop + 1]))
            return -1;
        if (buf[stop + 1] == '\r') {
            if (stop + 2 == len)
                return -2;
            if (buf[stop + 2] != '\n')
                return -1;
            return (ssize_t)(stop + 3);
        }
        pos = stop + 1;
    }
}

/*
 * The end (index of the CR) of the line starting at POS, or -1 when the line
 * holds a NUL, a bare CR or LF, or runs past LEN without a CRLF.
 */
static ssize_t line_end(const char *buf, size_t len, size_t pos)
{
    if (pos >= len)
        return -1;
    const char *cr = memchr(buf + pos, '\r', len - pos);
    if (cr == NULL)
        return -1;
    size_t i = (size_t)(cr - buf);
    if (i + 1 >= len || buf[i + 1] != '\n')
        return -1;
    if (memchr(buf + pos, '\n', i - pos) != NULL || memchr(buf + pos, '\0', i - pos) != NULL)
        return -1;
    return (ssize_t)i;
}

/* The parts of the header block the framing rules need. */
struct h1_fields {
    struct h1_header *out; /* caller's array */
    size_t max;            /* its size; also the limit on header lines */
    size_t n;              /* entries kept */
    bool keep_underscores; /* false: names with '_' are dropped */
    const char *reason;    /* why the block was refused */
};

#define H1_ONES UINT64_C(0x0101010101010101)
#define H1_HIGHS UINT64_C(0x8080808080808080)

/*
 * Does V[0..N) hold a CTL other than HTAB (RFC 9110 5.5: no field value may)?
 * Eight bytes at a time: a word with no byte below 0x20 and none equal to
 * 0x7f (the classic "has a byte less than" and "has a zero byte" tests; a
 * byte of 0x80 or more is obs-text, allowed) needs no closer look, so a long
 * token value costs a few instructions per word rather than per byte.
 */
static bool has_ctl(const char *v, size_t n)
{
    size_t k = 0;

    for (; k + 8 <= n; k += 8) {
        uint64_t x, del;
        memcpy(&x, v + k, 8);
        del = x ^ (0x7f * H1_ONES);
        if ((((x - 0x20 * H1_ONES) & ~x) | ((del - H1_ONES) & ~del)) & H1_HIGHS)
            break; /* a suspect byte in this word: the byte loop decides */
    }
    for (; k < n; k++) {
        unsigned char c = (unsigned char)v[k];
        if ((c < 0x20 && c != '\t') || c == 0x7f)
            return true;
    }
    return false;
}

/*
 * One header line LINE[0..N): RFC 9112 5.1 field-line = field-name ":" OWS
 * field-value OWS. No whitespace before the colon (5.1: 400), a token name,
 * and a value free of CTLs other than HTAB (RFC 9110 5.5).
 */
static enum h1_status parse_field_line(struct h1_fields *f, const char *line, size_t n)
{
    size_t i = 0;

    while (i < n && h1_is_tchar((unsigned char)line[i]))
        i++;
    if (i == n) {
        f->reason = "header line without a colon";
        return H1_BAD_REQUEST;
    }
    if (line[i] != ':') {
        f->reason = h1_is_ows(line[i]) ? "whitespace before header colon"
                                       : "invalid character in header name";
        return H1_BAD_REQUEST;
    }
    if (i == 0) {
        f->reason = "empty header name";
        return H1_BAD_REQUEST;
    }
    const char *value = line + i + 1;
    size_t vlen = n - i - 1;
    if (has_ctl(value, vlen)) {
        f->reason = "control character in header value";
        return H1_BAD_REQUEST;
    }
    h1_trim_ows(&value, &vlen);
    if (!f->keep_underscores && memchr(line, '_', i) != NULL)
        return H1_OK; /* dropped, as nginx does: such names alias '-' ones upstream */
    f->out[f->n++] = (struct h1_header){line, i, value, vlen};
    return H1_OK;
}

/*
 * The header block from POS to the end of the head: every line parsed, the
 * final empty line exactly at LEN. More header lines than F->max (dropped
 * ones included): H1_HEAD_TOO_LARGE.
 */
static enum h1_status parse_fields(struct h1_fields *f, const char *buf, size_t len, size_t pos)
{
    size_t lines = 0;

    for (;;) {
        ssize_t end = line_end(buf, len, pos);
        if (end < 0) {
            f->reason = "malformed line ending in head";
            return H1_BAD_REQUEST;
        }
        if ((size_t)end == pos) {
            if ((size_t)end + 2 != len) {
                f->reason = "bytes after the end of the head";
                return H1_BAD_REQUEST;
            }
            return H1_OK;
        }
        if (h1_is_ows(buf[pos])) {
            f->reason = "obsolete line folding";
            return H1_BAD_REQUEST;
        }
        if (++lines > f->max) {
            f->reason = "too many headers";
            return H1_HEAD_TOO_LARGE;
        }
        enum h1_status st = parse_field_line(f, buf + pos, (size_t)end - pos);
        if (st != H1_OK)
            return st;
        pos = (size_t)end + 2;
    }
}

/*
 * One Content-Length value: 1*DIGIT, or a list of identical ones ("5, 5",
 * RFC 9110 8.6 allows merging). Returns 0 with *OUT set, -1 otherwise.
 */
static int parse_content_length(const char *v, size_t n, uint64_t *out)
{
    size_t start = 0;
    bool have = false;

    for (size_t i = 0; i <= n; i++) {
        if (i < n && v[i] != ',')
            continue;
        const char *elem = v + start;
        size_t elen = i - start;
        uint64_t x = 0;
        h1_trim_ows(&elem, &elen);
        if (elen == 0)
            return -1;
        for (size_t k = 0; k < elen; k++) {
            if (!is_digit(elem[k]) || x > (UINT64_MAX - 9) / 10)
                return -1;
            x = x * 10 + (uint64_t)(elem[k] - '0');
        }
        if (have && x != *out)
            return -1;
        *out = x;
        have = true;
        start = i + 1;
    }
    return 0;
}

/*
 * Does the whitespace after H's trimmed value (up to the line's CR) hold an
 * HTAB? llhttp keeps such a tab in a Content-Length or Transfer-Encoding
 * value ("chunked<HTAB>" is not chunked to it), so flowgate refuses those
 * rather than frame a message differently from a reader that trims less.
 */
static bool trailing_htab(const struct h1_header *h)
{
    for (const char *c = h->value + h->value_len; h1_is_ows(*c); c++) {
        if (*c == '\t')
            return true;
    }
    return false;
}

int h1_content_length(const struct h1_header *h, size_t n, uint64_t *out)
{
    bool have = false;

    for (size_t i = 0; i < n; i++) {
        uint64_t v = 0;
        if (!h1_token_eq(h[i].name, h[i].name_len, "content-length"))
            continue;
        if (trailing_htab(&h[i]) || parse_content_length(h[i].value, h[i].value_len, &v) < 0)
            return -1;
        if (have && v != *out)
            return -1;
        *out = v;
        have = true;
    }
    return have ? 1 : 0;
}

static size_t count_headers(const struct h1_header *h, size_t n, const char *name)
{
    size_t c = 0;

    for (size_t i = 0; i < n; i++)
        c += h1_token_eq(h[i].name, h[i].name_len, name);
    return c;
}

/* What the message's Connection headers say, in one pass. */
enum {
    H1_CONN_PRESENT = 1,
    H1_CONN_CLOSE = 2,
    H1_CONN_KEEP_ALIVE = 4,
    H1_CONN_UPGRADE = 8,
};

static unsigned connection_tokens(const struct h1_header *h, size_t n)
{
    unsigned t = 0;

    for (size_t i = 0; i < n; i++) {
        if (!h1_token_eq(h[i].name, h[i].name_len, "connection"))
            continue;
        t |= H1_CONN_PRESENT;
        if (h1_list_has(h[i].value, h[i].value_len, "close"))
            t |= H1_CONN_CLOSE;
        if (h1_list_has(h[i].value, h[i].value_len, "keep-alive"))
            t |= H1_CONN_KEEP_ALIVE;
        if (h1_list_has(h[i].value, h[i].value_len, "upgrade"))
            t |= H1_CONN_UPGRADE;
    }
    return t;
}

/* RFC 9110 7.6.1 / 9112 9.3: persistence per version and Connection. */
static bool keep_alive_of(int minor, unsigned conn_tokens)
{
    if (conn_tokens & H1_CONN_CLOSE)
        return false;
    return minor == 1 || (conn_tokens & H1_CONN_KEEP_ALIVE);
}

/* --- methods ------------------------------------------------------------------------------ */

static const char *const method_names[H1_METHOD_COUNT] = {
#define H1_METHOD_STR(num, name, str) [num] = str,
    H1_METHOD_MAP(H1_METHOD_STR)
#undef H1_METHOD_STR
};

const char *h1_method_name(int method)
{
    return method >= 0 && method < H1_METHOD_COUNT ? method_names[method] : NULL;
}

int h1_method_from_name(const char *name, size_t len)
{
    for (int m = 0; m < H1_METHOD_COUNT; m++) {
        if (strlen(method_names[m]) == len && memcmp(method_names[m], name, len) == 0)
            return m;
    }
    return -1;
}

/* The body of a head that parsed OK is read with the framing it decided. */
static void parser_start(struct h1_parser *p, enum h1_framing framing, uint64_t content_length)
{
    *p = (struct h1_parser){.framing = (uint8_t)framing};
    if (framing == H1_FRAMING_LENGTH)
        p->left = content_length;
    p->msg_done = framing == H1_FRAMING_NONE || (framing == H1_FRAMING_LENGTH && p->left == 0);
}

/* --- requests ------------------------------------------------------------------------------ */

/* Host and absolute-form authority: reg-name / IP-literal [":" port], no userinfo. */
static bool host_valid(const char *h, size_t n)
{
    if (n == 0)
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = h[i];
        if (!(is_digit(c) || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
              memchr("-._~:[]", c, 7) != NULL))
            return false;
    }
    return true;
}

static void split_query(struct h1_request *req, const char *p, size_t n)
{
    const char *q = memchr(p, '?', n);

    req->path = p;
    req->path_len = q ? (size_t)(q - p) : n;
    if (q) {
        req->query = q + 1;
        req->query_len = n - req->path_len - 1;
    }
}

/* RFC 9112 3.2.2: absolute-form; the authority becomes the host. */
static enum h1_status parse_absolute_form(struct h1_request *req, const char *t, size_t n)
{
    size_t skip = h1_token_eq(t, 7, "http://") ? 7 : 8;
    size_t a = skip;

    while (a < n && t[a] != '/' && t[a] != '?')
        a++;
    if (!host_valid(t + skip, a - skip)) {
        req->reason = "invalid authority in absolute-form target";
        return H1_BAD_REQUEST;
    }
    req->host = t + skip;
    req->host_len = a - skip;
    if (a == n || t[a] == '?') {
        /* empty path: "/" (RFC 9110 4.2.3) */
        split_query(req, t + a, n - a);
        req->path = "/";
        req->path_len = 1;
        return H1_OK;
    }
    split_query(req, t + a, n - a);
    return H1_OK;
}

/* RFC 9112 3.2: the four forms of request-target. */
static enum h1_status parse_target(struct h1_request *req)
{
    const char *t = req->target;
    size_t n = req->target_len;

    if (memchr(t, '#', n) != NULL) {
        req->reason = "fragment in request target";
        return H1_BAD_REQUEST;
    }
    if (h1_token_eq(req->method_str, req->method_len, "CONNECT")) {
        req->reason = "CONNECT is not supported";
        return H1_UNSUPPORTED;
    }
    if (t[0] == '/') {
        split_query(req, t, n);
        return H1_OK;
    }
    if (n == 1 && t[0] == '*') {
        if (!h1_token_eq(req->method_str, req->method_len, "OPTIONS")) {
            req->reason = "asterisk-form target without OPTIONS";
            return H1_BAD_REQUEST;
        }
        req->path = t;
        req->path_len = 1;
        return H1_OK;
    }
    if ((n > 7 && h1_token_eq(t, 7, "http://")) || (n > 8 && h1_token_eq(t, 8, "https://")))
        return parse_absolute_form(req, t, n);
    req->reason = "invalid request target";
    return H1_BAD_REQUEST;
}

/* "HTTP/" DIGIT "." DIGIT (RFC 9112 2.3); only 1.0 and 1.1 are spoken. */
static enum h1_status parse_version(const char *v, size_t n, int *minor, const char **reason)
{
    if (n != 8 || memcmp(v, "HTTP/", 5) != 0 || !is_digit(v[5]) || v[6] != '.' || !is_digit(v[7])) {
        *reason = "malformed HTTP version";
        return H1_BAD_REQUEST;
    }
    if (v[5] != '1' || (v[7] != '0' && v[7] != '1')) {
        *reason = "unsupported HTTP version";
        return H1_UNSUPPORTED;
    }
    *minor = v[7] - '0';
    return H1_OK;
}

/* RFC 9112 3: request-line = method SP request-target SP HTTP-version, single spaces. */
static enum h1_status parse_request_line(struct h1_request *req, const char *line, size_t n)
{
    size_t i = 0, t;

    while (i < n && h1_is_tchar((unsigned char)line[i]))
        i++;
    if (i == 0 || i == n || line[i] != ' ') {
        req->reason = "malformed method";
        return H1_BAD_REQUEST;
    }
    req->method_str = line;
    req->method_len = i;
    t = ++i;
    while (i < n && (unsigned char)line[i] > 0x20 && (unsigned char)line[i] < 0x7f)
        i++;
    if (i == t || i == n || line[i] != ' ') {
        req->reason = "malformed request target";
        return H1_BAD_REQUEST;
    }
    req->target = line + t;
    req->target_len = i - t;
    i++;
    enum h1_status st = parse_version(line + i, n - i, &req->version_minor, &req->reason);
    if (st != H1_OK)
        return st;
    return parse_target(req);
}

/* RFC 9112 3.2: exactly one Host on 1.1, agreeing with an absolute-form authority. */
static enum h1_status check_host(struct h1_request *req)
{
    size_t n = count_headers(req->headers, req->nheaders, "host");
    const struct h1_header *h = h1_find(req->headers, req->nheaders, "host");

    if (n > 1) {
        req->reason = "more than one Host";
        return H1_BAD_REQUEST;
    }
    if (h == NULL) {
        if (req->version_minor == 1) {
            req->reason = "missing Host";
            return H1_BAD_REQUEST;
        }
        return H1_OK;
    }
    if (!host_valid(h->value, h->value_len)) {
        req->reason = "invalid Host";
        return H1_BAD_REQUEST;
    }
    if (req->host != NULL && !h1_token_eq_n(req->host, req->host_len, h->value, h->value_len)) {
        req->reason = "Host disagrees with absolute-form target";
        return H1_BAD_REQUEST;
    }
    req->host = h->value;
    req->host_len = h->value_len;
    return H1_OK;
}

/*
 * RFC 9112 6.1-6.3 for requests, stricter: Transfer-Encoding must be exactly
 * one "chunked" on HTTP/1.1 and never with Content-Length; Content-Length
 * repeats must agree.
 */
static enum h1_status request_framing(struct h1_request *req)
{
    size_t nte = count_headers(req->headers, req->nheaders, "transfer-encoding");
    int cl = h1_content_length(req->headers, req->nheaders, &req->content_length);

    if (cl < 0) {
        req->reason = "invalid Content-Length";
        return H1_BAD_REQUEST;
    }
    if (nte == 0) {
        req->framing = cl ? H1_FRAMING_LENGTH : H1_FRAMING_NONE;
        return H1_OK;
    }
    const struct h1_header *te = h1_find(req->headers, req->nheaders, "transfer-encoding");
    if (cl) {
        req->reason = "both Content-Length and Transfer-Encoding";
        return H1_BAD_REQUEST;
    }
    if (nte > 1 || !h1_token_eq(te->value, te->value_len, "chunked") || trailing_htab(te)) {
        req->reason = "Transfer-Encoding other than chunked";
        return H1_BAD_REQUEST;
    }
    if (req->version_minor == 0) {
        req->reason = "Transfer-Encoding on HTTP/1.0";
        return H1_BAD_REQUEST;
    }
    req->framing = H1_FRAMING_CHUNKED;
    return H1_OK;
}

/*
 * RFC 9110 10.1.1. Only 100-continue is implemented: any other expectation
 * (a list holding one included) is H1_EXPECTATION, answered 417. The other
 * fields are still filled in, so the engine knows whether a body follows.
 * 100-continue from an HTTP/1.0 client is ignored, as 10.1.1 requires.
 */
static enum h1_status request_options(struct h1_request *req)
{
    const struct h1_header *h = req->headers;
    size_t n = req->nheaders;
    enum h1_status st = H1_OK;

    for (size_t i = 0; i < n; i++) {
        if (!h1_token_eq(h[i].name, h[i].name_len, "expect"))
            continue;
        if (!h1_token_eq(h[i].value, h[i].value_len, "100-continue")) {
            req->reason = "unsupported expectation";
            st = H1_EXPECTATION;
        }
        req->expect_continue = req->version_minor == 1;
    }
    if (st != H1_OK)
        req->expect_continue = false;
    unsigned ct = connection_tokens(h, n);
    req->connection = ct & H1_CONN_PRESENT;
    req->keep_alive = keep_alive_of(req->version_minor, ct);
    req->upgrade = (ct & H1_CONN_UPGRADE) && h1_find(h, n, "upgrade") != NULL;
    return st;
}

enum h1_status h1_parse_request(struct h1_request *req, const char *buf, size_t len,
                                bool underscores)
{
    struct h1_fields f = {req->headers, req->max_headers, 0, underscores, NULL};
    struct h1_header *headers = req->headers;
    size_t max_headers = req->max_headers;
    enum h1_status st;

    memset(req, 0, sizeof(*req));
    req->headers = headers;
    req->max_headers = max_headers;
    req->parser.error_state = 1; /* until the head is known good */
    ssize_t eol = line_end(buf, len, 0);
    if (eol <= 0) {
        req->reason = "malformed request line";
        return H1_BAD_REQUEST;
    }
    st = parse_request_line(req, buf, (size_t)eol);
    if (st != H1_OK)
        return st;
    st = parse_fields(&f, buf, len, (size_t)eol + 2);
    req->nheaders = f.n;
    if (st != H1_OK) {
        req->reason = f.reason;
        return st;
    }
    if ((st = check_host(req)) != H1_OK || (st = request_framing(req)) != H1_OK)
        return st;
    /* An unmet expectation is reported only once the rest of the head is
     * known to be well formed: a malformed head is a 400 whatever it expects. */
    enum h1_status expect = request_options(req);
    req->method = h1_method_from_name(req->method_str, req->method_len);
    if (req->method < 0) {
        req->reason = "unknown method";
        return H1_BAD_REQUEST;
    }
    parser_start(&req->parser, req->framing, req->content_length);
    return expect;
}

/* --- responses ----------------------------------------------------------------------------- */

/* RFC 9112 4: HTTP-version SP 3DIGIT SP [reason]; the last SP is often missing. */
static enum h1_status parse_status_line(struct h1_response *resp, const char *line, size_t n)
{
    if (n < 12 || line[8] != ' ' ||
        parse_version(line, 8, &resp->version_minor, &resp->reason) != H1_OK ||
        !is_digit(line[9]) || !is_digit(line[10]) || !is_digit(line[11]) ||
        (n > 12 && line[12] != ' ')) {
        resp->reason = "malformed status line";
        return H1_BAD_REQUEST;
    }
    resp->status = (line[9] - '0') * 100 + (line[10] - '0') * 10 + (line[11] - '0');
    if (resp->status < 100 || resp->status > 599) {
        resp->reason = "invalid status code";
        return H1_BAD_REQUEST;
    }
    resp->reason_phrase = n > 12 ? line + 13 : line + n;
    resp->reason_len = n > 12 ? n - 13 : 0;
    for (size_t i = 0; i < resp->reason_len; i++) {
        unsigned char c = (unsigned char)resp->reason_phrase[i];
        if ((c < 0x20 && c != '\t') || c == 0x7f) {
            resp->reason = "control character in reason phrase";
            return H1_BAD_REQUEST;
        }
    }
    return H1_OK;
}

/* The final coding of every Transfer-Encoding list, in order: is it chunked? */
static bool final_coding_chunked(const struct h1_header *h, size_t n)
{
    const struct h1_header *last = NULL;

    for (size_t i = 0; i < n; i++) {
        if (h1_token_eq(h[i].name, h[i].name_len, "transfer-encoding"))
            last = &h[i];
    }
    const char *comma = last->value + last->value_len;
    while (comma > last->value && comma[-1] != ',')
        comma--;
    const char *v = comma;
    size_t vlen = (size_t)(last->value + last->value_len - comma);
    h1_trim_ows(&v, &vlen);
    return h1_token_eq(v, vlen, "chunked");
}

/* Is there a Transfer-Encoding field readers disagree on: empty (llhttp
 * ignores the field, RFC 9112 6.3 would read until close) or followed by an
 * HTAB (see trailing_htab)? */
static bool ambiguous_transfer_encoding(const struct h1_header *h, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (h1_token_eq(h[i].name, h[i].name_len, "transfer-encoding") &&
            (h[i].value_len == 0 || trailing_htab(&h[i])))
            return true;
    }
    return false;
}

/*
 * RFC 9112 6.3, in its order: no body for HEAD, 1xx, 204, 304; then
 * Transfer-Encoding (chunked last, else until close) which overrides
 * Content-Length (and then the connection must not be reused); then
 * Content-Length; then until close. An ambiguous Transfer-Encoding is refused.
 */
static enum h1_status response_framing(struct h1_response *resp, bool head_request)
{
    bool te = h1_find(resp->headers, resp->nheaders, "transfer-encoding") != NULL;
    int cl = h1_content_length(resp->headers, resp->nheaders, &resp->content_length);
    bool reuse = true;

    if (te && ambiguous_transfer_encoding(resp->headers, resp->nheaders)) {
        resp->reason = "ambiguous Transfer-Encoding";
        return H1_BAD_REQUEST;
    }
    if (cl < 0 && !te) {
        resp->reason = "invalid Content-Length";
        return H1_BAD_REQUEST;
    }
    if (head_request || resp->status < 200 || resp->status == 204 || resp->status == 304) {
        resp->framing = H1_FRAMING_NONE;
        resp->content_length = 0;
    } else if (te) {
        resp->framing = final_coding_chunked(resp->headers, resp->nheaders) ? H1_FRAMING_CHUNKED
                                                                            : H1_FRAMING_EOF;
        resp->content_length = 0;
        /* RFC 9112 6.1, 6.3: faulty framing, close after this response */
        reuse = cl == 0 && resp->version_minor == 1;
    } else {
        resp->framing = cl ? H1_FRAMING_LENGTH : H1_FRAMING_EOF;
    }
    unsigned ct = connection_tokens(resp->headers, resp->nheaders);
    resp->connection = ct & H1_CONN_PRESENT;
    resp->keep_alive =
        reuse && resp->framing != H1_FRAMING_EOF && keep_alive_of(resp->version_minor, ct);
    return H1_OK;
}

enum h1_status h1_parse_response(struct h1_response *resp, const char *buf, size_t len,
                                 bool head_request)
{
    struct h1_fields f = {resp->headers, resp->max_headers, 0, true, NULL};
    struct h1_header *headers = resp->headers;
    size_t max_headers = resp->max_headers;
    enum h1_status st;

    memset(resp, 0, sizeof(*resp));
    resp->headers = headers;
    resp->max_headers = max_headers;
    resp->parser.error_state = 1; /* until the head is known good */
    ssize_t eol = line_end(buf, len, 0);
    if (eol <= 0 || parse_status_line(resp, buf, (size_t)eol) != H1_OK) {
        if (resp->reason == NULL)
            resp->reason = "malformed status line";
        return H1_BAD_REQUEST;
    }
    st = parse_fields(&f, buf, len, (size_t)eol + 2);
    resp->nheaders = f.n;
    if (st != H1_OK) {
        resp->reason = f.reason;
        return H1_BAD_REQUEST;
    }
    if (response_framing(resp, head_request) != H1_OK)
        return H1_BAD_REQUEST;
    parser_start(&resp->parser, resp->framing, resp->content_length);
    return H1_OK;
}

/* --- bodies -------------------------------------------------------------------------------- */

/*
 * The chunked coding (RFC 9112 7.1), one byte at a time so that a body may
 * arrive in any pieces. Stricter than llhttp 8.1 where that one lets some of
 * it go (a bare LF ends its trailer section; in its loose build any two bytes
 * end chunk data). A Transfer-Encoding trailer field is an error, as it is
 * for llhttp (RFC 9110 6.5.1 forbids framing fields there; a Content-Length
 * one is cut like any other trailer field).
 *
 *   SIZE_START -hex-> SIZE -CR-> SIZE_LF -LF-> DATA -n bytes-> DATA_CR -> DATA_LF -> SIZE_START
 *                      |                       \-(size 0)-> TRAILER_START
 *                      \-;-> EXT_NAME_START -tchar-> EXT_NAME -CR-> SIZE_LF
 *   EXT_NAME -=-> EXT_VALUE_START -tchar-> EXT_VALUE -CR-> SIZE_LF
 *                                  \-"-> EXT_QUOTED -"-> EXT_QUOTED_END -CR-> SIZE_LF
 *   (EXT_NAME, EXT_QUOTED_END -;-> EXT_NAME_START)
 *   TRAILER_START -tchar-> TRAILER_NAME -:-> TRAILER_VALUE -CR-> TRAILER_LF -LF-> TRAILER_START
 *   TRAILER_START -CR-> FINAL_LF -LF-> DONE
 *
 * Chunk extensions (7.1.1) are held to their grammar as strict llhttp holds
 * them: no whitespace around ";" or "=" (BWS is only for senders that must
 * be tolerated, and an edge gateway need not), a value is a token or a
 * quoted-string without quoted-pairs, and no extension follows one with a
 * token value (";a=b;c": llhttp 8.1 refuses it, so flowgate always has).
 */
enum chunk_state {
    CS_SIZE_START = 0,
    CS_SIZE,
    CS_EXT_NAME_START,
    CS_EXT_NAME,
    CS_EXT_VALUE_START,
    CS_EXT_VALUE,
    CS_EXT_QUOTED,
    CS_EXT_QUOTED_END,
    CS_SIZE_LF,
    CS_DATA,
    CS_DATA_CR,
    CS_DATA_LF,
    CS_TRAILER_START,
    CS_TRAILER_NAME,
    CS_TRAILER_VALUE,
    CS_TRAILER_LF,
    CS_FINAL_LF,
    CS_DONE,
};

static int hex_value(char c)
{
    if (is_digit(c))
        return c - '0';
    c = ascii_lower(c);
    return (c >= 'a' && c <= 'f') ? c - 'a' + 10 : -1;
}

static bool is_field_ctl(unsigned char c)
{
    return (c < 0x20 && c != '\t') || c == 0x7f;
}

/* RFC 9110 5.6.4 qdtext, less the backslash (no quoted-pair). */
static bool is_qdtext(unsigned char c)
{
    return c == '\t' || c == ' ' || c == 0x21 || (c >= 0x23 && c != '\\' && c != 0x7f);
}

/* One byte of a chunk extension. Returns the next state, or -1. */
static int chunk_ext_byte(struct h1_parser *p, char c)
{
    unsigned char u = (unsigned char)c;

    switch (p->chunk_state) {
    case CS_EXT_NAME_START: return h1_is_tchar(u) ? CS_EXT_NAME : -1;
    case CS_EXT_VALUE_START:
        if (c == '"')
            return CS_EXT_QUOTED;
        return h1_is_tchar(u) ? CS_EXT_VALUE : -1;
    case CS_EXT_QUOTED:
        if (c == '"')
            return CS_EXT_QUOTED_END;
        return is_qdtext(u) ? CS_EXT_QUOTED : -1;
    default: /* CS_EXT_NAME, CS_EXT_VALUE, CS_EXT_QUOTED_END */
        if (c == ';')
            return p->chunk_state == CS_EXT_VALUE ? -1 : CS_EXT_NAME_START;
        if (c == '\r')
            return CS_SIZE_LF;
        if (c == '=' && p->chunk_state == CS_EXT_NAME)
            return CS_EXT_VALUE_START;
        return p->chunk_state != CS_EXT_QUOTED_END && h1_is_tchar(u) ? p->chunk_state : -1;
    }
}

/* One byte of a chunk-size line. Returns the next state, or -1. */
static int chunk_size_byte(struct h1_parser *p, char c)
{
    int d = hex_value(c);

    switch (p->chunk_state) {
    case CS_SIZE_START:
        if (d < 0)
            return -1;
        p->left = (uint64_t)d;
        return CS_SIZE;
    case CS_SIZE:
        if (d >= 0) {
            if (p->left > (UINT64_MAX >> 4))
                return -1;
            p->left = (p->left << 4) | (uint64_t)d;
            return CS_SIZE;
        }
        if (c == ';')
            return CS_EXT_NAME_START;
        return c == '\r' ? CS_SIZE_LF : -1;
    case CS_SIZE_LF:
        if (c != '\n')
            return -1;
        return p->left == 0 ? CS_TRAILER_START : CS_DATA;
    default: return chunk_ext_byte(p, c);
    }
}

/* One more byte C of a trailer field name: does the name still spell
 * "transfer-encoding" so far? UINT8_MAX in P->te_match: it cannot. */
static void trailer_name_byte(struct h1_parser *p, char c)
{
    static const char te[] = "transfer-encoding";

    if (p->te_match < sizeof(te) - 1 && ascii_lower(c) == te[p->te_match])
        p->te_match++;
    else
        p->te_match = UINT8_MAX;
}

/* One byte of the trailer section. Returns the next state, or -1. */
static int chunk_trailer_byte(struct h1_parser *p, char c)
{
    unsigned char u = (unsigned char)c;

    switch (p->chunk_state) {
    case CS_TRAILER_START:
        if (c == '\r')
            return CS_FINAL_LF;
        if (!h1_is_tchar(u))
            return -1;
        p->te_match = 0;
        trailer_name_byte(p, c);
        return CS_TRAILER_NAME;
    case CS_TRAILER_NAME:
        if (c == ':')
            return p->te_match == sizeof("transfer-encoding") - 1 ? -1 : CS_TRAILER_VALUE;
        if (!h1_is_tchar(u))
            return -1;
        trailer_name_byte(p, c);
        return CS_TRAILER_NAME;
    case CS_TRAILER_VALUE:
        if (c == '\r')
            return CS_TRAILER_LF;
        return is_field_ctl(u) ? -1 : CS_TRAILER_VALUE;
    case CS_TRAILER_LF: return c == '\n' ? CS_TRAILER_START : -1;
    default: /* CS_FINAL_LF */ return c == '\n' ? CS_DONE : -1;
    }
}

/*
 * Is the byte C, read in the parser's current state, part of a trailer field
 * (RFC 9112 7.1.2)? The last-chunk line before them and the CRLF that ends
 * the section after them are not: a body forwarded without its trailer
 * fields keeps both, and stays a well-formed chunked body.
 */
static bool is_trailer_field_byte(const struct h1_parser *p, char c)
{
    switch (p->chunk_state) {
    case CS_TRAILER_START: return c != '\r';
    case CS_TRAILER_NAME:
    case CS_TRAILER_VALUE:
    case CS_TRAILER_LF: return true;
    default: return false;
    }
}

/* Add the byte at offset I to CUT. The fields come in one unbroken run per
 * call: the scanner only moves forward through the trailer section. */
static void cut_extend(struct h1_cut *cut, size_t i)
{
    if (cut->len == 0)
        cut->off = i;
    cut->len++;
}

/*
 * Check BUF[0..LEN) against the chunked coding. Returns how many bytes belong
 * to the message (all of LEN unless it ends inside), or -1 on a framing error.
 * CUT (may be NULL) is set to the run of those bytes that are trailer fields.
 */
static ssize_t chunk_scan(struct h1_parser *p, const char *buf, size_t len, struct h1_cut *cut)
{
    size_t i = 0;

    while (i < len && p->chunk_state != CS_DONE) {
        int next;
        if (p->chunk_state == CS_DATA) {
            size_t take = len - i < p->left ? len - i : (size_t)p->left;
            p->left -= take;
            i += take;
            if (p->left == 0)
                p->chunk_state = CS_DATA_CR;
            continue;
        }
        if (p->chunk_state == CS_DATA_CR)
            next = buf[i] == '\r' ? CS_DATA_LF : -1;
        else if (p->chunk_state == CS_DATA_LF)
            next = buf[i] == '\n' ? CS_SIZE_START : -1;
        else if (p->chunk_state < CS_DATA)
            next = chunk_size_byte(p, buf[i]);
        else
            next = chunk_trailer_byte(p, buf[i]);
        if (next < 0)
            return -1;
        if (cut != NULL && is_trailer_field_byte(p, buf[i]))
            cut_extend(cut, i);
        p->chunk_state = (uint8_t)next;
        i++;
    }
    return (ssize_t)i;
}

enum h1_body_status h1_body_feed(struct h1_parser *p, const char *buf, size_t len, size_t *used)
{
    return h1_body_feed_cut(p, buf, len, used, NULL);
}

/* Framing LENGTH: the next P->left bytes, then the message ends. */
static enum h1_body_status length_feed(struct h1_parser *p, size_t len, size_t *used)
{
    size_t take = len < p->left ? len : (size_t)p->left;

    p->left -= take;
    *used = take;
    if (p->left > 0)
        return H1_BODY_MORE;
    p->msg_done = true;
    return H1_BODY_DONE;
}

enum h1_body_status h1_body_feed_cut(struct h1_parser *p, const char *buf, size_t len, size_t *used,
                                     struct h1_cut *cut)
{
    *used = 0;
    if (cut != NULL)
        *cut = (struct h1_cut){0, 0};
    if (p->msg_done)
        return H1_BODY_DONE;
    if (p->error_state != 0)
        return H1_BODY_ERROR;
    switch (p->framing) {
    case H1_FRAMING_LENGTH: return length_feed(p, len, used);
    case H1_FRAMING_EOF: *used = len; return H1_BODY_MORE;
    case H1_FRAMING_CHUNKED: break;
    default: p->msg_done = true; return H1_BODY_DONE;
    }
    ssize_t r = chunk_scan(p, buf, len, cut);
    if (r < 0) {
        p->error_state = 1;
        if (cut != NULL)
            *cut = (struct h1_cut){0, 0};
        return H1_BODY_ERROR;
    }
    *used = (size_t)r;
    if (p->chunk_state != CS_DONE)
        return H1_BODY_MORE;
    p->msg_done = true;
    return H1_BODY_DONE;
}

enum h1_body_status h1_body_eof(struct h1_parser *p)
{
    if (p->msg_done)
        return H1_BODY_DONE;
    if (p->error_state == 0 && p->framing == H1_FRAMING_EOF) {
        p->msg_done = true;
        return H1_BODY_DONE;
    }
    p->error_state = 1;
    return H1_BODY_ERROR;
}

bool h1_body_in_data(const struct h1_parser *p)
{
    if (p->msg_done || p->error_state != 0)
        return false;
    return p->framing != H1_FRAMING_CHUNKED || p->chunk_state == CS_DATA;
}

/* Feed the framing bytes of a chunked body one by one, up to the next
 * payload byte or the message's end: they are a few per chunk. */
static enum h1_body_status framing_feed(struct h1_parser *p, const char *buf, size_t len,
                                        size_t *used)
{
    enum h1_body_status st = H1_BODY_MORE;
    size_t i = 0;

    while (i < len && st == H1_BODY_MORE && !h1_body_in_data(p)) {
        size_t u = 0;
        st = h1_body_feed(p, buf + i, 1, &u);
        i += u;
        if (u == 0)
            break;
    }
    *used = i;
    return st;
}

enum h1_body_status h1_body_feed_run(struct h1_parser *p, const char *buf, size_t len, size_t *used,
                                     bool *payload)
{
    *payload = h1_body_in_data(p);
    if (p->framing != H1_FRAMING_CHUNKED || p->msg_done || p->error_state != 0)
        return h1_body_feed(p, buf, len, used);
    if (!*payload)
        return framing_feed(p, buf, len, used);
    return h1_body_feed(p, buf, len < p->left ? len : (size_t)p->left, used);
}
