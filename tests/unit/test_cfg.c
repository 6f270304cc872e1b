/*
 * test_cfg.c - configuration loading: every derived field of a full file,
 * the defaults, and one test per class of error with its FILE:LINE message.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmocka.h>
#include <openssl/tls1.h>

#include "cfg.h"

/* 40 bytes: long enough for HS256, too short for HS384. */
#define SECRET40 "0123456789abcdef0123456789abcdef01234567"
#define SECRET64 SECRET40 "0123456789abcdef01234567"

static char tmpdir[64];
static char cert_path[128];
static char key_path[128];
static char secret_path[128];
static char hosts_path[128];
static char err[8192];

#define BIT(m) (UINT64_C(1) << (m))

static void write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");

    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

static int setup(void **state)
{
    strcpy(tmpdir, "/tmp/test_cfg.XXXXXX");
    if (mkdtemp(tmpdir) == NULL)
        return -1;
    snprintf(cert_path, sizeof(cert_path), "%s/server.crt", tmpdir);
    snprintf(key_path, sizeof(key_path), "%s/server.key", tmpdir);
    snprintf(secret_path, sizeof(secret_path), "%s/jwt.secret", tmpdir);
    snprintf(hosts_path, sizeof(hosts_path), "%s/hosts", tmpdir);
    write_file(cert_path, "-----BEGIN CERTIFICATE-----\n");
    write_file(key_path, "-----BEGIN PRIVATE KEY-----\n");
    write_file(secret_path, SECRET64 "\n");
    write_file(hosts_path, "127.0.0.1 mvp-demo.svc\n");
    setenv("FG_TEST_JWT", SECRET40, 1);
    setenv("FG_TEST_JWT_SHORT", "tooshort", 1);
    setenv("FG_TEST_REDIS_PW", "redis-pass", 1);
    unsetenv("FG_TEST_UNSET");
    return 0;
}

static int teardown(void **state)
{
    unlink(cert_path);
    unlink(key_path);
    unlink(secret_path);
    unlink(hosts_path);
    rmdir(tmpdir);
    return 0;
}

/* A small valid head every error test builds on: two lines, no https. */
#define HEAD                                                                                       \
    "listen: { https = [ ]; http = [ \"127.0.0.1:8080\" ]; admin = \"\"; };\n"                    \
    "upstreams: { api = { servers = [ \"127.0.0.1:9001\" ]; }; };\n"

/* Load TEXT expecting failure, and require NEEDLE among the messages. */
static void expect_error(const char *text, const char *needle)
{
    struct fg_config *cfg = cfg_load_string(text, "test.conf", err, sizeof(err));

    if (cfg != NULL) {
        cfg_unref(cfg);
        fail_msg("loaded, expected \"%s\"", needle);
    }
    if (strstr(err, needle) == NULL)
        fail_msg("expected \"%s\" in:\n%s", needle, err);
}

static struct fg_config *expect_ok(const char *text)
{
    struct fg_config *cfg = cfg_load_string(text, "test.conf", err, sizeof(err));

    if (cfg == NULL)
        fail_msg("refused:\n%s", err);
    return cfg;
}

/* ---- a full file ------------------------------------------------------- */

static char *full_config(void)
{
    static char buf[8192];

    snprintf(buf, sizeof(buf),
             "workers = 3;\n"
             "shutdown_timeout_ms = 5000;\n"
             "shutdown_delay_ms = 2500;\n"
             "listen: { https = [ \"0.0.0.0:8443\", \"[::1]:9443\" ];\n"
             "          http = [ \"127.0.0.1:8080\" ];\n"
             "          admin = \"127.0.0.1:9901\"; proxy_protocol = true; };\n"
             "tls: { certificates = ( { cert = \"%s\"; key = \"%s\"; } );\n"
             "       min_version = \"TLSv1.3\"; ciphers = \"ECDHE-RSA-AES128-GCM-SHA256\";\n"
             "       session_tickets = false; };\n"
             "redirect: { https_port = 443; status = 301; };\n"
             "headers: { hsts = \"max-age=60\"; frame_options = \"DENY\"; xss_protection = \"\";\n"
             "           csp = \"default-src 'self'\"; server = \"flowgate\"; };\n"
             "limits: { max_header_bytes = 8192; max_headers = 50; max_body_bytes = 5000000000L;\n"
             "          header_timeout_ms = 1000; body_timeout_ms = 2000;\n"
             "          underscores_in_headers = true; keepalive_timeout_ms = 3000; send_timeout_ms = 4000;\n"
             "          max_connections = 77; };\n"
             "jwt: { algorithm = \"HS256\";\n"
             "       keys = ( { kid = \"k1\"; secret_env = \"FG_TEST_JWT\"; },\n"
             "                { kid = \"k2\"; secret_file = \"%s\"; } );\n"
             "       issuer = \"https://issuer\"; audience = \"api\"; leeway_seconds = 5;\n"
             "       require_exp = false; token_type = \"\"; cookie = \"access_token\";\n"
             "       max_token_bytes = 4096; forward_claims = ( (\"X-User-Id\", \"sub\") ); };\n"
             "rate_limit: {\n"
             "  redis: { address = \"unix:/run/redis.sock\"; password_env = \"FG_TEST_REDIS_PW\";\n"
             "           database = 2; timeout_ms = 20; key_prefix = \"fg:\"; };\n"
             "  on_redis_failure = \"deny\"; ietf_headers = true; ipv6_prefix = 56;\n"
             "  trusted_proxies = [ \"10.0.0.0/8\", \"::1\" ];\n"
             "  tiers: { gold = { limit = 7; window = 9; };\n"
             "           anonymous = { limit = 10; window = 30; }; };\n"
             "  endpoints = ( { path = \"/api/auth/login\"; methods = [ \"POST\" ]; limit = 10;\n"
             "                  window = 60; key = \"ip\"; },\n"
             "                { path = \"/api/gen\"; limit = 2; window = 3600;\n"
             "                  key = \"user\"; } );\n"
             "};\n"
             "cors: { origins = [ \"https://App.Example.com\", \"http://localhost:3000\" ];\n"
             "        methods = [ \"GET\", \"POST\" ]; headers = [ \"Authorization\" ];\n"
             "        expose_headers = [ \"X-A\", \"X-B\", \"X-C\" ]; max_age = 60; };\n"
             "upstreams: {\n"
             "  api = { servers = [ \"127.0.0.1:9001\", \"[::1]:9002\" ];\n"
             "          connect_timeout_ms = 100;\n"
             "          read_timeout_ms = 200; keepalive = 8; max_tries = 16;\n"
             "          max_fails = 0; fail_timeout_ms = 500;\n"
             "          health_check = { path = \"/ready?full=1\"; interval_ms = 500;\n"
             "                           timeout_ms = 300; fall = 4; rise = 1; }; };\n"
             "  web = { servers = [ \"127.0.0.1:9003\" ]; };\n"
             "};\n"
             "routes = (\n"
             "  { host = \"\"; path = \"/\"; upstream = \"web\"; auth = \"optional\";\n"
             "    methods = [ \"GET\", \"HEAD\", \"GET\" ]; },\n"
             "  { host = \"\"; path = \"/api/\"; upstream = \"api\"; read_timeout_ms = 90000; },\n"
             "  { host = \"Admin.Example.COM\"; path = \"/api/\"; upstream = \"api\";\n"
             "    auth = \"none\"; rate_limit = false; },\n"
             "  { path = \"/api/auth/\"; upstream = \"api\"; auth = \"none\"; }\n"
             ");\n"
             "previews: { host = \"MVP-{name}.Preview.localhost\";\n"
             "            upstream = \"mvp-{name}.svc:9001\"; strip_credentials = false;\n"
             "            platform_cookies = [ \"sid\" ]; frame_ancestors = \"https://a\";\n"
             "            websocket = false; };\n"
             "resolver: { nameservers = [ \"127.0.0.1\", \"[::1]:5353\" ];\n"
             "            hosts_file = \"%s\"; };\n"
             "log: { access = \"\"; error = \"/var/log/fg.err\"; level = \"debug\"; };\n",
             cert_path, key_path, secret_path, hosts_path);
    return buf;
}

