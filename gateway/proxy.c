/*
 * proxy.c - forward one request upstream and stream the response back.
 *
 * Bodies are never copied through a private buffer: bytes move between the
 * two bufferevents with evbuffer_remove_buffer, after the parser of their
 * message has seen them (so a chunked body is checked as it passes, and the
 * exact end of each message is known for keep-alive and pipelining).
 * Backpressure: a side is fed only while its output holds less than
 * PROXY_WRITE_HIGH; the source's read watermark then stops its socket reads,
 * and the destination's write callback (below PROXY_WRITE_LOW) resumes.
 *
 *   proxy_start -> connect/reuse -> head + body up -> response head down
 *        ^  (reused connection died before answering: retry once fresh)
 *        +-- refused: next server --+      -> body down -> finish
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

#include <event2/buffer.h>

#include "conn.h"
#include "cors.h"
#include "log.h"
#include "proxy.h"
#include "respond.h"
#include "upstream.h"
#include "worker.h"

#define UP_HEAD_MAX (64 * 1024) /* largest response head accepted from an upstream */

static void up_read_cb(struct bufferevent *bev, void *arg);
static void up_write_cb(struct bufferevent *bev, void *arg);
static void up_event_cb(struct bufferevent *bev, short what, void *arg);
static void up_timeout_cb(evutil_socket_t fd, short what, void *arg);
static void connect_upstream(struct conn *c, bool allow_pooled);
static void pump_response(struct conn *c);

static void set_up_timer(struct upconn *uc, uint32_t ms)
{
    struct timeval tv = {.tv_sec = ms / 1000, .tv_usec = (ms % 1000) * 1000};
    event_add(uc->timer, &tv);
}

void proxy_abort(struct conn *c)
{
    if (c->up) {
        upstream_close(c->up);
        c->up = NULL;
    }
}

/* ---- the request head sent upstream ---------------------------------- */

/* Headers a client may never pass through: hop-by-hop (RFC 9110 7.6.1),
 * the ones flowgate sets itself, and Expect (flowgate answers 100-continue). */
