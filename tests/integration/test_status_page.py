"""The admin's status page: /status.json is the /metrics exposition as JSON
(every family, every sample) with a history of request totals; / is one
self-contained HTML page that, in a real browser (headless Chromium), shows
the figures and asks for nothing but /status.json on its own origin."""

import base64
import fcntl
import json
import os
import re
import select
import shutil
import subprocess
import time

from harness import (CERTS, LOOPBACK, ROOT, Flowgate, Skip, Upstream, check, eq, fail, free_port,
                     plain_request, register_pid, tmpdir)

TIMEOUT = 120

ROUTES = {"routes": ({"host": "", "path": "/private/", "upstream": "api", "auth": "required"},
                     {"host": "", "path": "/pub/", "upstream": "api", "auth": "none"})}
SVG_NS = "http://www.w3.org/2000/svg"  # a name, never fetched


def traffic(fg, n=4):
    """N 200s, a 404 (no route) and two 401s (no token, a malformed one)."""
    for i in range(n):
        eq(fg.get("/pub/%d" % i).status, 200, "status of /pub/%d" % i)
    eq(fg.get("/nowhere").status, 404, "status of an unrouted path")
    eq(fg.get("/private/x").status, 401, "status without a token")
    eq(fg.get("/private/x", headers=[("Authorization", "Bearer not.a.token")]).status, 401,
       "status with a malformed token")


def admin(fg, path):
    return plain_request(fg.admin_port, "GET", path, host="127.0.0.1", timeout=5.0)


def status_json(fg):
    r = admin(fg, "/status.json")
    eq(r.status, 200, "/status.json status")
    eq(r.header("Content-Type"), "application/json", "/status.json Content-Type")
    return json.loads(r.body)


def exposition_counts(text):
    """{family: number of samples} of a /metrics text, by its TYPE lines."""
    counts, current = {}, None
    for line in text.splitlines():
        m = re.match(r"# TYPE (\S+) (\S+)$", line)
        if m:
            current = m.group(1)
            counts[current] = 0
        elif line and not line.startswith("#"):
            check(current is not None and line.startswith(current),
                  "sample outside its family: %r" % line)
            counts[current] += 1
    return counts


def test_status_json_is_the_exposition_with_history():
    with Upstream() as up, Flowgate(ROUTES, upstream=up) as fg:
        traffic(fg)
        doc = status_json(fg)
        for key in ("uptime_seconds", "generated_at", "families", "history"):
            check(key in doc, "/status.json has no %r" % key)
        check(doc["uptime_seconds"] >= 0, "uptime %r" % doc["uptime_seconds"])
        check(abs(doc["generated_at"] - time.time()) < 3600, "generated_at %r" % doc["generated_at"])
        fams = doc["families"]
        metrics_text = admin(fg, "/metrics").body.decode()
        counts = exposition_counts(metrics_text)
        check(len(counts) > 10, "families in /metrics: %r" % sorted(counts))
        for name, n in counts.items():
            check(name in fams, "family %s of /metrics missing from /status.json" % name)
            check(len(fams[name]["samples"]) >= n,
                  "%s: %d samples in /status.json, %d in /metrics a moment earlier"
                  % (name, len(fams[name]["samples"]), n))
        eq(fams["flowgate_requests_finished_total"]["type"], "counter", "type of a counter")
        check(fams["flowgate_requests_finished_total"]["samples"][0]["value"] > 0,
              "finished requests: %r" % fams["flowgate_requests_finished_total"])
        up_help = fams["flowgate_upstream_server_up"]
        eq(up_help["type"], "gauge", "type of flowgate_upstream_server_up")
        check(up_help["help"], "flowgate_upstream_server_up has no HELP")
        eq(up_help["samples"], [{"labels": {"upstream": "api", "server": up.addr}, "value": 1}],
           "flowgate_upstream_server_up")
        rej = fams["flowgate_jwt_rejections_total"]["samples"]
        check(sum(s["value"] for s in rej) >= 2, "JWT rejections: %r" % rej)
        hist = fams["flowgate_redis_call_duration_seconds"]
        eq(hist["type"], "histogram", "type of a histogram")
        check(any(s.get("name") == "flowgate_redis_call_duration_seconds_bucket"
                  and s["labels"].get("le") == "+Inf" for s in hist["samples"]),
              "histogram without its +Inf bucket: %r" % hist["samples"])
        # The history is sampled at start and every 5 s: wait for a point
        # taken after the traffic above.
        deadline = time.monotonic() + 15
        while True:
            history = status_json(fg)["history"]
            check(history, "empty history")
            if len(history) >= 2 and history[-1]["requests"] >= 7:
                break
            check(time.monotonic() < deadline, "no history point after the traffic: %r" % history)
            time.sleep(0.5)
        ts = [p["t"] for p in history]
        eq(ts, sorted(ts), "history times, oldest first")
        last = history[-1]
        if "classes" in last:
            check(last["classes"]["2xx"] >= 4 and last["classes"]["4xx"] >= 3,
                  "status classes: %r" % last)


