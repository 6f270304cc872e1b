/*
 * test_cors.c - CORS decisions: origin matching, same-origin, the
 * Access-Control-Request-Headers list, preflight methods, the Vary merge,
 * and the configuration rules the policy relies on.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <event2/buffer.h>

#include "cfg.h"
#include "cors.h"
#include "wbuf.h"

#define BIT(m) (UINT64_C(1) << (m))

static char *origins[] = {"https://app.example.com", "http://localhost:3000",
                          "https://explicit.example.com:443"};
static char *headers[] = {"Authorization", "Content-Type", "X-Request-Id"};

static struct fg_cors policy(void)
{
    struct fg_cors c = {
        .enabled = true,
        .origins = origins,
        .norigins = 3,
        .credentials = true,
        .methods =
            BIT(H1_METHOD_GET) | BIT(H1_METHOD_HEAD) | BIT(H1_METHOD_POST) | BIT(H1_METHOD_PUT) | BIT(H1_METHOD_DELETE),
        .headers = headers,
        .nheaders = 3,
        .expose_headers = "X-Request-Id",
        .max_age = 600,
    };
    return c;
}

static bool allowed(const struct fg_cors *c, const char *o)
{
    return cors_origin_allowed(c, o, strlen(o));
}

/* ---- origins ------------------------------------------------------------- */

static void test_origin_exact_and_case(void **state)
{
    struct fg_cors c = policy();

    assert_true(allowed(&c, "https://app.example.com"));
    assert_true(allowed(&c, "HTTPS://App.Example.COM"));
    assert_true(allowed(&c, "http://localhost:3000"));
    assert_true(allowed(&c, "https://explicit.example.com:443"));
}

static void test_origin_lookalikes(void **state)
{
    struct fg_cors c = policy();
    static const char *const bad[] = {
        "https://app.example.com.evil.test", /* suffix */
        "https://evil-app.example.com",      /* prefix */
        "https://evilapp.example.com",
        "https://app.example.co", /* truncated */
        "https://xapp.example.com",
        "https://app.example.comx",
        "http://app.example.com", /* scheme */
        "wss://app.example.com",
        "https://app.example.com:443",  /* explicit default port: not listed */
        "https://app.example.com:8443", /* port */
        "https://explicit.example.com", /* listed only with its port */
        "http://localhost",
        "http://localhost:30000",
        "https://app.example.com/",     /* trailing slash */
        "https://app.example.com/path", /* path */
        "https://user@app.example.com", /* userinfo */
        "https://app.example.com@evil.test",
        "null",
        "",
        " https://app.example.com",
        "https://app.example.com ",
        "https://app.example.com, https://evil.test",
        "*",
    };

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        if (allowed(&c, bad[i]))
            fail_msg("\"%s\" was allowed", bad[i]);
}

static void test_origin_embedded_nul_never_matches(void **state)
{
    struct fg_cors c = policy();
    const char o[] = "https://app.example.com\0.evil.test";

    assert_false(cors_origin_allowed(&c, o, sizeof(o) - 1));
}

static void test_any_origin_needs_a_wellformed_origin(void **state)
{
    struct fg_cors c = policy();
    char longo[CORS_ORIGIN_MAX + 20];

    c.norigins = 0;
    c.any_origin = true;
    c.credentials = false;
    assert_true(allowed(&c, "https://anything.example"));
    assert_true(allowed(&c, "http://127.0.0.1:8080"));
    assert_true(allowed(&c, "http://[::1]:8080"));
    assert_false(allowed(&c, "null"));
    assert_false(allowed(&c, ""));
    assert_false(allowed(&c, "https://"));
    assert_false(allowed(&c, "https://a.example/"));
    assert_false(allowed(&c, "https://u@a.example"));
    assert_false(allowed(&c, "https://a.example:"));
    assert_false(allowed(&c, "https://a.example:123456"));
    assert_false(allowed(&c, "https://a.example:80x"));
    assert_false(allowed(&c, "https://[::1"));
    assert_false(allowed(&c, "https://[]"));
    assert_false(allowed(&c, "file://a.example"));
    assert_false(allowed(&c, "https://a example"));
    /* the host and port by the rule of a request's Host (route_host_normalize) */
    assert_true(allowed(&c, "https://A-B.Example:65535"));
    assert_true(allowed(&c, "http://[2001:db8::1]"));
    assert_false(allowed(&c, "https://a..example"));
    assert_false(allowed(&c, "https://.example"));
    assert_false(allowed(&c, "https://a_b.example"));
    assert_false(allowed(&c, "https://a.example:0"));
    assert_false(allowed(&c, "https://a.example:99999"));
    assert_false(allowed(&c, "https://[1.2.3.4]"));
    assert_false(allowed(&c, "https://[::1::2]"));
    memcpy(longo, "https://", 8);
    memset(longo + 8, 'a', sizeof(longo) - 9);
    longo[sizeof(longo) - 1] = '\0';
    assert_false(allowed(&c, longo));
}

