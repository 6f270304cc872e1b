/*
 * fmt.h - decimal numbers and string pieces without printf, for the
 * per-request paths (header lines, Redis arguments, keys).
 */
#ifndef FG_FMT_H
#define FG_FMT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define FMT_U64_MAX 20 /* digits of UINT64_MAX */

/* The decimal text of V at OUT (FMT_U64_MAX bytes of room); its length. */
static inline size_t fmt_u64(char *out, uint64_t v)
{
    char tmp[FMT_U64_MAX];
    size_t i = sizeof(tmp);

    do {
        tmp[--i] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    memcpy(out, tmp + i, sizeof(tmp) - i);
    return sizeof(tmp) - i;
}

/* The same for a signed value (FMT_U64_MAX + 1 bytes of room). */
static inline size_t fmt_i64(char *out, int64_t v)
{
    if (v >= 0)
        return fmt_u64(out, (uint64_t)v);
    out[0] = '-';
    return 1 + fmt_u64(out + 1, (uint64_t)0 - (uint64_t)v);
}

/* A string built piece by piece in a fixed array: a piece that does not
 * fit marks it overflowed, and nothing past the end is written. */
struct sbuf {
    char *p;
    size_t len, cap;
    bool overflow;
};

static inline void sbuf_put(struct sbuf *b, const void *s, size_t n)
{
    if (n == 0)
        return;
    if (n > b->cap - b->len) {
        b->overflow = true;
        return;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
}

#define sbuf_lit(b, s) sbuf_put((b), (s), sizeof(s) - 1)

static inline void sbuf_str(struct sbuf *b, const char *s)
{
    sbuf_put(b, s, strlen(s));
}

static inline void sbuf_u64(struct sbuf *b, uint64_t v)
{
    char tmp[FMT_U64_MAX];

    sbuf_put(b, tmp, fmt_u64(tmp, v));
}

static inline void sbuf_i64(struct sbuf *b, int64_t v)
{
    char tmp[FMT_U64_MAX + 1];

    sbuf_put(b, tmp, fmt_i64(tmp, v));
}

/* NUL-terminate (room for it is kept); the length, or -1 after an overflow. */
static inline int sbuf_end(struct sbuf *b)
{
    if (b->overflow || b->len >= b->cap)
        return -1;
    b->p[b->len] = '\0';
    return (int)b->len;
}

#endif
