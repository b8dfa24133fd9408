//! The configuration parser: any text gives a config or a field-path
//! error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use polhost_config::Config;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let env = |name: &str| (name == "X").then(|| "{a: 1}".to_string());
        let _ = Config::parse(text, &env);
    }
});
