"""CORS at the edge and per-route methods."""

import base64
import os
import re

from harness import (Flowgate, Upstream, assert_error, assert_security_headers, base_config,
                     build_request, check, eq, free_port, merge, render_config, run_flowgate,
                     tmpdir)

TIMEOUT = 60

APP = "https://app.example.com"
DEV = "http://localhost:3000"
CORS_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"]

LOOKALIKES = [
    "https://app.example.com.evil.test",
    "https://evil-app.example.com",
    "https://app.example.co",
    "http://app.example.com",
    "https://app.example.com:443",
    "https://app.example.com:8443",
    "https://app.example.com/",
    "https://user@app.example.com",
    "http://localhost:3001",
    "null",
    "",
]

ROUTES = (
    {"host": "", "path": "/api/", "upstream": "api", "auth": "required"},
    {"host": "", "path": "/open", "upstream": "api", "auth": "none"},
    {"host": "", "path": "/ws", "upstream": "api", "auth": "none"},
    {"host": "", "path": "/cors-headers", "upstream": "api", "auth": "none"},
    {"host": "", "path": "/ro", "upstream": "api", "auth": "none", "methods": ["GET", "HEAD"]},
    {"host": "", "path": "/rw", "upstream": "api", "auth": "none",
     "methods": ["GET", "POST", "OPTIONS", "TRACE"]},
)


def config(**cors):
    c = {
        "origins": [APP, DEV],
        "credentials": True,
        "methods": CORS_METHODS,
        "headers": ["Authorization", "Content-Type", "X-Request-Id"],
        "expose_headers": ["X-RateLimit-Limit", "X-Request-Id"],
        "max_age": 600,
    }
    c.update(cors)
    return {"cors": c, "routes": ROUTES}


def listed(value):
    return [x.strip() for x in (value or "").split(",") if x.strip()]


def assert_vary_origin(r):
    eq(len(r.all("Vary")), 1, "number of Vary headers on a %d response" % r.status)
    check("origin" in [x.lower() for x in listed(r.header("Vary"))],
          "Vary does not list Origin on a %d response: %r" % (r.status, r.header("Vary")))


def assert_allowed(r, origin, credentials=True, expose=True):
    eq(r.all("Access-Control-Allow-Origin"), [origin], "Access-Control-Allow-Origin")
    eq(r.all("Access-Control-Allow-Credentials"), ["true"] if credentials else [],
       "Access-Control-Allow-Credentials")
    if expose:
        eq(r.all("Access-Control-Expose-Headers"), ["X-RateLimit-Limit, X-Request-Id"],
           "Access-Control-Expose-Headers")
    assert_vary_origin(r)


def assert_no_grant(r):
    for name in ("Access-Control-Allow-Origin", "Access-Control-Allow-Credentials",
                 "Access-Control-Expose-Headers", "Access-Control-Allow-Methods",
                 "Access-Control-Allow-Headers", "Access-Control-Max-Age"):
        check(not r.has(name), "%s on a %d response: %r" % (name, r.status, r.header(name)))
    assert_vary_origin(r)


def preflight(fg, path, origin=APP, method="PUT", req_headers=None, extra=()):
    hdrs = [("Origin", origin), ("Access-Control-Request-Method", method)]
    if req_headers is not None:
        hdrs.append(("Access-Control-Request-Headers", req_headers))
    return fg.request("OPTIONS", path, headers=hdrs + list(extra))


# ---------------------------------------------------------------- actual requests

def test_allowed_origin_gets_the_grant_and_vary():
    with Upstream() as up, Flowgate(config(), upstream=up) as fg:
        for origin in (APP, DEV, "HTTPS://App.Example.COM"):
            r = fg.get("/open", headers=[("Origin", origin)])
            eq(r.status, 200, "status for %s" % origin)
            assert_allowed(r, origin)
        r = fg.post("/open", b"x", headers=[("Origin", APP)])
        eq(r.status, 200, "POST from an allowed origin")
        assert_allowed(r, APP)
        eq([x["method"] for x in up.requests()], ["GET"] * 3 + ["POST"], "forwarded")


