//! An on-disk cache of components: compiled code, so a restart does not
//! recompile (Cranelift costs 0.2-0.3 s of CPU and ~13 MiB of peak memory
//! per component), and the bytes of components pulled from registries,
//! content-addressed, so a restart needs no registry.
//!
//! Compiled code is native code polhost runs, and loading it trusts the
//! file. So the cache is used only while it is private: a directory (not a
//! link) owned by polhost's user and writable by nobody else, holding
//! regular files (not links) owned by that user and writable by nobody
//! else. Anything else is refused with a warning naming the path and the
//! reason, and the component is compiled in memory instead: never fatal,
//! never trusted. Wasmtime still checks each compiled entry's header and
//! refuses one from another version or config. Pulled component bytes are
//! also checked against their digest on every load.

use std::fs;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::PathBuf;

use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

use crate::private_dir::{self, Kind};

/// A directory of compiled components and pulled component bytes.
pub(crate) struct ComponentCache {
    dir: PathBuf,
}

impl ComponentCache {
    pub(crate) fn new(dir: PathBuf) -> Self {
        ComponentCache { dir }
    }

    /// The component for `wasm`: from the cache, or compiled (and cached
    /// when the cache is private).
    pub(crate) fn load(&self, engine: &Engine, wasm: &[u8]) -> wasmtime::Result<Component> {
        let name = compiled_name(engine, wasm);
        match self.read(&name) {
            Ok(Some(compiled)) => {
                // SAFETY: the entry is a regular file in a directory only
                // this user can write, owned by this user and writable by
                // nobody else (`read` checked all of it); wasmtime checks
                // its header before using it.
                match unsafe { Component::deserialize(engine, &compiled) } {
                    Ok(component) => return Ok(component),
                    Err(e) => tracing::warn!(
                        entry = %self.dir.join(&name).display(),
                        "compiled component refused, recompiling: {e:#}"
                    ),
                }
            }
            Ok(None) => {}
            Err(e) => tracing::warn!("component cache not used: {e}"),
        }
        let compiled = engine.precompile_component(wasm)?;
        if let Err(e) = self.write(&name, &compiled) {
            tracing::warn!("caching the compiled component failed: {e}");
        }
        // SAFETY: the bytes were produced by this engine a moment ago.
        unsafe { Component::deserialize(engine, &compiled) }
    }

    /// The bytes of the component with `digest` (`sha256:<hex>`), if the
    /// cache holds them and they have that digest.
    pub(crate) fn pulled(&self, digest: &str) -> Option<Vec<u8>> {
        let name = pulled_name(digest)?;
        match self.read(&name) {
            Ok(Some(bytes)) if sha256_digest(&bytes) == digest => Some(bytes),
            Ok(Some(_)) => {
                tracing::warn!(
                    entry = %self.dir.join(&name).display(),
                    "cached component does not have its digest: pulling it again"
                );
                None
            }
            Ok(None) => None,
            Err(e) => {
                tracing::warn!("component cache not used: {e}");
                None
            }
        }
    }

    /// Keeps the bytes of a pulled component under its digest.
    pub(crate) fn keep_pulled(&self, digest: &str, bytes: &[u8]) {
        let Some(name) = pulled_name(digest) else {
            return;
        };
        if let Err(e) = self.write(&name, bytes) {
            tracing::warn!("caching the pulled component failed: {e}");
        }
    }

    /// The entry `name`, `None` if absent; an error saying why the cache
    /// may not be trusted.
    fn read(&self, name: &str) -> Result<Option<Vec<u8>>, String> {
        let euid = private_dir::euid();
        match fs::symlink_metadata(&self.dir) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("{}: {e}", self.dir.display())),
            Ok(meta) => private_dir::check(&self.dir, (&meta).into(), euid, Kind::Directory)?,
        }
        let path = self.dir.join(name);
        // O_NOFOLLOW: a link planted as an entry is refused, not followed.
        let file = match fs::OpenOptions::new()
            .read(true)
            .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
            .open(&path)
        {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("{}: {e}", path.display())),
            Ok(file) => file,
        };
        let meta = file
            .metadata()
            .map_err(|e| format!("{}: {e}", path.display()))?;
        private_dir::check(&path, (&meta).into(), euid, Kind::RegularFile)?;
        let mut bytes = Vec::with_capacity(meta.len() as usize);
        (&file)
            .read_to_end(&mut bytes)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(Some(bytes))
    }

    fn write(&self, name: &str, bytes: &[u8]) -> Result<(), String> {
        let show = |e: io::Error| format!("{}: {e}", self.dir.display());
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
            .map_err(show)?;
        let euid = private_dir::euid();
        let meta = fs::symlink_metadata(&self.dir).map_err(show)?;
        private_dir::check(&self.dir, (&meta).into(), euid, Kind::Directory)?;
        let mut temp = tempfile::Builder::new()
            .prefix(".tmp-")
            .permissions(fs::Permissions::from_mode(0o600))
            .tempfile_in(&self.dir)
            .map_err(show)?;
        temp.write_all(bytes).map_err(show)?;
        temp.as_file().sync_all().map_err(show)?;
        temp.persist(self.dir.join(name))
            .map_err(|e| show(e.error))?;
        Ok(())
    }
}

