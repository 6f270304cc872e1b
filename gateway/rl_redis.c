/*
 * rl_redis.c - one worker's hiredis link: connect, handshake, EVALSHA with
 * a deadline per call, reconnect with backoff.
 *
 * Ownership: a call record belongs to hiredis from the moment it is queued
 * (it is the callback's privdata) until hiredis calls back, which it does
 * exactly once: with the reply, or with NULL when the connection is freed.
 * The record is freed there and nowhere else. A request that stops waiting
 * (deadline, client gone) only clears the record's done/arg, so a late reply
 * finds nothing to touch. "Freed" means given back to the link's free list
 * (bounded), with its deadline timer and command buffer, so that a call
 * allocates nothing of its own once the worker is warm.
 */
#include <stdio.h>
#include <stdlib.h>
#include <stddef.h>
#include <ctype.h>
#include <arpa/inet.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <event2/event.h>
#include <hiredis/async.h>
#include <hiredis/hiredis.h>
#include <hiredis/adapters/libevent.h>
#include <openssl/sha.h>

#include "log.h"
#include "resolver.h"
#include "rl_redis.h"

#define RL_BACKOFF_MIN_MS 100
#define RL_BACKOFF_MAX_MS 5000
#define RL_HANDSHAKE_MIN_MS 1000 /* connect + AUTH + SELECT + SCRIPT LOAD */
#define RL_MAX_ARGS 64
#define RL_CALL_KEEP 64 /* idle call records a link keeps for reuse */

const uint32_t rl_lat_bounds_us[RL_LAT_BUCKETS] = {250,   500,   1000,  2500,  5000,
                                                   10000, 25000, 50000, 100000};

struct rl_link {
    struct event_base *base;    /* the worker's */
    const struct fg_redis *cfg; /* the snapshot's redis group */
    const char *script;         /* the Lua source (static, not owned) */
    char sha[41];               /* its SHA1, lowercase hex */
    redisAsyncContext *ac;      /* NULL while DOWN; hiredis frees it on disconnect */
    int state;                  /* enum rl_link_state; atomic (read by admin) */
    uint32_t backoff_ms;        /* next retry delay */
    struct event *retry_ev;     /* reconnect after backoff_ms */
    struct event *handshake_ev; /* the handshake's deadline */
    bool logged_down;           /* "down" already logged since the last "up" */
    bool logged_reply_error;    /* an error reply logged since the last good one */
    bool stopping;              /* worker stopping: no reconnect, close when idle */
    unsigned pending;           /* calls queued on the connection, detached or not */
    struct rl_link_stats stats; /* atomic counters (read by admin) */
    struct resolver *rs;        /* the worker's resolver, for a Redis host name */
    struct resolver_wait dns;   /* a lookup in flight (dns.e != NULL) */
    struct rl_call *free_calls; /* idle call records (call_free), reused by calls */
    unsigned nfree_calls;       /* at most RL_CALL_KEEP */
};

struct rl_call {
    struct rl_link *link;
    struct rl_call *next;  /* the link's free list, while idle */
    rl_call_done_fn *done; /* NULL once detached or answered */
    void *arg;
    struct event *deadline; /* timeout_ms after the call was queued; kept while idle */
    char *cmd;              /* formatted EVALSHA, kept for a NOSCRIPT retry */
    size_t cmd_len;
    size_t cmd_cap;   /* bytes allocated at cmd; kept while idle */
    int64_t start_us; /* monotonic, for the latency histogram */
    bool retried;     /* already re-sent once after NOSCRIPT */
};

static void link_connect(struct rl_link *l);
static void link_connect_to(struct rl_link *l, const char *host);
static void call_destroy(struct rl_call *c);

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

static void set_state(struct rl_link *l, enum rl_link_state st)
{
    __atomic_store_n(&l->state, (int)st, __ATOMIC_RELAXED);
}

