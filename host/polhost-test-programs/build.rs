//! Builds the fetcher components only the tests use: hostile fixtures in
//! `guest/fixtures/` and the example plugins in `examples/fetchers/` (each
//! its own workspace, as a plugin author's would be). Paths reach the tests
//! as constants, so nothing a user builds runs this.

use std::path::PathBuf;

#[path = "../polhost-fetchers/guest_build.rs"]
mod guest_build;

/// (constant, workspace relative to the repository, guest crate).
const PROGRAMS: &[(&str, &str, &str)] = &[
    ("HOSTILE", "guest", "fixture-hostile"),
    ("SOCKETS", "guest", "fixture-sockets"),
    ("ETCD", "examples/fetchers/etcd", "fetcher-etcd"),
];

fn main() {
    let manifest_dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap());
    let repo = manifest_dir.join("../..");
    let wit = repo.join("wit");
    let mut generated = String::new();
    let mut workspaces: Vec<&str> = PROGRAMS.iter().map(|(_, ws, _)| *ws).collect();
    workspaces.dedup();
    for workspace in workspaces {
        let programs: Vec<_> = PROGRAMS
            .iter()
            .filter(|(_, ws, _)| *ws == workspace)
            .collect();
        let crates: Vec<&str> = programs.iter().map(|(_, _, krate)| *krate).collect();
        let built = guest_build::build(&repo.join(workspace), &crates, &[&wit]);
        for ((name, _, krate), wasm) in programs.iter().zip(built) {
            generated.push_str(&format!(
                "/// The `{krate}` component.\npub const {name}: &str = {:?};\n",
                wasm.display().to_string()
            ));
        }
    }
    let out = PathBuf::from(std::env::var_os("OUT_DIR").unwrap()).join("programs.rs");
    std::fs::write(out, generated).unwrap();
}
