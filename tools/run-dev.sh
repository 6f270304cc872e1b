#!/bin/sh
# make run: the demo upstream, a local redis-server when installed, and
# flowgate in the foreground on conf/flowgate.conf. Ctrl-C stops everything.
set -u
cd "$(dirname "$0")/.." || exit 1

# A development secret, generated once per checkout and kept out of git
# (build/ is ignored). Never use it anywhere real.
mkdir -p build
[ -s build/dev-jwt-secret ] || openssl rand -hex 32 > build/dev-jwt-secret
FLOWGATE_JWT_SECRET=$(cat build/dev-jwt-secret)
export FLOWGATE_JWT_SECRET

pids=""
cleanup() { [ -n "$pids" ] && kill $pids 2>/dev/null; wait 2>/dev/null; }
trap cleanup EXIT INT TERM

python3 tests/upstream.py --listen 127.0.0.1:9001 --name demo &
pids="$pids $!"
if command -v redis-server >/dev/null 2>&1 && ! redis-cli -p 6379 ping >/dev/null 2>&1; then
    redis-server --port 6379 --bind 127.0.0.1 --save '' --appendonly no >/dev/null &
    pids="$pids $!"
fi

token=$(python3 tools/devtoken.py "$FLOWGATE_JWT_SECRET" dev-user 2>/dev/null || true)
cat <<MSG

flowgate on https://localhost:8443 (http://localhost:8080 redirects), admin on 127.0.0.1:9901
Try:
  curl --cacert certs/dev/ca.crt https://localhost:8443/
  curl -i http://localhost:8080/some/path
  curl --cacert certs/dev/ca.crt -H "Authorization: Bearer $token" https://localhost:8443/api/hello
  curl --cacert certs/dev/ca.crt -H "Host: mvp-demo.preview.localhost" https://localhost:8443/
  curl http://127.0.0.1:9901/healthz

MSG
build/flowgate -c conf/flowgate.conf &
fg=$!
pids="$pids $fg"
wait $fg
