/*
 * test_req.c - the request engine (req.c, stage.c) with a stage table and a
 * connection of the test's own: heads go in, stages run in table order, may
 * wait and resume, answers come out, and every request is logged exactly
 * once, by req_finish(), whatever ended it.
 *
 * The connection records what the engine asks of it (struct req_conn_ops);
 * the test then plays the carrier's part (req_finish once the response is
 * out, or with the reason the connection ended). The last stage always
 * answers 404, so no request ever goes upstream.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <arpa/inet.h>

#include <cmocka.h>
#include <jansson.h>

#include "cfg.h"
#include "log.h"
#include "req.h"
#include "respond.h"
#include "stage.h"
#include "upstream.h"
#include "wbuf.h"
#include "worker.h"

/* ---- the connection ------------------------------------------------------ */

struct fake_conn {
    unsigned holds, releases, flushes, pauses, resumes;
    unsigned set_timers, clear_timers, done, closes;
    bool close_flush; /* the last close's FLUSH */
    size_t pending;   /* output bytes the socket has not taken */
};

static void fc_hold(void *c)
{
    ((struct fake_conn *)c)->holds++;
}
static void fc_release(void *c)
{
    ((struct fake_conn *)c)->releases++;
}
static void fc_flush(void *c)
{
    ((struct fake_conn *)c)->flushes++;
}
static void fc_pause_read(void *c)
{
    ((struct fake_conn *)c)->pauses++;
}
static void fc_resume_read(void *c)
{
    ((struct fake_conn *)c)->resumes++;
}
static void fc_set_timer(void *c, uint32_t ms)
{
    ((struct fake_conn *)c)->set_timers++;
}
static void fc_clear_timer(void *c)
{
    ((struct fake_conn *)c)->clear_timers++;
}
static size_t fc_pending_out(void *c)
{
    return ((struct fake_conn *)c)->pending;
}
static void fc_done(void *c)
{
    ((struct fake_conn *)c)->done++;
}
static const char *fc_tls_version(void *c)
{
    return "TLSv1.3";
}

static void fc_close(void *conn, bool flush)
{
    struct fake_conn *c = conn;

    c->closes++;
    c->close_flush = flush;
}

static const struct req_conn_ops fake_ops = {
    .hold = fc_hold,
    .release = fc_release,
    .flush = fc_flush,
    .pause_read = fc_pause_read,
    .resume_read = fc_resume_read,
    .set_timer = fc_set_timer,
    .clear_timer = fc_clear_timer,
    .pending_out = fc_pending_out,
    .done = fc_done,
    .close = fc_close,
    .tls_version = fc_tls_version,
    .tls_sni = fc_tls_version,
};

/* ---- the stages ----------------------------------------------------------- */

#define FILLER "X-Filler: 0123456789012345678901234567890123456789\r\n"

enum act { ACT_NEXT, ACT_ANSWER, ACT_WAIT };

struct fake_stage {
    enum act act;
    enum fg_error err; /* ACT_ANSWER */
    const char *why;   /* ACT_ANSWER */
    bool fill;         /* ACT_ANSWER: add lines until req_add_header refuses one */
    size_t added;      /* lines it added */
    unsigned runs, cancels;
};

#define NSTAGES 3
static struct fake_stage fk[NSTAGES];
static char trail[32];                 /* stage numbers in the order they ran */
static stage_resume_fn waiting_resume; /* the continuation of the stage that waits */

static enum stage_verdict fake_run(int i, struct req *r, stage_resume_fn resume)
{
    struct fake_stage *s = &fk[i];
    size_t n = strlen(trail);

    s->runs++;
    trail[n] = (char)('0' + i);
    trail[n + 1] = '\0';
    switch (s->act) {
    case ACT_NEXT: return STAGE_NEXT;
    case ACT_WAIT: waiting_resume = resume; return STAGE_WAIT;
    case ACT_ANSWER: break;
    }
    while (s->fill && req_add_header(r, FILLER, sizeof(FILLER) - 1) == 0)
        s->added++;
    return stage_answer(r, s->err, s->why);
}

