//! The real OPA (`opa run --server`, installed by `tests/harness/install.sh`
//! with `go install`) on 127.0.0.1, configured to take its bundles from a
//! bundle service (polhost's local API, `polhost serve DIR`, ...).
//!
//! ```ignore
//! let opa = Opa::start(&OpaConfig::new(&polhost_url).bundle("authz", "bundles/authz").yaml());
//! let took = opa.wait_for_revision("authz", "v1", PATIENCE);
//! assert_eq!(opa.data("authz/allow"), serde_json::json!(false));
//! opa.bundle_status("authz");  // OPA's `result.bundles.authz`
//! opa.peak_rss_kib();          // VmHWM
//! ```
//!
//! The binary: `$POLHOST_OPA`, else `~/.cache/polhost/opa-v1.22.3/opa`
//! (`ensure_opa` in install.sh), else `opa` on `PATH`. OPA runs with its
//! temp dir as working directory (its `.opa` persistence directory lands
//! there), `--skip-version-check` (no call to GitHub) and
//! `--log-level debug`, its output in `opa.log`; a test that panics while
//! an [`Opa`] is alive gets the tail of that log on stderr.
//!
//! Also here: a minimal HTTP/1.1 client over `TcpStream` ([`http_get`]),
//! as the other harness modules talk to their servers, and `/proc` readers
//! ([`peak_rss_kib`], [`rss_kib`], [`cpu_ticks`]) for any pid.

use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use super::{free_port, spawn_tied, terminate};

/// The version `tests/harness/install.sh` installs.
pub const OPA_VERSION: &str = "v1.22.3";
/// OPA starts in well under a second; a loaded 2-core machine may take
/// several.
const START_TIMEOUT: Duration = Duration::from_secs(30);
const STOP_GRACE: Duration = Duration::from_secs(5);
const PORT_ATTEMPTS: usize = 5;
/// How often the `wait_*` helpers ask OPA (each `/v1/status` answer is
/// ~60 KB: OPA includes its Go runtime metrics).
const POLL_EVERY: Duration = Duration::from_millis(25);
/// Lines of OPA's log printed when a test fails, each cut to this length.
const LOG_TAIL_LINES: usize = 200;
const LOG_LINE_MAX: usize = 2000;

/// The OPA binary: `$POLHOST_OPA`, else the cache path install.sh fills,
/// else `opa` on `PATH`; panics saying how to install it.
pub fn opa_bin() -> PathBuf {
    if let Some(path) = std::env::var_os("POLHOST_OPA") {
        let path = PathBuf::from(path);
        assert!(
            path.is_file(),
            "POLHOST_OPA={} is not a file",
            path.display()
        );
        return path;
    }
    if let Some(home) = std::env::var_os("HOME") {
        let cached = PathBuf::from(home)
            .join(".cache/polhost")
            .join(format!("opa-{OPA_VERSION}"))
            .join("opa");
        if cached.is_file() {
            return cached;
        }
    }
    if let Some(paths) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&paths) {
            let cand = dir.join("opa");
            if cand.is_file() {
                return cand;
            }
        }
    }
    panic!(
        "OPA is not installed (no ~/.cache/polhost/opa-{OPA_VERSION}/opa, no POLHOST_OPA, no opa on PATH): run tests/harness/install.sh"
    );
}

/// An OPA configuration taking bundles from one service, built for the
/// common case; [`Opa::start`] takes any YAML for the others.
#[derive(Clone, Debug)]
pub struct OpaConfig {
    /// The bundle service's URL (`http://127.0.0.1:PORT`).
    pub service_url: String,
    /// `credentials.bearer.token` of the service.
    pub token: Option<String>,
    /// (bundle name, resource).
    pub bundles: Vec<(String, String)>,
    pub min_delay_seconds: u64,
    pub max_delay_seconds: u64,
    /// `polling.long_polling_timeout_seconds`; None: plain polling.
    pub long_polling_timeout_seconds: Option<u64>,
    /// YAML lines added under every bundle (indented four spaces, e.g.
    /// `    signing: {keyid: k1}\n`).
    pub bundle_extra: String,
    /// Top-level YAML added at the end (e.g. `keys:`).
    pub extra: String,
}

impl OpaConfig {
    /// Service `polhost` at `service_url`, no bundle yet, polling every
    /// 60-120 s with long polling held up to 30 s.
    pub fn new(service_url: &str) -> OpaConfig {
        OpaConfig {
            service_url: service_url.to_string(),
            token: None,
            bundles: Vec::new(),
            min_delay_seconds: 60,
            max_delay_seconds: 120,
            long_polling_timeout_seconds: Some(30),
            bundle_extra: String::new(),
            extra: String::new(),
        }
    }

