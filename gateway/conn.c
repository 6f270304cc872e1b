/*
 * conn.c - client connections: accept, TLS, request heads, stages, finish.
 *
 * Every callback that may close the connection holds a reference for its
 * duration (conn_hold/conn_release): conn_close() only marks the connection,
 * and the memory goes when the last reference is dropped, so no code up the
 * stack ever touches freed memory.
 */
#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>

#include <event2/buffer.h>
#include <openssl/ssl.h>

#include "conn.h"
#include "cors.h"
#include "jwtauth.h"
#include "log.h"
#include "preview.h"
#include "proxy.h"
#include "proxyproto.h"
#include "ratelimit.h"
#include "respond.h"
#include "route.h"
#include "upstream.h"
#include "uri.h"
#include "worker.h"

static enum stage_verdict route_checks(struct req *r);
static const struct stage route_stage = {"route", route_checks};

/* The stages after routing, in order.
 * CORS comes first, before the route's own checks: a preflight is answered
 * before a method list, a token or a limit is looked at, and flowgate's 404
 * and 405 carry the CORS headers like every other response. */
/* The preview stage comes last: a request refused by a token or a limit
 * never costs a DNS query (random preview names cannot flood the resolver
 * past the rate limit). */
const struct stage *const conn_stages[] = {&cors_stage,      &route_stage,   &jwtauth_stage,
                                           &ratelimit_stage, &preview_stage, NULL};

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
    case CONN_STAGES: return "stages";
    case CONN_PROXYING: return "proxying";
    case CONN_RESPONDING: return "responding";
    case CONN_CLOSING: return "closing";
    case CONN_FLUSHING: return "flushing";
    case CONN_LINGER: return "linger";
    case CONN_TUNNEL: return "tunnel";
    }
    return "?";
}

void conn_hold(struct conn *c)
{
    c->refs++;
}

static void req_release_pool(struct req *r)
{
    if (r->pool_held) {
        r->pool_held = false;
        upstream_pool_release(r->pool);
    }
    r->pool = NULL;
}

static void log_request(struct req *r);

static void conn_free(struct conn *c)
{
    struct worker *w = c->w;

    if (c->r && c->r->in_flight) {
        /* The connection ends before its request was logged: the client
         * left, a timeout fired, or the response was cut. What never left
         * the output buffer was not sent. */
        struct req *r = c->r;
        size_t unsent = c->io ? io_pending_out(c->io) : 0;
        r->bytes_out = r->bytes_out > unsent ? r->bytes_out - unsent : 0;
        if (w->tearing_down && (r->error_code == NULL || unsent > 0))
            r->error_code = "shutdown"; /* cut by the shutdown timeout */
        else if (r->error_code == NULL || (unsent > 0 && c->state == CONN_FLUSHING))
            r->error_code = c->io && c->io->err == ETIMEDOUT ? "send timeout" : "client closed";
        log_request(r);
    }
    if (c->r && c->r->stage_cancel) {
        c->r->stage_cancel(c->r->stage_cancel_arg);
        c->r->stage_cancel = NULL;
    }
    proxy_abort(c);
    if (c->r)
        req_release_pool(c->r);
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
    if (c->r)
        reqbuf_put(w, c->r->rb);
    worker_snap_release(w, c->snap);
    free(c);
    worker_conn_closed(w);
}

void conn_release(struct conn *c)
{
    if (--c->refs == 0 && c->closed)
        conn_free(c);
}

void conn_set_timer(struct conn *c, uint32_t ms)
{
    struct timeval tv = {.tv_sec = ms / 1000, .tv_usec = (ms % 1000) * 1000};
    event_add(&c->timer, &tv);
}

void conn_clear_timer(struct conn *c)
{
    event_del(&c->timer);
}

void conn_pause_read(struct conn *c)
{
    if (!c->read_paused) {
        c->read_paused = true;
        io_disable_read(c->io);
    }
}

