//! The local API of `polhost run` (docs/local-api.md): the active bundles
//! at `/bundles/<name>` with ETag, 304 and long polling woken by
//! activations; OPA's `/health` and `/v1/status`; Prometheus `/metrics`;
//! the bearer token. The agent runs in process against nginx where the
//! server's answers are asserted; `polhost run` where the CLI's wiring is
//! (`--addr`, the recorder, the refusal of an unguarded address).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use polhost::bundle::Secret;
use polhost::server::{ApiOptions, serve_api};
use polhost::{Agent, Limits};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::harness::free_port;
use crate::harness::nginx::{Nginx, NginxOptions};
use crate::in_process;
use crate::support::*;

const OPA_BUNDLES: &str = "application/vnd.openpolicyagent.bundles";
/// OPA v1.22.3's body, naming the bundles not yet activated.
const NOT_ACTIVATED: &str = r#"{"error":"one or more bundles are not activated: a, b"}"#;

/// One answer, read whole (the request said `Connection: close`).
#[derive(Debug)]
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }
}

/// `method path` on `addr` with `headers`, over HTTP/1.1.
async fn send(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)]) -> Reply {
    let mut stream = TcpStream::connect(addr).await.expect("connecting");
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.unwrap();
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no head in {:?}", String::from_utf8_lossy(&raw)));
    let head = String::from_utf8(raw[..end].to_vec()).unwrap();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .map(|l| {
            let (n, v) = l.split_once(':').unwrap();
            (n.trim().to_string(), v.trim().to_string())
        })
        .collect();
    Reply {
        status,
        headers,
        body: raw[end + 4..].to_vec(),
    }
}

async fn get(addr: SocketAddr, path: &str) -> Reply {
    send(addr, "GET", path, &[]).await
}

/// nginx over a fresh directory, and that directory.
fn remote() -> (Nginx, tempfile::TempDir) {
    let root = tempfile::tempdir().unwrap();
    let nginx = Nginx::start(NginxOptions {
        root: root.path().to_path_buf(),
        ..NginxOptions::default()
    });
    (nginx, root)
}

/// A configuration of `bundles` (name, resource) on one http service,
/// persisted, polled only when the test says.
fn config(url: &str, bundles: &[(&str, &str)]) -> String {
    let mut text = format!("services:\n  web:\n    url: {url}\nbundles:\n");
    for (name, resource) in bundles {
        text.push_str(&format!(
            "  {name}:\n    service: web\n    resource: {resource}\n    persist: true\n"
        ));
    }
    text
}

/// The in-process API over an agent for `yaml`, on a loopback port.
struct Api {
    agent: Arc<Agent>,
    addr: SocketAddr,
    state: tempfile::TempDir,
    shutdown: CancellationToken,
}

impl Api {
    async fn start(yaml: &str, options: ApiOptions) -> Api {
        let state = tempfile::tempdir().unwrap();
        let agent = in_process::agent(yaml, state.path(), vec![], Limits::default())
            .await
            .expect("agent builds");
        let agent = Arc::new(agent);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        tokio::spawn(serve_api(
            agent.clone(),
            listener,
            options,
            shutdown.clone(),
        ));
        Api {
            agent,
            addr,
            state,
            shutdown,
        }
    }

    /// nginx serving bundle `revision` as `authz.tar.gz` (its root, to
    /// publish the next one), and the API over an agent that has activated
    /// it.
    async fn serving_authz(revision: &str, options: ApiOptions) -> (Api, Nginx, tempfile::TempDir) {
        let (nginx, root) = remote();
        publish(&root.path().join("authz.tar.gz"), &bundle(revision), 0);
        let api = Api::start(&config(&nginx.url(), &[("authz", "authz.tar.gz")]), options).await;
        assert_eq!(api.agent.run_once().await, 0);
        (api, nginx, root)
    }

    fn persisted(&self, bundle: &str) -> Vec<u8> {
        std::fs::read(
            self.state
                .path()
                .join("bundles")
                .join(bundle)
                .join("bundle.tar.gz"),
        )
        .unwrap()
    }
}

