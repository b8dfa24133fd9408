//! The `.manifest` file of an OPA bundle.

use serde::Deserialize;

use super::rules;

/// The parts of `.manifest` polhost reads. Unknown fields are allowed, as
/// OPA allows them.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub struct Manifest {
    /// The bundle's revision, shown in logs and status.
    #[serde(default)]
    pub revision: Option<String>,
    /// The data and policy paths the bundle owns (OPA's default: `[""]`,
    /// everything).
    #[serde(default)]
    pub roots: Option<Vec<String>>,
    /// `rego_version` of the bundle's modules, if set (0 or 1).
    #[serde(default)]
    pub rego_version: Option<i64>,
    /// Wasm modules and their entrypoints.
    #[serde(default)]
    pub wasm: Option<Vec<WasmResolver>>,
    /// Free-form metadata.
    #[serde(default)]
    pub metadata: Option<serde_json::Map<String, serde_json::Value>>,
}

/// One entry of the manifest's `wasm` list.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub struct WasmResolver {
    /// The policy path the module answers (`authz/allow`).
    #[serde(default)]
    pub entrypoint: String,
    /// The module's path in the bundle (`/policy.wasm`).
    #[serde(default)]
    pub module: String,
}

impl Manifest {
    /// The roots, normalised as OPA does (trimmed of `/`), `[""]` when the
    /// manifest sets none.
    pub fn roots(&self) -> Vec<String> {
        match &self.roots {
            None => vec![String::new()],
            Some(roots) => roots.iter().map(|r| rules::normalise_root(r)).collect(),
        }
    }
}
