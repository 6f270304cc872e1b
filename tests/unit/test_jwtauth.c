/*
 * test_jwtauth.c - the JWT stage's pure parts: Bearer and cookie parsing,
 * the token shape check, base64url, header checks and key choice by kid,
 * claim checks with leeway, forwarded claim rendering, the whole verify
 * (with tokens signed by libjwt as an independent oracle) and the cache.
 * Token text is read from the end of a page followed by a PROT_NONE page.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cmocka.h>
#include <jwt.h>
#include <openssl/hmac.h>

#include "jwtauth.h"
#include "../b64url.h"

#define NOW ((time_t)1700000000)

static char *guard_base;
static size_t guard_page;

static unsigned char key_a[] = "0123456789abcdef0123456789abcdef-key-a";
static unsigned char key_b[] = "0123456789abcdef0123456789abcdef-key-b";
static struct fg_jwt_key keys[] = {
    {.kid = "a", .secret = key_a, .secret_len = sizeof(key_a) - 1},
    {.kid = "b", .secret = key_b, .secret_len = sizeof(key_b) - 1},
};
static struct fg_claim_header fwd[] = {
    {.header = "X-User-Id", .header_len = 9, .claim = "sub"},
    {.header = "X-User-Tier", .header_len = 11, .claim = "tier"},
    {.header = "X-Org", .header_len = 5, .claim = "org"},
};

static struct fg_jwt base_jwt(void)
{
    struct fg_jwt j = {
        .algorithm = FG_JWT_HS256,
        .keys = keys,
        .nkeys = 2,
        .issuer = "iss-x",
        .audience = "aud-x",
        .leeway_seconds = 30,
        .require_exp = true,
        .token_type = "access",
        .type_claim = "type",
        .tier_claim = "tier",
        .cookie = "",
        .max_token_bytes = 8192,
        .forward_claims = fwd,
        .nforward_claims = 3,
    };
    return j;
}

static int setup(void **state)
{
    guard_page = (size_t)sysconf(_SC_PAGESIZE);
    guard_base =
        mmap(NULL, 3 * guard_page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (guard_base == MAP_FAILED)
        return -1;
    return mprotect(guard_base + 2 * guard_page, guard_page, PROT_NONE);
}

static int teardown(void **state)
{
    munmap(guard_base, 3 * guard_page);
    return 0;
}

/* S copied so that its last byte is the last readable one. */
static const char *guarded(const char *s, size_t n)
{
    char *p = guard_base + 2 * guard_page - n;

    assert_true(n <= 2 * guard_page);
    memcpy(p, s, n);
    return p;
}

/* ---- token making ------------------------------------------------------ */

/* "b64(header).b64(payload).b64(HMAC(md, key))" into OUT. */
static void make_token(char *out, const char *header, const char *payload, const EVP_MD *md,
                       const unsigned char *key, size_t key_len)
{
    unsigned char mac[EVP_MAX_MD_SIZE];
    unsigned int mac_len;
    size_t n = b64u((const unsigned char *)header, strlen(header), out);

    out[n++] = '.';
    n += b64u((const unsigned char *)payload, strlen(payload), out + n);
    HMAC(md, key, (int)key_len, (const unsigned char *)out, n, mac, &mac_len);
    out[n++] = '.';
    b64u(mac, mac_len, out + n);
}

static const char *good_claims(void)
{
    return "{\"sub\":\"u1\",\"tier\":\"premium\",\"type\":\"access\",\"iss\":\"iss-x\","
           "\"aud\":\"aud-x\",\"exp\":1700000600,\"iat\":1699999990}";
}

static enum jwtauth_result verify_text(const struct fg_jwt *j, const char *tok,
                                       struct jwtauth_identity *id)
{
    return jwtauth_verify(j, guarded(tok, strlen(tok)), strlen(tok), NOW, id);
}

/* ---- Bearer ------------------------------------------------------------ */

struct bearer_case {
    const char *in;
    const char *tok; /* NULL: refused */
};

