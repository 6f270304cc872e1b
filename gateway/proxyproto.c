/*
 * proxyproto.c - PROXY protocol v1 (text) and v2 (binary) headers.
 *
 * Strict: v1 must be exactly "PROXY TCP4|TCP6 SRC DST SPORT DPORT\r\n" with
 * single spaces (or "PROXY UNKNOWN...\r\n"); v2 must carry the 12-byte
 * signature, version 2, and an address block as long as its family needs.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <string.h>

#include "proxyproto.h"

#define V1_MAX 107

static const unsigned char v2_sig[12] = {0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D,
                                         0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A};

/* The next space-separated field of LINE[*pos..end) into OUT (NUL-terminated). */
static int v1_field(const char *line, size_t end, size_t *pos, char *out, size_t cap)
{
    size_t start = *pos, n;

    while (*pos < end && line[*pos] != ' ')
        (*pos)++;
    n = *pos - start;
    if (n == 0 || n >= cap)
        return -1;
    memcpy(out, line + start, n);
    out[n] = '\0';
    if (*pos < end)
        (*pos)++; /* the single separating space */
    return 0;
}

static int v1_port(const char *s, uint16_t *port)
{
    unsigned long v = 0;
    size_t n = strlen(s);

    if (n == 0 || n > 5 || (n > 1 && s[0] == '0'))
        return -1;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        v = v * 10 + (unsigned long)(s[i] - '0');
    }
    if (v > 65535)
        return -1;
    *port = (uint16_t)v;
    return 0;
}

static int v1_address(const char *proto, const char *addr, const char *sport,
                      struct sockaddr_storage *src, socklen_t *srclen)
{
    uint16_t port;

    if (v1_port(sport, &port) < 0)
        return -1;
    memset(src, 0, sizeof(*src));
    if (strcmp(proto, "TCP4") == 0) {
        struct sockaddr_in *sin = (struct sockaddr_in *)src;
        if (inet_pton(AF_INET, addr, &sin->sin_addr) != 1)
            return -1;
        sin->sin_family = AF_INET;
        sin->sin_port = htons(port);
        *srclen = sizeof(*sin);
        return 0;
    }
    if (strcmp(proto, "TCP6") == 0) {
        struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)src;
        if (inet_pton(AF_INET6, addr, &sin6->sin6_addr) != 1)
            return -1;
        sin6->sin6_family = AF_INET6;
        sin6->sin6_port = htons(port);
        *srclen = sizeof(*sin6);
        return 0;
    }
    return -1;
}

static ssize_t parse_v1(const char *buf, size_t len, enum proxyproto_result *result,
                        struct sockaddr_storage *src, socklen_t *srclen)
{
    size_t scan = len < V1_MAX ? len : V1_MAX;
    char proto[8], sa[64], da[64], sp[8], dp[8];
    size_t pos = 6, end = 0;

    while (end < scan && buf[end] != '\r' && buf[end] != '\n')
        end++;
    if (end == scan)
        return len < V1_MAX ? -2 : -1;
    if (buf[end] == '\n')
        return -1; /* a bare LF: not a PROXY line */
    if (end + 1 >= len)
        return -2;
    if (buf[end + 1] != '\n')
        return -1;
    if (memchr(buf, '\0', end) || memchr(buf, '\n', end))
        return -1;
    if (end >= 13 && memcmp(buf, "PROXY UNKNOWN", 13) == 0 && (end == 13 || buf[13] == ' ')) {
        *result = PROXYPROTO_LOCAL;
        return (ssize_t)end + 2;
    }
    if (v1_field(buf, end, &pos, proto, sizeof(proto)) < 0 ||
        v1_field(buf, end, &pos, sa, sizeof(sa)) < 0 ||
        v1_field(buf, end, &pos, da, sizeof(da)) < 0 ||
        v1_field(buf, end, &pos, sp, sizeof(sp)) < 0 ||
        v1_field(buf, end, &pos, dp, sizeof(dp)) < 0 || pos != end || buf[end - 1] == ' ')
        return -1;
    struct sockaddr_storage dst;
    socklen_t dstlen;
    if (v1_address(proto, sa, sp, src, srclen) < 0 || v1_address(proto, da, dp, &dst, &dstlen) < 0)
        return -1;
    *result = PROXYPROTO_ADDR;
    return (ssize_t)end + 2;
}

static ssize_t parse_v2(const unsigned char *buf, size_t len, enum proxyproto_result *result,
                        struct sockaddr_storage *src, socklen_t *srclen)
{
    if (len < 16)
        return -2;
    unsigned ver = buf[12] >> 4, cmd = buf[12] & 0x0f, fam = buf[13];
    size_t blen = ((size_t)buf[14] << 8) | buf[15];
    if (ver != 2 || cmd > 1 || 16 + blen > PROXYPROTO_MAX)
        return -1;
    if (len < 16 + blen)
        return -2;
    memset(src, 0, sizeof(*src));
    if (cmd == 0 || fam == 0x00) {
        /* LOCAL (health checks from the balancer itself), or UNSPEC. */
        *result = PROXYPROTO_LOCAL;
        return (ssize_t)(16 + blen);
    }
    if (fam == 0x11 && blen >= 12) {
        struct sockaddr_in *sin = (struct sockaddr_in *)src;
        sin->sin_family = AF_INET;
        memcpy(&sin->sin_addr, buf + 16, 4);
        memcpy(&sin->sin_port, buf + 24, 2);
        *srclen = sizeof(*sin);
    } else if (fam == 0x21 && blen >= 36) {
        struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)src;
        sin6->sin6_family = AF_INET6;
        memcpy(&sin6->sin6_addr, buf + 16, 16);
        memcpy(&sin6->sin6_port, buf + 48, 2);
        *srclen = sizeof(*sin6);
    } else {
        return -1; /* UDP, unix sockets, or a short address block */
    }
    *result = PROXYPROTO_ADDR;
    return (ssize_t)(16 + blen);
}

ssize_t proxyproto_parse(const unsigned char *buf, size_t len, enum proxyproto_result *result,
                         struct sockaddr_storage *src, socklen_t *srclen)
{
    size_t n = len < sizeof(v2_sig) ? len : sizeof(v2_sig);

    if (len == 0)
        return -2;
    if (memcmp(buf, v2_sig, n) == 0)
        return len < sizeof(v2_sig) ? -2 : parse_v2(buf, len, result, src, srclen);
    n = len < 6 ? len : 6;
    if (memcmp(buf, "PROXY ", n) != 0)
        return -1;
    return len < 6 ? -2 : parse_v1((const char *)buf, len, result, src, srclen);
}
