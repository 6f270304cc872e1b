# bench/lib.sh - helpers shared by the benchmark scripts (sourced, POSIX sh).
#
# A script sources this file, calls bench_init, starts its servers with the
# start_* functions (each on 127.0.0.1, each process recorded by PID and
# stopped by that PID on exit), runs wrk_run per measurement and appends one
# line per run to $BENCH_TMP/runs.tsv, then calls bench_report.
#
# Every server gets the same certificate, generated for the run by
# certs/gen-dev-certs.sh into $BENCH_TMP/certs.
#
# Knobs read by the start_* functions (unset: the core.sh setup):
#   FG_WORKERS=1 FG_TICKETS=true FG_ADMIN=PORT FG_ROUTES=... FG_EXTRA=...
#   FG_UPSTREAM_HOST=127.0.0.1 (a name: with a resolver group in FG_EXTRA)
#   NGX_RESUME=1 (0: no tickets, no session cache) NGX_STREAM=0 (1: no
#   request/response buffering)  HAP_RESUME=1 (0: no-tls-tickets, cache 0)
#   HAP_FRONTEND=... (lines before default_backend) HAP_EXTRA=... (sections)
#   NGX_H2=0 (1: `listen ... ssl http2`)  HAP_ALPN=http/1.1 (h2,http/1.1: HTTP/2 too)
#   FG_KEEPALIVE=64 NGX_KEEPALIVE=64 (idle upstream connections kept; HAProxy
#   keeps every idle one: http-reuse always, no pool-max-conn)
# measure appends to ${RUNS_FILE:-$BENCH_TMP/runs.tsv}; WRK_SCRIPT=FILE adds -s.
# LOAD picks the load generator of measure: wrk (the default), h2load (HTTP/2
# keep-alive: H2_CLIENTS connections, H2_STREAMS requests in flight on each) or
# h2conn (HTTP/2, one request per connection: h2load runs of H2_CLIENTS clients
# making one request each, back to back for DURATION seconds).

BENCH_ROOT=${BENCH_ROOT:-$(cd "$(dirname "$0")/.." && pwd)}
BENCH_PIDS=""
BENCH_TMP=""
BENCH_KEEP=${KEEP:-0}

# Scenario S2's token secret and allowed Origin (bench/run, s2_knobs).
BENCH_JWT_SECRET=bench-jwt-secret-0123456789-abcdefghijklmnopqrstuv
BENCH_ORIGIN=https://app.example.com
export BENCH_JWT_SECRET BENCH_ORIGIN

# The response headers every proxy adds (flowgate's defaults).
HDR_HSTS="max-age=31536000; includeSubDomains"
HDR_XFO="SAMEORIGIN"
HDR_XCTO="nosniff"
HDR_XXSS="1; mode=block"
HDR_REFERRER="strict-origin-when-cross-origin"
HDR_CSP="frame-src 'self' https://*.preview.example.com"

log() { printf '%s\n' "$*" >&2; }
die() { log "bench: $*"; exit 1; }

need() {
    for _t in "$@"; do
        command -v "$_t" >/dev/null 2>&1 || [ -x "$_t" ] || die "$_t not found"
    done
}

# bench_init: temp dir, certificate, cleanup on exit.
bench_init() {
    BENCH_TMP=$(mktemp -d "${TMPDIR:-/tmp}/flowgate-bench.XXXXXX") || die "mktemp failed"
    trap bench_cleanup EXIT
    trap 'exit 130' INT TERM HUP
    sh "$BENCH_ROOT/certs/gen-dev-certs.sh" "$BENCH_TMP/certs" >/dev/null ||
        die "certificate generation failed"
    CERT=$BENCH_TMP/certs/server.crt
    KEY=$BENCH_TMP/certs/server.key
    cat "$CERT" "$KEY" >"$BENCH_TMP/certs/server.pem"
    chmod 600 "$BENCH_TMP/certs/server.pem"
    : >"$BENCH_TMP/runs.tsv"
}

# Stop every recorded process by its PID: SIGTERM, a bounded wait, SIGKILL.
bench_cleanup() {
    set +e
    for _p in $BENCH_PIDS; do
        kill -TERM "$_p" 2>/dev/null
    done
    for _p in $BENCH_PIDS; do
        _i=0
        while kill -0 "$_p" 2>/dev/null && [ $_i -lt 50 ]; do
            sleep 0.1
            _i=$((_i + 1))
        done
        kill -KILL "$_p" 2>/dev/null
    done
    if [ -n "$BENCH_TMP" ] && [ -d "$BENCH_TMP" ]; then
        if [ "$BENCH_KEEP" = 1 ]; then
            log "bench: files kept in $BENCH_TMP"
        else
            rm -rf "$BENCH_TMP"
        fi
    fi
}