static void test_full_top_listen_tls(void **state)
{
    struct fg_config *cfg = expect_ok(full_config());
    struct sockaddr_in6 *v6;
    struct sockaddr_in *v4;

    assert_int_equal(cfg->refcount, 1);
    assert_string_equal(cfg->path, "test.conf");
    assert_int_equal(cfg->workers, 3);
    assert_int_equal(cfg->shutdown_timeout_ms, 5000);
    assert_int_equal(cfg->shutdown_delay_ms, 2500);
    assert_int_equal(cfg->nhttps, 2);
    v4 = (struct sockaddr_in *)&cfg->https[0].ss;
    assert_int_equal(v4->sin_family, AF_INET);
    assert_int_equal(ntohs(v4->sin_port), 8443);
    assert_int_equal(cfg->https[0].len, sizeof(struct sockaddr_in));
    v6 = (struct sockaddr_in6 *)&cfg->https[1].ss;
    assert_int_equal(v6->sin6_family, AF_INET6);
    assert_int_equal(ntohs(v6->sin6_port), 9443);
    assert_true(IN6_IS_ADDR_LOOPBACK(&v6->sin6_addr));
    assert_string_equal(cfg->https[1].text, "[::1]:9443");
    assert_int_equal(cfg->nhttp, 1);
    assert_non_null(cfg->admin);
    assert_string_equal(cfg->admin->text, "127.0.0.1:9901");
    assert_true(cfg->proxy_protocol);
    assert_int_equal(cfg->tls.ncerts, 1);
    assert_string_equal(cfg->tls.certs[0].cert_file, cert_path);
    assert_string_equal(cfg->tls.certs[0].key_file, key_path);
    assert_int_equal(cfg->tls.min_version, TLS1_3_VERSION);
    assert_string_equal(cfg->tls.ciphers, "ECDHE-RSA-AES128-GCM-SHA256");
    assert_false(cfg->tls.session_tickets);
    assert_int_equal(cfg->redirect.https_port, 443);
    assert_int_equal(cfg->redirect.status, 301);
    cfg_unref(cfg);
}

static void test_full_headers_limits(void **state)
{
    struct fg_config *cfg = expect_ok(full_config());
    const char *https = "Strict-Transport-Security: max-age=60\r\n"
                        "X-Frame-Options: DENY\r\n"
                        "X-Content-Type-Options: nosniff\r\n"
                        "Referrer-Policy: strict-origin-when-cross-origin\r\n"
                        "Content-Security-Policy: default-src 'self'\r\n"
                        "Server: flowgate\r\n";

    assert_string_equal(cfg->headers.block_https, https);
    assert_int_equal(cfg->headers.block_https_len, strlen(https));
    /* the plain block is the same without HSTS */
    assert_string_equal(cfg->headers.block_http, strstr(https, "X-Frame"));
    assert_int_equal(cfg->headers.block_http_len, strlen(strstr(https, "X-Frame")));
    assert_string_equal(cfg->headers.xss_protection, "");
    assert_int_equal(cfg->limits.max_header_bytes, 8192);
    assert_int_equal(cfg->limits.max_headers, 50);
    assert_true(cfg->limits.max_body_bytes == UINT64_C(5000000000));
    assert_int_equal(cfg->limits.header_timeout_ms, 1000);
    assert_int_equal(cfg->limits.body_timeout_ms, 2000);
    assert_true(cfg->limits.underscores_in_headers);
    assert_int_equal(cfg->limits.keepalive_timeout_ms, 3000);
    assert_int_equal(cfg->limits.send_timeout_ms, 4000);
    assert_int_equal(cfg->limits.max_connections, 77);
    cfg_unref(cfg);
}

static void test_full_jwt(void **state)
{
    struct fg_config *cfg = expect_ok(full_config());
    struct fg_jwt *j = &cfg->jwt;

    assert_int_equal(j->algorithm, FG_JWT_HS256);
    assert_int_equal(j->nkeys, 2);
    assert_string_equal(j->keys[0].kid, "k1");
    assert_int_equal(j->keys[0].secret_len, strlen(SECRET40));
    assert_memory_equal(j->keys[0].secret, SECRET40, strlen(SECRET40));
    /* from the file, its trailing newline dropped */
    assert_string_equal(j->keys[1].kid, "k2");
    assert_int_equal(j->keys[1].secret_len, strlen(SECRET64));
    assert_memory_equal(j->keys[1].secret, SECRET64, strlen(SECRET64));
    assert_string_equal(j->issuer, "https://issuer");
    assert_string_equal(j->audience, "api");
    assert_int_equal(j->leeway_seconds, 5);
    assert_false(j->require_exp);
    assert_string_equal(j->token_type, "");
    assert_string_equal(j->type_claim, "type");
    assert_string_equal(j->tier_claim, "tier");
    assert_string_equal(j->cookie, "access_token");
    assert_int_equal(j->max_token_bytes, 4096);
    assert_int_equal(j->nforward_claims, 1);
    assert_string_equal(j->forward_claims[0].header, "X-User-Id");
    assert_int_equal(j->forward_claims[0].header_len, 9);
    assert_string_equal(j->forward_claims[0].claim, "sub");
    cfg_unref(cfg);
}

static void test_full_rate_limit(void **state)
{
    struct fg_config *cfg = expect_ok(full_config());
    struct fg_ratelimit *r = &cfg->rate_limit;
    struct sockaddr_in sin = {.sin_family = AF_INET};

    assert_true(r->enabled);
    assert_string_equal(r->redis.address, "unix:/run/redis.sock");
    assert_string_equal(r->redis.unix_path, "/run/redis.sock");
    assert_null(r->redis.host);
    assert_string_equal(r->redis.password, "redis-pass");
    assert_null(r->redis.username);
    assert_int_equal(r->redis.database, 2);
    assert_int_equal(r->redis.timeout_ms, 20);
    assert_string_equal(r->redis.key_prefix, "fg:");
    assert_int_equal(r->on_redis_failure, FG_REDIS_FAIL_DENY);
    assert_true(r->ietf_headers);
    assert_int_equal(r->ipv6_prefix, 56);
    assert_int_equal(cfg->trusted_proxies.n, 2);
    inet_pton(AF_INET, "10.9.8.7", &sin.sin_addr);
    assert_true(cidr_set_contains(&cfg->trusted_proxies, (struct sockaddr *)&sin));
    /* the standard tiers first, defaults filled in, then the others */
    assert_int_equal(r->ntiers, 4);
    assert_string_equal(r->tiers[0].name, "anonymous");
    assert_int_equal(r->tiers[0].limit, 10);
    assert_int_equal(r->tiers[0].window, 30);
    assert_string_equal(r->tiers[1].name, "authenticated");
    assert_int_equal(r->tiers[1].limit, 1000);
    assert_string_equal(r->tiers[2].name, "premium");
    assert_int_equal(r->tiers[2].limit, 5000);
    assert_string_equal(r->tiers[3].name, "gold");
    assert_int_equal(r->tiers[3].limit, 7);
    assert_int_equal(r->tiers[3].window, 9);
    assert_int_equal(r->nendpoints, 2);
    assert_string_equal(r->endpoints[0].path, "/api/auth/login");
    assert_int_equal(r->endpoints[0].path_len, 15);
    assert_true(r->endpoints[0].methods == BIT(3)); /* POST */
    assert_int_equal(r->endpoints[0].key, FG_RL_KEY_IP);
    assert_true(r->endpoints[1].methods == 0);
    assert_int_equal(r->endpoints[1].window, 3600);
    assert_int_equal(r->endpoints[1].key, FG_RL_KEY_USER);
    cfg_unref(cfg);
}

