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

from harness import (CA, HSTS, Flowgate, Skip, Upstream, assert_new_request_id,
                     assert_security_headers, check, client_context, curl, eq, fail, pattern,
                     req_header, sha256)

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
        for ev in self.conn.receive_data(data):
            self.handle(ev)
        self.flush()
        return True

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
