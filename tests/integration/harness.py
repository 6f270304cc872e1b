"""Integration test harness: processes, configuration, clients, assertions.

Every test runs in its own process (see run.py) with a fresh temporary
directory (tmpdir()). Processes started here are registered by PID in the
test's PID file, so the runner can stop them even when the test itself hangs
or is interrupted; the context managers stop them by PID on the way out.

Only loopback addresses are used.
"""

import base64
import hashlib
import hmac
import json
import os
import re
import select
import signal
import socket
import ssl
import string
import subprocess
import sys
import time
import warnings

warnings.filterwarnings("ignore", category=DeprecationWarning)

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
CERTS = os.path.join(ROOT, "certs", "dev")
CA = os.path.join(CERTS, "ca.crt")
UPSTREAM_PY = os.path.join(ROOT, "tests", "upstream.py")
JWT_SECRET = "integration-test-secret-0123456789-abcdefghijklmnop"
LOOPBACK = "127.0.0.1"

SANITIZER_MARKERS = ("ERROR: AddressSanitizer", "runtime error:", "LeakSanitizer")

# The values of the base template's headers group (the defaults).
SECURITY_HEADERS = {
    "X-Frame-Options": "SAMEORIGIN",
    "X-Content-Type-Options": "nosniff",
    "X-XSS-Protection": "1; mode=block",
    "Referrer-Policy": "strict-origin-when-cross-origin",
    "Content-Security-Policy": "frame-src 'self' https://*.preview.example.com",
}
HSTS = "max-age=31536000; includeSubDomains"
REQUEST_ID_RE = re.compile(r"^[0-9a-f]{32}$")


class TestFailure(AssertionError):
    """A test's expectation did not hold."""


class Skip(Exception):
    """The environment cannot run this test (never used for flowgate's faults)."""


class ConnectionClosed(TestFailure):
    """The peer closed before a complete response head arrived."""


def fail(msg):
    raise TestFailure(msg)


def check(cond, msg):
    if not cond:
        raise TestFailure(msg)


def eq(actual, expected, what):
    if actual != expected:
        raise TestFailure("%s: expected %r, got %r" % (what, expected, actual))


# ---------------------------------------------------------------- test context

def tmpdir():
    d = os.environ.get("FG_TEST_TMP")
    if not d:
        raise RuntimeError("FG_TEST_TMP is not set: run tests through run.py")
    return d


def binary():
    return os.environ.get("FG_BINARY", os.path.join(ROOT, "build", "asan", "flowgate"))


def register_pid(pid, marker):
    """Note PID in the test's PID file so the runner can stop it if we cannot."""
    path = os.environ.get("FG_TEST_PIDFILE")
    if path:
        with open(path, "a") as f:
            f.write("%d %s\n" % (pid, marker))


_given_ports = set()


