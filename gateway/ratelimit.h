/*
 * ratelimit.h - the rate-limit stage: tiered and endpoint limits per
 * identity, decided by GCRA in one atomic Redis script (rl_redis.c), or in
 * process when Redis fails and on_redis_failure = "local".
 *
 * GCRA (the virtual-scheduling form of the Generic Cell Rate Algorithm,
 * ITU-T I.371): each limit key keeps one number, its theoretical arrival
 * time (TAT). With T = window / limit (the emission interval) and the
 * tolerance tau = T * (limit - 1), a request at NOW is admitted when
 * max(TAT, NOW) - NOW <= tau, and then TAT = max(TAT, NOW) + T. A fresh
 * identity gets exactly LIMIT requests at once, and a sustained load is
 * admitted at LIMIT / WINDOW per second. All times are integer
 * nanoseconds, so the C code here and the Lua script in ratelimit.c (which
 * must agree with it) compute the same numbers: the script returns only
 * how far each TAT was ahead of its clock, and rl_gcra_decide derives the
 * rest from that. T is rounded down to a whole nanosecond, so a sustained
 * load is admitted at most a fraction 1/T (T in ns) faster than LIMIT /
 * WINDOW: 0.1% at a million requests per second, 0.001% at 10000 (whole
 * microseconds admitted 11% too many at 150000 per second, and never more
 * than a million per second). A TAT more than tau + T ahead of NOW, which
 * no decision on one clock can leave, is read as tau + T ahead: after a
 * Redis failover to a primary whose clock is behind, an identity waits at
 * most one interval, never the clocks' difference.
 */
#ifndef FG_RATELIMIT_H
#define FG_RATELIMIT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "cfg.h"
#include "stage.h"

struct evbuffer;
struct worker;

#define RL_MAX_LIMITS 8 /* a tier limit and up to 7 endpoint limits per request */
#define RL_KEY_MAX 400  /* longest limit key; longer ones are hashed */
#define RL_TAG_MAX 66   /* longest hash tag: an identity, or "h:" and its sha256 */

_Static_assert(FG_KEY_PREFIX_MAX + sizeof("rl:{}:h:") - 1 + RL_TAG_MAX + 64 < RL_KEY_MAX,
               "a hashed key, with the longest key_prefix, fits RL_KEY_MAX");

/* One limit's parameters, in nanoseconds. */
struct rl_gcra {
    int64_t interval;  /* T = window / limit, rounded down, at least 1 */
    int64_t tolerance; /* tau = T * (limit - 1) */
    uint32_t limit;    /* requests per window */
    uint32_t window;   /* seconds */
};

/* What a decision says about one limit. */
struct rl_result {
    bool admits;        /* this limit alone would admit the request */
    uint32_t remaining; /* requests still admitted now (after this one when admitted) */
    int64_t reset_ns;   /* until the quota is whole again */
    int64_t retry_ns;   /* until this limit admits one more; 0 when it admits */
};

void rl_gcra_init(struct rl_gcra *g, uint32_t limit, uint32_t window);

/*
 * Decide N limits at once for one request at NOW (ns). TAT[i] is limit i's
 * stored TAT (0 when none; more than tau + T ahead counts as tau + T). The
 * request is admitted only when every limit admits it; only then is each
 * TAT advanced (a refused request consumes nothing). Writes TAT_AFTER[i]
 * and RES[i]; returns whether it is admitted.
 */
bool rl_gcra_decide(const struct rl_gcra *g, const int64_t *tat, size_t n, int64_t now,
                    int64_t *tat_after, struct rl_result *res);

/*
 * The identity part of a key for client address IP (text): "ip:203.0.113.7"
 * for IPv4 (and IPv4-mapped IPv6), "ip:2001:db8:1::/64" for IPv6 masked to
 * V6PREFIX bits. Returns the length written, or -1 when IP does not parse
 * or OUT is too small.
 */
int rl_ip_ident(const char *ip, unsigned v6prefix, char *out, size_t cap);

/* "u:<sub>" for an authenticated user. Returns the length or -1. */
int rl_user_ident(const char *user, char *out, size_t cap);

