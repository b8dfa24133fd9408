//! The oci fetcher end to end: `polhost run` against a real docker-registry
//! (distribution 2.8), with bundles pushed by real clients (skopeo, oras-py),
//! anonymous, htpasswd basic auth and token auth (a token issuer the
//! registry itself verifies).

use std::fs;
use std::path::Path;

use crate::harness::nginx::{Nginx, NginxOptions};
use crate::harness::registry::{
    BUNDLE_LAYER, OCI_CONFIG, OciLayout, Registry, RegistryAuth, RegistryOptions, oras_push,
    sha256_digest, skopeo_copy,
};
use crate::harness::token::TokenIssuer;
use crate::support::*;

const USER: &str = "alice";
const PASSWORD: &str = "wonderland-s3cret";

/// The seed's own example: `type: oci`, the registry in `url`, a full
/// reference in `resource`.
fn config(registry: &Registry, resource: &str, service_extra: &str) -> String {
    format!(
        "services:
  registry:
    type: oci
    url: {url}
{service_extra}
bundles:
  authz:
    service: registry
    resource: {resource}
    persist: true
    polling:
      min_delay_seconds: 1
      max_delay_seconds: 1
",
        url = registry.url()
    )
}

/// OPA's credential for OCI basic auth: `scheme: Basic`, `token: user:pass`.
fn basic_credentials() -> String {
    format!(
        "    credentials:\n      bearer:\n        scheme: Basic\n        token: \"{USER}:${{REGISTRY_PASSWORD}}\""
    )
}

/// Pushes `bundle(revision)` as `repo:tag` with skopeo from an OCI layout;
/// returns the bundle bytes.
fn push_bundle(
    work: &Workdir,
    registry: &Registry,
    target: &str,
    revision: &str,
    extra: &[&str],
) -> Vec<u8> {
    let bytes = bundle(revision);
    let mut layout = OciLayout::new(&work.path().join(format!("layout-{revision}")));
    let manifest = layout.bundle_manifest(&bytes);
    layout.tag(revision, manifest);
    skopeo_copy(&layout, revision, registry, target, extra);
    bytes
}

fn run_once(work: &Workdir, cfg: &Path, env: &[(&str, &str)]) -> Finished {
    let _ = work;
    polhost(&["run", "--once", cfg.to_str().unwrap()], env)
}

#[test]
fn skopeo_pushed_bundle_is_fetched_unchanged_tag_transfers_no_blob_moved_tag_is_picked_up() {
    let work = Workdir::new();
    let registry = Registry::start(RegistryOptions::default());
    let v1 = push_bundle(&work, &registry, "org/policy:live", "v1", &[]);
    let cfg = work.config(&config(
        &registry,
        &format!("{}/org/policy:live", registry.host()),
        "",
    ));

    let polhost = Polhost::spawn(&["run", cfg.to_str().unwrap()], &[]);
    polhost.wait_for_activation("v1", "Download");
    assert_eq!(
        sha256_file(&work.persisted("authz")),
        sha256_digest(&v1)[7..]
    );
    // The etag is the layer digest, as in OPA.
    assert_eq!(work.metadata("authz")["etag"], sha256_digest(&v1));

    // Two more polls resolve the tag again but fetch no blob.
    polhost.wait_for_n(2, PATIENCE, "not modified", |l| {
        l.contains("bundle not modified")
    });
    assert_eq!(
        registry.blob_gets().len(),
        1,
        "{:?}",
        registry.polhost_requests()
    );
    let manifest_gets = registry
        .polhost_requests()
        .iter()
        .filter(|a| a.uri == "/v2/org/policy/manifests/live")
        .count();
    assert!(manifest_gets >= 3, "{:?}", registry.polhost_requests());

    // The tag moves: the next poll picks the new bundle up.
    let v2 = push_bundle(&work, &registry, "org/policy:live", "v2", &[]);
    polhost.wait_for_activation("v2", "Download");
    registry.wait_for_requests(|r| r.iter().filter(|a| a.uri.contains("/blobs/")).count() >= 2);
    assert_eq!(
        sha256_file(&work.persisted("authz")),
        sha256_digest(&v2)[7..]
    );
    assert_eq!(
        registry.blob_gets().len(),
        2,
        "{:?}",
        registry.polhost_requests()
    );
}