def test_upstream_server_marked_down_is_reported():
    """A server that refused max_fails connections in a row (one here) is
    ejected for a while; the gauge says so for that server alone."""
    closed = "%s:%d" % (LOOPBACK, free_port())
    with Upstream() as up:
        cfg = dict(ROUTES, upstreams={"api": {"servers": [closed, up.addr],
                                              "connect_timeout_ms": 2000,
                                              "read_timeout_ms": 10000, "keepalive": 8,
                                              "max_fails": 1}})
        with Flowgate(cfg, upstream=up) as fg:
            # Round robin: within two requests one goes to the closed port.
            for i in range(4):
                fg.get("/pub/%d" % i)
                states = {s["labels"]["server"]: s["value"] for s in
                          status_json(fg)["families"]["flowgate_upstream_server_up"]["samples"]}
                if states.get(closed) == 0:
                    break
            eq(states, {closed: 0, up.addr: 1}, "server states")


def test_page_is_self_contained_html():
    with Upstream() as up, Flowgate(ROUTES, upstream=up) as fg:
        r = admin(fg, "/")
        eq(r.status, 200, "/ status")
        eq(r.header("Content-Type"), "text/html; charset=utf-8", "/ Content-Type")
        check("connect-src 'self'" in (r.header("Content-Security-Policy") or ""),
              "CSP: %r" % r.header("Content-Security-Policy"))
        page = r.body.decode()
        check(page.startswith("<!doctype html>") and "/status.json" in page, "not the page")
        for pat in (r"""(src|href|action)\s*=\s*["']?\s*(https?:)?//""", r"url\(", r"@import",
                    r"<link[^>]*stylesheet", r"<script[^>]*src"):
            m = re.search(pat, page, re.I)
            check(m is None, "the page refers to an outside asset: %r" % (m and m.group(0)))
        urls = set(re.findall(r"https?://[^\s\"'<>)]*", page))
        eq(urls, {SVG_NS}, "absolute URLs in the page")


# ---------------------------------------------------------------- headless Chromium

class Chromium:
    """Headless Chromium driven over the DevTools protocol on a pipe
    (--remote-debugging-pipe: JSON messages ending in NUL, commands on its
    fd 3, replies and events on its fd 4): no driver and no package beyond
    the browser itself."""

    def __init__(self, exe, profile):
        self.exe, self.profile = exe, profile
        self.events, self.buf, self.next_id = [], b"", 0

    def __enter__(self):
        cmd_r, cmd_w = os.pipe()
        ev_r, ev_w = os.pipe()
        # Out of the way of 3 and 4, where the child needs them.
        hi = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10) for fd in (cmd_r, ev_w)]
        for fd in (cmd_r, ev_w):
            os.close(fd)

        def child_fds():
            os.dup2(hi[0], 3)
            os.dup2(hi[1], 4)

        args = [self.exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--no-first-run", "--no-default-browser-check", "--disable-extensions",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--user-data-dir=" + self.profile, "--remote-debugging-pipe",
                "--window-size=1280,1100", "about:blank"]
        log = open(os.path.join(tmpdir(), "chromium.log"), "w")
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log,
                                     stderr=subprocess.STDOUT, close_fds=False,
                                     preexec_fn=child_fds)
        log.close()
        register_pid(self.proc.pid, "chromium")
        for fd in hi:
            os.close(fd)
        self.cmd, self.ev = cmd_w, ev_r
        return self

    def __exit__(self, *exc):
        try:
            self.send("Browser.close", timeout=5)
        except Exception:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        os.close(self.cmd)
        os.close(self.ev)
        return False

    def _read(self, deadline):
        while b"\0" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.ev], [], [], left)[0]:
                fail("Chromium did not answer in time")
            chunk = os.read(self.ev, 65536)
            if not chunk:
                fail("Chromium closed its DevTools pipe (see chromium.log)")
            self.buf += chunk
        msg, self.buf = self.buf.split(b"\0", 1)
        return json.loads(msg)

    def send(self, method, params=None, session=None, timeout=20):
        """Run METHOD and return its result; events seen meanwhile are kept."""
        self.next_id += 1
        msg = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self.cmd, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._read(deadline)
            if reply.get("id") != self.next_id:
                self.events.append(reply)
            elif "error" in reply:
                fail("DevTools %s: %s" % (method, reply["error"]))
            else:
                return reply.get("result", {})

    def page(self):
        """A session attached to the first page, with network and runtime events on."""
        target = next(t for t in self.send("Target.getTargets")["targetInfos"]
                      if t["type"] == "page")
        s = self.send("Target.attachToTarget", {"targetId": target["targetId"],
                                                "flatten": True})["sessionId"]
        for domain in ("Network", "Runtime", "Log", "Page"):
            self.send(domain + ".enable", session=s)
        return s

    def evaluate(self, session, expr):
        r = self.send("Runtime.evaluate", {"expression": expr, "returnByValue": True},
                      session=session)
        return r.get("result", {}).get("value")

    def seen(self, method):
        return [e["params"] for e in self.events if e.get("method") == method]


def chromium_binary():
    for name in ("chromium", "chromium-browser"):
        exe = shutil.which(name)
        if exe:
            return exe
    raise Skip("chromium is not installed (make test installs it: tools/deps.sh)")


