/*
 * tls.c - server SSL_CTXs: one per certificate, chosen by SNI, strong
 * defaults, ALPN (http/1.1, or none), stateless session tickets with in-memory keys.
 *
 * Lifetime: a set is owned by its default (first) SSL_CTX. tls_free() drops
 * the builder's reference to that context; every SSL made by tls_new_ssl()
 * holds another (OpenSSL keeps ssl->session_ctx referenced), so after a
 * reload the old set, its SNI table and its other contexts stay valid until
 * the last connection that started on them is freed.
 */
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "tls.h"

/* AEAD with forward secrecy only: no CBC, no RSA key exchange, no DHE. */
#define TLS_DEFAULT_CIPHERS                                                                        \
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"                                   \
    "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"                                   \
    "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305"

/* Appended to an operator's list: suites no configuration should ever reach. */
#define TLS_CIPHER_FLOOR ":!aNULL:!eNULL:!EXPORT:!LOW:!RC4:!3DES:!MD5"

#define TLS_GROUPS "X25519:P-256:P-384"

/* A ticket lives as long as one key period; the previous key is kept for one
 * more period, so every ticket still within its lifetime can be decrypted. */
#define TLS_TICKET_PERIOD_SECONDS (12 * 3600)

#define TLS_SID_CONTEXT "flowgate"

struct tls_ticket_key {
    unsigned char name[16];     /* sent in the clear inside the ticket */
    unsigned char aes_key[32];  /* AES-256-CBC */
    unsigned char hmac_key[32]; /* HMAC-SHA256 */
};

/* Shared by every context of a set, so a ticket issued after an SNI switch
 * resumes whichever context the next handshake lands on. */
struct tls_ticket_keys {
    unsigned refs;                 /* sets sharing them (atomic): reloads keep the keys */
    pthread_rwlock_t lock;         /* readers: every handshake; writer: rotation */
    struct tls_ticket_key current; /* encrypts new tickets */
    struct tls_ticket_key previous;
    bool has_previous;
    time_t rotated_at; /* CLOCK_MONOTONIC seconds */
};

struct tls_sni_name {
    char *name;       /* lowercased DNS name; for a wildcard, the part after "*." */
    bool wildcard;    /* "*.example.com" matched one label deep */
    size_t ctx_index; /* into set->ctxs */
};

struct tls_ctxset {
    SSL_CTX **ctxs; /* one per certificate; [0] is the default and owner */
    size_t nctxs;
    struct tls_sni_name *names; /* in certificate order: first match wins */
    size_t nnames;
    struct tls_ticket_keys *keys; /* NULL when session tickets are off */
    bool h2;                      /* offer "h2" by ALPN (http2.enabled) */
};

static int tls_owner_index = -1;
static pthread_once_t tls_owner_once = PTHREAD_ONCE_INIT;

static void tls_set_destroy(struct tls_ctxset *set);

/* Runs for every SSL_CTX freed in the process; only a set's default context
 * carries a pointer at this index. */
static void tls_owner_free(void *parent, void *ptr, CRYPTO_EX_DATA *ad, int idx, long argl,
                           void *argp) {
    if (ptr != NULL)
        tls_set_destroy(ptr);
}

static void tls_owner_init(void) {
    tls_owner_index = SSL_CTX_get_ex_new_index(0, NULL, NULL, NULL, tls_owner_free);
}

/* Formats "PREFIX: WHAT (reason)" with the oldest queued OpenSSL error as
 * reason, clears the queue, and returns -1. */
static int tls_err(char *err, size_t errlen, const char *prefix, const char *what) {
    unsigned long e = ERR_peek_error();
    const char *reason = e ? ERR_reason_error_string(e) : NULL;

    if (reason != NULL)
        snprintf(err, errlen, "%s: %s (%s)", prefix, what, reason);
    else
        snprintf(err, errlen, "%s: %s", prefix, what);
    ERR_clear_error();
    return -1;
}

