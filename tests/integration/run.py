#!/usr/bin/env python3
"""Integration test runner.

    python3 tests/integration/run.py [--binary build/asan/flowgate] [-k SUBSTR]
                                     [--timeout 60] [--keep] [--list]

Discovers tests/integration/test_*.py and runs every function named test_*,
each in its own Python process with a fresh temporary directory and a time
bound (a module may set TIMEOUT, a function a .timeout attribute). Processes a
test starts are registered by PID; whatever is still alive afterwards (test
hung, timed out, interrupted) is stopped here by PID.

Prints "ok NAME", "FAIL NAME: reason" or "skip NAME: reason" per test, then
"integration: N passed, N failed"; exits 1 on any failure.
"""

import argparse
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
DEFAULT_TIMEOUT = 60


def load_module(path):
    name = os.path.splitext(os.path.basename(path))[0]
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.path.insert(0, HERE)
    spec.loader.exec_module(mod)
    return mod


def discover(pattern):
    tests = []
    for fname in sorted(os.listdir(HERE)):
        if not (fname.startswith("test_") and fname.endswith(".py")):
            continue
        path = os.path.join(HERE, fname)
        mod = load_module(path)
        default = getattr(mod, "TIMEOUT", DEFAULT_TIMEOUT)
        for name, fn in vars(mod).items():
            if not name.startswith("test_") or not callable(fn):
                continue
            if getattr(fn, "__module__", None) != mod.__name__:
                continue
            full = "%s.%s" % (fname[:-3], name)
            if pattern and pattern not in full:
                continue
            line = getattr(getattr(fn, "__code__", None), "co_firstlineno", 0)
            tests.append((fname, line, full, path, name, getattr(fn, "timeout", default)))
    tests.sort(key=lambda t: (t[0], t[1]))
    return [t[2:] for t in tests]


# ------------------------------------------------------------ child side

class TestTimeout(Exception):
    pass


def child(path, func, result_file, timeout):
    """Run one test function in this process and write its outcome as JSON."""
    sys.path.insert(0, HERE)
    import harness  # noqa: E402 (needs the path above)

    def on_alarm(signum, frame):
        raise TestTimeout("test exceeded its %d s time bound" % timeout)

    def on_term(signum, frame):
        raise KeyboardInterrupt("terminated")

    signal.signal(signal.SIGALRM, on_alarm)
    signal.signal(signal.SIGTERM, on_term)
    outcome = {"status": "fail", "reason": "did not finish"}
    try:
        mod = load_module(path)
        signal.alarm(timeout)
        try:
            getattr(mod, func)()
        finally:
            signal.alarm(0)
        outcome = {"status": "ok"}
    except harness.Skip as e:
        outcome = {"status": "skip", "reason": str(e)}
    except harness.TestFailure as e:
        tb = traceback.extract_tb(e.__traceback__)
        where = next(("%s:%d" % (os.path.basename(f.filename), f.lineno) for f in reversed(tb)
                      if os.path.basename(f.filename).startswith("test_")), "")
        outcome = {"status": "fail", "reason": "%s%s" % (str(e), " [%s]" % where if where else "")}
    except TestTimeout as e:
        outcome = {"status": "fail", "reason": str(e) + "\n" + traceback.format_exc(limit=-4)}
    except BaseException as e:  # a bug in the test or an unexpected error: show where
        outcome = {"status": "fail",
                   "reason": "%s: %s\n%s" % (type(e).__name__, e, traceback.format_exc(limit=-6))}
    with open(result_file, "w") as f:
        json.dump(outcome, f)
    return 0


# ------------------------------------------------------------ parent side

def pid_alive_as(pid, marker):
    """True when PID is alive and its command line mentions MARKER (PID reuse guard)."""
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            cmd = f.read().replace(b"\0", b" ").decode("latin-1")
    except OSError:
        return False
    return marker in cmd


def sweep(pidfile):
    """Stop, by PID, every registered process still running. Returns how many."""
    left = []
    try:
        with open(pidfile) as f:
            for line in f:
                parts = line.split(None, 1)
                if len(parts) == 2 and parts[0].isdigit():
                    left.append((int(parts[0]), parts[1].strip()))
    except OSError:
        return 0
    alive = [(p, m) for p, m in left if pid_alive_as(p, m)]
    for p, _ in alive:
        try:
            os.kill(p, signal.SIGTERM)
        except OSError:
            pass
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(pid_alive_as(p, m) for p, m in alive):
        time.sleep(0.05)
    for p, m in alive:
        if pid_alive_as(p, m):
            try:
                os.kill(p, signal.SIGKILL)
            except OSError:
                pass
    return len(alive)


