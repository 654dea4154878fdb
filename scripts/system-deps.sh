#!/usr/bin/env bash
# Install the Debian packages the test suite needs, quietly and only when missing:
#   postgresql    the server binaries (initdb, pg_ctl, createdb) tests/pg.py runs a throwaway
#                 cluster with, so the PostgreSQL ledger tests run instead of being skipped.
#   redis-server  the binary tests/redis_server.py runs a throwaway server with, so the Redis
#                 cache tests run instead of being skipped.
#   chromium      headless Chromium, which the evaluation test opens the HTML report in (to see
#                 that the plot and the tables render), instead of skipping that check.
# Safe to run again: with everything present it touches nothing and needs no network.
set -euo pipefail

PACKAGES=(postgresql redis-server chromium)

missing=()
for pkg in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$pkg")
  fi
done
[ ${#missing[@]} -eq 0 ] && exit 0

if ! command -v apt-get >/dev/null 2>&1; then
  echo "system-deps: apt-get not found; install ${missing[*]} with your package manager." >&2
  exit 1
fi
SUDO=()
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null 2>&1 || {
    echo "system-deps: run as root (or install sudo) to install ${missing[*]}." >&2
    exit 1
  }
  SUDO=(sudo)
fi

echo "system-deps: installing ${missing[*]}..." >&2
export DEBIAN_FRONTEND=noninteractive
"${SUDO[@]}" apt-get update -qq >/dev/null
# --no-install-recommends: the server binaries are all the tests use. (A "main" cluster or a
# redis service the packages may start is left alone: the tests run their own on free ports.)
"${SUDO[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
