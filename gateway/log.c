/*
 * log.c - the error log and the access log.
 *
 * Each sink writes through one file descriptor number that never changes
 * once workers run: reopening (SIGUSR1) or switching files dup2()s the new
 * file onto that number, which is atomic, so a worker's write(2) lands in
 * either the old or the new file and never on a closed or reused descriptor.
 * No lock is taken on the logging path.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "log.h"

#define LOG_LINE_MAX 2048     /* an error-log line; longer messages are cut */
#define LOG_ACCESS_STACK 8192 /* an access-log line rendered without malloc */
#define LOG_REDACTED "REDACTED"

struct log_sink {
    _Atomic int fd; /* where lines go; -1 = off */
    int own_fd;     /* our private descriptor number, -1 until a file is opened */
    char *path;     /* the file, NULL for stdout/stderr/off: what log_reopen reopens */
};

static struct log_sink log_error_sink = {.fd = 2, .own_fd = -1, .path = NULL};
static struct log_sink log_access_sink = {.fd = -1, .own_fd = -1, .path = NULL};
static _Atomic int log_level = FG_LOG_INFO;

static const char *const log_level_names[] = {"error", "warn", "info", "debug"};

/* Writes all of BUF, retrying on EINTR and short writes. A line that cannot
 * be written is dropped: logging must never stop a request. */
static void log_write(int fd, const char *buf, size_t len) {
    while (len > 0) {
        ssize_t n = write(fd, buf, len);

        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return;
        buf += n;
        len -= (size_t)n;
    }
}

/* ---- sinks ---------------------------------------------------------------- */