static void test_bearer(void **state)
{
    static const struct bearer_case cases[] = {
        {"Bearer abc.def.ghi", "abc.def.ghi"},
        {"bearer abc", "abc"},
        {"BEARER abc", "abc"},
        {"bEaReR x", "x"},
        {"Bearer  abc", "abc"},
        {"Bearer     abc.def.ghi", "abc.def.ghi"},
        {"Bearer\tabc", NULL},
        {"Bearer \tabc", NULL},
        {"Bearer\t abc", NULL},
        {"Bearer  ", NULL},
        {"Bearer  abc def", NULL},
        {"Bearer abc def", NULL},
        {"Bearer abc\t", NULL},
        {"Bearer", NULL},
        {"Bearer ", NULL},
        {"Bearerabc", NULL},
        {"Basic dXNlcjpwYXNz", NULL},
        {"Bearer: abc", NULL},
        {"", NULL},
        {"Token abc", NULL},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        const char *in = guarded(cases[i].in, strlen(cases[i].in));
        const char *tok = NULL;
        size_t len = 0;
        int rc = jwtauth_bearer(in, strlen(cases[i].in), &tok, &len);
        if (cases[i].tok == NULL) {
            if (rc != -1)
                fail_msg("\"%s\": accepted", cases[i].in);
            continue;
        }
        if (rc != 0 || len != strlen(cases[i].tok) || memcmp(tok, cases[i].tok, len) != 0)
            fail_msg("\"%s\": want \"%s\"", cases[i].in, cases[i].tok);
    }
}

/* ---- cookie ------------------------------------------------------------ */

static void test_cookie(void **state)
{
    static const struct {
        const char *in;
        int rc;
        const char *tok;
    } cases[] = {
        {"access_token=abc", 1, "abc"},
        {"a=1; access_token=abc; b=2", 1, "abc"},
        {"a=1;access_token=abc", 1, "abc"},
        {"access_token=\"abc\"", 1, "abc"},
        {"access_token=", 1, ""},
        {"x_access_token=abc", 0, NULL},
        {"access_tokenx=abc", 0, NULL},
        {"Access_Token=abc", 0, NULL},
        {"access_token", 1, ""}, /* a bare name: the cookie, empty (no token) */
        {"", 0, NULL},
        {"access_token=a; access_token=b", -1, NULL},
        /* found as the preview rules find it (cookie.c): a name is trimmed,
         * and a piece without '=' is that cookie, empty */
        {"access_token =abc", 1, "abc"},
        {" access_token\t=abc ;b=1", 1, "abc"},
        {"access_token; access_token=abc", -1, NULL},
        {"Access_Token=a; access_token=abc", 1, "abc"},
        {"access_token=\"ab;c\"", 1, "\"ab"}, /* ';' splits inside quotes too */
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        size_t n = strlen(cases[i].in);
        const char *tok = NULL;
        size_t len = 0;
        int rc = jwtauth_cookie(guarded(cases[i].in, n), n, "access_token", &tok, &len);
        if (rc != cases[i].rc)
            fail_msg("\"%s\": rc %d, want %d", cases[i].in, rc, cases[i].rc);
        if (rc == 1 && (len != strlen(cases[i].tok) || memcmp(tok, cases[i].tok, len) != 0))
            fail_msg("\"%s\": want \"%s\"", cases[i].in, cases[i].tok);
    }
}

/* ---- shape and base64url ------------------------------------------------ */

static void test_shape(void **state)
{
    static const struct {
        const char *in;
        enum jwtauth_result want;
    } cases[] = {
        {"a.b.c", JWTAUTH_OK},
        {"a.b.", JWTAUTH_OK}, /* empty signature: refused by the signature check */
        {"eyJ-_0.Zz9.AB_-", JWTAUTH_OK},
        {"a.b", JWTAUTH_MALFORMED},
        {"a.b.c.d", JWTAUTH_MALFORMED},
        {"a.b.c.d.e", JWTAUTH_MALFORMED},
        {".b.c", JWTAUTH_MALFORMED},
        {"a..c", JWTAUTH_MALFORMED},
        {"a.b.c=", JWTAUTH_MALFORMED},
        {"a+.b.c", JWTAUTH_MALFORMED},
        {"a/.b.c", JWTAUTH_MALFORMED},
        {"a .b.c", JWTAUTH_MALFORMED},
        {"a.b.c\n", JWTAUTH_MALFORMED},
        {"", JWTAUTH_MALFORMED},
        {"abc", JWTAUTH_MALFORMED},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        size_t n = strlen(cases[i].in);
        enum jwtauth_result r = jwtauth_shape(guarded(cases[i].in, n), n, 8192);
        if (r != cases[i].want)
            fail_msg("\"%s\": %s, want %s", cases[i].in, jwtauth_result_str(r),
                     jwtauth_result_str(cases[i].want));
    }
    assert_int_equal(jwtauth_shape("aaaa.b.c", 8, 7), JWTAUTH_TOO_LONG);
    assert_int_equal(jwtauth_shape("aaa.b.c", 7, 7), JWTAUTH_OK);
    /* Too long is decided before any character is looked at. */
    assert_int_equal(jwtauth_shape("a a a a a", 9, 8), JWTAUTH_TOO_LONG);
}

