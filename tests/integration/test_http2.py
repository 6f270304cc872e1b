"""HTTP/2 to clients: negotiation, every stage per stream, flow control,
concurrency, the upstream's view, the log, draining and the idle bound.

The HTTP/2 client is python3-h2 (Debian's, pure Python); curl --http2 checks
that a common client negotiates and gets the same answers.
"""

import json
import os
import socket
import ssl
import sys
import time

from harness import (Flowgate, HSTS, Skip, Upstream, access_token, check, client_context, curl, eq,
                     fail, pattern, req_header, sha256)

try:
    import h2.config
    import h2.connection
    import h2.events
    import h2.settings
except ImportError:
    # Debian's python3-h2 lives in the system interpreter's dist-packages;
    # the runner may run under another Python 3 (h2, hpack, hyperframe are
    # pure Python, so the same minor version reads them).
    if os.path.isdir("/usr/lib/python3/dist-packages/h2"):
        sys.path.append("/usr/lib/python3/dist-packages")
    try:
        import h2.config
        import h2.connection
        import h2.events
        import h2.settings
    except ImportError:
        h2 = None

TIMEOUT = 90


def need_h2():
    if h2 is None:
        raise Skip("python3-h2 is not installed")


class H2Client:
    """One HTTP/2 connection over TLS (ALPN h2), driven by python3-h2."""

    def __init__(self, port, window=None, host="localhost", timeout=20.0, settings=None):
        need_h2()
        ctx = client_context(alpn=["h2", "http/1.1"])
        raw = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock = ctx.wrap_socket(raw, server_hostname=host)
        self.alpn = self.sock.selected_alpn_protocol()
        if self.alpn != "h2":
            fail("ALPN selected %r, not h2" % self.alpn)
        self.timeout = timeout
        self.host = host
        cfg = h2.config.H2Configuration(client_side=True, header_encoding="utf-8",
                                        validate_outbound_headers=False,
                                        normalize_outbound_headers=False)
        self.conn = h2.connection.H2Connection(config=cfg)
        local = dict(settings or {})
        if window is not None:
            local[h2.settings.SettingCodes.INITIAL_WINDOW_SIZE] = window
        if local:
            self.conn.local_settings = h2.settings.Settings(client=True, initial_values=local)
        self.conn.initiate_connection()
        self.auto_window = True
        self.streams = {}      # id -> {"headers", "data", "ended", "reset", "informational"}
        self.goaways = []
        self.closed = False
        self.flush()

    def flush(self):
        data = self.conn.data_to_send()
        if data:
            self.sock.sendall(data)

    def start(self, method="GET", path="/", headers=(), body=None, authority=None,
              end_stream=None):
        sid = self.conn.get_next_available_stream_id()
        hdrs = [(":method", method), (":scheme", "https"),
                (":authority", authority if authority is not None else self.host),
                (":path", path)] + list(headers)
        if authority is False:
            hdrs = [h for h in hdrs if h[0] != ":authority"]
        if end_stream is None:
            end_stream = body is None
        self.conn.send_headers(sid, hdrs, end_stream=end_stream)
        self.streams[sid] = {"headers": None, "data": bytearray(), "ended": False,
                             "reset": None, "informational": []}
        self.flush()
        if body is not None:
            self.send_body(sid, body)
        return sid

    def send_body(self, sid, body, end=True):
        """Send BODY within the flow-control windows, reading as we go."""
        view = memoryview(body)
        while view:
            window = min(self.conn.local_flow_control_window(sid),
                         self.conn.max_outbound_frame_size)
            if window <= 0:
                self.pump(0.5)
                if self.streams[sid]["ended"] or self.streams[sid]["reset"] is not None:
                    return
                continue
            n = min(window, len(view))
            self.conn.send_data(sid, view[:n].tobytes())
            view = view[n:]
            self.flush()
        if end:
            self.conn.end_stream(sid)
            self.flush()

    def pump(self, timeout):
        """Read and handle what arrives within TIMEOUT; False once closed."""
        if self.closed:
            return False
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(65536)
        except (socket.timeout, ssl.SSLWantReadError):
            return True
        except (ConnectionResetError, ssl.SSLError, OSError):
            self.closed = True
            return False
        if not data:
            self.closed = True
            return False
        if self.goaways:
            self.raw_frames(data)
            return True
        for ev in self.conn.receive_data(data):
            self.handle(ev)
        self.flush()
        return True

    def raw_frames(self, data):
        """After a GOAWAY python3-h2 refuses every frame (it takes any GOAWAY
        as the end), while RFC 9113 6.8 lets streams up to the last id
        finish: read those frames here, with the connection's HPACK state."""
        import hyperframe.frame as hf
        self.rawbuf = getattr(self, "rawbuf", b"") + data
        while len(self.rawbuf) >= 9:
            frame, length = hf.Frame.parse_frame_header(memoryview(self.rawbuf[:9]))
            if len(self.rawbuf) < 9 + length:
                return
            frame.parse_body(memoryview(self.rawbuf[9:9 + length]))
            self.rawbuf = self.rawbuf[9 + length:]
            st = self.streams.get(frame.stream_id)
            if isinstance(frame, hf.GoAwayFrame):
                self.goaways.append((frame.error_code, frame.last_stream_id))
            elif isinstance(frame, hf.HeadersFrame) and st is not None:
                st["headers"] = [(k.decode() if isinstance(k, bytes) else k,
                                  v.decode() if isinstance(v, bytes) else v)
                                 for k, v in self.conn.decoder.decode(frame.data)]
            elif isinstance(frame, hf.DataFrame) and st is not None:
                st["data"] += frame.data
            elif isinstance(frame, hf.RstStreamFrame) and st is not None:
                st["reset"] = frame.error_code
            if st is not None and "END_STREAM" in frame.flags:
                st["ended"] = True

    def handle(self, ev):
        if isinstance(ev, h2.events.ResponseReceived):
            self.streams[ev.stream_id]["headers"] = ev.headers
        elif isinstance(ev, h2.events.InformationalResponseReceived):
            self.streams[ev.stream_id]["informational"].append(ev.headers)
        elif isinstance(ev, h2.events.DataReceived):
            self.streams[ev.stream_id]["data"] += ev.data
            if self.auto_window and ev.flow_controlled_length:
                self.conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
        elif isinstance(ev, h2.events.StreamEnded):
            self.streams[ev.stream_id]["ended"] = True
        elif isinstance(ev, h2.events.StreamReset):
            self.streams[ev.stream_id]["reset"] = ev.error_code
        elif isinstance(ev, h2.events.ConnectionTerminated):
            self.goaways.append((ev.error_code, ev.last_stream_id))

    def wait(self, sids, timeout=None):
        deadline = time.monotonic() + (timeout or self.timeout)
        while time.monotonic() < deadline:
            if all(self.streams[s]["ended"] or self.streams[s]["reset"] is not None
                   for s in sids):
                return
            if not self.pump(0.2) and not self.closed:
                break
            if self.closed:
                break
        if not all(self.streams[s]["ended"] or self.streams[s]["reset"] is not None
                   for s in sids):
            fail("streams %r did not end (closed=%s, goaway=%r)" % (sids, self.closed,
                                                                   self.goaways))

    def response(self, sid):
        st = self.streams[sid]
        if st["reset"] is not None:
            fail("stream %d was reset (error %r)" % (sid, st["reset"]))
        return H2Response(st["headers"], bytes(st["data"]))

    def request(self, method="GET", path="/", headers=(), body=None, **kw):
        sid = self.start(method, path, headers, body, **kw)
        self.wait([sid])
        return self.response(sid)

    def close(self):
        try:
            self.conn.close_connection()
            self.flush()
        except Exception:  # the server may have closed first
            pass
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


