//! Hostile fetcher components (guest/fixtures/hostile) as an operator's
//! plugin: each attempt to leave or abuse the sandbox must end in a failed
//! poll that names the service, the fetcher and the violation, with
//! nothing activated or persisted, while the agent's other bundles keep
//! updating. The limits the fixture exhausts (CPU, memory, requests) are
//! in sandbox_limits.rs, on the helpers here.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use polhost::config::Config;
use polhost::{Activation, Agent, Event, FailureKind, GrantRule, Limits};
use sha2::Digest;

use crate::harness::nginx::{AccessEntry, Nginx, NginxOptions};
use crate::in_process::{self, activation, collect_until};
use crate::support::{PATIENCE, bundle, publish, sha256_file};

pub(crate) const HOSTILE: &str = polhost_test_programs::HOSTILE;

/// Nothing listens there: for attempts that send no request.
pub(crate) const NOWHERE: &str = "http://127.0.0.1:9";

/// A failed poll, as the agent announced it.
#[derive(Debug)]
pub(crate) struct Failure {
    pub kind: FailureKind,
    pub message: String,
    pub service: String,
    pub fetcher: String,
}

/// The first failure announced for `bundle`.
pub(crate) fn failure_of(events: &[Event], bundle: &str) -> Option<Failure> {
    events.iter().find_map(|event| match event {
        Event::Failed {
            bundle: b,
            service,
            fetcher,
            kind,
            message,
            ..
        } if b == bundle => Some(Failure {
            kind: *kind,
            message: message.clone(),
            service: service.clone(),
            fetcher: fetcher.clone(),
        }),
        _ => None,
    })
}

/// An agent whose service `svc` (at `url`) is served by a plugin of type
/// `hostile`, and whose bundles (persisted, so that "nothing persisted"
/// is checked on disk) each pick an attempt by their resource.
pub(crate) struct Setup {
    pub url: String,
    /// The component serving `svc`.
    pub component: &'static str,
    pub limits: Limits,
    /// The plugin's grant, beyond its service URL (default: nothing).
    pub grant: Option<GrantRule>,
    /// The environment the agent looks granted variables up in.
    pub env: Vec<(&'static str, &'static str)>,
    /// YAML set on every bundle (e.g. `size_limit_bytes: 4096`).
    pub bundle_settings: Vec<String>,
}

/// Bounds small enough to hit fast.
pub(crate) fn small_limits() -> Limits {
    Limits {
        memory_bytes: 32 << 20,
        max_requests: 5,
        fetch_timeout: Duration::from_secs(2),
        ..Limits::default()
    }
}

impl Setup {
    pub(crate) fn new(url: &str) -> Setup {
        Setup {
            url: url.to_string(),
            component: HOSTILE,
            limits: small_limits(),
            grant: None,
            env: Vec::new(),
            bundle_settings: Vec::new(),
        }
    }

    /// The configuration: `svc`, then `extra_services` (YAML under
    /// `services:`), and `bundles` as (name, resource) of `svc`.
    fn yaml(&self, extra_services: &str, bundles: &[(&str, &str)]) -> String {
        let mut yaml = format!(
            "services:\n  svc:\n    url: {}\n    type: hostile\n{extra_services}bundles:\n",
            self.url
        );
        for (name, resource) in bundles {
            yaml.push_str(&format!(
                "  {name}:\n    service: svc\n    resource: {resource:?}\n    persist: true\n"
            ));
            for setting in &self.bundle_settings {
                yaml.push_str(&format!("    {setting}\n"));
            }
        }
        yaml
    }

