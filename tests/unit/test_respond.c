/*
 * test_respond.c - flowgate's own responses (respond.c): the JSON error for
 * every enum fg_error, its framing, the common headers, when it closes the
 * connection, and the plain listener's redirect.
 *
 * Each request is parsed and routed by the engine (req_head) and parked in
 * a stage that waits, so respond_error() is called on a request exactly as
 * the engine holds it; the redirect comes from req_head itself on a plain
 * (tls = false) request.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <arpa/inet.h>

#include <cmocka.h>
#include <jansson.h>

#include "cfg.h"
#include "req.h"
#include "respond.h"
#include "stage.h"
#include "upstream.h"
#include "worker.h"

/* ---- a connection and a stage that only record -------------------------- */

static unsigned done_calls;

static void nop(void *c)
{
}

static void nop_timer(void *c, uint32_t ms)
{
}

static size_t no_pending(void *c)
{
    return 0;
}

static void on_done(void *c)
{
    done_calls++;
}

static void on_close(void *c, bool flush)
{
}

static const char *no_tls(void *c)
{
    return NULL;
}

static const struct req_conn_ops ops = {
    .hold = nop,
    .release = nop,
    .flush = nop,
    .pause_read = nop,
    .resume_read = nop,
    .set_timer = nop_timer,
    .clear_timer = nop,
    .pending_out = no_pending,
    .done = on_done,
    .close = on_close,
    .tls_version = no_tls,
    .tls_sni = no_tls,
};

static enum stage_verdict park(struct req *r, stage_resume_fn resume)
{
    return STAGE_WAIT;
}

static void unpark(struct req *r)
{
}

static const struct stage park_stage = {.name = "park", .run = park, .cancel = unpark};
static const struct stage *const table[] = {&park_stage, NULL};

/* ---- the fixture -------------------------------------------------------------- */

static struct fg_config *cfg;
static struct upstream_pool pools[2];
static struct wsnap snap;
static struct worker w;
static struct evbuffer *in, *out;
static struct sockaddr_in peer;
static char peer_ip[INET6_ADDRSTRLEN] = "127.0.0.1";
static struct req *r;

#define HSTS_LINE "Strict-Transport-Security: max-age=60"

static int group_setup(void **state)
{
    static const char text[] =
        "listen: { https = [ ]; http = [ \"127.0.0.1:8080\" ]; admin = \"\"; };\n"
        "headers: { hsts = \"max-age=60\"; };\n"
        "upstreams: { api = { servers = [ \"127.0.0.1:9\" ]; }; };\n"
        "routes = ( { path = \"/\"; upstream = \"api\"; auth = \"none\"; } );\n"
        "log: { access = \"\"; };\n";
    char err[1024];

    cfg = cfg_load_string(text, "test.conf", err, sizeof(err));
    if (cfg == NULL) {
        fprintf(stderr, "%s", err);
        return -1;
    }
    snap.cfg = cfg;
    snap.pools = pools;
    snap.npools = cfg->nupstreams;
    snap.refs = 1;
    w.cfg = cfg;
    w.snap = &snap;
    w.stages = table;
    w.rid_state = 7;
    peer.sin_family = AF_INET;
    peer.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    return 0;
}

static int group_teardown(void **state)
{
    req_free_all(&w);
    cfg_unref(cfg);
    return 0;
}

static void end_request(void)
{
    if (r == NULL)
        return;
    req_finish(r, REQ_END_CLIENT_CLOSED);
    req_put(r);
    evbuffer_free(in);
    evbuffer_free(out);
    r = NULL;
}

/* A request with HEAD as its head, parsed and routed; parked in the stage
 * unless it was answered at once (redirects, malformed heads). */
static void request(const char *head, bool tls)
{
    size_t len = strlen(head);

    end_request();
    done_calls = 0;
    in = evbuffer_new();
    out = evbuffer_new();
    r = req_get(&w, cfg->limits.max_headers);
    assert_non_null(in);
    assert_non_null(out);
    assert_non_null(r);
    r->ops = &ops;
    r->conn = NULL;
    r->in = in;
    r->out = out;
    r->w = &w;
    r->snap = &snap;
    r->cfg = cfg;
    r->peer_ip = peer_ip;
    r->peer = (const struct sockaddr *)&peer;
    r->local_port = tls ? 443 : 80;
    r->tls = tls;
    req_begin(r);
    evbuffer_add(in, head, len);
    req_head(r, len);
}

