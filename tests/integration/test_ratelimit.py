"""Redis-backed tiered rate limits: exact bursts per
tier and endpoint, the 429 and its headers, limits shared by instances through
one Redis, the steady admitted rate, and each on_redis_failure mode while
Redis is killed, paused and restarted.

Every test starts its own redis-server (harness.RedisServer). Tokens are
HS256 JWTs made here with the standard library, signed with the secret the
harness gives flowgate.
"""

import hashlib
import re
import threading
import time

from harness import (Flowgate, RedisServer, Upstream, access_token, assert_error, check, eq, fail,
                     plain_request)

TIMEOUT = 90

REDIS_PASSWORD = "redis-test-password-0123"

DOWN_AFTER_TIMEOUTS = 3  # RL_DOWN_AFTER_TIMEOUTS (gateway/rl_redis.h)


# ------------------------------------------------------------------ helpers


def bearer(sub, tier=None):
    return [("Authorization", "Bearer " + access_token(sub, tier))]


def rl_config(server, tiers=None, endpoints=(), routes=None, env_password=False, **over):
    rl = {
        "redis": {"address": server.addr, "timeout_ms": 250, "key_prefix": "fgtest:"},
        "on_redis_failure": "local",
        "trusted_proxies": ["127.0.0.1/32"],
        "tiers": tiers or {"anonymous": {"limit": 5, "window": 60}},
        "endpoints": tuple(endpoints),
    }
    if env_password:
        rl["redis"]["password_env"] = "FG_REDIS_PASSWORD"
    rl.update(over)
    cfg = {"rate_limit": rl}
    if routes is not None:
        cfg["routes"] = routes
    return cfg


def readyz(fg):
    r = plain_request(fg.admin_port, "GET", "/readyz", host="127.0.0.1", timeout=5.0)
    eq(r.status, 200, "/readyz status")
    return r.json()


def wait_redis(fg, state, timeout=15.0):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = readyz(fg).get("redis")
        if last == state:
            return
        time.sleep(0.05)
    fail("/readyz did not report redis %r within %.0f s (last %r)" % (state, timeout, last))


def metrics(fg):
    r = plain_request(fg.admin_port, "GET", "/metrics", host="127.0.0.1", timeout=5.0)
    eq(r.status, 200, "/metrics status")
    return r.body.decode()


def metric(text, name, labels=""):
    m = re.search(r"^%s%s (\S+)$" % (re.escape(name), re.escape(labels)), text, re.M)
    return float(m.group(1)) if m else None


def from_ip(ip):
    return [("X-Forwarded-For", ip)]


def burst(fg, n, path="/", headers=(), method="GET", body=None):
    """N requests on keep-alive connections (a new one after a response that
    closes, e.g. a 429 to a request whose body was not read); returns the responses."""
    out = []
    c = fg.tls()
    try:
        for _ in range(n):
            r = c.request(method, path, headers=list(headers), body=body)
            out.append(r)
            if "close" in (r.header("Connection") or "").lower():
                c.close()
                c = fg.tls()
    finally:
        c.close()
    return out


def rl_headers(r):
    vals = []
    for name in ("X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset"):
        eq(len(r.all(name)), 1, "number of %s headers on a %d" % (name, r.status))
        v = r.header(name)
        check(v.isdigit(), "%s is not an integer: %r" % (name, v))
        vals.append(int(v))
    return tuple(vals)


def assert_exact_burst(rs, limit, window):
    """RS: LIMIT admitted with Remaining counting down, then 429s."""
    for i, r in enumerate(rs[:limit]):
        eq(r.status, 200, "status of request %d of a burst of %d" % (i + 1, limit))
        lim, rem, reset = rl_headers(r)
        eq(lim, limit, "X-RateLimit-Limit")
        eq(rem, limit - 1 - i, "X-RateLimit-Remaining after request %d" % (i + 1))
        check(1 <= reset <= window, "X-RateLimit-Reset %d outside 1..%d" % (reset, window))
    for r in rs[limit:]:
        assert_limited(r, limit, window)


