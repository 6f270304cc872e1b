/*
 * worker.h - one event-loop thread: its event base, its own SO_REUSEPORT
 * listeners, its upstream pools and its counters. Nothing here is shared
 * between workers except the immutable configuration snapshot, the TLS
 * contexts, the process-wide connection count and the drain mark.
 */
#ifndef FG_WORKER_H
#define FG_WORKER_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include <event2/event.h>

#include "cfg.h"
#include "freelist.h"
#include "metrics.h"
#include "tls.h"
#include "h2.h"

struct upstream_pool;
struct upstream_dyn;
struct resolver;
struct conn;
struct stage;

#define WORKER_STAGES_MAX 8 /* entries of the stage table (stage.c) */

enum listener_kind {
    LISTENER_HTTPS = 0, /* TLS, full proxy */
    LISTENER_HTTP = 1,  /* plain, redirect only */
};

struct listener {
    struct worker *w;
    int fd;
    enum listener_kind kind;
    struct event *ev;        /* EV_READ|EV_PERSIST on the listening socket */
    bool paused;             /* removed from the loop at max_connections */
    int port;                /* the local port, for Host checks and redirects */
    struct fg_sockaddr addr; /* what it is bound to: a reload keeps it when still listed */
};

/*
 * What a worker runs one configuration snapshot with: the snapshot, its TLS
 * contexts and its upstream pools. The worker holds the current one; each
 * connection holds the one its request started on, and takes the current
 * one at its next request. A replaced snapshot goes when its last
 * connection does (every access is on the worker's thread: no lock).
 */
struct wsnap {
    struct fg_config *cfg;          /* ref held */
    struct tls_ctxset *tls;         /* builder ref held; NULL without https listeners */
    struct upstream_pool *pools;    /* one per cfg->upstreams (upstream_pools_new) */
    size_t npools;
    unsigned refs;                  /* the worker while current, and each connection on it */
    uint64_t generation;            /* main's count of applied configurations */
    /* Where this snapshot counts, in the worker's rows (metrics.h): each
     * cfg->routes entry, then the preview route, then requests with no route;
     * each cfg->upstreams entry, then preview upstreams. */
    uint32_t *route_rows;           /* cfg->nroutes + 2 */
    uint32_t *upstream_rows;        /* cfg->nupstreams + 1 */
};

/* Label values of the rows that are no configured route or upstream: a
 * route label always holds the route's path ('/'), so neither can clash
 * with one; an upstream named "preview" shares its row with the previews. */
#define WORKER_ROUTE_PREVIEW "preview"
#define WORKER_ROUTE_NONE "none"
#define WORKER_UPSTREAM_PREVIEW "preview"

/* The worker's own counters and gauges: written by its thread alone
 * (metrics_bump), summed by the admin thread (metrics_read). */
struct worker_stats {
    uint64_t requests;             /* finished requests */
    uint64_t accepted;             /* client connections */
    uint64_t tls_handshakes;       /* completed */
    uint64_t tls_failures;         /* connections that ended during their handshake */
    uint64_t tunnels_open;         /* gauge: WebSocket tunnels relaying now */
    uint64_t preview_dns_lookups;  /* preview upstream names looked up (cached or not) */
    uint64_t preview_dns_failures; /* ... that failed (timeout, SERVFAIL): answered 502 */
    uint64_t h2_connections;       /* connections that chose HTTP/2 by ALPN */
    uint64_t h2_open;              /* gauge: HTTP/2 connections open now */
    uint64_t h2_streams;           /* HTTP/2 streams that became requests */
    uint64_t h2_refused;           /* streams reset before becoming requests (malformed) */
    uint64_t h2_goaway[H2_GOAWAY__COUNT]; /* GOAWAYs sent, by enum h2_goaway */
};

