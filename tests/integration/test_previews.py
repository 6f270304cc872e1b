"""Preview hosts (the previews and resolver groups, 404 for unknown previews):
every MVP on its own subdomain, resolved asynchronously, isolated, with
WebSockets.

Each MVP upstream is tests/upstream.py on its own loopback address (127.0.0.2,
127.0.0.3, ...), all on one port (the upstream template has one port). Names
come from a hosts file and from tests/dnsserver.py, a small DNS server whose
answers (and TTLs) a test rewrites while flowgate runs.
"""

import base64
import hashlib
import importlib.util
import json
import os
import socket
import subprocess
import sys
import time

from harness import (FORBIDDEN_TRAILERS, HSTS, SECURITY_HEADERS, UPSTREAM_PY, ROOT, Flowgate,
                     Upstream, build_request, check, eq, fail, free_port, pattern, register_pid,
                     req_header, send_chunked, sha256, stop_process, tmpdir)

TIMEOUT = 60

_spec = importlib.util.spec_from_file_location("fg_test_upstream", UPSTREAM_PY)
_upstream_mod = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_upstream_mod)
ws_frame = _upstream_mod.ws_frame

DNS_PY = os.path.join(ROOT, "tests", "dnsserver.py")
PATTERN = "mvp-{name}.preview.example.com"
ZONE = ".previews.test"
ADDRS = {"alpha": "127.0.0.2", "beta": "127.0.0.3", "down": "127.0.0.4"}


def host_of(name):
    return "mvp-%s.preview.example.com" % name


def upstream_name(name):
    return "mvp-%s%s" % (name, ZONE)


def common_port(addrs):
    """A port free on every one of ADDRS."""
    for _ in range(50):
        port = free_port()
        socks = []
        try:
            for a in addrs:
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                socks.append(s)
                s.bind((a, port))
            return port
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    fail("no port free on %s" % (addrs,))


