/*
 * watch.c - directory watches with inotify, and the debounce that turns a
 * burst of events into one reload request. See watch.h for why directories.
 *
 * Several paths may lead to one directory, and inotify gives one watch
 * descriptor per directory inode whatever the path used, so the watched set
 * is a list of directories keyed by descriptor, each with the file names
 * that matter in it.
 */
#include <errno.h>
#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>

#include "log.h"
#include "watch.h"

/* No IN_MODIFY: a file being written is read once it is closed (or renamed
 * into place), never half-way. The *_SELF events and IN_ATTRIB on the
 * directory itself come with no name. */
#define WATCH_MASK                                                                                 \
    (IN_CREATE | IN_MOVED_TO | IN_MOVED_FROM | IN_CLOSE_WRITE | IN_DELETE | IN_ATTRIB |            \
     IN_DELETE_SELF | IN_MOVE_SELF | IN_ONLYDIR)
#define WATCH_MAX_LINKS 8        /* symlinks followed from one path: a loop ends here */
#define WATCH_CAP_FACTOR 5       /* a burst is cut after this many debounce periods */
#define WATCH_KUBE_DATA "..data" /* the symlink a kubelet renames over to publish */

/* One watched directory. */
struct watch_dir {
    int wd;        /* inotify watch descriptor; -1 once the directory went away */
    char *path;    /* the directory as first derived from a path, for logs */
    char **names;  /* base names of the watched files in it */
    size_t nnames; /* entries in names */
};

/* A set of directories being built or in force. */
struct watch_set {
    struct watch_dir *dirs; /* one per distinct directory inode (watch descriptor) */
    size_t ndirs;           /* entries in dirs */
};

struct watch {
    struct event_base *base; /* the main thread's: every callback runs there */
    int fd;                  /* inotify instance, non-blocking */
    struct event *ev_read;   /* fd readable, persistent */
    struct event *ev_timer;  /* end of the debounce: calls cb */
    uint32_t debounce_ms;    /* quiet time that ends a burst */
    bool pending;            /* a burst is in progress, ev_timer armed */
    uint64_t burst_start_ms; /* monotonic time of the burst's first event */
    char cause[512];         /* what started the burst, for the log line */
    void (*cb)(void *arg);   /* the reload request */
    void *arg;               /* cb's */
    struct watch_set set;    /* directories watched now */
};

static uint64_t watch_now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* ---------------------------------------------------------------------------
 * Directory sets
 */

static void watch_set_clear(struct watch_set *s)
{
    for (size_t i = 0; i < s->ndirs; i++) {
        for (size_t j = 0; j < s->dirs[i].nnames; j++)
            free(s->dirs[i].names[j]);
        free(s->dirs[i].names);
        free(s->dirs[i].path);
    }
    free(s->dirs);
    s->dirs = NULL;
    s->ndirs = 0;
}

static struct watch_dir *watch_find(const struct watch_set *s, int wd)
{
    for (size_t i = 0; i < s->ndirs; i++)
        if (s->dirs[i].wd == wd)
            return &s->dirs[i];
    return NULL;
}

static bool watch_has_name(const struct watch_dir *d, const char *name)
{
    for (size_t i = 0; i < d->nnames; i++)
        if (strcmp(d->names[i], name) == 0)
            return true;
    return false;
}

/* Add NAME to D once. 0, or -1 when memory runs out. */
static int watch_dir_add_name(struct watch_dir *d, const char *name)
{
    char **v;
    char *copy;

    if (watch_has_name(d, name))
        return 0;
    if ((copy = strdup(name)) == NULL)
        return -1;
    if ((v = realloc(d->names, (d->nnames + 1) * sizeof(*v))) == NULL) {
        free(copy);
        return -1;
    }
    v[d->nnames++] = copy;
    d->names = v;
    return 0;
}

/* The entry for descriptor WD in S, created with DIR as its path when new.
 * NULL when memory runs out. */
static struct watch_dir *watch_set_entry(struct watch_set *s, int wd, const char *dir)
{
    struct watch_dir *d = watch_find(s, wd), *v;
    char *path;

    if (d != NULL)
        return d;
    if ((path = strdup(dir)) == NULL)
        return NULL;
    if ((v = realloc(s->dirs, (s->ndirs + 1) * sizeof(*v))) == NULL) {
        free(path);
        return NULL;
    }
    s->dirs = v;
    d = &s->dirs[s->ndirs++];
    d->wd = wd;
    d->path = path;
    d->names = NULL;
    d->nnames = 0;
    return d;
}

