"""Malformed and hostile requests, one test per case.

Every case is sent on its own connection to a fresh flowgate. Kinds:
  head     rejected from the head alone: 400 (or the listed status), close,
           and the upstream sees nothing at all
  smuggle  a valid first request followed by a hostile one: the first is
           answered, the second gets 400 and close, and nothing smuggled
           reaches the upstream
  chunk    bad chunked framing on a valid route: the head may already be
           forwarded, so 400 or a closed connection, and the upstream never
           receives a complete request
After each case a valid request on a new connection must still be answered,
which also orders the upstream's record after anything flowgate forwarded.
"""


from harness import (Flowgate, Upstream, assert_closes, assert_error, check, client_hello, eq,
                     fail, sentinel)
from harness import ConnectionClosed

TIMEOUT = 40
CODES = {400: "bad_request", 413: "body_too_large", 431: "headers_too_large"}

H = b"Host: localhost\r\n"
FIRST = b"GET /first HTTP/1.1\r\n" + H + b"\r\n"
HIDDEN = b"GET /smuggled HTTP/1.1\r\n" + H + b"\r\n"


def post(headers, body=b""):
    return b"POST /sha256 HTTP/1.1\r\n" + H + headers + b"\r\n" + body


def get(target, extra=b"", version=b"HTTP/1.1"):
    return b"GET " + target + b" " + version + b"\r\n" + H + extra + b"\r\n"


CHUNKED = b"Transfer-Encoding: chunked\r\n"

