/*
 * test_upstream.c - upstream.c on a real event base against listeners on
 * 127.0.0.0/8 run by the test: keep-alive reuse, idle connections the
 * server closes or writes to, a refused connect, a connect timeout (a
 * listener whose accept queue is full drops the SYN, so the connect hangs),
 * round-robin, passive ejection (max_fails, fail_timeout_ms, the servers a
 * request tried already, every server ejected), preview pools (one per
 * address, forgotten by address, the least recently used evicted), and
 * upstream_fail_str. Every wait is bounded by a guard timer.
 */
#include <errno.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <poll.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <unistd.h>

#include <cmocka.h>
#include <event2/event.h>

#include "upstream.h"
#include "worker.h"

#define GUARD_MS 5000 /* longest wait for anything a test waits for */
#define MAX_CONNS 16

/* A listener on the test's loop that accepts and keeps what it accepted. */
struct server {
    int fd;                  /* listening socket (or bound only) */
    struct sockaddr_in addr; /* where */
    struct event *ev;        /* accepts; NULL when not accepting */
    int conns[MAX_CONNS];    /* accepted sockets, in order, non-blocking */
    int nconns;              /* how many */
};

/* The ready callback's record. */
struct ready {
    int calls;               /* times called */
    enum upstream_fail fail; /* of the last call */
    struct upconn *uc;       /* of the last call */
};

/* A configuration of one upstream, and the worker whose pools it gets. */
struct setup {
    struct event_base *base;
    struct worker w;      /* only id, base and dyn are used */
    struct fg_config cfg; /* only the upstream list */
    struct fg_upstream u;
    struct fg_sockaddr servers[3];
    char text[3][32];            /* the servers' texts */
    struct upstream_pool *pools; /* upstream_pools_new's; NULL for preview tests */
};

/* ---- loop ------------------------------------------------------------------ */

struct waiter {
    struct event_base *base;
    bool (*cond)(const void *arg);
    const void *arg;
    bool expired;
};

static void on_poll(evutil_socket_t fd, short what, void *arg)
{
    struct waiter *w = arg;

    if (w->cond(w->arg))
        event_base_loopbreak(w->base);
}

static void on_guard(evutil_socket_t fd, short what, void *arg)
{
    struct waiter *w = arg;

    w->expired = true;
    event_base_loopbreak(w->base);
}

/* Run BASE until COND(ARG) holds (looked at every 2 ms); fail after GUARD_MS. */
static void run_until(struct event_base *base, bool (*cond)(const void *), const void *arg)
{
    struct waiter w = {base, cond, arg, false};
    struct event *poll = event_new(base, -1, EV_PERSIST, on_poll, &w);
    struct event *guard = evtimer_new(base, on_guard, &w);
    struct timeval every = {0, 2000}, limit = {GUARD_MS / 1000, 0};

    assert_non_null(poll);
    assert_non_null(guard);
    event_add(poll, &every);
    evtimer_add(guard, &limit);
    if (!cond(arg))
        event_base_dispatch(base);
    event_free(poll);
    event_free(guard);
    if (w.expired)
        fail_msg("the awaited condition did not come within %d ms", GUARD_MS);
}

/* Run BASE for MS: room for anything that should not happen to happen. */
static void run_ms(struct event_base *base, uint32_t ms)
{
    struct timeval tv = {(time_t)(ms / 1000), (suseconds_t)(ms % 1000) * 1000};

    event_base_loopexit(base, &tv);
    event_base_dispatch(base);
}

static bool ready_called(const void *arg)
{
    return ((const struct ready *)arg)->calls > 0;
}

static bool pool_empty(const void *arg)
{
    return ((const struct upstream_pool *)arg)->nidle == 0;
}

/* ---- servers ------------------------------------------------------------------- */

static void on_accept(evutil_socket_t fd, short what, void *arg)
{
    struct server *s = arg;
    int c;

    while ((c = accept4(fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC)) >= 0) {
        assert_true(s->nconns < MAX_CONNS);
        s->conns[s->nconns++] = c;
    }
}

/* A socket bound to IP on a free port: listening with BACKLOG and accepting
 * from BASE when BASE is given, bound only (connects refused) when not. */
