"""Live reload (SIGHUP): a whole new snapshot is built and checked off the
workers, then swapped in by each worker; requests in flight finish on the
old one, keep-alive connections move at their next request, WebSocket
tunnels keep running, a broken file keeps the old snapshot, a removed JWT
key stops verifying at once, listeners are diffed, certificates re-read,
and nothing is refused or failed while it happens."""

import os
import re
import signal
import socket
import ssl
import subprocess
import threading
import time

from harness import (CERTS, Conn, Flowgate, JWT_SECRET, Upstream, access_token, base_config, check,
                     client_context, eq, fail, free_port, merge, render_config, tmpdir)
from test_previews import ws_accept, ws_open, ws_recv, ws_send

TIMEOUT = 180


# ------------------------------------------------------------------ helpers

def write_config(fg, overrides, upstream=None):
    """Rewrite FG's file from the base template plus OVERRIDES."""
    up = upstream.addr if upstream is not None else fg.upstream.addr
    cfg = merge(base_config(fg.https_port, fg.http_port, fg.admin_port, up, tmpdir()), overrides)
    text = render_config(cfg)
    tmp = fg.conf_path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.rename(tmp, fg.conf_path)


def metrics(fg):
    return fg.metrics()


def workers_at(m, generation):
    gens = [v for k, v in m.items() if k.startswith("flowgate_worker_config_generation{")]
    return gens and all(g == generation for g in gens)


def reloads(fg):
    m = metrics(fg)
    return (m.get("flowgate_config_generation", 0),
            m.get('flowgate_config_reloads_total{result="ok"}', 0),
            m.get('flowgate_config_reloads_total{result="failed"}', 0))


def hup(fg, expect_generation=None, failed=None, timeout=10.0):
    """SIGHUP, then wait until the admin reports the reload's outcome."""
    gen, ok, bad = reloads(fg)
    fg.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        m = metrics(fg)
        g = m.get("flowgate_config_generation", 0)
        o = m.get('flowgate_config_reloads_total{result="ok"}', 0)
        b = m.get('flowgate_config_reloads_total{result="failed"}', 0)
        if (o > ok and workers_at(m, g)) or b > bad:
            if failed is not None:
                eq(b > bad, failed, "reload failed")
            if expect_generation is not None:
                eq(g, expect_generation, "config generation")
            return g
        time.sleep(0.02)
    fail("no reload outcome within %.0f s" % timeout)


def eventually(what, pred, timeout=5.0):
    """PRED true within TIMEOUT (an exception counts as not yet: the workers
    apply a reload a moment after main has)."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            if pred():
                return
        except (OSError, AssertionError) as e:
            last = e
        time.sleep(0.02)
    fail("not within %.0f s: %s (last: %r)" % (timeout, what, last))


def reload_token(secret, kid, sub="alice"):
    return access_token(sub, secret=secret, kid=kid)


def issue_cert(name, days, serial):
    """A leaf for localhost signed by the dev CA, in the test's temp dir."""
    d = tmpdir()
    key, csr, crt, ext = (os.path.join(d, name + s) for s in (".key", ".csr", ".crt", ".ext"))
    with open(ext, "w") as f:
        f.write("basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n"
                "extendedKeyUsage=serverAuth\nsubjectAltName=DNS:localhost,IP:127.0.0.1\n")
    run = lambda *a: subprocess.run(a, check=True, capture_output=True, timeout=30)
    run("openssl", "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
        "-out", key)
    run("openssl", "req", "-new", "-sha256", "-key", key, "-subj", "/CN=localhost", "-out", csr)
    run("openssl", "x509", "-req", "-sha256", "-days", str(days), "-in", csr,
        "-CA", os.path.join(CERTS, "ca.crt"), "-CAkey", os.path.join(CERTS, "ca.key"),
        "-set_serial", str(serial), "-extfile", ext, "-out", crt)
    return crt, key


