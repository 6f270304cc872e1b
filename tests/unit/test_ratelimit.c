/*
 * test_ratelimit.c - GCRA arithmetic (the local limiter's, which the Lua
 * script in ratelimit.c mirrors; test_ratelimit.py runs the same cases
 * against that script on a real Redis), identity keys, tier choice and the
 * limits a request gets. Configuration structs are built by hand.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "ratelimit.h"

#define S 1000000000LL        /* one second in nanoseconds */
#define T0 (1700000000LL * S) /* an arbitrary "now", like Redis TIME */

/* N requests at NOW against one limit; returns how many were admitted. */
static unsigned run(const struct rl_gcra *g, int64_t *tat, int64_t now, unsigned n,
                    struct rl_result *last)
{
    unsigned admitted = 0;

    for (unsigned i = 0; i < n; i++) {
        int64_t after;
        if (rl_gcra_decide(g, tat, 1, now, &after, last))
            admitted++;
        *tat = after;
    }
    return admitted;
}

/* ---- GCRA ---------------------------------------------------------------- */

static void test_gcra_params(void **state)
{
    struct rl_gcra g;

    rl_gcra_init(&g, 5, 60);
    assert_int_equal(g.interval, 12 * S);
    assert_int_equal(g.tolerance, 48 * S);
    rl_gcra_init(&g, 3, 1);
    assert_int_equal(g.interval, 333333333); /* rounded down: never fewer than LIMIT per window */
    assert_int_equal(g.tolerance, 666666666);
    rl_gcra_init(&g, 1, 60);
    assert_int_equal(g.tolerance, 0);
    rl_gcra_init(&g, 4000000, 1); /* more than one per microsecond */
    assert_int_equal(g.interval, 250);
    rl_gcra_init(&g, 2000000000, 1); /* more than one per nanosecond: clamped */
    assert_int_equal(g.interval, 1);
    rl_gcra_init(&g, UINT32_MAX, UINT32_MAX); /* the largest window: no overflow */
    assert_int_equal(g.interval, S);
    assert_int_equal(g.tolerance, (int64_t)(UINT32_MAX - 1) * S);
}

/* A fresh identity: exactly LIMIT at once, remaining counting down, then
 * refused with retry-after = one interval and reset = the whole window, to
 * within a nanosecond per request. */
static void test_gcra_burst_exact(void **state)
{
    static const uint32_t limits[] = {1, 2, 5, 7, 100, 1000, 4999, 5000};
    static const uint32_t windows[] = {1, 60, 3600};

    for (size_t w = 0; w < 3; w++) {
        for (size_t l = 0; l < sizeof(limits) / sizeof(limits[0]); l++) {
            struct rl_gcra g;
            struct rl_result res;
            int64_t tat = 0, after;
            rl_gcra_init(&g, limits[l], windows[w]);
            for (uint32_t i = 0; i < limits[l]; i++) {
                assert_true(rl_gcra_decide(&g, &tat, 1, T0, &after, &res));
                assert_int_equal(res.remaining, limits[l] - 1 - i);
                assert_int_equal(res.retry_ns, 0);
                tat = after;
            }
            assert_false(rl_gcra_decide(&g, &tat, 1, T0, &after, &res));
            assert_int_equal(after, tat); /* refused: nothing consumed */
            assert_int_equal(res.remaining, 0);
            assert_int_equal(res.retry_ns, g.interval);
            assert_int_equal(res.reset_ns, g.interval * limits[l]);
            assert_true(res.reset_ns <= (int64_t)windows[w] * S);
            assert_true((int64_t)windows[w] * S - res.reset_ns < limits[l]);
        }
    }
}

static void test_gcra_first_request(void **state)
{
    struct rl_gcra g;
    struct rl_result res;
    int64_t tat = 0, after;

    rl_gcra_init(&g, 5, 60);
    assert_true(rl_gcra_decide(&g, &tat, 1, T0, &after, &res));
    assert_int_equal(after, T0 + 12 * S);
    assert_int_equal(res.remaining, 4);
    assert_int_equal(res.reset_ns, 12 * S);
    /* a TAT in the past is the same as none */
    tat = T0 - 3600 * S;
    assert_true(rl_gcra_decide(&g, &tat, 1, T0, &after, &res));
    assert_int_equal(after, T0 + 12 * S);
}

