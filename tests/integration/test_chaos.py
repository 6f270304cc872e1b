"""A randomized adversarial storm against the request engine.

Many client threads each run random scripts against one flowgate with JWT
routes, rate limits in a real redis-server (stalled now and then with
SIGSTOP), CORS, a preview host and an upstream that answers slowly, cuts
bodies or resets: requests cut at random byte offsets of the head or body,
half-closes, pipelines closed after any request, slow readers, Expect:
100-continue, chunked bodies cut mid-chunk, WebSocket tunnels closed by
either side, TLS handshakes cut short, idle keep-alive connections.

Every response head a client sees is noted with its X-Request-Id and status.
After the storm, once flowgate settled (the access log stopped growing):
no sanitizer report (checked at stop), a normal request is still served,
each request id a client saw is logged exactly once with the status it saw,
no request id is logged twice, no line has status 0 without a reason, every
reason is a known one, and the open connection and tunnel gauges return
to 0.

Reproducible: the scripts come from a seeded generator per thread, printed
at the start; FG_CHAOS_SEED chooses another seed (thread interleaving still
varies from run to run, the scripts do not).
"""

import base64
import json
import os
import random
import socket
import ssl
import struct
import threading
import time

from harness import (Conn, ConnectionClosed, RedisServer, TestFailure, access_token, build_request,
                     check, client_context, client_hello, eq, fail)
from test_previews import Setup, host_of, upstream_name

TIMEOUT = 60

SEED = int(os.environ.get("FG_CHAOS_SEED", "20240611"))
THREADS = int(os.environ.get("FG_CHAOS_THREADS", "12"))
STORM_S = float(os.environ.get("FG_CHAOS_SECONDS", "7"))
ORIGIN = "https://app.example.com"

# Every reason a line of this storm may carry in "error" (None: served).
KNOWN_ERRORS = {
    None, "client closed", "send timeout", "timeout", "aborted",
    "upstream response truncated", "bad upstream response framing", "upstream read timeout",
    "refused", "connect timeout", "error", "closed", "bad response", "read timeout",
    "truncated", "bad framing", "bad request body framing", "bad upstream response",
    "jwt_missing", "jwt_malformed", "jwt_bad_header", "jwt_bad_signature",
    "rate_limited", "rate limit store timeout", "rate limit store unavailable",
    "cors_origin", "cors_method", "cors_header", "cors_websocket_origin",
    "method_not_allowed", "not_found", "body_too_large", "expectation_failed",
    "malformed head", "head too large", "bad path or host", "tunnel idle timeout",
    "unknown preview", "preview resolver failure",
    "bad_request", "headers_too_large", "invalid_token", "bad_gateway", "gateway_timeout",
    "unavailable",
}


# ------------------------------------------------------------------ helpers


def rst_close(sock):
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass


def raw_sock(conn):
    """The TCP socket under a Conn (TLS or plain)."""
    return conn.sock


def ws_frame(fin_op, payload):
    mask = os.urandom(4)
    n = len(payload)
    head = bytes([fin_op])
    if n < 126:
        head += bytes([0x80 | n])
    else:
        head += bytes([0x80 | 126]) + struct.pack("!H", n)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


CLIENT_HELLO = client_hello()


# ------------------------------------------------------------------ one client