static void test_same_origin(void **state)
{
    const char *o = "https://mvp-x.preview.example.com";
    const char *h = "MVP-X.preview.example.com";

    assert_true(cors_same_origin(o, strlen(o), true, h, strlen(h)));
    assert_false(cors_same_origin(o, strlen(o), false, h, strlen(h)));
    assert_true(cors_same_origin("http://localhost:8080", 21, false, "localhost:8080", 14));
    assert_false(cors_same_origin("https://localhost:8443", 22, true, "localhost", 9));
    assert_false(cors_same_origin("https://localhost", 17, true, "localhost:8443", 14));
    assert_false(cors_same_origin("https://a.example.evil", 22, true, "a.example", 9));
    assert_false(cors_same_origin("https://", 8, true, "", 0));
    assert_false(cors_same_origin("https://a", 9, true, NULL, 0));
}

static void test_origin_str(void **state)
{
    assert_string_equal(cors_origin_str(CORS_ORIGIN_ABSENT), "absent");
    assert_string_equal(cors_origin_str(CORS_ORIGIN_ALLOWED), "allowed");
    assert_string_equal(cors_origin_str(CORS_ORIGIN_SAME), "same");
    assert_string_equal(cors_origin_str(CORS_ORIGIN_REFUSED), "refused");
}

/* ---- Access-Control-Request-Headers -------------------------------------- */

static int allow_headers(const char *value, char *out, size_t cap)
{
    struct fg_cors c = policy();
    size_t n = 12345;
    int rc = cors_allow_headers(&c, value, strlen(value), out, cap, &n);

    if (rc == 0)
        assert_int_equal(n, strlen(out));
    return rc;
}

static void test_request_headers_allowed(void **state)
{
    char out[256];

    assert_int_equal(allow_headers("content-type", out, sizeof(out)), 0);
    assert_string_equal(out, "Content-Type");
    assert_int_equal(allow_headers("authorization,content-type", out, sizeof(out)), 0);
    assert_string_equal(out, "Authorization, Content-Type");
    /* case variants, OWS, empty elements, repeats */
    assert_int_equal(
        allow_headers(" X-REQUEST-ID ,\t,, AUTHORIZATION\t, x-request-id,", out, sizeof(out)), 0);
    assert_string_equal(out, "Authorization, X-Request-Id");
    assert_int_equal(allow_headers("", out, sizeof(out)), 0);
    assert_string_equal(out, "");
    assert_int_equal(allow_headers(" , ,", out, sizeof(out)), 0);
    assert_string_equal(out, "");
}

static void test_request_headers_refused(void **state)
{
    char out[256];
    static const char *const bad[] = {
        "x-evil",
        "content-type, x-evil",
        "x-evil, content-type",
        "authorization, content-type, cookie",
        "content-type x-request-id", /* not a list of tokens */
        "content-type;q=1",
        "content-typ",
        "content-type-x",
        "\"content-type\"",
        "content-type\x7f",
    };

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        if (allow_headers(bad[i], out, sizeof(out)) != -1)
            fail_msg("\"%s\" was allowed", bad[i]);
}

static void test_request_headers_answer_must_fit(void **state)
{
    char out[16];

    assert_int_equal(allow_headers("content-type", out, sizeof(out)), 0);
    assert_int_equal(allow_headers("content-type, authorization", out, sizeof(out)), -1);
}

/* ---- methods ------------------------------------------------------------- */

