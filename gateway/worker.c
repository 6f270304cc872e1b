/*
 * worker.c - one event-loop thread and its listeners.
 *
 * Each worker binds its own socket for every listener address with
 * SO_REUSEPORT, so the kernel spreads connections across workers and no
 * accept lock exists. The connection limit is checked before accept(): past
 * max_connections a worker stops watching its listening sockets, and new
 * connections wait in the kernel backlog (no TLS work is spent on them).
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/random.h>
#include <unistd.h>
#include <netinet/in.h>

#include <event2/buffer.h>
#include <event2/event.h>

#include "conn.h"
#include "jwtauth.h"
#include "log.h"
#include "ratelimit.h"
#include "resolver.h"
#include "rl_redis.h"
#include "upstream.h"
#include "worker.h"

int worker_nconns; /* atomic: open client connections in the process */
static int drain_mark; /* atomic: set once by worker_drain_all, never cleared */

static void listener_accept_cb(evutil_socket_t fd, short what, void *arg);

static int listen_socket(const struct fg_sockaddr *a, char *err, size_t errlen)
{
    int one = 1;
    int fd = socket(a->ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);

    if (fd < 0)
        goto fail;
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0 ||
        setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) < 0)
        goto fail;
    if (a->ss.ss_family == AF_INET6)
        setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
    if (bind(fd, (const struct sockaddr *)&a->ss, a->len) < 0 || listen(fd, 4096) < 0)
        goto fail;
    return fd;

fail:
    snprintf(err, errlen, "listen %s: %s", a->text, strerror(errno));
    if (fd >= 0)
        close(fd);
    return -1;
}

static int sockaddr_port(const struct fg_sockaddr *a)
{
    if (a->ss.ss_family == AF_INET)
        return ntohs(((const struct sockaddr_in *)&a->ss)->sin_port);
    if (a->ss.ss_family == AF_INET6)
        return ntohs(((const struct sockaddr_in6 *)&a->ss)->sin6_port);
    return 0;
}

static int add_listeners(struct worker *w, const struct fg_sockaddr *addrs, size_t n,
                         enum listener_kind kind, char *err, size_t errlen)
{
    for (size_t i = 0; i < n; i++) {
        struct listener *l = &w->listeners[w->nlisteners];
        l->w = w;
        l->kind = kind;
        l->port = sockaddr_port(&addrs[i]);
        l->fd = listen_socket(&addrs[i], err, errlen);
        if (l->fd < 0)
            return -1;
        l->ev = event_new(w->base, l->fd, EV_READ | EV_PERSIST, listener_accept_cb, l);
        if (l->ev == NULL || event_add(l->ev, NULL) < 0) {
            snprintf(err, errlen, "listen %s: event setup failed", addrs[i].text);
            close(l->fd);
            return -1;
        }
        w->nlisteners++;
    }
    return 0;
}

static void pause_listeners(struct worker *w)
{
    for (size_t i = 0; i < w->nlisteners; i++) {
        if (!w->listeners[i].paused) {
            event_del(w->listeners[i].ev);
            w->listeners[i].paused = true;
        }
    }
    /* Another worker may free a slot: look again shortly. */
    struct timeval tv = {.tv_sec = 0, .tv_usec = 50000};
    event_add(w->resume_ev, &tv);
}

static void resume_listeners(struct worker *w)
{
    if (w->stopping)
        return;
    for (size_t i = 0; i < w->nlisteners; i++) {
        if (w->listeners[i].paused) {
            event_add(w->listeners[i].ev, NULL);
            w->listeners[i].paused = false;
        }
    }
}

static void resume_cb(evutil_socket_t fd, short what, void *arg)
{
    struct worker *w = arg;

    if (__atomic_load_n(&worker_nconns, __ATOMIC_RELAXED) < (int)w->cfg->limits.max_connections)
        resume_listeners(w);
    else
        pause_listeners(w);
}

/* A stopped worker whose last connection is gone ends its loop (timers
 * of the resolver or the Redis link do not keep it alive). */
static void maybe_done(struct worker *w)
{
    if (w->stopping && w->conns == NULL)
        event_base_loopbreak(w->base);
}

