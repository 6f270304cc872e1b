/*
 * live.h - a real worker for the unit tests of the carrier and the proxy:
 * the gateway's own worker (worker_init) on its own thread with one TLS
 * listener on 127.0.0.1, certificates made by certs/gen-dev-certs.sh, the
 * access log in a temporary file, and a blocking TLS client driven by the
 * test's thread. Every wait is bounded (socket receive timeouts, a timed
 * join of the worker), so a test that goes wrong fails instead of hanging.
 *
 * Use live_group_setup / live_group_teardown as the cmocka group setup and
 * teardown, then live_start / live_stop around each test.
 */
#ifndef FG_TESTS_LIVE_H
#define FG_TESTS_LIVE_H

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <jansson.h>
#include <openssl/ssl.h>

#include "cfg.h"
#include "h1.h"
#include "log.h"
#include "stage.h"
#include "tls.h"
#include "worker.h"

#define LIVE_WAIT_S 10 /* longest any single wait of a test */

static char live_dir[256]; /* certificates, configuration, access log */
static char live_access[320];
static struct fg_config *live_cfg;
static struct tls_ctxset *live_tls;
static struct worker live_w;
static int live_port;
static bool live_running;
/* The stage table the next worker runs instead of stage_table (NULL: the
 * real one). The real stages' worker hooks still ran at worker_init. */
static const struct stage *const *live_stages;

static int live_group_setup(void **state)
{
    const char *script = getenv("FG_CERT_SCRIPT");
    char cmd[700];

    signal(SIGPIPE, SIG_IGN);
    snprintf(live_dir, sizeof(live_dir), "%s/fg-test-live-XXXXXX",
             getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
    if (mkdtemp(live_dir) == NULL)
        return -1;
    snprintf(cmd, sizeof(cmd), "sh %s %s >/dev/null", script ? script : "certs/gen-dev-certs.sh",
             live_dir);
    if (system(cmd) != 0)
        return -1;
    snprintf(live_access, sizeof(live_access), "%s/access.log", live_dir);
    return 0;
}

static int live_group_teardown(void **state)
{
    char cmd[400];

    log_close();
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", live_dir);
    return system(cmd) == 0 ? 0 : -1;
}

/* A port on 127.0.0.1 free a moment ago (the configuration wants one). */
static int live_free_port(void)
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof(a);
    int fd = socket(AF_INET, SOCK_STREAM, 0);

    if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof(a)) < 0 ||
        getsockname(fd, (struct sockaddr *)&a, &len) < 0) {
        if (fd >= 0)
            close(fd);
        return -1;
    }
    close(fd);
    return ntohs(a.sin_port);
}

/* Load the configuration: a TLS listener on PORT, the dev certificate, the
 * access log, and EXTRA (upstreams, routes, limits). */
static struct fg_config *live_config(int port, const char *extra)
{
    size_t cap = strlen(extra) + 2048;
    char *text = malloc(cap);
    char err[2048];

    if (text == NULL)
        return NULL;
    snprintf(
        text, cap,
        "listen: { https = [ \"127.0.0.1:%d\" ]; http = [ ]; admin = \"\"; };\n"
        "tls: { certificates = ( { cert = \"%s/server.crt\"; key = \"%s/server.key\"; } ); };\n"
        "log: { access = \"%s\"; error = \"stderr\"; level = \"error\"; };\n"
        "%s",
        port, live_dir, live_dir, live_access, extra);
    struct fg_config *cfg = cfg_load_string(text, "live.conf", err, sizeof(err));
    if (cfg == NULL)
        fprintf(stderr, "%s", err);
    free(text);
    return cfg;
}

/* Start a worker on the configuration EXTRA completes; its access log
 * starts empty. 0 or -1. */
