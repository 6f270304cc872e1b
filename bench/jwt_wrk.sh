#!/bin/sh
# jwt_wrk.sh - what token verification costs through the whole proxy.
#
#   sh bench/jwt_wrk.sh [SECONDS] [CONNECTIONS] [ROUNDS]
#
# Starts nginx on loopback as the upstream (a fixed 3-byte body), and
# build/flowgate with one worker over TLS in front of it with two routes on
# the same upstream: /open (auth = "none") and /auth (auth = "required").
# wrk (one thread, CONNECTIONS keep-alive connections, SECONDS each) runs
# against /open without a token, then against /auth with a valid token in
# Authorization. For each run it prints requests/s, p99 latency, and
# flowgate's CPU time per request (utime + stime from /proc/PID/stat over
# the run, divided by the requests wrk completed). A measurement, never a
# pass/fail. ROUNDS > 1 alternates the two runs that many times, so that
# noise from other load on the machine shows. Everything lives in a temp
# dir removed on exit.
set -eu

cd "$(dirname "$0")/.."
. bench/lib.sh
SECS=${1:-10}
CONNS=${2:-32}
ROUNDS=${3:-1}
BIN=build/flowgate
for tool in wrk nginx python3; do
    command -v "$tool" >/dev/null || { echo "jwt_wrk: $tool not installed" >&2; exit 1; }
done
[ -x "$BIN" ] || { echo "jwt_wrk: build $BIN first (make)" >&2; exit 1; }
[ -f certs/dev/server.crt ] || { echo "jwt_wrk: make certs first" >&2; exit 1; }

tmp=$(mktemp -d)
ng_pid=""
fg_pid=""
cleanup() {
    [ -n "$fg_pid" ] && kill "$fg_pid" 2>/dev/null && wait "$fg_pid" 2>/dev/null
    [ -n "$ng_pid" ] && kill "$ng_pid" 2>/dev/null && wait "$ng_pid" 2>/dev/null
    rm -rf "$tmp"
}
trap cleanup EXIT INT TERM

UP_PORT=$(free_port)
TLS_PORT=$(free_port)
ADMIN_PORT=$(free_port)
SECRET="bench-secret-0123456789-abcdefghijklmnopqrstuv"

start_fixed_nginx "$tmp/nginx" "127.0.0.1:$UP_PORT" "ok"
ng_pid=$FIXED_NGINX_PID

cat >"$tmp/flowgate.conf" <<EOF
workers = 1;
listen: { https = [ "127.0.0.1:$TLS_PORT" ]; http = [ ]; admin = "127.0.0.1:$ADMIN_PORT"; };
tls: { certificates = ( { cert = "certs/dev/server.crt"; key = "certs/dev/server.key"; } ); };
jwt: {
  algorithm = "HS256";
  keys = ( { kid = "default"; secret_env = "BENCH_JWT_SECRET"; } );
  issuer = "https://auth.example.com";
  audience = "flowgate-api";
};
upstreams: { api = { servers = [ "127.0.0.1:$UP_PORT" ]; keepalive = 64; }; };
routes = (
  { host = ""; path = "/open"; upstream = "api"; auth = "none"; rate_limit = false; },
  { host = ""; path = "/auth"; upstream = "api"; auth = "required"; rate_limit = false; }
);
log: { access = ""; error = "$tmp/error.log"; level = "warn"; };
EOF
BENCH_JWT_SECRET=$SECRET "$BIN" -c "$tmp/flowgate.conf" >"$tmp/fg.out" 2>&1 &
fg_pid=$!

TOKEN=$(SECRET=$SECRET python3 - <<'EOF'
import base64, hashlib, hmac, json, os, time
def b64u(b): return base64.urlsafe_b64encode(b).rstrip(b"=").decode()
now = int(time.time())
h = b64u(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
p = b64u(json.dumps({"sub": "user-1234567890", "tier": "premium", "type": "access",
                     "iss": "https://auth.example.com", "aud": "flowgate-api",
                     "iat": now, "exp": now + 3600}).encode())
s = hmac.new(os.environ["SECRET"].encode(), (h + "." + p).encode(), hashlib.sha256).digest()
print(h + "." + p + "." + b64u(s))
EOF
)

# Wait for both listeners.
for _ in $(seq 100); do
    if curl -sk -o /dev/null "https://127.0.0.1:$TLS_PORT/open/" 2>/dev/null; then break; fi
    sleep 0.1
done
code=$(curl -sk -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $TOKEN" \
    "https://127.0.0.1:$TLS_PORT/auth/")
[ "$code" = 200 ] || { echo "jwt_wrk: token request answered $code" >&2; cat "$tmp/fg.out" >&2; exit 1; }
code=$(curl -sk -o /dev/null -w '%{http_code}' "https://127.0.0.1:$TLS_PORT/auth/")
[ "$code" = 401 ] || { echo "jwt_wrk: tokenless request answered $code" >&2; exit 1; }

# run NAME PATH [WRK ARGS]: one wrk run, then its summary line.
run() {
    name=$1 path=$2
    shift 2
    wrk_line "$name" "$fg_pid" "$tmp/wrk.$name" "$@" "https://127.0.0.1:$TLS_PORT$path"
}

echo "wrk -t1 -c$CONNS -d${SECS}s over TLS, flowgate workers = 1, nginx upstream"
for _ in $(seq "$ROUNDS"); do
    run 'auth = "none"' /open/
    run 'auth = "required"' /auth/ -H "Authorization: Bearer $TOKEN"
done
curl -s "http://127.0.0.1:$ADMIN_PORT/metrics" | grep -E '^flowgate_jwt_(verified|cache_hits)_total'
