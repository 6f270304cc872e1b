/*
 * upstream.c - upstream connections: connect, pool, health.
 *
 * Pools are per worker (no locks): each worker keeps up to `keepalive` idle
 * connections per upstream. An idle connection that the server closes (or
 * that receives unexpected bytes) is dropped from the pool at once, so a
 * request is never handed a connection we already know is dead.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>

#include <event2/buffer.h>

#include "hash.h"
#include "health.h"
#include "log.h"
#include "proxy.h"
#include "upname.h"
#include "upstream.h"
#include "worker.h"

uint64_t upstream_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* P's address slots: a server given as an address has its slot, live
 * from the start; a name's slots stay empty until upname.c fills them. */
static int pool_slots(struct upstream_pool *p)
{
    const struct fg_upstream *u = p->u;

    p->nslots = u->nservers + u->nnames * (UPSTREAM_NAME_SLOTS - 1);
    if ((p->servers = calloc(p->nslots ? p->nslots : 1, sizeof(*p->servers))) == NULL)
        return -1;
    for (size_t i = 0, k = 0, name = 0; i < u->nservers; i++) {
        if (u->servers[i].host != NULL) {
            for (size_t j = 0; j < UPSTREAM_NAME_SLOTS; j++)
                p->servers[k++].name = (uint32_t)name;
            name++;
            continue;
        }
        if (p->nlive++ == 0)
            p->first_live = k;
        p->servers[k++].sa = &u->servers[i];
    }
    return 0;
}

struct upstream_pool *upstream_pools_new(struct worker *w, const struct fg_config *cfg)
{
    struct upstream_pool *pools = calloc(cfg->nupstreams ? cfg->nupstreams : 1, sizeof(*pools));

    if (pools == NULL)
        return NULL;
    for (size_t i = 0; i < cfg->nupstreams; i++) {
        struct upstream_pool *p = &pools[i];
        p->u = &cfg->upstreams[i];
        p->next = w->id; /* spread the workers' first picks */
        p->base = w->base;
        if (pool_slots(p) < 0 || upname_pool_init(w, p) < 0) {
            upstream_pools_destroy(pools, i + 1);
            return NULL;
        }
    }
    return pools;
}

/* The worker's preview pools, keyed by address and port. */
#define DYN_BUCKETS 1024

struct upstream_dyn {
    struct upstream_pool *buckets[DYN_BUCKETS];
    struct upstream_pool *lru_head, *lru_tail;
    size_t npools;
    uint32_t nidle; /* idle connections over every preview pool */
};

static void upconn_free(struct upconn *uc)
{
    struct upstream_pool *p = uc->pool;

    if (uc->timer)
        event_free(uc->timer);
    if (uc->io)
        io_free(uc->io);
    free(uc->hdrs);
    free(uc->head_buf);
    free(uc);
    if (p)
        upstream_pool_release(p);
}

void upstream_pool_hold(struct upstream_pool *p)
{
    p->refs++;
}

/* A preview pool evicted while in use goes with its last user. */
void upstream_pool_release(struct upstream_pool *p)
{
    if (--p->refs == 0 && p->forgotten)
        free(p);
}

/* Take the first idle connection to slot S of P out (NULL when none). */
static struct upconn *slot_pop(struct upstream_pool *p, struct upstream_server_state *s)
{
    struct upconn *uc = s->idle;

    if (uc == NULL)
        return NULL;
    s->idle = uc->next_idle;
    s->nidle--;
    p->nidle--;
    if (p->dyn)
        p->dyn->nidle--;
    uc->next_idle = NULL;
    return uc;
}

/* Any idle connection of P (NULL when none). */
static struct upconn *pool_pop(struct upstream_pool *p)
{
    for (size_t i = 0; p->nidle > 0 && i < p->nslots; i++)
        if (p->servers[i].idle != NULL)
            return slot_pop(p, &p->servers[i]);
    return NULL;
}

static void pool_close_idle(struct upstream_pool *p)
{
    struct upconn *uc;

    while ((uc = pool_pop(p)) != NULL)
        upconn_free(uc);
}

void upstream_pools_retire(struct upstream_pool *pools, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        upname_pool_stop(&pools[i]);
        pool_close_idle(&pools[i]);
        pools[i].retired = true;
    }
}

