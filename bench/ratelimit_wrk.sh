#!/bin/sh
# ratelimit_wrk.sh - what the rate-limit stage costs, in one run.
#
#   sh bench/ratelimit_wrk.sh [seconds] [connections]      (defaults: 10, 32)
#
# Starts nginx (a fixed 64-byte body), redis-server and build/flowgate
# (workers = 1, TLS) on loopback ports, then runs wrk -t1 against two routes
# of the same flowgate: /rl/ with the tier limit on (limits too high to ever
# refuse) and /free/ with rate_limit = false. For each it reports requests/s,
# p99 latency, flowgate CPU per request and Redis CPU per request (utime +
# stime from /proc/PID/stat), and Redis calls per request (INFO commandstats).
# Every process is stopped by its PID on exit. A benchmark measures; it
# never fails on a number.
set -eu

ROOT=$(cd "$(dirname "$0")/.." && pwd)
. "$ROOT/bench/lib.sh"
SECS=${1:-10}
CONNS=${2:-32}
FLOWGATE=${FLOWGATE:-$ROOT/build/flowgate}
TICK=$(getconf CLK_TCK)
PIDS=""

die() { echo "ratelimit_wrk: $*" >&2; exit 1; }
for t in wrk nginx redis-server redis-cli python3; do
    command -v "$t" >/dev/null 2>&1 || die "$t not found"
done
[ -x "$FLOWGATE" ] || die "$FLOWGATE not built (make build/flowgate)"
[ -f "$ROOT/certs/dev/server.crt" ] || die "no dev certificate (make certs)"

TMP=$(mktemp -d "${TMPDIR:-/tmp}/flowgate-rl-bench.XXXXXX")
cleanup() {
    set +e
    for p in $PIDS; do kill -TERM "$p" 2>/dev/null; done
    for p in $PIDS; do
        i=0
        while kill -0 "$p" 2>/dev/null && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
        kill -KILL "$p" 2>/dev/null
    done
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP


wait_port() {
    i=0
    until python3 -c "import socket; socket.create_connection(('127.0.0.1', $1), 0.2).close()" \
            2>/dev/null; do
        i=$((i + 1))
        [ $i -lt 100 ] || die "nothing listens on port $1"
        sleep 0.1
    done
}

UP_PORT=$(free_port)
REDIS_PORT=$(free_port)
HTTPS_PORT=$(free_port)
ADMIN_PORT=$(free_port)

# -- nginx: the upstream, a fixed body
start_fixed_nginx "$TMP/nginx" "127.0.0.1:$UP_PORT" "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcde"
PIDS="$PIDS $FIXED_NGINX_PID"

# -- redis
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no \
    --dir "$TMP" >"$TMP/redis.log" 2>&1 &
REDIS_PID=$!
PIDS="$PIDS $REDIS_PID"

# -- flowgate
cat >"$TMP/flowgate.conf" <<EOF
workers = 1;
listen: {
  https = [ "127.0.0.1:$HTTPS_PORT" ];
  http = [ ];
  admin = "127.0.0.1:$ADMIN_PORT";
};
tls: { certificates = ( { cert = "$ROOT/certs/dev/server.crt"; key = "$ROOT/certs/dev/server.key"; } ); };
rate_limit: {
  redis: { address = "127.0.0.1:$REDIS_PORT"; timeout_ms = 50; };
  on_redis_failure = "local";
  tiers: {
    anonymous = { limit = 1000000000; window = 1; };
  };
};
upstreams: { web = { servers = [ "127.0.0.1:$UP_PORT" ]; keepalive = 64; }; };
routes = (
  { host = ""; path = "/rl/"; upstream = "web"; auth = "none"; },
  { host = ""; path = "/free/"; upstream = "web"; auth = "none"; rate_limit = false; }
);
log: { access = ""; error = "$TMP/flowgate.err"; level = "warn"; };
EOF
wait_port "$UP_PORT"
wait_port "$REDIS_PORT"
"$FLOWGATE" -c "$TMP/flowgate.conf" >"$TMP/flowgate.out" 2>&1 &
FG_PID=$!
PIDS="$PIDS $FG_PID"
wait_port "$HTTPS_PORT"
i=0
until curl -s "http://127.0.0.1:$ADMIN_PORT/readyz" | grep -q '"redis":"up"'; do
    i=$((i + 1))
    [ $i -lt 100 ] || die "flowgate's Redis link did not come up"
    sleep 0.1
done

evalsha_calls() {
    redis-cli -p "$REDIS_PORT" INFO commandstats | tr -d '\r' |
        sed -n 's/^cmdstat_evalsha:calls=\([0-9]*\),.*/\1/p' | awk '{print $1 + 0}'
}

# measure NAME PATH: one wrk run and its line of results
measure() {
    fg0=$(cpu_ticks "$FG_PID")
    rd0=$(cpu_ticks "$REDIS_PID")
    ev0=$(evalsha_calls)
    wrk -t1 -c"$CONNS" -d"${SECS}s" --latency "https://127.0.0.1:$HTTPS_PORT$2" >"$TMP/wrk.$1" 2>&1
    fg1=$(cpu_ticks "$FG_PID")
    rd1=$(cpu_ticks "$REDIS_PID")
    ev1=$(evalsha_calls)
    reqs=$(sed -n 's/^ *\([0-9]*\) requests in.*/\1/p' "$TMP/wrk.$1")
    rps=$(sed -n 's/^Requests\/sec: *\([0-9.]*\).*/\1/p' "$TMP/wrk.$1")
    p99=$(sed -n 's/^ *99% *\([0-9.]*[a-z]*\).*/\1/p' "$TMP/wrk.$1")
    non2xx=$(sed -n 's/^ *Non-2xx or 3xx responses: *\([0-9]*\).*/\1/p' "$TMP/wrk.$1")
    awk -v n="$1" -v reqs="$reqs" -v rps="$rps" -v p99="$p99" -v tick="$TICK" \
        -v fg="$((fg1 - fg0))" -v rd="$((rd1 - rd0))" -v ev="$((ev1 - ev0))" \
        -v bad="${non2xx:-0}" 'BEGIN {
        printf "%-12s %10.0f %9s %14.1f %14.1f %12.3f %8d\n", n, rps, p99,
            fg / tick * 1e6 / reqs, rd / tick * 1e6 / reqs, ev / reqs, bad }'
}

echo "flowgate $FLOWGATE, workers = 1, wrk -t1 -c$CONNS -d${SECS}s over TLS; nginx upstream"
printf "%-12s %10s %9s %14s %14s %12s %8s\n" route "req/s" p99 "flowgate us/req" \
    "redis us/req" "redis calls/req" "non-2xx"
measure rate_limit /rl/x
measure no_limit /free/x
measure rate_limit /rl/x
measure no_limit /free/x
