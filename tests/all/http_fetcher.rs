//! The http fetcher end to end: `polhost run` against a real nginx.

use std::fs;
use std::time::Duration;

use crate::harness::nginx::{Nginx, NginxOptions};
use crate::support::*;

const TOKEN: &str = "s3cret-token-4711";

fn nginx(root: &std::path::Path) -> Nginx {
    Nginx::start(NginxOptions {
        root: root.to_path_buf(),
        bearer: vec![("/secure".into(), TOKEN.into())],
        ..NginxOptions::default()
    })
}

/// A work dir, `bundle("v1")` published at `www/<resource>`, and nginx
/// serving `www/`.
fn served_v1(resource: &str) -> (Workdir, std::path::PathBuf, Nginx) {
    let work = Workdir::new();
    let root = work.path().join("www");
    publish(&root.join(resource), &bundle("v1"), 0);
    let server = nginx(&root);
    (work, root, server)
}

fn config(url: &str, resource: &str, extra_service: &str) -> String {
    format!(
        "services:
  - name: web
    url: {url}
{extra_service}
bundles:
  authz:
    service: web
    resource: {resource}
    persist: true
    polling:
      min_delay_seconds: 1
      max_delay_seconds: 1
"
    )
}

#[test]
fn first_fetch_then_304s_then_changed_bundle_is_picked_up() {
    let (work, root, server) = served_v1("bundles/authz.tar.gz");
    let cfg = work.config(&config(&server.url(), "bundles/authz.tar.gz", ""));

    let polhost = Polhost::spawn(&["run", cfg.to_str().unwrap()], &[]);
    polhost.wait_for_activation("v1", "Download");
    assert_eq!(
        sha256_file(&work.persisted("authz")),
        sha256_file(&root.join("bundles/authz.tar.gz"))
    );
    let etag = work.metadata("authz")["etag"].as_str().unwrap().to_string();
    assert_eq!(work.metadata("authz")["revision"], "v1");

    // Two more polls: both conditional, neither re-downloads the body.
    polhost.wait_for_n(2, PATIENCE, "not modified", |l| {
        l.contains("bundle not modified")
    });
    let log = server.access_log();
    assert_eq!(log[0].status, 200);
    assert!(log[0].body_bytes > 0);
    let conditional: Vec<_> = log[1..].iter().collect();
    assert!(conditional.len() >= 2, "{log:?}");
    for entry in conditional {
        assert_eq!((entry.status, entry.body_bytes), (304, 0), "{entry:?}");
        assert_eq!(entry.if_none_match, etag);
    }

    publish(&root.join("bundles/authz.tar.gz"), &bundle("v2"), 10);
    polhost.wait_for_activation("v2", "Download");
    assert_eq!(work.metadata("authz")["revision"], "v2");
    assert_eq!(
        sha256_file(&work.persisted("authz")),
        sha256_file(&root.join("bundles/authz.tar.gz"))
    );
}

#[test]
fn default_resource_is_bundles_slash_name() {
    let (work, _, server) = served_v1("bundles/authz");
    let cfg = work.config(&format!(
        "services:\n  web:\n    url: {}/\nbundles:\n  authz:\n    persist: true\n",
        server.url()
    ));
    let run = polhost(&["run", "--once", cfg.to_str().unwrap()], &[]);
    assert!(run.status.success(), "{}", run.stderr);
    assert_eq!(server.access_log()[0].path, "/bundles/authz");
}

#[test]
fn bearer_location_without_token_fails_with_401_and_names_url() {
    let (work, _, server) = served_v1("secure/authz.tar.gz");
    let cfg = work.config(&config(&server.url(), "secure/authz.tar.gz", ""));

    let run = polhost(&["run", "--once", cfg.to_str().unwrap()], &[]);
    assert_eq!(run.status.code(), Some(1), "{}", run.stderr);
    let expected = format!(
        "bundle download failed: GET {}/secure/authz.tar.gz: server answered 401",
        server.url()
    );
    assert!(run.stderr.contains(&expected), "{}", run.stderr);
    assert!(
        run.stderr.contains("kind=\"unauthorized\""),
        "{}",
        run.stderr
    );
    assert!(!work.persisted("authz").exists());
}

#[test]
fn bearer_token_is_sent_and_never_logged() {
    let (work, _, server) = served_v1("secure/authz.tar.gz");
    let cfg = work.config(&config(
        &server.url(),
        "secure/authz.tar.gz",
        "    credentials:\n      bearer:\n        token: ${AUTHZ_TOKEN}",
    ));

    let run = polhost(
        &["run", "--once", cfg.to_str().unwrap()],
        &[("AUTHZ_TOKEN", TOKEN)],
    );
    assert!(run.status.success(), "{}", run.stderr);
    assert!(run.stderr.contains("bundle activated"), "{}", run.stderr);
    assert!(!run.stderr.contains(TOKEN), "the token leaked into the log");
    assert!(server.access_log()[0].authorization_present);
}

#[test]
fn bearer_token_path_is_read_through_the_grant() {
    let (work, _, server) = served_v1("secure/authz.tar.gz");
    let token_file = work.path().join("token");
    fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let cfg = work.config(&config(
        &server.url(),
        "secure/authz.tar.gz",
        &format!(
            "    credentials:\n      bearer:\n        token_path: {}",
            token_file.display()
        ),
    ));

    let run = polhost(&["run", "--once", cfg.to_str().unwrap()], &[]);
    assert!(run.status.success(), "{}", run.stderr);
    assert!(!run.stderr.contains(TOKEN), "the token leaked into the log");
    assert!(
        run.stderr
            .contains(&format!("files: {}", token_file.display())),
        "{}",
        run.stderr
    );
}

#[test]
fn restart_with_server_down_serves_persisted_bundle() {
    let (work, root, mut server) = served_v1("bundles/authz.tar.gz");
    let cfg = work.config(&config(&server.url(), "bundles/authz.tar.gz", ""));
    let first = polhost(&["run", "--once", cfg.to_str().unwrap()], &[]);
    assert!(first.status.success(), "{}", first.stderr);
    let persisted = sha256_file(&work.persisted("authz"));

    server.stop();
    // --once: exit 0 means every bundle is active after the poll.
    let second = polhost(&["run", "--once", cfg.to_str().unwrap()], &[]);
    assert!(second.status.success(), "{}", second.stderr);
    assert!(second.stderr.contains("source=Disk"), "{}", second.stderr);
    assert!(
        second.stderr.contains("bundle download failed"),
        "{}",
        second.stderr
    );
    assert_eq!(sha256_file(&work.persisted("authz")), persisted);

    // Running on: it stays active while the server is down, and picks up
    // the bundle once the server is back.
    let polhost = Polhost::spawn(&["run", cfg.to_str().unwrap()], &[]);
    polhost.wait_for_activation("v1", "Disk");
    polhost.wait_for(&["bundle download failed", "ConnectionRefused"]);
    publish(&root.join("bundles/authz.tar.gz"), &bundle("v2"), 10);
    server.restart();
    polhost.wait_for_activation("v2", "Download");
}

#[test]
fn sigterm_stops_within_one_second() {
    let (work, _, server) = served_v1("bundles/authz.tar.gz");
    let cfg = work.config(&config(&server.url(), "bundles/authz.tar.gz", ""));
    let mut polhost = Polhost::spawn(&["run", cfg.to_str().unwrap()], &[]);
    polhost.wait_for_activation("v1", "Download");
    let (took, status) = polhost.terminate();
    assert!(status.success(), "{status:?}");
    assert!(took < Duration::from_secs(1), "took {took:?}");
}