/*
 * A limit key: PREFIX + "rl:{" + TAG + "}:" + SCOPE, where SCOPE is
 * "t:<tier name>" or "e<endpoint index>" and TAG is IDENT, or "h:<sha256
 * hex of IDENT>" when IDENT is longer than RL_TAG_MAX. The braces make TAG
 * the Redis Cluster hash tag: every key of one identity lives in one slot.
 * A key longer than RL_KEY_MAX - 1 becomes PREFIX + "rl:{" + TAG + "}:h:" +
 * <sha256 hex of PREFIX, SCOPE and IDENT>: still under the deployment's
 * prefix (ACL key patterns, SCAN) and in its identity's slot. A PREFIX
 * longer than FG_KEY_PREFIX_MAX, which the configuration refuses, is left
 * out of a hashed key so that it fits. Returns the length.
 */
size_t rl_limit_key(const char *prefix, const char *scope, const char *ident, char out[RL_KEY_MAX]);

/*
 * The tier for an identity: USER NULL is anonymous (tiers[0]); otherwise the
 * tier named by the TIER claim value ("premium", any configured name), and
 * authenticated (tiers[1]) for an absent or unknown value.
 */
size_t rl_tier_index(const struct fg_ratelimit *rl, const char *user, const char *tier);

/* The limits that apply to one request. */
struct rl_plan {
    size_t tier; /* index into rl->tiers (metrics label) */
    size_t n;    /* limits below */
    struct rl_gcra g[RL_MAX_LIMITS];
    char key[RL_MAX_LIMITS][RL_KEY_MAX];
    size_t key_len[RL_MAX_LIMITS];
};

/* What rl_plan_build needs to know of a request. */
struct rl_subject {
    const char *client_ip;
    const char *user; /* NULL: anonymous */
    const char *tier; /* tier claim value, or NULL */
    const char *path; /* normalised */
    size_t path_len;
    int method;        /* enum h1_method */
    bool tier_limited; /* the route has rate_limit = true */
};

/*
 * Every limit that applies: the tier limit (when TIER_LIMITED), then each
 * endpoint whose path prefix matches at a segment boundary and whose
 * methods include the request's (key "user" without a user keys by IP).
 * Returns 0, or -1 when the client address cannot be keyed.
 */
int rl_plan_build(const struct fg_ratelimit *rl, const struct rl_subject *s, struct rl_plan *p);

/* ---- per-worker state ---------------------------------------------------- */

enum rl_outcome {
    RL_OUT_ALLOWED = 0,       /* Redis admitted */
    RL_OUT_LIMITED = 1,       /* Redis refused, or the refusal cache did */
    RL_OUT_LOCAL_ALLOWED = 2, /* Redis failed; the local limiter admitted */
    RL_OUT_LOCAL_LIMITED = 3, /* Redis failed; the local limiter refused */
    RL_OUT_FAIL_OPEN = 4,     /* Redis failed; on_redis_failure = "allow" */
    RL_OUT_FAIL_CLOSED = 5,   /* Redis failed; on_redis_failure = "deny": 503 */
    RL_OUT__COUNT
};
const char *rl_outcome_str(enum rl_outcome o);

/* Set up W's rate-limit state (local tables, counters, the Redis link) when
 * the configuration has a rate_limit group. 0, or -1 with ERR. */
int ratelimit_worker_init(struct worker *w, const struct fg_config *cfg, char *err, size_t errlen);
void ratelimit_worker_free(struct worker *w);

/* The worker is stopping: the Redis link closes once its calls are answered. */
void ratelimit_worker_stop(struct worker *w);

/* On W's thread, before W moves to snapshot CFG: refusals are forgotten,
 * the Redis link is kept when its settings are the same and made anew
 * otherwise (the old one finishes its calls, then goes). 0 or -1 with ERR. */
int ratelimit_worker_reload(struct worker *w, const struct fg_config *cfg, char *err,
                            size_t errlen);

/* For /readyz: "disabled", "up" (every worker's link is up) or "down". */
const char *ratelimit_redis_state(const struct fg_config *cfg, const struct worker *workers,
                                  unsigned n);

/* Append the rate-limit and Redis metrics (Prometheus text) to OUT. */
void ratelimit_metrics(const struct fg_config *cfg, const struct worker *workers, unsigned n,
                       struct evbuffer *out);

extern const struct stage ratelimit_stage;

#endif
