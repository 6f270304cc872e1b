/*
 * test_resolver.c - resolver.c on a real event base against a hosts file in
 * a temp directory and a small authoritative DNS responder on 127.0.0.1
 * (UDP, on the same loop) whose answers each test sets and whose queries it
 * counts: hosts-file answers without a query, DNS answers cached for their
 * TTL, one query for concurrent lookups, NXDOMAIN, SERVFAIL and a server
 * that never answers, cancelled waiters, the `moved` callback, and A and
 * AAAA answers merged.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <unistd.h>

#include <cmocka.h>
#include <event2/event.h>

#include "resolver.h"

/* The resolver gives DNS 2 s per attempt, 2 attempts: a silent server is
 * given up on after about 4 s. */
#define GUARD_MS 10000

static char dir[128];
static char hosts_path[200];

/* ---- the DNS responder ------------------------------------------------------ */

enum dns_kind {
    DNS_NXDOMAIN = 0, /* also the answer for a name not in the table */
    DNS_A = 1,        /* a record of the type: A, or AAAA when the type is */
    DNS_SERVFAIL = 2,
    DNS_SILENT = 3, /* no reply at all */
    DNS_NODATA = 4, /* no record of the type: a name listed for the other only */
};

#define QTYPE_A 1
#define QTYPE_AAAA 28

/* The answer to queries of one type for a name. */
struct dns_rec {
    const char *name; /* lowercase */
    enum dns_kind kind;
    const char *ip; /* DNS_A */
    uint32_t ttl;   /* seconds */
    int queries;    /* received for this name and type */
    int type;       /* QTYPE_A or QTYPE_AAAA */
};

struct dns_server {
    int fd;               /* UDP, 127.0.0.1 */
    struct event *ev;     /* answers from the loop */
    struct dns_rec *recs; /* the test's table: changed between lookups */
    size_t nrecs;
    int queries;   /* A queries received, for any name: one a lookup */
    int queries6;  /* AAAA queries received, for any name */
    char addr[32]; /* "127.0.0.1:port", for the resolver */
};

/* The question of query Q[0..N): its name, lowercased, into NAME; the
 * offset just past it (type and class included), or 0 when malformed. */
static size_t dns_question(const unsigned char *q, size_t n, char *name, size_t cap)
{
    size_t pos = 12, len = 0;

    if (n < 12)
        return 0;
    while (pos < n && q[pos] != 0) {
        size_t l = q[pos++];
        if ((l & 0xc0) || pos + l > n || len + l + 2 > cap)
            return 0;
        if (len > 0)
            name[len++] = '.';
        for (size_t i = 0; i < l; i++)
            name[len++] = (char)(q[pos + i] | (q[pos + i] >= 'A' && q[pos + i] <= 'Z' ? 0x20 : 0));
        pos += l;
    }
    name[len] = '\0';
    return pos + 5 <= n ? pos + 5 : 0;
}

/* NAME's record for queries of QTYPE; *LISTED tells whether NAME has any. */
static struct dns_rec *dns_find(struct dns_server *d, const char *name, int qtype, bool *listed)
{
    *listed = false;
    for (size_t i = 0; i < d->nrecs; i++) {
        if (strcmp(d->recs[i].name, name) != 0)
            continue;
        *listed = true;
        if (d->recs[i].type == qtype)
            return &d->recs[i];
    }
    return NULL;
}

/* The reply (KIND) to query Q (question ending at END, of type QTYPE)
 * into R; its length. The question is copied as sent: the resolver
 * randomises its case. */
static size_t dns_reply(const unsigned char *q, size_t end, int qtype, enum dns_kind kind,
                        const struct dns_rec *rec, unsigned char *r)
{
    int rcode = kind == DNS_NXDOMAIN ? 3 : kind == DNS_SERVFAIL ? 2 : 0;
    size_t len = end;

    memcpy(r, q, end);
    r[2] = (unsigned char)(0x84 | (q[2] & 0x01)); /* QR, AA, RD as asked */
    r[3] = (unsigned char)(0x80 | rcode);         /* RA */
    memset(r + 4, 0, 8);
    r[5] = 1; /* one question */
    if (kind == DNS_A) {
        const unsigned char head[] = {0xc0, 0x0c, 0, (unsigned char)qtype, 0, 1};
        unsigned char ip[16];
        size_t iplen = qtype == QTYPE_AAAA ? 16 : 4;
        assert_int_equal(inet_pton(qtype == QTYPE_AAAA ? AF_INET6 : AF_INET, rec->ip, ip), 1);
        r[7] = 1; /* one answer */
        memcpy(r + len, head, sizeof(head));
        len += sizeof(head);
        r[len++] = (unsigned char)(rec->ttl >> 24);
        r[len++] = (unsigned char)(rec->ttl >> 16);
        r[len++] = (unsigned char)(rec->ttl >> 8);
        r[len++] = (unsigned char)rec->ttl;
        r[len++] = 0;
        r[len++] = (unsigned char)iplen;
        memcpy(r + len, ip, iplen);
        len += iplen;
    }
    return len;
}