    /// Builds the agent for `yaml` with the standard fetchers and the
    /// hostile plugin, its state in `state`.
    pub(crate) async fn agent_for(&self, yaml: &str, state: &Path) -> Agent {
        let text = format!("{yaml}\npersistence_directory: {}\n", state.display());
        let config = Config::parse(&text, &|_| None).expect("test config parses");
        let mut descriptor = in_process::plugin("hostile", self.component);
        if let Some(grant) = &self.grant {
            descriptor = descriptor.with_grant(grant.clone());
        }
        let env = self.env.clone();
        Agent::builder(config)
            .env(move |name| {
                env.iter()
                    .find(|(n, _)| *n == name)
                    .map(|(_, v)| v.to_string())
            })
            .fetchers(polhost_fetchers::registry())
            .fetcher(descriptor)
            .limits(self.limits)
            .build()
            .await
            .expect("the agent starts")
    }

    /// Polls every bundle once.
    pub(crate) async fn poll(&self, bundles: &[(&str, &str)]) -> Polled {
        let state = tempfile::tempdir().unwrap();
        let agent = self.agent_for(&self.yaml("", bundles), state.path()).await;
        let events = in_process::poll_once(&agent).await;
        Polled {
            agent,
            events,
            state,
        }
    }

    /// Polls one bundle `b` once and returns its failure, checked for
    /// containment (see [`Polled::contained`]).
    pub(crate) async fn contained(&self, resource: &str) -> Failure {
        self.poll(&[("b", resource)]).await.contained("b")
    }

    /// Polls one bundle `b` once and returns its activation: the control
    /// that an attempt's bytes are a bundle the host accepts.
    pub(crate) async fn activated(&self, resource: &str) -> Activation {
        let polled = self.poll(&[("b", resource)]).await;
        let active = activation(&polled.events, "b")
            .unwrap_or_else(|| panic!("{resource}: not activated: {:?}", polled.events))
            .clone();
        // It was persisted, and what is on disk is what was announced.
        assert_eq!(sha256_file(&active.path), active.sha256);
        assert!(active.path.starts_with(polled.bundle_dir("b")));
        active
    }
}

/// One poll's outcome.
pub(crate) struct Polled {
    pub agent: Agent,
    pub events: Vec<Event>,
    pub state: tempfile::TempDir,
}

impl Polled {
    /// Where `bundle` (persisted) is kept.
    pub(crate) fn bundle_dir(&self, bundle: &str) -> PathBuf {
        self.state.path().join("bundles").join(bundle)
    }

    /// The failure of `bundle`, having checked that it is contained: the
    /// event names service `svc` and fetcher `hostile`, no bundle is
    /// active, and its directory holds nothing (no bundle, no metadata,
    /// no leftover temp file).
    pub(crate) fn contained(&self, bundle: &str) -> Failure {
        let failure = failure_of(&self.events, bundle)
            .unwrap_or_else(|| panic!("{bundle}: not stopped: {:?}", self.events));
        assert_eq!(failure.service, "svc", "{failure:?}");
        assert_eq!(failure.fetcher, "hostile", "{failure:?}");
        assert!(
            activation(&self.events, bundle).is_none() && self.agent.active().is_empty(),
            "{bundle}: a bundle became active: {:?}",
            self.agent.active()
        );
        assert_empty_dir(&self.bundle_dir(bundle));
        failure
    }
}

fn assert_empty_dir(dir: &Path) {
    let left: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "{} holds {left:?}", dir.display());
}

/// The paths (with statuses) an nginx was asked for.
fn requests(server: &Nginx) -> Vec<(String, u16)> {
    server
        .access_log()
        .into_iter()
        .map(|AccessEntry { path, status, .. }| (path, status))
        .collect()
}

fn nginx(root: &Path) -> Nginx {
    Nginx::start(NginxOptions {
        root: root.to_path_buf(),
        ..NginxOptions::default()
    })
}

/// What the sandbox says when `url`'s origin (`origin`) is refused to
/// service `svc`, granted only `granted`.
fn refused(url: &str, origin: &str, granted: &str) -> String {
    format!(
        "sandbox refused request to {url}: origin {origin} is not granted to service \"svc\" (granted: {granted})"
    )
}

