/*
 * jwtauth.c - the JWT request stage (see jwtauth.h for the contract).
 *
 * Why the signature is checked here with OpenSSL and not by libjwt's
 * jwt_decode(): libjwt 1.10 takes the algorithm from the token's own header
 * and verifies nothing at all when it is given no key, offers no way to pin
 * the algorithm or pick a key by kid before it verifies, and hands claims
 * back only as a re-serialised JSON string (a second parse per request).
 * RFC 8725 section 3.1 wants the algorithm fixed by the verifier; that is
 * one HMAC (RFC 2104) over "header.payload" and a constant-time comparison
 * (CRYPTO_memcmp), with jansson parsing the two JSON objects once. libjwt
 * remains the independent oracle of the unit tests and the fuzz target:
 * tokens it signs must verify here, and every token accepted here must
 * verify with it.
 */
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>

#include "cookie.h"
#include "h1.h"
#include "hash.h"
#include "jwtauth.h"
#include "req.h"
#include "respond.h"
#include "wbuf.h"
#include "worker.h"

_Static_assert(sizeof(((struct req *)0)->user_buf) == JWTAUTH_USER_MAX, "user buffer size");
_Static_assert(sizeof(((struct req *)0)->tier_buf) == JWTAUTH_TIER_MAX, "tier buffer size");

/* Decoded header or payload up to this size live on the stack. */
#define JWTAUTH_STACK_JSON 4096

struct reason_desc {
    const char *label; /* metrics reason="..." */
    const char *log;   /* access log error field */
};

static const struct reason_desc reasons[JWTAUTH__COUNT] = {
    [JWTAUTH_OK] = {"ok", NULL},
    [JWTAUTH_MISSING] = {"missing", "jwt_missing"},
    [JWTAUTH_BAD_SCHEME] = {"bad_scheme", "jwt_bad_scheme"},
    [JWTAUTH_AMBIGUOUS] = {"ambiguous", "jwt_ambiguous"},
    [JWTAUTH_TOO_LONG] = {"too_long", "jwt_too_long"},
    [JWTAUTH_MALFORMED] = {"malformed", "jwt_malformed"},
    [JWTAUTH_BAD_HEADER] = {"bad_header", "jwt_bad_header"},
    [JWTAUTH_BAD_ALG] = {"bad_alg", "jwt_bad_alg"},
    [JWTAUTH_CRIT] = {"crit", "jwt_crit"},
    [JWTAUTH_KEY_HEADER] = {"key_header", "jwt_key_header"},
    [JWTAUTH_UNKNOWN_KID] = {"unknown_kid", "jwt_unknown_kid"},
    [JWTAUTH_BAD_SIGNATURE] = {"bad_signature", "jwt_bad_signature"},
    [JWTAUTH_BAD_PAYLOAD] = {"bad_payload", "jwt_bad_payload"},
    [JWTAUTH_NO_EXP] = {"no_exp", "jwt_no_exp"},
    [JWTAUTH_BAD_TIME] = {"bad_time", "jwt_bad_time"},
    [JWTAUTH_EXPIRED] = {"expired", "jwt_expired"},
    [JWTAUTH_NOT_YET] = {"not_yet_valid", "jwt_not_yet_valid"},
    [JWTAUTH_IAT_FUTURE] = {"iat_future", "jwt_iat_future"},
    [JWTAUTH_BAD_ISSUER] = {"bad_issuer", "jwt_bad_issuer"},
    [JWTAUTH_BAD_AUDIENCE] = {"bad_audience", "jwt_bad_audience"},
    [JWTAUTH_BAD_TYPE] = {"bad_type", "jwt_bad_type"},
    [JWTAUTH_BAD_SUBJECT] = {"bad_subject", "jwt_bad_subject"},
    [JWTAUTH_BAD_CLAIM] = {"bad_claim", "jwt_bad_claim"},
    [JWTAUTH_INTERNAL] = {"internal", "jwt_internal"},
};

const char *jwtauth_result_str(enum jwtauth_result res)
{
    return res < JWTAUTH__COUNT ? reasons[res].label : "?";
}

/* ---- token sources ------------------------------------------------------ */

int jwtauth_bearer(const char *value, size_t len, const char **tok, size_t *tok_len)
{
    /* RFC 6750 section 2.1: credentials = "Bearer" 1*SP b64token. SP only:
     * a tab is not in the grammar, and accepting one would let two parsers
     * disagree on where the token starts. */
    size_t i = 6;

    if (len <= i || strncasecmp(value, "bearer", i) != 0 || value[i] != ' ')
        return -1;
    while (i < len && value[i] == ' ')
        i++;
    if (i == len)
        return -1;
    for (size_t j = i; j < len; j++)
        if (h1_is_ows(value[j]))
            return -1;
    *tok = value + i;
    *tok_len = len - i;
    return 0;
}

