/*
 * test_status.c - the exposition read back as JSON families, and the history
 * of request totals kept for the status page.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "guard.h"

#include "status.h"

/* TEXT parsed from a guarded copy: a read past its end faults. */
static json_t *parse(const char *text)
{
    json_t *fams = status_families(guarded(text, strlen(text)), strlen(text));

    assert_non_null(fams);
    return fams;
}

static json_t *sample(json_t *fams, const char *family, size_t i)
{
    json_t *s = json_array_get(json_object_get(json_object_get(fams, family), "samples"), i);

    if (s == NULL)
        fail_msg("%s: no sample %zu", family, i);
    return s;
}

static const char *label(json_t *s, const char *name)
{
    return json_string_value(json_object_get(json_object_get(s, "labels"), name));
}

static void test_counter_and_gauge(void **state)
{
    json_t *f = parse("# HELP flowgate_x_total Things, with \\\\ and \\n escaped.\n"
                      "# TYPE flowgate_x_total counter\n"
                      "flowgate_x_total{kind=\"a\"} 3\n"
                      "flowgate_x_total{kind=\"b\",zone=\"z1\"} 12345678901\n"
                      "# TYPE flowgate_t gauge\n"
                      "flowgate_t 1700000000.125\n");
    json_t *x = json_object_get(f, "flowgate_x_total");

    assert_string_equal(json_string_value(json_object_get(x, "type")), "counter");
    assert_string_equal(json_string_value(json_object_get(x, "help")),
                        "Things, with \\ and \n escaped.");
    assert_int_equal(json_array_size(json_object_get(x, "samples")), 2);
    assert_true(json_is_integer(json_object_get(sample(f, "flowgate_x_total", 0), "value")));
    assert_int_equal(json_integer_value(json_object_get(sample(f, "flowgate_x_total", 1), "value")),
                     12345678901LL);
    assert_string_equal(label(sample(f, "flowgate_x_total", 1), "zone"), "z1");
    assert_null(json_object_get(sample(f, "flowgate_x_total", 0), "name"));
    assert_string_equal(
        json_string_value(json_object_get(json_object_get(f, "flowgate_t"), "type")), "gauge");
    assert_true(json_is_real(json_object_get(sample(f, "flowgate_t", 0), "value")));
    assert_true(json_real_value(json_object_get(sample(f, "flowgate_t", 0), "value")) ==
                1700000000.125);
    json_decref(f);
}

static void test_histogram_parts_join_their_family(void **state)
{
    json_t *f = parse("# TYPE d_seconds histogram\n"
                      "d_seconds_bucket{route=\"api\",le=\"0.005\"} 1\n"
                      "d_seconds_bucket{route=\"api\",le=\"+Inf\"} 4\n"
                      "d_seconds_sum{route=\"api\"} 0.75\n"
                      "d_seconds_count{route=\"api\"} 4\n");

    assert_int_equal(json_object_size(f), 1);
    assert_string_equal(json_string_value(json_object_get(sample(f, "d_seconds", 0), "name")),
                        "d_seconds_bucket");
    assert_string_equal(label(sample(f, "d_seconds", 1), "le"), "+Inf");
    assert_string_equal(json_string_value(json_object_get(sample(f, "d_seconds", 2), "name")),
                        "d_seconds_sum");
    assert_string_equal(json_string_value(json_object_get(sample(f, "d_seconds", 3), "name")),
                        "d_seconds_count");
    assert_int_equal(json_integer_value(json_object_get(sample(f, "d_seconds", 3), "value")), 4);
    json_decref(f);
}

/* A _count sample of a counter family is a family of its own. */
static void test_suffix_of_a_counter_is_its_own_family(void **state)
{
    json_t *f = parse("# TYPE c counter\nc 1\nc_count 2\n");

    assert_int_equal(json_object_size(f), 2);
    assert_string_equal(json_string_value(json_object_get(json_object_get(f, "c_count"), "type")),
                        "untyped");
    json_decref(f);
}

static void test_label_escapes_and_special_values(void **state)
{
    json_t *f = parse("m{path=\"/a\\\"b\\\\c\\nd\", x=\"\"} NaN\n"
                      "m{path=\"i\"} +Inf 1700000000000\n"
                      "m{path=\"j\"} -2.5e-3\n");

    assert_string_equal(label(sample(f, "m", 0), "path"), "/a\"b\\c\nd");
    assert_string_equal(label(sample(f, "m", 0), "x"), "");
    assert_true(json_is_null(json_object_get(sample(f, "m", 0), "value")));
    assert_true(json_is_null(json_object_get(sample(f, "m", 1), "value")));
    assert_true(json_real_value(json_object_get(sample(f, "m", 2), "value")) == -2.5e-3);
    json_decref(f);
}

