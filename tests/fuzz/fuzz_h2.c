/*
 * fuzz_h2.c - libFuzzer target for the HTTP/2 session glue (h2.c): the bytes
 * a client sends after the connection preface, read by flowgate's nghttp2
 * server session and the streams it turns into requests of the engine.
 *
 * Input: the first byte chooses how the rest is cut into reads (0: all at
 * once, else pieces of 16 to 4080 bytes: frames split across reads, without
 * a loop round per byte); the rest is what follows the preface, which the
 * target sends itself so that mutations spend their effort on frames.
 *
 * One worker is built once: a route to an upstream on a loopback port
 * nothing listens on (a forwarded request meets a refused connect and its
 * 502 goes back through the session) for GET, HEAD and POST, so other
 * methods get flowgate's own 405. Each input gets a fresh connection from
 * h2_fuzz_new (h2.h: a socketpair served as an https connection); the
 * worker's loop runs without blocking between pieces and what flowgate
 * sends is dropped, so answers go out while the client keeps sending, as on
 * a real socket. At the end the connection is closed and must be gone
 * within a few loop rounds: one that outlives its close is a leak the
 * target traps on, besides what ASan, UBSan and LeakSanitizer report.
 */
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <event2/event.h>

#include "cfg.h"
#include "h2.h"
#include "log.h"
#include "worker.h"

#define ROUNDS_TO_CLOSE 64 /* loop rounds a closed connection gets to be freed */

static const uint8_t preface[] = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

static struct worker fz_w;
static struct fg_config *fz_cfg;

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
     * from h2_fuzz_new's socketpairs. */
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
    return 0;
}

/* Loop rounds without blocking: what the last feed left ready runs. */
static void run_loop(void)
{
    for (int i = 0; i < 4; i++)
        event_base_loop(fz_w.base, EVLOOP_NONBLOCK);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    size_t piece = size > 0 && data[0] != 0 ? (size_t)data[0] * 16 : SIZE_MAX;
    struct h2_fuzz *f = h2_fuzz_new(&fz_w);

    if (f == NULL)
        return 0;
    if (size > 0) {
        data++;
        size--;
    }
    if (h2_fuzz_feed(f, preface, sizeof(preface) - 1) == 0) {
        while (size > 0) {
            size_t n = size < piece ? size : piece;
            if (h2_fuzz_feed(f, data, n) < 0)
                break;
            run_loop();
            data += n;
            size -= n;
        }
    }
    h2_fuzz_free(f);
    for (int i = 0; i < ROUNDS_TO_CLOSE && fz_w.conns != NULL; i++)
        run_loop();
    if (fz_w.conns != NULL)
        __builtin_trap(); /* closed, yet never freed */
    return 0;
}
