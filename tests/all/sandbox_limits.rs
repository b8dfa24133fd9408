//! The sandbox's limits, each pushed by a hostile fetcher component
//! (guest/fixtures): what no honest fetcher or real server would do.
//! These run through the library, with limits small enough to hit fast.

use std::sync::Arc;
use std::time::{Duration, Instant};

use polhost::bundle::ValidationLimits;
use polhost::config::Config;
use polhost::download::{self, Download, DownloadJob, FetchError};
use polhost::runtime::{Limits, Runtime, RuntimeError};
use polhost::sandbox::Grant;
use polhost::store::BundleDir;

use crate::harness::nginx::{Nginx, NginxOptions};

const HOSTILE: &str = env!("POLHOST_FIXTURE_HOSTILE_WASM");
const SOCKETS: &str = env!("POLHOST_FIXTURE_SOCKETS_WASM");

fn small_limits() -> Limits {
    Limits {
        memory_bytes: 32 << 20,
        max_requests: 5,
        fetch_timeout: Duration::from_secs(2),
        ..Limits::default()
    }
}

/// Runs the hostile fetcher's `attempt` against `url` under `limits`.
async fn attempt(attempt: &str, url: &str, limits: Limits) -> Result<Download, FetchError> {
    let config = Config::parse(
        &format!(
            "services:\n  svc:\n    url: {url}\nbundles:\n  b:\n    resource: \"{attempt}\"\n"
        ),
        &|_| None,
    )
    .unwrap();
    let runtime = Runtime::new(limits).unwrap();
    let fetcher = runtime
        .load("hostile", &std::fs::read(HOSTILE).unwrap())
        .unwrap();
    let state = tempfile::tempdir().unwrap();
    let dir = BundleDir::new(state.path(), "b", false);
    dir.prepare().unwrap();
    download::download(DownloadJob {
        runtime: &runtime,
        fetcher: &fetcher,
        grant: Arc::new(Grant::for_service(&config.services[0])),
        service: &config.services[0],
        bundle: &config.bundles[0],
        etag: None,
        dir: &dir,
        limits: ValidationLimits::new(config.bundles[0].size_limit_bytes),
        verification: None,
    })
    .await
}

/// The message of a failed attempt.
async fn refusal(what: &str, url: &str) -> String {
    match attempt(what, url, small_limits()).await {
        Ok(download) => panic!("{what}: not stopped: {download:?}"),
        Err(e) => e.to_string(),
    }
}

#[tokio::test]
async fn cpu_spin_is_stopped_by_the_deadline() {
    let start = Instant::now();
    let err = attempt("spin", "http://127.0.0.1:9", small_limits())
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            FetchError::Runtime(RuntimeError::Trap { .. } | RuntimeError::Timeout { .. })
        ),
        "{err}"
    );
    assert!(
        start.elapsed() < Duration::from_secs(6),
        "took {:?}",
        start.elapsed()
    );
}

#[tokio::test]
async fn memory_growth_is_stopped_at_the_cap() {
    let start = Instant::now();
    let err = attempt("grow", "http://127.0.0.1:9", small_limits())
        .await
        .unwrap_err();
    // The allocation fails at the cap and the guest aborts: a trap, long
    // before the deadline.
    assert!(
        matches!(err, FetchError::Runtime(RuntimeError::Trap { .. })),
        "{err}"
    );
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "took {:?}",
        start.elapsed()
    );
}

#[tokio::test]
async fn requests_beyond_the_cap_are_refused() {
    let root = tempfile::tempdir().unwrap();
    let server = Nginx::start(NginxOptions {
        root: root.path().to_path_buf(),
        ..NginxOptions::default()
    });
    let message = refusal("requests", &server.url()).await;
    assert!(
        message.contains("more than 5 requests in one fetch"),
        "{message}"
    );
    assert_eq!(server.access_log().len(), 5);
}

#[tokio::test]
async fn files_not_granted_are_refused() {
    let message = refusal("read:/etc/hostname", "http://127.0.0.1:9").await;
    assert_eq!(
        message,
        "file \"/etc/hostname\" is not granted to service \"svc\""
    );
}

#[tokio::test]
async fn environment_is_empty() {
    let message = refusal("env:PATH", "http://127.0.0.1:9").await;
    assert_eq!(message, "granted-env PATH: None; std::env::var: None");
}

#[tokio::test]
async fn filesystem_is_not_there() {
    let message = refusal("fs:/", "http://127.0.0.1:9").await;
    assert!(message.starts_with("read_dir /: error"), "{message}");
}

#[test]
fn component_importing_sockets_is_refused_at_load() {
    let runtime = Runtime::new(Limits::default()).unwrap();
    let err = match runtime.load("sockets", &std::fs::read(SOCKETS).unwrap()) {
        Ok(_) => panic!("a component importing wasi:sockets loaded"),
        Err(e) => e,
    };
    assert!(matches!(err, RuntimeError::ForbiddenImport { .. }), "{err}");
    let message = err.to_string();
    assert!(
        message.starts_with("fetcher \"sockets\" imports wasi:sockets/"),
        "{message}"
    );
}