static void test_b64url(void **state)
{
    unsigned char out[16];

    assert_int_equal(jwtauth_b64url_decode("e30", 3, out), 2);
    assert_memory_equal(out, "{}", 2);
    assert_int_equal(jwtauth_b64url_decode("YWJj", 4, out), 3);
    assert_int_equal(jwtauth_b64url_decode("YQ", 2, out), 1);
    assert_int_equal(jwtauth_b64url_decode("YR", 2, out), -1); /* non-zero trailing bits */
    assert_int_equal(jwtauth_b64url_decode("YWI", 3, out), 2);
    assert_int_equal(jwtauth_b64url_decode("YWJ", 3, out), -1); /* non-zero trailing bits */
    assert_int_equal(jwtauth_b64url_decode("Y", 1, out), -1);
    assert_int_equal(jwtauth_b64url_decode("YQ==", 4, out), -1);
    assert_int_equal(jwtauth_b64url_decode("+/8", 3, out), -1);
    assert_int_equal(jwtauth_b64url_decode("-_8", 3, out), 2);
    assert_int_equal(out[0], 0xfb);
    assert_int_equal(out[1], 0xff);
}

/* ---- header ------------------------------------------------------------- */

static enum jwtauth_result header(const struct fg_jwt *j, const char *json, size_t *first,
                                  size_t *count)
{
    json_t *h = json_loads(json, JSON_ALLOW_NUL, NULL);
    assert_non_null(h);
    enum jwtauth_result r = jwtauth_check_header(j, h, first, count);
    json_decref(h);
    return r;
}

static void test_header_alg(void **state)
{
    struct fg_jwt j = base_jwt();
    size_t f, c;
    static const char *const refused[] = {
        "{\"alg\":\"none\"}",    "{\"alg\":\"None\"}",  "{\"alg\":\"NONE\"}",
        "{\"alg\":\"HS384\"}",   "{\"alg\":\"HS512\"}", "{\"alg\":\"hs256\"}",
        "{\"alg\":\"RS256\"}",   "{\"alg\":\"ES256\"}", "{\"alg\":\"HS256 \"}",
        "{\"alg\":\"\"}",        "{\"alg\":256}",       "{\"typ\":\"JWT\"}",
        "{\"alg\":[\"HS256\"]}",
    };
    for (size_t i = 0; i < sizeof(refused) / sizeof(refused[0]); i++)
        if (header(&j, refused[i], &f, &c) != JWTAUTH_BAD_ALG)
            fail_msg("%s: not refused as bad_alg", refused[i]);
    assert_int_equal(header(&j, "{\"alg\":\"HS256\"}", &f, &c), JWTAUTH_OK);
    j.algorithm = FG_JWT_HS512;
    assert_int_equal(header(&j, "{\"alg\":\"HS256\"}", &f, &c), JWTAUTH_BAD_ALG);
    assert_int_equal(header(&j, "{\"alg\":\"HS512\"}", &f, &c), JWTAUTH_OK);
}

static void test_header_crit_and_key_locations(void **state)
{
    struct fg_jwt j = base_jwt();
    size_t f, c;

    assert_int_equal(header(&j, "{\"alg\":\"HS256\",\"crit\":[\"exp\"]}", &f, &c), JWTAUTH_CRIT);
    assert_int_equal(header(&j, "{\"alg\":\"HS256\",\"crit\":[]}", &f, &c), JWTAUTH_CRIT);
    assert_int_equal(header(&j, "{\"alg\":\"HS256\",\"jku\":\"http://x/\"}", &f, &c),
                     JWTAUTH_KEY_HEADER);
    assert_int_equal(header(&j, "{\"alg\":\"HS256\",\"x5u\":\"http://x/\"}", &f, &c),
                     JWTAUTH_KEY_HEADER);
    assert_int_equal(header(&j, "{\"alg\":\"HS256\",\"jwk\":{}}", &f, &c), JWTAUTH_KEY_HEADER);
    assert_int_equal(header(&j, "{\"alg\":\"HS256\",\"x5c\":[]}", &f, &c), JWTAUTH_KEY_HEADER);
    assert_int_equal(header(&j, "{\"alg\":\"HS256\",\"typ\":\"at+jwt\"}", &f, &c), JWTAUTH_OK);
}