int jwtauth_cookie(const char *value, size_t len, const char *name, const char **tok,
                   size_t *tok_len)
{
    struct cookie ck;
    int found = 0;

    for (size_t pos = 0; cookie_next(value, len, &pos, &ck);) {
        if (!cookie_name_is(&ck, name))
            continue;
        if (found++)
            return -1;
        *tok = ck.value;
        *tok_len = ck.value_len;
        if (ck.value_len >= 2 && ck.value[0] == '"' && ck.value[ck.value_len - 1] == '"') {
            (*tok)++; /* RFC 6265 4.1.1: a cookie-value may be quoted */
            *tok_len -= 2;
        }
    }
    return found;
}

/* ---- base64url ---------------------------------------------------------- */

/* Value of each base64url character plus one; 0 for every other byte. */
static const unsigned char b64url_table[256] = {
    ['A'] = 1,  ['B'] = 2,  ['C'] = 3,  ['D'] = 4,  ['E'] = 5,  ['F'] = 6,  ['G'] = 7,  ['H'] = 8,
    ['I'] = 9,  ['J'] = 10, ['K'] = 11, ['L'] = 12, ['M'] = 13, ['N'] = 14, ['O'] = 15, ['P'] = 16,
    ['Q'] = 17, ['R'] = 18, ['S'] = 19, ['T'] = 20, ['U'] = 21, ['V'] = 22, ['W'] = 23, ['X'] = 24,
    ['Y'] = 25, ['Z'] = 26, ['a'] = 27, ['b'] = 28, ['c'] = 29, ['d'] = 30, ['e'] = 31, ['f'] = 32,
    ['g'] = 33, ['h'] = 34, ['i'] = 35, ['j'] = 36, ['k'] = 37, ['l'] = 38, ['m'] = 39, ['n'] = 40,
    ['o'] = 41, ['p'] = 42, ['q'] = 43, ['r'] = 44, ['s'] = 45, ['t'] = 46, ['u'] = 47, ['v'] = 48,
    ['w'] = 49, ['x'] = 50, ['y'] = 51, ['z'] = 52, ['0'] = 53, ['1'] = 54, ['2'] = 55, ['3'] = 56,
    ['4'] = 57, ['5'] = 58, ['6'] = 59, ['7'] = 60, ['8'] = 61, ['9'] = 62, ['-'] = 63, ['_'] = 64,
};

enum jwtauth_result jwtauth_shape(const char *tok, size_t len, size_t max)
{
    size_t dots = 0, seg = 0;

    if (len > max)
        return JWTAUTH_TOO_LONG;
    for (size_t i = 0; i < len; i++) {
        if (tok[i] == '.') {
            /* Empty header or payload: nothing to decode. */
            if (seg == 0 || ++dots > 2)
                return JWTAUTH_MALFORMED;
            seg = 0;
        } else if (b64url_table[(unsigned char)tok[i]]) {
            seg++;
        } else {
            return JWTAUTH_MALFORMED;
        }
    }
    return dots == 2 ? JWTAUTH_OK : JWTAUTH_MALFORMED;
}

ssize_t jwtauth_b64url_decode(const char *in, size_t len, unsigned char *out)
{
    uint32_t acc = 0;
    int bits = 0;
    size_t n = 0;

    if (len % 4 == 1)
        return -1;
    for (size_t i = 0; i < len; i++) {
        unsigned v = b64url_table[(unsigned char)in[i]];
        if (v == 0)
            return -1;
        acc = (acc << 6) | (v - 1);
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out[n++] = (unsigned char)(acc >> bits);
            acc &= (1u << bits) - 1;
        }
    }
    /* Leftover bits must be zero: one byte string, one spelling. */
    return acc == 0 ? (ssize_t)n : -1;
}

