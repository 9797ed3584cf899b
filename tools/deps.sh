#!/bin/sh
# Installs the Debian 12 packages moe builds and tests with, if any is missing
# (`make run` and `make test` call this first; it does nothing when all are there).
#   sh tools/deps.sh
PKGS="build-essential pkg-config libopenblas-dev libnuma-dev libcmocka-dev libjansson-dev libpcre2-dev libmicrohttpd-dev python3 openmpi-bin libopenmpi-dev"
missing=""
for p in $PKGS; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
[ -z "$missing" ] && exit 0
echo "deps: installing$missing" >&2
if [ "$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq && $SUDO apt-get install -y -qq --no-install-recommends $missing
