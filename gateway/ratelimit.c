/*
 * ratelimit.c - the rate-limit stage.
 *
 * One request: build the plan (every limit that applies and its key), ask
 * the refusal cache (an identity Redis refused until T is refused here until
 * T), then run the GCRA script on Redis in one round trip (together with
 * the other requests of the same loop round: rl_redis.c batches them) and
 * wait; when the link is down, the call fails or its deadline passes,
 * on_redis_failure decides (local limiter, allow, or 503). The answer adds X-RateLimit-*
 * (and optionally the IETF draft headers) to whatever response follows.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/random.h>

#include <event2/buffer.h>
#include <hiredis/hiredis.h>
#include <openssl/evp.h>

#include "fmt.h"
#include "freelist.h"
#include "hash.h"
#include "log.h"
#include "ratelimit.h"
#include "req.h"
#include "respond.h"
#include "rl_redis.h"
#include "route.h"
#include "worker.h"

#define RL_LOCAL_SLOTS 16384  /* local limiter keys per worker (power of two) */
#define RL_REFUSED_SLOTS 4096 /* refusal cache keys per worker (power of two) */
#define RL_PROBE 8            /* slots looked at per key before evicting */
#define RL_ASK_KEEP 64        /* idle decision records a worker keeps for reuse */
#define RL_NS INT64_C(1000000000) /* nanoseconds a second: GCRA times are in ns */

/* ---- GCRA, in C and in Lua: keep these two in step ----------------------- */

void rl_gcra_init(struct rl_gcra *g, uint32_t limit, uint32_t window)
{
    g->limit = limit > 0 ? limit : 1;
    g->window = window;
    g->interval = (int64_t)window * RL_NS / g->limit; /* < 2^63 for any uint32_t window */
    if (g->interval < 1)
        g->interval = 1;
    g->tolerance = g->interval * (g->limit - 1);
}

/* Requests one limit admits now when its TAT is TAT_NOW (>= NOW). */
static uint32_t gcra_remaining(const struct rl_gcra *g, int64_t tat_now, int64_t now)
{
    int64_t room = g->tolerance + g->interval - (tat_now - now);

    if (room <= 0)
        return 0;
    return room / g->interval > g->limit ? g->limit : (uint32_t)(room / g->interval);
}

bool rl_gcra_decide(const struct rl_gcra *g, const int64_t *tat, size_t n, int64_t now,
                    int64_t *tat_after, struct rl_result *res)
{
    bool all = true;

    for (size_t i = 0; i < n; i++) {
        int64_t t = tat[i] > now ? tat[i] : now;
        if (t - now > g[i].tolerance + g[i].interval) /* another clock's TAT: see rl_script */
            t = now + g[i].tolerance + g[i].interval;
        res[i].admits = t - now <= g[i].tolerance;
        res[i].retry_ns = res[i].admits ? 0 : t - now - g[i].tolerance;
        tat_after[i] = t;
        all = all && res[i].admits;
    }
    for (size_t i = 0; i < n; i++) {
        if (all)
            tat_after[i] += g[i].interval;
        res[i].remaining = gcra_remaining(&g[i], tat_after[i], now);
        res[i].reset_ns = tat_after[i] - now;
    }
    return all;
}

/*
 * The same decision on Redis's clock, for a batch of requests (the calls
 * rl_redis.c gathered in one loop round) in one atomic step: each request
 * is decided in turn, in the order given, and sees what the ones before it
 * decided, so it gets the decision it would have got alone. KEYS holds every
 * request's keys, one after the other. ARGV holds, per request, its number
 * of limits N, its number of arguments (2N, not read: it is always 2N), then
 * for limit i its interval T and its burst period B = tau + T, in
 * nanoseconds.
 *
 * Each key holds its TAT as one decimal integer, nanoseconds since the Unix
 * epoch ("1765000000123456789": Redis keeps it as a 64-bit integer), read as
 * whole seconds and nanoseconds so that the arithmetic, relative to NOW in
 * Lua's doubles, stays exact (for windows up to 104 days). A TAT more than B
 * ahead of NOW cannot come from this script on this clock (a failover to a
 * primary whose clock is behind, a key set by hand): it is read as B ahead,
 * and stored so.
 *
 * The work is per distinct key, not per request: a key is read (GET) the
 * first time the batch uses it, its TAT is then kept in D, and each key the
 * batch changed is written once at the end (an identity with many requests
 * in one batch costs one GET and one SET). A refusal writes nothing. A key
 * expires at the first whole second after its TAT (PXAT); a write whose TAT
 * stays within the second of the stored one keeps that expiry (KEEPTTL),
 * which spares Redis re-indexing it. Number arguments are parsed once per
 * batch (N). Returns an array with one element per request: per limit, how
 * far its TAT was ahead of NOW before this request (ns, 0 .. B), from which
 * rl_gcra_decide derives the rest exactly as the script did; a request with
 * one limit gets that number alone rather than an array of one (a table less
 * per request for Lua to build, convert and collect).
 */