/* ---- session ticket keys ---------------------------------------------- */

static time_t tls_now(void) {
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec;
}

static int tls_ticket_key_generate(struct tls_ticket_key *key) {
    if (RAND_bytes(key->name, sizeof(key->name)) != 1 ||
        RAND_bytes(key->aes_key, sizeof(key->aes_key)) != 1 ||
        RAND_bytes(key->hmac_key, sizeof(key->hmac_key)) != 1)
        return -1;
    return 0;
}

static struct tls_ticket_keys *tls_ticket_keys_new(void) {
    struct tls_ticket_keys *keys = calloc(1, sizeof(*keys));

    if (keys == NULL)
        return NULL;
    if (tls_ticket_key_generate(&keys->current) != 0 ||
        pthread_rwlock_init(&keys->lock, NULL) != 0) {
        OPENSSL_cleanse(keys, sizeof(*keys));
        free(keys);
        return NULL;
    }
    keys->rotated_at = tls_now();
    keys->refs = 1;
    return keys;
}

static void tls_ticket_keys_free(struct tls_ticket_keys *keys) {
    if (keys == NULL || __atomic_sub_fetch(&keys->refs, 1, __ATOMIC_ACQ_REL) != 0)
        return;
    pthread_rwlock_destroy(&keys->lock);
    OPENSSL_cleanse(keys, sizeof(*keys));
    free(keys);
}

/* Replaces the current key with a fresh one and keeps the old one for
 * decryption. On a RAND failure the keys stay as they are. */
static void tls_ticket_keys_rotate(struct tls_ticket_keys *keys) {
    struct tls_ticket_key fresh;

    if (tls_ticket_key_generate(&fresh) != 0)
        return;
    pthread_rwlock_wrlock(&keys->lock);
    keys->previous = keys->current;
    keys->has_previous = true;
    keys->current = fresh;
    keys->rotated_at = tls_now();
    pthread_rwlock_unlock(&keys->lock);
    OPENSSL_cleanse(&fresh, sizeof(fresh));
}

/* Copies the key named NAME (or the current key when NAME is NULL) into OUT.
 * Returns 1 for the current key, 2 for the previous one, 0 when unknown:
 * the values the ticket callback returns. */
static int tls_ticket_key_find(struct tls_ticket_keys *keys, const unsigned char *name,
                               struct tls_ticket_key *out) {
    int found = 0;

    pthread_rwlock_rdlock(&keys->lock);
    if (name == NULL || memcmp(name, keys->current.name, sizeof(keys->current.name)) == 0) {
        *out = keys->current;
        found = 1;
    } else if (keys->has_previous &&
               memcmp(name, keys->previous.name, sizeof(keys->previous.name)) == 0) {
        *out = keys->previous;
        found = 2;
    }
    pthread_rwlock_unlock(&keys->lock);
    return found;
}

static int tls_ticket_mac_init(EVP_MAC_CTX *hctx, unsigned char *hmac_key) {
    char digest[] = "SHA256";
    OSSL_PARAM params[] = {
        OSSL_PARAM_construct_octet_string(OSSL_MAC_PARAM_KEY, hmac_key, 32),
        OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, digest, 0),
        OSSL_PARAM_construct_end(),
    };

    return EVP_MAC_CTX_set_params(hctx, params) == 1 ? 0 : -1;
}

/*
 * SSL_CTX_set_tlsext_ticket_key_evp_cb: encrypting (ENC=1) uses the current
 * key; decrypting finds the key by name and returns 2 for the previous key so
 * OpenSSL issues a fresh ticket under the current one. An unknown name
 * returns 0: a full handshake, never an error.
 */
