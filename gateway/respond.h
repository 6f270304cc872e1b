/*
 * respond.h - flowgate's own responses: JSON errors, the preflight grant,
 * redirects, and the common response headers every response carries. It
 * only writes: the request engine (req.c) decides when, and finishes.
 */
#ifndef FG_RESPOND_H
#define FG_RESPOND_H

#include <event2/buffer.h>

struct req;
struct wbuf;

enum fg_error {
    FG_ERR_BAD_REQUEST = 0,       /* 400 bad_request, close */
    FG_ERR_HEADERS_TOO_LARGE = 1, /* 431 headers_too_large, close */
    FG_ERR_BODY_TOO_LARGE = 2,    /* 413 body_too_large */
    FG_ERR_TIMEOUT = 3,           /* 408 timeout, close */
    FG_ERR_METHOD = 4,            /* 405 method_not_allowed + Allow */
    FG_ERR_NOT_FOUND = 5,         /* 404 not_found */
    FG_ERR_UNAUTHORIZED = 6,      /* 401 invalid_token (missing) */
    FG_ERR_INVALID_TOKEN = 7,     /* 401 invalid_token (bad) */
    FG_ERR_RATE_LIMITED = 8,      /* 429 rate_limited */
    FG_ERR_CORS = 9,              /* 403 cors_rejected */
    FG_ERR_BAD_GATEWAY = 10,      /* 502 bad_gateway */
    FG_ERR_GATEWAY_TIMEOUT = 11,  /* 504 gateway_timeout */
    FG_ERR_UNAVAILABLE = 12,      /* 503 unavailable */
    FG_ERR_EXPECTATION = 13,      /* 417 expectation_failed */
    FG_ANSWER_PREFLIGHT = 14,     /* 204 to a CORS preflight granted: not an error */
    FG_ERR__COUNT
};

int respond_status(enum fg_error e);
const char *respond_code(enum fg_error e);

/*
 * Write flowgate's answer E to R's output: the JSON error (or the empty 204
 * of a granted preflight) with the common headers, the stages' lines among
 * them (Allow, WWW-Authenticate, Retry-After, Access-Control-*). Decides
 * r->close_after: always for 400/408/431, when request body bytes are still
 * unread, when the client asked to close, when the process drains.
 * 0, or -1 when out of memory (nothing written). The caller finishes.
 */
int respond_error(struct req *r, enum fg_error e);

/* The plain-listener redirect to https (redirect.status, Location); a
 * request without a Host gets 400. 0 or -1 as respond_error. */
int respond_redirect(struct req *r);

/*
 * Append the headers every response carries: the security header block
 * (HSTS only over TLS), X-Request-Id, the stages' lines and Connection as
 * decided. respond_common_len() bounds their length.
 */
void respond_common_headers(struct req *r, struct wbuf *out);
size_t respond_common_len(const struct req *r);

#endif
