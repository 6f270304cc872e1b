"""TLS: versions, SNI certificate choice, ALPN, resumption (the tls group)."""

import os
import socket
import ssl
import threading

from harness import (CERTS, LOOPBACK, Conn, Flowgate, Skip, Upstream, check, client_context,
                     curl, eq, fail, s_client)

TIMEOUT = 60
V = ssl.TLSVersion


def _handshake(port, ctx, server_hostname="localhost", session=None):
    raw = socket.create_connection((LOOPBACK, port), timeout=10)
    try:
        return ctx.wrap_socket(raw, server_hostname=server_hostname, session=session)
    except BaseException:
        raw.close()
        raise


def _refused(port, ctx):
    try:
        s = _handshake(port, ctx)
    except (ssl.SSLError, OSError):
        return True
    s.close()
    return False


def _old_client_ctx():
    ctx = client_context(minimum=V.TLSv1, maximum=V.TLSv1_1, ciphers="DEFAULT:@SECLEVEL=0")
    return ctx


def _client_can_speak_tls11():
    """Control: this client completes TLS 1.1 against a local server allowing it."""
    srv = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    srv.load_cert_chain(os.path.join(CERTS, "server.crt"), os.path.join(CERTS, "server.key"))
    srv.minimum_version = V.TLSv1
    srv.set_ciphers("DEFAULT:@SECLEVEL=0")
    ls = socket.socket()
    ls.bind((LOOPBACK, 0))
    ls.listen(1)
    ls.settimeout(10)

    def serve():
        try:
            c, _ = ls.accept()
            c.settimeout(10)
            try:
                srv.wrap_socket(c, server_side=True).close()
            except (ssl.SSLError, OSError):
                c.close()
        except OSError:
            pass

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        s = _handshake(ls.getsockname()[1], _old_client_ctx())
        ok = s.version() in ("TLSv1.1", "TLSv1")
        s.close()
    except (ssl.SSLError, OSError):
        ok = False
    t.join(10)
    ls.close()
    return ok


def test_tls12_and_tls13_handshakes():
    with Upstream() as up, Flowgate(upstream=up) as fg:
        for v in (V.TLSv1_2, V.TLSv1_3):
            s = _handshake(fg.https_port, client_context(minimum=v, maximum=v))
            eq(s.version(), {V.TLSv1_2: "TLSv1.2", V.TLSv1_3: "TLSv1.3"}[v], "negotiated")
            c = Conn(s)
            eq(c.request("GET", "/v").status, 200, "request over %s" % s.version())
            c.close()


def test_tls10_and_tls11_refused():
    if not _client_can_speak_tls11():
        raise Skip("this Python/OpenSSL client cannot negotiate TLS 1.1 even with a willing server")
    with Flowgate() as fg:
        check(_refused(fg.https_port, _old_client_ctx()), "a TLS 1.0/1.1-only client was accepted")


def test_min_version_tls13_refuses_tls12_client():
    with Flowgate({"tls": {"min_version": "TLSv1.3"}}) as fg:
        check(_refused(fg.https_port, client_context(maximum=V.TLSv1_2)),
              "a TLS 1.2-only client was accepted with min_version TLSv1.3")
        s = _handshake(fg.https_port, client_context())
        eq(s.version(), "TLSv1.3", "a TLS 1.3 client")
        s.close()


def _sans(sock):
    return [v for k, v in sock.getpeercert().get("subjectAltName", ()) if k == "DNS"]


def test_sni_selects_certificate():
    with Flowgate() as fg:
        s = _handshake(fg.https_port, client_context(), "other.localhost")
        eq(_sans(s), ["other.localhost"], "certificate for SNI other.localhost")
        s.close()
        s = _handshake(fg.https_port, client_context(), "localhost")
        check("localhost" in _sans(s), "certificate for SNI localhost: %r" % _sans(s))
        s.close()
        s = _handshake(fg.https_port, client_context(), "x.preview.localhost")
        check("*.preview.localhost" in _sans(s), "wildcard certificate: %r" % _sans(s))
        s.close()
        s = _handshake(fg.https_port, client_context(check_hostname=False), "unknown.example")
        check("localhost" in _sans(s), "default certificate for unknown SNI: %r" % _sans(s))
        s.close()
        s = _handshake(fg.https_port, client_context(check_hostname=False), None)
        check("localhost" in _sans(s), "default certificate without SNI: %r" % _sans(s))
        s.close()


