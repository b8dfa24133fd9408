//! etcd 3.4 (Debian package `etcd-server`, `/usr/bin/etcd`) as a one-member
//! cluster on 127.0.0.1 with a temp data dir: the backend of the example
//! plugin `examples/fetchers/etcd`. Values are written with etcd's own
//! client, `etcdctl` (Debian package `etcd-client`), over gRPC, so the
//! plugin reads through the JSON gateway what an operator's tooling wrote.
//!
//! ```ignore
//! let mut etcd = Etcd::start();
//! let revision = etcd.put("/policies/authz", &bundle("v1"));
//! assert_eq!(etcd.mod_revision("/policies/authz"), Some(revision));
//! let token = etcd.enable_auth("reader", "/policies/"); // a token of `reader`
//! ```

use std::fs::{self, File};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use super::{free_port, spawn_tied, terminate, wait_until_listening};

const START_TIMEOUT: Duration = Duration::from_secs(20);
const STOP_GRACE: Duration = Duration::from_secs(5);
const PORT_ATTEMPTS: usize = 5;
/// The root user [`Etcd::enable_auth`] creates (etcd wants one before
/// authentication can be switched on); later `etcdctl` calls use it.
const ROOT_USER: &str = "root:root-password";

/// A running etcd; stopped on drop. Owns a temp dir with its data and log.
pub struct Etcd {
    child: Option<Child>,
    port: u16,
    log: PathBuf,
    /// `--user` for etcdctl once authentication is on.
    user: Option<String>,
    _dir: tempfile::TempDir,
}

impl Etcd {
    /// Starts etcd and waits until it answers a health check; panics with
    /// its log if it does not within 20 s, or if etcd is not installed.
    pub fn start() -> Etcd {
        let dir = tempfile::Builder::new()
            .prefix("polhost-etcd-")
            .tempdir()
            .expect("create etcd temp dir");
        let mut last_log = String::new();
        for attempt in 0..PORT_ATTEMPTS {
            let (port, peer_port) = (free_port(), free_port());
            if port == peer_port {
                continue;
            }
            let log = dir.path().join(format!("etcd-{attempt}.log"));
            // A fresh data dir per attempt: a failed start may leave one
            // half-initialised for another peer URL.
            let data = dir.path().join(format!("data-{attempt}"));
            match launch(&data, port, peer_port, &log) {
                Ok(child) => {
                    return Etcd {
                        child: Some(child),
                        port,
                        log,
                        user: None,
                        _dir: dir,
                    };
                }
                Err(Launch::AddrInUse(text)) => last_log = text,
                Err(Launch::Failed(text)) => panic!("etcd did not start:\n{text}"),
            }
        }
        panic!("etcd did not start: address in use {PORT_ATTEMPTS} times:\n{last_log}");
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// "http://127.0.0.1:PORT": the client URL, for gRPC and the JSON
    /// gateway alike.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Writes `value` at `key` with `etcdctl put` (the value on stdin, so
    /// any bytes go through) and returns the store's revision after it,
    /// which is the key's new `mod_revision`.
    pub fn put(&self, key: &str, value: &[u8]) -> u64 {
        let out = self.etcdctl(&["put", key, "--write-out=json"], Some(value));
        let json = json_of(&out, "put");
        json["header"]["revision"]
            .as_u64()
            .unwrap_or_else(|| panic!("etcdctl put: no header.revision in {json}"))
    }

    /// The key's `mod_revision` as `etcdctl get` reports it; `None` when
    /// etcd has no such key.
    pub fn mod_revision(&self, key: &str) -> Option<u64> {
        let out = self.etcdctl(&["get", key, "--write-out=json"], None);
        let json = json_of(&out, "get");
        json["kvs"]
            .as_array()
            .and_then(|kvs| kvs.first())
            .map(|kv| {
                kv["mod_revision"]
                    .as_u64()
                    .unwrap_or_else(|| panic!("etcdctl get: no mod_revision in {json}"))
            })
    }

    /// Switches authentication on, with a user `user` that may read the
    /// keys under `prefix` and nothing else, and returns a token of that
    /// user from the gateway's `/v3/auth/authenticate` (a simple token,
    /// valid for etcd's default 5 minutes).
    pub fn enable_auth(&mut self, user: &str, prefix: &str) -> String {
        let password = format!("{user}-password");
        let role = format!("{user}-role");
        let user_add = format!("{user}:{password}");
        for args in [
            &["user", "add", ROOT_USER][..],
            &["role", "add", &role],
            &[
                "role",
                "grant-permission",
                &role,
                "read",
                prefix,
                "--prefix",
            ],
            &["user", "add", &user_add],
            &["user", "grant-role", user, &role],
            &["auth", "enable"],
        ] {
            self.etcdctl(args, None);
        }
        self.user = Some(ROOT_USER.to_string());
        let (status, body) = self.post(
            "/v3/auth/authenticate",
            &serde_json::json!({"name": user, "password": password}).to_string(),
        );
        assert_eq!(status, 200, "authenticate {user}: {body}");
        let json: serde_json::Value = serde_json::from_str(&body).unwrap();
        json["token"]
            .as_str()
            .unwrap_or_else(|| panic!("no token in {body}"))
            .to_string()
    }

    /// etcd's log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, wait; SIGKILL after 5 s. Idempotent.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            terminate(&mut child, libc::SIGTERM, STOP_GRACE);
        }
    }

    /// Runs etcdctl against this etcd; panics with its output on failure.
    fn etcdctl(&self, args: &[&str], stdin: Option<&[u8]>) -> Output {
        let out = etcdctl(&self.url(), self.user.as_deref(), args, stdin);
        assert!(
            out.status.success(),
            "etcdctl {args:?} failed:\n{}{}\netcd logged:\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        out
    }

    /// POSTs `body` to the gateway at `path`: (status, body). HTTP/1.0, so
    /// etcd answers without chunking and closes the connection.
    fn post(&self, path: &str, body: &str) -> (u16, String) {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        let mut stream =
            TcpStream::connect_timeout(&addr, Duration::from_secs(2)).expect("connect to etcd");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        write!(
            stream,
            "POST {path} HTTP/1.0\r\nHost: 127.0.0.1:{}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            self.port,
            body.len()
        )
        .expect("send to etcd");
        let mut response = String::new();
        stream
            .read_to_string(&mut response)
            .expect("read etcd's answer");
        let (head, body) = response
            .split_once("\r\n\r\n")
            .unwrap_or_else(|| panic!("no HTTP response from etcd: {response:?}"));
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no status in {head:?}"));
        (status, body.to_string())
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
    }
}

