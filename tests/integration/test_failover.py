"""Upstream failover and passive ejection, as nginx's proxy_next_upstream,
max_fails and fail_timeout: a request goes to the next server after a
refusal, a connect timeout or a reset before any response byte, while no
body byte has left flowgate, up to max_tries tries; a server that fails
max_fails times in a row gets no request for fail_timeout_ms; a route's
read_timeout_ms overrides its upstream's.

Keep-alive to the upstreams is off (keepalive = 0): a pooled connection is
reused whichever server it goes to, so every request here picks a server.
Waits are bounded polls on events; no timing decides a result.
"""

import socket
import struct
import threading
import time

from harness import (Flowgate, Upstream, assert_error, check, eq, fail, free_port)

TIMEOUT = 40


class RawUpstream:
    """A server on a thread that accepts, reads a request head (and then
    BODY_BYTES of its body), and resets the connection (SO_LINGER 0) before
    any response byte; once `ok` is set it answers 200 "raw" instead.
    Counts the connections it accepted and keeps the bytes each sent."""

    def __init__(self, body_bytes=0):
        self.body_bytes = body_bytes
        self.ok = False
        self.accepts = 0
        self.received = []
        self.lock = threading.Lock()
        self.stopping = False
        self.lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(16)
        self.lsock.settimeout(0.1)
        self.addr = "127.0.0.1:%d" % self.lsock.getsockname()[1]
        self.thread = threading.Thread(target=self._accept_loop, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stopping = True
        self.thread.join(5)
        self.lsock.close()
        return False

    def count(self):
        with self.lock:
            return self.accepts

    def _accept_loop(self):
        while not self.stopping:
            try:
                c, _ = self.lsock.accept()
            except (socket.timeout, OSError):
                continue
            with self.lock:
                self.accepts += 1
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, c):
        c.settimeout(5)
        data = b""
        try:
            while b"\r\n\r\n" not in data:
                got = c.recv(65536)
                if not got:
                    break
                data += got
            end = data.find(b"\r\n\r\n") + 4
            while self.body_bytes and len(data) < end + self.body_bytes:
                got = c.recv(65536)
                if not got:
                    break
                data += got
            with self.lock:
                self.received.append(data)
            if self.ok:
                c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nraw")
            else:
                c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
        finally:
            c.close()


def blackhole_listener():
    """A listening socket whose accept queue is full: a connect to it hangs
    (the kernel drops the SYN), as an unresponsive server's does."""
    lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(0)
    fillers = []
    for _ in range(8):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.settimeout(0.5)
        try:
            s.connect(lsock.getsockname())
            fillers.append(s)
        except OSError:
            s.close()
            return lsock, fillers
    for s in fillers:
        s.close()
    lsock.close()
    fail("the accept queue of a listen(0) socket never filled")


def two_servers(first, second, **keys):
    """Overrides: the api upstream over FIRST then SECOND, no keep-alive."""
    up = {"servers": [first, second], "keepalive": 0}
    up.update(keys)
    return {"upstreams": {"api": up}}


def metric(fg, name, **labels):
    """The value of NAME with exactly LABELS (in the exposition's order)."""
    key = "%s{%s}" % (name, ",".join('%s="%s"' % kv for kv in labels.items()))
    return fg.metrics().get(key)


def test_refused_server_fails_over_and_is_ejected_after_max_fails():
    """Ten requests, one server refusing: every client sees 200 from the
    other, and the refusing one gets exactly max_fails connects (3), then no
    more while ejected; the gauge says it is down, the other up."""
    dead = "127.0.0.1:%d" % free_port()
    with Upstream() as up, Flowgate(two_servers(dead, up.addr, max_fails=3,
                                                fail_timeout_ms=60000), upstream=up) as fg:
        for i in range(10):
            r = fg.get("/r%d" % i)
            eq(r.status, 200, "request %d with one server refusing" % i)
        eq(up.targets(), ["/r%d" % i for i in range(10)], "the other server got every request")
        eq(metric(fg, "flowgate_upstream_errors_total", upstream="api", kind="refused"), 3.0,
           "connects refused (max_fails, then ejected)")
        eq(metric(fg, "flowgate_upstream_server_up", upstream="api", server=dead), 0.0,
           "the refusing server's gauge")
        eq(metric(fg, "flowgate_upstream_server_up", upstream="api", server=up.addr), 1.0,
           "the serving server's gauge")
        eq({e.get("upstream") for e in fg.access_log()}, {up.addr}, "logged upstreams")


