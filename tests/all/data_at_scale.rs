//! Data-heavy bundles, the ones OPA users run out of memory on: polhost
//! downloads, validates (every OPA data rule) and activates them in at most
//! 64 MiB of peak RSS, with the default configuration.
//!
//! Memory is what a user relies on here, so the peak RSS of the `polhost
//! run --once` child (wait4's `ru_maxrss`) is asserted; nothing is timed.
//! The generators are also the benchmark's (`benches/data_heavy.rs`).

use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::path::Path;
use std::process::{Command, Stdio};

use flate2::Compression;
use flate2::write::GzEncoder;

use crate::harness::nginx::{Nginx, NginxOptions};
use crate::harness::reap;

const TARGET_RSS_KIB: i64 = 64 * 1024;

/// Writes a tar entry whose content `body` writes (streamed through a temp
/// buffer file so the size is known up front, never held in memory).
fn append_streamed(
    tar: &mut tar::Builder<impl Write>,
    scratch: &Path,
    name: &str,
    body: impl FnOnce(&mut dyn Write) -> io::Result<()>,
) -> io::Result<()> {
    {
        let mut out = BufWriter::with_capacity(1 << 20, File::create(scratch)?);
        body(&mut out)?;
        out.flush()?;
    }
    let size = fs::metadata(scratch)?.len();
    let mut header = tar::Header::new_gnu();
    header.set_size(size);
    header.set_mode(0o644);
    header.set_mtime(1_700_000_000);
    tar.append_data(&mut header, name, File::open(scratch)?)?;
    fs::remove_file(scratch)
}

fn append(tar: &mut tar::Builder<impl Write>, name: &str, content: &[u8]) -> io::Result<()> {
    let mut header = tar::Header::new_gnu();
    header.set_size(content.len() as u64);
    header.set_mode(0o644);
    header.set_mtime(1_700_000_000);
    tar.append_data(&mut header, name, content)
}

fn builder(path: &Path) -> io::Result<tar::Builder<GzEncoder<BufWriter<File>>>> {
    let file = BufWriter::with_capacity(1 << 20, File::create(path)?);
    Ok(tar::Builder::new(GzEncoder::new(file, Compression::fast())))
}

fn finish(tar: tar::Builder<GzEncoder<BufWriter<File>>>) -> io::Result<()> {
    let out = tar.into_inner()?.finish()?;
    out.into_inner().map_err(|e| e.into_error())?.sync_all()
}

