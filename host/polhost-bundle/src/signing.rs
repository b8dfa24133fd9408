//! Bundle signatures as OPA verifies them: `.signatures.json` holds one
//! JWT whose payload lists every file with its hash; the JWT is verified
//! with a configured key, then every file against its listed hash.
//!
//! Owns the keys' material, the JWT, file digests and OPA's canonical JSON
//! form. Never signs; never reads the archive itself (the validator hands
//! it each file's digests).

use std::collections::{BTreeMap, HashMap};

use base64::Engine;
use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::Digest;

use crate::keys::{Key, Signing};
use crate::secret::Secret;

/// The hash algorithms OPA signs files with, by their payload names.
pub const HASH_ALGORITHMS: [&str; 6] = ["MD5", "SHA-1", "SHA-224", "SHA-256", "SHA-384", "SHA-512"];

/// What a bundle's signature is verified with: the configured keys and the
/// bundle's `signing` settings.
#[derive(Debug)]
pub struct Verification {
    keys: HashMap<String, VerifyingKey>,
    keyid: Option<String>,
    scope: Option<String>,
    exclude_files: Vec<String>,
}

/// One parsed key.
struct VerifyingKey {
    algorithm: String,
    scope: String,
    material: Material,
}

impl std::fmt::Debug for VerifyingKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} key (scope {:?})", self.algorithm, self.scope)
    }
}

enum Material {
    Rsa(rsa::RsaPublicKey),
    P256(p256::ecdsa::VerifyingKey),
    P384(p384::ecdsa::VerifyingKey),
    P521(p521::ecdsa::VerifyingKey),
    Hmac(Secret),
}

impl Verification {
    /// The verification of a bundle with `signing` (if set) when `keys`
    /// are configured; `None` when neither is (signatures not checked, and
    /// a signed bundle refused). Errors name the key's field.
    pub fn new(keys: &[Key], signing: Option<&Signing>) -> Result<Option<Verification>, String> {
        if keys.is_empty() && signing.is_none() {
            return Ok(None);
        }
        let mut parsed = HashMap::new();
        for key in keys {
            let material = parse_key(&key.algorithm, key.key.expose())
                .map_err(|e| format!("keys.{}.key: {e}", key.id))?;
            parsed.insert(
                key.id.clone(),
                VerifyingKey {
                    algorithm: key.algorithm.clone(),
                    scope: key.scope.clone(),
                    material,
                },
            );
        }
        let signing = signing.cloned().unwrap_or_default();
        Ok(Some(Verification {
            keys: parsed,
            keyid: signing.keyid,
            scope: signing.scope,
            exclude_files: signing.exclude_files,
        }))
    }

    /// Whether `bundles.<n>.signing.keyid` is set (an unsigned bundle is
    /// then refused).
    pub fn requires_signature(&self) -> bool {
        self.keyid.is_some()
    }

    /// Whether the signature need not cover `path` (patterns may be
    /// written with or without the leading `/` OPA's loader gives paths).
    pub fn excluded(&self, path: &str) -> bool {
        let rooted = format!("/{path}");
        self.exclude_files
            .iter()
            .any(|p| glob_match(p, path) || glob_match(p, &rooted))
    }

    /// Verifies the JWT of `.signatures.json` and returns the files it
    /// lists, by normalised path.
    pub fn verify(&self, signatures_json: &[u8]) -> Result<BTreeMap<String, SignedFile>, String> {
        #[derive(Deserialize)]
        struct Signatures {
            signatures: Option<Vec<String>>,
        }
        let parsed: Signatures =
            serde_json::from_slice(signatures_json).map_err(|e| format!("invalid JSON: {e}"))?;
        let tokens = parsed.signatures.unwrap_or_default();
        let token = match tokens.as_slice() {
            [] => return Err("missing JWT (expected exactly one)".into()),
            [one] => one,
            _ => return Err("multiple JWTs are not supported (expected exactly one)".into()),
        };
        let payload = self.verify_jwt(token)?;
        let mut files = BTreeMap::new();
        for file in payload.files.unwrap_or_default() {
            let name = normalise(&file.name);
            files.insert(name, file);
        }
        Ok(files)
    }