void conn_resume_read(struct conn *c)
{
    if (c->read_paused && !c->closed) {
        c->read_paused = false;
        io_enable_read(c->io);
    }
}

#define LINGER_MS 5000 /* longest a closing connection reads and drops the client's bytes */

/* The last bytes are out: shut the write side, then read and drop what the
 * client still sends until it closes or LINGER_MS pass (RFC 9112 9.6). */
static void closing_step(struct conn *c)
{
    io_flush(c->io);
    if (io_pending_out(c->io) > 0 && !c->io->error)
        return; /* conn_write_cb comes back once the socket took them */
    if (c->w->stopping || c->io->eof || c->io->error) {
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
    if (flush && c->io && !c->io->error && c->state != CONN_CLOSING &&
        c->state != CONN_LINGER) {
        /* The last response goes out first; reading stops: nothing the
         * client sends now can matter. The client's pace is bounded by the
         * socket's send timeout, never by a total. */
        c->state = CONN_CLOSING;
        proxy_abort(c);
        conn_pause_read(c);
        c->io->write_low = 0;
        conn_clear_timer(c);
        closing_step(c);
        return;
    }
    c->closed = true;
    if (c->refs == 0)
        conn_free(c);
    else if (c->io)
        io_disable_read(c->io);
}

#define REQBUF_KEEP 64 /* free request buffers a worker keeps */

static struct reqbuf *reqbuf_get(struct worker *w, size_t max_headers)
{
    struct reqbuf **pp = &w->reqbufs;

    for (; *pp; pp = &(*pp)->next) {
        if ((*pp)->max_headers >= max_headers) {
            struct reqbuf *rb = *pp;
            *pp = rb->next;
            w->nreqbufs--;
            rb->next = NULL;
            return rb;
        }
    }
    struct reqbuf *rb = malloc(sizeof(*rb) + (max_headers + 1) * sizeof(rb->hdrs[0]));
    if (rb == NULL)
        return NULL;
    rb->next = NULL;
    rb->max_headers = max_headers;
    rb->head_cap = 2048;
    rb->head = malloc(rb->head_cap);
    if (rb->head == NULL) {
        free(rb);
        return NULL;
    }
    return rb;
}

static void reqbuf_destroy(struct reqbuf *rb)
{
    free(rb->head);
    free(rb);
}

void reqbuf_put(struct worker *w, struct reqbuf *rb)
{
    if (rb == NULL)
        return;
    /* A buffer grown for one huge head is not kept for everyone. */
    if (w->nreqbufs >= REQBUF_KEEP || rb->head_cap > 8192) {
        reqbuf_destroy(rb);
        return;
    }
    rb->next = w->reqbufs;
    w->reqbufs = rb;
    w->nreqbufs++;
}

void reqbuf_free_all(struct worker *w)
{
    while (w->reqbufs) {
        struct reqbuf *rb = w->reqbufs;
        w->reqbufs = rb->next;
        reqbuf_destroy(rb);
    }
    w->nreqbufs = 0;
}

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

static void req_reset(struct req *r);

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
        reqbuf_put(c->w, c->r->rb);
        c->r = NULL;
    }
}

/* A request begins: it takes a buffer from the worker, unless it follows
 * another in a pipeline (the buffer is still held). */
static struct req *req_acquire(struct conn *c)
{
    conn_refresh_snap(c);
    if (c->r == NULL) {
        struct reqbuf *rb = reqbuf_get(c->w, c->cfg->limits.max_headers);
        if (rb == NULL)
            return NULL;
        c->r = &rb->r;
        c->r->rb = rb;
        c->r->c = c;
    }
    return c->r;
}

/* A request that failed before its head parsed still gets a request id, a
 * client address and a start time for its error response and log line. */
