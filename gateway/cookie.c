/*
 * cookie.c - the one reader of cookie-strings. See cookie.h.
 */
#include <string.h>

#include "cookie.h"
#include "h1.h"

bool cookie_next(const char *value, size_t len, size_t *pos, struct cookie *c)
{
    while (*pos < len) {
        const char *p = value + *pos;
        const char *semi = memchr(p, ';', len - *pos);
        size_t n = semi != NULL ? (size_t)(semi - p) : len - *pos;

        *pos += semi != NULL ? n + 1 : n;
        h1_trim_ows(&p, &n);
        if (n == 0)
            continue;
        const char *eq = memchr(p, '=', n);
        c->pair = p;
        c->pair_len = n;
        c->name = p;
        c->name_len = eq != NULL ? (size_t)(eq - p) : n;
        h1_trim_ows(&c->name, &c->name_len);
        c->value = eq != NULL ? eq + 1 : p + n;
        c->value_len = (size_t)(p + n - c->value);
        return true;
    }
    return false;
}

bool cookie_name_is(const struct cookie *c, const char *name)
{
    size_t n = strlen(name);

    return c->name_len == n && memcmp(c->name, name, n) == 0;
}
