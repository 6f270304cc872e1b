"""A raw HTTP/2 client for hostile tests.

Frames are written by hand and HPACK comes from Debian's python3-hpack, so
nothing refuses to send a malformed request: uppercase names, CR/LF/NUL in
values, duplicated or misplaced pseudo-headers, header blocks that never end.
The reader parses every frame the server sends, answers SETTINGS (and, unless
told not to, PING), opens the flow-control windows as DATA arrives (unless
told not to), and keeps what each stream received.

Importing this module never fails: without python3-hpack, H2() raises
harness.Skip. The interpreter that `make test` runs may not be Debian's own,
so Debian's pure-Python package directory is tried as a last resort.
"""

import socket
import ssl
import struct
import sys
import time

from harness import LOOPBACK, Skip, client_context, fail

try:
    import hpack
except ImportError:
    sys.path.append("/usr/lib/python3/dist-packages")
    try:
        import hpack
    except ImportError:
        hpack = None

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, \
    WINDOW_UPDATE, CONTINUATION = range(10)
END_STREAM = ACK = 0x1
END_HEADERS = 0x4

NO_ERROR, PROTOCOL_ERROR, INTERNAL_ERROR, FLOW_CONTROL_ERROR = 0x0, 0x1, 0x2, 0x3
REFUSED_STREAM, CANCEL, COMPRESSION_ERROR, ENHANCE_YOUR_CALM = 0x7, 0x8, 0x9, 0xb

HEADER_TABLE_SIZE, ENABLE_PUSH, MAX_CONCURRENT_STREAMS = 0x1, 0x2, 0x3
INITIAL_WINDOW_SIZE, MAX_FRAME_SIZE, MAX_HEADER_LIST_SIZE = 0x4, 0x5, 0x6
ENABLE_CONNECT_PROTOCOL = 0x8

ERROR_NAMES = {0: "NO_ERROR", 1: "PROTOCOL_ERROR", 2: "INTERNAL_ERROR", 3: "FLOW_CONTROL_ERROR",
               4: "SETTINGS_TIMEOUT", 5: "STREAM_CLOSED", 6: "FRAME_SIZE_ERROR",
               7: "REFUSED_STREAM", 8: "CANCEL", 9: "COMPRESSION_ERROR", 10: "CONNECT_ERROR",
               11: "ENHANCE_YOUR_CALM", 12: "INADEQUATE_SECURITY", 13: "HTTP_1_1_REQUIRED"}


def error_name(code):
    return ERROR_NAMES.get(code, "0x%x" % code) if code is not None else None


def frame(ftype, flags, sid, payload=b""):
    """One frame: 24-bit length, type, flags, stream id (RFC 9113 section 4.1)."""
    return struct.pack(">I", len(payload))[1:] + bytes([ftype, flags]) + \
        struct.pack(">I", sid & 0x7FFFFFFF) + payload


def settings_frame(settings=(), ack=False):
    payload = b"".join(struct.pack(">HI", k, v) for k, v in settings)
    return frame(SETTINGS, ACK if ack else 0, 0, payload)


def rst_frame(sid, code):
    return frame(RST_STREAM, 0, sid, struct.pack(">I", code))


def ping_frame(data=b"\0" * 8, ack=False):
    return frame(PING, ACK if ack else 0, 0, data)


def window_update_frame(sid, increment):
    return frame(WINDOW_UPDATE, 0, sid, struct.pack(">I", increment))


def literal(name, value):
    """A literal field without indexing, new name (RFC 7541 section 6.2.2),
    for names and values shorter than 127 bytes: no dynamic-table state."""
    name = name.encode("latin-1") if isinstance(name, str) else name
    value = value.encode("latin-1") if isinstance(value, str) else value
    assert len(name) < 127 and len(value) < 127
    return bytes([0x00, len(name)]) + name + bytes([len(value)]) + value


def _b(x):
    return x.encode("latin-1") if isinstance(x, str) else x


def request_headers(path="/", method="GET", authority="localhost", extra=()):
    return [(":method", method), (":scheme", "https"), (":authority", authority),
            (":path", path)] + list(extra)


class Stream:
    def __init__(self, sid):
        self.id = sid
        self.headers = None      # [(name, value)] of the response head (str)
        self.trailers = None
        self.informational = []  # 1xx heads
        self.body = bytearray()
        self.ended = False       # END_STREAM received
        self.reset = None        # RST_STREAM error code received

    @property
    def status(self):
        for n, v in self.headers or ():
            if n == ":status":
                return int(v)
        return None

    def header(self, name):
        for n, v in self.headers or ():
            if n == name:
                return v
        return None

    def done(self):
        return self.ended or self.reset is not None

    def __repr__(self):
        return "<stream %d status=%s reset=%s ended=%s body=%r>" % (
            self.id, self.status, error_name(self.reset), self.ended, bytes(self.body[:120]))


