"""Graceful stop (SIGTERM, shutdown_delay_ms, shutdown_timeout_ms):
/readyz turns 503 at once, the listeners keep accepting for the delay with
every response saying Connection: close, then they close with the idle
connections; requests in flight finish, and a request that outlives the
shutdown timeout is cut so the process still ends. Under systemd the
process reports READY=1, RELOADING=1 ... READY=1 and STOPPING=1."""

import os
import signal
import socket
import time

from harness import (LOOPBACK, Flowgate, Upstream, assert_closes, check, eq, plain_request,
                     tmpdir)

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
            eq(r.header("Connection"), "close", "request %d's response during the stop" % i)
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
        cut = [e for e in fg.access_log() if e.get("path") == "/slow/20000"]
        eq([e.get("error") for e in cut], ["shutdown"], "the cut request's log line")


def _readyz(fg):
    return plain_request(fg.admin_port, "GET", "/readyz", host="127.0.0.1", timeout=5)


def _first_503(fg, seconds):
    """/readyz's first 503 within SECONDS (the signal reaches the loop a moment
    after kill() returns), or its last answer."""
    deadline = time.monotonic() + seconds
    while True:
        r = _readyz(fg)
        if r.status == 503 or time.monotonic() >= deadline:
            return r
        time.sleep(0.02)


def test_sigterm_drains_for_shutdown_delay():
    delay = 1.5
    with Upstream() as up, Flowgate({"shutdown_delay_ms": 1500, "shutdown_timeout_ms": 5000,
                                     "workers": 2}, upstream=up) as fg:
        eq(_readyz(fg).status, 200, "/readyz before SIGTERM")
        idle = fg.tls()
        eq(idle.request("GET", "/idle").status, 200, "a keep-alive connection left idle")
        again = fg.tls()
        eq(again.request("GET", "/before").status, 200, "a keep-alive connection used again")
        busy = fg.tls()
        busy.send("GET /slow/2500 HTTP/1.1\r\nHost: localhost\r\n\r\n")
        time.sleep(0.3)
        t0 = time.monotonic()
        fg.proc.send_signal(signal.SIGTERM)

        r = _first_503(fg, 0.5)
        eq(r.status, 503, "/readyz just after SIGTERM")
        eq(r.json().get("status"), "draining", "/readyz status during the delay")
        eq(r.json().get("listeners"), "up", "/readyz listeners during the delay")
        eq(plain_request(fg.admin_port, "GET", "/healthz", host="127.0.0.1").status, 200,
           "/healthz during the delay")
        fresh = fg.tls()
        r = fresh.request("GET", "/during-delay")
        eq(r.status, 200, "a new connection during the delay is served")
        assert_closes(fresh, r)
        r = again.request("GET", "/again")
        eq(r.status, 200, "a keep-alive request during the delay")
        assert_closes(again, r)
        with fg.plain() as p:
            r = p.request("GET", "/plain")
            eq(r.status, 308, "flowgate's own answer during the delay")
            assert_closes(p, r)
        check(not _closed(idle, 0.1), "an idle connection was closed before the delay ended")
        spent = time.monotonic() - t0
        check(spent < delay, "the checks meant for the delay took %.2f s" % spent)

        time.sleep(max(0.0, t0 + delay + 0.3 - time.monotonic()))
        check(_closed(idle, 2), "the idle connection is closed once the delay ends")
        check(_refused(fg.https_port), "the listener is closed once the delay ends")
        r = _readyz(fg)
        eq(r.status, 503, "/readyz while requests finish")
        eq(r.json().get("listeners"), "closed", "/readyz listeners after the delay")
        r = busy.read_response(timeout=10)
        eq(r.status, 200, "the request in flight at SIGTERM")
        check(r.complete, "the request in flight answered whole")
        assert_closes(busy, r)
        rc = _exits_within(fg, 5)
        eq(rc, 0, "exit status once the last request is done")
        elapsed = time.monotonic() - t0
        check(elapsed >= delay, "exited %.2f s after SIGTERM, before the delay" % elapsed)
        fg.proc = None


def test_systemd_notify_ready_reloading_stopping():
    path = os.path.join(tmpdir(), "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(10)
    try:
        with Upstream() as up, Flowgate({"shutdown_delay_ms": 1000}, upstream=up,
                                        env={"NOTIFY_SOCKET": path}) as fg:
            eq(sock.recv(4096), b"READY=1", "message once serving")
            fg.proc.send_signal(signal.SIGHUP)
            lines = sock.recv(4096).decode().split("\n")
            eq(lines[0], "RELOADING=1", "first line at SIGHUP")
            check(len(lines) == 2 and lines[1].startswith("MONOTONIC_USEC="),
                  "MONOTONIC_USEC after RELOADING=1: %r" % lines)
            usec = int(lines[1].split("=", 1)[1])
            check(abs(time.monotonic() * 1e6 - usec) < 5e6,
                  "MONOTONIC_USEC %d is not CLOCK_MONOTONIC now" % usec)
            eq(sock.recv(4096), b"READY=1", "message once the reload is done")
            fg.proc.send_signal(signal.SIGTERM)
            eq(sock.recv(4096), b"STOPPING=1", "message at SIGTERM")
            fg.proc.send_signal(signal.SIGHUP)
            sock.settimeout(0.5)
            try:
                late = sock.recv(4096)
            except (socket.timeout, TimeoutError):
                late = None
            eq(late, None, "message at a SIGHUP while stopping (it is ignored)")
            eq(_exits_within(fg, 10), 0, "exit status")
            fg.proc = None
    finally:
        sock.close()
