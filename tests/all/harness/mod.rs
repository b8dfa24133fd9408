//! Test harness: real third-party servers started on 127.0.0.1 for the
//! integration tests. Install them with `tests/harness/install.sh`.
//!
//! Shared process helpers live here; one submodule per server.
#![allow(dead_code)]

pub mod aws_imds;
pub mod azure_identity;
pub mod azurite;
pub mod data_bundles;
pub mod etcd;
pub mod fake_gcs;
pub mod gcp_identity;
pub mod moto;
pub mod nginx;
pub mod opa;
pub mod proxy;
pub mod registry;
pub mod tls;
pub mod token;

use std::io;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

/// A port that was free on 127.0.0.1 a moment ago (bind to port 0, read it,
/// release it). Another process may take it before the server binds it, so
/// callers retry with a new port when the server reports "address in use".
pub fn free_port() -> u16 {
    let listener =
        TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind 127.0.0.1:0 to find a free port");
    listener.local_addr().expect("local_addr").port()
}

/// True when something accepts TCP connections on 127.0.0.1:`port`.
pub fn port_open(port: u16) -> bool {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
}

/// Waits up to `timeout` for `child` to accept connections on 127.0.0.1:
/// `port`. `false` when it exits first or time runs out; it is then killed,
/// and the caller tries another port or gives up with the server's log.
pub fn wait_until_listening(child: &mut Child, port: u16, timeout: Duration) -> bool {
    wait_until_ready(child, timeout, || port_open(port))
}

/// Waits up to `timeout` for `ready()`; as [`wait_until_listening`], the
/// child is killed when it exits first or time runs out.
pub fn wait_until_ready(child: &mut Child, timeout: Duration, ready: impl Fn() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if ready() {
            return true;
        }
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        thread::sleep(Duration::from_millis(50));
    }
    terminate(child, libc::SIGKILL, Duration::from_secs(1));
    false
}

type SpawnJob = (Command, mpsc::Sender<io::Result<Child>>);

/// Spawns `cmd` so that the child cannot outlive the test process:
///
/// * it gets its own process group (so [`terminate`] can kill it and its
///   workers without touching the test process), and
/// * `PR_SET_PDEATHSIG(SIGTERM)`: if the test process dies (panic=abort,
///   Ctrl-C, SIGKILL from a timeout) the child is sent SIGTERM.
///
/// The death signal fires when the *thread* that forked the child exits, so
/// all children are forked from one helper thread that lives as long as the
/// process (tests may start a server in one thread and use it in another).
pub fn spawn_tied(mut cmd: Command) -> io::Result<Child> {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<SpawnJob>>> = OnceLock::new();
    let parent = std::process::id() as libc::pid_t;
    cmd.process_group(0);
    // SAFETY: only async-signal-safe calls (prctl, getppid, _exit) between
    // fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGTERM as libc::c_ulong,
                0,
                0,
                0,
            ) != 0
            {
                return Err(io::Error::last_os_error());
            }
            // The parent may have died before prctl took effect.
            if libc::getppid() != parent {
                libc::_exit(1);
            }
            Ok(())
        });
    }
    let spawner = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnJob>();
        thread::Builder::new()
            .name("harness-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
            })
            .expect("start harness spawner thread");
        Mutex::new(tx)
    });
    let (reply_tx, reply_rx) = mpsc::channel();
    spawner
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .send((cmd, reply_tx))
        .expect("harness spawner thread is gone");
    reply_rx.recv().expect("harness spawner thread is gone")
}

/// A gzipped tar of `(path, content)` regular files: the bundles the tests
/// and benchmarks publish.
pub fn tar_gz(files: &[(&str, Vec<u8>)]) -> Vec<u8> {
    use std::io::Write;
    let mut builder = tar::Builder::new(Vec::new());
    for (path, content) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(content.len() as u64);
        header.set_mode(0o644);
        builder
            .append_data(&mut header, path, content.as_slice())
            .unwrap();
    }
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&builder.into_inner().unwrap()).unwrap();
    gz.finish().unwrap()
}

/// A benchmark's numeric setting: the environment variable `name` parsed,
/// or `default` when it is unset.
pub fn env_number<T: std::str::FromStr>(name: &str, default: T) -> Result<T, String> {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .map_err(|_| format!("{name}={v:?} is not a number")),
        Err(_) => Ok(default),
    }
}