static void on_dns(evutil_socket_t fd, short what, void *arg)
{
    struct dns_server *d = arg;
    unsigned char q[512], r[600];
    struct sockaddr_storage from;
    socklen_t flen = sizeof(from);
    char name[256];
    ssize_t n;

    while ((n = recvfrom(fd, q, sizeof(q), 0, (struct sockaddr *)&from, &flen)) > 0) {
        size_t end = dns_question(q, (size_t)n, name, sizeof(name));
        if (end == 0)
            continue;
        int qtype = q[end - 4] << 8 | q[end - 3];
        bool listed;
        struct dns_rec *rec = dns_find(d, name, qtype, &listed);
        enum dns_kind kind = rec ? rec->kind : listed ? DNS_NODATA : DNS_NXDOMAIN;
        if (qtype == QTYPE_AAAA)
            d->queries6++;
        else
            d->queries++;
        if (rec)
            rec->queries++;
        if (kind == DNS_SILENT)
            continue;
        size_t len = dns_reply(q, end, qtype, kind, rec, r);
        sendto(fd, r, len, 0, (struct sockaddr *)&from, flen);
        flen = sizeof(from);
    }
}

static void dns_start(struct dns_server *d, struct event_base *base, struct dns_rec *recs, size_t n)
{
    struct sockaddr_in a;
    socklen_t len = sizeof(a);

    memset(d, 0, sizeof(*d));
    d->recs = recs;
    d->nrecs = n;
    d->fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    assert_true(d->fd >= 0);
    memset(&a, 0, sizeof(a));
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(bind(d->fd, (struct sockaddr *)&a, sizeof(a)), 0);
    assert_int_equal(getsockname(d->fd, (struct sockaddr *)&a, &len), 0);
    snprintf(d->addr, sizeof(d->addr), "127.0.0.1:%d", ntohs(a.sin_port));
    d->ev = event_new(base, d->fd, EV_READ | EV_PERSIST, on_dns, d);
    event_add(d->ev, NULL);
}

static void dns_stop(struct dns_server *d)
{
    event_free(d->ev);
    close(d->fd);
}

/* ---- the resolver under test ----------------------------------------------------- */

/* What the callbacks saw. */
struct answer {
    struct resolver_wait wt;      /* first: the callback finds its answer from it */
    struct event_base *base;      /* broken when called */
    int calls;                    /* times called */
    enum resolver_status st;      /* of the last call */
    struct sockaddr_storage addr; /* the address, given at once or to the callback */
};

/* What the `moved` callback saw. */
struct moves {
    int calls;                   /* times called */
    struct sockaddr_storage old; /* of the last call */
};

static void on_answer(struct resolver_wait *wt, enum resolver_status st,
                      const struct sockaddr_storage *addr)
{
    struct answer *a = (struct answer *)wt;

    a->calls++;
    a->st = st;
    if (addr)
        a->addr = *addr;
    event_base_loopbreak(a->base);
}

static void on_moved(void *arg, const struct sockaddr_storage *old)
{
    struct moves *m = arg;

    m->calls++;
    m->old = *old;
}

/* A base, a DNS responder with RECS and a resolver asking it (and reading
 * the test's hosts file). */
struct fixture {
    struct event_base *base;
    struct dns_server dns;
    struct resolver *rs; /* NULL once a test freed it */
    struct moves moves;  /* its `moved` callback's record */
};

static void fixture_start(struct fixture *f, struct dns_rec *recs, size_t n)
{
    char err[256] = "";
    char *ns[1];
    struct fg_resolver cfg = {ns, 1, hosts_path};

    memset(f, 0, sizeof(*f));
    f->base = event_base_new();
    assert_non_null(f->base);
    dns_start(&f->dns, f->base, recs, n);
    ns[0] = f->dns.addr;
    f->rs = resolver_new(f->base, &cfg, on_moved, &f->moves, err, sizeof(err));
    if (f->rs == NULL)
        fail_msg("resolver_new: %s", err);
}

