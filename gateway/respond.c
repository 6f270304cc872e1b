/*
 * respond.c - flowgate's own responses.
 *
 * Every response, whoever produced it, carries the same common headers:
 * the pre-rendered security block of the snapshot (HSTS only over TLS; on
 * preview hosts the preview block, with frame-ancestors for X-Frame-Options),
 * X-Request-Id, the stages' extra lines, and Connection.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>

#include "conn.h"
#include "cors.h"
#include "respond.h"
#include "worker.h"

struct error_desc {
    int status;
    const char *reason;  /* status line reason phrase */
    const char *code;    /* "error" member of the JSON body */
    const char *message; /* "message" member */
};

static const struct error_desc errors[FG_ERR__COUNT] = {
    [FG_ERR_BAD_REQUEST] = {400, "Bad Request", "bad_request", "malformed request"},
    [FG_ERR_HEADERS_TOO_LARGE] = {431, "Request Header Fields Too Large", "headers_too_large",
                                  "request head too large"},
    [FG_ERR_BODY_TOO_LARGE] = {413, "Content Too Large", "body_too_large",
                               "request body too large"},
    [FG_ERR_TIMEOUT] = {408, "Request Timeout", "timeout", "request not received in time"},
    [FG_ERR_METHOD] = {405, "Method Not Allowed", "method_not_allowed",
                       "method not allowed on this route"},
    [FG_ERR_NOT_FOUND] = {404, "Not Found", "not_found", "no such route"},
    [FG_ERR_UNAUTHORIZED] = {401, "Unauthorized", "invalid_token", "authentication required"},
    [FG_ERR_INVALID_TOKEN] = {401, "Unauthorized", "invalid_token", "invalid token"},
    [FG_ERR_RATE_LIMITED] = {429, "Too Many Requests", "rate_limited", "rate limit exceeded"},
    [FG_ERR_CORS] = {403, "Forbidden", "cors_rejected", "cross-origin request rejected"},
    [FG_ERR_BAD_GATEWAY] = {502, "Bad Gateway", "bad_gateway", "upstream unavailable"},
    [FG_ERR_GATEWAY_TIMEOUT] = {504, "Gateway Timeout", "gateway_timeout",
                                "upstream did not answer in time"},
    [FG_ERR_UNAVAILABLE] = {503, "Service Unavailable", "unavailable",
                            "service temporarily unavailable"},
    [FG_ERR_EXPECTATION] = {417, "Expectation Failed", "expectation_failed",
                            "unsupported expectation"},
};

int respond_status(enum fg_error e)
{
    return errors[e].status;
}

const char *respond_code(enum fg_error e)
{
    return errors[e].code;
}

void respond_add_header(struct req *r, const char *line, size_t len)
{
    if (r->extra_len + len <= sizeof(r->rb->extra)) {
        memcpy(r->rb->extra + r->extra_len, line, len);
        r->extra_len += len;
    }
}

int respond_add_upstream_header(struct req *r, const char *line, size_t len)
{
    if (r->up_extra_len + len > sizeof(r->rb->up_extra)) {
        r->up_extra_overflow = true;
        return -1;
    }
    memcpy(r->rb->up_extra + r->up_extra_len, line, len);
    r->up_extra_len += len;
    return 0;
}

void respond_common_headers(struct req *r, struct evbuffer *out)
{
    const struct fg_headers *h = &r->cfg->headers;
    const struct fg_previews *pv = &r->cfg->previews;

    if (r->preview && r->c->tls)
        evbuffer_add(out, pv->block_https, pv->block_https_len);
    else if (r->preview)
        evbuffer_add(out, pv->block_http, pv->block_http_len);
    else if (r->c->tls)
        evbuffer_add(out, h->block_https, h->block_https_len);
    else
        evbuffer_add(out, h->block_http, h->block_http_len);
    evbuffer_add_printf(out, "X-Request-Id: %s\r\n", r->request_id);
    if (r->extra_len)
        evbuffer_add(out, r->rb->extra, r->extra_len);
    if (r->close_after)
        evbuffer_add(out, "Connection: close\r\n", 19);
    else if (r->h.version_minor == 0)
        evbuffer_add(out, "Connection: keep-alive\r\n", 24);
}

