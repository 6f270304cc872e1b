/*
 * test_hash.c - the one table hash: FNV-1a, seeded, then MurmurHash3's
 * finalizer so that the low bits that pick a slot depend on every input bit.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "hash.h"

/* MurmurHash3's fmix64, as published. */
static uint64_t fold(uint64_t h)
{
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdULL;
    h ^= h >> 33;
    h *= 0xc4ceb9fe1a85ec53ULL;
    return h ^ (h >> 33);
}

/* With SEED 0 the sum is FNV-1a's own (the published 64-bit test vectors),
 * finalized. */
static void test_vectors(void **state)
{
    assert_int_equal(hash_bytes("", 0, 0), fold(0xcbf29ce484222325ULL));
    assert_int_equal(hash_bytes("a", 1, 0), fold(0xaf63dc4c8601ec8cULL));
    assert_int_equal(hash_bytes("foobar", 6, 0), fold(0x85944171f73967e8ULL));
    /* the length bounds the input, not a NUL */
    assert_int_equal(hash_bytes("foobarbaz", 6, 0), fold(0x85944171f73967e8ULL));
    assert_int_not_equal(hash_bytes("a\0", 2, 0), hash_bytes("a", 1, 0));
}

static void test_seed(void **state)
{
    assert_int_not_equal(hash_bytes("key", 3, 1), hash_bytes("key", 3, 0));
    assert_int_not_equal(hash_bytes("key", 3, 0x9e3779b97f4a7c15ULL), hash_bytes("key", 3, 1));
    assert_int_equal(hash_bytes("key", 3, 42), hash_bytes("key", 3, 42));
}

/* Keys that differ only in a byte's high bit must not share the low bits
 * a 64-slot table looks at: FNV-1a alone puts all 128 pairs together. */
static void test_low_bits_spread(void **state)
{
    unsigned same = 0;

    for (unsigned c = 0; c < 128; c++) {
        unsigned char a[2] = {'k', (unsigned char)c}, b[2] = {'k', (unsigned char)(c | 0x80)};
        same += (hash_bytes(a, 2, 7) & 63) == (hash_bytes(b, 2, 7) & 63);
    }
    assert_true(same < 12); /* about 2 expected by chance */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_vectors),
        cmocka_unit_test(test_seed),
        cmocka_unit_test(test_low_bits_spread),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
