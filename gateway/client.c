/*
 * client.c - the real client address and the request id.
 */
#include <string.h>
#include <arpa/inet.h>

#include "cidr.h"
#include "client.h"
#include "req.h"
#include "worker.h"

bool client_valid_request_id(const char *s, size_t n)
{
    if (n == 0 || n > 128)
        return false;
    for (size_t i = 0; i < n; i++) {
        char ch = s[i];
        if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
              ch == '.' || ch == '_' || ch == '-'))
            return false;
    }
    return true;
}

void client_peer_address(struct req *r)
{
    size_t n = strnlen(r->peer_ip, sizeof(r->client_ip) - 1);

    memcpy(r->client_ip, r->peer_ip, n);
    r->client_ip[n] = '\0';
}

bool client_peer_trusted(const struct req *r)
{
    return r->cfg->trusted_proxies.n > 0 && cidr_set_contains(&r->cfg->trusted_proxies, r->peer);
}

static bool ip_trusted(const struct req *r, const char *ip, size_t len)
{
    return cidr_set_contains_text(&r->cfg->trusted_proxies, ip, len);
}

void client_find(struct req *r, bool peer_trusted)
{
    client_peer_address(r);
    if (!peer_trusted)
        return;
    const struct h1_header *xff = h1_find(r->h.headers, r->h.nheaders, "X-Forwarded-For");
    if (xff == NULL)
        return;
    r->xff_prior = xff->value;
    r->xff_prior_len = xff->value_len;
    size_t end = xff->value_len;
    while (end > 0) {
        size_t start = end;
        while (start > 0 && xff->value[start - 1] != ',')
            start--;
        const char *v = xff->value + start;
        size_t n = end - start;
        h1_trim_ows(&v, &n);
        if (n > 0 && n < sizeof(r->client_ip)) {
            unsigned char probe[sizeof(struct in6_addr)];
            char ip[INET6_ADDRSTRLEN];
            memcpy(ip, v, n);
            ip[n] = '\0';
            if (inet_pton(AF_INET, ip, probe) != 1 && inet_pton(AF_INET6, ip, probe) != 1)
                return; /* junk in the list: stop trusting it here */
            memcpy(r->client_ip, ip, n + 1);
            if (!ip_trusted(r, ip, n))
                return;
        }
        end = start > 0 ? start - 1 : 0;
    }
}

void client_request_id(struct req *r, bool peer_trusted)
{
    const struct h1_header *h =
        peer_trusted ? h1_find(r->h.headers, r->h.nheaders, "X-Request-Id") : NULL;

    if (h && client_valid_request_id(h->value, h->value_len)) {
        memcpy(r->request_id, h->value, h->value_len);
        r->request_id[h->value_len] = '\0';
        return;
    }
    worker_request_id(r->w, r->request_id);
}