static int req_begin_unparsed(struct conn *c)
{
    if (req_acquire(c) == NULL) {
        conn_close(c, false);
        return -1;
    }
    req_reset(c->r);
    c->r->in_flight = true;
    gettimeofday(&c->r->start, NULL);
    memcpy(c->r->client_ip, c->peer_ip, sizeof(c->r->client_ip));
    worker_request_id(c->w, c->r->request_id);
    return 0;
}

/* Bytes of the head seen so far decide: 408 when a partial head timed out,
 * a silent close when nothing was sent (idle keep-alive, preconnect). */
static void head_timeout(struct conn *c)
{
    size_t pending = evbuffer_get_length(c->io->in);

    if (pending == 0 || c->idle || c->state == CONN_HANDSHAKE) {
        conn_close(c, false);
        return;
    }
    if (req_begin_unparsed(c) < 0)
        return;
    c->r->close_after = true;
    respond_error(c->r, FG_ERR_TIMEOUT, NULL);
}

static void conn_timer_cb(evutil_socket_t fd, short what, void *arg)
{
    struct conn *c = arg;

    conn_hold(c);
    switch (c->state) {
    case CONN_PROXY_HEADER:
        conn_close(c, false);
        break;
    case CONN_HANDSHAKE:
    case CONN_READ_HEAD:
        head_timeout(c);
        break;
    case CONN_PROXYING:
    case CONN_STAGES:
        /* The request body stalled for body_timeout_ms. */
        if (!c->r->response_started) {
            c->r->close_after = true;
            respond_error(c->r, FG_ERR_TIMEOUT, NULL);
        } else {
            conn_close(c, true);
        }
        break;
    case CONN_TUNNEL:
        proxy_tunnel_timeout(c);
        break;
    case CONN_RESPONDING:
    case CONN_FLUSHING:
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
        c->w->stats.tls_handshakes++;
        c->state = CONN_READ_HEAD;
        process_input(c);
    } else if (c->state == CONN_TUNNEL && (what & IO_EOF)) {
        proxy_tunnel_client_eof(c);
    } else if (c->state == CONN_FLUSHING && what == IO_EOF) {
        /* The client half-closed after its request and may still be
         * reading: the complete response goes out, then the connection
         * closes (the send timeout bounds the wait). */
        c->r->close_after = true;
        conn_pause_read(c);
    } else if (what & (IO_EOF | IO_ERROR)) {
        if (c->state == CONN_HANDSHAKE)
            c->w->stats.tls_failures++;
        if (c->state == CONN_PROXYING && c->r->body == BODY_PENDING && !c->r->response_started &&
            (what & IO_EOF)) {
            /* The client ended its body early: nothing complete to forward. */
            proxy_abort(c);
        }
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
        process_input(c);
        break;
    case CONN_PROXYING:
        proxy_client_readable(c);
        break;
    case CONN_TUNNEL:
        proxy_tunnel_pump(c);
        break;
    case CONN_CLOSING:
        evbuffer_drain(io->in, evbuffer_get_length(io->in));
        break;
    default:
        /* FLUSHING: a pipelined request waits until this response is out. */
        /* STAGES / RESPONDING: leave it buffered (the read watermark stops
         * reading once PROXY_READ_HIGH bytes wait). */
        break;
    }
    conn_release(c);
}

static void request_sent(struct conn *c);

static void conn_write_cb(struct io *io, void *arg)
{
    struct conn *c = arg;

    conn_hold(c);
    if (c->state == CONN_CLOSING) {
        closing_step(c);
    } else if (c->state == CONN_FLUSHING) {
        if (io_pending_out(io) == 0)
            request_sent(c);
    } else if (c->state == CONN_PROXYING) {
        proxy_client_writable(c);
    } else if (c->state == CONN_TUNNEL) {
        proxy_tunnel_pump(c);
    } else if (c->state == CONN_READ_HEAD) {
        process_input(c);
    }
    conn_release(c);
}

/* ---- request head ---------------------------------------------------- */

