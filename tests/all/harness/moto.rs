//! moto (PyPI `moto[server]`) as the S3 and STS server on 127.0.0.1, with
//! IAM enforcement switched on so SigV4 signatures are really verified.
//! The S3 side (IAM user, role, bucket, uploads) is done with boto3 through
//! `tests/fixtures/s3_client.py`, run by the shared venv's python.
//!
//! ```ignore
//! let moto = Moto::start();
//! let key = moto.setup();                  // IAM user + key, bucket `bundles`, enforcement on
//! moto.put(&key, "authz.tar.gz", &bytes);  // boto3 upload
//! moto.requests();                         // the server's request log
//! ```
//!
//! moto keeps no access log of its own: [`Moto::requests`] parses the
//! request lines its HTTP server (werkzeug) writes to stderr: method, path
//! and status (no byte counts; a 304 carries no body by definition).

use std::fs::{self, File};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{free_port, spawn_tied, terminate, wait_until_listening};
use super::{python, venv_bin};

const START_TIMEOUT: Duration = Duration::from_secs(30);
const PORT_ATTEMPTS: usize = 5;

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
    _dir: tempfile::TempDir,
}

impl Moto {
    pub fn start() -> Moto {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("moto.log");
        for _ in 0..PORT_ATTEMPTS {
            let port = free_port();
            let mut command = Command::new(venv_bin("moto_server"));
            command
                .args(["-H", "127.0.0.1", "-p", &port.to_string()])
                .stdin(Stdio::null())
                .stdout(File::create(dir.path().join("moto.out")).unwrap())
                .stderr(File::create(&log).unwrap());
            let mut child =
                spawn_tied(command).expect("starting moto_server (run tests/harness/install.sh)");
            if wait_until_listening(&mut child, port, START_TIMEOUT) {
                return Moto {
                    child,
                    port,
                    log,
                    _dir: dir,
                };
            }
        }
        panic!(
            "moto_server did not start:\n{}",
            fs::read_to_string(&log).unwrap_or_default()
        );
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// IAM user `polhost` with an `s3:*` key, role `bundle-reader`, bucket
    /// `bundles`; then IAM enforcement on.
    pub fn setup(&self) -> AccessKey {
        let out = python("s3_client.py", &["setup", &self.url()]);
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
        python(
            "s3_client.py",
            &[
                "put",
                &self.url(),
                &access.id,
                &access.secret,
                "bundles",
                key,
                file.path().to_str().unwrap(),
            ],
        );
    }

    /// Lets the next `n` requests through without a signature, then
    /// enforces again (moto cannot verify an unsigned STS
    /// AssumeRoleWithWebIdentity while enforcing: it answers 500).
    pub fn allow_unsigned(&self, n: u32) {
        let out = Command::new("curl")
            .args(["-sS", "-X", "POST", "-H", "Content-Type: text/plain"])
            .args(["--data-binary", &n.to_string()])
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