static int tls_ticket_cb(SSL *ssl, unsigned char key_name[16], unsigned char *iv,
                         EVP_CIPHER_CTX *cctx, EVP_MAC_CTX *hctx, int enc) {
    struct tls_ctxset *set = SSL_CTX_get_app_data(SSL_get_SSL_CTX(ssl));
    struct tls_ticket_key key;
    int found, rc = -1;

    if (set == NULL || set->keys == NULL)
        return 0;
    if (enc) {
        if (RAND_bytes(iv, EVP_CIPHER_get_iv_length(EVP_aes_256_cbc())) != 1)
            return -1;
        tls_ticket_key_find(set->keys, NULL, &key);
        memcpy(key_name, key.name, sizeof(key.name));
        if (EVP_EncryptInit_ex(cctx, EVP_aes_256_cbc(), NULL, key.aes_key, iv) == 1 &&
            tls_ticket_mac_init(hctx, key.hmac_key) == 0)
            rc = 1;
    } else {
        found = tls_ticket_key_find(set->keys, key_name, &key);
        if (found == 0)
            return 0;
        if (EVP_DecryptInit_ex(cctx, EVP_aes_256_cbc(), NULL, key.aes_key, iv) == 1 &&
            tls_ticket_mac_init(hctx, key.hmac_key) == 0)
            rc = found;
    }
    OPENSSL_cleanse(&key, sizeof(key));
    return rc;
}

void tls_rotate_tickets(struct tls_ctxset *set) {
    time_t rotated_at;

    if (set == NULL || set->keys == NULL)
        return;
    pthread_rwlock_rdlock(&set->keys->lock);
    rotated_at = set->keys->rotated_at;
    pthread_rwlock_unlock(&set->keys->lock);
    if (tls_now() - rotated_at < TLS_TICKET_PERIOD_SECONDS)
        return;
    tls_ticket_keys_rotate(set->keys);
}

void tls_rotate_tickets_now(struct tls_ctxset *set) {
    if (set != NULL && set->keys != NULL)
        tls_ticket_keys_rotate(set->keys);
}

/* ---- SNI ----------------------------------------------------------------- */

static int tls_sni_add(struct tls_ctxset *set, const char *name, size_t len, size_t ctx_index) {
    struct tls_sni_name *names, *n;
    bool wildcard = len > 2 && name[0] == '*' && name[1] == '.';

    if (len == 0 || memchr(name, '\0', len) != NULL)
        return 0; /* an embedded NUL is never a name a client can ask for */
    if (wildcard) {
        name += 2;
        len -= 2;
    }
    names = realloc(set->names, (set->nnames + 1) * sizeof(*names));
    if (names == NULL)
        return -1;
    set->names = names;
    n = &names[set->nnames];
    n->name = strndup(name, len);
    if (n->name == NULL)
        return -1;
    for (char *p = n->name; *p; p++)
        *p = (*p >= 'A' && *p <= 'Z') ? (char)(*p + 32) : *p;
    n->wildcard = wildcard;
    n->ctx_index = ctx_index;
    set->nnames++;
    return 0;
}

/* Adds the certificate's SAN DNS names, or its CN when it has no SAN DNS
 * name (RFC 6125 6.4.4: the CN is consulted only in that case). */
static int tls_sni_collect(struct tls_ctxset *set, X509 *cert, size_t ctx_index) {
    GENERAL_NAMES *sans = X509_get_ext_d2i(cert, NID_subject_alt_name, NULL, NULL);
    size_t before = set->nnames;
    int rc = 0;

    for (int i = 0; sans != NULL && i < sk_GENERAL_NAME_num(sans) && rc == 0; i++) {
        const GENERAL_NAME *gn = sk_GENERAL_NAME_value(sans, i);

        if (gn->type == GEN_DNS)
            rc = tls_sni_add(set, (const char *)ASN1_STRING_get0_data(gn->d.dNSName),
                             (size_t)ASN1_STRING_length(gn->d.dNSName), ctx_index);
    }
    GENERAL_NAMES_free(sans);
    if (rc == 0 && set->nnames == before) {
        X509_NAME *subject = X509_get_subject_name(cert);
        int pos = X509_NAME_get_index_by_NID(subject, NID_commonName, -1);
        ASN1_STRING *cn =
            pos >= 0 ? X509_NAME_ENTRY_get_data(X509_NAME_get_entry(subject, pos)) : NULL;

        if (cn != NULL)
            rc = tls_sni_add(set, (const char *)ASN1_STRING_get0_data(cn),
                             (size_t)ASN1_STRING_length(cn), ctx_index);
    }
    return rc;
}

