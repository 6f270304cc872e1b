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
 *
 * A server given by name is checked at every address the workers hold for
 * it (Envoy's STRICT_DNS clusters): the checker learns them from the
 * workers' pools, checks each as a server of its own, and publishes each
 * verdict by address (struct fg_addr_health). An address the name newly
 * resolves to starts healthy and is checked at once; one that no worker
 * holds any more is forgotten.
 */
#ifndef FG_HEALTH_H
#define FG_HEALTH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include <event2/buffer.h>
#include <event2/event.h>

#include "cfg.h"

struct worker;

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

/* The checker, on BASE (main's loop), learning the addresses of names from
 * the NWORKERS WORKERS (which must outlive it). NULL when out of memory. */
struct health *health_new(struct event_base *base, const struct worker *workers, unsigned nworkers);

/*
 * Check the servers of CFG from now on (at start, and at every reload
 * before the workers get CFG): checks in flight are dropped and every
 * server is checked at once. A server still listed under the same upstream
 * keeps its state (healthy or not, its run of results, its counters), which
 * is written into CFG's flags; so does every address checked of a name
 * still listed. GENERATION is the one the workers will run CFG as: the
 * addresses of names are read from the workers that run it. 0, or -1 when
 * out of memory (the previous configuration's checks then go on, its names
 * no longer followed).
 */
int health_apply(struct health *h, struct fg_config *cfg, uint64_t generation);

void health_free(struct health *h); /* NULL is fine */

/* flowgate_upstream_server_healthy and flowgate_upstream_health_checks_total,
 * with HELP and TYPE, for the configuration last applied (nothing when no
 * upstream has a health_check); an address of a name has its own samples,
 * with an address label. Main's thread. */
void health_metrics(const struct health *h, struct evbuffer *out);

/* The status line LINE (LEN bytes, without its LF) of a check's response:
 * HEALTH_PASS for 2xx, HEALTH_STATUS for another status, HEALTH_BAD_RESPONSE
 * when it is no status line (RFC 9112 section 4). */
enum health_result health_parse_status(const char *line, size_t len);

/* Is no server nor address of U healthy (Envoy's panic mode: every one
 * then gets traffic rather than none)? */
static inline bool health_panic(const struct fg_upstream *u)
{
    return __atomic_load_n(&u->health_ndown, __ATOMIC_RELAXED) >=
           __atomic_load_n(&u->health_nchecked, __ATOMIC_RELAXED);
}

/*
 * May a worker send traffic to server I of U (given as an address)? Yes
 * without a health_check, when the server is healthy, and in panic mode.
 * Relaxed loads: the checker's verdict reaches a worker a moment late at
 * worst.
 */
static inline bool health_usable(const struct fg_upstream *u, size_t i)
{
    if (u->health == NULL || !__atomic_load_n(&u->health[i].down, __ATOMIC_RELAXED))
        return true;
    return health_panic(u);
}

/* Entry E now holds address SS (the port aside; its verdict healthy), or
 * nothing when SS is NULL. The checker's thread only. */
void health_addr_set(struct fg_addr_health *e, const struct sockaddr_storage *ss);

/* Is SS marked unhealthy in the FG_NAME_HEALTH_ADDRS entries at TABLE? An
 * address not there is not (not checked yet). Any thread. */
bool health_addr_down(const struct fg_addr_health *table, const struct sockaddr_storage *ss);

/* May a worker send traffic to address SS of U's server given by name
 * NAME (its index among U's names)? As health_usable; nothing to look up
 * while nothing of U is unhealthy, the common case. */
static inline bool health_addr_usable(const struct fg_upstream *u, size_t name,
                                      const struct sockaddr_storage *ss)
{
    if (u->name_health == NULL || __atomic_load_n(&u->health_ndown, __ATOMIC_RELAXED) == 0 ||
        !health_addr_down(&u->name_health[name * FG_NAME_HEALTH_ADDRS], ss))
        return true;
    return health_panic(u);
}

#endif
