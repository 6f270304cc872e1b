/*
 * cfg.c - load, validate and compile the configuration file.
 *
 * The only libconfig user. A file is read into a libconfig tree, every group
 * is walked against its list of known keys, every value is type- and
 * range-checked, and the result is compiled into one struct fg_config that
 * requests only read. Problems are not fatal one by one: all of them are
 * collected as "FILE:LINE: message" lines so that `flowgate -t` shows the
 * operator everything at once. The libconfig tree never outlives the load.
 */
#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <libconfig.h>
#include <openssl/tls1.h>

#include "cfg.h"
#include "cidr.h"
#include "cors.h"
#include "h1.h"
#include "route.h"

#define CFG_INT_MAX 2147483647LL
#define CFG_SECRET_MAX 65536 /* a secret file larger than this is a mistake */
#define CFG_MAX_WORKERS 1024
/* Endpoint removal at a load balancer takes seconds; a delay of more than a
 * few minutes is a typo that would hold every stop that long. */
#define CFG_MAX_SHUTDOWN_DELAY_MS 300000

#define CFG_MAX_MSGS 256   /* problems kept; more are only counted */

/* One recorded problem, before sorting. */
struct cfg_msg {
    const char *file; /* libconfig's or the caller's string: valid during the load */
    int line;
    size_t file_rank; /* seq of the first problem in the same file */
    size_t seq;       /* order found: ties keep it */
    char *text;       /* owned */
};

/* One load in progress: where errors go and the snapshot being built. */
struct cfg_ctx {
    const char *name;    /* file name for messages when libconfig has none */
    char *err;           /* caller's buffer, always NUL-terminated */
    size_t errlen;
    size_t used;         /* bytes written to err, excluding the NUL */
    struct cfg_msg msgs[CFG_MAX_MSGS];
    size_t nmsgs;
    size_t ndropped;     /* problems beyond msgs (or out of memory) */
    char path[256];      /* scratch for dotted setting paths in messages */
    struct fg_config *cfg;
};

/* Growable string for the pre-rendered blocks. */
struct cfg_buf {
    char *p;
    size_t len;
    size_t cap;
    bool failed; /* an allocation failed; p is then freed and NULL */
};

/* Method names indexed by method number (enum h1_method): bit n of a mask is method n. */
static const char *const cfg_methods[64] = {
#define CFG_METHOD_NAME(num, name, string) [num] = string,
    H1_METHOD_MAP(CFG_METHOD_NAME)
#undef CFG_METHOD_NAME
};

static const char *const top_keys[] = {
    "workers", "shutdown_timeout_ms", "shutdown_delay_ms", "listen", "tls", "redirect", "headers",
    "limits", "jwt", "rate_limit", "cors", "upstreams", "routes", "previews", "resolver", "log",
    "reload", "http2", NULL,
};
static const char *const listen_keys[] = {"https", "http", "admin", "proxy_protocol", NULL};
static const char *const tls_keys[] = {
    "certificates", "min_version", "ciphers", "session_tickets", NULL,
};
static const char *const cert_keys[] = {"cert", "key", NULL};
static const char *const redirect_keys[] = {"https_port", "status", NULL};
static const char *const headers_keys[] = {
    "hsts", "frame_options", "content_type_options", "xss_protection", "referrer_policy", "csp",
    "server", NULL,
};
static const char *const limits_keys[] = {
    "max_header_bytes", "max_headers", "max_body_bytes", "header_timeout_ms", "body_timeout_ms",
    "underscores_in_headers", "keepalive_timeout_ms", "send_timeout_ms", "max_connections", NULL,
};
static const char *const jwt_keys[] = {
    "algorithm", "keys", "issuer", "audience", "leeway_seconds", "require_exp", "token_type",
    "type_claim", "tier_claim", "cookie", "max_token_bytes", "forward_claims", NULL,
};
static const char *const jwt_key_keys[] = {"kid", "secret_env", "secret_file", NULL};
static const char *const rl_keys[] = {
    "redis", "on_redis_failure", "ietf_headers", "trusted_proxies", "ipv6_prefix", "tiers",
    "endpoints", NULL,
};
static const char *const redis_keys[] = {
    "address", "password_env", "username_env", "database", "timeout_ms", "key_prefix", NULL,
};
static const char *const tier_keys[] = {"limit", "window", NULL};
static const char *const endpoint_keys[] = {"path", "methods", "limit", "window", "key", NULL};
static const char *const cors_keys[] = {
    "origins", "credentials", "methods", "headers", "expose_headers", "max_age", NULL,
};
static const char *const upstream_keys[] = {
    "servers", "connect_timeout_ms", "read_timeout_ms", "keepalive", "max_tries", "max_fails",
    "fail_timeout_ms", "health_check", NULL,
};
static const char *const health_keys[] = {
    "path", "interval_ms", "timeout_ms", "fall", "rise", NULL,
};
static const char *const route_keys[] = {
    "host", "path", "upstream", "auth", "rate_limit", "methods", "read_timeout_ms", NULL,
};
static const char *const previews_keys[] = {
    "host", "upstream", "auth", "strip_credentials", "platform_cookies", "frame_ancestors",
    "websocket", NULL,
};
static const char *const resolver_keys[] = {"nameservers", "hosts_file", NULL};
static const char *const log_keys[] = {"access", "error", "level", NULL};
static const char *const reload_keys[] = {"watch", "debounce_ms", NULL};
static const char *const http2_keys[] = {
    "enabled", "max_concurrent_streams", "initial_window_bytes", "max_header_list_bytes",
    "max_resets_per_second", "idle_timeout_ms", NULL,
};

static const char *const alg_names[] = {"HS256", "HS384", "HS512", NULL};
static const size_t alg_min_secret[] = {32, 48, 64}; /* the hash output size */
static const char *const auth_names[] = {"none", "optional", "required", NULL};
static const char *const failure_names[] = {"local", "allow", "deny", NULL};
static const char *const rlkey_names[] = {"ip", "user", NULL};
static const char *const level_names[] = {"error", "warn", "info", "debug", NULL};
static const char *const tls_version_names[] = {"TLSv1.2", "TLSv1.3", NULL};

static const char *const default_cors_methods[] = {
    "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", NULL,
};
static const char *const default_cors_headers[] = {
    "Authorization", "Content-Type", "X-Request-Id", NULL,
};
static const char *const default_expose_headers[] = {
    "X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset", "X-Request-Id", NULL,
};
static const char *const default_platform_cookies[] = {
    "access_token", "refresh_token", "session", NULL,
};

/* The standard tiers always come first, in this order (see struct fg_ratelimit). */
static const struct {
    const char *name;
    uint32_t limit;
    uint32_t window;
} std_tiers[] = {
    {"anonymous", 100, 60},
    {"authenticated", 1000, 60},
    {"premium", 5000, 60},
};
#define STD_TIERS (sizeof(std_tiers) / sizeof(std_tiers[0]))

/* ---------------------------------------------------------------------------
 * Error reporting
 */

static void cfg_path_append(const config_setting_t *s, char *buf, size_t len)
{
    const config_setting_t *parent = config_setting_parent(s);
    const char *name;
    size_t n;

    if (parent == NULL) { /* the root has no name */
        buf[0] = '\0';
        return;
    }
    cfg_path_append(parent, buf, len);
    n = strlen(buf);
    name = config_setting_name(s);
    if (name != NULL)
        snprintf(buf + n, len - n, "%s%s", n ? "." : "", name);
    else
        snprintf(buf + n, len - n, "[%d]", config_setting_index(s));
}

/* "listen.https[0]": the dotted path of S, for messages. */
static const char *cfg_path(struct cfg_ctx *ctx, const config_setting_t *s)
{
    cfg_path_append(s, ctx->path, sizeof(ctx->path));
    return ctx->path;
}

/* Scalars inside arrays may carry no line of their own: use the nearest one. */
static int cfg_line(const config_setting_t *s)
{
    for (; s != NULL; s = config_setting_parent(s))
        if (config_setting_source_line(s) != 0)
            return config_setting_source_line(s);
    return 0;
}

static const char *cfg_file(struct cfg_ctx *ctx, const config_setting_t *s)
{
    for (; s != NULL; s = config_setting_parent(s))
        if (config_setting_source_file(s) != NULL)
            return config_setting_source_file(s);
    return ctx->name;
}

/* Record one problem. Messages are kept and written out in file order at
 * the end, because the checks do not run in the order of the file. */
static void cfg_vreport(struct cfg_ctx *ctx, const char *file, int line, const char *fmt,
                        va_list ap)
{
    struct cfg_msg *m;
    char text[768];
    int n;

    if (ctx->nmsgs == CFG_MAX_MSGS) {
        ctx->ndropped++;
        return;
    }
    m = &ctx->msgs[ctx->nmsgs];
    n = vsnprintf(text, sizeof(text), fmt, ap);
    if (n < 0 || (m->text = strdup(text)) == NULL) {
        ctx->ndropped++;
        return;
    }
    m->file = file;
    m->line = line;
    m->seq = ctx->nmsgs;
    m->file_rank = m->seq;
    for (size_t i = 0; i < ctx->nmsgs; i++) {
        if (strcmp(ctx->msgs[i].file, file) == 0) {
            m->file_rank = ctx->msgs[i].file_rank;
            break;
        }
    }
    ctx->nmsgs++;
}

static int msg_cmp(const void *a, const void *b)
{
    const struct cfg_msg *x = a, *y = b;

    if (x->file_rank != y->file_rank)
        return x->file_rank < y->file_rank ? -1 : 1;
    if (x->line != y->line)
        return x->line < y->line ? -1 : 1;
    return x->seq < y->seq ? -1 : x->seq > y->seq;
}

/* Append one line to the caller's buffer, truncating safely. */
static void err_append(struct cfg_ctx *ctx, const char *file, int line, const char *text)
{
    size_t room;
    int n;

    if (ctx->err == NULL || ctx->errlen < 2 || ctx->used >= ctx->errlen - 1)
        return;
    room = ctx->errlen - ctx->used;
    n = snprintf(ctx->err + ctx->used, room, "%s:%d: %s\n", file, line, text);
    /* on truncation snprintf has still terminated the buffer */
    ctx->used = n < 0 || (size_t)n >= room ? ctx->errlen - 1 : ctx->used + (size_t)n;
}

/* Write every recorded problem, sorted by file then line, and forget them. */
static void cfg_flush(struct cfg_ctx *ctx)
{
    qsort(ctx->msgs, ctx->nmsgs, sizeof(ctx->msgs[0]), msg_cmp);
    for (size_t i = 0; i < ctx->nmsgs; i++) {
        err_append(ctx, ctx->msgs[i].file, ctx->msgs[i].line, ctx->msgs[i].text);
        free(ctx->msgs[i].text);
    }
    if (ctx->ndropped > 0) {
        char text[64];

        snprintf(text, sizeof(text), "%zu more problems not shown", ctx->ndropped);
        err_append(ctx, ctx->name, 0, text);
    }
    ctx->nmsgs = 0;
}

