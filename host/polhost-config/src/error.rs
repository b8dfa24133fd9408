//! The error a configuration can fail with. Owns the wording of "where"
//! (file, line, field path); it never embeds a credential's value.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

/// Why a configuration could not be loaded.
///
/// Every variant says where the problem is: the file (when the configuration
/// was loaded from one), the YAML line and column, or the field path
/// (`bundles.authz.polling.max_delay_seconds`, `services[0].url`).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The configuration file could not be read.
    #[error("{}: cannot read the configuration file: {error}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// What the operating system said.
        error: io::Error,
    },

    /// The configuration file holds more than polhost reads of one
    /// ([`MAX_CONFIG_BYTES`](crate::MAX_CONFIG_BYTES)); nothing past that
    /// was read.
    #[error(
        "{}: the configuration file is larger than {}, the most polhost reads of one",
        path.display(),
        crate::read::show_size(*.limit)
    )]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// The cap, in bytes.
        limit: usize,
    },

    /// The text is not valid YAML (the message gives line and column).
    #[error("{}invalid YAML: {message}", FilePrefix(.file.as_deref()))]
    Yaml {
        /// The file, when the text came from one.
        file: Option<PathBuf>,
        /// The 1-based line of the error, when the parser knows it.
        line: Option<usize>,
        /// The 1-based column of the error, when the parser knows it.
        column: Option<usize>,
        /// The parser's message.
        message: String,
    },

    /// A field is missing, has the wrong type or an invalid value.
    #[error("{}{}{message}", FilePrefix(.file.as_deref()), FieldPrefix(.path))]
    Invalid {
        /// The file, when the text came from one.
        file: Option<PathBuf>,
        /// The field's path: `services.acmecorp.url`, `services[0].name`,
        /// `bundles.authz.polling`; empty for the document as a whole.
        path: String,
        /// What is wrong with it.
        message: String,
    },

    /// A `--set` or `--set-file` argument is malformed or cannot be
    /// applied, or set a field to an invalid value: `--set <key>: <problem>`
    /// (the key, never the value).
    #[error("{flag} {key}: {message}")]
    Override {
        /// `--set` or `--set-file`.
        flag: String,
        /// The key as written in the argument, or the path of the field
        /// below it that is invalid.
        key: String,
        /// What is wrong with it.
        message: String,
    },
}

impl ConfigError {
    /// An invalid-field error at `path`, not yet tied to a file.
    pub(crate) fn invalid(path: impl Into<String>, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            file: None,
            path: path.into(),
            message: message.into(),
        }
    }

    /// A YAML error at `line` and `column` (1-based, when known), not yet
    /// tied to a file; `message` already says where.
    pub(crate) fn yaml(
        line: Option<usize>,
        column: Option<usize>,
        message: impl Into<String>,
    ) -> ConfigError {
        ConfigError::Yaml {
            file: None,
            line,
            column,
            message: message.into(),
        }
    }

    /// The same error, naming the file the text came from.
    pub(crate) fn in_file(self, path: &Path) -> ConfigError {
        match self {
            ConfigError::Yaml {
                line,
                column,
                message,
                ..
            } => ConfigError::Yaml {
                file: Some(path.to_path_buf()),
                line,
                column,
                message,
            },
            ConfigError::Invalid {
                path: field,
                message,
                ..
            } => ConfigError::Invalid {
                file: Some(path.to_path_buf()),
                path: field,
                message,
            },
            // Not in the file: the message names the flag.
            other @ (ConfigError::Read { .. }
            | ConfigError::TooLarge { .. }
            | ConfigError::Override { .. }) => other,
        }
    }
}

/// `<file>: `, or nothing.
struct FilePrefix<'a>(Option<&'a Path>);

impl fmt::Display for FilePrefix<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(path) => write!(f, "{}: ", path.display()),
            None => Ok(()),
        }
    }
}

/// `<field path>: `, or nothing for the document as a whole.
struct FieldPrefix<'a>(&'a str);

impl fmt::Display for FieldPrefix<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            Ok(())
        } else {
            write!(f, "{}: ", self.0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::ConfigError;
    use std::path::Path;

    #[test]
    fn invalid_field_displays_path_then_message() {
        let error = ConfigError::invalid("services.acmecorp.url", "required");
        assert_eq!(error.to_string(), "services.acmecorp.url: required");
    }

    #[test]
    fn invalid_field_in_a_file_starts_with_the_file() {
        let error = ConfigError::invalid("services.acmecorp.url", "required")
            .in_file(Path::new("config.yaml"));
        assert_eq!(
            error.to_string(),
            "config.yaml: services.acmecorp.url: required"
        );
    }

    #[test]
    fn document_level_error_has_no_field_prefix() {
        let error = ConfigError::invalid("", "must be a map").in_file(Path::new("c.yaml"));
        assert_eq!(error.to_string(), "c.yaml: must be a map");
    }
}
