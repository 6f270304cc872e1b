/*
 * req.h - one request, from its parsed head to its one finish.
 *
 * The request engine owns what happens between a complete head and the
 * access-log line: the head is taken and parsed, the target normalised,
 * the route chosen, the stages run (stage.h), and then either flowgate
 * answers or the request goes upstream (proxy.c). Every request ends in
 * req_finish(), exactly once, whether its response went out whole or the
 * client, the upstream or a timeout cut it: that is where it is logged and
 * counted, and where whatever it still holds (a waiting stage, an upstream
 * link, a held pool) is let go.
 *
 *   STAGES --answer--> SENDING --last byte out--> req_finish(SENT)
 *     |  (a stage may WAIT: Redis, DNS)   ^
 *     +--all passed--> UPSTREAM ----------+ (response complete)
 *                         |--101--> TUNNEL --a side closed--> SENDING
 *   any state --connection gone / timeout / shutdown--> req_finish(reason)
 *
 * A request reaches its connection only through struct req_conn_ops (send
 * what the output holds, pause and resume reading, a deadline, done, close),
 * so that a carrier other than an HTTP/1.1 connection (an HTTP/2 stream)
 * can carry the same requests.
 */
#ifndef FG_REQ_H
#define FG_REQ_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/time.h>
#include <netinet/in.h>

#include <event2/buffer.h>

#include "cfg.h"
#include "h1.h"
#include "resolver.h"
#include "route.h"
#include "stage.h"

struct worker;
struct wsnap;
struct upconn;
struct upstream_pool;
struct req;

enum req_state {
    REQ_STAGES = 0,   /* stages running, or one waiting */
    REQ_UPSTREAM = 1, /* forwarded: request going up, response coming down */
    REQ_TUNNEL = 2,   /* WebSocket: bytes relayed both ways as they are */
    REQ_SENDING = 3,  /* the response is complete in the output; its last bytes go out */
    REQ_DONE = 4,     /* finished: logged and counted */
};
const char *req_state_str(enum req_state st);

/* The request body, as read from the client. */
enum req_body {
    BODY_NONE = 0,    /* no body, or all of it read */
    BODY_PENDING = 1, /* body bytes still to come */
};

/* How far the response got towards the client. */
enum req_resp {
    RESP_NONE = 0,    /* nothing sent yet (an error answer is still possible) */
    RESP_STARTED = 1, /* its head went out: a failure can only cut it */
};

/* How a request ended (req_finish). */
enum req_end {
    REQ_END_SENT = 0,          /* the response's last byte went to the socket */
    REQ_END_CLIENT_CLOSED = 1, /* the client went away first */
    REQ_END_SEND_TIMEOUT = 2,  /* the client stopped reading (limits.send_timeout_ms) */
    REQ_END_SHUTDOWN = 3,      /* cut by the shutdown timeout */
    REQ_END_ABORTED = 4,       /* cut by flowgate: the reason is already in error_code */
};
const char *req_end_str(enum req_end how);

/* What a request needs of the connection that carries it. */
struct req_conn_ops {
    void (*hold)(void *conn);    /* around callbacks that may end the connection */
    void (*release)(void *conn);
    void (*flush)(void *conn);   /* send what the output holds */
    void (*pause_read)(void *conn);
    void (*resume_read)(void *conn);
    void (*set_timer)(void *conn, uint32_t ms); /* the request's deadline (body, tunnel) */
    void (*clear_timer)(void *conn);
    size_t (*pending_out)(void *conn); /* bytes not yet taken by the socket */
    /* The response is complete in the output: req_finish(SENT) comes back
     * once it is out, then the carrier serves the next request or closes. */
    void (*done)(void *conn);
    /* End the connection: FLUSH sends what the output holds first (a cut
     * response keeps its bytes). The carrier then finishes the request. */
    void (*close)(void *conn, bool flush);
    const char *(*tls_version)(void *conn); /* for the log; NULL when plain */
    const char *(*tls_sni)(void *conn);     /* the server name asked for, or NULL */
};

/* Per-request state; in a reqbuf, reset (req_reset) between requests. */
struct reqbuf;

