//! What the tests and the benchmark share: bundles built on the fly,
//! publishing them to a directory nginx serves, an OPA configuration for
//! it, and a keep-alive HTTP/1.1 client.
#![allow(dead_code)]

use std::fs;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;

/// How long a test waits for what should take a poll or two.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// Where the bundle lives under nginx's root, and the resource the agent asks for.
pub const RESOURCE: &str = "bundles/authz.tar.gz";

/// A gzipped tar of `(path, content)` regular files.
pub fn tar_gz(files: &[(&str, String)]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (path, content) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(content.len() as u64);
        header.set_mode(0o644);
        builder
            .append_data(&mut header, path, content.as_bytes())
            .unwrap();
    }
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&builder.into_inner().unwrap()).unwrap();
    gz.finish().unwrap()
}

/// An OPA bundle with root `authz`, `revision`, one module and a data file.
pub fn bundle(revision: &str, rego: &str, data: &str) -> Vec<u8> {
    tar_gz(&[
        (
            ".manifest",
            format!(r#"{{"revision":"{revision}","roots":["authz"]}}"#),
        ),
        ("authz/policy.rego", rego.to_string()),
        ("authz/data.json", data.to_string()),
    ])
}

/// Writes `content` to `path` by rename (as a deploy would), creating
/// parents, and moves its mtime `age_offset_s` seconds into the future:
/// nginx's etag is mtime+size, so versions written within one second need
/// distinct offsets.
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

/// Writes an OPA configuration in `dir`: one service at `url`, one bundle
/// `authz` polled every second, persisted under `dir/state`.
pub fn config(dir: &Path, url: &str) -> PathBuf {
    let path = dir.join("config.yaml");
    fs::write(
        &path,
        format!(
            "services:
  web:
    url: {url}
bundles:
  authz:
    service: web
    resource: {RESOURCE}
    persist: true
    polling:
      min_delay_seconds: 1
      max_delay_seconds: 1
persistence_directory: {}
",
            dir.join("state").display()
        ),
    )
    .unwrap();
    path
}

/// A keep-alive HTTP/1.1 client of one server; reconnects when the
/// connection closes.
pub struct Client {
    addr: SocketAddr,
    sender: Option<SendRequest<Full<Bytes>>>,
}

impl Client {
    pub fn new(addr: SocketAddr) -> Client {
        Client { addr, sender: None }
    }

    async fn connect(&self) -> Result<SendRequest<Full<Bytes>>, String> {
        let stream = tokio::net::TcpStream::connect(self.addr)
            .await
            .map_err(|e| format!("connecting to {}: {e}", self.addr))?;
        stream.set_nodelay(true).map_err(|e| e.to_string())?;
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        tokio::spawn(connection);
        Ok(sender)
    }

    /// Sends `method path` with `body` (JSON); returns the status and the
    /// JSON it answered.
    pub async fn request(
        &mut self,
        method: &str,
        path: &str,
        body: &str,
    ) -> Result<(u16, serde_json::Value), String> {
        let mut sender = match self.sender.take() {
            Some(sender) if !sender.is_closed() => sender,
            _ => self.connect().await?,
        };
        sender.ready().await.map_err(|e| format!("ready: {e}"))?;
        let request = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, self.addr.to_string())
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body.to_string())))
            .map_err(|e| e.to_string())?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| format!("{method} {path}: {e}"))?;
        let status = response.status().as_u16();
        let bytes = response
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("{method} {path}: reading the body: {e}"))?
            .to_bytes();
        self.sender = Some(sender);
        let json = serde_json::from_slice(&bytes).map_err(|e| {
            format!(
                "{method} {path}: {status} with a body that is not JSON ({e}): {}",
                String::from_utf8_lossy(&bytes)
            )
        })?;
        Ok((status, json))
    }

    /// `POST /authorize` with `input`.
    pub async fn authorize(&mut self, input: &str) -> Result<(u16, serde_json::Value), String> {
        self.request("POST", "/authorize", input).await
    }

    /// The decision for `input`, if a policy is active: (allow, revision).
    pub async fn decision(&mut self, input: &str) -> Option<(bool, String)> {
        match self.authorize(input).await {
            Ok((200, json)) => Some((
                json["allow"].as_bool().expect("allow is a boolean"),
                json["revision"]
                    .as_str()
                    .expect("revision is a string")
                    .to_string(),
            )),
            Ok((503, _)) => None,
            other => panic!("POST /authorize {input}: {other:?}"),
        }
    }
}

/// Waits (polling every 100 ms, at most [`PATIENCE`]) until the decision
/// for `input` has `revision`; panics with the last answer otherwise.
pub async fn wait_for_revision(client: &mut Client, input: &str, revision: &str) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let decision = client.decision(input).await;
        if decision.as_ref().is_some_and(|(_, r)| r == revision) {
            return;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("waited {PATIENCE:?} for revision {revision}; the last decision: {decision:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
