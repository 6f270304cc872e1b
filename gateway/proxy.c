/*
 * proxy.c - forward one request upstream and stream the response back.
 *
 * Bodies are never copied through a private buffer: bytes move between the
 * two sides' buffers with evbuffer_remove_buffer, after the parser of their
 * message has seen them (so a chunked body is checked as it passes, and the
 * exact end of each message is known for keep-alive and pipelining).
 * Backpressure: a side is fed only while its output holds less than
 * PROXY_WRITE_HIGH; the source's read bound then stops its socket reads,
 * and the destination's write callback (at PROXY_WRITE_LOW) resumes. Output
 * is flushed as soon as a pump has moved it (io_flush): a small response
 * leaves in the same loop round its last byte arrived.
 *
 *   proxy_start -> connect/reuse -> head + body up -> response head down
 *        ^  (reused connection died before answering: retry once fresh)
 *        +-- refused, connect timeout, closed before any response byte,
 *            no body byte sent yet: next server (max_tries in all)
 *                                          -> body down -> finish
 *                                          -> 101 to a WebSocket upgrade: tunnel
 *
 * A tunnel (RFC 6455 4.1) relays bytes as they come in both directions with
 * the same watermarks, until a side closes (the other is then flushed and
 * closed) or no byte moved either way for limits.keepalive_timeout_ms.
 * Its upstream connection is never pooled again.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

#include <event2/buffer.h>

#include "log.h"
#include "proxy.h"
#include "req.h"
#include "respond.h"
#include "stage.h"
#include "upstream.h"
#include "wbuf.h"
#include "worker.h"

#define UP_HEAD_MAX (64 * 1024) /* largest response head accepted from an upstream */
#define UPGRADE_LINES "Connection: Upgrade\r\nUpgrade: websocket\r\n"

static void up_read_cb(struct io *io, void *arg);
static void up_write_cb(struct io *io, void *arg);
static void up_event_cb(struct io *io, int what, void *arg);
static void up_timeout_cb(evutil_socket_t fd, short what, void *arg);
static void connect_upstream(struct req *r, bool allow_pooled);
static void pump_response(struct req *r);
static void arm_up_timer(struct req *r);
static void tunnel_start(struct req *r, struct upconn *uc);

static void set_up_timer(struct upconn *uc, uint32_t ms)
{
    struct timeval tv = {.tv_sec = ms / 1000, .tv_usec = (ms % 1000) * 1000};
    event_add(uc->timer, &tv);
}

/* The bound on the upstream's silence: the route's (a long generation
 * endpoint beside short API calls on one upstream), else the upstream's. */
static uint32_t read_timeout_ms(const struct req *r)
{
    uint32_t ms = r->route != NULL ? r->route->read_timeout_ms : 0;

    return ms != 0 ? ms : r->pool->u->read_timeout_ms;
}

void proxy_abort(struct req *r)
{
    if (r->up && r->state == REQ_TUNNEL)
        metrics_drop(&r->w->stats.tunnels_open); /* a tunnel lives as long as its link */
    if (r->up) {
        upstream_close(r->up);
        r->up = NULL;
    }
}

/* ---- the request head sent upstream ---------------------------------- */

/* Headers a client may never pass through: hop-by-hop (RFC 9110 7.6.1),
 * the ones flowgate sets itself, and Expect (flowgate answers 100-continue). */
/* A header name with its length, so a list is scanned without strlen. */
struct hname {
    const char *name;
    size_t len;
};
/* clang-format off */
#define HNAME(s) {s, sizeof(s) - 1}
/* clang-format on */

static bool in_list(const struct hname *list, size_t n, const struct h1_header *h)
{
    for (size_t i = 0; i < n; i++)
        if (list[i].len == h->name_len &&
            h1_token_eq_n(h->name, h->name_len, list[i].name, list[i].len))
            return true;
    return false;
}

static bool drop_request_header(const struct h1_header *h)
{
    static const struct hname fixed[] = {
        HNAME("Connection"),       HNAME("Keep-Alive"),
        HNAME("Proxy-Connection"), HNAME("TE"),
        HNAME("Trailer"),          HNAME("Upgrade"),
        HNAME("Expect"),           HNAME("Content-Length"),
        HNAME("X-Forwarded-For"),  HNAME("X-Forwarded-Proto"),
        HNAME("X-Forwarded-Host"), HNAME("X-Real-IP"),
        HNAME("X-Request-Id"),     HNAME("Forwarded"),
        HNAME("HTTP2-Settings"),
    };

    return in_list(fixed, sizeof(fixed) / sizeof(fixed[0]), h);
}

