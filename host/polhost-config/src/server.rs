//! `polhost.server`: where `polhost run` serves its local API (the active
//! bundles, health, status, metrics) and the bearer token it requires.
//! Owns their parsing and field-path errors; whether an address may be
//! bound without a token is the caller's rule (it also sees `--addr`).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;

use polhost_bundle::Secret;

use super::error::ConfigError;
use super::tree::{self, Node};

/// `polhost.server`. Without `addr` (here or on the command line) no
/// server runs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServerSettings {
    /// `addr`: `IP:PORT`, `localhost:PORT` or OPA's `:PORT` (every
    /// interface).
    pub addr: Option<SocketAddr>,
    /// `token`: the bearer token every request must carry.
    pub token: Option<Secret>,
    /// `token_path`: a file holding the token (read by
    /// [`ServerSettings::read_token`], surrounding whitespace trimmed).
    pub token_path: Option<PathBuf>,
}

const SERVER: &str = "polhost.server";
const KEYS: &[&str] = &["addr", "token", "token_path"];

impl ServerSettings {
    /// The token: `token`, or the content of `token_path` (whitespace
    /// around it trimmed, as a file written by `echo` ends in a newline).
    /// An unreadable or empty file is an error naming the field and the
    /// path, never the content.
    pub fn read_token(&self) -> Result<Option<Secret>, ConfigError> {
        if let Some(token) = &self.token {
            return Ok(Some(token.clone()));
        }
        let Some(path) = &self.token_path else {
            return Ok(None);
        };
        let field = tree::join(SERVER, "token_path");
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigError::invalid(&field, format!("cannot read {}: {e}", path.display()))
        })?;
        let token = text.trim();
        if token.is_empty() {
            return Err(ConfigError::invalid(
                field,
                format!("{} is empty", path.display()),
            ));
        }
        Ok(Some(Secret::new(token.to_string())))
    }
}

/// Reads `polhost.server`; an unknown key is an error naming it (a typo in
/// a security setting must not pass silently).
pub(crate) fn parse(node: Option<&Node>) -> Result<ServerSettings, ConfigError> {
    let Some(node) = node else {
        return Ok(ServerSettings::default());
    };
    let mut settings = ServerSettings::default();
    for (key, value) in node.entries(SERVER)? {
        let field = tree::join(SERVER, key);
        match key.as_str() {
            "addr" => {
                settings.addr = value
                    .opt_str(&field)?
                    .map(|addr| parse_addr(addr).map_err(|e| ConfigError::invalid(&field, e)))
                    .transpose()?;
            }
            // opt_str names only the kind of a wrong value: safe for a
            // secret.
            "token" => settings.token = non_empty(value.opt_str(&field)?, &field)?.map(Secret::new),
            "token_path" => {
                settings.token_path = non_empty(value.opt_str(&field)?, &field)?.map(PathBuf::from)
            }
            _ => {
                return Err(ConfigError::invalid(
                    field,
                    format!("unknown field, expected one of {}", KEYS.join(", ")),
                ));
            }
        }
    }
    if settings.token.is_some() && settings.token_path.is_some() {
        return Err(ConfigError::invalid(
            SERVER,
            "token and token_path are mutually exclusive: set only one",
        ));
    }
    Ok(settings)
}

fn non_empty(value: Option<&str>, field: &str) -> Result<Option<String>, ConfigError> {
    match value {
        Some("") => Err(ConfigError::invalid(field, "must not be empty")),
        other => Ok(other.map(str::to_string)),
    }
}

/// Parses a listen address as OPA's `--addr` takes it: `IP:PORT`
/// (`[::1]:PORT` for IPv6), `localhost:PORT` (IPv4 loopback), or `:PORT`
/// (every interface). The message says what was expected, for the caller
/// to prefix with the field or flag.
pub fn parse_addr(text: &str) -> Result<SocketAddr, String> {
    let expected = || format!("{text:?} is not IP:PORT, localhost:PORT or :PORT");
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let (host, port) = text.rsplit_once(':').ok_or_else(expected)?;
    let port: u16 = port.parse().map_err(|_| expected())?;
    let ip = match host {
        "" => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        "localhost" => IpAddr::V4(Ipv4Addr::LOCALHOST),
        "[::]" => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        _ => return Err(expected()),
    };
    Ok(SocketAddr::new(ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::{error, parse};

    #[test]
    fn absent_section_means_no_server() {
        let settings = parse("").server;
        assert_eq!(settings, ServerSettings::default());
        assert_eq!(settings.read_token().unwrap(), None);
    }

    #[test]
    fn every_field_is_read() {
        let config = parse("polhost:\n  server:\n    addr: 127.0.0.1:8282\n    token: ${TOKEN}\n");
        let server = &config.server;
        assert_eq!(server.addr, Some("127.0.0.1:8282".parse().unwrap()));
        assert_eq!(
            server.read_token().unwrap().as_ref().map(Secret::expose),
            Some("s3cr3t-t0ken")
        );
        assert!(config.ignored_keys.is_empty(), "{:?}", config.ignored_keys);
        assert!(!format!("{config:?}").contains("s3cr3t"));
    }

    #[test]
    fn addr_takes_opa_forms() {
        let ok = |text: &str| parse_addr(text).unwrap().to_string();
        assert_eq!(ok("127.0.0.1:8282"), "127.0.0.1:8282");
        assert_eq!(ok("[::1]:9"), "[::1]:9");
        assert_eq!(ok("localhost:8181"), "127.0.0.1:8181");
        assert_eq!(ok(":8181"), "0.0.0.0:8181");
        for bad in [
            "8282",
            "example.com:80",
            "127.0.0.1:",
            "127.0.0.1:99999",
            "",
        ] {
            assert!(parse_addr(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn token_path_is_read_and_trimmed() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "  from-a-file\n").unwrap();
        let config = parse(&format!(
            "polhost:\n  server:\n    token_path: {}\n",
            file.display()
        ));
        let token = config.server.read_token().unwrap().unwrap();
        assert_eq!(token.expose(), "from-a-file");

        std::fs::write(&file, "\n").unwrap();
        let message = config.server.read_token().unwrap_err().to_string();
        assert_eq!(
            message,
            format!("polhost.server.token_path: {} is empty", file.display())
        );
        let missing = ServerSettings {
            token_path: Some(dir.path().join("nope")),
            ..ServerSettings::default()
        };
        let message = missing.read_token().unwrap_err().to_string();
        assert!(
            message.starts_with("polhost.server.token_path: cannot read "),
            "{message}"
        );
    }

    #[test]
    fn errors_name_the_field_and_never_the_token() {
        assert_eq!(
            error("polhost:\n  server:\n    adr: 127.0.0.1:1\n"),
            "polhost.server.adr: unknown field, expected one of addr, token, token_path"
        );
        assert_eq!(
            error("polhost:\n  server:\n    addr: somewhere\n"),
            "polhost.server.addr: \"somewhere\" is not IP:PORT, localhost:PORT or :PORT"
        );
        assert_eq!(
            error("polhost:\n  server:\n    token: a\n    token_path: /b\n"),
            "polhost.server: token and token_path are mutually exclusive: set only one"
        );
        assert_eq!(
            error("polhost:\n  server:\n    token: ''\n"),
            "polhost.server.token: must not be empty"
        );
        let message = error("polhost:\n  server:\n    token: [123456]\n");
        assert!(
            message.starts_with("polhost.server.token: invalid type")
                && !message.contains("123456"),
            "{message}"
        );
        assert!(error("polhost:\n  server: 3\n").starts_with("polhost.server: invalid type"));
    }
}
