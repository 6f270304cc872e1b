/*
 * conn.c - HTTP/1.1 client connections: accept, PROXY header, TLS, finding
 * request heads, keep-alive, closing.
 *
 * Every callback that may close the connection holds a reference for its
 * duration (conn_hold/conn_release): conn_close() only marks the connection,
 * and the memory goes when the last reference is dropped, so no code up the
 * stack ever touches freed memory. What a request does is req.c's: this
 * file carries it (struct req_conn_ops) and passes the socket's events on.
 */
#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>

#include <event2/buffer.h>
#include <openssl/ssl.h>

#include "conn.h"
#include "h2.h"
#include "proxy.h"
#include "proxyproto.h"
#include "req.h"
#include "tls.h"
#include "worker.h"

static void conn_read_cb(struct io *io, void *arg);
static void conn_write_cb(struct io *io, void *arg);
static void conn_event_cb(struct io *io, int what, void *arg);
static void conn_timer_cb(evutil_socket_t fd, short what, void *arg);
static void process_input(struct conn *c);
static void conn_start(struct conn *c);
static void conn_proxy_header_cb(evutil_socket_t fd, short what, void *arg);

const char *conn_state_str(enum conn_state st)
{
    switch (st) {
    case CONN_PROXY_HEADER: return "proxy_header";
    case CONN_HANDSHAKE: return "handshake";
    case CONN_READ_HEAD: return "read_head";
    case CONN_IDLE: return "idle";
    case CONN_H2: return "h2";
    case CONN_REQUEST: return "request";
    case CONN_CLOSING: return "closing";
    case CONN_LINGER: return "linger";
    }
    return "?";
}

void conn_hold(struct conn *c)
{
    c->refs++;
}

/* How the connection's end cuts a request still in flight. */
static enum req_end end_reason(const struct conn *c)
{
    if (c->w->tearing_down)
        return REQ_END_SHUTDOWN;
    if (c->io && c->io->err == ETIMEDOUT)
        return REQ_END_SEND_TIMEOUT;
    return REQ_END_CLIENT_CLOSED;
}

static void conn_free(struct conn *c)
{
    struct worker *w = c->w;

    if (c->r) {
        req_finish(c->r, end_reason(c)); /* a no-op once it was finished */
        req_put(c->r);
        c->r = NULL;
    }
    if (c->h2) {
        h2_free(c->h2, end_reason(c));
        c->h2 = NULL;
    }
    event_del(&c->timer);
    if (c->pp_ev) {
        event_free(c->pp_ev);
        close(c->fd);
    }
    if (c->io)
        io_free(c->io); /* closes the socket, frees the SSL */
    if (c->prev)
        c->prev->next = c->next;
    else
        w->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    worker_snap_release(w, c->snap);
    free(c);
    worker_conn_closed(w);
}

/* The last reference frees a closed connection, and gives an idle one's
 * request buffer back to the worker: a callback up the stack may still
 * touch the request that just finished, never after this. */
void conn_release(struct conn *c)
{
    if (--c->refs > 0)
        return;
    if (c->closed) {
        conn_free(c);
    } else if (c->state == CONN_H2) {
        h2_unwound(c->h2); /* the stack is clear: the streams' news */
    } else if (c->state == CONN_IDLE && c->r != NULL) {
        req_put(c->r);
        c->r = NULL;
    }
}

static void conn_set_timer(struct conn *c, uint32_t ms)
{
    struct timeval tv = {.tv_sec = ms / 1000, .tv_usec = (ms % 1000) * 1000};
    event_add(&c->timer, &tv);
}

static void conn_pause_read(struct conn *c)
{
    if (!c->read_paused) {
        c->read_paused = true;
        io_disable_read(c->io);
    }
}

static void conn_resume_read(struct conn *c)
{
    if (c->read_paused && !c->closed) {
        c->read_paused = false;
        io_enable_read(c->io);
    }
}

#define LINGER_MS 5000 /* longest a closing connection reads and drops the client's bytes */

