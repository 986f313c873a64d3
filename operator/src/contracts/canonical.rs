//! PLACEHOLDER until the RFC 8785 module lands.
pub fn canonicalize(v: &serde_json::Value) -> Vec<u8> {
    serde_json::to_vec(v).unwrap()
}
pub fn sha256_ref(bytes: &[u8]) -> String {
    use sha2::Digest;
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes)))
}
pub fn is_sha256_ref(s: &str) -> bool {
    s.len() == 71 && s.starts_with("sha256:") && s[7..].bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}
pub fn body_hash(v: &serde_json::Value) -> String { sha256_ref(&canonicalize(v)) }