class H2Response:
    def __init__(self, headers, body):
        if headers is None:
            fail("stream ended without a response head")
        self.fields = [(k, v) for k, v in headers]
        self.status = int(dict(self.fields)[":status"])
        self.body = body
        for name, _ in self.fields:
            check(name == name.lower(), "uppercase field name %r in an HTTP/2 response" % name)

    def header(self, name):
        vals = self.all(name)
        return vals[0] if vals else None

    def all(self, name):
        return [v for k, v in self.fields if k == name.lower()]

    def has(self, name):
        return bool(self.all(name))

    def json(self):
        return json.loads(self.body)


def h2_error(r, status, code):
    eq(r.status, status, "status")
    eq(r.header("content-type"), "application/json", "content-type of flowgate's error")
    doc = r.json()
    eq(doc.get("error"), code, "error code")
    eq(doc.get("request_id"), r.header("x-request-id"), "request_id matches X-Request-Id")


def h2_security_headers(r):
    eq(r.header("strict-transport-security"), HSTS, "HSTS")
    eq(r.header("x-frame-options"), "SAMEORIGIN", "X-Frame-Options")
    eq(r.header("x-content-type-options"), "nosniff", "X-Content-Type-Options")
    check(r.has("x-request-id"), "X-Request-Id on every response")
    for name in ("connection", "keep-alive", "transfer-encoding"):
        check(not r.has(name), "connection-specific %s in an HTTP/2 response" % name)


