"""Installing and operating: make install, the production example, the dev
demo's configuration, -V's revision, SIGUSR1.

`make install` runs from the repository root against the already built
build/flowgate (make test builds it first); every file goes under a
temporary DESTDIR.
"""

import os
import re
import shutil
import signal
import subprocess
import time

from harness import (CA, ROOT, Flowgate, check, eq, fail, free_port, register_pid, run_flowgate,
                     stop_process, tmpdir, wait_port)

TIMEOUT = 120
CREDENTIALS = "/run/credentials/flowgate.service/"


def _make(args, cwd=ROOT, timeout=60):
    p = subprocess.run(["make", "--no-print-directory"] + list(args), cwd=cwd, timeout=timeout,
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                       stdin=subprocess.DEVNULL)
    return p.returncode, p.stdout


def _need_built_binary():
    rc, out = _make(["-q", "build/flowgate"])
    if rc != 0:
        fail("build/flowgate is missing or out of date (run `make build/flowgate` first): %s"
             % out[-300:])


def _files_under(root):
    found = set()
    for d, _, files in os.walk(root):
        for f in files:
            found.add(os.path.relpath(os.path.join(d, f), root))
    return found


def _install(destdir, prefix, sysconfdir):
    rc, out = _make(["install", "DESTDIR=" + destdir, "PREFIX=" + prefix,
                     "SYSCONFDIR=" + sysconfdir])
    eq(rc, 0, "make install's exit status (output %r)" % out[-1000:])
    return out


def test_install_lands_every_file_under_destdir():
    _need_built_binary()
    dest = os.path.join(tmpdir(), "root")
    conf_dir = os.path.join(dest, "etc", "flowgate")
    os.makedirs(conf_dir)
    mine = "# the operator's own configuration\n"
    with open(os.path.join(conf_dir, "flowgate.conf"), "w") as f:
        f.write(mine)
    _install(dest, "/usr/local", "/etc")

    eq(_files_under(dest), {"usr/local/bin/flowgate",
                            "usr/local/lib/systemd/system/flowgate.service",
                            "etc/flowgate/flowgate.conf.example",
                            "etc/flowgate/flowgate.conf"}, "files under DESTDIR")
    with open(os.path.join(conf_dir, "flowgate.conf")) as f:
        eq(f.read(), mine, "an existing flowgate.conf after make install")
    exe = os.path.join(dest, "usr/local/bin/flowgate")
    check(os.access(exe, os.X_OK), "installed binary is not executable")
    with open(exe, "rb") as a, open(os.path.join(ROOT, "build", "flowgate"), "rb") as b:
        check(a.read() == b.read(), "installed binary differs from build/flowgate")
    for rel in ("usr/local/lib/systemd/system/flowgate.service",
                "etc/flowgate/flowgate.conf.example"):
        eq(os.stat(os.path.join(dest, rel)).st_mode & 0o777, 0o644, "mode of " + rel)

    with open(os.path.join(dest, "usr/local/lib/systemd/system/flowgate.service")) as f:
        unit = f.read()
    check("@PREFIX@" not in unit and "@SYSCONFDIR@" not in unit,
          "placeholders left in the installed unit")
    check(re.search(r"^ExecStart=/usr/local/bin/flowgate -c /etc/flowgate/flowgate\.conf$", unit,
                    re.M), "ExecStart does not run the installed binary on /etc/flowgate")
    check(re.search(r"^ExecStartPre=/usr/local/bin/flowgate -t -c /etc/flowgate/flowgate\.conf$",
                    unit, re.M), "ExecStartPre does not check with the installed binary")


def test_install_writes_nothing_outside_destdir():
    """Another PREFIX and SYSCONFDIR under a name that exists nowhere: every
    file moves with them, and nothing appears at the real path."""
    _need_built_binary()
    top = "/flowgate-install-test-%d-%d" % (os.getpid(), int(time.time()))
    dest = os.path.join(tmpdir(), "root")
    try:
        _install(dest, top + "/opt", top + "/etc")
        check(not os.path.exists(top), "make install created %s outside DESTDIR" % top)
    finally:
        if os.path.exists(top):
            shutil.rmtree(top)
    eq(_files_under(dest), {top[1:] + "/opt/bin/flowgate",
                            top[1:] + "/opt/lib/systemd/system/flowgate.service",
                            top[1:] + "/etc/flowgate/flowgate.conf.example"}, "files under DESTDIR")
    with open(os.path.join(dest, top[1:], "opt/lib/systemd/system/flowgate.service")) as f:
        unit = f.read()
    check("ExecStart=%s/opt/bin/flowgate -c %s/etc/flowgate/flowgate.conf\n" % (top, top) in unit,
          "ExecStart does not follow PREFIX and SYSCONFDIR")
    check("LoadCredential=tls-key:%s/etc/flowgate/tls.key\n" % top in unit,
          "LoadCredential does not follow SYSCONFDIR")
    with open(os.path.join(dest, top[1:], "etc/flowgate/flowgate.conf.example")) as f:
        example = f.read()
    check('"%s/etc/flowgate/tls.crt"' % top in example and '"/etc/flowgate/' not in example,
          "the example's /etc/flowgate paths do not follow SYSCONFDIR")


