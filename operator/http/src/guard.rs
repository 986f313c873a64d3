//! Input guards applied once, before any handler: what PostgreSQL cannot store and what is not
//! JSON never reaches a query.
//!
//! * U+0000: PostgreSQL `text` cannot hold it (SQLSTATE 22021) and `jsonb` refuses the `\u0000`
//!   escape (22P05). Every place a client can put a character that is later stored goes through
//!   one of three doors: the URI (path segments and query, percent-encoded as `%00`), a JSON body
//!   (`\u0000` escapes; a raw NUL byte is already invalid JSON) and headers (hyper refuses NUL in
//!   header values). [`reject_nul_in_uri`] closes the first for every route, [`json_has_nul`]
//!   the second for [`super::extract::ApiJson`] and `/mcp`; the SQLSTATE mapping in
//!   [`crate::error`] is the backstop that turns anything missed into a coded 422, not a 500.
//! * Content-Type: a JSON body must say so (`application/json` or `application/*+json`);
//!   `text/plain` or no Content-Type is refused with 415 `E-REQ-004` instead of being parsed
//!   (a `text/plain` POST is a "simple" cross-origin request a browser sends without preflight).

use axum::extract::Request;
use axum::http::HeaderMap;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use awooop_core::error::{Error, ErrorCode, Result};

/// Whether the URI (path or query) carries a percent-encoded NUL.
pub fn uri_has_nul(path_and_query: &str) -> bool {
    path_and_query.as_bytes().windows(3).any(|w| w == b"%00")
}

/// Middleware: any `%00` in the path or query is refused with `E-REQ-003` (422).
pub async fn reject_nul_in_uri(req: Request, next: Next) -> Response {
    let pq = req.uri().path_and_query().map(|p| p.as_str()).unwrap_or("");
    if uri_has_nul(pq) {
        return Error::new(
            ErrorCode::ReqInvalidParam,
            "path and query parameters must not contain U+0000",
        )
        .into_response();
    }
    next.run(req).await
}

/// Whether a JSON text contains a `\u0000` escape inside a string (keys included). Escapes are
/// followed exactly: `\\u0000` is a backslash and the letters `u0000`, not a NUL.
pub fn json_has_nul(bytes: &[u8]) -> bool {
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' {
            if bytes.get(i + 1) == Some(&b'u') && bytes.get(i + 2..i + 6) == Some(b"0000") {
                return true;
            }
            // Skip the escaped character (a `\\` must not start another escape).
            i += 2;
            continue;
        }
        if bytes[i] == 0 {
            return true;
        }
        i += 1;
    }
    false
}

/// The body-level NUL check with its error.
pub fn refuse_nul_in_json(bytes: &[u8]) -> Result<()> {
    if json_has_nul(bytes) {
        return Err(Error::new(
            ErrorCode::ReqMalformed,
            "request body must not contain U+0000 (\\u0000) in any string",
        ));
    }
    Ok(())
}

/// A JSON media type: `application/json` or `application/<anything>+json`, parameters allowed.
pub fn is_json_media_type(value: &str) -> bool {
    let essence = value
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || essence
            .strip_prefix("application/")
            .is_some_and(|sub| sub.ends_with("+json") && sub.len() > 5)
}

/// Refuse a body that does not declare a JSON media type (415, `E-REQ-004`).
pub fn require_json(headers: &HeaderMap) -> Result<()> {
    let ok = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(is_json_media_type);
    if ok {
        Ok(())
    } else {
        Err(Error::new(
            ErrorCode::ReqUnsupportedMediaType,
            "request body must be sent with Content-Type: application/json",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nul_escapes_are_found_exactly() {
        for (json, has) in [
            (r#"{"a":"x\u0000"}"#, true),
            (r#"{"a\u0000":1}"#, true),
            (r#"["\\\u0000"]"#, true),
            (r#"{"a":"\\u0000"}"#, false),
            (r#"{"a":"\\\\u0000"}"#, false),
            (r#"{"a":"\u0001"}"#, false),
            (r#"{"a":"u0000"}"#, false),
            ("\"\\", false),
            ("\"\0\"", true),
        ] {
            assert_eq!(json_has_nul(json.as_bytes()), has, "{json}");
        }
    }

    #[test]
    fn uri_nul() {
        assert!(uri_has_nul("/v1/control/drafts/%00"));
        assert!(uri_has_nul("/v1/platform/runs?agent=a%00b"));
        assert!(!uri_has_nul("/v1/platform/runs?agent=a%200"));
    }

    #[test]
    fn media_types() {
        for (v, ok) in [
            ("application/json", true),
            ("application/json; charset=utf-8", true),
            ("Application/JSON", true),
            ("application/merge-patch+json", true),
            ("application/+json", false),
            ("text/plain", false),
            ("text/json", false),
            ("application/jsonx", false),
            ("", false),
        ] {
            assert_eq!(is_json_media_type(v), ok, "{v}");
        }
    }
}