void upstream_pools_destroy(struct upstream_pool *pools, size_t n)
{
    for (size_t i = 0; pools != NULL && i < n; i++) {
        upname_pool_free(&pools[i]);
        pool_close_idle(&pools[i]);
        free(pools[i].servers);
    }
    free(pools);
}

/* Shutting down: names are no longer refreshed (their timers would keep
 * the draining loop alive), in-flight requests keep their addresses. */
void upstream_pools_close_idle(struct worker *w)
{
    for (size_t i = 0; w->snap != NULL && i < w->snap->npools; i++) {
        upname_pool_stop(&w->snap->pools[i]);
        pool_close_idle(&w->snap->pools[i]);
    }
    if (w->dyn == NULL)
        return;
    /* Closing a pool's last idle connection never frees it: it is still in
     * the table (not forgotten). */
    for (struct upstream_pool *p = w->dyn->lru_head; p; p = p->lru_next)
        pool_close_idle(p);
}

static void dyn_forget(struct upstream_dyn *d, struct upstream_pool *p);

void upstream_pools_free(struct worker *w)
{
    if (w->dyn) {
        while (w->dyn->lru_head)
            dyn_forget(w->dyn, w->dyn->lru_head);
        free(w->dyn);
        w->dyn = NULL;
    }
}

/* ---- preview pools ---------------------------------------------------------- */

static bool same_endpoint(const struct sockaddr_storage *a, const struct sockaddr_storage *b,
                          bool with_port)
{
    if (a->ss_family != b->ss_family)
        return false;
    if (a->ss_family == AF_INET) {
        const struct sockaddr_in *x = (const void *)a, *y = (const void *)b;
        return x->sin_addr.s_addr == y->sin_addr.s_addr && (!with_port || x->sin_port == y->sin_port);
    }
    const struct sockaddr_in6 *x = (const void *)a, *y = (const void *)b;
    return memcmp(&x->sin6_addr, &y->sin6_addr, sizeof(x->sin6_addr)) == 0 &&
           (!with_port || x->sin6_port == y->sin6_port);
}

static uint32_t endpoint_hash(const struct sockaddr_storage *a)
{
    const unsigned char *b;
    size_t n;

    if (a->ss_family == AF_INET) {
        b = (const unsigned char *)&((const struct sockaddr_in *)a)->sin_addr;
        n = 4;
    } else {
        b = (const unsigned char *)&((const struct sockaddr_in6 *)a)->sin6_addr;
        n = 16;
    }
    /* by address only: forgetting an address finds every port */
    return (uint32_t)hash_bytes(b, n, 0);
}

static void dyn_lru_unlink(struct upstream_dyn *d, struct upstream_pool *p)
{
    if (p->lru_prev)
        p->lru_prev->lru_next = p->lru_next;
    else
        d->lru_head = p->lru_next;
    if (p->lru_next)
        p->lru_next->lru_prev = p->lru_prev;
    else
        d->lru_tail = p->lru_prev;
    p->lru_prev = p->lru_next = NULL;
}

static void dyn_lru_push(struct upstream_dyn *d, struct upstream_pool *p)
{
    p->lru_next = d->lru_head;
    p->lru_prev = NULL;
    if (d->lru_head)
        d->lru_head->lru_prev = p;
    d->lru_head = p;
    if (d->lru_tail == NULL)
        d->lru_tail = p;
}

/* Out of the table, its idle connections closed; connections in use keep
 * the pool alive until they end (upconn_free). */
static void dyn_forget(struct upstream_dyn *d, struct upstream_pool *p)
{
    struct upstream_pool **pp = &d->buckets[endpoint_hash(&p->dyn_server.ss) % DYN_BUCKETS];

    while (*pp && *pp != p)
        pp = &(*pp)->hnext;
    if (*pp)
        *pp = p->hnext;
    dyn_lru_unlink(d, p);
    d->npools--;
    pool_close_idle(p);
    p->dyn = NULL;
    p->forgotten = true;
    if (p->refs == 0)
        free(p);
}