#[tokio::test]
async fn the_made_up_bundle_is_activated_when_nothing_else_is_wrong() {
    // The control for every attempt below that returns the fixture's
    // made-up bundle: those bytes are a bundle the host accepts, so only
    // the attempt's violation can be why it is refused.
    let active = Setup::new(NOWHERE).activated("bundle").await;
    assert_eq!(active.revision, "x");
    assert_eq!(active.roots, vec![String::new()]);
}

#[tokio::test]
async fn the_metadata_endpoint_is_refused_before_any_connection() {
    // The granted origin: where the fixture reports what it saw.
    let root = tempfile::tempdir().unwrap();
    let granted = nginx(root.path());
    let target = "http://169.254.169.254/latest/meta-data/";
    let failure = Setup::new(&granted.url())
        .contained(&format!("escape:{target}"))
        .await;
    assert_eq!(failure.kind, FailureKind::Sandbox, "{failure:?}");
    assert_eq!(
        failure.message,
        refused(
            target,
            "http://169.254.169.254:80",
            &format!("http://127.0.0.1:{}", granted.port())
        )
    );
    // The guest got wasi:http's HttpRequestDenied, which only the sandbox
    // hook answers, and before sending anything: a request that had gone
    // out would have failed otherwise (no route, a timeout) or answered.
    // It then returned its made-up bundle as `fetched`, refused above.
    assert_eq!(
        requests(&granted),
        vec![("/escape-result/denied".to_string(), 404)]
    );
}

#[tokio::test]
async fn another_loopback_port_is_refused_and_never_asked() {
    let work = tempfile::tempdir().unwrap();
    let granted = nginx(&work.path().join("granted"));
    // A second server on 127.0.0.1 with a bundle to steal: it must never
    // see a request.
    let elsewhere_root = work.path().join("elsewhere");
    publish(
        &elsewhere_root.join("bundles/authz.tar.gz"),
        &bundle("evil"),
        0,
    );
    let elsewhere = nginx(&elsewhere_root);
    let target = format!("{}/bundles/authz.tar.gz", elsewhere.url());

    let failure = Setup::new(&granted.url())
        .contained(&format!("escape:{target}"))
        .await;
    assert_eq!(failure.kind, FailureKind::Sandbox, "{failure:?}");
    assert_eq!(
        failure.message,
        refused(
            &target,
            &format!("http://127.0.0.1:{}", elsewhere.port()),
            &format!("http://127.0.0.1:{}", granted.port())
        )
    );
    assert_eq!(requests(&elsewhere), vec![]);
    assert_eq!(
        requests(&granted),
        vec![("/escape-result/denied".to_string(), 404)]
    );
}

#[tokio::test]
async fn a_real_bundle_from_the_granted_origin_does_not_cover_a_denied_request() {
    // The fetcher tries another origin, is refused, then fetches a genuine
    // bundle from its own origin and returns it as `fetched`: the fetch
    // still fails, so the operator sees the attempt.
    let work = tempfile::tempdir().unwrap();
    let granted_root = work.path().join("granted");
    publish(&granted_root.join("bundles/authz.tar.gz"), &bundle("v1"), 0);
    let granted = nginx(&granted_root);
    let elsewhere = nginx(&work.path().join("elsewhere"));
    let target = format!("{}/bundles/other.tar.gz", elsewhere.url());

    let failure = Setup::new(&granted.url())
        .contained(&format!("escape:{target} bundles/authz.tar.gz"))
        .await;
    assert_eq!(failure.kind, FailureKind::Sandbox, "{failure:?}");
    assert_eq!(
        failure.message,
        refused(
            &target,
            &format!("http://127.0.0.1:{}", elsewhere.port()),
            &format!("http://127.0.0.1:{}", granted.port())
        )
    );
    // It did get the whole bundle (the http fetcher activates these very
    // bytes elsewhere in the suite): the denial alone refused it.
    assert_eq!(
        requests(&granted),
        vec![
            ("/escape-result/denied".to_string(), 404),
            ("/bundles/authz.tar.gz".to_string(), 200)
        ]
    );
    assert_eq!(requests(&elsewhere), vec![]);
}