static void test_route_methods(void **state)
{
    struct fg_cors c = policy();
    struct fg_route rt = {.methods = 0};

    assert_true(cors_route_methods(&c, &rt) == c.methods);
    rt.methods = BIT(H1_METHOD_GET) | BIT(H1_METHOD_HEAD) | BIT(H1_METHOD_PATCH);
    assert_true(cors_route_methods(&c, &rt) == (BIT(H1_METHOD_GET) | BIT(H1_METHOD_HEAD)));
    rt.methods = BIT(H1_METHOD_PATCH);
    assert_true(cors_route_methods(&c, &rt) == 0);
}

static void test_method_number(void **state)
{
    assert_int_equal(cors_method_number("PUT", 3), H1_METHOD_PUT);
    assert_int_equal(cors_method_number("DELETE", 6), H1_METHOD_DELETE);
    assert_int_equal(cors_method_number("put", 3), -1);
    assert_int_equal(cors_method_number("PUTX", 4), -1);
    assert_int_equal(cors_method_number("PUT", 2), -1); /* "PU" */
    assert_int_equal(cors_method_number("", 0), -1);
    assert_int_equal(cors_method_number("GET\0X", 5), -1);
}

static void test_render_methods(void **state)
{
    char out[64];

    assert_int_equal(
        cors_render_methods(BIT(H1_METHOD_GET) | BIT(H1_METHOD_POST) | BIT(H1_METHOD_DELETE), out, sizeof(out)),
        17);
    assert_string_equal(out, "DELETE, GET, POST");
    assert_int_equal(cors_render_methods(0, out, sizeof(out)), 0);
    assert_string_equal(out, "");
    assert_int_equal(cors_render_methods(BIT(H1_METHOD_GET) | BIT(H1_METHOD_POST), out, 6), -1);
}

/* ---- Vary and upstream headers ------------------------------------------- */

static void vary_of(const struct fg_config *cfg, const struct h1_header *hs, size_t n,
                    const char *expect)
{
    struct evbuffer *b = evbuffer_new();
    struct wbuf w;
    size_t len;

    wbuf_begin(&w, b, 4096);
    cors_write_vary(cfg, hs, n, &w);
    assert_int_equal(wbuf_end(&w), 0);
    len = evbuffer_get_length(b);
    char *got = calloc(1, len + 1);
    evbuffer_remove(b, got, len);
    evbuffer_free(b);
    if (strcmp(got, expect) != 0)
        fail_msg("expected \"%s\", got \"%s\"", expect, got);
    free(got);
}

#define H(n, v)                                                                                    \
    {                                                                                              \
        n, sizeof(n) - 1, v, sizeof(v) - 1                                                         \
    }

static void test_vary_merge(void **state)
{
    struct fg_config cfg = {.cors = policy()};
    const struct h1_header ae[] = {H("Content-Type", "text/plain"), H("vary", "Accept-Encoding")};
    const struct h1_header two[] = {H("Vary", "Accept-Encoding"), H("Vary", "Accept-Language")};
    const struct h1_header has[] = {H("Vary", "accept-encoding, ORIGIN")};
    const struct h1_header star[] = {H("Vary", "*")};
    const struct h1_header empty[] = {H("Vary", "")};
    const struct h1_header originish[] = {H("Vary", "X-Origin")};

    vary_of(&cfg, NULL, 0, "Vary: Origin\r\n");
    vary_of(&cfg, ae, 2, "Vary: Accept-Encoding, Origin\r\n");
    vary_of(&cfg, two, 2, "Vary: Accept-Encoding, Accept-Language, Origin\r\n");
    vary_of(&cfg, has, 1, "Vary: accept-encoding, ORIGIN\r\n");
    vary_of(&cfg, star, 1, "Vary: *\r\n");
    vary_of(&cfg, empty, 1, "Vary: Origin\r\n");
    vary_of(&cfg, originish, 1, "Vary: X-Origin, Origin\r\n");
    cfg.cors.enabled = false;
    vary_of(&cfg, NULL, 0, "");
    vary_of(&cfg, ae, 2, "");
}

