//! The real OPA as polhost's client: OPA takes its bundles from polhost's
//! local API (`polhost run CONFIG --addr 127.0.0.1:PORT`) or from
//! `polhost serve DIR`, and what OPA itself reports (its `/v1/status`,
//! `/v1/data`, `/health?bundles`, `/metrics`) is the oracle.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::harness::moto::Moto;
use crate::harness::nginx::{Nginx, NginxOptions};
use crate::harness::opa::{Opa, OpaConfig, Response, http_get, opa_bin, rfc3339_unix_nanos};
use crate::harness::registry::{OciLayout, Registry, RegistryOptions, skopeo_copy};
use crate::harness::{free_port, port_open};
use crate::support::*;

/// What the issue asks: a new revision at the remote reaches OPA within
/// this, by long polling.
const WITHIN: Duration = Duration::from_secs(2);
/// OPA's token on polhost's API in the token test.
const API_TOKEN: &str = "local-api-s3cret";

/// The policy of every bundle here: `allow` when the input's user is
/// `data.authz.admin`, `greeting` naming the revision in the data.
const POLICY: &str = "package authz

default allow := false

allow if input.user == data.authz.admin

greeting := sprintf(\"hello from %s\", [data.authz.revision])
";

/// A bundle of [`POLICY`] and its data.
fn policy_bundle(revision: &str) -> Vec<u8> {
    tar_gz(&[
        (
            ".manifest",
            format!(r#"{{"revision":"{revision}","roots":["authz"]}}"#).into_bytes(),
        ),
        ("authz/policy.rego", POLICY.as_bytes().to_vec()),
        (
            "authz/data.json",
            format!(r#"{{"revision":"{revision}","admin":"alice"}}"#).into_bytes(),
        ),
    ])
}

/// OPA answers from the policy of `revision`.
fn assert_opa_evaluates(opa: &Opa, revision: &str) {
    assert_eq!(
        opa.data("authz/greeting"),
        json!(format!("hello from {revision}"))
    );
    assert_eq!(
        opa.query("authz/allow", &json!({"user": "alice"})),
        json!(true)
    );
    assert_eq!(
        opa.query("authz/allow", &json!({"user": "mallory"})),
        json!(false)
    );
}

/// The harness itself, on the server that existed before the local API:
/// OPA long-polls `polhost serve DIR`, a change reaches it while its
/// request is held (its polling delay is 60-120 s).
#[test]
fn opa_long_polls_polhost_serve_and_evaluates_the_policy() {
    let work = Workdir::new();
    let root = work.path().join("www");
    publish(&root.join("bundles/authz.tar.gz"), &policy_bundle("v1"), 0);
    let (_server, url) = crate::long_polling::serve(&root);
    let opa = Opa::start(
        &OpaConfig::new(&url)
            .bundle("authz", "bundles/authz.tar.gz")
            .yaml(),
    );
    opa.wait_for_revision("authz", "v1", PATIENCE);
    assert_opa_evaluates(&opa, "v1");
    let status = opa.bundle_status("authz");
    assert_eq!(status["type"], "snapshot");
    assert_eq!(status["size"], policy_bundle("v1").len());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i128;
    let activated = unix_nanos(&status["last_successful_activation"]);
    assert!(
        (0..60_000_000_000).contains(&(now - activated)),
        "{now} {status:#}"
    );

    // OPA's next request is held by the server now (it goes out as soon
    // as v1 is activated); wait until OPA has sent it.
    wait_until(PATIENCE, "OPA's second (held) request", || {
        opa.log().matches("\"msg\":\"Sending request.\"").count() >= 2
    });
    let changed = Instant::now();
    publish(&root.join("bundles/authz.tar.gz"), &policy_bundle("v2"), 10);
    opa.wait_for_revision("authz", "v2", PATIENCE);
    let took = changed.elapsed();
    assert!(took < Duration::from_secs(2), "took {took:?}");
    assert_opa_evaluates(&opa, "v2");
    assert!(opa.peak_rss_kib() > 1024);
}

/// Polls `done` every 20 ms; panics naming `what` past `timeout`.
fn wait_until(timeout: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "waited {timeout:?} for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ---------------------------------------------------------------------
// polhost's local API, and the remotes behind it.

/// `polhost run CONFIG --addr 127.0.0.1:PORT`, once its API listens.
struct Local {
    polhost: Polhost,
    port: u16,
}

impl Local {
    fn start(cfg: &Path, env: &[(&str, &str)]) -> Local {
        Local::start_on(cfg, free_port(), env)
    }

    fn start_on(cfg: &Path, port: u16, env: &[(&str, &str)]) -> Local {
        let addr = format!("127.0.0.1:{port}");
        let polhost = Polhost::spawn(&["run", cfg.to_str().unwrap(), "--addr", &addr], env);
        let deadline = Instant::now() + PATIENCE;
        while !port_open(port) {
            assert!(
                Instant::now() < deadline,
                "polhost's local API did not listen on {addr}:\n{}",
                polhost.output()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Local { polhost, port }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn get(&self, path: &str) -> Response {
        self.get_with(path, &[])
    }

    fn get_with(&self, path: &str, headers: &[(&str, &str)]) -> Response {
        http_get(self.port, path, headers, Duration::from_secs(10)).unwrap_or_else(|e| {
            panic!(
                "GET {path} on polhost: {e}\npolhost logged:\n{}",
                self.polhost.output()
            )
        })
    }

    /// polhost's `/v1/status` `result.bundles.<name>`.
    fn bundle_status(&self, name: &str) -> Value {
        let r = self.get("/v1/status");
        assert_eq!(r.status, 200, "polhost /v1/status: {}", r.text());
        r.json()["result"]["bundles"][name].clone()
    }

    fn metrics(&self) -> Metrics {
        let r = self.get("/metrics");
        assert_eq!(r.status, 200, "polhost /metrics: {}", r.text());
        Metrics::parse(&r.text())
    }
}

/// The polhost side of every test: bundle `authz` from service `remote`
/// (`service_yaml`, indented for `services.remote`), persisted, polled
/// every 0-1 s (none of the remotes here can hold a request, so this is
/// how polhost sees a change quickly), plus `extra` top-level YAML.
fn polhost_config(service_yaml: &str, resource: &str, bundle_extra: &str, extra: &str) -> String {
    format!(
        "services:
  remote:
{service_yaml}
bundles:
  authz:
    service: remote
    resource: {resource}
    persist: true
    polling:
      min_delay_seconds: 0
      max_delay_seconds: 1
{bundle_extra}{extra}"
    )
}

/// nginx serving `root` (bundles under `bundles/`), and the polhost
/// config for its `bundles/authz.tar.gz`.
fn nginx_remote(root: &Path, bundle_extra: &str, extra: &str) -> (Nginx, String) {
    fs::create_dir_all(root.join("bundles")).unwrap();
    let nginx = Nginx::start(NginxOptions {
        root: root.to_path_buf(),
        ..Default::default()
    });
    let cfg = polhost_config(
        &format!("    url: {}", nginx.url()),
        "bundles/authz.tar.gz",
        bundle_extra,
        extra,
    );
    (nginx, cfg)
}

/// polhost on an nginx remote, with revision v1 of `bundles/authz.tar.gz`
/// activated; the remote and that file, to publish the next revision to.
fn polhost_with_v1_from_nginx(work: &Workdir) -> (Nginx, PathBuf, Local) {
    let root = work.path().join("www");
    let (nginx, cfg) = nginx_remote(&root, "", "");
    let served = root.join("bundles/authz.tar.gz");
    publish(&served, &policy_bundle("v1"), 0);
    let local = Local::start(&work.config(&cfg), &[]);
    local.polhost.wait_for_activation("v1", "Download");
    (nginx, served, local)
}

/// OPA on polhost's `bundles/authz`: polling delays of 60-120 s, long
/// polls held up to 30 s.
fn opa_on(local: &Local) -> Opa {
    Opa::start(
        &OpaConfig::new(&local.url())
            .bundle("authz", "bundles/authz")
            .yaml(),
    )
}

/// Waits until OPA has sent `n` bundle requests: after the first
/// activation, its next request is the long poll the server holds.
fn wait_for_opa_requests(opa: &Opa, n: usize) {
    wait_until(PATIENCE, &format!("{n} bundle requests from OPA"), || {
        opa.log().matches("\"msg\":\"Sending request.\"").count() >= n
    });
}

/// OPA has `revision` within [`WITHIN`] of `changed` (the moment the
/// remote had the new bundle), and polhost's activation is what brought
/// it: OPA activated it less than a second after polhost did.
fn assert_reached_opa_in_time(opa: &Opa, local: &Local, revision: &str, changed: Instant) {
    opa.wait_for_revision("authz", revision, PATIENCE);
    let took = changed.elapsed();
    let ours = local.bundle_status("authz");
    let theirs = opa.bundle_status("authz");
    assert_eq!(ours["active_revision"], revision, "{ours:#}");
    let lag = unix_nanos(&theirs["last_successful_activation"])
        - unix_nanos(&ours["last_successful_activation"]);
    assert!(
        (0..1_000_000_000).contains(&lag),
        "OPA activated {revision} {lag} ns after polhost: {ours:#} {theirs:#}"
    );
    assert!(
        took < WITHIN,
        "{revision} reached OPA {took:?} after the remote changed (polhost -> OPA: {} ms)",
        lag / 1_000_000
    );
    assert_opa_evaluates(opa, revision);
}

// ---------------------------------------------------------------------
// The tests.

#[test]
fn opa_gets_the_revision_polhost_activated_and_answers_from_its_policy() {
    let work = Workdir::new();
    let root = work.path().join("www");
    let (_nginx, cfg) = nginx_remote(&root, "", "");
    let bytes = policy_bundle("v1");
    publish(&root.join("bundles/authz.tar.gz"), &bytes, 0);
    let local = Local::start(&work.config(&cfg), &[]);
    local.polhost.wait_for_activation("v1", "Download");

    let opa = opa_on(&local);
    opa.wait_for_revision("authz", "v1", PATIENCE);
    assert_opa_evaluates(&opa, "v1");
    // OPA got the persisted bytes exactly.
    let theirs = opa.bundle_status("authz");
    assert_eq!(theirs["size"], bytes.len(), "{theirs:#}");
    assert_eq!(theirs["type"], "snapshot");
    assert!(theirs.get("errors").is_none(), "{theirs:#}");
    let served = local.get("/bundles/authz");
    assert_eq!(served.status, 200);
    assert_eq!(served.body, bytes);
    assert_eq!(served.body, fs::read(work.persisted("authz")).unwrap());
}

/// The change reaches polhost by its own 0-1 s polling of nginx, and
/// OPA, whose polling delay is 60-120 s, only by the long poll it holds
/// on polhost: the assertion that OPA activated it within a second of
/// polhost's activation is what proves the OPA <-> polhost path.
#[test]
fn new_revision_at_nginx_reaches_opa_within_2s_by_long_polling() {
    let work = Workdir::new();
    let (_nginx, served, local) = polhost_with_v1_from_nginx(&work);
    let opa = opa_on(&local);
    opa.wait_for_revision("authz", "v1", PATIENCE);
    wait_for_opa_requests(&opa, 2);

    let changed = Instant::now();
    publish(&served, &policy_bundle("v2"), 10);
    assert_reached_opa_in_time(&opa, &local, "v2", changed);
    // And again, on the next held request.
    wait_for_opa_requests(&opa, 3);
    let changed = Instant::now();
    publish(&served, &policy_bundle("v3"), 20);
    assert_reached_opa_in_time(&opa, &local, "v3", changed);
}

/// As with nginx, the remote being moto (S3, SigV4 verified), the upload
/// done with boto3; the time counts from the end of the upload.
#[test]
fn new_revision_at_s3_reaches_opa_within_2s_by_long_polling() {
    let moto = Moto::start();
    let key = moto.setup();
    moto.put(&key, "authz.tar.gz", &policy_bundle("v1"));
    let work = Workdir::new();
    let cfg = polhost_config(
        &format!(
            "    url: {}/bundles\n    credentials:\n      s3_signing:\n        environment_credentials: {{}}",
            moto.url()
        ),
        "authz.tar.gz",
        "",
        "",
    );
    let env = [
        ("AWS_ACCESS_KEY_ID", key.id.as_str()),
        ("AWS_SECRET_ACCESS_KEY", key.secret.as_str()),
        ("AWS_REGION", "us-east-1"),
    ];
    let local = Local::start(&work.config(&cfg), &env);
    local.polhost.wait_for_activation("v1", "Download");
    let opa = opa_on(&local);
    opa.wait_for_revision("authz", "v1", PATIENCE);
    wait_for_opa_requests(&opa, 2);

    moto.put(&key, "authz.tar.gz", &policy_bundle("v2"));
    let changed = Instant::now();
    assert_reached_opa_in_time(&opa, &local, "v2", changed);
}

/// As with nginx, the remote being docker-registry, the tag moved with
/// skopeo; the time counts from the end of the push.
#[test]
fn new_revision_at_the_oci_registry_reaches_opa_within_2s_by_long_polling() {
    let work = Workdir::new();
    let registry = Registry::start(RegistryOptions::default());
    let push = |revision: &str| {
        let mut layout = OciLayout::new(&work.path().join(format!("layout-{revision}")));
        let manifest = layout.bundle_manifest(&policy_bundle(revision));
        layout.tag(revision, manifest);
        skopeo_copy(&layout, revision, &registry, "org/policy:live", &[]);
    };
    push("v1");
    let cfg = polhost_config(
        &format!("    type: oci\n    url: {}", registry.url()),
        &format!("{}/org/policy:live", registry.host()),
        "",
        "",
    );
    let local = Local::start(&work.config(&cfg), &[]);
    local.polhost.wait_for_activation("v1", "Download");
    let opa = opa_on(&local);
    opa.wait_for_revision("authz", "v1", PATIENCE);
    wait_for_opa_requests(&opa, 2);

    push("v2");
    let changed = Instant::now();
    assert_reached_opa_in_time(&opa, &local, "v2", changed);
}

/// A bundle with a duplicate path (OPA itself would load it, the last
/// copy winning) is refused by polhost: OPA keeps v1, never sees an
/// error, never loads anything else; the next good revision arrives.
#[test]
fn hostile_bundle_at_the_remote_never_reaches_opa() {
    let hostile = tar_gz(&[
        (
            ".manifest",
            br#"{"revision":"evil","roots":["authz"]}"#.to_vec(),
        ),
        (
            "authz/policy.rego",
            b"package authz\n\ndefault allow := false\n".to_vec(),
        ),
        (
            "authz/policy.rego",
            b"package authz\n\nallow := true\n".to_vec(),
        ),
    ]);
    refused_bundle_never_reaches_opa(&hostile, "duplicate path", "", "", policy_bundle);
}

/// polhost and OPA both verify signatures (HS256, key `default`), the
/// bundles signed by `opa build`; a bundle signed with another secret is
/// refused by polhost and never reaches OPA.
#[test]
fn badly_signed_bundle_at_the_remote_never_reaches_opa() {
    let work = Workdir::new();
    let signed = |revision: &str, secret: &str| opa_build_signed(&work, revision, secret);
    let bad = signed("forged", "not-the-secret");
    refused_bundle_never_reaches_opa(
        &bad,
        "signature",
        "    signing:\n      keyid: default\n",
        "keys:\n  default:\n    algorithm: HS256\n    key: topsecret\n",
        |rev| signed(rev, "topsecret"),
    );
}

/// v1 good, then `refused` (polhost must log a failure naming `reason`),
/// then v3 good: OPA goes v1 -> v3, loading exactly two bundles.
/// `bundle_extra`/`extra` go into both polhost's and OPA's config.
fn refused_bundle_never_reaches_opa(
    refused: &[u8],
    reason: &str,
    bundle_extra: &str,
    extra: &str,
    good: impl Fn(&str) -> Vec<u8>,
) {
    let work = Workdir::new();
    let root = work.path().join("www");
    let (_nginx, cfg) = nginx_remote(&root, bundle_extra, extra);
    let target = root.join("bundles/authz.tar.gz");
    publish(&target, &good("v1"), 0);
    let local = Local::start(&work.config(&cfg), &[]);
    local.polhost.wait_for_activation("v1", "Download");
    let mut opa_config = OpaConfig::new(&local.url()).bundle("authz", "bundles/authz");
    opa_config.bundle_extra = bundle_extra.to_string();
    opa_config.extra = extra.to_string();
    let opa = Opa::start(&opa_config.yaml());
    opa.wait_for_revision("authz", "v1", PATIENCE);
    wait_for_opa_requests(&opa, 2);

    publish(&target, refused, 10);
    local.polhost.wait_for(&["bundle download failed", reason]);
    // polhost reports the refusal as OPA would ...
    let ours = local.bundle_status("authz");
    assert_eq!(ours["active_revision"], "v1", "{ours:#}");
    assert_eq!(ours["code"], "bundle_error", "{ours:#}");
    assert!(
        ours["message"].as_str().unwrap_or("").contains(reason)
            || ours["errors"].to_string().contains(reason),
        "{ours:#}"
    );
    let failed = local.metrics();
    assert!(
        failed.value(
            "bundle_failed_load_counter",
            &[("name", "authz"), ("code", "bundle_error")]
        ) >= 1.0,
        "{failed:?}"
    );
    // ... and OPA, whose request polhost still holds, has v1 and nothing
    // wrong.
    let theirs = opa.bundle_status("authz");
    assert_eq!(theirs["active_revision"], "v1", "{theirs:#}");
    assert!(theirs.get("code").is_none(), "{theirs:#}");
    assert_eq!(opa.data("authz/revision"), json!("v1"));

    publish(&target, &good("v3"), 20);
    opa.wait_for_revision("authz", "v3", PATIENCE);
    let theirs = opa.bundle_status("authz");
    assert!(theirs.get("code").is_none(), "{theirs:#}");
    // OPA loaded v1 and v3, nothing between.
    let opa_metrics = Metrics::parse(&opa.get("/metrics").text());
    assert_eq!(
        opa_metrics.value("bundle_loaded_counter", &[("name", "authz")]),
        2.0,
        "{opa_metrics:?}"
    );
    assert!(
        !opa.log().contains("\"active_revision\":\"evil\"")
            && !opa.log().contains("\"active_revision\":\"forged\""),
        "OPA saw the refused bundle"
    );
}

/// A bundle built and signed by `opa build` (HS256 with `secret`, key id
/// `default`), with [`policy_bundle`]'s files.
fn opa_build_signed(work: &Workdir, revision: &str, secret: &str) -> Vec<u8> {
    let src = work.path().join(format!("src-{revision}"));
    fs::create_dir_all(src.join("authz")).unwrap();
    fs::write(src.join(".manifest"), r#"{"roots":["authz"]}"#).unwrap();
    fs::write(src.join("authz/policy.rego"), POLICY).unwrap();
    fs::write(
        src.join("authz/data.json"),
        format!(r#"{{"revision":"{revision}","admin":"alice"}}"#),
    )
    .unwrap();
    let out: PathBuf = work.path().join(format!("signed-{revision}.tar.gz"));
    let run = Command::new(opa_bin())
        .current_dir(&src)
        .args(["build", "-b", ".", "--revision", revision])
        .args(["--signing-alg", "HS256", "--signing-key", secret, "-o"])
        .arg(&out)
        .output()
        .expect("run opa build");
    assert!(
        run.status.success(),
        "opa build: {}",
        String::from_utf8_lossy(&run.stderr)
    );
    fs::read(out).unwrap()
}

/// polhost is stopped, then nginx; polhost starts again on the same
/// address, restores the persisted bundle, and a new OPA (no state of
/// its own) gets it.
#[test]
fn polhost_restarted_with_the_remote_down_still_serves_the_persisted_bundle_to_opa() {
    let work = Workdir::new();
    let root = work.path().join("www");
    let (mut nginx, cfg) = nginx_remote(&root, "", "");
    let bytes = policy_bundle("v1");
    publish(&root.join("bundles/authz.tar.gz"), &bytes, 0);
    let cfg = work.config(&cfg);
    let mut local = Local::start(&cfg, &[]);
    local.polhost.wait_for_activation("v1", "Download");
    let port = local.port;
    let (_, status) = local.polhost.terminate();
    assert!(status.success());
    drop(local);
    nginx.stop();

    let local = Local::start_on(&cfg, port, &[]);
    local.polhost.wait_for_activation("v1", "Disk");
    let opa = opa_on(&local);
    opa.wait_for_revision("authz", "v1", PATIENCE);
    assert_opa_evaluates(&opa, "v1");
    assert_eq!(opa.bundle_status("authz")["size"], bytes.len());
    // The remote really is down: polhost's polls fail meanwhile.
    local.polhost.wait_for(&["bundle download failed"]);
    assert_eq!(opa.bundle_status("authz")["active_revision"], "v1");
}

/// What polhost reports (`/health?bundles`, `/v1/status`, `/metrics`)
/// against what OPA reports of the same bundle, before the bundle exists
/// (the remote answers 404) and after.
#[test]
fn health_status_and_metrics_agree_with_opa_field_by_field() {
    let work = Workdir::new();
    let root = work.path().join("www");
    let (nginx, cfg) = nginx_remote(&root, "", "");
    let local = Local::start(&work.config(&cfg), &[]);
    local.polhost.wait_for(&["bundle download failed", "404"]);
    // OPA polls every 1-2 s here: it starts while polhost has no bundle.
    let opa = Opa::start(
        &OpaConfig::new(&local.url())
            .bundle("authz", "bundles/authz")
            .polling(1, 2, Some(30))
            .yaml(),
    );

    // Not activated yet: the same answer as OPA's, byte for byte.
    let ours = local.get("/health?bundles");
    let theirs = opa.get("/health?bundles");
    assert_eq!((ours.status, theirs.status), (500, 500));
    // (OPA v1.22.3 says `{"error":"one or more bundles are not
    // activated: authz"}`.)
    assert_eq!(ours.json(), theirs.json());
    assert_eq!(local.get("/health").status, 200);
    assert_eq!(local.get("/health").json(), opa.get("/health").json());
    // polhost saw nginx's 404 (OPA's request may be held meanwhile).
    let ours = local.bundle_status("authz");
    assert_eq!(ours["name"], "authz", "{ours:#}");
    assert_eq!(ours["code"], "bundle_error", "{ours:#}");
    assert_eq!(ours["http_code"], 404, "{ours:#}");
    assert!(
        ours["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{ours:#}"
    );
    assert!(ours.get("active_revision").is_none(), "{ours:#}");
    assert!(
        ours["polhost"]["consecutive_failures"].as_u64().unwrap() >= 1,
        "{ours:#}"
    );
    assert!(opa.bundle_status("authz").get("active_revision").is_none());

    let bytes = policy_bundle("v1");
    publish(&root.join("bundles/authz.tar.gz"), &bytes, 0);
    local.polhost.wait_for_activation("v1", "Download");
    opa.wait_for_revision("authz", "v1", PATIENCE);

    // /health?bundles: 200 {} on both.
    let ours = local.get("/health?bundles");
    let theirs = opa.get("/health?bundles");
    assert_eq!((ours.status, theirs.status), (200, 200), "{}", ours.text());
    assert_eq!(ours.json(), json!({}));
    assert_eq!(ours.json(), theirs.json());

    // /v1/status, OPA's fields.
    let doc = local.get("/v1/status").json();
    let opa_doc = opa.status();
    assert_eq!(
        doc["result"]["plugins"]["bundle"]["state"],
        opa_doc["result"]["plugins"]["bundle"]["state"]
    );
    assert_eq!(doc["result"]["plugins"]["bundle"]["state"], "OK");
    let ours = &doc["result"]["bundles"]["authz"];
    let theirs = &opa_doc["result"]["bundles"]["authz"];
    for field in ["name", "active_revision", "type", "size"] {
        assert_eq!(ours[field], theirs[field], "{field}: {ours:#} {theirs:#}");
    }
    assert_eq!(ours["active_revision"], "v1");
    assert_eq!(ours["size"], bytes.len());
    for field in [
        "last_successful_activation",
        "last_successful_download",
        "last_successful_request",
        "last_request",
    ] {
        let (a, b) = (unix_nanos(&ours[field]), unix_nanos(&theirs[field]));
        // polhost activated and downloaded v1 first, OPA took it from
        // polhost; the requests go on on both sides.
        let in_order = if field.contains("request") {
            (a - b).abs() < 60_000_000_000
        } else {
            a <= b && b - a < 10_000_000_000
        };
        assert!(in_order, "{field}: {ours:#} {theirs:#}");
    }
    // Succeeded since: the error fields are gone, as in OPA's.
    for field in ["code", "message", "errors", "http_code"] {
        assert!(ours.get(field).is_none(), "{field}: {ours:#}");
        assert!(theirs.get(field).is_none(), "{field}: {theirs:#}");
    }
    // polhost's own.
    let p = &ours["polhost"];
    assert_eq!(p["fetcher"], "http", "{p:#}");
    assert_eq!(p["sha256"], sha256_file(&work.persisted("authz")), "{p:#}");
    assert_eq!(p["source"], "download", "{p:#}");
    assert_eq!(p["service"], "remote", "{p:#}");
    assert_eq!(p["activations"], 1, "{p:#}");
    assert_eq!(p["consecutive_failures"], 0, "{p:#}");
    let nginx_etag = http_get(
        nginx.port(),
        "/bundles/authz.tar.gz",
        &[],
        Duration::from_secs(5),
    )
    .unwrap()
    .header("etag")
    .unwrap()
    .to_string();
    assert_eq!(p["etag"], nginx_etag, "{p:#}");
    if !p["next_poll"].is_null() {
        unix_nanos(&p["next_poll"]);
    }

    // /metrics: OPA's bundle series, same names and labels.
    let served = local.get("/metrics");
    assert!(
        served
            .header("content-type")
            .unwrap_or("")
            .starts_with("text/plain"),
        "{:?}",
        served.headers
    );
    let ours = Metrics::parse(&served.text());
    let theirs = Metrics::parse(&opa.get("/metrics").text());
    let loaded = [("name", "authz")];
    assert_eq!(
        ours.value("bundle_loaded_counter", &loaded),
        1.0,
        "{ours:?}"
    );
    assert_eq!(
        theirs.value("bundle_loaded_counter", &loaded),
        1.0,
        "{theirs:?}"
    );
    assert_eq!(ours.kind("bundle_loaded_counter"), Some("counter"));
    assert_eq!(
        ours.kind("bundle_loaded_counter"),
        theirs.kind("bundle_loaded_counter")
    );
    let activation = [("name", "authz"), ("active_revision", "v1")];
    for gauge in [
        "last_success_bundle_activation",
        "last_success_bundle_download",
        "last_success_bundle_request",
        "last_bundle_request",
    ] {
        let labels: &[(&str, &str)] = if gauge == "last_success_bundle_activation" {
            &activation
        } else {
            &loaded
        };
        let (a, b) = (ours.value(gauge, labels), theirs.value(gauge, labels));
        assert_eq!(ours.kind(gauge), Some("gauge"), "{gauge}");
        assert_eq!(ours.kind(gauge), theirs.kind(gauge), "{gauge}");
        // UNIX nanoseconds; polhost's activation and download first.
        let in_order = if gauge.contains("request") {
            (a - b).abs() < 6e10
        } else {
            a <= b && b - a < 1e10
        };
        assert!(a > 1.7e18 && in_order, "{gauge}: {a} {b}");
    }
    // polhost failed before the bundle existed.
    let failed = [("name", "authz"), ("code", "bundle_error")];
    assert!(
        ours.value("bundle_failed_load_counter", &failed) >= 1.0,
        "{ours:?}"
    );
    assert_eq!(ours.kind("bundle_failed_load_counter"), Some("counter"));
    // polhost's own series.
    assert_eq!(
        ours.value("polhost_downloaded_bytes_total", &[("bundle", "authz")]),
        bytes.len() as f64,
        "{ours:?}"
    );
    assert!(ours.has_series_starting("polhost_fetch_duration_seconds", &[("bundle", "authz")]));
    assert!(ours.sum("polhost_refusals_total") >= 1.0, "{ours:?}");
}

/// Ten OPAs (delays 60-120 s) hold long polls on one polhost; a new
/// revision at the remote reaches every one of them.
#[test]
fn ten_opas_long_polling_one_polhost_all_get_the_change() {
    let work = Workdir::new();
    let (_nginx, served, local) = polhost_with_v1_from_nginx(&work);
    let opas: Vec<Opa> = (0..10).map(|_| opa_on(&local)).collect();
    for opa in &opas {
        opa.wait_for_revision("authz", "v1", PATIENCE);
        wait_for_opa_requests(opa, 2);
    }

    let changed = Instant::now();
    publish(&served, &policy_bundle("v2"), 10);
    let mut took = Vec::new();
    for opa in &opas {
        opa.wait_for_revision("authz", "v2", PATIENCE);
        took.push(changed.elapsed());
    }
    let slowest = took.iter().max().unwrap();
    // Far below OPA's 60 s polling delay: long polling, all ten.
    assert!(*slowest < Duration::from_secs(10), "{took:?}");
    for opa in &opas {
        assert_opa_evaluates(opa, "v2");
    }
}

/// `polhost.server.token`: OPA with `credentials.bearer.token` gets the
/// bundle; OPA without it gets 401, which its status shows.
#[test]
fn with_a_token_opa_needs_its_bearer_credentials() {
    let work = Workdir::new();
    let root = work.path().join("www");
    let extra = format!("polhost:\n  server:\n    token: {API_TOKEN}\n");
    let (_nginx, cfg) = nginx_remote(&root, "", &extra);
    publish(&root.join("bundles/authz.tar.gz"), &policy_bundle("v1"), 0);
    let local = Local::start(&work.config(&cfg), &[]);
    local.polhost.wait_for_activation("v1", "Download");
    assert_eq!(local.get("/bundles/authz").status, 401);
    let bearer = format!("Bearer {API_TOKEN}");
    assert_eq!(
        local
            .get_with("/bundles/authz", &[("Authorization", &bearer)])
            .status,
        200
    );

    let with = Opa::start(
        &OpaConfig::new(&local.url())
            .bundle("authz", "bundles/authz")
            .token(API_TOKEN)
            .yaml(),
    );
    let without = opa_on(&local);
    with.wait_for_revision("authz", "v1", PATIENCE);
    assert_opa_evaluates(&with, "v1");
    let refused = without.wait_for_bundle_status("authz", PATIENCE, "http_code 401", |s| {
        s["http_code"] == 401
    });
    assert_eq!(refused["code"], "bundle_error", "{refused:#}");
    assert!(refused.get("active_revision").is_none(), "{refused:#}");
    assert_eq!(without.get("/health?bundles").status, 500);
    assert_eq!(without.data("authz/greeting"), Value::Null);
}

/// OPA allows `/` in bundle names; polhost serves them under the same
/// path.
#[test]
fn a_bundle_name_with_a_slash_reaches_opa() {
    let work = Workdir::new();
    let root = work.path().join("www");
    let (_nginx, cfg) = nginx_remote(&root, "", "");
    let cfg = cfg.replace("\n  authz:\n", "\n  team/authz:\n");
    publish(&root.join("bundles/authz.tar.gz"), &policy_bundle("v1"), 0);
    let local = Local::start(&work.config(&cfg), &[]);
    local.polhost.wait_for_activation("v1", "Download");
    let opa = Opa::start(
        &OpaConfig::new(&local.url())
            .bundle("team/authz", "bundles/team/authz")
            .yaml(),
    );
    opa.wait_for_revision("team/authz", "v1", PATIENCE);
    assert_opa_evaluates(&opa, "v1");
}

// ---------------------------------------------------------------------
// Helpers.

/// An RFC 3339 UTC timestamp in a JSON value, as UNIX nanoseconds;
/// panics on anything else.
fn unix_nanos(v: &Value) -> i128 {
    v.as_str()
        .and_then(rfc3339_unix_nanos)
        .unwrap_or_else(|| panic!("not an RFC 3339 UTC timestamp: {v}"))
}

/// Prometheus text: samples by name, with their labels, and `# TYPE`s.
#[derive(Debug, Default)]
struct Metrics {
    samples: Vec<(String, BTreeMap<String, String>, f64)>,
    types: BTreeMap<String, String>,
}

impl Metrics {
    fn parse(text: &str) -> Metrics {
        let mut m = Metrics::default();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let mut it = rest.split_whitespace();
                if let (Some(name), Some(kind)) = (it.next(), it.next()) {
                    m.types.insert(name.to_string(), kind.to_string());
                }
                continue;
            }
            if line.starts_with('#') || line.trim().is_empty() {
                continue;
            }
            let (series, value) = line.rsplit_once(' ').expect("a sample line");
            // A timestamp may follow the value.
            let (series, value) = match series.rsplit_once(' ') {
                Some((s, v)) if !series.ends_with('}') && !s.contains('{') => (s, v),
                _ => (series, value),
            };
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => (name, parse_labels(rest.trim_end_matches('}'))),
                None => (series, BTreeMap::new()),
            };
            let value = match value {
                "+Inf" => f64::INFINITY,
                "-Inf" => f64::NEG_INFINITY,
                v => v.parse().unwrap_or(f64::NAN),
            };
            m.samples.push((name.to_string(), labels, value));
        }
        m
    }

    fn matching<'a>(
        &'a self,
        name: &'a str,
        labels: &'a [(&str, &str)],
    ) -> impl Iterator<Item = f64> + 'a {
        self.samples
            .iter()
            .filter(move |(n, l, _)| {
                n == name
                    && labels
                        .iter()
                        .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|(_, _, v)| *v)
    }

    /// The sum over the series of `name` that carry `labels` (others may
    /// differ); 0 when none.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.matching(name, labels).sum()
    }

    fn sum(&self, name: &str) -> f64 {
        self.value(name, &[])
    }

    /// A series named `prefix` or `prefix_*` (histogram/summary parts)
    /// with `labels`.
    fn has_series_starting(&self, prefix: &str, labels: &[(&str, &str)]) -> bool {
        self.samples.iter().any(|(n, l, _)| {
            (n == prefix || n.starts_with(&format!("{prefix}_")))
                && labels
                    .iter()
                    .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
        })
    }

    fn kind(&self, name: &str) -> Option<&str> {
        self.types.get(name).map(String::as_str)
    }
}

/// `a="x",b="y"` (values with `\"`, `\\`, `\n` escapes).
fn parse_labels(text: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut rest = text;
    while let Some((key, after)) = rest.split_once("=\"") {
        let mut value = String::new();
        let mut chars = after.char_indices();
        let mut end = after.len();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, c)) => value.push(c),
                    None => {}
                },
                '"' => {
                    end = i + 1;
                    break;
                }
                c => value.push(c),
            }
        }
        out.insert(key.trim().trim_start_matches(',').trim().to_string(), value);
        rest = after[end..].trim_start_matches(',');
    }
    out
}
