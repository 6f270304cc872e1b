/*
 * rl_redis.h - one worker's asynchronous link to Redis (hiredis 0.14 on the
 * worker's event base) for the rate-limit script.
 *
 * The link connects, authenticates, selects the database and loads the
 * script (SCRIPT LOAD), then runs calls by EVALSHA, pipelined on the one
 * connection. hiredis 0.14 has no command timeout, so each call carries its
 * own deadline timer. States:
 *
 *   DOWN --retry timer--> CONNECTING --AUTH/SELECT/SCRIPT LOAD ok--> UP
 *    ^                        |                                     |
 *    +--- failure, deadline --+------ disconnect, call deadline ----+
 *
 * Leaving UP or CONNECTING frees the connection and arms the retry timer
 * (100 ms, doubling to 5 s; back to 100 ms after a call succeeds). Calls are
 * only accepted while UP: otherwise the caller applies its failure mode at
 * once instead of waiting.
 */
#ifndef FG_RL_REDIS_H
#define FG_RL_REDIS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <event2/event.h>
#include <hiredis/hiredis.h>

#include "cfg.h"

enum rl_link_state {
    RL_LINK_DOWN = 0,       /* no connection; the retry timer is armed */
    RL_LINK_CONNECTING = 1, /* connected or connecting, handshake pending */
    RL_LINK_UP = 2,         /* calls accepted */
};
const char *rl_link_state_str(enum rl_link_state st);

enum rl_call_status {
    RL_CALL_OK = 0,      /* a reply (which may still be a Redis error) */
    RL_CALL_ERROR = 1,   /* the connection failed before a reply */
    RL_CALL_TIMEOUT = 2, /* no reply within timeout_ms */
};
const char *rl_call_status_str(enum rl_call_status st);

/* Latency buckets (upper bounds in microseconds) of the call histogram. */
#define RL_LAT_BUCKETS 9
extern const uint32_t rl_lat_bounds_us[RL_LAT_BUCKETS];

struct rl_link_stats {
    uint64_t calls;                           /* calls answered with a reply */
    uint64_t errors;                          /* failed calls, timeouts, failed connects */
    uint64_t lat_sum_us;                      /* sum of answered calls' latency */
    uint64_t lat_buckets[RL_LAT_BUCKETS + 1]; /* not cumulative; last = +Inf */
};

struct rl_link;
struct rl_call;

/*
 * A call's end: DONE(ARG, STATUS, REPLY) runs exactly once unless the call
 * was detached first; REPLY is NULL unless STATUS is RL_CALL_OK and is only
 * valid during the callback.
 */
typedef void rl_call_done_fn(void *arg, enum rl_call_status status, const redisReply *reply);

struct resolver;

/* A link for CFG (kept by reference: the snapshot outlives the link) that
 * will run SCRIPT. Connecting starts at once; a host name is resolved with
 * RS (the worker's resolver; it must outlive the link). NULL when out of
 * memory. */
struct rl_link *rl_link_new(struct event_base *base, const struct fg_redis *cfg,
                            const char *script, struct resolver *rs);

/* Is the Redis address a host name (to be resolved) rather than an IP? */
bool rl_redis_host_is_name(const struct fg_redis *c);

/* The worker is stopping: no more reconnects, and the connection closes
 * once no call is pending (so the worker's loop can end). */
void rl_link_stop(struct rl_link *l);

/* Free the link: pending calls end with RL_CALL_ERROR (detached ones silently). */
void rl_link_free(struct rl_link *l);

enum rl_link_state rl_link_state(const struct rl_link *l);              /* any thread */
void rl_link_stats(const struct rl_link *l, struct rl_link_stats *out); /* any thread */
const char *rl_link_sha(const struct rl_link *l);                       /* hex SHA1 of the script */

/*
 * EVALSHA the script with NKEYS keys then NARGS arguments (ARGV/ARGVLEN
 * hold both, keys first). Returns the call, or NULL when the link is not UP
 * or out of memory (DONE is then never called).
 */
struct rl_call *rl_link_eval(struct rl_link *l, int nkeys, int nargs, const char **argv,
                             const size_t *argvlen, rl_call_done_fn *done, void *arg);

/* The caller no longer wants the answer: DONE will not be called, and the
 * call record is freed when Redis answers or the connection goes. Its
 * deadline still runs: unanswered in timeout_ms, it fails the link. */
void rl_call_detach(struct rl_call *c);

#endif
