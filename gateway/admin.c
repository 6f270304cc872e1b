/*
 * admin.c - /healthz, /readyz, /metrics and the status page on the admin
 * address.
 *
 * Tiny by design: one request per connection, answered and closed, on
 * flowgate's own socket layer (io.h), each exchange bounded in time and the
 * open connections in number. Counters are per-worker and summed on scrape
 * (relaxed atomic loads: a scrape may be a few requests behind, never torn).
 * The listener lives until the process exits, so a stop is seen by probes as
 * /readyz turning 503. The status page (/) reads /status.json, which is the
 * exposition itself as JSON (status.c) with the history sampled here.
 */
#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/socket.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <openssl/crypto.h>

#include "admin.h"
#include "h1.h"
#include "health.h"
#include "io.h"
#include "metrics.h"
#include "stage.h"
#include "status.h"
#include "tls.h"
#include "upstream.h"
#include "worker.h"

#ifndef FG_REVISION
#define FG_REVISION "unknown" /* the Makefile passes the source's git revision */
#endif

#define ADMIN_HEAD_MAX 8192

/* How long one admin exchange may last from accept, head to last byte: a
 * client that sends nothing, or trickles a head that never ends, is let go
 * after 10 s, far longer than any health checker or scraper needs. */
#define ADMIN_TIMEOUT_MS 10000

/* Admin connections open at once. At the cap the oldest is closed to take
 * the newest: a flood of idle connections holds bounded memory and cannot
 * starve the probe that comes after it. */
#define ADMIN_CONNS_MAX 64

/* How long accepting pauses when the process is out of descriptors
 * (the listening socket stays readable: retrying at once would spin). */
#define ADMIN_ACCEPT_PAUSE_MS 100

struct admin_conn;

struct admin {
    const struct admin_state *st;       /* main's, read at each request */
    struct event_base *base;            /* main's loop */
    int fd;                             /* the listening socket */
    struct event *accept_ev;            /* the listening socket is readable */
    struct event *resume_ev;            /* accept again after running out of descriptors */
    struct worker *workers;             /* their counters are summed on scrape */
    unsigned nworkers;                  /* how many */
    enum admin_phase phase;             /* what /readyz answers */
    struct admin_conn *newest, *oldest; /* open connections: admin_stop frees those a probe left */
    unsigned nconns;                    /* how many, at most ADMIN_CONNS_MAX */
    struct event *sample_ev;            /* every STATUS_SAMPLE_MS: a point of the history */
    struct status_history history;      /* request totals, for the status page's chart */
};

struct admin_conn {
    struct io *io;                    /* owns the socket */
    struct event timer;               /* ADMIN_TIMEOUT_MS from accept: frees the connection */
    struct admin *a;                  /* the listener it came from */
    struct admin_conn *newer, *older; /* in a's list, newest first */
    bool answered;                    /* the reply is in io->out: reading has stopped */
};

/* A reply's head, for a body of LEN bytes, on AC's output; EXTRA is more
 * header lines, each ending in CRLF. */
static void reply_head_with(struct admin_conn *ac, int status, const char *ctype, const char *extra,
                            size_t len)
{
    const char *reason = status == 200   ? "OK"
                         : status == 404 ? "Not Found"
                         : status == 503 ? "Service Unavailable"
                                         : "Bad Request";

    evbuffer_add_printf(ac->io->out,
                        "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n"
                        "Cache-Control: no-store\r\nConnection: close\r\n%s\r\n",
                        status, reason, ctype, len, extra);
}

static void reply_head(struct admin_conn *ac, int status, const char *ctype, size_t len)
{
    reply_head_with(ac, status, ctype, "", len);
}

static void reply(struct admin_conn *ac, int status, const char *ctype, const char *body)
{
    reply_head(ac, status, ctype, strlen(body));
    evbuffer_add(ac->io->out, body, strlen(body));
}

