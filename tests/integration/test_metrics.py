"""/metrics on the admin listener: the whole exposition read by a strict parser
of the Prometheus text format (0.0.4), and each family after the traffic that
moves it: requests by route and status class, durations, upstream errors by
upstream and kind, JWT rejections, rate-limit decisions, Redis errors, TLS,
WebSocket tunnels, preview lookups, build info; 300 routes exposed whole; and
counters that survive a reload which removes their route.
"""

import math
import re
import time

from harness import (LOOPBACK, Conn, Flowgate, Upstream, build_request, check, eq, fail,
                     free_port, parse_response_head)
from test_previews import ADDRS, Setup, host_of, upstream_name, ws_open, ws_recv, ws_send
from test_reload import hup, write_config

NAME_RE = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*$")
LABEL_RE = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"')
TYPES = ("counter", "gauge", "histogram", "summary", "untyped")
CODES = ("0", "1xx", "2xx", "3xx", "4xx", "5xx")
KINDS = ("refused", "connect timeout", "error", "closed", "bad response", "read timeout",
         "truncated", "bad framing", "dns")


# ------------------------------------------------------------------ the parser

def parse_labels(text, where):
    """{name: value} from the inside of {...}; anything else is a failure."""
    labels, pos = {}, 0
    while pos < len(text):
        m = LABEL_RE.match(text, pos)
        check(m is not None, "%s: bad label syntax at %r" % (where, text[pos:pos + 40]))
        check(m.group(1) not in labels, "%s: label %s twice" % (where, m.group(1)))
        labels[m.group(1)] = re.sub(r"\\(.)", lambda e: "\n" if e.group(1) == "n" else e.group(1),
                                    m.group(2))
        pos = m.end()
        if pos < len(text):
            check(text[pos] == ",", "%s: expected ',' at %r" % (where, text[pos:pos + 40]))
            pos += 1
    return labels


def parse_sample(line, where):
    if "{" in line:
        name, rest = line.split("{", 1)
        check("}" in rest, "%s: unclosed labels" % where)
        inner, value = rest.rsplit("}", 1)
        check(value.startswith(" "), "%s: no space before the value" % where)
        labels = parse_labels(inner, where)
        value = value[1:]
    else:
        name, _, value = line.partition(" ")
        labels = {}
    check(NAME_RE.match(name) is not None, "%s: bad metric name %r" % (where, name))
    check(value != "" and " " not in value, "%s: bad value %r" % (where, value))
    try:
        v = float(value)
    except ValueError:
        fail("%s: value %r is not a number" % (where, value))
    return name, labels, v


def family_of(name, families):
    """The family a sample named NAME belongs to (histograms' _bucket, _sum, _count)."""
    if name in families:
        return name
    for suffix in ("_bucket", "_sum", "_count"):
        base = name[:-len(suffix)]
        if name.endswith(suffix) and families.get(base, {}).get("type") == "histogram":
            return base
    return None


def check_histograms(families):
    for fam, f in families.items():
        if f["type"] != "histogram":
            continue
        series = {}
        for name, labels, v in f["samples"]:
            key = tuple(sorted((k, x) for k, x in labels.items() if k != "le"))
            s = series.setdefault(key, {"buckets": [], "sum": None, "count": None})
            if name == fam + "_bucket":
                check("le" in labels, "%s bucket without le" % fam)
                le = math.inf if labels["le"] == "+Inf" else float(labels["le"])
                s["buckets"].append((le, v))
            elif name == fam + "_sum":
                s["sum"] = v
            else:
                s["count"] = v
        for key, s in series.items():
            what = "%s%s" % (fam, dict(key))
            les = [b[0] for b in s["buckets"]]
            eq(les, sorted(les), "%s: buckets in le order" % what)
            check(les and les[-1] == math.inf, "%s: no +Inf bucket" % what)
            counts = [b[1] for b in s["buckets"]]
            eq(counts, sorted(counts), "%s: cumulative bucket counts" % what)
            check(s["sum"] is not None and s["count"] is not None, "%s: _sum or _count" % what)
            eq(counts[-1], s["count"], "%s: +Inf bucket == _count" % what)


