//! Decision latency while the bundle changes every second, against the
//! same decisions with no swaps, in one run.
//!
//! nginx on 127.0.0.1 serves an OPA bundle (a module and a data file of
//! `BENCH_USERS` users); edge-authz runs in this process, its agent polling
//! every second (`min_delay_seconds: 1, max_delay_seconds: 1`). Phases of
//! `BENCH_PHASE_SECONDS` alternate, `BENCH_ROUNDS` times, for each route:
//!
//! * `in-process`, `pool` and `clone`: `Authorizer::decide_with` on a
//!   thread of its own, reusing pooled engines or cloning one per decision;
//! * `http`: `POST /authorize` over one keep-alive connection, the service
//!   deciding as configured (`pool`).
//!
//! A *swapping* phase publishes a new revision to nginx every second (the
//! agent downloads, validates and activates it, edge-authz loads it into a
//! fresh engine and swaps it in); a *steady* phase publishes nothing (the
//! agent still polls, and gets 304s). It prints p50 and p99 per phase kind
//! and their ratio (swapping / steady: 1.0 is no cost). It asserts nothing
//! about timing; it fails only if a decision fails.
//!
//! Bounded: at most `BENCH_MAX_DECISIONS` (default 1,000,000) decisions
//! per phase, and the phases' time. Environment: `BENCH_PHASE_SECONDS`
//! (default 4), `BENCH_ROUNDS` (2), `BENCH_USERS` (10000).
//!
//! Run: `CARGO_TARGET_DIR=$HOME/.cache/polhost/target cargo bench -p edge-authz --bench decisions`

#[path = "../../../tests/all/harness/mod.rs"]
mod harness;
#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use edge_authz::{Authorizer, Engines, LoadOutcome, Options, Service, Value};
use harness::nginx::{Nginx, NginxOptions};
use support::{Client, RESOURCE};

type Result<T> = std::result::Result<T, String>;

/// Inputs cycled through (half of them allowed).
const INPUTS: usize = 1024;

fn main() {
    // `cargo bench` passes `--bench`; there are no filters to honour.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    if let Err(e) = runtime.block_on(run()) {
        eprintln!("bench decisions: {e}");
        std::process::exit(1);
    }
}

/// How a decision is asked for.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Route {
    InProcess(Engines),
    Http,
}

impl Route {
    const ALL: [Route; 3] = [
        Route::InProcess(Engines::Pool),
        Route::InProcess(Engines::Clone),
        Route::Http,
    ];

    fn name(self) -> String {
        match self {
            Route::InProcess(engines) => format!("in-process, {engines}"),
            Route::Http => "http, pool".into(),
        }
    }
}

#[derive(Clone, Copy)]
struct Settings {
    phase: Duration,
    rounds: u64,
    users: u64,
    max_decisions: u64,
}

async fn run() -> Result<()> {
    let settings = Settings {
        phase: Duration::from_secs(env_u64("BENCH_PHASE_SECONDS", 4)?.max(1)),
        rounds: env_u64("BENCH_ROUNDS", 2)?.max(1),
        users: env_u64("BENCH_USERS", 10_000)?.max(2),
        max_decisions: env_u64("BENCH_MAX_DECISIONS", 1_000_000)?.max(1),
    };
    let www = tempfile::tempdir().map_err(|e| e.to_string())?;
    let work = tempfile::tempdir().map_err(|e| e.to_string())?;
    let published = www.path().join(RESOURCE);
    let first = bundle(1, settings.users);
    let bundle_kib = first.len() as f64 / 1024.0;
    support::publish(&published, &first, 0);
    let nginx = Nginx::start(NginxOptions {
        root: www.path().into(),
        ..Default::default()
    });
    let config = support::config(work.path(), &nginx.url());
    let mut options = Options::new(&config, SocketAddr::from((Ipv4Addr::LOCALHOST, 0)));
    options.component_cache = Some(work.path().join("components"));
    let service = Service::start(options)
        .await
        .map_err(|e| format!("starting edge-authz: {e:#}"))?;
    let publisher = Publisher {
        path: published,
        users: settings.users,
        next: Arc::new(AtomicU64::new(2)),
    };
    wait_loaded(service.authorizer(), 1).await?;
    let loads = LoadLog::start(service.authorizer());

    let inputs = inputs(settings.users);
    // Warm up (caches, allocator, CPU frequency); not recorded.
    let warm_up = Settings {
        phase: Duration::from_secs(1),
        ..settings
    };
    for engines in [Engines::Pool, Engines::Clone] {
        in_process(service.authorizer(), engines, &inputs, &warm_up).await?;
    }
    http(service.addr(), &inputs, &warm_up).await?;

    let mut samples: BTreeMap<(Route, bool), Vec<u32>> = BTreeMap::new();
    let mut swaps: BTreeMap<bool, u64> = BTreeMap::new();
    for round in 0..settings.rounds {
        for route in Route::ALL {
            // Alternate which kind goes first, so drift cancels out.
            let order = if round.is_multiple_of(2) {
                [false, true]
            } else {
                [true, false]
            };
            for swapping in order {
                let loaded_before = loads.count();
                let publishing = swapping.then(|| publisher.start());
                let phase = match route {
                    Route::InProcess(engines) => {
                        in_process(service.authorizer(), engines, &inputs, &settings).await
                    }
                    Route::Http => http(service.addr(), &inputs, &settings).await,
                };
                if let Some(publishing) = publishing {
                    let last = publishing.stop();
                    // The phase that follows starts without a swap in
                    // flight, and this one counts its own.
                    loads.wait_for(last).await?;
                }
                *swaps.entry(swapping).or_default() += loads.count() - loaded_before;
                samples.entry((route, swapping)).or_default().extend(phase?);
            }
        }
    }
    let load_times = loads.times();
    service.stop().await;
    drop(nginx);
    report(&settings, bundle_kib, &samples, &swaps, &load_times);
    Ok(())
}

