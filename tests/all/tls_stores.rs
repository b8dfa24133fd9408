//! The oci and s3 fetchers over TLS with a private CA (`tls.ca_cert`):
//! docker-registry serving HTTPS, pushed to with skopeo (which verifies it
//! against the CA), and moto serving HTTPS, uploaded to with boto3
//! (verified likewise). Without `tls.ca_cert` the handshake fails: a
//! certificate error naming the URL, no request served, nothing persisted.

use crate::harness::moto::{AccessKey, Moto, MotoTls};
use crate::harness::registry::{
    OciLayout, Registry, RegistryOptions, RegistryTls, sha256_digest, skopeo_copy,
};
use crate::harness::tls::TestCa;
use crate::support::*;

const KEY: &str = "authz.tar.gz";

/// `tls.ca_cert: <the CA>` under a service (YAML, indented for it).
fn trust(ca: &TestCa) -> String {
    format!("    tls:\n      ca_cert: {}\n", ca.ca_cert.display())
}

/// What a refused handshake leaves in the log: the request, the code the
/// fetcher saw and the host's reason (rustls: the CA is not a root).
fn assert_certificate_error(stderr: &str, url: &str) {
    assert!(
        stderr.contains(&format!("GET {url}: ErrorCode::TlsCertificateError ("))
            && stderr.contains("UnknownIssuer"),
        "no certificate error naming {url}:\n{stderr}"
    );
    assert!(stderr.contains("kind=\"protocol\""), "{stderr}");
}

/// The log line of `revision` activated from a download.
fn activated(stderr: &str, revision: &str) -> bool {
    stderr.lines().any(|l| {
        l.contains("bundle activated")
            && l.contains(&format!("revision={revision} "))
            && l.contains("source=Download")
    })
}

// ---- oci: docker-registry over TLS ----

/// Service `registry` (`type: oci`) at the registry's URL, with
/// `service_extra` (YAML lines indented four spaces) under it.
fn oci_config(registry: &Registry, resource: &str, service_extra: &str) -> String {
    format!(
        "services:\n  registry:\n    type: oci\n    url: {url}\n{service_extra}bundles:\n  authz:\n    service: registry\n    resource: {resource}\n    persist: true\n",
        url = registry.url()
    )
}

/// Pushes `bundle(revision)` as `target` with skopeo from an OCI layout;
/// returns the bundle's bytes.
fn push_bundle(work: &Workdir, registry: &Registry, target: &str, revision: &str) -> Vec<u8> {
    let bytes = bundle(revision);
    let mut layout = OciLayout::new(&work.path().join(format!("layout-{revision}")));
    let manifest = layout.bundle_manifest(&bytes);
    layout.tag(revision, manifest);
    skopeo_copy(&layout, revision, registry, target, &[]);
    bytes
}

#[test]
fn oci_registry_over_tls_is_refused_without_tls_ca_cert_naming_the_url_and_pulled_with_it() {
    let work = Workdir::new();
    let ca = TestCa::new();
    let registry = Registry::start_tls(RegistryOptions::default(), RegistryTls::from_ca(&ca));
    assert!(
        registry.url().starts_with("https://127.0.0.1:"),
        "{}",
        registry.url()
    );
    // skopeo pushed over TLS, verifying the registry against the CA.
    let pushed = push_bundle(&work, &registry, "org/tls:v1", "v1");
    let resource = format!("{}/org/tls:v1", registry.host());

    let cfg = work.config(&oci_config(&registry, &resource, ""));
    let refused = polhost(&["run", "--once", cfg.to_str().unwrap()], &[]);
    assert_eq!(refused.status.code(), Some(1), "{}", refused.stderr);
    assert_certificate_error(
        &refused.stderr,
        &format!("{}/v2/org/tls/manifests/v1", registry.url()),
    );
    assert!(!work.persisted("authz").exists());
    // The handshake failed: no request reached the registry.
    assert!(
        registry.polhost_requests().is_empty(),
        "{:?}",
        registry.polhost_requests()
    );

    let cfg = work.config(&oci_config(&registry, &resource, &trust(&ca)));
    let trusted = polhost(&["run", "--once", cfg.to_str().unwrap()], &[]);
    assert!(trusted.status.success(), "{}", trusted.stderr);
    assert!(activated(&trusted.stderr, "v1"), "{}", trusted.stderr);
    assert_eq!(
        sha256_file(&work.persisted("authz")),
        sha256_digest(&pushed)[7..]
    );
    assert_eq!(work.metadata("authz")["etag"], sha256_digest(&pushed));
    // The manifest and the blob, both answered over TLS.
    let requests = registry.wait_for_requests(|r| r.iter().any(|a| a.uri.contains("/blobs/")));
    assert!(
        requests
            .iter()
            .any(|a| a.uri == "/v2/org/tls/manifests/v1" && a.status == 200),
        "{requests:?}"
    );
    assert!(
        requests.iter().any(
            |a| a.uri == format!("/v2/org/tls/blobs/{}", sha256_digest(&pushed)) && a.status == 200
        ),
        "{requests:?}"
    );
}

