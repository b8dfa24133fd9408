#!/usr/bin/env bash
# Installs the third-party servers and tools the integration tests run against.
# Idempotent and quick when everything is present. Debian, run as root.
# Add a server by writing an `ensure_<name>` function and calling it at the end.
set -euo pipefail

export DEBIAN_FRONTEND=noninteractive

APT_UPDATED=0
POLICY_RC_D=/usr/sbin/policy-rc.d
POLICY_RC_D_OURS=0

cleanup() {
  if [ "$POLICY_RC_D_OURS" = 1 ]; then
    rm -f "$POLICY_RC_D"
  fi
}
trap cleanup EXIT

# Keep package maintainer scripts from starting system services (which would
# listen on all interfaces). Only installs our own policy if none exists.
block_service_start() {
  if [ ! -e "$POLICY_RC_D" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$POLICY_RC_D"
    chmod 0755 "$POLICY_RC_D"
    POLICY_RC_D_OURS=1
  fi
}

# apt_install PKG...: apt-get update (once per run), then install.
apt_install() {
  if [ "$(id -u)" -ne 0 ]; then
    echo "install.sh: need root to apt-get install $*" >&2
    exit 1
  fi
  block_service_start
  if [ "$APT_UPDATED" = 0 ]; then
    apt-get update -qq
    APT_UPDATED=1
  fi
  apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

ensure_curl() {
  if command -v curl >/dev/null 2>&1; then
    echo "curl: found $(command -v curl)"
  else
    apt_install curl ca-certificates
    echo "curl: installed $(command -v curl)"
  fi
}

# The full `nginx` package (not nginx-light); binary /usr/sbin/nginx.
ensure_nginx() {
  if [ -x /usr/sbin/nginx ]; then
    echo "nginx: found $(/usr/sbin/nginx -v 2>&1 | sed 's/^nginx version: //')"
  else
    apt_install nginx
    echo "nginx: installed $(/usr/sbin/nginx -v 2>&1 | sed 's/^nginx version: //')"
  fi
}

# python3 + openssl (the hostile corpus and signed-bundle generators) and a
# venv with PyJWT (signs test bundles independently of polhost's code).
ensure_python_tools() {
  command -v python3 >/dev/null 2>&1 || apt_install python3
  python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || apt_install python3-venv
  command -v openssl >/dev/null 2>&1 || apt_install openssl
  local venv="${HOME}/.cache/polhost/venv"
  if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
  fi
  if ! "$venv/bin/python" -c 'import jwt, cryptography' >/dev/null 2>&1; then
    "$venv/bin/pip" install -q 'PyJWT[crypto]>=2.8'
  fi
  echo "python tools: $("$venv/bin/python" -c 'import jwt; print("PyJWT", jwt.__version__)'), $(openssl version)"
}

ensure_curl
ensure_nginx
ensure_python_tools