static uint64_t sum(const struct admin *a, size_t offset)
{
    uint64_t total = 0;

    for (unsigned i = 0; i < a->nworkers; i++)
        total += metrics_read((const uint64_t *)((const char *)&a->workers[i].stats + offset));
    return total;
}

#define APPEND(...) evbuffer_add_printf(out, __VA_ARGS__)
#define FAMILY(name, type, help) APPEND("# HELP " name " " help "\n# TYPE " name " " type "\n")
#define STAT(field) (unsigned long long)sum(a, offsetof(struct worker_stats, field))

/* The configuration in force and how reloads went; each certificate's
 * notAfter, so an alert can fire before a renewal that silently failed
 * lets one expire. */
static void reload_metrics(const struct admin *a, struct evbuffer *out)
{
    const struct admin_state *st = a->st;

    FAMILY("flowgate_config_generation", "gauge",
           "Configurations applied since start (1 at start).");
    APPEND("flowgate_config_generation %llu\n", (unsigned long long)st->generation);
    FAMILY("flowgate_config_reloads_total", "counter", "Reloads by result.");
    APPEND("flowgate_config_reloads_total{result=\"ok\"} %llu\n"
           "flowgate_config_reloads_total{result=\"failed\"} %llu\n",
           (unsigned long long)st->reloads_ok, (unsigned long long)st->reloads_failed);
    FAMILY("flowgate_config_last_reload_success_timestamp_seconds", "gauge",
           "When the configuration in force was applied (start counts).");
    APPEND("flowgate_config_last_reload_success_timestamp_seconds %.3f\n", st->last_reload_ok);
    FAMILY("flowgate_config_last_reload_successful", "gauge",
           "0 when the latest reload failed (the configuration before it stays in force).");
    APPEND("flowgate_config_last_reload_successful %d\n", !st->last_reload_failed);
    FAMILY("flowgate_start_time_seconds", "gauge", "When the process started, since the epoch.");
    APPEND("flowgate_start_time_seconds %.3f\n", st->started);
    FAMILY("flowgate_worker_config_generation", "gauge",
           "The configuration generation each worker runs new requests on.");
    for (unsigned i = 0; i < a->nworkers; i++)
        APPEND("flowgate_worker_config_generation{worker=\"%u\"} %llu\n", i,
               (unsigned long long)__atomic_load_n(&a->workers[i].generation, __ATOMIC_ACQUIRE));
    FAMILY("flowgate_tls_certificate_expiry_timestamp_seconds", "gauge",
           "Each certificate's notAfter.");
    for (size_t i = 0; st->tls != NULL && i < tls_ncerts(st->tls) && i < st->cfg->tls.ncerts; i++) {
        APPEND("flowgate_tls_certificate_expiry_timestamp_seconds{certificate=\"");
        metrics_put_label(out, st->cfg->tls.certs[i].cert_file);
        APPEND("\"} %lld\n", (long long)tls_cert_not_after(st->tls, i));
    }
}

/* What this binary is, as a constant 1 with the facts in its labels. */
static void build_info(struct evbuffer *out)
{
    FAMILY("flowgate_build_info", "gauge", "Always 1: the version, source revision and libraries.");
    APPEND("flowgate_build_info{version=\"%s\",revision=\"%s\",libevent=\"%s\",openssl=\"%s\"} 1\n",
           FG_VERSION, FG_REVISION, event_get_version(), OpenSSL_version(OPENSSL_VERSION_STRING));
}

