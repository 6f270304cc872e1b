/*
 * resolver.c - per-worker name resolution: hosts file, evdns, answer cache.
 *
 * Everything here runs on one worker's loop; nothing is shared. A request
 * waits on a cache entry through a resolver_wait embedded in itself; the DNS
 * query belongs to the entry, not to any request, so a request that goes
 * away only unlinks its waiter and the answer, when it comes, is still
 * cached for the next one.
 */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <arpa/inet.h>
#include <netinet/in.h>

#include <event2/dns.h>

#include "hash.h"
#include "log.h"
#include "resolver.h"

#define RESOLVER_BUCKETS 1024
#define RESOLVER_NAME_MAX 253
#define HOSTS_CHECK_MS 1000

struct resolver_entry {
    struct resolver_entry *hnext;               /* hash chain */
    struct resolver_entry *lru_prev, *lru_next; /* most recently used first */
    struct dns_query *query;                    /* DNS lookup in flight, or NULL */
    bool querying;                              /* a lookup is under way (query may lag) */
    struct resolver_wait *waiters;              /* requests waiting for the answer */
    enum resolver_status st;                    /* last answer; PENDING before the first */
    bool have_addr;                             /* addrs hold the last OK answer */
    struct sockaddr_storage addrs[RESOLVER_ADDRS_MAX]; /* port 0; the first is a preview's */
    size_t naddrs;
    uint64_t expires_ms;                        /* monotonic: the answer is stale from then */
    unsigned notifying;                         /* answering waiters: never evicted now */
    uint32_t hash;
    struct resolver *rs;
    char name[]; /* lowercase, NUL-terminated */
};

/* A DNS lookup of one entry: its A and AAAA queries, sent together, and
 * their answers until both came (the entry's answer is their union). */
struct dns_query {
    struct resolver_entry *e;
    bool ended[2];        /* [0] A, [1] AAAA answered (perhaps while being sent) */
    unsigned outstanding; /* queries not answered, +1 while both are sent */
    int result[2];        /* DNS_ERR_* */
    int ttl[2];           /* seconds; of an answer with addresses */
    struct sockaddr_storage addrs[2][RESOLVER_ADDRS_MAX]; /* port 0 */
    size_t naddrs[2];
};

struct hosts_rec {
    char *name;                   /* lowercase */
    struct sockaddr_storage addr; /* port 0 */
    size_t order;                 /* line order: the first line naming a host wins */
};

struct resolver {
    struct event_base *base;
    struct evdns_base *dns;
    char *hosts_file;        /* NULL when none */
    struct hosts_rec *hosts; /* sorted by name */
    size_t nhosts;
    struct stat hosts_st; /* what the table was read from */
    bool hosts_loaded;
    uint64_t hosts_checked_ms; /* last stat() */
    struct resolver_entry *buckets[RESOLVER_BUCKETS];
    struct resolver_entry *lru_head, *lru_tail;
    size_t nentries;
    resolver_moved_cb moved;
    void *moved_arg;
};

const char *resolver_status_str(enum resolver_status st)
{
    switch (st) {
    case RESOLVER_OK: return "ok";
    case RESOLVER_NOT_FOUND: return "not_found";
    case RESOLVER_FAILED: return "failed";
    case RESOLVER_PENDING: return "pending";
    }
    return "?";
}

static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

bool resolver_same_ip(const struct sockaddr_storage *a, const struct sockaddr_storage *b)
{
    if (a->ss_family != b->ss_family)
        return false;
    if (a->ss_family == AF_INET)
        return ((const struct sockaddr_in *)a)->sin_addr.s_addr ==
               ((const struct sockaddr_in *)b)->sin_addr.s_addr;
    return memcmp(&((const struct sockaddr_in6 *)a)->sin6_addr,
                  &((const struct sockaddr_in6 *)b)->sin6_addr, sizeof(struct in6_addr)) == 0;
}

/* ---- hosts file ----------------------------------------------------------- */

