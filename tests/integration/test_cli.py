"""Command line: -t configuration check, -V."""

import os
import re

from harness import (CERTS, base_config, check, eq, free_port, render_config, run_flowgate,
                     tmpdir)

TIMEOUT = 60


def _write(text, name="flowgate.conf"):
    path = os.path.join(tmpdir(), name)
    with open(path, "w") as f:
        f.write(text)
    return path


def _base_text():
    return render_config(base_config(free_port(), free_port(), free_port(), "127.0.0.1:9",
                                     tmpdir()))


def test_check_valid_config():
    path = _write(_base_text())
    p = run_flowgate(["-t", "-c", path])
    eq(p.returncode, 0, "exit status of -t on a valid file (stderr %r)" % p.stderr[-500:])
    check("configuration OK" in p.stdout + p.stderr, "no 'configuration OK' in %r"
          % (p.stdout + p.stderr))


def test_check_unknown_key_reports_file_and_line():
    text = _base_text()
    line = text.count("\n") + 1
    path = _write(text + "bogus_key = 1;\n")
    p = run_flowgate(["-t", "-c", path])
    eq(p.returncode, 1, "exit status for an unknown key")
    out = p.stdout + p.stderr
    check(re.search(r"(^|\n)%s:%d: " % (re.escape(path), line), out),
          "expected '%s:%d: ...' in %r" % (path, line, out))
    check("configuration OK" not in out, "said OK for a bad file")


def test_check_short_jwt_secret_and_mismatched_key():
    path = _write(_base_text())
    p = run_flowgate(["-t", "-c", path], env={"FLOWGATE_JWT_SECRET": "too-short"})
    eq(p.returncode, 1, "exit status for a secret shorter than 32 bytes")
    check(re.search(r"%s:\d+: " % re.escape(path), p.stdout + p.stderr),
          "no FILE:LINE for the short secret: %r" % (p.stdout + p.stderr))
    text = _base_text().replace(os.path.join(CERTS, "server.key"), os.path.join(CERTS, "other.key"))
    path = _write(text, "mismatch.conf")
    p = run_flowgate(["-t", "-c", path])
    eq(p.returncode, 1, "exit status for a certificate whose key does not match")
    check(re.search(r"%s:\d+: " % re.escape(path), p.stdout + p.stderr),
          "no FILE:LINE for the mismatched key: %r" % (p.stdout + p.stderr))


def test_check_network_with_host_bits_names_file_line_and_meant_network():
    text = _base_text()
    line = text.count("\n") + 2
    good = ('rate_limit: {\n'
            '  trusted_proxies = [ "10.0.0.1", "10.0.0.0/8", "::1", "2001:db8::/32" ];\n'
            '};\n')
    path = _write(text + good, "good.conf")
    p = run_flowgate(["-t", "-c", path])
    eq(p.returncode, 0, "exit status for networks without host bits (stderr %r)" % p.stderr[-500:])
    bad = good.replace('"10.0.0.0/8"', '"192.168.1.5/24"').replace('"2001:db8::/32"',
                                                                  '"2001:db8::1/64"')
    path = _write(text + bad, "bad.conf")
    p = run_flowgate(["-t", "-c", path])
    eq(p.returncode, 1, "exit status for networks with host bits set")
    out = p.stdout + p.stderr
    for net, meant in (("192.168.1.5/24", "192.168.1.0/24"), ("2001:db8::1/64", "2001:db8::/64")):
        index = 1 if "." in net else 3
        want = ('%s:%d: rate_limit.trusted_proxies[%d]: "%s" has host bits set '
                '(did you mean "%s"?)' % (path, line, index, net, meant))
        check(want in out, "expected %r in %r" % (want, out))
    check("configuration OK" not in out, "said OK for a bad file")


def test_version_flag():
    p = run_flowgate(["-V"])
    eq(p.returncode, 0, "exit status of -V")
    out = (p.stdout + p.stderr).strip()
    check(re.search(r"flowgate\S*\s+v?\d+\.\d+\.\d+", out.splitlines()[0] if out else ""),
          "first line of -V is not 'flowgate X.Y.Z': %r" % out[:200])
    low = out.lower()
    for lib in ("openssl", "libevent", "jansson", "libconfig", "hiredis", "nghttp2"):
        check(lib in low, "-V does not name %s among the linked libraries: %r" % (lib, out[:500]))