def parse_exposition(text):
    """{family: {"type", "help", "samples": [(name, labels, value)]}}, after
    checking every rule of the text format this exposition must keep: HELP
    and TYPE once each, before the family's samples, which are contiguous;
    valid names, labels and values; no series twice; sane histograms."""
    check(text.endswith("\n"), "the exposition ends with a newline")
    families, seen, closed, current = {}, set(), set(), None
    for n, line in enumerate(text.split("\n")[:-1], 1):
        where = "line %d (%r)" % (n, line[:120])
        check(line != "", "%s: empty line" % where)
        if line.startswith("#"):
            parts = line.split(" ", 3)
            check(len(parts) >= 3 and parts[1] in ("HELP", "TYPE"), "%s: stray comment" % where)
            fam = parts[2]
            check(NAME_RE.match(fam) is not None, "%s: bad family name" % where)
            check(fam not in closed, "%s: family %s split in two" % (where, fam))
            f = families.setdefault(fam, {"type": None, "help": None, "samples": []})
            check(not f["samples"], "%s: %s after the family's samples" % (where, parts[1]))
            key = parts[1].lower()
            check(f[key] is None, "%s: second %s" % (where, parts[1]))
            if parts[1] == "TYPE":
                check(len(parts) == 4 and parts[3] in TYPES, "%s: bad type" % where)
            else:
                check(len(parts) == 4 and parts[3].strip(), "%s: empty HELP" % where)
            f[key] = parts[3] if len(parts) == 4 else ""
        else:
            name, labels, v = parse_sample(line, where)
            fam = family_of(name, families)
            check(fam is not None, "%s: sample of no declared family" % where)
            check(fam not in closed, "%s: family %s split in two" % (where, fam))
            f = families[fam]
            check(f["help"] is not None and f["type"] is not None,
                  "%s: family %s lacks HELP or TYPE" % (where, fam))
            if f["type"] == "counter":
                check(name.endswith("_total"), "%s: counter not named *_total" % where)
            series = (name, tuple(sorted(labels.items())))
            check(series not in seen, "%s: duplicate series" % where)
            seen.add(series)
            f["samples"].append((name, labels, v))
        if current is not None and current != fam:
            closed.add(current)
        current = fam
    for fam, f in families.items():
        check(f["help"] is not None and f["type"] is not None, "family %s: HELP and TYPE" % fam)
    check_histograms(families)
    return families


def scrape(fg):
    """The exposition, read to the close, its Content-Length checked against the body."""
    with Conn.plain(fg.admin_port, timeout=10.0) as c:
        c.send(build_request("GET", "/metrics", host="127.0.0.1"))
        raw = c.read_until_close(timeout=10.0)
    head, sep, body = raw.partition(b"\r\n\r\n")
    check(sep, "no complete head from /metrics")
    r = parse_response_head(head + sep)
    eq(r.status, 200, "/metrics status")
    eq(int(r.header("Content-Length")), len(body), "Content-Length against the body")
    return parse_exposition(body.decode("utf-8"))


def value(fams, fam, name=None, **labels):
    """The sample of FAM (named NAME, default FAM) whose labels include LABELS."""
    for n, ls, v in fams.get(fam, {}).get("samples", ()):
        if n == (name or fam) and all(ls.get(k) == x for k, x in labels.items()):
            return v
    fail("no sample %s%s in %s" % (name or fam, labels, sorted(fams)))


def label_sets(fams, fam, name=None):
    return [ls for n, ls, _ in fams[fam]["samples"] if n == (name or fam)]


def wait_for(fg, cond, what, timeout=10.0):
    """Scrape until COND(families) holds: the counters lag the responses by
    the finish, which comes after the last byte is out."""
    deadline = time.monotonic() + timeout
    while True:
        fams = scrape(fg)
        if cond(fams):
            return fams
        if time.monotonic() > deadline:
            fail("%s: not seen within %.0f s" % (what, timeout))
        time.sleep(0.05)