# stop_pid PID: stop one recorded process (SIGTERM, bounded wait, SIGKILL)
# and forget it.
stop_pid() {
    kill -TERM "$1" 2>/dev/null || true
    _i=0
    while kill -0 "$1" 2>/dev/null && [ $_i -lt 50 ]; do
        sleep 0.1
        _i=$((_i + 1))
    done
    kill -KILL "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
    _left=""
    for _p in $BENCH_PIDS; do
        [ "$_p" = "$1" ] || _left="$_left $_p"
    done
    BENCH_PIDS=$_left
}

# free_port: a TCP port on 127.0.0.1 that was free a moment ago.
free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# wait_port PORT PID NAME: until 127.0.0.1:PORT accepts (10 s), or PID exits.
wait_port() {
    _i=0
    while [ $_i -lt 200 ]; do
        kill -0 "$2" 2>/dev/null || die "$3 exited during startup (see $BENCH_TMP/$3.err)"
        if python3 -c 'import socket,sys; socket.create_connection(("127.0.0.1",int(sys.argv[1])),0.2).close()' "$1" 2>/dev/null; then
            return 0
        fi
        sleep 0.05
        _i=$((_i + 1))
    done
    die "$3 did not listen on 127.0.0.1:$1 (see $BENCH_TMP/$3.err)"
}

# spawn NAME CMD...: start CMD in the background (stdout/stderr into the temp
# dir), record its PID; sets SPAWNED_PID. CPU pinning: PIN_<NAME>=cpulist.
spawn() {
    _name=$1
    shift
    _pin=$(eval "printf '%s' \"\${PIN_$(echo "$_name" | tr 'a-z-' 'A-Z_'):-}\"")
    if [ -n "$_pin" ]; then
        set -- taskset -c "$_pin" "$@"
    fi
    "$@" >"$BENCH_TMP/$_name.out" 2>"$BENCH_TMP/$_name.err" </dev/null &
    SPAWNED_PID=$!
    BENCH_PIDS="$SPAWNED_PID $BENCH_PIDS"
}

# build_flowgate: sets FLOWGATE_BIN (copied into the temp dir) and
# FLOWGATE_SOURCE. FLOWGATE=PATH takes that binary; FLOWGATE_REV=REV builds
# that git revision from `git archive` in the temp dir; otherwise
# `make build/flowgate` in the working tree.
build_flowgate() {
    mkdir -p "$BENCH_TMP/flowgate"
    if [ -n "${FLOWGATE:-}" ]; then
        [ -x "$FLOWGATE" ] || die "FLOWGATE=$FLOWGATE is not an executable"
        cp "$FLOWGATE" "$BENCH_TMP/flowgate/flowgate"
        FLOWGATE_SOURCE="binary $FLOWGATE"
    elif [ -n "${FLOWGATE_REV:-}" ]; then
        _rev=$(git -C "$BENCH_ROOT" rev-parse --verify "$FLOWGATE_REV^{commit}") ||
            die "unknown revision $FLOWGATE_REV"
        mkdir -p "$BENCH_TMP/src"
        git -C "$BENCH_ROOT" archive "$_rev" | tar -x -C "$BENCH_TMP/src" ||
            die "git archive $_rev failed"
        make -C "$BENCH_TMP/src" -j2 --no-print-directory build/flowgate >"$BENCH_TMP/build.log" 2>&1 ||
            die "build of $_rev failed (see $BENCH_TMP/build.log)"
        cp "$BENCH_TMP/src/build/flowgate" "$BENCH_TMP/flowgate/flowgate"
        FLOWGATE_SOURCE="git $_rev"
    else
        make -C "$BENCH_ROOT" --no-print-directory build/flowgate >"$BENCH_TMP/build.log" 2>&1 ||
            die "make build/flowgate failed (see $BENCH_TMP/build.log; FLOWGATE_REV=HEAD~N or FLOWGATE=PATH measure another build)"
        cp "$BENCH_ROOT/build/flowgate" "$BENCH_TMP/flowgate/flowgate"
        FLOWGATE_SOURCE="working tree at $(git -C "$BENCH_ROOT" rev-parse HEAD 2>/dev/null || echo '?')"
        if [ -n "$(git -C "$BENCH_ROOT" status --porcelain -- gateway 2>/dev/null || true)" ]; then
            FLOWGATE_SOURCE="$FLOWGATE_SOURCE with uncommitted changes in gateway/"
        fi
    fi
    FLOWGATE_BIN=$BENCH_TMP/flowgate/flowgate
}

