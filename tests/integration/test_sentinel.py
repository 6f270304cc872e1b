"""Redis Sentinel: flowgate asks the Sentinels for the primary, follows a
failover (+switch-master) to the new primary, survives its empty script
cache (NOSCRIPT), finds a primary demoted behind the Sentinels' back
(READONLY), and starts without any Sentinel (on_redis_failure until they
come).

Each test runs a primary and a replica (redis-server, `replicaof`) and three
redis-sentinel processes on loopback, all stopped by PID. Waits are bounded
polls on events; no timing decides a result.
"""

import os
import signal
import socket
import subprocess
import threading
import time

from harness import (Flowgate, RedisServer, Skip, Upstream, base_config, check, eq, fail,
                     free_port, merge, register_pid, render_config, run_flowgate, stop_process,
                     tmpdir, wait_port)
from test_ratelimit import (assert_exact_burst, burst, from_ip, metric, metrics, readyz,
                            rl_config, wait_redis)

TIMEOUT = 150

MASTER = "fgmaster"
SENTINEL_PASSWORD = "sentinel-test-password-42"


class Sentinel:
    """redis-sentinel on a free loopback port, watching MASTER at PRIMARY_PORT
    (quorum 2, down after 1 s), with a password."""

    EXE = "/usr/bin/redis-sentinel"

    def __init__(self, primary_port):
        self.primary_port = primary_port
        self.port = free_port()
        self.proc = None

    @property
    def addr(self):
        return "127.0.0.1:%d" % self.port

    def start(self):
        if not os.path.isfile(self.EXE):
            raise Skip("redis-sentinel is not installed")
        conf = os.path.join(tmpdir(), "sentinel-%d.conf" % self.port)
        if not os.path.exists(conf):  # a restart keeps what the Sentinel learnt
            with open(conf, "w") as f:
                f.write("port %d\nbind 127.0.0.1\nprotected-mode no\ndir %s\n"
                        "requirepass %s\n"
                        "sentinel monitor %s 127.0.0.1 %d 2\n"
                        "sentinel down-after-milliseconds %s 1000\n"
                        "sentinel failover-timeout %s 4000\n"
                        "sentinel parallel-syncs %s 1\n"
                        % (self.port, tmpdir(), SENTINEL_PASSWORD, MASTER, self.primary_port,
                           MASTER, MASTER, MASTER))
        log = open(os.path.join(tmpdir(), "sentinel-%d.log" % self.port), "ab")
        with log:
            self.proc = subprocess.Popen([self.EXE, conf], stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL)
        register_pid(self.proc.pid, "redis-sentinel")
        wait_port(self.port, 10, self.proc, "redis-sentinel")

    def command(self, *args):
        probe = RedisServer(password=SENTINEL_PASSWORD)
        probe.port = self.port
        return probe.command(*args)

    def pause(self):
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self):
        self.proc.send_signal(signal.SIGCONT)

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.resume()
            stop_process(self.proc)