static int live_start(const char *extra)
{
    char err[2048];

    if (truncate(live_access, 0) < 0 && errno != ENOENT)
        return -1;
    /* The port may be taken between the probe and the bind: try again. */
    for (int tries = 0; tries < 5; tries++) {
        live_port = live_free_port();
        if (live_port < 0 || (live_cfg = live_config(live_port, extra)) == NULL)
            return -1;
        if (log_open(&live_cfg->log, err, sizeof(err)) < 0 ||
            (live_tls = tls_build(live_cfg, NULL, err, sizeof(err))) == NULL) {
            fprintf(stderr, "%s\n", err);
            return -1;
        }
        if (worker_init(&live_w, 0, live_cfg, live_tls, err, sizeof(err)) == 0)
            break;
        worker_free(&live_w);
        tls_free(live_tls);
        cfg_unref(live_cfg);
        live_tls = NULL;
        live_cfg = NULL;
        if (strstr(err, "in use") == NULL) {
            fprintf(stderr, "%s\n", err);
            return -1;
        }
    }
    if (live_cfg == NULL)
        return -1;
    if (live_stages != NULL)
        live_w.stages = live_stages;
    if (worker_start(&live_w) < 0)
        return -1;
    live_running = true;
    return 0;
}

static void live_close_clients(void);

/* Stop the worker (gracefully, then for good after LIVE_WAIT_S) and free
 * everything: what it logs is all in the access log afterwards. Clients
 * still open are closed first. */
static void live_stop(void)
{
    struct timespec until;

    live_close_clients();
    if (!live_running)
        return;
    live_running = false;
    worker_stop(&live_w);
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += LIVE_WAIT_S;
    if (pthread_timedjoin_np(live_w.thread, NULL, &until) != 0) {
        worker_break(&live_w);
        worker_join(&live_w);
    }
    live_w.stages = stage_table; /* their worker_free: what their worker_init made */
    live_stages = NULL;
    worker_free(&live_w);
    tls_free(live_tls);
    cfg_unref(live_cfg);
    live_tls = NULL;
    live_cfg = NULL;
}

/* The access log's lines, parsed; the count. LINES gets up to MAX of them
 * (the caller decrefs). */
static size_t live_log(json_t **lines, size_t max)
{
    FILE *f = fopen(live_access, "r");
    char line[8192];
    size_t n = 0;

    if (f == NULL)
        return 0;
    while (fgets(line, sizeof(line), f)) {
        if (n < max) {
            lines[n] = json_loads(line, 0, NULL);
            if (lines[n] == NULL)
                fail_msg("not JSON: %s", line);
        }
        n++;
    }
    fclose(f);
    return n;
}

static void live_log_free(json_t **lines, size_t n)
{
    for (size_t i = 0; i < n; i++)
        json_decref(lines[i]);
}

/* ---- the client ------------------------------------------------------------ */

struct client {
    bool open;
    int fd;
    SSL_CTX *ctx;
    SSL *ssl;
    char buf[256 * 1024]; /* received, not yet taken */
    size_t len;
    bool eof; /* the server closed (close_notify or FIN) */
};

/* Seconds on a monotonic clock: the bound of a wait made of many reads. */
static time_t live_now(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec;
}

/* A socket with every receive bounded by LIVE_WAIT_S. */
static int live_socket(void)
{
    struct timeval tv = {.tv_sec = LIVE_WAIT_S};
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

    if (fd >= 0) {
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    }
    return fd;
}

/* Clients live here, not on a test's stack: a failed test jumps out of
 * its frame, and live_stop still closes them. */
static struct client live_clients[4];

/* A TLS connection to the worker, handshake done. */
static struct client *client_open(void)
{
    struct client *c = NULL;
    struct sockaddr_in a = {.sin_family = AF_INET,
                            .sin_port = htons((uint16_t)live_port),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};

