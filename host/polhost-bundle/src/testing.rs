//! Builders for bundles in unit tests.

use std::io::Write;

/// A gzipped tar of `(path, content)` regular files.
pub fn tar_gz(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (path, content) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(content.len() as u64);
        header.set_mode(0o644);
        builder.append_data(&mut header, path, *content).unwrap();
    }
    gzip(&builder.into_inner().unwrap())
}

/// A gzipped tar with one file whose name is written as given, bypassing
/// the tar crate's own refusal of `..` (a hostile archive's way).
pub fn tar_gz_raw_path(path: &str, content: &[u8]) -> Vec<u8> {
    tar_gz_raw(&[(path, content)], true)
}

/// A gzipped tar of files whose names are written as given (`/x`, `../x`:
/// what `opa build` or a hostile tool writes), with or without the
/// end-of-archive blocks.
pub fn tar_gz_raw(files: &[(&str, &[u8])], end_of_archive: bool) -> Vec<u8> {
    let mut raw = Vec::new();
    for (path, content) in files {
        let mut header = tar::Header::new_old();
        header.as_old_mut().name[..path.len()].copy_from_slice(path.as_bytes());
        header.set_size(content.len() as u64);
        header.set_mode(0o644);
        header.set_entry_type(tar::EntryType::Regular);
        header.set_cksum();
        raw.extend_from_slice(header.as_bytes());
        raw.extend_from_slice(content);
        raw.resize(raw.len().div_ceil(512) * 512, 0);
    }
    if end_of_archive {
        raw.resize(raw.len() + 1024, 0);
    }
    gzip(&raw)
}

/// Gzips bytes.
pub fn gzip(raw: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(raw).unwrap();
    gz.finish().unwrap()
}