static void test_full_cors(void **state)
{
    struct fg_config *cfg = expect_ok(full_config());
    struct fg_cors *c = &cfg->cors;

    assert_true(c->enabled);
    assert_int_equal(c->norigins, 2);
    assert_string_equal(c->origins[0], "https://app.example.com");
    assert_string_equal(c->origins[1], "http://localhost:3000");
    assert_false(c->any_origin);
    assert_true(c->credentials);
    assert_true(c->methods == (BIT(1) | BIT(3)));
    assert_int_equal(c->nheaders, 1);
    assert_string_equal(c->headers[0], "Authorization");
    assert_string_equal(c->expose_headers, "X-A, X-B, X-C");
    assert_int_equal(c->max_age, 60);
    cfg_unref(cfg);
}

static void test_full_upstreams_routes(void **state)
{
    struct fg_config *cfg = expect_ok(full_config());
    struct fg_route *r = cfg->routes;

    assert_int_equal(cfg->nupstreams, 2);
    assert_string_equal(cfg->upstreams[0].name, "api");
    assert_int_equal(cfg->upstreams[0].index, 0);
    assert_int_equal(cfg->upstreams[0].nservers, 2);
    assert_int_equal(cfg->upstreams[0].servers[1].ss.ss_family, AF_INET6);
    assert_int_equal(cfg->upstreams[0].connect_timeout_ms, 100);
    assert_int_equal(cfg->upstreams[0].read_timeout_ms, 200);
    assert_int_equal(cfg->upstreams[0].keepalive, 8);
    assert_int_equal(cfg->upstreams[0].max_tries, 16);
    assert_int_equal(cfg->upstreams[0].max_fails, 0);
    assert_int_equal(cfg->upstreams[0].fail_timeout_ms, 500);
    assert_non_null(cfg->upstreams[0].health_check);
    assert_string_equal(cfg->upstreams[0].health_check->path, "/ready?full=1");
    assert_int_equal(cfg->upstreams[0].health_check->interval_ms, 500);
    assert_int_equal(cfg->upstreams[0].health_check->timeout_ms, 300);
    assert_int_equal(cfg->upstreams[0].health_check->fall, 4);
    assert_int_equal(cfg->upstreams[0].health_check->rise, 1);
    assert_non_null(cfg->upstreams[0].health); /* every server starts healthy */
    assert_int_equal(cfg->upstreams[0].health[0].down, 0);
    assert_int_equal(cfg->upstreams[0].health[1].down, 0);
    assert_int_equal(cfg->upstreams[0].health_ndown, 0);
    assert_null(cfg->upstreams[1].health_check); /* absent: no active checks */
    assert_null(cfg->upstreams[1].health);
    assert_string_equal(cfg->upstreams[1].name, "web");
    assert_int_equal(cfg->upstreams[1].index, 1);
    assert_int_equal(cfg->upstreams[1].connect_timeout_ms, 2000);
    assert_int_equal(cfg->upstreams[1].read_timeout_ms, 30000);
    assert_int_equal(cfg->upstreams[1].keepalive, 64);
    assert_int_equal(cfg->upstreams[1].max_tries, 2);
    assert_int_equal(cfg->upstreams[1].max_fails, 3);
    assert_int_equal(cfg->upstreams[1].fail_timeout_ms, 10000);

    /* longest first; at equal length the named host first; file order kept */
    assert_int_equal(cfg->nroutes, 4);
    assert_string_equal(r[0].path, "/api/auth/");
    assert_int_equal(r[0].index, 3);
    assert_string_equal(r[0].host, "");
    assert_int_equal(r[0].auth, FG_AUTH_NONE);
    assert_string_equal(r[1].path, "/api/");
    assert_string_equal(r[1].host, "admin.example.com");
    assert_int_equal(r[1].host_len, 17);
    assert_int_equal(r[1].index, 2);
    assert_false(r[1].rate_limit);
    assert_string_equal(r[2].path, "/api/");
    assert_string_equal(r[2].host, "");
    assert_int_equal(r[2].index, 1);
    assert_int_equal(r[2].auth, FG_AUTH_REQUIRED); /* the default */
    assert_true(r[2].rate_limit);
    assert_true(r[2].methods == 0);
    assert_null(r[2].allow);
    assert_ptr_equal(r[2].upstream, &cfg->upstreams[0]);
    assert_int_equal(r[2].read_timeout_ms, 90000);
    assert_int_equal(r[1].read_timeout_ms, 0); /* the upstream's */
    assert_string_equal(r[3].path, "/");
    assert_int_equal(r[3].path_len, 1);
    assert_int_equal(r[3].index, 0);
    assert_int_equal(r[3].auth, FG_AUTH_OPTIONAL);
    assert_ptr_equal(r[3].upstream, &cfg->upstreams[1]);
    assert_true(r[3].methods == (BIT(1) | BIT(2)));
    assert_string_equal(r[3].allow, "GET, HEAD");
    cfg_unref(cfg);
}

static void test_full_previews_resolver_log(void **state)
{
    struct fg_config *cfg = expect_ok(full_config());
    struct fg_previews *p = &cfg->previews;

    assert_true(p->enabled);
    assert_string_equal(p->host_prefix, "mvp-");
    assert_string_equal(p->host_suffix, ".preview.localhost");
    assert_string_equal(p->upstream_prefix, "mvp-");
    assert_string_equal(p->upstream_suffix, ".svc");
    assert_int_equal(p->upstream_port, 9001);
    assert_int_equal(p->auth, FG_AUTH_NONE);
    assert_false(p->strip_credentials);
    assert_int_equal(p->nplatform_cookies, 1);
    assert_string_equal(p->platform_cookies[0], "sid");
    assert_string_equal(p->frame_ancestors, "https://a");
    assert_false(p->websocket);
    assert_int_equal(cfg->resolver.nnameservers, 2);
    assert_string_equal(cfg->resolver.nameservers[1], "[::1]:5353");
    assert_string_equal(cfg->resolver.hosts_file, hosts_path);
    assert_string_equal(cfg->log.access, "");
    assert_string_equal(cfg->log.error, "/var/log/fg.err");
    assert_int_equal(cfg->log.level, FG_LOG_DEBUG);
    cfg_unref(cfg);
}

/* ---- defaults ---------------------------------------------------------- */

