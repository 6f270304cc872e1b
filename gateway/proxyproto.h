/*
 * proxyproto.h - the PROXY protocol header (HAProxy's proxy-protocol.txt,
 * versions 1 and 2) that a load balancer sends before anything else on a
 * connection, giving the original client's address.
 */
#ifndef FG_PROXYPROTO_H
#define FG_PROXYPROTO_H

#include <stddef.h>
#include <sys/socket.h>
#include <sys/types.h>

/* Longest header we accept: v1 is at most 107 bytes; v2 carries TLVs that
 * flowgate skips, bounded here so a peer cannot make us buffer much. */
#define PROXYPROTO_MAX 536

enum proxyproto_result {
    PROXYPROTO_ADDR = 0,  /* a client address was given (*SRC filled) */
    PROXYPROTO_LOCAL = 1, /* v2 LOCAL or v1 UNKNOWN: keep the peer's address */
};

/*
 * Parse a PROXY header at the start of BUF[0..LEN). Returns the header's
 * length (> 0) with *RESULT set (and *SRC / *SRCLEN for PROXYPROTO_ADDR),
 * -2 when more bytes are needed, -1 when the bytes are not a valid header.
 * Only TCP over IPv4/IPv6 (and v2 LOCAL) are accepted.
 */
ssize_t proxyproto_parse(const unsigned char *buf, size_t len, enum proxyproto_result *result,
                         struct sockaddr_storage *src, socklen_t *srclen);

#endif
