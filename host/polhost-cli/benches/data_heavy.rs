//! Data-heavy bundles, polhost against the real OPA loading the same
//! bundle from the same nginx in the same run: time to activation and
//! peak RSS, and their ratios.
//!
//! The bundles (`tests/all/harness/data_bundles.rs`, generated to disk):
//!
//! * `users`: a 100 MB root `data.json` of 1.5 million user records;
//! * `keys`: a `data.json` of about 1 GiB, 130 million keys in objects of
//!   100 (just under OPA's and polhost's 1 GiB per-file limit);
//! * `files`: 100,000 small data files (JSON and YAML), each overlapping a
//!   root `data.json`.
//!
//! For each, with the default configuration of both:
//!
//! * polhost: `polhost run --once` (download, every OPA data rule,
//!   persist, activate): wall time from spawn to exit, peak RSS (its
//!   VmHWM, sampled while it runs: `harness::reap`);
//! * OPA v1.22.3: `opa run --server` with the bundle as its only bundle
//!   (polling every 300-600 s, so one download): from spawn to its own
//!   `/v1/status` `last_successful_activation` (and from its
//!   `last_request` to it), peak RSS (VmHWM) once activated. OPA holds all
//!   of `data` in memory: past `BENCH_OPA_MAX_GIB` (default 16) of RSS it
//!   is killed and reported as such, so that the machine survives it.
//!
//! It prints a table and the ratios OPA / polhost (> 1: polhost is faster
//! or smaller). It asserts nothing about timing; it fails only if polhost
//! does not activate a bundle.
//!
//! Environment: `BENCH_CASES` (comma-separated, default
//! `users,files,keys`), `BENCH_OPA_MAX_GIB`, `BENCH_OPA_TIMEOUT_S`
//! (default 900), `POLHOST_OPA` (the OPA binary; default as
//! tests/harness/install.sh installs it), `BENCH_KEEP=1` (keep the temp
//! dir: bundles and logs).
//!
//! Run: `cargo bench -p polhost-cli --bench data_heavy` (or `just bench`).

#[path = "../../../tests/all/harness/mod.rs"]
mod harness;

use std::fs;
use std::io;
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use harness::data_bundles::{many_files_bundle, many_keys_bundle, run_once, users_bundle};
use harness::nginx::{Nginx, NginxOptions};
use harness::opa::{Opa, OpaConfig, rfc3339_unix_nanos, rss_kib};

type Result<T> = std::result::Result<T, String>;

struct Case {
    name: &'static str,
    what: &'static str,
    revision: &'static str,
    generate: fn(&Path, &str) -> io::Result<()>,
}

const CASES: &[Case] = &[
    Case {
        name: "users",
        what: "100 MB data.json, 1.5M users",
        revision: "users-1.5m",
        generate: |p, r| users_bundle(p, 1_500_000, r),
    },
    Case {
        name: "files",
        what: "100,000 data files",
        revision: "files-100k",
        generate: |p, r| many_files_bundle(p, 100_000, r),
    },
    Case {
        name: "keys",
        what: "1 GiB data.json, 130M keys",
        revision: "keys-130m",
        generate: |p, r| many_keys_bundle(p, 130_000_000, r),
    },
];

/// What OPA did with one bundle.
enum OpaOutcome {
    Activated {
        from_spawn: Duration,
        from_request: Duration,
        peak_rss_kib: u64,
    },
    /// Killed past the RSS cap, after this long, at this RSS.
    OverMemory { after: Duration, rss_kib: u64 },
    /// Refused the bundle, or did not activate it in time; its status.
    Failed { after: Duration, status: String },
}

struct Row {
    case: &'static Case,
    bundle_bytes: u64,
    data_bytes: u64,
    polhost_time: Duration,
    polhost_rss_kib: u64,
    opa: OpaOutcome,
}