static const char rl_script[] =
    "local t = redis.call('TIME')\n"
    "local s, f = tonumber(t[1]), tonumber(t[2]) * 1000\n"
    "local N, D, S, dirty, one = {}, {}, {}, {}, {}\n"
    "local res, k, a = {}, 0, 1\n"
    "while ARGV[a] do\n"
    "  local n = N[ARGV[a]] or tonumber(ARGV[a])\n"
    "  local v, ok = n == 1 and one or {}, true\n"
    "  for i = 1, n do\n"
    "    local x, y = ARGV[a + 2 * i], ARGV[a + 2 * i + 1]\n"
    "    local T, B = N[x], N[y]\n"
    "    if not T then T = tonumber(x); N[x] = T end\n"
    "    if not B then B = tonumber(y); N[y] = B end\n"
    "    local key = KEYS[k + i]\n"
    "    local d = D[key]\n"
    "    if not d then\n"
    "      d = 0\n"
    "      local z = redis.call('GET', key)\n"
    "      if z then\n"
    "        local sec = tonumber(string.sub(z, 1, -10)) or 0\n"
    "        d = (sec - s) * 1000000000 + (tonumber(string.sub(z, -9)) or 0) - f\n"
    "        if d > B then\n"
    "          d = B\n"
    "          dirty[#dirty + 1] = key\n"
    "        elseif d >= 0 then\n"
    "          S[key] = sec\n"
    "        else\n"
    "          d = 0\n"
    "        end\n"
    "      end\n"
    "      D[key] = d\n"
    "    end\n"
    "    v[i] = d\n"
    "    if d > B - T then ok = false end\n"
    "  end\n"
    "  if ok then\n"
    "    for i = 1, n do\n"
    "      local key = KEYS[k + i]\n"
    "      D[key] = v[i] + N[ARGV[a + 2 * i]]\n"
    "      dirty[#dirty + 1] = key\n"
    "    end\n"
    "  end\n"
    "  res[#res + 1] = n == 1 and v[1] or v\n"
    "  k = k + n\n"
    "  a = a + 2 + 2 * n\n"
    "end\n"
    "for i = 1, #dirty do\n"
    "  local key = dirty[i]\n"
    "  local d = D[key]\n"
    "  if d then\n"
    "    D[key] = nil\n"
    "    local q = math.floor((d + f) / 1000000000)\n"
    "    local z = string.format('%d%09d', s + q, d + f - q * 1000000000)\n"
    "    if S[key] == s + q then\n"
    "      redis.call('SET', key, z, 'KEEPTTL')\n"
    "    else\n"
    "      redis.call('SET', key, z, 'PXAT', (s + q + 1) * 1000)\n"
    "    end\n"
    "  end\n"
    "end\n"
    "return res\n";

/* ---- identities and keys ------------------------------------------------- */

int rl_ip_ident(const char *ip, unsigned v6prefix, char *out, size_t cap)
{
    struct in6_addr a6;
    struct in_addr a4;
    char text[INET6_ADDRSTRLEN];
    struct sbuf b = {out, 0, cap, false};

    if (inet_pton(AF_INET, ip, &a4) == 1) {
        inet_ntop(AF_INET, &a4, text, sizeof(text));
        sbuf_lit(&b, "ip:");
        sbuf_str(&b, text);
    } else if (inet_pton(AF_INET6, ip, &a6) == 1) {
        if (IN6_IS_ADDR_V4MAPPED(&a6)) {
            inet_ntop(AF_INET, &a6.s6_addr[12], text, sizeof(text));
            sbuf_lit(&b, "ip:");
            sbuf_str(&b, text);
        } else {
            unsigned bits = v6prefix > 128 ? 128 : v6prefix;
            for (unsigned i = 0; i < 16; i++) {
                unsigned keep = bits >= 8 * (i + 1) ? 8 : bits > 8 * i ? bits - 8 * i : 0;
                a6.s6_addr[i] &= (uint8_t)(0xff00 >> keep);
            }
            inet_ntop(AF_INET6, &a6, text, sizeof(text));
            sbuf_lit(&b, "ip:");
            sbuf_str(&b, text);
            sbuf_lit(&b, "/");
            sbuf_u64(&b, bits);
        }
    } else {
        return -1;
    }
    return sbuf_end(&b);
}

int rl_user_ident(const char *user, char *out, size_t cap)
{
    struct sbuf b = {out, 0, cap, false};

    sbuf_lit(&b, "u:");
    sbuf_str(&b, user);
    return sbuf_end(&b);
}

static void sha256_hex(const char *const *parts, size_t nparts, char out[65])
{
    unsigned char md[32];
    unsigned int mdlen = 0;
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();

    memset(md, 0, sizeof(md));
    if (ctx != NULL && EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) == 1) {
        for (size_t i = 0; i < nparts; i++)
            EVP_DigestUpdate(ctx, parts[i], strlen(parts[i]) + 1); /* NUL separates parts */
        EVP_DigestFinal_ex(ctx, md, &mdlen);
    }
    EVP_MD_CTX_free(ctx);
    for (int i = 0; i < 32; i++)
        snprintf(out + 2 * i, 3, "%02x", md[i]);
}

/* The hash tag of IDENT: IDENT itself, or "h:<sha256 hex of IDENT>" when it
 * is longer than RL_TAG_MAX, so that every key of one identity has the
 * same tag whatever its scope. */
static void ident_tag(const char *ident, char out[RL_TAG_MAX + 1])
{
    size_t len = strlen(ident);

    if (len <= RL_TAG_MAX) {
        memcpy(out, ident, len + 1);
        return;
    }
    const char *parts[] = {ident};
    memcpy(out, "h:", 2);
    sha256_hex(parts, 1, out + 2);
}

size_t rl_limit_key(const char *prefix, const char *scope, const char *ident, char out[RL_KEY_MAX])
{
    struct sbuf b = {out, 0, RL_KEY_MAX, false};
    char tag[RL_TAG_MAX + 1];

    ident_tag(ident, tag);
    sbuf_str(&b, prefix);
    sbuf_lit(&b, "rl:{");
    sbuf_str(&b, tag);
    sbuf_lit(&b, "}:");
    sbuf_str(&b, scope);
    int n = sbuf_end(&b);
    if (n >= 0)
        return (size_t)n;
    const char *parts[] = {prefix, scope, ident};
    char hex[65];
    sha256_hex(parts, 3, hex);
    if (strlen(prefix) > FG_KEY_PREFIX_MAX)
        prefix = "";
    return (size_t)snprintf(out, RL_KEY_MAX, "%srl:{%s}:h:%s", prefix, tag, hex);
}

size_t rl_tier_index(const struct fg_ratelimit *rl, const char *user, const char *tier)
{
    if (user == NULL)
        return 0;
    if (tier != NULL)
        for (size_t i = 0; i < rl->ntiers; i++)
            if (strcmp(rl->tiers[i].name, tier) == 0)
                return i;
    return 1;
}