/* Is NAME listed in one of the message's Connection headers? Framing and
 * Host can never be removed this way: only end-to-end extension headers. */
static bool named_by_connection(const struct h1_header *hs, size_t n, const struct h1_header *h)
{
    char name[128];

    if (h->name_len >= sizeof(name) || h1_token_eq(h->name, h->name_len, "Host") ||
        h1_token_eq(h->name, h->name_len, "Transfer-Encoding") ||
        h1_token_eq(h->name, h->name_len, "Content-Length"))
        return false;
    memcpy(name, h->name, h->name_len);
    name[h->name_len] = '\0';
    for (size_t i = 0; i < n; i++)
        if (h1_token_eq(hs[i].name, hs[i].name_len, "Connection") &&
            h1_list_has(hs[i].value, hs[i].value_len, name))
            return true;
    return false;
}

/* Fixed text of the request head flowgate adds, IPs and ids included. */
#define REQUEST_HEAD_ADDED 768

/* Returns 0, or -1 when the head could not be written (no memory). */
static int write_request_head(struct req *r, struct upconn *uc, struct evbuffer *out)
{
    const struct h1_request *h = &r->h;
    const char *server = h->host ? NULL : upstream_server_text(uc);
    bool conn_lists = h->connection;
    struct wbuf b;

    /* Every header comes from the head as received, so its length bounds
     * them, twice over for a stage that rewrites one (preview cookies need
     * twice a value's length while they are stripped). */
    wbuf_begin(&b, out,
               r->head_len * 2 + r->path_len + h->query_len + r->xff_prior_len + h->host_len +
                   r->up_extra_len + (server ? strlen(server) : 0) + REQUEST_HEAD_ADDED);
    /* An HTTP/1.0 client cannot read a chunked response: ask the upstream in
     * 1.0 too, so it answers with a length or by closing. */
    wbuf_put(&b, h->method_str, h->method_len);
    wbuf_lit(&b, " ");
    wbuf_put(&b, r->path, r->path_len);
    if (h->query) {
        wbuf_lit(&b, "?");
        wbuf_put(&b, h->query, h->query_len);
    }
    if (h->version_minor == 0)
        wbuf_lit(&b, " HTTP/1.0\r\n");
    else
        wbuf_lit(&b, " HTTP/1.1\r\n");
    for (size_t i = 0; i < h->nheaders; i++) {
        const struct h1_header *hd = &h->headers[i];
        if (drop_request_header(hd) ||
            (conn_lists && named_by_connection(h->headers, h->nheaders, hd)))
            continue;
        enum stage_header v = stages_request_header(r, hd, &b);
        if (v == STAGE_HDR_DEFAULT || v == STAGE_HDR_KEEP)
            wbuf_header(&b, hd->name, hd->name_len, hd->value, hd->value_len);
    }
    if (server)
        wbuf_header(&b, "Host", 4, server, strlen(server));
    if (h->framing == H1_FRAMING_LENGTH) {
        wbuf_lit(&b, "Content-Length: ");
        wbuf_u64(&b, h->content_length);
        wbuf_lit(&b, "\r\n");
    }
    wbuf_lit(&b, "X-Forwarded-For: ");
    if (r->xff_prior) {
        wbuf_put(&b, r->xff_prior, r->xff_prior_len);
        wbuf_lit(&b, ", ");
    }
    wbuf_str(&b, r->peer_ip);
    if (r->tls)
        wbuf_lit(&b, "\r\nX-Forwarded-Proto: https\r\nX-Real-IP: ");
    else
        wbuf_lit(&b, "\r\nX-Forwarded-Proto: http\r\nX-Real-IP: ");
    wbuf_str(&b, r->client_ip);
    wbuf_lit(&b, "\r\nX-Request-Id: ");
    wbuf_str(&b, r->request_id);
    wbuf_lit(&b, "\r\n");
    if (h->host)
        wbuf_header(&b, "X-Forwarded-Host", 16, h->host, h->host_len);
    if (r->up_extra_len)
        wbuf_put(&b, r->rb->up_extra, r->up_extra_len);
    if (h->version_minor == 0)
        wbuf_lit(&b, "Connection: close\r\n");
    if (r->tunnel)
        wbuf_lit(&b, UPGRADE_LINES);
    wbuf_lit(&b, "\r\n");
    return wbuf_end(&b);
}

/* ---- failures before a response -------------------------------------- */

/*
 * Failures after which the next server is tried (nginx's proxy_next_upstream
 * error timeout): the request never reached a server (refused, connect
 * timeout or error), or one closed or garbled its answer before a response
 * head, which a server's crash or restart does. A read timeout is not: the
 * server took the request and went silent, it may be acting on it (a POST
 * charging a card), and another try would also double the client's wait.
 */