static void test_header_kid(void **state)
{
    struct fg_jwt j = base_jwt();
    size_t f = 99, c = 99;

    assert_int_equal(header(&j, "{\"alg\":\"HS256\"}", &f, &c), JWTAUTH_OK);
    assert_int_equal(f, 0);
    assert_int_equal(c, 2);
    assert_int_equal(header(&j, "{\"alg\":\"HS256\",\"kid\":\"b\"}", &f, &c), JWTAUTH_OK);
    assert_int_equal(f, 1);
    assert_int_equal(c, 1);
    assert_int_equal(header(&j, "{\"alg\":\"HS256\",\"kid\":\"a\"}", &f, &c), JWTAUTH_OK);
    assert_int_equal(f, 0);
    assert_int_equal(c, 1);
    assert_int_equal(header(&j, "{\"alg\":\"HS256\",\"kid\":\"A\"}", &f, &c), JWTAUTH_UNKNOWN_KID);
    assert_int_equal(header(&j, "{\"alg\":\"HS256\",\"kid\":\"b \"}", &f, &c), JWTAUTH_UNKNOWN_KID);
    assert_int_equal(header(&j, "{\"alg\":\"HS256\",\"kid\":\"\"}", &f, &c), JWTAUTH_UNKNOWN_KID);
    assert_int_equal(header(&j, "{\"alg\":\"HS256\",\"kid\":\"a\\u0000\"}", &f, &c),
                     JWTAUTH_UNKNOWN_KID);
    assert_int_equal(header(&j, "{\"alg\":\"HS256\",\"kid\":1}", &f, &c), JWTAUTH_BAD_HEADER);
}

/* ---- claims ------------------------------------------------------------- */

static enum jwtauth_result claims_at(const struct fg_jwt *j, const char *json, time_t now,
                                     struct jwtauth_identity *id)
{
    json_t *c = json_loads(json, 0, NULL);
    assert_non_null(c);
    enum jwtauth_result r = jwtauth_check_claims(j, c, now, id);
    json_decref(c);
    return r;
}

static enum jwtauth_result claims(const struct fg_jwt *j, const char *json)
{
    struct jwtauth_identity id;
    return claims_at(j, json, NOW, &id);
}

#define BASE "\"sub\":\"u1\",\"type\":\"access\",\"iss\":\"iss-x\",\"aud\":\"aud-x\""

static void test_claims_times(void **state)
{
    struct fg_jwt j = base_jwt();
    struct jwtauth_identity id;

    assert_int_equal(claims(&j, "{" BASE ",\"exp\":1700000001}"), JWTAUTH_OK);
    assert_int_equal(claims(&j, "{" BASE "}"), JWTAUTH_NO_EXP);
    /* exp: refused from exp + leeway on (RFC 7519 4.1.4: "on or after") */
    assert_int_equal(claims(&j, "{" BASE ",\"exp\":1699999971}"), JWTAUTH_OK);
    assert_int_equal(claims(&j, "{" BASE ",\"exp\":1699999970}"), JWTAUTH_EXPIRED);
    assert_int_equal(claims(&j, "{" BASE ",\"exp\":1699999970.5}"), JWTAUTH_OK);
    assert_int_equal(claims(&j, "{" BASE ",\"exp\":\"1800000000\"}"), JWTAUTH_BAD_TIME);
    assert_int_equal(claims(&j, "{" BASE ",\"exp\":null}"), JWTAUTH_BAD_TIME);
    assert_int_equal(claims(&j, "{" BASE ",\"exp\":-1e300}"), JWTAUTH_EXPIRED);
    assert_int_equal(claims_at(&j, "{" BASE ",\"exp\":1e300}", NOW, &id), JWTAUTH_OK);
    assert_true(id.has_deadline && id.deadline == INT64_MAX);
    assert_int_equal(claims_at(&j, "{" BASE ",\"exp\":1700000100}", NOW, &id), JWTAUTH_OK);
    assert_true(id.has_deadline && id.deadline == 1700000130);
    /* nbf and iat: the future beyond leeway */
    assert_int_equal(claims(&j, "{" BASE ",\"exp\":1800000000,\"nbf\":1700000030}"), JWTAUTH_OK);
    assert_int_equal(claims(&j, "{" BASE ",\"exp\":1800000000,\"nbf\":1700000031}"),
                     JWTAUTH_NOT_YET);
    assert_int_equal(claims(&j, "{" BASE ",\"exp\":1800000000,\"nbf\":true}"), JWTAUTH_BAD_TIME);
    assert_int_equal(claims(&j, "{" BASE ",\"exp\":1800000000,\"iat\":1700000030}"), JWTAUTH_OK);
    assert_int_equal(claims(&j, "{" BASE ",\"exp\":1800000000,\"iat\":1700000031}"),
                     JWTAUTH_IAT_FUTURE);
    assert_int_equal(claims(&j, "{" BASE ",\"exp\":1800000000,\"iat\":\"1\"}"), JWTAUTH_BAD_TIME);
    j.require_exp = false;
    assert_int_equal(claims_at(&j, "{" BASE "}", NOW, &id), JWTAUTH_OK);
    assert_false(id.has_deadline);
    assert_int_equal(claims(&j, "{" BASE ",\"exp\":1}"), JWTAUTH_EXPIRED);
    j.leeway_seconds = 0;
    assert_int_equal(claims(&j, "{" BASE ",\"exp\":1700000000}"), JWTAUTH_EXPIRED);
    assert_int_equal(claims(&j, "{" BASE ",\"exp\":1700000001}"), JWTAUTH_OK);
}

