#!/usr/bin/env python3
"""A tiny authoritative DNS server over UDP for the integration tests.

    python3 tests/dnsserver.py --listen 127.0.0.1:5353 --zone FILE [--log FILE]

FILE is JSON, read again on every query, so a test changes answers by
rewriting it: {"name": ["127.0.0.2", ttl] | "servfail" | "drop", ...}.
Names compare case-insensitively (resolvers randomise the case of queries).
A query for a listed name gets its A record (other types: no answer),
"servfail" gets SERVFAIL, "drop" gets no reply at all; an unlisted name
gets NXDOMAIN. With --log, each query is appended as "name type" per line.
"""

import argparse
import json
import signal
import socket
import struct
import sys


def parse_question(msg):
    """(qname lowercased, qtype, end offset of the question) or None."""
    pos, labels = 12, []
    while pos < len(msg):
        n = msg[pos]
        pos += 1
        if n == 0:
            break
        if n & 0xC0 or pos + n > len(msg):
            return None
        labels.append(msg[pos:pos + n].decode("ascii", "replace"))
        pos += n
    if pos + 4 > len(msg):
        return None
    qtype = struct.unpack("!H", msg[pos:pos + 2])[0]
    return ".".join(labels).lower(), qtype, pos + 4


def answer(msg, zone):
    if len(msg) < 12:
        return None, None
    qid, flags, qd = struct.unpack("!HHH", msg[:6])
    q = parse_question(msg)
    if qd != 1 or q is None:
        return None, None
    name, qtype, end = q
    entry = zone.get(name)
    if entry == "drop":
        return None, (name, qtype)
    rd = flags & 0x0100
    rcode, records = 0, b""
    if entry is None:
        rcode = 3
    elif entry == "servfail":
        rcode = 2
    elif qtype == 1:
        ip, ttl = entry
        records = (b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, int(ttl), 4) + socket.inet_aton(ip))
    head = struct.pack("!HHHHHH", qid, 0x8400 | rd | 0x0080 | rcode, 1, 1 if records else 0, 0, 0)
    return head + msg[12:end] + records, (name, qtype)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--listen", required=True)
    ap.add_argument("--zone", required=True)
    ap.add_argument("--log")
    args = ap.parse_args()
    host, _, port = args.listen.rpartition(":")
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((host, int(port)))
    signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
    print("dns listening on %s" % args.listen, flush=True)
    while True:
        msg, peer = sock.recvfrom(4096)
        try:
            with open(args.zone) as f:
                zone = {k.lower(): v for k, v in json.load(f).items()}
        except (OSError, ValueError):
            zone = {}
        reply, q = answer(msg, zone)
        if q and args.log:
            with open(args.log, "a") as f:
                f.write("%s %d\n" % q)
        if reply:
            sock.sendto(reply, peer)


if __name__ == "__main__":
    main()
