"""JWT verification at the edge: route auth modes, RFC 8725 checks, the 401
challenge a client observes, and what the upstream receives (forward_claims).

Tokens are made here with the standard library only (hmac, hashlib, base64,
json), so nothing of flowgate's own code or libjwt decides what a valid token
looks like.
"""

import base64
import hashlib
import hmac
import json
import socket
import time

from harness import (JWT_SECRET, LOOPBACK, Flowgate, Upstream, assert_error, check, eq, readable,
                     req_header)

TIMEOUT = 120

SECRET = JWT_SECRET.encode()
NEXT_SECRET = b"next-rotation-secret-abcdefghijklmnopqrstuvwxyz-0123"
WRONG_SECRET = b"some-other-secret-that-is-long-enough-0123456789abc"
ISS = "https://auth.example.com"
AUD = "flowgate-api"
LEEWAY = 30
CHALLENGE_MISSING = 'Bearer realm="flowgate"'
CHALLENGE_INVALID = 'Bearer realm="flowgate", error="invalid_token"'
NOW = int(time.time())


def b64u(data):
    if isinstance(data, str):
        data = data.encode()
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def claims(**over):
    """Valid access-token claims, with OVER applied (a None value removes one)."""
    c = {"sub": "user-42", "tier": "premium", "type": "access", "iss": ISS, "aud": AUD,
         "iat": NOW - 5, "exp": NOW + 600}
    for k, v in over.items():
        if v is None:
            c.pop(k, None)
        else:
            c[k] = v
    return c


def sign(header, payload, key=SECRET, digest=hashlib.sha256):
    """A compact JWS; HEADER and PAYLOAD are dicts or already-encoded JSON text."""
    h = header if isinstance(header, str) else json.dumps(header)
    p = payload if isinstance(payload, str) else json.dumps(payload)
    signing_input = b64u(h) + "." + b64u(p)
    mac = hmac.new(key, signing_input.encode(), digest).digest()
    return signing_input + "." + b64u(mac)


def token(key=SECRET, header=None, **over):
    return sign(header if header is not None else {"alg": "HS256", "typ": "JWT"}, claims(**over),
                key)


def unsigned(alg):
    return b64u(json.dumps({"alg": alg, "typ": "JWT"})) + "." + b64u(json.dumps(claims())) + "."


def tampered():
    t = token().split(".")
    t[1] = b64u(json.dumps(claims(sub="admin")))
    return ".".join(t)


def foreign_signature():
    a = token().split(".")
    b = token(sub="someone-else").split(".")
    return a[0] + "." + a[1] + "." + b[2]


def jwt_config(**over):
    cfg = {
        "jwt": {
            "algorithm": "HS256",
            "keys": ({"kid": "default", "secret_env": "FLOWGATE_JWT_SECRET"},
                     {"kid": "next", "secret_env": "JWT_NEXT_SECRET"}),
            "issuer": ISS,
            "audience": AUD,
            "leeway_seconds": LEEWAY,
            "max_token_bytes": 1024,
            "cookie": "access_token",
            "forward_claims": (("X-User-Id", "sub"), ("X-User-Tier", "tier"),
                               ("X-User-Org", "org")),
        },
        "routes": (
            {"host": "", "path": "/api", "upstream": "api", "auth": "required"},
            {"host": "", "path": "/opt", "upstream": "api", "auth": "optional"},
            {"host": "", "path": "/open", "upstream": "api", "auth": "none"},
        ),
    }
    cfg["jwt"].update(over)
    return cfg


ENV = {"JWT_NEXT_SECRET": NEXT_SECRET.decode()}


def bearer(tok):
    return [("Authorization", "Bearer " + tok)]


