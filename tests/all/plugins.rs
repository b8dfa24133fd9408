//! Fetcher plugins as an operator configures them under `polhost.fetchers`:
//! loaded from a file or pulled from an OCI registry (pushed with oras-py
//! in the Wasm OCI layout), checked at start (exit 2 naming the field),
//! cached so that a later start needs no registry, and inspected with
//! `polhost plugin inspect`. The plugin used here is the standard http
//! fetcher's component under a type polhost does not ship (`web`): a plugin
//! is bytes plus a grant, whoever wrote it.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::harness::nginx::{Nginx, NginxOptions};
use crate::harness::registry::{Registry, RegistryOptions, oras_push_wasm, sha256_digest};
use crate::support::*;

/// The http fetcher's component, written to `dir/fetchers/web.wasm`.
fn web_component(dir: &Path) -> PathBuf {
    let path = dir.join("fetchers/web.wasm");
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(&path, polhost_fetchers::component("http").unwrap()).unwrap();
    path
}

fn served(work: &Workdir) -> Nginx {
    let root = work.path().join("www");
    publish(&root.join("bundles/authz.tar.gz"), &bundle("v1"), 0);
    Nginx::start(NginxOptions {
        root,
        ..NginxOptions::default()
    })
}

/// A config whose service `kv` has `type: web`, served by the plugin entry
/// `entry` (indented under `polhost.fetchers.web`).
fn config(url: &str, entry: &str) -> String {
    format!(
        "polhost:
  fetchers:
    web:
{entry}
services:
  kv:
    url: {url}
    type: web
bundles:
  authz:
    service: kv
    resource: bundles/authz.tar.gz
    persist: true
"
    )
}

#[test]
fn a_plugin_from_a_file_serves_a_type_polhost_does_not_ship() {
    let work = Workdir::new();
    let server = served(&work);
    web_component(work.path());
    // Relative to the config file, not to polhost's working directory.
    let cfg = work.config(&config(&server.url(), "      component: fetchers/web.wasm"));
    let run = polhost(&["run", "--once", cfg.to_str().unwrap()], &[]);
    assert!(run.status.success(), "{}", run.stderr);
    assert_eq!(work.metadata("authz")["revision"], "v1");
    assert!(
        run.stderr.contains("fetcher=web"),
        "the bundle's span names the plugin: {}",
        run.stderr
    );
}

#[test]
fn every_plugin_field_is_checked_at_start_with_exit_2() {
    let work = Workdir::new();
    let component = web_component(work.path());
    let good = sha256_digest(&fs::read(&component).unwrap());
    let other = format!("sha256:{}", "0".repeat(64));
    let not_a_fetcher = work.path().join("empty.wasm");
    // The smallest valid component: it exports nothing.
    fs::write(&not_a_fetcher, b"\0asm\x0d\0\x01\0").unwrap();
    let url = "http://127.0.0.1:9";
    let cases: Vec<(String, String)> = vec![
        (
            config(url, "      component: fetchers/missing.wasm"),
            format!(
                "polhost.fetchers.web.component: {}: cannot read the component: No such file or directory",
                work.path().join("fetchers/missing.wasm").display()
            ),
        ),
        (
            config(url, &format!("      component: {}\n      digest: {other}", component.display())),
            format!(
                "polhost.fetchers.web.component: {}: digest mismatch: the configuration says {other}, the component is {good}",
                component.display()
            ),
        ),
        (
            config(url, "      component: oci://127.0.0.1:5000/fetchers/web:1"),
            "polhost.fetchers.web.digest: required for an oci:// component".into(),
        ),
        (
            config(
                url,
                "      component: fetchers/web.wasm\n      allowed_outbound_hosts: ['auth.example.com']",
            ),
            "polhost.fetchers.web.allowed_outbound_hosts[0]: an origin is scheme://host[:port] (no scheme found)"
                .into(),
        ),
        (
            config(url, &format!("      component: {}", not_a_fetcher.display())),
            "polhost.fetchers.web.component: fetcher \"web\" is not a valid component: it does not export polhost:fetcher/fetch@0.1.x"
                .into(),
        ),
        (
            config(url, "      component: fetchers/web.wasm").replace("type: web", "type: etcd"),
            "services.kv.type: no fetcher for service type \"etcd\" (polhost has: http, oci, s3, azure, gcs, web; add one under polhost.fetchers.etcd)"
                .into(),
        ),
    ];
    for (text, expected) in cases {
        let cfg = work.config(&text);
        let run = polhost(&["run", "--once", cfg.to_str().unwrap()], &[]);
        assert_eq!(run.status.code(), Some(2), "{text}\n{}", run.stderr);
        assert!(
            run.stderr.contains(&expected),
            "expected {expected:?} in:\n{}",
            run.stderr
        );
        assert!(
            run.stderr.contains(&cfg.display().to_string()),
            "{}",
            run.stderr
        );
    }
}

