//! docker-registry (Debian package `docker-registry`, distribution 2.8) on
//! 127.0.0.1 with filesystem storage in a temp dir: anonymous, htpasswd
//! basic auth, or token auth against [`super::token::TokenIssuer`];
//! optionally redirecting blob GETs to another origin (distribution's
//! `redirect` storage middleware); over HTTP, or over HTTPS with a
//! certificate of [`super::tls::TestCa`] ([`Registry::start_tls`]). Plus
//! the real clients that push to it: `skopeo copy` from an OCI layout this
//! module writes (verifying the registry's certificate against the CA when
//! it serves TLS), and oras-py (plain HTTP only).
//!
//! ```ignore
//! let mut registry = Registry::start(RegistryOptions::default());
//! let layout = OciLayout::bundle(dir, "v1", &bundle("v1"));
//! skopeo_copy(&layout, &registry, "org/policy:v1", &[]);
//! let blob_gets = registry.blob_gets();
//!
//! let ca = TestCa::new();
//! let registry = Registry::start_tls(RegistryOptions::default(), RegistryTls::from_ca(&ca));
//! registry.url(); // https://127.0.0.1:PORT
//! ```
//!
//! The packaged `/etc/docker/registry/config.yml` and service are never
//! used. The access log (stdout) is parsed for request counts; it survives
//! [`Registry::restart`].

use std::fs::{self, File, OpenOptions};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use sha2::Digest;

use super::{free_port, port_open, spawn_tied, terminate};

const START_TIMEOUT: Duration = Duration::from_secs(15);
const PORT_ATTEMPTS: usize = 5;

/// Media types of an OPA bundle image.
pub const BUNDLE_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";

/// How the registry authenticates.
#[derive(Clone, Debug, Default)]
pub enum RegistryAuth {
    #[default]
    Anonymous,
    /// `auth.htpasswd` with one bcrypt user.
    Htpasswd { user: String, password: String },
    /// `auth.token`: the registry verifies JWTs signed by the issuer's key.
    Token {
        realm: String,
        service: String,
        issuer: String,
        root_cert: PathBuf,
    },
}

#[derive(Clone, Debug, Default)]
pub struct RegistryOptions {
    pub auth: RegistryAuth,
    /// Redirect blob GETs to `<base>/docker/registry/v2/blobs/...` (serve
    /// [`Registry::storage`] there).
    pub redirect_blobs_to: Option<String>,
}

/// The registry over HTTPS: distribution's `http.tls.certificate` and
/// `http.tls.key` (PEM), and the CA that issued them, which the harness's
/// own clients (skopeo, [`Registry::manifest_digest`]) verify against.
#[derive(Clone, Debug)]
pub struct RegistryTls {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
}

impl RegistryTls {
    /// `ca`'s server certificate (127.0.0.1 and localhost) and key.
    pub fn from_ca(ca: &super::tls::TestCa) -> RegistryTls {
        RegistryTls {
            cert: ca.server_cert.clone(),
            key: ca.server_key.clone(),
            ca: ca.ca_cert.clone(),
        }
    }
}

/// One line of the registry's access log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Access {
    pub method: String,
    pub uri: String,
    pub status: u16,
    pub user_agent: String,
}

pub struct Registry {
    dir: tempfile::TempDir,
    opts: RegistryOptions,
    /// Serves HTTPS with these files (kept by restarts and
    /// [`Registry::reconfigure`]).
    tls: Option<RegistryTls>,
    port: u16,
    child: Option<Child>,
}

impl Registry {
    /// The registry over plain HTTP.
    pub fn start(opts: RegistryOptions) -> Registry {
        Registry::launch_new(opts, None)
    }

    /// The registry over HTTPS only (a plain HTTP request is answered 400),
    /// with `tls`'s certificate and key.
    pub fn start_tls(opts: RegistryOptions, tls: RegistryTls) -> Registry {
        Registry::launch_new(opts, Some(tls))
    }

