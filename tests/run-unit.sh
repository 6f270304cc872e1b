#!/bin/sh
# run-unit.sh BIN... - run each cmocka unit test binary and count its results.
#
# cmocka ends a run with "[  PASSED  ] N test(s)." and, when some failed,
# "[  FAILED  ] N test(s), listed below:". A binary that exits non-zero
# without such a line (a crash, a sanitizer abort) counts as one failure.
# Prints one line per binary, then "unit: N passed, N failed"; exits 1 on
# any failure.
set -u

passed=0
failed=0
out=$(mktemp)
trap 'rm -f "$out"' EXIT
trap 'exit 130' INT TERM

for bin in "$@"; do
    name=${bin##*/}
    if [ ! -x "$bin" ]; then
        echo "FAIL $name: not built"
        failed=$((failed + 1))
        continue
    fi
    # Tests run under ASan/UBSan: a report aborts the binary and is counted.
    ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=0} \
    UBSAN_OPTIONS=${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1} \
        "$bin" >"$out" 2>&1
    rc=$?
    p=$(sed -n 's/^\[  PASSED  \] \([0-9][0-9]*\) test.*/\1/p' "$out" | awk '{s+=$1} END {print s+0}')
    f=$(sed -n 's/^\[  FAILED  \] \([0-9][0-9]*\) test.*/\1/p' "$out" | awk '{s+=$1} END {print s+0}')
    if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then
        f=1 # crashed or aborted before cmocka could report
    fi
    if [ "$f" -ne 0 ] || grep -q -e 'ERROR: AddressSanitizer' -e 'runtime error:' \
            -e 'ERROR: LeakSanitizer' "$out"; then
        [ "$f" -eq 0 ] && f=1
        echo "FAIL $name: $p passed, $f failed (exit $rc)"
        sed 's/^/    /' "$out" | tail -n 40
    else
        echo "ok $name: $p passed"
    fi
    passed=$((passed + p))
    failed=$((failed + f))
done

echo "unit: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
