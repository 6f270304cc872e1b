"""Graceful stop (SPEC: SIGTERM, shutdown_timeout_ms): requests in flight
finish, idle connections and the listeners close at once, and a request
that outlives the shutdown timeout is cut so the process still ends."""

import signal
import socket
import time

from harness import LOOPBACK, Flowgate, Upstream, check, eq

TIMEOUT = 60


def _exits_within(fg, seconds):
    try:
        return fg.proc.wait(timeout=seconds)
    except Exception:
        return None


def _closed(c, seconds):
    """True when the server closes C within SECONDS (any bytes before are dropped)."""
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            if not c._recv(max(0.01, deadline - time.monotonic())):
                return True
    except (socket.timeout, TimeoutError):
        pass
    return False


def _refused(port):
    try:
        socket.create_connection((LOOPBACK, port), timeout=2).close()
        return False
    except OSError:
        return True


def test_sigterm_lets_requests_in_flight_finish():
    with Upstream() as up, Flowgate({"shutdown_timeout_ms": 10000, "workers": 2},
                                    upstream=up) as fg:
        idle = fg.tls()
        eq(idle.request("GET", "/first").status, 200, "an idle keep-alive connection")
        busy = [fg.tls() for _ in range(3)]
        for i, c in enumerate(busy):
            c.send("GET /slow/%d HTTP/1.1\r\nHost: localhost\r\n\r\n" % (700 + 100 * i))
        time.sleep(0.3)
        t0 = time.monotonic()
        fg.proc.send_signal(signal.SIGTERM)
        for i, c in enumerate(busy):
            r = c.read_response(timeout=10)
            eq(r.status, 200, "request %d in flight at SIGTERM" % i)
            check(r.complete, "request %d answered whole" % i)
        check(_closed(idle, 5), "an idle connection is closed at SIGTERM")
        rc = _exits_within(fg, 5)
        eq(rc, 0, "exit status once the last request is done")
        elapsed = time.monotonic() - t0
        check(elapsed < 5, "exited %.1f s after SIGTERM, not at the shutdown timeout" % elapsed)
        check(_refused(fg.https_port), "the listener is gone")
        fg.proc = None


def test_shutdown_timeout_cuts_a_request_that_outlives_it():
    with Upstream() as up, Flowgate({"shutdown_timeout_ms": 1000}, upstream=up) as fg:
        c = fg.tls()
        c.send("GET /slow/20000 HTTP/1.1\r\nHost: localhost\r\n\r\n")
        time.sleep(0.3)
        t0 = time.monotonic()
        fg.proc.send_signal(signal.SIGTERM)
        rc = _exits_within(fg, 10)
        elapsed = time.monotonic() - t0
        check(rc is not None, "flowgate exits while a request is still waiting upstream")
        check(0.8 <= elapsed < 5, "exited %.1f s after SIGTERM (shutdown_timeout_ms 1000)"
              % elapsed)
        check(_closed(c, 5), "the cut request's connection is closed")
        fg.proc = None
