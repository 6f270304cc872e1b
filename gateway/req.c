/*
 * req.c - the request engine: head, routing, stages, answers, the finish.
 *
 * The carrier (conn.c for HTTP/1.1) finds where a head ends and hands it
 * over; from there this file decides what happens to the request, and
 * req_finish() is the only place a request is logged and counted. Every
 * event the carrier reports while a request is in flight comes here first
 * (req_readable and friends) and is passed on by the request's state.
 */
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

#include "client.h"
#include "freelist.h"
#include "log.h"
#include "metrics.h"
#include "proxy.h"
#include "req.h"
#include "respond.h"
#include "route.h"
#include "upstream.h"
#include "uri.h"
#include "worker.h"

const char *req_state_str(enum req_state st)
{
    switch (st) {
    case REQ_STAGES: return "stages";
    case REQ_UPSTREAM: return "upstream";
    case REQ_TUNNEL: return "tunnel";
    case REQ_SENDING: return "sending";
    case REQ_DONE: return "done";
    }
    return "?";
}

const char *req_end_str(enum req_end how)
{
    switch (how) {
    case REQ_END_SENT: return "sent";
    case REQ_END_CLIENT_CLOSED: return "client closed";
    case REQ_END_SEND_TIMEOUT: return "send timeout";
    case REQ_END_SHUTDOWN: return "shutdown";
    case REQ_END_ABORTED: return "aborted";
    }
    return "?";
}

/* ---- request buffers ---------------------------------------------------- */

#define REQBUF_KEEP 64 /* free request buffers a worker keeps */

static struct reqbuf *reqbuf_new(size_t max_headers)
{
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
    rb->r.rb = rb;
    return rb;
}

static void reqbuf_destroy(struct reqbuf *rb)
{
    free(rb->head);
    free(rb);
}

FREELIST_DEFINE(idle_reqbufs, struct reqbuf, next, REQBUF_KEEP)

/* A kept buffer with fewer header slots than MAX_HEADERS (a reload raised
 * limits.max_headers) is freed: the kept ones are all of the new size soon. */
struct req *req_get(struct worker *w, size_t max_headers)
{
    struct reqbuf *rb;

    while ((rb = idle_reqbufs_get(&w->reqbufs)) != NULL && rb->max_headers < max_headers)
        reqbuf_destroy(rb);
    if (rb == NULL)
        rb = reqbuf_new(max_headers);
    return rb ? &rb->r : NULL;
}

void req_put(struct req *r)
{
    struct reqbuf *rb = r->rb;

    /* A buffer grown for one huge head is not kept for everyone. */
    if (rb->head_cap > 8192 || !idle_reqbufs_put(&r->w->reqbufs, rb))
        reqbuf_destroy(rb);
}

void req_free_all(struct worker *w)
{
    struct reqbuf *rb;

    while ((rb = idle_reqbufs_get(&w->reqbufs)) != NULL)
        reqbuf_destroy(rb);
}

/* ---- beginning ------------------------------------------------------------ */

/* Clear the per-request part; the buffers after scratch_begin are reset by
 * their length fields, not rewritten on every request. */
static void req_reset(struct req *r)
{
    memset(&r->state, 0, offsetof(struct req, scratch_begin) - offsetof(struct req, state));
    r->host[0] = r->request_id[0] = r->client_ip[0] = '\0';
    r->upstream_addr[0] = r->user_buf[0] = r->tier_buf[0] = '\0';
    r->upstream_ms = -1;
}

void req_begin(struct req *r)
{
    const struct fg_headers *h = &r->cfg->headers;

    req_reset(r);
    /* HSTS only over TLS (RFC 6797 7.2); routing may choose another block. */
    r->sec_block = r->tls ? h->block_https : h->block_http;
    r->sec_block_len = r->tls ? h->block_https_len : h->block_http_len;
    gettimeofday(&r->start, NULL);
    client_peer_address(r);
}

int req_add_header(struct req *r, const char *line, size_t len)
{
    if (r->extra_len + len > sizeof(r->rb->extra))
        return -1;
    memcpy(r->rb->extra + r->extra_len, line, len);
    r->extra_len += len;
    return 0;
}

int req_add_upstream_header(struct req *r, const char *line, size_t len)
{
    if (r->up_extra_len + len > sizeof(r->rb->up_extra)) {
        r->up_extra_overflow = true;
        return -1;
    }
    memcpy(r->rb->up_extra + r->up_extra_len, line, len);
    r->up_extra_len += len;
    return 0;
}

/* ---- the head --------------------------------------------------------------- */

/* Copy the head out of the input buffer into the request's own buffer: the
 * header slices then stay valid however the input buffer changes. */
