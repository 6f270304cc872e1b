#!/usr/bin/env python3
"""S5 and S9: memory per idle keep-alive TLS connection (HTTP/1.1 or HTTP/2).

    idle_conns.py [--h2] PORT N PID [SETTLE_S]

Opens N TLS connections to 127.0.0.1:PORT one after another; on each it sends
one `GET /` (keep-alive), reads the whole response, and leaves the connection
open and idle. With --h2 each connection must negotiate h2 by ALPN; the
request is a raw HTTP/2 exchange (preface, SETTINGS and its ACK, one HEADERS
frame, the response read to END_STREAM), no library needed. Before the first and after the last it reads the resident set
(VmRSS, kB) of PID and its descendants (the nginx master and its worker).
Prints one line: `ok errors rss_before_kib rss_after_kib seconds`, then closes
every connection. Every wait is bounded (5 s per connection).
"""
import os
import socket
import ssl
import struct
import sys
import time

# GET / on stream 1, HPACK: :method GET, :scheme https, :path / (static table
# indexes 2, 7, 4), :authority "localhost" (literal, name index 1).
H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
H2_GET = b"\x82\x87\x84\x01\x09localhost"


def tree(pid):
    out = [pid]
    try:
        for t in os.listdir("/proc/%d/task" % pid):
            with open("/proc/%d/task/%s/children" % (pid, t)) as f:
                for c in f.read().split():
                    out.extend(tree(int(c)))
    except OSError:
        pass
    return out


def rss_kib(pid):
    total = 0
    for p in tree(pid):
        try:
            with open("/proc/%d/status" % p) as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total


def one(ctx, port):
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s = ctx.wrap_socket(s, server_hostname="localhost")
    s.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\nUser-Agent: idle-conns\r\n\r\n")
    buf = b""
    while b"\r\n\r\n" not in buf:
        d = s.recv(65536)
        if not d:
            raise OSError("closed before the response head")
        buf += d
    head, _, body = buf.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    if b" 200 " not in lines[0] + b" ":
        raise OSError("status %r" % lines[0])
    length = None
    for h in lines[1:]:
        k, _, v = h.partition(b":")
        if k.strip().lower() == b"content-length":
            length = int(v.strip())
    if length is None:
        raise OSError("no Content-Length")
    while len(body) < length:
        d = s.recv(65536)
        if not d:
            raise OSError("closed in the body")
        body += d
    return s


def h2_frame(ftype, flags, sid, payload=b""):
    return struct.pack(">I", len(payload))[1:] + bytes([ftype, flags]) + \
        struct.pack(">I", sid) + payload


def one_h2(ctx, port):
    """One HTTP/2 connection that did one GET / and got a 200 to its end."""
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s = ctx.wrap_socket(s, server_hostname="localhost")
    if s.selected_alpn_protocol() != "h2":
        raise OSError("ALPN selected %r, not h2" % s.selected_alpn_protocol())
    s.sendall(H2_PREFACE + h2_frame(4, 0, 0, struct.pack(">HI", 2, 0)) +
              h2_frame(1, 0x5, 1, H2_GET))
    buf, status = b"", None
    while True:
        while len(buf) < 9 or len(buf) < 9 + int.from_bytes(buf[:3], "big"):
            d = s.recv(65536)
            if not d:
                raise OSError("closed before the end of the response")
            buf += d
        n = int.from_bytes(buf[:3], "big")
        ftype, flags, sid, payload = buf[3], buf[4], int.from_bytes(buf[5:9], "big"), buf[9:9 + n]
        buf = buf[9 + n:]
        if ftype == 4 and not flags & 1:
            s.sendall(h2_frame(4, 1, 0))
        elif ftype in (3, 7):
            raise OSError("RST_STREAM or GOAWAY")
        elif ftype == 1 and sid == 1 and status is None:
            status = payload[:1]
        if sid == 1 and ftype in (0, 1) and flags & 1:
            # Static indexes 9 to 14 are :status 204 to 500; 8 is 200. A
            # literal status is taken as 200: the target was checked before.
            if status in [bytes([0x80 | i]) for i in range(9, 15)]:
                raise OSError("status not 200 (indexed %r)" % status)
            return s


def main():
    h2 = sys.argv[1] == "--h2"
    if h2:
        del sys.argv[1]
    port, n, pid = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    settle = float(sys.argv[4]) if len(sys.argv) > 4 else 1.0
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if h2:
        ctx.set_alpn_protocols(["h2"])
    connect = one_h2 if h2 else one
    # Warm the proxy (upstream pool, first allocations) before the baseline.
    for _ in range(3):
        connect(ctx, port).close()
    time.sleep(settle)
    before = rss_kib(pid)
    conns, errors = [], 0
    t0 = time.time()
    for _ in range(n):
        try:
            conns.append(connect(ctx, port))
        except (OSError, ssl.SSLError, ValueError):
            errors += 1
    elapsed = time.time() - t0
    time.sleep(settle)
    after = rss_kib(pid)
    # Still open? A proxy that dropped idle connections would cheat.
    alive = 0
    for s in conns:
        try:
            s.setblocking(False)
            try:
                d = s.recv(1)
                if d:
                    alive += 1   # unexpected data; count it alive
            except (ssl.SSLWantReadError, BlockingIOError):
                alive += 1
        except (OSError, ssl.SSLError):
            pass
    errors += len(conns) - alive
    print("%d %d %d %d %.1f" % (alive, errors, before, after, elapsed))
    sys.stdout.flush()
    for s in conns:
        try:
            s.close()
        except OSError:
            pass


if __name__ == "__main__":
    main()
