"""Hostile HTTP/2 clients: malformed streams and floods.

Malformed streams (one fresh connection each, many cases per flowgate): the
stream is refused, by RST_STREAM PROTOCOL_ERROR (or a GOAWAY, RFC 9113
section 5.4.1 lets a server treat a stream error as a connection error) or by
flowgate's own 400 (431 for a header list over max_header_list_bytes), and
the upstream receives nothing of it. After each case a valid request on the
same connection (a new one after a GOAWAY) must reach the upstream, which
also orders the upstream's record after anything flowgate forwarded. Cases
whose head is valid and whose body or trailers are not may have had their
head forwarded already: then the upstream must never see a complete request.

Floods (one flowgate each): the connection ends in GOAWAY or a close, the
peak resident set of flowgate grows by less than FLOOD_RSS_BOUND, and a
fresh connection is then served 200. Every case is a list so one run
reports every case that failed.
"""

import time

import h2raw
from h2raw import (CONTINUATION, DATA, END_STREAM, ENHANCE_YOUR_CALM, H2, HEADERS,
                   INITIAL_WINDOW_SIZE, ENABLE_PUSH, PROTOCOL_ERROR, REFUSED_STREAM, CANCEL,
                   error_name, frame, literal, ping_frame, request_headers, rst_frame,
                   settings_frame, window_update_frame)
from harness import Flowgate, Upstream, check, eq, fail, req_header

TIMEOUT = 90
FLOOD_RSS_BOUND = 64 << 20
# ASan keeps freed memory in quarantine (256 MiB by default): a flood's churn
# would look like growth. A small quarantine keeps the resident set honest.
ASAN_ENV = {"ASAN_OPTIONS": "detect_leaks=1:abort_on_error=0:quarantine_size_mb=8"}

HTTP2 = {"enabled": True, "max_concurrent_streams": 128, "initial_window_bytes": 65535,
         "max_header_list_bytes": 16384, "max_resets_per_second": 100,
         "idle_timeout_ms": 60000}


def config(**http2):
    cfg = dict(HTTP2)
    cfg.update(http2)
    return {"http2": cfg}


def req(path="/h2case", method="GET", authority="localhost", extra=()):
    return request_headers(path, method, authority, extra)


def without(headers, name):
    return [(n, v) for n, v in headers if n != name]


# ---------------------------------------------------------------- malformed streams
#
# A case: (name, headers, data chunks or None, trailers or None, expect).
# expect: "refuse" = RST_STREAM PROTOCOL_ERROR, GOAWAY or 400;
#         "400", "431" = that status; "not2xx" = any refusal or a 4xx/5xx.
# A case with data or trailers is "body": its head may reach the upstream, but
# never a complete request.

FIELD_CASES = [
    ("connection", req(extra=[("connection", "keep-alive")]), None, None, "refuse"),
    ("keep-alive", req(extra=[("keep-alive", "timeout=5")]), None, None, "refuse"),
    ("proxy-connection", req(extra=[("proxy-connection", "keep-alive")]), None, None, "refuse"),
    ("transfer-encoding", req("/h2case", "POST", extra=[("transfer-encoding", "chunked")]),
     [b"5\r\nhello\r\n0\r\n\r\n"], None, "refuse"),
    ("upgrade", req(extra=[("upgrade", "websocket")]), None, None, "refuse"),
    ("te gzip", req(extra=[("te", "gzip")]), None, None, "refuse"),
    ("CR in a value", req(extra=[("x-a", "a\rb")]), None, None, "refuse"),
    ("LF in a value", req(extra=[("x-a", "a\nb")]), None, None, "refuse"),
    ("NUL in a value", req(extra=[("x-a", "a\0b")]), None, None, "refuse"),
    ("uppercase name", req(extra=[("X-Upper", "1")]), None, None, "refuse"),
    ("space in a name", req(extra=[("x a", "1")]), None, None, "refuse"),
    ("colon in a name", req(extra=[("x:a", "1")]), None, None, "refuse"),
    ("smuggled TE in a value", req(extra=[("x-a", "x\r\nTransfer-Encoding: chunked")]),
     None, None, "refuse"),
    ("smuggled request in a value",
     req(extra=[("x-a", "x\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: localhost")]), None, None,
     "refuse"),
    ("smuggled header in a name", req(extra=[("x-a: 1\r\ntransfer-encoding", "chunked")]),
     None, None, "refuse"),
]

