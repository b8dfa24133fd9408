//! Throughput and memory of one big download, against the tools a person
//! would reach for instead.
//!
//! Generates a ~256 MiB (incompressible) OPA bundle, serves it from nginx
//! on 127.0.0.1 (or `polhost serve` when nginx is missing), then runs,
//! alternately, N times each:
//!
//! * `polhost run --once cfg.yaml`: fetch (http fetcher) + validate +
//!   persist, in a child process whose peak RSS is sampled (`harness::reap`);
//! * `curl -s -o FILE URL && sha256sum FILE`, timed together;
//! * `curl -s -o FILE URL` alone, for information.
//!
//! It prints medians, throughput, the ratio curl+sha256sum / polhost
//! (>= 1: polhost is faster) and polhost's peak RSS, against the targets
//! ratio >= 0.9 and RSS <= 64 MiB. It asserts nothing about timing; it
//! fails only if a download fails or produces the wrong bytes.
//!
//! Environment: `BENCH_RUNS` (default 3), `BENCH_MIB` (bundle size,
//! default 256), `BENCH_SERVER=polhost` (use `polhost serve` even if nginx
//! is installed), `BENCH_KEEP=1` (keep the temp dir), `POLHOST_LOG`
//! (passed to polhost; its stderr goes to a log file in the temp dir).
//!
//! Run: `cargo bench --bench fetch` (or `just bench`).

#[path = "../../../tests/all/harness/mod.rs"]
mod harness;

use std::fmt::Write as _;
use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use flate2::Compression;
use flate2::write::GzEncoder;
use rand::{RngCore, SeedableRng};
use sha2::{Digest, Sha256};

use harness::nginx::{Nginx, NginxOptions};

const MIB: f64 = 1024.0 * 1024.0;
/// The largest random file in the bundle.
const DATA_FILE_MAX: u64 = 64 << 20;
const TARGET_RATIO: f64 = 0.9;
const TARGET_RSS_MIB: f64 = 64.0;
/// Where the bundle lives under the served directory, and the resource
/// polhost asks for.
const RESOURCE: &str = "bundles/bench.tar.gz";
const BUNDLE_NAME: &str = "bench";

type Result<T> = std::result::Result<T, String>;

