"""The core proxy: what a client and an upstream observe."""

from harness import (FORBIDDEN_TRAILERS, HSTS, ConnectionClosed, Flowgate, Upstream,
                     assert_closes, assert_error, assert_new_request_id, assert_security_headers,
                     check, eq, pattern, plain_request, req_header, send_chunked, sentinel, sha256)

TIMEOUT = 60
FIVE_MB = 5 * 1024 * 1024


def test_response_carries_security_headers_and_request_id():
    with Upstream() as up, Flowgate(upstream=up) as fg:
        r = fg.get("/hello")
        eq(r.status, 200, "status")
        assert_security_headers(r, https=True)
        rid = assert_new_request_id(r)
        rec = up.requests()[-1]
        eq(req_header(rec, "X-Request-Id"), [rid], "upstream sees the response's X-Request-Id")
        r2 = fg.get("/hello")
        check(r2.header("X-Request-Id") != rid, "two requests got the same X-Request-Id")


def test_upstream_security_and_hop_by_hop_headers_are_replaced():
    with Upstream() as up, Flowgate(upstream=up) as fg:
        r = fg.get("/headers")
        eq(r.status, 200, "status")
        assert_security_headers(r, https=True)  # one X-Frame-Options, SAMEORIGIN; no Server
        check(not r.has("X-Foo"), "header named by the upstream's Connection was forwarded")
        check(not r.has("Keep-Alive"), "upstream's Keep-Alive was forwarded")
        check("x-foo" not in (r.header("Connection") or "").lower(),
              "upstream's Connection value was forwarded")
        eq(r.header("X-Upstream-Own"), "kept", "an ordinary upstream header")
        eq(r.body, b"headers\n", "body")


def test_upstream_content_length_passes_only_where_it_frames_the_body():
    # RFC 9112 6.3: a proxy removes a Content-Length sent beside
    # Transfer-Encoding; RFC 9110 8.6: none on a 204; a list of one value
    # ("2, 2") goes on as one plain number.
    with Upstream() as up, Flowgate(upstream=up) as fg:
        r = fg.get("/framing/te-cl")
        eq((r.status, r.all("Content-Length"), r.body), (200, [], b"ok"), "chunked and a length")
        check("chunked" in (r.header("Transfer-Encoding") or ""), "Transfer-Encoding dropped")
        r = fg.get("/framing/cl-list")
        eq((r.status, r.all("Content-Length"), r.body), (200, ["2"], b"ok"),
           "a list of one length")
        r = fg.get("/framing/204-cl")
        eq((r.status, r.all("Content-Length")), (204, []), "a 204 with a length")
        eq(fg.get("/after").status, 200, "an ordinary request afterwards")


def test_own_error_carries_headers():
    with Upstream() as up, Flowgate({"routes": ({"host": "", "path": "/api/",
                                                 "upstream": "api", "auth": "none"},)},
                                    upstream=up) as fg:
        r = fg.get("/nowhere")
        assert_error(r, 404, "not_found")
        assert_new_request_id(r)
        eq(up.requests(), [], "upstream requests for an unrouted path")


def test_upstream_sees_forwarding_headers_and_no_client_copies():
    with Upstream() as up, Flowgate(upstream=up) as fg:
        hdrs = [
            ("X-Forwarded-For", "203.0.113.9"), ("X-Forwarded-Proto", "http"),
            ("X-Forwarded-Host", "evil.example"), ("X-Real-IP", "203.0.113.9"),
            ("X-User-Id", "admin"), ("X-User-Tier", "premium"), ("X_User_Id", "admin"),
            ("X-Request-Id", "client-chosen-id"),
            ("Connection", "keep-alive, X-Drop"), ("X-Drop", "1"), ("Keep-Alive", "timeout=99"),
            ("Proxy-Connection", "keep-alive"), ("TE", "gzip"), ("Trailer", "X-Trail"),
            ("X-Normal", "passes"),
        ]
        r = fg.get("/seen?q=1", headers=hdrs, host="localhost:%d" % fg.https_port)
        eq(r.status, 200, "status")
        rid = assert_new_request_id(r)
        rec = up.requests()[-1]
        eq(rec["target"], "/seen?q=1", "target")
        eq(req_header(rec, "X-Forwarded-For"), ["127.0.0.1"], "X-Forwarded-For (untrusted)")
        eq(req_header(rec, "X-Forwarded-Proto"), ["https"], "X-Forwarded-Proto")
        eq(req_header(rec, "X-Forwarded-Host"), ["localhost:%d" % fg.https_port],
           "X-Forwarded-Host")
        eq(req_header(rec, "X-Real-IP"), ["127.0.0.1"], "X-Real-IP")
        eq(req_header(rec, "X-Request-Id"), [rid], "X-Request-Id")
        for name in ("X-User-Id", "X-User-Tier", "X_User_Id", "X-Drop", "Proxy-Connection",
                     "Trailer"):
            eq(req_header(rec, name), [], "client's %s at the upstream" % name)
        check("timeout=99" not in req_header(rec, "Keep-Alive"), "client's Keep-Alive forwarded")
        check("gzip" not in req_header(rec, "TE"), "client's TE forwarded")
        check(all("x-drop" not in v.lower() for v in req_header(rec, "Connection")),
              "client's Connection tokens forwarded")
        eq(req_header(rec, "X-Normal"), ["passes"], "an ordinary header")
        eq(len(req_header(rec, "Host")), 1, "one Host")


