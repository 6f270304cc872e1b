/*
 * h2.c - HTTP/2 to clients: nghttp2's server session over a client
 * connection, each stream carrying one request of the engine (req.c).
 *
 * nghttp2 does the protocol: framing, HPACK, flow-control accounting, the
 * RFC 9113 8.1-8.3 checks on fields (connection-specific fields, TE other
 * than "trailers", uppercase names, pseudo-header rules, content-length
 * against DATA), the CONTINUATION and Rapid Reset bounds. This file adds
 * what it leaves to the server: fields it only drops (CR, LF, NUL, edge
 * whitespace) are refused, :authority and Host must agree, the decoded
 * list is bounded (431), abusive frames are counted per second, and each
 * stream is turned into an HTTP/1.1 head the engine parses as any other.
 *
 * Backpressure. Request bodies: the stream's window is given back only once
 * its input holds less than H2_IN_LOW (the upstream took it), so a slow
 * upstream slows the client. Responses: the engine writes into the stream's
 * own output, bounded per stream by PROXY_WRITE_HIGH and across the
 * connection by H2_CONN_BUFFERED_HIGH (pending_out reports "full"); frames
 * are made only while the socket's output is under H2_OUT_HIGH.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>

#include <event2/buffer.h>
#include <event2/event.h>

#include "conn.h"
#include "h1.h"
#include "h2.h"
#include "io.h"
#include "metrics.h"
#include "proxy.h"
#include "req.h"
#include "respond.h"
#include "route.h"
#include "tls.h"
#include "worker.h"

#define H2_OUT_HIGH (64 * 1024)             /* stop framing while the socket holds this much */
#define H2_OUT_LOW (16 * 1024)              /* the socket drained to here: frame more */
#define H2_CONN_BUFFERED_HIGH (1024 * 1024) /* all streams' unsent responses, the connection's */
#define H2_IN_LOW (16 * 1024)               /* a stream's window reopens below this input */
#define H2_GOAWAY_DELAY_MS 1000             /* shutdown notice to the final GOAWAY */
#define H2_RESP_FIELDS 256                  /* response fields (proxy.c accepts as many) */
#define H2_RESP_HEAD_MAX (80 * 1024)        /* an upstream head (64 KiB) and flowgate's lines */
#define H2_RECV_SLICE 16384                 /* input fed to nghttp2 between abuse checks */
#define H2_PUMP_ROUNDS 16                   /* rounds per pump before yielding to the loop */

const char *h2_goaway_str(int why)
{
    switch (why) {
    case H2_GOAWAY_DRAIN: return "drain";
    case H2_GOAWAY_IDLE: return "idle";
    case H2_GOAWAY_CALM: return "enhance_your_calm";
    case H2_GOAWAY_STALL: return "stall";
    case H2_GOAWAY_PROTOCOL: return "protocol";
    case H2_GOAWAY_HEADERS: return "header_timeout";
    }
    return "?";
}

struct h2_stream {
    struct h2_conn *h2;
    struct h2_stream *next, *prev; /* h2->streams */
    int32_t id;
    struct req *r;      /* in a reqbuf; its in and out are this stream's */
    struct wsnap *snap; /* the worker's snapshot when the stream opened (held) */
    struct event timer; /* the request's deadline (ops set_timer) */
    int refs;           /* engine holds (ops hold) */
    /* request: fields as they come, then the HTTP/1.1 head */
    nghttp2_rcbuf *method, *path, *authority, *host; /* held until the head is written */
    struct evbuffer *cookies; /* crumbs joined by "; " (RFC 9113 8.2.3); NULL: none */
    size_t list_bytes;        /* decoded list, RFC 9113 6.5.2 sizes */
    const char *bad;          /* why the head gets 400; NULL while fine */
    bool too_large;           /* list over max_header_list_bytes: 431 */
    bool has_length;          /* content-length given: DATA passes as it is */
    uint64_t length;          /* ... its value (nghttp2 checked its digits) */
    uint64_t data_seen;       /* DATA payload bytes received */
    bool expects;             /* an Expect field: the client may wait for 100 */
    bool hold_head;           /* the request waits for END_STREAM (a small length) */
    bool holding;             /* the body's last byte waits for END_STREAM (HELD) */
    uint8_t held;
    bool chunked;             /* a body without content-length: DATA wrapped as chunks */
    bool head_ready;          /* END_HEADERS seen: the head is in r->in */
    size_t head_len;
    bool begun;        /* the engine has the request (req_begin) */
    bool input_new;    /* DATA arrived since the engine last looked */
    bool read_paused;  /* ops pause_read: the window stays shut */
    size_t unconsumed; /* DATA bytes not yet given back to the stream window */
    /* response: r->out turned into HEADERS and DATA */
    struct h1_parser resp; /* frames the body in r->out */
    bool head_request;     /* HEAD: no body follows any response head */
    bool submitted;        /* the final HEADERS are queued */
    bool deferred;         /* the data source waits for bytes (resume_data) */
    bool done;             /* ops done: the response is complete in r->out */
    bool cut;              /* ops close with flush: r->out goes out, then RST */
    bool ended_by_us;      /* flowgate cut it (the request is ABORTED) */
    bool full;             /* pending_out said full: req_writable once it drains */
    bool finished;         /* req_finish called */
    bool finishing;        /* inside req_finish: pending_out tells the real bytes */
    bool closed;           /* nghttp2 closed it: freed once no hold remains */
    uint64_t sent;         /* DATA payload bytes framed on this stream */
    bool stall_watched;    /* waiting on its own shut window since STALL_AT */
    uint64_t stall_mark;   /* SENT when the watch began */
    struct timeval stall_at;
};

struct h2_conn {
    struct conn *c; /* socket, peer, timer, closing: conn.c's */
    nghttp2_session *session;
    struct fg_http2 cfg;       /* the settings the connection started with */
    struct h2_stream *streams; /* open streams */
    unsigned nrequests;        /* streams the engine has (idle bound runs at 0) */
    size_t buffered;           /* streams' unsent response bytes, as of the last pump */
    bool pump_wanted;          /* a stream or the socket has news */
    bool pumping;
    struct event *pump_ev;   /* runs the pump from the loop */
    struct event *goaway_ev; /* drain: the final GOAWAY, a round trip after the notice */
    struct event *stall_ev;  /* output waiting on a closed window */
    struct event *head_ev;   /* a header block begun and not finished */
    int32_t head_stream;     /* ... on this stream (0: none) */
    uint64_t data_sent;      /* DATA payload bytes framed so far */
    uint64_t stall_mark;     /* data_sent when the stall watch began */
    bool draining;           /* shutdown notice sent */
    bool terminated;         /* GOAWAY queued that ends the session: input dropped */
    int goaway_why;          /* enum h2_goaway of the GOAWAY flowgate chose, -1 none */
    time_t abuse_sec;        /* the second ABUSE counts in */
    unsigned abuse;          /* resets and other abusive frames this second */
    bool calm;               /* over the abuse bound inside nghttp2's input (on_frame_recv) */
};

static void want_pump(struct h2_conn *h2);
static void h2_pump(struct h2_conn *h2);
static void watch_header_block(struct h2_conn *h2, int32_t id);
static void finish_request(struct h2_stream *s, enum req_end how);

/* ---- the stream as the engine sees it (struct req_conn_ops) ------------- */

