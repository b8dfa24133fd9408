//! A stand-in for the EC2 instance metadata service (IMDSv2), which no
//! emulator provides (moto has no IMDS): a small std::net server on
//! 127.0.0.1 that answers what polhost's `metadata_credentials` asks, the
//! way IMDS documents it:
//!
//! * `PUT /latest/api/token` with `X-aws-ec2-metadata-token-ttl-seconds`
//!   -> a session token;
//! * `GET /latest/meta-data/iam/security-credentials/<role>` with
//!   `X-aws-ec2-metadata-token: <that token>` -> the role's credentials
//!   as JSON (`Code`, `AccessKeyId`, `SecretAccessKey`, `Token`,
//!   `Expiration`); 401 without a valid token, 404 for another role.

use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread;

/// What one request looked like.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImdsRequest {
    pub method: String,
    pub path: String,
    pub status: u16,
}

/// A running IMDS stand-in; it stops accepting when the test process ends.
pub struct Imds {
    port: u16,
    requests: Arc<Mutex<Vec<ImdsRequest>>>,
}

const SESSION_TOKEN: &str = "imds-session-token-8f2c";

impl Imds {
    /// Serves `role`'s credentials (`access_key_id`, `secret`).
    pub fn start(role: &str, access_key_id: &str, secret: &str) -> Imds {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let port = listener.local_addr().unwrap().port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let credentials = serde_json::json!({
            "Code": "Success",
            "LastUpdated": "2026-01-01T00:00:00Z",
            "Type": "AWS-HMAC",
            "AccessKeyId": access_key_id,
            "SecretAccessKey": secret,
            "Token": "",
            "Expiration": "2999-01-01T00:00:00Z",
        })
        .to_string();
        let role = role.to_string();
        let log = requests.clone();
        thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (role, credentials, log) = (role.clone(), credentials.clone(), log.clone());
                thread::spawn(move || {
                    let _ = serve(stream, &role, &credentials, &log);
                });
            }
        });
        Imds { port, requests }
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn requests(&self) -> Vec<ImdsRequest> {
        self.requests.lock().unwrap().clone()
    }
}

fn serve(
    stream: TcpStream,
    role: &str,
    credentials: &str,
    log: &Mutex<Vec<ImdsRequest>>,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or("").to_string();
    let path = parts.next().unwrap_or("").to_string();
    let mut headers = Vec::new();
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header)? == 0 || header.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
        }
    }
    let header = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    };
    let credentials_path = format!("/latest/meta-data/iam/security-credentials/{role}");
    let (status, body) = match (method.as_str(), path.as_str()) {
        ("PUT", "/latest/api/token") => match header("x-aws-ec2-metadata-token-ttl-seconds") {
            Some(_) => (200, SESSION_TOKEN.to_string()),
            None => (400, String::new()),
        },
        ("GET", p) if header("x-aws-ec2-metadata-token") != Some(SESSION_TOKEN) => {
            let _ = p;
            (401, String::new())
        }
        ("GET", p) if p == credentials_path => (200, credentials.to_string()),
        _ => (404, String::new()),
    };
    log.lock().unwrap().push(ImdsRequest {
        method,
        path,
        status,
    });
    let mut stream = stream;
    write!(
        stream,
        "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    stream.flush()
}