# ---------------------------------------------------------------- servers

# start_backend PORT: nginx, plain HTTP, keep-alive. GET / (and any other
# path): 200 "hello world\n" (12 bytes); GET /big: a 1 MiB file; POST /upload
# (up to 2 MiB): the whole body is read into memory, then a bodiless request
# to /ok on itself gives 200 "ok\n"; so the answer comes only after a proxy
# has streamed the whole body.
start_backend() {
    _d=$BENCH_TMP/backend
    mkdir -p "$_d/logs" "$_d/www"
    head -c 1048576 /dev/zero | tr '\0' 'x' >"$_d/www/big"
    printf 'ok\n' >"$_d/www/ok"
    # The nginx worker may run as another user (www-data under root): let it
    # reach the files it serves, nothing else in the temp dir.
    chmod 711 "$BENCH_TMP" "$_d"
    chmod 755 "$_d/www"
    chmod 644 "$_d/www/big" "$_d/www/ok"
    cat >"$_d/nginx.conf" <<EOF
worker_processes 1;
pid $_d/nginx.pid;
error_log $_d/logs/error.log warn;
events { worker_connections 8192; }
http {
    access_log off;
    client_body_temp_path $_d/body; proxy_temp_path $_d/proxy;
    fastcgi_temp_path $_d/fastcgi; uwsgi_temp_path $_d/uwsgi; scgi_temp_path $_d/scgi;
    keepalive_timeout 120s;
    keepalive_requests 100000000;
    sendfile on;
    upstream self {
        server 127.0.0.1:$1;
        keepalive 32;
    }
    server {
        listen 127.0.0.1:$1 backlog=4096;
        default_type text/plain;
        root $_d/www;
        location / { return 200 "hello world\n"; }
        location = /big { }
        location = /upload {
            client_max_body_size 2m;
            client_body_buffer_size 2m;
            proxy_request_buffering on;
            proxy_pass_request_body off;
            proxy_set_header Content-Length "";
            proxy_set_header Connection "";
            proxy_http_version 1.1;
            proxy_pass http://self/ok;
        }
        location = /ok { return 200 "ok\n"; }
    }
}
EOF
    spawn backend /usr/sbin/nginx -p "$_d" -c "$_d/nginx.conf" -e "$_d/logs/error.log" -g 'daemon off;'
    BACKEND_PID=$SPAWNED_PID
    wait_port "$1" "$BACKEND_PID" backend
}

# start_fixed_nginx DIR ADDR:PORT BODY: a minimal upstream for the feature
# benchmarks (jwt_wrk.sh, ratelimit_wrk.sh, previews.sh), independent of
# bench_init: nginx in DIR answering every request with BODY and a newline,
# keep-alive, in the background; FIXED_NGINX_PID is its PID, for the caller
# to stop.
start_fixed_nginx() {
    mkdir -p "$1/logs"
    cat >"$1/nginx.conf" <<EOF
worker_processes 1;
pid $1/nginx.pid;
error_log $1/logs/error.log;
events { worker_connections 1024; }
http {
    access_log off;
    keepalive_requests 1000000;
    client_body_temp_path $1/body;
    proxy_temp_path $1/proxy;
    fastcgi_temp_path $1/fastcgi;
    uwsgi_temp_path $1/uwsgi;
    scgi_temp_path $1/scgi;
    server {
        listen $2;
        location / { default_type text/plain; return 200 "$3\n"; }
    }
}
EOF
    nginx -c "$1/nginx.conf" -p "$1" -g 'daemon off;' 2>"$1/nginx.err" &
    FIXED_NGINX_PID=$!
}