static struct upstream_pool *dyn_new_pool(struct worker *w, const struct sockaddr_storage *addr)
{
    struct upstream_pool *p = calloc(1, sizeof(*p));
    char ip[INET6_ADDRSTRLEN] = "?";
    int port;

    if (p == NULL)
        return NULL;
    p->dyn_server.ss = *addr;
    if (addr->ss_family == AF_INET) {
        const struct sockaddr_in *s4 = (const void *)addr;
        inet_ntop(AF_INET, &s4->sin_addr, ip, sizeof(ip));
        port = ntohs(s4->sin_port);
        p->dyn_server.len = sizeof(struct sockaddr_in);
        snprintf(p->dyn_text, sizeof(p->dyn_text), "%s:%d", ip, port);
    } else {
        const struct sockaddr_in6 *s6 = (const void *)addr;
        inet_ntop(AF_INET6, &s6->sin6_addr, ip, sizeof(ip));
        port = ntohs(s6->sin6_port);
        p->dyn_server.len = sizeof(struct sockaddr_in6);
        snprintf(p->dyn_text, sizeof(p->dyn_text), "[%s]:%d", ip, port);
    }
    p->dyn_server.text = p->dyn_text;
    p->dyn_u.name = "preview";
    p->dyn_u.servers = &p->dyn_server;
    p->dyn_u.nservers = 1;
    p->dyn_u.connect_timeout_ms = UPSTREAM_PREVIEW_CONNECT_MS;
    p->dyn_u.read_timeout_ms = UPSTREAM_PREVIEW_READ_MS;
    p->dyn_u.keepalive = UPSTREAM_PREVIEW_KEEPALIVE;
    p->dyn_u.max_tries = 1; /* its one server: no other to try */
    p->u = &p->dyn_u;
    p->dyn_state.sa = &p->dyn_server;
    p->servers = &p->dyn_state;
    p->nslots = p->nlive = 1;
    p->base = w->base;
    p->dyn = w->dyn;
    return p;
}

struct upstream_pool *upstream_preview_pool(struct worker *w, const struct sockaddr_storage *addr)
{
    struct upstream_dyn *d = w->dyn;
    struct upstream_pool *p;

    if (d == NULL && (d = w->dyn = calloc(1, sizeof(*d))) == NULL)
        return NULL;
    uint32_t h = endpoint_hash(addr) % DYN_BUCKETS;
    for (p = d->buckets[h]; p; p = p->hnext) {
        if (same_endpoint(&p->dyn_server.ss, addr, true)) {
            if (d->lru_head != p) {
                dyn_lru_unlink(d, p);
                dyn_lru_push(d, p);
            }
            return p;
        }
    }
    if (d->npools >= UPSTREAM_PREVIEW_POOLS_MAX)
        dyn_forget(d, d->lru_tail);
    if ((p = dyn_new_pool(w, addr)) == NULL)
        return NULL;
    p->hnext = d->buckets[h];
    d->buckets[h] = p;
    dyn_lru_push(d, p);
    d->npools++;
    return p;
}

void upstream_preview_forget(struct worker *w, const struct sockaddr_storage *addr)
{
    struct upstream_dyn *d = w->dyn;

    if (d == NULL)
        return;
    struct upstream_pool *p = d->buckets[endpoint_hash(addr) % DYN_BUCKETS], *next;
    for (; p; p = next) {
        next = p->hnext;
        if (same_endpoint(&p->dyn_server.ss, addr, false))
            dyn_forget(d, p);
    }
}

/* The shared bound on idle preview connections: make room by closing one
 * idle connection of the least recently used pool that has one. */
static bool dyn_make_room(struct upstream_dyn *d)
{
    if (d->nidle < UPSTREAM_PREVIEW_IDLE_MAX)
        return true;
    for (struct upstream_pool *p = d->lru_tail; p; p = p->lru_prev) {
        struct upconn *uc = pool_pop(p);
        if (uc) {
            upconn_free(uc);
            return true;
        }
    }
    return false;
}

/* Atomic: the admin reads down_until_ms from main's thread
 * (flowgate_upstream_server_up). A server past max_fails stays there: after
 * its fail_timeout_ms, the first failure ejects it again (as nginx does). */
