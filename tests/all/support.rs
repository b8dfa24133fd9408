//! What the integration tests share: a `polhost` process whose log lines
//! can be awaited, OPA bundles built on the fly, and configuration files.
#![allow(dead_code)]

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime};

pub use crate::harness::tar_gz;
use crate::harness::{spawn_tied, terminate};

/// The binary under test.
pub const POLHOST: &str = env!("CARGO_BIN_EXE_polhost");

/// How long a test waits for something that should happen in well under a
/// second, before failing with what it saw.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// A gzipped tar OPA bundle: a `.manifest` with `revision` and root
/// `authz`, a policy and a data file.
pub fn bundle(revision: &str) -> Vec<u8> {
    bundle_with_data(revision, &format!(r#"{{"revision":"{revision}"}}"#))
}

/// [`bundle`], with `data` as `authz/data.json`.
pub fn bundle_with_data(revision: &str, data: &str) -> Vec<u8> {
    tar_gz(&[
        (
            ".manifest",
            format!(r#"{{"revision":"{revision}","roots":["authz"]}}"#).into_bytes(),
        ),
        (
            "authz/policy.rego",
            b"package authz\n\ndefault allow := false\n".to_vec(),
        ),
        ("authz/data.json", data.as_bytes().to_vec()),
    ])
}

/// `len` bytes gzip cannot shrink (xorshift64 from `seed`): for bundles
/// whose compressed size must be close to their size.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Writes `content` to `path` by rename (as a deploy would), creating
/// parents, and moves its mtime `age_offset_s` seconds into the future:
/// nginx's etag is mtime+size, so two versions written within one second
/// need distinct mtimes.
pub fn publish(path: &Path, content: &[u8], age_offset_s: u64) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    let temp = path.with_extension("tmp-publish");
    fs::write(&temp, content).unwrap();
    let file = fs::File::options().write(true).open(&temp).unwrap();
    file.set_modified(SystemTime::now() + Duration::from_secs(age_offset_s))
        .unwrap();
    drop(file);
    fs::rename(&temp, path).unwrap();
}

/// Hex SHA-256 of a file.
pub fn sha256_file(path: &Path) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(fs::read(path).unwrap()))
}

/// A scratch directory holding a config file and a persistence directory.
pub struct Workdir {
    pub dir: tempfile::TempDir,
}

