/*
 * cfg.h - flowgate's configuration snapshot.
 *
 * cfg.c is the only libconfig user. It parses, validates and compiles a file
 * into one immutable, reference-counted struct fg_config. Every derived thing
 * a request needs (route table, CIDR sets, pre-rendered header blocks, method
 * masks, resolved socket addresses) is built here once, so the hot path only
 * reads. A reload builds a new snapshot and swaps the pointer; requests in
 * flight keep the one they started with (cfg_ref/cfg_unref).
 */
#ifndef FG_CFG_H
#define FG_CFG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "cidr.h"

#define FG_DEFAULT_CONFIG "/etc/flowgate/flowgate.conf"

/* A "host:port", "[v6]:port" or "unix:/path" endpoint, resolved at load
 * (numeric addresses only: no DNS on the configuration path). */
struct fg_sockaddr {
    struct sockaddr_storage ss; /* the address, AF_INET/AF_INET6/AF_UNIX */
    socklen_t len;              /* its length for bind/connect */
    char *text;                 /* as written in the file, for logs */
    char *host;                 /* an upstream server given as "name:port": the name
                                   (normalised), resolved by each worker; ss holds only
                                   the port then. NULL for an address */
};

struct fg_cert {
    char *cert_file; /* PEM chain, leaf first */
    char *key_file;  /* PEM private key */
    int line;        /* where the entry is in the configuration file */
};

struct fg_tls {
    struct fg_cert *certs; /* first is the default when SNI matches none */
    size_t ncerts;         /* >= 1 when there is an https listener */
    int min_version;       /* TLS1_2_VERSION or TLS1_3_VERSION */
    int line;              /* line of the tls group (0 when absent) */
    char *ciphers;         /* TLS 1.2 list; "" = built-in strong default */
    bool session_tickets;  /* false: no resumption at all */
};

struct fg_redirect {
    int https_port; /* written into Location; 443 omitted */
    int status;     /* 301, 302, 307 or 308 */
};

/* Security headers. Each value is "" when disabled. The two pre-rendered
 * blocks are "Name: value\r\n..." ready to append to any response head. */
struct fg_headers {
    char *hsts;
    char *frame_options;
    char *content_type_options;
    char *xss_protection;
    char *referrer_policy;
    char *csp;
    char *server;
    char *block_https; /* every enabled header, HSTS included */
    size_t block_https_len;
    char *block_http; /* the same without HSTS (plain listeners) */
    size_t block_http_len;
};

struct fg_limits {
    uint32_t max_header_bytes;    /* request line + headers, CRLFs included */
    uint32_t max_headers;         /* header lines */
    uint64_t max_body_bytes;      /* 413 beyond, decided before reading */
    uint32_t header_timeout_ms;   /* whole head must arrive within */
    uint32_t body_timeout_ms;     /* between two body reads */
    bool underscores_in_headers;  /* false: drop request headers with '_' */
    uint32_t keepalive_timeout_ms;
    uint32_t send_timeout_ms;     /* a client that takes no byte this long is closed */
    uint32_t max_connections;     /* per process */
};

enum fg_jwt_alg { FG_JWT_HS256 = 0, FG_JWT_HS384 = 1, FG_JWT_HS512 = 2 };

struct fg_jwt_key {
    char *kid;                 /* exact-match key id */
    unsigned char *secret;     /* the key bytes, read from env or file */
    size_t secret_len;         /* >= hash output size */
    char *secret_file;         /* where the bytes came from (watched); NULL with secret_env */
};

struct fg_claim_header {
    char *header; /* upstream request header name, e.g. "X-User-Id" */
    size_t header_len;
    char *claim;  /* claim name, e.g. "sub" */
};

struct fg_jwt {
    enum fg_jwt_alg algorithm;
    struct fg_jwt_key *keys;
    size_t nkeys;           /* 0 when the jwt group is absent */
    char *issuer;           /* "" = not checked */
    char *audience;         /* "" = not checked */
    uint32_t leeway_seconds;
    bool require_exp;
    char *token_type;       /* "" = not checked */
    char *type_claim;
    char *tier_claim;
    char *cookie;           /* "" = Authorization only */
    uint32_t max_token_bytes;
    struct fg_claim_header *forward_claims;
    size_t nforward_claims;
};

enum fg_redis_failure {
    FG_REDIS_FAIL_LOCAL = 0,
    FG_REDIS_FAIL_ALLOW = 1,
    FG_REDIS_FAIL_DENY = 2,
};

enum fg_rl_key { FG_RL_KEY_IP = 0, FG_RL_KEY_USER = 1 };

struct fg_tier {
    char *name;      /* "anonymous", "authenticated", "premium", ... */
    uint32_t limit;  /* requests ... */
    uint32_t window; /* ... per this many seconds */
};

