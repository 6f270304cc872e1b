"""PROXY protocol (listen.proxy_protocol): the balancer's header gives the
client address; a connection without a valid header is closed unserved."""
import socket
import ssl
import struct

from harness import (LOOPBACK, Conn, Flowgate, Upstream, check, client_context, eq,
                     req_header)


def _v1(src="203.0.113.7"):
    return ("PROXY TCP4 %s 127.0.0.1 40000 443\r\n" % src).encode()


def _v2(src="198.51.100.9"):
    sig = b"\r\n\r\n\x00\r\nQUIT\n"
    addr = socket.inet_aton(src) + socket.inet_aton("127.0.0.1") + struct.pack("!HH", 40000, 443)
    return sig + bytes([0x21, 0x11]) + struct.pack("!H", len(addr)) + addr


def _tls_after(port, preface):
    raw = socket.create_connection((LOOPBACK, port), timeout=10)
    raw.sendall(preface)
    return Conn(client_context().wrap_socket(raw, server_hostname="localhost"), 10)


def _upstream_view(up, fg, preface):
    c = _tls_after(fg.https_port, preface)
    try:
        r = c.request("GET", "/pp")
    finally:
        c.close()
    eq(r.status, 200, "status behind a PROXY header")
    rec = up.requests()[-1]
    return req_header(rec, "X-Real-IP"), req_header(rec, "X-Forwarded-For")


def test_proxy_v1_and_v2_give_the_client_address():
    with Upstream() as up, Flowgate({"listen": {"proxy_protocol": True}}, upstream=up) as fg:
        eq(_upstream_view(up, fg, _v1()), (["203.0.113.7"], ["203.0.113.7"]), "v1 address")
        eq(_upstream_view(up, fg, _v2()), (["198.51.100.9"], ["198.51.100.9"]), "v2 address")


def test_proxy_header_required_and_ignored_from_untrusted_peer():
    cfg = {"listen": {"proxy_protocol": True},
           "rate_limit": {"trusted_proxies": ["10.0.0.0/8"], "on_redis_failure": "allow"}}
    with Upstream() as up, Flowgate(cfg, upstream=up) as fg:
        # Parsed, but the loopback peer is not a trusted proxy: its claim is ignored.
        eq(_upstream_view(up, fg, _v1()), (["127.0.0.1"], ["127.0.0.1"]),
           "address from an untrusted peer")
        before = len(up.requests())
        # No header at all: a plain TLS ClientHello is not a PROXY line.
        raw = socket.create_connection((LOOPBACK, fg.https_port), timeout=10)
        try:
            client_context().wrap_socket(raw, server_hostname="localhost")
            check(False, "TLS handshake completed without a PROXY header")
        except (ssl.SSLError, OSError):
            pass
        finally:
            raw.close()
        # A malformed header is refused too.
        c = Conn.plain(fg.https_port)
        c.send(b"PROXY TCP4 203.0.113.999 127.0.0.1 1 2\r\n")
        check(c.wait_closed(5), "connection with a bad PROXY header left open")
        c.close()
        eq(len(up.requests()), before, "requests forwarded without a valid PROXY header")

