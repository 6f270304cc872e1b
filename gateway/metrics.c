/*
 * metrics.c - labelled counter rows (metrics.h), the request histogram's
 * buckets, and the exposition's label escaping.
 */
#include <stdlib.h>
#include <string.h>

#include "hash.h"
#include "metrics.h"

const uint64_t metrics_duration_bounds_us[METRICS_DURATION_BUCKETS] = {
    5000, 10000, 25000, 50000, 100000, 250000, 500000, 1000000, 2500000, 5000000, 10000000,
};

const char *const metrics_code_str[METRICS_CODES] = {"0", "1xx", "2xx", "3xx", "4xx", "5xx"};

void metrics_rows_init(struct metrics_rows *t, size_t width)
{
    memset(t, 0, sizeof(*t));
    t->width = width;
}

void metrics_rows_free(struct metrics_rows *t)
{
    for (size_t i = 0; i < t->nrows; i++)
        free(t->names[i]);
    for (size_t i = 0; i < t->nold; i++)
        free(t->old[i]);
    free(t->old);
    free(t->cells);
    free(t->names);
    free(t->index);
    memset(t, 0, sizeof(*t));
}

/* Where NAME's row is in the index, or the free slot it would take. */
static size_t index_slot(const struct metrics_rows *t, const char *name, size_t len)
{
    size_t mask = t->index_cap - 1;
    size_t i = (size_t)hash_bytes(name, len, 0) & mask;

    while (t->index[i] != 0 && strcmp(t->names[t->index[i] - 1], name) != 0)
        i = (i + 1) & mask;
    return i;
}

static int index_build(struct metrics_rows *t, size_t cap)
{
    uint32_t *index = calloc(cap, sizeof(*index));

    if (index == NULL)
        return -1;
    free(t->index);
    t->index = index;
    t->index_cap = cap;
    for (size_t r = 0; r < t->nrows; r++)
        t->index[index_slot(t, t->names[r], strlen(t->names[r]))] = (uint32_t)r + 1;
    return 0;
}

/* Twice the rows. The new arrays carry every count and name over before
 * they are published; the old ones stay for a reader that loaded them. */
static int grow(struct metrics_rows *t)
{
    size_t cap = t->cap ? 2 * t->cap : 8;
    uint64_t *cells = calloc(cap * t->width, sizeof(*cells));
    char **names = calloc(cap, sizeof(*names));
    void **old = realloc(t->old, (t->nold + 2) * sizeof(*old));

    if (old != NULL)
        t->old = old;
    if (cells == NULL || names == NULL || old == NULL || index_build(t, 2 * cap) < 0) {
        free(cells);
        free(names);
        return -1;
    }
    if (t->cap > 0) {
        memcpy(cells, t->cells, t->nrows * t->width * sizeof(*cells));
        memcpy(names, t->names, t->nrows * sizeof(*names));
        t->old[t->nold++] = t->cells;
        t->old[t->nold++] = t->names;
    }
    __atomic_store_n(&t->cells, cells, __ATOMIC_RELEASE);
    __atomic_store_n(&t->names, names, __ATOMIC_RELEASE);
    t->cap = cap;
    return 0;
}

long metrics_rows_get(struct metrics_rows *t, const char *name)
{
    size_t len = strlen(name);

    if (t->cap > 0) {
        size_t i = index_slot(t, name, len);
        if (t->index[i] != 0)
            return (long)t->index[i] - 1;
    }
    if (t->nrows == t->cap && grow(t) < 0)
        return -1;
    char *copy = malloc(len + 1);
    if (copy == NULL)
        return -1;
    memcpy(copy, name, len + 1);
    size_t row = t->nrows;
    t->names[row] = copy;
    t->index[index_slot(t, name, len)] = (uint32_t)row + 1;
    /* The row's name and zeroed counters are there before a reader can see it. */
    __atomic_store_n(&t->nrows, row + 1, __ATOMIC_RELEASE);
    return (long)row;
}

/* One row of one worker's table, as the reader saw it. */
struct row_ref {
    const char *name;
    const uint64_t *cells;
};

static int row_ref_cmp(const void *a, const void *b)
{
    return strcmp(((const struct row_ref *)a)->name, ((const struct row_ref *)b)->name);
}

/* Each table's bound is loaded before its arrays: arrays published with or
 * after it hold at least that many rows (grow publishes before it adds). */
static size_t collect(const struct metrics_rows *const *tables, size_t ntables,
                      struct row_ref *refs, size_t max)
{
    size_t n = 0;

    for (size_t k = 0; k < ntables; k++) {
        const struct metrics_rows *t = tables[k];
        size_t nrows = __atomic_load_n(&t->nrows, __ATOMIC_ACQUIRE);
        const uint64_t *cells = __atomic_load_n(&t->cells, __ATOMIC_ACQUIRE);
        char *const *names = __atomic_load_n(&t->names, __ATOMIC_ACQUIRE);
        for (size_t r = 0; r < nrows && n < max; r++)
            refs[n++] = (struct row_ref){names[r], cells + r * t->width};
    }
    return n;
}

int metrics_rows_sum(const struct metrics_rows *const *tables, size_t ntables, metrics_row_fn fn,
                     void *arg)
{
    size_t max = 0, width = ntables ? tables[0]->width : 0;

    for (size_t k = 0; k < ntables; k++)
        max += __atomic_load_n(&tables[k]->nrows, __ATOMIC_ACQUIRE);
    /* Rows added after the count above wait for the next scrape. */
    struct row_ref *refs = calloc(max ? max : 1, sizeof(*refs));
    uint64_t *sums = calloc(width ? width : 1, sizeof(*sums));
    if (refs == NULL || sums == NULL) {
        free(refs);
        free(sums);
        return -1;
    }
    size_t n = collect(tables, ntables, refs, max);
    qsort(refs, n, sizeof(*refs), row_ref_cmp);
    for (size_t i = 0; i < n;) {
        memset(sums, 0, width * sizeof(*sums));
        size_t j = i;
        for (; j < n && strcmp(refs[j].name, refs[i].name) == 0; j++)
            for (size_t c = 0; c < width; c++)
                sums[c] += metrics_read(&refs[j].cells[c]);
        fn(refs[i].name, sums, arg);
        i = j;
    }
    free(refs);
    free(sums);
    return 0;
}

void metrics_request(struct metrics_rows *routes, size_t row, int status, int64_t us)
{
    uint64_t *c = metrics_row(routes, row);
    uint64_t d = us > 0 ? (uint64_t)us : 0;
    size_t b = 0;

    if (c == NULL)
        return;
    while (b < METRICS_DURATION_BUCKETS && d > metrics_duration_bounds_us[b])
        b++;
    metrics_bump(&c[METRICS_RT_CODE + (status >= 100 && status < 600 ? status / 100 : 0)]);
    metrics_bump(&c[METRICS_RT_BUCKET + b]);
    metrics_add(&c[METRICS_RT_SUM_US], d);
}

void metrics_put_label(struct evbuffer *out, const char *s)
{
    size_t plain;

    while (*s) {
        plain = strcspn(s, "\\\"\n");
        evbuffer_add(out, s, plain);
        s += plain;
        if (*s == '\0')
            break;
        evbuffer_add(out, *s == '\n' ? "\\n" : *s == '"' ? "\\\"" : "\\\\", 2);
        s++;
    }
}
