/*
 * test_tls.c - tls.c against real OpenSSL clients, handshaking in memory
 * through BIO pairs, with certificates made by certs/gen-dev-certs.sh.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "tls.h"

static char certdir[256];

struct pair {
    SSL *client;
    SSL *server;
    unsigned long server_reason; /* OpenSSL reason of the server's failure, 0 if none */
};

static char *certpath(const char *name) {
    static char paths[8][300];
    static int next;
    char *p = paths[next++ % 8];

    snprintf(p, sizeof(paths[0]), "%s/%s", certdir, name);
    return p;
}

static int setup_certs(void **state) {
    const char *script = getenv("FG_CERT_SCRIPT");
    char cmd[600];

    snprintf(certdir, sizeof(certdir), "%s/fg-test-tls-XXXXXX",
             getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
    if (mkdtemp(certdir) == NULL)
        return -1;
    snprintf(cmd, sizeof(cmd), "sh %s %s/dev >/dev/null",
             script ? script : "certs/gen-dev-certs.sh", certdir);
    if (system(cmd) != 0)
        return -1;
    snprintf(certdir + strlen(certdir), sizeof(certdir) - strlen(certdir), "/dev");
    return 0;
}

static int teardown_certs(void **state) {
    char cmd[600];
    char *slash = strrchr(certdir, '/');

    *slash = '\0'; /* back to the mkdtemp directory */
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", certdir);
    return system(cmd) == 0 ? 0 : -1;
}

/* A config with server (default) then other, unless told otherwise. */
static void config_init(struct fg_config *cfg, struct fg_cert certs[2]) {
    memset(cfg, 0, sizeof(*cfg));
    certs[0].cert_file = certpath("server.crt");
    certs[0].key_file = certpath("server.key");
    certs[1].cert_file = certpath("other.crt");
    certs[1].key_file = certpath("other.key");
    cfg->tls.certs = certs;
    cfg->tls.ncerts = 2;
    cfg->tls.min_version = TLS1_2_VERSION;
    cfg->tls.ciphers = "";
    cfg->tls.session_tickets = true;
}

static struct tls_ctxset *build_ok(const struct fg_config *cfg) {
    char err[512] = "";
    struct tls_ctxset *set = tls_build(cfg, NULL, err, sizeof(err));

    if (set == NULL)
        fail_msg("tls_build: %s", err);
    return set;
}

/* A verifying client that trusts the dev CA, limited to [MINV, MAXV]. */
static SSL_CTX *client_ctx(int minv, int maxv) {
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());

    assert_non_null(ctx);
    assert_int_equal(SSL_CTX_load_verify_locations(ctx, certpath("ca.crt"), NULL), 1);
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    SSL_CTX_set_min_proto_version(ctx, minv);
    SSL_CTX_set_max_proto_version(ctx, maxv);
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL);
    return ctx;
}

static void pair_init(struct pair *p, struct tls_ctxset *set, SSL_CTX *cctx, const char *sni) {
    BIO *cbio, *sbio;

    memset(p, 0, sizeof(*p));
    p->server = tls_new_ssl(set);
    p->client = SSL_new(cctx);
    assert_non_null(p->server);
    assert_non_null(p->client);
    assert_int_equal(BIO_new_bio_pair(&cbio, 0, &sbio, 0), 1);
    SSL_set_bio(p->client, cbio, cbio);
    SSL_set_bio(p->server, sbio, sbio);
    SSL_set_connect_state(p->client);
    SSL_set_accept_state(p->server);
    if (sni != NULL)
        SSL_set_tlsext_host_name(p->client, sni);
}

/* The client closes cleanly first: OpenSSL marks the session of an SSL freed
 * without close_notify as not resumable. */
static void pair_free(struct pair *p) {
    if (SSL_is_init_finished(p->client))
        SSL_shutdown(p->client);
    SSL_free(p->client);
    SSL_free(p->server);
    ERR_clear_error();
}

