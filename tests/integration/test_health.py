"""Active health checks (an upstream's health_check group): a server whose
check fails `fall` times in a row gets no request until `rise` checks pass;
when every server is unhealthy, all of them get traffic (panic mode); the
checks run once per interval for the process, not once per worker; a reload
restarts them for the new configuration and keeps the state of servers
still listed.

A server's /healthz is switched to another status with tests/upstream.py's
/health/set. Waits are bounded polls on the admin's gauges and counters and
on what the upstreams recorded; no timing decides a result: the one bound
on a number of checks is derived from the elapsed time the test measured.
"""

import json
import os
import signal
import socket
import time

from harness import Conn, Flowgate, Upstream, check, eq, fail, free_port, plain_request, tmpdir
from test_previews import Mvp, common_port
from test_upstream_names import A, B, NAME, write_hosts

TIMEOUT = 60
INTERVAL_MS = 100


def health(path="/healthz", fall=2, rise=2, interval_ms=INTERVAL_MS, timeout_ms=1000):
    return {"path": path, "interval_ms": interval_ms, "timeout_ms": timeout_ms, "fall": fall,
            "rise": rise}


def upstream_cfg(servers, hc, keepalive=0, **extra):
    up = {"servers": list(servers), "connect_timeout_ms": 2000, "read_timeout_ms": 10000,
          "keepalive": keepalive, "max_fails": 0, "health_check": hc}
    up.update(extra)
    return {"upstreams": {"api": up}}


def metric(fg, name, **labels):
    key = "%s{%s}" % (name, ",".join('%s="%s"' % kv for kv in labels.items()))
    return fg.metrics().get(key)


def healthy(fg, server):
    return metric(fg, "flowgate_upstream_server_healthy", upstream="api", server=server)


def checks(fg, server, result):
    return metric(fg, "flowgate_upstream_health_checks_total", upstream="api", server=server,
                  result=result) or 0.0


def eventually(what, pred, timeout=15.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.05)
    fail("not within %.0f s: %s" % (timeout, what))


def set_health(up, status):
    r = plain_request(up.port, "GET", "/health/set?status=%d" % status, host=up.addr)
    eq(r.status, 204, "/health/set on %s" % up.addr)


def count(up, target):
    return sum(1 for t in up.targets() if t == target)


def test_failing_server_is_taken_out_after_fall_and_back_after_rise():
    """Keep-alive on: the first requests go to A (worker 0 starts its
    round-robin there) over one pooled connection. Once A's /healthz answers
    500 fall times, A is unhealthy: the pooled connection to it is not used
    and every request goes to B. When A passes rise checks, it gets requests
    again."""
    with Upstream("a") as a, Upstream("b") as b, \
            Flowgate(upstream_cfg([a.addr, b.addr], health(fall=2, rise=2), keepalive=8)) as fg:
        eq(healthy(fg, a.addr), 1.0, "A starts healthy")
        eq(fg.get("/first").status, 200, "first request")
        eq(a.targets().count("/first"), 1, "the first request went to A")
        set_health(a, 500)
        eventually("A unhealthy", lambda: healthy(fg, a.addr) == 0.0)
        check(checks(fg, a.addr, "status") >= 2, "fall (2) checks answered 500")
        eq(healthy(fg, b.addr), 1.0, "B stays healthy")
        for i in range(10):
            eq(fg.get("/down%d" % i).status, 200, "request %d while A is unhealthy" % i)
        eq([t for t in a.targets() if t.startswith("/down")], [], "A got no request while down")
        eq([t for t in b.targets() if t.startswith("/down")], ["/down%d" % i for i in range(10)],
           "B got every request while A was down")
        set_health(a, 200)
        eventually("A healthy again", lambda: healthy(fg, a.addr) == 1.0)
        check(checks(fg, a.addr, "pass") >= 2, "rise (2) checks passed")
        # Without keep-alive (a new connection picks a server each time),
        # round-robin reaches A again.
    with Upstream("a") as a, Upstream("b") as b, \
            Flowgate(upstream_cfg([a.addr, b.addr], health(fall=2, rise=2))) as fg:
        set_health(a, 500)
        eventually("A unhealthy", lambda: healthy(fg, a.addr) == 0.0)
        for i in range(6):
            eq(fg.get("/down%d" % i).status, 200, "request %d while A is unhealthy" % i)
        eq([t for t in a.targets() if t.startswith("/down")], [], "A got no request while down")
        set_health(a, 200)
        eventually("A healthy again", lambda: healthy(fg, a.addr) == 1.0)
        for i in range(6):
            eq(fg.get("/up%d" % i).status, 200, "request %d after A came back" % i)
        got = [t for t in a.targets() if t.startswith("/up")]
        check(len(got) >= 2, "A gets requests again after rise passes: %r" % got)


