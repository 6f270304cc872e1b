/*
 * preview.c - MVP preview hosts: credential stripping, cookie scope, and the
 * stage that resolves a preview's upstream.
 *
 * Previews run untrusted code on subdomains of the platform. What keeps
 * them apart from the platform and from each other: they never see the
 * platform's credentials (Authorization, its cookies), they cannot set a
 * cookie for a parent domain (which would reach every preview and the
 * platform), and each is reached through its own DNS name and its own pool,
 * so one MVP that is down or slow only fails its own requests.
 */
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <netinet/in.h>

#include "cookie.h"
#include "h1.h"
#include "preview.h"
#include "req.h"
#include "respond.h"
#include "resolver.h"
#include "upstream.h"
#include "wbuf.h"
#include "worker.h"

#define PREVIEW_DNS_NAME_MAX 253

/* Is C one of the platform's cookies: one of NAMES, or EXTRA (jwt.cookie)? */
static bool cookie_listed(const struct cookie *c, char *const *names, size_t nnames,
                          const char *extra)
{
    for (size_t i = 0; i < nnames; i++)
        if (cookie_name_is(c, names[i]))
            return true;
    return extra && extra[0] && cookie_name_is(c, extra);
}

size_t preview_strip_cookies(const char *value, size_t value_len, char *const *names, size_t nnames,
                             const char *extra_name, char *out)
{
    struct cookie ck;
    size_t n = 0;

    for (size_t pos = 0; cookie_next(value, value_len, &pos, &ck);) {
        if (cookie_listed(&ck, names, nnames, extra_name))
            continue;
        if (n > 0) {
            memcpy(out + n, "; ", 2);
            n += 2;
        }
        memcpy(out + n, ck.pair, ck.pair_len);
        n += ck.pair_len;
    }
    return n;
}

/* One Domain attribute value D[0..N) (RFC 6265 5.2.3): an empty one is
 * ignored by user agents (host-only cookie), a leading '.' is dropped;
 * anything else must name HOST itself (a trailing dot is another name:
 * refused). */
static bool domain_ok(const char *d, size_t n, const char *host, size_t host_len)
{
    h1_trim_ows(&d, &n);
    if (n > 0 && *d == '.')
        d++, n--;
    return n == 0 || h1_token_eq_n(d, n, host, host_len);
}

bool preview_set_cookie_allowed(const char *value, size_t value_len, const char *host,
                                size_t host_len)
{
    const char *semi = memchr(value, ';', value_len);
    struct cookie attr;

    /* The attributes follow the cookie-pair; their names are case-insensitive. */
    for (size_t pos = semi ? (size_t)(semi - value) : value_len;
         cookie_next(value, value_len, &pos, &attr);)
        if (h1_token_eq(attr.name, attr.name_len, "domain") &&
            !domain_ok(attr.value, attr.value_len, host, host_len))
            return false;
    return true;
}

ssize_t preview_upstream_host(const char *prefix, const char *name, const char *suffix, char *out,
                              size_t outcap)
{
    int n = snprintf(out, outcap, "%s%s%s", prefix, name, suffix);

    if (n < 0 || (size_t)n >= outcap || n > PREVIEW_DNS_NAME_MAX)
        return -1;
    return n;
}

/* ---- the stage ------------------------------------------------------------- */

/* Pick the pool for the resolved ADDR (the template's port), or answer. */
static enum stage_verdict preview_use(struct req *r, enum resolver_status st,
                                      const struct sockaddr_storage *addr)
{
    struct sockaddr_storage ss;
    uint16_t port = htons((uint16_t)r->cfg->previews.upstream_port);

    switch (st) {
    case RESOLVER_OK:
        ss = *addr;
        if (ss.ss_family == AF_INET)
            ((struct sockaddr_in *)&ss)->sin_port = port;
        else
            ((struct sockaddr_in6 *)&ss)->sin6_port = port;
        r->pool = upstream_preview_pool(r->w, &ss);
        if (r->pool == NULL)
            return stage_answer(r, FG_ERR_BAD_GATEWAY, "out of memory");
        /* Retries reach for it again later: a name that moves meanwhile
         * may evict it from the table, never from under this request. */
        upstream_pool_hold(r->pool);
        r->pool_held = true;
        return STAGE_NEXT;
    case RESOLVER_NOT_FOUND:
        return stage_answer(r, FG_ERR_NOT_FOUND, "unknown preview");
    case RESOLVER_FAILED:
    case RESOLVER_PENDING: break;
    }
    metrics_bump(&r->w->stats.preview_dns_failures);
    return stage_answer(r, FG_ERR_BAD_GATEWAY, "preview resolver failure");
}

