//! OCI image manifests and indexes (and their Docker v2 equivalents): which
//! documents to ask for, how to tell them apart, and which layer of a
//! manifest is the bundle. Pure parsing: no requests.

use serde_json::Value;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

/// Every manifest type polhost reads, for `Accept` (docker-registry answers
/// 404 for an OCI manifest unless the request accepts it).
pub const ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json";

/// The bundle layer's media type: what `opa build` output pushed with
/// oras, opcr's `policy` CLI and OPA use.
pub const BUNDLE_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// The same bytes in a Docker v2 schema 2 manifest (what `skopeo copy
/// --format v2s2` turns the OCI type into).
pub const DOCKER_GZIP_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

/// A content descriptor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Descriptor {
    pub media_type: String,
    pub digest: String,
    pub size: Option<u64>,
}

/// An entry of an index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IndexEntry {
    pub descriptor: Descriptor,
    /// `os/architecture`, when the entry has a platform.
    pub platform: Option<String>,
}

impl IndexEntry {
    /// Build attestations (BuildKit provenance, SBOMs) are listed with the
    /// platform `unknown/unknown`.
    pub fn is_attestation(&self) -> bool {
        self.platform.as_deref() == Some("unknown/unknown")
    }
}

/// A manifest document, by kind.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Document {
    Index(Vec<IndexEntry>),
    Manifest {
        media_type: String,
        layers: Vec<Descriptor>,
    },
}

impl Document {
    /// Parses a manifest body; `content_type` is the response's.
    pub fn parse(body: &[u8], content_type: Option<&str>) -> Result<Document, String> {
        let json: Value =
            serde_json::from_slice(body).map_err(|e| format!("not a JSON manifest: {e}"))?;
        let declared = json
            .get("mediaType")
            .and_then(Value::as_str)
            .or(content_type.map(|c| c.split(';').next().unwrap_or(c).trim()))
            .unwrap_or("");
        let is_index = declared == OCI_INDEX
            || declared == DOCKER_LIST
            || (json.get("manifests").is_some() && json.get("layers").is_none());
        if is_index {
            let entries = json
                .get("manifests")
                .and_then(Value::as_array)
                .ok_or("index without `manifests`")?
                .iter()
                .map(|entry| {
                    let platform = entry.get("platform").map(|p| {
                        let field = |k| p.get(k).and_then(Value::as_str).unwrap_or("");
                        format!("{}/{}", field("os"), field("architecture"))
                    });
                    Ok(IndexEntry {
                        descriptor: descriptor(entry)?,
                        platform,
                    })
                })
                .collect::<Result<_, String>>()?;
            return Ok(Document::Index(entries));
        }
        if json.get("schemaVersion").and_then(Value::as_u64) == Some(1) {
            return Err("Docker schema 1 manifests are not supported".into());
        }
        let layers = match json.get("layers") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(layers)) => {
                layers.iter().map(descriptor).collect::<Result<_, _>>()?
            }
            Some(_) => return Err("`layers` is not a list".into()),
        };
        Ok(Document::Manifest {
            media_type: if declared.is_empty() {
                OCI_MANIFEST
            } else {
                declared
            }
            .to_string(),
            layers,
        })
    }
}

/// The bundle layer of a manifest: the first `tar+gzip` OCI layer, else (in
/// a Docker v2 manifest) the first Docker gzip layer.
pub fn bundle_layer(layers: &[Descriptor]) -> Option<&Descriptor> {
    layers
        .iter()
        .find(|l| l.media_type == BUNDLE_LAYER)
        .or_else(|| layers.iter().find(|l| l.media_type == DOCKER_GZIP_LAYER))
}

fn descriptor(value: &Value) -> Result<Descriptor, String> {
    let digest = value
        .get("digest")
        .and_then(Value::as_str)
        .ok_or("a descriptor has no `digest`")?;
    Ok(Descriptor {
        media_type: value
            .get("mediaType")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string(),
        digest: digest.to_string(),
        size: value.get("size").and_then(Value::as_u64),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_an_opa_bundle_manifest() {
        let body = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",
            "config":{"mediaType":"application/vnd.oci.empty.v1+json","digest":"sha256:44","size":2},
            "layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"sha256:aa","size":1},
                      {"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:bb","size":7}]}"#;
        let Document::Manifest { layers, .. } = Document::parse(body, None).unwrap() else {
            panic!("not a manifest");
        };
        let layer = bundle_layer(&layers).unwrap();
        assert_eq!(layer.digest, "sha256:bb");
        assert_eq!(layer.size, Some(7));
    }

    #[test]
    fn reads_an_index_with_an_attestation() {
        let body = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[
            {"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:aa","size":1,"platform":{"os":"linux","architecture":"amd64"}},
            {"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:bb","size":1,"platform":{"os":"unknown","architecture":"unknown"}}]}"#;
        let Document::Index(entries) = Document::parse(body, None).unwrap() else {
            panic!("not an index");
        };
        assert!(!entries[0].is_attestation());
        assert!(entries[1].is_attestation());
    }

    #[test]
    fn kind_comes_from_content_type_when_the_body_has_none() {
        let body = br#"{"schemaVersion":2,"manifests":[]}"#;
        assert_eq!(
            Document::parse(body, Some(DOCKER_LIST)).unwrap(),
            Document::Index(vec![])
        );
        assert!(Document::parse(br#"{"schemaVersion":1}"#, None).is_err());
    }
}
