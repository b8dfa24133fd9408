//! edge-authz in this process against a real nginx on 127.0.0.1: decisions
//! follow the published bundle, a bundle regorus refuses keeps the previous
//! policy, and swaps under load are atomic.

#[path = "../../../tests/all/harness/mod.rs"]
mod harness;
mod support;

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use edge_authz::{LoadOutcome, Options, Service};
use harness::nginx::{Nginx, NginxOptions};
use support::{Client, PATIENCE, RESOURCE, bundle, config, publish, wait_for_revision};

const ALICE: &str = r#"{"user": "alice"}"#;
const BOB: &str = r#"{"user": "bob"}"#;
const EVE: &str = r#"{"user": "eve"}"#;

/// nginx serving an empty directory, and a scratch directory for the
/// configuration and the persisted bundles.
struct Setup {
    _nginx: Nginx,
    www: tempfile::TempDir,
    _work: tempfile::TempDir,
    config: std::path::PathBuf,
}

impl Setup {
    fn new() -> Setup {
        let www = tempfile::tempdir().unwrap();
        let work = tempfile::tempdir().unwrap();
        let nginx = Nginx::start(NginxOptions {
            root: www.path().into(),
            ..Default::default()
        });
        let config = config(work.path(), &nginx.url());
        Setup {
            _nginx: nginx,
            www,
            _work: work,
            config,
        }
    }

    fn publish(&self, content: &[u8], age_offset_s: u64) {
        publish(&self.www.path().join(RESOURCE), content, age_offset_s);
    }