/* The context for HOST: an exact name first, then a wildcard covering
 * exactly its first label; NULL when none. A trailing dot is ignored. */
static SSL_CTX *tls_sni_lookup(const struct tls_ctxset *set, const char *host) {
    size_t len = strlen(host);
    const char *parent;

    if (len > 0 && host[len - 1] == '.')
        len--;
    for (size_t i = 0; i < set->nnames; i++) {
        const struct tls_sni_name *n = &set->names[i];

        if (!n->wildcard && strlen(n->name) == len && strncasecmp(n->name, host, len) == 0)
            return set->ctxs[n->ctx_index];
    }
    parent = memchr(host, '.', len);
    if (parent == NULL || parent == host)
        return NULL;
    parent++;
    len -= (size_t)(parent - host);
    for (size_t i = 0; i < set->nnames; i++) {
        const struct tls_sni_name *n = &set->names[i];

        if (n->wildcard && strlen(n->name) == len && strncasecmp(n->name, parent, len) == 0)
            return set->ctxs[n->ctx_index];
    }
    return NULL;
}

/* An unknown or absent name keeps the default certificate: the client then
 * decides, as with nginx's default_server, rather than getting an alert. */
static int tls_servername_cb(SSL *ssl, int *alert, void *arg) {
    const struct tls_ctxset *set = arg;
    const char *host = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name);
    SSL_CTX *ctx;

    if (host == NULL || set->nctxs < 2)
        return SSL_TLSEXT_ERR_OK;
    ctx = tls_sni_lookup(set, host);
    if (ctx != NULL && ctx != SSL_get_SSL_CTX(ssl))
        SSL_set_SSL_CTX(ssl, ctx);
    return SSL_TLSEXT_ERR_OK;
}

/* ---- ALPN ---------------------------------------------------------------- */

/*
 * What flowgate speaks over TLS, as ALPN protocol lists (RFC 7301 3.1:
 * length-prefixed names), most preferred first. Extended CONNECT (RFC 8441)
 * is never advertised, so browsers open WebSockets over HTTP/1.1.
 */
static const unsigned char tls_alpn_h2[] = "\x02h2\x08http/1.1";
static const unsigned char tls_alpn_h1[] = "\x08http/1.1";

/*
 * Selects the first protocol of ours that the client offers (RFC 7301 3.2:
 * the server's preference decides); the set (ARG) says whether "h2" is
 * ours. A client whose list holds none of them (curl --http1.0 offers only
 * "http/1.0") gets no ALPN answer rather than a no_application_protocol
 * alert, as nginx does: the handshake completes and the connection speaks
 * HTTP/1.1, which every HTTP/1.x client reads.
 */
static int tls_alpn_cb(SSL *ssl, const unsigned char **out, unsigned char *outlen,
                       const unsigned char *in, unsigned int inlen, void *arg) {
    const struct tls_ctxset *set = arg;
    const unsigned char *ours = set->h2 ? tls_alpn_h2 : tls_alpn_h1;
    unsigned int ours_len = set->h2 ? sizeof(tls_alpn_h2) - 1 : sizeof(tls_alpn_h1) - 1;
    unsigned char *sel = NULL;
    unsigned char sel_len = 0;

    /* OpenSSL checked the client's list before calling us. On a match SEL
     * points into our static list, which outlives the handshake. */
    if (SSL_select_next_proto(&sel, &sel_len, ours, ours_len, in, inlen) != OPENSSL_NPN_NEGOTIATED)
        return SSL_TLSEXT_ERR_NOACK;
    *out = sel;
    *outlen = sel_len;
    return SSL_TLSEXT_ERR_OK;
}

