//! The `.manifest` file of an OPA bundle.

use serde::Deserialize;

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
    /// `rego_version` of the bundle's modules, if set.
    #[serde(default)]
    pub rego_version: Option<i64>,
    /// Free-form metadata.
    #[serde(default)]
    pub metadata: Option<serde_json::Map<String, serde_json::Value>>,
}