def test_upgrade_header_is_not_forwarded():
    with Upstream() as up, Flowgate(upstream=up) as fg:
        r = fg.get("/u", headers=[("Connection", "Upgrade"), ("Upgrade", "h2c")])
        check(r.status in (200, 400), "status %d" % r.status)
        for rec in up.requests():
            eq(req_header(rec, "Upgrade"), [], "Upgrade at the upstream")


def test_trusted_proxy_forwarding_headers_and_request_id():
    cfg = {"rate_limit": {
        "redis": {"address": "127.0.0.1:1", "timeout_ms": 50},
        "on_redis_failure": "allow",
        "trusted_proxies": ["127.0.0.0/8"],
        "tiers": {"anonymous": {"limit": 100000, "window": 60},
                  "authenticated": {"limit": 100000, "window": 60},
                  "premium": {"limit": 100000, "window": 60}},
        "endpoints": (),
    }}
    with Upstream() as up, Flowgate(cfg, upstream=up) as fg:
        r = fg.get("/t", headers=[("X-Forwarded-For", "203.0.113.7"),
                                  ("X-Request-Id", "lb-Req.42_x")])
        eq(r.status, 200, "status")
        eq(r.header("X-Request-Id"), "lb-Req.42_x", "a trusted proxy's X-Request-Id is kept")
        rec = up.requests()[-1]
        eq(req_header(rec, "X-Forwarded-For"), ["203.0.113.7, 127.0.0.1"],
           "X-Forwarded-For appended for a trusted proxy")
        eq(req_header(rec, "X-Real-IP"), ["203.0.113.7"], "X-Real-IP from a trusted proxy's list")
        eq(req_header(rec, "X-Request-Id"), ["lb-Req.42_x"], "upstream X-Request-Id")
        for bad in ("has space", "x" * 129, "semi;colon", ""):
            r = fg.get("/t", headers=[("X-Request-Id", bad)])
            eq(r.status, 200, "status")
            assert_new_request_id(r)


def test_untrusted_request_id_is_replaced():
    with Upstream() as up, Flowgate(upstream=up) as fg:
        r = fg.get("/t", headers=[("X-Request-Id", "abcdef0123456789abcdef0123456789")])
        rid = assert_new_request_id(r)
        check(rid != "abcdef0123456789abcdef0123456789", "an untrusted client's id was kept")
        eq(req_header(up.requests()[-1], "X-Request-Id"), [rid], "upstream X-Request-Id")


def test_path_is_normalised_and_query_kept():
    with Upstream() as up, Flowgate(upstream=up) as fg:
        for sent, seen in (("/a/./b/../c?x=%2e&y=1", "/a/c?x=%2e&y=1"),
                           ("/%7Euser/%41b", "/~user/Ab"),
                           ("/a/%2e%2e/b", "/b")):
            r = fg.get(sent)
            eq(r.status, 200, "status of %s" % sent)
            eq(up.requests()[-1]["target"], seen, "upstream target for %s" % sent)


