/*
 * upstream.h - connections to upstream servers: per-worker keep-alive pools,
 * round-robin over an upstream's servers, passive ejection of a failing
 * server, connect timeouts.
 *
 * A server's health, per worker (nginx's max_fails / fail_timeout):
 *
 *   UP --failed attempt--> fails+1 --fails == max_fails--> EJECTED
 *    ^  (a response head: fails = 0)                          |
 *    +------- fail_timeout_ms later: tried again; one more failure ejects it
 *             again, one response brings it back -------------+
 */
#ifndef FG_UPSTREAM_H
#define FG_UPSTREAM_H

#include <stdbool.h>
#include <stdint.h>

#include <event2/event.h>

#include "cfg.h"
#include "h1.h"
#include "io.h"

struct worker;
struct req;
struct upconn;

/*
 * One address a pool's requests go to, with its health, kept by one worker:
 * a server given as an address, or one address of a server given by name
 * (UPSTREAM_NAME_SLOTS slots each, filled from its resolver answer by
 * upname.c). Round-robin, keep-alive and ejection are per address.
 */
struct upstream_server_state {
    uint64_t down_until_ms; /* monotonic ms the ejection ends; 0 = never ejected. The worker's
                               own to write, with a relaxed atomic store: the admin reads it */
    uint32_t fails;         /* consecutive failed attempts; 0 after a response head */
    uint32_t nidle;         /* idle keep-alive connections to it */
    struct upconn *idle;    /* ... (LIFO) */
    const struct fg_sockaddr *sa; /* the address; NULL: a name's slot with none now */
    uint32_t gen;                 /* bumped when a name's slot changes address: what a
                                     connection to the old one shows says nothing of the new */
    uint32_t seq;                 /* (atomic) odd while upname.c rewrites the slot: main's
                                     thread reads it between two equal even values
                                     (upstream_slot_read) */
    uint32_t name;                /* a name's slot: the name's index among the upstream's */
};

/* A name's slot as another thread read it (upstream_slot_read). */
struct upstream_slot_view {
    struct sockaddr_storage ss; /* the address, with the name's port */
    socklen_t len;              /* its length for connect */
    char text[56];              /* "10.0.0.7:8080" */
    uint64_t down_until_ms;     /* its ejection by the worker */
};

/* Copy slot S of a worker's pool (main's thread: the admin, the health
 * checker), read between two equal even values of its seq. False when the
 * slot is empty or kept changing. */
bool upstream_slot_read(const struct upstream_server_state *s, struct upstream_slot_view *out);

#define UPSTREAM_NAME_SLOTS 8 /* addresses used of one name's answer */

struct upname;

struct upstream_pool {
    const struct fg_upstream *u;        /* config (the worker's snapshot), or &dyn_u */
    struct event_base *base;            /* the worker's loop */
    struct upstream_server_state *servers; /* address slots, in the servers' order: one for
                                           an address, UPSTREAM_NAME_SLOTS for a name */
    size_t nslots;
    size_t nlive;                       /* slots with an address */
    size_t first_live;                  /* the first of them (the one, when nlive == 1) */
    struct upname *names;               /* u->nnames of them (upname.c); NULL without */
    size_t next;                        /* round-robin cursor */
    uint32_t nidle;                     /* idle connections over every slot */
    /* Preview pools only (one per resolved address, see upstream_preview_pool). */
    struct upstream_dyn *dyn;           /* the worker's table; NULL for configured upstreams */
    struct upstream_pool *hnext;        /* hash chain in dyn */
    struct upstream_pool *lru_prev, *lru_next; /* most recently used first */
    uint32_t refs;                      /* its connections (any state) and the requests
                                           holding it (upstream_pool_hold) */
    bool forgotten;                     /* out of the table: freed when refs drops to 0 */
    bool retired;                       /* its snapshot was replaced: no connection is pooled */
    struct fg_upstream dyn_u;           /* one server: the address */
    struct fg_sockaddr dyn_server;
    struct upstream_server_state dyn_state;
    char dyn_text[64];                  /* "127.0.0.2:8080", for logs */
};

/* Preview pools: defaults, since no configuration names them. */
#define UPSTREAM_PREVIEW_CONNECT_MS 2000
#define UPSTREAM_PREVIEW_READ_MS 60000
#define UPSTREAM_PREVIEW_KEEPALIVE 32   /* idle connections per MVP address */
#define UPSTREAM_PREVIEW_IDLE_MAX 1024  /* idle preview connections per worker, in all */
#define UPSTREAM_PREVIEW_POOLS_MAX 4096 /* preview pools per worker; least recently used out */

enum upconn_state {
    UPCONN_CONNECTING = 0,
    UPCONN_ACTIVE = 1,  /* serving a request */
    UPCONN_IDLE = 2,    /* in the pool */
};

/* Why an exchange with an upstream failed before its response was complete:
 * the kind label of flowgate_upstream_errors_total, and for the first seven
 * the access log's error field too (upstream_fail_str()). */
