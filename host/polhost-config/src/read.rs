//! Reading a file polhost is told to read, with a cap on its size. Owns
//! the cap: an OPA configuration is a few kilobytes, so anything far
//! larger (a mistaken path, `/dev/zero`, a generated file gone wrong) is
//! refused after at most the cap plus one byte is read, instead of growing
//! without bound.

use std::io::{self, Read};
use std::path::Path;

/// The most bytes a configuration file (or a `--set-file` file) may hold:
/// 4 MiB, about a thousand times a large OPA configuration.
pub const MAX_CONFIG_BYTES: usize = 4 * 1024 * 1024;

/// Why a capped read failed.
#[derive(Debug)]
pub(crate) enum ReadError {
    /// The operating system refused, or the text is not UTF-8.
    Io(io::Error),
    /// The file holds more than the cap.
    TooLarge,
}

/// The text of `path`, if it holds at most `limit` bytes of UTF-8.
pub(crate) fn read_capped(path: &Path, limit: usize) -> Result<String, ReadError> {
    let file = std::fs::File::open(path).map_err(ReadError::Io)?;
    let mut bytes = Vec::new();
    // One byte past the cap tells "exactly at the cap" from "over it"
    // without reading further, whatever the file is (a pipe, a device).
    file.take(limit as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(ReadError::Io)?;
    if bytes.len() > limit {
        return Err(ReadError::TooLarge);
    }
    String::from_utf8(bytes).map_err(|_| {
        ReadError::Io(io::Error::new(
            io::ErrorKind::InvalidData,
            "stream did not contain valid UTF-8",
        ))
    })
}

/// `4 MiB`, `512 KiB`, `100 bytes`: a cap as a message shows it.
pub(crate) fn show_size(bytes: usize) -> String {
    const MIB: usize = 1024 * 1024;
    if bytes >= MIB && bytes.is_multiple_of(MIB) {
        format!("{} MiB", bytes / MIB)
    } else if bytes >= 1024 && bytes.is_multiple_of(1024) {
        format!("{} KiB", bytes / 1024)
    } else {
        format!("{bytes} bytes")
    }
}

#[cfg(test)]
mod tests {
    use super::{MAX_CONFIG_BYTES, ReadError, read_capped, show_size};

    #[test]
    fn a_file_at_the_cap_is_read_and_one_byte_more_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.yaml");
        std::fs::write(&path, "a: 1\n").unwrap();
        assert_eq!(read_capped(&path, 5).unwrap(), "a: 1\n");
        assert!(matches!(read_capped(&path, 4), Err(ReadError::TooLarge)));
    }

    #[test]
    fn an_endless_file_is_refused_after_the_cap() {
        // /dev/zero never ends: without the cap the read never would.
        assert!(matches!(
            read_capped("/dev/zero".as_ref(), 1024),
            Err(ReadError::TooLarge)
        ));
    }

    /// Issue 10, item 13: `polhost run /dev/zero` grew without bound, and a
    /// 32 MB YAML list peaked at 523 MB.
    #[test]
    fn config_file_larger_than_the_cap_is_refused_naming_file_and_cap() {
        let dir = tempfile::tempdir().unwrap();
        let big = dir.path().join("big.yaml");
        let mut text = "l:\n".to_string();
        while text.len() <= MAX_CONFIG_BYTES {
            text.push_str("- abcdefgh\n");
        }
        std::fs::write(&big, &text).unwrap();
        let no_env = |_: &str| None;
        for path in [big.as_path(), "/dev/zero".as_ref()] {
            let e = crate::Config::load(path, &no_env).unwrap_err();
            assert_eq!(
                e.to_string(),
                format!(
                    "{}: the configuration file is larger than 4 MiB, the most polhost reads of one",
                    path.display()
                )
            );
        }
        // Under the cap it is read: what refuses this list then is the
        // parser's budget of values, not the cap.
        text.truncate(MAX_CONFIG_BYTES - (MAX_CONFIG_BYTES - 3) % 11);
        std::fs::write(&big, &text).unwrap();
        assert!(!matches!(
            crate::Config::load(&big, &no_env),
            Err(crate::ConfigError::TooLarge { .. })
        ));
    }

    #[test]
    fn text_larger_than_the_cap_after_substitution_is_refused() {
        let env = |_: &str| Some("x".repeat(1 << 20));
        let e = crate::Config::parse("a: ${BIG}${BIG}${BIG}${BIG}${BIG}\n", &env).unwrap_err();
        assert_eq!(
            e.to_string(),
            "the configuration text is larger than 4 MiB, the most polhost reads \
             (counted after ${ENV} substitution)"
        );
    }

    #[test]
    fn sizes_are_shown_in_their_unit() {
        assert_eq!(show_size(4 * 1024 * 1024), "4 MiB");
        assert_eq!(show_size(512 * 1024), "512 KiB");
        assert_eq!(show_size(100), "100 bytes");
    }
}