#define UP_RETRY_MASK                                                                              \
    ((1u << UP_FAIL_REFUSED) | (1u << UP_FAIL_CONNECT_TIMEOUT) | (1u << UP_FAIL_ERROR) |           \
     (1u << UP_FAIL_CLOSED) | (1u << UP_FAIL_BAD_RESPONSE))

/* The one place that decides between another try and the failure answer:
 * never once a body byte left (it cannot be sent again), and at most
 * max_tries tries, each on a server of its own. */
static bool may_retry(const struct req *r, enum upstream_fail fail)
{
    const struct fg_upstream *u = r->pool->u;

    if (r->body_seen > 0 || r->resp == RESP_STARTED)
        return false; /* body bytes are gone upstream: cannot replay them */
    return (UP_RETRY_MASK & (1u << fail)) && r->attempts < u->max_tries &&
           r->attempts < r->pool->nlive;
}

/* One failed exchange with R's upstream (each attempt counts), by kind. */
static void count_failure(struct req *r, enum upstream_fail fail)
{
    uint64_t *c = metrics_row(&r->w->upstream_errors, worker_upstream_row(r->snap, r->pool));

    if (c != NULL)
        metrics_bump(&c[fail]);
}

/* A pooled connection that closes before answering was most likely closed
 * by the server's idle timeout as the request crossed it (RFC 9112 9.3.1):
 * it is no try, and says nothing of the server (nginx does the same). The
 * next try is on a new connection, so this happens once a request. */
static void upstream_failed(struct req *r, bool was_reused, enum upstream_fail fail)
{
    count_failure(r, fail);
    if (was_reused && fail == UP_FAIL_CLOSED)
        r->attempts--;
    if (may_retry(r, fail)) {
        connect_upstream(r, false);
        return;
    }
    log_warn("upstream %s: %s (request %s)", r->pool->u->name, upstream_fail_str(fail),
             r->request_id);
    r->error_code = upstream_fail_str(fail);
    if (r->resp == RESP_STARTED) {
        req_abort(r, true);
        return;
    }
    bool timeout = fail == UP_FAIL_CONNECT_TIMEOUT || fail == UP_FAIL_READ_TIMEOUT;
    req_answer(r, timeout ? FG_ERR_GATEWAY_TIMEOUT : FG_ERR_BAD_GATEWAY);
}

/* Drop the link to the upstream, then fail the request. Out of memory
 * (UP_FAIL_ERROR here) says nothing of the server, nor a stale pooled
 * connection (upstream_failed). */
static void fail_link(struct req *r, enum upstream_fail fail)
{
    bool reused = r->up ? r->up->reused : false;

    if (r->up && (fail == UP_FAIL_BAD_RESPONSE || (fail == UP_FAIL_CLOSED && !reused)))
        upstream_server_failed(r->up);
    proxy_abort(r);
    upstream_failed(r, reused, fail);
}

/* ---- request body: client -> upstream --------------------------------- */

static void request_body_done(struct req *r)
{
    r->body = BODY_NONE;
    r->ops->clear_timer(r->conn);
    if (r->up && r->resp == RESP_NONE)
        set_up_timer(r->up, read_timeout_ms(r));
}

/*
 * Move USED bytes (the first of which are at DATA) from IN to OUT. Small
 * pieces are copied so they join the head's chain, which the writer (TLS
 * towards a client) then sends as one record without gathering it first.
 * Large pieces are moved chain by chain, never copied.
 */
static void move_bytes(struct evbuffer *in, struct evbuffer *out, const void *data, size_t used)
{
    if (used <= 4096) {
        evbuffer_add(out, data, used);
        evbuffer_drain(in, used);
    } else {
        evbuffer_remove_buffer(in, out, used);
    }
}

/*
 * Move the USED body bytes at DATA from IN to OUT, leaving out the trailer
 * fields CUT marks. Trailers are dropped both ways, as nginx drops them ("in
 * most cases, the trailers are simply discarded", RFC 9110 6.5.1): a request's
 * could be read upstream as fields its head can never carry (X-User-Id, Host,
 * framing, a preview's credentials); a response's as fields flowgate removes
 * from the head (a preview's Set-Cookie), and no client asked for them, as
 * "TE: trailers" is never forwarded (RFC 9110 10.1.4).
 */
static void move_body(struct evbuffer *in, struct evbuffer *out, const char *data, size_t used,
                      const struct h1_cut *cut)
{
    size_t tail = used - cut->off - cut->len;

    if (cut->len == 0) {
        move_bytes(in, out, data, used);
        return;
    }
    /* Each step leaves the bytes still to move in DATA's chain, so DATA
     * stays valid until the last one. */
    if (cut->off > 0)
        move_bytes(in, out, data, cut->off);
    evbuffer_drain(in, cut->len);
    if (tail > 0)
        move_bytes(in, out, data + cut->off + cut->len, tail);
}