void upstream_server_failed(struct upconn *uc)
{
    const struct fg_upstream *u = uc->pool->u;
    struct upstream_server_state *s = &uc->pool->servers[uc->server];

    if (s->gen != uc->gen)
        return; /* the slot holds another address now */
    if (s->fails < UINT32_MAX)
        s->fails++;
    if (u->max_fails != 0 && s->fails >= u->max_fails)
        __atomic_store_n(&s->down_until_ms, upstream_now_ms() + u->fail_timeout_ms,
                         __ATOMIC_RELAXED);
}

void upstream_server_recovered(struct upconn *uc)
{
    struct upstream_server_state *s = &uc->pool->servers[uc->server];

    if (s->gen != uc->gen)
        return;
    s->fails = 0;
    __atomic_store_n(&s->down_until_ms, 0, __ATOMIC_RELAXED);
}

/* A name's slot moves to SA (NULL: empty). Written between two bumps of
 * seq, which the admin thread reads around its copy of the slot. */
void upstream_slot_set(struct upstream_pool *p, size_t i, const struct fg_sockaddr *sa)
{
    struct upstream_server_state *s = &p->servers[i];
    struct upconn *uc;

    while ((uc = slot_pop(p, s)) != NULL)
        upconn_free(uc);
    p->nlive += (sa != NULL) - (s->sa != NULL);
    __atomic_store_n(&s->seq, s->seq + 1, __ATOMIC_RELAXED);
    __atomic_thread_fence(__ATOMIC_RELEASE);
    __atomic_store_n(&s->sa, sa, __ATOMIC_RELAXED);
    __atomic_store_n(&s->down_until_ms, 0, __ATOMIC_RELAXED);
    s->fails = 0;
    s->gen++;
    __atomic_store_n(&s->seq, s->seq + 1, __ATOMIC_RELEASE);
    for (p->first_live = 0; p->first_live < p->nslots && p->servers[p->first_live].sa == NULL;)
        p->first_live++;
}

bool upstream_slot_read(const struct upstream_server_state *s, struct upstream_slot_view *out)
{
    for (int tries = 0; tries < 64; tries++) {
        uint32_t seq = __atomic_load_n(&s->seq, __ATOMIC_ACQUIRE);
        if (seq & 1)
            continue;
        const struct fg_sockaddr *sa = __atomic_load_n(&s->sa, __ATOMIC_RELAXED);
        if (sa != NULL) {
            out->ss = sa->ss;
            out->len = sa->len;
            memcpy(out->text, sa->text, sizeof(out->text) - 1);
            out->text[sizeof(out->text) - 1] = '\0';
        }
        out->down_until_ms = __atomic_load_n(&s->down_until_ms, __ATOMIC_RELAXED);
        __atomic_thread_fence(__ATOMIC_ACQUIRE);
        if (__atomic_load_n(&s->seq, __ATOMIC_RELAXED) == seq)
            return sa != NULL;
    }
    return false;
}

static void pool_unlink(struct upconn *uc)
{
    struct upstream_server_state *s = &uc->pool->servers[uc->server];
    struct upconn **pp = &s->idle;
    while (*pp && *pp != uc)
        pp = &(*pp)->next_idle;
    if (*pp) {
        *pp = uc->next_idle;
        s->nidle--;
        uc->pool->nidle--;
        if (uc->pool->dyn)
            uc->pool->dyn->nidle--;
    }
    uc->next_idle = NULL;
}

void upstream_close(struct upconn *uc)
{
    if (uc == NULL)
        return;
    if (uc->state == UPCONN_IDLE)
        pool_unlink(uc);
    upconn_free(uc);
}

/* An idle pooled connection became readable: the server closed it or sent
 * bytes nobody asked for. Either way it cannot be reused. */
static void idle_event_cb(struct io *io, int what, void *arg)
{
    upstream_close(arg);
}

static void idle_read_cb(struct io *io, void *arg)
{
    upstream_close(arg);
}

static void idle_timeout_cb(evutil_socket_t fd, short what, void *arg)
{
    upstream_close(arg);
}