struct fg_endpoint {
    char *path;        /* prefix, segment-boundary match like routes */
    size_t path_len;
    uint64_t methods;  /* bit n = enum h1_method n; 0 = every method */
    uint32_t limit;
    uint32_t window;
    enum fg_rl_key key;
};

struct fg_redis {
    char *address;      /* "host:port" or "unix:/path" as written */
    char *host;         /* parsed host, or NULL for unix */
    int port;
    char *unix_path;    /* NULL for TCP */
    char *password;     /* from password_env, NULL when none */
    char *username;     /* from username_env, NULL when none */
    int database;
    uint32_t timeout_ms;
    char *key_prefix;   /* at most FG_KEY_PREFIX_MAX bytes */
};

/* Longest rate_limit.redis.key_prefix: every rate-limit key starts with it,
 * a hashed one too, and must still fit RL_KEY_MAX (ratelimit.h). */
#define FG_KEY_PREFIX_MAX 256

struct fg_ratelimit {
    bool enabled;                /* the rate_limit group is present */
    struct fg_redis redis;
    enum fg_redis_failure on_redis_failure;
    bool ietf_headers;
    uint32_t ipv6_prefix;
    struct fg_tier *tiers;       /* anonymous, authenticated, premium first, then others */
    size_t ntiers;
    struct fg_endpoint *endpoints;
    size_t nendpoints;
};

struct fg_cors {
    bool enabled;          /* the cors group is present */
    char **origins;        /* exact "scheme://host[:port]", lowercased */
    size_t norigins;
    bool any_origin;       /* "*" listed (never with credentials) */
    bool credentials;
    uint64_t methods;      /* enum h1_method mask */
    char **headers;        /* allowed request headers */
    size_t nheaders;
    char *expose_headers;  /* pre-joined ", " list */
    uint32_t max_age;
};

#define FG_UPSTREAM_TRIES_MAX 16 /* bound on max_tries (nginx's proxy_next_upstream_tries) */

/* An upstream's active health check (health_check group); absent = none. */
struct fg_health_check {
    char *path;           /* GET target, begins with '/' */
    uint32_t interval_ms; /* from the end of one check to the start of the next */
    uint32_t timeout_ms;  /* connect to status line */
    uint32_t fall;        /* consecutive failed checks that mark a server unhealthy */
    uint32_t rise;        /* consecutive passed checks that mark it healthy again */
};

/* What the checker (main's thread) last concluded of one server, read by
 * every worker's server choice with relaxed atomics. It lives in the
 * snapshot so a worker reaches it through the upstream it already holds,
 * with no lookup and no lock; the checker keeps it for the snapshot in force
 * and carries it into the next one at a reload (health.c). */
struct fg_server_health {
    uint8_t down; /* atomic: 1 = unhealthy (fall failed checks in a row); zeroed = healthy */
};

struct fg_upstream {
    char *name;
    struct fg_sockaddr *servers;
    size_t nservers;
    size_t nnames;            /* servers given by name (fg_sockaddr.host) */
    uint32_t connect_timeout_ms;
    uint32_t read_timeout_ms;
    uint32_t keepalive;       /* idle connections kept per worker */
    uint32_t max_tries;       /* attempts of one request, on distinct servers (1 .. 16) */
    uint32_t max_fails;       /* consecutive failed attempts that eject a server; 0 = never */
    uint32_t fail_timeout_ms; /* how long an ejected server is skipped */
    size_t index;             /* position in cfg->upstreams: per-worker pool slot */
    struct fg_health_check *health_check; /* NULL: no active checks */
    struct fg_server_health *health;      /* nservers entries with a health_check, else NULL */
    uint32_t health_ndown;    /* atomic: servers marked unhealthy (panic when all of them) */
};

enum fg_auth_mode { FG_AUTH_NONE = 0, FG_AUTH_OPTIONAL = 1, FG_AUTH_REQUIRED = 2 };

struct fg_route {
    char *host;            /* lowercased; "" = any host */
    size_t host_len;
    char *path;            /* prefix, begins with '/' */
    size_t path_len;
    struct fg_upstream *upstream;
    uint32_t read_timeout_ms; /* bound on the upstream's silence; 0 = the upstream's */
    enum fg_auth_mode auth;
    bool rate_limit;       /* tier limits apply */
    uint64_t methods;      /* enum h1_method mask; 0 = no list (cors.methods for preflight) */
    char *allow;           /* "GET, HEAD" pre-rendered for 405 Allow; NULL when no list */
    size_t index;          /* position in the file, for logs and metrics */
    char *label;           /* host and path ("api.example.com/v1", "/v1" for any host),
                              "preview" for the preview route: the access log's route and
                              the metrics' route label */
};

