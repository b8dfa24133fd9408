#!/usr/bin/env bash
# polhost's main job on a quickstart, with nothing installed by hand:
# build polhost (its fetchers are compiled to WebAssembly and embedded),
# serve the example bundle with `polhost serve`, then let `polhost run` fetch
# it through the sandboxed http fetcher, validate it, persist it and report
# it active; a second run restores it from disk and gets a 304.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/polhost/target}

cd "$root"
# rust-toolchain.toml lists the target, but rustup adds it only when it
# installs the toolchain itself: make sure it is there.
rustup target add wasm32-wasip2 >/dev/null
echo "==> building polhost (release; the first build takes several minutes)"
cargo build --release --locked -p polhost-cli --bin polhost
polhost=$CARGO_TARGET_DIR/release/polhost

export QUICKSTART_PORT=${QUICKSTART_PORT:-18282}
export QUICKSTART_STATE=${QUICKSTART_STATE:-$(mktemp -d)/opa}
"$polhost" serve "$here" --addr "127.0.0.1:$QUICKSTART_PORT" 2>"$QUICKSTART_STATE.serve.log" &
server=$!
trap 'kill $server 2>/dev/null || true' EXIT
for _ in $(seq 50); do
  (echo >"/dev/tcp/127.0.0.1/$QUICKSTART_PORT") 2>/dev/null && break
  sleep 0.1
done

echo
echo "==> polhost run --once $here/config.yaml   (fetch, validate, persist, activate)"
"$polhost" run --once "$here/config.yaml"
echo
echo "==> persisted under $QUICKSTART_STATE"
ls -l "$QUICKSTART_STATE/bundles/authz"
cat "$QUICKSTART_STATE/bundles/authz/metadata.json"
echo
echo "==> again: active from disk before any download, then 304 Not Modified"
POLHOST_LOG=${POLHOST_LOG:-info,polhost::agent=debug} "$polhost" run --once "$here/config.yaml"
echo
echo "Done. To keep it fresh (polling as OPA does; Ctrl-C stops):"
echo "  QUICKSTART_PORT=$QUICKSTART_PORT QUICKSTART_STATE=$QUICKSTART_STATE $polhost run $here/config.yaml"