static void move_request_body(struct req *r)
{
    struct evbuffer *in = r->in;

    /* While connecting, r->up is held but not yet ours (owner unset): body
     * bytes written now would reach the upstream before the request head. */
    if (r->body != BODY_PENDING || r->up == NULL || r->up->owner != r)
        return;
    struct evbuffer *out = r->up->io->out;
    while (evbuffer_get_length(out) < PROXY_WRITE_HIGH && evbuffer_get_length(in) > 0) {
        struct evbuffer_iovec v;
        struct h1_cut cut;
        size_t used = 0;
        evbuffer_peek(in, -1, NULL, &v, 1);
        enum h1_body_status st = h1_body_feed_cut(&r->h.parser, v.iov_base, v.iov_len, &used, &cut);
        if (st == H1_BODY_ERROR) {
            r->error_code = "bad request body framing";
            proxy_abort(r);
            if (r->resp == RESP_STARTED)
                req_abort(r, false);
            else
                req_answer(r, FG_ERR_BAD_REQUEST);
            return;
        }
        r->body_seen += used;
        if (r->body_seen > r->cfg->limits.max_body_bytes) {
            proxy_abort(r);
            if (r->resp == RESP_STARTED)
                req_abort(r, false);
            else
                req_answer(r, FG_ERR_BODY_TOO_LARGE);
            return;
        }
        move_body(in, out, v.iov_base, used, &cut);
        if (st == H1_BODY_DONE) {
            request_body_done(r);
            return;
        }
    }
    r->ops->set_timer(r->conn, r->cfg->limits.body_timeout_ms);
}

/* Move what the client sent of its body, then send it (and any head
 * before it) upstream. */
static void pump_request(struct req *r)
{
    move_request_body(r);
    if (r->up && r->up->owner == r)
        io_flush(r->up->io);
}

void proxy_client_readable(struct req *r)
{
    if (r->body == BODY_PENDING && r->up)
        pump_request(r);
}

/*
 * The upstream's read timer measures its silence while flowgate wants its
 * bytes. While the client's output is full, flowgate itself has stopped
 * taking the upstream's bytes (backpressure): that wait is the client's, and
 * only the client's send timeout runs (io_set_send_timeout).
 */
static void arm_up_timer(struct req *r)
{
    struct upconn *uc = r->up;

    if (uc == NULL || r->state != REQ_UPSTREAM)
        return;
    if (r->resp == RESP_STARTED && r->ops->pending_out(r->conn) >= PROXY_WRITE_HIGH)
        event_del(uc->timer);
    else
        set_up_timer(uc, read_timeout_ms(r));
}

void proxy_client_writable(struct req *r)
{
    if (r->resp == RESP_STARTED && r->up) {
        pump_response(r);
        arm_up_timer(r);
    }
}

/* ---- connecting -------------------------------------------------------- */

static void send_continue(struct req *r)
{
    /* RFC 9110 10.1.1: the client waits for 100 before sending its body.
     * flowgate says it once the request is going to be forwarded. */
    if (r->h.expect_continue && r->body == BODY_PENDING && !r->expect_sent &&
        evbuffer_get_length(r->in) == 0) {
        evbuffer_add(r->out, "HTTP/1.1 100 Continue\r\n\r\n", 25);
        r->expect_sent = true;
        req_flush(r);
    }
}

static void on_upstream_ready(struct upconn *uc, enum upstream_fail fail, void *arg)
{
    struct req *r = arg;

    req_hold(r);
    if (fail != UP_FAIL_NONE) {
        bool reused = uc->reused;
        upstream_close(uc);
        r->up = NULL;
        upstream_failed(r, reused, fail);
        req_release(r);
        return;
    }
    r->up = uc;
    uc->owner = r;
    const char *addr = upstream_server_text(uc);
    size_t len = strnlen(addr, sizeof(r->upstream_addr) - 1);
    memcpy(r->upstream_addr, addr, len);
    r->upstream_addr[len] = '\0';
    gettimeofday(&r->up_start, NULL);
    event_assign(uc->timer, r->w->base, -1, 0, up_timeout_cb, uc);
    io_setcb(uc->io, up_read_cb, up_write_cb, up_event_cb, uc);
    uc->io->write_low = PROXY_WRITE_LOW;
    io_enable_read(uc->io);
    if (write_request_head(r, uc, uc->io->out) < 0) {
        fail_link(r, UP_FAIL_ERROR);
        req_release(r);
        return;
    }
    send_continue(r);
    if (r->body == BODY_PENDING) {
        pump_request(r);
    } else {
        request_body_done(r);
        io_flush(uc->io);
    }
    req_release(r);
}

