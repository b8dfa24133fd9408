//! The gcs fetcher end to end: `polhost run` against fake-gcs-server,
//! uploads with google-cloud-storage; tokens from stand-ins for Google's
//! metadata server and token endpoint (no emulator provides them).

use std::fs;

use crate::harness::fake_gcs::FakeGcs;
use crate::harness::gcp_identity::GcpIdentity;
use crate::harness::nginx::{Nginx, NginxOptions};
use crate::harness::python;
use crate::support::*;

const BUCKET: &str = "bundles";
const OBJECT: &str = "authz/bundle.tar.gz";
const TOKEN: &str = "ya29.polhost-test-access-token";

fn config(url: &str, resource: &str, credentials: &str) -> String {
    format!(
        "services:
  gcs:
    url: {url}
    type: gcs
{credentials}
bundles:
  authz:
    service: gcs
    resource: '{resource}'
    persist: true
    polling:
      min_delay_seconds: 1
      max_delay_seconds: 1
"
    )
}

fn metadata_credentials(identity: &GcpIdentity) -> String {
    format!(
        "    credentials:\n      gcp_metadata:\n        scopes:\n          - https://www.googleapis.com/auth/devstorage.read_only\n        endpoint: {}",
        identity.endpoint()
    )
}

/// (media GETs, metadata GETs) of the object that fake-gcs-server logged
/// from polhost (the uploading client's own reads carry other queries).
fn reads(gcs: &FakeGcs) -> (usize, usize) {
    let object = "/storage/v1/b/bundles/o/authz%2Fbundle.tar.gz";
    let gets: Vec<_> = gcs
        .requests()
        .into_iter()
        .filter(|r| r.method == "GET")
        .collect();
    let media = gets
        .iter()
        .filter(|r| r.target.starts_with(&format!("{object}?alt=media")))
        .count();
    let metadata = gets.iter().filter(|r| r.target == object).count();
    (media, metadata)
}

#[test]
fn gcs_metadata_token_fetch_then_unchanged_generation_then_new_revision_is_active() {
    let gcs = FakeGcs::start();
    gcs.put(BUCKET, OBJECT, &bundle("v1"));
    let identity = GcpIdentity::start(TOKEN);
    let work = Workdir::new();
    let cfg = work.config(&config(
        &gcs.url(),
        &format!("{BUCKET}/{OBJECT}"),
        &metadata_credentials(&identity),
    ));

    let polhost = Polhost::spawn(&["run", cfg.to_str().unwrap()], &[]);
    polhost.wait_for_activation("v1", "Download");
    polhost.wait_for(&[
        "sandbox grant:",
        &format!(
            "origins: {}, {}; files: none; env: none",
            gcs.url(),
            identity.endpoint()
        ),
    ]);
    // Polls with the same generation: metadata only, no media read.
    polhost.wait_for_n(2, PATIENCE, "not modified", |l| {
        l.contains("bundle not modified")
    });
    let (media, metadata) = reads(&gcs);
    assert_eq!(media, 1, "{:?}", gcs.requests());
    assert!(metadata >= 3, "{:?}", gcs.requests());
    let generation = work.metadata("authz")["etag"].as_str().unwrap().to_string();

    let new_generation = gcs.put(BUCKET, OBJECT, &bundle("v2"));
    assert_ne!(generation, new_generation);
    polhost.wait_for_activation("v2", "Download");
    assert_eq!(work.metadata("authz")["etag"], new_generation.as_str());
    assert_eq!(reads(&gcs).0, 2);
    // Every poll asked the metadata server with OPA's header and scopes.
    assert!(identity.requests().iter().all(|(m, t, s)| m == "GET"
        && t.contains(
            "token?scopes=https%3A%2F%2Fwww.googleapis.com%2Fauth%2Fdevstorage.read_only"
        )
        && *s == 200));
    assert!(!polhost.output().contains(TOKEN), "the token leaked");
}

#[test]
fn gcs_opa_documented_url_form_is_used_as_written() {
    let gcs = FakeGcs::start();
    gcs.put(BUCKET, OBJECT, &bundle("v1"));
    let work = Workdir::new();
    let cfg = work.config(&config(
        &format!("{}/storage/v1/b/{BUCKET}/o", gcs.url()),
        "authz%2Fbundle.tar.gz?alt=media",
        "",
    ));
    let run = polhost(&["run", "--once", cfg.to_str().unwrap()], &[]);
    assert!(run.status.success(), "{}", run.stderr);
    assert!(run.stderr.contains("revision=v1"), "{}", run.stderr);
    assert_eq!(reads(&gcs), (1, 1));
}

