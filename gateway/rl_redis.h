/*
 * rl_redis.h - one worker's asynchronous link to Redis (hiredis 0.14 on the
 * worker's event base) for the rate-limit script.
 *
 * The link connects, authenticates, selects the database and loads the
 * script (SCRIPT LOAD), then runs calls by EVALSHA, pipelined on the one
 * connection. Calls made during one round of the event loop are batched:
 * they are queued, and a zero-delay event sends them as one EVALSHA (at
 * most RL_BATCH_CALLS calls or RL_BATCH_BYTES of keys and arguments; more
 * start another batch). The script decides each call's part in order, in
 * one atomic step, and answers with an array of one reply per call (see
 * rl_link_eval for the layout). hiredis 0.14 has no command timeout, so
 * each call carries its own deadline timer. States:
 *
 *   DOWN --retry timer--> CONNECTING --AUTH/SELECT/SCRIPT LOAD ok--> UP
 *    ^                        |                                     |
 *    +--- failure, deadline --+--- disconnect, timeouts in a row ---+
 *
 * A call that passes its deadline ends alone with RL_CALL_TIMEOUT; the link
 * stays UP and its batch stays in hiredis's reply queue, so that the late
 * reply, which Redis still owes and sends in order, is read and dropped
 * there instead of being taken for a later call's. Only a broken connection
 * or RL_DOWN_AFTER_TIMEOUTS timeouts in a row (see rl_timeouts_add) take the
 * link down. Leaving UP or CONNECTING frees the connection and arms the
 * retry timer (100 ms, doubling to 5 s; back to 100 ms after a call
 * succeeds). Calls are only accepted while UP: otherwise the caller applies
 * its failure mode at once instead of waiting.
 *
 * With Sentinels (rl_sentinel.h), CONNECTING begins by asking them for the
 * primary, and the handshake checks ROLE before SCRIPT LOAD. The link then
 * also leaves for another node when they announce one (+switch-master, or
 * another answer: at once, not after the backoff), and goes down on a
 * READONLY reply (the node was demoted) to ask them again at once:
 *
 *   DOWN --retry--> CONNECTING: ask Sentinels -> connect -> ROLE master -> ... -> UP
 *                                                                               |
 *   CONNECTING to the new primary <--------- +switch-master / another answer ---+
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
    RL_CALL_OK = 0,        /* a reply (which may still be a Redis error) */
    RL_CALL_ERROR = 1,     /* the connection failed before a reply */
    RL_CALL_TIMEOUT = 2,   /* no reply within timeout_ms */
    RL_CALL_BAD_REPLY = 3, /* the batch's reply is not one element per call */
};
const char *rl_call_status_str(enum rl_call_status st);

/* Latency buckets (upper bounds in microseconds) of the call histogram. */
#define RL_LAT_BUCKETS 9
extern const uint32_t rl_lat_bounds_us[RL_LAT_BUCKETS];

/* At most this many calls, and this many bytes of their keys and
 * arguments, go in one batch. */
#define RL_BATCH_CALLS 64
#define RL_BATCH_BYTES 16384

/* Timeouts in a row, with no call answered in time between them, that
 * declare the link down. One slow reply (a fork for a snapshot, a slow
 * neighbour command) costs only the calls that waited for it; a Redis that
 * stopped answering is given up on after about this many timeout_ms, and
 * requests then stop waiting for it. */
#define RL_DOWN_AFTER_TIMEOUTS 3

struct rl_link_stats {
    uint64_t calls;                           /* calls answered with a reply */
    uint64_t batches;                         /* EVALSHA sent (a NOSCRIPT retry is not one) */
    uint64_t errors;                          /* failed calls, timeouts, failed connects */
    uint64_t timeouts;                        /* calls past their deadline (also in errors) */
    uint64_t lat_sum_us;                      /* sum of answered calls' latency */
    uint64_t lat_buckets[RL_LAT_BUCKETS + 1]; /* not cumulative; last = +Inf */
    uint64_t primary_changes;                 /* Sentinels named another primary */
};

struct rl_link;
struct rl_call;

/*
 * The timeouts in a row of one link. Several calls that time out together
 * (a batch, or pipelined batches queued behind the same late reply) waited
 * on the same silence and count once: a timeout counts only when its call
 * was made after the last counted one passed. So a Redis that answers
 * nothing is declared down after about RL_DOWN_AFTER_TIMEOUTS * timeout_ms
 * however many calls are in flight, and a burst stuck behind one slow reply
 * is one failure, not a burst of them.
 */
