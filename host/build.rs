//! Builds the standard fetcher components (`guest/`, a separate cargo
//! workspace) for wasm32-wasip2 and tells the host where they are, as
//! wasmtime's own test-programs do: the host embeds them with
//! `include_bytes!` and never shells out at run time.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Each standard fetcher: (service type, guest crate).
const FETCHERS: &[(&str, &str)] = &[
    ("http", "fetcher-http"),
    ("oci", "fetcher-oci"),
    ("s3", "fetcher-s3"),
    ("azure", "fetcher-azure"),
    ("gcs", "fetcher-gcs"),
];

/// Hostile components for the sandbox tests: built with the rest, never
/// embedded; their paths reach the tests as `POLHOST_FIXTURE_<NAME>_WASM`.
const TEST_FIXTURES: &[&str] = &["fixture-hostile", "fixture-sockets"];

fn main() {
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").unwrap());
    let guest = manifest_dir.join("../guest");
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").unwrap());
    println!("cargo:rerun-if-changed={}", guest.display());
    println!(
        "cargo:rerun-if-changed={}",
        manifest_dir.join("../wit").display()
    );

    let target_dir = guest_target_dir(&out_dir);
    let mut cargo = Command::new(env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cargo
        .current_dir(&guest)
        .args([
            "build",
            "--release",
            "--target",
            "wasm32-wasip2",
            "--locked",
        ])
        .arg("--target-dir")
        .arg(&target_dir);
    for krate in FETCHERS.iter().map(|(_, k)| k).chain(TEST_FIXTURES) {
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
    let status = cargo
        .status()
        .expect("running cargo for the guest fetchers");
    assert!(
        status.success(),
        "building the fetcher components in guest/ failed (is the wasm32-wasip2 target installed? `rustup target add wasm32-wasip2`)"
    );

    for krate in TEST_FIXTURES {
        let name = krate.trim_start_matches("fixture-").to_uppercase();
        println!(
            "cargo:rustc-env=POLHOST_FIXTURE_{name}_WASM={}",
            wasm_path(&target_dir, krate).display()
        );
    }

    let mut generated = String::from(
        "/// Standard fetchers: (service type, component bytes).\npub const STANDARD: &[(&str, &[u8])] = &[\n",
    );
    for (service_type, krate) in FETCHERS {
        let wasm = wasm_path(&target_dir, krate);
        generated.push_str(&format!(
            "    ({service_type:?}, include_bytes!({:?})),\n",
            wasm.display().to_string()
        ));
    }
    generated.push_str("];\n");
    std::fs::write(out_dir.join("fetchers.rs"), generated).unwrap();
}

/// The component a guest crate builds to.
fn wasm_path(target_dir: &Path, krate: &str) -> PathBuf {
    let wasm = target_dir
        .join("wasm32-wasip2/release")
        .join(format!("{}.wasm", krate.replace('-', "_")));
    assert!(wasm.exists(), "missing {}", wasm.display());
    wasm
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