static void fixture_stop(struct fixture *f)
{
    resolver_free(f->rs);
    dns_stop(&f->dns);
    event_base_free(f->base);
}

struct guard {
    struct event_base *base;
    bool expired;
};

static void on_guard(evutil_socket_t fd, short what, void *arg)
{
    struct guard *g = arg;

    g->expired = true;
    event_base_loopbreak(g->base);
}

/* Run until a callback breaks the loop; fail after GUARD_MS. */
static void run_until_answer(struct fixture *f)
{
    struct guard g = {f->base, false};
    struct event *ev = evtimer_new(f->base, on_guard, &g);
    struct timeval tv = {GUARD_MS / 1000, 0};

    assert_non_null(ev);
    evtimer_add(ev, &tv);
    event_base_dispatch(f->base);
    event_free(ev);
    if (g.expired)
        fail_msg("no answer within %d ms", GUARD_MS);
}

static void run_ms(struct event_base *base, uint32_t ms)
{
    struct timeval tv = {(time_t)(ms / 1000), (suseconds_t)(ms % 1000) * 1000};

    event_base_loopexit(base, &tv);
    event_base_dispatch(base);
}

/* Look NAME up; wait for the answer when it is not given at once. */
static enum resolver_status lookup(struct fixture *f, const char *name, struct answer *a)
{
    a->base = f->base;
    enum resolver_status st = resolver_lookup(f->rs, name, &a->wt, on_answer, &a->addr);
    if (st != RESOLVER_PENDING)
        return st;
    run_until_answer(f);
    assert_int_equal(a->calls, 1);
    return a->st;
}

static void assert_ip(const struct sockaddr_storage *ss, const char *ip)
{
    char text[INET_ADDRSTRLEN] = "";
    const struct sockaddr_in *s4 = (const struct sockaddr_in *)ss;

    assert_int_equal(ss->ss_family, AF_INET);
    assert_non_null(inet_ntop(AF_INET, &s4->sin_addr, text, sizeof(text)));
    assert_string_equal(text, ip);
    assert_int_equal(s4->sin_port, 0);
}

static void assert_ip6(const struct sockaddr_storage *ss, const char *ip)
{
    char text[INET6_ADDRSTRLEN] = "";
    const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)ss;

    assert_int_equal(ss->ss_family, AF_INET6);
    assert_non_null(inet_ntop(AF_INET6, &s6->sin6_addr, text, sizeof(text)));
    assert_string_equal(text, ip);
    assert_int_equal(s6->sin6_port, 0);
}

/* lookup_all of NAME, waiting for the answer when it is not given at once. */
static enum resolver_status lookup_all(struct fixture *f, const char *name, struct answer *a,
                                       struct resolver_answer *all)
{
    a->base = f->base;
    enum resolver_status st = resolver_lookup_all(f->rs, name, &a->wt, on_answer, 0, all);
    if (st != RESOLVER_PENDING)
        return st;
    run_until_answer(f);
    assert_int_equal(a->calls, 1);
    return resolver_lookup_all(f->rs, name, &a->wt, on_answer, 0, all);
}

static void write_hosts(const char *text)
{
    FILE *fp = fopen(hosts_path, "w");

    assert_non_null(fp);
    fputs(text, fp);
    fclose(fp);
}

/* ---- tests -------------------------------------------------------------------------- */

/* Names in the hosts file are answered at once, without a DNS query: the
 * first line naming a host wins, names compare in lowercase, comments and
 * bad lines are skipped; a name it lacks goes to DNS. */