# Each case: name, request headers, expected outcome. "ok" cases must reach
# the upstream with X-User-Id = sub; "bad" ones get the invalid_token
# challenge and never reach it.
GOOD_SUB = "user-42"
CASES = [
    ("valid", bearer(token()), "ok"),
    ("valid without typ", bearer(sign({"alg": "HS256"}, claims())), "ok"),
    ("alg none", bearer(unsigned("none")), "bad"),
    ("alg None", bearer(unsigned("None")), "bad"),
    ("alg NONE", bearer(unsigned("NONE")), "bad"),
    ("alg nOnE", bearer(unsigned("nOnE")), "bad"),
    ("alg none with a valid HS256 signature",
     bearer(sign({"alg": "none"}, claims())), "bad"),
    ("alg hs256 lowercase", bearer(sign({"alg": "hs256"}, claims())), "bad"),
    ("HS384 with the same secret",
     bearer(sign({"alg": "HS384"}, claims(), digest=hashlib.sha384)), "bad"),
    ("HS512 with the same secret",
     bearer(sign({"alg": "HS512"}, claims(), digest=hashlib.sha512)), "bad"),
    ("HS384 header, HS256 signature", bearer(sign({"alg": "HS384"}, claims())), "bad"),
    ("HS512 header, HS256 signature", bearer(sign({"alg": "HS512"}, claims())), "bad"),
    ("RS256 header, HMAC with the secret", bearer(sign({"alg": "RS256"}, claims())), "bad"),
    ("ES256 header, HMAC with the secret", bearer(sign({"alg": "ES256"}, claims())), "bad"),
    ("no alg", bearer(sign({"typ": "JWT"}, claims())), "bad"),
    ("empty signature", bearer(token().rsplit(".", 1)[0] + "."), "bad"),
    ("foreign signature", bearer(foreign_signature()), "bad"),
    ("truncated signature", bearer(token()[:-2]), "bad"),
    ("wrong key", bearer(token(key=WRONG_SECRET)), "bad"),
    ("tampered payload", bearer(tampered()), "bad"),
    ("missing exp", bearer(token(exp=None)), "bad"),
    ("exp past beyond leeway", bearer(token(exp=NOW - LEEWAY - 60)), "bad"),
    ("exp past within leeway", bearer(token(exp=NOW - 5)), "ok"),
    ("nbf future beyond leeway", bearer(token(nbf=NOW + LEEWAY + 60)), "bad"),
    ("nbf future within leeway", bearer(token(nbf=NOW + 10)), "ok"),
    ("iat future beyond leeway", bearer(token(iat=NOW + LEEWAY + 60)), "bad"),
    ("iat future within leeway", bearer(token(iat=NOW + 10)), "ok"),
    ("string exp", bearer(token(exp=str(NOW + 600))), "bad"),
    ("string nbf", bearer(token(nbf=str(NOW - 600))), "bad"),
    ("wrong iss", bearer(token(iss="https://evil.example.com")), "bad"),
    ("missing iss", bearer(token(iss=None)), "bad"),
    ("aud string mismatch", bearer(token(aud="other-api")), "bad"),
    ("aud array without ours", bearer(token(aud=["other-api", "third"])), "bad"),
    ("aud array with ours", bearer(token(aud=["other-api", AUD])), "ok"),
    ("missing aud", bearer(token(aud=None)), "bad"),
    ("refresh token as access", bearer(token(type="refresh")), "bad"),
    ("missing type", bearer(token(type=None)), "bad"),
    ("missing sub", bearer(token(sub=None)), "bad"),
    ("unknown kid", bearer(token(header={"alg": "HS256", "kid": "nope"})), "bad"),
    ("kid case differs", bearer(token(header={"alg": "HS256", "kid": "Default"})), "bad"),
    ("kid default, default key", bearer(token(header={"alg": "HS256", "kid": "default"})), "ok"),
    ("kid next, next key",
     bearer(token(key=NEXT_SECRET, header={"alg": "HS256", "kid": "next"})), "ok"),
    ("no kid, next key (tried in order)", bearer(token(key=NEXT_SECRET)), "ok"),
    ("kid default, next key",
     bearer(token(key=NEXT_SECRET, header={"alg": "HS256", "kid": "default"})), "bad"),
    ("crit header", bearer(token(header={"alg": "HS256", "crit": ["exp"]})), "bad"),
    ("x5u header", bearer(token(header={"alg": "HS256", "x5u": "http://127.0.0.1:1/x"})), "bad"),
    ("jwk header", bearer(token(header={"alg": "HS256", "jwk": {
        "kty": "oct", "k": b64u(WRONG_SECRET)}}, key=WRONG_SECRET)), "bad"),
    ("x5c header", bearer(token(header={"alg": "HS256", "x5c": ["MIIB"]})), "bad"),
    ("duplicate alg in header",
     bearer(sign('{"alg":"none","alg":"HS256"}', claims())), "bad"),
    ("header not JSON", bearer(sign("not json", claims())), "bad"),
    ("header a JSON array", bearer(sign('["HS256"]', claims())), "bad"),
    ("payload not an object", bearer(sign({"alg": "HS256"}, "[1,2]")), "bad"),
    ("three dots", bearer(token() + ".e30"), "bad"),
    ("five parts (JWE shape)", bearer(token() + ".e30.e30"), "bad"),
    ("one dot", bearer(token().rsplit(".", 1)[0]), "bad"),
    ("bad base64url character", bearer(token().replace("_", "/").replace("-", "+") + "+/"),
     "bad"),
    ("padding =", bearer(token() + "="), "bad"),
    ("oversized, validly signed", bearer(token(pad="x" * 1200)), "bad"),
    ("lowercase bearer", [("Authorization", "bearer " + token())], "ok"),
    ("uppercase BEARER", [("Authorization", "BEARER " + token())], "ok"),
    ("Bearer two spaces", [("Authorization", "Bearer  " + token())], "ok"),
    ("Bearer space tab", [("Authorization", "Bearer \t" + token())], "bad"),
    ("Bearer tab", [("Authorization", "Bearer\t" + token())], "bad"),
    ("Bearer a b", [("Authorization", "Bearer " + token() + " b")], "bad"),
    ("Basic scheme", [("Authorization", "Basic dXNlcjpwYXNzd29yZA==")], "bad"),
    ("empty Bearer", [("Authorization", "Bearer")], "bad"),
    ("empty Authorization", [("Authorization", "")], "bad"),
    ("Bearer with no space", [("Authorization", "Bearer" + token())], "bad"),
    ("two Authorization headers",
     [("Authorization", "Bearer " + token()), ("Authorization", "Bearer " + token())], "bad"),
    ("CR LF in sub", bearer(token(sub="alice\r\nX-Admin: 1")), "bad"),
    ("NUL-free control byte in tier", bearer(token(tier="pre\x01mium")), "bad"),
    ("DEL in a forwarded claim", bearer(token(org="acme\x7f")), "bad"),
    ("leading space in sub", bearer(token(sub=" admin")), "bad"),
    ("fractional number claim forwarded", bearer(token(org=1.5)), "bad"),
    ("boolean claim forwarded", bearer(token(org=True)), "bad"),
    ("object claim forwarded", bearer(token(org={"id": 1})), "bad"),
    ("sub a number", bearer(token(sub=42)), "bad"),
    ("valid cookie", [("Cookie", "access_token=" + token())], "ok"),
    ("cookie among others",
     [("Cookie", "theme=dark; access_token=" + token() + "; lang=en")], "ok"),
    ("bad cookie token", [("Cookie", "access_token=" + token(key=WRONG_SECRET))], "bad"),
    ("cookie token twice",
     [("Cookie", "access_token=" + token() + "; access_token=" + token())], "bad"),
    ("bad Authorization wins over a good cookie",
     [("Authorization", "Basic eDp5"), ("Cookie", "access_token=" + token())], "bad"),
    # The cookie is found as the preview rules find the platform's: exact
    # name (another case is another cookie), trimmed, a bare name counts.
    ("cookie in another case is another cookie",
     [("Cookie", "ACCESS_TOKEN=" + token(key=WRONG_SECRET) + "; access_token=" + token())], "ok"),
    ("cookie name before a space", [("Cookie", "access_token =" + token())], "ok"),
    ("cookie beside a bare cookie name",
     [("Cookie", "access_token; access_token=" + token())], "bad"),
]


