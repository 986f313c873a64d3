//! The pure core of AwoooP: what every other crate may use and what depends on no database,
//! HTTP server or cluster.
//!
//! [`backoff`] (exponential backoff with jitter), [`cache`] (TTL cache with single-flight loads and refresh-ahead), [`error`] (the stable `E-…` codes), [`context`] (the context firewall rule), [`run_state`] (run states and their transitions),
//! [`jsonrpc`] (JSON-RPC 2.0 envelopes), [`json_text`] (compact JSON text, fast string escaping), [`migration`] (contract migration modes), [`trace`] (W3C trace context), [`canonical`]
//! (canonical JSON and hashing), [`sse`] (Server-Sent Events framing), [`ratelimit`] (keyed rate limits), [`redact`] (the one redaction engine), [`tls`] (the process
//! TLS crypto provider) and [`shutdown`] (the process shutdown signal).

pub mod backoff;
pub mod cache;
pub mod canonical;
pub mod context;
pub mod error;
pub mod json_text;
pub mod jsonrpc;
pub mod migration;
pub mod ratelimit;
pub mod redact;
pub mod run_state;
pub mod shutdown;
pub mod sse;
pub mod tls;
pub mod trace;
