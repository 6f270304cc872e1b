/*
 * cookie.h - the one reader of cookie-strings (RFC 6265 5.4: "a=1; b=2").
 *
 * The JWT stage takes its token from a cookie and the preview rules strip
 * the platform's cookies: both read the Cookie header through cookie_next,
 * and both compare names with cookie_name_is, so the cookie the gateway
 * verifies and the ones it strips are found by the same rule.
 */
#ifndef FG_COOKIE_H
#define FG_COOKIE_H

#include <stdbool.h>
#include <stddef.h>

struct cookie {
    const char *pair; /* slice: the piece between ';', OWS trimmed, never empty */
    size_t pair_len;
    const char *name; /* slice: the pair to its first '=' (all of it without), OWS trimmed */
    size_t name_len;
    const char *value; /* slice: after the first '=' to the pair's end; empty without '=' */
    size_t value_len;
};

/*
 * The next non-empty piece of VALUE[*POS..LEN), split at every ';' (inside
 * DQUOTEs too, as browsers do), from *POS on; *POS moves past it. Returns
 * false when none is left. A piece without '=' is a cookie named by all of
 * it with an empty value: some servers read "session" alone that way, so a
 * stripper must see it under that name. Set-Cookie attributes (RFC 6265
 * 5.2) split the same way, from the first ';' on.
 */
bool cookie_next(const char *value, size_t len, size_t *pos, struct cookie *c);

/*
 * Is C named NAME? Byte for byte: user agents keep "session" and "Session"
 * as two cookies (RFC 6265 5.3 step 11 matches names exactly), so another
 * site may set one that differs from a platform cookie only in case. Such a
 * cookie is not the platform's: the JWT stage never takes a token from it
 * (RFC 6265bis made the __Host- prefix check case-insensitive because
 * servers that fold case let "__HOST-token" pass for "__Host-token"), and
 * a preview keeps it.
 */
bool cookie_name_is(const struct cookie *c, const char *name);

#endif