/* After the burst, one more every interval, exactly; the retry-after given
 * with a refusal is exactly when the next one is admitted. */
static void test_gcra_refill(void **state)
{
    struct rl_gcra g;
    struct rl_result res;
    int64_t tat = 0, after, now = T0;

    rl_gcra_init(&g, 5, 60);
    assert_int_equal(run(&g, &tat, now, 6, &res), 5);
    now += res.retry_ns - 1;
    assert_false(rl_gcra_decide(&g, &tat, 1, now, &after, &res));
    assert_int_equal(res.retry_ns, 1);
    now += 1;
    assert_true(rl_gcra_decide(&g, &tat, 1, now, &after, &res));
    assert_int_equal(res.remaining, 0);
    tat = after;
    assert_false(rl_gcra_decide(&g, &tat, 1, now, &after, &res));
    /* half a window of silence gives back half the quota (rounded down) */
    now += 30 * S;
    assert_int_equal(run(&g, &tat, now, 10, &res), 2);
    /* a whole window of silence: the whole burst again */
    now += 60 * S + res.reset_ns;
    assert_int_equal(run(&g, &tat, now, 10, &res), 5);
}

/* Sustained over-limit load: admitted at limit/window per second. */
static void test_gcra_steady_rate(void **state)
{
    struct rl_gcra g;
    struct rl_result res;
    int64_t tat = 0, after;
    unsigned admitted = 0;

    rl_gcra_init(&g, 5, 1);
    for (int64_t now = T0; now < T0 + 10 * S; now += S / 1000) { /* 1000 req/s for 10 s */
        if (rl_gcra_decide(&g, &tat, 1, now, &after, &res))
            admitted++;
        tat = after;
    }
    assert_int_equal(admitted, 5 + 10 * 5 - 1); /* the 10th second's last one falls at T0+10s */
    rl_gcra_init(&g, 100, 60);
    tat = 0;
    admitted = 0;
    for (int64_t now = T0; now < T0 + 600 * S; now += S / 10) {
        if (rl_gcra_decide(&g, &tat, 1, now, &after, &res))
            admitted++;
        tat = after;
    }
    assert_true(admitted >= 100 + 1000 - 2 && admitted <= 100 + 1000);
}

/* Admitted when hit every STEP ns (less than the interval) for DURATION ns. */
static uint64_t admitted_over(uint32_t limit, uint32_t window, int64_t step, int64_t duration)
{
    struct rl_gcra g;
    struct rl_result res;
    int64_t tat = 0, after;
    uint64_t admitted = 0;

    rl_gcra_init(&g, limit, window);
    for (int64_t now = T0; now < T0 + duration; now += step) {
        if (rl_gcra_decide(&g, &tat, 1, now, &after, &res))
            admitted++;
        tat = after;
    }
    return admitted;
}

/* High rates keep the promised accuracy: the burst, then LIMIT / WINDOW per
 * second within 0.2%. An interval in whole microseconds (6 us for 6.67)
 * admitted 166667 a second at 150000, and held 1500000 a second to one per
 * microsecond. */
static void test_gcra_high_rate(void **state)
{
    static const struct {
        uint32_t limit, window;
        int64_t step;
    } cases[] = {
        {150000, 1, 1000}, /* a request every microsecond for a second */
        {1500000, 1, 250},
        {100000, 1, 1000},
        {700000, 3, 1000},
    };

    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        double rate = (double)cases[i].limit / cases[i].window;
        double want = cases[i].limit + rate; /* over one second */
        uint64_t got = admitted_over(cases[i].limit, cases[i].window, cases[i].step, S);
        if (got < want * 0.998 || got > want * 1.002)
            fail_msg("%u per %u s: %llu admitted in 1 s, expected %.0f", cases[i].limit,
                     cases[i].window, (unsigned long long)got, want);
    }
}