static size_t b64url_encode(const unsigned char *in, size_t len, char *out)
{
    static const char alphabet[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    size_t n = 0, i = 0;

    for (; i + 3 <= len; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8 | in[i + 2];
        out[n++] = alphabet[v >> 18];
        out[n++] = alphabet[(v >> 12) & 63];
        out[n++] = alphabet[(v >> 6) & 63];
        out[n++] = alphabet[v & 63];
    }
    if (len - i == 1) {
        uint32_t v = (uint32_t)in[i] << 16;
        out[n++] = alphabet[v >> 18];
        out[n++] = alphabet[(v >> 12) & 63];
    } else if (len - i == 2) {
        uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8;
        out[n++] = alphabet[v >> 18];
        out[n++] = alphabet[(v >> 12) & 63];
        out[n++] = alphabet[(v >> 6) & 63];
    }
    return n;
}

/* Decode one base64url segment and parse it as a JSON object. Duplicate
 * member names are refused (RFC 7515 section 4: either refuse or take the
 * last; refusing leaves no room for two parsers to disagree). */
static json_t *decode_object(const char *seg, size_t len)
{
    unsigned char stack[JWTAUTH_STACK_JSON];
    size_t need = len / 4 * 3 + 3;
    unsigned char *buf = need <= sizeof(stack) ? stack : malloc(need);
    json_t *obj = NULL;

    if (buf == NULL)
        return NULL;
    ssize_t n = jwtauth_b64url_decode(seg, len, buf);
    /* jansson skips a raw NUL between tokens; RFC 8259 allows none there,
     * and a C-string parser downstream would stop at it: refuse. */
    if (n > 0 && memchr(buf, '\0', (size_t)n) == NULL)
        obj = json_loadb((const char *)buf, (size_t)n, JSON_REJECT_DUPLICATES, NULL);
    if (buf != stack)
        free(buf);
    if (obj != NULL && !json_is_object(obj)) {
        json_decref(obj);
        obj = NULL;
    }
    return obj;
}

/* ---- header ------------------------------------------------------------- */

static const char *const alg_name[] = {
    [FG_JWT_HS256] = "HS256", [FG_JWT_HS384] = "HS384", [FG_JWT_HS512] = "HS512"};

static const char *const alg_digest[] = {
    [FG_JWT_HS256] = "SHA256", [FG_JWT_HS384] = "SHA384", [FG_JWT_HS512] = "SHA512"};

static const EVP_MD *alg_md(enum fg_jwt_alg alg)
{
    switch (alg) {
    case FG_JWT_HS256: return EVP_sha256();
    case FG_JWT_HS384: return EVP_sha384();
    case FG_JWT_HS512: return EVP_sha512();
    }
    return NULL;
}

enum jwtauth_result jwtauth_check_header(const struct fg_jwt *jc, json_t *hdr, size_t *first,
                                         size_t *count)
{
    static const char *const key_headers[] = {"jku", "jwk", "x5u", "x5c", NULL};
    json_t *alg = json_object_get(hdr, "alg");
    json_t *kid = json_object_get(hdr, "kid");

    /* RFC 8725 section 3.1: the verifier decides the algorithm; "none",
     * "None", another HMAC size or an asymmetric one all end here. */
    if (!json_is_string(alg) || strcmp(json_string_value(alg), alg_name[jc->algorithm]) != 0)
        return JWTAUTH_BAD_ALG;
    /* RFC 7515 section 4.1.11: no extension is understood, so crit fails. */
    if (json_object_get(hdr, "crit") != NULL)
        return JWTAUTH_CRIT;
    /* RFC 8725 section 3.10: key locations are never followed; an HMAC
     * token has no business carrying one, so it is refused outright. */
    for (size_t i = 0; key_headers[i]; i++)
        if (json_object_get(hdr, key_headers[i]) != NULL)
            return JWTAUTH_KEY_HEADER;
    if (kid == NULL) {
        *first = 0;
        *count = jc->nkeys;
        return jc->nkeys ? JWTAUTH_OK : JWTAUTH_UNKNOWN_KID;
    }
    if (!json_is_string(kid))
        return JWTAUTH_BAD_HEADER;
    for (size_t i = 0; i < jc->nkeys; i++) {
        const char *k = jc->keys[i].kid;
        if (k && strlen(k) == json_string_length(kid) &&
            memcmp(k, json_string_value(kid), json_string_length(kid)) == 0) {
            *first = i;
            *count = 1;
            return JWTAUTH_OK;
        }
    }
    return JWTAUTH_UNKNOWN_KID;
}

/* ---- signature ---------------------------------------------------------- */

/* HMAC of DATA under key I: with the thread's pre-keyed context when there
 * is one (no key schedule, no algorithm fetch per request), else one-shot. */
static int hmac_key(const struct fg_jwt *jc, EVP_MAC_CTX *const *keyed, size_t i, const char *data,
                    size_t len, unsigned char *mac, size_t *mac_len)
{
    const struct fg_jwt_key *k = &jc->keys[i];
    unsigned int n = 0;

    if (keyed && keyed[i] && EVP_MAC_init(keyed[i], NULL, 0, NULL) &&
        EVP_MAC_update(keyed[i], (const unsigned char *)data, len) &&
        EVP_MAC_final(keyed[i], mac, mac_len, EVP_MAX_MD_SIZE))
        return 0;
    if (HMAC(alg_md(jc->algorithm), k->secret, (int)k->secret_len, (const unsigned char *)data, len,
             mac, &n) == NULL)
        return -1;
    *mac_len = n;
    return 0;
}

/* RFC 7515 section 5.2: the signature over the ASCII "header.payload" must
 * be the HMAC under one of the candidate keys. Comparing the encoded forms
 * (canonical on our side) refuses any other spelling of the same bytes. */
static enum jwtauth_result check_signature(const struct fg_jwt *jc, EVP_MAC_CTX *const *keyed,
                                           const char *tok, size_t signed_len, const char *sig,
                                           size_t sig_len, size_t first, size_t count)
{
    unsigned char mac[EVP_MAX_MD_SIZE];
    char enc[EVP_MAX_MD_SIZE * 2];
    size_t mac_len = 0;

    for (size_t i = first; i < first + count; i++) {
        if (hmac_key(jc, keyed, i, tok, signed_len, mac, &mac_len) < 0)
            return JWTAUTH_INTERNAL;
        size_t enc_len = b64url_encode(mac, mac_len, enc);
        if (enc_len == sig_len && CRYPTO_memcmp(enc, sig, sig_len) == 0)
            return JWTAUTH_OK;
    }
    return JWTAUTH_BAD_SIGNATURE;
}

/* ---- claims ------------------------------------------------------------- */

/* A claim value fit for an HTTP header value and a log field: no control
 * bytes (no header injection, RFC 9110 section 5.5) and no whitespace at
 * either end (an upstream would trim it, so " admin" would become "admin"). */
static bool header_safe(const char *s, size_t n)
{
    if (n > 0 && (s[0] == ' ' || s[n - 1] == ' '))
        return false;
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)s[i] < 0x20 || (unsigned char)s[i] == 0x7f)
            return false;
    return true;
}