static void stream_free(struct h2_stream *s);

static void sops_hold(void *p)
{
    struct h2_stream *s = p;

    s->refs++;
    conn_hold(s->h2->c);
}

static void sops_release(void *p)
{
    struct h2_stream *s = p;
    struct conn *c = s->h2->c;

    if (--s->refs == 0 && s->closed)
        stream_free(s);
    conn_release(c);
}

static void sops_flush(void *p)
{
    struct h2_stream *s = p;

    want_pump(s->h2);
}

static void sops_pause_read(void *p)
{
    ((struct h2_stream *)p)->read_paused = true;
}

static void sops_resume_read(void *p)
{
    struct h2_stream *s = p;

    s->read_paused = false;
    want_pump(s->h2);
}

static void stream_timer_cb(evutil_socket_t fd, short what, void *arg)
{
    struct h2_stream *s = arg;

    sops_hold(s);
    if (s->begun && !s->finished)
        req_timeout(s->r);
    sops_release(s);
}

static void sops_set_timer(void *p, uint32_t ms)
{
    struct h2_stream *s = p;
    struct timeval tv = {.tv_sec = ms / 1000, .tv_usec = (ms % 1000) * 1000};

    event_add(&s->timer, &tv);
}

static void sops_clear_timer(void *p)
{
    event_del(&((struct h2_stream *)p)->timer);
}

/* The stream's unsent response bytes. A stream holding some is also full
 * while the connection's streams together hold H2_CONN_BUFFERED_HIGH (the
 * figure of the last pump), so many streams cannot add up what one may
 * not; an empty one may always take a read, so a client that lets only
 * some streams move never stalls the others for good. */
static size_t sops_pending_out(void *p)
{
    struct h2_stream *s = p;
    size_t n = evbuffer_get_length(s->r->out);

    if (s->finishing)
        return n;
    if (n >= PROXY_WRITE_HIGH || (n > 0 && s->h2->buffered >= H2_CONN_BUFFERED_HIGH)) {
        s->full = true;
        return n > PROXY_WRITE_HIGH ? n : PROXY_WRITE_HIGH;
    }
    return n;
}

static void sops_done(void *p)
{
    struct h2_stream *s = p;

    event_del(&s->timer);
    s->done = true;
    want_pump(s->h2);
}

/* FLUSH: what the output holds goes out (its head too, when whole), then
 * RST_STREAM: a cut response must never look complete; otherwise
 * RST_STREAM at once. The stream's close (on_stream_close) finishes the
 * request. */
static void sops_close(void *p, bool flush)
{
    struct h2_stream *s = p;

    s->ended_by_us = true;
    event_del(&s->timer);
    if (flush) {
        s->cut = true; /* what r->out holds goes out first (output_step) */
    } else if (!s->closed) {
        nghttp2_submit_rst_stream(s->h2->session, NGHTTP2_FLAG_NONE, s->id, NGHTTP2_INTERNAL_ERROR);
    }
    want_pump(s->h2);
}

static const char *sops_tls_version(void *p)
{
    struct io *io = ((struct h2_stream *)p)->h2->c->io;

    return io && io->ssl ? tls_version_str(io->ssl) : NULL;
}

static const char *sops_tls_sni(void *p)
{
    struct io *io = ((struct h2_stream *)p)->h2->c->io;

    return io && io->ssl ? SSL_get_servername(io->ssl, TLSEXT_NAMETYPE_host_name) : NULL;
}

static const struct req_conn_ops stream_ops = {
    .hold = sops_hold,
    .release = sops_release,
    .flush = sops_flush,
    .pause_read = sops_pause_read,
    .resume_read = sops_resume_read,
    .set_timer = sops_set_timer,
    .clear_timer = sops_clear_timer,
    .pending_out = sops_pending_out,
    .done = sops_done,
    .close = sops_close,
    .tls_version = sops_tls_version,
    .tls_sni = sops_tls_sni,
};

/* ---- streams -------------------------------------------------------------- */

/* A stream and its request buffer, on the worker's current snapshot (a
 * reload applies to the next stream, as to the next HTTP/1.1 request). */
static struct h2_stream *stream_new(struct h2_conn *h2, int32_t id)
{
    struct conn *c = h2->c;
    struct h2_stream *s = calloc(1, sizeof(*s));

    if (s == NULL)
        return NULL;
    s->h2 = h2;
    s->id = id;
    s->snap = worker_snap_hold(c->w);
    struct req *r = req_get(c->w, s->snap->cfg->limits.max_headers);
    if (r == NULL) {
        worker_snap_release(c->w, s->snap);
        free(s);
        return NULL;
    }
    s->r = r;
    r->ops = &stream_ops;
    r->conn = s;
    r->in = evbuffer_new();
    r->out = evbuffer_new();
    r->w = c->w;
    r->snap = s->snap;
    r->cfg = s->snap->cfg;
    r->peer_ip = c->peer_ip;
    r->peer = &c->peer.sa;
    r->local_port = c->local_port;
    r->tls = c->tls;
    r->h2 = true;
    evtimer_assign(&s->timer, c->w->base, stream_timer_cb, s);
    s->next = h2->streams;
    if (h2->streams)
        h2->streams->prev = s;
    h2->streams = s;
    if (r->in == NULL || r->out == NULL) {
        stream_free(s);
        return NULL;
    }
    return s;
}

static void drop_rcbuf(nghttp2_rcbuf **b)
{
    if (*b != NULL) {
        nghttp2_rcbuf_decref(*b);
        *b = NULL;
    }
}

static void stream_drop_fields(struct h2_stream *s)
{
    drop_rcbuf(&s->method);
    drop_rcbuf(&s->path);
    drop_rcbuf(&s->authority);
    drop_rcbuf(&s->host);
    if (s->cookies != NULL) {
        evbuffer_free(s->cookies);
        s->cookies = NULL;
    }
}

/* Unlink and free S; a request still in flight is finished first (the
 * connection went away under it). */
static void stream_free(struct h2_stream *s)
{
    struct h2_conn *h2 = s->h2;
    struct worker *w = h2->c->w;

    finish_request(s, REQ_END_CLIENT_CLOSED);
    if (s->prev)
        s->prev->next = s->next;
    else
        h2->streams = s->next;
    if (s->next)
        s->next->prev = s->prev;
    event_del(&s->timer);
    stream_drop_fields(s);
    if (s->r != NULL) {
        if (s->r->in)
            evbuffer_free(s->r->in);
        if (s->r->out)
            evbuffer_free(s->r->out);
        req_put(s->r);
    }
    worker_snap_release(w, s->snap);
    free(s);
}

/* The one finish of a stream's request: logged and counted (req.c). */
static void finish_request(struct h2_stream *s, enum req_end how)
{
    struct h2_conn *h2 = s->h2;

    if (!s->begun || s->finished)
        return;
    s->finished = true;
    s->finishing = true;
    event_del(&s->timer);
    req_finish(s->r, how);
    s->finishing = false;
    if (--h2->nrequests == 0 && !h2->c->closed && h2->c->state == CONN_H2) {
        struct timeval tv = {.tv_sec = h2->cfg.idle_timeout_ms / 1000,
                             .tv_usec = (h2->cfg.idle_timeout_ms % 1000) * 1000};
        event_add(&h2->c->timer, &tv);
    }
}

