//! nginx (Debian package `nginx`) serving a directory on 127.0.0.1 with
//! ETags, optional bearer-token checks and redirects.
//!
//! ```ignore
//! let mut srv = Nginx::start(NginxOptions {
//!     root: dir.path().into(),
//!     bearer: vec![("/private/".into(), "s3cret".into())],
//!     redirects: vec![("/old.tar.gz".into(), "http://127.0.0.1:1234/new.tar.gz".into())],
//!     port: None,
//!     proxy_to: None,
//! });
//! let url = format!("{}/bundle.tar.gz", srv.url());
//! ```
//!
//! Notes for test writers:
//! * nginx's ETag is `"<mtime hex>-<size hex>"` with one-second mtime
//!   resolution: rewriting a file with the same size within the same second
//!   keeps the ETag. Change the size or set the mtime explicitly.
//! * [`AccessEntry::path`] is nginx's `$uri`: percent-decoded, without the
//!   query string, after internal redirects (e.g. `/` -> `/index.html`).
//! * The access log lives as long as the [`Nginx`]; it keeps growing across
//!   [`Nginx::restart`].

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use super::{free_port, port_open, spawn_tied, terminate};

const START_TIMEOUT: Duration = Duration::from_secs(10);
const STOP_GRACE: Duration = Duration::from_secs(5);
const PORT_ATTEMPTS: usize = 5;
/// Internal location answering nginx's stub_status (not logged); used to
/// wait until every finished request has been written to the access log.
const STATUS_PATH: &str = "/.polhost-harness/nginx-status";

#[derive(Clone, Debug, Default)]
pub struct NginxOptions {
    /// Document root served as static files (etag on).
    pub root: PathBuf,
    /// (location prefix, token): requests under the prefix without
    /// `Authorization: Bearer <token>` get 401. A missing leading `/` is added.
    pub bearer: Vec<(String, String)>,
    /// (exact path, absolute target URL): answer 302 `Location: target`.
    pub redirects: Vec<(String, String)>,
    /// Fixed port (to restart on the same port); None = pick a free one.
    pub port: Option<u16>,
    /// Origin (`http://127.0.0.1:PORT`) to pass requests to instead of
    /// serving `root`: nginx then stands in front of another server, and its
    /// access log counts the bytes that server sent. `bearer` and
    /// `redirects` locations still answer first.
    pub proxy_to: Option<String>,
    /// Raw directives added to the server block, before the other
    /// locations: bytes, since a header value a test sends (an `ETag` with
    /// obs-text) need not be UTF-8.
    pub server_directives: Vec<u8>,
    /// Serve HTTPS instead of HTTP (see [`NginxTls`]).
    pub tls: Option<NginxTls>,
}

/// nginx's TLS: its certificate and key, and, for mutual TLS, the CA
/// client certificates must chain to (`ssl_verify_client on`).
#[derive(Clone, Debug)]
pub struct NginxTls {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: Option<PathBuf>,
}

/// One request from the access log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccessEntry {
    pub method: String,
    /// `$uri`: decoded path without the query string.
    pub path: String,
    pub status: u16,
    pub body_bytes: u64,
    /// The request's `If-None-Match` header, "" when absent.
    pub if_none_match: String,
    pub authorization_present: bool,
    /// nginx's `$connection`: requests with the same number came over one
    /// connection.
    pub connection: u64,
}

/// A running nginx; stopped on drop. Owns a temp dir with conf, logs, pid.
pub struct Nginx {
    opts: NginxOptions,
    bin: PathBuf,
    dir: tempfile::TempDir,
    port: u16,
    child: Option<Child>,
}

enum LaunchError {
    AddrInUse(String),
    Failed(String),
}