static void plan_add(struct rl_plan *p, const char *prefix, const char *scope, const char *ident,
                     uint32_t limit, uint32_t window)
{
    if (p->n == RL_MAX_LIMITS)
        return; /* bounded: more overlapping endpoint limits than this are ignored */
    rl_gcra_init(&p->g[p->n], limit, window);
    p->key_len[p->n] = rl_limit_key(prefix, scope, ident, p->key[p->n]);
    p->n++;
}

static bool endpoint_applies(const struct fg_endpoint *e, const struct rl_subject *s)
{
    if (e->methods != 0 &&
        (s->method < 0 || s->method > 63 || !(e->methods & (UINT64_C(1) << s->method))))
        return false;
    return route_prefix_match(e->path, e->path_len, s->path, s->path_len);
}

int rl_plan_build(const struct fg_ratelimit *rl, const struct rl_subject *s, struct rl_plan *p)
{
    char ip[INET6_ADDRSTRLEN + 16], user[300], scope[300];
    const char *prefix = rl->redis.key_prefix ? rl->redis.key_prefix : "";

    p->n = 0;
    p->tier = rl_tier_index(rl, s->user, s->tier);
    if (rl_ip_ident(s->client_ip, rl->ipv6_prefix, ip, sizeof(ip)) < 0)
        return -1;
    if (s->user != NULL && rl_user_ident(s->user, user, sizeof(user)) < 0)
        return -1;
    if (s->tier_limited) {
        const struct fg_tier *t = &rl->tiers[p->tier];
        struct sbuf b = {scope, 0, sizeof(scope), false};
        sbuf_lit(&b, "t:");
        sbuf_str(&b, t->name);
        if (sbuf_end(&b) < 0) /* a name longer than a key allows is cut */
            snprintf(scope, sizeof(scope), "t:%s", t->name);
        plan_add(p, prefix, scope, s->user ? user : ip, t->limit, t->window);
    }
    for (size_t i = 0; i < rl->nendpoints; i++) {
        const struct fg_endpoint *e = &rl->endpoints[i];
        if (!endpoint_applies(e, s))
            continue;
        struct sbuf b = {scope, 0, sizeof(scope), false};
        sbuf_lit(&b, "e");
        sbuf_u64(&b, i);
        sbuf_end(&b);
        plan_add(p, prefix, scope, e->key == FG_RL_KEY_USER && s->user ? user : ip, e->limit,
                 e->window);
    }
    return 0;
}

/* ---- bounded tables: the local limiter and the refusal cache ------------- */

struct rl_slot {
    char *key; /* owned copy; NULL = empty */
    size_t key_len;
    uint64_t hash;
    int64_t until;    /* monotonic ns: local TAT, or refused until; free once past */
    int64_t reset_at; /* refusal cache: the quota is whole again */
    uint32_t limit;   /* refusal cache: for the headers */
    uint32_t window;
};

struct rl_table {
    struct rl_slot *slots;
    size_t mask;   /* slots - 1 */
    uint64_t seed; /* random: a client cannot aim keys at one probe window */
};

static int table_init(struct rl_table *t, size_t slots)
{
    t->slots = calloc(slots, sizeof(*t->slots));
    t->mask = slots - 1;
    if (getrandom(&t->seed, sizeof(t->seed), 0) != sizeof(t->seed))
        t->seed = (uint64_t)time(NULL) * 0x9e3779b97f4a7c15ULL;
    return t->slots ? 0 : -1;
}

static void table_free(struct rl_table *t)
{
    for (size_t i = 0; t->slots != NULL && i <= t->mask; i++)
        free(t->slots[i].key);
    free(t->slots);
    t->slots = NULL;
}

static bool slot_is(const struct rl_slot *s, uint64_t h, const char *key, size_t len)
{
    return s->key != NULL && s->hash == h && s->key_len == len && memcmp(s->key, key, len) == 0;
}

/* The live slot for KEY, or NULL. */
static struct rl_slot *table_find(struct rl_table *t, const char *key, size_t len, int64_t now)
{
    uint64_t h = hash_bytes(key, len, t->seed);

    for (size_t i = 0; i < RL_PROBE; i++) {
        struct rl_slot *s = &t->slots[(h + i) & t->mask];
        if (slot_is(s, h, key, len))
            return s->until > now ? s : NULL;
    }
    return NULL;
}

/* KEY's slot, taking a free or expired one, else evicting the one that
 * expires first in the probe window. NULL when out of memory. */
static struct rl_slot *table_put(struct rl_table *t, const char *key, size_t len, int64_t now)
{
    uint64_t h = hash_bytes(key, len, t->seed);
    struct rl_slot *victim = NULL;

    for (size_t i = 0; i < RL_PROBE; i++) {
        struct rl_slot *s = &t->slots[(h + i) & t->mask];
        if (slot_is(s, h, key, len))
            return s;
        bool s_free = s->key == NULL || s->until <= now;
        bool v_free = victim != NULL && (victim->key == NULL || victim->until <= now);
        if (victim == NULL || (!v_free && (s_free || s->until < victim->until)))
            victim = s;
    }
    char *copy = malloc(len);
    if (copy == NULL)
        return NULL;
    memcpy(copy, key, len);
    free(victim->key);
    memset(victim, 0, sizeof(*victim));
    victim->key = copy;
    victim->key_len = len;
    victim->hash = h;
    return victim;
}

/* ---- per-worker state ---------------------------------------------------- */

/* A request's decision in progress (about 3 KB, most of it the keys); owned
 * by the request from ask_get until ask_put, which it calls when the
 * decision is applied or, while it waits on Redis, from its cancel hook. */
struct rl_ask {
    struct rl_ask *next;  /* the worker's free list, while idle */
    struct req *r;        /* the waiting request */
    struct rl_call *call; /* pending Redis call, or NULL */
    stage_resume_fn resume; /* the engine's continuation for R */
    struct rl_plan plan;
};

