/*
 * health.h - active health checks of upstream servers (an upstream's
 * health_check group).
 *
 * One checker for the whole process, on main's loop: each server of an
 * upstream with a health_check gets one plain HTTP/1.1 GET every interval,
 * whatever the number of workers. Its verdict is a flag in the snapshot
 * (struct fg_server_health) that every worker's server choice reads:
 *
 *   HEALTHY --fall failed checks in a row--> UNHEALTHY
 *      ^                                         |
 *      +-------rise passed checks in a row-------+
 *
 * A pass is a 2xx status line; refused, timeout, any other status, bytes
 * that are not a status line, or a close before one are fails. Servers
 * start healthy.
 */
#ifndef FG_HEALTH_H
#define FG_HEALTH_H

#include <stdbool.h>
#include <stddef.h>

#include <event2/buffer.h>
#include <event2/event.h>

#include "cfg.h"

/* How one check ended: the result label of flowgate_upstream_health_checks_total. */
enum health_result {
    HEALTH_PASS = 0,         /* a 2xx status line */
    HEALTH_STATUS = 1,       /* any other status */
    HEALTH_TIMEOUT = 2,      /* no status line within timeout_ms */
    HEALTH_REFUSED = 3,      /* connect refused */
    HEALTH_BAD_RESPONSE = 4, /* not a status line, or closed before one */
    HEALTH_ERROR = 5,        /* any other socket error, or no memory */
    HEALTH__COUNT = 6,
};
const char *health_result_str(enum health_result r);

struct health;

/* The checker, on BASE (main's loop). NULL when out of memory. */
struct health *health_new(struct event_base *base);

/*
 * Check the servers of CFG from now on (at start, and at every reload
 * before the workers get CFG): checks in flight are dropped and every
 * server is checked at once. A server still listed under the same upstream
 * keeps its state (healthy or not, its run of results, its counters), which
 * is written into CFG's flags. 0, or -1 when out of memory (the previous
 * configuration's checks then go on).
 */
int health_apply(struct health *h, struct fg_config *cfg);

void health_free(struct health *h); /* NULL is fine */

/* flowgate_upstream_server_healthy and flowgate_upstream_health_checks_total,
 * with HELP and TYPE, for the configuration last applied (nothing when no
 * upstream has a health_check). Main's thread. */
void health_metrics(const struct health *h, struct evbuffer *out);

/* The status line LINE (LEN bytes, without its LF) of a check's response:
 * HEALTH_PASS for 2xx, HEALTH_STATUS for another status, HEALTH_BAD_RESPONSE
 * when it is no status line (RFC 9112 section 4). */
enum health_result health_parse_status(const char *line, size_t len);

/*
 * May a worker send traffic to server I of U? Yes without a health_check,
 * when the server is healthy, and when no server of U is (Envoy's panic
 * mode: every server gets traffic rather than none). Relaxed loads: the
 * checker's verdict reaches a worker a moment late at worst.
 */
static inline bool health_usable(const struct fg_upstream *u, size_t i)
{
    if (u->health == NULL || !__atomic_load_n(&u->health[i].down, __ATOMIC_RELAXED))
        return true;
    return __atomic_load_n(&u->health_ndown, __ATOMIC_RELAXED) >= u->nservers;
}

#endif