static void test_hosts_file(void **state)
{
    struct dns_rec recs[] = {{"dns.test", DNS_A, "127.0.0.9", 60, 0, QTYPE_A}};
    struct fixture f;
    struct answer a = {0};

    write_hosts("# previews\n"
                "127.0.0.5 mvp-a.test Other.Test  # first\n"
                "not-an-address mvp-c.test\n"
                "127.0.0.6 mvp-a.test mvp-b.test\n");
    fixture_start(&f, recs, 1);
    assert_int_equal(resolver_lookup(f.rs, "mvp-a.test", &a.wt, on_answer, &a.addr), RESOLVER_OK);
    assert_ip(&a.addr, "127.0.0.5");
    assert_int_equal(resolver_lookup(f.rs, "other.test", &a.wt, on_answer, &a.addr), RESOLVER_OK);
    assert_ip(&a.addr, "127.0.0.5");
    assert_int_equal(resolver_lookup(f.rs, "mvp-b.test", &a.wt, on_answer, &a.addr), RESOLVER_OK);
    assert_ip(&a.addr, "127.0.0.6");
    assert_int_equal(f.dns.queries, 0);
    /* The whole answer: every line naming the host, in file order. */
    struct resolver_answer all;
    assert_int_equal(resolver_lookup_all(f.rs, "mvp-a.test", &a.wt, on_answer, 0, &all),
                     RESOLVER_OK);
    assert_int_equal(all.naddrs, 2);
    assert_ip(&all.addrs[0], "127.0.0.5");
    assert_ip(&all.addrs[1], "127.0.0.6");
    assert_int_equal(resolver_lookup_all(f.rs, "mvp-b.test", &a.wt, on_answer, 0, &all),
                     RESOLVER_OK);
    assert_int_equal(all.naddrs, 1);
    assert_int_equal(f.dns.queries, 0);
    assert_int_equal(a.calls, 0);

    assert_int_equal(lookup(&f, "mvp-c.test", &a), RESOLVER_NOT_FOUND);
    memset(&a, 0, sizeof(a));
    assert_int_equal(lookup(&f, "dns.test", &a), RESOLVER_OK);
    assert_ip(&a.addr, "127.0.0.9");
    assert_int_equal(f.dns.queries, 2);
    fixture_stop(&f);
}

/* A DNS answer comes through the callback, then is served from the cache
 * without another query. */
static void test_dns_answer_cached(void **state)
{
    struct dns_rec recs[] = {{"app.test", DNS_A, "127.0.0.7", 60, 0, QTYPE_A}};
    struct fixture f;
    struct answer a = {0}, b = {0};

    write_hosts("");
    fixture_start(&f, recs, 1);
    assert_int_equal(lookup(&f, "app.test", &a), RESOLVER_OK);
    assert_int_equal(a.calls, 1);
    assert_ip(&a.addr, "127.0.0.7");
    assert_int_equal(recs[0].queries, 1);

    assert_int_equal(resolver_lookup(f.rs, "app.test", &b.wt, on_answer, &b.addr), RESOLVER_OK);
    assert_ip(&b.addr, "127.0.0.7");
    run_ms(f.base, 30);
    assert_int_equal(b.calls, 0);
    assert_int_equal(recs[0].queries, 1);
    assert_int_equal(f.moves.calls, 0);

    /* Refreshed ahead: an answer that expires within AHEAD_MS (60 s TTL,
     * asked 61 s ahead) is looked up again; the lookup waits for it. */
    struct resolver_answer all;
    assert_int_equal(resolver_lookup_all(f.rs, "app.test", &b.wt, on_answer, 1000, &all),
                     RESOLVER_OK);
    assert_int_equal(all.naddrs, 1);
    assert_int_equal(recs[0].queries, 1);
    b.base = f.base;
    assert_int_equal(resolver_lookup_all(f.rs, "app.test", &b.wt, on_answer, 61000, &all),
                     RESOLVER_PENDING);
    run_until_answer(&f);
    assert_int_equal(b.calls, 1);
    assert_int_equal(recs[0].queries, 2);
    fixture_stop(&f);
}

/* Lookups of one name while its query is out wait on that one query. */
static void test_concurrent_lookups_one_query(void **state)
{
    struct dns_rec recs[] = {{"busy.test", DNS_A, "127.0.0.8", 60, 0, QTYPE_A}};
    struct fixture f;
    struct answer a[3] = {{.calls = 0}};

    write_hosts("");
    fixture_start(&f, recs, 1);
    for (int i = 0; i < 3; i++) {
        a[i].base = f.base;
        assert_int_equal(resolver_lookup(f.rs, "busy.test", &a[i].wt, on_answer, &a[i].addr),
                         RESOLVER_PENDING);
    }
    run_until_answer(&f);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(a[i].calls, 1);
        assert_int_equal(a[i].st, RESOLVER_OK);
        assert_ip(&a[i].addr, "127.0.0.8");
    }
    assert_int_equal(recs[0].queries, 1);
    assert_int_equal(f.dns.queries6, 1);
    fixture_stop(&f);
}

