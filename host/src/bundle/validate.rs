//! The streaming validator: gzip, then tar, entry by entry.
//!
//! This is the minimum OPA's loader would also refuse (a stream that is not
//! gzip or tar, a truncated one, a `.manifest` or `data.json` that does not
//! parse, entries over the size limit) plus what polhost refuses on top:
//! anything but regular files and directories, absolute paths and `..`.

use std::io::{self, Read};

use flate2::read::MultiGzDecoder;

use super::Manifest;

/// Bounds on what a bundle may contain.
#[derive(Clone, Copy, Debug)]
pub struct ValidationLimits {
    /// The largest size of one file in the bundle (`size_limit_bytes`).
    pub file_size_limit: u64,
}

/// What validation learnt about a good bundle.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct BundleSummary {
    /// The `.manifest`, if the bundle has one.
    pub manifest: Option<Manifest>,
    /// How many regular files the bundle holds.
    pub files: u64,
    /// Their total size, uncompressed.
    pub uncompressed_bytes: u64,
}

impl BundleSummary {
    /// The manifest's revision, or "" (OPA's revision of a bundle without
    /// one).
    pub fn revision(&self) -> &str {
        self.manifest
            .as_ref()
            .and_then(|m| m.revision.as_deref())
            .unwrap_or("")
    }
}

/// Why a bundle was refused. Each names the entry at fault where there is
/// one.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BundleError {
    #[error("not a gzip stream: {0}")]
    NotGzip(io::Error),
    #[error("corrupt or truncated archive: {0}")]
    Corrupt(io::Error),
    #[error("entry {path:?}: {reason}")]
    Entry { path: String, reason: String },
    #[error("entry {path:?}: {size} bytes exceeds size_limit_bytes ({limit})")]
    FileTooLarge { path: String, size: u64, limit: u64 },
    #[error("{path}: invalid {what}: {message}")]
    Malformed {
        path: String,
        what: &'static str,
        message: String,
    },
    #[error("reading the bundle: {0}")]
    Io(io::Error),
}

/// Reads a gzipped tar bundle to its end and checks it.
pub fn validate(reader: impl Read, limits: ValidationLimits) -> Result<BundleSummary, BundleError> {
    // Every gzip member, as Go's reader (OPA) reads them all: a second
    // member must not slip past validation.
    let mut gz = MultiGzDecoder::new(reader);
    // Read the header eagerly so "not gzip" is told apart from "corrupt".
    if gz.header().is_none() {
        let mut probe = [0u8; 0];
        gz.read(&mut probe).map_err(BundleError::NotGzip)?;
        if gz.header().is_none() {
            return Err(BundleError::NotGzip(io::Error::new(
                io::ErrorKind::InvalidData,
                "missing gzip header",
            )));
        }
    }
    let mut archive = tar::Archive::new(gz);
    let mut summary = BundleSummary::default();
    let entries = archive.entries().map_err(BundleError::Corrupt)?;
    for entry in entries {
        let mut entry = entry.map_err(BundleError::Corrupt)?;
        let path = entry_path(&entry)?;
        let kind = entry.header().entry_type();
        if kind.is_dir() {
            continue;
        }
        if !kind.is_file() {
            return Err(BundleError::Entry {
                path,
                reason: format!("{kind:?} entries are not allowed (regular files only)"),
            });
        }
        let size = entry.header().size().map_err(BundleError::Corrupt)?;
        if size > limits.file_size_limit {
            return Err(BundleError::FileTooLarge {
                path,
                size,
                limit: limits.file_size_limit,
            });
        }
        summary.files += 1;
        summary.uncompressed_bytes += size;
        let name = path.as_str();
        if name == ".manifest" {
            summary.manifest = Some(parse_json(&path, "manifest", &mut entry)?);
        } else if name == "data.json" || name.ends_with("/data.json") {
            // Checked as JSON without building it: data files can be large.
            let _: serde::de::IgnoredAny = parse_json(&path, "data.json", &mut entry)?;
        }
        // Whatever the entry, read it to its end: the tar reader must pass
        // over it anyway, and a truncation inside it must surface here.
        io::copy(&mut entry, &mut io::sink()).map_err(BundleError::Corrupt)?;
    }
    // Consume the rest of the gzip stream, so its CRC and length are checked.
    let mut rest = archive.into_inner();
    io::copy(&mut rest, &mut io::sink()).map_err(BundleError::Corrupt)?;
    Ok(summary)
}