#[test]
fn an_oci_plugin_is_pulled_by_digest_cached_and_loaded_offline() {
    let work = Workdir::new();
    let server = served(&work);
    let component = web_component(work.path());
    let mut registry = Registry::start(RegistryOptions::default());
    let (manifest, layer) = oras_push_wasm(&registry, "fetchers/web:1.0.0", &component);
    let cache = work.path().join("cache");
    let env = [("XDG_CACHE_HOME", cache.to_str().unwrap())];
    let entry = format!(
        "      component: oci://{}/fetchers/web:1.0.0@{manifest}\n      digest: {layer}",
        registry.host()
    );
    let cfg = work.config(&config(&server.url(), &entry));
    let run = polhost(&["run", "--once", cfg.to_str().unwrap()], &env);
    assert!(run.status.success(), "{}", run.stderr);
    assert_eq!(work.metadata("authz")["revision"], "v1");
    // The config and the layer, each once.
    let blob_gets = registry.blob_gets();
    assert_eq!(
        blob_gets.iter().filter(|a| a.uri.contains(&layer)).count(),
        1,
        "{blob_gets:?}"
    );
    // Stored content-addressed beside its compiled code.
    let stored = cache.join("polhost/components").join(format!(
        "sha256-{}.wasm",
        layer.trim_start_matches("sha256:")
    ));
    assert_eq!(fs::read(&stored).unwrap(), fs::read(&component).unwrap());

    // The registry is down: the cached component still loads.
    registry.stop();
    let start = Instant::now();
    let run = polhost(&["run", "--once", cfg.to_str().unwrap()], &env);
    let elapsed = start.elapsed();
    assert!(run.status.success(), "{}", run.stderr);
    eprintln!("run --once with a cached oci:// component, registry down: {elapsed:?}");
}

#[test]
fn an_oci_plugin_whose_layer_is_not_the_pinned_digest_is_refused_before_download() {
    let work = Workdir::new();
    let component = web_component(work.path());
    let registry = Registry::start(RegistryOptions::default());
    let (_, layer) = oras_push_wasm(&registry, "fetchers/web:1.0.0", &component);
    let pinned = format!("sha256:{}", "1".repeat(64));
    let cache = work.path().join("cache");
    let entry = format!(
        "      component: oci://{}/fetchers/web:1.0.0\n      digest: {pinned}",
        registry.host()
    );
    let cfg = work.config(&config("http://127.0.0.1:9", &entry));
    let run = polhost(
        &["run", "--once", cfg.to_str().unwrap()],
        &[("XDG_CACHE_HOME", cache.to_str().unwrap())],
    );
    assert_eq!(run.status.code(), Some(2), "{}", run.stderr);
    assert!(
        run.stderr.contains(&format!(
            "polhost.fetchers.web.component: oci://{}/fetchers/web:1.0.0: its wasm layer is sha256:",
        registry.host())),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains(&format!(
            "the configuration's digest is {pinned}: refused before downloading"
        )),
        "{}",
        run.stderr
    );
    // The manifest and its config were read; the layer never was.
    let blob_gets = registry.blob_gets();
    assert!(
        blob_gets.iter().all(|a| !a.uri.contains(&layer)),
        "{blob_gets:?}"
    );
}