enum upstream_fail {
    UP_FAIL_NONE = 0,            /* connected / no failure */
    UP_FAIL_REFUSED = 1,         /* connect refused */
    UP_FAIL_CONNECT_TIMEOUT = 2, /* no connect within connect_timeout_ms */
    UP_FAIL_ERROR = 3,           /* any other socket error, or no memory */
    UP_FAIL_CLOSED = 4,          /* closed or reset before a response head */
    UP_FAIL_BAD_RESPONSE = 5,    /* bytes that are not a response head, then closed */
    UP_FAIL_READ_TIMEOUT = 6,    /* read_timeout_ms without a byte, before or in the body */
    UP_FAIL_TRUNCATED = 7,       /* closed in the middle of the body */
    UP_FAIL_BAD_FRAMING = 8,     /* a body that breaks its chunked framing */
    UP_FAIL_DNS = 9,             /* a server's name gave no address (not found, no answer) */
    UP_FAIL__COUNT = 10,
};
const char *upstream_fail_str(enum upstream_fail f);

/* Called when a connect attempt finished: FAIL is UP_FAIL_NONE when
 * connected, else UP_FAIL_REFUSED, UP_FAIL_CONNECT_TIMEOUT or UP_FAIL_ERROR. */
typedef void (*upconn_ready_cb)(struct upconn *uc, enum upstream_fail fail, void *arg);

struct upconn {
    struct upstream_pool *pool;
    struct upconn *next_idle;
    size_t server;    /* its address: index into pool->servers */
    uint32_t gen;     /* that slot's gen when connected */
    const char *text; /* the address, for logs: the configuration's, or
                         text_buf for an address of a name */
    char text_buf[56];
    struct io *io;
    enum upconn_state state;
    bool reused;                      /* came from the pool */
    struct event *timer;              /* connect / read deadline */
    struct req *owner;                /* the request it serves, when ACTIVE */
    upconn_ready_cb ready_cb;
    void *ready_arg;
    struct h1_response resp;          /* parser of the response in flight */
    struct h1_header *hdrs;           /* header slots for resp */
    char *head_buf;                   /* response head bytes (owned) */
    size_t head_cap;
    unsigned served;                  /* requests served on it */
};

/* Pools for every upstream of CFG (cfg->nupstreams of them), on worker W's
 * loop: one set per configuration snapshot (struct wsnap). NULL when out of
 * memory. A retired set (its snapshot replaced by a reload) closes its idle
 * connections and pools no more; it is destroyed with its snapshot, once no
 * connection uses it. */
struct upstream_pool *upstream_pools_new(struct worker *w, const struct fg_config *cfg);
void upstream_pools_retire(struct upstream_pool *pools, size_t n);
void upstream_pools_destroy(struct upstream_pool *pools, size_t n);
void upstream_pools_free(struct worker *w);       /* the preview pools */
void upstream_pools_close_idle(struct worker *w); /* shutting down */

/*
 * Get a connection to one of POOL's addresses. The address comes first: the
 * next one, round-robin, that is neither ejected nor in *TRIED (the
 * addresses this request tried already: bit i % 64 for slot i); when every
 * one left is ejected, the one ejected longest ago. Its bit is then set in
 * *TRIED. Then an idle pooled connection to it (with ALLOW_POOLED; *READY
 * set true: usable now, CB is never called) or a new connect (*READY false:
 * CB runs from the loop when the connect ends). NULL when the pool has no
 * address or no socket could be made. The caller keeps the pointer so it
 * can upstream_close() a connect it no longer wants.
 */
struct upconn *upstream_get(struct upstream_pool *pool, upconn_ready_cb cb, void *arg,
                            bool allow_pooled, uint64_t *tried, bool *ready);

/* Done with UC after a complete exchange: pool it when KEEP, else close. */
void upstream_release(struct upconn *uc, bool keep);

/* Close and free (any state). */
void upstream_close(struct upconn *uc);

/* The server's address text ("127.0.0.1:9001"). */
static inline const char *upstream_server_text(const struct upconn *uc)
{
    return uc->text;
}

/* Slot I of P (a name's) now holds SA, or (NULL) nothing: its idle
 * connections are closed and its health starts afresh. */
void upstream_slot_set(struct upstream_pool *p, size_t i, const struct fg_sockaddr *sa);

/* An attempt on UC's server failed (refused, connect timeout or error,
 * closed before or in its response, bad response head, read timeout): one
 * more consecutive failure, and at max_fails the server is ejected for
 * fail_timeout_ms. upstream.c counts the connect's own failures. */
void upstream_server_failed(struct upconn *uc);

/* UC's server answered with a response head: its failures are forgotten and
 * an ejected server is back at once. Inline: every response passes here, and
 * almost always finds nothing to forget. */
void upstream_server_recovered(struct upconn *uc);
static inline void upstream_server_ok(struct upconn *uc)
{
    if (uc->pool->servers[uc->server].fails != 0)
        upstream_server_recovered(uc);
}

uint64_t upstream_now_ms(void);

/*
 * The keep-alive pool for a preview upstream at ADDR (address and port),
 * created on first use. Pools are per worker, bounded in number (the least
 * recently used goes, its idle connections closed) and share one bound on
 * idle connections. NULL when out of memory.
 */
struct upstream_pool *upstream_preview_pool(struct worker *w, const struct sockaddr_storage *addr);

/* A request keeps the pool it was given alive across retries, even when
 * the pool is evicted meanwhile. */
void upstream_pool_hold(struct upstream_pool *p);
void upstream_pool_release(struct upstream_pool *p);

/* Close the idle connections to ADDR (any port): no MVP is known there now. */
void upstream_preview_forget(struct worker *w, const struct sockaddr_storage *addr);

#endif
