//! The azure fetcher end to end: `polhost run` against azurite, which
//! verifies SharedKey and SAS signatures; uploads with azure-storage-blob.

use std::thread;
use std::time::{Duration, Instant};

use crate::harness::azure_identity::AzureIdentity;
use crate::harness::azurite::{ACCOUNT, Azurite, CONTAINER, KEY};
use crate::harness::nginx::{Nginx, NginxOptions};
use crate::support::*;

const BLOB: &str = "authz.tar.gz";

/// A path-style (emulator) service on container `bundles` with
/// `credentials` (YAML, indented for it).
fn config(url: &str, credentials: &str) -> String {
    format!(
        "services:
  blobs:
    url: {url}
    credentials:
{credentials}
bundles:
  authz:
    service: blobs
    resource: {BLOB}
    persist: true
    polling:
      min_delay_seconds: 1
      max_delay_seconds: 1
"
    )
}

/// SharedKey credentials with the key from `AZURE_KEY`.
fn shared_key() -> String {
    format!(
        "      azure_shared_key:\n        account_name: {ACCOUNT}\n        account_key: ${{AZURE_KEY}}"
    )
}

/// The statuses of the GETs of the blob azurite logged, once there are at
/// least `n` (azurite writes its debug log asynchronously) or 5 s passed.
fn blob_gets(azurite: &Azurite, n: usize) -> Vec<u16> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let statuses: Vec<u16> = azurite
            .requests()
            .iter()
            .filter(|r| r.method == "GET" && r.path == format!("/{ACCOUNT}/{CONTAINER}/{BLOB}"))
            .map(|r| r.status)
            .collect();
        if statuses.len() >= n || Instant::now() > deadline {
            return statuses;
        }
        thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn azure_shared_key_fetch_then_304_then_new_revision_is_active() {
    let azurite = Azurite::start();
    azurite.put(BLOB, &bundle("v1"));
    let work = Workdir::new();
    let url = format!("{}/{CONTAINER}", azurite.endpoint());
    let cfg = work.config(&config(&url, &shared_key()));

    let polhost = Polhost::spawn(&["run", cfg.to_str().unwrap()], &[("AZURE_KEY", KEY)]);
    polhost.wait_for_activation("v1", "Download");
    polhost.wait_for(&[
        "sandbox grant:",
        &format!(
            "origins: {}; files: none; env: none",
            url.rsplitn(3, '/').nth(2).unwrap()
        ),
    ]);
    polhost.wait_for_n(2, PATIENCE, "not modified", |l| {
        l.contains("bundle not modified")
    });
    let statuses = blob_gets(&azurite, 3);
    assert_eq!(statuses[0], 200, "{statuses:?}");
    assert!(statuses[1..].len() >= 2, "{statuses:?}");
    assert!(statuses[1..].iter().all(|s| *s == 304), "{statuses:?}");

    azurite.put(BLOB, &bundle("v2"));
    polhost.wait_for_activation("v2", "Download");
    assert_eq!(work.metadata("authz")["revision"], "v2");
    assert!(
        !polhost.output().contains(KEY),
        "the key leaked into the log"
    );
}

#[test]
fn azure_wrong_key_is_a_clear_403_naming_container_blob_and_code() {
    let azurite = Azurite::start();
    azurite.put(BLOB, &bundle("v1"));
    let work = Workdir::new();
    let url = format!("{}/{CONTAINER}", azurite.endpoint());
    // A well-formed key of the right length that is not the account's.
    let wrong =
        "AAAAvdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";
    let cfg = work.config(&config(&url, &shared_key()));

    let run = polhost(
        &["run", "--once", cfg.to_str().unwrap()],
        &[("AZURE_KEY", wrong)],
    );
    assert_eq!(run.status.code(), Some(1), "{}", run.stderr);
    let errors: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| l.contains("bundle download failed"))
        .collect();
    assert_eq!(errors.len(), 1, "{}", run.stderr);
    assert!(
        errors[0].contains(&format!(
            "GET container \"bundles\" blob \"authz.tar.gz\" (account {ACCOUNT})"
        )) && errors[0].contains("Azure answered 403: AuthorizationFailure")
            && errors[0].contains("kind=\"unauthorized\""),
        "{}",
        run.stderr
    );
    assert_eq!(blob_gets(&azurite, 1), [403]);
    assert!(!run.stderr.contains(wrong), "the key leaked into the log");
}

#[test]
fn azure_sas_token_reads_the_blob_and_stays_out_of_the_log() {
    let azurite = Azurite::start();
    azurite.put(BLOB, &bundle("v1"));
    let sas = azurite.sas(BLOB);
    let signature = sas
        .split('&')
        .find_map(|p| p.strip_prefix("sig="))
        .unwrap()
        .to_string();
    let work = Workdir::new();
    let url = format!("{}/{CONTAINER}", azurite.endpoint());
    let cfg = work.config(&config(
        &url,
        "      azure_sas:\n        token: ${AZURE_SAS}",
    ));

    let run = polhost(
        &["run", "--once", cfg.to_str().unwrap()],
        &[("AZURE_SAS", &sas)],
    );
    assert!(run.status.success(), "{}", run.stderr);
    assert!(run.stderr.contains("revision=v1"), "{}", run.stderr);
    assert_eq!(blob_gets(&azurite, 1), [200]);
    assert!(!run.stderr.contains(&signature), "the SAS signature leaked");
}