static int addr_from_text(const char *s, struct sockaddr_storage *out)
{
    memset(out, 0, sizeof(*out));
    struct sockaddr_in *s4 = (struct sockaddr_in *)out;
    struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)out;
    if (inet_pton(AF_INET, s, &s4->sin_addr) == 1) {
        s4->sin_family = AF_INET;
        return 0;
    }
    if (inet_pton(AF_INET6, s, &s6->sin6_addr) == 1) {
        s6->sin6_family = AF_INET6;
        return 0;
    }
    return -1;
}

static int hosts_cmp(const void *a, const void *b)
{
    const struct hosts_rec *x = a, *y = b;
    int c = strcmp(x->name, y->name);
    return c != 0 ? c : (x->order > y->order) - (x->order < y->order);
}

static void hosts_clear(struct hosts_rec *h, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(h[i].name);
    free(h);
}

/* One line: "address name [name...]  # comment". */
static int hosts_parse_line(char *line, struct hosts_rec **v, size_t *n, size_t *cap)
{
    char *save = NULL, *hash = strchr(line, '#');
    struct sockaddr_storage addr;

    if (hash)
        *hash = '\0';
    char *tok = strtok_r(line, " \t\r\n", &save);
    if (tok == NULL || addr_from_text(tok, &addr) < 0)
        return 0;
    while ((tok = strtok_r(NULL, " \t\r\n", &save)) != NULL) {
        if (strlen(tok) > RESOLVER_NAME_MAX)
            continue;
        if (*n == *cap) {
            size_t ncap = *cap ? *cap * 2 : 64;
            struct hosts_rec *p = realloc(*v, ncap * sizeof(*p));
            if (p == NULL)
                return -1;
            *v = p;
            *cap = ncap;
        }
        for (char *p = tok; *p; p++)
            *p = (char)tolower((unsigned char)*p);
        if (((*v)[*n].name = strdup(tok)) == NULL)
            return -1;
        (*v)[*n].addr = addr;
        (*v)[*n].order = *n;
        (*n)++;
    }
    return 0;
}

/* Read the file into a new sorted table; the old one stays on failure. */
static void hosts_load(struct resolver *rs, const struct stat *st)
{
    FILE *f = fopen(rs->hosts_file, "r");
    struct hosts_rec *v = NULL;
    size_t n = 0, cap = 0, len = 0;
    char *line = NULL;
    int rc = 0;

    if (f == NULL) {
        log_warn("resolver: cannot read hosts file %s", rs->hosts_file);
        return;
    }
    while (rc == 0 && getline(&line, &len, f) > 0)
        rc = hosts_parse_line(line, &v, &n, &cap);
    free(line);
    fclose(f);
    if (rc < 0) {
        hosts_clear(v, n);
        return;
    }
    if (n > 0)
        qsort(v, n, sizeof(*v), hosts_cmp);
    hosts_clear(rs->hosts, rs->nhosts);
    rs->hosts = v;
    rs->nhosts = n;
    rs->hosts_st = *st;
    rs->hosts_loaded = true;
}

/* Re-read the file when it changed; looked at no more than once a second. */
static void hosts_refresh(struct resolver *rs, uint64_t now)
{
    struct stat st;

    if (rs->hosts_file == NULL || (rs->hosts_loaded && now - rs->hosts_checked_ms < HOSTS_CHECK_MS))
        return;
    rs->hosts_checked_ms = now;
    if (stat(rs->hosts_file, &st) < 0) {
        /* A file that went away answers nothing any more. */
        hosts_clear(rs->hosts, rs->nhosts);
        rs->hosts = NULL;
        rs->nhosts = 0;
        memset(&rs->hosts_st, 0, sizeof(rs->hosts_st));
        rs->hosts_loaded = true;
        return;
    }
    if (rs->hosts_loaded && st.st_ino == rs->hosts_st.st_ino &&
        st.st_size == rs->hosts_st.st_size && st.st_mtim.tv_sec == rs->hosts_st.st_mtim.tv_sec &&
        st.st_mtim.tv_nsec == rs->hosts_st.st_mtim.tv_nsec)
        return;
    hosts_load(rs, &st);
}

