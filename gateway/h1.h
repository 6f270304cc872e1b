/*
 * h1.h - HTTP/1.1 message heads and body framing, strict, flowgate's own.
 *
 * The caller owns the bytes: a head is parsed from one contiguous buffer that
 * stays alive (and unmodified) as long as the h1_request/h1_response that
 * points into it. Header names and values are slices into that buffer.
 * The parser that read the head then frames the body: the caller feeds raw
 * body bytes and learns where the message ends, so bodies (chunked included)
 * pass through byte for byte while their framing is still checked.
 *
 * Strictness (RFC 9112): exactly one framing (TE chunked
 * alone, or one Content-Length, repeats of the same value merged, or none);
 * no bare CR or LF, NUL, obs-fold, whitespace before a colon, invalid token
 * characters, more than one Host, missing Host on HTTP/1.1, or Host that
 * disagrees with an absolute-form target. tests/fuzz/fuzz_h1_llhttp.c holds
 * it against llhttp: flowgate may refuse what llhttp accepts, never the
 * reverse (beyond the merges above).
 */
#ifndef FG_H1_H
#define FG_H1_H

#include <stdbool.h>
#include <stddef.h>
#include <string.h>
#include <stdint.h>
#include <sys/types.h>

/*
 * The request methods flowgate accepts (any other is a 400): llhttp's HTTP
 * set, with llhttp's numbers, so method masks in configurations (bit n is
 * method n) and logs keep their meaning. The differential fuzzer checks the
 * numbering against llhttp's.
 */
#define H1_METHOD_MAP(X)                                                                           \
    X(0, DELETE, "DELETE")                                                                         \
    X(1, GET, "GET")                                                                               \
    X(2, HEAD, "HEAD")                                                                             \
    X(3, POST, "POST")                                                                             \
    X(4, PUT, "PUT")                                                                               \
    X(5, CONNECT, "CONNECT")                                                                       \
    X(6, OPTIONS, "OPTIONS")                                                                       \
    X(7, TRACE, "TRACE")                                                                           \
    X(8, COPY, "COPY")                                                                             \
    X(9, LOCK, "LOCK")                                                                             \
    X(10, MKCOL, "MKCOL")                                                                          \
    X(11, MOVE, "MOVE")                                                                            \
    X(12, PROPFIND, "PROPFIND")                                                                    \
    X(13, PROPPATCH, "PROPPATCH")                                                                  \
    X(14, SEARCH, "SEARCH")                                                                        \
    X(15, UNLOCK, "UNLOCK")                                                                        \
    X(16, BIND, "BIND")                                                                            \
    X(17, REBIND, "REBIND")                                                                        \
    X(18, UNBIND, "UNBIND")                                                                        \
    X(19, ACL, "ACL")                                                                              \
    X(20, REPORT, "REPORT")                                                                        \
    X(21, MKACTIVITY, "MKACTIVITY")                                                                \
    X(22, CHECKOUT, "CHECKOUT")                                                                    \
    X(23, MERGE, "MERGE")                                                                          \
    X(24, MSEARCH, "M-SEARCH")                                                                     \
    X(25, NOTIFY, "NOTIFY")                                                                        \
    X(26, SUBSCRIBE, "SUBSCRIBE")                                                                  \
    X(27, UNSUBSCRIBE, "UNSUBSCRIBE")                                                              \
    X(28, PATCH, "PATCH")                                                                          \
    X(29, PURGE, "PURGE")                                                                          \
    X(30, MKCALENDAR, "MKCALENDAR")                                                                \
    X(31, LINK, "LINK")                                                                            \
    X(32, UNLINK, "UNLINK")                                                                        \
    X(33, SOURCE, "SOURCE")

enum h1_method {
#define H1_METHOD_ENUM(num, name, str) H1_METHOD_##name = num,
    H1_METHOD_MAP(H1_METHOD_ENUM)
#undef H1_METHOD_ENUM
    H1_METHOD_COUNT
};

/* "GET" for H1_METHOD_GET; NULL for a number that names no method. */
const char *h1_method_name(int method);

/* The method spelled NAME[0..LEN) (case-sensitive, RFC 9110 9.1), or -1. */
int h1_method_from_name(const char *name, size_t len);

struct h1_header {
    const char *name;  /* slice: token characters only */
    size_t name_len;
    const char *value; /* slice: leading/trailing OWS trimmed */
    size_t value_len;
};