/* The last bytes are out: the request they ended is finished, then the
 * write side shut, then what the client still sends is read and dropped
 * until it closes or LINGER_MS pass (RFC 9112 9.6). */
static void closing_step(struct conn *c)
{
    io_flush(c->io);
    if (io_pending_out(c->io) > 0 && !io_failed(c->io))
        return; /* conn_write_cb comes back once the socket took them */
    if (c->r && !io_failed(c->io))
        req_finish(c->r, REQ_END_ABORTED); /* a no-op once it was finished */
    if (c->w->stopping || io_ended(c->io)) {
        /* Leaving, or the client already closed its side: nothing to
         * linger for. */
        conn_close(c, false);
        return;
    }
    c->state = CONN_LINGER;
    io_linger(c->io);
    conn_set_timer(c, LINGER_MS);
}

void conn_close(struct conn *c, bool flush)
{
    if (c->closed)
        return;
    if (flush && c->io && !io_failed(c->io) && c->state != CONN_CLOSING &&
        c->state != CONN_LINGER) {
        /* The last response goes out first; reading stops: nothing the
         * client sends now can matter. The client's pace is bounded by the
         * socket's send timeout, never by a total. */
        c->state = CONN_CLOSING;
        conn_pause_read(c);
        c->io->write_low = 0;
        event_del(&c->timer);
        closing_step(c);
        return;
    }
    c->closed = true;
    if (c->refs == 0)
        conn_free(c);
    else if (c->io)
        io_disable_read(c->io);
}

/* ---- what a request sees of its connection (struct req_conn_ops) -------- */

static void ops_hold(void *conn)
{
    conn_hold(conn);
}

static void ops_release(void *conn)
{
    conn_release(conn);
}

static void ops_flush(void *conn)
{
    struct conn *c = conn;

    if (!c->closed)
        io_flush(c->io);
}

static void ops_pause_read(void *conn)
{
    conn_pause_read(conn);
}

static void ops_resume_read(void *conn)
{
    conn_resume_read(conn);
}

static void ops_set_timer(void *conn, uint32_t ms)
{
    conn_set_timer(conn, ms);
}

static void ops_clear_timer(void *conn)
{
    event_del(&((struct conn *)conn)->timer);
}

static size_t ops_pending_out(void *conn)
{
    struct conn *c = conn;

    return c->io ? io_pending_out(c->io) : 0;
}

static void request_sent(struct conn *c);

/* The response is complete in the output: it goes out, then the request is
 * finished (request_sent). Nothing the client sends meanwhile is read when
 * the connection is to close. */
static void ops_done(void *conn)
{
    struct conn *c = conn;

    event_del(&c->timer);
    if (req_ends_connection(c->r))
        conn_pause_read(c);
    c->io->write_low = 0;
    io_flush(c->io);
    if (io_pending_out(c->io) == 0)
        request_sent(c);
}

static void ops_close(void *conn, bool flush)
{
    conn_close(conn, flush);
}

static const char *ops_tls_version(void *conn)
{
    struct conn *c = conn;

    return c->io && c->io->ssl ? tls_version_str(c->io->ssl) : NULL;
}

static const char *ops_tls_sni(void *conn)
{
    struct conn *c = conn;

    return c->io && c->io->ssl ? SSL_get_servername(c->io->ssl, TLSEXT_NAMETYPE_host_name) : NULL;
}

static const struct req_conn_ops conn_ops = {
    .hold = ops_hold,
    .release = ops_release,
    .flush = ops_flush,
    .pause_read = ops_pause_read,
    .resume_read = ops_resume_read,
    .set_timer = ops_set_timer,
    .clear_timer = ops_clear_timer,
    .pending_out = ops_pending_out,
    .done = ops_done,
    .close = ops_close,
    .tls_version = ops_tls_version,
    .tls_sni = ops_tls_sni,
};

static struct io *conn_make_io(struct conn *c, int fd)
{
    SSL *ssl = NULL;

    if (c->tls && (ssl = tls_new_ssl(c->snap->tls)) == NULL)
        return NULL;
    struct io *io = io_new(c->w->base, fd, ssl);
    if (io == NULL && ssl)
        SSL_free(ssl);
    return io;
}