struct fg_previews {
    bool enabled;
    char *host_prefix;       /* pattern before {name}, lowercased, e.g. "mvp-" */
    char *host_suffix;       /* pattern after {name}, e.g. ".preview.example.com" */
    char *upstream_prefix;   /* upstream template split around {name} */
    char *upstream_suffix;   /* ... up to ':' */
    int upstream_port;
    enum fg_auth_mode auth;
    bool strip_credentials;
    char **platform_cookies;
    size_t nplatform_cookies;
    char *frame_ancestors;
    bool websocket;
    /* Security headers of a preview response: the headers group without
     * X-Frame-Options and the platform's CSP (previews are framed by the
     * platform's app), plus "Content-Security-Policy: frame-ancestors ...". */
    char *block_https;
    size_t block_https_len;
    char *block_http;
    size_t block_http_len;
};

struct fg_resolver {
    char **nameservers;
    size_t nnameservers;
    char *hosts_file;  /* "" = none */
};

enum fg_log_level { FG_LOG_ERROR = 0, FG_LOG_WARN = 1, FG_LOG_INFO = 2, FG_LOG_DEBUG = 3 };

struct fg_log {
    char *access;  /* "stdout", a path, or "" for none */
    char *error;   /* "stderr" or a path */
    enum fg_log_level level;
};

struct fg_reload {
    bool watch;           /* reload by itself when a file in watch_paths changes */
    uint32_t debounce_ms; /* quiet time after the last change before reloading */
};

/* HTTP/2 to clients; a connection keeps the values it started with. */
struct fg_http2 {
    bool enabled;                    /* offer "h2" by ALPN before "http/1.1" */
    uint32_t max_concurrent_streams; /* SETTINGS_MAX_CONCURRENT_STREAMS */
    uint32_t initial_window_bytes;   /* SETTINGS_INITIAL_WINDOW_SIZE: per stream request body */
    uint32_t max_header_list_bytes;  /* decoded fields (RFC 9113 6.5.2 sizes); over: 431 */
    uint32_t max_resets_per_second;  /* client RST_STREAMs and abusive frames; over: GOAWAY */
    uint32_t idle_timeout_ms;        /* no stream open this long: GOAWAY and close */
};

struct fg_config {
    int refcount;                   /* atomic; see cfg_ref/cfg_unref */
    char *path;                     /* the file it was loaded from */
    unsigned workers;               /* resolved: never 0 after load */
    uint32_t shutdown_timeout_ms;   /* in-flight requests' bound, from the listeners' close */
    uint32_t shutdown_delay_ms;     /* SIGTERM to the listeners' close (readyz already 503) */

    struct fg_sockaddr *https;      /* TLS listeners */
    size_t nhttps;
    struct fg_sockaddr *http;       /* redirect-only listeners */
    size_t nhttp;
    struct fg_sockaddr *admin;      /* NULL when "" */
    bool proxy_protocol;

    struct fg_tls tls;
    struct fg_redirect redirect;
    struct fg_headers headers;
    struct fg_limits limits;
    struct fg_jwt jwt;
    struct fg_ratelimit rate_limit;
    struct cidr_set trusted_proxies; /* rate_limit.trusted_proxies */
    struct fg_cors cors;

    struct fg_upstream *upstreams;
    size_t nupstreams;
    struct fg_route *routes;        /* sorted: longest path first, host-specific before "" */
    size_t nroutes;

    struct fg_previews previews;
    struct fg_route preview_route;  /* what the stages see for a preview request: host "",
                                       path "/", auth = previews.auth, tier limits on, no
                                       method list, no configured upstream (DNS decides) */
    struct fg_resolver resolver;
    struct fg_log log;
    struct fg_reload reload;
    struct fg_http2 http2;

    /* Every file this snapshot was built from, each once: the configuration
     * file, the files it @includes, certificates and keys, *_file secrets,
     * resolver.hosts_file. The strings belong to the fields above (includes
     * to their own array); only the array is the list's. */
    const char **watch_paths; /* paths as written in the file, relative ones to the cwd */
    size_t nwatch_paths;      /* >= 1: the configuration file is always there */
    char **includes;          /* files read through @include, as libconfig opened them */
    size_t nincludes;
};

/*
 * Load and validate PATH. On success returns a snapshot with refcount 1.
 * On failure returns NULL and writes every problem found, one per line, as
 * "FILE:LINE: message\n", into ERR (truncated to ERRLEN, always terminated).
 * Secrets are read from the environment and files named in the config;
 * certificate/key files are checked readable (tls.c checks they match).
 */
struct fg_config *cfg_load(const char *path, char *err, size_t errlen);

/* Same, from a string (tests and the fuzzer); NAME is used in messages. */
struct fg_config *cfg_load_string(const char *text, const char *name, char *err, size_t errlen);

struct fg_config *cfg_ref(struct fg_config *cfg);
void cfg_unref(struct fg_config *cfg); /* frees at zero; NULL is fine */

/* Map a method name ("GET") to its enum h1_method number, -1 when unknown. */
int cfg_method_from_name(const char *name);

#endif
