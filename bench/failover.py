#!/usr/bin/python3
"""Redis Sentinel failover under load: what clients see while flowgate
follows a failover.

Starts redis-server twice (primary and replica), redis-sentinel three times
and flowgate three times (the release build, 2 workers each) on 127.0.0.1,
puts a keep-alive TLS load on the three instances, kills the primary
(SIGKILL) and reports, for each on_redis_failure mode given:

- sentinel_s: kill -> the Sentinels name the new primary;
- recover_s: kill -> every instance's /readyz says "up" on the new primary
  (exact limits again: every decision is Redis's after it);
- gap: requests answered meanwhile, by how they were decided (the decisions
  counters of the three instances: local_*, failed_open, failed_closed) and
  by status as clients saw them;
- one identity, hammered through all three instances during the whole run,
  under a limit it never reaches (LIMIT per WINDOW s: 10 a second), so that
  every request of it writes its GCRA state and the state keeps moving up to
  the kill: the admissions the new primary forgot (writes the replica had
  not received when the primary died) show as X-RateLimit-Remaining going
  up across the failover by more than the refill. lost = (highest Remaining
  Redis gave after the failover) - (lowest it gave before) + 1 - refill over
  the time between them; each is an admission beyond the limit, as the
  identity can spend them again. Which decisions were Redis's comes from
  the access log's ratelimit field (allowed/limited).

Usage: make build/flowgate && /usr/bin/python3 bench/failover.py [local allow deny]
Env: LIMIT (1000000) WINDOW (100000) BEFORE_S (4) AFTER_S (4) CLIENTS (2, per
instance, besides one for the identity).
A benchmark measures; it passes or fails nothing.
"""

import json
import os
import random
import shutil
import sys
import tempfile
import threading
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))
os.environ.setdefault("FG_BINARY", os.path.join(ROOT, "build", "flowgate"))

import harness  # noqa: E402
from harness import Flowgate, Upstream, merge  # noqa: E402
from test_ratelimit import metric, metrics, readyz  # noqa: E402
from test_sentinel import SENTINEL_PASSWORD, Cluster, sentinel_config  # noqa: E402

LIMIT = int(os.environ.get("LIMIT", "1000000"))
WINDOW = int(os.environ.get("WINDOW", "100000"))
BEFORE_S = float(os.environ.get("BEFORE_S", "4"))
AFTER_S = float(os.environ.get("AFTER_S", "4"))
CLIENTS = int(os.environ.get("CLIENTS", "2"))
ONE = "192.0.2.1"  # the identity whose admissions are counted
GAP_OUTCOMES = ("local_allowed", "local_limited", "failed_open", "failed_closed")


class Load:
    """Client threads on keep-alive TLS connections; each response is noted
    as (time, status, one-identity?, X-RateLimit-Remaining, X-Request-Id)."""

    def __init__(self, fgs):
        self.fgs = fgs
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.seen = []
        self.errors = 0
        self.threads = []
        for fg in fgs:
            for i in range(CLIENTS):
                self.threads.append(threading.Thread(target=self.run, args=(fg, False, i)))
            self.threads.append(threading.Thread(target=self.run, args=(fg, True, 0)))

    def run(self, fg, one, seed):
        rnd = random.Random(seed * 7919 + fg.https_port)
        conn = None
        while not self.stop.is_set():
            ip = ONE if one else "10.%d.%d.%d" % (rnd.randrange(256), rnd.randrange(256),
                                                 rnd.randrange(1, 255))
            try:
                if conn is None:
                    conn = fg.tls()
                r = conn.request("GET", "/load", headers=[("X-Forwarded-For", ip)])
                rem = r.header("X-RateLimit-Remaining")
                with self.lock:
                    self.seen.append((time.monotonic(), r.status, one,
                                      int(rem) if rem else None, r.header("X-Request-Id")))
                if (r.header("Connection") or "").lower() == "close":
                    conn.close()
                    conn = None
            except (OSError, AssertionError):
                with self.lock:
                    self.errors += 1
                if conn is not None:
                    conn.close()
                conn = None
        if conn is not None:
            conn.close()

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for t in self.threads:
            t.join(30)
        return False


