//! Approval tokens: HS256 JWTs that bind one tool call.
//!
//! Claims: `iss` (`awooop-gateway`), `project`, `agent` and `environment` (the caller's, so
//! a token approved for one agent or environment cannot be spent by another agent of the
//! project, nor in production when it was approved for dev), `run_id` (null for calls outside
//! a run), `tool` (exposed name), `args_sha256` (SHA-256 of the RFC 8785 canonical arguments),
//! `approver`, `iat`, `exp` and a random `jti`. Verification is a pure function: the header
//! must be exactly `alg: HS256` (so `none`, RS256/HS256 confusion and every other algorithm
//! fail before any key is used), the MAC must match in constant time, the token must not be
//! expired, and every binding must equal the call's. Replay (a `jti` seen before) is checked by
//! the gateway with Redis `SET NX` (fast path, when configured) and always a unique row in
//! PostgreSQL (`mcp_approval_uses`), so a Redis restart cannot make a token usable twice.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::keys::{b64, hmac, unb64, verify_mac};
use awooop_core::error::{Error, ErrorCode, Result};

pub const ISSUER: &str = "awooop-gateway";
/// Longest accepted approval lifetime.
pub const MAX_TTL_SECONDS: i64 = 7 * 24 * 3600;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApprovalClaims {
    pub iss: String,
    pub project: String,
    pub agent: String,
    pub environment: String,
    pub run_id: Option<String>,
    pub tool: String,
    pub args_sha256: String,
    pub approver: String,
    pub iat: i64,
    pub exp: i64,
    pub jti: String,
}

/// What the call being approved looks like.
#[derive(Debug, Clone, Copy)]
pub struct Expected<'a> {
    pub project: &'a str,
    pub agent: &'a str,
    pub environment: &'a str,
    pub run_id: Option<&'a str>,
    pub tool: &'a str,
    pub args_sha256: &'a str,
}

/// The hash an approval binds: SHA-256 of the canonical (RFC 8785) arguments.
pub fn arguments_hash(arguments: &Value) -> String {
    awooop_core::canonical::body_hash(arguments)
}

const HEADER: &str = r#"{"alg":"HS256","typ":"JWT"}"#;

/// Mint a token (the approver side: CLI or an approval service holding the gateway key).
pub fn mint(key: &[u8], claims: &ApprovalClaims) -> String {
    let payload = serde_json::to_vec(claims).expect("claims serialize");
    let signing_input = format!("{}.{}", b64(HEADER.as_bytes()), b64(&payload));
    let sig = hmac(key, signing_input.as_bytes());
    format!("{signing_input}.{}", b64(&sig))
}

/// New claims with a random jti.
pub fn claims(e: Expected<'_>, approver: &str, now: i64, ttl_seconds: i64) -> ApprovalClaims {
    use rand::RngCore;
    let mut j = [0u8; 16];
    rand::rng().fill_bytes(&mut j);
    ApprovalClaims {
        iss: ISSUER.into(),
        project: e.project.into(),
        agent: e.agent.into(),
        environment: e.environment.into(),
        run_id: e.run_id.map(str::to_string),
        tool: e.tool.into(),
        args_sha256: e.args_sha256.into(),
        approver: approver.into(),
        iat: now,
        exp: now + ttl_seconds,
        jti: hex::encode(j),
    }
}

fn invalid(why: &'static str) -> Error {
    Error::new(ErrorCode::McpGateApprovalInvalid, why)
}

