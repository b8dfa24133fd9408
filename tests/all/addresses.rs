//! The rule on the addresses a learned origin may reach
//! (docs/architecture.md, "Addresses"): a registry's blob redirect to a
//! name or address the operator did not grant, resolving to a loopback
//! address, is refused; to one the service's url grants, followed.
//!
//! The registry is reached at 127.0.0.2 through nginx (which listens
//! there too) when its grant must not hold 127.0.0.1: Linux routes all of
//! 127.0.0.0/8 to the loopback interface.

use crate::harness::free_port;
use crate::harness::nginx::{Nginx, NginxOptions};
use crate::harness::registry::{OciLayout, Registry, RegistryOptions, skopeo_copy};
use crate::support::*;

/// A registry holding `org/app:v1` whose blob GETs are redirected to
/// `http://<cdn_host>:<the CDN's port>`, and the CDN: nginx serving the
/// registry's storage.
struct Setup {
    registry: Registry,
    cdn: Nginx,
}

fn setup(work: &Workdir, cdn_host: &str) -> Setup {
    let mut registry = Registry::start(RegistryOptions::default());
    let bytes = bundle("v1");
    let mut layout = OciLayout::new(&work.path().join("layout"));
    let manifest = layout.bundle_manifest(&bytes);
    layout.tag("v1", manifest);
    skopeo_copy(&layout, "v1", &registry, "org/app:v1", &[]);
    let cdn = Nginx::start(NginxOptions {
        root: registry.storage(),
        ..NginxOptions::default()
    });
    registry.reconfigure(RegistryOptions {
        redirect_blobs_to: Some(format!("http://{cdn_host}:{}", cdn.port())),
        ..RegistryOptions::default()
    });
    Setup { registry, cdn }
}

/// nginx on 127.0.0.2 in front of the registry.
fn front(work: &Workdir, registry: &Registry) -> (Nginx, String) {
    let port = free_port();
    let nginx = Nginx::start(NginxOptions {
        root: work.path().to_path_buf(),
        proxy_to: Some(registry.url()),
        server_directives: format!("listen 127.0.0.2:{port};\n").into_bytes(),
        ..NginxOptions::default()
    });
    (nginx, format!("http://127.0.0.2:{port}"))
}

fn run_once(work: &Workdir, url: &str, registry: &Registry) -> Finished {
    let cfg = work.config(&format!(
        "services:\n  registry:\n    type: oci\n    url: {url}\nbundles:\n  authz:\n    service: registry\n    resource: {}/org/app:v1\n",
        registry.host()
    ));
    polhost(&["run", "--once", cfg.to_str().unwrap()], &[])
}

#[test]
fn a_redirect_to_a_name_resolving_to_the_granted_address_is_followed() {
    let work = Workdir::new();
    let s = setup(&work, "localhost");
    // The service url grants 127.0.0.1; `localhost` resolves to it.
    let run = run_once(&work, &s.registry.url(), &s.registry);
    assert!(run.status.success(), "{}", run.stderr);
    assert_eq!(s.cdn.access_log().len(), 1, "{:?}", s.cdn.access_log());
    assert_eq!(s.cdn.access_log()[0].status, 200);
}

#[test]
fn a_redirect_to_a_name_resolving_to_an_address_not_granted_is_refused() {
    let work = Workdir::new();
    let s = setup(&work, "localhost");
    let (_front, url) = front(&work, &s.registry);
    let run = run_once(&work, &url, &s.registry);
    assert_eq!(run.status.code(), Some(1), "{}", run.stderr);
    assert!(
        run.stderr.contains(&format!(
            "request to http://localhost:{}/docker/registry/v2/blobs/",
            s.cdn.port()
        )) && run.stderr.contains(
            "localhost, learned in this fetch, resolves to 127.0.0.1 (loopback), which service \"registry\" was not granted"
        ),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("kind=\"sandbox\""), "{}", run.stderr);
    assert!(s.cdn.access_log().is_empty(), "{:?}", s.cdn.access_log());
    assert!(!work.persisted("authz").exists());
}

#[test]
fn a_redirect_to_a_loopback_address_not_granted_is_refused_before_any_connection() {
    let work = Workdir::new();
    let s = setup(&work, "127.0.0.1");
    let (_front, url) = front(&work, &s.registry);
    let run = run_once(&work, &url, &s.registry);
    assert_eq!(run.status.code(), Some(1), "{}", run.stderr);
    assert!(
        run.stderr.contains(&format!(
            "origin http://127.0.0.1:{}, learned in this fetch, is a loopback address, which service \"registry\" was not granted",
            s.cdn.port()
        )),
        "{}",
        run.stderr
    );
    assert!(s.cdn.access_log().is_empty(), "{:?}", s.cdn.access_log());
}