    fn verify_jwt(&self, token: &str) -> Result<Payload, String> {
        let mut parts = token.split('.');
        let (Some(header), Some(payload), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err("the JWT is not three dot-separated parts".into());
        };
        let header_json = b64(header).map_err(|e| format!("JWT header: {e}"))?;
        let header: Header = serde_json::from_slice(&header_json)
            .map_err(|e| format!("JWT header is not valid JSON: {e}"))?;
        let payload_json = b64(payload).map_err(|e| format!("JWT payload: {e}"))?;
        let payload: Payload = serde_json::from_slice(&payload_json)
            .map_err(|e| format!("JWT payload is not valid: {e}"))?;
        let signature = b64(signature).map_err(|e| format!("JWT signature: {e}"))?;
        // OPA's order: the bundle's configured keyid, the JWT's kid, the
        // payload's (deprecated) keyid.
        let keyid = [&self.keyid, &header.kid, &payload.keyid]
            .into_iter()
            .flatten()
            .find(|k| !k.is_empty())
            .ok_or("no key id: none configured in signing.keyid, none in the JWT")?;
        let key = self
            .keys
            .get(keyid)
            .ok_or_else(|| format!("verification key {keyid:?} is not configured in keys"))?;
        if header.alg.as_deref() != Some(key.algorithm.as_str()) {
            return Err(format!(
                "the JWT is signed with {:?} but key {keyid:?} is {}",
                header.alg.as_deref().unwrap_or(""),
                key.algorithm
            ));
        }
        // The signing input: `header.payload`, as sent.
        let signed = &token[..token.rfind('.').unwrap_or(0)];
        verify_signature(key, signed.as_bytes(), &signature)
            .map_err(|e| format!("signature does not verify with key {keyid:?}: {e}"))?;
        let scope = self.scope.as_deref().unwrap_or(&key.scope);
        let signed_scope = payload.scope.as_deref().unwrap_or("");
        if signed_scope != scope {
            return Err(format!(
                "scope mismatch: the bundle is signed for scope {signed_scope:?}, expected {scope:?}"
            ));
        }
        Ok(payload)
    }
}

#[derive(Deserialize)]
struct Header {
    alg: Option<String>,
    kid: Option<String>,
}

#[derive(Deserialize)]
struct Payload {
    files: Option<Vec<SignedFile>>,
    scope: Option<String>,
    keyid: Option<String>,
}

/// One entry of the payload's `files`.
#[derive(Clone, Debug, Deserialize)]
pub struct SignedFile {
    /// Its path in the bundle.
    pub name: String,
    /// Hex digest.
    pub hash: String,
    /// `MD5`, `SHA-1`, `SHA-224`, `SHA-256`, `SHA-384` or `SHA-512`.
    #[serde(default)]
    pub algorithm: String,
}

fn b64(part: &str) -> Result<Vec<u8>, String> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part.trim_end_matches('='))
        .map_err(|e| format!("not base64url: {e}"))
}

/// A path as the signature names it: no leading `/` or `./`.
pub fn normalise(name: &str) -> String {
    name.split('/')
        .filter(|s| !s.is_empty() && *s != ".")
        .collect::<Vec<_>>()
        .join("/")
}

fn parse_key(algorithm: &str, pem: &str) -> Result<Material, String> {
    use p256::pkcs8::DecodePublicKey;
    let family = &algorithm[..2];
    let bad = |e: &dyn std::fmt::Display| format!("not a PEM public key for {algorithm}: {e}");
    match family {
        "HS" => Ok(Material::Hmac(Secret::new(pem.to_string()))),
        "RS" | "PS" => {
            use rsa::pkcs1::DecodeRsaPublicKey;
            rsa::RsaPublicKey::from_public_key_pem(pem.trim())
                .or_else(|_| rsa::RsaPublicKey::from_pkcs1_pem(pem.trim()))
                .map(Material::Rsa)
                .map_err(|e| bad(&e))
        }
        "ES" => match algorithm {
            "ES256" => p256::ecdsa::VerifyingKey::from_public_key_pem(pem.trim())
                .map(Material::P256)
                .map_err(|e| bad(&e)),
            "ES384" => p384::ecdsa::VerifyingKey::from_public_key_pem(pem.trim())
                .map(Material::P384)
                .map_err(|e| bad(&e)),
            _ => {
                let public =
                    p521::PublicKey::from_public_key_pem(pem.trim()).map_err(|e| bad(&e))?;
                p521::ecdsa::VerifyingKey::from_sec1_bytes(&public.to_sec1_bytes())
                    .map(Material::P521)
                    .map_err(|e| bad(&e))
            }
        },
        _ => Err(format!("unsupported algorithm {algorithm}")),
    }
}

