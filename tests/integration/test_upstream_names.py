"""Upstream servers given by name ("name:port"): resolved by each worker
through the resolver group (hosts file, then DNS), every address a server of
its own for round-robin, keep-alive and ejection, answers followed as their
TTL expires, a name that does not resolve answered 502.

The upstreams listen on loopback addresses of their own (127.0.0.2,
127.0.0.3), one port for all, as a Service's endpoints would.
"""

import json
import os
import socket
import threading
import time

from harness import Flowgate, check, eq, fail, run_flowgate, tmpdir
from test_cli import _base_text, _write
from test_previews import Dns, Mvp, common_port, established_to, wait_until

TIMEOUT = 90

A, B = "127.0.0.2", "127.0.0.3"
NAME = "api.platform.svc.cluster.local"


def write_hosts(path, lines):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write("# upstream names\n")
        for ip, name in lines:
            f.write("%s\t%s\n" % (ip, name))
    os.replace(tmp, path)


def names_config(port, hosts_path, dns=None, **upstream):
    up = {"servers": ["%s:%d" % (NAME, port)], "keepalive": 8}
    up.update(upstream)
    resolver = {"hosts_file": hosts_path}
    resolver["nameservers"] = ["127.0.0.1:%d" % (dns.port if dns else 9)]
    return {"upstreams": {"api": up}, "resolver": resolver}


def who(fg, path="/"):
    r = fg.get(path)
    eq(r.status, 200, "status of %s (body %r)" % (path, r.body[:200]))
    return json.loads(r.body)["upstream"]


def metric(fg, name, **labels):
    key = "%s{%s}" % (name, ",".join('%s="%s"' % kv for kv in labels.items()))
    return fg.metrics().get(key)


def test_two_addresses_of_a_name_are_balanced():
    port = common_port([A, B])
    hosts = os.path.join(tmpdir(), "hosts")
    write_hosts(hosts, [(A, NAME), (B, NAME)])
    with Mvp("a", A, port) as ma, Mvp("b", B, port) as mb, \
            Flowgate(names_config(port, hosts)) as fg:
        seen = [who(fg, "/r%d" % i) for i in range(8)]
        eq(sorted(seen), ["a"] * 4 + ["b"] * 4, "requests per address")
        for i in range(1, 8):
            check(seen[i] != seen[i - 1], "round-robin alternates: %r" % seen)
        # Kept alive per address: one connection each served them all.
        eq(len({r["conn"] for r in ma.requests()}), 1, "connections at a")
        eq(len({r["conn"] for r in mb.requests()}), 1, "connections at b")
        for ip in (A, B):
            eq(metric(fg, "flowgate_upstream_server_up", upstream="api",
                      server="%s:%d" % (NAME, port), address="%s:%d" % (ip, port)), 1.0,
               "gauge of %s" % ip)
        eq({e.get("upstream") for e in fg.access_log()}, {"%s:%d" % (A, port), "%s:%d" % (B, port)},
           "logged upstream addresses")


def test_ttl_expiry_moves_traffic_and_closes_old_idle_connection():
    port = common_port([A, B])
    hosts = os.path.join(tmpdir(), "hosts")
    write_hosts(hosts, [])
    with Mvp("a", A, port), Mvp("b", B, port), Dns({NAME: [A, 1]}) as dns, \
            Flowgate(names_config(port, hosts, dns)) as fg:
        eq(who(fg), "a", "first answer")
        wait_until(lambda: established_to(A, port) == 1, 5, "a pooled connection to a")
        dns.set({NAME: [B, 1]})
        deadline = time.monotonic() + 10
        while who(fg) != "b":
            if time.monotonic() > deadline:
                fail("traffic never moved to the new address")
            time.sleep(0.2)
        for _ in range(4):
            eq(who(fg), "b", "after the move")
        wait_until(lambda: established_to(A, port) == 0, 5,
                   "the idle connection to the old address to close")
        check(len(dns.queries(NAME)) >= 2, "the name was looked up again")


