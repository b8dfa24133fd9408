//! Logging through the host, which puts each line in the span of the bundle
//! being fetched.

use crate::bindings::polhost::fetcher::host::{self, LogLevel};

/// Logs at debug level.
pub fn debug(message: &str) {
    host::log(LogLevel::Debug, message);
}

/// Logs at info level.
pub fn info(message: &str) {
    host::log(LogLevel::Info, message);
}

/// Logs at warn level.
pub fn warn(message: &str) {
    host::log(LogLevel::Warn, message);
}