def served_serial(fg):
    c = fg.tls()
    try:
        der = c.sock.getpeercert(binary_form=True)
    finally:
        c.close()
    out = subprocess.run(["openssl", "x509", "-inform", "DER", "-noout", "-serial"],
                         input=der, capture_output=True, timeout=10).stdout.decode()
    return int(out.strip().split("=", 1)[1], 16)


def certs(*pairs):
    return tuple({"cert": c, "key": k} for c, k in pairs)


def fds_of(pid):
    return len(os.listdir("/proc/%d/fd" % pid))


def rss_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


# ------------------------------------------------------------------ tests

def test_sighup_applies_routes_and_headers_keep_alive_moves_at_next_request():
    with Upstream("a") as a, Upstream("b") as b, Flowgate(upstream=a) as fg:
        c = fg.tls()
        try:
            r = c.request("GET", "/x")
            eq(r.json()["upstream"], "a", "before the reload")
            write_config(fg, {"headers": {"server": "flowgate-2"}}, upstream=b)
            hup(fg, expect_generation=2, failed=False)
            r = c.request("GET", "/x")  # same keep-alive connection, next request
            eq(r.json()["upstream"], "b", "keep-alive connection after the reload")
            eq(r.header("Server"), "flowgate-2", "new headers group")
        finally:
            c.close()
        eq(fg.get("/y").json()["upstream"], "b", "new connection after the reload")
        m = metrics(fg)
        check(m["flowgate_config_last_reload_success_timestamp_seconds"] > time.time() - 60,
              "last reload success timestamp")


def test_request_in_flight_finishes_on_its_snapshot():
    with Upstream("a") as a, Upstream("b") as b, Flowgate(upstream=a) as fg:
        c = fg.tls()
        try:
            c.send("GET /slow/1500 HTTP/1.1\r\nHost: localhost\r\n\r\n")
            time.sleep(0.3)
            write_config(fg, {}, upstream=b)
            hup(fg, failed=False)
            r = c.read_response()
            eq(r.status, 200, "in-flight request")
            check("/slow/1500" in a.targets() and "/slow/1500" not in b.targets(),
                  "the request in flight stays on its snapshot's upstream")
            eq(c.request("GET", "/next").json()["upstream"], "b", "the next one moves")
        finally:
            c.close()


def test_broken_file_keeps_the_old_snapshot_and_says_where():
    with Upstream("a") as a, Flowgate(upstream=a) as fg:
        with open(fg.conf_path) as f:
            good = f.read()
        with open(fg.conf_path, "w") as f:
            f.write(good + "\nno_such_key = 1;\nlimits: { bogus = 2; };\n")
        hup(fg, expect_generation=1, failed=True)
        eq(fg.get("/").status, 200, "still serving on the old snapshot")
        text = open(fg.error_path).read() + fg.stderr()
        check(re.search(r"%s:\d+: " % re.escape(os.path.basename(fg.conf_path)), text)
              or re.search(r"%s:\d+: " % re.escape(fg.conf_path), text),
              "the problem is logged as FILE:LINE: %r" % text[-2000:])
        check("\\n" not in text, "a log line holds an escaped newline")
        with open(fg.conf_path, "w") as f:
            f.write(good)
        hup(fg, expect_generation=2, failed=False)
        eq(fg.get("/").status, 200, "serving after the good file")


