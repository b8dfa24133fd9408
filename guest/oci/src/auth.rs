//! Registry authentication: the configured credential (OPA's
//! `credentials.bearer`, base64-encoded as OPA does for `type: oci`), the
//! `WWW-Authenticate` challenge, and the registry token flow. Owns no I/O
//! policy beyond building the token request; never puts a secret in a
//! message.

use std::time::{Duration, Instant};

use polhost_fetcher::FetchError;
use polhost_fetcher::base64;
use polhost_fetcher::config::ServiceConfig;

/// The `Authorization` value for the registry and its token service, from
/// `credentials.bearer`: `<scheme> <base64(token)>` (scheme default
/// `Bearer`). With `scheme: Basic` and `token: user:pass` that is HTTP
/// basic auth, which is what OPA documents for ECR, ACR and htpasswd
/// registries. `token_path` is read on every fetch.
pub fn configured_authorization(config: &ServiceConfig) -> Result<Option<String>, FetchError> {
    config.only_credential_methods("oci", &["bearer"])?;
    Ok(config
        .bearer()?
        .map(|b| format!("{} {}", b.scheme, base64::encode(b.token.as_bytes()))))
}

/// A parsed `WWW-Authenticate` challenge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Challenge {
    /// `Bearer`, `Basic`, ... as sent.
    pub scheme: String,
    pub realm: Option<String>,
    pub service: Option<String>,
    pub scope: Option<String>,
}

impl Challenge {
    /// Parses `Scheme key="value", key=value, ...` (the first challenge).
    pub fn parse(header: &str) -> Option<Challenge> {
        let header = header.trim();
        let (scheme, mut rest) = match header.split_once(' ') {
            Some((scheme, rest)) => (scheme, rest),
            None => (header, ""),
        };
        if scheme.is_empty() {
            return None;
        }
        let mut challenge = Challenge {
            scheme: scheme.to_string(),
            realm: None,
            service: None,
            scope: None,
        };
        loop {
            rest = rest.trim_start_matches([' ', ',']);
            let Some((key, after)) = rest.split_once('=') else {
                break;
            };
            let key = key.trim().to_ascii_lowercase();
            let after = after.trim_start();
            let (value, tail) = if let Some(quoted) = after.strip_prefix('"') {
                // Quoted: up to the next unescaped quote.
                let mut value = String::new();
                let mut chars = quoted.char_indices();
                let mut end = quoted.len();
                while let Some((i, c)) = chars.next() {
                    match c {
                        '\\' => {
                            if let Some((_, next)) = chars.next() {
                                value.push(next);
                            }
                        }
                        '"' => {
                            end = i + 1;
                            break;
                        }
                        c => value.push(c),
                    }
                }
                (value, &quoted[end.min(quoted.len())..])
            } else {
                let end = after.find(',').unwrap_or(after.len());
                (after[..end].trim().to_string(), &after[end..])
            };
            match key.as_str() {
                "realm" => challenge.realm = Some(value),
                "service" => challenge.service = Some(value),
                "scope" => challenge.scope = Some(value),
                _ => {}
            }
            rest = tail;
        }
        Some(challenge)
    }

    pub fn is_bearer(&self) -> bool {
        self.scheme.eq_ignore_ascii_case("bearer")
    }

    /// For messages: `Bearer realm="..."` without anything else.
    pub fn describe(&self) -> String {
        match &self.realm {
            Some(realm) => format!("{} realm=\"{realm}\"", self.scheme),
            None => self.scheme.clone(),
        }
    }
}

/// A registry token, kept for the rest of one fetch (a fetcher instance
/// lives for one fetch only, so this is the whole cache).
pub struct Token {
    value: String,
    expires: Instant,
}

impl Token {
    /// Reads the token service's JSON answer (`token` or `access_token`,
    /// `expires_in` seconds, default 60 as the spec says).
    pub fn from_response(body: &[u8], realm: &str) -> Result<Token, FetchError> {
        let json: serde_json::Value = serde_json::from_slice(body).map_err(|e| {
            FetchError::protocol(format!("token service {realm}: answer is not JSON: {e}"))
        })?;
        let value = ["token", "access_token"]
            .iter()
            .find_map(|k| {
                json.get(k)
                    .and_then(|v| v.as_str())
                    .filter(|t| !t.is_empty())
            })
            .ok_or_else(|| {
                FetchError::protocol(format!(
                    "token service {realm}: answer has no `token` or `access_token`"
                ))
            })?;
        let lifetime = json
            .get("expires_in")
            .and_then(serde_json::Value::as_u64)
            .filter(|s| *s > 0)
            .unwrap_or(60);
        Ok(Token {
            value: value.to_string(),
            expires: Instant::now() + Duration::from_secs(lifetime),
        })
    }

    /// The `Authorization` value while the token is valid.
    pub fn authorization(&self) -> Option<String> {
        (Instant::now() < self.expires).then(|| format!("Bearer {}", self.value))
    }

    pub fn lifetime_left(&self) -> Duration {
        self.expires.saturating_duration_since(Instant::now())
    }
}

/// Percent-encodes a query value (RFC 3986 unreserved characters kept).
pub fn query_escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_registry_challenges() {
        let c = Challenge::parse(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:org/repo:pull,push""#,
        )
        .unwrap();
        assert!(c.is_bearer());
        assert_eq!(c.realm.as_deref(), Some("https://auth.docker.io/token"));
        assert_eq!(c.service.as_deref(), Some("registry.docker.io"));
        assert_eq!(c.scope.as_deref(), Some("repository:org/repo:pull,push"));

        let c = Challenge::parse(r#"Basic realm="Registry Realm""#).unwrap();
        assert!(!c.is_bearer());
        assert_eq!(c.describe(), r#"Basic realm="Registry Realm""#);

        let c = Challenge::parse("Bearer realm=http://h/t, service=reg").unwrap();
        assert_eq!(c.realm.as_deref(), Some("http://h/t"));
        assert_eq!(c.service.as_deref(), Some("reg"));
    }

    #[test]
    fn reads_token_answers() {
        let t = Token::from_response(br#"{"token":"abc","expires_in":300}"#, "r").unwrap();
        assert_eq!(t.authorization().as_deref(), Some("Bearer abc"));
        assert!(t.lifetime_left() > Duration::from_secs(290));
        let t = Token::from_response(br#"{"access_token":"xyz"}"#, "r").unwrap();
        assert_eq!(t.authorization().as_deref(), Some("Bearer xyz"));
        assert!(Token::from_response(br#"{"nothing":1}"#, "r").is_err());
    }

    #[test]
    fn escapes_scopes() {
        assert_eq!(
            query_escape("repository:org/repo:pull"),
            "repository%3Aorg%2Frepo%3Apull"
        );
    }
}
