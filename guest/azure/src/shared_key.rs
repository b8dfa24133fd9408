//! Azure Storage SharedKey authorisation (Blob service, version 2009-09-19
//! and later): the string to sign, HMAC-SHA256 under the account key, the
//! `Authorization: SharedKey <account>:<signature>` header. Pure: nothing
//! here logs or keeps the key.

use polhost_fetcher::base64;
use polhost_fetcher::crypto::hmac_sha256;
use polhost_fetcher::percent;
use polhost_fetcher::url::Url;

/// The standard headers of the string to sign, in its order.
const STANDARD: [&str; 11] = [
    "content-encoding",
    "content-language",
    "content-length",
    "content-md5",
    "content-type",
    "date",
    "if-modified-since",
    "if-match",
    "if-none-match",
    "if-unmodified-since",
    "range",
];

/// The string to sign for a request with `headers` (any case) to `url`.
pub fn string_to_sign(
    method: &str,
    url: &Url,
    headers: &[(String, String)],
    account: &str,
) -> String {
    let find = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim())
            .unwrap_or("")
    };
    let mut out = format!("{method}\n");
    for name in STANDARD {
        let value = find(name);
        // A zero Content-Length is signed as empty (version 2015-02-21+).
        let value = if name == "content-length" && value == "0" {
            ""
        } else {
            value
        };
        out.push_str(value);
        out.push('\n');
    }
    let mut ms: Vec<(String, String)> = headers
        .iter()
        .filter(|(n, _)| n.to_ascii_lowercase().starts_with("x-ms-"))
        .map(|(n, v)| (n.to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    ms.sort();
    for (n, v) in ms {
        out.push_str(&format!("{n}:{v}\n"));
    }
    let (path, query) = url
        .path_and_query
        .split_once('?')
        .unwrap_or((&url.path_and_query, ""));
    out.push_str(&format!("/{account}{path}"));
    let mut params: Vec<(String, String)> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent::decode(k).to_ascii_lowercase(), percent::decode(v))
        })
        .collect();
    params.sort();
    let mut merged: Vec<(String, Vec<String>)> = Vec::new();
    for (k, v) in params {
        match merged.last_mut() {
            Some((last, values)) if *last == k => values.push(v),
            _ => merged.push((k, vec![v])),
        }
    }
    for (k, values) in merged {
        out.push_str(&format!("\n{k}:{}", values.join(",")));
    }
    out
}

/// The `Authorization` header value.
pub fn authorization(
    method: &str,
    url: &Url,
    headers: &[(String, String)],
    account: &str,
    key: &[u8],
) -> String {
    let signature = hmac_sha256(
        key,
        string_to_sign(method, url, headers, account).as_bytes(),
    );
    format!("SharedKey {account}:{}", base64::encode(&signature))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emulator_paths_hold_the_account_twice() {
        let url = Url::parse(
            "http://127.0.0.1:10000/devstoreaccount1/bundles/authz.tar.gz?comp=metadata",
        )
        .unwrap();
        let headers = [
            ("x-ms-version", "2021-12-02"),
            ("x-ms-date", "Fri, 27 Nov 2026 21:00:00 GMT"),
            ("If-None-Match", "\"0x1\""),
        ]
        .map(|(n, v)| (n.to_string(), v.to_string()));
        assert_eq!(
            string_to_sign("GET", &url, &headers, "devstoreaccount1"),
            "GET\n\n\n\n\n\n\n\n\n\"0x1\"\n\n\n\
             x-ms-date:Fri, 27 Nov 2026 21:00:00 GMT\nx-ms-version:2021-12-02\n\
             /devstoreaccount1/devstoreaccount1/bundles/authz.tar.gz\ncomp:metadata"
        );
        let auth = authorization("GET", &url, &headers, "devstoreaccount1", b"key");
        assert!(auth.starts_with("SharedKey devstoreaccount1:"));
    }
}