    fn launch_new(opts: RegistryOptions, tls: Option<RegistryTls>) -> Registry {
        let mut registry = Registry {
            dir: tempfile::tempdir().expect("registry temp dir"),
            opts,
            tls,
            port: 0,
            child: None,
        };
        let mut last = String::new();
        for _ in 0..PORT_ATTEMPTS {
            match registry.launch(free_port()) {
                Ok(()) => return registry,
                Err(log) if log.contains("address already in use") => last = log,
                Err(log) => panic!("docker-registry did not start:\n{log}"),
            }
        }
        panic!("docker-registry did not start: address in use {PORT_ATTEMPTS} times:\n{last}");
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:PORT`: the registry host of a reference.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `http://127.0.0.1:PORT`, or `https://` when it serves TLS.
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.host())
    }

    /// The TLS files it serves with, if it serves TLS.
    pub fn tls(&self) -> Option<&RegistryTls> {
        self.tls.as_ref()
    }

    /// The filesystem storage root (`docker/registry/v2/...` below it).
    pub fn storage(&self) -> PathBuf {
        self.dir.path().join("storage")
    }

    /// Where the registry keeps the bytes of blob `digest`.
    pub fn blob_file(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").expect("a sha256 digest");
        self.storage()
            .join("docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            terminate(&mut child, libc::SIGTERM, Duration::from_secs(5));
        }
    }

    /// Stops and starts again on the same port and storage.
    pub fn restart(&mut self) {
        self.stop();
        let port = self.port;
        if let Err(log) = self.launch(port) {
            panic!("docker-registry restart on port {port} failed:\n{log}");
        }
    }

    /// Restarts with other options (same port, same storage, same TLS).
    pub fn reconfigure(&mut self, opts: RegistryOptions) {
        self.opts = opts;
        self.restart();
    }

    /// Every request logged so far.
    pub fn access_log(&self) -> Vec<Access> {
        let text = fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default();
        text.lines().filter_map(parse_access).collect()
    }

    /// Requests polhost sent (by its User-Agent).
    pub fn polhost_requests(&self) -> Vec<Access> {
        self.access_log()
            .into_iter()
            .filter(|a| a.user_agent.starts_with("polhost/"))
            .collect()
    }

    /// polhost's requests once at least `n` are logged: the registry logs
    /// a request after its response is sent, so a client can finish first.
    /// Gives up after 5 s and returns what is there.
    pub fn wait_for_polhost_requests(&self, n: usize) -> Vec<Access> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let requests = self.polhost_requests();
            if requests.len() >= n || Instant::now() >= deadline {
                return requests;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// polhost's requests once `done` holds for them: the registry logs a
    /// request after its response is sent, so a client can finish first.
    /// Gives up after 5 s and returns what is there.
    pub fn wait_for_requests(&self, done: impl Fn(&[Access]) -> bool) -> Vec<Access> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let requests = self.polhost_requests();
            if done(&requests) || Instant::now() >= deadline {
                return requests;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// polhost's blob GETs (any status).
    pub fn blob_gets(&self) -> Vec<Access> {
        self.polhost_requests()
            .into_iter()
            .filter(|a| a.method == "GET" && a.uri.contains("/blobs/"))
            .collect()
    }

    /// The digest of `repo:tag`'s manifest, asked anonymously with curl
    /// (over TLS, verifying the registry against the CA).
    pub fn manifest_digest(&self, repository: &str, tag: &str) -> String {
        let mut curl = Command::new("curl");
        curl.args(["-sS", "--max-time", "10", "--head"]);
        if let Some(tls) = &self.tls {
            curl.arg("--cacert").arg(&tls.ca);
        }
        let out = curl
            .arg("-H")
            .arg(format!(
                "Accept: {OCI_MANIFEST}, {OCI_INDEX}, application/vnd.docker.distribution.manifest.v2+json"
            ))
            .arg(format!("{}/v2/{repository}/manifests/{tag}", self.url()))
            .output()
            .expect("curl is not installed: run tests/harness/install.sh as root");
        assert!(
            out.status.success(),
            "curl HEAD of {repository}:{tag} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let head = String::from_utf8_lossy(&out.stdout);
        head.lines()
            .find_map(|l| {
                let (name, value) = l.split_once(':')?;
                name.eq_ignore_ascii_case("docker-content-digest")
                    .then(|| value.trim().to_string())
            })
            .unwrap_or_else(|| panic!("no Docker-Content-Digest for {repository}:{tag}:\n{head}"))
    }

    fn launch(&mut self, port: u16) -> Result<(), String> {
        assert!(self.child.is_none(), "docker-registry already running");
        let d = self.dir.path();
        let config = d.join("config.yml");
        fs::write(&config, self.config(port)).expect("write registry config");
        let log_path = d.join("registry.log");
        let offset = fs::metadata(&log_path).map(|m| m.len()).unwrap_or(0);
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .expect("open registry.log");
        let mut cmd = Command::new("docker-registry");
        cmd.arg("serve")
            .arg(&config)
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone().expect("dup registry.log")))
            .stderr(Stdio::from(log));
        let mut child = match spawn_tied(cmd) {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                panic!("docker-registry is not installed: run tests/harness/install.sh as root")
            }
            Err(e) => panic!("spawn docker-registry: {e}"),
        };
        let logs = || read_from(&log_path, offset);
        // Over TLS distribution says so on the same line, after it loaded
        // the certificate and key: `listening on 127.0.0.1:PORT, tls`.
        let listening = match self.tls {
            None => format!("listening on 127.0.0.1:{port}"),
            Some(_) => format!("listening on 127.0.0.1:{port}, tls"),
        };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!("docker-registry exited with {status}\n{}", logs()));
            }
            let text = logs();
            if text.contains("address already in use") {
                terminate(&mut child, libc::SIGKILL, Duration::from_secs(1));
                return Err(text);
            }
            if text.contains(&listening) && port_open(port) {
                self.port = port;
                self.child = Some(child);
                return Ok(());
            }
            if Instant::now() >= deadline {
                terminate(&mut child, libc::SIGKILL, Duration::from_secs(1));
                return Err(format!(
                    "docker-registry not listening after {START_TIMEOUT:?}\n{text}"
                ));
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    fn config(&self, port: u16) -> String {
        let d = self.dir.path();
        let auth = match &self.opts.auth {
            RegistryAuth::Anonymous => String::new(),
            RegistryAuth::Htpasswd { user, password } => {
                let out = Command::new("htpasswd")
                    .args(["-Bbn", user, password])
                    .output()
                    .expect("htpasswd is not installed: run tests/harness/install.sh as root");
                assert!(out.status.success(), "htpasswd failed");
                let file = d.join("htpasswd");
                fs::write(&file, out.stdout).unwrap();
                format!(
                    "auth:\n  htpasswd:\n    realm: polhost-test-registry\n    path: {}\n",
                    file.display()
                )
            }
            RegistryAuth::Token {
                realm,
                service,
                issuer,
                root_cert,
            } => format!(
                "auth:\n  token:\n    realm: {realm}\n    service: {service}\n    issuer: {issuer}\n    rootcertbundle: {}\n",
                root_cert.display()
            ),
        };
        let middleware = match &self.opts.redirect_blobs_to {
            None => String::new(),
            Some(base) => format!(
                "middleware:\n  storage:\n    - name: redirect\n      options:\n        baseurl: {base}\n"
            ),
        };
        let tls = match &self.tls {
            None => String::new(),
            Some(tls) => format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                tls.cert.display(),
                tls.key.display()
            ),
        };
        format!(
            "# generated by tests/all/harness/registry.rs
version: 0.1
log:
  level: info
  formatter: text
  accesslog:
    disabled: false
storage:
  filesystem:
    rootdirectory: {storage}
  delete:
    enabled: true
{middleware}http:
  addr: 127.0.0.1:{port}
  secret: polhost-test-secret
{tls}{auth}",
            storage = self.storage().display(),
        )
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `127.0.0.1 - - [date] "GET /v2/x HTTP/1.1" 200 2 "" "curl/7.88.1"`
fn parse_access(line: &str) -> Option<Access> {
    if !line.starts_with("127.0.0.1 - ") {
        return None;
    }
    let mut quoted = line.split('"');
    let _ = quoted.next()?;
    let request = quoted.next()?;
    let status_bytes = quoted.next()?;
    let _referer = quoted.next()?;
    let _ = quoted.next()?;
    let user_agent = quoted.next()?;
    let mut parts = request.split(' ');
    let method = parts.next()?.to_string();
    let uri = parts.next()?.to_string();
    let status = status_bytes.split_whitespace().next()?.parse().ok()?;
    Some(Access {
        method,
        uri,
        status,
        user_agent: user_agent.to_string(),
    })
}

fn read_from(path: &Path, offset: u64) -> String {
    let mut buf = Vec::new();
    if let Ok(mut f) = File::open(path) {
        let _ = f.read_to_end(&mut buf);
    }
    let start = (offset as usize).min(buf.len());
    String::from_utf8_lossy(&buf[start..]).into_owned()
}

pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes)))
}