static void server_start(struct server *s, struct event_base *base, const char *ip, int backlog)
{
    socklen_t len = sizeof(s->addr);

    memset(s, 0, sizeof(*s));
    s->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    assert_true(s->fd >= 0);
    s->addr.sin_family = AF_INET;
    assert_int_equal(inet_pton(AF_INET, ip, &s->addr.sin_addr), 1);
    assert_int_equal(bind(s->fd, (struct sockaddr *)&s->addr, sizeof(s->addr)), 0);
    assert_int_equal(getsockname(s->fd, (struct sockaddr *)&s->addr, &len), 0);
    if (backlog < 0)
        return;
    assert_int_equal(listen(s->fd, backlog), 0);
    if (base) {
        s->ev = event_new(base, s->fd, EV_READ | EV_PERSIST, on_accept, s);
        event_add(s->ev, NULL);
    }
}

static void server_stop(struct server *s)
{
    for (int i = 0; i < s->nconns; i++)
        close(s->conns[i]);
    if (s->ev)
        event_free(s->ev);
    close(s->fd);
}

static bool has_conn(const void *arg)
{
    return ((const struct server *)arg)->nconns > 0;
}

/* Wait up to MS for the server's connection I to be readable. */
static bool server_readable(const struct server *s, int i, int ms)
{
    struct pollfd pfd = {s->conns[i], POLLIN, 0};

    return poll(&pfd, 1, ms) == 1;
}

/* The server's connection I receives WANT (the client wrote it already). */
static void server_expect(const struct server *s, int i, const char *want)
{
    char buf[64];
    size_t n = strlen(want), got = 0;

    while (got < n && server_readable(s, i, GUARD_MS)) {
        ssize_t r = read(s->conns[i], buf + got, n - got);
        if (r <= 0)
            break;
        got += (size_t)r;
    }
    assert_int_equal(got, n);
    assert_memory_equal(buf, want, n);
}

/* Has the client closed the server's connection I (EOF, or a reset)? The
 * close itself happened already: the wait is only for the kernel. */
static bool server_sees_close(const struct server *s, int i)
{
    char c;

    if (!server_readable(s, i, 100))
        return false;
    return read(s->conns[i], &c, 1) <= 0;
}

/* ---- pools ---------------------------------------------------------------------- */

static void setup_init(struct setup *st)
{
    memset(st, 0, sizeof(*st));
    st->base = event_base_new();
    assert_non_null(st->base);
    st->w.id = 0;
    st->w.base = st->base;
}

/* The pools of one upstream over SERVERS (started), with KEEPALIVE idle
 * connections. */
static void setup_pools(struct setup *st, struct server *const *servers, size_t n,
                        uint32_t keepalive, uint32_t connect_ms)
{
    for (size_t i = 0; i < n; i++) {
        memcpy(&st->servers[i].ss, &servers[i]->addr, sizeof(servers[i]->addr));
        st->servers[i].len = sizeof(struct sockaddr_in);
        snprintf(st->text[i], sizeof(st->text[i]), "127.0.0.1:%d",
                 ntohs(servers[i]->addr.sin_port));
        st->servers[i].text = st->text[i];
    }
    st->u.name = "app";
    st->u.servers = st->servers;
    st->u.nservers = n;
    st->u.connect_timeout_ms = connect_ms;
    st->u.read_timeout_ms = 1000;
    st->u.keepalive = keepalive;
    st->u.max_tries = 2;
    st->u.max_fails = 3;
    st->u.fail_timeout_ms = 10000;
    st->cfg.upstreams = &st->u;
    st->cfg.nupstreams = 1;
    st->pools = upstream_pools_new(&st->w, &st->cfg);
    assert_non_null(st->pools);
}

static void setup_free(struct setup *st)
{
    if (st->pools)
        upstream_pools_destroy(st->pools, 1);
    upstream_pools_free(&st->w);
    event_base_free(st->base);
}

static void on_ready(struct upconn *uc, enum upstream_fail fail, void *arg)
{
    struct ready *r = arg;

    r->calls++;
    r->fail = fail;
    r->uc = uc;
}