def test_path_parameters_never_pick_a_weaker_route():
    """A servlet container serves /api;/x as /api/x: with ';' routed as part of
    a segment, /api;/x would take the optional / route to a required one."""
    cfg = {"routes": ({"host": "", "path": "/api/", "upstream": "api", "auth": "required"},
                      {"host": "", "path": "/", "upstream": "api", "auth": "optional"})}
    with Upstream() as up, Flowgate(cfg, upstream=up) as fg:
        for path in ("/api;/x", "/api;jsessionid=1/x", "/a%70i;/x", "/api/x;", "/;/api/x",
                     "/api%3B/x", "/api%3b/x", "/public/..;/api/x", "/x;a=1"):
            assert_error(fg.get(path), 400, "bad_request")
        eq(up.requests(), [], "what reached the upstream")
        # ';' in the query is no path parameter: routed on the path alone
        assert_error(fg.get("/api/x?a=1;b=2"), 401, "invalid_token")
        eq(fg.get("/x?a=1;b=2").status, 200, "status on the optional route")
        eq(up.requests()[-1]["target"], "/x?a=1;b=2", "upstream target")


def test_request_trailers_never_reach_the_upstream():
    data = pattern(200000)
    with Upstream() as up, Flowgate(upstream=up) as fg:
        c = fg.tls()
        for split in (False, True):
            send_chunked(c, "/sha256", data, FORBIDDEN_TRAILERS, split=split)
            r = c.read_response()
            eq(r.status, 200, "status")
            eq(r.json(), {"len": len(data), "sha256": sha256(data)}, "body at the upstream")
            rec = up.requests()[-1]
            check(rec["complete"], "upstream framing: %s" % rec.get("error"))
            eq(rec["trailers"], "", "trailer section at the upstream (split %s)" % split)
            eq(req_header(rec, "X-User-Id"), [], "X-User-Id at the upstream")
        # both sides of the two links are still in step
        r = c.request("GET", "/after")
        c.close()
        eq(r.status, 200, "a request after the trailers")
        eq(up.requests()[-1]["target"], "/after", "upstream target")
        eq(len({x["conn"] for x in up.requests()}), 1, "upstream connections used")


def test_transfer_encoding_trailer_is_refused():
    with Upstream() as up, Flowgate(upstream=up) as fg:
        c = fg.tls()
        send_chunked(c, "/sha256", b"hello", b"Transfer-Encoding: chunked\r\n")
        try:
            assert_error(c.read_response(timeout=15), 400, "bad_request")
        except ConnectionClosed:
            pass  # the head was forwarded: a body error may end the connection instead
        check(c.wait_closed(10), "connection open after a refused trailer")
        c.close()
        sentinel(fg, up)
        for x in up.requests():
            eq(x["trailers"], "", "trailer section at the upstream")
            check(x["target"] != "/sha256" or not x["complete"],
                  "upstream received the request complete")


def test_response_trailers_are_dropped():
    with Upstream() as up, Flowgate(upstream=up) as fg:
        c = fg.tls()
        for _ in range(2):
            r = c.request("GET", "/trailers")
            eq(r.status, 200, "status")
            eq(r.body, b"trailers\n", "body")
            eq(r.trailers, [], "trailer fields at the client")
            check(not r.has("Trailer"), "Trailer header at the client")
        c.close()


def test_http_listener_redirects():
    with Upstream() as up, Flowgate(upstream=up) as fg:
        for method in ("GET", "POST", "HEAD"):
            c = fg.plain()
            r = c.request(method, "/path/x?q=1&b=2", host="localhost:%d" % fg.http_port,
                          body=b"data" if method == "POST" else None)
            c.close()
            eq(r.status, 308, "%s redirect status" % method)
            eq(r.header("Location"), "https://localhost:%d/path/x?q=1&b=2" % fg.https_port,
               "Location")
            assert_security_headers(r, https=False)
            if r.body and method != "HEAD":
                r.json()
        eq(up.requests(), [], "a plain-http request reached the upstream")


def test_redirect_omits_port_443_and_uses_status():
    with Upstream() as up, Flowgate({"redirect": {"https_port": 443, "status": 301}},
                                    upstream=up) as fg:
        r = plain_request(fg.http_port, "GET", "/a?b", host="Example.localhost")
        eq(r.status, 301, "status")
        loc = r.header("Location") or ""
        check(loc.lower() == "https://example.localhost/a?b", "Location %r" % loc)
        eq(up.requests(), [], "forwarded")