void upstream_release(struct upconn *uc, bool keep)
{
    struct upstream_pool *p = uc->pool;
    struct upstream_server_state *s = &p->servers[uc->server];

    uc->owner = NULL;
    uc->ready_cb = NULL;
    if (!keep || p->u->keepalive == 0 || p->nidle >= p->u->keepalive || p->forgotten ||
        p->retired || s->gen != uc->gen || evbuffer_get_length(uc->io->in) > 0 ||
        io_ended(uc->io) || (p->dyn && !dyn_make_room(p->dyn))) {
        upconn_free(uc);
        return;
    }
    uc->state = UPCONN_IDLE;
    uc->served++;
    io_setcb(uc->io, idle_read_cb, NULL, idle_event_cb, uc);
    io_enable_read(uc->io);
    event_del(uc->timer);
    /* Idle connections are closed after a while so servers with a short
     * keep-alive timeout rarely close one under a new request. */
    event_assign(uc->timer, p->base, -1, 0, idle_timeout_cb, uc);
    struct timeval tv = {.tv_sec = 30, .tv_usec = 0};
    event_add(uc->timer, &tv);
    uc->next_idle = s->idle;
    s->idle = uc;
    s->nidle++;
    p->nidle++;
    if (p->dyn)
        p->dyn->nidle++;
}

#define SERVER_BIT(i) ((uint64_t)1 << ((i) % 64))

/* The active health checks' verdict on slot S (health.h): a server given
 * as an address by its position, an address of a name by the address. */
static bool slot_healthy(const struct upstream_pool *p, const struct upstream_server_state *s)
{
    const struct fg_upstream *u = p->u;

    if (u->health == NULL)
        return true;
    if (s->sa >= u->servers && s->sa < u->servers + u->nservers)
        return health_usable(u, (size_t)(s->sa - u->servers));
    return health_addr_usable(u, s->name, &s->sa->ss);
}

/*
 * The next address round-robin that is neither ejected, nor unhealthy, nor
 * in TRIED. When every address left is ejected, the one ejected longest ago
 * (the nearest to its return) is tried anyway: an operator expects a
 * request to reach a server that may have recovered rather than a 502 no
 * server was asked for (Envoy's panic threshold; nginx says "no live
 * upstreams" instead). When every address was tried, plain round-robin.
 * The clock is read only when an address was ever ejected. P->nslots when
 * no slot has an address.
 */

static size_t pick_server(struct upstream_pool *p, uint64_t tried)
{
    size_t n = p->nslots, best = n, any = n, i = p->next % n;
    uint64_t now = 0;

    for (size_t k = 0; k < n; k++, i = i + 1 < n ? i + 1 : 0) {
        const struct upstream_server_state *s = &p->servers[i];
        if (s->sa == NULL)
            continue;
        if (any == n)
            any = i;
        if (tried & SERVER_BIT(i))
            continue;
        if ((s->down_until_ms == 0 ||
             s->down_until_ms <= (now ? now : (now = upstream_now_ms()))) &&
            slot_healthy(p, s)) {
            p->next = i + 1;
            return i;
        }
        if (best == n || s->down_until_ms < p->servers[best].down_until_ms)
            best = i;
    }
    i = best < n ? best : any;
    p->next = i + 1;
    return i;
}

const char *upstream_fail_str(enum upstream_fail f)
{
    switch (f) {
    case UP_FAIL_NONE: return "none";
    case UP_FAIL_REFUSED: return "refused";
    case UP_FAIL_CONNECT_TIMEOUT: return "connect timeout";
    case UP_FAIL_ERROR: return "error";
    case UP_FAIL_CLOSED: return "closed";
    case UP_FAIL_BAD_RESPONSE: return "bad response";
    case UP_FAIL_READ_TIMEOUT: return "read timeout";
    case UP_FAIL_TRUNCATED: return "truncated";
    case UP_FAIL_BAD_FRAMING: return "bad framing";
    case UP_FAIL_DNS: return "dns";
    case UP_FAIL__COUNT: break;
    }
    return "?";
}

/* The address text a connection logs: the configuration's own string
 * lives as long as the pool; a name's slot may be rewritten meanwhile. */
static const char *conn_text(struct upconn *uc, const struct fg_sockaddr *sa)
{
    if (sa->host == NULL)
        return sa->text;
    snprintf(uc->text_buf, sizeof(uc->text_buf), "%s", sa->text);
    return uc->text_buf;
}