def test_removed_jwt_key_is_refused_at_once_even_when_cached():
    secret_b = "second-key-0123456789-abcdefghijklmnopqrstuvwx"
    keyfile = os.path.join(tmpdir(), "jwt-b")
    with open(keyfile, "w") as f:
        f.write(secret_b)
    both = {"jwt": {"keys": ({"kid": "a", "secret_env": "FLOWGATE_JWT_SECRET"},
                             {"kid": "b", "secret_file": keyfile})},
            "routes": ({"host": "", "path": "/", "upstream": "api", "auth": "required"},)}
    only_a = merge(both, {"jwt": {"keys": ({"kid": "a", "secret_env": "FLOWGATE_JWT_SECRET"},)}})
    with Upstream() as up, Flowgate(both, upstream=up) as fg:
        tb = [("Authorization", "Bearer " + reload_token(secret_b, "b"))]
        ta = [("Authorization", "Bearer " + reload_token(JWT_SECRET, "a"))]
        c = fg.tls()
        try:
            for _ in range(3):  # verified, then from the cache
                eq(c.request("GET", "/", headers=tb).status, 200, "key b before the reload")
            write_config(fg, only_a)
            hup(fg, failed=False)
            eq(c.request("GET", "/", headers=tb).status, 401, "key b after its removal")
            eq(c.request("GET", "/", headers=ta).status, 200, "key a still verifies")
        finally:
            c.close()
        eq(fg.get("/", headers=tb).status, 401, "key b on a new connection")


def test_rotated_secret_file_verifies_after_reload_and_the_old_one_fails():
    keyfile = os.path.join(tmpdir(), "jwt-secret")
    old, new = "old-secret-0123456789-abcdefghijklmnopqrstuvwxyz", \
        "new-secret-0123456789-abcdefghijklmnopqrstuvwxyz"
    with open(keyfile, "w") as f:
        f.write(old)
    cfg = {"jwt": {"keys": ({"kid": "k", "secret_file": keyfile},)},
           "routes": ({"host": "", "path": "/", "upstream": "api", "auth": "required"},)}
    with Upstream() as up, Flowgate(cfg, upstream=up) as fg:
        eq(fg.get("/", headers=[("Authorization", "Bearer " + reload_token(old, "k"))]).status, 200,
           "old secret before")
        with open(keyfile + ".tmp", "w") as f:
            f.write(new)
        os.rename(keyfile + ".tmp", keyfile)
        hup(fg, failed=False)
        eq(fg.get("/", headers=[("Authorization", "Bearer " + reload_token(new, "k"))]).status, 200,
           "new secret after the reload")
        eq(fg.get("/", headers=[("Authorization", "Bearer " + reload_token(old, "k"))]).status, 401,
           "old secret after the reload")


def test_renewed_certificate_is_served_and_tickets_still_resume():
    crt1, key1 = issue_cert("one", 30, 1001)
    crt2, key2 = issue_cert("two", 90, 1002)
    cfg = {"tls": {"certificates": certs((crt1, key1))}}
    with Upstream() as up, Flowgate(cfg, upstream=up) as fg:
        eq(served_serial(fg), 1001, "first certificate")
        m = metrics(fg)
        exp1 = m['flowgate_tls_certificate_expiry_timestamp_seconds{certificate="%s"}' % crt1]
        check(abs(exp1 - (time.time() + 30 * 86400)) < 2 * 86400, "expiry metric of the first")
        ctx = client_context(maximum=ssl.TLSVersion.TLSv1_2)
        c = Conn.tls(fg.https_port, ctx=ctx)
        c.request("GET", "/")
        session = c.sock.session
        c.close()
        # Renewal in place, as cert-manager does: same paths, new files.
        os.rename(crt2, crt1)
        os.rename(key2, key1)
        hup(fg, failed=False)
        eq(served_serial(fg), 1002, "renewed certificate served")
        m = metrics(fg)
        exp2 = m['flowgate_tls_certificate_expiry_timestamp_seconds{certificate="%s"}' % crt1]
        check(exp2 > exp1 + 50 * 86400, "expiry metric follows the renewal")
        c = Conn.tls(fg.https_port, ctx=ctx, session=session)
        try:
            eq(c.request("GET", "/").status, 200, "request on a resumed session")
            check(c.sock.session_reused, "session ticket issued before the reload resumes")
        finally:
            c.close()