/// An OCI image layout on disk (`oci-layout`, `index.json`, `blobs/`), the
/// source `skopeo copy oci:DIR:TAG` reads.
pub struct OciLayout {
    pub dir: PathBuf,
    /// Tag -> descriptor JSON of what it names.
    refs: Vec<(String, serde_json::Value)>,
}

impl OciLayout {
    pub fn new(dir: &Path) -> OciLayout {
        fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
        fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
        OciLayout {
            dir: dir.to_path_buf(),
            refs: Vec::new(),
        }
    }

    /// Writes a blob; returns its descriptor.
    pub fn blob(&self, media_type: &str, bytes: &[u8]) -> serde_json::Value {
        let digest = sha256_digest(bytes);
        fs::write(
            self.dir
                .join("blobs/sha256")
                .join(&digest["sha256:".len()..]),
            bytes,
        )
        .unwrap();
        serde_json::json!({"mediaType": media_type, "digest": digest, "size": bytes.len()})
    }

    /// An OCI manifest with `config` (media type, bytes) and `layers`.
    pub fn manifest(&self, config: (&str, &[u8]), layers: &[(&str, &[u8])]) -> serde_json::Value {
        let config = self.blob(config.0, config.1);
        let layers: Vec<_> = layers.iter().map(|(t, b)| self.blob(t, b)).collect();
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": config,
            "layers": layers,
        });
        self.blob(OCI_MANIFEST, manifest.to_string().as_bytes())
    }

    /// The manifest `opa build` + an OCI push produce: config
    /// `application/vnd.oci.image.config.v1+json` `{}`, one tar+gzip layer.
    pub fn bundle_manifest(&self, bundle: &[u8]) -> serde_json::Value {
        self.manifest((OCI_CONFIG, b"{}"), &[(BUNDLE_LAYER, bundle)])
    }

    /// An image index of `(descriptor, os/arch)` entries.
    pub fn index(&self, entries: &[(serde_json::Value, &str)]) -> serde_json::Value {
        let manifests: Vec<_> = entries
            .iter()
            .map(|(descriptor, platform)| {
                let mut d = descriptor.clone();
                let (os, arch) = platform.split_once('/').unwrap();
                d["platform"] = serde_json::json!({"os": os, "architecture": arch});
                d
            })
            .collect();
        let index = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": manifests,
        });
        self.blob(OCI_INDEX, index.to_string().as_bytes())
    }

    /// Names `descriptor` `tag` in `index.json`.
    pub fn tag(&mut self, tag: &str, descriptor: serde_json::Value) {
        let mut d = descriptor;
        d["annotations"] = serde_json::json!({"org.opencontainers.image.ref.name": tag});
        self.refs.retain(|(t, _)| t != tag);
        self.refs.push((tag.to_string(), d));
        let index = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": self.refs.iter().map(|(_, d)| d.clone()).collect::<Vec<_>>(),
        });
        fs::write(self.dir.join("index.json"), index.to_string()).unwrap();
    }
}

