//! The sandbox as a user sees it: a fetcher cannot reach an origin its
//! service was not granted, even when the service redirects there.

use crate::harness::nginx::{Nginx, NginxOptions};
use crate::support::*;

#[test]
fn redirect_to_another_origin_is_refused_and_active_bundle_stays() {
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
    let cfg = work.config(&config("bundles/authz.tar.gz"));
    let first = polhost(&["run", "--once", cfg.to_str().unwrap()], &[]);
    assert!(first.status.success(), "{}", first.stderr);
    let active = sha256_file(&work.persisted("authz"));

    let cfg = work.config(&config("moved/authz.tar.gz"));
    let run = polhost(&["run", "--once", cfg.to_str().unwrap()], &[]);
    let expected = format!(
        "sandbox refused request to {target}: origin http://127.0.0.1:{} is not granted to service \"web\" (granted: http://127.0.0.1:{})",
        elsewhere.port(),
        server.port()
    );
    assert!(run.stderr.contains(&expected), "{}", run.stderr);
    assert!(run.stderr.contains("kind=\"sandbox\""), "{}", run.stderr);
    // Still active (from disk), unchanged, and the other origin never saw a request.
    assert!(run.status.success(), "{}", run.stderr);
    assert_eq!(sha256_file(&work.persisted("authz")), active);
    assert_eq!(work.metadata("authz")["revision"], "v1");
    assert!(
        elsewhere.access_log().is_empty(),
        "{:?}",
        elsewhere.access_log()
    );
    assert_eq!(server.access_log().last().unwrap().status, 302);
}

#[test]
fn same_origin_redirect_is_followed() {
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
    let cfg = work.config(&format!(
        "services:\n  web:\n    url: {}\nbundles:\n  authz:\n    resource: moved/authz.tar.gz\n    persist: true\n",
        server.url()
    ));
    let run = polhost(&["run", "--once", cfg.to_str().unwrap()], &[]);
    assert!(run.status.success(), "{}", run.stderr);
    let statuses: Vec<_> = server.access_log().iter().map(|e| e.status).collect();
    assert_eq!(statuses, vec![302, 200]);
}