struct rl_worker {
    struct rl_link *link;    /* the worker's Redis link; NULL when a reload turned limits off */
    struct rl_link *next;    /* made by a reload that changed the redis group: it takes
                                over from LINK once it is up (no refusal while it connects) */
    struct rl_link **retired; /* links replaced by reloads: stopped, freed once idle */
    size_t nretired;
    uint64_t **old_decisions; /* counter arrays outgrown by reloads (the admin may still read) */
    size_t nold_decisions;
    size_t decisions_cap;     /* tiers the counters have room for */
    struct rl_table local;   /* on_redis_failure = "local" */
    struct rl_table refused; /* identities Redis refused, until when */
    size_t ntiers;
    uint64_t *decisions;      /* [tier * RL_OUT__COUNT + outcome], atomic */
    struct freelist free_asks; /* idle records, reused so a request allocates none */
};

FREELIST_DEFINE(idle_asks, struct rl_ask, next, RL_ASK_KEEP)

const char *rl_outcome_str(enum rl_outcome o)
{
    switch (o) {
    case RL_OUT_ALLOWED: return "allowed";
    case RL_OUT_LIMITED: return "limited";
    case RL_OUT_LOCAL_ALLOWED: return "local_allowed";
    case RL_OUT_LOCAL_LIMITED: return "local_limited";
    case RL_OUT_FAIL_OPEN: return "failed_open";
    case RL_OUT_FAIL_CLOSED: return "failed_closed";
    case RL_OUT__COUNT: break;
    }
    return "?";
}

static struct rl_worker *rl_state(const struct worker *w)
{
    return stage_worker_data(w, &ratelimit_stage);
}

int ratelimit_worker_init(struct worker *w, const struct fg_config *cfg, char *err, size_t errlen)
{
    const struct fg_ratelimit *rl = &cfg->rate_limit;
    struct rl_worker *st;

    if (!rl->enabled)
        return 0;
    if ((st = calloc(1, sizeof(*st))) == NULL)
        goto oom;
    st->ntiers = rl->ntiers;
    st->decisions_cap = rl->ntiers;
    st->decisions = calloc(rl->ntiers * RL_OUT__COUNT, sizeof(*st->decisions));
    if (st->decisions == NULL || table_init(&st->local, RL_LOCAL_SLOTS) < 0 ||
        table_init(&st->refused, RL_REFUSED_SLOTS) < 0)
        goto oom;
    if ((st->link = rl_link_new(w->base, &rl->redis, rl_script, w->resolver)) == NULL)
        goto oom;
    rl_link_set_cfg(st->link, (struct fg_config *)cfg, &rl->redis);
    /* Whole before it is seen: the admin thread reads it. */
    stage_set_worker_data(w, &ratelimit_stage, st);
    return 0;
oom:
    if (st != NULL) {
        free(st->decisions);
        table_free(&st->local);
        table_free(&st->refused);
        free(st);
    }
    snprintf(err, errlen, "rate limit: out of memory");
    return -1;
}

/* Stop L and keep it until no call waits on it any more. */
static int retire_link(struct rl_worker *st, struct rl_link *l)
{
    struct rl_link **v = realloc(st->retired, (st->nretired + 1) * sizeof(*v));

    if (v == NULL)
        return -1;
    st->retired = v;
    rl_link_stop(l);
    st->retired[st->nretired++] = l;
    return 0;
}

/* Free the retired links nobody waits on (a reload later than theirs: the
 * admin thread never still reads one). */
static void reap_links(struct rl_worker *st)
{
    size_t k = 0;

    for (size_t i = 0; i < st->nretired; i++) {
        if (rl_link_idle(st->retired[i]))
            rl_link_free(st->retired[i]);
        else
            st->retired[k++] = st->retired[i];
    }
    st->nretired = k;
}

/* Room for NTIERS tiers of counters; the old array stays for the admin. */
static int grow_decisions(struct rl_worker *st, size_t ntiers)
{
    if (ntiers <= st->decisions_cap)
        return 0;
    uint64_t *d = calloc(ntiers * RL_OUT__COUNT, sizeof(*d));
    uint64_t **old = realloc(st->old_decisions, (st->nold_decisions + 1) * sizeof(*old));
    if (d == NULL || old == NULL) {
        free(d);
        if (old != NULL)
            st->old_decisions = old;
        return -1;
    }
    memcpy(d, st->decisions, st->decisions_cap * RL_OUT__COUNT * sizeof(*d));
    st->old_decisions = old;
    st->old_decisions[st->nold_decisions++] = st->decisions;
    __atomic_store_n(&st->decisions, d, __ATOMIC_RELEASE);
    __atomic_store_n(&st->decisions_cap, ntiers, __ATOMIC_RELEASE);
    return 0;
}

int ratelimit_worker_reload(struct worker *w, const struct fg_config *cfg, char *err,
                            size_t errlen)
{
    const struct fg_ratelimit *rl = &cfg->rate_limit;
    struct rl_worker *st = rl_state(w);

    if (st == NULL)
        return ratelimit_worker_init(w, cfg, err, errlen);
    struct rl_table refused;
    reap_links(st);
    if (table_init(&refused, RL_REFUSED_SLOTS) < 0 || grow_decisions(st, rl->ntiers) < 0) {
        table_free(&refused);
        goto oom;
    }
    table_free(&st->refused); /* refusals belong to the old limits */
    st->refused = refused;
    st->ntiers = rl->ntiers;
    /* The link that stands for the settings in force: the one still
     * connecting for them, or the one serving. (A replaced resolver lives on
     * until the worker ends: a kept link may go on using it.) */
    struct rl_link *cur = st->next ? st->next : st->link;
    const struct fg_config *curcfg = w->cfg;
    if (!rl->enabled) {
        if ((st->next && retire_link(st, st->next) < 0) ||
            (st->link && retire_link(st, st->link) < 0))
            goto oom;
        st->next = NULL;
        __atomic_store_n(&st->link, NULL, __ATOMIC_RELEASE);
        return 0;
    }
    if (cur != NULL && curcfg->rate_limit.enabled &&
        rl_redis_same(&curcfg->rate_limit.redis, &rl->redis)) {
        rl_link_set_cfg(cur, (struct fg_config *)cfg, &rl->redis);
        return 0;
    }
    struct rl_link *fresh = rl_link_new(w->base, &rl->redis, rl_script, w->resolver);
    if (fresh == NULL)
        goto oom;
    rl_link_set_cfg(fresh, (struct fg_config *)cfg, &rl->redis);
    if (st->next != NULL && retire_link(st, st->next) < 0) {
        rl_link_free(fresh);
        goto oom;
    }
    st->next = fresh;
    if (st->link == NULL) { /* nothing serves meanwhile: it serves from the start */
        __atomic_store_n(&st->link, fresh, __ATOMIC_RELEASE);
        st->next = NULL;
    }
    return 0;
oom:
    snprintf(err, errlen, "rate limit: out of memory");
    return -1;
}