#[test]
fn plugin_inspect_shows_the_contract_fit_imports_and_grants() {
    let work = Workdir::new();
    let component = web_component(work.path());
    let cfg = work.config(&config(
        "https://kv.example.com",
        "      component: fetchers/web.wasm\n      allowed_outbound_hosts: ['https://auth.example.com']\n      env: [KV_TOKEN]\n      files: [/run/secrets/kv]\n      limits: {memory_mib: 16, max_requests: 4}",
    ));
    let out = polhost_printing(
        &[
            "plugin",
            "inspect",
            component.to_str().unwrap(),
            "--config",
            cfg.to_str().unwrap(),
        ],
        &[],
    );
    let stdout = &out.stdout;
    assert!(out.status.success(), "{stdout}{}", out.stderr);
    let digest = sha256_digest(&fs::read(&component).unwrap());
    for line in [
        format!("digest:    {digest}"),
        format!("size:      {} bytes", fs::metadata(&component).unwrap().len()),
        "fits:      yes, polhost:fetcher/fetcher@0.1.0".to_string(),
        "  polhost:fetcher/fetch@0.1.0".to_string(),
        "  polhost:fetcher/host@0.1.0".to_string(),
        "  wasi:http/outgoing-handler@0.2.12".to_string(),
        "  service \"kv\" (type web): origins: https://kv.example.com:443, https://auth.example.com:443; files: /run/secrets/kv; env: KV_TOKEN; limits: memory 16 MiB, 4 requests, 600 s".to_string(),
    ] {
        assert!(stdout.lines().any(|l| l == line), "no line {line:?} in:\n{stdout}");
    }
    assert!(stdout.contains("world root {"), "{stdout}");

    // A component that does not fit: exit 2, saying why.
    let empty = work.path().join("empty.wasm");
    fs::write(&empty, b"\0asm\x0d\0\x01\0").unwrap();
    let out = polhost_printing(&["plugin", "inspect", empty.to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(2));
    let stdout = &out.stdout;
    assert!(stdout.contains("fits:      no: fetcher \"inspected\" is not a valid component: it does not export polhost:fetcher/fetch@0.1.x"), "{stdout}");
}

#[test]
fn plugin_inspect_reads_an_oci_reference() {
    let work = Workdir::new();
    let component = web_component(work.path());
    let registry = Registry::start(RegistryOptions::default());
    let (_, layer) = oras_push_wasm(&registry, "fetchers/web:2", &component);
    let reference = format!("oci://{}/fetchers/web:2", registry.host());
    let cache = work.path().join("cache");
    let out = polhost_printing(
        &["plugin", "inspect", &reference, "--digest", &layer],
        &[("XDG_CACHE_HOME", cache.to_str().unwrap())],
    );
    assert!(out.status.success(), "{}{}", out.stdout, out.stderr);
    assert!(
        out.stdout.contains(&format!("digest:    {layer}")),
        "{}",
        out.stdout
    );
    // Without a digest, refused as the configuration would be.
    let out = polhost_printing(&["plugin", "inspect", &reference], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        out.stderr
            .contains("digest: required for an oci:// component"),
        "{}",
        out.stderr
    );
}

#[test]
fn plugin_wit_writes_the_contract_a_plugin_author_builds_against() {
    let work = Workdir::new();
    let out = polhost_printing(
        &["plugin", "wit", work.path().join("wit").to_str().unwrap()],
        &[],
    );
    assert!(out.status.success(), "{}", out.stderr);
    let repo_wit = crate::harness::repo_root().join("wit");
    for file in [
        "fetcher.wit",
        "deps/http/http.wit",
        "deps/io/io.wit",
        "deps/sockets/sockets.wit",
    ] {
        assert_eq!(
            fs::read_to_string(work.path().join("wit").join(file)).unwrap(),
            fs::read_to_string(repo_wit.join(file)).unwrap(),
            "{file}"
        );
    }
    let out = polhost_printing(&["plugin", "wit"], &[]);
    assert!(out.stdout.contains("package polhost:fetcher@0.1.0;"));
}
