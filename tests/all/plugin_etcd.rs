//! The example plugin `examples/fetchers/etcd` end to end: a service type
//! polhost does not ship, served by a component an operator adds under
//! `polhost.fetchers.etcd`, against a real etcd 3.4 whose values are
//! written with `etcdctl`. The bundle is the value of the key its
//! `resource` names; the key's `mod_revision` is its etag.

use std::path::Path;

use polhost::{Activation, Event, Limits, Source};
use sha2::Digest;

use crate::harness::etcd::Etcd;
use crate::harness::nginx::{AccessEntry, Nginx, NginxOptions};
use crate::harness::registry::{Registry, RegistryOptions, oras_push_wasm};
use crate::in_process;
use crate::support::*;

const ETCD: &str = polhost_test_programs::ETCD;
const KEY: &str = "/policies/authz";

/// A config for `polhost run` whose service `kv` (`type: etcd`, at `url`,
/// `extra_service` lines added) is served by the plugin entry `entry`
/// (lines under `polhost.fetchers.etcd`).
fn config(entry: &str, url: &str, extra_service: &str) -> String {
    format!(
        "polhost:
  fetchers:
    etcd:
{entry}
{}",
        agent_config(url, extra_service)
    )
}

/// The services and bundles of [`config`], without the plugin entry.
fn agent_config(url: &str, extra_service: &str) -> String {
    format!(
        "services:
  kv:
    url: {url}
    type: etcd
{extra_service}
bundles:
  authz:
    service: kv
    resource: {KEY}
    persist: true
    polling:
      min_delay_seconds: 1
      max_delay_seconds: 1
"
    )
}

/// The plugin entry for the component file.
fn file_entry() -> String {
    format!("      component: {ETCD}")
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(bytes))
}