class Client:
    """One thread's scripts. SEEN collects (request id, status, complete)."""

    def __init__(self, fg, rng, deadline, seen, faults, mixups):
        self.fg = fg
        self.mixups = mixups
        self.rng = rng
        self.deadline = deadline
        self.seen = seen
        self.faults = faults
        self.token = access_token("chaos-%d" % rng.randrange(1000))

    # -- building blocks
    def connect(self, tls=True):
        if tls:
            return Conn.tls(self.fg.https_port, timeout=8.0)
        return Conn.plain(self.fg.http_port, timeout=8.0)

    def note(self, r, complete=None, cut=False):
        """CUT: the body ended early though this client kept reading."""
        self.seen.append((r.header("X-Request-Id"), r.status,
                          r.complete if complete is None else complete, cut))

    def read(self, c, method="GET", path=None):
        """The next response on C, noted; None when the connection ended first.
        PATH: the request's, which the upstream's JSON answer must echo (a
        response meant for another request would not)."""
        try:
            r = c.read_head(timeout=8.0)
            while r.status == 100:
                r = c.read_head(timeout=8.0)
        except ConnectionClosed:
            return None
        if r.status == 101:
            self.note(r, True)
            return r
        try:
            c._read_body(r, method, time.monotonic() + 8.0)
        except TestFailure:
            r.complete = False
            self.note(r)
            raise
        self.note(r, cut=not r.complete)
        if path is not None and r.status == 200 and r.complete and r.body.startswith(b"{"):
            got = json.loads(r.body).get("path")
            if got is not None and got != path:
                self.mixups.append("%s answered with the response to %s" % (path, got))
        return r

    def target(self):
        """A random request: (method, path, headers, host)."""
        rng = self.rng
        kind = rng.randrange(12)
        tag = rng.randrange(1 << 30)
        if kind == 0:
            return "GET", "/api/x%d" % tag, [("Authorization", "Bearer " + self.token)], "localhost"
        if kind == 1:
            return "GET", "/api/noauth%d" % tag, [], "localhost"
        if kind == 2:
            return "GET", "/api/bad%d" % tag, [("Authorization", "Bearer x.y.z")], "localhost"
        if kind == 3:
            return "GET", "/tight/%d" % tag, [], "localhost"
        if kind == 4:
            return ("OPTIONS", "/open/pre%d" % tag,
                    [("Origin", rng.choice([ORIGIN, "https://evil.test"])),
                     ("Access-Control-Request-Method", "PUT")], "localhost")
        if kind == 5:
            return "GET", "/open/c%d" % tag, [("Origin", "https://evil.test")], "localhost"
        if kind == 6:
            return ("GET", "/p%d" % tag, [],
                    host_of(rng.choice(["alpha", "alpha", "nobody", "slowdns"])))
        if kind == 7:
            return "GET", "/slow/%d" % rng.choice([10, 200, 900, 1600]), [], "localhost"
        if kind == 8:
            return "GET", rng.choice(["/truncate", "/reset", "/close-before", "/trickle?ms=20"]), \
                [], "localhost"
        if kind == 9:
            return (rng.choice(["GET", "HEAD"]), "/bytes/%d" % rng.choice([0, 100, 70000]), [],
                    "localhost")
        return "GET", "/open/k%d" % tag, [], "localhost"

    def request_bytes(self):
        """(bytes, method, path)"""
        m, p, h, host = self.target()
        if m == "GET" and self.rng.random() < 0.2:
            m, p = "POST", p.replace("/open/", "/echo/", 1)
            return build_request(m, p, h, b"p" * self.rng.randrange(0, 3000), host), m, p
        return build_request(m, p, h, None, host), m, p

    # -- scripts
    def s_simple(self):
        c = self.connect(tls=self.rng.random() < 0.9)
        try:
            for _ in range(self.rng.randrange(1, 4)):
                data, m, p = self.request_bytes()
                c.send(data)
                if self.read(c, m, p) is None:
                    return
        finally:
            c.close()

    def s_cut_head(self):
        c = self.connect(tls=self.rng.random() < 0.8)
        data = self.request_bytes()[0]
        c.send(data[:self.rng.randrange(1, len(data))])
        self.end(c)

    def end(self, c, may_read=True):
        """Leave: close, reset, or half-close and read what comes."""
        how = self.rng.randrange(3)
        if how == 0:
            c.close()
        elif how == 1:
            rst_close(raw_sock(c))
        else:
            try:
                if isinstance(c.sock, ssl.SSLSocket):
                    c.sock.unwrap() if self.rng.random() < 0.3 else None
                raw_sock(c).shutdown(socket.SHUT_WR)
            except (OSError, ValueError, ssl.SSLError):
                c.close()
                return
            try:
                while may_read and self.read(c) is not None:
                    pass
            except (TestFailure, OSError, ssl.SSLError, ValueError):
                pass
            c.close()

    def s_cut_body(self):
        c = self.connect()
        n = self.rng.choice([10, 5000, 200000])
        path = self.rng.choice(["/echo", "/api/echo", "/tight/echo", "/sha256"])
        hdrs = [("Content-Length", str(n))]
        if path.startswith("/api"):
            hdrs.append(("Authorization", "Bearer " + self.token))
        if self.rng.random() < 0.4:
            hdrs.append(("Expect", "100-continue"))
        c.send(build_request("POST", path, hdrs, None))
        if self.rng.random() < 0.5:
            c.send(b"b" * self.rng.randrange(0, n))
            if self.rng.random() < 0.3:
                time.sleep(self.rng.random() * 0.3)
        self.end(c)

    def s_full_body(self):
        c = self.connect()
        try:
            n = self.rng.choice([0, 10, 70000])
            hdrs = [("Expect", "100-continue")] if self.rng.random() < 0.5 else []
            c.send(build_request("POST", self.rng.choice(["/echo", "/sha256"]), hdrs, b"q" * n))
            self.read(c, "POST")
        finally:
            c.close()

    def s_expect_wait(self):
        c = self.connect()
        try:
            c.send(build_request("POST", "/sha256", [("Expect", "100-continue"),
                                                      ("Content-Length", "1000")], None))
            r = c.read_head(timeout=8.0)
            if r.status != 100:
                c._read_body(r, "POST", time.monotonic() + 8.0)
                self.note(r, cut=not r.complete)
                return
            if self.rng.random() < 0.5:
                c.send(b"e" * 1000)
                self.read(c, "POST")
            else:
                c.send(b"e" * self.rng.randrange(0, 1000))
                self.end(c)
        except ConnectionClosed:
            pass
        finally:
            c.close()

    def s_chunked(self):
        c = self.connect()
        c.send(b"POST /sha256 HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n")
        body = b"".join(b"%x\r\n%s\r\n" % (n, b"c" * n)
                        for n in (self.rng.randrange(1, 3000) for _ in range(4)))
        body += b"0\r\n\r\n"
        if self.rng.random() < 0.3:
            c.send(body)
            try:
                self.read(c, "POST")
            finally:
                c.close()
            return
        c.send(body[:self.rng.randrange(0, len(body) - 2)])
        self.end(c)

    def s_pipeline(self):
        c = self.connect(tls=self.rng.random() < 0.8)
        k = self.rng.randrange(2, 6)
        reqs = [self.request_bytes() for _ in range(k)]
        if self.rng.random() < 0.3:
            reqs[-1] = (reqs[-1][0].replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n", 1),
                        reqs[-1][1], reqs[-1][2])
        data = b"".join(x[0] for x in reqs)
        if self.rng.random() < 0.3:
            data = data[:self.rng.randrange(1, len(data))]
        c.send(data)
        stop = self.rng.randrange(0, k + 1)
        try:
            for i in range(stop):
                if self.read(c, reqs[i][1], reqs[i][2]) is None:
                    break
        except (TestFailure, OSError, ssl.SSLError):
            pass
        self.end(c)

    def s_slow_reader(self):
        raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
        raw.settimeout(8)
        raw.connect(("127.0.0.1", self.fg.https_port))
        c = Conn(client_context().wrap_socket(raw, server_hostname="localhost"), timeout=8)
        try:
            c.send(build_request("GET", "/bytes/%d" % self.rng.choice([3000000, 12000000])))
            r = c.read_head()
            self.note(r, False)
            time.sleep(self.rng.random() * 2.5)
        except (TestFailure, OSError):
            pass
        self.end(c, may_read=False)

    def s_websocket(self):
        c = self.connect()
        key = base64.b64encode(os.urandom(16)).decode()
        host = self.rng.choice(["localhost", host_of("alpha")])
        c.send(build_request("GET", "/ws", [("Upgrade", "websocket"), ("Connection", "Upgrade"),
                                            ("Sec-WebSocket-Key", key),
                                            ("Sec-WebSocket-Version", "13")], host=host))
        try:
            r = self.read(c)
            if r is None or r.status != 101:
                c.close()
                return
            for _ in range(self.rng.randrange(0, 3)):
                c.send(ws_frame(0x81, b"m" * self.rng.randrange(0, 300)))
            if self.rng.random() < 0.5:
                c.send(ws_frame(0x88, b"\x03\xe8"))  # the upstream answers and closes
                c.wait_closed(5)
        except (TestFailure, OSError, ssl.SSLError):
            pass
        self.end(c, may_read=False)

    def s_tls_cut(self):
        s = socket.create_connection(("127.0.0.1", self.fg.https_port), timeout=5)
        s.sendall(CLIENT_HELLO[:self.rng.randrange(1, len(CLIENT_HELLO) + 1)])
        if self.rng.random() < 0.5:
            try:
                s.recv(self.rng.randrange(1, 4000))
            except OSError:
                pass
        (rst_close if self.rng.random() < 0.5 else socket.socket.close)(s)

    def s_idle(self):
        c = self.connect()
        try:
            if self.rng.random() < 0.5:
                c.send(build_request("GET", "/open/idle"))
                self.read(c)
            time.sleep(self.rng.random() * 1.5)
        finally:
            self.end(c, may_read=False)

    SCRIPTS = ("s_simple", "s_simple", "s_cut_head", "s_cut_body", "s_full_body",
               "s_expect_wait", "s_chunked", "s_pipeline", "s_pipeline", "s_slow_reader",
               "s_websocket", "s_tls_cut", "s_idle")

    def run(self, scripts):
        while time.monotonic() < self.deadline:
            name = self.rng.choice(scripts)
            try:
                getattr(self, name)()
            except (TestFailure, OSError, ssl.SSLError, ValueError) as e:
                self.faults.append("%s: %s" % (name, str(e)[:120]))