PSEUDO_CASES = [
    ("missing :method", without(req(), ":method"), None, None, "refuse"),
    ("missing :path", without(req(), ":path"), None, None, "refuse"),
    ("missing :scheme", without(req(), ":scheme"), None, None, "refuse"),
    ("duplicated :path", req() + [(":path", "/other")], None, None, "refuse"),
    ("duplicated :method", [(":method", "GET")] + req(method="POST"), None, None, "refuse"),
    ("pseudo-header after a regular field", [("x-a", "1")] + req(), None, None, "refuse"),
    ("unknown pseudo-header", req() + [(":foo", "bar")], None, None, "refuse"),
    (":path without a leading /", req("h2case"), None, None, "refuse"),
    ("empty :path", req(""), None, None, "refuse"),
    (":path * on GET", req("*"), None, None, "refuse"),
]

LENGTH_CASES = [
    ("content-length larger than the DATA",
     req("/h2case", "POST", extra=[("content-length", "10")]), [b"hello"], None, "refuse"),
    ("content-length smaller than the DATA",
     req("/h2case", "POST", extra=[("content-length", "5")]), [b"hello, world"], None,
     "refuse"),
    ("content-length smaller than two DATA frames",
     req("/h2case", "POST", extra=[("content-length", "5")]), [b"hel", b"lo, world"], None,
     "refuse"),
    ("non-numeric content-length",
     req("/h2case", "POST", extra=[("content-length", "5x")]), [b"hello"], None, "refuse"),
    ("negative content-length",
     req("/h2case", "POST", extra=[("content-length", "-5")]), [b"hello"], None, "refuse"),
    ("two different content-lengths",
     req("/h2case", "POST", extra=[("content-length", "5"), ("content-length", "6")]),
     [b"hello"], None, "refuse"),
    ("content-length on a bodiless GET", req(extra=[("content-length", "5")]), None, None,
     "refuse"),
]

ROUTING_CASES = [
    (":authority and host disagree", req(extra=[("host", "evil.example")]), None, None,
     "refuse"),
    ("host names another port", req(extra=[("host", "localhost:9")]), None, None, "refuse"),
    (":authority names another port", req(authority="localhost:9", extra=[("host", "localhost")]),
     None, None, "refuse"),
    ("host twice, differing", without(req(), ":authority") +
     [("host", "localhost"), ("host", "evil.example")], None, None, "refuse"),
    ("header list over max_header_list_bytes",
     req(extra=[("x-big-%02d" % i, "v" * 1000) for i in range(20)]), None, None, "431"),
    ("path traversal /../", req("/a/../../etc/passwd"), None, None, "400"),
    ("encoded slash %2f", req("/a%2f..%2f..%2fetc/passwd"), None, None, "400"),
    ("encoded NUL %00", req("/a%00b"), None, None, "400"),
]

TRAILER_CASES = [
    ("trailers with a pseudo-header", req("/h2case", "POST"), [b"hello"],
     [(":path", "/smuggled")], "refuse"),
    ("trailers with an uppercase name", req("/h2case", "POST"), [b"hello"],
     [("X-Trailer", "1")], "refuse"),
]


def check_case(c, sid, expect):
    """'' when stream SID was refused as EXPECT says, else what happened."""
    s = c.response(sid, timeout=10)
    status = s.status
    if c.goaway is not None and c.goaway[0] < sid and expect in ("refuse", "not2xx"):
        return ""
    if expect == "refuse":
        if s.reset == PROTOCOL_ERROR and status is None:
            return ""
        if status == 400 and s.ended:
            return ""
        if c.goaway is not None and c.goaway[1] == PROTOCOL_ERROR:
            return ""
    elif expect == "not2xx":
        if s.reset is not None or (status is not None and status >= 400):
            return ""
    elif status == int(expect) and s.ended:
        return ""
    return "expected %s, got %r%s" % (expect, s, " goaway=%r" % (c.goaway,) if c.goaway else "")


