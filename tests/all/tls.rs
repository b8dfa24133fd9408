//! The host's network layer against nginx on 127.0.0.1: HTTPS with a
//! private CA (`tls.ca_cert`), mutual TLS (`credentials.client_tls`),
//! `allow_insecure_tls`, and keep-alive connections pooled across polls
//! (proven from nginx's side, by its `$connection` numbers).

use std::collections::BTreeSet;
use std::fs;
use std::time::{Duration, Instant};

use crate::harness::nginx::{Nginx, NginxOptions, NginxTls};
use crate::harness::tls::TestCa;
use crate::support::*;

/// nginx over HTTPS with `ca`'s server certificate (asking for a client
/// certificate when `mutual`), serving `bundles/authz.tar.gz` at v1.
fn https_nginx(work: &Workdir, ca: &TestCa, mutual: bool) -> Nginx {
    let root = work.path().join("www");
    publish(&root.join("bundles/authz.tar.gz"), &bundle("v1"), 0);
    Nginx::start(NginxOptions {
        root,
        tls: Some(NginxTls {
            cert: ca.server_cert.clone(),
            key: ca.server_key.clone(),
            client_ca: mutual.then(|| ca.ca_cert.clone()),
        }),
        ..NginxOptions::default()
    })
}

/// `polhost run --once` on one bundle of service `web` at `url`, with
/// `service_extra` (YAML lines indented four spaces) under the service.
fn run_once(work: &Workdir, url: &str, service_extra: &str) -> Finished {
    let cfg = work.config(&format!(
        "services:\n  web:\n    url: {url}\n{service_extra}bundles:\n  authz:\n    service: web\n    resource: bundles/authz.tar.gz\n"
    ));
    polhost(&["run", "--once", cfg.to_str().unwrap()], &[])
}

#[test]
fn a_private_ca_is_refused_without_tls_ca_cert_naming_the_url_and_trusted_with_it() {
    let work = Workdir::new();
    let ca = TestCa::new();
    let nginx = https_nginx(&work, &ca, false);

    let refused = run_once(&work, &nginx.url(), "");
    assert!(!refused.status.success(), "{}", refused.stderr);
    let url = format!("{}/bundles/authz.tar.gz", nginx.url());
    assert!(
        refused.stderr.contains(&url) && refused.stderr.contains("certificate"),
        "the error names neither the URL nor the certificate:\n{}",
        refused.stderr
    );

    let trusted = run_once(
        &work,
        &nginx.url(),
        &format!("    tls:\n      ca_cert: {}\n", ca.ca_cert.display()),
    );
    assert!(trusted.status.success(), "{}", trusted.stderr);
    assert!(
        trusted.stderr.contains("bundle activated"),
        "{}",
        trusted.stderr
    );
}

#[test]
fn allow_insecure_tls_fetches_from_an_untrusted_server_with_a_warning_naming_the_service() {
    let work = Workdir::new();
    let ca = TestCa::new();
    let nginx = https_nginx(&work, &ca, false);
    let run = run_once(&work, &nginx.url(), "    allow_insecure_tls: true\n");
    assert!(run.status.success(), "{}", run.stderr);
    assert!(
        run.stderr.contains("allow_insecure_tls")
            && run.stderr.contains("\"web\"")
            && run.stderr.contains("not verified"),
        "no warning naming the service:\n{}",
        run.stderr
    );
}

#[test]
fn mutual_tls_is_refused_without_client_tls_and_fetched_with_it() {
    let work = Workdir::new();
    let ca = TestCa::new();
    let nginx = https_nginx(&work, &ca, true);
    let trust = format!("    tls:\n      ca_cert: {}\n", ca.ca_cert.display());

    // nginx answers 400 to a handshake without a client certificate.
    let refused = run_once(&work, &nginx.url(), &trust);
    assert!(!refused.status.success(), "{}", refused.stderr);
    assert!(refused.stderr.contains("400"), "{}", refused.stderr);

    let client = format!(
        "{trust}    credentials:\n      client_tls:\n        cert: {}\n        private_key: {}\n",
        ca.client_cert.display(),
        ca.client_key.display()
    );
    let fetched = run_once(&work, &nginx.url(), &client);
    assert!(fetched.status.success(), "{}", fetched.stderr);
    assert!(
        fetched.stderr.contains("bundle activated"),
        "{}",
        fetched.stderr
    );
}