def _self_signed(cert, key):
    p = subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                        "ec_paramgen_curve:P-256", "-nodes", "-days", "2", "-subj",
                        "/CN=flowgate.example.com", "-keyout", key, "-out", cert],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=30)
    eq(p.returncode, 0, "openssl req (output %r)" % p.stdout[-500:])


def test_production_example_passes_check():
    """The installed example, its absolute paths moved under a temporary root
    where the files it names exist, passes -t; it is the production one
    (public ports, loopback admin, a year of HSTS with subdomains, secrets
    from the unit's credentials)."""
    _need_built_binary()
    dest = os.path.join(tmpdir(), "root")
    _install(dest, "/usr/local", "/etc")
    with open(os.path.join(dest, "etc/flowgate/flowgate.conf.example")) as f:
        text = f.read()
    with open(os.path.join(dest, "usr/local/lib/systemd/system/flowgate.service")) as f:
        unit = f.read()

    check(re.search(r'^\s*https = \[ "0\.0\.0\.0:443" \];', text, re.M), "https is not 0.0.0.0:443")
    check(re.search(r'^\s*http\s*= \[ "0\.0\.0\.0:80" \];', text, re.M), "http is not 0.0.0.0:80")
    check(re.search(r'^\s*admin = "127\.0\.0\.1:\d+";', text, re.M), "admin is not on 127.0.0.1")
    check(re.search(r'^\s*hsts = "max-age=31536000; includeSubDomains";', text, re.M),
          "HSTS is not a year with includeSubDomains")
    check("secret_env" not in text, "the production example reads a JWT secret from the environment")
    # Every credential the example reads is one the unit loads.
    loaded = set(re.findall(r"^LoadCredential=([^:\s]+):", unit, re.M))
    used = set(re.findall(r'"%s([^"]+)"' % re.escape(CREDENTIALS), text))
    check(used, "the example reads no systemd credential")
    check(used <= loaded, "credentials read %s, loaded by the unit %s" % (sorted(used), sorted(loaded)))

    root = os.path.join(tmpdir(), "sys")
    moved = re.sub(r'"/(etc|run|var)/', lambda m: '"%s/%s/' % (root, m.group(1)), text)
    pair = re.findall(r'\bcert\s*=\s*"([^"]+)";\s*key\s*=\s*"([^"]+)"', moved)
    secret = re.findall(r'\bsecret_file\s*=\s*"([^"]+)"', moved)
    eq((len(pair), len(secret)), (1, 1), "certificates and secret files the example names")
    files = {"cert": pair[0][0], "key": pair[0][1], "secret_file": secret[0]}
    for path in files.values():
        check(path.startswith(root + "/"), "%s was not moved under the temporary root" % path)
        os.makedirs(os.path.dirname(path), exist_ok=True)
    _self_signed(files["cert"], files["key"])
    with open(files["secret_file"], "w") as f:
        f.write(os.urandom(32).hex() + "\n")
    path = os.path.join(tmpdir(), "prod.conf")
    with open(path, "w") as f:
        f.write(moved)
    p = run_flowgate(["-t", "-c", path], env={"FLOWGATE_JWT_SECRET": ""})
    eq(p.returncode, 0, "flowgate -t on the production example (stderr %r)" % p.stderr[-1500:])
    check("configuration OK" in p.stdout, "no 'configuration OK' in %r" % p.stdout)


def _listens(text):
    """The listen group's https, http and admin addresses."""
    group = re.search(r"^listen: \{(.*?)^\};", text, re.M | re.S)
    check(group, "no listen group")
    body = re.sub(r"#[^\n]*", "", group.group(1))
    return re.findall(r'"([^"]*)"', body)


def _check_dev_config(text, ports, what):
    https, http, admin = ports
    eq(sorted(_listens(text)), sorted(["127.0.0.1:%d" % https, "127.0.0.1:%d" % http,
                                       "127.0.0.1:%d" % admin]), what + ": listen addresses")
    hsts = re.search(r'^\s*hsts = "([^"]*)";', text, re.M)
    check(hsts, what + ": no hsts")
    check("includesubdomains" not in hsts.group(1).lower(),
          what + ": dev HSTS covers subdomains: %r" % hsts.group(1))
    age = re.search(r"max-age=(\d+)", hsts.group(1))
    check(age and int(age.group(1)) <= 3600, what + ": dev HSTS is not short: %r" % hsts.group(1))
    check(re.search(r"^\s*https_port = %d;" % https, text, re.M), what + ": redirect port")