def test_disallowed_or_absent_origin_gets_no_grant_but_vary():
    with Upstream() as up, Flowgate(config(), upstream=up) as fg:
        for origin in LOOKALIKES:
            r = fg.get("/open", headers=[("Origin", origin)])
            eq(r.status, 200, "GET from %r is still served" % origin)
            assert_no_grant(r)
        r = fg.get("/open")
        eq(r.status, 200, "no Origin")
        assert_no_grant(r)
        r = fg.get("/open", headers=[("Origin", APP), ("Origin", "https://evil.test")])
        eq(r.status, 200, "two Origin headers on a GET")
        assert_no_grant(r)
        eq(len(up.requests()), len(LOOKALIKES) + 2, "GETs forwarded")


def test_upstream_cors_headers_replaced_and_vary_appended():
    with Upstream() as up, Flowgate(config(), upstream=up) as fg:
        r = fg.get("/cors-headers", headers=[("Origin", APP)])
        eq(r.status, 200, "status")
        assert_allowed(r, APP)
        eq(r.all("Vary"), ["Accept-Encoding, Origin"], "Vary merged with the upstream's")
        check(not r.has("Access-Control-Allow-Methods"), "upstream's Allow-Methods passed")
        eq(r.header("X-Secret"), "s", "an ordinary upstream header")
        for origin in ("https://evil.test", None):
            r = fg.get("/cors-headers", headers=[("Origin", origin)] if origin else [])
            eq(r.status, 200, "status")
            assert_no_grant(r)
            eq(r.all("Vary"), ["Accept-Encoding, Origin"], "Vary for origin %r" % origin)
        assert_security_headers(r)


def test_state_changing_cross_site_request_refused_and_not_forwarded():
    with Upstream() as up, Flowgate(config(), upstream=up) as fg:
        for method in ("POST", "PUT", "PATCH", "DELETE"):
            for origin in ("https://evil.test", "null", "https://app.example.com.evil.test",
                           "http://app.example.com"):
                r = fg.request(method, "/open", body=b"{}", headers=[("Origin", origin)])
                assert_error(r, 403, "cors_rejected")
                assert_no_grant(r)
        r = fg.post("/open", b"{}", headers=[("Origin", APP), ("Origin", "https://evil.test")])
        assert_error(r, 403, "cors_rejected")
        eq(up.requests(), [], "refused cross-site requests at the upstream")
        # Not cross-site: no Origin at all, or the request's own origin.
        eq(fg.post("/open", b"{}").status, 200, "POST without Origin")
        host = "localhost:%d" % fg.https_port
        r = fg.post("/open", b"{}", host=host, headers=[("Origin", "https://" + host)])
        eq(r.status, 200, "same-origin POST")
        check(not r.has("Access-Control-Allow-Origin"), "grant for a same-origin request")
        eq(len(up.requests()), 2, "requests forwarded")


def websocket_handshake(fg, origin=None, host="localhost"):
    """The answer to a WebSocket opening handshake on /ws (then closed)."""
    hdrs = [("Upgrade", "websocket"), ("Connection", "Upgrade"),
            ("Sec-WebSocket-Key", base64.b64encode(os.urandom(16)).decode()),
            ("Sec-WebSocket-Version", "13")]
    if origin is not None:
        hdrs.append(("Origin", origin))
    c = fg.tls()
    try:
        c.send(build_request("GET", "/ws", hdrs, host=host))
        return c.read_response()
    finally:
        c.close()