def stop_child(proc):
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def run_one(full, path, func, timeout, args):
    tmp = tempfile.mkdtemp(prefix="fg-%s-" % func[5:][:40])
    pidfile = os.path.join(tmp, "pids")
    result_file = os.path.join(tmp, "result.json")
    log = os.path.join(tmp, "runner.log")
    env = dict(os.environ)
    env.update({"FG_TEST_TMP": tmp, "FG_TEST_PIDFILE": pidfile, "FG_BINARY": args.binary,
                "PYTHONDONTWRITEBYTECODE": "1"})
    cmd = [sys.executable, os.path.abspath(__file__), "--child", path, func, result_file,
           str(timeout)]
    interrupted = False
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, cwd=ROOT)
        try:
            # The child stops itself at TIMEOUT; this bound also covers its cleanup.
            proc.wait(timeout=timeout + 20)
        except subprocess.TimeoutExpired:
            stop_child(proc)
        except KeyboardInterrupt:
            interrupted = True
            stop_child(proc)
    leftovers = sweep(pidfile)
    try:
        with open(result_file) as f:
            outcome = json.load(f)
    except (OSError, ValueError):
        outcome = {"status": "fail", "reason": "test process ended without a result "
                   "(exit %s)\n%s" % (proc.returncode, open(log, errors="replace").read()[-2000:])}
    if leftovers and outcome["status"] == "ok":
        outcome = {"status": "fail", "reason": "left %d process(es) running" % leftovers}
    if outcome["status"] == "fail" or args.keep:
        outcome["tmp"] = tmp
    else:
        shutil.rmtree(tmp, ignore_errors=True)
    if interrupted:
        raise KeyboardInterrupt
    return outcome


def interrupt(signum, frame):
    raise KeyboardInterrupt


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        _, _, path, func, result_file, timeout = sys.argv
        return child(path, func, result_file, int(timeout))

    ap = argparse.ArgumentParser(description="flowgate integration tests")
    ap.add_argument("--binary", default="build/asan/flowgate")
    ap.add_argument("-k", dest="pattern", default="", help="only tests whose name contains this")
    ap.add_argument("--timeout", type=int, default=None, help="per-test bound in seconds")
    ap.add_argument("--keep", action="store_true", help="keep every test's temp dir")
    ap.add_argument("--list", action="store_true", help="list the tests and exit")
    args = ap.parse_args()
    args.binary = os.path.abspath(os.path.join(ROOT, args.binary)) \
        if not os.path.isabs(args.binary) else args.binary

    signal.signal(signal.SIGTERM, interrupt)
    tests = discover(args.pattern)
    if args.list:
        for full, _, _, t in tests:
            print("%s (%d s)" % (full, t))
        return 0
    if not os.path.isfile(args.binary):
        print("note: %s does not exist; every test that starts flowgate will fail"
              % args.binary, flush=True)
    if not os.path.isfile(os.path.join(ROOT, "certs", "dev", "server.crt")):
        print("note: certs/dev/server.crt missing (run `make certs`)", flush=True)

    passed = failed = skipped = 0
    started = time.monotonic()
    try:
        for full, path, func, timeout in tests:
            outcome = run_one(full, path, func, args.timeout or timeout, args)
            if outcome["status"] == "ok":
                passed += 1
                print("ok %s" % full, flush=True)
            elif outcome["status"] == "skip":
                skipped += 1
                print("skip %s: %s" % (full, outcome["reason"]), flush=True)
            else:
                failed += 1
                reason = outcome["reason"].rstrip().replace("\n", "\n    ")
                print("FAIL %s: %s\n    (files: %s)" % (full, reason, outcome.get("tmp")),
                      flush=True)
    except KeyboardInterrupt:
        print("interrupted", flush=True)
        print("integration: %d passed, %d failed" % (passed, failed + 1), flush=True)
        return 130
    if skipped:
        print("(%d skipped; %.0f s)" % (skipped, time.monotonic() - started))
    else:
        print("(%.0f s)" % (time.monotonic() - started))
    print("integration: %d passed, %d failed" % (passed, failed), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