def sentinel_h2(fg, up, c):
    """A valid GET on C (a new connection once C went away) answered 200 and
    recorded by the upstream. Returns its path."""
    path = "/h2-sentinel-%d" % int(time.monotonic() * 1e6)
    if c.ended():
        c.close()
        c = H2(fg.https_port)
    s = c.get(path, timeout=15)
    eq(s.status, 200, "status of a valid request after the hostile one (%r)" % s)
    check(path in up.targets(), "the valid request did not reach the upstream")
    c.close()
    return path


def run_cases(fg, up, cases):
    """Send each case on its own connection; returns a list of failures."""
    failures = []
    for name, headers, data, trailers, expect in cases:
        before = len(up.requests())
        c = H2(fg.https_port)
        try:
            sid = c.request(headers, data=data, trailers=trailers)
            why = check_case(c, sid, expect)
            sentinel = sentinel_h2(fg, up, c)
        except Exception as e:  # a case that breaks the client is a failure to report
            failures.append("%s: %s: %s" % (name, type(e).__name__, e))
            c.close()
            continue
        new = [r for r in up.requests()[before:] if r["target"] != sentinel]
        body_case = data is not None or trailers is not None
        leaked = [r for r in new if not body_case or r.get("complete", True)]
        if why:
            failures.append("%s: %s" % (name, why))
        if leaked:
            failures.append("%s: the upstream received %s" % (
                name, [(r["method"], r["target"], r["headers"], r["body_len"]) for r in leaked]))
    return failures


def malformed(cases):
    with Upstream() as up, Flowgate(config(), up) as fg:
        failures = run_cases(fg, up, cases)
    if failures:
        fail("%d of %d cases not refused as they must be:\n  %s"
             % (len(failures), len(cases), "\n  ".join(failures)))


def test_http2_hostile_connection_fields_and_bad_bytes():
    malformed(FIELD_CASES)


def test_http2_hostile_pseudo_headers():
    malformed(PSEUDO_CASES)


def test_http2_hostile_options_asterisk_as_over_http1():
    """The one :path that needs no "/": OPTIONS * (RFC 9113 section 8.3.1) is
    not a malformed stream; flowgate answers it as it answers HTTP/1.1's."""
    with Upstream() as up, Flowgate(config(), up) as fg, H2(fg.https_port) as c:
        r1 = fg.request("OPTIONS", "*")
        s = c.response(c.request(req("*", "OPTIONS")), timeout=10)
        check(s.reset is None and s.ended, "OPTIONS * reset or unanswered: %r" % s)
        eq(s.status, r1.status, "status of OPTIONS * over HTTP/2 (HTTP/1.1's: %r)" % r1)


def test_http2_hostile_content_length():
    malformed(LENGTH_CASES)


def test_http2_hostile_routing_and_limits():
    malformed(ROUTING_CASES)


def test_http2_hostile_trailers():
    with Upstream() as up, Flowgate(config(), up) as fg:
        failures = run_cases(fg, up, TRAILER_CASES)
        # A second HEADERS without END_STREAM after the body: RFC 9113 section
        # 8.1 makes it malformed (trailers must end the stream).
        before = len(up.requests())
        c = H2(fg.https_port)
        sid = c.new_id()
        c.streams[sid] = h2raw.Stream(sid)
        c.send(c.headers_frame(sid, req("/h2case", "POST"), end_stream=False) +
               frame(DATA, 0, sid, b"hello") +
               c.headers_frame(sid, [("x-trailer", "1")], end_stream=False))
        why = check_case(c, sid, "refuse")
        if why:
            failures.append("trailers without END_STREAM: %s" % why)
        sentinel = sentinel_h2(fg, up, c)
        complete = [r for r in up.requests()[before:]
                    if r["target"] != sentinel and r.get("complete")]
        if complete:
            failures.append("trailers without END_STREAM: the upstream received %r" % complete)
    if failures:
        fail("%d trailer cases not refused:\n  %s" % (len(failures), "\n  ".join(failures)))


FORBIDDEN_TRAILERS = [("x-user-id", "admin"), ("x-user-tier", "premium"),
                      ("x-forwarded-for", "203.0.113.9"), ("x-real-ip", "203.0.113.9"),
                      ("x-request-id", "client-chosen"), ("host", "evil.example"),
                      ("content-length", "5"), ("authorization", "Bearer trailer-token"),
                      ("x-forwarded-host", "evil.example"), ("x-forwarded-proto", "http")]