static void test_defaults(void **state)
{
    struct fg_config *cfg = expect_ok("listen: { https = [ ]; };\n");
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);

    assert_int_equal(cfg->workers, cpus > 0 ? (unsigned)cpus : 1);
    assert_int_equal(cfg->shutdown_timeout_ms, 10000);
    assert_int_equal(cfg->shutdown_delay_ms, 0);
    assert_int_equal(cfg->nhttps, 0);
    assert_int_equal(cfg->nhttp, 1);
    assert_string_equal(cfg->http[0].text, "0.0.0.0:8080");
    assert_non_null(cfg->admin);
    assert_string_equal(cfg->admin->text, "127.0.0.1:9901");
    assert_false(cfg->proxy_protocol);
    assert_int_equal(cfg->tls.min_version, TLS1_2_VERSION);
    assert_true(cfg->tls.session_tickets);
    assert_int_equal(cfg->redirect.https_port, 8443);
    assert_int_equal(cfg->redirect.status, 308);
    assert_string_equal(cfg->headers.block_http,
                        "X-Frame-Options: SAMEORIGIN\r\n"
                        "X-Content-Type-Options: nosniff\r\n"
                        "X-XSS-Protection: 1; mode=block\r\n"
                        "Referrer-Policy: strict-origin-when-cross-origin\r\n"
                        "Content-Security-Policy: frame-src 'self' "
                        "https://*.preview.example.com\r\n");
    assert_non_null(strstr(cfg->headers.block_https,
                           "Strict-Transport-Security: max-age=31536000; includeSubDomains\r\n"));
    assert_null(strstr(cfg->headers.block_https, "Server:"));
    assert_int_equal(cfg->limits.max_header_bytes, 16384);
    assert_int_equal(cfg->limits.max_headers, 100);
    assert_true(cfg->limits.max_body_bytes == 10485760);
    assert_int_equal(cfg->limits.keepalive_timeout_ms, 60000);
    assert_int_equal(cfg->limits.send_timeout_ms, 60000);
    assert_int_equal(cfg->limits.max_connections, 10000);
    assert_int_equal(cfg->jwt.nkeys, 0);
    assert_int_equal(cfg->jwt.leeway_seconds, 30);
    assert_false(cfg->rate_limit.enabled);
    assert_false(cfg->cors.enabled);
    assert_false(cfg->previews.enabled);
    assert_int_equal(cfg->nroutes, 0);
    assert_int_equal(cfg->log.level, FG_LOG_INFO);
    assert_string_equal(cfg->log.access, "stdout");
    assert_true(cfg->reload.watch);
    assert_int_equal(cfg->reload.debounce_ms, 1000);
    assert_true(cfg->http2.enabled);
    assert_int_equal(cfg->http2.max_concurrent_streams, 128);
    assert_int_equal(cfg->http2.initial_window_bytes, 65535);
    assert_int_equal(cfg->http2.max_header_list_bytes, 16384);
    assert_int_equal(cfg->http2.max_resets_per_second, 100);
    assert_int_equal(cfg->http2.idle_timeout_ms, 60000);
    /* no certificate, no secret file, no hosts file: only the file itself */
    assert_int_equal(cfg->nwatch_paths, 1);
    assert_string_equal(cfg->watch_paths[0], "test.conf");
    cfg_unref(cfg);
}

static void test_group_defaults(void **state)
{
    struct fg_config *cfg = expect_ok(HEAD "rate_limit: { };\n"
                                           "cors: { };\n"
                                           "jwt: { keys = ( { kid = \"a\"; secret_env = "
                                           "\"FG_TEST_JWT\"; } ); };\n");

    assert_true(cfg->rate_limit.enabled);
    assert_string_equal(cfg->rate_limit.redis.host, "127.0.0.1");
    assert_int_equal(cfg->rate_limit.redis.port, 6379);
    assert_null(cfg->rate_limit.redis.unix_path);
    assert_null(cfg->rate_limit.redis.password);
    assert_int_equal(cfg->rate_limit.redis.timeout_ms, 50);
    assert_string_equal(cfg->rate_limit.redis.key_prefix, "flowgate:");
    assert_int_equal(cfg->rate_limit.on_redis_failure, FG_REDIS_FAIL_LOCAL);
    assert_int_equal(cfg->rate_limit.ipv6_prefix, 64);
    assert_int_equal(cfg->rate_limit.ntiers, 3);
    assert_int_equal(cfg->rate_limit.tiers[0].limit, 100);
    assert_int_equal(cfg->rate_limit.tiers[2].limit, 5000);
    assert_true(cfg->cors.enabled);
    assert_true(cfg->cors.credentials);
    assert_string_equal(cfg->cors.expose_headers,
                        "X-RateLimit-Limit, X-RateLimit-Remaining, X-RateLimit-Reset, "
                        "X-Request-Id");
    assert_int_equal(cfg->cors.nheaders, 3);
    assert_int_equal(cfg->cors.max_age, 600);
    assert_true(cfg->cors.methods == (BIT(0) | BIT(1) | BIT(2) | BIT(3) | BIT(4) | BIT(28)));
    assert_int_equal(cfg->jwt.nkeys, 1);
    assert_int_equal(cfg->jwt.nforward_claims, 2);
    assert_string_equal(cfg->jwt.forward_claims[1].header, "X-User-Tier");
    assert_string_equal(cfg->jwt.forward_claims[1].claim, "tier");
    assert_string_equal(cfg->jwt.token_type, "access");
    assert_null(cfg->admin);
    cfg_unref(cfg);
}

static void test_ref_unref(void **state)
{
    struct fg_config *cfg = expect_ok(HEAD);

    assert_ptr_equal(cfg_ref(cfg), cfg);
    assert_int_equal(cfg->refcount, 2);
    cfg_unref(cfg);
    assert_int_equal(cfg->refcount, 1);
    cfg_unref(cfg); /* freed: ASan reports a leak otherwise */
    cfg_unref(NULL);
}

static void test_reload(void **state)
{
    struct fg_config *cfg = expect_ok(HEAD "reload: { watch = false; debounce_ms = 250; };\n");

    assert_false(cfg->reload.watch);
    assert_int_equal(cfg->reload.debounce_ms, 250);
    cfg_unref(cfg);
    expect_error(HEAD "reload: {\n  interval_ms = 5;\n};\n",
                 "test.conf:4: unknown key 'reload.interval_ms'");
    expect_error(HEAD "reload: { debounce_ms = 5; };\n",
                 "test.conf:3: reload.debounce_ms: must be between 10 and 600000, not 5");
    expect_error(HEAD "reload: { debounce_ms = 600001; };\n", "reload.debounce_ms: must be");
    expect_error(HEAD "reload: { watch = \"yes\"; };\n",
                 "test.conf:3: reload.watch: must be true or false");
}

static void test_http2(void **state)
{
    struct fg_config *cfg =
        expect_ok(HEAD "http2: { enabled = false; max_concurrent_streams = 8;\n"
                       "  initial_window_bytes = 16384;\n"
                       "  max_header_list_bytes = 4096;\n"
                       "  max_resets_per_second = 10; idle_timeout_ms = 500; };\n");

    assert_false(cfg->http2.enabled);
    assert_int_equal(cfg->http2.max_concurrent_streams, 8);
    assert_int_equal(cfg->http2.initial_window_bytes, 16384);
    assert_int_equal(cfg->http2.max_header_list_bytes, 4096);
    assert_int_equal(cfg->http2.max_resets_per_second, 10);
    assert_int_equal(cfg->http2.idle_timeout_ms, 500);
    cfg_unref(cfg);
    expect_error(HEAD "http2: {\n  enable_push = true;\n};\n",
                 "test.conf:4: unknown key 'http2.enable_push'");
    expect_error(HEAD "http2: { max_concurrent_streams = 0; };\n",
                 "test.conf:3: http2.max_concurrent_streams: must be between 1 and 1024, not 0");
    expect_error(HEAD "http2: { initial_window_bytes = 2147483648; };\n",
                 "http2.initial_window_bytes: must be between 1024 and 16777216");
    expect_error(HEAD "http2: { enabled = 1; };\n",
                 "test.conf:3: http2.enabled: must be true or false");
}

