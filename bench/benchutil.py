"""Shared by bench/report.py and bench/lib.sh: wrk's and h2load's output as
numbers, the versions file, the host."""
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


def parse_h2load(text):
    """The same numbers from h2load output: one run, or several back to back
    followed by an "elapsed: SECONDS" line (bench/lib.sh h2conn_run), whose
    counts are summed and divided by the elapsed time. h2load gives no
    percentiles: p50 and p99 stay None. Requests not answered 2xx are non2xx
    when they got a status, socket errors when they got none."""
    r = {"requests": None, "rps": None, "p50_ms": None, "p99_ms": None,
         "non2xx": 0, "socket_errors": 0}
    totals = [tuple(int(x) for x in m) for m in re.findall(
        r"^requests: (\d+) total, \d+ started, (\d+) done, (\d+) succeeded", text, re.M)]
    codes = [tuple(int(x) for x in m) for m in re.findall(
        r"^status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", text, re.M)]
    if not totals:
        return r
    total = sum(t[0] for t in totals)
    ok = sum(c[0] for c in codes)
    r["requests"] = ok
    r["non2xx"] = sum(c[1] + c[2] + c[3] for c in codes)
    r["socket_errors"] = max(0, total - ok - r["non2xx"])
    m = re.search(r"^elapsed: ([0-9.]+)", text, re.M)
    if m:
        r["rps"] = ok / float(m.group(1)) if float(m.group(1)) > 0 else None
    else:
        m = re.search(r"^finished in \S+, ([0-9.]+) req/s", text, re.M)
        r["rps"] = float(m.group(1)) if m else None
    return r


def parse_run(path):
    """parse_wrk or parse_h2load, whichever tool wrote PATH."""
    try:
        text = open(path, errors="replace").read()
    except OSError:
        text = ""
    if re.search(r"^requests: \d+ total", text, re.M) or text.startswith("elapsed:"):
        return parse_h2load(text)
    return parse_wrk(path)


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