def check_challenge(r, value, what):
    eq(r.all("WWW-Authenticate"), [value], "WWW-Authenticate for %s" % what)


def run_case(fg, up, i, name, headers, expect, prefix="/api"):
    path = "%s/case-%d" % (prefix, i)
    # A client-supplied X-User-Id must never pass, verified or not.
    hdrs = list(headers) + [("X-User-Id", "spoofed-admin"), ("X-User-Tier", "spoofed")]
    r = fg.get(path, headers=hdrs)
    if expect == "ok":
        eq(r.status, 200, "status for %r (body %r)" % (name, r.body[:200]))
        check(not r.has("WWW-Authenticate"), "200 with a challenge for %r" % name)
        recs = [x for x in up.requests() if x["target"] == path]
        eq(len(recs), 1, "upstream requests for %r" % name)
        eq(req_header(recs[0], "X-User-Id"), [GOOD_SUB], "X-User-Id upstream for %r" % name)
        eq(req_header(recs[0], "X-User-Tier"), ["premium"], "X-User-Tier upstream for %r" % name)
    else:
        assert_error(r, 401, "invalid_token")
        check_challenge(r, CHALLENGE_INVALID, name)
        check(path not in up.targets(), "a refused token (%r) reached the upstream" % name)
    return r


def metrics(fg):
    return fg.metrics()


