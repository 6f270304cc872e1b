/*
 * rl_redis.c - one worker's hiredis link: connect, handshake, batched
 * EVALSHA with a deadline per call, reconnect with backoff.
 *
 * Ownership: a call record belongs to its batch from rl_link_eval on. A
 * batch belongs to the link's send queue until the flush event sends it,
 * then to hiredis (it is the callback's privdata) until hiredis calls back,
 * which it does exactly once: with the reply, or with NULL when the
 * connection is freed. A batch and its calls are freed there, or by the
 * flush event when the batch cannot be sent, or by rl_link_free, and
 * nowhere else. A request that stops waiting (deadline, client gone) only
 * clears its record's done/arg, so a late reply finds nothing to touch.
 * A call past its deadline is "late": its batch stays queued in hiredis,
 * which matches replies to commands in order, so the reply Redis still owes
 * it is read into that batch and dropped, never given to a later call; the
 * link counts its late calls to know when only such replies are left.
 * "Freed" means given back to the link's free lists (bounded), with the
 * call's deadline timer and the batch's buffers, so that a call allocates
 * nothing of its own once the worker is warm.
 */
#include <stdio.h>
#include <stdlib.h>
#include <stddef.h>
#include <ctype.h>
#include <arpa/inet.h>
#include <pthread.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <event2/event.h>
#include <hiredis/async.h>
#include <hiredis/hiredis.h>
#include <hiredis/adapters/libevent.h>
#include <openssl/sha.h>

#include "fmt.h"
#include "freelist.h"
#include "log.h"
#include "resolver.h"
#include "rl_redis.h"
#include "rl_sentinel.h"

#define RL_BACKOFF_MIN_MS 100
#define RL_BACKOFF_MAX_MS 5000
#define RL_HANDSHAKE_MIN_MS 1000 /* connect + AUTH + SELECT + SCRIPT LOAD */
#define RL_CALL_ARGS 64          /* keys and arguments of one call, at most */
#define RL_CALL_KEEP 64          /* idle call records a link keeps for reuse */
#define RL_BATCH_KEEP 4          /* idle batches a link keeps for reuse */

const uint32_t rl_lat_bounds_us[RL_LAT_BUCKETS] = {250,   500,   1000,  2500,  5000,
                                                   10000, 25000, 50000, 100000};

struct rl_link {
    struct event_base *base;       /* the worker's */
    const struct fg_redis *cfg;    /* the snapshot's redis group */
    struct fg_config *held;        /* that snapshot, when the link holds it (rl_link_set_cfg) */
    const char *script;            /* the Lua source (static, not owned) */
    char sha[41];                  /* its SHA1, lowercase hex */
    redisAsyncContext *ac;         /* NULL while DOWN; hiredis frees it on disconnect */
    int state;                     /* enum rl_link_state; atomic (read by admin) */
    uint32_t backoff_ms;           /* next retry delay */
    struct event *retry_ev;        /* reconnect after backoff_ms */
    struct event *handshake_ev;    /* the handshake's deadline */
    bool logged_down;              /* "down" already logged since the last "up" */
    bool logged_reply_error;       /* an error reply logged since the last good one */
    bool logged_timeout;           /* a timeout logged since the last call answered in time */
    bool stopping;                 /* worker stopping: no reconnect, close when idle */
    unsigned pending;              /* calls made and not over (unsent or sent), detached or not */
    unsigned late;                 /* of those, past their deadline: only a reply to drop is due */
    struct rl_timeouts timeouts;   /* timeouts in a row, towards RL_DOWN_AFTER_TIMEOUTS */
    struct rl_link_stats stats;    /* atomic counters (read by admin) */
    struct resolver *rs;           /* the worker's resolver, for a Redis host name */
    struct resolver_wait dns;      /* a lookup in flight (dns.e != NULL) */
    struct freelist free_calls;    /* idle call records (call_free), at most RL_CALL_KEEP */
    struct rl_batch *unsent;       /* batches waiting for the flush event, oldest first */
    struct rl_batch *unsent_tail;  /* the newest: calls are added to it while it has room */
    struct event *flush_ev;        /* zero-delay: sends the unsent batches */
    struct freelist free_batches;  /* idle batches, at most RL_BATCH_KEEP */
    struct rl_sentinel *sen;       /* with sentinels: who names the primary; else NULL */
    bool discovering;              /* link_connect waits for the Sentinels' answer */
    char host[INET6_ADDRSTRLEN];   /* with sentinels: the primary they named ("" before) */
    int port;                      /* and its port */
    pthread_mutex_t name_mu;       /* guards name (the admin reads it) */
    char name[RL_PRIMARY_MAX];     /* the address in use, for logs and the admin */
};

struct rl_call {
    struct rl_link *link;
    struct rl_call *next;  /* the link's free list, while idle */
    rl_call_done_fn *done; /* NULL once detached or answered */
    void *arg;
    struct event *deadline; /* timeout_ms after the call was queued; kept while idle */
    int64_t start_us;       /* monotonic, for the latency histogram */
    bool late;              /* its deadline passed; counted in link->late */
};

/* A growable byte buffer; its memory is kept while the batch is idle. */
struct rl_buf {
    char *p;
    size_t len;
    size_t cap;
};

