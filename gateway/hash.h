/*
 * hash.h - the one hash of flowgate's in-memory tables: the rate limiter's
 * local and refusal tables, the JWT cache, the resolver's cache and the
 * preview pools by address.
 */
#ifndef FG_HASH_H
#define FG_HASH_H

#include <stddef.h>
#include <stdint.h>

/*
 * FNV-1a (64-bit) of DATA[0..LEN) from the offset basis XORed with SEED,
 * then MurmurHash3's 64-bit finalizer. Every table takes its slot from the
 * low bits (a mask or a small modulus), and FNV-1a alone is weak there: its
 * low k bits depend only on the low k bits of each byte, so keys that
 * differ only in a byte's high bits would share a slot of a small table.
 * The finalizer spreads every input bit over every output bit. A table
 * that clients fill (limit keys, tokens) passes a random SEED so that no
 * one can aim keys at one slot. The hash only spreads keys: a hit still
 * compares the whole key.
 */
static inline uint64_t hash_bytes(const void *data, size_t len, uint64_t seed)
{
    const unsigned char *p = data;
    uint64_t h = 0xcbf29ce484222325ULL ^ seed;

    for (size_t i = 0; i < len; i++)
        h = (h ^ p[i]) * 0x100000001b3ULL;
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdULL;
    h ^= h >> 33;
    h *= 0xc4ceb9fe1a85ec53ULL;
    return h ^ (h >> 33);
}

#endif