static void req_reset(struct req *r)
{
    struct conn *c = r->c;
    struct reqbuf *rb = r->rb;

    /* Only the scalar part: the buffers after it are reset by their length
     * fields, not rewritten on every request. */
    memset(r, 0, offsetof(struct req, scratch_begin));
    r->host[0] = r->request_id[0] = r->client_ip[0] = '\0';
    r->upstream_addr[0] = r->user_buf[0] = r->tier_buf[0] = '\0';
    r->c = c;
    r->cfg = c->cfg;
    r->rb = rb;
    r->upstream_ms = -1;
}

/* Copy the head out of the input buffer into the request's own buffer: the
 * header slices then stay valid however the input buffer changes. */
static int take_head(struct conn *c, size_t len)
{
    struct req *r = c->r;

    /* The normalised path follows the head: it is never longer than the
     * raw target, which is inside the head. */
    if (2 * len + 1 > r->rb->head_cap) {
        char *p = realloc(r->rb->head, 2 * len + 1);
        if (p == NULL)
            return -1;
        r->rb->head = p;
        r->rb->head_cap = 2 * len + 1;
    }
    evbuffer_remove(c->io->in, r->rb->head, len);
    r->head_len = len;
    r->path = r->rb->head + len;
    return 0;
}

static bool valid_request_id(const char *s, size_t n)
{
    if (n == 0 || n > 128)
        return false;
    for (size_t i = 0; i < n; i++) {
        char ch = s[i];
        if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
              ch == '.' || ch == '_' || ch == '-'))
            return false;
    }
    return true;
}

static bool is_trusted(const struct conn *c, const char *ip, size_t len)
{
    if (c->cfg->trusted_proxies.n == 0)
        return false;
    if (ip == NULL)
        return cidr_set_contains(&c->cfg->trusted_proxies, &c->peer.sa);
    return cidr_set_contains_text(&c->cfg->trusted_proxies, ip, len);
}

/*
 * The real client: the peer, unless the peer is a trusted proxy, in which
 * case X-Forwarded-For is walked from the right, skipping trusted hops; the
 * first untrusted address is the client.
 */
static void find_client(struct req *r, bool peer_trusted)
{
    struct conn *c = r->c;

    memcpy(r->client_ip, c->peer_ip, sizeof(r->client_ip));
    if (!peer_trusted)
        return;
    const struct h1_header *xff = h1_find(r->h.headers, r->h.nheaders, "X-Forwarded-For");
    if (xff == NULL)
        return;
    r->xff_prior = xff->value;
    r->xff_prior_len = xff->value_len;
    size_t end = xff->value_len;
    while (end > 0) {
        size_t start = end;
        while (start > 0 && xff->value[start - 1] != ',')
            start--;
        size_t a = start, b = end;
        while (a < b && (xff->value[a] == ' ' || xff->value[a] == '\t'))
            a++;
        while (b > a && (xff->value[b - 1] == ' ' || xff->value[b - 1] == '\t'))
            b--;
        if (b > a && b - a < sizeof(r->client_ip)) {
            unsigned char probe[sizeof(struct in6_addr)];
            char ip[INET6_ADDRSTRLEN];
            memcpy(ip, xff->value + a, b - a);
            ip[b - a] = '\0';
            if (inet_pton(AF_INET, ip, probe) != 1 && inet_pton(AF_INET6, ip, probe) != 1)
                return; /* junk in the list: stop trusting it here */
            memcpy(r->client_ip, ip, b - a + 1);
            if (!is_trusted(c, ip, b - a))
                return;
        }
        end = start > 0 ? start - 1 : 0;
    }
}

static void assign_request_id(struct req *r, bool peer_trusted)
{
    const struct h1_header *h =
        peer_trusted ? h1_find(r->h.headers, r->h.nheaders, "X-Request-Id") : NULL;

    if (h && valid_request_id(h->value, h->value_len)) {
        memcpy(r->request_id, h->value, h->value_len);
        r->request_id[h->value_len] = '\0';
        return;
    }
    worker_request_id(r->c->w, r->request_id);
}