#[tokio::test]
async fn environment_variables_not_granted_are_not_seen() {
    let mut setup = Setup::new(NOWHERE);
    setup.grant = Some(GrantRule::Declared {
        origins: vec![],
        env: vec!["POLHOST_TEST_GRANTED".into()],
        files: vec![],
    });
    // The agent's environment has both; only the granted one may show.
    setup.env = vec![
        ("POLHOST_TEST_GRANTED", "visible"),
        ("POLHOST_TEST_SECRET", "hidden"),
    ];
    let polled = setup
        .poll(&[
            ("granted", "env:POLHOST_TEST_GRANTED"),
            ("secret", "env:POLHOST_TEST_SECRET"),
        ])
        .await;
    // The fixture reports what it read as an invalid-config failure of its
    // own: the host's part is what `granted-env` and WASI's environment
    // gave it.
    let granted = polled.contained("granted");
    assert_eq!(granted.kind, FailureKind::InvalidConfig, "{granted:?}");
    assert_eq!(
        granted.message,
        // The control: the lookup works, and even a granted variable is
        // not in WASI's environment.
        "granted-env POLHOST_TEST_GRANTED: Some(\"visible\"); std::env::var: None"
    );
    let secret = polled.contained("secret");
    assert_eq!(secret.kind, FailureKind::InvalidConfig, "{secret:?}");
    assert_eq!(
        secret.message,
        "granted-env POLHOST_TEST_SECRET: None; std::env::var: None"
    );
}

#[tokio::test]
async fn files_not_granted_are_refused_beside_a_granted_one() {
    let dir = tempfile::tempdir().unwrap();
    let granted = dir.path().join("token");
    let secret = dir.path().join("secret");
    std::fs::write(&granted, "token-value").unwrap();
    std::fs::write(&secret, "secret-value").unwrap();
    let mut setup = Setup::new(NOWHERE);
    setup.grant = Some(GrantRule::Declared {
        origins: vec![],
        env: vec![],
        files: vec![granted.clone()],
    });
    let secret = secret.display().to_string();
    // The granted path, then `..` back to the secret one beside it.
    let traversal = format!("{}/../secret", granted.display());
    let polled = setup
        .poll(&[
            ("granted", &format!("read:{}", granted.display())),
            ("secret", &format!("read:{secret}")),
            ("traversal", &format!("read:{traversal}")),
        ])
        .await;
    // The control: the granted file is read (the fixture reports its size
    // as a protocol failure of its own).
    let read = polled.contained("granted");
    assert_eq!(read.kind, FailureKind::Protocol, "{read:?}");
    assert_eq!(
        read.message,
        format!("read 11 bytes of {}", granted.display())
    );
    for (bundle, path) in [("secret", &secret), ("traversal", &traversal)] {
        let failure = polled.contained(bundle);
        assert_eq!(failure.kind, FailureKind::Sandbox, "{failure:?}");
        assert_eq!(
            failure.message,
            format!("sandbox refused read of file {path:?}: not granted to service \"svc\"")
        );
    }
}

#[tokio::test]
async fn output_past_size_limit_bytes_is_refused() {
    // 64 KiB of valid bundle into a bundle limited to 8 KiB; the fixture
    // ignores the failed write and claims success.
    let mut setup = Setup::new(NOWHERE);
    setup.bundle_settings = vec!["size_limit_bytes: 8192".into()];
    let failure = setup.contained("oversize:65536").await;
    assert_eq!(failure.kind, FailureKind::SizeLimit, "{failure:?}");
    assert_eq!(
        failure.message,
        "bundle exceeds size_limit_bytes (8192 bytes); download stopped"
    );
    // The control: the same bytes under a larger limit are a good bundle,
    // so the limit alone refused them.
    setup.bundle_settings = vec!["size_limit_bytes: 1048576".into()];
    let active = setup.activated("oversize:65536").await;
    assert!(active.size > 65536, "{active:?}");
    assert_eq!(active.revision, "x");
}

