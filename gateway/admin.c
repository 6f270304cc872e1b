/*
 * admin.c - /healthz, /readyz and /metrics on the admin address.
 *
 * Tiny by design: one request per connection, answered and closed. Counters
 * are per-worker and summed on scrape (relaxed atomic loads: a scrape may be
 * a few requests behind, never torn). The listener lives until the process
 * exits, so a stop is seen by probes as /readyz turning 503.
 */
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/listener.h>

#include "admin.h"
#include "h1.h"
#include "stage.h"
#include "tls.h"
#include "worker.h"

#define ADMIN_HEAD_MAX 8192

struct admin_conn;

struct admin {
    const struct admin_state *st;
    struct evconnlistener *lev;
    struct worker *workers;
    unsigned nworkers;
    enum admin_phase phase;   /* what /readyz answers */
    struct admin_conn *conns; /* open connections: admin_stop frees those a probe left */
};

struct admin_conn {
    struct bufferevent *bev; /* owns the socket */
    struct admin *a;
    struct admin_conn *prev, *next;
};

static void reply(struct bufferevent *bev, int status, const char *ctype, const char *body)
{
    const char *reason = status == 200   ? "OK"
                         : status == 404 ? "Not Found"
                         : status == 503 ? "Service Unavailable"
                                         : "Bad Request";

    evbuffer_add_printf(bufferevent_get_output(bev),
                        "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n"
                        "Cache-Control: no-store\r\nConnection: close\r\n\r\n%s",
                        status, reason, ctype, strlen(body), body);
}

static uint64_t sum(const struct admin *a, size_t offset)
{
    uint64_t total = 0;

    for (unsigned i = 0; i < a->nworkers; i++) {
        const uint64_t *p = (const uint64_t *)((const char *)&a->workers[i].stats + offset);
        total += __atomic_load_n(p, __ATOMIC_RELAXED);
    }
    return total;
}

/* A Prometheus label value: backslash, quote and newline escaped, cut to fit. */
static void label_escape(const char *s, char *out, size_t cap)
{
    size_t n = 0;

    for (; *s && n + 3 < cap; s++) {
        if (*s == '\\' || *s == '"' || *s == '\n') {
            out[n++] = '\\';
            out[n++] = *s == '\n' ? 'n' : *s;
        } else {
            out[n++] = *s;
        }
    }
    out[n] = '\0';
}

#define APPEND(...)                                                                                \
    (len += (size_t)snprintf(out + (len < cap ? len : cap), len < cap ? cap - len : 0, __VA_ARGS__))

/* The configuration in force and how reloads went; each certificate's
 * notAfter, so an alert can fire before a renewal that silently failed
 * lets one expire. */
static size_t reload_metrics(const struct admin *a, char *out, size_t cap)
{
    const struct admin_state *st = a->st;
    size_t len = 0;

    APPEND("# TYPE flowgate_config_generation gauge\nflowgate_config_generation %llu\n"
           "# TYPE flowgate_config_reloads_total counter\n"
           "flowgate_config_reloads_total{result=\"ok\"} %llu\n"
           "flowgate_config_reloads_total{result=\"failed\"} %llu\n"
           "# TYPE flowgate_config_last_reload_success_timestamp_seconds gauge\n"
           "flowgate_config_last_reload_success_timestamp_seconds %.3f\n",
           (unsigned long long)st->generation, (unsigned long long)st->reloads_ok,
           (unsigned long long)st->reloads_failed, st->last_reload_ok);
    APPEND("# TYPE flowgate_worker_config_generation gauge\n");
    for (unsigned i = 0; i < a->nworkers; i++)
        APPEND("flowgate_worker_config_generation{worker=\"%u\"} %llu\n", i,
               (unsigned long long)__atomic_load_n(&a->workers[i].generation, __ATOMIC_ACQUIRE));
    APPEND("# TYPE flowgate_tls_certificate_expiry_timestamp_seconds gauge\n");
    for (size_t i = 0; st->tls != NULL && i < tls_ncerts(st->tls) && i < st->cfg->tls.ncerts; i++) {
        char label[512];
        label_escape(st->cfg->tls.certs[i].cert_file, label, sizeof(label));
        APPEND("flowgate_tls_certificate_expiry_timestamp_seconds{certificate=\"%s\"} %lld\n",
               label, (long long)tls_cert_not_after(st->tls, i));
    }
    return len;
}

