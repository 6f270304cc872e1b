/*
 * upname.c - upstream servers given by name: per-worker lookups, the
 * name's addresses in its pool's slots, re-resolution before requests need
 * it, and the stage that holds a request until a name first resolved.
 */
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <arpa/inet.h>
#include <netinet/in.h>

#include "log.h"
#include "metrics.h"
#include "req.h"
#include "resolver.h"
#include "upname.h"
#include "worker.h"

#define UPNAME_AHEAD_MAX_MS                                                                        \
    1000                   /* a name is looked up again this long before its answer                \
                              expires, or a quarter of its life when shorter */
#define UPNAME_SLACK_MS 20 /* the timer may fire a little early (coarse clock) */

struct upname {
    struct upstream_pool *pool;
    struct worker *w;
    const struct fg_sockaddr *server; /* the configuration's: host and port */
    size_t first;                     /* its slots: first .. first + UPSTREAM_NAME_SLOTS */
    struct resolver_wait wait;        /* the lookup in flight, if any */
    struct event *timer;              /* the next lookup */
    enum resolver_status st;          /* the last answer; PENDING before the first */
    uint64_t ahead_ms;                /* the next lookup refreshes answers expiring within it */
    struct fg_sockaddr addrs[UPSTREAM_NAME_SLOTS]; /* what the slots point at */
    char text[UPSTREAM_NAME_SLOTS][56];            /* "10.0.0.7:8080" */
};

static void refresh(struct upname *n, uint64_t ahead_ms);

/* ---- the answer into the slots -------------------------------------------- */

static struct upstream_server_state *slot(const struct upname *n, size_t j)
{
    return &n->pool->servers[n->first + j];
}

static bool in_answer(const struct sockaddr_storage *a, const struct resolver_answer *ans)
{
    for (size_t i = 0; i < ans->naddrs; i++)
        if (resolver_same_ip(a, &ans->addrs[i]))
            return true;
    return false;
}

static bool in_slots(const struct upname *n, const struct sockaddr_storage *a)
{
    for (size_t j = 0; j < UPSTREAM_NAME_SLOTS; j++)
        if (slot(n, j)->sa != NULL && resolver_same_ip(&n->addrs[j].ss, a))
            return true;
    return false;
}

/* Write A (port 0) with the name's port into empty slot J's storage: no
 * reader dereferences it while the slot is empty (upstream_slot_set). */
static void fill(struct upname *n, size_t j, const struct sockaddr_storage *a)
{
    struct fg_sockaddr *sa = &n->addrs[j];
    uint16_t port = ((const struct sockaddr_in *)&n->server->ss)->sin_port;
    char ip[INET6_ADDRSTRLEN] = "?";

    sa->ss = *a;
    sa->host = n->server->host;
    sa->text = n->text[j];
    if (a->ss_family == AF_INET) {
        struct sockaddr_in *s4 = (struct sockaddr_in *)&sa->ss;
        s4->sin_port = port;
        sa->len = sizeof(*s4);
        inet_ntop(AF_INET, &s4->sin_addr, ip, sizeof(ip));
        snprintf(n->text[j], sizeof(n->text[j]), "%s:%u", ip, ntohs(port));
    } else {
        struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&sa->ss;
        s6->sin6_port = port;
        sa->len = sizeof(*s6);
        inet_ntop(AF_INET6, &s6->sin6_addr, ip, sizeof(ip));
        snprintf(n->text[j], sizeof(n->text[j]), "[%s]:%u", ip, ntohs(port));
    }
}

/* The slots follow ANS: an address that left is emptied (its idle
 * connections closed, as for a preview that moved), a new one takes an
 * empty slot with a fresh health; one still there keeps its slot, its
 * connections and its ejection. */