static void http2_metrics(const struct admin *a, struct evbuffer *out)
{
    FAMILY("flowgate_http2_connections_total", "counter",
           "Client connections that chose HTTP/2 by ALPN.");
    APPEND("flowgate_http2_connections_total %llu\n", STAT(h2_connections));
    FAMILY("flowgate_http2_connections_open", "gauge", "HTTP/2 client connections open now.");
    APPEND("flowgate_http2_connections_open %llu\n", STAT(h2_open));
    FAMILY("flowgate_http2_streams_total", "counter",
           "HTTP/2 streams that became requests (each also counts in flowgate_requests_total).");
    APPEND("flowgate_http2_streams_total %llu\n", STAT(h2_streams));
    FAMILY("flowgate_http2_streams_refused_total", "counter",
           "HTTP/2 streams reset as malformed before they became requests.");
    APPEND("flowgate_http2_streams_refused_total %llu\n", STAT(h2_refused));
    FAMILY("flowgate_http2_goaway_total", "counter", "GOAWAY frames sent, by reason.");
    for (int i = 0; i < H2_GOAWAY__COUNT; i++)
        APPEND("flowgate_http2_goaway_total{reason=\"%s\"} %llu\n", h2_goaway_str(i),
               STAT(h2_goaway[i]));
}

static void worker_metrics(const struct admin *a, struct evbuffer *out)
{
    FAMILY("flowgate_connections_open", "gauge", "Client connections open now.");
    APPEND("flowgate_connections_open %d\n", __atomic_load_n(&worker_nconns, __ATOMIC_RELAXED));
    FAMILY("flowgate_connections_accepted_total", "counter", "Client connections accepted.");
    APPEND("flowgate_connections_accepted_total %llu\n", STAT(accepted));
    FAMILY("flowgate_requests_finished_total", "counter",
           "Requests finished, all routes and endings (the sum of flowgate_requests_total).");
    APPEND("flowgate_requests_finished_total %llu\n", STAT(requests));
    FAMILY("flowgate_tls_handshakes_total", "counter", "TLS handshakes completed.");
    APPEND("flowgate_tls_handshakes_total %llu\n", STAT(tls_handshakes));
    FAMILY("flowgate_tls_handshake_failures_total", "counter",
           "Client connections that ended during their TLS handshake.");
    APPEND("flowgate_tls_handshake_failures_total %llu\n", STAT(tls_failures));
    FAMILY("flowgate_websocket_tunnels_open", "gauge", "WebSocket tunnels relaying now.");
    APPEND("flowgate_websocket_tunnels_open %llu\n", STAT(tunnels_open));
    FAMILY("flowgate_preview_dns_lookups_total", "counter",
           "Preview upstream names looked up (answered from the cache or not).");
    APPEND("flowgate_preview_dns_lookups_total %llu\n", STAT(preview_dns_lookups));
    FAMILY("flowgate_preview_dns_failures_total", "counter",
           "Preview upstream lookups that failed (timeout, SERVFAIL), answered 502.");
    APPEND("flowgate_preview_dns_failures_total %llu\n", STAT(preview_dns_failures));
    http2_metrics(a, out);
}

/* A route row's two families, each written whole to its own buffer. */
struct route_out {
    struct evbuffer *requests, *duration;
};

static void route_row(const char *name, const uint64_t *c, void *arg)
{
    struct route_out *ro = arg;
    uint64_t cum = 0;
    struct evbuffer *out = ro->requests;

    for (size_t k = 0; k < METRICS_CODES; k++) {
        APPEND("flowgate_requests_total{route=\"");
        metrics_put_label(out, name);
        APPEND("\",code=\"%s\"} %llu\n", metrics_code_str[k],
               (unsigned long long)c[METRICS_RT_CODE + k]);
    }
    out = ro->duration;
    for (size_t b = 0; b <= METRICS_DURATION_BUCKETS; b++) {
        cum += c[METRICS_RT_BUCKET + b];
        APPEND("flowgate_request_duration_seconds_bucket{route=\"");
        metrics_put_label(out, name);
        if (b < METRICS_DURATION_BUCKETS)
            APPEND("\",le=\"%g\"} %llu\n", metrics_duration_bounds_us[b] / 1e6,
                   (unsigned long long)cum);
        else
            APPEND("\",le=\"+Inf\"} %llu\n", (unsigned long long)cum);
    }
    /* _count is +Inf's, from the same reads: the two always agree. */
    const char *parts[] = {"_sum", "_count"};
    for (size_t i = 0; i < 2; i++) {
        APPEND("flowgate_request_duration_seconds%s{route=\"", parts[i]);
        metrics_put_label(out, name);
        if (i == 0)
            APPEND("\"} %.6f\n", c[METRICS_RT_SUM_US] / 1e6);
        else
            APPEND("\"} %llu\n", (unsigned long long)cum);
    }
}