enum rl_link_state rl_link_state(const struct rl_link *l)
{
    return (enum rl_link_state)__atomic_load_n(&l->state, __ATOMIC_RELAXED);
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
    if (l->stopping)
        goto close;
    if (!l->logged_down) {
        log_warn("redis %s: %s; retrying with backoff", l->cfg->address, why);
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

void rl_link_stop(struct rl_link *l)
{
    l->stopping = true;
    if (l->pending == 0 || rl_link_state(l) != RL_LINK_UP)
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
    set_state(l, RL_LINK_UP);
    if (l->logged_down)
        log_info("redis %s: connected", l->cfg->address);
    l->logged_down = false;
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
    if (rc == REDIS_OK)
        rc = redisAsyncCommand(ac, script_loaded_cb, l, "SCRIPT LOAD %s", l->script);
    return rc == REDIS_OK ? 0 : -1;
}

bool rl_redis_host_is_name(const struct fg_redis *c)
{
    unsigned char a[sizeof(struct in6_addr)];

    return c->unix_path == NULL && c->host != NULL && inet_pton(AF_INET, c->host, a) != 1 &&
           inet_pton(AF_INET6, c->host, a) != 1;
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

    if (!rl_redis_host_is_name(c) || l->rs == NULL || strlen(c->host) >= sizeof(name)) {
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
    if (l->retry_ev == NULL || l->handshake_ev == NULL) {
        rl_link_free(l);
        return NULL;
    }
    link_connect(l);
    return l;
}

void rl_link_free(struct rl_link *l)
{
    if (l == NULL)
        return;
    resolver_cancel(&l->dns);
    if (l->ac != NULL) {
        redisAsyncContext *ac = l->ac;
        l->ac = NULL;
        redisAsyncFree(ac); /* answers every pending call with NULL */
    }
    while (l->free_calls != NULL) { /* after the answers above: they come back here */
        struct rl_call *c = l->free_calls;
        l->free_calls = c->next;
        call_destroy(c);
    }
    if (l->retry_ev)
        event_free(l->retry_ev);
    if (l->handshake_ev)
        event_free(l->handshake_ev);
    free(l);
}

/* ---- calls ---------------------------------------------------------------- */

static void call_deadline_cb(evutil_socket_t fd, short what, void *arg);

static void call_destroy(struct rl_call *c)
{
    if (c->deadline)
        event_free(c->deadline);
    free(c->cmd);
    free(c);
}

/* An idle call record of L: from its free list, or a new one with its
 * deadline timer. NULL when out of memory. */
static struct rl_call *call_get(struct rl_link *l)
{
    struct rl_call *c = l->free_calls;

    if (c != NULL) {
        l->free_calls = c->next;
        l->nfree_calls--;
        c->next = NULL;
        return c;
    }
    if ((c = calloc(1, sizeof(*c))) == NULL)
        return NULL;
    c->link = l;
    if ((c->deadline = evtimer_new(l->base, call_deadline_cb, c)) == NULL) {
        call_destroy(c);
        return NULL;
    }
    return c;
}

/* The call is over (answered, or hiredis let go of it): back to the free
 * list, or freed when the list is full. Nothing may refer to C afterwards. */
static void call_free(struct rl_call *c)
{
    struct rl_link *l = c->link;

    evtimer_del(c->deadline);
    c->done = NULL;
    c->arg = NULL;
    c->retried = false;
    c->cmd_len = 0;
    if (l->nfree_calls >= RL_CALL_KEEP) {
        call_destroy(c);
        return;
    }
    c->next = l->free_calls;
    l->free_calls = c;
    l->nfree_calls++;
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

/* An error reply (script error, OOM, BUSY) is a failed call: counted, and
 * logged once until a call succeeds again. */
static void note_reply(struct rl_link *l, const redisReply *reply)
{
    if (reply->type != REDIS_REPLY_ERROR) {
        l->logged_reply_error = false;
        return;
    }
    count(&l->stats.errors, 1);
    if (!l->logged_reply_error)
        log_warn("redis %s: the rate-limit script failed: %.200s", l->cfg->address, reply->str);
    l->logged_reply_error = true;
}

/* hiredis's one callback for a call (see the ownership note on top). */
static void call_reply_cb(redisAsyncContext *ac, void *r, void *priv)
{
    struct rl_call *c = priv;
    struct rl_link *l = c->link;
    const redisReply *reply = r;

    if (reply != NULL && is_noscript(reply) && !c->retried && c->done != NULL) {
        /* Redis lost its script cache (restart, SCRIPT FLUSH): load it again
         * and retry once, in order on this connection. */
        c->retried = true;
        if (redisAsyncCommand(ac, NULL, NULL, "SCRIPT LOAD %s", l->script) == REDIS_OK &&
            redisAsyncFormattedCommand(ac, call_reply_cb, c, c->cmd, c->cmd_len) == REDIS_OK)
            return;
        reply = NULL;
    }
    if (c->done != NULL) {
        rl_call_done_fn *done = c->done;
        void *arg = c->arg;
        c->done = NULL;
        c->arg = NULL;
        evtimer_del(c->deadline);
        if (reply != NULL) {
            record_latency(l, mono_us() - c->start_us);
            l->backoff_ms = RL_BACKOFF_MIN_MS;
            note_reply(l, reply);
        } else {
            count(&l->stats.errors, 1);
        }
        done(arg, reply != NULL ? RL_CALL_OK : RL_CALL_ERROR, reply);
    }
    call_free(c);
    if (--l->pending == 0 && l->stopping && l->ac == ac)
        link_close(l); /* hiredis frees it once this callback returns */
}

/* No reply in timeout_ms: the request goes on without it, and the link is
 * treated as failed (a stalled Redis would otherwise hold every later call
 * for the same time). Freeing the connection frees this record too. */
static void call_deadline_cb(evutil_socket_t fd, short what, void *arg)
{
    struct rl_call *c = arg;
    struct rl_link *l = c->link;
    rl_call_done_fn *done = c->done;
    void *done_arg = c->arg;

    c->done = NULL;
    c->arg = NULL;
    if (done != NULL)
        done(done_arg, RL_CALL_TIMEOUT, NULL);
    if (l->ac != NULL)
        link_fail(l, "call timed out");
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

/*
 * The command ARGV (ARGC strings of ARGVLEN bytes) in RESP, as
 * redisFormatCommandArgv would write it, into C's buffer, which grows only
 * when too small (a reused record has room for any command of its worker).
 * 0, or -1 when out of memory.
 */
static int call_format(struct rl_call *c, int argc, const char **argv, const size_t *argvlen)
{
    size_t need = 1 + dec_digits((size_t)argc) + 2 + 1; /* and snprintf's NUL */

    for (int i = 0; i < argc; i++)
        need += 1 + dec_digits(argvlen[i]) + 2 + argvlen[i] + 2;
    if (need > c->cmd_cap) {
        char *grown = realloc(c->cmd, need);
        if (grown == NULL)
            return -1;
        c->cmd = grown;
        c->cmd_cap = need;
    }
    size_t len = (size_t)snprintf(c->cmd, need, "*%d\r\n", argc);
    for (int i = 0; i < argc; i++) {
        len += (size_t)snprintf(c->cmd + len, need - len, "$%zu\r\n", argvlen[i]);
        memcpy(c->cmd + len, argv[i], argvlen[i]);
        len += argvlen[i];
        memcpy(c->cmd + len, "\r\n", 2);
        len += 2;
    }
    c->cmd_len = len;
    return 0;
}

struct rl_call *rl_link_eval(struct rl_link *l, int nkeys, int nargs, const char **argv,
                             const size_t *argvlen, rl_call_done_fn *done, void *arg)
{
    const char *av[RL_MAX_ARGS];
    size_t al[RL_MAX_ARGS];
    char nk[16];
    int argc = 3 + nkeys + nargs;

    if (rl_link_state(l) != RL_LINK_UP || l->ac == NULL || argc > RL_MAX_ARGS)
        return NULL;
    av[0] = "EVALSHA", al[0] = 7;
    av[1] = l->sha, al[1] = 40;
    al[2] = (size_t)snprintf(nk, sizeof(nk), "%d", nkeys), av[2] = nk;
    memcpy(av + 3, argv, (size_t)(nkeys + nargs) * sizeof(*av));
    memcpy(al + 3, argvlen, (size_t)(nkeys + nargs) * sizeof(*al));
    struct rl_call *c = call_get(l);
    if (c == NULL)
        return NULL;
    if (call_format(c, argc, av, al) < 0) {
        call_free(c);
        return NULL;
    }
    c->start_us = mono_us();
    if (redisAsyncFormattedCommand(l->ac, call_reply_cb, c, c->cmd, c->cmd_len) != REDIS_OK) {
        call_free(c);
        return NULL;
    }
    l->pending++;
    c->done = done;
    c->arg = arg;
    timer_in(c->deadline, l->cfg->timeout_ms);
    return c;
}

/* The deadline stays armed: a detached call that Redis never answers still
 * marks the link failed, so a stalled Redis is noticed and a stopping worker
 * is not held open by a call nobody waits for. */
void rl_call_detach(struct rl_call *c)
{
    c->done = NULL;
    c->arg = NULL;
}