/* NXDOMAIN is RESOLVER_NOT_FOUND, remembered (no second query); SERVFAIL
 * is RESOLVER_FAILED (evdns takes it for a timed-out try, asks again, then
 * gives up). */
static void test_not_found_and_servfail(void **state)
{
    struct dns_rec recs[] = {{"broken.test", DNS_SERVFAIL, NULL, 0, 0, QTYPE_A}};
    struct fixture f;
    struct answer a = {0}, b = {0}, c = {0};

    write_hosts("");
    fixture_start(&f, recs, 1);
    assert_int_equal(lookup(&f, "gone.test", &a), RESOLVER_NOT_FOUND);
    assert_int_equal(f.dns.queries, 1);
    assert_int_equal(resolver_lookup(f.rs, "gone.test", &b.wt, on_answer, &b.addr),
                     RESOLVER_NOT_FOUND);
    assert_int_equal(f.dns.queries, 1);

    assert_int_equal(lookup(&f, "broken.test", &c), RESOLVER_FAILED);
    assert_true(recs[0].queries >= 1);
    fixture_stop(&f);
}

/* A nameserver that never answers: RESOLVER_FAILED once evdns gives up. */
static void test_timeout(void **state)
{
    struct dns_rec recs[] = {{"silent.test", DNS_SILENT, NULL, 0, 0, QTYPE_A}};
    struct fixture f;
    struct answer a = {0};

    write_hosts("");
    fixture_start(&f, recs, 1);
    assert_int_equal(lookup(&f, "silent.test", &a), RESOLVER_FAILED);
    assert_true(recs[0].queries >= 1);
    fixture_stop(&f);
}

/* A cancelled waiter is never called (twice cancelled is harmless); the
 * others are; the answer is cached for the next lookup even when every
 * waiter went away. */
static void test_cancel(void **state)
{
    struct dns_rec recs[] = {{"one.test", DNS_A, "127.0.0.10", 60, 0, QTYPE_A},
                             {"two.test", DNS_A, "127.0.0.11", 60, 0, QTYPE_A}};
    struct fixture f;
    struct answer gone = {0}, stays = {0}, alone = {0}, later = {0};

    write_hosts("");
    fixture_start(&f, recs, 2);
    gone.base = stays.base = alone.base = f.base;
    assert_int_equal(resolver_lookup(f.rs, "one.test", &gone.wt, on_answer, &gone.addr),
                     RESOLVER_PENDING);
    assert_int_equal(resolver_lookup(f.rs, "one.test", &stays.wt, on_answer, &stays.addr),
                     RESOLVER_PENDING);
    resolver_cancel(&gone.wt);
    resolver_cancel(&gone.wt);
    run_until_answer(&f);
    assert_int_equal(stays.calls, 1);
    assert_int_equal(gone.calls, 0);

    assert_int_equal(resolver_lookup(f.rs, "two.test", &alone.wt, on_answer, &alone.addr),
                     RESOLVER_PENDING);
    resolver_cancel(&alone.wt);
    run_ms(f.base, 200);
    assert_int_equal(recs[1].queries, 1);
    assert_int_equal(alone.calls, 0);
    assert_int_equal(resolver_lookup(f.rs, "two.test", &later.wt, on_answer, &later.addr),
                     RESOLVER_OK);
    assert_ip(&later.addr, "127.0.0.11");
    assert_int_equal(recs[1].queries, 1);
    fixture_stop(&f);
}

/* resolver_free drops a lookup still waiting for DNS without calling it. */
static void test_free_with_pending(void **state)
{
    struct dns_rec recs[] = {{"slow.test", DNS_SILENT, NULL, 0, 0, QTYPE_A}};
    struct fixture f;
    struct answer a = {0};

    write_hosts("");
    fixture_start(&f, recs, 1);
    a.base = f.base;
    assert_int_equal(resolver_lookup(f.rs, "slow.test", &a.wt, on_answer, &a.addr),
                     RESOLVER_PENDING);
    run_ms(f.base, 50);
    resolver_free(f.rs);
    f.rs = NULL;
    run_ms(f.base, 50);
    assert_int_equal(a.calls, 0);
    fixture_stop(&f);
}

/* An answer with TTL 1 s is served from the cache for that second, then
 * asked again. A new address, or the name gone, calls `moved` with the old
 * one; the same address again, or a failure, does not. */
