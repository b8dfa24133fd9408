//! Where the object is: its bucket and name, and the JSON API URLs of its
//! metadata and its media.

use polhost_fetcher::url::Url;
use polhost_fetcher::{FetchError, percent};

const API_PATH: &str = "/storage/v1/b/";

/// One object of one bucket, and the API root that serves it.
pub struct Object {
    /// `scheme://host[:port]` plus any path before `/storage/v1`.
    root: String,
    pub bucket: String,
    /// The object's name, decoded (`bundles/authz.tar.gz`).
    pub name: String,
    /// The query the operator wrote (OPA's `alt=media`), kept for the media.
    query: Option<String>,
}

impl Object {
    /// Reads OPA's form (`…/storage/v1/b/<bucket>/o` + `<object>?alt=media`)
    /// or polhost's (`<bucket>/<object>` under the API host).
    pub fn locate(service_url: &str, resource: &str) -> Result<Object, FetchError> {
        let joined = Url::service_path(service_url, resource)?;
        let (path, query) = match joined.path_and_query.split_once('?') {
            Some((p, q)) => (p.to_string(), Some(q.to_string())),
            None => (joined.path_and_query.clone(), None),
        };
        if let Some(at) = path.find(API_PATH) {
            let rest = &path[at + API_PATH.len()..];
            let (bucket, object) = rest.split_once("/o/").ok_or_else(|| {
                FetchError::invalid_config(format!(
                    "{joined}: expected …/storage/v1/b/<bucket>/o/<object>"
                ))
            })?;
            return Ok(Object {
                root: format!("{}{}", joined.origin(), &path[..at]),
                bucket: percent::decode(bucket),
                name: percent::decode(object),
                query,
            });
        }
        let service = Url::parse(service_url)?;
        let resource = resource.trim_start_matches('/');
        let (resource, query) = match resource.split_once('?') {
            Some((r, q)) => (r, Some(q.to_string())),
            None => (resource, None),
        };
        let (bucket, name) = resource.split_once('/').filter(|(b, n)| !b.is_empty() && !n.is_empty()).ok_or_else(|| {
            FetchError::invalid_config(format!(
                "resource {resource:?}: expected <bucket>/<object> (or a service url ending in /storage/v1/b/<bucket>/o)"
            ))
        })?;
        let base = service
            .path_and_query
            .split('?')
            .next()
            .unwrap_or("")
            .trim_end_matches('/');
        Ok(Object {
            root: format!("{}{base}", service.origin()),
            bucket: percent::decode(bucket),
            name: percent::decode(name),
            query,
        })
    }

    fn object_path(&self) -> String {
        format!(
            "{}{API_PATH}{}/o/{}",
            self.root,
            percent::encode(&self.bucket, false),
            percent::encode(&self.name, false)
        )
    }

    /// The object's metadata (no media).
    pub fn metadata_url(&self) -> Result<Url, FetchError> {
        Url::parse(&self.object_path())
    }

    /// The object's media, pinned to `generation` when known.
    pub fn media_url(&self, generation: Option<&str>) -> Result<Url, FetchError> {
        let mut params: Vec<String> = self
            .query
            .iter()
            .flat_map(|q| q.split('&'))
            .filter(|p| {
                !p.is_empty() && !p.starts_with("alt=") && !p.starts_with("ifGenerationMatch=")
            })
            .map(str::to_string)
            .collect();
        params.insert(0, "alt=media".to_string());
        if let Some(generation) = generation {
            params.push(format!(
                "ifGenerationMatch={}",
                percent::encode(generation, false)
            ));
        }
        Url::parse(&format!("{}?{}", self.object_path(), params.join("&")))
    }
}

impl std::fmt::Display for Object {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "gs://{}/{}", self.bucket, self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_opa_form_and_bucket_slash_object_form() {
        let opa = Object::locate(
            "https://storage.googleapis.com/storage/v1/b/opa-docs/o",
            "bundles%2Fauthz.tar.gz?alt=media",
        )
        .unwrap();
        assert_eq!(opa.to_string(), "gs://opa-docs/bundles/authz.tar.gz");
        assert_eq!(
            opa.metadata_url().unwrap().path_and_query,
            "/storage/v1/b/opa-docs/o/bundles%2Fauthz.tar.gz"
        );
        assert_eq!(
            opa.media_url(Some("17")).unwrap().path_and_query,
            "/storage/v1/b/opa-docs/o/bundles%2Fauthz.tar.gz?alt=media&ifGenerationMatch=17"
        );
        let friendly =
            Object::locate("http://127.0.0.1:4443", "opa-docs/bundles/authz.tar.gz").unwrap();
        assert_eq!(friendly.to_string(), "gs://opa-docs/bundles/authz.tar.gz");
        assert_eq!(
            friendly.metadata_url().unwrap().to_string(),
            "http://127.0.0.1:4443/storage/v1/b/opa-docs/o/bundles%2Fauthz.tar.gz"
        );
        assert!(Object::locate("http://h", "only-a-bucket").is_err());
    }
}