static void peer_text(struct conn *c)
{
    const struct sockaddr *sa = &c->peer.sa;

    c->peer_ip[0] = '\0';
    if (sa->sa_family == AF_INET) {
        inet_ntop(AF_INET, &((const struct sockaddr_in *)sa)->sin_addr, c->peer_ip,
                  sizeof(c->peer_ip));
    } else if (sa->sa_family == AF_INET6) {
        const struct in6_addr *a = &((const struct sockaddr_in6 *)sa)->sin6_addr;
        if (IN6_IS_ADDR_V4MAPPED(a))
            inet_ntop(AF_INET, &a->s6_addr[12], c->peer_ip, sizeof(c->peer_ip));
        else
            inet_ntop(AF_INET6, a, c->peer_ip, sizeof(c->peer_ip));
    }
}

void conn_accept(struct listener *l, int fd, struct sockaddr *sa, socklen_t salen)
{
    struct worker *w = l->w;
    struct conn *c = calloc(1, sizeof(*c));
    int one = 1;

    if (c == NULL) {
        close(fd);
        worker_conn_closed(w);
        return;
    }
    c->w = w;
    c->local_port = l->port;
    c->fd = fd;
    c->serial = ++w->conn_serial;
    c->tls = l->kind == LISTENER_HTTPS;
    c->snap = worker_snap_hold(w);
    c->cfg = c->snap->cfg;
    memcpy(&c->peer, sa, salen < sizeof(c->peer) ? salen : sizeof(c->peer));
    peer_text(c);
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    c->next = w->conns;
    if (w->conns)
        w->conns->prev = c;
    w->conns = c;
    evtimer_assign(&c->timer, w->base, conn_timer_cb, c);
    conn_set_timer(c, c->cfg->limits.header_timeout_ms);
    if (c->cfg->proxy_protocol) {
        /* The balancer's PROXY header comes before anything else, the TLS
         * ClientHello included: read it from the socket first. */
        c->state = CONN_PROXY_HEADER;
        c->pp_ev = event_new(w->base, fd, EV_READ | EV_PERSIST, conn_proxy_header_cb, c);
        if (c->pp_ev == NULL || event_add(c->pp_ev, NULL) < 0) {
            close(fd);
            c->closed = true;
            conn_free(c);
        }
        return;
    }
    conn_start(c);
}

/* Wrap the socket in its io (TLS or plain) and start reading. */
static void conn_start(struct conn *c)
{
    c->io = conn_make_io(c, c->fd);
    if (c->io == NULL) {
        close(c->fd);
        c->closed = true;
        if (c->refs == 0)
            conn_free(c);
        return;
    }
    c->state = c->tls ? CONN_HANDSHAKE : CONN_READ_HEAD;
    io_setcb(c->io, conn_read_cb, conn_write_cb, conn_event_cb, c);
    c->io->read_high = PROXY_READ_HIGH;
    c->io->write_low = PROXY_WRITE_LOW;
    io_set_send_timeout(c->io, c->cfg->limits.send_timeout_ms);
    io_enable_read(c->io);
}

/*
 * The PROXY header (listen.proxy_protocol): peeked, parsed, then consumed
 * exactly, so the bytes after it stay in the socket for TLS or HTTP. The
 * address it gives replaces the peer's when the peer is a trusted proxy, or
 * when no trusted_proxies are configured (every connection then comes from
 * the balancer). A connection without a valid header is closed: it did not
 * come through the balancer.
 */