# ------------------------------------------------------------------ the storm

def chaos_config(redis, on_redis_failure):
    return {
        "limits": {"header_timeout_ms": 1500, "body_timeout_ms": 1500,
                   "keepalive_timeout_ms": 2000, "send_timeout_ms": 1000},
        "upstreams": {"api": {"read_timeout_ms": 1200}},
        "jwt": {"algorithm": "HS256",
                "keys": ({"kid": "default", "secret_env": "FLOWGATE_JWT_SECRET"},)},
        "cors": {"origins": [ORIGIN], "credentials": True},
        "rate_limit": {
            "redis": {"address": redis.addr, "timeout_ms": 200, "key_prefix": "chaos:"},
            "on_redis_failure": on_redis_failure,
            "tiers": {"anonymous": {"limit": 100000, "window": 60},
                      "authenticated": {"limit": 100000, "window": 60}},
            "endpoints": ({"path": "/tight", "limit": 5, "window": 60, "key": "ip"},),
        },
        "routes": ({"host": "localhost", "path": "/api", "upstream": "api", "auth": "required"},
                   {"host": "localhost", "path": "/", "upstream": "api", "auth": "optional"}),
    }


def gauges(fg):
    m = fg.metrics()
    return (int(m.get("flowgate_connections_open", -1)),
            int(m.get("flowgate_websocket_tunnels_open", -1)))