def test_token_cases():
    check(len(CASES) >= 40, "case table too small")
    with Upstream() as up, Flowgate(jwt_config(), upstream=up, env=ENV) as fg:
        for i, (name, headers, expect) in enumerate(CASES):
            run_case(fg, up, i, name, headers, expect)
test_token_cases.timeout = 300


def test_invalid_tokens_are_also_refused_on_optional_routes():
    bad = [(i, c) for i, c in enumerate(CASES) if c[2] == "bad"]
    with Upstream() as up, Flowgate(jwt_config(), upstream=up, env=ENV) as fg:
        for i, (name, headers, expect) in bad[::3]:
            run_case(fg, up, i, name, headers, expect, prefix="/opt")
test_invalid_tokens_are_also_refused_on_optional_routes.timeout = 300


def test_route_modes():
    with Upstream() as up, Flowgate(jwt_config(), upstream=up, env=ENV) as fg:
        spoof = [("X-User-Id", "spoofed-admin"), ("X-User-Tier", "spoofed")]
        # required, no token: the challenge without an error code (RFC 6750 3.1)
        r = fg.get("/api/none", headers=spoof)
        assert_error(r, 401, "invalid_token")
        check_challenge(r, CHALLENGE_MISSING, "a missing token on a required route")
        check("/api/none" not in up.targets(), "unauthenticated request reached the upstream")
        # optional, no token: anonymous, client copies stripped
        r = fg.get("/opt/anon", headers=spoof)
        eq(r.status, 200, "optional route without a token")
        rec = [x for x in up.requests() if x["target"] == "/opt/anon"][0]
        eq(req_header(rec, "X-User-Id"), [], "X-User-Id for an anonymous request")
        eq(req_header(rec, "X-User-Tier"), [], "X-User-Tier for an anonymous request")
        # optional, valid token: verified identity
        r = fg.get("/opt/user", headers=bearer(token(sub="opt-user", tier="gold")) + spoof)
        eq(r.status, 200, "optional route with a valid token")
        rec = [x for x in up.requests() if x["target"] == "/opt/user"][0]
        eq(req_header(rec, "X-User-Id"), ["opt-user"], "X-User-Id on an optional route")
        eq(req_header(rec, "X-User-Tier"), ["gold"], "X-User-Tier on an optional route")
        # optional, invalid token: 401, never anonymous
        r = fg.get("/opt/bad", headers=bearer(token(key=WRONG_SECRET)))
        assert_error(r, 401, "invalid_token")
        check_challenge(r, CHALLENGE_INVALID, "an invalid token on an optional route")
        # none: a token is not even looked at; nothing is forwarded from it
        for name, hdrs in (("valid", bearer(token())), ("invalid", bearer(unsigned("none"))),
                           ("garbage", [("Authorization", "Basic eDp5")])):
            path = "/open/" + name
            r = fg.get(path, headers=hdrs + spoof)
            eq(r.status, 200, "auth none with a %s token" % name)
            rec = [x for x in up.requests() if x["target"] == path][0]
            eq(req_header(rec, "X-User-Id"), [], "X-User-Id on an auth none route (%s)" % name)
            eq(req_header(rec, "X-User-Tier"), [], "X-User-Tier on auth none (%s)" % name)
        log = {e.get("path"): e for e in fg.access_log()}
        eq(log["/opt/user"].get("user"), "opt-user", "access log user")
        eq(log["/opt/user"].get("tier"), "gold", "access log tier")
        eq(log["/opt/anon"].get("user"), None, "access log user when anonymous")
        eq(log["/api/none"].get("error"), "jwt_missing", "access log error for a missing token")
        eq(log["/opt/bad"].get("error"), "jwt_bad_signature", "access log error, wrong key")
        check(all(token()[:20] not in json.dumps(e) for e in fg.access_log()),
              "a token reached the access log")


