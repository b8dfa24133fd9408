//! Constructors for [`FetchError`], so every fetcher classifies failures the
//! same way (the host reports the kind to the operator).

use crate::{ErrorKind, FetchError};

impl FetchError {
    /// An error of `kind` with no HTTP status.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        FetchError {
            kind,
            message: message.into(),
            http_status: None,
        }
    }

    /// The service's configuration cannot be used.
    pub fn invalid_config(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidConfig, message)
    }

    /// The service answered something the protocol does not allow.
    pub fn protocol(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Protocol, message)
    }

    /// A failure that may pass on retry.
    pub fn transient(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Transient, message)
    }

    /// An error for an HTTP response with a status that is not success,
    /// classified by that status.
    pub fn from_status(status: u16, message: impl Into<String>) -> Self {
        FetchError {
            kind: kind_of_status(status),
            message: message.into(),
            http_status: Some(status),
        }
    }
}

/// `": CODE: message"` for an error message from a service's own error code
/// and message (either may be empty; a message without a code is dropped,
/// as it rarely says anything the status does not).
pub fn service_detail(code: &str, message: &str) -> String {
    match (code.is_empty(), message.is_empty()) {
        (true, _) => String::new(),
        (false, true) => format!(": {code}"),
        (false, false) => format!(": {code}: {message}"),
    }
}

/// How a failing HTTP status is reported: auth problems and missing bundles
/// need an operator, 5xx/408/429 usually pass.
pub fn kind_of_status(status: u16) -> ErrorKind {
    match status {
        401 | 403 => ErrorKind::Unauthorized,
        404 | 410 => ErrorKind::NotFound,
        408 | 429 | 500..=599 => ErrorKind::Transient,
        _ => ErrorKind::Protocol,
    }
}
