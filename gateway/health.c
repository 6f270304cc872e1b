/*
 * health.c - active health checks, on main's loop.
 *
 * Why main's loop rather than every worker or worker 0: a check must happen
 * once per interval whatever the number of workers, and main's loop only
 * runs signals, reloads and the admin listener, so a slow or hanging check
 * never sits between a worker and its clients. Reloads also happen on this
 * thread, so the checker swaps configurations with no lock.
 *
 * Why the verdict lives in the snapshot (struct fg_server_health) while the
 * rest lives here: a worker's server choice reaches its upstream's flags
 * through the configuration it already holds, with no lookup; what must
 * survive a reload (the run of results, the counters, whether the server is
 * down) is kept here, in entries named by upstream and server address, and
 * written into each new snapshot's flags before the workers are handed it.
 *
 * One server, one entry, one timer (the timer is the wait for the next
 * check, then the check's deadline):
 *
 *   WAIT --interval_ms--> CHECKING --status line / close / error / deadline--> WAIT
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "health.h"
#include "io.h"
#include "log.h"
#include "metrics.h"

#define HEALTH_LINE_MAX 512 /* a status line longer than this is no status line */

struct health_server {
    struct health *h;
    char *upstream;                  /* its upstream's name (owned): half of its key */
    char *server;                    /* its address as written (owned): the other half */
    struct fg_upstream *u;           /* in h->cfg */
    size_t index;                    /* the server's position in u->servers */
    struct io *io;                   /* the check in flight; NULL while waiting */
    struct event *timer;             /* next check while waiting, deadline while checking */
    uint32_t fails, passes;          /* consecutive results; one of them is 0 */
    bool down;                       /* the verdict, as written into u->health[index] */
    bool taken;                      /* health_apply: kept for the next configuration */
    uint64_t results[HEALTH__COUNT]; /* checks by result, since the server was first listed */
};

struct health {
    struct event_base *base; /* main's loop */
    struct fg_config *cfg;   /* the snapshot checked (a reference); NULL before the first */
    struct health_server **servers;
    size_t n;
};

const char *health_result_str(enum health_result r)
{
    switch (r) {
    case HEALTH_PASS: return "pass";
    case HEALTH_STATUS: return "status";
    case HEALTH_TIMEOUT: return "timeout";
    case HEALTH_REFUSED: return "refused";
    case HEALTH_BAD_RESPONSE: return "bad_response";
    case HEALTH_ERROR: return "error";
    case HEALTH__COUNT: break;
    }
    return "?";
}

/* status-line = HTTP-version SP status-code SP [ reason-phrase ] CRLF
 * (RFC 9112 section 4); HTTP/1.0 and 1.1 only, a missing reason tolerated. */
enum health_result health_parse_status(const char *line, size_t len)
{
    if (len > 0 && line[len - 1] == '\r')
        len--;
    if (len < 12 || memcmp(line, "HTTP/1.", 7) != 0 || (line[7] != '0' && line[7] != '1') ||
        line[8] != ' ' || (len > 12 && line[12] != ' '))
        return HEALTH_BAD_RESPONSE;
    for (size_t i = 9; i < 12; i++)
        if (line[i] < '0' || line[i] > '9')
            return HEALTH_BAD_RESPONSE;
    if (line[9] < '1' || line[9] > '5')
        return HEALTH_BAD_RESPONSE;
    return line[9] == '2' ? HEALTH_PASS : HEALTH_STATUS;
}

static struct timeval ms_tv(uint32_t ms)
{
    struct timeval tv = {.tv_sec = ms / 1000, .tv_usec = (ms % 1000) * 1000};
    return tv;
}

/* Write the verdict where the workers read it. */
static void server_mark(struct health_server *s, bool down)
{
    s->down = down;
    __atomic_store_n(&s->u->health[s->index].down, (uint8_t)down, __ATOMIC_RELAXED);
    if (down)
        __atomic_add_fetch(&s->u->health_ndown, 1, __ATOMIC_RELAXED);
    else
        __atomic_sub_fetch(&s->u->health_ndown, 1, __ATOMIC_RELAXED);
}

/* Drop the check in flight, if any. */
static void check_cancel(struct health_server *s)
{
    if (s->io != NULL) {
        io_free(s->io);
        s->io = NULL;
    }
    event_del(s->timer);
}

/* One check ended with R: count it, move the verdict at fall or rise, and
 * wait for the next. Safe inside the io's callbacks (io_free is). */
