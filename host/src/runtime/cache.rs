//! An on-disk cache of compiled fetcher components, so a restart does not
//! recompile them (Cranelift costs 0.2-0.3 s of CPU and ~13 MiB of peak
//! memory per component).
//!
//! Entries are keyed by the component's SHA-256 and the engine's
//! compatibility hash, written temp + rename, and live in a directory only
//! polhost's user can write (0700). Loading compiled code trusts the file:
//! the cache must be as private as the binary itself. Wasmtime still checks
//! each entry's header and refuses one from another version or config; a
//! refused or unreadable entry is recompiled, never fatal.

use std::fs;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::io::Write;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

/// A directory of compiled components.
pub(crate) struct ComponentCache {
    dir: PathBuf,
}

impl ComponentCache {
    pub(crate) fn new(dir: PathBuf) -> Self {
        ComponentCache { dir }
    }

    /// The component for `wasm`: from the cache, or compiled and cached.
    pub(crate) fn load(&self, engine: &Engine, wasm: &[u8]) -> wasmtime::Result<Component> {
        let path = self.entry(engine, wasm);
        if path.exists() {
            // SAFETY: the entry was written by this cache, into a directory
            // only this user can write (see the module docs); wasmtime
            // checks its header before using it.
            match unsafe { Component::deserialize_file(engine, &path) } {
                Ok(component) => return Ok(component),
                Err(e) => tracing::warn!(
                    entry = %path.display(),
                    "compiled component refused, recompiling: {e:#}"
                ),
            }
        }
        let compiled = engine.precompile_component(wasm)?;
        if let Err(e) = self.store(&path, &compiled) {
            tracing::warn!(dir = %self.dir.display(), "caching the compiled component failed: {e}");
        }
        // SAFETY: the bytes were produced by this engine a moment ago.
        unsafe { Component::deserialize(engine, &compiled) }
    }

    fn entry(&self, engine: &Engine, wasm: &[u8]) -> PathBuf {
        let mut compatibility = DefaultHasher::new();
        engine
            .precompile_compatibility_hash()
            .hash(&mut compatibility);
        self.dir.join(format!(
            "{}-{:016x}.cwasm",
            hex::encode(Sha256::digest(wasm)),
            compatibility.finish()
        ))
    }

    fn store(&self, path: &Path, compiled: &[u8]) -> std::io::Result<()> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)?;
        let mut temp = tempfile::NamedTempFile::new_in(&self.dir)?;
        temp.write_all(compiled)?;
        temp.as_file().sync_all()?;
        temp.persist(path).map_err(|e| e.error)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The smallest valid component.
    const EMPTY_COMPONENT: &[u8] = b"\0asm\x0d\0\x01\0";

    #[test]
    fn second_load_comes_from_the_cache_and_a_corrupt_entry_is_recompiled() {
        let engine = Engine::default();
        let dir = tempfile::tempdir().unwrap();
        let cache = ComponentCache::new(dir.path().join("components"));
        cache.load(&engine, EMPTY_COMPONENT).unwrap();
        let entries: Vec<_> = fs::read_dir(dir.path().join("components"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert_eq!(entries.len(), 1);
        let mode = fs::metadata(dir.path().join("components"))
            .unwrap()
            .permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o700
        );

        cache.load(&engine, EMPTY_COMPONENT).unwrap();
        fs::write(&entries[0], b"not compiled code").unwrap();
        cache.load(&engine, EMPTY_COMPONENT).unwrap();
        assert_ne!(fs::read(&entries[0]).unwrap(), b"not compiled code");
    }
}