# ---------------------------------------------------------------- negotiation

def test_http2_alpn_selects_h2_and_curl_gets_the_same_answer():
    with Upstream() as up, Flowgate(upstream=up) as fg:
        with H2Client(fg.https_port) as c:
            r = c.request("GET", "/hello?x=1")
            eq(r.status, 200, "status over HTTP/2")
            h2_security_headers(r)
            eq(r.json()["path"], "/hello?x=1" if "?" in r.json()["path"] else "/hello",
               "upstream saw the path")
        p = curl(["--http2", "-o", "/dev/null", "-w", "%{http_version} %{http_code}",
                  "https://localhost:%d/hello" % fg.https_port])
        eq(p.returncode, 0, "curl --http2 exit status (%s)" % p.stderr.decode(errors="replace"))
        eq(p.stdout.decode(), "2 200", "curl negotiated HTTP/2 and got 200")
        p = curl(["--http1.1", "-o", "/dev/null", "-w", "%{http_version} %{http_code}",
                  "https://localhost:%d/hello" % fg.https_port])
        eq(p.stdout.decode(), "1.1 200", "HTTP/1.1 clients are unchanged")
        rec = up.requests()
        eq(len(rec), 3, "requests upstream")
        eq(rec[0]["version"], "HTTP/1.1", "the upstream receives HTTP/1.1")


def test_http2_disabled_offers_only_http11():
    with Upstream() as up, Flowgate({"http2": {"enabled": False}}, upstream=up) as fg:
        ctx = client_context(alpn=["h2", "http/1.1"])
        with socket.create_connection(("127.0.0.1", fg.https_port), timeout=10) as raw:
            with ctx.wrap_socket(raw, server_hostname="localhost") as s:
                eq(s.selected_alpn_protocol(), "http/1.1", "ALPN with http2.enabled = false")
        p = curl(["--http2", "-o", "/dev/null", "-w", "%{http_version} %{http_code}",
                  "https://localhost:%d/hello" % fg.https_port])
        eq(p.stdout.decode(), "1.1 200", "curl --http2 falls back to HTTP/1.1")


def test_http2_host_at_upstream_comes_from_authority():
    with Upstream() as up, Flowgate(upstream=up) as fg:
        with H2Client(fg.https_port) as c:
            eq(c.request("GET", "/a", authority="localhost:%d" % fg.https_port).status, 200,
               "status")
            eq(c.request("GET", "/b", authority=False,
                         headers=[("host", "localhost")]).status, 200,
               "a request with Host and no :authority")
            eq(c.request("GET", "/c", headers=[("host", "LOCALHOST")]).status, 200,
               "Host agreeing with :authority")
            c.request("GET", "/d", headers=[("cookie", "a=1"), ("cookie", "b=2"),
                                            ("te", "trailers")])
        recs = up.requests()
        eq(req_header(recs[0], "Host"), ["localhost:%d" % fg.https_port], "Host from :authority")
        eq(req_header(recs[1], "Host"), ["localhost"], "Host from the Host field")
        eq(req_header(recs[2], "Host"), ["localhost"], "one Host, from :authority")
        eq(req_header(recs[3], "Cookie"), ["a=1; b=2"], "cookie crumbs joined (RFC 9113 8.2.3)")
        eq(req_header(recs[3], "TE"), [], "TE: trailers is not forwarded")
        eq(req_header(recs[3], "X-Forwarded-Proto"), ["https"], "X-Forwarded-Proto")
        for rec in recs:
            eq(rec["version"], "HTTP/1.1", "upstream version")
            check(not rec["raw_head"].startswith(":"), "pseudo-header upstream")


JWT_ROUTES = (
    {"host": "", "path": "/api/", "upstream": "api", "auth": "required"},
    {"host": "", "path": "/open", "upstream": "api", "auth": "none"},
    {"host": "", "path": "/ro", "upstream": "api", "auth": "none", "methods": ["GET", "HEAD"]},
)
APP = "https://app.example.com"


