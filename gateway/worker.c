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
#include "log.h"
#include "req.h"
#include "resolver.h"
#include "stage.h"
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

static void listener_free(struct listener *l)
{
    if (l->ev)
        event_free(l->ev);
    if (l->fd >= 0)
        close(l->fd);
    free(l);
}

static struct listener *listener_open(struct worker *w, const struct fg_sockaddr *a,
                                      enum listener_kind kind, char *err, size_t errlen)
{
    struct listener *l = calloc(1, sizeof(*l));

    if (l == NULL) {
        snprintf(err, errlen, "listen %s: out of memory", a->text);
        return NULL;
    }
    l->w = w;
    l->kind = kind;
    l->addr = *a;
    l->port = sockaddr_port(a);
    if ((l->fd = listen_socket(a, err, errlen)) < 0) {
        free(l);
        return NULL;
    }
    l->ev = event_new(w->base, l->fd, EV_READ | EV_PERSIST, listener_accept_cb, l);
    if (l->ev == NULL || event_add(l->ev, NULL) < 0) {
        snprintf(err, errlen, "listen %s: event setup failed", a->text);
        listener_free(l);
        return NULL;
    }
    return l;
}

static bool same_addr(const struct fg_sockaddr *a, const struct fg_sockaddr *b)
{
    return a->len == b->len && memcmp(&a->ss, &b->ss, a->len) == 0;
}

/* The listener bound to A for KIND among W's, or NULL. */
static struct listener **find_listener(struct worker *w, const struct fg_sockaddr *a,
                                       enum listener_kind kind)
{
    for (size_t i = 0; i < w->nlisteners; i++)
        if (w->listeners[i] && w->listeners[i]->kind == kind && same_addr(&w->listeners[i]->addr, a))
            return &w->listeners[i];
    return NULL;
}

/*
 * Make W's listeners those of CFG: a listener still listed is kept as it is
 * (closing a SO_REUSEPORT socket would drop the connections in its accept
 * queue), a new one is opened, a removed one closed. At start (STRICT) a
 * socket that cannot be opened is an error; on a reload it is logged and
 * the rest applies.
 */
static int set_listeners(struct worker *w, const struct fg_config *cfg, bool strict, char *err,
                         size_t errlen)
{
    size_t n = cfg->nhttps + cfg->nhttp;
    struct listener **next = calloc(n ? n : 1, sizeof(*next));
    size_t k = 0;

    if (next == NULL) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    for (size_t i = 0; i < n; i++) {
        bool https = i < cfg->nhttps;
        const struct fg_sockaddr *a = https ? &cfg->https[i] : &cfg->http[i - cfg->nhttps];
        enum listener_kind kind = https ? LISTENER_HTTPS : LISTENER_HTTP;
        struct listener **old = find_listener(w, a, kind);
        if (old != NULL) {
            next[k++] = *old;
            *old = NULL;
        } else if ((next[k] = listener_open(w, a, kind, err, errlen)) != NULL) {
            k++;
        } else if (strict) {
            while (k > 0)
                listener_free(next[--k]);
            free(next);
            return -1;
        } else {
            log_error("reload: %s", err);
        }
    }
    for (size_t i = 0; i < w->nlisteners; i++)
        if (w->listeners[i])
            listener_free(w->listeners[i]); /* removed from the configuration */
    free(w->listeners);
    w->listeners = next;
    w->nlisteners = k;
    return 0;
}

