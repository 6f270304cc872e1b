/*
 * resolver.h - per-worker asynchronous name resolution for preview upstreams
 * and upstream servers given by name.
 *
 * One evdns_base per worker (no blocking getaddrinfo on a worker). Names are
 * looked up first in resolver.hosts_file, parsed by this module into a table
 * that is re-read when the file changes (its mtime/size/inode looked at no
 * more than once a second); its answers are cached for RESOLVER_HOSTS_TTL_MS.
 * A name's every address is kept (up to RESOLVER_ADDRS_MAX; hosts lines in
 * file order). Other names go to DNS, A and AAAA queries at once: the answer
 * is the union of their addresses (A first) with the smaller TTL of the two,
 * cached for it (at most RESOLVER_MAX_TTL_MS). A name neither query found
 * (NXDOMAIN, no record) is cached for RESOLVER_NEGATIVE_TTL_MS, a failure
 * (timeout, SERVFAIL) with no address from the other query for
 * RESOLVER_FAILED_TTL_MS. Concurrent lookups of one name wait on one lookup.
 *
 *   entry: (none) --lookup--> PENDING --answer--> OK | NOT_FOUND | FAILED
 *                                ^                        |
 *                                +------expired, lookup---+
 */
#ifndef FG_RESOLVER_H
#define FG_RESOLVER_H

#include <stdbool.h>
#include <sys/socket.h>

#include <event2/event.h>

#include "cfg.h"

#define RESOLVER_HOSTS_TTL_MS 2000
#define RESOLVER_MAX_TTL_MS 300000
#define RESOLVER_MIN_TTL_MS 1000 /* a TTL of 0 still serves the requests of a second */
#define RESOLVER_NEGATIVE_TTL_MS 5000
#define RESOLVER_FAILED_TTL_MS 1000
#define RESOLVER_MAX_ENTRIES 4096 /* per worker; least recently used out */
#define RESOLVER_ADDRS_MAX 8      /* addresses kept of one answer */

enum resolver_status {
    RESOLVER_OK = 0,        /* an address */
    RESOLVER_NOT_FOUND = 1, /* NXDOMAIN, no A or AAAA record, not in hosts */
    RESOLVER_FAILED = 2,    /* timeout, SERVFAIL, no nameserver answered */
    RESOLVER_PENDING = 3,   /* the waiter's callback will be called */
};
const char *resolver_status_str(enum resolver_status st);

struct resolver;
struct resolver_entry;
struct resolver_wait;

/* Called once with the answer; ADDR (port 0) only for RESOLVER_OK. */
typedef void (*resolver_cb)(struct resolver_wait *wt, enum resolver_status st,
                            const struct sockaddr_storage *addr);

/* A lookup's waiter, embedded in its owner (a request). */
struct resolver_wait {
    struct resolver_entry *e; /* NULL when not waiting */
    struct resolver_wait *next, *prev;
    resolver_cb cb;
};

/* A name's answer moved away from OLD (changed address, or gone): the
 * caller's pools to OLD hold connections to what is no longer that MVP. */
typedef void (*resolver_moved_cb)(void *arg, const struct sockaddr_storage *old);

/* 0 or -1 with ERR. */
struct resolver *resolver_new(struct event_base *base, const struct fg_resolver *cfg,
                              resolver_moved_cb moved, void *arg, char *err, size_t errlen);
void resolver_free(struct resolver *rs); /* pending queries are dropped, no callback */

/* Do A and B hold the same IP address (the port aside)? */
bool resolver_same_ip(const struct sockaddr_storage *a, const struct sockaddr_storage *b);

/*
 * Look NAME (lowercase) up. A cached answer returns at once (RESOLVER_OK
 * fills *ADDR); otherwise RESOLVER_PENDING and WT->cb is called later from
 * the loop, unless resolver_cancel(WT) is called first.
 */
enum resolver_status resolver_lookup(struct resolver *rs, const char *name,
                                     struct resolver_wait *wt, resolver_cb cb,
                                     struct sockaddr_storage *addr);

/* Every address of a fresh answer, and when it goes stale. */
struct resolver_answer {
    struct sockaddr_storage addrs[RESOLVER_ADDRS_MAX]; /* port 0 */
    size_t naddrs;                                     /* 0 unless RESOLVER_OK */
    uint64_t expires_ms;                               /* monotonic (upstream_now_ms's clock) */
};

/* As resolver_lookup, with the whole answer (upstream servers given by
 * name), and an answer that expires within AHEAD_MS already looked up
 * again (a refresh before expiry): WT->cb's address is then the first
 * only; look up again for all. */
enum resolver_status resolver_lookup_all(struct resolver *rs, const char *name,
                                         struct resolver_wait *wt, resolver_cb cb,
                                         uint64_t ahead_ms, struct resolver_answer *ans);

/* Stop waiting: the callback will not be called. Idempotent. */
void resolver_cancel(struct resolver_wait *wt);

#endif
