"""The admin listener under slow, idle and numerous clients, and a /metrics
exposition too long for any fixed buffer: a head trickled in byte by byte is
still answered; an exchange is cut 10 s after accept however slowly its head
arrives; past 64 open admin connections the oldest make room, so a flood of
idle connections holds bounded memory and the probe after it is served; and
/metrics is complete whatever its length."""

import select
import socket
import time

from harness import (LOOPBACK, Conn, Flowgate, check, eq, free_port, plain_request)

TIMEOUT = 90

ADMIN_TIMEOUT = 10    # seconds from accept to the end of an admin exchange
ADMIN_CONNS_MAX = 64  # admin connections open at once
STD_TIERS = 3         # anonymous, authenticated, premium: always configured
OUTCOMES = 6          # allowed, limited, local_allowed, local_limited, failed_open, failed_closed


def _at_eof(sock):
    """Read once from a readable SOCK: True at EOF or reset (bytes are dropped)."""
    try:
        return not sock.recv(4096)
    except OSError:
        return True


def _closed_by_server(sock, timeout):
    """True when the server closes SOCK (FIN or reset) within TIMEOUT."""
    return bool(_closed_within([sock], timeout))


def _closed_within(socks, timeout):
    """The indices in SOCKS of those the server closes within TIMEOUT, all
    watched at once."""
    deadline = time.monotonic() + timeout
    waiting = dict(enumerate(socks))
    closed = set()
    while waiting:
        left = deadline - time.monotonic()
        ready = select.select(list(waiting.values()), [], [], left)[0] if left > 0 else []
        if not ready:
            break
        for i, s in list(waiting.items()):
            if s in ready and _at_eof(s):
                closed.add(i)
                del waiting[i]
    return closed


def _admin_socket(fg):
    s = socket.create_connection((LOOPBACK, fg.admin_port), timeout=10)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def test_admin_request_sent_byte_by_byte_is_answered():
    """A head that arrives one byte at a time, well within the exchange's
    time, is parsed once complete and answered in full."""
    with Flowgate() as fg:
        req = b"GET /readyz HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: slow-probe\r\n\r\n"
        with Conn.plain(fg.admin_port, timeout=10) as c:
            for i in range(len(req)):
                c.send(req[i:i + 1])
                time.sleep(0.02)
            r = c.read_response()
            eq(r.status, 200, "/readyz status after a byte-by-byte head")
            eq(r.json().get("status"), "ready", "/readyz status field")
            eq(r.header("Connection"), "close", "Connection header")
            check(c.wait_closed(5.0), "the admin connection stayed open after its reply")


def test_admin_idle_connection_is_closed():
    """A client that connects and sends nothing is let go by the timeout,
    and the listener serves on."""
    with Flowgate() as fg:
        s = _admin_socket(fg)
        try:
            check(_closed_by_server(s, ADMIN_TIMEOUT + 15),
                  "an idle admin connection was still open %d s after accept"
                  % (ADMIN_TIMEOUT + 15))
        finally:
            s.close()
        eq(plain_request(fg.admin_port, "GET", "/healthz", host="127.0.0.1").status, 200,
           "/healthz after the idle connection")


def test_admin_trickled_head_is_cut():
    """The timeout bounds the whole exchange, not the gap between bytes: a
    head trickled in forever, a byte every half second, is cut."""
    with Flowgate() as fg:
        s = _admin_socket(fg)
        try:
            s.sendall(b"GET /healthz HTTP/1.1\r\nX-Slow: ")
            deadline = time.monotonic() + ADMIN_TIMEOUT + 15
            closed = False
            while not closed and time.monotonic() < deadline:
                try:
                    s.sendall(b"a")
                except OSError:
                    closed = True
                    break
                closed = _closed_by_server(s, 0.5)
            check(closed, "a head trickled in for %d s was never cut" % (ADMIN_TIMEOUT + 15))
        finally:
            s.close()
        eq(plain_request(fg.admin_port, "GET", "/healthz", host="127.0.0.1").status, 200,
           "/healthz after the trickled head")


def test_admin_flood_of_idle_connections_does_not_starve_a_probe():
    """200 idle connections, then a probe: the probe is answered, the oldest
    idle connections were closed to make room (at most ADMIN_CONNS_MAX stay
    open), and the newest idle one is still served."""
    with Flowgate() as fg:
        idle = []
        try:
            for _ in range(200):
                idle.append(_admin_socket(fg))
            r = plain_request(fg.admin_port, "GET", "/healthz", host="127.0.0.1")
            eq(r.status, 200, "/healthz behind 200 idle admin connections")
            # With the probe, 201 were accepted in order: all but the newest
            # ADMIN_CONNS_MAX were closed as each new one came.
            evicted = 201 - ADMIN_CONNS_MAX
            closed = _closed_within(idle[:evicted], 3.0)
            check(len(closed) == evicted, "%d of the oldest %d idle admin connections are still "
                  "open: the open admin connections are not bounded"
                  % (evicted - len(closed), evicted))
            last = idle.pop()
            last.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            c = Conn(last, timeout=10)
            eq(c.read_response().status, 200, "/healthz on the newest idle connection")
            c.close()
        finally:
            for s in idle:
                s.close()


def _many_tiers(n):
    return {"tier_with_a_long_descriptive_name_%03d" % i: {"limit": 100 + i, "window": 60}
            for i in range(n)}


def test_admin_metrics_longer_than_16k_is_complete():
    """80 rate-limit tiers make an exposition of about 50 KB: every family
    is in it, every tier's series too, and it ends where Content-Length says."""
    tiers = _many_tiers(80)
    cfg = {"rate_limit": {
        # Nothing listens there: the link stays down and the "local" mode
        # decides, which is all /metrics needs.
        "redis": {"address": "%s:%d" % (LOOPBACK, free_port()), "timeout_ms": 250},
        "on_redis_failure": "local",
        "tiers": tiers,
    }}
    with Flowgate(cfg) as fg:
        with Conn.plain(fg.admin_port, timeout=10) as c:
            c.send(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            head = c.read_head()
            eq(head.status, 200, "/metrics status")
            n = int(head.header("Content-Length"))
            body = c.read_until_close(10.0)
        eq(len(body), n, "bytes of /metrics before the close vs its Content-Length")
        text = body.decode()
        check(text.endswith("\n"), "/metrics does not end with a newline: %r" % text[-80:])
        for name in tiers:
            check('flowgate_ratelimit_decisions_total{tier="%s",outcome="allowed"} 0\n' % name
                  in text, "tier %s missing from /metrics" % name)
        for family in ("flowgate_redis_call_duration_seconds histogram",
                       "flowgate_config_generation gauge",
                       "flowgate_worker_config_generation gauge",
                       "flowgate_tls_certificate_expiry_timestamp_seconds gauge"):
            check("# TYPE %s\n" % family in text, "family %r missing from /metrics" % family)
        last = text.rstrip("\n").rsplit("\n", 1)[-1]
        check(last.startswith("flowgate_tls_certificate_expiry_timestamp_seconds{certificate="),
              "the last line is not the last family's: %r" % last)
        check(n > 16384, "the exposition is only %d bytes: the test needs more than 16 KB" % n)
        m = fg.metrics()
        eq(len([k for k in m if k.startswith("flowgate_ratelimit_decisions_total{")]),
           (len(tiers) + STD_TIERS) * OUTCOMES, "decision series (each tier, each outcome)")
