#!/usr/bin/env bash
# Runs each cargo-fuzz target (fuzz/) for a bounded time: the archive
# validator, the signature/manifest parsers, the config parser and data.yaml. A fixed
# seed keeps a run repeatable; a crash fails the run and its input lands in
# fuzz/artifacts/ (see fuzz/README.md for turning it into a regression test).
set -euo pipefail

seconds=${1:-60}
root=$(cd "$(dirname "$0")/.." && pwd)

# libFuzzer needs a nightly toolchain, which this project does not pin for
# its own build: install one (minimal profile) when the machine has none.
if ! rustup toolchain list | grep -q '^nightly'; then
  echo "fuzz: installing a nightly toolchain for cargo-fuzz"
  rustup toolchain install nightly --profile minimal >/dev/null
fi
# cargo-fuzz is cached under ~/.cache/polhost, keyed by its version.
CARGO_FUZZ_VERSION=0.13.2
FUZZ_TOOLS=$HOME/.cache/polhost/cargo-fuzz-$CARGO_FUZZ_VERSION
if [ ! -x "$FUZZ_TOOLS/bin/cargo-fuzz" ]; then
  cargo install cargo-fuzz --locked --version "$CARGO_FUZZ_VERSION" --root "$FUZZ_TOOLS"
fi
export PATH=$FUZZ_TOOLS/bin:$PATH
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/polhost/target}/fuzz

cd "$root/fuzz"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
for target in archive signature config data_yaml; do
  echo "==> fuzz $target (${seconds}s)"
  if ! cargo +nightly fuzz run "$target" -- -max_total_time="$seconds" -seed=1 >"$log" 2>&1; then
    tail -n 60 "$log"
    echo "fuzz: $target failed: the input is in fuzz/artifacts/$target/" >&2
    exit 1
  fi
  grep -E "^Done" "$log"
done
