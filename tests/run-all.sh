#!/bin/sh
# run-all.sh - every test stage of `make test`, each bounded by timeout.
#
# Stages: unit binaries (build/tests/test_*), fuzz corpus replay
# (build/fuzz/fuzz_*), integration (tests/integration/run.py against
# build/asan/flowgate). Each stage ends with "STAGE: N passed, N failed"; the
# counts are summed and the last line is "N passed, N failed". Exits 0 only
# when nothing failed and every stage ran to its summary line.
set -u

cd "$(dirname "$0")/.." || exit 1

# Debian's python3-* packages (selenium for the browser suite, h2) are
# installed for Debian's interpreter; a python3 found first on PATH (a venv,
# pyenv) would not see them.
PYTHON=/usr/bin/python3
[ -x "$PYTHON" ] || PYTHON=python3

UNIT_TIMEOUT=${UNIT_TIMEOUT:-300}
FUZZ_TIMEOUT=${FUZZ_TIMEOUT:-300}
INTEGRATION_TIMEOUT=${INTEGRATION_TIMEOUT:-1200}

total_passed=0
total_failed=0
broken=0
log=$(mktemp)
trap 'rm -f "$log" "$log.rc"' EXIT
trap 'exit 130' INT TERM

# stage NAME SECONDS COMMAND...: run it, show its output, add its summary.
stage() {
    name=$1 secs=$2
    shift 2
    echo "== $name"
    { timeout -k 10 "$secs" "$@"; echo $? >"$log.rc"; } 2>&1 | tee "$log"
    rc=$(cat "$log.rc" 2>/dev/null || echo 1)
    rm -f "$log.rc"
    summary=$(grep "^$name: [0-9][0-9]* passed, [0-9][0-9]* failed$" "$log" | tail -n 1)
    if [ -z "$summary" ]; then
        echo "$name: stage did not finish (no summary line; timeout is ${secs}s)"
        broken=$((broken + 1))
        total_failed=$((total_failed + 1))
        return
    fi
    p=$(echo "$summary" | sed 's/^[a-z]*: \([0-9]*\) passed.*/\1/')
    f=$(echo "$summary" | sed 's/.* \([0-9]*\) failed$/\1/')
    if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then
        echo "$name: exited with status $rc"
        broken=$((broken + 1))
        f=1
    fi
    total_passed=$((total_passed + p))
    total_failed=$((total_failed + f))
}

set -- build/tests/test_*
[ -e "$1" ] || set --
stage unit "$UNIT_TIMEOUT" sh tests/run-unit.sh "$@"

set -- build/fuzz/fuzz_*
[ -e "$1" ] || set --
stage fuzz "$FUZZ_TIMEOUT" sh tests/fuzz/replay.sh "$@"

stage integration "$INTEGRATION_TIMEOUT" \
    "$PYTHON" tests/integration/run.py --binary build/asan/flowgate

echo "$total_passed passed, $total_failed failed"
[ "$total_failed" -eq 0 ] && [ "$broken" -eq 0 ]
