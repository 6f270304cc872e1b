#!/usr/bin/env python3
"""A small HTTP/1.1 upstream: the demo backend of `make run` and the recording
peer of the integration tests.

    python3 tests/upstream.py --listen 127.0.0.1:9001 [--record FILE] [--name NAME]
                              [--pages DIR]

It has its own minimal parser on raw asyncio streams (keep-alive, Content-Length
and chunked request bodies), so that it sees exactly what flowgate sends.

With --record, every request is appended to FILE as one JSON line:
  conn         serial number of the upstream connection it arrived on (from 1)
  method, target, version
  headers      [[name, value], ...] in received order
  body_len, body_sha256
  trailers     the raw trailer section of a chunked body (the field lines between
               the last-chunk line and the blank line, latin-1; "" when none)
  raw_head     the exact head bytes (request line to the blank line), latin-1
  complete     false when the connection ended or the framing broke before the
               end of the body (then "error" says why)

Paths:
  /                 (and anything else) 200 JSON: upstream, method, path, headers
  /echo             200 with the request body
  /bytes/N          N bytes of bytes(i % 251), Content-Length; ?chunked=1 chunked
                    in 16 KiB chunks; X-Body-Sha256 carries the digest
  /sha256           {"len": n, "sha256": hex} of the request body
  /status/N         status N, small body (none for 1xx, 204, 304)
  /slow/MS          answers after MS milliseconds
  /trickle          head and body sent in small pieces with pauses (?ms=50)
  /truncate         Content-Length: 1000, 10 bytes, close
  /framing/te-cl    chunked "ok" that also says Content-Length: 100, then close
  /framing/cl-list  "ok" with Content-Length: 2, 2 (one value, list form)
  /framing/204-cl   204 with Content-Length: 5 and 5 stray bytes, then close
  /close-before     close without answering
  /reset            close with RST (SO_LINGER 0)
  /headers          hop-by-hop and security headers of its own
  /expect           a normal answer (Expect: 100-continue is answered for any path)
  /cors-headers     Vary: Accept-Encoding and a wide-open Access-Control-* policy of its own
  /set-cookie       one Set-Cookie header per ?c= value, in order
  /trailers         chunked "trailers\n" whose trailer section holds X-Trailer and a
                    Set-Cookie
  /health/set       ?status=N: /healthz answers status N from now on (health-check tests)
  /FILE             with --pages DIR, a file of DIR (.html, .js, .css, .svg) with its
                    Content-Type: the pages the browser tests load through flowgate
  /ws               WebSocket (RFC 6455): 101 with Sec-WebSocket-Accept, then every text,
                    binary or continuation frame echoed back unmasked, ping answered
                    with pong, close answered with close (then the connection ends)
"""

import argparse
import asyncio
import base64
import hashlib
import json
import signal
import socket
import struct
import sys
from urllib.parse import parse_qs, urlsplit

MAX_HEAD = 1 << 20
# Heads whose Content-Length a proxy must not pass on as it is.
FRAMING = {
    "/framing/te-cl": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 100\r\n"
                      b"\r\n2\r\nok\r\n0\r\n\r\n",
    "/framing/cl-list": b"HTTP/1.1 200 OK\r\nContent-Length: 2, 2\r\n\r\nok",
    "/framing/204-cl": b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\nhello",
}
CHUNK = 16 * 1024


class BadRequest(Exception):
    pass


class Recorder:
    def __init__(self, path):
        self.fp = open(path, "a", encoding="utf-8") if path else None

    def write(self, entry):
        if self.fp is None:
            return
        self.fp.write(json.dumps(entry) + "\n")
        self.fp.flush()


def pattern(n):
    """The deterministic body of /bytes/N."""
    block = bytes(i % 251 for i in range(251 * 64))
    reps, rest = divmod(n, len(block))
    return block * reps + block[:rest]


