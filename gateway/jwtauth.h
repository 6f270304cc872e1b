/*
 * jwtauth.h - the JWT request stage: access tokens verified at the edge.
 *
 * A route's auth mode decides what happens:
 *
 *   none      the token is ignored, never verified; the request is anonymous
 *   optional  no token: anonymous; a token: verified, and invalid -> 401
 *   required  no token or an invalid one -> 401
 *
 * The token comes from "Authorization: Bearer" (RFC 6750 section 2.1) or,
 * when jwt.cookie is set and no Authorization header was sent, from that
 * cookie. Verification follows RFC 8725 (JWT BCP): the header's alg must be
 * the configured HMAC exactly, a key is always used, crit and key-location
 * headers are refused, kid selects a key by exact match, and the claims
 * (exp, nbf, iat, iss, aud, token type) are checked by flowgate itself.
 *
 * Verified tokens are cached per worker, keyed by the whole token, so a
 * client repeating its token costs no HMAC and no JSON parse; exp is
 * rechecked on every use.
 */
#ifndef FG_JWTAUTH_H
#define FG_JWTAUTH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>
#include <sys/types.h>

#include <jansson.h>

#include "cfg.h"
#include "stage.h"
#include "worker.h"

/* Largest identity values kept in a request (sub, tier claim). A token whose
 * sub or tier does not fit is refused rather than truncated: a truncated
 * identity could name another user. */
#define JWTAUTH_USER_MAX 256
#define JWTAUTH_TIER_MAX 64

/* Upstream header lines rendered from forward_claims: at most this much. */
#define JWTAUTH_HEADERS_MAX 2048

/*
 * The outcome of finding and verifying a token. Every value but
 * JWTAUTH_OK and JWTAUTH_MISSING is a rejection reason: the label of
 * flowgate_jwt_rejections_total{reason} and the access log's error field.
 * The client is never told which one.
 */
enum jwtauth_result {
    JWTAUTH_OK = 0,             /* verified */
    JWTAUTH_MISSING = 1,        /* no Authorization header, no token cookie */
    JWTAUTH_BAD_SCHEME = 2,     /* Authorization is not exactly one Bearer token */
    JWTAUTH_AMBIGUOUS = 3,      /* two Authorization headers or two token cookies */
    JWTAUTH_TOO_LONG = 4,       /* longer than max_token_bytes */
    JWTAUTH_MALFORMED = 5,      /* not base64url.base64url.base64url */
    JWTAUTH_BAD_HEADER = 6,     /* JOSE header not a JSON object / bad member types */
    JWTAUTH_BAD_ALG = 7,        /* alg is not the configured algorithm */
    JWTAUTH_CRIT = 8,           /* crit present (RFC 7515 section 4.1.11) */
    JWTAUTH_KEY_HEADER = 9,     /* jku, jwk, x5u or x5c present (RFC 8725 section 3.10) */
    JWTAUTH_UNKNOWN_KID = 10,   /* kid names no configured key */
    JWTAUTH_BAD_SIGNATURE = 11, /* no configured key produced the signature */
    JWTAUTH_BAD_PAYLOAD = 12,   /* claims not a JSON object */
    JWTAUTH_NO_EXP = 13,        /* exp absent while require_exp */
    JWTAUTH_BAD_TIME = 14,      /* exp, nbf or iat present but not a number */
    JWTAUTH_EXPIRED = 15,       /* exp passed (beyond leeway) */
    JWTAUTH_NOT_YET = 16,       /* nbf in the future (beyond leeway) */
    JWTAUTH_IAT_FUTURE = 17,    /* iat in the future (beyond leeway) */
    JWTAUTH_BAD_ISSUER = 18,    /* iss differs from jwt.issuer */
    JWTAUTH_BAD_AUDIENCE = 19,  /* aud does not contain jwt.audience */
    JWTAUTH_BAD_TYPE = 20,      /* type_claim differs from token_type (a refresh token) */
    JWTAUTH_BAD_SUBJECT = 21,   /* sub absent, not a string, too long or not printable */
    JWTAUTH_BAD_CLAIM = 22,     /* tier or a forwarded claim unusable as a header value */
    JWTAUTH_INTERNAL = 23,      /* out of memory, crypto failure */
    JWTAUTH__COUNT
};

