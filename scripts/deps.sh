#!/bin/sh
# Installs the Debian packages amesh needs to build, test and benchmark.
# Only missing packages are installed; apt-get runs as root, through sudo otherwise.
# Usage: scripts/deps.sh [build|test|bench]   (each level includes the ones before)
set -eu

level=${1:-build}

build="build-essential cmake pkg-config libuv1-dev libmsgpack-dev libxxhash-dev liblmdb-dev libjansson-dev libsodium-dev libinih-dev libhttp-parser-dev"
test="libcriterion-dev clang libclang-rt-14-dev iproute2 nftables groff-base man-db systemd"
bench="redis-server redis-tools gnuplot-nox serf jq"

case "$level" in
    build) want="$build" ;;
    test) want="$build $test" ;;
    bench) want="$build $test $bench" ;;
    *) echo "usage: $0 [build|test|bench]" >&2; exit 2 ;;
esac

missing=""
for p in $want; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
        missing="$missing $p"
    fi
done
[ -z "$missing" ] && exit 0

if [ "$(id -u)" -eq 0 ]; then
    SUDO=""
elif command -v sudo >/dev/null 2>&1; then
    SUDO="sudo"
else
    echo "deps: missing packages:$missing; run as root or install sudo" >&2
    exit 1
fi

echo "deps: installing$missing" >&2
export DEBIAN_FRONTEND=noninteractive
# A fresh machine has no package lists yet; refresh them once before installing.
$SUDO apt-get update -q >&2
# shellcheck disable=SC2086
$SUDO apt-get install -y -q --no-install-recommends $missing >&2