/// Verify signature, algorithm, expiry and every binding. Does not check replay.
pub fn verify(key: &[u8], token: &str, expect: Expected<'_>, now: i64) -> Result<ApprovalClaims> {
    if token.len() > 4096 {
        return Err(invalid("approval token is malformed"));
    }
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(invalid("approval token is malformed"));
    };
    // The algorithm is pinned: the header must say HS256 and nothing we do not understand.
    let header: Value = unb64(h)
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or_else(|| invalid("approval token is malformed"))?;
    let obj = header
        .as_object()
        .ok_or_else(|| invalid("approval token is malformed"))?;
    if obj.get("alg").and_then(Value::as_str) != Some("HS256")
        || obj.keys().any(|k| k != "alg" && k != "typ")
        || obj.get("typ").is_some_and(|t| t != "JWT")
    {
        return Err(invalid("approval token algorithm must be HS256"));
    }
    if !verify_mac(key, format!("{h}.{p}").as_bytes(), s) {
        return Err(invalid("approval token signature does not verify"));
    }
    let claims: ApprovalClaims = unb64(p)
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or_else(|| invalid("approval token claims are malformed"))?;
    if claims.iss != ISSUER {
        return Err(invalid("approval token issuer is wrong"));
    }
    if claims.exp <= now {
        return Err(invalid("approval token has expired"));
    }
    if claims.iat > now + 60 || claims.exp - claims.iat > MAX_TTL_SECONDS {
        return Err(invalid("approval token lifetime is not acceptable"));
    }
    if claims.jti.len() < 8 || claims.jti.len() > 128 {
        return Err(invalid("approval token jti is malformed"));
    }
    if claims.approver.is_empty() {
        return Err(invalid("approval token names no approver"));
    }
    if claims.project != expect.project
        || claims.agent != expect.agent
        || claims.environment != expect.environment
        || claims.run_id.as_deref() != expect.run_id
        || claims.tool != expect.tool
    {
        return Err(invalid("approval token is bound to another call"));
    }
    if claims.args_sha256 != expect.args_sha256 {
        return Err(invalid("approval token is bound to other arguments"));
    }
    Ok(claims)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const KEY: &[u8] = &[7u8; 32];
    const NOW: i64 = 1_800_000_000;

    fn expected(h: &str) -> Expected<'_> {
        Expected {
            project: "awoooi",
            agent: "triage",
            environment: "dev",
            run_id: Some("r1"),
            tool: "k8s__scale",
            args_sha256: h,
        }
    }

    fn forge(header: &str, claims: &ApprovalClaims, key: &[u8]) -> String {
        let si = format!(
            "{}.{}",
            b64(header.as_bytes()),
            b64(&serde_json::to_vec(claims).unwrap())
        );
        format!("{si}.{}", b64(&hmac(key, si.as_bytes())))
    }

    #[test]
    fn valid_token_verifies_and_tampering_fails() {
        let h = arguments_hash(&json!({"replicas": 3, "name": "web"}));
        // canonical: key order does not matter
        assert_eq!(h, arguments_hash(&json!({"name": "web", "replicas": 3})));
        let c = claims(expected(&h), "alice", NOW, 300);
        let t = mint(KEY, &c);
        assert_eq!(verify(KEY, &t, expected(&h), NOW).unwrap(), c);

        let code = |r: Result<ApprovalClaims>| r.unwrap_err().code;
        // wrong key
        assert_eq!(
            code(verify(&[8u8; 32], &t, expected(&h), NOW)),
            ErrorCode::McpGateApprovalInvalid
        );
        // expired
        assert_eq!(
            code(verify(KEY, &t, expected(&h), NOW + 301)),
            ErrorCode::McpGateApprovalInvalid
        );
        // wrong arguments, tool, run, project
        let other = arguments_hash(&json!({"replicas": 30, "name": "web"}));
        assert!(verify(KEY, &t, expected(&other), NOW).is_err());
        assert!(
            verify(
                KEY,
                &t,
                Expected {
                    tool: "k8s__delete",
                    ..expected(&h)
                },
                NOW
            )
            .is_err()
        );
        assert!(
            verify(
                KEY,
                &t,
                Expected {
                    run_id: Some("r2"),
                    ..expected(&h)
                },
                NOW
            )
            .is_err()
        );
        assert!(
            verify(
                KEY,
                &t,
                Expected {
                    run_id: None,
                    ..expected(&h)
                },
                NOW
            )
            .is_err()
        );
        assert!(
            verify(
                KEY,
                &t,
                Expected {
                    project: "ewoooc",
                    ..expected(&h)
                },
                NOW
            )
            .is_err()
        );
        // another agent of the project, another environment
        for e in [
            Expected {
                agent: "reporter",
                ..expected(&h)
            },
            Expected {
                environment: "prod",
                ..expected(&h)
            },
        ] {
            assert_eq!(
                code(verify(KEY, &t, e, NOW)),
                ErrorCode::McpGateApprovalInvalid
            );
        }
        // tampered payload, same signature
        let parts: Vec<&str> = t.split('.').collect();
        let mut evil = c.clone();
        evil.args_sha256 = other.clone();
        let forged = format!(
            "{}.{}.{}",
            parts[0],
            b64(&serde_json::to_vec(&evil).unwrap()),
            parts[2]
        );
        assert!(verify(KEY, &forged, expected(&other), NOW).is_err());
        // garbage
        for bad in ["", "a.b", "a.b.c.d", "...", &format!("{t}x")] {
            assert!(verify(KEY, bad, expected(&h), NOW).is_err(), "{bad}");
        }
    }

    #[test]
    fn algorithm_is_pinned() {
        let h = arguments_hash(&json!({}));
        let c = claims(expected(&h), "alice", NOW, 300);
        // alg none with an empty signature
        let none = format!(
            "{}.{}.",
            b64(br#"{"alg":"none","typ":"JWT"}"#),
            b64(&serde_json::to_vec(&c).unwrap())
        );
        assert!(verify(KEY, &none, expected(&h), NOW).is_err());
        // RS256 header, HMAC'd with the key (classic confusion)
        let rs = forge(r#"{"alg":"RS256","typ":"JWT"}"#, &c, KEY);
        assert!(verify(KEY, &rs, expected(&h), NOW).is_err());
        // HS512 / lowercase / extra header fields (kid, jku) are refused
        for hdr in [
            r#"{"alg":"HS512","typ":"JWT"}"#,
            r#"{"alg":"hs256","typ":"JWT"}"#,
            r#"{"alg":"HS256","typ":"JWT","kid":"../../x"}"#,
        ] {
            assert!(
                verify(KEY, &forge(hdr, &c, KEY), expected(&h), NOW).is_err(),
                "{hdr}"
            );
        }
        // the proper header verifies
        assert!(
            verify(
                KEY,
                &forge(r#"{"alg":"HS256","typ":"JWT"}"#, &c, KEY),
                expected(&h),
                NOW
            )
            .is_ok()
        );
    }

    #[test]
    fn lifetimes_and_fields_are_checked() {
        let h = arguments_hash(&json!({}));
        let mut c = claims(expected(&h), "alice", NOW, 300);
        c.exp = c.iat + MAX_TTL_SECONDS + 1;
        assert!(verify(KEY, &mint(KEY, &c), expected(&h), NOW).is_err());
        let mut c = claims(expected(&h), "", NOW, 300);
        assert!(verify(KEY, &mint(KEY, &c), expected(&h), NOW).is_err());
        c.approver = "bob".into();
        c.iss = "someone-else".into();
        assert!(verify(KEY, &mint(KEY, &c), expected(&h), NOW).is_err());
    }
}
