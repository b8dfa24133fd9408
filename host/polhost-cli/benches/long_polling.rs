//! Fan-out of one new bundle revision to many long-polling clients of one
//! `polhost run --addr`, against plain polling at OPA's shortest delay.
//!
//! Setup: a remote `polhost serve DIR` (which polhost long-polls, so the
//! remote's change reaches polhost at once), `polhost run CONFIG --addr
//! 127.0.0.1:PORT` on it, then two phases on that one polhost, each with
//! `BENCH_CLIENTS` (default 100) raw HTTP/1.1 clients (one thread and one
//! connection each, as in this file) and `BENCH_OPAS` (default 10) real
//! OPA processes:
//!
//! * **long polling**: the clients hold `GET /bundles/bench` with
//!   `If-None-Match` and `Prefer: modes=snapshot;wait=60`; the OPAs have
//!   polling delays of 60-120 s and `long_polling_timeout_seconds: 60`.
//! * **baseline, plain polling at 1 s**: the clients send the same
//!   conditional GET without `Prefer` every second; the OPAs poll with
//!   `min_delay_seconds: 1, max_delay_seconds: 1` and no long polling
//!   (OPA's delays are whole seconds: 1 s is the shortest fixed delay).
//!
//! In each phase, once every client waits, polhost's CPU (utime+stime from
//! /proc/<pid>/stat) and RSS are read over `BENCH_WINDOW_S` (default 10)
//! seconds of waiting; then the remote's bundle changes and the bench
//! measures, from polhost's activation (its `/v1/status`
//! `last_successful_activation`), when each client had the new bundle
//! (the raw clients: when their read of the body ended; the OPAs: their
//! own `last_successful_activation`), p50 and max, and polhost's CPU
//! until the last one had it. It prints both phases and the ratios
//! baseline / long polling. It asserts nothing about timing; it fails only
//! if a client does not get the new bundle.
//!
//! Environment: `BENCH_CLIENTS`, `BENCH_OPAS`, `BENCH_WINDOW_S`,
//! `POLHOST_OPA` (the OPA binary; default as tests/harness/install.sh
//! installs it), `BENCH_KEEP=1` (keep the temp dir and its logs).
//!
//! Run: `cargo bench -p polhost-cli --bench long_polling` (or `just bench`).

#[path = "../../../tests/all/harness/mod.rs"]
mod harness;

use std::fs::{self, File};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use harness::opa::{
    Opa, OpaConfig, cpu_ticks, http_get, parse_response, peak_rss_kib, rfc3339_unix_nanos, rss_kib,
    ticks_per_second,
};
use harness::{free_port, port_open, spawn_tied, tar_gz, terminate};

type Result<T> = std::result::Result<T, String>;

const BUNDLE: &str = "bench";
const RESOURCE: &str = "bundles/bench";
/// How long a phase may take to deliver before the bench gives up.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(60);

fn main() {
    if let Err(e) = run() {
        eprintln!("bench long_polling: {e}");
        std::process::exit(1);
    }
}

struct Params {
    clients: usize,
    opas: usize,
    window: Duration,
}

fn run() -> Result<()> {
    let params = Params {
        clients: harness::env_number::<usize>("BENCH_CLIENTS", 100)?,
        opas: harness::env_number::<usize>("BENCH_OPAS", 10)?,
        window: Duration::from_secs(harness::env_number::<u64>("BENCH_WINDOW_S", 10)?),
    };
    let tmp = tempfile::Builder::new()
        .prefix("polhost-bench-lp-")
        .tempdir()
        .map_err(|e| format!("temp dir: {e}"))?;
    let keep = std::env::var_os("BENCH_KEEP").is_some_and(|v| v != "0" && !v.is_empty());
    let result = bench(tmp.path(), &params);
    if keep {
        eprintln!("bench long_polling: kept {}", tmp.keep().display());
    }
    result
}

/// A child process started by the harness, its stderr in a file; killed
/// on drop.
struct Proc {
    child: Child,
    log: PathBuf,
}

