/*
 * test_rl_redis.c - the Redis link's timeouts: how timeouts in a row are
 * counted (rl_timeouts, pure), and a link against a small RESP server in
 * this process, on loopback, that holds its replies on demand: a call past
 * its deadline ends alone, its late reply is dropped and never given to the
 * next call, calls batched together time out as one failure, the link goes
 * down only after RL_DOWN_AFTER_TIMEOUTS in a row, and a stopping link does
 * not wait for replies nobody wants. Runs under ASan: a late reply that
 * touched a freed record would fail here.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmocka.h>
#include <event2/event.h>

#include "rl_redis.h"

#define MS 1000 /* microseconds */

/* ---- rl_timeouts --------------------------------------------------------- */

static void test_timeouts_one_at_a_time(void **state)
{
    struct rl_timeouts t = {0};
    int64_t now = 1000000;

    /* each call made after the previous timeout: each one counts */
    for (int i = 1; i < RL_DOWN_AFTER_TIMEOUTS; i++, now += 60 * MS)
        assert_false(rl_timeouts_add(&t, now - 50 * MS, now));
    assert_true(rl_timeouts_add(&t, now - 50 * MS, now));
}

static void test_timeouts_of_one_silence_count_once(void **state)
{
    struct rl_timeouts t = {0};
    int64_t t0 = 1000000;

    /* a batch of 64 calls made together, then calls pipelined behind it */
    for (int i = 0; i < 64; i++)
        assert_false(rl_timeouts_add(&t, t0, t0 + 50 * MS + i));
    for (int i = 1; i < 50; i++)
        assert_false(rl_timeouts_add(&t, t0 + i * MS, t0 + 50 * MS + i * MS));
    assert_int_equal(t.in_row, 1);
    /* a call made after that timeout waited on a new stretch of silence */
    for (int i = 2; i < RL_DOWN_AFTER_TIMEOUTS; i++)
        assert_false(rl_timeouts_add(&t, t0 + (i - 1) * 50 * MS + 1, t0 + i * 50 * MS + 1));
    assert_true(rl_timeouts_add(&t, t0 + (RL_DOWN_AFTER_TIMEOUTS - 1) * 50 * MS + 1,
                                t0 + RL_DOWN_AFTER_TIMEOUTS * 50 * MS + 1));
}

static void test_timeouts_reset_by_an_answer(void **state)
{
    struct rl_timeouts t = {0};
    int64_t now = 1000000;

    for (int i = 1; i < RL_DOWN_AFTER_TIMEOUTS; i++, now += 60 * MS)
        assert_false(rl_timeouts_add(&t, now - 50 * MS, now));
    rl_timeouts_reset(&t);
    /* after an answer even a call made long ago counts again, from one */
    assert_false(rl_timeouts_add(&t, 0, now));
    assert_int_equal(t.in_row, 1);
}

/* ---- a link against a RESP server that holds replies -------------------- */

#define TIMEOUT_MS 200

/* The server: one client connection at a time (the link's). */
struct fake {
    struct event_base *base; /* the link's and the server's */
    struct rl_link *link;    /* for the script's SHA */
    int lfd;                 /* listening socket */
    struct event *accept_ev; /* on lfd */
    int fd;                  /* the link's connection, -1 when none */
    struct event *read_ev;   /* on fd */
    char in[65536];          /* commands not parsed yet */
    size_t inlen;            /* bytes in in */
    char held[65536];        /* replies held back, in order */
    size_t heldlen;          /* bytes in held */
    int hold;                /* hold EVALSHA replies (and all after them) */
    unsigned connections;    /* accepted so far */
    unsigned evalsha;        /* EVALSHA received */
    unsigned calls;          /* calls in them */
};

static struct fake fk;

static void fake_write(const char *p, size_t n)
{
    if (fk.hold || fk.heldlen > 0) { /* replies leave in order */
        assert_true(fk.heldlen + n <= sizeof(fk.held));
        memcpy(fk.held + fk.heldlen, p, n);
        fk.heldlen += n;
        return;
    }
    assert_int_equal(write(fk.fd, p, n), (ssize_t)n);
}

static void fake_release(void)
{
    fk.hold = 0;
    if (fk.heldlen > 0 && fk.fd >= 0)
        assert_int_equal(write(fk.fd, fk.held, fk.heldlen), (ssize_t)fk.heldlen);
    fk.heldlen = 0;
}