def test_routing_by_prefix_host_and_methods():
    with Upstream("A") as a, Upstream("B") as b, Upstream("C") as c:
        cfg = {
            "upstreams": {
                "api": {"servers": [a.addr]},
                "b": {"servers": [b.addr]},
                "c": {"servers": [c.addr]},
            },
            "routes": (
                {"host": "", "path": "/api/", "upstream": "api", "auth": "none"},
                {"host": "", "path": "/", "upstream": "b", "auth": "none"},
                {"host": "site.preview.localhost", "path": "/", "upstream": "c", "auth": "none"},
                {"host": "", "path": "/ro", "upstream": "api", "auth": "none",
                 "methods": ["GET", "HEAD"]},
            ),
        }
        with Flowgate(cfg) as fg:
            eq(fg.get("/api/x").json()["upstream"], "A", "/api/x")
            eq(fg.get("/apix").json()["upstream"], "B", "/apix (segment boundary)")
            eq(fg.get("/other").json()["upstream"], "B", "/other")
            eq(fg.get("/ro/x").json()["upstream"], "A", "GET on a methods route")
            r = fg.post("/ro/x", b"x")
            assert_error(r, 405, "method_not_allowed")
            allow = {m.strip() for m in (r.header("Allow") or "").split(",")}
            eq(allow, {"GET", "HEAD"}, "Allow")
            for u in (a, b, c):
                check(all(x["method"] != "POST" for x in u.requests()),
                      "a refused method was forwarded")


def test_host_specific_route_wins():
    """A route for the request's host is chosen over any-host routes, even ones
    with a longer path prefix; hosts compare case-insensitively."""
    with Upstream("A") as a, Upstream("C") as c:
        cfg = {
            "upstreams": {"api": {"servers": [a.addr]}, "c": {"servers": [c.addr]}},
            "routes": (
                {"host": "", "path": "/api/", "upstream": "api", "auth": "none"},
                {"host": "site.preview.localhost", "path": "/", "upstream": "c", "auth": "none"},
            ),
        }
        with Flowgate(cfg) as fg:
            conn = fg.tls(server_hostname="site.preview.localhost")
            eq(conn.request("GET", "/x", host="SITE.Preview.LOCALHOST").json()["upstream"], "C",
               "/x on the host-specific route")
            eq(conn.request("GET", "/api/x", host="site.preview.localhost").json()["upstream"],
               "C", "/api/x on the host with its own route")
            conn.close()
            eq(fg.get("/api/x").json()["upstream"], "A", "/api/x on another host")


def test_stream_upload_5mb_content_length_and_chunked():
    data = pattern(FIVE_MB)
    with Upstream() as up, Flowgate(upstream=up) as fg:
        r = fg.post("/sha256", data, timeout=60)
        eq(r.status, 200, "status")
        eq(r.json(), {"len": FIVE_MB, "sha256": sha256(data)}, "upstream digest (Content-Length)")
        c = fg.tls()
        c.send(b"POST /sha256 HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n")
        step = 100000
        for i in range(0, len(data), step):
            piece = data[i:i + step]
            c.send(b"%x\r\n" % len(piece) + piece + b"\r\n")
        c.send(b"0\r\n\r\n")
        r = c.read_response(timeout=60)
        c.close()
        eq(r.status, 200, "status")
        eq(r.json(), {"len": FIVE_MB, "sha256": sha256(data)}, "upstream digest (chunked)")


def test_stream_download_5mb_content_length_and_chunked():
    want = sha256(pattern(FIVE_MB))
    with Upstream() as up, Flowgate(upstream=up) as fg:
        for path in ("/bytes/%d" % FIVE_MB, "/bytes/%d?chunked=1" % FIVE_MB):
            r = fg.get(path, timeout=60)
            eq(r.status, 200, "status of %s" % path)
            check(r.complete, "incomplete body for %s" % path)
            eq(len(r.body), FIVE_MB, "length of %s" % path)
            eq(sha256(r.body), want, "digest of %s" % path)
            eq(r.header("X-Body-Sha256"), want, "X-Body-Sha256 of %s" % path)


