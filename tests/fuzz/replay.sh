#!/bin/sh
# replay.sh BIN... - replay each fuzz target's seed corpus once.
#
# build/fuzz/fuzz_X replays tests/fuzz/corpus/fuzz_X/ (libFuzzer runs every
# file given on the command line once and exits 0 when none crashed). A target
# without a corpus runs on an empty input. Prints one line per target, then
# "fuzz: N passed, N failed" (N counts targets); exits 1 on any failure.
set -u

here=$(cd "$(dirname "$0")" && pwd)
passed=0
failed=0
out=$(mktemp)
trap 'rm -f "$out"' EXIT
trap 'exit 130' INT TERM

for bin in "$@"; do
    name=${bin##*/}
    corpus=$here/corpus/$name
    if [ ! -x "$bin" ]; then
        echo "FAIL $name: not built"
        failed=$((failed + 1))
        continue
    fi
    n=0
    if [ -d "$corpus" ]; then
        n=$(find "$corpus" -type f | wc -l)
    fi
    if [ "$n" -gt 0 ]; then
        # -runs=0 on a directory executes each input exactly once.
        "$bin" -runs=0 "$corpus" >"$out" 2>&1
    else
        printf '' >"$out.empty"
        "$bin" "$out.empty" >"$out" 2>&1
        rm -f "$out.empty"
    fi
    rc=$?
    if [ "$rc" -eq 0 ] && ! grep -q -e 'ERROR: AddressSanitizer' -e 'runtime error:' \
            -e 'ERROR: LeakSanitizer' -e 'ERROR: libFuzzer' "$out"; then
        echo "ok $name: $n inputs"
        passed=$((passed + 1))
    else
        echo "FAIL $name: exit $rc on $n inputs"
        sed 's/^/    /' "$out" | tail -n 40
        failed=$((failed + 1))
    fi
done

echo "fuzz: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