def test_http2_hostile_trailers_with_forbidden_fields_never_reach_the_upstream():
    """Trailers carrying what a head may not pass on: the request may be
    refused, or forwarded with those fields dropped, never with them."""
    with Upstream() as up, Flowgate(config(), up) as fg, H2(fg.https_port) as c:
        sid = c.request(req("/echo", "POST", extra=[("te", "trailers")]), data=[b"hello"],
                        trailers=FORBIDDEN_TRAILERS + [("x-fine", "kept")])
        s = c.response(sid, timeout=15)
        check(s.done(), "the request with trailers got no answer: %r" % s)
        recs = [r for r in up.requests() if r["target"] == "/echo"]
        for r in recs:
            text = (r.get("trailers") or "").lower()
            head = [n.lower() for n, _ in r["headers"]]
            for n, v in FORBIDDEN_TRAILERS:
                check(v.lower() not in text,
                      "trailer %s: %s reached the upstream in the trailers: %r" % (n, v, text))
            for n in ("x-user-id", "x-user-tier", "authorization"):
                check(n not in head, "trailer %s reached the upstream in the head: %r"
                      % (n, r["headers"]))
            for n in ("x-forwarded-for", "x-real-ip"):
                eq(req_header(r, n), ["127.0.0.1"], "%s at the upstream" % n)
            check("203.0.113.9" not in r["raw_head"] and "evil.example" not in r["raw_head"],
                  "a trailer's value reached the upstream's head: %r" % r["raw_head"])


def test_http2_hostile_identity_headers_are_replaced():
    """x-user-id, x-forwarded-for and friends from an h2 client never reach
    the upstream as given: a client can never supply them."""
    given = [("x-user-id", "admin"), ("x-user-tier", "premium"),
             ("x-forwarded-for", "203.0.113.9"), ("x-real-ip", "203.0.113.9"),
             ("x-forwarded-host", "evil.example"), ("x-forwarded-proto", "http"),
             ("x-request-id", "client-chosen-id")]
    with Upstream() as up, Flowgate(config(), up) as fg, H2(fg.https_port) as c:
        s = c.get("/identity", timeout=15, extra=given)
        eq(s.status, 200, "status of a request carrying identity headers (%r)" % s)
        recs = [r for r in up.requests() if r["target"] == "/identity"]
        eq(len(recs), 1, "requests recorded for /identity")
        r = recs[0]
        eq(req_header(r, "x-user-id"), [], "x-user-id at the upstream")
        eq(req_header(r, "x-user-tier"), [], "x-user-tier at the upstream")
        eq(req_header(r, "x-forwarded-for"), ["127.0.0.1"], "x-forwarded-for at the upstream")
        eq(req_header(r, "x-real-ip"), ["127.0.0.1"], "x-real-ip at the upstream")
        eq(req_header(r, "x-forwarded-proto"), ["https"], "x-forwarded-proto at the upstream")
        eq(req_header(r, "x-forwarded-host"), ["localhost"], "x-forwarded-host at the upstream")
        check(req_header(r, "x-request-id") != ["client-chosen-id"],
              "the client's x-request-id reached the upstream (untrusted client)")
        eq(req_header(r, "host"), ["localhost"], "Host at the upstream (from :authority)")


def test_http2_hostile_connect():
    """flowgate does not advertise extended CONNECT (RFC 8441) unless it
    supports it: a :protocol request is then malformed. A classic CONNECT
    tunnel is never opened to the upstream."""
    with Upstream() as up, Flowgate(config(), up) as fg:
        failures = []
        c = H2(fg.https_port)
        ext = c.server_settings.get(h2raw.ENABLE_CONNECT_PROTOCOL, 0)
        c.close()
        cases = [("CONNECT tunnel", [(":method", "CONNECT"), (":authority", "127.0.0.1:22")],
                  None, None, "not2xx")]
        if not ext:
            cases.append(("extended CONNECT without SETTINGS_ENABLE_CONNECT_PROTOCOL",
                          [(":method", "CONNECT"), (":protocol", "websocket"),
                           (":scheme", "https"), (":authority", "localhost"),
                           (":path", "/ws"), ("sec-websocket-version", "13")],
                          None, None, "refuse"))
        failures = run_cases(fg, up, cases)
    if failures:
        fail("CONNECT cases not refused:\n  %s" % "\n  ".join(failures))