static int step_failed(SSL *ssl, int rc) {
    int e = SSL_get_error(ssl, rc);

    return rc != 1 && e != SSL_ERROR_WANT_READ && e != SSL_ERROR_WANT_WRITE;
}

/* Drives both ends until both finish (0) or either fails (-1). */
static int pair_handshake(struct pair *p) {
    for (int i = 0; i < 32; i++) {
        int c = SSL_do_handshake(p->client);

        if (step_failed(p->client, c))
            return -1;
        ERR_clear_error();
        int s = SSL_do_handshake(p->server);
        if (step_failed(p->server, s)) {
            p->server_reason = ERR_GET_REASON(ERR_peek_error());
            return -1;
        }
        if (c == 1 && s == 1)
            return 0;
    }
    return -1;
}

/* Server writes a byte, client reads it: TLS 1.3 tickets arrive after the
 * handshake and are processed on the client's first read. */
static void pair_exchange(struct pair *p) {
    char c = 0;

    assert_int_equal(SSL_write(p->server, "x", 1), 1);
    assert_int_equal(SSL_read(p->client, &c, 1), 1);
    assert_int_equal(c, 'x');
}

static void assert_peer_cn(SSL *client, const char *cn) {
    X509 *peer = SSL_get0_peer_certificate(client);
    char buf[256] = "";

    assert_non_null(peer);
    X509_NAME_get_text_by_NID(X509_get_subject_name(peer), NID_commonName, buf, sizeof(buf));
    assert_string_equal(buf, cn);
    assert_int_equal(SSL_get_verify_result(client), X509_V_OK);
}

/* ---- build --------------------------------------------------------------- */

static void test_build_two_certificates(void **state) {
    struct fg_config cfg;
    struct fg_cert certs[2];

    config_init(&cfg, certs);
    tls_free(build_ok(&cfg));
}

static void test_build_mismatched_key(void **state) {
    struct fg_config cfg;
    struct fg_cert certs[2];
    char err[512] = "";

    config_init(&cfg, certs);
    certs[1].key_file = certpath("server.key");
    assert_null(tls_build(&cfg, NULL, err, sizeof(err)));
    assert_non_null(strstr(err, "other.crt: private key does not match certificate"));
}

static void test_build_missing_file(void **state) {
    struct fg_config cfg;
    struct fg_cert certs[2];
    char err[512] = "";

    config_init(&cfg, certs);
    certs[0].cert_file = certpath("absent.crt");
    assert_null(tls_build(&cfg, NULL, err, sizeof(err)));
    assert_non_null(strstr(err, "absent.crt: cannot load certificate chain"));
}

static void test_build_bad_ciphers(void **state) {
    struct fg_config cfg;
    struct fg_cert certs[2];
    char err[512] = "";

    config_init(&cfg, certs);
    cfg.tls.ciphers = "NOT-A-CIPHER:ALSO-NOT";
    assert_null(tls_build(&cfg, NULL, err, sizeof(err)));
    assert_non_null(strstr(err, "ciphers"));
}

/* The floor removes a list made only of broken suites: nothing is left. */
static void test_build_ciphers_floor(void **state) {
    struct fg_config cfg;
    struct fg_cert certs[2];
    char err[512] = "";

    config_init(&cfg, certs);
    cfg.tls.ciphers = "aNULL:eNULL";
    assert_null(tls_build(&cfg, NULL, err, sizeof(err)));
    assert_non_null(strstr(err, "ciphers"));
}

/* ---- SNI ------------------------------------------------------------------ */

static void sni_case(const char *sni, const char *expect_cn) {
    struct fg_config cfg;
    struct fg_cert certs[2];
    struct tls_ctxset *set;
    SSL_CTX *cctx = client_ctx(TLS1_2_VERSION, 0);
    struct pair p;

    config_init(&cfg, certs);
    set = build_ok(&cfg);
    pair_init(&p, set, cctx, sni);
    assert_int_equal(pair_handshake(&p), 0);
    assert_peer_cn(p.client, expect_cn);
    pair_free(&p);
    tls_free(set);
    SSL_CTX_free(cctx);
}