fn main() {
    if let Err(e) = run() {
        eprintln!("data_heavy: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    let wanted = std::env::var("BENCH_CASES").unwrap_or_else(|_| "users,files,keys".into());
    let mut cases = Vec::new();
    for name in wanted.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        let case = CASES
            .iter()
            .find(|c| c.name == name)
            .ok_or_else(|| format!("BENCH_CASES: no case {name:?} (users, files, keys)"))?;
        cases.push(case);
    }
    let opa_cap_kib = harness::env_number::<u64>("BENCH_OPA_MAX_GIB", 16)? * 1024 * 1024;
    let opa_timeout = Duration::from_secs(harness::env_number::<u64>("BENCH_OPA_TIMEOUT_S", 900)?);
    let polhost = Path::new(env!("CARGO_BIN_EXE_polhost"));
    let dir = tempfile::Builder::new()
        .prefix("polhost-bench-data-")
        .tempdir()
        .map_err(|e| format!("temp dir: {e}"))?;
    let served = dir.path().join("srv");
    fs::create_dir_all(&served).map_err(|e| e.to_string())?;
    let nginx = Nginx::start(NginxOptions {
        root: served.clone(),
        ..NginxOptions::default()
    });
    let mut rows = Vec::new();
    for case in cases {
        let file = format!("{}.tar.gz", case.name);
        let path = served.join(&file);
        eprintln!("== {} ({}): generating", case.name, case.what);
        let started = Instant::now();
        (case.generate)(&path, case.revision).map_err(|e| format!("generating {file}: {e}"))?;
        let bundle_bytes = fs::metadata(&path).map_err(|e| e.to_string())?.len();
        let data_bytes = uncompressed_bytes(&path)?;
        eprintln!(
            "   {} MB compressed, {} MB uncompressed, in {:.0?}",
            bundle_bytes / 1_000_000,
            data_bytes / 1_000_000,
            started.elapsed()
        );
        eprintln!("   polhost run --once");
        let work = dir.path().join(case.name);
        fs::create_dir_all(&work).map_err(|e| e.to_string())?;
        let polhost_run = run_once(polhost, &work, &nginx.url(), &file);
        if !polhost_run.ok || !polhost_run.log.contains(case.revision) {
            return Err(format!(
                "polhost did not activate {file}:\n{}",
                polhost_run.log
            ));
        }
        eprintln!("   opa run --server");
        let opa = opa_loads(&nginx.url(), &file, case.revision, opa_cap_kib, opa_timeout);
        rows.push(Row {
            case,
            bundle_bytes,
            data_bytes,
            polhost_time: polhost_run.elapsed,
            polhost_rss_kib: polhost_run.peak_rss_kib,
            opa,
        });
        // The next case's bundle is generated in its place.
        let _ = fs::remove_file(&path);
    }
    print(&rows);
    if std::env::var_os("BENCH_KEEP").is_some() {
        eprintln!("kept {}", dir.keep().display());
    }
    Ok(())
}

/// The sum of the tar entries' sizes.
fn uncompressed_bytes(path: &Path) -> Result<u64> {
    let file = fs::File::open(path).map_err(|e| e.to_string())?;
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(io::BufReader::new(file)));
    let mut total = 0;
    for entry in archive.entries().map_err(|e| e.to_string())? {
        total += entry
            .map_err(|e| e.to_string())?
            .header()
            .size()
            .unwrap_or(0);
    }
    Ok(total)
}

