"""The test tools on their own: the recording upstream, the HTTP client, the
config renderer and the Flowgate wrapper's failure detection (with a stand-in
binary). These need no flowgate build."""

import json
import os
import socket
import stat
import sys
import textwrap

from harness import (Conn, ConnectionClosed, Flowgate, TestFailure, Upstream, base_config,
                     check, eq, fail, free_port, merge, pattern, render_config, req_header,
                     sha256, tmpdir)

TIMEOUT = 30


def test_upstream_records_requests_in_order():
    with Upstream(name="rec") as up:
        with Conn.plain(up.port) as c:
            raw = (b"GET /a?x=1 HTTP/1.1\r\nHost: h\r\nX-B: 2\r\nx-a: 1\r\n\r\n")
            c.send(raw)
            r = c.read_response()
            eq(r.status, 200, "status")
            j = r.json()
            eq(j["upstream"], "rec", "name")
            eq(j["path"], "/a?x=1", "path")
            r2 = c.request("POST", "/echo", body=b"hello")
            eq(r2.body, b"hello", "echo body")
        with Conn.plain(up.port) as c:
            eq(c.request("GET", "/third").status, 200, "status")
        recs = up.requests()
        eq([x["target"] for x in recs], ["/a?x=1", "/echo", "/third"], "recorded targets")
        eq(recs[0]["raw_head"], raw.decode("latin-1"), "raw head")
        eq(recs[0]["headers"], [["Host", "h"], ["X-B", "2"], ["x-a", "1"]], "headers in order")
        eq(recs[0]["conn"], recs[1]["conn"], "keep-alive requests share a conn serial")
        check(recs[2]["conn"] != recs[0]["conn"], "a new connection has a new serial")
        eq(recs[1]["body_len"], 5, "body_len")
        eq(recs[1]["body_sha256"], sha256(b"hello"), "body sha")
        eq(req_header(recs[0], "X-A"), ["1"], "req_header is case-insensitive")