#define EXP ",\"exp\":1800000000"

static void test_claims_iss_aud_type(void **state)
{
    struct fg_jwt j = base_jwt();

    assert_int_equal(claims(&j, "{\"sub\":\"u\",\"type\":\"access\",\"aud\":\"aud-x\"" EXP "}"),
                     JWTAUTH_BAD_ISSUER);
    assert_int_equal(claims(&j, "{\"sub\":\"u\",\"type\":\"access\",\"iss\":\"iss-y\","
                                "\"aud\":\"aud-x\"" EXP "}"),
                     JWTAUTH_BAD_ISSUER);
    assert_int_equal(claims(&j, "{\"sub\":\"u\",\"type\":\"access\",\"iss\":\"iss-x\"" EXP "}"),
                     JWTAUTH_BAD_AUDIENCE);
    assert_int_equal(claims(&j, "{\"sub\":\"u\",\"type\":\"access\",\"iss\":\"iss-x\","
                                "\"aud\":\"aud-y\"" EXP "}"),
                     JWTAUTH_BAD_AUDIENCE);
    assert_int_equal(claims(&j, "{\"sub\":\"u\",\"type\":\"access\",\"iss\":\"iss-x\","
                                "\"aud\":[\"aud-y\",\"aud-x\"]" EXP "}"),
                     JWTAUTH_OK);
    assert_int_equal(claims(&j, "{\"sub\":\"u\",\"type\":\"access\",\"iss\":\"iss-x\","
                                "\"aud\":[\"aud-y\"]" EXP "}"),
                     JWTAUTH_BAD_AUDIENCE);
    assert_int_equal(claims(&j, "{\"sub\":\"u\",\"type\":\"access\",\"iss\":\"iss-x\","
                                "\"aud\":[]" EXP "}"),
                     JWTAUTH_BAD_AUDIENCE);
    assert_int_equal(claims(&j, "{\"sub\":\"u\",\"type\":\"access\",\"iss\":\"iss-x\","
                                "\"aud\":[[\"aud-x\"]]" EXP "}"),
                     JWTAUTH_BAD_AUDIENCE);
    assert_int_equal(claims(&j, "{\"sub\":\"u\",\"type\":\"refresh\",\"iss\":\"iss-x\","
                                "\"aud\":\"aud-x\"" EXP "}"),
                     JWTAUTH_BAD_TYPE);
    assert_int_equal(claims(&j, "{\"sub\":\"u\",\"iss\":\"iss-x\",\"aud\":\"aud-x\"" EXP "}"),
                     JWTAUTH_BAD_TYPE);
    j.issuer = "";
    j.audience = "";
    j.token_type = "";
    assert_int_equal(claims(&j, "{\"sub\":\"u\",\"type\":\"refresh\"" EXP "}"), JWTAUTH_OK);
}