bool tls_alpn_is_h2(const SSL *ssl)
{
    const unsigned char *p = NULL;
    unsigned int n = 0;

    SSL_get0_alpn_selected(ssl, &p, &n);
    return n == 2 && memcmp(p, "h2", 2) == 0;
}

/* ---- contexts ------------------------------------------------------------ */

static int tls_ctx_protocol(SSL_CTX *ctx, const struct fg_tls *tls, char *err, size_t errlen) {
    const char *ciphers = tls->ciphers != NULL ? tls->ciphers : "";
    /* IGNORE_UNEXPECTED_EOF: clients commonly close without close_notify;
     * that is an end of stream, and truncation is judged by HTTP framing. */
    uint64_t options = SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION |
                       SSL_OP_IGNORE_UNEXPECTED_EOF |
                       SSL_OP_CIPHER_SERVER_PREFERENCE | SSL_OP_PRIORITIZE_CHACHA;
    char list[2048];

#ifdef SSL_OP_NO_CLIENT_RENEGOTIATION
    options |= SSL_OP_NO_CLIENT_RENEGOTIATION;
#endif
    if (!tls->session_tickets)
        options |= SSL_OP_NO_TICKET;
    /* The system openssl.cnf may have turned these on; a gateway never wants them. */
    SSL_CTX_clear_options(ctx, SSL_OP_ALLOW_CLIENT_RENEGOTIATION |
                                   SSL_OP_ALLOW_UNSAFE_LEGACY_RENEGOTIATION |
                                   SSL_OP_LEGACY_SERVER_CONNECT);
    SSL_CTX_set_options(ctx, options);
    /* Never below TLS 1.2, whatever the caller passes (0 would mean "any"). */
    if (SSL_CTX_set_min_proto_version(ctx, tls->min_version > TLS1_2_VERSION ? tls->min_version
                                                                             : TLS1_2_VERSION) != 1)
        return tls_err(err, errlen, "tls", "unsupported min_version");
    if (ciphers[0] == '\0')
        snprintf(list, sizeof(list), "%s", TLS_DEFAULT_CIPHERS);
    else if ((size_t)snprintf(list, sizeof(list), "%s%s", ciphers, TLS_CIPHER_FLOOR) >=
             sizeof(list))
        return tls_err(err, errlen, "tls", "ciphers: list too long");
    if (SSL_CTX_set_cipher_list(ctx, list) != 1)
        return tls_err(err, errlen, "tls", "ciphers: no usable cipher in the list");
    if (SSL_CTX_set1_groups_list(ctx, TLS_GROUPS) != 1)
        return tls_err(err, errlen, "tls", "cannot set key exchange groups");
    return 0;
}

/* Session resumption: tickets only, never a server-side cache (it would be
 * per worker and per instance anyway). With tickets off, TLS 1.3 sends none
 * and TLS 1.2 has no cache to resume from: no resumption at all. */
static int tls_ctx_sessions(SSL_CTX *ctx, const struct fg_tls *tls) {
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
    SSL_CTX_set_session_id_context(ctx, (const unsigned char *)TLS_SID_CONTEXT,
                                   sizeof(TLS_SID_CONTEXT) - 1);
    if (!tls->session_tickets)
        return SSL_CTX_set_num_tickets(ctx, 0) == 1 ? 0 : -1;
    SSL_CTX_set_timeout(ctx, TLS_TICKET_PERIOD_SECONDS);
    /* TLS 1.3: one ticket a handshake, not OpenSSL's two. Making a ticket
     * (the session serialised, a PSK derived, sealed) costs about a sixth
     * of a full handshake's instructions, and a browser opens one HTTP/2
     * connection per origin and resumes with one ticket, getting a new one
     * each time. */
    if (SSL_CTX_set_num_tickets(ctx, 1) != 1)
        return -1;
    return SSL_CTX_set_tlsext_ticket_key_evp_cb(ctx, tls_ticket_cb) == 1 ? 0 : -1;
}

