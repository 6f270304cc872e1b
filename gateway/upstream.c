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

#include <event2/buffer.h>

#include "log.h"
#include "upstream.h"
#include "worker.h"

uint64_t upstream_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

int upstream_pools_init(struct worker *w, const struct fg_config *cfg)
{
    w->npools = cfg->nupstreams;
    if (w->npools == 0)
        return 0;
    w->pools = calloc(w->npools, sizeof(*w->pools));
    if (w->pools == NULL)
        return -1;
    for (size_t i = 0; i < w->npools; i++) {
        struct upstream_pool *p = &w->pools[i];
        p->u = &cfg->upstreams[i];
        p->servers = calloc(p->u->nservers ? p->u->nservers : 1, sizeof(*p->servers));
        if (p->servers == NULL)
            return -1;
        p->next = w->id; /* spread the workers' first picks */
        p->base = w->base;
    }
    return 0;
}

static void upconn_free(struct upconn *uc)
{
    if (uc->timer)
        event_free(uc->timer);
    if (uc->bev)
        bufferevent_free(uc->bev);
    free(uc->hdrs);
    free(uc->head_buf);
    free(uc);
}

void upstream_pools_close_idle(struct worker *w)
{
    for (size_t i = 0; i < w->npools; i++) {
        struct upstream_pool *p = &w->pools[i];
        while (p->idle) {
            struct upconn *uc = p->idle;
            p->idle = uc->next_idle;
            p->nidle--;
            upconn_free(uc);
        }
    }
}

void upstream_pools_free(struct worker *w)
{
    upstream_pools_close_idle(w);
    for (size_t i = 0; i < w->npools; i++)
        free(w->pools[i].servers);
    free(w->pools);
    w->pools = NULL;
    w->npools = 0;
}

const char *upstream_server_text(const struct upconn *uc)
{
    return uc->pool->u->servers[uc->server].text;
}

void upstream_mark_down(struct upconn *uc)
{
    uc->pool->servers[uc->server].down_until_ms = upstream_now_ms() + UPSTREAM_DOWN_MS;
}

static void pool_unlink(struct upconn *uc)
{
    struct upconn **pp = &uc->pool->idle;
    while (*pp && *pp != uc)
        pp = &(*pp)->next_idle;
    if (*pp) {
        *pp = uc->next_idle;
        uc->pool->nidle--;
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
static void idle_event_cb(struct bufferevent *bev, short what, void *arg)
{
    upstream_close(arg);
}

static void idle_read_cb(struct bufferevent *bev, void *arg)
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

    uc->owner = NULL;
    uc->ready_cb = NULL;
    if (!keep || p->u->keepalive == 0 || p->nidle >= p->u->keepalive ||
        evbuffer_get_length(bufferevent_get_input(uc->bev)) > 0) {
        upconn_free(uc);
        return;
    }
    uc->state = UPCONN_IDLE;
    uc->served++;
    bufferevent_setcb(uc->bev, idle_read_cb, NULL, idle_event_cb, uc);
    bufferevent_enable(uc->bev, EV_READ);
    event_del(uc->timer);
    /* Idle connections are closed after a while so servers with a short
     * keep-alive timeout rarely close one under a new request. */
    event_assign(uc->timer, bufferevent_get_base(uc->bev), -1, 0, idle_timeout_cb, uc);
    struct timeval tv = {.tv_sec = 30, .tv_usec = 0};
    event_add(uc->timer, &tv);
    uc->next_idle = p->idle;
    p->idle = uc;
    p->nidle++;
}

static size_t pick_server(struct upstream_pool *p)
{
    size_t n = p->u->nservers;
    uint64_t now = upstream_now_ms();

    for (size_t tries = 0; tries < n; tries++) {
        size_t i = p->next++ % n;
        if (p->servers[i].down_until_ms <= now)
            return i;
    }
    /* Every server is marked down: try them anyway, in turn, rather than
     * failing without an attempt. */
    return p->next++ % n;
}

static void connect_done(struct upconn *uc, int ok, const char *kind)
{
    upconn_ready_cb cb = uc->ready_cb;
    void *arg = uc->ready_arg;

    event_del(uc->timer);
    if (ok == 0) {
        uc->state = UPCONN_ACTIVE;
    } else if (strcmp(kind, "refused") == 0) {
        upstream_mark_down(uc);
    }
    if (cb)
        cb(uc, ok, kind, arg);
}

static void connect_event_cb(struct bufferevent *bev, short what, void *arg)
{
    struct upconn *uc = arg;

    if (what & BEV_EVENT_CONNECTED) {
        int one = 1;
        setsockopt(bufferevent_getfd(bev), IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        connect_done(uc, 0, NULL);
        return;
    }
    int err = EVUTIL_SOCKET_ERROR();
    connect_done(uc, -1, err == ECONNREFUSED ? "refused" : "error");
}

static void connect_timeout_cb(evutil_socket_t fd, short what, void *arg)
{
    connect_done(arg, -1, "timeout");
}

static struct upconn *pooled(struct upstream_pool *p)
{
    struct upconn *uc = p->idle;

    if (uc == NULL)
        return NULL;
    p->idle = uc->next_idle;
    p->nidle--;
    uc->next_idle = NULL;
    uc->state = UPCONN_ACTIVE;
    uc->reused = true;
    event_del(uc->timer);
    bufferevent_setcb(uc->bev, NULL, NULL, NULL, NULL);
    return uc;
}

struct upconn *upstream_get(struct upstream_pool *p, upconn_ready_cb cb, void *arg,
                            bool allow_pooled, bool *ready)
{
    struct upconn *uc = allow_pooled ? pooled(p) : NULL;

    *ready = uc != NULL;
    if (uc)
        return uc;
    if (p->u->nservers == 0)
        return NULL;
    uc = calloc(1, sizeof(*uc));
    if (uc == NULL)
        return NULL;
    uc->pool = p;
    uc->server = pick_server(p);
    uc->ready_cb = cb;
    uc->ready_arg = arg;
    uc->state = UPCONN_CONNECTING;
    uc->timer = evtimer_new(p->base, connect_timeout_cb, uc);
    uc->bev = bufferevent_socket_new(p->base, -1, BEV_OPT_CLOSE_ON_FREE);
    if (uc->timer == NULL || uc->bev == NULL)
        goto fail;
    bufferevent_setcb(uc->bev, NULL, NULL, connect_event_cb, uc);
    const struct fg_sockaddr *sa = &p->u->servers[uc->server];
    if (bufferevent_socket_connect(uc->bev, (struct sockaddr *)&sa->ss, (int)sa->len) < 0) {
        /* Immediate failure (e.g. refused on loopback): report it from the
         * loop, like any other failure, so the caller's stack unwinds first. */
        uc->ready_cb = NULL;
        upstream_mark_down(uc);
        goto fail;
    }
    struct timeval tv = {.tv_sec = p->u->connect_timeout_ms / 1000,
                         .tv_usec = (p->u->connect_timeout_ms % 1000) * 1000};
    event_add(uc->timer, &tv);
    return uc;

fail:
    upconn_free(uc);
    return NULL;
}
