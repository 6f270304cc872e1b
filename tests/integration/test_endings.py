"""How requests and connections end: a slow reader gets every byte, the
upstream's read timeout never counts flowgate's own backpressure, a client
that stops reading is let go after send_timeout_ms and logged as cut, and
every answer (flowgate's own included) honours a client's close: the
response says Connection: close, the connection closes, and a request
pipelined after it is never served (RFC 9112 9.6).
"""

import socket
import subprocess
import time

from harness import (Conn, Flowgate, RedisServer, Upstream, check, eq, fail, free_port,
                     pattern, sha256)

TIMEOUT = 120

SMALL_RCVBUF = 16384


def slow_conn(fg):
    """A TLS client whose socket takes little at a time: flowgate's writes
    block soon and stay blocked while the client pauses."""
    raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SMALL_RCVBUF)
    raw.settimeout(20)
    raw.connect(("127.0.0.1", fg.https_port))
    from harness import client_context
    s = client_context().wrap_socket(raw, server_hostname="localhost")
    return Conn(s, timeout=30)


def read_all_body(conn, r, n, deadline_s=60):
    """Read R's Content-Length body of N bytes at full speed."""
    eq(r.header("Content-Length"), str(n), "Content-Length")
    deadline = time.monotonic() + deadline_s
    while len(conn.buf) < n:
        if not conn._need(deadline, "%d body bytes (have %d)" % (n, len(conn.buf))):
            break
    body = bytes(conn.buf[:n])
    del conn.buf[:n]
    return body


def slow_get(fg, n, pause, close):
    """GET /bytes/N on a slow_conn, pause PAUSE seconds after the head, then
    read the body at full speed and check every byte. Returns the open Conn."""
    c = slow_conn(fg)
    c.send("GET /bytes/%d HTTP/1.1\r\nHost: localhost\r\n%s\r\n"
           % (n, "Connection: close\r\n" if close else ""))
    r = c.read_head()
    eq(r.status, 200, "status")
    time.sleep(pause)
    body = read_all_body(c, r, n)
    eq(len(body), n, "body bytes received")
    eq(sha256(body), sha256(pattern(n)), "body digest")
    return c