def gap_decisions(fgs):
    out = dict.fromkeys(GAP_OUTCOMES, 0)
    for fg in fgs:
        text = metrics(fg)
        for o in GAP_OUTCOMES:
            out[o] += metric(text, "flowgate_ratelimit_decisions_total",
                             '{tier="anonymous",outcome="%s"}' % o) or 0
    return out


def wait_until(cond, timeout, step=0.01):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if cond():
                return time.monotonic()
        except (OSError, AssertionError):
            pass
        time.sleep(step)
    return None


def redis_decided(fg):
    """Request ids of the decisions Redis made (the shared access log)."""
    out = set()
    with open(fg.access_path, errors="replace") as f:
        for line in f:
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if rec.get("ratelimit") in ("allowed", "limited"):
                out.add(rec["request_id"])
    return out


def lost_admissions(one, decided):
    """What the new primary forgot of the identity's admissions (see top):
    the Redis decisions either side of the longest pause between two of
    them (the failover), the last 50 before and the first 50 after it."""
    dec = [s for s in one if s[4] in decided and s[3] is not None]
    if len(dec) < 2:
        return None
    i = max(range(len(dec) - 1), key=lambda k: dec[k + 1][0] - dec[k][0])
    low = min(dec[max(0, i - 49):i + 1], key=lambda s: s[3])
    high = max(dec[i + 1:i + 51], key=lambda s: s[3])
    refill = (high[0] - low[0]) * LIMIT / WINDOW
    return {"remaining_before": low[3], "remaining_after": high[3],
            "refill": round(refill, 1), "lost": round(high[3] - low[3] + 1 - refill, 1),
            "redis_pause_s": round(dec[i + 1][0] - dec[i][0], 3)}


def instance(cl, up, mode):
    cfg = sentinel_config(cl, tiers={"anonymous": {"limit": LIMIT, "window": WINDOW}},
                          on_redis_failure=mode)
    cfg = merge(cfg, {"workers": 2, "log": {"level": "info"}})
    return Flowgate(cfg, upstream=up, env={"FG_SENTINEL_PASSWORD": SENTINEL_PASSWORD})


def one_mode(mode):
    with Cluster() as cl, Upstream(record=False) as up:
        with instance(cl, up, mode) as a, instance(cl, up, mode) as b, \
                instance(cl, up, mode) as c:
            fgs = (a, b, c)
            new = cl.addr(cl.nodes[1])
            for fg in fgs:
                wait_until(lambda: readyz(fg).get("redis") == "up", 20)
            with Load(fgs) as load:
                time.sleep(BEFORE_S)
                before = gap_decisions(fgs)
                t_kill = time.monotonic()
                cl.nodes[0].kill()
                t_sent = wait_until(lambda: cl.named_primary() == new, 60)
                t_up = wait_until(lambda: all(readyz(fg).get("redis") == "up" and
                                              readyz(fg).get("redis_primary") == new
                                              for fg in fgs), 60)
                after = gap_decisions(fgs)
                time.sleep(AFTER_S)
            seen = sorted(load.seen)
            errors = load.errors
            decided = redis_decided(a)
    one = [s for s in seen if s[2]]
    gap = [s for s in seen if t_kill <= s[0] <= (t_up or t_kill)]
    by_status = {}
    for s in gap:
        by_status[str(s[1])] = by_status.get(str(s[1]), 0) + 1
    return {
        "mode": mode,
        "sentinel_s": round(t_sent - t_kill, 3) if t_sent else None,
        "recover_s": round(t_up - t_kill, 3) if t_up else None,
        "gap_decisions": {o: int(after[o] - before[o]) for o in GAP_OUTCOMES},
        "gap_statuses": by_status,
        "requests": len(seen),
        "client_errors": errors,
        "one_identity": dict(
            sent=len(one), admitted_in_gap=sum(1 for s in one if s[1] == 200 and
                                               t_kill <= s[0] <= (t_up or t_kill)),
            **(lost_admissions(one, decided) or {})),
    }


def main():
    modes = sys.argv[1:] or ["local", "allow", "deny"]
    tmp = tempfile.mkdtemp(prefix="fg-failover-")
    os.environ["FG_TEST_TMP"] = tmp
    if not os.path.isfile(harness.binary()):
        sys.exit("build the release binary first: make build/flowgate")
    try:
        for mode in modes:
            print(json.dumps(one_mode(mode)), flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