impl Drop for Api {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

fn quoted_sha256(bytes: &[u8]) -> String {
    use sha2::Digest;
    format!("\"{}\"", hex::encode(sha2::Sha256::digest(bytes)))
}

#[tokio::test]
async fn bundles_serves_the_persisted_bytes_with_etag_and_304() {
    let (api, _nginx, _root) = Api::serving_authz("v1", ApiOptions::default()).await;
    let persisted = api.persisted("authz");
    let etag = quoted_sha256(&persisted);

    let reply = get(api.addr, "/bundles/authz").await;
    assert_eq!(reply.status, 200);
    assert!(
        reply.body == persisted,
        "body differs from the persisted file"
    );
    assert_eq!(reply.header("content-type"), Some("application/gzip"));
    assert_eq!(reply.header("etag"), Some(etag.as_str()));

    let head = send(api.addr, "HEAD", "/bundles/authz", &[]).await;
    assert_eq!(head.status, 200);
    assert_eq!(
        head.header("content-length"),
        Some(persisted.len().to_string().as_str())
    );
    assert!(head.body.is_empty());

    let cached = send(
        api.addr,
        "GET",
        "/bundles/authz",
        &[("If-None-Match", &etag)],
    )
    .await;
    assert_eq!(cached.status, 304);
    assert_eq!(cached.header("etag"), Some(etag.as_str()));
    assert!(cached.body.is_empty());
    let stale = send(
        api.addr,
        "GET",
        "/bundles/authz",
        &[("If-None-Match", "\"old\"")],
    )
    .await;
    assert_eq!(stale.status, 200);

    assert_eq!(get(api.addr, "/bundles/nosuch").await.status, 404);
    assert_eq!(get(api.addr, "/bundles/").await.status, 404);
    assert_eq!(get(api.addr, "/nosuch").await.status, 404);
    assert_eq!(
        send(api.addr, "POST", "/bundles/authz", &[]).await.status,
        405
    );
}

#[tokio::test]
async fn a_long_poll_answers_within_a_second_of_the_next_activation() {
    let (api, _nginx, root) = Api::serving_authz("v1", ApiOptions::default()).await;
    let file = root.path().join("authz.tar.gz");
    let etag = quoted_sha256(&api.persisted("authz"));

    // Nothing changes: the wait ends with OPA's 304.
    let started = Instant::now();
    let headers = [
        ("If-None-Match", etag.as_str()),
        ("Prefer", "modes=snapshot;wait=1"),
    ];
    let timed_out = send(api.addr, "GET", "/bundles/authz", &headers).await;
    assert_eq!(timed_out.status, 304);
    assert_eq!(timed_out.header("content-type"), Some(OPA_BUNDLES));
    assert!(
        started.elapsed() >= Duration::from_millis(950),
        "{:?}",
        started.elapsed()
    );

    let addr = api.addr;
    let held_etag = etag.clone();
    let held = tokio::spawn(async move {
        let headers = [
            ("If-None-Match", held_etag.as_str()),
            ("Prefer", "modes=snapshot;wait=30"),
        ];
        let reply = send(addr, "GET", "/bundles/authz", &headers).await;
        (reply, Instant::now())
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    // A poll that restores the same bytes from disk and finds the remote
    // unchanged must not end the wait.
    assert_eq!(api.agent.run_once().await, 0);
    assert!(!held.is_finished(), "the same bundle ended the long poll");

    publish(&file, &bundle("v2"), 5);
    assert_eq!(api.agent.run_once().await, 0);
    let activated = Instant::now();
    let (reply, answered) = tokio::time::timeout(Duration::from_secs(10), held)
        .await
        .expect("long poll still held after the activation")
        .unwrap();

    assert!(
        answered.duration_since(activated) < Duration::from_secs(1),
        "answered {:?} after the activation",
        answered.duration_since(activated)
    );
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("content-type"), Some(OPA_BUNDLES));
    let v2 = api.persisted("authz");
    assert!(reply.body == v2, "long poll did not return the new bundle");
    assert_eq!(reply.header("etag"), Some(quoted_sha256(&v2).as_str()));
}

#[tokio::test]
async fn bundle_names_are_percent_decoded() {
    let (api, _nginx, _root) = Api::serving_authz("t1", ApiOptions::default()).await;
    let persisted = api.persisted("authz");

    let reply = get(api.addr, "/bundles/%61uthz").await;
    assert_eq!(reply.status, 200);
    assert!(reply.body == persisted);
    // The whole rest of the path is the name: a `/` in it is part of the
    // name, not a way to another bundle.
    for path in [
        "/bundles/authz/",
        "/bundles/x/authz",
        "/bundles/%zz",
        "/bundles/authz%00",
    ] {
        assert_eq!(get(api.addr, path).await.status, 404, "{path}");
    }
}

#[tokio::test]
async fn a_configured_bundle_not_yet_active_is_404_unless_a_long_poll_waits_for_it() {
    let (nginx, root) = remote();
    let api = Api::start(
        &config(&nginx.url(), &[("authz", "authz.tar.gz")]),
        ApiOptions::default(),
    )
    .await;
    assert_eq!(get(api.addr, "/bundles/authz").await.status, 404);
    let short = [("Prefer", "modes=snapshot;wait=1")];
    assert_eq!(
        send(api.addr, "GET", "/bundles/authz", &short).await.status,
        404
    );

    let addr = api.addr;
    let held = tokio::spawn(async move {
        let headers = [("Prefer", "modes=snapshot;wait=30")];
        send(addr, "GET", "/bundles/authz", &headers).await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    publish(&root.path().join("authz.tar.gz"), &bundle("v1"), 0);
    assert_eq!(api.agent.run_once().await, 0);
    let reply = tokio::time::timeout(Duration::from_secs(5), held)
        .await
        .expect("long poll not answered by the first activation")
        .unwrap();

    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("content-type"), Some(OPA_BUNDLES));
    assert!(reply.body == api.persisted("authz"));
}

#[tokio::test]
async fn health_bundles_is_500_until_every_bundle_was_activated_once() {
    let (nginx, root) = remote();
    publish(&root.path().join("a.tar.gz"), &bundle("a1"), 0);
    let api = Api::start(
        &config(&nginx.url(), &[("a", "a.tar.gz"), ("b", "b.tar.gz")]),
        ApiOptions::default(),
    )
    .await;
    let expect = |reply: Reply, status: u16, body: &str, what: &str| {
        assert_eq!(
            (reply.status, reply.text().as_str()),
            (status, body),
            "{what}"
        );
        assert_eq!(
            reply.header("content-type"),
            Some("application/json"),
            "{what}"
        );
    };

    expect(get(api.addr, "/health").await, 200, "{}", "/health");
    expect(get(api.addr, "/health/live").await, 200, "{}", "live");
    expect(
        get(api.addr, "/health?bundles").await,
        500,
        NOT_ACTIVATED,
        "none active",
    );
    expect(
        get(api.addr, "/health/ready").await,
        500,
        NOT_ACTIVATED,
        "ready, none active",
    );
    // One of two: still not healthy.
    assert_eq!(api.agent.run_once().await, 1);
    expect(
        get(api.addr, "/health?bundles=true").await,
        500,
        r#"{"error":"one or more bundles are not activated: b"}"#,
        "one of two",
    );
    expect(
        get(api.addr, "/health?bundles=false").await,
        200,
        "{}",
        "bundles=false",
    );
    expect(
        get(api.addr, "/health?plugins").await,
        500,
        r#"{"error":"one or more plugins are not up"}"#,
        "plugins",
    );
    expect(
        get(api.addr, "/health?plugins&exclude-plugin=bundle").await,
        200,
        "{}",
        "bundle plugin excluded",
    );

    // Its own root: a second bundle under `authz` would overlap the first.
    let b = tar_gz(&[(".manifest", br#"{"revision":"b1","roots":["b"]}"#.to_vec())]);
    publish(&root.path().join("b.tar.gz"), &b, 0);
    assert_eq!(
        api.agent.run_once().await,
        0,
        "{}",
        get(api.addr, "/v1/status").await.text()
    );
    expect(
        get(api.addr, "/health?bundles").await,
        200,
        "{}",
        "both active",
    );
    expect(get(api.addr, "/health/ready").await, 200, "{}", "ready");
    expect(
        get(api.addr, "/health?plugins").await,
        200,
        "{}",
        "plugins OK",
    );
}

/// A timestamp as Go's RFC3339Nano writes a UTC time (no trailing zero
/// in the fraction), between `since` and now.
fn assert_go_time(value: &serde_json::Value, since: SystemTime, what: &str) {
    let text = value.as_str().unwrap_or_else(|| panic!("{what}: {value}"));
    let whole = text
        .strip_suffix('Z')
        .unwrap_or_else(|| panic!("{what}: {text} is not UTC"));
    if let Some((_, fraction)) = whole.split_once('.') {
        assert!(
            !fraction.ends_with('0') && fraction.len() <= 9,
            "{what}: {text}"
        );
    }
    let at = humantime::parse_rfc3339(text).unwrap_or_else(|e| panic!("{what}: {text}: {e}"));
    assert!(
        at >= since && at <= SystemTime::now(),
        "{what}: {text} is not from this test"
    );
}

#[tokio::test]
async fn v1_status_has_opa_fields_for_an_active_and_a_failing_bundle() {
    let since = SystemTime::now();
    let (nginx, root) = remote();
    publish(&root.path().join("authz.tar.gz"), &bundle("v1"), 0);
    let api = Api::start(
        &config(
            &nginx.url(),
            &[("authz", "authz.tar.gz"), ("missing", "missing.tar.gz")],
        ),
        ApiOptions::default(),
    )
    .await;
    assert_eq!(api.agent.run_once().await, 1);
    let persisted = api.persisted("authz");

    let reply = get(api.addr, "/v1/status").await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("content-type"), Some("application/json"));
    let doc = reply.json();
    let result = &doc["result"];
    assert_eq!(result["labels"]["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(result["labels"]["id"].as_str().map(str::len), Some(36));
    assert_eq!(result["plugins"]["bundle"]["state"], "ERROR");

    let authz = &result["bundles"]["authz"];
    assert_eq!(authz["name"], "authz");
    assert_eq!(authz["active_revision"], "v1");
    assert_eq!(authz["type"], "snapshot");
    assert_eq!(authz["size"], persisted.len());
    for field in [
        "last_successful_activation",
        "last_successful_download",
        "last_successful_request",
        "last_request",
    ] {
        assert_go_time(&authz[field], since, field);
    }
    for absent in ["code", "message", "errors", "http_code"] {
        assert!(authz.get(absent).is_none(), "{absent} in {authz}");
    }
    let own = &authz["polhost"];
    assert_eq!(own["fetcher"], "http");
    assert_eq!(own["service"], "web");
    assert_eq!(own["source"], "download");
    assert_eq!(
        own["sha256"].as_str().map(|s| format!("\"{s}\"")),
        Some(quoted_sha256(&persisted))
    );
    assert!(own["etag"].is_string(), "{own}");
    assert_eq!(own["consecutive_failures"], 0);
    assert!(own.get("failure_kind").is_none(), "{own}");

    let missing = &result["bundles"]["missing"];
    assert_eq!(missing["name"], "missing");
    assert_eq!(missing["code"], "bundle_error");
    assert_eq!(missing["http_code"], 404);
    assert!(
        missing["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{missing}"
    );
    assert_go_time(&missing["last_request"], since, "missing.last_request");
    for absent in [
        "active_revision",
        "last_successful_activation",
        "type",
        "size",
    ] {
        assert!(missing.get(absent).is_none(), "{absent} in {missing}");
    }
    assert_eq!(missing["polhost"]["failure_kind"], "not-found");
    assert_eq!(missing["polhost"]["consecutive_failures"], 1);

    // OPA's field order, as its struct declares it.
    let text = reply.text();
    let object = &text[text.find(r#""authz":{"name""#).unwrap()..];
    let positions: Vec<usize> = [
        "\"name\"",
        "\"active_revision\"",
        "\"last_successful_activation\"",
        "\"type\"",
        "\"size\"",
        "\"last_successful_download\"",
        "\"last_successful_request\"",
        "\"last_request\"",
        "\"polhost\"",
    ]
    .iter()
    .map(|key| {
        object
            .find(key)
            .unwrap_or_else(|| panic!("{key} in {object}"))
    })
    .collect();
    assert!(positions.is_sorted(), "fields out of OPA's order: {object}");
}

#[tokio::test]
async fn a_token_is_required_on_every_endpoint_when_set() {
    let (api, _nginx, _root) = Api::serving_authz(
        "v1",
        ApiOptions::default().token(Secret::new("s3cr3t-api".into())),
    )
    .await;

    for path in [
        "/bundles/authz",
        "/health",
        "/health/live",
        "/health/ready",
        "/v1/status",
        "/metrics",
        "/nosuch",
    ] {
        for refused in [
            None,
            Some("Bearer wrong"),
            Some("Basic s3cr3t-api"),
            Some("Bearer s3cr3t-ap"),
        ] {
            let headers: Vec<_> = refused.iter().map(|v| ("Authorization", *v)).collect();
            let reply = send(api.addr, "GET", path, &headers).await;
            assert_eq!(reply.status, 401, "{path} with {refused:?}");
            assert_eq!(
                reply.header("www-authenticate"),
                Some("Bearer realm=\"polhost\"")
            );
            assert!(!reply.text().contains("s3cr3t"), "{path}");
        }
        let reply = send(
            api.addr,
            "GET",
            path,
            &[("Authorization", "Bearer s3cr3t-api")],
        )
        .await;
        let expected = if path == "/nosuch" { 404 } else { 200 };
        assert_eq!(reply.status, expected, "{path} with the token");
    }
}

#[tokio::test]
async fn serve_api_refuses_a_non_loopback_listener_without_a_token() {
    let state = tempfile::tempdir().unwrap();
    let agent = in_process::agent("bundles: {}\n", state.path(), vec![], Limits::default())
        .await
        .unwrap();
    let listener = TcpListener::bind("0.0.0.0:0").await.unwrap();

    let refused = serve_api(
        Arc::new(agent),
        listener,
        ApiOptions::default(),
        CancellationToken::new(),
    )
    .await
    .unwrap_err();

    assert_eq!(refused.kind(), std::io::ErrorKind::PermissionDenied);
    assert!(
        refused.to_string().contains("requires a token"),
        "{refused}"
    );
}

/// `polhost run CONFIG ARGS` with its local API answering on `port`.
fn run_serving(
    work: &Workdir,
    yaml: &str,
    port: u16,
    args: &[&str],
    env: &[(&str, &str)],
) -> Polhost {
    let config = work.config(yaml);
    let mut all = vec!["run", config.to_str().unwrap()];
    all.extend_from_slice(args);
    let polhost = Polhost::spawn(&all, env);
    let deadline = Instant::now() + PATIENCE;
    while !crate::harness::port_open(port) {
        assert!(
            Instant::now() < deadline,
            "the local API did not start:\n{}",
            polhost.output()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    polhost
}

/// `/metrics`, scraped until `done` holds for its text (or PATIENCE ends).
async fn scrape_until(addr: SocketAddr, done: impl Fn(&str) -> bool) -> Reply {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let reply = get(addr, "/metrics").await;
        if done(&reply.text()) || Instant::now() > deadline {
            return reply;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn metric_lines(text: &str, name: &str) -> Vec<String> {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .map(str::to_string)
        .collect()
}

/// The value of the one sample `prefix` starts.
fn sample(text: &str, prefix: &str) -> f64 {
    let lines: Vec<_> = text.lines().filter(|l| l.starts_with(prefix)).collect();
    assert_eq!(lines.len(), 1, "{prefix} in\n{text}");
    lines[0].rsplit(' ').next().unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_render_opa_names_and_labels_and_follow_the_active_revision() {
    let (nginx, root) = remote();
    let file = root.path().join("authz.tar.gz");
    publish(&file, &bundle("v1"), 0);
    let work = Workdir::new();
    let port = free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let yaml = format!(
        "services:\n  web:\n    url: {}\nbundles:\n\
         \x20 authz:\n    service: web\n    resource: authz.tar.gz\n    persist: true\n\
         \x20   polling: {{min_delay_seconds: 1, max_delay_seconds: 1}}\n\
         \x20 missing:\n    service: web\n    resource: missing.tar.gz\n\
         \x20   polling: {{min_delay_seconds: 1, max_delay_seconds: 1}}\n",
        nginx.url()
    );
    let before = SystemTime::now();
    let polhost = run_serving(&work, &yaml, port, &["--addr", &addr.to_string()], &[]);
    polhost.wait_for_activation("v1", "Download");

    // The poll's duration is recorded once the poll ends, just after the
    // activation is logged.
    let reply = scrape_until(addr, |text| {
        text.contains(r#"polhost_fetch_duration_seconds_count{bundle="authz",outcome="activated"}"#)
    })
    .await;
    assert_eq!(reply.status, 200);
    assert!(
        reply
            .header("content-type")
            .is_some_and(|t| t.starts_with("text/plain; version=0.0.4"))
    );
    let text = reply.text();
    assert_eq!(
        metric_lines(&text, "bundle_loaded_counter"),
        [r#"bundle_loaded_counter{name="authz"} 1"#]
    );
    assert!(
        text.contains("# TYPE bundle_loaded_counter counter\n"),
        "{text}"
    );
    assert!(!text.contains("_counter_total"), "{text}");
    let failed = metric_lines(&text, "bundle_failed_load_counter");
    assert!(
        failed.iter().any(|l| l.starts_with(
            r#"bundle_failed_load_counter{name="missing",code="bundle_error",message="not-found"} "#
        )),
        "{text}"
    );
    let nanos = |t: SystemTime| t.duration_since(UNIX_EPOCH).unwrap().as_nanos() as f64;
    let activated = sample(
        &text,
        r#"last_success_bundle_activation{name="authz",active_revision="v1"} "#,
    );
    assert!(
        activated >= nanos(before) && activated <= nanos(SystemTime::now()),
        "{activated}"
    );
    for gauge in [
        "last_bundle_request",
        "last_success_bundle_download",
        "last_success_bundle_request",
    ] {
        let value = sample(&text, &format!("{gauge}{{name=\"authz\"}} "));
        assert!(value >= nanos(before), "{gauge}: {value}");
    }
    assert!(
        metric_lines(&text, "last_success_bundle_download")
            .iter()
            .all(|l| !l.contains("missing"))
    );
    let size = std::fs::read(work.persisted("authz")).unwrap().len() as f64;
    assert_eq!(
        sample(&text, r#"polhost_downloaded_bytes_total{bundle="authz"} "#),
        size
    );
    assert!(
        text.lines().any(|l| l.starts_with(
            r#"polhost_fetch_duration_seconds_bucket{bundle="authz",outcome="activated",le=""#
        )),
        "{text}"
    );
    assert!(
        text.contains(r#"polhost_refusals_total{kind="not-found"} "#),
        "{text}"
    );
    assert!(
        text.contains("polhost_instantiation_duration_seconds_bucket{fetcher=\"http\""),
        "{text}"
    );

    publish(&file, &bundle("v2"), 5);
    polhost.wait_for_activation("v2", "Download");
    let text = get(addr, "/metrics").await.text();
    let activations = metric_lines(&text, "last_success_bundle_activation");
    assert_eq!(activations.len(), 1, "{activations:?}");
    assert!(
        activations[0]
            .starts_with(r#"last_success_bundle_activation{name="authz",active_revision="v2"} "#)
    );
    assert_eq!(
        metric_lines(&text, "bundle_loaded_counter"),
        [r#"bundle_loaded_counter{name="authz"} 2"#]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn run_serves_a_non_loopback_address_only_with_a_token() {
    let (nginx, root) = remote();
    publish(&root.path().join("authz.tar.gz"), &bundle("v1"), 0);
    let yaml = config(&nginx.url(), &[("authz", "authz.tar.gz")]);

    // --addr, and polhost.server.addr in OPA's `:PORT` form: refused, exit 2,
    // naming where the address came from and why.
    let work = Workdir::new();
    let config_path = work.config(&yaml);
    let port = free_port();
    let addr = format!("0.0.0.0:{port}");
    let refused = polhost(
        &["run", config_path.to_str().unwrap(), "--addr", &addr],
        &[],
    );
    assert_eq!(refused.status.code(), Some(2), "{}", refused.stderr);
    assert!(
        refused
            .stderr
            .contains(&format!("--addr {addr}: not a loopback address")),
        "{}",
        refused.stderr
    );
    let in_config = format!("{yaml}polhost:\n  server:\n    addr: \":{port}\"\n");
    let refused = polhost(&["run", work.config(&in_config).to_str().unwrap()], &[]);
    assert_eq!(refused.status.code(), Some(2), "{}", refused.stderr);
    assert!(
        refused.stderr.contains(&format!(
            "polhost.server.addr 0.0.0.0:{port}: not a loopback address"
        )),
        "{}",
        refused.stderr
    );

    // With a token (from a file named through ${ENV}): served, and asked.
    let token_file = work.path().join("api-token");
    std::fs::write(&token_file, "t0ken-from-file\n").unwrap();
    let guarded = format!(
        "{yaml}polhost:\n  server:\n    addr: \"0.0.0.0:{port}\"\n    token_path: ${{API_TOKEN_FILE}}\n"
    );
    let token_env = token_file.to_str().unwrap();
    let polhost = run_serving(&work, &guarded, port, &[], &[("API_TOKEN_FILE", token_env)]);
    polhost.wait_for_activation("v1", "Download");
    let local: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    assert_eq!(get(local, "/health").await.status, 401);
    let authorized = [("Authorization", "Bearer t0ken-from-file")];
    let reply = send(local, "GET", "/bundles/authz", &authorized).await;
    assert_eq!(reply.status, 200);
    assert!(reply.body == std::fs::read(work.persisted("authz")).unwrap());
    assert!(
        !polhost.output().contains("t0ken-from-file"),
        "the token was logged"
    );
}
