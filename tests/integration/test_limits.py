"""Request limits and timeouts (the limits group)."""

import socket
import ssl
import time

from harness import (LOOPBACK, ConnectionClosed, Flowgate, Upstream, assert_closes,
                     assert_error, check, client_context, eq, fail, readable, sentinel)

TIMEOUT = 60


def _forwarded(up):
    return [x for x in up.requests() if not (x["target"] or "").startswith("/sentinel-")]


def test_head_larger_than_max_header_bytes_is_431():
    with Upstream() as up, Flowgate({"limits": {"max_header_bytes": 4096}}, upstream=up) as fg:
        c = fg.tls()
        eq(c.request("GET", "/fits", headers=[("X-Pad", "a" * 3000)]).status, 200,
           "a head under the limit")
        c.send(b"GET /big HTTP/1.1\r\nHost: localhost\r\nX-Big: " + b"a" * 5000 + b"\r\n\r\n")
        r = c.read_response()
        assert_error(r, 431, "headers_too_large")
        assert_closes(c, r)
        c.close()
        sentinel(fg, up)
        eq([x["target"] for x in _forwarded(up)], ["/fits"], "forwarded")


def test_too_many_headers_is_431():
    with Upstream() as up, Flowgate({"limits": {"max_headers": 10}}, upstream=up) as fg:
        eq(fg.get("/few", headers=[("X-H%d" % i, "v") for i in range(5)]).status, 200,
           "a request under the limit")
        c = fg.tls()
        r = c.request("GET", "/many", headers=[("X-H%d" % i, "v") for i in range(15)])
        assert_error(r, 431, "headers_too_large")
        assert_closes(c, r)
        c.close()
        sentinel(fg, up)
        eq([x["target"] for x in _forwarded(up)], ["/few"], "forwarded")


def test_content_length_over_max_body_is_413_before_reading():
    with Upstream() as up, Flowgate({"limits": {"max_body_bytes": 1000}}, upstream=up) as fg:
        eq(fg.post("/sha256", b"x" * 1000).status, 200, "a body at the limit")
        c = fg.tls()
        # Only the head is sent: the answer must not wait for the body.
        c.send(b"POST /sha256 HTTP/1.1\r\nHost: localhost\r\nContent-Length: 2000\r\n\r\n")
        assert_error(c.read_response(timeout=10), 413, "body_too_large")
        c.close()
        sentinel(fg, up)
        eq([x["body_len"] for x in _forwarded(up)], [1000], "forwarded bodies")


def test_chunked_body_over_max_body_is_not_forwarded_whole():
    with Upstream() as up, Flowgate({"limits": {"max_body_bytes": 1000}}, upstream=up) as fg:
        c = fg.tls()
        c.send(b"POST /sha256 HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n")
        try:
            for _ in range(4):
                c.send(b"400\r\n" + b"y" * 0x400 + b"\r\n")
            c.send(b"0\r\n\r\n")
            r = c.read_response(timeout=10)
            eq(r.status, 413, "status of an oversized chunked body")
        except (ConnectionClosed, OSError):
            pass
        c.close()
        sentinel(fg, up)
        for x in _forwarded(up):
            check(not (x.get("complete") and x["body_len"] > 1000),
                  "upstream received a complete %d-byte body" % x["body_len"])


def test_slowloris_partial_head_gets_408_and_close():
    with Upstream() as up, Flowgate({"limits": {"header_timeout_ms": 1000}}, upstream=up) as fg:
        c = fg.tls()
        c.send(b"GET /slow HTTP/1.1\r\nHost: localhost\r\n")
        r = c.read_response(timeout=15)
        assert_error(r, 408, "timeout")
        assert_closes(c, r)
        c.close()
        sentinel(fg, up)
        eq(_forwarded(up), [], "forwarded")


def test_dribbled_head_is_bounded_by_header_timeout():
    """The whole head must arrive within header_timeout_ms, not each byte."""
    with Upstream() as up, Flowgate({"limits": {"header_timeout_ms": 1000}}, upstream=up) as fg:
        c = fg.tls()
        c.send(b"GET /dribble HTTP/1.1\r\nHost: localhost\r\n")
        deadline = time.monotonic() + 15
        answered = False
        while time.monotonic() < deadline:
            try:
                c.send(b"X-D: 1\r\n")
            except OSError:
                answered = True
                break
            if readable(c.sock, 0.2):
                answered = True
                break
        check(answered, "a head dribbled for 15 s was still being read (header_timeout_ms=1000)")
        try:
            r = c.read_response(timeout=5)
            assert_error(r, 408, "timeout")
        except ConnectionClosed:
            fail("connection closed without the 408")
        c.close()
        sentinel(fg, up)
        eq(_forwarded(up), [], "forwarded")


def test_body_stall_closes_connection():
    with Upstream() as up, Flowgate({"limits": {"body_timeout_ms": 1000}}, upstream=up) as fg:
        c = fg.tls()
        c.send(b"POST /sha256 HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100\r\n\r\n" +
               b"z" * 10)
        try:
            r = c.read_response(timeout=15)
            eq(r.status, 408, "status after a body stall")
        except ConnectionClosed:
            pass
        check(c.wait_closed(10), "connection still open after a body stall")
        c.close()
        for x in up.requests():
            check(not x.get("complete"), "a stalled body reached the upstream as complete")


def test_keepalive_timeout_closes_idle_connection():
    with Upstream() as up, Flowgate({"limits": {"keepalive_timeout_ms": 1000}},
                                    upstream=up) as fg:
        c = fg.tls()
        eq(c.request("GET", "/once").status, 200, "status")
        check(c.wait_closed(15), "idle keep-alive connection not closed (keepalive_timeout_ms=1000)")
        c.close()


def _begin_handshake(port):
    """Open TCP and send a ClientHello through a memory BIO; returns the pieces."""
    ctx = client_context()
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(inc, out, server_hostname="localhost")
    sock = socket.create_connection((LOOPBACK, port), timeout=10)
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    sock.sendall(out.read())
    return sock, obj, inc, out


def _finish_handshake(sock, obj, inc, out, timeout):
    deadline = time.monotonic() + timeout
    while True:
        try:
            obj.do_handshake()
            data = out.read()
            if data:
                sock.sendall(data)
            return True
        except ssl.SSLWantReadError:
            data = out.read()
            if data:
                sock.sendall(data)
        left = deadline - time.monotonic()
        if left <= 0 or not readable(sock, left):
            return False
        chunk = sock.recv(65536)
        if not chunk:
            return False
        inc.write(chunk)


def test_max_connections_holds_extra_connection_in_backlog():
    with Upstream() as up, Flowgate({"limits": {"max_connections": 2}}, upstream=up) as fg:
        c1, c2 = fg.tls(), fg.tls()
        eq(c1.request("GET", "/c1").status, 200, "first connection served")
        eq(c2.request("GET", "/c2").status, 200, "second connection served")
        sock, obj, inc, out = _begin_handshake(fg.https_port)
        try:
            check(not readable(sock, 1.5),
                  "a third connection got TLS data while two were open (max_connections=2)")
            c1.close()
            check(_finish_handshake(sock, obj, inc, out, 15),
                  "the third handshake did not complete after a slot was freed")
        finally:
            sock.close()
            c2.close()
