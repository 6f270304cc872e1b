/*
 * route.c - choose a route by host and longest path prefix; preview hosts.
 *
 * Matching is pure: the route table and preview pattern come from the
 * configuration snapshot, the host and path from a request already checked
 * by h1.c and normalised by uri.c.
 */
#include <arpa/inet.h>
#include <stdio.h>
#include <string.h>

#include "req.h"
#include "route.h"
#include "upname.h"
#include "upstream.h"
#include "worker.h"

#define ROUTE_DNS_LABEL_MAX 63

static char ascii_lower(char c)
{
    return (c >= 'A' && c <= 'Z') ? (char)(c - 'A' + 'a') : c;
}

static bool is_ldh(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-';
}

/* RFC 9110 7.2 / RFC 3986 3.2.3: port = 1*DIGIT, here limited to 1..65535. */
static int parse_port(const char *s, size_t n, int *port)
{
    long v = 0;

    if (n == 0)
        return -1;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        v = v * 10 + (s[i] - '0');
        if (v > 65535)
            return -1;
    }
    if (v == 0)
        return -1;
    *port = (int)v;
    return 0;
}

/*
 * A reg-name: letters, digits, '-' and '.', lowercased, no empty label. One
 * trailing '.' (the fully qualified form) is dropped so that "example.com."
 * routes like "example.com".
 */
static ssize_t copy_name(const char *in, size_t n, char *out, size_t outcap)
{
    if (n > 0 && in[n - 1] == '.')
        n--;
    if (n == 0 || n >= outcap)
        return -1;
    for (size_t i = 0; i < n; i++) {
        char c = ascii_lower(in[i]);

        if (c == '.' ? (i == 0 || out[i - 1] == '.') : !is_ldh(c))
            return -1;
        out[i] = c;
    }
    if (out[n - 1] == '.')
        return -1;
    out[n] = '\0';
    return (ssize_t)n;
}

/* "[v6]" (N bytes, brackets included), checked with inet_pton and lowercased. */
static ssize_t copy_v6_literal(const char *in, size_t n, char *out, size_t outcap)
{
    char text[INET6_ADDRSTRLEN];
    unsigned char bin[16];
    size_t inner = n - 2;

    if (inner == 0 || inner >= sizeof(text) || n >= outcap)
        return -1;
    for (size_t i = 0; i < inner; i++) {
        char c = ascii_lower(in[1 + i]);

        if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || c == ':' || c == '.'))
            return -1;
        text[i] = c;
    }
    text[inner] = '\0';
    if (inet_pton(AF_INET6, text, bin) != 1)
        return -1;
    out[0] = '[';
    memcpy(out + 1, text, inner);
    out[n - 1] = ']';
    out[n] = '\0';
    return (ssize_t)n;
}

ssize_t route_host_normalize(const char *in, size_t len, char *out, size_t outcap, int *port)
{
    size_t hlen;
    ssize_t n;
    int p = -1;

    if (port != NULL)
        *port = -1;
    if (in == NULL || out == NULL || len == 0)
        return -1;
    if (in[0] == '[') {
        const char *end = memchr(in, ']', len);

        if (end == NULL)
            return -1;
        hlen = (size_t)(end - in) + 1;
        n = copy_v6_literal(in, hlen, out, outcap);
    } else {
        const char *colon = memchr(in, ':', len);

        hlen = colon != NULL ? (size_t)(colon - in) : len;
        n = copy_name(in, hlen, out, outcap);
    }
    if (n < 0)
        return -1;
    if (hlen < len && (in[hlen] != ':' || parse_port(in + hlen + 1, len - hlen - 1, &p) == -1))
        return -1;
    if (port != NULL)
        *port = p;
    return n;
}

bool route_prefix_match(const char *prefix, size_t plen, const char *path, size_t len)
{
    if (plen == 0 || plen > len || memcmp(prefix, path, plen) != 0)
        return false;
    /* A prefix ending in '/' is its own boundary; otherwise the path must
     * end there or continue with a new segment ("/api" never "/apix"). */
    return prefix[plen - 1] == '/' || len == plen || path[plen] == '/';
}

/* Does R beat BEST? Longer prefix first, then host-specific over host-less;
 * a full tie keeps the earlier route, as the file ordered them. */
/* The host decides first, like nginx's server blocks: any matching route
 * for this host beats every host-less one; then the longest prefix wins. */
static bool route_better(const struct fg_route *r, const struct fg_route *best)
{
    if (best == NULL)
        return true;
    if ((r->host_len > 0) != (best->host_len > 0))
        return r->host_len > 0;
    return r->path_len > best->path_len;
}

