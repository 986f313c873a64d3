//! Webhook verification, before anything parses the body (pure, constant time).
//!
//! * Telegram: `X-Telegram-Bot-Api-Secret-Token` equals the `secret_token` given to
//!   `setWebhook`.
//! * LINE: `X-Line-Signature` = base64(HMAC-SHA256(channel secret, raw body)).
//! * Slack: `X-Slack-Signature` = `v0=` + hex(HMAC-SHA256(signing secret,
//!   `v0:{X-Slack-Request-Timestamp}:{raw body}`)), timestamp within 300 s of now.
//!
//! Every comparison is constant time in the length of the expected value (`subtle`), and the
//! presented value is compared as bytes, so a wrong length fails without a shortcut that leaks
//! how much of a prefix matched.

use base64::Engine;
use hmac::{Hmac, Mac};
use http::HeaderMap;
use sha2::Sha256;
use subtle::ConstantTimeEq;

use awooop_contracts::ChannelProvider;
use awooop_core::error::{Error, ErrorCode, Result};

/// Slack's replay window.
pub const SLACK_WINDOW_SECONDS: i64 = 300;

pub const TELEGRAM_HEADER: &str = "x-telegram-bot-api-secret-token";
pub const LINE_HEADER: &str = "x-line-signature";
pub const SLACK_SIGNATURE: &str = "x-slack-signature";
pub const SLACK_TIMESTAMP: &str = "x-slack-request-timestamp";

fn missing(what: &str) -> Error {
    Error::new(
        ErrorCode::ChannelSignatureMissing,
        format!("missing webhook verification header {what}"),
    )
}

fn invalid() -> Error {
    Error::new(
        ErrorCode::ChannelSignatureInvalid,
        "webhook signature does not verify",
    )
}

fn header<'a>(h: &'a HeaderMap, name: &str) -> Result<&'a [u8]> {
    h.get(name)
        .map(|v| v.as_bytes())
        .ok_or_else(|| missing(name))
}

/// Constant-time equality of two byte strings (a length mismatch is also constant time in the
/// expected length: the presented value is never scanned past it).
pub fn ct_eq(presented: &[u8], expected: &[u8]) -> bool {
    bool::from(presented.ct_eq(expected))
}

pub fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    for p in parts {
        mac.update(p);
    }
    mac.finalize().into_bytes().into()
}

/// Verify a webhook of `provider` with its secret. `now` is Unix seconds (Slack's window).
pub fn verify(
    provider: ChannelProvider,
    secret: &str,
    headers: &HeaderMap,
    body: &[u8],
    now: i64,
) -> Result<()> {
    match provider {
        ChannelProvider::Telegram => {
            let presented = header(headers, TELEGRAM_HEADER)?;
            if secret.is_empty() || !ct_eq(presented, secret.as_bytes()) {
                return Err(invalid());
            }
            Ok(())
        }
        ChannelProvider::Line => {
            let presented = header(headers, LINE_HEADER)?;
            let mac = hmac_sha256(secret.as_bytes(), &[body]);
            let expected = base64::engine::general_purpose::STANDARD.encode(mac);
            if !ct_eq(presented, expected.as_bytes()) {
                return Err(invalid());
            }
            Ok(())
        }
        ChannelProvider::Slack => {
            let presented = header(headers, SLACK_SIGNATURE)?;
            let ts_raw = header(headers, SLACK_TIMESTAMP)?;
            let ts: i64 = std::str::from_utf8(ts_raw)
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| {
                    Error::new(
                        ErrorCode::ChannelTimestampStale,
                        "X-Slack-Request-Timestamp is not a Unix timestamp",
                    )
                })?;
            if (now - ts).abs() > SLACK_WINDOW_SECONDS {
                return Err(Error::new(
                    ErrorCode::ChannelTimestampStale,
                    "X-Slack-Request-Timestamp is outside the 300 s window",
                ));
            }
            let mac = hmac_sha256(secret.as_bytes(), &[b"v0:", ts_raw, b":", body]);
            let expected = format!("v0={}", hex::encode(mac));
            if !ct_eq(presented, expected.as_bytes()) {
                return Err(invalid());
            }
            Ok(())
        }
        // API channels authenticate with a project API key, email is not served by the hub.
        ChannelProvider::Api | ChannelProvider::Email => Err(invalid()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.insert(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        m
    }

    #[test]
    fn telegram_token() {
        let ok = h(&[(TELEGRAM_HEADER, "s3cret")]);
        assert!(verify(ChannelProvider::Telegram, "s3cret", &ok, b"{}", 0).is_ok());
        for (hdr, code) in [
            (h(&[(TELEGRAM_HEADER, "s3cre")]), "E-CHANNEL-003"),
            (h(&[(TELEGRAM_HEADER, "s3cret2")]), "E-CHANNEL-003"),
            (h(&[]), "E-CHANNEL-002"),
        ] {
            let e = verify(ChannelProvider::Telegram, "s3cret", &hdr, b"{}", 0).unwrap_err();
            assert_eq!(e.code.as_str(), code);
        }
        // An empty configured secret never verifies.
        let empty = h(&[(TELEGRAM_HEADER, "")]);
        assert!(verify(ChannelProvider::Telegram, "", &empty, b"{}", 0).is_err());
    }

    #[test]
    fn line_signature_matches_the_documented_example_shape() {
        let body = br#"{"destination":"x","events":[]}"#;
        let sig = base64::engine::general_purpose::STANDARD
            .encode(hmac_sha256(b"chsecret", &[body.as_slice()]));
        let ok = h(&[(LINE_HEADER, &sig)]);
        assert!(verify(ChannelProvider::Line, "chsecret", &ok, body, 0).is_ok());
        let e = verify(
            ChannelProvider::Line,
            "chsecret",
            &ok,
            b"{\"destination\":\"y\"}",
            0,
        )
        .unwrap_err();
        assert_eq!(e.code, ErrorCode::ChannelSignatureInvalid);
        let e = verify(ChannelProvider::Line, "other", &ok, body, 0).unwrap_err();
        assert_eq!(e.code, ErrorCode::ChannelSignatureInvalid);
    }

    #[test]
    fn slack_signature_and_window() {
        let body = b"{\"type\":\"event_callback\"}";
        let ts = "1764288000";
        let sig = format!(
            "v0={}",
            hex::encode(hmac_sha256(b"sign", &[b"v0:", ts.as_bytes(), b":", body]))
        );
        let hdr = h(&[(SLACK_SIGNATURE, &sig), (SLACK_TIMESTAMP, ts)]);
        assert!(verify(ChannelProvider::Slack, "sign", &hdr, body, 1764288000 + 299).is_ok());
        let e = verify(ChannelProvider::Slack, "sign", &hdr, body, 1764288000 + 301).unwrap_err();
        assert_eq!(e.code, ErrorCode::ChannelTimestampStale);
        let e = verify(ChannelProvider::Slack, "sign", &hdr, body, 1764288000 - 301).unwrap_err();
        assert_eq!(e.code, ErrorCode::ChannelTimestampStale);
        let e = verify(ChannelProvider::Slack, "nope", &hdr, body, 1764288000).unwrap_err();
        assert_eq!(e.code, ErrorCode::ChannelSignatureInvalid);
        let only_sig = h(&[(SLACK_SIGNATURE, &sig)]);
        let e = verify(ChannelProvider::Slack, "sign", &only_sig, body, 1764288000).unwrap_err();
        assert_eq!(e.code, ErrorCode::ChannelSignatureMissing);
    }
}