/* SSL_CTX_use_PrivateKey_file already compares the key with the loaded
 * certificate; its mismatch is reported like SSL_CTX_check_private_key's. */
static bool tls_key_mismatch(unsigned long e) {
    return ERR_GET_LIB(e) == ERR_LIB_X509 && (ERR_GET_REASON(e) == X509_R_KEY_VALUES_MISMATCH ||
                                              ERR_GET_REASON(e) == X509_R_KEY_TYPE_MISMATCH);
}

static int tls_ctx_certificate(SSL_CTX *ctx, const struct fg_cert *cert, char *err, size_t errlen) {
    bool key_ok;

    if (SSL_CTX_use_certificate_chain_file(ctx, cert->cert_file) != 1)
        return tls_err(err, errlen, cert->cert_file, "cannot load certificate chain");
    key_ok = SSL_CTX_use_PrivateKey_file(ctx, cert->key_file, SSL_FILETYPE_PEM) == 1;
    if (!key_ok && !tls_key_mismatch(ERR_peek_last_error()))
        return tls_err(err, errlen, cert->key_file, "cannot load private key");
    if (!key_ok || SSL_CTX_check_private_key(ctx) != 1) {
        ERR_clear_error();
        snprintf(err, errlen, "%s: private key does not match certificate", cert->cert_file);
        return -1;
    }
    return 0;
}

static SSL_CTX *tls_ctx_new(struct tls_ctxset *set, const struct fg_tls *tls,
                            const struct fg_cert *cert, char *err, size_t errlen) {
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());

    if (ctx == NULL) {
        tls_err(err, errlen, "tls", "cannot create context");
        return NULL;
    }
    SSL_CTX_set_app_data(ctx, set);
    /* RELEASE_BUFFERS: an idle keep-alive connection holds no 34 KB buffers.
     * MOVING_WRITE_BUFFER: a write retried after WANT_WRITE may start at
     * another address (io.c gathers up to a record from its buffer). */
    SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS | SSL_MODE_ENABLE_PARTIAL_WRITE |
                              SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    /* Read-ahead: a record is one read(2), not a header read and a body
     * read. io.c drains what OpenSSL holds (SSL_has_pending), the bytes
     * that came with the handshake included. */
    SSL_CTX_set_read_ahead(ctx, 1);
    SSL_CTX_set_alpn_select_cb(ctx, tls_alpn_cb, set);
    if (tls_ctx_protocol(ctx, tls, err, errlen) != 0 ||
        tls_ctx_certificate(ctx, cert, err, errlen) != 0)
        goto fail;
    if (tls_ctx_sessions(ctx, tls) != 0) {
        tls_err(err, errlen, "tls", "cannot configure session tickets");
        goto fail;
    }
    return ctx;
fail:
    SSL_CTX_free(ctx);
    return NULL;
}

/* Frees everything but ctxs[0], whose destruction is what calls this. */
static void tls_set_destroy(struct tls_ctxset *set) {
    for (size_t i = 1; i < set->nctxs; i++)
        SSL_CTX_free(set->ctxs[i]);
    for (size_t i = 0; i < set->nnames; i++)
        free(set->names[i].name);
    free(set->names);
    free(set->ctxs);
    tls_ticket_keys_free(set->keys);
    free(set);
}

/* Prefix ERR with the configuration file and the certificate entry's line,
 * so `flowgate -t` names the place to fix (FILE:LINE: message). */
