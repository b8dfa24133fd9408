# Convenience recipes. The README's commands do not need `just`.

export CARGO_TARGET_DIR := env_var_or_default("CARGO_TARGET_DIR", env_var("HOME") + "/.cache/polhost/target")

# Build polhost (release; embeds the fetcher components).
build:
    cargo build --release --locked -p polhost-cli

# The whole test suite, as CI runs it.
test:
    ./tests/run.sh

# The quickstart: serve the example bundle and fetch it.
quickstart:
    ./examples/quickstart/run.sh

# fmt + clippy for both workspaces.
lint:
    cargo fmt --all --check
    cargo clippy --locked --workspace --all-targets -- -D warnings
    cd guest && cargo fmt --all --check
    cd examples/fetchers/etcd && cargo fmt --all --check

# Fetch a 256 MiB bundle through the http fetcher; compare with curl + sha256sum.
# Then 100 long-polling clients + 10 OPAs on one polhost vs plain polling.
# Then data-heavy bundles (100 MB data.json, 1 GiB data.json, 100,000 data
# files): polhost run --once vs the real OPA loading the same bundle.
# Then 1,000 bundles polled every second (304s): polhost's CPU and RSS vs OPA's.
# Then decision latency of the edge-authz embedding, with and without swaps.
bench:
    cargo bench --locked -p polhost-cli --bench fetch
    cargo bench --locked -p polhost-cli --bench long_polling
    cargo bench --locked -p polhost-cli --bench data_heavy
    cargo bench --locked -p polhost-cli --bench polling_cost
    cargo bench --locked -p edge-authz --bench decisions

# Fuzz the archive validator, the signature/manifest parsers and the config
# parser, 60 s each (nightly; see fuzz/README.md).
fuzz seconds="60":
    ./tests/fuzz.sh {{seconds}}