def b64u(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def access_token(sub="alice", tier=None, secret=JWT_SECRET, kid=None):
    """An HS256 access token for SUB, valid for ten minutes."""
    now = int(time.time())
    head = {"alg": "HS256", "typ": "JWT"}
    if kid is not None:
        head["kid"] = kid
    claims = {"sub": sub, "type": "access", "iat": now - 5, "exp": now + 600}
    if tier is not None:
        claims["tier"] = tier
    signed = b64u(json.dumps(head).encode()) + "." + b64u(json.dumps(claims).encode())
    mac = hmac.new(secret.encode(), signed.encode(), hashlib.sha256).digest()
    return signed + "." + b64u(mac)


def client_hello():
    """The bytes of a TLS ClientHello for localhost (the first flight only)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(inc, out, server_hostname="localhost")
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return out.read()


def free_port():
    """A TCP port on 127.0.0.1 that was free a moment ago (never the same twice)."""
    for _ in range(50):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            s.bind((LOOPBACK, 0))
            port = s.getsockname()[1]
        finally:
            s.close()
        if port not in _given_ports:
            _given_ports.add(port)
            return port
    raise RuntimeError("no free port")


def wait_port(port, timeout, proc=None, what="process"):
    """Wait until 127.0.0.1:PORT accepts a TCP connection."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            fail("%s exited with status %s before listening on %d" % (what, proc.returncode, port))
        try:
            socket.create_connection((LOOPBACK, port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.02)
    fail("%s did not listen on port %d within %.0f s" % (what, port, timeout))


def stop_process(proc, term_timeout=5.0):
    """SIGTERM, bounded wait, then SIGKILL. Returns (returncode, killed)."""
    if proc.poll() is not None:
        return proc.returncode, False
    try:
        proc.send_signal(signal.SIGTERM)
        return proc.wait(timeout=term_timeout), False
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait(timeout=10), True


def tail(path, lines=40):
    try:
        with open(path, "r", errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except OSError:
        return ""


# ---------------------------------------------------------------- upstream

class Upstream:
    """tests/upstream.py on a free port, recording every request it receives
    (and serving the files of PAGES under their names, when given)."""

    count = 0

    def __init__(self, name="api", record=True, pages=None):
        self.name = name
        self.record = record
        self.pages = pages
        self.port = None
        self.proc = None
        self.record_file = None

    @property
    def addr(self):
        return "%s:%d" % (LOOPBACK, self.port)

    def __enter__(self):
        Upstream.count += 1
        self.port = free_port()
        base = os.path.join(tmpdir(), "upstream-%s-%d" % (self.name, Upstream.count))
        cmd = [sys.executable, UPSTREAM_PY, "--listen", self.addr, "--name", self.name]
        if self.record:
            self.record_file = base + ".jsonl"
            open(self.record_file, "w").close()
            cmd += ["--record", self.record_file]
        if self.pages:
            cmd += ["--pages", self.pages]
        self.log = base + ".log"
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL)
        register_pid(self.proc.pid, "upstream.py")
        try:
            wait_port(self.port, 10, self.proc, "upstream %s" % self.name)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self):
        if self.proc is not None:
            stop_process(self.proc)

    def __exit__(self, *exc):
        self.stop()
        return False

    def requests(self):
        """Every request recorded so far, as dicts (see tests/upstream.py)."""
        if not self.record_file:
            raise RuntimeError("upstream started without record=True")
        out = []
        with open(self.record_file, encoding="utf-8") as f:
            for line in f:
                if line.endswith("\n"):
                    out.append(json.loads(line))
        return out

    def targets(self):
        return [r["target"] for r in self.requests()]


def req_header(rec, name):
    """All values of header NAME in a recorded request."""
    return [v for n, v in rec["headers"] if n.lower() == name.lower()]


# ---------------------------------------------------------------- config

def lc_string(s):
    out = ['"']
    for ch in s:
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ord(ch) < 0x20:
            out.append("\\x%02x" % ord(ch))
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def lc_value(v, indent):
    """Render a Python value in libconfig syntax: dict = group, list of scalars =
    array [ ], list with a group or a tuple = list ( ), tuple = list ( )."""
    pad = "  " * indent
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, str):
        return lc_string(v)
    if isinstance(v, dict):
        inner = "".join("%s  %s = %s;\n" % (pad, k, lc_value(x, indent + 1))
                        for k, x in v.items() if x is not None)
        return "{\n" + inner + pad + "}"
    if isinstance(v, tuple) or (isinstance(v, list) and any(
            isinstance(x, (dict, list, tuple)) for x in v)):
        if not v:
            return "( )"
        items = (",\n" + pad + "  ").join(lc_value(x, indent + 1) for x in v)
        return "(\n" + pad + "  " + items + "\n" + pad + ")"
    if isinstance(v, list):
        return "[ " + ", ".join(lc_value(x, indent) for x in v) + " ]"
    raise TypeError("cannot render %r" % (v,))


def render_config(cfg):
    return "".join("%s = %s;\n" % (k, lc_value(v, 0)) for k, v in cfg.items() if v is not None)


def merge(base, overrides):
    """Deep-merge OVERRIDES into a copy of BASE; a None value deletes the key."""
    out = dict(base)
    for k, v in overrides.items():
        if v is None:
            out.pop(k, None)
        elif isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        else:
            out[k] = v
    return out


