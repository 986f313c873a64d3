//! Caller credentials of the gateway: per-run tokens and signed MCP session ids.
//!
//! A per-run token (`awr1.<claims>.<mac>`) is minted by the runtime for the run it executes (or
//! by `awooop token mint` for local agents). Its claims fix project, agent, run, environment and
//! mode; nothing in a JSON-RPC payload can override them. Session ids (`mcs1.<claims>.<mac>`)
//! are signed, not stored: any replica with the gateway key accepts them and a restart loses
//! nothing. A session is bound to a digest of the credential that initialized it, so a session
//! id presented with another credential is refused; identity itself always comes from the
//! credential on each request.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::keys::{GatewayKeys, b64, hmac, unb64, verify_mac};
use awooop_control::MigrationMode;
use awooop_core::error::{Error, ErrorCode, Result};
use awooop_store::tenancy::ProjectId;

pub const RUN_TOKEN_PREFIX: &str = "awr1.";
pub const SESSION_PREFIX: &str = "mcs1.";
/// Longest lifetime (`exp - iat`) of a per-run token, checked when minting and verifying: a
/// leaked token stops working within a day even when its run never ends. A token bound to a
/// run also stops working as soon as the run is terminal (checked by `/mcp`).
pub const MAX_RUN_TOKEN_TTL_SECONDS: i64 = 24 * 3600;
/// Clock skew tolerated on `iat`.
const MAX_SKEW_SECONDS: i64 = 60;

/// Claims of a per-run token.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunTokenClaims {
    pub project: String,
    pub agent: String,
    pub run_id: Option<Uuid>,
    pub environment: String,
    pub mode: Option<MigrationMode>,
    pub iat: i64,
    pub exp: i64,
}

fn seal(prefix: &str, key: &[u8], claims: &impl Serialize) -> String {
    let body = b64(&serde_json::to_vec(claims).expect("claims serialize"));
    let signing = format!("{prefix}{body}");
    let mac = b64(&hmac(key, signing.as_bytes()));
    format!("{signing}.{mac}")
}

fn open<T: for<'de> Deserialize<'de>>(prefix: &str, key: &[u8], token: &str) -> Option<T> {
    if token.len() > 4096 {
        return None;
    }
    let rest = token.strip_prefix(prefix)?;
    let (body, mac) = rest.rsplit_once('.')?;
    if !verify_mac(key, format!("{prefix}{body}").as_bytes(), mac) {
        return None;
    }
    serde_json::from_slice(&unb64(body)?).ok()
}

pub fn slug_ok(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_lowercase()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
}

/// Mint a per-run token.
pub fn mint_run_token(key: &[u8], claims: &RunTokenClaims) -> Result<String> {
    ProjectId::parse(&claims.project)?;
    if !slug_ok(&claims.agent) || !slug_ok(&claims.environment) {
        return Err(Error::new(
            ErrorCode::ReqInvalidParam,
            "agent and environment must be slugs ^[a-z][a-z0-9-]{0,62}$",
        ));
    }
    if claims.exp <= claims.iat || claims.exp - claims.iat > MAX_RUN_TOKEN_TTL_SECONDS {
        return Err(Error::new(
            ErrorCode::ReqInvalidParam,
            format!("token lifetime must be 1..={MAX_RUN_TOKEN_TTL_SECONDS} seconds"),
        ));
    }
    Ok(seal(RUN_TOKEN_PREFIX, key, claims))
}

fn invalid_run_token() -> Error {
    Error::new(ErrorCode::AuthInvalid, "invalid credential")
}

/// Everything about a per-run token that does not depend on the time: its MAC under `key`,
/// its claims, their lifetime limit, project id and agent slug. A pure function of `key` and
/// the token's bytes ([`VerifiedTokens`] relies on that).
fn open_run_token(key: &[u8], token: &str) -> Option<RunTokenClaims> {
    let c: RunTokenClaims = open(RUN_TOKEN_PREFIX, key, token)?;
    (c.exp - c.iat <= MAX_RUN_TOKEN_TTL_SECONDS
        && ProjectId::parse(&c.project).is_ok()
        && slug_ok(&c.agent))
    .then_some(c)
}

