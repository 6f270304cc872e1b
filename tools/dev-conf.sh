#!/bin/sh
# dev-conf.sh HTTPS HTTP ADMIN UPSTREAM REDIS - `make run`'s configuration on stdout.
#
# conf/flowgate.conf is written for the ports 8443 (https), 8080 (http), 9901
# (admin), 9001 (demo upstream) and 6379 (redis); this prints it with each
# replaced by the given one wherever it appears as a whole number (listeners,
# redirect port, CORS origins, CSP, preview upstream and frame-ancestors),
# every other line as it is: still loopback only, still the short HSTS.
# Run from the repository root (the file's relative paths are).
set -eu

[ $# -eq 5 ] || { echo "usage: dev-conf.sh HTTPS HTTP ADMIN UPSTREAM REDIS" >&2; exit 2; }
for port in "$@"; do
    case $port in
    '' | *[!0-9]* | 0*) echo "dev-conf.sh: bad port \"$port\"" >&2; exit 2 ;;
    esac
    [ "$port" -le 65535 ] || { echo "dev-conf.sh: bad port \"$port\"" >&2; exit 2; }
done
[ "$(printf '%s\n' "$@" | sort -u | wc -l)" -eq 5 ] ||
    { echo "dev-conf.sh: the five ports must differ" >&2; exit 2; }

# Every default first becomes a placeholder, then every placeholder a port,
# so swapping two ports (HTTPS=8080 HTTP=8443) cannot replace one twice.
sed -e 's/\<8443\>/@HTTPS@/g' -e 's/\<8080\>/@HTTP@/g' -e 's/\<9901\>/@ADMIN@/g' \
    -e 's/\<9001\>/@UPSTREAM@/g' -e 's/\<6379\>/@REDIS@/g' \
    -e "s/@HTTPS@/$1/g" -e "s/@HTTP@/$2/g" -e "s/@ADMIN@/$3/g" \
    -e "s/@UPSTREAM@/$4/g" -e "s/@REDIS@/$5/g" conf/flowgate.conf
