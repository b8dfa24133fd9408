//! Building guest crates for wasm32-wasip2 from a build script, as
//! wasmtime's own test-programs do: one `cargo build` in the guest's own
//! workspace, into a target dir shared by every profile of the outer build.
//! Shared by the build scripts of `polhost-fetchers` (the standard
//! fetchers) and `polhost-test-programs` (test fixtures and example
//! plugins), which include this file.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Builds `crates` of the cargo workspace at `workspace` in release for
/// wasm32-wasip2 and returns each one's component, in order. Reruns the
/// outer build when anything under `watch` changes.
pub fn build(workspace: &Path, crates: &[&str], watch: &[&Path]) -> Vec<PathBuf> {
    for path in watch.iter().copied().chain([workspace]) {
        println!("cargo:rerun-if-changed={}", path.display());
    }
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR"));
    let target_dir = guest_target_dir(&out_dir);
    let mut cargo = Command::new(env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cargo
        .current_dir(workspace)
        .args([
            "build",
            "--release",
            "--target",
            "wasm32-wasip2",
            "--locked",
        ])
        .arg("--target-dir")
        .arg(&target_dir);
    for krate in crates {
        cargo.args(["-p", krate]);
    }
    // The outer build's settings are for the host, not for wasm: do not
    // let them leak into the guest build.
    for var in [
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTFLAGS",
        "CARGO_BUILD_TARGET",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_RUSTC_WRAPPER",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_MAKEFLAGS",
        "CARGO_PROFILE_RELEASE_DEBUG",
    ] {
        cargo.env_remove(var);
    }
    let status = cargo.status().unwrap_or_else(|e| {
        panic!(
            "running cargo for the guests in {}: {e}",
            workspace.display()
        )
    });
    assert!(
        status.success(),
        "building the components in {} failed (is the wasm32-wasip2 target installed? `rustup target add wasm32-wasip2`)",
        workspace.display()
    );
    crates
        .iter()
        .map(|krate| {
            let wasm = target_dir
                .join("wasm32-wasip2/release")
                .join(format!("{}.wasm", krate.replace('-', "_")));
            assert!(wasm.exists(), "missing {}", wasm.display());
            wasm
        })
        .collect()
}

/// `<target dir>/wasm-guests`, shared by every profile and tool (clippy,
/// test, release) of the outer build; cargo marks its target dir with
/// CACHEDIR.TAG.
fn guest_target_dir(out_dir: &Path) -> PathBuf {
    out_dir
        .ancestors()
        .find(|dir| dir.join("CACHEDIR.TAG").exists())
        .map(|target| target.join("wasm-guests"))
        .unwrap_or_else(|| out_dir.join("wasm-guests"))
}