# flowgate_conf PORT BACKEND_PORT [NAME]: write $BENCH_TMP/NAME/flowgate.conf
# (the FG_* knobs) and check it with `flowgate -t`; sets FLOWGATE_CONF.
flowgate_conf() {
    _n=${3:-flowgate}
    _d=$BENCH_TMP/$_n
    mkdir -p "$_d"
    _admin=""
    [ -n "${FG_ADMIN:-}" ] && _admin=127.0.0.1:$FG_ADMIN
    _routes=${FG_ROUTES:-'{ host = ""; path = "/"; upstream = "backend"; auth = "none"; }'}
    cat >"$_d/flowgate.conf" <<EOF
workers = ${FG_WORKERS:-1};
shutdown_timeout_ms = 2000;
listen: {
  https = [ "127.0.0.1:$1" ];
  http = [ ];
  admin = "$_admin";
};
tls: {
  certificates = ( { cert = "$CERT"; key = "$KEY"; } );
  min_version = "TLSv1.2";
  session_tickets = ${FG_TICKETS:-true};
};
headers: {
  hsts = "$HDR_HSTS";
  frame_options = "$HDR_XFO";
  content_type_options = "$HDR_XCTO";
  xss_protection = "$HDR_XXSS";
  referrer_policy = "$HDR_REFERRER";
  csp = "$HDR_CSP";
  server = "";
};
upstreams: {
  backend = { servers = [ "${FG_UPSTREAM_HOST:-127.0.0.1}:$2" ]; connect_timeout_ms = 2000;
              read_timeout_ms = 30000; keepalive = ${FG_KEEPALIVE:-64}; };
};
routes = (
  $_routes
);
${FG_EXTRA:-}
log: { access = ""; error = "$_d/error.log"; level = "warn"; };
EOF
    "$FLOWGATE_BIN" -t -c "$_d/flowgate.conf" >"$_d/check.out" 2>&1 ||
        die "$_n configuration rejected: $(cat "$_d/check.out")"
    FLOWGATE_CONF=$_d/flowgate.conf
}

# start_flowgate PORT BACKEND_PORT [NAME]: build/flowgate (a copy), FG_WORKERS
# (1) workers; NAME (flowgate) names its directory and its PIN_ variable.
start_flowgate() {
    _n=${3:-flowgate}
    flowgate_conf "$@"
    spawn "$_n" "$FLOWGATE_BIN" -c "$FLOWGATE_CONF"
    FLOWGATE_PID=$SPAWNED_PID
    wait_port "$1" "$FLOWGATE_PID" "$_n"
}