#[test]
fn azure_tampered_sas_is_refused_with_403_and_not_logged() {
    let azurite = Azurite::start();
    azurite.put(BLOB, &bundle("v1"));
    let sas = azurite.sas(BLOB);
    // Widen the permissions the signature was made for: read -> read+write.
    let tampered = sas.replace("sp=r", "sp=rw");
    assert_ne!(tampered, sas);
    let work = Workdir::new();
    let url = format!("{}/{CONTAINER}", azurite.endpoint());
    let cfg = work.config(&config(
        &url,
        "      azure_sas:\n        token: ${AZURE_SAS}",
    ));

    let run = polhost(
        &["run", "--once", cfg.to_str().unwrap()],
        &[("AZURE_SAS", &tampered)],
    );
    assert_eq!(run.status.code(), Some(1), "{}", run.stderr);
    assert!(
        run.stderr
            .contains("Azure answered 403: AuthorizationFailure")
            && run.stderr.contains("kind=\"unauthorized\"")
            && run.stderr.contains(&format!("{url}/{BLOB}?…")),
        "{}",
        run.stderr
    );
    let signature = sas.split('&').find_map(|p| p.strip_prefix("sig=")).unwrap();
    assert!(!run.stderr.contains(signature), "the SAS signature leaked");
    assert_eq!(blob_gets(&azurite, 1), [403]);
}

#[test]
fn azure_managed_identity_token_from_an_identity_stand_in_is_sent_as_bearer() {
    // No emulator provides Azure's identity endpoint (stand-in), and
    // azurite checks OAuth tokens only over HTTPS: nginx with a bearer
    // check stands for the blob endpoint, serving the emulator's path.
    const TOKEN: &str = "eyJ0eXAiOiJKV1QifQ.managed-identity-token.sig";
    let identity = AzureIdentity::start(TOKEN);
    let work = Workdir::new();
    let root = work.path().join("www");
    publish(
        &root.join(format!("{ACCOUNT}/{CONTAINER}/{BLOB}")),
        &bundle("v1"),
        0,
    );
    let nginx = Nginx::start(NginxOptions {
        root: root.clone(),
        bearer: vec![(format!("/{ACCOUNT}/"), TOKEN.into())],
        ..NginxOptions::default()
    });
    let url = format!("{}/{ACCOUNT}/{CONTAINER}", nginx.url());
    let cfg = work.config(&config(
        &url,
        &format!(
            "      azure_managed_identity:\n        endpoint: {}",
            identity.endpoint()
        ),
    ));

    let run = polhost(&["run", "--once", cfg.to_str().unwrap()], &[]);
    assert!(run.status.success(), "{}", run.stderr);
    assert!(run.stderr.contains("revision=v1"), "{}", run.stderr);
    assert_eq!(identity.requests().len(), 1);
    assert_eq!(identity.requests()[0].1, 200);
    let log = nginx.access_log();
    assert_eq!((log.len(), log[0].status), (1, 200), "{log:?}");
    assert!(log[0].authorization_present);
    assert!(!run.stderr.contains(TOKEN), "the token leaked into the log");
}

#[test]
fn a_sas_signature_stays_out_of_trace_logs_in_text_and_json() {
    let azurite = Azurite::start();
    azurite.put(BLOB, &bundle("v1"));
    let sas = azurite.sas(BLOB);
    let signature = sas
        .split('&')
        .find_map(|p| p.strip_prefix("sig="))
        .unwrap()
        .to_string();
    // As it may be shown: percent-encoded as in the token, or decoded.
    let decoded = signature
        .replace("%2B", "+")
        .replace("%2F", "/")
        .replace("%3D", "=");
    let work = Workdir::new();
    let url = format!("{}/{CONTAINER}", azurite.endpoint());
    let cfg = work.config(&config(
        &url,
        "      azure_sas:\n        token: ${AZURE_SAS}",
    ));
    for (format, trace_line) in [("text", " TRACE "), ("json", r#""level":"TRACE""#)] {
        let run = polhost(
            &[
                "--log-format",
                format,
                "run",
                "--once",
                cfg.to_str().unwrap(),
            ],
            &[("AZURE_SAS", &sas), ("POLHOST_LOG", "trace")],
        );
        assert!(run.status.success(), "{format}: {}", run.stderr);
        // The level was in force: this is the log a secret would be in.
        assert!(run.stderr.contains(trace_line), "{format}: {}", run.stderr);
        for shown in [&signature, &decoded] {
            assert!(
                !run.stderr.contains(shown.as_str()),
                "{format}: the SAS signature leaked into the trace log"
            );
        }
    }
}