def stage_config():
    return {
        "routes": JWT_ROUTES,
        "jwt": {"forward_claims": (("X-User-Id", "sub"),)},
        "cors": {"origins": [APP], "credentials": True,
                 "methods": ["GET", "HEAD", "POST", "PUT", "DELETE"],
                 "headers": ["Authorization", "Content-Type"],
                 "expose_headers": ["X-Request-Id"], "max_age": 600},
    }


def test_http2_stages_answer_per_stream():
    with Upstream() as up, Flowgate(stage_config(), upstream=up) as fg:
        with H2Client(fg.https_port) as c:
            sids = {
                "noauth": c.start("GET", "/api/x"),
                "auth": c.start("GET", "/api/x", headers=[
                    ("authorization", "Bearer " + access_token("user-7")),
                    ("x-user-id", "forged")]),
                "none": c.start("GET", "/nowhere/x"),
                "ro": c.start("POST", "/ro", body=b"x"),
                "preflight": c.start("OPTIONS", "/open", headers=[
                    ("origin", APP), ("access-control-request-method", "PUT")]),
                "cors": c.start("GET", "/open", headers=[("origin", APP)]),
                "cors_bad": c.start("POST", "/open", headers=[
                    ("origin", "https://evil.example.net")], body=b"{}"),
                "head": c.start("HEAD", "/open"),
            }
            c.wait(list(sids.values()))
            r = {k: c.response(v) for k, v in sids.items()}
        for k, resp in r.items():
            h2_security_headers(resp)
        h2_error(r["noauth"], 401, "invalid_token")
        eq(r["noauth"].header("www-authenticate"), 'Bearer realm="flowgate"', "WWW-Authenticate")
        eq(r["auth"].status, 200, "valid token")
        h2_error(r["none"], 404, "not_found")
        h2_error(r["ro"], 405, "method_not_allowed")
        eq(r["ro"].header("allow"), "GET, HEAD", "Allow")
        eq(r["preflight"].status, 204, "preflight")
        eq(r["preflight"].header("access-control-allow-origin"), APP, "preflight origin")
        check("PUT" in (r["preflight"].header("access-control-allow-methods") or ""),
              "Access-Control-Allow-Methods on the preflight")
        eq(r["preflight"].header("access-control-max-age"), "600", "Access-Control-Max-Age")
        eq(r["cors"].status, 200, "CORS request")
        eq(r["cors"].header("access-control-allow-origin"), APP, "Access-Control-Allow-Origin")
        eq(r["cors"].header("access-control-allow-credentials"), "true", "credentials")
        h2_error(r["cors_bad"], 403, "cors_rejected")
        eq(r["head"].status, 200, "HEAD")
        eq(r["head"].body, b"", "HEAD has no body")
        check(r["head"].has("content-length"), "HEAD keeps the upstream's Content-Length")
        recs = up.requests()
        eq(len(recs), 3, "requests that reached the upstream (auth, cors, head)")
        authed = [x for x in recs if x["target"] == "/api/x"]
        eq(req_header(authed[0], "X-User-Id"), ["user-7"], "forwarded claim, client's dropped")


def test_http2_rate_limit_per_stream():
    from harness import RedisServer
    with RedisServer() as redis, Upstream(record=False) as up, Flowgate({
            "rate_limit": {"redis": {"address": redis.addr, "timeout_ms": 250,
                                     "key_prefix": "fgh2:"},
                           "tiers": {"anonymous": {"limit": 3, "window": 60}}}},
            upstream=up) as fg:
        with H2Client(fg.https_port) as c:
            rs = [c.request("GET", "/x%d" % i) for i in range(4)]
        for i, r in enumerate(rs[:3]):
            eq(r.status, 200, "request %d within the limit" % i)
            eq(r.header("x-ratelimit-limit"), "3", "X-RateLimit-Limit")
            eq(r.header("x-ratelimit-remaining"), str(2 - i), "X-RateLimit-Remaining")
        h2_error(rs[3], 429, "rate_limited")
        check(rs[3].header("retry-after") is not None, "Retry-After on 429")
        eq(rs[3].header("x-ratelimit-remaining"), "0", "X-RateLimit-Remaining on 429")


