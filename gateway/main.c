/*
 * main.c - command line, signals, start and stop of the workers.
 *
 * The main thread owns the configuration snapshot, the TLS contexts, the
 * admin listener and the signals; the workers own all client traffic.
 */
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/un.h>

#include <event2/event.h>
#include <hiredis/hiredis.h>
#include <jansson.h>
#include <libconfig.h>
#include <nghttp2/nghttp2.h>
#include <openssl/crypto.h>

#include "admin.h"
#include "cfg.h"
#include "health.h"
#include "log.h"
#include "tls.h"
#include "watch.h"
#include "worker.h"

#define ERRBUF 16384

/* The source revision the binary was built from (`git describe`, passed by the
 * Makefile); "unknown" when it was built outside a git checkout. */
#ifndef FG_REVISION
#define FG_REVISION "unknown"
#endif

struct app {
    struct event_base *base;
    struct fg_config *cfg;
    struct tls_ctxset *tls;
    struct worker *workers;
    unsigned nworkers;
    unsigned nexited;            /* atomic: worker loops that ended */
    struct admin *admin;
    struct event *sig_term, *sig_int, *sig_hup, *sig_usr1;
    struct event *tick;          /* ticket key rotation */
    struct event *delay;         /* shutdown_delay_ms: SIGTERM to the listeners' close */
    struct event *deadline;      /* shutdown_timeout_ms, from the listeners' close */
    struct event *exited_ev;     /* a worker loop ended (exited_fd) */
    int exited_fd;               /* eventfd the workers write as they end */
    bool stopping;
    struct admin_state admin_st; /* what /metrics says of the configuration in force */
    struct watch *watch;         /* reload.watch: files of the snapshot in force; or NULL */
    struct health *health;       /* active health checks, on this loop */
};

static void usage(FILE *f)
{
    fprintf(f, "usage: flowgate [-c FILE] [-t] [-V] [-h]\n"
               "  -c FILE  configuration file (default " FG_DEFAULT_CONFIG ")\n"
               "  -t       check the configuration and exit\n"
               "  -V       print the version and the linked libraries' versions\n"
               "  -h       this help\n");
}

static void print_versions(void)
{
    printf("flowgate %s (revision %s)\n", FG_VERSION, FG_REVISION);
    printf("  libevent %s\n", event_get_version());
    printf("  %s\n", OpenSSL_version(OPENSSL_VERSION));
    printf("  jansson %s\n", jansson_version_str());
    printf("  libconfig %d.%d.%d\n", LIBCONFIG_VER_MAJOR, LIBCONFIG_VER_MINOR,
           LIBCONFIG_VER_REVISION);
    printf("  hiredis %d.%d.%d\n", HIREDIS_MAJOR, HIREDIS_MINOR, HIREDIS_PATCH);
    printf("  nghttp2 %s\n", nghttp2_version(0)->version_str);
}

/* systemd's notify protocol (sd_notify(3)) without libsystemd: one datagram. */
static void notify_systemd(const char *state)
{
    const char *path = getenv("NOTIFY_SOCKET");
    struct sockaddr_un sa = {.sun_family = AF_UNIX};

    if (path == NULL || (path[0] != '/' && path[0] != '@') || strlen(path) >= sizeof(sa.sun_path))
        return;
    strcpy(sa.sun_path, path);
    if (path[0] == '@')
        sa.sun_path[0] = '\0';
    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return;
    socklen_t len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + strlen(path));
    sendto(fd, state, strlen(state), MSG_NOSIGNAL, (struct sockaddr *)&sa, len);
    close(fd);
}

/* A reload begins; READY=1 ends it. MONOTONIC_USEC is the time of this
 * message (sd_notify(3)): systemd 253's Type=notify-reload compares it with
 * its own request to know the reload is the one it asked for. */
static void notify_reloading(void)
{
    struct timespec ts;
    char msg[64];

    if (clock_gettime(CLOCK_MONOTONIC, &ts) < 0) {
        notify_systemd("RELOADING=1");
        return;
    }
    snprintf(msg, sizeof(msg), "RELOADING=1\nMONOTONIC_USEC=%llu",
             (unsigned long long)ts.tv_sec * 1000000ULL + (unsigned long long)ts.tv_nsec / 1000);
    notify_systemd(msg);
}