def base_config(https_port, http_port, admin_port, upstream_addr, tmp):
    """A minimal valid configuration for one test."""
    return {
        "workers": 1,
        "shutdown_timeout_ms": 2000,
        "listen": {
            "https": ["%s:%d" % (LOOPBACK, https_port)],
            "http": ["%s:%d" % (LOOPBACK, http_port)],
            "admin": "%s:%d" % (LOOPBACK, admin_port),
        },
        "tls": {
            "certificates": (
                {"cert": os.path.join(CERTS, "server.crt"), "key": os.path.join(CERTS, "server.key")},
                {"cert": os.path.join(CERTS, "other.crt"), "key": os.path.join(CERTS, "other.key")},
            ),
            "min_version": "TLSv1.2",
            "session_tickets": True,
        },
        "redirect": {"https_port": https_port, "status": 308},
        "headers": {
            "hsts": HSTS,
            "frame_options": SECURITY_HEADERS["X-Frame-Options"],
            "content_type_options": SECURITY_HEADERS["X-Content-Type-Options"],
            "xss_protection": SECURITY_HEADERS["X-XSS-Protection"],
            "referrer_policy": SECURITY_HEADERS["Referrer-Policy"],
            "csp": SECURITY_HEADERS["Content-Security-Policy"],
            "server": "",
        },
        "limits": {
            "max_header_bytes": 16384,
            "max_headers": 100,
            "max_body_bytes": 10485760,
            "header_timeout_ms": 10000,
            "body_timeout_ms": 30000,
            "underscores_in_headers": False,
            "keepalive_timeout_ms": 60000,
            "send_timeout_ms": 60000,
            "max_connections": 10000,
        },
        "jwt": {
            "algorithm": "HS256",
            "keys": ({"kid": "default", "secret_env": "FLOWGATE_JWT_SECRET"},),
        },
        "upstreams": {
            "api": {"servers": [upstream_addr], "connect_timeout_ms": 2000,
                    "read_timeout_ms": 10000, "keepalive": 8},
        },
        "routes": (
            {"host": "", "path": "/", "upstream": "api", "auth": "none"},
        ),
        # Tests rewrite files and signal themselves; the watcher is tested on its own.
        "reload": {"watch": False},
        "log": {
            "access": os.path.join(tmp, "access.log"),
            "error": os.path.join(tmp, "error.log"),
            "level": "debug",
        },
    }


# ---------------------------------------------------------------- flowgate