/// The time-dependent part: not expired, not issued in the future (beyond the skew).
fn run_token_current(c: &RunTokenClaims, now: i64) -> bool {
    c.exp > now && c.iat <= now + MAX_SKEW_SECONDS
}

/// Verify a per-run token; every failure is the same `E-AUTH-002`.
pub fn verify_run_token(key: &[u8], token: &str, now: i64) -> Result<RunTokenClaims> {
    match open_run_token(key, token) {
        Some(c) if run_token_current(&c, now) => Ok(c),
        _ => Err(invalid_run_token()),
    }
}

/// Claims of a session id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionClaims {
    /// Session nonce (uniqueness only).
    pub sid: String,
    /// Digest of the credential that initialized the session.
    pub cred: String,
    /// Negotiated protocol revision.
    pub ver: String,
    pub iat: i64,
    pub exp: i64,
}

/// A short digest identifying a credential (never reversible to it).
pub fn credential_digest(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_be_bytes());
        h.update(p.as_bytes());
    }
    hex::encode(&h.finalize()[..16])
}

pub fn mint_session(key: &[u8], cred: &str, version: &str, now: i64, ttl: i64) -> String {
    let claims = SessionClaims {
        sid: Uuid::new_v4().simple().to_string(),
        cred: cred.into(),
        ver: version.into(),
        iat: now,
        exp: now + ttl,
    };
    seal(SESSION_PREFIX, key, &claims)
}

fn invalid_session() -> Error {
    Error::new(
        ErrorCode::McpSession,
        "unknown or expired session: initialize again",
    )
}

/// The time- and credential-dependent part of a session check.
fn session_current(c: &SessionClaims, cred: &str, now: i64) -> bool {
    c.exp > now && c.cred == cred
}

/// Verify a session id for the presenting credential.
pub fn verify_session(key: &[u8], id: &str, cred: &str, now: i64) -> Result<SessionClaims> {
    match open::<SessionClaims>(SESSION_PREFIX, key, id) {
        Some(c) if session_current(&c, cred, now) => Ok(c),
        _ => Err(invalid_session()),
    }
}

/// A per-run token whose signature and claims were verified, with what `/mcp` derives from it.
#[derive(Debug)]
pub struct VerifiedRunToken {
    pub claims: RunTokenClaims,
    pub project: ProjectId,
    /// [`credential_digest`] of the token (what its sessions are bound to).
    pub cred: String,
}

/// Entries kept per map before it is cleared (only tokens signed with the gateway's keys get
/// in, so the bound is on memory, not on what an attacker can make us verify).
const MAX_VERIFIED: usize = 16_384;

/// Per-run tokens and session ids verified once, then recognised by their exact bytes.
///
/// Why this keeps every check: the MAC, the claims' shape and lifetime limit, the project id
/// and the agent slug are a pure function of the token's bytes and the key, and the keys are
/// fixed for the life of this value (they are copied in; rotating `AWOOOP_GATEWAY_KEY` means a
/// restart). So a token found here byte for byte would verify again exactly as it did. What
/// depends on the time or on the request is checked on every call, hit or miss: expiry and
/// the issued-in-the-future skew of run tokens, expiry and the credential binding of session
/// ids. Revocation of a run token (its run reaching a terminal state) is `/mcp`'s per-call
/// run check, unchanged. Failures are never cached, so a forged token costs the full
/// verification every time and takes no memory.
pub struct VerifiedTokens {
    run_key: [u8; 32],
    session_key: [u8; 32],
    runs: RwLock<HashMap<Box<str>, Arc<VerifiedRunToken>>>,
    sessions: RwLock<HashMap<Box<str>, Arc<SessionClaims>>>,
}

