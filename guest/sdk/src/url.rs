//! The little URL handling a fetcher needs: split an absolute http(s) URL
//! into scheme, authority and path, compare origins, resolve a redirect's
//! `Location`. (A full URL crate would double a fetcher's size.)

use crate::FetchError;
use std::fmt;

/// An absolute `http://` or `https://` URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Url {
    /// `http` or `https`, lowercase.
    pub scheme: String,
    /// `host[:port]`, lowercase host.
    pub authority: String,
    /// Path and query, starting with `/`.
    pub path_and_query: String,
}

impl Url {
    /// Parses an absolute http(s) URL.
    pub fn parse(text: &str) -> Result<Url, FetchError> {
        let invalid =
            |why: &str| FetchError::invalid_config(format!("invalid URL {text:?}: {why}"));
        let (scheme, rest) = text
            .split_once("://")
            .ok_or_else(|| invalid("not absolute"))?;
        let scheme = scheme.to_ascii_lowercase();
        if scheme != "http" && scheme != "https" {
            return Err(invalid("scheme must be http or https"));
        }
        let (authority, path) = match rest.find(['/', '?', '#']) {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if authority.is_empty() || authority.contains('@') {
            return Err(invalid("needs a host and no user info"));
        }
        let path = path.split('#').next().unwrap_or("/");
        let path_and_query = if path.starts_with('/') {
            path.to_string()
        } else {
            format!("/{path}")
        };
        Ok(Url {
            scheme,
            authority: authority.to_ascii_lowercase(),
            path_and_query,
        })
    }

    /// `scheme://authority`: two URLs with the same origin may share
    /// credentials.
    pub fn origin(&self) -> String {
        format!("{}://{}", self.scheme, self.authority)
    }

    /// Resolves a redirect's `Location` against this URL.
    pub fn join(&self, location: &str) -> Result<Url, FetchError> {
        if location.contains("://") {
            Url::parse(location)
        } else if let Some(rest) = location.strip_prefix("//") {
            Url::parse(&format!("{}://{rest}", self.scheme))
        } else if location.starts_with('/') {
            Url::parse(&format!("{}{location}", self.origin()))
        } else {
            let path = self.path_and_query.split('?').next().unwrap_or("/");
            let dir = &path[..=path.rfind('/').unwrap_or(0)];
            Url::parse(&format!("{}{dir}{location}", self.origin()))
        }
    }

    /// OPA's join of a service URL and a resource path: exactly one `/`
    /// between them.
    pub fn service_path(service_url: &str, resource: &str) -> Result<Url, FetchError> {
        Url::parse(&format!(
            "{}/{}",
            service_url.trim_end_matches('/'),
            resource.trim_start_matches('/')
        ))
    }
}

/// Shown without its query: a query can carry a credential (a SAS token,
/// a presigned signature), and this is what messages print.
impl fmt::Display for Url {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.path_and_query.split_once('?') {
            Some((path, _)) => write!(f, "{}{path}?…", self.origin()),
            None => write!(f, "{}{}", self.origin(), self.path_and_query),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_joins() {
        let u = Url::parse("HTTP://Example.com:8080/a/b?x=1").unwrap();
        assert_eq!(u.origin(), "http://example.com:8080");
        assert_eq!(u.path_and_query, "/a/b?x=1");
        assert_eq!(
            u.join("c").unwrap().to_string(),
            "http://example.com:8080/a/c"
        );
        assert_eq!(
            u.join("/d").unwrap().to_string(),
            "http://example.com:8080/d"
        );
        assert_eq!(u.join("https://other/e").unwrap().origin(), "https://other");
        assert_eq!(
            Url::service_path("http://h/api/", "/bundles/x")
                .unwrap()
                .to_string(),
            "http://h/api/bundles/x"
        );
        assert_eq!(
            Url::parse("https://h/b?sig=SECRET").unwrap().to_string(),
            "https://h/b?…"
        );
        assert!(Url::parse("ftp://h/x").is_err());
        assert!(Url::parse("http://user:pw@h/x").is_err());
    }
}