static void cfg_report(struct cfg_ctx *ctx, const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void cfg_report(struct cfg_ctx *ctx, const char *file, int line, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    cfg_vreport(ctx, file, line, fmt, ap);
    va_end(ap);
}

/* A problem with setting S (NULL: no line to point at), message as written. */
static void cfg_error(struct cfg_ctx *ctx, const config_setting_t *s, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void cfg_error(struct cfg_ctx *ctx, const config_setting_t *s, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    cfg_vreport(ctx, cfg_file(ctx, s), cfg_line(s), fmt, ap);
    va_end(ap);
}

/* A problem with setting S, prefixed by its dotted path: "tls.min_version: ...". */
static void cfg_bad(struct cfg_ctx *ctx, const config_setting_t *s, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void cfg_bad(struct cfg_ctx *ctx, const config_setting_t *s, const char *fmt, ...)
{
    char msg[512];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    cfg_error(ctx, s, "%s: %s", cfg_path(ctx, s), msg);
}

static void cfg_oom(struct cfg_ctx *ctx)
{
    cfg_report(ctx, ctx->name, 0, "out of memory");
}

/* ---------------------------------------------------------------------------
 * Small helpers
 */

static char *cfg_strdup(struct cfg_ctx *ctx, const char *s)
{
    char *p = strdup(s);

    if (p == NULL)
        cfg_oom(ctx);
    return p;
}

static void *cfg_calloc(struct cfg_ctx *ctx, size_t n, size_t size)
{
    void *p = calloc(n ? n : 1, size);

    if (p == NULL)
        cfg_oom(ctx);
    return p;
}

static void str_lower(char *s)
{
    for (; s != NULL && *s; s++)
        *s = (char)tolower((unsigned char)*s);
}

static bool str_in(const char *s, const char *const *list)
{
    for (; *list != NULL; list++)
        if (strcmp(s, *list) == 0)
            return true;
    return false;
}

/* A header value must not be able to start a new header line. */
static bool is_field_value(const char *s)
{
    for (; *s; s++)
        if (((unsigned char)*s < 0x20 && *s != '\t') || *s == 0x7f)
            return false;
    return true;
}

static void buf_add(struct cfg_buf *b, const char *s, size_t n)
{
    char *p;

    if (b->failed)
        return;
    if (b->len + n + 1 > b->cap) {
        size_t cap = (b->len + n + 1) * 2;
        if ((p = realloc(b->p, cap)) == NULL) {
            free(b->p);
            b->p = NULL;
            b->failed = true;
            return;
        }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

static void buf_adds(struct cfg_buf *b, const char *s)
{
    buf_add(b, s, strlen(s));
}

/* Finish a buffer: its string (never NULL unless out of memory, "" when empty). */
static char *buf_finish(struct cfg_ctx *ctx, struct cfg_buf *b, size_t *len)
{
    buf_add(b, "", 0);
    if (b->failed) {
        cfg_oom(ctx);
        return NULL;
    }
    if (len != NULL)
        *len = b->len;
    return b->p;
}

int cfg_method_from_name(const char *name)
{
    for (int i = 0; i < 64; i++)
        if (cfg_methods[i] != NULL && strcmp(cfg_methods[i], name) == 0)
            return i;
    return -1;
}

/* ---------------------------------------------------------------------------
 * Typed access to settings. Each getter returns the default when the member
 * is absent, and reports (then returns the default) when it is malformed.
 */

static config_setting_t *member(const config_setting_t *g, const char *name)
{
    return g != NULL ? config_setting_get_member(g, name) : NULL;
}

static void check_keys(struct cfg_ctx *ctx, const config_setting_t *g, const char *const *keys)
{
    int n = config_setting_length(g);

    for (int i = 0; i < n; i++) {
        const config_setting_t *s = config_setting_get_elem(g, (unsigned)i);
        const char *name = config_setting_name(s);

        if (name != NULL && !str_in(name, keys))
            cfg_error(ctx, s, "unknown key '%s'", cfg_path(ctx, s));
    }
}

static config_setting_t *get_group(struct cfg_ctx *ctx, const config_setting_t *g,
                                   const char *name, const char *const *keys)
{
    config_setting_t *s = member(g, name);

    if (s == NULL)
        return NULL;
    if (!config_setting_is_group(s)) {
        cfg_bad(ctx, s, "must be a group { ... }");
        return NULL;
    }
    if (keys != NULL)
        check_keys(ctx, s, keys);
    return s;
}

/* An array [ ] or list ( ): both are accepted wherever several values go. */
static config_setting_t *get_list(struct cfg_ctx *ctx, const config_setting_t *g,
                                  const char *name)
{
    config_setting_t *s = member(g, name);

    if (s == NULL)
        return NULL;
    if (!config_setting_is_array(s) && !config_setting_is_list(s)) {
        cfg_bad(ctx, s, "must be a list [ ... ]");
        return NULL;
    }
    return s;
}

static int64_t get_int(struct cfg_ctx *ctx, const config_setting_t *g, const char *name,
                       int64_t def, int64_t min, int64_t max)
{
    config_setting_t *s = member(g, name);
    int type;
    int64_t v;

    if (s == NULL)
        return def;
    type = config_setting_type(s);
    if (type != CONFIG_TYPE_INT && type != CONFIG_TYPE_INT64) {
        cfg_bad(ctx, s, "must be an integer");
        return def;
    }
    v = config_setting_get_int64(s);
    if (v < min || v > max) {
        cfg_bad(ctx, s, "must be between %lld and %lld, not %lld", (long long)min,
                (long long)max, (long long)v);
        return def;
    }
    return v;
}

static bool get_bool(struct cfg_ctx *ctx, const config_setting_t *g, const char *name, bool def)
{
    config_setting_t *s = member(g, name);

    if (s == NULL)
        return def;
    if (config_setting_type(s) != CONFIG_TYPE_BOOL) {
        cfg_bad(ctx, s, "must be true or false");
        return def;
    }
    return config_setting_get_bool(s) != 0;
}

/* The string inside libconfig's tree: valid until the tree is destroyed. */
static const char *get_cstr(struct cfg_ctx *ctx, const config_setting_t *g, const char *name,
                            const char *def)
{
    config_setting_t *s = member(g, name);

    if (s == NULL)
        return def;
    if (config_setting_type(s) != CONFIG_TYPE_STRING) {
        cfg_bad(ctx, s, "must be a string");
        return def;
    }
    return config_setting_get_string(s);
}

static char *get_str(struct cfg_ctx *ctx, const config_setting_t *g, const char *name,
                     const char *def)
{
    return cfg_strdup(ctx, get_cstr(ctx, g, name, def));
}

/* A string with no default: reports "'NAME' is required" when absent. */
static const char *get_required(struct cfg_ctx *ctx, const config_setting_t *g, const char *name)
{
    if (member(g, name) == NULL) {
        cfg_bad(ctx, g, "'%s' is required", name);
        return NULL;
    }
    return get_cstr(ctx, g, name, NULL);
}

/* A string that is sent as a header value. */
static char *get_value(struct cfg_ctx *ctx, const config_setting_t *g, const char *name,
                       const char *def)
{
    const char *v = get_cstr(ctx, g, name, def);

    if (!is_field_value(v)) {
        cfg_bad(ctx, member(g, name), "control characters are not allowed in a header value");
        v = def;
    }
    return cfg_strdup(ctx, v);
}

/* One of NAMES (NULL-terminated); returns its index. */
static int get_enum(struct cfg_ctx *ctx, const config_setting_t *g, const char *name,
                    const char *const *names, int def)
{
    const char *v = get_cstr(ctx, g, name, names[def]);
    char list[256] = "";
    size_t n = 0;

    for (int i = 0; names[i] != NULL; i++)
        if (strcmp(v, names[i]) == 0)
            return i;
    for (int i = 0; names[i] != NULL && n < sizeof(list); i++)
        n += (size_t)snprintf(list + n, sizeof(list) - n, "%s\"%s\"", i ? ", " : "", names[i]);
    cfg_bad(ctx, member(g, name), "\"%s\" is not one of %s", v, list);
    return def;
}

/* Copy the strings of list S (or DEF when S is NULL) into a new vector. */
static void get_strv(struct cfg_ctx *ctx, const config_setting_t *s, const char *const *def,
                     char ***out, size_t *nout)
{
    size_t n = 0;
    char **v;

    if (s != NULL)
        n = (size_t)config_setting_length(s);
    else
        while (def != NULL && def[n] != NULL)
            n++;
    if ((v = cfg_calloc(ctx, n + 1, sizeof(*v))) == NULL)
        return;
    *out = v;
    *nout = 0;
    for (size_t i = 0; i < n; i++) {
        const char *str = def != NULL && s == NULL ? def[i] : NULL;

        if (s != NULL) {
            config_setting_t *e = config_setting_get_elem(s, (unsigned)i);
            if (config_setting_type(e) != CONFIG_TYPE_STRING) {
                cfg_bad(ctx, e, "must be a string");
                continue;
            }
            str = config_setting_get_string(e);
        }
        if ((v[*nout] = cfg_strdup(ctx, str)) != NULL)
            (*nout)++;
    }
}

/* ---------------------------------------------------------------------------
 * Addresses
 */

/* Split "host:port" or "[v6]:port" into HOST (brackets removed) and PORT.
 * Returns 0, or -1 when the shape is wrong. */
static int split_hostport(const char *text, char *host, size_t hostlen, int *port)
{
    const char *colon;
    const char *h = text;
    size_t hl;
    char *end;
    long p;

    if (text[0] == '[') {
        const char *close = strchr(text, ']');
        if (close == NULL || close[1] != ':')
            return -1;
        h = text + 1;
        hl = (size_t)(close - h);
        colon = close + 1;
    } else {
        colon = strrchr(text, ':');
        if (colon == NULL || memchr(text, ':', (size_t)(colon - text)) != NULL)
            return -1; /* an IPv6 address needs brackets */
        hl = (size_t)(colon - text);
    }
    if (hl == 0 || hl >= hostlen || !isdigit((unsigned char)colon[1]))
        return -1;
    errno = 0;
    p = strtol(colon + 1, &end, 10);
    if (*end != '\0' || errno != 0 || p < 1 || p > 65535)
        return -1;
    memcpy(host, h, hl);
    host[hl] = '\0';
    *port = (int)p;
    return 0;
}

/* Resolve a numeric "IPv4:port" or "[IPv6]:port" into OUT. Returns 0 or -1. */
static int parse_sockaddr(const char *text, struct fg_sockaddr *out)
{
    struct addrinfo hints, *ai = NULL;
    char host[INET6_ADDRSTRLEN + 8], port[8];
    int p;

    if (split_hostport(text, host, sizeof(host), &p) != 0)
        return -1;
    if (text[0] == '[' && strchr(host, ':') == NULL)
        return -1; /* brackets are for IPv6 only */
    snprintf(port, sizeof(port), "%d", p);
    memset(&hints, 0, sizeof(hints));
    hints.ai_flags = AI_NUMERICHOST | AI_NUMERICSERV;
    hints.ai_socktype = SOCK_STREAM;
    if (getaddrinfo(host, port, &hints, &ai) != 0 || ai == NULL)
        return -1;
    memcpy(&out->ss, ai->ai_addr, ai->ai_addrlen);
    out->len = ai->ai_addrlen;
    freeaddrinfo(ai);
    return (out->text = strdup(text)) != NULL ? 0 : -1;
}

static ssize_t host_name(const char *name, size_t len, char out[ROUTE_HOST_MAX + 1]);

/* "name:port" (an upstream server the workers resolve): the name held to
 * the one host rule, the port kept in OUT's (otherwise empty) address.
 * Only the syntax is checked: names resolve at run time. */
static int parse_named(const char *text, struct fg_sockaddr *out)
{
    char host[ROUTE_HOST_MAX + 8], norm[ROUTE_HOST_MAX + 1];
    int p;

    if (text[0] == '[' || split_hostport(text, host, sizeof(host), &p) != 0 ||
        host_name(host, strlen(host), norm) < 0)
        return -1;
    struct sockaddr_in *s4 = (struct sockaddr_in *)&out->ss;
    s4->sin_port = htons((uint16_t)p);
    if ((out->host = strdup(norm)) == NULL)
        return -1;
    return (out->text = strdup(text)) != NULL ? 0 : -1;
}

/* A list of listener or server addresses; DEF is used when S is absent.
 * With NAMES, "name:port" is accepted too (*NNAMES counts them). */
static void get_addrs(struct cfg_ctx *ctx, const config_setting_t *g, const char *name,
                      const char *def, struct fg_sockaddr **out, size_t *nout, size_t *nnames)
{
    config_setting_t *s = get_list(ctx, g, name);
    size_t n = 0;

    *nout = 0;
    if (s != NULL)
        n = (size_t)config_setting_length(s);
    else if (member(g, name) == NULL && def != NULL)
        n = 1;
    if ((*out = cfg_calloc(ctx, n, sizeof(**out))) == NULL)
        return;
    for (size_t i = 0; i < n; i++) {
        config_setting_t *e = s != NULL ? config_setting_get_elem(s, (unsigned)i) : NULL;
        const char *text = def;

        if (e != NULL) {
            if (config_setting_type(e) != CONFIG_TYPE_STRING) {
                cfg_bad(ctx, e, "must be a string");
                continue;
            }
            text = config_setting_get_string(e);
        }
        if (parse_sockaddr(text, &(*out)[*nout]) == 0) {
            (*nout)++;
            continue;
        }
        if (nnames != NULL && parse_named(text, &(*out)[*nout]) == 0) {
            (*nout)++;
            (*nnames)++;
            continue;
        }
        cfg_bad(ctx, e ? e : s, "bad address \"%s\" (expected IPv4:port or [IPv6]:port%s)", text,
                nnames != NULL ? " or name:port" : "");
    }
}

static void free_sockaddrs(struct fg_sockaddr *a, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        free(a[i].text);
        free(a[i].host);
    }
    free(a);
}

/* ---------------------------------------------------------------------------
 * Files named by the configuration
 */

/* Open PATH for reading only when it is a regular file (symlinks followed):
 * a FIFO or a device named by mistake would block the load or never end.
 * Returns a stream, or NULL with errno (EINVAL: not a regular file). */
static FILE *open_regular(const char *path)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
    struct stat st;
    FILE *f;

    if (fd < 0)
        return NULL;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        errno = EINVAL;
        return NULL;
    }
    if ((f = fdopen(fd, "rb")) == NULL)
        close(fd);
    return f;
}

static const char *file_error(int e)
{
    return e == EINVAL ? "not a regular file" : strerror(e);
}

static bool file_readable(const char *path)
{
    FILE *f = open_regular(path);

    if (f == NULL)
        return false;
    fclose(f);
    return true;
}

/* ---------------------------------------------------------------------------
 * Secrets
 */

static void secret_free(void *p, size_t len)
{
    if (p != NULL) {
        explicit_bzero(p, len);
        free(p);
    }
}

/* Read a secret file whole, dropping one trailing newline (as `echo` leaves
 * it). Returns the bytes (NUL-terminated, zeroed on free) or NULL with errno.
 * stdio is unbuffered and the scratch buffer zeroed, so no copy of the
 * secret is left behind in freed memory. */
static char *read_secret_file(const char *path, size_t *len)
{
    FILE *f = open_regular(path);
    char *buf, *secret = NULL;
    size_t n;

    if (f == NULL)
        return NULL;
    setvbuf(f, NULL, _IONBF, 0);
    if ((buf = malloc(CFG_SECRET_MAX + 1)) == NULL) {
        fclose(f);
        return NULL;
    }
    n = fread(buf, 1, CFG_SECRET_MAX + 1, f);
    if (ferror(f) || n > CFG_SECRET_MAX) {
        errno = ferror(f) ? EIO : EFBIG;
        goto out;
    }
    if (n > 0 && buf[n - 1] == '\n')
        n--;
    if (n > 0 && buf[n - 1] == '\r')
        n--;
    if ((secret = malloc(n + 1)) == NULL)
        goto out;
    memcpy(secret, buf, n);
    secret[n] = '\0';
    *len = n;
out:
    fclose(f);
    secret_free(buf, CFG_SECRET_MAX + 1);
    return secret;
}

/* Read the secret named by S (a *_env or *_file setting). Reports and returns
 * NULL when it is missing or empty. */
static char *read_secret(struct cfg_ctx *ctx, const config_setting_t *s, bool is_file,
                         size_t *len)
{
    const char *name;
    char *v;

    if (config_setting_type(s) != CONFIG_TYPE_STRING) {
        cfg_bad(ctx, s, "must be a string");
        return NULL;
    }
    name = config_setting_get_string(s);
    if (is_file) {
        if ((v = read_secret_file(name, len)) == NULL) {
            cfg_bad(ctx, s, "cannot read secret file \"%s\": %s", name, file_error(errno));
            return NULL;
        }
    } else {
        const char *e = getenv(name);
        if (e == NULL || *e == '\0') {
            cfg_bad(ctx, s, "environment variable %s is not set or empty", name);
            return NULL;
        }
        if ((v = cfg_strdup(ctx, e)) == NULL)
            return NULL;
        *len = strlen(v);
    }
    if (*len == 0) {
        cfg_bad(ctx, s, "secret file \"%s\" is empty", name);
        secret_free(v, 1);
        return NULL;
    }
    return v;
}

/* An optional *_env credential ("" = none). */
static char *get_env_secret(struct cfg_ctx *ctx, const config_setting_t *g, const char *name)
{
    config_setting_t *s = member(g, name);
    size_t len;

    if (s == NULL || (config_setting_type(s) == CONFIG_TYPE_STRING &&
                      config_setting_get_string(s)[0] == '\0'))
        return NULL;
    return read_secret(ctx, s, false, &len);
}

/* ---------------------------------------------------------------------------
 * Sections
 */

static void parse_top(struct cfg_ctx *ctx, const config_setting_t *root)
{
    struct fg_config *cfg = ctx->cfg;
    long n;

    cfg->workers = (unsigned)get_int(ctx, root, "workers", 0, 0, CFG_MAX_WORKERS);
    if (cfg->workers == 0) {
        n = sysconf(_SC_NPROCESSORS_ONLN);
        cfg->workers = n > 0 ? (unsigned)(n > CFG_MAX_WORKERS ? CFG_MAX_WORKERS : n) : 1;
    }
    cfg->shutdown_timeout_ms =
        (uint32_t)get_int(ctx, root, "shutdown_timeout_ms", 10000, 1, CFG_INT_MAX);
    cfg->shutdown_delay_ms =
        (uint32_t)get_int(ctx, root, "shutdown_delay_ms", 0, 0, CFG_MAX_SHUTDOWN_DELAY_MS);
}

static void parse_listen(struct cfg_ctx *ctx, const config_setting_t *root)
{
    struct fg_config *cfg = ctx->cfg;
    config_setting_t *g = get_group(ctx, root, "listen", listen_keys);
    const char *admin;

    get_addrs(ctx, g, "https", "0.0.0.0:8443", &cfg->https, &cfg->nhttps, NULL);
    get_addrs(ctx, g, "http", "0.0.0.0:8080", &cfg->http, &cfg->nhttp, NULL);
    admin = get_cstr(ctx, g, "admin", "127.0.0.1:9901");
    if (admin[0] != '\0') {
        if ((cfg->admin = cfg_calloc(ctx, 1, sizeof(*cfg->admin))) == NULL)
            return;
        if (parse_sockaddr(admin, cfg->admin) != 0) {
            cfg_bad(ctx, member(g, "admin"),
                    "bad address \"%s\" (expected IPv4:port, [IPv6]:port or \"\")", admin);
            free(cfg->admin);
            cfg->admin = NULL;
        }
    }
    cfg->proxy_protocol = get_bool(ctx, g, "proxy_protocol", false);
    if (cfg->nhttps == 0 && cfg->nhttp == 0)
        cfg_error(ctx, g, "listen: at least one https or http listener is required");
}

static char *get_readable_file(struct cfg_ctx *ctx, const config_setting_t *g, const char *name)
{
    config_setting_t *s = member(g, name);
    const char *path = get_cstr(ctx, g, name, NULL);

    if (s == NULL) {
        cfg_bad(ctx, g, "'%s' is required", name);
        return NULL;
    }
    if (path == NULL)
        return NULL;
    if (!file_readable(path)) {
        cfg_bad(ctx, s, "cannot read \"%s\": %s", path, file_error(errno));
        return NULL;
    }
    return cfg_strdup(ctx, path);
}

static void parse_certs(struct cfg_ctx *ctx, const config_setting_t *tls)
{
    struct fg_tls *t = &ctx->cfg->tls;
    config_setting_t *list = get_list(ctx, tls, "certificates");
    size_t n = list != NULL ? (size_t)config_setting_length(list) : 0;

    if ((t->certs = cfg_calloc(ctx, n, sizeof(*t->certs))) == NULL)
        return;
    for (size_t i = 0; i < n; i++) {
        config_setting_t *c = config_setting_get_elem(list, (unsigned)i);
        struct fg_cert *cert = &t->certs[t->ncerts];

        if (!config_setting_is_group(c)) {
            cfg_bad(ctx, c, "must be a group { cert = ...; key = ...; }");
            continue;
        }
        check_keys(ctx, c, cert_keys);
        cert->line = config_setting_source_line(c);
        cert->cert_file = get_readable_file(ctx, c, "cert");
        cert->key_file = get_readable_file(ctx, c, "key");
        t->ncerts++;
    }
}

static void parse_tls(struct cfg_ctx *ctx, const config_setting_t *root)
{
    struct fg_tls *t = &ctx->cfg->tls;
    config_setting_t *g = get_group(ctx, root, "tls", tls_keys);
    int v;

    parse_certs(ctx, g);
    v = get_enum(ctx, g, "min_version", tls_version_names, 0);
    t->min_version = v == 0 ? TLS1_2_VERSION : TLS1_3_VERSION;
    t->ciphers = get_str(ctx, g, "ciphers", "");
    t->session_tickets = get_bool(ctx, g, "session_tickets", true);
    if (ctx->cfg->nhttps > 0 && t->ncerts == 0)
        cfg_error(ctx, g ? g : member(member(root, "listen"), "https"),
                  "tls.certificates: an https listener needs at least one certificate");
}

static void parse_redirect(struct cfg_ctx *ctx, const config_setting_t *root)
{
    struct fg_redirect *r = &ctx->cfg->redirect;
    config_setting_t *g = get_group(ctx, root, "redirect", redirect_keys);
    int64_t status;

    r->https_port = (int)get_int(ctx, g, "https_port", 8443, 1, 65535);
    status = get_int(ctx, g, "status", 308, 0, 999);
    if (status != 301 && status != 302 && status != 307 && status != 308) {
        cfg_bad(ctx, member(g, "status"), "must be 301, 302, 307 or 308");
        status = 308;
    }
    r->status = (int)status;
}

static void block_add(struct cfg_buf *b, const char *name, const char *value)
{
    if (value == NULL || value[0] == '\0')
        return;
    buf_adds(b, name);
    buf_adds(b, ": ");
    buf_adds(b, value);
    buf_adds(b, "\r\n");
}

/* The security headers every response carries, rendered once. HSTS only
 * on TLS: RFC 6797 §7.2 says it must not be sent over plain HTTP. */
static void render_header_blocks(struct cfg_ctx *ctx, struct fg_headers *h)
{
    for (int tls = 0; tls <= 1; tls++) {
        struct cfg_buf b = {0};

        if (tls)
            block_add(&b, "Strict-Transport-Security", h->hsts);
        block_add(&b, "X-Frame-Options", h->frame_options);
        block_add(&b, "X-Content-Type-Options", h->content_type_options);
        block_add(&b, "X-XSS-Protection", h->xss_protection);
        block_add(&b, "Referrer-Policy", h->referrer_policy);
        block_add(&b, "Content-Security-Policy", h->csp);
        block_add(&b, "Server", h->server);
        if (tls)
            h->block_https = buf_finish(ctx, &b, &h->block_https_len);
        else
            h->block_http = buf_finish(ctx, &b, &h->block_http_len);
    }
}

static void parse_headers(struct cfg_ctx *ctx, const config_setting_t *root)
{
    struct fg_headers *h = &ctx->cfg->headers;
    config_setting_t *g = get_group(ctx, root, "headers", headers_keys);

    h->hsts = get_value(ctx, g, "hsts", "max-age=31536000; includeSubDomains");
    h->frame_options = get_value(ctx, g, "frame_options", "SAMEORIGIN");
    h->content_type_options = get_value(ctx, g, "content_type_options", "nosniff");
    h->xss_protection = get_value(ctx, g, "xss_protection", "1; mode=block");
    h->referrer_policy = get_value(ctx, g, "referrer_policy", "strict-origin-when-cross-origin");
    h->csp = get_value(ctx, g, "csp", "frame-src 'self' https://*.preview.example.com");
    h->server = get_value(ctx, g, "server", "");
    render_header_blocks(ctx, h);
}

static void parse_limits(struct cfg_ctx *ctx, const config_setting_t *root)
{
    struct fg_limits *l = &ctx->cfg->limits;
    config_setting_t *g = get_group(ctx, root, "limits", limits_keys);

    l->max_header_bytes = (uint32_t)get_int(ctx, g, "max_header_bytes", 16384, 64, CFG_INT_MAX);
    l->max_headers = (uint32_t)get_int(ctx, g, "max_headers", 100, 1, CFG_INT_MAX);
    l->max_body_bytes = (uint64_t)get_int(ctx, g, "max_body_bytes", 10485760, 0, INT64_MAX);
    l->header_timeout_ms = (uint32_t)get_int(ctx, g, "header_timeout_ms", 10000, 1, CFG_INT_MAX);
    l->body_timeout_ms = (uint32_t)get_int(ctx, g, "body_timeout_ms", 30000, 1, CFG_INT_MAX);
    l->underscores_in_headers = get_bool(ctx, g, "underscores_in_headers", false);
    l->keepalive_timeout_ms =
        (uint32_t)get_int(ctx, g, "keepalive_timeout_ms", 60000, 1, CFG_INT_MAX);
    l->send_timeout_ms = (uint32_t)get_int(ctx, g, "send_timeout_ms", 60000, 1, CFG_INT_MAX);
    l->max_connections = (uint32_t)get_int(ctx, g, "max_connections", 10000, 1, CFG_INT_MAX);
}

/* ---------------------------------------------------------------------------
 * jwt
 */

static void parse_jwt_key(struct cfg_ctx *ctx, const config_setting_t *ks, struct fg_jwt_key *k,
                          enum fg_jwt_alg alg)
{
    config_setting_t *env = member(ks, "secret_env");
    config_setting_t *file = member(ks, "secret_file");
    const char *kid = get_required(ctx, ks, "kid");
    size_t len = 0;
    char *secret;

    check_keys(ctx, ks, jwt_key_keys);
    k->kid = kid != NULL ? cfg_strdup(ctx, kid) : NULL;
    if ((env == NULL) == (file == NULL)) {
        cfg_bad(ctx, ks, "exactly one of 'secret_env' or 'secret_file' is required");
        return;
    }
    if (file != NULL && config_setting_type(file) == CONFIG_TYPE_STRING)
        k->secret_file = cfg_strdup(ctx, config_setting_get_string(file));
    if ((secret = read_secret(ctx, env ? env : file, file != NULL, &len)) == NULL)
        return;
    if (len < alg_min_secret[alg]) {
        cfg_bad(ctx, env ? env : file, "secret is %zu bytes; %s needs at least %zu", len,
                alg_names[alg], alg_min_secret[alg]);
        secret_free(secret, len);
        return;
    }
    k->secret = (unsigned char *)secret;
    k->secret_len = len;
}

static void parse_jwt_keys(struct cfg_ctx *ctx, const config_setting_t *g)
{
    struct fg_jwt *j = &ctx->cfg->jwt;
    config_setting_t *list = get_list(ctx, g, "keys");
    size_t n = list != NULL ? (size_t)config_setting_length(list) : 0;

    if (list == NULL || n == 0) {
        cfg_bad(ctx, list ? list : g, "'keys' must list at least one key");
        return;
    }
    if ((j->keys = cfg_calloc(ctx, n, sizeof(*j->keys))) == NULL)
        return;
    for (size_t i = 0; i < n; i++) {
        config_setting_t *ks = config_setting_get_elem(list, (unsigned)i);

        if (!config_setting_is_group(ks)) {
            cfg_bad(ctx, ks, "must be a group { kid = ...; secret_env = ...; }");
            continue;
        }
        parse_jwt_key(ctx, ks, &j->keys[j->nkeys], j->algorithm);
        for (size_t d = 0; d < j->nkeys; d++)
            if (j->keys[d].kid && j->keys[j->nkeys].kid &&
                strcmp(j->keys[d].kid, j->keys[j->nkeys].kid) == 0)
                cfg_bad(ctx, ks, "duplicate kid \"%s\"", j->keys[d].kid);
        j->nkeys++;
    }
}

static void parse_forward_claims(struct cfg_ctx *ctx, const config_setting_t *g)
{
    static const char *const defaults[][2] = {{"X-User-Id", "sub"}, {"X-User-Tier", "tier"}};
    struct fg_jwt *j = &ctx->cfg->jwt;
    config_setting_t *list = get_list(ctx, g, "forward_claims");
    size_t n = list != NULL ? (size_t)config_setting_length(list) : 2;

    if (member(g, "forward_claims") != NULL && list == NULL)
        n = 0;
    if ((j->forward_claims = cfg_calloc(ctx, n, sizeof(*j->forward_claims))) == NULL)
        return;
    for (size_t i = 0; i < n; i++) {
        config_setting_t *e = list ? config_setting_get_elem(list, (unsigned)i) : NULL;
        const char *header = e ? NULL : defaults[i][0];
        const char *claim = e ? NULL : defaults[i][1];
        struct fg_claim_header *fc = &j->forward_claims[j->nforward_claims];

        if (e != NULL) {
            config_setting_t *h = config_setting_get_elem(e, 0);
            config_setting_t *c = config_setting_get_elem(e, 1);
            if (!config_setting_is_aggregate(e) || config_setting_is_group(e) ||
                config_setting_length(e) != 2 || config_setting_type(h) != CONFIG_TYPE_STRING ||
                config_setting_type(c) != CONFIG_TYPE_STRING) {
                cfg_bad(ctx, e, "must be a pair (\"Header-Name\", \"claim\")");
                continue;
            }
            header = config_setting_get_string(h);
            claim = config_setting_get_string(c);
            if (!h1_is_token(header, strlen(header)) || claim[0] == '\0') {
                cfg_bad(ctx, e, "\"%s\" is not a valid header name or the claim is empty",
                        header);
                continue;
            }
        }
        fc->header = cfg_strdup(ctx, header);
        fc->header_len = strlen(header);
        fc->claim = cfg_strdup(ctx, claim);
        j->nforward_claims++;
    }
}

static void parse_jwt(struct cfg_ctx *ctx, const config_setting_t *root)
{
    struct fg_jwt *j = &ctx->cfg->jwt;
    config_setting_t *g = get_group(ctx, root, "jwt", jwt_keys);

    j->algorithm = (enum fg_jwt_alg)get_enum(ctx, g, "algorithm", alg_names, 0);
    j->issuer = get_str(ctx, g, "issuer", "");
    j->audience = get_str(ctx, g, "audience", "");
    j->leeway_seconds = (uint32_t)get_int(ctx, g, "leeway_seconds", 30, 0, 86400);
    j->require_exp = get_bool(ctx, g, "require_exp", true);
    j->token_type = get_str(ctx, g, "token_type", "access");
    j->type_claim = get_str(ctx, g, "type_claim", "type");
    j->tier_claim = get_str(ctx, g, "tier_claim", "tier");
    j->cookie = get_str(ctx, g, "cookie", "");
    j->max_token_bytes = (uint32_t)get_int(ctx, g, "max_token_bytes", 8192, 16, 1048576);
    if (g == NULL) /* no jwt group: no token is ever verified */
        return;
    if (j->cookie != NULL && j->cookie[0] != '\0' && !h1_is_token(j->cookie, strlen(j->cookie)))
        cfg_bad(ctx, member(g, "cookie"), "\"%s\" is not a valid cookie name", j->cookie);
    parse_jwt_keys(ctx, g);
    parse_forward_claims(ctx, g);
}

/* ---------------------------------------------------------------------------
 * rate_limit
 */

static void parse_redis_address(struct cfg_ctx *ctx, const config_setting_t *g,
                                struct fg_redis *r)
{
    const char *addr = get_cstr(ctx, g, "address", "127.0.0.1:6379");
    char host[256];

    r->address = cfg_strdup(ctx, addr);
    if (strncmp(addr, "unix:", 5) == 0) {
        if (addr[5] == '\0' || strlen(addr + 5) >= sizeof(((struct sockaddr_un *)0)->sun_path))
            cfg_bad(ctx, member(g, "address"), "bad unix socket path \"%s\"", addr + 5);
        else
            r->unix_path = cfg_strdup(ctx, addr + 5);
        return;
    }
    if (split_hostport(addr, host, sizeof(host), &r->port) != 0) {
        cfg_bad(ctx, member(g, "address"),
                "bad address \"%s\" (expected host:port, [IPv6]:port or unix:/path)", addr);
        return;
    }
    r->host = cfg_strdup(ctx, host);
}

static void parse_redis(struct cfg_ctx *ctx, const config_setting_t *rl)
{
    struct fg_redis *r = &ctx->cfg->rate_limit.redis;
    config_setting_t *g = get_group(ctx, rl, "redis", redis_keys);

    parse_redis_address(ctx, g, r);
    r->password = get_env_secret(ctx, g, "password_env");
    r->username = get_env_secret(ctx, g, "username_env");
    r->database = (int)get_int(ctx, g, "database", 0, 0, 65535);
    r->timeout_ms = (uint32_t)get_int(ctx, g, "timeout_ms", 50, 1, 600000);
    r->key_prefix = get_str(ctx, g, "key_prefix", "flowgate:");
    if (r->key_prefix != NULL && strlen(r->key_prefix) > FG_KEY_PREFIX_MAX)
        cfg_bad(ctx, member(g, "key_prefix"), "must be at most %d bytes, not %zu",
                FG_KEY_PREFIX_MAX, strlen(r->key_prefix));
}

/*
 * One network of a CIDR list: 0, or -1 after reporting why. Host bits set
 * ("192.168.1.5/24") are refused rather than silently cleared: whether the
 * network or the one host was meant is for the operator to say.
 */
static int parse_network(struct cfg_ctx *ctx, const config_setting_t *e, struct cidr *out)
{
    const char *text = config_setting_get_string(e);
    char meant[CIDR_FORMAT_MAX];

    switch (cidr_parse(text, out)) {
    case CIDR_OK: return 0;
    case CIDR_HOST_BITS:
        if (cidr_format(out, meant, sizeof(meant)) == 0) {
            cfg_bad(ctx, e, "\"%s\" has host bits set (did you mean \"%s\"?)", text, meant);
            return -1;
        }
        break;
    case CIDR_MALFORMED: break;
    }
    cfg_bad(ctx, e, "bad network \"%s\" (expected address or address/prefix)", text);
    return -1;
}

static void parse_trusted(struct cfg_ctx *ctx, const config_setting_t *rl)
{
    struct cidr_set *set = &ctx->cfg->trusted_proxies;
    config_setting_t *list = get_list(ctx, rl, "trusted_proxies");
    size_t n = list != NULL ? (size_t)config_setting_length(list) : 0;

    if ((set->items = cfg_calloc(ctx, n, sizeof(*set->items))) == NULL)
        return;
    for (size_t i = 0; i < n; i++) {
        config_setting_t *e = config_setting_get_elem(list, (unsigned)i);

        if (config_setting_type(e) != CONFIG_TYPE_STRING) {
            cfg_bad(ctx, e, "must be a string");
            continue;
        }
        if (parse_network(ctx, e, &set->items[set->n]) == 0)
            set->n++;
    }
}

static void parse_tier(struct cfg_ctx *ctx, const config_setting_t *s, struct fg_tier *t)
{
    if (!config_setting_is_group(s)) {
        cfg_bad(ctx, s, "must be a group { limit = ...; window = ...; }");
        return;
    }
    check_keys(ctx, s, tier_keys);
    t->limit = (uint32_t)get_int(ctx, s, "limit", t->limit, 1, CFG_INT_MAX);
    t->window = (uint32_t)get_int(ctx, s, "window", t->window, 1, CFG_INT_MAX);
}

static void parse_tiers(struct cfg_ctx *ctx, const config_setting_t *rl)
{
    struct fg_ratelimit *r = &ctx->cfg->rate_limit;
    config_setting_t *g = get_group(ctx, rl, "tiers", NULL);
    size_t n = g != NULL ? (size_t)config_setting_length(g) : 0;

    if ((r->tiers = cfg_calloc(ctx, STD_TIERS + n, sizeof(*r->tiers))) == NULL)
        return;
    for (size_t i = 0; i < STD_TIERS; i++) {
        struct fg_tier *t = &r->tiers[r->ntiers++];
        config_setting_t *s = member(g, std_tiers[i].name);

        t->name = cfg_strdup(ctx, std_tiers[i].name);
        t->limit = std_tiers[i].limit;
        t->window = std_tiers[i].window;
        if (s != NULL)
            parse_tier(ctx, s, t);
    }
    for (size_t i = 0; i < n; i++) {
        config_setting_t *s = config_setting_get_elem(g, (unsigned)i);
        const char *name = config_setting_name(s);
        struct fg_tier *t;
        size_t k;

        for (k = 0; k < STD_TIERS && strcmp(name, std_tiers[k].name) != 0; k++)
            ;
        if (k < STD_TIERS)
            continue;
        t = &r->tiers[r->ntiers++];
        t->name = cfg_strdup(ctx, name);
        t->limit = std_tiers[1].limit;
        t->window = std_tiers[1].window;
        if (config_setting_is_group(s) && (!member(s, "limit") || !member(s, "window")))
            cfg_bad(ctx, s, "'limit' and 'window' are required");
        parse_tier(ctx, s, t);
    }
}

/* A methods list into a method mask and, optionally, the "GET, HEAD"
 * rendering used by a 405's Allow header (RFC 9110 §10.2.1). */
static void parse_methods(struct cfg_ctx *ctx, const config_setting_t *list, uint64_t *mask,
                          char **allow)
{
    struct cfg_buf b = {0};
    int n = config_setting_length(list);

    *mask = 0;
    if (n == 0)
        cfg_bad(ctx, list, "must list at least one method");
    for (int i = 0; i < n; i++) {
        config_setting_t *e = config_setting_get_elem(list, (unsigned)i);
        int m;

        if (config_setting_type(e) != CONFIG_TYPE_STRING) {
            cfg_bad(ctx, e, "must be a string");
            continue;
        }
        if ((m = cfg_method_from_name(config_setting_get_string(e))) < 0) {
            cfg_bad(ctx, e, "unknown method \"%s\"", config_setting_get_string(e));
            continue;
        }
        if (*mask & (UINT64_C(1) << m))
            continue;
        *mask |= UINT64_C(1) << m;
        if (b.len > 0)
            buf_adds(&b, ", ");
        buf_adds(&b, cfg_methods[m]);
    }
    if (allow != NULL)
        *allow = buf_finish(ctx, &b, NULL);
    else
        free(b.p);
}

/* Paths are compared after normalisation, so only a normalised-looking
 * absolute path can ever match. */
static bool is_route_path(const char *p)
{
    if (p[0] != '/')
        return false;
    for (; *p; p++)
        if ((unsigned char)*p <= 0x20 || *p == 0x7f || *p == '?' || *p == '#')
            return false;
    return true;
}

static void parse_endpoint(struct cfg_ctx *ctx, const config_setting_t *s, struct fg_endpoint *e)
{
    config_setting_t *methods = get_list(ctx, s, "methods");
    const char *path = get_required(ctx, s, "path");

    check_keys(ctx, s, endpoint_keys);
    if (path != NULL && !is_route_path(path))
        cfg_bad(ctx, member(s, "path"), "must start with '/' and contain no spaces, '?' or '#'");
    if (path == NULL || !is_route_path(path))
        path = "/";
    e->path = cfg_strdup(ctx, path);
    e->path_len = strlen(path);
    if (methods != NULL)
        parse_methods(ctx, methods, &e->methods, NULL);
    if (member(s, "limit") == NULL || member(s, "window") == NULL)
        cfg_bad(ctx, s, "'limit' and 'window' are required");
    e->limit = (uint32_t)get_int(ctx, s, "limit", 1, 1, CFG_INT_MAX);
    e->window = (uint32_t)get_int(ctx, s, "window", 1, 1, CFG_INT_MAX);
    e->key = (enum fg_rl_key)get_enum(ctx, s, "key", rlkey_names, FG_RL_KEY_IP);
}

static void parse_endpoints(struct cfg_ctx *ctx, const config_setting_t *rl)
{
    struct fg_ratelimit *r = &ctx->cfg->rate_limit;
    config_setting_t *list = get_list(ctx, rl, "endpoints");
    size_t n = list != NULL ? (size_t)config_setting_length(list) : 0;

    if ((r->endpoints = cfg_calloc(ctx, n, sizeof(*r->endpoints))) == NULL)
        return;
    for (size_t i = 0; i < n; i++) {
        config_setting_t *s = config_setting_get_elem(list, (unsigned)i);

        if (!config_setting_is_group(s)) {
            cfg_bad(ctx, s, "must be a group { path = ...; limit = ...; window = ...; }");
            continue;
        }
        parse_endpoint(ctx, s, &r->endpoints[r->nendpoints++]);
    }
}

static void parse_ratelimit(struct cfg_ctx *ctx, const config_setting_t *root)
{
    struct fg_ratelimit *r = &ctx->cfg->rate_limit;
    config_setting_t *g = get_group(ctx, root, "rate_limit", rl_keys);

    r->enabled = g != NULL;
    parse_redis(ctx, g);
    r->on_redis_failure =
        (enum fg_redis_failure)get_enum(ctx, g, "on_redis_failure", failure_names, 0);
    r->ietf_headers = get_bool(ctx, g, "ietf_headers", false);
    r->ipv6_prefix = (uint32_t)get_int(ctx, g, "ipv6_prefix", 64, 0, 128);
    parse_trusted(ctx, g);
    parse_tiers(ctx, g);
    parse_endpoints(ctx, g);
}

/* ---------------------------------------------------------------------------
 * cors
 */

static void parse_origins(struct cfg_ctx *ctx, const config_setting_t *g)
{
    struct fg_cors *c = &ctx->cfg->cors;
    config_setting_t *list = get_list(ctx, g, "origins");
    size_t n = list != NULL ? (size_t)config_setting_length(list) : 0;

    if ((c->origins = cfg_calloc(ctx, n + 1, sizeof(*c->origins))) == NULL)
        return;
    for (size_t i = 0; i < n; i++) {
        config_setting_t *e = config_setting_get_elem(list, (unsigned)i);
        const char *o = config_setting_get_string(e);

        if (o == NULL) {
            cfg_bad(ctx, e, "must be a string");
        } else if (strcmp(o, "*") == 0) {
            c->any_origin = true;
            if (c->credentials)
                cfg_bad(ctx, e, "\"*\" cannot be used with credentials = true");
        } else if (!cors_origin_wellformed(o, strlen(o))) {
            cfg_bad(ctx, e, "\"%s\" is not an origin (scheme://host[:port])", o);
        } else if ((c->origins[c->norigins] = cfg_strdup(ctx, o)) != NULL) {
            str_lower(c->origins[c->norigins++]);
        }
    }
}

static void check_header_names(struct cfg_ctx *ctx, const config_setting_t *list, char **v,
                               size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!h1_is_token(v[i], strlen(v[i])))
            cfg_bad(ctx, list, "\"%s\" is not a valid header name", v[i]);
}

static void parse_cors(struct cfg_ctx *ctx, const config_setting_t *root)
{
    struct fg_cors *c = &ctx->cfg->cors;
    config_setting_t *g = get_group(ctx, root, "cors", cors_keys);
    config_setting_t *methods, *headers, *expose;
    struct cfg_buf b = {0};
    char **ex = NULL;
    size_t nex = 0;

    c->enabled = g != NULL;
    c->credentials = get_bool(ctx, g, "credentials", true);
    parse_origins(ctx, g);
    if ((methods = get_list(ctx, g, "methods")) != NULL) {
        parse_methods(ctx, methods, &c->methods, NULL);
    } else {
        for (size_t i = 0; default_cors_methods[i] != NULL; i++)
            c->methods |= UINT64_C(1) << cfg_method_from_name(default_cors_methods[i]);
    }
    headers = get_list(ctx, g, "headers");
    get_strv(ctx, headers, headers ? NULL : default_cors_headers, &c->headers, &c->nheaders);
    check_header_names(ctx, headers, c->headers, c->nheaders);
    expose = get_list(ctx, g, "expose_headers");
    get_strv(ctx, expose, expose ? NULL : default_expose_headers, &ex, &nex);
    check_header_names(ctx, expose, ex, nex);
    for (size_t i = 0; i < nex; i++) {
        buf_adds(&b, i ? ", " : "");
        buf_adds(&b, ex[i]);
        free(ex[i]);
    }
    free(ex);
    c->expose_headers = buf_finish(ctx, &b, NULL);
    c->max_age = (uint32_t)get_int(ctx, g, "max_age", 600, 0, 86400 * 7);
}

/* ---------------------------------------------------------------------------
 * upstreams and routes
 */

/* The check's request line is written as is: a path that would break it
 * (spaces, control characters) or carry a fragment is refused here. */
static bool health_path_ok(const char *p)
{
    if (p == NULL || p[0] != '/')
        return false;
    for (; *p; p++)
        if ((unsigned char)*p <= ' ' || *p == 0x7f || *p == '#')
            return false;
    return true;
}

/* health_check = { path; interval_ms; timeout_ms; fall; rise; } (optional).
 * Every server starts healthy: the state array is zeroed. */
static void parse_health_check(struct cfg_ctx *ctx, const config_setting_t *s,
                               struct fg_upstream *u)
{
    config_setting_t *g = get_group(ctx, s, "health_check", health_keys);
    struct fg_health_check *hc;

    if (g == NULL)
        return;
    if ((hc = u->health_check = cfg_calloc(ctx, 1, sizeof(*hc))) == NULL)
        return;
    hc->path = get_str(ctx, g, "path", "/healthz");
    if (hc->path != NULL && !health_path_ok(hc->path))
        cfg_bad(ctx, member(g, "path"), "must start with '/' and contain no spaces, controls or '#'");
    hc->interval_ms = (uint32_t)get_int(ctx, g, "interval_ms", 2000, 10, 3600000);
    hc->timeout_ms = (uint32_t)get_int(ctx, g, "timeout_ms", 1000, 1, 3600000);
    hc->fall = (uint32_t)get_int(ctx, g, "fall", 3, 1, 1000);
    hc->rise = (uint32_t)get_int(ctx, g, "rise", 2, 1, 1000);
    u->health = cfg_calloc(ctx, u->nservers ? u->nservers : 1, sizeof(*u->health));
}

static void parse_upstream(struct cfg_ctx *ctx, const config_setting_t *s, struct fg_upstream *u)
{
    config_setting_t *servers;

    u->name = cfg_strdup(ctx, config_setting_name(s));
    if (!config_setting_is_group(s)) {
        cfg_bad(ctx, s, "must be a group { servers = [ ... ]; }");
        return;
    }
    check_keys(ctx, s, upstream_keys);
    servers = get_list(ctx, s, "servers");
    if (servers == NULL || config_setting_length(servers) == 0) {
        cfg_bad(ctx, servers ? servers : s, "'servers' must list at least one address");
        return;
    }
    get_addrs(ctx, s, "servers", NULL, &u->servers, &u->nservers, &u->nnames);
    u->connect_timeout_ms = (uint32_t)get_int(ctx, s, "connect_timeout_ms", 2000, 1, CFG_INT_MAX);
    u->read_timeout_ms = (uint32_t)get_int(ctx, s, "read_timeout_ms", 30000, 1, CFG_INT_MAX);
    u->keepalive = (uint32_t)get_int(ctx, s, "keepalive", 64, 0, 65535);
    u->max_tries = (uint32_t)get_int(ctx, s, "max_tries", 2, 1, FG_UPSTREAM_TRIES_MAX);
    u->max_fails = (uint32_t)get_int(ctx, s, "max_fails", 3, 0, 1000);
    u->fail_timeout_ms = (uint32_t)get_int(ctx, s, "fail_timeout_ms", 10000, 1, CFG_INT_MAX);
    parse_health_check(ctx, s, u);
}

static void parse_upstreams(struct cfg_ctx *ctx, const config_setting_t *root)
{
    struct fg_config *cfg = ctx->cfg;
    config_setting_t *g = get_group(ctx, root, "upstreams", NULL);
    size_t n = g != NULL ? (size_t)config_setting_length(g) : 0;

    /* Allocated once: routes keep pointers into this array. */
    if ((cfg->upstreams = cfg_calloc(ctx, n, sizeof(*cfg->upstreams))) == NULL)
        return;
    for (size_t i = 0; i < n; i++) {
        struct fg_upstream *u = &cfg->upstreams[cfg->nupstreams];

        u->index = cfg->nupstreams++;
        parse_upstream(ctx, config_setting_get_elem(g, (unsigned)i), u);
    }
}

static struct fg_upstream *find_upstream(struct fg_config *cfg, const char *name)
{
    for (size_t i = 0; i < cfg->nupstreams; i++)
        if (cfg->upstreams[i].name != NULL && strcmp(cfg->upstreams[i].name, name) == 0)
            return &cfg->upstreams[i];
    return NULL;
}

/*
 * A host name in the configuration is held to the rule a request's Host is
 * (route_host_normalize): a name that no request could carry would make a
 * route or a preview pattern that never matches. NAME[0..LEN) normalised
 * into OUT (lowercase, one trailing dot dropped); no port, no IPv6 literal
 * (those are addresses, not names). Returns the length, or -1.
 */
static ssize_t host_name(const char *name, size_t len, char out[ROUTE_HOST_MAX + 1])
{
    int port;
    ssize_t n = route_host_normalize(name, len, out, ROUTE_HOST_MAX + 1, &port);

    return n > 0 && port == -1 && out[0] != '[' ? n : -1;
}

/* Is PREFIX "x" SUFFIX a host name? Writes it, normalised, to OUT. {name}
 * stands in as "x", a name route_preview_name accepts. */
static ssize_t template_host(const char *prefix, const char *suffix, size_t suffix_len,
                             char out[ROUTE_HOST_MAX + 1])
{
    char t[ROUTE_HOST_MAX + 2];
    int n = snprintf(t, sizeof(t), "%sx%.*s", prefix, (int)suffix_len, suffix);

    return n > 0 && (size_t)n < sizeof(t) ? host_name(t, (size_t)n, out) : -1;
}

/* An auth mode other than "none" needs keys to verify tokens with. */
static enum fg_auth_mode get_auth(struct cfg_ctx *ctx, const config_setting_t *g,
                                  enum fg_auth_mode def)
{
    enum fg_auth_mode a = (enum fg_auth_mode)get_enum(ctx, g, "auth", auth_names, (int)def);

    if (a != FG_AUTH_NONE && ctx->cfg->jwt.nkeys == 0)
        cfg_bad(ctx, member(g, "auth") ? member(g, "auth") : g,
                "auth \"%s\" needs a jwt group with keys (or set auth = \"none\")",
                auth_names[a]);
    return a;
}

static void parse_route(struct cfg_ctx *ctx, const config_setting_t *s, struct fg_route *r)
{
    const char *host = get_cstr(ctx, s, "host", "");
    const char *path = get_required(ctx, s, "path");
    const char *up = get_required(ctx, s, "upstream");
    config_setting_t *methods = get_list(ctx, s, "methods");
    char name[ROUTE_HOST_MAX + 1];

    check_keys(ctx, s, route_keys);
    if (host[0] != '\0' && host_name(host, strlen(host), name) < 0) {
        cfg_bad(ctx, member(s, "host"), "\"%s\" is not a host name", host);
        name[0] = '\0';
    }
    r->host = cfg_strdup(ctx, host[0] != '\0' ? name : "");
    r->host_len = r->host != NULL ? strlen(r->host) : 0;
    if (path != NULL && !is_route_path(path))
        cfg_bad(ctx, member(s, "path"), "must start with '/' and contain no spaces, '?' or '#'");
    if (path == NULL || !is_route_path(path))
        path = "/";
    r->path = cfg_strdup(ctx, path);
    r->path_len = strlen(path);
    if ((r->label = malloc(r->host_len + r->path_len + 1)) == NULL) {
        cfg_oom(ctx);
    } else {
        memcpy(r->label, r->host ? r->host : "", r->host_len);
        memcpy(r->label + r->host_len, path, r->path_len + 1);
    }
    if (up != NULL && (r->upstream = find_upstream(ctx->cfg, up)) == NULL)
        cfg_bad(ctx, member(s, "upstream"), "no upstream named \"%s\"", up);
    r->read_timeout_ms = (uint32_t)get_int(ctx, s, "read_timeout_ms", 0, 1, CFG_INT_MAX);
    r->auth = get_auth(ctx, s, FG_AUTH_REQUIRED);
    r->rate_limit = get_bool(ctx, s, "rate_limit", true);
    if (methods != NULL)
        parse_methods(ctx, methods, &r->methods, &r->allow);
}

/* Longest path first so the first prefix match is the longest one; at equal
 * length a route for a named host beats a host-less one; then file order. */
static int route_cmp(const void *a, const void *b)
{
    const struct fg_route *x = a, *y = b;

    if (x->path_len != y->path_len)
        return x->path_len > y->path_len ? -1 : 1;
    if ((x->host_len == 0) != (y->host_len == 0))
        return x->host_len == 0 ? 1 : -1;
    return x->index < y->index ? -1 : x->index > y->index;
}

static void check_duplicate_route(struct cfg_ctx *ctx, const config_setting_t *s, size_t i)
{
    struct fg_route *r = &ctx->cfg->routes[i];

    for (size_t k = 0; k < i; k++) {
        struct fg_route *o = &ctx->cfg->routes[k];
        if (r->host && o->host && r->path && o->path && strcmp(r->host, o->host) == 0 &&
            strcmp(r->path, o->path) == 0)
            cfg_bad(ctx, s, "duplicate route (host \"%s\", path \"%s\" already in routes[%zu])",
                    r->host, r->path, o->index);
    }
}

static void parse_routes(struct cfg_ctx *ctx, const config_setting_t *root)
{
    struct fg_config *cfg = ctx->cfg;
    config_setting_t *list = get_list(ctx, root, "routes");
    size_t n = list != NULL ? (size_t)config_setting_length(list) : 0;

    if ((cfg->routes = cfg_calloc(ctx, n, sizeof(*cfg->routes))) == NULL)
        return;
    for (size_t i = 0; i < n; i++) {
        config_setting_t *s = config_setting_get_elem(list, (unsigned)i);

        if (!config_setting_is_group(s)) {
            cfg_bad(ctx, s, "must be a group { path = ...; upstream = ...; }");
            continue;
        }
        cfg->routes[cfg->nroutes].index = i;
        parse_route(ctx, s, &cfg->routes[cfg->nroutes]);
        check_duplicate_route(ctx, s, cfg->nroutes);
        cfg->nroutes++;
    }
    qsort(cfg->routes, cfg->nroutes, sizeof(*cfg->routes), route_cmp);
}

/* ---------------------------------------------------------------------------
 * previews, resolver, log
 */

/* Split TEMPLATE around its single "{name}". Returns 0, or -1 when there is
 * not exactly one or another brace remains. */
static int split_template(const char *t, char **prefix, const char **rest)
{
    const char *at = strstr(t, "{name}");

    if (at == NULL || strstr(at + 6, "{name}") != NULL)
        return -1;
    for (const char *p = t; *p; p++)
        if ((*p == '{' || *p == '}') && (p < at || p >= at + 6))
            return -1;
    if ((*prefix = strndup(t, (size_t)(at - t))) == NULL)
        return -1;
    *rest = at + 6;
    return 0;
}

static void parse_preview_host(struct cfg_ctx *ctx, const config_setting_t *g)
{
    struct fg_previews *p = &ctx->cfg->previews;
    const char *host = get_required(ctx, g, "host");
    const char *rest;
    char name[ROUTE_HOST_MAX + 1];

    if (host == NULL)
        return;
    if (split_template(host, &p->host_prefix, &rest) != 0 || rest[0] == '\0' ||
        template_host(p->host_prefix, rest, strlen(rest), name) < 0) {
        cfg_bad(ctx, member(g, "host"),
                "\"%s\" must contain \"{name}\" once, followed by a domain suffix", host);
        return;
    }
    /* As requests' hosts are matched: lowercase, no trailing dot. */
    p->host_suffix = cfg_strdup(ctx, name + strlen(p->host_prefix) + 1);
    str_lower(p->host_prefix);
}

static void parse_preview_upstream(struct cfg_ctx *ctx, const config_setting_t *g)
{
    struct fg_previews *p = &ctx->cfg->previews;
    const char *up = get_required(ctx, g, "upstream");
    const char *rest, *colon;
    char *end, name[ROUTE_HOST_MAX + 1];
    long port = 0;

    if (up == NULL)
        return;
    if (split_template(up, &p->upstream_prefix, &rest) == 0 && (colon = strrchr(rest, ':'))) {
        port = isdigit((unsigned char)colon[1]) ? strtol(colon + 1, &end, 10) : 0;
        if (port >= 1 && port <= 65535 && *end == '\0' &&
            template_host(p->upstream_prefix, rest, (size_t)(colon - rest), name) >= 0) {
            p->upstream_suffix = strndup(rest, (size_t)(colon - rest));
            p->upstream_port = (int)port;
            if (p->upstream_suffix != NULL)
                return;
        }
    }
    cfg_bad(ctx, member(g, "upstream"),
            "\"%s\" must contain \"{name}\" once and end in \":port\"", up);
}

/* The preview block: the platform's headers minus the two that would stop
 * its app from framing a preview, plus the preview's own frame-ancestors. */
static void render_preview_blocks(struct cfg_ctx *ctx, struct fg_previews *p,
                                  const struct fg_headers *h)
{
    for (int tls = 0; tls <= 1; tls++) {
        struct cfg_buf b = {0};

        if (tls)
            block_add(&b, "Strict-Transport-Security", h->hsts);
        block_add(&b, "X-Content-Type-Options", h->content_type_options);
        block_add(&b, "X-XSS-Protection", h->xss_protection);
        block_add(&b, "Referrer-Policy", h->referrer_policy);
        if (p->frame_ancestors && p->frame_ancestors[0]) {
            buf_adds(&b, "Content-Security-Policy: frame-ancestors ");
            buf_adds(&b, p->frame_ancestors);
            buf_adds(&b, "\r\n");
        }
        block_add(&b, "Server", h->server);
        if (tls)
            p->block_https = buf_finish(ctx, &b, &p->block_https_len);
        else
            p->block_http = buf_finish(ctx, &b, &p->block_http_len);
    }
}

static void parse_previews(struct cfg_ctx *ctx, const config_setting_t *root)
{
    struct fg_previews *p = &ctx->cfg->previews;
    config_setting_t *g = get_group(ctx, root, "previews", previews_keys);

    p->enabled = g != NULL;
    p->strip_credentials = get_bool(ctx, g, "strip_credentials", true);
    get_strv(ctx, get_list(ctx, g, "platform_cookies"),
             member(g, "platform_cookies") ? NULL : default_platform_cookies,
             &p->platform_cookies, &p->nplatform_cookies);
    p->frame_ancestors = get_value(ctx, g, "frame_ancestors", "https://app.example.com");
    p->websocket = get_bool(ctx, g, "websocket", true);
    if (g == NULL)
        return;
    p->auth = get_auth(ctx, g, FG_AUTH_NONE);
    parse_preview_host(ctx, g);
    parse_preview_upstream(ctx, g);
    render_preview_blocks(ctx, p, &ctx->cfg->headers);
    ctx->cfg->preview_route = (struct fg_route){
        .host = "", .path = "/", .path_len = 1, .auth = p->auth, .rate_limit = true,
        .index = ctx->cfg->nroutes, .label = "preview",
    };
}

/* "IP", "IP:port" or "[IPv6]:port". */
static bool is_nameserver(const char *s)
{
    struct in6_addr a6;
    struct fg_sockaddr sa = {0};
    bool ok;

    if (inet_pton(AF_INET, s, &a6) == 1 || inet_pton(AF_INET6, s, &a6) == 1)
        return true;
    ok = parse_sockaddr(s, &sa) == 0;
    free(sa.text);
    return ok;
}

static void parse_resolver(struct cfg_ctx *ctx, const config_setting_t *root)
{
    struct fg_resolver *r = &ctx->cfg->resolver;
    config_setting_t *g = get_group(ctx, root, "resolver", resolver_keys);
    config_setting_t *ns = get_list(ctx, g, "nameservers");

    get_strv(ctx, ns, NULL, &r->nameservers, &r->nnameservers);
    for (size_t i = 0; i < r->nnameservers; i++)
        if (!is_nameserver(r->nameservers[i]))
            cfg_bad(ctx, ns, "bad nameserver \"%s\" (expected IP, IP:port or [IPv6]:port)",
                    r->nameservers[i]);
    r->hosts_file = get_str(ctx, g, "hosts_file", "");
    if (r->hosts_file != NULL && r->hosts_file[0] != '\0' && !file_readable(r->hosts_file))
        cfg_bad(ctx, member(g, "hosts_file"), "cannot read \"%s\": %s", r->hosts_file,
                file_error(errno));
}

static void parse_log(struct cfg_ctx *ctx, const config_setting_t *root)
{
    struct fg_log *l = &ctx->cfg->log;
    config_setting_t *g = get_group(ctx, root, "log", log_keys);

    l->access = get_str(ctx, g, "access", "stdout");
    l->error = get_str(ctx, g, "error", "stderr");
    if (l->error != NULL && l->error[0] == '\0')
        cfg_bad(ctx, member(g, "error"), "must be \"stderr\" or a path");
    l->level = (enum fg_log_level)get_enum(ctx, g, "level", level_names, FG_LOG_INFO);
}

static void parse_reload(struct cfg_ctx *ctx, const config_setting_t *root)
{
    struct fg_reload *r = &ctx->cfg->reload;
    config_setting_t *g = get_group(ctx, root, "reload", reload_keys);

    r->watch = get_bool(ctx, g, "watch", true);
    /* Below 10 ms a burst of writes is no longer one reload; above ten
     * minutes a renewed certificate would wait longer than anyone expects. */
    r->debounce_ms = (uint32_t)get_int(ctx, g, "debounce_ms", 1000, 10, 600000);
}

/* The bounds keep a connection's memory and a client's abuse budget
 * sane: RFC 9113 6.5.2 caps a window at 2^31-1; a header list under 1 KiB
 * fits no browser's cookies; a stream limit above 1024 buys a client
 * nothing but a larger share of flowgate. */
static void parse_http2(struct cfg_ctx *ctx, const config_setting_t *root)
{
    struct fg_http2 *h = &ctx->cfg->http2;
    config_setting_t *g = get_group(ctx, root, "http2", http2_keys);

    h->enabled = get_bool(ctx, g, "enabled", true);
    h->max_concurrent_streams = (uint32_t)get_int(ctx, g, "max_concurrent_streams", 128, 1, 1024);
    h->initial_window_bytes =
        (uint32_t)get_int(ctx, g, "initial_window_bytes", 65535, 1024, 16777216);
    h->max_header_list_bytes =
        (uint32_t)get_int(ctx, g, "max_header_list_bytes", 16384, 1024, 1048576);
    h->max_resets_per_second = (uint32_t)get_int(ctx, g, "max_resets_per_second", 100, 1, 100000);
    h->idle_timeout_ms = (uint32_t)get_int(ctx, g, "idle_timeout_ms", 60000, 100, CFG_INT_MAX);
}

/* ---------------------------------------------------------------------------
 * Files to watch
 */

/* Add FILE to cfg->includes unless it is there already. */
static void add_include(struct cfg_ctx *ctx, const char *file)
{
    struct fg_config *cfg = ctx->cfg;
    char *copy;
    char **v;

    for (size_t i = 0; i < cfg->nincludes; i++)
        if (strcmp(cfg->includes[i], file) == 0)
            return;
    if ((copy = cfg_strdup(ctx, file)) == NULL)
        return;
    if ((v = realloc(cfg->includes, (cfg->nincludes + 1) * sizeof(*v))) == NULL) {
        cfg_oom(ctx);
        free(copy);
        return;
    }
    v[cfg->nincludes++] = copy;
    cfg->includes = v;
}

/* Remember every file other than MAIN that a setting came from: an
 * @include'd file is part of the configuration, so its change must reload
 * too. libconfig keeps no list of them, only each setting's source file. */
static void collect_includes(struct cfg_ctx *ctx, const config_setting_t *s, const char *main)
{
    const char *file = config_setting_source_file(s);
    int n = config_setting_is_aggregate(s) ? config_setting_length(s) : 0;

    if (file != NULL && strcmp(file, main) != 0)
        add_include(ctx, file);
    for (int i = 0; i < n; i++)
        collect_includes(ctx, config_setting_get_elem(s, (unsigned)i), main);
}

/* Add PATH to the watch list unless it is NULL, "" or already there (a
 * certificate and its key may be one PEM file). */
static void watch_add(struct fg_config *cfg, const char *path)
{
    if (path == NULL || path[0] == '\0')
        return;
    for (size_t i = 0; i < cfg->nwatch_paths; i++)
        if (strcmp(cfg->watch_paths[i], path) == 0)
            return;
    cfg->watch_paths[cfg->nwatch_paths++] = path;
}

/* The files a reload reads again: what reload.watch keeps an eye on. */
static void build_watch_paths(struct cfg_ctx *ctx)
{
    struct fg_config *cfg = ctx->cfg;
    size_t max = 2 + cfg->nincludes + 2 * cfg->tls.ncerts + cfg->jwt.nkeys;

    if ((cfg->watch_paths = cfg_calloc(ctx, max, sizeof(*cfg->watch_paths))) == NULL)
        return;
    watch_add(cfg, cfg->path);
    for (size_t i = 0; i < cfg->nincludes; i++)
        watch_add(cfg, cfg->includes[i]);
    for (size_t i = 0; i < cfg->tls.ncerts; i++) {
        watch_add(cfg, cfg->tls.certs[i].cert_file);
        watch_add(cfg, cfg->tls.certs[i].key_file);
    }
    for (size_t i = 0; i < cfg->jwt.nkeys; i++)
        watch_add(cfg, cfg->jwt.keys[i].secret_file);
    /* (resolver.hosts_file is not here: the resolver reads it again by
     * itself when it changes, without a reload.) */
}

/* ---------------------------------------------------------------------------
 * Snapshot lifetime
 */

static void free_strv(char **v, size_t n)
{
    for (size_t i = 0; v != NULL && i < n; i++)
        free(v[i]);
    free(v);
}

static void free_tls_headers_limits(struct fg_config *cfg)
{
    for (size_t i = 0; cfg->tls.certs != NULL && i < cfg->tls.ncerts; i++) {
        free(cfg->tls.certs[i].cert_file);
        free(cfg->tls.certs[i].key_file);
    }
    free(cfg->tls.certs);
    free(cfg->tls.ciphers);
    free(cfg->headers.hsts);
    free(cfg->headers.frame_options);
    free(cfg->headers.content_type_options);
    free(cfg->headers.xss_protection);
    free(cfg->headers.referrer_policy);
    free(cfg->headers.csp);
    free(cfg->headers.server);
    free(cfg->headers.block_https);
    free(cfg->headers.block_http);
}

static void free_jwt(struct fg_jwt *j)
{
    for (size_t i = 0; j->keys != NULL && i < j->nkeys; i++) {
        free(j->keys[i].kid);
        free(j->keys[i].secret_file);
        secret_free(j->keys[i].secret, j->keys[i].secret_len);
    }
    free(j->keys);
    for (size_t i = 0; j->forward_claims != NULL && i < j->nforward_claims; i++) {
        free(j->forward_claims[i].header);
        free(j->forward_claims[i].claim);
    }
    free(j->forward_claims);
    free(j->issuer);
    free(j->audience);
    free(j->token_type);
    free(j->type_claim);
    free(j->tier_claim);
    free(j->cookie);
}

static void free_ratelimit(struct fg_ratelimit *r)
{
    free(r->redis.address);
    free(r->redis.host);
    free(r->redis.unix_path);
    if (r->redis.password != NULL)
        secret_free(r->redis.password, strlen(r->redis.password));
    if (r->redis.username != NULL)
        secret_free(r->redis.username, strlen(r->redis.username));
    free(r->redis.key_prefix);
    for (size_t i = 0; r->tiers != NULL && i < r->ntiers; i++)
        free(r->tiers[i].name);
    free(r->tiers);
    for (size_t i = 0; r->endpoints != NULL && i < r->nendpoints; i++)
        free(r->endpoints[i].path);
    free(r->endpoints);
}

static void free_routing(struct fg_config *cfg)
{
    for (size_t i = 0; cfg->upstreams != NULL && i < cfg->nupstreams; i++) {
        free(cfg->upstreams[i].name);
        free_sockaddrs(cfg->upstreams[i].servers, cfg->upstreams[i].nservers);
        if (cfg->upstreams[i].health_check != NULL)
            free(cfg->upstreams[i].health_check->path);
        free(cfg->upstreams[i].health_check);
        free(cfg->upstreams[i].health);
    }
    free(cfg->upstreams);
    for (size_t i = 0; cfg->routes != NULL && i < cfg->nroutes; i++) {
        free(cfg->routes[i].host);
        free(cfg->routes[i].path);
        free(cfg->routes[i].allow);
        free(cfg->routes[i].label);
    }
    free(cfg->routes);
    free(cfg->previews.host_prefix);
    free(cfg->previews.host_suffix);
    free(cfg->previews.upstream_prefix);
    free(cfg->previews.upstream_suffix);
    free_strv(cfg->previews.platform_cookies, cfg->previews.nplatform_cookies);
    free(cfg->previews.frame_ancestors);
    free(cfg->previews.block_https);
    free(cfg->previews.block_http);
}

static void cfg_free(struct fg_config *cfg)
{
    if (cfg == NULL)
        return;
    free(cfg->path);
    free_sockaddrs(cfg->https, cfg->nhttps);
    free_sockaddrs(cfg->http, cfg->nhttp);
    free_sockaddrs(cfg->admin, cfg->admin ? 1 : 0);
    free_tls_headers_limits(cfg);
    free_jwt(&cfg->jwt);
    free_ratelimit(&cfg->rate_limit);
    cidr_set_free(&cfg->trusted_proxies);
    free_strv(cfg->cors.origins, cfg->cors.norigins);
    free_strv(cfg->cors.headers, cfg->cors.nheaders);
    free(cfg->cors.expose_headers);
    free_routing(cfg);
    free_strv(cfg->resolver.nameservers, cfg->resolver.nnameservers);
    free(cfg->resolver.hosts_file);
    free(cfg->log.access);
    free(cfg->log.error);
    free(cfg->watch_paths);
    free_strv(cfg->includes, cfg->nincludes);
    free(cfg);
}

struct fg_config *cfg_ref(struct fg_config *cfg)
{
    if (cfg != NULL)
        __atomic_add_fetch(&cfg->refcount, 1, __ATOMIC_RELAXED);
    return cfg;
}

void cfg_unref(struct fg_config *cfg)
{
    /* acq_rel: the last holder must see every other holder's reads finished. */
    if (cfg != NULL && __atomic_sub_fetch(&cfg->refcount, 1, __ATOMIC_ACQ_REL) == 0)
        cfg_free(cfg);
}

/* ---------------------------------------------------------------------------
 * Loading
 */

/* Walk the parsed tree into a snapshot. Order matters where sections refer
 * to each other: listeners before tls, jwt before routes and previews,
 * upstreams before routes. */
static struct fg_config *cfg_build(struct cfg_ctx *ctx, config_t *lc, const char *path)
{
    config_setting_t *root = config_root_setting(lc);

    if ((ctx->cfg = cfg_calloc(ctx, 1, sizeof(*ctx->cfg))) == NULL)
        return NULL;
    ctx->cfg->refcount = 1;
    ctx->cfg->path = cfg_strdup(ctx, path);
    check_keys(ctx, root, top_keys);
    parse_top(ctx, root);
    parse_listen(ctx, root);
    parse_tls(ctx, root);
    parse_redirect(ctx, root);
    parse_headers(ctx, root);
    parse_limits(ctx, root);
    parse_jwt(ctx, root);
    parse_ratelimit(ctx, root);
    parse_cors(ctx, root);
    parse_upstreams(ctx, root);
    parse_routes(ctx, root);
    parse_previews(ctx, root);
    parse_resolver(ctx, root);
    parse_log(ctx, root);
    parse_reload(ctx, root);
    parse_http2(ctx, root);
    collect_includes(ctx, root, path);
    build_watch_paths(ctx);
    if (ctx->nmsgs + ctx->ndropped > 0) {
        cfg_free(ctx->cfg);
        return NULL;
    }
    return ctx->cfg;
}

static void report_parse_error(struct cfg_ctx *ctx, config_t *lc)
{
    const char *file = config_error_file(lc) ? config_error_file(lc) : ctx->name;

    if (config_error_type(lc) == CONFIG_ERR_FILE_IO)
        cfg_report(ctx, file, 0, "cannot read configuration: %s", strerror(errno));
    else
        cfg_report(ctx, file, config_error_line(lc), "%s",
                   config_error_text(lc) ? config_error_text(lc) : "syntax error");
}

static void ctx_init(struct cfg_ctx *ctx, const char *name, char *err, size_t errlen)
{
    memset(ctx, 0, sizeof(*ctx));
    ctx->name = name;
    ctx->err = err;
    ctx->errlen = errlen;
    if (err != NULL && errlen > 0)
        err[0] = '\0';
}

struct fg_config *cfg_load(const char *path, char *err, size_t errlen)
{
    struct fg_config *cfg = NULL;
    struct cfg_ctx ctx;
    config_t lc;

    ctx_init(&ctx, path, err, errlen);
    config_init(&lc);
    errno = 0;
    if (config_read_file(&lc, path) != CONFIG_TRUE)
        report_parse_error(&ctx, &lc);
    else
        cfg = cfg_build(&ctx, &lc, path);
    cfg_flush(&ctx);
    config_destroy(&lc);
    return cfg;
}

struct fg_config *cfg_load_string(const char *text, const char *name, char *err, size_t errlen)
{
    struct fg_config *cfg = NULL;
    struct cfg_ctx ctx;
    config_t lc;

    ctx_init(&ctx, name, err, errlen);
    config_init(&lc);
    if (config_read_string(&lc, text) != CONFIG_TRUE)
        report_parse_error(&ctx, &lc);
    else
        cfg = cfg_build(&ctx, &lc, name);
    cfg_flush(&ctx);
    config_destroy(&lc);
    return cfg;
}
