/*
 * metrics.h - per-worker counters, and labelled rows of them that outlive
 * configurations.
 *
 * One writer, one reader: a worker's counters are written only by its own
 * thread, with a plain add stored whole (metrics_bump: no locked
 * instruction on the request path), and read by the admin thread with
 * relaxed loads and summed over workers, as HAProxy and nginx do. A scrape
 * may be a few requests behind; it never sees a torn value.
 *
 * Routes and upstreams come and go with reloads, and a Prometheus counter
 * must never go backwards. So their counters live in rows named by their
 * label value ("api.example.com/v1", an upstream's name), kept for the
 * worker's life whatever configuration is in force: a reload maps its
 * routes and upstreams to rows by name (a removed route's row stays, no
 * longer counting; a renamed one gets a new row). Rows only ever grow, so a
 * snapshot's map stays valid and a request that finishes on a replaced
 * snapshot counts into live memory. Grown arrays replace the old ones,
 * which are kept until the worker ends: the admin thread may still read them.
 * The series a worker keeps are thus bounded by the routes and upstreams
 * its configurations ever named, never by what clients send.
 */
#ifndef FG_METRICS_H
#define FG_METRICS_H

#include <stddef.h>
#include <stdint.h>

#include <event2/buffer.h>

/* Count one more into C, which only the calling thread writes. */
static inline void metrics_bump(uint64_t *c)
{
    __atomic_store_n(c, *c + 1, __ATOMIC_RELAXED);
}

static inline void metrics_add(uint64_t *c, uint64_t n)
{
    __atomic_store_n(c, *c + n, __ATOMIC_RELAXED);
}

/* A gauge's step down (the worker's own gauges never go below 0). */
static inline void metrics_drop(uint64_t *c)
{
    __atomic_store_n(c, *c - 1, __ATOMIC_RELAXED);
}

static inline uint64_t metrics_read(const uint64_t *c)
{
    return __atomic_load_n(c, __ATOMIC_RELAXED);
}

/* Rows of WIDTH counters, each named once. Zeroed memory is an empty
 * table that counts nothing (metrics_rows_init gives it its width). */
struct metrics_rows {
    size_t width;     /* counters per row */
    size_t nrows;     /* (atomic) rows in use: the reader's bound */
    size_t cap;       /* rows allocated (writer only) */
    uint64_t *cells;  /* (atomic) cap * width counters */
    char **names;     /* (atomic) cap names, owned */
    uint32_t *index;  /* open addressing over names: row + 1, 0 = free (writer only) */
    size_t index_cap; /* slots in index, a power of two, at least 2 * cap */
    void **old;       /* replaced cells and names arrays, freed with the table */
    size_t nold;
};

void metrics_rows_init(struct metrics_rows *t, size_t width);
void metrics_rows_free(struct metrics_rows *t);

/* The row named NAME (copied), added when new: its index, or -1 when out
 * of memory. Writer only. */
long metrics_rows_get(struct metrics_rows *t, const char *name);

/* ROW's counters; NULL when ROW is not a row of T (an empty table). Writer only. */
static inline uint64_t *metrics_row(struct metrics_rows *t, size_t row)
{
    return row < t->nrows ? t->cells + row * t->width : NULL;
}

/* Called once per distinct name, in name order, with the WIDTH counters of
 * every row of that name summed over the tables. */
typedef void (*metrics_row_fn)(const char *name, const uint64_t *sums, void *arg);

/* The reader's side: rows of the same name summed across TABLES (one per
 * worker, all of one width). 0, or -1 when out of memory. */
int metrics_rows_sum(const struct metrics_rows *const *tables, size_t ntables, metrics_row_fn fn,
                     void *arg);

/*
 * Request duration, a histogram with Prometheus's default buckets: the
 * upper bounds in microseconds, then +Inf.
 */
#define METRICS_DURATION_BUCKETS 11
extern const uint64_t metrics_duration_bounds_us[METRICS_DURATION_BUCKETS];

/* The status classes of flowgate_requests_total's code label: "0" (no
 * response went out), then "1xx" to "5xx". */
#define METRICS_CODES 6
extern const char *const metrics_code_str[METRICS_CODES];

/* A route row: requests by status class, duration buckets (+Inf last, not
 * cumulative: the scrape adds them up), and the sum of durations in µs. */
enum metrics_route_cell {
    METRICS_RT_CODE = 0,
    METRICS_RT_BUCKET = METRICS_CODES,
    METRICS_RT_SUM_US = METRICS_RT_BUCKET + METRICS_DURATION_BUCKETS + 1,
    METRICS_RT__WIDTH = METRICS_RT_SUM_US + 1,
};

/* Count a request that ended with STATUS (0: none sent) after US µs into ROW. */
void metrics_request(struct metrics_rows *routes, size_t row, int status, int64_t us);

/* S as a Prometheus label value on OUT: backslash, quote and newline
 * escaped, never cut (two values cut alike would make one series twice). */
void metrics_put_label(struct evbuffer *out, const char *s);

#endif
