/*
 * rl_sentinel.h - a Redis Sentinel client for one worker's rate-limit link
 * (hiredis 0.14 has none), after https://redis.io/docs/reference/sentinel-clients/:
 *
 * - a query asks each Sentinel in turn, the last one that answered first,
 *   `SENTINEL get-master-addr-by-name NAME`, each within timeout_ms
 *   (connect, AUTH and answer); the first address wins;
 * - the connection that answered stays open, subscribed to +switch-master
 *   (the SUBSCRIBE is pipelined behind the query, so no switch announced
 *   after the answer is missed); one subscription at a time;
 * - when the subscription drops, or a query finds no Sentinel, a query runs
 *   again every RL_SENTINEL_RETRY_MS until a subscription stands.
 *
 * The caller confirms the address with ROLE on the node itself (a Sentinel
 * may lag) and asks again on a disconnect or a READONLY reply.
 *
 *   IDLE --ask--> ASKING --address--> SUBSCRIBED (a query may run again)
 *     ^             |  each Sentinel failed (NONE)       |
 *     +--retry timer+<--------- subscription lost -------+
 */
#ifndef FG_RL_SENTINEL_H
#define FG_RL_SENTINEL_H

#include <stdbool.h>

#include <event2/event.h>

#include "cfg.h"

#define RL_SENTINEL_RETRY_MS 1000

enum rl_sentinel_event {
    RL_SENTINEL_FOUND = 0,  /* a query's answer: a Sentinel named the primary */
    RL_SENTINEL_NONE = 1,   /* a query found no Sentinel that named it */
    RL_SENTINEL_SWITCH = 2, /* +switch-master: the Sentinels moved the primary */
};

/* EV with the primary's IP and PORT (FOUND, SWITCH); IP is NULL for NONE
 * and only valid during the call. */
typedef void rl_sentinel_fn(void *arg, enum rl_sentinel_event ev, const char *ip, int port);

struct rl_sentinel;
struct resolver;

/* A client for CFG's sentinels and master_name (CFG outlives it, or is
 * replaced by rl_sentinel_set_cfg), reporting to FN(ARG); Sentinel host
 * names are resolved with RS. Nothing is sent before rl_sentinel_ask.
 * NULL when out of memory. */
struct rl_sentinel *rl_sentinel_new(struct event_base *base, const struct fg_redis *cfg,
                                    struct resolver *rs, rl_sentinel_fn *fn, void *arg);

/* Start a query, unless one runs already (its answer will do). FN is
 * called later from the loop, never from here. */
void rl_sentinel_ask(struct rl_sentinel *s);

/* CFG connects to the same Sentinels as the group it replaces. */
void rl_sentinel_set_cfg(struct rl_sentinel *s, const struct fg_redis *cfg);

/* Is a subscription to +switch-master in place? (Any thread.) */
bool rl_sentinel_subscribed(const struct rl_sentinel *s);

/* Close every connection for good; FN is not called again. NULL is ignored. */
void rl_sentinel_stop(struct rl_sentinel *s);

/* Stop, then free. NULL is ignored. */
void rl_sentinel_free(struct rl_sentinel *s);

/* Parse a +switch-master message ("NAME OLDIP OLDPORT NEWIP NEWPORT") for
 * NAME into IP (room for IPLEN) and PORT. 0, or -1 when it is another
 * master's or malformed. */
int rl_sentinel_parse_switch(const char *msg, const char *name, char *ip, size_t iplen, int *port);

#endif