static enum fg_error map_h1(enum h1_status st)
{
    return st == H1_HEAD_TOO_LARGE ? FG_ERR_HEADERS_TOO_LARGE : FG_ERR_BAD_REQUEST;
}

/* Host and path: normalised before anything routes on them. */
static int normalise_target(struct req *r)
{
    int port = -1;

    r->host_len = 0;
    r->host[0] = '\0';
    if (r->h.host) {
        ssize_t n = route_host_normalize(r->h.host, r->h.host_len, r->host, sizeof(r->host), &port);
        if (n < 0)
            return -1;
        r->host_len = (size_t)n;
    }
    r->host_port = port;
    ssize_t n = uri_normalize_path(r->h.path, r->h.path_len, r->path, r->head_len + 1);
    if (n < 0)
        return -1;
    r->path_len = (size_t)n;
    return 0;
}

static void run_stages(struct req *r);

/*
 * A preview host: the whole pattern, a valid {name}, and no port other than
 * the listener's own (a Host naming another port is not addressed to us as
 * a preview). Only the validated name is kept for the upstream template.
 */
static bool match_preview(struct req *r)
{
    if (r->host_len == 0 || (r->host_port != -1 && r->host_port != r->c->local_port))
        return false;
    return route_preview_name(&r->cfg->previews, r->host, r->host_len, r->preview_name,
                              sizeof(r->preview_name)) >= 0;
}

/* Choose the route (NULL when none), then run the stages. The preview
 * pattern comes first: it is more specific than any host-less route. Its
 * pool is chosen by the preview stage once the name resolves. */
static void dispatch(struct req *r)
{
    if (match_preview(r)) {
        r->preview = true;
        r->route = &r->cfg->preview_route;
    } else {
        r->route = route_match(r->cfg, r->host, r->host_len, r->path, r->path_len);
        if (r->route)
            r->pool = &r->c->snap->pools[r->route->upstream->index];
    }
    r->c->state = CONN_STAGES;
    run_stages(r);
}

/* A declared body over the limit: 413 before a byte of it is read. No
 * route: 404. A method the route does not list: 405 with the route's Allow
 * (RFC 9110 section 15.5.6). Later stages always have a route. */
static enum stage_verdict route_checks(struct req *r)
{
    const struct fg_route *rt = r->route;

    if (r->h.framing == H1_FRAMING_LENGTH && r->h.content_length > r->cfg->limits.max_body_bytes) {
        respond_error(r, FG_ERR_BODY_TOO_LARGE, NULL);
        return STAGE_ANSWERED;
    }
    if (rt == NULL) {
        respond_error(r, FG_ERR_NOT_FOUND, NULL);
        return STAGE_ANSWERED;
    }
    if (rt->methods && (r->h.method < 0 || r->h.method > 63 ||
                        !(rt->methods & (UINT64_C(1) << r->h.method)))) {
        char allow[512];
        snprintf(allow, sizeof(allow), "Allow: %s\r\n", rt->allow);
        respond_error(r, FG_ERR_METHOD, allow);
        return STAGE_ANSWERED;
    }
    return STAGE_NEXT;
}

/* Parse the head in R's buffer, then find the client and the request id,
 * which a request refused for its head also gets, for its answer and log. */
static enum h1_status parse_head(struct req *r, size_t head_len)
{
    struct conn *c = r->c;