static void check_end(struct health_server *s, enum health_result r)
{
    const struct fg_health_check *hc = s->u->health_check;

    check_cancel(s);
    s->results[r]++;
    if (r == HEALTH_PASS) {
        s->fails = 0;
        if (s->passes < UINT32_MAX)
            s->passes++;
        if (s->down && s->passes >= hc->rise) {
            server_mark(s, false);
            log_info("upstream %s: server %s healthy again (%u checks passed)", s->upstream,
                     s->server, s->passes);
        }
    } else {
        s->passes = 0;
        if (s->fails < UINT32_MAX)
            s->fails++;
        if (!s->down && s->fails >= hc->fall) {
            server_mark(s, true);
            log_warn("upstream %s: server %s unhealthy (%u checks failed, last: %s)", s->upstream,
                     s->server, s->fails, health_result_str(r));
        }
    }
    struct timeval tv = ms_tv(hc->interval_ms);
    evtimer_add(s->timer, &tv);
}

/* Decide on the first line of the response once it is whole; ENDED: nothing
 * more will come. */
static void check_input(struct health_server *s, bool ended)
{
    struct evbuffer *in = s->io->in;
    size_t len = evbuffer_get_length(in);
    size_t n = len < HEALTH_LINE_MAX ? len : HEALTH_LINE_MAX;
    const char *p = n ? (const char *)evbuffer_pullup(in, (ev_ssize_t)n) : NULL;
    const char *eol = p ? memchr(p, '\n', n) : NULL;

    if (eol != NULL)
        check_end(s, health_parse_status(p, (size_t)(eol - p)));
    else if (ended || len >= HEALTH_LINE_MAX)
        check_end(s, HEALTH_BAD_RESPONSE);
}

static void check_read_cb(struct io *io, void *arg)
{
    check_input(arg, false);
}

/* Host is the server's address (RFC 9112 section 3.2); Connection: close,
 * so the server never keeps a socket for the checker. */
static void check_send(struct health_server *s)
{
    const struct fg_health_check *hc = s->u->health_check;

    if (evbuffer_add_printf(s->io->out,
                            "GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n"
                            "User-Agent: flowgate-health-check\r\n\r\n",
                            hc->path, s->server) < 0) {
        check_end(s, HEALTH_ERROR);
        return;
    }
    io_enable_read(s->io);
    io_flush(s->io);
}

static void check_event_cb(struct io *io, int what, void *arg)
{
    struct health_server *s = arg;

    if (what & IO_CONNECTED)
        check_send(s);
    else if (io->phase == IO_PHASE_CONNECTING)
        check_end(s, io->err == ECONNREFUSED ? HEALTH_REFUSED : HEALTH_ERROR);
    else if (what & IO_EOF)
        check_input(s, true);
    else
        check_end(s, HEALTH_ERROR);
}

static void check_start(struct health_server *s)
{
    const struct fg_sockaddr *sa = &s->u->servers[s->index];
    struct timeval tv = ms_tv(s->u->health_check->timeout_ms);

    if (sa->host != NULL)
        return; /* a name: its addresses live in each worker's pool, not checked here */
    s->io = io_connect(s->h->base, (const struct sockaddr *)&sa->ss, sa->len);
    if (s->io == NULL) {
        check_end(s, errno == ECONNREFUSED ? HEALTH_REFUSED : HEALTH_ERROR);
        return;
    }
    io_setcb(s->io, check_read_cb, NULL, check_event_cb, s);
    evtimer_add(s->timer, &tv);
}

static void check_timer_cb(evutil_socket_t fd, short what, void *arg)
{
    struct health_server *s = arg;

    if (s->io == NULL)
        check_start(s);
    else
        check_end(s, HEALTH_TIMEOUT);
}

static void server_free(struct health_server *s)
{
    if (s == NULL)
        return;
    if (s->io != NULL)
        io_free(s->io);
    if (s->timer != NULL)
        event_free(s->timer);
    free(s->upstream);
    free(s->server);
    free(s);
}

static struct health_server *server_new(struct health *h, const char *upstream, const char *server)
{
    struct health_server *s = calloc(1, sizeof(*s));

    if (s == NULL)
        return NULL;
    s->h = h;
    s->upstream = strdup(upstream);
    s->server = strdup(server);
    s->timer = evtimer_new(h->base, check_timer_cb, s);
    if (s->upstream == NULL || s->server == NULL || s->timer == NULL) {
        server_free(s);
        return NULL;
    }
    return s;
}

struct health *health_new(struct event_base *base)
{
    struct health *h = calloc(1, sizeof(*h));

    if (h != NULL)
        h->base = base;
    return h;
}

/* The servers CFG checks: one per server of each upstream with a health_check. */
static size_t count_checked(const struct fg_config *cfg)
{
    size_t n = 0;

    for (size_t i = 0; i < cfg->nupstreams; i++)
        if (cfg->upstreams[i].health_check != NULL)
            n += cfg->upstreams[i].nservers;
    return n;
}