impl Nginx {
    /// Starts nginx; panics with nginx's error log if it does not come up
    /// within 10 s, or if nginx is not installed.
    pub fn start(opts: NginxOptions) -> Nginx {
        let bin = find_nginx();
        let dir = tempfile::Builder::new()
            .prefix("polhost-nginx-")
            .tempdir()
            .expect("create nginx temp dir");
        for sub in [
            "tmp/client_body",
            "tmp/proxy",
            "tmp/fastcgi",
            "tmp/uwsgi",
            "tmp/scgi",
        ] {
            fs::create_dir_all(dir.path().join(sub)).expect("create nginx temp subdir");
        }
        let mut opts = opts;
        opts.root = absolute(&opts.root);
        let mut nginx = Nginx {
            opts,
            bin,
            dir,
            port: 0,
            child: None,
        };
        nginx.launch_any_port();
        nginx
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// "http://127.0.0.1:PORT"
    pub fn url(&self) -> String {
        if self.opts.tls.is_some() {
            return format!("https://127.0.0.1:{}", self.port);
        }
        format!("http://127.0.0.1:{}", self.port)
    }

    /// All requests logged so far, oldest first. While nginx runs, first
    /// waits (up to 2 s) until no request is in flight, so a request whose
    /// response the test already has is in the log.
    pub fn access_log(&self) -> Vec<AccessEntry> {
        if self.child.is_some() {
            self.wait_idle(Duration::from_secs(2));
        }
        let text = match fs::read(self.access_log_path()) {
            Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => panic!("read nginx access log: {e}"),
        };
        text.lines()
            .filter(|l| !l.is_empty())
            .map(|l| {
                parse_line(l).unwrap_or_else(|| panic!("unparsable nginx access log line: {l}"))
            })
            .collect()
    }

    /// Fast shutdown (SIGTERM), wait; SIGKILL after 5 s. Idempotent.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            terminate(&mut child, libc::SIGTERM, STOP_GRACE);
        }
    }

    /// Stops, then starts again with the same options and port.
    pub fn restart(&mut self) {
        self.stop();
        let port = self.port;
        if let Err(e) = self.launch(port, false) {
            panic!("nginx restart on port {port} failed:\n{}", e.message());
        }
    }

    fn launch_any_port(&mut self) {
        if let Some(port) = self.opts.port {
            if let Err(e) = self.launch(port, false) {
                panic!("nginx did not start on port {port}:\n{}", e.message());
            }
            return;
        }
        let mut last = String::new();
        for _ in 0..PORT_ATTEMPTS {
            match self.launch(free_port(), true) {
                Ok(()) => return,
                Err(LaunchError::AddrInUse(log)) => last = log,
                Err(LaunchError::Failed(log)) => panic!("nginx did not start:\n{log}"),
            }
        }
        panic!("nginx did not start: address in use {PORT_ATTEMPTS} times:\n{last}");
    }

    /// `other_port_ok`: give up early on "address in use" (the caller will
    /// try another port) instead of letting nginx retry bind() for 2.5 s.
    fn launch(&mut self, port: u16, other_port_ok: bool) -> Result<(), LaunchError> {
        assert!(self.child.is_none(), "nginx already running");
        let d = self.dir.path();
        let conf = d.join("nginx.conf");
        let errlog = d.join("error.log");
        let pidfile = d.join("nginx.pid");
        let stderr_path = d.join("stderr.log");
        fs::write(&conf, self.config(port)).expect("write nginx.conf");
        let _ = fs::remove_file(&pidfile);
        let err_offset = fs::metadata(&errlog).map(|m| m.len()).unwrap_or(0);
        let stderr_offset = fs::metadata(&stderr_path).map(|m| m.len()).unwrap_or(0);
        let stderr = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&stderr_path)
            .expect("open nginx stderr.log");

        let mut cmd = Command::new(&self.bin);
        cmd.arg("-p")
            .arg(d)
            .arg("-c")
            .arg(&conf)
            .arg("-e")
            .arg(&errlog)
            // nginx takes listening sockets to inherit from $NGINX.
            .env_remove("NGINX")
            .stdin(Stdio::null())
            .stdout(Stdio::from(stderr.try_clone().expect("dup stderr.log")))
            .stderr(Stdio::from(stderr));
        let mut child = match spawn_tied(cmd) {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!("{}", missing_msg()),
            Err(e) => panic!("spawn {}: {e}", self.bin.display()),
        };
        let logs = || {
            let mut s = read_from(&errlog, err_offset);
            let out = read_from(&stderr_path, stderr_offset);
            // nginx copies emerg messages to stderr; show it only if the
            // error log has nothing.
            if s.trim().is_empty() && !out.trim().is_empty() {
                s.push_str("\n--- stderr ---\n");
                s.push_str(&out);
            }
            s
        };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                let log = format!("nginx exited with {status}\n{}", logs());
                return Err(classify(log));
            }
            let log = logs();
            // nginx retries bind() for ~2.5 s; no point waiting for that.
            if other_port_ok && log.contains("Address already in use") {
                terminate(&mut child, libc::SIGKILL, STOP_GRACE);
                return Err(LaunchError::AddrInUse(log));
            }
            // The pid file is written only after the sockets are bound, so
            // the connection below reaches this nginx, not a port squatter.
            let pid_ok = fs::read_to_string(&pidfile)
                .map(|s| s.trim() == child.id().to_string())
                .unwrap_or(false);
            if pid_ok && port_open(port) {
                self.port = port;
                self.child = Some(child);
                return Ok(());
            }
            if Instant::now() >= deadline {
                terminate(&mut child, libc::SIGTERM, STOP_GRACE);
                return Err(LaunchError::Failed(format!(
                    "nginx not reachable on 127.0.0.1:{port} after {START_TIMEOUT:?}\n{}",
                    logs()
                )));
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    fn access_log_path(&self) -> PathBuf {
        self.dir.path().join("access.log")
    }

    fn config(&self, port: u16) -> String {
        let d = self.dir.path();
        let p = |rel: &str| quote(&d.join(rel).to_string_lossy());
        let root = quote(&self.opts.root.to_string_lossy());
        // SAFETY: plain syscall without arguments.
        let user = if unsafe { libc::geteuid() } == 0 {
            // Workers must read 0700 temp dirs owned by root.
            "user root;\n"
        } else {
            ""
        };
        let mut locations = String::new();
        for (prefix, token) in &self.opts.bearer {
            locations.push_str(&format!(
                "        location ^~ {} {{\n            if ($http_authorization != {}) {{ return 401; }}\n        }}\n",
                quote(&slash(prefix)),
                quote(&format!("Bearer {token}")),
            ));
        }
        for (path, target) in &self.opts.redirects {
            locations.push_str(&format!(
                "        location = {} {{ return 302 {}; }}\n",
                quote(&slash(path)),
                quote(target),
            ));
        }
        if !self.opts.server_directives.is_empty() {
            let extra = d.join("server.conf");
            fs::write(&extra, &self.opts.server_directives).expect("write server.conf");
            locations.insert_str(
                0,
                &format!("        include {};\n", quote(&extra.to_string_lossy())),
            );
        }
        if let Some(origin) = &self.opts.proxy_to {
            locations.push_str(&format!(
                "        location / {{ proxy_pass {}; }}\n",
                quote(origin),
            ));
        }
        format!(
            r#"# generated by tests/all/harness/nginx.rs
{user}daemon off;
master_process on;
worker_processes 1;
pid {pid};
lock_file {lock};
error_log {errlog} warn;

events {{
    worker_connections 256;
}}

http {{
    types {{
        text/plain txt;
        text/html html;
        application/json json;
        application/gzip gz tgz;
        application/wasm wasm;
    }}
    default_type application/octet-stream;
    sendfile on;
    etag on;
    server_tokens off;

    client_body_temp_path {body};
    proxy_temp_path {proxy};
    fastcgi_temp_path {fastcgi};
    uwsgi_temp_path {uwsgi};
    scgi_temp_path {scgi};

    log_format harness '$request_method "$uri" $status $body_bytes_sent "$http_if_none_match" "$http_authorization" $connection';
    access_log {access} harness;

    server {{
        listen 127.0.0.1:{port}{ssl};
        server_name _;
        root {root};
{tls}
        location = {status_path} {{
            stub_status;
            access_log off;
        }}
{locations}    }}
}}
"#,
            pid = p("nginx.pid"),
            lock = p("nginx.lock"),
            errlog = p("error.log"),
            body = p("tmp/client_body"),
            proxy = p("tmp/proxy"),
            fastcgi = p("tmp/fastcgi"),
            uwsgi = p("tmp/uwsgi"),
            scgi = p("tmp/scgi"),
            access = p("access.log"),
            status_path = quote(STATUS_PATH),
            ssl = if self.opts.tls.is_some() { " ssl" } else { "" },
            tls = self.tls_directives(),
        )
    }

    fn tls_directives(&self) -> String {
        let Some(tls) = &self.opts.tls else {
            return String::new();
        };
        let path = |p: &Path| quote(&absolute(p).to_string_lossy());
        let mut d = format!(
            "        ssl_certificate {};\n        ssl_certificate_key {};\n",
            path(&tls.cert),
            path(&tls.key)
        );
        if let Some(ca) = &tls.client_ca {
            d.push_str(&format!(
                "        ssl_client_certificate {};\n        ssl_verify_client on;\n",
                path(ca)
            ));
        }
        d
    }

    /// Polls stub_status until the only request in flight is the status
    /// request itself (nginx logs a request before it stops counting it).
    fn wait_idle(&self, max: Duration) {
        let deadline = Instant::now() + max;
        while Instant::now() < deadline {
            match self.status() {
                Some((0, 1)) | None => return,
                Some(_) => thread::sleep(Duration::from_millis(5)),
            }
        }
    }

    /// (Reading, Writing) from stub_status; None if it cannot be asked.
    fn status(&self) -> Option<(u64, u64)> {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        write!(
            s,
            "GET {STATUS_PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
        )
        .ok()?;
        let mut resp = String::new();
        s.read_to_string(&mut resp).ok()?;
        let num = |key: &str| -> Option<u64> {
            let rest = &resp[resp.find(key)? + key.len()..];
            rest.split_whitespace().next()?.parse().ok()
        };
        Some((num("Reading:")?, num("Writing:")?))
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        self.stop();
    }
}