    r->h.headers = r->rb->hdrs;
    enum h1_status st =
        h1_parse_request(&r->h, r->rb->head, head_len, c->cfg->limits.underscores_in_headers);
    bool parsed = st == H1_OK || st == H1_EXPECTATION; /* every field is set */
    bool trusted = is_trusted(c, NULL, 0);
    if (parsed) {
        find_client(r, trusted);
        /* Content-Length: 0 is a body already complete: nothing is left unread. */
        r->body = r->h.framing == H1_FRAMING_NONE ||
                          (r->h.framing == H1_FRAMING_LENGTH && r->h.content_length == 0)
                      ? BODY_NONE
                      : BODY_PENDING;
    } else {
        memcpy(r->client_ip, c->peer_ip, sizeof(r->client_ip));
    }
    assign_request_id(r, parsed && trusted);
    return st;
}

static void handle_head(struct conn *c, size_t head_len)
{
    struct req *r = req_acquire(c);

    if (r == NULL) {
        conn_close(c, false);
        return;
    }
    req_reset(r);
    r->in_flight = true;
    gettimeofday(&r->start, NULL);
    r->h.headers = NULL;
    r->h.max_headers = c->cfg->limits.max_headers;
    if (take_head(c, head_len) < 0) {
        conn_close(c, false);
        return;
    }
    enum h1_status st = parse_head(r, head_len);
    if (st != H1_OK && st != H1_EXPECTATION) {
        r->error_code = r->h.reason;
        respond_error(r, map_h1(st), NULL);
        return;
    }
    if (normalise_target(r) < 0) {
        r->error_code = "bad path or host";
        respond_error(r, FG_ERR_BAD_REQUEST, NULL);
        return;
    }
    if (st == H1_EXPECTATION) {
        /* 417. A body left unread closes the connection after it
         * (send_own); without one the connection carries on. */
        r->error_code = r->h.reason;
        respond_error(r, FG_ERR_EXPECTATION, NULL);
        return;
    }
    if (!c->tls) {
        respond_redirect(r);
        return;
    }
    dispatch(r);
}

/* Look for a complete head in the input; act on it or on its absence. */
static void process_input(struct conn *c)
{
    struct evbuffer *in = c->io->in;
    size_t len = evbuffer_get_length(in);
    size_t max = c->cfg->limits.max_header_bytes;

    if (c->state != CONN_READ_HEAD || c->closed || len == 0)
        return;
    if (io_pending_out(c->io) > PROXY_WRITE_HIGH)
        return; /* a pipelining client that does not read: wait (conn_write_cb) */
    if (c->idle) {
        c->idle = false;
        conn_set_timer(c, c->cfg->limits.header_timeout_ms);
    }
    size_t n = len < max ? len : max;
    const char *data = (const char *)evbuffer_pullup(in, (ssize_t)n);
    ssize_t end = h1_head_end(data, n);
    if (end == -2 && len < max)
        return; /* wait for more, under the header timer */
    conn_clear_timer(c);
    if (end < 0) {
        if (req_begin_unparsed(c) < 0)
            return;
        c->r->error_code = end == -2 ? "head too large" : "malformed head";
        respond_error(c->r, end == -2 ? FG_ERR_HEADERS_TOO_LARGE : FG_ERR_BAD_REQUEST, NULL);
        return;
    }
    handle_head(c, (size_t)end);
}

/* ---- stages ----------------------------------------------------------- */

static void run_stages(struct req *r)
{
    while (conn_stages[r->stage_idx] != NULL) {
        const struct stage *s = conn_stages[r->stage_idx++];
        enum stage_verdict v = s->run(r);
        if (v == STAGE_ANSWERED || v == STAGE_WAIT)
            return;
    }
    proxy_start(r->c);
}

void stage_resume(struct req *r, enum stage_verdict verdict)
{
    /* An answer has finished the request already: its memory may be back
     * with the worker, or freed. Nothing of it is touched. */
    if (verdict == STAGE_ANSWERED)
        return;
    struct conn *c = r->c;

    r->stage_cancel = NULL;
    r->stage_cancel_arg = NULL;
    if (c->closed || c->state != CONN_STAGES)
        return;
    conn_hold(c);
    if (verdict == STAGE_NEXT)
        run_stages(r);
    conn_release(c);
}