impl Workdir {
    pub fn new() -> Workdir {
        Workdir {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes `config.yaml`, with `persistence_directory` set to `state/`
    /// inside this directory unless the text sets it.
    pub fn config(&self, yaml: &str) -> PathBuf {
        let mut text = yaml.to_string();
        if !text.contains("persistence_directory") {
            text.push_str(&format!(
                "\npersistence_directory: {}\n",
                self.state().display()
            ));
        }
        let path = self.path().join("config.yaml");
        fs::write(&path, text).unwrap();
        path
    }

    pub fn state(&self) -> PathBuf {
        self.path().join("state")
    }

    /// Where a `persist: true` bundle lives.
    pub fn persisted(&self, bundle: &str) -> PathBuf {
        self.state()
            .join("bundles")
            .join(bundle)
            .join("bundle.tar.gz")
    }

    /// The metadata of a persisted bundle.
    pub fn metadata(&self, bundle: &str) -> serde_json::Value {
        let path = self
            .state()
            .join("bundles")
            .join(bundle)
            .join("metadata.json");
        serde_json::from_slice(&fs::read(path).unwrap()).unwrap()
    }
}

/// The result of a `polhost` run that ended.
pub struct Finished {
    pub status: ExitStatus,
    pub stderr: String,
}

/// Runs `polhost ARGS` to its end (with a generous time limit).
/// What polhost reads, as Go does, to choose a proxy.
const PROXY_VARIABLES: [&str; 7] = [
    "HTTP_PROXY",
    "http_proxy",
    "HTTPS_PROXY",
    "https_proxy",
    "NO_PROXY",
    "no_proxy",
    "REQUEST_METHOD",
];

pub fn polhost(args: &[&str], env: &[(&str, &str)]) -> Finished {
    let mut process = Polhost::spawn(args, env);
    let status = process.wait_exit(PATIENCE * 3);
    Finished {
        status,
        stderr: process.output(),
    }
}

/// What a short `polhost` command (`plugin inspect`, `plugin wit`) printed.
pub struct Printed {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `polhost ARGS` to its end and keeps both of its outputs.
pub fn polhost_printing(args: &[&str], env: &[(&str, &str)]) -> Printed {
    let out = Command::new(POLHOST)
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .expect("running polhost");
    Printed {
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A running `polhost`, its stderr collected line by line.
pub struct Polhost {
    child: Child,
    lines: Arc<(Mutex<Vec<String>>, Condvar)>,
}

impl Polhost {
    /// Starts `polhost ARGS` logging polhost at debug level, unless `env`
    /// sets `POLHOST_LOG`.
    pub fn spawn(args: &[&str], env: &[(&str, &str)]) -> Polhost {
        let mut command = Command::new(POLHOST);
        command
            .args(args)
            .env("POLHOST_LOG", "info,polhost=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        // The machine's proxies are not the test's: a test that wants one
        // sets it.
        for name in PROXY_VARIABLES {
            command.env_remove(name);
        }
        for (name, value) in env {
            command.env(name, value);
        }
        let mut child = spawn_tied(command).expect("starting polhost");
        let stderr = child.stderr.take().unwrap();
        let lines = Arc::new((Mutex::new(Vec::new()), Condvar::new()));
        let sink = lines.clone();
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let (lock, cvar) = &*sink;
                lock.lock().unwrap().push(line);
                cvar.notify_all();
            }
        });
        Polhost { child, lines }
    }

    /// Everything logged so far.
    pub fn output(&self) -> String {
        self.lines.0.lock().unwrap().join("\n")
    }

    /// How many lines logged so far satisfy `matches`.
    pub fn count(&self, matches: impl Fn(&str) -> bool) -> usize {
        self.lines
            .0
            .lock()
            .unwrap()
            .iter()
            .filter(|l| matches(l))
            .count()
    }

    /// Waits until `n` lines satisfy `matches`; panics with the log if that
    /// takes longer than `timeout`.
    pub fn wait_for_n(
        &self,
        n: usize,
        timeout: Duration,
        what: &str,
        matches: impl Fn(&str) -> bool,
    ) {
        let deadline = Instant::now() + timeout;
        let (lock, cvar) = &*self.lines;
        let mut lines = lock.lock().unwrap();
        loop {
            if lines.iter().filter(|l| matches(l)).count() >= n {
                return;
            }
            let now = Instant::now();
            if now >= deadline {
                panic!(
                    "waited {timeout:?} for {n} x {what}; polhost logged:\n{}",
                    lines.join("\n")
                );
            }
            lines = cvar.wait_timeout(lines, deadline - now).unwrap().0;
        }
    }

    /// Waits for a line containing every one of `needles`.
    pub fn wait_for(&self, needles: &[&str]) {
        let what = needles.join(" + ");
        self.wait_for_n(1, PATIENCE, &what, |l| {
            needles.iter().all(|n| l.contains(n))
        });
    }

    /// Waits for the log line announcing `revision` active from `source`
    /// (`Download` or `Disk`).
    pub fn wait_for_activation(&self, revision: &str, source: &str) {
        self.wait_for(&[
            "bundle activated",
            &format!("revision={revision} "),
            &format!("source={source}"),
        ]);
    }

    /// Sends SIGTERM and returns how long polhost took to exit, and how.
    pub fn terminate(&mut self) -> (Duration, ExitStatus) {
        let start = Instant::now();
        // SAFETY: plain syscall on our own, unreaped child.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let status = self.wait_exit(PATIENCE);
        (start.elapsed(), status)
    }

    /// Sends SIGKILL now and reaps the process.
    pub fn terminate_now(&mut self) -> ExitStatus {
        // SAFETY: plain syscall on our own, unreaped child.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGKILL) };
        self.wait_exit(PATIENCE)
    }

    /// Waits for polhost to exit; kills it and panics past `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                // Let the reader thread take the last lines.
                thread::sleep(Duration::from_millis(50));
                return status;
            }
            if Instant::now() >= deadline {
                terminate(&mut self.child, libc::SIGKILL, Duration::from_secs(1));
                panic!(
                    "polhost did not exit within {timeout:?}; it logged:\n{}",
                    self.output()
                );
            }
            thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Polhost {
    fn drop(&mut self) {
        terminate(&mut self.child, libc::SIGKILL, Duration::from_secs(1));
    }
}

impl Polhost {
    /// The process id of this `polhost`.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}
