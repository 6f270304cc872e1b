/*
 * test_watch.c - watch.c against a real event base and real files in a temp
 * directory: a kubelet's symlink swap, a burst of writes, an unrelated file,
 * an editor's rename, a replaced set, a symlink to another directory, a
 * missing or deleted directory, and the cap on a burst that never settles.
 * Each test runs the loop for bounded times (well under a second each).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <event2/event.h>

#include "watch.h"

#define SLACK_MS 5 /* clock rounding between the test's reading and libevent's */

static char dir[128];
static char err[256];

/* What the callback saw. */
struct probe {
    int calls;         /* times called */
    uint64_t fired_ms; /* monotonic time of the last call */
};

/* Writes PATH every INTERVAL_MS, LEFT more times, from the event loop. */
struct writer {
    const char *path;      /* the file rewritten */
    int left;              /* writes still to do */
    uint32_t interval_ms;  /* between two writes */
    struct event *ev;      /* its timer */
    uint64_t first_ms;     /* monotonic time of the first write */
    uint64_t last_ms;      /* ... and of the last one */
    struct probe *probe;   /* to note whether a call came before the last write */
    int calls_before_last; /* probe->calls when the last write was done */
};

static uint64_t now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static const char *tmp(const char *name)
{
    static char paths[8][256];
    static int next;
    char *p = paths[next++ % 8];

    snprintf(p, sizeof(paths[0]), "%s/%s", dir, name);
    return p;
}

static void write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");

    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

static void on_change(void *arg)
{
    struct probe *p = arg;

    p->calls++;
    p->fired_ms = now_ms();
}

static void run_ms(struct event_base *base, uint32_t ms)
{
    struct timeval tv = {(time_t)(ms / 1000), (suseconds_t)(ms % 1000) * 1000};

    event_base_loopexit(base, &tv);
    event_base_dispatch(base);
}

/* A watcher on a new base, watching PATHS. */
static struct watch *start(struct event_base **base, struct probe *p, uint32_t debounce_ms,
                           const char *const *paths, size_t n)
{
    struct watch *w;

    *base = event_base_new();
    assert_non_null(*base);
    w = watch_new(*base, debounce_ms, on_change, p, err, sizeof(err));
    if (w == NULL)
        fail_msg("watch_new: %s", err);
    assert_int_equal(watch_set_paths(w, paths, n, err, sizeof(err)), 0);
    return w;
}

static void stop(struct event_base *base, struct watch *w)
{
    watch_free(w);
    event_base_free(base);
}

static void on_write(evutil_socket_t fd, short what, void *arg)
{
    struct writer *wr = arg;
    struct timeval tv = {0, (suseconds_t)wr->interval_ms * 1000};

    write_file(wr->path, "x\n");
    wr->last_ms = now_ms();
    if (wr->first_ms == 0)
        wr->first_ms = wr->last_ms;
    if (--wr->left > 0)
        evtimer_add(wr->ev, &tv);
    else
        wr->calls_before_last = wr->probe->calls;
}

