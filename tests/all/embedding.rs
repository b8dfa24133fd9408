//! The library as an embedder drives it: a snapshot of the active bundle
//! whose bytes stay readable while newer ones arrive, download progress,
//! and a check that starts nothing.

use std::io::Read;
use std::sync::{Arc, Mutex};

use polhost::config::Config;
use polhost::{Agent, Limits};
use sha2::Digest;

use crate::harness::nginx::{Nginx, NginxOptions};
use crate::in_process;
use crate::support::*;

fn served(root: &std::path::Path, content: &[u8], age: u64) {
    publish(&root.join("bundles/authz.tar.gz"), content, age);
}

fn config(url: &str) -> String {
    format!(
        "services:\n  web:\n    url: {url}\nbundles:\n  authz:\n    service: web\n    resource: bundles/authz.tar.gz\n    persist: true\n"
    )
}

fn sha256_of(reader: &mut impl Read) -> String {
    let mut bytes = Vec::new();
    reader.read_to_end(&mut bytes).unwrap();
    hex::encode(sha2::Sha256::digest(&bytes))
}

#[tokio::test]
async fn an_activation_reads_its_own_bytes_after_a_newer_one_replaced_the_file() {
    let root = tempfile::tempdir().unwrap();
    let v1 = bundle("v1");
    served(root.path(), &v1, 0);
    let server = Nginx::start(NginxOptions {
        root: root.path().to_path_buf(),
        ..NginxOptions::default()
    });
    let state = tempfile::tempdir().unwrap();
    let agent = in_process::agent(
        &config(&server.url()),
        state.path(),
        vec![],
        Limits::default(),
    )
    .await
    .unwrap();
    agent.run_once().await;
    let first = agent.current("authz").expect("v1 is active");
    assert_eq!(first.revision, "v1");

    served(root.path(), &bundle("v2"), 5);
    agent.run_once().await;
    let second = agent.current("authz").expect("v2 is active");
    assert_eq!(second.revision, "v2");
    // The file on disk is v2 now; the first activation still reads v1,
    // exactly, and two readers of it do not share a position.
    assert_eq!(sha256_file(&first.path), second.sha256);
    let mut a = first.reader();
    let mut b = first.reader();
    let mut head = [0u8; 10];
    a.read_exact(&mut head).unwrap();
    assert_eq!(sha256_of(&mut b), first.sha256);
    assert_eq!(first.sha256, hex::encode(sha2::Sha256::digest(&v1)));
    assert_eq!(sha256_of(&mut second.reader()), second.sha256);
    assert_eq!(agent.current("nosuch").map(|a| a.revision), None);
}

#[tokio::test]
async fn progress_is_reported_as_a_download_streams() {
    let root = tempfile::tempdir().unwrap();
    // 3 MiB that gzip cannot shrink: several chunks.
    let big = tar_gz(&[
        (".manifest", br#"{"revision":"big"}"#.to_vec()),
        ("blob.bin", noise(3 << 20, 7)),
    ]);
    served(root.path(), &big, 0);
    let server = Nginx::start(NginxOptions {
        root: root.path().to_path_buf(),
        ..NginxOptions::default()
    });
    let state = tempfile::tempdir().unwrap();
    let seen: Arc<Mutex<Vec<(String, u64)>>> = Arc::default();
    let record = seen.clone();
    let config = Config::parse(&config(&server.url()), &|_| None).unwrap();
    let agent = Agent::builder(config)
        .fetchers(polhost_fetchers::registry())
        .persistence_directory(state.path())
        .progress(move |bundle, bytes| record.lock().unwrap().push((bundle.to_string(), bytes)))
        .build()
        .await
        .unwrap();
    agent.run_once().await;
    assert_eq!(agent.current("authz").unwrap().size, big.len() as u64);
    let seen = seen.lock().unwrap();
    assert!(seen.len() >= 3, "{} reports", seen.len());
    assert!(seen.iter().all(|(bundle, _)| bundle == "authz"));
    assert!(seen.windows(2).all(|w| w[0].1 < w[1].1), "not increasing");
    assert_eq!(seen.last().unwrap().1, big.len() as u64);
    // The builder's directory, not the config's default `./.opa`.
    assert!(state.path().join("bundles/authz/bundle.tar.gz").is_file());
}

#[tokio::test]
async fn check_reports_each_used_service_and_touches_nothing() {
    let state = tempfile::tempdir().unwrap();
    let persistence = state.path().join("never-created");
    let config = Config::parse(
        &format!(
            "services:\n  web:\n    url: https://bundles.example.com\n    credentials: {{bearer: {{token_path: /run/token}}}}\n  logs:\n    url: https://logs.example.com\n    type: nosuch\nbundles:\n  authz: {{service: web}}\npersistence_directory: {}\n",
            persistence.display()
        ),
        &|_| None,
    )
    .unwrap();
    let plans = Agent::builder(config)
        .fetchers(polhost_fetchers::registry())
        .check()
        .await
        .unwrap();
    // `logs` is used by no bundle: no fetcher needed, none reported.
    assert_eq!(plans.len(), 1, "{plans:?}");
    let plan = &plans[0];
    assert_eq!(
        (plan.service.as_str(), plan.fetcher.as_str()),
        ("web", "http")
    );
    let http = polhost_fetchers::component("http").unwrap();
    assert_eq!(
        plan.digest,
        format!("sha256:{}", hex::encode(sha2::Sha256::digest(http)))
    );
    assert_eq!(
        plan.grant.describe(),
        "origins: https://bundles.example.com:443; files: /run/token; env: none"
    );
    assert_eq!(plan.limits.max_requests, Limits::default().max_requests);
    assert!(!persistence.exists());
}
