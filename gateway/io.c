/*
 * io.c - non-blocking socket I/O, plain or TLS (see io.h).
 *
 * The two events share the socket: rev (EV_READ|EV_PERSIST) stays
 * registered while input is wanted; wev (EV_WRITE|EV_PERSIST) is registered
 * only while output waits for the socket, or a connect or a TLS step waits
 * to write. libevent's epoll backend merges them into one registration.
 */
#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/ioctl.h>
#include <sys/uio.h>
#include <linux/sockios.h>
#include <unistd.h>

#include <openssl/err.h>

#include "io.h"

#define IO_TLS_RECORD 16384    /* plaintext bytes per TLS record written */
#define IO_READ_DEFAULT 16384  /* bytes asked for per plain read */

static void io_rev_cb(evutil_socket_t fd, short what, void *arg);
static void io_wev_cb(evutil_socket_t fd, short what, void *arg);
static void io_in_cb(struct evbuffer *buf, const struct evbuffer_cb_info *info, void *arg);

const char *io_phase_str(enum io_phase phase)
{
    switch (phase) {
    case IO_PHASE_CONNECTING: return "connecting";
    case IO_PHASE_HANDSHAKE: return "handshake";
    case IO_PHASE_OPEN: return "open";
    case IO_PHASE_LINGER: return "linger";
    case IO_PHASE_CLOSED: return "closed";
    }
    return "?";
}

const char *io_end_str(enum io_end end)
{
    switch (end) {
    case IO_END_NONE: return "none";
    case IO_END_EOF: return "eof";
    case IO_END_ERROR: return "error";
    }
    return "?";
}

/* Connected and not freed. LINGER counts: it reads, and output given to it
 * anyway meets the shut write side and fails like any write. */
static bool established(const struct io *io)
{
    return io->phase == IO_PHASE_OPEN || io->phase == IO_PHASE_LINGER;
}

/* Neither freed nor failed: the socket may still be used. */
static bool usable(const struct io *io)
{
    return io->phase != IO_PHASE_CLOSED && io->end != IO_END_ERROR;
}

static void io_destroy(struct io *io)
{
    if (io->ssl)
        SSL_free(io->ssl);
    if (io->in)
        evbuffer_free(io->in);
    if (io->out)
        evbuffer_free(io->out);
    free(io);
}

static struct io *io_alloc(struct event_base *base, int fd)
{
    struct io *io = calloc(1, sizeof(*io));

    if (io == NULL)
        return NULL;
    io->fd = fd;
    io->read_size = IO_READ_DEFAULT;
    io->in = evbuffer_new();
    io->out = evbuffer_new();
    if (io->in == NULL || io->out == NULL ||
        event_assign(&io->rev, base, fd, EV_READ | EV_PERSIST, io_rev_cb, io) < 0 ||
        event_assign(&io->wev, base, fd, EV_WRITE | EV_PERSIST, io_wev_cb, io) < 0) {
        io_destroy(io);
        return NULL;
    }
    return io;
}

/* ---- registration ------------------------------------------------------ */

/* Register EV with the loop, or not; *ON remembers which. */
static void set_interest(struct event *ev, bool *on, bool want)
{
    if (want == *on)
        return;
    *on = want;
    if (want)
        event_add(ev, NULL);
    else
        event_del(ev);
}

/* The write event carries the send timeout: libevent restarts a persistent
 * event's timeout each time it fires, so it measures the time since the
 * socket last became writable. */
/* Bytes the kernel still holds for the peer (sent and unacknowledged, or
 * not sent yet); -1 when it cannot say. */
static int send_queue(const struct io *io)
{
    int n;

    return ioctl(io->fd, SIOCOUTQ, &n) == 0 ? n : -1;
}

static void set_wev(struct io *io, bool on)
{
    if (on == io->wev_on)
        return;
    io->wev_on = on;
    if (!on)
        event_del(&io->wev);
    else if (established(io) && timerisset(&io->send_timeout)) {
        io->outq_mark = send_queue(io);
        event_add(&io->wev, &io->send_timeout);
    } else
        event_add(&io->wev, NULL);
}

/* Register read interest exactly when something needs the socket readable:
 * the user's reading (the common case, tested first), or a TLS step. */
