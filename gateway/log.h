/*
 * log.h - the error log (leveled text lines) and the access log (one JSON
 * object a line, built with jansson). Both are safe to call from any worker
 * thread; each line is written with one write(2) so lines never interleave.
 * Nothing secret is ever passed in: the caller gives the path without its
 * query string values that look like tokens (log_redact_query) and never a
 * header value.
 */
#ifndef FG_LOG_H
#define FG_LOG_H

#include <stddef.h>
#include <stdint.h>

#include "cfg.h"

/* Can the files CFG names be opened for appending? 0 or -1 with ERR; nothing
 * changes (a reload checks before it commits to anything). */
int log_check(const struct fg_log *cfg, char *err, size_t errlen);

/* Open (or reopen, on SIGUSR1) the files CFG->log names. 0 or -1 with ERR. */
int log_open(const struct fg_log *cfg, char *err, size_t errlen);
void log_reopen(void);  /* reopen the same paths (SIGUSR1); async-safe caller: main loop */
void log_close(void);

void log_set_level(enum fg_log_level level);
void log_msg(enum fg_log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
#define log_error(...) log_msg(FG_LOG_ERROR, __VA_ARGS__)
#define log_warn(...) log_msg(FG_LOG_WARN, __VA_ARGS__)
#define log_info(...) log_msg(FG_LOG_INFO, __VA_ARGS__)
#define log_debug(...) log_msg(FG_LOG_DEBUG, __VA_ARGS__)

#define LOG_USER_AGENT_MAX 256 /* longest User-Agent logged: a long one is cut */

/* One access-log record. Strings are (pointer, length) slices, not
 * NUL-terminated; NULL pointer = field omitted (JSON null). */
struct log_access_rec {
    double time;             /* request start, seconds since the epoch */
    const char *request_id; size_t request_id_len;
    const char *client_ip;   /* textual */
    const char *method; size_t method_len;
    const char *host; size_t host_len;
    const char *route;       /* the matched route's label, or NULL */
    const char *path; size_t path_len;   /* normalised path */
    const char *query; size_t query_len; /* raw query (redacted by log_access) */
    int status;
    uint64_t bytes_in;       /* request bytes read from the client */
    uint64_t bytes_out;      /* response bytes written to the client */
    double duration_ms;
    const char *upstream;    /* upstream server "host:port" or NULL */
    double upstream_ms;      /* < 0 = none */
    const char *user; size_t user_len;   /* sub */
    const char *tier;
    const char *ratelimit;   /* outcome or NULL */
    const char *tls_version; /* NULL on plain listeners */
    const char *sni;         /* TLS server name the client asked for, or NULL */
    const char *protocol;    /* "HTTP/1.1", "HTTP/1.0" */
    const char *user_agent; size_t user_agent_len; /* cut to LOG_USER_AGENT_MAX */
    int upstream_status;     /* the upstream's final status; 0 = none */
    const char *error;       /* flowgate error code or reason, NULL when none */
};

/* Write one access-log line (no-op when access logging is off). The query
 * string keeps parameter names, and values of parameters whose name or value
 * looks like a credential (token, jwt, key, secret, password, auth, code,
 * session, signature, or a value with two dots like a JWT) become "REDACTED". */
void log_access(const struct log_access_rec *rec);

/* Redact QUERY into OUT (as above). Returns the length written. */
size_t log_redact_query(const char *query, size_t len, char *out, size_t outcap);

#endif