def test_http2_preview_routing_and_credential_stripping():
    from harness import tmpdir
    with Upstream(name="mvp") as mvp, Upstream() as api:
        hosts = os.path.join(tmpdir(), "hosts")
        with open(hosts, "w") as f:
            f.write("127.0.0.1 mvp-alpha.previews.test\n")
        cfg = {
            "routes": ({"host": "localhost", "path": "/", "upstream": "api", "auth": "none"},),
            "previews": {"host": "mvp-{name}.preview.example.com",
                         "upstream": "mvp-{name}.previews.test:%d" % mvp.port, "auth": "none",
                         "strip_credentials": True, "platform_cookies": ["session"],
                         "frame_ancestors": APP},
            "resolver": {"nameservers": ["127.0.0.1:%d" % free_udp_port()],
                         "hosts_file": hosts},
        }
        with Flowgate(cfg, upstream=api) as fg:
            with H2Client(fg.https_port) as c:
                r = c.request("GET", "/p", authority="mvp-alpha.preview.example.com",
                              headers=[("authorization", "Bearer secret"),
                                       ("cookie", "theme=dark"), ("cookie", "session=S")])
                eq(r.status, 200, "preview status")
                eq(r.json()["upstream"], "mvp", "the preview's upstream answered")
                eq(r.header("content-security-policy"), "frame-ancestors " + APP,
                   "CSP frame-ancestors on a preview")
                check(not r.has("x-frame-options"), "X-Frame-Options on a preview")
                r = c.request("GET", "/p", authority="mvp-.preview.example.com")
                h2_error(r, 404, "not_found")
            rec = mvp.requests()[-1]
            eq(req_header(rec, "Authorization"), [], "Authorization at a preview")
            eq(req_header(rec, "Cookie"), ["theme=dark"], "platform cookie stripped")
            eq(req_header(rec, "Host"), ["mvp-alpha.preview.example.com"], "Host at the preview")


def free_udp_port():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


# ---------------------------------------------------------------- flow control

def test_http2_large_bodies_through_small_windows():
    """1 MiB up through a 16 KiB stream window (flowgate's), 3 MB down through
    a 16 KiB window (the client's), chunked and with a length."""
    body = pattern(1 << 20)
    with Upstream() as up, Flowgate({"http2": {"initial_window_bytes": 16384}},
                                    upstream=up) as fg:
        with H2Client(fg.https_port, window=16384) as c:
            r = c.request("POST", "/sha256", body=body,
                          headers=[("content-length", str(len(body)))])
            eq(r.json(), {"len": len(body), "sha256": sha256(body)}, "1 MiB with content-length")
            r = c.request("PUT", "/sha256", body=body)
            eq(r.json(), {"len": len(body), "sha256": sha256(body)}, "1 MiB without a length")
            for q in ("", "?chunked=1"):
                r = c.request("GET", "/bytes/3000000" + q)
                eq(r.status, 200, "status")
                eq(len(r.body), 3000000, "3 MB down%s" % q)
                eq(sha256(r.body), r.header("x-body-sha256"), "digest%s" % q)
        recs = up.requests()
        eq(req_header(recs[0], "Content-Length"), [str(len(body))], "length passed on")
        eq(req_header(recs[1], "Transfer-Encoding"), ["chunked"], "no length: chunked upstream")
        check(all(r["complete"] for r in recs), "every upstream request complete")


def test_http2_slow_reader_is_not_buffered_whole():
    """A client that stops reading leaves flowgate holding a bounded part of a
    big response, not all of it; it then gets every byte."""
    size = 32 * 1024 * 1024
    with Upstream(record=False) as up, Flowgate(upstream=up) as fg:
        with H2Client(fg.https_port) as c:
            c.auto_window = False
            sid = c.start("GET", "/bytes/%d" % size)
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                c.pump(0.2)
            got = len(c.streams[sid]["data"])
            check(got <= 65535, "the client's window bounds what it got (%d)" % got)
            rss = rss_kib(fg.proc.pid)
            check(rss < 200 * 1024, "flowgate's RSS %d KiB while a 32 MiB response waits" % rss)
            c.auto_window = True
            c.conn.acknowledge_received_data(got, sid) if got else None
            c.flush()
            c.wait([sid], timeout=120)
            eq(len(c.streams[sid]["data"]), size, "every byte once the client reads")


def rss_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def test_http2_hundred_concurrent_streams_on_one_connection():
    with Upstream() as up, Flowgate(upstream=up) as fg:
        with H2Client(fg.https_port) as c:
            sids = [c.start("GET", "/slow/300?i=%d" % i) for i in range(100)]
            c.wait(sids, timeout=60)
            for sid in sids:
                eq(c.response(sid).status, 200, "stream %d" % sid)
        eq(len(up.requests()), 100, "requests upstream")
        log = fg.access_log()
        eq(len([e for e in log if e.get("protocol") == "HTTP/2"]), 100, "HTTP/2 log lines")


