/*
 * rl_sentinel.c - ask the Sentinels for the primary, and listen for
 * +switch-master (see rl_sentinel.h for the protocol).
 *
 * Ownership: s->q is the query connection and s->sub the subscribed one;
 * each is NULL when absent. Whoever clears one of them frees it (hiredis
 * defers that free while one of its callbacks runs, then calls every
 * pending callback with NULL and the disconnect callback), so every
 * callback first checks that its context is still s->q or s->sub: a
 * callback of a context let go of finds nothing to do.
 */
#include <ctype.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <arpa/inet.h>

#include <hiredis/async.h>
#include <hiredis/hiredis.h>
#include <hiredis/adapters/libevent.h>

#include "log.h"
#include "resolver.h"
#include "rl_sentinel.h"

struct rl_sentinel {
    struct event_base *base;    /* the worker's */
    const struct fg_redis *cfg; /* sentinels, master_name, sentinel_password, timeout_ms */
    struct resolver *rs;        /* the worker's, for Sentinel host names */
    rl_sentinel_fn *fn;         /* the link's */
    void *arg;
    redisAsyncContext *q;      /* the Sentinel being asked, or NULL */
    redisAsyncContext *sub;    /* subscribed to +switch-master, or NULL */
    int subscribed;            /* SUBSCRIBE confirmed on sub; atomic (read by admin) */
    bool asking;               /* a query runs */
    bool stopped;              /* rl_sentinel_stop: no more connections */
    bool logged_none;          /* "no Sentinel answered" logged since the last answer */
    size_t first;              /* the Sentinel asked first: the last that answered */
    size_t cur;                /* the one being asked */
    size_t tried;              /* Sentinels asked in this query */
    struct event *deadline_ev; /* timeout_ms for the one being asked */
    struct event *retry_ev;    /* the next query while no subscription stands */
    struct resolver_wait dns;  /* a Sentinel name being looked up */
};

static void ask_next(struct rl_sentinel *s);

static void timer_in(struct event *ev, uint32_t ms)
{
    struct timeval tv = {.tv_sec = ms / 1000, .tv_usec = (ms % 1000) * 1000};

    evtimer_add(ev, &tv);
}

static void set_subscribed(struct rl_sentinel *s, bool on)
{
    __atomic_store_n(&s->subscribed, (int)on, __ATOMIC_RELEASE);
}

bool rl_sentinel_subscribed(const struct rl_sentinel *s)
{
    return s != NULL && __atomic_load_n(&s->subscribed, __ATOMIC_ACQUIRE) != 0;
}

static const struct fg_sentinel *current(const struct rl_sentinel *s)
{
    return &s->cfg->sentinels[s->cur % s->cfg->nsentinels];
}

/* Let go of the query connection (its callbacks then find nothing). */
static void drop_query(struct rl_sentinel *s)
{
    redisAsyncContext *q = s->q;

    resolver_cancel(&s->dns);
    evtimer_del(s->deadline_ev);
    s->q = NULL;
    if (q != NULL)
        redisAsyncFree(q);
}

/* The Sentinel being asked failed (WHY): ask the next one. */
static void query_failed(struct rl_sentinel *s, const char *why)
{
    log_debug("redis sentinel %s: %s", current(s)->address, why);
    drop_query(s);
    s->cur = (s->cur + 1) % s->cfg->nsentinels;
    ask_next(s);
}

/* The query is over, with the primary's IP and PORT or (IP NULL) none. A
 * query with no subscription standing after it is made again later. */
static void query_over(struct rl_sentinel *s, const char *ip, int port)
{
    s->asking = false;
    if (s->sub == NULL)
        timer_in(s->retry_ev, RL_SENTINEL_RETRY_MS);
    if (ip == NULL && !s->logged_none)
        log_warn("redis sentinel: no Sentinel named the primary of \"%s\"; asking again",
                 s->cfg->master_name);
    s->logged_none = ip == NULL;
    s->fn(s->arg, ip != NULL ? RL_SENTINEL_FOUND : RL_SENTINEL_NONE, ip, port);
}

static void on_connect(const redisAsyncContext *ac, int status)
{
    struct rl_sentinel *s = ac->data;

    if (status != REDIS_OK && ac == s->q) {
        s->q = NULL; /* hiredis frees it after this callback */
        query_failed(s, ac->errstr[0] ? ac->errstr : "connect failed");
    }
}

static void on_disconnect(const redisAsyncContext *ac, int status)
{
    struct rl_sentinel *s = ac->data;

    if (ac == s->q) {
        s->q = NULL; /* hiredis frees it after this callback */
        query_failed(s, ac->errstr[0] ? ac->errstr : "connection closed");
    } else if (ac == s->sub) {
        s->sub = NULL;
        set_subscribed(s, false);
        log_warn("redis sentinel: lost the +switch-master subscription; asking again");
        if (!s->asking)
            timer_in(s->retry_ev, RL_SENTINEL_RETRY_MS);
    }
}

