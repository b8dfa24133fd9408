//! Untrusted `data.yaml`: the budgeted YAML walk of both looks (as one
//! `a/data.yaml` and, overlapping it, `a/data.yml` of a bundle) and the
//! canonical form a signed one is hashed in. Neither may panic, hang or
//! grow past the budgets, whatever the YAML (aliases, depth, tags).
#![no_main]

use std::io::Write;

use libfuzzer_sys::fuzz_target;
use polhost_bundle::{ValidationLimits, validate};

fn bundle(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (path, content) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(content.len() as u64);
        header.set_mode(0o644);
        builder.append_data(&mut header, path, *content).unwrap();
    }
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&builder.into_inner().unwrap()).unwrap();
    gz.finish().unwrap()
}

fuzz_target!(|data: &[u8]| {
    let limits = ValidationLimits {
        max_data_keys: 10_000,
        ..ValidationLimits::new(1 << 20)
    };
    let _ = validate(
        std::io::Cursor::new(bundle(&[("a/data.yaml", data)])),
        limits,
    );
    // Deep enough that the first look keeps no key: the second look runs.
    let _ = validate(
        std::io::Cursor::new(bundle(&[
            ("p/q/r/s/data.yaml", data),
            ("p/q/r/s/data.yml", b"k: {x: 1}\n"),
        ])),
        limits,
    );
    let _ = polhost_bundle::canonical_yaml(data);
});