def test_http2_shares_the_upstream_keepalive_pool_with_http11():
    with Upstream() as up, Flowgate(upstream=up) as fg:
        eq(fg.get("/h1-first").status, 200, "HTTP/1.1 request")
        with H2Client(fg.https_port) as c:
            eq(c.request("GET", "/h2").status, 200, "HTTP/2 request")
        eq(fg.get("/h1-again").status, 200, "HTTP/1.1 request")
        conns = [r["conn"] for r in up.requests()]
        eq(len(set(conns)), 1, "one upstream connection served both protocols (%r)" % conns)


def test_http2_upstream_endings_and_framings():
    """A cut response is reset, never ended; chunked bodies lose their framing
    and trailers; 1xx, 204 and 304 carry no DATA; a refused upstream is 502."""
    with Upstream() as up, Flowgate(upstream=up) as fg:
        with H2Client(fg.https_port) as c:
            sids = {k: c.start("GET", p) for k, p in (
                ("truncate", "/truncate"), ("trailers", "/trailers"),
                ("no_content", "/status/204"), ("not_modified", "/status/304"),
                ("teapot", "/status/418"))}
            c.wait(list(sids.values()))
            cut = c.streams[sids["truncate"]]
            check(cut["reset"] is not None and not cut["ended"],
                  "a truncated response was not reset (ended=%s)" % cut["ended"])
            eq(bytes(cut["data"]), b"0123456789", "the bytes before the cut")
            r = c.response(sids["trailers"])
            eq(r.body, b"trailers\n", "chunked body de-framed")
            check(not r.has("x-trailer"), "a trailer field in the head")
            for k in ("no_content", "not_modified"):
                eq(c.response(sids[k]).body, b"", "%s has no body" % k)
            eq(c.response(sids["teapot"]).status, 418, "status passed through")
    with Flowgate() as fg:  # its upstream is a closed port
        with H2Client(fg.https_port) as c:
            h2_error(c.request("GET", "/x"), 502, "bad_gateway")


def test_http2_content_length_only_where_it_frames_the_body():
    """An upstream's Content-Length beside Transfer-Encoding, on a 204, or as a
    list ("2, 2") would make the HTTP/2 response malformed (RFC 9113 8.1.1):
    the client sees none, none, and one plain number."""
    with Upstream() as up, Flowgate(upstream=up) as fg:
        with H2Client(fg.https_port) as c:
            r = c.request("GET", "/framing/te-cl")
            eq((r.status, r.all("content-length"), r.body), (200, [], b"ok"),
               "chunked and a length")
            r = c.request("GET", "/framing/cl-list")
            eq((r.status, r.all("content-length"), r.body), (200, ["2"], b"ok"),
               "a list of one length")
        with H2Client(fg.https_port) as c:
            r = c.request("GET", "/framing/204-cl")
            eq((r.status, r.all("content-length"), r.body), (204, [], b""), "a 204 with a length")
            eq(c.request("GET", "/after").status, 200, "the same connection afterwards")


# ---------------------------------------------------------------- log and metrics

def test_http2_access_log_and_metrics_name_the_protocol():
    with Upstream() as up, Flowgate(upstream=up) as fg:
        with H2Client(fg.https_port) as c:
            c.request("GET", "/two", headers=[("user-agent", "h2-test")])
        fg.get("/one")
        log = fg.access_log()
        by_path = {e["path"]: e for e in log}
        eq(by_path["/two"].get("protocol"), "HTTP/2", "protocol of an HTTP/2 stream")
        eq(by_path["/two"].get("user_agent"), "h2-test", "user agent of an HTTP/2 stream")
        eq(by_path["/one"].get("protocol"), "HTTP/1.1", "protocol of an HTTP/1.1 request")
        m = fg.metrics()
        eq(m.get("flowgate_http2_streams_total"), 1.0, "flowgate_http2_streams_total")
        eq(m.get("flowgate_http2_connections_total"), 1.0, "flowgate_http2_connections_total")
        eq(m.get('flowgate_http2_goaway_total{reason="enhance_your_calm"}'), 0.0,
           "flowgate_http2_goaway_total by reason")


# ---------------------------------------------------------------- malformed streams