def test_half_written_pair_keeps_the_old_snapshot():
    crt1, key1 = issue_cert("one", 30, 2001)
    _, key2 = issue_cert("two", 30, 2002)
    cfg = {"tls": {"certificates": certs((crt1, key1))}}
    with Upstream() as up, Flowgate(cfg, upstream=up) as fg:
        os.rename(key2, key1)  # the key renewed, the certificate not yet
        hup(fg, expect_generation=1, failed=True)
        eq(served_serial(fg), 2001, "old certificate still served")
        eq(fg.get("/").status, 200, "still serving")


def test_listeners_are_diffed():
    with Upstream() as up, Flowgate(upstream=up) as fg:
        extra = free_port()
        listen = {"https": ["127.0.0.1:%d" % fg.https_port, "127.0.0.1:%d" % extra],
                  "http": ["127.0.0.1:%d" % fg.http_port],
                  "admin": "127.0.0.1:%d" % fg.admin_port}
        keep = fg.tls()
        try:
            eq(keep.request("GET", "/").status, 200, "before")
            write_config(fg, {"listen": listen})
            hup(fg, failed=False)
            eventually("the added listener accepts",
                       lambda: Conn.tls(extra).request("GET", "/").status == 200)
            eq(keep.request("GET", "/").status, 200, "open connection after the reload")
            listen["https"] = ["127.0.0.1:%d" % extra]
            write_config(fg, {"listen": listen})
            hup(fg, failed=False)

            def refused():
                try:
                    socket.create_connection(("127.0.0.1", fg.https_port), timeout=1).close()
                    return False
                except OSError:
                    return True
            eventually("the removed listener is closed", refused)
            eq(Conn.tls(extra).request("GET", "/").status, 200, "the kept listener")
            eq(keep.request("GET", "/").status, 200, "a connection of the removed listener")
        finally:
            keep.close()


def test_websocket_opened_before_a_reload_carries_frames_after_it():
    with Upstream("a") as a, Upstream("b") as b, Flowgate(upstream=a) as fg:
        c, r, key = ws_open(fg, "localhost")
        try:
            eq(r.status, 101, "upgrade")
            eq(r.header("Sec-WebSocket-Accept"), ws_accept(key), "accept")
            ws_send(c, 0x81, b"before")
            eq(ws_recv(c), (0x81, b"before"), "echo before")
            write_config(fg, {"headers": {"server": "x"}}, upstream=b)
            hup(fg, failed=False)
            hup(fg, failed=False)
            ws_send(c, 0x81, b"after")
            eq(ws_recv(c), (0x81, b"after"), "echo after two reloads")
        finally:
            c.close()


def _load(fg, stop, errors, counts, keepalive):
    while not stop.is_set():
        try:
            c = fg.tls(timeout=10)
            try:
                for _ in range(20 if keepalive else 1):
                    r = c.request("GET", "/load")
                    if r.status != 200:
                        errors.append("status %d" % r.status)
                    counts[0] += 1
                    if stop.is_set():
                        break
            finally:
                c.close()
        except Exception as e:  # noqa: BLE001 - every failure is the finding
            errors.append(repr(e))


def test_twenty_reloads_under_load_fail_nothing():
    crt1, key1 = issue_cert("one", 30, 3001)
    crt2, key2 = issue_cert("two", 60, 3002)
    with Upstream("a", record=False) as a, Upstream("b", record=False) as b, \
            Flowgate({"tls": {"certificates": certs((crt1, key1))}}, upstream=a) as fg:
        stop = threading.Event()
        errors, counts = [], [0]
        threads = [threading.Thread(target=_load, args=(fg, stop, errors, counts, ka))
                   for ka in (True, True, False, False)]
        for t in threads:
            t.start()
        try:
            for i in range(20):
                pair = (crt1, key1) if i % 2 else (crt2, key2)
                write_config(fg, {"tls": {"certificates": certs(pair)},
                                  "headers": {"server": "gen-%d" % i},
                                  "routes": ({"host": "", "path": "/", "auth": "none",
                                              "upstream": "api"},
                                             {"host": "", "path": "/r%d" % i, "auth": "none",
                                              "upstream": "api"})},
                             upstream=a if i % 2 else b)
                hup(fg, failed=False)
                time.sleep(0.1)
        finally:
            stop.set()
            for t in threads:
                t.join(30)
        eq(errors[:5], [], "failed requests during reloads")
        check(counts[0] > 100, "too few requests made (%d)" % counts[0])


