"""flowgate's promises to browsers, checked in headless Chromium.

Debian's chromium is driven by Debian's chromium-driver through python3-selenium
(one Debian source package builds the browser and its driver, so they always
match, and the tests share this harness and language). Each test starts one
browser, with a new profile and a new HOME whose NSS database trusts the dev CA
as a user's machine would: no certificate error is ignored, so HSTS and Secure
cookies behave as in production.

The browser sees realistic names on default ports: --host-resolver-rules maps
*.flowgate.test:443 and :80 to flowgate's loopback listeners (no /etc/hosts, no
privileged port), so an HSTS upgrade goes from port 80 to 443 as it would in
production. Behind flowgate:

  https://app.flowgate.test            the platform's app (pages of browser/)
  https://app-flowgate.test            a lookalike of it (same pages, not allowed by CORS)
  https://api.flowgate.test            the API (tests/upstream.py, recording)
  https://mvp-demo.preview.flowgate.test   an MVP preview (its own upstream)

The leaf certificate for these names is made in the test's directory from the
dev CA (make certs); no key is written anywhere else. Each test saves a
screenshot under build/browser/; FG_UPDATE_SCREENSHOT=1 also refreshes
docs/browser-app-preview.png.
"""

import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import time
from urllib.parse import quote

from harness import (CA, CERTS, Flowgate, LOOPBACK, ROOT, RedisServer, Skip, Upstream,
                     access_token, check, eq, register_pid, req_header, tmpdir)

TIMEOUT = 120

PAGES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "browser")
SHOTS = os.path.join(ROOT, "build", "browser")
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"

APP = "https://app.flowgate.test"
LOOKALIKE = "https://app-flowgate.test"
API = "https://api.flowgate.test"
PREVIEW = "https://mvp-demo.preview.flowgate.test"
NAMES = ("app.flowgate.test", "app-flowgate.test", "api.flowgate.test", "*.preview.flowgate.test")
PLATFORM_COOKIES = ["access_token", "refresh_token", "session"]


# ------------------------------------------------------------------ the world


def run(cmd, what):
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                       stdin=subprocess.DEVNULL, timeout=60)
    check(p.returncode == 0, "%s failed: %s" % (what, p.stdout[-1000:]))


def leaf_certificate(d):
    """A certificate for NAMES signed by the dev CA, its key beside it in D."""
    key, crt, csr, ext = (os.path.join(d, n) for n in ("web.key", "web.crt", "web.csr",
                                                         "web.ext"))
    with open(ext, "w") as f:
        f.write("basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n"
                "extendedKeyUsage=serverAuth\nsubjectAltName=%s\n"
                % ",".join("DNS:" + n for n in NAMES))
    run(["openssl", "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-out", key], "openssl genpkey")
    run(["openssl", "req", "-new", "-sha256", "-key", key, "-subj", "/CN=app.flowgate.test",
         "-out", csr], "openssl req")
    run(["openssl", "x509", "-req", "-sha256", "-days", "2", "-in", csr, "-CA", CA,
         "-CAkey", os.path.join(CERTS, "ca.key"), "-CAcreateserial",
         "-CAserial", os.path.join(d, "ca.srl"), "-extfile", ext, "-out", crt], "openssl x509")
    return crt, key


def trusting_home(d):
    """A HOME whose NSS database ($HOME/.pki/nssdb, where Chromium on Linux
    looks) trusts the dev CA for TLS servers, as `certutil` sets up a user's."""
    db = os.path.join(d, ".pki", "nssdb")
    os.makedirs(db)
    run(["certutil", "-N", "--empty-password", "-d", "sql:" + db], "certutil -N")
    run(["certutil", "-A", "-n", "flowgate-dev-ca", "-t", "C,,", "-i", CA, "-d", "sql:" + db],
        "certutil -A")
    return d