static void connect_upstream(struct req *r, bool allow_pooled)
{
    struct upstream_pool *pool = r->pool;
    bool ready = false;

    r->attempts++;
    /* Held while connecting too: a client that goes away mid-connect closes
     * it through proxy_abort, so no callback can reach a freed connection. */
    r->up = upstream_get(pool, on_upstream_ready, r, allow_pooled, &r->up_tried, &ready);
    if (r->up == NULL)
        upstream_failed(r, false, UP_FAIL_ERROR);
    else if (ready)
        on_upstream_ready(r->up, UP_FAIL_NONE, r);
}

/* Any upgrade but a WebSocket handshake is not tunnelled (its Upgrade header
 * is dropped like any hop-by-hop header), nor one a stage refused (previews
 * without previews.websocket). */
static bool wants_websocket(const struct req *r)
{
    return h1_is_websocket(&r->h) && !r->no_tunnel;
}

void proxy_start(struct req *r)
{
    r->tunnel = wants_websocket(r);
    r->state = REQ_UPSTREAM;
    r->attempts = 0;
    r->up_tried = 0;
    connect_upstream(r, true);
}

/* ---- the response head sent to the client ------------------------------ */

static bool drop_response_header(const struct req *r, const struct h1_header *h)
{
    static const struct hname fixed[] = {
        HNAME("Connection"), HNAME("Keep-Alive"), HNAME("Proxy-Connection"), HNAME("TE"),
        HNAME("Trailer"),    HNAME("Upgrade"),    HNAME("Server"),           HNAME("X-Request-Id"),
    };
    const struct fg_headers *sec = &r->cfg->headers;
    const struct {
        struct hname name;
        const char *value;
    } own[] = {
        {HNAME("Strict-Transport-Security"), sec->hsts},
        {HNAME("X-Frame-Options"), sec->frame_options},
        {HNAME("X-Content-Type-Options"), sec->content_type_options},
        {HNAME("X-XSS-Protection"), sec->xss_protection},
        {HNAME("Referrer-Policy"), sec->referrer_policy},
        {HNAME("Content-Security-Policy"), sec->csp},
    };

    if (in_list(fixed, sizeof(fixed) / sizeof(fixed[0]), h))
        return true;
    /* The stages' rules (preview framing and cookies, the CORS headers). */
    enum stage_header v = stages_response_header(r, h);
    if (v != STAGE_HDR_DEFAULT)
        return v == STAGE_HDR_DROP;
    /* flowgate's configured value replaces the upstream's. */
    for (size_t i = 0; i < sizeof(own) / sizeof(own[0]); i++)
        if (own[i].value[0] && in_list(&own[i].name, 1, h))
            return true;
    return false;
}

/*
 * The Content-Length the client is told, written once by flowgate: none
 * beside a Transfer-Encoding (RFC 9112 6.3: a proxy removes it), none on a
 * 1xx or 204 (RFC 9110 8.6), and one plain number where the upstream sent
 * repeats or a list ("2, 2"), which an HTTP/2 client would reject.
 */
static bool response_length(const struct h1_response *resp, uint64_t *length)
{
    if (resp->status < 200 || resp->status == 204 ||
        h1_find(resp->headers, resp->nheaders, "Transfer-Encoding") != NULL)
        return false;
    return h1_content_length(resp->headers, resp->nheaders, length) == 1;
}

/* Relay the upstream's head (HEAD_LEN bytes as received): 0, or -1 when it
 * could not be written (no memory). */
