/*
 * jwt_bench.c - CPU cost of one token verification, uncached and cached.
 *
 *   make bench-jwt && build/bench/jwt_bench [ITERATIONS]
 *
 * A typical HS256 access token (sub, tier, type, iss, aud, iat, exp; two
 * forwarded claims; two configured keys) is verified ITERATIONS times
 * (default 200000) three ways: jwtauth_verify() (header parse, one-shot HMAC,
 * claims parse and checks, identity); jwtauth_cached_verify() missing every
 * time (MISS_RING distinct tokens cycled through a 4096-entry cache: the
 * worker's pre-keyed HMAC, then the store); and jwtauth_cached_verify() on a
 * warm cache (hash, compare, exp recheck, copy out). Time is the process CPU
 * time (CLOCK_PROCESS_CPUTIME_ID). A measurement, never a pass/fail.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/hmac.h>

#include "jwtauth.h"
#include "../tests/b64url.h"

static unsigned char key_a[] = "bench-key-a-0123456789abcdef0123456789";
static unsigned char key_b[] = "bench-key-b-0123456789abcdef0123456789";
static struct fg_jwt_key keys[] = {
    {.kid = "a", .secret = key_a, .secret_len = sizeof(key_a) - 1},
    {.kid = "b", .secret = key_b, .secret_len = sizeof(key_b) - 1},
};
static struct fg_claim_header fwd[] = {
    {.header = "X-User-Id", .header_len = 9, .claim = "sub"},
    {.header = "X-User-Tier", .header_len = 11, .claim = "tier"},
};

#define MISS_RING 8192
#define TOKEN_MAX 512

static size_t make_token(char *out, time_t now, int serial)
{
    const char *hdr = "{\"alg\":\"HS256\",\"typ\":\"JWT\",\"kid\":\"a\"}";
    char payload[512];
    unsigned char mac[EVP_MAX_MD_SIZE];
    unsigned int mac_len;

    snprintf(payload, sizeof(payload),
             "{\"sub\":\"user-1234567890\",\"tier\":\"premium\",\"type\":\"access\","
             "\"iss\":\"https://auth.example.com\",\"aud\":\"flowgate-api\",\"iat\":%lld,"
             "\"exp\":%lld,\"jti\":\"4f1c2a9e-77b1-4c1e-9d2a-%012d\"}",
             (long long)now, (long long)now + 3600, serial);
    size_t n = b64u((const unsigned char *)hdr, strlen(hdr), out);
    out[n++] = '.';
    n += b64u((const unsigned char *)payload, strlen(payload), out + n);
    HMAC(EVP_sha256(), key_a, sizeof(key_a) - 1, (unsigned char *)out, n, mac, &mac_len);
    out[n++] = '.';
    return n + b64u(mac, mac_len, out + n);
}

static double cpu_seconds(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
    long iters = argc > 1 ? atol(argv[1]) : 200000;
    struct fg_config cfg = {
        .refcount = 1,
        .jwt = {.algorithm = FG_JWT_HS256,
                .keys = keys,
                .nkeys = 2,
                .issuer = "https://auth.example.com",
                .audience = "flowgate-api",
                .leeway_seconds = 30,
                .require_exp = true,
                .token_type = "access",
                .type_claim = "type",
                .tier_claim = "tier",
                .cookie = "",
                .max_token_bytes = 8192,
                .forward_claims = fwd,
                .nforward_claims = 2},
    };
    struct jwtauth_cache *cache = jwtauth_cache_new(4096);
    struct jwtauth_identity id;
    time_t now = time(NULL);
    char tok[TOKEN_MAX];
    size_t len = make_token(tok, now, 0);
    char(*ring)[TOKEN_MAX] = malloc(sizeof(*ring) * MISS_RING);
    size_t *ring_len = malloc(sizeof(*ring_len) * MISS_RING);
    long ok = 0, misses = 0;
    bool hit = false;

    if (cache == NULL || iters <= 0 || ring == NULL || ring_len == NULL)
        return 1;
    for (int i = 0; i < MISS_RING; i++)
        ring_len[i] = make_token(ring[i], now, i + 1);
    double t0 = cpu_seconds();
    for (long i = 0; i < iters; i++)
        ok += jwtauth_verify(&cfg.jwt, tok, len, now, &id) == JWTAUTH_OK;
    double t1 = cpu_seconds();
    for (long i = 0; i < iters; i++) {
        size_t k = (size_t)i % MISS_RING;
        ok +=
            jwtauth_cached_verify(cache, &cfg, ring[k], ring_len[k], now, &id, &hit) == JWTAUTH_OK;
        misses += !hit;
    }
    double t2 = cpu_seconds();
    for (long i = 0; i < iters; i++)
        ok += jwtauth_cached_verify(cache, &cfg, tok, len, now, &id, &hit) == JWTAUTH_OK;
    double t3 = cpu_seconds();
    if (ok != 3 * iters || !hit) {
        fprintf(stderr, "jwt_bench: verification failed (%ld of %ld)\n", ok, 3 * iters);
        return 1;
    }
    printf("token: %zu bytes, HS256, %ld iterations each\n", len, iters);
    printf("uncached (jwtauth_verify):        %.3f us CPU per verification\n",
           (t1 - t0) * 1e6 / (double)iters);
    printf("cache miss (keyed HMAC + store):  %.3f us CPU per verification (%ld misses)\n",
           (t2 - t1) * 1e6 / (double)iters, misses);
    printf("cached (hit):                     %.3f us CPU per verification\n",
           (t3 - t2) * 1e6 / (double)iters);
    jwtauth_cache_free(cache);
    free(ring);
    free(ring_len);
    return 0;
}