/* Lines that do not parse are skipped, the rest kept; a last line without
 * its newline is read to its end and no further. */
static void test_bad_lines_are_skipped(void **state)
{
    static const char *const bad[] = {
        "m{a=\"x\" 1", "m{a=x} 1",   "m{=\"x\"} 1",           "m 1x",   "m",
        "{a=\"1\"} 2", "m{a=\"x\"}", "m{a=\"unterminated} 1", "# TYPE", "# HELP ",
    };
    char text[256];

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        snprintf(text, sizeof(text), "ok 1\n%s\nok 2\n%s", bad[i], bad[i]);
        json_t *f = parse(text);
        json_t *m = json_object_get(f, "m");
        if (m != NULL && json_array_size(json_object_get(m, "samples")) != 0)
            fail_msg("\"%s\" was read as a sample", bad[i]);
        assert_int_equal(json_array_size(json_object_get(json_object_get(f, "ok"), "samples")), 2);
        json_decref(f);
    }
}

static void test_empty_exposition(void **state)
{
    json_t *f = parse("");

    assert_int_equal(json_object_size(f), 0);
    json_decref(f);
}

static json_t *point(json_t *history, size_t i, const char *key)
{
    return json_object_get(json_array_get(history, i), key);
}

static void test_history_by_class_and_fallback(void **state)
{
    static struct status_history h;
    json_t *coded = parse("# TYPE flowgate_requests_total counter\n"
                          "flowgate_requests_total{route=\"a\",code=\"200\"} 5\n"
                          "flowgate_requests_total{route=\"b\",code=\"204\"} 2\n"
                          "flowgate_requests_total{route=\"a\",code=\"404\"} 1\n"
                          "flowgate_requests_total{route=\"a\",code=\"503\"} 3\n"
                          "# TYPE flowgate_requests_finished_total counter\n"
                          "flowgate_requests_finished_total 99\n");
    json_t *plain = parse("# TYPE flowgate_requests_finished_total counter\n"
                          "flowgate_requests_finished_total 42\n");

    status_history_add(&h, coded, 100.0);
    status_history_add(&h, plain, 105.0);
    json_t *j = status_history_json(&h);
    assert_int_equal(json_array_size(j), 2);
    assert_int_equal(json_integer_value(point(j, 0, "requests")), 11);
    assert_int_equal(json_integer_value(json_object_get(point(j, 0, "classes"), "2xx")), 7);
    assert_int_equal(json_integer_value(json_object_get(point(j, 0, "classes"), "4xx")), 1);
    assert_int_equal(json_integer_value(json_object_get(point(j, 0, "classes"), "5xx")), 3);
    assert_int_equal(json_integer_value(point(j, 1, "requests")), 42);
    assert_null(point(j, 1, "classes"));
    assert_true(json_real_value(point(j, 1, "t")) == 105.0);
    json_decref(j);
    json_decref(coded);
    json_decref(plain);
}

/* Past STATUS_POINTS the oldest go; the rest stay oldest first. */
static void test_history_ring(void **state)
{
    static struct status_history h;
    char text[128];

    for (unsigned i = 0; i < STATUS_POINTS + 7; i++) {
        snprintf(text, sizeof(text), "flowgate_requests_finished_total %u\n", i);
        json_t *f = parse(text);
        status_history_add(&h, f, (double)i);
        json_decref(f);
    }
    json_t *j = status_history_json(&h);
    assert_int_equal(json_array_size(j), STATUS_POINTS);
    assert_int_equal(json_integer_value(point(j, 0, "requests")), 7);
    assert_int_equal(json_integer_value(point(j, STATUS_POINTS - 1, "requests")),
                     STATUS_POINTS + 6);
    json_decref(j);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_counter_and_gauge),
        cmocka_unit_test(test_histogram_parts_join_their_family),
        cmocka_unit_test(test_suffix_of_a_counter_is_its_own_family),
        cmocka_unit_test(test_label_escapes_and_special_values),
        cmocka_unit_test(test_bad_lines_are_skipped),
        cmocka_unit_test(test_empty_exposition),
        cmocka_unit_test(test_history_by_class_and_fallback),
        cmocka_unit_test(test_history_ring),
    };
    return cmocka_run_group_tests(tests, guard_setup, guard_teardown);
}