static void upstream_row(const char *name, const uint64_t *c, void *arg)
{
    struct evbuffer *out = arg;

    for (int k = UP_FAIL_NONE + 1; k < UP_FAIL__COUNT; k++) {
        APPEND("flowgate_upstream_errors_total{upstream=\"");
        metrics_put_label(out, name);
        APPEND("\",kind=\"%s\"} %llu\n", upstream_fail_str((enum upstream_fail)k),
               (unsigned long long)c[k]);
    }
}

/* The per-route and per-upstream rows, summed over workers by label. */
static int row_metrics(const struct admin *a, struct evbuffer *out)
{
    const struct metrics_rows **t = calloc(a->nworkers ? a->nworkers : 1, sizeof(*t));
    struct route_out ro = {evbuffer_new(), evbuffer_new()};
    int rc = -1;

    if (t == NULL || ro.requests == NULL || ro.duration == NULL)
        goto out;
    for (unsigned i = 0; i < a->nworkers; i++)
        t[i] = &a->workers[i].routes;
    if (metrics_rows_sum(t, a->nworkers, route_row, &ro) < 0)
        goto out;
    FAMILY("flowgate_requests_total", "counter",
           "Requests by route and status class (code \"0\": ended with no response sent).");
    evbuffer_add_buffer(out, ro.requests);
    FAMILY("flowgate_request_duration_seconds", "histogram",
           "Request duration by route, from the complete head to the finish.");
    evbuffer_add_buffer(out, ro.duration);
    FAMILY("flowgate_upstream_errors_total", "counter",
           "Failed exchanges with upstreams (each attempt), by upstream and kind.");
    for (unsigned i = 0; i < a->nworkers; i++)
        t[i] = &a->workers[i].upstream_errors;
    rc = metrics_rows_sum(t, a->nworkers, upstream_row, out);
out:
    free(t);
    if (ro.requests)
        evbuffer_free(ro.requests);
    if (ro.duration)
        evbuffer_free(ro.duration);
    return rc;
}

/*
 * Is server J of upstream I (of the configuration in force) ejected by a
 * worker (max_fails consecutive failures, for fail_timeout_ms)? Only the workers that run the configuration in force are read: a
 * worker stores its generation (release) after installing that snapshot, and
 * cannot install another before main hands it one, which main cannot do
 * while it runs this, so the snapshot read here stays alive. down_until_ms
 * is the worker's own to write: relaxed atomics on both sides.
 */
/* Worker W's pools for the configuration in force (NULL while it has not
 * taken it yet). */
static const struct upstream_pool *worker_pools(const struct admin *a, const struct worker *w)
{
    if (__atomic_load_n(&w->generation, __ATOMIC_ACQUIRE) != a->st->generation || w->snap == NULL)
        return NULL;
    return w->snap->pools;
}

/* Slot K (a server given as an address) is down in some worker. */
static bool server_down(const struct admin *a, size_t i, size_t k, uint64_t now)
{
    for (unsigned n = 0; n < a->nworkers; n++) {
        const struct upstream_pool *pools = worker_pools(a, &a->workers[n]);
        if (pools != NULL &&
            __atomic_load_n(&pools[i].servers[k].down_until_ms, __ATOMIC_RELAXED) > now)
            return true;
    }
    return false;
}

/* Distinct addresses of one name shown: the workers resolve it apart, and
 * may disagree for a moment while its answer changes. */
#define NAME_ADDRS_SEEN (4 * UPSTREAM_NAME_SLOTS)

/* One address of a name, as the admin saw it in the workers. */
struct name_addr {
    char text[56];
    bool down; /* in some worker */
};

