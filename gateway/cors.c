/*
 * cors.c - the CORS stage: origin allowlist, preflight answers, the
 * cross-site stop for state-changing requests, and the response headers
 * that say what a browser may read. See cors.h for the decision table.
 *
 * Nothing here allocates: the policy is the snapshot's, request values are
 * slices of the request head, answers are rendered into stack buffers.
 */
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "cors.h"
#include "req.h"
#include "respond.h"
#include "route.h"
#include "wbuf.h"

const char *cors_origin_str(enum cors_origin o)
{
    switch (o) {
    case CORS_ORIGIN_ABSENT: return "absent";
    case CORS_ORIGIN_ALLOWED: return "allowed";
    case CORS_ORIGIN_SAME: return "same";
    case CORS_ORIGIN_REFUSED: return "refused";
    }
    return "?";
}

/* The host and port are what a Host header may carry, by the same rule
 * (route_host_normalize): an origin the gateway could never be asked for
 * under that name is not well-formed either. */
bool cors_origin_wellformed(const char *o, size_t len)
{
    char host[CORS_ORIGIN_MAX + 1];
    size_t i;

    if (len > CORS_ORIGIN_MAX)
        return false;
    if (len > 8 && h1_token_eq(o, 8, "https://"))
        i = 8;
    else if (len > 7 && h1_token_eq(o, 7, "http://"))
        i = 7;
    else
        return false;
    return route_host_normalize(o + i, len - i, host, sizeof(host), NULL) >= 0;
}

bool cors_origin_allowed(const struct fg_cors *c, const char *origin, size_t len)
{
    /* A short list compared in full: no suffix, prefix or substring rule can
     * let https://app.example.com.evil.test pass for https://app.example.com. */
    for (size_t i = 0; i < c->norigins; i++)
        if (h1_token_eq(origin, len, c->origins[i]))
            return true;
    return c->any_origin && cors_origin_wellformed(origin, len);
}

bool cors_same_origin(const char *origin, size_t len, bool tls, const char *host, size_t host_len)
{
    size_t slen = tls ? 8 : 7;

    if (host == NULL || host_len == 0 || len != slen + host_len)
        return false;
    return h1_token_eq(origin, slen, tls ? "https://" : "http://") &&
           strncasecmp(origin + slen, host, host_len) == 0;
}

/* Index of the configured header named NAME[0..LEN), or -1. */
static ssize_t find_header(const struct fg_cors *c, const char *name, size_t len)
{
    for (size_t i = 0; i < c->nheaders; i++)
        if (h1_token_eq(name, len, c->headers[i]))
            return (ssize_t)i;
    return -1;
}

/* Every non-empty element must be a token naming an allowed header. */
static int check_requested(const struct fg_cors *c, const char *value, size_t len)
{
    size_t start = 0;

    for (size_t i = 0; i <= len; i++) {
        if (i < len && value[i] != ',')
            continue;
        const char *e = value + start;
        size_t elen = i - start;
        h1_trim_ows(&e, &elen);
        start = i + 1;
        if (elen == 0)
            continue;
        if (!h1_is_token(e, elen) || find_header(c, e, elen) < 0)
            return -1;
    }
    return 0;
}

int cors_allow_headers(const struct fg_cors *c, const char *value, size_t len, char *out,
                       size_t cap, size_t *out_len)
{
    size_t n = 0;

    if (cap == 0 || check_requested(c, value, len) < 0)
        return -1;
    /* Answer in the configured order and spelling: each allowed name once,
     * however often or in whatever case the list repeats it. */
    for (size_t i = 0; i < c->nheaders; i++) {
        if (!h1_list_has(value, len, c->headers[i]))
            continue;
        int w = snprintf(out + n, cap - n, "%s%s", n ? ", " : "", c->headers[i]);
        if (w < 0 || (size_t)w >= cap - n)
            return -1;
        n += (size_t)w;
    }
    out[n] = '\0';
    *out_len = n;
    return 0;
}

uint64_t cors_route_methods(const struct fg_cors *c, const struct fg_route *rt)
{
    return rt->methods ? rt->methods & c->methods : c->methods;
}

int cors_method_number(const char *value, size_t len)
{
    char name[32];

    if (len >= sizeof(name) || !h1_is_token(value, len))
        return -1;
    memcpy(name, value, len);
    name[len] = '\0';
    return cfg_method_from_name(name);
}

