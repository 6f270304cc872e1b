"""Shared by bench/report.py and bench/lib.sh: wrk's output as numbers, the
versions file, the host."""
import os
import re

UNIT_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}


def ms(text):
    """'1.25ms' -> 1.25; None when it is not a wrk duration."""
    m = re.match(r"([0-9.]+)(us|ms|s|m)$", text)
    return float(m.group(1)) * UNIT_MS[m.group(2)] if m else None


def parse_wrk(path):
    """Requests, req/s, p50/p99 (ms), non-2xx and socket errors of one wrk run."""
    try:
        text = open(path, errors="replace").read()
    except OSError:
        text = ""
    r = {"requests": None, "rps": None, "p50_ms": None, "p99_ms": None,
         "non2xx": 0, "socket_errors": 0}
    m = re.search(r"^\s*(\d+) requests in ", text, re.M)
    if m:
        r["requests"] = int(m.group(1))
    m = re.search(r"^Requests/sec:\s*([0-9.]+)", text, re.M)
    if m:
        r["rps"] = float(m.group(1))
    for q, key in (("50", "p50_ms"), ("99", "p99_ms")):
        m = re.search(r"^\s*%s(?:\.000)?%%\s+(\S+)" % q, text, re.M)
        if m:
            r[key] = ms(m.group(1))
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    if m:
        r["non2xx"] = int(m.group(1))
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    if m:
        r["socket_errors"] = sum(int(x) for x in m.groups())
    return r


def read_versions(path):
    """The NAME<TAB>VERSION lines the benchmark wrote (empty when absent)."""
    versions = {}
    try:
        for line in open(path):
            k, _, v = line.rstrip("\n").partition("\t")
            versions[k] = v
    except OSError:
        pass
    return versions


def host_info():
    return {"cpus": os.cpu_count(), "kernel": os.uname().release}
