#!/usr/bin/env bash
# The whole test suite, on a fresh machine: installs what the tests need
# (the wasm32-wasip2 target, nginx, curl, docker-registry, skopeo, htpasswd,
# openssl, a Python venv with oras-py, moto, fake-gcs-server and the cloud
# client libraries, azurite), checks formatting and lints, then runs every
# unit and integration test. The integration tests start their own servers
# on 127.0.0.1.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
# Reuse one build across runs and clones (wasmtime takes ~8 minutes cold).
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/polhost/target}

rustup target add wasm32-wasip2 >/dev/null
bash tests/harness/install.sh

echo "==> cargo fmt --check"
cargo fmt --all --check
(cd guest && cargo fmt --all --check)
echo "==> cargo clippy"
cargo clippy --locked --all-targets -- -D warnings
(cd guest && CARGO_TARGET_DIR=$CARGO_TARGET_DIR/wasm-guests cargo clippy --locked --target wasm32-wasip2 -- -D warnings)
echo "==> cargo test"
cargo test --locked --release
(cd guest && CARGO_TARGET_DIR=$CARGO_TARGET_DIR/wasm-guests cargo test --locked -p polhost-fetcher -p fetcher-oci -p fetcher-s3 -p fetcher-azure -p fetcher-gcs)
echo "==> fuzz (60 s per target)"
./tests/fuzz.sh 60
