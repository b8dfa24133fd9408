//! Blob URLs: the join of service URL and resource, its path encoded
//! once, and the account / container / blob it names (for messages and
//! for SharedKey's canonicalized resource).

use polhost_fetcher::url::Url;
use polhost_fetcher::{FetchError, percent};

/// The blob's URL: OPA's join, the path decoded and encoded again so that
/// the path sent is the path signed. A query in the service URL is refused:
/// SAS tokens belong in `credentials.azure_sas`.
pub fn blob_url(service_url: &str, resource: &str) -> Result<Url, FetchError> {
    let mut url = Url::service_path(service_url, resource)?;
    if url.path_and_query.contains('?') {
        return Err(FetchError::invalid_config(format!(
            "{url}: the service url and resource must not carry a query; put a SAS token in credentials.azure_sas.token"
        )));
    }
    url.path_and_query = percent::encode(&percent::decode(&url.path_and_query), true);
    Ok(url)
}

/// The account, container and blob a URL names: `<account>.blob.…` hosts
/// carry the account, other (emulator, path-style) URLs start their path
/// with it.
pub struct Blob {
    pub account: String,
    pub container: String,
    pub blob: String,
}

impl Blob {
    pub fn of(url: &Url) -> Blob {
        let path = url.path_and_query.split('?').next().unwrap_or("/");
        let path = percent::decode(path.trim_start_matches('/'));
        let host = url.authority.split(':').next().unwrap_or("");
        let (account, rest) = match host.split_once('.') {
            Some((account, domain)) if domain.starts_with("blob.") => {
                (account.to_string(), path.as_str())
            }
            _ => {
                let (account, rest) = path.split_once('/').unwrap_or((&path, ""));
                (account.to_string(), rest)
            }
        };
        let (container, blob) = rest.split_once('/').unwrap_or((rest, ""));
        Blob {
            account,
            container: container.to_string(),
            blob: blob.to_string(),
        }
    }
}

impl std::fmt::Display for Blob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "container {:?} blob {:?} (account {})",
            self.container, self.blob, self.account
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_account_container_and_blob_in_both_url_styles() {
        let emulator = blob_url(
            "http://127.0.0.1:10000/devstoreaccount1/bundles",
            "a b.tar.gz",
        )
        .unwrap();
        assert_eq!(
            emulator.path_and_query,
            "/devstoreaccount1/bundles/a%20b.tar.gz"
        );
        let b = Blob::of(&emulator);
        assert_eq!(
            (b.account.as_str(), b.container.as_str(), b.blob.as_str()),
            ("devstoreaccount1", "bundles", "a b.tar.gz")
        );
        let cloud = blob_url(
            "https://acct.blob.core.windows.net/bundles",
            "x/authz.tar.gz",
        )
        .unwrap();
        let b = Blob::of(&cloud);
        assert_eq!(
            (b.account.as_str(), b.container.as_str(), b.blob.as_str()),
            ("acct", "bundles", "x/authz.tar.gz")
        );
        assert!(blob_url("https://acct.blob.core.windows.net/c?sig=x", "b").is_err());
    }
}