#[tokio::test]
async fn a_trap_mid_bundle_is_the_fetchers_failure() {
    // Half a bundle written, then a panic (an `unreachable` trap).
    let failure = Setup::new(NOWHERE).contained("trap").await;
    assert_eq!(failure.kind, FailureKind::Fetcher, "{failure:?}");
    assert!(
        failure.message.starts_with("fetcher \"hostile\" trapped: "),
        "{failure:?}"
    );
    assert!(failure.message.contains("unreachable"), "{failure:?}");
}

#[tokio::test]
async fn a_digest_the_bytes_do_not_have_is_refused() {
    let setup = Setup::new(NOWHERE);
    // The control: vouching for the bytes' true digest is accepted, and
    // tells the digest of the bytes the next attempt writes too.
    let actual = setup.activated("digest:self").await.sha256;
    let announced = hex::encode(sha2::Sha256::digest(b"some other bundle"));
    assert_ne!(announced, actual);
    let failure = setup.contained(&format!("digest:{announced}")).await;
    assert_eq!(failure.kind, FailureKind::InvalidBundle, "{failure:?}");
    assert_eq!(
        failure.message,
        format!(
            "digest mismatch: the service announced sha256:{announced}, the bytes are sha256:{actual}"
        )
    );
}

fn failures_of(events: &[Event], bundle: &str) -> usize {
    events
        .iter()
        .filter(|e| matches!(e, Event::Failed { bundle: b, .. } if b == bundle))
        .count()
}

fn activated_revision(events: &[Event], bundle: &str, revision: &str) -> bool {
    events
        .iter()
        .any(|e| matches!(e, Event::Activated(a) if a.bundle == bundle && a.revision == revision))
}

