//! The sandbox as a user sees it: a fetcher cannot reach an origin its
//! service was not granted, even when the service redirects there.

use polhost::{FailureKind, Limits, Source};

use crate::harness::nginx::{Nginx, NginxOptions};
use crate::in_process::{self, activation, failure};
use crate::support::*;

#[tokio::test]
async fn redirect_to_another_origin_is_refused_and_active_bundle_stays() {
    let work = Workdir::new();
    let root = work.path().join("www");
    publish(&root.join("bundles/authz.tar.gz"), &bundle("v1"), 0);
    // Another server, holding a different bundle: it must never be asked.
    let elsewhere_root = work.path().join("elsewhere");
    publish(
        &elsewhere_root.join("bundles/authz.tar.gz"),
        &bundle("evil"),
        0,
    );
    let elsewhere = Nginx::start(NginxOptions {
        root: elsewhere_root,
        ..NginxOptions::default()
    });
    let target = format!("{}/bundles/authz.tar.gz", elsewhere.url());
    let server = Nginx::start(NginxOptions {
        root: root.clone(),
        redirects: vec![("/moved/authz.tar.gz".into(), target.clone())],
        ..NginxOptions::default()
    });

    let config = |resource: &str| {
        format!(
            "services:\n  web:\n    url: {}\nbundles:\n  authz:\n    resource: {resource}\n    persist: true\n",
            server.url()
        )
    };
    let first = in_process::agent(
        &config("bundles/authz.tar.gz"),
        &work.state(),
        vec![],
        Limits::default(),
    )
    .await
    .expect("the agent starts");
    let (inactive, events) = in_process::poll_counting(&first).await;
    assert_eq!(inactive, 0, "{events:?}");
    let active = sha256_file(&work.persisted("authz"));
    drop(first);

    // The service moved the bundle to the other origin: a new agent on the
    // same directory, asking for the moved resource.
    let agent = in_process::agent(
        &config("moved/authz.tar.gz"),
        &work.state(),
        vec![],
        Limits::default(),
    )
    .await
    .expect("the agent starts");
    let (inactive, events) = in_process::poll_counting(&agent).await;
    let expected = format!(
        "sandbox refused request to {target}: origin http://127.0.0.1:{} is not granted to service \"web\" (granted: http://127.0.0.1:{})",
        elsewhere.port(),
        server.port()
    );
    let (kind, message, fetcher) = failure(&events, "authz").expect("the poll failed");
    assert_eq!(kind, FailureKind::Sandbox, "{message}");
    assert_eq!(fetcher, "http");
    assert_eq!(message, expected);
    // Still active (from disk), unchanged, and the other origin never saw a request.
    assert_eq!(inactive, 0, "{events:?}");
    let restored = activation(&events, "authz").expect("restored from disk");
    assert_eq!(
        (restored.revision.as_str(), restored.source),
        ("v1", Source::Disk)
    );
    let current = agent.current("authz").expect("still active");
    assert_eq!(
        (current.revision.as_str(), current.sha256.as_str()),
        ("v1", active.as_str())
    );
    assert_eq!(sha256_file(&work.persisted("authz")), active);
    assert_eq!(work.metadata("authz")["revision"], "v1");
    assert!(
        elsewhere.access_log().is_empty(),
        "{:?}",
        elsewhere.access_log()
    );
    assert_eq!(server.access_log().last().unwrap().status, 302);
}

#[tokio::test]
async fn same_origin_redirect_is_followed() {
    let work = Workdir::new();
    let root = work.path().join("www");
    publish(&root.join("bundles/authz.tar.gz"), &bundle("v1"), 0);
    let port = crate::harness::free_port();
    let server = Nginx::start(NginxOptions {
        root: root.clone(),
        redirects: vec![(
            "/moved/authz.tar.gz".into(),
            format!("http://127.0.0.1:{port}/bundles/authz.tar.gz"),
        )],
        port: Some(port),
        ..NginxOptions::default()
    });
    let yaml = format!(
        "services:\n  web:\n    url: {}\nbundles:\n  authz:\n    resource: moved/authz.tar.gz\n    persist: true\n",
        server.url()
    );
    let agent = in_process::agent(&yaml, &work.state(), vec![], Limits::default())
        .await
        .expect("the agent starts");
    let (inactive, events) = in_process::poll_counting(&agent).await;
    assert_eq!(inactive, 0, "{events:?}");
    let active = activation(&events, "authz").expect("activated");
    assert_eq!(
        (active.revision.as_str(), active.source),
        ("v1", Source::Download)
    );
    let statuses: Vec<_> = server.access_log().iter().map(|e| e.status).collect();
    assert_eq!(statuses, vec![302, 200]);
}