/// Starts OPA on bundle `resource` of `url` and waits for `revision`.
fn opa_loads(
    url: &str,
    resource: &str,
    revision: &str,
    cap_kib: u64,
    timeout: Duration,
) -> OpaOutcome {
    let config = OpaConfig::new(url)
        .bundle("big", resource)
        .polling(300, 600, None)
        .yaml();
    let spawned = SystemTime::now();
    let started = Instant::now();
    let mut opa = Opa::start(&config);
    let outcome = loop {
        let rss = rss_kib(opa.pid()).unwrap_or(0);
        if rss > cap_kib {
            break OpaOutcome::OverMemory {
                after: started.elapsed(),
                rss_kib: rss,
            };
        }
        // OPA answers its API while it loads; a slow answer is waited for.
        let status =
            match harness::opa::http_get(opa.port(), "/v1/status", &[], Duration::from_secs(60)) {
                Ok(r) if r.status == 200 => r.json()["result"]["bundles"]["big"].clone(),
                _ => serde_json::Value::Null,
            };
        if status["active_revision"] == revision {
            let at = |field: &str| {
                status[field]
                    .as_str()
                    .and_then(rfc3339_unix_nanos)
                    .unwrap_or_default()
            };
            let spawned_nanos = spawned
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_nanos() as i128)
                .unwrap_or_default();
            let nanos = |n: i128| Duration::from_nanos(u64::try_from(n.max(0)).unwrap_or(0));
            let activated = at("last_successful_activation");
            break OpaOutcome::Activated {
                from_spawn: nanos(activated - spawned_nanos),
                from_request: nanos(activated - at("last_request")),
                peak_rss_kib: opa.peak_rss_kib(),
            };
        }
        // OPA refused the bundle (it retries, but the verdict stands).
        let refused = status["code"].as_str().is_some_and(|c| !c.is_empty());
        if refused || started.elapsed() > timeout {
            break OpaOutcome::Failed {
                after: started.elapsed(),
                status: status.to_string(),
            };
        }
        thread::sleep(Duration::from_millis(100));
    };
    opa.stop();
    outcome
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn print(rows: &[Row]) {
    println!();
    println!(
        "data-heavy bundles: polhost run --once vs OPA v1.22.3 (opa run --server), same nginx, same run"
    );
    println!(
        "{:<30} {:>9} {:>9} | {:>10} {:>10} | {:>10} {:>10} {:>10} | {:>7} {:>7}",
        "bundle",
        "gz MB",
        "data MB",
        "polhost s",
        "polhost MiB",
        "OPA s",
        "(request)",
        "OPA MiB",
        "time x",
        "RSS x"
    );
    for row in rows {
        let polhost_s = row.polhost_time.as_secs_f64();
        let polhost_mib = mib(row.polhost_rss_kib);
        let head = format!(
            "{:<30} {:>9.1} {:>9.1} | {:>10.2} {:>11.1} |",
            row.case.what,
            row.bundle_bytes as f64 / 1e6,
            row.data_bytes as f64 / 1e6,
            polhost_s,
            polhost_mib
        );
        match &row.opa {
            OpaOutcome::Activated {
                from_spawn,
                from_request,
                peak_rss_kib,
            } => println!(
                "{head} {:>10.2} {:>10.2} {:>10.1} | {:>7.2} {:>7.1}",
                from_spawn.as_secs_f64(),
                from_request.as_secs_f64(),
                mib(*peak_rss_kib),
                from_spawn.as_secs_f64() / polhost_s,
                mib(*peak_rss_kib) / polhost_mib
            ),
            OpaOutcome::OverMemory { after, rss_kib } => println!(
                "{head} OPA killed at {:.1} MiB RSS after {:.0} s, not yet active | RSS x > {:.0}",
                mib(*rss_kib),
                after.as_secs_f64(),
                mib(*rss_kib) / polhost_mib
            ),
            OpaOutcome::Failed { after, status } => println!(
                "{head} OPA did not activate it ({:.0} s); its status: {status}",
                after.as_secs_f64()
            ),
        }
    }
    println!();
    println!(
        "polhost s: spawn to exit of `polhost run --once` (download, validate, persist, activate);"
    );
    println!("OPA s: spawn to its last_successful_activation; (request): its last_request to it.");
    println!(
        "time x, RSS x: OPA / polhost (> 1: polhost faster, smaller). polhost's target: <= 64 MiB."
    );
}