static void auth_cb(redisAsyncContext *ac, void *r, void *priv)
{
    struct rl_sentinel *s = priv;
    const redisReply *reply = r;

    if (reply != NULL && ac == s->q && reply->type == REDIS_REPLY_ERROR) {
        char why[160];
        snprintf(why, sizeof(why), "AUTH refused: %.120s", reply->str);
        query_failed(s, why);
    }
}

/* The answer to SENTINEL get-master-addr-by-name: [ip, port], or nil when
 * this Sentinel does not monitor the name. The connection that answered
 * becomes the subscription unless one stands already. */
static void addr_cb(redisAsyncContext *ac, void *r, void *priv)
{
    struct rl_sentinel *s = priv;
    const redisReply *reply = r;
    char ip[INET6_ADDRSTRLEN];
    char *end;

    if (reply == NULL || ac != s->q)
        return;
    if (reply->type != REDIS_REPLY_ARRAY || reply->elements != 2 ||
        reply->element[0]->type != REDIS_REPLY_STRING ||
        reply->element[1]->type != REDIS_REPLY_STRING || reply->element[0]->len >= sizeof(ip)) {
        query_failed(s, reply->type == REDIS_REPLY_ERROR ? reply->str : "does not know the name");
        return;
    }
    long port = strtol(reply->element[1]->str, &end, 10);
    if (*end != '\0' || port < 1 || port > 65535) {
        query_failed(s, "bad port in its answer");
        return;
    }
    memcpy(ip, reply->element[0]->str, reply->element[0]->len + 1);
    s->first = s->cur;
    evtimer_del(s->deadline_ev);
    if (s->sub == NULL) {
        s->sub = s->q; /* its SUBSCRIBE follows: see message_cb */
        s->q = NULL;
        evtimer_del(s->retry_ev);
    } else {
        drop_query(s);
    }
    query_over(s, ip, (int)port);
}

int rl_sentinel_parse_switch(const char *msg, const char *name, char *ip, size_t iplen, int *port)
{
    size_t nl = strlen(name);
    char newip[INET6_ADDRSTRLEN], oldip[INET6_ADDRSTRLEN];
    int oldport, n = 0;

    if (strncmp(msg, name, nl) != 0 || msg[nl] != ' ')
        return -1;
    if (sscanf(msg + nl + 1, "%45s %d %45s %d%n", oldip, &oldport, newip, port, &n) != 4 ||
        msg[nl + 1 + (size_t)n] != '\0' || *port < 1 || *port > 65535 || strlen(newip) >= iplen)
        return -1;
    memcpy(ip, newip, strlen(newip) + 1);
    return 0;
}

/* SUBSCRIBE's confirmation, then each +switch-master message. */
static void message_cb(redisAsyncContext *ac, void *r, void *priv)
{
    struct rl_sentinel *s = priv;
    const redisReply *reply = r;
    char ip[INET6_ADDRSTRLEN];
    int port;

    if (reply == NULL || ac != s->sub || reply->type != REDIS_REPLY_ARRAY || reply->elements != 3 ||
        reply->element[0]->type != REDIS_REPLY_STRING)
        return;
    if (strcasecmp(reply->element[0]->str, "subscribe") == 0) {
        set_subscribed(s, true);
        return;
    }
    if (strcasecmp(reply->element[0]->str, "message") != 0 ||
        reply->element[2]->type != REDIS_REPLY_STRING ||
        rl_sentinel_parse_switch(reply->element[2]->str, s->cfg->master_name, ip, sizeof(ip),
                                 &port) != 0)
        return;
    s->fn(s->arg, RL_SENTINEL_SWITCH, ip, port);
}

/* Connect to the Sentinel being asked, at IP, with the query and the
 * subscription pipelined behind its AUTH. */
static void query_connect(struct rl_sentinel *s, const char *ip)
{
    const struct fg_redis *c = s->cfg;
    redisAsyncContext *ac = redisAsyncConnect(ip, current(s)->port);
    int rc;

    if (ac == NULL || ac->err) {
        if (ac != NULL)
            redisAsyncFree(ac);
        query_failed(s, "cannot connect");
        return;
    }
    ac->data = s;
    s->q = ac;
    rc = redisLibeventAttach(ac, s->base);
    if (rc == REDIS_OK)
        rc = redisAsyncSetConnectCallback(ac, on_connect);
    if (rc == REDIS_OK)
        rc = redisAsyncSetDisconnectCallback(ac, on_disconnect);
    if (rc == REDIS_OK && c->sentinel_password != NULL)
        rc = redisAsyncCommand(ac, auth_cb, s, "AUTH %s", c->sentinel_password);
    if (rc == REDIS_OK)
        rc = redisAsyncCommand(ac, addr_cb, s, "SENTINEL get-master-addr-by-name %s",
                               c->master_name);
    if (rc == REDIS_OK)
        rc = redisAsyncCommand(ac, message_cb, s, "SUBSCRIBE +switch-master");
    if (rc != REDIS_OK)
        query_failed(s, "cannot set up the connection");
}

