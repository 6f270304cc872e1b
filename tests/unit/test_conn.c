/*
 * test_conn.c - the HTTP/1.1 carrier (conn.c) on a real worker: TLS accept,
 * answers, keep-alive, pipelining, Connection: close, the head and idle
 * timeouts, a client gone mid-head, and one access-log line per finished
 * request. The worker runs the real stage table: a host no route names gets
 * 404 from the route stage, DELETE on the one route (GET only) gets 405, so
 * nothing ever goes upstream.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "live.h"

#define ROUTES                                                                                     \
    "upstreams: { api = { servers = [ \"127.0.0.1:9\" ]; }; };\n"                                  \
    "routes = ( { host = \"api.test\"; path = \"/\"; upstream = \"api\"; auth = \"none\";\n"       \
    "             methods = [ \"GET\" ]; } );\n"

#define NOT_FOUND "GET /nothing HTTP/1.1\r\nHost: nowhere.test\r\n\r\n"
#define NOT_ALLOWED "DELETE /x HTTP/1.1\r\nHost: api.test\r\n\r\n"

static int teardown(void **state)
{
    live_stop();
    return 0;
}

static int64_t log_int(json_t *o, const char *key)
{
    return json_integer_value(json_object_get(o, key));
}

static const char *log_str(json_t *o, const char *key)
{
    json_t *v = json_object_get(o, key);

    return json_is_string(v) ? json_string_value(v) : NULL;
}

static void test_answer(void **state)
{
    struct response r;
    json_t *lines[2];

    assert_int_equal(live_start(ROUTES), 0);
    struct client *c = client_open();
    client_send(c, NOT_FOUND);
    assert_int_equal(client_response(c, &r), 0);
    assert_int_equal(r.status, 404);
    assert_non_null(strstr(r.body, "\"not_found\""));
    assert_false(resp_has(&r, "Connection: close"));
    client_close(c);
    live_stop();
    assert_int_equal(live_log(lines, 2), 1);
    assert_int_equal(log_int(lines[0], "status"), 404);
    assert_string_equal(log_str(lines[0], "error"), "not_found");
    assert_non_null(log_str(lines[0], "tls"));
    assert_int_equal(log_int(lines[0], "bytes_out"), (int64_t)(strlen(r.head) + r.body_len));
    live_log_free(lines, 1);
}

static void test_keep_alive(void **state)
{
    struct response r1, r2;
    json_t *lines[3];

    assert_int_equal(live_start(ROUTES), 0);
    struct client *c = client_open();
    client_send(c, NOT_FOUND);
    assert_int_equal(client_response(c, &r1), 0);
    client_send(c, NOT_ALLOWED);
    assert_int_equal(client_response(c, &r2), 0);
    assert_int_equal(r1.status, 404);
    assert_int_equal(r2.status, 405);
    assert_true(resp_has(&r2, "Allow: GET"));
    client_close(c);
    live_stop();
    assert_int_equal(live_log(lines, 3), 2);
    assert_int_equal(log_int(lines[0], "status"), 404);
    assert_int_equal(log_int(lines[1], "status"), 405);
    live_log_free(lines, 2);
}

static void test_pipelined(void **state)
{
    struct response r1, r2, r3;
    json_t *lines[4];

    assert_int_equal(live_start(ROUTES), 0);
    struct client *c = client_open();
    client_send(c, NOT_ALLOWED NOT_FOUND NOT_ALLOWED);
    assert_int_equal(client_response(c, &r1), 0);
    assert_int_equal(client_response(c, &r2), 0);
    assert_int_equal(client_response(c, &r3), 0);
    assert_int_equal(r1.status, 405);
    assert_int_equal(r2.status, 404);
    assert_int_equal(r3.status, 405);
    client_close(c);
    live_stop();
    assert_int_equal(live_log(lines, 4), 3);
    assert_int_equal(log_int(lines[0], "status"), 405);
    assert_int_equal(log_int(lines[1], "status"), 404);
    assert_int_equal(log_int(lines[2], "status"), 405);
    live_log_free(lines, 3);
}

static void test_connection_close(void **state)
{
    struct response r;
    json_t *lines[2];

    assert_int_equal(live_start(ROUTES), 0);
    struct client *c = client_open();
    client_send(c, "GET /x HTTP/1.1\r\nHost: nowhere.test\r\nConnection: close\r\n\r\n");
    assert_int_equal(client_response(c, &r), 0);
    assert_int_equal(r.status, 404);
    assert_true(resp_has(&r, "Connection: close"));
    assert_true(client_eof(c));
    client_close(c);
    live_stop();
    assert_int_equal(live_log(lines, 2), 1);
    assert_string_equal(log_str(lines[0], "error"), "not_found"); /* sent whole, not cut */
    live_log_free(lines, 1);
}

