/*
 * test_io.c - io.c on a real event base over socketpairs and loopback TCP:
 * round trip, read_high backpressure, write_low after a blocked write, write
 * errors reported from the loop, EOF after the data, io_free inside each
 * callback, the send timeout against a stopped and a slow reader, lingering
 * close, connect, io_trigger_read, and a TLS exchange against an OpenSSL
 * client. Every wait is bounded: a guard timer fails the test when what it
 * waits for does not come.
 */
#include <errno.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <unistd.h>

#include <cmocka.h>
#include <event2/event.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <poll.h>
#include <time.h>

#include "io.h"
#include "tls.h"

#define GUARD_MS 5000 /* longest wait for anything a test waits for */

/* What the callbacks saw, and what they are told to do. */
struct probe {
    struct event_base *base;
    struct io *io;             /* NULL once freed */
    int reads, writes, events; /* calls of each callback */
    int what;                  /* last event */
    int err;                   /* io->err at the last event */
    size_t got;                /* bytes read_cb took out of the input */
    size_t got_at_event;       /* ... when the event came */
    size_t pending_at_write;   /* io_pending_out() inside write_cb */
    size_t want;               /* break the loop once got reaches it (0: never) */
    bool consume;              /* read_cb drains the input */
    bool break_on_read, break_on_write, break_on_event;
    bool free_on_read, free_on_write, free_on_event;
    bool in_caller;        /* the test is inside an io_* call */
    bool called_in_caller; /* a callback ran on the test's stack */
};

struct guard {
    struct event_base *base;
    bool expired;
};

static void on_guard(evutil_socket_t fd, short what, void *arg)
{
    struct guard *g = arg;

    g->expired = true;
    event_base_loopbreak(g->base);
}

/* Run BASE until a callback breaks the loop; fail after GUARD_MS. */
static void run_until_break(struct event_base *base)
{
    struct guard g = {base, false};
    struct event *ev = evtimer_new(base, on_guard, &g);
    struct timeval tv = {GUARD_MS / 1000, 0};

    assert_non_null(ev);
    evtimer_add(ev, &tv);
    event_base_dispatch(base);
    event_free(ev);
    if (g.expired)
        fail_msg("nothing ended the wait within %d ms", GUARD_MS);
}

/* Run BASE for MS: room for anything that should not happen to happen. */
static void run_ms(struct event_base *base, uint32_t ms)
{
    struct timeval tv = {(time_t)(ms / 1000), (suseconds_t)(ms % 1000) * 1000};

    event_base_loopexit(base, &tv);
    event_base_dispatch(base);
}

static void note_caller(struct probe *p)
{
    if (p->in_caller)
        p->called_in_caller = true;
}

static void free_io(struct probe *p)
{
    io_free(p->io);
    p->io = NULL;
}

static void on_read(struct io *io, void *arg)
{
    struct probe *p = arg;

    note_caller(p);
    p->reads++;
    if (p->consume) {
        size_t n = evbuffer_get_length(io->in);
        evbuffer_drain(io->in, n);
        p->got += n;
    }
    if (p->free_on_read)
        free_io(p);
    if (p->break_on_read || (p->want && p->got >= p->want))
        event_base_loopbreak(p->base);
}

static void on_write(struct io *io, void *arg)
{
    struct probe *p = arg;

    note_caller(p);
    p->writes++;
    if (io_pending_out(io) > p->pending_at_write)
        p->pending_at_write = io_pending_out(io);
    if (p->free_on_write)
        free_io(p);
    if (p->break_on_write)
        event_base_loopbreak(p->base);
}

static void on_event(struct io *io, int what, void *arg)
{
    struct probe *p = arg;

    note_caller(p);
    p->events++;
    p->what = what;
    p->err = io->err;
    p->got_at_event = p->got;
    if (p->free_on_event)
        free_io(p);
    if (p->break_on_event)
        event_base_loopbreak(p->base);
}