/* The link a reload made is up: it takes over, the old one finishes its
 * calls and goes (or serves on, should it not be retired for want of memory). */
static void promote_next(struct rl_worker *st)
{
    if (st->link != NULL && retire_link(st, st->link) < 0)
        return;
    __atomic_store_n(&st->link, st->next, __ATOMIC_RELEASE);
    st->next = NULL;
}

void ratelimit_worker_stop(struct worker *w)
{
    struct rl_worker *st = rl_state(w);

    if (st == NULL)
        return;
    if (st->link != NULL)
        rl_link_stop(st->link);
    if (st->next != NULL)
        rl_link_stop(st->next);
}

void ratelimit_worker_free(struct worker *w)
{
    struct rl_worker *st = rl_state(w);
    struct rl_ask *q;

    if (st == NULL)
        return;
    rl_link_free(st->link); /* pending calls are all detached by now */
    rl_link_free(st->next);
    for (size_t i = 0; i < st->nretired; i++)
        rl_link_free(st->retired[i]);
    free(st->retired);
    for (size_t i = 0; i < st->nold_decisions; i++)
        free(st->old_decisions[i]);
    free(st->old_decisions);
    table_free(&st->local);
    table_free(&st->refused);
    /* Every ask is back: the connections went first. */
    while ((q = idle_asks_get(&st->free_asks)) != NULL)
        free(q);
    free(st->decisions);
    free(st);
    stage_set_worker_data(w, &ratelimit_stage, NULL);
}

static int64_t mono_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * RL_NS + ts.tv_nsec;
}

static void count_decision(struct req *r, size_t tier, enum rl_outcome o)
{
    struct rl_worker *st = rl_state(r->w);

    r->ratelimit = rl_outcome_str(o); /* for the access log */
    r->tier = r->cfg->rate_limit.tiers[tier].name; /* its name is the metrics' tier label */
    metrics_bump(&st->decisions[tier * RL_OUT__COUNT + o]);
}

/* ---- the stage ------------------------------------------------------------ */

/* A decision record from the worker's free list, or a new one; NULL when
 * out of memory. Its plan is for the caller to fill. */
static struct rl_ask *ask_get(struct rl_worker *st)
{
    struct rl_ask *q = idle_asks_get(&st->free_asks);

    return q != NULL ? q : malloc(sizeof(*q));
}

/* Give Q back. A call it made must be answered or detached first: a late
 * reply then finds only the call record (rl_redis.c), never Q, which the
 * next request may already be using. */
static void ask_put(struct rl_worker *st, struct rl_ask *q)
{
    if (q == NULL)
        return;
    q->r = NULL;
    q->call = NULL;
    if (!idle_asks_put(&st->free_asks, q))
        free(q);
}

static int64_t ceil_s(int64_t ns)
{
    return (ns + RL_NS - 1) / RL_NS;
}

/* The limit the headers describe: when admitted, the one with the fewest
 * requests remaining; when refused, the refusing one that waits longest. */
static size_t headline(const struct rl_plan *p, bool admitted, const struct rl_result *res)
{
    size_t best = 0;

    for (size_t i = 1; i < p->n; i++) {
        if (admitted ? res[i].remaining < res[best].remaining
                     : !res[i].admits && (res[best].admits || res[i].retry_ns > res[best].retry_ns))
            best = i;
    }
    return best;
}

static void add_headers(struct req *r, const struct rl_gcra *g, const struct rl_result *res)
{
    char line[256];
    struct sbuf b = {line, 0, sizeof(line), false};
    int n;

    sbuf_lit(&b, "X-RateLimit-Limit: ");
    sbuf_u64(&b, g->limit);
    sbuf_lit(&b, "\r\nX-RateLimit-Remaining: ");
    sbuf_u64(&b, res->remaining);
    sbuf_lit(&b, "\r\nX-RateLimit-Reset: ");
    sbuf_i64(&b, ceil_s(res->reset_ns));
    sbuf_lit(&b, "\r\n");
    if ((n = sbuf_end(&b)) > 0)
        req_add_header(r, line, (size_t)n);
    if (!r->cfg->rate_limit.ietf_headers)
        return;
    /* draft-ietf-httpapi-ratelimit-headers-07, sections 4 and 5 */
    n = snprintf(line, sizeof(line),
                 "RateLimit-Policy: %u;w=%u\r\nRateLimit: limit=%u, remaining=%u, reset=%lld\r\n",
                 g->limit, g->window, g->limit, res->remaining, (long long)ceil_s(res->reset_ns));
    req_add_header(r, line, (size_t)n);
}

/* Answer or pass the request on a decision, with the rate-limit headers. */
static enum stage_verdict apply(struct req *r, const struct rl_plan *p, bool admitted,
                                const struct rl_result *res, enum rl_outcome out)
{
    size_t h = headline(p, admitted, res);

    count_decision(r, p->tier, out);
    add_headers(r, &p->g[h], &res[h]);
    if (admitted)
        return STAGE_NEXT;
    char extra[64];
    int64_t retry = ceil_s(res[h].retry_ns);
    int n = snprintf(extra, sizeof(extra), "Retry-After: %lld\r\n",
                     (long long)(retry > 0 ? retry : 1));
    req_add_header(r, extra, (size_t)n);
    return stage_answer(r, FG_ERR_RATE_LIMITED, NULL);
}

