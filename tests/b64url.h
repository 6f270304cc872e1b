/*
 * b64url.h - base64url without padding (RFC 4648 section 5), for the tests,
 * fuzz targets and benchmarks that build tokens. flowgate itself only ever
 * decodes.
 */
#ifndef FG_TESTS_B64URL_H
#define FG_TESTS_B64URL_H

#include <stddef.h>
#include <stdint.h>

/* Encode IN[0..LEN) into OUT (room for 4 * ceil(LEN / 3) + 1 bytes);
 * NUL-terminated; returns the encoded length. */
static inline size_t b64u(const unsigned char *in, size_t len, char *out)
{
    static const char a[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    size_t n = 0;

    for (size_t i = 0; i < len; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16;
        if (i + 1 < len)
            v |= (uint32_t)in[i + 1] << 8;
        if (i + 2 < len)
            v |= in[i + 2];
        out[n++] = a[v >> 18];
        out[n++] = a[(v >> 12) & 63];
        if (i + 1 < len)
            out[n++] = a[(v >> 6) & 63];
        if (i + 2 < len)
            out[n++] = a[v & 63];
    }
    out[n] = '\0';
    return n;
}

#endif
