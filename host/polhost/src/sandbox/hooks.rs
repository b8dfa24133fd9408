//! The `wasi:http` hook every outgoing request of a fetcher passes through:
//! it refuses origins outside the grant (a redirect is a new request, so
//! redirects are checked too), caps the number of requests per fetch, and
//! clamps the guest's timeouts to the host's. Under
//! [`OriginPolicy::LearnRedirectsAndTokenRealms`] it also reads the
//! responses of granted origins for the origins they send the fetcher to.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use wasmtime_wasi_http::{Error as HttpError, RequestOptions, WasiBody, WasiHttpHooks};

use super::{Grant, LEARNED_PRIVATE, Origin, OriginPolicy, shown_url};
use crate::net::{Transport, TransportFailure};

/// Per-fetch state of the hook.
pub(crate) struct SandboxHooks {
    grant: Arc<Grant>,
    /// The service's client: what a granted request is sent with.
    transport: Arc<Transport>,
    limits: RequestLimits,
    sent: u32,
    /// Origins learned during this fetch (see [`OriginPolicy`]); shared with
    /// the response futures, which fill it.
    learned: Arc<Mutex<Vec<Origin>>>,
    /// Why the last refused request was refused, for the fetch's error (the
    /// guest only sees `HttpRequestDenied`).
    pub(crate) denial: Option<String>,
    /// How the last failed request failed, in the host's words.
    pub(crate) failure: TransportFailure,
}

/// Bounds on one fetch's requests.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RequestLimits {
    pub max_requests: u32,
    pub connect_timeout: Duration,
    /// How long a response may take to start (the service's
    /// `response_header_timeout_seconds`, plus the long-polling wait).
    pub first_byte_timeout: Duration,
    pub between_bytes_timeout: Duration,
}

impl SandboxHooks {
    pub(crate) fn new(grant: Arc<Grant>, transport: Arc<Transport>, limits: RequestLimits) -> Self {
        SandboxHooks {
            grant,
            transport,
            limits,
            sent: 0,
            learned: Arc::default(),
            denial: None,
            failure: TransportFailure::default(),
        }
    }

