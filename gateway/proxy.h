/*
 * proxy.h - forward a request to its upstream and stream the response back.
 */
#ifndef FG_PROXY_H
#define FG_PROXY_H

struct conn;

/* All stages passed: connect (or reuse) and forward the current request. */
void proxy_start(struct conn *c);

/* The client sent more bytes / drained its output: move what can move. */
void proxy_client_readable(struct conn *c);
void proxy_client_writable(struct conn *c);

/* A WebSocket tunnel (CONN_TUNNEL): move what can move both ways; the
 * client closed its side; no byte moved for the idle bound. */
void proxy_tunnel_pump(struct conn *c);
void proxy_tunnel_client_eof(struct conn *c);
void proxy_tunnel_timeout(struct conn *c);

/* The client connection is going away: drop the upstream link. */
void proxy_abort(struct conn *c);

/* Watermarks shared by both directions. */
#define PROXY_READ_HIGH (64 * 1024)   /* stop reading a side holding this much */
#define PROXY_WRITE_HIGH (256 * 1024) /* stop feeding a side with this much queued */
#define PROXY_WRITE_LOW (64 * 1024)   /* resume feeding below this */

#endif
