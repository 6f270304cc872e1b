/*
 * test_proxy.c - forwarding (proxy.c) on a real worker, against an upstream
 * the test plays itself on a loopback socket: a response relayed, an
 * upstream that closes before its head (502), and a response cut mid-body
 * (the client's connection closes without the rest: never a completed
 * message). The worker runs the real stage table; the one route is open.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "live.h"

static int up_listen_fd = -1; /* the upstream's listening socket */
static int up_fd = -1;        /* the connection flowgate made to it */
static int up_port;

/* Listen on 127.0.0.1, any port, and start a worker whose one route goes
 * there. */
static int setup(void **state)
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof(a);
    char extra[512];

    up_listen_fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (up_listen_fd < 0 || bind(up_listen_fd, (struct sockaddr *)&a, sizeof(a)) < 0 ||
        listen(up_listen_fd, 8) < 0 || getsockname(up_listen_fd, (struct sockaddr *)&a, &len) < 0)
        return -1;
    up_port = ntohs(a.sin_port);
    snprintf(extra, sizeof(extra),
             "upstreams: { api = { servers = [ \"127.0.0.1:%d\" ]; }; };\n"
             "routes = ( { path = \"/\"; upstream = \"api\"; auth = \"none\"; } );\n",
             up_port);
    return live_start(extra);
}

static int teardown(void **state)
{
    if (up_fd >= 0)
        close(up_fd);
    live_stop();
    if (up_listen_fd >= 0)
        close(up_listen_fd);
    up_fd = up_listen_fd = -1;
    return 0;
}

/* Read from the upstream's side of the connection until HEAD (NUL-
 * terminated) holds a whole request head and WANT bytes after it. */
static void upstream_read_request(char *head, size_t cap, size_t want)
{
    const char *end;
    size_t len = 0;

    head[0] = '\0';
    while ((end = strstr(head, "\r\n\r\n")) == NULL || len < (size_t)(end + 4 - head) + want) {
        assert_true(len + 1 < cap);
        ssize_t n = recv(up_fd, head + len, cap - len - 1, 0);
        assert_true(n > 0);
        len += (size_t)n;
        head[len] = '\0';
    }
}

/* Take flowgate's next connection and read one request from it: its head
 * and WANT body bytes. */
