/*
 * admin.h - the plain admin listener on the main thread: /healthz, /readyz,
 * /metrics. It never serves client traffic and never proxies.
 */
#ifndef FG_ADMIN_H
#define FG_ADMIN_H

#include <event2/event.h>

#include "cfg.h"
#include "worker.h"

struct admin;
struct tls_ctxset;

/* What main tells the admin about the configuration in force. Owned by
 * main and read by the admin on main's thread only. */
struct admin_state {
    const struct fg_config *cfg;       /* in force */
    const struct tls_ctxset *tls;      /* its certificates; NULL without https */
    uint64_t generation;               /* 1 at start, +1 per applied reload */
    uint64_t reloads_ok, reloads_failed;
    double last_reload_ok;             /* seconds since the epoch (start counts) */
};

/* Listen on ADDR. NULL with ERR when it cannot. */
struct admin *admin_start(struct event_base *base, const struct fg_sockaddr *addr,
                          const struct admin_state *st, struct worker *workers, unsigned nworkers,
                          char *err, size_t errlen);
void admin_stop(struct admin *a);

#endif