/* A new connection from POOL, its connect awaited: FAIL as the ready
 * callback reported it. */
static struct upconn *connect_new(struct upstream_pool *pool, struct event_base *base,
                                  enum upstream_fail fail)
{
    struct ready r = {0};
    bool ready = true;
    uint64_t tried = 0;
    struct upconn *uc = upstream_get(pool, on_ready, &r, false, &tried, &ready);

    assert_non_null(uc);
    assert_true(tried == (uint64_t)1 << uc->server);
    assert_false(ready);
    assert_int_equal(uc->state, UPCONN_CONNECTING);
    run_until(base, ready_called, &r);
    assert_int_equal(r.calls, 1);
    assert_ptr_equal(r.uc, uc);
    assert_int_equal(r.fail, fail);
    return uc;
}

/* Send TEXT on UC; the server's connection I receives it. */
static void exchange(struct upconn *uc, const struct server *s, int i, const char *text)
{
    evbuffer_add(uc->io->out, text, strlen(text));
    io_flush(uc->io);
    server_expect(s, i, text);
}

/* ---- tests ------------------------------------------------------------------------ */

static void test_fail_str(void **state)
{
    assert_string_equal(upstream_fail_str(UP_FAIL_NONE), "none");
    assert_string_equal(upstream_fail_str(UP_FAIL_REFUSED), "refused");
    assert_string_equal(upstream_fail_str(UP_FAIL_CONNECT_TIMEOUT), "connect timeout");
    assert_string_equal(upstream_fail_str(UP_FAIL_ERROR), "error");
    assert_string_equal(upstream_fail_str(UP_FAIL_CLOSED), "closed");
    assert_string_equal(upstream_fail_str(UP_FAIL_BAD_RESPONSE), "bad response");
    assert_string_equal(upstream_fail_str(UP_FAIL_READ_TIMEOUT), "read timeout");
    assert_string_equal(upstream_fail_str(UP_FAIL_DNS), "dns");
    assert_string_equal(upstream_fail_str((enum upstream_fail)99), "?");
}

/* A connection released with keep goes to the pool, and the next
 * upstream_get hands that same connection out at once (no connect, no
 * callback), marked reused; without allow_pooled a new one is made. */
static void test_keepalive_reuse(void **state)
{
    struct server srv;
    struct server *list[] = {&srv};
    struct setup st;
    struct ready r = {0};
    bool ready = false;
    uint64_t tried = 0;

    setup_init(&st);
    server_start(&srv, st.base, "127.0.0.1", 16);
    setup_pools(&st, list, 1, 4, 1000);
    struct upstream_pool *pool = &st.pools[0];
    struct upconn *uc = connect_new(pool, st.base, UP_FAIL_NONE);
    assert_int_equal(uc->state, UPCONN_ACTIVE);
    assert_false(uc->reused);
    run_until(st.base, has_conn, &srv);
    exchange(uc, &srv, 0, "first");

    upstream_release(uc, true);
    assert_int_equal(uc->state, UPCONN_IDLE);
    assert_int_equal(pool->nidle, 1);
    run_ms(st.base, 30); /* an idle connection nobody touches stays */
    assert_int_equal(pool->nidle, 1);

    struct upconn *again = upstream_get(pool, on_ready, &r, true, &tried, &ready);
    assert_true(ready);
    assert_ptr_equal(again, uc);
    assert_true(again->reused);
    assert_int_equal(again->state, UPCONN_ACTIVE);
    assert_int_equal(pool->nidle, 0);
    exchange(again, &srv, 0, "second");
    run_ms(st.base, 30);
    assert_int_equal(r.calls, 0);
    assert_int_equal(srv.nconns, 1);

    struct upconn *other = upstream_get(pool, on_ready, &r, false, &tried, &ready);
    assert_false(ready);
    assert_ptr_not_equal(other, again);
    run_until(st.base, ready_called, &r);
    assert_int_equal(r.fail, UP_FAIL_NONE);
    run_ms(st.base, 30);
    assert_int_equal(srv.nconns, 2);

    /* Released without keep: closed, not pooled. */
    upstream_release(other, false);
    assert_int_equal(pool->nidle, 0);
    assert_true(server_sees_close(&srv, 1));
    upstream_release(again, true);
    assert_int_equal(pool->nidle, 1);
    setup_free(&st);
    assert_true(server_sees_close(&srv, 0)); /* destroying the pools closed it */
    server_stop(&srv);
}