def test_two_hundred_reloads_leak_nothing():
    with Upstream() as up, Flowgate(upstream=up) as fg:
        for _ in range(5):
            hup(fg, failed=False)
        fg.get("/")
        fds = fds_of(fg.proc.pid)
        for i in range(200):
            hup(fg, failed=False)
            if i % 20 == 19:
                eq(fg.get("/").status, 200, "serving between reloads")
        eq(fg.get("/").status, 200, "serving after 200 reloads")
        eventually("descriptors back to their level",
                   lambda: fds_of(fg.proc.pid) <= fds, timeout=10)
        # LeakSanitizer (the ASan build) reports any leak when flowgate stops.


def kubelet_volume(root, version, files):
    """A Secret volume as the kubelet lays it out: ..VERSION/FILE, ..data ->
    ..VERSION, FILE -> ..data/FILE. Called again, it swaps ..data atomically."""
    os.makedirs(root, exist_ok=True)
    d = os.path.join(root, ".." + version)
    os.makedirs(d)
    for name, data in files.items():
        with open(os.path.join(d, name), "wb") as f:
            f.write(data)
    tmp = os.path.join(root, "..data_tmp")
    os.symlink(".." + version, tmp)
    os.rename(tmp, os.path.join(root, "..data"))
    for name in files:
        link = os.path.join(root, name)
        if not os.path.islink(link):
            os.symlink(os.path.join("..data", name), link)


def test_kubelet_secret_rotation_reloads_without_a_signal():
    vol = os.path.join(tmpdir(), "secret")
    crt1, key1 = issue_cert("one", 30, 4001)
    crt2, key2 = issue_cert("two", 60, 4002)
    old, new = "kube-old-0123456789-abcdefghijklmnopqrstuvwxyz", \
        "kube-new-0123456789-abcdefghijklmnopqrstuvwxyz"
    read = lambda p: open(p, "rb").read()
    kubelet_volume(vol, "2026_12_05_01", {"tls.crt": read(crt1), "tls.key": read(key1),
                                          "jwt": old.encode()})
    cfg = {"reload": {"watch": True, "debounce_ms": 200},
           "tls": {"certificates": certs((os.path.join(vol, "tls.crt"),
                                          os.path.join(vol, "tls.key")))},
           "jwt": {"keys": ({"kid": "k", "secret_file": os.path.join(vol, "jwt")},)},
           "routes": ({"host": "", "path": "/", "upstream": "api", "auth": "required"},)}
    with Upstream() as up, Flowgate(cfg, upstream=up) as fg:
        auth = lambda s: [("Authorization", "Bearer " + reload_token(s, "k"))]
        eq(served_serial(fg), 4001, "first certificate")
        eq(fg.get("/", headers=auth(old)).status, 200, "old secret before")
        kubelet_volume(vol, "2026_12_05_02", {"tls.crt": read(crt2), "tls.key": read(key2),
                                              "jwt": new.encode()})
        eventually("the renewed certificate is served", lambda: served_serial(fg) == 4002,
                   timeout=10)
        eq(fg.get("/", headers=auth(new)).status, 200, "rotated secret verifies")
        eq(fg.get("/", headers=auth(old)).status, 401, "old secret refused")
        eq(reloads(fg)[1], 1, "one reload for the one swap")