static int take_head(struct req *r, size_t len)
{
    /* The normalised path follows the head: it is never longer than the
     * raw target, which is inside the head. */
    if (2 * len + 1 > r->rb->head_cap) {
        char *p = realloc(r->rb->head, 2 * len + 1);
        if (p == NULL)
            return -1;
        r->rb->head = p;
        r->rb->head_cap = 2 * len + 1;
    }
    evbuffer_remove(r->in, r->rb->head, len);
    r->head_len = len;
    r->path = r->rb->head + len;
    return 0;
}

/* Parse the head in R's buffer, then find the client and the request id,
 * which a request refused for its head also gets, for its answer and log. */
static enum h1_status parse_head(struct req *r, size_t head_len)
{
    r->h.headers = r->rb->hdrs;
    r->h.max_headers = r->cfg->limits.max_headers;
    enum h1_status st =
        h1_parse_request(&r->h, r->rb->head, head_len, r->cfg->limits.underscores_in_headers);
    bool parsed = st == H1_OK || st == H1_EXPECTATION; /* every field is set */
    bool trusted = client_peer_trusted(r);
    if (parsed) {
        client_find(r, trusted);
        /* Content-Length: 0 is a body already complete: nothing is left unread. */
        r->body = r->h.framing == H1_FRAMING_NONE ||
                          (r->h.framing == H1_FRAMING_LENGTH && r->h.content_length == 0)
                      ? BODY_NONE
                      : BODY_PENDING;
    }
    client_request_id(r, parsed && trusted);
    return st;
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

void req_head(struct req *r, size_t head_len)
{
    if (take_head(r, head_len) < 0) {
        r->error_code = "out of memory";
        req_abort(r, false);
        return;
    }
    enum h1_status st = parse_head(r, head_len);
    if (st != H1_OK && st != H1_EXPECTATION) {
        req_refuse(r, st == H1_HEAD_TOO_LARGE ? FG_ERR_HEADERS_TOO_LARGE : FG_ERR_BAD_REQUEST,
                   r->h.reason);
        return;
    }
    if (normalise_target(r) < 0) {
        req_refuse(r, FG_ERR_BAD_REQUEST, "bad path or host");
        return;
    }
    if (st == H1_EXPECTATION) {
        /* 417. A body left unread closes the connection after it
         * (respond.c); without one the connection carries on. */
        req_refuse(r, FG_ERR_EXPECTATION, r->h.reason);
        return;
    }
    if (!r->tls) {
        if (respond_redirect(r) < 0)
            req_abort(r, false);
        else
            req_response_done(r);
        return;
    }
    route_dispatch(r);
    run_stages(r);
}

void req_refuse(struct req *r, enum fg_error e, const char *why)
{
    if (r->request_id[0] == '\0')
        worker_request_id(r->w, r->request_id);
    if (why != NULL && r->error_code == NULL)
        r->error_code = why;
    req_answer(r, e);
}

/* ---- stages ---------------------------------------------------------------- */

static void stage_resumed(struct req *r, enum stage_verdict v);

static void run_stages(struct req *r)
{
    while (r->w->stages[r->stage_idx] != NULL) {
        const struct stage *s = r->w->stages[r->stage_idx++];
        enum stage_verdict v = s->run(r, stage_resumed);
        if (v == STAGE_WAIT) {
            r->waiting = s;
            return;
        }
        if (v == STAGE_ANSWERED) {
            req_answer(r, r->answer);
            return;
        }
    }
    proxy_start(r);
}

/* The waiting stage's verdict. It came through the continuation the stage
 * was handed, never after its cancel(): the request is still waiting. */
static void stage_resumed(struct req *r, enum stage_verdict v)
{
    r->waiting = NULL;
    r->stage_data = NULL;
    if (r->state != REQ_STAGES)
        return;
    req_hold(r);
    if (v == STAGE_ANSWERED)
        req_answer(r, r->answer);
    else
        run_stages(r);
    req_release(r);
}

/* ---- endings ----------------------------------------------------------------- */

/* Let go of everything R still holds outside itself: a waiting stage's call
 * (detached, so a late reply finds nothing), the upstream link, a held pool. */
static void release_links(struct req *r)
{
    if (r->waiting != NULL) {
        const struct stage *s = r->waiting;
        r->waiting = NULL;
        if (s->cancel)
            s->cancel(r);
        r->stage_data = NULL;
    }
    proxy_abort(r);
    if (r->pool_held) {
        r->pool_held = false;
        upstream_pool_release(r->pool);
    }
    r->pool = NULL;
}

bool req_ends_connection(const struct req *r)
{
    return r->close_after || r->body == BODY_PENDING || worker_draining(r->w);
}

void req_answer(struct req *r, enum fg_error e)
{
    release_links(r);
    if (respond_error(r, e) < 0) {
        r->error_code = "out of memory"; /* no half response */
        req_abort(r, false);
        return;
    }
    req_response_done(r);
}

/*
 * The response is complete in the output. Its log line is written once the
 * carrier says the last byte went out (req_finish(SENT)), so a client that
 * leaves or stops reading mid-way is logged as cut, not as served.
 */
void req_response_done(struct req *r)
{
    release_links(r);
    r->state = REQ_SENDING;
    r->ops->done(r->conn);
}

void req_abort(struct req *r, bool flush)
{
    release_links(r);
    r->ops->close(r->conn, flush);
}

void req_readable(struct req *r)
{
    if (r->state == REQ_UPSTREAM)
        proxy_client_readable(r);
    else if (r->state == REQ_TUNNEL)
        proxy_tunnel_pump(r);
    /* STAGES: the bytes wait in the input (its read bound stops reading);
     * SENDING: a pipelined request waits until this response is out. */
}

void req_writable(struct req *r)
{
    if (r->state == REQ_UPSTREAM)
        proxy_client_writable(r);
    else if (r->state == REQ_TUNNEL)
        proxy_tunnel_pump(r);
}

void req_client_eof(struct req *r)
{
    switch (r->state) {
    case REQ_TUNNEL:
        proxy_tunnel_client_eof(r);
        return;
    case REQ_SENDING:
        /* The client half-closed after its request and may still be
         * reading: the complete response goes out, then the connection
         * closes (the send timeout bounds the wait). */
        r->close_after = true;
        r->ops->pause_read(r->conn);
        return;
    case REQ_STAGES:
    case REQ_UPSTREAM:
    case REQ_DONE:
        break;
    }
    /* Before a response: the request cannot complete (a body ended early,
     * or the client gave up waiting). */
    req_abort(r, false);
}

void req_timeout(struct req *r)
{
    switch (r->state) {
    case REQ_STAGES:
    case REQ_UPSTREAM:
        /* The request body stalled for body_timeout_ms. */
        if (r->resp == RESP_NONE) {
            r->close_after = true;
            req_answer(r, FG_ERR_TIMEOUT);
        } else {
            r->error_code = "timeout";
            req_abort(r, true);
        }
        return;
    case REQ_TUNNEL:
        proxy_tunnel_timeout(r);
        return;
    case REQ_SENDING:
    case REQ_DONE:
        break;
    }
    req_abort(r, false);
}

static void log_request(struct req *r, struct timeval now)
{
    const struct h1_header *ua =
        r->head_len ? h1_find(r->h.headers, r->h.nheaders, "User-Agent") : NULL;
    const char *protocol = NULL;

    if (r->h2)
        protocol = "HTTP/2";
    else if (r->h.method_str != NULL)
        protocol = r->h.version_minor == 0 ? "HTTP/1.0" : "HTTP/1.1";
    struct log_access_rec rec = {
        .time = (double)r->start.tv_sec + r->start.tv_usec / 1e6,
        .request_id = r->request_id,
        .request_id_len = strlen(r->request_id),
        .client_ip = r->client_ip,
        .method = r->h.method_str,
        .method_len = r->h.method_len,
        .host = r->host,
        .host_len = r->host_len,
        .route = r->route ? r->route->label : NULL,
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
        .tier = r->tier ? r->tier : "anonymous",
        .tls_version = r->tls ? r->ops->tls_version(r->conn) : NULL,
        .sni = r->tls ? r->ops->tls_sni(r->conn) : NULL,
        .protocol = protocol,
        .user_agent = ua ? ua->value : NULL,
        .user_agent_len = ua ? ua->value_len : 0,
        .upstream_status = r->upstream_status,
        .ratelimit = r->ratelimit,
        .error = r->error_code,
    };
    log_access(&rec);
}

/* Count R under its route's label (as its own snapshot names it: a request
 * that began before a reload counts where it was routed), its status class
 * and its duration from the head, as logged. */
static void count_request(struct req *r, struct timeval now)
{
    int64_t us = (int64_t)(now.tv_sec - r->start.tv_sec) * 1000000 +
                 (now.tv_usec - r->start.tv_usec);
    metrics_request(&r->w->routes, worker_route_row(r->snap, r->route), r->status, us);
    metrics_bump(&r->w->stats.requests);
}

/*
 * A request that did not end with its response sent is logged with the
 * bytes really sent (what never left the output was not) and why: the
 * reason flowgate cut it, or else how the connection ended. A complete
 * response cut while going out is the client's doing, whatever came before.
 */
void req_finish(struct req *r, enum req_end how)
{
    if (r->state == REQ_DONE)
        return;
    release_links(r);
    if (how != REQ_END_SENT) {
        size_t unsent = r->ops->pending_out(r->conn);
        r->bytes_out = r->bytes_out > unsent ? r->bytes_out - unsent : 0;
        if (how == REQ_END_SHUTDOWN && (r->error_code == NULL || unsent > 0))
            r->error_code = req_end_str(how);
        else if (r->error_code == NULL || (unsent > 0 && r->state == REQ_SENDING))
            r->error_code = req_end_str(how);
    }
    struct timeval now;
    gettimeofday(&now, NULL);
    r->state = REQ_DONE;
    log_request(r, now);
    count_request(r, now);
}