def test_connect_timeout_tries_the_next_server():
    """A server whose connect hangs: after connect_timeout_ms the request
    goes to the other server (a 504 before this change)."""
    lsock, fillers = blackhole_listener()
    hole = "127.0.0.1:%d" % lsock.getsockname()[1]
    try:
        with Upstream() as up, Flowgate(two_servers(hole, up.addr, connect_timeout_ms=300),
                                        upstream=up) as fg:
            for i in range(4):
                eq(fg.get("/t%d" % i).status, 200, "request %d with one server hanging" % i)
            eq(up.targets(), ["/t%d" % i for i in range(4)], "the other server got them")
            n = metric(fg, "flowgate_upstream_errors_total", upstream="api",
                       kind="connect timeout")
            check(n is not None and n >= 1, "no connect timed out: %r" % n)
    finally:
        for s in fillers:
            s.close()
        lsock.close()


def test_reset_before_response_tries_the_next_server():
    """A server that reads the request and resets before any response byte:
    the request is sent to the other server, which answers."""
    with RawUpstream() as raw, Upstream() as up, \
            Flowgate(two_servers(raw.addr, up.addr), upstream=up) as fg:
        for i in range(4):
            eq(fg.get("/x%d" % i).status, 200, "request %d with one server resetting" % i)
        check(raw.count() >= 1, "the resetting server was never tried")
        eq(up.targets(), ["/x%d" % i for i in range(4)], "the other server got them")


def _until_raw_tried(fg, raw, make, tries=3):
    """Send requests (MAKE(i) returns the response and its path) until one
    reached RAW; returns (response, path) of that one, after checking the
    ones before it were served."""
    for i in range(tries):
        before = raw.count()
        r, path = make(i)
        if raw.count() > before:
            return r, path
        eq(r.status, 200, "a request that did not reach the resetting server")
    fail("no request reached the resetting server in %d" % tries)


def test_no_retry_once_body_bytes_were_sent():
    """A POST whose server resets after reading part of the body: 502, and
    the other server never sees it (a body is never replayed)."""
    body = b"b" * 65536
    with RawUpstream(body_bytes=1000) as raw, Upstream() as up, \
            Flowgate(two_servers(raw.addr, up.addr), upstream=up) as fg:
        def post(i):
            return fg.post("/upload%d" % i, body), "/upload%d" % i

        r, path = _until_raw_tried(fg, raw, post)
        assert_error(r, 502, "bad_gateway")
        got = raw.received[-1]
        check(len(got) >= got.find(b"\r\n\r\n") + 4 + 1000,
              "the resetting server read no body before its reset")
        check(path not in up.targets(), "the POST was replayed on the other server")


def test_max_tries_one_is_no_retry():
    """max_tries = 1: a reset before the response is the client's 502."""
    with RawUpstream() as raw, Upstream() as up, \
            Flowgate(two_servers(raw.addr, up.addr, max_tries=1), upstream=up) as fg:
        def get(i):
            return fg.get("/once%d" % i), "/once%d" % i

        r, path = _until_raw_tried(fg, raw, get)
        assert_error(r, 502, "bad_gateway")
        check(path not in up.targets(), "tried again with max_tries = 1")


def test_ejected_server_comes_back_after_fail_timeout():
    """max_fails = 1: one reset ejects the server; once it answers again it
    gets requests again after fail_timeout_ms."""
    with RawUpstream() as raw, Upstream() as up, \
            Flowgate(two_servers(raw.addr, up.addr, max_fails=1, fail_timeout_ms=1000),
                     upstream=up) as fg:
        def get(i):
            return fg.get("/e%d" % i), "/e%d" % i

        r, _ = _until_raw_tried(fg, raw, get)
        eq(r.status, 200, "the failed request, served by the other server")
        raw.ok = True
        deadline = time.monotonic() + 15
        while raw.count() < 2 and time.monotonic() < deadline:
            r = fg.get("/back")
            eq(r.status, 200, "a request while the server is ejected or back")
            time.sleep(0.05)
        check(raw.count() >= 2, "the ejected server never got a request again")
        served = [fg.get("/back%d" % i).body for i in range(4)]
        check(b"raw" in served, "the server that came back answers no request: %r" % served)


def test_route_read_timeout_overrides_the_upstream():
    """The upstream waits 1.5 s; one route 8 s (a long generation endpoint),
    another 150 ms. Each request gets its route's bound."""
    cfg = {
        "upstreams": {"api": {"read_timeout_ms": 1500}},
        "routes": ({"host": "", "path": "/slow/3000", "upstream": "api", "auth": "none",
                    "read_timeout_ms": 8000},
                   {"host": "", "path": "/slow/0700", "upstream": "api", "auth": "none",
                    "read_timeout_ms": 150},
                   {"host": "", "path": "/", "upstream": "api", "auth": "none"}),
    }
    with Upstream() as up, Flowgate(cfg, upstream=up) as fg:
        eq(fg.get("/slow/3000").status, 200, "3 s under the route's 8 s")
        assert_error(fg.get("/slow/03000"), 504, "gateway_timeout")  # the upstream's 1.5 s
        assert_error(fg.get("/slow/0700"), 504, "gateway_timeout")   # the route's 150 ms
        eq(fg.get("/slow/700").status, 200, "0.7 s under the upstream's 1.5 s")