/* exp, nbf, iat (RFC 7519 sections 4.1.4-4.1.6): NumericDate, each with the
 * leeway. Fractional seconds are allowed by the RFC and kept. */
static enum jwtauth_result check_times(const struct fg_jwt *jc, json_t *claims, time_t now,
                                       struct jwtauth_identity *id)
{
    json_t *exp = json_object_get(claims, "exp");
    json_t *nbf = json_object_get(claims, "nbf");
    json_t *iat = json_object_get(claims, "iat");
    double t = (double)now, leeway = (double)jc->leeway_seconds;

    if ((exp && !json_is_number(exp)) || (nbf && !json_is_number(nbf)) ||
        (iat && !json_is_number(iat)))
        return JWTAUTH_BAD_TIME;
    id->has_deadline = false;
    if (exp == NULL && jc->require_exp)
        return JWTAUTH_NO_EXP;
    if (exp != NULL) {
        double deadline = ceil(json_number_value(exp) + leeway);
        if (t >= deadline)
            return JWTAUTH_EXPIRED;
        id->has_deadline = true;
        id->deadline = deadline >= 9.2e18 ? INT64_MAX : (int64_t)deadline;
    }
    if (nbf != NULL && t + leeway < json_number_value(nbf))
        return JWTAUTH_NOT_YET;
    if (iat != NULL && json_number_value(iat) > t + leeway)
        return JWTAUTH_IAT_FUTURE;
    return JWTAUTH_OK;
}

static bool string_is(json_t *v, const char *want)
{
    return json_is_string(v) && json_string_length(v) == strlen(want) &&
           memcmp(json_string_value(v), want, json_string_length(v)) == 0;
}

/* aud (RFC 7519 section 4.1.3): a string or an array of strings, one of
 * which must be ours. */
static bool audience_ok(json_t *aud, const char *want)
{
    size_t i;
    json_t *v;

    if (json_is_string(aud))
        return string_is(aud, want);
    if (!json_is_array(aud))
        return false;
    json_array_foreach(aud, i, v)
    {
        if (string_is(v, want))
            return true;
    }
    return false;
}

/* Render a forwarded claim's value: strings as they are (header_safe),
 * integers in decimal, whole reals within 2^53 as integers. Anything else
 * (fractions, booleans, null, objects, arrays) has no single header form:
 * the token is refused rather than forwarded with a guessed rendering or
 * silently without the header. Returns the length or -1. */
static int render_claim(json_t *v, char *out, size_t cap)
{
    if (json_is_string(v)) {
        size_t n = json_string_length(v);
        if (!header_safe(json_string_value(v), n) || n >= cap)
            return -1;
        memcpy(out, json_string_value(v), n);
        return (int)n;
    }
    if (json_is_integer(v))
        return snprintf(out, cap, "%" JSON_INTEGER_FORMAT, json_integer_value(v));
    if (json_is_real(v)) {
        double d = json_real_value(v);
        if (d != floor(d) || fabs(d) > 9007199254740992.0)
            return -1;
        return snprintf(out, cap, "%.0f", d);
    }
    return -1;
}

static enum jwtauth_result forward_claims(const struct fg_jwt *jc, json_t *claims,
                                          struct jwtauth_identity *id)
{
    char val[JWTAUTH_HEADERS_MAX];

    id->headers_len = 0;
    for (size_t i = 0; i < jc->nforward_claims; i++) {
        const struct fg_claim_header *fc = &jc->forward_claims[i];
        json_t *v = json_object_get(claims, fc->claim);
        if (v == NULL)
            continue; /* absent claim: no header (client copies are dropped anyway) */
        int n = render_claim(v, val, sizeof(val));
        if (n < 0)
            return JWTAUTH_BAD_CLAIM;
        size_t left = sizeof(id->headers) - id->headers_len;
        int w = snprintf(id->headers + id->headers_len, left, "%s: %.*s\r\n", fc->header, n, val);
        if (w < 0 || (size_t)w >= left)
            return JWTAUTH_BAD_CLAIM;
        id->headers_len += (size_t)w;
    }
    return JWTAUTH_OK;
}

/* sub and the tier claim, copied into ID (never a pointer into CLAIMS). */
static enum jwtauth_result take_identity(const struct fg_jwt *jc, json_t *claims,
                                         struct jwtauth_identity *id)
{
    json_t *sub = json_object_get(claims, "sub");
    json_t *tier = jc->tier_claim[0] ? json_object_get(claims, jc->tier_claim) : NULL;

