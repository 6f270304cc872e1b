/*
 * admin.h - the plain admin listener on the main thread: /healthz, /readyz,
 * /metrics, and the status page (/ and /status.json). It never serves client
 * traffic and never proxies.
 */
#ifndef FG_ADMIN_H
#define FG_ADMIN_H

#include <event2/event.h>

#include "cfg.h"
#include "worker.h"

struct admin;
struct tls_ctxset;
struct health;

/* What main tells the admin about the configuration in force. Owned by
 * main and read by the admin on main's thread only. */
struct admin_state {
    const struct fg_config *cfg;       /* in force */
    const struct tls_ctxset *tls;      /* its certificates; NULL without https */
    uint64_t generation;               /* 1 at start, +1 per applied reload */
    uint64_t reloads_ok, reloads_failed;
    double last_reload_ok;             /* seconds since the epoch (start counts) */
    bool last_reload_failed;           /* the latest reload kept the configuration in force */
    double started;                    /* the process's start, seconds since the epoch */
    const struct health *health;       /* active health checks (health_metrics) */
};

/* Listen on ADDR. NULL with ERR when it cannot. */
struct admin *admin_start(struct event_base *base, const struct fg_sockaddr *addr,
                          const struct admin_state *st, struct worker *workers, unsigned nworkers,
                          char *err, size_t errlen);

/*
 * What /readyz reports. A stop only moves forward:
 *
 *   SERVING --SIGTERM--> DRAINING --shutdown_delay_ms--> STOPPING --exit
 *   (200)                (503, listeners accept)        (503, listeners closed)
 */
enum admin_phase {
    ADMIN_SERVING = 0,  /* ready */
    ADMIN_DRAINING = 1, /* stopping: still accepting while a load balancer lets go */
    ADMIN_STOPPING = 2, /* listeners closed, requests in flight finishing */
};

void admin_set_phase(struct admin *a, enum admin_phase p); /* A may be NULL (admin off) */
void admin_stop(struct admin *a); /* closes the listener and any admin connection still open */

#endif