/// Decisions on a thread of its own, each timed.
async fn in_process(
    authorizer: &Arc<Authorizer>,
    engines: Engines,
    inputs: &Arc<Vec<(Value, String)>>,
    settings: &Settings,
) -> Result<Vec<u32>> {
    let (authorizer, inputs) = (authorizer.clone(), inputs.clone());
    let (phase, max) = (settings.phase, settings.max_decisions);
    tokio::task::spawn_blocking(move || {
        let mut times = Vec::with_capacity(max.min(1 << 20) as usize);
        let end = Instant::now() + phase;
        let mut i = 0usize;
        while (times.len() as u64) < max {
            let input = inputs[i % INPUTS].0.clone();
            i += 1;
            let start = Instant::now();
            let decision = authorizer.decide_with(input, engines);
            let elapsed = start.elapsed();
            decision.map_err(|e| format!("in-process decision: {e}"))?;
            times.push(nanos(elapsed));
            if i.is_multiple_of(64) && Instant::now() >= end {
                break;
            }
        }
        Ok(times)
    })
    .await
    .map_err(|e| e.to_string())?
}

/// `POST /authorize` round trips over one connection, each timed.
async fn http(
    addr: SocketAddr,
    inputs: &Arc<Vec<(Value, String)>>,
    settings: &Settings,
) -> Result<Vec<u32>> {
    let mut client = Client::new(addr);
    let mut times = Vec::with_capacity(settings.max_decisions.min(1 << 20) as usize);
    let end = Instant::now() + settings.phase;
    let mut i = 0usize;
    while (times.len() as u64) < settings.max_decisions && Instant::now() < end {
        let body = &inputs[i % INPUTS].1;
        i += 1;
        let start = Instant::now();
        let answer = client.authorize(body).await;
        let elapsed = start.elapsed();
        match answer {
            Ok((200, _)) => times.push(nanos(elapsed)),
            other => return Err(format!("POST /authorize {body}: {other:?}")),
        }
    }
    Ok(times)
}

/// Publishes revision after revision, one a second, on a thread of its own.
struct Publisher {
    path: PathBuf,
    users: u64,
    next: Arc<AtomicU64>,
}

struct Publishing {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<u64>,
}

