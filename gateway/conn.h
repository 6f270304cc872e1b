/*
 * conn.h - an HTTP/1.1 client connection: the socket, TLS, its deadline,
 * keep-alive and the lingering close. The request it carries is req.c's.
 *
 * A connection carries one request at a time (pipelined requests wait in
 * its input buffer). Its life:
 *
 *   accept -> [PROXY header] -> [TLS handshake] -> READ_HEAD --head--> REQUEST
 *                                     | ALPN "h2"
 *                                     +--> H2 (h2.c: streams) --session over--> CLOSING
 *                                                    ^                    |
 *                                   first byte: IDLE +<---keep-alive------+
 *                                    (the request's response sent)        | close after
 *                                                                         v
 *                                                  CLOSING (last bytes out) -> LINGER -> freed
 *
 * While in REQUEST the request's own state (req.h) says what the socket's
 * events mean; the connection passes them on (req_readable and friends).
 * A connection is never freed inside one of its own callbacks while
 * something up the stack may still touch it: conn_close() marks it and the
 * free happens once the reference count (held around callbacks) drops to
 * zero. A request still in flight then is finished (req_finish) with the
 * reason the connection ended.
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
#include "io.h"

struct worker;
struct listener;
struct req;
struct wsnap;
struct h2_conn;

enum conn_state {
    CONN_PROXY_HEADER = 0, /* waiting for the balancer's PROXY header */
    CONN_HANDSHAKE = 1,    /* TLS handshake in progress */
    CONN_READ_HEAD = 2,    /* waiting for (the rest of) a request head */
    CONN_REQUEST = 3,      /* a request is in flight (req.h) */
    CONN_CLOSING = 4,      /* flushing the last bytes, then close */
    CONN_LINGER = 5,       /* write side shut; the client's last bytes are read and dropped */
    CONN_IDLE = 6,         /* keep-alive between requests: no byte of the next one yet */
    CONN_H2 = 7,           /* HTTP/2 chosen by ALPN: the socket's events go to h2.c */
};
const char *conn_state_str(enum conn_state st);

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
    unsigned requests;            /* served on this connection */
    struct req *r;                /* the request in flight (in a reqbuf); NULL while idle */
    struct h2_conn *h2;           /* CONN_H2: the session and its streams (h2.c) */
};

/* Take over an accepted socket (after the connection limit was checked). */
void conn_accept(struct listener *l, int fd, struct sockaddr *sa, socklen_t salen);

/* Hold a reference across a callback that may close C; release frees a
 * closed connection when the last reference goes. */
void conn_hold(struct conn *c);
void conn_release(struct conn *c);

/* Close now (or after flushing when FLUSH). Idempotent. */
void conn_close(struct conn *c, bool flush);


#endif