static void conn_proxy_header_cb(evutil_socket_t fd, short what, void *arg)
{
    struct conn *c = arg;
    unsigned char buf[PROXYPROTO_MAX];
    enum proxyproto_result res;
    struct sockaddr_storage src;
    socklen_t srclen = 0;

    ssize_t n = recv(fd, buf, sizeof(buf), MSG_PEEK);
    if (n < 0 && (errno == EAGAIN || errno == EINTR))
        return;
    ssize_t len = n > 0 ? proxyproto_parse(buf, (size_t)n, &res, &src, &srclen) : -1;
    if (len == -2 && n < (ssize_t)sizeof(buf))
        return; /* wait for the rest, under the header timer */
    event_free(c->pp_ev);
    c->pp_ev = NULL;
    if (len < 0 || recv(fd, buf, (size_t)len, 0) != len) {
        close(fd);
        c->closed = true;
        conn_free(c);
        return;
    }
    if (res == PROXYPROTO_ADDR &&
        (c->cfg->trusted_proxies.n == 0 ||
         cidr_set_contains(&c->cfg->trusted_proxies, &c->peer.sa))) {
        memcpy(&c->peer, &src, srclen < sizeof(c->peer) ? srclen : sizeof(c->peer));
        peer_text(c);
    }
    conn_start(c);
}

/* Between requests, a connection moves to the worker's current snapshot
 * (a reload happened since its last request). A held request buffer sized
 * for the old limits goes back. */
static void conn_refresh_snap(struct conn *c)
{
    if (c->snap == c->w->snap)
        return;
    worker_snap_release(c->w, c->snap);
    c->snap = worker_snap_hold(c->w);
    c->cfg = c->snap->cfg;
    if (c->r && c->r->rb->max_headers < c->cfg->limits.max_headers) {
        req_put(c->r);
        c->r = NULL;
    }
}

/* A request begins: it takes a buffer from the worker, unless it follows
 * another in a pipeline (the buffer is still held). NULL when out of
 * memory (the connection is then closed). */
static struct req *conn_begin_request(struct conn *c)
{
    conn_refresh_snap(c);
    if (c->r == NULL && (c->r = req_get(c->w, c->cfg->limits.max_headers)) == NULL) {
        conn_close(c, false);
        return NULL;
    }
    struct req *r = c->r;
    r->ops = &conn_ops;
    r->conn = c;
    r->in = c->io->in;
    r->out = c->io->out;
    r->w = c->w;
    r->snap = c->snap;
    r->cfg = c->cfg;
    r->peer_ip = c->peer_ip;
    r->peer = &c->peer.sa;
    r->local_port = c->local_port;
    r->tls = c->tls;
    r->h2 = false;
    req_begin(r);
    c->state = CONN_REQUEST;
    return r;
}

/* Bytes of the head seen so far decide: 408 when a partial head timed out,
 * a silent close when nothing was sent (idle keep-alive, preconnect). */
static void head_timeout(struct conn *c)
{
    if (c->state != CONN_READ_HEAD || evbuffer_get_length(c->io->in) == 0) {
        conn_close(c, false);
        return;
    }
    struct req *r = conn_begin_request(c);
    if (r != NULL)
        req_refuse(r, FG_ERR_TIMEOUT, NULL);
}

static void conn_timer_cb(evutil_socket_t fd, short what, void *arg)
{
    struct conn *c = arg;

    conn_hold(c);
    switch (c->state) {
    case CONN_HANDSHAKE:
    case CONN_READ_HEAD:
    case CONN_IDLE:
        head_timeout(c);
        break;
    case CONN_REQUEST:
        req_timeout(c->r);
        break;
    case CONN_H2:
        h2_timeout(c->h2);
        break;
    case CONN_PROXY_HEADER:
    case CONN_CLOSING:
    case CONN_LINGER:
        conn_close(c, false);
        break;
    }
    conn_release(c);
}

static void conn_event_cb(struct io *io, int what, void *arg)
{
    struct conn *c = arg;

    conn_hold(c);
    if (what & IO_CONNECTED) {
        /* TLS handshake complete. */
        metrics_bump(&c->w->stats.tls_handshakes);
        if (tls_alpn_is_h2(io->ssl)) {
            if (h2_start(c) < 0)
                conn_close(c, false);
        } else {
            c->state = CONN_READ_HEAD;
            process_input(c);
        }
    } else if (c->state == CONN_REQUEST &&
               (what == IO_EOF || ((what & IO_EOF) && c->r->state == REQ_TUNNEL))) {
        req_client_eof(c->r);
    } else if (what & (IO_EOF | IO_ERROR)) {
        if (c->state == CONN_HANDSHAKE)
            metrics_bump(&c->w->stats.tls_failures);
        conn_close(c, false);
    }
    conn_release(c);
}