static void test_ttl_and_moved(void **state)
{
    struct dns_rec recs[] = {{"mvp.test", DNS_A, "127.0.0.20", 1, 0, QTYPE_A}};
    struct fixture f;
    struct answer a = {0};

    write_hosts("");
    fixture_start(&f, recs, 1);
    assert_int_equal(lookup(&f, "mvp.test", &a), RESOLVER_OK);
    memset(&a, 0, sizeof(a));
    assert_int_equal(lookup(&f, "mvp.test", &a), RESOLVER_OK);
    assert_int_equal(recs[0].queries, 1);

    /* Expired, same address: asked again, nothing moved. */
    run_ms(f.base, RESOLVER_MIN_TTL_MS + 100);
    memset(&a, 0, sizeof(a));
    assert_int_equal(lookup(&f, "mvp.test", &a), RESOLVER_OK);
    assert_int_equal(a.calls, 1);
    assert_int_equal(recs[0].queries, 2);
    assert_int_equal(f.moves.calls, 0);

    /* A failure keeps the old address for comparison: not a move. */
    recs[0].kind = DNS_SERVFAIL;
    run_ms(f.base, RESOLVER_MIN_TTL_MS + 100);
    memset(&a, 0, sizeof(a));
    assert_int_equal(lookup(&f, "mvp.test", &a), RESOLVER_FAILED);
    assert_int_equal(f.moves.calls, 0);

    recs[0].kind = DNS_A;
    recs[0].ip = "127.0.0.21";
    run_ms(f.base, RESOLVER_FAILED_TTL_MS + 100);
    memset(&a, 0, sizeof(a));
    assert_int_equal(lookup(&f, "mvp.test", &a), RESOLVER_OK);
    assert_ip(&a.addr, "127.0.0.21");
    assert_int_equal(f.moves.calls, 1);
    assert_ip(&f.moves.old, "127.0.0.20");

    recs[0].kind = DNS_NXDOMAIN;
    run_ms(f.base, RESOLVER_MIN_TTL_MS + 100);
    memset(&a, 0, sizeof(a));
    assert_int_equal(lookup(&f, "mvp.test", &a), RESOLVER_NOT_FOUND);
    assert_int_equal(f.moves.calls, 2);
    assert_ip(&f.moves.old, "127.0.0.21");
    fixture_stop(&f);
}

/* A name with only an AAAA record resolves to its IPv6 address (the A
 * query finding no record); so does a hosts file line with one. */
static void test_aaaa_only(void **state)
{
    struct dns_rec recs[] = {{"six.test", DNS_A, "2001:db8::6", 60, 0, QTYPE_AAAA}};
    struct fixture f;
    struct answer a = {0}, b = {0};
    struct resolver_answer all;

    write_hosts("::1 v6.test\n");
    fixture_start(&f, recs, 1);
    assert_int_equal(lookup(&f, "six.test", &a), RESOLVER_OK);
    assert_ip6(&a.addr, "2001:db8::6");
    assert_int_equal(lookup_all(&f, "six.test", &b, &all), RESOLVER_OK);
    assert_int_equal(all.naddrs, 1);
    assert_ip6(&all.addrs[0], "2001:db8::6");
    assert_int_equal(f.dns.queries, 1);
    assert_int_equal(f.dns.queries6, 1);

    assert_int_equal(resolver_lookup_all(f.rs, "v6.test", &b.wt, on_answer, 0, &all), RESOLVER_OK);
    assert_int_equal(all.naddrs, 1);
    assert_ip6(&all.addrs[0], "::1");
    assert_int_equal(f.dns.queries6, 1);
    fixture_stop(&f);
}

/* A and AAAA records: both addresses, A first, cached for the smaller TTL
 * (30 s: refreshed when asked 31 s ahead, not 20 s ahead). */
