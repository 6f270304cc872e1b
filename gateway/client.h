/*
 * client.h - who sent a request: the real client address behind trusted
 * proxies (X-Forwarded-For; the PROXY header is read by the connection),
 * and the request id (a trusted proxy's X-Request-Id, or a fresh one).
 */
#ifndef FG_CLIENT_H
#define FG_CLIENT_H

#include <stdbool.h>
#include <stddef.h>

struct req;

/* r->client_ip: the peer's address, until client_find knows better. */
void client_peer_address(struct req *r);

/* Is the request's peer one of trusted_proxies? */
bool client_peer_trusted(const struct req *r);

/*
 * The real client into r->client_ip: the peer, unless the peer is a trusted
 * proxy (PEER_TRUSTED), in which case X-Forwarded-For is walked from the
 * right, skipping trusted hops; the first untrusted address is the client.
 * The list as received is kept (r->xff_prior) to be extended upstream.
 */
void client_find(struct req *r, bool peer_trusted);

/* r->request_id: a trusted proxy's valid X-Request-Id (1-128 characters of
 * [A-Za-z0-9._-]), else a fresh one. */
void client_request_id(struct req *r, bool peer_trusted);

bool client_valid_request_id(const char *s, size_t n);

#endif