/* One RESP command at IN: its arguments into ARGV/LEN (at most MAX); bytes
 * used, 0 when incomplete. */
static size_t parse_cmd(const char *in, size_t n, const char **argv, size_t *len, int max,
                        int *argc)
{
    const char *p = in, *end = in + n, *nl;
    long count;

    if ((nl = memchr(p, '\n', (size_t)(end - p))) == NULL)
        return 0;
    count = strtol(p + 1, NULL, 10);
    p = nl + 1;
    assert_true(count <= max);
    for (long i = 0; i < count; i++) {
        if ((nl = memchr(p, '\n', (size_t)(end - p))) == NULL)
            return 0;
        size_t l = (size_t)strtol(p + 1, NULL, 10);
        p = nl + 1;
        if ((size_t)(end - p) < l + 2)
            return 0;
        argv[i] = p;
        len[i] = l;
        p += l + 2;
    }
    *argc = (int)count;
    return (size_t)(p - in);
}

/* EVALSHA sha nkeys keys... then per call "nkeys" "nargs" args: each call is
 * answered with its first argument as an integer. */
static void answer_evalsha(const char **argv, int argc)
{
    char out[4096], hdr[32];
    size_t olen = 0;
    int nkeys = atoi(argv[2]), calls = 0;

    for (int i = 3 + nkeys; i < argc; calls++) {
        int nargs = atoi(argv[i + 1]);
        olen += (size_t)snprintf(out + olen, sizeof(out) - olen, ":%ld\r\n",
                                 strtol(argv[i + 2], NULL, 10));
        i += 2 + nargs;
    }
    fk.evalsha++;
    fk.calls += (unsigned)calls;
    int hlen = snprintf(hdr, sizeof(hdr), "*%d\r\n", calls);
    fake_write(hdr, (size_t)hlen);
    fake_write(out, olen);
}

static void fake_read_cb(evutil_socket_t fd, short what, void *arg)
{
    const char *argv[256];
    size_t len[256], used;
    int argc;
    ssize_t n = read(fk.fd, fk.in + fk.inlen, sizeof(fk.in) - fk.inlen);

    if (n <= 0) { /* the link closed its connection */
        event_free(fk.read_ev);
        fk.read_ev = NULL;
        close(fk.fd);
        fk.fd = -1;
        fk.inlen = fk.heldlen = 0;
        return;
    }
    fk.inlen += (size_t)n;
    while ((used = parse_cmd(fk.in, fk.inlen, argv, len, 256, &argc)) > 0) {
        char sha[64];
        if (argc >= 1 && len[0] == 6 && strncasecmp(argv[0], "SCRIPT", 6) == 0) {
            int l = snprintf(sha, sizeof(sha), "$40\r\n%s\r\n", rl_link_sha(fk.link));
            fake_write(sha, (size_t)l);
        } else if (argc >= 3 && len[0] == 7 && strncasecmp(argv[0], "EVALSHA", 7) == 0) {
            answer_evalsha(argv, argc);
        } else {
            fake_write("+OK\r\n", 5);
        }
        memmove(fk.in, fk.in + used, fk.inlen - used);
        fk.inlen -= used;
    }
}

static void fake_accept_cb(evutil_socket_t lfd, short what, void *arg)
{
    int fd = accept(lfd, NULL, NULL);

    if (fd < 0)
        return;
    if (fk.fd >= 0) { /* only the newest connection is served */
        event_free(fk.read_ev);
        close(fk.fd);
    }
    fk.fd = fd;
    fk.inlen = fk.heldlen = 0;
    fk.connections++;
    fk.read_ev = event_new(fk.base, fd, EV_READ | EV_PERSIST, fake_read_cb, NULL);
    event_add(fk.read_ev, NULL);
}

/* A call's outcome, as the link's callback saw it. */
struct outcome {
    int calls; /* times DONE ran: must end at 1 */
    enum rl_call_status status;
    long long value; /* the reply's integer */
};

static void done_cb(void *arg, enum rl_call_status status, const redisReply *reply)
{
    struct outcome *o = arg;

    o->calls++;
    o->status = status;
    o->value = status == RL_CALL_OK && reply->type == REDIS_REPLY_INTEGER ? reply->integer : -1;
}

static struct rl_call *eval(long long value, struct outcome *o)
{
    char num[24];
    const char *argv[2] = {"k", num};
    size_t argvlen[2] = {1, (size_t)snprintf(num, sizeof(num), "%lld", value)};