def log_for(fg, path, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for e in fg.access_log():
            if e.get("path") == path:
                return e
        time.sleep(0.1)
    fail("no access-log line for %s: %r" % (path, fg.access_log()))


def kernel_capacity(fg):
    """Bytes the kernel holds between flowgate and a slow_conn client that
    reads nothing: flowgate's send queue (autotuned, a few MB on loopback)
    plus the client's receive queue, measured with ss on a body larger than
    both."""
    c = slow_conn(fg)
    try:
        c.send("GET /bytes/30000000 HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        c.read_head()
        time.sleep(1.5)
        cport = c.sock.getsockname()[1]
        out = subprocess.run(["ss", "-tnH", "( sport = :%d and dport = :%d ) or "
                              "( sport = :%d and dport = :%d )"
                              % (fg.https_port, cport, cport, fg.https_port)],
                             capture_output=True, text=True, timeout=10).stdout
        total = len(c.buf)
        for line in out.splitlines():
            f = line.split()
            total += int(f[1]) + int(f[2])  # Recv-Q + Send-Q
        return total
    finally:
        c.close()


def test_slow_reader_after_upstream_finished_gets_every_byte():
    """Connection: close, and the upstream done long before the client reads
    on: the body is just larger than what the kernel holds, so its tail waits
    in flowgate's own output (under its 256 KiB bound) once the upstream has
    finished. The client pauses 7 s, then takes the rest; nothing is cut."""
    with Upstream() as up, Flowgate(upstream=up) as fg:
        n = kernel_capacity(fg) + 128 * 1024
        c = slow_get(fg, n, 7, close=True)
        try:
            check(c.wait_closed(5), "connection not closed after a Connection: close response")
        finally:
            c.close()
        e = log_for(fg, "/bytes/%d" % n)
        eq(e.get("status"), 200, "logged status")
        check(e.get("error") is None, "a complete response logged with an error: %r" % e)
        check(e.get("bytes_out", 0) >= n, "logged bytes_out %r < body" % e.get("bytes_out"))


def test_slow_reader_longer_than_read_timeout_gets_every_byte():
    """The upstream's read_timeout_ms (1 s) measures its silence while
    flowgate wants its bytes: a client that pauses 3 s mid-body, making
    flowgate stop reading the upstream, still gets all 12 MB."""
    n = 12000000
    cfg = {"upstreams": {"api": {"read_timeout_ms": 1000}}}
    with Upstream() as up, Flowgate(cfg, upstream=up) as fg:
        c = slow_get(fg, n, 3, close=False)
        try:
            # Still keep-alive: the next request is served on the same connection.
            r2 = c.request("GET", "/status/200")
            eq(r2.status, 200, "next request on the same connection")
        finally:
            c.close()
        e = log_for(fg, "/bytes/%d" % n)
        check(e.get("error") is None, "logged with an error: %r" % e)


def test_client_that_stops_reading_is_cut_after_send_timeout_and_logged_as_cut():
    n = 30000000
    cfg = {"limits": {"send_timeout_ms": 1000}, "upstreams": {"api": {"read_timeout_ms": 30000}}}
    with Upstream() as up, Flowgate(cfg, upstream=up) as fg:
        c = slow_conn(fg)
        try:
            c.send("GET /bytes/%d HTTP/1.1\r\nHost: localhost\r\n\r\n" % n)
            r = c.read_head()
            eq(r.status, 200, "status")
            time.sleep(4)
            got = len(c.buf)
            deadline = time.monotonic() + 20
            while c._need(deadline, "the connection to be cut"):
                got = len(c.buf)
            check(got < n, "a client that stopped reading still got every byte")
        finally:
            c.close()
        e = log_for(fg, "/bytes/%d" % n)
        eq(e.get("error"), "send timeout", "logged error")
        check(e.get("bytes_out", n) < n, "a cut response logged with its full size: %r" % e)
        # Everyone else is still served.
        eq(fg.get("/status/200").status, 200, "another client after the cut")


# ----------------------------------------------------------- closing answers

def answers(fg, up, redis_port):
    """(name, request bytes, expected status, listener) for each kind of answer
    flowgate gives itself."""
    return [
        ("401", b"GET /api/private HTTP/1.1\r\nHost: localhost\r\n", 401, "https"),
        ("403", b"POST /open HTTP/1.1\r\nHost: localhost\r\nOrigin: https://evil.example\r\n"
                b"Content-Length: 0\r\n", 403, "https"),
        ("204", b"OPTIONS /open HTTP/1.1\r\nHost: localhost\r\nOrigin: https://app.example.com\r\n"
                b"Access-Control-Request-Method: GET\r\n", 204, "https"),
        ("404", b"GET /nowhere HTTP/1.1\r\nHost: localhost\r\n", 404, "https"),
        ("405", b"DELETE /open HTTP/1.1\r\nHost: localhost\r\n", 405, "https"),
        ("429", b"GET /limited HTTP/1.1\r\nHost: localhost\r\n", 429, "https"),
        ("502", b"GET /down HTTP/1.1\r\nHost: localhost\r\n", 502, "https"),
        ("504", b"GET /slow/3000 HTTP/1.1\r\nHost: localhost\r\n", 504, "https"),
        ("308", b"GET /open HTTP/1.1\r\nHost: localhost\r\n", 308, "http"),
        ("503", b"GET /denied HTTP/1.1\r\nHost: localhost\r\n", 503, "https"),
    ]


def closing_config(up, redis):
    dead = "127.0.0.1:%d" % free_port()
    return {
        "cors": {"origins": ["https://app.example.com"], "credentials": True},
        "upstreams": {
            "api": {"read_timeout_ms": 500},
            "down": {"servers": [dead], "connect_timeout_ms": 500, "read_timeout_ms": 500},
        },
        "rate_limit": {
            "redis": {"address": redis.addr, "timeout_ms": 250, "key_prefix": "fgend:"},
            "on_redis_failure": "deny",
            "tiers": {"anonymous": {"limit": 1000, "window": 60}},
            "endpoints": (
                {"path": "/limited", "methods": ["GET"], "limit": 1, "window": 60, "key": "ip"},
            ),
        },
        "routes": (
            {"host": "", "path": "/api/", "upstream": "api", "auth": "required"},
            {"host": "", "path": "/open", "upstream": "api", "auth": "none",
             "methods": ["GET", "POST"]},
            {"host": "", "path": "/limited", "upstream": "api", "auth": "none"},
            {"host": "", "path": "/down", "upstream": "down", "auth": "none",
             "rate_limit": False},
            {"host": "", "path": "/slow/", "upstream": "api", "auth": "none",
             "rate_limit": False},
            {"host": "", "path": "/denied", "upstream": "api", "auth": "none"},
            {"host": "", "path": "/marker", "upstream": "api", "auth": "none",
             "rate_limit": False},
        ),
    }


def check_closing_answer(fg, up, name, head, status, listener, close_hdr):
    """HEAD + CLOSE_HDR, then a pipelined request for /marker/NAME in the same
    write: the answer says close, the connection closes, /marker is never
    forwarded."""
    marker = "/marker/%s-%d" % (name, int(time.monotonic() * 1000))
    data = head + close_hdr + b"\r\n" + (
        "GET %s HTTP/1.1\r\nHost: localhost\r\n\r\n" % marker).encode()
    c = fg.tls() if listener == "https" else fg.plain()
    try:
        c.send(data)
        method = head.split(b" ", 1)[0].decode()
        r = c.read_response(method)
        eq(r.status, status, "%s: status" % name)
        eq((r.header("Connection") or "").lower(), "close", "%s: Connection header" % name)
        check(c.wait_closed(5), "%s: connection left open after the answer" % name)
        check(not c.buf.startswith(b"HTTP/"), "%s: the pipelined request was answered" % name)
    finally:
        c.close()
    time.sleep(0.1)
    check(marker not in up.targets(), "%s: the request pipelined after close was forwarded"
          % name)


def _closing(close_hdr):
    with RedisServer() as redis, Upstream() as up, Flowgate(closing_config(up, redis),
                                                             upstream=up) as fg:
        # The endpoint limit of 1: the first /limited passes, the next is a 429.
        eq(fg.get("/limited").status, 200, "first /limited")
        for name, head, status, listener in answers(fg, up, redis.port):
            if name == "503":
                redis.pause()
            try:
                check_closing_answer(fg, up, name, head, status, listener, close_hdr)
            finally:
                if name == "503":
                    redis.resume()


def test_every_answer_honours_connection_close():
    _closing(b"Connection: close\r\n")


def test_every_answer_closes_an_http10_request_without_keep_alive():
    def as_10(head):
        return head.replace(b" HTTP/1.1\r\n", b" HTTP/1.0\r\n", 1)
    global answers
    orig = answers

    def answers10(fg, up, port):
        return [(n, as_10(h), s, l) for n, h, s, l in orig(fg, up, port)]
    answers = answers10
    try:
        _closing(b"")
    finally:
        answers = orig


def test_http10_keep_alive_is_kept_and_said():
    with Upstream() as up, Flowgate(upstream=up) as fg:
        c = fg.tls()
        try:
            c.send(b"GET /nowhere-but-routed HTTP/1.0\r\nHost: localhost\r\n"
                   b"Connection: keep-alive\r\n\r\n")
            r = c.read_response()
            eq(r.status, 200, "status")
            eq((r.header("Connection") or "").lower(), "keep-alive", "Connection")
            c.send(b"GET /again HTTP/1.0\r\nHost: localhost\r\n\r\n")
            r = c.read_response()
            eq(r.status, 200, "second request on a 1.0 keep-alive connection")
            eq((r.header("Connection") or "").lower(), "close", "Connection of the last")
            check(c.wait_closed(5), "HTTP/1.0 without keep-alive left open")
        finally:
            c.close()


def test_content_length_zero_is_not_an_unread_body():
    """An own answer to a request with Content-Length: 0 keeps the connection."""
    cfg = {"routes": ({"host": "", "path": "/open", "upstream": "api", "auth": "none",
                       "methods": ["GET"]},)}
    with Upstream() as up, Flowgate(cfg, upstream=up) as fg:
        c = fg.tls()
        try:
            r = c.request("POST", "/open", headers=[("Content-Length", "0")])
            eq(r.status, 405, "status")
            check((r.header("Connection") or "").lower() != "close",
                  "Content-Length: 0 forced a close")
            r = c.request("GET", "/open")
            eq(r.status, 200, "next request on the same connection")
        finally:
            c.close()


def test_lingering_close_delivers_the_answer_to_a_client_still_sending():
    """A 413 answered before the body is read, to a client that keeps
    sending: the answer arrives whole (no reset destroys it) and the
    connection then ends."""
    cfg = {"limits": {"max_body_bytes": 1000}}
    with Upstream() as up, Flowgate(cfg, upstream=up) as fg:
        c = fg.tls()
        try:
            c.send(b"POST /x HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5000000\r\n\r\n")
            c.send(b"x" * 65536)
            r = c.read_response("POST")
            eq(r.status, 413, "status")
            eq((r.header("Connection") or "").lower(), "close", "Connection")
            check(r.complete, "the 413 body was cut")
            check(c.wait_closed(10), "connection not closed")
        finally:
            c.close()


def test_slow_but_steady_reader_is_not_cut_by_the_send_timeout():
    """send_timeout_ms = 1000 and a client that takes 8 KiB every 50 ms of a
    body far larger than the kernel holds: the kernel reports the socket
    writable only once its queue has drained far down (seconds at this pace),
    yet the client never stopped reading. It is not cut."""
    n = 20000000
    cfg = {"limits": {"send_timeout_ms": 1000}}
    with Upstream() as up, Flowgate(cfg, upstream=up) as fg:
        c = slow_conn(fg)
        try:
            c.send("GET /bytes/%d HTTP/1.1\r\nHost: localhost\r\n\r\n" % n)
            r = c.read_head()
            eq(r.status, 200, "status")
            got, started = len(c.buf), time.monotonic()
            c.sock.settimeout(5)
            while time.monotonic() - started < 6:
                try:
                    data = c.sock.recv(8192)
                except (ConnectionError, OSError):
                    data = b""
                check(data, "cut after %.1f s of steady reading (%d bytes)"
                      % (time.monotonic() - started, got))
                got += len(data)
                time.sleep(0.05)
        finally:
            c.close()
        e = log_for(fg, "/bytes/%d" % n)
        check(e.get("error") != "send timeout", "logged as a send timeout: %r" % e)


def test_half_closed_client_still_gets_the_whole_response():
    """A client that shuts its write side after its request (it has nothing
    more to send) while the response is still going out gets all of it."""
    with Upstream() as up, Flowgate(upstream=up) as fg:
        n = kernel_capacity(fg) + 128 * 1024
        c = slow_conn(fg)
        try:
            c.send("GET /bytes/%d HTTP/1.1\r\nHost: localhost\r\n\r\n" % n)
            r = c.read_head()
            eq(r.status, 200, "status")
            time.sleep(1.5)  # the upstream has finished; the tail waits in flowgate
            socket.socket.shutdown(c.sock, socket.SHUT_WR)  # a TCP FIN under the TLS
            body = read_all_body(c, r, n)
            eq(sha256(body), sha256(pattern(n)), "body digest")
            check(c.wait_closed(5), "connection not closed after the response")
        finally:
            c.close()
        e = log_for(fg, "/bytes/%d" % n)
        check(e.get("error") is None, "logged as cut: %r" % e)


def test_tunnel_closed_by_the_client_closes_at_once():
    from test_previews import ws_open
    with Upstream() as up, Flowgate(upstream=up) as fg:
        c, r, _ = ws_open(fg, "localhost")
        try:
            eq(r.status, 101, "upgrade")
            socket.socket.shutdown(c.sock, socket.SHUT_WR)
            started = time.monotonic()
            check(c.wait_closed(4), "tunnel not closed after the client's FIN")
            check(time.monotonic() - started < 2, "closed only after %.1f s"
                  % (time.monotonic() - started))
        finally:
            c.close()


def test_empty_response_body_ends_with_the_head():
    """An upstream's 200 with Content-Length: 0 on a keep-alive link is
    complete once its head is read: it is logged as served, and a request
    pipelined after it is answered, without waiting for more upstream bytes
    that never come (read_timeout_ms is a minute)."""
    cfg = {"upstreams": {"api": {"read_timeout_ms": 60000}}}
    with Upstream() as up, Flowgate(cfg, upstream=up) as fg:
        c = fg.tls()
        try:
            c.send("GET /bytes/0 HTTP/1.1\r\nHost: localhost\r\n\r\n"
                   "GET /status/201 HTTP/1.1\r\nHost: localhost\r\n\r\n")
            r = c.read_response(timeout=10)
            eq((r.status, r.header("Content-Length"), r.body), (200, "0", b""), "empty response")
            eq(c.read_response(timeout=10).status, 201, "the request pipelined after it")
        finally:
            c.close()
        e = log_for(fg, "/bytes/0")
        eq((e.get("status"), e.get("error")), (200, None), "logged status and error")
