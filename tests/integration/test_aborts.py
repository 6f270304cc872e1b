"""Every request is logged exactly once in the access log, however it ends:
served, refused by a stage, cut by a timeout, or abandoned by the client or
the upstream at any point. An ended request's line carries the reason in
its "error" field, and status 0 when no response head was sent. A
connection that never began a request (an idle keep-alive connection that
times out) is logged not at all. After each ending, flowgate still serves
everyone else.

Lines are matched by request id when the client saw one (X-Request-Id), by
a path unique to the test otherwise. Waits are bounded polls on events
(a request reaching a peer, a line appearing), never timings.
"""

import json
import socket
import struct
import threading
import time

from harness import (Flowgate, RedisServer, Upstream, build_request, check, eq, fail,
                     free_port, plain_request, sentinel)

TIMEOUT = 60

# Tests whose assertion (always the behaviour wanted) the engine did not meet
# when this module was written: none, every case passes.
EXPECTED_TO_FAIL_BEFORE_ENGINE = []


# ------------------------------------------------------------------ log helpers

def lines_where(fg, key, value):
    return [e for e in fg.access_log() if e.get(key) == value]


def wait_lines(fg, key, value, timeout=8.0):
    """Access-log lines whose KEY is VALUE, once there is at least one."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = lines_where(fg, key, value)
        if found:
            return found
        time.sleep(0.05)
    fail("no access-log line with %s = %r within %.0f s; the log: %s"
         % (key, value, timeout, json.dumps(fg.access_log())))


def assert_logged_once(fg, up, key, value, status, error):
    """Exactly one line for the request (KEY = VALUE) with STATUS and ERROR,
    checked again after flowgate served another client: a second line
    written late would be there by then."""
    wait_lines(fg, key, value)
    sentinel(fg, up)
    found = lines_where(fg, key, value)
    eq(len(found), 1, "access-log lines for %s = %r (%s)" % (key, value, json.dumps(found)))
    e = found[0]
    eq(e.get("status"), status, "logged status (%s)" % json.dumps(e))
    eq(e.get("error"), error, "logged error (%s)" % json.dumps(e))
    return e


def wait_for(cond, what, timeout=8.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.02)
    fail("%s did not happen within %.0f s" % (what, timeout))


def unique(prefix):
    """PREFIX and a number no other request of the test has."""
    return "%s-%d" % (prefix, int(time.monotonic() * 1e6))


def rst_close(sock):
    """Close with a reset (SO_LINGER 0): the peer sees ECONNRESET."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    sock.close()


# ------------------------------------------------------------------ scripted peers

class SocketUpstream:
    """A raw upstream on a free loopback port, scripted per test.

    MODE "silent": accepts, reads the request, never answers; notes when
    flowgate closes the link. MODE "reset-mid-body": answers a head with
    Content-Length 100000 and 500 body bytes, then resets the connection.
    """

    def __init__(self, mode):
        self.mode = mode
        self.got_request = threading.Event()
        self.peer_closed = threading.Event()
        self.received = bytearray()
        self.conns = []

    @property
    def addr(self):
        return "127.0.0.1:%d" % self.port

    def __enter__(self):
        self.port = free_port()
        self.lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind(("127.0.0.1", self.port))
        self.lsock.listen(16)
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def _accept(self):
        while True:
            try:
                s, _ = self.lsock.accept()
            except OSError:
                return
            self.conns.append(s)
            threading.Thread(target=self._serve, args=(s,), daemon=True).start()

    def _serve(self, s):
        try:
            head = bytearray()
            while b"\r\n\r\n" not in head:
                data = s.recv(65536)
                if not data:
                    self.peer_closed.set()
                    return
                head += data
            self.received += head
            self.got_request.set()
            if self.mode == "reset-mid-body":
                s.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                          b"Content-Length: 100000\r\n\r\n" + b"r" * 500)
                time.sleep(0.2)  # the 500 bytes reach flowgate before the reset
                rst_close(s)
                return
            while True:
                data = s.recv(65536)
                if not data:
                    break
                self.received += data
            self.peer_closed.set()
        except OSError:
            self.peer_closed.set()

    def __exit__(self, *exc):
        self.lsock.close()
        for s in self.conns:
            try:
                s.close()
            except OSError:
                pass
        return False