def test_http2_malformed_streams_never_reach_the_upstream():
    with Upstream() as up, Flowgate({"http2": {"max_header_list_bytes": 4096}},
                                    upstream=up) as fg:
        with H2Client(fg.https_port) as c:
            resets = {
                "uppercase": c.start("GET", "/u", headers=[("X-Upper", "1")]),
                "connection": c.start("GET", "/c", headers=[("connection", "close")]),
                "te": c.start("GET", "/t", headers=[("te", "gzip")]),
                "upgrade": c.start("GET", "/g", headers=[("upgrade", "websocket")]),
                "cl_over": c.start("POST", "/l", headers=[("content-length", "3")],
                                   body=b"abcdef"),
                "cl_under": c.start("POST", "/m", headers=[("content-length", "10")],
                                    body=b"abc"),
            }
            answered = {
                "crlf": c.start("GET", "/r", headers=[("x-a", "b\r\nx-injected: 1")]),
                "nul": c.start("GET", "/n", headers=[("x-a", "b\x00c")]),
                "authority": c.start("GET", "/h", headers=[("host", "other.example")]),
                "large": c.start("GET", "/big", headers=[("x-big", "v" * 5000)]),
            }
            c.wait(list(resets.values()) + list(answered.values()))
            for name, sid in resets.items():
                check(c.streams[sid]["reset"] is not None,
                      "%s: stream not reset (headers %r)" % (name, c.streams[sid]["headers"]))
            r = {k: c.response(v) for k, v in answered.items()}
            h2_error(r["crlf"], 400, "bad_request")
            h2_error(r["nul"], 400, "bad_request")
            h2_error(r["authority"], 400, "bad_request")
            h2_error(r["large"], 431, "headers_too_large")
            eq(c.request("GET", "/fine").status, 200, "the connection still serves")
            # The DATA arriving well after the head changes nothing: a body
            # shorter or longer than its content-length is refused first.
            for name, length, data in (("short", 10, b"abc"), ("long", 3, b"abcdef")):
                sid = c.start("POST", "/late-" + name, end_stream=False,
                              headers=[("content-length", str(length))])
                c.pump(0.3)
                c.conn.send_data(sid, data, end_stream=True)
                c.flush()
                c.wait([sid])
                check(c.streams[sid]["reset"] is not None, "late %s body: not reset" % name)
        eq(up.targets(), ["/fine"], "what reached the upstream")


# ---------------------------------------------------------------- connection ends

def test_http2_sigterm_drain_sends_goaway_and_lets_a_stream_finish():
    with Upstream() as up, Flowgate({"shutdown_timeout_ms": 10000}, upstream=up) as fg:
        c = H2Client(fg.https_port)
        try:
            eq(c.request("GET", "/warm").status, 200, "before the drain")
            sid = c.start("GET", "/slow/1500")
            deadline = time.monotonic() + 10
            while len(up.requests()) < 2 and time.monotonic() < deadline:
                c.pump(0.05)
            fg.proc.send_signal(15)
            c.wait([sid], timeout=30)
            eq(c.response(sid).status, 200, "the stream in flight completed")
            deadline = time.monotonic() + 10
            while not c.closed and time.monotonic() < deadline:
                c.pump(0.2)
            check(c.closed, "the connection closed after its last stream")
            check(c.goaways, "no GOAWAY before the close")
            eq(c.goaways[0], (0, 2 ** 31 - 1), "a shutdown notice first (RFC 9113 6.8)")
            eq(c.goaways[-1], (0, sid), "the final GOAWAY: NO_ERROR, last stream %d" % sid)
        finally:
            c.sock.close()
        fg.proc.wait(timeout=20)
        eq(fg.proc.returncode, 0, "exit status after the drain")
        problems = fg.problems()
        check(problems is None, problems)
        fg.proc = None
        log = [e for e in fg.access_log() if e.get("path") == "/slow/1500"]
        eq([(e["status"], e.get("error")) for e in log], [(200, None)], "the drained stream's log")


def test_http2_idle_connection_gets_goaway_and_closes():
    with Upstream() as up, Flowgate({"http2": {"idle_timeout_ms": 300}}, upstream=up) as fg:
        with H2Client(fg.https_port) as c:
            eq(c.request("GET", "/x").status, 200, "status")
            deadline = time.monotonic() + 15
            while not c.closed and time.monotonic() < deadline:
                c.pump(0.2)
            check(c.closed, "an idle HTTP/2 connection was not closed")
            eq([g[0] for g in c.goaways], [0], "one GOAWAY NO_ERROR before the close")
        eq(fg.metrics().get('flowgate_http2_goaway_total{reason="idle"}'), 1.0,
           "GOAWAY counted as idle")


