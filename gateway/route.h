/*
 * route.h - choose a route by host and longest path prefix; preview hosts.
 */
#ifndef FG_ROUTE_H
#define FG_ROUTE_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

#include "cfg.h"

#define ROUTE_HOST_MAX 255 /* longest normalised host: a DNS name is at most 253 */

/*
 * Normalise a Host header value (or absolute-form authority) into OUT:
 * lowercased, port removed (*PORT set to it, or -1 when absent), IPv6
 * literals kept with their brackets. Refused (-1): empty, bytes outside
 * [a-z0-9.-] for names (or a malformed [v6] literal), a port that is not
 * 1..65535 digits, userinfo ('@'), or longer than OUTCAP - 1.
 * Returns the length of the host written (NUL-terminated).
 */
ssize_t route_host_normalize(const char *in, size_t len, char *out, size_t outcap, int *port);

/*
 * Does the route prefix PREFIX match PATH at a segment boundary?
 * "/api" and "/api/" both match "/api/x"; "/api" matches "/api" but never
 * "/apix"; "/" matches everything.
 */
bool route_prefix_match(const char *prefix, size_t plen, const char *path, size_t len);

/*
 * The route for a normalised host (lowercase, no port) and normalised path.
 * The host decides first (as nginx's server blocks do): the longest matching
 * prefix among the routes for exactly HOST; only when none of them matches,
 * the longest matching prefix among the host-less ("") routes.
 * NULL when none matches.
 */
const struct fg_route *route_match(const struct fg_config *cfg, const char *host,
                                   size_t host_len, const char *path, size_t path_len);

/*
 * Is HOST (normalised) a preview host? Writes the validated {name} into
 * NAME (NUL-terminated) and returns its length, or -1 when it is not a
 * preview host: the whole pattern must match, name of [a-z0-9-] with no
 * leading or trailing '-', and prefix+name (the DNS label) at most 63 bytes.
 */
ssize_t route_preview_name(const struct fg_previews *pv, const char *host, size_t host_len,
                           char *name, size_t namecap);

struct req;
struct stage;

/*
 * Route request R: a preview host first (the whole pattern, a valid {name},
 * and no port other than the listener's own), which takes the snapshot's
 * preview route and security headers (its pool is chosen once the name
 * resolves); else the route for its host and path, and that route's pool;
 * else none.
 */
void route_dispatch(struct req *r);

/* The stage that checks what routing found: 413 for a declared body over
 * the limit, 404 without a route, 405 (with Allow) for a method the route
 * does not list. Later stages always have a route. */
extern const struct stage route_stage;

#endif