#[test]
fn an_encrypted_client_key_is_decrypted_with_its_passphrase_legacy_pem_and_pkcs8() {
    let work = Workdir::new();
    let ca = TestCa::new();
    let nginx = https_nginx(&work, &ca, true);
    let passphrase = "c0rrect-h0rse";
    for pkcs8 in [false, true] {
        let key = ca.encrypted_client_key(passphrase, pkcs8);
        let client = |passphrase: &str| {
            format!(
                "    tls:\n      ca_cert: {}\n    credentials:\n      client_tls:\n        cert: {}\n        private_key: {}\n        private_key_passphrase: {passphrase}\n",
                ca.ca_cert.display(),
                ca.client_cert.display(),
                key.display()
            )
        };
        let fetched = run_once(&work, &nginx.url(), &client(passphrase));
        assert!(
            fetched.status.success(),
            "pkcs8={pkcs8}: {}",
            fetched.stderr
        );
        assert!(
            fetched.stderr.contains("bundle activated"),
            "{}",
            fetched.stderr
        );
        let wrong = run_once(&work, &nginx.url(), &client("n0t-the-passphrase"));
        assert_eq!(wrong.status.code(), Some(2), "{}", wrong.stderr);
        assert!(
            wrong.stderr.contains(&format!(
                "services.web.credentials.client_tls.private_key: {}: the passphrase does not decrypt the key",
                key.display()
            )),
            "{}",
            wrong.stderr
        );
        assert!(
            !wrong.stderr.contains("n0t-the-passphrase"),
            "{}",
            wrong.stderr
        );
    }
}

#[test]
fn a_client_key_that_is_not_pem_exits_2_naming_the_field_and_not_the_key() {
    let work = Workdir::new();
    let ca = TestCa::new();
    let key = work.path().join("bad-key.pem");
    fs::write(&key, "hunter2-not-a-key").unwrap();
    let run = run_once(
        &work,
        "https://127.0.0.1:9",
        &format!(
            "    credentials:\n      client_tls:\n        cert: {}\n        private_key: {}\n",
            ca.client_cert.display(),
            key.display()
        ),
    );
    assert_eq!(run.status.code(), Some(2), "{}", run.stderr);
    assert!(
        run.stderr
            .contains("services.web.credentials.client_tls.private_key"),
        "{}",
        run.stderr
    );
    assert!(!run.stderr.contains("hunter2"), "{}", run.stderr);
}

/// Two bundles of one service polled every second: their requests share
/// keep-alive connections (wasmtime-wasi-http's own sender opened one per
/// request).
#[test]
fn polls_of_many_bundles_of_one_service_share_keep_alive_connections() {
    let work = Workdir::new();
    let root = work.path().join("www");
    // Disjoint roots: both bundles can be active at once.
    for name in ["a", "b"] {
        let manifest = format!(r#"{{"revision":"v1","roots":["{name}"]}}"#);
        let policy = format!("package {name}\n");
        let bytes = tar_gz(&[
            (".manifest", manifest.into_bytes()),
            (&format!("{name}/policy.rego"), policy.into_bytes()),
        ]);
        publish(&root.join(format!("bundles/{name}.tar.gz")), &bytes, 0);
    }
    let nginx = Nginx::start(NginxOptions {
        root,
        ..NginxOptions::default()
    });
    let cfg = work.config(&format!(
        "services:\n  web:\n    url: {}\nbundles:\n  a:\n    service: web\n    resource: bundles/a.tar.gz\n    polling: {{min_delay_seconds: 1, max_delay_seconds: 1}}\n  b:\n    service: web\n    resource: bundles/b.tar.gz\n    polling: {{min_delay_seconds: 1, max_delay_seconds: 1}}\n",
        nginx.url()
    ));
    let mut polhost = Polhost::spawn(&["run", cfg.to_str().unwrap()], &[]);
    let deadline = Instant::now() + Duration::from_secs(30);
    let log = loop {
        let log = nginx.access_log();
        if log
            .iter()
            .filter(|e| e.path.starts_with("/bundles/"))
            .count()
            >= 10
        {
            break log;
        }
        assert!(Instant::now() < deadline, "too few polls: {log:?}");
        std::thread::sleep(Duration::from_millis(200));
    };
    polhost.terminate();
    let polls: Vec<_> = log
        .iter()
        .filter(|e| e.path.starts_with("/bundles/"))
        .collect();
    let connections: BTreeSet<u64> = polls.iter().map(|e| e.connection).collect();
    assert!(
        polls.iter().skip(2).all(|e| e.status == 304),
        "the polls after the first two should be 304s: {polls:?}"
    );
    // Two bundles may fetch at once: at most two connections, however
    // many polls.
    assert!(
        connections.len() <= 2,
        "{} polls over {} connections: {polls:?}",
        polls.len(),
        connections.len()
    );
}