static void connect_done(struct upconn *uc, enum upstream_fail fail)
{
    upconn_ready_cb cb = uc->ready_cb;
    void *arg = uc->ready_arg;

    event_del(uc->timer);
    if (fail == UP_FAIL_NONE)
        uc->state = UPCONN_ACTIVE;
    else
        upstream_server_failed(uc);
    if (cb)
        cb(uc, fail, arg);
}

static void connect_event_cb(struct io *io, int what, void *arg)
{
    struct upconn *uc = arg;

    if (what & IO_CONNECTED) {
        int one = 1;
        setsockopt(io->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        connect_done(uc, UP_FAIL_NONE);
        return;
    }
    connect_done(uc, io->err == ECONNREFUSED ? UP_FAIL_REFUSED : UP_FAIL_ERROR);
}

static void connect_timeout_cb(evutil_socket_t fd, short what, void *arg)
{
    connect_done(arg, UP_FAIL_CONNECT_TIMEOUT);
}

/* An idle connection to slot I of P, made ready for a request. */
static struct upconn *pooled(struct upstream_pool *p, size_t i)
{
    struct upconn *uc = slot_pop(p, &p->servers[i]);

    if (uc == NULL)
        return NULL;
    uc->state = UPCONN_ACTIVE;
    uc->reused = true;
    event_del(uc->timer);
    io_setcb(uc->io, NULL, NULL, NULL, NULL);
    return uc;
}

/* A new connection to slot I of P; CB runs when its connect ends. NULL
 * when no socket could be made. Never inlined: upstream_get's reuse of a
 * pooled connection, every keep-alive request's path, stays a short leaf. */
__attribute__((noinline)) static struct upconn *upconn_connect(struct upstream_pool *p, size_t i,
                                                               upconn_ready_cb cb, void *arg)
{
    struct upconn *uc = calloc(1, sizeof(*uc));

    if (uc == NULL)
        return NULL;
    uc->pool = p;
    upstream_pool_hold(p);
    uc->server = i;
    uc->gen = p->servers[i].gen;
    uc->text = conn_text(uc, p->servers[i].sa);
    uc->ready_cb = cb;
    uc->ready_arg = arg;
    uc->state = UPCONN_CONNECTING;
    uc->timer = evtimer_new(p->base, connect_timeout_cb, uc);
    if (uc->timer == NULL)
        goto fail;
    const struct fg_sockaddr *sa = p->servers[i].sa;
    uc->io = io_connect(p->base, (const struct sockaddr *)&sa->ss, sa->len);
    if (uc->io == NULL) {
        /* Immediate failure (refused on loopback, say): the caller answers
         * from its own stack. Running out of sockets says nothing about
         * the server. */
        uc->ready_cb = NULL;
        if (errno != EMFILE && errno != ENFILE && errno != ENOMEM && errno != ENOBUFS)
            upstream_server_failed(uc);
        goto fail;
    }
    io_setcb(uc->io, NULL, NULL, connect_event_cb, uc);
    uc->io->read_high = PROXY_READ_HIGH;
    uc->io->write_low = PROXY_WRITE_LOW;
    uc->io->read_size = 65536;
    struct timeval tv = {.tv_sec = p->u->connect_timeout_ms / 1000,
                         .tv_usec = (p->u->connect_timeout_ms % 1000) * 1000};
    event_add(uc->timer, &tv);
    return uc;

fail:
    upconn_free(uc);
    return NULL;
}

struct upconn *upstream_get(struct upstream_pool *p, upconn_ready_cb cb, void *arg,
                            bool allow_pooled, uint64_t *tried, bool *ready)
{
    /* One address (the common case): round-robin has no choice to make. */
    size_t i = p->nlive == 1 ? p->first_live : pick_server(p, *tried);

    *ready = false;
    if (i == p->nslots)
        return NULL;
    *tried |= SERVER_BIT(i);
    if (allow_pooled && p->servers[i].idle != NULL) {
        *ready = true;
        return pooled(p, i);
    }
    return upconn_connect(p, i, cb, arg);
}