/* Slot S's address and ejection, read between two equal even values of its
 * seq (the worker rewrites a name's slots: upstream_slot_set). False when
 * the slot is empty, or kept changing. */
static bool read_slot(const struct upstream_server_state *s, struct name_addr *out, uint64_t now)
{
    for (int tries = 0; tries < 64; tries++) {
        uint32_t seq = __atomic_load_n(&s->seq, __ATOMIC_ACQUIRE);
        if (seq & 1)
            continue;
        const struct fg_sockaddr *sa = __atomic_load_n(&s->sa, __ATOMIC_RELAXED);
        if (sa != NULL) {
            memcpy(out->text, sa->text, sizeof(out->text) - 1);
            out->text[sizeof(out->text) - 1] = '\0';
        }
        out->down = __atomic_load_n(&s->down_until_ms, __ATOMIC_RELAXED) > now;
        __atomic_thread_fence(__ATOMIC_ACQUIRE);
        if (__atomic_load_n(&s->seq, __ATOMIC_RELAXED) == seq)
            return sa != NULL;
    }
    return false;
}

/* Add A to the N addresses in V[NAME_ADDRS_SEEN] (one entry per address:
 * down when any worker has it down). */
static void add_name_addr(struct name_addr *v, size_t *n, const struct name_addr *a)
{
    for (size_t i = 0; i < *n; i++) {
        if (strcmp(v[i].text, a->text) == 0) {
            v[i].down |= a->down;
            return;
        }
    }
    if (*n < NAME_ADDRS_SEEN)
        v[(*n)++] = *a;
}

/* Every address the workers hold for the name at slots K.., one sample
 * each, with the name as server and the address as address. */
static void name_metrics(const struct admin *a, struct evbuffer *out, size_t i, size_t k,
                         const struct fg_upstream *u, const struct fg_sockaddr *server,
                         uint64_t now)
{
    struct name_addr v[NAME_ADDRS_SEEN], one;
    size_t n = 0;

    for (unsigned w = 0; w < a->nworkers; w++) {
        const struct upstream_pool *pools = worker_pools(a, &a->workers[w]);
        for (size_t j = 0; pools != NULL && j < UPSTREAM_NAME_SLOTS; j++)
            if (read_slot(&pools[i].servers[k + j], &one, now))
                add_name_addr(v, &n, &one);
    }
    for (size_t j = 0; j < n; j++) {
        APPEND("flowgate_upstream_server_up{upstream=\"");
        metrics_put_label(out, u->name);
        APPEND("\",server=\"");
        metrics_put_label(out, server->text);
        APPEND("\",address=\"");
        metrics_put_label(out, v[j].text);
        APPEND("\"} %d\n", !v[j].down);
    }
}

static void upstream_metrics(const struct admin *a, struct evbuffer *out)
{
    const struct fg_config *cfg = a->st->cfg;
    uint64_t now = upstream_now_ms();

    FAMILY("flowgate_upstream_server_up", "gauge",
           "0 while a worker skips the server: ejected after max_fails consecutive failures. "
           "A server given by name has one sample per address (label address).");
    for (size_t i = 0; i < cfg->nupstreams; i++) {
        const struct fg_upstream *u = &cfg->upstreams[i];
        for (size_t j = 0, k = 0; j < u->nservers; j++) {
            if (u->servers[j].host != NULL) {
                name_metrics(a, out, i, k, u, &u->servers[j], now);
                k += UPSTREAM_NAME_SLOTS;
                continue;
            }
            APPEND("flowgate_upstream_server_up{upstream=\"");
            metrics_put_label(out, u->name);
            APPEND("\",server=\"");
            metrics_put_label(out, u->servers[j].text);
            APPEND("\"} %d\n", !server_down(a, i, k++, now));
        }
    }
}

/* The whole /metrics exposition, appended to BODY; every family has its
 * HELP and TYPE. 0, or -1 when out of memory. */