static void test_claims_identity(void **state)
{
    struct fg_jwt j = base_jwt();
    struct jwtauth_identity id;
    char big[400], json[600];

    assert_int_equal(claims_at(&j, "{" BASE ",\"tier\":\"gold\",\"org\":42" EXP "}", NOW, &id),
                     JWTAUTH_OK);
    assert_string_equal(id.user, "u1");
    assert_int_equal(id.user_len, 2);
    assert_string_equal(id.tier, "gold");
    assert_int_equal(id.headers_len, strlen("X-User-Id: u1\r\nX-User-Tier: gold\r\nX-Org: 42\r\n"));
    assert_memory_equal(id.headers, "X-User-Id: u1\r\nX-User-Tier: gold\r\nX-Org: 42\r\n",
                        id.headers_len);
    /* absent tier and org: no header, empty tier */
    assert_int_equal(claims_at(&j, "{" BASE EXP "}", NOW, &id), JWTAUTH_OK);
    assert_string_equal(id.tier, "");
    assert_memory_equal(id.headers, "X-User-Id: u1\r\n", id.headers_len);
    /* numbers: integers and whole reals rendered as integers */
    assert_int_equal(claims_at(&j, "{" BASE ",\"org\":-7" EXP "}", NOW, &id), JWTAUTH_OK);
    assert_memory_equal(id.headers, "X-User-Id: u1\r\nX-Org: -7\r\n", id.headers_len);
    assert_int_equal(claims_at(&j, "{" BASE ",\"org\":3.0" EXP "}", NOW, &id), JWTAUTH_OK);
    assert_memory_equal(id.headers, "X-User-Id: u1\r\nX-Org: 3\r\n", id.headers_len);
    static const char *const bad_org[] = {"1.5",
                                          "true",
                                          "null",
                                          "{}",
                                          "[1]",
                                          "1e300",
                                          "\"a\\r\\nX-Admin: 1\"",
                                          "\"a\\u0000\"",
                                          "\"\\u007f\"",
                                          "\" lead\"",
                                          "\"trail \""};
    for (size_t i = 0; i < sizeof(bad_org) / sizeof(bad_org[0]); i++) {
        snprintf(json, sizeof(json), "{" BASE ",\"org\":%s" EXP "}", bad_org[i]);
        json_t *c = json_loads(json, JSON_ALLOW_NUL, NULL);
        assert_non_null(c);
        if (jwtauth_check_claims(&j, c, NOW, &id) != JWTAUTH_BAD_CLAIM)
            fail_msg("org %s: not refused", bad_org[i]);
        json_decref(c);
    }
    /* sub: a printable string that fits, without edge whitespace */
    assert_int_equal(claims(&j, "{\"type\":\"access\",\"iss\":\"iss-x\",\"aud\":\"aud-x\"" EXP "}"),
                     JWTAUTH_BAD_SUBJECT);
    assert_int_equal(claims(&j, "{\"sub\":5,\"type\":\"access\",\"iss\":\"iss-x\","
                                "\"aud\":\"aud-x\"" EXP "}"),
                     JWTAUTH_BAD_SUBJECT);
    assert_int_equal(claims(&j, "{\"sub\":\"\",\"type\":\"access\",\"iss\":\"iss-x\","
                                "\"aud\":\"aud-x\"" EXP "}"),
                     JWTAUTH_BAD_SUBJECT);
    assert_int_equal(claims(&j, "{\"sub\":\"a\\nb\",\"type\":\"access\",\"iss\":\"iss-x\","
                                "\"aud\":\"aud-x\"" EXP "}"),
                     JWTAUTH_BAD_SUBJECT);
    memset(big, 'x', 256);
    big[256] = '\0';
    snprintf(json, sizeof(json),
             "{\"sub\":\"%s\",\"type\":\"access\",\"iss\":\"iss-x\","
             "\"aud\":\"aud-x\"" EXP "}",
             big);
    assert_int_equal(claims(&j, json), JWTAUTH_BAD_SUBJECT);
    big[255] = '\0';
    snprintf(json, sizeof(json),
             "{\"sub\":\"%s\",\"type\":\"access\",\"iss\":\"iss-x\","
             "\"aud\":\"aud-x\"" EXP "}",
             big);
    assert_int_equal(claims(&j, json), JWTAUTH_OK);
    /* tier: a string that fits */
    assert_int_equal(claims(&j, "{" BASE ",\"tier\":1" EXP "}"), JWTAUTH_BAD_CLAIM);
    assert_int_equal(claims(&j, "{" BASE ",\"tier\":\"\"" EXP "}"), JWTAUTH_BAD_CLAIM);
}

/* ---- the whole verify --------------------------------------------------- */

