/*
 * conn.h - a client connection and the request it is serving.
 *
 * A connection serves one request at a time (pipelined requests wait in its
 * input buffer). Its life:
 *
 *   accept -> [PROXY header] -> [TLS handshake] -> READ_HEAD --head parsed--> STAGES
 *      ^                          |  (400/431/408: ERROR -> CLOSING)
 *      |                          v
 *      |                       STAGES --answered--> RESPONDING
 *      |                          |--all passed--> PROXYING (upstream.c/proxy.c)
 *      |                          |                   |--101 to a WebSocket upgrade--> TUNNEL
 *      |                          v                   (bytes both ways until a side closes,
 *      |                                               then finish with close)
 *      +--keep-alive-- FLUSHING (response complete, last bytes going out; then
 *                      the log line) --close--> CLOSING -> LINGER -> freed
 *
 * A connection is never freed inside one of its own callbacks while something
 * up the stack may still touch it: conn_close() marks it and the free happens
 * once the reference count (held around callbacks) drops to zero.
 */
#ifndef FG_CONN_H
#define FG_CONN_H

#include <stdbool.h>
#include <stdint.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <event2/event.h>
#include <event2/event_struct.h>

#include "cfg.h"
#include "h1.h"
#include "io.h"
#include "resolver.h"
#include "stage.h"

struct worker;
struct listener;
struct upconn;
struct upstream_pool;

enum conn_state {
    CONN_PROXY_HEADER = 6, /* waiting for the balancer's PROXY header */
    CONN_HANDSHAKE = 0,  /* TLS handshake in progress */
    CONN_READ_HEAD = 1,  /* waiting for (the rest of) a request head */
    CONN_STAGES = 2,     /* running request stages (may wait) */
    CONN_PROXYING = 3,   /* request going upstream, response coming back */
    CONN_RESPONDING = 4, /* flowgate's own response being written */
    CONN_CLOSING = 5,    /* flushing the last bytes, then close */
    CONN_TUNNEL = 7,     /* WebSocket: bytes relayed both ways as they are */
    CONN_FLUSHING = 8,   /* the response is complete; its last bytes are going out */
    CONN_LINGER = 9,     /* write side shut; the client's last bytes are read and dropped */
};
const char *conn_state_str(enum conn_state st);

enum req_body_state {
    BODY_NONE = 0,      /* no body, or fully read */
    BODY_PENDING = 1,   /* body bytes still to come from the client */
};


/* Per-request state; in the connection's reqbuf, reset between requests. */
struct reqbuf;

struct req {
    struct conn *c;
    struct fg_config *cfg;        /* the connection's snapshot */
    struct h1_request h;          /* parsed head: slices into head_buf */
    struct reqbuf *rb;            /* the buffer this request lives in */
    size_t head_len;              /* bytes of this request's head */
    char *path;                   /* normalised path, in rb->head after the head (path_len) */
    size_t path_len;
    size_t host_len;
    const struct fg_route *route; /* chosen route (cfg->preview_route for previews), or NULL */
    struct upstream_pool *pool;   /* where it goes: the route's pool, or the preview's */
    bool pool_held;               /* a preview pool, held (upstream_pool_hold) until finish */
    bool preview;                 /* Host is a preview host; preview_name holds {name} */
    bool tunnel;                  /* a WebSocket upgrade that may be tunnelled */
    bool tunnel_half;             /* tunnel: the client closed; flushing to the upstream */
    int host_port;                /* port in Host, -1 when none */
    struct resolver_wait dns_wait; /* preview stage waiting for its upstream's address */
    const char *xff_prior;        /* trusted proxy's X-Forwarded-For list, or NULL */
    size_t xff_prior_len;
    enum req_body_state body;
    uint64_t body_seen;           /* raw body bytes read from the client */
    bool expect_sent;             /* "100 Continue" already written */
    bool response_started;        /* some response bytes reached the client */
    bool in_flight;               /* begun and not yet logged (conn_free logs it as cut) */
    bool close_after;             /* close the connection after this response */
    int status;                   /* final status sent, for the log */
    const char *error_code;       /* flowgate error code, for the log */
    const char *ratelimit;        /* rate-limit outcome (rl_outcome_str), for the log */
    uint64_t bytes_out;
    struct timeval start;         /* head complete */
    double upstream_ms;
    unsigned attempts;            /* upstream connection attempts */
    bool resp_head_done;          /* the upstream's final response head was relayed */
    bool up_eof;                  /* the upstream closed; drain what it sent */
    struct timeval up_start;      /* request started upstream */
    size_t stage_idx;             /* next stage to run */
    void (*stage_cancel)(void *); /* see stage_set_cancel */
    void *stage_cancel_arg;
    size_t extra_len;
    size_t up_extra_len;
    bool up_extra_overflow;       /* a stage's header did not fit: refuse, never drop */
    /* identity, filled by the JWT stage; NULL when anonymous */
    const char *user;             /* points into user_buf */
    size_t user_len;
    const char *tier;             /* tier_buf, or "authenticated" when the token has none */
    /* The buffers below are not cleared between requests (req_reset clears
     * only what is above): each is valid up to its length field or NUL. */
    char scratch_begin[0];
    char host[256];               /* normalised host, lowercase, no port (host_len) */
    char preview_name[64];        /* validated {name} when preview (NUL-terminated) */
    char request_id[129];         /* sent upstream and to the client (NUL-terminated) */
    char client_ip[INET6_ADDRSTRLEN]; /* the real client, after trusted proxies */
    char upstream_addr[64];       /* server used, for the log ("" = none) */
    char user_buf[256];           /* verified sub, copied: valid for the request's life */
    char tier_buf[64];            /* verified tier claim, copied */
};