static struct h2_stream *stream_of(struct h2_conn *h2, int32_t id)
{
    return nghttp2_session_get_stream_user_data(h2->session, id);
}

/* ---- request fields -> an HTTP/1.1 head ------------------------------------ */

static bool name_is(nghttp2_vec n, const char *lit)
{
    size_t len = strlen(lit);

    return n.len == len && memcmp(n.base, lit, len) == 0;
}

static void keep_rcbuf(nghttp2_rcbuf **slot, nghttp2_rcbuf *v)
{
    drop_rcbuf(slot);
    nghttp2_rcbuf_incref(v);
    *slot = v;
}

/* A pseudo-header: nghttp2 checked which may appear, once each, before
 * every regular field (RFC 9113 8.3). :scheme needs nothing more. */
static void take_pseudo(struct h2_stream *s, nghttp2_vec n, nghttp2_rcbuf *value)
{
    if (name_is(n, ":method"))
        keep_rcbuf(&s->method, value);
    else if (name_is(n, ":path"))
        keep_rcbuf(&s->path, value);
    else if (name_is(n, ":authority"))
        keep_rcbuf(&s->authority, value);
}

/* A regular field goes into the head as it comes; Host, cookies and TE
 * are held back (RFC 9113 8.2.3, 8.2.2: TE "trailers" is hop-by-hop). */
static void take_field(struct h2_stream *s, nghttp2_vec n, nghttp2_vec v, nghttp2_rcbuf *value)
{
    struct evbuffer *in = s->r->in;

    if (name_is(n, "host")) {
        if (s->host != NULL)
            s->bad = "two Host fields";
        keep_rcbuf(&s->host, value);
        return;
    }
    if (name_is(n, "cookie")) {
        if (s->cookies == NULL && (s->cookies = evbuffer_new()) == NULL) {
            s->bad = "out of memory";
            return;
        }
        if (evbuffer_get_length(s->cookies) > 0)
            evbuffer_add(s->cookies, "; ", 2);
        evbuffer_add(s->cookies, v.base, v.len);
        return;
    }
    if (name_is(n, "te"))
        return;
    if (name_is(n, "content-length")) {
        s->has_length = true;
        s->length = strtoull((const char *)v.base, NULL, 10);
    }
    if (name_is(n, "expect"))
        s->expects = true;
    evbuffer_add(in, n.base, n.len);
    evbuffer_add(in, ": ", 2);
    evbuffer_add(in, v.base, v.len);
    evbuffer_add(in, "\r\n", 2);
}

static int on_header(nghttp2_session *session, const nghttp2_frame *frame, nghttp2_rcbuf *name,
                     nghttp2_rcbuf *value, uint8_t flags, void *user)
{
    struct h2_conn *h2 = user;
    struct h2_stream *s = stream_of(h2, frame->hd.stream_id);

    /* Trailers (a second HEADERS) are dropped, as over HTTP/1.1 (README). */
    if (s == NULL || frame->hd.type != NGHTTP2_HEADERS ||
        frame->headers.cat != NGHTTP2_HCAT_REQUEST)
        return 0;
    nghttp2_vec n = nghttp2_rcbuf_get_buf(name);
    nghttp2_vec v = nghttp2_rcbuf_get_buf(value);
    s->list_bytes += n.len + v.len + 32;
    if (s->list_bytes > h2->cfg.max_header_list_bytes)
        s->too_large = true;
    if (s->too_large || s->bad)
        return 0;
    if (n.len > 0 && n.base[0] == ':')
        take_pseudo(s, n, value);
    else
        take_field(s, n, v, value);
    return 0;
}

/* nghttp2 would drop a field whose name or value breaks RFC 9113 8.2.1
 * (CR, LF, NUL, whitespace at either end of a value, non-token names):
 * flowgate refuses the request instead, as HTTP/1.1 refuses such a line. */
static int on_invalid_header(nghttp2_session *session, const nghttp2_frame *frame,
                             nghttp2_rcbuf *name, nghttp2_rcbuf *value, uint8_t flags, void *user)
{
    struct h2_stream *s = stream_of(user, frame->hd.stream_id);

    if (s != NULL && s->bad == NULL)
        s->bad = "invalid field in HTTP/2 request";
    return 0;
}

static bool vec_eq(nghttp2_vec a, nghttp2_vec b)
{
    return a.len == b.len && memcmp(a.base, b.base, a.len) == 0;
}

/* RFC 9113 8.3.1: a Host naming another host than :authority makes the
 * request malformed. Both are compared normalised: case, and a port left
 * out is https's 443 (HTTP/2 is served over TLS only). */
static bool authority_agrees(nghttp2_rcbuf *authority, nghttp2_rcbuf *host)
{
    nghttp2_vec a = nghttp2_rcbuf_get_buf(authority), h = nghttp2_rcbuf_get_buf(host);
    char an[ROUTE_HOST_MAX + 1], hn[ROUTE_HOST_MAX + 1];
    int ap = -1, hp = -1;

    if (vec_eq(a, h))
        return true;
    ssize_t al = route_host_normalize((const char *)a.base, a.len, an, sizeof(an), &ap);
    ssize_t hl = route_host_normalize((const char *)h.base, h.len, hn, sizeof(hn), &hp);
    if (al < 0 || hl < 0 || al != hl || memcmp(an, hn, (size_t)al) != 0)
        return false;
    return (ap < 0 ? 443 : ap) == (hp < 0 ? 443 : hp);
}

static void add_vec(struct evbuffer *b, nghttp2_rcbuf *rc)
{
    nghttp2_vec v = nghttp2_rcbuf_get_buf(rc);

    evbuffer_add(b, v.base, v.len);
}

/*
 * END_HEADERS: the request line goes in front of the fields, then Host (from
 * :authority, else the Host field), the joined cookies and the framing: a
 * body without content-length is sent upstream chunked (RFC 9113 8.2.2
 * leaves the HTTP/1.1 framing to the intermediary). Without :path (CONNECT:
 * no extended CONNECT is offered) the request is refused.
 */
static void head_complete(struct h2_stream *s, bool end_stream)
{
    struct evbuffer *in = s->r->in;
    nghttp2_rcbuf *host = s->authority ? s->authority : s->host;

    s->head_ready = true;
    if (s->too_large || s->bad)
        goto out;
    if (s->method == NULL || s->path == NULL) {
        s->bad = "no :path (CONNECT is not served over HTTP/2)";
        goto out;
    }
    if (s->authority && s->host && !authority_agrees(s->authority, s->host)) {
        s->bad = ":authority and Host disagree";
        goto out;
    }
    struct evbuffer *line = evbuffer_new();
    if (line == NULL) {
        s->bad = "out of memory";
        goto out;
    }
    add_vec(line, s->method);
    evbuffer_add(line, " ", 1);
    add_vec(line, s->path);
    evbuffer_add(line, " HTTP/1.1\r\n", 11);
    evbuffer_prepend_buffer(in, line);
    evbuffer_free(line);
    if (host != NULL) {
        evbuffer_add(in, "host: ", 6);
        add_vec(in, host);
        evbuffer_add(in, "\r\n", 2);
    }
    if (s->cookies != NULL) {
        evbuffer_add(in, "cookie: ", 8);
        evbuffer_add_buffer(in, s->cookies);
        evbuffer_add(in, "\r\n", 2);
    }
    if (!end_stream && !s->has_length) {
        s->chunked = true;
        evbuffer_add(in, "transfer-encoding: chunked\r\n", 28);
    }
    /* A body whose length fits the stream window arrives whole without
     * flowgate reading any of it: the request starts at its END_STREAM, so a
     * content-length the DATA belies is refused before the upstream sees a
     * byte. A larger one streams (below). */
    s->hold_head = !end_stream && s->has_length &&
                   s->length <= s->h2->cfg.initial_window_bytes && !s->expects;
    evbuffer_add(in, "\r\n", 2);
    nghttp2_vec m = nghttp2_rcbuf_get_buf(s->method);
    s->head_request = m.len == 4 && memcmp(m.base, "HEAD", 4) == 0;
out:
    s->head_len = evbuffer_get_length(in);
    stream_drop_fields(s);
}

