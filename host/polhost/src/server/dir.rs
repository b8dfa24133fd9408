//! `polhost serve DIR`: serves `DIR/**/*.tar.gz` as OPA bundles, speaking
//! [`super::protocol`] over files.
//!
//! It only ever reads regular `.tar.gz` files that resolve inside DIR; it must
//! not write to DIR, follow a path or symlink out of it, or hold a whole bundle
//! in memory (bodies are streamed from the open file). Digests are cached
//! per file version, so a poll of an unchanged file hashes nothing.

use std::collections::HashMap;
use std::fs::{File, Metadata};
use std::io::{self, ErrorKind, Read, Seek, SeekFrom};
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use super::listen::{self, Handler};
use super::protocol::{self, Body, BundleRequest, ETag, MAX_WAIT, Served, percent_decode};

/// Address `polhost serve` listens on when none is given: loopback only.
pub const DEFAULT_ADDR: &str = "127.0.0.1:8282";

/// Only files whose name ends with this are served.
const BUNDLE_SUFFIX: &str = ".tar.gz";
/// How often a held long poll looks at the file's (len, mtime, inode).
const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// Read buffer used while hashing.
const HASH_BUF: usize = 1024 * 1024;
/// A file that changes under the hasher this many times in a row is an error.
const HASH_ATTEMPTS: usize = 3;
/// Digest cache entries kept before unused ones are evicted.
const CACHE_LIMIT: usize = 4096;

/// Serves bundles from `root` on `listener` until `shutdown` is cancelled.
///
/// `GET`/`HEAD /<path>` answers with `root/<path>` if it is a regular file
/// ending in `.tar.gz` (the suffix may be left out of the request, as in OPA's
/// default resource `bundles/<name>`). Responses carry a strong ETag (the
/// SHA-256 of the content) and honour `If-None-Match` and OPA's
/// `Prefer: modes=snapshot;wait=N` long polling.
///
/// Returns an error only if `root` is not a readable directory. After
/// `shutdown` it stops accepting, ends held long polls with `304`, and returns
/// once open connections finish (they are cut after a short grace period).
pub async fn serve_dir(
    root: PathBuf,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> io::Result<()> {
    let root = tokio::fs::canonicalize(&root)
        .await
        .map_err(|e| io::Error::new(e.kind(), format!("bundle root {}: {e}", root.display())))?;
    if !tokio::fs::metadata(&root).await?.is_dir() {
        return Err(io::Error::new(
            ErrorKind::NotADirectory,
            format!("bundle root {} is not a directory", root.display()),
        ));
    }
    match listener.local_addr() {
        Ok(addr) => info!(root = %root.display(), %addr, "serving bundles"),
        Err(_) => info!(root = %root.display(), "serving bundles"),
    }
    let server = Arc::new(Server {
        root,
        digests: Mutex::default(),
        shutdown: shutdown.clone(),
    });
    listen::serve_connections(listener, server, shutdown).await;
    info!("bundle server stopped");
    Ok(())
}

impl Handler for Server {
    async fn handle(&self, req: Request<Incoming>) -> Response<Body> {
        self.answer(req).await
    }
}

/// Shared state of one running server.
struct Server {
    /// Canonical bundle directory; every served file resolves under it.
    root: PathBuf,
    /// Digest per canonical file path. The async mutex per file makes
    /// concurrent requests for a changed file hash it once, not once each.
    digests: Mutex<HashMap<PathBuf, Arc<tokio::sync::Mutex<Option<Digested>>>>>,
    shutdown: CancellationToken,
}

/// Identity of one version of a file: if none of these change, the content is
/// taken as unchanged and its digest is not recomputed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct FileKey {
    len: u64,
    mtime: Option<SystemTime>,
    dev: u64,
    ino: u64,
}