static void test_sni_exact(void **state) {
    sni_case("other.localhost", "other.localhost");
    sni_case("OTHER.Localhost", "other.localhost");
}

static void test_sni_wildcard(void **state) { sni_case("x.preview.localhost", "localhost"); }

static void test_sni_unknown_keeps_default(void **state) {
    sni_case("nobody.example", "localhost");
    sni_case("a.b.preview.localhost", "localhost"); /* a wildcard covers one label only */
    sni_case(NULL, "localhost");
}

/* The other certificate first: the wildcard name must still switch back. */
static void test_sni_wildcard_non_default(void **state) {
    struct fg_config cfg;
    struct fg_cert certs[2], swapped[2];
    struct tls_ctxset *set;
    SSL_CTX *cctx = client_ctx(TLS1_2_VERSION, 0);
    struct pair p;

    config_init(&cfg, certs);
    swapped[0] = certs[1];
    swapped[1] = certs[0];
    cfg.tls.certs = swapped;
    set = build_ok(&cfg);
    pair_init(&p, set, cctx, "mvp-a.preview.localhost");
    assert_int_equal(pair_handshake(&p), 0);
    assert_peer_cn(p.client, "localhost");
    pair_free(&p);
    tls_free(set);
    SSL_CTX_free(cctx);
}

/* ---- versions, ciphers, ALPN, renegotiation ------------------------------ */

/* Returns the handshake result of a client limited to [MINV, MAXV] and
 * CIPHERS (NULL: default) against a config with MIN_VERSION. */
static int try_client(int min_version, int minv, int maxv, const char *ciphers,
                      unsigned long *reason) {
    struct fg_config cfg;
    struct fg_cert certs[2];
    struct tls_ctxset *set;
    SSL_CTX *cctx = client_ctx(minv, maxv);
    struct pair p;
    int rc;

    config_init(&cfg, certs);
    cfg.tls.min_version = min_version;
    set = build_ok(&cfg);
    if (ciphers != NULL)
        assert_int_equal(SSL_CTX_set_cipher_list(cctx, ciphers), 1);
    pair_init(&p, set, cctx, "localhost");
    rc = pair_handshake(&p);
    *reason = p.server_reason;
    if (rc == 0)
        pair_exchange(&p);
    pair_free(&p);
    tls_free(set);
    SSL_CTX_free(cctx);
    return rc;
}

static void test_tls11_refused(void **state) {
    unsigned long reason = 0;

    /* SECLEVEL=0 so that the client itself is willing to send TLS 1.1. */
    assert_int_equal(
        try_client(TLS1_2_VERSION, TLS1_1_VERSION, TLS1_1_VERSION, "DEFAULT:@SECLEVEL=0", &reason),
        -1);
    assert_int_equal(reason, SSL_R_UNSUPPORTED_PROTOCOL);
    assert_int_equal(try_client(TLS1_2_VERSION, TLS1_2_VERSION, TLS1_2_VERSION, NULL, &reason), 0);
}

/* An unset min_version (0, "any" to OpenSSL) still means TLS 1.2. */
static void test_unset_min_version_is_tls12(void **state) {
    unsigned long reason = 0;

    assert_int_equal(try_client(0, TLS1_1_VERSION, TLS1_1_VERSION, "DEFAULT:@SECLEVEL=0", &reason),
                     -1);
    assert_int_equal(reason, SSL_R_UNSUPPORTED_PROTOCOL);
}

static void test_tls13_min_refuses_tls12(void **state) {
    unsigned long reason = 0;

    assert_int_equal(try_client(TLS1_3_VERSION, TLS1_2_VERSION, TLS1_2_VERSION, NULL, &reason), -1);
    assert_int_equal(reason, SSL_R_UNSUPPORTED_PROTOCOL);
    assert_int_equal(try_client(TLS1_3_VERSION, TLS1_2_VERSION, 0, NULL, &reason), 0);
}