/* The entry of the previous configuration for UPSTREAM's SERVER not yet
 * taken by another, taking it; NULL when none. */
static struct health_server *take_old(struct health *h, const char *upstream, const char *server)
{
    for (size_t i = 0; i < h->n; i++) {
        struct health_server *s = h->servers[i];
        if (!s->taken && strcmp(s->upstream, upstream) == 0 && strcmp(s->server, server) == 0) {
            s->taken = true;
            return s;
        }
    }
    return NULL;
}

/* Every entry CFG needs (N of them), old ones taken over first; NULL when
 * out of memory, the old entries then as they were. */
static struct health_server **build(struct health *h, struct fg_config *cfg, size_t n)
{
    struct health_server **next = calloc(n ? n : 1, sizeof(*next));
    size_t k = 0;

    for (size_t i = 0; next != NULL && i < cfg->nupstreams; i++) {
        const struct fg_upstream *u = &cfg->upstreams[i];
        for (size_t j = 0; u->health_check != NULL && j < u->nservers; j++) {
            const char *text = u->servers[j].text;
            if ((next[k] = take_old(h, u->name, text)) == NULL &&
                (next[k] = server_new(h, u->name, text)) == NULL)
                goto fail;
            k++;
        }
    }
    return next;
fail:
    for (size_t m = 0; m < k; m++)
        if (!next[m]->taken)
            server_free(next[m]);
    for (size_t i = 0; i < h->n; i++)
        h->servers[i]->taken = false;
    free(next);
    return NULL;
}

/* Point S at server J of U (CFG's) and carry its verdict into U's flags. */
static void server_bind(struct health_server *s, struct fg_upstream *u, size_t j)
{
    check_cancel(s);
    s->taken = false;
    s->u = u;
    s->index = j;
    if (s->down) {
        __atomic_store_n(&u->health[j].down, 1, __ATOMIC_RELAXED);
        __atomic_add_fetch(&u->health_ndown, 1, __ATOMIC_RELAXED);
    }
}

int health_apply(struct health *h, struct fg_config *cfg)
{
    size_t n = count_checked(cfg);
    struct health_server **next = build(h, cfg, n);
    size_t k = 0;

    if (next == NULL)
        return -1;
    for (size_t i = 0; i < h->n; i++)
        if (!h->servers[i]->taken)
            server_free(h->servers[i]); /* no longer listed */
    free(h->servers);
    h->servers = next;
    h->n = n;
    for (size_t i = 0; i < cfg->nupstreams; i++) {
        struct fg_upstream *u = &cfg->upstreams[i];
        for (size_t j = 0; u->health_check != NULL && j < u->nservers; j++)
            server_bind(h->servers[k++], u, j);
    }
    cfg_unref(h->cfg);
    h->cfg = cfg_ref(cfg);
    for (size_t i = 0; i < h->n; i++)
        event_active(h->servers[i]->timer, EV_TIMEOUT, 1);
    return 0;
}

void health_free(struct health *h)
{
    if (h == NULL)
        return;
    for (size_t i = 0; i < h->n; i++)
        server_free(h->servers[i]);
    free(h->servers);
    cfg_unref(h->cfg);
    free(h);
}

#define APPEND(...) evbuffer_add_printf(out, __VA_ARGS__)
#define FAMILY(name, type, help) APPEND("# HELP " name " " help "\n# TYPE " name " " type "\n")

static void put_labels(struct evbuffer *out, const struct health_server *s)
{
    APPEND("{upstream=\"");
    metrics_put_label(out, s->upstream);
    APPEND("\",server=\"");
    metrics_put_label(out, s->server);
    APPEND("\"");
}

void health_metrics(const struct health *h, struct evbuffer *out)
{
    if (h == NULL || h->n == 0)
        return;
    FAMILY("flowgate_upstream_server_healthy", "gauge",
           "Active health checks: 0 after fall failed checks in a row, 1 again after rise passed.");
    for (size_t i = 0; i < h->n; i++) {
        APPEND("flowgate_upstream_server_healthy");
        put_labels(out, h->servers[i]);
        APPEND("} %d\n", !h->servers[i]->down);
    }
    FAMILY("flowgate_upstream_health_checks_total", "counter",
           "Active health checks by upstream, server and result.");
    for (size_t i = 0; i < h->n; i++)
        for (int r = 0; r < HEALTH__COUNT; r++) {
            APPEND("flowgate_upstream_health_checks_total");
            put_labels(out, h->servers[i]);
            APPEND(",result=\"%s\"} %llu\n", health_result_str((enum health_result)r),
                   (unsigned long long)h->servers[i]->results[r]);
        }
}
