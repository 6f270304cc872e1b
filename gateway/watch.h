/*
 * watch.h - notice when a file the configuration was built from changes on
 * disk, and ask for one reload per burst of changes (reload.watch).
 *
 * inotify watches the DIRECTORIES that hold the files, never the files'
 * inodes: a Kubernetes Secret or ConfigMap volume is updated by the kubelet
 * writing a new "..2026_12_05_22_51_34.123" directory, pointing "..data_tmp"
 * at it and renaming "..data_tmp" over "..data", while the visible
 * "tls.crt" stays a symlink to "..data/tls.crt". The file's old inode never
 * changes; the rename of "..data" is an event in the volume's directory. The
 * same holds for editors and tools that write a temporary file and rename it
 * over the original.
 *
 * Runs on the main thread's event base; the callback is called there too.
 */
#ifndef FG_WATCH_H
#define FG_WATCH_H

#include <stddef.h>
#include <stdint.h>

#include <event2/event.h>

struct watch;

/*
 * Create a watcher on BASE with nothing watched yet. CB(ARG) is called once
 * per burst of changes: each relevant event restarts a DEBOUNCE_MS timer, so
 * a burst of writes makes one call after it settles, but no call waits more
 * than 5 x DEBOUNCE_MS after the first event of its burst (a file that keeps
 * changing still reloads). CB may call watch_set_paths, watch_set_debounce
 * and watch_free. Returns NULL with ERR when inotify or libevent refuse.
 */
struct watch *watch_new(struct event_base *base, uint32_t debounce_ms, void (*cb)(void *arg),
                        void *arg, char *err, size_t errlen);

/*
 * Watch PATHS (N of them) instead of whatever was watched before; call it
 * after every reload, failed ones included, with the paths of the snapshot
 * in force (cfg->watch_paths): a directory that went away and came back, or
 * a symlink that now leads elsewhere, is only watched again by this call.
 * For each path its directory is watched, and when the path is a symlink,
 * the directory of its target too (following up to 8 links). Events count
 * when they name one of the paths' files in that directory, or "..data" (the
 * kubelet's swap), or concern the directory itself (deleted or moved).
 * A directory that cannot be watched (missing, inotify's watch limit) is
 * logged and skipped: the other paths are still watched. Returns -1 with ERR
 * only when memory runs out, the previous set then staying in force.
 */
int watch_set_paths(struct watch *w, const char *const *paths, size_t n, char *err, size_t errlen);

/* Use DEBOUNCE_MS from the next burst on (a reloaded reload.debounce_ms). */
void watch_set_debounce(struct watch *w, uint32_t debounce_ms);

/* Stop watching and free everything; a pending call is dropped. NULL is fine. */
void watch_free(struct watch *w);

#endif
