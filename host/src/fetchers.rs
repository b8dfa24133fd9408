//! The standard fetchers, compiled from `guest/` by the build script and
//! carried inside the binary, so `polhost run` needs no other file.

include!(concat!(env!("OUT_DIR"), "/fetchers.rs"));

/// The component of the standard fetcher for `service_type`, if polhost
/// ships one.
pub fn standard(service_type: &str) -> Option<&'static [u8]> {
    STANDARD
        .iter()
        .find(|(name, _)| *name == service_type)
        .map(|(_, wasm)| *wasm)
}

/// The service types polhost ships a fetcher for.
pub fn standard_types() -> impl Iterator<Item = &'static str> {
    STANDARD.iter().map(|(name, _)| *name)
}
