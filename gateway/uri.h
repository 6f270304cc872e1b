/*
 * uri.h - request-target path normalisation (RFC 3986 sections 2.3, 5.2.4).
 */
#ifndef FG_URI_H
#define FG_URI_H

#include <stddef.h>
#include <sys/types.h>

/*
 * Normalise the path IN[0..LEN) (no query string) into OUT (OUTCAP >= LEN + 1,
 * NUL-terminated on success). Percent-encoded unreserved characters
 * (ALPHA DIGIT - . _ ~) are decoded; other escapes are kept, hex uppercased;
 * "." and ".." segments are removed; runs of '/' are merged into one.
 * Refused (-1): not starting with '/', a malformed escape, an encoded '/',
 * '\' or NUL (%2F %5C %00), a raw '\', a control byte, space, or non-ASCII,
 * a ';' raw or encoded (%3B: path parameters, which servlet containers strip
 * after routing), and any ".." that would climb above the root.
 * Returns the output length (>= 1), or -1.
 */
ssize_t uri_normalize_path(const char *in, size_t len, char *out, size_t outcap);

#endif