/*
 * A request and its bulky parts: the per-request state, its head bytes (and
 * normalised path after them), the header slots and the stages' header
 * lines. A connection holds one only while a request is in flight; an idle
 * keep-alive connection gives it back to its worker's small free list, so
 * thousands of idle connections cost no request memory and a busy one
 * allocates nothing.
 */
struct reqbuf {
    struct reqbuf *next;          /* worker free list */
    char *head;                   /* head bytes, then the normalised path (owned) */
    size_t head_cap;
    size_t max_headers;           /* slots in hdrs */
    char extra[1024];             /* response header lines added by stages (extra_len) */
    char up_extra[2048];          /* upstream request lines added by stages (up_extra_len) */
    struct req r;
    struct h1_header hdrs[];      /* max_headers + 1 */
};

void reqbuf_put(struct worker *w, struct reqbuf *rb);
void reqbuf_free_all(struct worker *w);

struct conn {
    struct worker *w;
    struct conn *next, *prev;     /* worker->conns */
    int local_port;               /* the listener's port, for Host checks */
    uint64_t serial;
    int fd;
    struct io *io;                /* the socket, plain or TLS (NULL before conn_start) */
    bool tls;
    enum conn_state state;
    int refs;                     /* callbacks in flight; freed at 0 once closed */
    bool closed;                  /* conn_close() called */
    bool read_paused;             /* backpressure: read disabled */
    bool idle;                    /* between requests (keep-alive timer runs) */
    struct event timer;           /* header / body / keep-alive deadline */
    struct event *pp_ev;          /* PROXY header read, before the io exists */
    union {                       /* the client (or the balancer's PROXY address) */
        struct sockaddr sa;
        struct sockaddr_in in4;
        struct sockaddr_in6 in6;
    } peer;
    char peer_ip[INET6_ADDRSTRLEN];
    struct wsnap *snap;           /* snapshot this connection runs on (held); a keep-alive
                                     connection takes the worker's current one at its next
                                     request, a request keeps its own to the end */
    struct fg_config *cfg;        /* snap->cfg */
    struct upconn *up;            /* upstream link while PROXYING */
    unsigned requests;            /* served on this connection */
    struct req *r;                /* the request in flight (in a reqbuf); NULL while idle */
};

/* Take over an accepted socket (after the connection limit was checked). */
void conn_accept(struct listener *l, int fd, struct sockaddr *sa, socklen_t salen);

/* Hold a reference across a callback that may close C; release frees a
 * closed connection when the last reference goes. */
void conn_hold(struct conn *c);
void conn_release(struct conn *c);

/* Close now (or after flushing when FLUSH). Idempotent. */
void conn_close(struct conn *c, bool flush);

/* The response to the current request is complete: log, then keep-alive or close. */
void conn_finish_request(struct conn *c);

/* Read/write deadline helpers. */
void conn_set_timer(struct conn *c, uint32_t ms);
void conn_clear_timer(struct conn *c);

/* Re-enable or pause reading from the client (backpressure). */
void conn_pause_read(struct conn *c);
void conn_resume_read(struct conn *c);

/* The stages in force (later issues add theirs to this list). */
extern const struct stage *const conn_stages[];

#endif