static void tls_err_at(const char *path, int line, char *err, size_t errlen)
{
    char *msg = strdup(err);

    if (msg == NULL || path == NULL)
        goto out;
    snprintf(err, errlen, "%s:%d: %s", path, line, msg);
out:
    free(msg);
}

static int tls_build_contexts(struct tls_ctxset *set, const struct fg_config *cfg, char *err,
                              size_t errlen) {
    const struct fg_tls *tls = &cfg->tls;

    for (size_t i = 0; i < tls->ncerts; i++) {
        SSL_CTX *ctx = tls_ctx_new(set, tls, &tls->certs[i], err, errlen);

        if (ctx == NULL) {
            tls_err_at(cfg->path, tls->certs[i].line, err, errlen);
            return -1;
        }
        set->ctxs[set->nctxs++] = ctx;
        if (tls_sni_collect(set, SSL_CTX_get0_certificate(ctx), i) != 0) {
            snprintf(err, errlen, "%s: out of memory", tls->certs[i].cert_file);
            return -1;
        }
    }
    SSL_CTX_set_tlsext_servername_callback(set->ctxs[0], tls_servername_cb);
    SSL_CTX_set_tlsext_servername_arg(set->ctxs[0], set);
    return 0;
}

struct tls_ctxset *tls_build(const struct fg_config *cfg, const struct tls_ctxset *prev, char *err,
                             size_t errlen) {
    const struct fg_tls *tls = &cfg->tls;
    struct tls_ctxset *set;

    pthread_once(&tls_owner_once, tls_owner_init);
    if (tls_owner_index < 0 || tls->ncerts == 0) {
        snprintf(err, errlen, "tls: %s", tls->ncerts == 0 ? "no certificate" : "OpenSSL init");
        return NULL;
    }
    set = calloc(1, sizeof(*set));
    if (set == NULL || (set->ctxs = calloc(tls->ncerts, sizeof(*set->ctxs))) == NULL)
        goto oom;
    if (tls->session_tickets && prev != NULL && prev->keys != NULL) {
        /* A reload keeps the keys: tickets issued before it still resume. */
        set->keys = prev->keys;
        __atomic_add_fetch(&set->keys->refs, 1, __ATOMIC_RELAXED);
    } else if (tls->session_tickets && (set->keys = tls_ticket_keys_new()) == NULL) {
        goto oom;
    }
    set->h2 = cfg->http2.enabled;
    if (tls_build_contexts(set, cfg, err, errlen) != 0)
        goto fail;
    SSL_CTX_set_ex_data(set->ctxs[0], tls_owner_index, set);
    return set;
oom:
    snprintf(err, errlen, "tls: out of memory");
fail:
    if (set != NULL) {
        SSL_CTX_free(set->nctxs > 0 ? set->ctxs[0] : NULL);
        tls_set_destroy(set);
    }
    return NULL;
}

void tls_free(struct tls_ctxset *set) {
    if (set != NULL)
        SSL_CTX_free(set->ctxs[0]); /* the set goes with the last reference */
}

SSL *tls_new_ssl(struct tls_ctxset *set) { return SSL_new(set->ctxs[0]); }

struct tls_ctxset *tls_ref(struct tls_ctxset *set) {
    if (set != NULL)
        SSL_CTX_up_ref(set->ctxs[0]);
    return set;
}

size_t tls_ncerts(const struct tls_ctxset *set) { return set ? set->nctxs : 0; }

time_t tls_cert_not_after(const struct tls_ctxset *set, size_t i) {
    X509 *x = i < set->nctxs ? SSL_CTX_get0_certificate(set->ctxs[i]) : NULL;
    const ASN1_TIME *t = x ? X509_get0_notAfter(x) : NULL;
    struct tm tm;

    if (t == NULL || ASN1_TIME_to_tm(t, &tm) != 1)
        return 0;
    return timegm(&tm);
}

const char *tls_version_str(const SSL *ssl) { return SSL_get_version(ssl); }