def test_kubelet_redis_password_rotation_makes_a_new_link():
    """rate_limit.redis.password_file in a Secret volume: once Redis has a new
    password, the old one no longer gets a link in (on_redis_failure "deny":
    503); the kubelet's swap of the file reloads, and the link is made anew
    with the new password."""
    from harness import RedisServer

    vol = os.path.join(tmpdir(), "redis-secret")
    old, new = "redis-old-0123456789", "redis-new-0123456789"
    kubelet_volume(vol, "2026_12_05_01", {"password": old.encode() + b"\n"})
    cfg = {"reload": {"watch": True, "debounce_ms": 200},
           "rate_limit": {"redis": {"address": None, "timeout_ms": 500,
                                    "password_file": os.path.join(vol, "password")},
                          "on_redis_failure": "deny",
                          "tiers": {"anonymous": {"limit": 1000, "window": 60}}}}
    with RedisServer(password=old) as redis, Upstream() as up:
        cfg["rate_limit"]["redis"]["address"] = redis.addr
        with Flowgate(cfg, upstream=up) as fg:
            eq(fg.get("/").status, 200, "decided by Redis with the first password")
            redis.command("CONFIG", "SET", "requirepass", new)
            redis.password = new
            redis.command("CLIENT", "KILL", "TYPE", "normal")
            eventually("the old password is refused", lambda: fg.get("/").status == 503,
                       timeout=10)
            kubelet_volume(vol, "2026_12_05_02", {"password": new.encode() + b"\n"})
            eventually("the new password gets a link", lambda: fg.get("/").status == 200,
                       timeout=10)
            eq(reloads(fg)[1:], (1, 0), "reloads ok and failed after the one swap")
            check(redis.command("DBSIZE") > 0, "Redis holds the limit")


def test_redis_link_is_made_anew_only_when_its_settings_change():
    from harness import RedisServer

    def rl(server, prefix):
        return {"rate_limit": {"redis": {"address": server.addr, "timeout_ms": 500,
                                         "key_prefix": prefix},
                               "on_redis_failure": "deny",
                               "tiers": {"anonymous": {"limit": 1000, "window": 60}}}}

    def keys(server):
        return server.command("DBSIZE")

    with RedisServer() as r1, RedisServer() as r2, Upstream() as up, \
            Flowgate(rl(r1, "one:"), upstream=up) as fg:
        eq(fg.get("/").status, 200, "decided by the first Redis")
        check(keys(r1) > 0, "the first Redis holds the limit")
        write_config(fg, merge(rl(r1, "one:"), {"headers": {"server": "same-redis"}}))
        hup(fg, failed=False)
        eq(fg.get("/").status, 200, "after a reload that kept the link")
        write_config(fg, rl(r2, "two:"))
        hup(fg, failed=False)
        eventually("the new link decides", lambda: fg.get("/").status == 200 and keys(r2) > 0,
                   timeout=10)
        r1.kill()  # the old link's Redis goes away: nothing depends on it any more
        for _ in range(5):
            eq(fg.get("/").status, 200, "decided by the second Redis")


def test_log_targets_move_and_a_workers_change_waits_for_a_restart():
    with Upstream() as up, Flowgate(upstream=up) as fg:
        eq(fg.get("/before").status, 200, "before")
        moved = os.path.join(tmpdir(), "access-2.log")
        write_config(fg, {"workers": 2,
                          "log": {"access": moved, "error": fg.error_path, "level": "info"}})
        hup(fg, failed=False)
        eq(fg.get("/after").status, 200, "after")
        eventually("the request after the reload is logged to the new file",
                   lambda: "/after" in open(moved).read())
        check("/after" not in open(fg.access_path).read(), "still logged to the old file")
        check(any(m.get("path") == "/before" for m in fg.access_log()), "old file kept its lines")
        text = open(fg.error_path).read()
        check("workers = 2 needs a restart" in text, "workers change not reported: %r"
              % text[-1500:])
        eq(len([k for k in fg.metrics() if k.startswith("flowgate_worker_config_generation")]),
           1, "still one worker")


def _rl(server, prefix, timeout_ms=500):
    return {"rate_limit": {"redis": {"address": server.addr, "timeout_ms": timeout_ms,
                                     "key_prefix": prefix},
                           "on_redis_failure": "deny",
                           "tiers": {"anonymous": {"limit": 100000, "window": 60}}}}