/* on_redis_failure = "local": the same limits in this worker alone. */
static enum stage_verdict decide_local(struct req *r, const struct rl_plan *p)
{
    struct rl_worker *st = rl_state(r->w);
    int64_t now = mono_ns(), tat[RL_MAX_LIMITS], after[RL_MAX_LIMITS];
    struct rl_result res[RL_MAX_LIMITS];

    for (size_t i = 0; i < p->n; i++) {
        struct rl_slot *s = table_find(&st->local, p->key[i], p->key_len[i], now);
        tat[i] = s ? s->until : 0;
    }
    bool admitted = rl_gcra_decide(p->g, tat, p->n, now, after, res);
    for (size_t i = 0; admitted && i < p->n; i++) {
        struct rl_slot *s = table_put(&st->local, p->key[i], p->key_len[i], now);
        if (s != NULL)
            s->until = after[i];
    }
    return apply(r, p, admitted, res, admitted ? RL_OUT_LOCAL_ALLOWED : RL_OUT_LOCAL_LIMITED);
}

/* Redis gave no decision (STATUS: RL_CALL_TIMEOUT when the call passed its
 * deadline; RL_CALL_ERROR also when the link is not up): on_redis_failure
 * decides. A 503 says in the access log which of the two it was. */
static enum stage_verdict decide_without_redis(struct req *r, const struct rl_plan *p,
                                               enum rl_call_status status)
{
    switch (r->cfg->rate_limit.on_redis_failure) {
    case FG_REDIS_FAIL_LOCAL: return decide_local(r, p);
    case FG_REDIS_FAIL_ALLOW:
        count_decision(r, p->tier, RL_OUT_FAIL_OPEN);
        return STAGE_NEXT;
    case FG_REDIS_FAIL_DENY: break;
    }
    count_decision(r, p->tier, RL_OUT_FAIL_CLOSED);
    return stage_answer(r, FG_ERR_UNAVAILABLE,
                        status == RL_CALL_TIMEOUT ? "rate limit store timeout"
                                                  : "rate limit store unavailable");
}

/* An identity Redis refused until T is refused here until T, without asking. */
static bool refused_by_cache(struct req *r, const struct rl_plan *p, enum stage_verdict *v)
{
    struct rl_worker *st = rl_state(r->w);
    struct rl_result res[RL_MAX_LIMITS];
    int64_t now = mono_ns();
    bool hit = false;

    for (size_t i = 0; i < p->n; i++) {
        struct rl_slot *s = table_find(&st->refused, p->key[i], p->key_len[i], now);
        res[i] = (struct rl_result){.admits = true, .remaining = p->g[i].limit};
        if (s != NULL) {
            res[i] = (struct rl_result){.retry_ns = s->until - now, .reset_ns = s->reset_at - now};
            hit = true;
        }
    }
    if (hit)
        *v = apply(r, p, false, res, RL_OUT_LIMITED);
    return hit;
}

static void remember_refusals(struct rl_worker *st, const struct rl_plan *p,
                              const struct rl_result *res)
{
    int64_t now = mono_ns();

    for (size_t i = 0; i < p->n; i++) {
        if (res[i].admits || res[i].retry_ns <= 0)
            continue;
        struct rl_slot *s = table_put(&st->refused, p->key[i], p->key_len[i], now);
        if (s == NULL)
            continue;
        s->until = now + res[i].retry_ns;
        s->reset_at = now + res[i].reset_ns;
        s->limit = p->g[i].limit;
        s->window = p->g[i].window;
    }
}

/* The request's element of the script's reply: per limit, how far its TAT
 * was ahead of Redis's clock (ns, 0 .. tau + T; see rl_script), an integer
 * for a request with one limit and an array of them otherwise, decided
 * here as the script decided it. 0 or -1; a reply out of range (not from
 * our script) is a failed call. */
static int parse_reply(const redisReply *reply, const struct rl_plan *p, struct rl_result *res,
                       bool *admitted)
{
    int64_t ahead[RL_MAX_LIMITS], after[RL_MAX_LIMITS];
    bool one = p->n == 1;

    if (one ? reply->type != REDIS_REPLY_INTEGER
            : reply->type != REDIS_REPLY_ARRAY || reply->elements != p->n)
        return -1;
    for (size_t i = 0; i < p->n; i++) {
        const redisReply *e = one ? reply : reply->element[i];
        if (e->type != REDIS_REPLY_INTEGER || e->integer < 0 ||
            e->integer > p->g[i].tolerance + p->g[i].interval)
            return -1;
        ahead[i] = e->integer;
    }
    *admitted = rl_gcra_decide(p->g, ahead, p->n, 0, after, res);
    return 0;
}

/* The request ended while waiting (stage cancel): let go of the call, then
 * of the ask. A late reply then finds only the call record. */
static void ratelimit_cancel(struct req *r)
{
    struct rl_ask *q = r->stage_data;

    if (q->call != NULL)
        rl_call_detach(q->call);
    ask_put(rl_state(r->w), q);
}

static void ask_done(void *arg, enum rl_call_status status, const redisReply *reply)
{
    struct rl_ask *q = arg;
    struct req *r = q->r;
    stage_resume_fn resume = q->resume;
    struct rl_worker *st = rl_state(r->w);
    struct rl_result res[RL_MAX_LIMITS];
    enum stage_verdict v;
    bool admitted;

    q->call = NULL;
    if (status == RL_CALL_OK && parse_reply(reply, &q->plan, res, &admitted) == 0) {
        if (!admitted)
            remember_refusals(st, &q->plan, res);
        v = apply(r, &q->plan, admitted, res, admitted ? RL_OUT_ALLOWED : RL_OUT_LIMITED);
    } else {
        v = decide_without_redis(r, &q->plan, status); /* rl_redis.c counted and logged it */
    }
    ask_put(st, q);
    resume(r, v);
}

/* Ask Redis; STAGE_WAIT when the call is on its way. */
static enum stage_verdict ask_redis(struct req *r, struct rl_ask *q, stage_resume_fn resume)
{
    const char *argv[3 * RL_MAX_LIMITS];
    size_t argvlen[3 * RL_MAX_LIMITS];
    char num[2 * RL_MAX_LIMITS][24];
    size_t n = q->plan.n;

