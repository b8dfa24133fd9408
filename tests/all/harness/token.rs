//! A registry token service (the Docker/distribution token flow) for the
//! tests: a small std::net HTTP server on 127.0.0.1 that issues RS256 JWTs
//! signed with a key `openssl` makes at start; docker-registry verifies them
//! against the issuer's self-signed certificate (`rootcertbundle`), which
//! the JWT carries in its `x5c` header.
//!
//! ```ignore
//! let issuer = TokenIssuer::start(Some(("alice", "wonderland")));
//! let auth = issuer.registry_auth();   // RegistryAuth::Token { .. }
//! assert_eq!(issuer.requests().len(), 1);
//! ```

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::registry::RegistryAuth;

pub const SERVICE: &str = "polhost-test-registry";
pub const ISSUER: &str = "polhost-test-issuer";

/// One request the issuer answered.
#[derive(Clone, Debug)]
pub struct TokenRequest {
    /// Path and query as sent.
    pub target: String,
    pub authorization_present: bool,
    pub status: u16,
}

pub struct TokenIssuer {
    _dir: tempfile::TempDir,
    cert: PathBuf,
    port: u16,
    stop: Arc<AtomicBool>,
    requests: Arc<Mutex<Vec<TokenRequest>>>,
}

struct Signer {
    key: PathBuf,
    cert_der_b64: String,
    basic: Option<String>,
}

impl TokenIssuer {
    /// Starts the issuer; with `basic`, a token is issued only to requests
    /// carrying those HTTP basic credentials.
    pub fn start(basic: Option<(&str, &str)>) -> TokenIssuer {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("key.pem");
        let cert = dir.path().join("cert.pem");
        let der = dir.path().join("cert.der");
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=polhost-test-token-issuer",
            "-keyout",
            &s(&key),
            "-out",
            &s(&cert),
        ]);
        openssl(&[
            "x509",
            "-in",
            &s(&cert),
            "-outform",
            "DER",
            "-out",
            &s(&der),
        ]);
        let signer = Arc::new(Signer {
            key,
            cert_der_b64: base64(&fs::read(&der).unwrap(), STD),
            basic: basic
                .map(|(u, p)| format!("Basic {}", base64(format!("{u}:{p}").as_bytes(), STD))),
        });
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let port = listener.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let (flag, log) = (stop.clone(), requests.clone());
        thread::spawn(move || {
            for stream in listener.incoming() {
                if flag.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                let (signer, log) = (signer.clone(), log.clone());
                thread::spawn(move || {
                    if let Some(entry) = serve(stream, &signer) {
                        log.lock().unwrap().push(entry);
                    }
                });
            }
        });
        TokenIssuer {
            _dir: dir,
            cert,
            port,
            stop,
            requests,
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn realm(&self) -> String {
        format!("http://127.0.0.1:{}/token", self.port)
    }

    /// The registry's `auth.token` for this issuer.
    pub fn registry_auth(&self) -> RegistryAuth {
        RegistryAuth::Token {
            realm: self.realm(),
            service: SERVICE.into(),
            issuer: ISSUER.into(),
            root_cert: self.cert.clone(),
        }
    }

    pub fn requests(&self) -> Vec<TokenRequest> {
        self.requests.lock().unwrap().clone()
    }
}

impl Drop for TokenIssuer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect((Ipv4Addr::LOCALHOST, self.port));
    }
}

fn serve(mut stream: TcpStream, signer: &Signer) -> Option<TokenRequest> {
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let mut reader = BufReader::new(stream.try_clone().ok()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line).ok()?;
    let target = request_line.split_whitespace().nth(1)?.to_string();
    let mut authorization = None;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).ok()? == 0 || line.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':')
            && name.eq_ignore_ascii_case("authorization")
        {
            authorization = Some(value.trim().to_string());
        }
    }
    let authorized = match &signer.basic {
        None => true,
        Some(expected) => authorization.as_deref() == Some(expected.as_str()),
    };
    let (status, body, extra) = if !target.starts_with("/token") {
        (404, r#"{"error":"not found"}"#.to_string(), "")
    } else if !authorized {
        (
            401,
            r#"{"error":"invalid credentials"}"#.to_string(),
            "WWW-Authenticate: Basic realm=\"polhost-test-issuer\"\r\n",
        )
    } else {
        let token = sign(signer, &scopes(&target));
        (
            200,
            format!(r#"{{"token":"{token}","access_token":"{token}","expires_in":300}}"#),
            "",
        )
    };
    let reason = match status {
        200 => "OK",
        401 => "Unauthorized",
        _ => "Not Found",
    };
    let _ = write!(
        stream,
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{extra}Connection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.flush();
    Some(TokenRequest {
        target,
        authorization_present: authorization.is_some(),
        status,
    })
}

/// `(repository, actions)` of every `scope=repository:NAME:ACTIONS`.
fn scopes(target: &str) -> Vec<(String, Vec<String>)> {
    let query = target.split_once('?').map(|(_, q)| q).unwrap_or("");
    query
        .split('&')
        .filter_map(|pair| pair.strip_prefix("scope="))
        .filter_map(|scope| {
            let scope = percent_decode(scope);
            let rest = scope.strip_prefix("repository:")?;
            let (name, actions) = rest.rsplit_once(':')?;
            Some((
                name.to_string(),
                actions.split(',').map(str::to_string).collect(),
            ))
        })
        .collect()
}

fn sign(signer: &Signer, scopes: &[(String, Vec<String>)]) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let header = serde_json::json!({"alg": "RS256", "typ": "JWT", "x5c": [signer.cert_der_b64]});
    let access: Vec<_> = scopes
        .iter()
        .map(|(name, actions)| serde_json::json!({"type": "repository", "name": name, "actions": actions}))
        .collect();
    let claims = serde_json::json!({
        "iss": ISSUER, "sub": "polhost-test", "aud": SERVICE,
        "exp": now + 300, "nbf": now - 10, "iat": now, "jti": format!("{now}-{}", access.len()),
        "access": access,
    });
    let input = format!(
        "{}.{}",
        base64(header.to_string().as_bytes(), URL),
        base64(claims.to_string().as_bytes(), URL)
    );
    let mut child = Command::new("openssl")
        .args(["dgst", "-sha256", "-sign"])
        .arg(&signer.key)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("openssl is not installed: run tests/harness/install.sh as root");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "openssl dgst -sign failed");
    format!("{input}.{}", base64(&out.stdout, URL))
}

fn openssl(args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl is not installed: run tests/harness/install.sh as root");
    assert!(
        out.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn s(path: &Path) -> String {
    path.display().to_string()
}

const STD: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
const URL: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// Base64 with `alphabet`; padded for the standard one, unpadded for the
/// URL one (as JWTs want).
fn base64(input: &[u8], alphabet: &[u8; 64]) -> String {
    let pad = alphabet == STD;
    let mut out = String::new();
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(alphabet[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else if pad {
                out.push('=');
            }
        }
    }
    out
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && let Some(v) = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(v);
            i += 3;
        } else {
            out.push(if b[i] == b'+' { b' ' } else { b[i] });
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Basic credentials as the issuer expects them (for tests that check).
pub fn basic_header(user: &str, password: &str) -> String {
    format!(
        "Basic {}",
        base64(format!("{user}:{password}").as_bytes(), STD)
    )
}