    /* An access token names its subject (RFC 9068 section 2.2). */
    if (!json_is_string(sub) || json_string_length(sub) == 0 ||
        json_string_length(sub) >= sizeof(id->user) ||
        !header_safe(json_string_value(sub), json_string_length(sub)))
        return JWTAUTH_BAD_SUBJECT;
    id->user_len = json_string_length(sub);
    memcpy(id->user, json_string_value(sub), id->user_len + 1);
    id->tier_len = 0;
    id->tier[0] = '\0';
    if (tier != NULL) {
        if (!json_is_string(tier) || json_string_length(tier) == 0 ||
            json_string_length(tier) >= sizeof(id->tier) ||
            !header_safe(json_string_value(tier), json_string_length(tier)))
            return JWTAUTH_BAD_CLAIM;
        id->tier_len = json_string_length(tier);
        memcpy(id->tier, json_string_value(tier), id->tier_len + 1);
    }
    return forward_claims(jc, claims, id);
}

enum jwtauth_result jwtauth_check_claims(const struct fg_jwt *jc, json_t *claims, time_t now,
                                         struct jwtauth_identity *id)
{
    enum jwtauth_result res = check_times(jc, claims, now, id);

    if (res != JWTAUTH_OK)
        return res;
    if (jc->issuer[0] && !string_is(json_object_get(claims, "iss"), jc->issuer))
        return JWTAUTH_BAD_ISSUER;
    if (jc->audience[0] && !audience_ok(json_object_get(claims, "aud"), jc->audience))
        return JWTAUTH_BAD_AUDIENCE;
    /* RFC 8725 section 3.11: a refresh token must never pass as an access
     * token, so the type claim is required whenever token_type is set. */
    if (jc->token_type[0] && !string_is(json_object_get(claims, jc->type_claim), jc->token_type))
        return JWTAUTH_BAD_TYPE;
    return take_identity(jc, claims, id);
}

/* ---- the whole verification -------------------------------------------- */

static enum jwtauth_result verify_keyed(const struct fg_jwt *jc, EVP_MAC_CTX *const *keyed,
                                        const char *tok, size_t len, time_t now,
                                        struct jwtauth_identity *id)
{
    enum jwtauth_result res = jwtauth_shape(tok, len, jc->max_token_bytes);
    size_t first = 0, count = 0;

    if (res != JWTAUTH_OK)
        return res;
    const char *dot1 = memchr(tok, '.', len);
    const char *pay = dot1 + 1;
    const char *dot2 = memchr(pay, '.', len - (size_t)(pay - tok));
    const char *sig = dot2 + 1;

    json_t *hdr = decode_object(tok, (size_t)(dot1 - tok));
    if (hdr == NULL)
        return JWTAUTH_BAD_HEADER;
    res = jwtauth_check_header(jc, hdr, &first, &count);
    json_decref(hdr);
    if (res != JWTAUTH_OK)
        return res;
    /* Only a signed payload is ever parsed. */
    res = check_signature(jc, keyed, tok, (size_t)(dot2 - tok), sig, len - (size_t)(sig - tok),
                          first, count);
    if (res != JWTAUTH_OK)
        return res;
    json_t *claims = decode_object(pay, (size_t)(dot2 - pay));
    if (claims == NULL)
        return JWTAUTH_BAD_PAYLOAD;
    res = jwtauth_check_claims(jc, claims, now, id);
    json_decref(claims);
    return res;
}

enum jwtauth_result jwtauth_verify(const struct fg_jwt *jc, const char *tok, size_t len, time_t now,
                                   struct jwtauth_identity *id)
{
    return verify_keyed(jc, NULL, tok, len, now, id);
}

/* ---- cache -------------------------------------------------------------- */

#define CACHE_WAYS 4

/* One verified token. BLOB holds the token, then user, tier and the header
 * lines, in one allocation owned by the entry. */
struct cache_entry {
    uint64_t hash;  /* 0 = empty slot */
    uint64_t stamp; /* last use, for eviction within the set */
    char *blob;
    uint32_t tok_len;
    uint16_t user_len;
    uint16_t tier_len;
    uint16_t headers_len;
    bool has_deadline;
    int64_t deadline; /* see struct jwtauth_identity */
};

struct jwtauth_cache {
    struct fg_config *cfg; /* entries were verified under it (ref held) */
    EVP_MAC *hmac;         /* fetched once */
    EVP_MAC_CTX **keyed;   /* one per cfg->jwt key, keyed once; NULL entries allowed */
    size_t nkeyed;
    uint64_t seed;               /* per cache: collisions cannot be planned */
    uint64_t clock;              /* use counter for stamps */
    size_t nsets;                /* power of two */
    struct cache_entry *entries; /* nsets * CACHE_WAYS */
};

struct jwtauth_cache *jwtauth_cache_new(size_t nentries)
{
    struct jwtauth_cache *c = calloc(1, sizeof(*c));
    size_t nsets = 1;