def test_forwarded_number_claims_are_integers():
    with Upstream() as up, Flowgate(jwt_config(), upstream=up, env=ENV) as fg:
        for path, org, want in (("/api/int", 12345, ["12345"]), ("/api/whole", 7.0, ["7"]),
                                ("/api/absent", None, [])):
            r = fg.get(path, headers=bearer(token(org=org)))
            eq(r.status, 200, "status with org=%r" % (org,))
            rec = [x for x in up.requests() if x["target"] == path][0]
            eq(req_header(rec, "X-User-Org"), want, "X-User-Org for org=%r" % (org,))


def test_rejection_reasons_in_log_and_metrics():
    cases = [
        ("/api/r1", bearer(unsigned("none")), "bad_alg"),
        ("/api/r2", bearer(sign({"alg": "HS512"}, claims(), digest=hashlib.sha512)), "bad_alg"),
        ("/api/r3", bearer(token(exp=NOW - 1000)), "expired"),
        ("/api/r4", bearer(token(type="refresh")), "bad_type"),
        ("/api/r5", bearer(token(header={"alg": "HS256", "crit": ["b64"]})), "crit"),
        ("/api/r6", bearer(token(header={"alg": "HS256", "kid": "x"})), "unknown_kid"),
        ("/api/r7", [("Authorization", "Basic eDp5")], "bad_scheme"),
        ("/api/r8", bearer(token() + "="), "malformed"),
        ("/api/r9", bearer(token(pad="y" * 2000)), "too_long"),
        ("/api/r10", bearer(token(sub="a\nb")), "bad_subject"),
        ("/api/r11", [], "missing"),
    ]
    with Upstream() as up, Flowgate(jwt_config(), upstream=up, env=ENV) as fg:
        for path, hdrs, _ in cases:
            eq(fg.get(path, headers=hdrs).status, 401, "status for %s" % path)
        log = {e.get("path"): e.get("error") for e in fg.access_log()}
        m = metrics(fg)
        for path, _, reason in cases:
            eq(log.get(path), "jwt_" + reason, "access log error for %s" % path)
        for reason in {c[2] for c in cases}:
            want = sum(1 for c in cases if c[2] == reason)
            eq(m.get('flowgate_jwt_rejections_total{reason="%s"}' % reason), want,
               "rejections counted for %s" % reason)
        eq(m.get("flowgate_jwt_verified_total"), 0, "verified count")