static void upstream_take_request(char *head, size_t cap, size_t want)
{
    struct pollfd p = {.fd = up_listen_fd, .events = POLLIN};
    struct timeval tv = {.tv_sec = LIVE_WAIT_S};

    assert_int_equal(poll(&p, 1, LIVE_WAIT_S * 1000), 1);
    up_fd = accept4(up_listen_fd, NULL, NULL, SOCK_CLOEXEC);
    assert_true(up_fd >= 0);
    setsockopt(up_fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    upstream_read_request(head, cap, want);
}

static void upstream_send(const char *s)
{
    assert_int_equal(send(up_fd, s, strlen(s), MSG_NOSIGNAL), (ssize_t)strlen(s));
}

static const char *log_str(json_t *o, const char *key)
{
    json_t *v = json_object_get(o, key);

    return json_is_string(v) ? json_string_value(v) : NULL;
}

static void test_relayed(void **state)
{
    struct client *c = client_open();
    struct response r;
    char head[4096], want[64];
    json_t *lines[2];

    client_send(c, "GET /hello?x=1 HTTP/1.1\r\nHost: app.test\r\nX-Mine: 1\r\n\r\n");
    upstream_take_request(head, sizeof(head), 0);
    assert_non_null(strstr(head, "GET /hello?x=1 HTTP/1.1\r\n"));
    assert_non_null(strstr(head, "\r\nX-Mine: 1\r\n"));
    assert_non_null(strstr(head, "\r\nX-Forwarded-For: 127.0.0.1\r\n"));
    assert_non_null(strstr(head, "\r\nX-Forwarded-Proto: https\r\n"));
    assert_non_null(strstr(head, "\r\nX-Request-Id: "));
    upstream_send("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Up: yes\r\n\r\nhello");
    assert_int_equal(client_response(c, &r), 0);
    assert_int_equal(r.status, 200);
    assert_string_equal(r.body, "hello");
    assert_true(resp_has(&r, "X-Up: yes"));
    assert_non_null(strstr(r.head, "\r\nX-Request-Id: "));
    assert_false(resp_has(&r, "Connection: close"));
    client_close(c);
    live_stop();
    assert_int_equal(live_log(lines, 2), 1);
    assert_int_equal(json_integer_value(json_object_get(lines[0], "status")), 200);
    snprintf(want, sizeof(want), "127.0.0.1:%d", up_port);
    assert_string_equal(log_str(lines[0], "upstream"), want);
    assert_null(log_str(lines[0], "error"));
    live_log_free(lines, 1);
}

static void test_closed_before_head(void **state)
{
    struct client *c = client_open();
    struct response r;
    char head[4096];
    json_t *lines[2];

    client_send(c, "GET /x HTTP/1.1\r\nHost: app.test\r\n\r\n");
    upstream_take_request(head, sizeof(head), 0);
    close(up_fd);
    up_fd = -1;
    assert_int_equal(client_response(c, &r), 0);
    assert_int_equal(r.status, 502);
    assert_non_null(strstr(r.body, "\"bad_gateway\""));
    client_close(c);
    live_stop();
    assert_int_equal(live_log(lines, 2), 1);
    assert_int_equal(json_integer_value(json_object_get(lines[0], "status")), 502);
    assert_non_null(log_str(lines[0], "error"));
    live_log_free(lines, 1);
}

static void test_truncated_body(void **state)
{
    static const char head_out[] = "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n";
    struct client *c = client_open();
    struct response r;
    char head[4096];
    json_t *lines[2];

    client_send(c, "GET /big HTTP/1.1\r\nHost: app.test\r\n\r\n");
    upstream_take_request(head, sizeof(head), 0);
    upstream_send(head_out);
    upstream_send("0123456789");
    close(up_fd);
    up_fd = -1;
    /* The head and the ten bytes come, then the connection ends: the
     * client never sees a complete response it could take for the whole. */
    assert_int_equal(client_response(c, &r), -1);
    assert_true(c->eof);
    assert_true(c->len > 10);
    assert_int_equal(h1_head_end(c->buf, c->len), (ssize_t)(c->len - 10));
    assert_memory_equal(c->buf + c->len - 10, "0123456789", 10);
    assert_non_null(strstr(c->buf, "HTTP/1.1 200 OK\r\n"));
    client_close(c);
    live_stop();
    assert_int_equal(live_log(lines, 2), 1);
    assert_int_equal(json_integer_value(json_object_get(lines[0], "status")), 200);
    assert_string_equal(log_str(lines[0], "error"), "upstream response truncated");
    live_log_free(lines, 1);
}

static void test_request_body_forwarded(void **state)
{
    struct client *c = client_open();
    struct response r;
    char head[4096];

    client_send(c, "POST /form HTTP/1.1\r\nHost: app.test\r\nContent-Length: 7\r\n\r\nabc");
    client_send(c, "defg");
    upstream_take_request(head, sizeof(head), 7);
    assert_non_null(strstr(head, "POST /form HTTP/1.1\r\n"));
    assert_non_null(strstr(head, "\r\nContent-Length: 7\r\n"));
    assert_string_equal(strstr(head, "\r\n\r\n") + 4, "abcdefg");
    upstream_send("HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok");
    assert_int_equal(client_response(c, &r), 0);
    assert_int_equal(r.status, 201);
    assert_string_equal(r.body, "ok");
}

/* A HEAD's response has no body, whatever its Content-Length says: the
 * next response on the same connections is read from the right place. */
static void test_head_response(void **state)
{
    struct client *c = client_open();
    struct response r;
    char head[4096];

    client_send(c, "HEAD /h HTTP/1.1\r\nHost: app.test\r\n\r\n");
    upstream_take_request(head, sizeof(head), 0);
    upstream_send("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n");
    client_send(c, "GET /g HTTP/1.1\r\nHost: app.test\r\n\r\n");
    upstream_read_request(head, sizeof(head), 0); /* on the pooled connection */
    assert_non_null(strstr(head, "GET /g HTTP/1.1\r\n"));
    upstream_send("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello");
    /* Both answers as they came: HEAD's head alone, then the GET's. */
    while (memmem(c->buf, c->len, "hello", 5) == NULL)
        assert_true(client_read(c) > 0);
    ssize_t end = h1_head_end(c->buf, c->len);
    assert_true(end > 0);
    assert_memory_equal(c->buf, "HTTP/1.1 200 OK\r\n", 17);
    assert_non_null(memmem(c->buf, (size_t)end, "\r\nContent-Length: 5\r\n", 21));
    c->len -= (size_t)end;
    memmove(c->buf, c->buf + end, c->len);
    assert_int_equal(client_response(c, &r), 0);
    assert_int_equal(r.status, 200);
    assert_string_equal(r.body, "hello");
    assert_int_equal(c->len, 0);
}

/* A pooled connection the upstream closed without answering is retried
 * once on a fresh one: the client never sees the stale link. */
static void test_stale_pooled_retried(void **state)
{
    struct client *c = client_open();
    struct response r;
    char head[4096];
    json_t *lines[3];

    client_send(c, "GET /1 HTTP/1.1\r\nHost: app.test\r\n\r\n");
    upstream_take_request(head, sizeof(head), 0);
    upstream_send("HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n1");
    assert_int_equal(client_response(c, &r), 0);
    client_send(c, "GET /2 HTTP/1.1\r\nHost: app.test\r\n\r\n");
    upstream_read_request(head, sizeof(head), 0); /* on the pooled connection */
    assert_non_null(strstr(head, "GET /2 HTTP/1.1\r\n"));
    close(up_fd);
    upstream_take_request(head, sizeof(head), 0); /* the retry, fresh */
    assert_non_null(strstr(head, "GET /2 HTTP/1.1\r\n"));
    upstream_send("HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n2");
    assert_int_equal(client_response(c, &r), 0);
    assert_int_equal(r.status, 200);
    assert_string_equal(r.body, "2");
    client_close(c);
    live_stop();
    assert_int_equal(live_log(lines, 3), 2);
    assert_int_equal(json_integer_value(json_object_get(lines[1], "status")), 200);
    assert_null(log_str(lines[1], "error"));
    live_log_free(lines, 2);
}

#define T(f) cmocka_unit_test_setup_teardown(f, setup, teardown)

int main(void)
{
    const struct CMUnitTest tests[] = {
        T(test_relayed),        T(test_closed_before_head),
        T(test_truncated_body), T(test_request_body_forwarded),
        T(test_head_response),  T(test_stale_pooled_retried),
    };

    return cmocka_run_group_tests(tests, live_group_setup, live_group_teardown);
}