static void test_verify(void **state)
{
    struct fg_jwt j = base_jwt();
    struct jwtauth_identity id;
    char tok[1024];

    make_token(tok, "{\"alg\":\"HS256\",\"typ\":\"JWT\"}", good_claims(), EVP_sha256(), key_a,
               sizeof(key_a) - 1);
    assert_int_equal(verify_text(&j, tok, &id), JWTAUTH_OK);
    assert_string_equal(id.user, "u1");
    /* no kid: the second key is tried too */
    make_token(tok, "{\"alg\":\"HS256\"}", good_claims(), EVP_sha256(), key_b, sizeof(key_b) - 1);
    assert_int_equal(verify_text(&j, tok, &id), JWTAUTH_OK);
    /* kid pins the key */
    make_token(tok, "{\"alg\":\"HS256\",\"kid\":\"a\"}", good_claims(), EVP_sha256(), key_b,
               sizeof(key_b) - 1);
    assert_int_equal(verify_text(&j, tok, &id), JWTAUTH_BAD_SIGNATURE);
    make_token(tok, "{\"alg\":\"HS256\",\"kid\":\"b\"}", good_claims(), EVP_sha256(), key_b,
               sizeof(key_b) - 1);
    assert_int_equal(verify_text(&j, tok, &id), JWTAUTH_OK);
    /* the header's HMAC size never changes the configured one */
    make_token(tok, "{\"alg\":\"HS512\"}", good_claims(), EVP_sha512(), key_a, sizeof(key_a) - 1);
    assert_int_equal(verify_text(&j, tok, &id), JWTAUTH_BAD_ALG);
    make_token(tok, "{\"alg\":\"HS384\"}", good_claims(), EVP_sha256(), key_a, sizeof(key_a) - 1);
    assert_int_equal(verify_text(&j, tok, &id), JWTAUTH_BAD_ALG);
    /* a token signed right but claiming too much is still refused */
    make_token(tok, "{\"alg\":\"HS256\"}", "{\"sub\":\"u\"}", EVP_sha256(), key_a,
               sizeof(key_a) - 1);
    assert_int_equal(verify_text(&j, tok, &id), JWTAUTH_NO_EXP);
    make_token(tok, "{\"alg\":\"HS256\"}", "[]", EVP_sha256(), key_a, sizeof(key_a) - 1);
    assert_int_equal(verify_text(&j, tok, &id), JWTAUTH_BAD_PAYLOAD);
    make_token(tok, "{\"alg\":\"HS256\",\"alg\":\"HS256\"}", good_claims(), EVP_sha256(), key_a,
               sizeof(key_a) - 1);
    assert_int_equal(verify_text(&j, tok, &id), JWTAUTH_BAD_HEADER);
    /* signature changes */
    make_token(tok, "{\"alg\":\"HS256\"}", good_claims(), EVP_sha256(), key_a, sizeof(key_a) - 1);
    size_t n = strlen(tok);
    tok[n - 1] = tok[n - 1] == 'A' ? 'B' : 'A';
    assert_int_equal(verify_text(&j, tok, &id), JWTAUTH_BAD_SIGNATURE);
    tok[n - 1] = '\0';
    assert_int_equal(verify_text(&j, tok, &id), JWTAUTH_BAD_SIGNATURE);
    *strrchr(tok, '.') = '\0';
    strcat(tok, ".");
    assert_int_equal(verify_text(&j, tok, &id), JWTAUTH_BAD_SIGNATURE);
}

/* libjwt as an independent signer: what it makes, flowgate accepts. */
static void test_verify_libjwt_oracle(void **state)
{
    struct fg_jwt j = base_jwt();
    struct jwtauth_identity id;
    jwt_t *jwt = NULL;

    assert_int_equal(jwt_new(&jwt), 0);
    assert_int_equal(jwt_set_alg(jwt, JWT_ALG_HS256, key_b, sizeof(key_b) - 1), 0);
    assert_int_equal(jwt_add_header(jwt, "kid", "b"), 0);
    assert_int_equal(jwt_add_grant(jwt, "sub", "oracle"), 0);
    assert_int_equal(jwt_add_grant(jwt, "type", "access"), 0);
    assert_int_equal(jwt_add_grant(jwt, "iss", "iss-x"), 0);
    assert_int_equal(jwt_add_grant(jwt, "aud", "aud-x"), 0);
    assert_int_equal(jwt_add_grant_int(jwt, "exp", (long)NOW + 60), 0);
    char *tok = jwt_encode_str(jwt);
    assert_non_null(tok);
    assert_int_equal(verify_text(&j, tok, &id), JWTAUTH_OK);
    assert_string_equal(id.user, "oracle");
    free(tok);
    /* the same token as libjwt would sign it with alg none: refused */
    assert_int_equal(jwt_set_alg(jwt, JWT_ALG_NONE, NULL, 0), 0);
    tok = jwt_encode_str(jwt);
    assert_non_null(tok);
    assert_int_not_equal(verify_text(&j, tok, &id), JWTAUTH_OK);
    free(tok);
    jwt_free(jwt);
}

/* ---- cache -------------------------------------------------------------- */

