//! A stand-in for the Azure Instance Metadata Service's managed-identity
//! token endpoint, which no emulator provides (azurite has none): a small
//! std::net server on 127.0.0.1 answering
//! `GET /metadata/identity/oauth2/token?api-version=…&resource=…` with
//! header `Metadata: true` by `{"access_token": …}`, as Azure documents it.
//! Without the header, or for another resource, it answers 400 with
//! Azure's error JSON.

use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread;

/// A running identity-endpoint stand-in.
pub struct AzureIdentity {
    port: u16,
    requests: Arc<Mutex<Vec<(String, u16)>>>,
}

impl AzureIdentity {
    /// Hands out `token` for `https://storage.azure.com/`.
    pub fn start(token: &str) -> AzureIdentity {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let port = listener.local_addr().unwrap().port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let (token, log) = (token.to_string(), requests.clone());
        thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (token, log) = (token.clone(), log.clone());
                thread::spawn(move || {
                    let _ = serve(stream, &token, &log);
                });
            }
        });
        AzureIdentity { port, requests }
    }

    /// The token endpoint's URL (OPA's `azure_managed_identity.endpoint`).
    pub fn endpoint(&self) -> String {
        format!(
            "http://127.0.0.1:{}/metadata/identity/oauth2/token",
            self.port
        )
    }

    /// (path and query, status) of each request so far.
    pub fn requests(&self) -> Vec<(String, u16)> {
        self.requests.lock().unwrap().clone()
    }
}

fn serve(stream: TcpStream, token: &str, log: &Mutex<Vec<(String, u16)>>) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let target = line.split_whitespace().nth(1).unwrap_or("").to_string();
    let mut metadata = false;
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header)? == 0 || header.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            metadata |= name.trim().eq_ignore_ascii_case("metadata") && value.trim() == "true";
        }
    }
    let storage = target.contains("resource=https%3A%2F%2Fstorage.azure.com%2F");
    let (status, body) = if !target.starts_with("/metadata/identity/oauth2/token?") {
        (404, String::new())
    } else if !metadata || !storage || !target.contains("api-version=2018-02-01") {
        (
            400,
            r#"{"error":"invalid_request","error_description":"Required metadata header not specified or resource unknown"}"#.to_string(),
        )
    } else {
        (
            200,
            serde_json::json!({
                "access_token": token,
                "expires_in": "3599",
                "expires_on": "4102444800",
                "not_before": "1700000000",
                "resource": "https://storage.azure.com/",
                "token_type": "Bearer",
            })
            .to_string(),
        )
    };
    log.lock().unwrap().push((target, status));
    let mut stream = stream;
    write!(
        stream,
        "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    stream.flush()
}