// ---- s3: moto over TLS ----

/// A path-style service on moto's bucket `bundles`, signing with the
/// environment's key, with `service_extra` (YAML lines indented four
/// spaces) under it.
fn s3_config(moto: &Moto, service_extra: &str) -> String {
    format!(
        "services:\n  store:\n    url: {}/bundles\n{service_extra}    credentials:\n      s3_signing:\n        environment_credentials: {{}}\nbundles:\n  authz:\n    service: store\n    resource: {KEY}\n    persist: true\n",
        moto.url()
    )
}

fn env_of(key: &AccessKey) -> [(&'static str, &str); 3] {
    [
        ("AWS_ACCESS_KEY_ID", key.id.as_str()),
        ("AWS_SECRET_ACCESS_KEY", key.secret.as_str()),
        ("AWS_REGION", "us-east-1"),
    ]
}

/// The statuses of GETs of the bundle's object, in order.
fn gets(moto: &Moto) -> Vec<u16> {
    moto.requests()
        .iter()
        .filter(|r| r.method == "GET" && r.path == format!("/bundles/{KEY}"))
        .map(|r| r.status)
        .collect()
}

#[test]
fn s3_on_moto_over_tls_is_refused_without_tls_ca_cert_naming_the_url_and_read_with_it() {
    let ca = TestCa::new();
    let moto = Moto::start_tls(MotoTls::from_ca(&ca));
    assert!(
        moto.url().starts_with("https://127.0.0.1:"),
        "{}",
        moto.url()
    );
    // boto3 set up and uploaded over TLS, verifying moto against the CA.
    let key = moto.setup();
    let uploaded = bundle("v1");
    moto.put(&key, KEY, &uploaded);
    let work = Workdir::new();
    let env = env_of(&key);

    let cfg = work.config(&s3_config(&moto, ""));
    let refused = polhost(&["run", "--once", cfg.to_str().unwrap()], &env);
    assert_eq!(refused.status.code(), Some(1), "{}", refused.stderr);
    assert_certificate_error(&refused.stderr, &format!("{}/bundles/{KEY}", moto.url()));
    assert!(!work.persisted("authz").exists());
    assert!(gets(&moto).is_empty(), "{:?}", moto.requests());

    let cfg = work.config(&s3_config(&moto, &trust(&ca)));
    let trusted = polhost(&["run", "--once", cfg.to_str().unwrap()], &env);
    assert!(trusted.status.success(), "{}", trusted.stderr);
    assert!(activated(&trusted.stderr, "v1"), "{}", trusted.stderr);
    assert_eq!(
        sha256_file(&work.persisted("authz")),
        sha256_digest(&uploaded)[7..]
    );
    // The signed GET, verified by moto, over TLS.
    assert_eq!(gets(&moto), [200]);
    assert!(
        !trusted.stderr.contains(&key.secret),
        "the secret leaked into the log"
    );
}

/// `tls.ca_cert` covers the service's credential requests too: the STS
/// AssumeRoleWithWebIdentity goes to moto over TLS.
#[test]
fn s3_web_identity_credentials_come_from_moto_sts_over_tls() {
    let ca = TestCa::new();
    let moto = Moto::start_tls(MotoTls::from_ca(&ca));
    let key = moto.setup();
    moto.put(&key, KEY, &bundle("v1"));
    let work = Workdir::new();
    let token_file = work.path().join("web-identity-token");
    let token = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJwb2xob3N0In0.c2lnbmF0dXJl";
    std::fs::write(&token_file, token).unwrap();
    let cfg = work.config(&format!(
        "services:\n  store:\n    url: {url}/bundles\n{trust}    credentials:\n      s3_signing:\n        web_identity_credentials:\n          aws_region: us-east-1\n          session_name: polhost-test\n          endpoint: {url}\nbundles:\n  authz:\n    service: store\n    resource: {KEY}\n",
        url = moto.url(),
        trust = trust(&ca)
    ));
    // As in s3.rs: moto cannot verify the (unsigned) AssumeRoleWithWebIdentity
    // while enforcing; exactly that one request goes through.
    moto.allow_unsigned(1);

    let run = polhost(
        &["run", "--once", cfg.to_str().unwrap()],
        &[
            (
                "AWS_ROLE_ARN",
                "arn:aws:iam::123456789012:role/bundle-reader",
            ),
            ("AWS_WEB_IDENTITY_TOKEN_FILE", token_file.to_str().unwrap()),
        ],
    );
    assert!(run.status.success(), "{}", run.stderr);
    assert!(activated(&run.stderr, "v1"), "{}", run.stderr);
    let requests = moto.requests();
    let tail: Vec<_> = requests
        .iter()
        .rev()
        .take(2)
        .rev()
        .map(|r| (r.method.as_str(), r.path.as_str(), r.status))
        .collect();
    assert_eq!(
        tail,
        [("POST", "/", 200), ("GET", "/bundles/authz.tar.gz", 200)]
    );
    assert!(!run.stderr.contains(token));
}