static void test_cache(void **state)
{
    struct fg_config cfg = {.refcount = 1, .jwt = base_jwt()};
    struct fg_config cfg2 = {.refcount = 1, .jwt = base_jwt()};
    struct jwtauth_cache *cache = jwtauth_cache_new(8);
    struct jwtauth_identity id;
    char tok[1024];
    bool hit;

    assert_non_null(cache);
    make_token(tok, "{\"alg\":\"HS256\"}", good_claims(), EVP_sha256(), key_a, sizeof(key_a) - 1);
    size_t n = strlen(tok);
    assert_int_equal(jwtauth_cached_verify(cache, &cfg, tok, n, NOW, &id, &hit), JWTAUTH_OK);
    assert_false(hit);
    assert_int_equal(cfg.refcount, 2);
    memset(&id, 0, sizeof(id));
    assert_int_equal(jwtauth_cached_verify(cache, &cfg, tok, n, NOW, &id, &hit), JWTAUTH_OK);
    assert_true(hit);
    assert_string_equal(id.user, "u1");
    assert_string_equal(id.tier, "premium");
    assert_memory_equal(id.headers, "X-User-Id: u1\r\nX-User-Tier: premium\r\n", id.headers_len);
    /* the same bytes but one: a miss, and a failure */
    tok[n - 2] ^= 1;
    assert_int_not_equal(jwtauth_cached_verify(cache, &cfg, tok, n, NOW, &id, &hit), JWTAUTH_OK);
    assert_false(hit);
    tok[n - 2] ^= 1;
    /* a prefix of a cached token is not that token */
    assert_int_not_equal(jwtauth_cached_verify(cache, &cfg, tok, n - 1, NOW, &id, &hit),
                         JWTAUTH_OK);
    /* exp rechecked on every hit: exp 1700000600 + leeway 30 */
    assert_int_equal(jwtauth_cached_verify(cache, &cfg, tok, n, 1700000629, &id, &hit), JWTAUTH_OK);
    assert_true(hit);
    assert_int_equal(jwtauth_cached_verify(cache, &cfg, tok, n, 1700000630, &id, &hit),
                     JWTAUTH_EXPIRED);
    assert_false(hit);
    /* another snapshot: entries dropped, its reference taken, the old one released */
    assert_int_equal(jwtauth_cached_verify(cache, &cfg, tok, n, NOW, &id, &hit), JWTAUTH_OK);
    assert_int_equal(jwtauth_cached_verify(cache, &cfg2, tok, n, NOW, &id, &hit), JWTAUTH_OK);
    assert_false(hit);
    assert_int_equal(cfg.refcount, 1);
    assert_int_equal(cfg2.refcount, 2);
    /* bounded: many distinct tokens fit in 8 entries without growing */
    for (int i = 0; i < 100; i++) {
        char claims_json[256];
        snprintf(claims_json, sizeof(claims_json),
                 "{\"sub\":\"u%d\",\"type\":\"access\",\"iss\":\"iss-x\",\"aud\":\"aud-x\","
                 "\"exp\":1700000600}",
                 i);
        make_token(tok, "{\"alg\":\"HS256\"}", claims_json, EVP_sha256(), key_a, sizeof(key_a) - 1);
        assert_int_equal(jwtauth_cached_verify(cache, &cfg2, tok, strlen(tok), NOW, &id, &hit),
                         JWTAUTH_OK);
        assert_int_equal(jwtauth_cached_verify(cache, &cfg2, tok, strlen(tok), NOW, &id, &hit),
                         JWTAUTH_OK);
        assert_true(hit);
    }
    jwtauth_cache_free(cache);
    assert_int_equal(cfg2.refcount, 1);
}

static void test_result_labels(void **state)
{
    for (int i = 0; i < JWTAUTH__COUNT; i++) {
        const char *s = jwtauth_result_str((enum jwtauth_result)i);
        assert_non_null(s);
        for (const char *p = s; *p; p++)
            assert_true((*p >= 'a' && *p <= 'z') || *p == '_');
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bearer),
        cmocka_unit_test(test_cookie),
        cmocka_unit_test(test_shape),
        cmocka_unit_test(test_b64url),
        cmocka_unit_test(test_header_alg),
        cmocka_unit_test(test_header_crit_and_key_locations),
        cmocka_unit_test(test_header_kid),
        cmocka_unit_test(test_claims_times),
        cmocka_unit_test(test_claims_iss_aud_type),
        cmocka_unit_test(test_claims_identity),
        cmocka_unit_test(test_verify),
        cmocka_unit_test(test_verify_libjwt_oracle),
        cmocka_unit_test(test_cache),
        cmocka_unit_test(test_result_labels),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