# (name, kind, bytes, accepted statuses)
CASES = [
    # Content-Length and Transfer-Encoding together, obfuscated Transfer-Encoding
    ("cl_te", "head", post(b"Content-Length: 4\r\n" + CHUNKED, b"1\r\nZ\r\n0\r\n\r\n"), {400}),
    ("te_cl", "head", post(CHUNKED + b"Content-Length: 4\r\n", b"1\r\nZ\r\n0\r\n\r\n"), {400}),
    ("te_xchunked", "head", post(b"Transfer-Encoding: xchunked\r\n", b"0\r\n\r\n"), {400}),
    ("te_obs_fold", "head", post(b"Transfer-Encoding:\r\n chunked\r\n", b"0\r\n\r\n"), {400}),
    ("te_chunked_identity", "head", post(b"Transfer-Encoding: chunked, identity\r\n",
                                         b"0\r\n\r\n"), {400}),
    ("te_vertical_tab", "head", post(b"Transfer-Encoding:\x0bchunked\r\n", b"0\r\n\r\n"), {400}),
    ("te_twice_identity", "head", post(CHUNKED + b"Transfer-Encoding: identity\r\n",
                                       b"0\r\n\r\n"), {400}),
    ("te_space_before_colon", "head", post(b"Transfer-encoding : chunked\r\n", b"0\r\n\r\n"),
     {400}),
    ("te_identity_only", "head", post(b"Transfer-Encoding: identity\r\n"), {400}),
    ("te_gzip_chunked", "head", post(b"Transfer-Encoding: gzip, chunked\r\n", b"0\r\n\r\n"),
     {400}),
    ("te_chunked_twice", "head", post(b"Transfer-Encoding: chunked, chunked\r\n",
                                      b"0\r\n\r\n"), {400}),
    ("te_on_http10", "head", b"POST /sha256 HTTP/1.0\r\n" + H + CHUNKED + b"\r\n0\r\n\r\n",
     {400}),
    # Content-Length values
    ("cl_duplicate_differing", "head", post(b"Content-Length: 5\r\nContent-Length: 6\r\n",
                                            b"hello!"), {400}),
    ("cl_list_differing", "head", post(b"Content-Length: 5, 6\r\n", b"hello!"), {400}),
    ("cl_plus", "head", post(b"Content-Length: +5\r\n", b"hello"), {400}),
    ("cl_negative", "head", post(b"Content-Length: -1\r\n"), {400}),
    ("cl_hex", "head", post(b"Content-Length: 0x10\r\n", b"x" * 16), {400}),
    ("cl_inner_space", "head", post(b"Content-Length: 1 0\r\n", b"x" * 10), {400}),
    ("cl_overflow", "head", post(b"Content-Length: 99999999999999999999999999\r\n"), {400, 413}),
    ("cl_empty", "head", post(b"Content-Length: \r\n"), {400}),
    # chunk framing on a valid route
    ("chunk_size_zz", "chunk", post(CHUNKED, b"zz\r\nhello\r\n0\r\n\r\n"), {400}),
    ("chunk_size_negative", "chunk", post(CHUNKED, b"-1\r\nhello\r\n0\r\n\r\n"), {400}),
    ("chunk_size_overflow", "chunk", post(CHUNKED, b"ffffffffffffffffffff\r\nhello\r\n0\r\n\r\n"),
     {400, 413}),
    ("chunk_missing_crlf", "chunk", post(CHUNKED, b"5\r\nhelloXX0\r\n\r\n"), {400}),
    # line endings and bytes that must never appear
    ("bare_lf_everywhere", "head", b"GET /lf HTTP/1.1\nHost: localhost\n\n", {400}),
    ("bare_lf_in_header", "head", b"GET /lf HTTP/1.1\r\nHost: localhost\nX-A: b\r\n\r\n", {400}),
    ("bare_cr_in_header", "head", b"GET /cr HTTP/1.1\r\nHost: localhost\rX-A: b\r\n\r\n", {400}),
    ("nul_in_header_value", "head", get(b"/n", b"X-A: a\x00b\r\n"), {400}),
    ("nul_in_path", "head", get(b"/a\x00b"), {400}),
    ("obs_fold_header", "head", get(b"/f", b"X-A: a\r\n folded\r\n"), {400}),
    ("space_before_colon", "head", get(b"/s", b"X-A : b\r\n"), {400}),
    ("empty_header_name", "head", get(b"/e", b": value\r\n"), {400}),
    ("bad_token_in_name", "head", get(b"/t", b"X(A): b\r\n"), {400}),
    ("space_in_name", "head", get(b"/t", b"X A: b\r\n"), {400}),
    ("header_without_colon", "head", get(b"/t", b"X-No-Colon\r\n"), {400}),
    # Host
    ("duplicate_host_differing", "head", get(b"/h", b"Host: evil.example\r\n"), {400}),
    ("duplicate_host_same", "head", get(b"/h", b"Host: localhost\r\n"), {400}),
    ("missing_host_http11", "head", b"GET /h HTTP/1.1\r\nX-A: b\r\n\r\n", {400}),
    ("absolute_form_host_mismatch", "head", get(b"https://evil.example/h"), {400}),
    ("host_with_space", "head", b"GET /h HTTP/1.1\r\nHost: local host\r\n\r\n", {400}),
    # request line
    ("http2_request_line", "head", get(b"/v", version=b"HTTP/2.0"), {400}),
    ("http09_request_line", "head", b"GET /v\r\n\r\n", {400}),
    ("lowercase_method", "head", b"get /m HTTP/1.1\r\n" + H + b"\r\n", {400}),
    ("two_spaces_in_request_line", "head", b"GET  /m HTTP/1.1\r\n" + H + b"\r\n", {400}),
    ("tab_in_request_line", "head", b"GET\t/m HTTP/1.1\r\n" + H + b"\r\n", {400}),
    ("trailing_space_in_request_line", "head", b"GET /m HTTP/1.1 \r\n" + H + b"\r\n", {400}),
    ("overlong_method", "head", b"GET" * 40 + b" /m HTTP/1.1\r\n" + H + b"\r\n", {400}),
    ("only_garbage", "head", b"\x00\x01\x02\xff\xfegarbage\x7f\r\n\r\n", {400}),
    # paths
    ("traversal_above_root", "head", get(b"/api/../../etc/passwd"), {400}),
    ("encoded_traversal", "head", get(b"/%2e%2e/%2e%2e/etc/passwd"), {400}),
    ("encoded_traversal_mixed", "head", get(b"/a/.%2E/%2e%2E/etc"), {400}),
    ("encoded_slash", "head", get(b"/a%2Fb"), {400}),
    ("encoded_backslash", "head", get(b"/a%5Cb"), {400}),
    ("literal_backslash", "head", get(b"/a\\..\\b"), {400}),
    ("encoded_nul", "head", get(b"/a%00b"), {400}),
    ("fragment_in_target", "head", get(b"/a#frag"), {400}),
    ("control_char_in_target", "head", get(b"/a\x01b"), {400}),
    ("del_in_target", "head", get(b"/a\x7fb"), {400}),
    ("bad_percent_encoding", "head", get(b"/a%zzb"), {400}),
    # path parameters: a servlet container serves /api;/x as /api/x
    ("path_param_empty", "head", get(b"/api;/x"), {400}),
    ("path_param_jsessionid", "head", get(b"/api;jsessionid=1/x"), {400}),
    ("path_param_encoded_letters", "head", get(b"/a%70i;/x"), {400}),
    ("path_param_last_segment", "head", get(b"/api/x;"), {400}),
    ("path_param_first_segment", "head", get(b"/;/api/x"), {400}),
    ("path_param_dotdot", "head", get(b"/public/..;/admin"), {400}),
    ("path_param_encoded", "head", get(b"/api%3B/x"), {400}),
    ("path_param_encoded_lower", "head", get(b"/api%3bjsessionid=1/x"), {400}),
    ("path_param_absolute_form", "head", get(b"https://localhost/api;/x"), {400}),
    # smuggling behind a valid first request
    ("smuggle_cl_te_after_valid", "smuggle",
     FIRST + post(b"Content-Length: 5\r\n" + CHUNKED, b"0\r\n\r\n" + HIDDEN), {400}),
    ("smuggle_te_te_after_valid", "smuggle",
     FIRST + post(CHUNKED + b"Transfer-Encoding: xchunked\r\n", b"0\r\n\r\n" + HIDDEN), {400}),
    ("smuggle_duplicate_cl_after_valid", "smuggle",
     FIRST + post(b"Content-Length: 0\r\nContent-Length: %d\r\n" % len(HIDDEN), HIDDEN), {400}),
    ("smuggle_bare_lf_after_valid", "smuggle",
     FIRST + b"GET /x HTTP/1.1\nHost: localhost\n\n" + HIDDEN, {400}),
]