def test_keepalive_and_upstream_pool_reuse():
    with Upstream() as up, Flowgate(upstream=up) as fg:
        c = fg.tls()
        eq(c.request("GET", "/k1").status, 200, "first")
        eq(c.request("GET", "/k2").status, 200, "second on the same client connection")
        c.close()
        c = fg.tls()
        eq(c.request("GET", "/k3").status, 200, "third, new client connection")
        c.close()
        recs = up.requests()
        eq([x["target"] for x in recs], ["/k1", "/k2", "/k3"], "targets")
        eq(len({x["conn"] for x in recs}), 1,
           "upstream connections used (conn serials %r)" % [x["conn"] for x in recs])


def test_pipelined_requests_answered_in_order():
    with Upstream() as up, Flowgate(upstream=up) as fg:
        c = fg.tls()
        c.send(b"GET /p1 HTTP/1.1\r\nHost: localhost\r\n\r\n"
               b"GET /bytes/100 HTTP/1.1\r\nHost: localhost\r\n\r\n"
               b"GET /p3 HTTP/1.1\r\nHost: localhost\r\n\r\n")
        r1, r2, r3 = c.read_response(), c.read_response(), c.read_response()
        c.close()
        eq(r1.json()["path"], "/p1", "first answer")
        eq(r2.body, pattern(100), "second answer")
        eq(r3.json()["path"], "/p3", "third answer")


def test_head_and_204_keep_framing():
    with Upstream() as up, Flowgate(upstream=up) as fg:
        c = fg.tls()
        r = c.request("HEAD", "/bytes/1000")
        eq((r.status, r.body), (200, b""), "HEAD")
        eq(c.request("GET", "/status/204").status, 204, "204")
        r = c.request("GET", "/bytes/10")
        eq(r.body, pattern(10), "a request after HEAD and 204 on one connection")
        c.close()


def test_upstream_refused_is_502():
    with Flowgate(upstream=None) as fg:
        assert_error(fg.get("/x"), 502, "bad_gateway")


def test_upstream_close_before_response_is_502():
    with Upstream() as up, Flowgate(upstream=up) as fg:
        assert_error(fg.get("/close-before"), 502, "bad_gateway")
        assert_error(fg.get("/reset"), 502, "bad_gateway")
        eq(fg.get("/after").status, 200, "flowgate serves after upstream failures")


def test_upstream_read_timeout_is_504():
    with Upstream() as up, Flowgate({"upstreams": {"api": {"read_timeout_ms": 500}}},
                                    upstream=up) as fg:
        assert_error(fg.get("/slow/3000"), 504, "gateway_timeout")


def test_upstream_truncated_response_is_never_complete():
    with Upstream() as up, Flowgate(upstream=up) as fg:
        c = fg.tls()
        try:
            r = c.request("GET", "/truncate", timeout=20)
            check(not r.complete, "a truncated upstream body reached the client as complete: %r"
                  % (r,))
            eq(r.status, 200, "status of the truncated response")
        except ConnectionClosed:
            pass
        check(c.wait_closed(10), "client connection left open after a truncated body")
        c.close()


def test_slow_trickle_response_passes():
    with Upstream() as up, Flowgate(upstream=up) as fg:
        r = fg.get("/trickle?ms=30")
        eq((r.status, r.body), (200, b"trickle-" * 8), "trickled response")


def test_expect_100_continue():
    with Upstream() as up, Flowgate(upstream=up) as fg:
        c = fg.tls()
        c.send(b"POST /expect HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\n"
               b"Expect: 100-continue\r\n\r\n")
        r = c.read_response(interim=True, timeout=10)
        eq(r.status, 100, "interim response")
        eq(r.raw_head.split(b"\r\n")[0], b"HTTP/1.1 100 Continue", "interim status line")
        c.send(b"hello")
        r = c.read_response(timeout=10)
        c.close()
        eq(r.status, 200, "final response")
        recs = [x for x in up.requests() if x["target"] == "/expect"]
        eq(len(recs), 1, "forwarded once")
        eq((recs[0]["body_len"], recs[0]["body_sha256"]), (5, sha256(b"hello")), "body")