struct worker {
    unsigned id;
    pthread_t thread;
    struct event_base *base;
    struct wsnap *snap;             /* in force for new connections and requests */
    struct fg_config *cfg;          /* snap->cfg */
    struct listener **listeners;    /* each allocated alone: a reload closes or adds some */
    size_t nlisteners;
    struct wsnap *next_snap;        /* (atomic) handed over by main, taken in wake_cb */
    uint64_t generation;            /* (atomic) of the snapshot in force here */
    struct fg_config *resolver_cfg; /* the snapshot the resolver was made from (ref held) */
    struct resolver **old_resolvers; /* replaced by reloads, kept for their last lookups */
    size_t nold_resolvers;
    struct upstream_dyn *dyn;       /* preview pools by address; created on first use */
    struct resolver *resolver;      /* preview and upstream server names; NULL without */
    struct event *resume_ev;        /* re-arms paused listeners */
    int wake_fd;                    /* eventfd: another thread asks (stop_asked, break_asked) */
    struct event *wake_ev;          /* reads wake_fd */
    int stop_asked, break_asked;    /* atomic */
    struct conn *conns;             /* every open client connection (list) */
    struct freelist reqbufs;        /* idle request buffers (req.c) */
    uint64_t rid_state;             /* request id generator state */
    uint64_t conn_serial;
    bool stopping;
    bool tearing_down;              /* worker_free: what is left is cut by the shutdown timeout */
    struct worker_stats stats;
    struct metrics_rows routes;     /* by route label: METRICS_RT__WIDTH counters */
    struct metrics_rows upstream_errors; /* by upstream name: UP_FAIL__COUNT counters */
    const struct stage *const *stages;   /* the stage table (stage_table; tests set their own) */
    void *stage_data[WORKER_STAGES_MAX]; /* each stage's own (stage_worker_data) */
};

/* Called on a worker's thread when its loop has ended (main sets it). */
extern void (*worker_exit_hook)(void);

/* Process-wide number of open client connections (max_connections). */
extern int worker_nconns;

/* Create the worker's base and bind its listeners (before threads start).
 * 0 or -1 with ERR. */
int worker_init(struct worker *w, unsigned id, struct fg_config *cfg, struct tls_ctxset *tls,
                char *err, size_t errlen);

/* Thread-safe (main): hand the worker a new snapshot CFG with its TLS set
 * (references are taken here). The worker swaps at its next loop round;
 * when it has not taken an earlier one yet, the newer replaces it. */
int worker_reload(struct worker *w, struct fg_config *cfg, struct tls_ctxset *tls,
                  uint64_t generation);

/* A connection takes (hold) and leaves (release) a snapshot. */
struct wsnap *worker_snap_hold(struct worker *w);
void worker_snap_release(struct worker *w, struct wsnap *s);
int worker_start(struct worker *w);      /* spawn the thread */
/* Thread-safe, for every worker at once and for good (SIGTERM): from now on
 * each HTTP/1.1 response says Connection: close and ends its connection, so
 * clients move to other instances while the listeners still accept. */
void worker_drain_all(void);
/* Does W end each connection after its current response (draining, or
 * stopping with its listeners closed)? */
bool worker_draining(const struct worker *w);
void worker_stop(struct worker *w);      /* thread-safe: stop accepting, drain, exit loop */
void worker_break(struct worker *w);     /* thread-safe: end the loop now (shutdown timeout) */
void worker_join(struct worker *w);
void worker_free(struct worker *w);

/* A connection closed: account for it and re-arm paused listeners. */
void worker_conn_closed(struct worker *w);

/* The rows (W's routes and upstream_errors) where a request on snapshot S
 * counts: for its route RT (NULL: none) and the upstream of POOL. Rows of
 * an empty table are never counted into (metrics_row). */
size_t worker_route_row(const struct wsnap *s, const struct fg_route *rt);
size_t worker_upstream_row(const struct wsnap *s, const struct upstream_pool *pool);

/* A fresh X-Request-Id (32 lowercase hex chars + NUL) into OUT[33]. */
void worker_request_id(struct worker *w, char out[33]);

#endif