def test_websocket_from_a_refused_origin_is_refused_and_not_forwarded():
    # A WebSocket has no CORS and carries the site's cookies from any
    # same-site page (a preview): the Origin is the only guard.
    with Upstream() as up, Flowgate(config(), upstream=up) as fg:
        for origin in ("https://evil.test", "https://mvp-x.preview.example.com",
                       "https://app.example.com.evil.test", "null"):
            r = websocket_handshake(fg, origin)
            assert_error(r, 403, "cors_rejected")
        eq(up.requests(), [], "refused handshakes at the upstream")
        log = [e for e in fg.access_log() if e.get("status") == 403]
        eq([e.get("error") for e in log], ["cors_websocket_origin"] * 4, "logged reasons")
        # An allowed origin, the request's own origin, and no Origin at all
        # (not a browser) are tunnelled.
        host = "localhost:%d" % fg.https_port
        eq(websocket_handshake(fg, APP).status, 101, "allowed origin")
        eq(websocket_handshake(fg, "https://" + host, host=host).status, 101, "same origin")
        eq(websocket_handshake(fg).status, 101, "no Origin")
        eq(len(up.requests()), 3, "handshakes forwarded")


def test_safe_methods_from_refused_origin_are_forwarded_without_grant():
    with Upstream() as up, Flowgate(config(), upstream=up) as fg:
        for method in ("GET", "HEAD", "OPTIONS"):
            r = fg.request(method, "/open", headers=[("Origin", "https://evil.test")])
            eq(r.status, 200, "%s from a refused origin" % method)
            assert_no_grant(r)
        eq([x["method"] for x in up.requests()], ["GET", "HEAD", "OPTIONS"], "forwarded")


# ---------------------------------------------------------------- preflight

def test_preflight_answered_with_204_and_never_forwarded():
    with Upstream() as up, Flowgate(config(), upstream=up) as fg:
        r = preflight(fg, "/open", req_headers="content-type, X-REQUEST-ID")
        eq(r.status, 204, "preflight status (body %r)" % r.body)
        assert_allowed(r, APP, expose=False)
        eq(sorted(listed(r.header("Access-Control-Allow-Methods"))), sorted(CORS_METHODS),
           "Allow-Methods of a route without a methods list")
        eq(listed(r.header("Access-Control-Allow-Headers")), ["Content-Type", "X-Request-Id"],
           "Allow-Headers")
        eq(r.header("Access-Control-Max-Age"), "600", "Max-Age")
        check(not r.has("Content-Length"), "Content-Length on a 204")
        eq(r.body, b"", "body")
        assert_security_headers(r)
        # Case variants, OWS and empty elements in the requested list.
        r = preflight(fg, "/open", method="DELETE",
                      req_headers=" Authorization ,\t,CONTENT-TYPE,, authorization")
        eq(r.status, 204, "preflight with a messy header list")
        eq(listed(r.header("Access-Control-Allow-Headers")), ["Authorization", "Content-Type"],
           "Allow-Headers")
        r = preflight(fg, "/open", method="GET")
        eq(r.status, 204, "preflight without requested headers")
        check(not r.has("Access-Control-Allow-Headers"), "Allow-Headers for none requested")
        eq(up.requests(), [], "preflights at the upstream")


def test_preflight_methods_are_the_route_methods_within_cors_methods():
    with Upstream() as up, Flowgate(config(), upstream=up) as fg:
        r = preflight(fg, "/ro", method="GET")
        eq(r.status, 204, "preflight to a GET/HEAD route (OPTIONS not listed there)")
        eq(sorted(listed(r.header("Access-Control-Allow-Methods"))), ["GET", "HEAD"],
           "Allow-Methods")
        r = preflight(fg, "/rw", method="POST")
        eq(r.status, 204, "preflight to a GET/POST/OPTIONS/TRACE route")
        eq(sorted(listed(r.header("Access-Control-Allow-Methods"))), ["GET", "POST"],
           "Allow-Methods: the route's methods within cors.methods")
        for path, method in (("/ro", "POST"), ("/ro", "DELETE"), ("/rw", "TRACE"),
                             ("/rw", "PUT"), ("/open", "TRACE"), ("/open", "put"),
                             ("/open", "BREW"), ("/open", "")):
            r = preflight(fg, path, method=method)
            assert_error(r, 403, "cors_rejected")
            eq(r.all("Access-Control-Allow-Origin"), [APP], "Allow-Origin on the 403")
            check(not r.has("Access-Control-Allow-Methods"), "Allow-Methods on a refusal")
            assert_vary_origin(r)
        eq(up.requests(), [], "preflights at the upstream")