/* The pool keeps at most `keepalive` idle connections, and a retired pool
 * (its snapshot replaced) keeps none. */
static void test_keepalive_bounds(void **state)
{
    struct server srv;
    struct server *list[] = {&srv};
    struct setup st;

    setup_init(&st);
    server_start(&srv, st.base, "127.0.0.1", 16);
    setup_pools(&st, list, 1, 1, 1000);
    struct upstream_pool *pool = &st.pools[0];
    struct upconn *a = connect_new(pool, st.base, UP_FAIL_NONE);
    struct upconn *b = connect_new(pool, st.base, UP_FAIL_NONE);
    upstream_release(a, true);
    upstream_release(b, true);
    assert_int_equal(pool->nidle, 1);
    assert_ptr_equal(pool->servers[0].idle, a);

    struct upconn *c = connect_new(pool, st.base, UP_FAIL_NONE);
    upstream_pools_retire(st.pools, 1);
    assert_int_equal(pool->nidle, 0); /* a closed by the retirement */
    upstream_release(c, true);
    assert_int_equal(pool->nidle, 0);
    setup_free(&st);
    server_stop(&srv);
}

/* A pooled connection, like a new one, goes to the server round-robin
 * chooses, never to an ejected one: the server is chosen first, then an
 * idle connection to it is reused. */
static void test_pooled_per_server(void **state)
{
    struct server s0, s1;
    struct server *list[] = {&s0, &s1};
    struct setup st;
    struct ready r = {0};
    bool ready = false;

    setup_init(&st);
    server_start(&s0, st.base, "127.0.0.1", 16);
    server_start(&s1, st.base, "127.0.0.1", 16);
    setup_pools(&st, list, 2, 4, 1000);
    struct upstream_pool *pool = &st.pools[0];
    struct upconn *a = connect_new(pool, st.base, UP_FAIL_NONE);
    struct upconn *b = connect_new(pool, st.base, UP_FAIL_NONE);
    assert_int_not_equal(a->server, b->server);
    upstream_release(a, true);
    upstream_release(b, true);
    assert_int_equal(pool->servers[a->server].nidle, 1);
    assert_int_equal(pool->servers[b->server].nidle, 1);

    /* Taken and given back one at a time: the servers still alternate
     * (a last-in-first-out pool would hand out the same one twice). */
    for (int i = 0; i < 4; i++) {
        uint64_t tried = 0;
        struct upconn *x = upstream_get(pool, on_ready, &r, true, &tried, &ready);
        assert_true(ready);
        assert_true(x == a || x == b);
        assert_ptr_equal(x, i % 2 == 0 ? a : b);
        upstream_release(x, true);
    }

    /* A's server ejected, its connection on top of the pool: only B's
     * server is handed out, reused. */
    uint64_t tried = 0;
    struct upconn *x = upstream_get(pool, on_ready, &r, true, &tried, &ready);
    assert_ptr_equal(x, a);
    for (uint32_t i = 0; i < pool->u->max_fails; i++)
        upstream_server_failed(a);
    upstream_release(a, true);
    for (int i = 0; i < 3; i++) {
        tried = 0;
        x = upstream_get(pool, on_ready, &r, true, &tried, &ready);
        assert_true(ready);
        assert_ptr_equal(x, b);
        upstream_release(x, true);
    }
    assert_int_equal(pool->servers[a->server].nidle, 1);
    assert_int_equal(r.calls, 0);
    setup_free(&st);
    server_stop(&s0);
    server_stop(&s1);
}

/* An idle connection the server closes, or writes to unasked, leaves the
 * pool by itself: the next upstream_get connects anew. */