/// `skopeo copy oci:LAYOUT:TAG docker://REGISTRY/TARGET` with its own
/// HOME/XDG dirs and an accept-anything policy; `extra` adds flags
/// (`--format v2s2`, `--all`, `--dest-creds u:p`). To a registry over TLS
/// it verifies the registry's certificate against the CA (`ca.crt` in a
/// `--dest-cert-dir`); to one over HTTP, `--dest-tls-verify=false` lets it
/// fall back to plain HTTP.
pub fn skopeo_copy(
    layout: &OciLayout,
    tag: &str,
    registry: &Registry,
    target: &str,
    extra: &[&str],
) {
    let home = layout.dir.parent().unwrap().join("skopeo-home");
    fs::create_dir_all(&home).unwrap();
    let policy = home.join("policy.json");
    fs::write(
        &policy,
        r#"{"default":[{"type":"insecureAcceptAnything"}]}"#,
    )
    .unwrap();
    let tls_flags: Vec<String> = match registry.tls() {
        None => vec!["--dest-tls-verify=false".to_string()],
        Some(tls) => {
            // containers/image adds a cert dir's `*.crt` to the roots.
            let certs = home.join("certs.d");
            fs::create_dir_all(&certs).unwrap();
            fs::copy(&tls.ca, certs.join("ca.crt")).unwrap();
            vec![
                "--dest-tls-verify=true".to_string(),
                "--dest-cert-dir".to_string(),
                certs.display().to_string(),
            ]
        }
    };
    let mut cmd = Command::new("skopeo");
    // As root, containers/image keeps its blob-info cache in
    // /var/lib/containers/cache; as a "rootless" user it uses
    // $XDG_DATA_HOME: make it think so, to keep it inside the test's dir.
    cmd.env("_CONTAINERS_ROOTLESS_UID", "4711")
        .env("HOME", &home)
        .env("XDG_DATA_HOME", home.join("data"))
        .env("XDG_CONFIG_HOME", home.join("config"))
        .env("XDG_RUNTIME_DIR", home.join("run"))
        .arg("--policy")
        .arg(&policy)
        .args(["copy", "--quiet"])
        .args(&tls_flags)
        .args(extra)
        .arg(format!("oci:{}:{tag}", layout.dir.display()))
        .arg(format!("docker://{}/{target}", registry.host()));
    let out = cmd
        .output()
        .expect("skopeo is not installed: run tests/harness/install.sh as root");
    assert!(
        out.status.success(),
        "skopeo copy to {target} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The python of the venv `tests/harness/install.sh` puts oras-py in.
pub fn oras_python() -> PathBuf {
    let python = super::venv_bin("python");
    assert!(
        python.is_file(),
        "oras-py is not installed ({} missing): run tests/harness/install.sh",
        python.display()
    );
    python
}

/// Pushes `file` (in `dir`) with oras-py as the only layer of `target`,
/// with media type `media_type`; basic credentials when given.
pub fn oras_push(
    dir: &Path,
    file: &str,
    media_type: &str,
    registry: &Registry,
    target: &str,
    basic: Option<(&str, &str)>,
) {
    assert!(
        registry.tls().is_none(),
        "oras_push speaks plain HTTP: push to a registry over TLS with skopeo_copy"
    );
    let script = r#"
import sys, oras.client
host, target, path, media_type, user, password = sys.argv[1:7]
client = oras.client.OrasClient(hostname=host, insecure=True, auth_backend="basic")
if user:
    client.auth.set_basic_auth(user, password)
client.push(target=target, files=[path + ":" + media_type])
"#;
    let (user, password) = basic.unwrap_or(("", ""));
    let out = Command::new(oras_python())
        .current_dir(dir)
        .env("HOME", dir)
        .arg("-c")
        .arg(script)
        .arg(registry.host())
        .arg(format!("{}/{target}", registry.host()))
        .arg(file)
        .arg(media_type)
        .arg(user)
        .arg(password)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "oras push to {target} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Pushes the component `wasm` to `target` (`repository:tag`) with oras-py
/// in the CNCF Wasm OCI artifact layout (`wkg oci push` writes the same):
/// one `application/wasm` layer and an `application/vnd.wasm.config.v0+json`
/// config. Returns the manifest's digest and the layer's.
pub fn oras_push_wasm(registry: &Registry, target: &str, wasm: &Path) -> (String, String) {
    assert!(
        registry.tls().is_none(),
        "oras_push_wasm speaks plain HTTP: the registry serves TLS"
    );
    let dir = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(wasm).unwrap();
    let layer_digest = sha256_digest(&bytes);
    std::fs::write(dir.path().join("component.wasm"), &bytes).unwrap();
    let config = serde_json::json!({
        "created": "2026-12-01T00:00:00Z",
        "architecture": "wasm",
        "os": "wasip2",
        "layerDigests": [layer_digest],
        "component": {"exports": ["polhost:fetcher/fetch@0.1.0"], "imports": [], "target": null},
    });
    std::fs::write(dir.path().join("config.json"), config.to_string()).unwrap();
    let script = r#"
import sys, oras.client
host, target = sys.argv[1:3]
client = oras.client.OrasClient(hostname=host, insecure=True, auth_backend="basic")
client.push(
    target=target,
    files=["component.wasm:application/wasm"],
    manifest_config="config.json:application/vnd.wasm.config.v0+json",
)
"#;
    let out = Command::new(oras_python())
        .current_dir(dir.path())
        .env("HOME", dir.path())
        .arg("-c")
        .arg(script)
        .arg(registry.host())
        .arg(format!("{}/{target}", registry.host()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "oras push of {} to {target} failed:\n{}{}",
        wasm.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let (repository, tag) = target.rsplit_once(':').expect("repository:tag");
    (registry.manifest_digest(repository, tag), layer_digest)
}