# s2_knobs REDIS_PORT: the flowgate side of scenario S2 (bench/run,
# bench/callgrind.sh). Sets FG_ROUTES and FG_EXTRA (route /api/ with auth
# required, the jwt group, tier limits of S2_LIMIT per 60 s in the Redis at
# REDIS_PORT, CORS for BENCH_ORIGIN), S2_TOKEN (valid for a week) and
# S2_EXPIRED (expired an hour ago), both signed with BENCH_JWT_SECRET.
# S2_REDIS_TIMEOUT_MS (50) is the rate limiter's Redis deadline.
s2_knobs() {
    S2_LIMIT=1000000000
    S2_TOKEN=$(python3 "$BENCH_ROOT/tools/devtoken.py" "$BENCH_JWT_SECRET" user-42 premium)
    S2_EXPIRED=$(SECRET=$BENCH_JWT_SECRET python3 -c '
import base64, hashlib, hmac, json, os, time
b = lambda d: base64.urlsafe_b64encode(d).rstrip(b"=").decode()
n = int(time.time()) - 3600
s = b(json.dumps({"alg": "HS256", "typ": "JWT", "kid": "default"}).encode()) + "." + b(json.dumps(
    {"sub": "user-42", "tier": "premium", "type": "access", "iat": n - 60, "exp": n}).encode())
print(s + "." + b(hmac.new(os.environ["SECRET"].encode(), s.encode(), hashlib.sha256).digest()))')
    FG_ROUTES='{ host = ""; path = "/api/"; upstream = "backend"; auth = "required"; },
  { host = ""; path = "/"; upstream = "backend"; auth = "none"; }'
    FG_EXTRA="jwt: {
  algorithm = \"HS256\";
  keys = ( { kid = \"default\"; secret_env = \"BENCH_JWT_SECRET\"; } );
  leeway_seconds = 30;
  require_exp = true;
};
rate_limit: {
  redis: { address = \"127.0.0.1:$1\"; timeout_ms = ${S2_REDIS_TIMEOUT_MS:-50}; };
  on_redis_failure = \"local\";
  tiers: {
    anonymous     = { limit = $S2_LIMIT; window = 60; };
    authenticated = { limit = $S2_LIMIT; window = 60; };
    premium       = { limit = $S2_LIMIT; window = 60; };
  };
};
cors: {
  origins = [ \"$BENCH_ORIGIN\" ];
  credentials = true;
};"
}

# start_nginx_proxy PORT BACKEND_PORT: nginx as the same TLS proxy.
start_nginx_proxy() {
    _d=$BENCH_TMP/nginx
    mkdir -p "$_d/logs"
    cat >"$_d/nginx.conf" <<EOF
worker_processes 1;
pid $_d/nginx.pid;
error_log $_d/logs/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    server_tokens off;
    client_body_temp_path $_d/body; proxy_temp_path $_d/proxy;
    fastcgi_temp_path $_d/fastcgi; uwsgi_temp_path $_d/uwsgi; scgi_temp_path $_d/scgi;
    keepalive_timeout 60s;
    keepalive_requests 100000000;
    upstream backend {
        server 127.0.0.1:$2;
        keepalive ${NGX_KEEPALIVE:-64};
        keepalive_requests 100000000;
    }
    server {
        listen 127.0.0.1:$1 ssl$([ "${NGX_H2:-0}" = 1 ] && echo " http2") backlog=4096;
        ssl_certificate $CERT;
        ssl_certificate_key $KEY;
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_ciphers ECDHE+AESGCM:ECDHE+CHACHA20;
        ssl_prefer_server_ciphers on;
$(if [ "${NGX_RESUME:-1}" = 0 ]; then
        echo "        ssl_session_tickets off;"
        echo "        ssl_session_cache off;"
    else
        echo "        ssl_session_tickets on;"
    fi)
        client_max_body_size 2m;
$(if [ "${NGX_STREAM:-0}" = 1 ]; then
        echo "        proxy_request_buffering off;"
        echo "        proxy_buffering off;"
        echo "        proxy_buffer_size 16k;"
        echo "        proxy_buffers 8 16k;"
    fi)
        location / {
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host \$host;
            proxy_set_header X-Forwarded-For \$remote_addr;
            proxy_set_header X-Forwarded-Proto \$scheme;
            proxy_set_header X-Forwarded-Host \$host;
            proxy_set_header X-Real-IP \$remote_addr;
            proxy_set_header X-Request-Id \$request_id;
            proxy_hide_header Server;
            proxy_hide_header X-Request-Id;
            add_header X-Request-Id \$request_id always;
            add_header Strict-Transport-Security "$HDR_HSTS" always;
            add_header X-Frame-Options "$HDR_XFO" always;
            add_header X-Content-Type-Options "$HDR_XCTO" always;
            add_header X-XSS-Protection "$HDR_XXSS" always;
            add_header Referrer-Policy "$HDR_REFERRER" always;
            add_header Content-Security-Policy "$HDR_CSP" always;
        }
    }
}
EOF
    spawn nginx /usr/sbin/nginx -p "$_d" -c "$_d/nginx.conf" -e "$_d/logs/error.log" -g 'daemon off;'
    NGINX_PID=$SPAWNED_PID
    wait_port "$1" "$NGINX_PID" nginx
}

# start_haproxy PORT BACKEND_PORT: HAProxy as the same TLS proxy, one thread.
start_haproxy() {
    _d=$BENCH_TMP/haproxy
    mkdir -p "$_d"
    cat >"$_d/haproxy.cfg" <<EOF
global
    nbthread 1
    maxconn 8192
$([ "${HAP_RESUME:-1}" = 0 ] && echo "    tune.ssl.cachesize 0")
    ssl-default-bind-options ssl-min-ver TLSv1.2
    ssl-default-bind-ciphers ECDHE+AESGCM:ECDHE+CHACHA20

defaults
    mode http
    option http-keep-alive
    timeout connect 2s
    timeout client 60s
    timeout server 30s
    timeout http-keep-alive 60s
    http-reuse always

frontend tls
    bind 127.0.0.1:$1 ssl crt $BENCH_TMP/certs/server.pem alpn ${HAP_ALPN:-http/1.1}$([ "${HAP_RESUME:-1}" = 0 ] && echo " no-tls-tickets")
    unique-id-format %[rand,hex]%[rand,hex]%[rand,hex]%[rand,hex]
    http-request del-header X-Request-Id
    http-request set-header X-Request-Id %[unique-id]
    http-request set-header X-Forwarded-For %[src]
    http-request set-header X-Forwarded-Proto https
    http-request set-header X-Forwarded-Host %[req.hdr(host)]
    http-request set-header X-Real-IP %[src]
    http-response del-header Server
    http-after-response set-header X-Request-Id %[unique-id]
    http-after-response set-header Strict-Transport-Security "$HDR_HSTS"
    http-after-response set-header X-Frame-Options "$HDR_XFO"
    http-after-response set-header X-Content-Type-Options "$HDR_XCTO"
    http-after-response set-header X-XSS-Protection "$HDR_XXSS"
    http-after-response set-header Referrer-Policy "$HDR_REFERRER"
    http-after-response set-header Content-Security-Policy "$HDR_CSP"
${HAP_FRONTEND:-}
    default_backend backend

backend backend
    server s1 127.0.0.1:$2
${HAP_EXTRA:-}
EOF
    /usr/sbin/haproxy -c -q -f "$_d/haproxy.cfg" >"$_d/check.out" 2>&1 ||
        die "haproxy configuration rejected: $(cat "$_d/check.out")"
    spawn haproxy /usr/sbin/haproxy -db -f "$_d/haproxy.cfg"
    HAPROXY_PID=$SPAWNED_PID
    wait_port "$1" "$HAPROXY_PID" haproxy
}

# check_target NAME URL [tls]: one request answered 200 (with HSTS over TLS).
check_target() {
    _h=$BENCH_TMP/$1.check
    curl -sk --max-time 5 -o "$_h.body" -D "$_h" "$2" || die "$1: no answer from $2"
    head -n 1 "$_h" | grep -q ' 200' || die "$1: $(head -n 1 "$_h") from $2"
    if [ "${3:-}" = tls ]; then
        grep -qi '^strict-transport-security:' "$_h" || die "$1: no HSTS header"
        grep -qi '^content-security-policy:' "$_h" || die "$1: no CSP header"
    fi
}

# ---------------------------------------------------------------- measuring

# tree_pids PID: PID and its descendants (nginx master and worker).
tree_pids() {
    echo "$1"
    for _c in $(cat /proc/"$1"/task/*/children 2>/dev/null); do
        tree_pids "$_c"
    done
}

# cpu_ticks PID: utime+stime (clock ticks) of PID and its descendants.
cpu_ticks() {
    _t=0
    for _p in $(tree_pids "$1"); do
        # Fields after the ")" that ends the command name: utime is the 12th, stime the 13th.
        _v=$(sed 's/^.*) //' /proc/"$_p"/stat 2>/dev/null | awk '{print $12 + $13}')
        _t=$((_t + ${_v:-0}))
    done
    echo "$_t"
}

# wrk_line NAME PID OUT [WRK ARGS... URL]: one wrk run (-t1, CONNS
# connections, SECS seconds, --latency) saved in OUT, then one line: NAME,
# requests/s, p99 and PID's CPU time per request (utime+stime of its process
# tree over the run, divided by the requests completed). The feature
# benchmarks (jwt_wrk.sh, previews.sh) print their runs with it.
wrk_line() {
    _name=$1 _pid=$2 _out=$3
    shift 3
    _before=$(cpu_ticks "$_pid")
    wrk -t1 -c"$CONNS" -d"${SECS}s" --latency "$@" >"$_out" 2>&1
    _after=$(cpu_ticks "$_pid")
    _reqs=$(awk '/requests in/ {print $1}' "$_out")
    _rps=$(awk '/^Requests\/sec:/ {print $2}' "$_out")
    _p99=$(awk '$1 == "99%" {print $2}' "$_out")
    _non2xx=$(awk '/Non-2xx/ {print $NF}' "$_out")
    _cpu=$(awk -v t=$((_after - _before)) -v hz="$(getconf CLK_TCK)" -v n="$_reqs" \
        'BEGIN { printf "%.1f", (n > 0 ? t / hz * 1e6 / n : 0) }')
    printf '%-24s %10s req/s   p99 %-9s  flowgate CPU %6s us/request  (%s requests%s)\n' \
        "$_name" "$_rps" "$_p99" "$_cpu" "$_reqs" "${_non2xx:+, non-2xx $_non2xx}"
}

# hwm_kib PID: the largest VmHWM (kB) among PID and its descendants (the
# process that serves: flowgate and HAProxy themselves, the nginx worker).
hwm_kib() {
    _m=0
    for _p in $(tree_pids "$1"); do
        _v=$(awk '/^VmHWM:/ {print $2}' /proc/"$_p"/status 2>/dev/null)
        [ -n "$_v" ] && [ "$_v" -gt "$_m" ] && _m=$_v
    done
    echo "$_m"
}

# pinned CMD...: CMD under taskset when PIN_WRK names CPUs (the load generator).
pinned() {
    if [ -n "${PIN_WRK:-}" ]; then
        taskset -c "$PIN_WRK" "$@"
    else
        "$@"
    fi
}

# wrk_run OUT URL: the run's load (LOAD: wrk with WRK_SCRIPT as -s FILE,
# h2load or h2conn), output into OUT.
wrk_run() {
    case ${LOAD:-wrk} in
    h2load)
        pinned h2load -t1 -c"$H2_CLIENTS" -m"$H2_STREAMS" -D"$DURATION" "$2" >"$1" 2>&1
        return
        ;;
    h2conn)
        h2conn_run "$1" "$2"
        return
        ;;
    esac
    set -- "$1" "$2"
    if [ -n "${WRK_SCRIPT:-}" ]; then
        set -- "$1" "$2" -s "$WRK_SCRIPT"
    fi
    _o=$1
    shift
    pinned wrk -t"$WRK_THREADS" -c"$WRK_CONNECTIONS" -d"${DURATION}s" \
        --timeout 10s --latency "$@" >"$_o" 2>&1
}

# h2conn_run OUT URL: HTTP/2 with a new connection (a full TLS handshake) per
# request: h2load runs of H2_CLIENTS clients making one request each, back to
# back for DURATION seconds; OUT gets every run's output and a last line
# "elapsed: SECONDS" (bench/benchutil.py sums the runs).
h2conn_run() {
    : >"$1"
    _t0=$(date +%s.%N)
    _end=$(($(date +%s) + DURATION))
    while [ "$(date +%s)" -lt "$_end" ]; do
        pinned h2load -t1 -c"$H2_CLIENTS" -n"$H2_CLIENTS" -m1 "$2" >>"$1" 2>&1 || true
    done
    awk -v a="$_t0" -v b="$(date +%s.%N)" 'BEGIN { printf "elapsed: %.3f\n", b - a }' >>"$1"
}

# measure TARGET ROUND URL PID [OTHER_PID]: one wrk run; appends a line to
# ${RUNS_FILE:-$BENCH_TMP/runs.tsv}:
# target round wrk-output-file cpu-ticks hwm-kib [other-pid-cpu-ticks]
# (OTHER_PID: a helper whose CPU is reported apart, e.g. redis-server).
measure() {
    _out=$BENCH_TMP/wrk-${RUN_TAG:-}$1-$2.txt
    _before=0
    [ -n "$4" ] && _before=$(cpu_ticks "$4")
    _obefore=0
    [ -n "${5:-}" ] && _obefore=$(cpu_ticks "$5")
    wrk_run "$_out" "$3" || log "bench: wrk exited non-zero for $1 (see $_out)"
    _ticks=""
    _hwm=""
    if [ -n "$4" ]; then
        _after=$(cpu_ticks "$4")
        _ticks=$((_after - _before))
        _hwm=$(hwm_kib "$4")
    fi
    _other=""
    [ -n "${5:-}" ] && _other=$(printf '\t%s' $(($(cpu_ticks "$5") - _obefore)))
    printf '%s\t%s\t%s\t%s\t%s%s\n' "$1" "$2" "$_out" "$_ticks" "$_hwm" "$_other" \
        >>"${RUNS_FILE:-$BENCH_TMP/runs.tsv}"
}

# bench_report NAME [BASE OTHER...]: table on stdout, JSON in
# bench/results/NAME-<timestamp>.json; ratios BASE/OTHER for each OTHER.
bench_report() {
    mkdir -p "$BENCH_ROOT/bench/results"
    BENCH_JSON=$BENCH_ROOT/bench/results/$1-$(date -u +%Y%m%dT%H%M%SZ).json
    shift
    BENCH_JSON=$BENCH_JSON BENCH_ROOT=$BENCH_ROOT RUNS=$BENCH_TMP/runs.tsv VERSIONS=$BENCH_TMP/versions.txt \
        CLK_TCK=$(getconf CLK_TCK) RATIOS="$*" DURATION=$DURATION ROUNDS=$ROUNDS \
        WRK_THREADS=$WRK_THREADS WRK_CONNECTIONS=$WRK_CONNECTIONS python3 - <<'PY'
import json, os, statistics, sys, time

sys.path.insert(0, os.path.join(os.environ["BENCH_ROOT"], "bench"))
from benchutil import host_info, parse_wrk, read_versions

clk = int(os.environ["CLK_TCK"])
order, runs = [], {}
for line in open(os.environ["RUNS"]):
    target, rnd, path, ticks, hwm = line.rstrip("\n").split("\t")[:5]
    r = parse_wrk(path)
    r["round"] = int(rnd)
    r["cpu_ticks"] = int(ticks) if ticks else None
    r["peak_rss_kib"] = int(hwm) if hwm else None
    r["cpu_us_per_req"] = (r["cpu_ticks"] * 1e6 / clk / r["requests"]
                           if r["cpu_ticks"] is not None and r["requests"] else None)
    r["flagged"] = (r["requests"] is None or r["rps"] is None or r["non2xx"] > 0
                    or r["socket_errors"] > 0)
    if target not in runs:
        order.append(target)
        runs[target] = []
    runs[target].append(r)


def med(rs, key):
    vals = [r[key] for r in rs if r[key] is not None]
    return statistics.median(vals) if vals else None


summary = {}
for t in order:
    good = [r for r in runs[t] if not r["flagged"]]
    summary[t] = {
        "runs": len(runs[t]), "flagged_runs": len(runs[t]) - len(good),
        "rps": med(good, "rps"), "p50_ms": med(good, "p50_ms"), "p99_ms": med(good, "p99_ms"),
        "cpu_us_per_req": med(good, "cpu_us_per_req"),
        "peak_rss_kib": max((r["peak_rss_kib"] or 0 for r in runs[t]), default=0) or None,
        "non2xx": sum(r["non2xx"] for r in runs[t]),
        "socket_errors": sum(r["socket_errors"] for r in runs[t]),
    }


def f(v, fmt):
    return fmt % v if v is not None else "-"


print()
print("%-10s %10s %9s %9s %12s %10s %7s %7s" % ("target", "req/s", "p50 ms", "p99 ms",
      "cpu us/req", "peak RSS", "errors", "flagged"))
for t in order:
    s = summary[t]
    print("%-10s %10s %9s %9s %12s %10s %7d %4d/%d" % (
        t, f(s["rps"], "%.0f"), f(s["p50_ms"], "%.2f"), f(s["p99_ms"], "%.2f"),
        f(s["cpu_us_per_req"], "%.1f"),
        f(s["peak_rss_kib"] and s["peak_rss_kib"] / 1024.0, "%.1f MiB"),
        s["non2xx"] + s["socket_errors"], s["flagged_runs"], s["runs"]))

ratios = {}
names = os.environ.get("RATIOS", "").split()
if len(names) >= 2:
    base = names[0]
    print()
    for other in names[1:]:
        if base not in summary or other not in summary:
            continue
        a, b = summary[base], summary[other]
        rr = {}
        for key in ("rps", "p99_ms", "cpu_us_per_req", "peak_rss_kib"):
            rr[key] = a[key] / b[key] if a[key] and b[key] else None
        ratios["%s/%s" % (base, other)] = rr
        print("%s/%s: req/s %s, p99 %s, cpu/req %s, peak RSS %s" % (
            base, other, f(rr["rps"], "%.2f"), f(rr["p99_ms"], "%.2f"),
            f(rr["cpu_us_per_req"], "%.2f"), f(rr["peak_rss_kib"], "%.2f")))

versions = read_versions(os.environ["VERSIONS"])

doc = {
    "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    "host": host_info(),
    "settings": {"duration_s": int(os.environ["DURATION"]), "rounds": int(os.environ["ROUNDS"]),
                 "wrk_threads": int(os.environ["WRK_THREADS"]),
                 "wrk_connections": int(os.environ["WRK_CONNECTIONS"]), "clk_tck": clk},
    "versions": versions,
    "summary": summary, "ratios": ratios,
    "runs": {t: [{k: v for k, v in r.items()} for r in runs[t]] for t in order},
}
with open(os.environ["BENCH_JSON"], "w") as out:
    json.dump(doc, out, indent=2)
    out.write("\n")
print()
print("results: %s" % os.path.relpath(os.environ["BENCH_JSON"]))
PY
}