static void test_partial_head_times_out(void **state)
{
    struct response r;
    json_t *lines[2];

    assert_int_equal(live_start(ROUTES "limits: { header_timeout_ms = 1500; };\n"), 0);
    struct client *c = client_open();
    client_send(c, "GET /x HTTP/1.1\r\nHost: nowh");
    assert_int_equal(client_response(c, &r), 0);
    assert_int_equal(r.status, 408);
    assert_true(resp_has(&r, "Connection: close"));
    assert_true(client_eof(c));
    client_close(c);
    live_stop();
    assert_int_equal(live_log(lines, 2), 1);
    assert_int_equal(log_int(lines[0], "status"), 408);
    assert_string_equal(log_str(lines[0], "error"), "timeout");
    live_log_free(lines, 1);
}

static void test_idle_closes_silently(void **state)
{
    struct response r;
    json_t *lines[2];

    assert_int_equal(live_start(ROUTES "limits: { keepalive_timeout_ms = 200; };\n"), 0);
    struct client *c = client_open();
    client_send(c, NOT_FOUND);
    assert_int_equal(client_response(c, &r), 0);
    assert_false(resp_has(&r, "Connection: close"));
    assert_true(client_eof(c)); /* no byte, no 408: just closed */
    client_close(c);
    live_stop();
    assert_int_equal(live_log(lines, 2), 1); /* the request, nothing for the idle close */
    assert_int_equal(log_int(lines[0], "status"), 404);
    live_log_free(lines, 1);
}

static void test_client_gone_mid_head(void **state)
{
    struct response r;
    json_t *lines[2];

    assert_int_equal(live_start(ROUTES), 0);
    struct client *c = client_open();
    client_send(c, "GET /x HTTP/1.1\r\nHo");
    client_close(c);
    /* A second connection, served after the first one's close was seen
     * or not: only its request is logged. */
    struct client *d = client_open();
    client_send(d, NOT_FOUND);
    assert_int_equal(client_response(d, &r), 0);
    client_close(d);
    live_stop();
    assert_int_equal(live_log(lines, 2), 1);
    assert_int_equal(log_int(lines[0], "status"), 404);
    live_log_free(lines, 1);
}

static void test_head_too_large(void **state)
{
    char big[3000];
    struct response r;
    json_t *lines[2];

    assert_int_equal(live_start(ROUTES "limits: { max_header_bytes = 1024; };\n"), 0);
    struct client *c = client_open();
    snprintf(big, sizeof(big), "GET /x HTTP/1.1\r\nHost: nowhere.test\r\nX-Long: %02000d", 7);
    client_send(c, big);
    assert_int_equal(client_response(c, &r), 0);
    assert_int_equal(r.status, 431);
    assert_true(resp_has(&r, "Connection: close"));
    assert_true(client_eof(c));
    client_close(c);
    live_stop();
    assert_int_equal(live_log(lines, 2), 1);
    assert_int_equal(log_int(lines[0], "status"), 431);
    live_log_free(lines, 1);
}

/* A stage that waits for good: only the engine's cancel ends its call.
 * Run on the worker's thread; read by the test after the join. */
static unsigned waits, cancels;

static enum stage_verdict wait_forever(struct req *r, stage_resume_fn resume)
{
    __atomic_add_fetch(&waits, 1, __ATOMIC_RELEASE);
    return STAGE_WAIT;
}

static void wait_cancel(struct req *r)
{
    cancels++;
}

static const struct stage waiting_stage = {
    .name = "wait", .run = wait_forever, .cancel = wait_cancel};
static const struct stage *const waiting_table[] = {&waiting_stage, NULL};

static void test_client_leaves_while_stage_waits(void **state)
{
    json_t *lines[2];

    waits = cancels = 0;
    live_stages = waiting_table;
    assert_int_equal(live_start(ROUTES), 0);
    struct client *c = client_open();
    client_send(c, NOT_FOUND);
    for (int i = 0; i < LIVE_WAIT_S * 100 && __atomic_load_n(&waits, __ATOMIC_ACQUIRE) == 0; i++)
        usleep(10000);
    assert_int_equal(__atomic_load_n(&waits, __ATOMIC_ACQUIRE), 1);
    client_close(c); /* while the stage waits */
    live_stop();
    assert_int_equal(waits, 1);
    assert_int_equal(cancels, 1);
    assert_int_equal(live_log(lines, 2), 1);
    assert_string_equal(log_str(lines[0], "error"), "client closed");
    assert_int_equal(log_int(lines[0], "bytes_out"), 0);
    live_log_free(lines, 1);
}

#define T(f) cmocka_unit_test_teardown(f, teardown)

int main(void)
{
    const struct CMUnitTest tests[] = {
        T(test_answer),
        T(test_keep_alive),
        T(test_pipelined),
        T(test_connection_close),
        T(test_partial_head_times_out),
        T(test_idle_closes_silently),
        T(test_client_gone_mid_head),
        T(test_head_too_large),
        T(test_client_leaves_while_stage_waits),
    };

    return cmocka_run_group_tests(tests, live_group_setup, live_group_teardown);
}
