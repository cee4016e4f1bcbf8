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
# A software TPM for simulated devices, and what tpm2-pytss builds against.
need swtpm swtpm
need swtpm_setup swtpm-tools
need tpm2_getcap tpm2-tools
need gcc build-essential
need pkg-config pkg-config
pkg-config --exists tss2-esys 2>/dev/null || packages+=(libtss2-dev)
python3 -c 'import sysconfig, os, sys; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' \
  || packages+=(python3-dev)
# PostgreSQL: psql for tsh db connect and the tests; the server for the demo's private database. Debian keeps the
# server's programs (initdb, pg_ctl, postgres) off PATH, in /usr/lib/postgresql/<version>/bin.
need psql postgresql-client
compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || packages+=(postgresql)
# socat: bench_db's reference relay in C (what one hop costs at the least).
need socat socat

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