static void apply(struct upname *n, const struct resolver_answer *ans)
{
    for (size_t j = 0; j < UPSTREAM_NAME_SLOTS; j++)
        if (slot(n, j)->sa != NULL && !in_answer(&n->addrs[j].ss, ans))
            upstream_slot_set(n->pool, n->first + j, NULL);
    for (size_t i = 0, j = 0; i < ans->naddrs; i++) {
        if (in_slots(n, &ans->addrs[i]))
            continue;
        while (j < UPSTREAM_NAME_SLOTS && slot(n, j)->sa != NULL)
            j++;
        if (j == UPSTREAM_NAME_SLOTS)
            break;
        fill(n, j, &ans->addrs[i]);
        upstream_slot_set(n->pool, n->first + j, &n->addrs[j]);
    }
}

/* The next lookup, before EXPIRES_MS: requests never find the answer
 * stale, so never wait for its refresh. */
static void arm(struct upname *n, uint64_t expires_ms)
{
    uint64_t now = upstream_now_ms(), left = expires_ms > now ? expires_ms - now : 0;
    uint64_t ahead = left / 4 < UPNAME_AHEAD_MAX_MS ? left / 4 : UPNAME_AHEAD_MAX_MS;
    uint64_t ms = left - ahead;

    n->ahead_ms = ahead + UPNAME_SLACK_MS;
    struct timeval tv = {.tv_sec = (time_t)(ms / 1000), .tv_usec = (suseconds_t)(ms % 1000) * 1000};
    event_add(n->timer, &tv);
}

/* Record answer ST: a name not found has no address any more; a failed
 * lookup keeps the addresses it had (they are likely still there, and an
 * outage of DNS should not become one of the upstream). */
static void answered(struct upname *n, enum resolver_status st, const struct resolver_answer *ans)
{
    if (st == RESOLVER_OK) {
        apply(n, ans);
    } else if (st == RESOLVER_NOT_FOUND) {
        if (n->st != RESOLVER_NOT_FOUND)
            log_warn("upstream %s: %s: name not found", n->pool->u->name, n->server->host);
        apply(n, ans); /* no address: every slot emptied */
    }
    if (st != RESOLVER_FAILED || n->st == RESOLVER_PENDING)
        n->st = st;
    arm(n, ans->expires_ms);
}

/* ---- lookups ----------------------------------------------------------------- */

static void name_resolved(struct resolver_wait *wt, enum resolver_status st,
                          const struct sockaddr_storage *addr)
{
    refresh((struct upname *)((char *)wt - offsetof(struct upname, wait)), 0);
}

/* Look the name up, the cached answer refreshed when it expires within
 * AHEAD_MS (the timer's lookups only: an answer that just came is taken as
 * it is, even a failure's short one). A fresh answer is applied now,
 * otherwise the lookup's answer calls back here. The resolver caches the
 * answer: this is also how a name is brought up to date after someone else
 * waited on its entry. */
static void refresh(struct upname *n, uint64_t ahead_ms)
{
    struct resolver_answer ans = {.naddrs = 0, .expires_ms = 0};
    enum resolver_status st = RESOLVER_FAILED;

    resolver_cancel(&n->wait);
    if (n->w->resolver != NULL)
        st = resolver_lookup_all(n->w->resolver, n->server->host, &n->wait, name_resolved, ahead_ms,
                                 &ans);
    if (st == RESOLVER_PENDING)
        return;
    if (ans.expires_ms == 0)
        ans.expires_ms = upstream_now_ms() + RESOLVER_FAILED_TTL_MS;
    answered(n, st, &ans);
}

static void timer_cb(evutil_socket_t fd, short what, void *arg)
{
    struct upname *n = arg;

    refresh(n, n->ahead_ms);
}

int upname_pool_init(struct worker *w, struct upstream_pool *p)
{
    const struct fg_upstream *u = p->u;

    if (u->nnames == 0)
        return 0;
    if ((p->names = calloc(u->nnames, sizeof(*p->names))) == NULL)
        return -1;
    for (size_t i = 0, k = 0, slot_i = 0; i < u->nservers; i++) {
        if (u->servers[i].host == NULL) {
            slot_i++;
            continue;
        }
        struct upname *n = &p->names[k++];
        n->pool = p;
        n->w = w;
        n->server = &u->servers[i];
        n->first = slot_i;
        n->st = RESOLVER_PENDING;
        slot_i += UPSTREAM_NAME_SLOTS;
        /* The first lookup from the loop: the worker's resolver may be
         * made only after its pools (a reload). */
        if ((n->timer = evtimer_new(w->base, timer_cb, n)) == NULL)
            return -1;
        struct timeval now = {0, 0};
        event_add(n->timer, &now);
    }
    return 0;
}