/// A valid bundle at `revision` whose value is tens of KiB even gzipped
/// (random hex data), so that a response carrying it cannot be mistaken
/// for one that carries only the key.
fn large_bundle(revision: &str) -> Vec<u8> {
    let padding: String = (0..32 * 1024)
        .map(|_| char::from_digit(rand::random_range(0..16u32), 16).unwrap())
        .collect();
    bundle_with_data(
        revision,
        &format!(r#"{{"revision":"{revision}","padding":"{padding}"}}"#),
    )
}

/// How many bytes the gateway's JSON spends on a value: its base64.
fn base64_len(value: &[u8]) -> u64 {
    value.len().div_ceil(3) as u64 * 4
}

/// The activation of `authz` downloaded in `events` (`run_once` also
/// announces the persisted bundle it restores first).
fn downloaded(events: &[Event]) -> Option<&Activation> {
    events.iter().find_map(|event| match event {
        Event::Activated(a) if a.bundle == "authz" && a.source == Source::Download => Some(a),
        _ => None,
    })
}

/// The lines of `stderr` that report a failed download.
fn failures(stderr: &str) -> Vec<&str> {
    stderr
        .lines()
        .filter(|l| l.contains("bundle download failed"))
        .collect()
}

#[test]
fn a_file_plugin_activates_and_persists_the_bundle_stored_in_etcd() {
    let etcd = Etcd::start();
    let v1 = bundle("v1");
    let revision = etcd.put(KEY, &v1);
    let work = Workdir::new();
    let cfg = work.config(&config(&file_entry(), &etcd.url(), ""));

    let run = polhost(&["run", "--once", cfg.to_str().unwrap()], &[]);
    assert!(run.status.success(), "{}", run.stderr);
    assert_eq!(sha256_file(&work.persisted("authz")), sha256_hex(&v1));
    let metadata = work.metadata("authz");
    assert_eq!(metadata["revision"], "v1");
    assert_eq!(metadata["etag"], revision.to_string().as_str());
    assert_eq!(etcd.mod_revision(KEY), Some(revision));
    assert!(
        run.stderr.contains("fetcher=etcd"),
        "the bundle's span names the plugin: {}",
        run.stderr
    );
}

#[tokio::test]
async fn an_unchanged_key_transfers_no_value_and_a_changed_one_is_picked_up() {
    let etcd = Etcd::start();
    // nginx in front of etcd: its access log counts the bytes of each of
    // etcd's answers, which no fetcher-side account could prove.
    let www = tempfile::tempdir().unwrap();
    let proxy = Nginx::start(NginxOptions {
        root: www.path().to_path_buf(),
        proxy_to: Some(etcd.url()),
        ..NginxOptions::default()
    });
    let v1 = large_bundle("v1");
    let revision1 = etcd.put(KEY, &v1);
    let state = tempfile::tempdir().unwrap();
    let agent = in_process::agent(
        &agent_config(&proxy.url(), ""),
        state.path(),
        vec![in_process::plugin("etcd", ETCD)],
        Limits::default(),
    )
    .await
    .unwrap();
    let range = |entry: &AccessEntry| {
        entry.method == "POST" && entry.path == "/v3/kv/range" && entry.status == 200
    };

    let events = in_process::poll_once(&agent).await;
    let active = downloaded(&events).unwrap_or_else(|| panic!("{events:?}"));
    assert_eq!(active.revision, "v1");
    assert_eq!(active.etag.as_deref(), Some(revision1.to_string().as_str()));
    assert_eq!(active.sha256, sha256_hex(&v1));
    let persisted = active.path.clone();
    let log = proxy.access_log();
    // The key's revision alone, then its value.
    assert_eq!(log.len(), 2, "{log:?}");
    assert!(log.iter().all(range), "{log:?}");
    assert!(log[0].body_bytes < base64_len(&v1), "{log:?}");
    assert!(log[1].body_bytes >= base64_len(&v1), "{log:?}");

    for poll in 1..=2 {
        let events = in_process::poll_once(&agent).await;
        assert!(
            events
                .iter()
                .any(|e| matches!(e, Event::NotModified { bundle } if bundle == "authz")),
            "poll {poll}: {events:?}"
        );
        assert!(downloaded(&events).is_none(), "poll {poll}: {events:?}");
        let log = proxy.access_log();
        // One request per poll, whose answer is smaller than the value.
        assert_eq!(log.len(), 2 + poll, "{log:?}");
        let last = log.last().unwrap();
        assert!(range(last), "{log:?}");
        assert!(last.body_bytes < base64_len(&v1), "{log:?}");
    }
    assert_eq!(sha256_file(&persisted), sha256_hex(&v1));

    let v2 = large_bundle("v2");
    let revision2 = etcd.put(KEY, &v2);
    assert!(revision2 > revision1);
    let events = in_process::poll_once(&agent).await;
    let active = downloaded(&events).unwrap_or_else(|| panic!("{events:?}"));
    assert_eq!(active.revision, "v2");
    assert_eq!(active.etag.as_deref(), Some(revision2.to_string().as_str()));
    assert_eq!(sha256_file(&active.path), sha256_hex(&v2));
    let log = proxy.access_log();
    assert_eq!(log.len(), 6, "{log:?}");
    assert!(log[4].body_bytes < base64_len(&v2), "{log:?}");
    assert!(log[5].body_bytes >= base64_len(&v2), "{log:?}");
}

#[test]
fn an_oci_plugin_runs_from_the_cache_with_the_registry_down() {
    let etcd = Etcd::start();
    etcd.put(KEY, &bundle("v1"));
    let mut registry = Registry::start(RegistryOptions::default());
    let (manifest, layer) = oras_push_wasm(&registry, "fetchers/etcd:1.0.0", Path::new(ETCD));
    let work = Workdir::new();
    let cache = work.path().join("cache");
    let env = [("XDG_CACHE_HOME", cache.to_str().unwrap())];
    let entry = format!(
        "      component: oci://{}/fetchers/etcd:1.0.0@{manifest}\n      digest: {layer}",
        registry.host()
    );
    let cfg = work.config(&config(&entry, &etcd.url(), ""));

    let run = polhost(&["run", "--once", cfg.to_str().unwrap()], &env);
    assert!(run.status.success(), "{}", run.stderr);
    assert_eq!(work.metadata("authz")["revision"], "v1");

    // With the registry gone, only the cached component can fetch v2.
    registry.stop();
    let v2 = bundle("v2");
    let revision2 = etcd.put(KEY, &v2);
    let run = polhost(&["run", "--once", cfg.to_str().unwrap()], &env);
    assert!(run.status.success(), "{}", run.stderr);
    assert_eq!(work.metadata("authz")["revision"], "v2");
    assert_eq!(
        work.metadata("authz")["etag"],
        revision2.to_string().as_str()
    );
    assert_eq!(sha256_file(&work.persisted("authz")), sha256_hex(&v2));
}

#[test]
fn a_missing_key_fails_run_once_as_not_found_naming_the_key_and_url() {
    let etcd = Etcd::start();
    etcd.put("/policies/other", &bundle("v1"));
    let work = Workdir::new();
    let cfg = work.config(&config(&file_entry(), &etcd.url(), ""));

    let run = polhost(&["run", "--once", cfg.to_str().unwrap()], &[]);
    assert_eq!(run.status.code(), Some(1), "{}", run.stderr);
    let errors = failures(&run.stderr);
    assert_eq!(errors.len(), 1, "{}", run.stderr);
    assert!(
        errors[0].contains(&format!("POST {}/v3/kv/range", etcd.url()))
            && errors[0].contains(&format!("etcd has no key \"{KEY}\""))
            && errors[0].contains("kind=\"not-found\""),
        "{}",
        run.stderr
    );
    assert!(!work.persisted("authz").exists());
}

#[test]
fn a_token_from_a_granted_variable_reads_a_key_of_an_etcd_with_authentication() {
    let mut etcd = Etcd::start();
    let v1 = bundle("v1");
    etcd.put(KEY, &v1);
    let token = etcd.enable_auth("reader", "/policies/");
    let work = Workdir::new();
    let entry = format!("{}\n      env: [KV_TOKEN]", file_entry());
    let credentials = "    credentials:\n      etcd_token: {env: KV_TOKEN}";
    let cfg = work.config(&config(&entry, &etcd.url(), credentials));

    let run = polhost(
        &["run", "--once", cfg.to_str().unwrap()],
        &[("KV_TOKEN", token.as_str())],
    );
    assert!(run.status.success(), "{}", run.stderr);
    assert_eq!(sha256_file(&work.persisted("authz")), sha256_hex(&v1));
    assert!(!run.stderr.contains(&token), "the token leaked");
}

#[test]
fn a_refused_or_missing_token_fails_with_the_right_kind_and_names_no_secret() {
    let mut etcd = Etcd::start();
    etcd.put(KEY, &bundle("v1"));
    let token = etcd.enable_auth("reader", "/policies/");
    let work = Workdir::new();
    let granted = format!("{}\n      env: [KV_TOKEN]", file_entry());
    let credentials = "    credentials:\n      etcd_token: {env: KV_TOKEN}";
    // A stale token's shape: etcd's simple tokens are `<random>.<raft index>`,
    // and etcd waits for that index to be applied before it checks one.
    let index = token.rsplit_once('.').expect("a simple token").1;
    let wrong = format!("not-the-token.{index}");
    let cases = [
        // etcd answers a request without a token with 400.
        (
            config(&granted, &etcd.url(), ""),
            wrong.as_str(),
            "etcd answered 400: etcdserver: user name is empty (gRPC code 3); etcd has authentication enabled: configure credentials.etcd_token",
            "unauthorized",
        ),
        (
            config(&granted, &etcd.url(), credentials),
            wrong.as_str(),
            "etcd answered 401: etcdserver: invalid auth token (gRPC code 16)",
            "unauthorized",
        ),
        // The operator did not grant the variable: the plugin never sees
        // the token, and the config is what to fix.
        (
            config(&file_entry(), &etcd.url(), credentials),
            token.as_str(),
            "services.kv.credentials.etcd_token.env: the token's variable KV_TOKEN is unset, empty or not granted to this fetcher",
            "invalid-config",
        ),
    ];
    for (text, value, expected, kind) in cases {
        let cfg = work.config(&text);
        let run = polhost(
            &["run", "--once", cfg.to_str().unwrap()],
            &[("KV_TOKEN", value)],
        );
        assert_eq!(run.status.code(), Some(1), "{text}\n{}", run.stderr);
        let errors = failures(&run.stderr);
        assert_eq!(errors.len(), 1, "{}", run.stderr);
        assert!(
            errors[0].contains(expected) && errors[0].contains(&format!("kind=\"{kind}\"")),
            "expected {expected:?} and kind {kind} in:\n{}",
            run.stderr
        );
        assert!(
            !run.stderr.contains(value),
            "the token leaked: {}",
            run.stderr
        );
        assert!(!work.persisted("authz").exists());
    }
}
