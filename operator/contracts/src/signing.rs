//! Publish signatures: HMAC-SHA256 over (project, kind, name, revision, body_hash), and the
//! keyring that holds HMAC key material outside the database.
//!
//! The database stores only key ids and SHA-256 fingerprints of the material; the keyring (a
//! mounted Kubernetes Secret or a local file, one `key_id:base64` per line) stores the material.
//! Verification recomputes the fingerprint so a keyring entry that does not match the
//! registered key is refused rather than trusted.

use std::collections::BTreeMap;
use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use super::ContractKind;
use awooop_core::error::{Error, ErrorCode};

type HmacSha256 = Hmac<Sha256>;

/// The exact bytes a publisher signs. Fields are validated slugs/hashes that cannot contain a
/// newline, so the newline-separated encoding is unambiguous.
pub fn publish_message(
    project: &str,
    kind: ContractKind,
    name: &str,
    revision: i32,
    body_hash: &str,
) -> String {
    format!(
        "awooop-publish-v1\n{project}\n{}\n{name}\n{revision}\n{body_hash}",
        kind.as_str()
    )
}

/// Hex HMAC-SHA256 of `message` under `key`.
pub fn sign(key: &[u8], message: &str) -> String {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(message.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// Constant-time verification of a hex signature.
pub fn verify(key: &[u8], message: &str, signature_hex: &str) -> bool {
    let Ok(sig) = hex::decode(signature_hex) else {
        return false;
    };
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(message.as_bytes());
    mac.verify_slice(&sig).is_ok()
}

/// `sha256:<hex>` fingerprint of key material, the only thing the database stores.
pub fn fingerprint(key: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(key)))
}

/// HMAC key material by key id. `Debug` never prints material.
#[derive(Clone, Default)]
pub struct Keyring {
    keys: BTreeMap<String, Vec<u8>>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keyring")
            .field("key_ids", &self.keys.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Keyring {
    /// Parse `key_id:base64` lines; `#` starts a comment. Keys shorter than 32 bytes are refused.
    pub fn parse(text: &str) -> Result<Self, Error> {
        let mut keys = BTreeMap::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bad = |why: &str| {
                Error::new(
                    ErrorCode::ContractSigningKey,
                    format!("keyring line {}: {why}", n + 1),
                )
            };
            let (id, b64) = line
                .split_once(':')
                .ok_or_else(|| bad("expected key_id:base64"))?;
            let id = id.trim();
            if !is_key_id(id) {
                return Err(bad("key id must match [A-Za-z0-9._-]{1,64}"));
            }
            let key = STANDARD
                .decode(b64.trim())
                .map_err(|_| bad("material is not valid base64"))?;
            if key.len() < 32 {
                return Err(bad("key material must be at least 32 bytes"));
            }
            keys.insert(id.to_string(), key);
        }
        Ok(Self { keys })
    }

    pub fn load(path: &Path) -> Result<Self, Error> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::new(
                ErrorCode::ContractSigningKey,
                format!("cannot read keyring {}", path.display()),
            )
            .with_source(e)
        })?;
        Self::parse(&text)
    }

    pub fn get(&self, key_id: &str) -> Option<&[u8]> {
        self.keys.get(key_id).map(Vec::as_slice)
    }

    pub fn insert(&mut self, key_id: &str, material: Vec<u8>) {
        self.keys.insert(key_id.to_string(), material);
    }

    pub fn ids(&self) -> impl Iterator<Item = &str> {
        self.keys.keys().map(String::as_str)
    }

    /// Serialise back to the file format (for `awooop signing-key create`).
    pub fn to_text(&self) -> String {
        let mut s =
            String::from("# AwoooP publish keyring: key_id:base64(material). Keep secret.\n");
        for (id, k) in &self.keys {
            s.push_str(&format!("{id}:{}\n", STANDARD.encode(k)));
        }
        s
    }

    /// Generate fresh 32-byte material.
    pub fn generate() -> Vec<u8> {
        use rand::RngCore;
        let mut k = vec![0u8; 32];
        rand::rng().fill_bytes(&mut k);
        k
    }
}

pub fn is_key_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_verify_roundtrip_and_tamper() {
        let key = [7u8; 32];
        let msg = publish_message("awoooi", ContractKind::Agent, "triage", 3, "sha256:00");
        let sig = sign(&key, &msg);
        assert!(verify(&key, &msg, &sig));
        // any change of any bound field breaks the signature
        let other = publish_message("awoooi", ContractKind::Agent, "triage", 4, "sha256:00");
        assert!(!verify(&key, &other, &sig));
        let mut flipped = sig.clone().into_bytes();
        flipped[0] = if flipped[0] == b'0' { b'1' } else { b'0' };
        assert!(!verify(&key, &msg, std::str::from_utf8(&flipped).unwrap()));
        assert!(!verify(&[8u8; 32], &msg, &sig));
        assert!(!verify(&key, &msg, "not-hex"));
        assert!(!verify(&key, &msg, ""));
    }

    #[test]
    fn keyring_parses_and_hides_material() {
        let text = format!("# c\nk1:{}\n", STANDARD.encode([1u8; 32]));
        let ring = Keyring::parse(&text).unwrap();
        assert_eq!(ring.get("k1"), Some(&[1u8; 32][..]));
        assert!(!format!("{ring:?}").contains(&STANDARD.encode([1u8; 32])));
        assert!(Keyring::parse("k1:short").is_err());
        assert!(Keyring::parse("nocolon").is_err());
        assert!(Keyring::parse(&format!("bad id:{}", STANDARD.encode([1u8; 32]))).is_err());
        let again = Keyring::parse(&ring.to_text()).unwrap();
        assert_eq!(again.get("k1"), ring.get("k1"));
    }
}