fn main() {
    // `cargo bench` passes `--bench`; there are no filters to honour.
    if let Err(e) = run() {
        eprintln!("bench fetch: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    let runs = env_u64("BENCH_RUNS", 3)?.max(1) as usize;
    let mib = env_u64("BENCH_MIB", 256)?.max(1);
    let polhost = PathBuf::from(env!("CARGO_BIN_EXE_polhost"));

    let tmp = tempfile::Builder::new()
        .prefix("polhost-bench-")
        .tempdir()
        .map_err(|e| format!("creating a temp dir: {e}"))?;
    let keep = std::env::var_os("BENCH_KEEP").is_some_and(|v| v != "0" && !v.is_empty());
    let root = tmp.path().to_path_buf();
    let result = bench(&root, &polhost, runs, mib);
    if keep {
        let path = tmp.keep();
        eprintln!("bench fetch: kept {}", path.display());
    }
    result
}

fn bench(root: &Path, polhost: &Path, runs: usize, mib: u64) -> Result<()> {
    let served = root.join("srv");
    let bundle = served.join(RESOURCE);
    fs::create_dir_all(bundle.parent().expect("RESOURCE has a directory"))
        .map_err(|e| format!("creating {}: {e}", served.display()))?;

    let started = Instant::now();
    let generated = generate(&bundle, mib << 20)
        .map_err(|e| format!("generating {}: {e}", bundle.display()))?;
    println!(
        "generated {} ({} bytes, {:.1} MiB, sha256 {}) in {:.1} s",
        bundle.display(),
        generated.size,
        generated.size as f64 / MIB,
        generated.sha256,
        started.elapsed().as_secs_f64()
    );

    let server = Server::start(&served, polhost)?;
    let url = format!("{}/{RESOURCE}", server.url());
    println!("serving it with {} at {url}", server.name());

    // Warm up the server (polhost serve hashes the file for its ETag on the
    // first request) and the page cache; not measured.
    let warm = measure(curl(&url, Path::new("/dev/null")))?;
    warm.check("warm-up curl")?;

    let mut polhost_runs = Vec::new();
    let mut curl_sha_runs = Vec::new();
    let mut curl_runs = Vec::new();
    let mut sync_secs = Vec::new();
    for i in 1..=runs {
        let p = run_polhost(root, polhost, &server.url(), i, &generated)?;
        let (c, sha) = run_curl_sha(root, &url, i, &generated)?;
        let alone = run_curl(root, &url, i, &generated)?;
        println!(
            "run {i}/{runs}: polhost {:.3} s (cpu {:.2} s, peak RSS {:.1} MiB) | curl+sha256sum {:.3} s (cpu {:.2} s) | curl {:.3} s | sync FILE {:.3} s",
            p.secs,
            p.cpu_secs,
            p.max_rss_mib(),
            c.secs,
            c.cpu_secs,
            alone.secs,
            sha.sync_secs,
        );
        polhost_runs.push(p);
        curl_sha_runs.push(c);
        curl_runs.push(alone);
        sync_secs.push(sha.sync_secs);
    }
    let server_name = server.name();
    drop(server);

    let size_mib = generated.size as f64 / MIB;
    let polhost_s = median(polhost_runs.iter().map(|m| m.secs));
    let curl_sha_s = median(curl_sha_runs.iter().map(|m| m.secs));
    let curl_s = median(curl_runs.iter().map(|m| m.secs));
    let curl_sha_sync_s = median(
        curl_sha_runs
            .iter()
            .zip(&sync_secs)
            .map(|(m, sync)| m.secs + sync),
    );
    let peak_rss = polhost_runs
        .iter()
        .map(Measured::max_rss_mib)
        .fold(0.0, f64::max);
    let ratio = curl_sha_s / polhost_s;
    let verdict = |ok: bool| if ok { "met" } else { "MISSED" };
    let ratio_ok = ratio >= TARGET_RATIO;
    let rss_ok = peak_rss <= TARGET_RSS_MIB;

    let mut table = String::new();
    let _ = writeln!(
        table,
        "\nfetch of a {size_mib:.1} MiB bundle served by {server_name}, {runs} run(s) each, medians (peak RSS: max):"
    );
    let _ = writeln!(
        table,
        "{:<42} {:>9} {:>9} {:>8} {:>13}",
        "tool", "seconds", "MiB/s", "cpu s", "peak RSS MiB"
    );
    let row = |table: &mut String, name: &str, secs: f64, runs: Option<&[Measured]>| {
        let (cpu, rss) = match runs {
            Some(runs) => (
                format!("{:.2}", median(runs.iter().map(|m| m.cpu_secs))),
                format!(
                    "{:.1}",
                    runs.iter().map(Measured::max_rss_mib).fold(0.0, f64::max)
                ),
            ),
            None => ("-".into(), "-".into()),
        };
        let _ = writeln!(
            table,
            "{name:<42} {secs:>9.3} {:>9.1} {cpu:>8} {rss:>13}",
            size_mib / secs
        );
    };
    row(
        &mut table,
        "polhost run --once (fetch+validate+persist)",
        polhost_s,
        Some(&polhost_runs),
    );
    row(
        &mut table,
        "curl -o + sha256sum",
        curl_sha_s,
        Some(&curl_sha_runs),
    );
    row(&mut table, "curl -o (info)", curl_s, Some(&curl_runs));
    row(
        &mut table,
        "curl -o + sha256sum + sync FILE (info)",
        curl_sha_sync_s,
        None,
    );
    let _ = writeln!(
        table,
        "ratio (curl+sha256sum s / polhost s): {ratio:.3}   target >= {TARGET_RATIO}: {}",
        verdict(ratio_ok)
    );
    let _ = writeln!(
        table,
        "polhost peak RSS: {peak_rss:.1} MiB   target <= {TARGET_RSS_MIB} MiB: {}",
        verdict(rss_ok)
    );
    let _ = writeln!(
        table,
        "RESULT ratio={ratio:.3} polhost_mib_s={:.1} curl_sha_mib_s={:.1} polhost_peak_rss_mib={peak_rss:.1} bundle_mib={size_mib:.1} runs={runs} ratio_target={} rss_target={}",
        size_mib / polhost_s,
        size_mib / curl_sha_s,
        verdict(ratio_ok),
        verdict(rss_ok),
    );
    print!("{table}");
    Ok(())
}

// ---------------------------------------------------------------------------
// The bundle

struct Generated {
    size: u64,
    sha256: String,
}

/// Writes a valid bundle of `.manifest`, a small `data.json` and random
/// `data-N.bin` files (at most [`DATA_FILE_MAX`] each) until the
/// *compressed* size reaches `target_bytes`, streaming: memory stays flat
/// whatever the size. (Fast deflate codes random bytes with fixed Huffman
/// codes, which expands them by ~6%: the inflate work is real.)
fn generate(path: &Path, target_bytes: u64) -> io::Result<Generated> {
    let file = File::create(path)?;
    let out = HashingWriter {
        inner: BufWriter::with_capacity(1 << 20, file),
        hasher: Sha256::new(),
        count: 0,
    };
    let mut tar = tar::Builder::new(GzEncoder::new(out, Compression::fast()));
    let append = |tar: &mut tar::Builder<_>, name: &str, size: u64, data: &mut dyn Read| {
        let mut header = tar::Header::new_gnu();
        header.set_size(size);
        header.set_mode(0o644);
        header.set_mtime(1_700_000_000);
        tar.append_data(&mut header, name, data)
    };
    let manifest = format!(r#"{{"revision": "bench-{target_bytes}", "roots": ["bench"]}}"#);
    append(
        &mut tar,
        ".manifest",
        manifest.len() as u64,
        &mut manifest.as_bytes(),
    )?;
    let data = br#"{"note": "polhost fetch benchmark"}"#;
    append(
        &mut tar,
        "bench/data.json",
        data.len() as u64,
        &mut &data[..],
    )?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x0070_6f6c_686f_7374);
    let mut raw = 0u64;
    for i in 0.. {
        let compressed = tar.get_ref().get_ref().count;
        // Compressed bytes per raw byte so far (the encoder holds back a
        // few KiB, which the next file makes up for).
        let expansion = if raw == 0 {
            1.0
        } else {
            compressed as f64 / raw as f64
        };
        let want = (target_bytes.saturating_sub(compressed) as f64 / expansion) as u64;
        if want < 64 << 10 {
            break;
        }
        let size = want.min(DATA_FILE_MAX);
        let mut random = RandomReader {
            rng: &mut rng,
            remaining: size,
        };
        append(&mut tar, &format!("bench/data-{i}.bin"), size, &mut random)?;
        raw += size;
    }
    let out = tar.into_inner()?.finish()?;
    let file = out.inner.into_inner().map_err(|e| e.into_error())?;
    // On disk before the measurements start, so writeback does not run
    // during them.
    file.sync_all()?;
    Ok(Generated {
        size: out.count,
        sha256: hex::encode(out.hasher.finalize()),
    })
}

struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    count: u64,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

struct RandomReader<'a> {
    rng: &'a mut rand::rngs::StdRng,
    remaining: u64,
}

impl Read for RandomReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = buf
            .len()
            .min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
        self.rng.fill_bytes(&mut buf[..n]);
        self.remaining -= n as u64;
        Ok(n)
    }
}

