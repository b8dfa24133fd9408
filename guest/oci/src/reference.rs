//! The bundle's `resource` as an image reference: repository plus tag or
//! digest. Owns parsing and validation only; the registry host always comes
//! from the service `url`, as in OPA.

use std::fmt;

use polhost_fetcher::FetchError;

/// What to resolve in the repository.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// A tag: resolved again on every poll.
    Tag(String),
    /// A manifest digest (`sha256:<hex>`): immutable.
    Digest(String),
}

/// A parsed `resource`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reference {
    /// `org/repo`, without the registry host.
    pub repository: String,
    pub target: Target,
}

impl Reference {
    /// Parses `[host/]repository[:tag][@sha256:hex]`. A leading component
    /// that looks like a host (has a `.` or `:`, is `localhost`, or is the
    /// service's own `authority`) is dropped. No tag and no digest means
    /// `latest`.
    pub fn parse(resource: &str, authority: &str, bundle: &str) -> Result<Reference, FetchError> {
        let invalid = |why: &str| {
            FetchError::invalid_config(format!(
                "bundles.{bundle}.resource: {resource:?} is not an image reference ([registry/]repository[:tag|@sha256:digest]): {why}"
            ))
        };
        let mut rest = resource.trim().trim_start_matches('/');
        if let Some((first, tail)) = rest.split_once('/')
            && (first.contains(['.', ':'])
                || first == "localhost"
                || first.eq_ignore_ascii_case(authority))
        {
            rest = tail;
        }
        let (name, target) = match rest.split_once('@') {
            Some((name, digest)) => {
                let name = match name.rsplit_once(':') {
                    Some((n, tag)) if !tag.contains('/') => n,
                    _ => name,
                };
                check_digest(digest).map_err(|why| invalid(&why))?;
                (name, Target::Digest(digest.to_string()))
            }
            None => match rest.rsplit_once(':') {
                Some((name, tag)) if !tag.contains('/') => {
                    check_tag(tag).map_err(|why| invalid(&why))?;
                    (name, Target::Tag(tag.to_string()))
                }
                _ => (rest, Target::Tag("latest".to_string())),
            },
        };
        check_repository(name).map_err(|why| invalid(&why))?;
        Ok(Reference {
            repository: name.to_string(),
            target,
        })
    }

    /// The tag or digest, as it goes in a manifest URL.
    pub fn target(&self) -> &str {
        match &self.target {
            Target::Tag(t) | Target::Digest(t) => t,
        }
    }
}

/// `repo:tag` or `repo@sha256:...`, for messages.
impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.target {
            Target::Tag(tag) => write!(f, "{}:{tag}", self.repository),
            Target::Digest(digest) => write!(f, "{}@{digest}", self.repository),
        }
    }
}

/// `sha256:` and 64 lowercase hex digits (the only algorithm the host
/// verifies).
pub fn check_digest(digest: &str) -> Result<(), String> {
    match digest.strip_prefix("sha256:") {
        Some(hex)
            if hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) =>
        {
            Ok(())
        }
        _ => Err(format!(
            "digest {digest:?} is not sha256:<64 lowercase hex digits>"
        )),
    }
}

fn check_tag(tag: &str) -> Result<(), String> {
    let ok = !tag.is_empty()
        && tag.len() <= 128
        && tag
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
        && !tag.starts_with(['.', '-']);
    if ok {
        Ok(())
    } else {
        Err(format!("tag {tag:?} is not valid"))
    }
}

fn check_repository(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.split('/').all(|part| {
            !part.is_empty()
                && part.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
                })
                && part.starts_with(|c: char| c.is_ascii_alphanumeric())
                && part.ends_with(|c: char| c.is_ascii_alphanumeric())
        });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "repository {name:?} must be lowercase path components of letters, digits and . _ -"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn parse(resource: &str) -> Reference {
        Reference::parse(resource, "127.0.0.1:5000", "b").unwrap()
    }

    #[test]
    fn strips_the_registry_host_like_opa() {
        assert_eq!(parse("ghcr.io/org/repo:v1").to_string(), "org/repo:v1");
        assert_eq!(
            parse("127.0.0.1:5000/org/repo:v1").to_string(),
            "org/repo:v1"
        );
        assert_eq!(parse("localhost/repo").to_string(), "repo:latest");
        assert_eq!(parse("org/repo:v1").to_string(), "org/repo:v1");
        assert_eq!(
            parse("registry:5000/org/repo").to_string(),
            "org/repo:latest"
        );
    }

    #[test]
    fn digest_wins_over_tag() {
        let r = parse(&format!("ghcr.io/org/repo:v1@{D}"));
        assert_eq!(r.repository, "org/repo");
        assert_eq!(r.target, Target::Digest(D.into()));
        assert_eq!(parse(&format!("org/repo@{D}")).target(), D);
    }

    #[test]
    fn refuses_malformed_references() {
        for bad in [
            "",
            "Org/Repo:v1",
            "org/repo@sha256:abc",
            "org//repo",
            "org/repo:-x",
            "org/repo:",
        ] {
            assert!(Reference::parse(bad, "h", "b").is_err(), "{bad:?}");
        }
    }
}