/// `sha256:<hex>` of `bytes`.
pub(crate) fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

fn compiled_name(engine: &Engine, wasm: &[u8]) -> String {
    let mut compatibility = DefaultHasher::new();
    engine
        .precompile_compatibility_hash()
        .hash(&mut compatibility);
    format!(
        "{}-{:016x}.cwasm",
        hex::encode(Sha256::digest(wasm)),
        compatibility.finish()
    )
}

/// `sha256-<hex>.wasm` for a well-formed digest.
fn pulled_name(digest: &str) -> Option<String> {
    let hex = digest.strip_prefix("sha256:")?;
    (hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| format!("sha256-{}.wasm", hex.to_ascii_lowercase()))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    /// The smallest valid component.
    const EMPTY_COMPONENT: &[u8] = b"\0asm\x0d\0\x01\0";

    fn entries(dir: &Path) -> Vec<PathBuf> {
        fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect()
    }

    #[test]
    fn second_load_comes_from_the_cache_and_a_corrupt_entry_is_recompiled() {
        let engine = Engine::default();
        let dir = tempfile::tempdir().unwrap();
        let cache = ComponentCache::new(dir.path().join("components"));
        cache.load(&engine, EMPTY_COMPONENT).unwrap();
        let found = entries(&dir.path().join("components"));
        assert_eq!(found.len(), 1);
        let mode = fs::metadata(dir.path().join("components"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700);
        assert_eq!(
            fs::metadata(&found[0]).unwrap().permissions().mode() & 0o777,
            0o600
        );

        cache.load(&engine, EMPTY_COMPONENT).unwrap();
        fs::write(&found[0], b"not compiled code").unwrap();
        cache.load(&engine, EMPTY_COMPONENT).unwrap();
        assert_ne!(fs::read(&found[0]).unwrap(), b"not compiled code");
    }

    #[test]
    fn a_cache_others_can_write_is_not_read() {
        let engine = Engine::default();
        let dir = tempfile::tempdir().unwrap();
        let cache_dir = dir.path().join("components");
        let cache = ComponentCache::new(cache_dir.clone());
        cache.load(&engine, EMPTY_COMPONENT).unwrap();
        let entry = entries(&cache_dir).remove(0);
        // Another user could have put anything there: refused, not read.
        fs::set_permissions(&cache_dir, fs::Permissions::from_mode(0o777)).unwrap();
        let refusal = cache.read(entry.file_name().unwrap().to_str().unwrap());
        assert!(
            refusal
                .as_ref()
                .unwrap_err()
                .contains("writable by group or others (mode 777): refused"),
            "{refusal:?}"
        );
        fs::set_permissions(&cache_dir, fs::Permissions::from_mode(0o700)).unwrap();
        fs::set_permissions(&entry, fs::Permissions::from_mode(0o666)).unwrap();
        let refusal = cache.read(entry.file_name().unwrap().to_str().unwrap());
        assert!(refusal.unwrap_err().contains("mode 666"));
        // Loading still works: it compiles in memory.
        cache.load(&engine, EMPTY_COMPONENT).unwrap();
    }

    #[test]
    fn a_planted_link_is_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let cache_dir = dir.path().join("components");
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&cache_dir)
            .unwrap();
        let target = dir.path().join("elsewhere.wasm");
        fs::write(&target, EMPTY_COMPONENT).unwrap();
        let digest = sha256_digest(EMPTY_COMPONENT);
        std::os::unix::fs::symlink(&target, cache_dir.join(pulled_name(&digest).unwrap())).unwrap();
        let cache = ComponentCache::new(cache_dir.clone());
        assert_eq!(cache.pulled(&digest), None);
        // The cache directory itself as a link is refused too.
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&cache_dir, &link).unwrap();
        let err = ComponentCache::new(link).read("x").unwrap_err();
        assert!(err.contains("not a directory (a symbolic link)"), "{err}");
    }

    #[test]
    fn pulled_bytes_are_returned_only_with_their_digest() {
        let dir = tempfile::tempdir().unwrap();
        let cache = ComponentCache::new(dir.path().join("components"));
        let digest = sha256_digest(EMPTY_COMPONENT);
        assert_eq!(cache.pulled(&digest), None);
        cache.keep_pulled(&digest, EMPTY_COMPONENT);
        assert_eq!(cache.pulled(&digest).as_deref(), Some(EMPTY_COMPONENT));
        let path = dir
            .path()
            .join("components")
            .join(pulled_name(&digest).unwrap());
        fs::write(&path, b"tampered").unwrap();
        assert_eq!(cache.pulled(&digest), None);
    }
}