/// The entry's path relative to the bundle root, refused if it could reach
/// outside the bundle.
///
/// Paths in a bundle are bundle-root paths: `opa build` writes them with a
/// leading `/` (`/data.json`) and `tar -C dir .` with `./`; both mean the
/// same file as `data.json` and are normalised to it. A path that still
/// starts with `/` after that (`//etc/x`), or has a `..` segment, is refused.
fn entry_path<R: Read>(entry: &tar::Entry<'_, R>) -> Result<String, BundleError> {
    let raw = entry.path_bytes();
    let written = String::from_utf8(raw.to_vec()).map_err(|_| BundleError::Entry {
        path: String::from_utf8_lossy(&raw).into_owned(),
        reason: "name is not UTF-8".into(),
    })?;
    let path = written
        .strip_prefix("./")
        .or_else(|| written.strip_prefix('/'))
        .unwrap_or(&written);
    if path.starts_with('/') {
        return Err(BundleError::Entry {
            path: written,
            reason: "absolute paths are not allowed".into(),
        });
    }
    if path.split(['/', '\\']).any(|segment| segment == "..") {
        return Err(BundleError::Entry {
            path: written,
            reason: "`..` segments are not allowed".into(),
        });
    }
    Ok(path.to_string())
}

fn parse_json<T: serde::de::DeserializeOwned>(
    path: &str,
    what: &'static str,
    reader: impl Read,
) -> Result<T, BundleError> {
    serde_json::from_reader(io::BufReader::new(reader)).map_err(|e| {
        if e.is_io() {
            // The archive broke under the parser: not the file's fault.
            BundleError::Corrupt(e.into())
        } else {
            BundleError::Malformed {
                path: path.to_string(),
                what,
                message: e.to_string(),
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bundle::testing::tar_gz;

    const LIMITS: ValidationLimits = ValidationLimits {
        file_size_limit: 1 << 20,
    };

    #[test]
    fn good_bundle_reports_revision_and_counts() {
        let bundle = tar_gz(&[
            (
                ".manifest",
                br#"{"revision":"r1","roots":["authz"]}"#.as_slice(),
            ),
            ("authz/policy.rego", b"package authz\nallow := true\n"),
            ("authz/data.json", br#"{"users":["alice"]}"#),
        ]);
        let summary = validate(bundle.as_slice(), LIMITS).unwrap();
        assert_eq!(summary.revision(), "r1");
        assert_eq!(summary.files, 3);
    }

    #[test]
    fn opa_build_and_tar_dot_paths_are_bundle_root_paths() {
        use crate::bundle::testing::tar_gz_raw;
        let bundle = tar_gz_raw(
            &[
                ("/.manifest", br#"{"revision":"from-opa-build"}"#.as_slice()),
                ("/data.json", br#"{"a":1}"#),
            ],
            true,
        );
        assert_eq!(
            validate(bundle.as_slice(), LIMITS).unwrap().revision(),
            "from-opa-build"
        );
        let bundle = tar_gz_raw(
            &[("./.manifest", br#"{"revision":"from-tar-dot"}"#.as_slice())],
            true,
        );
        assert_eq!(
            validate(bundle.as_slice(), LIMITS).unwrap().revision(),
            "from-tar-dot"
        );
    }

    #[test]
    fn double_slash_absolute_path_is_refused() {
        let bundle = crate::bundle::testing::tar_gz_raw_path("//etc/x.rego", b"package x");
        let err = validate(bundle.as_slice(), LIMITS).unwrap_err().to_string();
        assert!(err.contains("absolute paths"), "{err}");
    }

    #[test]
    fn a_second_gzip_member_is_validated_too() {
        // The first member's tar has no end-of-archive blocks, so the tar
        // stream runs on into the second member: that is where the entry is.
        use crate::bundle::testing::tar_gz_raw;
        let mut bundle = tar_gz_raw(&[("a/data.json", br#"{"x":1}"#.as_slice())], false);
        bundle.extend(tar_gz_raw(&[("../../evil.rego", b"package evil")], true));
        let err = validate(bundle.as_slice(), LIMITS).unwrap_err().to_string();
        assert!(err.contains("../../evil.rego"), "{err}");
    }

    #[test]
    fn trailing_garbage_after_the_gzip_stream_is_refused() {
        let mut bundle = tar_gz(&[("a/data.json", br#"{"x":1}"#.as_slice())]);
        bundle.extend_from_slice(b"garbage after the end");
        assert!(validate(bundle.as_slice(), LIMITS).is_err());
    }

    #[test]
    fn plain_text_is_not_gzip() {
        let err = validate(b"<html>not a bundle</html>".as_slice(), LIMITS).unwrap_err();
        assert!(matches!(err, BundleError::NotGzip(_)), "{err}");
    }

    #[test]
    fn truncated_stream_is_corrupt() {
        let bundle = tar_gz(&[("a/data.json", br#"{"x":1}"#.as_slice())]);
        let err = validate(&bundle[..bundle.len() - 10], LIMITS).unwrap_err();
        assert!(matches!(err, BundleError::Corrupt(_)), "{err}");
    }

    #[test]
    fn malformed_manifest_names_the_file() {
        let bundle = tar_gz(&[(".manifest", b"{not json".as_slice())]);
        let err = validate(bundle.as_slice(), LIMITS).unwrap_err().to_string();
        assert!(err.starts_with(".manifest: invalid manifest"), "{err}");
    }

    #[test]
    fn truncation_inside_the_manifest_is_corruption_not_bad_json() {
        let bundle = tar_gz(&[(
            ".manifest",
            br#"{"revision":"a-long-revision-string"}"#.as_slice(),
        )]);
        let err = validate(&bundle[..bundle.len() / 2], LIMITS).unwrap_err();
        assert!(matches!(err, BundleError::Corrupt(_)), "{err}");
    }

    #[test]
    fn malformed_data_json_names_the_file() {
        let bundle = tar_gz(&[("x/data.json", b"[1,".as_slice())]);
        let err = validate(bundle.as_slice(), LIMITS).unwrap_err().to_string();
        assert!(err.starts_with("x/data.json: invalid data.json"), "{err}");
    }

    #[test]
    fn parent_segments_are_refused() {
        let bundle = crate::bundle::testing::tar_gz_raw_path("a/../../etc/x.rego", b"package x");
        let err = validate(bundle.as_slice(), LIMITS).unwrap_err().to_string();
        assert!(
            err.contains("a/../../etc/x.rego") && err.contains("`..`"),
            "{err}"
        );
    }

    #[test]
    fn file_over_limit_is_refused() {
        let big = vec![b'a'; 2 << 20];
        let bundle = tar_gz(&[("big.rego", big.as_slice())]);
        let err = validate(bundle.as_slice(), LIMITS).unwrap_err();
        assert!(matches!(err, BundleError::FileTooLarge { .. }), "{err}");
    }

    #[test]
    fn symlinks_are_refused() {
        let mut builder = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Symlink);
        header.set_size(0);
        builder
            .append_link(&mut header, "link.rego", "/etc/passwd")
            .unwrap();
        let bundle = crate::bundle::testing::gzip(&builder.into_inner().unwrap());
        let err = validate(bundle.as_slice(), LIMITS).unwrap_err().to_string();
        assert!(
            err.contains("link.rego") && err.contains("Symlink"),
            "{err}"
        );
    }
}