def test_every_server_unhealthy_still_gets_traffic():
    """Panic mode: with both servers' checks failing, requests still reach
    both rather than none."""
    with Upstream("a") as a, Upstream("b") as b, \
            Flowgate(upstream_cfg([a.addr, b.addr], health(path="/status/503", fall=1))) as fg:
        eventually("both unhealthy",
                   lambda: healthy(fg, a.addr) == 0.0 and healthy(fg, b.addr) == 0.0)
        for i in range(6):
            eq(fg.get("/panic%d" % i).status, 200, "request %d with every server unhealthy" % i)
        ta = [t for t in a.targets() if t.startswith("/panic")]
        tb = [t for t in b.targets() if t.startswith("/panic")]
        eq(len(ta) + len(tb), 6, "every request reached a server")
        check(ta and tb, "both servers get traffic in panic mode: A %r, B %r" % (ta, tb))


def test_checks_run_once_per_interval_whatever_the_workers():
    """Two workers, one server: over a window, the upstream receives at most
    one check per interval (plus one at each edge), each a plain GET of the
    path with the server's address as Host and Connection: close."""
    with Upstream("a") as a, \
            Flowgate(dict(upstream_cfg([a.addr], health()), workers=2)) as fg:
        eventually("a first check", lambda: count(a, "/healthz") >= 1)
        n0, t0 = count(a, "/healthz"), time.monotonic()
        time.sleep(1.5)
        n1, t1 = count(a, "/healthz"), time.monotonic()
        elapsed_ms = (t1 - t0) * 1000
        bound = int(elapsed_ms / INTERVAL_MS) + 2
        check(n1 > n0, "checks go on")
        check(n1 - n0 <= bound, "%d checks in %.0f ms: at most %d (one per %d ms interval)"
              % (n1 - n0, elapsed_ms, bound, INTERVAL_MS))
        rec = [r for r in a.requests() if r["target"] == "/healthz"][0]
        eq((rec["method"], rec["version"]), ("GET", "HTTP/1.1"), "request line")
        hdrs = {k.lower(): v for k, v in rec["headers"]}
        eq(hdrs.get("host"), a.addr, "Host")
        eq(hdrs.get("connection"), "close", "Connection")
        check(checks(fg, a.addr, "pass") >= 1, "passes counted")


def hup(fg, timeout=10.0):
    gen = fg.metrics().get("flowgate_config_generation", 0)
    fg.proc.send_signal(signal.SIGHUP)
    eventually("the reload applied",
               lambda: fg.metrics().get("flowgate_config_generation", 0) > gen, timeout)


def rewrite(fg, text):
    with open(fg.conf_path, "w") as f:
        f.write(text)


