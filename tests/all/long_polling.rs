//! OPA long polling against `polhost serve`: a change arrives while the
//! request is held, long before the polling delay would have passed.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::harness::{free_port, port_open};
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

#[test]
fn change_is_delivered_during_a_held_long_poll() {
    let work = Workdir::new();
    let root = work.path().join("www");
    publish(&root.join("bundles/authz.tar.gz"), &bundle("v1"), 0);
    let (_server, url) = serve(&root);
    let cfg = work.config(&config(&url, 30));
    let mut polhost = Polhost::spawn(&["run", cfg.to_str().unwrap()], &[]);
    polhost.wait_for_activation("v1", "Download");

    // The next request is now held by the server; change the bundle.
    std::thread::sleep(Duration::from_millis(300));
    let changed = Instant::now();
    publish(&root.join("bundles/authz.tar.gz"), &bundle("v2"), 10);
    polhost.wait_for_activation("v2", "Download");
    let took = changed.elapsed();
    // The polling delay is 60-120 s: only long polling explains this.
    assert!(took < Duration::from_secs(10), "took {took:?}");

    // Stops promptly even with a long poll held.
    let (took, status) = polhost.terminate();
    assert!(status.success());
    assert!(took < Duration::from_secs(1), "took {took:?}");
}

#[test]
fn unchanged_bundle_gets_304s_and_polling_continues_without_delay() {
    let work = Workdir::new();
    let root = work.path().join("www");
    publish(&root.join("bundles/authz.tar.gz"), &bundle("v1"), 0);
    let (_server, url) = serve(&root);
    let cfg = work.config(&config(&url, 1));
    let polhost = Polhost::spawn(&["run", cfg.to_str().unwrap()], &[]);
    polhost.wait_for_activation("v1", "Download");
    // Each held request ends in a 304 after 1 s, and the next one goes out
    // at once: three of them in well under the 60 s polling delay.
    polhost.wait_for_n(3, Duration::from_secs(10), "not modified", |l| {
        l.contains("bundle not modified")
    });
    assert_eq!(polhost.count(|l| l.contains("bundle activated")), 1);
}
