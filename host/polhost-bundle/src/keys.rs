//! The keys bundle signatures are verified with, and which of them a bundle
//! uses: the inputs of [`crate::Verification`]. Parsing them from a
//! configuration is `polhost-config`'s job; this module only says what they are.

use crate::secret::Secret;

/// The signature algorithms OPA accepts for `keys.<id>.algorithm`.
pub const ALGORITHMS: &[&str] = &[
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "HS256",
    "HS384", "HS512",
];

/// One entry of `keys`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Key {
    /// Its id (the key under `keys`).
    pub id: String,
    /// `key`: a PEM public key (RS*, PS*, ES*) or the HMAC secret (HS*).
    pub key: Secret,
    /// `algorithm` (default `RS256`).
    pub algorithm: String,
    /// `scope` (default ""): the scope a bundle signed with this key must
    /// carry, unless the bundle's `signing.scope` says otherwise.
    pub scope: String,
}

/// `bundles.<name>.signing`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Signing {
    /// `keyid`: the key to verify with; when set, unsigned bundles are
    /// refused.
    pub keyid: Option<String>,
    /// `scope`: overrides the key's scope.
    pub scope: Option<String>,
    /// `exclude_files`: glob patterns of files the signature need not cover.
    pub exclude_files: Vec<String>,
}