impl Proc {
    fn spawn(args: &[&str], log: PathBuf) -> Result<Proc> {
        let polhost = env!("CARGO_BIN_EXE_polhost");
        let out = File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
        let mut cmd = Command::new(polhost);
        cmd.args(args)
            .env("POLHOST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(out));
        let child = spawn_tied(cmd).map_err(|e| format!("spawn polhost: {e}"))?;
        Ok(Proc { child, log })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn wait_listening(&mut self, port: u16) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !port_open(port) {
            if Instant::now() > deadline || matches!(self.child.try_wait(), Ok(Some(_))) {
                return Err(format!(
                    "polhost did not listen on {port}:\n{}",
                    fs::read_to_string(&self.log).unwrap_or_default()
                ));
            }
            thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        terminate(&mut self.child, libc::SIGTERM, Duration::from_secs(5));
    }
}

fn bundle(revision: &str) -> Vec<u8> {
    tar_gz(&[
        (
            ".manifest",
            format!(r#"{{"revision":"{revision}","roots":["bench"]}}"#).into_bytes(),
        ),
        (
            "bench/policy.rego",
            b"package bench\n\ndefault allow := false\n\nallow if input.user == data.bench.admin\n"
                .to_vec(),
        ),
        (
            "bench/data.json",
            format!(r#"{{"revision":"{revision}","admin":"alice"}}"#).into_bytes(),
        ),
    ])
}

/// Writes the remote's bundle by rename, as a deploy would.
fn publish(root: &Path, revision: &str) -> Result<()> {
    let path = root.join("bundles/bench.tar.gz");
    let tmp = root.join("bundles/.bench.tmp");
    fs::write(&tmp, bundle(revision)).map_err(|e| format!("write bundle: {e}"))?;
    fs::rename(&tmp, &path).map_err(|e| format!("rename bundle: {e}"))
}

fn now_nanos() -> i128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i128
}

/// polhost's `/v1/status` for the bench bundle.
fn polhost_status(port: u16) -> Result<serde_json::Value> {
    let r = http_get(port, "/v1/status", &[], Duration::from_secs(10))
        .map_err(|e| format!("polhost /v1/status: {e}"))?;
    if r.status != 200 {
        return Err(format!("polhost /v1/status: {} {}", r.status, r.text()));
    }
    Ok(r.json()["result"]["bundles"][BUNDLE].clone())
}

/// Waits until polhost's status shows `revision` active; returns its
/// `last_successful_activation` (UNIX ns).
fn polhost_activation(port: u16, revision: &str) -> Result<i128> {
    let deadline = Instant::now() + DELIVERY_TIMEOUT;
    loop {
        let s = polhost_status(port)?;
        if s["active_revision"] == revision {
            return s["last_successful_activation"]
                .as_str()
                .and_then(rfc3339_unix_nanos)
                .ok_or_else(|| format!("no last_successful_activation in {s}"));
        }
        if Instant::now() > deadline {
            return Err(format!("polhost never activated {revision}: {s}"));
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// How a raw client asks.
#[derive(Clone, Copy, PartialEq)]
enum Mode {
    /// One request held with `Prefer: modes=snapshot;wait=60`.
    LongPoll,
    /// A conditional GET every second until the bundle changes.
    Poll,
}

/// One raw HTTP/1.1 client on its own connection: sends the conditional
/// GET, counts itself in `sent`, and returns when it has a 200 with the
/// whole body: the UNIX ns at that moment, and the bytes.
fn client(
    port: u16,
    etag: &str,
    mode: Mode,
    sent: &AtomicUsize,
    requests: &AtomicUsize,
) -> Result<(i128, Vec<u8>)> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut first = true;
    let deadline = Instant::now() + DELIVERY_TIMEOUT * 3;
    loop {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(10))
            .map_err(|e| format!("connect: {e}"))?;
        s.set_read_timeout(Some(Duration::from_secs(90))).ok();
        let prefer = match mode {
            Mode::LongPoll => "Prefer: modes=snapshot;wait=60\r\n",
            Mode::Poll => "",
        };
        write!(
            s,
            "GET /{RESOURCE} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nIf-None-Match: {etag}\r\n{prefer}Connection: close\r\n\r\n"
        )
        .map_err(|e| format!("send: {e}"))?;
        requests.fetch_add(1, Ordering::SeqCst);
        if first {
            sent.fetch_add(1, Ordering::SeqCst);
            first = false;
        }
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).map_err(|e| format!("read: {e}"))?;
        let at = now_nanos();
        let r = parse_response(&raw, false).map_err(|e| format!("response: {e}"))?;
        match r.status {
            200 => return Ok((at, r.body)),
            304 => {}
            other => return Err(format!("client got {other}: {}", r.text())),
        }
        if Instant::now() > deadline {
            return Err("client: no new bundle".into());
        }
        if mode == Mode::Poll {
            thread::sleep(Duration::from_secs(1));
        }
    }
}

/// What one phase measured.
struct Phase {
    name: &'static str,
    /// ms from polhost's activation to each raw client having the bundle.
    clients_ms: Vec<f64>,
    /// ms from polhost's activation to each OPA's activation.
    opas_ms: Vec<f64>,
    /// ms from the remote's change to polhost's activation.
    remote_to_polhost_ms: f64,
    /// polhost's CPU, % of one core, while everyone waited.
    idle_cpu_pct: f64,
    /// polhost's CPU seconds from the change until the last delivery.
    fanout_cpu_s: f64,
    rss_kib: u64,
    hwm_kib: u64,
    /// Bundle requests sent to polhost during the wait window (the raw
    /// clients' and the OPAs', from their logs).
    window_requests: usize,
    /// The window's length.
    window: Duration,
    /// polhost's CPU ticks during the window.
    idle_ticks: u64,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i]
}

fn sorted(v: &[f64]) -> Vec<f64> {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.partial_cmp(b).unwrap());
    s
}

#[allow(clippy::too_many_arguments)]
fn phase(
    name: &'static str,
    mode: Mode,
    params: &Params,
    polhost: &Proc,
    port: u16,
    remote_root: &Path,
    old: &str,
    new: &str,
) -> Result<Phase> {
    let url = format!("http://127.0.0.1:{port}");
    // The current ETag, which every client sends.
    let current = http_get(port, &format!("/{RESOURCE}"), &[], Duration::from_secs(10))
        .map_err(|e| format!("GET bundle: {e}"))?;
    let etag = current
        .header("etag")
        .ok_or("polhost sent no ETag")?
        .to_string();

    let config = match mode {
        Mode::LongPoll => OpaConfig::new(&url)
            .bundle(BUNDLE, RESOURCE)
            .polling(60, 120, Some(60)),
        Mode::Poll => OpaConfig::new(&url)
            .bundle(BUNDLE, RESOURCE)
            .polling(1, 1, None),
    }
    .yaml();
    eprintln!("{name}: starting {} OPA processes", params.opas);
    let opas: Vec<Opa> = (0..params.opas).map(|_| Opa::start(&config)).collect();
    for opa in &opas {
        opa.wait_for_revision(BUNDLE, old, DELIVERY_TIMEOUT);
        if mode == Mode::LongPoll {
            // After its first download, OPA's next request is the held one.
            let deadline = Instant::now() + DELIVERY_TIMEOUT;
            while opa.log().matches("\"msg\":\"Sending request.\"").count() < 2 {
                if Instant::now() > deadline {
                    return Err("an OPA sent no long poll".into());
                }
                thread::sleep(Duration::from_millis(20));
            }
        }
    }

    eprintln!("{name}: starting {} raw clients", params.clients);
    let sent = Arc::new(AtomicUsize::new(0));
    let requests = Arc::new(AtomicUsize::new(0));
    let start = Arc::new(Barrier::new(params.clients + 1));
    let clients: Vec<_> = (0..params.clients)
        .map(|i| {
            let sent = sent.clone();
            let requests = requests.clone();
            let start = start.clone();
            let etag = etag.clone();
            // Plain pollers spread over the 1 s period, as independent
            // clients would be; long pollers all wait anyway.
            let offset = match mode {
                Mode::Poll => Duration::from_millis(1000 * i as u64 / params.clients as u64),
                Mode::LongPoll => Duration::ZERO,
            };
            thread::Builder::new()
                .stack_size(256 * 1024)
                .spawn(move || {
                    start.wait();
                    thread::sleep(offset);
                    client(port, &etag, mode, &sent, &requests)
                })
                .map_err(|e| format!("client thread: {e}"))
        })
        .collect::<Result<_>>()?;
    start.wait();
    let deadline = Instant::now() + DELIVERY_TIMEOUT;
    while sent.load(Ordering::SeqCst) < params.clients {
        if Instant::now() > deadline {
            return Err("the clients did not all send their request".into());
        }
        thread::sleep(Duration::from_millis(10));
    }
    // Let the server take the last requests in before measuring.
    thread::sleep(Duration::from_millis(500));

    // Waiting: polhost's CPU and memory with everyone on it.
    let opa_requests = || -> usize {
        opas.iter()
            .map(|o| o.log().matches("\"msg\":\"Sending request.\"").count())
            .sum()
    };
    let requests_before = requests.load(Ordering::SeqCst) + opa_requests();
    let ticks0 = cpu_ticks(polhost.pid()).ok_or("polhost's /proc stat")?;
    let w0 = Instant::now();
    thread::sleep(params.window);
    let ticks1 = cpu_ticks(polhost.pid()).ok_or("polhost's /proc stat")?;
    let waited = w0.elapsed();
    let rss = rss_kib(polhost.pid()).unwrap_or(0);
    let requests_after = requests.load(Ordering::SeqCst) + opa_requests();
    let idle_cpu_pct =
        (ticks1 - ticks0) as f64 / ticks_per_second() as f64 / waited.as_secs_f64() * 100.0;

    // The change.
    eprintln!("{name}: publishing {new}");
    let changed = now_nanos();
    publish(remote_root, new)?;
    let activated = polhost_activation(port, new)?;
    let mut clients_ms = Vec::new();
    let want = bundle(new);
    for c in clients {
        let (at, body) = c.join().map_err(|_| "a client panicked")??;
        if body != want {
            return Err("a client got other bytes than the new bundle".into());
        }
        clients_ms.push((at - activated) as f64 / 1e6);
    }
    let mut opas_ms = Vec::new();
    for opa in &opas {
        opa.wait_for_revision(BUNDLE, new, DELIVERY_TIMEOUT);
        let at = opa.bundle_status(BUNDLE)["last_successful_activation"]
            .as_str()
            .and_then(rfc3339_unix_nanos)
            .ok_or("OPA's status has no last_successful_activation")?;
        opas_ms.push((at - activated) as f64 / 1e6);
    }
    let ticks2 = cpu_ticks(polhost.pid()).ok_or("polhost's /proc stat")?;
    let hwm = peak_rss_kib(polhost.pid()).unwrap_or(0);
    drop(opas);
    Ok(Phase {
        name,
        clients_ms,
        opas_ms,
        remote_to_polhost_ms: (activated - changed) as f64 / 1e6,
        idle_cpu_pct,
        fanout_cpu_s: (ticks2 - ticks1) as f64 / ticks_per_second() as f64,
        rss_kib: rss,
        hwm_kib: hwm,
        window_requests: requests_after - requests_before,
        window: waited,
        idle_ticks: ticks1 - ticks0,
    })
}

fn bench(dir: &Path, params: &Params) -> Result<()> {
    // The remote: `polhost serve`, long-polled by polhost.
    let remote_root = dir.join("www");
    fs::create_dir_all(remote_root.join("bundles")).map_err(|e| e.to_string())?;
    publish(&remote_root, "r1")?;
    let remote_port = free_port();
    let mut remote = Proc::spawn(
        &[
            "serve",
            remote_root.to_str().unwrap(),
            "--addr",
            &format!("127.0.0.1:{remote_port}"),
        ],
        dir.join("remote.log"),
    )?;
    remote.wait_listening(remote_port)?;

    let cfg = dir.join("config.yaml");
    fs::write(
        &cfg,
        format!(
            "services:
  remote:
    url: http://127.0.0.1:{remote_port}
bundles:
  {BUNDLE}:
    service: remote
    resource: bundles/bench.tar.gz
    polling:
      min_delay_seconds: 60
      max_delay_seconds: 120
      long_polling_timeout_seconds: 60
persistence_directory: {}
",
            dir.join("state").display()
        ),
    )
    .map_err(|e| e.to_string())?;
    let port = free_port();
    let mut polhost = Proc::spawn(
        &[
            "run",
            cfg.to_str().unwrap(),
            "--addr",
            &format!("127.0.0.1:{port}"),
        ],
        dir.join("polhost.log"),
    )?;
    polhost.wait_listening(port)?;
    polhost_activation(port, "r1")?;

    let long = phase(
        "long polling",
        Mode::LongPoll,
        params,
        &polhost,
        port,
        &remote_root,
        "r1",
        "r2",
    )?;
    let plain = phase(
        "plain polling at 1 s",
        Mode::Poll,
        params,
        &polhost,
        port,
        &remote_root,
        "r2",
        "r3",
    )?;
    report(params, &[&long, &plain]);
    Ok(())
}

fn report(params: &Params, phases: &[&Phase]) {
    println!();
    println!(
        "long polling bench: {} raw HTTP/1.1 clients + {} OPA processes on one `polhost run --addr`, {} cores",
        params.clients,
        params.opas,
        thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "{:<22} {:>12} {:>12} {:>12} {:>12} {:>10} {:>12} {:>10} {:>10} {:>10}",
        "phase",
        "clients p50",
        "clients max",
        "OPAs p50",
        "OPAs max",
        "remote->ph",
        "idle CPU",
        "fan-out",
        "RSS",
        "peak RSS"
    );
    for p in phases {
        let c = sorted(&p.clients_ms);
        let o = sorted(&p.opas_ms);
        println!(
            "{:<22} {:>9.1} ms {:>9.1} ms {:>9.1} ms {:>9.1} ms {:>7.1} ms {:>10.2} % {:>8.3} s {:>6.1} MiB {:>6.1} MiB",
            p.name,
            percentile(&c, 0.5),
            percentile(&c, 1.0),
            percentile(&o, 0.5),
            percentile(&o, 1.0),
            p.remote_to_polhost_ms,
            p.idle_cpu_pct,
            p.fanout_cpu_s,
            p.rss_kib as f64 / 1024.0,
            p.hwm_kib as f64 / 1024.0,
        );
        println!(
            "{:<22} while waiting {:.1} s: {} bundle requests to polhost, {} CPU ticks of {} ms (resolution {:.2} % of a core)",
            "",
            p.window.as_secs_f64(),
            p.window_requests,
            p.idle_ticks,
            1000 / ticks_per_second(),
            100.0 / ticks_per_second() as f64 / p.window.as_secs_f64(),
        );
    }
    if let [long, plain] = phases {
        let ratio = |a: &[f64], b: &[f64], q: f64| {
            percentile(&sorted(b), q) / percentile(&sorted(a), q).max(0.001)
        };
        // Below one tick the ratio is a lower bound.
        let cpu = if long.idle_ticks == 0 {
            format!(">= {}x", plain.idle_ticks)
        } else {
            format!("{:.1}x", plain.idle_ticks as f64 / long.idle_ticks as f64)
        };
        println!(
            "baseline / long polling: clients p50 {:.0}x, max {:.0}x; OPAs p50 {:.0}x, max {:.0}x; CPU while waiting {cpu}; requests while waiting {} vs {}",
            ratio(&long.clients_ms, &plain.clients_ms, 0.5),
            ratio(&long.clients_ms, &plain.clients_ms, 1.0),
            ratio(&long.opas_ms, &plain.opas_ms, 0.5),
            ratio(&long.opas_ms, &plain.opas_ms, 1.0),
            plain.window_requests,
            long.window_requests,
        );
    }
    println!(
        "(times from polhost's activation, its /v1/status last_successful_activation, to each client having the whole new bundle; OPAs by their own last_successful_activation; CPU = polhost's utime+stime, idle = while all waited, % of one core)"
    );
}
