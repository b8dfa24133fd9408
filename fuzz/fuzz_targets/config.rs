//! The configuration parser: any text gives a config or a field-path
//! error, never a panic, and within the parser's budgets (an alias bomb is
//! refused, not expanded).
//!
//! The corpus directory is not kept in git, so the first byte picks a
//! prelude that defines anchors: aliases to them (`*a`, `*b`, `<<: *m`)
//! are then a few bytes away for the fuzzer instead of a structure it must
//! first find. `${A}`/`${B}` substitute anchors and aliases too, so env
//! substitution and alias expansion meet.
#![no_main]

use libfuzzer_sys::fuzz_target;
use polhost_config::Config;

/// Anchors the rest of the input can refer to: none; lists that expand
/// 10 x 10 x 10; a map to merge; a large scalar.
const PRELUDES: [&str; 4] = [
    "",
    "a: &a [x, x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]\n",
    "m: &m {service: s, persist: true}\nservices: {s: {url: 'https://a.example'}}\n",
    "t: &t xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\n",
];

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    if let Ok(text) = std::str::from_utf8(rest) {
        let env = |name: &str| match name {
            "X" => Some("{a: 1}".to_string()),
            "A" => Some("&e [*b, *b, *b, *b]".to_string()),
            "B" => Some("[*e, *e, *e, *e, *e]".to_string()),
            _ => None,
        };
        let prelude = PRELUDES[usize::from(selector) % PRELUDES.len()];
        let _ = Config::parse(&format!("{prelude}{text}"), &env);
    }
});