void worker_conn_closed(struct worker *w)
{
    int n = __atomic_sub_fetch(&worker_nconns, 1, __ATOMIC_RELAXED);

    if (n < (int)w->cfg->limits.max_connections)
        resume_listeners(w);
    maybe_done(w);
}

/* Reserve a connection slot; false when the process is at its limit. */
static bool take_slot(struct worker *w)
{
    int max = (int)w->cfg->limits.max_connections;
    int n = __atomic_load_n(&worker_nconns, __ATOMIC_RELAXED);

    while (n < max) {
        if (__atomic_compare_exchange_n(&worker_nconns, &n, n + 1, false, __ATOMIC_RELAXED,
                                        __ATOMIC_RELAXED))
            return true;
    }
    return false;
}

/* Connections taken per listener event. One, as nginx does by default: a
 * burst of new connections then interleaves with the work of the open ones
 * (level-triggered epoll reports the listener again next round), which
 * keeps the handshake latency tail short (S3 p99: 8.2 ms at 1, 11.0 at 64). */
#define ACCEPT_BATCH 1

static void listener_accept_cb(evutil_socket_t lfd, short what, void *arg)
{
    struct listener *l = arg;
    struct worker *w = l->w;

    for (int i = 0; i < ACCEPT_BATCH; i++) {
        if (!take_slot(w)) {
            pause_listeners(w);
            return;
        }
        struct sockaddr_storage ss;
        socklen_t len = sizeof(ss);
        int fd = accept4(lfd, (struct sockaddr *)&ss, &len, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            __atomic_sub_fetch(&worker_nconns, 1, __ATOMIC_RELAXED);
            if (errno == EMFILE || errno == ENFILE)
                pause_listeners(w);
            return;
        }
        w->stats.accepted++;
        conn_accept(l, fd, (struct sockaddr *)&ss, len);
    }
}

void worker_drain_all(void)
{
    __atomic_store_n(&drain_mark, 1, __ATOMIC_RELEASE);
}

bool worker_draining(const struct worker *w)
{
    return w->stopping || __atomic_load_n(&drain_mark, __ATOMIC_ACQUIRE);
}

