/*
 * cidr.h - sets of IPv4/IPv6 networks (trusted proxies).
 */
#ifndef FG_CIDR_H
#define FG_CIDR_H

#include <netinet/in.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

/* Room for a network written by cidr_format, "/128" and NUL included. */
#define CIDR_FORMAT_MAX (INET6_ADDRSTRLEN + 4)

struct cidr {
    int family;         /* AF_INET or AF_INET6 */
    uint8_t addr[16];   /* network address, host bits zeroed */
    uint8_t prefix;     /* 0..32 or 0..128 */
};

struct cidr_set {
    struct cidr *items; /* owned */
    size_t n;
};

enum cidr_result {
    CIDR_OK = 0,
    CIDR_MALFORMED = -1, /* not an address, or a prefix out of range */
    CIDR_HOST_BITS = 1,  /* the address has bits set after the prefix */
};

/*
 * Parse "10.0.0.0/8", "::1/128" or a bare address (full-length prefix).
 * Returns CIDR_OK, CIDR_MALFORMED, or CIDR_HOST_BITS for "192.168.1.5/24":
 * bits set after the prefix are a typo whose meaning is unsure (the network
 * or the one host?), which nginx only warns about ("low address bits are
 * meaningless"). OUT is then the network with those bits cleared, in the
 * form it was written (not canonical: for a "did you mean", not matching).
 */
enum cidr_result cidr_parse(const char *text, struct cidr *out);

/* NET as "192.168.1.0/24" or "2001:db8::/32" in BUF of CAP bytes
 * (CIDR_FORMAT_MAX is enough). Returns 0, or -1 when it does not fit. */
int cidr_format(const struct cidr *net, char *buf, size_t cap);

/* Is SA (AF_INET, AF_INET6; v4-mapped v6 compared as v4) inside any network? */
bool cidr_set_contains(const struct cidr_set *set, const struct sockaddr *sa);

/* The same for a textual address ("203.0.113.7", "2001:db8::1"); false when unparsable. */
bool cidr_set_contains_text(const struct cidr_set *set, const char *addr, size_t len);

void cidr_set_free(struct cidr_set *set);

#endif