    if (c == NULL)
        return NULL;
    while (nsets * CACHE_WAYS < nentries)
        nsets <<= 1;
    c->nsets = nsets;
    c->entries = calloc(nsets * CACHE_WAYS, sizeof(*c->entries));
    c->hmac = EVP_MAC_fetch(NULL, "HMAC", NULL);
    if (c->entries == NULL || RAND_bytes((unsigned char *)&c->seed, sizeof(c->seed)) != 1) {
        EVP_MAC_free(c->hmac);
        free(c->entries);
        free(c);
        return NULL;
    }
    return c;
}

static void unkey(struct jwtauth_cache *c)
{
    for (size_t i = 0; i < c->nkeyed; i++)
        EVP_MAC_CTX_free(c->keyed[i]);
    free(c->keyed);
    c->keyed = NULL;
    c->nkeyed = 0;
}

/* Key one HMAC context per configured key. A context that cannot be made
 * stays NULL: that key is then computed one-shot (slower, same result). */
static void key_contexts(struct jwtauth_cache *c, const struct fg_jwt *jc)
{
    OSSL_PARAM params[] = {
        OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, (char *)alg_digest[jc->algorithm],
                                         0),
        OSSL_PARAM_construct_end(),
    };

    unkey(c);
    if (c->hmac == NULL || jc->nkeys == 0 ||
        (c->keyed = calloc(jc->nkeys, sizeof(*c->keyed))) == NULL)
        return;
    c->nkeyed = jc->nkeys;
    for (size_t i = 0; i < jc->nkeys; i++) {
        EVP_MAC_CTX *ctx = EVP_MAC_CTX_new(c->hmac);
        if (ctx && EVP_MAC_init(ctx, jc->keys[i].secret, jc->keys[i].secret_len, params))
            c->keyed[i] = ctx;
        else
            EVP_MAC_CTX_free(ctx);
    }
}

static void entry_clear(struct cache_entry *e)
{
    free(e->blob);
    memset(e, 0, sizeof(*e));
}

static void cache_flush(struct jwtauth_cache *c)
{
    for (size_t i = 0; i < c->nsets * CACHE_WAYS; i++)
        if (c->entries[i].hash)
            entry_clear(&c->entries[i]);
}

void jwtauth_cache_free(struct jwtauth_cache *cache)
{
    if (cache == NULL)
        return;
    cache_flush(cache);
    unkey(cache);
    EVP_MAC_free(cache->hmac);
    cfg_unref(cache->cfg);
    free(cache->entries);
    free(cache);
}

/* The token's hash under the cache's seed; never 0, which marks an empty slot. */
static uint64_t token_hash(const struct jwtauth_cache *c, const char *tok, size_t len)
{
    uint64_t h = hash_bytes(tok, len, c->seed);

    return h ? h : 1;
}

static struct cache_entry *cache_find(struct jwtauth_cache *c, uint64_t h, const char *tok,
                                      size_t len)
{
    struct cache_entry *set = &c->entries[(h & (c->nsets - 1)) * CACHE_WAYS];

    for (size_t i = 0; i < CACHE_WAYS; i++)
        if (set[i].hash == h && set[i].tok_len == len && memcmp(set[i].blob, tok, len) == 0)
            return &set[i];
    return NULL;
}

static void entry_copy_out(const struct cache_entry *e, struct jwtauth_identity *id)
{
    const char *p = e->blob + e->tok_len;

    memcpy(id->user, p, e->user_len);
    id->user[e->user_len] = '\0';
    id->user_len = e->user_len;
    p += e->user_len;
    memcpy(id->tier, p, e->tier_len);
    id->tier[e->tier_len] = '\0';
    id->tier_len = e->tier_len;
    p += e->tier_len;
    memcpy(id->headers, p, e->headers_len);
    id->headers_len = e->headers_len;
    id->has_deadline = e->has_deadline;
    id->deadline = e->deadline;
}

/* Store a fresh success in the empty or least recently used way. A failed
 * allocation only means no caching for this token. */
static void cache_store(struct jwtauth_cache *c, uint64_t h, const char *tok, size_t len,
                        const struct jwtauth_identity *id)
{
    struct cache_entry *set = &c->entries[(h & (c->nsets - 1)) * CACHE_WAYS];
    struct cache_entry *victim = &set[0];
    char *blob = malloc(len + id->user_len + id->tier_len + id->headers_len);

    if (blob == NULL || len > UINT32_MAX) {
        free(blob);
        return;
    }
    for (size_t i = 0; i < CACHE_WAYS && victim->hash; i++)
        if (set[i].hash == 0 || set[i].stamp < victim->stamp)
            victim = &set[i];
    entry_clear(victim);
    memcpy(blob, tok, len);
    memcpy(blob + len, id->user, id->user_len);
    memcpy(blob + len + id->user_len, id->tier, id->tier_len);
    memcpy(blob + len + id->user_len + id->tier_len, id->headers, id->headers_len);
    *victim = (struct cache_entry){.hash = h,
                                   .stamp = ++c->clock,
                                   .blob = blob,
                                   .tok_len = (uint32_t)len,
                                   .user_len = (uint16_t)id->user_len,
                                   .tier_len = (uint16_t)id->tier_len,
                                   .headers_len = (uint16_t)id->headers_len,
                                   .has_deadline = id->has_deadline,
                                   .deadline = id->deadline};
}

