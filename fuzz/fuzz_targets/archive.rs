//! The streaming archive validator, with and without a signature check:
//! any input must give a summary or a typed error, never a panic, and
//! stay within the limits.
#![no_main]

use libfuzzer_sys::fuzz_target;
use polhost_bundle::{Key, Secret, ValidationLimits, Verification, validate, validate_with};

fuzz_target!(|data: &[u8]| {
    let limits = ValidationLimits {
        file_size_limit: 1 << 20,
        max_expansion_ratio: 200,
        max_uncompressed_bytes: 8 << 20,
        max_data_keys: 10_000,
    };
    let _ = validate(std::io::Cursor::new(data), limits);
    let key = Key {
        id: "k".into(),
        key: Secret::new("fuzz".into()),
        algorithm: "HS256".into(),
        scope: String::new(),
    };
    if let Ok(Some(verification)) = Verification::new(&[key], None) {
        let _ = validate_with(std::io::Cursor::new(data), limits, Some(&verification));
    }
});