static void metrics(struct admin *a, struct bufferevent *bev)
{
    char body[16384];

    int n = snprintf(body, sizeof(body),
             "# TYPE flowgate_connections_open gauge\n"
             "flowgate_connections_open %d\n"
             "# TYPE flowgate_connections_accepted_total counter\n"
             "flowgate_connections_accepted_total %llu\n"
             "# TYPE flowgate_requests_finished_total counter\n"
             "flowgate_requests_finished_total %llu\n"
             "# TYPE flowgate_upstream_errors_total counter\n"
             "flowgate_upstream_errors_total %llu\n"
             "# TYPE flowgate_tls_handshakes_total counter\n"
             "flowgate_tls_handshakes_total %llu\n"
             "# TYPE flowgate_tls_handshake_failures_total counter\n"
             "flowgate_tls_handshake_failures_total %llu\n",
             __atomic_load_n(&worker_nconns, __ATOMIC_RELAXED),
             (unsigned long long)sum(a, offsetof(struct worker_stats, accepted)),
             (unsigned long long)sum(a, offsetof(struct worker_stats, requests)),
             (unsigned long long)sum(a, offsetof(struct worker_stats, upstream_errors)),
             (unsigned long long)sum(a, offsetof(struct worker_stats, tls_handshakes)),
             (unsigned long long)sum(a, offsetof(struct worker_stats, tls_failures)));
    size_t len = (size_t)n;
    struct evbuffer *eb = evbuffer_new();
    for (const struct stage *const *s = stage_table; eb && *s; s++)
        if ((*s)->metrics)
            (*s)->metrics(a->st->cfg, a->workers, a->nworkers, eb);
    if (eb && len < sizeof(body))
        len += evbuffer_remove(eb, body + len, sizeof(body) - 1 - len);
    body[len] = '\0';
    evbuffer_free(eb);
    if (len < sizeof(body))
        reload_metrics(a, body + len, sizeof(body) - len);
    reply(bev, 200, "text/plain; version=0.0.4", body);
}

/* Ready once listening with a configuration, until a stop begins: from
 * SIGTERM on it is 503, while the listeners still accept for
 * shutdown_delay_ms, so a load balancer stops sending before they close.
 * Redis's state is reported but does not decide readiness: every instance
 * shares the one Redis, so taking instances out of rotation could not route
 * around it, and each mode has a defined answer without it (local limits,
 * admit, or 503 unavailable). */
static void readyz(struct admin *a, struct bufferevent *bev)
{
    bool ready = a->phase == ADMIN_SERVING;
    char body[512];
    int n = snprintf(body, sizeof(body), "{\"status\":\"%s\",\"listeners\":\"%s\"",
                     ready ? "ready" : "draining", a->phase == ADMIN_STOPPING ? "closed" : "up");

    /* The dependencies the stages report (Redis), for the operator's eye. */
    for (const struct stage *const *s = stage_table; *s; s++)
        if ((*s)->health && n > 0 && (size_t)n < sizeof(body))
            n += snprintf(body + n, sizeof(body) - (size_t)n, ",\"%s\":\"%s\"",
                          (*s)->health_name, (*s)->health(a->st->cfg, a->workers, a->nworkers));
    if (n > 0 && (size_t)n < sizeof(body) - 1)
        memcpy(body + n, "}", 2);
    reply(bev, ready ? 200 : 503, "application/json", body);
}

static void route(struct admin *a, struct bufferevent *bev, const struct h1_request *h)
{
    if (h1_token_eq(h->path, h->path_len, "/healthz"))
        reply(bev, 200, "application/json", "{\"status\":\"ok\"}");
    else if (h1_token_eq(h->path, h->path_len, "/readyz"))
        readyz(a, bev);
    else if (h1_token_eq(h->path, h->path_len, "/metrics"))
        metrics(a, bev);
    else
        reply(bev, 404, "application/json", "{\"error\":\"not_found\"}");
}