static void conn_read_cb(struct io *io, void *arg)
{
    struct conn *c = arg;

    conn_hold(c);
    switch (c->state) {
    case CONN_READ_HEAD:
    case CONN_IDLE:
        process_input(c);
        break;
    case CONN_REQUEST:
        req_readable(c->r);
        break;
    case CONN_H2:
        h2_readable(c->h2);
        break;
    case CONN_CLOSING:
        evbuffer_drain(io->in, evbuffer_get_length(io->in));
        break;
    case CONN_PROXY_HEADER:
    case CONN_HANDSHAKE:
    case CONN_LINGER:
        break;
    }
    conn_release(c);
}

static void conn_write_cb(struct io *io, void *arg)
{
    struct conn *c = arg;

    conn_hold(c);
    switch (c->state) {
    case CONN_CLOSING:
        closing_step(c);
        break;
    case CONN_REQUEST:
        if (c->r->state == REQ_SENDING) {
            if (io_pending_out(io) == 0)
                request_sent(c);
        } else {
            req_writable(c->r);
        }
        break;
    case CONN_READ_HEAD:
    case CONN_IDLE:
        process_input(c); /* a pipelining client that did not read has now */
        break;
    case CONN_H2:
        h2_writable(c->h2);
        break;
    case CONN_PROXY_HEADER:
    case CONN_HANDSHAKE:
    case CONN_LINGER:
        break;
    }
    conn_release(c);
}

/* Look for a complete head in the input; hand it to a new request, or
 * refuse what cannot become one. */
static void process_input(struct conn *c)
{
    struct evbuffer *in = c->io->in;
    size_t len = evbuffer_get_length(in);
    size_t max = c->cfg->limits.max_header_bytes;

    if (c->closed || len == 0)
        return;
    if (io_pending_out(c->io) > PROXY_WRITE_HIGH)
        return; /* a pipelining client that does not read: wait (conn_write_cb) */
    if (c->state == CONN_IDLE) {
        c->state = CONN_READ_HEAD;
        conn_set_timer(c, c->cfg->limits.header_timeout_ms);
    }
    size_t n = len < max ? len : max;
    const char *data = (const char *)evbuffer_pullup(in, (ssize_t)n);
    ssize_t end = h1_head_end(data, n);
    if (end == -2 && len < max)
        return; /* wait for more, under the header timer */
    event_del(&c->timer);
    struct req *r = conn_begin_request(c);
    if (r == NULL)
        return;
    if (end == -2)
        req_refuse(r, FG_ERR_HEADERS_TOO_LARGE, "head too large");
    else if (end < 0)
        req_refuse(r, FG_ERR_BAD_REQUEST, "malformed head");
    else
        req_head(r, (size_t)end);
}

/* The response's last byte went to the socket: the request is finished,
 * then the next one on this connection is served, or it closes. */
static void request_sent(struct conn *c)
{
    struct req *r = c->r;
    bool ends = req_ends_connection(r);

    req_finish(r, REQ_END_SENT);
    c->requests++;
    if (ends) {
        conn_close(c, true);
        return;
    }
    c->io->write_low = PROXY_WRITE_LOW;
    conn_resume_read(c);
    if (evbuffer_get_length(c->io->in) > 0) {
        /* A pipelined request is already here. Serve it from the loop, not
         * from this stack: a long pipeline must not recurse. */
        c->state = CONN_READ_HEAD;
        conn_set_timer(c, c->cfg->limits.header_timeout_ms);
        io_trigger_read(c->io);
    } else {
        /* Idle: the request and its buffers go back to the worker until
         * the next request arrives, so an idle connection holds none
         * (once no callback holds it: conn_release). */
        c->state = CONN_IDLE;
        conn_set_timer(c, c->cfg->limits.keepalive_timeout_ms);
        conn_hold(c);
        conn_release(c);
    }
}
