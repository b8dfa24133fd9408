#!/usr/bin/env bash
# Runs each cargo-fuzz target (fuzz/) for a bounded time: the archive
# validator, the signature/manifest parsers and the config parser. A fixed
# seed keeps a run repeatable; a crash fails the run and its input lands in
# fuzz/artifacts/ (see fuzz/README.md for turning it into a regression test).
set -euo pipefail

seconds=${1:-60}
root=$(cd "$(dirname "$0")/.." && pwd)

# libFuzzer needs a nightly toolchain, which this project does not pin.
if ! rustup toolchain list | grep -q '^nightly'; then
  echo "fuzz: skipped: no nightly toolchain on this machine (rustup toolchain install nightly)"
  exit 0
fi
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/polhost/target}/fuzz

cd "$root/fuzz"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
for target in archive signature config; do
  echo "==> fuzz $target (${seconds}s)"
  if ! cargo +nightly fuzz run "$target" -- -max_total_time="$seconds" -seed=1 >"$log" 2>&1; then
    tail -n 60 "$log"
    echo "fuzz: $target failed: the input is in fuzz/artifacts/$target/" >&2
    exit 1
  fi
  grep -E "^Done" "$log"
done