def settle(fg, timeout=15.0):
    """The access log once it stopped growing (two reads a second apart agree)."""
    deadline = time.monotonic() + timeout
    before = fg.access_log(settle=0)
    while time.monotonic() < deadline:
        time.sleep(1.0)
        now = fg.access_log(settle=0)
        if len(now) == len(before):
            return now
        before = now
    fail("the access log still grows %.0f s after the storm" % timeout)


def check_log(log, seen):
    by_id = {}
    for e in log:
        by_id.setdefault(e.get("request_id"), []).append(e)
    dups = {k: v for k, v in by_id.items() if len(v) > 1}
    check(not dups, "request ids logged more than once: %s"
          % json.dumps(list(dups.values())[:3]))
    for rid, status, complete, cut in seen:
        check(rid is not None, "a %d response without X-Request-Id" % status)
        lines = by_id.get(rid, [])
        eq(len(lines), 1, "access-log lines for request %s (status %d seen)" % (rid, status))
        e = lines[0]
        eq(e.get("status"), status, "logged status of %s (%s)" % (rid, json.dumps(e)))
        if complete and status < 300 and status != 101:
            check(e.get("error") is None, "a response the client got whole logged with an "
                  "error: %s" % json.dumps(e))
        if cut:
            check(e.get("error") is not None, "a response the client got cut logged as "
                  "served: %s" % json.dumps(e))
    for e in log:
        check(e.get("status") != 0 or e.get("error"),
              "a line with status 0 and no reason: %s" % json.dumps(e))
        check(e.get("error") in KNOWN_ERRORS, "unknown error %r: %s"
              % (e.get("error"), json.dumps(e)))