# ---------------------------------------------------------------- floods


def vm_kib(pid, field):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    fail("no %s in /proc/%d/status" % (field, pid))


def flood(name, payload, http2=None, limits=None, settings=((ENABLE_PUSH, 0),),
          prepare=None, need_goaway_code=None, end_bound=30.0):
    """Open a connection, let PREPARE(c) send what the flood needs first,
    write PAYLOAD (bytes, or a function of the connection giving bytes) in
    64 KiB pieces without reading, then read: the connection must end in
    GOAWAY (with NEED_GOAWAY_CODE when given) and close, flowgate's peak RSS
    must stay within FLOOD_RSS_BOUND of its resident set before, and a fresh
    connection must be served 200. Returns the flooding connection."""
    cfg = config(**(http2 or {}))
    if limits:
        cfg["limits"] = limits
    with Upstream() as up, Flowgate(cfg, up, env=ASAN_ENV) as fg:
        with H2(fg.https_port) as warm:
            eq(warm.get("/warm", timeout=15).status, 200, "a request before the flood")
        rss_before = vm_kib(fg.proc.pid, "VmRSS")
        c = H2(fg.https_port, settings=settings, rcvbuf=4096)
        c.answer_pings = False
        c.auto_window = False
        if prepare:
            prepare(c)
        data = payload(c) if callable(payload) else payload
        for i in range(0, len(data), 65536):
            if not c.send(data[i:i + 65536], timeout=10):
                break
        c.wait(lambda: c.goaway is not None, end_bound)
        closed = c.drain(end_bound)
        hwm = vm_kib(fg.proc.pid, "VmHWM")
        c.close()
        check(c.goaway is not None or closed,
              "%s: the connection neither got GOAWAY nor closed within %.0f s after the flood"
              " (%d frames from flowgate%s)" % (name, end_bound, c.frames_in,
                                               ", its writes stalled" if c.blocked else ""))
        check(closed, "%s: GOAWAY %s but the connection stayed open"
              % (name, error_name(c.goaway[1]) if c.goaway else None))
        if need_goaway_code is not None and c.goaway is not None:
            eq(error_name(c.goaway[1]), error_name(need_goaway_code), "%s: GOAWAY code" % name)
        growth = (hwm - rss_before) * 1024
        check(growth < FLOOD_RSS_BOUND, "%s: flowgate's peak RSS grew by %.1f MiB (bound %d MiB)"
              % (name, growth / 1048576.0, FLOOD_RSS_BOUND >> 20))
        with H2(fg.https_port) as fresh:
            s = fresh.get("/after-flood", timeout=15)
            eq(s.status, 200, "%s: a fresh connection after the flood (%r)" % (name, s))
        return c


def test_http2_flood_rapid_reset():
    def pairs(c):
        out = []
        for _ in range(5000):
            sid = c.new_id()
            out.append(c.headers_frame(sid, req("/rapid")) + rst_frame(sid, CANCEL))
        return b"".join(out)
    flood("Rapid Reset", pairs, need_goaway_code=ENHANCE_YOUR_CALM)


def test_http2_flood_continuation_without_end_headers():
    def cont(c):
        head = frame(HEADERS, END_STREAM, 1, c.block(req("/cont")))  # no END_HEADERS
        piece = frame(CONTINUATION, 0, 1, literal("x-c", "c" * 100))
        return head + piece * 30000
    flood("CONTINUATION flood", cont)


def test_http2_flood_settings():
    flood("SETTINGS flood",
          settings_frame([(INITIAL_WINDOW_SIZE, 65535), (ENABLE_PUSH, 0)]) * 50000)


def test_http2_flood_ping():
    flood("PING flood", ping_frame(b"floodpin") * 100000)


def test_http2_flood_empty_data():
    def empty(c):
        sid = c.new_id()
        head = c.headers_frame(sid, req("/echo", "POST"), end_stream=False)
        return head + frame(DATA, 0, sid, b"") * 100000
    flood("empty DATA flood", empty)