static void fake_cancel(int i)
{
    fk[i].cancels++;
    waiting_resume = NULL; /* nothing of the pending call may reach the request now */
}

static enum stage_verdict run0(struct req *r, stage_resume_fn f)
{
    return fake_run(0, r, f);
}
static enum stage_verdict run1(struct req *r, stage_resume_fn f)
{
    return fake_run(1, r, f);
}
static enum stage_verdict run2(struct req *r, stage_resume_fn f)
{
    return fake_run(2, r, f);
}
static void cancel0(struct req *r)
{
    fake_cancel(0);
}
static void cancel1(struct req *r)
{
    fake_cancel(1);
}
static void cancel2(struct req *r)
{
    fake_cancel(2);
}

static const struct stage stage0 = {.name = "s0", .run = run0, .cancel = cancel0};
static const struct stage stage1 = {.name = "s1", .run = run1, .cancel = cancel1};
static const struct stage stage2 = {.name = "s2", .run = run2, .cancel = cancel2};
static const struct stage *const table[] = {&stage0, &stage1, &stage2, NULL};

/* ---- the fixture ------------------------------------------------------------ */

static char dir[256];
static char access_path[320];
static struct fg_config *cfg;
static struct upstream_pool pools[4];
static struct wsnap snap;
static struct worker w;
static struct fake_conn fc;
static struct evbuffer *in, *out;
static struct sockaddr_in peer;
static char peer_ip[INET6_ADDRSTRLEN] = "127.0.0.1"; /* req_begin copies all of it */
static struct req *r;