enum h1_status {
    H1_OK = 0,
    H1_BAD_REQUEST = 1,     /* 400 and close */
    H1_HEAD_TOO_LARGE = 2,  /* 431 and close: too many headers */
    H1_UNSUPPORTED = 3,     /* 400 too (unknown coding, bad version...) */
    H1_EXPECTATION = 4,     /* 417: a well-formed head (every field set) with an Expect
                               flowgate cannot meet */
};
const char *h1_status_str(enum h1_status st);

enum h1_framing {
    H1_FRAMING_NONE = 0,    /* no body */
    H1_FRAMING_LENGTH = 1,  /* content_length bytes */
    H1_FRAMING_CHUNKED = 2, /* chunked coding */
    H1_FRAMING_EOF = 3,     /* responses only: until the connection closes */
};

/* Body framing state; every field is internal to h1.c. */
struct h1_parser {
    uint64_t left;           /* LENGTH: body bytes left; chunked: chunk-size being
                                read, then its data bytes left */
    int error_state;         /* nonzero: no head parsed, or a framing error (sticky) */
    bool msg_done;           /* the message ended */
    uint8_t framing;         /* enum h1_framing of the message */
    uint8_t chunk_state;     /* where the chunked coding is */
    uint8_t te_match;        /* chunked: trailer name bytes spelling "transfer-encoding" */
};

struct h1_request {
    struct h1_parser parser;
    int method;              /* enum h1_method */
    const char *method_str;
    size_t method_len;
    const char *target;      /* request-target as sent */
    size_t target_len;
    const char *path;        /* path part of the target (origin or absolute form), before '?' */
    size_t path_len;
    const char *query;       /* after '?', NULL when none */
    size_t query_len;
    int version_minor;       /* 1.0 or 1.1 (major is always 1) */
    struct h1_header *headers; /* caller's array of max_headers entries */
    size_t nheaders;
    size_t max_headers;
    const char *host;        /* Host value (or absolute-form authority), lowercased copy is the caller's job */
    size_t host_len;
    enum h1_framing framing;
    uint64_t content_length; /* when LENGTH */
    bool keep_alive;         /* per version and Connection */
    bool expect_continue;    /* Expect: 100-continue on HTTP/1.1 (anything else: H1_EXPECTATION) */
    bool upgrade;            /* Connection: upgrade + Upgrade present */
    bool connection;         /* a Connection header is present */
    const char *reason;      /* static text: why H1_BAD_REQUEST (for the log) */
};

struct h1_response {
    struct h1_parser parser;
    int status;
    int version_minor;
    const char *reason_phrase;
    size_t reason_len;
    struct h1_header *headers;
    size_t nheaders;
    size_t max_headers;
    enum h1_framing framing;
    uint64_t content_length;
    bool keep_alive;         /* the upstream allows reuse after this response */
    bool connection;         /* a Connection header is present */
    const char *reason;
};

/*
 * Find the end of a message head in BUF[0..LEN). Returns the head's length
 * including the final CRLF CRLF, -2 when more bytes are needed, or -1 when
 * the bytes seen so far already break the rules (bare LF or CR, NUL in the
 * head, a line starting with whitespace). Leading empty lines (RFC 9112 2.2)
 * are not allowed: -1.
 */
ssize_t h1_head_end(const char *buf, size_t len);

/*
 * Parse a complete request head (as delimited by h1_head_end). REQ->headers
 * and REQ->max_headers must be set by the caller. UNDERSCORES false drops
 * (omits from REQ->headers) any header whose name holds '_'.
 * Returns H1_OK with every field set, or an error with REQ->reason set.
 * H1_EXPECTATION is the one error after which every field is set too (the
 * caller needs the framing to know whether a body follows its 417).
 * After H1_OK the body (if any) is framed with h1_body_feed.
 */
enum h1_status h1_parse_request(struct h1_request *req, const char *buf, size_t len,
                                bool underscores);

/*
 * Parse a response head. HEAD_REQUEST: the request was HEAD (no body follows
 * whatever the headers say). 1xx responses parse fine (framing NONE); the
 * caller decides what follows them. Returns H1_OK or H1_BAD_REQUEST.
 */
enum h1_status h1_parse_response(struct h1_response *resp, const char *buf, size_t len,
                                 bool head_request);