static void io_update(struct io *io)
{
    bool reading = established(io) && io->want_read && !io->in_full && io->end == IO_END_NONE;

    set_interest(&io->rev, &io->rev_on,
                 reading ||
                     ((io->phase == IO_PHASE_HANDSHAKE || io->write_wants_read) && usable(io)));
}

/* Bytes may sit decrypted or undecrypted inside OpenSSL, where no socket
 * event will announce them: read them from the loop. */
static void kick_pending(struct io *io)
{
    if (io->ssl && established(io) && SSL_has_pending(io->ssl))
        event_active(&io->rev, EV_READ, 1);
}

void io_setcb(struct io *io, io_data_cb read_cb, io_data_cb write_cb, io_event_cb event_cb,
              void *arg)
{
    io->read_cb = read_cb;
    io->write_cb = write_cb;
    io->event_cb = event_cb;
    io->arg = arg;
}

void io_set_send_timeout(struct io *io, uint32_t ms)
{
    io->send_timeout.tv_sec = ms / 1000;
    io->send_timeout.tv_usec = (ms % 1000) * 1000;
}

void io_enable_read(struct io *io)
{
    if (io->want_read)
        return;
    io->want_read = true;
    io_update(io);
    kick_pending(io);
}

void io_disable_read(struct io *io)
{
    if (!io->want_read)
        return;
    io->want_read = false;
    io_update(io);
}

void io_trigger_read(struct io *io)
{
    if (io->phase == IO_PHASE_CLOSED)
        return;
    io->trigger = true;
    event_active(&io->rev, EV_READ, 1);
}

/* The input drained below read_high after reading stopped there. */
static void io_in_cb(struct evbuffer *buf, const struct evbuffer_cb_info *info, void *arg)
{
    struct io *io = arg;

    if (!io->in_full || info->n_deleted == 0 || evbuffer_get_length(buf) >= io->read_high)
        return;
    io->in_full = false;
    evbuffer_cb_clear_flags(buf, io->in_cb, EVBUFFER_CB_ENABLED);
    io_update(io);
    kick_pending(io);
}

static void report(struct io *io, int what)
{
    /* A freed io tells nothing: its user is gone. An error after an EOF
     * is told too: a user still writing to a half-closed peer must learn
     * that its writes fail (the write event would fire for ever). */
    if (io->phase == IO_PHASE_CLOSED || io->reported == IO_ERROR || io->reported == what)
        return;
    io->reported = what;
    if (what == IO_ERROR) {
        io->end = IO_END_ERROR;
        set_wev(io, false);
    } else if (io->end == IO_END_NONE) {
        io->end = IO_END_EOF; /* an error io_flush found meanwhile stays */
    }
    io_update(io);
    if (io->event_cb)
        io->event_cb(io, what, io->arg);
}

/* ---- reading -------------------------------------------------------------- */

static bool input_full(struct io *io)
{
    if (io->read_high == 0 || evbuffer_get_length(io->in) < io->read_high)
        return false;
    if (!io->in_full) {
        /* Watch the input drain only while reading is stopped: an evbuffer
         * with no callback skips that work on every change. */
        if (io->in_cb == NULL && (io->in_cb = evbuffer_add_cb(io->in, io_in_cb, io)) == NULL)
            return false; /* no memory to watch with: read on instead */
        evbuffer_cb_set_flags(io->in, io->in_cb, EVBUFFER_CB_ENABLED);
        io->in_full = true;
    }
    return true;
}

/* 0 (the socket is drained, or the input is full), IO_EOF or IO_ERROR. */
static int read_plain(struct io *io)
{
    while (!input_full(io)) {
        struct evbuffer_iovec v[2];
        int nv = evbuffer_reserve_space(io->in, (ev_ssize_t)io->read_size, v, 2);
        if (nv <= 0) {
            io->err = ENOMEM;
            return IO_ERROR;
        }
        size_t asked = 0;
        for (int i = 0; i < nv; i++)
            asked += v[i].iov_len;
        ssize_t n = readv(io->fd, (struct iovec *)v, nv);
        if (n <= 0) {
            evbuffer_commit_space(io->in, v, 0);
            if (n == 0)
                return IO_EOF;
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                return 0;
            io->err = errno;
            return IO_ERROR;
        }
        size_t left = (size_t)n;
        int used = 0;
        for (; used < nv && left > 0; used++) {
            if (v[used].iov_len > left)
                v[used].iov_len = left;
            left -= v[used].iov_len;
        }
        evbuffer_commit_space(io->in, v, used);
        if ((size_t)n < asked)
            return 0; /* drained: anything later is a new event */
    }
    return 0;
}