/* Send a complete response flowgate made itself, then finish the request. */
static void send_own(struct req *r, int status, const char *reason, const char *extra,
                     const char *ctype, const char *body, size_t body_len)
{
    struct conn *c = r->c;
    struct evbuffer *out = c->io->out;
    size_t before = evbuffer_get_length(out);
    bool head = r->h.method == HTTP_HEAD;

    /* A request whose body was not read cannot be followed by another on
     * this connection: its body bytes would be taken for the next head. */
    if (r->body == BODY_PENDING)
        r->close_after = true;
    r->status = status;
    evbuffer_add_printf(out, "HTTP/1.1 %d %s\r\n", status, reason);
    respond_common_headers(r, out);
    cors_write_vary(r->cfg, NULL, 0, out);
    if (extra)
        evbuffer_add(out, extra, strlen(extra));
    if (ctype)
        evbuffer_add_printf(out, "Content-Type: %s\r\n", ctype);
    /* RFC 9110 section 8.6: no Content-Length in a 204. */
    if (status == 204)
        evbuffer_add(out, "\r\n", 2);
    else
        evbuffer_add_printf(out, "Content-Length: %zu\r\n\r\n", body_len);
    if (!head && body_len)
        evbuffer_add(out, body, body_len);
    r->bytes_out += evbuffer_get_length(out) - before;
    r->response_started = true;
    c->state = CONN_RESPONDING;
    conn_finish_request(c); /* logs, then sends */
}

void respond_error(struct req *r, enum fg_error e, const char *extra)
{
    const struct error_desc *d = &errors[e];
    char body[512];

    if (e == FG_ERR_BAD_REQUEST || e == FG_ERR_HEADERS_TOO_LARGE || e == FG_ERR_TIMEOUT)
        r->close_after = true;
    if (r->error_code == NULL)
        r->error_code = d->code;
    /* request_id holds only [A-Za-z0-9._-] (validated or generated), so it
     * needs no JSON escaping. */
    int n = snprintf(body, sizeof(body), "{\"error\":\"%s\",\"message\":\"%s\",\"request_id\":\"%s\"}",
                     d->code, d->message, r->request_id);
    send_own(r, d->status, d->reason, extra, "application/json", body, (size_t)n);
}

void respond_preflight(struct req *r, const char *extra)
{
    send_own(r, 204, "No Content", extra, NULL, NULL, 0);
}

static const char *redirect_reason(int status)
{
    switch (status) {
    case 301: return "Moved Permanently";
    case 302: return "Found";
    case 307: return "Temporary Redirect";
    default: return "Permanent Redirect";
    }
}

/*
 * Location: https://HOST[:port]/path?query. The host is the normalised Host
 * (validated characters only, so nothing can be injected into the header);
 * the path is the normalised path; the query is as sent (llhttp admits no
 * whitespace or control bytes in a target).
 */
void respond_redirect(struct req *r)
{
    const struct fg_redirect *rd = &r->cfg->redirect;
    size_t qlen = r->h.query ? r->h.query_len : 0;
    char port[16] = "";

    if (r->host_len == 0) {
        respond_error(r, FG_ERR_BAD_REQUEST, NULL);
        return;
    }
    if (rd->https_port != 443)
        snprintf(port, sizeof(port), ":%d", rd->https_port);
    size_t total = r->host_len + r->path_len + qlen + 64;
    char *extra = malloc(total);
    if (extra == NULL) {
        conn_close(r->c, false);
        return;
    }
    snprintf(extra, total, "Location: https://%.*s%s%.*s%s%.*s\r\n", (int)r->host_len, r->host,
             port, (int)r->path_len, r->path, qlen ? "?" : "", (int)qlen, qlen ? r->h.query : "");
    send_own(r, rd->status, redirect_reason(rd->status), extra, NULL, NULL, 0);
    free(extra);
}
