#!/usr/bin/env bash
# What pip cannot install, for `make test` and CI (.ci/run runs `make test`, which runs
# this; `make install` runs `provision.sh npm` for npm alone): Debian's Chromium for the browser tests, and a Redis on 127.0.0.1:6379 for the
# tests that run a real Celery worker. Installs a missing one from Debian when we are
# root; otherwise prints one line saying what to install, and fails. Idempotent: on a
# machine that has both, it only checks.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive

missing=()
apt_updated=0

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

can_install() { [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; }

apt_install() {
  if [ "$apt_updated" = 0 ]; then
    apt-get update -qq
    apt_updated=1
  fi
  echo "provision: installing $* from Debian"
  apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# `provision.sh npm`: only npm, which `make install` needs for package.json's browser
# libraries (served by the app itself; no CDN).
if [ "${1:-}" = "npm" ]; then
  if ! command -v npm >/dev/null; then
    if can_install; then apt_install npm; else
      echo "provision: make install needs npm: install it with 'sudo apt-get install npm' (Debian)" >&2
      exit 1
    fi
  fi
  exit 0
fi

# Chromium: Playwright drives /usr/bin/chromium (no browser download at run time).
if [ ! -x /usr/bin/chromium ]; then
  if can_install; then apt_install chromium; else missing+=(chromium); fi
fi

# Redis: started here when nothing answers on 6379 (it keeps nothing on disk).
if ! port_open 6379; then
  if ! command -v redis-server >/dev/null; then
    if can_install; then apt_install redis-server; else missing+=(redis-server); fi
  fi
  if command -v redis-server >/dev/null; then
    redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
      --dir /tmp --logfile "" >/dev/null
    for _ in $(seq 50); do port_open 6379 && break; sleep 0.1; done
    port_open 6379 || { echo "provision: redis-server did not start on 127.0.0.1:6379" >&2; exit 1; }
  fi
fi

if [ ${#missing[@]} -gt 0 ]; then
  echo "provision: make test needs ${missing[*]}: install with 'sudo apt-get install ${missing[*]}' (Debian), then run make test again" >&2
  exit 1
fi