class Cluster:
    """A primary, its replica and three Sentinels that agree on both."""

    def __enter__(self):
        self.nodes = [RedisServer().__enter__(), RedisServer().__enter__()]
        self.sentinels = [Sentinel(self.nodes[0].port) for _ in range(3)]
        try:
            self.nodes[1].command("REPLICAOF", "127.0.0.1", self.nodes[0].port)
            self.wait(lambda: "master_link_status:up" in self.nodes[1].command("INFO", "replication"),
                      "the replica in sync")
            for s in self.sentinels:
                s.start()
            self.wait_sentinels_agree()
        except BaseException:
            self.__exit__()
            raise
        return self

    def wait(self, cond, what, timeout=30.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if cond():
                    return
            except (OSError, AssertionError):
                pass
            time.sleep(0.1)
        fail("%s within %.0f s" % (what, timeout))

    def master_info(self, s):
        flat = s.command("SENTINEL", "master", MASTER)
        return dict(zip(flat[::2], flat[1::2]))

    def wait_sentinels_agree(self):
        """Every Sentinel knows the replica and the two other Sentinels (a
        failover needs them)."""
        self.wait(lambda: all(self.master_info(s)["num-slaves"] == "1" and
                              self.master_info(s)["num-other-sentinels"] == "2"
                              for s in self.sentinels), "the Sentinels to know each other")

    def addr(self, node):
        return "127.0.0.1:%d" % node.port

    def named_primary(self):
        ip, port = self.sentinels[0].command("SENTINEL", "get-master-addr-by-name", MASTER)
        return "%s:%s" % (ip, port)

    def __exit__(self, *exc):
        for s in self.sentinels:
            s.stop()
        for n in self.nodes:
            n.__exit__()
        return False


class FakeSentinel:
    """A Sentinel stand-in on a thread: names self.primary ("ip", port) and
    sends +switch-master messages when told to, so that a test can move the
    primary while the old one stays up and keeps its connections."""

    def __init__(self):
        self.primary = None
        self.subscribers = []
        self.lock = threading.Lock()
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.addr = "127.0.0.1:%d" % self.sock.getsockname()[1]
        threading.Thread(target=self.accept, daemon=True).start()

    def accept(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self.serve, args=(conn,), daemon=True).start()

    def serve(self, conn):
        f = conn.makefile("rb")
        try:
            while True:
                line = f.readline()
                if not line.startswith(b"*"):
                    return
                args = []
                for _ in range(int(line[1:])):
                    n = int(f.readline()[1:])
                    args.append(f.read(n + 2)[:-2].decode())
                self.answer(conn, [args[0].upper()] + args[1:])
        except (OSError, ValueError):
            return

    def answer(self, conn, args):
        if args[0] == "SENTINEL" and args[2] == MASTER:
            ip, port = self.primary
            conn.sendall(b"*2\r\n$%d\r\n%s\r\n$%d\r\n%d\r\n"
                         % (len(ip), ip.encode(), len(str(port)), port))
        elif args[0] == "SUBSCRIBE":
            conn.sendall(b"*3\r\n$9\r\nsubscribe\r\n$14\r\n+switch-master\r\n:1\r\n")
            with self.lock:
                self.subscribers.append(conn)
        elif args[0] == "SENTINEL":
            conn.sendall(b"*-1\r\n")
        else:
            conn.sendall(b"+OK\r\n")

    def switch(self, name, new):
        """Name NEW as the primary and announce it for NAME."""
        old, self.primary = self.primary, new
        msg = ("%s %s %d %s %d" % ((name,) + old + new)).encode()
        with self.lock:
            subs = list(self.subscribers)
        for conn in subs:
            conn.sendall(b"*3\r\n$7\r\nmessage\r\n$14\r\n+switch-master\r\n$%d\r\n%s\r\n"
                         % (len(msg), msg))
        return len(subs)

    def close(self):
        self.sock.close()
        with self.lock:
            for conn in self.subscribers:
                conn.close()


def sentinel_config(cluster, tiers=None, **over):
    cfg = rl_config(cluster.nodes[0], tiers=tiers or {"anonymous": {"limit": 5, "window": 60}},
                    **over)
    redis = cfg["rate_limit"]["redis"]
    del redis["address"]
    redis["sentinels"] = [s.addr for s in cluster.sentinels]
    redis["master_name"] = MASTER
    redis["sentinel_password_env"] = "FG_SENTINEL_PASSWORD"
    return cfg


def start_flowgate(cluster, up, **over):
    return Flowgate(sentinel_config(cluster, **over), upstream=up,
                    env={"FG_SENTINEL_PASSWORD": SENTINEL_PASSWORD})


def wait_primary(fg, addr, timeout=40.0):
    """/readyz names ADDR as the primary and Redis is up there."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = readyz(fg)
        if last.get("redis") == "up" and last.get("redis_primary") == addr:
            return last
        time.sleep(0.05)
    fail("flowgate did not reach the primary %s within %.0f s (last %r)" % (addr, timeout, last))


def error_log(fg):
    with open(fg.error_path, errors="replace") as f:
        return f.read()


def decisions(fg, outcome):
    return metric(metrics(fg), "flowgate_ratelimit_decisions_total",
                  '{tier="anonymous",outcome="%s"}' % outcome) or 0


def test_sentinel_discovery_failover_and_noscript():
    """The Sentinels name the primary (the first one, stalled, is given up
    on after timeout_ms); killing the primary moves flowgate to the promoted
    replica with exact limits, and a flushed script cache there costs no
    request its Redis decision."""
    with Cluster() as cl, Upstream(record=False) as up:
        cl.sentinels[0].pause()  # accepts connections, answers nothing
        with start_flowgate(cl, up) as fg:
            ready = wait_primary(fg, cl.addr(cl.nodes[0]))
            cl.sentinels[0].resume()
            failover_and_noscript(cl, fg, ready)


def failover_and_noscript(cl, fg, ready):
    """Kill the primary under FG, then flush the new one's scripts."""
    eq(ready.get("redis_sentinel"), "subscribed", "/readyz redis_sentinel")
    assert_exact_burst(burst(fg, 6, "/p", from_ip("198.51.100.10")), 5, 60)
    text = metrics(fg)
    check('flowgate_redis_primary_info{address="%s"} 1' % cl.addr(cl.nodes[0]) in text,
          "primary info gauge before the failover")
    eq(metric(text, "flowgate_redis_sentinel_failovers_total"), 0, "failovers before")

    cl.nodes[0].kill()
    # meanwhile requests are answered by on_redis_failure ("local")
    for r in burst(fg, 3, "/p", from_ip("198.51.100.11")):
        check(r.status in (200, 429), "status %d during the failover" % r.status)
    cl.wait(lambda: cl.named_primary() == cl.addr(cl.nodes[1]), "the Sentinels' failover")
    wait_primary(fg, cl.addr(cl.nodes[1]))
    assert_exact_burst(burst(fg, 6, "/p", from_ip("198.51.100.12")), 5, 60)
    text = metrics(fg)
    eq(metric(text, "flowgate_redis_sentinel_failovers_total"), 1, "failovers after")
    check('flowgate_redis_primary_info{address="%s"} 1' % cl.addr(cl.nodes[1]) in text,
          "primary info gauge after the failover")

    # The new primary forgets the script: NOSCRIPT is answered by loading
    # it again, and every request still gets Redis's decision.
    cl.nodes[1].command("SCRIPT", "FLUSH")
    local_before = decisions(fg, "local_allowed") + decisions(fg, "local_limited")
    assert_exact_burst(burst(fg, 6, "/p", from_ip("198.51.100.13")), 5, 60)
    eq(decisions(fg, "local_allowed") + decisions(fg, "local_limited"), local_before,
       "decisions made without Redis after SCRIPT FLUSH")
    eq(readyz(fg).get("redis_primary"), cl.addr(cl.nodes[1]), "primary after NOSCRIPT")


def test_sentinel_switch_master_moves_at_once():
    """+switch-master alone moves flowgate: the old primary stays up and
    keeps its connection (no disconnect, no READONLY to go by)."""
    with RedisServer() as a, RedisServer() as b, Upstream(record=False) as up:
        fake = FakeSentinel()
        try:
            fake.primary = ("127.0.0.1", a.port)
            cfg = rl_config(a)
            redis = cfg["rate_limit"]["redis"]
            redis.update({"sentinels": [fake.addr], "master_name": MASTER})
            with Flowgate(cfg, upstream=up) as fg:
                wait_primary(fg, "127.0.0.1:%d" % a.port)
                assert_exact_burst(burst(fg, 6, "/p", from_ip("198.51.100.50")), 5, 60)
                # another master's switch is not ours
                eq(fake.switch("othermaster", ("127.0.0.1", b.port)), 1, "subscribers")
                fake.primary = ("127.0.0.1", a.port)
                eq(fake.switch(MASTER, ("127.0.0.1", b.port)), 1, "subscribers")
                wait_primary(fg, "127.0.0.1:%d" % b.port, timeout=10)
                assert_exact_burst(burst(fg, 6, "/p", from_ip("198.51.100.51")), 5, 60)
                check("+switch-master" in error_log(fg), "the move is not logged")
                eq(metric(metrics(fg), "flowgate_redis_sentinel_failovers_total"), 1,
                   "failovers (the other master's switch is not one)")
        finally:
            fake.close()


def test_sentinel_readonly_rediscovers():
    """A primary demoted by hand (no +switch-master): its READONLY answer
    sends flowgate back to the Sentinels, and limits are exact again once
    they name the new primary."""
    with Cluster() as cl, Upstream(record=False) as up, \
            start_flowgate(cl, up, on_redis_failure="allow") as fg:
        wait_primary(fg, cl.addr(cl.nodes[0]))
        assert_exact_burst(burst(fg, 6, "/p", from_ip("198.51.100.20")), 5, 60)
        # the replica becomes a primary, the old primary its replica
        cl.nodes[1].command("REPLICAOF", "NO", "ONE")
        cl.nodes[0].command("REPLICAOF", "127.0.0.1", cl.nodes[1].port)
        cl.wait(lambda: "master_link_status:up" in cl.nodes[0].command("INFO", "replication"),
                "the demoted primary in sync")
        r = burst(fg, 1, "/p", from_ip("198.51.100.21"))[0]
        eq(r.status, 200, "the request that met READONLY (on_redis_failure allow)")
        cl.wait(lambda: "READONLY: no longer the primary" in error_log(fg),
                "flowgate to log the READONLY", timeout=10)
        # The Sentinels take a while to notice (a primary that says it is a
        # replica): until then they name the demoted node, which ROLE refuses.
        time.sleep(1.0)
        if cl.named_primary() == cl.addr(cl.nodes[0]):
            check(readyz(fg)["redis"] != "up", "flowgate serves from the demoted primary")
        wait_primary(fg, cl.addr(cl.nodes[1]), timeout=60)
        assert_exact_burst(burst(fg, 6, "/p", from_ip("198.51.100.22")), 5, 60)


def test_sentinel_all_down_at_startup():
    """No Sentinel answers at startup: requests follow on_redis_failure
    ("deny": 503), then limits are exact once the Sentinels come."""
    with Cluster() as cl, Upstream(record=False) as up:
        for s in cl.sentinels:
            s.stop()
        with start_flowgate(cl, up, on_redis_failure="deny") as fg:
            wait_redis(fg, "down")
            eq(readyz(fg).get("redis_sentinel"), "unsubscribed", "/readyz redis_sentinel")
            r = burst(fg, 1, "/p", from_ip("198.51.100.30"))[0]
            eq(r.status, 503, "a request while no Sentinel answers (deny)")
            for s in cl.sentinels:
                s.start()
            wait_primary(fg, cl.addr(cl.nodes[0]))
            assert_exact_burst(burst(fg, 6, "/p", from_ip("198.51.100.31")), 5, 60)
            cl.wait(lambda: readyz(fg).get("redis_sentinel") == "subscribed", "a subscription")


def test_sentinel_three_instances_exact_across_failover():
    """Three instances share the Sentinels' primary: one identity's burst
    spread over them is exact before and after a failover."""
    with Cluster() as cl, Upstream(record=False) as up, \
            start_flowgate(cl, up) as a, start_flowgate(cl, up) as b, \
            start_flowgate(cl, up) as c:
        fgs = (a, b, c)
        for fg in fgs:
            wait_primary(fg, cl.addr(cl.nodes[0]))

        def spread(ip):
            conns = [fg.tls() for fg in fgs]
            try:
                return [conns[i % 3].request("GET", "/shared", headers=from_ip(ip)).status
                        for i in range(9)]
            finally:
                for conn in conns:
                    conn.close()

        eq(spread("203.0.113.90"), [200] * 5 + [429] * 4, "statuses before the failover")
        cl.nodes[0].kill()
        cl.wait(lambda: cl.named_primary() == cl.addr(cl.nodes[1]), "the Sentinels' failover")
        for fg in fgs:
            wait_primary(fg, cl.addr(cl.nodes[1]))
        eq(spread("203.0.113.91"), [200] * 5 + [429] * 4, "statuses after the failover")


def test_sentinel_reload_switches_to_sentinels():
    """A reload that adds sentinels and master_name to a group that had only
    an address moves the link to the Sentinels' primary, no restart."""
    with Cluster() as cl, Upstream(record=False) as up, \
            Flowgate(rl_config(cl.nodes[0]), upstream=up,
                     env={"FG_SENTINEL_PASSWORD": SENTINEL_PASSWORD}) as fg:
        wait_redis(fg, "up")
        check("redis_sentinel" not in readyz(fg), "redis_sentinel without sentinels")
        cfg = merge(base_config(fg.https_port, fg.http_port, fg.admin_port, up.addr, tmpdir()),
                    sentinel_config(cl))
        with open(fg.conf_path, "w") as f:
            f.write(render_config(cfg))
        fg.proc.send_signal(signal.SIGHUP)

        def moved():
            # the new link takes over at the first request after it is up
            burst(fg, 1, "/p", from_ip("198.51.100.41"))
            return readyz(fg).get("redis_sentinel") == "subscribed"

        cl.wait(moved, "the reloaded link to serve, subscribed")
        wait_primary(fg, cl.addr(cl.nodes[0]))
        assert_exact_burst(burst(fg, 6, "/p", from_ip("198.51.100.40")), 5, 60)


def test_sentinel_config_checks():
    """sentinels and master_name go together; Sentinel addresses are
    host:port; one source for the Sentinels' password."""
    secret = os.path.join(tmpdir(), "sentinel.pw")
    with open(secret, "w") as f:
        f.write(SENTINEL_PASSWORD + "\n")
    good = {"sentinels": ["127.0.0.1:26379", "sentinel-b.internal:26379"],
            "master_name": MASTER, "sentinel_password_file": secret}
    cases = [
        (good, None),
        ({"sentinels": ["127.0.0.1:26379"]}, "'sentinels' and 'master_name' go together"),
        ({"master_name": MASTER}, "'sentinels' and 'master_name' go together"),
        (dict(good, sentinels=["127.0.0.1"]), "bad Sentinel address"),
        (dict(good, sentinels=[]), "'sentinels' and 'master_name' go together"),
        ({"sentinels": [], "master_name": ""}, None),
        (dict(good, sentinel_password_env="FG_SENTINEL_PASSWORD"), "not both"),
        (dict(good, password_file=secret), None),
        (dict(good, password_file=secret, password_env="FG_SENTINEL_PASSWORD"),
         "give 'password_env' or 'password_file', not both"),
    ]
    for i, (redis, error) in enumerate(cases):
        cfg = merge(base_config(free_port(), free_port(), free_port(), "127.0.0.1:9", tmpdir()),
                    {"rate_limit": {"redis": redis}})
        path = os.path.join(tmpdir(), "sentinel-%d.conf" % i)
        with open(path, "w") as f:
            f.write(render_config(cfg))
        p = run_flowgate(["-t", "-c", path], env={"FG_SENTINEL_PASSWORD": "x"})
        out = p.stdout + p.stderr
        if error is None:
            eq(p.returncode, 0, "-t on %r (%s)" % (redis, out[-500:]))
        else:
            eq(p.returncode, 1, "-t on %r" % (redis,))
            check(error in out and "%s:" % path in out, "expected %r in %r" % (error, out))