def world_config(api, app, preview, hosts, redis, crt, key, **over):
    cfg = {
        "tls": {"certificates": ({"cert": crt, "key": key},)},
        "redirect": {"https_port": 443, "status": 308},
        "headers": {"csp": "frame-src 'self' https://*.preview.flowgate.test"},
        "jwt": {"cookie": "access_token"},
        "rate_limit": {
            "redis": {"address": redis.addr, "timeout_ms": 250, "key_prefix": "fgbrowser:"},
            "on_redis_failure": "local",
            "tiers": {"anonymous": {"limit": 100, "window": 60},
                      "authenticated": {"limit": 50, "window": 60}},
        },
        "cors": {
            "origins": [APP], "credentials": True,
            "methods": ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"],
            "headers": ["Authorization", "Content-Type", "X-Request-Id"],
            "expose_headers": ["X-RateLimit-Limit", "X-RateLimit-Remaining",
                               "X-RateLimit-Reset", "X-Request-Id"],
            "max_age": 600,
        },
        "upstreams": {
            "api": {"servers": [api.addr], "keepalive": 8},
            "app": {"servers": [app.addr], "keepalive": 8},
        },
        "routes": (
            {"host": "app.flowgate.test", "path": "/", "upstream": "app", "auth": "none",
             "rate_limit": False},
            {"host": "app-flowgate.test", "path": "/", "upstream": "app", "auth": "none",
             "rate_limit": False},
            # The API's login answer sets the session cookie (upstream.py's /set-cookie).
            {"host": "api.flowgate.test", "path": "/set-cookie", "upstream": "api",
             "auth": "none"},
            {"host": "api.flowgate.test", "path": "/api/", "upstream": "api",
             "auth": "required"},
            # The API's own WebSocket (upstream.py echoes on /ws).
            {"host": "api.flowgate.test", "path": "/ws", "upstream": "api",
             "auth": "required"},
        ),
        "previews": {
            "host": "mvp-{name}.preview.flowgate.test",
            "upstream": "mvp-{name}.previews.test:%d" % preview.port,
            "auth": "none", "strip_credentials": True, "platform_cookies": PLATFORM_COOKIES,
            "frame_ancestors": APP, "websocket": True,
        },
        "resolver": {"hosts_file": hosts},
    }
    cfg.update(over)
    return cfg


class World:
    """Redis, the three upstreams, flowgate and one headless Chromium."""

    def __init__(self, **over):
        self.over = over
        self.stack = []

    def enter(self, cm):
        obj = cm.__enter__()
        self.stack.append(cm)
        return obj

    def __enter__(self):
        if importlib.util.find_spec("selenium") is None:
            raise Skip("python3-selenium is not installed for this Python (make test "
                       "installs it and runs the suite with /usr/bin/python3)")
        for exe in (CHROMIUM, CHROMEDRIVER, shutil.which("certutil") or "/usr/bin/certutil"):
            if not os.path.isfile(exe):
                raise Skip("%s is not installed (make test installs it: tools/deps.sh)" % exe)
        d = tmpdir()
        try:
            crt, key = leaf_certificate(d)
            self.home = trusting_home(os.path.join(d, "home"))
            hosts = os.path.join(d, "hosts")
            with open(hosts, "w") as f:
                f.write("127.0.0.1\tmvp-demo.previews.test\n")
            self.redis = self.enter(RedisServer())
            self.api = self.enter(Upstream("api"))
            self.app = self.enter(Upstream("app", pages=PAGES))
            self.preview = self.enter(Upstream("mvp-demo", pages=PAGES))
            self.fg = self.enter(Flowgate(world_config(self.api, self.app, self.preview, hosts,
                                                       self.redis, crt, key, **self.over),
                                          upstream=self.api))
            self.browser = self.enter(Browser(self))
        except BaseException as e:
            self.__exit__(type(e), e, None)
            raise
        return self

    def __exit__(self, *exc):
        first = None
        while self.stack:
            try:
                self.stack.pop().__exit__(*exc)
            except BaseException as e:
                first = first or e
        if first is not None and exc[0] is None:
            raise first
        return False


# ------------------------------------------------------------------ the browser