def test_http2_enabled_websocket_over_http11_still_works():
    from test_previews import ws_echo_session
    with Upstream() as up, Flowgate(upstream=up) as fg:
        ws_echo_session(fg, "localhost")
        with H2Client(fg.https_port) as c:
            r = c.request("GET", "/ws", headers=[("sec-websocket-version", "13")])
            check(r.status != 101, "no WebSocket over an HTTP/2 stream")
        settings = c.conn.remote_settings
        eq(settings.get(h2.settings.SettingCodes.ENABLE_CONNECT_PROTOCOL, 0), 0,
           "SETTINGS_ENABLE_CONNECT_PROTOCOL is not advertised")


def test_http2_rapid_reset_ends_in_enhance_your_calm():
    with Upstream(record=False) as up, Flowgate({"http2": {"max_resets_per_second": 50}},
                                                upstream=up) as fg:
        c = H2Client(fg.https_port)
        try:
            for _ in range(400):
                sid = c.conn.get_next_available_stream_id()
                c.conn.send_headers(sid, [(":method", "GET"), (":scheme", "https"),
                                          (":authority", "localhost"), (":path", "/slow/1000")])
                c.conn.reset_stream(sid)
                try:
                    c.flush()
                except OSError:
                    break
            deadline = time.monotonic() + 10
            while not c.closed and time.monotonic() < deadline:
                c.pump(0.2)
            check(c.closed, "a Rapid Reset client was not disconnected")
            eq([g[0] for g in c.goaways][-1:], [11], "GOAWAY ENHANCE_YOUR_CALM")
        finally:
            c.sock.close()
        eq(fg.metrics().get('flowgate_http2_goaway_total{reason="enhance_your_calm"}'), 1.0,
           "GOAWAY counted")


def test_http2_reload_applies_to_the_next_stream_and_settings_to_new_connections():
    from test_reload import hup, write_config
    with Upstream("a") as a, Upstream("b") as b, Flowgate(upstream=a) as fg:
        with H2Client(fg.https_port) as c:
            eq(c.request("GET", "/x").json()["upstream"], "a", "before the reload")
            write_config(fg, {"http2": {"enabled": False, "max_concurrent_streams": 7}},
                         upstream=b)
            hup(fg, expect_generation=2, failed=False)
            eq(c.request("GET", "/x").json()["upstream"], "b",
               "the next stream of a connection runs on the new snapshot")
            eq(c.conn.remote_settings.max_concurrent_streams, 128,
               "the connection keeps the settings it started with")
        ctx = client_context(alpn=["h2", "http/1.1"])
        with socket.create_connection(("127.0.0.1", fg.https_port), timeout=10) as raw:
            with ctx.wrap_socket(raw, server_hostname="localhost") as s:
                eq(s.selected_alpn_protocol(), "http/1.1", "a new connection after the reload")


def test_http2_unfinished_header_block_ends_the_connection():
    """HEADERS without END_HEADERS and no CONTINUATION after it: the
    connection carries nothing else, so limits.header_timeout_ms ends it."""
    import hpack
    with Upstream() as up, Flowgate({"limits": {"header_timeout_ms": 500}}, upstream=up) as fg:
        with H2Client(fg.https_port) as c:
            block = hpack.Encoder().encode([(":method", "GET"), (":scheme", "https"),
                                            (":authority", "localhost"), (":path", "/x")])
            c.sock.sendall(len(block).to_bytes(3, "big") + b"\x01\x01" + (1).to_bytes(4, "big")
                           + block)  # HEADERS, END_STREAM, no END_HEADERS
            deadline = time.monotonic() + 15
            raw = b""
            c.sock.settimeout(0.5)
            while time.monotonic() < deadline:
                try:
                    d = c.sock.recv(65536)
                except socket.timeout:
                    continue
                except OSError:
                    break
                if not d:
                    break
                raw += d
            else:
                fail("the connection stayed open with an unfinished header block")
            check(b"\x07\x00\x00\x00\x00\x00" in raw, "no GOAWAY before the close")
        eq(fg.metrics().get('flowgate_http2_goaway_total{reason="header_timeout"}'), 1.0,
           "GOAWAY counted as header_timeout")
        eq(up.requests(), [], "nothing reached the upstream")