PAGE_STATE = """JSON.stringify({
  requests: document.getElementById("requests-total").textContent,
  chart: document.querySelectorAll("#chart svg polygon").length,
  routes: document.getElementById("routes").textContent,
  upstreams: document.getElementById("upstreams").textContent,
  jwt: document.getElementById("jwt").textContent,
  error: getComputedStyle(document.getElementById("err")).display})"""


def own_certificates():
    """The dev certificates copied into the test's directory: the page (and
    its screenshot) names certificates by path."""
    d = os.path.join(tmpdir(), "certs")
    os.makedirs(d, exist_ok=True)
    for name in ("server.crt", "server.key", "other.crt", "other.key"):
        shutil.copy(os.path.join(CERTS, name), d)
    return {"tls": {"certificates": tuple(
        {"cert": os.path.join(d, n + ".crt"), "key": os.path.join(d, n + ".key")}
        for n in ("server", "other"))}}


def test_status_page_in_headless_chromium():
    exe = chromium_binary()
    with Upstream() as up, Flowgate(dict(ROUTES, **own_certificates()), upstream=up) as fg:
        traffic(fg)
        origin = "http://%s:%d" % (LOOPBACK, fg.admin_port)
        with Chromium(exe, os.path.join(tmpdir(), "chromium-profile")) as browser:
            s = browser.page()
            browser.send("Page.navigate", {"url": origin + "/"}, session=s)
            # Wait until the page shows figures and its chart has two points
            # of history (one at start, one 5 s later); more traffic meanwhile.
            deadline = time.monotonic() + 40
            i = 0
            while True:
                state = json.loads(browser.evaluate(s, PAGE_STATE) or "{}")
                if (state.get("requests", "-").isdigit() and int(state["requests"]) > 0
                        and state.get("chart", 0) > 0):
                    break
                check(time.monotonic() < deadline, "the page shows no data: %r" % state)
                if i < 20:
                    fg.get("/pub/more-%d" % i)
                    i += 1
                time.sleep(0.25)
            eq(state["error"], "none", "the page's error banner")
            check(up.addr in state["upstreams"] and "UP" in state["upstreams"],
                  "upstream servers: %r" % state["upstreams"])
            check("no data yet" not in state["jwt"], "JWT section: %r" % state["jwt"])
            size = browser.send("Page.getLayoutMetrics", session=s)["cssContentSize"]
            clip = {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}
            shot = base64.b64decode(browser.send("Page.captureScreenshot", {
                "format": "png", "clip": clip, "captureBeyondViewport": True}, session=s)["data"])
            urls = [e["request"]["url"] for e in browser.seen("Network.requestWillBeSent")]
            errors = [e["entry"]["text"] for e in browser.seen("Log.entryAdded")
                      if e["entry"]["level"] == "error"]
            thrown = browser.seen("Runtime.exceptionThrown")
        check(shot.startswith(b"\x89PNG"), "the screenshot is not a PNG")
        # The README's picture is refreshed on request only
        # (FG_UPDATE_SCREENSHOT=1): a test run leaves the tree as it was.
        paths = [os.path.join(tmpdir(), "status-page.png")]
        if os.environ.get("FG_UPDATE_SCREENSHOT") == "1":
            paths.append(os.path.join(ROOT, "docs", "status-page.png"))
        for path in paths:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb") as f:
                f.write(shot)
        foreign = [u for u in urls if not u.startswith(origin + "/") and not u.startswith("data:")]
        eq(foreign, [], "requests the page made outside its own origin")
        check(origin + "/status.json" in urls, "the page never asked for /status.json: %r" % urls)
        eq(thrown, [], "script exceptions")
        eq(errors, [], "console errors (a refused asset shows here)")


def test_status_page_shows_each_address_of_a_name_checked():
    """A server given by name with two addresses, one failing its health
    check: the page's upstream table has a row per address, each with its
    own verdict."""
    from test_health import health, name_cfg, name_setup, set_health_at
    from test_previews import Mvp
    from test_upstream_names import A, B
    exe = chromium_binary()
    port, hosts, server = name_setup()
    with Mvp("a", A, port) as ma, Mvp("b", B, port) as mb, \
            Flowgate(name_cfg([server], hosts, health(fall=1, rise=1))) as fg:
        eq(fg.get("/warm").status, 200, "a first request (the name resolves)")
        set_health_at(ma, 500)
        want = ["(%s)UPUNHEALTHY" % ma.addr, "(%s)UPHEALTHY" % mb.addr]
        origin = "http://%s:%d" % (LOOPBACK, fg.admin_port)
        with Chromium(exe, os.path.join(tmpdir(), "chromium-profile")) as browser:
            s = browser.page()
            browser.send("Page.navigate", {"url": origin + "/"}, session=s)
            deadline = time.monotonic() + 40
            while True:
                state = json.loads(browser.evaluate(s, PAGE_STATE) or "{}")
                if all(w in state.get("upstreams", "") for w in want):
                    break
                check(time.monotonic() < deadline,
                      "the page's upstreams: %r, not %r" % (state.get("upstreams"), want))
                time.sleep(0.25)