fn verify_signature(key: &VerifyingKey, message: &[u8], signature: &[u8]) -> Result<(), String> {
    use rsa::signature::Verifier;
    let err = |e: &dyn std::fmt::Display| e.to_string();
    macro_rules! rsa_verify {
        ($scheme:ident, $hash:ty, $rsa:expr) => {{
            let vk = rsa::$scheme::VerifyingKey::<$hash>::new($rsa.clone());
            let sig = rsa::$scheme::Signature::try_from(signature).map_err(|e| err(&e))?;
            vk.verify(message, &sig).map_err(|e| err(&e))
        }};
    }
    macro_rules! hmac_verify {
        ($hash:ty, $secret:expr) => {{
            let mut mac =
                Hmac::<$hash>::new_from_slice($secret.expose().as_bytes()).map_err(|e| err(&e))?;
            mac.update(message);
            mac.verify_slice(signature).map_err(|e| err(&e))
        }};
    }
    match (&key.material, key.algorithm.as_str()) {
        (Material::Rsa(k), "RS256") => rsa_verify!(pkcs1v15, sha2::Sha256, k),
        (Material::Rsa(k), "RS384") => rsa_verify!(pkcs1v15, sha2::Sha384, k),
        (Material::Rsa(k), "RS512") => rsa_verify!(pkcs1v15, sha2::Sha512, k),
        (Material::Rsa(k), "PS256") => rsa_verify!(pss, sha2::Sha256, k),
        (Material::Rsa(k), "PS384") => rsa_verify!(pss, sha2::Sha384, k),
        (Material::Rsa(k), "PS512") => rsa_verify!(pss, sha2::Sha512, k),
        (Material::P256(k), _) => {
            let sig = p256::ecdsa::Signature::from_slice(signature).map_err(|e| err(&e))?;
            k.verify(message, &sig).map_err(|e| err(&e))
        }
        (Material::P384(k), _) => {
            let sig = p384::ecdsa::Signature::from_slice(signature).map_err(|e| err(&e))?;
            k.verify(message, &sig).map_err(|e| err(&e))
        }
        (Material::P521(k), _) => {
            let sig = p521::ecdsa::Signature::from_slice(signature).map_err(|e| err(&e))?;
            k.verify(message, &sig).map_err(|e| err(&e))
        }
        (Material::Hmac(s), "HS256") => hmac_verify!(sha2::Sha256, s),
        (Material::Hmac(s), "HS384") => hmac_verify!(sha2::Sha384, s),
        (Material::Hmac(s), "HS512") => hmac_verify!(sha2::Sha512, s),
        _ => Err("key and algorithm do not match".into()),
    }
}

/// Go's `filepath.Match` for the common cases: `*` (no `/`), `?`, literal.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    fn go(p: &[u8], n: &[u8]) -> bool {
        match (p.first(), n.first()) {
            (None, None) => true,
            (Some(b'*'), _) => go(&p[1..], n) || (!n.is_empty() && n[0] != b'/' && go(p, &n[1..])),
            (Some(b'?'), Some(c)) if *c != b'/' => go(&p[1..], &n[1..]),
            (Some(a), Some(b)) if a == b => go(&p[1..], &n[1..]),
            _ => false,
        }
    }
    go(pattern.as_bytes(), name.as_bytes())
}

/// A file's digests under every algorithm a signature may name, computed
/// in one pass.
#[derive(Clone, Default)]
pub struct Hashers {
    md5: md5::Md5,
    sha1: sha1::Sha1,
    sha224: sha2::Sha224,
    sha256: sha2::Sha256,
    sha384: sha2::Sha384,
    sha512: sha2::Sha512,
}

/// The finished digests of one file, hex, in [`HASH_ALGORITHMS`] order.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FileDigests(pub [String; 6]);