class H2:
    """One TLS connection that negotiated h2 by ALPN, after the connection
    preface and the server's SETTINGS (acknowledged). SETTINGS is what the
    client announces; RCVBUF shrinks the client's socket receive buffer so a
    client that does not read holds the server's writes back at once."""

    def __init__(self, port, settings=((ENABLE_PUSH, 0),), rcvbuf=None, timeout=10.0,
                 server_hostname="localhost"):
        if hpack is None:
            raise Skip("python3-hpack is not installed (apt-get install python3-h2)")
        self.timeout = timeout
        raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf:
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        raw.settimeout(timeout)
        raw.connect((LOOPBACK, port))
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        ctx = client_context(alpn=["h2", "http/1.1"])
        try:
            self.sock = ctx.wrap_socket(raw, server_hostname=server_hostname)
        except BaseException:
            raw.close()
            raise
        proto = self.sock.selected_alpn_protocol()
        if proto != "h2":
            self.sock.close()
            fail("ALPN offered h2, http/1.1: flowgate selected %r, not h2" % proto)
        self.enc = hpack.Encoder()
        self.dec = hpack.Decoder()
        self.dec.max_header_list_size = 1 << 24
        self.buf = bytearray()
        self.streams = {}
        self.next_id = 1
        self.server_settings = {}
        self.settings_acked = 0
        self.goaway = None       # (last stream id, error code, debug data)
        self.closed = False      # EOF or reset seen (reading or writing)
        self.blocked = False     # a write did not complete within its bound
        self.answer_pings = True
        self.auto_window = True
        self.pongs = 0
        self.frames_in = 0
        self._block = None       # (sid, flags, fragments) of an unfinished header block
        self.send(PREFACE + settings_frame(settings))
        if not self.wait(lambda: self.server_settings is not None and self._got_settings,
                         timeout, "the server's SETTINGS"):
            fail("no SETTINGS from the server within %.0f s" % timeout)

    _got_settings = False

    # ------------------------------------------------------------ writing

    def send(self, data, timeout=None):
        """Write DATA; False when the connection is closed or the write stalled
        past TIMEOUT (then self.blocked: the server no longer reads)."""
        if self.closed or self.blocked:
            return False
        self.sock.settimeout(timeout or self.timeout)
        try:
            self.sock.sendall(data)
            return True
        except (socket.timeout, TimeoutError):
            self.blocked = True
        except (BrokenPipeError, ConnectionResetError, ssl.SSLEOFError, ssl.SSLZeroReturnError):
            self.closed = True
        except ssl.SSLError:
            self.closed = True
        except OSError:
            self.closed = True
        return False

    def new_id(self):
        sid = self.next_id
        self.next_id += 2
        return sid

    def block(self, headers):
        return self.enc.encode([(_b(n), _b(v)) for n, v in headers])

    def headers_frame(self, sid, headers, end_stream=True):
        """HEADERS, then CONTINUATION frames when the block is larger than
        the server's SETTINGS_MAX_FRAME_SIZE (16384 by default)."""
        block = self.block(headers)
        size = self.server_settings.get(MAX_FRAME_SIZE, 16384)
        parts = [block[i:i + size] for i in range(0, len(block), size)] or [b""]
        out = []
        for i, part in enumerate(parts):
            last = END_HEADERS if i == len(parts) - 1 else 0
            if i == 0:
                out.append(frame(HEADERS, last | (END_STREAM if end_stream else 0), sid, part))
            else:
                out.append(frame(CONTINUATION, last, sid, part))
        return b"".join(out)

    def request(self, headers, data=None, trailers=None, sid=None, split_data=False):
        """Send one request: HEADERS, then each DATA chunk of DATA (a list of
        bytes), then TRAILERS; END_STREAM on the last frame. Returns the id."""
        sid = sid or self.new_id()
        self.streams[sid] = Stream(sid)
        chunks = list(data or [])
        out = [self.headers_frame(sid, headers, end_stream=not chunks and trailers is None)]
        for i, c in enumerate(chunks):
            last = i == len(chunks) - 1 and trailers is None
            out.append(frame(DATA, END_STREAM if last else 0, sid, c))
        if trailers is not None:
            out.append(self.headers_frame(sid, trailers, end_stream=True))
        self.send(b"".join(out))
        return sid

    def get(self, path="/", timeout=None, extra=()):
        sid = self.request(request_headers(path, extra=extra))
        return self.response(sid, timeout)

    # ------------------------------------------------------------ reading

    def _recv(self, timeout):
        if self.closed:
            return False
        self.sock.settimeout(max(0.001, timeout))
        try:
            data = self.sock.recv(65536)
        except (socket.timeout, TimeoutError):
            return True
        except (ssl.SSLZeroReturnError, ssl.SSLEOFError, ConnectionResetError,
                BrokenPipeError):
            data = b""
        except ssl.SSLError:
            data = b""
        except OSError:
            data = b""
        if not data:
            self.closed = True
            return False
        self.buf += data
        self._parse()
        return True

    def _parse(self):
        while len(self.buf) >= 9:
            n = int.from_bytes(self.buf[0:3], "big")
            if len(self.buf) < 9 + n:
                return
            ftype, flags = self.buf[3], self.buf[4]
            sid = int.from_bytes(self.buf[5:9], "big") & 0x7FFFFFFF
            payload = bytes(self.buf[9:9 + n])
            del self.buf[:9 + n]
            self.frames_in += 1
            self._on_frame(ftype, flags, sid, payload)

    def stream(self, sid):
        """Stream SID as received so far (made on first use)."""
        if sid not in self.streams:
            self.streams[sid] = Stream(sid)
        return self.streams[sid]

    def _on_frame(self, ftype, flags, sid, payload):
        if ftype == SETTINGS:
            if flags & ACK:
                self.settings_acked += 1
                return
            for i in range(0, len(payload) - 5, 6):
                k, v = struct.unpack(">HI", payload[i:i + 6])
                self.server_settings[k] = v
            self._got_settings = True
            self.send(settings_frame(ack=True))
        elif ftype == PING:
            if flags & ACK:
                self.pongs += 1
            elif self.answer_pings:
                self.send(ping_frame(payload, ack=True))
        elif ftype == GOAWAY:
            last, code = struct.unpack(">II", payload[:8])
            self.goaway = (last & 0x7FFFFFFF, code, payload[8:])
        elif ftype == RST_STREAM:
            self.stream(sid).reset = struct.unpack(">I", payload[:4])[0]
        elif ftype in (HEADERS, PUSH_PROMISE):
            if ftype == HEADERS and flags & 0x8:  # PADDED
                pad = payload[0]
                payload = payload[1:len(payload) - pad]
            if ftype == HEADERS and flags & 0x20:  # PRIORITY
                payload = payload[5:]
            self._block = (sid, flags, [payload], ftype)
            if flags & END_HEADERS:
                self._end_block()
        elif ftype == CONTINUATION and self._block is not None:
            self._block[2].append(payload)
            if flags & END_HEADERS:
                self._end_block()
        elif ftype == DATA:
            s = self.stream(sid)
            if flags & 0x8:
                pad = payload[0]
                payload = payload[1:len(payload) - pad]
            s.body += payload
            if flags & END_STREAM:
                s.ended = True
            if self.auto_window and payload:
                self.send(window_update_frame(0, len(payload)) +
                          (window_update_frame(sid, len(payload)) if not s.ended else b""))

    def _end_block(self):
        sid, flags, parts, ftype = self._block
        self._block = None
        fields = [(n.decode("latin-1") if isinstance(n, bytes) else n,
                   v.decode("latin-1") if isinstance(v, bytes) else v)
                  for n, v in self.dec.decode(b"".join(parts), raw=True)]
        if ftype == PUSH_PROMISE:
            return
        s = self.stream(sid)
        status = dict(fields).get(":status")
        if s.headers is None and status is not None and status.startswith("1"):
            s.informational.append(fields)
        elif s.headers is None:
            s.headers = fields
        else:
            s.trailers = fields
        if flags & END_STREAM:
            s.ended = True

    def wait(self, cond, timeout, what=""):
        """Read frames until COND() holds, the connection closes or TIMEOUT."""
        deadline = time.monotonic() + timeout
        while not cond():
            left = deadline - time.monotonic()
            if left <= 0 or self.closed:
                return cond()
            self._recv(min(left, 0.5))
        return True

    def response(self, sid, timeout=None):
        """Stream SID once it ended, was reset, or the connection went away."""
        s = self.stream(sid)
        self.wait(lambda: s.done() or (self.goaway is not None and self.goaway[0] < sid),
                  timeout or self.timeout)
        return s

    def drain(self, timeout):
        """Read (and discard nothing) until the connection closes; True if it did."""
        return self.wait(lambda: False, timeout) or self.closed

    def ended(self):
        return self.goaway is not None or self.closed

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False