    for (size_t i = 0; i < n; i++) {
        argv[i] = q->plan.key[i];
        argvlen[i] = q->plan.key_len[i];
        const struct rl_gcra *g = &q->plan.g[i];
        argvlen[n + 2 * i] = fmt_i64(num[2 * i], g->interval);
        argvlen[n + 2 * i + 1] = fmt_i64(num[2 * i + 1], g->tolerance + g->interval);
        argv[n + 2 * i] = num[2 * i];
        argv[n + 2 * i + 1] = num[2 * i + 1];
    }
    q->r = r;
    q->resume = resume;
    q->call = rl_link_eval(rl_state(r->w)->link, (int)n, (int)(2 * n), argv, argvlen, ask_done, q);
    if (q->call == NULL)
        return STAGE_NEXT;
    r->stage_data = q;
    return STAGE_WAIT;
}

static enum stage_verdict ratelimit_run(struct req *r, stage_resume_fn resume)
{
    const struct fg_ratelimit *rl = &r->cfg->rate_limit;
    struct rl_worker *st = rl_state(r->w);
    enum stage_verdict v;

    if (!rl->enabled || st == NULL)
        return STAGE_NEXT;
    if (st->next != NULL && rl_link_state(st->next) == RL_LINK_UP)
        promote_next(st);
    struct rl_ask *q = ask_get(st);
    struct rl_subject s = {
        .client_ip = r->client_ip,
        .user = r->user,
        .tier = r->tier,
        .path = r->path,
        .path_len = r->path_len,
        .method = r->h.method,
        .tier_limited = r->route == NULL || r->route->rate_limit,
    };
    if (q == NULL || rl_plan_build(rl, &s, &q->plan) < 0 || q->plan.n == 0) {
        ask_put(st, q);
        return STAGE_NEXT;
    }
    if (refused_by_cache(r, &q->plan, &v)) {
        ask_put(st, q);
        return v;
    }
    if (rl_link_state(st->link) == RL_LINK_UP && ask_redis(r, q, resume) == STAGE_WAIT)
        return STAGE_WAIT;
    v = decide_without_redis(r, &q->plan, RL_CALL_ERROR);
    ask_put(st, q);
    return v;
}


/* ---- admin ---------------------------------------------------------------- */

const char *ratelimit_redis_state(const struct fg_config *cfg, const struct worker *workers,
                                  unsigned n)
{
    if (n == 0 || !cfg->rate_limit.enabled)
        return "disabled";
    for (unsigned i = 0; i < n; i++) {
        const struct rl_worker *st = rl_state(&workers[i]);
        if (st == NULL || rl_link_state(__atomic_load_n(&st->link, __ATOMIC_ACQUIRE)) != RL_LINK_UP)
            return "down";
    }
    return "up";
}

#define APPEND(...) evbuffer_add_printf(out, __VA_ARGS__)

/* The link serving worker I (NULL when none). */
static struct rl_link *worker_link(const struct worker *workers, unsigned i)
{
    const struct rl_worker *st = rl_state(&workers[i]);

    return st ? __atomic_load_n(&st->link, __ATOMIC_ACQUIRE) : NULL;
}

/* ,"redis_primary":"ADDR" (the first worker's; "" before the Sentinels
 * named one) and, with Sentinels, ,"redis_sentinel":"subscribed" when
 * every worker listens for +switch-master, else "unsubscribed". */
static void ratelimit_redis_detail(const struct fg_config *cfg, const struct worker *workers,
                                   unsigned n, char *buf, size_t len)
{
    struct rl_link *l = n > 0 && cfg->rate_limit.enabled ? worker_link(workers, 0) : NULL;
    char addr[RL_PRIMARY_MAX];
    unsigned subscribed = 0;

    buf[0] = '\0';
    if (l == NULL)
        return;
    rl_link_primary(l, addr, sizeof(addr));
    for (char *p = addr; *p; p++)
        if (*p == '"' || *p == '\\' || (unsigned char)*p < 0x20)
            *p = '?'; /* a unix path is the operator's, and JSON has no room for it raw */
    for (unsigned i = 0; i < n; i++)
        subscribed += worker_link(workers, i) && rl_link_subscribed(worker_link(workers, i));
    if (!rl_link_sentinels(l))
        snprintf(buf, len, ",\"redis_primary\":\"%s\"", addr);
    else
        snprintf(buf, len, ",\"redis_primary\":\"%s\",\"redis_sentinel\":\"%s\"", addr,
                 subscribed == n ? "subscribed" : "unsubscribed");
}

/* The primary each worker uses (the same but during a failover), whether it
 * hears +switch-master, and the failovers seen (the most any worker saw:
 * each sees every one). */
static void sentinel_metrics(const struct worker *workers, unsigned n, struct evbuffer *out)
{
    char addr[RL_PRIMARY_MAX], seen[4][RL_PRIMARY_MAX];
    unsigned nseen = 0, subscribed = 0;
    uint64_t failovers = 0;
    bool sentinels = false;

    APPEND("# HELP flowgate_redis_primary_info The Redis node the limits are decided on.\n"
           "# TYPE flowgate_redis_primary_info gauge\n");
    for (unsigned i = 0; i < n; i++) {
        struct rl_link *l = worker_link(workers, i);
        struct rl_link_stats s;
        unsigned k = 0;
        if (l == NULL)
            continue;
        rl_link_primary(l, addr, sizeof(addr));
        rl_link_stats(l, &s);
        failovers = s.primary_changes > failovers ? s.primary_changes : failovers;
        subscribed += rl_link_subscribed(l);
        sentinels = sentinels || rl_link_sentinels(l);
        while (k < nseen && strcmp(seen[k], addr) != 0)
            k++;
        if (k < nseen || nseen == sizeof(seen) / sizeof(seen[0]) || addr[0] == '\0')
            continue;
        memcpy(seen[nseen++], addr, sizeof(addr));
        APPEND("flowgate_redis_primary_info{address=\"");
        metrics_put_label(out, addr);
        APPEND("\"} 1\n");
    }
    if (!sentinels)
        return;
    APPEND("# HELP flowgate_redis_sentinel_failovers_total Moves to another primary named by the "
           "Sentinels.\n# TYPE flowgate_redis_sentinel_failovers_total counter\n"
           "flowgate_redis_sentinel_failovers_total %llu\n"
           "# HELP flowgate_redis_sentinel_subscribed Workers subscribed to +switch-master.\n"
           "# TYPE flowgate_redis_sentinel_subscribed gauge\n"
           "flowgate_redis_sentinel_subscribed %u\n",
           (unsigned long long)failovers, subscribed);
}