static int write_response_head(struct req *r, const struct h1_response *resp, size_t head_len)
{
    bool upgrade = resp->status == 101;
    bool conn_lists = resp->connection;
    struct wbuf b;

    /* A 101 keeps its Connection: upgrade; the tunnel ends the connection. */
    if (!upgrade && (!r->h.keep_alive || resp->framing == H1_FRAMING_EOF ||
                     r->body == BODY_PENDING || worker_draining(r->w)))
        r->close_after = true;
    r->status = resp->status;
    /* The upstream's headers (its Vary values included) are bounded by its
     * head; flowgate's own by respond_common_len and the stages' room. */
    wbuf_begin(&b, r->out,
               head_len + resp->reason_len + respond_common_len(r) + stages_response_end_room(r) +
                   sizeof(UPGRADE_LINES) + sizeof("Content-Length: 18446744073709551615\r\n") + 64);
    wbuf_lit(&b, "HTTP/1.1 ");
    wbuf_u64(&b, (uint64_t)resp->status);
    wbuf_lit(&b, " ");
    if (resp->reason_phrase)
        wbuf_put(&b, resp->reason_phrase, resp->reason_len);
    wbuf_lit(&b, "\r\n");
    for (size_t i = 0; i < resp->nheaders; i++) {
        const struct h1_header *hd = &resp->headers[i];
        if (drop_response_header(r, hd) ||
            (conn_lists && named_by_connection(resp->headers, resp->nheaders, hd)) ||
            h1_token_eq(hd->name, hd->name_len, "Content-Length"))
            continue;
        wbuf_header(&b, hd->name, hd->name_len, hd->value, hd->value_len);
    }
    uint64_t length;
    if (response_length(resp, &length)) {
        wbuf_lit(&b, "Content-Length: ");
        wbuf_u64(&b, length);
        wbuf_lit(&b, "\r\n");
    }
    stages_response_end(r, resp->headers, resp->nheaders, &b);
    respond_common_headers(r, &b);
    if (upgrade)
        wbuf_lit(&b, UPGRADE_LINES);
    wbuf_lit(&b, "\r\n");
    size_t n = wbuf_len(&b);
    if (wbuf_end(&b) < 0)
        return -1;
    r->bytes_out += n;
    return 0;
}

/* Copy the head out of the upstream's input so its slices stay valid. */
static int take_response_head(struct upconn *uc, size_t len)
{
    if (len > uc->head_cap) {
        char *p = realloc(uc->head_buf, len);
        if (p == NULL)
            return -1;
        uc->head_buf = p;
        uc->head_cap = len;
    }
    if (uc->hdrs == NULL) {
        uc->hdrs = calloc(256, sizeof(*uc->hdrs));
        if (uc->hdrs == NULL)
            return -1;
    }
    evbuffer_remove(uc->io->in, uc->head_buf, len);
    return 0;
}

/* A 101 is believed only for a WebSocket upgrade flowgate forwarded, and
 * only when it names websocket (RFC 6455 4.1: the client fails otherwise). */
static bool accept_switch(const struct req *r, const struct h1_response *resp)
{
    const struct h1_header *up = h1_find(resp->headers, resp->nheaders, "Upgrade");

    return r->tunnel && up != NULL && h1_list_has(up->value, up->value_len, "websocket");
}

/* Parse response heads until a final one (1xx are swallowed: flowgate
 * already said 100 itself). Returns 1 when a final head was relayed, 2 when
 * a 101 was relayed and the tunnel started, 0 when more bytes are needed,
 * -1 after failing the request. */
static int read_response_head(struct req *r, struct upconn *uc)
{
    struct evbuffer *in = uc->io->in;
    ssize_t end;

    for (;;) {
        size_t len = evbuffer_get_length(in);
        size_t n = len < UP_HEAD_MAX ? len : UP_HEAD_MAX;
        if (n == 0)
            return 0;
        end = h1_head_end((const char *)evbuffer_pullup(in, (ssize_t)n), n);
        if (end == -2 && len < UP_HEAD_MAX)
            return 0;
        if (end < 0 || take_response_head(uc, (size_t)end) < 0)
            goto bad;
        memset(&uc->resp, 0, sizeof(uc->resp));
        uc->resp.headers = uc->hdrs;
        uc->resp.max_headers = 256;
        if (h1_parse_response(&uc->resp, uc->head_buf, (size_t)end,
                              r->h.method == H1_METHOD_HEAD) != H1_OK)
            goto bad;
        if (uc->resp.status == 101 && !accept_switch(r, &uc->resp))
            goto bad; /* no upgrade was asked for: a 101 cannot be trusted */
        if (uc->resp.status >= 200 || uc->resp.status == 101)
            break;
    }
    upstream_server_ok(uc);
    struct timeval now;
    gettimeofday(&now, NULL);
    r->upstream_ms =
        (now.tv_sec - r->up_start.tv_sec) * 1e3 + (now.tv_usec - r->up_start.tv_usec) / 1e3;
    r->resp = RESP_STARTED;
    r->upstream_status = uc->resp.status;
    if (write_response_head(r, &uc->resp, (size_t)end) < 0) {
        r->error_code = "out of memory";
        proxy_abort(r);
        req_abort(r, false);
        return -1;
    }
    if (uc->resp.status == 101) {
        tunnel_start(r, uc);
        return 2;
    }
    return 1;

bad:
    r->error_code = "bad upstream response";
    count_failure(r, UP_FAIL_BAD_RESPONSE);
    upstream_server_failed(uc);
    proxy_abort(r);
    if (r->resp == RESP_STARTED)
        req_abort(r, true);
    else
        req_answer(r, FG_ERR_BAD_GATEWAY);
    return -1;
}

