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
    struct sbuf s; /* the reserved span */
};

/* Reserve CAP bytes at the end of OUT. Until wbuf_end, nothing else may be
 * added to OUT. */
static inline void wbuf_begin(struct wbuf *b, struct evbuffer *out, size_t cap)
{
    b->out = out;
    if (evbuffer_reserve_space(out, (ev_ssize_t)cap, &b->v, 1) < 1) {
        b->v.iov_base = NULL;
        b->v.iov_len = 0;
        b->s = (struct sbuf){NULL, 0, 0, true};
        return;
    }
    b->s = (struct sbuf){b->v.iov_base, 0, b->v.iov_len, false};
}

static inline void wbuf_put(struct wbuf *b, const void *p, size_t n)
{
    sbuf_put(&b->s, p, n);
}

#define wbuf_lit(b, lit) sbuf_lit(&(b)->s, lit)

static inline void wbuf_str(struct wbuf *b, const char *p)
{
    sbuf_str(&b->s, p);
}

static inline void wbuf_u64(struct wbuf *b, uint64_t v)
{
    sbuf_u64(&b->s, v);
}

/* "NAME: VALUE\r\n" */
static inline void wbuf_header(struct wbuf *b, const char *name, size_t name_len,
                               const char *value, size_t value_len)
{
    sbuf_put(&b->s, name, name_len);
    sbuf_lit(&b->s, ": ");
    sbuf_put(&b->s, value, value_len);
    sbuf_lit(&b->s, "\r\n");
}

/* Bytes written so far. */
static inline size_t wbuf_len(const struct wbuf *b)
{
    return b->s.len;
}

/* Commit what was written: 0, or -1 (nothing committed) after an overflow. */
static inline int wbuf_end(struct wbuf *b)
{
    if (b->s.overflow) {
        if (b->v.iov_base)
            evbuffer_commit_space(b->out, &b->v, 0);
        return -1;
    }
    b->v.iov_len = b->s.len;
    return evbuffer_commit_space(b->out, &b->v, 1);
}

#endif