def test_reload_follows_the_new_path_and_keeps_the_state():
    """An unhealthy server stays unhealthy through a reload that keeps it
    (its counters go on; with fall = 50 a fresh state would read healthy),
    and a reload that changes the path is followed: the old path is no
    longer asked for, and the server comes back once the new one passes."""
    with Upstream("a") as a, \
            Flowgate(upstream_cfg([a.addr], health(path="/status/500", fall=1))) as fg:
        eventually("A unhealthy", lambda: healthy(fg, a.addr) == 0.0)
        with open(fg.conf_path) as f:
            text = f.read()
        before = checks(fg, a.addr, "status")
        rewrite(fg, text.replace("fall = 1;", "fall = 50;"))
        hup(fg)
        eq(healthy(fg, a.addr), 0.0, "still unhealthy after a reload that keeps the server")
        check(checks(fg, a.addr, "status") >= before, "the counters go on through a reload")
        rewrite(fg, text.replace('"/status/500"', '"/healthz"'))
        hup(fg)
        eventually("the new path is checked", lambda: count(a, "/healthz") >= 2)
        eventually("A healthy with the new path", lambda: healthy(fg, a.addr) == 1.0)
        old = count(a, "/status/500")
        n = count(a, "/healthz")
        eventually("more checks of the new path", lambda: count(a, "/healthz") >= n + 3)
        eq(count(a, "/status/500"), old, "the old path is no longer checked")
        eq(fg.get("/after").status, 200, "a request after the reload")
        eq(a.targets().count("/after"), 1, "it reached A")


def test_metrics_have_help_and_type_and_only_checked_upstreams():
    """Both families carry HELP and TYPE; an upstream without a
    health_check has no healthy gauge (its servers are never checked)."""
    with Upstream("a") as a, Upstream("b") as b, \
            Flowgate({"upstreams": {
                "api": {"servers": [a.addr], "health_check": health()},
                "other": {"servers": [b.addr]}}}) as fg:
        eventually("a check counted", lambda: checks(fg, a.addr, "pass") >= 1)
        r = plain_request(fg.admin_port, "GET", "/metrics", host="127.0.0.1")
        text = r.body.decode()
        for name, kind in (("flowgate_upstream_server_healthy", "gauge"),
                           ("flowgate_upstream_health_checks_total", "counter")):
            check("# HELP %s " % name in text, "HELP of %s" % name)
            check("# TYPE %s %s\n" % (name, kind) in text, "TYPE of %s" % name)
        m = fg.metrics()
        eq([k for k in m if k.startswith("flowgate_upstream_server_healthy")],
           ['flowgate_upstream_server_healthy{upstream="api",server="%s"}' % a.addr],
           "healthy gauges")
        eq(count(b, "/healthz"), 0, "an upstream without health_check is not checked")


def test_refused_timeout_and_garbage_are_failures():
    """A closed port (refused), a path that hangs past timeout_ms, and a
    server that closes before any status line all fail their checks."""
    dead = "127.0.0.1:%d" % free_port()
    with Upstream("a") as a, Upstream("b") as b, \
            Flowgate({"upstreams": {
                "api": {"servers": [dead, a.addr],
                        "health_check": health(path="/slow/3000", timeout_ms=100, fall=1)},
                "other": {"servers": [b.addr],
                          "health_check": health(path="/close-before", fall=1)}}}) as fg:
        def other(result):
            return metric(fg, "flowgate_upstream_health_checks_total", upstream="other",
                          server=b.addr, result=result) or 0.0
        eventually("every kind of failure counted",
                   lambda: checks(fg, dead, "refused") >= 1 and checks(fg, a.addr, "timeout") >= 1
                   and other("bad_response") >= 1)
        eventually("all three unhealthy",
                   lambda: healthy(fg, dead) == 0.0 and healthy(fg, a.addr) == 0.0 and
                   metric(fg, "flowgate_upstream_server_healthy", upstream="other",
                          server=b.addr) == 0.0)
        eq(checks(fg, a.addr, "pass") + other("pass"), 0.0, "no pass")


# ---- servers given by name: every address the name resolves to is checked

