//! The pure core of AwoooP: what every other crate may use and what depends on no database,
//! HTTP server or cluster.
//!
//! [`error`] (the stable `E-…` codes), [`context`] (the context firewall rule), [`run_state`] (run states and their transitions),
//! [`migration`] (contract migration modes), [`trace`] (W3C trace context), [`canonical`]
//! (canonical JSON and hashing), [`redact`] (the one redaction engine), [`tls`] (the process
//! TLS crypto provider) and [`shutdown`] (the process shutdown signal).

pub mod canonical;
pub mod context;
pub mod error;
pub mod migration;
pub mod redact;
pub mod run_state;
pub mod shutdown;
pub mod tls;
pub mod trace;
