//! Data-heavy bundles, the ones OPA users run out of memory on: polhost
//! downloads, validates (every OPA data rule) and activates them in at most
//! 64 MiB of peak RSS, with the default configuration.
//!
//! Memory is what a user relies on here, so the peak RSS of the `polhost
//! run --once` child (its VmHWM, see `harness::reap`) is asserted; nothing
//! is timed.
//! The generators (`harness::data_bundles`) are also the benchmark's
//! (`benches/data_heavy.rs`), which adds the 1 GiB one and OPA beside.

use std::fs;
use std::io;
use std::path::Path;

use crate::harness::data_bundles::{many_files_bundle, run_once, users_bundle, users_yaml_bundle};
use crate::harness::nginx::{Nginx, NginxOptions};

const TARGET_RSS_KIB: u64 = 64 * 1024;

fn check(generate: impl FnOnce(&Path) -> io::Result<()>, revision: &str) {
    let dir = tempfile::tempdir().unwrap();
    let served = dir.path().join("srv");
    fs::create_dir_all(&served).unwrap();
    generate(&served.join("big.tar.gz")).unwrap();
    let nginx = Nginx::start(NginxOptions {
        root: served.clone(),
        ..NginxOptions::default()
    });
    let polhost = Path::new(env!("CARGO_BIN_EXE_polhost"));
    let run = run_once(polhost, dir.path(), &nginx.url(), "big.tar.gz");
    let (log, rss) = (run.log, run.peak_rss_kib);
    assert!(run.ok, "polhost run --once failed:\n{log}");
    assert!(
        log.contains("bundle activated") && log.contains(revision),
        "not activated:\n{log}"
    );
    eprintln!("{revision}: peak RSS {} KiB", rss);
    assert!(
        rss <= TARGET_RSS_KIB,
        "peak RSS {rss} KiB > {TARGET_RSS_KIB} KiB\n{log}"
    );
}

#[test]
fn a_100_mb_data_json_of_1_5_million_users_activates_in_64_mib() {
    check(|p| users_bundle(p, 1_500_000, "users-1.5m"), "users-1.5m");
}

#[test]
fn a_bundle_of_100_000_data_files_activates_in_64_mib() {
    check(
        |p| many_files_bundle(p, 100_000, "files-100k"),
        "files-100k",
    );
}

/// Issue 10, item 15: a legitimate 19.7 MB data.yaml peaked at 387 MB when
/// the whole document was built to check it.
#[test]
fn a_20_mb_data_yaml_activates_in_64_mib() {
    check(
        |p| users_yaml_bundle(p, 280_000, "users-yaml-280k"),
        "users-yaml-280k",
    );
}