def test_nxdomain_is_502_with_one_log_line():
    hosts = os.path.join(tmpdir(), "hosts")
    write_hosts(hosts, [])
    with Dns({}) as dns, Flowgate(names_config(8080, hosts, dns)) as fg:
        r = fg.get("/nx")
        eq(r.status, 502, "status for a name that does not exist")
        eq(r.json().get("error"), "bad_gateway", "error code")
        lines = [e for e in fg.access_log() if e.get("path") == "/nx"]
        eq(len(lines), 1, "access-log lines for the request: %r" % lines)
        eq(lines[0].get("error"), "upstream name not found", "logged error")
        eq(lines[0].get("status"), 502, "logged status")
        eq(metric(fg, "flowgate_upstream_errors_total", upstream="api", kind="dns"), 1.0,
           "dns errors counted")
        check(len(dns.queries(NAME)) >= 1, "the name was asked of DNS")


def test_check_accepts_a_name_that_does_not_resolve():
    text = _base_text().replace('"127.0.0.1:9"', '"no-such-service.invalid:8080"')
    check("no-such-service.invalid:8080" in text, "the server was replaced")
    p = run_flowgate(["-t", "-c", _write(text)])
    eq(p.returncode, 0, "exit status of -t (stderr %r)" % p.stderr[-500:])
    p = run_flowgate(["-t", "-c", _write(text.replace("no-such-service.invalid:8080",
                                                      "bad_name.invalid:8080"))])
    check(p.returncode != 0, "-t refused a name with '_'")
    check("bad address" in p.stderr, "why: %r" % p.stderr[-500:])


class Flaky:
    """A keep-alive HTTP/1.1 server on HOST:PORT answering 200 "flaky", and
    bytes that are no response (then close) for /garbage. Counts requests."""

    def __init__(self, host, port):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.paths = []
        self.conns = []
        self.stopping = False
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self):
        while not self.stopping:
            try:
                c, _ = self.sock.accept()
            except OSError:
                continue
            self.conns.append(c)
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, c):
        buf = b""
        c.settimeout(30)
        try:
            while True:
                while b"\r\n\r\n" not in buf:
                    data = c.recv(4096)
                    if not data:
                        return
                    buf += data
                head, buf = buf.split(b"\r\n\r\n", 1)
                path = head.split(b" ")[1].decode()
                self.paths.append(path)
                if path.startswith("/slow"):
                    time.sleep(0.3)
                if path == "/garbage":
                    c.sendall(b"NOT HTTP AT ALL\r\n\r\n")
                    return
                body = json.dumps({"upstream": "flaky"}).encode()
                c.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                          b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        except OSError:
            return
        finally:
            c.close()

    def close(self):
        self.stopping = True
        self.thread.join(2)
        self.sock.close()


def test_keepalive_reuse_respects_ejection():
    """Two idle connections to each address; one address answers garbage
    and is ejected (max_fails = 1): its other idle connection is never
    handed out while it is ejected, even to concurrent requests."""
    port = common_port([A, B])
    hosts = os.path.join(tmpdir(), "hosts")
    write_hosts(hosts, [(A, NAME), (B, NAME)])
    flaky = Flaky(A, port)
    try:
        with Mvp("b", B, port) as mb, \
                Flowgate(names_config(port, hosts, max_fails=1, fail_timeout_ms=60000)) as fg:
            def many(paths):
                out = [None] * len(paths)

                def one(i):
                    out[i] = fg.get(paths[i])
                ts = [threading.Thread(target=one, args=(i,)) for i in range(len(paths))]
                for t in ts:
                    t.start()
                for t in ts:
                    t.join(30)
                return out

            rs = many(["/slow/%d" % i for i in range(4)])
            eq([r.status for r in rs], [200] * 4, "four concurrent requests")
            eq(len([p for p in flaky.paths if p.startswith("/slow")]), 2, "two went to a")
            eq(len(flaky.conns), 2, "connections to a")
            # The next one goes to a (round-robin), on one of its idle
            # connections, which answers garbage: 502, and a is ejected.
            eq(fg.get("/garbage").status, 502, "a garbled answer")
            eq(flaky.paths.count("/garbage"), 1, "garbage answered by a")
            before = len(flaky.paths)
            rs = many(["/after%d" % i for i in range(3)])
            eq([json.loads(r.body)["upstream"] for r in rs], ["b"] * 3, "while a is ejected")
            for i in range(4):
                eq(who(fg, "/later%d" % i), "b", "one by one while a is ejected")
            eq(flaky.paths[before:], [], "requests a received while ejected")
            eq(metric(fg, "flowgate_upstream_server_up", upstream="api",
                      server="%s:%d" % (NAME, port), address="%s:%d" % (A, port)), 0.0,
               "a's gauge")
            check(mb.requests(), "b served")
    finally:
        flaky.close()


