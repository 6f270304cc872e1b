#!/bin/sh
# deps.sh SET... - install the Debian 12 packages a make target needs.
#
#   run    `make`, `make run`: compiler, make, pkg-config, the -dev libraries
#          (libnghttp2 for HTTP/2);
#          openssl (dev certificates), python3 (demo upstream, dev token),
#          redis-server (the demo's rate limits), curl (the lines it prints)
#   test   `make test`: run's, plus cmocka, clang-14 and its fuzzer runtime,
#          node-llhttp (the fuzz oracle), iproute2 (ss), testssl.sh; HTTP/2
#          clients (python3-h2, nghttp2-client), redis-sentinel, chromium with
#          chromium-driver and python3-selenium (the browser suite drives it)
#          and libnss3-tools (the browser's certificate store), and
#          kubernetes-client unless a kubectl is already installed (its
#          "kubectl kustomize" renders deploy/kubernetes, python3-yaml reads it)
#   bench  `make bench`: run's, plus wrk, nginx, haproxy, gnuplot, valgrind
#
# As root: apt-get. Debian starts a package's service when it installs it, so
# a policy-rc.d that refuses every start is in place while apt-get runs (one
# the administrator put there is left alone), and the service units of every
# package installed here are then disabled and stopped: a test tool (nginx on
# port 80, redis-server on 6379) must not keep running, or start at the next
# boot, because a make target needed it. Not root: print the exact line and stop.

# Package and unit lists are split into words on purpose.
# shellcheck disable=SC2086
set -eu

RUN_PKGS="build-essential pkg-config libevent-dev libssl-dev libjwt-dev libhiredis-dev
libjansson-dev libconfig-dev libnghttp2-dev openssl python3 redis-server curl"
TEST_PKGS="libcmocka-dev clang-14 libclang-rt-14-dev node-llhttp iproute2 testssl.sh
chromium chromium-driver python3-selenium fonts-dejavu-core python3-h2 nghttp2-client
redis-sentinel libnss3-tools python3-yaml"
BENCH_PKGS="wrk nginx haproxy gnuplot-nox valgrind nghttp2-client"
POLICY=/usr/sbin/policy-rc.d

[ $# -gt 0 ] || set -- run test bench
pkgs=$RUN_PKGS
for set in "$@"; do
    case $set in
    run) ;;
    test)
        pkgs="$pkgs $TEST_PKGS"
        command -v kubectl >/dev/null 2>&1 || pkgs="$pkgs kubernetes-client"
        ;;
    bench) pkgs="$pkgs $BENCH_PKGS" ;;
    *) echo "usage: deps.sh [run|test|bench]..." >&2; exit 2 ;;
    esac
done

installed() {
    dpkg-query -W -f='${db:Status-Abbrev} ${Package}\n' 2>/dev/null | awk '$1 == "ii" { print $2 }' |
        sort
}

missing=""
for p in $pkgs; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" ||
        missing="$missing $p"
done
[ -z "$missing" ] && exit 0
if [ "$(id -u)" != 0 ]; then
    echo "flowgate needs these Debian packages; run as root:" >&2
    echo "  apt-get update && apt-get install -y --no-install-recommends$missing" >&2
    echo "(or \"sudo sh tools/deps.sh $*\", which also keeps their services stopped)" >&2
    exit 1
fi

# service_units PKG...: the systemd services and sockets those packages ship.
service_units() {
    for p in "$@"; do
        dpkg-query -L "$p" 2>/dev/null
    done | sed -n -E 's#^(/usr)?/lib/systemd/system/([^/@]+\.(service|socket))$#\2#p' | sort -u
}

before=$(mktemp)
trap 'rm -f "$before"' EXIT
trap 'exit 130' INT TERM
installed >"$before"
if [ ! -e "$POLICY" ]; then
    printf '#!/bin/sh\n# tools/deps.sh: no service starts while it installs packages.\nexit 101\n' \
        >"$POLICY"
    chmod 0755 "$POLICY"
    trap 'rm -f "$before" "$POLICY"' EXIT
fi

echo "installing:$missing"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends $missing >/dev/null

new=$(installed | comm -13 "$before" -)
units=$(service_units $new)
if [ -n "$units" ] && [ -d /run/systemd/system ]; then
    echo "disabling and stopping the services just installed:" $units
    systemctl disable --now --quiet $units || true
fi