ssize_t cors_render_methods(uint64_t mask, char *out, size_t cap)
{
    size_t n = 0;

    if (cap == 0)
        return -1;
    out[0] = '\0';
    for (int m = 0; m < 64; m++) {
        if (!(mask & (UINT64_C(1) << m)))
            continue;
        const char *name = h1_method_name(m);
        if (name == NULL)
            continue;
        int w = snprintf(out + n, cap - n, "%s%s", n ? ", " : "", name);
        if (w < 0 || (size_t)w >= cap - n)
            return -1;
        n += (size_t)w;
    }
    return (ssize_t)n;
}

/* ---- response headers ---------------------------------------------------- */

bool cors_owns_response_header(const struct fg_config *cfg, const char *name, size_t len)
{
    if (!cfg->cors.enabled)
        return false;
    return h1_token_eq(name, len, "Vary") ||
           (len >= 15 && h1_token_eq(name, 15, "Access-Control-"));
}

void cors_write_vary(const struct fg_config *cfg, const struct h1_header *hs, size_t n,
                     struct wbuf *out)
{
    bool any = false;
    bool covered = false;

    if (!cfg->cors.enabled)
        return;
    /* RFC 9110 section 12.5.5: the upstream's list is kept, Origin joins it;
     * "*" already says the response varies on everything. */
    for (size_t i = 0; i < n; i++) {
        const char *v = hs[i].value;
        size_t vlen = hs[i].value_len;
        if (!h1_token_eq(hs[i].name, hs[i].name_len, "Vary") || vlen == 0)
            continue;
        if (any)
            wbuf_lit(out, ", ");
        else
            wbuf_lit(out, "Vary: ");
        wbuf_put(out, v, vlen);
        any = true;
        covered = covered || h1_list_has(v, vlen, "Origin") || h1_list_has(v, vlen, "*");
    }
    if (!any)
        wbuf_lit(out, "Vary: Origin\r\n");
    else if (!covered)
        wbuf_lit(out, ", Origin\r\n");
    else
        wbuf_lit(out, "\r\n");
}

/*
 * Access-Control-Allow-Origin (the origin itself, never "*": the answer
 * depends on it and Vary says so), -Allow-Credentials, and, on an actual
 * response, -Expose-Headers (Fetch section 3.2.3). Added as one block so a
 * response has all of them or, if they do not fit, none.
 */
static void add_allow_headers(struct req *r, const struct h1_header *origin, bool preflight)
{
    static const char acao[] = "Access-Control-Allow-Origin: ";
    static const char acac[] = "\r\nAccess-Control-Allow-Credentials: true";
    static const char aceh[] = "\r\nAccess-Control-Expose-Headers: ";
    const struct fg_cors *c = &r->cfg->cors;
    const char *expose = preflight ? "" : c->expose_headers;
    size_t elen = strlen(expose);
    char buf[1024];
    size_t n = 0;

    if (sizeof(acao) + origin->value_len + sizeof(acac) + sizeof(aceh) + elen + 2 > sizeof(buf))
        return;
    memcpy(buf, acao, sizeof(acao) - 1);
    n = sizeof(acao) - 1;
    memcpy(buf + n, origin->value, origin->value_len);
    n += origin->value_len;
    if (c->credentials) {
        memcpy(buf + n, acac, sizeof(acac) - 1);
        n += sizeof(acac) - 1;
    }
    if (elen) {
        memcpy(buf + n, aceh, sizeof(aceh) - 1);
        n += sizeof(aceh) - 1;
        memcpy(buf + n, expose, elen);
        n += elen;
    }
    memcpy(buf + n, "\r\n", 2);
    req_add_header(r, buf, n + 2);
}

/* ---- the stage ------------------------------------------------------------ */

/* The Origin header, and what it is to the policy. Two Origin headers are
 * refused: a browser sends one, and which one counts is unknowable. */
static enum cors_origin classify(const struct req *r, const struct h1_header **origin)
{
    const struct h1_header *hs = r->h.headers;

    *origin = NULL;
    for (size_t i = 0; i < r->h.nheaders; i++) {
        if (!h1_token_eq(hs[i].name, hs[i].name_len, "Origin"))
            continue;
        if (*origin != NULL)
            return CORS_ORIGIN_REFUSED;
        *origin = &hs[i];
    }
    if (*origin == NULL)
        return CORS_ORIGIN_ABSENT;
    if (cors_origin_allowed(&r->cfg->cors, (*origin)->value, (*origin)->value_len))
        return CORS_ORIGIN_ALLOWED;
    if (cors_same_origin((*origin)->value, (*origin)->value_len, r->tls, r->h.host,
                         r->h.host_len))
        return CORS_ORIGIN_SAME;
    return CORS_ORIGIN_REFUSED;
}