def test_alpn_selects_h2_then_http11():
    with Flowgate() as fg:
        s = _handshake(fg.https_port, client_context(alpn=["h2", "http/1.1"]))
        eq(s.selected_alpn_protocol(), "h2", "ALPN when the client offers h2")
        s.close()
        s = _handshake(fg.https_port, client_context(alpn=["http/1.1", "h2"]))
        eq(s.selected_alpn_protocol(), "h2", "ALPN: the server's preference decides")
        s.close()
        s = _handshake(fg.https_port, client_context(alpn=["http/1.1"]))
        eq(s.selected_alpn_protocol(), "http/1.1", "ALPN for an HTTP/1.1 client")
        s.close()
    with Flowgate({"http2": {"enabled": False}}) as fg:
        s = _handshake(fg.https_port, client_context(alpn=["h2", "http/1.1"]))
        eq(s.selected_alpn_protocol(), "http/1.1", "ALPN with http2.enabled = false")
        s.close()
        p = s_client(fg.https_port, ["-servername", "localhost", "-alpn", "h2,http/1.1"],
                     stdin=b"")
        check(b"ALPN protocol: http/1.1" in p.stdout,
              "openssl s_client did not report ALPN http/1.1:\n%s" % p.stdout[-1500:].decode(
                  "latin-1"))
        check(b"Verification: OK" in p.stdout or b"Verify return code: 0 (ok)" in p.stdout,
              "chain did not verify against the dev CA")


def test_alpn_without_a_protocol_we_speak_is_served_http11():
    """A client offering only protocols flowgate does not speak (curl --http1.0
    offers "http/1.0") gets no ALPN answer, not a no_application_protocol
    alert: the handshake completes and HTTP/1.1 is spoken."""
    with Upstream() as up, Flowgate(upstream=up) as fg:
        s = _handshake(fg.https_port, client_context(alpn=["http/1.0"]))
        eq(s.selected_alpn_protocol(), None, "ALPN for a client offering only http/1.0")
        c = Conn(s)
        eq(c.request("GET", "/alpn-none").status, 200, "request without ALPN")
        c.close()
        p = curl(["-i", "--http1.0", "https://localhost:%d/alpn-curl" % fg.https_port])
        eq(p.returncode, 0, "curl --http1.0 exit (stderr %r)" % p.stderr)
        status = p.stdout.split(b"\r\n", 1)[0].split()
        eq(status[1:2], [b"200"], "curl --http1.0 status line %r" % p.stdout[:40])
        p = s_client(fg.https_port, ["-servername", "localhost", "-alpn", "http/1.0"],
                     stdin=b"")
        out = p.stdout.decode("latin-1")
        check("No ALPN negotiated" in out, "openssl s_client -alpn http/1.0:\n%s" % out[-1500:])
        check("Verification: OK" in out or "Verify return code: 0 (ok)" in out,
              "s_client handshake did not complete:\n%s" % out[-1500:])
        eq(up.targets(), ["/alpn-none", "/alpn-curl"], "what reached the upstream")


def _resumed(port, version):
    ctx = client_context(minimum=version, maximum=version)
    c = Conn(_handshake(port, ctx))
    eq(c.request("GET", "/r1").status, 200, "first request")  # TLS 1.3 tickets arrive after
    sess = c.sock.session
    c.close()
    if sess is None:
        return False
    s = _handshake(port, ctx, session=sess)
    c = Conn(s)
    eq(c.request("GET", "/r2").status, 200, "request on the resumed connection")
    reused = s.session_reused
    c.close()
    return reused


def test_session_resumption_with_tickets():
    with Upstream() as up, Flowgate(upstream=up) as fg:
        check(_resumed(fg.https_port, V.TLSv1_3), "TLS 1.3 session not resumed")
        check(_resumed(fg.https_port, V.TLSv1_2), "TLS 1.2 session not resumed")


def test_no_resumption_when_session_tickets_false():
    with Upstream() as up, Flowgate({"tls": {"session_tickets": False}}, upstream=up) as fg:
        check(not _resumed(fg.https_port, V.TLSv1_3), "TLS 1.3 resumed with session_tickets=false")
        check(not _resumed(fg.https_port, V.TLSv1_2), "TLS 1.2 resumed with session_tickets=false")


def test_plain_http_on_https_port_does_not_reach_upstream():
    with Upstream() as up, Flowgate(upstream=up) as fg:
        c = Conn.plain(fg.https_port)
        c.send(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        data = b""
        try:
            data = c.read_until_close(10)
        except Exception as e:  # noqa: BLE001 - any outcome but a proxied answer is fine
            if "timed out" in str(e):
                fail("plain HTTP on the https port left the connection hanging")
        c.close()
        check(b'"upstream"' not in data, "plain HTTP on the TLS port was proxied")
        eq(up.requests(), [], "forwarded")