static int teardown(void **state)
{
    end_request();
    cfg->redirect.https_port = 8443;
    return 0;
}

struct answer {
    int status;
    char status_line[128];
    char head[4096];
    size_t body_len;
    char body[1024];
    long content_length; /* -1 when absent */
};

/* The output as exactly one response head and the bytes after it. */
static void take_answer(struct answer *a)
{
    size_t len = evbuffer_get_length(out);
    const char *data = (const char *)evbuffer_pullup(out, -1);

    assert_true(len > 0);
    ssize_t end = h1_head_end(data, len);
    assert_true(end > 0 && (size_t)end < sizeof(a->head));
    memcpy(a->head, data, (size_t)end);
    a->head[end] = '\0';
    a->body_len = len - (size_t)end;
    assert_true(a->body_len < sizeof(a->body));
    memcpy(a->body, data + end, a->body_len);
    a->body[a->body_len] = '\0';
    size_t sl = strcspn(a->head, "\r");
    assert_true(sl < sizeof(a->status_line));
    memcpy(a->status_line, a->head, sl);
    a->status_line[sl] = '\0';
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

static bool has_header(const struct answer *a, const char *name)
{
    char want[128];

    snprintf(want, sizeof(want), "\r\n%s:", name);
    return strstr(a->head, want) != NULL;
}

/* ---- every error -------------------------------------------------------------------- */

struct expect {
    const char *status_line;
    const char *code; /* NULL: the preflight, no body */
    bool closes;
};

static const struct expect expected[FG_ERR__COUNT] = {
    [FG_ERR_BAD_REQUEST] = {"HTTP/1.1 400 Bad Request", "bad_request", true},
    [FG_ERR_HEADERS_TOO_LARGE] = {"HTTP/1.1 431 Request Header Fields Too Large",
                                  "headers_too_large", true},
    [FG_ERR_BODY_TOO_LARGE] = {"HTTP/1.1 413 Content Too Large", "body_too_large", false},
    [FG_ERR_TIMEOUT] = {"HTTP/1.1 408 Request Timeout", "timeout", true},
    [FG_ERR_METHOD] = {"HTTP/1.1 405 Method Not Allowed", "method_not_allowed", false},
    [FG_ERR_NOT_FOUND] = {"HTTP/1.1 404 Not Found", "not_found", false},
    [FG_ERR_UNAUTHORIZED] = {"HTTP/1.1 401 Unauthorized", "invalid_token", false},
    [FG_ERR_INVALID_TOKEN] = {"HTTP/1.1 401 Unauthorized", "invalid_token", false},
    [FG_ERR_RATE_LIMITED] = {"HTTP/1.1 429 Too Many Requests", "rate_limited", false},
    [FG_ERR_CORS] = {"HTTP/1.1 403 Forbidden", "cors_rejected", false},
    [FG_ERR_BAD_GATEWAY] = {"HTTP/1.1 502 Bad Gateway", "bad_gateway", false},
    [FG_ERR_GATEWAY_TIMEOUT] = {"HTTP/1.1 504 Gateway Timeout", "gateway_timeout", false},
    [FG_ERR_UNAVAILABLE] = {"HTTP/1.1 503 Service Unavailable", "unavailable", false},
    [FG_ERR_EXPECTATION] = {"HTTP/1.1 417 Expectation Failed", "expectation_failed", false},
    [FG_ANSWER_PREFLIGHT] = {"HTTP/1.1 204 No Content", NULL, false},
};

/* The JSON body: {"error": CODE, "message": ..., "request_id": the request's}. */
static void check_body(const struct answer *a, const char *code)
{
    json_error_t jerr;
    json_t *o = json_loads(a->body, 0, &jerr);

    assert_non_null(o);
    assert_string_equal(json_string_value(json_object_get(o, "error")), code);
    assert_true(json_is_string(json_object_get(o, "message")));
    assert_string_equal(json_string_value(json_object_get(o, "request_id")), r->request_id);
    assert_int_equal(strlen(r->request_id), 32);
    json_decref(o);
}

static void test_every_error(void **state)
{
    for (int e = 0; e < FG_ERR__COUNT; e++) {
        const struct expect *x = &expected[e];
        struct answer a;

        request("GET /x HTTP/1.1\r\nHost: app.example\r\n\r\n", true);
        assert_int_equal(evbuffer_get_length(out), 0); /* parked */
        assert_int_equal(respond_error(r, (enum fg_error)e), 0);
        take_answer(&a);
        assert_string_equal(a.status_line, x->status_line);
        assert_int_equal(r->status, a.status);
        assert_int_equal(respond_status((enum fg_error)e), a.status);
        assert_true(has_line(&a, HSTS_LINE));
        assert_non_null(strstr(a.head, "\r\nX-Request-Id: "));
        assert_non_null(strstr(a.head, r->request_id));
        assert_int_equal(has_line(&a, "Connection: close"), x->closes);
        assert_int_equal(r->close_after, x->closes);
        assert_false(has_line(&a, "Connection: keep-alive")); /* HTTP/1.1 */
        assert_int_equal(r->bytes_out, evbuffer_get_length(out) + strlen(a.head) + a.body_len);
        if (x->code == NULL) {
            assert_int_equal(a.content_length, -1); /* RFC 9110 8.6 */
            assert_int_equal(a.body_len, 0);
            assert_null(r->error_code);
            continue;
        }
        assert_int_equal(a.content_length, (long)a.body_len);
        assert_true(has_line(&a, "Content-Type: application/json"));
        check_body(&a, x->code);
        assert_string_equal(r->error_code, x->code);
        assert_string_equal(respond_code((enum fg_error)e), x->code);
    }
}

static void test_head_has_no_body(void **state)
{
    struct answer get, head;

    request("GET /x HTTP/1.1\r\nHost: app.example\r\n\r\n", true);
    assert_int_equal(respond_error(r, FG_ERR_NOT_FOUND), 0);
    take_answer(&get);
    request("HEAD /x HTTP/1.1\r\nHost: app.example\r\n\r\n", true);
    assert_int_equal(respond_error(r, FG_ERR_NOT_FOUND), 0);
    take_answer(&head);
    assert_int_equal(head.status, 404);
    assert_int_equal(head.body_len, 0);
    /* The length the GET's body has (RFC 9110 9.3.2). */
    assert_int_equal(head.content_length, get.content_length);
    assert_true(head.content_length > 0);
}

static void test_closes(void **state)
{
    struct answer a;

    /* Body bytes never read: they would be taken for the next head. */
    request("POST /x HTTP/1.1\r\nHost: app.example\r\nContent-Length: 5\r\n\r\n", true);
    assert_int_equal(respond_error(r, FG_ERR_UNAUTHORIZED), 0);
    take_answer(&a);
    assert_true(has_line(&a, "Connection: close"));
    /* A body already complete does not. */
    request("POST /x HTTP/1.1\r\nHost: app.example\r\nContent-Length: 0\r\n\r\n", true);
    assert_int_equal(respond_error(r, FG_ERR_UNAUTHORIZED), 0);
    take_answer(&a);
    assert_false(has_line(&a, "Connection: close"));
    /* The client asked to close. */
    request("GET /x HTTP/1.1\r\nHost: app.example\r\nConnection: close\r\n\r\n", true);
    assert_int_equal(respond_error(r, FG_ERR_NOT_FOUND), 0);
    take_answer(&a);
    assert_true(has_line(&a, "Connection: close"));
    /* HTTP/1.0 closes unless it asked for keep-alive (RFC 9112 9.3). */
    request("GET /x HTTP/1.0\r\nHost: app.example\r\n\r\n", true);
    assert_int_equal(respond_error(r, FG_ERR_NOT_FOUND), 0);
    take_answer(&a);
    assert_true(has_line(&a, "Connection: close"));
    request("GET /x HTTP/1.0\r\nHost: app.example\r\nConnection: keep-alive\r\n\r\n", true);
    assert_int_equal(respond_error(r, FG_ERR_NOT_FOUND), 0);
    take_answer(&a);
    assert_false(has_line(&a, "Connection: close"));
    assert_true(has_line(&a, "Connection: keep-alive"));
}

static void test_hsts_only_over_tls(void **state)
{
    struct answer a;

    request("GET /x HTTP/1.1\r\nHost: app.example\r\n\r\n", true);
    /* The same request, as a plain listener's: req_begin chose the block
     * without HSTS (a plain listener itself only redirects). */
    r->tls = false;
    r->sec_block = cfg->headers.block_http;
    r->sec_block_len = cfg->headers.block_http_len;
    assert_int_equal(respond_error(r, FG_ERR_NOT_FOUND), 0);
    take_answer(&a);
    assert_false(has_header(&a, "Strict-Transport-Security"));
    assert_true(has_header(&a, "X-Frame-Options")); /* the rest of the block stays */
    request("GET /x HTTP/1.1\r\nHost: app.example\r\n\r\n", true);
    assert_int_equal(respond_error(r, FG_ERR_NOT_FOUND), 0);
    take_answer(&a);
    assert_true(has_line(&a, HSTS_LINE));
}

static void test_stage_lines_in_answer(void **state)
{
    static const char allow[] = "Allow: GET, HEAD\r\n";
    struct answer a;

    request("DELETE /x HTTP/1.1\r\nHost: app.example\r\n\r\n", true);
    assert_int_equal(req_add_header(r, allow, sizeof(allow) - 1), 0);
    assert_int_equal(respond_error(r, FG_ERR_METHOD), 0);
    take_answer(&a);
    assert_true(has_line(&a, "Allow: GET, HEAD"));
    assert_int_equal(a.content_length, (long)a.body_len);
}

/* ---- the redirect ---------------------------------------------------------------------- */

static void test_redirect_location(void **state)
{
    struct answer a;

    request("GET /a/./b/../c?q=1&r=2 HTTP/1.1\r\nHost: App.Example:8080\r\n\r\n", false);
    assert_int_equal(done_calls, 1); /* answered at once: no stage runs */
    take_answer(&a);
    assert_string_equal(a.status_line, "HTTP/1.1 308 Permanent Redirect");
    assert_true(has_line(&a, "Location: https://app.example:8443/a/c?q=1&r=2"));
    assert_false(has_header(&a, "Strict-Transport-Security"));
    assert_int_equal(a.content_length, 0);
    assert_int_equal(a.body_len, 0);
    assert_false(has_line(&a, "Connection: close"));
}

static void test_redirect_default_port(void **state)
{
    struct answer a;

    cfg->redirect.https_port = 443;
    request("GET /p HTTP/1.1\r\nHost: app.example\r\n\r\n", false);
    take_answer(&a);
    assert_true(has_line(&a, "Location: https://app.example/p"));
    request("GET /p? HTTP/1.1\r\nHost: app.example\r\n\r\n", false);
    take_answer(&a);
    assert_true(has_line(&a, "Location: https://app.example/p")); /* an empty query adds nothing */
}

static void test_redirect_without_host(void **state)
{
    struct answer a;

    request("GET /p HTTP/1.0\r\n\r\n", false);
    assert_int_equal(done_calls, 1);
    take_answer(&a);
    assert_int_equal(a.status, 400);
    assert_false(has_header(&a, "Location"));
    assert_true(has_line(&a, "Connection: close"));
    check_body(&a, "bad_request");
    assert_int_equal(a.content_length, (long)a.body_len);
}

#define T(f) cmocka_unit_test_teardown(f, teardown)

int main(void)
{
    const struct CMUnitTest tests[] = {
        T(test_every_error),           T(test_head_has_no_body),      T(test_closes),
        T(test_hsts_only_over_tls),    T(test_stage_lines_in_answer), T(test_redirect_location),
        T(test_redirect_default_port), T(test_redirect_without_host),
    };

    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
