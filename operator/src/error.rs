//! The one error type of the platform's service layer, its stable codes and its single HTTP
//! mapping point.
//!
//! Every user-facing failure carries an [`ErrorCode`]: a stable `E-…` string documented in
//! `docs/errors.md` (a test keeps that table and this enum in step). Messages say what failed
//! and never carry secrets, SQL, upstream configuration or other tenants' names; internal causes
//! are logged server-side and replaced by a generic message in responses.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::{Value, json};

/// Stable error codes. The string form is part of the public API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// Request body is not valid JSON, or has the wrong shape/unknown fields.
    ReqMalformed,
    /// Request body exceeds the size limit.
    ReqTooLarge,
    /// A path or query parameter is invalid.
    ReqInvalidParam,
    /// No credential was presented.
    AuthMissing,
    /// The credential is unknown, revoked or malformed.
    AuthInvalid,
    /// The credential is valid but lacks the role for this action.
    AuthForbidden,
    /// A tenant query was attempted without tenant context.
    TenantMissing,
    /// The project does not exist or is not active (indistinguishable on purpose).
    ProjectNotFound,
    /// A project with that id already exists.
    ProjectExists,
    /// A project id or name is malformed.
    ProjectInvalid,
    /// A document violates its JSON Schema.
    SchemaViolation,
    /// The contract kind is unknown.
    ContractUnknownKind,
    /// An artifact reference has a malformed hash.
    ContractBadHash,
    /// A contract violates a semantic rule that JSON Schema cannot express.
    ContractSemantic,
    /// Draft, revision or contract not found.
    ContractNotFound,
    /// The revision number being published is not the next one (someone published first).
    ContractRevisionConflict,
    /// A published revision cannot be changed or deleted.
    ContractImmutable,
    /// The publish signature does not verify.
    ContractBadSignature,
    /// The publish signature was already used.
    ContractSignatureReplay,
    /// The signing key is unknown, revoked, or its material does not match its fingerprint.
    ContractSigningKey,
    /// The approver already approved this revision.
    ContractDuplicateApproval,
    /// Not enough valid approvals to activate.
    ContractInsufficientApprovals,
    /// Only published revisions can be approved or activated.
    ContractNotPublished,
    /// A referenced artifact is not registered with the same hash.
    ContractArtifactMissing,
    /// The approver is not allowed to approve by the project's ACL.
    ContractApproverNotAllowed,
    /// The revision is already the active one.
    ContractAlreadyActive,
    /// A migration-state change skips a step without being forced.
    MigrationIllegalStep,
    /// A forced migration-state change has no reason.
    MigrationReasonRequired,
    /// Artifact content does not match its declared hash, or is malformed.
    ArtifactInvalid,
    /// Run not found (or belongs to another project: indistinguishable on purpose).
    RunNotFound,
    /// Illegal run state transition.
    RunIllegalTransition,
    /// Idempotency key reused with a different request.
    RunIdempotencyConflict,
    /// Idempotency key malformed.
    RunIdempotencyKeyInvalid,
    /// Lease lost more often than the run's max attempts.
    RunAttemptsExhausted,
    /// The run passed its hard deadline.
    RunDeadlineExceeded,
    /// Unknown agent, or the agent has no active revision.
    RunAgentInactive,
    /// Run input larger than the runtime contract allows.
    RunInputTooLarge,
    /// The traceparent header is malformed.
    RunBadTraceparent,
    /// The requested mode exceeds the project's migration mode.
    RunModeNotAllowed,
    /// A step of the run failed.
    RunStepFailed,
    /// The run was cancelled.
    RunCancelled,
    /// A tool call was blocked at the platform boundary (mode forbids its risk class).
    RunToolBlocked,
    /// Shadow runs never send outbound messages.
    RunShadowOutbound,
    // --- model path (model::*): budget ledger, policy, provider proxy ---
    /// Pre-flight budget reservation refused: the call's worst case would pass a limit.
    BudgetExceeded,
    /// A streamed model call exhausted its reservation and was aborted.
    BudgetStreamAborted,
    /// The project's model breaker is open (period hard limit reached or anomaly threshold).
    BudgetBreakerOpen,
    /// The run reached its agent's `max_tokens_per_run` ceiling.
    BudgetRunCeiling,
    /// No usable Policy/Routing contract or route for this agent.
    ModelRouteNotFound,
    /// No provider on the route may receive the run's data class.
    ModelPrivacyBlocked,
    /// Every target of the route failed (timeouts, 429, 5xx, open circuit breakers).
    ModelProviderUnavailable,
    /// The provider answered with something that is not a valid response or stream.
    ModelBadResponse,
    /// The model asked for a tool with malformed arguments or a tool the agent does not have.
    ModelBadToolCall,
    /// A provider API key reference cannot be resolved.
    ModelCredential,
    /// The run reached its step limit without a final answer.
    ModelStepLimit,
    /// The provider rejected the request (4xx other than 408/429).
    ModelProviderRejected,
    /// An LLM run passed its agent's `safety.timeout_seconds`.
    ModelRunTimeout,
    // --- MCP gateway (operator/src/gateway/) ---
    /// Unknown, disabled or unregistered tool.
    McpGateUnknownTool,
    /// The agent has no active contract listing the tool, no grant, or the tool exceeds its ceiling.
    McpGateGrantMissing,
    /// The call's environment is not one the grant and the tool name.
    McpGateEnvironment,
    /// The tool's risk class is blocked by the mode or by the project's destructive-tools flag.
    McpGateRiskBlocked,
    /// The tool needs an approval token and none was presented.
    McpGateApprovalMissing,
    /// The approval token is malformed, forged, expired or bound to another call.
    McpGateApprovalInvalid,
    /// The approval token was already used.
    McpGateApprovalReplayed,
    /// The arguments violate the tool's input schema.
    McpGateArgumentsInvalid,
    /// Rate limit exceeded.
    McpGateRateLimited,
    /// Malformed JSON-RPC or MCP request, or unsupported protocol version.
    McpProtocol,
    /// Unknown, forged or expired MCP session (re-initialize).
    McpSession,
    /// The upstream tool server failed or is unreachable.
    McpUpstream,
    /// The upstream tool server did not answer in time.
    McpUpstreamTimeout,
    /// A credential ref could not be resolved for this project.
    McpCredential,
    // --- channel hub (operator/src/channels/) ---
    /// Unknown project or channel, or no active Channel contract names it (indistinguishable).
    ChannelNotFound,
    /// The webhook's verification header is missing.
    ChannelSignatureMissing,
    /// The webhook's signature or secret token does not verify.
    ChannelSignatureInvalid,
    /// The Slack request timestamp is outside the 300 s window.
    ChannelTimestampStale,
    /// The webhook body exceeds the size limit.
    ChannelBodyTooLarge,
    /// A verified webhook body is not valid UTF-8 JSON of the provider's shape.
    ChannelMalformed,
    /// A verified event of a type the hub does not handle.
    ChannelUnsupportedEvent,
    /// The sender or chat is not in the channel's allowed_senders.
    ChannelSenderNotAllowed,
    /// An outbound message could not be delivered within its retry bound.
    ChannelDeliveryFailed,
    /// Mirror mode: the existing handler (forward_to) failed; the event is stored.
    ChannelForwardFailed,
    /// A channel's verification or send credential cannot be resolved.
    ChannelCredential,
    /// The channel may not send (outbound off, or not selected for canary).
    ChannelOutboundDisabled,
    /// The database is unreachable or overloaded.
    Unavailable,
    /// Anything else: details only in the server log.
    Internal,
}