static void admin_conn_free(struct admin_conn *ac)
{
    if (ac->prev)
        ac->prev->next = ac->next;
    else
        ac->a->conns = ac->next;
    if (ac->next)
        ac->next->prev = ac->prev;
    bufferevent_free(ac->bev);
    free(ac);
}

static void admin_write_cb(struct bufferevent *bev, void *arg)
{
    if (evbuffer_get_length(bufferevent_get_output(bev)) == 0)
        admin_conn_free(arg);
}

static void admin_event_cb(struct bufferevent *bev, short what, void *arg)
{
    if (what & (BEV_EVENT_EOF | BEV_EVENT_ERROR | BEV_EVENT_TIMEOUT))
        admin_conn_free(arg);
}

static void admin_read_cb(struct bufferevent *bev, void *arg)
{
    struct admin_conn *ac = arg;
    struct evbuffer *in = bufferevent_get_input(bev);
    size_t len = evbuffer_get_length(in);
    size_t n = len < ADMIN_HEAD_MAX ? len : ADMIN_HEAD_MAX;
    const char *data = (const char *)evbuffer_pullup(in, (ssize_t)n);
    ssize_t end = h1_head_end(data, n);

    if (end == -2 && len < ADMIN_HEAD_MAX)
        return;
    struct h1_header hdrs[64];
    struct h1_request h;
    memset(&h, 0, sizeof(h));
    h.headers = hdrs;
    h.max_headers = 64;
    if (end < 0 || h1_parse_request(&h, data, (size_t)end, false) != H1_OK)
        reply(bev, 400, "application/json", "{\"error\":\"bad_request\"}");
    else
        route(ac->a, bev, &h);
    bufferevent_disable(bev, EV_READ);
    bufferevent_setcb(bev, NULL, admin_write_cb, admin_event_cb, arg);
}

static void admin_accept_cb(struct evconnlistener *lev, evutil_socket_t fd, struct sockaddr *sa,
                            int salen, void *arg)
{
    struct admin *a = arg;
    struct admin_conn *ac = calloc(1, sizeof(*ac));
    struct bufferevent *bev =
        ac ? bufferevent_socket_new(evconnlistener_get_base(lev), fd, BEV_OPT_CLOSE_ON_FREE) : NULL;
    struct timeval tv = {.tv_sec = 5, .tv_usec = 0};

    if (bev == NULL) {
        free(ac);
        close(fd);
        return;
    }
    ac->bev = bev;
    ac->a = a;
    ac->next = a->conns;
    if (a->conns)
        a->conns->prev = ac;
    a->conns = ac;
    bufferevent_setcb(bev, admin_read_cb, NULL, admin_event_cb, ac);
    bufferevent_set_timeouts(bev, &tv, &tv);
    bufferevent_enable(bev, EV_READ | EV_WRITE);
}

struct admin *admin_start(struct event_base *base, const struct fg_sockaddr *addr,
                          const struct admin_state *st, struct worker *workers, unsigned nworkers,
                          char *err, size_t errlen)
{
    struct admin *a = calloc(1, sizeof(*a));

    if (a == NULL)
        return NULL;
    a->st = st;
    a->workers = workers;
    a->nworkers = nworkers;
    a->lev = evconnlistener_new_bind(base, admin_accept_cb, a,
                                     LEV_OPT_CLOSE_ON_FREE | LEV_OPT_REUSEABLE |
                                         LEV_OPT_CLOSE_ON_EXEC,
                                     128, (const struct sockaddr *)&addr->ss, (int)addr->len);
    if (a->lev == NULL) {
        snprintf(err, errlen, "admin listen %s: cannot bind", addr->text);
        free(a);
        return NULL;
    }
    return a;
}

void admin_set_phase(struct admin *a, enum admin_phase p)
{
    if (a)
        a->phase = p;
}

void admin_stop(struct admin *a)
{
    if (a == NULL)
        return;
    evconnlistener_free(a->lev);
    while (a->conns)
        admin_conn_free(a->conns);
    free(a);
}
