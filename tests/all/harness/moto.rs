//! moto (PyPI `moto[server]`) as the S3 and STS server on 127.0.0.1, with
//! IAM enforcement switched on so SigV4 signatures are really verified;
//! over HTTP, or over HTTPS with a certificate of [`super::tls::TestCa`]
//! ([`Moto::start_tls`]: `moto_server --ssl-cert --ssl-key`, werkzeug's
//! TLS). The S3 side (IAM user, role, bucket, uploads) is done with boto3
//! through `tests/fixtures/s3_client.py`, run by the shared venv's python
//! (over TLS verifying moto against the CA).
//!
//! ```ignore
//! let moto = Moto::start();
//! let key = moto.setup();                  // IAM user + key, bucket `bundles`, enforcement on
//! moto.put(&key, "authz.tar.gz", &bytes);  // boto3 upload
//! moto.requests();                         // the server's request log
//!
//! let moto = Moto::start_tls(MotoTls::from_ca(&TestCa::new()));
//! moto.url();                              // https://127.0.0.1:PORT
//! ```
//!
//! moto keeps no access log of its own: [`Moto::requests`] parses the
//! request lines its HTTP server (werkzeug) writes to stderr: method, path
//! and status (no byte counts; a 304 carries no body by definition).

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{free_port, spawn_tied, terminate, wait_until_listening, wait_until_ready};
use super::{python, venv_bin};

const START_TIMEOUT: Duration = Duration::from_secs(30);
const PORT_ATTEMPTS: usize = 5;

/// moto over HTTPS: its certificate and key (PEM), and the CA that issued
/// them, which the harness's own clients (boto3, curl) verify against.
#[derive(Clone, Debug)]
pub struct MotoTls {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
}

impl MotoTls {
    /// `ca`'s server certificate (127.0.0.1 and localhost) and key.
    pub fn from_ca(ca: &super::tls::TestCa) -> MotoTls {
        MotoTls {
            cert: ca.server_cert.clone(),
            key: ca.server_key.clone(),
            ca: ca.ca_cert.clone(),
        }
    }
}

/// An IAM access key moto knows.
#[derive(Clone, Debug)]
pub struct AccessKey {
    pub id: String,
    pub secret: String,
}

/// One request from moto's log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MotoRequest {
    pub method: String,
    pub path: String,
    pub status: u16,
}

/// A running moto server; stopped on drop.
pub struct Moto {
    child: Child,
    port: u16,
    log: PathBuf,
    tls: Option<MotoTls>,
    _dir: tempfile::TempDir,
}

impl Moto {
    /// moto over plain HTTP.
    pub fn start() -> Moto {
        Moto::launch(None)
    }

    /// moto over HTTPS only, with `tls`'s certificate and key.
    pub fn start_tls(tls: MotoTls) -> Moto {
        Moto::launch(Some(tls))
    }

    fn launch(tls: Option<MotoTls>) -> Moto {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("moto.log");
        for _ in 0..PORT_ATTEMPTS {
            let port = free_port();
            let mut command = Command::new(venv_bin("moto_server"));
            command.args(["-H", "127.0.0.1", "-p", &port.to_string()]);
            if let Some(tls) = &tls {
                command
                    .arg("--ssl-cert")
                    .arg(&tls.cert)
                    .arg("--ssl-key")
                    .arg(&tls.key);
            }
            command
                .stdin(Stdio::null())
                .stdout(File::create(dir.path().join("moto.out")).unwrap())
                .stderr(File::create(&log).unwrap());
            let mut child =
                spawn_tied(command).expect("starting moto_server (run tests/harness/install.sh)");
            if wait_until_listening(&mut child, port, START_TIMEOUT)
                && (tls.is_none() || serving_https(&mut child, &log, port))
            {
                return Moto {
                    child,
                    port,
                    log,
                    tls,
                    _dir: dir,
                };
            }
        }
        panic!(
            "moto_server did not start:\n{}",
            fs::read_to_string(&log).unwrap_or_default()
        );
    }