/* The request was answered (or ended): its body has nowhere to go. */
static bool body_unwanted(const struct h2_stream *s)
{
    return s->too_large || s->bad || s->finished || (s->begun && s->r->state >= REQ_SENDING);
}

static int on_data_chunk(nghttp2_session *session, uint8_t flags, int32_t id, const uint8_t *data,
                         size_t len, void *user)
{
    struct h2_conn *h2 = user;
    struct h2_stream *s = stream_of(h2, id);

    /* The connection window is the sum of the streams': each stream's
     * own bounds what waits in it. */
    nghttp2_session_consume_connection(session, len);
    if (s == NULL || body_unwanted(s)) {
        nghttp2_session_consume_stream(session, id, len);
        return 0;
    }
    s->data_seen += len;
    if (s->chunked) {
        evbuffer_add_printf(s->r->in, "%zx\r\n", len);
        evbuffer_add(s->r->in, data, len);
        evbuffer_add(s->r->in, "\r\n", 2);
    } else if (s->has_length && s->data_seen == s->length && len > 0) {
        /* The last byte waits for END_STREAM, which nghttp2 reports only
         * when the length holds: an upstream never gets a complete request
         * from a stream that turns out malformed. */
        evbuffer_add(s->r->in, data, len - 1);
        s->held = data[len - 1];
        s->holding = true;
    } else {
        evbuffer_add(s->r->in, data, len);
    }
    s->unconsumed += len;
    s->input_new = true;
    want_pump(h2);
    return 0;
}

/* The client's END_STREAM, its length checked by nghttp2: a held request
 * starts, a held last byte goes, a chunked body gets its last chunk. */
static void body_end(struct h2_stream *s)
{
    s->hold_head = false;
    want_pump(s->h2);
    if (body_unwanted(s))
        return;
    if (s->holding) {
        evbuffer_add(s->r->in, &s->held, 1);
        s->holding = false;
    }
    if (s->chunked)
        evbuffer_add(s->r->in, "0\r\n\r\n", 5);
    s->input_new = true;
}

/* ---- abuse ------------------------------------------------------------------- */

/* End the session with a GOAWAY carrying CODE: sent, then the connection
 * closes (nghttp2_session_want_read turns 0); input after it is dropped. */
static void terminate(struct h2_conn *h2, enum h2_goaway why, uint32_t code)
{
    if (h2->terminated)
        return;
    h2->terminated = true;
    h2->goaway_why = (int)why;
    nghttp2_session_terminate_session(h2->session, code);
    want_pump(h2);
}

/* One more reset or abusive frame this second. True once over
 * http2.max_resets_per_second: the client is then told to calm down and
 * left, by the caller (see on_frame_recv for why not from here). */
static bool count_abuse(struct h2_conn *h2)
{
    struct timeval now;

    event_base_gettimeofday_cached(h2->c->w->base, &now);
    if (now.tv_sec != h2->abuse_sec) {
        h2->abuse_sec = now.tv_sec;
        h2->abuse = 0;
    }
    return ++h2->abuse > h2->cfg.max_resets_per_second;
}

/* RST_STREAM (Rapid Reset), PING and SETTINGS (floods of answers), PRIORITY
 * and empty DATA without END_STREAM (work for nothing) count as abuse. */
static bool abusive(const nghttp2_frame *frame)
{
    switch (frame->hd.type) {
    case NGHTTP2_RST_STREAM:
    case NGHTTP2_PRIORITY: return true;
    case NGHTTP2_PING:
    case NGHTTP2_SETTINGS: return !(frame->hd.flags & NGHTTP2_FLAG_ACK);
    case NGHTTP2_DATA: return frame->hd.length == 0 && !(frame->hd.flags & NGHTTP2_FLAG_END_STREAM);
    default: return false;
    }
}

static int on_frame_recv(nghttp2_session *session, const nghttp2_frame *frame, void *user)
{
    struct h2_conn *h2 = user;
    struct h2_stream *s = stream_of(h2, frame->hd.stream_id);
    bool end = frame->hd.flags & NGHTTP2_FLAG_END_STREAM;

    /* Over the bound the session ends, but not from inside nghttp2's input:
     * a GOAWAY submitted in a DATA frame's callback lets nghttp2 1.52 parse
     * on, and a later bad frame trips its assertion (the process aborts).
     * Failing the callback stops the input at once; h2_readable ends it. */
    if (abusive(frame) && count_abuse(h2)) {
        h2->calm = true;
        return NGHTTP2_ERR_CALLBACK_FAILURE;
    }
    if (frame->hd.type == NGHTTP2_HEADERS && frame->hd.stream_id == h2->head_stream)
        watch_header_block(h2, 0);
    if (s == NULL)
        return 0;
    if (frame->hd.type == NGHTTP2_HEADERS && frame->headers.cat == NGHTTP2_HCAT_REQUEST) {
        head_complete(s, end);
        want_pump(h2);
    } else if ((frame->hd.type == NGHTTP2_HEADERS || frame->hd.type == NGHTTP2_DATA) && end) {
        body_end(s);
    }
    return 0;
}

/*
 * A header block must come whole, its CONTINUATION frames straight after its
 * HEADERS (RFC 9113 6.10): until it does the connection carries nothing
 * else. One left unfinished for limits.header_timeout_ms (an HTTP/1.1 head's
 * bound) ends the connection. ID 0: the block ended (or its stream did).
 */
static void watch_header_block(struct h2_conn *h2, int32_t id)
{
    uint32_t ms = h2->c->cfg->limits.header_timeout_ms;

    h2->head_stream = id;
    if (id == 0) {
        event_del(h2->head_ev);
    } else {
        struct timeval tv = {.tv_sec = ms / 1000, .tv_usec = (ms % 1000) * 1000};
        evtimer_add(h2->head_ev, &tv);
    }
}

static void header_timeout_cb(evutil_socket_t fd, short what, void *arg)
{
    struct h2_conn *h2 = arg;

    conn_hold(h2->c);
    terminate(h2, H2_GOAWAY_HEADERS, NGHTTP2_PROTOCOL_ERROR);
    conn_release(h2->c);
}

static int on_begin_headers(nghttp2_session *session, const nghttp2_frame *frame, void *user)
{
    struct h2_conn *h2 = user;

    if (frame->hd.type != NGHTTP2_HEADERS)
        return 0;
    watch_header_block(h2, frame->hd.stream_id);
    if (frame->headers.cat != NGHTTP2_HCAT_REQUEST)
        return 0;
    struct h2_stream *s = stream_new(h2, frame->hd.stream_id);
    if (s == NULL)
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE; /* the stream is reset */
    nghttp2_session_set_stream_user_data(session, frame->hd.stream_id, s);
    return 0;
}