/* The first line naming NAME wins (the table is sorted by name, then line). */
static const struct hosts_rec *hosts_find(const struct resolver *rs, const char *name)
{
    size_t lo = 0, hi = rs->nhosts;

    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (strcmp(rs->hosts[mid].name, name) < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo < rs->nhosts && strcmp(rs->hosts[lo].name, name) == 0 ? &rs->hosts[lo] : NULL;
}

/* Every address the file gives H's name (its lines in file order, from H,
 * the first), into ADDRS[RESOLVER_ADDRS_MAX]; returns how many. */
static size_t hosts_addrs(const struct resolver *rs, const struct hosts_rec *h,
                          struct sockaddr_storage *addrs)
{
    const struct hosts_rec *end = rs->hosts + rs->nhosts;
    const char *name = h->name;
    size_t n = 0;

    for (; h < end && n < RESOLVER_ADDRS_MAX && strcmp(h->name, name) == 0; h++)
        addrs[n++] = h->addr;
    return n;
}

/* ---- cache entries --------------------------------------------------------- */

static void lru_unlink(struct resolver *rs, struct resolver_entry *e)
{
    if (e->lru_prev)
        e->lru_prev->lru_next = e->lru_next;
    else
        rs->lru_head = e->lru_next;
    if (e->lru_next)
        e->lru_next->lru_prev = e->lru_prev;
    else
        rs->lru_tail = e->lru_prev;
    e->lru_prev = e->lru_next = NULL;
}

static void lru_push(struct resolver *rs, struct resolver_entry *e)
{
    e->lru_next = rs->lru_head;
    e->lru_prev = NULL;
    if (rs->lru_head)
        rs->lru_head->lru_prev = e;
    rs->lru_head = e;
    if (rs->lru_tail == NULL)
        rs->lru_tail = e;
}

static void entry_touch(struct resolver *rs, struct resolver_entry *e)
{
    if (rs->lru_head != e) {
        lru_unlink(rs, e);
        lru_push(rs, e);
    }
}

static bool entry_busy(const struct resolver_entry *e)
{
    return e->querying || e->waiters != NULL || e->notifying > 0;
}

static void entry_free(struct resolver *rs, struct resolver_entry *e)
{
    struct resolver_entry **pp = &rs->buckets[e->hash % RESOLVER_BUCKETS];

    while (*pp != e)
        pp = &(*pp)->hnext;
    *pp = e->hnext;
    lru_unlink(rs, e);
    rs->nentries--;
    free(e->query); /* only from resolver_free, whose evdns_base_free dropped its queries */
    free(e);
}

/* Make room: the least recently used entry nobody waits on goes. */
static void evict_one(struct resolver *rs)
{
    for (struct resolver_entry *e = rs->lru_tail; e; e = e->lru_prev) {
        if (!entry_busy(e)) {
            entry_free(rs, e);
            return;
        }
    }
}

static struct resolver_entry *entry_find(struct resolver *rs, const char *name, uint32_t h)
{
    for (struct resolver_entry *e = rs->buckets[h % RESOLVER_BUCKETS]; e; e = e->hnext)
        if (e->hash == h && strcmp(e->name, name) == 0)
            return e;
    return NULL;
}

static struct resolver_entry *entry_new(struct resolver *rs, const char *name, uint32_t h)
{
    size_t len = strlen(name);
    struct resolver_entry *e;

    if (rs->nentries >= RESOLVER_MAX_ENTRIES)
        evict_one(rs);
    if ((e = calloc(1, sizeof(*e) + len + 1)) == NULL)
        return NULL;
    memcpy(e->name, name, len + 1);
    e->hash = h;
    e->rs = rs;
    e->st = RESOLVER_PENDING;
    e->hnext = rs->buckets[h % RESOLVER_BUCKETS];
    rs->buckets[h % RESOLVER_BUCKETS] = e;
    lru_push(rs, e);
    rs->nentries++;
    return e;
}

static bool addr_in(const struct sockaddr_storage *a, const struct sockaddr_storage *v, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (resolver_same_ip(a, &v[i]))
            return true;
    return false;
}

/* Record an answer (N addresses ADDRS); tell the owner of pools when the
 * name left the address a preview used (the first). */
static void entry_set(struct resolver_entry *e, enum resolver_status st,
                      const struct sockaddr_storage *addrs, size_t n, uint64_t ttl_ms)
{
    struct resolver *rs = e->rs;
    bool moved = e->have_addr && st != RESOLVER_FAILED &&
                 (st != RESOLVER_OK || !addr_in(&e->addrs[0], addrs, n));
    struct sockaddr_storage old = e->addrs[0];

    e->st = st;
    e->expires_ms = now_ms() + ttl_ms;
    if (st == RESOLVER_OK) {
        memcpy(e->addrs, addrs, n * sizeof(*addrs));
        e->naddrs = n;
        e->have_addr = true;
    } else if (st == RESOLVER_NOT_FOUND) {
        e->have_addr = false;
    }
    /* A failure keeps the last address for comparison: the MVP may still
     * be there once the resolver answers again. */
    if (moved && rs->moved)
        rs->moved(rs->moved_arg, &old);
}

/* Answer every waiter. Each is unlinked before its callback, which may start
 * new lookups (even of this name) or end its request. */
static void entry_notify(struct resolver_entry *e)
{
    e->notifying++;
    while (e->waiters) {
        struct resolver_wait *wt = e->waiters;
        e->waiters = wt->next;
        if (e->waiters)
            e->waiters->prev = NULL;
        wt->e = NULL;
        wt->next = wt->prev = NULL;
        wt->cb(wt, e->st, e->st == RESOLVER_OK ? &e->addrs[0] : NULL);
    }
    e->notifying--;
}

static uint64_t dns_ttl_ms(int ttl)
{
    uint64_t ms = ttl > 0 ? (uint64_t)ttl * 1000 : 0;
    if (ms < RESOLVER_MIN_TTL_MS)
        return RESOLVER_MIN_TTL_MS;
    return ms > RESOLVER_MAX_TTL_MS ? RESOLVER_MAX_TTL_MS : ms;
}

/* One query's addresses into Q (family index I: 0 for A, 1 for AAAA). */
static void dns_keep(struct dns_query *q, int i, int count, const void *addresses)
{
    size_t len = i == 0 ? 4 : 16;

    /* Every record, in the answer's order (the first is a preview's). */
    for (size_t n = 0; n < (size_t)count && n < RESOLVER_ADDRS_MAX; n++) {
        if (i == 0) {
            struct sockaddr_in *s4 = (struct sockaddr_in *)&q->addrs[0][n];
            s4->sin_family = AF_INET;
            memcpy(&s4->sin_addr, (const char *)addresses + len * n, len);
        } else {
            struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&q->addrs[1][n];
            s6->sin6_family = AF_INET6;
            memcpy(&s6->sin6_addr, (const char *)addresses + len * n, len);
        }
        q->naddrs[i]++;
    }
}

/* NXDOMAIN, or a name without a record of the type asked (NODATA). */
static bool dns_said_none(const struct dns_query *q, int i)
{
    return q->result[i] == DNS_ERR_NOTEXIST || q->result[i] == DNS_ERR_NODATA ||
           (q->result[i] == DNS_ERR_NONE && q->naddrs[i] == 0);
}

/* Both queries ended: the union of their addresses (A first) with the
 * smaller TTL of the answers that had some. Either family's addresses make
 * a success; the name does not exist only when neither query found it. */
static void dns_done(struct dns_query *q)
{
    struct resolver_entry *e = q->e;
    struct sockaddr_storage ss[RESOLVER_ADDRS_MAX];
    size_t n = 0;
    int ttl = -1;

    e->query = NULL;
    e->querying = false;
    for (int i = 0; i < 2; i++) {
        for (size_t k = 0; k < q->naddrs[i] && n < RESOLVER_ADDRS_MAX; k++)
            ss[n++] = q->addrs[i][k];
        if (q->naddrs[i] > 0 && (ttl < 0 || q->ttl[i] < ttl))
            ttl = q->ttl[i];
    }
    if (n > 0) {
        entry_set(e, RESOLVER_OK, ss, n, dns_ttl_ms(ttl));
    } else if (dns_said_none(q, 0) && dns_said_none(q, 1)) {
        entry_set(e, RESOLVER_NOT_FOUND, NULL, 0, RESOLVER_NEGATIVE_TTL_MS);
    } else {
        int err = dns_said_none(q, 0) ? q->result[1] : q->result[0];
        log_warn("resolver: %s: %s", e->name, evdns_err_to_string(err));
        entry_set(e, RESOLVER_FAILED, NULL, 0, RESOLVER_FAILED_TTL_MS);
    }
    free(q);
    entry_notify(e);
}

/* One query ended (I: 0 for A, 1 for AAAA); the last one answers E. */
static void dns_ended(struct dns_query *q, int i, int result, char type, int count, int ttl,
                      const void *addresses)
{
    char want = i == 0 ? DNS_IPv4_A : DNS_IPv6_AAAA;

    q->ended[i] = true;
    q->result[i] = result;
    if (result == DNS_ERR_NONE && type == want && count > 0) {
        dns_keep(q, i, count, addresses);
        q->ttl[i] = ttl;
    }
    if (--q->outstanding == 0)
        dns_done(q);
}

static void dns_answer_a(int result, char type, int count, int ttl, void *addresses, void *arg)
{
    dns_ended(arg, 0, result, type, count, ttl, addresses);
}

static void dns_answer_aaaa(int result, char type, int count, int ttl, void *addresses,
                            void *arg)
{
    dns_ended(arg, 1, result, type, count, ttl, addresses);
}

/* Send Q's query I. evdns may answer from inside the call; a query it
 * cannot send ends at once as a failure. */
static void dns_send(struct resolver *rs, struct dns_query *q, int i)
{
    const char *name = q->e->name;
    struct evdns_request *req;

    /* No search domains: the template already makes a complete name. */
    if (i == 0)
        req = evdns_base_resolve_ipv4(rs->dns, name, DNS_QUERY_NO_SEARCH, dns_answer_a, q);
    else
        req = evdns_base_resolve_ipv6(rs->dns, name, DNS_QUERY_NO_SEARCH, dns_answer_aaaa, q);
    /* Neither sent nor answered from inside the call: a failure. */
    if (req == NULL && !q->ended[i]) {
        q->ended[i] = true;
        q->result[i] = DNS_ERR_UNKNOWN;
        q->outstanding--;
    }
}

/* Start a lookup for E: the hosts file answers at once, DNS (A and AAAA
 * queries in parallel) later. */
static void entry_resolve(struct resolver *rs, struct resolver_entry *e)
{
    uint64_t now = now_ms();
    const struct hosts_rec *h;
    struct dns_query *q;

    hosts_refresh(rs, now);
    if ((h = hosts_find(rs, e->name)) != NULL) {
        struct sockaddr_storage addrs[RESOLVER_ADDRS_MAX];
        size_t n = hosts_addrs(rs, h, addrs);
        entry_set(e, RESOLVER_OK, addrs, n, RESOLVER_HOSTS_TTL_MS);
        return;
    }
    if ((q = calloc(1, sizeof(*q))) == NULL) {
        entry_set(e, RESOLVER_FAILED, NULL, 0, RESOLVER_FAILED_TTL_MS);
        return;
    }
    q->e = e;
    /* The extra one keeps Q while both are sent, whatever answers inside. */
    q->outstanding = 3;
    e->query = q;
    e->querying = true;
    dns_send(rs, q, 0);
    dns_send(rs, q, 1);
    if (--q->outstanding == 0)
        dns_done(q);
}

/* NAME's entry, answered when fresh for AHEAD_MS more (NULL when out of
 * memory). Otherwise WT waits on it. */
static struct resolver_entry *lookup(struct resolver *rs, const char *name,
                                     struct resolver_wait *wt, resolver_cb cb, uint64_t ahead_ms)
{
    uint32_t h = (uint32_t)hash_bytes(name, strlen(name), 0);
    struct resolver_entry *e = entry_find(rs, name, h);

    if (e == NULL && (e = entry_new(rs, name, h)) == NULL)
        return NULL;
    entry_touch(rs, e);
    if (!e->querying && (e->st == RESOLVER_PENDING || e->expires_ms <= now_ms() + ahead_ms))
        entry_resolve(rs, e);
    if (!e->querying)
        return e;
    wt->e = e;
    wt->cb = cb;
    wt->prev = NULL;
    wt->next = e->waiters;
    if (e->waiters)
        e->waiters->prev = wt;
    e->waiters = wt;
    return e;
}

enum resolver_status resolver_lookup(struct resolver *rs, const char *name,
                                     struct resolver_wait *wt, resolver_cb cb,
                                     struct sockaddr_storage *addr)
{
    struct resolver_entry *e = lookup(rs, name, wt, cb, 0);

    if (e == NULL)
        return RESOLVER_FAILED;
    if (e->querying)
        return RESOLVER_PENDING;
    if (e->st == RESOLVER_OK)
        *addr = e->addrs[0];
    return e->st;
}

enum resolver_status resolver_lookup_all(struct resolver *rs, const char *name,
                                         struct resolver_wait *wt, resolver_cb cb,
                                         uint64_t ahead_ms, struct resolver_answer *ans)
{
    struct resolver_entry *e = lookup(rs, name, wt, cb, ahead_ms);

    if (e == NULL)
        return RESOLVER_FAILED;
    if (e->querying)
        return RESOLVER_PENDING;
    ans->naddrs = e->st == RESOLVER_OK ? e->naddrs : 0;
    memcpy(ans->addrs, e->addrs, ans->naddrs * sizeof(*ans->addrs));
    ans->expires_ms = e->expires_ms;
    return e->st;
}

void resolver_cancel(struct resolver_wait *wt)
{
    struct resolver_entry *e = wt->e;

    if (e == NULL)
        return;
    if (wt->prev)
        wt->prev->next = wt->next;
    else
        e->waiters = wt->next;
    if (wt->next)
        wt->next->prev = wt->prev;
    wt->e = NULL;
    wt->next = wt->prev = NULL;
}

/* ---- setup ---------------------------------------------------------------- */

static int add_nameservers(struct evdns_base *dns, const struct fg_resolver *cfg, char *err,
                           size_t errlen)
{
    for (size_t i = 0; i < cfg->nnameservers; i++) {
        if (evdns_base_nameserver_ip_add(dns, cfg->nameservers[i]) != 0) {
            snprintf(err, errlen, "resolver: cannot use nameserver \"%s\"", cfg->nameservers[i]);
            return -1;
        }
    }
    return 0;
}

struct resolver *resolver_new(struct event_base *base, const struct fg_resolver *cfg,
                              resolver_moved_cb moved, void *arg, char *err, size_t errlen)
{
    struct resolver *rs = calloc(1, sizeof(*rs));
    /* Inactive, the resolver's socket must not keep a stopping loop alive. */
    int flags = EVDNS_BASE_DISABLE_WHEN_INACTIVE |
                (cfg->nnameservers == 0 ? EVDNS_BASE_INITIALIZE_NAMESERVERS : 0);

    if (rs == NULL || (rs->dns = evdns_base_new(base, flags)) == NULL) {
        snprintf(err, errlen, "resolver: cannot create the DNS resolver");
        goto fail;
    }
    rs->base = base;
    rs->moved = moved;
    rs->moved_arg = arg;
    if (add_nameservers(rs->dns, cfg, err, errlen) < 0)
        goto fail;
    /* A preview request waits at most about timeout * attempts for DNS. */
    evdns_base_set_option(rs->dns, "timeout:", "2");
    evdns_base_set_option(rs->dns, "attempts:", "2");
    if (cfg->hosts_file && cfg->hosts_file[0] &&
        (rs->hosts_file = strdup(cfg->hosts_file)) == NULL) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    return rs;

fail:
    resolver_free(rs);
    return NULL;
}

void resolver_free(struct resolver *rs)
{
    if (rs == NULL)
        return;
    /* Dropped without callbacks: the entries they point at go just below. */
    if (rs->dns)
        evdns_base_free(rs->dns, 0);
    while (rs->lru_head)
        entry_free(rs, rs->lru_head);
    hosts_clear(rs->hosts, rs->nhosts);
    free(rs->hosts_file);
    free(rs);
}