impl ErrorCode {
    pub const ALL: &'static [ErrorCode] = &[
        Self::ReqMalformed,
        Self::ReqTooLarge,
        Self::ReqInvalidParam,
        Self::AuthMissing,
        Self::AuthInvalid,
        Self::AuthForbidden,
        Self::TenantMissing,
        Self::ProjectNotFound,
        Self::ProjectExists,
        Self::ProjectInvalid,
        Self::SchemaViolation,
        Self::ContractUnknownKind,
        Self::ContractBadHash,
        Self::ContractSemantic,
        Self::ContractNotFound,
        Self::ContractRevisionConflict,
        Self::ContractImmutable,
        Self::ContractBadSignature,
        Self::ContractSignatureReplay,
        Self::ContractSigningKey,
        Self::ContractDuplicateApproval,
        Self::ContractInsufficientApprovals,
        Self::ContractNotPublished,
        Self::ContractArtifactMissing,
        Self::ContractApproverNotAllowed,
        Self::ContractAlreadyActive,
        Self::MigrationIllegalStep,
        Self::MigrationReasonRequired,
        Self::ArtifactInvalid,
        Self::RunNotFound,
        Self::RunIllegalTransition,
        Self::RunIdempotencyConflict,
        Self::RunIdempotencyKeyInvalid,
        Self::RunAttemptsExhausted,
        Self::RunDeadlineExceeded,
        Self::RunAgentInactive,
        Self::RunInputTooLarge,
        Self::RunBadTraceparent,
        Self::RunModeNotAllowed,
        Self::RunStepFailed,
        Self::RunCancelled,
        Self::RunToolBlocked,
        Self::RunShadowOutbound,
        Self::BudgetExceeded,
        Self::BudgetStreamAborted,
        Self::BudgetBreakerOpen,
        Self::BudgetRunCeiling,
        Self::ModelRouteNotFound,
        Self::ModelPrivacyBlocked,
        Self::ModelProviderUnavailable,
        Self::ModelBadResponse,
        Self::ModelBadToolCall,
        Self::ModelCredential,
        Self::ModelStepLimit,
        Self::ModelProviderRejected,
        Self::ModelRunTimeout,
        Self::McpGateUnknownTool,
        Self::McpGateGrantMissing,
        Self::McpGateEnvironment,
        Self::McpGateRiskBlocked,
        Self::McpGateApprovalMissing,
        Self::McpGateApprovalInvalid,
        Self::McpGateApprovalReplayed,
        Self::McpGateArgumentsInvalid,
        Self::McpGateRateLimited,
        Self::McpProtocol,
        Self::McpSession,
        Self::McpUpstream,
        Self::McpUpstreamTimeout,
        Self::McpCredential,
        Self::ChannelNotFound,
        Self::ChannelSignatureMissing,
        Self::ChannelSignatureInvalid,
        Self::ChannelTimestampStale,
        Self::ChannelBodyTooLarge,
        Self::ChannelMalformed,
        Self::ChannelUnsupportedEvent,
        Self::ChannelSenderNotAllowed,
        Self::ChannelDeliveryFailed,
        Self::ChannelForwardFailed,
        Self::ChannelCredential,
        Self::ChannelOutboundDisabled,
        Self::Unavailable,
        Self::Internal,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::ReqMalformed => "E-REQ-001",
            Self::ReqTooLarge => "E-REQ-002",
            Self::ReqInvalidParam => "E-REQ-003",
            Self::AuthMissing => "E-AUTH-001",
            Self::AuthInvalid => "E-AUTH-002",
            Self::AuthForbidden => "E-AUTH-003",
            Self::TenantMissing => "E-TENANT-001",
            Self::ProjectNotFound => "E-PROJECT-001",
            Self::ProjectExists => "E-PROJECT-002",
            Self::ProjectInvalid => "E-PROJECT-003",
            Self::SchemaViolation => "E-SCHEMA-001",
            Self::ContractUnknownKind => "E-CONTRACT-001",
            Self::ContractBadHash => "E-CONTRACT-002",
            Self::ContractSemantic => "E-CONTRACT-003",
            Self::ContractNotFound => "E-CONTRACT-004",
            Self::ContractRevisionConflict => "E-CONTRACT-005",
            Self::ContractNotPublished => "E-CONTRACT-006",
            Self::ContractImmutable => "E-CONTRACT-007",
            Self::ContractBadSignature => "E-CONTRACT-008",
            Self::ContractSignatureReplay => "E-CONTRACT-009",
            Self::ContractSigningKey => "E-CONTRACT-010",
            Self::ContractDuplicateApproval => "E-CONTRACT-011",
            Self::ContractInsufficientApprovals => "E-CONTRACT-012",
            Self::ContractArtifactMissing => "E-CONTRACT-013",
            Self::ContractApproverNotAllowed => "E-CONTRACT-014",
            Self::ContractAlreadyActive => "E-CONTRACT-015",
            Self::MigrationIllegalStep => "E-MIGRATION-001",
            Self::MigrationReasonRequired => "E-MIGRATION-002",
            Self::ArtifactInvalid => "E-ARTIFACT-001",
            Self::RunNotFound => "E-RUN-001",
            Self::RunIllegalTransition => "E-RUN-002",
            Self::RunIdempotencyConflict => "E-RUN-003",
            Self::RunIdempotencyKeyInvalid => "E-RUN-004",
            Self::RunAttemptsExhausted => "E-RUN-005",
            Self::RunDeadlineExceeded => "E-RUN-006",
            Self::RunAgentInactive => "E-RUN-007",
            Self::RunInputTooLarge => "E-RUN-008",
            Self::RunBadTraceparent => "E-RUN-009",
            Self::RunModeNotAllowed => "E-RUN-010",
            Self::RunStepFailed => "E-RUN-011",
            Self::RunCancelled => "E-RUN-012",
            Self::RunToolBlocked => "E-RUN-013",
            Self::RunShadowOutbound => "E-RUN-014",
            Self::BudgetExceeded => "E-BUDGET-001",
            Self::BudgetStreamAborted => "E-BUDGET-002",
            Self::BudgetBreakerOpen => "E-BUDGET-003",
            Self::BudgetRunCeiling => "E-BUDGET-004",
            Self::ModelRouteNotFound => "E-MODEL-001",
            Self::ModelPrivacyBlocked => "E-MODEL-002",
            Self::ModelProviderUnavailable => "E-MODEL-003",
            Self::ModelBadResponse => "E-MODEL-004",
            Self::ModelBadToolCall => "E-MODEL-005",
            Self::ModelCredential => "E-MODEL-006",
            Self::ModelStepLimit => "E-MODEL-007",
            Self::ModelProviderRejected => "E-MODEL-008",
            Self::ModelRunTimeout => "E-MODEL-009",
            Self::McpGateUnknownTool => "E-MCP-GATE-001",
            Self::McpGateGrantMissing => "E-MCP-GATE-002",
            Self::McpGateEnvironment => "E-MCP-GATE-003",
            Self::McpGateRiskBlocked => "E-MCP-GATE-004",
            Self::McpGateApprovalMissing => "E-MCP-GATE-005",
            Self::McpGateApprovalInvalid => "E-MCP-GATE-006",
            Self::McpGateApprovalReplayed => "E-MCP-GATE-007",
            Self::McpGateArgumentsInvalid => "E-MCP-GATE-008",
            Self::McpGateRateLimited => "E-MCP-GATE-009",
            Self::McpProtocol => "E-MCP-001",
            Self::McpSession => "E-MCP-002",
            Self::McpUpstream => "E-MCP-003",
            Self::McpUpstreamTimeout => "E-MCP-004",
            Self::McpCredential => "E-MCP-005",
            Self::ChannelNotFound => "E-CHANNEL-001",
            Self::ChannelSignatureMissing => "E-CHANNEL-002",
            Self::ChannelSignatureInvalid => "E-CHANNEL-003",
            Self::ChannelTimestampStale => "E-CHANNEL-004",
            Self::ChannelBodyTooLarge => "E-CHANNEL-005",
            Self::ChannelMalformed => "E-CHANNEL-006",
            Self::ChannelUnsupportedEvent => "E-CHANNEL-007",
            Self::ChannelSenderNotAllowed => "E-CHANNEL-008",
            Self::ChannelDeliveryFailed => "E-CHANNEL-009",
            Self::ChannelForwardFailed => "E-CHANNEL-010",
            Self::ChannelCredential => "E-CHANNEL-011",
            Self::ChannelOutboundDisabled => "E-CHANNEL-012",
            Self::Unavailable => "E-UNAVAILABLE-001",
            Self::Internal => "E-INTERNAL-001",
        }
    }

    /// The one place that maps errors to HTTP statuses.
    pub fn status(self) -> StatusCode {
        use ErrorCode::*;
        match self {
            ReqMalformed
            | ReqInvalidParam
            | SchemaViolation
            | ContractUnknownKind
            | ContractBadHash
            | ContractSemantic
            | ProjectInvalid
            | ArtifactInvalid
            | MigrationReasonRequired => StatusCode::UNPROCESSABLE_ENTITY,
            ReqTooLarge | RunInputTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            RunNotFound => StatusCode::NOT_FOUND,
            RunIllegalTransition | RunIdempotencyConflict | RunModeNotAllowed => {
                StatusCode::CONFLICT
            }
            RunIdempotencyKeyInvalid | RunBadTraceparent | RunAgentInactive => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            RunAttemptsExhausted | RunDeadlineExceeded | RunStepFailed | RunCancelled
            | RunToolBlocked | RunShadowOutbound => StatusCode::CONFLICT,
            AuthMissing | AuthInvalid => StatusCode::UNAUTHORIZED,
            AuthForbidden | ContractApproverNotAllowed => StatusCode::FORBIDDEN,
            ContractBadSignature | ContractSigningKey => StatusCode::UNAUTHORIZED,
            TenantMissing | Internal => StatusCode::INTERNAL_SERVER_ERROR,
            ProjectNotFound | ContractNotFound => StatusCode::NOT_FOUND,
            ProjectExists
            | ContractRevisionConflict
            | ContractImmutable
            | ContractSignatureReplay
            | ContractDuplicateApproval
            | ContractInsufficientApprovals
            | ContractNotPublished
            | ContractArtifactMissing
            | ContractAlreadyActive
            | MigrationIllegalStep => StatusCode::CONFLICT,
            McpGateUnknownTool | McpSession => StatusCode::NOT_FOUND,
            McpGateGrantMissing
            | McpGateEnvironment
            | McpGateRiskBlocked
            | McpGateApprovalMissing => StatusCode::FORBIDDEN,
            McpGateApprovalInvalid => StatusCode::UNAUTHORIZED,
            McpGateApprovalReplayed => StatusCode::CONFLICT,
            McpGateArgumentsInvalid => StatusCode::UNPROCESSABLE_ENTITY,
            McpGateRateLimited => StatusCode::TOO_MANY_REQUESTS,
            McpProtocol => StatusCode::BAD_REQUEST,
            McpUpstream | McpCredential => StatusCode::BAD_GATEWAY,
            McpUpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            BudgetExceeded | BudgetStreamAborted | BudgetBreakerOpen | BudgetRunCeiling => {
                StatusCode::TOO_MANY_REQUESTS
            }
            ModelRouteNotFound | ModelPrivacyBlocked => StatusCode::UNPROCESSABLE_ENTITY,
            ModelProviderUnavailable | ModelBadResponse | ModelProviderRejected => {
                StatusCode::BAD_GATEWAY
            }
            ModelBadToolCall | ModelStepLimit | ModelRunTimeout => StatusCode::CONFLICT,
            ModelCredential => StatusCode::INTERNAL_SERVER_ERROR,
            ChannelNotFound => StatusCode::NOT_FOUND,
            ChannelSignatureMissing => StatusCode::UNAUTHORIZED,
            ChannelSignatureInvalid => StatusCode::UNAUTHORIZED,
            ChannelTimestampStale => StatusCode::UNAUTHORIZED,
            ChannelBodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ChannelMalformed => StatusCode::BAD_REQUEST,
            ChannelUnsupportedEvent => StatusCode::UNPROCESSABLE_ENTITY,
            ChannelSenderNotAllowed => StatusCode::FORBIDDEN,
            ChannelDeliveryFailed => StatusCode::BAD_GATEWAY,
            ChannelForwardFailed => StatusCode::BAD_GATEWAY,
            ChannelCredential => StatusCode::INTERNAL_SERVER_ERROR,
            ChannelOutboundDisabled => StatusCode::CONFLICT,
        }
    }

    /// A one-line description, used by `docs/errors.md` and `awooop errors`.
    pub fn describe(self) -> &'static str {
        use ErrorCode::*;
        match self {
            ReqMalformed => "request body is not valid JSON or has unknown/mistyped fields",
            ReqTooLarge => "request body exceeds the configured size limit",
            ReqInvalidParam => "a path or query parameter is invalid",
            AuthMissing => "no credential presented",
            AuthInvalid => "credential unknown, revoked or malformed",
            AuthForbidden => "credential lacks the role required for this action",
            TenantMissing => "a tenant query ran without tenant context (fail closed)",
            ProjectNotFound => "project does not exist or is not active",
            ProjectExists => "a project with this id already exists",
            ProjectInvalid => "project id or attribute malformed",
            SchemaViolation => "document violates its JSON Schema (details list each path)",
            ContractUnknownKind => "unknown contract kind",
            ContractBadHash => "artifact reference hash is not sha256:<64 lowercase hex>",
            ContractSemantic => "contract violates a cross-field rule",
            ContractNotFound => "draft, revision or contract not found",
            ContractRevisionConflict => "the revision number signed is not the next revision",
            ContractNotPublished => "only published revisions can be approved or activated",
            ContractImmutable => "published revisions and history are immutable",
            ContractBadSignature => "publish signature does not verify",
            ContractSignatureReplay => "publish signature was already used",
            ContractSigningKey => "signing key unknown, revoked, or not in the keyring",
            ContractDuplicateApproval => "this approver already approved this revision",
            ContractInsufficientApprovals => "not enough distinct, unexpired approvals",
            ContractArtifactMissing => "a referenced artifact is not registered with that hash",
            ContractApproverNotAllowed => "approver not listed in the project's approver ACL",
            ContractAlreadyActive => "this revision is already active",
            MigrationIllegalStep => "migration mode can only move one step unless forced",
            MigrationReasonRequired => "a forced migration-mode change needs a reason",
            ArtifactInvalid => "artifact content does not match its hash or is malformed",
            RunNotFound => "run not found",
            RunIllegalTransition => "illegal run state transition",
            RunIdempotencyConflict => "idempotency key already used with a different request",
            RunIdempotencyKeyInvalid => "Idempotency-Key must match [A-Za-z0-9._:-]{1,128}",
            RunAttemptsExhausted => {
                "run lost its lease more often than max_attempts (recorded on the run)"
            }
            RunDeadlineExceeded => "run passed its hard deadline (state timed_out)",
            RunAgentInactive => "unknown agent or agent without an active revision",
            RunInputTooLarge => "run input exceeds the runtime contract's max_input_bytes",
            RunBadTraceparent => "traceparent header is not a valid W3C trace context",
            RunModeNotAllowed => "requested mode exceeds the project's migration mode",
            RunStepFailed => "a step of the run failed (recorded on the run and its journal)",
            RunCancelled => "the run was cancelled",
            RunToolBlocked => {
                "tool call blocked at the platform boundary: mode forbids its risk class"
            }
            RunShadowOutbound => {
                "shadow runs never send outbound messages (enforced by PostgreSQL)"
            }
            BudgetExceeded => {
                "budget reservation refused: the call's worst case would pass a limit"
            }
            BudgetStreamAborted => {
                "a streamed model call exhausted its reservation and was aborted"
            }
            BudgetBreakerOpen => {
                "project model breaker open (period hard limit or anomaly threshold reached)"
            }
            BudgetRunCeiling => "the run reached its agent's max_tokens_per_run ceiling",
            ModelRouteNotFound => "no active Policy/Routing contract or no route for this agent",
            ModelPrivacyBlocked => "no provider on the route may receive the run's data class",
            ModelProviderUnavailable => {
                "every route target failed (timeout, 429, 5xx or open circuit breaker)"
            }
            ModelBadResponse => "provider response or stream is malformed or truncated",
            ModelBadToolCall => "model tool call has malformed arguments or names an unknown tool",
            ModelCredential => "a provider API key reference cannot be resolved",
            ModelStepLimit => "the run reached its step limit without a final answer",
            ModelProviderRejected => "the provider rejected the request (4xx other than 408/429)",
            ModelRunTimeout => "the LLM run passed its agent's safety.timeout_seconds",
            McpGateUnknownTool => "MCP gate 3: tool unknown, disabled or not registered",
            McpGateGrantMissing => {
                "MCP gate 2: agent inactive, tool not in its contract or grants, or above its ceiling"
            }
            McpGateEnvironment => "MCP gate 4: the call's environment is not granted for this tool",
            McpGateRiskBlocked => {
                "MCP gate 3: risk class blocked by the mode (shadow/canary/read_only: read-only only) or destructive tools disabled"
            }
            McpGateApprovalMissing => "MCP gate 5: write/execute tools need an approval token",
            McpGateApprovalInvalid => {
                "MCP gate 5: approval token malformed, forged, expired or bound to another call"
            }
            McpGateApprovalReplayed => "MCP gate 5: approval token already used (jti)",
            McpGateArgumentsInvalid => "tool arguments violate the tool's input schema",
            McpGateRateLimited => "tool-call rate limit of the agent exceeded; retry later",
            McpProtocol => "malformed JSON-RPC/MCP request or unsupported protocol version",
            McpSession => "unknown, forged or expired Mcp-Session-Id: initialize again",
            McpUpstream => "the upstream tool server failed or is unreachable",
            McpUpstreamTimeout => "the upstream tool server did not answer in time",
            McpCredential => "a credential ref could not be resolved for this project",
            ChannelNotFound => "unknown project or channel, or no active Channel contract names it",
            ChannelSignatureMissing => {
                "webhook verification header missing (X-Telegram-Bot-Api-Secret-Token, X-Line-Signature, X-Slack-Signature/-Request-Timestamp)"
            }
            ChannelSignatureInvalid => {
                "webhook signature or secret token does not verify (nothing of the body is stored)"
            }
            ChannelTimestampStale => {
                "Slack request timestamp malformed or outside the 300 s window (replay protection)"
            }
            ChannelBodyTooLarge => "webhook body exceeds the channel size limit",
            ChannelMalformed => {
                "verified webhook body is not valid UTF-8/JSON of the provider's format"
            }
            ChannelUnsupportedEvent => {
                "event type not handled by the hub (acknowledged to webhooks with 200 so the provider does not retry; nothing stored)"
            }
            ChannelSenderNotAllowed => {
                "sender/chat not in the channel's allowed_senders (webhooks are acknowledged with 200; nothing stored)"
            }
            ChannelDeliveryFailed => {
                "outbound message not delivered: provider rejected it or the retry bound was reached"
            }
            ChannelForwardFailed => {
                "mirror mode: forwarding to the existing handler failed (the event is stored; the provider retries)"
            }
            ChannelCredential => {
                "a channel's verification or send credential ref cannot be resolved"
            }
            ChannelOutboundDisabled => {
                "channel may not send: outbound is off, or the chat is not selected for canary"
            }
            Unavailable => "database unavailable; retry later",
            Internal => "internal error; see server logs by trace id",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A platform error: a stable code, a safe message and optional structured details.
#[derive(Debug, thiserror::Error)]
#[error("{code}: {message}")]
pub struct Error {
    pub code: ErrorCode,
    pub message: String,
    pub details: Option<Value>,
    /// The internal cause; logged, never sent to clients.
    #[source]
    pub source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            details: None,
            source: None,
        }
    }

    pub fn with_details(mut self, details: Value) -> Self {
        self.details = Some(details);
        self
    }

    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(Box::new(source));
        self
    }

    pub fn internal(source: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self::new(ErrorCode::Internal, "internal error").with_source(source)
    }

    pub fn not_found(what: &str) -> Self {
        Self::new(ErrorCode::ContractNotFound, format!("{what} not found"))
    }
}

