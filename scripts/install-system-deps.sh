#!/usr/bin/env bash
# Installs the Debian packages devicetrust needs, once: as root directly, otherwise through sudo.
set -euo pipefail

packages=()
need() { # need COMMAND PACKAGE
  command -v "$1" >/dev/null 2>&1 || packages+=("$2")
}
need ssh-keygen openssh-client
need openssl openssl
need git git
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || packages+=(python3-venv)

if [ ${#packages[@]} -eq 0 ]; then
  exit 0
fi

echo "Installing Debian packages: ${packages[*]}"
if [ "$(id -u)" -eq 0 ]; then
  as_root=()
elif command -v sudo >/dev/null 2>&1; then
  as_root=(sudo)
else
  echo "ERROR: need root or sudo to install: ${packages[*]}" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
"${as_root[@]}" apt-get update -qq
"${as_root[@]}" apt-get install -y -qq --no-install-recommends "${packages[@]}"
