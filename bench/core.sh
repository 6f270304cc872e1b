#!/bin/sh
# bench/core.sh - the core proxy side by side with nginx and HAProxy.
#
#   sh bench/core.sh                      # DURATION=10 ROUNDS=3
#   DURATION=5 ROUNDS=1 TARGETS="flowgate nginx" sh bench/core.sh
#
# One nginx backend (plain HTTP, keep-alive, a 12-byte body) behind three TLS
# proxies with the same certificate, the same security headers and pooled
# upstream connections, each with one worker/thread: flowgate, nginx, HAProxy.
# wrk drives each target in turn (backend direct, then each proxy), ROUNDS
# times in alternation. Per target: median requests/s, median p50/p99 latency,
# the proxy's CPU time per request (utime+stime from /proc/PID/stat around the
# run, divided by the requests wrk completed) and its peak RSS (VmHWM).
# A run with non-2xx responses or socket errors is flagged and left out of the
# medians. Table on stdout; JSON in bench/results/core-<timestamp>.json.
#
# Environment:
#   DURATION=10 ROUNDS=3         seconds per wrk run, rounds of alternation
#   WRK_THREADS=1 WRK_CONNECTIONS=64
#   TARGETS="backend flowgate nginx haproxy"   (also flowgate_name: flowgate with
#                                its upstream given by a host name, resolved from a hosts file)
#   PIN_WRK, PIN_BACKEND, PIN_FLOWGATE, PIN_NGINX, PIN_HAPROXY
#                                a taskset CPU list for that process (unset: none)
#   FLOWGATE=PATH                measure this binary instead of building build/flowgate
#   FLOWGATE_REV=REV             build this git revision (git archive into the temp dir)
#   KEEP=1                       keep the temp dir (configs, wrk outputs, logs)
set -eu

. "$(dirname "$0")/lib.sh"

DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-3}
WRK_THREADS=${WRK_THREADS:-1}
WRK_CONNECTIONS=${WRK_CONNECTIONS:-64}
TARGETS=${TARGETS:-backend flowgate nginx haproxy}

need wrk curl python3 openssl taskset /usr/sbin/nginx
case " $TARGETS " in *" haproxy "*) need /usr/sbin/haproxy ;; esac

bench_init
build_flowgate

BACKEND_PORT=$(free_port)
start_backend "$BACKEND_PORT"

{
    printf 'flowgate\t%s\n' "$("$FLOWGATE_BIN" -V 2>&1 | head -n 1)"
    printf 'flowgate_source\t%s\n' "$FLOWGATE_SOURCE"
    printf 'nginx\t%s\n' "$(/usr/sbin/nginx -v 2>&1)"
    printf 'haproxy\t%s\n' "$(/usr/sbin/haproxy -v 2>/dev/null | head -n 1)"
    printf 'openssl\t%s\n' "$(openssl version)"
    printf 'wrk\t%s\n' "$(wrk -v 2>&1 | head -n 1)"
} >"$BENCH_TMP/versions.txt"

# target_url / target_pid NAME: where wrk goes, whose CPU is counted.
for t in $TARGETS; do
    case $t in
    backend)
        check_target backend "http://127.0.0.1:$BACKEND_PORT/"
        eval "URL_backend=http://127.0.0.1:$BACKEND_PORT/ PID_backend=$BACKEND_PID"
        ;;
    flowgate)
        p=$(free_port)
        start_flowgate "$p" "$BACKEND_PORT"
        check_target flowgate "https://127.0.0.1:$p/" tls
        eval "URL_flowgate=https://127.0.0.1:$p/ PID_flowgate=$FLOWGATE_PID"
        ;;
    flowgate_name)
        # The same flowgate with its upstream given by name (a hosts-file
        # answer): once resolved, a name should cost nothing per request.
        p=$(free_port)
        printf '127.0.0.1 backend.bench.test\n' >"$BENCH_TMP/hosts"
        FG_UPSTREAM_HOST=backend.bench.test \
            FG_EXTRA="resolver: { hosts_file = \"$BENCH_TMP/hosts\"; };" \
            start_flowgate "$p" "$BACKEND_PORT" flowgate_name
        check_target flowgate_name "https://127.0.0.1:$p/" tls
        eval "URL_flowgate_name=https://127.0.0.1:$p/ PID_flowgate_name=$FLOWGATE_PID"
        ;;
    nginx)
        p=$(free_port)
        start_nginx_proxy "$p" "$BACKEND_PORT"
        check_target nginx "https://127.0.0.1:$p/" tls
        eval "URL_nginx=https://127.0.0.1:$p/ PID_nginx=$NGINX_PID"
        ;;
    haproxy)
        p=$(free_port)
        start_haproxy "$p" "$BACKEND_PORT"
        check_target haproxy "https://127.0.0.1:$p/" tls
        eval "URL_haproxy=https://127.0.0.1:$p/ PID_haproxy=$HAPROXY_PID"
        ;;
    *) die "unknown target $t" ;;
    esac
done

log "bench: $ROUNDS round(s) of: $TARGETS (wrk -t$WRK_THREADS -c$WRK_CONNECTIONS -d${DURATION}s)"
r=1
while [ "$r" -le "$ROUNDS" ]; do
    for t in $TARGETS; do
        url="" pid=""
        eval "url=\$URL_$t pid=\$PID_$t"
        measure "$t" "$r" "$url" "$pid"
        log "bench: round $r $t: $(grep '^Requests/sec' "$BENCH_TMP/wrk-$t-$r.txt" || echo 'no result')"
    done
    r=$((r + 1))
done

# shellcheck disable=SC2046 # one word per target name
bench_report core $(for t in flowgate nginx haproxy; do
    case " $TARGETS " in *" $t "*) printf '%s ' "$t" ;; esac
done)
