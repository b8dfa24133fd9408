//! The s3 fetcher end to end: `polhost run` against moto with IAM
//! enforcement on (signatures really verified), uploads with boto3.

use std::fs;

use crate::harness::aws_imds::Imds;
use crate::harness::moto::{AccessKey, Moto};
use crate::support::*;

const KEY: &str = "authz.tar.gz";

/// A path-style service on moto's bucket `bundles` with `signing` as its
/// `s3_signing` (YAML, indented for it).
fn config(moto: &Moto, signing: &str) -> String {
    format!(
        "services:
  store:
    url: {}/bundles
    credentials:
      s3_signing:
{signing}
bundles:
  authz:
    service: store
    resource: {KEY}
    persist: true
    polling:
      min_delay_seconds: 1
      max_delay_seconds: 1
",
        moto.url()
    )
}

fn env_of(key: &AccessKey) -> Vec<(&'static str, String)> {
    vec![
        ("AWS_ACCESS_KEY_ID", key.id.clone()),
        ("AWS_SECRET_ACCESS_KEY", key.secret.clone()),
        ("AWS_REGION", "us-east-1".to_string()),
    ]
}

fn pairs<'a>(env: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    env.iter().map(|(n, v)| (*n, v.as_str())).collect()
}

fn gets(moto: &Moto) -> Vec<u16> {
    moto.requests()
        .iter()
        .filter(|r| r.method == "GET" && r.path == format!("/bundles/{KEY}"))
        .map(|r| r.status)
        .collect()
}

#[test]
fn s3_env_credentials_fetch_then_304_then_new_revision_is_active() {
    let moto = Moto::start();
    let key = moto.setup();
    moto.put(&key, KEY, &bundle("v1"));
    let work = Workdir::new();
    let cfg = work.config(&config(&moto, "        environment_credentials: {}"));
    let env = env_of(&key);

    let polhost = Polhost::spawn(&["run", cfg.to_str().unwrap()], &pairs(&env));
    polhost.wait_for_activation("v1", "Download");
    // The sandbox holds exactly what environment_credentials reads.
    polhost.wait_for(&[
        "sandbox grant:",
        &format!("origins: {};", moto.url()),
        "files: none; env: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_SECURITY_TOKEN, AWS_REGION",
    ]);
    // Polls with no change: conditional GETs answered 304, no body.
    polhost.wait_for_n(2, PATIENCE, "not modified", |l| {
        l.contains("bundle not modified")
    });
    let statuses = gets(&moto);
    assert_eq!(statuses[0], 200, "{statuses:?}");
    assert!(statuses[1..].len() >= 2, "{statuses:?}");
    assert!(statuses[1..].iter().all(|s| *s == 304), "{statuses:?}");

    moto.put(&key, KEY, &bundle("v2"));
    polhost.wait_for_activation("v2", "Download");
    assert_eq!(work.metadata("authz")["revision"], "v2");
    let log = polhost.output();
    assert!(!log.contains(&key.secret), "the secret leaked into the log");
}

#[test]
fn s3_wrong_secret_is_one_unauthorized_error_naming_signature_does_not_match() {
    let moto = Moto::start();
    let key = moto.setup();
    moto.put(&key, KEY, &bundle("v1"));
    let work = Workdir::new();
    let cfg = work.config(&config(&moto, "        environment_credentials: {}"));
    let wrong = "wJalrXUtnFEMI-this-is-not-the-secret";
    let env = [
        ("AWS_ACCESS_KEY_ID", key.id.as_str()),
        ("AWS_SECRET_ACCESS_KEY", wrong),
        ("AWS_REGION", "us-east-1"),
    ];

    let run = polhost(&["run", "--once", cfg.to_str().unwrap()], &env);
    assert_eq!(run.status.code(), Some(1), "{}", run.stderr);
    let errors: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| l.contains("bundle download failed"))
        .collect();
    assert_eq!(errors.len(), 1, "{}", run.stderr);
    assert!(
        errors[0].contains("GET s3://bundles/authz.tar.gz")
            && errors[0].contains("S3 answered 403: SignatureDoesNotMatch")
            && errors[0].contains("kind=\"unauthorized\""),
        "{}",
        run.stderr
    );
    // One request per poll: no retries inside the fetcher.
    assert_eq!(gets(&moto), [403]);
    assert!(
        !run.stderr.contains(wrong),
        "the secret leaked into the log"
    );
    assert!(!work.persisted("authz").exists());
}