// ---------------------------------------------------------------------------
// The server

enum Server {
    Nginx(Box<Nginx>),
    Polhost { child: Child, port: u16 },
}

impl Server {
    fn start(dir: &Path, polhost: &Path) -> Result<Server> {
        let forced = std::env::var("BENCH_SERVER").is_ok_and(|v| v == "polhost");
        if !forced && nginx_installed() {
            return Ok(Server::Nginx(Box::new(Nginx::start(NginxOptions {
                root: dir.to_path_buf(),
                ..NginxOptions::default()
            }))));
        }
        if !forced {
            println!(
                "note: nginx is not installed (tests/harness/install.sh installs it); serving with `polhost serve` instead"
            );
        }
        let mut last = String::new();
        for _ in 0..5 {
            let port = harness::free_port();
            let mut cmd = Command::new(polhost);
            cmd.arg("serve")
                .arg(dir)
                .arg("--addr")
                .arg(format!("127.0.0.1:{port}"))
                .env("POLHOST_LOG", "warn")
                .stdin(Stdio::null())
                .stdout(Stdio::null());
            let mut child = harness::spawn_tied(cmd)
                .map_err(|e| format!("starting {} serve: {e}", polhost.display()))?;
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                if let Ok(Some(status)) = child.try_wait() {
                    last = format!("polhost serve exited with {status}");
                    break;
                }
                if harness::port_open(port) {
                    return Ok(Server::Polhost { child, port });
                }
                if Instant::now() >= deadline {
                    harness::terminate(&mut child, libc::SIGTERM, Duration::from_secs(5));
                    return Err(format!("polhost serve not reachable on 127.0.0.1:{port}"));
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Err(format!("polhost serve did not start: {last}"))
    }

    fn url(&self) -> String {
        match self {
            Server::Nginx(nginx) => nginx.url(),
            Server::Polhost { port, .. } => format!("http://127.0.0.1:{port}"),
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Server::Nginx(_) => "nginx",
            Server::Polhost { .. } => "polhost serve",
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        match self {
            Server::Nginx(nginx) => nginx.stop(),
            Server::Polhost { child, .. } => {
                harness::terminate(child, libc::SIGTERM, Duration::from_secs(5));
            }
        }
    }
}

fn nginx_installed() -> bool {
    if Path::new("/usr/sbin/nginx").is_file() {
        return true;
    }
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|d| d.join("nginx").is_file()))
}

// ---------------------------------------------------------------------------
// The contenders

fn run_polhost(
    root: &Path,
    polhost: &Path,
    service_url: &str,
    i: usize,
    expected: &Generated,
) -> Result<Measured> {
    let persistence = root.join(format!("persist-{i}"));
    let config = root.join("cfg.yaml");
    let log = root.join(format!("polhost-run-{i}.log"));
    let yaml = format!(
        "services:\n  bench:\n    url: {url}\nbundles:\n  {BUNDLE_NAME}:\n    service: bench\n    resource: {RESOURCE}\n    persist: true\n    size_limit_bytes: 1073741824\npersistence_directory: {dir}\n",
        url = json(service_url),
        dir = json(&persistence.to_string_lossy()),
    );
    fs::write(&config, yaml).map_err(|e| format!("writing {}: {e}", config.display()))?;
    let stderr = File::create(&log).map_err(|e| format!("creating {}: {e}", log.display()))?;
    let mut cmd = Command::new(polhost);
    cmd.arg("run")
        .arg("--once")
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr);
    let measured = measure(cmd)?;
    if !measured.success() {
        let text = fs::read_to_string(&log).unwrap_or_default();
        return Err(format!(
            "polhost run --once {}; its log:\n{text}",
            measured.describe()
        ));
    }
    let persisted = persistence
        .join("bundles")
        .join(BUNDLE_NAME)
        .join("bundle.tar.gz");
    let sha = sha256_file(&persisted)?;
    if sha != expected.sha256 {
        return Err(format!(
            "{} has sha256 {sha}, the served bundle {}",
            persisted.display(),
            expected.sha256
        ));
    }
    let _ = fs::remove_dir_all(&persistence);
    Ok(measured)
}