/* ---- response body: upstream -> client --------------------------------- */

static void response_complete(struct req *r)
{
    struct upconn *uc = r->up;
    /* A declined upgrade leaves a connection that was asked to switch. */
    bool keep =
        uc->resp.keep_alive && r->body == BODY_NONE && !r->up_eof && !r->w->stopping && !r->tunnel;

    r->up = NULL;
    event_del(uc->timer);
    upstream_release(uc, keep);
    req_response_done(r);
}

/* The response was cut short (upstream closed, timed out or broke framing):
 * the client must see it truncated, never completed. Flush what arrived,
 * then close without finishing the message. */
static void response_truncated(struct req *r, enum upstream_fail fail, const char *why)
{
    r->error_code = why;
    count_failure(r, fail);
    proxy_abort(r);
    req_abort(r, true);
}

static void move_response_body(struct req *r)
{
    struct upconn *uc = r->up;
    struct evbuffer *in = uc->io->in;
    struct evbuffer *out = r->out;

    /* pending_out, not the output's length: an HTTP/2 stream is also full
     * while its connection's streams together hold their bound. */
    while (r->ops->pending_out(r->conn) < PROXY_WRITE_HIGH) {
        struct evbuffer_iovec v = {.iov_base = NULL, .iov_len = 0};
        struct h1_cut cut;
        size_t used = 0;
        if (evbuffer_peek(in, -1, NULL, &v, 1) < 1)
            v.iov_len = 0;
        /* An empty body (Content-Length: 0) is done with no byte to feed. */
        if (v.iov_len == 0 && uc->resp.framing != H1_FRAMING_NONE && !uc->resp.parser.msg_done) {
            if (!r->up_eof)
                return;
            if (h1_body_eof(&uc->resp.parser) == H1_BODY_DONE)
                response_complete(r);
            else
                response_truncated(r, UP_FAIL_TRUNCATED, "upstream response truncated");
            return;
        }
        enum h1_body_status st =
            h1_body_feed_cut(&uc->resp.parser, v.iov_base, v.iov_len, &used, &cut);
        if (st == H1_BODY_ERROR) {
            response_truncated(r, UP_FAIL_BAD_FRAMING, "bad upstream response framing");
            return;
        }
        move_body(in, out, v.iov_base, used, &cut);
        r->bytes_out += used - cut.len;
        if (st == H1_BODY_DONE) {
            response_complete(r);
            return;
        }
    }
}

/* Move what the upstream sent of the body, then send it to the client. */
static void pump_response(struct req *r)
{
    move_response_body(r);
    req_flush(r);
}

/* ---- upstream callbacks -------------------------------------------------- */

static void up_read_cb(struct io *io, void *arg)
{
    struct upconn *uc = arg;
    struct req *r = uc->owner;

    req_hold(r);
    if (r->resp == RESP_NONE) {
        if (read_response_head(r, uc) == 1 && r->up == uc)
            pump_response(r);
    } else {
        pump_response(r);
    }
    if (r->up == uc)
        arm_up_timer(r);
    req_release(r);
}

static void up_write_cb(struct io *io, void *arg)
{
    struct upconn *uc = arg;
    struct req *r = uc->owner;

    req_hold(r);
    pump_request(r);
    req_release(r);
}

static void up_event_cb(struct io *io, int what, void *arg)
{
    struct upconn *uc = arg;
    struct req *r = uc->owner;

    req_hold(r);
    if (!(what & (IO_EOF | IO_ERROR)))
        goto out;
    if (r->resp == RESP_NONE) {
        /* Whatever was received is not a complete head: nothing can be relayed. */
        fail_link(r, evbuffer_get_length(io->in) ? UP_FAIL_BAD_RESPONSE : UP_FAIL_CLOSED);
        goto out;
    }
    r->up_eof = true;
    pump_response(r);
out:
    req_release(r);
}

static void up_timeout_cb(evutil_socket_t fd, short what, void *arg)
{
    struct upconn *uc = arg;
    struct req *r = uc->owner;

    req_hold(r);
    upstream_server_failed(uc);
    if (r->resp == RESP_NONE) {
        proxy_abort(r);
        upstream_failed(r, false, UP_FAIL_READ_TIMEOUT);
    } else {
        response_truncated(r, UP_FAIL_READ_TIMEOUT, "upstream read timeout");
    }
    req_release(r);
}

/* ---- WebSocket tunnel ------------------------------------------------------ */

#define TUNNEL_FLUSH_MS                                                                            \
    5000 /* the client left: its last bytes get this long to reach the upstream */

