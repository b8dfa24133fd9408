//! The bearer token of the local API: `Authorization: Bearer <token>` on
//! every request when one is configured. The token is compared in
//! constant time and never logged.

use http::header::{self, HeaderMap, HeaderValue};
use http::{Response, StatusCode};
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::bundle::Secret;
use crate::server::protocol::Body;

/// Whether `headers` carry `token` as a bearer credential.
pub(super) fn authorized(headers: &HeaderMap, token: &Secret) -> bool {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return false;
    };
    let Some((scheme, credentials)) = value.as_bytes().split_at_checked(7) else {
        return false;
    };
    scheme.eq_ignore_ascii_case(b"bearer ")
        && constant_time_eq(credentials.trim_ascii(), token.expose().as_bytes())
}

/// Compares the digests, so neither the position of the first differing
/// byte nor the token's length shows in the time taken.
fn constant_time_eq(given: &[u8], expected: &[u8]) -> bool {
    let given = Sha256::digest(given);
    let expected = Sha256::digest(expected);
    given
        .iter()
        .zip(expected.iter())
        .fold(0u8, |diff, (a, b)| diff | (a ^ b))
        == 0
}

/// `401`, in the shape of OPA's error bodies.
pub(super) fn unauthorized() -> Response<Body> {
    let mut response = super::json(
        StatusCode::UNAUTHORIZED,
        &json!({
            "code": "unauthorized",
            "message": "a valid Authorization: Bearer token is required",
        }),
    );
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"polhost\""),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_authorization(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, HeaderValue::from_str(value).unwrap());
        headers
    }

    #[test]
    fn only_the_exact_bearer_token_is_accepted() {
        let token = Secret::new("s3cr3t".into());
        for accepted in ["Bearer s3cr3t", "bearer s3cr3t", "BEARER  s3cr3t "] {
            assert!(
                authorized(&with_authorization(accepted), &token),
                "{accepted}"
            );
        }
        for refused in [
            "Bearer s3cr3",
            "Bearer s3cr3tt",
            "Bearer",
            "Bearer ",
            "Basic s3cr3t",
            "s3cr3t",
            "Bearers3cr3t",
        ] {
            assert!(
                !authorized(&with_authorization(refused), &token),
                "{refused}"
            );
        }
        assert!(!authorized(&HeaderMap::new(), &token));
    }

    #[test]
    fn unauthorized_says_how_to_authenticate() {
        let response = unauthorized();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(
            response.headers()[header::WWW_AUTHENTICATE],
            "Bearer realm=\"polhost\""
        );
    }
}