/* TLS 1.2 without forward secrecy or AEAD is refused; ECDHE + GCM works. */
static void test_tls12_weak_ciphers_refused(void **state) {
    static const char *weak[] = {
        "ECDHE-ECDSA-AES128-SHA",    /* CBC */
        "ECDHE-ECDSA-AES256-SHA384", /* CBC */
        "AES128-GCM-SHA256",         /* RSA key exchange */
        "DHE-RSA-AES128-GCM-SHA256", /* finite-field DH */
    };
    unsigned long reason = 0;

    for (size_t i = 0; i < sizeof(weak) / sizeof(weak[0]); i++)
        assert_int_equal(
            try_client(TLS1_2_VERSION, TLS1_2_VERSION, TLS1_2_VERSION, weak[i], &reason), -1);
    assert_int_equal(try_client(TLS1_2_VERSION, TLS1_2_VERSION, TLS1_2_VERSION,
                                "ECDHE-ECDSA-AES128-GCM-SHA256", &reason),
                     0);
}

static int alpn_case(const unsigned char *protos, unsigned len, bool h2, const char *expect) {
    struct fg_config cfg;
    struct fg_cert certs[2];
    struct tls_ctxset *set;
    SSL_CTX *cctx = client_ctx(TLS1_2_VERSION, 0);
    struct pair p;
    const unsigned char *sel = NULL;
    unsigned sel_len = 0;
    int rc;

    config_init(&cfg, certs);
    cfg.http2.enabled = h2;
    set = build_ok(&cfg);
    pair_init(&p, set, cctx, "localhost");
    assert_int_equal(SSL_set_alpn_protos(p.client, protos, len), 0);
    rc = pair_handshake(&p);
    if (rc == 0) {
        SSL_get0_alpn_selected(p.client, &sel, &sel_len);
        assert_int_equal(sel_len, strlen(expect));
        if (sel_len > 0)
            assert_memory_equal(sel, expect, sel_len);
    }
    pair_free(&p);
    tls_free(set);
    SSL_CTX_free(cctx);
    return rc;
}

static void test_alpn_http11(void **state) {
    static const unsigned char h2_h1[] = "\x02h2\x08http/1.1";
    static const unsigned char h10_h1[] = "\x08http/1.0\x08http/1.1";
    static const unsigned char h1[] = "\x08http/1.1";

    assert_int_equal(alpn_case(h2_h1, sizeof(h2_h1) - 1, false, "http/1.1"), 0);
    assert_int_equal(alpn_case(h10_h1, sizeof(h10_h1) - 1, false, "http/1.1"), 0);
    assert_int_equal(alpn_case(h1, sizeof(h1) - 1, false, "http/1.1"), 0);
}

/* http2.enabled: "h2" first, whatever the client's order (RFC 7301 3.2). */
static void test_alpn_h2(void **state) {
    static const unsigned char h2_h1[] = "\x02h2\x08http/1.1";
    static const unsigned char h1_h2[] = "\x08http/1.1\x02h2";
    static const unsigned char h1[] = "\x08http/1.1";
    static const unsigned char h2[] = "\x02h2";

    assert_int_equal(alpn_case(h2_h1, sizeof(h2_h1) - 1, true, "h2"), 0);
    assert_int_equal(alpn_case(h1_h2, sizeof(h1_h2) - 1, true, "h2"), 0);
    assert_int_equal(alpn_case(h2, sizeof(h2) - 1, true, "h2"), 0);
    assert_int_equal(alpn_case(h1, sizeof(h1) - 1, true, "http/1.1"), 0);
}

/* A list with nothing flowgate speaks is not an error: no ALPN is selected
 * and the handshake completes (the connection then speaks HTTP/1.1). */
static void test_alpn_no_overlap(void **state) {
    static const unsigned char h10[] = "\x08http/1.0";
    static const unsigned char h2[] = "\x02h2";
    static const unsigned char other[] = "\x06spdy/3\x03" "foo";

    assert_int_equal(alpn_case(h10, sizeof(h10) - 1, true, ""), 0);
    assert_int_equal(alpn_case(h2, sizeof(h2) - 1, false, ""), 0);
    assert_int_equal(alpn_case(other, sizeof(other) - 1, true, ""), 0);
}

