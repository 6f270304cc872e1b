/*
 * cors.h - the CORS request stage (Fetch standard, "CORS protocol") and the
 * cross-site request stop at the edge.
 *
 * The stage runs first, before authentication and rate limiting:
 *
 *   cors group absent ............................. nothing at all
 *   OPTIONS + Origin + Access-Control-Request-Method (a preflight):
 *       origin, method and every requested header allowed -> 204, never forwarded
 *       otherwise -> 403 cors_rejected
 *       no route for the path -> passed on (404 like any other request)
 *   any other request:
 *       Origin allowed -> Access-Control-Allow-Origin (+ -Credentials,
 *                         -Expose-Headers) on whatever response it gets
 *       Origin present, not allowed, not same-origin, method not GET/HEAD/OPTIONS
 *                      -> 403 cors_rejected, nothing forwarded
 *       otherwise -> passed on without CORS headers
 *
 * With the group present every response carries Vary: Origin (merged into
 * an upstream's Vary), and an upstream's own Access-Control-* headers are
 * dropped: a backend can never widen the policy.
 *
 * Origins compare exactly on their serialisation (RFC 6454 section 6.2):
 * scheme, host and port, ASCII case-insensitively. An explicit default port
 * (https://a.example:443) is a different string from the one browsers send
 * (https://a.example) and matches only when listed that way; "null" never
 * matches (cfg.c refuses to list it).
 */
#ifndef FG_CORS_H
#define FG_CORS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include <event2/buffer.h>

#include "cfg.h"
#include "h1.h"
#include "stage.h"

struct wbuf;

/* Longest Origin echoed when cors.origins holds "*": a scheme, a DNS name
 * (253) and a port fit; anything longer is refused, never truncated. */
#define CORS_ORIGIN_MAX 300

/* What a request's Origin header is to the policy. */
enum cors_origin {
    CORS_ORIGIN_ABSENT = 0,  /* no Origin header: not a CORS request */
    CORS_ORIGIN_ALLOWED = 1, /* listed in cors.origins (or "*" and well-formed) */
    CORS_ORIGIN_SAME = 2,    /* not listed, but the request's own origin */
    CORS_ORIGIN_REFUSED = 3, /* anything else, "null" and repeated Origin headers included */
};
const char *cors_origin_str(enum cors_origin o);

/*
 * Is the serialised origin ORIGIN[0..LEN) allowed by C? Exact,
 * case-insensitive comparison against each listed origin; with "*" listed,
 * any well-formed origin (cors_origin_wellformed) is allowed.
 */
bool cors_origin_allowed(const struct fg_cors *c, const char *origin, size_t len);

/*
 * "http://" or "https://" (any case), then a host and optional port that
 * route_host_normalize accepts: a name of letters, digits, '-' and
 * non-empty '.'-separated labels, or a bracketed IPv6 literal, and a port
 * of 1..65535; nothing else (no userinfo, path, trailing slash or
 * whitespace), at most CORS_ORIGIN_MAX bytes. The configured origins are
 * held to the same rule.
 */
bool cors_origin_wellformed(const char *origin, size_t len);

/*
 * Is ORIGIN the request's own origin: "https://" (TLS) or "http://" and the
 * Host header value as sent, compared case-insensitively? Such a request is
 * not cross-origin (Fetch section 3.2), so it is never stopped as one.
 */
bool cors_same_origin(const char *origin, size_t len, bool tls, const char *host, size_t host_len);

/*
 * Check an Access-Control-Request-Headers value (Fetch section 3.2.2: a
 * comma-separated list of field names; OWS around elements and empty
 * elements are tolerated) against cors.headers, case-insensitively.
 * On success returns 0 and writes into OUT (NUL-terminated) the configured
 * spelling of each allowed header the list names, ", "-separated, each
 * once; *OUT_LEN is its length (0 when the list names none).
 * Returns -1 when one element is not an allowed header name, or OUT is too
 * small for the answer.
 */
int cors_allow_headers(const struct fg_cors *c, const char *value, size_t len, char *out,
                       size_t cap, size_t *out_len);

/* The methods a preflight for route RT may be granted: the route's list
 * intersected with cors.methods, or cors.methods when the route has none. */
uint64_t cors_route_methods(const struct fg_cors *c, const struct fg_route *rt);

/*
 * The method number (enum h1_method) of an Access-Control-Request-Method value, or -1
 * when it is not a known method. Method names are case-sensitive (RFC 9110
 * section 9.1); browsers send the standard ones upper-cased (Fetch "normalize").
 */
int cors_method_number(const char *value, size_t len);

/* "GET, HEAD, POST" for MASK into OUT; returns the length, or -1 if it does
 * not fit. */
ssize_t cors_render_methods(uint64_t mask, char *out, size_t cap);

/*
 * Write the response's Vary line when the cors group is enabled: the
 * upstream's Vary values (HS/N, the upstream's response headers; NULL/0 for
 * flowgate's own responses) in one line, with Origin appended unless one of
 * them already lists Origin or "*". With CORS disabled nothing is written
 * (an upstream's Vary then passes untouched).
 */
void cors_write_vary(const struct fg_config *cfg, const struct h1_header *hs, size_t n,
                     struct wbuf *out);

/* Is NAME one of the response headers the CORS policy owns (Vary and every
 * Access-Control-*), which an upstream's copy must not reach the client with? */
bool cors_owns_response_header(const struct fg_config *cfg, const char *name, size_t len);

/* The request stage (conn_stages[], first). */
extern const struct stage cors_stage;

#endif
