//! Reading the service's configuration subtree (JSON text handed over by the
//! host), with errors that name the field.

use crate::FetchError;
use crate::bindings::polhost::fetcher::host;
use serde_json::Value;

/// OPA's `credentials.bearer`, read.
pub struct Bearer {
    /// The `Authorization` scheme (`Bearer`, `Basic`, ...).
    pub scheme: String,
    /// The token: a secret, never to be logged.
    pub token: String,
}

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

    /// Refuses every credential method but `supported` (names under
    /// `credentials`): a method a fetcher does not implement must fail
    /// loudly rather than send requests without credentials.
    pub fn only_credential_methods(
        &self,
        fetcher: &str,
        supported: &[&str],
    ) -> Result<(), FetchError> {
        let Some(Value::Object(methods)) = self.get("credentials") else {
            return Ok(());
        };
        let Some(other) = methods.keys().find(|m| !supported.contains(&m.as_str())) else {
            return Ok(());
        };
        let names: Vec<String> = supported
            .iter()
            .map(|m| format!("credentials.{m}"))
            .collect();
        let list = match names.split_last() {
            Some((last, [])) => last.clone(),
            Some((last, rest)) => format!("{} and {last}", rest.join(", ")),
            None => "none".to_string(),
        };
        Err(self.invalid(
            &format!("credentials.{other}"),
            &format!("not supported by the {fetcher} fetcher (it supports {list})"),
        ))
    }

    /// The secret at `<field>.token`, else the content of the file at
    /// `<field>.token_path` (read through the host's grant on every call,
    /// so a rotated file is picked up), trimmed; `None` when neither is set.
    pub fn token_or_token_path(&self, field: &str) -> Result<Option<String>, FetchError> {
        if let Some(token) = self.str(&format!("{field}.token"))? {
            return Ok(Some(token.to_string()));
        }
        let path = format!("{field}.token_path");
        let Some(bytes) = self.read_file_at(&path)? else {
            return Ok(None);
        };
        let text =
            String::from_utf8(bytes).map_err(|_| self.invalid(&path, "file is not UTF-8 text"))?;
        Ok(Some(text.trim().to_string()))
    }

    /// OPA's `credentials.bearer`: its token (see
    /// [`Self::token_or_token_path`]) and `scheme` (default `Bearer`).
    pub fn bearer(&self) -> Result<Option<Bearer>, FetchError> {
        let Some(token) = self.token_or_token_path("credentials.bearer")? else {
            return Ok(None);
        };
        let scheme = self
            .str("credentials.bearer.scheme")?
            .unwrap_or("Bearer")
            .to_string();
        Ok(Some(Bearer { scheme, token }))
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

#[cfg(test)]
mod tests {
    use super::ServiceConfig;

    #[test]
    fn a_method_the_fetcher_lacks_is_named_with_what_it_supports() {
        let config = ServiceConfig::parse("web", r#"{"credentials":{"oauth2":{}}}"#).unwrap();
        let one = config
            .only_credential_methods("http", &["bearer"])
            .unwrap_err();
        assert_eq!(
            one.message,
            "services.web.credentials.oauth2: not supported by the http fetcher (it supports credentials.bearer)"
        );
        let three = config
            .only_credential_methods(
                "azure",
                &["azure_shared_key", "azure_sas", "azure_managed_identity"],
            )
            .unwrap_err();
        assert!(three.message.ends_with(
            "(it supports credentials.azure_shared_key, credentials.azure_sas and credentials.azure_managed_identity)"
        ));
        assert!(config.only_credential_methods("x", &["oauth2"]).is_ok());
        let none = ServiceConfig::parse("web", "{}").unwrap();
        assert!(none.only_credential_methods("http", &["bearer"]).is_ok());
    }
}
