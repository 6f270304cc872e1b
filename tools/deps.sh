#!/bin/sh
# Install the Debian 12 packages flowgate builds, runs and tests with.
# As root: apt-get. Otherwise: print the exact line and stop.
set -e
# chromium and a font: the status page's test opens the page in a headless browser.
PKGS="build-essential pkg-config libevent-dev libssl-dev libjwt-dev libhiredis-dev
libjansson-dev libconfig-dev node-llhttp libcmocka-dev redis-server curl wrk
openssl iproute2 python3 clang-14 libclang-rt-14-dev nginx haproxy testssl.sh gnuplot-nox
chromium fonts-dejavu-core"
missing=""
for p in $PKGS; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
[ -z "$missing" ] && exit 0
if [ "$(id -u)" != 0 ]; then
    echo "flowgate needs these Debian packages; run as root:" >&2
    echo "  apt-get update && apt-get install -y$missing" >&2
    exit 1
fi
echo "installing:$missing"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends $missing >/dev/null
