"""TLS configuration as seen by testssl.sh: protocols, cipher categories, server
preferences, forward secrecy, server defaults and the vulnerability checks."""

import json
import os
import shutil
import signal
import subprocess

from harness import CA, LOOPBACK, Flowgate, Skip, Upstream, check, fail, register_pid, tmpdir

TIMEOUT = 240
TESTSSL_SECONDS = 180

# -p protocols, -s cipher categories, -f forward secrecy, -P server preferences,
# -S server defaults, -U every vulnerability check. About 35 s here.
CHECKS = ["-p", "-s", "-f", "-P", "-S", "-U"]

NOT_OFFERED_PROTOCOLS = ("SSLv2", "SSLv3", "TLS1", "TLS1_1")
OFFERED_PROTOCOLS = ("TLS1_2", "TLS1_3")
# NULL, anonymous, export, LOW (64-bit, DES, RC2, RC4), 3DES/IDEA, AVERAGE (obsolete CBC).
NOT_OFFERED_CIPHERS = ("cipherlist_NULL", "cipherlist_aNULL", "cipherlist_EXPORT",
                       "cipherlist_LOW", "cipherlist_3DES_IDEA", "cipherlist_AVERAGE")
VULNERABILITIES = ("heartbleed", "CCS", "ticketbleed", "ROBOT", "secure_renego",
                   "secure_client_renego", "CRIME_TLS", "BREACH", "POODLE_SSL", "fallback_SCSV",
                   "SWEET32", "FREAK", "DROWN", "LOGJAM", "BEAST", "LUCKY13", "RC4")
BAD_SEVERITIES = ("MEDIUM", "HIGH", "CRITICAL")
# Findings about the certificate file itself (the dev CA's leaf has no CRL or OCSP
# URI, no CT, no CAA record): properties of certs/gen-dev-certs.sh, not of the
# TLS setup under test.
CERTIFICATE_IDS = ("cert", "certs_", "certificate_", "OCSP_", "DNS_CAArecord", "intermediate_")
AEAD_MARKERS = ("GCM", "CHACHA20", "CCM")


def _testssl():
    for name in ("testssl", "testssl.sh"):
        path = shutil.which(name)
        if path:
            return path
    raise Skip("testssl.sh is not installed (Debian package testssl.sh)")


def _run_testssl(port, jsonfile):
    cmd = [_testssl(), "--quiet", "--warnings", "off", "--color", "0", "--ip", LOOPBACK,
           "--nodns", "min", "--add-ca", CA, "--openssl", shutil.which("openssl") or "openssl",
           "--connect-timeout", "10", "--openssl-timeout", "10",
           "--jsonfile", jsonfile] + CHECKS + ["https://%s:%d/" % (LOOPBACK, port)]
    out_path = os.path.join(tmpdir(), "testssl.out")
    env = dict(os.environ, TMPDIR=tmpdir())
    with open(out_path, "wb") as out:
        p = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                             env=env, start_new_session=True)
    register_pid(p.pid, "testssl")
    try:
        p.wait(timeout=TESTSSL_SECONDS)
    except subprocess.TimeoutExpired:
        # testssl.sh runs openssl children in its own session: stop that group.
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
        fail("testssl did not finish within %d s (output in %s)" % (TESTSSL_SECONDS, out_path))
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
    try:
        with open(jsonfile) as f:
            findings = json.load(f)
    except (OSError, ValueError) as e:
        fail("testssl (exit %s) left no readable JSON (%s); output in %s"
             % (p.returncode, e, out_path))
    return {f["id"]: f for f in findings}, out_path


def _finding(findings, fid, out_path):
    f = findings.get(fid)
    if f is None:
        warns = ["%s: %s" % (k, v["finding"]) for k, v in findings.items()
                 if v.get("severity") == "WARN"]
        fail("testssl reported nothing for %s (scan incomplete; warnings: %s; output in %s)"
             % (fid, "; ".join(warns) or "none", out_path))
    return f


def test_testssl_protocols_ciphers_vulnerabilities():
    jsonfile = os.path.join(tmpdir(), "testssl.json")
    with Upstream(record=False) as up, Flowgate(upstream=up) as fg:
        findings, out_path = _run_testssl(fg.https_port, jsonfile)

    for line in ("%-28s %-8s %s" % (k, v.get("severity"), v.get("finding"))
                 for k, v in findings.items()):
        print(line)

    for fid in NOT_OFFERED_PROTOCOLS:
        f = _finding(findings, fid, out_path)
        check(f["finding"].startswith("not offered"), "%s: %s" % (fid, f["finding"]))
    for fid in OFFERED_PROTOCOLS:
        f = _finding(findings, fid, out_path)
        check(f["finding"].startswith("offered"), "%s: %s" % (fid, f["finding"]))
    for fid in NOT_OFFERED_CIPHERS:
        f = _finding(findings, fid, out_path)
        check(f["finding"].startswith("not offered"), "%s: %s" % (fid, f["finding"]))

    # Server preferences: only AEAD suites, and none at all below TLS 1.2.
    for fid in ("cipherorder_SSLv3", "cipherorder_TLSv1", "cipherorder_TLSv1_1"):
        check(fid not in findings or not findings[fid]["finding"].strip(),
              "%s: %s" % (fid, findings.get(fid, {}).get("finding")))
    for fid in ("cipherorder_TLSv1_2", "cipherorder_TLSv1_3"):
        suites = _finding(findings, fid, out_path)["finding"].split()
        check(suites, "%s lists no cipher suite" % fid)
        weak = [s for s in suites if not any(m in s for m in AEAD_MARKERS)]
        check(not weak, "%s offers non-AEAD suites: %s" % (fid, " ".join(weak)))

    for fid in VULNERABILITIES:
        _finding(findings, fid, out_path)

    bad = ["%s %s: %s" % (k, v["severity"], v["finding"]) for k, v in findings.items()
           if v.get("severity") in BAD_SEVERITIES and not k.startswith(CERTIFICATE_IDS)]
    check(not bad, "testssl findings of severity MEDIUM or above:\n  " + "\n  ".join(bad))


test_testssl_protocols_ciphers_vulnerabilities.timeout = TIMEOUT
