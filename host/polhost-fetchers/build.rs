//! Builds the standard fetcher components (`guest/`, a separate cargo
//! workspace) for wasm32-wasip2 and generates the table this crate embeds
//! them from with `include_bytes!`: polhost never shells out at run time.

use std::path::PathBuf;

#[path = "guest_build.rs"]
mod guest_build;

/// Each standard fetcher: (service type, guest crate).
const FETCHERS: &[(&str, &str)] = &[
    ("http", "fetcher-http"),
    ("oci", "fetcher-oci"),
    ("s3", "fetcher-s3"),
    ("azure", "fetcher-azure"),
    ("gcs", "fetcher-gcs"),
];

fn main() {
    let manifest_dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap());
    let guest = manifest_dir.join("../../guest");
    let wit = manifest_dir.join("../../wit");
    let crates: Vec<&str> = FETCHERS.iter().map(|(_, krate)| *krate).collect();
    let built = guest_build::build(&guest, &crates, &[&wit]);
    let mut generated = String::from(
        "/// The standard fetchers: (service type, component bytes).\npub const STANDARD: &[(&str, &[u8])] = &[\n",
    );
    for ((service_type, _), wasm) in FETCHERS.iter().zip(built) {
        generated.push_str(&format!(
            "    ({service_type:?}, include_bytes!({:?})),\n",
            wasm.display().to_string()
        ));
    }
    generated.push_str("];\n");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").unwrap()).join("fetchers.rs");
    std::fs::write(out, generated).unwrap();
}
