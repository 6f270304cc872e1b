/*
 * io.h - one non-blocking socket, plain or TLS, with an input and an output
 * buffer, driven by the worker's event loop.
 *
 * It does what a proxy needs and nothing more, with as few system calls as
 * the work allows:
 *
 *   - read interest is persistent (level-triggered): it is registered once
 *     and only removed while the input is full or the user pauses reading;
 *   - output is written at once, when the user calls io_flush(); write
 *     interest is registered only while the socket refuses bytes, so a
 *     request/response exchange costs no epoll_ctl at all;
 *   - a read that returns less than it asked for ends the round (the socket
 *     is drained; level triggering reports anything that arrives later);
 *   - TLS runs on the socket directly (read-ahead on, records of up to
 *     16 KiB out), so a record is one read(2) and one write(2).
 *
 * Callbacks: read_cb when the input grew (or io_trigger_read asked for it),
 * write_cb when output that had to wait drained to write_low, event_cb with
 * IO_CONNECTED (TCP connect or TLS handshake done), IO_EOF or IO_ERROR. EOF
 * and errors are reported once each, after the data read before them (an
 * error may follow an EOF, never the other way). Write
 * errors found inside io_flush are reported from the loop, never from the
 * caller's stack.
 *
 * io_free() may be called from inside any callback: the socket closes at
 * once and the memory goes when the callback returns.
 */
#ifndef FG_IO_H
#define FG_IO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/event_struct.h>
#include <openssl/ssl.h>

enum {
    IO_CONNECTED = 1,
    IO_EOF = 2,
    IO_ERROR = 4,
};

struct io;
typedef void (*io_data_cb)(struct io *io, void *arg);
typedef void (*io_event_cb)(struct io *io, int what, void *arg);

/*
 * Where the connection is in its life. Phases only move forward:
 *
 *   io_connect()  CONNECTING --connected--+
 *                                         |
 *   io_new(ssl)   HANDSHAKE --handshake---+--> OPEN --io_linger()--> LINGER
 *                                         |
 *   io_new(NULL) -------------------------+
 *
 *   any phase --io_free()--> CLOSED
 *
 * An error or EOF does not change the phase (see enum io_end).
 */
enum io_phase {
    IO_PHASE_CONNECTING = 0, /* TCP connect in progress */
    IO_PHASE_HANDSHAKE = 1,  /* TLS server handshake in progress */
    IO_PHASE_OPEN = 2,       /* both directions usable */
    IO_PHASE_LINGER = 3,     /* io_linger: write side shut, input read and dropped */
    IO_PHASE_CLOSED = 4,     /* io_free: socket closed; memory goes when callbacks unwind */
};
const char *io_phase_str(enum io_phase phase);

/*
 * How the socket's traffic ended, whatever the phase:
 *
 *   NONE --peer closed--> EOF --a write fails in io_flush--> ERROR
 *     |                                                       ^
 *     +--- a read or write, the connect, TLS, send_timeout ---+
 *
 * After EOF output can still go out (a half-closed peer may read); after
 * ERROR nothing is read or written. Each end is given to event_cb once
 * (struct io's reported): EOF, then an error should a write still fail
 * after it; one found inside io_flush is reported from the loop. A freed
 * io reports nothing.
 */
enum io_end {
    IO_END_NONE = 0,  /* reading on */
    IO_END_EOF = 1,   /* the peer closed its side */
    IO_END_ERROR = 2, /* the socket failed (io->err) */
};
const char *io_end_str(enum io_end end);

struct io {
    int fd;
    SSL *ssl;                 /* NULL on a plain socket */
    struct event rev, wev;    /* rev: persistent read; wev: added only while blocked */
    struct evbuffer *in, *out;
    struct evbuffer_cb_entry *in_cb; /* registered only while reading stopped at read_high */
    io_data_cb read_cb, write_cb;
    io_event_cb event_cb;
    void *arg;
    size_t read_high;         /* stop reading while the input holds this much; 0 = none */
    size_t write_low;         /* write_cb once waiting output drains to this */
    size_t read_size;         /* bytes asked for per read(2) on a plain socket */
    struct timeval send_timeout; /* longest wait for the socket to take bytes; 0 = none */
    int outq_mark;            /* the kernel's send queue when last seen to move (-1: unknown) */
    int err;                  /* errno of a failed connect or write, for the user */
    enum io_phase phase;      /* where the connection is in its life */
    enum io_end end;          /* how its traffic ended, if it did */
    unsigned busy;            /* callbacks on the stack: CLOSED frees when it drops to 0 */
    int reported;             /* the last end given to event_cb: 0, IO_EOF or IO_ERROR */
    bool want_read;           /* the user wants input (io_enable_read) */
    bool rev_on, wev_on;      /* registered with the loop */
    bool in_full;             /* reading stopped at read_high */
    bool trigger;             /* io_trigger_read: call read_cb from the loop */
    bool write_wants_read;    /* SSL_write needs the socket readable */
    bool read_wants_write;    /* SSL_read needs the socket writable */
};

/* An accepted socket: plain (SSL NULL; open at once) or TLS (server
 * handshake first, ending with IO_CONNECTED). The io owns FD and SSL. NULL
 * when out of memory (FD and SSL are then left to the caller). */
struct io *io_new(struct event_base *base, int fd, SSL *ssl);

/* A plain TCP connect to SA: IO_CONNECTED or IO_ERROR (io->err) from the
 * loop. NULL with errno set when no socket could be made or the connect
 * failed at once. */
struct io *io_connect(struct event_base *base, const struct sockaddr *sa, socklen_t len);

void io_setcb(struct io *io, io_data_cb read_cb, io_data_cb write_cb, io_event_cb event_cb,
              void *arg);

/* Read interest on or off (backpressure). Input already held is kept. */
void io_enable_read(struct io *io);
void io_disable_read(struct io *io);

/* Call read_cb from the loop (not from this stack) if input is held. */
void io_trigger_read(struct io *io);

/* Write what the output holds now; what the socket refuses waits for it. */
void io_flush(struct io *io);

/* While output waits for the socket, a wait longer than MS (0 = none)
 * without the socket taking a byte ends in IO_ERROR with err ETIMEDOUT: a
 * peer that stopped reading is let go, one that reads slowly is not. The
 * clock runs only while the socket refuses bytes, so it costs nothing while
 * writes go through at once. */
void io_set_send_timeout(struct io *io, uint32_t ms);

/*
 * Lingering close (RFC 9112 section 9.6): after the last response, shut
 * the write side (a TLS close_notify first), then read and drop whatever
 * the peer still sends until it closes (IO_EOF) or the caller's timer
 * ends it. Closing at once with unread input would make the kernel send a
 * reset, which can destroy the response before the peer has read it.
 * Output must be fully written before this is called. Only an OPEN io with
 * its traffic not ended lingers; otherwise this does nothing.
 */
void io_linger(struct io *io);

/* Close the socket, drop both buffers. Safe inside callbacks. */
void io_free(struct io *io);

static inline size_t io_pending_out(const struct io *io)
{
    return evbuffer_get_length(io->out);
}

/* The peer closed its side (IO_EOF); false once a write failed after it. */
static inline bool io_eof(const struct io *io)
{
    return io->end == IO_END_EOF;
}

/* The peer closed its side or the socket failed: nothing more comes in. */
static inline bool io_ended(const struct io *io)
{
    return io->end != IO_END_NONE;
}

/* The socket failed (io->err says why): nothing more goes in or out. */
static inline bool io_failed(const struct io *io)
{
    return io->end == IO_END_ERROR;
}

#endif