void stage_set_cancel(struct req *r, void (*cancel)(void *arg), void *arg)
{
    r->stage_cancel = cancel;
    r->stage_cancel_arg = arg;
}

/* ---- finish ----------------------------------------------------------- */

static void log_request(struct req *r)
{
    struct conn *c = r->c;
    struct timeval now;

    gettimeofday(&now, NULL);
    struct log_access_rec rec = {
        .time = (double)r->start.tv_sec + r->start.tv_usec / 1e6,
        .request_id = r->request_id,
        .request_id_len = strlen(r->request_id),
        .client_ip = r->client_ip,
        .method = r->h.method_str,
        .method_len = r->h.method_len,
        .host = r->host,
        .host_len = r->host_len,
        .path = r->path_len ? r->path : NULL,
        .path_len = r->path_len,
        .query = r->path_len ? r->h.query : NULL,
        .query_len = r->h.query_len,
        .status = r->status,
        .bytes_in = r->head_len + r->body_seen,
        .bytes_out = r->bytes_out,
        .duration_ms = (now.tv_sec - r->start.tv_sec) * 1e3 + (now.tv_usec - r->start.tv_usec) / 1e3,
        .upstream = r->upstream_addr[0] ? r->upstream_addr : NULL,
        .upstream_ms = r->upstream_ms,
        .user = r->user,
        .user_len = r->user_len,
        .tier = r->tier,
        .tls_version = c->tls && c->io && c->io->ssl ? tls_version_str(c->io->ssl) : NULL,
        .ratelimit = r->ratelimit,
        .error = r->error_code,
    };
    r->in_flight = false;
    log_access(&rec);
}

/* Does this connection end after the current response? RFC 9112 9.6: a
 * request that asked to close, a body left unread, or the process draining
 * (the response heads say so too: respond.c, proxy.c). */
static bool ends_after(const struct conn *c)
{
    return c->r->close_after || c->r->body == BODY_PENDING || worker_draining(c->w);
}

/*
 * The response is complete in the output buffer. Its log line is written
 * once the socket has taken its last byte (request_sent), so a client that
 * leaves or stops reading mid-way is logged as cut, not as served. Nothing
 * the client sends meanwhile is read when the connection is to close.
 */
void conn_finish_request(struct conn *c)
{
    struct req *r = c->r;

    if (r->stage_cancel) {
        /* Answered while a stage still waited (a timeout): detach it. */
        r->stage_cancel(r->stage_cancel_arg);
        r->stage_cancel = NULL;
    }
    req_release_pool(r);
    c->state = CONN_FLUSHING;
    conn_clear_timer(c);
    if (ends_after(c))
        conn_pause_read(c);
    c->io->write_low = 0;
    io_flush(c->io);
    if (io_pending_out(c->io) == 0)
        request_sent(c);
}

/* The response's last byte went to the socket: log the request, then serve
 * the next one on this connection or close it. */
static void request_sent(struct conn *c)
{
    struct req *r = c->r;

    log_request(r);
    c->w->stats.requests++;
    c->requests++;
    if (ends_after(c)) {
        conn_close(c, true);
        return;
    }
    c->io->write_low = PROXY_WRITE_LOW;
    c->state = CONN_READ_HEAD;
    conn_resume_read(c);
    if (evbuffer_get_length(c->io->in) > 0) {
        /* A pipelined request is already here. Serve it from the loop, not
         * from this stack: a long pipeline must not recurse. */
        conn_set_timer(c, c->cfg->limits.header_timeout_ms);
        io_trigger_read(c->io);
    } else {
        /* Idle: the request and its buffers go back to the worker until
         * the next request arrives, so an idle connection holds none. */
        reqbuf_put(c->w, r->rb);
        c->r = NULL;
        c->idle = true;
        conn_set_timer(c, c->cfg->limits.keepalive_timeout_ms);
    }
}
