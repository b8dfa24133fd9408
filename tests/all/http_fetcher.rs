//! The http fetcher end to end against a real nginx: the agent driven in
//! process (its events and state), and `polhost run` for what only the
//! process shows (exit codes, SIGTERM, what it logs).

use std::fs;
use std::sync::Arc;
use std::time::Duration;

use polhost::{Event, FailureKind, Limits, Source};

use crate::harness::nginx::{Nginx, NginxOptions};
use crate::in_process::{self, activation, failure};
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

/// The agent for `yaml`, its state in `work`'s persistence directory.
async fn agent(work: &Workdir, yaml: &str) -> polhost::Agent {
    in_process::agent(yaml, &work.state(), vec![], Limits::default())
        .await
        .expect("the agent starts")
}

fn is_activation(event: &Event, revision: &str, source: Source) -> bool {
    matches!(event, Event::Activated(a)
        if a.bundle == "authz" && a.revision == revision && a.source == source)
}

fn is_not_modified(event: &Event) -> bool {
    matches!(event, Event::NotModified { bundle } if bundle == "authz")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_fetch_then_304s_then_changed_bundle_is_picked_up() {
    let (work, root, server) = served_v1("bundles/authz.tar.gz");
    let agent = Arc::new(agent(&work, &config(&server.url(), "bundles/authz.tar.gz", "")).await);
    let mut events = agent.subscribe();
    let _shutdown = in_process::run_in_background(agent.clone());

    in_process::wait_for_event(&mut events, PATIENCE, "v1 downloaded", |e| {
        is_activation(e, "v1", Source::Download)
    })
    .await;
    assert_eq!(
        sha256_file(&work.persisted("authz")),
        sha256_file(&root.join("bundles/authz.tar.gz"))
    );
    let etag = work.metadata("authz")["etag"].as_str().unwrap().to_string();
    assert_eq!(work.metadata("authz")["revision"], "v1");
    let active = agent.current("authz").expect("v1 is active");
    assert_eq!(active.revision, "v1");
    assert_eq!(active.etag.as_deref(), Some(etag.as_str()));

    // Two more polls: both conditional, neither re-downloads the body.
    for _ in 0..2 {
        in_process::wait_for_event(&mut events, PATIENCE, "not modified", is_not_modified).await;
    }
    let log = server.access_log();
    assert_eq!(log[0].status, 200);
    assert!(log[0].body_bytes > 0);
    let conditional: Vec<_> = log[1..].iter().collect();
    assert!(conditional.len() >= 2, "{log:?}");
    for entry in conditional {
        assert_eq!((entry.status, entry.body_bytes), (304, 0), "{entry:?}");
        assert_eq!(entry.if_none_match, etag);
    }
    assert_eq!(agent.current("authz").unwrap().revision, "v1");

    publish(&root.join("bundles/authz.tar.gz"), &bundle("v2"), 10);
    in_process::wait_for_event(&mut events, PATIENCE, "v2 downloaded", |e| {
        is_activation(e, "v2", Source::Download)
    })
    .await;
    assert_eq!(work.metadata("authz")["revision"], "v2");
    assert_eq!(
        sha256_file(&work.persisted("authz")),
        sha256_file(&root.join("bundles/authz.tar.gz"))
    );
    let active = agent.current("authz").expect("v2 is active");
    assert_eq!(active.revision, "v2");
    assert_eq!(active.sha256, sha256_file(&work.persisted("authz")));
}

#[tokio::test]
async fn default_resource_is_bundles_slash_name() {
    let (work, _, server) = served_v1("bundles/authz");
    let agent = agent(
        &work,
        &format!(
            "services:\n  web:\n    url: {}/\nbundles:\n  authz:\n    persist: true\n",
            server.url()
        ),
    )
    .await;
    let (inactive, events) = in_process::poll_counting(&agent).await;
    assert_eq!(inactive, 0, "{events:?}");
    assert_eq!(activation(&events, "authz").unwrap().revision, "v1");
    assert_eq!(server.access_log()[0].path, "/bundles/authz");
}

#[tokio::test]
async fn bearer_location_without_token_fails_with_401_and_names_url() {
    let (work, _, server) = served_v1("secure/authz.tar.gz");
    let agent = agent(&work, &config(&server.url(), "secure/authz.tar.gz", "")).await;

    let (inactive, events) = in_process::poll_counting(&agent).await;
    assert_eq!(inactive, 1, "{events:?}");
    let (kind, message, fetcher) = failure(&events, "authz").expect("the poll failed");
    assert_eq!(kind, FailureKind::Unauthorized, "{message}");
    assert_eq!(fetcher, "http");
    let expected = format!(
        "GET {}/secure/authz.tar.gz: server answered 401",
        server.url()
    );
    assert!(message.starts_with(&expected), "{message}");
    assert!(agent.current("authz").is_none());
    assert!(!work.persisted("authz").exists());
    assert_eq!(server.access_log()[0].status, 401);
}

#[test]
fn run_once_exits_1_and_says_which_url_refused_it() {
    let (work, _, server) = served_v1("secure/authz.tar.gz");
    let cfg = work.config(&config(&server.url(), "secure/authz.tar.gz", ""));

    let run = polhost(&["run", "--once", cfg.to_str().unwrap()], &[]);
    assert_eq!(run.status.code(), Some(1), "{}", run.stderr);
    let expected = format!(
        "bundle download failed: GET {}/secure/authz.tar.gz: server answered 401",
        server.url()
    );
    assert!(run.stderr.contains(&expected), "{}", run.stderr);
}

#[tokio::test]
async fn bearer_token_is_sent_and_in_no_event() {
    let (work, _, server) = served_v1("secure/authz.tar.gz");
    // A second bundle behind the same token that the server lacks: a
    // failure's message must not carry the token either.
    let yaml = format!(
        "{}  missing:\n    service: web\n    resource: secure/missing.tar.gz\n",
        config(
            &server.url(),
            "secure/authz.tar.gz",
            "    credentials:\n      bearer:\n        token: ${AUTHZ_TOKEN}",
        )
    );
    let agent = in_process::builder(&yaml, &work.state(), &[("AUTHZ_TOKEN", TOKEN)])
        .build()
        .await
        .expect("the agent starts");

    let (inactive, events) = in_process::poll_counting(&agent).await;
    assert_eq!(inactive, 1, "{events:?}");
    let active = activation(&events, "authz").expect("authz is activated");
    assert_eq!(active.revision, "v1");
    let (kind, message, _) = failure(&events, "missing").expect("missing failed");
    assert_eq!(kind, FailureKind::NotFound, "{message}");
    in_process::assert_in_no_event(&events, TOKEN);
    let log = server.access_log();
    assert_eq!(log.len(), 2, "{log:?}");
    assert!(
        log.iter().all(|entry| entry.authorization_present),
        "{log:?}"
    );
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

/// The configuration reading the bearer token from `token_file`.
fn token_path_config(server: &Nginx, token_file: &std::path::Path) -> String {
    config(
        &server.url(),
        "secure/authz.tar.gz",
        &format!(
            "    credentials:\n      bearer:\n        token_path: {}",
            token_file.display()
        ),
    )
}

#[tokio::test]
async fn bearer_token_path_is_read_through_the_grant() {
    let (work, _, server) = served_v1("secure/authz.tar.gz");
    let token_file = work.path().join("token");
    fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let yaml = token_path_config(&server, &token_file);

    // The file is what the service's grant adds...
    let plans = in_process::builder(&yaml, &work.state(), &[])
        .check()
        .await
        .expect("the check passes");
    assert_eq!(plans.len(), 1, "{plans:?}");
    assert_eq!(
        plans[0].grant.describe(),
        format!(
            "origins: http://127.0.0.1:{}; files: {}; env: none",
            server.port(),
            token_file.display()
        )
    );
    // ...and the fetcher, reading it there, sends the token.
    let agent = agent(&work, &yaml).await;
    let (inactive, events) = in_process::poll_counting(&agent).await;
    assert_eq!(inactive, 0, "{events:?}");
    assert_eq!(activation(&events, "authz").unwrap().revision, "v1");
    in_process::assert_in_no_event(&events, TOKEN);
    assert!(server.access_log()[0].authorization_present);
}

#[test]
fn bearer_token_from_token_path_is_never_logged() {
    let (work, _, server) = served_v1("secure/authz.tar.gz");
    let token_file = work.path().join("token");
    fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let cfg = work.config(&token_path_config(&server, &token_file));

    let run = polhost(&["run", "--once", cfg.to_str().unwrap()], &[]);
    assert!(run.status.success(), "{}", run.stderr);
    assert!(!run.stderr.contains(TOKEN), "the token leaked into the log");
}

fn is_connection_refused(event: &Event) -> bool {
    matches!(event, Event::Failed { bundle, message, .. }
        if bundle == "authz" && message.contains("ConnectionRefused"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_with_server_down_serves_persisted_bundle() {
    let (work, root, mut server) = served_v1("bundles/authz.tar.gz");
    let yaml = config(&server.url(), "bundles/authz.tar.gz", "");
    let first = agent(&work, &yaml).await;
    let (inactive, events) = in_process::poll_counting(&first).await;
    assert_eq!(inactive, 0, "{events:?}");
    assert_eq!(
        activation(&events, "authz").unwrap().source,
        Source::Download
    );
    let persisted = sha256_file(&work.persisted("authz"));
    drop(first);

    server.stop();
    // A new agent on the same directory: the persisted bundle is active
    // after its poll, though the poll failed.
    let second = agent(&work, &yaml).await;
    let (inactive, events) = in_process::poll_counting(&second).await;
    assert_eq!(inactive, 0, "{events:?}");
    let restored = activation(&events, "authz").expect("restored from disk");
    assert_eq!(
        (restored.revision.as_str(), restored.source),
        ("v1", Source::Disk)
    );
    assert_eq!(restored.sha256, persisted);
    let (kind, message, _) = failure(&events, "authz").expect("the download failed");
    assert_eq!(kind, FailureKind::Transient, "{message}");
    // The fetcher's words, then the host's (the guest saw only the code).
    assert_eq!(
        message,
        format!(
            "GET {}/bundles/authz.tar.gz: ErrorCode::ConnectionRefused (tcp connect error: Connection refused (os error 111))",
            server.url()
        )
    );
    assert_eq!(sha256_file(&work.persisted("authz")), persisted);
    assert_eq!(second.current("authz").unwrap().sha256, persisted);
    drop(second);

    // Running on: it stays active while the server is down, and picks up
    // the bundle once the server is back.
    let third = Arc::new(agent(&work, &yaml).await);
    let mut events = third.subscribe();
    let _shutdown = in_process::run_in_background(third.clone());
    in_process::wait_for_event(&mut events, PATIENCE, "v1 from disk", |e| {
        is_activation(e, "v1", Source::Disk)
    })
    .await;
    in_process::wait_for_event(
        &mut events,
        PATIENCE,
        "a refused connection",
        is_connection_refused,
    )
    .await;
    assert_eq!(third.current("authz").unwrap().revision, "v1");
    publish(&root.join("bundles/authz.tar.gz"), &bundle("v2"), 10);
    server.restart();
    in_process::wait_for_event(&mut events, PATIENCE, "v2 downloaded", |e| {
        is_activation(e, "v2", Source::Download)
    })
    .await;
    assert_eq!(third.current("authz").unwrap().revision, "v2");
}

#[test]
fn run_once_exits_0_with_the_server_down_when_the_persisted_bundle_is_served() {
    let (work, _, mut server) = served_v1("bundles/authz.tar.gz");
    let cfg = work.config(&config(&server.url(), "bundles/authz.tar.gz", ""));
    let first = polhost(&["run", "--once", cfg.to_str().unwrap()], &[]);
    assert!(first.status.success(), "{}", first.stderr);

    server.stop();
    // --once: exit 0 means every bundle is active after the poll.
    let second = polhost(&["run", "--once", cfg.to_str().unwrap()], &[]);
    assert!(second.status.success(), "{}", second.stderr);
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

#[test]
fn an_etag_with_bytes_above_0x7f_comes_back_unchanged_and_the_server_answers_304() {
    // `"caf<0xE9>"`: obs-text, not UTF-8. nginx sends it as given and
    // answers 304 only to those exact bytes in If-None-Match.
    const ETAG: &[u8] = b"\"caf\xe9\"";
    let work = Workdir::new();
    let root = work.path().join("www");
    publish(&root.join("obs-text/authz.tar.gz"), &bundle("v1"), 0);
    // In nginx's syntax: `"\"caf<0xE9>\""`.
    let quoted: &[u8] = b"\"\\\"caf\xe9\\\"\"";
    let mut directives =
        b"location = /obs-text/authz.tar.gz {\n    etag off;\n    add_header ETag ".to_vec();
    directives.extend_from_slice(quoted);
    directives.extend_from_slice(b" always;\n    if ($http_if_none_match = ");
    directives.extend_from_slice(quoted);
    directives.extend_from_slice(b") { return 304; }\n}\n");
    let server = Nginx::start(NginxOptions {
        root: root.clone(),
        server_directives: directives,
        ..NginxOptions::default()
    });
    let cfg = work.config(&config(&server.url(), "obs-text/authz.tar.gz", ""));

    let first = polhost(&["run", "--once", cfg.to_str().unwrap()], &[]);
    assert!(first.status.success(), "{}", first.stderr);
    assert!(first.stderr.contains("source=Download"), "{}", first.stderr);
    // Kept as text one character per byte (Latin-1), so nothing is lost.
    let kept = work.metadata("authz")["etag"].as_str().unwrap().to_string();
    assert_eq!(kept, "\"caf\u{e9}\"");
    assert_eq!(
        kept.chars().map(|c| c as u32 as u8).collect::<Vec<_>>(),
        ETAG
    );

    // The restart sends it back byte for byte: a 304, not a download.
    let second = polhost(&["run", "--once", cfg.to_str().unwrap()], &[]);
    assert!(second.status.success(), "{}", second.stderr);
    assert!(
        second.stderr.contains("bundle not modified"),
        "{}",
        second.stderr
    );
    assert!(
        !second.stderr.contains("source=Download"),
        "{}",
        second.stderr
    );
    let log = server.access_log();
    let answers: Vec<_> = log.iter().map(|e| (e.status, e.body_bytes > 0)).collect();
    assert_eq!(answers, [(200, true), (304, false)], "{log:?}");
}