static void test_idle_closed_by_server(void **state)
{
    struct server srv;
    struct server *list[] = {&srv};
    struct setup st;
    struct ready r = {0};
    bool ready = true;
    uint64_t tried = 0;

    setup_init(&st);
    server_start(&srv, st.base, "127.0.0.1", 16);
    setup_pools(&st, list, 1, 4, 1000);
    struct upstream_pool *pool = &st.pools[0];
    upstream_release(connect_new(pool, st.base, UP_FAIL_NONE), true);
    run_until(st.base, has_conn, &srv);
    assert_int_equal(pool->nidle, 1);
    close(srv.conns[0]);
    srv.conns[0] = -1;
    run_until(st.base, pool_empty, pool);

    upstream_release(connect_new(pool, st.base, UP_FAIL_NONE), true);
    run_ms(st.base, 30);
    assert_int_equal(srv.nconns, 2);
    assert_int_equal(pool->nidle, 1);
    assert_int_equal(write(srv.conns[1], "HTTP/1.1 408", 12), 12);
    run_until(st.base, pool_empty, pool);
    assert_true(server_sees_close(&srv, 1));

    struct upconn *uc = upstream_get(pool, on_ready, &r, true, &tried, &ready);
    assert_false(ready);
    run_until(st.base, ready_called, &r);
    assert_int_equal(r.fail, UP_FAIL_NONE);
    upstream_close(uc);
    setup_free(&st);
    server_stop(&srv);
}

/* A port where nothing listens: UP_FAIL_REFUSED through the ready callback
 * (from the loop), counted as one failure of the server; at max_fails
 * consecutive ones it is ejected for fail_timeout_ms. */
static void test_refused(void **state)
{
    struct server closed;
    struct server *list[] = {&closed};
    struct setup st;

    setup_init(&st);
    server_start(&closed, NULL, "127.0.0.1", -1);
    setup_pools(&st, list, 1, 4, 1000);
    st.u.max_fails = 2;
    struct upstream_server_state *s = &st.pools[0].servers[0];
    upstream_close(connect_new(&st.pools[0], st.base, UP_FAIL_REFUSED));
    assert_int_equal(s->fails, 1);
    assert_true(s->down_until_ms == 0);
    uint64_t before = upstream_now_ms();
    upstream_close(connect_new(&st.pools[0], st.base, UP_FAIL_REFUSED));
    assert_int_equal(s->fails, 2);
    assert_true(s->down_until_ms >= before + st.u.fail_timeout_ms);
    setup_free(&st);
    server_stop(&closed);
}

/* A listener whose accept queue is full drops new SYNs: the connect hangs
 * and connect_timeout_ms ends it with UP_FAIL_CONNECT_TIMEOUT, one failure
 * of the server. */
static void test_connect_timeout(void **state)
{
    struct server full;
    struct server *list[] = {&full};
    struct setup st;

    setup_init(&st);
    server_start(&full, NULL, "127.0.0.1", 0); /* not accepting: one connection fills it */
    int filler = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_int_equal(connect(filler, (struct sockaddr *)&full.addr, sizeof(full.addr)), 0);
    setup_pools(&st, list, 1, 4, 200);

    struct upconn *uc = connect_new(&st.pools[0], st.base, UP_FAIL_CONNECT_TIMEOUT);
    assert_int_equal(uc->state, UPCONN_CONNECTING);
    assert_int_equal(st.pools[0].servers[0].fails, 1);
    assert_true(st.pools[0].servers[0].down_until_ms == 0); /* max_fails is 3 */
    upstream_close(uc);
    close(filler);
    setup_free(&st);
    server_stop(&full);
}

/* New connections alternate between two servers; an ejected server is
 * skipped while any other is not, and tried when all are. */