def test_upstream_chunked_request_and_sha256():
    data = pattern(100000)
    with Upstream() as up, Conn.plain(up.port) as c:
        body = b"".join(b"%x\r\n" % len(data[i:i + 7000]) + data[i:i + 7000] + b"\r\n"
                        for i in range(0, len(data), 7000)) + b"0\r\n\r\n"
        c.send(b"POST /sha256 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + body)
        j = c.read_response().json()
        eq(j, {"len": len(data), "sha256": sha256(data)}, "sha256 answer")
        eq(up.requests()[0]["complete"], True, "complete")


def test_upstream_bytes_content_length_and_chunked():
    with Upstream() as up, Conn.plain(up.port) as c:
        r = c.request("GET", "/bytes/70000")
        eq(len(r.body), 70000, "length")
        eq(r.header("X-Body-Sha256"), sha256(pattern(70000)), "digest header")
        eq(sha256(r.body), r.header("X-Body-Sha256"), "body digest")
        r = c.request("GET", "/bytes/70000?chunked=1")
        eq(r.header("Transfer-Encoding"), "chunked", "chunked framing")
        eq(sha256(r.body), sha256(pattern(70000)), "chunked body digest")
        r = c.request("HEAD", "/bytes/10")
        eq(r.body, b"", "HEAD has no body")
        eq(c.request("GET", "/bytes/3").body, bytes([0, 1, 2]), "pattern start, after HEAD")


def test_upstream_status_and_failures():
    with Upstream() as up:
        with Conn.plain(up.port) as c:
            eq(c.request("GET", "/status/204").status, 204, "204")
            r = c.request("GET", "/status/418")
            eq((r.status, r.json()), (418, {"status": 418}), "418")
        with Conn.plain(up.port) as c:
            r = c.request("GET", "/truncate")
            eq((r.status, r.complete, r.body), (200, False, b"0123456789"), "truncated")
        with Conn.plain(up.port) as c:
            try:
                c.request("GET", "/close-before")
                fail("/close-before answered")
            except ConnectionClosed:
                pass
        with Conn.plain(up.port) as c:
            try:
                c.request("GET", "/reset")
                fail("/reset answered")
            except ConnectionClosed:
                pass
            check(c.reset, "/reset closes with RST")
        with Conn.plain(up.port) as c:
            r = c.request("GET", "/headers")
            eq(r.header("Server"), "upstream/1.0", "upstream's Server")
            eq(r.header("Connection"), "X-Foo", "Connection")
            eq(r.header("X-Frame-Options"), "DENY", "X-Frame-Options")
        with Conn.plain(up.port) as c:
            eq(c.request("GET", "/slow/100").status, 200, "slow")
            r = c.request("GET", "/trickle?ms=5")
            eq(r.body, b"trickle-" * 8, "trickle body")


def test_upstream_expect_100_continue():
    with Upstream() as up, Conn.plain(up.port) as c:
        c.send(b"POST /expect HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n"
               b"Expect: 100-continue\r\n\r\n")
        r = c.read_response(interim=True)
        eq(r.status, 100, "interim status")
        c.send(b"body")
        r = c.read_response()
        eq(r.status, 200, "final status")
        eq(up.requests()[0]["body_len"], 4, "body after 100")


def test_upstream_records_garbage_and_bad_chunks():
    with Upstream() as up:
        with Conn.plain(up.port) as c:
            c.send(b"NONSENSE\r\n\r\n")
            eq(c.read_response().status, 400, "garbage answered 400")
        with Conn.plain(up.port) as c:
            c.send(b"POST /x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n")
            check(c.wait_closed(5), "bad chunk closes")
        recs = up.requests()
        eq(len(recs), 2, "both recorded")
        eq(recs[0]["complete"], False, "garbage is incomplete")
        eq(recs[0]["raw_head"], "NONSENSE\r\n\r\n", "garbage raw head")
        eq(recs[1]["complete"], False, "bad chunk is incomplete")


def test_config_renderer():
    cfg = merge(base_config(1, 2, 3, "127.0.0.1:4", "/t"),
                {"limits": {"max_headers": 7}, "jwt": None,
                 "routes": ({"host": "", "path": "/a\"b", "upstream": "api",
                             "methods": ["GET", "HEAD"]},)})
    text = render_config(cfg)
    for snippet in ('https = [ "127.0.0.1:1" ];', 'admin = "127.0.0.1:3";',
                    "max_headers = 7;", "max_body_bytes = 10485760;",
                    'path = "/a\\"b";', 'methods = [ "GET", "HEAD" ];',
                    "underscores_in_headers = false;", "workers = 1;"):
        check(snippet in text, "rendered config lacks %r:\n%s" % (snippet, text))
    check("jwt" not in text, "a None override deletes the group")
    check(text.count("{") == text.count("}") and text.count("(") == text.count(")"),
          "unbalanced brackets")
    check("certificates = (" in text and "routes = (" in text, "lists use ( )")


def test_free_port_is_unique_and_bindable():
    ports = [free_port() for _ in range(20)]
    eq(len(set(ports)), 20, "distinct ports")
    s = socket.socket()
    s.bind(("127.0.0.1", ports[0]))
    s.close()


def _fake_binary(body):
    path = os.path.join(tmpdir(), "fake-flowgate")
    with open(path, "w") as f:
        f.write("#!%s\n" % sys.executable + textwrap.dedent(body))
    os.chmod(path, stat.S_IRWXU)
    return path


FAKE_SERVER = """
import re, socket, sys, threading, time, signal
conf = open(sys.argv[2]).read()
admin = int(re.search(r'admin = "127.0.0.1:(\\d+)"', conf).group(1))
https = int(re.search(r'https = \\[ "127.0.0.1:(\\d+)"', conf).group(1))
def serve(port, answer):
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", port)); s.listen(16)
    while True:
        c, _ = s.accept(); c.recv(4096); c.sendall(answer); c.close()
ok = b"HTTP/1.1 200 OK\\r\\nContent-Length: 2\\r\\nConnection: close\\r\\n\\r\\nok"
threading.Thread(target=serve, args=(admin, ok), daemon=True).start()
threading.Thread(target=serve, args=(https, ok), daemon=True).start()
signal.signal(signal.SIGTERM, lambda *a: (sys.stderr.write(MESSAGE), sys.stderr.flush(), sys.exit(0)))
while True: time.sleep(1)
"""


def test_flowgate_wrapper_reports_sanitizer_output():
    exe = _fake_binary("MESSAGE = '==1==ERROR: LeakSanitizer: detected memory leaks\\n'\n"
                       + FAKE_SERVER)
    os.environ["FG_BINARY"] = exe
    try:
        with Flowgate(upstream="127.0.0.1:1") as fg:
            check(fg.alive(), "stand-in is running")
            text = open(fg.conf_path).read()
            check("FLOWGATE_JWT_SECRET" in text, "config names the secret variable")
        fail("a LeakSanitizer report in stderr was not turned into a failure")
    except TestFailure as e:
        check("LeakSanitizer" in str(e), "failure names the report: %s" % e)


def test_flowgate_wrapper_clean_stop_and_missing_binary():
    exe = _fake_binary("MESSAGE = 'bye\\n'\n" + FAKE_SERVER)
    os.environ["FG_BINARY"] = exe
    with Flowgate(upstream="127.0.0.1:1") as fg:
        pass
    check(fg.proc is None, "stopped")
    os.environ["FG_BINARY"] = os.path.join(tmpdir(), "no-such-binary")
    try:
        with Flowgate():
            pass
        fail("a missing binary did not fail")
    except TestFailure as e:
        check("not found" in str(e), "clear message: %s" % e)


def test_flowgate_wrapper_reports_startup_exit():
    exe = _fake_binary("import sys\nsys.stderr.write('bad config\\n')\nsys.exit(1)\n")
    os.environ["FG_BINARY"] = exe
    try:
        with Flowgate():
            pass
        fail("an exit during startup did not fail")
    except TestFailure as e:
        check("exited with status 1 during startup" in str(e) and "bad config" in str(e),
              "clear message: %s" % e)


def test_request_record_is_json_lines():
    with Upstream() as up:
        with Conn.plain(up.port) as c:
            c.request("GET", "/one")
        with open(up.record_file) as f:
            lines = f.read().splitlines()
        eq(len(lines), 1, "one line per request")
        keys = set(json.loads(lines[0]))
        for k in ("conn", "method", "target", "version", "headers", "body_len", "body_sha256",
                  "raw_head"):
            check(k in keys, "record lacks %s" % k)