enum jwtauth_result jwtauth_cached_verify(struct jwtauth_cache *cache, struct fg_config *cfg,
                                          const char *tok, size_t len, time_t now,
                                          struct jwtauth_identity *id, bool *hit)
{
    if (hit)
        *hit = false;
    if (cache == NULL || len > cfg->jwt.max_token_bytes)
        return jwtauth_verify(&cfg->jwt, tok, len, now, id);
    if (cache->cfg != cfg) {
        /* Keys or claim rules may differ under another snapshot. */
        cache_flush(cache);
        cfg_unref(cache->cfg);
        cache->cfg = cfg_ref(cfg);
        key_contexts(cache, &cfg->jwt);
    }
    uint64_t h = token_hash(cache, tok, len);
    struct cache_entry *e = cache_find(cache, h, tok, len);
    if (e != NULL) {
        if (!e->has_deadline || now < e->deadline) {
            e->stamp = ++cache->clock;
            entry_copy_out(e, id);
            if (hit)
                *hit = true;
            return JWTAUTH_OK;
        }
        entry_clear(e); /* expired since: verify again to report why */
    }
    enum jwtauth_result res = verify_keyed(&cfg->jwt, cache->keyed, tok, len, now, id);
    if (res == JWTAUTH_OK)
        cache_store(cache, h, tok, len, id);
    return res;
}

/* ---- the stage ---------------------------------------------------------- */

/* Where the token is: Authorization first (it alone counts when sent, even
 * when malformed), then the configured cookie. */
static enum jwtauth_result find_token(const struct req *r, const char **tok, size_t *len)
{
    const struct h1_request *h = &r->h;
    const struct h1_header *auth = NULL;
    const char *cookie = r->cfg->jwt.cookie;
    int found = 0;

    for (size_t i = 0; i < h->nheaders; i++) {
        if (!h1_token_eq(h->headers[i].name, h->headers[i].name_len, "Authorization"))
            continue;
        if (auth != NULL)
            return JWTAUTH_AMBIGUOUS;
        auth = &h->headers[i];
    }
    if (auth != NULL)
        return jwtauth_bearer(auth->value, auth->value_len, tok, len) == 0 ? JWTAUTH_OK
                                                                           : JWTAUTH_BAD_SCHEME;
    for (size_t i = 0; cookie[0] && i < h->nheaders; i++) {
        const char *v;
        size_t vlen;
        if (!h1_token_eq(h->headers[i].name, h->headers[i].name_len, "Cookie"))
            continue;
        int n = jwtauth_cookie(h->headers[i].value, h->headers[i].value_len, cookie, &v, &vlen);
        if (n < 0 || (n > 0 && found++))
            return JWTAUTH_AMBIGUOUS;
        if (n > 0)
            *tok = v, *len = vlen;
    }
    /* An emptied cookie (a logout) carries no token. */
    return found && *len > 0 ? JWTAUTH_OK : JWTAUTH_MISSING;
}

/* ---- the stage ------------------------------------------------------------ */

/* A worker's verified-token cache and its counters (written by the worker,
 * read by the admin thread with relaxed loads: a scrape may be a few
 * requests behind, never torn). */
struct jwt_worker {
    struct jwtauth_cache *cache;         /* created on first use; NULL on OOM */
    uint64_t verified;                   /* requests admitted with a verified token */
    uint64_t cache_hits;                 /* ... of which the token cache answered */
    uint64_t rejections[JWTAUTH__COUNT]; /* 401s by reason */
};

static void count(uint64_t *c)
{
    __atomic_store_n(c, *c + 1, __ATOMIC_RELAXED);
}

/* 401 with the RFC 6750 section 3 challenge; which check failed goes only to
 * the access log and the counters. */
static enum stage_verdict reject(struct req *r, enum jwtauth_result res)
{
    static const char missing[] = "WWW-Authenticate: Bearer realm=\"flowgate\"\r\n";
    static const char invalid[] =
        "WWW-Authenticate: Bearer realm=\"flowgate\", error=\"invalid_token\"\r\n";
    struct jwt_worker *jw = stage_worker_data(r->w, &jwtauth_stage);

    if (jw != NULL)
        count(&jw->rejections[res]);
    if (res == JWTAUTH_MISSING) { /* section 3.1: no error code without a token */
        req_add_header(r, missing, sizeof(missing) - 1);
        return stage_answer(r, FG_ERR_UNAUTHORIZED, reasons[res].log);
    }
    req_add_header(r, invalid, sizeof(invalid) - 1);
    return stage_answer(r, FG_ERR_INVALID_TOKEN, reasons[res].log);
}

/* The verified identity is copied into the request: it stays valid for the
 * request's whole life whatever happens to the cache meanwhile. */
