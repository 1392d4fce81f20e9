#!/usr/bin/env bash
# Unpack Debian's chasquid package into bench/.cache without installing it: the package
# conflicts with every other MTA (the tests install Postfix), and its daemon is one static
# binary that runs from anywhere. Prints the binary's path; prints nothing if unavailable.
set -euo pipefail
cache="$(dirname "$0")/.cache"
bin="$cache/root/usr/bin/chasquid"
if [ ! -x "$bin" ]; then
    mkdir -p "$cache"
    (cd "$cache" && rm -f chasquid_*.deb && apt-get download chasquid >/dev/null 2>&1) || exit 0
    dpkg -x "$cache"/chasquid_*.deb "$cache/root"
fi
echo "$(cd "$(dirname "$bin")" && pwd)/chasquid"
