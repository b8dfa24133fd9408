//! A [`Grant`]: the capabilities the host gives one service's fetcher,
//! derived from the configuration. Nothing is ambient: an origin, a file or
//! an environment variable a fetcher may use is listed here or refused.

use std::fmt;
use std::path::PathBuf;

/// A `scheme://host:port` a fetcher may send requests to.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Origin {
    scheme: String,
    host: String,
    port: u16,
}

impl Origin {
    /// The origin of an absolute http(s) URL; `None` for anything else.
    pub fn of_url(url: &str) -> Option<Origin> {
        let uri: http::Uri = url.parse().ok()?;
        Self::of_uri(&uri)
    }

    /// The origin of a request URI; `None` unless it is absolute http(s).
    pub fn of_uri(uri: &http::Uri) -> Option<Origin> {
        let scheme = uri.scheme_str()?.to_ascii_lowercase();
        let default_port = match scheme.as_str() {
            "http" => 80,
            "https" => 443,
            _ => return None,
        };
        let host = uri.host()?.to_ascii_lowercase();
        Some(Origin {
            port: uri.port_u16().unwrap_or(default_port),
            scheme,
            host,
        })
    }

    /// Its host without an IPv6 address's brackets: a lowercased name or
    /// an address.
    pub fn host(&self) -> &str {
        self.host.trim_start_matches('[').trim_end_matches(']')
    }

    /// Its host, when that is a literal address.
    pub fn host_ip(&self) -> Option<std::net::IpAddr> {
        self.host().parse().ok()
    }

    pub(crate) fn host_eq(&self, host: &str) -> bool {
        self.host().eq_ignore_ascii_case(host)
    }
}

/// `uri` as refusals and failures show it: without its query, which can
/// carry a credential (a SAS token).
pub(crate) fn shown_url(uri: &http::Uri) -> String {
    format!(
        "{}://{}{}",
        uri.scheme_str().unwrap_or("?"),
        uri.authority().map(|a| a.as_str()).unwrap_or("?"),
        uri.path()
    )
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}:{}", self.scheme, self.host, self.port)
    }
}

/// Whether a fetch may reach origins it learns from the responses of its
/// granted origins, and which.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OriginPolicy {
    /// Only the granted origins, ever (the `http` fetcher: a redirect to
    /// another origin is refused).
    #[default]
    Fixed,
    /// Also, for the rest of one fetch, the origin of a `Location` in a 3xx
    /// response and of the `realm` in a `WWW-Authenticate: Bearer`
    /// challenge, when that response came from a granted origin (one hop:
    /// a learned origin teaches nothing). Registries send blobs to CDNs and
    /// clients to token services that no configuration names (`oci`).
    LearnRedirectsAndTokenRealms,
}

/// What one service's fetcher may use. Shown by debug logs at start, so an
/// operator can read the whole sandbox of a service in one line.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Grant {
    /// The service these capabilities belong to.
    pub service: String,
    /// Origins outgoing requests may reach (the service URL's first).
    pub origins: Vec<Origin>,
    /// Whether origins learned during a fetch are reachable too.
    pub policy: OriginPolicy,
    /// Files `read-granted-file` may read (credential files the service's
    /// configuration names).
    pub files: Vec<PathBuf>,
    /// Environment variables `granted-env` may read.
    pub env: Vec<String>,
}

impl Grant {
    /// Adds an origin (once).
    pub fn add_origin(&mut self, origin: Origin) {
        if !self.origins.contains(&origin) {
            self.origins.push(origin);
        }
    }

    /// Adds the origin of an absolute http(s) URL (once); anything else is
    /// ignored.
    pub fn add_origin_of_url(&mut self, url: &str) {
        if let Some(origin) = Origin::of_url(url) {
            self.add_origin(origin);
        }
    }

    /// Adds a readable file (once).
    pub fn add_file(&mut self, path: PathBuf) {
        if !self.files.contains(&path) {
            self.files.push(path);
        }
    }

    /// Adds a readable environment variable (once).
    pub fn add_env(&mut self, name: &str) {
        if !self.env.iter().any(|n| n == name) {
            self.env.push(name.to_string());
        }
    }

    /// Whether requests may go to `origin`.
    pub fn allows_origin(&self, origin: &Origin) -> bool {
        self.origins.contains(origin)
    }

    /// A one-line description for logs and `plugin inspect`.
    pub fn describe(&self) -> String {
        let list = |items: Vec<String>| {
            if items.is_empty() {
                "none".to_string()
            } else {
                items.join(", ")
            }
        };
        let learned = match self.policy {
            OriginPolicy::Fixed => "",
            OriginPolicy::LearnRedirectsAndTokenRealms => {
                " (+ per fetch: redirect targets and token realms they name)"
            }
        };
        format!(
            "origins: {}{learned}; files: {}; env: {}",
            list(self.origins.iter().map(Origin::to_string).collect()),
            list(self.files.iter().map(|p| p.display().to_string()).collect()),
            list(self.env.clone()),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describe_names_every_capability_and_the_learning_policy() {
        let mut grant = Grant {
            service: "reg".into(),
            policy: OriginPolicy::LearnRedirectsAndTokenRealms,
            ..Grant::default()
        };
        grant.add_origin_of_url("https://registry.example.com/v2");
        grant.add_origin_of_url("https://registry.example.com");
        grant.add_file("/run/token".into());
        grant.add_env("AWS_REGION");
        grant.add_env("AWS_REGION");
        assert_eq!(
            grant.describe(),
            "origins: https://registry.example.com:443 (+ per fetch: redirect targets and token realms they name); files: /run/token; env: AWS_REGION"
        );
    }

    #[test]
    fn origin_normalises_default_ports_and_case() {
        assert_eq!(
            Origin::of_url("HTTP://Example.COM/x").unwrap(),
            Origin::of_url("http://example.com:80/y").unwrap()
        );
        assert_ne!(
            Origin::of_url("http://example.com/").unwrap(),
            Origin::of_url("https://example.com/").unwrap()
        );
        assert_ne!(
            Origin::of_url("http://127.0.0.1:8080/").unwrap(),
            Origin::of_url("http://127.0.0.1:8081/").unwrap()
        );
        assert!(Origin::of_url("file:///etc/passwd").is_none());
        assert!(Origin::of_url("/relative").is_none());
    }
}