def quiet(fg):
    """The exposition once the harness's readiness probe is accounted for: it
    connected to the TLS port once and left, a failed handshake that counts
    only once flowgate has accepted the connection and seen it go."""
    return wait_for(fg, lambda f: value(f, "flowgate_connections_accepted_total") >= 1
                    and value(f, "flowgate_connections_open") == 0, "the probe's connection gone")


# ------------------------------------------------------------------ the families

def traffic_config(dead_port):
    return {
        "upstreams": {
            "dead": {"servers": ["%s:%d" % (LOOPBACK, dead_port)], "connect_timeout_ms": 2000,
                     "read_timeout_ms": 10000, "keepalive": 0},
        },
        "routes": (
            {"host": "", "path": "/status", "upstream": "api", "auth": "none"},
            {"host": "localhost", "path": "/private", "upstream": "api", "auth": "required"},
            {"host": "", "path": "/down", "upstream": "dead", "auth": "none"},
            {"host": "", "path": "/", "upstream": "api", "auth": "none"},
        ),
        # Redis on a closed port: every decision is local, every connect an error.
        "rate_limit": {
            "redis": {"address": "%s:%d" % (LOOPBACK, free_port()), "timeout_ms": 250},
            "on_redis_failure": "local",
            "tiers": {"anonymous": {"limit": 1000, "window": 60}},
        },
    }


def test_every_family_is_well_formed_and_moves_with_traffic():
    with Upstream() as up, Flowgate(traffic_config(free_port()), upstream=up) as fg:
        tls_failed = value(quiet(fg), "flowgate_tls_handshake_failures_total")
        eq(fg.get("/status/200").status, 200, "upstream 200")
        eq(fg.get("/status/404").status, 404, "upstream 404")
        eq(fg.get("/status/503").status, 503, "upstream 503")
        eq(fg.get("/down/x").status, 502, "refused upstream")
        eq(fg.get("/private/x").status, 401, "no token")
        with Conn.plain(fg.http_port) as c:
            eq(c.request("GET", "/plain").status, 308, "plain HTTP redirect")
        with fg.tls() as c:  # cut mid-body: the client sees a truncated response
            c.send(build_request("GET", "/truncate"))
            c.read_until_close()

        def settled(f):
            return (value(f, "flowgate_requests_total", route="/status", code="2xx") == 1
                    and value(f, "flowgate_requests_total", route="/status", code="4xx") == 1
                    and value(f, "flowgate_requests_total", route="/status", code="5xx") == 1
                    and value(f, "flowgate_requests_total", route="/", code="2xx") == 1
                    and value(f, "flowgate_requests_total", route="/down", code="5xx") == 1
                    and value(f, "flowgate_requests_total", route="localhost/private",
                              code="4xx") == 1
                    and value(f, "flowgate_requests_total", route="none", code="3xx") == 1
                    and value(f, "flowgate_upstream_errors_total", upstream="api",
                              kind="truncated") == 1)
        fams = wait_for(fg, settled, "requests by route and status class")

        # Every route has every status class, and only those labels.
        routes = {"/status", "localhost/private", "/down", "/", "none"}
        for ls in label_sets(fams, "flowgate_requests_total"):
            eq(sorted(ls), ["code", "route"], "flowgate_requests_total labels")
            check(ls["route"] in routes, "unexpected route label %r" % ls["route"])
            check(ls["code"] in CODES, "unexpected code label %r" % ls["code"])
        eq(len(label_sets(fams, "flowgate_requests_total")), len(routes) * len(CODES),
           "series of flowgate_requests_total")
        # The truncated response went out as a 200 and counts as one.
        eq(value(fams, "flowgate_requests_total", route="/", code="2xx"), 1, "/ 2xx")
        total = sum(v for _, _, v in fams["flowgate_requests_total"]["samples"])
        eq(value(fams, "flowgate_requests_finished_total"), total, "finished == sum by route")

        fam = "flowgate_request_duration_seconds"
        eq(fams[fam]["type"], "histogram", "duration type")
        eq(value(fams, fam, fam + "_count", route="/status"), 3, "/status durations")
        eq({ls["route"] for ls in label_sets(fams, fam, fam + "_count")}, routes,
           "duration routes")
        les = [ls["le"] for ls in label_sets(fams, fam, fam + "_bucket")
               if ls["route"] == "/status"]
        eq(les[0], "0.005", "first bucket")
        eq(les[-2:], ["10", "+Inf"], "last buckets")

        fam = "flowgate_upstream_errors_total"
        for ls in label_sets(fams, fam):
            eq(sorted(ls), ["kind", "upstream"], "upstream error labels")
            check(ls["kind"] in KINDS, "unexpected kind %r" % ls["kind"])
        eq({ls["upstream"] for ls in label_sets(fams, fam)}, {"api", "dead"}, "upstreams")
        eq(value(fams, fam, upstream="dead", kind="refused"), 1, "refused by dead")
        eq(value(fams, fam, upstream="api", kind="refused"), 0, "api never refused")

        eq(value(fams, "flowgate_jwt_rejections_total", reason="missing"), 1, "missing token")
        check(value(fams, "flowgate_ratelimit_decisions_total", tier="anonymous") is not None,
              "rate-limit decisions by tier")
        for ls in label_sets(fams, "flowgate_ratelimit_decisions_total"):
            eq(sorted(ls), ["outcome", "tier"], "rate-limit labels")
        check(sum(v for _, ls, v in fams["flowgate_ratelimit_decisions_total"]["samples"]
                  if ls["tier"] == "anonymous") >= 5, "anonymous decisions counted")
        check(value(fams, "flowgate_redis_errors_total") >= 1, "Redis connect errors")
        eq(fams["flowgate_redis_call_duration_seconds"]["type"], "histogram", "Redis latency")
        check(value(fams, "flowgate_tls_handshakes_total") >= 6, "TLS handshakes")
        eq(value(fams, "flowgate_tls_handshake_failures_total"), tls_failed, "TLS failures")
        eq(value(fams, "flowgate_websocket_tunnels_open"), 0, "tunnels")
        eq(fams["flowgate_connections_open"]["type"], "gauge", "connections_open type")
        eq(value(fams, "flowgate_preview_dns_lookups_total"), 0, "no preview lookups")
        info = label_sets(fams, "flowgate_build_info")
        eq(len(info), 1, "one build_info series")
        for k in ("version", "revision"):
            check(info[0].get(k), "build_info %s label" % k)
        eq(value(fams, "flowgate_build_info"), 1, "build_info value")
        for fam in ("flowgate_config_generation", "flowgate_config_reloads_total",
                    "flowgate_config_last_reload_success_timestamp_seconds",
                    "flowgate_tls_certificate_expiry_timestamp_seconds"):
            check(fam in fams, "%s exposed" % fam)


