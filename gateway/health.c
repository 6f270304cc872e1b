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
 *
 * Why a name's addresses are learned from the workers rather than looked
 * up here: the workers resolve names themselves (upname.c), and what they
 * hold is what gets traffic; a lookup of the checker's own could answer
 * otherwise (another DNS reply, another moment) and check addresses no
 * worker uses while missing one they do. So every HEALTH_SYNC_MS the
 * checker reads the name's slots in each worker's pools (as the admin does
 * for flowgate_upstream_server_up), without a lock and without blocking
 * them, and each address it finds is an entry of its own, keyed by the
 * upstream, the server as written and the address:
 *
 *   (none) --a worker holds it--> checked, healthy until fall checks fail
 *      ^                                      |
 *      +---no worker held it HEALTH_UNSEEN_MAX reads in a row (its verdict
 *          and counters go with it)
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <netinet/in.h>

#include "health.h"
#include "io.h"
#include "log.h"
#include "metrics.h"
#include "upstream.h"
#include "worker.h"

#define HEALTH_LINE_MAX 512 /* a status line longer than this is no status line */
#define HEALTH_SYNC_MS 500  /* how often the addresses of names are read from the workers */
/* Reads in a row without an address before it is forgotten: a reload's
 * new pools are empty until their first answer. */
#define HEALTH_UNSEEN_MAX 4

struct health_server {
    struct health *h;
    char *upstream;                  /* its upstream's name (owned): the first part of its key */
    char *server;                    /* the server as written (owned): the second */
    char *address;                   /* an address of a name, as the workers write it (owned):
                                        the third; NULL for a server given as an address */
    struct fg_upstream *u;           /* in h->cfg */
    size_t index;                    /* the server's position in u->servers */
    struct fg_addr_health *entry;    /* an address of a name: its verdict in u->name_health */
    struct sockaddr_storage ss;      /* where checks connect */
    socklen_t len;                   /* its length */
    unsigned unseen;                 /* an address of a name: reads in a row no worker held it */
    struct io *io;                   /* the check in flight; NULL while waiting */
    struct event *timer;             /* next check while waiting, deadline while checking */
    uint32_t fails, passes;          /* consecutive results; one of them is 0 */
    bool down;                       /* the verdict, as in u->health[index] or *entry */
    bool taken;                      /* health_apply: kept for the next configuration */
    uint64_t results[HEALTH__COUNT]; /* checks by result, since first listed (or resolved) */
};

/* A server given by name, and the addresses of it being checked. */
struct health_name {
    char *upstream;        /* its upstream's name (owned): the first part of its key */
    char *server;          /* the server as written (owned): the second */
    struct fg_upstream *u; /* in h->cfg */
    size_t index;          /* the server's position in u->servers */
    size_t name;           /* its index among u's names: its entries in u->name_health */
    size_t slot;           /* its first slot in a worker's pool of u */
    bool taken;            /* health_apply: kept for the next configuration */
    struct health_server *addrs[FG_NAME_HEALTH_ADDRS]; /* by entry; NULL: a free one */
};