    pub fn bundle(mut self, name: &str, resource: &str) -> OpaConfig {
        self.bundles.push((name.to_string(), resource.to_string()));
        self
    }

    pub fn token(mut self, token: &str) -> OpaConfig {
        self.token = Some(token.to_string());
        self
    }

    pub fn polling(mut self, min_s: u64, max_s: u64, long_polling_s: Option<u64>) -> OpaConfig {
        self.min_delay_seconds = min_s;
        self.max_delay_seconds = max_s;
        self.long_polling_timeout_seconds = long_polling_s;
        self
    }

    /// The YAML. `status: {prometheus: true}` switches OPA's status plugin
    /// on without a push target, so `/v1/status` answers and `/metrics`
    /// carries the bundle metrics.
    pub fn yaml(&self) -> String {
        let mut y = format!(
            "services:\n  polhost:\n    url: {}\n",
            json(&self.service_url)
        );
        if let Some(token) = &self.token {
            y.push_str(&format!(
                "    credentials:\n      bearer:\n        token: {}\n",
                json(token)
            ));
        }
        y.push_str("bundles:\n");
        for (name, resource) in &self.bundles {
            y.push_str(&format!(
                "  {}:\n    service: polhost\n    resource: {}\n    polling:\n      min_delay_seconds: {}\n      max_delay_seconds: {}\n",
                json(name),
                json(resource),
                self.min_delay_seconds,
                self.max_delay_seconds
            ));
            if let Some(lp) = self.long_polling_timeout_seconds {
                y.push_str(&format!("      long_polling_timeout_seconds: {lp}\n"));
            }
            y.push_str(&self.bundle_extra);
        }
        y.push_str("status:\n  prometheus: true\n");
        y.push_str(&self.extra);
        y
    }
}

/// A YAML scalar as a JSON string (YAML is a superset).
fn json(s: &str) -> String {
    serde_json::Value::String(s.to_string()).to_string()
}

/// A running `opa run --server`; killed on drop.
pub struct Opa {
    child: Option<Child>,
    port: u16,
    log: PathBuf,
    dir: tempfile::TempDir,
}

impl Opa {
    /// Writes `config_yaml` and starts OPA on a free port; returns once
    /// `/health` answers 200. Panics with OPA's log if it does not start
    /// within 30 s.
    pub fn start(config_yaml: &str) -> Opa {
        Opa::start_with_args(config_yaml, &[])
    }

    /// [`Opa::start`] with more arguments for `opa run`.
    pub fn start_with_args(config_yaml: &str, extra: &[&str]) -> Opa {
        let dir = tempfile::Builder::new()
            .prefix("polhost-opa-")
            .tempdir()
            .expect("create OPA temp dir");
        let config = dir.path().join("config.yaml");
        fs::write(&config, config_yaml).expect("write OPA config");
        let log = dir.path().join("opa.log");
        let bin = opa_bin();
        let mut last = String::new();
        for _ in 0..PORT_ATTEMPTS {
            let port = free_port();
            let out = File::create(&log).expect("create opa.log");
            let mut cmd = Command::new(&bin);
            cmd.arg("run")
                .arg("--server")
                .arg("--addr")
                .arg(format!("127.0.0.1:{port}"))
                .arg("--config-file")
                .arg(&config)
                .arg("--log-level")
                .arg("debug")
                .arg("--skip-version-check")
                .args(extra)
                .current_dir(dir.path())
                .stdin(Stdio::null())
                .stdout(Stdio::from(out.try_clone().expect("dup opa.log")))
                .stderr(Stdio::from(out));
            let mut child =
                spawn_tied(cmd).unwrap_or_else(|e| panic!("spawn {}: {e}", bin.display()));
            let deadline = Instant::now() + START_TIMEOUT;
            loop {
                if let Ok(Some(status)) = child.try_wait() {
                    last = format!(
                        "opa exited with {status}\n{}",
                        fs::read_to_string(&log).unwrap_or_default()
                    );
                    break;
                }
                if let Ok(r) = http_get(port, "/health", &[], Duration::from_secs(2))
                    && r.status == 200
                {
                    return Opa {
                        child: Some(child),
                        port,
                        log,
                        dir,
                    };
                }
                if Instant::now() >= deadline {
                    terminate(&mut child, libc::SIGKILL, STOP_GRACE);
                    panic!(
                        "OPA not healthy on 127.0.0.1:{port} after {START_TIMEOUT:?}:\n{}",
                        log_tail(&log)
                    );
                }
                thread::sleep(Duration::from_millis(20));
            }
            if !last.contains("address already in use") {
                panic!("OPA did not start:\n{last}");
            }
        }
        panic!("OPA did not start: address in use {PORT_ATTEMPTS} times:\n{last}");
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// OPA's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("OPA is stopped").id()
    }