static int on_stream_close(nghttp2_session *session, int32_t id, uint32_t error_code, void *user)
{
    struct h2_stream *s = stream_of(user, id);

    if (id == ((struct h2_conn *)user)->head_stream)
        watch_header_block(user, 0);
    if (s == NULL)
        return 0;
    s->closed = true;
    finish_request(s, s->ended_by_us ? REQ_END_ABORTED : REQ_END_CLIENT_CLOSED);
    if (s->refs == 0)
        stream_free(s);
    return 0;
}

/* ---- responses: r->out -> HEADERS and DATA --------------------------------- */

/* RFC 9113 8.2.2: fields that make no sense on an HTTP/2 message. */
static bool connection_specific(const char *name, size_t len)
{
    static const char *const names[] = {
        "connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade", "te",
    };

    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
        if (len == strlen(names[i]) && memcmp(name, names[i], len) == 0)
            return true;
    return false;
}

int h2_head_to_nv(char *head, size_t len, bool head_request, struct h1_response *resp,
                  nghttp2_nv *nv, size_t max_nv, char status_buf[4])
{
    size_t n = 0;

    if (max_nv == 0 || h1_parse_response(resp, head, len, head_request) != H1_OK ||
        resp->status < 100 || resp->status > 999)
        return -1;
    snprintf(status_buf, 4, "%d", resp->status);
    nv[n++] = (nghttp2_nv){(uint8_t *)":status", (uint8_t *)status_buf, 7, 3, NGHTTP2_NV_FLAG_NONE};
    for (size_t i = 0; i < resp->nheaders; i++) {
        struct h1_header *h = &resp->headers[i];
        char *name = (char *)h->name; /* a slice of HEAD, which is the caller's to change */
        for (size_t j = 0; j < h->name_len; j++)
            if (name[j] >= 'A' && name[j] <= 'Z')
                name[j] = (char)(name[j] - 'A' + 'a');
        if (connection_specific(name, h->name_len))
            continue;
        if (n == max_nv)
            return -1;
        nv[n++] = (nghttp2_nv){(uint8_t *)name, (uint8_t *)h->value, h->name_len, h->value_len,
                               NGHTTP2_NV_FLAG_NONE};
    }
    return (int)n;
}

static ssize_t data_read(nghttp2_session *session, int32_t id, uint8_t *buf, size_t length,
                         uint32_t *flags, nghttp2_data_source *source, void *user);

/* Submit one head from r->out: 1 when the final head was submitted, 0 when
 * more bytes are needed or a 1xx went, -1 when the output cannot be read
 * (the stream is reset). */
static int submit_one_head(struct h2_stream *s)
{
    struct evbuffer *out = s->r->out;
    size_t len = evbuffer_get_length(out);
    size_t n = len < H2_RESP_HEAD_MAX ? len : H2_RESP_HEAD_MAX;
    struct h1_header hdrs[H2_RESP_FIELDS];
    struct h1_response resp = {.headers = hdrs, .max_headers = H2_RESP_FIELDS};
    nghttp2_nv nv[H2_RESP_FIELDS + 1];
    char status[4];

    if (n == 0)
        return 0;
    char *head = (char *)evbuffer_pullup(out, (ssize_t)n);
    ssize_t end = h1_head_end(head, n);
    if (end == -2 && len < H2_RESP_HEAD_MAX)
        return 0;
    int nnv = end < 0 ? -1
                      : h2_head_to_nv(head, (size_t)end, s->head_request, &resp, nv,
                                      H2_RESP_FIELDS + 1, status);
    if (nnv < 0 || resp.status == 101)
        return -1;
    if (resp.status < 200) {
        nghttp2_submit_headers(s->h2->session, NGHTTP2_FLAG_NONE, s->id, NULL, nv, (size_t)nnv,
                               NULL);
        evbuffer_drain(out, (size_t)end);
        return 0;
    }
    s->resp = resp.parser;
    nghttp2_data_provider dp = {.source.ptr = s, .read_callback = data_read};
    bool body = !resp.parser.msg_done;
    int rv = nghttp2_submit_response(s->h2->session, s->id, nv, (size_t)nnv, body ? &dp : NULL);
    evbuffer_drain(out, (size_t)end);
    if (rv != 0)
        return -1;
    s->submitted = true;
    return 1;
}

/* Heads until the final one (1xx go as informational HEADERS). */
static void submit_head(struct h2_stream *s)
{
    for (;;) {
        size_t before = evbuffer_get_length(s->r->out);
        int rv = submit_one_head(s);
        if (rv > 0)
            return;
        if (rv < 0) {
            s->r->error_code = "bad response head";
            s->ended_by_us = true;
            s->cut = false;
            nghttp2_submit_rst_stream(s->h2->session, NGHTTP2_FLAG_NONE, s->id,
                                      NGHTTP2_INTERNAL_ERROR);
            return;
        }
        if (evbuffer_get_length(s->r->out) == before)
            return; /* wait for more */
    }
}

/*
 * The data source: payload out of r->out (chunk framing and trailers left
 * behind), deferred while none is there. The end is the body's own end, or
 * the engine's "done" with nothing left (a body delimited by the upstream's
 * close). A cut response ends in RST_STREAM (TEMPORAL_CALLBACK_FAILURE).
 */
static ssize_t data_read(nghttp2_session *session, int32_t id, uint8_t *buf, size_t length,
                         uint32_t *flags, nghttp2_data_source *source, void *user)
{
    struct h2_stream *s = source->ptr;
    struct evbuffer *out = s->r->out;
    size_t n = 0;

    while (n < length && !s->resp.msg_done) {
        struct evbuffer_iovec v;
        if (evbuffer_peek(out, -1, NULL, &v, 1) < 1 || v.iov_len == 0)
            break;
        size_t cap = h1_body_in_data(&s->resp) && v.iov_len > length - n ? length - n : v.iov_len;
        size_t used = 0;
        bool payload = false;
        if (h1_body_feed_run(&s->resp, v.iov_base, cap, &used, &payload) == H1_BODY_ERROR)
            return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
        if (used == 0)
            break;
        if (payload)
            memcpy(buf + n, v.iov_base, used);
        n += payload ? used : 0;
        evbuffer_drain(out, used);
    }
    if (s->resp.msg_done || (s->done && evbuffer_get_length(out) == 0)) {
        evbuffer_drain(out, evbuffer_get_length(out)); /* nothing may follow a message */
        *flags |= NGHTTP2_DATA_FLAG_EOF;
    } else if (n == 0) {
        if (s->cut)
            return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
        s->deferred = true;
        return NGHTTP2_ERR_DEFERRED;
    }
    if (s->full)
        s->h2->pump_wanted = true;
    return (ssize_t)n;
}

/* Our END_STREAM went out: the request is finished (sent), and a client
 * still sending its body is told to stop (RFC 9113 8.1). */
static void response_sent(struct h2_conn *h2, struct h2_stream *s)
{
    finish_request(s, REQ_END_SENT);
    if (!s->closed && nghttp2_session_get_stream_remote_close(h2->session, s->id) == 0)
        nghttp2_submit_rst_stream(h2->session, NGHTTP2_FLAG_NONE, s->id, NGHTTP2_NO_ERROR);
}