    for (size_t i = 0; c == NULL && i < sizeof(live_clients) / sizeof(live_clients[0]); i++)
        if (!live_clients[i].open)
            c = &live_clients[i];
    assert_non_null(c);
    memset(c, 0, sizeof(*c));
    c->open = true;
    c->fd = live_socket();
    assert_true(c->fd >= 0);
    assert_int_equal(connect(c->fd, (struct sockaddr *)&a, sizeof(a)), 0);
    c->ctx = SSL_CTX_new(TLS_client_method());
    assert_non_null(c->ctx);
    /* The silent closes under test send no close_notify. */
    SSL_CTX_set_options(c->ctx, SSL_OP_IGNORE_UNEXPECTED_EOF);
    c->ssl = SSL_new(c->ctx);
    assert_non_null(c->ssl);
    SSL_set_fd(c->ssl, c->fd);
    SSL_set_tlsext_host_name(c->ssl, "localhost");
    assert_int_equal(SSL_connect(c->ssl), 1);
    return c;
}

static void client_close(struct client *c)
{
    if (!c->open)
        return;
    c->open = false;
    if (c->ssl)
        SSL_free(c->ssl);
    if (c->ctx)
        SSL_CTX_free(c->ctx);
    if (c->fd >= 0)
        close(c->fd);
    c->ssl = NULL;
    c->ctx = NULL;
    c->fd = -1;
}

static void live_close_clients(void)
{
    for (size_t i = 0; i < sizeof(live_clients) / sizeof(live_clients[0]); i++)
        client_close(&live_clients[i]);
}

static void client_send(struct client *c, const char *s)
{
    assert_int_equal(SSL_write(c->ssl, s, (int)strlen(s)), (int)strlen(s));
}

/* One read into the buffer: bytes read, 0 at EOF, -1 on a timeout or error. */
static int client_read(struct client *c)
{
    if (c->eof)
        return 0;
    assert_true(c->len < sizeof(c->buf));
    int n = SSL_read(c->ssl, c->buf + c->len, (int)(sizeof(c->buf) - c->len));
    if (n > 0) {
        c->len += (size_t)n;
        return n;
    }
    int e = SSL_get_error(c->ssl, n);
    if (e == SSL_ERROR_ZERO_RETURN || (e == SSL_ERROR_SYSCALL && errno == 0)) {
        c->eof = true;
        return 0;
    }
    return -1;
}

struct response {
    int status;
    char head[8192]; /* NUL-terminated */
    char body[65536];
    size_t body_len;
};

static bool resp_has(const struct response *r, const char *line)
{
    char want[512];

    snprintf(want, sizeof(want), "\r\n%s\r\n", line);
    return strstr(r->head, want) != NULL;
}

/* The next complete response (Content-Length framing, or none: no body)
 * taken from what the server sent: 0, or -1 when the connection ended or
 * went quiet before one was complete (what came stays in the buffer). */
static int client_response(struct client *c, struct response *r)
{
    time_t until = live_now() + LIVE_WAIT_S;

    for (;;) {
        ssize_t end = c->len ? h1_head_end(c->buf, c->len) : -2;
        assert_true(end != -1);
        if (end > 0) {
            assert_true((size_t)end < sizeof(r->head));
            memcpy(r->head, c->buf, (size_t)end);
            r->head[end] = '\0';
            const char *cl = strstr(r->head, "\r\nContent-Length: ");
            size_t body = cl ? (size_t)strtoul(cl + 18, NULL, 10) : 0;
            if (c->len >= (size_t)end + body) {
                assert_true(body < sizeof(r->body));
                assert_int_equal(sscanf(r->head, "HTTP/1.1 %d ", &r->status), 1);
                memcpy(r->body, c->buf + end, body);
                r->body[body] = '\0';
                r->body_len = body;
                c->len -= (size_t)end + body;
                memmove(c->buf, c->buf + end + body, c->len);
                return 0;
            }
        }
        if (live_now() > until || client_read(c) <= 0)
            return -1;
    }
}

/* Read until the server closes: true when it did, with nothing more sent. */
__attribute__((unused)) static bool client_eof(struct client *c)
{
    time_t until = live_now() + LIVE_WAIT_S;
    int n;

    /* A server that keeps sending never ends the wait by itself. */
    while ((n = client_read(c)) > 0 && live_now() <= until)
        ;
    return n == 0 && c->len == 0;
}

#endif