/* Points SINK at TARGET: "" (off), "stdout", "stderr" or a path. */
static int log_sink_set(struct log_sink *sink, const char *target, char *err, size_t errlen) {
    char *path = NULL;
    int fd;

    if (target[0] == '\0') {
        atomic_store(&sink->fd, -1);
        free(sink->path);
        sink->path = NULL;
        return 0;
    }
    if (strcmp(target, "stdout") == 0) {
        fd = 1;
    } else if (strcmp(target, "stderr") == 0) {
        fd = 2;
    } else {
        fd = open(target, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
        if (fd < 0) {
            snprintf(err, errlen, "%s: cannot open log file: %s", target, strerror(errno));
            return -1;
        }
        if ((path = strdup(target)) == NULL) {
            close(fd);
            snprintf(err, errlen, "%s: out of memory", target);
            return -1;
        }
    }
    if (sink->own_fd < 0 && fd > 2) {
        sink->own_fd = fd; /* first file: its number becomes ours */
    } else if (sink->own_fd >= 0) {
        if (dup2(fd, sink->own_fd) < 0) {
            snprintf(err, errlen, "%s: dup2: %s", target, strerror(errno));
            if (fd > 2)
                close(fd);
            free(path);
            return -1;
        }
        if (fd > 2)
            close(fd);
        fd = sink->own_fd;
    }
    atomic_store(&sink->fd, fd);
    free(sink->path);
    sink->path = path;
    return 0;
}

int log_check(const struct fg_log *cfg, char *err, size_t errlen) {
    const char *targets[] = {cfg->error, cfg->access};

    for (size_t i = 0; i < 2; i++) {
        const char *t = targets[i];
        if (t == NULL || t[0] == '\0' || strcmp(t, "stdout") == 0 || strcmp(t, "stderr") == 0)
            continue;
        int fd = open(t, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
        if (fd < 0) {
            snprintf(err, errlen, "%s: cannot open log file: %s", t, strerror(errno));
            return -1;
        }
        close(fd);
    }
    return 0;
}

int log_open(const struct fg_log *cfg, char *err, size_t errlen) {
    const char *error = cfg->error != NULL && cfg->error[0] != '\0' ? cfg->error : "stderr";

    if (log_sink_set(&log_error_sink, error, err, errlen) != 0)
        return -1;
    if (log_sink_set(&log_access_sink, cfg->access != NULL ? cfg->access : "", err, errlen) != 0)
        return -1;
    log_set_level(cfg->level);
    return 0;
}

/* Same file names, new files: what logrotate expects after renaming them. */
void log_reopen(void) {
    struct log_sink *sinks[] = {&log_error_sink, &log_access_sink};
    char err[512];

    for (size_t i = 0; i < sizeof(sinks) / sizeof(sinks[0]); i++) {
        char *path = sinks[i]->path;

        if (path == NULL)
            continue;
        sinks[i]->path = NULL; /* log_sink_set frees the old copy */
        if (log_sink_set(sinks[i], path, err, sizeof(err)) != 0) {
            sinks[i]->path = path; /* keep writing to the old file, retry next time */
            log_error("log reopen: %s", err);
            continue;
        }
        free(path);
    }
}

/* Only after every worker has stopped. */
void log_close(void) {
    struct log_sink *sinks[] = {&log_error_sink, &log_access_sink};

    for (size_t i = 0; i < sizeof(sinks) / sizeof(sinks[0]); i++) {
        atomic_store(&sinks[i]->fd, -1);
        if (sinks[i]->own_fd >= 0)
            close(sinks[i]->own_fd);
        sinks[i]->own_fd = -1;
        free(sinks[i]->path);
        sinks[i]->path = NULL;
    }
    atomic_store(&log_error_sink.fd, 2);
}

/* ---- error log ------------------------------------------------------------ */

void log_set_level(enum fg_log_level level) { atomic_store(&log_level, (int)level); }

/* Copies MSG into OUT with control characters as \xNN, so a client-supplied
 * value inside a message cannot forge a line. Returns the length written. */
static size_t log_escape(const char *msg, char *out, size_t cap) {
    static const char hex[] = "0123456789abcdef";
    size_t o = 0;

    for (const unsigned char *p = (const unsigned char *)msg; *p && o + 4 < cap; p++) {
        if (*p < 0x20 || *p == 0x7f) {
            out[o++] = '\\';
            out[o++] = 'x';
            out[o++] = hex[*p >> 4];
            out[o++] = hex[*p & 15];
        } else {
            out[o++] = (char)*p;
        }
    }
    return o;
}

void log_msg(enum fg_log_level level, const char *fmt, ...) {
    char msg[LOG_LINE_MAX], line[LOG_LINE_MAX + 64];
    int fd = atomic_load(&log_error_sink.fd);
    time_t now = time(NULL);
    struct tm tm;
    size_t n;
    va_list ap;

    if ((unsigned)level > FG_LOG_DEBUG || (int)level > atomic_load(&log_level) || fd < 0)
        return;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    gmtime_r(&now, &tm);
    n = strftime(line, sizeof(line), "%Y-%m-%dT%H:%M:%SZ ", &tm);
    n += (size_t)snprintf(line + n, sizeof(line) - n, "[%s] ", log_level_names[level]);
    n += log_escape(msg, line + n, sizeof(line) - n - 1);
    line[n++] = '\n';
    log_write(fd, line, n);
}

/* ---- query redaction ------------------------------------------------------ */

static const char *const log_secret_words[] = {
    "token", "jwt",  "key",     "secret",    "password",   "passwd",
    "auth",  "code", "session", "signature", "credential",
};

static int log_hex(char c) {
    if (c >= '0' && c <= '9')
        return c - '0';
    c = (char)(c | 0x20);
    return c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

/* Whether NAME (percent-decoded, case-insensitive) contains a secret word. */
static bool log_name_is_secret(const char *name, size_t len) {
    char dec[64];
    size_t n = 0;

    for (size_t i = 0; i < len && n < sizeof(dec) - 1; i++) {
        int hi = i + 2 < len ? log_hex(name[i + 1]) : -1;
        int lo = i + 2 < len ? log_hex(name[i + 2]) : -1;

        if (name[i] == '%' && hi >= 0 && lo >= 0) {
            dec[n++] = (char)(hi << 4 | lo);
            i += 2;
        } else {
            dec[n++] = name[i] == '+' ? ' ' : name[i];
        }
    }
    dec[n] = '\0';
    for (size_t w = 0; w < sizeof(log_secret_words) / sizeof(log_secret_words[0]); w++)
        if (strcasestr(dec, log_secret_words[w]) != NULL)
            return true;
    return false;
}

/* A value with two dots or more: a JWT (header.payload.signature). */
static bool log_value_is_secret(const char *value, size_t len) {
    const char *dot = memchr(value, '.', len);

    return dot != NULL && memchr(dot + 1, '.', len - (size_t)(dot + 1 - value)) != NULL;
}

/* Appends LEN bytes of S to OUT at *O, as far as CAP-1 allows. */
static void log_put(char *out, size_t cap, size_t *o, const char *s, size_t len) {
    size_t room = cap - 1 - *o;

    if (len > room)
        len = room;
    memcpy(out + *o, s, len);
    *o += len;
}

size_t log_redact_query(const char *query, size_t len, char *out, size_t outcap) {
    const char *p = query, *end = query + len;
    size_t o = 0;

    if (outcap == 0)
        return 0;
    while (p < end) {
        const char *amp = memchr(p, '&', (size_t)(end - p));
        const char *stop = amp != NULL ? amp : end;
        const char *eq = memchr(p, '=', (size_t)(stop - p));

        if (eq == NULL || eq + 1 == stop ||
            (!log_name_is_secret(p, (size_t)(eq - p)) &&
             !log_value_is_secret(eq + 1, (size_t)(stop - eq - 1)))) {
            log_put(out, outcap, &o, p, (size_t)(stop - p));
        } else {
            log_put(out, outcap, &o, p, (size_t)(eq + 1 - p));
            log_put(out, outcap, &o, LOG_REDACTED, sizeof(LOG_REDACTED) - 1);
        }
        if (amp != NULL)
            log_put(out, outcap, &o, "&", 1);
        p = stop + 1;
    }
    out[o] = '\0';
    return o;
}

/* ---- access log ----------------------------------------------------------- */

/* A JSON string from a slice. jansson refuses invalid UTF-8; such bytes
 * (a raw byte in a path, a Latin-1 host) are logged as '?' instead. */
static json_t *log_json_slice(const char *s, size_t len) {
    json_t *j;
    char *copy;

    if (s == NULL)
        return json_null();
    if ((j = json_stringn(s, len)) != NULL)
        return j;
    if ((copy = malloc(len + 1)) == NULL)
        return json_null();
    for (size_t i = 0; i < len; i++)
        copy[i] = (unsigned char)s[i] >= 0x80 ? '?' : s[i];
    j = json_stringn(copy, len);
    free(copy);
    return j != NULL ? j : json_null();
}

static json_t *log_json_str(const char *s) {
    return s != NULL ? log_json_slice(s, strlen(s)) : json_null();
}

/* Milliseconds with microsecond resolution: enough for a log, short to print. */
static json_t *log_json_ms(double ms) {
    return json_real(ms > 0 ? (double)(long long)(ms * 1000.0 + 0.5) / 1000.0 : 0.0);
}

/* "2026-11-29T03:33:43.123Z" */
static void log_iso_time(double t, char out[32]) {
    long long total = t > 0 ? (long long)(t * 1000.0 + 0.5) : 0;
    time_t sec = (time_t)(total / 1000);
    struct tm tm;

    gmtime_r(&sec, &tm);
    strftime(out, 32, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(out + 19, 32 - 19, ".%03dZ", (int)(total % 1000));
}

/* path, then "?" and the redacted query when there is one. */
static json_t *log_json_path(const struct log_access_rec *rec) {
    char stack[2048], *buf = stack;
    size_t cap, n, amps = 0;
    json_t *j;

    if (rec->query == NULL || rec->query_len == 0)
        return log_json_slice(rec->path, rec->path_len);
    for (size_t i = 0; i < rec->query_len; i++)
        amps += rec->query[i] == '&';
    /* Redaction only ever replaces a value with "REDACTED": at most 8 more
     * bytes per parameter. */
    cap = rec->path_len + 2 + rec->query_len + (amps + 1) * (sizeof(LOG_REDACTED) - 1);
    if (cap > sizeof(stack) && (buf = malloc(cap)) == NULL)
        return log_json_slice(rec->path, rec->path_len);
    memcpy(buf, rec->path != NULL ? rec->path : "", rec->path_len);
    n = rec->path_len;
    buf[n++] = '?';
    n += log_redact_query(rec->query, rec->query_len, buf + n, cap - n);
    j = log_json_slice(buf, n);
    if (buf != stack)
        free(buf);
    return j;
}

static json_t *log_access_json(const struct log_access_rec *rec) {
    json_t *o = json_object();
    char when[32];

    if (o == NULL)
        return NULL;
    log_iso_time(rec->time, when);
    json_object_set_new(o, "time", json_string(when));
    json_object_set_new(o, "request_id", log_json_slice(rec->request_id, rec->request_id_len));
    json_object_set_new(o, "client_ip", log_json_str(rec->client_ip));
    json_object_set_new(o, "method", log_json_slice(rec->method, rec->method_len));
    json_object_set_new(o, "host", log_json_slice(rec->host, rec->host_len));
    json_object_set_new(o, "path", log_json_path(rec));
    json_object_set_new(o, "route", log_json_str(rec->route));
    json_object_set_new(o, "status", json_integer(rec->status));
    json_object_set_new(o, "bytes_in", json_integer((json_int_t)rec->bytes_in));
    json_object_set_new(o, "bytes_out", json_integer((json_int_t)rec->bytes_out));
    json_object_set_new(o, "duration_ms", log_json_ms(rec->duration_ms));
    json_object_set_new(o, "upstream", log_json_str(rec->upstream));
    json_object_set_new(o, "upstream_ms",
                        rec->upstream_ms < 0 ? json_null() : log_json_ms(rec->upstream_ms));
    json_object_set_new(o, "user", log_json_slice(rec->user, rec->user_len));
    json_object_set_new(o, "tier", log_json_str(rec->tier));
    json_object_set_new(o, "ratelimit", log_json_str(rec->ratelimit));
    json_object_set_new(o, "tls", log_json_str(rec->tls_version));
    json_object_set_new(o, "sni", log_json_str(rec->sni));
    json_object_set_new(o, "protocol", log_json_str(rec->protocol));
    json_object_set_new(o, "user_agent",
                        log_json_slice(rec->user_agent, rec->user_agent_len < LOG_USER_AGENT_MAX
                                                            ? rec->user_agent_len
                                                            : LOG_USER_AGENT_MAX));
    json_object_set_new(o, "upstream_status",
                        rec->upstream_status ? json_integer(rec->upstream_status) : json_null());
    json_object_set_new(o, "error", log_json_str(rec->error));
    return o;
}

void log_access(const struct log_access_rec *rec) {
    int fd = atomic_load(&log_access_sink.fd);
    const size_t flags = JSON_COMPACT | JSON_REAL_PRECISION(15);
    char stack[LOG_ACCESS_STACK], *buf = stack;
    json_t *o;
    size_t n;

    if (fd < 0 || (o = log_access_json(rec)) == NULL)
        return;
    n = json_dumpb(o, stack, sizeof(stack) - 1, flags);
    if (n > sizeof(stack) - 1) { /* a long path: render again, on the heap */
        if ((buf = malloc(n + 1)) == NULL || json_dumpb(o, buf, n, flags) != n)
            n = 0;
    }
    json_decref(o);
    if (n > 0) {
        buf[n++] = '\n';
        log_write(fd, buf, n);
    }
    if (buf != stack)
        free(buf);
}
