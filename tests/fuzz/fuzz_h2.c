/*
 * fuzz_h2.c - libFuzzer target for the HTTP/2 session glue (h2.c): the bytes
 * a client sends after the connection preface, read by flowgate's nghttp2
 * server session and the streams it turns into requests of the engine.
 *
 * Input: the first byte chooses how the rest is cut into writes (0: all at
 * once, else pieces of 16 to 4080 bytes: frames split across reads, without
 * a loop round per byte); the rest is what follows the
 * preface, which the target sends itself so that mutations spend their
 * effort on frames.
 *
 * One worker is built once: a route to an upstream on a loopback port
 * nothing listens on (a forwarded request meets a refused connect and its
 * 502 goes back through the session) for GET, HEAD and POST, so other
 * methods get flowgate's own 405. Each input gets a fresh connection over a
 * socketpair, taken over by the worker as an accepted socket would be and
 * switched to HTTP/2 as ALPN switches it after a TLS handshake (the
 * connection is marked TLS so that requests are served, not redirected).
 * The worker's loop runs without blocking between writes and what flowgate
 * sends is read and dropped, so answers go out while the client keeps
 * sending, as on a real socket. At the end the client closes and every
 * connection must be gone: a connection that outlives its client is a leak
 * the target traps on, besides what ASan, UBSan and LeakSanitizer report.
 */
#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <event2/event.h>

#include "cfg.h"
#include "conn.h"
#include "h2.h"
#include "log.h"
#include "worker.h"

#define ROUNDS_TO_CLOSE 64 /* loop rounds a closed client's connection gets to go */

static const uint8_t preface[] = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

static struct worker fz_w;
static struct fg_config *fz_cfg;
static struct listener fz_listener;

/* A loopback port nothing listened on a moment ago. */
static int free_port(void)
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof(a);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    int port = -1;

    if (fd >= 0 && bind(fd, (struct sockaddr *)&a, sizeof(a)) == 0 &&
        getsockname(fd, (struct sockaddr *)&a, &len) == 0)
        port = ntohs(a.sin_port);
    if (fd >= 0)
        close(fd);
    return port;
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    char text[2048], err[2048];
    int listen_port = free_port(), dead_port = free_port();

    signal(SIGPIPE, SIG_IGN);
    if (listen_port < 0 || dead_port < 0)
        abort();
    /* The listener only satisfies the configuration: connections come
     * from socketpairs handed to conn_accept. */
    snprintf(text, sizeof(text),
             "listen: { https = [ ]; http = [ \"127.0.0.1:%d\" ]; admin = \"\"; };\n"
             "upstreams: { api = { servers = [ \"127.0.0.1:%d\" ]; max_tries = 1; }; };\n"
             "routes = ( { host = \"\"; path = \"/\"; upstream = \"api\"; auth = \"none\";\n"
             "             methods = [ \"GET\", \"HEAD\", \"POST\" ]; } );\n"
             "http2: { max_concurrent_streams = 16; max_header_list_bytes = 4096; };\n"
             "log: { access = \"\"; error = \"/dev/null\"; level = \"error\"; };\n",
             listen_port, dead_port);
    fz_cfg = cfg_load_string(text, "fuzz_h2.conf", err, sizeof(err));
    if (fz_cfg == NULL || log_open(&fz_cfg->log, err, sizeof(err)) < 0 ||
        worker_init(&fz_w, 0, fz_cfg, NULL, err, sizeof(err)) < 0) {
        fprintf(stderr, "fuzz_h2: %s\n", err);
        abort();
    }
    fz_listener =
        (struct listener){.w = &fz_w, .fd = -1, .kind = LISTENER_HTTP, .port = listen_port};
    return 0;
}

/* Run what became ready in the worker, dropping what flowgate sent to FD. */
static void run_loop(int fd)
{
    char sink[65536];

    for (int i = 0; i < 4; i++) {
        event_base_loop(fz_w.base, EVLOOP_NONBLOCK);
        while (fd >= 0 && recv(fd, sink, sizeof(sink), MSG_DONTWAIT) > 0)
            ;
    }
}

/* Write DATA[0..LEN) to FD, letting the worker read while the socket is full. */
static int client_write(int fd, const uint8_t *data, size_t len)
{
    while (len > 0) {
        ssize_t n = send(fd, data, len, MSG_DONTWAIT | MSG_NOSIGNAL);
        if (n < 0 && errno != EAGAIN && errno != EINTR)
            return -1; /* flowgate closed the connection */
        if (n > 0) {
            data += n;
            len -= (size_t)n;
        }
        run_loop(fd);
    }
    return 0;
}

/* A connection on a socketpair, switched to HTTP/2; the client's end, or -1. */
static int h2_connection(void)
{
    struct sockaddr_in peer = {
        .sin_family = AF_INET, .sin_port = htons(40000), .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    int sv[2];

    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) < 0)
        return -1;
    __atomic_add_fetch(&worker_nconns, 1, __ATOMIC_RELAXED); /* as the listener counts it */
    conn_accept(&fz_listener, sv[0], (struct sockaddr *)&peer, sizeof(peer));
    struct conn *c = fz_w.conns; /* conn_accept puts the new connection first */
    if (c == NULL || c->fd != sv[0]) {
        close(sv[1]);
        return -1;
    }
    c->tls = true;
    if (h2_start(c) < 0)
        conn_close(c, false);
    return sv[1];
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    size_t piece = size > 0 && data[0] != 0 ? (size_t)data[0] * 16 : SIZE_MAX;
    int fd = h2_connection();

    if (fd < 0)
        return 0;
    if (size > 0) {
        data++;
        size--;
    }
    if (client_write(fd, preface, sizeof(preface) - 1) == 0) {
        while (size > 0) {
            size_t n = size < piece ? size : piece;
            if (client_write(fd, data, n) < 0)
                break;
            data += n;
            size -= n;
        }
    }
    run_loop(fd);
    close(fd);
    for (int i = 0; i < ROUNDS_TO_CLOSE && fz_w.conns != NULL; i++)
        run_loop(-1);
    if (fz_w.conns != NULL)
        __builtin_trap(); /* the client is gone, its connection is not */
    return 0;
}