static void test_round_robin(void **state)
{
    struct server a, b;
    struct server *list[] = {&a, &b};
    struct setup st;
    struct upconn *uc[4];

    setup_init(&st);
    server_start(&a, st.base, "127.0.0.1", 16);
    server_start(&b, st.base, "127.0.0.1", 16);
    setup_pools(&st, list, 2, 0, 1000);
    st.u.max_fails = 1;
    struct upstream_pool *pool = &st.pools[0];
    for (int i = 0; i < 4; i++) {
        uc[i] = connect_new(pool, st.base, UP_FAIL_NONE);
        assert_int_equal(uc[i]->server, (size_t)(i % 2));
        assert_string_equal(upstream_server_text(uc[i]), st.text[i % 2]);
    }
    run_ms(st.base, 30);
    assert_int_equal(a.nconns, 2);
    assert_int_equal(b.nconns, 2);

    upstream_server_failed(uc[0]);
    for (int i = 0; i < 4; i++)
        upstream_close(uc[i]);
    for (int i = 0; i < 3; i++) {
        uc[i] = connect_new(pool, st.base, UP_FAIL_NONE);
        assert_int_equal(uc[i]->server, 1);
    }
    upstream_server_failed(uc[0]);
    uc[3] = connect_new(pool, st.base, UP_FAIL_NONE); /* both ejected: tried anyway */
    for (int i = 0; i < 4; i++)
        upstream_close(uc[i]);
    setup_free(&st);
    server_stop(&a);
    server_stop(&b);
}

/* A server that refuses max_fails times in a row is skipped by the next
 * requests (no connect reaches it: the other one gets them all), until
 * fail_timeout_ms has passed; then it is tried again, and its first
 * failure ejects it at once. */
static void test_refused_server_ejected(void **state)
{
    struct server closed, up;
    struct server *list[] = {&closed, &up};
    struct setup st;

    setup_init(&st);
    server_start(&closed, NULL, "127.0.0.1", -1);
    server_start(&up, st.base, "127.0.0.1", 16);
    setup_pools(&st, list, 2, 0, 1000);
    st.u.max_fails = 2;
    st.u.fail_timeout_ms = 300;
    struct upstream_pool *pool = &st.pools[0];
    upstream_close(connect_new(pool, st.base, UP_FAIL_REFUSED)); /* 1 of 2: stays */
    upstream_close(connect_new(pool, st.base, UP_FAIL_NONE));
    upstream_close(connect_new(pool, st.base, UP_FAIL_REFUSED)); /* 2 of 2: ejected */
    for (int i = 0; i < 4; i++) {
        struct upconn *uc = connect_new(pool, st.base, UP_FAIL_NONE);
        assert_int_equal(uc->server, 1);
        upstream_close(uc);
    }
    run_ms(st.base, 400);
    pool->next = 0; /* its turn: back, and failing again */
    struct upconn *uc = connect_new(pool, st.base, UP_FAIL_REFUSED);
    assert_int_equal(uc->server, 0);
    upstream_close(uc);
    for (int i = 0; i < 2; i++) {
        uc = connect_new(pool, st.base, UP_FAIL_NONE);
        assert_int_equal(uc->server, 1);
        upstream_close(uc);
    }
    setup_free(&st);
    server_stop(&closed);
    server_stop(&up);
}

/* A response resets a server's failures and ends its ejection; with
 * max_fails 0 no number of failures ejects it. */
static void test_ok_resets_and_max_fails_zero(void **state)
{
    struct server a, b;
    struct server *list[] = {&a, &b};
    struct setup st;

    setup_init(&st);
    server_start(&a, st.base, "127.0.0.1", 16);
    server_start(&b, st.base, "127.0.0.1", 16);
    setup_pools(&st, list, 2, 0, 1000);
    st.u.max_fails = 2;
    struct upstream_server_state *s = &st.pools[0].servers[0];
    struct upconn *uc = connect_new(&st.pools[0], st.base, UP_FAIL_NONE);
    assert_int_equal(uc->server, 0);
    upstream_server_failed(uc);
    upstream_server_ok(uc);
    upstream_server_failed(uc); /* not two in a row */
    assert_int_equal(s->fails, 1);
    assert_true(s->down_until_ms == 0);
    upstream_server_failed(uc);
    assert_true(s->down_until_ms > upstream_now_ms());
    upstream_server_ok(uc);
    assert_int_equal(s->fails, 0);
    assert_true(s->down_until_ms == 0);

    st.u.max_fails = 0;
    for (int i = 0; i < 100; i++)
        upstream_server_failed(uc);
    assert_true(s->down_until_ms == 0);
    upstream_close(uc);
    setup_free(&st);
    server_stop(&a);
    server_stop(&b);
}