    async fn start(&self) -> Service {
        let listen = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
        Service::start(Options::new(&self.config, listen))
            .await
            .expect("edge-authz starts")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn decisions_follow_the_published_bundle() {
    let setup = Setup::new();
    let service = setup.start().await;
    let mut client = Client::new(service.addr());

    // Nothing published: nginx answers 404, no policy is active.
    let (status, body) = client.authorize(ALICE).await.unwrap();
    assert_eq!(status, 503, "{body}");
    let (status, _) = client.request("GET", "/ready", "").await.unwrap();
    assert_eq!(status, 503);

    setup.publish(
        &bundle(
            "v1",
            "package authz\n\nallow if input.user == \"alice\"\n",
            "{}",
        ),
        0,
    );
    wait_for_revision(&mut client, ALICE, "v1").await;
    assert_eq!(client.decision(ALICE).await, Some((true, "v1".into())));
    assert_eq!(client.decision(BOB).await, Some((false, "v1".into())));
    assert_eq!(client.decision(EVE).await, Some((false, "v1".into())));

    // v2 lets bob in too, through its data.
    setup.publish(
        &bundle(
            "v2",
            "package authz\n\nallow if input.user == \"alice\"\n\nallow if input.user in data.authz.more\n",
            r#"{"more": ["bob"]}"#,
        ),
        2,
    );
    wait_for_revision(&mut client, ALICE, "v2").await;
    assert_eq!(client.decision(ALICE).await, Some((true, "v2".into())));
    assert_eq!(client.decision(BOB).await, Some((true, "v2".into())));
    assert_eq!(client.decision(EVE).await, Some((false, "v2".into())));

    // v3 is a valid bundle (polhost activates it) that regorus refuses:
    // v2 keeps deciding, and /ready says why.
    let mut reports = service.authorizer().reports();
    setup.publish(
        &bundle("v3", "package authz\n\nallow if x == input.user\n", "{}"),
        4,
    );
    let report = tokio::time::timeout(
        PATIENCE,
        reports.wait_for(|r| r.as_ref().is_some_and(|r| r.revision == "v3")),
    )
    .await
    .expect("v3 is handled")
    .unwrap()
    .clone()
    .unwrap();
    match &report.outcome {
        LoadOutcome::Refused(message) => assert!(message.contains("unsafe"), "{message}"),
        other => panic!("v3 was not refused: {other:?}"),
    }
    assert_eq!(
        service.agent().current("authz").map(|a| a.revision),
        Some("v3".into()),
        "polhost activated v3"
    );
    assert_eq!(client.decision(BOB).await, Some((true, "v2".into())));
    let (status, ready) = client.request("GET", "/ready", "").await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(ready["revision"], "v2");
    assert_eq!(ready["last_load"]["revision"], "v3");
    assert_eq!(ready["last_load"]["outcome"], "refused");

    // Bad requests are told so, without a decision.
    let (status, body) = client.authorize("{not json").await.unwrap();
    assert_eq!(status, 400, "{body}");
    let (status, _) = client.request("GET", "/authorize", "").await.unwrap();
    assert_eq!(status, 405);
    let (status, _) = client.request("GET", "/nowhere", "").await.unwrap();
    assert_eq!(status, 404);

    service.stop().await;
}

/// Revision `k` allows `{"user": "alice", "k": k}` only, and only through
/// two modules and a data file together: an engine that mixed parts of two
/// revisions, or a revision reported from another policy than the one that
/// decided, would answer a pair no single revision gives.
fn revision(k: u64) -> Vec<u8> {
    support::tar_gz(&[
        (
            ".manifest",
            format!(r#"{{"revision":"v{k}","roots":["authz"]}}"#),
        ),
        (
            "authz/policy.rego",
            format!(
                "package authz\n\nimport data.authz.check\n\nallow if {{\n\tinput.user == \"alice\"\n\tinput.k == {k}\n\tcheck.ok\n}}\n"
            ),
        ),
        (
            "authz/check/check.rego",
            format!("package authz.check\n\nok if data.authz.expected == {k}\n"),
        ),
        ("authz/data.json", format!(r#"{{"expected": {k}}}"#)),
    ])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn swaps_under_load_give_whole_decisions() {
    const REVISIONS: u64 = 5;
    const TASKS: usize = 6;

    let setup = Setup::new();
    setup.publish(&revision(1), 0);
    let service = setup.start().await;
    let addr = service.addr();
    wait_for_revision(&mut Client::new(addr), r#"{"k": 1}"#, "v1").await;

    let stop = Arc::new(AtomicBool::new(false));
    let mut hammers = tokio::task::JoinSet::new();
    for task in 0..TASKS {
        let stop = stop.clone();
        hammers.spawn(async move {
            let mut client = Client::new(addr);
            // Each task asks about the last revision it saw, so a decision
            // of a revision it has caught up with must allow.
            let (mut k, mut seen, mut answers) = (1u64, BTreeSet::new(), 0u64);
            let mut violations = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let input = format!(r#"{{"user": "alice", "k": {k}}}"#);
                let (status, body) = match client.authorize(&input).await {
                    Ok(answer) => answer,
                    Err(e) => {
                        violations.push(format!("task {task}: {e}"));
                        continue;
                    }
                };
                answers += 1;
                let allow = body["allow"].as_bool();
                let r = body["revision"]
                    .as_str()
                    .and_then(|r| r.strip_prefix('v'))
                    .and_then(|r| r.parse::<u64>().ok())
                    .filter(|r| (1..=REVISIONS).contains(r));
                match (status, allow, r) {
                    (200, Some(allow), Some(r)) if allow == (r == k) && r >= k => {
                        seen.insert(r);
                        k = r;
                    }
                    _ => violations.push(format!(
                        "task {task}: asked k={k} after seeing v{k}, got {status} {body} (expected 200, v{k} or later, allow only from v{k})"
                    )),
                }
            }
            (seen, answers, k, violations)
        });
    }

    let mut reports = service.authorizer().reports();
    for k in 2..=REVISIONS {
        // Distinct mtimes: nginx's etag is mtime+size.
        setup.publish(&revision(k), 2 * k);
        let wanted = format!("v{k}");
        tokio::time::timeout(
            PATIENCE,
            reports.wait_for(|r| {
                r.as_ref().is_some_and(|r| {
                    r.revision == wanted && matches!(r.outcome, LoadOutcome::Loaded(_))
                })
            }),
        )
        .await
        .unwrap_or_else(|_| panic!("{wanted} was not loaded"))
        .unwrap();
        // Let the hammers answer with it for a while before the next swap.
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    stop.store(true, Ordering::Relaxed);

    let (mut seen, mut answers, mut violations) = (BTreeSet::new(), 0, Vec::new());
    while let Some(result) = hammers.join_next().await {
        let (task_seen, task_answers, last, task_violations) = result.unwrap();
        assert_eq!(last, REVISIONS, "a task ended on v{last}");
        seen.extend(task_seen);
        answers += task_answers;
        violations.extend(task_violations);
    }
    assert!(
        violations.is_empty(),
        "{} of {answers} answers were wrong:\n{}",
        violations.len(),
        violations.join("\n")
    );
    // Every revision decided something: the hammering spanned every swap.
    assert_eq!(seen, (1..=REVISIONS).collect::<BTreeSet<_>>());
    eprintln!("{answers} decisions across {} swaps", REVISIONS - 1);
    service.stop().await;
}

#[test]
fn the_binary_names_a_bad_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let config = support::config(dir.path(), "http://127.0.0.1:9");
    let missing = dir.path().join("missing.yaml");
    for (path, package, expected) in [
        (&missing, "authz", "missing.yaml"),
        (&config, "not-a-package", "package \"not-a-package\""),
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_edge-authz"))
            .arg("--config")
            .arg(path)
            .args(["--package", package, "--listen", "127.0.0.1:0"])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains(expected), "{stderr}");
    }
}
