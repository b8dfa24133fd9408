#!/usr/bin/env bash
# The whole test suite, on a fresh machine: installs what the tests need
# (the wasm32-wasip2 target, nginx, curl, docker-registry, skopeo, htpasswd,
# openssl, etcd, a Python venv with oras-py, moto, fake-gcs-server, the cloud
# client libraries and componentize-py, azurite), checks formatting and
# lints, then runs every unit and integration test and the fuzz targets.
# The integration tests start their own servers on 127.0.0.1.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
# Reuse one build across runs and clones (wasmtime takes ~8 minutes cold).
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/polhost/target}

rustup target add wasm32-wasip2 >/dev/null
bash tests/harness/install.sh

# Each guest workspace: the standard fetchers and the example plugins.
guest_workspaces=(guest examples/fetchers/etcd)

echo "==> cargo fmt --check"
cargo fmt --all --check
for ws in "${guest_workspaces[@]}"; do (cd "$ws" && cargo fmt --all --check); done
echo "==> cargo clippy"
cargo clippy --locked --workspace --all-targets -- -D warnings
for ws in "${guest_workspaces[@]}"; do
  (cd "$ws" && CARGO_TARGET_DIR=$CARGO_TARGET_DIR/wasm-guests cargo clippy --locked --target wasm32-wasip2 -- -D warnings)
done
echo "==> cargo test"
cargo test --locked --release --workspace
(cd guest && CARGO_TARGET_DIR=$CARGO_TARGET_DIR/wasm-guests cargo test --locked -p polhost-fetcher -p fetcher-oci -p fetcher-s3 -p fetcher-azure -p fetcher-gcs)
echo "==> fuzz (60 s per target)"
./tests/fuzz.sh 60