/* The calls of one EVALSHA (see rl_link_eval for its layout). */
struct rl_batch {
    struct rl_link *link;
    struct rl_batch *next;                 /* the send queue or the free list */
    struct rl_call *calls[RL_BATCH_CALLS]; /* in the order they were made */
    unsigned ncalls;
    unsigned nkeys;     /* bulk strings in keys */
    unsigned nargs;     /* bulk strings in args, the per-call headers included */
    struct rl_buf keys; /* every call's keys, in RESP */
    struct rl_buf args; /* per call: NKEYS, NARGS and its arguments, in RESP */
    struct rl_buf cmd;  /* the whole EVALSHA once sent, kept for a NOSCRIPT retry */
    bool retried;       /* already re-sent once after NOSCRIPT */
};

static void link_connect(struct rl_link *l);
static void link_fail(struct rl_link *l, const char *why);
static void link_connect_to(struct rl_link *l, const char *host);
static void call_destroy(struct rl_call *c);
static void batch_destroy(struct rl_batch *b);

FREELIST_DEFINE(idle_calls, struct rl_call, next, RL_CALL_KEEP)
FREELIST_DEFINE(idle_batches, struct rl_batch, next, RL_BATCH_KEEP)
static void batch_fail_unsent(struct rl_link *l);
static void flush_cb(evutil_socket_t fd, short what, void *arg);

const char *rl_link_state_str(enum rl_link_state st)
{
    switch (st) {
    case RL_LINK_DOWN: return "down";
    case RL_LINK_CONNECTING: return "connecting";
    case RL_LINK_UP: return "up";
    }
    return "?";
}

const char *rl_call_status_str(enum rl_call_status st)
{
    switch (st) {
    case RL_CALL_OK: return "ok";
    case RL_CALL_ERROR: return "error";
    case RL_CALL_TIMEOUT: return "timeout";
    case RL_CALL_BAD_REPLY: return "bad_reply";
    }
    return "?";
}

