//! OPA long polling against `polhost serve`: a change arrives while the
//! request is held, long before the polling delay would have passed. The
//! agent is driven in process; `polhost run` only for SIGTERM.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use polhost::{Event, Limits, Source};

use crate::harness::{free_port, port_open};
use crate::in_process;
use crate::support::*;

/// Starts `polhost serve DIR` on a free loopback port.
pub fn serve(dir: &Path) -> (Polhost, String) {
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let server = Polhost::spawn(&["serve", dir.to_str().unwrap(), "--addr", &addr], &[]);
    let deadline = Instant::now() + PATIENCE;
    while !port_open(port) {
        assert!(
            Instant::now() < deadline,
            "polhost serve did not start:\n{}",
            server.output()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    (server, format!("http://{addr}"))
}

fn config(url: &str, long_poll_s: u64) -> String {
    format!(
        "services:
  bundles:
    url: {url}
bundles:
  authz:
    polling:
      min_delay_seconds: 60
      max_delay_seconds: 120
      long_polling_timeout_seconds: {long_poll_s}
"
    )
}

/// `bundle("v1")` published at `www/bundles/authz.tar.gz` in a new work
/// dir, and `polhost serve` serving `www/`.
fn served_v1() -> (Workdir, std::path::PathBuf, Polhost, String) {
    let work = Workdir::new();
    let root = work.path().join("www");
    publish(&root.join("bundles/authz.tar.gz"), &bundle("v1"), 0);
    let (server, url) = serve(&root);
    (work, root, server, url)
}

fn is_download(event: &Event, revision: &str) -> bool {
    matches!(event, Event::Activated(a)
        if a.bundle == "authz" && a.revision == revision && a.source == Source::Download)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn change_is_delivered_during_a_held_long_poll() {
    let (work, root, _server, url) = served_v1();
    let agent = Arc::new(
        in_process::agent(&config(&url, 30), &work.state(), vec![], Limits::default())
            .await
            .expect("the agent starts"),
    );
    let mut events = agent.subscribe();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let running = tokio::spawn({
        let agent = agent.clone();
        let shutdown = shutdown.clone();
        async move { agent.run(shutdown).await }
    });
    in_process::wait_for_event(&mut events, PATIENCE, "v1 downloaded", |e| {
        is_download(e, "v1")
    })
    .await;

    // The next request is now held by the server; change the bundle.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let changed = Instant::now();
    publish(&root.join("bundles/authz.tar.gz"), &bundle("v2"), 10);
    in_process::wait_for_event(&mut events, PATIENCE, "v2 downloaded", |e| {
        is_download(e, "v2")
    })
    .await;
    let took = changed.elapsed();
    // The polling delay is 60-120 s: only long polling explains this.
    assert!(took < Duration::from_secs(10), "took {took:?}");
    assert_eq!(agent.current("authz").unwrap().revision, "v2");

    // Held again: cancelling ends the run, it does not wait the poll out
    // (30 s).
    tokio::time::sleep(Duration::from_millis(300)).await;
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(10), running)
        .await
        .expect("the run ends once cancelled, with a long poll held")
        .unwrap();
}

#[test]
fn sigterm_stops_promptly_with_a_long_poll_held() {
    let (work, _root, _server, url) = served_v1();
    let cfg = work.config(&config(&url, 30));
    let mut polhost = Polhost::spawn(&["run", cfg.to_str().unwrap()], &[]);
    polhost.wait_for_activation("v1", "Download");
    // The next request is now held by the server.
    std::thread::sleep(Duration::from_millis(300));
    let (took, status) = polhost.terminate();
    assert!(status.success());
    assert!(took < Duration::from_secs(1), "took {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unchanged_bundle_gets_304s_and_polling_continues_without_delay() {
    let (work, _root, _server, url) = served_v1();
    let agent = Arc::new(
        in_process::agent(&config(&url, 1), &work.state(), vec![], Limits::default())
            .await
            .expect("the agent starts"),
    );
    let mut events = agent.subscribe();
    let _shutdown = in_process::run_in_background(agent.clone());
    let mut seen = Vec::new();
    in_process::collect_until(&mut events, &mut seen, PATIENCE, "v1 downloaded", |seen| {
        seen.iter().any(|e| is_download(e, "v1"))
    })
    .await;
    // Each held request ends in a 304 after 1 s, and the next one goes out
    // at once: three of them in well under the 60 s polling delay.
    in_process::collect_until(
        &mut events,
        &mut seen,
        Duration::from_secs(10),
        "3 x not modified",
        |seen| {
            seen.iter()
                .filter(|e| matches!(e, Event::NotModified { bundle } if bundle == "authz"))
                .count()
                >= 3
        },
    )
    .await;
    let activations = seen
        .iter()
        .filter(|e| matches!(e, Event::Activated(_)))
        .count();
    assert_eq!(activations, 1, "{seen:#?}");
    assert!(
        !seen.iter().any(|e| matches!(e, Event::Failed { .. })),
        "{seen:#?}"
    );
    assert_eq!(agent.current("authz").unwrap().revision, "v1");
}