def test_preflight_refused_for_origin_or_header():
    with Upstream() as up, Flowgate(config(), upstream=up) as fg:
        for origin in LOOKALIKES:
            r = preflight(fg, "/open", origin=origin)
            assert_error(r, 403, "cors_rejected")
            assert_no_grant(r)
        for hdrs in ("x-evil", "content-type, x-evil", "Authorization,Cookie",
                     "content-type x-request-id"):
            r = preflight(fg, "/open", req_headers=hdrs)
            assert_error(r, 403, "cors_rejected")
            check(not r.has("Access-Control-Allow-Headers"), "Allow-Headers on a refusal")
        eq(up.requests(), [], "refused preflights at the upstream")


def test_preflight_to_unrouted_path_is_404():
    with Upstream() as up, Flowgate(config(), upstream=up) as fg:
        r = preflight(fg, "/nowhere")
        assert_error(r, 404, "not_found")
        assert_allowed(r, APP, expose=False)
        check(not r.has("Access-Control-Allow-Methods"), "Allow-Methods on a 404")
        eq(up.requests(), [], "upstream requests")


def test_plain_options_goes_to_the_route():
    with Upstream() as up, Flowgate(config(), upstream=up) as fg:
        # Origin without Access-Control-Request-Method, or the reverse: not a preflight.
        r = fg.request("OPTIONS", "/open", headers=[("Origin", APP)])
        eq(r.status, 200, "plain OPTIONS with Origin")
        assert_allowed(r, APP)
        r = fg.request("OPTIONS", "/open", headers=[("Access-Control-Request-Method", "PUT")])
        eq(r.status, 200, "OPTIONS with Access-Control-Request-Method but no Origin")
        check(not r.has("Access-Control-Allow-Methods"), "answered as a preflight")
        eq(r.json()["method"], "OPTIONS", "upstream's answer")
        eq([x["method"] for x in up.requests()], ["OPTIONS", "OPTIONS"], "forwarded")
        # Subject to the route's methods like any other request.
        r = fg.request("OPTIONS", "/ro", headers=[("Origin", APP)])
        assert_error(r, 405, "method_not_allowed")
        eq(set(listed(r.header("Allow"))), {"GET", "HEAD"}, "Allow")
        assert_allowed(r, APP)
        eq(len(up.requests()), 2, "the 405 was not forwarded")


def test_preflight_answered_before_authentication():
    with Upstream() as up, Flowgate(config(), upstream=up) as fg:
        r = preflight(fg, "/api/items", method="DELETE", req_headers="authorization")
        eq(r.status, 204, "preflight to an auth = required route, without a token")
        assert_allowed(r, APP, expose=False)
        eq(listed(r.header("Access-Control-Allow-Headers")), ["Authorization"], "Allow-Headers")
        check(not r.has("WWW-Authenticate"), "preflight was challenged for a token")
        eq(up.requests(), [], "preflight at the upstream")
        r = fg.get("/api/items", headers=[("Origin", APP)])
        if r.status == 401:  # with the JWT stage in force
            assert_error(r, 401, "invalid_token")
            assert_allowed(r, APP)
            eq(up.requests(), [], "unauthenticated request at the upstream")
        else:
            eq(r.status, 200, "status without a JWT stage")
            assert_allowed(r, APP)


# ---------------------------------------------------------------- flowgate's own errors