/// How a child ended and what it used.
pub struct Reaped {
    /// The raw wait status.
    pub status: libc::c_int,
    /// Its rusage from `wait4` (its CPU times are its own). Not its
    /// `ru_maxrss`: Linux carries the high-water mark of the memory a
    /// process had before `exec` over into it, and a child forked (or
    /// vforked) from a test process starts with that process's pages.
    pub usage: libc::rusage,
    /// Its peak resident set (VmHWM of its own address space after exec),
    /// KiB, sampled from /proc every few milliseconds while it ran.
    pub peak_rss_kib: u64,
}

/// How often [`reap`] samples the child's VmHWM.
const RSS_SAMPLE_EVERY: Duration = Duration::from_millis(5);

/// Waits for `child` with `wait4`, sampling its peak RSS until it exits.
/// Past `timeout`, SIGKILLs its process group (see [`spawn_tied`]), reaps
/// it and fails with `TimedOut`.
pub fn reap(child: Child, timeout: Duration) -> io::Result<Reaped> {
    let deadline = Instant::now() + timeout;
    let pid = child.id() as libc::pid_t;
    let mut status: libc::c_int = 0;
    // SAFETY: rusage is plain data; all-zero is a valid value.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let mut peak_rss_kib = 0;
    loop {
        // VmHWM only grows, and goes with the process: read it before the
        // process can exit (between two reads, at most one sample is lost).
        if let Some(kib) = opa::peak_rss_kib(child.id()) {
            peak_rss_kib = peak_rss_kib.max(kib);
        }
        // SAFETY: `pid` is our unreaped child; the pointers are valid.
        let r = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut usage) };
        if r == pid {
            break;
        }
        if r == 0 && Instant::now() >= deadline {
            // SAFETY: plain syscalls; the pid is our unreaped child's.
            unsafe {
                libc::kill(-pid, libc::SIGKILL);
                libc::kill(pid, libc::SIGKILL);
                libc::wait4(pid, &mut status, 0, &mut usage);
            }
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("pid {pid} still ran after {timeout:?}: killed"),
            ));
        }
        if r == 0 {
            thread::sleep(RSS_SAMPLE_EVERY);
            continue;
        }
        let e = io::Error::last_os_error();
        if r == -1 && e.kind() == io::ErrorKind::Interrupted {
            continue;
        }
        return Err(io::Error::new(e.kind(), format!("wait4({pid}): {e}")));
    }
    // The child is reaped; dropping the handle neither waits nor kills.
    drop(child);
    Ok(Reaped {
        status,
        usage,
        peak_rss_kib,
    })
}

/// Sends `signal` to a child started by [`spawn_tied`], waits up to `grace`
/// for it to exit, then SIGKILLs its whole process group and reaps it.
/// Does nothing (but reap) if the child already exited.
pub fn terminate(child: &mut Child, signal: libc::c_int, grace: Duration) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    let pid = child.id() as libc::pid_t;
    // SAFETY: plain syscall; the child is not reaped yet, so `pid` is ours.
    unsafe { libc::kill(pid, signal) };
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        thread::sleep(Duration::from_millis(10));
    }
    // SAFETY: the child leads its own process group (spawn_tied), and is
    // not reaped yet, so the group id is still ours.
    unsafe { libc::kill(-pid, libc::SIGKILL) };
    let _ = child.wait();
}

// The Python venv `tests/harness/install.sh` fills, shared by every server
// and client library the tests drive from Python.

/// The venv `tests/harness/install.sh` fills (`POLHOST_VENV` overrides).
pub fn venv_bin(name: &str) -> std::path::PathBuf {
    let venv = std::env::var_os("POLHOST_VENV")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::PathBuf::from(std::env::var_os("HOME").expect("HOME"))
                .join(".cache/polhost/venv")
        });
    venv.join("bin").join(name)
}

/// The repository's root (the tests are `host/polhost-cli`'s).
pub fn repo_root() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A script under `tests/fixtures`.
pub fn fixture(name: &str) -> std::path::PathBuf {
    repo_root().join("tests/fixtures").join(name)
}

/// Runs the venv's python on a fixture script; panics with its output on
/// failure, returns its stdout.
pub fn python(script: &str, args: &[&str]) -> String {
    let out = std::process::Command::new(venv_bin("python"))
        .arg(fixture(script))
        .args(args)
        .output()
        .expect("running the venv's python (run tests/harness/install.sh)");
    assert!(
        out.status.success(),
        "{script} {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