/* The reason label ("expired", "bad_alg", ...). */
const char *jwtauth_result_str(enum jwtauth_result res);

/* A verified identity, owned by the caller's buffers (no pointer into the
 * token or a cache entry survives the call). */
struct jwtauth_identity {
    char user[JWTAUTH_USER_MAX]; /* sub, NUL-terminated */
    size_t user_len;
    char tier[JWTAUTH_TIER_MAX]; /* tier claim, "" when absent */
    size_t tier_len;
    char headers[JWTAUTH_HEADERS_MAX]; /* "Name: value\r\n" per forwarded claim */
    size_t headers_len;
    int64_t deadline;  /* first second refused: ceil(exp + leeway) */
    bool has_deadline; /* false when the token has no exp */
};

/* ---- pieces, exposed for the unit tests and the fuzzer ------------------ */

/*
 * The token of an Authorization value (RFC 6750 section 2.1):
 * "Bearer" (any case), one or more SP, then a b64token with nothing after.
 * A tab, a second word or another scheme: -1. On success the token is a
 * slice of VALUE.
 */
int jwtauth_bearer(const char *value, size_t len, const char **tok, size_t *tok_len);

/*
 * The value of cookie NAME in a Cookie header value (RFC 6265 section 4.2.1:
 * "a=b; c=d"). Returns 1 and the slice when found once, 0 when absent, -1
 * when it appears twice (which token was meant is unknowable).
 */
int jwtauth_cookie(const char *value, size_t len, const char *name, const char **tok,
                   size_t *tok_len);

/*
 * The compact JWS shape, checked before any decoding: at most MAX bytes,
 * only base64url characters and exactly two dots, the header and payload
 * non-empty. Padding '=' is refused (RFC 7515 section 2). Returns
 * JWTAUTH_OK, JWTAUTH_TOO_LONG or JWTAUTH_MALFORMED.
 */
enum jwtauth_result jwtauth_shape(const char *tok, size_t len, size_t max);

/*
 * Strict unpadded base64url decode (RFC 4648 section 5) into OUT (room for
 * len * 3 / 4 bytes). Non-zero trailing bits are refused, so one value has
 * one spelling. Returns the decoded length or -1.
 */
ssize_t jwtauth_b64url_decode(const char *in, size_t len, unsigned char *out);

/*
 * Check the JOSE header object (RFC 7515 section 4.1, RFC 8725 sections
 * 3.1 and 3.10) and choose the key: the key named by kid, or with no kid
 * *FIRST = 0 and *COUNT = nkeys (each to be tried in order).
 */
enum jwtauth_result jwtauth_check_header(const struct fg_jwt *jc, json_t *hdr, size_t *first,
                                         size_t *count);

/*
 * The registered and configured claim checks (RFC 7519 section 4.1) at time
 * NOW, and the identity extraction into ID. CLAIMS is the payload object.
 */
enum jwtauth_result jwtauth_check_claims(const struct fg_jwt *jc, json_t *claims, time_t now,
                                         struct jwtauth_identity *id);

/*
 * The whole verification of token TOK (shape already checked or not): header,
 * signature with the configured key(s), claims. Fills ID on JWTAUTH_OK.
 */
enum jwtauth_result jwtauth_verify(const struct fg_jwt *jc, const char *tok, size_t len, time_t now,
                                   struct jwtauth_identity *id);

/* ---- the per-worker cache of verified tokens ---------------------------- */

struct jwtauth_cache;

/* A cache of up to NENTRIES verified tokens (rounded to a power of two),
 * valid for the configuration CFG (a reference is held). NULL on OOM. */
struct jwtauth_cache *jwtauth_cache_new(size_t nentries);
void jwtauth_cache_free(struct jwtauth_cache *cache); /* NULL is fine */

/*
 * Verify TOK through CACHE: a hit whose exp still holds at NOW copies the
 * stored identity; a miss verifies and stores the success. A cache built for
 * another configuration snapshot is emptied first. CACHE may be NULL (no
 * caching). HIT, when not NULL, says whether the cache answered.
 */
enum jwtauth_result jwtauth_cached_verify(struct jwtauth_cache *cache, struct fg_config *cfg,
                                          const char *tok, size_t len, time_t now,
                                          struct jwtauth_identity *id, bool *hit);

/* The request stage (stage.c). */
extern const struct stage jwtauth_stage;

#endif