def test_own_errors_carry_cors_headers():
    with Upstream() as up, Flowgate(config(), upstream=up) as fg:
        r = fg.get("/nowhere", headers=[("Origin", APP)])
        assert_error(r, 404, "not_found")
        assert_allowed(r, APP)
        r = fg.post("/ro", b"x", headers=[("Origin", DEV)])
        assert_error(r, 405, "method_not_allowed")
        eq(set(listed(r.header("Allow"))), {"GET", "HEAD"}, "Allow")
        assert_allowed(r, DEV)
        r = fg.post("/ro", b"x", headers=[("Origin", "https://evil.test")])
        eq(r.status, 403, "cross-site POST to a GET-only route")
        assert_no_grant(r)
        r = fg.get("/nowhere")
        assert_error(r, 404, "not_found")
        assert_no_grant(r)
        eq(up.requests(), [], "upstream requests")
    with Upstream() as up, Flowgate(dict(config(), limits={"max_body_bytes": 100}),
                                    upstream=up) as fg:
        r = fg.post("/open", b"x" * 101, headers=[("Origin", APP)])
        assert_error(r, 413, "body_too_large")
        assert_allowed(r, APP)
        eq(up.requests(), [], "upstream requests")
    with Flowgate(config()) as fg:  # the api upstream is a closed port
        r = fg.get("/open", headers=[("Origin", APP)])
        assert_error(r, 502, "bad_gateway")
        assert_allowed(r, APP)


# ---------------------------------------------------------------- configuration

def test_without_cors_group_nothing_changes():
    with Upstream() as up, Flowgate({"routes": ROUTES}, upstream=up) as fg:
        r = fg.get("/cors-headers", headers=[("Origin", APP)])
        eq(r.status, 200, "status")
        eq(r.all("Access-Control-Allow-Origin"), ["*"], "the upstream's own policy")
        eq(r.all("Vary"), ["Accept-Encoding"], "the upstream's Vary")
        r = fg.get("/open", headers=[("Origin", APP)])
        check(not r.has("Vary") and not r.has("Access-Control-Allow-Origin"),
              "CORS headers without a cors group: %r" % r.headers)
        r = preflight(fg, "/open")
        eq(r.status, 200, "preflight forwarded")
        r = fg.post("/open", b"{}", headers=[("Origin", "https://evil.test")])
        eq(r.status, 200, "cross-site POST forwarded")
        eq([x["method"] for x in up.requests()], ["GET", "GET", "OPTIONS", "POST"], "forwarded")


def test_any_origin_without_credentials():
    with Upstream() as up, Flowgate(config(origins=["*"], credentials=False),
                                    upstream=up) as fg:
        r = fg.get("/open", headers=[("Origin", "https://anyone.test")])
        eq(r.status, 200, "status")
        assert_allowed(r, "https://anyone.test", credentials=False)
        r = preflight(fg, "/open", origin="https://anyone.test")
        eq(r.status, 204, "preflight")
        assert_allowed(r, "https://anyone.test", credentials=False, expose=False)
        for origin in ("null", "https://a.test/", "https://u@a.test"):
            r = fg.post("/open", b"{}", headers=[("Origin", origin)])
            assert_error(r, 403, "cors_rejected")
            assert_no_grant(r)
        eq(len(up.requests()), 1, "forwarded")


def test_star_with_credentials_is_a_configuration_error():
    cfg = merge(base_config(free_port(), free_port(), free_port(), "127.0.0.1:9", tmpdir()),
                config(origins=["*"], credentials=True))
    path = os.path.join(tmpdir(), "star.conf")
    with open(path, "w") as f:
        f.write(render_config(cfg))
    p = run_flowgate(["-t", "-c", path])
    eq(p.returncode, 1, "exit status of -t with \"*\" and credentials = true")
    check(re.search(r"star\.conf:\d+: cors\.origins\[0\]: \"\*\" cannot be used with credentials",
                    p.stdout + p.stderr), "no FILE:LINE message in %r" % (p.stdout + p.stderr))