/* A client-initiated renegotiation never completes. */
static void test_no_renegotiation(void **state) {
    struct fg_config cfg;
    struct fg_cert certs[2];
    struct tls_ctxset *set;
    SSL_CTX *cctx = client_ctx(TLS1_2_VERSION, TLS1_2_VERSION);
    struct pair p;
    int rc = 0;
    char c;

    config_init(&cfg, certs);
    set = build_ok(&cfg);
    pair_init(&p, set, cctx, "localhost");
    assert_int_equal(pair_handshake(&p), 0);
    assert_int_equal(SSL_get_secure_renegotiation_support(p.client), 1);
    assert_int_equal(SSL_renegotiate(p.client), 1);
    for (int i = 0; i < 16 && rc != 1; i++) {
        rc = SSL_do_handshake(p.client);
        if (step_failed(p.client, rc))
            break;
        SSL_read(p.server, &c, 1); /* the server sees the ClientHello here */
    }
    assert_int_not_equal(rc, 1);
    pair_free(&p);
    tls_free(set);
    SSL_CTX_free(cctx);
}

/* ---- session resumption --------------------------------------------------- */

/* One handshake offering SESSION (may be NULL). Returns whether the server
 * resumed; *NEXT receives the client's session afterwards. */
static int resume_once(struct tls_ctxset *set, SSL_CTX *cctx, const char *sni, SSL_SESSION *session,
                       SSL_SESSION **next) {
    struct pair p;
    int reused;

    pair_init(&p, set, cctx, sni);
    if (session != NULL)
        assert_int_equal(SSL_set_session(p.client, session), 1);
    assert_int_equal(pair_handshake(&p), 0);
    pair_exchange(&p);
    reused = SSL_session_reused(p.server);
    assert_int_equal(reused, SSL_session_reused(p.client));
    if (next != NULL)
        *next = SSL_get1_session(p.client);
    pair_free(&p);
    return reused;
}

static void resumption_case(int version, bool tickets, const char *sni) {
    struct fg_config cfg;
    struct fg_cert certs[2];
    struct tls_ctxset *set;
    SSL_CTX *cctx = client_ctx(version, version);
    SSL_SESSION *s1 = NULL;

    config_init(&cfg, certs);
    cfg.tls.session_tickets = tickets;
    set = build_ok(&cfg);
    assert_int_equal(resume_once(set, cctx, sni, NULL, &s1), 0);
    assert_non_null(s1);
    assert_int_equal(resume_once(set, cctx, sni, s1, NULL), tickets ? 1 : 0);
    SSL_SESSION_free(s1);
    tls_free(set);
    SSL_CTX_free(cctx);
}

static void test_resume_tickets(void **state) {
    resumption_case(TLS1_2_VERSION, true, "localhost");
    resumption_case(TLS1_3_VERSION, true, "localhost");
    /* After an SNI switch to the second context. */
    resumption_case(TLS1_2_VERSION, true, "other.localhost");
    resumption_case(TLS1_3_VERSION, true, "other.localhost");
}

static int tickets_seen;

static int count_ticket(SSL *ssl, SSL_SESSION *session) {
    tickets_seen++;
    return 0; /* not kept: OpenSSL frees it */
}

/* TLS 1.3 issues one ticket per handshake (each costs about a sixth of a
 * handshake); OpenSSL's default would be two. */
static void test_one_ticket_per_tls13_handshake(void **state) {
    struct fg_config cfg;
    struct fg_cert certs[2];
    struct tls_ctxset *set;
    SSL_CTX *cctx = client_ctx(TLS1_3_VERSION, TLS1_3_VERSION);
    struct pair p;

    config_init(&cfg, certs);
    set = build_ok(&cfg);
    SSL_CTX_set_session_cache_mode(cctx, SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL_STORE);
    SSL_CTX_sess_set_new_cb(cctx, count_ticket);
    tickets_seen = 0;
    pair_init(&p, set, cctx, "localhost");
    assert_int_equal(pair_handshake(&p), 0);
    pair_exchange(&p);
    assert_int_equal(tickets_seen, 1);
    pair_free(&p);
    tls_free(set);
    SSL_CTX_free(cctx);
}