static int read_tls(struct io *io)
{
    while (!input_full(io)) {
        struct evbuffer_iovec v;
        if (evbuffer_reserve_space(io->in, IO_TLS_RECORD, &v, 1) < 1) {
            io->err = ENOMEM;
            return IO_ERROR;
        }
        int want = v.iov_len > INT_MAX ? INT_MAX : (int)v.iov_len;
        int n = SSL_read(io->ssl, v.iov_base, want);
        if (n > 0) {
            v.iov_len = (size_t)n;
            evbuffer_commit_space(io->in, &v, 1);
            /* With read-ahead, bytes of the next record may already be
             * inside OpenSSL; otherwise the socket was read dry or will
             * announce more itself. */
            if (!SSL_has_pending(io->ssl))
                return 0;
            continue;
        }
        evbuffer_commit_space(io->in, &v, 0);
        switch (SSL_get_error(io->ssl, n)) {
        case SSL_ERROR_WANT_READ:
            return 0;
        case SSL_ERROR_WANT_WRITE:
            io->read_wants_write = true;
            set_wev(io, true);
            return 0;
        case SSL_ERROR_ZERO_RETURN:
            return IO_EOF; /* close_notify, or a bare EOF (IGNORE_UNEXPECTED_EOF) */
        case SSL_ERROR_SYSCALL:
            io->err = errno;
            ERR_clear_error();
            return errno == 0 ? IO_EOF : IO_ERROR;
        default:
            io->err = EPROTO;
            ERR_clear_error();
            return IO_ERROR;
        }
    }
    return 0;
}

/* Lingering: whatever arrives is dropped, read raw (a TLS record is not
 * worth decrypting now). IO_EOF once the peer closes or resets. */
static int read_discard(struct io *io)
{
    char buf[16384];

    for (;;) {
        ssize_t n = read(io->fd, buf, sizeof(buf));
        if (n > 0)
            continue;
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return 0;
        return IO_EOF;
    }
}

/* Read what the socket has, hand it to read_cb, then report EOF or error. */
static void do_read(struct io *io)
{
    size_t before = evbuffer_get_length(io->in);
    int st = 0;

    if (io->in_cb && !io->in_full) {
        /* Disabled in io_in_cb, removed here, outside the evbuffer's own
         * callback loop. */
        evbuffer_remove_cb_entry(io->in, io->in_cb);
        io->in_cb = NULL;
    }

    if (io->phase == IO_PHASE_LINGER) {
        if ((st = read_discard(io)) != 0)
            report(io, st);
        return;
    }
    if (io->want_read && io->end == IO_END_NONE)
        st = io->ssl ? read_tls(io) : read_plain(io);
    size_t after = evbuffer_get_length(io->in);
    bool trigger = io->trigger;
    io->trigger = false;
    if ((after > before || trigger) && after > 0 && io->read_cb) {
        io->read_cb(io, io->arg);
        if (io->phase == IO_PHASE_CLOSED)
            return;
    }
    if (st != 0)
        report(io, st);
    else
        io_update(io);
}

/* ---- writing -------------------------------------------------------------- */

/* 0 (all written, or waiting for the socket) or -1 (io->err). */
static int write_plain(struct io *io)
{
    while (evbuffer_get_length(io->out) > 0) {
        int n = evbuffer_write(io->out, io->fd);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                set_wev(io, true);
                return 0;
            }
            io->err = errno;
            return -1;
        }
    }
    set_wev(io, io->read_wants_write);
    return 0;
}

/* One record per SSL_write, up to 16 KiB: a response head and a small body
 * go out as one record in one write(2). */