static void preview_cancel(struct req *r)
{
    resolver_cancel(&r->dns_wait);
}

static void preview_resolved(struct resolver_wait *wt, enum resolver_status st,
                             const struct sockaddr_storage *addr)
{
    struct req *r = (struct req *)((char *)wt - offsetof(struct req, dns_wait));

    r->dns_resume(r, preview_use(r, st, addr));
}

/* Previews only: the MVP's upstream name from the validated name alone,
 * resolved (cached, or waited for), then its pool. */
static enum stage_verdict preview_run(struct req *r, stage_resume_fn resume)
{
    const struct fg_previews *pv = &r->cfg->previews;
    struct worker *w = r->w;
    struct sockaddr_storage addr;
    char host[PREVIEW_DNS_NAME_MAX + 1];

    if (!r->preview)
        return STAGE_NEXT;
    r->no_tunnel = !pv->websocket;
    if (w->resolver == NULL || preview_upstream_host(pv->upstream_prefix, r->preview_name,
                                                     pv->upstream_suffix, host, sizeof(host)) < 0)
        return stage_answer(r, FG_ERR_NOT_FOUND, "preview upstream name too long");
    r->dns_resume = resume;
    metrics_bump(&w->stats.preview_dns_lookups);
    enum resolver_status st =
        resolver_lookup(w->resolver, host, &r->dns_wait, preview_resolved, &addr);
    if (st != RESOLVER_PENDING)
        return preview_use(r, st, &addr);
    return STAGE_WAIT;
}

/* A preview is untrusted code: the platform's credentials never reach it.
 * Authorization goes; Cookie loses the platform's cookies (platform_cookies
 * and jwt.cookie), the others kept in order, no header when none is left.
 * Written straight into the head: the stripping needs twice the value's
 * length as room while it works (the engine reserves it). */
static enum stage_header preview_request_header(const struct req *r, const struct h1_header *h,
                                                struct wbuf *b)
{
    const struct fg_previews *pv = &r->cfg->previews;

    if (!r->preview || !pv->strip_credentials)
        return STAGE_HDR_DEFAULT;
    if (h1_token_eq(h->name, h->name_len, "Authorization"))
        return STAGE_HDR_DROP;
    if (!h1_token_eq(h->name, h->name_len, "Cookie"))
        return STAGE_HDR_DEFAULT;
    size_t need = h->name_len + 2 + 2 * h->value_len + 2;
    if (need > b->s.cap - b->s.len) {
        b->s.overflow = true;
        return STAGE_HDR_WRITTEN;
    }
    char *p = b->s.p + b->s.len;
    size_t n = preview_strip_cookies(h->value, h->value_len, pv->platform_cookies,
                                     pv->nplatform_cookies, r->cfg->jwt.cookie, p + h->name_len + 2);
    if (n == 0)
        return STAGE_HDR_WRITTEN;
    memcpy(p, h->name, h->name_len);
    memcpy(p + h->name_len, ": ", 2);
    memcpy(p + h->name_len + 2 + n, "\r\n", 2);
    b->s.len += h->name_len + 2 + n + 2;
    return STAGE_HDR_WRITTEN;
}

/* On a preview: the platform frames previews, so no X-Frame-Options ever;
 * the preview's own CSP passes (every CSP a response carries is enforced, so
 * it can only narrow flowgate's frame-ancestors); a Set-Cookie for a wider
 * domain than the preview's own host is dropped. */
static enum stage_header preview_response_header(const struct req *r, const struct h1_header *h)
{
    if (!r->preview)
        return STAGE_HDR_DEFAULT;
    if (h1_token_eq(h->name, h->name_len, "X-Frame-Options"))
        return STAGE_HDR_DROP;
    if (h1_token_eq(h->name, h->name_len, "Set-Cookie"))
        return preview_set_cookie_allowed(h->value, h->value_len, r->host, r->host_len)
                   ? STAGE_HDR_DEFAULT
                   : STAGE_HDR_DROP;
    if (h1_token_eq(h->name, h->name_len, "Content-Security-Policy"))
        return STAGE_HDR_KEEP;
    return STAGE_HDR_DEFAULT;
}

static bool preview_needs_resolver(const struct fg_config *cfg)
{
    return cfg->previews.enabled;
}

const struct stage preview_stage = {
    .name = "preview",
    .needs_resolver = preview_needs_resolver,
    .run = preview_run,
    .cancel = preview_cancel,
    .request_header = preview_request_header,
    .response_header = preview_response_header,
};