static int exposition(const struct admin *a, struct evbuffer *body)
{
    if (row_metrics(a, body) < 0)
        return -1;
    build_info(body);
    worker_metrics(a, body);
    upstream_metrics(a, body);
    health_metrics(a->st->health, body);
    for (const struct stage *const *s = stage_table; *s; s++)
        if ((*s)->metrics)
            (*s)->metrics(a->st->cfg, a->workers, a->nworkers, body);
    reload_metrics(a, body);
    return 0;
}

/* The exposition is built whole in its own buffer, as long as the label
 * values make it, so Content-Length is known before the head is written
 * and the body is never cut. */
static void metrics(struct admin_conn *ac)
{
    struct evbuffer *body = evbuffer_new();

    if (body == NULL || exposition(ac->a, body) < 0) {
        if (body)
            evbuffer_free(body);
        reply(ac, 503, "application/json", "{\"error\":\"out_of_memory\"}");
        return;
    }
    reply_head(ac, 200, "text/plain; version=0.0.4", evbuffer_get_length(body));
    evbuffer_add_buffer(ac->io->out, body);
    evbuffer_free(body);
}

static double now_epoch(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

/* The exposition's families as JSON (status_families); NULL when out of
 * memory. */
static json_t *families(const struct admin *a)
{
    struct evbuffer *text = evbuffer_new();
    json_t *fams = NULL;

    if (text != NULL && exposition(a, text) == 0) {
        size_t len = evbuffer_get_length(text);
        const char *p = (const char *)evbuffer_pullup(text, -1);
        fams = status_families(p ? p : "", p ? len : 0);
    }
    if (text != NULL)
        evbuffer_free(text);
    return fams;
}

/* Every STATUS_SAMPLE_MS, the request totals: kept here rather than in the
 * page, so that its chart shows the last minutes from the first load. */
static void admin_sample_cb(evutil_socket_t fd, short what, void *arg)
{
    struct admin *a = arg;
    json_t *fams = families(a);

    if (fams != NULL)
        status_history_add(&a->history, fams, now_epoch());
    json_decref(fams);
}

/* /status.json: the same figures as /metrics, the history of request
 * totals, and the uptime. */
static void status_json(struct admin_conn *ac)
{
    struct admin *a = ac->a;
    double now = now_epoch();
    json_t *fams = families(a), *history = status_history_json(&a->history);
    json_t *doc = fams && history
                      ? json_pack("{s:f, s:f, s:O, s:O}", "uptime_seconds", now - a->st->started,
                                  "generated_at", now, "families", fams, "history", history)
                      : NULL;
    char *body = doc ? json_dumps(doc, JSON_COMPACT) : NULL;

    json_decref(fams);
    json_decref(history);
    json_decref(doc);
    if (body == NULL) {
        reply(ac, 503, "application/json", "{\"error\":\"out_of_memory\"}");
        return;
    }
    reply(ac, 200, "application/json", body);
    free(body);
}

/* The page may run its own inline script and style and fetch from its own
 * origin, nothing else: a browser enforces that the page loads no asset
 * from anywhere. */
#define STATUS_PAGE_HEADERS                                                                        \
    "Content-Security-Policy: default-src 'none'; script-src 'unsafe-inline'; "                    \
    "style-src 'unsafe-inline'; connect-src 'self'; img-src data:; base-uri 'none'; "              \
    "form-action 'none'; frame-ancestors 'none'\r\nX-Content-Type-Options: nosniff\r\n"

static void status_page(struct admin_conn *ac)
{
    size_t len = strlen(status_page_html);

    reply_head_with(ac, 200, "text/html; charset=utf-8", STATUS_PAGE_HEADERS, len);
    evbuffer_add(ac->io->out, status_page_html, len);
}

/* Ready once listening with a configuration, until a stop begins: from
 * SIGTERM on it is 503, while the listeners still accept for
 * shutdown_delay_ms, so a load balancer stops sending before they close.
 * Redis's state is reported but does not decide readiness: every instance
 * shares the one Redis, so taking instances out of rotation could not route
 * around it, and each mode has a defined answer without it (local limits,
 * admit, or 503 unavailable). */
static void readyz(struct admin_conn *ac)
{
    struct admin *a = ac->a;
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
    reply(ac, ready ? 200 : 503, "application/json", body);
}

static void route(struct admin_conn *ac, const struct h1_request *h)
{
    if (h1_token_eq(h->path, h->path_len, "/healthz"))
        reply(ac, 200, "application/json", "{\"status\":\"ok\"}");
    else if (h1_token_eq(h->path, h->path_len, "/readyz"))
        readyz(ac);
    else if (h1_token_eq(h->path, h->path_len, "/metrics"))
        metrics(ac);
    else if (h1_token_eq(h->path, h->path_len, "/status.json"))
        status_json(ac);
    else if (h1_token_eq(h->path, h->path_len, "/"))
        status_page(ac);
    else
        reply(ac, 404, "application/json", "{\"error\":\"not_found\"}");
}

/* Safe inside AC's io callbacks: io_free defers the io's memory. */
static void admin_conn_free(struct admin_conn *ac)
{
    struct admin *a = ac->a;

    if (ac->newer)
        ac->newer->older = ac->older;
    else
        a->newest = ac->older;
    if (ac->older)
        ac->older->newer = ac->newer;
    else
        a->oldest = ac->newer;
    a->nconns--;
    evtimer_del(&ac->timer);
    io_free(ac->io);
    free(ac);
}

static void admin_timeout_cb(evutil_socket_t fd, short what, void *arg)
{
    admin_conn_free(arg);
}

/* The reply is written: shut the write side and drop what the client still
 * sends until it closes (or the exchange's timer ends it), so that unread
 * input cannot turn the close into a reset that destroys the reply. */
static void admin_done(struct admin_conn *ac)
{
    if (io_eof(ac->io))
        admin_conn_free(ac);
    else
        io_linger(ac->io);
}

static void admin_write_cb(struct io *io, void *arg)
{
    if (io_pending_out(io) == 0)
        admin_done(arg);
}

/* An error ends the exchange; so does the client's EOF, unless it only
 * half-closed after its request and the reply is still being written. */
static void admin_event_cb(struct io *io, int what, void *arg)
{
    struct admin_conn *ac = arg;

    if ((what & IO_ERROR) || !ac->answered || io_pending_out(io) == 0)
        admin_conn_free(ac);
}

/* One request per connection: the head (at most ADMIN_HEAD_MAX bytes) is
 * parsed once complete and answered; reading stops, and the connection
 * closes once the reply is written (admin_done). */
static void admin_read_cb(struct io *io, void *arg)
{
    struct admin_conn *ac = arg;
    size_t len = evbuffer_get_length(io->in);
    size_t n = len < ADMIN_HEAD_MAX ? len : ADMIN_HEAD_MAX;
    const char *data = (const char *)evbuffer_pullup(io->in, (ssize_t)n);
    ssize_t end = h1_head_end(data, n);

    if (end == -2 && len < ADMIN_HEAD_MAX)
        return;
    struct h1_header hdrs[64];
    struct h1_request h;
    memset(&h, 0, sizeof(h));
    h.headers = hdrs;
    h.max_headers = 64;
    if (end < 0 || h1_parse_request(&h, data, (size_t)end, false) != H1_OK)
        reply(ac, 400, "application/json", "{\"error\":\"bad_request\"}");
    else
        route(ac, &h);
    ac->answered = true;
    io_disable_read(io);
    io_flush(io);
    if (io_pending_out(io) == 0)
        admin_done(ac);
}

/* A new connection, newest of the list; past ADMIN_CONNS_MAX the oldest
 * makes room. Its whole exchange is bounded by ADMIN_TIMEOUT_MS. */
static void admin_conn_new(struct admin *a, int fd)
{
    struct timeval tv = {ADMIN_TIMEOUT_MS / 1000, (ADMIN_TIMEOUT_MS % 1000) * 1000};
    struct admin_conn *ac = calloc(1, sizeof(*ac));

    if (ac == NULL || (ac->io = io_new(a->base, fd, NULL)) == NULL) {
        free(ac);
        close(fd);
        return;
    }
    if (a->nconns >= ADMIN_CONNS_MAX)
        admin_conn_free(a->oldest);
    ac->a = a;
    ac->older = a->newest;
    if (a->newest)
        a->newest->newer = ac;
    else
        a->oldest = ac;
    a->newest = ac;
    a->nconns++;
    evtimer_assign(&ac->timer, a->base, admin_timeout_cb, ac);
    evtimer_add(&ac->timer, &tv);
    ac->io->read_high = ADMIN_HEAD_MAX;
    io_setcb(ac->io, admin_read_cb, admin_write_cb, admin_event_cb, ac);
    io_enable_read(ac->io);
}

static void admin_resume_cb(evutil_socket_t fd, short what, void *arg)
{
    struct admin *a = arg;

    event_add(a->accept_ev, NULL);
}

/* One connection per event (the listening socket is level-triggered). Out
 * of descriptors, accepting pauses for ADMIN_ACCEPT_PAUSE_MS: the pending
 * connection keeps the socket readable and would be reported at once. */
static void admin_accept_cb(evutil_socket_t lfd, short what, void *arg)
{
    struct admin *a = arg;
    int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);

    if (fd >= 0) {
        admin_conn_new(a, fd);
    } else if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
        struct timeval tv = {0, ADMIN_ACCEPT_PAUSE_MS * 1000};
        event_del(a->accept_ev);
        evtimer_add(a->resume_ev, &tv);
    }
}

