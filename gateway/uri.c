/*
 * uri.c - request-target path normalisation (RFC 3986 sections 2.3, 5.2.4).
 *
 * One pass over the input. Each segment is percent-decoded straight into the
 * output; when it then turns out to be "." or "..", it is taken back out.
 * Decoding happens before the dot-segment check on purpose: "%2e%2e" is ".."
 * to every upstream that decodes, so it must climb here too, and be refused
 * when it would climb above the root.
 *
 * A ';' anywhere in the path, raw or encoded, is refused rather than routed.
 * Servlet containers (Tomcat, Jetty) cut each segment at ';' and drop what
 * follows as path parameters (RFC 3986 3.3 leaves their meaning to the
 * scheme), so "/api;/x" is served as "/api/x" while flowgate would route it
 * by its first segment "api;", which is not "api": a weaker route could take
 * it. Routing on the parameter-free path instead would have to agree with
 * every upstream's idea of where a parameter ends; a 400 needs no agreement.
 * "%3B" goes too: Tomcat does not decode it into a delimiter, but a proxy or
 * framework further in that decodes first would.
 *
 * The output is never longer than the input (decoding shrinks, kept escapes
 * stay three bytes, dot segments vanish), but every write is bounded by the
 * caller's OUTCAP anyway: a segment is written before it is known to be a dot
 * segment, so OUTCAP is working space, and too little of it is -1, never an
 * overflow.
 */
#include <stdbool.h>

#include "uri.h"

struct uri_out {
    char *buf;  /* the caller's buffer */
    size_t len; /* bytes written so far */
    size_t cap; /* usable bytes: OUTCAP minus room for the NUL */
};

enum uri_seg {
    URI_SEG_NAME = 0,   /* an ordinary segment, kept */
    URI_SEG_DOT = 1,    /* "." : removed */
    URI_SEG_DOTDOT = 2, /* "..": removes the segment before it */
};

static int hex_value(unsigned char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* RFC 3986 2.3: the only characters whose escapes are equivalent to them. */
static bool is_unreserved(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           c == '-' || c == '.' || c == '_' || c == '~';
}

/*
 * A byte that may stand for itself in a path: visible ASCII, except '\'
 * (some upstreams read it as '/'), '%' (only as the start of an escape),
 * '?' and '#': an upstream would end the path there, after routing had seen
 * the whole of it, so "/admin#/x" could reach "/admin" through another route;
 * and ';', where a servlet container ends the segment (see the top).
 */
static bool is_path_byte(unsigned char c)
{
    return c >= 0x21 && c < 0x7f && c != '\\' && c != '%' && c != '?' && c != '#' && c != ';';
}

static int out_put(struct uri_out *o, char c)
{
    if (o->len >= o->cap)
        return -1;
    o->buf[o->len++] = c;
    return 0;
}

/* Write one escape: decoded when unreserved, else kept with uppercase hex.
 * Refused: the escapes of '/', '\' and NUL, which upstreams that decode
 * would read as a separator or a string's end, and of ';' (see the top). */
static int put_escape(struct uri_out *o, int hi, int lo)
{
    static const char hex[] = "0123456789ABCDEF";
    unsigned char c = (unsigned char)(hi << 4 | lo);

    if (c == '/' || c == '\\' || c == '\0' || c == ';')
        return -1;
    if (is_unreserved(c))
        return out_put(o, (char)c);
    if (out_put(o, '%') == -1 || out_put(o, hex[hi]) == -1 || out_put(o, hex[lo]) == -1)
        return -1;
    return 0;
}

/*
 * Decode the segment that starts at IN[I] into O. Returns the index of the
 * '/' that ends it (or LEN), or -1 for a refused byte or malformed escape.
 */
static ssize_t copy_segment(const char *in, size_t len, size_t i, struct uri_out *o)
{
    while (i < len && in[i] != '/') {
        unsigned char c = (unsigned char)in[i];

        if (c != '%') {
            if (!is_path_byte(c) || out_put(o, (char)c) == -1)
                return -1;
            i++;
            continue;
        }
        if (len - i < 3)
            return -1;
        int hi = hex_value((unsigned char)in[i + 1]);
        int lo = hex_value((unsigned char)in[i + 2]);
        if (hi < 0 || lo < 0 || put_escape(o, hi, lo) == -1)
            return -1;
        i += 3;
    }
    return (ssize_t)i;
}

/* Classify a decoded segment (which holds no ';': copy_segment refused it,
 * so "/public/..;/admin" never gets here to pass as a name). */
static enum uri_seg classify(const char *seg, size_t n)
{
    if (n == 1 && seg[0] == '.')
        return URI_SEG_DOT;
    if (n == 2 && seg[0] == '.' && seg[1] == '.')
        return URI_SEG_DOTDOT;
    return URI_SEG_NAME;
}

/*
 * Apply ".." whose decoded bytes start at START (just after a '/'): drop it
 * and the segment before it, keeping that segment's leading '/'. At the root
 * there is nothing to drop, and RFC 3986's clamping would hide an attack, so
 * it is an error.
 */
static int pop_segment(struct uri_out *o, size_t start)
{
    if (start <= 1)
        return -1;
    o->len = start - 1;
    while (o->buf[o->len - 1] != '/')
        o->len--;
    return 0;
}

ssize_t uri_normalize_path(const char *in, size_t len, char *out, size_t outcap)
{
    struct uri_out o = {out, 0, 0};
    size_t i = 0;

    if (in == NULL || out == NULL || len == 0 || in[0] != '/' || outcap < 2)
        return -1;
    o.cap = outcap - 1;
    out_put(&o, '/');

    /* Invariant at the top: the output ends with '/'. */
    while (i < len) {
        if (in[i] == '/') {
            i++;
            continue;
        }
        size_t start = o.len;
        ssize_t next = copy_segment(in, len, i, &o);
        if (next < 0)
            return -1;
        i = (size_t)next;

        switch (classify(out + start, o.len - start)) {
        case URI_SEG_NAME:
            if (i < len && out_put(&o, '/') == -1)
                return -1;
            break;
        case URI_SEG_DOT:
            o.len = start;
            break;
        case URI_SEG_DOTDOT:
            if (pop_segment(&o, start) == -1)
                return -1;
            break;
        }
    }
    out[o.len] = '\0';
    return (ssize_t)o.len;
}