impl VerifiedTokens {
    pub fn new(keys: &GatewayKeys) -> Self {
        Self {
            run_key: keys.run_token,
            session_key: keys.session,
            runs: RwLock::new(HashMap::new()),
            sessions: RwLock::new(HashMap::new()),
        }
    }

    /// [`verify_run_token`] with the gateway's run-token key.
    pub fn run_token(&self, token: &str, now: i64) -> Result<Arc<VerifiedRunToken>> {
        let hit = self.runs.read().expect("token cache").get(token).cloned();
        let v = match hit {
            Some(v) => v,
            None => {
                let claims = open_run_token(&self.run_key, token).ok_or_else(invalid_run_token)?;
                let v = Arc::new(VerifiedRunToken {
                    project: ProjectId::parse(&claims.project)?,
                    cred: credential_digest(&[token]),
                    claims,
                });
                remember(&self.runs, token, v.clone());
                v
            }
        };
        if !run_token_current(&v.claims, now) {
            return Err(invalid_run_token());
        }
        Ok(v)
    }

    /// [`verify_session`] with the gateway's session key.
    pub fn session(&self, id: &str, cred: &str, now: i64) -> Result<Arc<SessionClaims>> {
        let hit = self.sessions.read().expect("token cache").get(id).cloned();
        let c = match hit {
            Some(c) => c,
            None => {
                let c = Arc::new(
                    open::<SessionClaims>(SESSION_PREFIX, &self.session_key, id)
                        .ok_or_else(invalid_session)?,
                );
                remember(&self.sessions, id, c.clone());
                c
            }
        };
        if !session_current(&c, cred, now) {
            return Err(invalid_session());
        }
        Ok(c)
    }
}

fn remember<T>(map: &RwLock<HashMap<Box<str>, Arc<T>>>, k: &str, v: Arc<T>) {
    let mut m = map.write().expect("token cache");
    if m.len() >= MAX_VERIFIED {
        m.clear();
    }
    m.insert(k.into(), v);
}

#[cfg(test)]
mod tests {
    use super::*;

    const K: &[u8] = &[1u8; 32];

    fn claims() -> RunTokenClaims {
        RunTokenClaims {
            project: "awoooi".into(),
            agent: "triage".into(),
            run_id: Some(Uuid::from_u128(42)),
            environment: "dev".into(),
            mode: Some(MigrationMode::Shadow),
            iat: 100,
            exp: 200,
        }
    }

    #[test]
    fn run_tokens_round_trip_and_fail_closed() {
        let t = mint_run_token(K, &claims()).unwrap();
        assert!(t.starts_with(RUN_TOKEN_PREFIX));
        assert_eq!(verify_run_token(K, &t, 150).unwrap(), claims());
        assert!(verify_run_token(K, &t, 200).is_err(), "expired");
        assert!(verify_run_token(&[2u8; 32], &t, 150).is_err(), "other key");
        // a payload swapped for another project's keeps the MAC of the first: refused
        let mut other = claims();
        other.project = "ewoooc".into();
        let t2 = mint_run_token(K, &other).unwrap();
        let forged = format!(
            "{}.{}",
            t2.rsplit_once('.').unwrap().0,
            t.rsplit_once('.').unwrap().1
        );
        assert!(verify_run_token(K, &forged, 150).is_err());
        // a session id is not a run token
        let s = mint_session(K, "c", "2025-06-18", 100, 100);
        assert!(verify_run_token(K, &s, 150).is_err());
        let mut bad = claims();
        bad.agent = "Bad Agent".into();
        assert!(mint_run_token(K, &bad).is_err());
        // lifetimes above the platform maximum are neither minted nor accepted
        let mut long = claims();
        long.exp = long.iat + MAX_RUN_TOKEN_TTL_SECONDS + 1;
        assert!(mint_run_token(K, &long).is_err());
        let sealed = seal(RUN_TOKEN_PREFIX, K, &long);
        assert!(verify_run_token(K, &sealed, 150).is_err());
        // issued in the future
        let mut future = claims();
        future.iat = 1_000;
        future.exp = 2_000;
        assert!(verify_run_token(K, &mint_run_token(K, &future).unwrap(), 150).is_err());
    }