static uint64_t splitmix64(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

void worker_request_id(struct worker *w, char out[33])
{
    static const char hex[] = "0123456789abcdef";
    uint64_t a = splitmix64(&w->rid_state), b = splitmix64(&w->rid_state);

    for (int i = 0; i < 16; i++) {
        out[i] = hex[(a >> (60 - 4 * i)) & 15];
        out[16 + i] = hex[(b >> (60 - 4 * i)) & 15];
    }
    out[32] = '\0';
}

static void wake_cb(evutil_socket_t fd, short what, void *arg);

/* A preview name no longer resolves to OLD: its idle connections there
 * would reach whatever now listens at that address. */
static void preview_moved(void *arg, const struct sockaddr_storage *old)
{
    upstream_preview_forget(arg, old);
}

int worker_init(struct worker *w, unsigned id, struct fg_config *cfg, struct tls_ctxset *tls,
                char *err, size_t errlen)
{
    memset(w, 0, sizeof(*w));
    w->wake_fd = -1;
    w->id = id;
    w->cfg = cfg_ref(cfg);
    w->tls = tls;
    if (getrandom(&w->rid_state, sizeof(w->rid_state), 0) != sizeof(w->rid_state))
        w->rid_state = (uint64_t)getpid() * 0x9e3779b97f4a7c15ULL + id;
    w->base = event_base_new();
    if (w->base == NULL) {
        snprintf(err, errlen, "event_base_new failed");
        return -1;
    }
    /* Other threads reach the worker only through this eventfd: libevent
     * runs without locks, each base touched by its own thread alone. */
    w->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (w->wake_fd < 0) {
        snprintf(err, errlen, "eventfd: %s", strerror(errno));
        return -1;
    }
    w->resume_ev = evtimer_new(w->base, resume_cb, w);
    w->wake_ev = event_new(w->base, w->wake_fd, EV_READ | EV_PERSIST, wake_cb, w);
    w->listeners = calloc(cfg->nhttps + cfg->nhttp + 1, sizeof(*w->listeners));
    if (w->resume_ev == NULL || w->wake_ev == NULL || w->listeners == NULL ||
        event_add(w->wake_ev, NULL) < 0) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    if (add_listeners(w, cfg->https, cfg->nhttps, LISTENER_HTTPS, err, errlen) < 0 ||
        add_listeners(w, cfg->http, cfg->nhttp, LISTENER_HTTP, err, errlen) < 0)
        return -1;
    if (upstream_pools_init(w, cfg) < 0) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    /* The resolver serves preview names, and a Redis address given as a
     * host name (never a blocking lookup on a worker). */
    bool need_resolver = cfg->previews.enabled ||
                         (cfg->rate_limit.enabled && rl_redis_host_is_name(&cfg->rate_limit.redis));
    if (need_resolver &&
        (w->resolver = resolver_new(w->base, &cfg->resolver, preview_moved, w, err, errlen)) == NULL)
        return -1;
    return ratelimit_worker_init(w, err, errlen);
}

void (*worker_exit_hook)(void);

static void *worker_main(void *arg)
{
    struct worker *w = arg;

    event_base_dispatch(w->base);
    if (worker_exit_hook)
        worker_exit_hook();
    return NULL;
}

int worker_start(struct worker *w)
{
    return pthread_create(&w->thread, NULL, worker_main, w) == 0 ? 0 : -1;
}

/* Graceful stop, on the worker's own thread: stop accepting, close idle
 * connections, and let the loop end when the last request finishes. */
static void stop(struct worker *w)
{
    w->stopping = true;
    event_del(w->resume_ev);
    for (size_t i = 0; i < w->nlisteners; i++) {
        event_del(w->listeners[i].ev);
        close(w->listeners[i].fd);
        w->listeners[i].fd = -1;
    }
    struct conn *next;
    for (struct conn *c = w->conns; c; c = next) {
        next = c->next;
        if (c->idle || c->state == CONN_PROXY_HEADER || c->state == CONN_LINGER ||
            (c->state == CONN_READ_HEAD && evbuffer_get_length(c->io->in) == 0))
            conn_close(c, false);
    }
    upstream_pools_close_idle(w);
    ratelimit_worker_stop(w);
    maybe_done(w);
}

static void wake_cb(evutil_socket_t fd, short what, void *arg)
{
    struct worker *w = arg;
    uint64_t n;

    while (read(fd, &n, sizeof(n)) > 0)
        ;
    if (__atomic_load_n(&w->break_asked, __ATOMIC_ACQUIRE))
        event_base_loopbreak(w->base);
    else if (__atomic_load_n(&w->stop_asked, __ATOMIC_ACQUIRE) && !w->stopping)
        stop(w);
}

static void wake(struct worker *w, int *flag)
{
    uint64_t one = 1;

    __atomic_store_n(flag, 1, __ATOMIC_RELEASE);
    if (write(w->wake_fd, &one, sizeof(one)) < 0 && errno != EAGAIN)
        log_error("worker %u: cannot wake it: %s", w->id, strerror(errno));
}

void worker_stop(struct worker *w)
{
    wake(w, &w->stop_asked);
}

void worker_break(struct worker *w)
{
    wake(w, &w->break_asked);
}

void worker_join(struct worker *w)
{
    pthread_join(w->thread, NULL);
}

void worker_free(struct worker *w)
{
    while (w->conns) {
        struct conn *c = w->conns;
        c->refs = 0;
        conn_close(c, false);
    }
    for (size_t i = 0; i < w->nlisteners; i++) {
        if (w->listeners[i].ev)
            event_free(w->listeners[i].ev);
        if (w->listeners[i].fd >= 0)
            close(w->listeners[i].fd);
    }
    free(w->listeners);
    upstream_pools_free(w);
    reqbuf_free_all(w);
    jwtauth_cache_free(w->jwt_cache);
    w->jwt_cache = NULL;
    ratelimit_worker_free(w); /* after the connections: their Redis calls are detached */
    resolver_free(w->resolver); /* after the connections and the Redis link: their lookups
                                 * are cancelled */
    w->resolver = NULL;
    if (w->resume_ev)
        event_free(w->resume_ev);
    if (w->wake_ev)
        event_free(w->wake_ev);
    if (w->wake_fd >= 0)
        close(w->wake_fd);
    if (w->base)
        event_base_free(w->base);
    cfg_unref(w->cfg);
}