#[test]
fn gcs_missing_object_is_not_found_naming_bucket_and_object() {
    let gcs = FakeGcs::start();
    gcs.put(BUCKET, "other.tar.gz", &bundle("v1"));
    let work = Workdir::new();
    let cfg = work.config(&config(&gcs.url(), &format!("{BUCKET}/{OBJECT}"), ""));
    let run = polhost(&["run", "--once", cfg.to_str().unwrap()], &[]);
    assert_eq!(run.status.code(), Some(1), "{}", run.stderr);
    assert!(
        run.stderr
            .contains("GET gs://bundles/authz/bundle.tar.gz (")
            && run.stderr.contains("GCS answered 404")
            && run.stderr.contains("kind=\"not-found\""),
        "{}",
        run.stderr
    );
}

#[test]
fn gcs_rejected_token_is_one_401_unauthorized_error() {
    // fake-gcs-server accepts any token: nginx with a bearer check serves
    // the object's JSON API path instead, expecting another token.
    let work = Workdir::new();
    let root = work.path().join("www");
    publish(
        &root.join("storage/v1/b/bundles/o/authz/bundle.tar.gz"),
        b"{}",
        0,
    );
    let nginx = Nginx::start(NginxOptions {
        root,
        bearer: vec![("/storage/".into(), "the-token-nginx-expects".into())],
        ..NginxOptions::default()
    });
    let identity = GcpIdentity::start(TOKEN);
    let cfg = work.config(&config(
        &nginx.url(),
        &format!("{BUCKET}/{OBJECT}"),
        &metadata_credentials(&identity),
    ));
    let run = polhost(&["run", "--once", cfg.to_str().unwrap()], &[]);
    assert_eq!(run.status.code(), Some(1), "{}", run.stderr);
    let errors: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| l.contains("bundle download failed"))
        .collect();
    assert_eq!(errors.len(), 1, "{}", run.stderr);
    assert!(
        errors[0].contains("GET gs://bundles/authz/bundle.tar.gz (")
            && errors[0].contains("GCS answered 401")
            && errors[0].contains("kind=\"unauthorized\""),
        "{}",
        run.stderr
    );
    assert_eq!(nginx.access_log().len(), 1);
    assert!(!run.stderr.contains(TOKEN), "the token leaked");
}

#[test]
fn gcs_metadata_audience_asks_for_an_identity_token() {
    let gcs = FakeGcs::start();
    gcs.put(BUCKET, OBJECT, &bundle("v1"));
    let identity = GcpIdentity::start(TOKEN);
    let work = Workdir::new();
    let cfg = work.config(&config(
        &gcs.url(),
        &format!("{BUCKET}/{OBJECT}"),
        &format!(
            "    credentials:\n      gcp_metadata:\n        audience: https://bundles.example\n        endpoint: {}",
            identity.endpoint()
        ),
    ));
    let run = polhost(&["run", "--once", cfg.to_str().unwrap()], &[]);
    assert!(run.status.success(), "{}", run.stderr);
    let requests = identity.requests();
    assert_eq!(requests.len(), 1);
    assert_eq!(
        requests[0].1,
        "/computeMetadata/v1/instance/service-accounts/default/identity?audience=https%3A%2F%2Fbundles.example"
    );
}

#[test]
fn gcs_service_account_signs_a_jwt_the_public_key_verifies() {
    let gcs = FakeGcs::start();
    gcs.put(BUCKET, OBJECT, &bundle("v1"));
    let identity = GcpIdentity::start(TOKEN);
    let work = Workdir::new();
    let key = work.path().join("service-account.json");
    let email = "bundle-reader@polhost-test.iam.gserviceaccount.com";
    python("gcs_client.py", &["keygen", key.to_str().unwrap(), email]);
    let cfg = work.config(&config(
        &gcs.url(),
        &format!("{BUCKET}/{OBJECT}"),
        &format!(
            "    credentials:\n      gcp_service_account:\n        key_path: {}\n        token_url: {}",
            key.display(),
            identity.token_url()
        ),
    ));

    let run = polhost(&["run", "--once", cfg.to_str().unwrap()], &[]);
    assert!(run.status.success(), "{}", run.stderr);
    assert!(run.stderr.contains("revision=v1"), "{}", run.stderr);
    assert!(
        run.stderr.contains(&format!(
            "origins: {}, {}; files: {}; env: none",
            gcs.url(),
            identity.endpoint(),
            key.display()
        )),
        "{}",
        run.stderr
    );
    let assertions = identity.assertions();
    assert_eq!(assertions.len(), 1);
    let claims: serde_json::Value = serde_json::from_str(
        python(
            "gcs_client.py",
            &["verify", key.to_str().unwrap(), &assertions[0]],
        )
        .trim(),
    )
    .unwrap();
    assert_eq!(claims["iss"], email);
    assert_eq!(claims["aud"], identity.token_url().as_str());
    assert_eq!(
        claims["scope"],
        "https://www.googleapis.com/auth/devstorage.read_only"
    );
    let private_key = fs::read_to_string(&key).unwrap();
    let pem_line = private_key.split("\\n").nth(1).unwrap();
    assert!(!run.stderr.contains(pem_line), "the key leaked");
}