def _forwarded(up):
    return [x for x in up.requests() if not (x["target"] or "").startswith("/sentinel-")]


def _expect_error(conn, statuses, https=True):
    try:
        r = conn.read_response(timeout=15)
    except ConnectionClosed as e:
        fail("closed without an error response (%s)" % e)
    check(r.status in statuses, "status %d, expected one of %s (body %r)"
          % (r.status, sorted(statuses), r.body[:200]))
    assert_error(r, r.status, CODES[r.status], https)
    assert_closes(conn, r)


def run_case(kind, data, statuses):
    with Upstream() as up, Flowgate(upstream=up) as fg:
        conn = fg.tls()
        try:
            conn.send(data)
            if kind == "head":
                _expect_error(conn, statuses)
            elif kind == "smuggle":
                r = conn.read_response(timeout=15)
                eq(r.status, 200, "the valid first request")
                _expect_error(conn, statuses)
            elif kind == "chunk":
                try:
                    r = conn.read_response(timeout=15)
                    check(r.status in statuses, "status %d for bad chunk framing" % r.status)
                    assert_error(r, r.status, CODES[r.status])
                except ConnectionClosed:
                    pass
                check(conn.wait_closed(10), "connection open after bad chunk framing")
        finally:
            conn.close()
        sentinel(fg, up)
        recs = _forwarded(up)
        if kind == "head":
            eq([x["raw_head"] for x in recs], [], "what reached the upstream")
        elif kind == "smuggle":
            eq([x["target"] for x in recs], ["/first"], "what reached the upstream")
        else:
            for x in recs:
                check(not x.get("complete"), "upstream received a complete request with body "
                      "%d bytes: %r" % (x["body_len"], x["raw_head"][:200]))
        for x in recs:
            check("/smuggled" not in (x["target"] or ""), "a smuggled request was forwarded")


def _make(kind, data, statuses):
    def test():
        run_case(kind, data, statuses)
    return test


for _name, _kind, _data, _statuses in CASES:
    _fn = _make(_kind, _data, _statuses)
    _fn.__name__ = "test_" + _name
    _fn.__qualname__ = _fn.__name__
    globals()[_fn.__name__] = _fn


def test_tls_record_on_http_port_gets_400():
    with Upstream() as up, Flowgate(upstream=up) as fg:
        conn = fg.plain()
        try:
            conn.send(client_hello())
            _expect_error(conn, {400}, https=False)
        finally:
            conn.close()
        eq(up.requests(), [], "forwarded")


def test_garbage_on_http_port_gets_400():
    with Upstream() as up, Flowgate(upstream=up) as fg:
        conn = fg.plain()
        try:
            conn.send(b"\x00\x01garbage\r\n\r\n")
            _expect_error(conn, {400}, https=False)
        finally:
            conn.close()
        eq(up.requests(), [], "forwarded")


def test_case_table_is_large_enough():
    check(len(CASES) >= 40, "only %d hostile cases" % len(CASES))
    eq(len({c[0] for c in CASES}), len(CASES), "case names are unique")
