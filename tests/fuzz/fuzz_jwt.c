/*
 * fuzz_jwt.c - libFuzzer target for the token handling of the JWT stage:
 * Bearer and cookie extraction, the shape check, and the whole verification
 * (header, signature, claims, identity) with a fixed key and configuration,
 * through the cache and without it. Any violated invariant aborts.
 *
 * An input beginning with '!' is "!HEADER\nPAYLOAD": the two JSON texts are
 * signed here with the configured key, so the fuzzer also reaches the claim
 * checks behind the signature. Every token flowgate accepts must also be
 * accepted by libjwt's jwt_decode() with the same key (an independent
 * implementation), and must decode to an identity fit for header lines.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <jwt.h>
#include <openssl/hmac.h>

#include "jwtauth.h"
#include "../b64url.h"

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond))                                                                               \
            abort();                                                                               \
    } while (0)

#define NOW ((time_t)1700000000)

static unsigned char key_a[] = "fuzz-key-a-0123456789abcdef0123456789";
static unsigned char key_b[] = "fuzz-key-b-0123456789abcdef0123456789";
static struct fg_jwt_key keys[] = {
    {.kid = "a", .secret = key_a, .secret_len = sizeof(key_a) - 1},
    {.kid = "b", .secret = key_b, .secret_len = sizeof(key_b) - 1},
};
static struct fg_claim_header fwd[] = {
    {.header = "X-User-Id", .header_len = 9, .claim = "sub"},
    {.header = "X-User-Tier", .header_len = 11, .claim = "tier"},
    {.header = "X-Org", .header_len = 5, .claim = "org"},
};
static struct fg_config cfg = {
    .refcount = 1,
    .jwt = {.algorithm = FG_JWT_HS256,
            .keys = keys,
            .nkeys = 2,
            .issuer = "iss",
            .audience = "aud",
            .leeway_seconds = 30,
            .require_exp = true,
            .token_type = "access",
            .type_claim = "type",
            .tier_claim = "tier",
            .cookie = "access_token",
            .max_token_bytes = 4096,
            .forward_claims = fwd,
            .nforward_claims = 3},
};
static struct jwtauth_cache *cache;

/* "!HEADER\nPAYLOAD" signed with key a. Returns a malloc'd token or NULL. */
static char *sign_input(const uint8_t *data, size_t size, size_t *len)
{
    const uint8_t *nl = memchr(data, '\n', size);
    unsigned char mac[EVP_MAX_MD_SIZE];
    unsigned int mac_len;

    if (nl == NULL)
        return NULL;
    size_t hlen = (size_t)(nl - data), plen = size - hlen - 1;
    char *tok = malloc((hlen + plen) * 4 / 3 + 64 + 8);
    CHECK(tok != NULL);
    size_t n = b64u(data, hlen, tok);
    tok[n++] = '.';
    n += b64u(nl + 1, plen, tok + n);
    HMAC(EVP_sha256(), key_a, sizeof(key_a) - 1, (unsigned char *)tok, n, mac, &mac_len);
    tok[n++] = '.';
    n += b64u(mac, mac_len, tok + n);
    *len = n;
    return tok;
}

static void check_identity(const struct jwtauth_identity *id)
{
    CHECK(id->user_len > 0 && id->user_len < sizeof(id->user));
    CHECK(strlen(id->user) == id->user_len);
    CHECK(id->tier_len < sizeof(id->tier) && strlen(id->tier) == id->tier_len);
    CHECK(id->headers_len <= sizeof(id->headers));
    /* header lines: CR only before LF, LF only after CR, no other control byte */
    for (size_t i = 0; i < id->headers_len; i++) {
        unsigned char ch = (unsigned char)id->headers[i];
        if (ch == '\r')
            CHECK(i + 1 < id->headers_len && id->headers[i + 1] == '\n');
        else if (ch == '\n')
            CHECK(i > 0 && id->headers[i - 1] == '\r');
        else
            CHECK(ch >= 0x20 && ch != 0x7f);
    }
    CHECK(id->headers_len == 0 || memcmp(id->headers + id->headers_len - 2, "\r\n", 2) == 0);
}

/* libjwt 1.10 refuses a typ other than "JWT"; only then may it disagree. */
static bool typ_is_jwt_or_absent(const char *tok, size_t len)
{
    const char *dot = memchr(tok, '.', len);
    unsigned char *buf = malloc(len);
    bool ok = false;

    CHECK(dot != NULL && buf != NULL);
    ssize_t n = jwtauth_b64url_decode(tok, (size_t)(dot - tok), buf);
    CHECK(n > 0);
    json_t *h = json_loadb((const char *)buf, (size_t)n, 0, NULL);
    CHECK(h != NULL);
    json_t *typ = json_object_get(h, "typ");
    ok = typ == NULL || (json_is_string(typ) && strcasecmp(json_string_value(typ), "JWT") == 0);
    json_decref(h);
    free(buf);
    return ok;
}

static void check_with_libjwt(const char *tok, size_t len)
{
    char *z = malloc(len + 1);
    jwt_t *jwt = NULL;
    int rc = -1;

    CHECK(z != NULL);
    memcpy(z, tok, len);
    z[len] = '\0';
    for (size_t i = 0; i < 2 && rc != 0; i++)
        rc = jwt_decode(&jwt, z, keys[i].secret, (int)keys[i].secret_len);
    if (rc == 0) {
        CHECK(jwt_get_alg(jwt) == JWT_ALG_HS256);
        jwt_free(jwt);
    } else {
        CHECK(!typ_is_jwt_or_absent(tok, len));
    }
    free(z);
}

static void verify(const char *tok, size_t len)
{
    struct jwtauth_identity id, id2;
    bool hit;

    enum jwtauth_result r = jwtauth_verify(&cfg.jwt, tok, len, NOW, &id);
    CHECK(r < JWTAUTH__COUNT && r != JWTAUTH_MISSING);
    enum jwtauth_result rc = jwtauth_cached_verify(cache, &cfg, tok, len, NOW, &id2, &hit);
    CHECK(rc == r);
    if (r != JWTAUTH_OK)
        return;
    CHECK(jwtauth_shape(tok, len, cfg.jwt.max_token_bytes) == JWTAUTH_OK);
    check_identity(&id);
    CHECK(id.user_len == id2.user_len && memcmp(id.user, id2.user, id.user_len) == 0);
    CHECK(id.headers_len == id2.headers_len &&
          memcmp(id.headers, id2.headers, id.headers_len) == 0);
    check_with_libjwt(tok, len);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *in = malloc(size ? size : 1);
    const char *tok;
    size_t len;

    if (cache == NULL)
        cache = jwtauth_cache_new(64);
    CHECK(in != NULL && cache != NULL);
    memcpy(in, data, size);
    if (size > 0 && in[0] == '!') {
        char *signed_tok = sign_input(data + 1, size - 1, &len);
        if (signed_tok != NULL)
            verify(signed_tok, len);
        free(signed_tok);
        free(in);
        return 0;
    }
    if (jwtauth_bearer(in, size, &tok, &len) == 0) {
        CHECK(tok >= in && tok + len == in + size && len > 0);
        verify(tok, len);
    }
    int n = jwtauth_cookie(in, size, "access_token", &tok, &len);
    CHECK(n >= -1 && n <= 1);
    if (n == 1) {
        CHECK(tok >= in && tok + len <= in + size);
        verify(tok, len);
    }
    verify(in, size);
    free(in);
    return 0;
}