static int group_setup(void **state)
{
    char text[1024], err[1024];

    snprintf(dir, sizeof(dir), "%s/fg-test-req-XXXXXX",
             getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
    if (mkdtemp(dir) == NULL)
        return -1;
    snprintf(access_path, sizeof(access_path), "%s/access.log", dir);
    snprintf(text, sizeof(text),
             "listen: { https = [ ]; http = [ \"127.0.0.1:8080\" ]; admin = \"\"; };\n"
             "upstreams: { api = { servers = [ \"127.0.0.1:9\" ]; }; };\n"
             "routes = ( { path = \"/\"; upstream = \"api\"; auth = \"none\"; } );\n"
             "log: { access = \"%s\"; error = \"stderr\"; level = \"error\"; };\n",
             access_path);
    cfg = cfg_load_string(text, "test.conf", err, sizeof(err));
    if (cfg == NULL) {
        fprintf(stderr, "%s", err);
        return -1;
    }
    if (log_open(&cfg->log, err, sizeof(err)) < 0) {
        fprintf(stderr, "%s\n", err);
        return -1;
    }
    /* route_dispatch only points into the pools: they are never used. */
    snap.cfg = cfg;
    snap.pools = pools;
    snap.npools = cfg->nupstreams;
    snap.refs = 1;
    w.cfg = cfg;
    w.snap = &snap;
    w.stages = table;
    w.rid_state = 42;
    peer.sin_family = AF_INET;
    peer.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    return 0;
}

static int group_teardown(void **state)
{
    char cmd[400];

    req_free_all(&w);
    log_close();
    cfg_unref(cfg);
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    return system(cmd) == 0 ? 0 : -1;
}

/* A fresh request on a fresh connection, stages 0 and 1 passing, stage 2
 * answering 404, and an empty access log. */
static int setup(void **state)
{
    memset(&fc, 0, sizeof(fc));
    memset(fk, 0, sizeof(fk));
    fk[2].act = ACT_ANSWER;
    fk[2].err = FG_ERR_NOT_FOUND;
    trail[0] = '\0';
    waiting_resume = NULL;
    w.stages = table;
    if (truncate(access_path, 0) < 0)
        return -1;
    in = evbuffer_new();
    out = evbuffer_new();
    r = req_get(&w, cfg->limits.max_headers);
    if (in == NULL || out == NULL || r == NULL)
        return -1;
    r->ops = &fake_ops;
    r->conn = &fc;
    r->in = in;
    r->out = out;
    r->w = &w;
    r->snap = &snap;
    r->cfg = cfg;
    r->peer_ip = peer_ip;
    r->peer = (const struct sockaddr *)&peer;
    r->local_port = 443;
    r->tls = true;
    req_begin(r);
    return 0;
}

static int teardown(void **state)
{
    req_finish(r, REQ_END_CLIENT_CLOSED); /* a no-op when the test finished it */
    req_put(r);
    evbuffer_free(in);
    evbuffer_free(out);
    return 0;
}

/* ---- feeding heads, reading answers and the log ---------------------------- */

static void feed(const char *head)
{
    size_t len = strlen(head);

    evbuffer_add(in, head, len);
    req_head(r, len);
}

#define GET "GET /a/b?x=1 HTTP/1.1\r\nHost: app.example\r\n\r\n"

struct answer {
    int status;
    char head[8192]; /* NUL-terminated */
    size_t body_len;
    char body[1024];     /* NUL-terminated */
    long content_length; /* -1 when absent */
};

/* Take the whole output as one response; fails unless it is one. */
static void take_answer(struct answer *a)
{
    size_t len = evbuffer_get_length(out);
    char *data = (char *)evbuffer_pullup(out, -1);

    assert_true(len > 0);
    ssize_t end = h1_head_end(data, len);
    assert_true(end > 0);
    assert_true((size_t)end < sizeof(a->head));
    memcpy(a->head, data, (size_t)end);
    a->head[end] = '\0';
    a->body_len = len - (size_t)end;
    assert_true(a->body_len < sizeof(a->body));
    memcpy(a->body, data + end, a->body_len);
    a->body[a->body_len] = '\0';
    assert_int_equal(sscanf(a->head, "HTTP/1.1 %d ", &a->status), 1);
    const char *cl = strstr(a->head, "\r\nContent-Length: ");
    a->content_length = cl ? strtol(cl + 18, NULL, 10) : -1;
    evbuffer_drain(out, len);
}

static bool has_line(const struct answer *a, const char *line)
{
    char want[512];

    snprintf(want, sizeof(want), "\r\n%s\r\n", line);
    return strstr(a->head, want) != NULL;
}

/* Lines in the access log; the last one parsed into *LAST (caller decrefs). */
static int log_lines(json_t **last)
{
    FILE *f = fopen(access_path, "r");
    char line[8192];
    int n = 0;

    assert_non_null(f);
    if (last)
        *last = NULL;
    while (fgets(line, sizeof(line), f)) {
        n++;
        if (last) {
            json_decref(*last);
            *last = json_loads(line, 0, NULL);
            assert_non_null(*last);
        }
    }
    fclose(f);
    return n;
}

static const char *log_str(json_t *o, const char *key)
{
    json_t *v = json_object_get(o, key);

    return json_is_string(v) ? json_string_value(v) : NULL;
}

/* The carrier's part after ops->done: the response went out. */
static void sent(void)
{
    assert_int_equal(fc.done, 1);
    req_finish(r, REQ_END_SENT);
}

/* ---- stages run, answer, pass ----------------------------------------------------- */

static void test_stage_answers(void **state)
{
    struct answer a;
    json_t *line;

    fk[0].act = ACT_ANSWER;
    fk[0].err = FG_ERR_RATE_LIMITED;
    fk[0].why = "over the limit";
    feed(GET);
    assert_string_equal(trail, "0");
    assert_int_equal(fk[1].runs, 0);
    assert_int_equal(fk[2].runs, 0);
    assert_int_equal(r->state, REQ_SENDING);
    assert_int_equal(fc.done, 1);
    assert_int_equal(fc.closes, 0);
    take_answer(&a);
    assert_int_equal(a.status, 429);
    assert_int_equal(a.content_length, (long)a.body_len);
    assert_non_null(strstr(a.body, "\"error\":\"rate_limited\""));
    assert_int_equal(log_lines(NULL), 0); /* logged once the response is out */
    sent();
    assert_int_equal(fc.done, 1);
    assert_int_equal(log_lines(&line), 1);
    assert_int_equal(json_integer_value(json_object_get(line, "status")), 429);
    assert_string_equal(log_str(line, "error"), "over the limit");
    assert_string_equal(log_str(line, "path"), "/a/b?x=1");
    assert_string_equal(log_str(line, "tls"), "TLSv1.3");
    json_decref(line);
}

static void test_stages_run_in_order(void **state)
{
    struct answer a;
    json_t *line;

    feed(GET);
    assert_string_equal(trail, "012");
    for (int i = 0; i < NSTAGES; i++)
        assert_int_equal(fk[i].runs, 1);
    take_answer(&a);
    assert_int_equal(a.status, 404);
    sent();
    assert_int_equal(log_lines(&line), 1);
    assert_string_equal(log_str(line, "error"), "not_found");
    json_decref(line);
}

static void test_finish_counts_once(void **state)
{
    uint64_t before = w.stats.requests;

    feed(GET);
    sent();
    req_finish(r, REQ_END_SENT);
    req_finish(r, REQ_END_CLIENT_CLOSED);
    assert_int_equal(log_lines(NULL), 1);
    assert_int_equal(w.stats.requests, before + 1);
}

/* ---- waiting stages ----------------------------------------------------------------- */

static void test_wait_then_next(void **state)
{
    struct answer a;

    fk[1].act = ACT_WAIT;
    feed(GET);
    assert_string_equal(trail, "01");
    assert_non_null(waiting_resume);
    assert_int_equal(evbuffer_get_length(out), 0);
    assert_int_equal(fc.done, 0);
    assert_int_equal(r->state, REQ_STAGES);
    waiting_resume(r, STAGE_NEXT);
    assert_string_equal(trail, "012");
    assert_int_equal(fk[1].cancels, 0);
    assert_int_equal(fc.holds, fc.releases); /* held around the resumed run */
    assert_true(fc.holds >= 1);
    take_answer(&a);
    assert_int_equal(a.status, 404);
    sent();
    assert_int_equal(log_lines(NULL), 1);
}

static void test_wait_then_answered(void **state)
{
    struct answer a;
    json_t *line;

    fk[0].act = ACT_WAIT;
    feed(GET);
    assert_string_equal(trail, "0");
    assert_int_equal(evbuffer_get_length(out), 0);
    stage_answer(r, FG_ERR_UNAVAILABLE, "redis down");
    waiting_resume(r, STAGE_ANSWERED);
    assert_string_equal(trail, "0"); /* nothing after the answer */
    assert_int_equal(fk[0].cancels, 0);
    take_answer(&a);
    assert_int_equal(a.status, 503);
    assert_int_equal(a.content_length, (long)a.body_len);
    sent();
    assert_int_equal(log_lines(&line), 1);
    assert_string_equal(log_str(line, "error"), "redis down");
    json_decref(line);
}

static void test_client_closes_while_waiting(void **state)
{
    json_t *line;

    fk[1].act = ACT_WAIT;
    feed(GET);
    req_finish(r, REQ_END_CLIENT_CLOSED);
    assert_int_equal(fk[1].cancels, 1);
    assert_null(waiting_resume);
    assert_int_equal(r->state, REQ_DONE);
    req_finish(r, REQ_END_CLIENT_CLOSED);
    assert_int_equal(fk[1].cancels, 1);
    assert_int_equal(evbuffer_get_length(out), 0);
    assert_int_equal(log_lines(&line), 1);
    assert_string_equal(log_str(line, "error"), "client closed");
    json_decref(line);
}

static void test_timeout_while_waiting(void **state)
{
    struct answer a;
    json_t *line;

    fk[0].act = ACT_WAIT;
    feed(GET);
    req_timeout(r);
    assert_int_equal(fk[0].cancels, 1);
    assert_int_equal(fk[1].runs, 0);
    assert_int_equal(fc.done, 1);
    take_answer(&a);
    assert_int_equal(a.status, 408);
    assert_true(has_line(&a, "Connection: close"));
    assert_true(req_ends_connection(r));
    sent();
    assert_int_equal(fk[0].cancels, 1);
    assert_int_equal(log_lines(&line), 1);
    assert_string_equal(log_str(line, "error"), "timeout");
    json_decref(line);
}

static void test_client_eof_while_waiting(void **state)
{
    json_t *line;

    fk[1].act = ACT_WAIT;
    feed(GET);
    req_client_eof(r);
    assert_int_equal(fk[1].cancels, 1);
    assert_int_equal(fc.closes, 1);
    assert_false(fc.close_flush);
    assert_int_equal(fc.done, 0);
    assert_int_equal(evbuffer_get_length(out), 0);
    req_finish(r, REQ_END_CLIENT_CLOSED); /* the carrier, once closed */
    assert_int_equal(fk[1].cancels, 1);
    assert_int_equal(log_lines(&line), 1);
    assert_string_equal(log_str(line, "error"), "client closed");
    json_decref(line);
}

/* The answer is complete and going out when the client half-closes: it
 * still goes out, then the connection closes. */
static void test_client_eof_while_sending(void **state)
{
    json_t *line;

    feed(GET);
    assert_int_equal(r->state, REQ_SENDING);
    assert_false(req_ends_connection(r));
    req_client_eof(r);
    assert_int_equal(fc.closes, 0);
    assert_int_equal(fc.pauses, 1);
    assert_true(req_ends_connection(r));
    sent();
    assert_int_equal(log_lines(&line), 1);
    assert_int_equal(json_integer_value(json_object_get(line, "status")), 404);
    assert_string_equal(log_str(line, "error"), "not_found");
    json_decref(line);
}

/* A client that stopped taking the answer: the connection is cut and the
 * request logged as cut, not as served. */
static void test_timeout_while_sending(void **state)
{
    json_t *line;

    feed(GET);
    size_t total = evbuffer_get_length(out);
    req_timeout(r);
    assert_int_equal(fc.closes, 1);
    assert_false(fc.close_flush);
    fc.pending = 10; /* the last 10 bytes never left */
    req_finish(r, REQ_END_SEND_TIMEOUT);
    assert_int_equal(log_lines(&line), 1);
    assert_int_equal(json_integer_value(json_object_get(line, "status")), 404);
    assert_int_equal(json_integer_value(json_object_get(line, "bytes_out")), total - 10);
    assert_string_equal(log_str(line, "error"), "send timeout");
    json_decref(line);
}

/* ---- heads ----------------------------------------------------------------------------- */

static void test_malformed_head(void **state)
{
    struct answer a;
    json_t *line;

    feed("GET / HTTP/1.1\r\nHost app.example\r\n\r\n");
    assert_int_equal(fk[0].runs, 0);
    assert_true(r->close_after);
    take_answer(&a);
    assert_int_equal(a.status, 400);
    assert_true(has_line(&a, "Connection: close"));
    assert_non_null(strstr(a.body, r->request_id));
    sent();
    assert_int_equal(log_lines(&line), 1);
    assert_int_equal(json_integer_value(json_object_get(line, "status")), 400);
    assert_non_null(log_str(line, "error"));
    json_decref(line);
}

/* ---- what stages offer and are offered ----------------------------------------------------- */

static void test_stage_answer_keeps_first_error(void **state)
{
    assert_int_equal(stage_answer(r, FG_ERR_CORS, "first"), STAGE_ANSWERED);
    assert_int_equal(stage_answer(r, FG_ERR_METHOD, "second"), STAGE_ANSWERED);
    assert_int_equal(r->answer, FG_ERR_METHOD);
    assert_string_equal(r->error_code, "first");
    assert_int_equal(stage_answer(r, FG_ERR_METHOD, NULL), STAGE_ANSWERED);
    assert_string_equal(r->error_code, "first");
}

static void test_add_header_full(void **state)
{
    struct answer a;
    size_t n = 0;

    /* The stage fills the extra lines, then answers: the response carries
     * every line that fit and is still complete. */
    fk[0].act = ACT_ANSWER;
    fk[0].err = FG_ERR_RATE_LIMITED;
    fk[0].fill = true;
    feed(GET);
    assert_int_equal(fk[0].added, sizeof(r->rb->extra) / (sizeof(FILLER) - 1));
    assert_int_equal(r->extra_len, fk[0].added * (sizeof(FILLER) - 1));
    assert_int_equal(req_add_header(r, FILLER, sizeof(FILLER) - 1), -1);
    assert_int_equal(r->extra_len, fk[0].added * (sizeof(FILLER) - 1));
    take_answer(&a);
    assert_int_equal(a.status, 429);
    assert_int_equal(a.content_length, (long)a.body_len);
    assert_non_null(strstr(a.body, r->request_id));
    for (const char *p = a.head; (p = strstr(p, "\r\nX-Filler: ")) != NULL; p++)
        n++;
    assert_int_equal(n, fk[0].added);
    assert_non_null(strstr(a.head, "\r\nX-Request-Id: "));
    sent();
}

/* ---- header hooks --------------------------------------------------------------------------- */

static enum stage_header hook_answer[3];
static unsigned hook_calls[3];

static enum stage_header resp_hook(int i, const struct h1_header *h)
{
    hook_calls[i]++;
    return hook_answer[i];
}

static enum stage_header rh0(const struct req *q, const struct h1_header *h)
{
    return resp_hook(0, h);
}
static enum stage_header rh2(const struct req *q, const struct h1_header *h)
{
    return resp_hook(2, h);
}

static enum stage_header req_hook(int i, const struct h1_header *h, struct wbuf *b)
{
    hook_calls[i]++;
    if (hook_answer[i] == STAGE_HDR_WRITTEN)
        wbuf_lit(b, "X-Rewritten: 1\r\n");
    return hook_answer[i];
}

static enum stage_header qh0(const struct req *q, const struct h1_header *h, struct wbuf *b)
{
    return req_hook(0, h, b);
}

static enum stage_header qh1(const struct req *q, const struct h1_header *h, struct wbuf *b)
{
    return req_hook(1, h, b);
}

static enum stage_header qh2(const struct req *q, const struct h1_header *h, struct wbuf *b)
{
    return req_hook(2, h, b);
}

/* Stage 1 has no response hook: it is skipped, never taken as an opinion. */
static const struct stage hook0 = {.name = "h0", .response_header = rh0, .request_header = qh0};
static const struct stage hook1 = {.name = "h1", .request_header = qh1};
static const struct stage hook2 = {.name = "h2", .response_header = rh2, .request_header = qh2};
static const struct stage *const hook_table[] = {&hook0, &hook1, &hook2, NULL};

static void hooks_reset(enum stage_header a0, enum stage_header a1, enum stage_header a2)
{
    hook_answer[0] = a0;
    hook_answer[1] = a1;
    hook_answer[2] = a2;
    memset(hook_calls, 0, sizeof(hook_calls));
}

static void test_response_header_first_opinion(void **state)
{
    const struct h1_header h = {
        .name = "Set-Cookie", .name_len = 10, .value = "a=b", .value_len = 3};

    w.stages = hook_table;
    hooks_reset(STAGE_HDR_DEFAULT, STAGE_HDR_DEFAULT, STAGE_HDR_DEFAULT);
    assert_int_equal(stages_response_header(r, &h), STAGE_HDR_DEFAULT);
    assert_int_equal(hook_calls[0], 1);
    assert_int_equal(hook_calls[2], 1);
    hooks_reset(STAGE_HDR_DEFAULT, STAGE_HDR_DEFAULT, STAGE_HDR_DROP);
    assert_int_equal(stages_response_header(r, &h), STAGE_HDR_DROP);
    hooks_reset(STAGE_HDR_KEEP, STAGE_HDR_DEFAULT, STAGE_HDR_DROP);
    assert_int_equal(stages_response_header(r, &h), STAGE_HDR_KEEP);
    assert_int_equal(hook_calls[2], 0); /* decided: later stages are not asked */
    hooks_reset(STAGE_HDR_DROP, STAGE_HDR_DEFAULT, STAGE_HDR_KEEP);
    assert_int_equal(stages_response_header(r, &h), STAGE_HDR_DROP);
    assert_int_equal(hook_calls[2], 0);
}

static void test_request_header_first_opinion(void **state)
{
    const struct h1_header h = {.name = "Cookie", .name_len = 6, .value = "a=b", .value_len = 3};
    struct evbuffer *b = evbuffer_new();
    struct wbuf wb;

    w.stages = hook_table;
    hooks_reset(STAGE_HDR_DEFAULT, STAGE_HDR_DEFAULT, STAGE_HDR_DEFAULT);
    wbuf_begin(&wb, b, 256);
    assert_int_equal(stages_request_header(r, &h, &wb), STAGE_HDR_DEFAULT);
    assert_int_equal(hook_calls[0] + hook_calls[1] + hook_calls[2], 3);
    hooks_reset(STAGE_HDR_DEFAULT, STAGE_HDR_WRITTEN, STAGE_HDR_DROP);
    assert_int_equal(stages_request_header(r, &h, &wb), STAGE_HDR_WRITTEN);
    assert_int_equal(hook_calls[2], 0);
    hooks_reset(STAGE_HDR_DROP, STAGE_HDR_WRITTEN, STAGE_HDR_KEEP);
    assert_int_equal(stages_request_header(r, &h, &wb), STAGE_HDR_DROP);
    assert_int_equal(hook_calls[1] + hook_calls[2], 0);
    assert_int_equal(wbuf_end(&wb), 0);
    /* Only the one stage that decided WRITTEN wrote. */
    assert_int_equal(evbuffer_get_length(b), strlen("X-Rewritten: 1\r\n"));
    evbuffer_free(b);
}

static void test_worker_data_per_slot(void **state)
{
    int a, b;

    memset(w.stage_data, 0, sizeof(w.stage_data));
    assert_null(stage_worker_data(&w, &stage0));
    stage_set_worker_data(&w, &stage1, &a);
    assert_null(stage_worker_data(&w, &stage0));
    assert_ptr_equal(stage_worker_data(&w, &stage1), &a);
    assert_null(stage_worker_data(&w, &stage2));
    stage_set_worker_data(&w, &stage2, &b);
    assert_ptr_equal(stage_worker_data(&w, &stage1), &a);
    assert_ptr_equal(stage_worker_data(&w, &stage2), &b);
    assert_ptr_equal(w.stage_data[1], &a);
    assert_ptr_equal(w.stage_data[2], &b);
    stage_set_worker_data(&w, &stage1, NULL);
    assert_null(stage_worker_data(&w, &stage1));
    memset(w.stage_data, 0, sizeof(w.stage_data));
}

#define T(f) cmocka_unit_test_setup_teardown(f, setup, teardown)

int main(void)
{
    const struct CMUnitTest tests[] = {
        T(test_stage_answers),
        T(test_stages_run_in_order),
        T(test_finish_counts_once),
        T(test_wait_then_next),
        T(test_wait_then_answered),
        T(test_client_closes_while_waiting),
        T(test_timeout_while_waiting),
        T(test_client_eof_while_waiting),
        T(test_client_eof_while_sending),
        T(test_timeout_while_sending),
        T(test_malformed_head),
        T(test_stage_answer_keeps_first_error),
        T(test_add_header_full),
        T(test_response_header_first_opinion),
        T(test_request_header_first_opinion),
        T(test_worker_data_per_slot),
    };

    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