def test_tls_handshake_failure_is_counted():
    with Upstream() as up, Flowgate({}, upstream=up) as fg:
        before = value(quiet(fg), "flowgate_tls_handshake_failures_total")
        with Conn.plain(fg.https_port) as c:  # not TLS: the handshake fails
            c.send(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
            c.read_until_close()
        wait_for(fg, lambda f: value(f, "flowgate_tls_handshake_failures_total") == before + 1,
                 "a failed handshake")


def test_tunnel_gauge_follows_a_websocket():
    with Upstream() as up, Flowgate({}, upstream=up) as fg:
        c, r, _ = ws_open(fg, "localhost")
        try:
            eq(r.status, 101, "upgrade")
            ws_send(c, 0x81, b"ping")
            eq(ws_recv(c), (0x81, b"ping"), "echo")
            fams = scrape(fg)
            eq(value(fams, "flowgate_websocket_tunnels_open"), 1, "one tunnel open")
            ws_send(c, 0x88, b"\x03\xe8")
            eq(ws_recv(c), (0x88, b"\x03\xe8"), "close echoed")
            check(c.wait_closed(5), "tunnel closed")
        finally:
            c.close()
        fams = wait_for(fg, lambda f: value(f, "flowgate_websocket_tunnels_open") == 0,
                        "the tunnel gauge back to 0")
        eq(value(fams, "flowgate_requests_total", route="/", code="1xx"), 1, "the 101 counted")


def test_preview_lookups_failures_and_upstream_errors():
    zone = {upstream_name("broken"): "servfail"}
    with Setup(names=("alpha",), zone=zone) as s:
        fg = s.fg
        eq(fg.get("/", host=host_of("alpha")).status, 200, "preview through the hosts file")
        eq(fg.get("/", host=host_of("broken")).status, 502, "SERVFAIL")
        eq(fg.get("/", host=host_of("down")).status, 502, "no MVP at %s" % ADDRS["down"])

        def settled(f):
            return value(f, "flowgate_requests_total", route="preview", code="5xx") == 2
        fams = wait_for(fg, settled, "preview requests")
        eq(value(fams, "flowgate_requests_total", route="preview", code="2xx"), 1, "preview 2xx")
        eq(value(fams, "flowgate_preview_dns_lookups_total"), 3, "lookups")
        eq(value(fams, "flowgate_preview_dns_failures_total"), 1, "failed lookups")
        eq(value(fams, "flowgate_upstream_errors_total", upstream="preview", kind="refused"), 1,
           "a preview's refused connect")
        eq(value(fams, "flowgate_upstream_errors_total", upstream="api", kind="refused"), 0,
           "the configured upstream untouched")


def test_300_routes_are_all_exposed_and_summed_over_workers():
    n = 300
    routes = tuple({"host": "", "path": "/r%03d" % i, "upstream": "api", "auth": "none"}
                   for i in range(n)) + ({"host": "", "path": "/", "upstream": "api",
                                          "auth": "none"},)
    with Upstream(record=False) as up, Flowgate({"workers": 2, "routes": routes},
                                                upstream=up) as fg:
        sent = 40  # one connection each: SO_REUSEPORT spreads them over both workers
        for i in range(sent):
            eq(fg.get("/r%03d/x" % (i % 4)).status, 200, "request %d" % i)
        fams = wait_for(fg, lambda f: sum(v for _, _, v in f["flowgate_requests_total"]["samples"])
                        == sent, "every request counted")
        labels = {"/r%03d" % i for i in range(n)} | {"/", "none"}
        got = label_sets(fams, "flowgate_requests_total")
        eq({ls["route"] for ls in got}, labels, "every route's label")
        eq(len(got), len(labels) * len(CODES), "every route's series")
        fam = "flowgate_request_duration_seconds"
        eq({ls["route"] for ls in label_sets(fams, fam, fam + "_count")}, labels,
           "every route's histogram")
        for i in range(4):
            eq(value(fams, "flowgate_requests_total", route="/r%03d" % i, code="2xx"), sent / 4,
               "route /r%03d summed over workers" % i)
        eq(len(label_sets(fams, "flowgate_worker_config_generation")), 2, "two workers")


def test_counters_survive_a_reload_that_removes_their_route():
    cfg = {"routes": ({"host": "", "path": "/slow", "upstream": "api", "auth": "none"},
                      {"host": "", "path": "/", "upstream": "api", "auth": "none"})}
    new = {"routes": ({"host": "", "path": "/new", "upstream": "api", "auth": "none"},
                      {"host": "", "path": "/", "upstream": "api", "auth": "none"})}
    with Upstream() as up, Flowgate(cfg, upstream=up) as fg:
        for _ in range(3):
            eq(fg.get("/slow/1").status, 200, "GET /slow/1")
        # A request in flight across the reload finishes on the old snapshot.
        slow = fg.tls()
        slow.send(build_request("GET", "/slow/1500"))
        time.sleep(0.2)  # let it reach the upstream (not an assertion)
        write_config(fg, new, upstream=up)
        hup(fg)
        eq(fg.get("/new/x").status, 200, "GET /new/x")
        eq(slow.read_response().status, 200, "the slow request")
        slow.close()
        fams = wait_for(fg, lambda f: value(f, "flowgate_requests_total", route="/slow",
                                            code="2xx") == 4, "/slow's count after the reload")
        eq(value(fams, "flowgate_requests_total", route="/new", code="2xx"), 1, "/new counted")
        eq(value(fams, "flowgate_request_duration_seconds", "flowgate_request_duration_seconds_count",
                 route="/slow"), 4, "/slow's histogram kept")