/* Drop the kernel watch WD unless the set in force still uses it. */
static void watch_release(struct watch *w, int wd)
{
    if (wd >= 0 && watch_find(&w->set, wd) == NULL)
        inotify_rm_watch(w->fd, wd);
}

/* ---------------------------------------------------------------------------
 * From paths to directories
 */

/* Split PATH at its last '/': DIR gets what is before ("." or "/" when
 * nothing is), *BASE points at what is after. -1 when DIR would not fit. */
static int watch_split(const char *path, char *dir, size_t dirlen, const char **base)
{
    const char *slash = strrchr(path, '/');
    int n;

    if (slash == NULL) {
        *base = path;
        n = snprintf(dir, dirlen, ".");
    } else {
        *base = slash + 1;
        n = slash == path ? snprintf(dir, dirlen, "/")
                          : snprintf(dir, dirlen, "%.*s", (int)(slash - path), path);
    }
    return n < 0 || (size_t)n >= dirlen ? -1 : 0;
}

/* Watch DIR for NAME into NEXT. A directory the kernel refuses is logged and
 * skipped (0); -1 only when memory runs out. FOR_PATH is the configured path,
 * for the log. */
static int watch_add_dir(struct watch *w, struct watch_set *next, const char *dir, const char *name,
                         const char *for_path)
{
    int wd = inotify_add_watch(w->fd, dir, WATCH_MASK);
    struct watch_dir *d;

    if (wd < 0) {
        log_warn("watch: cannot watch directory %s (for %s): %s; its changes are not seen "
                 "until a reload finds it again",
                 dir, for_path, strerror(errno));
        return 0;
    }
    if ((d = watch_set_entry(next, wd, dir)) == NULL || watch_dir_add_name(d, name) != 0) {
        if (d == NULL)
            watch_release(w, wd);
        return -1;
    }
    return 0;
}

/* Watch PATH's directory and, while PATH is a symlink, the directory of each
 * target in the chain: an edit in place of the file a link leads to is an
 * event there, not beside the link. A kubelet volume's "..data/tls.crt"
 * target adds a watch on the current timestamped directory; harmless, as
 * that directory is never written after it is published. */
static int watch_add_path(struct watch *w, struct watch_set *next, const char *path)
{
    char cur[PATH_MAX], dir[PATH_MAX], target[PATH_MAX];
    const char *base;
    ssize_t n;

    if (snprintf(cur, sizeof(cur), "%s", path) >= (int)sizeof(cur)) {
        log_warn("watch: path too long to watch: %.64s...", path);
        return 0;
    }
    for (int hop = 0; hop <= WATCH_MAX_LINKS; hop++) {
        if (watch_split(cur, dir, sizeof(dir), &base) != 0 || base[0] == '\0')
            return 0;
        if (watch_add_dir(w, next, dir, base, path) != 0)
            return -1;
        if ((n = readlink(cur, target, sizeof(target) - 1)) < 0)
            return 0; /* not a symlink (or gone): the chain ends */
        target[n] = '\0';
        if (target[0] == '/')
            memcpy(cur, target, (size_t)n + 1);
        else if (snprintf(cur, sizeof(cur), "%s/%s", dir, target) >= (int)sizeof(cur))
            return 0;
    }
    return 0;
}

/* Free S, first dropping its kernel watches that the set in force does not
 * share. */
static void watch_set_drop(struct watch *w, struct watch_set *s)
{
    for (size_t i = 0; i < s->ndirs; i++)
        watch_release(w, s->dirs[i].wd);
    watch_set_clear(s);
}

int watch_set_paths(struct watch *w, const char *const *paths, size_t n, char *err, size_t errlen)
{
    struct watch_set next = {NULL, 0}, old;

    for (size_t i = 0; i < n; i++) {
        if (paths[i] != NULL && watch_add_path(w, &next, paths[i]) != 0) {
            snprintf(err, errlen, "watch: out of memory");
            watch_set_drop(w, &next);
            return -1;
        }
    }
    old = w->set;
    w->set = next;
    watch_set_drop(w, &old); /* the directories the new set no longer names */
    log_debug("watch: %zu paths in %zu directories", n, w->set.ndirs);
    return 0;
}

/* ---------------------------------------------------------------------------
 * Events and the debounce
 */

/* Does EV concern a watched file? Describes it into CAUSE when it does, and
 * records a directory that went away. */