#[tokio::test]
async fn a_hostile_plugin_never_stops_the_other_bundles() {
    // One agent: two bundles of the hostile plugin, one trying another
    // origin and one flooding its own, polled every second; and a normal
    // bundle of the standard http fetcher, which must get v1, then v2
    // published while the hostile ones keep failing.
    let work = tempfile::tempdir().unwrap();
    let root = work.path().join("www");
    publish(&root.join("bundles/authz.tar.gz"), &bundle("v1"), 0);
    let server = nginx(&root);
    let elsewhere = nginx(&work.path().join("elsewhere"));
    let target = format!("{}/bundles/authz.tar.gz", elsewhere.url());

    let mut setup = Setup::new(&server.url());
    setup.bundle_settings = vec![
        "polling:".into(),
        "  min_delay_seconds: 1".into(),
        "  max_delay_seconds: 1".into(),
    ];
    let web = format!("  web:\n    url: {}\n", server.url());
    let mut yaml = setup.yaml(
        &web,
        &[
            ("escape", &format!("escape:{target}")),
            ("flood", "requests"),
        ],
    );
    yaml.push_str(
        "  authz:\n    service: web\n    resource: bundles/authz.tar.gz\n    persist: true\n    polling:\n      min_delay_seconds: 1\n      max_delay_seconds: 1\n",
    );
    let state = tempfile::tempdir().unwrap();
    let agent = Arc::new(setup.agent_for(&yaml, state.path()).await);
    let mut events = agent.subscribe();
    let shutdown = in_process::run_in_background(agent.clone());

    let mut seen = Vec::new();
    collect_until(&mut events, &mut seen, PATIENCE, "authz v1", |seen| {
        activated_revision(seen, "authz", "v1")
    })
    .await;
    // The hostile bundles go on failing after v1 is in...
    let before = (failures_of(&seen, "escape"), failures_of(&seen, "flood"));
    collect_until(
        &mut events,
        &mut seen,
        PATIENCE,
        "hostile failures after v1",
        |seen| {
            failures_of(seen, "escape") >= before.0 + 2
                && failures_of(seen, "flood") >= before.1 + 2
        },
    )
    .await;
    // ...and v2 (a new mtime, so a new etag) still gets through.
    publish(&root.join("bundles/authz.tar.gz"), &bundle("v2"), 10);
    collect_until(&mut events, &mut seen, PATIENCE, "authz v2", |seen| {
        activated_revision(seen, "authz", "v2")
    })
    .await;
    let before = (failures_of(&seen, "escape"), failures_of(&seen, "flood"));
    collect_until(
        &mut events,
        &mut seen,
        PATIENCE,
        "hostile failures after v2",
        |seen| failures_of(seen, "escape") > before.0 && failures_of(seen, "flood") > before.1,
    )
    .await;
    shutdown.cancel();

    // Every poll of a hostile bundle failed, as the sandbox's refusal.
    let escape = refused(
        &target,
        &format!("http://127.0.0.1:{}", elsewhere.port()),
        &format!("http://127.0.0.1:{}", server.port()),
    );
    for event in &seen {
        match event {
            Event::Failed {
                bundle,
                service,
                fetcher,
                kind,
                message,
                ..
            } => {
                assert_ne!(bundle, "authz", "the normal bundle failed: {event:?}");
                assert_eq!((service.as_str(), fetcher.as_str()), ("svc", "hostile"));
                assert_eq!(*kind, FailureKind::Sandbox, "{event:?}");
                if bundle == "escape" {
                    assert_eq!(message, &escape);
                } else {
                    assert!(
                        message.ends_with(": more than 5 requests in one fetch of service \"svc\""),
                        "{event:?}"
                    );
                }
            }
            Event::Activated(active) => {
                assert_eq!(active.bundle, "authz", "{event:?}");
            }
            _ => {}
        }
    }
    let active: Vec<_> = agent
        .active()
        .into_iter()
        .map(|a| (a.bundle, a.revision))
        .collect();
    assert_eq!(active, vec![("authz".to_string(), "v2".to_string())]);
    for hostile in ["escape", "flood"] {
        assert_empty_dir(&state.path().join("bundles").join(hostile));
    }
    assert_eq!(requests(&elsewhere), vec![]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spinning_fetchers_do_not_hold_up_the_other_bundles() {
    // Two worker threads, as the CLI's runtime has on a two-core machine.
    // Two bundles whose fetcher burns CPU until its 8 s deadline, and a
    // normal bundle that takes milliseconds: it must not wait for them.
    let root = tempfile::tempdir().unwrap();
    publish(&root.path().join("bundles/authz.tar.gz"), &bundle("v1"), 0);
    let server = nginx(root.path());
    let mut setup = Setup::new(NOWHERE);
    setup.limits.fetch_timeout = Duration::from_secs(8);
    let web = format!("  web:\n    url: {}\n", server.url());
    let mut yaml = setup.yaml(&web, &[("spin1", "spin"), ("spin2", "spin")]);
    yaml.push_str("  authz:\n    service: web\n    resource: bundles/authz.tar.gz\n");
    let state = tempfile::tempdir().unwrap();
    let agent = Arc::new(setup.agent_for(&yaml, state.path()).await);
    let mut events = agent.subscribe();
    let start = Instant::now();
    let shutdown = in_process::run_in_background(agent.clone());
    let mut seen = Vec::new();
    collect_until(
        &mut events,
        &mut seen,
        PATIENCE,
        "authz v1 while two fetchers spin",
        |seen| activated_revision(seen, "authz", "v1"),
    )
    .await;
    let took = start.elapsed();
    shutdown.cancel();
    assert!(
        took < Duration::from_secs(4),
        "authz was activated only after {took:?}: the spinning fetchers held the runtime's threads"
    );
}