/// A bundle whose root `data.json` holds `users` realistic user records
/// (~65 bytes of JSON per key; 1.5M users: ~98 MB), `opa build` style: the
/// data first, the manifest last, roots `["users", "groups"]`.
pub fn users_bundle(path: &Path, users: u64, revision: &str) -> io::Result<()> {
    let mut tar = builder(path)?;
    let scratch = path.with_extension("scratch");
    append_streamed(&mut tar, &scratch, "data.json", |out| {
        write!(out, "{{\"users\":{{")?;
        for i in 0..users {
            if i > 0 {
                out.write_all(b",")?;
            }
            write!(
                out,
                "\"user-{i:08}\":{{\"id\":{i},\"name\":\"User {i}\",\"email\":\"user{i}@example.com\",\"active\":{},\"groups\":[\"g{}\",\"g{}\"],\"profile\":{{\"dept\":\"d{}\",\"level\":{},\"manager\":\"user-{:08}\"}}}}",
                i % 7 != 0,
                i % 100,
                i % 37,
                i % 20,
                i % 5,
                i / 10
            )?;
        }
        write!(out, "}},\"groups\":{{")?;
        for g in 0..100 {
            if g > 0 {
                out.write_all(b",")?;
            }
            write!(out, "\"g{g}\":{{\"admin\":{}}}", g == 0)?;
        }
        write!(out, "}}}}")
    })?;
    append(
        &mut tar,
        "users/policy.rego",
        b"package users\n\nallow if input.user in object.keys(data.users)\n",
    )?;
    let manifest = format!(r#"{{"revision":"{revision}","roots":["users","groups"]}}"#);
    append(&mut tar, ".manifest", manifest.as_bytes())?;
    finish(tar)
}

/// A bundle whose root `data.json` holds about `keys` keys in 1 KiB-ish
/// objects of short keys (~10 bytes of JSON per key; 100M keys: ~1 GiB).
/// Too big for the suite's time: the benchmark's.
#[allow(dead_code)]
pub fn many_keys_bundle(path: &Path, keys: u64, revision: &str) -> io::Result<()> {
    let mut tar = builder(path)?;
    let scratch = path.with_extension("scratch");
    append_streamed(&mut tar, &scratch, "data.json", |out| {
        write!(out, "{{\"keys\":{{")?;
        let per = 100u64;
        for block in 0..keys.div_ceil(per) {
            if block > 0 {
                out.write_all(b",")?;
            }
            write!(out, "\"b{block}\":{{")?;
            for k in 0..per {
                if k > 0 {
                    out.write_all(b",")?;
                }
                write!(out, "\"k{k}\":{}", k & 1)?;
            }
            out.write_all(b"}")?;
        }
        write!(out, "}}}}")
    })?;
    let manifest = format!(r#"{{"revision":"{revision}","roots":["keys"]}}"#);
    append(&mut tar, ".manifest", manifest.as_bytes())?;
    finish(tar)
}

/// A bundle of `files` small data files, one per tenant directory, plus a
/// root `data.json` that every one of them overlaps, and the manifest.
pub fn many_files_bundle(path: &Path, files: u64, revision: &str) -> io::Result<()> {
    let mut tar = builder(path)?;
    let manifest = format!(r#"{{"revision":"{revision}","roots":["tenants","config"]}}"#);
    append(&mut tar, ".manifest", manifest.as_bytes())?;
    append(
        &mut tar,
        "data.json",
        br#"{"config":{"version":3},"tenants":{"t00000000":{"plan":"free"}}}"#,
    )?;
    for i in 0..files {
        let body = format!(
            r#"{{"name":"tenant {i}","limits":{{"rps":{},"users":{}}},"admins":["a{i}"]}}"#,
            i % 1000,
            i % 50
        );
        let dir = if i % 2 == 0 { "data.json" } else { "data.yaml" };
        let content = if dir == "data.yaml" {
            format!(
                "name: tenant {i}\nlimits:\n  rps: {}\n  users: {}\nadmins: [a{i}]\n",
                i % 1000,
                i % 50
            )
        } else {
            body
        };
        append(
            &mut tar,
            &format!("tenants/t{:08}/{dir}", i + 1),
            content.as_bytes(),
        )?;
    }
    finish(tar)
}

/// Runs `polhost run --once` on a bundle served by nginx; its exit status,
/// log and peak RSS (KiB).
pub fn run_once(polhost: &Path, root: &Path, url: &str, resource: &str) -> (bool, String, i64) {
    let state = root.join("state");
    let config = root.join("config.yaml");
    fs::write(
        &config,
        format!(
            "services:\n  s:\n    url: {url}\nbundles:\n  big:\n    service: s\n    resource: {resource}\n    persist: true\npersistence_directory: {}\n",
            state.display()
        ),
    )
    .unwrap();
    let log = root.join("polhost.log");
    let child = Command::new(polhost)
        .arg("run")
        .arg("--once")
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let (status, usage) = reap(child).expect("waiting for polhost");
    let ok = libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0;
    let _ = fs::remove_dir_all(&state);
    (
        ok,
        fs::read_to_string(&log).unwrap_or_default(),
        usage.ru_maxrss,
    )
}

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
    let (ok, log, rss) = run_once(polhost, dir.path(), &nginx.url(), "big.tar.gz");
    assert!(ok, "polhost run --once failed:\n{log}");
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
fn a_98_mb_data_json_of_1_5_million_users_activates_in_64_mib() {
    check(|p| users_bundle(p, 1_500_000, "users-1.5m"), "users-1.5m");
}

#[test]
fn a_bundle_of_100_000_data_files_activates_in_64_mib() {
    check(
        |p| many_files_bundle(p, 100_000, "files-100k"),
        "files-100k",
    );
}