#[test]
fn oras_pushed_bundle_is_fetched() {
    let work = Workdir::new();
    let registry = Registry::start(RegistryOptions::default());
    let dir = work.path().join("oras");
    fs::create_dir_all(&dir).unwrap();
    let bytes = bundle("oras-1");
    fs::write(dir.join("bundle.tar.gz"), &bytes).unwrap();
    oras_push(
        &dir,
        "bundle.tar.gz",
        BUNDLE_LAYER,
        &registry,
        "org/oras:1.0",
        None,
    );

    let cfg = work.config(&config(
        &registry,
        &format!("{}/org/oras:1.0", registry.host()),
        "",
    ));
    let run = run_once(&work, &cfg, &[]);
    assert!(run.status.success(), "{}", run.stderr);
    assert!(run.stderr.contains("revision=oras-1 "), "{}", run.stderr);
    assert_eq!(
        sha256_file(&work.persisted("authz")),
        sha256_digest(&bytes)[7..]
    );
}

#[test]
fn docker_v2_schema2_manifest_is_fetched() {
    let work = Workdir::new();
    let registry = Registry::start(RegistryOptions::default());
    let bytes = push_bundle(
        &work,
        &registry,
        "org/docker:v2s2",
        "v1",
        &["--format", "v2s2"],
    );
    let cfg = work.config(&config(&registry, "org/docker:v2s2", ""));
    let run = run_once(&work, &cfg, &[]);
    assert!(run.status.success(), "{}", run.stderr);
    assert_eq!(
        sha256_file(&work.persisted("authz")),
        sha256_digest(&bytes)[7..]
    );
    assert_eq!(
        work.metadata("authz")["etag"],
        sha256_digest(&bytes),
        "the docker layer digest is the etag"
    );
}

#[test]
fn image_index_with_attestation_is_walked_and_the_attestation_never_fetched() {
    let work = Workdir::new();
    let registry = Registry::start(RegistryOptions::default());
    let bytes = bundle("indexed");
    let mut layout = OciLayout::new(&work.path().join("layout"));
    // What `docker buildx build --provenance` pushes: the image, and an
    // attestation manifest with platform unknown/unknown. The attestation
    // comes first here, so only skipping it gets to the bundle.
    let attestation = layout.manifest(
        (OCI_CONFIG, b"{}"),
        &[(
            "application/vnd.in-toto+json",
            br#"{"_type":"https://in-toto.io/Statement/v0.1"}"#,
        )],
    );
    let image = layout.bundle_manifest(&bytes);
    let index = layout.index(&[
        (attestation.clone(), "unknown/unknown"),
        (image.clone(), "linux/amd64"),
    ]);
    layout.tag("ci", index);
    skopeo_copy(&layout, "ci", &registry, "org/ci:build-7", &["--all"]);

    let cfg = work.config(&config(
        &registry,
        &format!("{}/org/ci:build-7", registry.host()),
        "",
    ));
    let run = run_once(&work, &cfg, &[]);
    assert!(run.status.success(), "{}", run.stderr);
    assert_eq!(
        sha256_file(&work.persisted("authz")),
        sha256_digest(&bytes)[7..]
    );
    let uris: Vec<String> = registry
        .polhost_requests()
        .into_iter()
        .map(|a| a.uri)
        .collect();
    let attestation_digest = attestation["digest"].as_str().unwrap();
    let image_digest = image["digest"].as_str().unwrap();
    assert!(
        !uris.iter().any(|u| u.contains(attestation_digest)),
        "{uris:?}"
    );
    assert!(
        uris.contains(&format!("/v2/org/ci/manifests/{image_digest}")),
        "{uris:?}"
    );
}