enum Launch {
    AddrInUse(String),
    Failed(String),
}

/// Starts one etcd on 127.0.0.1:`port` (clients) and `peer_port` (peers)
/// with the data dir `data`, logging to `log`; returns it once healthy.
fn launch(data: &Path, port: u16, peer_port: u16, log: &Path) -> Result<Child, Launch> {
    let client_url = format!("http://127.0.0.1:{port}");
    let peer_url = format!("http://127.0.0.1:{peer_port}");
    let log_file = File::create(log).expect("create etcd log");
    let mut command = Command::new(etcd_bin());
    command
        .arg("--data-dir")
        .arg(data)
        .args(["--listen-client-urls", &client_url])
        .args(["--advertise-client-urls", &client_url])
        .args(["--listen-peer-urls", &peer_url])
        .args(["--initial-advertise-peer-urls", &peer_url])
        .args(["--initial-cluster", &format!("default={peer_url}")])
        .stdin(Stdio::null())
        .stdout(log_file.try_clone().expect("dup etcd log"))
        .stderr(log_file);
    // etcd reads every ETCD_* variable as a flag: none of the test
    // environment's may reach it.
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("ETCD_") {
            command.env_remove(name);
        }
    }
    let mut child = match spawn_tied(command) {
        Ok(child) => child,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!("{}", missing_msg()),
        Err(e) => panic!("spawn etcd: {e}"),
    };
    let read_log = || fs::read_to_string(log).unwrap_or_default();
    let classify = |text: String| {
        if text.contains("address already in use") {
            Launch::AddrInUse(text)
        } else {
            Launch::Failed(text)
        }
    };
    if !wait_until_listening(&mut child, port, START_TIMEOUT) {
        return Err(classify(format!(
            "etcd not listening on {client_url}:\n{}",
            read_log()
        )));
    }
    // The port may be another process's (another test's etcd): only a
    // running etcd whose member has our peer URL counts, and it is ready
    // once it elected itself and answers a health check.
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(classify(format!(
                "etcd exited with {status}:\n{}",
                read_log()
            )));
        }
        let members = etcdctl(
            &client_url,
            None,
            &["member", "list", "--write-out=json"],
            None,
        );
        if members.status.success() {
            let json: serde_json::Value =
                serde_json::from_slice(&members.stdout).unwrap_or_default();
            let ours = json["members"].as_array().is_some_and(|members| {
                members.iter().any(|member| {
                    member["peerURLs"]
                        .as_array()
                        .is_some_and(|urls| urls.iter().any(|url| url == peer_url.as_str()))
                })
            });
            if !ours {
                terminate(&mut child, libc::SIGKILL, STOP_GRACE);
                return Err(Launch::AddrInUse(format!(
                    "{client_url} is another etcd's: {json}"
                )));
            }
            if etcdctl(&client_url, None, &["endpoint", "health"], None)
                .status
                .success()
            {
                return Ok(child);
            }
        }
        if Instant::now() >= deadline {
            terminate(&mut child, libc::SIGTERM, STOP_GRACE);
            return Err(Launch::Failed(format!(
                "etcd on {client_url} not healthy after {START_TIMEOUT:?}:\n{}",
                read_log()
            )));
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// Runs etcdctl against `url` (as `user`, `name:password`, when given),
/// `stdin` fed to it; its output, whatever its exit status.
fn etcdctl(url: &str, user: Option<&str>, args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut command = Command::new(etcdctl_bin());
    command
        .env("ETCDCTL_API", "3")
        .arg("--endpoints")
        .arg(url)
        .args(["--dial-timeout", "2s", "--command-timeout", "5s"]);
    if let Some(user) = user {
        command.arg("--user").arg(user);
    }
    command
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!("{}", missing_msg()),
        Err(e) => panic!("spawn etcdctl: {e}"),
    };
    if let Some(bytes) = stdin {
        // Closed once written: etcdctl reads the value to EOF.
        let mut pipe = child.stdin.take().unwrap();
        pipe.write_all(bytes).expect("write the value to etcdctl");
    }
    child.wait_with_output().expect("wait for etcdctl")
}

fn json_of(out: &Output, what: &str) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "etcdctl {what}: not JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

fn etcd_bin() -> PathBuf {
    find("etcd").unwrap_or_else(|| panic!("{}", missing_msg()))
}

fn etcdctl_bin() -> PathBuf {
    find("etcdctl").unwrap_or_else(|| panic!("{}", missing_msg()))
}

/// `/usr/bin/<name>` (where Debian puts it), else the first on `PATH`.
fn find(name: &str) -> Option<PathBuf> {
    let system = Path::new("/usr/bin").join(name);
    if system.is_file() {
        return Some(system);
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

fn missing_msg() -> String {
    "etcd or etcdctl is not installed (Debian packages etcd-server and etcd-client): run tests/harness/install.sh as root"
        .to_string()
}