def test_http2_flood_empty_data_then_a_bad_frame():
    """The abuse bound reached inside a DATA frame, then a malformed frame in
    the same read (a SETTINGS payload that is not a multiple of 6): the
    session ends in GOAWAY ENHANCE_YOUR_CALM and the process lives on."""
    def empty(c):
        sid = c.new_id()
        head = c.headers_frame(sid, req("/echo", "POST"), end_stream=False)
        return head + frame(DATA, 0, sid, b"") * 150 + frame(h2raw.SETTINGS, 0, 0, b"\0\0")
    flood("empty DATA then a bad SETTINGS", empty, need_goaway_code=ENHANCE_YOUR_CALM)


def test_http2_flood_streams_past_max_concurrent():
    """1000 streams at once against max_concurrent_streams 128, SETTINGS
    acknowledged: those past the limit are refused (REFUSED_STREAM or
    PROTOCOL_ERROR) or the connection ends in GOAWAY (RFC 9113 sections
    5.1.2 and 5.4.1); never more than 128 reach the upstream, memory stays
    bounded and a fresh connection is served."""
    with Upstream() as up, Flowgate(config(), up, env=ASAN_ENV) as fg:
        rss_before = vm_kib(fg.proc.pid, "VmRSS")
        c = H2(fg.https_port)
        eq(c.server_settings.get(h2raw.MAX_CONCURRENT_STREAMS), 128,
           "SETTINGS_MAX_CONCURRENT_STREAMS announced")
        sids = [c.new_id() for _ in range(1000)]
        c.send(b"".join(c.headers_frame(s, req("/slow/3000")) for s in sids))
        c.wait(lambda: c.ended() or all(c.stream(s).done() for s in sids), 40)
        hwm = vm_kib(fg.proc.pid, "VmHWM")
        refused = [s for s in sids if c.stream(s).reset in (REFUSED_STREAM, PROTOCOL_ERROR)]
        ok = [s for s in sids if c.stream(s).status == 200 and c.stream(s).ended]
        if not c.ended():
            lost = [c.stream(s) for s in sids if s not in refused and s not in ok]
            check(not lost, "%d streams neither answered nor refused: %r" % (len(lost), lost[:5]))
            check(len(ok) >= 128 and refused, "answered %d, refused %d" % (len(ok), len(refused)))
        seen = [r for r in up.requests() if r["target"] == "/slow/3000"]
        check(len(seen) <= 128, "%d requests reached the upstream (limit 128 at once)"
              % len(seen))
        c.close()
        check((hwm - rss_before) * 1024 < FLOOD_RSS_BOUND, "peak RSS grew by %.1f MiB"
              % ((hwm - rss_before) / 1024.0))
        with H2(fg.https_port) as fresh:
            eq(fresh.get("/after", timeout=15).status, 200, "a fresh connection afterwards")


def test_http2_many_concurrent_streams():
    """200 requests on one connection by a client that keeps to
    max_concurrent_streams (128), as RFC 9113 section 5.1.2 asks: 128 at once,
    then a new one as each ends. Every one is answered 200 and reaches the
    upstream once: a finished stream gives its slot back."""
    with Upstream() as up, Flowgate(config(), up) as fg, H2(fg.https_port) as c:
        limit = c.server_settings.get(h2raw.MAX_CONCURRENT_STREAMS)
        eq(limit, 128, "SETTINGS_MAX_CONCURRENT_STREAMS announced")
        paths, open_ = {}, []

        def start():
            sid = c.new_id()
            paths[sid] = "/slow/300?n=%d" % len(paths)
            c.streams[sid] = h2raw.Stream(sid)
            open_.append(sid)
            return c.headers_frame(sid, req(paths[sid]))

        c.send(b"".join(start() for _ in range(limit)))
        deadline = time.monotonic() + 60
        while open_ and time.monotonic() < deadline and not c.ended():
            c.wait(lambda: any(c.streams[s].done() for s in open_), 5)
            for s in [s for s in open_ if c.streams[s].done()]:
                open_.remove(s)
                if len(paths) < 200:
                    c.send(start())
        check(not c.ended(), "the connection ended: GOAWAY %r" % (c.goaway,))
        bad = [c.streams[s] for s in paths if not (c.streams[s].status == 200 and
                                                    c.streams[s].ended)]
        check(not bad and len(paths) == 200, "%d of %d streams not answered 200: %r"
              % (len(bad), len(paths), bad[:5]))
        seen = sorted(r["target"] for r in up.requests())
        eq(seen, sorted(paths.values()), "requests at the upstream")