class Flowgate:
    """The binary under test, on free loopback ports, with a config in tmpdir().

    CONFIG is either a dict of overrides deep-merged into base_config(), or the
    whole file as text, in which $https_port $http_port $admin_port $upstream
    $tmp $certs are substituted. UPSTREAM (an Upstream or "host:port") is the
    "api" upstream; without one it points at a closed port.
    """

    count = 0

    def __init__(self, config=None, upstream=None, env=None, wait=True):
        self.config = config if config is not None else {}
        self.upstream = upstream
        self.extra_env = env or {}
        self.wait = wait
        self.proc = None
        self.https_port = free_port()
        self.http_port = free_port()
        self.admin_port = free_port()

    # -- lifecycle
    def __enter__(self):
        Flowgate.count += 1
        tmp = tmpdir()
        n = Flowgate.count
        self.conf_path = os.path.join(tmp, "flowgate-%d.conf" % n)
        self.stderr_path = os.path.join(tmp, "flowgate-%d.stderr" % n)
        self.stdout_path = os.path.join(tmp, "flowgate-%d.stdout" % n)
        self.access_path = os.path.join(tmp, "access.log")
        self.error_path = os.path.join(tmp, "error.log")
        if isinstance(self.upstream, Upstream):
            up = self.upstream.addr
        elif self.upstream:
            up = self.upstream
        else:
            up = "%s:%d" % (LOOPBACK, free_port())
        if isinstance(self.config, str):
            text = string.Template(self.config).safe_substitute(
                https_port=self.https_port, http_port=self.http_port,
                admin_port=self.admin_port, upstream=up, tmp=tmp, certs=CERTS)
        else:
            cfg = merge(base_config(self.https_port, self.http_port, self.admin_port, up, tmp),
                        self.config)
            text = render_config(cfg)
        with open(self.conf_path, "w") as f:
            f.write(text)
        self.start()
        return self

    def start(self):
        exe = binary()
        if not os.path.isfile(exe) or not os.access(exe, os.X_OK):
            fail("flowgate binary not found or not executable: %s (build it with `make %s`)"
                 % (exe, os.path.relpath(exe, ROOT)))
        env = dict(os.environ)
        env.update({
            "FLOWGATE_JWT_SECRET": JWT_SECRET,
            "ASAN_OPTIONS": "detect_leaks=1:abort_on_error=0",
            "UBSAN_OPTIONS": "halt_on_error=1:print_stacktrace=1",
        })
        env.update(self.extra_env)
        with open(self.stdout_path, "ab") as out, open(self.stderr_path, "ab") as err:
            self.proc = subprocess.Popen([exe, "-c", self.conf_path], stdout=out, stderr=err,
                                         stdin=subprocess.DEVNULL, cwd=ROOT, env=env)
        register_pid(self.proc.pid, os.path.basename(exe))
        if self.wait:
            try:
                self.wait_ready()
            except BaseException:
                self.stop(check=False)
                raise

    def wait_ready(self, timeout=20.0):
        deadline = time.monotonic() + timeout
        last = "no answer"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                fail("flowgate exited with status %s during startup:\n%s"
                     % (self.proc.returncode, tail(self.stderr_path)))
            try:
                r = plain_request(self.admin_port, "GET", "/healthz", host="127.0.0.1",
                                  timeout=1.0)
                if r.status == 200:
                    wait_port(self.https_port, max(1.0, deadline - time.monotonic()), self.proc,
                              "flowgate")
                    return
                last = "status %d" % r.status
            except (OSError, TestFailure) as e:
                last = str(e)
            time.sleep(0.05)
        fail("flowgate admin /healthz did not answer 200 within %.0f s (%s)\n%s"
             % (timeout, last, tail(self.stderr_path)))

    def problems(self):
        """Sanitizer reports found in stderr so far."""
        text = self.stderr()
        found = [m for m in SANITIZER_MARKERS if m in text]
        if not found:
            return None
        i = min(text.find(m) for m in found)
        return "sanitizer report in flowgate stderr:\n" + text[max(0, i - 200):i + 3000]

    def stop(self, check=True):
        """SIGTERM, bounded wait, SIGKILL; returns a list of problems seen."""
        if self.proc is None:
            return []
        issues = []
        if self.proc.poll() is not None:
            issues.append("flowgate died during the test (status %s)" % self.proc.returncode)
        rc, killed = stop_process(self.proc, term_timeout=15.0)
        if killed:
            issues.append("flowgate did not exit within 15 s of SIGTERM (killed)")
        elif rc != 0 and not issues:
            issues.append("flowgate exited with status %s after SIGTERM" % rc)
        p = self.problems()
        if p:
            issues.insert(0, p)
        elif issues:
            issues.append("stderr tail:\n" + tail(self.stderr_path))
        self.proc = None
        return issues

    def __exit__(self, etype, exc, tb):
        issues = self.stop()
        if issues:
            msg = "\n".join(issues)
            if exc is not None and not isinstance(exc, (KeyboardInterrupt, SystemExit)):
                msg += "\n(the test itself failed with: %s)" % (exc,)
            raise TestFailure(msg)
        return False

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def stderr(self):
        try:
            with open(self.stderr_path, "r", errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def access_log(self, settle=0.05):
        """Every access-log line so far. A request is logged once its
        response's last byte went to the socket, a moment after the client
        may have read it: read until two reads SETTLE seconds apart agree."""
        out = self._read_access_log()
        deadline = time.monotonic() + 2.0
        while settle and time.monotonic() < deadline:
            time.sleep(settle)
            again = self._read_access_log()
            if len(again) == len(out):
                break
            out = again
        return out

    def _read_access_log(self):
        out = []
        try:
            with open(self.access_path, errors="replace") as f:
                for line in f:
                    if line.strip() and line.endswith("\n"):
                        out.append(json.loads(line))
        except OSError:
            pass
        return out

    def metrics(self):
        """/metrics as {"name{labels}": value}."""
        r = plain_request(self.admin_port, "GET", "/metrics", host="127.0.0.1", timeout=5.0)
        eq(r.status, 200, "/metrics status")
        out = {}
        for line in r.body.decode().splitlines():
            if line and not line.startswith("#"):
                k, v = line.rsplit(" ", 1)
                out[k] = float(v)
        return out

    # -- clients
    def tls(self, server_hostname="localhost", **kw):
        return Conn.tls(self.https_port, server_hostname=server_hostname, **kw)

    def plain(self):
        return Conn.plain(self.http_port)

    def request(self, method="GET", path="/", headers=(), body=None, host="localhost",
                timeout=20.0):
        """One request on a new TLS connection, which is then closed."""
        c = self.tls(timeout=timeout)
        try:
            return c.request(method, path, headers=headers, body=body, host=host,
                             timeout=timeout)
        finally:
            c.close()

    def get(self, path="/", **kw):
        return self.request("GET", path, **kw)

    def post(self, path, body, **kw):
        return self.request("POST", path, body=body, **kw)


def run_flowgate(args, timeout=30, env=None):
    """Run the binary with ARGS (e.g. -t -c FILE); returns CompletedProcess (text)."""
    exe = binary()
    if not os.path.isfile(exe):
        fail("flowgate binary not found: %s" % exe)
    e = dict(os.environ)
    e.update({"FLOWGATE_JWT_SECRET": JWT_SECRET,
              "ASAN_OPTIONS": "detect_leaks=1:abort_on_error=0",
              "UBSAN_OPTIONS": "halt_on_error=1:print_stacktrace=1"})
    e.update(env or {})
    p = subprocess.Popen([exe] + list(args), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         stdin=subprocess.DEVNULL, cwd=ROOT, env=e, text=True, errors="replace")
    register_pid(p.pid, os.path.basename(exe))
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        p.communicate()
        fail("flowgate %s did not finish within %d s" % (" ".join(args), timeout))
    for m in SANITIZER_MARKERS:
        if m in err:
            fail("sanitizer report from flowgate %s:\n%s" % (" ".join(args), err[-3000:]))
    return subprocess.CompletedProcess(p.args, p.returncode, out, err)


# ---------------------------------------------------------------- HTTP client

class Response:
    def __init__(self, version, status, reason, headers, raw_head):
        self.version = version
        self.status = status
        self.reason = reason
        self.headers = headers  # [(name, value)] in received order
        self.raw_head = raw_head
        self.body = b""
        self.complete = True  # False: closed before the framing said the body ended
        self.trailers = []  # raw trailer field lines of a chunked body, in received order

    def header(self, name):
        for n, v in self.headers:
            if n.lower() == name.lower():
                return v
        return None

    def all(self, name):
        return [v for n, v in self.headers if n.lower() == name.lower()]

    def has(self, name):
        return any(n.lower() == name.lower() for n, _ in self.headers)

    def json(self):
        try:
            return json.loads(self.body)
        except ValueError:
            fail("response body is not JSON: %r" % self.body[:300])

    def __repr__(self):
        return "<%d %s %r>" % (self.status, self.headers, self.body[:200])


def client_context(minimum=None, maximum=None, alpn=None, verify=True, check_hostname=True,
                   ciphers=None):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if verify:
        ctx.load_verify_locations(CA)
        ctx.check_hostname = check_hostname
    else:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if minimum is not None:
        ctx.minimum_version = minimum
    if maximum is not None:
        ctx.maximum_version = maximum
    if ciphers:
        ctx.set_ciphers(ciphers)
    if alpn:
        ctx.set_alpn_protocols(alpn)
    return ctx


class Conn:
    """A client connection (TLS or plain) with a read buffer and an HTTP/1.1
    response reader that follows Content-Length, chunked and close framing."""

    def __init__(self, sock, timeout=20.0):
        self.sock = sock
        self.buf = bytearray()
        self.eof = False
        self.reset = False
        self.timeout = timeout

    @classmethod
    def plain(cls, port, timeout=20.0):
        s = socket.create_connection((LOOPBACK, port), timeout=timeout)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return cls(s, timeout)

    @classmethod
    def tls(cls, port, server_hostname="localhost", ctx=None, timeout=20.0, session=None):
        ctx = ctx or client_context()
        raw = socket.create_connection((LOOPBACK, port), timeout=timeout)
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            s = ctx.wrap_socket(raw, server_hostname=server_hostname, session=session)
        except BaseException:
            raw.close()
            raise
        return cls(s, timeout)

    def send(self, data):
        if isinstance(data, str):
            data = data.encode("latin-1")
        self.sock.sendall(data)

    def _recv(self, timeout):
        """Read more into buf; returns False at EOF (FIN, close_notify or reset)."""
        if self.eof:
            return False
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(65536)
        except (socket.timeout, TimeoutError):
            raise
        except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
            data = b""
        except (ConnectionResetError, BrokenPipeError):
            self.reset = True
            data = b""
        except ssl.SSLError as e:
            if "record layer failure" in str(e) or "UNEXPECTED_EOF" in str(e):
                data = b""
            else:
                raise
        if not data:
            self.eof = True
            return False
        self.buf += data
        return True

    def _need(self, deadline, what):
        left = deadline - time.monotonic()
        if left <= 0:
            fail("timed out waiting for %s" % what)
        try:
            return self._recv(left)
        except (socket.timeout, TimeoutError):
            fail("timed out waiting for %s" % what)

    def read_head(self, timeout=None):
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            i = self.buf.find(b"\r\n\r\n")
            if i >= 0:
                raw = bytes(self.buf[:i + 4])
                del self.buf[:i + 4]
                return parse_response_head(raw)
            if not self._need(deadline, "a response head"):
                fail_closed = ConnectionClosed(
                    "connection closed before a complete response head (got %r)%s"
                    % (bytes(self.buf[:200]), " (reset)" if self.reset else ""))
                raise fail_closed

    def read_response(self, method="GET", timeout=None, interim=False):
        """The next response. 1xx heads are skipped unless INTERIM (then returned)."""
        timeout = timeout or self.timeout
        deadline = time.monotonic() + timeout
        while True:
            r = self.read_head(max(0.01, deadline - time.monotonic()))
            if 100 <= r.status < 200 and r.status != 101:
                if interim:
                    return r
                continue
            break
        self._read_body(r, method, deadline)
        return r

    def _read_body(self, r, method, deadline):
        if method == "HEAD" or r.status in (204, 304) or 100 <= r.status < 200:
            return
        te = r.header("Transfer-Encoding")
        cl = r.header("Content-Length")
        if te is not None and "chunked" in te.lower():
            body = bytearray()
            while True:
                while b"\r\n" not in self.buf:
                    if not self._need(deadline, "a chunk size"):
                        r.body, r.complete = bytes(body), False
                        return
                i = self.buf.find(b"\r\n")
                size = int(bytes(self.buf[:i]).split(b";")[0].strip() or b"x", 16)
                del self.buf[:i + 2]
                if size == 0:
                    while True:
                        while b"\r\n" not in self.buf:
                            if not self._need(deadline, "the trailer"):
                                r.body, r.complete = bytes(body), False
                                return
                        i = self.buf.find(b"\r\n")
                        line = bytes(self.buf[:i])
                        del self.buf[:i + 2]
                        if not line:
                            r.body = bytes(body)
                            return
                        r.trailers.append(line)
                while len(self.buf) < size + 2:
                    if not self._need(deadline, "chunk data"):
                        body += self.buf[:size]
                        self.buf.clear()
                        r.body, r.complete = bytes(body), False
                        return
                body += self.buf[:size]
                del self.buf[:size + 2]
        elif cl is not None:
            n = int(cl)
            while len(self.buf) < n:
                if not self._need(deadline, "%d body bytes" % n):
                    r.body, r.complete = bytes(self.buf), False
                    self.buf.clear()
                    return
            r.body = bytes(self.buf[:n])
            del self.buf[:n]
        else:
            while self._need(deadline, "the end of a close-delimited body"):
                pass
            r.body = bytes(self.buf)
            self.buf.clear()

    def request(self, method="GET", path="/", headers=(), body=None, host="localhost",
                timeout=None):
        self.send(build_request(method, path, headers, body, host))
        return self.read_response(method, timeout)

    def wait_closed(self, timeout=5.0):
        """True when the peer closes (or resets) within TIMEOUT; data read is discarded."""
        deadline = time.monotonic() + timeout
        try:
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                if not self._recv(left):
                    return True
                self.buf.clear()
        except (socket.timeout, TimeoutError):
            return False
        except OSError:
            return True

    def read_until_close(self, timeout=10.0):
        deadline = time.monotonic() + timeout
        while self._need(deadline, "the connection to close"):
            pass
        data = bytes(self.buf)
        self.buf.clear()
        return data

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


def parse_response_head(raw):
    text = raw.decode("latin-1")
    lines = text[:-4].split("\r\n")
    m = re.match(r"^(HTTP/\d\.\d) (\d{3})(?: (.*))?$", lines[0])
    if not m:
        fail("bad response status line: %r" % lines[0])
    headers = []
    for line in lines[1:]:
        if ":" not in line:
            fail("bad response header line: %r" % line)
        n, v = line.split(":", 1)
        headers.append((n, v.strip(" \t")))
    return Response(m.group(1), int(m.group(2)), m.group(3) or "", headers, raw)


def build_request(method="GET", path="/", headers=(), body=None, host="localhost"):
    """A well-formed HTTP/1.1 request; HOST None sends no Host header."""
    if isinstance(body, str):
        body = body.encode()
    lines = ["%s %s HTTP/1.1" % (method, path)]
    names = {n.lower() for n, _ in headers}
    if host is not None and "host" not in names:
        lines.append("Host: %s" % host)
    lines += ["%s: %s" % (n, v) for n, v in headers]
    if body is not None and "content-length" not in names and "transfer-encoding" not in names:
        lines.append("Content-Length: %d" % len(body))
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (body or b"")


# Trailer fields that carry what a request head may not pass on: identity and
# forwarding headers flowgate sets, routing, framing, and a preview's credentials.
FORBIDDEN_TRAILERS = (
    b"X-User-Id: admin\r\nX-User-Tier: premium\r\nX-Forwarded-For: 203.0.113.9\r\n"
    b"X-Real-IP: 203.0.113.9\r\nX-Request-Id: client-chosen\r\nHost: evil.example\r\n"
    b"Content-Length: 5\r\nAuthorization: Bearer trailer-token\r\n"
    b"Cookie: theme=dark; session=S; access_token=AT\r\n")


def send_chunked(conn, path, data, trailers=b"", host="localhost", split=False, piece=4096):
    """POST DATA to PATH in chunks of PIECE, then the last chunk, TRAILERS (raw
    field lines) and the blank line. SPLIT sends that tail a byte at a time,
    so flowgate reads the trailer section in many pieces."""
    conn.send(b"POST %s HTTP/1.1\r\nHost: %s\r\nTransfer-Encoding: chunked\r\n\r\n"
              % (path.encode(), host.encode()))
    for i in range(0, len(data), piece):
        conn.send(b"%x\r\n" % len(data[i:i + piece]) + data[i:i + piece] + b"\r\n")
    tail = b"0\r\n" + trailers + b"\r\n"
    if not split:
        conn.send(tail)
        return
    for i in range(len(tail)):
        conn.send(tail[i:i + 1])
        time.sleep(0.002)


def plain_request(port, method="GET", path="/", headers=(), host="localhost", timeout=10.0):
    with Conn.plain(port, timeout) as c:
        return c.request(method, path, headers=headers, host=host, timeout=timeout)


def raw_exchange(conn, data, timeout=10.0):
    """Send DATA, read one response (or None when closed without one), then
    report whether the connection closed. Returns (response, closed)."""
    conn.send(data)
    try:
        r = conn.read_response(timeout=timeout)
    except ConnectionClosed:
        return None, True
    return r, conn.wait_closed(timeout)


# ---------------------------------------------------------------- assertions

def assert_security_headers(r, https=True):
    for name, value in SECURITY_HEADERS.items():
        eq(r.header(name), value, "%s on a %d response" % (name, r.status))
        eq(len(r.all(name)), 1, "number of %s headers" % name)
    if https:
        eq(r.header("Strict-Transport-Security"), HSTS, "HSTS on an https response")
    else:
        check(not r.has("Strict-Transport-Security"), "HSTS sent on a plain-http response")
    check(not r.has("Server"), "Server header sent although headers.server is \"\": %r"
          % r.header("Server"))
    rid = r.all("X-Request-Id")
    eq(len(rid), 1, "number of X-Request-Id headers on a %d response" % r.status)


def assert_new_request_id(r):
    rid = r.header("X-Request-Id")
    check(rid is not None and REQUEST_ID_RE.match(rid),
          "X-Request-Id is not 32 lowercase hex characters: %r" % rid)
    return rid


def assert_error(r, status, code, https=True):
    """flowgate's own JSON error: status, code, Content-Type, request_id, headers."""
    check(r is not None, "expected a %d %s response, the connection closed without one"
          % (status, code))
    eq(r.status, status, "status (body %r)" % r.body[:200])
    ctype = (r.header("Content-Type") or "").split(";")[0].strip().lower()
    eq(ctype, "application/json", "Content-Type of a %d error" % status)
    j = r.json()
    eq(j.get("error"), code, "error code")
    check(isinstance(j.get("message"), str) and j["message"], "error message missing: %r" % j)
    eq(j.get("request_id"), r.header("X-Request-Id"), "request_id in the body vs X-Request-Id")
    assert_security_headers(r, https)
    return j


def assert_closes(conn, r=None, timeout=5.0):
    if r is not None:
        tokens = [t.strip().lower() for t in (r.header("Connection") or "").split(",")]
        check("close" in tokens, "a %d response without Connection: close" % r.status)
    check(conn.wait_closed(timeout), "connection still open %.0f s after the response" % timeout)


def sha256(data):
    return hashlib.sha256(data).hexdigest()


def pattern(n):
    block = bytes(i % 251 for i in range(251 * 64))
    reps, rest = divmod(n, len(block))
    return block * reps + block[:rest]


# ---------------------------------------------------------------- external tools

def curl(args, timeout=30):
    cmd = ["curl", "-sS", "--cacert", CA, "--max-time", str(timeout)] + list(args)
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         stdin=subprocess.DEVNULL)
    register_pid(p.pid, "curl")
    try:
        out, err = p.communicate(timeout=timeout + 5)
    except subprocess.TimeoutExpired:
        p.kill()
        p.communicate()
        fail("curl %s did not finish" % " ".join(args))
    return subprocess.CompletedProcess(cmd, p.returncode, out, err)


