#!/bin/sh
# bench/callgrind.sh - instructions per request, counted by callgrind.
#
#   sh bench/callgrind.sh BINARY [S1|S1N|S2]
#
# Runs BINARY under `valgrind --tool=callgrind` twice, behind the nginx
# backend of bench/lib.sh: once for 200 and once for 2200 keep-alive requests
# over a single TLS connection (bench/cg_client.py, one request at a time),
# and prints the difference of the two program totals divided by 2000: the
# instructions of one request, with start-up, the handshake and shutdown
# cancelled out. Every answer must be a 200.
#
#   S1  GET / (route auth = "none")                                 (default)
#   S1N S1 with the upstream server given by name, resolved through a hosts
#       file (resolver.hosts_file): what a resolved name costs a request
#   S2  GET /api/items with a valid HS256 JWT and an allowed Origin: the
#       route requires auth, the jwt group, tier limits in a redis-server
#       started for the run, CORS (s2_knobs in bench/lib.sh, as bench/run)
#
# KEEP=1 keeps the temp dir with both callgrind.out files, for
#   callgrind_annotate --inclusive=yes $DIR/callgrind.out.2200
# CG_PER_FUNCTION=N also prints the N functions (self cost) whose
# instructions per request differ most between the two runs.
set -eu

. "$(dirname "$0")/lib.sh"

[ $# -ge 1 ] || die "usage: sh bench/callgrind.sh BINARY [S1|S1N|S2]"
BIN=$(cd "$(dirname "$1")" && pwd)/$(basename "$1")
SCEN=${2:-S1}
[ -x "$BIN" ] || die "$1 is not an executable"
case $SCEN in S1 | S1N | S2) ;; *) die "unknown scenario $SCEN (S1, S1N or S2)" ;; esac
need valgrind callgrind_annotate python3 openssl /usr/sbin/nginx
[ "$SCEN" = S2 ] && need redis-server curl

bench_init
FLOWGATE_BIN=$BIN
BACKEND_PORT=$(free_port)
start_backend "$BACKEND_PORT"

REQ_PATH=/
set --
if [ "$SCEN" = S1N ]; then
    printf '127.0.0.1 backend.bench.test\n' >"$BENCH_TMP/hosts"
    FG_UPSTREAM_HOST=backend.bench.test
    FG_EXTRA="resolver: { hosts_file = \"$BENCH_TMP/hosts\"; };"
fi
if [ "$SCEN" = S2 ]; then
    REDIS_PORT=$(free_port)
    spawn redis redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' \
        --appendonly no --dir "$BENCH_TMP"
    wait_port "$REDIS_PORT" "$SPAWNED_PID" redis
    # Valgrind slows flowgate down some fifty times: a 50 ms deadline would
    # turn Redis calls into local fallbacks and measure those instead.
    S2_REDIS_TIMEOUT_MS=5000 s2_knobs "$REDIS_PORT"
    FG_ADMIN=$(free_port)
    REQ_PATH=/api/items
    set -- "Authorization: Bearer $S2_TOKEN" "Origin: $BENCH_ORIGIN"
fi

# total N HEADER...: run N requests under callgrind; sets TOTAL to the
# program's total instructions (Ir).
total() {
    _cgn=$1
    shift
    _port=$(free_port)
    flowgate_conf "$_port" "$BACKEND_PORT" "cg$_cgn"
    _out=$BENCH_TMP/callgrind.out.$_cgn
    spawn "cg$_cgn" valgrind --tool=callgrind --callgrind-out-file="$_out" \
        "$FLOWGATE_BIN" -c "$FLOWGATE_CONF"
    _pid=$SPAWNED_PID
    wait_port "$_port" "$_pid" "cg$_cgn"
    if [ "$SCEN" = S2 ]; then
        _i=0
        until curl -s --max-time 5 "http://127.0.0.1:$FG_ADMIN/readyz" | grep -q '"redis":"up"'; do
            _i=$((_i + 1))
            [ $_i -lt 200 ] || die "flowgate's Redis link did not come up"
            sleep 0.1
        done
    fi
    python3 "$BENCH_ROOT/bench/cg_client.py" "$_port" "$_cgn" "$REQ_PATH" "$@" ||
        die "the $_cgn-request run failed"
    stop_pid "$_pid"
    [ -s "$_out" ] || die "callgrind wrote no profile (see $BENCH_TMP/cg$_cgn.err)"
    TOTAL=$(callgrind_annotate "$_out" 2>/dev/null |
        awk '/PROGRAM TOTALS/ { gsub(",", "", $1); print $1; exit }')
    [ -n "$TOTAL" ] || die "no program total in $_out"
}

# per_function: the CG_PER_FUNCTION functions with the most self
# instructions per request (2200-request run minus 200-request run, / 2000).
per_function() {
    for _run in 200 2200; do
        callgrind_annotate --threshold=100 "$BENCH_TMP/callgrind.out.$_run" 2>/dev/null |
            sed -n "s/^ *\([0-9,]*\) ([ 0-9.]*%)  \(.*\) \[.*\]\$/$_run\t\1\t\2/p"
    done | tr -d ',' | awk -F '\t' '{ s[$3] += ($1 == 2200 ? $2 : -$2) }
        END { for (f in s) printf "%10.1f  %s\n", s[f] / 2000, f }' |
        sort -rn | head -n "$CG_PER_FUNCTION"
}

total 200 "$@"
A=$TOTAL
total 2200 "$@"
B=$TOTAL
echo "$SCEN $BIN: $(((B - A) / 2000)) instructions per request"
[ -z "${CG_PER_FUNCTION:-}" ] || per_function