static int check_config(const char *path)
{
    char *err = calloc(1, ERRBUF);
    struct fg_config *cfg = cfg_load(path, err, ERRBUF);
    int rc = 1;

    if (cfg && cfg->nhttps > 0) {
        struct tls_ctxset *tls = tls_build(cfg, NULL, err, ERRBUF);
        if (tls == NULL) {
            cfg_unref(cfg);
            cfg = NULL;
        }
        tls_free(tls);
    }
    if (cfg) {
        printf("configuration OK\n");
        rc = 0;
    } else {
        fputs(err, stderr);
        if (err[0] && err[strlen(err) - 1] != '\n')
            fputc('\n', stderr);
    }
    cfg_unref(cfg);
    free(err);
    return rc;
}

static double now_epoch(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

/* Every line of TEXT ("FILE:LINE: message" each) as its own log line. */
static void log_problems(const char *text)
{
    const char *p = text;

    while (*p) {
        const char *nl = strchr(p, '\n');
        int n = nl ? (int)(nl - p) : (int)strlen(p);
        if (n > 0)
            log_error("reload: %.*s", n, p);
        p += n + (nl != NULL);
    }
}

static bool same_log(const struct fg_log *a, const struct fg_log *b)
{
    const char *x[] = {a->access, a->error}, *y[] = {b->access, b->error};

    for (size_t i = 0; i < 2; i++)
        if (strcmp(x[i] ? x[i] : "", y[i] ? y[i] : "") != 0)
            return false;
    return a->level == b->level;
}

static bool same_admin(const struct fg_sockaddr *a, const struct fg_sockaddr *b)
{
    return (a == NULL) == (b == NULL) &&
           (a == NULL || (a->len == b->len && memcmp(&a->ss, &b->ss, a->len) == 0));
}

/*
 * Reload (SIGHUP, or a watched file changed): build and check a whole new
 * snapshot here, off the workers; on any problem log each one and keep the
 * old. A good one goes to every worker through its wake-up; each swaps its
 * own pointer at its next loop round (no lock on the request path).
 */
static void update_watch(struct app *app);

static void reload(struct app *app, const char *why)
{
    char *err = calloc(1, ERRBUF);
    struct fg_config *cfg = NULL;
    struct tls_ctxset *tls = NULL;

    notify_reloading();
    log_info("reload (%s): reading %s", why, app->cfg->path);
    if (err == NULL || (cfg = cfg_load(app->cfg->path, err, ERRBUF)) == NULL)
        goto fail;
    if (cfg->nhttps > 0 && (tls = tls_build(cfg, app->tls, err, ERRBUF)) == NULL)
        goto fail;
    /* Every step that can fail comes before the first that changes anything. */
    bool logs_move = !same_log(&app->cfg->log, &cfg->log);
    bool admin_moves = !same_admin(app->cfg->admin, cfg->admin);
    struct admin *moved = NULL;
    if (logs_move && log_check(&cfg->log, err, ERRBUF) < 0)
        goto fail;
    if (admin_moves && cfg->admin &&
        (moved = admin_start(app->base, cfg->admin, &app->admin_st, app->workers, app->nworkers,
                             err, ERRBUF)) == NULL)
        goto fail;
    if (logs_move && log_open(&cfg->log, err, ERRBUF) < 0)
        log_error("reload: %s; logging stays where it was", err);
    if (admin_moves) {
        admin_stop(app->admin);
        app->admin = moved;
    }
    if (cfg->workers != app->nworkers)
        log_warn("reload: workers = %u needs a restart (%u run now); the rest applies",
                 cfg->workers, app->nworkers);
    /* Before the workers get the snapshot: it carries the verdicts of servers
     * still listed, so none of them gets traffic again in between. */
    if (health_apply(app->health, cfg, app->admin_st.generation + 1) < 0)
        log_error("reload: health checks: out of memory; the previous ones go on");
    for (unsigned i = 0; i < app->nworkers; i++)
        if (worker_reload(&app->workers[i], cfg, tls, app->admin_st.generation + 1) < 0)
            log_error("reload: worker %u: out of memory; it keeps the old configuration", i);
    cfg_unref(app->cfg);
    tls_free(app->tls);
    app->cfg = cfg;
    app->tls = tls;
    app->admin_st.cfg = cfg;
    app->admin_st.tls = tls;
    app->admin_st.generation++;
    app->admin_st.reloads_ok++;
    app->admin_st.last_reload_ok = now_epoch();
    app->admin_st.last_reload_failed = false;
    log_info("reload: configuration generation %llu in force",
             (unsigned long long)app->admin_st.generation);
    update_watch(app);
    notify_systemd("READY=1");
    free(err);
    return;
fail:
    log_error("reload: the configuration in force stays (generation %llu)",
              (unsigned long long)app->admin_st.generation);
    log_problems(err ? err : "out of memory");
    app->admin_st.reloads_failed++;
    app->admin_st.last_reload_failed = true;
    tls_free(tls);
    cfg_unref(cfg);
    free(err);
    update_watch(app);
    notify_systemd("READY=1");
}

static void on_files_changed(void *arg)
{
    struct app *app = arg;

    if (!app->stopping)
        reload(app, "a watched file changed");
}

static void on_files_changed(void *arg);

/* Watch the files of the configuration in force (after every reload, failed
 * ones too: a directory that came back is watched again), or stop watching. */
static void update_watch(struct app *app)
{
    const struct fg_config *cfg = app->cfg;
    char err[256];

    if (!cfg->reload.watch) {
        watch_free(app->watch);
        app->watch = NULL;
        return;
    }
    if (app->watch == NULL &&
        (app->watch = watch_new(app->base, cfg->reload.debounce_ms, on_files_changed, app, err,
                                sizeof(err))) == NULL) {
        log_error("reload.watch: %s; reload with SIGHUP", err);
        return;
    }
    watch_set_debounce(app->watch, cfg->reload.debounce_ms);
    if (watch_set_paths(app->watch, (const char *const *)cfg->watch_paths, cfg->nwatch_paths, err,
                        sizeof(err)) < 0)
        log_error("reload.watch: %s", err);
}


static struct timeval ms_timeval(uint32_t ms)
{
    struct timeval tv = {.tv_sec = ms / 1000, .tv_usec = (ms % 1000) * 1000};
    return tv;
}

/* The end of the delay: the workers close their listeners and idle
 * connections, and the requests in flight get shutdown_timeout_ms from now.
 * The admin listener stays until the process exits. */
static void close_listeners(struct app *app)
{
    log_info("stopping: listeners closed, finishing in-flight requests (at most %u ms)",
             app->cfg->shutdown_timeout_ms);
    admin_set_phase(app->admin, ADMIN_STOPPING);
    for (unsigned i = 0; i < app->nworkers; i++)
        worker_stop(&app->workers[i]);
    struct timeval tv = ms_timeval(app->cfg->shutdown_timeout_ms);
    evtimer_add(app->deadline, &tv);
}

static void on_delay_end(evutil_socket_t fd, short what, void *arg)
{
    close_listeners(arg);
}

/* SIGTERM/SIGINT: /readyz answers 503 and every response says
 * Connection: close from now on, while the listeners keep accepting for
 * shutdown_delay_ms, the time a load balancer needs to stop sending here. */
static void begin_stop(struct app *app)
{
    if (app->stopping)
        return;
    app->stopping = true;
    notify_systemd("STOPPING=1");
    admin_set_phase(app->admin, ADMIN_DRAINING);
    worker_drain_all();
    if (app->cfg->shutdown_delay_ms == 0) {
        close_listeners(app);
        return;
    }
    log_info("stopping: /readyz answers 503, listeners close in %u ms",
             app->cfg->shutdown_delay_ms);
    struct timeval tv = ms_timeval(app->cfg->shutdown_delay_ms);
    evtimer_add(app->delay, &tv);
}

static void on_signal(evutil_socket_t sig, short what, void *arg)
{
    struct app *app = arg;

    if (sig == SIGTERM || sig == SIGINT) {
        begin_stop(app);
    } else if (sig == SIGUSR1) {
        /* Written after the reopen, so an error log that is a file gets it in
         * the new file: the sign that the old one can be compressed. */
        log_reopen();
        log_info("SIGUSR1: log files reopened");
    } else if (sig == SIGHUP && app->stopping) {
        /* The process is leaving: READY=1 after STOPPING=1 would be a lie. */
        log_info("reload: ignored while stopping");
    } else if (sig == SIGHUP) {
        reload(app, "SIGHUP");
    }
}

static void on_deadline(evutil_socket_t fd, short what, void *arg)
{
    struct app *app = arg;

    log_warn("shutdown timeout: closing the remaining connections");
    for (unsigned i = 0; i < app->nworkers; i++)
        worker_break(&app->workers[i]);
}

static void on_worker_exit(evutil_socket_t fd, short what, void *arg)
{
    struct app *app = arg;
    uint64_t n;

    while (read(fd, &n, sizeof(n)) > 0)
        ;
    if (__atomic_load_n(&app->nexited, __ATOMIC_ACQUIRE) == app->nworkers)
        event_base_loopbreak(app->base);
}

static void on_tick(evutil_socket_t fd, short what, void *arg)
{
    struct app *app = arg;

    if (app->tls)
        tls_rotate_tickets(app->tls);
}

static struct app *g_app; /* for the worker-exit hook only */

static void worker_exited(void)
{
    uint64_t one = 1;

    __atomic_add_fetch(&g_app->nexited, 1, __ATOMIC_RELEASE);
    if (write(g_app->exited_fd, &one, sizeof(one)) < 0 && errno != EAGAIN)
        abort(); /* the main loop would wait for this worker for ever */
}

static int setup_events(struct app *app)
{
    struct timeval minute = {.tv_sec = 60, .tv_usec = 0};

    app->sig_term = evsignal_new(app->base, SIGTERM, on_signal, app);
    app->sig_int = evsignal_new(app->base, SIGINT, on_signal, app);
    app->sig_hup = evsignal_new(app->base, SIGHUP, on_signal, app);
    app->sig_usr1 = evsignal_new(app->base, SIGUSR1, on_signal, app);
    app->tick = event_new(app->base, -1, EV_PERSIST, on_tick, app);
    app->delay = evtimer_new(app->base, on_delay_end, app);
    app->deadline = evtimer_new(app->base, on_deadline, app);
    /* Threads reach the main loop only through this eventfd: libevent runs
     * without locks, each base touched by its own thread alone. */
    app->exited_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (app->exited_fd < 0)
        return -1;
    app->exited_ev = event_new(app->base, app->exited_fd, EV_READ | EV_PERSIST, on_worker_exit, app);
    if (!app->sig_term || !app->sig_int || !app->sig_hup || !app->sig_usr1 || !app->tick ||
        !app->delay || !app->deadline || !app->exited_ev || event_add(app->exited_ev, NULL) < 0)
        return -1;
    evsignal_add(app->sig_term, NULL);
    evsignal_add(app->sig_int, NULL);
    evsignal_add(app->sig_hup, NULL);
    evsignal_add(app->sig_usr1, NULL);
    evtimer_add(app->tick, &minute);
    return 0;
}

static int start(struct app *app, char *err)
{
    if (app->cfg->nhttps > 0 && (app->tls = tls_build(app->cfg, NULL, err, ERRBUF)) == NULL)
        return -1;
    app->nworkers = app->cfg->workers;
    app->workers = calloc(app->nworkers, sizeof(*app->workers));
    if (app->workers == NULL)
        return -1;
    for (unsigned i = 0; i < app->nworkers; i++)
        if (worker_init(&app->workers[i], i, app->cfg, app->tls, err, ERRBUF) < 0)
            return -1;
    if ((app->health = health_new(app->base, app->workers, app->nworkers)) == NULL ||
        health_apply(app->health, app->cfg, 1) < 0) {
        snprintf(err, ERRBUF, "health checks: out of memory");
        return -1;
    }
    app->admin_st.health = app->health;
    app->admin_st.cfg = app->cfg;
    app->admin_st.tls = app->tls;
    app->admin_st.generation = 1;
    app->admin_st.last_reload_ok = app->admin_st.started = now_epoch();
    if (app->cfg->admin &&
        (app->admin = admin_start(app->base, app->cfg->admin, &app->admin_st, app->workers,
                                  app->nworkers, err, ERRBUF)) == NULL)
        return -1;
    if (setup_events(app) < 0) {
        snprintf(err, ERRBUF, "event setup failed");
        return -1;
    }
    update_watch(app);
    for (unsigned i = 0; i < app->nworkers; i++)
        if (worker_start(&app->workers[i]) < 0) {
            snprintf(err, ERRBUF, "cannot start worker thread");
            return -1;
        }
    return 0;
}

static void cleanup(struct app *app)
{
    for (unsigned i = 0; i < app->nworkers; i++)
        if (app->workers[i].base)
            worker_free(&app->workers[i]);
    free(app->workers);
    admin_stop(app->admin);
    watch_free(app->watch);
    health_free(app->health);
    struct event *evs[] = {app->sig_term, app->sig_int, app->sig_hup, app->sig_usr1,
                           app->tick, app->delay, app->deadline, app->exited_ev};
    for (size_t i = 0; i < sizeof(evs) / sizeof(evs[0]); i++)
        if (evs[i])
            event_free(evs[i]);
    tls_free(app->tls);
    cfg_unref(app->cfg);
    if (app->exited_fd >= 0)
        close(app->exited_fd);
    if (app->base)
        event_base_free(app->base);
    log_close();
}

static int run(const char *path)
{
    struct app app = {0};
    char *err = calloc(1, ERRBUF);
    int rc = 1;

    if (err == NULL)
        return 1;
    g_app = &app;
    worker_exit_hook = worker_exited;
    signal(SIGPIPE, SIG_IGN);
    app.exited_fd = -1;
    app.cfg = cfg_load(path, err, ERRBUF);
    if (app.cfg == NULL) {
        fputs(err, stderr);
        goto out;
    }
    if (log_open(&app.cfg->log, err, ERRBUF) < 0) {
        fprintf(stderr, "%s\n", err);
        goto out;
    }
    app.base = event_base_new();
    if (app.base == NULL || start(&app, err) < 0) {
        log_error("%s", err);
        goto out;
    }
    log_info("flowgate %s (revision %s) started: %u workers", FG_VERSION, FG_REVISION,
             app.nworkers);
    notify_systemd("READY=1");
    event_base_dispatch(app.base);
    /* The signal events go with the base below: a second SIGTERM (or a
     * SIGHUP, whose default also kills) during teardown must not end the
     * process before it exits 0. */
    signal(SIGTERM, SIG_IGN);
    signal(SIGINT, SIG_IGN);
    signal(SIGHUP, SIG_IGN);
    signal(SIGUSR1, SIG_IGN);
    for (unsigned i = 0; i < app.nworkers; i++)
        worker_join(&app.workers[i]);
    log_info("stopped");
    rc = 0;
out:
    if (rc != 0 && app.workers) {
        /* Threads that started must end before their bases are freed. */
        for (unsigned i = 0; i < app.nworkers; i++)
            if (app.workers[i].thread) {
                worker_stop(&app.workers[i]);
                event_base_loopbreak(app.workers[i].base);
                worker_join(&app.workers[i]);
            }
    }
    cleanup(&app);
    free(err);
    return rc;
}

int main(int argc, char **argv)
{
    const char *path = FG_DEFAULT_CONFIG;
    bool test = false;
    int opt;

    while ((opt = getopt(argc, argv, "c:tVh")) != -1) {
        switch (opt) {
        case 'c': path = optarg; break;
        case 't': test = true; break;
        case 'V': print_versions(); return 0;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 1;
        }
    }
    if (optind != argc) {
        usage(stderr);
        return 1;
    }
    return test ? check_config(path) : run(path);
}
