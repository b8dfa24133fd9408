//! Data-heavy bundles, the ones OPA users run out of memory on, written to
//! disk as they are generated (never held in memory), and `polhost run
//! --once` on one of them with its peak RSS. Shared by the `data_at_scale`
//! tests and the `data_heavy` benchmark.

use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use flate2::Compression;
use flate2::write::GzEncoder;

use super::reap;

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
/// (~67 bytes of JSON each; 1.5M users: 100 MB), `opa build` style: the
/// data first, the manifest last, roots `["users", "groups", "authz"]`.
pub fn users_bundle(path: &Path, users: u64, revision: &str) -> io::Result<()> {
    users_in(path, "data.json", users, revision, |out, users| {
        write!(out, "{{\"users\":{{")?;
        for i in 0..users {
            if i > 0 {
                out.write_all(b",")?;
            }
            write!(
                out,
                "\"user-{i:08}\":{{\"id\":{i},\"active\":{},\"groups\":[\"g{}\",\"g{}\"]}}",
                i % 7 != 0,
                i % 100,
                i % 37,
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
    })
}

/// [`users_bundle`]'s records as a block-style root `data.yaml` (~71
/// bytes each; 280,000 users: 20 MB).
pub fn users_yaml_bundle(path: &Path, users: u64, revision: &str) -> io::Result<()> {
    users_in(path, "data.yaml", users, revision, |out, users| {
        writeln!(out, "users:")?;
        for i in 0..users {
            write!(
                out,
                "  user-{i:08}:\n    id: {i}\n    active: {}\n    groups: [g{}, g{}]\n",
                i % 7 != 0,
                i % 100,
                i % 37,
            )?;
        }
        writeln!(out, "groups:")?;
        for g in 0..100 {
            writeln!(out, "  g{g}: {{admin: {}}}", g == 0)?;
        }
        Ok(())
    })
}

/// A users bundle whose data file `name` `write` writes.
fn users_in(
    path: &Path,
    name: &str,
    users: u64,
    revision: &str,
    write: impl FnOnce(&mut dyn Write, u64) -> io::Result<()>,
) -> io::Result<()> {
    let mut tar = builder(path)?;
    let scratch = path.with_extension("scratch");
    append_streamed(&mut tar, &scratch, name, |out| write(out, users))?;
    append(
        &mut tar,
        "authz/policy.rego",
        b"package authz\n\nallow if input.user in object.keys(data.users)\n",
    )?;
    let manifest = format!(r#"{{"revision":"{revision}","roots":["users","groups","authz"]}}"#);
    append(&mut tar, ".manifest", manifest.as_bytes())?;
    finish(tar)
}

/// A bundle whose root `data.json` holds about `keys` keys in objects of
/// 100 short keys (~8 bytes of JSON per key; 130M keys: 1.04 GB,
/// just under the 1 GiB per-file limit of OPA and polhost).
/// Too big for the suite's time: the benchmark's.
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

/// What one `polhost run --once` did.
pub struct RunOnce {
    /// Whether it exited 0.
    pub ok: bool,
    /// Its log (stderr).
    pub log: String,
    /// Its peak RSS (see [`super::Reaped`]), KiB.
    pub peak_rss_kib: u64,
    /// From spawn to exit.
    pub elapsed: Duration,
}

/// Runs `polhost run --once` on bundle `resource` of the server at `url`,
/// persisting it under `root` (removed afterwards).
pub fn run_once(polhost: &Path, root: &Path, url: &str, resource: &str) -> RunOnce {
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
    let start = Instant::now();
    let child = Command::new(polhost)
        .arg("run")
        .arg("--once")
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(File::create(&log).unwrap())
        .spawn()
        .unwrap();
    // The 1 GiB bundle takes seconds; a hung run fails instead of hanging.
    let reaped = reap(child, Duration::from_secs(900)).expect("waiting for polhost");
    let status = reaped.status;
    let elapsed = start.elapsed();
    let _ = fs::remove_dir_all(&state);
    RunOnce {
        ok: libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        log: fs::read_to_string(&log).unwrap_or_default(),
        peak_rss_kib: reaped.peak_rss_kib,
        elapsed,
    }
}
