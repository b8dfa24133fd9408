//! `.signatures.json` (JWT parsing and verification), the canonical JSON
//! form signatures hash, and `.manifest` parsing.
#![no_main]

use libfuzzer_sys::fuzz_target;
use polhost_bundle::{Key, Manifest, Secret, Verification};

fuzz_target!(|data: &[u8]| {
    let key = Key {
        id: "k".into(),
        key: Secret::new("fuzz".into()),
        algorithm: "HS256".into(),
        scope: String::new(),
    };
    if let Ok(Some(verification)) = Verification::new(&[key], None) {
        let _ = verification.verify(data);
    }
    let _ = polhost_bundle::canonical_json(data);
    let _ = polhost_bundle::canonical_yaml(data);
    if let Ok(manifest) = serde_json::from_slice::<Manifest>(data) {
        let _ = manifest.roots();
    }
});