struct rl_timeouts {
    unsigned in_row; /* counted timeouts since the last call answered in time */
    int64_t last_us; /* when the last counted one passed (monotonic us) */
};

/* A call made at MADE_US passed its deadline at NOW_US. True when that makes
 * RL_DOWN_AFTER_TIMEOUTS counted timeouts in a row: the link is to go down. */
bool rl_timeouts_add(struct rl_timeouts *t, int64_t made_us, int64_t now_us);

/* A call was answered in time (or a new connection is up): start again. */
void rl_timeouts_reset(struct rl_timeouts *t);

/*
 * A call's end: DONE(ARG, STATUS, REPLY) runs exactly once unless the call
 * was detached first; REPLY is NULL unless STATUS is RL_CALL_OK and is only
 * valid during the callback. REPLY is the call's own element of the batch's
 * array reply, or the whole reply when that is an error (script error, OOM,
 * BUSY): every call of the batch then gets the same error.
 */
typedef void rl_call_done_fn(void *arg, enum rl_call_status status, const redisReply *reply);

struct resolver;

/* A link for CFG (kept by reference: the snapshot outlives the link) that
 * will run SCRIPT. Connecting starts at once; a host name is resolved with
 * RS (the worker's resolver; it must outlive the link). NULL when out of
 * memory. */
struct rl_link *rl_link_new(struct event_base *base, const struct fg_redis *cfg,
                            const char *script, struct resolver *rs);

/* Does the group name a host (its address, or a Sentinel) to be resolved
 * rather than by IP? */
bool rl_redis_host_is_name(const struct fg_redis *c);

/* The worker is stopping: no more reconnects, and the connection closes
 * once no call is pending (so the worker's loop can end). */
void rl_link_stop(struct rl_link *l);

/* A reload whose redis group connects the same way (rl_redis_same) keeps
 * the link: it then reads CFG, the group of OWNER, which it holds (a
 * reference) for as long as it reads it, so a link that outlives every
 * connection of its snapshot never reads freed memory. */
bool rl_redis_same(const struct fg_redis *a, const struct fg_redis *b);
void rl_link_set_cfg(struct rl_link *l, struct fg_config *owner, const struct fg_redis *cfg);

/* No call pending and no connection: a stopped link that can be freed. */
bool rl_link_idle(const struct rl_link *l);

/* Free the link: pending calls end with RL_CALL_ERROR (detached ones silently). */
void rl_link_free(struct rl_link *l);

/* Longest rl_link_primary text. */
#define RL_PRIMARY_MAX 96

/* The address the link uses, into OUT (room for LEN, at most
 * RL_PRIMARY_MAX): the address, or the primary the Sentinels named (a
 * description of them before they named one). Any thread. */
void rl_link_primary(struct rl_link *l, char *out, size_t len);
bool rl_link_sentinels(const struct rl_link *l);  /* does it ask Sentinels? */
bool rl_link_subscribed(const struct rl_link *l); /* to +switch-master; any thread */

enum rl_link_state rl_link_state(const struct rl_link *l);              /* any thread */
void rl_link_stats(const struct rl_link *l, struct rl_link_stats *out); /* any thread */
const char *rl_link_sha(const struct rl_link *l);                       /* hex SHA1 of the script */

/*
 * Queue a call of the script with NKEYS keys then NARGS arguments
 * (ARGV/ARGVLEN hold both, keys first); it is sent with the other calls of
 * this loop round. The batch's EVALSHA has every call's keys, in call
 * order, then for each call "NKEYS", "NARGS" and its NARGS arguments; the
 * script returns an array with one element per call, in call order.
 * Returns the call, or NULL when the link is not UP or out of memory (DONE
 * is then never called). DONE never runs from within this function.
 */
struct rl_call *rl_link_eval(struct rl_link *l, int nkeys, int nargs, const char **argv,
                             const size_t *argvlen, rl_call_done_fn *done, void *arg);

/* The caller no longer wants the answer: DONE will not be called, and the
 * call record is freed when Redis answers its batch or the connection goes
 * (a call still queued is sent all the same: its request was counted when
 * it was made). Its deadline still runs: unanswered in timeout_ms, it counts
 * towards RL_DOWN_AFTER_TIMEOUTS like any call. */
void rl_call_detach(struct rl_call *c);

#endif