def name_setup():
    """A hosts file naming two loopback addresses (one port for both, as a
    Service's endpoints) and a health-checked upstream given by that name."""
    port = common_port([A, B])
    hosts = os.path.join(tmpdir(), "hosts")
    write_hosts(hosts, [(A, NAME), (B, NAME)])
    return port, hosts, "%s:%d" % (NAME, port)


def name_cfg(servers, hosts, hc, **extra):
    cfg = upstream_cfg(servers, hc, **extra)
    cfg["resolver"] = {"hosts_file": hosts, "nameservers": ["127.0.0.1:9"]}
    return cfg


def addr_healthy(fg, server, addr):
    return metric(fg, "flowgate_upstream_server_healthy", upstream="api", server=server,
                  address=addr)


def set_health_at(up, status):
    """/health/set on an upstream listening on its own loopback address."""
    with Conn(socket.create_connection((up.host, up.port), timeout=10)) as c:
        r = c.request("GET", "/health/set?status=%d" % status, host=up.addr, timeout=10)
    eq(r.status, 204, "/health/set on %s" % up.addr)


def test_each_address_of_a_name_is_checked():
    """A name with two addresses: both are checked (one gauge each, with the
    address label). When A's /healthz fails fall times, A gets no request
    and B gets them all; after rise passes A gets requests again. Without
    keep-alive each request picks its address anew."""
    port, hosts, server = name_setup()
    with Mvp("a", A, port) as ma, Mvp("b", B, port) as mb, \
            Flowgate(name_cfg([server], hosts, health(fall=2, rise=2))) as fg:
        eq(fg.get("/warm").status, 200, "a first request (the name resolves)")
        eventually("both addresses checked",
                   lambda: count(ma, "/healthz") >= 1 and count(mb, "/healthz") >= 1)
        eventually("both addresses healthy",
                   lambda: addr_healthy(fg, server, ma.addr) == 1.0 and
                   addr_healthy(fg, server, mb.addr) == 1.0)
        rec = [r for r in ma.requests() if r["target"] == "/healthz"][0]
        eq({k.lower(): v for k, v in rec["headers"]}.get("host"), server, "Host of a check")
        set_health_at(ma, 500)
        eventually("A unhealthy", lambda: addr_healthy(fg, server, ma.addr) == 0.0)
        eq(addr_healthy(fg, server, mb.addr), 1.0, "B stays healthy")
        for i in range(8):
            eq(fg.get("/down%d" % i).status, 200, "request %d while A is unhealthy" % i)
        eq([t for t in ma.targets() if t.startswith("/down")], [], "A got no request while down")
        eq([t for t in mb.targets() if t.startswith("/down")], ["/down%d" % i for i in range(8)],
           "B got every request while A was down")
        set_health_at(ma, 200)
        eventually("A healthy again", lambda: addr_healthy(fg, server, ma.addr) == 1.0)
        for i in range(8):
            eq(fg.get("/up%d" % i).status, 200, "request %d after A came back" % i)
        got = [t for t in ma.targets() if t.startswith("/up")]
        check(len(got) >= 2, "A gets requests again after rise passes: %r" % got)
        r = plain_request(fg.admin_port, "GET", "/status.json", host="127.0.0.1")
        samples = json.loads(r.body)["families"]["flowgate_upstream_server_healthy"]["samples"]
        eq(sorted(s["labels"].get("address", "") for s in samples), sorted([ma.addr, mb.addr]),
           "the status page's data has each address's health")