/* Move what IN holds to OUT unless OUT is over the high watermark. IN is
 * bounded by its read watermark, so OUT stays bounded too. Returns the bytes moved. */
static size_t tunnel_move(struct evbuffer *in, struct evbuffer *out)
{
    size_t n = evbuffer_get_length(in);

    if (n == 0 || evbuffer_get_length(out) >= PROXY_WRITE_HIGH)
        return 0;
    evbuffer_remove_buffer(in, out, n);
    return n;
}

/* The tunnel is over: the upstream link goes (never pooled), the request is
 * logged, and the client connection closes once its output is flushed. */
static void tunnel_end(struct req *r, const char *why)
{
    if (why && r->error_code == NULL)
        r->error_code = why;
    proxy_abort(r);
    r->close_after = true;
    req_response_done(r);
}

void proxy_tunnel_pump(struct req *r)
{
    struct upconn *uc = r->up;
    size_t up = 0, down;

    if (uc == NULL || r->state != REQ_TUNNEL)
        return;
    if (!r->tunnel_half)
        up = tunnel_move(r->in, uc->io->out);
    down = tunnel_move(uc->io->in, r->out);
    r->body_seen += up;
    r->bytes_out += down;
    io_flush(uc->io);
    req_flush(r); /* the 101 head too, on the first round */
    if (up + down > 0 && !r->tunnel_half)
        r->ops->set_timer(r->conn, r->cfg->limits.keepalive_timeout_ms);
}

void proxy_tunnel_client_eof(struct req *r)
{
    struct upconn *uc = r->up;
    struct evbuffer *in = r->in;

    if (uc == NULL) {
        req_abort(r, false);
        return;
    }
    r->body_seen += evbuffer_get_length(in);
    evbuffer_remove_buffer(in, uc->io->out, evbuffer_get_length(in));
    io_flush(uc->io);
    if (io_pending_out(uc->io) == 0 || io_failed(uc->io)) {
        tunnel_end(r, NULL);
        return;
    }
    uc->io->write_low = 0; /* tunnel_up_write_cb: all of it written */
    r->tunnel_half = true;
    r->ops->pause_read(r->conn);
    r->ops->set_timer(r->conn, TUNNEL_FLUSH_MS);
}

void proxy_tunnel_timeout(struct req *r)
{
    tunnel_end(r, r->tunnel_half ? NULL : "tunnel idle timeout");
}

static void tunnel_up_read_cb(struct io *io, void *arg)
{
    struct req *r = ((struct upconn *)arg)->owner;

    req_hold(r);
    proxy_tunnel_pump(r);
    req_release(r);
}

static void tunnel_up_write_cb(struct io *io, void *arg)
{
    struct req *r = ((struct upconn *)arg)->owner;

    req_hold(r);
    if (r->tunnel_half && io_pending_out(io) == 0)
        tunnel_end(r, NULL);
    else
        proxy_tunnel_pump(r);
    req_release(r);
}

/* The upstream closed: what it sent still goes to the client, whatever the
 * watermark (the client connection is flushed before it closes). */
static void tunnel_up_event_cb(struct io *io, int what, void *arg)
{
    struct req *r = ((struct upconn *)arg)->owner;
    struct evbuffer *in = io->in;

    if (!(what & (IO_EOF | IO_ERROR)))
        return;
    req_hold(r);
    r->bytes_out += evbuffer_get_length(in);
    evbuffer_remove_buffer(in, r->out, evbuffer_get_length(in));
    if (what & IO_ERROR)
        count_failure(r, UP_FAIL_ERROR);
    tunnel_end(r, (what & IO_ERROR) ? "upstream error in tunnel" : NULL);
    req_release(r);
}

/* The 101 went to the client: from now on both sides are byte streams. */
static void tunnel_start(struct req *r, struct upconn *uc)
{
    r->state = REQ_TUNNEL;
    metrics_bump(&r->w->stats.tunnels_open);
    r->close_after = true; /* after a tunnel, no more HTTP on this connection */
    event_del(uc->timer);
    /* No response head will be parsed on this link again: an idle tunnel
     * should not keep the 8 KB of header slots and the head copy. */
    free(uc->hdrs);
    free(uc->head_buf);
    uc->hdrs = NULL;
    uc->head_buf = NULL;
    uc->head_cap = 0;
    memset(&uc->resp, 0, sizeof(uc->resp));
    io_setcb(uc->io, tunnel_up_read_cb, tunnel_up_write_cb, tunnel_up_event_cb, uc);
    r->ops->set_timer(r->conn, r->cfg->limits.keepalive_timeout_ms);
    proxy_tunnel_pump(r);
}