static int on_frame_send(nghttp2_session *session, const nghttp2_frame *frame, void *user)
{
    struct h2_conn *h2 = user;
    struct h2_stream *s = stream_of(h2, frame->hd.stream_id);

    switch (frame->hd.type) {
    case NGHTTP2_DATA:
        h2->data_sent += frame->hd.length;
        if (s != NULL)
            s->sent += frame->hd.length;
        break;
    case NGHTTP2_GOAWAY:
        if (frame->goaway.last_stream_id != INT32_MAX) { /* not the shutdown notice */
            int why = h2->goaway_why >= 0 ? h2->goaway_why : H2_GOAWAY_PROTOCOL;
            metrics_bump(&h2->c->w->stats.h2_goaway[why]);
        }
        break;
    case NGHTTP2_RST_STREAM:
        if (s != NULL && !s->begun && frame->rst_stream.error_code != NGHTTP2_NO_ERROR)
            metrics_bump(&h2->c->w->stats.h2_refused);
        else if (s == NULL && frame->rst_stream.error_code == NGHTTP2_REFUSED_STREAM &&
                 count_abuse(h2)) /* a stream past max_concurrent_streams */
            terminate(h2, H2_GOAWAY_CALM, NGHTTP2_ENHANCE_YOUR_CALM);
        break;
    default: break;
    }
    if (s != NULL && (frame->hd.type == NGHTTP2_HEADERS || frame->hd.type == NGHTTP2_DATA) &&
        (frame->hd.flags & NGHTTP2_FLAG_END_STREAM))
        response_sent(h2, s);
    return 0;
}

/* ---- the pump: the engine's work, then frames to the socket ----------------- */

/* END_HEADERS seen: the engine takes the request, or refuses its head. */
static void start_request(struct h2_stream *s)
{
    struct h2_conn *h2 = s->h2;
    struct req *r = s->r;

    s->begun = true;
    s->input_new = false;
    if (h2->nrequests++ == 0)
        event_del(&h2->c->timer);
    h2->c->requests++;
    metrics_bump(&h2->c->w->stats.h2_streams);
    req_begin(r);
    if (s->too_large)
        req_refuse(r, FG_ERR_HEADERS_TOO_LARGE, "header list too large");
    else if (s->bad)
        req_refuse(r, FG_ERR_BAD_REQUEST, s->bad);
    else
        req_head(r, s->head_len);
}

/* Give the stream's window back once the engine took its input (or has no
 * use for it); never while the engine paused reading. */
static void give_window(struct h2_stream *s)
{
    struct req *r = s->r;

    if (s->unconsumed == 0 || s->read_paused)
        return;
    if (body_unwanted(s))
        evbuffer_drain(r->in, evbuffer_get_length(r->in));
    else if (evbuffer_get_length(r->in) >= H2_IN_LOW)
        return;
    nghttp2_session_consume_stream(s->h2->session, s->id, s->unconsumed);
    s->unconsumed = 0;
}

/* What the engine writes becomes frames: the head once whole, then the
 * deferred data source is woken while there is something for it. */
static void output_step(struct h2_stream *s)
{
    if (s->closed)
        return;
    if (!s->submitted)
        submit_head(s);
    if (s->submitted && s->deferred && (evbuffer_get_length(s->r->out) > 0 || s->done || s->cut)) {
        s->deferred = false;
        nghttp2_session_resume_data(s->h2->session, s->id);
    } else if (s->cut && !s->submitted) {
        nghttp2_submit_rst_stream(s->h2->session, NGHTTP2_FLAG_NONE, s->id, NGHTTP2_INTERNAL_ERROR);
        s->cut = false;
    }
}

static void stream_step(struct h2_stream *s)
{
    struct req *r = s->r;

    if (s->head_ready && !s->begun && !s->hold_head) {
        start_request(s);
    } else if (s->input_new && s->begun && !s->finished) {
        s->input_new = false;
        req_readable(r);
    }
    if (s->finished && s->closed)
        return;
    give_window(s);
    output_step(s);
    size_t out = evbuffer_get_length(r->out);
    if (s->full && !s->finished && out < PROXY_WRITE_LOW &&
        (out == 0 || s->h2->buffered < H2_CONN_BUFFERED_HIGH)) {
        s->full = false;
        req_writable(r);
    }
}

static void streams_step(struct h2_conn *h2)
{
    struct h2_stream *next;

    for (struct h2_stream *s = h2->streams; s != NULL; s = next) {
        sops_hold(s);
        stream_step(s);
        next = s->next;
        sops_release(s);
    }
}

/* Frames out while the socket's output is under its mark. -1 when the
 * session failed (the connection is closed). */
static int session_send(struct h2_conn *h2)
{
    struct io *io = h2->c->io;

    while (io_pending_out(io) < H2_OUT_HIGH) {
        const uint8_t *data;
        ssize_t n = nghttp2_session_mem_send(h2->session, &data);
        if (n < 0) {
            conn_close(h2->c, false);
            return -1;
        }
        if (n == 0)
            break;
        evbuffer_add(io->out, data, (size_t)n);
    }
    io_flush(io);
    return 0;
}

/* A stream whose response waits on its own window, shut by the client. */
static bool stream_stalled(struct h2_conn *h2, const struct h2_stream *s)
{
    return s->submitted && !s->closed && !s->finished && evbuffer_get_length(s->r->out) > 0 &&
           nghttp2_session_get_stream_remote_window_size(h2->session, s->id) <= 0;
}

/* Output waiting while the client keeps its window shut: the stall watch
 * runs for limits.send_timeout_ms without a DATA byte framed. */
static bool stalled(struct h2_conn *h2)
{
    if (nghttp2_session_get_remote_window_size(h2->session) <= 0)
        return h2->buffered > 0;
    for (struct h2_stream *s = h2->streams; s != NULL; s = s->next)
        if (stream_stalled(h2, s))
            return true;
    return false;
}

static void watch_stall(struct h2_conn *h2)
{
    uint32_t ms = h2->c->cfg->limits.send_timeout_ms;

    for (struct h2_stream *s = h2->streams; s != NULL; s = s->next) {
        bool now = ms != 0 && stream_stalled(h2, s);
        if (now && !s->stall_watched) {
            s->stall_mark = s->sent;
            event_base_gettimeofday_cached(h2->c->w->base, &s->stall_at);
        }
        s->stall_watched = now;
    }
    if (ms == 0 || !stalled(h2)) {
        event_del(h2->stall_ev);
        return;
    }
    if (!evtimer_pending(h2->stall_ev, NULL)) {
        struct timeval tv = {.tv_sec = ms / 1000, .tv_usec = (ms % 1000) * 1000};
        h2->stall_mark = h2->data_sent;
        evtimer_add(h2->stall_ev, &tv);
    }
}

/*
 * A client may keep one stream's window shut while others move, so the
 * connection never stalls as a whole: that stream alone would then hold its
 * upstream link and its buffered response for good. Like a slow HTTP/1.1
 * reader, a stream that took no DATA byte for send_timeout_ms is ended
 * (RST_STREAM CANCEL), its request finished as a send timeout. A stream
 * found stalled just before the watch fires is looked at again next time.
 */
