#!/usr/bin/env python3
"""cg_client.py PORT N PATH [HEADER...]: N keep-alive requests over one TLS
connection to 127.0.0.1:PORT, one at a time (bench/callgrind.sh).

Each request is `GET PATH HTTP/1.1` with Host: localhost and the given
"Name: value" headers. Every answer must be a 200 framed by Content-Length;
anything else stops the run with exit status 1, so a count is never taken
over refusals.
"""
import socket
import ssl
import sys


def read_response(sock, buf):
    """One response from BUF plus what SOCK sends: (status, rest of BUF)."""
    while True:
        end = buf.find(b"\r\n\r\n")
        if end >= 0:
            lines = buf[:end].decode("latin-1").split("\r\n")
            status = int(lines[0].split(" ")[1])
            length = None
            for line in lines[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value.strip())
            if length is None:
                sys.exit("cg_client: response without Content-Length: %s" % lines[0])
            if len(buf) >= end + 4 + length:
                return status, buf[end + 4 + length:]
        data = sock.recv(65536)
        if not data:
            sys.exit("cg_client: connection closed by the server")
        buf += data


def main():
    port, n, path = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    extra = "".join(h + "\r\n" for h in sys.argv[4:])
    req = ("GET %s HTTP/1.1\r\nHost: localhost\r\n%s\r\n" % (path, extra)).encode()
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    raw = socket.create_connection(("127.0.0.1", port), timeout=60)
    sock = ctx.wrap_socket(raw, server_hostname="localhost")
    buf = b""
    for i in range(n):
        sock.sendall(req)
        status, buf = read_response(sock, buf)
        if status != 200:
            sys.exit("cg_client: request %d answered %d" % (i + 1, status))
    sock.close()


if __name__ == "__main__":
    main()