static void test_a_and_aaaa(void **state)
{
    struct dns_rec recs[] = {{"both.test", DNS_A, "127.0.0.30", 60, 0, QTYPE_A},
                             {"both.test", DNS_A, "2001:db8::30", 30, 0, QTYPE_AAAA}};
    struct fixture f;
    struct answer a = {0}, b = {0};
    struct resolver_answer all;

    write_hosts("");
    fixture_start(&f, recs, 2);
    assert_int_equal(lookup(&f, "both.test", &a), RESOLVER_OK);
    assert_ip(&a.addr, "127.0.0.30");
    assert_int_equal(resolver_lookup_all(f.rs, "both.test", &b.wt, on_answer, 20000, &all),
                     RESOLVER_OK);
    assert_int_equal(all.naddrs, 2);
    assert_ip(&all.addrs[0], "127.0.0.30");
    assert_ip6(&all.addrs[1], "2001:db8::30");
    assert_int_equal(recs[0].queries, 1);
    assert_int_equal(recs[1].queries, 1);

    b.base = f.base;
    assert_int_equal(resolver_lookup_all(f.rs, "both.test", &b.wt, on_answer, 31000, &all),
                     RESOLVER_PENDING);
    run_until_answer(&f);
    assert_int_equal(b.st, RESOLVER_OK);
    assert_int_equal(recs[0].queries, 2);
    assert_int_equal(recs[1].queries, 2);
    fixture_stop(&f);
}

/* A failure of one query with addresses from the other is a success, with
 * the other's TTL; a failure with NXDOMAIN from the other is a failure. */
static void test_aaaa_servfail(void **state)
{
    struct dns_rec recs[] = {{"half.test", DNS_A, "127.0.0.31", 60, 0, QTYPE_A},
                             {"half.test", DNS_SERVFAIL, NULL, 0, 0, QTYPE_AAAA},
                             {"odd.test", DNS_NXDOMAIN, NULL, 0, 0, QTYPE_A},
                             {"odd.test", DNS_SERVFAIL, NULL, 0, 0, QTYPE_AAAA}};
    struct fixture f;
    struct answer a = {0}, b = {0}, c = {0};
    struct resolver_answer all;

    write_hosts("");
    fixture_start(&f, recs, 4);
    assert_int_equal(lookup_all(&f, "half.test", &a, &all), RESOLVER_OK);
    assert_int_equal(all.naddrs, 1);
    assert_ip(&all.addrs[0], "127.0.0.31");
    assert_true(recs[1].queries >= 1);
    assert_int_equal(resolver_lookup_all(f.rs, "half.test", &b.wt, on_answer, 50000, &all),
                     RESOLVER_OK);
    assert_int_equal(recs[0].queries, 1);

    assert_int_equal(lookup(&f, "odd.test", &c), RESOLVER_FAILED);
    fixture_stop(&f);
}

/* NXDOMAIN for both queries: not found, remembered. */
static void test_nxdomain_both(void **state)
{
    struct fixture f;
    struct answer a = {0}, b = {0};

    write_hosts("");
    fixture_start(&f, NULL, 0);
    assert_int_equal(lookup(&f, "nowhere.test", &a), RESOLVER_NOT_FOUND);
    assert_int_equal(f.dns.queries, 1);
    assert_int_equal(f.dns.queries6, 1);
    assert_int_equal(resolver_lookup(f.rs, "nowhere.test", &b.wt, on_answer, &b.addr),
                     RESOLVER_NOT_FOUND);
    assert_int_equal(f.dns.queries6, 1);
    fixture_stop(&f);
}

static void test_status_str(void **state)
{
    assert_string_equal(resolver_status_str(RESOLVER_OK), "ok");
    assert_string_equal(resolver_status_str(RESOLVER_NOT_FOUND), "not_found");
    assert_string_equal(resolver_status_str(RESOLVER_FAILED), "failed");
    assert_string_equal(resolver_status_str(RESOLVER_PENDING), "pending");
}

static int setup(void **state)
{
    snprintf(dir, sizeof(dir), "%s/fg-test-resolver-XXXXXX",
             getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
    if (mkdtemp(dir) == NULL)
        return -1;
    snprintf(hosts_path, sizeof(hosts_path), "%s/hosts", dir);
    return 0;
}

static int teardown(void **state)
{
    unlink(hosts_path);
    return rmdir(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_hosts_file),
        cmocka_unit_test(test_dns_answer_cached),
        cmocka_unit_test(test_concurrent_lookups_one_query),
        cmocka_unit_test(test_not_found_and_servfail),
        cmocka_unit_test(test_timeout),
        cmocka_unit_test(test_cancel),
        cmocka_unit_test(test_free_with_pending),
        cmocka_unit_test(test_ttl_and_moved),
        cmocka_unit_test(test_aaaa_only),
        cmocka_unit_test(test_a_and_aaaa),
        cmocka_unit_test(test_aaaa_servfail),
        cmocka_unit_test(test_nxdomain_both),
        cmocka_unit_test(test_status_str),
    };

    return cmocka_run_group_tests(tests, setup, teardown);
}
