//! The wire types of the HTTP API that both sides need: the server serialises them, the
//! OpenAPI document takes their schemas, and `awooop-client` deserialises them. This crate
//! depends on no other AwoooP crate (no database, no web framework), so a downstream product
//! can use the client without building the platform.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

/// What an event of a run's stream says (`event:` field of the SSE message).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RunEventKind {
    /// The run was created (`data`: state, agent, mode).
    Created,
    /// The run changed state (`data`: from, state, attempt, error_code).
    State,
    /// A journal step was recorded (`data`: index, key, type, status, error_code; no output).
    Step,
    /// The gateway decided a tool call (`data`: tool, decision, status, code, latency_us).
    ToolCall,
    /// The run waits for an approval (`data`: the waiting step's key, if any).
    ApprovalRequested,
    /// The run succeeded (`data`: output).
    Output,
    /// A kind this client does not know yet.
    #[serde(other)]
    Other,
}

impl RunEventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Created => "created",
            Self::State => "state",
            Self::Step => "step",
            Self::ToolCall => "tool_call",
            Self::ApprovalRequested => "approval_requested",
            Self::Output => "output",
            Self::Other => "other",
        }
    }
}

/// One event of a run's progress. `seq` numbers the run's events 1, 2, 3, …; it is the SSE
/// `id:` and what `Last-Event-ID` resumes after.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct RunEvent {
    pub seq: i64,
    pub kind: RunEventKind,
    pub data: Value,
    pub at: DateTime<Utc>,
}

/// The states after which a run changes no more.
pub const TERMINAL_STATES: [&str; 4] = ["succeeded", "failed", "cancelled", "timed_out"];

/// `{"approved": bool}` of `POST /v1/platform/runs/{id}/approval`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct RunApproval {
    pub approved: bool,
}

/// A decision on a pending approval (`POST /v1/platform/approvals/{id}/decisions`).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct ApprovalDecision {
    /// `approve` or `reject`.
    pub decision: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Run id of a path or body.
pub type RunId = Uuid;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_kinds_round_trip_and_unknown_ones_do_not_break_clients() {
        let e: RunEvent = serde_json::from_value(serde_json::json!({
            "seq": 3, "kind": "tool_call", "data": {"tool": "market__search_products"},
            "at": "2026-11-28T12:00:00Z"
        }))
        .unwrap();
        assert_eq!(e.kind, RunEventKind::ToolCall);
        assert_eq!(e.kind.as_str(), "tool_call");
        let k: RunEventKind = serde_json::from_str("\"something_new\"").unwrap();
        assert_eq!(k, RunEventKind::Other);
    }
}