impl From<sqlx::Error> for Error {
    fn from(e: sqlx::Error) -> Self {
        if let sqlx::Error::Database(db) = &e {
            match db.code().as_deref() {
                // awooop_reject_mutation(): an immutable row was touched.
                Some("AW002") => {
                    return Error::new(
                        ErrorCode::RunIllegalTransition,
                        "illegal run state transition",
                    )
                    .with_source(e);
                }
                Some("AW003") => {
                    return Error::new(
                        ErrorCode::RunShadowOutbound,
                        "shadow runs never send outbound messages",
                    )
                    .with_source(e);
                }
                Some("AW001") => {
                    return Error::new(
                        ErrorCode::ContractImmutable,
                        "published revisions and history are immutable",
                    )
                    .with_source(e);
                }
                // insufficient_privilege / RLS WITH CHECK violation: the tenant boundary held.
                Some("42501") => {
                    return Error::new(ErrorCode::AuthForbidden, "operation not permitted")
                        .with_source(e);
                }
                _ => {}
            }
        }
        match &e {
            sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Io(_)
            | sqlx::Error::Tls(_) => {
                Error::new(ErrorCode::Unavailable, "database unavailable").with_source(e)
            }
            _ => Error::internal(e),
        }
    }
}

#[derive(Serialize)]
struct Body<'a> {
    code: &'static str,
    message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    details: Option<&'a Value>,
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let status = self.code.status();
        if status.is_server_error() {
            tracing::error!(code = self.code.as_str(), error = ?self.source, "{}", self.message);
        } else {
            tracing::debug!(code = self.code.as_str(), "{}", self.message);
        }
        let body = Body {
            code: self.code.as_str(),
            message: &self.message,
            details: self.details.as_ref(),
        };
        (status, axum::Json(body)).into_response()
    }
}

/// The JSON body of an error as sent to clients; also what the CLI prints.
pub fn error_json(e: &Error) -> Value {
    json!({"code": e.code.as_str(), "message": e.message, "details": e.details})
}

/// The error-code table as Markdown (docs/errors.md is generated from this and checked).
pub fn markdown_table() -> String {
    let mut s = String::from("| Code | HTTP | Meaning |\n|---|---|---|\n");
    for c in ErrorCode::ALL {
        s.push_str(&format!(
            "| `{}` | {} | {} |\n",
            c.as_str(),
            c.status().as_u16(),
            c.describe()
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn codes_are_unique_and_well_formed() {
        let mut seen = HashSet::new();
        let shape = regex::Regex::new(r"^E-[A-Z]+(-[A-Z]+)*-\d{3}$").unwrap();
        for c in ErrorCode::ALL {
            let s = c.as_str();
            assert!(seen.insert(s), "duplicate code {s}");
            assert!(shape.is_match(s), "{s}");
        }
    }
}