def test_expect_other_than_continue_is_417():
    """RFC 9110 10.1.1: nothing forwarded; a body the client may still send
    is not read, so the connection closes, unless no body is framed."""
    bodies = (b"Content-Length: 5\r\n", b"Transfer-Encoding: chunked\r\n")
    with Upstream() as up, Flowgate(upstream=up) as fg:
        for framing in bodies:
            c = fg.tls()
            c.send(b"POST /e417 HTTP/1.1\r\nHost: localhost\r\n" + framing +
                   b"Expect: 100-continue, x-later\r\n\r\n")
            r = c.read_response(timeout=10)
            assert_error(r, 417, "expectation_failed")
            assert_closes(c, r)
            c.close()
        c = fg.tls()
        c.send(b"GET /e417 HTTP/1.1\r\nHost: localhost\r\nExpect: x-later\r\n\r\n")
        r = c.read_response(timeout=10)
        assert_error(r, 417, "expectation_failed")
        check("close" not in (r.header("Connection") or "").lower(),
              "417 without a body closed the connection")
        r = c.request("GET", "/after417", timeout=10)
        c.close()
        eq(r.status, 200, "the next request on the connection")
        eq(up.targets(), ["/after417"], "what reached the upstream")
        log = [x for x in fg.access_log() if x.get("status") == 417]
        eq(len(log), 3, "417s in the access log")


def test_admin_health_and_ready():
    with Flowgate() as fg:
        r = plain_request(fg.admin_port, "GET", "/healthz", host="127.0.0.1")
        eq(r.status, 200, "/healthz")
        r = plain_request(fg.admin_port, "GET", "/readyz", host="127.0.0.1")
        eq(r.status, 200, "/readyz")
        check(isinstance(r.json(), dict), "/readyz body is a JSON object")


def test_curl_through_flowgate():
    from harness import curl
    with Upstream() as up, Flowgate(upstream=up) as fg:
        p = curl(["-i", "--http1.1", "https://localhost:%d/curl?a=b" % fg.https_port])
        eq(p.returncode, 0, "curl exit (stderr %r)" % p.stderr)
        head = p.stdout.split(b"\r\n\r\n")[0].decode("latin-1")
        check(head.startswith("HTTP/1.1 200"), "curl status line: %r" % head[:40])
        check(("strict-transport-security: " + HSTS).lower() in head.lower(), "HSTS via curl")
        eq(up.targets(), ["/curl?a=b"], "upstream targets")


def test_server_header_when_configured():
    with Upstream() as up, Flowgate({"headers": {"server": "flowgate"}}, upstream=up) as fg:
        r = fg.get("/headers")
        eq(r.all("Server"), ["flowgate"], "Server header replaces the upstream's")


def _blackhole_listener():
    """A listening socket whose backlog is full: a connect to it hangs (the
    kernel drops the SYN), which is how an unresponsive server looks."""
    import socket
    lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(0)
    fillers = []
    for _ in range(4):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        try:
            s.connect(lsock.getsockname())
        except BlockingIOError:
            pass
        fillers.append(s)
    return lsock, fillers


def test_upstream_connect_timeout_is_504_and_client_abort_mid_connect_is_safe():
    import time
    lsock, fillers = _blackhole_listener()
    addr = "127.0.0.1:%d" % lsock.getsockname()[1]
    try:
        with Upstream() as up, Flowgate({"upstreams": {"api": {
                "servers": [addr], "connect_timeout_ms": 700}}}, upstream=up) as fg:
            # A client that gives up while flowgate is still connecting: the
            # pending connect must be dropped with it (ASan watches).
            for _ in range(3):
                c = fg.tls()
                c.send(b"GET /x HTTP/1.1\r\nHost: localhost\r\n\r\n")
                time.sleep(0.1)
                c.close()
            time.sleep(1.0)  # let the abandoned connects time out
            assert_error(fg.get("/y"), 504, "gateway_timeout")
    finally:
        for s in fillers:
            s.close()
        lsock.close()


def test_client_abort_while_upstream_is_slow_then_service_goes_on():
    import time
    with Upstream() as up, Flowgate(upstream=up) as fg:
        for _ in range(3):
            c = fg.tls()
            c.send(b"GET /slow/800 HTTP/1.1\r\nHost: localhost\r\n\r\n")
            time.sleep(0.1)
            c.close()
        time.sleep(1.2)
        r = fg.get("/after")
        eq(r.status, 200, "request after aborted ones")
        eq(up.targets()[-1], "/after", "last request the upstream saw")