impl Publisher {
    fn start(&self) -> Publishing {
        let stop = Arc::new(AtomicBool::new(false));
        let (path, users, next, flag) = (
            self.path.clone(),
            self.users,
            self.next.clone(),
            stop.clone(),
        );
        let thread = std::thread::spawn(move || {
            let mut last = next.load(Ordering::SeqCst) - 1;
            while !flag.load(Ordering::SeqCst) {
                let revision = next.fetch_add(1, Ordering::SeqCst);
                // A distinct mtime per revision: nginx's etag is mtime+size.
                support::publish(&path, &bundle(revision, users), 2 * revision);
                last = revision;
                let until = Instant::now() + Duration::from_secs(1);
                while !flag.load(Ordering::SeqCst) && Instant::now() < until {
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
            last
        });
        Publishing { stop, thread }
    }
}

impl Publishing {
    /// Stops publishing; the last revision published.
    fn stop(self) -> u64 {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.join().expect("the publisher")
    }
}

/// The loads the authorizer reports: revision number and load time.
struct LoadLog {
    loaded: Arc<std::sync::Mutex<Vec<(u64, Duration)>>>,
}

impl LoadLog {
    fn start(authorizer: &Authorizer) -> LoadLog {
        let loaded = Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut reports = authorizer.reports();
        let log = loaded.clone();
        tokio::spawn(async move {
            reports.mark_unchanged();
            while reports.changed().await.is_ok() {
                let report = reports.borrow_and_update().clone();
                if let Some(report) = report
                    && let LoadOutcome::Loaded(took) = report.outcome
                {
                    log.lock()
                        .unwrap()
                        .push((revision_number(&report.revision), took));
                }
            }
        });
        LoadLog { loaded }
    }

    fn count(&self) -> u64 {
        self.loaded.lock().unwrap().len() as u64
    }

    fn times(&self) -> Vec<Duration> {
        self.loaded
            .lock()
            .unwrap()
            .iter()
            .map(|(_, t)| *t)
            .collect()
    }

    /// Waits (at most 30 s) until revision `r` or a later one is loaded.
    async fn wait_for(&self, r: u64) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if self
                .loaded
                .lock()
                .unwrap()
                .iter()
                .any(|(loaded, _)| *loaded >= r)
            {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!("revision r{r} not loaded after 30 s"));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn revision_number(revision: &str) -> u64 {
    revision
        .strip_prefix('r')
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

/// Waits (at most 30 s) until revision `r` or a later one decides.
async fn wait_loaded(authorizer: &Authorizer, r: u64) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let active = authorizer.policy().map(|p| revision_number(p.revision()));
        if active.is_some_and(|active| active >= r) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "revision r{r} not active after 30 s (active: {active:?})"
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Revision `r`: users `u<i>` are enabled when `i + r` is even; admins
/// always are.
fn bundle(r: u64, users: u64) -> Vec<u8> {
    let mut data = String::from(r#"{"admins": ["root"], "users": {"#);
    for i in 0..users {
        if i > 0 {
            data.push(',');
        }
        data.push_str(&format!(
            r#""u{i}": {{"enabled": {}, "team": "t{}"}}"#,
            (i + r).is_multiple_of(2),
            i % 16
        ));
    }
    data.push_str("}}");
    support::tar_gz(&[
        (
            ".manifest",
            format!(r#"{{"revision":"r{r}","roots":["authz"]}}"#),
        ),
        (
            "authz/policy.rego",
            "package authz\n\nallow if data.authz.users[input.user].enabled\n\nallow if input.user in data.authz.admins\n".to_string(),
        ),
        ("authz/data.json", data),
    ])
}

/// `INPUTS` inputs over the users, as regorus values and as JSON bodies.
fn inputs(users: u64) -> Arc<Vec<(Value, String)>> {
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let list = (0..INPUTS)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let json = format!(r#"{{"user": "u{}", "action": "read"}}"#, state % users);
            (Value::from_json_str(&json).expect("JSON"), json)
        })
        .collect();
    Arc::new(list)
}

fn nanos(d: Duration) -> u32 {
    d.as_nanos().min(u32::MAX as u128) as u32
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1] as f64 / 1000.0
}

fn report(
    settings: &Settings,
    bundle_kib: f64,
    samples: &BTreeMap<(Route, bool), Vec<u32>>,
    swaps: &BTreeMap<bool, u64>,
    load_times: &[Duration],
) {
    let mut loads: Vec<f64> = load_times.iter().map(|d| d.as_secs_f64() * 1e3).collect();
    loads.sort_by(f64::total_cmp);
    let load_p50 = loads.get(loads.len() / 2).copied().unwrap_or(f64::NAN);
    println!();
    println!(
        "edge-authz decisions: bundle of {} users ({bundle_kib:.0} KiB gzipped), {} s phases x {} rounds per row",
        settings.users,
        settings.phase.as_secs(),
        settings.rounds
    );
    println!(
        "swaps: {} during swapping phases, {} during steady ones; regorus load p50 {load_p50:.1} ms (n={})",
        swaps.get(&true).copied().unwrap_or(0),
        swaps.get(&false).copied().unwrap_or(0),
        loads.len()
    );
    println!();
    println!(
        "{:<18} {:>9} {:>9} | {:>8} {:>8} {:>6} | {:>8} {:>8} {:>6}",
        "route, engines",
        "n steady",
        "n swap",
        "p50 st",
        "p50 sw",
        "ratio",
        "p99 st",
        "p99 sw",
        "ratio"
    );
    for route in Route::ALL {
        let sorted = |swapping| {
            let mut v = samples.get(&(route, swapping)).cloned().unwrap_or_default();
            v.sort_unstable();
            v
        };
        let (steady, swapping) = (sorted(false), sorted(true));
        let (p50_st, p50_sw) = (percentile(&steady, 50.0), percentile(&swapping, 50.0));
        let (p99_st, p99_sw) = (percentile(&steady, 99.0), percentile(&swapping, 99.0));
        println!(
            "{:<18} {:>9} {:>9} | {:>8.1} {:>8.1} {:>6.2} | {:>8.1} {:>8.1} {:>6.2}",
            route.name(),
            steady.len(),
            swapping.len(),
            p50_st,
            p50_sw,
            p50_sw / p50_st,
            p99_st,
            p99_sw,
            p99_sw / p99_st
        );
    }
    println!();
    println!(
        "latencies in µs; ratio = swapping / steady (1.00: swaps cost nothing at that percentile)"
    );
}

fn env_u64(name: &str, default: u64) -> Result<u64> {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .map_err(|_| format!("{name}={v:?} is not a whole number")),
        Err(_) => Ok(default),
    }
}