def parse_head(raw):
    """Split a request head into (method, target, version, [[name, value]])."""
    text = raw.decode("latin-1")
    lines = text.split("\r\n")
    if lines and lines[-1] == "":
        lines = lines[:-1]
    while lines and lines[-1] == "":
        lines = lines[:-1]
    if not lines:
        raise BadRequest("empty head")
    parts = lines[0].split(" ")
    if len(parts) != 3:
        raise BadRequest("bad request line")
    method, target, version = parts
    headers = []
    for line in lines[1:]:
        if ":" not in line:
            raise BadRequest("header line without colon")
        name, value = line.split(":", 1)
        headers.append([name, value.strip(" \t")])
    return method, target, version, headers


def header(headers, name):
    """All values of NAME joined by ", ", or None."""
    vals = [v for n, v in headers if n.lower() == name.lower()]
    return ", ".join(vals) if vals else None


class Conn:
    serial = 0

    def __init__(self, server, reader, writer):
        Conn.serial += 1
        self.id = Conn.serial
        self.server = server
        self.reader = reader
        self.writer = writer

    async def read_body(self, headers, version, expect_sent):
        """Read the body per the request's framing; returns (body, error).
        A chunked body's raw trailer section is left in self.trailers."""
        te = header(headers, "transfer-encoding")
        cl = header(headers, "content-length")
        body = bytearray()
        self.trailers = bytearray()
        try:
            if te is not None:
                codings = [c.strip().lower() for c in te.split(",")]
                if codings[-1] != "chunked":
                    return bytes(body), "transfer-encoding without final chunked"
                while True:
                    line = await self.reader.readuntil(b"\r\n")
                    size_s = line[:-2].split(b";", 1)[0].strip()
                    try:
                        if not size_s or any(c not in b"0123456789abcdefABCDEF" for c in size_s):
                            raise ValueError
                        size = int(size_s, 16)
                    except ValueError:
                        return bytes(body), "bad chunk size %r" % size_s
                    if size == 0:
                        while True:  # trailers, up to the blank line
                            t = await self.reader.readuntil(b"\r\n")
                            if t == b"\r\n":
                                return bytes(body), None
                            self.trailers += t
                    body += await self.reader.readexactly(size)
                    if await self.reader.readexactly(2) != b"\r\n":
                        return bytes(body), "chunk data not followed by CRLF"
            if cl is not None:
                try:
                    n = int(cl)
                    if n < 0 or not cl.isdigit():
                        raise ValueError
                except ValueError:
                    return bytes(body), "bad content-length %r" % cl
                while len(body) < n:
                    data = await self.reader.read(min(n - len(body), 1 << 16))
                    if not data:
                        return bytes(body), "connection closed in body"
                    body += data
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError) as e:
            return bytes(body), "connection ended in body: %s" % type(e).__name__
        return bytes(body), None

    async def run(self):
        try:
            while True:
                try:
                    raw = await self.reader.readuntil(b"\r\n\r\n")
                except asyncio.IncompleteReadError as e:
                    if e.partial:
                        self.record_garbage(e.partial, "connection ended in head")
                    return
                except asyncio.LimitOverrunError:
                    self.record_garbage(b"", "head too large")
                    return
                keep = await self.handle(raw)
                if not keep:
                    return
        except (ConnectionError, OSError):
            return
        except asyncio.CancelledError:
            return  # shutting down with a keep-alive connection open
        finally:
            if not self.writer.is_closing():
                self.writer.close()

    def record_garbage(self, raw, error):
        self.server.recorder.write({
            "conn": self.id, "method": None, "target": None, "version": None,
            "headers": [], "body_len": 0, "body_sha256": hashlib.sha256(b"").hexdigest(),
            "raw_head": raw.decode("latin-1"), "complete": False, "error": error,
            "trailers": "",
        })

    async def handle(self, raw):
        try:
            method, target, version, headers = parse_head(raw)
        except BadRequest as e:
            self.record_garbage(raw, str(e))
            await self.send(400, b"bad request\n", [("Content-Type", "text/plain")], close=True)
            return False
        expect = (header(headers, "expect") or "").lower() == "100-continue"
        if expect and (header(headers, "content-length") not in (None, "0")
                       or header(headers, "transfer-encoding") is not None):
            self.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            await self.writer.drain()
        body, err = await self.read_body(headers, version, expect)
        entry = {
            "conn": self.id, "method": method, "target": target, "version": version,
            "headers": headers, "body_len": len(body),
            "body_sha256": hashlib.sha256(body).hexdigest(),
            "raw_head": raw.decode("latin-1"), "complete": err is None,
            "trailers": self.trailers.decode("latin-1"),
        }
        if err is not None:
            entry["error"] = err
        self.server.recorder.write(entry)
        if err is not None:
            return False
        conn_hdr = (header(headers, "connection") or "").lower()
        tokens = [t.strip() for t in conn_hdr.split(",")]
        if version == "HTTP/1.1":
            keep = "close" not in tokens
        else:
            keep = "keep-alive" in tokens
        req = {"method": method, "target": target, "version": version,
               "headers": headers, "body": body}
        return await self.respond(req, keep)

    async def send(self, status, body, headers=(), close=False, head_only=False,
                   no_body=False):
        lines = ["HTTP/1.1 %d %s" % (status, REASONS.get(status, "Status"))]
        lines += ["%s: %s" % (n, v) for n, v in headers]
        if not no_body:
            lines.append("Content-Length: %d" % len(body))
        if close:
            lines.append("Connection: close")
        out = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        if not head_only and not no_body:
            out += body
        self.writer.write(out)
        await self.writer.drain()
        return not close

    async def respond(self, req, keep):
        url = urlsplit(req["target"])
        path = url.path
        query = parse_qs(url.query)
        head_only = req["method"] == "HEAD"
        close = not keep
        name = self.server.name

        if path == "/health/set":
            self.server.health_status = int(query.get("status", ["200"])[0])
            return await self.send(204, b"", [], close, no_body=True)
        if path == "/healthz" and self.server.health_status is not None:
            code = self.server.health_status
            return await self.send(code, b'{"health":%d}' % code,
                                   [("Content-Type", "application/json")], close, head_only)
        if path == "/echo":
            return await self.send(200, req["body"], [("Content-Type", "application/octet-stream")],
                                   close, head_only)
        if path.startswith("/bytes/"):
            n = int(path[len("/bytes/"):] or "0")
            data = pattern(n)
            hdrs = [("Content-Type", "application/octet-stream"),
                    ("X-Body-Sha256", hashlib.sha256(data).hexdigest())]
            if query.get("chunked", ["0"])[0] == "1":
                return await self.send_chunked(data, hdrs, close, head_only)
            return await self.send(200, data, hdrs, close, head_only)
        if path == "/sha256":
            body = json.dumps({"len": len(req["body"]),
                               "sha256": hashlib.sha256(req["body"]).hexdigest()}).encode()
            return await self.send(200, body, [("Content-Type", "application/json")], close,
                                   head_only)
        if path.startswith("/status/"):
            code = int(path[len("/status/"):])
            if code in (204, 304) or code < 200:
                return await self.send(code, b"", [], close, no_body=True)
            body = json.dumps({"status": code}).encode()
            return await self.send(code, body, [("Content-Type", "application/json")], close,
                                   head_only)
        if path.startswith("/slow/"):
            await asyncio.sleep(int(path[len("/slow/"):]) / 1000.0)
            return await self.send(200, b'{"slow":true}', [("Content-Type", "application/json")],
                                   close, head_only)
        if path == "/trickle":
            return await self.trickle(int(query.get("ms", ["50"])[0]), close)
        if path == "/truncate":
            self.writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
                              b"Content-Length: 1000\r\n\r\n0123456789")
            await self.writer.drain()
            self.writer.close()
            return False
        if path in FRAMING:
            self.writer.write(FRAMING[path])
            await self.writer.drain()
            self.writer.close()
            return False
        if path == "/close-before":
            self.writer.close()
            return False
        if path == "/reset":
            sock = self.writer.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.writer.transport.abort()
            return False
        if path == "/headers":
            hdrs = [("Content-Type", "text/plain"), ("Connection", "X-Foo"), ("X-Foo", "1"),
                    ("Keep-Alive", "timeout=5"), ("X-Frame-Options", "DENY"),
                    ("X-Content-Type-Options", "upstream"), ("Server", "upstream/1.0"),
                    ("X-Upstream-Own", "kept")]
            return await self.send(200, b"headers\n", hdrs, close, head_only)
        if path == "/set-cookie":
            hdrs = [("Content-Type", "text/plain")] + [("Set-Cookie", c) for c in query.get("c", [])]
            return await self.send(200, b"cookies\n", hdrs, close, head_only)
        if path == "/ws":
            return await self.websocket(req)
        page = self.server.page(path)
        if page is not None:
            return await self.send(200, page[1], [("Content-Type", page[0])], close, head_only)
        if path == "/trailers":
            return await self.send_chunked(
                b"trailers\n", [("Content-Type", "text/plain"), ("Trailer", "X-Trailer, Set-Cookie")],
                close, head_only,
                trailers=[("X-Trailer", "t"), ("Set-Cookie", "s=1; Domain=example.com")])
        if path == "/cors-headers":
            hdrs = [("Content-Type", "text/plain"), ("Vary", "Accept-Encoding"),
                    ("Access-Control-Allow-Origin", "*"),
                    ("Access-Control-Allow-Credentials", "true"),
                    ("Access-Control-Allow-Methods", "GET, POST, PUT, DELETE, PATCH"),
                    ("Access-Control-Expose-Headers", "X-Secret"), ("X-Secret", "s")]
            return await self.send(200, b"cors\n", hdrs, close, head_only)

        merged = {}
        for n, v in req["headers"]:
            merged[n] = merged[n] + ", " + v if n in merged else v
        body = json.dumps({"upstream": name, "method": req["method"], "path": req["target"],
                           "headers": merged, "body_len": len(req["body"])}, indent=1).encode()
        return await self.send(200, body + b"\n", [("Content-Type", "application/json")],
                               close, head_only)

    async def websocket(self, req):
        key = header(req["headers"], "sec-websocket-key")
        if ((header(req["headers"], "upgrade") or "").lower() != "websocket" or key is None
                or "upgrade" not in (header(req["headers"], "connection") or "").lower()):
            return await self.send(400, b"not a websocket handshake\n", [], close=True)
        accept = base64.b64encode(hashlib.sha1(
            (key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest()).decode()
        self.writer.write(("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                           "Connection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n"
                           "X-Frame-Options: DENY\r\n\r\n" % accept).encode())
        await self.writer.drain()
        try:
            while True:
                fin_op, payload = await ws_read_frame(self.reader)
                op = fin_op & 0x0F
                if op == 0x8:
                    self.writer.write(ws_frame(0x88, payload[:2]))
                    await self.writer.drain()
                    return False
                if op == 0x9:
                    self.writer.write(ws_frame(0x8A, payload))
                elif op in (0x0, 0x1, 0x2):
                    self.writer.write(ws_frame(fin_op, payload))
                await self.writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            return False

    async def send_chunked(self, data, hdrs, close, head_only, trailers=()):
        head = "HTTP/1.1 200 OK\r\n" + "".join("%s: %s\r\n" % h for h in hdrs)
        head += "Transfer-Encoding: chunked\r\n"
        if close:
            head += "Connection: close\r\n"
        self.writer.write((head + "\r\n").encode("latin-1"))
        if not head_only:
            for i in range(0, len(data), CHUNK):
                piece = data[i:i + CHUNK]
                self.writer.write(b"%x\r\n" % len(piece) + piece + b"\r\n")
                await self.writer.drain()
            self.writer.write(b"0\r\n" + "".join("%s: %s\r\n" % t for t in trailers)
                              .encode("latin-1") + b"\r\n")
        await self.writer.drain()
        return not close

    async def trickle(self, ms, close):
        body = b"trickle-" * 8
        head = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n" % len(body)
        if close:
            head += b"Connection: close\r\n"
        head += b"\r\n"
        for piece in (head[:10], head[10:30], head[30:]):
            self.writer.write(piece)
            await self.writer.drain()
            await asyncio.sleep(ms / 1000.0)
        for i in range(0, len(body), 16):
            self.writer.write(body[i:i + 16])
            await self.writer.drain()
            await asyncio.sleep(ms / 1000.0)
        return not close


def ws_frame(fin_op, payload, mask=None):
    """One RFC 6455 frame; MASK (4 bytes) masks it, as a client must."""
    n = len(payload)
    head = bytes([fin_op])
    mbit = 0x80 if mask else 0
    if n < 126:
        head += bytes([mbit | n])
    elif n < 1 << 16:
        head += bytes([mbit | 126]) + struct.pack("!H", n)
    else:
        head += bytes([mbit | 127]) + struct.pack("!Q", n)
    if mask:
        payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload)) if n < 4096 else \
            (int.from_bytes(payload, "big") ^ int.from_bytes((mask * (n // 4 + 1))[:n], "big")
             ).to_bytes(n, "big")
        head += mask
    return head + payload


async def ws_read_frame(reader):
    """(first byte, unmasked payload) of the next frame."""
    b0, b1 = await reader.readexactly(2)
    n = b1 & 0x7F
    if n == 126:
        n = struct.unpack("!H", await reader.readexactly(2))[0]
    elif n == 127:
        n = struct.unpack("!Q", await reader.readexactly(8))[0]
    mask = await reader.readexactly(4) if b1 & 0x80 else None
    data = await reader.readexactly(n)
    if mask and n:
        data = (int.from_bytes(data, "big") ^ int.from_bytes((mask * (n // 4 + 1))[:n], "big")
                ).to_bytes(n, "big")
    return b0, data


REASONS = {
    100: "Continue", 101: "Switching Protocols", 200: "OK", 201: "Created", 204: "No Content", 301: "Moved Permanently",
    302: "Found", 304: "Not Modified", 400: "Bad Request", 401: "Unauthorized",
    403: "Forbidden", 404: "Not Found", 418: "I'm a teapot", 429: "Too Many Requests",
    500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable",
}


PAGE_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript",
              ".css": "text/css", ".svg": "image/svg+xml"}


class Server:
    def __init__(self, name, record, pages=None):
        self.name = name
        self.recorder = Recorder(record)
        self.health_status = None  # /health/set: what /healthz answers
        self.pages = pages  # --pages: directory of files served under their names

    def page(self, path):
        """(Content-Type, bytes) of the --pages file PATH names, or None. Read at
        each request: a test writes its pages while the upstream runs."""
        name = path.lstrip("/")
        ctype = PAGE_TYPES.get(name[name.rfind("."):] if "." in name else "")
        if self.pages is None or ctype is None or "/" in name or name.startswith("."):
            return None
        try:
            with open("%s/%s" % (self.pages, name), "rb") as f:
                return ctype, f.read()
        except OSError:
            return None

    async def on_client(self, reader, writer):
        await Conn(self, reader, writer).run()


async def main_async(args):
    host, _, port = args.listen.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    server = Server(args.name, args.record, args.pages)
    srv = await asyncio.start_server(server.on_client, host, int(port), limit=MAX_HEAD,
                                     reuse_address=True)
    loop = asyncio.get_running_loop()
    stop = loop.create_future()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda: stop.done() or stop.set_result(None))
    print("upstream %s listening on %s" % (args.name, args.listen), flush=True)
    async with srv:
        await stop


def main():
    ap = argparse.ArgumentParser(description="flowgate demo and recording upstream")
    ap.add_argument("--listen", default="127.0.0.1:9001", help="HOST:PORT to listen on")
    ap.add_argument("--record", help="append one JSON line per request to this file")
    ap.add_argument("--name", default="upstream", help="name reported in default answers")
    ap.add_argument("--pages", help="serve the files of this directory under their names")
    args = ap.parse_args()
    try:
        asyncio.run(main_async(args))
    except OSError as e:
        print("upstream: %s" % e, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