def s_client(port, args=(), stdin=b"", timeout=15):
    """openssl s_client against 127.0.0.1:PORT; returns CompletedProcess (bytes)."""
    cmd = ["openssl", "s_client", "-connect", "%s:%d" % (LOOPBACK, port), "-CAfile", CA] + list(args)
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         stdin=subprocess.PIPE)
    register_pid(p.pid, "openssl")
    try:
        out, err = p.communicate(stdin, timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        p.communicate()
        fail("openssl s_client %s did not finish within %d s" % (" ".join(args), timeout))
    return subprocess.CompletedProcess(cmd, p.returncode, out, err)


def readable(sock, timeout):
    r, _, _ = select.select([sock], [], [], timeout)
    return bool(r)


def sentinel(fg, up):
    """A valid request on a new connection, answered 200: flowgate still serves,
    and everything forwarded before it has been recorded by UP. Returns its path."""
    path = "/sentinel-%d" % int(time.monotonic() * 1e6)
    r = fg.get(path)
    eq(r.status, 200, "status of a valid request after the hostile one")
    check(path in up.targets(), "the valid request did not reach the upstream")
    return path


# ---------------------------------------------------------------- redis

class RedisServer:
    """redis-server on a free loopback port, nothing persisted, stopped by PID.

    pause()/resume() stop and continue it (SIGSTOP/SIGCONT: connections are
    still accepted by the kernel, nothing is answered); kill() ends it and
    start() brings it back on the same port, empty.
    """

    EXE = "/usr/bin/redis-server"

    def __init__(self, password=None):
        self.password = password
        self.port = None
        self.proc = None
        self.paused = False

    @property
    def addr(self):
        return "%s:%d" % (LOOPBACK, self.port)

    def __enter__(self):
        if not os.path.isfile(self.EXE):
            raise Skip("redis-server is not installed")
        self.port = free_port()
        self.start()
        return self

    def start(self):
        cmd = [self.EXE, "--port", str(self.port), "--bind", LOOPBACK, "--save", "",
               "--appendonly", "no", "--dir", tmpdir(), "--protected-mode", "no"]
        if self.password:
            cmd += ["--requirepass", self.password]
        log = open(os.path.join(tmpdir(), "redis-%d.log" % self.port), "ab")
        with log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL)
        register_pid(self.proc.pid, "redis-server")
        self.paused = False
        wait_port(self.port, 10, self.proc, "redis-server")

    def pause(self):
        self.proc.send_signal(signal.SIGSTOP)
        self.paused = True

    def resume(self):
        self.proc.send_signal(signal.SIGCONT)
        self.paused = False

    def kill(self):
        if self.proc is not None and self.proc.poll() is None:
            if self.paused:
                self.resume()
            self.proc.kill()
            self.proc.wait(timeout=10)

    def command(self, *args, timeout=5.0):
        """One command over RESP; returns the decoded reply (errors raise TestFailure)."""
        with socket.create_connection((LOOPBACK, self.port), timeout=timeout) as s:
            f = s.makefile("rb")
            if self.password:
                s.sendall(_resp(("AUTH", self.password)))
                _resp_read(f)
            s.sendall(_resp(args))
            return _resp_read(f)

    def __exit__(self, *exc):
        if self.proc is not None and self.proc.poll() is None:
            if self.paused:
                self.resume()
            stop_process(self.proc)
        return False


def _resp(args):
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        a = a if isinstance(a, bytes) else str(a).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(a), a))
    return b"".join(out)


def _resp_read(f):
    line = f.readline()
    if not line:
        fail("redis closed the connection")
    kind, rest = line[:1], line[1:-2]
    if kind == b"+":
        return rest.decode()
    if kind == b"-":
        fail("redis error: %s" % rest.decode())
    if kind == b":":
        return int(rest)
    if kind == b"$":
        n = int(rest)
        if n < 0:
            return None
        data = f.read(n + 2)[:-2]
        return data.decode("latin-1")
    if kind == b"*":
        n = int(rest)
        return None if n < 0 else [_resp_read(f) for _ in range(n)]
    fail("bad redis reply %r" % line)