def test_a_replaced_redis_link_outlives_its_snapshots_safely():
    """A call waits on link L (Redis stalled); a reload keeps L (same Redis),
    the next replaces it: L's deadline then fires after both snapshots it
    served are gone. It must read nothing freed (the ASan build would stop)."""
    from harness import RedisServer
    with RedisServer() as r1, RedisServer() as r2, Upstream() as up, \
            Flowgate(_rl(r1, "one:", 2000), upstream=up) as fg:
        eq(fg.get("/").status, 200, "warm")
        r1.pause()
        out = {}

        def waiting():
            try:
                out["status"] = Conn.tls(fg.https_port).request("GET", "/x").status
            except Exception as e:  # noqa: BLE001
                out["status"] = repr(e)
        t = threading.Thread(target=waiting)
        t.start()
        time.sleep(0.3)
        write_config(fg, merge(_rl(r1, "one:", 2000), {"headers": {"server": "same-redis"}}))
        hup(fg, failed=False)
        write_config(fg, _rl(r2, "two:", 2000))
        hup(fg, failed=False)
        t.join(15)
        r1.resume()
        eq(out.get("status"), 503, "the call that timed out on the old link (deny)")
        check(fg.alive(), "flowgate died")
        eventually("the new link decides", lambda: fg.get("/").status == 200, timeout=10)


def _hammer(fg, stop, statuses):
    while not stop.is_set():
        try:
            c = fg.tls(timeout=10)
            try:
                for _ in range(20):
                    statuses.append(c.request("GET", "/h").status)
            finally:
                c.close()
        except Exception as e:  # noqa: BLE001
            statuses.append(repr(e))


def test_changing_redis_refuses_nothing_while_the_new_link_connects():
    """on_redis_failure = "deny": a reload that moves to another Redis, or
    changes only key_prefix, must not answer 503 while a link connects: the
    old link serves until the new one is up."""
    from harness import RedisServer
    with RedisServer() as r1, RedisServer() as r2, Upstream(record=False) as up, \
            Flowgate(_rl(r1, "one:"), upstream=up) as fg:
        eq(fg.get("/").status, 200, "warm")
        stop, statuses = threading.Event(), []
        t = threading.Thread(target=_hammer, args=(fg, stop, statuses))
        t.start()
        try:
            for i in range(6):
                server = r2 if i % 2 == 0 else r1
                write_config(fg, _rl(server, "p%d:" % i))
                hup(fg, failed=False)
                time.sleep(0.3)
        finally:
            stop.set()
            t.join(30)
        bad = [s for s in statuses if s != 200]
        eq(bad[:5], [], "answers other than 200 during Redis changes")
        check(len(statuses) > 50, "too few requests (%d)" % len(statuses))
        evals = lambda r: int((re.search(r"cmdstat_evalsha:calls=(\d+)",
                                         str(r.command("INFO", "commandstats"))) or [0, "0"])[1])
        check(evals(r1) > 0 and evals(r2) > 0, "both Redis decided (%d, %d script calls)"
              % (evals(r1), evals(r2)))


def test_failed_reload_moves_neither_logs_nor_admin():
    with Upstream() as up, Flowgate(upstream=up) as fg:
        busy = socket.socket()
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        moved = os.path.join(tmpdir(), "access-moved.log")
        try:
            write_config(fg, {"listen": {"https": ["127.0.0.1:%d" % fg.https_port],
                                         "http": ["127.0.0.1:%d" % fg.http_port],
                                         "admin": "127.0.0.1:%d" % busy.getsockname()[1]},
                              "log": {"access": moved, "error": fg.error_path,
                                      "level": "debug"}})
            hup(fg, failed=True)
        finally:
            busy.close()
        eq(fg.get("/still-old").status, 200, "serving")
        eventually("logged to the old access log",
                   lambda: "/still-old" in open(fg.access_path).read())
        check(not os.path.exists(moved) or "/still-old" not in open(moved).read(),
              "a failed reload moved the access log")
