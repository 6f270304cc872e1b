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

struct admin *admin_start(struct event_base *base, const struct fg_config *cfg,
                          struct worker *workers, unsigned nworkers, char *err, size_t errlen);
void admin_stop(struct admin *a);

#endif