def test_first_request_waits_for_the_first_answer():
    """The name's first query goes unanswered: a request waits on it (no
    502 while an answer may come) and is served once the retried query is
    answered."""
    port = common_port([A])
    hosts = os.path.join(tmpdir(), "hosts")
    write_hosts(hosts, [])
    with Mvp("a", A, port), Dns({NAME: "drop"}) as dns, \
            Flowgate(names_config(port, hosts, dns)) as fg:
        out = {}
        t = threading.Thread(target=lambda: out.update(r=fg.get("/first")))
        t.start()
        time.sleep(0.5)
        dns.set({NAME: [A, 30]})
        t.join(20)
        check("r" in out, "the waiting request never ended")
        eq(out["r"].status, 200, "status of the request that waited (body %r)" % out["r"].body)
        eq(json.loads(out["r"].body)["upstream"], "a", "served by the answer's address")


def test_servfail_without_an_address_is_502():
    """A name whose lookups fail (SERVFAIL) and that never had an address:
    502, logged as not resolved, counted as kind "dns"."""
    hosts = os.path.join(tmpdir(), "hosts")
    write_hosts(hosts, [])
    with Dns({NAME: "servfail"}) as dns, Flowgate(names_config(8080, hosts, dns)) as fg:
        r = fg.get("/sf")
        eq(r.status, 502, "status")
        lines = [e for e in fg.access_log() if e.get("path") == "/sf"]
        eq([e.get("error") for e in lines], ["upstream name not resolved"], "logged error")
        eq(metric(fg, "flowgate_upstream_errors_total", upstream="api", kind="dns"), 1.0,
           "dns errors counted")


def test_reloads_keep_names_resolved():
    """A reload builds new pools: their names resolve again (from the
    worker's cache) with no request failing; a reload to an address and
    back to the name works as well."""
    from test_reload import hup, write_config
    port = common_port([A, B])
    hosts = os.path.join(tmpdir(), "hosts")
    write_hosts(hosts, [(A, NAME), (B, NAME)])
    with Mvp("a", A, port) as ma, Mvp("b", B, port), \
            Flowgate(dict(names_config(port, hosts), workers=2)) as fg:
        eq(sorted(who(fg, "/x%d" % i) for i in range(4)), ["a", "a", "b", "b"], "before")
        write_config(fg, dict(names_config(port, hosts, keepalive=4), workers=2), upstream=ma)
        hup(fg, failed=False)
        eq(sorted(who(fg, "/y%d" % i) for i in range(4)), ["a", "a", "b", "b"], "after a reload")
        write_config(fg, {"workers": 2, "upstreams": {"api": {"servers": [ma.addr]}}},
                     upstream=ma)
        hup(fg, failed=False)
        eq({who(fg, "/z%d" % i) for i in range(3)}, {"a"}, "an address again")
        write_config(fg, dict(names_config(port, hosts), workers=2), upstream=ma)
        hup(fg, failed=False)
        eq(sorted(who(fg, "/w%d" % i) for i in range(4)), ["a", "a", "b", "b"], "the name again")
