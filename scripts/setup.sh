#!/usr/bin/env bash
# Install what the project needs on a fresh Debian machine: system packages and .venv.
# Usage: scripts/setup.sh [extra]   (default: test, which the demo uses too)
set -euo pipefail
cd "$(dirname "$0")/.."
extra="${1:-test}"

apt_packages=(openssh-server openssh-client etcd-server etcd-client zstd age postgresql)
missing=()
for p in "${apt_packages[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "setup: installing Debian packages: ${missing[*]}"
  sudo_cmd=""; [ "$(id -u)" = 0 ] || sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv"
  python3.11 -m venv .venv 2>/dev/null || python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e ".[$extra]"
echo "setup: ready (.venv with extras '$extra')"