    /// OPA's temp dir (config, log, `.opa`).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Everything OPA logged so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `GET path` (with its query) on OPA; panics if OPA does not answer.
    pub fn get(&self, path: &str) -> Response {
        http_get(self.port, path, &[], Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("GET {path} on OPA: {e}\n{}", log_tail(&self.log)))
    }

    /// `GET /v1/status`: the whole document (`{"result": {...}}`).
    pub fn status(&self) -> serde_json::Value {
        let r = self.get("/v1/status");
        assert_eq!(r.status, 200, "OPA /v1/status: {}", r.text());
        r.json()
    }

    /// `result.bundles.<name>` of OPA's status; `Null` while OPA has none.
    pub fn bundle_status(&self, name: &str) -> serde_json::Value {
        self.status()["result"]["bundles"][name].clone()
    }

    /// Waits until OPA's status shows `revision` active for bundle `name`;
    /// returns how long that took from the call. Panics with OPA's last
    /// status and its log past `timeout`.
    pub fn wait_for_revision(&self, name: &str, revision: &str, timeout: Duration) -> Duration {
        let start = Instant::now();
        self.wait_for_bundle_status(name, timeout, &format!("revision {revision}"), |s| {
            s["active_revision"] == revision
        });
        start.elapsed()
    }

    /// Waits until `done` holds for `result.bundles.<name>` (`Null` while
    /// absent); returns that status. Panics past `timeout`.
    pub fn wait_for_bundle_status(
        &self,
        name: &str,
        timeout: Duration,
        what: &str,
        done: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + timeout;
        loop {
            let status = self.bundle_status(name);
            if done(&status) {
                return status;
            }
            if Instant::now() >= deadline {
                panic!(
                    "waited {timeout:?} for OPA's bundle {name:?}: {what}; its status: {status:#}\nOPA's log (tail):\n{}",
                    log_tail(&self.log)
                );
            }
            thread::sleep(POLL_EVERY);
        }
    }

    /// `GET /v1/data/<path>`'s `result`; `Null` when undefined.
    pub fn data(&self, path: &str) -> serde_json::Value {
        let r = self.get(&format!("/v1/data/{}", path.trim_start_matches('/')));
        assert_eq!(r.status, 200, "OPA /v1/data/{path}: {}", r.text());
        r.json()["result"].clone()
    }

    /// `POST /v1/data/<path>` with `{"input": input}`: the `result`.
    pub fn query(&self, path: &str, input: &serde_json::Value) -> serde_json::Value {
        let body = serde_json::json!({ "input": input }).to_string();
        let r = http_request(
            self.port,
            "POST",
            &format!("/v1/data/{}", path.trim_start_matches('/')),
            &[("Content-Type", "application/json")],
            body.as_bytes(),
            Duration::from_secs(10),
        )
        .unwrap_or_else(|e| panic!("POST /v1/data/{path} on OPA: {e}"));
        assert_eq!(r.status, 200, "OPA /v1/data/{path}: {}", r.text());
        r.json()["result"].clone()
    }

    /// OPA's peak resident set (VmHWM), KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        peak_rss_kib(self.pid()).expect("OPA's /proc status")
    }

    /// SIGTERM, then SIGKILL after 5 s. Idempotent.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            terminate(&mut child, libc::SIGTERM, STOP_GRACE);
        }
    }
}

impl Drop for Opa {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            terminate(&mut child, libc::SIGKILL, Duration::from_secs(1));
        }
        if thread::panicking() {
            eprintln!(
                "--- OPA on port {} logged (tail) ---\n{}",
                self.port,
                log_tail(&self.log)
            );
        }
    }
}