impl Hashers {
    /// Feeds bytes to every hash.
    pub fn update(&mut self, bytes: &[u8]) {
        self.md5.update(bytes);
        self.sha1.update(bytes);
        self.sha224.update(bytes);
        self.sha256.update(bytes);
        self.sha384.update(bytes);
        self.sha512.update(bytes);
    }

    /// The digests.
    pub fn finish(self) -> FileDigests {
        FileDigests([
            hex::encode(self.md5.finalize()),
            hex::encode(self.sha1.finalize()),
            hex::encode(self.sha224.finalize()),
            hex::encode(self.sha256.finalize()),
            hex::encode(self.sha384.finalize()),
            hex::encode(self.sha512.finalize()),
        ])
    }
}

impl FileDigests {
    /// The digest under `algorithm` (a payload name), if polhost knows it.
    pub fn get(&self, algorithm: &str) -> Option<&str> {
        HASH_ALGORITHMS
            .iter()
            .position(|a| *a == algorithm)
            .map(|i| self.0[i].as_str())
    }
}

/// Checks one file against the signature's list; `Err` says why.
pub fn check_file(signed: Option<&SignedFile>, digests: &FileDigests) -> Result<(), String> {
    let signed = signed.ok_or("not listed in the bundle signature")?;
    if signed.algorithm.is_empty() {
        return Err("the signature names no hashing algorithm for it".into());
    }
    let actual = digests
        .get(&signed.algorithm)
        .ok_or_else(|| format!("unsupported hashing algorithm {:?}", signed.algorithm))?;
    if !signed.hash.eq_ignore_ascii_case(actual) {
        return Err(format!(
            "digest mismatch ({}: signed {}, file has {actual})",
            signed.algorithm, signed.hash
        ));
    }
    Ok(())
}

/// OPA's canonical form of a structured file (`.manifest`, `data.json`,
/// `data.yaml`): objects with sorted keys, no whitespace, strings escaped
/// as Go's encoder does, numbers as written. `None` if it does not parse.
pub fn canonical_json(text: &[u8]) -> Option<Vec<u8>> {
    // Check it first with a real parser; the walk below trusts the syntax.
    serde_json::from_slice::<serde::de::IgnoredAny>(text).ok()?;
    let text = std::str::from_utf8(text).ok()?;
    let mut parser = Canon {
        s: text.as_bytes(),
        i: 0,
    };
    let value = parser.value()?;
    let mut out = String::new();
    value.write(&mut out);
    Some(out.into_bytes())
}

/// The canonical form of a YAML data file (numbers as JSON writes them),
/// parsed within the YAML budgets (an alias bomb gives `None`).
pub fn canonical_yaml(text: &[u8]) -> Option<Vec<u8>> {
    let value = crate::yaml::to_json(text)?;
    let mut out = String::new();
    Value::from_json(&value).write(&mut out);
    Some(out.into_bytes())
}

enum Value {
    Literal(String),
    Str(String),
    Array(Vec<Value>),
    Object(BTreeMap<String, Value>),
}

impl Value {
    fn from_json(v: &serde_json::Value) -> Value {
        match v {
            serde_json::Value::String(s) => Value::Str(s.clone()),
            serde_json::Value::Array(a) => Value::Array(a.iter().map(Value::from_json).collect()),
            serde_json::Value::Object(o) => Value::Object(
                o.iter()
                    .map(|(k, v)| (k.clone(), Value::from_json(v)))
                    .collect(),
            ),
            other => Value::Literal(other.to_string()),
        }
    }

    fn write(&self, out: &mut String) {
        match self {
            Value::Literal(l) => out.push_str(l),
            Value::Str(s) => write_str(s, out),
            Value::Array(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    item.write(out);
                }
                out.push(']');
            }
            Value::Object(map) => {
                out.push('{');
                for (i, (k, v)) in map.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    write_str(k, out);
                    out.push(':');
                    v.write(out);
                }
                out.push('}');
            }
        }
    }
}

/// A string as Go's JSON encoder writes it without HTML escaping.
fn write_str(s: &str, out: &mut String) {
    let quoted = serde_json::to_string(s).unwrap_or_default();
    for c in quoted.chars() {
        match c {
            '\u{2028}' => out.push_str("\\u2028"),
            '\u{2029}' => out.push_str("\\u2029"),
            c => out.push(c),
        }
    }
}

