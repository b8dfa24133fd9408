//! Reading the service's configuration subtree (JSON text handed over by the
//! host), with errors that name the field.

use crate::FetchError;
use crate::bindings::polhost::fetcher::host;
use serde_json::Value;

/// The service's configuration, parsed.
pub struct ServiceConfig {
    name: String,
    value: Value,
}

impl ServiceConfig {
    /// Parses the `config` of a service.
    pub fn parse(service_name: &str, json: &str) -> Result<Self, FetchError> {
        let value = serde_json::from_str(json).map_err(|e| {
            FetchError::invalid_config(format!(
                "services.{service_name}: configuration is not valid JSON: {e}"
            ))
        })?;
        Ok(ServiceConfig {
            name: service_name.to_string(),
            value,
        })
    }

    /// The value at a dotted path (`credentials.bearer.token`), if present
    /// and not null.
    pub fn get(&self, path: &str) -> Option<&Value> {
        path.split('.')
            .try_fold(&self.value, |v, key| v.get(key))
            .filter(|v| !v.is_null())
    }

    /// The string at `path`, if present; an error naming the field if it is
    /// there but not a string.
    pub fn str(&self, path: &str) -> Result<Option<&str>, FetchError> {
        match self.get(path) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(self.invalid(path, "must be a string")),
        }
    }

    /// The number at `path`, if present; an error naming the field if it is
    /// there but not a non-negative integer.
    pub fn u64(&self, path: &str) -> Result<Option<u64>, FetchError> {
        match self.get(path) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .map(Some)
                .ok_or_else(|| self.invalid(path, "must be a non-negative integer")),
        }
    }

    /// An invalid-config error naming `services.<name>.<path>`.
    pub fn invalid(&self, path: &str, message: &str) -> FetchError {
        FetchError::invalid_config(format!("services.{}.{path}: {message}", self.name))
    }

    /// The content of a file named at `path` (e.g.
    /// `credentials.bearer.token_path`), read through the host's grant.
    pub fn read_file_at(&self, path: &str) -> Result<Option<Vec<u8>>, FetchError> {
        let Some(file) = self.str(path)? else {
            return Ok(None);
        };
        host::read_granted_file(file)
            .map(Some)
            .map_err(|e| FetchError::invalid_config(format!("services.{}.{path}: {e}", self.name)))
    }
}