static enum stage_verdict accept_identity(struct req *r, const struct jwtauth_identity *id)
{
    if (req_add_upstream_header(r, id->headers, id->headers_len) < 0)
        return reject(r, JWTAUTH_BAD_CLAIM);
    memcpy(r->user_buf, id->user, id->user_len + 1);
    r->user = r->user_buf;
    r->user_len = id->user_len;
    memcpy(r->tier_buf, id->tier, id->tier_len + 1);
    r->tier = id->tier_len ? r->tier_buf : "authenticated";
    return STAGE_NEXT;
}

static enum stage_verdict jwtauth_run(struct req *r, stage_resume_fn resume)
{
    enum fg_auth_mode mode = r->route ? r->route->auth : FG_AUTH_NONE;
    struct jwt_worker *jw = stage_worker_data(r->w, &jwtauth_stage);
    struct jwtauth_identity id;
    const char *tok = NULL;
    size_t len = 0;
    bool hit;

    if (mode == FG_AUTH_NONE)
        return STAGE_NEXT; /* the token is not even looked at */
    enum jwtauth_result res = find_token(r, &tok, &len);
    if (res == JWTAUTH_MISSING && mode == FG_AUTH_OPTIONAL)
        return STAGE_NEXT;
    if (res != JWTAUTH_OK)
        return reject(r, res);
    if (jw != NULL && jw->cache == NULL)
        jw->cache = jwtauth_cache_new(4096); /* NULL on OOM: verification goes on uncached */
    res = jwtauth_cached_verify(jw ? jw->cache : NULL, r->cfg, tok, len, time(NULL), &id, &hit);
    if (res != JWTAUTH_OK)
        return reject(r, res);
    if (jw != NULL) {
        count(&jw->verified);
        if (hit)
            count(&jw->cache_hits);
    }
    return accept_identity(r, &id);
}

/* The claims flowgate forwards (jwt.forward_claims) are its own to set: a
 * client's copy never reaches the upstream, on any route. */
static enum stage_header jwtauth_request_header(const struct req *r, const struct h1_header *h,
                                                struct wbuf *b)
{
    for (size_t i = 0; i < r->cfg->jwt.nforward_claims; i++) {
        const struct fg_claim_header *fc = &r->cfg->jwt.forward_claims[i];
        if (h1_token_eq_n(h->name, h->name_len, fc->header, fc->header_len))
            return STAGE_HDR_DROP;
    }
    return STAGE_HDR_DEFAULT;
}

static int jwtauth_worker_init(struct worker *w, const struct fg_config *cfg, char *err,
                               size_t errlen)
{
    struct jwt_worker *jw = calloc(1, sizeof(*jw));

    if (jw == NULL) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    stage_set_worker_data(w, &jwtauth_stage, jw);
    return 0;
}

static void jwtauth_worker_free(struct worker *w)
{
    struct jwt_worker *jw = stage_worker_data(w, &jwtauth_stage);

    if (jw == NULL)
        return;
    stage_set_worker_data(w, &jwtauth_stage, NULL);
    jwtauth_cache_free(jw->cache);
    free(jw);
}

static uint64_t sum(const struct worker *ws, unsigned n, size_t offset)
{
    uint64_t total = 0;

    for (unsigned i = 0; i < n; i++) {
        const struct jwt_worker *jw = stage_worker_data(&ws[i], &jwtauth_stage);
        if (jw != NULL)
            total += __atomic_load_n((const uint64_t *)((const char *)jw + offset),
                                     __ATOMIC_RELAXED);
    }
    return total;
}

/* Verified tokens (and how many the cache answered), rejections by reason. */
static void jwtauth_metrics(const struct fg_config *cfg, const struct worker *ws, unsigned n,
                            struct evbuffer *out)
{
    evbuffer_add_printf(out,
                        "# HELP flowgate_jwt_verified_total Requests admitted with a verified token."
                        "\n"
                        "# TYPE flowgate_jwt_verified_total counter\n"
                        "flowgate_jwt_verified_total %llu\n"
                        "# HELP flowgate_jwt_cache_hits_total Verified tokens the cache answered.\n"
                        "# TYPE flowgate_jwt_cache_hits_total counter\n"
                        "flowgate_jwt_cache_hits_total %llu\n"
                        "# HELP flowgate_jwt_rejections_total Requests answered 401, by reason.\n"
                        "# TYPE flowgate_jwt_rejections_total counter\n",
                        (unsigned long long)sum(ws, n, offsetof(struct jwt_worker, verified)),
                        (unsigned long long)sum(ws, n, offsetof(struct jwt_worker, cache_hits)));
    for (int i = JWTAUTH_OK + 1; i < JWTAUTH__COUNT; i++)
        evbuffer_add_printf(
            out, "flowgate_jwt_rejections_total{reason=\"%s\"} %llu\n",
            jwtauth_result_str((enum jwtauth_result)i),
            (unsigned long long)sum(ws, n,
                                    offsetof(struct jwt_worker, rejections) +
                                        (size_t)i * sizeof(uint64_t)));
}

const struct stage jwtauth_stage = {
    .name = "jwt",
    .run = jwtauth_run,
    .request_header = jwtauth_request_header,
    .worker_init = jwtauth_worker_init,
    .worker_free = jwtauth_worker_free,
    .metrics = jwtauth_metrics,
};