/* 7 per 3 s: the emission interval is 428571428.57 ns; after a burst of 7
 * the quota is whole again 3 s later, to within a nanosecond per request
 * (whole microseconds were 3 us short). */
static void test_gcra_fractional_interval(void **state)
{
    struct rl_gcra g;
    struct rl_result res;
    int64_t tat = 0;

    rl_gcra_init(&g, 7, 3);
    assert_int_equal(run(&g, &tat, T0, 8, &res), 7);
    assert_true(res.reset_ns <= 3 * S && 3 * S - res.reset_ns < 7);
    assert_int_equal(tat - T0, res.reset_ns);
}

/* A TAT further ahead than any decision on one clock leaves it (a failover
 * to a Redis whose clock is behind, a key set by hand) counts as tau + T
 * ahead: refused for one interval, then one request per interval, never
 * for the clocks' difference. tau + T ahead itself is a state a decision
 * leaves, and is kept. */
static void test_gcra_clamps_far_future(void **state)
{
    struct rl_gcra g;
    struct rl_result res;
    int64_t tat, after;

    rl_gcra_init(&g, 5, 60);
    tat = T0 + 86400 * S;
    assert_false(rl_gcra_decide(&g, &tat, 1, T0, &after, &res));
    assert_int_equal(after, T0 + 60 * S);
    assert_int_equal(res.retry_ns, 12 * S);
    assert_int_equal(res.reset_ns, 60 * S);
    assert_int_equal(res.remaining, 0);
    tat = after;
    assert_false(rl_gcra_decide(&g, &tat, 1, T0 + 12 * S - 1, &after, &res));
    assert_true(rl_gcra_decide(&g, &tat, 1, T0 + 12 * S, &after, &res));
    assert_int_equal(after, T0 + 72 * S);
    tat = T0 + 60 * S + 1;
    assert_false(rl_gcra_decide(&g, &tat, 1, T0, &after, &res));
    assert_int_equal(after, T0 + 60 * S);
    /* all or nothing still: the other limit's TAT is untouched */
    struct rl_gcra two[2];
    int64_t tats[2] = {0, T0 + 3600 * S}, afters[2];
    struct rl_result r2[2];
    rl_gcra_init(&two[0], 10, 60);
    rl_gcra_init(&two[1], 2, 60);
    assert_false(rl_gcra_decide(two, tats, 2, T0, afters, r2));
    assert_int_equal(afters[0], T0);
    assert_int_equal(afters[1], T0 + 60 * S);
    assert_int_equal(r2[1].retry_ns, 30 * S);
}

/* Several limits: admitted only when all admit; a refusal consumes none. */
static void test_gcra_all_or_nothing(void **state)
{
    struct rl_gcra g[2];
    struct rl_result res[2];
    int64_t tat[2] = {0, 0}, after[2];

    rl_gcra_init(&g[0], 10, 60); /* tier */
    rl_gcra_init(&g[1], 2, 60);  /* endpoint */
    for (int i = 0; i < 2; i++) {
        assert_true(rl_gcra_decide(g, tat, 2, T0, after, res));
        memcpy(tat, after, sizeof(tat));
    }
    assert_int_equal(res[0].remaining, 8);
    assert_int_equal(res[1].remaining, 0);
    int64_t before0 = tat[0];
    assert_false(rl_gcra_decide(g, tat, 2, T0, after, res));
    assert_int_equal(after[0], before0);
    assert_true(res[0].admits);
    assert_false(res[1].admits);
    assert_int_equal(res[0].remaining, 8); /* unchanged by the refusal */
    assert_int_equal(res[0].retry_ns, 0);
    assert_int_equal(res[1].retry_ns, 30 * S);
}

/* ---- identities and keys ------------------------------------------------- */

static void expect_ip(const char *ip, unsigned prefix, const char *want)
{
    char out[96];
    int n = rl_ip_ident(ip, prefix, out, sizeof(out));

    if (want == NULL) {
        assert_int_equal(n, -1);
        return;
    }
    assert_int_equal(n, (int)strlen(want));
    assert_string_equal(out, want);
}