fn find_nginx() -> PathBuf {
    let system = Path::new("/usr/sbin/nginx");
    if system.is_file() {
        return system.to_path_buf();
    }
    if let Some(paths) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&paths) {
            let cand = dir.join("nginx");
            if cand.is_file() {
                return cand;
            }
        }
    }
    panic!("{}", missing_msg());
}

fn missing_msg() -> String {
    "nginx is not installed (no /usr/sbin/nginx): run tests/harness/install.sh as root".to_string()
}

fn classify(log: String) -> LaunchError {
    if log.contains("Address already in use") {
        LaunchError::AddrInUse(log)
    } else {
        LaunchError::Failed(log)
    }
}

impl LaunchError {
    fn message(&self) -> &str {
        match self {
            LaunchError::AddrInUse(s) | LaunchError::Failed(s) => s,
        }
    }
}

fn read_from(path: &Path, offset: u64) -> String {
    let mut buf = Vec::new();
    if let Ok(mut f) = File::open(path) {
        let _ = f.read_to_end(&mut buf);
    }
    let start = (offset as usize).min(buf.len());
    String::from_utf8_lossy(&buf[start..]).into_owned()
}

fn absolute(p: &Path) -> PathBuf {
    if p.as_os_str().is_empty() {
        panic!("NginxOptions::root is empty");
    }
    std::path::absolute(p).unwrap_or_else(|e| panic!("absolute path of {}: {e}", p.display()))
}

