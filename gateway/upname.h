/*
 * upname.h - upstream servers given by name ("api.svc.cluster.local:8080").
 *
 * Each worker resolves each name through its own resolver (hosts file, then
 * DNS; never blocking) and keeps every address of the answer (up to
 * UPSTREAM_NAME_SLOTS) in the name's slots of the pool: each address is a
 * server of its own for round-robin, keep-alive and ejection. A timer per
 * name looks it up again when its answer goes stale (its TTL within the
 * resolver's bounds), while requests keep using the addresses they have:
 * once a name resolved, no request waits on DNS.
 *
 *   name: PENDING --answer--> OK (slots filled) | NOT_FOUND (slots emptied)
 *                               | FAILED (slots kept as they were)
 *         each answer arms the timer for its expiry, which looks it up again
 *
 * A request whose upstream has no address yet waits for the first answer
 * (upname_wait, the route stage's last check); with none to come (not
 * found, no answer), it gets a 502 whose log error says so, counted as kind
 * "dns".
 */
#ifndef FG_UPNAME_H
#define FG_UPNAME_H

#include "stage.h"
#include "upstream.h"

struct worker;

/* Names of P's upstream, their first lookup scheduled on W's loop. 0, or -1
 * when out of memory. */
int upname_pool_init(struct worker *w, struct upstream_pool *p);

/* No more lookups for P (retired or draining): timers and waits stopped,
 * the addresses kept. Idempotent. */
void upname_pool_stop(struct upstream_pool *p);

/* Stopped, then freed. */
void upname_pool_free(struct upstream_pool *p);

/* R's route goes to its pool: on at once when the pool has an address
 * (always, without names); otherwise wait for a name's first answer
 * (STAGE_WAIT, RESUME called later) or answer 502. A stage's run. */
enum stage_verdict upname_wait(struct req *r, stage_resume_fn resume);

/* The wait ends with the request: a stage's cancel. */
void upname_cancel(struct req *r);

/* Does CFG give a server by name (the worker then needs its resolver)? */
bool upname_needs_resolver(const struct fg_config *cfg);

#endif