    fn learned(&self) -> Vec<Origin> {
        self.learned.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// Why `uri` may not be requested, if it may not.
    fn refusal(&mut self, uri: &http::Uri) -> Option<String> {
        let shown = shown_url(uri);
        let Some(origin) = Origin::of_uri(uri) else {
            return Some(format!("request to {shown}: not an absolute http(s) URL"));
        };
        if !self.grant.allows_origin(&origin) && !self.learned().contains(&origin) {
            let learned = self.learned();
            let learned = if learned.is_empty() {
                String::new()
            } else {
                format!(
                    "; learned in this fetch: {}",
                    learned
                        .iter()
                        .map(Origin::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            };
            return Some(format!(
                "request to {shown}: origin {origin} is not granted to service {:?} (granted: {}{learned})",
                self.grant.service,
                self.grant
                    .origins
                    .iter()
                    .map(Origin::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        // A learned literal address is checked here; a learned name, on
        // the addresses it resolves to when the host connects.
        if !self.grant.allows_origin(&origin)
            && let Some(ip) = origin.host_ip()
            && let Some(class) = self.grant.address_refusal(origin.host(), ip)
        {
            return Some(format!(
                "request to {shown}: origin {origin}, learned in this fetch, is a {class} address, which service {:?} was not granted ({LEARNED_PRIVATE})",
                self.grant.service
            ));
        }
        if self.sent >= self.limits.max_requests {
            return Some(format!(
                "request to {shown}: more than {} requests in one fetch of service {:?}",
                self.limits.max_requests, self.grant.service
            ));
        }
        None
    }

    fn clamp(&self, options: Option<RequestOptions>) -> RequestOptions {
        let options = options.unwrap_or_default();
        let at_most =
            |asked: Option<Duration>, limit: Duration| Some(asked.map_or(limit, |a| a.min(limit)));
        RequestOptions {
            connect_timeout: at_most(options.connect_timeout, self.limits.connect_timeout),
            first_byte_timeout: at_most(options.first_byte_timeout, self.limits.first_byte_timeout),
            between_bytes_timeout: at_most(
                options.between_bytes_timeout,
                self.limits.between_bytes_timeout,
            ),
        }
    }
}

type SendResult = wasmtime_wasi_http::Result<(
    http::Response<WasiBody>,
    Box<dyn Future<Output = wasmtime_wasi_http::Result<()>> + Send>,
)>;

impl WasiHttpHooks for SandboxHooks {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        fut: Box<dyn Future<Output = wasmtime_wasi_http::Result<()>> + Send>,
    ) -> Box<dyn Future<Output = SendResult> + Send> {
        drop(fut);
        if let Some(why) = self.refusal(request.uri()) {
            tracing::warn!(service = %self.grant.service, "sandbox refused {why}");
            self.denial = Some(why);
            return Box::new(async { Err(HttpError::HttpRequestDenied) });
        }
        self.sent += 1;
        tracing::debug!(
            service = %self.grant.service,
            method = %request.method(),
            origin = ?Origin::of_uri(request.uri()).map(|o| o.to_string()),
            path = request.uri().path(),
            "fetcher request"
        );
        let options = self.clamp(options);
        // Only a granted origin's responses teach: one hop, no chains.
        let learner = match (self.grant.policy, Origin::of_uri(request.uri())) {
            (OriginPolicy::LearnRedirectsAndTokenRealms, Some(origin))
                if self.grant.allows_origin(&origin) =>
            {
                Some((
                    self.learned.clone(),
                    self.grant.clone(),
                    request.uri().clone(),
                ))
            }
            _ => None,
        };
        let (transport, failure) = (self.transport.clone(), self.failure.clone());
        Box::new(async move {
            let response = transport.send(request, options, failure).await?;
            if let Some((learned, grant, uri)) = learner {
                learn(&learned, &grant, &uri, &response);
            }
            // The pool drives the connection: nothing is left to await.
            Ok((
                response,
                Box::new(async { Ok(()) }) as Box<dyn Future<Output = _> + Send>,
            ))
        })
    }
}

/// Records the origins a granted origin's response sends the fetcher to: a
/// 3xx `Location` and a `WWW-Authenticate: Bearer realm`.
fn learn<B>(
    learned: &Mutex<Vec<Origin>>,
    grant: &Grant,
    request: &http::Uri,
    response: &http::Response<B>,
) {
    let headers = response.headers();
    let mut found = Vec::new();
    if response.status().is_redirection()
        && let Some(location) = headers.get(http::header::LOCATION)
        && let Ok(location) = location.to_str()
    {
        found.extend(absolute_origin(request, location).map(|o| (o, "redirect")));
    }
    for challenge in headers.get_all(http::header::WWW_AUTHENTICATE) {
        if let Ok(challenge) = challenge.to_str()
            && let Some(realm) = bearer_realm(challenge)
        {
            found.extend(absolute_origin(request, &realm).map(|o| (o, "token realm")));
        }
    }
    let Ok(mut learned) = learned.lock() else {
        return;
    };
    for (origin, why) in found {
        if !grant.allows_origin(&origin) && !learned.contains(&origin) {
            tracing::debug!(
                service = %grant.service,
                from = ?Origin::of_uri(request).map(|o| o.to_string()),
                "sandbox learned origin {origin} ({why}) for this fetch"
            );
            learned.push(origin);
        }
    }
}

/// The origin of `target` (absolute or `//host` reference) when it leaves
/// the request's origin; relative references stay on it.
fn absolute_origin(request: &http::Uri, target: &str) -> Option<Origin> {
    let target = target.trim();
    if let Some(rest) = target.strip_prefix("//") {
        return Origin::of_url(&format!("{}://{rest}", request.scheme_str()?));
    }
    if target.contains("://") {
        return Origin::of_url(target);
    }
    None
}

/// The `realm` of a `Bearer` challenge (`Bearer realm="https://auth/token",service=...`).
fn bearer_realm(challenge: &str) -> Option<String> {
    let challenge = challenge.trim();
    let (scheme, params) = challenge.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    for param in params.split(',') {
        let (key, value) = param.split_once('=')?;
        if key.trim().eq_ignore_ascii_case("realm") {
            return Some(value.trim().trim_matches('"').to_string());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(policy: OriginPolicy) -> Grant {
        Grant {
            service: "reg".into(),
            origins: vec![Origin::of_url("http://127.0.0.1:5000").unwrap()],
            policy,
            ..Grant::default()
        }
    }

    fn response(status: u16, headers: &[(&str, &str)]) -> http::Response<()> {
        let mut builder = http::Response::builder().status(status);
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        builder.body(()).unwrap()
    }

    #[test]
    fn learns_redirect_targets_and_token_realms_from_granted_origins() {
        let learned = Mutex::new(Vec::new());
        let grant = grant(OriginPolicy::LearnRedirectsAndTokenRealms);
        let uri: http::Uri = "http://127.0.0.1:5000/v2/o/r/blobs/sha256:ab"
            .parse()
            .unwrap();
        learn(
            &learned,
            &grant,
            &uri,
            &response(307, &[("location", "http://cdn.example:8080/blob?sig=x")]),
        );
        learn(
            &learned,
            &grant,
            &uri,
            &response(
                401,
                &[(
                    "www-authenticate",
                    r#"Bearer realm="https://auth.example/token",service="reg",scope="repository:o/r:pull""#,
                )],
            ),
        );
        // Relative locations and Basic challenges teach nothing.
        learn(
            &learned,
            &grant,
            &uri,
            &response(302, &[("location", "/v2/x")]),
        );
        learn(
            &learned,
            &grant,
            &uri,
            &response(401, &[("www-authenticate", r#"Basic realm="Registry""#)]),
        );
        let shown: Vec<String> = learned
            .lock()
            .unwrap()
            .iter()
            .map(Origin::to_string)
            .collect();
        assert_eq!(
            shown,
            vec!["http://cdn.example:8080", "https://auth.example:443"]
        );
    }

    #[test]
    fn learned_origins_are_reachable_and_named_in_refusals() {
        let limits = RequestLimits {
            max_requests: 32,
            connect_timeout: Duration::from_secs(1),
            first_byte_timeout: Duration::from_secs(1),
            between_bytes_timeout: Duration::from_secs(1),
        };
        let config = polhost_config::Config::parse(
            "services:\n  s:\n    url: http://registry.example\n",
            &|_| None,
        )
        .unwrap();
        let grant = Arc::new(grant(OriginPolicy::Fixed));
        let transport = Transport::new(
            &config.services[0],
            grant.clone(),
            &crate::net::Network::default(),
            Duration::from_secs(1),
        )
        .unwrap();
        let mut hooks = SandboxHooks::new(grant, Arc::new(transport), limits);
        let cdn: http::Uri = "http://cdn.example/blob".parse().unwrap();
        assert!(hooks.refusal(&cdn).is_some());
        hooks
            .learned
            .lock()
            .unwrap()
            .push(Origin::of_url("http://cdn.example").unwrap());
        assert!(hooks.refusal(&cdn).is_none());
        let elsewhere: http::Uri = "http://elsewhere.example/x".parse().unwrap();
        let why = hooks.refusal(&elsewhere).unwrap();
        assert!(
            why.contains("learned in this fetch: http://cdn.example:80"),
            "{why}"
        );
    }
}
