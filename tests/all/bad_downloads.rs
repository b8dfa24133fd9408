//! Downloads that must not become active: the previous bundle stays active
//! and on disk, byte for byte.

use std::io::{Read, Write};
use std::net::TcpListener;

use crate::harness::nginx::{Nginx, NginxOptions};
use crate::support::*;

/// A persisted v1 from `server`, then one `--once` run after `replace`
/// changed what the server holds; returns that run's log.
fn after_bad_download(
    max_file_bytes: Option<u64>,
    replace: impl FnOnce(&std::path::Path),
) -> String {
    let work = Workdir::new();
    let root = work.path().join("www");
    let served = root.join("bundles/authz.tar.gz");
    publish(&served, &bundle("v1"), 0);
    let server = Nginx::start(NginxOptions {
        root: root.clone(),
        ..NginxOptions::default()
    });
    let limit = max_file_bytes
        .map(|n| format!("    size_limit_bytes: {n}\n"))
        .unwrap_or_default();
    let cfg = work.config(&format!(
        "services:\n  web:\n    url: {}\nbundles:\n  authz:\n    resource: bundles/authz.tar.gz\n    persist: true\n{limit}",
        server.url()
    ));
    let first = polhost(&["run", "--once", cfg.to_str().unwrap()], &[]);
    assert!(first.status.success(), "{}", first.stderr);
    let good = std::fs::read(work.persisted("authz")).unwrap();
    let metadata = work.metadata("authz");

    replace(&served);
    let run = polhost(&["run", "--once", cfg.to_str().unwrap()], &[]);
    assert!(
        run.stderr.contains("bundle download failed"),
        "{}",
        run.stderr
    );
    // Still active, still on disk, untouched; no temp file left behind.
    assert!(run.status.success(), "{}", run.stderr);
    assert_eq!(std::fs::read(work.persisted("authz")).unwrap(), good);
    assert_eq!(work.metadata("authz"), metadata);
    let files = std::fs::read_dir(work.persisted("authz").parent().unwrap())
        .unwrap()
        .count();
    assert_eq!(files, 2, "bundle.tar.gz and metadata.json only");
    run.stderr
}

#[test]
fn html_instead_of_a_bundle_is_refused_as_not_gzip() {
    let log = after_bad_download(None, |served| {
        publish(served, b"<html>maintenance</html>", 10);
    });
    assert!(log.contains("invalid bundle: not a gzip stream"), "{log}");
}

#[test]
fn truncated_bundle_is_refused() {
    let log = after_bad_download(None, |served| {
        let whole = bundle("v2");
        publish(served, &whole[..whole.len() / 2], 10);
    });
    assert!(
        log.contains("invalid bundle: corrupt or truncated archive"),
        "{log}"
    );
}

#[test]
fn file_over_size_limit_is_refused_from_its_tar_header() {
    // Compressible: the download is small, only the file inside is big.
    let log = after_bad_download(Some(4096), |served| {
        publish(
            served,
            &tar_gz(&[("authz/blob.bin", vec![b'a'; 20_000])]),
            10,
        );
    });
    assert!(
        log.contains(
            "invalid bundle: entry \"authz/blob.bin\": 20000 bytes exceeds size_limit_bytes (4096)"
        ),
        "{log}"
    );
}

#[test]
fn download_over_size_limit_is_stopped_mid_stream() {
    // Every file is under the limit; the download as a whole is not.
    let log = after_bad_download(Some(4096), |served| {
        let files: Vec<_> = (0..10)
            .map(|i| (format!("authz/part{i}.bin"), noise(3000, i)))
            .collect();
        let files: Vec<_> = files.iter().map(|(n, c)| (n.as_str(), c.clone())).collect();
        publish(served, &tar_gz(&files), 10);
    });
    assert!(
        log.contains("bundle exceeds size_limit_bytes (4096 bytes); download stopped"),
        "{log}"
    );
}

#[test]
fn connection_cut_mid_body_is_a_transient_error() {
    // A fault only a hand-written server can make: it promises a whole
    // bundle, sends part of it, and hangs up.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let whole = bundle("v1");
    std::thread::spawn(move || {
        for stream in listener.incoming().take(1) {
            let mut stream = stream.unwrap();
            let mut request = [0u8; 4096];
            let _ = stream.read(&mut request);
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nETag: \"x\"\r\n\r\n",
                whole.len()
            );
            let _ = stream.write_all(head.as_bytes());
            let _ = stream.write_all(&whole[..whole.len() / 2]);
        }
    });
    let work = Workdir::new();
    let cfg = work.config(&format!(
        "services:\n  cut:\n    url: http://127.0.0.1:{port}\nbundles:\n  authz:\n    persist: true\n"
    ));
    let run = polhost(&["run", "--once", cfg.to_str().unwrap()], &[]);
    assert_eq!(run.status.code(), Some(1), "{}", run.stderr);
    assert!(run.stderr.contains("kind=\"transient\""), "{}", run.stderr);
    assert!(!work.persisted("authz").exists());
}