/* A request's next try skips the servers it tried already, even when the
 * round-robin cursor points at one; with all three ejected, the one
 * ejected longest ago (the nearest to its return) is tried; once every
 * server was tried, plain round-robin. */
static void test_tried_and_all_ejected(void **state)
{
    struct server a, b, c;
    struct server *list[] = {&a, &b, &c};
    struct setup st;
    struct ready r = {0};
    bool ready;

    setup_init(&st);
    server_start(&a, st.base, "127.0.0.1", 16);
    server_start(&b, st.base, "127.0.0.1", 16);
    server_start(&c, st.base, "127.0.0.1", 16);
    setup_pools(&st, list, 3, 0, 1000);
    struct upstream_pool *pool = &st.pools[0];
    uint64_t tried = 1u << 0 | 1u << 1; /* a and b tried by this request */
    pool->next = 0;
    struct upconn *uc = upstream_get(pool, on_ready, &r, false, &tried, &ready);
    assert_int_equal(uc->server, 2);
    assert_true(tried == 7);
    upstream_close(uc);
    uc = upstream_get(pool, on_ready, &r, false, &tried, &ready); /* every one tried */
    assert_non_null(uc);
    upstream_close(uc);

    /* Ejected for 3 s, 1 s and 2 s: b returns first. */
    st.u.max_fails = 1;
    struct upconn *ucs[3];
    for (int i = 0; i < 3; i++) {
        pool->next = (size_t)i;
        ucs[i] = connect_new(pool, st.base, UP_FAIL_NONE);
        assert_int_equal(ucs[i]->server, (size_t)i);
    }
    st.u.fail_timeout_ms = 3000;
    upstream_server_failed(ucs[0]);
    st.u.fail_timeout_ms = 1000;
    upstream_server_failed(ucs[1]);
    st.u.fail_timeout_ms = 2000;
    upstream_server_failed(ucs[2]);
    for (int i = 0; i < 3; i++) {
        upstream_close(ucs[i]);
        uc = connect_new(pool, st.base, UP_FAIL_NONE);
        assert_int_equal(uc->server, 1);
        upstream_close(uc);
    }
    /* b tried by this request already: c, the next nearest. */
    tried = 1u << 1;
    uc = upstream_get(pool, on_ready, &r, false, &tried, &ready);
    assert_int_equal(uc->server, 2);
    upstream_close(uc);
    setup_free(&st);
    server_stop(&a);
    server_stop(&b);
    server_stop(&c);
}

static struct sockaddr_storage storage_of(const struct server *s, uint16_t port)
{
    struct sockaddr_storage ss;
    struct sockaddr_in *s4 = (struct sockaddr_in *)&ss;

    memset(&ss, 0, sizeof(ss));
    *s4 = s->addr;
    if (port != 0xffff)
        s4->sin_port = htons(port);
    return ss;
}

/* Preview pools: one per address and port, found again by it; forgetting an
 * address closes the idle connections of every port there and no other;
 * a pool forgotten while a connection uses it lives until that one ends. */
