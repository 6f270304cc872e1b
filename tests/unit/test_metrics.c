/*
 * test_metrics.c - labelled counter rows: one row per name, counts and names
 * kept across growth (the old arrays still readable), rows of one name summed
 * across tables in name order; the request histogram's buckets and status
 * classes; label escaping.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "metrics.h"

static void test_one_row_per_name(void **state)
{
    struct metrics_rows t;

    metrics_rows_init(&t, 3);
    assert_null(metrics_row(&t, 0)); /* an empty table counts nothing */
    assert_int_equal(metrics_rows_get(&t, "/a"), 0);
    assert_int_equal(metrics_rows_get(&t, "/b"), 1);
    assert_int_equal(metrics_rows_get(&t, "/a"), 0);
    assert_int_equal(t.nrows, 2);
    assert_non_null(metrics_row(&t, 1));
    assert_null(metrics_row(&t, 2));
    metrics_rows_free(&t);
}

/* Growth carries every count and name over, and leaves the arrays a reader
 * may have loaded as they were. */
static void test_growth_keeps_counts_and_old_arrays(void **state)
{
    struct metrics_rows t;
    char name[32];

    metrics_rows_init(&t, 2);
    assert_int_equal(metrics_rows_get(&t, "r0"), 0);
    metrics_bump(&metrics_row(&t, 0)[1]);
    const uint64_t *first = t.cells;
    for (int i = 1; i < 1000; i++) {
        snprintf(name, sizeof(name), "r%d", i);
        assert_int_equal(metrics_rows_get(&t, name), i);
        metrics_add(&metrics_row(&t, (size_t)i)[0], (uint64_t)i);
    }
    assert_true(t.cap >= 1000);
    assert_int_equal(first[1], 1); /* kept, readable, no longer counted into */
    assert_int_equal(metrics_row(&t, 0)[1], 1);
    for (int i = 1; i < 1000; i++) {
        snprintf(name, sizeof(name), "r%d", i);
        assert_int_equal(metrics_rows_get(&t, name), i);
        assert_int_equal(metrics_row(&t, (size_t)i)[0], (uint64_t)i);
        assert_string_equal(t.names[i], name);
    }
    assert_int_equal(t.nrows, 1000);
    metrics_rows_free(&t);
}

struct seen {
    char names[8][16];
    uint64_t first[8], second[8];
    int n;
};

static void record(const char *name, const uint64_t *sums, void *arg)
{
    struct seen *s = arg;

    snprintf(s->names[s->n], sizeof(s->names[0]), "%s", name);
    s->first[s->n] = sums[0];
    s->second[s->n] = sums[1];
    s->n++;
}

/* Two workers whose rows were added in different orders, one with a row
 * the other lacks: one call per name, in name order, sums across both. */
static void test_sum_merges_by_name(void **state)
{
    struct metrics_rows a, b;
    const struct metrics_rows *tables[] = {&a, &b};
    struct seen s = {0};

    metrics_rows_init(&a, 2);
    metrics_rows_init(&b, 2);
    metrics_add(&metrics_row(&a, (size_t)metrics_rows_get(&a, "/x"))[0], 2);
    metrics_add(&metrics_row(&a, (size_t)metrics_rows_get(&a, "none"))[1], 5);
    metrics_add(&metrics_row(&b, (size_t)metrics_rows_get(&b, "none"))[1], 7);
    metrics_add(&metrics_row(&b, (size_t)metrics_rows_get(&b, "/x"))[0], 3);
    metrics_add(&metrics_row(&b, (size_t)metrics_rows_get(&b, "/a"))[0], 1);
    assert_int_equal(metrics_rows_sum(tables, 2, record, &s), 0);
    assert_int_equal(s.n, 3);
    assert_string_equal(s.names[0], "/a");
    assert_string_equal(s.names[1], "/x");
    assert_string_equal(s.names[2], "none");
    assert_int_equal(s.first[0], 1);
    assert_int_equal(s.first[1], 5);
    assert_int_equal(s.second[2], 12);
    metrics_rows_free(&a);
    metrics_rows_free(&b);
}

static void test_request_buckets_and_classes(void **state)
{
    struct metrics_rows t;

    metrics_rows_init(&t, METRICS_RT__WIDTH);
    metrics_rows_get(&t, "/");
    metrics_request(&t, 0, 200, 5000);   /* on the first bound: in it (le) */
    metrics_request(&t, 0, 404, 5001);   /* just past it: the next one */
    metrics_request(&t, 0, 0, 60000000); /* no response, past 10 s: +Inf */
    metrics_request(&t, 0, 101, -3);     /* a clock step back counts as 0 */
    metrics_request(&t, 7, 200, 1);      /* not a row: ignored */
    const uint64_t *c = metrics_row(&t, 0);
    assert_int_equal(c[METRICS_RT_CODE + 0], 1);
    assert_int_equal(c[METRICS_RT_CODE + 1], 1);
    assert_int_equal(c[METRICS_RT_CODE + 2], 1);
    assert_int_equal(c[METRICS_RT_CODE + 4], 1);
    assert_int_equal(c[METRICS_RT_BUCKET + 0], 2);
    assert_int_equal(c[METRICS_RT_BUCKET + 1], 1);
    assert_int_equal(c[METRICS_RT_BUCKET + METRICS_DURATION_BUCKETS], 1);
    assert_int_equal(c[METRICS_RT_SUM_US], 5000 + 5001 + 60000000);
    assert_string_equal(metrics_code_str[4], "4xx");
    metrics_rows_free(&t);
}

static void test_label_escape(void **state)
{
    struct evbuffer *b = evbuffer_new();
    char out[64] = {0};

    metrics_put_label(b, "a\\b\"c\nd/e");
    evbuffer_remove(b, out, sizeof(out) - 1);
    assert_string_equal(out, "a\\\\b\\\"c\\nd/e");
    evbuffer_free(b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_one_row_per_name),
        cmocka_unit_test(test_growth_keeps_counts_and_old_arrays),
        cmocka_unit_test(test_sum_merges_by_name),
        cmocka_unit_test(test_request_buckets_and_classes),
        cmocka_unit_test(test_label_escape),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
