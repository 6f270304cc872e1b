#!/bin/sh
# gen-dev-certs.sh DIR - a development CA and two server certificates signed by it.
#
#   DIR/ca.crt     DIR/ca.key      the dev CA (EC P-256); trust it in test clients only
#   DIR/server.crt DIR/server.key  localhost, *.preview.localhost, 127.0.0.1, ::1
#   DIR/other.crt  DIR/other.key   other.localhost (a second certificate for SNI tests)
#
# Files that already exist are kept, so running it again changes nothing.
# Keys are mode 600. DIR must never be committed.
set -eu

dir=${1:?usage: gen-dev-certs.sh DIR}
days=825   # the longest validity Apple clients accept for a server certificate

umask 077
mkdir -p "$dir"

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT INT TERM

new_key() {
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null
    chmod 600 "$1"
}

make_ca() {
    [ -f "$dir/ca.crt" ] && [ -f "$dir/ca.key" ] && return 0
    new_key "$dir/ca.key"
    openssl req -x509 -new -sha256 -days 3650 -key "$dir/ca.key" -out "$dir/ca.crt" \
        -subj "/CN=flowgate dev CA" \
        -addext "basicConstraints=critical,CA:TRUE,pathlen:0" \
        -addext "keyUsage=critical,keyCertSign,cRLSign" \
        -addext "subjectKeyIdentifier=hash" 2>/dev/null
    chmod 644 "$dir/ca.crt"
    # A new CA invalidates every leaf signed by an old one.
    rm -f "$dir/server.crt" "$dir/other.crt"
}

# make_leaf NAME CN SAN
make_leaf() {
    name=$1 cn=$2 san=$3
    [ -f "$dir/$name.crt" ] && [ -f "$dir/$name.key" ] && return 0
    [ -f "$dir/$name.key" ] || new_key "$dir/$name.key"
    cat > "$tmp/$name.ext" <<EOF
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=serverAuth
subjectAltName=$san
subjectKeyIdentifier=hash
authorityKeyIdentifier=keyid
EOF
    openssl req -new -sha256 -key "$dir/$name.key" -subj "/CN=$cn" -out "$tmp/$name.csr" \
        2>/dev/null
    openssl x509 -req -sha256 -days "$days" -in "$tmp/$name.csr" \
        -CA "$dir/ca.crt" -CAkey "$dir/ca.key" -CAcreateserial -CAserial "$tmp/ca.srl" \
        -extfile "$tmp/$name.ext" -out "$dir/$name.crt" 2>/dev/null
    chmod 644 "$dir/$name.crt"
}

make_ca
make_leaf server localhost "DNS:localhost,DNS:*.preview.localhost,IP:127.0.0.1,IP:::1"
make_leaf other other.localhost "DNS:other.localhost"
echo "dev certificates in $dir (CA: $dir/ca.crt)"
