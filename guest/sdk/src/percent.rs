//! Percent-encoding as the storage APIs want it (RFC 3986): every byte but
//! the unreserved characters as `%XX`, uppercase; `/` kept where a path's
//! separators must stay.

/// Encodes `text`; keeps `/` when `keep_slash`.
pub fn encode(text: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(text.len());
    for &b in text.as_bytes() {
        if b.is_ascii_alphanumeric()
            || matches!(b, b'-' | b'_' | b'.' | b'~')
            || (keep_slash && b == b'/')
        {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Decodes `%XX` escapes (invalid ones are kept as written).
pub fn decode(text: &str) -> String {
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2]))
        {
            out.push(h * 16 + l);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    #[test]
    fn round_trips_and_keeps_slashes_on_request() {
        assert_eq!(super::encode("a b/c~", true), "a%20b/c~");
        assert_eq!(super::encode("a b/c~", false), "a%20b%2Fc~");
        assert_eq!(super::decode("a%20b%2Fc%zz"), "a b/c%zz");
    }
}