/* Every file a reload reads again, each once, secrets from the environment
 * excluded: the list reload.watch hands to the directory watcher. */
static void test_watch_paths(void **state)
{
    struct fg_config *cfg = expect_ok(full_config());
    static char text[1024];

    assert_int_equal(cfg->nwatch_paths, 4);
    assert_string_equal(cfg->watch_paths[0], "test.conf");
    assert_string_equal(cfg->watch_paths[1], cert_path);
    assert_string_equal(cfg->watch_paths[2], key_path);
    assert_string_equal(cfg->watch_paths[3], secret_path); /* k2; k1 is secret_env */
    assert_null(cfg->jwt.keys[0].secret_file);
    assert_string_equal(cfg->jwt.keys[1].secret_file, secret_path);
    cfg_unref(cfg);

    /* a certificate and its key in one PEM file are watched once */
    snprintf(text, sizeof(text),
             HEAD "tls: { certificates = ( { cert = \"%s\"; key = \"%s\"; },\n"
                  "                         { cert = \"%s\"; key = \"%s\"; } ); };\n",
             cert_path, cert_path, key_path, cert_path);
    cfg = expect_ok(text);
    assert_int_equal(cfg->nwatch_paths, 3);
    assert_string_equal(cfg->watch_paths[1], cert_path);
    assert_string_equal(cfg->watch_paths[2], key_path);
    cfg_unref(cfg);
}

/* A file read through @include is part of the configuration: watched too. */
static void test_watch_paths_include(void **state)
{
    char path[160], inc[160], text[400];
    struct fg_config *cfg;

    snprintf(path, sizeof(path), "%s/main.conf", tmpdir);
    snprintf(inc, sizeof(inc), "%s/limits.conf", tmpdir);
    write_file(inc, "limits: { max_headers = 7; };\n");
    snprintf(text, sizeof(text), HEAD "@include \"%s\"\nworkers = 1;\n", inc);
    write_file(path, text);
    cfg = cfg_load(path, err, sizeof(err));
    unlink(path);
    unlink(inc);
    if (cfg == NULL)
        fail_msg("%s", err);
    assert_int_equal(cfg->limits.max_headers, 7);
    assert_int_equal(cfg->nincludes, 1);
    assert_int_equal(cfg->nwatch_paths, 2);
    assert_string_equal(cfg->watch_paths[0], path);
    assert_string_equal(cfg->watch_paths[1], inc);
    cfg_unref(cfg);
}

static void test_method_names(void **state)
{
    assert_int_equal(cfg_method_from_name("DELETE"), 0);
    assert_int_equal(cfg_method_from_name("GET"), 1);
    assert_int_equal(cfg_method_from_name("PATCH"), 28);
    assert_int_equal(cfg_method_from_name("M-SEARCH"), 24);
    assert_int_equal(cfg_method_from_name("get"), -1);
    assert_int_equal(cfg_method_from_name("BREW"), -1);
    assert_int_equal(cfg_method_from_name(""), -1);
}

static void test_load_file(void **state)
{
    char path[160];
    struct fg_config *cfg;

    snprintf(path, sizeof(path), "%s/flowgate.conf", tmpdir);
    write_file(path, HEAD "workers = 2;\n");
    cfg = cfg_load(path, err, sizeof(err));
    if (cfg == NULL)
        fail_msg("%s", err);
    assert_string_equal(cfg->path, path);
    assert_int_equal(cfg->workers, 2);
    cfg_unref(cfg);

    write_file(path, HEAD "\nworkers = \"two\";\n");
    assert_null(cfg_load(path, err, sizeof(err)));
    if (strncmp(err, path, strlen(path)) != 0 ||
        strstr(err, ":4: workers: must be an integer") == NULL)
        fail_msg("%s", err);
    unlink(path);

    assert_null(cfg_load(path, err, sizeof(err)));
    assert_non_null(strstr(err, path));
    assert_non_null(strstr(err, "cannot read"));
}

/* ---- errors, one class each -------------------------------------------- */

static void test_err_unknown_key(void **state)
{
    expect_error(HEAD "wrkers = 2;\n", "test.conf:3: unknown key 'wrkers'\n");
    expect_error("listen: { https = [ ]; htp = [ ]; };\n", "test.conf:1: unknown key 'listen.htp'");
    expect_error(HEAD "routes = (\n  { path = \"/\"; upstream = \"api\"; auth = \"none\";\n"
                      "    bogus = 1; }\n);\n",
                 "test.conf:5: unknown key 'routes[0].bogus'");
}

static void test_err_secret_in_file(void **state)
{
    expect_error(HEAD "jwt: {\n  keys = ( { kid = \"a\"; secret = \"" SECRET40 "\"; } );\n};\n",
                 "test.conf:4: unknown key 'jwt.keys[0].secret'");
    /* the secret's value never appears in a message */
    assert_null(strstr(err, SECRET40));
}

static void test_err_wrong_type(void **state)
{
    expect_error(HEAD "workers = \"4\";\n", "test.conf:3: workers: must be an integer");
    expect_error(HEAD "limits: {\n  underscores_in_headers = 1;\n};\n",
                 "test.conf:4: limits.underscores_in_headers: must be true or false");
    expect_error(HEAD "log = \"stdout\";\n", "test.conf:3: log: must be a group");
    expect_error(HEAD "tls: { ciphers = 5; };\n", "test.conf:3: tls.ciphers: must be a string");
}

static void test_err_range(void **state)
{
    expect_error(HEAD "workers = 5000;\n",
                 "test.conf:3: workers: must be between 0 and 1024, not 5000");
    expect_error(HEAD "shutdown_timeout_ms = 0;\n", "test.conf:3: shutdown_timeout_ms: must be");
    expect_error(HEAD "shutdown_delay_ms = 300001;\n",
                 "test.conf:3: shutdown_delay_ms: must be between 0 and 300000, not 300001");
    expect_error(HEAD "shutdown_delay_ms = -1;\n", "test.conf:3: shutdown_delay_ms: must be");
    expect_error(HEAD "redirect: { https_port = 70000; };\n", "test.conf:3: redirect.https_port");
    expect_error(HEAD "redirect: { status = 303; };\n",
                 "test.conf:3: redirect.status: must be 301, 302, 307 or 308");
    expect_error(HEAD "tls: { min_version = \"TLSv1.1\"; };\n",
                 "test.conf:3: tls.min_version: \"TLSv1.1\" is not one of");
    expect_error(HEAD "log: { level = \"verbose\"; };\n", "test.conf:3: log.level");
    expect_error(HEAD "rate_limit: {\n ipv6_prefix = 129;\n};\n",
                 "test.conf:4: rate_limit.ipv6_prefix");
    expect_error(HEAD "rate_limit: {\n on_redis_failure = \"panic\";\n};\n",
                 "test.conf:4: rate_limit.on_redis_failure");
    expect_error(HEAD "rate_limit: { tiers: {\n premium = { limit = 0; window = 60; }; }; };\n",
                 "test.conf:4: rate_limit.tiers.premium.limit: must be between 1");
    expect_error(HEAD "rate_limit: { endpoints = (\n { path = \"/x\"; limit = 1; window = 1;"
                      " key = \"host\"; } ); };\n",
                 "test.conf:4: rate_limit.endpoints[0].key");
    /* every rate-limit key, a hashed one too, must keep the prefix and fit */
    static char text[1024];
    char prefix[FG_KEY_PREFIX_MAX + 2];
    memset(prefix, 'p', sizeof(prefix) - 1);
    prefix[sizeof(prefix) - 1] = '\0';
    snprintf(text, sizeof(text), HEAD "rate_limit: { redis: {\n key_prefix = \"%s\"; }; };\n",
             prefix);
    expect_error(text,
                 "test.conf:4: rate_limit.redis.key_prefix: must be at most 256 bytes, not 257");
    prefix[FG_KEY_PREFIX_MAX] = '\0';
    snprintf(text, sizeof(text), HEAD "rate_limit: { redis: {\n key_prefix = \"%s\"; }; };\n",
             prefix);
    cfg_unref(expect_ok(text));
}