class HoldingRedisProxy:
    """A TCP relay between flowgate and redis-server that can hold Redis's
    replies: while held, flowgate's commands still reach Redis but no answer
    comes back, so a rate-limit call waits. saw_eval is set when a script
    call passes while replies are held."""

    def __init__(self, target_port):
        self.target_port = target_port
        self.lock = threading.Lock()
        self.holding = False
        self.held = []  # (socket, bytes) in arrival order
        self.saw_eval = threading.Event()
        self.socks = []

    @property
    def addr(self):
        return "127.0.0.1:%d" % self.port

    def __enter__(self):
        self.port = free_port()
        self.lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind(("127.0.0.1", self.port))
        self.lsock.listen(16)
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def _accept(self):
        while True:
            try:
                c, _ = self.lsock.accept()
            except OSError:
                return
            try:
                r = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
            except OSError:
                c.close()
                continue
            r.settimeout(None)
            self.socks += [c, r]
            threading.Thread(target=self._pump, args=(c, r, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(r, c, True), daemon=True).start()

    def _pump(self, src, dst, replies):
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                with self.lock:
                    if replies and self.holding:
                        self.held.append((dst, data))
                        continue
                    if not replies and self.holding and b"EVAL" in data.upper():
                        self.saw_eval.set()
                    dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def hold(self):
        with self.lock:
            self.holding = True
            self.saw_eval.clear()

    def release(self):
        with self.lock:
            self.holding = False
            for dst, data in self.held:
                try:
                    dst.sendall(data)
                except OSError:
                    pass
            self.held = []

    def __exit__(self, *exc):
        self.lsock.close()
        for s in self.socks:
            try:
                s.close()
            except OSError:
                pass
        return False


def readyz_redis(fg):
    r = plain_request(fg.admin_port, "GET", "/readyz", host="127.0.0.1", timeout=5.0)
    return r.json().get("redis") if r.status == 200 else None


# ------------------------------------------------------------------ 1. rate-limit stage

def test_client_closes_while_rate_limit_waits_on_redis():
    with RedisServer() as redis, HoldingRedisProxy(redis.port) as proxy, Upstream() as up:
        cfg = {"rate_limit": {
            "redis": {"address": proxy.addr, "timeout_ms": 10000, "key_prefix": "fgabort:"},
            "on_redis_failure": "deny",
            "tiers": {"anonymous": {"limit": 1000, "window": 60}},
        }}
        with Flowgate(cfg, upstream=up) as fg:
            wait_for(lambda: readyz_redis(fg) == "up", "the Redis link coming up")
            eq(fg.get("/warm").status, 200, "a request through the rate limit")
            path = unique("/rl-wait")
            proxy.hold()
            c = fg.tls()
            try:
                c.send(build_request("GET", path))
                check(proxy.saw_eval.wait(8), "the rate-limit call never reached Redis")
            finally:
                c.close()
            try:
                wait_lines(fg, "path", path)
            finally:
                proxy.release()
            e = assert_logged_once(fg, up, "path", path, 0, "client closed")
            check(path not in up.targets(), "the abandoned request was forwarded")
            check(e.get("request_id"), "no request id logged: %r" % e)


# ------------------------------------------------------------------ 2. upstream head wait

def test_client_closes_while_waiting_for_the_upstream_head():
    with SocketUpstream("silent") as silent, Upstream() as up:
        cfg = {
            "upstreams": {"silent": {"servers": [silent.addr], "connect_timeout_ms": 2000,
                                     "read_timeout_ms": 60000}},
            "routes": ({"host": "", "path": "/silent", "upstream": "silent", "auth": "none"},
                       {"host": "", "path": "/", "upstream": "api", "auth": "none"}),
        }
        with Flowgate(cfg, upstream=up) as fg:
            path = unique("/silent/head")
            c = fg.tls()
            try:
                c.send(build_request("GET", path))
                check(silent.got_request.wait(8), "the request never reached the upstream")
            finally:
                c.close()
            e = assert_logged_once(fg, up, "path", path, 0, "client closed")
            eq(e.get("upstream"), silent.addr, "logged upstream")
            check(silent.peer_closed.wait(8), "the upstream link outlived the client")


def test_client_closes_while_the_upstream_connect_is_pending():
    """An upstream whose accept queue is full: the SYN goes unanswered, the
    connect waits (connect_timeout_ms 60 s), and the client leaves."""
    lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    port = free_port()
    lsock.bind(("127.0.0.1", port))
    lsock.listen(0)
    fillers = []
    try:
        # Fill the accept queue; a probe connect that does not complete shows it is full.
        for _ in range(8):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.settimeout(0.5)
            try:
                s.connect(("127.0.0.1", port))
                fillers.append(s)
            except OSError:
                s.close()
                break
        else:
            fail("the accept queue of a listen(0) socket never filled")
        with Upstream() as up:
            cfg = {
                "upstreams": {"stuck": {"servers": ["127.0.0.1:%d" % port],
                                        "connect_timeout_ms": 60000, "read_timeout_ms": 60000}},
                "routes": ({"host": "", "path": "/stuck", "upstream": "stuck", "auth": "none"},
                           {"host": "", "path": "/", "upstream": "api", "auth": "none"}),
            }
            with Flowgate(cfg, upstream=up) as fg:
                path = unique("/stuck/connect")
                c = fg.tls()
                try:
                    c.send(build_request("GET", path))
                    # Nothing can come back while the connect is pending.
                    c.sock.settimeout(1.0)
                    try:
                        got = c.sock.recv(1)
                    except (socket.timeout, TimeoutError):
                        got = None
                    check(got is None, "an answer while the upstream connect is pending: %r"
                          % got)
                finally:
                    c.close()
                assert_logged_once(fg, up, "path", path, 0, "client closed")
    finally:
        for s in fillers:
            s.close()
        lsock.close()


# ------------------------------------------------------------------ 3. request body

def test_client_closes_mid_request_body():
    """Content-Length 100000, 1000 bytes sent (and relayed upstream), then the
    client leaves."""
    with SocketUpstream("silent") as silent, Upstream() as up:
        cfg = {
            "upstreams": {"silent": {"servers": [silent.addr], "connect_timeout_ms": 2000,
                                     "read_timeout_ms": 60000}},
            "routes": ({"host": "", "path": "/silent", "upstream": "silent", "auth": "none"},
                       {"host": "", "path": "/", "upstream": "api", "auth": "none"}),
        }
        with Flowgate(cfg, upstream=up) as fg:
            path = unique("/silent/midbody")
            c = fg.tls()
            try:
                c.send(b"POST %s HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100000\r\n\r\n"
                       % path.encode())
                c.send(b"b" * 1000)
                wait_for(lambda: silent.received.endswith(b"b" * 1000),
                         "the 1000 body bytes reaching the upstream")
            finally:
                c.close()
            e = assert_logged_once(fg, up, "path", path, 0, "client closed")
            check(e.get("bytes_in", 0) >= 1000, "logged bytes_in %r < 1000 body bytes sent"
                  % e.get("bytes_in"))
            check(silent.peer_closed.wait(8), "the upstream link outlived the client")


# ------------------------------------------------------------------ 4. response body

def test_upstream_closes_mid_response_body():
    with Upstream() as up, Flowgate(upstream=up) as fg:
        c = fg.tls()
        try:
            r = c.request("GET", "/truncate?case=close")
            eq(r.status, 200, "status of the truncated response")
            check(not r.complete, "the client saw a complete response: %d bytes" % len(r.body))
            eq(r.body, b"0123456789", "bytes relayed before the cut")
            check(c.wait_closed(5), "the connection stayed open after a cut response")
        finally:
            c.close()
        rid = r.header("X-Request-Id")
        e = assert_logged_once(fg, up, "request_id", rid, 200, "upstream response truncated")
        eq(e.get("path"), "/truncate?case=close", "logged path")


def test_upstream_resets_mid_response_body():
    with SocketUpstream("reset-mid-body") as rst, Upstream() as up:
        cfg = {
            "upstreams": {"rst": {"servers": [rst.addr], "connect_timeout_ms": 2000,
                                  "read_timeout_ms": 10000}},
            "routes": ({"host": "", "path": "/rst", "upstream": "rst", "auth": "none"},
                       {"host": "", "path": "/", "upstream": "api", "auth": "none"}),
        }
        with Flowgate(cfg, upstream=up) as fg:
            c = fg.tls()
            try:
                r = c.request("GET", "/rst/body")
                eq(r.status, 200, "status of the cut response")
                check(not r.complete, "the client saw a complete response")
                eq(len(r.body), 500, "bytes relayed before the reset")
            finally:
                c.close()
            rid = r.header("X-Request-Id")
            assert_logged_once(fg, up, "request_id", rid, 200, "upstream response truncated")


def test_client_closes_mid_response_body():
    """The client reads the head of a 20 MB response and leaves: one line,
    the status that was sent, the reason, fewer bytes than the body."""
    n = 20000000
    with Upstream() as up, Flowgate(upstream=up) as fg:
        c = fg.tls()
        try:
            c.send(build_request("GET", "/bytes/%d" % n))
            r = c.read_head()
            eq(r.status, 200, "status")
        finally:
            c.close()
        e = assert_logged_once(fg, up, "request_id", r.header("X-Request-Id"), 200,
                               "client closed")
        check(e.get("bytes_out", n) < n, "a cut response logged with its full size: %r" % e)


# ------------------------------------------------------------------ 5. read timeout

def test_upstream_read_timeout_before_the_head_is_one_504_line():
    cfg = {"upstreams": {"api": {"read_timeout_ms": 500}}}
    with Upstream() as up, Flowgate(cfg, upstream=up) as fg:
        r = fg.get("/slow/3000?case=504")
        eq(r.status, 504, "status")
        rid = r.header("X-Request-Id")
        e = assert_logged_once(fg, up, "request_id", rid, 504, "read timeout")
        eq(e.get("upstream"), up.addr, "logged upstream")


# ------------------------------------------------------------------ 6. preview DNS

def test_client_closes_while_the_preview_waits_on_dns():
    from test_previews import ADDRS, Setup, host_of, upstream_name
    name = upstream_name("slowdns")
    with Setup(zone={name: "drop"}) as s:
        fg = s.fg
        path = unique("/dns-wait")
        c = fg.tls()
        try:
            c.send(build_request("GET", path, host=host_of("slowdns")))
            wait_for(lambda: s.dns.queries(name), "the DNS query for the preview")
        finally:
            c.close()
        wait_lines(fg, "path", path)
        # The resolver's retry now gets an answer: the lookup the closed
        # request waited on completes, and a new request shares it.
        s.dns.set({name: [ADDRS["alpha"], 60]})
        r = fg.get("/after-dns", host=host_of("slowdns"))
        eq(r.status, 200, "a request for the preview once DNS answers")
        assert_logged_once(fg, s.api, "path", path, 0, "client closed")


# ------------------------------------------------------------------ 7. head and idle timeouts

def test_header_timeout_on_a_partial_head_is_one_408_line():
    cfg = {"limits": {"header_timeout_ms": 1000}}
    with Upstream() as up, Flowgate(cfg, upstream=up) as fg:
        c = fg.tls()
        try:
            c.send(b"GET /partial-head HTTP/1.1\r\nHost: localhost\r\nX-Pad: ")
            r = c.read_response(timeout=8)
            eq(r.status, 408, "status")
        finally:
            c.close()
        rid = r.header("X-Request-Id")
        assert_logged_once(fg, up, "request_id", rid, 408, "timeout")


def test_idle_keepalive_timeout_logs_nothing():
    cfg = {"limits": {"keepalive_timeout_ms": 1000}}
    with Upstream() as up, Flowgate(cfg, upstream=up) as fg:
        c = fg.tls()
        try:
            r = c.request("GET", "/before-idle")
            eq(r.status, 200, "status")
            check(c.wait_closed(8), "an idle keep-alive connection was not closed")
        finally:
            c.close()
        rid = r.header("X-Request-Id")
        assert_logged_once(fg, up, "request_id", rid, 200, None)
        # Two requests in all (the one before idling, the sentinel): the idle close adds none.
        eq(len(fg.access_log()), 2, "access-log lines (%s)" % json.dumps(fg.access_log()))


# ------------------------------------------------------------------ 8. pipelining

def test_pipelined_requests_each_logged_once_when_the_client_leaves():
    """Three requests in one write; the client reads the first answer, waits
    until the second reached the upstream (/slow: no answer yet), and leaves.
    The first is logged as served, the second as abandoned, the third, never
    begun, not at all."""
    with Upstream() as up, Flowgate(upstream=up) as fg:
        tag = unique("pipe")
        first, second, third = "/%s-a" % tag, "/slow/5000?%s=b" % tag, "/%s-c" % tag
        c = fg.tls()
        try:
            c.send(build_request("GET", first) + build_request("GET", second)
                   + build_request("GET", third))
            r = c.read_response()
            eq(r.status, 200, "status of the first")
            wait_for(lambda: second in up.targets(), "the second request reaching the upstream")
        finally:
            c.close()
        assert_logged_once(fg, up, "request_id", r.header("X-Request-Id"), 200, None)
        assert_logged_once(fg, up, "path", second, 0, "client closed")
        eq(lines_where(fg, "path", third), [], "lines for the request never begun")
        check(third not in up.targets(), "the third request was forwarded")


# ------------------------------------------------------------------ 9. stage refusals

def test_jwt_and_cors_refusals_are_one_line_each_with_the_reason():
    cfg = {
        "cors": {"origins": ["https://app.example.com"], "credentials": True},
        "routes": ({"host": "", "path": "/private", "upstream": "api", "auth": "required"},
                   {"host": "", "path": "/", "upstream": "api", "auth": "none"}),
    }
    with Upstream() as up, Flowgate(cfg, upstream=up) as fg:
        r = fg.get("/private/data")
        eq(r.status, 401, "status without a token")
        assert_logged_once(fg, up, "request_id", r.header("X-Request-Id"), 401, "jwt_missing")
        r = fg.request("POST", "/open", headers=[("Origin", "https://evil.example")], body=b"")
        eq(r.status, 403, "status for a foreign origin")
        assert_logged_once(fg, up, "request_id", r.header("X-Request-Id"), 403, "cors_origin")
        eq(up.targets().count("/private/data") + up.targets().count("/open"), 0,
           "refused requests forwarded")
