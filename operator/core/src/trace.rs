//! W3C Trace Context (`traceparent`): parse an incoming header or start a new trace; derive
//! child spans for steps and outgoing calls.

use rand::RngCore;
use serde::Serialize;

use crate::error::{Error, ErrorCode, Result};

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TraceContext {
    /// 32 lowercase hex, not all zero.
    pub trace_id: String,
    /// 16 lowercase hex, not all zero: the span of this run (or step).
    pub span_id: String,
    /// Whether the caller sampled the trace.
    pub sampled: bool,
}

fn hex_ok(s: &str, len: usize) -> bool {
    s.len() == len
        && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        && s.bytes().any(|b| b != b'0')
}

/// `bytes` (at most 16) random bytes as lowercase hex, never all zeros (W3C: an all-zero id is
/// invalid). Encoded through a table into one allocation: generated on every request (trace
/// and span ids), where `hex::encode`'s char-by-char collect cost more than the randomness.
fn random_hex(bytes: usize) -> String {
    let mut b = [0u8; 16];
    let b = &mut b[..bytes];
    loop {
        rand::rng().fill_bytes(b);
        if b.iter().any(|x| *x != 0) {
            return lower_hex(b);
        }
    }
}

fn lower_hex(b: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(b.len() * 2);
    for x in b {
        out.push(char::from(HEX[usize::from(x >> 4)]));
        out.push(char::from(HEX[usize::from(x & 0xf)]));
    }
    out
}

impl TraceContext {
    /// A new trace with a new root span.
    pub fn generate() -> Self {
        Self {
            trace_id: random_hex(16),
            span_id: random_hex(8),
            sampled: true,
        }
    }

    /// Parse `version-traceid-parentid-flags`. Version `00` must have exactly four fields;
    /// future versions may carry more (kept compatible as the spec asks). The run gets a new
    /// span id whose parent is the caller's.
    pub fn from_traceparent(header: &str) -> Result<Self> {
        let bad = || {
            Error::new(
                ErrorCode::RunBadTraceparent,
                "traceparent must be 00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>",
            )
        };
        let h = header.trim();
        let parts: Vec<&str> = h.split('-').collect();
        if parts.len() < 4 {
            return Err(bad());
        }
        let (version, trace_id, parent, flags) = (parts[0], parts[1], parts[2], parts[3]);
        if version.len() != 2
            || !version.bytes().all(|b| b.is_ascii_hexdigit())
            || version == "ff"
            || (version == "00" && parts.len() != 4)
            || !hex_ok(trace_id, 32)
            || !hex_ok(parent, 16)
            || flags.len() != 2
            || !flags
                .bytes()
                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        {
            return Err(bad());
        }
        let sampled = u8::from_str_radix(flags, 16).map_err(|_| bad())? & 1 == 1;
        Ok(Self {
            trace_id: trace_id.to_string(),
            span_id: random_hex(8),
            sampled,
        })
    }

    /// A child span in the same trace (a step, an outgoing call).
    pub fn child(&self) -> Self {
        Self {
            trace_id: self.trace_id.clone(),
            span_id: random_hex(8),
            sampled: self.sampled,
        }
    }

    /// The header value to send on outgoing calls (this context as the parent).
    pub fn traceparent(&self) -> String {
        format!(
            "00-{}-{}-{}",
            self.trace_id,
            self.span_id,
            if self.sampled { "01" } else { "00" }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_valid_and_rejects_malformed() {
        let t = TraceContext::from_traceparent(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )
        .unwrap();
        assert_eq!(t.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_ne!(t.span_id, "00f067aa0ba902b7");
        assert!(t.sampled);
        assert!(TraceContext::from_traceparent(&t.traceparent()).is_ok());
        for bad in [
            "",
            "garbage",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
        ] {
            assert_eq!(
                TraceContext::from_traceparent(bad)
                    .unwrap_err()
                    .code
                    .as_str(),
                "E-RUN-009",
                "{bad}"
            );
        }
        // A future version may append fields.
        assert!(
            TraceContext::from_traceparent(
                "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-ever"
            )
            .is_ok()
        );
    }

    #[test]
    fn ids_are_lowercase_hex_of_every_byte() {
        let all: Vec<u8> = (0..=255).collect();
        assert_eq!(super::lower_hex(&all), hex::encode(&all));
        let id = super::random_hex(16);
        assert_eq!(id.len(), 32);
        assert!(
            id.bytes()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        );
        assert_ne!(id, super::random_hex(16));
    }

    #[test]
    fn generated_contexts_are_valid_and_children_share_the_trace() {
        let t = TraceContext::generate();
        let c = t.child();
        assert_eq!(c.trace_id, t.trace_id);
        assert_ne!(c.span_id, t.span_id);
        assert!(TraceContext::from_traceparent(&c.traceparent()).is_ok());
    }
}
