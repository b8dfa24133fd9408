//! OPA's health checks over the agent's state: `/health` (with OPA's
//! `bundles`, `plugins` and `exclude-plugin` parameters), `/health/live`,
//! `/health/ready`. Bodies are OPA's, byte for byte.

use http::{Response, StatusCode};
use serde_json::json;

use super::status::plugin_state;
use crate::Agent;
use crate::server::protocol::Body;

/// OPA v1.22.3's texts, as its server writes them (checked against the
/// real OPA in tests/all/opa.rs); the bundle one ends with the names of the
/// bundles not yet activated, sorted, joined by ", ".
const BUNDLES_NOT_ACTIVATED: &str = "one or more bundles are not activated";
const PLUGINS_NOT_OK: &str = "one or more plugins are not up";

/// `/health`: 200 `{}`; with `bundles`, 500 until every configured bundle
/// has been activated at least once (from disk counts); with `plugins`,
/// 500 while the bundle plugin (polhost's only one) is not `OK`, unless
/// `exclude-plugin=bundle`.
pub(super) fn health(agent: &Agent, query: &str) -> Response<Body> {
    let params = Params::parse(query);
    let statuses = agent.status();
    if params.flag("bundles") {
        let mut waiting: Vec<&str> = statuses
            .iter()
            .filter(|s| s.activations == 0)
            .map(|s| s.name.as_str())
            .collect();
        if !waiting.is_empty() {
            waiting.sort_unstable();
            return error(&format!("{BUNDLES_NOT_ACTIVATED}: {}", waiting.join(", ")));
        }
    }
    if params.flag("plugins")
        && !params.values("exclude-plugin").any(|p| p == "bundle")
        && plugin_state(&statuses) != "OK"
    {
        return error(PLUGINS_NOT_OK);
    }
    healthy()
}

/// `/health/live`: the process answers.
pub(super) fn live() -> Response<Body> {
    healthy()
}

/// `/health/ready`: what `/health?bundles` says (OPA evaluates a policy
/// there; polhost has none, so readiness is having every bundle).
pub(super) fn ready(agent: &Agent) -> Response<Body> {
    health(agent, "bundles")
}

fn healthy() -> Response<Body> {
    super::json(StatusCode::OK, &json!({}))
}

fn error(message: &str) -> Response<Body> {
    super::json(
        StatusCode::INTERNAL_SERVER_ERROR,
        &json!({ "error": message }),
    )
}

/// A query string's parameters (names and values percent-decoded, `+` as
/// a space), in order.
struct Params(Vec<(String, String)>);

impl Params {
    fn parse(query: &str) -> Params {
        let decode = |s: &str| crate::server::protocol::percent_decode(&s.replace('+', " "));
        Params(
            query
                .split('&')
                .filter(|p| !p.is_empty())
                .filter_map(|pair| {
                    let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
                    Some((decode(name)?, decode(value)?))
                })
                .collect(),
        )
    }

    fn values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.0
            .iter()
            .filter(move |(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// OPA's `getBoolParam(url, name, true)`: present and empty or `true`.
    fn flag(&self, name: &str) -> bool {
        self.values(name)
            .next()
            .is_some_and(|v| v.is_empty() || v.eq_ignore_ascii_case("true"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_follow_opa_bool_rules() {
        let flag = |q: &str, name: &str| Params::parse(q).flag(name);
        assert!(flag("bundles", "bundles"));
        assert!(flag("bundles=", "bundles"));
        assert!(flag("bundles=true", "bundles"));
        assert!(flag("plugins&bundles=TRUE", "bundles"));
        assert!(!flag("bundles=false", "bundles"));
        assert!(!flag("bundles=1", "bundles"));
        assert!(!flag("", "bundles"));
        assert!(!flag("bundlesx", "bundles"));
        let params = Params::parse("exclude-plugin=bundle&exclude-plugin=my%20plugin");
        let excluded: Vec<_> = params.values("exclude-plugin").collect();
        assert_eq!(excluded, ["bundle", "my plugin"]);
    }
}