static int write_tls(struct io *io)
{
    size_t len;

    while ((len = evbuffer_get_length(io->out)) > 0) {
        size_t n = len < IO_TLS_RECORD ? len : IO_TLS_RECORD;
        unsigned char *p = evbuffer_pullup(io->out, (ev_ssize_t)n);
        if (p == NULL) {
            io->err = ENOMEM;
            return -1;
        }
        int w = SSL_write(io->ssl, p, (int)n);
        if (w > 0) {
            evbuffer_drain(io->out, (size_t)w);
            continue;
        }
        switch (SSL_get_error(io->ssl, w)) {
        case SSL_ERROR_WANT_WRITE:
            set_wev(io, true);
            return 0;
        case SSL_ERROR_WANT_READ:
            io->write_wants_read = true;
            set_wev(io, io->read_wants_write);
            io_update(io);
            return 0;
        default:
            io->err = errno ? errno : EPROTO;
            ERR_clear_error();
            return -1;
        }
    }
    set_wev(io, io->read_wants_write);
    return 0;
}

static int write_out(struct io *io)
{
    return io->ssl ? write_tls(io) : write_plain(io);
}

void io_flush(struct io *io)
{
    if (!established(io) || io->end == IO_END_ERROR || io->write_wants_read ||
        evbuffer_get_length(io->out) == 0)
        return;
    if (io->wev_on && !io->read_wants_write)
        return; /* the socket refused bytes: the write event sends these too */
    if (write_out(io) < 0) {
        /* Reported from the loop: the caller is in the middle of its work. */
        io->end = IO_END_ERROR;
        set_wev(io, false);
        io_update(io);
        event_active(&io->rev, EV_READ, 1);
    }
}

/* ---- handshake, connect, event callbacks ---------------------------------- */

static void handshake(struct io *io)
{
    int r = SSL_do_handshake(io->ssl);

    if (r == 1) {
        io->phase = IO_PHASE_OPEN;
        set_wev(io, false);
        io_update(io);
        if (io->event_cb) {
            io->event_cb(io, IO_CONNECTED, io->arg);
            if (io->phase == IO_PHASE_CLOSED)
                return;
        }
        /* The first request often comes with the handshake's last flight
         * and is already inside OpenSSL (read-ahead). */
        do_read(io);
        return;
    }
    switch (SSL_get_error(io->ssl, r)) {
    case SSL_ERROR_WANT_READ:
        set_wev(io, false);
        return;
    case SSL_ERROR_WANT_WRITE:
        set_wev(io, true);
        return;
    default:
        io->err = errno ? errno : EPROTO;
        ERR_clear_error();
        report(io, IO_ERROR);
    }
}

static void io_unbusy(struct io *io)
{
    if (--io->busy == 0 && io->phase == IO_PHASE_CLOSED)
        io_destroy(io);
}

static void io_rev_cb(evutil_socket_t fd, short what, void *arg)
{
    struct io *io = arg;

    io->busy++;
    if (io->end == IO_END_ERROR) {
        report(io, IO_ERROR); /* a write failed inside io_flush */
    } else if (io->phase == IO_PHASE_HANDSHAKE) {
        handshake(io);
    } else {
        if (io->write_wants_read) {
            /* The write waited on this read: what it drained is reported
             * like any other, or a caller waiting for the output to drain
             * (a response's last bytes) would wait for ever. */
            size_t before = evbuffer_get_length(io->out);
            io->write_wants_read = false;
            io_flush(io);
            size_t after = evbuffer_get_length(io->out);
            if (usable(io) && after < before && after <= io->write_low && io->write_cb)
                io->write_cb(io, io->arg);
        }
        if (usable(io))
            do_read(io);
        else if (io->end == IO_END_ERROR)
            report(io, IO_ERROR);
    }
    io_unbusy(io);
}