struct req {
    /* Set by the carrier (req_begin) */
    const struct req_conn_ops *ops;
    void *conn;                   /* the carrier's connection, ops' argument */
    struct evbuffer *in, *out;    /* the client's bytes in, the response out */
    struct worker *w;
    struct wsnap *snap;           /* the configuration this request runs on */
    struct fg_config *cfg;        /* snap->cfg */
    const char *peer_ip;          /* the connection's peer (the carrier's) */
    const struct sockaddr *peer;
    int local_port;               /* the listener's port, for Host checks */
    bool tls;
    bool h2;                      /* carried by an HTTP/2 stream (h2.c) */
    struct reqbuf *rb;            /* the buffer this request lives in */
    /* Reset for every request */
    enum req_state state;
    enum req_body body;
    enum req_resp resp;
    struct h1_request h;          /* parsed head: slices into rb->head */
    size_t head_len;              /* bytes of this request's head */
    char *path;                   /* normalised path, in rb->head after the head */
    size_t path_len;
    size_t host_len;
    int host_port;                /* port in Host, -1 when none */
    const struct fg_route *route; /* chosen route (cfg->preview_route for previews), or NULL */
    bool preview;                 /* Host is a preview host; preview_name holds {name} */
    const char *sec_block;        /* the security header lines every response carries */
    size_t sec_block_len;
    bool no_tunnel;               /* a stage refused a WebSocket upgrade (it is not tunnelled) */
    struct upstream_pool *pool;   /* where it goes: the route's pool, or a preview's */
    bool pool_held;               /* POOL is held (upstream_pool_hold) until the finish */
    struct upconn *up;            /* the upstream link while UPSTREAM or TUNNEL */
    bool tunnel;                  /* a WebSocket upgrade that may be tunnelled */
    bool tunnel_half;             /* tunnel: the client closed; flushing to the upstream */
    bool up_eof;                  /* the upstream closed; drain what it sent */
    bool expect_sent;             /* "100 Continue" already written */
    bool close_after;             /* close the connection after this response */
    const char *xff_prior;        /* trusted proxy's X-Forwarded-For list, or NULL */
    size_t xff_prior_len;
    uint64_t body_seen;           /* raw body bytes read from the client */
    size_t stage_idx;             /* next stage to run */
    const struct stage *waiting;  /* the stage that waits, while one does */
    void *stage_data;             /* the waiting stage's own (its call record) */
    struct resolver_wait dns_wait; /* a stage waiting for a name */
    stage_resume_fn dns_resume;   /* ... and the continuation it was handed */
    enum fg_error answer;         /* set by stage_answer */
    size_t extra_len;
    size_t up_extra_len;
    bool up_extra_overflow;       /* a stage's header did not fit: refuse, never drop */
    /* for the log */
    int status;                   /* final status sent */
    int upstream_status;          /* the upstream's final status (0: none) */
    const char *error_code;       /* flowgate error code or reason */
    const char *ratelimit;        /* rate-limit outcome */
    uint64_t bytes_out;
    struct timeval start;         /* head complete */
    struct timeval up_start;      /* request started upstream */
    double upstream_ms;
    unsigned attempts;            /* upstream tries (a stale pooled connection is none) */
    uint64_t up_tried;            /* servers tried, bit i % 64 for server i (upstream_get) */
    /* identity, filled by the JWT stage; NULL when anonymous */
    const char *user;             /* points into user_buf */
    size_t user_len;
    const char *tier;             /* tier_buf, or "authenticated" when the token has none */
    /* The buffers below are not cleared between requests (req_reset clears
     * only what is above): each is valid up to its length field or NUL. */
    char scratch_begin[0];
    char host[ROUTE_HOST_MAX + 1]; /* normalised host, lowercase, no port (host_len) */
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
    char extra[2048];             /* response header lines added by stages (extra_len) */
    char up_extra[2048];          /* upstream request lines added by stages (up_extra_len) */
    struct req r;
    struct h1_header hdrs[];      /* max_headers + 1 */
};

/* A request buffer for up to MAX_HEADERS headers, from W's free list or new;
 * NULL when out of memory. req_put gives it back. */
struct req *req_get(struct worker *w, size_t max_headers);
void req_put(struct req *r);
void req_free_all(struct worker *w);

/* Start a request on R (held by the carrier, whose fields it set): reset,
 * start time, request id and client address for a request that may fail
 * before its head parses. */
void req_begin(struct req *r);

/* The head is the first HEAD_LEN bytes of R->in: take, parse, route, run. */
void req_head(struct req *r, size_t head_len);

/* The head could not be read (too large, malformed, timed out): answer E. */
void req_refuse(struct req *r, enum fg_error e, const char *why);

/* Events from the carrier, while the request is in flight. */
void req_readable(struct req *r);       /* more client bytes */
void req_writable(struct req *r);       /* client output drained to its low mark */
void req_client_eof(struct req *r);     /* the client closed its sending side */
void req_timeout(struct req *r);        /* the deadline set through ops->set_timer */

/* Answer R with flowgate's error E (respond.c writes it), then finish. */
void req_answer(struct req *r, enum fg_error e);

/* The response is complete in the output. */
void req_response_done(struct req *r);

/* Cut the request: the connection ends (FLUSH: after what the output holds). */
void req_abort(struct req *r, bool flush);

/* The one finish: let go of what R holds, log it, count it. Called by the
 * carrier exactly once per begun request. */
void req_finish(struct req *r, enum req_end how);

/* Does the connection end after R's response (RFC 9112 9.6)? */
bool req_ends_connection(const struct req *r);

/* Lines a stage wants on the final response, whoever writes it (rate-limit
 * headers, CORS, an answer's Allow or Retry-After), and on the upstream
 * request (verified claims). -1 when a line does not fit: the caller must
 * refuse rather than go on without it. */
int req_add_header(struct req *r, const char *line, size_t len);
int req_add_upstream_header(struct req *r, const char *line, size_t len);

static inline void req_hold(struct req *r)
{
    r->ops->hold(r->conn);
}

static inline void req_release(struct req *r)
{
    r->ops->release(r->conn);
}

static inline void req_flush(struct req *r)
{
    r->ops->flush(r->conn);
}

#endif