static void stall_streams(struct h2_conn *h2, uint32_t ms)
{
    struct timeval now;

    event_base_gettimeofday_cached(h2->c->w->base, &now);
    for (struct h2_stream *s = h2->streams; s != NULL; s = s->next) {
        if (!s->stall_watched || s->sent != s->stall_mark || !stream_stalled(h2, s))
            continue;
        int64_t waited = (now.tv_sec - s->stall_at.tv_sec) * 1000 +
                         (now.tv_usec - s->stall_at.tv_usec) / 1000;
        if (waited < ms)
            continue;
        s->stall_watched = false;
        finish_request(s, REQ_END_SEND_TIMEOUT);
        nghttp2_submit_rst_stream(h2->session, NGHTTP2_FLAG_NONE, s->id, NGHTTP2_CANCEL);
    }
}

static void stall_cb(evutil_socket_t fd, short what, void *arg)
{
    struct h2_conn *h2 = arg;

    conn_hold(h2->c);
    if (h2->data_sent == h2->stall_mark && stalled(h2))
        terminate(h2, H2_GOAWAY_STALL, NGHTTP2_ENHANCE_YOUR_CALM);
    else
        stall_streams(h2, h2->c->cfg->limits.send_timeout_ms);
    want_pump(h2);
    conn_release(h2->c);
}

static void buffered_sum(struct h2_conn *h2)
{
    size_t n = 0;

    for (struct h2_stream *s = h2->streams; s != NULL; s = s->next)
        if (s->r != NULL)
            n += evbuffer_get_length(s->r->out);
    h2->buffered = n;
}

/* Run the streams' news and send, until nothing changes (or a bound of
 * rounds, then again from the loop); end the connection when the session
 * is over (a GOAWAY sent and no stream left). */
static void h2_pump(struct h2_conn *h2)
{
    struct conn *c = h2->c;

    if (h2->pumping || c->closed || c->state != CONN_H2)
        return;
    h2->pumping = true;
    conn_hold(c);
    if (worker_draining(c->w) && !h2->draining)
        h2_drain(h2);
    for (int round = 0; round < H2_PUMP_ROUNDS; round++) {
        h2->pump_wanted = false;
        buffered_sum(h2);
        streams_step(h2);
        if (c->closed || session_send(h2) < 0)
            break;
        if (!h2->pump_wanted)
            break;
    }
    if (!c->closed) {
        buffered_sum(h2);
        watch_stall(h2);
        /* Over: nghttp2 wants nothing more, or flowgate ended the session
         * and its GOAWAY is out (streams in flight are not waited for). */
        if ((h2->terminated || !nghttp2_session_want_read(h2->session)) &&
            !nghttp2_session_want_write(h2->session))
            conn_close(c, true);
    }
    h2->pumping = false;
    if (h2->pump_wanted && !c->closed) {
        h2->pump_wanted = false;
        event_active(h2->pump_ev, EV_TIMEOUT, 1);
    }
    conn_release(c);
}

static void want_pump(struct h2_conn *h2)
{
    h2->pump_wanted = true;
    if (h2->c->refs == 0 && !h2->pumping)
        event_active(h2->pump_ev, EV_TIMEOUT, 1);
}

static void pump_cb(evutil_socket_t fd, short what, void *arg)
{
    struct h2_conn *h2 = arg;

    h2->pump_wanted = true;
    h2_pump(h2);
}

/* The pump runs from the loop, after the events already due: the answers
 * of several upstreams that arrive in one loop round go out together, in
 * one TLS record and one write, instead of one each. */
void h2_unwound(struct h2_conn *h2)
{
    if (h2->pump_wanted && !h2->pumping)
        event_active(h2->pump_ev, EV_TIMEOUT, 1);
}

/* ---- the connection's events --------------------------------------------------- */

/* nghttp2 gave up on the input (a bad preface, a flood of CONTINUATION
 * frames or of frames to acknowledge, or on_frame_recv failed it over the
 * abuse bound): a GOAWAY says why, then the connection closes, whatever
 * else the client sends. */
static void recv_failed(struct h2_conn *h2, int err)
{
    bool flood = h2->calm || err == NGHTTP2_ERR_FLOODED ||
                 err == NGHTTP2_ERR_TOO_MANY_CONTINUATIONS || err == NGHTTP2_ERR_TOO_MANY_SETTINGS;

    if (flood)
        terminate(h2, H2_GOAWAY_CALM, NGHTTP2_ENHANCE_YOUR_CALM);
    else
        terminate(h2, H2_GOAWAY_PROTOCOL, NGHTTP2_PROTOCOL_ERROR);
}

void h2_readable(struct h2_conn *h2)
{
    struct evbuffer *in = h2->c->io->in;

    while (evbuffer_get_length(in) > 0 && !h2->terminated && !h2->c->closed) {
        struct evbuffer_iovec v;
        evbuffer_peek(in, -1, NULL, &v, 1);
        size_t len = v.iov_len < H2_RECV_SLICE ? v.iov_len : H2_RECV_SLICE;
        ssize_t n = nghttp2_session_mem_recv(h2->session, v.iov_base, len);
        if (n < 0) {
            recv_failed(h2, (int)n);
            break;
        }
        evbuffer_drain(in, (size_t)n);
    }
    if (h2->terminated)
        evbuffer_drain(in, evbuffer_get_length(in));
    want_pump(h2);
}

void h2_writable(struct h2_conn *h2)
{
    want_pump(h2);
}

/* The connection's timer: armed while no request is in flight. */
void h2_timeout(struct h2_conn *h2)
{
    if (h2->nrequests == 0)
        terminate(h2, H2_GOAWAY_IDLE, NGHTTP2_NO_ERROR);
}

static void final_goaway_cb(evutil_socket_t fd, short what, void *arg)
{
    struct h2_conn *h2 = arg;

    conn_hold(h2->c);
    if (!h2->terminated) {
        h2->goaway_why = H2_GOAWAY_DRAIN;
        nghttp2_submit_goaway(h2->session, NGHTTP2_FLAG_NONE,
                              nghttp2_session_get_last_proc_stream_id(h2->session),
                              NGHTTP2_NO_ERROR, NULL, 0);
    }
    h2->pump_wanted = true;
    conn_release(h2->c);
}

/* RFC 9113 6.8: a shutdown notice (GOAWAY with the largest stream id) lets
 * requests already on the wire arrive; a round trip later the GOAWAY with
 * the last stream processed. A connection with no request in flight gets
 * the final GOAWAY at once. */
void h2_drain(struct h2_conn *h2)
{
    if (h2->draining)
        return;
    h2->draining = true;
    if (h2->nrequests == 0 && h2->streams == NULL) {
        final_goaway_cb(-1, 0, h2);
        return;
    }
    nghttp2_submit_shutdown_notice(h2->session);
    struct timeval tv = {.tv_sec = H2_GOAWAY_DELAY_MS / 1000,
                         .tv_usec = (H2_GOAWAY_DELAY_MS % 1000) * 1000};
    evtimer_add(h2->goaway_ev, &tv);
    want_pump(h2);
}