    return rl_link_eval(fk.link, 1, 1, argv, argvlen, done_cb, o);
}

/* Run the loop until *FLAG (or the link reaches STATE when FLAG is NULL),
 * for at most 3 s. */
static bool run_until(const int *flag, enum rl_link_state state)
{
    struct timeval tick = {0, 10000};

    for (int i = 0; i < 300; i++) {
        if (flag ? *flag != 0 : rl_link_state(fk.link) == state)
            return true;
        event_base_loopexit(fk.base, &tick);
        event_base_dispatch(fk.base);
    }
    return false;
}

/* Run the loop for MS milliseconds. */
static void run_for(int ms)
{
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};

    event_base_loopexit(fk.base, &tv);
    event_base_dispatch(fk.base);
}

static struct fg_redis cfg;
static char address[64];

static int link_setup(void **state)
{
    struct sockaddr_in sin = {.sin_family = AF_INET};
    socklen_t slen = sizeof(sin);

    memset(&fk, 0, sizeof(fk));
    fk.fd = -1;
    fk.base = event_base_new();
    fk.lfd = socket(AF_INET, SOCK_STREAM, 0);
    inet_pton(AF_INET, "127.0.0.1", &sin.sin_addr);
    if (fk.base == NULL || fk.lfd < 0 || bind(fk.lfd, (struct sockaddr *)&sin, sizeof(sin)) < 0 ||
        listen(fk.lfd, 8) < 0 || getsockname(fk.lfd, (struct sockaddr *)&sin, &slen) < 0)
        return -1;
    fk.accept_ev = event_new(fk.base, fk.lfd, EV_READ | EV_PERSIST, fake_accept_cb, NULL);
    event_add(fk.accept_ev, NULL);
    snprintf(address, sizeof(address), "127.0.0.1:%d", ntohs(sin.sin_port));
    cfg = (struct fg_redis){.address = address,
                            .host = "127.0.0.1",
                            .port = ntohs(sin.sin_port),
                            .timeout_ms = TIMEOUT_MS};
    fk.link = rl_link_new(fk.base, &cfg, "return 0", NULL);
    if (fk.link == NULL || !run_until(NULL, RL_LINK_UP))
        return -1;
    return 0;
}

static int link_teardown(void **state)
{
    rl_link_free(fk.link);
    if (fk.read_ev)
        event_free(fk.read_ev);
    if (fk.fd >= 0)
        close(fk.fd);
    event_free(fk.accept_ev);
    close(fk.lfd);
    event_base_free(fk.base);
    return 0;
}

static struct rl_link_stats stats(void)
{
    struct rl_link_stats s;

    rl_link_stats(fk.link, &s);
    return s;
}

/* A late reply is dropped: the next call gets its own answer, on the same
 * connection, and the late call's callback ran once, with the timeout. */
static void test_late_reply_goes_to_nobody(void **state)
{
    struct outcome a = {0}, b = {0}, c = {0};

    fk.hold = 1;
    assert_non_null(eval(11, &a));
    assert_true(run_until(&a.calls, 0));
    assert_int_equal(a.status, RL_CALL_TIMEOUT);
    assert_int_equal(rl_link_state(fk.link), RL_LINK_UP);
    assert_non_null(eval(22, &b));
    run_for(20); /* B's EVALSHA reaches the server, queued behind A's reply */
    assert_int_equal(fk.evalsha, 2);
    fake_release(); /* A's late reply, then B's */
    assert_true(run_until(&b.calls, 0));
    assert_int_equal(b.status, RL_CALL_OK);
    assert_int_equal(b.value, 22);
    assert_non_null(eval(33, &c));
    assert_true(run_until(&c.calls, 0));
    assert_int_equal(c.value, 33);
    assert_int_equal(a.calls, 1);
    assert_int_equal(b.calls, 1);
    assert_int_equal(fk.connections, 1);
    struct rl_link_stats s = stats();
    assert_int_equal(s.timeouts, 1);
    assert_int_equal(s.errors, 1);
    assert_int_equal(s.calls, 2);
}

/* A batch of calls that times out together is one failure: every call of
 * it gets the timeout, the link stays up, and the batch's late reply (one
 * element per call) is dropped whole. */