/* The first line of HEAD, and an upstream whose second line is KEYS. */
#define UPSTREAM_WITH(keys)                                                                        \
    "listen: { https = [ ]; http = [ \"127.0.0.1:8080\" ]; admin = \"\"; };\n"                     \
    "upstreams: { api = { servers = [ \"127.0.0.1:9001\" ];\n" keys " }; };\n"

static void test_err_upstream_failover(void **state)
{
    expect_error(UPSTREAM_WITH("max_tries = 0;"),
                 "test.conf:3: upstreams.api.max_tries: must be between 1 and 16, not 0");
    expect_error(UPSTREAM_WITH("max_tries = 17;"),
                 "test.conf:3: upstreams.api.max_tries: must be between 1 and 16, not 17");
    expect_error(UPSTREAM_WITH("max_fails = -1;"),
                 "test.conf:3: upstreams.api.max_fails: must be between 0 and 1000, not -1");
    expect_error(UPSTREAM_WITH("max_fails = \"3\";"),
                 "test.conf:3: upstreams.api.max_fails: must be an integer");
    expect_error(UPSTREAM_WITH("\n fail_timeout_ms = 0;"),
                 "test.conf:4: upstreams.api.fail_timeout_ms: must be between 1");
    cfg_unref(expect_ok(UPSTREAM_WITH("max_tries = 1; max_fails = 1000; fail_timeout_ms = 1;")));
    expect_error(HEAD "routes = (\n { path = \"/\"; upstream = \"api\"; auth = \"none\";\n"
                      "   read_timeout_ms = 0; }\n);\n",
                 "test.conf:5: routes[0].read_timeout_ms: must be between 1");
}

static void test_err_health_check(void **state)
{
    struct fg_config *cfg = expect_ok(UPSTREAM_WITH("health_check = { };"));
    const struct fg_health_check *hc = cfg->upstreams[0].health_check;

    assert_non_null(hc); /* an empty group: the defaults */
    assert_string_equal(hc->path, "/healthz");
    assert_int_equal(hc->interval_ms, 2000);
    assert_int_equal(hc->timeout_ms, 1000);
    assert_int_equal(hc->fall, 3);
    assert_int_equal(hc->rise, 2);
    cfg_unref(cfg);
    expect_error(UPSTREAM_WITH("health_check = \"/healthz\";"),
                 "test.conf:3: upstreams.api.health_check: must be a group { ... }");
    expect_error(UPSTREAM_WITH("health_check = {\n port = 1; };"),
                 "test.conf:4: unknown key 'upstreams.api.health_check.port'");
    expect_error(UPSTREAM_WITH("health_check = {\n path = \"healthz\"; };"),
                 "test.conf:4: upstreams.api.health_check.path: must start with '/'");
    expect_error(UPSTREAM_WITH("health_check = { path = \"/a b\"; };"),
                 "test.conf:3: upstreams.api.health_check.path: must start with '/'");
    expect_error(UPSTREAM_WITH("health_check = { path = \"/a#b\"; };"),
                 "test.conf:3: upstreams.api.health_check.path: must start with '/'");
    expect_error(UPSTREAM_WITH("health_check = { interval_ms = 9; };"),
                 "test.conf:3: upstreams.api.health_check.interval_ms: must be between 10 and "
                 "3600000, not 9");
    expect_error(UPSTREAM_WITH("health_check = { timeout_ms = 0; };"),
                 "test.conf:3: upstreams.api.health_check.timeout_ms: must be between 1");
    expect_error(UPSTREAM_WITH("health_check = { fall = 0; };"),
                 "test.conf:3: upstreams.api.health_check.fall: must be between 1 and 1000, not 0");
    expect_error(UPSTREAM_WITH("health_check = { rise = 1001; };"),
                 "test.conf:3: upstreams.api.health_check.rise: must be between 1 and 1000, not "
                 "1001");
    expect_error(UPSTREAM_WITH("health_check = { rise = \"2\"; };"),
                 "test.conf:3: upstreams.api.health_check.rise: must be an integer");
    cfg_unref(expect_ok(UPSTREAM_WITH("health_check = { interval_ms = 10; timeout_ms = 3600000;"
                                      " fall = 1000; rise = 1; };")));
}

/* An upstream server may be "name:port": the name held to the host rule
 * (lowercased, one trailing dot dropped), never resolved at load. */
static void test_upstream_server_names(void **state)
{
    struct fg_config *cfg = expect_ok(
        "listen: { https = [ ]; http = [ \"127.0.0.1:8080\" ]; admin = \"\"; };\n"
        "upstreams: { api = { servers = [ \"API.Platform.svc.cluster.local.:8080\",\n"
        "  \"127.0.0.1:9001\", \"no-such-name.invalid:1\" ]; }; };\n");
    const struct fg_upstream *u = &cfg->upstreams[0];

    assert_int_equal(u->nservers, 3);
    assert_int_equal(u->nnames, 2);
    assert_string_equal(u->servers[0].host, "api.platform.svc.cluster.local");
    assert_string_equal(u->servers[0].text, "API.Platform.svc.cluster.local.:8080");
    assert_int_equal(ntohs(((const struct sockaddr_in *)&u->servers[0].ss)->sin_port), 8080);
    assert_null(u->servers[1].host);
    assert_int_equal(u->servers[1].ss.ss_family, AF_INET);
    assert_string_equal(u->servers[2].host, "no-such-name.invalid");
    cfg_unref(cfg);

    static const char *const bad[] = {
        "api",            /* no port */
        "api:0",          /* port out of range */
        "api:65536",      /* ... */
        "api:http",       /* not a number */
        "a_b.local:80",   /* not a host name character */
        "a b:80",         /* ... */
        "user@api:80",    /* userinfo */
        "[api]:80",       /* brackets are for IPv6 */
        ":80",            /* no host */
        "api:80:80",      /* two ports */
    };
    char text[512], want[128];
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        snprintf(text, sizeof(text),
                 "listen: { https = [ ]; http = [ \"127.0.0.1:8080\" ]; admin = \"\"; };\n"
                 "upstreams: { api = {\n servers = [ \"%s\" ]; }; };\n",
                 bad[i]);
        snprintf(want, sizeof(want),
                 "test.conf:3: upstreams.api.servers[0]: bad address \"%s\" (expected IPv4:port "
                 "or [IPv6]:port or name:port)",
                 bad[i]);
        expect_error(text, want);
    }
    /* Listeners still take addresses only. */
    expect_error("listen: { https = [ ];\n  http = [ \"localhost:80\" ]; };\n",
                 "bad address \"localhost:80\" (expected IPv4:port or [IPv6]:port)");
}