/// What the curl + sha256sum run saw besides its timing.
struct CurlSha {
    /// `sync FILE` right after sha256sum, for information: polhost fsyncs
    /// what it persists, curl does not.
    sync_secs: f64,
}

fn run_curl_sha(
    root: &Path,
    url: &str,
    i: usize,
    expected: &Generated,
) -> Result<(Measured, CurlSha)> {
    let file = root.join(format!("curl-sha-{i}.tar.gz"));
    let c = measure(curl(url, &file))?;
    c.check("curl")?;
    let mut sha = Command::new("sha256sum");
    sha.arg(&file).stdin(Stdio::null());
    let (s, out) = measure_output(sha)?;
    s.check("sha256sum")?;
    let total = Measured {
        secs: c.secs + s.secs,
        cpu_secs: c.cpu_secs + s.cpu_secs,
        max_rss_kib: c.max_rss_kib.max(s.max_rss_kib),
        status: 0,
    };
    let digest = out.split_whitespace().next().unwrap_or("").to_string();
    if digest != expected.sha256 {
        return Err(format!(
            "sha256sum says {digest:?}, the served bundle is {}",
            expected.sha256
        ));
    }
    let mut sync = Command::new("sync");
    sync.arg(&file).stdin(Stdio::null());
    let synced = measure(sync)?;
    synced.check("sync")?;
    let _ = fs::remove_file(&file);
    Ok((
        total,
        CurlSha {
            sync_secs: synced.secs,
        },
    ))
}