/* An io on FD, reading, with the probe's callbacks. */
static struct io *probe_io(struct probe *p, struct event_base *base, int fd)
{
    p->base = base;
    p->io = io_new(base, fd, NULL);
    assert_non_null(p->io);
    io_setcb(p->io, on_read, on_write, on_event, p);
    io_enable_read(p->io);
    return p->io;
}

static void nonblocking_pair(int fd[2])
{
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, fd), 0);
}

static struct sockaddr_in loopback(uint16_t port)
{
    struct sockaddr_in a;

    memset(&a, 0, sizeof(a));
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = htons(port);
    return a;
}

/* A TCP socket bound to 127.0.0.1 on a free port; listening when BACKLOG >= 0. */
static int bound_socket(int backlog, struct sockaddr_in *addr)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    socklen_t len = sizeof(*addr);

    assert_true(fd >= 0);
    *addr = loopback(0);
    assert_int_equal(bind(fd, (struct sockaddr *)addr, sizeof(*addr)), 0);
    assert_int_equal(getsockname(fd, (struct sockaddr *)addr, &len), 0);
    if (backlog >= 0)
        assert_int_equal(listen(fd, backlog), 0);
    return fd;
}

/* A loopback TCP connection: fd[0] accepted, fd[1] the client, both
 * non-blocking. RCVBUF (0: default) is the client's receive buffer. */
