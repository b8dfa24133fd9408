//! What a component is, as `polhost plugin inspect` shows it: its world
//! (decoded back to WIT), its imports and exports, its digest and size, and
//! whether it fits `polhost:fetcher@0.1.x` (the same check a load makes, so
//! "fits" here means it loads).

use std::path::PathBuf;
use std::sync::Arc;

use wasmtime::component::Component;

use crate::fetcher::ComponentSource;
use crate::runtime::{self, ComponentCache, Limits, Runtime, RuntimeError, cache_digest};
use crate::source::{self, SourceError};

/// A component, inspected.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Inspection {
    /// `sha256:<hex>` of its bytes.
    pub digest: String,
    /// Its size in bytes.
    pub size: usize,
    /// Its world, decoded to WIT text (`None` when it cannot be decoded).
    pub world: Option<String>,
    /// Every import, by name.
    pub imports: Vec<String>,
    /// Every export, by name.
    pub exports: Vec<String>,
    /// `Ok` when it fits `polhost:fetcher@0.1.x`, else why not.
    pub fits: Result<(), String>,
}

/// Inspects a component's bytes. An error only when they are not a
/// component at all.
pub fn inspect(wasm: &[u8]) -> Result<Inspection, RuntimeError> {
    let engine = runtime::engine()?;
    let component = Component::new(&engine, wasm).map_err(|e| RuntimeError::InvalidComponent {
        fetcher: "inspected".into(),
        message: format!("{e:#}"),
    })?;
    let ty = component.component_type();
    let imports = ty.imports(&engine).map(|(n, _)| n.to_string()).collect();
    let exports = ty.exports(&engine).map(|(n, _)| n.to_string()).collect();
    let runtime = Runtime::new(engine, false, Limits::default(), Arc::new(|_: &str| None))?;
    let fits = runtime
        .check(&component, "inspected")
        .map(drop)
        .map_err(|e| e.to_string());
    Ok(Inspection {
        digest: cache_digest(wasm),
        size: wasm.len(),
        world: world_wit(wasm),
        imports,
        exports,
        fits,
    })
}

/// The bytes of a component from a file or an `oci://` reference, as the
/// agent gets them (`cache` as [`crate::AgentBuilder::component_cache`]).
pub async fn load_component(
    source: &ComponentSource,
    cache: Option<PathBuf>,
) -> Result<Vec<u8>, SourceError> {
    let cache = cache.map(ComponentCache::new);
    source::component_bytes(source, cache.as_ref()).await
}

/// The component's world as WIT, decoded from its type information.
fn world_wit(wasm: &[u8]) -> Option<String> {
    let decoded = wit_component::decode(wasm).ok()?;
    let resolve = decoded.resolve();
    let mut printer = wit_component::WitPrinter::default();
    printer.emit_docs(false);
    printer.print(resolve, decoded.package(), &[]).ok()?;
    Some(printer.output.to_string())
}
