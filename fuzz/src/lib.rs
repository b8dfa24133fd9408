//! polhost's parsers, compiled from host/src without the runtime (and so
//! without wasmtime) for fuzzing. The modules are polhost's own files.
#![allow(dead_code, missing_docs)]

#[path = "../../host/src/bundle/mod.rs"]
pub mod bundle;
#[path = "../../host/src/config/mod.rs"]
pub mod config;
#[path = "../../host/src/secret.rs"]
pub mod secret;
