/*
 * tls.h - OpenSSL server contexts: one SSL_CTX per certificate, chosen by SNI
 * against each certificate's SANs; strong defaults; tickets with in-memory
 * rotated keys; ALPN "h2" (when http2.enabled) and "http/1.1".
 */
#ifndef FG_TLS_H
#define FG_TLS_H

#include <stdbool.h>
#include <stddef.h>
#include <time.h>
#include <openssl/ssl.h>

#include "cfg.h"

struct tls_ctxset; /* opaque, immutable after build except ticket keys */

/*
 * Build the contexts for CFG->tls. Returns NULL and writes
 * "FILE:LINE-less message" (e.g. "certs/x.crt: key does not match
 * certificate") into ERR on any problem. Thread-safe to use from every
 * worker once built.
 */
struct tls_ctxset *tls_build(const struct fg_config *cfg, const struct tls_ctxset *prev, char *err,
                             size_t errlen);
/* (PREV, when not NULL, is the set this one replaces on a reload: its session
 * ticket keys are shared, so tickets issued before the reload still resume.) */
/* Drops the builder's reference: connections already made from SET keep its
 * contexts, SNI table and ticket keys alive until the last one is freed. */
void tls_free(struct tls_ctxset *set);

/* Another reference to SET (NULL stays NULL), dropped with tls_free(). */
struct tls_ctxset *tls_ref(struct tls_ctxset *set);

/* A new server-side SSL for one connection (default context; SNI switches it). */
SSL *tls_new_ssl(struct tls_ctxset *set);

/* Rotate session ticket keys if due (called from a timer; cheap when not). */
void tls_rotate_tickets(struct tls_ctxset *set);

/* Rotate now, whatever the time (tests): the current key becomes the previous
 * one, which still decrypts (and renews) tickets for one more period. */
void tls_rotate_tickets_now(struct tls_ctxset *set);

/* Certificates in the set (in configuration order) and the notAfter time of
 * certificate I, seconds since the epoch (0 when unknown). */
size_t tls_ncerts(const struct tls_ctxset *set);
time_t tls_cert_not_after(const struct tls_ctxset *set, size_t i);

/* Did the handshake on SSL select "h2" by ALPN? */
bool tls_alpn_is_h2(const SSL *ssl);

/* "TLSv1.3" etc. for the log. */
const char *tls_version_str(const SSL *ssl);

#endif
