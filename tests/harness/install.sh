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

# Distribution 2.8 (binary /usr/bin/docker-registry). The package's own
# /etc/docker/registry/config.yml and its service are never used: the tests
# write their own config listening on 127.0.0.1.
ensure_docker_registry() {
  if command -v docker-registry >/dev/null 2>&1; then
    echo "docker-registry: found $(docker-registry --version 2>&1 | head -1)"
  else
    apt_install docker-registry
    echo "docker-registry: installed $(docker-registry --version 2>&1 | head -1)"
  fi
}

ensure_skopeo() {
  if command -v skopeo >/dev/null 2>&1; then
    echo "skopeo: found $(skopeo --version)"
  else
    apt_install skopeo
    echo "skopeo: installed $(skopeo --version)"
  fi
}

# htpasswd (bcrypt files for the registry's basic auth).
ensure_htpasswd() {
  if command -v htpasswd >/dev/null 2>&1; then
    echo "htpasswd: found $(command -v htpasswd)"
  else
    apt_install apache2-utils
    echo "htpasswd: installed $(command -v htpasswd)"
  fi
}

ensure_openssl() {
  if command -v openssl >/dev/null 2>&1; then
    echo "openssl: found $(openssl version)"
  else
    apt_install openssl
    echo "openssl: installed $(openssl version)"
  fi
}

# PyPI `oras` (oras-py) in a venv of its own, reused across runs; the tests
# run $POLHOST_VENV/bin/python (default ~/.cache/polhost/venv).
ensure_oras() {
  local venv=${POLHOST_VENV:-$HOME/.cache/polhost/venv}
  if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c 'import oras.client' 2>/dev/null; then
    echo "oras: found $("$venv/bin/python" -c 'import importlib.metadata as m; print(m.version("oras"))') in $venv"
    return
  fi
  if ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
    apt_install python3-venv
  fi
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install -q --disable-pip-version-check oras
  echo "oras: installed $("$venv/bin/python" -c 'import importlib.metadata as m; print(m.version("oras"))') in $venv"
}

ensure_curl
ensure_nginx
ensure_docker_registry
ensure_skopeo
ensure_htpasswd
ensure_openssl
ensure_oras