static void test_no_resume_without_tickets(void **state) {
    resumption_case(TLS1_2_VERSION, false, "localhost");
    resumption_case(TLS1_3_VERSION, false, "localhost");
}

/* A ticket outlives one rotation (previous key) but not two. A ticket from
 * another set (another process, or before a reload) never resumes. */
static void rotation_case(int version) {
    struct fg_config cfg;
    struct fg_cert certs[2];
    struct tls_ctxset *set, *other;
    SSL_CTX *cctx = client_ctx(version, version);
    SSL_SESSION *s1 = NULL;

    config_init(&cfg, certs);
    set = build_ok(&cfg);
    other = build_ok(&cfg);
    assert_int_equal(resume_once(set, cctx, "localhost", NULL, &s1), 0);
    assert_int_equal(resume_once(other, cctx, "localhost", s1, NULL), 0);
    tls_rotate_tickets(set); /* not due: nothing changes */
    tls_rotate_tickets_now(set);
    assert_int_equal(resume_once(set, cctx, "localhost", s1, NULL), 1);
    tls_rotate_tickets_now(set);
    assert_int_equal(resume_once(set, cctx, "localhost", s1, NULL), 0);
    SSL_SESSION_free(s1);
    tls_free(other);
    tls_free(set);
    SSL_CTX_free(cctx);
}

static void test_ticket_rotation(void **state) {
    rotation_case(TLS1_2_VERSION);
    rotation_case(TLS1_3_VERSION);
}

/* A connection made before tls_free keeps working: the set lives on. */
static void test_free_with_live_connection(void **state) {
    struct fg_config cfg;
    struct fg_cert certs[2];
    struct tls_ctxset *set;
    SSL_CTX *cctx = client_ctx(TLS1_2_VERSION, 0);
    struct pair p;

    config_init(&cfg, certs);
    set = build_ok(&cfg);
    pair_init(&p, set, cctx, "other.localhost");
    tls_free(set);
    assert_int_equal(pair_handshake(&p), 0);
    assert_peer_cn(p.client, "other.localhost");
    pair_exchange(&p);
    assert_string_equal(tls_version_str(p.server), "TLSv1.3");
    pair_free(&p);
    SSL_CTX_free(cctx);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_build_two_certificates),
        cmocka_unit_test(test_build_mismatched_key),
        cmocka_unit_test(test_build_missing_file),
        cmocka_unit_test(test_build_bad_ciphers),
        cmocka_unit_test(test_build_ciphers_floor),
        cmocka_unit_test(test_sni_exact),
        cmocka_unit_test(test_sni_wildcard),
        cmocka_unit_test(test_sni_unknown_keeps_default),
        cmocka_unit_test(test_sni_wildcard_non_default),
        cmocka_unit_test(test_tls11_refused),
        cmocka_unit_test(test_unset_min_version_is_tls12),
        cmocka_unit_test(test_tls13_min_refuses_tls12),
        cmocka_unit_test(test_tls12_weak_ciphers_refused),
        cmocka_unit_test(test_alpn_http11),
        cmocka_unit_test(test_alpn_h2),
        cmocka_unit_test(test_alpn_no_overlap),
        cmocka_unit_test(test_no_renegotiation),
        cmocka_unit_test(test_resume_tickets),
        cmocka_unit_test(test_no_resume_without_tickets),
        cmocka_unit_test(test_one_ticket_per_tls13_handshake),
        cmocka_unit_test(test_ticket_rotation),
        cmocka_unit_test(test_free_with_live_connection),
    };

    return cmocka_run_group_tests(tests, setup_certs, teardown_certs);
}