def _dev_conf(ports):
    p = subprocess.run(["sh", "tools/dev-conf.sh"] + [str(x) for x in ports], cwd=ROOT,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=30)
    eq(p.returncode, 0, "tools/dev-conf.sh %s (stderr %r)" % (ports, p.stderr))
    return p.stdout


def test_dev_config_is_loopback_only_with_short_hsts():
    """make run's configuration, as is and rewritten for other ports (swapped
    ones too), listens on 127.0.0.1 alone, has a short HSTS without
    includeSubDomains, and passes -t."""
    with open(os.path.join(ROOT, "conf", "flowgate.conf")) as f:
        text = f.read()
    _check_dev_config(text, (8443, 8080, 9901), "conf/flowgate.conf")
    eq(_dev_conf((8443, 8080, 9901, 9001, 6379)), text, "dev-conf.sh with the default ports")
    for ports in ((9443, 9080, 9902, 9002, 6380), (8080, 8443, 9001, 9901, 6379)):
        out = _dev_conf(ports)
        _check_dev_config(out, ports[:3], "dev-conf.sh %s" % (ports,))
        check('"127.0.0.1:%d"' % ports[3] in out and '"127.0.0.1:%d"' % ports[4] in out,
              "upstream or redis port not replaced: %s" % (ports,))
        path = os.path.join(tmpdir(), "dev-%d.conf" % ports[0])
        with open(path, "w") as f:
            f.write(out)
        p = run_flowgate(["-t", "-c", path])
        eq(p.returncode, 0, "-t on dev-conf.sh %s (stderr %r)" % (ports, p.stderr[-1000:]))
    bad = subprocess.run(["sh", "tools/dev-conf.sh", "9443", "9443", "1", "2", "3"], cwd=ROOT,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=30)
    check(bad.returncode != 0, "dev-conf.sh accepted one port twice")


def _listeners(port):
    p = subprocess.run(["ss", "-ltnH", "sport = :%d" % port], stdout=subprocess.PIPE,
                       text=True, timeout=10)
    return sorted(line.split()[3] for line in p.stdout.splitlines() if line.strip())