    /// The cache answers exactly as the full verification, at every time, whatever was
    /// verified before: expiry, the future-issue skew and the session's credential binding are
    /// checked on every call, hits included.
    #[test]
    fn verified_tokens_answer_like_a_full_verification_every_time() {
        let keys = GatewayKeys::derive("verified-tokens-test-master-key-0123456789");
        let k = keys.run_token;
        let future = RunTokenClaims {
            iat: 1_000,
            exp: 2_000,
            ..claims()
        };
        let good = mint_run_token(&k, &claims()).unwrap();
        let early = mint_run_token(&k, &future).unwrap();
        let foreign = mint_run_token(K, &claims()).unwrap();
        let forged = format!(
            "{}.{}",
            early.rsplit_once('.').unwrap().0,
            good.rsplit_once('.').unwrap().1
        );
        let cache = VerifiedTokens::new(&keys);
        // Each token asked at times before, inside and after its validity, twice in a row (the
        // second answer comes from the cache when the first verified).
        for t in [&good, &early, &foreign, &forged] {
            for now in [0, 99, 150, 199, 200, 939, 940, 1_500, 1_999, 2_000, 150] {
                for _ in 0..2 {
                    let full = verify_run_token(&k, t, now);
                    let cached = cache.run_token(t, now);
                    assert_eq!(full.is_ok(), cached.is_ok(), "{t} at {now}");
                    if let (Ok(f), Ok(c)) = (full, cached) {
                        assert_eq!(f, c.claims);
                        assert_eq!(c.project.as_str(), f.project);
                        assert_eq!(c.cred, credential_digest(&[t.as_str()]));
                    }
                }
            }
        }
        assert!(cache.run_token(&good, 150).is_ok());
        assert!(
            cache.run_token(&good, 200).is_err(),
            "expired, though cached"
        );
        assert!(cache.run_token(&early, 1_500).is_ok());
        assert!(
            cache.run_token(&early, 150).is_err(),
            "issued in the future, though cached"
        );

        let cred = credential_digest(&[&good]);
        let other = credential_digest(&["awr1.someone-else"]);
        let s = mint_session(&keys.session, &cred, "2025-11-25", 100, 50);
        let alien = mint_session(K, &cred, "2025-11-25", 100, 50);
        for sid in [&s, &alien] {
            for (c, now) in [
                (&cred, 120),
                (&other, 120),
                (&cred, 149),
                (&cred, 150),
                (&cred, 120),
            ] {
                for _ in 0..2 {
                    assert_eq!(
                        verify_session(&keys.session, sid, c, now).is_ok(),
                        cache.session(sid, c, now).is_ok(),
                        "{sid} for {c} at {now}"
                    );
                }
            }
        }
        assert!(cache.session(&s, &cred, 120).is_ok());
        assert!(
            cache.session(&s, &other, 120).is_err(),
            "bound to its credential, though cached"
        );
        assert!(
            cache.session(&s, &cred, 150).is_err(),
            "expired, though cached"
        );
    }

    #[test]
    fn sessions_are_bound_to_the_credential() {
        let cred = credential_digest(&["awr1.x", "agent"]);
        let s = mint_session(K, &cred, "2025-11-25", 100, 50);
        assert_eq!(verify_session(K, &s, &cred, 120).unwrap().ver, "2025-11-25");
        let other = credential_digest(&["awr1.y", "agent"]);
        assert_eq!(
            verify_session(K, &s, &other, 120).unwrap_err().code,
            ErrorCode::McpSession
        );
        assert!(verify_session(K, &s, &cred, 150).is_err(), "expired");
        assert!(verify_session(K, "mcs1.garbage.x", &cred, 120).is_err());
        // digests separate their parts: ("ab","c") != ("a","bc")
        assert_ne!(
            credential_digest(&["ab", "c"]),
            credential_digest(&["a", "bc"])
        );
    }
}