static void on_resolved(struct resolver_wait *wt, enum resolver_status st,
                        const struct sockaddr_storage *addr)
{
    struct rl_sentinel *s = (struct rl_sentinel *)((char *)wt - offsetof(struct rl_sentinel, dns));
    char ip[INET6_ADDRSTRLEN];

    if (st != RESOLVER_OK) {
        query_failed(s, resolver_status_str(st));
        return;
    }
    const void *a = addr->ss_family == AF_INET6
                        ? (const void *)&((const struct sockaddr_in6 *)addr)->sin6_addr
                        : (const void *)&((const struct sockaddr_in *)addr)->sin_addr;
    inet_ntop(addr->ss_family, a, ip, sizeof(ip));
    query_connect(s, ip);
}

/* Ask the Sentinel at s->cur, or end the query when each has been asked. A
 * host name is resolved first, through the worker's resolver (hiredis
 * would block the worker in getaddrinfo()). */
static void ask_next(struct rl_sentinel *s)
{
    const struct fg_sentinel *sn = current(s);
    unsigned char a[sizeof(struct in6_addr)];
    struct sockaddr_storage addr;
    char name[256];

    if (s->tried == s->cfg->nsentinels) {
        query_over(s, NULL, 0);
        return;
    }
    s->tried++;
    timer_in(s->deadline_ev, s->cfg->timeout_ms);
    if (inet_pton(AF_INET, sn->host, a) == 1 || inet_pton(AF_INET6, sn->host, a) == 1 ||
        s->rs == NULL || strlen(sn->host) >= sizeof(name)) {
        query_connect(s, sn->host);
        return;
    }
    for (size_t i = 0; (name[i] = (char)tolower((unsigned char)sn->host[i])) != '\0'; i++)
        ;
    enum resolver_status st = resolver_lookup(s->rs, name, &s->dns, on_resolved, &addr);
    if (st != RESOLVER_PENDING)
        on_resolved(&s->dns, st, &addr);
}

/* Starting from the loop keeps FN out of rl_sentinel_ask's caller. */
static void retry_cb(evutil_socket_t fd, short what, void *arg)
{
    struct rl_sentinel *s = arg;

    if (s->asking || s->stopped)
        return;
    s->asking = true;
    s->tried = 0;
    s->cur = s->first;
    ask_next(s);
}

static void deadline_cb(evutil_socket_t fd, short what, void *arg)
{
    query_failed(arg, "no answer in time");
}

void rl_sentinel_ask(struct rl_sentinel *s)
{
    if (!s->asking && !s->stopped)
        event_active(s->retry_ev, EV_TIMEOUT, 1);
}

void rl_sentinel_set_cfg(struct rl_sentinel *s, const struct fg_redis *cfg)
{
    s->cfg = cfg;
}

struct rl_sentinel *rl_sentinel_new(struct event_base *base, const struct fg_redis *cfg,
                                    struct resolver *rs, rl_sentinel_fn *fn, void *arg)
{
    struct rl_sentinel *s = calloc(1, sizeof(*s));

    if (s == NULL)
        return NULL;
    s->base = base;
    s->cfg = cfg;
    s->rs = rs;
    s->fn = fn;
    s->arg = arg;
    s->deadline_ev = evtimer_new(base, deadline_cb, s);
    s->retry_ev = evtimer_new(base, retry_cb, s);
    if (s->deadline_ev == NULL || s->retry_ev == NULL) {
        rl_sentinel_free(s);
        return NULL;
    }
    return s;
}

void rl_sentinel_stop(struct rl_sentinel *s)
{
    redisAsyncContext *sub;

    if (s == NULL || s->stopped)
        return;
    s->stopped = true;
    s->asking = false;
    evtimer_del(s->retry_ev);
    drop_query(s);
    sub = s->sub;
    s->sub = NULL;
    set_subscribed(s, false);
    if (sub != NULL)
        redisAsyncFree(sub);
}

void rl_sentinel_free(struct rl_sentinel *s)
{
    if (s == NULL)
        return;
    if (s->deadline_ev != NULL && s->retry_ev != NULL)
        rl_sentinel_stop(s);
    if (s->deadline_ev != NULL)
        event_free(s->deadline_ev);
    if (s->retry_ev != NULL)
        event_free(s->retry_ev);
    free(s);
}