def test_run_dev_serves_on_the_given_loopback_ports():
    """tools/run-dev.sh (make run) with other ports: the banner and its curl
    lines name them, every listener is on 127.0.0.1, a banner curl works."""
    https, http, admin, upstream, redis = (free_port() for _ in range(5))
    env = dict(os.environ, HTTPS_PORT=str(https), HTTP_PORT=str(http), ADMIN_PORT=str(admin),
               UPSTREAM_PORT=str(upstream), REDIS_PORT=str(redis),
               FLOWGATE=os.environ.get("FG_BINARY", os.path.join(ROOT, "build/asan/flowgate")),
               ASAN_OPTIONS="detect_leaks=1:abort_on_error=0")
    out_path = os.path.join(tmpdir(), "run-dev.out")
    with open(out_path, "w") as out:
        proc = subprocess.Popen(["sh", "tools/run-dev.sh"], cwd=ROOT, env=env, stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    register_pid(proc.pid, "run-dev.sh")
    try:
        wait_port(admin, 30, proc, "run-dev.sh")
        wait_port(https, 10, proc, "run-dev.sh")
        with open(out_path) as f:
            banner = f.read()
        check("https://localhost:%d " % https in banner and "http://localhost:%d " % http in banner
              and "127.0.0.1:%d" % admin in banner, "banner does not name the ports: %r" % banner)
        curls = [l.strip() for l in banner.splitlines() if l.strip().startswith("curl ")]
        check(len(curls) >= 4, "banner has no curl lines: %r" % banner)
        for line in curls:
            check(re.search(r":(%d|%d|%d)/" % (https, http, admin), line),
                  "curl line not on the given ports: %r" % line)
        for port in (https, http, admin, upstream):
            addrs = _listeners(port)
            check(addrs, "nothing listens on %d" % port)
            eq(set(addrs), {"127.0.0.1:%d" % port}, "listeners on port %d" % port)
        p = subprocess.run(["curl", "-sS", "-D", "-", "-o", "/dev/null", "--max-time", "10",
                            "--cacert", CA, "https://localhost:%d/" % https],
                           stdout=subprocess.PIPE, text=True, timeout=20)
        # curl speaks HTTP/2 when offered (http2.enabled), as a browser does.
        check(p.stdout.startswith("HTTP/2 200"), "banner curl: %r" % p.stdout[:300])
        check(re.search(r"^strict-transport-security: max-age=300\r?$", p.stdout, re.M | re.I),
              "demo HSTS: %r" % p.stdout)
    finally:
        rc, killed = stop_process(proc, term_timeout=15)
        if killed:
            os.killpg(proc.pid, signal.SIGKILL)  # the session run-dev.sh led
    check(not killed, "run-dev.sh did not stop on SIGTERM")
    for port in (https, http, admin, upstream):
        eq(_listeners(port), [], "listeners on %d after run-dev.sh stopped" % port)


def _git_describe():
    if not os.path.exists(os.path.join(ROOT, ".git")) or not shutil.which("git"):
        return None
    p = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=ROOT, timeout=30,
                       stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    return p.stdout.strip() if p.returncode == 0 else None


def test_version_names_the_source_revision():
    """-V's first line names the revision; the Makefile passes git describe
    in a checkout and "unknown" outside one (no date either way)."""
    p = run_flowgate(["-V"])
    eq(p.returncode, 0, "exit status of -V")
    first = p.stdout.splitlines()[0] if p.stdout else ""
    m = re.match(r"^flowgate \d+\.\d+\.\d+ \(revision (\S+)\)$", first)
    check(m, "first line of -V has no revision: %r" % first)
    if _git_describe() is not None:
        check(m.group(1) != "unknown", "built in a git checkout, -V says revision unknown")

    rc, out = _make(["-n", "-B", "build/obj/main.o"])
    eq(rc, 0, "make -n build/obj/main.o (%r)" % out[-500:])
    want = _git_describe() or "unknown"
    check('-DFG_REVISION=\\"%s\\"' % want in out, "main.o not built with revision %s: %r"
          % (want, out[-500:]))
    rc, out = _make(["-n", "-B", "build/obj/cfg.o"])
    check("FG_REVISION" not in out, "every object depends on the revision: %r" % out[-500:])

    copy = os.path.join(tmpdir(), "src")
    os.makedirs(copy)
    shutil.copy(os.path.join(ROOT, "Makefile"), copy)
    shutil.copytree(os.path.join(ROOT, "gateway"), os.path.join(copy, "gateway"))
    rc, out = _make(["-n", "-B", "build/obj/main.o"], cwd=copy)
    eq(rc, 0, "make -n outside a checkout (%r)" % out[-500:])
    check('-DFG_REVISION=\\"unknown\\"' in out, "outside a checkout: %r" % out[-500:])


def test_sigusr1_reopens_logs_and_says_so():
    """After logrotate renames the error log, SIGUSR1 makes a new file whose
    first line says the logs were reopened."""
    with Flowgate() as fg:
        rotated = fg.error_path + ".1"
        os.rename(fg.error_path, rotated)
        fg.proc.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + 10
        text = ""
        while time.monotonic() < deadline:
            if os.path.exists(fg.error_path):
                with open(fg.error_path) as f:
                    text = f.read()
                if "reopened" in text:
                    break
            time.sleep(0.05)
        check(re.search(r"\[info\] SIGUSR1: log files reopened$", text, re.M),
              "no reopen line in the new error log: %r" % text[-500:])
        with open(rotated) as f:
            check("reopened" not in f.read(), "the reopen line went to the rotated file")


def test_readme_documents_every_key():
    """Every key gateway/cfg.c accepts has a row in the README's configuration
    reference, and appears in both shipped configurations (a JWT key takes
    secret_env or secret_file, one of the two)."""
    with open(os.path.join(ROOT, "gateway", "cfg.c")) as f:
        src = f.read()
    keys = set()
    for m in re.finditer(r"static const char \*const \w+_keys\[\] = \{(.*?)\};", src, re.S):
        keys |= set(re.findall(r'"(\w+)"', m.group(1)))
    check(len(keys) > 50, "found only %d keys in cfg.c's key lists" % len(keys))
    with open(os.path.join(ROOT, "README.md")) as f:
        readme = f.read()
    rows = set()
    for m in re.finditer(r"^\| `([^`]+)` \| [^|]* \| [^|]+ \|$", readme, re.M):
        rows |= {part.replace("[]", "") for part in m.group(1).split(".")}
    eq(sorted(keys - rows), [], "keys without a row in the README's configuration reference")
    for name in ("flowgate.conf", "flowgate.prod.conf"):
        with open(os.path.join(ROOT, "conf", name)) as f:
            text = re.sub(r"#[^\n]*", "", f.read())
        present = set(re.findall(r"\b(\w+)\s*[=:]", text))
        missing = keys - present - {"secret_env", "secret_file"}
        eq(sorted(missing), [], "keys missing from conf/%s" % name)
        check(present & {"secret_env", "secret_file"}, "conf/%s names no JWT secret" % name)
