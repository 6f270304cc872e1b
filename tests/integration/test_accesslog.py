"""The access log's fields: protocol, user agent, TLS server name, the
upstream's own status, and a tier named as the metrics' tier label.

Each test reads the lines back with Flowgate.access_log() and finds its own
request by its X-Request-Id (or, for a request with no response, its path).
"""

from harness import Conn, Flowgate, RedisServer, Upstream, check, client_context, eq
from test_ratelimit import bearer, rl_config, wait_redis

TIMEOUT = 60


def line_for(fg, rid):
    lines = [e for e in fg.access_log() if e.get("request_id") == rid]
    eq(len(lines), 1, "access-log lines for request %s" % rid)
    return lines[0]


def test_protocol_user_agent_sni_and_upstream_status():
    """A forwarded request logs HTTP/1.1, its User-Agent, the server name its
    TLS client asked for and the upstream's status; HTTP/1.0 says so; a
    request flowgate answered itself has no upstream status; a long
    User-Agent is cut, never dropped."""
    with Upstream() as up, Flowgate(upstream=up) as fg:
        r = fg.get("/status/201", headers=[("User-Agent", "probe/1.0 (flowgate test)")])
        eq(r.status, 201, "forwarded status")
        e = line_for(fg, r.header("X-Request-Id"))
        eq(e.get("protocol"), "HTTP/1.1", "protocol")
        eq(e.get("user_agent"), "probe/1.0 (flowgate test)", "user agent")
        eq(e.get("sni"), "localhost", "TLS server name")
        eq(e.get("upstream_status"), 201, "upstream status")
        eq(e.get("route"), "/", "the matched route, as the metrics' route label")
        check(fg.metrics().get('flowgate_requests_total{route="/",code="2xx"}', 0) >= 1,
              "the metrics count the same route label")

        with Conn.tls(fg.https_port) as c:
            c.send(b"GET /ten HTTP/1.0\r\nHost: localhost\r\nUser-Agent: "
                   + b"x" * 1000 + b"\r\n\r\n")
            r = c.read_response()
        e = line_for(fg, r.header("X-Request-Id"))
        eq(e.get("protocol"), "HTTP/1.0", "protocol of an HTTP/1.0 request")
        eq(e.get("user_agent"), "x" * 256, "a long User-Agent, cut")

        with Conn.tls(fg.https_port, server_hostname=None,
                      ctx=client_context(check_hostname=False)) as c:
            r = c.request("GET", "/ten")
        e = line_for(fg, r.header("X-Request-Id"))
        eq(e.get("sni"), None, "no server name asked for")

        with fg.plain() as c:
            r = c.request("GET", "/to-https")
        eq(r.status, 308, "the plain listener's redirect")
        e = line_for(fg, r.header("X-Request-Id"))
        eq(e.get("upstream_status"), None, "no upstream status on flowgate's own answer")
        eq(e.get("route"), None, "no route for the plain listener's redirect")
        eq(e.get("sni"), None, "no server name on the plain listener")
        eq(e.get("tls"), None, "no TLS version on the plain listener")


def test_tier_is_the_metrics_tier_label():
    """With rate limits on, the logged tier is the tier the limit applied,
    named as in flowgate_ratelimit_decisions_total{tier}: anonymous for no
    token, the configured tier a claim names, and authenticated for a claim
    naming no configured tier."""
    tiers = {"anonymous": {"limit": 50, "window": 60},
             "authenticated": {"limit": 50, "window": 60},
             "premium": {"limit": 50, "window": 60}}
    routes = ({"host": "", "path": "/", "upstream": "api", "auth": "optional"},)
    with RedisServer() as redis, Upstream(record=False) as up, \
            Flowgate(rl_config(redis, tiers=tiers, routes=routes), upstream=up) as fg:
        wait_redis(fg, "up")
        cases = (("/t/anon", [], "anonymous"),
                 ("/t/premium", bearer("pat", "premium"), "premium"),
                 ("/t/gold", bearer("gus", "gold"), "authenticated"),
                 ("/t/none", bearer("nat"), "authenticated"))
        for path, headers, tier in cases:
            r = fg.get(path, headers=headers)
            eq(r.status, 200, "status of %s" % path)
            e = line_for(fg, r.header("X-Request-Id"))
            eq(e.get("tier"), tier, "logged tier of %s" % path)
            m = fg.metrics()
            check(m.get('flowgate_ratelimit_decisions_total{tier="%s",outcome="allowed"}' % tier,
                        0) >= 1, "metrics count tier %s" % tier)
