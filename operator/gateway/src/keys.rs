//! The gateway's keys, derived from one secret (`AWOOOP_GATEWAY_KEY`).
//!
//! Each use gets its own key, HMAC-SHA256(master, label), so a per-run token can never pass
//! as a session id or an approval token and rotating the master rotates them all.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

type HmacSha256 = Hmac<Sha256>;

/// Smallest accepted master key, in bytes.
pub const MIN_KEY_BYTES: usize = 32;

#[derive(Clone)]
pub struct GatewayKeys {
    pub run_token: [u8; 32],
    pub session: [u8; 32],
    pub approval: [u8; 32],
}

impl std::fmt::Debug for GatewayKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GatewayKeys(<redacted>)")
    }
}

fn derive(master: &[u8], label: &str) -> [u8; 32] {
    hmac(master, label.as_bytes())
}

pub fn hmac(key: &[u8], msg: &[u8]) -> [u8; 32] {
    let mut m = HmacSha256::new_from_slice(key).expect("HMAC takes any key length");
    m.update(msg);
    m.finalize().into_bytes().into()
}

/// Constant-time check of a base64url MAC over `msg`.
pub fn verify_mac(key: &[u8], msg: &[u8], mac_b64: &str) -> bool {
    let Ok(presented) = URL_SAFE_NO_PAD.decode(mac_b64) else {
        return false;
    };
    let expected = hmac(key, msg);
    presented.len() == expected.len() && bool::from(presented.ct_eq(&expected))
}

pub fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

pub fn unb64(s: &str) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD.decode(s).ok()
}

impl GatewayKeys {
    pub fn derive(master: &str) -> Self {
        let m = master.as_bytes();
        Self {
            run_token: derive(m, "awooop-gateway-v1/run-token"),
            session: derive(m, "awooop-gateway-v1/session"),
            approval: derive(m, "awooop-gateway-v1/approval"),
        }
    }

    /// A fresh random master key (for `awooop up`'s `STATE_DIR/gateway-key`).
    pub fn generate_master() -> String {
        use rand::RngCore;
        let mut b = [0u8; 32];
        rand::rng().fill_bytes(&mut b);
        format!("awg.{}", hex::encode(b))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_give_distinct_keys() {
        let k = GatewayKeys::derive("x".repeat(40).as_str());
        assert_ne!(k.run_token, k.session);
        assert_ne!(k.session, k.approval);
        assert!(!format!("{k:?}").contains(&hex::encode(k.run_token)));
        let mac = b64(&hmac(&k.session, b"msg"));
        assert!(verify_mac(&k.session, b"msg", &mac));
        assert!(!verify_mac(&k.run_token, b"msg", &mac));
        assert!(!verify_mac(&k.session, b"msh", &mac));
        assert!(!verify_mac(&k.session, b"msg", "not base64!"));
    }
}