def assert_limited(r, limit, window):
    assert_error(r, 429, "rate_limited")
    lim, rem, reset = rl_headers(r)
    eq(lim, limit, "X-RateLimit-Limit on the 429")
    eq(rem, 0, "X-RateLimit-Remaining on the 429")
    retry = r.header("Retry-After")
    check(retry is not None and retry.isdigit(), "Retry-After missing or not seconds: %r" % retry)
    interval = -(-window // limit)
    check(1 <= int(retry) <= interval,
          "Retry-After %s outside 1..%d (one emission interval)" % (retry, interval))
    check(int(retry) <= reset <= window, "X-RateLimit-Reset %d not in Retry-After..window" % reset)


# ------------------------------------------------------------------ tests

def test_ratelimit_anonymous_burst_is_exact():
    """Anonymous by IP: LIMIT admitted, LIMIT+1 refused with consistent headers;
    AUTH and SELECT on the way; later refusals come from the refusal cache;
    a flushed script cache is reloaded (NOSCRIPT) without failing a request."""
    with RedisServer(password=REDIS_PASSWORD) as redis, Upstream() as up, \
            Flowgate(rl_config(redis, env_password=True,
                               redis={"address": redis.addr, "database": 3, "timeout_ms": 250,
                                      "key_prefix": "fgtest:",
                                      "password_env": "FG_REDIS_PASSWORD"}),
                     upstream=up, env={"FG_REDIS_PASSWORD": REDIS_PASSWORD}) as fg:
        wait_redis(fg, "up")
        rs = burst(fg, 7, "/a")
        assert_exact_burst(rs, 5, 60)
        eq(len(up.requests()), 5, "requests that reached the upstream")
        for r in rs:
            check(not r.has("RateLimit-Policy"), "IETF headers sent while ietf_headers is off")
        stats = redis.command("INFO", "commandstats")
        m = re.search(r"cmdstat_evalsha:calls=(\d+)", stats)
        eq(int(m.group(1)) if m else 0, 6, "EVALSHA calls (the 7th is refused from the cache)")
        check("db3:keys=1" in redis.command("INFO", "keyspace"), "the key is not in database 3")
        # another identity (a trusted proxy's client), after SCRIPT FLUSH
        redis.command("SCRIPT", "FLUSH")
        rs = burst(fg, 6, "/b", headers=from_ip("203.0.113.50"))
        assert_exact_burst(rs, 5, 60)
        text = metrics(fg)
        eq(metric(text, "flowgate_ratelimit_decisions_total",
                  '{tier="anonymous",outcome="allowed"}'), 10.0, "allowed decisions")
        eq(metric(text, "flowgate_ratelimit_decisions_total",
                  '{tier="anonymous",outcome="limited"}'), 3.0, "limited decisions")
        eq(metric(text, "flowgate_redis_errors_total"), 0.0, "redis errors")
        check((metric(text, "flowgate_redis_call_duration_seconds_count") or 0) >= 10,
              "redis call latency not counted")
        eq(readyz(fg)["redis"], "up", "readyz redis")
        outcomes = [e.get("ratelimit") for e in fg.access_log()]
        eq((outcomes.count("allowed"), outcomes.count("limited")), (10, 3),
           "rate-limit outcomes in the access log")


def test_ratelimit_tiers_by_token():
    """Authenticated by sub, premium and named tiers by the tier claim, an
    unknown claim value as authenticated; each burst exact and independent."""
    tiers = {"anonymous": {"limit": 2, "window": 60}, "authenticated": {"limit": 4, "window": 60},
             "premium": {"limit": 6, "window": 60}, "gold": {"limit": 3, "window": 60}}
    routes = ({"host": "", "path": "/", "upstream": "api", "auth": "optional"},)
    with RedisServer() as redis, Upstream(record=False) as up, \
            Flowgate(rl_config(redis, tiers=tiers, routes=routes), upstream=up) as fg:
        wait_redis(fg, "up")
        assert_exact_burst(burst(fg, 3, "/x"), 2, 60)
        assert_exact_burst(burst(fg, 5, "/x", bearer("alice")), 4, 60)
        assert_exact_burst(burst(fg, 7, "/x", bearer("bob", "premium")), 6, 60)
        assert_exact_burst(burst(fg, 4, "/x", bearer("carol", "gold")), 3, 60)
        assert_exact_burst(burst(fg, 5, "/x", bearer("dave", "platinum")), 4, 60)
        # alice's quota is hers alone, whatever her address
        assert_limited(burst(fg, 1, "/x", bearer("alice") + from_ip("198.51.100.7"))[0], 4, 60)
        text = metrics(fg)
        eq(metric(text, "flowgate_ratelimit_decisions_total",
                  '{tier="premium",outcome="allowed"}'), 6.0, "premium admitted")
        eq(metric(text, "flowgate_ratelimit_decisions_total",
                  '{tier="authenticated",outcome="limited"}'), 3.0, "authenticated refused")


def test_ratelimit_endpoint_limits():
    """Endpoint limits by path prefix and method, with the tier limit: the
    headers describe the tighter one; a refused request uses no tier quota;
    rate_limit = false drops the tier limit but not endpoint limits; key
    "user" without a user keys by IP; IETF headers when enabled."""
    endpoints = (
        {"path": "/api/auth/login", "methods": ["POST"], "limit": 3, "window": 60, "key": "ip"},
        {"path": "/gen", "limit": 2, "window": 60, "key": "user"},
        {"path": "/health/deep", "limit": 1, "window": 60, "key": "ip"},
    )
    routes = ({"host": "", "path": "/", "upstream": "api", "auth": "optional"},
              {"host": "", "path": "/health", "upstream": "api", "auth": "none",
               "rate_limit": False})
    tiers = {"anonymous": {"limit": 50, "window": 60}, "authenticated": {"limit": 50, "window": 60}}
    with RedisServer() as redis, Upstream(record=False) as up, \
            Flowgate(rl_config(redis, tiers=tiers, endpoints=endpoints, routes=routes,
                               ietf_headers=True), upstream=up) as fg:
        wait_redis(fg, "up")
        rs = burst(fg, 5, "/api/auth/login", method="POST", body="{}")
        assert_exact_burst(rs, 3, 60)
        eq(rs[0].header("RateLimit-Policy"), "3;w=60", "RateLimit-Policy")
        check(re.match(r"^limit=3, remaining=2, reset=\d+$", rs[0].header("RateLimit") or ""),
              "RateLimit header: %r" % rs[0].header("RateLimit"))
        # GET is not limited by the POST endpoint; the two refused POSTs used no tier quota
        r = burst(fg, 1, "/api/auth/login")[0]
        eq(r.status, 200, "GET on the login path")
        eq(rl_headers(r)[:2], (50, 50 - 3 - 1), "tier limit after 3 admitted POSTs and 1 GET")
        eq(burst(fg, 1, "/api/auth/loginx", method="POST", body="{}")[0].status, 200,
           "a path that only shares a prefix string")
        # rate_limit = false: no tier limit, no headers; the endpoint limit still applies
        r = burst(fg, 1, "/health")[0]
        eq(r.status, 200, "/health")
        check(not r.has("X-RateLimit-Limit"), "rate-limit headers on a rate_limit = false route")
        assert_exact_burst(burst(fg, 2, "/health/deep"), 1, 60)
        # key "user": anonymous clients by IP, users by sub
        assert_exact_burst(burst(fg, 3, "/gen", headers=from_ip("192.0.2.1")), 2, 60)
        assert_exact_burst(burst(fg, 3, "/gen", headers=bearer("erin")), 2, 60)
        eq(burst(fg, 1, "/gen", headers=bearer("frank"))[0].status, 200, "another user on /gen")


def test_ratelimit_hashed_key_keeps_prefix():
    """An identity too long for a hash tag (a long sub) is tagged by its hash;
    its key stays under the configured key_prefix (so that deployments sharing
    a Redis, ACL key patterns and SCAN by prefix keep to it), and limits
    exactly. (A whole key too long, hashed too, needs a longer tier name than
    a token can pick: the unit tests cover it.)"""
    prefix = "fgtest:" + "p" * 143 + ":"
    sub = "s" * 240
    tiers = {"anonymous": {"limit": 2, "window": 60}, "authenticated": {"limit": 3, "window": 60}}
    routes = ({"host": "", "path": "/", "upstream": "api", "auth": "optional"},)
    with RedisServer() as redis, Upstream(record=False) as up, \
            Flowgate(rl_config(redis, tiers=tiers, routes=routes,
                               redis={"address": redis.addr, "timeout_ms": 250,
                                      "key_prefix": prefix}), upstream=up) as fg:
        wait_redis(fg, "up")
        assert_exact_burst(burst(fg, 4, "/x", bearer(sub)), 3, 60)
        tag = "h:" + hashlib.sha256(b"u:" + sub.encode() + b"\0").hexdigest()
        eq(redis.command("KEYS", "*"), [prefix + "rl:{" + tag + "}:t:authenticated"],
           "keys in Redis")


def test_ratelimit_three_instances_share_one_redis():
    """One identity's burst spread over three instances: exactly LIMIT in total."""
    with RedisServer() as redis, Upstream(record=False) as up, \
            Flowgate(rl_config(redis), upstream=up) as a, \
            Flowgate(rl_config(redis), upstream=up) as b, \
            Flowgate(rl_config(redis), upstream=up) as c:
        for fg in (a, b, c):
            wait_redis(fg, "up")
        conns = [fg.tls() for fg in (a, b, c)]
        try:
            statuses = []
            for i in range(12):
                r = conns[i % 3].request("GET", "/shared", headers=from_ip("203.0.113.77"))
                statuses.append(r.status)
                if r.status == 429:
                    assert_limited(r, 5, 60)
        finally:
            for conn in conns:
                conn.close()
        eq(statuses, [200] * 5 + [429] * 7, "statuses across three instances")
        # concurrently, from three threads at once, for a fresh identity
        results = []
        lock = threading.Lock()

        def hammer(fg):
            with fg.tls() as conn:
                for _ in range(6):
                    s = conn.request("GET", "/race", headers=from_ip("203.0.113.78")).status
                    with lock:
                        results.append(s)

        threads = [threading.Thread(target=hammer, args=(fg,)) for fg in (a, b, c)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        eq(len(results), 18, "responses from the concurrent burst")
        eq(results.count(200), 5, "admitted in total across three instances")


def test_ratelimit_steady_rate():
    """limit 5 per 1 s, hammered for 3 s: 5 + 3 * 5 admitted (GCRA steady rate)."""
    tiers = {"anonymous": {"limit": 5, "window": 1}}
    with RedisServer() as redis, Upstream(record=False) as up, \
            Flowgate(rl_config(redis, tiers=tiers), upstream=up) as fg:
        wait_redis(fg, "up")
        admitted = 0
        sent = 0
        with fg.tls() as conn:
            start = time.monotonic()
            while time.monotonic() - start < 3.0:
                r = conn.request("GET", "/steady")
                sent += 1
                admitted += r.status == 200
                check(r.status in (200, 429), "status %d" % r.status)
            elapsed = time.monotonic() - start
        expected = 5 + elapsed * 5
        check(sent > 3 * expected, "too few requests to saturate the limit (%d sent)" % sent)
        check(abs(admitted - expected) <= 2,
              "admitted %d in %.2f s, expected %.1f (limit 5 + 5/s)" % (admitted, elapsed, expected))


def test_ratelimit_far_future_tat_is_clamped():
    """A stored TAT far ahead of Redis's clock (a failover to a primary whose
    clock is behind; here a key set by hand a day ahead) costs the identity
    one interval, not a day: refused with a Retry-After and Reset within the
    limit's own window, then admitted again once an interval has passed."""
    tiers = {"anonymous": {"limit": 2, "window": 1}}
    with RedisServer() as redis, Upstream(record=False) as up, \
            Flowgate(rl_config(redis, tiers=tiers), upstream=up) as fg:
        wait_redis(fg, "up")
        sec, usec = redis.command("TIME")
        day_ahead = (int(sec) * 1000000 + int(usec)) * 1000 + 86400 * 10 ** 9
        key = "fgtest:rl:{ip:203.0.113.90}:t:anonymous"
        redis.command("SET", key, str(day_ahead))
        r = burst(fg, 1, "/far", from_ip("203.0.113.90"))[0]
        assert_limited(r, 2, 1)
        check(int(redis.command("GET", key)) < day_ahead, "the TAT a day ahead was kept")
        check(0 < redis.command("PTTL", key) <= 2000, "the clamped key expires: PTTL %r"
              % redis.command("PTTL", key))
        time.sleep(0.6)  # more than one interval (0.5 s): lets the limit admit again
        eq(burst(fg, 1, "/far", from_ip("203.0.113.90"))[0].status, 200,
           "status one interval after the clamp")


def crc16(data):
    """CRC16-CCITT (XMODEM), as Redis Cluster hashes a key (HASH_SLOT)."""
    crc = 0
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
            crc &= 0xffff
    return crc


def cluster_slot(key):
    """Redis Cluster's slot of KEY: its hash tag (the text between the first
    "{" and the next "}", when not empty) or the whole key, CRC16 mod 16384."""
    start = key.find("{")
    if start >= 0:
        end = key.find("}", start + 1)
        if end > start + 1:
            key = key[start + 1:end]
    return crc16(key.encode()) % 16384


def test_ratelimit_keys_carry_hash_tag():
    """Every key carries its identity as a Redis Cluster hash tag, so the
    limits of one identity (tier and endpoint) share one slot and one
    request's script call needs no other; an endpoint keyed by address on an
    authenticated request is the one case with two identities."""
    endpoints = ({"path": "/gen", "limit": 5, "window": 60, "key": "user"},
                 {"path": "/login", "limit": 5, "window": 60, "key": "ip"})
    tiers = {"anonymous": {"limit": 50, "window": 60}, "authenticated": {"limit": 50, "window": 60}}
    routes = ({"host": "", "path": "/", "upstream": "api", "auth": "optional"},)
    with RedisServer() as redis, Upstream(record=False) as up, \
            Flowgate(rl_config(redis, tiers=tiers, endpoints=endpoints, routes=routes),
                     upstream=up) as fg:
        wait_redis(fg, "up")
        eq(burst(fg, 1, "/gen", from_ip("192.0.2.1"))[0].status, 200, "anonymous /gen")
        eq(burst(fg, 1, "/gen", bearer("bob"))[0].status, 200, "bob's /gen")
        keys = sorted(redis.command("KEYS", "*"))
        eq(keys, ["fgtest:rl:{ip:192.0.2.1}:e0", "fgtest:rl:{ip:192.0.2.1}:t:anonymous",
                  "fgtest:rl:{u:bob}:e0", "fgtest:rl:{u:bob}:t:authenticated"], "keys in Redis")
        eq(cluster_slot(keys[0]), cluster_slot(keys[1]), "slots of the anonymous request's keys")
        eq(cluster_slot(keys[2]), cluster_slot(keys[3]), "slots of bob's request's keys")
        check(cluster_slot(keys[0]) != cluster_slot(keys[2]), "two identities, one slot")
        # bob on an endpoint keyed by address: his tier key and the address's key
        eq(burst(fg, 1, "/login", bearer("bob") + from_ip("192.0.2.7"))[0].status, 200,
           "bob's /login")
        eq(redis.command("EXISTS", "fgtest:rl:{ip:192.0.2.7}:e1"), 1, "the address's key")
        eq(len(redis.command("KEYS", "*")), 5, "keys after bob's /login")


def redis_failure_phases(mode, expect_down, expect_paused):
    """Redis killed, restarted, paused and resumed under on_redis_failure MODE.
    EXPECT_DOWN(fg, ip) and EXPECT_PAUSED(fg, ip) check what clients get."""
    tiers = {"anonymous": {"limit": 3, "window": 60}}
    with RedisServer() as redis, Upstream(record=False) as up, \
            Flowgate(rl_config(redis, tiers=tiers, on_redis_failure=mode), upstream=up) as fg:
        wait_redis(fg, "up")
        assert_exact_burst(burst(fg, 4, "/p", from_ip("198.51.100.1")), 3, 60)
        redis.kill()
        wait_redis(fg, "down")
        expect_down(fg, "198.51.100.2")
        redis.start()
        wait_redis(fg, "up")
        # recovered without a restart of flowgate: Redis decides again
        assert_exact_burst(burst(fg, 4, "/p", from_ip("198.51.100.5")), 3, 60)
        redis.pause()  # the link goes down after DOWN_AFTER_TIMEOUTS timeouts in a row
        t0 = time.monotonic()
        expect_paused(fg, "198.51.100.3")
        check(time.monotonic() - t0 < 10, "requests stalled behind a paused Redis")
        check(readyz(fg)["redis"] == "down", "readyz while Redis is paused")
        redis.resume()
        wait_redis(fg, "up")
        assert_exact_burst(burst(fg, 4, "/p", from_ip("198.51.100.4")), 3, 60)
        text = metrics(fg)
        check(metric(text, "flowgate_redis_errors_total") >= 2, "redis errors not counted")
        return text


def test_ratelimit_redis_failure_local():
    def limited_here(fg, ip):
        assert_exact_burst(burst(fg, 4, "/p", from_ip(ip)), 3, 60)

    text = redis_failure_phases("local", limited_here, limited_here)
    eq(metric(text, "flowgate_ratelimit_decisions_total",
              '{tier="anonymous",outcome="local_allowed"}'), 6.0, "local admissions")


def test_ratelimit_redis_failure_allow():
    def admitted(fg, ip):
        for r in burst(fg, 5, "/p", from_ip(ip)):
            eq(r.status, 200, "status with Redis unavailable and on_redis_failure = allow")

    text = redis_failure_phases("allow", admitted, admitted)
    eq(metric(text, "flowgate_ratelimit_decisions_total",
              '{tier="anonymous",outcome="failed_open"}'), 10.0, "fail-open admissions")


def test_ratelimit_redis_failure_deny():
    def denied(fg, ip):
        for r in burst(fg, DOWN_AFTER_TIMEOUTS, "/p", from_ip(ip)):
            assert_error(r, 503, "unavailable")

    text = redis_failure_phases("deny", denied, denied)
    eq(metric(text, "flowgate_ratelimit_decisions_total",
              '{tier="anonymous",outcome="failed_closed"}'), 2.0 * DOWN_AFTER_TIMEOUTS,
       "503 answers")


def test_ratelimit_off_without_group():
    """No rate_limit group: no headers, and /readyz says redis is disabled."""
    with Upstream(record=False) as up, Flowgate(upstream=up) as fg:
        r = fg.get("/")
        eq(r.status, 200, "status")
        check(not r.has("X-RateLimit-Limit"), "rate-limit headers without a rate_limit group")
        eq(readyz(fg)["redis"], "disabled", "readyz redis")


def gcra_script():
    """The Lua source, read from the C string literal in gateway/ratelimit.c."""
    import codecs
    import os
    src = open(os.path.join(os.path.dirname(__file__), "..", "..", "gateway",
                            "ratelimit.c")).read()
    body = src.split("static const char rl_script[] =", 1)[1].split(";\n", 1)[0]
    return "".join(codecs.decode(p, "unicode_escape") for p in re.findall(r'"((?:[^"\\]|\\.)*)"',
                                                                             body))


def derive(plan, ahead):
    """What flowgate makes of one plan's reply (rl_gcra_decide in
    gateway/ratelimit.c, at now = 0): per limit, how far its TAT was ahead
    (ns) becomes admits (0/1), remaining, reset and retry-after (ms, rounded
    up), as a flat list of 4 numbers per limit."""
    eq(len(ahead), len(plan), "one number per limit")
    tau = [interval * (limit - 1) for _, interval, limit in plan]
    for (_, interval, limit), t, v in zip(plan, tau, ahead):
        check(isinstance(v, int) and 0 <= v <= t + interval, "ahead %r out of range" % v)
    admits = [v <= t for v, t in zip(ahead, tau)]
    out = []
    for (_, interval, limit), t, v, ok in zip(plan, tau, ahead, admits):
        after = v + interval if all(admits) else v
        rem = max(0, min(limit, (t + interval - after) // interval))
        retry = 0 if ok else v - t
        out += [int(ok), rem, -(-after // 1000000), -(-retry // 1000000)]
    return out


def evalsha(redis, sha, *plans):
    """One EVALSHA of the batched script deciding PLANS in order, each a list of
    (key, interval ns, limit); returns the list of per-plan decisions (derive)."""
    keys, args = [], []
    for plan in plans:
        keys += [k for k, _, _ in plan]
        args += [len(plan), 2 * len(plan)]
        for _, interval, limit in plan:
            args += [interval, interval * limit]
    out = redis.command("EVALSHA", sha, len(keys), *(keys + args))
    eq(len(out), len(plans), "one reply per plan")
    for plan, r in zip(plans, out):
        check(isinstance(r, int) if len(plan) == 1 else isinstance(r, list),
              "a one-limit plan gets a number, others a list: %r" % r)
    return [derive(plan, r if isinstance(r, list) else [r]) for plan, r in zip(plans, out)]


def eval1(redis, sha, *limits):
    """One plan alone (a batch of one)."""
    return evalsha(redis, sha, list(limits))[0]


def test_ratelimit_script_matches_c_cases():
    """The script's arithmetic on Redis's clock, with the cases the C unit tests
    (tests/unit/test_ratelimit.c) give the local limiter: exact burst,
    retry-after of one interval, reset of the whole window, all-or-nothing,
    nanoseconds that add up, a TAT stored in whole microseconds."""
    script = gcra_script()
    s = 1000000000  # intervals are given in nanoseconds
    with RedisServer() as redis:
        sha = redis.command("SCRIPT", "LOAD", script)
        rs = [eval1(redis, sha, ("k", 12 * s, 5)) for _ in range(6)]
        for i, r in enumerate(rs[:5]):
            eq(r[:2], [1, 4 - i], "admits, remaining of request %d" % (i + 1))
            check((i + 1) * 12000 - 1000 <= r[2] <= (i + 1) * 12000, "reset ms %r" % r)
            eq(r[3], 0, "retry-after of an admitted request")
        eq(rs[0][2], 12000, "reset after the first request: one interval")
        eq(rs[5][:2], [0, 0], "request 6 of a burst of 5")
        check(59000 <= rs[5][2] <= 60000, "reset on refusal %r" % rs[5])
        check(11000 <= rs[5][3] <= 12000, "retry-after on refusal %r" % rs[5])
        check(59000 <= redis.command("PTTL", "k") <= 61000,
              "key expires within the second after its TAT")
        check(re.match(r"^\d{19}$", redis.command("GET", "k")),
              "TAT stored as integer nanoseconds: %r" % redis.command("GET", "k"))
        # all or nothing: limit b refuses, limit a keeps its quota
        for _ in range(2):
            r = eval1(redis, sha, ("a", 6 * s, 10), ("b", 30 * s, 2))
            eq([r[0], r[4]], [1, 1], "both admit")
        before = redis.command("GET", "a")
        r = eval1(redis, sha, ("a", 6 * s, 10), ("b", 30 * s, 2))
        eq(r[0:2], [1, 8], "limit a admits, remaining unchanged")
        eq(r[4:6], [0, 0], "limit b refuses")
        eq(r[3], 0, "no retry-after for the admitting limit")
        check(29000 <= r[7] <= 30000, "retry-after of b %r" % r)
        eq(redis.command("GET", "a"), before, "a refused request consumed limit a's quota")
        # a limit of one per window
        r = [eval1(redis, sha, ("one", 60 * s, 1)) for _ in range(2)]
        eq(r[0][:2], [1, 0], "limit 1: first admitted")
        eq(r[1][:2], [0, 0], "limit 1: second refused")
        check(59000 <= r[1][3] <= 60000, "limit 1: retry-after %r" % r[1])
        # 7 per 3 s (T = 428571428 ns): the nanoseconds of the stored TAT add up
        # exactly, 428 more each request (whole microseconds lost 3 us a burst)
        for i in range(1, 8):
            r = eval1(redis, sha, ("seven", 3 * s // 7, 7))
            eq(r[:2], [1, 7 - i], "7 per 3 s: request %d" % i)
            eq(redis.command("GET", "seven")[-3:], "%03d" % (i * (3 * s // 7) % 1000),
               "nanoseconds of the TAT after request %d" % i)
        check(2900 <= r[2] <= 3000, "7 per 3 s: reset after the burst %r" % r)
        eq(eval1(redis, sha, ("seven", 3 * s // 7, 7))[:2], [0, 0], "7 per 3 s: request 8")
        # a TAT further ahead than a decision can leave it (a failover to a
        # primary whose clock is behind, a key set by hand) reads as the full
        # burst period ahead, and is stored so: the wait is one interval, not a day
        sec, usec = redis.command("TIME")
        now_ns = (int(sec) * 1000000 + int(usec)) * 1000
        redis.command("SET", "ahead", str(now_ns + 86400 * s))
        r = eval1(redis, sha, ("ahead", 12 * s, 5))
        eq(r[:2], [0, 0], "a TAT a day ahead refuses")
        check(59000 <= r[2] <= 60000, "reset from a TAT a day ahead: the window %r" % r)
        check(11000 <= r[3] <= 12000, "retry-after from a TAT a day ahead: one interval %r" % r)
        stored = int(redis.command("GET", "ahead"))
        check(now_ns + 60 * s <= stored <= now_ns + 61 * s, "clamped TAT stored: %d" % stored)
        check(0 < redis.command("PTTL", "ahead") <= 61000, "clamped key expires %r"
              % redis.command("PTTL", "ahead"))
        eq(eval1(redis, sha, ("ahead", 12 * s, 5), ("fresh", 6 * s, 10))[4:6], [1, 10],
           "a clamped limit refuses without consuming the other's quota")
        redis.command("SET", "junk", "x")
        eq(eval1(redis, sha, ("junk", 12 * s, 5))[:2], [1, 4], "a value that is not a TAT")


def test_ratelimit_script_batch_decides_in_order():
    """Several requests in one script call are decided one after the other, each
    seeing what the earlier ones stored: a batch gives every request the answer
    it would get alone, in the order given (a shared key's burst counts down
    across the batch, a refusal in the batch consumes nothing, other keys and
    multi-limit plans keep their own counts), and each key is read and written
    once per batch however many of its requests the batch holds."""
    script = gcra_script()
    s = 1000000000
    with RedisServer() as redis:
        sha = redis.command("SCRIPT", "LOAD", script)
        # seven requests of one identity (limit 5) in one batch, with another
        # identity's requests between them
        plans = []
        for i in range(7):
            plans.append([("shared", 12 * s, 5)])
            if i % 2 == 0:
                plans.append([("other", 12 * s, 5)])
        redis.command("CONFIG", "RESETSTAT")
        rs = evalsha(redis, sha, *plans)
        stats = redis.command("INFO", "commandstats")
        # eleven requests, two keys: each read once and written once
        for cmd in ("get", "set"):
            m = re.search(r"cmdstat_%s:calls=(\d+)" % cmd, stats)
            eq(int(m.group(1)) if m else 0, 2, "%s calls for a batch with two keys" % cmd.upper())
        shared = [r for p, r in zip(plans, rs) if p[0][0] == "shared"]
        other = [r for p, r in zip(plans, rs) if p[0][0] == "other"]
        eq([r[:2] for r in shared], [[1, 4], [1, 3], [1, 2], [1, 1], [1, 0], [0, 0], [0, 0]],
           "admits, remaining of the shared key's requests in batch order")
        for i, r in enumerate(shared[:5]):
            check((i + 1) * 12000 - 1000 <= r[2] <= (i + 1) * 12000, "reset ms %r" % r)
        check(11000 <= shared[5][3] <= 12000, "retry-after of the first refusal %r" % shared[5])
        eq(shared[5], shared[6], "a refusal in the batch consumed nothing")
        eq([r[:2] for r in other], [[1, 4], [1, 3], [1, 2], [1, 1]], "the other identity")
        # the same batch again, one request at a time, on fresh keys: same answers
        for p in plans:
            p[0] = ("alone:" + p[0][0],) + p[0][1:]
        alone = [eval1(redis, sha, *p) for p in plans]
        eq([r[:2] for r in alone], [r[:2] for r in rs], "one batch and one call each agree")
        # multi-limit plans sharing a key, all or nothing inside a batch:
        # b (2 per window) refuses the third plan that uses it, and that plan
        # leaves a untouched, so the a-only plan after it sees a's count
        rs = evalsha(redis, sha,
                     [("a", 6 * s, 10), ("b", 30 * s, 2)],
                     [("a", 6 * s, 10), ("b", 30 * s, 2)],
                     [("a", 6 * s, 10), ("b", 30 * s, 2)],
                     [("a", 6 * s, 10)],
                     [("c", 60 * s, 1), ("a", 6 * s, 10)])
        eq([len(r) for r in rs], [8, 8, 8, 4, 8], "4 numbers per limit of each plan")
        eq([(r[0], r[1], r[4], r[5]) for r in rs[:3]], [(1, 9, 1, 1), (1, 8, 1, 0), (1, 8, 0, 0)],
           "a, b of the three two-limit plans")
        eq(rs[3][:2], [1, 7], "a alone after the refused plan: its third use")
        eq([rs[4][0], rs[4][1], rs[4][4], rs[4][5]], [1, 0, 1, 6], "c and a of the last plan")


# ------------------------------------------------------------------ lifecycle
#
# A request dies while its Redis call is pending; Redis goes away with calls
# pending; the worker stops with calls pending. Each must leave nothing for a
# late reply or a NULL callback to touch (the harness fails on any sanitizer
# report), and must not keep the worker from stopping.

def send_and_wait(fg, n, ip_base, path="/p"):
    """N connections, each with one request sent and no answer read yet."""
    from harness import build_request
    conns = []
    for i in range(n):
        c = fg.tls()
        c.send(build_request("GET", path, headers=from_ip("%s.%d" % (ip_base, i + 1))))
        conns.append(c)
    time.sleep(0.3)  # let the requests reach the rate-limit stage (not an assertion)
    return conns


def test_ratelimit_client_gone_then_late_reply():
    """Clients close while Redis is paused; Redis then answers the detached calls."""
    tiers = {"anonymous": {"limit": 3, "window": 60}}
    with RedisServer() as redis, Upstream(record=False) as up, \
            Flowgate(rl_config(redis, tiers=tiers,
                               redis={"address": redis.addr, "timeout_ms": 3000,
                                      "key_prefix": "fgtest:"}), upstream=up) as fg:
        wait_redis(fg, "up")
        redis.pause()
        for c in send_and_wait(fg, 4, "198.51.100"):
            c.close()
        time.sleep(0.2)
        redis.resume()
        wait_redis(fg, "up")
        assert_exact_burst(burst(fg, 4, "/p", from_ip("203.0.113.9")), 3, 60)
        check(fg.alive(), "flowgate died")


def test_ratelimit_reused_records_ignore_late_replies():
    """Clients close while Redis is paused: their decision records go back to
    the worker's free list with their calls still pending, and the next
    requests reuse them. When Redis resumes, the late replies to the departed
    requests come first and must reach none of the new ones: each new request
    gets its own answer (Remaining 2, 1, 0, then a 429)."""
    from harness import build_request
    tiers = {"anonymous": {"limit": 3, "window": 60}}
    with RedisServer() as redis, Upstream(record=False) as up, \
            Flowgate(rl_config(redis, tiers=tiers,
                               redis={"address": redis.addr, "timeout_ms": 5000,
                                      "key_prefix": "fgtest:"}), upstream=up) as fg:
        wait_redis(fg, "up")
        redis.pause()
        for c in send_and_wait(fg, 4, "198.51.100"):
            c.close()
        time.sleep(0.2)  # let the closes reach flowgate (not an assertion)
        waiting = []
        for _ in range(4):
            c = fg.tls()
            c.send(build_request("GET", "/p", headers=from_ip("203.0.113.20")))
            waiting.append(c)
        time.sleep(0.3)
        redis.resume()
        rs = []
        for c in waiting:
            rs.append(c.read_response())
            c.close()
        eq(sorted(r.status for r in rs), [200, 200, 200, 429], "statuses of the new requests")
        eq(sorted(int(r.header("X-RateLimit-Remaining")) for r in rs if r.status == 200),
           [0, 1, 2], "X-RateLimit-Remaining of the admitted new requests")
        for r in rs:
            if r.status == 429:
                assert_limited(r, 3, 60)
        # the departed requests' calls still ran: each of their clients spent one
        for i in range(1, 5):
            eq(redis.command("EXISTS", "fgtest:rl:{ip:198.51.100.%d}:t:anonymous" % i), 1,
               "key of departed client %d" % i)
        check(fg.alive(), "flowgate died")


def test_ratelimit_redis_killed_with_calls_pending():
    """Redis dies while requests wait: each is decided locally, once."""
    tiers = {"anonymous": {"limit": 3, "window": 60}}
    with RedisServer() as redis, Upstream(record=False) as up, \
            Flowgate(rl_config(redis, tiers=tiers,
                               redis={"address": redis.addr, "timeout_ms": 5000,
                                      "key_prefix": "fgtest:"}), upstream=up) as fg:
        wait_redis(fg, "up")
        redis.pause()
        conns = send_and_wait(fg, 3, "198.51.100")
        gone = send_and_wait(fg, 2, "192.0.2")
        for c in gone:
            c.close()
        redis.kill()
        for c in conns:
            r = c.read_response()
            eq(r.status, 200, "status of a request whose Redis call died with the link")
            eq(r.header("X-RateLimit-Remaining"), "2", "local decision after the link died")
            c.close()
        redis.start()
        wait_redis(fg, "up")
        assert_exact_burst(burst(fg, 4, "/p", from_ip("203.0.113.9")), 3, 60)


def test_ratelimit_stop_with_calls_pending():
    """SIGTERM while requests wait on a stalled Redis: the waiting request is
    answered (its deadline), and the process exits, also when the only pending
    call is one whose client has gone."""
    tiers = {"anonymous": {"limit": 3, "window": 60}}
    with RedisServer() as redis, Upstream(record=False) as up:
        cfg = rl_config(redis, tiers=tiers,
                        redis={"address": redis.addr, "timeout_ms": 1000,
                               "key_prefix": "fgtest:"})
        cfg["shutdown_timeout_ms"] = 60000
        fg = Flowgate(cfg, upstream=up)
        with fg:
            wait_redis(fg, "up")
            redis.pause()
            for c in send_and_wait(fg, 2, "198.51.100"):
                c.close()
            issues = fg.stop()
            check(not issues, "stop with detached calls on a stalled Redis:\n" + "\n".join(issues))
        redis.resume()
        fg = Flowgate(cfg, upstream=up)
        with fg:
            wait_redis(fg, "up")
            redis.pause()
            conns = send_and_wait(fg, 2, "198.51.100")
            fg.proc.send_signal(__import__("signal").SIGTERM)
            for c in conns:
                r = c.read_response()
                eq(r.status, 200, "a request waiting on Redis when the worker stops")
                c.close()
            try:
                rc = fg.proc.wait(timeout=15)
            except __import__("subprocess").TimeoutExpired:
                rc = None
            check(fg.problems() is None, fg.problems() or "")
            check(rc == 0, "exit status %r after SIGTERM with calls pending on a stalled Redis"
                  % rc)
            if rc is not None:
                fg.proc = None  # exited on its own: nothing left for stop()
        redis.resume()


# ------------------------------------------------------------------ batching
#
# Requests whose rate-limit calls are made in the same loop round go to Redis
# as one script call. To have many requests in one round, flowgate is stopped
# (SIGSTOP) while clients send on separate connections, then continued: its
# next loop round finds every connection readable at once.

def evalsha_calls(redis):
    m = re.search(r"cmdstat_evalsha:calls=(\d+)", redis.command("INFO", "commandstats"))
    return int(m.group(1)) if m else 0


def send_while_stopped(fg, conns, requests, before_cont=None):
    """Send REQUESTS[i] on CONNS[i] while flowgate is stopped, run BEFORE_CONT,
    then let flowgate go on."""
    import signal
    fg.proc.send_signal(signal.SIGSTOP)
    try:
        for c, req in zip(conns, requests):
            c.send(req)
        time.sleep(0.2)  # let the bytes reach flowgate's sockets (not an assertion)
        if before_cont is not None:
            before_cont()
    finally:
        fg.proc.send_signal(signal.SIGCONT)


def test_ratelimit_concurrent_requests_share_one_script_call():
    """N requests from N connections in one loop round: fewer than N script
    calls, and still exactly LIMIT admitted for a shared identity, with the
    Remaining each would get alone (4, 3, 2, 1, 0); distinct identities in one
    batch each get their own whole quota."""
    from harness import build_request
    n = 20
    tiers = {"anonymous": {"limit": 5, "window": 60}}
    with RedisServer() as redis, Upstream(record=False) as up, \
            Flowgate(rl_config(redis, tiers=tiers,
                               redis={"address": redis.addr, "timeout_ms": 2000,
                                      "key_prefix": "fgtest:"}), upstream=up) as fg:
        wait_redis(fg, "up")
        for phase, ip in (("shared", lambda i: "203.0.113.40"),
                          ("distinct", lambda i: "198.51.100.%d" % (i + 1))):
            conns = [fg.tls() for _ in range(n)]
            try:
                evals0 = evalsha_calls(redis)
                send_while_stopped(fg, conns, [build_request("GET", "/b", headers=from_ip(ip(i)))
                                               for i in range(n)])
                rs = [c.read_response() for c in conns]
            finally:
                for c in conns:
                    c.close()
            evals = evalsha_calls(redis) - evals0
            check(evals < n, "%s: %d script calls for %d requests in one loop round"
                  % (phase, evals, n))
            if phase == "shared":
                eq(sorted(r.status for r in rs), [200] * 5 + [429] * (n - 5),
                   "statuses of one identity's requests in one batch")
                eq(sorted(rl_headers(r)[1] for r in rs if r.status == 200), [0, 1, 2, 3, 4],
                   "X-RateLimit-Remaining of the admitted requests")
                for r in rs:
                    if r.status == 429:
                        assert_limited(r, 5, 60)
            else:
                eq([r.status for r in rs], [200] * n, "statuses of distinct identities")
                eq([rl_headers(r)[1] for r in rs], [4] * n, "each identity's own quota")
        text = metrics(fg)
        eq(metric(text, "flowgate_redis_batches_total"), float(evalsha_calls(redis)),
           "flowgate_redis_batches_total against Redis's EVALSHA count")
        check(metric(text, "flowgate_redis_call_duration_seconds_count") >= 2 * n,
              "every call of a batch counted")
        eq(metric(text, "flowgate_redis_errors_total"), 0.0, "redis errors")


def test_ratelimit_batch_is_bounded():
    """More requests in one loop round than one batch takes: several script
    calls, each request answered once, exactly LIMIT admitted in total."""
    from harness import build_request
    n = 80  # more than RL_BATCH_CALLS (64)
    tiers = {"anonymous": {"limit": 10, "window": 60}}
    with RedisServer() as redis, Upstream(record=False) as up, \
            Flowgate(rl_config(redis, tiers=tiers,
                               redis={"address": redis.addr, "timeout_ms": 3000,
                                      "key_prefix": "fgtest:"}), upstream=up) as fg:
        wait_redis(fg, "up")
        conns = [fg.tls() for _ in range(n)]
        try:
            evals0 = evalsha_calls(redis)
            send_while_stopped(fg, conns, [build_request("GET", "/big",
                                                         headers=from_ip("203.0.113.41"))] * n)
            rs = [c.read_response() for c in conns]
        finally:
            for c in conns:
                c.close()
        evals = evalsha_calls(redis) - evals0
        check(2 <= evals < n, "%d script calls for %d requests (batches of at most 64)"
              % (evals, n))
        eq([r.status for r in rs].count(200), 10, "admitted in total")
        eq(sorted(rl_headers(r)[1] for r in rs if r.status == 200), list(range(10)),
           "X-RateLimit-Remaining of the admitted requests")


def test_ratelimit_client_gone_while_queued_in_batch():
    """Some clients of a batch close before flowgate reads their request's end:
    their calls are detached while queued or in flight, and the reply must
    touch none of them (the harness fails on any sanitizer report) while every
    other request of the same batch gets its own answer."""
    from harness import build_request
    n = 8
    tiers = {"anonymous": {"limit": 3, "window": 60}}
    with RedisServer() as redis, Upstream(record=False) as up, \
            Flowgate(rl_config(redis, tiers=tiers,
                               redis={"address": redis.addr, "timeout_ms": 2000,
                                      "key_prefix": "fgtest:"}), upstream=up) as fg:
        wait_redis(fg, "up")
        for rnd in range(3):
            ip = "203.0.113.%d" % (50 + rnd)
            conns = [fg.tls() for _ in range(n)]
            gone = conns[::2]
            kept = conns[1::2]
            try:
                evals0 = evalsha_calls(redis)
                send_while_stopped(fg, conns,
                                   [build_request("GET", "/g", headers=from_ip(ip))] * n,
                                   before_cont=lambda: [c.close() for c in gone])
                rs = [c.read_response() for c in kept]
            finally:
                for c in kept:
                    c.close()
            check(evalsha_calls(redis) - evals0 < n, "requests of one loop round not batched")
            admitted = [rl_headers(r)[1] for r in rs if r.status == 200]
            eq(len(set(admitted)), len(admitted), "distinct Remaining among admitted requests")
            check(1 <= len(admitted) <= 3, "admitted requests that stayed: %r" % admitted)
            for r in rs:
                if r.status == 429:
                    assert_limited(r, 3, 60)
                else:
                    eq(r.status, 200, "status of a request that stayed")
            assert_limited(burst(fg, 1, "/g", from_ip(ip))[0], 3, 60)
        check(fg.alive(), "flowgate died")
        eq(readyz(fg)["redis"], "up", "readyz redis")


def test_ratelimit_batch_past_its_deadline():
    """A whole batch waits on a paused Redis past timeout_ms: each request of it
    is decided by on_redis_failure at its own deadline (local: exactly LIMIT
    admitted), the late reply touches none of them, and the link recovers."""
    from harness import build_request
    n = 6
    tiers = {"anonymous": {"limit": 3, "window": 60}}
    with RedisServer() as redis, Upstream(record=False) as up, \
            Flowgate(rl_config(redis, tiers=tiers,
                               redis={"address": redis.addr, "timeout_ms": 300,
                                      "key_prefix": "fgtest:"}), upstream=up) as fg:
        wait_redis(fg, "up")
        conns = [fg.tls() for _ in range(n)]
        try:
            redis.pause()
            t0 = time.monotonic()
            send_while_stopped(fg, conns, [build_request("GET", "/d",
                                                         headers=from_ip("203.0.113.60"))] * n)
            rs = [c.read_response() for c in conns]
            took = time.monotonic() - t0
        finally:
            for c in conns:
                c.close()
            redis.resume()
        check(took < 5, "requests held %.1f s behind a paused Redis" % took)
        eq(sorted(r.status for r in rs), [200] * 3 + [429] * 3, "local decisions after the deadline")
        eq(sorted(rl_headers(r)[1] for r in rs if r.status == 200), [0, 1, 2],
           "X-RateLimit-Remaining of the locally admitted requests")
        text = metrics(fg)
        eq(metric(text, "flowgate_ratelimit_decisions_total",
                  '{tier="anonymous",outcome="local_allowed"}'), 3.0, "local admissions")
        wait_redis(fg, "up")
        assert_exact_burst(burst(fg, 4, "/d", from_ip("203.0.113.61")), 3, 60)
        check(fg.alive(), "flowgate died")


class HoldingProxy:
    """A TCP proxy on a free loopback port in front of a real redis-server that
    can hold commands on their way to it, so that their replies come late while
    Redis itself stays healthy. hold_next_evalsha(S) holds the next EVALSHA (and
    what follows it on its connection, as a slow Redis would) for S seconds,
    then sets `released`; stall() holds every command of every connection until
    go(). Replies pass untouched and in order. Threads of this process only."""

    def __init__(self, redis):
        import socket
        self.redis = redis
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.addr = "127.0.0.1:%d" % self.sock.getsockname()[1]
        self.connections = 0
        self.hold_s = None
        self.released = threading.Event()
        self.flowing = threading.Event()
        self.flowing.set()
        self.lock = threading.Lock()
        self.open = [self.sock]
        threading.Thread(target=self.serve, daemon=True).start()

    def hold_next_evalsha(self, seconds):
        self.released.clear()
        self.hold_s = seconds

    def stall(self):
        self.flowing.clear()

    def go(self):
        self.flowing.set()

    def serve(self):
        import socket
        while True:
            try:
                client, _ = self.sock.accept()
                server = socket.create_connection(("127.0.0.1", self.redis.port), timeout=10)
            except OSError:
                return
            server.settimeout(None)
            with self.lock:
                self.connections += 1
                self.open += [client, server]
            threading.Thread(target=self.commands, args=(client, server), daemon=True).start()
            threading.Thread(target=self.replies, args=(server, client), daemon=True).start()

    def commands(self, client, server):
        f = client.makefile("rb")
        try:
            while True:
                line = f.readline()
                if not line:
                    return
                cmd, args = [line], []
                for _ in range(int(line[1:])):
                    head = f.readline()
                    data = f.read(int(head[1:]) + 2)
                    cmd += [head, data]
                    args.append(data[:-2])
                self.flowing.wait()
                hold = None
                with self.lock:
                    if args[0].upper() == b"EVALSHA" and self.hold_s is not None:
                        hold, self.hold_s = self.hold_s, None
                if hold is not None:
                    time.sleep(hold)
                server.sendall(b"".join(cmd))
                if hold is not None:
                    self.released.set()
        except (OSError, ValueError):
            return
        finally:
            server.close()

    def replies(self, server, client):
        try:
            while True:
                data = server.recv(65536)
                if not data:
                    return
                client.sendall(data)
        except OSError:
            return
        finally:
            client.close()

    def close(self):
        self.go()
        with self.lock:
            for s in self.open:
                s.close()


def access_errors(fg, status):
    """The access log's `error` of each request answered with STATUS, in order."""
    return [e.get("error") for e in fg.access_log() if e.get("status") == status]


def timed(fg, path, ip):
    """One request on its own connection; returns (response, seconds taken)."""
    with fg.tls() as conn:
        t0 = time.monotonic()
        r = conn.request("GET", path, headers=from_ip(ip))
        return r, time.monotonic() - t0


def test_ratelimit_one_late_reply_is_not_an_outage():
    """One EVALSHA answered after timeout_ms while Redis is healthy: that request
    alone gets on_redis_failure (deny: 503, logged and counted as a timeout) at
    its deadline; the link stays up on the same connection, the late reply is
    dropped rather than given to the next call, and every later request is
    decided by Redis, with Remaining exactly as Redis counted (the late call
    included: Redis did run it)."""
    tiers = {"anonymous": {"limit": 5, "window": 60}}
    with RedisServer() as redis, Upstream(record=False) as up:
        proxy = HoldingProxy(redis)
        try:
            cfg = rl_config(redis, tiers=tiers, on_redis_failure="deny",
                            redis={"address": proxy.addr, "timeout_ms": 300,
                                   "key_prefix": "fgtest:"})
            with Flowgate(cfg, upstream=up) as fg:
                wait_redis(fg, "up")
                ip = "203.0.113.90"
                r, _ = timed(fg, "/late", ip)
                eq(r.status, 200, "status before the late reply")
                eq(rl_headers(r)[1], 4, "X-RateLimit-Remaining before the late reply")
                proxy.hold_next_evalsha(1.0)
                r, took = timed(fg, "/late", ip)
                assert_error(r, 503, "unavailable")
                check(0.25 <= took < 0.9, "the late call answered after %.2f s, not at its "
                      "300 ms deadline" % took)
                check(proxy.released.wait(5), "the held EVALSHA was never released")
                time.sleep(0.1)  # the late reply reaches flowgate (not an assertion)
                eq(readyz(fg)["redis"], "up", "readyz after one late reply")
                rs = burst(fg, 4, "/late", from_ip(ip))
                eq([r.status for r in rs[:3]], [200] * 3, "statuses after the late reply")
                eq([rl_headers(r)[1] for r in rs[:3]], [2, 1, 0],
                   "X-RateLimit-Remaining after the late reply (Redis ran the late call)")
                assert_limited(rs[3], 5, 60)
                eq(proxy.connections, 1, "connections to Redis (the link was never dropped)")
                eq(access_errors(fg, 503), ["rate limit store timeout"],
                   "access log error of the 503s")
                text = metrics(fg)
                eq(metric(text, "flowgate_redis_timeouts_total"), 1.0, "redis timeouts")
                eq(metric(text, "flowgate_redis_errors_total"), 1.0, "redis errors")
                eq(metric(text, "flowgate_ratelimit_decisions_total",
                          '{tier="anonymous",outcome="failed_closed"}'), 1.0, "503 answers")
                eq(metric(text, "flowgate_ratelimit_decisions_total",
                          '{tier="anonymous",outcome="allowed"}'), 4.0, "admitted by Redis")
                check(fg.alive(), "flowgate died")
        finally:
            proxy.close()


def test_ratelimit_stalled_redis_is_down_after_timeouts_in_a_row():
    """Redis stops answering: each of the first DOWN_AFTER_TIMEOUTS requests
    waits for its deadline and gets on_redis_failure (deny: 503, logged as a
    timeout) with the link still up in between; then the link is down and
    requests get the 503 at once; when Redis answers again, exact limits
    resume."""
    tiers = {"anonymous": {"limit": 5, "window": 60}}
    with RedisServer() as redis, Upstream(record=False) as up:
        proxy = HoldingProxy(redis)
        try:
            cfg = rl_config(redis, tiers=tiers, on_redis_failure="deny",
                            redis={"address": proxy.addr, "timeout_ms": 400,
                                   "key_prefix": "fgtest:"})
            with Flowgate(cfg, upstream=up) as fg:
                wait_redis(fg, "up")
                eq(timed(fg, "/s", "203.0.113.91")[0].status, 200, "status before the stall")
                proxy.stall()
                for i in range(DOWN_AFTER_TIMEOUTS):
                    r, took = timed(fg, "/s", "203.0.113.92")
                    assert_error(r, 503, "unavailable")
                    check(took >= 0.35, "timeout %d answered after %.2f s, before its deadline"
                          % (i + 1, took))
                    state = readyz(fg)["redis"]
                    if i + 1 < DOWN_AFTER_TIMEOUTS:
                        eq(state, "up", "readyz after %d timeouts in a row" % (i + 1))
                    else:
                        eq(state, "down", "readyz after %d timeouts in a row" % (i + 1))
                for _ in range(2):
                    r, took = timed(fg, "/s", "203.0.113.92")
                    assert_error(r, 503, "unavailable")
                    check(took < 0.3, "a request waited %.2f s on a link that is down" % took)
                eq(access_errors(fg, 503),
                   ["rate limit store timeout"] * DOWN_AFTER_TIMEOUTS
                   + ["rate limit store unavailable"] * 2, "access log error of the 503s")
                eq(metric(metrics(fg), "flowgate_redis_timeouts_total"),
                   float(DOWN_AFTER_TIMEOUTS), "redis timeouts")
                proxy.go()
                wait_redis(fg, "up")
                assert_exact_burst(burst(fg, 6, "/s", from_ip("203.0.113.93")), 5, 60)
                check(fg.alive(), "flowgate died")
        finally:
            proxy.close()


class FakeRedis:
    """A RESP server on a free loopback port that loads the script like Redis
    and answers every EVALSHA with REPLY (a list of integers, sent as a bare
    integer when it holds one, as the script answers a one-limit request) for
    each request of the batch, or with RAW (bytes of RESP) when given."""

    def __init__(self, reply, raw=None):
        import socket
        self.reply = reply
        self.raw = raw
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.addr = "127.0.0.1:%d" % self.sock.getsockname()[1]
        self.sha = hashlib.sha1(gcra_script().encode()).hexdigest()
        self.evals = 0
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self):
        while True:
            try:
                s, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self.client, args=(s,), daemon=True).start()

    def client(self, s):
        f = s.makefile("rb")
        try:
            while True:
                line = f.readline()
                if not line:
                    return
                args = []
                for _ in range(int(line[1:])):
                    n = int(f.readline()[1:])
                    args.append(f.read(n + 2)[:-2])
                cmd = args[0].upper()
                if cmd == b"SCRIPT":
                    s.sendall(b"$40\r\n%s\r\n" % self.sha.encode())
                elif cmd == b"EVALSHA":
                    self.evals += 1
                    argv = args[3 + int(args[2]):]
                    plans = 0
                    while argv:
                        plans += 1
                        argv = argv[2 + int(argv[1]):]
                    one = b"".join(b":%d\r\n" % v for v in self.reply)
                    if len(self.reply) != 1:
                        one = b"*%d\r\n" % len(self.reply) + one
                    s.sendall(self.raw if self.raw is not None
                              else b"*%d\r\n" % plans + one * plans)
                else:
                    s.sendall(b"+OK\r\n")
        except OSError:
            return
        finally:
            s.close()

    def close(self):
        self.sock.close()


def test_ratelimit_hostile_redis_numbers():
    """A TAT offset from Redis outside 0 .. the limit's burst period (here
    60 s), or more numbers than limits, is a failed call (the local limiter
    decides), never an arithmetic overflow; so is a batch reply that is not
    one element per request, even one that would pass for a single request's
    numbers."""
    hostile_numbers(FakeRedis([2 ** 62]))
    hostile_numbers(FakeRedis([60 * 10 ** 9 + 1]))
    hostile_numbers(FakeRedis([-1]))
    hostile_numbers(FakeRedis([0, 0]))
    hostile_numbers(FakeRedis([], raw=b"*4\r\n:1\r\n:2\r\n:3\r\n:0\r\n"))
    hostile_numbers(FakeRedis([], raw=b"*0\r\n"))


def hostile_numbers(fake):
    try:
        cfg = rl_config(fake, tiers={"anonymous": {"limit": 3, "window": 60}},
                        redis={"address": fake.addr, "timeout_ms": 1000, "key_prefix": "fgtest:"})
        with Upstream(record=False) as up, Flowgate(cfg, upstream=up) as fg:
            wait_redis(fg, "up")
            rs = burst(fg, 2, "/p", from_ip("198.51.100.1"))
            check(fake.evals >= 1, "no EVALSHA reached the fake Redis")
            for r in rs:
                eq(r.status, 200, "status after an unusable Redis reply (local limiter)")
    finally:
        fake.close()


def test_ratelimit_redis_host_name_is_resolved_without_blocking():
    """A Redis address given as a host name is looked up through the worker's
    resolver (hosts file first), never with a blocking lookup on a worker;
    a name that does not resolve leaves Redis down and the failure mode in
    charge, and the service goes on."""
    import os
    from harness import tmpdir
    hosts = os.path.join(tmpdir(), "hosts")
    with open(hosts, "w") as f:
        f.write("127.0.0.1 redis.fg.test\n")
    with RedisServer() as redis, Upstream(record=False) as up:
        cfg = rl_config(redis, redis={"address": "Redis.FG.test:%d" % redis.port,
                                      "timeout_ms": 250, "key_prefix": "fgtest:"})
        cfg["resolver"] = {"hosts_file": hosts}
        with Flowgate(cfg, upstream=up) as fg:
            wait_redis(fg, "up")
            assert_exact_burst(burst(fg, 6, "/named"), 5, 60)
        cfg["rate_limit"]["redis"]["address"] = "nowhere.fg.test:%d" % redis.port
        cfg["resolver"] = {"hosts_file": hosts, "nameservers": ["127.0.0.1:9"]}
        with Flowgate(cfg, upstream=up) as fg:
            time.sleep(0.5)
            eq(readyz(fg)["redis"] in ("down", "connecting"), True, "redis state, name unknown")
            assert_exact_burst(burst(fg, 6, "/local"), 5, 60)  # on_redis_failure = local