def test_http2_zero_window_stall_is_closed():
    """A client that announces a stream window of 0 and never opens it: flowgate
    can send no DATA. It must neither hold the connection forever nor buffer the
    upstream's 80 MiB answer: it closes after send_timeout_ms."""
    cfg = config(idle_timeout_ms=2000)
    cfg["limits"] = {"send_timeout_ms": 1000}
    with Upstream() as up, Flowgate(cfg, up, env=ASAN_ENV) as fg:
        with H2(fg.https_port) as warm:
            eq(warm.get("/warm", timeout=15).status, 200, "a request before the stall")
        rss_before = vm_kib(fg.proc.pid, "VmRSS")
        c = H2(fg.https_port, settings=((ENABLE_PUSH, 0), (INITIAL_WINDOW_SIZE, 0)))
        c.auto_window = False
        sid = c.request(req("/bytes/83886080"))
        c.wait(lambda: c.closed, 60)
        hwm = vm_kib(fg.proc.pid, "VmHWM")
        s = c.streams[sid]
        check(c.closed, "the stalled connection still open 60 s later (%r, goaway %r)"
              % (s, c.goaway))
        check(len(s.body) == 0, "DATA sent past a zero window: %d bytes" % len(s.body))
        check((hwm - rss_before) * 1024 < FLOOD_RSS_BOUND,
              "flowgate's peak RSS grew by %.1f MiB while the client took nothing"
              % ((hwm - rss_before) / 1024.0))
        c.close()
        with H2(fg.https_port) as fresh:
            eq(fresh.get("/after", timeout=15).status, 200, "a fresh connection afterwards")


def test_http2_one_stalled_stream_is_reset_while_others_move():
    """A client that keeps one stream's window shut while its other streams
    move: the connection never stalls as a whole, but that stream alone
    must not hold its upstream and its buffered response for good. It is
    reset (CANCEL) after send_timeout_ms and logged as a send timeout; the
    connection and its other streams go on."""
    cfg = config()
    cfg["limits"] = {"send_timeout_ms": 1000}
    with Upstream() as up, Flowgate(cfg, up) as fg:
        c = H2(fg.https_port, settings=((ENABLE_PUSH, 0), (INITIAL_WINDOW_SIZE, 0)))
        c.auto_window = False
        c.send(window_update_frame(0, 1 << 30))
        shut = c.request(req("/bytes/8388608"))
        deadline = time.monotonic() + 30
        moved = 0
        while c.stream(shut).reset is None and not c.ended() and time.monotonic() < deadline:
            sid = c.request(req("/moving"))
            c.send(window_update_frame(sid, 1 << 20))
            s = c.response(sid, 10)
            eq(s.status, 200, "a moving stream beside the shut one")
            moved += 1
            time.sleep(0.1)
        s = c.stream(shut)
        check(s.reset is not None, "the shut stream still open after %d other streams moved"
              % moved)
        eq(error_name(s.reset), "CANCEL", "reset of the shut stream")
        check(not c.ended(), "the connection ended (goaway %r)" % (c.goaway,))
        eq(c.get("/after", timeout=10).status, 200, "the same connection afterwards")
        c.close()
        lines = [e for e in fg.access_log() if e.get("path") == "/bytes/8388608"]
        eq([e.get("error") for e in lines], ["send timeout"], "the shut stream's log line")


def test_http2_idle_connection_gets_goaway():
    with Upstream() as up, Flowgate(config(idle_timeout_ms=1000), up) as fg:
        with H2(fg.https_port) as c:
            eq(c.get("/before-idle", timeout=15).status, 200, "a request before idling")
            c.wait(lambda: c.closed, 30)
            check(c.goaway is not None, "idle connection %s without GOAWAY"
                  % ("closed" if c.closed else "still open 30 s later"))
            eq(error_name(c.goaway[1]), "NO_ERROR", "GOAWAY code of an idle close")
            check(c.closed, "GOAWAY for idleness, but the connection stayed open")