void h2_free(struct h2_conn *h2, int how)
{
    while (h2->streams != NULL) {
        finish_request(h2->streams, (enum req_end)how);
        stream_free(h2->streams);
    }
    if (h2->pump_ev)
        event_free(h2->pump_ev);
    if (h2->goaway_ev)
        event_free(h2->goaway_ev);
    if (h2->stall_ev)
        event_free(h2->stall_ev);
    if (h2->head_ev)
        event_free(h2->head_ev);
    nghttp2_session_del(h2->session);
    metrics_drop(&h2->c->w->stats.h2_open);
    free(h2);
}

/* ---- setup ------------------------------------------------------------------------- */

static nghttp2_session_callbacks *make_callbacks(void)
{
    nghttp2_session_callbacks *cb;

    if (nghttp2_session_callbacks_new(&cb) != 0)
        return NULL;
    nghttp2_session_callbacks_set_on_begin_headers_callback(cb, on_begin_headers);
    nghttp2_session_callbacks_set_on_header_callback2(cb, on_header);
    nghttp2_session_callbacks_set_on_invalid_header_callback2(cb, on_invalid_header);
    nghttp2_session_callbacks_set_on_frame_recv_callback(cb, on_frame_recv);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cb, on_data_chunk);
    nghttp2_session_callbacks_set_on_stream_close_callback(cb, on_stream_close);
    nghttp2_session_callbacks_set_on_frame_send_callback(cb, on_frame_send);
    return cb;
}

/*
 * nghttp2's own bounds, set explicitly: HTTP messaging checks on (they refuse
 * most malformed streams), RFC 9113 whitespace validation on, window updates
 * ours (backpressure), the Rapid Reset limiter at max_resets_per_second, at
 * most 8 CONTINUATION frames per header block (16 KiB frames: far above any
 * max_header_list_bytes a browser needs), few SETTINGS entries and queued
 * acknowledgements.
 */
static nghttp2_option *make_options(const struct fg_http2 *cfg)
{
    nghttp2_option *opt;

    if (nghttp2_option_new(&opt) != 0)
        return NULL;
    nghttp2_option_set_no_auto_window_update(opt, 1);
    nghttp2_option_set_no_closed_streams(opt, 1);
    nghttp2_option_set_max_settings(opt, 16);
    nghttp2_option_set_max_outbound_ack(opt, 256);
    nghttp2_option_set_max_continuations(opt, 8);
    nghttp2_option_set_stream_reset_rate_limit(opt, cfg->max_resets_per_second,
                                               cfg->max_resets_per_second);
    return opt;
}

static int session_new(struct h2_conn *h2)
{
    nghttp2_session_callbacks *cb = make_callbacks();
    nghttp2_option *opt = make_options(&h2->cfg);
    int rv = -1;

    if (cb != NULL && opt != NULL && nghttp2_session_server_new2(&h2->session, cb, h2, opt) == 0)
        rv = 0;
    if (cb != NULL)
        nghttp2_session_callbacks_del(cb);
    if (opt != NULL)
        nghttp2_option_del(opt);
    if (rv < 0)
        return -1;
    /* No SETTINGS_MAX_HEADER_LIST_SIZE: an oversized list gets its 431
     * from flowgate rather than a client-side failure. */
    nghttp2_settings_entry iv[] = {
        {NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, h2->cfg.max_concurrent_streams},
        {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, h2->cfg.initial_window_bytes},
        {NGHTTP2_SETTINGS_ENABLE_PUSH, 0},
    };
    return nghttp2_submit_settings(h2->session, NGHTTP2_FLAG_NONE, iv, sizeof(iv) / sizeof(iv[0]));
}

int h2_start(struct conn *c)
{
    struct event_base *base = c->w->base;
    struct h2_conn *h2 = calloc(1, sizeof(*h2));

    if (h2 == NULL)
        return -1;
    h2->c = c;
    h2->cfg = c->cfg->http2;
    h2->goaway_why = -1;
    h2->pump_ev = event_new(base, -1, 0, pump_cb, h2);
    h2->goaway_ev = evtimer_new(base, final_goaway_cb, h2);
    h2->stall_ev = evtimer_new(base, stall_cb, h2);
    h2->head_ev = evtimer_new(base, header_timeout_cb, h2);
    if (h2->pump_ev == NULL || h2->goaway_ev == NULL || h2->stall_ev == NULL || h2->head_ev == NULL ||
        session_new(h2) != 0) {
        metrics_bump(&c->w->stats.h2_open); /* h2_free drops it */
        h2_free(h2, REQ_END_CLIENT_CLOSED);
        return -1;
    }
    c->h2 = h2;
    c->state = CONN_H2;
    c->io->write_low = H2_OUT_LOW;
    metrics_bump(&c->w->stats.h2_connections);
    metrics_bump(&c->w->stats.h2_open);
    struct timeval tv = {.tv_sec = h2->cfg.idle_timeout_ms / 1000,
                         .tv_usec = (h2->cfg.idle_timeout_ms % 1000) * 1000};
    event_add(&c->timer, &tv);
    h2_readable(h2); /* bytes that came with the handshake */
    return 0;
}

/* ---- fuzzing entry points (h2.h) ---------------------------------------------------- */

struct h2_fuzz {
    struct worker *w;
    uint64_t serial; /* the connection's, found again in w->conns (it may be gone) */
    int peer;        /* the socketpair's other end: what flowgate sends, dropped */
};

static struct conn *fuzz_conn(const struct h2_fuzz *f)
{
    for (struct conn *c = f->w->conns; c != NULL; c = c->next)
        if (c->serial == f->serial)
            return c;
    return NULL;
}

struct h2_fuzz *h2_fuzz_new(struct worker *w)
{
    struct h2_fuzz *f = calloc(1, sizeof(*f));
    struct listener l = {.w = w, .fd = -1, .kind = LISTENER_HTTP, .port = 443};
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(40000),
                             .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    int sv[2];

    if (f == NULL || socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) < 0) {
        free(f);
        return NULL;
    }
    f->w = w;
    f->peer = sv[1];
    __atomic_add_fetch(&worker_nconns, 1, __ATOMIC_RELAXED); /* conn_accept's caller counts */
    conn_accept(&l, sv[0], (struct sockaddr *)&sa, sizeof(sa));
    struct conn *c = w->conns;
    if (c == NULL || c->fd != sv[0] || c->io == NULL) {
        close(f->peer);
        free(f);
        return NULL;
    }
    f->serial = c->serial;
    c->tls = true; /* served as an https connection: every stage runs */
    conn_hold(c);
    if (h2_start(c) < 0)
        conn_close(c, false);
    conn_release(c);
    return f;
}

int h2_fuzz_feed(struct h2_fuzz *f, const uint8_t *data, size_t len)
{
    struct conn *c = fuzz_conn(f);
    char sink[16384];

    if (c != NULL && !c->closed && c->state == CONN_H2) {
        conn_hold(c);
        evbuffer_add(c->io->in, data, len);
        h2_readable(c->h2);
        conn_release(c);
    }
    event_base_loop(f->w->base, EVLOOP_NONBLOCK);
    while (read(f->peer, sink, sizeof(sink)) > 0)
        ;
    c = fuzz_conn(f);
    return c != NULL && !c->closed && c->state == CONN_H2 ? 0 : -1;
}

void h2_fuzz_free(struct h2_fuzz *f)
{
    struct conn *c = fuzz_conn(f);

    if (c != NULL)
        conn_close(c, false);
    close(f->peer);
    free(f);
}