    /// `http://127.0.0.1:PORT`, or `https://` when it serves TLS.
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// The TLS files it serves with, if it serves TLS.
    pub fn tls(&self) -> Option<&MotoTls> {
        self.tls.as_ref()
    }

    /// The CA argument `s3_client.py` takes last, over TLS.
    fn ca_arg(&self) -> Option<String> {
        self.tls.as_ref().map(|t| t.ca.display().to_string())
    }

    /// IAM user `polhost` with an `s3:*` key, role `bundle-reader`, bucket
    /// `bundles`; then IAM enforcement on.
    pub fn setup(&self) -> AccessKey {
        let url = self.url();
        let mut args = vec!["setup", url.as_str()];
        let ca = self.ca_arg();
        args.extend(ca.as_deref());
        let out = python("s3_client.py", &args);
        let json: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
        AccessKey {
            id: json["access_key_id"].as_str().unwrap().to_string(),
            secret: json["secret_access_key"].as_str().unwrap().to_string(),
        }
    }

    /// Uploads `content` as `bundles/<key>` with boto3.
    pub fn put(&self, access: &AccessKey, key: &str, content: &[u8]) {
        let file = tempfile::NamedTempFile::new().unwrap();
        fs::write(file.path(), content).unwrap();
        let url = self.url();
        let mut args = vec![
            "put",
            url.as_str(),
            access.id.as_str(),
            access.secret.as_str(),
            "bundles",
            key,
            file.path().to_str().unwrap(),
        ];
        let ca = self.ca_arg();
        args.extend(ca.as_deref());
        python("s3_client.py", &args);
    }

    /// Lets the next `n` requests through without a signature, then
    /// enforces again (moto cannot verify an unsigned STS
    /// AssumeRoleWithWebIdentity while enforcing: it answers 500).
    pub fn allow_unsigned(&self, n: u32) {
        let mut curl = Command::new("curl");
        curl.args(["-sS", "-X", "POST", "-H", "Content-Type: text/plain"])
            .args(["--data-binary", &n.to_string()]);
        if let Some(tls) = &self.tls {
            curl.arg("--cacert").arg(&tls.ca);
        }
        let out = curl
            .arg(format!("{}/moto-api/reset-auth", self.url()))
            .output()
            .expect("curl");
        assert!(out.status.success(), "{out:?}");
    }

    /// The requests moto logged so far, in order.
    pub fn requests(&self) -> Vec<MotoRequest> {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        text.lines()
            .filter_map(|line| {
                // 127.0.0.1 - - [date] "GET /p HTTP/1.1" 200 -   (errors in ANSI colour)
                let start = line.find("] \"")? + 3;
                let rest = &line[start..];
                let end = rest.find('"')?;
                let request = strip_ansi(&rest[..end]);
                let mut parts = request.split(' ');
                let method = parts.next()?.to_string();
                let path = parts.next()?.to_string();
                let status = rest[end + 1..].split_whitespace().next()?.parse().ok()?;
                Some(MotoRequest {
                    method,
                    path,
                    status,
                })
            })
            .filter(|r| !r.path.starts_with("/moto-api"))
            .collect()
    }
}

/// Waits for werkzeug's `Running on https://127.0.0.1:PORT` on moto's
/// stderr: the certificate and key are loaded and the socket wrapped.
/// `false` when moto exits first or time runs out; it is then killed.
fn serving_https(child: &mut Child, log: &Path, port: u16) -> bool {
    let banner = format!("Running on https://127.0.0.1:{port}");
    wait_until_ready(child, START_TIMEOUT, || {
        fs::read_to_string(log).is_ok_and(|text| text.contains(&banner))
    })
}

fn strip_ansi(text: &str) -> String {
    let mut out = String::new();
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

impl Drop for Moto {
    fn drop(&mut self) {
        terminate(&mut self.child, libc::SIGTERM, Duration::from_secs(3));
    }
}
