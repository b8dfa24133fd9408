//! A client key from its PEM file, decrypted with
//! `private_key_passphrase` when it is encrypted: OpenSSL's legacy form
//! (RFC 1423: `Proc-Type: 4,ENCRYPTED` and `DEK-Info`, what OPA decrypts
//! with Go's `x509.DecryptPEMBlock`, made by `openssl genrsa -aes256` or
//! `openssl ec -aes256`), and PKCS#8's `ENCRYPTED PRIVATE KEY` (PBES2,
//! what OpenSSL 3 writes by default: `openssl pkey -aes256`), which OPA
//! cannot read.
//!
//! As in OPA, a passphrase given for an unencrypted key is not used.

use aes::cipher::{BlockDecryptMut, KeyIvInit, block_padding::Pkcs7};
use md5::{Digest, Md5};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs1KeyDer, PrivatePkcs8KeyDer, PrivateSec1KeyDer};

/// Why a key cannot be used, in words that never hold the key or the
/// passphrase.
pub(crate) type KeyError = String;

/// The key of `pem`, decrypted with `passphrase` where it is encrypted.
pub(crate) fn private_key(
    pem: &[u8],
    passphrase: Option<&str>,
) -> Result<PrivateKeyDer<'static>, KeyError> {
    let text = std::str::from_utf8(pem).map_err(|_| "not a PEM file (not text)".to_string())?;
    let block = first_key_block(text)?;
    let encrypted = block.label == "ENCRYPTED PRIVATE KEY" || block.dek_info.is_some();
    let der = match (encrypted, passphrase) {
        (false, _) => block.der,
        (true, None) => {
            return Err(
                "the key is encrypted: give its passphrase in private_key_passphrase".into(),
            );
        }
        (true, Some(passphrase)) => match &block.dek_info {
            Some(dek_info) => decrypt_rfc1423(&block.der, dek_info, passphrase.as_bytes())?,
            None => decrypt_pkcs8(&block.der, passphrase)?,
        },
    };
    Ok(match block.label.as_str() {
        "RSA PRIVATE KEY" => PrivateKeyDer::Pkcs1(PrivatePkcs1KeyDer::from(der)),
        "EC PRIVATE KEY" => PrivateKeyDer::Sec1(PrivateSec1KeyDer::from(der)),
        _ => PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(der)),
    })
}

/// One PEM block: its label, its RFC 1423 `DEK-Info` if any, its bytes.
struct Block {
    label: String,
    dek_info: Option<String>,
    der: Vec<u8>,
}

const KEY_LABELS: &[&str] = &[
    "PRIVATE KEY",
    "RSA PRIVATE KEY",
    "EC PRIVATE KEY",
    "ENCRYPTED PRIVATE KEY",
];

/// The first private-key block of `text` (an `EC PARAMETERS` block before
/// it, as `openssl ecparam -genkey` writes, is skipped).
fn first_key_block(text: &str) -> Result<Block, KeyError> {
    let mut lines = text.lines().map(str::trim);
    while let Some(line) = lines.next() {
        let Some(label) = line
            .strip_prefix("-----BEGIN ")
            .and_then(|l| l.strip_suffix("-----"))
        else {
            continue;
        };
        if !KEY_LABELS.contains(&label) {
            continue;
        }
        let end = format!("-----END {label}-----");
        let mut dek_info = None;
        let mut body = String::new();
        let mut ended = false;
        for line in lines.by_ref() {
            if line == end {
                ended = true;
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                if name.eq_ignore_ascii_case("DEK-Info") {
                    dek_info = Some(value.trim().to_string());
                }
                continue;
            }
            body.push_str(line);
        }
        if !ended {
            return Err(format!("the {label} block has no end line"));
        }
        let der = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, &body)
            .map_err(|_| format!("the {label} block is not base64"))?;
        return Ok(Block {
            label: label.to_string(),
            dek_info,
            der,
        });
    }
    Err("holds no PEM private key (PRIVATE KEY, RSA PRIVATE KEY, EC PRIVATE KEY or ENCRYPTED PRIVATE KEY)".into())
}

