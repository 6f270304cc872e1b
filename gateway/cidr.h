/*
 * cidr.h - sets of IPv4/IPv6 networks (trusted proxies).
 */
#ifndef FG_CIDR_H
#define FG_CIDR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

struct cidr {
    int family;         /* AF_INET or AF_INET6 */
    uint8_t addr[16];   /* network address, host bits zeroed */
    uint8_t prefix;     /* 0..32 or 0..128 */
};

struct cidr_set {
    struct cidr *items; /* owned */
    size_t n;
};

/* Parse "10.0.0.0/8", "::1/128" or a bare address (full-length prefix).
 * Returns 0, or -1 for anything malformed (host bits set are masked off). */
int cidr_parse(const char *text, struct cidr *out);

/* Is SA (AF_INET, AF_INET6; v4-mapped v6 compared as v4) inside any network? */
bool cidr_set_contains(const struct cidr_set *set, const struct sockaddr *sa);

/* The same for a textual address ("203.0.113.7", "2001:db8::1"); false when unparsable. */
bool cidr_set_contains_text(const struct cidr_set *set, const char *addr, size_t len);

void cidr_set_free(struct cidr_set *set);

#endif
