/*
 * h2.h - HTTP/2 to clients: a connection's nghttp2 server session, whose
 * streams are requests of the same kind as HTTP/1.1 ones (req.h).
 *
 * A client connection that chose "h2" by ALPN (conn.c) is handed to
 * h2_start(); the connection keeps its socket, peer, timers and closing
 * path, and passes its socket's events here (state CONN_H2). Each stream
 * owns a struct req with its own input and output buffers and carries it
 * through struct req_conn_ops:
 *
 *   HEADERS (fields checked) --END_HEADERS--> HTTP/1.1 head in r->in -> req_head
 *   DATA --> r->in (as sent, or wrapped as chunks) --window consumed as taken-->
 *   r->out (HTTP/1.1 head + body, as req.c and proxy.c write it)
 *        --> HEADERS (h2_head_to_nv) + DATA (payload only, deferred while empty)
 *   our END_STREAM sent --> req_finish(SENT); nghttp2 closes it --> freed
 *
 * nghttp2 callbacks only change buffers and flags; the engine runs from
 * h2_pump(), called once nothing holds the connection (the stack has
 * unwound), so no engine call ever happens inside nghttp2 and no request is
 * ever freed under a caller.
 *
 * The fuzzer drives the session glue through h2_fuzz_new(), h2_fuzz_feed()
 * and h2_fuzz_free() (below).
 */
#ifndef FG_H2_H
#define FG_H2_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <nghttp2/nghttp2.h>

struct conn;
struct h2_conn;
struct h1_response;
struct worker;

/* Why flowgate sent a GOAWAY (metrics label h2_goaway_str). */
enum h2_goaway {
    H2_GOAWAY_DRAIN = 0,    /* SIGTERM drain: shutdown notice, then the last stream id */
    H2_GOAWAY_IDLE = 1,     /* no stream for http2.idle_timeout_ms */
    H2_GOAWAY_CALM = 2,     /* over http2.max_resets_per_second (ENHANCE_YOUR_CALM) */
    H2_GOAWAY_STALL = 3,    /* output waited on a closed window for limits.send_timeout_ms */
    H2_GOAWAY_PROTOCOL = 4, /* nghttp2 ended the session (a connection error) */
    H2_GOAWAY__COUNT = 5,
};
const char *h2_goaway_str(int why);

/* Take over C (TLS done, "h2" chosen): its session, settings, callbacks.
 * 0, or -1 when out of memory (C is then the caller's to close). */
int h2_start(struct conn *c);

/* The connection's events, passed on by conn.c while in CONN_H2. */
void h2_readable(struct h2_conn *h2);
void h2_writable(struct h2_conn *h2);
void h2_timeout(struct h2_conn *h2); /* the connection's timer: idle bound */

/* Nothing holds the connection any more (conn_release): send what the
 * streams queued and run what their events asked for. */
void h2_unwound(struct h2_conn *h2);

/* Graceful end (worker stopping): shutdown notice now, the final GOAWAY a
 * round trip later; streams in flight finish, then the connection closes. */
void h2_drain(struct h2_conn *h2);

/* The connection is being freed: every stream's request is finished with
 * HOW (enum req_end) and freed, then the session. */
void h2_free(struct h2_conn *h2, int how);

/*
 * Turn an HTTP/1.1 response head HEAD[0..LEN) (as respond.c or proxy.c
 * wrote it; complete, CRLF CRLF included) into HTTP/2 fields: ":status",
 * then each field with its name lowercased in place (RFC 9113 8.2.1) and
 * the connection-specific ones dropped (RFC 9113 8.2.2: Connection,
 * Keep-Alive, Proxy-Connection, Transfer-Encoding, Upgrade, TE). RESP
 * (with headers/max_headers set by the caller) receives the parse, whose
 * parser then frames the body. STATUS_BUF (4 bytes) holds the status text.
 * Returns the number of entries written to NV (at most MAX_NV), or -1 when
 * the head does not parse or does not fit.
 */
int h2_head_to_nv(char *head, size_t len, bool head_request, struct h1_response *resp,
                  nghttp2_nv *nv, size_t max_nv, char status_buf[4]);

/*
 * Fuzzing entry points (tests/fuzz): an HTTP/2 connection over one end of a
 * socketpair, served as an https connection (the engine runs every stage)
 * without TLS under it. h2_fuzz_new takes W (initialised, with its
 * snapshot and event base; proxy_protocol off) and returns NULL when out of
 * resources. h2_fuzz_feed hands DATA to the session as if read from the
 * socket, runs what the loop has ready (EVLOOP_NONBLOCK), drops what
 * flowgate sent, and returns 0 while the connection is open, -1 once it
 * ended. h2_fuzz_free closes it (whatever feed returned) and frees F.
 */
struct h2_fuzz;
struct h2_fuzz *h2_fuzz_new(struct worker *w);
int h2_fuzz_feed(struct h2_fuzz *f, const uint8_t *data, size_t len);
void h2_fuzz_free(struct h2_fuzz *f);

#endif
