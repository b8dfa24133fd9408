//! Services that answer what they should not: a 304 nobody asked for, a
//! long poll that is not held, the same bytes under a new etag each time.
//! The first two are hand-written servers, since no real server lies that
//! way; the third is nginx, whose etag changes with a file's mtime.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use polhost::{Event, FailureKind, Limits};

use crate::harness::nginx::{Nginx, NginxOptions};
use crate::in_process;
use crate::support::*;

/// A hand-written server: the first `bundles` requests get `bundle("v1")`
/// with etag "v1" (as a long-polling server would label it when
/// `long_polling`), every later one a 304 at once. Returns its URL and the
/// number of requests served so far.
fn lying_server(bundles: usize, long_polling: bool) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let served = Arc::new(AtomicUsize::new(0));
    let count = served.clone();
    let body = bundle("v1");
    let content_type = if long_polling {
        "application/vnd.openpolicyagent.bundles"
    } else {
        "application/gzip"
    };
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let n = count.fetch_add(1, Ordering::SeqCst);
            let mut request = [0u8; 8192];
            let _ = stream.read(&mut request);
            let head = if n < bundles {
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nETag: \"v1\"\r\nConnection: close\r\n\r\n",
                    body.len()
                )
            } else {
                format!(
                    "HTTP/1.1 304 Not Modified\r\nContent-Type: {content_type}\r\nETag: \"v1\"\r\nConnection: close\r\n\r\n"
                )
            };
            let _ = stream.write_all(head.as_bytes());
            if n < bundles {
                let _ = stream.write_all(&body);
            }
        }
    });
    (url, served)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_304_to_a_first_request_is_a_failure_not_a_success() {
    let (url, _) = lying_server(0, false);
    let work = Workdir::new();
    let yaml =
        format!("services:\n  liar:\n    url: {url}\nbundles:\n  authz:\n    persist: true\n");
    let agent = in_process::agent(&yaml, &work.state(), vec![], Limits::default())
        .await
        .expect("the agent starts");
    let (inactive, events) = in_process::poll_counting(&agent).await;
    assert_eq!(inactive, 1, "no bundle is active: --once must fail");
    let (kind, message, _) = in_process::failure(&events, "authz").expect("a failure");
    assert_eq!(kind, FailureKind::Protocol);
    assert!(message.contains("sent no etag"), "{message}");
    let status = agent.bundle_status("authz").unwrap();
    assert!(status.active.is_none());
    assert_eq!(status.consecutive_failures, 1);
    assert!(status.last_successful_request.is_none());
    // It holds the persistence directory's lock.
    drop(agent);

    // The CLI says the same, with exit 1, and persists nothing.
    let cfg = work.config(&yaml);
    let run = polhost(&["run", "--once", cfg.to_str().unwrap()], &[]);
    assert_eq!(run.status.code(), Some(1), "{}", run.stderr);
    assert!(run.stderr.contains("sent no etag"), "{}", run.stderr);
    assert!(!work.persisted("authz").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_claims_long_polling_but_answers_at_once_is_not_flooded() {
    let (url, served) = lying_server(1, true);
    let work = Workdir::new();
    let yaml = format!(
        "services:\n  liar:\n    url: {url}\nbundles:\n  authz:\n    polling:\n      min_delay_seconds: 60\n      max_delay_seconds: 120\n      long_polling_timeout_seconds: 30\n"
    );
    let agent = Arc::new(
        in_process::agent(&yaml, &work.state(), vec![], Limits::default())
            .await
            .expect("the agent starts"),
    );
    let mut events = agent.subscribe();
    let _running = in_process::run_in_background(agent.clone()).drop_guard();
    in_process::wait_for_event(&mut events, PATIENCE, "the first 304", |e| {
        matches!(e, Event::NotModified { .. })
    })
    .await;
    // Polling again at once (as a held long poll allows) would be
    // thousands of requests here: the answer came too soon to have been
    // held, so the agent waits its 60-120 s polling delay instead.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let requests = served.load(Ordering::SeqCst);
    assert_eq!(requests, 2, "the bundle, one 304, then the polling delay");
    let next = agent
        .bundle_status("authz")
        .unwrap()
        .next_poll
        .expect("a next poll");
    let wait = next
        .duration_since(std::time::SystemTime::now())
        .unwrap_or_default();
    assert!(wait > Duration::from_secs(50), "next poll in {wait:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_bytes_under_a_new_etag_are_not_activated_again() {
    let work = Workdir::new();
    let root = work.path().join("www");
    let served = root.join("bundles/authz.tar.gz");
    let bytes = bundle("v1");
    publish(&served, &bytes, 0);
    let nginx = Nginx::start(NginxOptions {
        root: root.clone(),
        ..NginxOptions::default()
    });
    let yaml = format!(
        "services:\n  web:\n    url: {}\nbundles:\n  authz:\n    resource: bundles/authz.tar.gz\n    persist: true\n",
        nginx.url()
    );
    let agent = in_process::agent(&yaml, &work.state(), vec![], Limits::default())
        .await
        .expect("the agent starts");
    let first = in_process::poll_once(&agent).await;
    let activated = in_process::activation(&first, "authz")
        .expect("v1 activated")
        .clone();
    let first_etag = work.metadata("authz")["etag"].clone();

    // A redeploy of the same file: new mtime, so a new etag from nginx.
    publish(&served, &bytes, 30);
    let second = in_process::poll_once(&agent).await;
    assert!(
        in_process::activation(&second, "authz").is_none(),
        "the same bytes were activated again: {second:#?}"
    );
    assert!(
        second
            .iter()
            .any(|e| matches!(e, Event::NotModified { .. }))
    );
    let status = agent.bundle_status("authz").unwrap();
    assert_eq!(status.activations, 1);
    let current = agent.current("authz").unwrap();
    assert_eq!(current.sha256, activated.sha256);
    assert_ne!(current.etag, activated.etag, "the new etag is kept");
    let new_etag = work.metadata("authz")["etag"].clone();
    assert_ne!(new_etag, first_etag, "and persisted");
    assert_eq!(std::fs::read(work.persisted("authz")).unwrap(), bytes);

    // So the next poll asks with it, and nginx answers 304.
    in_process::poll_once(&agent).await;
    let log = nginx.access_log();
    let last = log.last().unwrap();
    assert_eq!(last.status, 304, "{log:#?}");
    assert_eq!(Some(last.if_none_match.as_str()), new_etag.as_str());
}