static void pause_listeners(struct worker *w)
{
    for (size_t i = 0; i < w->nlisteners; i++) {
        if (!w->listeners[i]->paused) {
            event_del(w->listeners[i]->ev);
            w->listeners[i]->paused = true;
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
        if (w->listeners[i]->paused) {
            event_add(w->listeners[i]->ev, NULL);
            w->listeners[i]->paused = false;
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
        metrics_bump(&w->stats.accepted);
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

/* A name no longer resolves to OLD: idle upstream connections there would
 * reach whatever now listens at that address. */
static void name_moved(void *arg, const struct sockaddr_storage *old)
{
    upstream_preview_forget(arg, old);
}

/* Map S's routes and upstreams to W's rows by label, adding the rows new
 * labels need (on W's thread: the rows' only writer). */
static int snap_map_rows(struct worker *w, struct wsnap *s)
{
    const struct fg_config *cfg = s->cfg;
    long row;

    s->route_rows = calloc(cfg->nroutes + 2, sizeof(*s->route_rows));
    s->upstream_rows = calloc(cfg->nupstreams + 1, sizeof(*s->upstream_rows));
    if (s->route_rows == NULL || s->upstream_rows == NULL)
        return -1;
    for (size_t i = 0; i < cfg->nroutes; i++) {
        if ((row = metrics_rows_get(&w->routes, cfg->routes[i].label)) < 0)
            return -1;
        s->route_rows[i] = (uint32_t)row;
    }
    /* The preview row exists only once previews are configured. */
    const char *preview = cfg->previews.enabled ? WORKER_ROUTE_PREVIEW : WORKER_ROUTE_NONE;
    if ((row = metrics_rows_get(&w->routes, preview)) < 0)
        return -1;
    s->route_rows[cfg->nroutes] = (uint32_t)row;
    if ((row = metrics_rows_get(&w->routes, WORKER_ROUTE_NONE)) < 0)
        return -1;
    s->route_rows[cfg->nroutes + 1] = (uint32_t)row;
    for (size_t i = 0; i < cfg->nupstreams; i++) {
        if ((row = metrics_rows_get(&w->upstream_errors, cfg->upstreams[i].name)) < 0)
            return -1;
        s->upstream_rows[i] = (uint32_t)row;
    }
    if (cfg->previews.enabled &&
        (row = metrics_rows_get(&w->upstream_errors, WORKER_UPSTREAM_PREVIEW)) < 0)
        return -1;
    s->upstream_rows[cfg->nupstreams] = cfg->previews.enabled ? (uint32_t)row : UINT32_MAX;
    return 0;
}

size_t worker_route_row(const struct wsnap *s, const struct fg_route *rt)
{
    const struct fg_config *cfg;

    if (s == NULL || s->route_rows == NULL)
        return SIZE_MAX;
    cfg = s->cfg;
    if (rt == NULL)
        return s->route_rows[cfg->nroutes + 1];
    if (rt == &cfg->preview_route)
        return s->route_rows[cfg->nroutes];
    if (rt >= cfg->routes && rt < cfg->routes + cfg->nroutes)
        return s->route_rows[rt - cfg->routes];
    return SIZE_MAX;
}

size_t worker_upstream_row(const struct wsnap *s, const struct upstream_pool *pool)
{
    if (s == NULL || s->upstream_rows == NULL || pool == NULL)
        return SIZE_MAX;
    if (pool->dyn != NULL)
        return s->upstream_rows[s->cfg->nupstreams];
    if (pool->u->index < s->cfg->nupstreams)
        return s->upstream_rows[pool->u->index];
    return SIZE_MAX;
}

static struct wsnap *snap_new(struct worker *w, struct fg_config *cfg, struct tls_ctxset *tls)
{
    struct wsnap *s = calloc(1, sizeof(*s));

    if (s == NULL || (s->pools = upstream_pools_new(w, cfg)) == NULL) {
        free(s);
        return NULL;
    }
    s->cfg = cfg_ref(cfg);
    s->tls = tls_ref(tls);
    s->npools = cfg->nupstreams;
    s->refs = 1;
    if (snap_map_rows(w, s) < 0) {
        worker_snap_release(w, s);
        return NULL;
    }
    return s;
}

struct wsnap *worker_snap_hold(struct worker *w)
{
    w->snap->refs++;
    return w->snap;
}

void worker_snap_release(struct worker *w, struct wsnap *s)
{
    if (s == NULL || --s->refs > 0)
        return;
    upstream_pools_destroy(s->pools, s->npools);
    tls_free(s->tls);
    cfg_unref(s->cfg);
    free(s->route_rows);
    free(s->upstream_rows);
    free(s);
}

static bool same_strv(char **a, size_t na, char **b, size_t nb)
{
    if (na != nb)
        return false;
    for (size_t i = 0; i < na; i++)
        if (strcmp(a[i], b[i]) != 0)
            return false;
    return true;
}

static bool same_resolver(const struct fg_resolver *a, const struct fg_resolver *b)
{
    const char *ha = a->hosts_file ? a->hosts_file : "", *hb = b->hosts_file ? b->hosts_file : "";

    return strcmp(ha, hb) == 0 &&
           same_strv(a->nameservers, a->nnameservers, b->nameservers, b->nnameservers);
}

/* The resolver serves preview names, upstream servers given by name, and a
 * Redis address given as a host name (never a blocking lookup on a worker).
 * A reload whose resolver group changed makes a new one; the old one stays
 * (unused for new lookups) until the worker ends, since a request or the
 * Redis link may still wait on it. */
static int set_resolver(struct worker *w, struct fg_config *cfg, char *err, size_t errlen)
{
    bool need = stages_need_resolver(w, cfg);

    /* Compared with what the resolver was made from, not with the snapshot
     * before this one: a snapshot without previews in between made none. */
    if (!need || (w->resolver && same_resolver(&w->resolver_cfg->resolver, &cfg->resolver)))
        return 0;
    struct resolver *rs = resolver_new(w->base, &cfg->resolver, name_moved, w, err, errlen);
    if (rs == NULL)
        return -1;
    if (w->resolver) {
        struct resolver **v =
            realloc(w->old_resolvers, (w->nold_resolvers + 1) * sizeof(*w->old_resolvers));
        if (v == NULL) {
            resolver_free(rs);
            snprintf(err, errlen, "out of memory");
            return -1;
        }
        w->old_resolvers = v;
        w->old_resolvers[w->nold_resolvers++] = w->resolver;
    }
    w->resolver = rs;
    cfg_unref(w->resolver_cfg);
    w->resolver_cfg = cfg_ref(cfg);
    return 0;
}

int worker_init(struct worker *w, unsigned id, struct fg_config *cfg, struct tls_ctxset *tls,
                char *err, size_t errlen)
{
    memset(w, 0, sizeof(*w));
    w->wake_fd = -1;
    w->id = id;
    w->stages = stage_table;
    metrics_rows_init(&w->routes, METRICS_RT__WIDTH);
    metrics_rows_init(&w->upstream_errors, UP_FAIL__COUNT);
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
    w->snap = snap_new(w, cfg, tls);
    if (w->resume_ev == NULL || w->wake_ev == NULL || w->snap == NULL ||
        event_add(w->wake_ev, NULL) < 0) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    w->cfg = cfg;
    w->generation = w->snap->generation = 1;
    if (set_listeners(w, cfg, true, err, errlen) < 0 || set_resolver(w, cfg, err, errlen) < 0)
        return -1;
    return stages_worker_init(w, cfg, err, errlen);
}

int worker_reload(struct worker *w, struct fg_config *cfg, struct tls_ctxset *tls,
                  uint64_t generation)
{
    struct wsnap *s = calloc(1, sizeof(*s));
    uint64_t one = 1;

    if (s == NULL)
        return -1;
    s->cfg = cfg_ref(cfg);
    s->tls = tls_ref(tls);
    s->refs = 1;
    s->generation = generation;
    /* Pools are made on the worker's thread (apply_reload). */
    struct wsnap *older = __atomic_exchange_n(&w->next_snap, s, __ATOMIC_ACQ_REL);
    if (older != NULL) {
        tls_free(older->tls);
        cfg_unref(older->cfg);
        free(older);
    }
    if (write(w->wake_fd, &one, sizeof(one)) < 0 && errno != EAGAIN)
        log_error("worker %u: cannot wake it: %s", w->id, strerror(errno));
    return 0;
}

/*
 * On the worker's thread: take the snapshot main handed over. Listeners are
 * diffed, the resolver and the Redis link are kept unless their settings
 * changed, the old snapshot's pools stop pooling; connections move to the
 * new snapshot at their next request, and the old one goes with the last.
 */
static void apply_reload(struct worker *w)
{
    struct wsnap *s = __atomic_exchange_n(&w->next_snap, NULL, __ATOMIC_ACQ_REL);
    char err[512];

    if (s == NULL || w->stopping)
        goto drop;
    if ((s->pools = upstream_pools_new(w, s->cfg)) == NULL) {
        log_error("worker %u: reload: out of memory; the old configuration stays", w->id);
        goto drop;
    }
    s->npools = s->cfg->nupstreams;
    if (snap_map_rows(w, s) < 0) {
        log_error("worker %u: reload: out of memory; the old configuration stays", w->id);
        goto drop;
    }
    if (set_resolver(w, s->cfg, err, sizeof(err)) < 0 ||
        stages_worker_reload(w, s->cfg, err, sizeof(err)) < 0) {
        log_error("worker %u: reload: %s; the old configuration stays", w->id, err);
        goto drop;
    }
    set_listeners(w, s->cfg, false, err, sizeof(err));
    struct wsnap *old = w->snap;
    w->snap = s;
    w->cfg = s->cfg;
    upstream_pools_retire(old->pools, old->npools);
    worker_snap_release(w, old);
    __atomic_store_n(&w->generation, s->generation, __ATOMIC_RELEASE);
    resume_cb(-1, 0, w); /* max_connections may have changed */
    return;
drop:
    if (s != NULL) {
        s->refs = 1;
        worker_snap_release(w, s);
    }
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
    for (size_t i = 0; i < w->nlisteners; i++)
        listener_free(w->listeners[i]);
    w->nlisteners = 0;
    struct conn *next;
    for (struct conn *c = w->conns; c; c = next) {
        next = c->next;
        if (c->state == CONN_IDLE || c->state == CONN_PROXY_HEADER || c->state == CONN_LINGER ||
            (c->state == CONN_READ_HEAD && evbuffer_get_length(c->io->in) == 0))
            conn_close(c, false);
        else if (c->state == CONN_H2)
            h2_drain(c->h2); /* GOAWAY; streams in flight finish */
    }
    upstream_pools_close_idle(w);
    stages_worker_stop(w);
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
    else if (__atomic_load_n(&w->next_snap, __ATOMIC_ACQUIRE) != NULL)
        apply_reload(w);
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
    w->tearing_down = true;
    while (w->conns) {
        struct conn *c = w->conns;
        c->refs = 0;
        conn_close(c, false);
    }
    for (size_t i = 0; i < w->nlisteners; i++)
        listener_free(w->listeners[i]);
    free(w->listeners);
    w->listeners = NULL;
    upstream_pools_free(w);
    req_free_all(w);
    stages_worker_free(w); /* after the connections: their Redis calls are detached */
    /* Upstream names' lookups end before their resolver goes. */
    if (w->snap != NULL)
        upstream_pools_retire(w->snap->pools, w->snap->npools);
    resolver_free(w->resolver); /* after the connections and the Redis link: their lookups
                                 * are cancelled */
    w->resolver = NULL;
    for (size_t i = 0; i < w->nold_resolvers; i++)
        resolver_free(w->old_resolvers[i]);
    free(w->old_resolvers);
    w->old_resolvers = NULL;
    cfg_unref(w->resolver_cfg);
    w->resolver_cfg = NULL;
    if (w->resume_ev)
        event_free(w->resume_ev);
    if (w->wake_ev)
        event_free(w->wake_ev);
    if (w->wake_fd >= 0)
        close(w->wake_fd);
    worker_snap_release(w, w->snap);
    w->snap = NULL;
    struct wsnap *pending = __atomic_exchange_n(&w->next_snap, NULL, __ATOMIC_ACQ_REL);
    if (pending != NULL) {
        pending->refs = 1;
        worker_snap_release(w, pending);
    }
    if (w->base)
        event_base_free(w->base);
    metrics_rows_free(&w->routes); /* main's thread: no scrape runs meanwhile */
    metrics_rows_free(&w->upstream_errors);
}
