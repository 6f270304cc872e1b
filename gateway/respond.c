/*
 * respond.c - flowgate's own responses.
 *
 * Every response, whoever produced it, carries the same common headers:
 * the pre-rendered security block the request was given (req_begin, and
 * routing for preview hosts), X-Request-Id, the stages' extra lines, and
 * Connection.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>

#include "req.h"
#include "respond.h"
#include "stage.h"
#include "wbuf.h"
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
    [FG_ANSWER_PREFLIGHT] = {204, "No Content", NULL, NULL},
};

int respond_status(enum fg_error e)
{
    return errors[e].status;
}

const char *respond_code(enum fg_error e)
{
    return errors[e].code;
}

/* The security block for this response: preview or platform, TLS or not. */
size_t respond_common_len(const struct req *r)
{
    return r->sec_block_len + sizeof("X-Request-Id: \r\n") + sizeof(r->request_id) + r->extra_len +
           sizeof("Connection: keep-alive\r\n");
}

void respond_common_headers(struct req *r, struct wbuf *out)
{
    wbuf_put(out, r->sec_block, r->sec_block_len);
    wbuf_lit(out, "X-Request-Id: ");
    wbuf_str(out, r->request_id);
    wbuf_lit(out, "\r\n");
    if (r->extra_len)
        wbuf_put(out, r->rb->extra, r->extra_len);
    if (r->close_after)
        wbuf_lit(out, "Connection: close\r\n");
    else if (r->h.version_minor == 0)
        wbuf_lit(out, "Connection: keep-alive\r\n");
}

/* Write a complete response flowgate made itself: 0, or -1 when out of memory. */
static int send_own(struct req *r, int status, const char *reason, const char *extra,
                    const char *ctype, const char *body, size_t body_len)
{
    bool head = r->h.method == H1_METHOD_HEAD;
    size_t extra_len = extra ? strlen(extra) : 0;
    size_t ctype_len = ctype ? strlen(ctype) : 0;
    struct wbuf b;

    /* A request whose body was not read cannot be followed by another on
     * this connection: its body bytes would be taken for the next head. A
     * request that asked to close (Connection: close, HTTP/1.0 without
     * keep-alive) is answered with close, whoever answers (RFC 9112 9.6);
     * so is every request once the process drains, to send its client on. */
    if (r->body == BODY_PENDING || !r->h.keep_alive || worker_draining(r->w))
        r->close_after = true;
    r->status = status;
    wbuf_begin(&b, r->out,
               64 + strlen(reason) + respond_common_len(r) + stages_response_end_room(r) +
                   extra_len + ctype_len + 64 + body_len);
    wbuf_lit(&b, "HTTP/1.1 ");
    wbuf_u64(&b, (uint64_t)status);
    wbuf_lit(&b, " ");
    wbuf_str(&b, reason);
    wbuf_lit(&b, "\r\n");
    respond_common_headers(r, &b);
    stages_response_end(r, NULL, 0, &b);
    wbuf_put(&b, extra, extra_len);
    if (ctype)
        wbuf_header(&b, "Content-Type", 12, ctype, ctype_len);
    /* RFC 9110 section 8.6: no Content-Length in a 204. */
    if (status != 204) {
        wbuf_lit(&b, "Content-Length: ");
        wbuf_u64(&b, body_len);
        wbuf_lit(&b, "\r\n");
    }
    wbuf_lit(&b, "\r\n");
    if (!head && body_len)
        wbuf_put(&b, body, body_len);
    size_t n = wbuf_len(&b);
    if (wbuf_end(&b) < 0)
        return -1;
    r->bytes_out += n;
    r->resp = RESP_STARTED;
    return 0;
}

int respond_error(struct req *r, enum fg_error e)
{
    const struct error_desc *d = &errors[e];
    char body[512];

    if (d->code == NULL) /* a preflight granted: the stage's lines say it all */
        return send_own(r, d->status, d->reason, NULL, NULL, NULL, 0);
    if (e == FG_ERR_BAD_REQUEST || e == FG_ERR_HEADERS_TOO_LARGE || e == FG_ERR_TIMEOUT)
        r->close_after = true;
    if (r->error_code == NULL)
        r->error_code = d->code;
    /* request_id holds only [A-Za-z0-9._-] (validated or generated), so it
     * needs no JSON escaping. */
    int n = snprintf(body, sizeof(body), "{\"error\":\"%s\",\"message\":\"%s\",\"request_id\":\"%s\"}",
                     d->code, d->message, r->request_id);
    return send_own(r, d->status, d->reason, NULL, "application/json", body, (size_t)n);
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
 * the path is the normalised path; the query is as sent (h1.c admits no
 * whitespace or control bytes in a target).
 */
int respond_redirect(struct req *r)
{
    const struct fg_redirect *rd = &r->cfg->redirect;
    size_t qlen = r->h.query ? r->h.query_len : 0;
    char port[16] = "";

    if (r->host_len == 0)
        return respond_error(r, FG_ERR_BAD_REQUEST);
    if (rd->https_port != 443)
        snprintf(port, sizeof(port), ":%d", rd->https_port);
    size_t total = r->host_len + r->path_len + qlen + 64;
    char *extra = malloc(total);
    if (extra == NULL)
        return -1;
    snprintf(extra, total, "Location: https://%.*s%s%.*s%s%.*s\r\n", (int)r->host_len, r->host,
             port, (int)r->path_len, r->path, qlen ? "?" : "", (int)qlen, qlen ? r->h.query : "");
    int rc = send_own(r, rd->status, redirect_reason(rd->status), extra, NULL, NULL, 0);
    free(extra);
    return rc;
}
