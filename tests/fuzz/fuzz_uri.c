/*
 * fuzz_uri.c - libFuzzer target for the path normaliser and the Host
 * normaliser, with the invariants routing relies on. Any violation aborts.
 *
 * The input is used whole as a path, whole as a Host value, and as a
 * candidate preview host. Each gets a heap buffer of exactly its length so
 * ASan catches a read past LEN.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "route.h"
#include "uri.h"

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond))                                                                               \
            abort();                                                                               \
    } while (0)

static bool has_ci(const char *s, size_t n, const char *needle)
{
    size_t k = strlen(needle);

    for (size_t i = 0; i + k <= n; i++) {
        if (strncasecmp(s + i, needle, k) == 0)
            return true;
    }
    return false;
}

static int upper_hex(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* A kept escape: uppercase hex, and never one that should have been decoded. */
static void check_escape(const char *p, size_t left)
{
    CHECK(left >= 3);
    int hi = upper_hex(p[1]), lo = upper_hex(p[2]);
    CHECK(hi >= 0 && lo >= 0);
    int c = hi << 4 | lo;
    CHECK(!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
            c == '-' || c == '.' || c == '_' || c == '~'));
}

/* A normalised path: starts with '/', no empty, "." or ".." segment, no
 * refused byte or escape (';' and %3B included), and normalising it again
 * changes nothing. */
static void check_path(const char *in, size_t len)
{
    char *out = malloc(len + 1);
    char *again = malloc(len + 1);
    ssize_t r;

    CHECK(out != NULL && again != NULL);
    r = uri_normalize_path(in, len, out, len + 1);
    if (r >= 0) {
        size_t n = (size_t)r;

        CHECK(n >= 1 && n <= len && out[0] == '/' && out[n] == '\0' && strlen(out) == n);
        CHECK(strstr(out, "//") == NULL && strstr(out, "/./") == NULL);
        CHECK(strstr(out, "/../") == NULL && strcmp(out, "/.") != 0);
        CHECK(!(n >= 2 && memcmp(out + n - 2, "/.", 2) == 0));
        CHECK(!(n >= 3 && memcmp(out + n - 3, "/..", 3) == 0));
        CHECK(!has_ci(out, n, "%2F") && !has_ci(out, n, "%5C") && !has_ci(out, n, "%00"));
        CHECK(!has_ci(out, n, "%3B") && memchr(out, ';', n) == NULL);
        for (size_t i = 0; i < n; i++) {
            CHECK((unsigned char)out[i] > 0x20 && (unsigned char)out[i] < 0x7f && out[i] != '\\');
            if (out[i] == '%')
                check_escape(out + i, n - i);
        }
        CHECK(uri_normalize_path(out, n, again, n + 1) == r && memcmp(out, again, n) == 0);
    }
    free(out);
    free(again);
}

static bool host_byte(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '.';
}

/* A normalised host: lowercase name or bracketed literal, port in range,
 * and a fixed point of the normaliser. */
static void check_host(const char *in, size_t len)
{
    char out[512], again[512];
    int port = 0, port2 = 0;
    ssize_t r = route_host_normalize(in, len, out, sizeof(out), &port);

    if (r < 0) {
        CHECK(port == -1);
        return;
    }
    size_t n = (size_t)r;

    CHECK(n >= 1 && n < sizeof(out) && out[n] == '\0' && strlen(out) == n);
    CHECK(port == -1 || (port >= 1 && port <= 65535));
    if (out[0] == '[') {
        CHECK(n >= 4 && out[n - 1] == ']');
    } else {
        for (size_t i = 0; i < n; i++)
            CHECK(host_byte(out[i]));
        CHECK(out[0] != '.' && out[n - 1] != '.' && strstr(out, "..") == NULL);
    }
    CHECK(route_host_normalize(out, n, again, sizeof(again), &port2) == r && port2 == -1);
    CHECK(memcmp(out, again, n) == 0);
}

static void check_preview(const char *in, size_t len)
{
    static const struct fg_previews pv = {
        .enabled = true, .host_prefix = "mvp-", .host_suffix = ".preview.example.com"};
    char name[128];
    ssize_t r = route_preview_name(&pv, in, len, name, sizeof(name));

    if (r < 0)
        return;
    size_t n = (size_t)r;

    CHECK(n >= 1 && n + 4 <= 63 && name[n] == '\0');
    CHECK(name[0] != '-' && name[n - 1] != '-');
    for (size_t i = 0; i < n; i++)
        CHECK(host_byte(name[i]) && name[i] != '.');
    CHECK(len == 4 + n + 20 && memcmp(in + 4, name, n) == 0);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *in = malloc(size ? size : 1);

    CHECK(in != NULL);
    memcpy(in, data, size);
    check_path(in, size);
    check_host(in, size);
    check_preview(in, size);
    free(in);
    return 0;
}