/*
 * The loader sorts the table so that the first match is the best one, but the
 * table is small and a full scan keeps the answer right whatever its order.
 */
const struct fg_route *route_match(const struct fg_config *cfg, const char *host,
                                   size_t host_len, const char *path, size_t path_len)
{
    const struct fg_route *best = NULL;

    if (cfg == NULL || path == NULL)
        return NULL;
    for (size_t i = 0; i < cfg->nroutes; i++) {
        const struct fg_route *r = &cfg->routes[i];

        if (r->host_len > 0 &&
            (host == NULL || r->host_len != host_len || memcmp(r->host, host, host_len) != 0))
            continue;
        if (!route_prefix_match(r->path, r->path_len, path, path_len))
            continue;
        if (route_better(r, best))
            best = r;
    }
    return best;
}

/* Length of the DNS label that {name} sits in, outside {name} itself: the
 * prefix after its last '.', and the suffix before its first '.'. */
static size_t label_extra(const char *prefix, size_t plen, const char *suffix, size_t slen)
{
    const char *dot = memrchr(prefix, '.', plen);
    size_t extra = dot != NULL ? plen - (size_t)(dot - prefix) - 1 : plen;

    dot = memchr(suffix, '.', slen);
    return extra + (dot != NULL ? (size_t)(dot - suffix) : slen);
}

ssize_t route_preview_name(const struct fg_previews *pv, const char *host, size_t host_len,
                           char *name, size_t namecap)
{
    if (pv == NULL || !pv->enabled || pv->host_prefix == NULL || pv->host_suffix == NULL ||
        host == NULL || name == NULL)
        return -1;

    size_t plen = strlen(pv->host_prefix);
    size_t slen = strlen(pv->host_suffix);

    if (host_len <= plen + slen || memcmp(host, pv->host_prefix, plen) != 0 ||
        memcmp(host + host_len - slen, pv->host_suffix, slen) != 0)
        return -1;

    const char *nm = host + plen;
    size_t n = host_len - plen - slen;

    if (nm[0] == '-' || nm[n - 1] == '-' || n >= namecap)
        return -1;
    if (n + label_extra(pv->host_prefix, plen, pv->host_suffix, slen) > ROUTE_DNS_LABEL_MAX)
        return -1;
    for (size_t i = 0; i < n; i++) {
        if (!is_ldh(nm[i]))
            return -1;
    }
    memcpy(name, nm, n);
    name[n] = '\0';
    return (ssize_t)n;
}

/* ---- routing a request -------------------------------------------------- */

static bool match_preview(struct req *r)
{
    if (r->host_len == 0 || (r->host_port != -1 && r->host_port != r->local_port))
        return false;
    return route_preview_name(&r->cfg->previews, r->host, r->host_len, r->preview_name,
                              sizeof(r->preview_name)) >= 0;
}

void route_dispatch(struct req *r)
{
    if (match_preview(r)) {
        const struct fg_previews *pv = &r->cfg->previews;
        r->preview = true;
        r->route = &r->cfg->preview_route;
        /* frame-ancestors for X-Frame-Options: the platform frames previews */
        r->sec_block = r->tls ? pv->block_https : pv->block_http;
        r->sec_block_len = r->tls ? pv->block_https_len : pv->block_http_len;
        return;
    }
    r->route = route_match(r->cfg, r->host, r->host_len, r->path, r->path_len);
    if (r->route)
        r->pool = &r->snap->pools[r->route->upstream->index];
}

static enum stage_verdict route_checks(struct req *r, stage_resume_fn resume)
{
    const struct fg_route *rt = r->route;

    if (r->h.framing == H1_FRAMING_LENGTH && r->h.content_length > r->cfg->limits.max_body_bytes)
        return stage_answer(r, FG_ERR_BODY_TOO_LARGE, NULL);
    if (rt == NULL)
        return stage_answer(r, FG_ERR_NOT_FOUND, NULL);
    if (rt->methods && (r->h.method < 0 || r->h.method > 63 ||
                        !(rt->methods & (UINT64_C(1) << r->h.method)))) {
        char allow[512];
        int n = snprintf(allow, sizeof(allow), "Allow: %s\r\n", rt->allow);
        if (n > 0 && (size_t)n < sizeof(allow))
            req_add_header(r, allow, (size_t)n);
        return stage_answer(r, FG_ERR_METHOD, NULL);
    }
    if (r->pool != NULL && r->pool->names != NULL && r->pool->nlive == 0)
        return upname_wait(r, resume); /* an upstream given by name: an address first */
    return STAGE_NEXT;
}

const struct stage route_stage = {.name = "route",
                                  .run = route_checks,
                                  .cancel = upname_cancel,
                                  .needs_resolver = upname_needs_resolver};