def wait_tcp(host, port, timeout, proc, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            fail("%s exited early" % what)
        try:
            socket.create_connection((host, port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.02)
    fail("%s did not listen on %s:%d" % (what, host, port))


class Mvp(Upstream):
    """tests/upstream.py on HOST:PORT, recording, named after its MVP."""

    def __init__(self, name, host, port):
        super().__init__(name=name)
        self.host = host
        self.fixed_port = port

    @property
    def addr(self):
        return "%s:%d" % (self.host, self.port)

    def __enter__(self):
        Upstream.count += 1
        self.port = self.fixed_port
        base = os.path.join(tmpdir(), "mvp-%s-%d" % (self.name, Upstream.count))
        self.record_file = base + ".jsonl"
        open(self.record_file, "w").close()
        with open(base + ".log", "w") as log:
            self.proc = subprocess.Popen(
                [sys.executable, UPSTREAM_PY, "--listen", self.addr, "--name", self.name,
                 "--record", self.record_file], stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL)
        register_pid(self.proc.pid, "upstream.py")
        try:
            wait_tcp(self.host, self.port, 10, self.proc, "mvp %s" % self.name)
        except BaseException:
            self.stop()
            raise
        return self


class Dns:
    """tests/dnsserver.py on 127.0.0.1 with a zone the test rewrites."""

    def __init__(self, zone):
        self.zone = zone

    def __enter__(self):
        self.port = free_port()
        self.zone_file = os.path.join(tmpdir(), "zone.json")
        self.log = os.path.join(tmpdir(), "dns-queries.log")
        open(self.log, "w").close()
        self.set(self.zone)
        self.proc = subprocess.Popen(
            [sys.executable, DNS_PY, "--listen", "127.0.0.1:%d" % self.port, "--zone",
             self.zone_file, "--log", self.log], stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
        register_pid(self.proc.pid, "dnsserver.py")
        time.sleep(0.2)
        return self

    def set(self, zone):
        tmp = self.zone_file + ".tmp"
        with open(tmp, "w") as f:
            json.dump(zone, f)
        os.replace(tmp, self.zone_file)

    def queries(self, name=None, qtype=1):
        """Names of the queries of QTYPE received: a lookup asks A (1) and
        AAAA (28) at once, so the A queries count lookups."""
        with open(self.log) as f:
            qs = [line.split() for line in f if line.strip()]
        return [q for q, t in qs if (name is None or q == name) and int(t) == qtype]

    def __exit__(self, *exc):
        stop_process(self.proc)
        return False


def write_hosts(path, mapping):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write("# MVP previews\n")
        for name, ip in mapping.items():
            f.write("%s\t%s  # %s\n" % (ip, upstream_name(name), name))
    os.replace(tmp, path)


def preview_config(port, dns, hosts_path, **previews):
    pv = {"host": PATTERN, "upstream": "mvp-{name}%s:%d" % (ZONE, port), "auth": "none",
          "strip_credentials": True,
          "platform_cookies": ["access_token", "refresh_token", "session"],
          "frame_ancestors": "https://app.example.com", "websocket": True}
    pv.update(previews)
    return {
        "routes": ({"host": "localhost", "path": "/", "upstream": "api", "auth": "none"},),
        "jwt": {"cookie": "fg_jwt"},
        "previews": pv,
        "resolver": {"nameservers": ["127.0.0.1:%d" % dns.port], "hosts_file": hosts_path},
    }


class Setup:
    """MVP upstreams on their addresses, the DNS server, a hosts file and flowgate."""

    def __init__(self, names=("alpha", "beta"), zone=None, hosts=None, extra=None, **previews):
        self.extra = extra or {}
        self.names = names
        self.zone = zone or {}
        self.hosts = hosts if hosts is not None else {n: ADDRS[n] for n in ("alpha", "beta", "down")}
        self.previews = previews

    def __enter__(self):
        self.port = common_port(sorted(set(ADDRS.values())))
        self.mvps = {}
        self.api = Upstream().__enter__()
        try:
            for n in self.names:
                self.mvps[n] = Mvp(n, ADDRS[n], self.port).__enter__()
            self.dns = Dns(self.zone).__enter__()
            self.hosts_path = os.path.join(tmpdir(), "hosts")
            write_hosts(self.hosts_path, self.hosts)
            cfg = preview_config(self.port, self.dns, self.hosts_path, **self.previews)
            cfg.update(self.extra)
            self.fg = Flowgate(cfg, upstream=self.api).__enter__()
        except BaseException:
            self._stop_peers()
            raise
        return self

    def _stop_peers(self):
        for m in self.mvps.values():
            m.stop()
        if getattr(self, "dns", None):
            self.dns.__exit__()
        self.api.stop()

    def __exit__(self, *exc):
        try:
            self.fg.__exit__(*exc)
        finally:
            self._stop_peers()
        return False


def assert_preview_error(r, status, code):
    eq(r.status, status, "status (body %r)" % r.body[:200])
    eq(r.json().get("error"), code, "error code")


def assert_preview_headers(r):
    eq(r.all("Content-Security-Policy"), ["frame-ancestors https://app.example.com"],
       "Content-Security-Policy on a preview")
    check(not r.has("X-Frame-Options"), "X-Frame-Options on a preview: %r"
          % r.all("X-Frame-Options"))
    eq(r.header("Strict-Transport-Security"), HSTS, "HSTS on a preview")
    eq(r.header("X-Content-Type-Options"), "nosniff", "X-Content-Type-Options on a preview")


# ------------------------------------------------------------------ routing

def test_preview_reaches_its_own_mvp():
    with Setup() as s:
        for name in ("alpha", "beta"):
            r = s.fg.get("/hello?x=1", host=host_of(name))
            eq(r.status, 200, "status for %s" % name)
            eq(json.loads(r.body)["upstream"], name, "MVP reached for %s" % name)
            assert_preview_headers(r)
            rec = s.mvps[name].requests()[-1]
            eq(rec["target"], "/hello?x=1", "target at the MVP")
            eq(req_header(rec, "X-Forwarded-Host"), [host_of(name)], "X-Forwarded-Host")
        r = s.fg.get("/", host="MVP-Alpha.Preview.Example.COM")
        eq(r.status, 200, "uppercase preview host")
        eq(json.loads(r.body)["upstream"], "alpha", "uppercase host normalised")
        r = s.fg.get("/", host="%s:%d" % (host_of("beta"), s.fg.https_port))
        eq(json.loads(r.body)["upstream"], "beta", "Host with the listener's own port")
        # Ordinary routes keep the platform's headers.
        r = s.fg.get("/headers", host="localhost")
        eq(r.status, 200, "ordinary route")
        eq(r.all("X-Frame-Options"), [SECURITY_HEADERS["X-Frame-Options"]], "XFO on a route")
        eq(r.all("Content-Security-Policy"), [SECURITY_HEADERS["Content-Security-Policy"]],
           "CSP on a route")


def test_invalid_and_lookalike_hosts_are_not_previews():
    label63 = "a" * 59
    with Setup() as s:
        bad = [
            "mvp-alpha.preview.example.com.evil.test",   # only ends like the pattern... no: begins
            "evil.mvp-alpha.preview.example.com",        # extra label in front
            "mvp-alpha.x.preview.example.com",           # extra label inside
            "mvp-alpha.preview.example.co",
            "mvp-alpha.preview.example.comx",
            "xmvp-alpha.preview.example.com",
            "mvp-.preview.example.com",                  # empty name
            "mvp--alpha.preview.example.com",            # leading '-'
            "mvp-alpha-.preview.example.com",            # trailing '-'
            "mvp-" + "a" * 60 + ".preview.example.com",  # 64-character label
            "mvp-alpha.preview.example.com:1",           # not the listener's port
            "mvp-alpha.preview.example.com:%d" % s.fg.http_port,
            "preview.example.com",
        ]
        for h in bad:
            r = s.fg.get("/", host=h)
            assert_preview_error(r, 404, "not_found")
            check(r.has("X-Frame-Options"), "%s answered as a preview" % h)
        for n, m in s.mvps.items():
            eq(m.requests(), [], "requests forwarded to MVP %s" % n)
        eq(s.dns.queries(), [], "DNS queries for hosts that are not previews")
        eq(s.api.requests(), [], "requests on the localhost route")
        # The longest valid label is a preview: looked up, unknown, 404.
        r = s.fg.get("/", host="mvp-%s.preview.example.com" % label63)
        assert_preview_error(r, 404, "not_found")
        check(not r.has("X-Frame-Options"), "a 63-character label is a preview")
        eq(s.dns.queries(), ["mvp-%s%s" % (label63, ZONE)], "DNS query for the 63-char label")


def test_many_requests_answered_by_one_dns_answer():
    """80 requests for one unknown MVP wait on one DNS query; its answer ends
    them all in one loop round, more than a worker keeps request buffers
    for, so most are freed as they finish. Each gets its 404, and nothing
    touches a finished request (the sanitizers watch)."""
    import signal
    with Setup() as s:
        s.dns.proc.send_signal(signal.SIGSTOP)
        try:
            conns = [s.fg.tls() for _ in range(80)]
            for c in conns:
                c.send(build_request("GET", "/", [], host=host_of("ghost")))
            time.sleep(0.5)  # let every request reach the resolver (not an assertion)
        finally:
            s.dns.proc.send_signal(signal.SIGCONT)
        for i, c in enumerate(conns):
            r = c.read_response(timeout=20)
            assert_preview_error(r, 404, "not_found")
            c.close()
        eq(s.dns.queries(), [upstream_name("ghost")], "one DNS query for all of them")
        eq(s.dns.queries(qtype=28), [upstream_name("ghost")], "and one AAAA query")
        eq(s.fg.get("/", host=host_of("alpha")).status, 200, "flowgate still serves")


def test_unknown_preview_is_404_and_a_down_mvp_fails_alone():
    with Setup() as s:
        r = s.fg.get("/", host=host_of("nosuch"))
        assert_preview_error(r, 404, "not_found")
        assert_preview_headers(r)
        eq(s.dns.queries(), [upstream_name("nosuch")], "one DNS query")
        r = s.fg.get("/", host=host_of("nosuch"))
        assert_preview_error(r, 404, "not_found")
        eq(len(s.dns.queries()), 1, "a negative answer is cached")
        r = s.fg.get("/", host=host_of("down"))  # in the hosts file, nothing listens there
        assert_preview_error(r, 502, "bad_gateway")
        r = s.fg.get("/", host=host_of("alpha"))
        eq(r.status, 200, "another MVP while one is down")
        # A slow MVP holds up only its own requests.
        slow = s.fg.tls()
        try:
            slow.send(build_request("GET", "/slow/3000", host=host_of("alpha")))
            t0 = time.monotonic()
            r = s.fg.get("/", host=host_of("beta"))
            eq(r.status, 200, "beta while alpha is slow")
            check(time.monotonic() - t0 < 1.5, "beta waited for slow alpha")
            eq(slow.read_response().status, 200, "the slow request")
        finally:
            slow.close()
        # An MVP stopped while flowgate runs: 502 for it, the others serve.
        s.mvps["beta"].stop()
        r = s.fg.get("/", host=host_of("beta"))
        assert_preview_error(r, 502, "bad_gateway")
        eq(s.fg.get("/", host=host_of("alpha")).status, 200, "alpha after beta went down")


def test_dns_lookups_are_shared_and_cached():
    zone = {upstream_name("gamma"): [ADDRS["alpha"], 60]}
    with Setup(names=("alpha",), zone=zone, hosts={}) as s:
        conns = [s.fg.tls() for _ in range(10)]
        try:
            for c in conns:
                c.send(build_request("GET", "/", host=host_of("gamma")))
            for c in conns:
                r = c.read_response()
                eq(r.status, 200, "concurrent preview request")
                eq(json.loads(r.body)["upstream"], "alpha", "MVP reached through DNS")
        finally:
            for c in conns:
                c.close()
        for _ in range(5):
            eq(s.fg.get("/", host=host_of("gamma")).status, 200, "cached")
        eq(s.dns.queries(upstream_name("gamma")), [upstream_name("gamma")],
           "DNS queries for 15 requests within the TTL")


def test_resolver_failure_is_502_and_a_waiting_client_may_leave():
    zone = {upstream_name("hang"): "drop", upstream_name("broken"): "servfail"}
    with Setup(names=("alpha",), zone=zone) as s:
        r = s.fg.get("/", host=host_of("broken"))
        assert_preview_error(r, 502, "bad_gateway")
        # A client that leaves while its name is being resolved.
        for _ in range(3):
            c = s.fg.tls()
            c.send(build_request("GET", "/", host=host_of("hang")))
            time.sleep(0.2)
            c.close()
        eq(s.fg.get("/", host=host_of("alpha")).status, 200, "while a lookup hangs")
        t0 = time.monotonic()
        r = s.fg.get("/", host=host_of("hang"), timeout=30)
        assert_preview_error(r, 502, "bad_gateway")
        check(time.monotonic() - t0 < 15, "resolver timeout took %.1f s" % (time.monotonic() - t0))
        check(s.fg.alive(), "flowgate died")


# ------------------------------------------------------------------ isolation

def test_credentials_never_reach_a_preview():
    with Setup(names=("alpha",)) as s:
        hdrs = [("Authorization", "Bearer platform-token"),
                ("Cookie", "theme=dark; access_token=AT; session=S; fg_jwt=J; lang=en"),
                ("Cookie", "refresh_token=RT"),
                ("Cookie", "cart=3;session =S2; Session=own")]
        r = s.fg.get("/", host=host_of("alpha"), headers=hdrs)
        eq(r.status, 200, "status")
        rec = s.mvps["alpha"].requests()[-1]
        eq(req_header(rec, "Authorization"), [], "Authorization at a preview")
        # Names compare exactly, as browsers keep them: "Session" is the
        # preview's own cookie, not the platform's "session".
        eq(req_header(rec, "Cookie"), ["theme=dark; lang=en", "cart=3; Session=own"],
           "cookies at a preview")
        # The same on an ordinary route passes untouched.
        s.fg.get("/", host="localhost", headers=hdrs)
        rec = s.api.requests()[-1]
        eq(req_header(rec, "Authorization"), ["Bearer platform-token"], "Authorization on a route")
        eq(len(req_header(rec, "Cookie")), 3, "cookies on a route")


def test_request_trailers_never_reach_a_preview():
    """Authorization and platform cookies sent as trailer fields, past the head
    that strip_credentials filters, never reach the MVP."""
    data = pattern(50000)
    with Setup(names=("alpha",)) as s:
        c = s.fg.tls()
        for split in (False, True):
            send_chunked(c, "/sha256", data, FORBIDDEN_TRAILERS, host=host_of("alpha"),
                         split=split)
            r = c.read_response()
            eq(r.status, 200, "status")
            eq(json.loads(r.body), {"len": len(data), "sha256": sha256(data)}, "body at the MVP")
            rec = s.mvps["alpha"].requests()[-1]
            check(rec["complete"], "MVP framing: %s" % rec.get("error"))
            eq(rec["trailers"], "", "trailer section at the MVP (split %s)" % split)
        c.close()


def test_credentials_pass_without_strip_credentials():
    with Setup(names=("alpha",), strip_credentials=False) as s:
        s.fg.get("/", host=host_of("alpha"),
                 headers=[("Authorization", "Bearer t"), ("Cookie", "session=S; a=1")])
        rec = s.mvps["alpha"].requests()[-1]
        eq(req_header(rec, "Authorization"), ["Bearer t"], "Authorization")
        eq(req_header(rec, "Cookie"), ["session=S; a=1"], "Cookie")


def test_wide_set_cookie_is_dropped():
    from urllib.parse import quote
    own = host_of("alpha")
    cookies = ["a=1; Path=/", "b=2; Domain=%s" % own, "c=3; Domain=.preview.example.com",
               "d=4; Domain=example.com", "e=5; domain=PREVIEW.example.com; Secure",
               "f=6; Domain=mvp-beta.preview.example.com", "g=7; Domain=.%s" % own]
    path = "/set-cookie?" + "&".join("c=" + quote(c) for c in cookies)
    with Setup(names=("alpha",)) as s:
        r = s.fg.get(path, host=own)
        eq(r.status, 200, "status")
        eq(r.all("Set-Cookie"), [cookies[0], cookies[1], cookies[6]], "Set-Cookie kept")
        r = s.fg.get(path, host="localhost")
        eq(r.all("Set-Cookie"), cookies, "Set-Cookie on an ordinary route")


def test_preview_drops_upstream_frame_options():
    with Setup(names=("alpha",)) as s:
        r = s.fg.get("/headers", host=host_of("alpha"))
        eq(r.status, 200, "status")
        assert_preview_headers(r)
        r = s.fg.get("/", host=host_of("nosuch"))
        assert_preview_headers(r)  # flowgate's own errors on a preview host too


# ------------------------------------------------------------------ TTL

def established_to(ip, port):
    """Open TCP connections whose remote end is IP:PORT (from /proc/net/tcp)."""
    want = "%s:%04X" % ("".join("%02X" % int(x) for x in reversed(ip.split("."))), port)
    n = 0
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            parts = line.split()
            if parts[2] == want and parts[3] == "01":
                n += 1
    return n


def wait_until(cond, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.05)
    fail("timed out waiting for %s" % what)


def test_dns_ttl_moves_and_removals_are_picked_up():
    name = upstream_name("gamma")
    with Setup(zone={name: [ADDRS["alpha"], 2]}, hosts={}) as s:
        r = s.fg.get("/", host=host_of("gamma"))
        eq(json.loads(r.body)["upstream"], "alpha", "first answer")
        wait_until(lambda: established_to(ADDRS["alpha"], s.port) == 1, 3,
                   "a pooled connection to the first address")
        s.dns.set({name: [ADDRS["beta"], 2]})
        r = s.fg.get("/", host=host_of("gamma"))
        eq(json.loads(r.body)["upstream"], "alpha", "within the TTL")
        time.sleep(2.3)
        r = s.fg.get("/", host=host_of("gamma"))
        eq(json.loads(r.body)["upstream"], "beta", "after the TTL")
        wait_until(lambda: established_to(ADDRS["alpha"], s.port) == 0, 3,
                   "idle connections to the old address to close")
        s.dns.set({})
        time.sleep(2.3)
        r = s.fg.get("/", host=host_of("gamma"))
        assert_preview_error(r, 404, "not_found")
        wait_until(lambda: established_to(ADDRS["beta"], s.port) == 0, 3,
                   "idle connections of a removed MVP to close")


def test_hosts_file_changes_are_picked_up():
    with Setup() as s:
        eq(json.loads(s.fg.get("/", host=host_of("beta")).body)["upstream"], "beta", "first")
        write_hosts(s.hosts_path, {"alpha": ADDRS["alpha"], "beta": ADDRS["alpha"]})
        time.sleep(3.3)  # the hosts TTL (2 s) and the file check (1 s)
        eq(json.loads(s.fg.get("/", host=host_of("beta")).body)["upstream"], "alpha", "moved")
        wait_until(lambda: established_to(ADDRS["beta"], s.port) == 0, 3,
                   "idle connections to the old address to close")
        write_hosts(s.hosts_path, {"alpha": ADDRS["alpha"]})
        time.sleep(3.3)
        assert_preview_error(s.fg.get("/", host=host_of("beta")), 404, "not_found")
        eq(s.fg.get("/", host=host_of("alpha")).status, 200, "alpha still there")


# ------------------------------------------------------------------ WebSocket

def ws_open(fg, host, path="/ws", extra=()):
    c = fg.tls()
    key = base64.b64encode(os.urandom(16)).decode()
    c.send(build_request("GET", path, [("Upgrade", "websocket"), ("Connection", "Upgrade"),
                                       ("Sec-WebSocket-Key", key),
                                       ("Sec-WebSocket-Version", "13")] + list(extra),
                         host=host))
    r = c.read_head()
    return c, r, key


def ws_accept(key):
    return base64.b64encode(hashlib.sha1(
        (key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest()).decode()


def ws_recv(c, timeout=20.0):
    """(opcode byte, payload) of the next frame from the server (unmasked)."""
    deadline = time.monotonic() + timeout

    def need(n):
        while len(c.buf) < n:
            if not c._need(deadline, "a WebSocket frame"):
                fail("connection closed inside a WebSocket frame")

    need(2)
    b0, b1 = c.buf[0], c.buf[1]
    check(not b1 & 0x80, "server frame is masked")
    n, off = b1 & 0x7F, 2
    if n == 126:
        need(4)
        n, off = int.from_bytes(c.buf[2:4], "big"), 4
    elif n == 127:
        need(10)
        n, off = int.from_bytes(c.buf[2:10], "big"), 10
    need(off + n)
    data = bytes(c.buf[off:off + n])
    del c.buf[:off + n]
    return b0, data


def ws_send(c, fin_op, payload):
    c.send(ws_frame(fin_op, payload, os.urandom(4)))


def ws_echo_session(fg, host):
    c, r, key = ws_open(fg, host)
    try:
        eq(r.status, 101, "status of the upgrade")
        eq(r.header("Sec-WebSocket-Accept"), ws_accept(key), "Sec-WebSocket-Accept")
        eq((r.header("Upgrade") or "").lower(), "websocket", "Upgrade")
        check("upgrade" in (r.header("Connection") or "").lower(), "Connection: upgrade")
        ws_send(c, 0x81, b"hello")
        eq(ws_recv(c), (0x81, b"hello"), "text echo")
        ws_send(c, 0x82, bytes(range(256)))
        eq(ws_recv(c), (0x82, bytes(range(256))), "binary echo")
        big = os.urandom(1 << 20)
        ws_send(c, 0x82, big)
        op, data = ws_recv(c, timeout=60)
        eq((op, len(data), hashlib.sha256(data).hexdigest()),
           (0x82, len(big), hashlib.sha256(big).hexdigest()), "1 MiB echo")
        ws_send(c, 0x88, b"\x03\xe8")
        eq(ws_recv(c), (0x88, b"\x03\xe8"), "close echoed")
        check(c.wait_closed(5), "tunnel closed after the close handshake")
        return r
    finally:
        c.close()


def test_websocket_through_a_preview():
    with Setup(names=("alpha",)) as s:
        r = ws_echo_session(s.fg, host_of("alpha"))
        assert_preview_headers(r)
        rec = s.mvps["alpha"].requests()[-1]
        eq(req_header(rec, "Upgrade"), ["websocket"], "Upgrade at the MVP")
        check(any("upgrade" in v.lower() for v in req_header(rec, "Connection")),
              "Connection: upgrade at the MVP")
        eq(len(req_header(rec, "Sec-WebSocket-Key")), 1, "Sec-WebSocket-Key passed")
        eq(s.fg.get("/", host=host_of("alpha")).status, 200, "HTTP after a tunnel")
        log = [e for e in s.fg.access_log() if e.get("status") == 101]
        eq(len(log), 1, "one access-log line for the tunnel")


def test_websocket_on_an_ordinary_route():
    with Setup(names=("alpha",)) as s:
        ws_echo_session(s.fg, "localhost")


def test_websocket_refused_on_previews_when_disabled():
    with Setup(names=("alpha",), websocket=False) as s:
        c, r, _ = ws_open(s.fg, host_of("alpha"))
        try:
            # Upgrade is dropped as any hop-by-hop header: the MVP sees a plain
            # GET and refuses it; a 101 would not be believed anyway.
            check(r.status != 101, "tunnelled although previews.websocket = false")
        finally:
            c.close()
        rec = s.mvps["alpha"].requests()[-1]
        eq(req_header(rec, "Upgrade"), [], "Upgrade at the MVP")
        c, r, _ = ws_open(s.fg, "localhost")
        c.close()
        eq(r.status, 101, "ordinary routes still tunnel")


def test_websocket_either_side_closing_closes_the_other():
    with Setup(names=("alpha",)) as s:
        # The client goes away in the middle: the MVP's side is closed too.
        c, r, _ = ws_open(s.fg, host_of("alpha"))
        eq(r.status, 101, "upgrade")
        ws_send(c, 0x81, b"x")
        eq(ws_recv(c), (0x81, b"x"), "echo")
        wait_until(lambda: established_to(ADDRS["alpha"], s.port) == 1, 3, "the tunnel upstream")
        c.close()
        wait_until(lambda: established_to(ADDRS["alpha"], s.port) == 0, 5,
                   "the MVP side of a tunnel whose client left")
        # The MVP goes away: the client sees the connection close.
        c, r, _ = ws_open(s.fg, host_of("alpha"))
        eq(r.status, 101, "upgrade")
        s.mvps["alpha"].stop()
        check(c.wait_closed(5), "client side closed after the MVP stopped")
        c.close()


def test_idle_tunnel_times_out_but_a_busy_one_does_not():
    # The idle bound is keepalive_timeout_ms, not the upstream's read timeout.
    cfg = {"limits": {"keepalive_timeout_ms": 1000},
           "upstreams": {"api": {"read_timeout_ms": 30000}}}
    with Upstream() as up, Flowgate(cfg, upstream=up) as fg:
        busy, r, _ = ws_open(fg, "localhost")
        idle, r2, _ = ws_open(fg, "localhost")
        try:
            eq((r.status, r2.status), (101, 101), "upgrades")
            for _ in range(6):  # 1.8 s of traffic, more than the idle bound
                ws_send(busy, 0x81, b"ping")
                eq(ws_recv(busy), (0x81, b"ping"), "echo on the busy tunnel")
                time.sleep(0.3)
            check(idle.wait_closed(3), "idle tunnel still open past keepalive_timeout_ms")
            ws_send(busy, 0x81, b"still")
            eq(ws_recv(busy), (0x81, b"still"), "busy tunnel still open")
        finally:
            busy.close()
            idle.close()
        log = [e for e in fg.access_log() if e.get("status") == 101]
        check(any(e.get("error") == "tunnel idle timeout" for e in log),
              "access log names the idle timeout: %r" % log)


def test_cors_preflight_to_a_preview_is_answered_and_never_forwarded():
    cors = {"cors": {"origins": ["https://app.example.com"], "credentials": True}}
    with Setup(extra=cors) as s:
        hdrs = [("Origin", "https://app.example.com"), ("Access-Control-Request-Method", "PUT")]
        r = s.fg.request("OPTIONS", "/x", headers=hdrs, host=host_of("alpha"))
        eq(r.status, 204, "preflight to a preview")
        eq(r.header("Access-Control-Allow-Origin"), "https://app.example.com", "allowed origin")
        r = s.fg.request("OPTIONS", "/x", host=host_of("alpha"),
                         headers=[("Origin", "https://evil.test"),
                                  ("Access-Control-Request-Method", "PUT")])
        assert_preview_error(r, 403, "cors_rejected")
        r = s.fg.request("POST", "/x", body=b"{}", host=host_of("alpha"),
                         headers=[("Origin", "https://evil.test")])
        assert_preview_error(r, 403, "cors_rejected")
        eq(s.mvps["alpha"].requests(), [], "requests that reached the preview")
