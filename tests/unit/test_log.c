/*
 * test_log.c - log.c: access-log lines parsed back with jansson, query
 * redaction, escaping, level filtering, reopen after rotation.
 */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>
#include <jansson.h>

#include "log.h"

static char dir[256];

static char *tmppath(const char *name) {
    static char paths[4][320];
    static int next;
    char *p = paths[next++ % 4];

    snprintf(p, sizeof(paths[0]), "%s/%s", dir, name);
    return p;
}

static int setup(void **state) {
    snprintf(dir, sizeof(dir), "%s/fg-test-log-XXXXXX",
             getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
    return mkdtemp(dir) != NULL ? 0 : -1;
}

static int teardown(void **state) {
    char cmd[400];

    log_close();
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    return system(cmd) == 0 ? 0 : -1;
}

/* Whole file as a string (caller frees); "" when absent. */
static char *slurp(const char *path) {
    FILE *f = fopen(path, "rb");
    char *buf = calloc(1, 1 << 20);
    size_t n = 0;

    assert_non_null(buf);
    if (f != NULL) {
        n = fread(buf, 1, (1 << 20) - 1, f);
        fclose(f);
    }
    buf[n] = '\0';
    return buf;
}

static void open_logs(const char *access, const char *error, enum fg_log_level level) {
    struct fg_log cfg = {.access = (char *)access, .error = (char *)error, .level = level};
    char err[256] = "";

    if (log_open(&cfg, err, sizeof(err)) != 0)
        fail_msg("log_open: %s", err);
}

/* The only line of PATH, parsed. */
static json_t *only_line(const char *path) {
    char *text = slurp(path);
    size_t len = strlen(text);
    json_error_t jerr;
    json_t *j;

    assert_true(len > 0);
    assert_int_equal(text[len - 1], '\n');
    assert_null(memchr(text, '\n', len - 1)); /* exactly one line */
    j = json_loadb(text, len, 0, &jerr);
    if (j == NULL)
        fail_msg("not JSON (%s): %s", jerr.text, text);
    free(text);
    return j;
}

static struct log_access_rec sample_rec(void) {
    struct log_access_rec rec = {
        .time = 1795923223.123, /* 2026-11-29T03:33:43.123Z */
        .request_id = "req-1xyz",
        .request_id_len = 5,
        .client_ip = "192.0.2.7",
        .method = "GETX",
        .method_len = 3,
        .host = "api.example.com:443",
        .host_len = 15,
        .path = "/v1/items/7?ignored",
        .path_len = 11,
        .query = "page=2&token=abc",
        .query_len = 16,
        .status = 201,
        .bytes_in = 1234,
        .bytes_out = 5000000000ULL,
        .duration_ms = 12.3456,
        .upstream = "127.0.0.1:9001",
        .upstream_ms = 10.5,
        .user = "user-42!",
        .user_len = 7,
        .tier = "premium",
        .ratelimit = "allowed",
        .tls_version = "TLSv1.3",
        .sni = "api.example.com",
        .route = "api.example.com/v1",
        .protocol = "HTTP/1.1",
        .user_agent = "curl/7.88.1 and then some",
        .user_agent_len = 11,
        .upstream_status = 201,
        .error = NULL,
    };
    return rec;
}

static void assert_str_field(json_t *j, const char *key, const char *want) {
    json_t *v = json_object_get(j, key);

    if (!json_is_string(v))
        fail_msg("%s is not a string", key);
    assert_string_equal(json_string_value(v), want);
}

static void test_access_fields(void **state) {
    struct log_access_rec rec = sample_rec();
    const char *path = tmppath("access.log");
    json_t *j;

    open_logs(path, "stderr", FG_LOG_INFO);
    log_access(&rec);
    j = only_line(path);
    assert_str_field(j, "time", "2026-11-29T03:33:43.123Z");
    assert_str_field(j, "request_id", "req-1");
    assert_str_field(j, "client_ip", "192.0.2.7");
    assert_str_field(j, "method", "GET");
    assert_str_field(j, "host", "api.example.com");
    assert_str_field(j, "path", "/v1/items/7?page=2&token=REDACTED");
    assert_int_equal(json_integer_value(json_object_get(j, "status")), 201);
    assert_int_equal(json_integer_value(json_object_get(j, "bytes_in")), 1234);
    assert_true(json_integer_value(json_object_get(j, "bytes_out")) == 5000000000LL);
    assert_true(json_real_value(json_object_get(j, "duration_ms")) > 12.345);
    assert_true(json_real_value(json_object_get(j, "duration_ms")) < 12.347);
    assert_str_field(j, "upstream", "127.0.0.1:9001");
    assert_true(json_real_value(json_object_get(j, "upstream_ms")) == 10.5);
    assert_str_field(j, "user", "user-42");
    assert_str_field(j, "tier", "premium");
    assert_str_field(j, "ratelimit", "allowed");
    assert_str_field(j, "tls", "TLSv1.3");
    assert_str_field(j, "sni", "api.example.com");
    assert_str_field(j, "route", "api.example.com/v1");
    assert_str_field(j, "protocol", "HTTP/1.1");
    assert_str_field(j, "user_agent", "curl/7.88.1");
    assert_int_equal(json_integer_value(json_object_get(j, "upstream_status")), 201);
    assert_true(json_is_null(json_object_get(j, "error")));
    assert_int_equal(json_object_size(j), 22);
    json_decref(j);
    log_close();
}

/* Absent values are JSON null, never missing keys or empty strings. */
static void test_access_nulls(void **state) {
    struct log_access_rec rec = {
        .time = 0, .status = 400, .upstream_ms = -1, .error = "bad_request"};
    const char *path = tmppath("nulls.log");
    static const char *nulls[] = {"request_id", "client_ip", "method",      "host",
                                  "path",       "upstream",  "upstream_ms", "user",
                                  "tier",       "ratelimit", "tls",         "sni",
                                  "protocol",   "user_agent", "upstream_status", "route"};
    json_t *j;

    open_logs(path, "stderr", FG_LOG_INFO);
    log_access(&rec);
    j = only_line(path);
    for (size_t i = 0; i < sizeof(nulls) / sizeof(nulls[0]); i++)
        if (!json_is_null(json_object_get(j, nulls[i])))
            fail_msg("%s is not null", nulls[i]);
    assert_str_field(j, "error", "bad_request");
    assert_str_field(j, "time", "1970-01-01T00:00:00.000Z");
    json_decref(j);
    log_close();
}

/* Quotes, backslashes, control characters and invalid UTF-8 in a path still
 * give one line of valid JSON. */
static void test_access_escaping(void **state) {
    static const char evil[] = "/a\"b\\c\x01\n{\"x\":1}\r\x7f\xff\xfe/\xc3\xa9";
    struct log_access_rec rec = sample_rec();
    const char *path = tmppath("escape.log");
    json_t *j;

    rec.path = evil;
    rec.path_len = sizeof(evil) - 1;
    rec.query = NULL;
    rec.host = "h\"\n";
    rec.host_len = 3;
    open_logs(path, "stderr", FG_LOG_INFO);
    log_access(&rec);
    j = only_line(path);
    assert_str_field(j, "path",
                     "/a\"b\\c\x01\n{\"x\":1}\r\x7f?"
                     "?/?"
                     "?");
    assert_str_field(j, "host", "h\"\n");
    json_decref(j);
    log_close();
}

/* A path longer than the stack buffer is rendered on the heap, whole. */
static void test_access_long_line(void **state) {
    struct log_access_rec rec = sample_rec();
    const char *path = tmppath("long.log");
    char *big = malloc(20000);
    json_t *j;

    assert_non_null(big);
    memset(big, 'a', 20000);
    big[0] = '/';
    rec.path = big;
    rec.path_len = 20000;
    rec.query = NULL;
    open_logs(path, "stderr", FG_LOG_INFO);
    log_access(&rec);
    j = only_line(path);
    assert_int_equal(strlen(json_string_value(json_object_get(j, "path"))), 20000);
    json_decref(j);
    free(big);
    log_close();
}

static void test_access_off(void **state) {
    struct log_access_rec rec = sample_rec();
    const char *path = tmppath("off.log");
    char *text;

    open_logs(path, "stderr", FG_LOG_INFO);
    log_access(&rec);
    open_logs("", "stderr", FG_LOG_INFO); /* a reload that turns it off */
    log_access(&rec);
    text = slurp(path);
    assert_non_null(strchr(text, '\n'));
    assert_null(strchr(strchr(text, '\n') + 1, '\n'));
    free(text);
    log_close();
}

/* ---- redaction -------------------------------------------------------------- */

static void redact_case(const char *in, const char *want) {
    char out[256];
    size_t n = log_redact_query(in, strlen(in), out, sizeof(out));

    assert_string_equal(out, want);
    assert_int_equal(n, strlen(want));
}

static void test_redact_query(void **state) {
    redact_case("token=abc", "token=REDACTED");
    redact_case("a=1&access_token=x", "a=1&access_token=REDACTED");
    redact_case("v=aaa.bbb.ccc", "v=REDACTED");
    redact_case("page=2&sort=name&q=hello+world", "page=2&sort=name&q=hello+world");
    redact_case("API_KEY=k&Password=p&jwt=j&client_secret=s",
                "API_KEY=REDACTED&Password=REDACTED"
                "&jwt=REDACTED&client_secret=REDACTED");
    redact_case("code=c&state=s&session_id=z&X-Amz-Signature=sig&authorization=b",
                "code=REDACTED&state=s&session_id=REDACTED&X-Amz-Signature=REDACTED"
                "&authorization=REDACTED");
    redact_case("acc%65ss_%74oken=x", "acc%65ss_%74oken=REDACTED"); /* encoded name */
    redact_case("version=1.2", "version=1.2");                      /* one dot is harmless */
    redact_case("token=&token&x=1", "token=&token&x=1");            /* nothing to hide */
    redact_case("&&a=b&", "&&a=b&");
    redact_case("", "");
}

/* A small buffer truncates; it never lets part of a secret through. */
static void test_redact_truncates(void **state) {
    char out[12];
    size_t n = log_redact_query("a=1&token=supersecret", 21, out, sizeof(out));

    assert_int_equal(n, 11);
    assert_string_equal(out, "a=1&token=R");
    assert_null(strstr(out, "super"));
}

/* ---- error log -------------------------------------------------------------- */

static void test_error_format_and_level(void **state) {
    const char *path = tmppath("error.log");
    char *text, *second;

    open_logs("", path, FG_LOG_WARN);
    log_info("not written %d", 1);
    log_debug("not written %d", 2);
    log_warn("disk %s", "full");
    log_error("forged\n2026-01-01T00:00:00Z [error] x");
    text = slurp(path);
    /* "2026-11-29T03:33:43Z [warn] disk full\n" */
    assert_int_equal(strlen(text) > 21, 1);
    assert_int_equal(text[4], '-');
    assert_int_equal(text[10], 'T');
    assert_int_equal(text[19], 'Z');
    assert_memory_equal(text + 20, " [warn] disk full\n", 18);
    second = text + 21 + 17;
    assert_memory_equal(second + 20, " [error] forged\\x0a2026", 23);
    assert_non_null(strchr(second, '\n'));
    assert_int_equal(strchr(second, '\n')[1], '\0'); /* two lines in all */
    assert_null(strstr(text, "not written"));
    free(text);
    log_close();
}

/* ---- reopen ----------------------------------------------------------------- */

static void test_reopen_after_rename(void **state) {
    struct log_access_rec rec = sample_rec();
    const char *path = tmppath("rot.log");
    const char *rotated = tmppath("rot.log.1");
    const char *epath = tmppath("rot-error.log");
    const char *erotated = tmppath("rot-error.log.1");
    char *old_text, *new_text;

    open_logs(path, epath, FG_LOG_INFO);
    rec.status = 200;
    log_access(&rec);
    log_info("before");
    assert_int_equal(rename(path, rotated), 0);
    assert_int_equal(rename(epath, erotated), 0);
    log_reopen();
    rec.status = 299;
    log_access(&rec);
    log_info("after");

    old_text = slurp(rotated);
    new_text = slurp(path);
    assert_non_null(strstr(old_text, "\"status\":200"));
    assert_null(strstr(old_text, "\"status\":299"));
    assert_non_null(strstr(new_text, "\"status\":299"));
    assert_null(strstr(new_text, "\"status\":200"));
    free(old_text);
    free(new_text);
    old_text = slurp(erotated);
    new_text = slurp(epath);
    assert_non_null(strstr(old_text, "before"));
    assert_null(strstr(old_text, "after"));
    assert_non_null(strstr(new_text, "after"));
    free(old_text);
    free(new_text);
    log_close();
}

#define RACE_THREADS 4
#define RACE_LINES 500

static void *race_writer(void *arg) {
    struct log_access_rec rec = sample_rec();

    for (int i = 0; i < RACE_LINES; i++) {
        rec.status = 200 + i % 100;
        log_access(&rec);
    }
    return NULL;
}

/* Workers log while the main thread reopens: every line arrives whole. */
static void test_reopen_while_logging(void **state) {
    const char *path = tmppath("race.log");
    pthread_t threads[RACE_THREADS];
    char *text, *line, *save = NULL;
    int lines = 0;

    open_logs(path, "stderr", FG_LOG_INFO);
    for (int i = 0; i < RACE_THREADS; i++)
        assert_int_equal(pthread_create(&threads[i], NULL, race_writer, NULL), 0);
    for (int i = 0; i < 50; i++)
        log_reopen();
    for (int i = 0; i < RACE_THREADS; i++)
        pthread_join(threads[i], NULL);
    text = slurp(path);
    for (line = strtok_r(text, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        json_t *j = json_loads(line, 0, NULL);

        assert_non_null(j);
        json_decref(j);
        lines++;
    }
    assert_int_equal(lines, RACE_THREADS * RACE_LINES);
    free(text);
    log_close();
}

static void test_open_failure(void **state) {
    struct fg_log cfg = {.access = tmppath("no/such/dir/a.log"), .error = "stderr"};
    char err[256] = "";

    assert_int_equal(log_open(&cfg, err, sizeof(err)), -1);
    assert_non_null(strstr(err, "no/such/dir/a.log: cannot open log file"));
    log_close();
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_access_fields),       cmocka_unit_test(test_access_nulls),
        cmocka_unit_test(test_access_escaping),     cmocka_unit_test(test_access_long_line),
        cmocka_unit_test(test_access_off),          cmocka_unit_test(test_redact_query),
        cmocka_unit_test(test_redact_truncates),    cmocka_unit_test(test_error_format_and_level),
        cmocka_unit_test(test_reopen_after_rename), cmocka_unit_test(test_reopen_while_logging),
        cmocka_unit_test(test_open_failure),
    };

    return cmocka_run_group_tests(tests, setup, teardown);
}