#[test]
fn s3_missing_object_is_not_found_naming_bucket_key_and_code() {
    let moto = Moto::start();
    let key = moto.setup();
    let work = Workdir::new();
    let cfg = work.config(&config(&moto, "        environment_credentials: {}"));
    let env = env_of(&key);
    let run = polhost(&["run", "--once", cfg.to_str().unwrap()], &pairs(&env));
    assert_eq!(run.status.code(), Some(1), "{}", run.stderr);
    assert!(
        run.stderr
            .contains("GET s3://bundles/authz.tar.gz (http://127.0.0.1:")
            && run.stderr.contains("S3 answered 404: NoSuchKey")
            && run.stderr.contains("kind=\"not-found\""),
        "{}",
        run.stderr
    );
}

#[test]
fn s3_profile_credentials_sign_from_the_granted_file() {
    let moto = Moto::start();
    let key = moto.setup();
    moto.put(&key, KEY, &bundle("v1"));
    let work = Workdir::new();
    let credentials = work.path().join("aws-credentials");
    fs::write(
        &credentials,
        format!(
            "[default]\naws_access_key_id = AKIADEFAULTNOTUSED\naws_secret_access_key = nope\n\n\
             [bundles]\naws_access_key_id = {}\naws_secret_access_key = {}\n",
            key.id, key.secret
        ),
    )
    .unwrap();
    let cfg = work.config(&config(
        &moto,
        &format!(
            "        profile_credentials:\n          path: {}\n          profile: bundles\n          aws_region: us-east-1",
            credentials.display()
        ),
    ));

    let run = polhost(&["run", "--once", cfg.to_str().unwrap()], &[]);
    assert!(run.status.success(), "{}", run.stderr);
    assert!(
        run.stderr
            .contains(&format!("files: {}; env: none", credentials.display())),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("revision=v1"), "{}", run.stderr);
    assert!(!run.stderr.contains(&key.secret));
    assert_eq!(gets(&moto), [200]);
}

#[test]
fn s3_web_identity_credentials_come_from_moto_sts() {
    let moto = Moto::start();
    let key = moto.setup();
    moto.put(&key, KEY, &bundle("v1"));
    let work = Workdir::new();
    let token_file = work.path().join("web-identity-token");
    let token = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJwb2xob3N0In0.c2lnbmF0dXJl";
    fs::write(&token_file, token).unwrap();
    let cfg = work.config(&config(
        &moto,
        &format!(
            "        web_identity_credentials:\n          aws_region: us-east-1\n          session_name: polhost-test\n          endpoint: {}",
            moto.url()
        ),
    ));
    // moto answers 500 to the (by design unsigned) AssumeRoleWithWebIdentity
    // while enforcing; let exactly that one request through. The GET is
    // verified against the temporary credentials STS issued.
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
    assert!(run.stderr.contains("revision=v1"), "{}", run.stderr);
    assert!(
        run.stderr.contains(&format!(
            "files: {}; env: AWS_ROLE_ARN, AWS_WEB_IDENTITY_TOKEN_FILE",
            token_file.display()
        )),
        "{}",
        run.stderr
    );
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

#[test]
fn s3_metadata_credentials_come_from_an_imds_stand_in() {
    let moto = Moto::start();
    let key = moto.setup();
    moto.put(&key, KEY, &bundle("v1"));
    // No emulator provides IMDS: a stand-in hands out the IAM user's key.
    let imds = Imds::start("bundle-reader", &key.id, &key.secret);
    let work = Workdir::new();
    let cfg = work.config(&config(
        &moto,
        &format!(
            "        metadata_credentials:\n          iam_role: bundle-reader\n          aws_region: us-east-1\n          endpoint: {}",
            imds.url()
        ),
    ));

    let run = polhost(&["run", "--once", cfg.to_str().unwrap()], &[]);
    assert!(run.status.success(), "{}", run.stderr);
    assert!(run.stderr.contains("revision=v1"), "{}", run.stderr);
    let seen: Vec<_> = imds
        .requests()
        .into_iter()
        .map(|r| (r.method, r.path, r.status))
        .collect();
    assert_eq!(
        seen,
        [
            ("PUT".into(), "/latest/api/token".into(), 200),
            (
                "GET".into(),
                "/latest/meta-data/iam/security-credentials/bundle-reader".into(),
                200
            ),
        ]
    );
    assert!(
        run.stderr.contains(&format!(
            "origins: {}, {}; files: none; env: none",
            moto.url(),
            imds.url()
        )),
        "{}",
        run.stderr
    );
    assert!(!run.stderr.contains(&key.secret));
}