static bool drop_request_header(const struct req *r, const struct h1_header *h)
{
    static const char *const fixed[] = {
        "Connection", "Keep-Alive", "Proxy-Connection", "TE", "Trailer", "Upgrade",
        "Expect", "Content-Length", "X-Forwarded-For", "X-Forwarded-Proto", "X-Forwarded-Host",
        "X-Real-IP", "X-Request-Id", "Forwarded", "HTTP2-Settings", NULL,
    };
    for (size_t i = 0; fixed[i]; i++)
        if (h1_token_eq(h->name, h->name_len, fixed[i]))
            return true;
    for (size_t i = 0; i < r->cfg->jwt.nforward_claims; i++)
        if (h1_token_eq(h->name, h->name_len, r->cfg->jwt.forward_claims[i].header))
            return true;
    return false;
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

static void write_request_head(struct conn *c, struct upconn *uc, struct evbuffer *out)
{
    struct req *r = &c->r;
    const struct h1_request *h = &r->h;

    /* An HTTP/1.0 client cannot read a chunked response: ask the upstream in
     * 1.0 too, so it answers with a length or by closing. */
    evbuffer_add_printf(out, "%.*s %s%s%.*s HTTP/1.%d\r\n", (int)h->method_len, h->method_str,
                        r->path, h->query ? "?" : "", h->query ? (int)h->query_len : 0,
                        h->query ? h->query : "", h->version_minor == 0 ? 0 : 1);
    for (size_t i = 0; i < h->nheaders; i++) {
        const struct h1_header *hd = &h->headers[i];
        if (drop_request_header(r, hd) || named_by_connection(h->headers, h->nheaders, hd))
            continue;
        evbuffer_add(out, hd->name, hd->name_len);
        evbuffer_add(out, ": ", 2);
        evbuffer_add(out, hd->value, hd->value_len);
        evbuffer_add(out, "\r\n", 2);
    }
    if (h->host == NULL)
        evbuffer_add_printf(out, "Host: %s\r\n", upstream_server_text(uc));
    if (h->framing == H1_FRAMING_LENGTH)
        evbuffer_add_printf(out, "Content-Length: %llu\r\n", (unsigned long long)h->content_length);
    if (r->xff_prior)
        evbuffer_add_printf(out, "X-Forwarded-For: %.*s, %s\r\n", (int)r->xff_prior_len,
                            r->xff_prior, c->peer_ip);
    else
        evbuffer_add_printf(out, "X-Forwarded-For: %s\r\n", c->peer_ip);
    evbuffer_add_printf(out, "X-Forwarded-Proto: %s\r\nX-Real-IP: %s\r\nX-Request-Id: %s\r\n",
                        c->tls ? "https" : "http", r->client_ip, r->request_id);
    if (h->host)
        evbuffer_add_printf(out, "X-Forwarded-Host: %.*s\r\n", (int)h->host_len, h->host);
    if (r->up_extra_len)
        evbuffer_add(out, r->up_extra, r->up_extra_len);
    if (h->version_minor == 0)
        evbuffer_add(out, "Connection: close\r\n", 19);
    evbuffer_add(out, "\r\n", 2);
}

/* ---- failures before a response -------------------------------------- */

static bool may_retry(const struct conn *c, bool was_reused, const char *kind)
{
    const struct req *r = &c->r;
    size_t nservers = r->route->upstream->nservers;

    if (r->body_seen > 0 || r->resp_head_done)
        return false; /* body bytes are gone upstream: cannot replay them */
    if (was_reused)
        return r->attempts <= nservers + 1; /* a stale pooled connection */
    return strcmp(kind, "timeout") != 0 && r->attempts < nservers;
}

static void upstream_failed(struct conn *c, bool was_reused, const char *kind)
{
    struct req *r = &c->r;

    c->w->stats.upstream_errors++;
    if (may_retry(c, was_reused, kind)) {
        connect_upstream(c, false);
        return;
    }
    log_warn("upstream %s: %s (request %s)", r->route->upstream->name, kind, r->request_id);
    r->error_code = kind;
    if (r->response_started) {
        conn_close(c, true);
        return;
    }
    respond_error(r, strcmp(kind, "timeout") == 0 ? FG_ERR_GATEWAY_TIMEOUT : FG_ERR_BAD_GATEWAY,
                  NULL);
}

/* Drop the link to the upstream, then fail the request. */
static void fail_link(struct conn *c, const char *kind)
{
    bool reused = c->up ? c->up->reused : false;

    proxy_abort(c);
    upstream_failed(c, reused, kind);
}

/* ---- request body: client -> upstream --------------------------------- */

static void request_body_done(struct conn *c)
{
    c->r.body = BODY_NONE;
    conn_clear_timer(c);
    if (c->up && !c->r.resp_head_done)
        set_up_timer(c->up, c->up->pool->u->read_timeout_ms);
}

static void pump_request(struct conn *c)
{
    struct req *r = &c->r;
    struct evbuffer *in = bufferevent_get_input(c->bev);

    /* While connecting, c->up is held but not yet ours (owner unset): body
     * bytes written now would reach the upstream before the request head. */
    if (r->body != BODY_PENDING || c->up == NULL || c->up->owner != c)
        return;
    struct evbuffer *out = bufferevent_get_output(c->up->bev);
    while (evbuffer_get_length(out) < PROXY_WRITE_HIGH && evbuffer_get_length(in) > 0) {
        struct evbuffer_iovec v;
        size_t used = 0;
        evbuffer_peek(in, -1, NULL, &v, 1);
        enum h1_body_status st = h1_body_feed(&r->h.parser, v.iov_base, v.iov_len, &used);
        if (st == H1_BODY_ERROR) {
            r->error_code = "bad request body framing";
            proxy_abort(c);
            if (r->response_started)
                conn_close(c, false);
            else
                respond_error(r, FG_ERR_BAD_REQUEST, NULL);
            return;
        }
        r->body_seen += used;
        if (r->body_seen > r->cfg->limits.max_body_bytes) {
            proxy_abort(c);
            if (r->response_started)
                conn_close(c, false);
            else
                respond_error(r, FG_ERR_BODY_TOO_LARGE, NULL);
            return;
        }
        evbuffer_remove_buffer(in, out, used);
        if (st == H1_BODY_DONE) {
            request_body_done(c);
            return;
        }
    }
    conn_set_timer(c, r->cfg->limits.body_timeout_ms);
}

void proxy_client_readable(struct conn *c)
{
    if (c->r.body == BODY_PENDING && c->up)
        pump_request(c);
}

void proxy_client_writable(struct conn *c)
{
    if (c->r.resp_head_done && c->up)
        pump_response(c);
}

/* ---- connecting -------------------------------------------------------- */

static void send_continue(struct conn *c)
{
    struct req *r = &c->r;

    /* RFC 9110 10.1.1: the client waits for 100 before sending its body.
     * flowgate says it once the request is going to be forwarded. */
    if (r->h.expect_continue && r->body == BODY_PENDING && !r->expect_sent &&
        evbuffer_get_length(bufferevent_get_input(c->bev)) == 0) {
        bufferevent_write(c->bev, "HTTP/1.1 100 Continue\r\n\r\n", 25);
        r->expect_sent = true;
    }
}

static void on_upstream_ready(struct upconn *uc, int ok, const char *kind, void *arg)
{
    struct conn *c = arg;

    if (ok != 0) {
        bool reused = uc->reused;
        upstream_close(uc);
        c->up = NULL;
        upstream_failed(c, reused, kind);
        return;
    }
    c->up = uc;
    uc->owner = c;
    snprintf(c->r.upstream_addr, sizeof(c->r.upstream_addr), "%s", upstream_server_text(uc));
    gettimeofday(&c->r.up_start, NULL);
    event_assign(uc->timer, c->w->base, -1, 0, up_timeout_cb, uc);
    bufferevent_setcb(uc->bev, up_read_cb, up_write_cb, up_event_cb, uc);
    bufferevent_setwatermark(uc->bev, EV_READ, 0, PROXY_READ_HIGH);
    bufferevent_setwatermark(uc->bev, EV_WRITE, PROXY_WRITE_LOW, 0);
    bufferevent_enable(uc->bev, EV_READ | EV_WRITE);
    write_request_head(c, uc, bufferevent_get_output(uc->bev));
    send_continue(c);
    if (c->r.body == BODY_PENDING)
        pump_request(c);
    else
        request_body_done(c);
}

static void connect_upstream(struct conn *c, bool allow_pooled)
{
    struct req *r = &c->r;
    struct upstream_pool *pool = &c->w->pools[r->route->upstream->index];

    bool ready = false;

    r->attempts++;
    /* Held while connecting too: a client that goes away mid-connect closes
     * it through proxy_abort, so no callback can reach a freed connection. */
    c->up = upstream_get(pool, on_upstream_ready, c, allow_pooled, &ready);
    if (c->up == NULL)
        upstream_failed(c, false, "error");
    else if (ready)
        on_upstream_ready(c->up, 0, NULL, c);
}

void proxy_start(struct conn *c)
{
    c->state = CONN_PROXYING;
    c->r.attempts = 0;
    bufferevent_setwatermark(c->bev, EV_WRITE, PROXY_WRITE_LOW, 0);
    connect_upstream(c, true);
}

/* ---- the response head sent to the client ------------------------------ */

static bool drop_response_header(const struct req *r, const struct h1_header *h)
{
    static const char *const fixed[] = {
        "Connection", "Keep-Alive", "Proxy-Connection", "TE", "Trailer", "Upgrade",
        "Server", "X-Request-Id", NULL,
    };
    const struct fg_headers *sec = &r->cfg->headers;
    const struct {
        const char *name;
        const char *value;
    } own[] = {
        {"Strict-Transport-Security", sec->hsts},
        {"X-Frame-Options", sec->frame_options},
        {"X-Content-Type-Options", sec->content_type_options},
        {"X-XSS-Protection", sec->xss_protection},
        {"Referrer-Policy", sec->referrer_policy},
        {"Content-Security-Policy", sec->csp},
    };

    for (size_t i = 0; fixed[i]; i++)
        if (h1_token_eq(h->name, h->name_len, fixed[i]))
            return true;
    /* The CORS policy is flowgate's: Access-Control-* and Vary are rewritten. */
    if (cors_owns_response_header(r->cfg, h->name, h->name_len))
        return true;
    /* flowgate's configured value replaces the upstream's. */
    for (size_t i = 0; i < sizeof(own) / sizeof(own[0]); i++)
        if (own[i].value[0] && h1_token_eq(h->name, h->name_len, own[i].name))
            return true;
    return false;
}

static void write_response_head(struct conn *c, const struct h1_response *resp)
{
    struct req *r = &c->r;
    struct evbuffer *out = bufferevent_get_output(c->bev);
    size_t before = evbuffer_get_length(out);

    if (!r->h.keep_alive || resp->framing == H1_FRAMING_EOF || r->body == BODY_PENDING)
        r->close_after = true;
    r->status = resp->status;
    evbuffer_add_printf(out, "HTTP/1.1 %d %.*s\r\n", resp->status, (int)resp->reason_len,
                        resp->reason_phrase ? resp->reason_phrase : "");
    for (size_t i = 0; i < resp->nheaders; i++) {
        const struct h1_header *hd = &resp->headers[i];
        if (drop_response_header(r, hd) || named_by_connection(resp->headers, resp->nheaders, hd))
            continue;
        evbuffer_add(out, hd->name, hd->name_len);
        evbuffer_add(out, ": ", 2);
        evbuffer_add(out, hd->value, hd->value_len);
        evbuffer_add(out, "\r\n", 2);
    }
    cors_write_vary(r->cfg, resp->headers, resp->nheaders, out);
    respond_common_headers(r, out);
    evbuffer_add(out, "\r\n", 2);
    r->bytes_out += evbuffer_get_length(out) - before;
    r->response_started = true;
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
    evbuffer_remove(bufferevent_get_input(uc->bev), uc->head_buf, len);
    return 0;
}

/* Parse response heads until a final one (1xx are swallowed: flowgate
 * already said 100 itself). Returns 1 when a final head was relayed, 0 when
 * more bytes are needed, -1 after failing the request. */
static int read_response_head(struct conn *c, struct upconn *uc)
{
    struct evbuffer *in = bufferevent_get_input(uc->bev);

    for (;;) {
        size_t len = evbuffer_get_length(in);
        size_t n = len < UP_HEAD_MAX ? len : UP_HEAD_MAX;
        if (n == 0)
            return 0;
        ssize_t end = h1_head_end((const char *)evbuffer_pullup(in, (ssize_t)n), n);
        if (end == -2 && len < UP_HEAD_MAX)
            return 0;
        if (end < 0 || take_response_head(uc, (size_t)end) < 0)
            goto bad;
        memset(&uc->resp, 0, sizeof(uc->resp));
        uc->resp.headers = uc->hdrs;
        uc->resp.max_headers = 256;
        if (h1_parse_response(&uc->resp, uc->head_buf, (size_t)end,
                              c->r.h.method == HTTP_HEAD) != H1_OK)
            goto bad;
        if (uc->resp.status == 101)
            goto bad; /* no upgrade was asked for: a 101 cannot be trusted */
        if (uc->resp.status >= 200)
            break;
    }
    struct timeval now;
    gettimeofday(&now, NULL);
    c->r.upstream_ms = (now.tv_sec - c->r.up_start.tv_sec) * 1e3 +
                       (now.tv_usec - c->r.up_start.tv_usec) / 1e3;
    c->r.resp_head_done = true;
    write_response_head(c, &uc->resp);
    return 1;

bad:
    c->r.error_code = "bad upstream response";
    proxy_abort(c);
    if (c->r.response_started)
        conn_close(c, true);
    else
        respond_error(&c->r, FG_ERR_BAD_GATEWAY, NULL);
    return -1;
}

/* ---- response body: upstream -> client --------------------------------- */

static void response_complete(struct conn *c)
{
    struct upconn *uc = c->up;
    bool keep = uc->resp.keep_alive && c->r.body == BODY_NONE && !c->r.up_eof && !c->w->stopping;

    c->up = NULL;
    event_del(uc->timer);
    upstream_release(uc, keep);
    conn_finish_request(c);
}

/* The response was cut short (upstream closed, timed out or broke framing):
 * the client must see it truncated, never completed. Flush what arrived,
 * then close without finishing the message. */
static void response_truncated(struct conn *c, const char *why)
{
    c->r.error_code = why;
    c->w->stats.upstream_errors++;
    proxy_abort(c);
    conn_close(c, true);
}

/*
 * Move USED bytes (the first of which are at DATA) from IN to OUT. Small
 * pieces are copied so they join the response head's chain: the TLS layer
 * writes one record per chain, and a head with a small body in one record is
 * one write(2) and one encryption instead of two. Large pieces are moved
 * chain by chain, never copied.
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

static void pump_response(struct conn *c)
{
    struct upconn *uc = c->up;
    struct evbuffer *in = bufferevent_get_input(uc->bev);
    struct evbuffer *out = bufferevent_get_output(c->bev);

    while (evbuffer_get_length(out) < PROXY_WRITE_HIGH) {
        struct evbuffer_iovec v = {.iov_base = NULL, .iov_len = 0};
        size_t used = 0;
        if (evbuffer_peek(in, -1, NULL, &v, 1) < 1)
            v.iov_len = 0;
        if (v.iov_len == 0 && uc->resp.framing != H1_FRAMING_NONE) {
            if (!c->r.up_eof)
                return;
            if (h1_body_eof(&uc->resp.parser) == H1_BODY_DONE)
                response_complete(c);
            else
                response_truncated(c, "upstream response truncated");
            return;
        }
        enum h1_body_status st = h1_body_feed(&uc->resp.parser, v.iov_base, v.iov_len, &used);
        if (st == H1_BODY_ERROR) {
            response_truncated(c, "bad upstream response framing");
            return;
        }
        move_bytes(in, out, v.iov_base, used);
        c->r.bytes_out += used;
        if (st == H1_BODY_DONE) {
            response_complete(c);
            return;
        }
    }
}

/* ---- upstream callbacks -------------------------------------------------- */

static void up_read_cb(struct bufferevent *bev, void *arg)
{
    struct upconn *uc = arg;
    struct conn *c = uc->owner;

    conn_hold(c);
    if (!c->r.resp_head_done) {
        if (read_response_head(c, uc) == 1 && c->up == uc)
            pump_response(c);
    } else {
        pump_response(c);
    }
    if (c->up == uc && !c->closed)
        set_up_timer(uc, uc->pool->u->read_timeout_ms);
    conn_release(c);
}

static void up_write_cb(struct bufferevent *bev, void *arg)
{
    struct upconn *uc = arg;
    struct conn *c = uc->owner;

    conn_hold(c);
    pump_request(c);
    conn_release(c);
}

static void up_event_cb(struct bufferevent *bev, short what, void *arg)
{
    struct upconn *uc = arg;
    struct conn *c = uc->owner;

    conn_hold(c);
    if (!(what & (BEV_EVENT_EOF | BEV_EVENT_ERROR)))
        goto out;
    if (!c->r.resp_head_done) {
        /* Whatever was received is not a complete head: nothing can be relayed. */
        fail_link(c, evbuffer_get_length(bufferevent_get_input(bev)) ? "bad response" : "closed");
        goto out;
    }
    c->r.up_eof = true;
    bufferevent_disable(bev, EV_READ);
    pump_response(c);
out:
    conn_release(c);
}

static void up_timeout_cb(evutil_socket_t fd, short what, void *arg)
{
    struct upconn *uc = arg;
    struct conn *c = uc->owner;

    conn_hold(c);
    if (!c->r.resp_head_done) {
        proxy_abort(c);
        upstream_failed(c, false, "timeout");
    } else {
        response_truncated(c, "upstream read timeout");
    }
    conn_release(c);
}