static bool watch_event_counts(struct watch *w, const struct inotify_event *ev, char *cause,
                               size_t causelen)
{
    struct watch_dir *d;

    if (ev->mask & IN_Q_OVERFLOW) { /* events were lost: one of them may have mattered */
        snprintf(cause, causelen, "(inotify queue overflow)");
        return true;
    }
    if ((d = watch_find(&w->set, ev->wd)) == NULL)
        return false; /* a watch given up by watch_set_paths */
    if (ev->mask & IN_IGNORED)
        d->wd = -1; /* deleted or unmounted: watch_set_paths adds it again */
    if (ev->len == 0 || ev->name[0] == '\0') {
        snprintf(cause, causelen, "directory %s", d->path);
        return true;
    }
    if (strcmp(ev->name, WATCH_KUBE_DATA) != 0 && !watch_has_name(d, ev->name))
        return false;
    snprintf(cause, causelen, "%s/%s", d->path, ev->name);
    return true;
}

/* A relevant event: (re)arm the timer for the end of the burst, never past
 * WATCH_CAP_FACTOR debounce periods from its first event. */
static void watch_kick(struct watch *w)
{
    uint64_t now = watch_now_ms(), deadline, cap;
    struct timeval tv;

    if (!w->pending) {
        w->pending = true;
        w->burst_start_ms = now;
    }
    deadline = now + w->debounce_ms;
    cap = w->burst_start_ms + (uint64_t)w->debounce_ms * WATCH_CAP_FACTOR;
    if (deadline > cap)
        deadline = cap > now ? cap : now;
    tv.tv_sec = (time_t)((deadline - now) / 1000);
    tv.tv_usec = (suseconds_t)((deadline - now) % 1000 * 1000);
    if (evtimer_add(w->ev_timer, &tv) != 0)
        log_warn("watch: cannot arm the debounce timer; this change reloads with the next one");
}

static void watch_on_read(evutil_socket_t fd, short what, void *arg)
{
    struct watch *w = arg;
    char buf[4096] __attribute__((aligned(__alignof__(struct inotify_event))));
    const struct inotify_event *ev;
    char cause[sizeof(w->cause)];
    bool changed = false;
    ssize_t n;

    for (;;) {
        if ((n = read(fd, buf, sizeof(buf))) < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break; /* EAGAIN: the queue is empty */
        for (char *p = buf; p < buf + n; p += sizeof(*ev) + ev->len) {
            ev = (const struct inotify_event *)p;
            if (!watch_event_counts(w, ev, cause, sizeof(cause)))
                continue;
            if (!changed && !w->pending) /* the log line names what started a burst */
                memcpy(w->cause, cause, sizeof(cause));
            changed = true;
        }
    }
    if (changed)
        watch_kick(w);
}

static void watch_on_timer(evutil_socket_t fd, short what, void *arg)
{
    struct watch *w = arg;

    w->pending = false;
    log_info("watch: %s changed, reloading", w->cause);
    w->cb(w->arg); /* may free w: nothing after this */
}

/* ---------------------------------------------------------------------------
 * Lifetime
 */

struct watch *watch_new(struct event_base *base, uint32_t debounce_ms, void (*cb)(void *arg),
                        void *arg, char *err, size_t errlen)
{
    struct watch *w;

    if (base == NULL || cb == NULL) {
        snprintf(err, errlen, "watch: an event base and a callback are required");
        return NULL;
    }
    if ((w = calloc(1, sizeof(*w))) == NULL) {
        snprintf(err, errlen, "watch: out of memory");
        return NULL;
    }
    w->base = base;
    w->debounce_ms = debounce_ms;
    w->cb = cb;
    w->arg = arg;
    if ((w->fd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC)) < 0) {
        snprintf(err, errlen, "watch: inotify: %s", strerror(errno));
        goto fail;
    }
    w->ev_read = event_new(base, w->fd, EV_READ | EV_PERSIST, watch_on_read, w);
    w->ev_timer = evtimer_new(base, watch_on_timer, w);
    if (w->ev_read == NULL || w->ev_timer == NULL || event_add(w->ev_read, NULL) != 0) {
        snprintf(err, errlen, "watch: cannot register the inotify events");
        goto fail;
    }
    return w;
fail:
    watch_free(w);
    return NULL;
}

void watch_set_debounce(struct watch *w, uint32_t debounce_ms)
{
    w->debounce_ms = debounce_ms;
}

void watch_free(struct watch *w)
{
    if (w == NULL)
        return;
    if (w->ev_read != NULL)
        event_free(w->ev_read);
    if (w->ev_timer != NULL)
        event_free(w->ev_timer);
    if (w->fd >= 0)
        close(w->fd); /* drops every kernel watch with it */
    watch_set_clear(&w->set);
    free(w);
}