/// A walk over already-checked JSON text.
struct Canon<'a> {
    s: &'a [u8],
    i: usize,
}

impl Canon<'_> {
    fn ws(&mut self) {
        while self.i < self.s.len() && matches!(self.s[self.i], b' ' | b'\t' | b'\n' | b'\r') {
            self.i += 1;
        }
    }

    fn value(&mut self) -> Option<Value> {
        self.ws();
        let c = *self.s.get(self.i)?;
        match c {
            b'{' => {
                self.i += 1;
                let mut map = BTreeMap::new();
                loop {
                    self.ws();
                    match self.s.get(self.i)? {
                        b'}' => {
                            self.i += 1;
                            break;
                        }
                        b',' => self.i += 1,
                        _ => {
                            let key = self.string()?;
                            self.ws();
                            self.i += 1; // ':'
                            let value = self.value()?;
                            // The last duplicate wins, as in Go.
                            map.insert(key, value);
                        }
                    }
                }
                Some(Value::Object(map))
            }
            b'[' => {
                self.i += 1;
                let mut items = Vec::new();
                loop {
                    self.ws();
                    match self.s.get(self.i)? {
                        b']' => {
                            self.i += 1;
                            break;
                        }
                        b',' => self.i += 1,
                        _ => items.push(self.value()?),
                    }
                }
                Some(Value::Array(items))
            }
            b'"' => self.string().map(Value::Str),
            _ => {
                let start = self.i;
                while self.i < self.s.len()
                    && !matches!(
                        self.s[self.i],
                        b',' | b']' | b'}' | b' ' | b'\t' | b'\n' | b'\r'
                    )
                {
                    self.i += 1;
                }
                let literal = std::str::from_utf8(&self.s[start..self.i]).ok()?;
                Some(Value::Literal(literal.to_string()))
            }
        }
    }

    fn string(&mut self) -> Option<String> {
        let start = self.i;
        self.i += 1;
        while *self.s.get(self.i)? != b'"' {
            if self.s[self.i] == b'\\' {
                self.i += 1;
            }
            self.i += 1;
        }
        self.i += 1;
        serde_json::from_slice(&self.s[start..self.i]).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_json_sorts_keys_and_keeps_number_literals() {
        let text =
            br#"{ "b": [1.0, 1e3, -0, "x\u2028<&>"], "a": {"d": null, "c": true}, "a": {"z": 1} }"#;
        assert_eq!(
            String::from_utf8(canonical_json(text).unwrap()).unwrap(),
            r#"{"a":{"z":1},"b":[1.0,1e3,-0,"x\u2028<&>"]}"#
        );
        assert!(canonical_json(b"{not json").is_none());
        assert_eq!(
            canonical_yaml(b"b: 1\na: [x]\n").unwrap(),
            br#"{"a":["x"],"b":1}"#
        );
    }

    #[test]
    fn glob_matches_like_go_filepath_match() {
        assert!(glob_match("*.md", "README.md"));
        assert!(!glob_match("*.md", "authz/README.md"));
        assert!(glob_match("authz/*.md", "authz/README.md"));
        assert!(glob_match("authz/?.rego", "authz/a.rego"));
        assert!(!glob_match("authz/?.rego", "authz/ab.rego"));
    }

    #[test]
    fn no_keys_and_no_signing_means_no_verification() {
        assert!(Verification::new(&[], None).unwrap().is_none());
        let v = Verification::new(&[], Some(&Signing::default())).unwrap();
        assert!(v.is_some_and(|v| !v.requires_signature()));
    }

    #[test]
    fn malformed_signatures_file_says_why() {
        let v = Verification::new(&[], Some(&Signing::default()))
            .unwrap()
            .unwrap();
        assert!(v.verify(b"{").unwrap_err().starts_with("invalid JSON"));
        assert_eq!(
            v.verify(br#"{"signatures":[]}"#).unwrap_err(),
            "missing JWT (expected exactly one)"
        );
        assert!(
            v.verify(br#"{"signatures":["a","b"]}"#)
                .unwrap_err()
                .starts_with("multiple JWTs")
        );
        assert_eq!(
            v.verify(br#"{"signatures":["a.b"]}"#).unwrap_err(),
            "the JWT is not three dot-separated parts"
        );
    }
}
