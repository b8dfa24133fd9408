//! What keeping many bundles fresh costs: `BENCH_BUNDLES` (default 1,000)
//! bundles of one service, each polled every second, every poll a 304 from
//! nginx on 127.0.0.1, for polhost and then for the real OPA on the same
//! configuration against the same nginx, in the same run.
//!
//! For each agent, once every bundle is active and a warm-up has passed,
//! the bench reads the agent's CPU (utime+stime, /proc/<pid>/stat) and RSS
//! over `BENCH_WINDOW_S` (default 20) seconds, and counts the polls nginx
//! logged in that window. It prints cores, RSS, polls per second and the
//! ratios OPA / polhost, next to polhost's targets (0.1 core, 64 MiB). It
//! asserts nothing about them; it fails only if an agent does not
//! activate every bundle.
//!
//! Environment: `BENCH_BUNDLES`, `BENCH_WINDOW_S`, `BENCH_WARMUP_S`
//! (default 5), `POLHOST_OPA` (the OPA binary; default as
//! tests/harness/install.sh installs it), `BENCH_KEEP=1` (keep the temp
//! dir and its logs).
//!
//! Run: `cargo bench -p polhost-cli --bench polling_cost` (or `just bench`).

#[path = "../../../tests/all/harness/mod.rs"]
mod harness;

use std::fs::{self, File};
use std::path::Path;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use harness::nginx::{Nginx, NginxOptions};
use harness::opa::{Opa, OpaConfig, cpu_ticks, rss_kib, ticks_per_second};
use harness::{spawn_tied, tar_gz, terminate};

type Result<T> = std::result::Result<T, String>;

/// How long an agent may take to activate every bundle.
const ACTIVATION_TIMEOUT: Duration = Duration::from_secs(300);

fn main() {
    if let Err(e) = run() {
        eprintln!("bench polling_cost: {e}");
        std::process::exit(1);
    }
}

/// What one agent cost over the window.
struct Cost {
    cores: f64,
    rss_mib: f64,
    polls_per_second: f64,
}