static void test_ip_ident(void **state)
{
    expect_ip("203.0.113.7", 64, "ip:203.0.113.7");
    expect_ip("::ffff:203.0.113.7", 64, "ip:203.0.113.7");
    expect_ip("2001:db8:1:2:3:4:5:6", 64, "ip:2001:db8:1:2::/64");
    expect_ip("2001:db8:1:2:ffff:ffff:ffff:ffff", 64, "ip:2001:db8:1:2::/64");
    expect_ip("2001:DB8:1:2::1", 48, "ip:2001:db8:1::/48");
    expect_ip("2001:db8:1:2::1", 56, "ip:2001:db8:1::/56");
    expect_ip("2001:db8:1:2ff::1", 60, "ip:2001:db8:1:2f0::/60");
    expect_ip("2001:db8:1:2ff::1", 55, "ip:2001:db8:1:200::/55");
    expect_ip("2001:db8::1", 128, "ip:2001:db8::1/128");
    expect_ip("2001:db8::1", 0, "ip:::/0");
    expect_ip("not-an-ip", 64, NULL);
    expect_ip("", 64, NULL);
    char small[8];
    assert_int_equal(rl_ip_ident("203.0.113.7", 64, small, sizeof(small)), -1);
}

static bool is_hex64(const char *s)
{
    return strlen(s) >= 64 && strspn(s, "0123456789abcdef") >= 64;
}

