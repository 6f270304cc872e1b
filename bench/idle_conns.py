#!/usr/bin/env python3
"""S5: memory per idle keep-alive TLS connection.

    idle_conns.py PORT N PID [SETTLE_S]

Opens N TLS connections to 127.0.0.1:PORT one after another; on each it sends
one `GET /` (keep-alive), reads the whole response, and leaves the connection
open and idle. Before the first and after the last it reads the resident set
(VmRSS, kB) of PID and its descendants (the nginx master and its worker).
Prints one line: `ok errors rss_before_kib rss_after_kib seconds`, then closes
every connection. Every wait is bounded (5 s per connection).
"""
import os
import socket
import ssl
import sys
import time


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


def main():
    port, n, pid = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    settle = float(sys.argv[4]) if len(sys.argv) > 4 else 1.0
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    # Warm the proxy (upstream pool, first allocations) before the baseline.
    for _ in range(3):
        one(ctx, port).close()
    time.sleep(settle)
    before = rss_kib(pid)
    conns, errors = [], 0
    t0 = time.time()
    for _ in range(n):
        try:
            conns.append(one(ctx, port))
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
