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

struct admin *admin_start(struct event_base *base, const struct fg_config *cfg,
                          struct worker *workers, unsigned nworkers, char *err, size_t errlen);
void admin_set_phase(struct admin *a, enum admin_phase p); /* A may be NULL (admin off) */
void admin_stop(struct admin *a); /* closes the listener and any admin connection still open */

#endif