static void test_user_ident_and_keys(void **state)
{
    char id[300], key[RL_KEY_MAX], key2[RL_KEY_MAX], big[600];

    assert_int_equal(rl_user_ident("alice", id, sizeof(id)), 7);
    assert_string_equal(id, "u:alice");
    size_t n = rl_limit_key("flowgate:", "t:premium", id, key);
    assert_string_equal(key, "flowgate:rl:{u:alice}:t:premium");
    assert_int_equal(n, strlen(key));
    rl_limit_key("", "e0", "ip:203.0.113.7", key);
    assert_string_equal(key, "rl:{ip:203.0.113.7}:e0");
    /* an identity longer than a tag: tagged by its hash, the same in every scope */
    memset(big, 'x', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    n = rl_limit_key("p:", "t:a", big, key);
    assert_int_equal(n, strlen("p:rl:{h:}:t:a") + 64);
    assert_int_equal(n, strlen(key));
    assert_memory_equal(key, "p:rl:{h:", 8);
    assert_true(is_hex64(key + 8));
    assert_string_equal(key + 8 + 64, "}:t:a");
    rl_limit_key("p:", "e3", big, key2);
    assert_memory_equal(key, key2, 8 + 64 + 2);
    assert_string_equal(key2 + 8 + 64, "}:e3");
    big[0] = 'y';
    rl_limit_key("p:", "t:a", big, key2);
    assert_string_not_equal(key, key2);
    /* the longest identity kept whole in the tag, and the shortest hashed */
    big[RL_TAG_MAX] = '\0';
    rl_limit_key("p:", "t:a", big, key);
    assert_memory_equal(key + 6, big, RL_TAG_MAX);
    assert_string_equal(key + 6 + RL_TAG_MAX, "}:t:a");
    big[RL_TAG_MAX] = 'x';
    big[RL_TAG_MAX + 1] = '\0';
    rl_limit_key("p:", "t:a", big, key);
    assert_memory_equal(key, "p:rl:{h:", 8);
}

/* A hashed key stays under its deployment's key_prefix: two deployments
 * sharing one Redis keep apart (and an ACL key pattern or SCAN by prefix
 * still sees it), keeps its identity's hash tag, and the longest prefix
 * the configuration allows fits. */
static void test_hashed_key_keeps_prefix(void **state)
{
    char big[RL_KEY_MAX], prefix[FG_KEY_PREFIX_MAX + 2], a[RL_KEY_MAX], b[RL_KEY_MAX];
    size_t n;

    memset(big, 's', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    n = rl_limit_key("blue:", big, "ip:203.0.113.7", a);
    assert_int_equal(n, strlen(a));
    assert_memory_equal(a, "blue:rl:{ip:203.0.113.7}:h:", 27);
    assert_true(is_hex64(a + 27));
    n = rl_limit_key("green:", big, "ip:203.0.113.7", b);
    assert_int_equal(n, strlen(b));
    assert_memory_equal(b, "green:rl:{ip:203.0.113.7}:h:", 28);
    assert_string_not_equal(a + 27, b + 28); /* the hash covers the prefix too */

    /* the longest key that is not hashed, and the shortest that is */
    big[RL_KEY_MAX - 1 - strlen("fg:rl:{u:x}:")] = '\0';
    assert_int_equal(rl_limit_key("fg:", big, "u:x", a), RL_KEY_MAX - 1);
    assert_memory_equal(a, "fg:rl:{u:x}:sss", 15);
    strcat(big, "s");
    assert_int_equal(rl_limit_key("fg:", big, "u:x", a), strlen("fg:rl:{u:x}:h:") + 64);
    assert_memory_equal(a, "fg:rl:{u:x}:h:", 14);

    /* the longest prefix allowed, with an identity and a scope that need hashing */
    memset(prefix, 'p', FG_KEY_PREFIX_MAX);
    prefix[FG_KEY_PREFIX_MAX] = '\0';
    n = rl_limit_key(prefix, big, big, a);
    assert_int_equal(n, FG_KEY_PREFIX_MAX + strlen("rl:{}:h:") + RL_TAG_MAX + 64);
    assert_int_equal(n, strlen(a));
    assert_memory_equal(a, prefix, FG_KEY_PREFIX_MAX);
    assert_memory_equal(a + FG_KEY_PREFIX_MAX, "rl:{h:", 6);

    /* longer than the configuration allows: left out, never truncated */
    strcat(prefix, "p");
    n = rl_limit_key(prefix, big, big, a);
    assert_int_equal(n, strlen("rl:{}:h:") + RL_TAG_MAX + 64);
    assert_memory_equal(a, "rl:{h:", 6);
}

/* ---- tiers and plans ----------------------------------------------------- */

static struct fg_tier tiers[] = {
    {"anonymous", 100, 60},
    {"authenticated", 1000, 60},
    {"premium", 5000, 60},
    {"gold", 7, 10},
};

static struct fg_endpoint endpoints[] = {
    {"/api/auth/login", 15, UINT64_C(1) << 3 /* POST */, 10, 60, FG_RL_KEY_IP},
    {"/api/mvp/generate", 17, UINT64_C(1) << 3, 20, 3600, FG_RL_KEY_USER},
    {"/api", 4, 0, 50, 60, FG_RL_KEY_IP},
};

static struct fg_ratelimit rl = {
    .enabled = true,
    .redis = {.key_prefix = "fg:"},
    .ipv6_prefix = 64,
    .tiers = tiers,
    .ntiers = 4,
    .endpoints = endpoints,
    .nendpoints = 3,
};

static void test_tier_index(void **state)
{
    assert_int_equal(rl_tier_index(&rl, NULL, NULL), 0);
    assert_int_equal(rl_tier_index(&rl, NULL, "premium"), 0); /* no user: anonymous */
    assert_int_equal(rl_tier_index(&rl, "alice", NULL), 1);
    assert_int_equal(rl_tier_index(&rl, "alice", "authenticated"), 1);
    assert_int_equal(rl_tier_index(&rl, "alice", "premium"), 2);
    assert_int_equal(rl_tier_index(&rl, "alice", "gold"), 3);
    assert_int_equal(rl_tier_index(&rl, "alice", "platinum"), 1);
    assert_int_equal(rl_tier_index(&rl, "alice", "Premium"), 1);
}

static void plan(struct rl_plan *p, const char *ip, const char *user, const char *tier,
                 const char *path, int method, bool tier_limited)
{
    struct rl_subject s = {.client_ip = ip,
                           .user = user,
                           .tier = tier,
                           .path = path,
                           .path_len = strlen(path),
                           .method = method,
                           .tier_limited = tier_limited};

    assert_int_equal(rl_plan_build(&rl, &s, p), 0);
}

static void test_plan(void **state)
{
    static struct rl_plan p;

    plan(&p, "203.0.113.7", NULL, NULL, "/", 1 /* GET */, true);
    assert_int_equal(p.n, 1);
    assert_int_equal(p.tier, 0);
    assert_string_equal(p.key[0], "fg:rl:{ip:203.0.113.7}:t:anonymous");
    assert_int_equal(p.g[0].limit, 100);

    plan(&p, "2001:db8::1", "alice", "premium", "/api/auth/login", 3 /* POST */, true);
    assert_int_equal(p.n, 3);
    assert_string_equal(p.key[0], "fg:rl:{u:alice}:t:premium");
    assert_string_equal(p.key[1], "fg:rl:{ip:2001:db8::/64}:e0"); /* key = "ip" */
    assert_string_equal(p.key[2], "fg:rl:{ip:2001:db8::/64}:e2");
    assert_int_equal(p.g[1].limit, 10);

    /* GET does not match the POST-only login limit; "/api/auth/loginx" never */
    plan(&p, "203.0.113.7", NULL, NULL, "/api/auth/login", 1, true);
    assert_int_equal(p.n, 2);
    plan(&p, "203.0.113.7", NULL, NULL, "/api/auth/loginx", 3, true);
    assert_int_equal(p.n, 2);
    assert_string_equal(p.key[1], "fg:rl:{ip:203.0.113.7}:e2");
    plan(&p, "203.0.113.7", NULL, NULL, "/apix", 3, true);
    assert_int_equal(p.n, 1);

    /* key = "user": by sub, or by IP without a user */
    plan(&p, "203.0.113.7", "bob", NULL, "/api/mvp/generate/x", 3, true);
    assert_string_equal(p.key[1], "fg:rl:{u:bob}:e1");
    plan(&p, "203.0.113.7", NULL, NULL, "/api/mvp/generate", 3, true);
    assert_string_equal(p.key[1], "fg:rl:{ip:203.0.113.7}:e1");

    /* rate_limit = false: endpoint limits only */
    plan(&p, "203.0.113.7", NULL, NULL, "/api/mvp/generate", 3, false);
    assert_int_equal(p.n, 2);
    assert_string_equal(p.key[0], "fg:rl:{ip:203.0.113.7}:e1");
    plan(&p, "203.0.113.7", NULL, NULL, "/health", 1, false);
    assert_int_equal(p.n, 0);

    struct rl_subject bad = {.client_ip = "junk", .path = "/", .path_len = 1};
    assert_int_equal(rl_plan_build(&rl, &bad, &p), -1);
}

static void test_outcome_names(void **state)
{
    assert_string_equal(rl_outcome_str(RL_OUT_ALLOWED), "allowed");
    assert_string_equal(rl_outcome_str(RL_OUT_LIMITED), "limited");
    assert_string_equal(rl_outcome_str(RL_OUT_FAIL_CLOSED), "failed_closed");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_gcra_params),
        cmocka_unit_test(test_gcra_burst_exact),
        cmocka_unit_test(test_gcra_first_request),
        cmocka_unit_test(test_gcra_refill),
        cmocka_unit_test(test_gcra_steady_rate),
        cmocka_unit_test(test_gcra_high_rate),
        cmocka_unit_test(test_gcra_fractional_interval),
        cmocka_unit_test(test_gcra_clamps_far_future),
        cmocka_unit_test(test_gcra_all_or_nothing),
        cmocka_unit_test(test_ip_ident),
        cmocka_unit_test(test_user_ident_and_keys),
        cmocka_unit_test(test_hashed_key_keeps_prefix),
        cmocka_unit_test(test_tier_index),
        cmocka_unit_test(test_plan),
        cmocka_unit_test(test_outcome_names),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