/// The last lines of a log, long lines cut.
fn log_tail(path: &Path) -> String {
    let Ok(file) = File::open(path) else {
        return String::new();
    };
    let lines: Vec<String> = BufReader::new(file).lines().map_while(Result::ok).collect();
    let from = lines.len().saturating_sub(LOG_TAIL_LINES);
    lines[from..]
        .iter()
        .map(|l| {
            if l.len() > LOG_LINE_MAX {
                let mut end = LOG_LINE_MAX;
                while !l.is_char_boundary(end) {
                    end -= 1;
                }
                format!("{}... ({} bytes)", &l[..end], l.len())
            } else {
                l.clone()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

// A minimal HTTP/1.1 client (one request per connection), enough for the
// servers on 127.0.0.1 the tests talk to.

/// An HTTP response, the body de-chunked.
#[derive(Clone, Debug)]
pub struct Response {
    pub status: u16,
    /// Names lower-cased, in order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// The first header `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON; panics with it if it is not.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }
}

/// `GET path` on 127.0.0.1:`port` with extra `headers`; the whole exchange
/// must end within `timeout` (set it past a long poll's wait).
pub fn http_get(
    port: u16,
    path: &str,
    headers: &[(&str, &str)],
    timeout: Duration,
) -> io::Result<Response> {
    http_request(port, "GET", path, headers, b"", timeout)
}

/// One request on a fresh connection (`Connection: close`).
pub fn http_request(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    timeout: Duration,
) -> io::Result<Response> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let mut req =
        format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n");
    for (name, value) in headers {
        req.push_str(&format!("{name}: {value}\r\n"));
    }
    if !body.is_empty() || method == "POST" || method == "PUT" {
        req.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    req.push_str("\r\n");
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(body);
    stream.write_all(&bytes)?;
    let deadline = Instant::now() + timeout;
    let mut raw = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
        if Instant::now() > deadline {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "response too slow"));
        }
    }
    parse_response(&raw, method == "HEAD")
}

/// Parses a whole HTTP/1.x response (the connection was closed after it).
pub fn parse_response(raw: &[u8], head_only: bool) -> io::Result<Response> {
    let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_string());
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| bad("no end of headers"))?;
    let head = String::from_utf8_lossy(&raw[..end]);
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("no status line"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let rest = &raw[end + 4..];
    let chunked = headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.to_ascii_lowercase().contains("chunked"));
    let body = if head_only || status == 304 || status == 204 {
        Vec::new()
    } else if chunked {
        dechunk(rest).ok_or_else(|| bad("bad chunked body"))?
    } else if let Some(len) = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .and_then(|(_, v)| v.parse::<usize>().ok())
    {
        if rest.len() < len {
            return Err(bad("body shorter than Content-Length"));
        }
        rest[..len].to_vec()
    } else {
        rest.to_vec()
    };
    Ok(Response {
        status,
        headers,
        body,
    })
}

fn dechunk(mut rest: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = rest.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&rest[..line_end]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        rest = &rest[line_end + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(rest.get(..size)?);
        rest = rest.get(size + 2..)?;
    }
}

// /proc readers, for OPA and any other child.

/// A `kB` field of /proc/<pid>/status.
fn proc_status_kib(pid: u32, field: &str) -> Option<u64> {
    let text = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim_start_matches(':').split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// Peak resident set (VmHWM) of `pid`, KiB.
pub fn peak_rss_kib(pid: u32) -> Option<u64> {
    proc_status_kib(pid, "VmHWM")
}

/// Current resident set (VmRSS) of `pid`, KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    proc_status_kib(pid, "VmRSS")
}

/// utime + stime of `pid` from /proc/<pid>/stat, in clock ticks (see
/// [`ticks_per_second`]).
pub fn cpu_ticks(pid: u32) -> Option<u64> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces: count from its ')'.
    let after = &text[text.rfind(')')? + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // after ')' the fields start at 3 (state); utime is 14, stime 15.
    let utime: u64 = fields.get(14 - 3)?.parse().ok()?;
    let stime: u64 = fields.get(15 - 3)?.parse().ok()?;
    Some(utime + stime)
}

/// Clock ticks per second (`sysconf(_SC_CLK_TCK)`).
pub fn ticks_per_second() -> u64 {
    // SAFETY: plain libc call without pointers.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as u64 } else { 100 }
}

/// An RFC 3339 UTC timestamp as OPA writes them
/// (`2026-12-01T23:07:29.285140776Z`) as UNIX nanoseconds; `None` for
/// anything else.
pub fn rfc3339_unix_nanos(s: &str) -> Option<i128> {
    let (date, time) = s.strip_suffix('Z')?.split_once('T')?;
    let d: Vec<i64> = date
        .split('-')
        .map(|p| p.parse().ok())
        .collect::<Option<_>>()?;
    let (hms, frac) = time.split_once('.').unwrap_or((time, ""));
    let t: Vec<i64> = hms
        .split(':')
        .map(|p| p.parse().ok())
        .collect::<Option<_>>()?;
    if d.len() != 3 || t.len() != 3 || frac.len() > 9 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let nanos: i128 = if frac.is_empty() {
        0
    } else {
        format!("{frac:0<9}").parse().ok()?
    };
    // Days from civil (Howard Hinnant's algorithm).
    let (y, m, day) = (d[0] - i64::from(d[1] <= 2), d[1], d[2]);
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + t[0] * 3600 + t[1] * 60 + t[2];
    Some(i128::from(secs) * 1_000_000_000 + nanos)
}