static int64_t mono_us(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static void count(uint64_t *counter, uint64_t n)
{
    __atomic_fetch_add(counter, n, __ATOMIC_RELAXED);
}

bool rl_timeouts_add(struct rl_timeouts *t, int64_t made_us, int64_t now_us)
{
    if (t->in_row > 0 && made_us < t->last_us)
        return false; /* it waited on the silence counted already */
    t->in_row++;
    t->last_us = now_us;
    return t->in_row >= RL_DOWN_AFTER_TIMEOUTS;
}

void rl_timeouts_reset(struct rl_timeouts *t)
{
    t->in_row = 0;
    t->last_us = 0;
}

static void set_state(struct rl_link *l, enum rl_link_state st)
{
    __atomic_store_n(&l->state, (int)st, __ATOMIC_RELEASE);
}

enum rl_link_state rl_link_state(const struct rl_link *l)
{
    if (l == NULL)
        return RL_LINK_DOWN;
    return (enum rl_link_state)__atomic_load_n(&l->state, __ATOMIC_ACQUIRE);
}

void rl_link_set_cfg(struct rl_link *l, struct fg_config *owner, const struct fg_redis *cfg)
{
    struct fg_config *old = l->held;

    l->held = cfg_ref(owner);
    l->cfg = cfg;
    if (l->sen != NULL)
        rl_sentinel_set_cfg(l->sen, cfg);
    cfg_unref(old);
}

void rl_link_primary(struct rl_link *l, char *out, size_t len)
{
    pthread_mutex_lock(&l->name_mu);
    snprintf(out, len, "%s", l->name);
    pthread_mutex_unlock(&l->name_mu);
}

bool rl_link_sentinels(const struct rl_link *l)
{
    return l->sen != NULL;
}

bool rl_link_subscribed(const struct rl_link *l)
{
    return rl_sentinel_subscribed(l->sen);
}

/* The address in use for logs: with Sentinels, "" until they name one. */
static const char *label(const struct rl_link *l)
{
    return l->name[0] != '\0' ? l->name : "(primary not known yet)";
}

/* The address in use, as logs and the admin show it (written only here, on
 * the link's thread, so the link reads it without the lock). */
static void set_name(struct rl_link *l, const char *name)
{
    pthread_mutex_lock(&l->name_mu);
    snprintf(l->name, sizeof(l->name), "%s", name);
    pthread_mutex_unlock(&l->name_mu);
}

bool rl_link_idle(const struct rl_link *l)
{
    return l->pending == 0 && l->ac == NULL;
}

/* Only what the connection is made with: key_prefix and timeout_ms are read
 * per call and go to a kept link with its new group. */
bool rl_redis_same(const struct fg_redis *a, const struct fg_redis *b)
{
    const char *sa[] = {a->address, a->password, a->username, a->master_name,
                        a->sentinel_password};
    const char *sb[] = {b->address, b->password, b->username, b->master_name,
                        b->sentinel_password};

    for (size_t i = 0; i < sizeof(sa) / sizeof(sa[0]); i++)
        if ((sa[i] == NULL) != (sb[i] == NULL) || (sa[i] && strcmp(sa[i], sb[i]) != 0))
            return false;
    if (a->nsentinels != b->nsentinels)
        return false;
    for (size_t i = 0; i < a->nsentinels; i++)
        if (strcmp(a->sentinels[i].address, b->sentinels[i].address) != 0)
            return false;
    return a->database == b->database;
}

const char *rl_link_sha(const struct rl_link *l)
{
    return l->sha;
}

void rl_link_stats(const struct rl_link *l, struct rl_link_stats *out)
{
    const uint64_t *src = (const uint64_t *)&l->stats;
    uint64_t *dst = (uint64_t *)out;

    for (size_t i = 0; i < sizeof(*out) / sizeof(uint64_t); i++)
        dst[i] = __atomic_load_n(&src[i], __ATOMIC_RELAXED);
}

static void timer_in(struct event *ev, uint32_t ms)
{
    struct timeval tv = {.tv_sec = ms / 1000, .tv_usec = (ms % 1000) * 1000};

    evtimer_add(ev, &tv);
}

/*
 * The connection failed (WHY): forget it and retry after the backoff. When
 * l->ac is still set we free it here; hiredis defers that free while one of
 * its callbacks runs, and every pending call is then answered with NULL.
 */
static void link_fail(struct rl_link *l, const char *why)
{
    redisAsyncContext *ac = l->ac;

    l->ac = NULL;
    count(&l->stats.errors, 1);
    set_state(l, RL_LINK_DOWN);
    evtimer_del(l->handshake_ev);
    l->discovering = false;
    if (l->stopping)
        goto close;
    if (!l->logged_down) {
        log_warn("redis %s: %s; retrying with backoff", label(l), why);
        l->logged_down = true;
    }
    timer_in(l->retry_ev, l->backoff_ms);
    l->backoff_ms = l->backoff_ms * 2 > RL_BACKOFF_MAX_MS ? RL_BACKOFF_MAX_MS : l->backoff_ms * 2;
close:
    if (ac != NULL)
        redisAsyncFree(ac);
}

/* Close the connection on purpose (stop): not an error, no retry. */
static void link_close(struct rl_link *l)
{
    redisAsyncContext *ac = l->ac;

    resolver_cancel(&l->dns);
    l->ac = NULL;
    set_state(l, RL_LINK_DOWN);
    evtimer_del(l->retry_ev);
    evtimer_del(l->handshake_ev);
    if (ac != NULL)
        redisAsyncFree(ac);
}

/* Late calls do not hold a stopping link open: nobody waits for their
 * replies, and a stalled Redis might never send them. */
void rl_link_stop(struct rl_link *l)
{
    l->stopping = true;
    rl_sentinel_stop(l->sen);
    if (l->pending == l->late || rl_link_state(l) != RL_LINK_UP)
        link_close(l);
}

static void on_connect(const redisAsyncContext *ac, int status)
{
    struct rl_link *l = ac->data;

    if (status != REDIS_OK && l->ac == ac) {
        l->ac = NULL; /* hiredis frees it after this callback */
        link_fail(l, ac->errstr[0] ? ac->errstr : "connect failed");
    }
}

static void on_disconnect(const redisAsyncContext *ac, int status)
{
    struct rl_link *l = ac->data;

    if (l->ac == ac) {
        l->ac = NULL; /* hiredis frees it after this callback */
        link_fail(l, ac->errstr[0] ? ac->errstr : "connection closed");
    }
}

/* AUTH and SELECT: anything but an error reply goes on. */
static void handshake_cb(redisAsyncContext *ac, void *r, void *priv)
{
    struct rl_link *l = priv;
    const redisReply *reply = r;

    if (reply == NULL || l->ac != ac)
        return;
    if (reply->type == REDIS_REPLY_ERROR) {
        char why[160];
        snprintf(why, sizeof(why), "handshake refused: %.120s", reply->str);
        link_fail(l, why);
    }
}

static void script_loaded_cb(redisAsyncContext *ac, void *r, void *priv)
{
    struct rl_link *l = priv;
    const redisReply *reply = r;

    if (reply == NULL || l->ac != ac)
        return;
    if (reply->type != REDIS_REPLY_STRING || strcasecmp(reply->str, l->sha) != 0) {
        link_fail(l, reply->type == REDIS_REPLY_ERROR ? reply->str : "SCRIPT LOAD: bad reply");
        return;
    }
    evtimer_del(l->handshake_ev);
    rl_timeouts_reset(&l->timeouts);
    set_state(l, RL_LINK_UP);
    if (l->logged_down)
        log_info("redis %s: connected", label(l));
    l->logged_down = false;
}

/* With Sentinels, ROLE confirms that the node they named is the primary: a
 * Sentinel may still name one that was demoted (it lags, or was cut off). */
static void role_cb(redisAsyncContext *ac, void *r, void *priv)
{
    struct rl_link *l = priv;
    const redisReply *reply = r;
    const char *role = "?";
    char why[96];

    if (reply == NULL || l->ac != ac)
        return;
    if (reply->type == REDIS_REPLY_ERROR)
        role = reply->str;
    else if (reply->type == REDIS_REPLY_ARRAY && reply->elements > 0 &&
             reply->element[0]->type == REDIS_REPLY_STRING)
        role = reply->element[0]->str;
    if (reply->type == REDIS_REPLY_ARRAY && strcmp(role, "master") == 0)
        return;
    snprintf(why, sizeof(why), "not the primary (ROLE: %.40s)", role);
    link_fail(l, why);
}

/* The handshake commands, queued before the connection completes: hiredis
 * sends them in order once it is writable. */
static int queue_handshake(struct rl_link *l)
{
    redisAsyncContext *ac = l->ac;
    const struct fg_redis *c = l->cfg;
    int rc = REDIS_OK;

    if (c->password != NULL && c->username != NULL)
        rc = redisAsyncCommand(ac, handshake_cb, l, "AUTH %s %s", c->username, c->password);
    else if (c->password != NULL)
        rc = redisAsyncCommand(ac, handshake_cb, l, "AUTH %s", c->password);
    if (rc == REDIS_OK && c->database != 0)
        rc = redisAsyncCommand(ac, handshake_cb, l, "SELECT %d", c->database);
    if (rc == REDIS_OK && l->sen != NULL)
        rc = redisAsyncCommand(ac, role_cb, l, "ROLE");
    if (rc == REDIS_OK)
        rc = redisAsyncCommand(ac, script_loaded_cb, l, "SCRIPT LOAD %s", l->script);
    return rc == REDIS_OK ? 0 : -1;
}

static bool is_name(const char *host)
{
    unsigned char a[sizeof(struct in6_addr)];

    return host != NULL && inet_pton(AF_INET, host, a) != 1 && inet_pton(AF_INET6, host, a) != 1;
}

/* The address is used only without Sentinels. */
static bool address_is_name(const struct fg_redis *c)
{
    return c->nsentinels == 0 && c->unix_path == NULL && is_name(c->host);
}

bool rl_redis_host_is_name(const struct fg_redis *c)
{
    for (size_t i = 0; i < c->nsentinels; i++)
        if (is_name(c->sentinels[i].host))
            return true;
    return address_is_name(c);
}

static void on_resolved(struct resolver_wait *wt, enum resolver_status st,
                        const struct sockaddr_storage *addr)
{
    struct rl_link *l = (struct rl_link *)((char *)wt - offsetof(struct rl_link, dns));
    char ip[INET6_ADDRSTRLEN];

    if (st != RESOLVER_OK) {
        link_fail(l, "cannot resolve the address");
        return;
    }
    const void *a = addr->ss_family == AF_INET6
                        ? (const void *)&((const struct sockaddr_in6 *)addr)->sin6_addr
                        : (const void *)&((const struct sockaddr_in *)addr)->sin_addr;
    inet_ntop(addr->ss_family, a, ip, sizeof(ip));
    link_connect_to(l, ip);
}

/*
 * Connect, resolving a host name first through the worker's resolver:
 * hiredis 0.14 would look it up with a blocking getaddrinfo() on the worker
 * thread, on every reconnect, stalling every request of the worker while
 * DNS is slow.
 */
static void link_connect(struct rl_link *l)
{
    const struct fg_redis *c = l->cfg;
    char name[256];
    struct sockaddr_storage addr;

    if (l->sen != NULL) {
        l->discovering = true;
        set_state(l, RL_LINK_CONNECTING);
        rl_sentinel_ask(l->sen);
        return;
    }
    if (!address_is_name(c) || l->rs == NULL || strlen(c->host) >= sizeof(name)) {
        link_connect_to(l, c->host);
        return;
    }
    for (size_t i = 0; (name[i] = (char)tolower((unsigned char)c->host[i])) != '\0'; i++)
        ;
    set_state(l, RL_LINK_CONNECTING);
    enum resolver_status st = resolver_lookup(l->rs, name, &l->dns, on_resolved, &addr);
    if (st != RESOLVER_PENDING)
        on_resolved(&l->dns, st, &addr);
}

static void link_connect_to(struct rl_link *l, const char *host)
{
    const struct fg_redis *c = l->cfg;
    redisAsyncContext *ac;

    if (l->sen != NULL)
        ac = redisAsyncConnect(host, l->port);
    else
        ac = c->unix_path ? redisAsyncConnectUnix(c->unix_path) : redisAsyncConnect(host, c->port);
    if (ac == NULL) {
        link_fail(l, "out of memory");
        return;
    }
    if (ac->err) {
        char why[160];
        snprintf(why, sizeof(why), "%.150s", ac->errstr);
        redisAsyncFree(ac);
        link_fail(l, why);
        return;
    }
    ac->data = l;
    l->ac = ac;
    set_state(l, RL_LINK_CONNECTING);
    if (redisLibeventAttach(ac, l->base) != REDIS_OK ||
        redisAsyncSetConnectCallback(ac, on_connect) != REDIS_OK ||
        redisAsyncSetDisconnectCallback(ac, on_disconnect) != REDIS_OK || queue_handshake(l) < 0) {
        link_fail(l, "cannot set up the connection");
        return;
    }
    uint32_t ms = c->timeout_ms > RL_HANDSHAKE_MIN_MS ? c->timeout_ms : RL_HANDSHAKE_MIN_MS;
    timer_in(l->handshake_ev, ms);
}

static void retry_cb(evutil_socket_t fd, short what, void *arg)
{
    link_connect(arg);
}

/* Leave whatever connection there is (its calls end with RL_CALL_ERROR and
 * follow on_redis_failure) for the primary at l->host, at once. */
static void link_move(struct rl_link *l)
{
    redisAsyncContext *ac = l->ac;

    l->ac = NULL;
    set_state(l, RL_LINK_CONNECTING);
    evtimer_del(l->retry_ev);
    evtimer_del(l->handshake_ev);
    if (ac != NULL)
        redisAsyncFree(ac);
    if (!l->stopping)
        link_connect_to(l, l->host);
}

/*
 * What the Sentinels said (rl_sentinel.h). NONE fails a discovery (the
 * backoff then asks again). An address is taken at once unless the link is
 * connected or connecting to it already: a +switch-master, or an answer
 * that arrives while the link waits out its backoff, ends the wait.
 */
static void on_sentinel(void *arg, enum rl_sentinel_event ev, const char *ip, int port)
{
    struct rl_link *l = arg;
    bool same = ip != NULL && port == l->port && strcmp(ip, l->host) == 0;
    char name[RL_PRIMARY_MAX];

    if (l->stopping)
        return;
    if (ev == RL_SENTINEL_NONE) {
        if (l->discovering)
            link_fail(l, "no Sentinel named the primary");
        return;
    }
    l->discovering = false;
    if (same && l->ac != NULL)
        return;
    if (!same) {
        if (l->host[0] != '\0') {
            count(&l->stats.primary_changes, 1);
            log_info("redis: the primary of \"%s\" is now %s:%d (%s)", l->cfg->master_name, ip,
                     port, ev == RL_SENTINEL_SWITCH ? "+switch-master" : "a Sentinel's answer");
        }
        snprintf(l->host, sizeof(l->host), "%s", ip);
        l->port = port;
        snprintf(name, sizeof(name), strchr(ip, ':') ? "[%s]:%d" : "%s:%d", ip, port);
        set_name(l, name);
    }
    link_move(l);
}

static void handshake_timeout_cb(evutil_socket_t fd, short what, void *arg)
{
    struct rl_link *l = arg;

    if (l->ac != NULL)
        link_fail(l, "no answer to the handshake in time");
}

struct rl_link *rl_link_new(struct event_base *base, const struct fg_redis *cfg, const char *script,
                            struct resolver *rs)
{
    struct rl_link *l = calloc(1, sizeof(*l));
    unsigned char md[SHA_DIGEST_LENGTH];

    if (l == NULL)
        return NULL;
    l->base = base;
    l->rs = rs;
    l->cfg = cfg;
    l->script = script;
    l->backoff_ms = RL_BACKOFF_MIN_MS;
    SHA1((const unsigned char *)script, strlen(script), md);
    for (int i = 0; i < SHA_DIGEST_LENGTH; i++)
        snprintf(l->sha + 2 * i, 3, "%02x", md[i]);
    l->retry_ev = evtimer_new(base, retry_cb, l);
    l->handshake_ev = evtimer_new(base, handshake_timeout_cb, l);
    l->flush_ev = event_new(base, -1, 0, flush_cb, l);
    pthread_mutex_init(&l->name_mu, NULL);
    if (cfg->nsentinels > 0) {
        l->sen = rl_sentinel_new(base, cfg, rs, on_sentinel, l);
    } else {
        set_name(l, cfg->address);
    }
    if (l->retry_ev == NULL || l->handshake_ev == NULL || l->flush_ev == NULL ||
        (cfg->nsentinels > 0 && l->sen == NULL)) {
        rl_link_free(l);
        return NULL;
    }
    link_connect(l);
    return l;
}

void rl_link_free(struct rl_link *l)
{
    struct rl_call *c;
    struct rl_batch *b;

    if (l == NULL)
        return;
    resolver_cancel(&l->dns);
    rl_sentinel_free(l->sen);
    l->sen = NULL;
    if (l->ac != NULL) {
        redisAsyncContext *ac = l->ac;
        l->ac = NULL;
        redisAsyncFree(ac); /* answers every batch sent with NULL */
    }
    batch_fail_unsent(l);
    /* After the answers above: their calls and batches come back here. */
    while ((c = idle_calls_get(&l->free_calls)) != NULL)
        call_destroy(c);
    while ((b = idle_batches_get(&l->free_batches)) != NULL)
        batch_destroy(b);
    if (l->flush_ev)
        event_free(l->flush_ev);
    if (l->retry_ev)
        event_free(l->retry_ev);
    if (l->handshake_ev)
        event_free(l->handshake_ev);
    cfg_unref(l->held);
    pthread_mutex_destroy(&l->name_mu);
    free(l);
}

/* ---- calls ---------------------------------------------------------------- */

static void call_deadline_cb(evutil_socket_t fd, short what, void *arg);

static void call_destroy(struct rl_call *c)
{
    if (c->deadline)
        event_free(c->deadline);
    free(c);
}

/* An idle call record of L: from its free list, or a new one with its
 * deadline timer. NULL when out of memory. */
static struct rl_call *call_get(struct rl_link *l)
{
    struct rl_call *c = idle_calls_get(&l->free_calls);

    if (c != NULL)
        return c;
    if ((c = calloc(1, sizeof(*c))) == NULL)
        return NULL;
    c->link = l;
    if ((c->deadline = evtimer_new(l->base, call_deadline_cb, c)) == NULL) {
        call_destroy(c);
        return NULL;
    }
    return c;
}

/* The call is over (its batch answered, or hiredis let go of it): back to
 * the free list, or freed when the list is full. Nothing may refer to C
 * afterwards. */
static void call_free(struct rl_call *c)
{
    struct rl_link *l = c->link;

    evtimer_del(c->deadline);
    c->done = NULL;
    c->arg = NULL;
    c->late = false;
    if (!idle_calls_put(&l->free_calls, c))
        call_destroy(c);
}

static void record_latency(struct rl_link *l, int64_t us)
{
    size_t b = 0;

    while (b < RL_LAT_BUCKETS && us > (int64_t)rl_lat_bounds_us[b])
        b++;
    count(&l->stats.lat_buckets[b], 1);
    count(&l->stats.lat_sum_us, (uint64_t)us);
    count(&l->stats.calls, 1);
}

static bool is_noscript(const redisReply *reply)
{
    return reply->type == REDIS_REPLY_ERROR && strncmp(reply->str, "NOSCRIPT", 8) == 0;
}

/* A replica refused the script's writes: the node was demoted (a failover
 * the Sentinels have not told this link about, or a hand-made REPLICAOF). */
static bool is_readonly(const redisReply *reply)
{
    return reply->type == REDIS_REPLY_ERROR && strstr(reply->str, "READONLY") != NULL;
}

/* A failed reply (an error: script error, OOM, BUSY; or a batch reply of
 * the wrong shape, WHAT) is counted per call, and logged once until a call
 * succeeds again. */
static void note_failed_reply(struct rl_link *l, const char *what)
{
    count(&l->stats.errors, 1);
    if (!l->logged_reply_error)
        log_warn("redis %s: the rate-limit script failed: %.200s", label(l), what);
    l->logged_reply_error = true;
}

/* End C with STATUS and REPLY unless it was detached. */
static void call_answer(struct rl_call *c, enum rl_call_status status, const redisReply *reply)
{
    struct rl_link *l = c->link;
    rl_call_done_fn *done = c->done;
    void *arg = c->arg;

    if (done == NULL)
        return;
    c->done = NULL;
    c->arg = NULL;
    evtimer_del(c->deadline);
    if (status == RL_CALL_OK || status == RL_CALL_BAD_REPLY) {
        record_latency(l, mono_us() - c->start_us);
        l->backoff_ms = RL_BACKOFF_MIN_MS;
    }
    if (status == RL_CALL_OK && reply->type == REDIS_REPLY_ERROR)
        note_failed_reply(l, reply->str);
    else if (status == RL_CALL_BAD_REPLY)
        note_failed_reply(l, "not one reply per call");
    else if (status == RL_CALL_OK)
        l->logged_reply_error = false;
    else
        count(&l->stats.errors, 1);
    done(arg, status, reply);
}

/* ---- batches -------------------------------------------------------------- */

static void batch_destroy(struct rl_batch *b)
{
    free(b->keys.p);
    free(b->args.p);
    free(b->cmd.p);
    free(b);
}

/* An empty batch of L, from its free list or new; NULL when out of memory. */
static struct rl_batch *batch_get(struct rl_link *l)
{
    struct rl_batch *b = idle_batches_get(&l->free_batches);

    if (b == NULL && (b = calloc(1, sizeof(*b))) != NULL)
        b->link = l;
    return b;
}

/* B is over: each of its calls is freed (answered or not), and so is B.
 * The calls no longer count as pending (or late); a stopping link closes
 * when only late ones are left. */
static void batch_free(struct rl_batch *b)
{
    struct rl_link *l = b->link;

    for (unsigned i = 0; i < b->ncalls; i++) {
        l->late -= b->calls[i]->late;
        call_free(b->calls[i]);
    }
    l->pending -= b->ncalls;
    b->ncalls = b->nkeys = b->nargs = 0;
    b->keys.len = b->args.len = b->cmd.len = 0;
    b->retried = false;
    if (!idle_batches_put(&l->free_batches, b))
        batch_destroy(b);
    if (l->pending == l->late && l->stopping && l->ac != NULL)
        link_close(l);
}

/* Room for NEED more bytes at BUF; 0, or -1 when out of memory. */
static int buf_reserve(struct rl_buf *buf, size_t need)
{
    size_t cap = buf->cap ? buf->cap : 1024;

    if (buf->len + need <= buf->cap)
        return 0;
    while (cap < buf->len + need)
        cap *= 2;
    char *grown = realloc(buf->p, cap);
    if (grown == NULL)
        return -1;
    buf->p = grown;
    buf->cap = cap;
    return 0;
}

static size_t dec_digits(size_t n)
{
    size_t d = 1;

    while (n >= 10) {
        n /= 10;
        d++;
    }
    return d;
}

/* Bytes of LEN bytes as a RESP bulk string. */
static size_t bulk_size(size_t len)
{
    return 1 + dec_digits(len) + 2 + len + 2;
}

/* Append a RESP bulk string; the room was reserved. */
static void buf_bulk(struct rl_buf *buf, const char *p, size_t len)
{
    buf->p[buf->len++] = '$';
    buf->len += fmt_u64(buf->p + buf->len, len);
    memcpy(buf->p + buf->len, "\r\n", 2);
    buf->len += 2;
    memcpy(buf->p + buf->len, p, len);
    memcpy(buf->p + buf->len + len, "\r\n", 2);
    buf->len += len + 2;
}

static void buf_bulk_int(struct rl_buf *buf, int n)
{
    char num[FMT_U64_MAX + 1];

    buf_bulk(buf, num, fmt_i64(num, n));
}

/*
 * Add a call's keys and arguments to B (see rl_link_eval for the layout).
 * 0; 1 when B has no room for them (another batch must take them); -1 when
 * out of memory. B is unchanged unless 0 is returned.
 */
static int batch_add(struct rl_batch *b, int nkeys, int nargs, const char **argv,
                     const size_t *argvlen)
{
    size_t kbytes = 0, abytes = 2 * bulk_size(10);

    for (int i = 0; i < nkeys + nargs; i++)
        *(i < nkeys ? &kbytes : &abytes) += bulk_size(argvlen[i]);
    if (b->ncalls > 0 && (b->ncalls == RL_BATCH_CALLS ||
                          b->keys.len + b->args.len + kbytes + abytes > RL_BATCH_BYTES))
        return 1;
    if (buf_reserve(&b->keys, kbytes + 1) < 0 || buf_reserve(&b->args, abytes + 1) < 0)
        return -1;
    for (int i = 0; i < nkeys; i++)
        buf_bulk(&b->keys, argv[i], argvlen[i]);
    buf_bulk_int(&b->args, nkeys);
    buf_bulk_int(&b->args, nargs);
    for (int i = nkeys; i < nkeys + nargs; i++)
        buf_bulk(&b->args, argv[i], argvlen[i]);
    b->nkeys += (unsigned)nkeys;
    b->nargs += 2 + (unsigned)nargs;
    return 0;
}

/* B's whole EVALSHA into b->cmd; 0, or -1 when out of memory. */
static int batch_format(struct rl_batch *b)
{
    struct rl_link *l = b->link;
    size_t need = 64 + bulk_size(40) + b->keys.len + b->args.len;

    b->cmd.len = 0;
    if (buf_reserve(&b->cmd, need) < 0)
        return -1;
    b->cmd.len = (size_t)sprintf(b->cmd.p, "*%u\r\n$7\r\nEVALSHA\r\n", 3 + b->nkeys + b->nargs);
    buf_bulk(&b->cmd, l->sha, 40);
    buf_bulk_int(&b->cmd, (int)b->nkeys);
    memcpy(b->cmd.p + b->cmd.len, b->keys.p, b->keys.len);
    memcpy(b->cmd.p + b->cmd.len + b->keys.len, b->args.p, b->args.len);
    b->cmd.len += b->keys.len + b->args.len;
    return 0;
}

/* Did B's reply come while one of its calls was still within its deadline?
 * (A reply to a batch whose calls are all late is one Redis owed.) */
static bool batch_in_time(const struct rl_batch *b)
{
    for (unsigned i = 0; i < b->ncalls; i++)
        if (!b->calls[i]->late)
            return true;
    return false;
}

/* Does any call of B still wait for its answer? */
static bool batch_wanted(const struct rl_batch *b)
{
    for (unsigned i = 0; i < b->ncalls; i++)
        if (b->calls[i]->done != NULL)
            return true;
    return false;
}

/* Answer each call of B from the batch's REPLY (NULL: the connection went). */
static void batch_answer(struct rl_batch *b, const redisReply *reply)
{
    bool split = reply != NULL && reply->type == REDIS_REPLY_ARRAY && reply->elements == b->ncalls;

    for (unsigned i = 0; i < b->ncalls; i++) {
        struct rl_call *c = b->calls[i];
        if (reply == NULL)
            call_answer(c, RL_CALL_ERROR, NULL);
        else if (split)
            call_answer(c, RL_CALL_OK, reply->element[i]);
        else if (reply->type == REDIS_REPLY_ERROR)
            call_answer(c, RL_CALL_OK, reply);
        else
            call_answer(c, RL_CALL_BAD_REPLY, NULL);
    }
}

/* hiredis's one callback for a batch (see the ownership note on top). */
static void batch_reply_cb(redisAsyncContext *ac, void *r, void *priv)
{
    struct rl_batch *b = priv;
    struct rl_link *l = b->link;
    const redisReply *reply = r;

    if (reply != NULL && batch_in_time(b)) {
        rl_timeouts_reset(&l->timeouts);
        l->logged_timeout = false;
    }
    if (reply != NULL && is_noscript(reply) && !b->retried && batch_wanted(b)) {
        /* Redis lost its script cache (restart, SCRIPT FLUSH): load it again
         * and retry the whole batch once, in order on this connection. */
        b->retried = true;
        if (redisAsyncCommand(ac, NULL, NULL, "SCRIPT LOAD %s", l->script) == REDIS_OK &&
            redisAsyncFormattedCommand(ac, batch_reply_cb, b, b->cmd.p, b->cmd.len) == REDIS_OK)
            return;
        reply = NULL;
    }
    bool demoted = reply != NULL && is_readonly(reply) && l->ac == ac;
    batch_answer(b, reply);
    batch_free(b); /* may close a stopping link: hiredis frees AC after this callback */
    if (demoted && l->ac == ac) {
        /* Ask the Sentinels again after the shortest backoff, not a grown
         * one: they know the primary, or will in a moment. */
        l->backoff_ms = RL_BACKOFF_MIN_MS;
        link_fail(l, "READONLY: no longer the primary");
    }
}

/* Take the first unsent batch off L's queue. */
static struct rl_batch *unsent_pop(struct rl_link *l)
{
    struct rl_batch *b = l->unsent;

    if (b != NULL) {
        l->unsent = b->next;
        if (l->unsent == NULL)
            l->unsent_tail = NULL;
        b->next = NULL;
    }
    return b;
}

/* Every batch not sent yet fails (the link went, or is freed). */
static void batch_fail_unsent(struct rl_link *l)
{
    struct rl_batch *b;

    while ((b = unsent_pop(l)) != NULL) {
        batch_answer(b, NULL);
        batch_free(b);
    }
}

/* The loop round is over: send each queued batch as one EVALSHA. A batch
 * that cannot be sent (the link went since its calls were made, out of
 * memory) fails its calls here, never inside rl_link_eval. */
static void flush_cb(evutil_socket_t fd, short what, void *arg)
{
    struct rl_link *l = arg;
    struct rl_batch *b;

    while ((b = unsent_pop(l)) != NULL) {
        if (b->ncalls == 0) { /* its only call could not be added */
            batch_free(b);
            continue;
        }
        if (rl_link_state(l) == RL_LINK_UP && l->ac != NULL && batch_format(b) == 0 &&
            redisAsyncFormattedCommand(l->ac, batch_reply_cb, b, b->cmd.p, b->cmd.len) ==
                REDIS_OK) {
            count(&l->stats.batches, 1);
            continue;
        }
        batch_answer(b, NULL);
        batch_free(b);
    }
}

/* The batch that takes the next call: the newest unsent one, or a new one
 * at the end of the queue when NEW is set. NULL when out of memory. */
static struct rl_batch *batch_open(struct rl_link *l, bool new)
{
    struct rl_batch *b;

    if (!new && l->unsent_tail != NULL)
        return l->unsent_tail;
    if ((b = batch_get(l)) == NULL)
        return NULL;
    if (l->unsent == NULL) {
        l->unsent = b;
        event_active(l->flush_ev, EV_TIMEOUT, 1);
    } else {
        l->unsent_tail->next = b;
    }
    l->unsent_tail = b;
    return b;
}

/* A timeout is logged once until a call is answered in time again. */
static void note_timeout(struct rl_link *l)
{
    count(&l->stats.timeouts, 1);
    count(&l->stats.errors, 1);
    if (!l->logged_timeout)
        log_warn("redis %s: no reply within %u ms", label(l), l->cfg->timeout_ms);
    l->logged_timeout = true;
}

/*
 * No reply in timeout_ms: the request goes on without it, and the call is
 * late (see the ownership note on top). One slow reply is not a dead Redis,
 * so the connection is kept unless this makes RL_DOWN_AFTER_TIMEOUTS in a
 * row: then a stalled Redis would hold every later call for as long, and
 * the link goes down (freeing the connection frees this record too). A
 * stopping link closes once only late calls are left.
 */
static void call_deadline_cb(evutil_socket_t fd, short what, void *arg)
{
    struct rl_call *c = arg;
    struct rl_link *l = c->link;
    rl_call_done_fn *done = c->done;
    void *done_arg = c->arg;
    bool down = rl_timeouts_add(&l->timeouts, c->start_us, mono_us());

    c->done = NULL;
    c->arg = NULL;
    c->late = true;
    l->late++;
    /* Down before the answer goes: whoever saw this request's 503 and then
     * asks /readyz must find the link down, not still up. */
    if (down && l->ac != NULL)
        set_state(l, RL_LINK_DOWN);
    if (done != NULL) {
        note_timeout(l);
        done(done_arg, RL_CALL_TIMEOUT, NULL);
    }
    if (l->ac == NULL)
        return;
    if (down) {
        char why[96];
        snprintf(why, sizeof(why), "no reply to %u calls in a row within %u ms",
                 RL_DOWN_AFTER_TIMEOUTS, l->cfg->timeout_ms);
        link_fail(l, why);
    } else if (l->stopping && l->pending == l->late) {
        link_close(l);
    }
}

struct rl_call *rl_link_eval(struct rl_link *l, int nkeys, int nargs, const char **argv,
                             const size_t *argvlen, rl_call_done_fn *done, void *arg)
{
    struct rl_batch *b;
    struct rl_call *c;
    int rc = -1;

    if (rl_link_state(l) != RL_LINK_UP || l->ac == NULL || nkeys < 0 || nargs < 0 ||
        nkeys + nargs > RL_CALL_ARGS)
        return NULL;
    if ((c = call_get(l)) == NULL)
        return NULL;
    if ((b = batch_open(l, false)) != NULL &&
        (rc = batch_add(b, nkeys, nargs, argv, argvlen)) == 1 && (b = batch_open(l, true)) != NULL)
        rc = batch_add(b, nkeys, nargs, argv, argvlen);
    if (b == NULL || rc != 0) { /* an empty batch left queued is dropped by the flush */
        call_free(c);
        return NULL;
    }
    c->start_us = mono_us();
    c->done = done;
    c->arg = arg;
    b->calls[b->ncalls++] = c;
    l->pending++;
    timer_in(c->deadline, l->cfg->timeout_ms);
    return c;
}

/* The deadline stays armed: a detached call that Redis never answers still
 * counts towards RL_DOWN_AFTER_TIMEOUTS, so a stalled Redis is noticed, and
 * becomes late, so a stopping worker is not held open by it. */
void rl_call_detach(struct rl_call *c)
{
    c->done = NULL;
    c->arg = NULL;
}