def test_every_address_of_a_name_unhealthy_still_gets_traffic():
    """Panic mode counts a name's addresses: with both addresses failing
    their checks, requests reach both rather than none. Two workers: the
    checker learns the addresses from both, and checks each once."""
    port, hosts, server = name_setup()
    cfg = dict(name_cfg([server], hosts, health(path="/status/503", fall=1)), workers=2)
    with Mvp("a", A, port) as ma, Mvp("b", B, port) as mb, Flowgate(cfg) as fg:
        eq(fg.get("/warm").status, 200, "a first request (the name resolves)")
        eventually("both unhealthy",
                   lambda: addr_healthy(fg, server, ma.addr) == 0.0 and
                   addr_healthy(fg, server, mb.addr) == 0.0)
        for i in range(6):
            eq(fg.get("/panic%d" % i).status, 200, "request %d with every address unhealthy" % i)
        ta = [t for t in ma.targets() if t.startswith("/panic")]
        tb = [t for t in mb.targets() if t.startswith("/panic")]
        eq(len(ta) + len(tb), 6, "every request reached an address")
        check(ta and tb, "both addresses get traffic in panic mode: A %r, B %r" % (ta, tb))
        eq(sorted(k for k in fg.metrics() if k.startswith("flowgate_upstream_server_healthy")),
           sorted('flowgate_upstream_server_healthy{upstream="api",server="%s",address="%s"}'
                  % (server, m.addr) for m in (ma, mb)), "one gauge per address, not per worker")


def test_a_name_and_an_address_share_panic_mode():
    """An upstream of an address (C) and a name (A, B). With C and B failing
    their checks, A (the one healthy address) gets every request: panic mode
    counts the name's addresses with the servers given as addresses, and
    does not start while one of them is healthy."""
    port, hosts, server = name_setup()
    with Mvp("a", A, port) as ma, Mvp("b", B, port) as mb, Upstream("c") as c, \
            Flowgate(name_cfg([server, c.addr], hosts, health(fall=1, rise=1))) as fg:
        eq(fg.get("/warm").status, 200, "a first request (the name resolves)")
        set_health(c, 500)
        set_health_at(mb, 500)
        eventually("C and B unhealthy, A healthy",
                   lambda: healthy(fg, c.addr) == 0.0 and
                   addr_healthy(fg, server, mb.addr) == 0.0 and
                   addr_healthy(fg, server, ma.addr) == 1.0)
        for i in range(6):
            eq(fg.get("/one%d" % i).status, 200, "request %d with one healthy address" % i)
        eq([t for t in ma.targets() if t.startswith("/one")], ["/one%d" % i for i in range(6)],
           "A, the one healthy address, got every request")


def test_a_name_keeps_its_verdicts_through_a_reload_and_forgets_a_gone_address():
    """An unhealthy address of a name stays unhealthy through a reload that
    keeps the server (fall = 50 would read healthy on a fresh state); when
    the name no longer resolves to it, it is no longer checked nor shown."""
    port, hosts, server = name_setup()
    with Mvp("a", A, port) as ma, Mvp("b", B, port) as mb, \
            Flowgate(name_cfg([server], hosts, health(fall=1, rise=1))) as fg:
        eq(fg.get("/warm").status, 200, "a first request (the name resolves)")
        set_health_at(ma, 500)
        eventually("A unhealthy", lambda: addr_healthy(fg, server, ma.addr) == 0.0)
        with open(fg.conf_path) as f:
            text = f.read()
        rewrite(fg, text.replace("fall = 1;", "fall = 50;"))
        hup(fg)
        eq(addr_healthy(fg, server, ma.addr), 0.0, "A still unhealthy after the reload")
        for i in range(4):
            eq(fg.get("/after%d" % i).status, 200, "request %d after the reload" % i)
        eq([t for t in ma.targets() if t.startswith("/after")], [], "A got no request")
        write_hosts(hosts, [(B, NAME)])
        eventually("A forgotten", lambda: addr_healthy(fg, server, ma.addr) is None, 30)
        eq(addr_healthy(fg, server, mb.addr), 1.0, "B still checked")
        na, nb = count(ma, "/healthz"), count(mb, "/healthz")
        eventually("B checked on", lambda: count(mb, "/healthz") >= nb + 3)
        # (a check of A in flight as it was forgotten may land after na)
        check(count(ma, "/healthz") <= na + 1, "A no longer checked")