struct health {
    struct event_base *base;        /* main's loop */
    const struct worker *workers;   /* whose pools hold the addresses of names */
    unsigned nworkers;              /* (main's, for the process's life) */
    struct fg_config *cfg;          /* the snapshot checked (a reference); NULL before the first */
    uint64_t generation;            /* cfg's, as the workers run it; 0: names not followed */
    struct health_server **servers; /* servers given as addresses */
    size_t n;                       /* ... how many */
    struct health_name **names;     /* servers given by name */
    size_t nnames;                  /* ... how many */
    struct event *sync;             /* every HEALTH_SYNC_MS while there are names */
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
    if (s->entry != NULL)
        __atomic_store_n(&s->entry->down, (uint32_t)down, __ATOMIC_RELAXED);
    else
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
            log_info("upstream %s: server %s%s%s healthy again (%u checks passed)", s->upstream,
                     s->server, s->address ? " address " : "", s->address ? s->address : "",
                     s->passes);
        }
    } else {
        s->passes = 0;
        if (s->fails < UINT32_MAX)
            s->fails++;
        if (!s->down && s->fails >= hc->fall) {
            server_mark(s, true);
            log_warn("upstream %s: server %s%s%s unhealthy (%u checks failed, last: %s)",
                     s->upstream, s->server, s->address ? " address " : "",
                     s->address ? s->address : "", s->fails, health_result_str(r));
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

/* Host is the server as written, its name for a name's address (RFC 9112
 * section 3.2); Connection: close, so the server never keeps a socket for
 * the checker. */
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
    struct timeval tv = ms_tv(s->u->health_check->timeout_ms);

    s->io = io_connect(s->h->base, (const struct sockaddr *)&s->ss, s->len);
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
    free(s->address);
    free(s);
}

/* ADDRESS: of a name, NULL for a server given as an address. */
static struct health_server *server_new(struct health *h, const char *upstream, const char *server,
                                        const char *address)
{
    struct health_server *s = calloc(1, sizeof(*s));

    if (s == NULL)
        return NULL;
    s->h = h;
    s->upstream = strdup(upstream);
    s->server = strdup(server);
    s->address = address ? strdup(address) : NULL;
    s->timer = evtimer_new(h->base, check_timer_cb, s);
    if (s->upstream == NULL || s->server == NULL || (address && s->address == NULL) ||
        s->timer == NULL) {
        server_free(s);
        return NULL;
    }
    return s;
}

static void name_free(struct health_name *n)
{
    if (n == NULL)
        return;
    for (size_t j = 0; j < FG_NAME_HEALTH_ADDRS; j++)
        server_free(n->addrs[j]);
    free(n->upstream);
    free(n->server);
    free(n);
}

static struct health_name *name_new(const char *upstream, const char *server)
{
    struct health_name *n = calloc(1, sizeof(*n));

    if (n == NULL)
        return NULL;
    n->upstream = strdup(upstream);
    n->server = strdup(server);
    if (n->upstream == NULL || n->server == NULL) {
        name_free(n);
        return NULL;
    }
    return n;
}

/* ---- the addresses of names ------------------------------------------------ */

/* Address J of N goes where the workers read verdicts: its entry in N's
 * upstream's table, counted for panic mode. */
static void addr_publish(struct health_name *n, size_t j)
{
    struct health_server *s = n->addrs[j];
    struct fg_upstream *u = n->u;

    s->u = u;
    s->index = n->index;
    s->entry = &u->name_health[n->name * FG_NAME_HEALTH_ADDRS + j];
    health_addr_set(s->entry, &s->ss);
    if (s->down) {
        __atomic_store_n(&s->entry->down, 1, __ATOMIC_RELAXED);
        __atomic_add_fetch(&u->health_ndown, 1, __ATOMIC_RELAXED);
    }
    __atomic_add_fetch(&u->health_nchecked, 1, __ATOMIC_RELAXED);
}

/* No worker holds address J of N any more: no more checks, no verdict. */
static void addr_forget(struct health_name *n, size_t j)
{
    struct health_server *s = n->addrs[j];

    log_info("upstream %s: server %s address %s no longer resolved: no longer checked", n->upstream,
             n->server, s->address);
    health_addr_set(s->entry, NULL);
    if (s->down)
        __atomic_sub_fetch(&n->u->health_ndown, 1, __ATOMIC_RELAXED);
    __atomic_sub_fetch(&n->u->health_nchecked, 1, __ATOMIC_RELAXED);
    server_free(s);
    n->addrs[j] = NULL;
}

/* A worker holds V for N: mark it SEEN, checked at once when new (healthy
 * until then). An address past the table's room is not checked: it is
 * healthy to the workers, as before its first check. */
static void addr_seen(struct health *h, struct health_name *n, const struct upstream_slot_view *v,
                      bool *seen)
{
    size_t j, free_j = FG_NAME_HEALTH_ADDRS;

    for (j = 0; j < FG_NAME_HEALTH_ADDRS; j++) {
        if (n->addrs[j] != NULL && strcmp(n->addrs[j]->address, v->text) == 0) {
            n->addrs[j]->unseen = 0;
            seen[j] = true;
            return;
        }
        if (n->addrs[j] == NULL && free_j == FG_NAME_HEALTH_ADDRS)
            free_j = j;
    }
    if (free_j == FG_NAME_HEALTH_ADDRS ||
        (n->addrs[free_j] = server_new(h, n->upstream, n->server, v->text)) == NULL)
        return; /* (out of memory: the next read tries again) */
    n->addrs[free_j]->ss = v->ss;
    n->addrs[free_j]->len = v->len;
    addr_publish(n, free_j);
    seen[free_j] = true;
    event_active(n->addrs[free_j]->timer, EV_TIMEOUT, 1);
}

/* Bring N's addresses in line with the slots of the workers that run the
 * configuration checked; with none running it yet, nothing is learned. */
static void name_sync(struct health *h, struct health_name *n)
{
    bool seen[FG_NAME_HEALTH_ADDRS] = {false}, read = false;
    struct upstream_slot_view v;

    for (unsigned w = 0; w < h->nworkers; w++) {
        const struct upstream_pool *pools = worker_pools_at(&h->workers[w], h->generation);
        if (pools == NULL)
            continue;
        read = true;
        for (size_t j = 0; j < UPSTREAM_NAME_SLOTS; j++)
            if (upstream_slot_read(&pools[n->u->index].servers[n->slot + j], &v))
                addr_seen(h, n, &v, seen);
    }
    for (size_t j = 0; read && j < FG_NAME_HEALTH_ADDRS; j++)
        if (n->addrs[j] != NULL && !seen[j] && ++n->addrs[j]->unseen >= HEALTH_UNSEEN_MAX)
            addr_forget(n, j);
}

static void sync_cb(evutil_socket_t fd, short what, void *arg)
{
    struct health *h = arg;

    for (size_t i = 0; h->generation != 0 && i < h->nnames; i++)
        name_sync(h, h->names[i]);
}

/* ---- configurations ---------------------------------------------------------- */

struct health *health_new(struct event_base *base, const struct worker *workers, unsigned nworkers)
{
    struct health *h = calloc(1, sizeof(*h));

    if (h == NULL)
        return NULL;
    h->base = base;
    h->workers = workers;
    h->nworkers = nworkers;
    if ((h->sync = event_new(base, -1, EV_PERSIST, sync_cb, h)) == NULL) {
        free(h);
        return NULL;
    }
    return h;
}

/* What CFG checks, old entries taken over first (health_apply). */
struct health_build {
    struct health_server **servers; /* one per server given as an address */
    size_t n;                       /* ... how many */
    struct health_name **names;     /* one per server given by name */
    size_t nnames;                  /* ... how many */
};

/* The entry of the previous configuration for UPSTREAM's SERVER (given as
 * an address) not yet taken by another, taking it; NULL when none. */
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

/* As take_old, for a server given by name (its addresses come with it). */
static struct health_name *take_old_name(struct health *h, const char *upstream, const char *server)
{
    for (size_t i = 0; i < h->nnames; i++) {
        struct health_name *n = h->names[i];
        if (!n->taken && strcmp(n->upstream, upstream) == 0 && strcmp(n->server, server) == 0) {
            n->taken = true;
            return n;
        }
    }
    return NULL;
}

/* Add server J of U to B, old entry or new. 0, or -1 when out of memory. */
static int build_one(struct health *h, const struct fg_upstream *u, size_t j,
                     struct health_build *b)
{
    const char *text = u->servers[j].text;

    if (u->servers[j].host != NULL) {
        struct health_name *n = take_old_name(h, u->name, text);
        if (n == NULL && (n = name_new(u->name, text)) == NULL)
            return -1;
        b->names[b->nnames++] = n;
        return 0;
    }
    struct health_server *s = take_old(h, u->name, text);
    if (s == NULL && (s = server_new(h, u->name, text, NULL)) == NULL)
        return -1;
    b->servers[b->n++] = s;
    return 0;
}

/* Every entry CFG needs into B; -1 when out of memory, the old entries
 * then as they were. */
static int build(struct health *h, const struct fg_config *cfg, struct health_build *b)
{
    size_t n = 0, nnames = 0;

    for (size_t i = 0; i < cfg->nupstreams; i++) {
        if (cfg->upstreams[i].health_check == NULL)
            continue;
        n += cfg->upstreams[i].nservers - cfg->upstreams[i].nnames;
        nnames += cfg->upstreams[i].nnames;
    }
    memset(b, 0, sizeof(*b));
    b->servers = calloc(n ? n : 1, sizeof(*b->servers));
    b->names = calloc(nnames ? nnames : 1, sizeof(*b->names));
    for (size_t i = 0; b->servers && b->names && i < cfg->nupstreams; i++) {
        const struct fg_upstream *u = &cfg->upstreams[i];
        for (size_t j = 0; u->health_check != NULL && j < u->nservers; j++)
            if (build_one(h, u, j, b) < 0)
                goto fail;
    }
    if (b->servers && b->names)
        return 0;
fail:
    for (size_t m = 0; m < b->n; m++)
        if (!b->servers[m]->taken)
            server_free(b->servers[m]);
    for (size_t m = 0; m < b->nnames; m++)
        if (!b->names[m]->taken)
            name_free(b->names[m]);
    for (size_t i = 0; i < h->n; i++)
        h->servers[i]->taken = false;
    for (size_t i = 0; i < h->nnames; i++)
        h->names[i]->taken = false;
    free(b->servers);
    free(b->names);
    return -1;
}

/* Point S at server J of U (CFG's) and carry its verdict into U's flags. */
static void server_bind(struct health_server *s, struct fg_upstream *u, size_t j)
{
    check_cancel(s);
    s->taken = false;
    s->u = u;
    s->index = j;
    s->ss = u->servers[j].ss;
    s->len = u->servers[j].len;
    if (s->down) {
        __atomic_store_n(&u->health[j].down, 1, __ATOMIC_RELAXED);
        __atomic_add_fetch(&u->health_ndown, 1, __ATOMIC_RELAXED);
    }
}

/* Point N at server J of U, U's name NAME at pool slot SLOT, and carry the
 * verdicts of its addresses into U's table. */
static void name_bind(struct health_name *n, struct fg_upstream *u, size_t j, size_t name,
                      size_t slot)
{
    n->taken = false;
    n->u = u;
    n->index = j;
    n->name = name;
    n->slot = slot;
    for (size_t k = 0; k < FG_NAME_HEALTH_ADDRS; k++) {
        if (n->addrs[k] != NULL) {
            check_cancel(n->addrs[k]);
            addr_publish(n, k);
        }
    }
}

/* Every entry of B bound to CFG, in the order build() made them. */
static void bind_all(struct health_build *b, struct fg_config *cfg)
{
    size_t k = 0, kn = 0;

    for (size_t i = 0; i < cfg->nupstreams; i++) {
        struct fg_upstream *u = &cfg->upstreams[i];
        for (size_t j = 0, name = 0, slot = 0; u->health_check != NULL && j < u->nservers; j++) {
            if (u->servers[j].host != NULL) {
                name_bind(b->names[kn++], u, j, name++, slot);
                slot += UPSTREAM_NAME_SLOTS;
            } else {
                server_bind(b->servers[k++], u, j);
                slot++;
            }
        }
    }
}

/* Check every entry now. */
static void check_all(struct health *h)
{
    for (size_t i = 0; i < h->n; i++)
        event_active(h->servers[i]->timer, EV_TIMEOUT, 1);
    for (size_t i = 0; i < h->nnames; i++)
        for (size_t j = 0; j < FG_NAME_HEALTH_ADDRS; j++)
            if (h->names[i]->addrs[j] != NULL)
                event_active(h->names[i]->addrs[j]->timer, EV_TIMEOUT, 1);
}

int health_apply(struct health *h, struct fg_config *cfg, uint64_t generation)
{
    struct health_build b;
    struct timeval sync = ms_tv(HEALTH_SYNC_MS);

    if (build(h, cfg, &b) < 0) {
        h->generation = 0; /* the workers leave the configuration checked */
        return -1;
    }
    for (size_t i = 0; i < h->n; i++)
        if (!h->servers[i]->taken)
            server_free(h->servers[i]); /* no longer listed */
    for (size_t i = 0; i < h->nnames; i++)
        if (!h->names[i]->taken)
            name_free(h->names[i]);
    free(h->servers);
    free(h->names);
    h->servers = b.servers;
    h->n = b.n;
    h->names = b.names;
    h->nnames = b.nnames;
    bind_all(&b, cfg);
    cfg_unref(h->cfg);
    h->cfg = cfg_ref(cfg);
    h->generation = generation;
    check_all(h);
    if (h->nnames > 0)
        event_add(h->sync, &sync);
    else
        event_del(h->sync);
    return 0;
}

void health_free(struct health *h)
{
    if (h == NULL)
        return;
    for (size_t i = 0; i < h->n; i++)
        server_free(h->servers[i]);
    for (size_t i = 0; i < h->nnames; i++)
        name_free(h->names[i]);
    free(h->servers);
    free(h->names);
    event_free(h->sync);
    cfg_unref(h->cfg);
    free(h);
}

/* ---- the verdict table of names' addresses ----------------------------------- */

/* SS's family and IP address as the table's words (the port aside). */
static uint32_t addr_key(const struct sockaddr_storage *ss, uint32_t ip[4])
{
    memset(ip, 0, 4 * sizeof(uint32_t));
    if (ss->ss_family == AF_INET) {
        ip[0] = ((const struct sockaddr_in *)ss)->sin_addr.s_addr;
        return AF_INET;
    }
    memcpy(ip, &((const struct sockaddr_in6 *)ss)->sin6_addr, 16);
    return AF_INET6;
}

void health_addr_set(struct fg_addr_health *e, const struct sockaddr_storage *ss)
{
    uint32_t ip[4] = {0, 0, 0, 0}, family = ss ? addr_key(ss, ip) : 0;
    uint32_t seq = e->seq; /* the checker's own to write */

    __atomic_store_n(&e->seq, seq + 1, __ATOMIC_RELAXED);
    __atomic_thread_fence(__ATOMIC_RELEASE);
    __atomic_store_n(&e->family, family, __ATOMIC_RELAXED);
    for (int k = 0; k < 4; k++)
        __atomic_store_n(&e->ip[k], ip[k], __ATOMIC_RELAXED);
    __atomic_store_n(&e->down, 0, __ATOMIC_RELAXED);
    __atomic_store_n(&e->seq, seq + 2, __ATOMIC_RELEASE);
}

/* Does E hold address FAMILY/IP, and is it down? Read between two equal
 * even values of its seq; an entry that keeps changing holds nothing. */
static bool entry_match(const struct fg_addr_health *e, uint32_t family, const uint32_t ip[4],
                        bool *down)
{
    for (int tries = 0; tries < 64; tries++) {
        uint32_t seq = __atomic_load_n(&e->seq, __ATOMIC_ACQUIRE);
        if (seq & 1)
            continue;
        bool same = __atomic_load_n(&e->family, __ATOMIC_RELAXED) == family;
        for (int k = 0; same && k < 4; k++)
            same = __atomic_load_n(&e->ip[k], __ATOMIC_RELAXED) == ip[k];
        *down = __atomic_load_n(&e->down, __ATOMIC_RELAXED) != 0;
        __atomic_thread_fence(__ATOMIC_ACQUIRE);
        if (__atomic_load_n(&e->seq, __ATOMIC_RELAXED) == seq)
            return same;
    }
    return false;
}

bool health_addr_down(const struct fg_addr_health *table, const struct sockaddr_storage *ss)
{
    uint32_t ip[4], family = addr_key(ss, ip);
    bool down;

    for (size_t j = 0; j < FG_NAME_HEALTH_ADDRS; j++)
        if (entry_match(&table[j], family, ip, &down))
            return down;
    return false;
}

/* ---- metrics ------------------------------------------------------------------- */

#define APPEND(...) evbuffer_add_printf(out, __VA_ARGS__)
#define FAMILY(name, type, help) APPEND("# HELP " name " " help "\n# TYPE " name " " type "\n")

static void put_labels(struct evbuffer *out, const struct health_server *s)
{
    APPEND("{upstream=\"");
    metrics_put_label(out, s->upstream);
    APPEND("\",server=\"");
    metrics_put_label(out, s->server);
    if (s->address != NULL) {
        APPEND("\",address=\"");
        metrics_put_label(out, s->address);
    }
    APPEND("\"");
}

static void put_healthy(struct evbuffer *out, const struct health_server *s)
{
    APPEND("flowgate_upstream_server_healthy");
    put_labels(out, s);
    APPEND("} %d\n", !s->down);
}

static void put_checks(struct evbuffer *out, const struct health_server *s)
{
    for (int r = 0; r < HEALTH__COUNT; r++) {
        APPEND("flowgate_upstream_health_checks_total");
        put_labels(out, s);
        APPEND(",result=\"%s\"} %llu\n", health_result_str((enum health_result)r),
               (unsigned long long)s->results[r]);
    }
}

/* PUT for every server and every address of a name checked. */
static void put_each(const struct health *h, struct evbuffer *out,
                     void (*put)(struct evbuffer *, const struct health_server *))
{
    for (size_t i = 0; i < h->n; i++)
        put(out, h->servers[i]);
    for (size_t i = 0; i < h->nnames; i++)
        for (size_t j = 0; j < FG_NAME_HEALTH_ADDRS; j++)
            if (h->names[i]->addrs[j] != NULL)
                put(out, h->names[i]->addrs[j]);
}

void health_metrics(const struct health *h, struct evbuffer *out)
{
    if (h == NULL || h->n + h->nnames == 0)
        return;
    FAMILY("flowgate_upstream_server_healthy", "gauge",
           "Active health checks: 0 after fall failed checks in a row, 1 again after rise passed. "
           "A server given by name has one sample per address checked (label address).");
    put_each(h, out, put_healthy);
    FAMILY("flowgate_upstream_health_checks_total", "counter",
           "Active health checks by upstream, server (and address of a name) and result.");
    put_each(h, out, put_checks);
}
