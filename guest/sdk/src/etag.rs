//! How an `ETag` travels between HTTP and the WIT contract without a byte
//! changing.
//!
//! An HTTP header value is bytes, and an entity tag may hold any byte from
//! 0x21 up, including 0x80-0xFF (RFC 9110's `obs-text`), which need not be
//! UTF-8. The contract's `etag` is a `string`, and the host keeps it as
//! such (in `metadata.json`, in events) and gives it back as
//! `bundle-request.etag`. So the bytes are mapped to text one to one, as
//! ISO-8859-1 (Latin-1): byte `b` is the character `U+00bb`, and back. An
//! ASCII etag (nearly all of them) is the same text either way; a byte
//! above 0x7F comes back as the same byte, so the server sees its own
//! etag in `If-None-Match` and can answer 304. A UTF-8 decoding could not
//! do this: it replaces what is not UTF-8 (lossy), and re-encodes a
//! character above U+007F as two or more bytes.

/// The etag text for a header value's bytes (Latin-1: one character per
/// byte, every byte kept).
pub fn from_header(value: &[u8]) -> String {
    value.iter().map(|&b| char::from(b)).collect()
}

/// The header bytes for an etag text, inverting [`from_header`]. A
/// character above U+00FF cannot have come from a header; it is sent as
/// its UTF-8 bytes rather than refused, so a fetcher's own etags (from a
/// manifest or a database) still work as plain text.
pub fn to_header(etag: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(etag.len());
    for c in etag.chars() {
        match u8::try_from(u32::from(c)) {
            Ok(b) => out.push(b),
            Err(_) => out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes()),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_byte_round_trips() {
        let all: Vec<u8> = (0u8..=255).collect();
        assert_eq!(to_header(&from_header(&all)), all);
        // Not UTF-8 (a lone Latin-1 byte), and UTF-8 (kept as its bytes).
        for value in [&b"\"caf\xe9\""[..], "\"café\"".as_bytes(), b"W/\"abc\""] {
            assert_eq!(to_header(&from_header(value)), value);
        }
        assert_eq!(from_header(b"\"caf\xe9\""), "\"caf\u{e9}\"");
        assert_eq!(from_header(b"\"x\""), "\"x\"");
    }

    #[test]
    fn text_no_header_could_hold_is_sent_as_utf8() {
        assert_eq!(to_header("rev-\u{20ac}"), "rev-\u{20ac}".as_bytes());
        assert_eq!(to_header("\u{e9}"), b"\xe9");
    }
}