static void test_err_address(void **state)
{
    expect_error("listen: { https = [ ];\n  http = [ \"localhost:80\" ]; };\n",
                 "test.conf:2: listen.http[0]: bad address \"localhost:80\"");
    expect_error("listen: { https = [ ]; http = [ \"1.2.3.4\" ]; };\n", "bad address \"1.2.3.4\"");
    expect_error("listen: { https = [ ]; http = [ \"::1:80\" ]; };\n", "bad address \"::1:80\"");
    expect_error("listen: { https = [ ]; http = [ \"1.2.3.4:0\" ]; };\n",
                 "bad address \"1.2.3.4:0\"");
    expect_error("listen: { https = [ ]; http = [ \"127.0.0.1:1\" ];\n admin = \"x\"; };\n",
                 "test.conf:2: listen.admin: bad address \"x\"");
    expect_error(HEAD "rate_limit: { redis: {\n address = \"redis\"; }; };\n",
                 "test.conf:4: rate_limit.redis.address: bad address \"redis\"");
    expect_error(HEAD "rate_limit: {\n trusted_proxies = [ \"10.0.0.0/33\" ]; };\n",
                 "test.conf:4: rate_limit.trusted_proxies[0]: bad network");
    expect_error(HEAD "rate_limit: {\n trusted_proxies = [ \"10.0.0.0/8\",\n"
                      " \"192.168.1.5/24\" ]; };\n",
                 "test.conf:5: rate_limit.trusted_proxies[1]: \"192.168.1.5/24\" has host bits set "
                 "(did you mean \"192.168.1.0/24\"?)");
    expect_error(HEAD "rate_limit: {\n trusted_proxies = [ \"2001:db8::1/64\" ]; };\n",
                 "test.conf:4: rate_limit.trusted_proxies[0]: \"2001:db8::1/64\" has host bits "
                 "set (did you mean \"2001:db8::/64\"?)");
    expect_error("listen: { https = [ ]; http = [ ]; };\n",
                 "test.conf:1: listen: at least one https or http listener is required");
}

static void test_err_route(void **state)
{
    expect_error(HEAD "routes = (\n { path = \"/\"; upstream = \"nope\"; auth = \"none\"; }\n);\n",
                 "test.conf:4: routes[0].upstream: no upstream named \"nope\"");
    expect_error(HEAD "routes = (\n { path = \"api\"; upstream = \"api\"; auth = \"none\"; }\n);\n",
                 "test.conf:4: routes[0].path: must start with '/'");
    expect_error(HEAD "routes = (\n { path = \"/a\"; upstream = \"api\"; auth = \"none\"; },\n"
                      " { host = \"\"; path = \"/a\"; upstream = \"api\"; auth = \"none\"; }\n);\n",
                 "test.conf:5: routes[1]: duplicate route");
    expect_error(HEAD "routes = (\n { path = \"/\"; upstream = \"api\"; auth = \"none\";\n"
                      "   methods = [ \"GET\", \"FETCH\" ]; }\n);\n",
                 "test.conf:5: routes[0].methods[1]: unknown method \"FETCH\"");
    expect_error(HEAD "routes = (\n { path = \"/\"; upstream = \"api\"; auth = \"maybe\"; }\n);\n",
                 "test.conf:4: routes[0].auth: \"maybe\" is not one of");
    /* a route's host is held to the rule of a request's Host: one that no
     * request could carry would never match */
    expect_error(HEAD "routes = (\n { host = \"my_app.example.com\"; path = \"/\";\n"
                      "   upstream = \"api\"; auth = \"none\"; }\n);\n",
                 "test.conf:4: routes[0].host: \"my_app.example.com\" is not a host name");
    expect_error(HEAD "routes = (\n { host = \"a..example.com\"; path = \"/\";\n"
                      "   upstream = \"api\"; auth = \"none\"; }\n);\n",
                 "test.conf:4: routes[0].host: \"a..example.com\" is not a host name");
    expect_error(HEAD "routes = (\n { host = \"example.com:443\"; path = \"/\";\n"
                      "   upstream = \"api\"; auth = \"none\"; }\n);\n",
                 "routes[0].host: \"example.com:443\" is not a host name");
    expect_error(HEAD "routes = (\n { host = \"[::1]\"; path = \"/\";\n"
                      "   upstream = \"api\"; auth = \"none\"; }\n);\n",
                 "routes[0].host: \"[::1]\" is not a host name");
    /* auth other than none without jwt keys cannot verify anything */
    expect_error(HEAD "routes = (\n { path = \"/\"; upstream = \"api\"; }\n);\n",
                 "test.conf:4: routes[0]: auth \"required\" needs a jwt group");
    expect_error(HEAD "routes = (\n { upstream = \"api\"; auth = \"none\"; }\n);\n",
                 "test.conf:4: routes[0]: 'path' is required");
}

static void test_err_secret_missing(void **state)
{
    char text[512];

    expect_error(HEAD "jwt: {\n keys = ( { kid = \"a\";\n"
                      " secret_env = \"FG_TEST_UNSET\"; } );\n};\n",
                 "test.conf:5: jwt.keys[0].secret_env: environment variable FG_TEST_UNSET is "
                 "not set or empty");
    expect_error(HEAD "jwt: {\n keys = ( { kid = \"a\";\n"
                      " secret_file = \"/nonexistent/s\"; } );\n};\n",
                 "test.conf:5: jwt.keys[0].secret_file: cannot read secret file");
    /* a directory (or FIFO, device) is refused before anything reads it */
    snprintf(text, sizeof(text),
             HEAD "jwt: {\n keys = ( { kid = \"a\";\n secret_file = \"%s\"; } );\n};\n", tmpdir);
    expect_error(text, "test.conf:5: jwt.keys[0].secret_file: cannot read secret file");
    assert_non_null(strstr(err, "not a regular file"));
    expect_error(HEAD "jwt: {\n keys = ( { kid = \"a\"; } );\n};\n",
                 "test.conf:4: jwt.keys[0]: exactly one of 'secret_env' or 'secret_file'");
    expect_error(HEAD "rate_limit: { redis: {\n password_env = \"FG_TEST_UNSET\"; }; };\n",
                 "test.conf:4: rate_limit.redis.password_env: environment variable");
}

static void test_err_secret_short(void **state)
{
    expect_error(HEAD "jwt: {\n keys = ( { kid = \"a\";\n"
                      " secret_env = \"FG_TEST_JWT_SHORT\"; } );\n};\n",
                 "test.conf:5: jwt.keys[0].secret_env: secret is 8 bytes; HS256 needs at least 32");
    assert_null(strstr(err, "tooshort"));
    /* 40 bytes are enough for HS256 but not for HS384 */
    expect_error(HEAD "jwt: { algorithm = \"HS384\";\n keys = ( { kid = \"a\";\n"
                      " secret_env = \"FG_TEST_JWT\"; } );\n};\n",
                 "test.conf:5: jwt.keys[0].secret_env: secret is 40 bytes; "
                 "HS384 needs at least 48");
}

static void test_err_cors_star_credentials(void **state)
{
    struct fg_config *cfg;

    expect_error(HEAD "cors: {\n origins = [ \"*\" ];\n credentials = true; };\n",
                 "test.conf:4: cors.origins[0]: \"*\" cannot be used with credentials = true");
    cfg = expect_ok(HEAD "cors: { origins = [ \"*\" ]; credentials = false; };\n");
    assert_true(cfg->cors.any_origin);
    assert_int_equal(cfg->cors.norigins, 0);
    cfg_unref(cfg);
    expect_error(HEAD "cors: {\n origins = [ \"https://a.com/\" ]; };\n",
                 "test.conf:4: cors.origins[0]: \"https://a.com/\" is not an origin");
}

/* Configured origins are held to the rule of the Origins a request may
 * carry (cors_origin_wellformed): one that no request could match is an
 * error, not a dead entry. */
