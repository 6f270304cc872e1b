#!/bin/sh
# bench/reload.sh - what a reload costs.
#
#   sh bench/reload.sh                     # SECS=10 ROUNDS=3 RELOADS=1000
#
# One flowgate (one worker, TLS, the S1 setup of bench/run: GET / over
# keep-alive, 64 connections) in front of the nginx backend:
#   - S1 without reloads and S1 with a SIGHUP every second, in alternation,
#     ROUNDS times: requests/s, p99, errors (non-2xx and socket errors);
#   - the CPU time one reload costs, idle (RELOADS reloads, one after the
#     other, each waited for through /metrics);
#   - RSS before and after those RELOADS reloads.
# FLOWGATE=PATH measures that binary instead of building build/flowgate.
set -eu

. "$(dirname "$0")/lib.sh"

SECS=${SECS:-10}
ROUNDS=${ROUNDS:-3}
RELOADS=${RELOADS:-1000}
CONNS=64

need wrk curl python3 openssl /usr/sbin/nginx

bench_init
build_flowgate

BACKEND_PORT=$(free_port)
start_backend "$BACKEND_PORT"
PORT=$(free_port)
FG_ADMIN=$(free_port)
export FG_ADMIN
start_flowgate "$PORT" "$BACKEND_PORT"
PID=$FLOWGATE_PID
URL=https://127.0.0.1:$PORT/

generation() {
    curl -s "http://127.0.0.1:$FG_ADMIN/metrics" |
        awk '$1 == "flowgate_config_generation" {print $2}'
}

# reload_and_wait: one SIGHUP, then wait until the generation moved.
reload_and_wait() {
    _g=$(generation)
    kill -HUP "$PID"
    while [ "$(generation)" = "$_g" ]; do :; done
}

errors_of() {
    awk '/Socket errors/ {print} /Non-2xx/ {print}' "$1" | tr '\n' ' '
}

log "warm-up"
wrk -t1 -c$CONNS -d2s "$URL" >/dev/null 2>&1
for r in $(seq 1 "$ROUNDS"); do
    wrk_line "S1 no reloads (round $r)" "$PID" "$BENCH_TMP/quiet-$r.txt" "$URL"
    echo "    errors: $(errors_of "$BENCH_TMP/quiet-$r.txt")"
    (while kill -HUP "$PID" 2>/dev/null; do sleep 1; done) &
    LOOP=$!
    wrk_line "S1 reload/s (round $r)" "$PID" "$BENCH_TMP/reload-$r.txt" "$URL"
    kill "$LOOP" 2>/dev/null || true
    wait "$LOOP" 2>/dev/null || true
    echo "    errors: $(errors_of "$BENCH_TMP/reload-$r.txt")"
done

rss() { awk '/^VmRSS:/ {print $2}' /proc/"$PID"/status; }
before=$(rss)
t0=$(cpu_ticks "$PID")
i=0
while [ "$i" -lt "$RELOADS" ]; do
    reload_and_wait
    i=$((i + 1))
done
t1=$(cpu_ticks "$PID")
wrk -t1 -c$CONNS -d2s "$URL" >/dev/null 2>&1
after=$(rss)
awk -v t=$((t1 - t0)) -v hz="$(getconf CLK_TCK)" -v n="$RELOADS" -v b="$before" -v a="$after" \
    'BEGIN { printf "%d reloads: %.2f ms of flowgate CPU each; RSS %d KiB before, %d KiB after (%+d KiB)\n",
             n, t / hz * 1000 / n, b, a, a - b }'
