/*
 * cidr.c - sets of IPv4/IPv6 networks (trusted proxies).
 *
 * Addresses are compared in one canonical form: an IPv4-mapped IPv6 address
 * (::ffff:a.b.c.d, what a dual-stack socket reports for an IPv4 peer) is the
 * IPv4 address it carries. That applies both to clients and to networks
 * written in mapped form with a prefix that covers the mapping (>= 96), so
 * "10.0.0.0/8" and "::ffff:10.0.0.0/104" mean the same thing. IPv4 and IPv6
 * networks otherwise never match each other: "::/0" does not trust IPv4.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cidr.h"

/* Longest textual address inet_pton accepts, with its NUL. */
#define CIDR_TEXT_MAX INET6_ADDRSTRLEN

static const uint8_t v4_mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};

static unsigned cidr_bits(int family)
{
    return family == AF_INET ? 32 : 128;
}

/* Turn a v4-mapped v6 network or address into its IPv4 form (see top). */
static void cidr_canonical(struct cidr *c)
{
    if (c->family != AF_INET6 || c->prefix < 96 || memcmp(c->addr, v4_mapped, 12) != 0)
        return;
    c->family = AF_INET;
    memmove(c->addr, c->addr + 12, 4);
    memset(c->addr + 4, 0, 12);
    c->prefix -= 96;
}

/* Zero the host bits. Returns whether any was set. */
static bool cidr_mask(struct cidr *c)
{
    uint8_t set = 0;

    for (unsigned i = 0; i < sizeof(c->addr); i++) {
        unsigned bits = c->prefix > 8 * i ? c->prefix - 8 * i : 0; /* network bits here */
        uint8_t keep = bits >= 8 ? 0xff : (uint8_t)(0xff00 >> bits);

        set |= c->addr[i] & (uint8_t)~keep;
        c->addr[i] &= keep;
    }
    return set != 0;
}

/* The address part, N bytes, not NUL-terminated. Family by the presence of
 * ':' so that inet_pton alone decides what a valid address is. */
static int parse_addr(const char *s, size_t n, struct cidr *out)
{
    char text[CIDR_TEXT_MAX];

    if (n == 0 || n >= sizeof(text) || memchr(s, '\0', n) != NULL)
        return -1;
    memcpy(text, s, n);
    text[n] = '\0';
    memset(out, 0, sizeof(*out));
    out->family = memchr(text, ':', n) != NULL ? AF_INET6 : AF_INET;
    if (inet_pton(out->family, text, out->addr) != 1)
        return -1;
    out->prefix = (uint8_t)cidr_bits(out->family);
    return 0;
}

/* 1*DIGIT, at most MAX; leading zeros are harmless ("/08" is 8). */
static int parse_prefix(const char *s, unsigned max, uint8_t *out)
{
    unsigned v = 0;

    if (*s == '\0')
        return -1;
    for (; *s != '\0'; s++) {
        if (*s < '0' || *s > '9')
            return -1;
        v = v * 10 + (unsigned)(*s - '0');
        if (v > max)
            return -1;
    }
    *out = (uint8_t)v;
    return 0;
}

enum cidr_result cidr_parse(const char *text, struct cidr *out)
{
    struct cidr c;
    const char *slash;

    if (text == NULL || out == NULL)
        return CIDR_MALFORMED;
    slash = strchr(text, '/');
    if (parse_addr(text, slash != NULL ? (size_t)(slash - text) : strlen(text), &c) == -1)
        return CIDR_MALFORMED;
    if (slash != NULL && parse_prefix(slash + 1, cidr_bits(c.family), &c.prefix) == -1)
        return CIDR_MALFORMED;
    if (cidr_mask(&c)) {
        *out = c; /* as written, for the message */
        return CIDR_HOST_BITS;
    }
    cidr_canonical(&c);
    *out = c;
    return CIDR_OK;
}

int cidr_format(const struct cidr *net, char *buf, size_t cap)
{
    char addr[INET6_ADDRSTRLEN];

    if (inet_ntop(net->family, net->addr, addr, sizeof(addr)) == NULL)
        return -1;
    int n = snprintf(buf, cap, "%s/%u", addr, (unsigned)net->prefix);
    return n < 0 || (size_t)n >= cap ? -1 : 0;
}

/* Is the address ADDR (full-length, canonical) inside NET? */
static bool cidr_contains(const struct cidr *net, const struct cidr *addr)
{
    unsigned full = net->prefix / 8;
    unsigned rem = net->prefix % 8;

    if (net->family != addr->family || memcmp(net->addr, addr->addr, full) != 0)
        return false;
    if (rem == 0)
        return true;
    return (addr->addr[full] & (uint8_t)(0xff << (8 - rem))) == net->addr[full];
}

static bool set_contains(const struct cidr_set *set, struct cidr *addr)
{
    if (set == NULL)
        return false;
    cidr_canonical(addr);
    for (size_t i = 0; i < set->n; i++) {
        if (cidr_contains(&set->items[i], addr))
            return true;
    }
    return false;
}

bool cidr_set_contains(const struct cidr_set *set, const struct sockaddr *sa)
{
    struct cidr addr = {0};

    if (sa == NULL)
        return false;
    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *sin = (const struct sockaddr_in *)sa;

        addr.family = AF_INET;
        addr.prefix = 32;
        memcpy(addr.addr, &sin->sin_addr, 4);
    } else if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)sa;

        addr.family = AF_INET6;
        addr.prefix = 128;
        memcpy(addr.addr, &sin6->sin6_addr, 16);
    } else {
        return false;
    }
    return set_contains(set, &addr);
}

bool cidr_set_contains_text(const struct cidr_set *set, const char *text, size_t len)
{
    struct cidr addr;

    if (text == NULL || parse_addr(text, len, &addr) == -1)
        return false;
    return set_contains(set, &addr);
}

void cidr_set_free(struct cidr_set *set)
{
    if (set == NULL)
        return;
    free(set->items);
    set->items = NULL;
    set->n = 0;
}