static void test_err_cors_origin_rule(void **state)
{
    static const char *const bad[] = {
        "https://a_b.example.com", "https://a..example.com", "https://a.com:0",
        "https://a.com:99999",     "https://[1.2.3.4]",      "https://a.com:",
    };
    char text[512], want[128];

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        snprintf(text, sizeof(text), HEAD "cors: {\n origins = [ \"%s\" ]; };\n", bad[i]);
        snprintf(want, sizeof(want), "cors.origins[0]: \"%s\" is not an origin", bad[i]);
        expect_error(text, want);
    }
    struct fg_config *cfg = expect_ok(
        HEAD "cors: { origins = [ \"HTTPS://App.Example.com:8443\", \"http://[::1]:3000\" ]; };\n");
    assert_string_equal(cfg->cors.origins[0], "https://app.example.com:8443");
    assert_string_equal(cfg->cors.origins[1], "http://[::1]:3000");
    cfg_unref(cfg);
}

static void test_err_cert(void **state)
{
    char text[512];

    expect_error("listen: { http = [ ];\n https = [ \"127.0.0.1:8443\" ]; };\n",
                 "tls.certificates: an https listener needs at least one certificate");
    snprintf(text, sizeof(text),
             "tls: { certificates = (\n { cert = \"%s/missing.crt\";\n key = \"%s\"; } ); };\n",
             tmpdir, key_path);
    expect_error(text, "test.conf:2: tls.certificates[0].cert: cannot read \"");
    assert_non_null(strstr(err, "missing.crt\": No such file or directory"));
    snprintf(text, sizeof(text), "tls: { certificates = (\n { cert = \"%s\"; } ); };\n", cert_path);
    expect_error(text, "test.conf:2: tls.certificates[0]: 'key' is required");
}

static void test_err_previews(void **state)
{
    expect_error(HEAD "previews: {\n host = \"preview.example.com\";\n"
                      " upstream = \"{name}:80\"; };\n",
                 "test.conf:4: previews.host: \"preview.example.com\" must contain \"{name}\"");
    expect_error(HEAD "previews: {\n host = \"mvp-{name}\";\n upstream = \"{name}:80\"; };\n",
                 "test.conf:4: previews.host");
    expect_error(HEAD "previews: {\n host = \"{name}{name}.x\";\n upstream = \"{name}:80\"; };\n",
                 "test.conf:4: previews.host");
    expect_error(HEAD "previews: { host = \"{name}.x\";\n upstream = \"{name}.svc\"; };\n",
                 "test.conf:4: previews.upstream: \"{name}.svc\" must contain \"{name}\" once and "
                 "end in \":port\"");
    expect_error(HEAD "previews: { host = \"{name}.x\";\n upstream = \"svc:80\"; };\n",
                 "test.conf:4: previews.upstream");
    /* the pattern and the upstream template are host names by the rule of
     * a request's Host */
    expect_error(HEAD "previews: {\n host = \"mvp_{name}.x\";\n upstream = \"{name}:80\"; };\n",
                 "test.conf:4: previews.host");
    expect_error(HEAD "previews: {\n host = \"{name}..x\";\n upstream = \"{name}:80\"; };\n",
                 "test.conf:4: previews.host");
    expect_error(HEAD "previews: { host = \"{name}.x\";\n upstream = \"{name}_svc:80\"; };\n",
                 "test.conf:4: previews.upstream");
    expect_error(HEAD "previews: { host = \"{name}.x\";\n upstream = \"{name}..svc:80\"; };\n",
                 "test.conf:4: previews.upstream");
}

/* Hosts in the configuration are stored as requests' hosts are matched:
 * lowercase, without the trailing dot. */
static void test_hosts_normalised(void **state)
{
    struct fg_config *cfg = expect_ok(
        HEAD "routes = (\n { host = \"API.Example.com.\"; path = \"/\"; upstream = \"api\";\n"
             "   auth = \"none\"; }\n);\n"
             "previews: { host = \"MVP-{name}.Preview.Example.com.\";\n"
             "  upstream = \"mvp-{name}.svc:80\"; };\n");

    assert_string_equal(cfg->routes[0].host, "api.example.com");
    assert_int_equal(cfg->routes[0].host_len, 15);
    assert_string_equal(cfg->previews.host_prefix, "mvp-");
    assert_string_equal(cfg->previews.host_suffix, ".preview.example.com");
    cfg_unref(cfg);
}

static void test_err_syntax(void **state)
{
    expect_error(HEAD "log: { };\nworkers = = 2;\n", "test.conf:4: syntax error");
    expect_error("listen: {\n https = [ \"a\", 1 ];\n};\n", "test.conf:");
}

static void test_err_several(void **state)
{
    expect_error(HEAD "workers = -1;\n"
                      "bogus = 1;\n"
                      "redirect: { status = 200; };\n"
                      "routes = ( { path = \"/\"; upstream = \"x\"; auth = \"none\"; } );\n",
                 "test.conf:3: workers: must be between 0 and 1024, not -1\n"
                 "test.conf:4: unknown key 'bogus'\n");
    assert_non_null(strstr(err, "test.conf:5: redirect.status: must be 301, 302, 307 or 308\n"));
    assert_non_null(strstr(err, "test.conf:6: routes[0].upstream: no upstream named \"x\"\n"));
}

static void test_err_truncated(void **state)
{
    char small[24];
    struct fg_config *cfg;

    memset(small, 'Z', sizeof(small));
    cfg = cfg_load_string(HEAD "workers = -1;\nbogus = 1;\n", "test.conf", small, sizeof(small));
    assert_null(cfg);
    assert_int_equal(strlen(small), sizeof(small) - 1);
    assert_memory_equal(small, "test.conf:3: workers: m", sizeof(small) - 1);
    /* no buffer at all is fine */
    assert_null(cfg_load_string("bogus = 1;\n", "test.conf", NULL, 0));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_full_top_listen_tls),
        cmocka_unit_test(test_full_headers_limits),
        cmocka_unit_test(test_full_jwt),
        cmocka_unit_test(test_full_rate_limit),
        cmocka_unit_test(test_full_cors),
        cmocka_unit_test(test_full_upstreams_routes),
        cmocka_unit_test(test_full_previews_resolver_log),
        cmocka_unit_test(test_defaults),
        cmocka_unit_test(test_group_defaults),
        cmocka_unit_test(test_ref_unref),
        cmocka_unit_test(test_reload),
        cmocka_unit_test(test_http2),
        cmocka_unit_test(test_watch_paths),
        cmocka_unit_test(test_watch_paths_include),
        cmocka_unit_test(test_method_names),
        cmocka_unit_test(test_load_file),
        cmocka_unit_test(test_err_unknown_key),
        cmocka_unit_test(test_err_secret_in_file),
        cmocka_unit_test(test_err_wrong_type),
        cmocka_unit_test(test_err_range),
        cmocka_unit_test(test_err_upstream_failover),
        cmocka_unit_test(test_err_health_check),
        cmocka_unit_test(test_err_address),
        cmocka_unit_test(test_upstream_server_names),
        cmocka_unit_test(test_err_route),
        cmocka_unit_test(test_err_secret_missing),
        cmocka_unit_test(test_err_secret_short),
        cmocka_unit_test(test_err_cors_star_credentials),
        cmocka_unit_test(test_err_cert),
        cmocka_unit_test(test_err_previews),
        cmocka_unit_test(test_hosts_normalised),
        cmocka_unit_test(test_err_cors_origin_rule),
        cmocka_unit_test(test_err_syntax),
        cmocka_unit_test(test_err_several),
        cmocka_unit_test(test_err_truncated),
    };

    return cmocka_run_group_tests(tests, setup, teardown);
}