static void connected(struct io *io)
{
    int err = 0;
    socklen_t len = sizeof(err);

    if (getsockopt(io->fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
        err = errno;
    if (err == EINPROGRESS)
        return;
    set_wev(io, false);
    if (err != 0) {
        io->err = err;
        report(io, IO_ERROR);
        return;
    }
    io->phase = IO_PHASE_OPEN;
    io_update(io);
    if (io->event_cb)
        io->event_cb(io, IO_CONNECTED, io->arg);
}

static void io_wev_cb(evutil_socket_t fd, short what, void *arg)
{
    struct io *io = arg;

    io->busy++;
    if ((what & (EV_TIMEOUT | EV_WRITE)) == EV_TIMEOUT) {
        /* The kernel reports the socket writable only once its queue has
         * drained well down: a peer that reads slowly but steadily shrinks
         * the queue without a write event. That is progress; only a queue
         * that did not shrink for send_timeout is a peer that stopped. (The
         * persistent event's timeout repeats by itself.) */
        int q = send_queue(io);
        if (q >= 0 && io->outq_mark >= 0 && q < io->outq_mark) {
            io->outq_mark = q;
        } else {
            io->err = ETIMEDOUT;
            report(io, IO_ERROR);
        }
    } else if (io->phase == IO_PHASE_CONNECTING) {
        connected(io);
    } else if (io->phase == IO_PHASE_HANDSHAKE) {
        handshake(io);
    } else {
        if (io->read_wants_write) {
            io->read_wants_write = false;
            do_read(io);
        }
        size_t before = evbuffer_get_length(io->out);
        if (usable(io) && before > 0 && !io->write_wants_read) {
            if (write_out(io) < 0) {
                report(io, IO_ERROR);
            } else {
                if (io->wev_on && timerisset(&io->send_timeout))
                    io->outq_mark = send_queue(io); /* the queue as just refilled */
                if (evbuffer_get_length(io->out) <= io->write_low &&
                    evbuffer_get_length(io->out) < before && io->write_cb)
                    io->write_cb(io, io->arg);
            }
        } else if (io->phase != IO_PHASE_CLOSED && before == 0) {
            set_wev(io, io->read_wants_write);
        }
    }
    io_unbusy(io);
}

/* ---- life ------------------------------------------------------------------ */

struct io *io_new(struct event_base *base, int fd, SSL *ssl)
{
    struct io *io = io_alloc(base, fd);

    if (io == NULL)
        return NULL;
    io->ssl = ssl;
    if (ssl) {
        io->phase = IO_PHASE_HANDSHAKE;
        if (SSL_set_fd(ssl, fd) != 1) {
            io->ssl = NULL;
            io_destroy(io);
            return NULL;
        }
        SSL_set_accept_state(ssl);
    } else {
        io->phase = IO_PHASE_OPEN;
    }
    io_update(io);
    return io;
}

struct io *io_connect(struct event_base *base, const struct sockaddr *sa, socklen_t len)
{
    int fd = socket(sa->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);

    if (fd < 0)
        return NULL;
    if (connect(fd, sa, len) < 0 && errno != EINPROGRESS) {
        int e = errno;
        close(fd);
        errno = e;
        return NULL;
    }
    struct io *io = io_alloc(base, fd);
    if (io == NULL) {
        close(fd);
        errno = ENOMEM;
        return NULL;
    }
    io->phase = IO_PHASE_CONNECTING;
    set_wev(io, true);
    return io;
}

void io_linger(struct io *io)
{
    if (io->phase != IO_PHASE_OPEN || io->end != IO_END_NONE)
        return;
    if (io->ssl)
        SSL_shutdown(io->ssl); /* close_notify; its answer is not awaited */
    ERR_clear_error();
    shutdown(io->fd, SHUT_WR);
    io->phase = IO_PHASE_LINGER;
    evbuffer_drain(io->in, evbuffer_get_length(io->in));
    if (io->in_cb) {
        evbuffer_remove_cb_entry(io->in, io->in_cb);
        io->in_cb = NULL;
    }
    io->in_full = false;
    io->write_wants_read = io->read_wants_write = false;
    set_wev(io, false);
    io->want_read = true;
    io_update(io);
}

void io_free(struct io *io)
{
    if (io == NULL || io->phase == IO_PHASE_CLOSED)
        return;
    event_del(&io->rev);
    event_del(&io->wev);
    if (io->ssl && io->phase == IO_PHASE_OPEN && io->end == IO_END_NONE)
        SSL_shutdown(io->ssl); /* close_notify, once; its answer is not awaited */
    io->phase = IO_PHASE_CLOSED;
    ERR_clear_error();
    close(io->fd);
    io->fd = -1;
    if (io->busy == 0)
        io_destroy(io);
}
