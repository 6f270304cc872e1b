/*
 * guard.h - a readable page followed by a PROT_NONE page, for the unit
 * tests: an input copied so that its last byte is the last readable one
 * makes any read past its end fault (picohttpparser's trick). Use
 * guard_setup / guard_teardown as the cmocka group setup and teardown.
 */
#ifndef FG_TESTS_GUARD_H
#define FG_TESTS_GUARD_H

#include <stddef.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

static char *guard_base;
static size_t guard_page;

static int guard_setup(void **state)
{
    (void)state;
    guard_page = (size_t)sysconf(_SC_PAGESIZE);
    guard_base =
        mmap(NULL, 2 * guard_page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (guard_base == MAP_FAILED)
        return -1;
    return mprotect(guard_base + guard_page, guard_page, PROT_NONE);
}

static int guard_teardown(void **state)
{
    (void)state;
    munmap(guard_base, 2 * guard_page);
    return 0;
}

/* S[0..N) copied to end right before the guard page. */
static const char *guarded(const char *s, size_t n)
{
    char *p = guard_base + guard_page - n;

    memcpy(p, s, n);
    return p;
}

#endif