def children(pid):
    """PIDs whose parent is PID."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open("/proc/%s/stat" % entry) as f:
                    stat = f.read()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(entry))
    return out


def running(pid):
    """True while PID is a Chromium that is not a zombie (PID reuse guard)."""
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            if b"chromium" not in f.read():
                return False
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


class Browser:
    """One headless Chromium under chromedriver, resolving *.flowgate.test to
    flowgate, with a new profile and the trusting HOME of WORLD."""

    def __init__(self, world):
        self.world = world
        self.driver = None

    def __enter__(self):
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
        fg = self.world.fg
        rules = ["MAP %s:443 %s:%d" % (n, LOOPBACK, fg.https_port) for n in NAMES]
        rules += ["MAP %s:80 %s:%d" % (n, LOOPBACK, fg.http_port) for n in NAMES]
        rules.append("MAP * ~NOTFOUND")
        opts = webdriver.ChromeOptions()
        opts.binary_location = CHROMIUM
        for a in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--no-default-browser-check", "--disable-extensions",
                  "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--disable-dev-shm-usage", "--window-size=760,480",
                  "--user-data-dir=" + os.path.join(tmpdir(), "profile"),
                  "--host-resolver-rules=" + ", ".join(rules)):
            opts.add_argument(a)
        opts.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
        # Chromium reads its NSS database from $HOME; chromedriver passes
        # its environment on.
        os.environ["HOME"] = self.world.home
        service = Service(CHROMEDRIVER, log_path=os.path.join(tmpdir(), "chromedriver.log"))
        service.start()
        register_pid(service.process.pid, "chromedriver")
        self.service = service
        try:
            self.driver = webdriver.Chrome(service=service, options=opts)
        except BaseException:
            service.stop()
            raise
        self.pids = children(service.process.pid)
        for pid in self.pids:
            register_pid(pid, "chromium")
        self.driver.set_page_load_timeout(60)
        self.driver.set_script_timeout(60)
        self.console = []
        self.network = []
        return self

    def __exit__(self, *exc):
        if self.driver is None:
            return False
        try:
            self.driver.quit()
        finally:
            self.service.stop()
        # chromedriver does not wait for the browser to be gone; the runner
        # counts a process still running after the test as left behind.
        deadline = time.monotonic() + 15
        for pid in self.pids:
            while running(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            if running(pid):
                os.kill(pid, signal.SIGKILL)
        return False

    def open(self, url):
        self.driver.get(url)
        return self.driver.current_url

    def wait(self, script, *args):
        """Run page code that yields a promise (the body of an async
        function, ARGS as args[0..]) and return what it resolves to."""
        return self.driver.execute_async_script(
            "const done = arguments[arguments.length - 1];"
            "const args = Array.prototype.slice.call(arguments, 0, -1);"
            "(async () => { %s })().then(done, e => done({thrown: String(e)}));" % script,
            *args)

    def eval(self, expr, *args):
        return self.driver.execute_script("return " + expr, *args)

    def logs(self):
        """Console messages and network events since the last call (both kept)."""
        self.console += [e["message"] for e in self.driver.get_log("browser")]
        for e in self.driver.get_log("performance"):
            self.network.append(json.loads(e["message"])["message"])
        return self.console

    def events(self, method):
        self.logs()
        return [m["params"] for m in self.network if m.get("method") == method]

    def cookies(self):
        """Every cookie the browser holds, for every site."""
        return self.driver.execute_cdp_cmd("Network.getAllCookies", {})["cookies"]

    def screenshot(self, name):
        os.makedirs(SHOTS, exist_ok=True)
        path = os.path.join(SHOTS, name + ".png")
        check(self.driver.save_screenshot(path), "screenshot %s not saved" % path)
        return path


# ------------------------------------------------------------------ helpers

def access(fg, path=None):
    return [e for e in fg.access_log() if path is None or e.get("path") == path]


def login(b, sub="alice"):
    """The app's login: the API answers with the platform's cookies (HttpOnly,
    Secure, for the whole site), as a login endpoint does."""
    cookies = ["access_token=%s; Domain=flowgate.test; Path=/; Secure; HttpOnly; SameSite=Lax"
               % access_token(sub),
               "session=s3cr3t-%s; Domain=flowgate.test; Path=/; Secure; HttpOnly; SameSite=Lax"
               % sub,
               "theme=dark; Domain=flowgate.test; Path=/; Secure; SameSite=Lax"]
    url = API + "/set-cookie?" + "&".join("c=" + quote(c, safe="") for c in cookies)
    r = b.wait("return call(args[0], {method: 'POST', credentials: 'include'});", url)
    eq(r.get("status"), 200, "login through flowgate, as the page saw it (%r)" % r)
    names = {c["name"] for c in b.cookies()}
    check({"access_token", "session", "theme"} <= names, "cookies stored by the login: %r"
          % sorted(names))


def cookie_jar(b):
    """(name, domain, value) of every cookie the browser holds."""
    return {(c["name"], c["domain"], c["value"]) for c in b.cookies()}


def console_has(b, pattern):
    return [m for m in b.logs() if re.search(pattern, m)]


# ------------------------------------------------------------------ scenarios

def test_credentialed_api_call_from_the_app_and_refusal_from_a_lookalike():
    with World() as w:
        b = w.browser
        eq(b.open(APP + "/app.html"), APP + "/app.html", "the app's URL")
        login(b)
        r = b.wait("return call(args[0], {credentials: 'include'});", API + "/api/me")
        eq(r.get("status"), 200, "credentialed GET from the app (%r)" % r)
        check(r.get("remaining") is not None and r["remaining"].isdigit(),
              "X-RateLimit-Remaining readable by the app's script: %r" % r.get("remaining"))
        seen = [x for x in w.api.requests() if x["target"] == "/api/me"]
        eq(len(seen), 1, "GET /api/me at the API")
        check("access_token=" in "; ".join(req_header(seen[0], "Cookie")),
              "the cookie reached the API: %r" % req_header(seen[0], "Cookie"))
        eq(json.loads(r["body"])["headers"].get("X-User-Id"), "alice",
           "the user the API was told, from the cookie's token")
        b.screenshot("1-app-api")

        eq(b.open(LOOKALIKE + "/app.html"), LOOKALIKE + "/app.html", "the lookalike's URL")
        r = b.wait("return call(args[0], {credentials: 'include'});", API + "/api/me")
        check("TypeError" in r.get("error", ""), "GET from the lookalike: %r" % r)
        r = b.wait("return call(args[0], {method: 'POST', credentials: 'include', "
                   "body: 'transfer=all', headers: {'Content-Type': 'text/plain'}});",
                   API + "/api/transfer")
        check("TypeError" in r.get("error", ""), "POST from the lookalike: %r" % r)
        check(console_has(b, r"app-flowgate\.test.*blocked by CORS policy"),
              "no CORS error in the console: %r" % b.logs())
        refused = access(w.fg, "/api/transfer")
        eq([(e["method"], e["status"]) for e in refused], [("POST", 403)],
           "flowgate's answer to the lookalike's POST")
        check(all(x["target"] != "/api/transfer" for x in w.api.requests()),
              "the lookalike's POST reached the API")
        b.screenshot("1-lookalike")


def test_put_with_authorization_is_preflighted_by_flowgate_then_succeeds():
    with World() as w:
        b = w.browser
        b.open(APP + "/app.html")
        r = b.wait("return call(args[0], {method: 'PUT', headers: {'Authorization': "
                   "'Bearer ' + args[1], 'Content-Type': 'application/json'}, "
                   "body: JSON.stringify({name: 'demo'})});", API + "/api/mvps/demo", access_token("bob"))
        eq(r.get("status"), 200, "the PUT as the page saw it (%r)" % r)
        body = json.loads(r["body"])
        eq((body["method"], body["body_len"]), ("PUT", len('{"name":"demo"}')),
           "what the API answered")
        preflights = [e for e in b.events("Network.requestWillBeSent")
                      if e["initiator"].get("type") == "preflight"]
        eq([(e["request"]["method"], e["request"]["url"]) for e in preflights],
           [("OPTIONS", API + "/api/mvps/demo")], "the preflight the browser sent")
        answers = [e["response"]["status"] for e in b.events("Network.responseReceived")
                   if e["requestId"] == preflights[0]["requestId"]]
        eq(answers, [204], "the preflight's answer, as the browser received it")
        eq([(e["method"], e["status"]) for e in access(w.fg, "/api/mvps/demo")],
           [("OPTIONS", 204), ("PUT", 200)], "flowgate's answers, in order")
        eq([x["method"] for x in w.api.requests() if x["target"] == "/api/mvps/demo"],
           ["PUT"], "what reached the API (flowgate answers the preflight itself)")
        b.screenshot("2-preflight")


def framed_origin(b):
    """The origin the page in the page's iframe shows (page.js writes it), or
    None when the browser refused the frame and shows its error page there."""
    from selenium.webdriver.common.by import By
    b.driver.switch_to.frame(b.driver.find_element(By.TAG_NAME, "iframe"))
    try:
        return b.eval("[location.href, (document.getElementById('origin') || {}).textContent "
                      "|| null]")
    finally:
        b.driver.switch_to.default_content()


def test_previews_framed_by_the_app_only_and_never_framing_it():
    with World() as w:
        b = w.browser
        b.open(APP + "/app.html")
        b.wait("return frame(args[0]);", PREVIEW + "/preview.html")
        eq(framed_origin(b), [PREVIEW + "/preview.html", PREVIEW], "the preview framed by the app")
        shot = b.screenshot("3-app-with-preview")
        if os.environ.get("FG_UPDATE_SCREENSHOT") == "1":
            shutil.copy(shot, os.path.join(ROOT, "docs", "browser-app-preview.png"))

        b.open(LOOKALIKE + "/app.html")
        b.wait("return frame(args[0]);", PREVIEW + "/preview.html")
        url, origin = framed_origin(b)
        eq(origin, None, "the page in the lookalike's frame (at %s)" % url)
        check(console_has(b, r"frame-ancestors"), "no frame-ancestors refusal in the console: "
              "%r" % b.logs())
        b.screenshot("3-lookalike-framing-preview")

        b.open(PREVIEW + "/preview.html")
        b.wait("return frame(args[0]);", APP + "/app.html")
        url, origin = framed_origin(b)
        eq(origin, None, "the page in the preview's frame (at %s)" % url)
        check(console_has(b, r"X-Frame-Options.*sameorigin"),
              "no X-Frame-Options refusal in the console: %r" % b.logs())
        b.screenshot("3-preview-framing-app")


def test_previews_never_see_nor_set_the_platform_cookies():
    with World() as w:
        b = w.browser
        b.open(APP + "/app.html")
        login(b)
        b.open(PREVIEW + "/preview.html")
        eq(b.eval("document.cookie"), "theme=dark", "the cookies the preview's script can read")
        r = b.wait("return call('/whoami', {credentials: 'include'});")
        eq(r.get("status"), 200, "the preview's own request (%r)" % r)
        sent = [x for x in w.preview.requests() if x["target"] == "/whoami"]
        eq(len(sent), 1, "/whoami at the preview's upstream")
        eq(req_header(sent[0], "Cookie"), ["theme=dark"],
           "the Cookie header the preview's server received")
        before = sorted(c for c in cookie_jar(b) if c[1] == ".flowgate.test")
        cookies = ["session=planted; Domain=flowgate.test; Path=/; Secure",
                   "wide=1; Domain=flowgate.test; Path=/; Secure",
                   "own=1; Path=/; Secure"]
        r = b.wait("return call(args[0], {credentials: 'include'});",
                   "/set-cookie?" + "&".join("c=" + quote(c, safe="") for c in cookies))
        eq(r.get("status"), 200, "the preview's Set-Cookie answer (%r)" % r)
        stored = cookie_jar(b)
        check(("own", "mvp-demo.preview.flowgate.test", "1") in stored,
              "the preview's cookie for its own host was not stored: %r" % sorted(stored))
        eq(sorted(c for c in stored if c[1] == ".flowgate.test"), before,
           "the site-wide cookies after the preview's Set-Cookie")
        b.screenshot("4-preview-cookies")


def metric(fg, name):
    return fg.metrics().get(name)


def reload(fg):
    """SIGHUP flowgate and wait for the new configuration to be in force."""
    before = metric(fg, 'flowgate_config_reloads_total{result="ok"}')
    os.kill(fg.proc.pid, signal.SIGHUP)
    deadline = time.monotonic() + 30
    while metric(fg, 'flowgate_config_reloads_total{result="ok"}') == before:
        check(time.monotonic() < deadline, "no successful reload within 30 s of SIGHUP")
        check(fg.alive(), "flowgate exited on SIGHUP")
        time.sleep(0.05)


def test_preview_websocket_echoes_through_flowgate_and_survives_a_reload():
    with World() as w:
        b = w.browser
        b.open(APP + "/app.html")
        login(b)
        b.open(PREVIEW + "/preview.html")
        eq(b.wait("return wsOpen(args[0]);", PREVIEW.replace("https:", "wss:") + "/ws"), 1,
           "websockets opened by the preview")
        handshake = [x for x in w.preview.requests() if x["target"] == "/ws"]
        eq([req_header(x, "Cookie") for x in handshake], [["theme=dark"]],
           "the Cookie header of the handshake at the preview's upstream")
        eq(b.wait("return wsEcho('live reload: before');"),
           {"sent": "live reload: before", "got": "live reload: before", "opened": 1},
           "the echo before flowgate reloads")
        generation = metric(w.fg, "flowgate_config_generation")
        reload(w.fg)
        check(metric(w.fg, "flowgate_config_generation") > generation,
              "the configuration generation did not change on reload")
        eq(b.wait("return wsEcho('live reload: after');"),
           {"sent": "live reload: after", "got": "live reload: after", "opened": 1},
           "the echo on the same socket after flowgate reloaded")
        eq(len([x for x in w.preview.requests() if x["target"] == "/ws"]), 1,
           "websocket handshakes at the preview's upstream")
        # A WebSocket has no CORS, and the preview is same-site with the API:
        # the browser would send the user's cookies along. flowgate refuses
        # the handshake by its Origin before it reaches the API.
        got = b.wait("return wsOpen(args[0]);", API.replace("https:", "wss:") + "/ws")
        check(isinstance(got, dict) and "failed" in got.get("thrown", ""),
              "the preview opened a websocket to the API: %r" % (got,))
        eq([x["target"] for x in w.api.requests() if x["target"] == "/ws"], [],
           "websocket handshakes from the preview at the API")
        eq([(e.get("status"), e.get("error")) for e in access(w.fg, "/ws")
            if e.get("host") == "api.flowgate.test"], [(403, "cors_websocket_origin")],
           "the API handshake in the access log")
        b.screenshot("5-preview-websocket")


def test_http_is_redirected_once_then_the_browser_upgrades_by_itself():
    with World() as w:
        b = w.browser
        eq(b.open("http://app.flowgate.test/app.html"), APP + "/app.html",
           "where http://app.flowgate.test/app.html led")
        plain = [(e["method"], e["path"], e["status"]) for e in access(w.fg) if not e.get("tls")]
        eq(plain, [("GET", "/app.html", 308)], "requests on the plain listener")
        eq(b.open("http://app.flowgate.test/app.html?again=1"), APP + "/app.html?again=1",
           "where the second http:// navigation led")
        eq([(e["method"], e["path"], e["status"]) for e in access(w.fg) if not e.get("tls")],
           plain, "requests on the plain listener after HSTS was seen")
        hops = [(e["request"]["url"], e["redirectResponse"]["status"],
                 e["redirectResponse"]["headers"].get("Non-Authoritative-Reason"))
                for e in b.events("Network.requestWillBeSent") if "redirectResponse" in e]
        eq(hops, [("https://app.flowgate.test/app.html", 308, None),
                  ("https://app.flowgate.test/app.html?again=1", 307, "HSTS")],
           "redirects the browser followed (flowgate's, then its own HSTS upgrade)")
        b.screenshot("6-hsts")


def test_page_and_its_resources_come_over_h2():
    with World(http2={"enabled": True}) as w:
        b = w.browser
        b.open(APP + "/app.html")
        login(b)
        r = b.wait("return call(args[0], {credentials: 'include'});", API + "/api/me")
        eq(r.get("status"), 200, "the API call (%r)" % r)
        seen = b.eval("performance.getEntries().filter(e => e.nextHopProtocol)"
                      ".map(e => [e.name, e.nextHopProtocol])")
        names = [n for n, _ in seen]
        for url in (APP + "/app.html", APP + "/page.js", APP + "/page.css"):
            check(url in names, "%s not among the page's entries: %r" % (url, names))
        eq([(n, p) for n, p in seen if p != "h2"], [], "entries not fetched over h2")
        # A cross-origin entry hides nextHopProtocol from the page without
        # Timing-Allow-Origin; the browser's own record of the API call says it.
        api = [e["response"].get("protocol") for e in b.events("Network.responseReceived")
               if e["response"]["url"] == API + "/api/me"]
        eq(api, ["h2"], "protocol of the API call")
        b.screenshot("7-h2")