/// RFC 1423: `DEK-Info: <cipher>,<iv hex>`; the key is OpenSSL's
/// `EVP_BytesToKey` (MD5, one round) over the passphrase and the IV's
/// first 8 bytes.
fn decrypt_rfc1423(der: &[u8], dek_info: &str, passphrase: &[u8]) -> Result<Vec<u8>, KeyError> {
    let (cipher, iv) = dek_info
        .split_once(',')
        .ok_or_else(|| format!("DEK-Info {dek_info:?} is not <cipher>,<iv>"))?;
    let iv = hex::decode(iv.trim()).map_err(|_| "DEK-Info's IV is not hex".to_string())?;
    let key_len = match cipher.trim() {
        "DES-CBC" => 8,
        "DES-EDE3-CBC" | "AES-192-CBC" => 24,
        "AES-128-CBC" => 16,
        "AES-256-CBC" => 32,
        other => {
            return Err(format!(
                "the key is encrypted with {other}: only DES-CBC, DES-EDE3-CBC and AES-128/192/256-CBC are read (as OPA reads them)"
            ));
        }
    };
    let block_len = if cipher.starts_with("DES") { 8 } else { 16 };
    if iv.len() != block_len {
        return Err(format!(
            "DEK-Info's IV is {} bytes, not {block_len}",
            iv.len()
        ));
    }
    let key = bytes_to_key(passphrase, &iv[..8], key_len);
    let mut buffer = der.to_vec();
    let wrong = || "the passphrase does not decrypt the key".to_string();
    let plain_len = match cipher.trim() {
        "DES-CBC" => decrypt::<cbc::Decryptor<des::Des>>(&key, &iv, &mut buffer),
        "DES-EDE3-CBC" => decrypt::<cbc::Decryptor<des::TdesEde3>>(&key, &iv, &mut buffer),
        "AES-128-CBC" => decrypt::<cbc::Decryptor<aes::Aes128>>(&key, &iv, &mut buffer),
        "AES-192-CBC" => decrypt::<cbc::Decryptor<aes::Aes192>>(&key, &iv, &mut buffer),
        _ => decrypt::<cbc::Decryptor<aes::Aes256>>(&key, &iv, &mut buffer),
    }
    .ok_or_else(wrong)?;
    buffer.truncate(plain_len);
    // A wrong passphrase leaves valid padding one time in 256: the
    // plaintext must at least be a DER SEQUENCE.
    if buffer.first() != Some(&0x30) {
        return Err(wrong());
    }
    Ok(buffer)
}

fn decrypt<D: KeyIvInit + BlockDecryptMut>(
    key: &[u8],
    iv: &[u8],
    buffer: &mut [u8],
) -> Option<usize> {
    let decryptor = D::new_from_slices(key, iv).ok()?;
    decryptor
        .decrypt_padded_mut::<Pkcs7>(buffer)
        .ok()
        .map(<[u8]>::len)
}

/// OpenSSL's `EVP_BytesToKey` with MD5 and one iteration.
fn bytes_to_key(passphrase: &[u8], salt: &[u8], len: usize) -> Vec<u8> {
    let mut key = Vec::with_capacity(len + 16);
    let mut previous: Vec<u8> = Vec::new();
    while key.len() < len {
        let mut md5 = Md5::new();
        md5.update(&previous);
        md5.update(passphrase);
        md5.update(salt);
        previous = md5.finalize().to_vec();
        key.extend_from_slice(&previous);
    }
    key.truncate(len);
    key
}

fn decrypt_pkcs8(der: &[u8], passphrase: &str) -> Result<Vec<u8>, KeyError> {
    let info = pkcs8::EncryptedPrivateKeyInfo::try_from(der)
        .map_err(|e| format!("not a PKCS#8 encrypted key: {e}"))?;
    let document = info.decrypt(passphrase).map_err(|e| match e {
        pkcs8::Error::EncryptedPrivateKey(pkcs8::pkcs5::Error::UnsupportedAlgorithm { oid }) => {
            format!("the key is encrypted with an algorithm not read here ({oid}): re-encrypt it with openssl pkey -aes256")
        }
        _ => "the passphrase does not decrypt the key".to_string(),
    })?;
    Ok(document.as_bytes().to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_to_key_is_openssls() {
        // `openssl enc -aes-256-cbc -P -md md5 -pass pass:polhost -S 0001020304050607`
        let key = bytes_to_key(b"polhost", &[0, 1, 2, 3, 4, 5, 6, 7], 32);
        assert_eq!(
            hex::encode(key),
            "a57ba935fdd67156e54ead1da365e2f95b92a9cf3dfca636ccb43c1e65b83c9f"
        );
    }

    #[test]
    fn encrypted_keys_need_their_passphrase() {
        let block = "-----BEGIN RSA PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\nDEK-Info: AES-256-CBC,000102030405060708090A0B0C0D0E0F\n\nAAAAAAAAAAAAAAAAAAAAAA==\n-----END RSA PRIVATE KEY-----\n";
        assert_eq!(
            private_key(block.as_bytes(), None).unwrap_err(),
            "the key is encrypted: give its passphrase in private_key_passphrase"
        );
        assert_eq!(
            private_key(block.as_bytes(), Some("wrong")).unwrap_err(),
            "the passphrase does not decrypt the key"
        );
        let other = block.replace("AES-256-CBC", "CAMELLIA-256-CBC");
        assert!(
            private_key(other.as_bytes(), Some("x"))
                .unwrap_err()
                .starts_with("the key is encrypted with CAMELLIA-256-CBC")
        );
        assert!(
            private_key(
                b"-----BEGIN CERTIFICATE-----\nAA==\n-----END CERTIFICATE-----\n",
                None
            )
            .unwrap_err()
            .starts_with("holds no PEM private key")
        );
    }
}
