#!/bin/sh
# make run: the demo upstream, a local redis-server when installed, and
# flowgate in the foreground, everything on 127.0.0.1. Ctrl-C stops everything.
#
# Ports come from the environment (the make variables of the same names):
# HTTPS_PORT (8443), HTTP_PORT (8080), ADMIN_PORT (9901), UPSTREAM_PORT (9001),
# REDIS_PORT (6379). With the defaults flowgate runs conf/flowgate.conf itself,
# so saving it reloads the demo; with others, a copy for those ports
# (tools/dev-conf.sh) in build/flowgate-dev.conf. FLOWGATE names the binary
# (build/flowgate).
set -u
cd "$(dirname "$0")/.." || exit 1

HTTPS_PORT=${HTTPS_PORT:-8443}
HTTP_PORT=${HTTP_PORT:-8080}
ADMIN_PORT=${ADMIN_PORT:-9901}
UPSTREAM_PORT=${UPSTREAM_PORT:-9001}
REDIS_PORT=${REDIS_PORT:-6379}
FLOWGATE=${FLOWGATE:-build/flowgate}

mkdir -p build
conf=conf/flowgate.conf
if [ "$HTTPS_PORT $HTTP_PORT $ADMIN_PORT $UPSTREAM_PORT $REDIS_PORT" != "8443 8080 9901 9001 6379" ]
then
    conf=build/flowgate-dev.conf
    sh tools/dev-conf.sh "$HTTPS_PORT" "$HTTP_PORT" "$ADMIN_PORT" "$UPSTREAM_PORT" "$REDIS_PORT" \
        >"$conf" || exit 1
fi

# A development secret, generated once per checkout and kept out of git
# (build/ is ignored). Never use it anywhere real.
[ -s build/dev-jwt-secret ] || openssl rand -hex 32 > build/dev-jwt-secret
FLOWGATE_JWT_SECRET=$(cat build/dev-jwt-secret)
export FLOWGATE_JWT_SECRET

pids=""
# shellcheck disable=SC2086 # a list of PIDs
cleanup() { [ -n "$pids" ] && kill $pids 2>/dev/null; wait 2>/dev/null; }
trap cleanup EXIT
trap 'exit 130' INT TERM

python3 tests/upstream.py --listen "127.0.0.1:$UPSTREAM_PORT" --name demo &
pids="$pids $!"
if command -v redis-server >/dev/null 2>&1 &&
    ! redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping >/dev/null 2>&1; then
    redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no >/dev/null &
    pids="$pids $!"
fi

token=$(python3 tools/devtoken.py "$FLOWGATE_JWT_SECRET" dev-user 2>/dev/null || true)
cat <<MSG

flowgate on https://localhost:$HTTPS_PORT (http://localhost:$HTTP_PORT redirects), admin on 127.0.0.1:$ADMIN_PORT
configuration: $conf (loopback only)
Try:
  curl --cacert certs/dev/ca.crt https://localhost:$HTTPS_PORT/
  curl -i http://localhost:$HTTP_PORT/some/path
  curl --cacert certs/dev/ca.crt -H "Authorization: Bearer $token" https://localhost:$HTTPS_PORT/api/hello
  curl --cacert certs/dev/ca.crt -H "Host: mvp-demo.preview.localhost:$HTTPS_PORT" https://localhost:$HTTPS_PORT/
  curl http://127.0.0.1:$ADMIN_PORT/healthz

MSG
"$FLOWGATE" -c "$conf" &
fg=$!
pids="$pids $fg"
wait $fg