enum h1_body_status {
    H1_BODY_MORE = 0,  /* all LEN bytes belong to the body; message not complete */
    H1_BODY_DONE = 1,  /* message complete after *USED bytes (the rest is the next message) */
    H1_BODY_ERROR = -1 /* framing error (bad chunk size, ...) */
};

/*
 * Feed raw body bytes (as received: chunk framing included) to the parser of
 * a message whose head parsed OK. *USED is set to how many bytes belong to
 * this message. For H1_FRAMING_EOF responses call h1_body_eof at EOF.
 */
enum h1_body_status h1_body_feed(struct h1_parser *p, const char *buf, size_t len, size_t *used);

/*
 * The trailer fields (RFC 9112 7.1.2) among the bytes one feed used: a single
 * run, since a feed moves forward through the trailer section. The last-chunk
 * line before it and the empty line that ends the section are outside it, so
 * the used bytes with the run taken out are a complete chunked body without
 * trailer fields.
 */
struct h1_cut {
    size_t off; /* first trailer-field byte, from the start of the fed bytes */
    size_t len; /* 0: no trailer-field byte in this feed */
};

/*
 * h1_body_feed that also sets *CUT to the trailer fields among the *USED
 * bytes (off + len <= *used; none unless the body is chunked). The fields
 * are still checked against the coding's grammar; a caller that forwards the
 * body drops the run to pass it on without them, byte by byte if need be.
 */
enum h1_body_status h1_body_feed_cut(struct h1_parser *p, const char *buf, size_t len, size_t *used,
                                     struct h1_cut *cut);

/* EOF on the stream: DONE when the message is complete (EOF-delimited
 * response, or already done), ERROR when it was cut short (truncated). */
enum h1_body_status h1_body_eof(struct h1_parser *p);

/* Is the next body byte payload, rather than chunked framing (a chunk-size
 * line, the CRLF after chunk data, the trailer section)? The differential
 * fuzzer compares payloads with it. */
bool h1_body_in_data(const struct h1_parser *p);

/*
 * h1_body_feed that stops where the body turns from payload into framing
 * or back, so a caller can take the payload out of a chunked body (an
 * HTTP/2 DATA frame carries payload only). *USED bytes were used; they are
 * payload when *PAYLOAD, chunked framing (size lines, CRLFs, the trailer
 * section) otherwise. A LENGTH or EOF body is payload throughout.
 */
enum h1_body_status h1_body_feed_run(struct h1_parser *p, const char *buf, size_t len, size_t *used,
                                     bool *payload);

/* Case-insensitive header lookup helpers over a parsed array. The inline
 * forms let the compiler take a literal's length at compile time. */
const struct h1_header *h1_find_n(const struct h1_header *h, size_t n, const char *name,
                                  size_t name_len);
bool h1_token_eq_n(const char *a, size_t alen, const char *b, size_t blen);

static inline const struct h1_header *h1_find(const struct h1_header *h, size_t n,
                                              const char *name)
{
    return h1_find_n(h, n, name, strlen(name));
}

/* ASCII case-insensitive */
static inline bool h1_token_eq(const char *a, size_t alen, const char *lit)
{
    return h1_token_eq_n(a, alen, lit, strlen(lit));
}

/* RFC 9110 5.6.2 tchar: may C stand in a token (a field name, a method)? */
bool h1_is_tchar(unsigned char c);

/* Is S[0..N) a token: at least one byte, and tchar bytes only? */
bool h1_is_token(const char *s, size_t n);

/* RFC 9110 5.6.3 OWS: SP or HTAB, nothing else (no CR, LF or VT). */
static inline bool h1_is_ows(char c)
{
    return c == ' ' || c == '\t';
}

/* Trim OWS from both ends of the slice *V[0..*N). */
void h1_trim_ows(const char **v, size_t *n);

/* Every Content-Length header (repeats, list elements) merged into one
 * value *OUT. 1: present, 0: absent, -1: malformed or conflicting. */
int h1_content_length(const struct h1_header *h, size_t n, uint64_t *out);

/* Does a comma-separated header value list contain TOKEN (case-insensitive)? */
bool h1_list_has(const char *value, size_t len, const char *token);

/* Is H a WebSocket opening handshake (RFC 6455 4.1: an HTTP/1.1 GET with
 * Connection: upgrade and Upgrade: websocket, and no body)? */
bool h1_is_websocket(const struct h1_request *h);

#endif