static void test_batch_times_out_as_one(void **state)
{
    struct outcome o[RL_DOWN_AFTER_TIMEOUTS + 2] = {{0}}, next = {0};
    int n = RL_DOWN_AFTER_TIMEOUTS + 2;

    fk.hold = 1;
    for (int i = 0; i < n; i++)
        assert_non_null(eval(100 + i, &o[i]));
    assert_true(run_until(&o[n - 1].calls, 0));
    run_for(20);
    for (int i = 0; i < n; i++) {
        assert_int_equal(o[i].calls, 1);
        assert_int_equal(o[i].status, RL_CALL_TIMEOUT);
    }
    assert_int_equal(fk.evalsha, 1);
    assert_int_equal(fk.calls, n);
    assert_int_equal(rl_link_state(fk.link), RL_LINK_UP);
    assert_int_equal(stats().timeouts, n);
    fake_release();
    assert_non_null(eval(7, &next));
    assert_true(run_until(&next.calls, 0));
    assert_int_equal(next.status, RL_CALL_OK);
    assert_int_equal(next.value, 7);
    for (int i = 0; i < n; i++)
        assert_int_equal(o[i].calls, 1);
}

/* Timeouts one after the other: the link stays up until the last of
 * RL_DOWN_AFTER_TIMEOUTS in a row, goes down then, and reconnects. An
 * answer in time between them starts the count again. */
static void test_down_after_timeouts_in_a_row(void **state)
{
    struct outcome o[2 * RL_DOWN_AFTER_TIMEOUTS] = {{0}}, ok = {0}, after = {0};
    int k = 0;

    fk.hold = 1;
    for (int i = 0; i < RL_DOWN_AFTER_TIMEOUTS - 1; i++, k++) {
        assert_non_null(eval(k, &o[k]));
        assert_true(run_until(&o[k].calls, 0));
        assert_int_equal(o[k].status, RL_CALL_TIMEOUT);
        assert_int_equal(rl_link_state(fk.link), RL_LINK_UP);
    }
    fake_release(); /* the late replies come, and an answer in time */
    assert_non_null(eval(50, &ok));
    assert_true(run_until(&ok.calls, 0));
    assert_int_equal(ok.value, 50);
    fk.hold = 1;
    for (int i = 0; i < RL_DOWN_AFTER_TIMEOUTS; i++, k++) {
        assert_int_equal(rl_link_state(fk.link), RL_LINK_UP);
        assert_non_null(eval(k, &o[k]));
        assert_true(run_until(&o[k].calls, 0));
        assert_int_equal(o[k].status, RL_CALL_TIMEOUT);
    }
    assert_int_not_equal(rl_link_state(fk.link), RL_LINK_UP);
    assert_null(eval(99, &after)); /* the caller applies its failure mode at once */
    fk.hold = 0;
    assert_true(run_until(NULL, RL_LINK_UP)); /* after the backoff, a new connection */
    assert_int_equal(fk.connections, 2);
    assert_non_null(eval(60, &after));
    assert_true(run_until(&after.calls, 0));
    assert_int_equal(after.value, 60);
    for (int i = 0; i < k; i++)
        assert_int_equal(o[i].calls, 1);
}

/* A stopping link with only late calls left closes at once: their replies
 * may never come, and nobody waits for them. */
static void test_stop_does_not_wait_for_late_replies(void **state)
{
    struct outcome a = {0};

    fk.hold = 1;
    assert_non_null(eval(1, &a));
    assert_true(run_until(&a.calls, 0));
    assert_int_equal(rl_link_state(fk.link), RL_LINK_UP);
    rl_link_stop(fk.link);
    assert_int_equal(rl_link_state(fk.link), RL_LINK_DOWN);
    run_for(50);
    assert_int_equal(fk.fd, -1); /* the server saw the connection close */
    assert_int_equal(a.calls, 1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_timeouts_one_at_a_time),
        cmocka_unit_test(test_timeouts_of_one_silence_count_once),
        cmocka_unit_test(test_timeouts_reset_by_an_answer),
        cmocka_unit_test_setup_teardown(test_late_reply_goes_to_nobody, link_setup, link_teardown),
        cmocka_unit_test_setup_teardown(test_batch_times_out_as_one, link_setup, link_teardown),
        cmocka_unit_test_setup_teardown(test_down_after_timeouts_in_a_row, link_setup,
                                        link_teardown),
        cmocka_unit_test_setup_teardown(test_stop_does_not_wait_for_late_replies, link_setup,
                                        link_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
