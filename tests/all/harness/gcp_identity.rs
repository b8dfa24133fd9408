//! Stand-ins for Google's token sources, which no emulator provides
//! (fake-gcs-server accepts any token and has neither): small std::net
//! servers on 127.0.0.1 answering as Google documents it.
//!
//! * The GCE metadata server: `GET
//!   /computeMetadata/v1/instance/service-accounts/default/token?scopes=…`
//!   with `Metadata-Flavor: Google` -> `{"access_token": …}`;
//!   `…/identity?audience=…` -> the identity token as text. Without the
//!   header: 403, as the real server does.
//! * The OAuth token endpoint for service-account JWTs (RFC 7523):
//!   `POST /token` with `grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer`
//!   and `assertion=<JWT>` -> `{"access_token": …}`. It keeps each
//!   assertion so the test can verify its signature with the public key.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread;

/// A running stand-in: metadata server and token endpoint on one port.
pub struct GcpIdentity {
    port: u16,
    /// (method, target, status) of each request.
    requests: Arc<Mutex<Vec<(String, String, u16)>>>,
    assertions: Arc<Mutex<Vec<String>>>,
}

impl GcpIdentity {
    /// Hands out `token` to every well-formed request.
    pub fn start(token: &str) -> GcpIdentity {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let port = listener.local_addr().unwrap().port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let assertions = Arc::new(Mutex::new(Vec::new()));
        let (token, log, jwts) = (token.to_string(), requests.clone(), assertions.clone());
        thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (token, log, jwts) = (token.clone(), log.clone(), jwts.clone());
                thread::spawn(move || {
                    let _ = serve(stream, &token, &log, &jwts);
                });
            }
        });
        GcpIdentity {
            port,
            requests,
            assertions,
        }
    }

    /// The metadata server (OPA's `gcp_metadata.endpoint`).
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The token endpoint (`gcp_service_account.token_url`).
    pub fn token_url(&self) -> String {
        format!("http://127.0.0.1:{}/token", self.port)
    }

    pub fn requests(&self) -> Vec<(String, String, u16)> {
        self.requests.lock().unwrap().clone()
    }

    /// The JWT assertions received, in order.
    pub fn assertions(&self) -> Vec<String> {
        self.assertions.lock().unwrap().clone()
    }
}

fn serve(
    stream: TcpStream,
    token: &str,
    log: &Mutex<Vec<(String, String, u16)>>,
    jwts: &Mutex<Vec<String>>,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or("").to_string();
    let target = parts.next().unwrap_or("").to_string();
    let (mut flavor, mut length) = (false, 0usize);
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header)? == 0 || header.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            let (name, value) = (name.trim().to_ascii_lowercase(), value.trim());
            flavor |= name == "metadata-flavor" && value == "Google";
            if name == "content-length" {
                length = value.parse().unwrap_or(0);
            }
        }
    }
    let mut body = vec![0; length.min(1 << 20)];
    reader.read_exact(&mut body)?;
    let body = String::from_utf8_lossy(&body).into_owned();
    let base = "/computeMetadata/v1/instance/service-accounts/default/";
    let access =
        serde_json::json!({"access_token": token, "expires_in": 3599, "token_type": "Bearer"})
            .to_string();
    let (status, answer) = match method.as_str() {
        "GET" if !target.starts_with(base) => (404, String::new()),
        "GET" if !flavor => (403, "Missing Metadata-Flavor:Google header".to_string()),
        "GET" if target.starts_with(&format!("{base}token?scopes=")) => (200, access),
        "GET" if target.starts_with(&format!("{base}identity?audience=")) => {
            (200, token.to_string())
        }
        "POST" if target == "/token" => {
            let field = |name: &str| {
                body.split('&')
                    .find_map(|p| p.strip_prefix(&format!("{name}=")))
                    .unwrap_or("")
                    .to_string()
            };
            if field("grant_type") == "urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer"
                && field("assertion").split('.').count() == 3
            {
                jwts.lock().unwrap().push(field("assertion"));
                (200, access)
            } else {
                (
                    400,
                    r#"{"error":"invalid_grant","error_description":"bad request"}"#.to_string(),
                )
            }
        }
        _ => (400, String::new()),
    };
    log.lock().unwrap().push((method, target, status));
    let mut stream = stream;
    write!(
        stream,
        "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{answer}",
        answer.len()
    )?;
    stream.flush()
}
