/*
 * proxy.h - forward a request to its upstream and stream the response back.
 */
#ifndef FG_PROXY_H
#define FG_PROXY_H

struct req;

/* All stages passed: connect (or reuse) and forward the current request. */
void proxy_start(struct req *r);

/* The client sent more bytes / drained its output: move what can move. */
void proxy_client_readable(struct req *r);
void proxy_client_writable(struct req *r);

/* A WebSocket tunnel (REQ_TUNNEL): move what can move both ways; the
 * client closed its side; no byte moved for the idle bound. */
void proxy_tunnel_pump(struct req *r);
void proxy_tunnel_client_eof(struct req *r);
void proxy_tunnel_timeout(struct req *r);

/* The request ends: drop the upstream link, whatever its state. */
void proxy_abort(struct req *r);

/* Watermarks shared by both directions. */
#define PROXY_READ_HIGH (64 * 1024)   /* stop reading a side holding this much */
#define PROXY_WRITE_HIGH (256 * 1024) /* stop feeding a side with this much queued */
#define PROXY_WRITE_LOW (64 * 1024)   /* resume feeding below this */

#endif