static void sum_link_stats(const struct worker *workers, unsigned n, struct rl_link_stats *out)
{
    memset(out, 0, sizeof(*out));
    for (unsigned i = 0; i < n; i++) {
        struct rl_link_stats s;
        const struct rl_worker *st = rl_state(&workers[i]);
        const struct rl_link *l = st ? __atomic_load_n(&st->link, __ATOMIC_ACQUIRE) : NULL;
        if (l == NULL)
            continue;
        rl_link_stats(l, &s);
        out->calls += s.calls;
        out->batches += s.batches;
        out->errors += s.errors;
        out->timeouts += s.timeouts;
        out->lat_sum_us += s.lat_sum_us;
        for (size_t b = 0; b <= RL_LAT_BUCKETS; b++)
            out->lat_buckets[b] += s.lat_buckets[b];
    }
}

static uint64_t sum_decisions(const struct worker *workers, unsigned n, size_t idx)
{
    uint64_t total = 0;

    for (unsigned i = 0; i < n; i++) {
        const struct rl_worker *st = rl_state(&workers[i]);
        if (st == NULL || idx >= __atomic_load_n(&st->decisions_cap, __ATOMIC_ACQUIRE) * RL_OUT__COUNT)
            continue;
        const uint64_t *d = __atomic_load_n(&st->decisions, __ATOMIC_ACQUIRE);
        total += __atomic_load_n(&d[idx], __ATOMIC_RELAXED);
    }
    return total;
}

void ratelimit_metrics(const struct fg_config *cfg, const struct worker *workers, unsigned n,
                       struct evbuffer *out)
{
    const struct fg_ratelimit *rl = n ? &cfg->rate_limit : NULL;
    struct rl_link_stats s;
    uint64_t cum = 0;

    APPEND("# HELP flowgate_ratelimit_decisions_total Rate-limit decisions by tier and outcome.\n"
           "# TYPE flowgate_ratelimit_decisions_total counter\n");
    for (size_t t = 0; rl != NULL && rl->enabled && t < rl->ntiers; t++)
        for (size_t o = 0; o < RL_OUT__COUNT; o++)
            APPEND("flowgate_ratelimit_decisions_total{tier=\"%s\",outcome=\"%s\"} %llu\n",
                   rl->tiers[t].name, rl_outcome_str((enum rl_outcome)o),
                   (unsigned long long)sum_decisions(workers, n, t * RL_OUT__COUNT + o));
    sum_link_stats(workers, n, &s);
    APPEND("# HELP flowgate_redis_up 1 when every worker's Redis link is up.\n"
           "# TYPE flowgate_redis_up gauge\nflowgate_redis_up %d\n",
           strcmp(ratelimit_redis_state(cfg, workers, n), "up") == 0);
    if (rl != NULL && rl->enabled)
        sentinel_metrics(workers, n, out);
    APPEND("# HELP flowgate_redis_errors_total Redis calls and connections that failed.\n"
           "# TYPE flowgate_redis_errors_total counter\nflowgate_redis_errors_total %llu\n",
           (unsigned long long)s.errors);
    APPEND("# HELP flowgate_redis_timeouts_total Redis calls past rate_limit.redis.timeout_ms.\n"
           "# TYPE flowgate_redis_timeouts_total counter\nflowgate_redis_timeouts_total %llu\n",
           (unsigned long long)s.timeouts);
    APPEND("# HELP flowgate_redis_batches_total Pipelined batches of Redis calls sent.\n"
           "# TYPE flowgate_redis_batches_total counter\nflowgate_redis_batches_total %llu\n",
           (unsigned long long)s.batches);
    APPEND("# HELP flowgate_redis_call_duration_seconds Redis call latency, sent to answered.\n"
           "# TYPE flowgate_redis_call_duration_seconds histogram\n");
    for (size_t b = 0; b < RL_LAT_BUCKETS; b++) {
        cum += s.lat_buckets[b];
        APPEND("flowgate_redis_call_duration_seconds_bucket{le=\"%g\"} %llu\n",
               rl_lat_bounds_us[b] / 1e6, (unsigned long long)cum);
    }
    cum += s.lat_buckets[RL_LAT_BUCKETS];
    APPEND("flowgate_redis_call_duration_seconds_bucket{le=\"+Inf\"} %llu\n"
           "flowgate_redis_call_duration_seconds_sum %.6f\n"
           "flowgate_redis_call_duration_seconds_count %llu\n",
           (unsigned long long)cum, s.lat_sum_us / 1e6, (unsigned long long)s.calls);
}

/* A Redis address given as a host name is resolved by the worker's
 * resolver, never by a blocking lookup. */
static bool ratelimit_needs_resolver(const struct fg_config *cfg)
{
    return cfg->rate_limit.enabled && rl_redis_host_is_name(&cfg->rate_limit.redis);
}

const struct stage ratelimit_stage = {
    .name = "ratelimit",
    .needs_resolver = ratelimit_needs_resolver,
    .run = ratelimit_run,
    .cancel = ratelimit_cancel,
    .worker_init = ratelimit_worker_init,
    .worker_reload = ratelimit_worker_reload,
    .worker_stop = ratelimit_worker_stop,
    .worker_free = ratelimit_worker_free,
    .metrics = ratelimit_metrics,
    .health_name = "redis",
    .health = ratelimit_redis_state,
    .health_detail = ratelimit_redis_detail,
};
