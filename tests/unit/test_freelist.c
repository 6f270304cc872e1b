/*
 * test_freelist.c - the one free list: last in, first out, a keep limit,
 * and records linked through their own next pointer.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "freelist.h"

struct item {
    int id;
    struct item *next; /* the free list's link, and the owner's while out */
};

FREELIST_DEFINE(items, struct item, next, 3)

static void test_empty(void **state)
{
    struct freelist fl = {0};

    assert_null(items_get(&fl));
    assert_int_equal(fl.n, 0);
}

static void test_lifo(void **state)
{
    struct freelist fl = {0};
    struct item a = {1, NULL}, b = {2, NULL};

    assert_true(items_put(&fl, &a));
    assert_true(items_put(&fl, &b));
    assert_int_equal(fl.n, 2);
    /* the record put last comes first: it is the one still in cache */
    assert_ptr_equal(items_get(&fl), &b);
    assert_null(b.next); /* off the list, its link is its own again */
    assert_ptr_equal(items_get(&fl), &a);
    assert_null(items_get(&fl));
    assert_int_equal(fl.n, 0);
}

static void test_keep_limit(void **state)
{
    struct freelist fl = {0};
    struct item it[5] = {{0, NULL}, {1, NULL}, {2, NULL}, {3, NULL}, {4, NULL}};

    for (int i = 0; i < 3; i++)
        assert_true(items_put(&fl, &it[i]));
    assert_false(items_put(&fl, &it[3])); /* full: the caller frees it */
    assert_null(it[3].next);
    assert_int_equal(fl.n, 3);
    assert_ptr_equal(items_get(&fl), &it[2]);
    assert_true(items_put(&fl, &it[4])); /* room again */
    assert_ptr_equal(items_get(&fl), &it[4]);
    assert_ptr_equal(items_get(&fl), &it[1]);
    assert_ptr_equal(items_get(&fl), &it[0]);
    assert_null(items_get(&fl));
}

/* A record's link may hold the owner's list while it is out: put
 * overwrites it, get clears it. */
static void test_link_reused(void **state)
{
    struct freelist fl = {0};
    struct item a = {1, NULL}, b = {2, NULL};

    a.next = &b; /* on some other list of the owner */
    assert_true(items_put(&fl, &a));
    assert_null(a.next);
    assert_ptr_equal(items_get(&fl), &a);
    assert_int_equal(fl.n, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_empty),
        cmocka_unit_test(test_lifo),
        cmocka_unit_test(test_keep_limit),
        cmocka_unit_test(test_link_reused),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