static enum stage_verdict refuse(struct req *r, const char *why)
{
    return stage_answer(r, FG_ERR_CORS, why);
}

/*
 * A preflight (Fetch section 3.2.2 and 4.8): answered here with 204 and the
 * grant, or 403 when the origin, the method or a requested header is not
 * allowed. Max-Age lets the browser cache the grant (section 3.2.3).
 */
static enum stage_verdict preflight(struct req *r, enum cors_origin o, const struct h1_header *acrm)
{
    const struct fg_cors *c = &r->cfg->cors;
    const struct h1_header *acrh =
        h1_find(r->h.headers, r->h.nheaders, "Access-Control-Request-Headers");
    char methods[640], headers[1024], extra[2048];
    size_t hlen = 0;

    if (o != CORS_ORIGIN_ALLOWED)
        return refuse(r, "cors_origin");
    if (r->route == NULL)
        return STAGE_NEXT; /* no such resource: 404, like any request */
    uint64_t mask = cors_route_methods(c, r->route);
    int m = cors_method_number(acrm->value, acrm->value_len);
    if (m < 0 || !(mask & (UINT64_C(1) << m)))
        return refuse(r, "cors_method");
    if (acrh &&
        cors_allow_headers(c, acrh->value, acrh->value_len, headers, sizeof(headers), &hlen) < 0)
        return refuse(r, "cors_header");
    if (cors_render_methods(mask, methods, sizeof(methods)) < 0)
        return refuse(r, "cors_method");
    int n = snprintf(extra, sizeof(extra),
                     "Access-Control-Allow-Methods: %s\r\n%s%s%sAccess-Control-Max-Age: %u\r\n",
                     methods, hlen ? "Access-Control-Allow-Headers: " : "", hlen ? headers : "",
                     hlen ? "\r\n" : "", c->max_age);
    if (n < 0 || (size_t)n >= sizeof(extra) || req_add_header(r, extra, (size_t)n) < 0)
        return refuse(r, "cors_header");
    return stage_answer(r, FG_ANSWER_PREFLIGHT, NULL);
}

/* GET, HEAD and OPTIONS change nothing (RFC 9110 section 9.2.1): a refused
 * origin may still send them; the browser keeps the answer from the page. */
static bool is_safe(int method)
{
    return method == H1_METHOD_GET || method == H1_METHOD_HEAD || method == H1_METHOD_OPTIONS;
}

static enum stage_verdict cors_run(struct req *r, stage_resume_fn resume)
{
    const struct h1_header *origin;
    const struct h1_header *acrm;
    enum cors_origin o;

    if (!r->cfg->cors.enabled)
        return STAGE_NEXT;
    o = classify(r, &origin);
    if (o == CORS_ORIGIN_ABSENT)
        return STAGE_NEXT;
    acrm = r->h.method == H1_METHOD_OPTIONS
               ? h1_find(r->h.headers, r->h.nheaders, "Access-Control-Request-Method")
               : NULL;
    if (o == CORS_ORIGIN_ALLOWED)
        add_allow_headers(r, origin, acrm != NULL);
    if (acrm != NULL)
        return preflight(r, o, acrm);
    if (o == CORS_ORIGIN_REFUSED && !is_safe(r->h.method))
        return refuse(r, "cors_origin");
    return STAGE_NEXT;
}

/* Access-Control-* and Vary are the policy's: an upstream's copy never
 * passes; the policy writes its own (add_allow_headers, cors_vary). */
static enum stage_header cors_response_header(const struct req *r, const struct h1_header *h)
{
    return cors_owns_response_header(r->cfg, h->name, h->name_len) ? STAGE_HDR_DROP
                                                                   : STAGE_HDR_DEFAULT;
}

static void cors_vary(const struct req *r, const struct h1_header *hs, size_t n, struct wbuf *b)
{
    cors_write_vary(r->cfg, hs, n, b);
}

const struct stage cors_stage = {
    .name = "cors",
    .run = cors_run,
    .response_header = cors_response_header,
    .response_end = cors_vary,
    .response_end_room = sizeof("Vary: , Origin\r\n"),
};
