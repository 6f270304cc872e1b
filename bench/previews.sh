#!/bin/sh
# previews.sh - what a preview host costs against an ordinary route, and what
# an idle WebSocket tunnel costs in memory.
#
#   sh bench/previews.sh [SECONDS] [CONNECTIONS] [TUNNELS]
#
# nginx serves a fixed 3-byte body on 127.0.0.2:PORT. build/flowgate (one
# worker, TLS) has an ordinary host-less route to it, and previews whose
# upstream template resolves, through a hosts file, mvp-bench to 127.0.0.2.
# wrk (one thread, CONNECTIONS keep-alive connections, SECONDS each) runs
# against the route (Host: localhost) and then against the preview host
# (Host: mvp-bench.preview.example.com) of the same flowgate; the name is
# resolved on the first request and served from the resolver's cache after.
# Each run prints requests/s, p99 latency and flowgate's CPU time per request
# (utime + stime from /proc/PID/stat over the run / requests completed).
#
# Then TUNNELS (default 1000) WebSocket connections are opened through the
# preview host to tests/upstream.py's /ws and left idle; flowgate's VmRSS
# (/proc/PID/status) before and after, divided by TUNNELS, is the memory of
# one idle tunnel (client TLS connection + upstream connection + buffers).
# A measurement, never a pass/fail. Everything lives in a temp dir removed
# on exit; every process is stopped by its PID.
set -eu

cd "$(dirname "$0")/.."
. bench/lib.sh
SECS=${1:-10}
CONNS=${2:-32}
TUNNELS=${3:-1000}
BIN=build/flowgate
for tool in wrk nginx python3 curl; do
    command -v "$tool" >/dev/null || { echo "previews: $tool not installed" >&2; exit 1; }
done
[ -x "$BIN" ] || { echo "previews: build $BIN first (make)" >&2; exit 1; }
[ -f certs/dev/server.crt ] || { echo "previews: make certs first" >&2; exit 1; }

tmp=$(mktemp -d)
pids=""
cleanup() {
    for p in $pids; do kill "$p" 2>/dev/null || true; done
    for p in $pids; do wait "$p" 2>/dev/null || true; done
    rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# A port free on 127.0.0.1 and 127.0.0.2 alike.
free_port() {
    python3 - <<'EOF'
import socket
for _ in range(100):
    s = socket.socket(); s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]; s.close()
    try:
        t = socket.socket(); t.bind(("127.0.0.2", port)); t.close()
        print(port); break
    except OSError:
        pass
EOF
}
UP_PORT=$(free_port)
WS_PORT=$(free_port)
TLS_PORT=$(free_port)
ADMIN_PORT=$(free_port)

start_fixed_nginx "$tmp/nginx" "127.0.0.2:$UP_PORT" "ok"
pids="$pids $FIXED_NGINX_PID"
python3 tests/upstream.py --listen "127.0.0.3:$WS_PORT" --name ws >"$tmp/ws.log" 2>&1 &
pids="$pids $!"

printf '127.0.0.2 mvp-bench.previews.bench\n127.0.0.3 mvp-ws.previews.bench\n' >"$tmp/hosts"
cat >"$tmp/flowgate.conf" <<EOF
workers = 1;
listen: { https = [ "127.0.0.1:$TLS_PORT" ]; http = [ ]; admin = "127.0.0.1:$ADMIN_PORT";
          };
tls: { certificates = ( { cert = "certs/dev/server.crt"; key = "certs/dev/server.key"; } ); };
limits: { max_connections = 20000; };
upstreams: { api = { servers = [ "127.0.0.2:$UP_PORT" ]; keepalive = 64; }; };
routes = ( { host = ""; path = "/"; upstream = "api"; auth = "none"; rate_limit = false; } );
previews: { host = "mvp-{name}.preview.example.com";
            upstream = "mvp-{name}.previews.bench:$UP_PORT"; auth = "none"; };
resolver: { nameservers = [ "127.0.0.1:1" ]; hosts_file = "$tmp/hosts"; };
log: { access = ""; error = "$tmp/error.log"; level = "warn"; };
EOF
"$BIN" -c "$tmp/flowgate.conf" >"$tmp/fg.out" 2>&1 &
fg_pid=$!
pids="$fg_pid $pids"

PREVIEW=mvp-bench.preview.example.com
for _ in $(seq 100); do
    if curl -sk -o /dev/null "https://127.0.0.1:$TLS_PORT/" 2>/dev/null; then break; fi
    sleep 0.1
done
for h in localhost $PREVIEW; do
    code=$(curl -sk -o /dev/null -w '%{http_code}' -H "Host: $h" "https://127.0.0.1:$TLS_PORT/")
    [ "$code" = 200 ] || { echo "previews: $h answered $code" >&2; cat "$tmp/fg.out" >&2; exit 1; }
done

rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$fg_pid/status"; }

# run NAME HOST: one wrk run, then its summary line.
run() {
    wrk_line "$1" "$fg_pid" "$tmp/wrk.$1" -H "Host: $2" "https://127.0.0.1:$TLS_PORT/"
}

echo "wrk -t1 -c$CONNS -d${SECS}s over TLS, flowgate workers = 1, nginx upstream on 127.0.0.2"
run route localhost
run preview $PREVIEW

# Idle WebSocket tunnels: opened, then held while RSS is read.
sed -i "s/previews.bench:$UP_PORT/previews.bench:$WS_PORT/" "$tmp/flowgate.conf"
kill "$fg_pid"; wait "$fg_pid" 2>/dev/null || true
"$BIN" -c "$tmp/flowgate.conf" >"$tmp/fg.out" 2>&1 &
fg_pid=$!
pids="$fg_pid $pids"
for _ in $(seq 100); do
    if curl -sk -o /dev/null "https://127.0.0.1:$TLS_PORT/" 2>/dev/null; then break; fi
    sleep 0.1
done
python3 - "$TLS_PORT" "$TUNNELS" "$fg_pid" <<'EOF'
import base64, os, socket, ssl, sys, time
port, n, pid = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]

def rss_kb():
    with open("/proc/%s/status" % pid) as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmRSS:"))

ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE

def tunnel():
    s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port)), server_hostname="localhost")
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall(("GET /ws HTTP/1.1\r\nHost: mvp-ws.preview.example.com\r\nUpgrade: websocket\r\n"
               "Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n"
               % key).encode())
    head = b""
    while b"\r\n\r\n" not in head:
        head += s.recv(4096)
    assert head.startswith(b"HTTP/1.1 101"), head[:100]
    return s

warm = [tunnel() for _ in range(10)]   # first-use allocations out of the measurement
for s in warm:
    s.close()
time.sleep(1)
before = rss_kb()
socks = [tunnel() for _ in range(n)]
time.sleep(1)
after = rss_kb()
print("%d idle WebSocket tunnels: flowgate VmRSS %d kB -> %d kB, %.1f kB per tunnel"
      % (n, before, after, (after - before) / n))
for s in socks:
    s.close()
EOF