fn slash(p: &str) -> String {
    if p.starts_with('/') {
        p.to_string()
    } else {
        format!("/{p}")
    }
}

/// Double-quoted nginx config string. Values with characters nginx would
/// interpret (`$` variables, quotes, backslashes, control chars) are refused.
fn quote(s: &str) -> String {
    if let Some(c) = s
        .chars()
        .find(|&c| c == '"' || c == '\\' || c == '$' || c.is_control())
    {
        panic!("nginx harness: unsupported character {c:?} in config value {s:?}");
    }
    format!("\"{s}\"")
}

/// Parses `METHOD "URI" STATUS BYTES "IF_NONE_MATCH" "AUTHORIZATION"`.
/// nginx writes `"`, `\` and non-printable bytes as `\xHH` and empty values
/// as `-`.
fn parse_line(line: &str) -> Option<AccessEntry> {
    let mut fields = Vec::new();
    let mut rest = line;
    while !rest.is_empty() {
        rest = rest.trim_start_matches(' ');
        if let Some(q) = rest.strip_prefix('"') {
            let end = q.find('"')?;
            fields.push(&q[..end]);
            rest = &q[end + 1..];
        } else if !rest.is_empty() {
            let end = rest.find(' ').unwrap_or(rest.len());
            fields.push(&rest[..end]);
            rest = &rest[end..];
        }
    }
    let [method, uri, status, bytes, inm, auth, connection] = fields.try_into().ok()?;
    let value = |v: &str| if v == "-" { String::new() } else { unescape(v) };
    Some(AccessEntry {
        method: method.to_string(),
        path: value(uri),
        status: status.parse().ok()?,
        body_bytes: bytes.parse().ok()?,
        if_none_match: value(inm),
        authorization_present: auth != "-" && !auth.is_empty(),
        connection: connection.parse().ok()?,
    })
}

fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && b.get(i + 1) == Some(&b'x')
            && let Some(v) = s
                .get(i + 2..i + 4)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(v);
            i += 4;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