void upname_pool_stop(struct upstream_pool *p)
{
    for (size_t i = 0; p->names != NULL && i < p->u->nnames; i++) {
        resolver_cancel(&p->names[i].wait);
        if (p->names[i].timer)
            event_del(p->names[i].timer);
    }
}

void upname_pool_free(struct upstream_pool *p)
{
    upname_pool_stop(p);
    for (size_t i = 0; p->names != NULL && i < p->u->nnames; i++)
        if (p->names[i].timer)
            event_free(p->names[i].timer);
    free(p->names);
    p->names = NULL;
}

/* ---- the wait for a first answer (the route stage's) ----------------------- */

/* A name of P that never answered yet (NULL when none). */
static struct upname *pending_name(const struct upstream_pool *p)
{
    for (size_t i = 0; i < p->u->nnames; i++)
        if (p->names[i].st == RESOLVER_PENDING)
            return &p->names[i];
    return NULL;
}

/* No address, none to come: 502, counted as a "dns" failure of P. */
static enum stage_verdict no_address(struct req *r, const struct upstream_pool *p)
{
    bool not_found = false;
    uint64_t *c = metrics_row(&r->w->upstream_errors, worker_upstream_row(r->snap, p));

    for (size_t i = 0; i < p->u->nnames; i++)
        not_found |= p->names[i].st == RESOLVER_NOT_FOUND;
    if (c != NULL)
        metrics_bump(&c[UP_FAIL_DNS]);
    return stage_answer(r, FG_ERR_BAD_GATEWAY,
                        not_found ? "upstream name not found" : "upstream name not resolved");
}

static void upname_resumed(struct resolver_wait *wt, enum resolver_status st,
                           const struct sockaddr_storage *addr);

/*
 * Let R go on when its pool has an address. Otherwise wait on the resolver
 * entry of a name that never answered (its answer, when it comes, is
 * applied by whichever of the name and the request hears it first), and
 * answer 502 when every name answered without an address.
 */
static enum stage_verdict upname_check(struct req *r)
{
    struct upstream_pool *p = r->pool;
    struct upname *n;
    struct sockaddr_storage addr;

    while (p->nlive == 0 && (n = pending_name(p)) != NULL) {
        if (r->w->resolver == NULL)
            break;
        enum resolver_status st =
            resolver_lookup(r->w->resolver, n->server->host, &r->dns_wait, upname_resumed, &addr);
        if (st == RESOLVER_PENDING)
            return STAGE_WAIT;
        refresh(n, 0); /* answered from the cache: no longer pending */
        if (n->st == RESOLVER_PENDING)
            break; /* (out of memory in the resolver) */
    }
    return p->nlive > 0 ? STAGE_NEXT : no_address(r, p);
}

static void upname_resumed(struct resolver_wait *wt, enum resolver_status st,
                           const struct sockaddr_storage *addr)
{
    struct req *r = (struct req *)((char *)wt - offsetof(struct req, dns_wait));

    r->dns_resume(r, upname_check(r));
}

enum stage_verdict upname_wait(struct req *r, stage_resume_fn resume)
{
    if (r->pool == NULL || r->pool->names == NULL || r->pool->nlive > 0)
        return STAGE_NEXT;
    r->dns_resume = resume;
    return upname_check(r);
}

void upname_cancel(struct req *r)
{
    resolver_cancel(&r->dns_wait);
}

bool upname_needs_resolver(const struct fg_config *cfg)
{
    for (size_t i = 0; i < cfg->nupstreams; i++)
        if (cfg->upstreams[i].nnames > 0)
            return true;
    return false;
}
