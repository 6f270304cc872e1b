/*
 * h1.c - strict HTTP/1.1 heads and body framing on top of llhttp.
 *
 * Two readers look at every head. Our own line reader is the source of truth:
 * it splits the head into slices, enforces the rules of RFC 9112 and
 * flowgate's stricter ones (see the README), and decides the framing. llhttp then reads the same head as a
 * second opinion (method names, target and value characters) and keeps the
 * framing state for the body. The Content-Length and Transfer-Encoding lines
 * are not shown to llhttp as sent: it gets one framing line rebuilt from our
 * decision instead. That is how repeated identical Content-Length values are
 * merged (llhttp refuses any repeat), and it guarantees that the body is
 * framed exactly as the head was judged: the two parsers cannot disagree
 * about where a message ends.
 *
 * Parser states, as seen by h1_body_feed:
 *
 *   init --head ok--> paused in on_headers_complete --resume--> body
 *   body --on_message_complete (paused)--> msg_done
 *   any  --llhttp error--> error_state (sticky)
 *
 * Framing NONE marks msg_done at once; llhttp never sees a byte of it.
 */
#include "fmt.h"
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
    for (size_t k = 0; k < vlen; k++) {
        unsigned char c = (unsigned char)value[k];
        if ((c < 0x20 && c != '\t') || c == 0x7f) {
            f->reason = "control character in header value";
            return H1_BAD_REQUEST;
        }
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

/* Every Content-Length header merged into one value. 1: present, 0: absent, -1: conflict. */
static int merged_content_length(const struct h1_header *h, size_t n, uint64_t *out)
{
    bool have = false;

    for (size_t i = 0; i < n; i++) {
        uint64_t v = 0;
        if (!h1_token_eq(h[i].name, h[i].name_len, "content-length"))
            continue;
        if (parse_content_length(h[i].value, h[i].value_len, &v) < 0)
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

/* --- llhttp, the second reader and the body framer --------------------------------------- */

static int on_headers_complete(llhttp_t *llh)
{
    struct h1_parser *p = llh->data;

    p->head_done = true;
    return HPE_PAUSED; /* stop at the first body byte */
}

static int on_message_complete(llhttp_t *llh)
{
    struct h1_parser *p = llh->data;

    p->msg_done = true;
    return HPE_PAUSED; /* stop at the exact end: what follows is the next message */
}

static const llhttp_settings_t h1_llhttp_settings = {
    .on_headers_complete = on_headers_complete,
    .on_message_complete = on_message_complete,
};

/*
 * llhttp is given the shared static settings, not P->settings (kept as a
 * copy for debuggers), and h1_body_feed points llh.data at P before each
 * call: a request that is moved or copied between its head and its body
 * still frames correctly.
 */
static void parser_init(struct h1_parser *p, llhttp_type_t type, void *cur)
{
    memset(p, 0, sizeof(*p));
    p->settings = h1_llhttp_settings;
    llhttp_init(&p->llh, type, &h1_llhttp_settings);
    p->llh.data = p;
    p->cur = cur;
}

static bool is_framing_line(const char *line, size_t n)
{
    const char *colon = memchr(line, ':', n);
    size_t nlen = colon ? (size_t)(colon - line) : 0;

    return h1_token_eq(line, nlen, "content-length") ||
           h1_token_eq(line, nlen, "transfer-encoding");
}

static int feed_run(struct h1_parser *p, const char *buf, size_t len, const char **reason)
{
    llhttp_errno_t err = llhttp_execute(&p->llh, buf, len);

    if (err == HPE_OK)
        return 0;
    p->error_state = (int)err;
    *reason = llhttp_get_error_reason(&p->llh);
    if (*reason == NULL)
        *reason = llhttp_errno_name(err);
    return -1;
}

/*
 * Show the head BUF[0..LEN) (already checked by our reader) to llhttp, with
 * every Content-Length and Transfer-Encoding line replaced by FRAMING (one
 * rebuilt line, or "" for none). On success llhttp stands at the first body
 * byte, unpaused.
 */
static int feed_head(struct h1_parser *p, const char *buf, size_t len, const char *framing,
                     const char **reason)
{
    size_t run = 0, pos = (size_t)line_end(buf, len, 0) + 2;

    for (;;) {
        size_t end = (size_t)line_end(buf, len, pos);
        if (end == pos)
            break;
        if (is_framing_line(buf + pos, end - pos)) {
            if (pos > run && feed_run(p, buf + run, pos - run, reason) < 0)
                return -1;
            run = end + 2;
        }
        pos = end + 2;
    }
    if ((pos > run && feed_run(p, buf + run, pos - run, reason) < 0) ||
        feed_run(p, framing, strlen(framing), reason) < 0)
        return -1;
    llhttp_errno_t err = llhttp_execute(&p->llh, buf + pos, 2);
    if (err != HPE_PAUSED || !p->head_done || llhttp_get_error_pos(&p->llh) != buf + len) {
        p->error_state = err == HPE_OK ? HPE_INTERNAL : (int)err;
        *reason = err == HPE_OK ? "head not complete" : llhttp_get_error_reason(&p->llh);
        if (*reason == NULL)
            *reason = llhttp_errno_name(err);
        return -1;
    }
    llhttp_resume(&p->llh);
    return 0;
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
    int cl = merged_content_length(req->headers, req->nheaders, &req->content_length);

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
    if (nte > 1 || !h1_token_eq(te->value, te->value_len, "chunked")) {
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

/* The single framing line llhttp is shown in place of the sender's. */
static const char *framing_line(enum h1_framing f, uint64_t cl, char *tmp, size_t cap)
{
    if (f == H1_FRAMING_CHUNKED)
        return "Transfer-Encoding: chunked\r\n";
    if (f == H1_FRAMING_LENGTH && cap >= sizeof("Content-Length: \r\n") + FMT_U64_MAX) {
        size_t n = sizeof("Content-Length: ") - 1;
        memcpy(tmp, "Content-Length: ", n);
        n += fmt_u64(tmp + n, cl);
        memcpy(tmp + n, "\r\n", 3);
        return tmp;
    }
    return "";
}

enum h1_status h1_parse_request(struct h1_request *req, const char *buf, size_t len,
                                bool underscores)
{
    struct h1_fields f = {req->headers, req->max_headers, 0, underscores, NULL};
    struct h1_header *headers = req->headers;
    size_t max_headers = req->max_headers;
    char tmp[64];
    enum h1_status st;

    memset(req, 0, sizeof(*req));
    req->headers = headers;
    req->max_headers = max_headers;
    parser_init(&req->parser, HTTP_REQUEST, req);
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
    if (feed_head(&req->parser, buf, len,
                  framing_line(req->framing, req->content_length, tmp, sizeof(tmp)),
                  &req->reason) < 0)
        return H1_BAD_REQUEST;
    req->method = llhttp_get_method(&req->parser.llh);
    req->parser.framing = (uint8_t)req->framing;
    req->parser.msg_done = req->framing == H1_FRAMING_NONE;
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

/*
 * RFC 9112 6.3, in its order: no body for HEAD, 1xx, 204, 304; then
 * Transfer-Encoding (chunked last, else until close) which overrides
 * Content-Length (and then the connection must not be reused); then
 * Content-Length; then until close.
 */
static enum h1_status response_framing(struct h1_response *resp, bool head_request)
{
    bool te = h1_find(resp->headers, resp->nheaders, "transfer-encoding") != NULL;
    int cl = merged_content_length(resp->headers, resp->nheaders, &resp->content_length);
    bool reuse = true;

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
    char tmp[64];
    enum h1_status st;

    memset(resp, 0, sizeof(*resp));
    resp->headers = headers;
    resp->max_headers = max_headers;
    parser_init(&resp->parser, HTTP_RESPONSE, resp);
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
    if (feed_head(&resp->parser, buf, len,
                  framing_line(resp->framing, resp->content_length, tmp, sizeof(tmp)),
                  &resp->reason) < 0)
        return H1_BAD_REQUEST;
    resp->parser.framing = (uint8_t)resp->framing;
    resp->parser.msg_done = resp->framing == H1_FRAMING_NONE;
    return H1_OK;
}

/* --- bodies -------------------------------------------------------------------------------- */

/*
 * Our own reading of the chunked coding (RFC 9112 7.1), run over the same
 * bytes as llhttp, because llhttp 8.1 lets some of it go (a bare LF ends
 * the trailer section; in its loose build any two bytes end chunk data).
 *
 *   SIZE_START -hex-> SIZE -CR-> SIZE_LF -LF-> DATA -n bytes-> DATA_CR -> DATA_LF -> SIZE_START
 *                      |  \-; or WS-> EXT -CR-/       \-(size 0)-> TRAILER_START
 *   TRAILER_START -tchar-> TRAILER_NAME -:-> TRAILER_VALUE -CR-> TRAILER_LF -LF-> TRAILER_START
 *   TRAILER_START -CR-> FINAL_LF -LF-> DONE
 */
enum chunk_state {
    CS_SIZE_START = 0,
    CS_SIZE,
    CS_EXT,
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

/* One byte of a chunk-size line. Returns the next state, or -1. */
static int chunk_size_byte(struct h1_parser *p, char c)
{
    int d = hex_value(c);

    switch (p->chunk_state) {
    case CS_SIZE_START:
        if (d < 0)
            return -1;
        p->chunk_left = (uint64_t)d;
        return CS_SIZE;
    case CS_SIZE:
        if (d >= 0) {
            if (p->chunk_left > (UINT64_MAX >> 4))
                return -1;
            p->chunk_left = (p->chunk_left << 4) | (uint64_t)d;
            return CS_SIZE;
        }
        if (c == ';' || h1_is_ows(c))
            return CS_EXT;
        return c == '\r' ? CS_SIZE_LF : -1;
    case CS_EXT:
        if (c == '\r')
            return CS_SIZE_LF;
        return is_field_ctl((unsigned char)c) ? -1 : CS_EXT;
    default: /* CS_SIZE_LF */
        if (c != '\n')
            return -1;
        return p->chunk_left == 0 ? CS_TRAILER_START : CS_DATA;
    }
}

/* One byte of the trailer section. Returns the next state, or -1. */
static int chunk_trailer_byte(struct h1_parser *p, char c)
{
    unsigned char u = (unsigned char)c;

    switch (p->chunk_state) {
    case CS_TRAILER_START:
        if (c == '\r')
            return CS_FINAL_LF;
        return h1_is_tchar(u) ? CS_TRAILER_NAME : -1;
    case CS_TRAILER_NAME:
        if (c == ':')
            return CS_TRAILER_VALUE;
        return h1_is_tchar(u) ? CS_TRAILER_NAME : -1;
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
            size_t take = len - i < p->chunk_left ? len - i : (size_t)p->chunk_left;
            p->chunk_left -= take;
            i += take;
            if (p->chunk_left == 0)
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

enum h1_body_status h1_body_feed_cut(struct h1_parser *p, const char *buf, size_t len, size_t *used,
                                     struct h1_cut *cut)
{
    bool chunked = p->framing == H1_FRAMING_CHUNKED;
    size_t n = len;

    *used = 0;
    if (cut != NULL)
        *cut = (struct h1_cut){0, 0};
    if (p->msg_done)
        return H1_BODY_DONE;
    if (p->error_state != 0)
        return H1_BODY_ERROR;
    if (len == 0)
        buf = "";
    if (chunked) {
        ssize_t r = chunk_scan(p, buf, len, cut);
        if (r < 0) {
            p->error_state = HPE_INVALID_CHUNK_SIZE;
            if (cut != NULL)
                *cut = (struct h1_cut){0, 0};
            return H1_BODY_ERROR;
        }
        n = (size_t)r;
    }
    p->llh.data = p;
    llhttp_errno_t err = llhttp_execute(&p->llh, buf, n);
    bool we_done = chunked && p->chunk_state == CS_DONE;
    if (err == HPE_OK && !we_done) {
        *used = n;
        return H1_BODY_MORE;
    }
    if ((err == HPE_PAUSED || err == HPE_PAUSED_UPGRADE) && p->msg_done) {
        *used = (size_t)(llhttp_get_error_pos(&p->llh) - buf);
        /* both readers must end the message at the same byte */
        if (!chunked || (we_done && *used == n))
            return H1_BODY_DONE;
        p->msg_done = false;
    }
    p->error_state = err == HPE_OK || err == HPE_PAUSED ? HPE_INTERNAL : (int)err;
    *used = 0;
    if (cut != NULL)
        *cut = (struct h1_cut){0, 0};
    return H1_BODY_ERROR;
}

enum h1_body_status h1_body_eof(struct h1_parser *p)
{
    size_t used;

    /* Step llhttp past states that need no input (into "read until close"). */
    if (h1_body_feed(p, "", 0, &used) != H1_BODY_MORE)
        return p->msg_done ? H1_BODY_DONE : H1_BODY_ERROR;
    llhttp_errno_t err = llhttp_finish(&p->llh);
    if (err != HPE_OK && err != HPE_PAUSED) {
        p->error_state = (int)err;
        return H1_BODY_ERROR;
    }
    return p->msg_done ? H1_BODY_DONE : H1_BODY_ERROR;
}