impl FileKey {
    fn of(meta: &Metadata) -> Self {
        #[cfg(unix)]
        let (dev, ino) = {
            use std::os::unix::fs::MetadataExt;
            (meta.dev(), meta.ino())
        };
        #[cfg(not(unix))]
        let (dev, ino) = (0, 0);
        Self {
            len: meta.len(),
            mtime: meta.modified().ok(),
            dev,
            ino,
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Digested {
    key: FileKey,
    sha256: [u8; 32],
}

/// Why a request path does not yield a bundle.
#[derive(Debug)]
enum Miss {
    /// Missing, refused (outside DIR, not `.tar.gz`, not a regular file) or
    /// gone: all answered with 404 so refusals leak nothing.
    NotFound,
    /// Any other I/O failure: answered with 500 and logged.
    Io(io::Error),
}

impl From<io::Error> for Miss {
    fn from(e: io::Error) -> Self {
        match e.kind() {
            ErrorKind::NotFound | ErrorKind::NotADirectory | ErrorKind::InvalidFilename => {
                Miss::NotFound
            }
            _ => Miss::Io(e),
        }
    }
}

/// A bundle file opened for sending, with the digest of exactly what the
/// handle will read (hashing and sending share one file handle).
struct Bundle {
    path: PathBuf,
    file: File,
    digested: Digested,
}

impl Bundle {
    fn etag(&self) -> ETag {
        ETag(self.digested.sha256)
    }
}

/// What a held long poll ended with.
enum Waited {
    Changed(Bundle),
    Unchanged,
}

impl Bundle {
    fn served(self) -> Served {
        Served {
            etag: ETag(self.digested.sha256),
            len: self.digested.key.len,
            label: self.path.display().to_string(),
            reader: Box::new(self.file),
        }
    }
}

impl Server {
    async fn answer(&self, req: Request<Incoming>) -> Response<Body> {
        let Some(request) = BundleRequest::parse(&req) else {
            return protocol::method_not_allowed();
        };
        let uri_path = req.uri().path();
        let Some(rel) = request_file(uri_path) else {
            debug!(path = uri_path, "refused request path");
            return protocol::not_found();
        };
        let content_type = request.content_type();

        let mut bundle = match self.open(&rel).await {
            Ok(bundle) => bundle,
            Err(miss) => return self.miss_response(&rel, miss, false),
        };
        let etag = bundle.etag();
        if request.has(etag) {
            let Some(wait) = request.hold_for(etag) else {
                return protocol::not_modified(etag, content_type);
            };
            let path = bundle.path.clone();
            let key = bundle.digested.key;
            drop(bundle);
            match self.wait_for_change(&rel, path, key, etag, wait).await {
                Ok(Waited::Changed(changed)) => bundle = changed,
                Ok(Waited::Unchanged) => return protocol::not_modified(etag, content_type),
                Err(miss) => return self.miss_response(&rel, miss, true),
            }
        }
        protocol::ok(bundle.served(), request.head, content_type)
    }

    /// Holds a long poll until the content at `rel` is no longer `held`,
    /// `wait` passes, or the server shuts down.
    async fn wait_for_change(
        &self,
        rel: &Path,
        path: PathBuf,
        key: FileKey,
        held: ETag,
        wait: Duration,
    ) -> Result<Waited, Miss> {
        let deadline = Instant::now() + wait.min(MAX_WAIT);
        let watch = async {
            let mut seen = (path, key);
            loop {
                tokio::time::sleep(POLL_INTERVAL).await;
                // Resolve again each time: a symlink swap (e.g. a Kubernetes
                // ConfigMap update) changes the canonical path, not the file.
                if self.probe(rel).await? == seen {
                    continue;
                }
                let bundle = self.open(rel).await?;
                if bundle.etag() != held {
                    return Ok(Waited::Changed(bundle));
                }
                // Touched or rewritten with the same content: keep waiting.
                seen = (bundle.path, bundle.digested.key);
            }
        };
        tokio::select! {
            waited = watch => waited,
            () = tokio::time::sleep_until(deadline) => Ok(Waited::Unchanged),
            () = self.shutdown.cancelled() => Ok(Waited::Unchanged),
        }
    }

    /// Resolves `rel` and returns its canonical path and current key, without
    /// hashing.
    async fn probe(&self, rel: &Path) -> Result<(PathBuf, FileKey), Miss> {
        let root = self.root.clone();
        let rel = rel.to_owned();
        blocking(move || {
            let (path, meta) = resolve(&root, &rel)?;
            Ok((path, FileKey::of(&meta)))
        })
        .await
    }

    /// Resolves and opens `rel`, hashing it unless the cached digest still
    /// matches its key.
    async fn open(&self, rel: &Path) -> Result<Bundle, Miss> {
        let root = self.root.clone();
        let owned = rel.to_owned();
        let (path, _) = blocking(move || resolve(&root, &owned)).await?;
        let slot = self.digest_slot(&path);
        let mut cached = slot.lock().await;
        let previous = *cached;
        let to_open = path.clone();
        let opened = blocking(move || open_and_digest(&to_open, previous)).await;
        match opened {
            Ok((file, digested)) => {
                if previous.is_none_or(|p| p.key != digested.key) {
                    debug!(
                        path = %path.display(),
                        len = digested.key.len,
                        sha256 = %hex::encode(digested.sha256),
                        "hashed bundle"
                    );
                }
                *cached = Some(digested);
                Ok(Bundle {
                    path,
                    file,
                    digested,
                })
            }
            Err(miss) => {
                *cached = None;
                Err(miss)
            }
        }
    }

    fn digest_slot(&self, path: &Path) -> Arc<tokio::sync::Mutex<Option<Digested>>> {
        let mut digests = self.digests.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(slot) = digests.get(path) {
            return slot.clone();
        }
        if digests.len() >= CACHE_LIMIT {
            // Evict entries no request is using; they are rehashed if asked
            // for again. Bounds the map when bundle names keep changing.
            digests.retain(|_, slot| Arc::strong_count(slot) > 1);
        }
        digests.entry(path.to_owned()).or_default().clone()
    }

    fn miss_response(&self, rel: &Path, miss: Miss, was_there: bool) -> Response<Body> {
        let path = self.root.join(rel);
        match miss {
            Miss::NotFound if was_there => {
                warn!(path = %path.display(), "bundle disappeared during a long poll");
                protocol::not_found()
            }
            Miss::NotFound => {
                debug!(path = %path.display(), "no such bundle");
                protocol::not_found()
            }
            Miss::Io(e) => {
                error!(path = %path.display(), error = %e, "cannot serve bundle");
                protocol::status_only(StatusCode::INTERNAL_SERVER_ERROR, "cannot read bundle\n")
            }
        }
    }
}

async fn blocking<T, F>(f: F) -> Result<T, Miss>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, Miss> + Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Miss::Io(io::Error::other(e)))?
}

/// Canonicalizes `root/rel` and accepts it only if it is a regular file named
/// `*.tar.gz` inside `root` (after following every symlink).
fn resolve(root: &Path, rel: &Path) -> Result<(PathBuf, Metadata), Miss> {
    let path = std::fs::canonicalize(root.join(rel))?;
    if !path.starts_with(root) || !has_bundle_suffix(&path) {
        return Err(Miss::NotFound);
    }
    // Checked before opening: opening a FIFO would block.
    let meta = std::fs::metadata(&path)?;
    if !meta.is_file() {
        return Err(Miss::NotFound);
    }
    Ok((path, meta))
}

fn has_bundle_suffix(path: &Path) -> bool {
    path.file_name()
        .and_then(|name| name.to_str())
        .is_some_and(|name| name.len() > BUNDLE_SUFFIX.len() && name.ends_with(BUNDLE_SUFFIX))
}

/// Opens `path` and returns the handle positioned at the start together with
/// the digest of what it will read. Reuses `cached` if the key is unchanged;
/// rehashes if the file changes while being hashed.
fn open_and_digest(path: &Path, cached: Option<Digested>) -> Result<(File, Digested), Miss> {
    let mut file = File::open(path)?;
    for _ in 0..HASH_ATTEMPTS {
        let meta = file.metadata()?;
        if !meta.is_file() {
            return Err(Miss::NotFound);
        }
        let key = FileKey::of(&meta);
        if let Some(cached) = cached
            && cached.key == key
        {
            return Ok((file, cached));
        }
        file.seek(SeekFrom::Start(0))?;
        let sha256 = sha256(&mut file)?;
        if FileKey::of(&file.metadata()?) == key {
            file.seek(SeekFrom::Start(0))?;
            return Ok((file, Digested { key, sha256 }));
        }
    }
    Err(Miss::Io(io::Error::other(
        "file kept changing while it was being hashed",
    )))
}

fn sha256(file: &mut File) -> io::Result<[u8; 32]> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0; HASH_BUF];
    loop {
        match file.read(&mut buf) {
            Ok(0) => return Ok(hasher.finalize().into()),
            Ok(n) => hasher.update(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Maps a request path to a relative file path under DIR: percent-decoded,
/// only plain segments (no `.`, `..`, backslashes, NULs or prefixes), with
/// `.tar.gz` appended when the last segment lacks it.
fn request_file(uri_path: &str) -> Option<PathBuf> {
    let decoded = percent_decode(uri_path)?;
    let mut rel = PathBuf::new();
    let mut last = None;
    for segment in decoded.split('/').filter(|s| !s.is_empty()) {
        if segment == "." || segment == ".." || segment.contains(['\\', '\0']) {
            return None;
        }
        rel.push(segment);
        last = Some(segment);
    }
    if !rel.components().all(|c| matches!(c, Component::Normal(_))) {
        return None;
    }
    let last = last?;
    if !last.ends_with(BUNDLE_SUFFIX) {
        rel.set_file_name(format!("{last}{BUNDLE_SUFFIX}"));
    }
    Some(rel)
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::net::SocketAddr;
    use std::time::Instant as StdInstant;

    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
    use tokio::net::TcpStream;
    use tokio::task::JoinHandle;

    use crate::server::protocol::{CHUNK, GZIP, OPA_BUNDLES};

    /// A server on 127.0.0.1:0 over `<tmp>/root`; `<tmp>` also holds files
    /// outside the root that must never be served.
    struct TestServer {
        addr: SocketAddr,
        dir: tempfile::TempDir,
        shutdown: CancellationToken,
        task: JoinHandle<io::Result<()>>,
    }

    impl TestServer {
        async fn start() -> Self {
            let dir = tempfile::tempdir().unwrap();
            std::fs::create_dir_all(dir.path().join("root/bundles")).unwrap();
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let shutdown = CancellationToken::new();
            let task = tokio::spawn(serve_dir(
                dir.path().join("root"),
                listener,
                shutdown.clone(),
            ));
            Self {
                addr,
                dir,
                shutdown,
                task,
            }
        }

        fn root(&self) -> PathBuf {
            self.dir.path().join("root")
        }

        fn write(&self, rel: &str, content: &[u8]) {
            std::fs::write(self.root().join(rel), content).unwrap();
        }

        async fn get(&self, path: &str, headers: &[(&str, &str)]) -> Reply {
            self.send("GET", path, headers).await
        }

        async fn send(&self, method: &str, path: &str, headers: &[(&str, &str)]) -> Reply {
            let stream = TcpStream::connect(self.addr).await.unwrap();
            let mut stream = BufReader::new(stream);
            write_request(&mut stream, method, path, headers, true).await;
            read_reply(&mut stream, method == "HEAD").await
        }
    }

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
    }

    async fn write_request(
        stream: &mut BufReader<TcpStream>,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        close: bool,
    ) {
        let mut request = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\n");
        for (name, value) in headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        if close {
            request.push_str("Connection: close\r\n");
        }
        request.push_str("\r\n");
        stream
            .get_mut()
            .write_all(request.as_bytes())
            .await
            .unwrap();
    }

    async fn read_reply(stream: &mut BufReader<TcpStream>, head: bool) -> Reply {
        let mut line = String::new();
        stream.read_line(&mut line).await.unwrap();
        let status = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("bad status line {line:?}"));
        let mut headers = Vec::new();
        loop {
            line.clear();
            stream.read_line(&mut line).await.unwrap();
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            let (name, value) = line.split_once(':').unwrap();
            headers.push((name.trim().to_owned(), value.trim().to_owned()));
        }
        let mut reply = Reply {
            status,
            headers,
            body: Vec::new(),
        };
        if head || status == 304 {
            return reply;
        }
        match reply.header("content-length") {
            Some(len) => {
                reply.body = vec![0; len.parse().unwrap()];
                stream.read_exact(&mut reply.body).await.unwrap();
            }
            None => {
                stream.read_to_end(&mut reply.body).await.unwrap();
            }
        }
        reply
    }

    fn quoted_sha256(content: &[u8]) -> String {
        format!("\"{}\"", hex::encode(Sha256::digest(content)))
    }

    /// Deterministic, incompressible-looking content of `len` bytes.
    fn content(len: usize, seed: u8) -> Vec<u8> {
        let mut x = u32::from(seed) | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect()
    }

    #[tokio::test]
    async fn get_streams_bundle_with_sha256_etag() {
        let server = TestServer::start().await;
        // Several body chunks, and not a multiple of the chunk size.
        let bundle = content(3 * CHUNK + 17, 1);
        server.write("bundles/authz.tar.gz", &bundle);

        let reply = server.get("/bundles/authz.tar.gz", &[]).await;

        assert_eq!(reply.status, 200);
        assert_eq!(reply.header("content-type"), Some(GZIP));
        assert_eq!(
            reply.header("content-length"),
            Some(bundle.len().to_string().as_str())
        );
        assert_eq!(reply.header("etag"), Some(quoted_sha256(&bundle).as_str()));
        assert!(reply.body == bundle, "body differs from the file");
    }

    #[tokio::test]
    async fn matching_if_none_match_returns_304_without_body() {
        let server = TestServer::start().await;
        server.write("authz.tar.gz", b"bundle v1");
        let etag = quoted_sha256(b"bundle v1");
        let weak = format!("W/{etag}");
        let list = format!("\"0000\", W/\"1111\" , {etag}");

        for if_none_match in [etag.as_str(), weak.as_str(), list.as_str(), "*"] {
            let reply = server
                .get("/authz.tar.gz", &[("If-None-Match", if_none_match)])
                .await;
            assert_eq!(reply.status, 304, "If-None-Match: {if_none_match}");
            assert_eq!(reply.header("etag"), Some(etag.as_str()));
            assert_eq!(reply.header("content-type"), None);
            assert!(reply.body.is_empty());
        }
    }

    #[tokio::test]
    async fn stale_etag_returns_200_with_current_content() {
        let server = TestServer::start().await;
        server.write("authz.tar.gz", b"bundle v1");
        let old = quoted_sha256(b"bundle v1");
        server.write("authz.tar.gz", b"bundle v2, longer");

        let reply = server
            .get("/authz.tar.gz", &[("If-None-Match", &old)])
            .await;

        assert_eq!(reply.status, 200);
        assert_eq!(reply.body, b"bundle v2, longer");
        assert_eq!(
            reply.header("etag"),
            Some(quoted_sha256(b"bundle v2, longer").as_str())
        );
    }

    #[tokio::test]
    async fn path_without_suffix_serves_the_tar_gz() {
        let server = TestServer::start().await;
        server.write("bundles/authz.tar.gz", b"authz bundle");
        // A directory of the bare name must not shadow the bundle.
        std::fs::create_dir(server.root().join("bundles/authz")).unwrap();

        for path in ["/bundles/authz", "/bundles/%61uthz", "//bundles//authz"] {
            let reply = server.get(path, &[]).await;
            assert_eq!(reply.status, 200, "{path}");
            assert_eq!(reply.body, b"authz bundle", "{path}");
        }
    }

    #[tokio::test]
    async fn traversal_and_non_bundle_paths_are_404() {
        let server = TestServer::start().await;
        server.write("bundles/authz.tar.gz", b"authz bundle");
        std::fs::write(server.dir.path().join("secret.tar.gz"), b"secret").unwrap();
        server.write("notes.txt", b"notes");
        server.write(".tar.gz", b"no name");
        std::fs::create_dir(server.root().join("dir.tar.gz")).unwrap();
        #[cfg(unix)]
        {
            let outside = server.dir.path().join("secret.tar.gz");
            std::os::unix::fs::symlink(&outside, server.root().join("escape.tar.gz")).unwrap();
            std::os::unix::fs::symlink(server.dir.path(), server.root().join("bundles/up"))
                .unwrap();
            std::os::unix::fs::symlink(
                server.root().join("notes.txt"),
                server.root().join("notes.tar.gz"),
            )
            .unwrap();
        }

        for path in [
            "/../secret.tar.gz",
            "/../secret",
            "/bundles/../../secret.tar.gz",
            "/%2e%2e/secret.tar.gz",
            "/%2E%2E/secret",
            "/bundles/%2e%2e%2f%2e%2e%2fsecret.tar.gz",
            "/bundles/..%2F..%2Fsecret.tar.gz",
            "/bundles/%5c..%5csecret.tar.gz",
            "/./bundles/authz.tar.gz",
            "/escape.tar.gz",
            "/escape",
            "/bundles/up/secret.tar.gz",
            "/bundles/up/secret",
            "/notes.txt",
            "/notes.tar.gz",
            "/dir.tar.gz",
            "/dir",
            "/.tar.gz",
            "/",
            "/bundles/",
            "/missing.tar.gz",
            "/bundles/authz%zz",
            "/bundles/authz%00",
            "/bundles/%ff",
        ] {
            let reply = server.get(path, &[]).await;
            assert_eq!(reply.status, 404, "{path}");
            assert!(!reply.body.starts_with(b"secret"), "{path}");
        }
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn symlink_inside_root_is_served() {
        let server = TestServer::start().await;
        server.write("bundles/authz-v2.tar.gz", b"v2");
        std::os::unix::fs::symlink(
            "authz-v2.tar.gz",
            server.root().join("bundles/authz.tar.gz"),
        )
        .unwrap();

        let reply = server.get("/bundles/authz", &[]).await;

        assert_eq!(reply.status, 200);
        assert_eq!(reply.body, b"v2");
    }

    #[tokio::test]
    async fn head_returns_headers_without_body() {
        let server = TestServer::start().await;
        server.write("authz.tar.gz", b"bundle v1");

        let reply = server.send("HEAD", "/authz", &[]).await;

        assert_eq!(reply.status, 200);
        assert_eq!(reply.header("content-length"), Some("9"));
        assert_eq!(
            reply.header("etag"),
            Some(quoted_sha256(b"bundle v1").as_str())
        );
        // The connection closes right after the head: nothing else was sent.
        let stream = TcpStream::connect(server.addr).await.unwrap();
        let mut stream = BufReader::new(stream);
        write_request(&mut stream, "HEAD", "/authz", &[], true).await;
        let _ = read_reply(&mut stream, true).await;
        let mut rest = Vec::new();
        stream.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty(), "HEAD sent a body: {rest:?}");
    }

    #[tokio::test]
    async fn other_methods_get_405() {
        let server = TestServer::start().await;
        server.write("authz.tar.gz", b"bundle v1");

        for method in ["POST", "PUT", "DELETE", "OPTIONS"] {
            let reply = server.send(method, "/authz.tar.gz", &[]).await;
            assert_eq!(reply.status, 405, "{method}");
            assert_eq!(reply.header("allow"), Some("GET, HEAD"));
        }
    }

    #[tokio::test]
    async fn keep_alive_serves_several_requests_on_one_connection() {
        let server = TestServer::start().await;
        server.write("a.tar.gz", b"bundle a");
        server.write("b.tar.gz", b"bundle b");
        let stream = TcpStream::connect(server.addr).await.unwrap();
        let mut stream = BufReader::new(stream);

        for (path, body) in [
            ("/a", b"bundle a"),
            ("/b", b"bundle b"),
            ("/a", b"bundle a"),
        ] {
            write_request(&mut stream, "GET", path, &[], false).await;
            let reply = read_reply(&mut stream, false).await;
            assert_eq!(reply.status, 200, "{path}");
            assert_eq!(reply.body, body, "{path}");
        }
    }

    #[tokio::test]
    async fn unchanged_file_key_reuses_cached_digest() {
        let server = TestServer::start().await;
        let path = server.root().join("authz.tar.gz");
        server.write("authz.tar.gz", b"bundle v1");
        let mtime = std::fs::metadata(&path).unwrap().modified().unwrap();
        let first = server.get("/authz", &[]).await;

        // Same length, inode and mtime: the digest is taken from the cache,
        // which is what proves the file was not hashed again.
        server.write("authz.tar.gz", b"bundle v9");
        File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(mtime)
            .unwrap();
        let second = server.get("/authz", &[]).await;

        assert_eq!(
            first.header("etag"),
            Some(quoted_sha256(b"bundle v1").as_str())
        );
        assert_eq!(second.header("etag"), first.header("etag"));
    }

    #[tokio::test]
    async fn deleted_bundle_is_404() {
        let server = TestServer::start().await;
        server.write("authz.tar.gz", b"bundle v1");
        assert_eq!(server.get("/authz", &[]).await.status, 200);

        std::fs::remove_file(server.root().join("authz.tar.gz")).unwrap();

        assert_eq!(server.get("/authz", &[]).await.status, 404);
    }

    #[tokio::test]
    async fn long_poll_returns_new_content_soon_after_rewrite() {
        let server = TestServer::start().await;
        server.write("bundles/authz.tar.gz", b"bundle v1");
        let etag = quoted_sha256(b"bundle v1");
        let root = server.root();
        let writer = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            // Atomic replace, as a bundle build would do it.
            std::fs::write(root.join("bundles/new"), b"bundle v2").unwrap();
            std::fs::rename(root.join("bundles/new"), root.join("bundles/authz.tar.gz")).unwrap();
        });

        let started = StdInstant::now();
        let reply = server
            .get(
                "/bundles/authz",
                &[
                    ("If-None-Match", &etag),
                    ("Prefer", "modes=snapshot,delta;wait=10"),
                ],
            )
            .await;
        let elapsed = started.elapsed();
        writer.await.unwrap();

        assert_eq!(reply.status, 200);
        assert_eq!(reply.body, b"bundle v2");
        assert_eq!(
            reply.header("etag"),
            Some(quoted_sha256(b"bundle v2").as_str())
        );
        assert_eq!(reply.header("content-type"), Some(OPA_BUNDLES));
        assert!(
            elapsed >= Duration::from_millis(250),
            "answered before the change: {elapsed:?}"
        );
        assert!(
            elapsed < Duration::from_secs(3),
            "change noticed late: {elapsed:?}"
        );
    }

    #[tokio::test]
    async fn long_poll_on_star_sees_in_place_rewrite_and_ignores_touch() {
        let server = TestServer::start().await;
        let path = server.root().join("authz.tar.gz");
        server.write("authz.tar.gz", b"bundle v1");
        let writer = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(250)).await;
            // Same content, new mtime: not a change.
            std::fs::write(&path, b"bundle v1").unwrap();
            tokio::time::sleep(Duration::from_millis(400)).await;
            std::fs::write(&path, b"bundle v2 (in place)").unwrap();
        });

        let started = StdInstant::now();
        let reply = server
            .get(
                "/authz",
                // `*` holds until the content changes, like a matching tag.
                &[("If-None-Match", "*"), ("Prefer", "modes=snapshot;wait=10")],
            )
            .await;
        let elapsed = started.elapsed();
        writer.await.unwrap();

        assert_eq!(reply.status, 200);
        assert_eq!(reply.body, b"bundle v2 (in place)");
        assert!(
            elapsed >= Duration::from_millis(600),
            "touch ended the poll: {elapsed:?}"
        );
        assert!(
            elapsed < Duration::from_secs(3),
            "change noticed late: {elapsed:?}"
        );
    }

    #[tokio::test]
    async fn long_poll_times_out_with_304() {
        let server = TestServer::start().await;
        server.write("authz.tar.gz", b"bundle v1");
        let etag = quoted_sha256(b"bundle v1");

        let started = StdInstant::now();
        let reply = server
            .get(
                "/authz",
                &[
                    ("If-None-Match", &etag),
                    ("Prefer", "modes=snapshot;wait=1"),
                ],
            )
            .await;
        let elapsed = started.elapsed();

        assert_eq!(reply.status, 304);
        assert_eq!(reply.header("etag"), Some(etag.as_str()));
        assert_eq!(reply.header("content-type"), Some(OPA_BUNDLES));
        assert!(elapsed >= Duration::from_millis(950), "{elapsed:?}");
        assert!(elapsed < Duration::from_secs(3), "{elapsed:?}");
    }

    #[tokio::test]
    async fn long_poll_with_stale_etag_answers_at_once_as_opa_bundles() {
        let server = TestServer::start().await;
        server.write("authz.tar.gz", b"bundle v2");

        let started = StdInstant::now();
        let reply = server
            .get(
                "/authz",
                &[
                    ("If-None-Match", "\"stale\""),
                    ("Prefer", "modes=snapshot,delta;wait=30"),
                ],
            )
            .await;

        assert!(started.elapsed() < Duration::from_secs(2));
        assert_eq!(reply.status, 200);
        assert_eq!(reply.body, b"bundle v2");
        assert_eq!(reply.header("content-type"), Some(OPA_BUNDLES));
    }

    #[tokio::test]
    async fn bundle_deleted_during_long_poll_is_404() {
        let server = TestServer::start().await;
        server.write("authz.tar.gz", b"bundle v1");
        let etag = quoted_sha256(b"bundle v1");
        let path = server.root().join("authz.tar.gz");
        let remover = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            std::fs::remove_file(path).unwrap();
        });

        let started = StdInstant::now();
        let reply = server
            .get("/authz", &[("If-None-Match", &etag), ("Prefer", "wait=10")])
            .await;
        remover.await.unwrap();

        assert_eq!(reply.status, 404);
        assert!(started.elapsed() < Duration::from_secs(3));
    }

    #[tokio::test]
    async fn shutdown_ends_held_long_poll_promptly() {
        let server = TestServer::start().await;
        server.write("authz.tar.gz", b"bundle v1");
        let etag = quoted_sha256(b"bundle v1");
        let stream = TcpStream::connect(server.addr).await.unwrap();
        let mut stream = BufReader::new(stream);
        let headers = [
            ("If-None-Match", etag.as_str()),
            ("Prefer", "modes=snapshot;wait=60"),
        ];
        write_request(&mut stream, "GET", "/authz", &headers, false).await;
        let poll = tokio::spawn(async move {
            let reply = read_reply(&mut stream, false).await;
            // The server closes the connection after answering.
            let mut rest = Vec::new();
            let _ = stream.read_to_end(&mut rest).await;
            reply
        });
        tokio::time::sleep(Duration::from_millis(300)).await;

        let started = StdInstant::now();
        server.shutdown.cancel();
        let reply = tokio::time::timeout(Duration::from_millis(1500), poll)
            .await
            .expect("long poll still held after shutdown")
            .unwrap();
        let stopped = tokio::time::timeout(Duration::from_millis(1500), server.task)
            .await
            .expect("serve did not return after shutdown")
            .unwrap();

        assert_eq!(reply.status, 304);
        assert!(stopped.is_ok());
        assert!(started.elapsed() < Duration::from_millis(1500));
        assert!(
            TcpStream::connect(server.addr).await.is_err(),
            "still accepting"
        );
    }

    #[tokio::test]
    async fn missing_root_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();

        let result = serve_dir(dir.path().join("nope"), listener, CancellationToken::new()).await;

        assert_eq!(result.unwrap_err().kind(), ErrorKind::NotFound);
    }

    #[test]
    fn request_file_keeps_plain_segments_only() {
        let file = |p: &str| request_file(p).map(|p| p.to_string_lossy().into_owned());
        assert_eq!(
            file("/bundles/authz").as_deref(),
            Some("bundles/authz.tar.gz")
        );
        assert_eq!(
            file("/bundles/authz.tar.gz").as_deref(),
            Some("bundles/authz.tar.gz")
        );
        assert_eq!(file("/a%20b").as_deref(), Some("a b.tar.gz"));
        assert_eq!(file("/x.tar").as_deref(), Some("x.tar.tar.gz"));
        for refused in [
            "/",
            "",
            "/..",
            "/a/../b",
            "/%2e%2e/b",
            "/a/./b",
            "/a%5cb",
            "/a%00",
            "/%zz",
            "/%c3",
        ] {
            assert_eq!(file(refused), None, "{refused}");
        }
    }
}
