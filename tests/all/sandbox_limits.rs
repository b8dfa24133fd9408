//! The sandbox's limits, each pushed by a hostile fetcher component
//! (guest/fixtures): what no honest fetcher or real server would do.
//! These run through the library, with limits small enough to hit fast.

use std::time::{Duration, Instant};

use polhost::{FailureKind, Limits};

use crate::harness::nginx::{Nginx, NginxOptions};
use crate::hostile_components::{HOSTILE, NOWHERE, Setup, small_limits};

const SOCKETS: &str = polhost_test_programs::SOCKETS;

/// Polls bundle `b`, whose `resource` is the fetcher's `attempt`, once
/// against `url` under `limits`; returns its failure (kind, message),
/// having checked it names service `svc` and fetcher `hostile` and that
/// nothing was activated or persisted.
async fn attempt_with(
    component: &'static str,
    attempt: &str,
    url: &str,
    limits: Limits,
) -> (FailureKind, String) {
    let failure = Setup {
        component,
        limits,
        ..Setup::new(url)
    }
    .contained(attempt)
    .await;
    (failure.kind, failure.message)
}

async fn attempt(attempt: &str, url: &str, limits: Limits) -> (FailureKind, String) {
    attempt_with(HOSTILE, attempt, url, limits).await
}

/// The message of a failed attempt.
async fn refusal(what: &str, url: &str) -> String {
    attempt(what, url, small_limits()).await.1
}

#[tokio::test]
async fn cpu_spin_is_stopped_by_the_deadline() {
    let start = Instant::now();
    let (kind, message) = attempt("spin", NOWHERE, small_limits()).await;
    assert_eq!(kind, FailureKind::Fetcher, "{message}");
    // The CPU deadline, or the wall clock of the same length, whichever
    // notices first: both name the fetcher and the limit.
    assert!(
        message == "fetcher \"hostile\" exceeded its CPU deadline (2s)"
            || message == "fetcher \"hostile\" did not finish within 2s",
        "{message}"
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
    let (kind, message) = attempt("grow", NOWHERE, small_limits()).await;
    // The allocation fails at the cap and the guest aborts: a trap, long
    // before the deadline.
    assert_eq!(kind, FailureKind::Fetcher, "{message}");
    assert!(
        message.starts_with("fetcher \"hostile\" exceeded its memory limit (32 MiB): "),
        "{message}"
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
    let (kind, message) = attempt("read:/etc/hostname", NOWHERE, small_limits()).await;
    // A refused read fails the fetch as the sandbox's, whatever the
    // fetcher returns.
    assert_eq!(kind, FailureKind::Sandbox, "{message}");
    assert_eq!(
        message,
        "sandbox refused read of file \"/etc/hostname\": not granted to service \"svc\""
    );
}

#[tokio::test]
async fn environment_is_empty() {
    let message = refusal("env:PATH", NOWHERE).await;
    assert_eq!(message, "granted-env PATH: None; std::env::var: None");
}

#[tokio::test]
async fn filesystem_is_not_there() {
    let message = refusal("fs:/", NOWHERE).await;
    assert!(message.starts_with("read_dir /: error"), "{message}");
}

#[tokio::test]
async fn a_component_importing_sockets_loads_and_every_socket_is_denied() {
    // Python's and JavaScript's runtimes import wasi:sockets: such a
    // component loads, and any socket it tries is refused at run time.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let target = listener.local_addr().unwrap().to_string();
    let (kind, message) = attempt_with(SOCKETS, &target, NOWHERE, small_limits()).await;
    assert_eq!(kind, FailureKind::Transient, "{message}");
    assert!(
        message.to_lowercase().contains("denied")
            || message.to_lowercase().contains("not permitted"),
        "{message}"
    );
    // Nothing reached the listener.
    assert!(listener.accept().is_err());
}