static void tcp_pair(int fd[2], int rcvbuf)
{
    struct sockaddr_in a;
    int l = bound_socket(16, &a);

    fd[1] = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_true(fd[1] >= 0);
    if (rcvbuf)
        assert_int_equal(setsockopt(fd[1], SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof(rcvbuf)), 0);
    assert_int_equal(connect(fd[1], (struct sockaddr *)&a, sizeof(a)), 0);
    fd[0] = accept4(l, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
    assert_true(fd[0] >= 0);
    assert_int_equal(evutil_make_socket_nonblocking(fd[1]), 0);
    close(l);
}

static void write_all(int fd, const char *s, size_t n)
{
    assert_int_equal(write(fd, s, n), (ssize_t)n);
}

static int unread(int fd)
{
    int n = -1;

    assert_int_equal(ioctl(fd, FIONREAD, &n), 0);
    return n;
}

static void add_bytes(struct evbuffer *b, size_t n)
{
    char chunk[4096];

    memset(chunk, 'x', sizeof(chunk));
    for (size_t i = 0; i < n; i += sizeof(chunk))
        evbuffer_add(b, chunk, n - i < sizeof(chunk) ? n - i : sizeof(chunk));
}

/* ---- reading and writing ---------------------------------------------------- */

/* "ping" one way, "pong" back, each written at once by io_flush (no write
 * interest registered for output the socket took). */
static void test_round_trip(void **state)
{
    struct event_base *base = event_base_new();
    struct probe pa = {0}, pb = {0};
    int fd[2];
    char got[8] = "";

    nonblocking_pair(fd);
    struct io *a = probe_io(&pa, base, fd[0]);
    struct io *b = probe_io(&pb, base, fd[1]);
    pb.break_on_read = true;
    evbuffer_add(a->out, "ping", 4);
    io_flush(a);
    assert_int_equal(io_pending_out(a), 0);
    assert_false(a->wev_on);
    run_until_break(base);
    assert_int_equal(evbuffer_remove(b->in, got, sizeof(got) - 1), 4);
    assert_string_equal(got, "ping");

    pb.break_on_read = false;
    pa.break_on_read = true;
    evbuffer_add(b->out, "pong", 4);
    io_flush(b);
    run_until_break(base);
    memset(got, 0, sizeof(got));
    assert_int_equal(evbuffer_remove(a->in, got, sizeof(got) - 1), 4);
    assert_string_equal(got, "pong");
    assert_int_equal(pa.events + pb.events, 0);
    assert_int_equal(pa.writes + pb.writes, 0);
    io_free(a);
    io_free(b);
    event_base_free(base);
}

/* Reading stops once the input holds read_high, the rest stays in the
 * socket, and it resumes when the user drains the input. */
static void test_read_high(void **state)
{
    struct event_base *base = event_base_new();
    struct probe p = {0};
    char data[8192];
    int fd[2];

    nonblocking_pair(fd);
    struct io *io = probe_io(&p, base, fd[0]);
    io->read_high = 1024;
    io->read_size = 512;
    memset(data, 'r', sizeof(data));
    write_all(fd[1], data, sizeof(data));
    p.break_on_read = true;
    run_until_break(base);
    size_t held = evbuffer_get_length(io->in);
    assert_int_equal(p.reads, 1);
    assert_true(held >= 1024);
    assert_true(held < sizeof(data));
    assert_int_equal(unread(fd[0]), (int)(sizeof(data) - held));

    /* Level-triggered reading would come back at once if it were still on. */
    p.break_on_read = false;
    run_ms(base, 50);
    assert_int_equal(p.reads, 1);
    assert_int_equal(evbuffer_get_length(io->in), held);

    /* Drained by the user from outside any callback: reading resumes. */
    evbuffer_drain(io->in, held);
    p.got = held;
    p.consume = true;
    p.want = sizeof(data);
    run_until_break(base);
    assert_int_equal(p.got, sizeof(data));
    assert_int_equal(unread(fd[0]), 0);
    assert_int_equal(p.events, 0);
    io_free(io);
    close(fd[1]);
    event_base_free(base);
}

/* The peer end of a socket, read from the loop: counts what arrives. */
struct sink {
    struct event_base *base; /* broken once want is reached */
    int fd;                  /* the peer's end */
    struct event *ev;        /* read event, or the slow reader's timer */
    size_t got;              /* bytes read */
    size_t step;             /* bytes per read; 0 = all there is */
    size_t want;             /* break the loop once got reaches it */
};

static void sink_read(struct sink *s)
{
    char buf[65536];

    for (;;) {
        size_t ask = s->step && s->step < sizeof(buf) ? s->step : sizeof(buf);
        ssize_t n = read(s->fd, buf, ask);
        if (n <= 0)
            break;
        s->got += (size_t)n;
        if (s->step)
            break;
    }
    if (s->want && s->got >= s->want)
        event_base_loopbreak(s->base);
}

static void on_sink(evutil_socket_t fd, short what, void *arg)
{
    sink_read(arg);
}

/* Read from S as fast as it comes. */
static void sink_start(struct sink *s, struct event_base *base, int fd, size_t want)
{
    s->base = base;
    s->fd = fd;
    s->want = want;
    s->ev = event_new(base, fd, EV_READ | EV_PERSIST, on_sink, s);
    assert_non_null(s->ev);
    event_add(s->ev, NULL);
}

/* A blocked write waits on the write event; write_cb comes once the output
 * drained to write_low, and not at all for output the socket took at once. */
static void test_write_low(void **state)
{
    struct event_base *base = event_base_new();
    struct probe p = {0};
    struct sink s = {0};
    size_t total = 1 << 20;
    int fd[2];

    nonblocking_pair(fd);
    struct io *io = probe_io(&p, base, fd[0]);
    io->write_low = 256 * 1024;
    evbuffer_add(io->out, "small", 5);
    io_flush(io);
    run_ms(base, 20);
    assert_int_equal(p.writes, 0);
    char small[5];
    assert_int_equal(read(fd[1], small, sizeof(small)), 5);

    add_bytes(io->out, total);
    io_flush(io);
    assert_true(io_pending_out(io) > io->write_low); /* the socket refused the rest */
    assert_true(io->wev_on);
    run_ms(base, 20);
    assert_int_equal(p.writes, 0); /* nobody reads: nothing drains */

    sink_start(&s, base, fd[1], total);
    run_until_break(base);
    assert_true(p.writes >= 1);
    assert_true(p.pending_at_write <= io->write_low);
    assert_int_equal(io_pending_out(io), 0);
    assert_false(io->wev_on); /* write interest goes with the last byte */
    assert_int_equal(p.events, 0);
    event_free(s.ev);
    io_free(io);
    close(fd[1]);
    event_base_free(base);
}

/* A write that fails inside io_flush is not reported on the caller's stack
 * (it is in the middle of its work) but from the loop, once, as IO_ERROR. */
static void test_flush_error_from_loop(void **state)
{
    struct event_base *base = event_base_new();
    struct probe p = {0};
    int fd[2];

    nonblocking_pair(fd);
    struct io *io = probe_io(&p, base, fd[0]);
    close(fd[1]);
    evbuffer_add(io->out, "lost", 4);
    p.in_caller = true;
    io_flush(io);
    p.in_caller = false;
    assert_false(p.called_in_caller);
    assert_int_equal(p.events, 0);
    p.break_on_event = true;
    run_until_break(base);
    assert_int_equal(p.events, 1);
    assert_int_equal(p.what, IO_ERROR);
    assert_int_equal(p.err, EPIPE);
    run_ms(base, 30);
    assert_int_equal(p.events, 1);
    assert_int_equal(p.reads, 0);
    io_free(io);
    event_base_free(base);
}

/* The peer half-closes (EOF reported), then resets while output waits for
 * it: the failed write is reported too, once, as IO_ERROR after the EOF, and
 * write interest goes (the event would otherwise fire for ever). */
static void test_error_after_eof(void **state)
{
    struct event_base *base = event_base_new();
    struct probe p = {0};
    struct linger lg = {1, 0};
    int fd[2];

    tcp_pair(fd, 4096);
    struct io *io = probe_io(&p, base, fd[0]);
    p.break_on_event = true;
    assert_int_equal(shutdown(fd[1], SHUT_WR), 0);
    run_until_break(base);
    assert_int_equal(p.what, IO_EOF);
    add_bytes(io->out, 4 << 20);
    io_flush(io);
    assert_true(io->wev_on); /* the peer reads nothing: output waits */
    assert_int_equal(setsockopt(fd[1], SOL_SOCKET, SO_LINGER, &lg, sizeof(lg)), 0);
    close(fd[1]); /* a reset */
    run_until_break(base);
    assert_int_equal(p.events, 2);
    assert_int_equal(p.what, IO_ERROR);
    assert_true(io_failed(io));
    assert_false(io->wev_on);
    run_ms(base, 30);
    assert_int_equal(p.events, 2);
    io_free(io);
    event_base_free(base);
}

/* What io's first read asks the socket for: the space an empty evbuffer
 * reserves for READ_SIZE bytes. */
static size_t first_read_ask(size_t read_size)
{
    struct evbuffer *b = evbuffer_new();
    struct evbuffer_iovec v[2];
    int n = evbuffer_reserve_space(b, (ev_ssize_t)read_size, v, 2);
    size_t ask = 0;

    for (int i = 0; i < n; i++)
        ask += v[i].iov_len;
    evbuffer_free(b);
    return ask;
}

/* Data then EOF: the data goes to read_cb first, EOF is reported once.
 * Twice: EOF found in a later round (the data ended a read short), and in
 * the same round (the data filled the read exactly, the next read saw EOF). */
static void test_eof_after_data(void **state)
{
    struct event_base *base = event_base_new();
    char data[65536];
    int fd[2];

    memset(data, 'e', sizeof(data));
    for (int same_round = 0; same_round < 2; same_round++) {
        struct probe p = {0};
        nonblocking_pair(fd);
        struct io *io = probe_io(&p, base, fd[0]);
        size_t n = same_round ? first_read_ask(io->read_size) : 10;
        assert_true(n <= sizeof(data));
        p.consume = true;
        p.break_on_event = true;
        write_all(fd[1], data, n);
        close(fd[1]);
        run_until_break(base);
        assert_int_equal(p.what, IO_EOF);
        assert_int_equal(p.got_at_event, n);
        run_ms(base, 30);
        assert_int_equal(p.events, 1);
        io_free(io);
    }
    event_base_free(base);
}

/* io_free from inside read_cb (with EOF pending behind the data), event_cb
 * (EOF, and an error from io_flush) and write_cb: no callback after it, and
 * nothing touched after the memory went (ASan watches). */
static void test_free_in_callbacks(void **state)
{
    struct event_base *base = event_base_new();
    int fd[2];

    struct probe r = {0};
    nonblocking_pair(fd);
    probe_io(&r, base, fd[0]);
    r.free_on_read = r.break_on_read = true;
    write_all(fd[1], "bye", 3);
    close(fd[1]);
    run_until_break(base);
    run_ms(base, 30);
    assert_null(r.io);
    assert_int_equal(r.reads, 1);
    assert_int_equal(r.events, 0);

    struct probe e = {0};
    nonblocking_pair(fd);
    probe_io(&e, base, fd[0]);
    e.free_on_event = e.break_on_event = true;
    close(fd[1]);
    run_until_break(base);
    run_ms(base, 30);
    assert_null(e.io);
    assert_int_equal(e.events, 1);
    assert_int_equal(e.what, IO_EOF);

    struct probe f = {0};
    nonblocking_pair(fd);
    probe_io(&f, base, fd[0]);
    f.free_on_event = f.break_on_event = true;
    close(fd[1]);
    evbuffer_add(f.io->out, "x", 1);
    io_flush(f.io);
    run_until_break(base);
    run_ms(base, 30);
    assert_null(f.io);
    assert_int_equal(f.events, 1);
    assert_int_equal(f.what, IO_ERROR);

    struct probe w = {0};
    struct sink s = {0};
    nonblocking_pair(fd);
    probe_io(&w, base, fd[0]);
    w.free_on_write = w.break_on_write = true;
    add_bytes(w.io->out, 1 << 20);
    io_flush(w.io);
    assert_true(w.io->wev_on);
    sink_start(&s, base, fd[1], 0);
    run_until_break(base);
    event_free(s.ev);
    run_ms(base, 30);
    assert_null(w.io);
    assert_int_equal(w.writes, 1);
    assert_int_equal(w.events, 0);
    close(fd[1]);
    event_base_free(base);
}

/* ---- send timeout ------------------------------------------------------------- */

/* A loopback TCP connection whose accepted end (the io) has output waiting
 * that the client's receive buffer cannot take, and a send timeout of MS. */
static struct io *blocked_sender(struct probe *p, struct event_base *base, int fd[2], uint32_t ms)
{
    int sndbuf = 2 << 20; /* the kernel doubles it */

    tcp_pair(fd, 64 * 1024);
    assert_int_equal(setsockopt(fd[0], SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof(sndbuf)), 0);
    struct io *io = probe_io(p, base, fd[0]);
    io_set_send_timeout(io, ms);
    add_bytes(io->out, 8u << 20);
    io_flush(io);
    assert_true(io->wev_on);
    return io;
}

/* A peer that reads nothing is let go: IO_ERROR with ETIMEDOUT. */
static void test_send_timeout_stopped_reader(void **state)
{
    struct event_base *base = event_base_new();
    struct probe p = {0};
    int fd[2];

    struct io *io = blocked_sender(&p, base, fd, 200);
    p.break_on_event = true;
    run_until_break(base);
    assert_int_equal(p.events, 1);
    assert_int_equal(p.what, IO_ERROR);
    assert_int_equal(p.err, ETIMEDOUT);
    io_free(io);
    close(fd[1]);
    event_base_free(base);
}

#define SLOW_STEP 16384  /* bytes the slow reader takes ... */
#define SLOW_EVERY_MS 10 /* ... this often */

static void on_slow_read(evutil_socket_t fd, short what, void *arg)
{
    struct sink *s = arg;
    struct timeval tv = {0, SLOW_EVERY_MS * 1000};

    sink_read(s);
    evtimer_add(s->ev, &tv);
}

/* A peer that reads 16 KiB every 10 ms shrinks the send queue without
 * making the socket writable within the timeout (the kernel calls it
 * writable only once a third of its 4 MiB buffer is free): it is not cut.
 * (The kernel moves bytes to a small receive buffer a segment at a time,
 * so a reader much slower than this makes no progress for 200 ms.) */
static void test_send_timeout_slow_reader(void **state)
{
    struct event_base *base = event_base_new();
    struct probe p = {0};
    struct sink s = {0};
    struct timeval now = {0, 0};
    int fd[2];

    struct io *io = blocked_sender(&p, base, fd, 500);
    s.base = base;
    s.fd = fd[1];
    s.step = SLOW_STEP;
    s.want = 1 << 20;
    s.ev = evtimer_new(base, on_slow_read, &s);
    evtimer_add(s.ev, &now);
    p.break_on_event = true;
    run_until_break(base);
    assert_int_equal(p.events, 0);
    assert_true(s.got >= s.want);
    event_free(s.ev);
    io_free(io);
    close(fd[1]);
    event_base_free(base);
}

/* ---- lingering close, connect, trigger ---------------------------------------- */

/* io_linger shuts the write side at once, drops what was read and what
 * still comes, without read_cb, and reports the peer's close as IO_EOF. */
static void test_linger(void **state)
{
    struct event_base *base = event_base_new();
    struct probe p = {0};
    char c;
    int fd[2];

    nonblocking_pair(fd);
    struct io *io = probe_io(&p, base, fd[0]);
    p.break_on_read = true;
    write_all(fd[1], "request", 7);
    run_until_break(base);
    assert_int_equal(evbuffer_get_length(io->in), 7);

    io_linger(io);
    assert_int_equal(evbuffer_get_length(io->in), 0);
    assert_int_equal(read(fd[1], &c, 1), 0); /* the peer sees our FIN */
    write_all(fd[1], "more input", 10);
    run_ms(base, 30);
    assert_int_equal(unread(fd[0]), 0); /* read and dropped */
    assert_int_equal(evbuffer_get_length(io->in), 0);
    assert_int_equal(p.reads, 1);
    assert_int_equal(p.events, 0);

    p.break_on_event = true;
    close(fd[1]);
    run_until_break(base);
    assert_int_equal(p.events, 1);
    assert_int_equal(p.what, IO_EOF);
    assert_int_equal(p.reads, 1);
    io_free(io);
    event_base_free(base);
}

/* A connect to a listener ends in IO_CONNECTED; to a port nobody listens
 * on, in IO_ERROR with ECONNREFUSED; both from the loop. */
static void test_connect(void **state)
{
    struct event_base *base = event_base_new();
    struct sockaddr_in a;
    int l = bound_socket(4, &a);
    struct probe ok = {.base = base, .break_on_event = true};

    ok.io = io_connect(base, (struct sockaddr *)&a, sizeof(a));
    assert_non_null(ok.io);
    io_setcb(ok.io, on_read, on_write, on_event, &ok);
    run_until_break(base);
    assert_int_equal(ok.events, 1);
    assert_int_equal(ok.what, IO_CONNECTED);
    int s = accept(l, NULL, NULL);
    assert_true(s >= 0);
    evbuffer_add(ok.io->out, "hi", 2);
    io_flush(ok.io);
    char buf[2];
    assert_int_equal(read(s, buf, 2), 2);
    close(s);
    close(l);
    io_free(ok.io);

    /* Bound but not listening: nobody else can take the port meanwhile. */
    int closed = bound_socket(-1, &a);
    struct probe no = {.base = base, .break_on_event = true};
    no.io = io_connect(base, (struct sockaddr *)&a, sizeof(a));
    assert_non_null(no.io); /* Linux: EINPROGRESS even on loopback */
    io_setcb(no.io, on_read, on_write, on_event, &no);
    run_until_break(base);
    assert_int_equal(no.events, 1);
    assert_int_equal(no.what, IO_ERROR);
    assert_int_equal(no.err, ECONNREFUSED);
    io_free(no.io);
    close(closed);
    event_base_free(base);
}

/* io_trigger_read calls read_cb again for input already held, from the
 * loop and not from the caller's stack; without input it calls nothing. */
static void test_trigger_read(void **state)
{
    struct event_base *base = event_base_new();
    struct probe p = {0};
    int fd[2];

    nonblocking_pair(fd);
    struct io *io = probe_io(&p, base, fd[0]);
    p.break_on_read = true;
    write_all(fd[1], "abc", 3);
    run_until_break(base);
    assert_int_equal(p.reads, 1);

    p.in_caller = true;
    io_trigger_read(io);
    p.in_caller = false;
    assert_int_equal(p.reads, 1);
    run_until_break(base);
    assert_false(p.called_in_caller);
    assert_int_equal(p.reads, 2);
    assert_int_equal(evbuffer_get_length(io->in), 3);

    p.break_on_read = false;
    run_ms(base, 30); /* nothing new on the socket: no call */
    assert_int_equal(p.reads, 2);
    evbuffer_drain(io->in, 3);
    io_trigger_read(io);
    run_ms(base, 30);
    assert_int_equal(p.reads, 2);
    io_free(io);
    close(fd[1]);
    event_base_free(base);
}

/* ---- TLS ------------------------------------------------------------------------ */

static char certdir[256];

/* Certificates made by certs/gen-dev-certs.sh into a temp directory. */
static int setup_certs(void **state)
{
    const char *script = getenv("FG_CERT_SCRIPT");
    char cmd[600];

    snprintf(certdir, sizeof(certdir), "%s/fg-test-io-XXXXXX",
             getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
    if (mkdtemp(certdir) == NULL)
        return -1;
    snprintf(cmd, sizeof(cmd), "sh %s %s/dev >/dev/null",
             script ? script : "certs/gen-dev-certs.sh", certdir);
    return system(cmd) == 0 ? 0 : -1;
}

static int teardown_certs(void **state)
{
    char cmd[600];

    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", certdir);
    return system(cmd) == 0 ? 0 : -1;
}

/* The client's side of a TLS test: an OpenSSL client on the peer socket,
 * stepped between non-blocking rounds of the server's loop. */
struct tls_client {
    SSL *ssl;
    size_t got;   /* application bytes read */
    char buf[64]; /* the first of them */
};

static uint64_t now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* Alternate the server's loop and STEP(client) until STEP says done; fail
 * after GUARD_MS. */
static void drive(struct event_base *base, struct tls_client *c, bool (*step)(struct tls_client *c))
{
    uint64_t end = now_ms() + GUARD_MS;
    struct pollfd pfd = {SSL_get_fd(c->ssl), POLLIN, 0};

    while (!step(c)) {
        if (now_ms() > end)
            fail_msg("the TLS exchange did not end within %d ms", GUARD_MS);
        event_base_loop(base, EVLOOP_NONBLOCK);
        poll(&pfd, 1, 2);
    }
}

static bool client_handshake(struct tls_client *c)
{
    int r = SSL_do_handshake(c->ssl);
    int e = SSL_get_error(c->ssl, r);

    if (r != 1 && e != SSL_ERROR_WANT_READ && e != SSL_ERROR_WANT_WRITE)
        fail_msg("client handshake failed (%d)", e);
    return r == 1;
}

/* Read what there is; done once 1 MiB has come. */
static bool client_read_mib(struct tls_client *c)
{
    char buf[16384];
    int n;

    while ((n = SSL_read(c->ssl, buf, sizeof(buf))) > 0) {
        if (c->got < sizeof(c->buf))
            memcpy(c->buf + c->got, buf,
                   (size_t)n < sizeof(c->buf) - c->got ? (size_t)n : sizeof(c->buf) - c->got);
        c->got += (size_t)n;
    }
    if (SSL_get_error(c->ssl, n) != SSL_ERROR_WANT_READ)
        fail_msg("client read failed (%d)", SSL_get_error(c->ssl, n));
    return c->got >= (1u << 20);
}

static bool step_done(struct tls_client *c)
{
    return true;
}

/* Over TLS: the handshake ends in IO_CONNECTED, bytes go both ways, a
 * large response that blocks drains with write_cb, and the client's
 * close_notify after its last records is IO_EOF after their bytes. */
static void test_tls_round_trip(void **state)
{
    struct event_base *base = event_base_new();
    struct fg_config cfg;
    struct fg_cert cert = {0};
    char err[256] = "";
    struct probe p = {0};
    struct tls_client c = {0};
    char crt[300], key[300];
    int fd[2];

    memset(&cfg, 0, sizeof(cfg));
    snprintf(crt, sizeof(crt), "%s/dev/server.crt", certdir);
    snprintf(key, sizeof(key), "%s/dev/server.key", certdir);
    cert.cert_file = crt;
    cert.key_file = key;
    cfg.tls.certs = &cert;
    cfg.tls.ncerts = 1;
    cfg.tls.min_version = TLS1_2_VERSION;
    cfg.tls.ciphers = "";
    struct tls_ctxset *set = tls_build(&cfg, NULL, err, sizeof(err));
    if (set == NULL)
        fail_msg("tls_build: %s", err);
    SSL_CTX *cctx = SSL_CTX_new(TLS_client_method());
    assert_non_null(cctx);

    int sndbuf = 64 * 1024;
    tcp_pair(fd, 64 * 1024); /* small buffers: 1 MiB does not fit in them */
    assert_int_equal(setsockopt(fd[0], SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof(sndbuf)), 0);
    p.base = base;
    p.io = io_new(base, fd[0], tls_new_ssl(set));
    assert_non_null(p.io);
    io_setcb(p.io, on_read, on_write, on_event, &p);
    io_enable_read(p.io);
    c.ssl = SSL_new(cctx);
    SSL_set_fd(c.ssl, fd[1]);
    SSL_set_connect_state(c.ssl);
    drive(base, &c, client_handshake);
    p.break_on_event = true;
    run_until_break(base);
    assert_int_equal(p.events, 1);
    assert_int_equal(p.what, IO_CONNECTED);

    p.break_on_event = false;
    p.break_on_read = true;
    assert_int_equal(SSL_write(c.ssl, "hello tls", 9), 9);
    run_until_break(base);
    char got[16] = "";
    assert_int_equal(evbuffer_remove(p.io->in, got, sizeof(got) - 1), 9);
    assert_string_equal(got, "hello tls");

    evbuffer_add(p.io->out, "response", 8);
    add_bytes(p.io->out, (1u << 20) - 8);
    io_flush(p.io);
    assert_true(io_pending_out(p.io) > 0); /* the client reads nothing yet */
    drive(base, &c, client_read_mib);
    assert_int_equal(c.got, 1u << 20);
    assert_memory_equal(c.buf, "response", 8);
    drive(base, &c, step_done); /* let write_cb run */
    run_ms(base, 20);
    assert_true(p.writes >= 1);
    assert_int_equal(io_pending_out(p.io), 0);

    p.break_on_read = false;
    p.consume = true;
    p.got = 0;
    p.break_on_event = true;
    /* Two records and close_notify: OpenSSL reads ahead, so the last of
     * them can sit inside it with no socket event to announce it. */
    assert_int_equal(SSL_write(c.ssl, "by", 2), 2);
    assert_int_equal(SSL_write(c.ssl, "e", 1), 1);
    SSL_shutdown(c.ssl);
    run_until_break(base);
    assert_int_equal(p.events, 2);
    assert_int_equal(p.what, IO_EOF);
    assert_int_equal(p.got_at_event, 3);

    io_free(p.io);
    SSL_free(c.ssl);
    close(fd[1]);
    SSL_CTX_free(cctx);
    tls_free(set);
    ERR_clear_error();
    event_base_free(base);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_round_trip),
        cmocka_unit_test(test_read_high),
        cmocka_unit_test(test_write_low),
        cmocka_unit_test(test_flush_error_from_loop),
        cmocka_unit_test(test_eof_after_data),
        cmocka_unit_test(test_error_after_eof),
        cmocka_unit_test(test_free_in_callbacks),
        cmocka_unit_test(test_send_timeout_stopped_reader),
        cmocka_unit_test(test_send_timeout_slow_reader),
        cmocka_unit_test(test_linger),
        cmocka_unit_test(test_connect),
        cmocka_unit_test(test_trigger_read),
        cmocka_unit_test_setup_teardown(test_tls_round_trip, setup_certs, teardown_certs),
    };

    signal(SIGPIPE, SIG_IGN); /* a write to a closed peer is EPIPE, as in flowgate */
    return cmocka_run_group_tests(tests, NULL, NULL);
}