def test_key_location_headers_are_never_followed():
    """jku/x5u point at a listener here: flowgate must refuse without connecting."""
    lsock = socket.socket()
    lsock.bind((LOOPBACK, 0))
    lsock.listen(8)
    url = "http://%s:%d/keys" % (LOOPBACK, lsock.getsockname()[1])
    try:
        with Upstream() as up, Flowgate(jwt_config(), upstream=up, env=ENV) as fg:
            for hdr in ({"alg": "HS256", "jku": url}, {"alg": "HS256", "x5u": url},
                        {"alg": "HS256", "jku": url, "kid": "default"}):
                r = fg.get("/api/k", headers=bearer(token(header=hdr)))
                assert_error(r, 401, "invalid_token")
                check_challenge(r, CHALLENGE_INVALID, "a token with %s" % sorted(hdr))
            check(not readable(lsock, 0.5), "flowgate connected to a jku/x5u URL")
            eq(up.targets(), [], "upstream requests")
    finally:
        lsock.close()


def test_cookie_ignored_when_not_configured():
    with Upstream() as up, Flowgate(jwt_config(cookie=""), upstream=up, env=ENV) as fg:
        r = fg.get("/api/c", headers=[("Cookie", "access_token=" + token())])
        assert_error(r, 401, "invalid_token")
        check_challenge(r, CHALLENGE_MISSING, "a cookie token when no cookie is configured")
        r = fg.get("/api/c2", headers=bearer(token()))
        eq(r.status, 200, "Authorization still works")


def test_emptied_cookie_is_no_token():
    with Upstream() as up, Flowgate(jwt_config(), upstream=up, env=ENV) as fg:
        r = fg.get("/api/e", headers=[("Cookie", "access_token=; theme=dark")])
        assert_error(r, 401, "invalid_token")
        check_challenge(r, CHALLENGE_MISSING, "an emptied cookie")
        eq(fg.get("/opt/e", headers=[("Cookie", "access_token=")]).status, 200,
           "an emptied cookie on an optional route")


def test_repeated_token_is_served_from_cache_and_expiry_rechecked():
    with Upstream() as up, Flowgate(jwt_config(leeway_seconds=0), upstream=up, env=ENV) as fg:
        exp = int(time.time()) + 3
        tok = token(exp=exp)
        for i in range(3):
            eq(fg.get("/api/c%d" % i, headers=bearer(tok)).status, 200, "status, use %d" % i)
        m = metrics(fg)
        eq(m.get("flowgate_jwt_verified_total"), 3, "verified requests")
        eq(m.get("flowgate_jwt_cache_hits_total"), 2, "cache hits")
        while time.time() < exp + 1.2:
            time.sleep(0.2)
        r = fg.get("/api/late", headers=bearer(tok))
        assert_error(r, 401, "invalid_token")
        log = {e.get("path"): e.get("error") for e in fg.access_log()}
        eq(log.get("/api/late"), "jwt_expired", "a cached token past its exp")


def test_default_forward_claims_and_require_exp_off():
    over = {"jwt": {"algorithm": "HS256",
                    "keys": ({"kid": "default", "secret_env": "FLOWGATE_JWT_SECRET"},),
                    "require_exp": False},
            "routes": ({"host": "", "path": "/", "upstream": "api", "auth": "required"},)}
    with Upstream() as up, Flowgate(over, upstream=up) as fg:
        r = fg.get("/x", headers=bearer(token(exp=None, iss=None, aud=None)))
        eq(r.status, 200, "no exp with require_exp = false, no iss/aud configured")
        rec = up.requests()[-1]
        eq(req_header(rec, "X-User-Id"), [GOOD_SUB], "X-User-Id")
        eq(req_header(rec, "X-User-Tier"), ["premium"], "X-User-Tier")
        r = fg.get("/y", headers=bearer(token(exp=NOW - 1000)))
        eq(r.status, 401, "a present exp is still checked")
