//! The wire types of the HTTP API that both sides need: the server serialises them, the
//! OpenAPI document takes their schemas, and `awooop-client` deserialises them. This crate
//! depends on no other AwoooP crate (no database, no web framework), so a downstream product
//! can use the client without building the platform.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

/// `POST /v1/platform/runs` body.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateRun {
    pub agent: String,
    #[serde(default)]
    pub input: Value,
    /// Requested mode; defaults to (and may not exceed) the project's migration mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    /// Where the reply goes when the run succeeds (never for shadow runs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<ReplyTo>,
}

/// What the caller gets back from `POST /v1/platform/runs`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct RunAccepted {
    pub run_id: Uuid,
    pub trace_id: String,
    pub traceparent: String,
    pub state: String,
    pub mode: String,
    /// True when an earlier request with the same Idempotency-Key created this run.
    pub replayed: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[cfg_attr(feature = "sqlx", derive(sqlx::FromRow))]
pub struct RunView {
    pub run_id: Uuid,
    pub agent: String,
    pub mode: String,
    pub state: String,
    pub input_hash: String,
    pub agent_revision_id: Uuid,
    pub agent_body_hash: String,
    pub project_revision_id: Option<Uuid>,
    pub project_body_hash: Option<String>,
    pub trace_id: String,
    pub attempt: i32,
    pub max_attempts: i32,
    pub output: Option<Value>,
    pub error_code: Option<String>,
    pub error_message: Option<String>,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub deadline_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[cfg_attr(feature = "sqlx", derive(sqlx::FromRow))]
pub struct StepView {
    pub step_index: i32,
    pub attempt: i32,
    pub step_key: String,
    pub step_type: String,
    pub input_hash: String,
    pub status: String,
    pub output: Option<Value>,
    pub error_code: Option<String>,
    pub span_id: String,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct RunDetail {
    #[serde(flatten)]
    pub run: RunView,
    pub steps: Vec<StepView>,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct RunPage {
    pub runs: Vec<RunView>,
    pub next_cursor: Option<String>,
}

/// Where a run's reply goes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReplyTo {
    /// Channel name (from the Communication contract).
    pub channel: String,
    /// Conversation/chat id within the channel.
    pub conversation: String,
}

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
    /// Why (shown on the run, in the audit log and in the chat). The server's body refuses
    /// unknown fields, so this name must be the server's (`DecisionRequest.comment`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
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