static int setup(void **state)
{
    snprintf(dir, sizeof(dir), "%s/fg-test-watch-XXXXXX",
             getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
    return mkdtemp(dir) != NULL ? 0 : -1;
}

static int teardown(void **state)
{
    char cmd[200];

    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    return system(cmd) == 0 ? 0 : -1;
}

/* A Kubernetes Secret volume: tls.crt -> ..data/tls.crt, ..data -> ..2026_a.
 * The kubelet publishes a new version by renaming a new ..data over the old
 * one: tls.crt's own inode never changes, yet that is one reload, once the
 * debounce has passed. A second rotation (after the reload re-gave the
 * paths), with the old version removed as the kubelet does, is one more. */
static void test_kubelet_swap(void **state)
{
    const char *crt = tmp("kube/tls.crt");
    struct event_base *base;
    struct probe p = {0, 0};
    struct watch *w;
    uint64_t swapped;

    assert_int_equal(mkdir(tmp("kube"), 0700), 0);
    assert_int_equal(mkdir(tmp("kube/..2026_a"), 0700), 0);
    write_file(tmp("kube/..2026_a/tls.crt"), "a\n");
    assert_int_equal(symlink("..2026_a", tmp("kube/..data")), 0);
    assert_int_equal(symlink("..data/tls.crt", crt), 0);
    w = start(&base, &p, 100, &crt, 1);

    assert_int_equal(mkdir(tmp("kube/..2026_b"), 0700), 0);
    write_file(tmp("kube/..2026_b/tls.crt"), "b\n");
    assert_int_equal(symlink("..2026_b", tmp("kube/..data_tmp")), 0);
    assert_int_equal(rename(tmp("kube/..data_tmp"), tmp("kube/..data")), 0);
    swapped = now_ms();
    run_ms(base, 400);
    assert_int_equal(p.calls, 1);
    assert_true(p.fired_ms + SLACK_MS >= swapped + 100);

    assert_int_equal(watch_set_paths(w, &crt, 1, err, sizeof(err)), 0);
    assert_int_equal(mkdir(tmp("kube/..2026_c"), 0700), 0);
    write_file(tmp("kube/..2026_c/tls.crt"), "c\n");
    assert_int_equal(symlink("..2026_c", tmp("kube/..data_tmp")), 0);
    assert_int_equal(rename(tmp("kube/..data_tmp"), tmp("kube/..data")), 0);
    assert_int_equal(unlink(tmp("kube/..2026_b/tls.crt")), 0);
    assert_int_equal(rmdir(tmp("kube/..2026_b")), 0);
    run_ms(base, 400);
    assert_int_equal(p.calls, 2);
    stop(base, w);
}

/* Five writes 10 ms apart with a 200 ms debounce: one call, and it comes a
 * debounce after the LAST write (each event restarts the timer). */
static void test_burst_is_one_reload(void **state)
{
    const char *conf = tmp("burst.conf");
    struct event_base *base;
    struct probe p = {0, 0};
    struct writer wr = {conf, 5, 10, NULL, 0, 0, &p, 0};
    struct timeval now = {0, 0};
    struct watch *w;

    write_file(conf, "v0\n");
    w = start(&base, &p, 200, &conf, 1);
    wr.ev = evtimer_new(base, on_write, &wr);
    evtimer_add(wr.ev, &now);
    run_ms(base, 700);
    assert_int_equal(wr.left, 0);
    assert_int_equal(p.calls, 1);
    assert_true(p.fired_ms + SLACK_MS >= wr.last_ms + 200);
    event_free(wr.ev);
    stop(base, w);
}

/* Another file in the watched directory, created, written, renamed and
 * deleted: no call. */
static void test_unwatched_file(void **state)
{
    const char *conf = tmp("quiet.conf");
    struct event_base *base;
    struct probe p = {0, 0};
    struct watch *w;

    write_file(conf, "v0\n");
    w = start(&base, &p, 50, &conf, 1);
    write_file(tmp("other.txt"), "x\n");
    assert_int_equal(rename(tmp("other.txt"), tmp("other2.txt")), 0);
    assert_int_equal(unlink(tmp("other2.txt")), 0);
    assert_int_equal(mkdir(tmp("sub"), 0700), 0);
    assert_int_equal(rmdir(tmp("sub")), 0);
    run_ms(base, 200);
    assert_int_equal(p.calls, 0);
    stop(base, w);
}

/* An editor writes a temporary file and renames it over the original. */
static void test_editor_rename(void **state)
{
    const char *conf = tmp("edit.conf");
    struct event_base *base;
    struct probe p = {0, 0};
    struct watch *w;

    write_file(conf, "v0\n");
    w = start(&base, &p, 50, &conf, 1);
    write_file(tmp(".edit.conf.swp"), "v1\n");
    assert_int_equal(rename(tmp(".edit.conf.swp"), conf), 0);
    run_ms(base, 250);
    assert_int_equal(p.calls, 1);
    stop(base, w);
}

/* A new set replaces the old one: the old directory's changes no longer
 * count, the new ones do, and a directory kept across the change keeps
 * counting for the names of the new set. */
static void test_set_replaces(void **state)
{
    const char *before[] = {tmp("d1/a.conf")};
    const char *after[] = {tmp("d2/b.conf"), tmp("d3/c.conf")};
    const char *third[] = {tmp("d3/c.conf"), tmp("d3/e.conf")};
    struct event_base *base;
    struct probe p = {0, 0};
    struct watch *w;

    assert_int_equal(mkdir(tmp("d1"), 0700), 0);
    assert_int_equal(mkdir(tmp("d2"), 0700), 0);
    assert_int_equal(mkdir(tmp("d3"), 0700), 0);
    w = start(&base, &p, 50, before, 1);
    assert_int_equal(watch_set_paths(w, after, 2, err, sizeof(err)), 0);
    write_file(tmp("d1/a.conf"), "x\n");
    run_ms(base, 200);
    assert_int_equal(p.calls, 0);
    write_file(tmp("d2/b.conf"), "x\n");
    run_ms(base, 200);
    assert_int_equal(p.calls, 1);

    assert_int_equal(watch_set_paths(w, third, 2, err, sizeof(err)), 0);
    write_file(tmp("d2/b.conf"), "y\n");
    run_ms(base, 200);
    assert_int_equal(p.calls, 1);
    write_file(tmp("d3/e.conf"), "x\n");
    run_ms(base, 200);
    assert_int_equal(p.calls, 2);

    assert_int_equal(watch_set_paths(w, NULL, 0, err, sizeof(err)), 0);
    write_file(tmp("d3/c.conf"), "y\n");
    run_ms(base, 200);
    assert_int_equal(p.calls, 2);
    stop(base, w);
}

/* The configured path is a symlink into another directory: an edit in place
 * of the file it leads to counts, as does repointing the link. */
static void test_symlink_elsewhere(void **state)
{
    const char *link = tmp("etc/flowgate.conf");
    struct event_base *base;
    struct probe p = {0, 0};
    struct watch *w;

    assert_int_equal(mkdir(tmp("etc"), 0700), 0);
    assert_int_equal(mkdir(tmp("srv"), 0700), 0);
    write_file(tmp("srv/real.conf"), "v0\n");
    assert_int_equal(symlink("../srv/real.conf", link), 0);
    w = start(&base, &p, 50, &link, 1);
    write_file(tmp("srv/real.conf"), "v1\n");
    run_ms(base, 200);
    assert_int_equal(p.calls, 1);

    write_file(tmp("srv/next.conf"), "v2\n");
    assert_int_equal(symlink("../srv/next.conf", tmp("etc/new.tmp")), 0);
    assert_int_equal(rename(tmp("etc/new.tmp"), link), 0);
    run_ms(base, 200);
    assert_int_equal(p.calls, 2);
    stop(base, w);
}

/* A directory that does not exist is skipped (logged), the rest watched; a
 * watched directory deleted counts, and comes back with the next set. */
static void test_missing_and_deleted_dir(void **state)
{
    const char *paths[] = {tmp("nowhere/x.conf"), tmp("gone/y.conf")};
    struct event_base *base;
    struct probe p = {0, 0};
    struct watch *w;

    assert_int_equal(mkdir(tmp("gone"), 0700), 0);
    w = start(&base, &p, 50, paths, 2);
    assert_int_equal(rmdir(tmp("gone")), 0);
    run_ms(base, 200);
    assert_int_equal(p.calls, 1);

    assert_int_equal(mkdir(tmp("gone"), 0700), 0);
    assert_int_equal(watch_set_paths(w, paths, 2, err, sizeof(err)), 0);
    write_file(tmp("gone/y.conf"), "x\n");
    run_ms(base, 200);
    assert_int_equal(p.calls, 2);
    stop(base, w);
}

/* A file rewritten every 20 ms for 800 ms never settles: with a 100 ms
 * debounce the cap (5 x 100 ms from the first write) still calls while the
 * writes go on. */
static void test_cap_on_endless_changes(void **state)
{
    const char *conf = tmp("busy.conf");
    struct event_base *base;
    struct probe p = {0, 0};
    struct writer wr = {conf, 40, 20, NULL, 0, 0, &p, 0};
    struct timeval now = {0, 0};
    struct watch *w;

    write_file(conf, "v0\n");
    w = start(&base, &p, 100, &conf, 1);
    wr.ev = evtimer_new(base, on_write, &wr);
    evtimer_add(wr.ev, &now);
    run_ms(base, 1500);
    assert_int_equal(wr.left, 0);
    assert_true(wr.calls_before_last >= 1);
    assert_true(p.calls >= 2); /* the cut burst, then the writes after the cut */
    event_free(wr.ev);
    stop(base, w);
}

/* A new debounce applies from the next burst; a bad watch_new is refused. */
static void test_debounce_change_and_args(void **state)
{
    const char *conf = tmp("deb.conf");
    struct event_base *base;
    struct probe p = {0, 0};
    struct watch *w;
    uint64_t t;

    write_file(conf, "v0\n");
    w = start(&base, &p, 500, &conf, 1);
    watch_set_debounce(w, 20);
    write_file(conf, "v1\n");
    t = now_ms();
    run_ms(base, 150);
    assert_int_equal(p.calls, 1);
    assert_true(p.fired_ms + SLACK_MS >= t + 20);
    assert_null(watch_new(NULL, 10, on_change, &p, err, sizeof(err)));
    assert_non_null(strstr(err, "event base"));
    assert_null(watch_new(base, 10, NULL, &p, err, sizeof(err)));
    watch_free(NULL);
    stop(base, w);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_kubelet_swap),
        cmocka_unit_test(test_burst_is_one_reload),
        cmocka_unit_test(test_unwatched_file),
        cmocka_unit_test(test_editor_rename),
        cmocka_unit_test(test_set_replaces),
        cmocka_unit_test(test_symlink_elsewhere),
        cmocka_unit_test(test_missing_and_deleted_dir),
        cmocka_unit_test(test_cap_on_endless_changes),
        cmocka_unit_test(test_debounce_change_and_args),
    };

    return cmocka_run_group_tests(tests, setup, teardown);
}
