/*
 * preview.h - MVP preview hosts: isolation rules and the resolve stage.
 *
 * A request whose Host matches previews.host is routed (conn.c) to the
 * snapshot's synthetic preview route; the stages then run as for any route,
 * and the last one (preview_stage) resolves the MVP's upstream name and picks
 * the keep-alive pool of the address it resolves to. The isolation rules are
 * pure functions, applied by proxy.c to the request and response heads.
 */
#ifndef FG_PREVIEW_H
#define FG_PREVIEW_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

#include "stage.h"

/*
 * Copy the cookie-string VALUE (RFC 6265 5.4: "a=1; b=2") into OUT without
 * the cookies whose name is one of NAMES or EXTRA_NAME (cookie_name_is:
 * byte for byte, as browsers tell cookies apart). Pieces are trimmed and
 * joined with "; " in their original order; empty pieces go.
 * OUT needs 2 * VALUE_LEN bytes (a bare ';' becomes "; "). Returns the
 * length written; 0 means no cookie is left (drop the header).
 */
size_t preview_strip_cookies(const char *value, size_t value_len, char *const *names, size_t nnames,
                             const char *extra_name, char *out);

/*
 * May a preview at HOST (normalised, lowercase) set the cookie in this
 * Set-Cookie VALUE? Only when every Domain attribute (RFC 6265 5.2.3) is
 * empty or names HOST itself (a leading '.' ignored): a cookie for a parent
 * domain would reach every other preview and the platform itself.
 */
bool preview_set_cookie_allowed(const char *value, size_t value_len, const char *host,
                                size_t host_len);

/*
 * The upstream host name for the validated preview NAME: the template's
 * prefix, NAME, suffix, into OUT. -1 when it does not fit a DNS name
 * (253 bytes) or OUTCAP.
 */
ssize_t preview_upstream_host(const char *prefix, const char *name, const char *suffix, char *out,
                              size_t outcap);

/* The last stage: resolve a preview's upstream (may wait on DNS). */
extern const struct stage preview_stage;

#endif