static void test_owned_response_headers(void **state)
{
    struct fg_config cfg = {.cors = policy()};

    assert_true(cors_owns_response_header(&cfg, "Access-Control-Allow-Origin", 27));
    assert_true(cors_owns_response_header(&cfg, "access-control-max-age", 22));
    assert_true(cors_owns_response_header(&cfg, "ACCESS-CONTROL-X", 16));
    assert_true(cors_owns_response_header(&cfg, "Vary", 4));
    assert_false(cors_owns_response_header(&cfg, "Access-Control", 14));
    assert_false(cors_owns_response_header(&cfg, "X-Access-Control-Allow-Origin", 29));
    assert_false(cors_owns_response_header(&cfg, "Content-Type", 12));
    cfg.cors.enabled = false;
    assert_false(cors_owns_response_header(&cfg, "Access-Control-Allow-Origin", 27));
    assert_false(cors_owns_response_header(&cfg, "Vary", 4));
}

/* ---- configuration the policy relies on ---------------------------------- */

#define HEAD                                                                                       \
    "listen: { https = [ ]; http = [ \"127.0.0.1:8080\" ]; admin = \"\"; };\n"                     \
    "upstreams: { api = { servers = [ \"127.0.0.1:9001\" ]; }; };\n"

static char err[4096];

static void expect_refused(const char *text, const char *needle)
{
    struct fg_config *cfg = cfg_load_string(text, "test.conf", err, sizeof(err));

    if (cfg != NULL) {
        cfg_unref(cfg);
        fail_msg("loaded, expected \"%s\"", needle);
    }
    if (strstr(err, needle) == NULL)
        fail_msg("expected \"%s\" in:\n%s", needle, err);
}

static void test_cfg_star_with_credentials_refused(void **state)
{
    expect_refused(HEAD "cors: { origins = [ \"*\" ]; };\n",
                   "test.conf:3: cors.origins[0]: \"*\" cannot");
    expect_refused(HEAD "cors: { origins = [ \"*\" ]; credentials = true; };\n",
                   "cannot be used with credentials");
}

static void test_cfg_star_without_credentials(void **state)
{
    struct fg_config *cfg = cfg_load_string(
        HEAD "cors: { origins = [ \"*\", \"https://A.example\" ]; credentials = false; };\n",
        "test.conf", err, sizeof(err));

    if (cfg == NULL)
        fail_msg("refused:\n%s", err);
    assert_true(cfg->cors.enabled);
    assert_true(cfg->cors.any_origin);
    assert_int_equal(cfg->cors.norigins, 1);
    assert_string_equal(cfg->cors.origins[0], "https://a.example");
    cfg_unref(cfg);
}

static void test_cfg_refuses_non_origins(void **state)
{
    expect_refused(HEAD "cors: { origins = [ \"null\" ]; };\n", "\"null\" is not an origin");
    expect_refused(HEAD "cors: { origins = [ \"https://a.example/\" ]; };\n", "is not an origin");
    expect_refused(HEAD "cors: { origins = [ \"https://u@a.example\" ]; };\n", "is not an origin");
    expect_refused(HEAD "cors: { origins = [ \"a.example\" ]; };\n", "is not an origin");
}

static void test_cfg_absent_group_disables(void **state)
{
    struct fg_config *cfg = cfg_load_string(HEAD, "test.conf", err, sizeof(err));

    if (cfg == NULL)
        fail_msg("refused:\n%s", err);
    assert_false(cfg->cors.enabled);
    assert_false(cors_owns_response_header(cfg, "Vary", 4));
    cfg_unref(cfg);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_origin_exact_and_case),
        cmocka_unit_test(test_origin_lookalikes),
        cmocka_unit_test(test_origin_embedded_nul_never_matches),
        cmocka_unit_test(test_any_origin_needs_a_wellformed_origin),
        cmocka_unit_test(test_same_origin),
        cmocka_unit_test(test_origin_str),
        cmocka_unit_test(test_request_headers_allowed),
        cmocka_unit_test(test_request_headers_refused),
        cmocka_unit_test(test_request_headers_answer_must_fit),
        cmocka_unit_test(test_route_methods),
        cmocka_unit_test(test_method_number),
        cmocka_unit_test(test_render_methods),
        cmocka_unit_test(test_vary_merge),
        cmocka_unit_test(test_owned_response_headers),
        cmocka_unit_test(test_cfg_star_with_credentials_refused),
        cmocka_unit_test(test_cfg_star_without_credentials),
        cmocka_unit_test(test_cfg_refuses_non_origins),
        cmocka_unit_test(test_cfg_absent_group_disables),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
