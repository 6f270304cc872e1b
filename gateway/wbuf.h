/*
 * wbuf.h - writing a message head straight into an evbuffer's free space:
 * one reservation sized from the pieces' lengths, a memcpy per piece, one
 * commit. No formatting, no small chains.
 *
 * A piece that would not fit marks the writer overflowed and nothing past
 * the reservation is ever written; wbuf_end() then commits nothing and says
 * so, and the caller treats the head as not written.
 */
#ifndef FG_WBUF_H
#define FG_WBUF_H

#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#include <event2/buffer.h>

#include "fmt.h"

struct wbuf {
    struct evbuffer *out;
    struct evbuffer_iovec v;
    char *p, *end;
    bool overflow;
};

/* Reserve CAP bytes at the end of OUT. Until wbuf_end, nothing else may be
 * added to OUT. */
static inline void wbuf_begin(struct wbuf *b, struct evbuffer *out, size_t cap)
{
    b->out = out;
    b->overflow = false;
    if (evbuffer_reserve_space(out, (ev_ssize_t)cap, &b->v, 1) < 1) {
        b->v.iov_base = NULL;
        b->v.iov_len = 0;
        b->p = b->end = NULL;
        b->overflow = true;
        return;
    }
    b->p = b->v.iov_base;
    b->end = b->p + b->v.iov_len;
}

static inline void wbuf_put(struct wbuf *b, const void *s, size_t n)
{
    if (n == 0)
        return;
    if (n > (size_t)(b->end - b->p)) {
        b->overflow = true;
        b->end = b->p;
        return;
    }
    memcpy(b->p, s, n);
    b->p += n;
}

#define wbuf_lit(b, s) wbuf_put((b), (s), sizeof(s) - 1)

static inline void wbuf_str(struct wbuf *b, const char *s)
{
    wbuf_put(b, s, strlen(s));
}

static inline void wbuf_u64(struct wbuf *b, uint64_t v)
{
    char tmp[FMT_U64_MAX];

    wbuf_put(b, tmp, fmt_u64(tmp, v));
}

/* "NAME: VALUE\r\n" */
static inline void wbuf_header(struct wbuf *b, const char *name, size_t name_len,
                               const char *value, size_t value_len)
{
    wbuf_put(b, name, name_len);
    wbuf_lit(b, ": ");
    wbuf_put(b, value, value_len);
    wbuf_lit(b, "\r\n");
}

/* Bytes written so far. */
static inline size_t wbuf_len(const struct wbuf *b)
{
    return b->v.iov_base ? (size_t)(b->p - (char *)b->v.iov_base) : 0;
}

/* Commit what was written: 0, or -1 (nothing committed) after an overflow. */
static inline int wbuf_end(struct wbuf *b)
{
    if (b->overflow) {
        if (b->v.iov_base)
            evbuffer_commit_space(b->out, &b->v, 0);
        return -1;
    }
    b->v.iov_len = wbuf_len(b);
    return evbuffer_commit_space(b->out, &b->v, 1);
}

#endif