def storm(label, scripts, redis_stalls, on_redis_failure="local", threads=THREADS,
          duration=STORM_S):
    seed = SEED + sum(label.encode())
    print("chaos %s: seed %d (FG_CHAOS_SEED=%d)" % (label, seed, SEED))
    # A name whose DNS queries go unanswered: its preview requests wait.
    zone = {upstream_name("slowdns"): "drop"}
    with RedisServer() as redis, Setup(names=("alpha",), zone=zone,
                                       extra=chaos_config(redis, on_redis_failure)) as s:
        fg = s.fg
        deadline = time.monotonic() + duration
        seen, faults, mixups = [], [], []
        clients = [Client(fg, random.Random(seed * 1000 + i), deadline, seen, faults, mixups)
                   for i in range(threads)]
        ts = [threading.Thread(target=c.run, args=(scripts,), daemon=True) for c in clients]
        for t in ts:
            t.start()
        rng = random.Random(seed)
        while redis_stalls and time.monotonic() < deadline:
            time.sleep(rng.random() * 0.8)
            redis.pause()
            time.sleep(rng.random() * 0.8)
            redis.resume()
        for t in ts:
            t.join(timeout=duration + 30)
            check(not t.is_alive(), "a client thread did not finish")
        print("chaos %s: %d responses seen, %d client-side faults" % (label, len(seen),
                                                                       len(faults)))
        for f in faults[:5]:
            print("  fault:", f)
        eq(mixups, [], "responses given to the wrong request")
        r = fg.get("/open/after-storm")
        eq(r.status, 200, "a normal request after the storm")
        seen.append((r.header("X-Request-Id"), 200, True, False))
        log = settle(fg)
        check_log(log, seen)
        deadline = time.monotonic() + 15
        while gauges(fg) != (0, 0) and time.monotonic() < deadline:
            time.sleep(0.2)
        eq(gauges(fg), (0, 0), "open connections and tunnels after the storm")


def test_chaos_mixed():
    storm("mixed", Client.SCRIPTS, redis_stalls=False)


def test_chaos_redis_stalls():
    storm("redis", ("s_simple", "s_cut_head", "s_cut_body", "s_pipeline", "s_idle",
                    "s_expect_wait"), redis_stalls=True, on_redis_failure="deny")


def test_chaos_cuts_and_tunnels():
    storm("cuts", ("s_cut_head", "s_cut_body", "s_chunked", "s_pipeline", "s_slow_reader",
                   "s_websocket", "s_tls_cut"), redis_stalls=True)