#[test]
fn digest_pinned_reference_is_downloaded_once_and_never_again() {
    let work = Workdir::new();
    let registry = Registry::start(RegistryOptions::default());
    push_bundle(&work, &registry, "org/pinned:v1", "v1", &[]);
    let digest = registry.manifest_digest("org/pinned", "v1");
    let cfg = work.config(&config(
        &registry,
        &format!("{}/org/pinned@{digest}", registry.host()),
        "",
    ));
    let polhost = Polhost::spawn(&["run", cfg.to_str().unwrap()], &[]);
    polhost.wait_for_activation("v1", "Download");
    polhost.wait_for_n(2, PATIENCE, "not modified", |l| {
        l.contains("bundle not modified")
    });
    assert_eq!(
        registry.blob_gets().len(),
        1,
        "{:?}",
        registry.polhost_requests()
    );
    // Asked by digest, never by tag.
    assert!(
        registry
            .polhost_requests()
            .iter()
            .all(|a| !a.uri.ends_with(":v1") && !a.uri.ends_with("/v1")),
        "{:?}",
        registry.polhost_requests()
    );
}

#[test]
fn htpasswd_registry_refuses_anonymous_and_accepts_opa_basic_credentials() {
    let work = Workdir::new();
    let registry = Registry::start(RegistryOptions {
        auth: RegistryAuth::Htpasswd {
            user: USER.into(),
            password: PASSWORD.into(),
        },
        ..RegistryOptions::default()
    });
    push_bundle(
        &work,
        &registry,
        "org/private:v1",
        "v1",
        &["--dest-creds", &format!("{USER}:{PASSWORD}")],
    );

    let resource = format!("{}/org/private:v1", registry.host());
    let cfg = work.config(&config(&registry, &resource, ""));
    let run = run_once(&work, &cfg, &[]);
    assert_eq!(run.status.code(), Some(1), "{}", run.stderr);
    let expected = format!(
        "bundle download failed: {}/org/private:v1: GET manifest org/private:v1 at {}/v2/org/private/manifests/v1: registry answered 401",
        registry.host(),
        registry.url()
    );
    assert!(run.stderr.contains(&expected), "{}", run.stderr);
    assert!(
        run.stderr
            .contains(r#"WWW-Authenticate: Basic realm=\"polhost-test-registry\""#)
            || run
                .stderr
                .contains(r#"WWW-Authenticate: Basic realm="polhost-test-registry""#),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("kind=\"unauthorized\""),
        "{}",
        run.stderr
    );
    assert!(!work.persisted("authz").exists());

    let cfg = work.config(&config(&registry, &resource, &basic_credentials()));
    let run = run_once(&work, &cfg, &[("REGISTRY_PASSWORD", PASSWORD)]);
    assert!(run.status.success(), "{}", run.stderr);
    assert!(run.stderr.contains("revision=v1 "), "{}", run.stderr);
    assert!(
        !run.stderr.contains(PASSWORD),
        "the password leaked into the log"
    );

    // The same credential from `token_path`, read through the file grant.
    let token_file = work.path().join("registry-credential");
    fs::write(&token_file, format!("{USER}:{PASSWORD}\n")).unwrap();
    let cfg = work.config(&config(
        &registry,
        &resource,
        &format!(
            "    credentials:\n      bearer:\n        scheme: Basic\n        token_path: {}",
            token_file.display()
        ),
    ));
    let run = run_once(&work, &cfg, &[]);
    assert!(run.status.success(), "{}", run.stderr);
    // The manifest was read with the credential: the bundle from disk is
    // still the registry's.
    assert!(run.stderr.contains("bundle not modified"), "{}", run.stderr);
    assert!(
        !run.stderr.contains("bundle download failed"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr
            .contains(&format!("files: {}", token_file.display())),
        "{}",
        run.stderr
    );
    assert!(
        !run.stderr.contains(PASSWORD),
        "the password leaked into the log"
    );
}

#[test]
fn token_registry_is_read_with_an_anonymous_token_fetched_once_per_fetch() {
    let work = Workdir::new();
    let issuer = TokenIssuer::start(None);
    let mut registry = Registry::start(RegistryOptions::default());
    push_bundle(&work, &registry, "org/public:v1", "v1", &[]);
    registry.reconfigure(RegistryOptions {
        auth: issuer.registry_auth(),
        ..RegistryOptions::default()
    });

    let cfg = work.config(&config(
        &registry,
        &format!("{}/org/public:v1", registry.host()),
        "",
    ));
    let run = run_once(&work, &cfg, &[]);
    assert!(run.status.success(), "{}", run.stderr);
    assert!(run.stderr.contains("revision=v1 "), "{}", run.stderr);
    // One token served the manifest and the blob: the registry saw one 401.
    let requests = issuer.requests();
    assert_eq!(requests.len(), 1, "{requests:?}");
    assert!(!requests[0].authorization_present);
    assert!(
        requests[0]
            .target
            .contains("scope=repository%3Aorg%2Fpublic%3Apull"),
        "{requests:?}"
    );
    let statuses: Vec<u16> = registry
        .wait_for_requests(|r| r.len() >= 3)
        .iter()
        .map(|a| a.status)
        .collect();
    assert_eq!(
        statuses,
        vec![401, 200, 200],
        "{:?}",
        registry.polhost_requests()
    );
    assert!(
        run.stderr.contains(&format!(
            "sandbox learned origin http://127.0.0.1:{}",
            issuer.port()
        )),
        "{}",
        run.stderr
    );
}

#[test]
fn token_registry_with_credentials_sends_them_to_the_realm_only() {
    let work = Workdir::new();
    let issuer = TokenIssuer::start(Some((USER, PASSWORD)));
    let mut registry = Registry::start(RegistryOptions::default());
    push_bundle(&work, &registry, "org/team:v1", "v1", &[]);
    registry.reconfigure(RegistryOptions {
        auth: issuer.registry_auth(),
        ..RegistryOptions::default()
    });
    let resource = format!("{}/org/team:v1", registry.host());

    // Without credentials the token service says 401: the error names it.
    let cfg = work.config(&config(&registry, &resource, ""));
    let run = run_once(&work, &cfg, &[]);
    assert_eq!(run.status.code(), Some(1), "{}", run.stderr);
    let expected = format!(
        "{}/org/team:v1: token service {} answered 401 for scope repository:org/team:pull, asked anonymously",
        registry.host(),
        issuer.realm()
    );
    assert!(run.stderr.contains(&expected), "{}", run.stderr);
    assert!(
        run.stderr.contains("kind=\"unauthorized\""),
        "{}",
        run.stderr
    );

    let cfg = work.config(&config(&registry, &resource, &basic_credentials()));
    let run = run_once(&work, &cfg, &[("REGISTRY_PASSWORD", PASSWORD)]);
    assert!(run.status.success(), "{}", run.stderr);
    assert!(run.stderr.contains("revision=v1 "), "{}", run.stderr);
    assert!(
        !run.stderr.contains(PASSWORD),
        "the password leaked into the log"
    );
    let last = issuer.requests().pop().unwrap();
    assert!(last.authorization_present && last.status == 200, "{last:?}");
}

#[test]
fn tampered_blob_is_refused_and_the_previous_bundle_stays_active() {
    let work = Workdir::new();
    let registry = Registry::start(RegistryOptions::default());
    push_bundle(&work, &registry, "org/policy:live", "v1", &[]);
    let cfg = work.config(&config(&registry, "org/policy:live", ""));
    let first = run_once(&work, &cfg, &[]);
    assert!(first.status.success(), "{}", first.stderr);
    let active = sha256_file(&work.persisted("authz"));

    // v2 is pushed, then its blob is swapped on the registry's disk for a
    // valid bundle of the same size: only the digest can tell.
    let v2 = push_bundle(&work, &registry, "org/policy:live", "v2", &[]);
    let forged = ('a'..='z')
        .flat_map(|a| ('0'..='9').map(move |b| format!("{a}{b}")))
        .map(|revision| bundle(&revision))
        .find(|candidate| candidate.len() == v2.len() && *candidate != v2)
        .expect("a same-size bundle");
    fs::write(registry.blob_file(&sha256_digest(&v2)), &forged).unwrap();

    let run = run_once(&work, &cfg, &[]);
    let expected = format!(
        "digest mismatch: the service announced {}, the bytes are {}",
        sha256_digest(&v2),
        sha256_digest(&forged)
    );
    assert!(run.stderr.contains(&expected), "{}", run.stderr);
    assert!(
        run.stderr.contains("kind=\"invalid-bundle\""),
        "{}",
        run.stderr
    );
    // Still active (from disk) and unchanged.
    assert!(run.status.success(), "{}", run.stderr);
    assert!(run.stderr.contains("source=Disk"), "{}", run.stderr);
    assert_eq!(sha256_file(&work.persisted("authz")), active);
    assert_eq!(work.metadata("authz")["revision"], "v1");
}

#[test]
fn manifest_without_bundle_layer_lists_the_media_types_found() {
    let work = Workdir::new();
    let registry = Registry::start(RegistryOptions::default());
    let mut layout = OciLayout::new(&work.path().join("layout"));
    let manifest = layout.manifest(
        (OCI_CONFIG, b"{}"),
        // A Helm chart, say: skopeo leaves these types alone (it would
        // compress a plain `...layer.v1.tar` into the bundle type).
        &[
            (
                "application/vnd.cncf.helm.chart.content.v1.tar+gzip",
                &bundle("x"),
            ),
            (
                "application/vnd.cncf.helm.chart.provenance.v1.prov",
                b"provenance",
            ),
        ],
    );
    layout.tag("v1", manifest);
    skopeo_copy(&layout, "v1", &registry, "org/chart:v1", &[]);
    let cfg = work.config(&config(&registry, "org/chart:v1", ""));
    let run = run_once(&work, &cfg, &[]);
    assert_eq!(run.status.code(), Some(1), "{}", run.stderr);
    let expected = format!(
        "{}/org/chart:v1: no bundle layer (application/vnd.oci.image.layer.v1.tar+gzip) found: layer media types found: application/vnd.cncf.helm.chart.content.v1.tar+gzip, application/vnd.cncf.helm.chart.provenance.v1.prov",
        registry.host()
    );
    assert!(run.stderr.contains(&expected), "{}", run.stderr);
    assert!(run.stderr.contains("kind=\"protocol\""), "{}", run.stderr);
    assert!(registry.blob_gets().is_empty());
}

#[test]
fn unknown_tag_is_not_found_naming_registry_repository_and_reference() {
    let work = Workdir::new();
    let registry = Registry::start(RegistryOptions::default());
    push_bundle(&work, &registry, "org/policy:v1", "v1", &[]);
    let cfg = work.config(&config(&registry, "org/policy:nope", ""));
    let run = run_once(&work, &cfg, &[]);
    assert_eq!(run.status.code(), Some(1), "{}", run.stderr);
    let expected = format!(
        "{}/org/policy:nope: GET manifest org/policy:nope at {}/v2/org/policy/manifests/nope: registry answered 404: MANIFEST_UNKNOWN manifest unknown",
        registry.host(),
        registry.url()
    );
    assert!(run.stderr.contains(&expected), "{}", run.stderr);
    assert!(run.stderr.contains("kind=\"not-found\""), "{}", run.stderr);
}

#[test]
fn persisted_bundle_is_served_after_restart_with_the_registry_stopped() {
    let work = Workdir::new();
    let mut registry = Registry::start(RegistryOptions::default());
    push_bundle(&work, &registry, "org/policy:v1", "v1", &[]);
    let cfg = work.config(&config(&registry, "org/policy:v1", ""));
    let first = run_once(&work, &cfg, &[]);
    assert!(first.status.success(), "{}", first.stderr);
    // OPA bug #6939: OCI bundles were not written with persist: true.
    assert!(work.persisted("authz").is_file());
    let persisted = sha256_file(&work.persisted("authz"));

    registry.stop();
    let second = run_once(&work, &cfg, &[]);
    assert!(second.status.success(), "{}", second.stderr);
    assert!(second.stderr.contains("source=Disk"), "{}", second.stderr);
    assert!(
        second.stderr.contains("bundle download failed"),
        "{}",
        second.stderr
    );
    assert_eq!(sha256_file(&work.persisted("authz")), persisted);
}

#[test]
fn blob_redirect_to_another_origin_is_followed_without_the_registry_credentials() {
    let work = Workdir::new();
    let mut registry = Registry::start(RegistryOptions {
        auth: RegistryAuth::Htpasswd {
            user: USER.into(),
            password: PASSWORD.into(),
        },
        ..RegistryOptions::default()
    });
    let bytes = push_bundle(
        &work,
        &registry,
        "org/cdn:v1",
        "v1",
        &["--dest-creds", &format!("{USER}:{PASSWORD}")],
    );
    // A "CDN": nginx serving the registry's storage, where the registry's
    // redirect middleware sends blob GETs.
    let cdn = Nginx::start(NginxOptions {
        root: registry.storage(),
        ..NginxOptions::default()
    });
    registry.reconfigure(RegistryOptions {
        auth: RegistryAuth::Htpasswd {
            user: USER.into(),
            password: PASSWORD.into(),
        },
        redirect_blobs_to: Some(cdn.url()),
    });

    let cfg = work.config(&config(&registry, "org/cdn:v1", &basic_credentials()));
    let run = run_once(&work, &cfg, &[("REGISTRY_PASSWORD", PASSWORD)]);
    assert!(run.status.success(), "{}", run.stderr);
    assert_eq!(
        sha256_file(&work.persisted("authz")),
        sha256_digest(&bytes)[7..]
    );
    registry.wait_for_requests(|r| r.iter().any(|a| a.uri.contains("/blobs/")));
    let blob = registry.blob_gets();
    assert_eq!(blob.len(), 1, "{:?}", registry.polhost_requests());
    assert_eq!(blob[0].status, 307);
    let cdn_log = cdn.access_log();
    assert_eq!(cdn_log.len(), 1, "{cdn_log:?}");
    assert_eq!(cdn_log[0].status, 200);
    assert!(
        !cdn_log[0].authorization_present,
        "credentials went to the CDN"
    );
    assert!(
        run.stderr.contains(&format!(
            "sandbox learned origin http://127.0.0.1:{}",
            cdn.port()
        )),
        "{}",
        run.stderr
    );
}

#[test]
fn a_redirect_from_a_learned_origin_is_refused() {
    let work = Workdir::new();
    let mut registry = Registry::start(RegistryOptions::default());
    let bytes = push_bundle(&work, &registry, "org/hop:v1", "v1", &[]);
    let digest = sha256_digest(&bytes);
    let blob_path = registry
        .blob_file(&digest)
        .strip_prefix(registry.storage())
        .unwrap()
        .display()
        .to_string();
    // The registry sends the blob to a CDN, which sends it on to a third
    // origin: the sandbox allows the first hop only.
    let elsewhere = Nginx::start(NginxOptions {
        root: registry.storage(),
        ..NginxOptions::default()
    });
    let onward = format!("{}/{blob_path}", elsewhere.url());
    let cdn = Nginx::start(NginxOptions {
        root: registry.storage(),
        redirects: vec![(blob_path.clone(), onward.clone())],
        ..NginxOptions::default()
    });
    registry.reconfigure(RegistryOptions {
        redirect_blobs_to: Some(cdn.url()),
        ..RegistryOptions::default()
    });

    let cfg = work.config(&config(&registry, "org/hop:v1", ""));
    let run = run_once(&work, &cfg, &[]);
    assert_eq!(run.status.code(), Some(1), "{}", run.stderr);
    let expected = format!(
        "sandbox refused request to {onward}: origin http://127.0.0.1:{} is not granted to service \"registry\" (granted: {}; learned in this fetch: http://127.0.0.1:{})",
        elsewhere.port(),
        registry.url(),
        cdn.port()
    );
    assert!(run.stderr.contains(&expected), "{}", run.stderr);
    assert!(run.stderr.contains("kind=\"sandbox\""), "{}", run.stderr);
    assert_eq!(cdn.access_log()[0].status, 302);
    assert!(
        elsewhere.access_log().is_empty(),
        "{:?}",
        elsewhere.access_log()
    );
    assert!(!work.persisted("authz").exists());
}