static int admin_listen(const struct fg_sockaddr *addr, char *err, size_t errlen)
{
    int one = 1;
    int fd = socket(addr->ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);

    if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0 ||
        bind(fd, (const struct sockaddr *)&addr->ss, addr->len) < 0 || listen(fd, 128) < 0) {
        snprintf(err, errlen, "admin listen %s: %s", addr->text, strerror(errno));
        if (fd >= 0)
            close(fd);
        return -1;
    }
    return fd;
}

struct admin *admin_start(struct event_base *base, const struct fg_sockaddr *addr,
                          const struct admin_state *st, struct worker *workers, unsigned nworkers,
                          char *err, size_t errlen)
{
    struct admin *a = calloc(1, sizeof(*a));

    if (a == NULL) {
        snprintf(err, errlen, "admin listen %s: out of memory", addr->text);
        return NULL;
    }
    a->st = st;
    a->base = base;
    a->workers = workers;
    a->nworkers = nworkers;
    if ((a->fd = admin_listen(addr, err, errlen)) < 0) {
        free(a);
        return NULL;
    }
    struct timeval every = {STATUS_SAMPLE_MS / 1000, (STATUS_SAMPLE_MS % 1000) * 1000};
    a->accept_ev = event_new(base, a->fd, EV_READ | EV_PERSIST, admin_accept_cb, a);
    a->resume_ev = evtimer_new(base, admin_resume_cb, a);
    a->sample_ev = event_new(base, -1, EV_PERSIST, admin_sample_cb, a);
    if (a->accept_ev == NULL || a->resume_ev == NULL || a->sample_ev == NULL ||
        event_add(a->accept_ev, NULL) < 0 || event_add(a->sample_ev, &every) < 0) {
        snprintf(err, errlen, "admin listen %s: event setup failed", addr->text);
        admin_stop(a);
        return NULL;
    }
    admin_sample_cb(-1, 0, a);
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
    if (a->accept_ev)
        event_free(a->accept_ev);
    if (a->resume_ev)
        event_free(a->resume_ev);
    if (a->sample_ev)
        event_free(a->sample_ev);
    close(a->fd);
    while (a->oldest)
        admin_conn_free(a->oldest);
    free(a);
}