static void test_preview_pools(void **state)
{
    struct server a1, a2, b;
    struct setup st;

    setup_init(&st);
    server_start(&a1, st.base, "127.0.0.1", 16);
    server_start(&a2, st.base, "127.0.0.1", 16);
    server_start(&b, st.base, "127.0.0.2", 16);
    struct sockaddr_storage sa1 = storage_of(&a1, 0xffff), sa2 = storage_of(&a2, 0xffff),
                            sb = storage_of(&b, 0xffff), a_any = storage_of(&a1, 0);

    struct upstream_pool *p1 = upstream_preview_pool(&st.w, &sa1);
    struct upstream_pool *p2 = upstream_preview_pool(&st.w, &sa2);
    struct upstream_pool *pb = upstream_preview_pool(&st.w, &sb);
    assert_non_null(p1);
    assert_non_null(p2);
    assert_non_null(pb);
    assert_ptr_equal(upstream_preview_pool(&st.w, &sa1), p1);
    assert_ptr_not_equal(p1, p2);
    assert_ptr_not_equal(p1, pb);

    struct upconn *c1 = connect_new(p1, st.base, UP_FAIL_NONE);
    char text[32];
    snprintf(text, sizeof(text), "127.0.0.1:%d", ntohs(a1.addr.sin_port));
    assert_string_equal(upstream_server_text(c1), text);
    upstream_release(c1, true);
    upstream_release(connect_new(p2, st.base, UP_FAIL_NONE), true);
    upstream_release(connect_new(pb, st.base, UP_FAIL_NONE), true);
    struct upconn *held = connect_new(pb, st.base, UP_FAIL_NONE);
    run_ms(st.base, 30);
    assert_int_equal(a1.nconns + a2.nconns + b.nconns, 4);
    assert_int_equal(p1->nidle + p2->nidle + pb->nidle, 3);

    /* Every port of 127.0.0.1 goes; 127.0.0.2 stays. */
    upstream_preview_forget(&st.w, &a_any);
    assert_true(server_sees_close(&a1, 0));
    assert_true(server_sees_close(&a2, 0));
    assert_int_equal(pb->nidle, 1);
    struct upstream_pool *fresh = upstream_preview_pool(&st.w, &sa1);
    assert_int_equal(fresh->nidle, 0);
    upstream_close(connect_new(fresh, st.base, UP_FAIL_NONE));
    run_ms(st.base, 30);
    assert_int_equal(a1.nconns, 2);

    /* Forgotten while HELD uses it: its idle one closes now, HELD is not
     * pooled when released, and the pool goes with it (ASan watches). */
    upstream_preview_forget(&st.w, &sb);
    assert_true(server_sees_close(&b, 0));
    assert_false(server_sees_close(&b, 1));
    upstream_release(held, true);
    assert_true(server_sees_close(&b, 1));

    setup_free(&st);
    server_stop(&a1);
    server_stop(&a2);
    server_stop(&b);
}

/* The least recently used preview pool is evicted once there are
 * UPSTREAM_PREVIEW_POOLS_MAX: not the first one made, looked up again
 * since, but the second; being held, that one stays valid until let go. */
static void test_preview_pool_eviction(void **state)
{
    struct setup st;
    struct sockaddr_storage ss;
    struct sockaddr_in *s4 = (struct sockaddr_in *)&ss;

    setup_init(&st);
    memset(&ss, 0, sizeof(ss));
    s4->sin_family = AF_INET;
    s4->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    s4->sin_port = htons(1);
    struct upstream_pool *first = upstream_preview_pool(&st.w, &ss);
    s4->sin_port = htons(2);
    struct upstream_pool *second = upstream_preview_pool(&st.w, &ss);
    upstream_pool_hold(second);
    for (int port = 3; port <= UPSTREAM_PREVIEW_POOLS_MAX; port++) {
        s4->sin_port = htons((uint16_t)port);
        assert_non_null(upstream_preview_pool(&st.w, &ss));
    }
    s4->sin_port = htons(1);
    assert_ptr_equal(upstream_preview_pool(&st.w, &ss), first);
    assert_false(second->forgotten);

    s4->sin_port = htons(UPSTREAM_PREVIEW_POOLS_MAX + 1);
    assert_non_null(upstream_preview_pool(&st.w, &ss));
    assert_true(second->forgotten);
    assert_false(first->forgotten);
    upstream_pool_release(second);
    setup_free(&st);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fail_str),         cmocka_unit_test(test_keepalive_reuse),
        cmocka_unit_test(test_keepalive_bounds), cmocka_unit_test(test_pooled_per_server),
        cmocka_unit_test(test_idle_closed_by_server),
        cmocka_unit_test(test_refused),          cmocka_unit_test(test_connect_timeout),
        cmocka_unit_test(test_round_robin),      cmocka_unit_test(test_refused_server_ejected),
        cmocka_unit_test(test_ok_resets_and_max_fails_zero),
        cmocka_unit_test(test_tried_and_all_ejected),
        cmocka_unit_test(test_preview_pools),    cmocka_unit_test(test_preview_pool_eviction),
    };

    signal(SIGPIPE, SIG_IGN);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