fn run() -> Result<()> {
    let bundles = harness::env_number::<usize>("BENCH_BUNDLES", 1000)?;
    let window = Duration::from_secs(harness::env_number::<u64>("BENCH_WINDOW_S", 20)?);
    let warmup = Duration::from_secs(harness::env_number::<u64>("BENCH_WARMUP_S", 5)?);
    let dir = tempfile::Builder::new()
        .prefix("polhost-bench-polling-")
        .tempdir()
        .map_err(|e| format!("temp dir: {e}"))?;
    let served = dir.path().join("srv");
    fs::create_dir_all(&served).map_err(|e| e.to_string())?;
    // Disjoint roots, so that every bundle can be active at once.
    for i in 0..bundles {
        let bytes = tar_gz(&[
            (
                ".manifest",
                format!(r#"{{"revision":"v1","roots":["r{i}"]}}"#).into_bytes(),
            ),
            (
                &format!("r{i}/policy.rego"),
                format!("package r{i}\n\nallow := true\n").into_bytes(),
            ),
        ]);
        fs::write(served.join(format!("b{i}.tar.gz")), bytes).map_err(|e| e.to_string())?;
    }
    let nginx = Nginx::start(NginxOptions {
        root: served,
        ..NginxOptions::default()
    });
    eprintln!("{bundles} bundles on {}", nginx.url());

    let polhost = polhost_cost(dir.path(), &nginx, bundles, warmup, window)?;
    let opa = opa_cost(&nginx, bundles, warmup, window)?;

    println!();
    println!(
        "{bundles} bundles of one service polled every second, 304s from nginx on 127.0.0.1 ({} s window)",
        window.as_secs()
    );
    println!(
        "{:<10} {:>8} {:>10} {:>9}",
        "agent", "cores", "RSS MiB", "polls/s"
    );
    for (name, cost) in [("polhost", &polhost), ("OPA", &opa)] {
        println!(
            "{name:<10} {:>8.3} {:>10.1} {:>9.0}",
            cost.cores, cost.rss_mib, cost.polls_per_second
        );
    }
    println!(
        "OPA / polhost: CPU {:.2}x, RSS {:.2}x (> 1: polhost cheaper). polhost's targets: <= 0.1 core, <= 64 MiB.",
        opa.cores / polhost.cores,
        opa.rss_mib / polhost.rss_mib
    );
    if std::env::var_os("BENCH_KEEP").is_some() {
        eprintln!("kept {}", dir.keep().display());
    }
    Ok(())
}

/// CPU and RSS of `pid` over `window`, and the polls nginx logged in it.
fn measure(pid: u32, nginx: &Nginx, window: Duration) -> Result<Cost> {
    let polls_before = nginx.access_log().len();
    let ticks_before = cpu_ticks(pid).ok_or("the agent's /proc/<pid>/stat")?;
    let started = Instant::now();
    let mut rss_max = 0;
    while started.elapsed() < window {
        rss_max = rss_max.max(rss_kib(pid).unwrap_or(0));
        thread::sleep(Duration::from_millis(250));
    }
    let ticks = cpu_ticks(pid).ok_or("the agent's /proc/<pid>/stat")? - ticks_before;
    let elapsed = started.elapsed().as_secs_f64();
    let polls = nginx.access_log().len() - polls_before;
    Ok(Cost {
        cores: ticks as f64 / ticks_per_second() as f64 / elapsed,
        rss_mib: rss_max as f64 / 1024.0,
        polls_per_second: polls as f64 / elapsed,
    })
}

fn polhost_cost(
    root: &Path,
    nginx: &Nginx,
    bundles: usize,
    warmup: Duration,
    window: Duration,
) -> Result<Cost> {
    let mut config = format!("services:\n  s:\n    url: {}\nbundles:\n", nginx.url());
    for i in 0..bundles {
        config.push_str(&format!(
            "  b{i}:\n    service: s\n    resource: b{i}.tar.gz\n    polling: {{min_delay_seconds: 1, max_delay_seconds: 1}}\n"
        ));
    }
    config.push_str(&format!(
        "persistence_directory: {}\n",
        root.join("state").display()
    ));
    let config_path = root.join("polhost.yaml");
    fs::write(&config_path, config).map_err(|e| e.to_string())?;
    let log = root.join("polhost.log");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_polhost"));
    cmd.arg("run")
        .arg(&config_path)
        .env("POLHOST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(File::create(&log).map_err(|e| e.to_string())?);
    let mut child = spawn_tied(cmd).map_err(|e| format!("spawn polhost: {e}"))?;
    eprintln!("polhost: waiting for {bundles} activations");
    let deadline = Instant::now() + ACTIVATION_TIMEOUT;
    let result = loop {
        let text = fs::read_to_string(&log).unwrap_or_default();
        let active = text.matches("bundle activated").count();
        if active >= bundles {
            thread::sleep(warmup);
            eprintln!("polhost: measuring");
            break measure(child.id(), nginx, window);
        }
        if Instant::now() > deadline || matches!(child.try_wait(), Ok(Some(_))) {
            break Err(format!(
                "polhost activated {active} of {bundles} bundles; its log: {}",
                log.display()
            ));
        }
        thread::sleep(Duration::from_millis(200));
    };
    terminate(&mut child, libc::SIGTERM, Duration::from_secs(10));
    result
}

fn opa_cost(nginx: &Nginx, bundles: usize, warmup: Duration, window: Duration) -> Result<Cost> {
    let mut config = OpaConfig::new(&nginx.url()).polling(1, 1, None);
    for i in 0..bundles {
        config = config.bundle(&format!("b{i}"), &format!("b{i}.tar.gz"));
    }
    // The harness's OPA logs at debug; 1,000 polls a second of that would
    // be OPA's cost, not its bundle loader's.
    let mut opa = Opa::start_with_args(&config.yaml(), &["--log-level", "error"]);
    eprintln!("OPA: waiting for {bundles} activations");
    let deadline = Instant::now() + ACTIVATION_TIMEOUT;
    loop {
        let status = opa.status();
        let active = status["result"]["bundles"]
            .as_object()
            .map(|b| b.values().filter(|s| s["active_revision"] == "v1").count())
            .unwrap_or(0);
        if active >= bundles {
            break;
        }
        if Instant::now() > deadline {
            return Err(format!("OPA activated {active} of {bundles} bundles"));
        }
        thread::sleep(Duration::from_millis(500));
    }
    thread::sleep(warmup);
    eprintln!("OPA: measuring");
    let cost = measure(opa.pid(), nginx, window);
    opa.stop();
    cost
}
