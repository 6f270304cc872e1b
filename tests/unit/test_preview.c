/*
 * test_preview.c - the preview isolation rules: Cookie stripping, the
 * Set-Cookie Domain check, the upstream name built from the template.
 * Inputs are read from the end of a page followed by a PROT_NONE page.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cmocka.h>

#include "guard.h"

#include "preview.h"

/* ---- preview_strip_cookies ---------------------------------------------- */

static char *const platform[] = {"access_token", "refresh_token", "session"};

struct cookie_case {
    const char *in;
    const char *jwt_cookie;
    const char *want; /* "" = header dropped */
};

static const struct cookie_case cookie_cases[] = {
    {"a=1; b=2", NULL, "a=1; b=2"},
    {"access_token=x", NULL, ""},
    {"a=1; access_token=x; b=2", NULL, "a=1; b=2"},
    {"session=s; a=1", NULL, "a=1"},
    {"a=1; refresh_token=r", NULL, "a=1"},
    {"a=1;session=s;b=2", NULL, "a=1; b=2"},
    {"  a=1 ;  b=2  ", NULL, "a=1; b=2"},
    {"Session=s; a=1", NULL, "Session=s; a=1"},     /* names compared byte for byte */
    {"SESSION=s; session=t", NULL, "SESSION=s"},
    {"session =s; a=1", NULL, "a=1"},               /* whitespace before '=' */
    {"session; a=1", NULL, "a=1"},                  /* a piece without '=' */
    {"sessionid=1; a=1", NULL, "sessionid=1; a=1"}, /* a longer name is another cookie */
    {"xsession=1", NULL, "xsession=1"},
    {"a=session", NULL, "a=session"}, /* the value does not matter */
    {";;a=1;;", NULL, "a=1"},
    {"", NULL, ""},
    {"fg_jwt=t; a=1; fg_jwt=u", "fg_jwt", "a=1"},
    {"fg_jwt=t; a=1", "", "fg_jwt=t; a=1"},      /* jwt.cookie unset */
    {"a=1; b=\"q;x\"", NULL, "a=1; b=\"q; x\""}, /* ';' splits even inside quotes, as browsers do */
};

static void test_strip_cookies(void **state)
{
    for (size_t i = 0; i < sizeof(cookie_cases) / sizeof(cookie_cases[0]); i++) {
        const struct cookie_case *t = &cookie_cases[i];
        char out[256];
        size_t n =
            preview_strip_cookies(guarded(t->in, strlen(t->in)), strlen(t->in), platform, 3, t->jwt_cookie, out);
        out[n] = '\0';
        if (strcmp(out, t->want) != 0)
            fail_msg("case %zu \"%s\": got \"%s\", want \"%s\"", i, t->in, out, t->want);
    }
}

static void test_strip_cookies_never_longer(void **state)
{
    const char *in = ";a;b;c;d;";
    char out[2 * 9];

    /* Every ';' may become "; ": the bound is twice the input. */
    size_t n = preview_strip_cookies(guarded(in, strlen(in)), strlen(in), platform, 3, NULL, out);
    assert_true(n <= sizeof(out));
    assert_int_equal(n, strlen("a; b; c; d"));
    assert_memory_equal(out, "a; b; c; d", n);
}

/* ---- preview_set_cookie_allowed ------------------------------------------- */

struct setcookie_case {
    const char *value;
    bool allowed;
};

static const char host[] = "mvp-shop.preview.example.com";

static const struct setcookie_case setcookie_cases[] = {
    {"a=1", true},
    {"a=1; Path=/; HttpOnly; Secure", true},
    {"a=1; Domain=mvp-shop.preview.example.com", true},
    {"a=1; domain=.MVP-shop.preview.example.com; Path=/", true},
    {"a=1; Domain=", true}, /* ignored by user agents: host-only */
    {"a=1; Domain=preview.example.com", false},
    {"a=1; Domain=.preview.example.com", false},
    {"a=1; Domain=example.com", false},
    {"a=1; DOMAIN = example.com ", false},
    {"a=1; Domain=com", false},
    {"a=1; Domain=mvp-other.preview.example.com", false},
    {"a=1; Domain=x.mvp-shop.preview.example.com", false},
    {"a=1; Domain=mvp-shop.preview.example.com.", false},
    {"a=1; Domain=mvp-shop.preview.example.com; Domain=example.com", false},
    {"a=1; Domain=example.com; Domain=mvp-shop.preview.example.com", false},
    {"a=Domain=example.com", true}, /* in the value, not an attribute */
    {"a=1; Path=/Domain=example.com", true},
    {"a=1; xDomain=example.com", true},
};

static void test_set_cookie_domain(void **state)
{
    for (size_t i = 0; i < sizeof(setcookie_cases) / sizeof(setcookie_cases[0]); i++) {
        const struct setcookie_case *t = &setcookie_cases[i];
        bool got =
            preview_set_cookie_allowed(guarded(t->value, strlen(t->value)), strlen(t->value), host, strlen(host));
        if (got != t->allowed)
            fail_msg("case %zu \"%s\": got %d", i, t->value, got);
    }
}

/* ---- preview_upstream_host ------------------------------------------------ */

static void test_upstream_host(void **state)
{
    char out[300], name[64];

    assert_int_equal(
        preview_upstream_host("mvp-", "shop", ".previews.svc.cluster.local", out, sizeof(out)),
        strlen("mvp-shop.previews.svc.cluster.local"));
    assert_string_equal(out, "mvp-shop.previews.svc.cluster.local");
    memset(name, 'a', 59);
    name[59] = '\0';
    char suffix[260];
    memset(suffix, 'b', 200);
    suffix[0] = '.';
    suffix[200] = '\0';
    assert_int_equal(preview_upstream_host("mvp-", name, suffix, out, sizeof(out)), -1);
    assert_int_equal(preview_upstream_host("mvp-", "shop", ".x", out, 8), -1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_strip_cookies),
        cmocka_unit_test(test_strip_cookies_never_longer),
        cmocka_unit_test(test_set_cookie_domain),
        cmocka_unit_test(test_upstream_host),
    };
    return cmocka_run_group_tests(tests, guard_setup, guard_teardown);
}