fn run_curl(root: &Path, url: &str, i: usize, expected: &Generated) -> Result<Measured> {
    let file = root.join(format!("curl-{i}.tar.gz"));
    let c = measure(curl(url, &file))?;
    c.check("curl")?;
    let size = fs::metadata(&file).map(|m| m.len()).unwrap_or(0);
    let _ = fs::remove_file(&file);
    if size != expected.size {
        return Err(format!(
            "curl wrote {size} bytes, the bundle has {}",
            expected.size
        ));
    }
    Ok(c)
}

fn curl(url: &str, out: &Path) -> Command {
    let mut cmd = Command::new("curl");
    cmd.arg("-s")
        .arg("-o")
        .arg(out)
        .arg(url)
        .stdin(Stdio::null());
    cmd
}

// ---------------------------------------------------------------------------
// Measuring a child

struct Measured {
    /// Wall time from spawn to reaped.
    secs: f64,
    /// User + system CPU time.
    cpu_secs: f64,
    /// Peak RSS (KiB; see `harness::Reaped`).
    max_rss_kib: u64,
    /// The raw wait status.
    status: libc::c_int,
}

impl Measured {
    fn max_rss_mib(&self) -> f64 {
        self.max_rss_kib as f64 / 1024.0
    }

    fn success(&self) -> bool {
        libc::WIFEXITED(self.status) && libc::WEXITSTATUS(self.status) == 0
    }

    fn describe(&self) -> String {
        if libc::WIFEXITED(self.status) {
            format!("exited with code {}", libc::WEXITSTATUS(self.status))
        } else if libc::WIFSIGNALED(self.status) {
            format!("was killed by signal {}", libc::WTERMSIG(self.status))
        } else {
            format!("ended with wait status {:#x}", self.status)
        }
    }

    fn check(&self, what: &str) -> Result<()> {
        if self.success() {
            Ok(())
        } else {
            Err(format!("{what} {}", self.describe()))
        }
    }
}

/// Runs `cmd` to its end; wall time, CPU time and peak RSS of that child.
fn measure(mut cmd: Command) -> Result<Measured> {
    let started = Instant::now();
    let child = cmd
        .spawn()
        .map_err(|e| format!("starting {:?}: {e}", cmd.get_program()))?;
    reap(child, started)
}

/// [`measure`], also returning what the child wrote to stdout (small).
fn measure_output(mut cmd: Command) -> Result<(Measured, String)> {
    cmd.stdout(Stdio::piped());
    let started = Instant::now();
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("starting {:?}: {e}", cmd.get_program()))?;
    let mut out = String::new();
    if let Some(mut stdout) = child.stdout.take() {
        stdout
            .read_to_string(&mut out)
            .map_err(|e| format!("reading {:?}'s output: {e}", cmd.get_program()))?;
    }
    Ok((reap(child, started)?, out))
}

/// Waits for `child` (see [`harness::reap`]) and measures it.
fn reap(child: Child, started: Instant) -> Result<Measured> {
    let harness::Reaped {
        status,
        usage,
        peak_rss_kib,
    } = harness::reap(child, std::time::Duration::from_secs(3600)).map_err(|e| e.to_string())?;
    let secs = started.elapsed().as_secs_f64();
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    Ok(Measured {
        secs,
        cpu_secs: tv(usage.ru_utime) + tv(usage.ru_stime),
        max_rss_kib: peak_rss_kib,
        status,
    })
}

// ---------------------------------------------------------------------------
// Helpers

fn sha256_file(path: &Path) -> Result<String> {
    let mut file = File::open(path).map_err(|e| format!("opening {}: {e}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file
            .read(&mut buf)
            .map_err(|e| format!("reading {}: {e}", path.display()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

fn median(values: impl Iterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = values.collect();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// A YAML (and JSON) double-quoted string.
fn json(s: &str) -> String {
    serde_json::to_string(s).expect("a string serialises")
}

fn env_u64(name: &str, default: u64) -> Result<u64> {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => v
            .trim()
            .parse()
            .map_err(|_| format!("{name}={v:?} is not a whole number")),
        _ => Ok(default),
    }
}
