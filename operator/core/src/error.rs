//! The one error type of the platform's service layer, its stable codes and its single HTTP
//! mapping point.
//!
//! Every user-facing failure carries an [`ErrorCode`]: a stable `E-…` string documented in
//! `docs/errors.md` (a test keeps that table and this enum in step). Messages say what failed
//! and never carry secrets, SQL, upstream configuration or other tenants' names; internal causes
//! are logged server-side and replaced by a generic message in responses.

use serde_json::{Value, json};

/// Declares every error code once: the variant, its stable string, its HTTP status and the
/// description printed by `awooop errors` and checked against docs/errors.md. The order is the
/// order of [`ErrorCode::ALL`] and of the documented table.
macro_rules! error_codes {
    ($($(#[$doc:meta])* $variant:ident = ($code:literal, $status:literal, $describe:literal),)*) => {
        /// Stable error codes. The string form is part of the public API.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum ErrorCode {
            $($(#[$doc])* $variant,)*
        }

        impl ErrorCode {
            /// Every code, in the documented order.
            pub const ALL: &'static [ErrorCode] = &[$(Self::$variant,)*];

            /// The stable `E-…` string.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $code,)*
                }
            }

            /// The HTTP status this code maps to (the http crate turns it into a response).
            pub fn http_status(self) -> u16 {
                match self {
                    $(Self::$variant => $status,)*
                }
            }

            /// One line for users: what went wrong.
            pub fn describe(self) -> &'static str {
                match self {
                    $(Self::$variant => $describe,)*
                }
            }
        }
    };
}

error_codes! {
    /// Request body is not valid JSON, or has the wrong shape/unknown fields.
    ReqMalformed = ("E-REQ-001", 422, "request body is not valid JSON or has unknown/mistyped fields"),
    /// Request body exceeds the size limit.
    ReqTooLarge = ("E-REQ-002", 413, "request body exceeds the configured size limit"),
    /// A path or query parameter is invalid.
    ReqInvalidParam = ("E-REQ-003", 422, "a path or query parameter is invalid"),
    /// The request body is not declared as JSON (Content-Type).
    ReqUnsupportedMediaType = ("E-REQ-004", 415, "request body sent without Content-Type: application/json (text/plain or none)"),
    /// The endpoint exists but does not accept this HTTP method.
    ReqMethodNotAllowed = ("E-REQ-005", 405, "the endpoint exists but does not accept this HTTP method"),
    /// No endpoint has this path.
    ReqNotFound = ("E-REQ-006", 404, "no endpoint has this path"),
    /// No credential was presented.
    AuthMissing = ("E-AUTH-001", 401, "no credential presented"),
    /// The credential is unknown, revoked or malformed.
    AuthInvalid = ("E-AUTH-002", 401, "credential unknown, revoked or malformed"),
    /// The credential is valid but lacks the role for this action.
    AuthForbidden = ("E-AUTH-003", 403, "credential lacks the role required for this action"),
    /// A tenant query was attempted without tenant context.
    TenantMissing = ("E-TENANT-001", 500, "a tenant query ran without tenant context (fail closed)"),
    /// The project does not exist or is not active (indistinguishable on purpose).
    ProjectNotFound = ("E-PROJECT-001", 404, "project does not exist or is not active"),
    /// A project with that id already exists.
    ProjectExists = ("E-PROJECT-002", 409, "a project with this id already exists"),
    /// A project id or name is malformed.
    ProjectInvalid = ("E-PROJECT-003", 422, "project id or attribute malformed"),
    /// A document violates its JSON Schema.
    SchemaViolation = ("E-SCHEMA-001", 422, "document violates its JSON Schema (details list each path)"),
    /// The contract kind is unknown.
    ContractUnknownKind = ("E-CONTRACT-001", 422, "unknown contract kind"),
    /// An artifact reference has a malformed hash.
    ContractBadHash = ("E-CONTRACT-002", 422, "artifact reference hash is not sha256:<64 lowercase hex>"),
    /// A contract violates a semantic rule that JSON Schema cannot express.
    ContractSemantic = ("E-CONTRACT-003", 422, "contract violates a cross-field rule"),
    /// Draft, revision or contract not found.
    ContractNotFound = ("E-CONTRACT-004", 404, "draft, revision or contract not found"),
    /// The revision number being published is not the next one (someone published first).
    ContractRevisionConflict = ("E-CONTRACT-005", 409, "the revision number signed is not the next revision"),
    /// A published revision cannot be changed or deleted.
    ContractImmutable = ("E-CONTRACT-007", 409, "published revisions and history are immutable"),
    /// The publish signature does not verify.
    ContractBadSignature = ("E-CONTRACT-008", 401, "publish signature does not verify"),
    /// The publish signature was already used.
    ContractSignatureReplay = ("E-CONTRACT-009", 409, "publish signature was already used"),
    /// The signing key is unknown, revoked, or its material does not match its fingerprint.
    ContractSigningKey = ("E-CONTRACT-010", 401, "signing key unknown, revoked, or not in the keyring"),
    /// The approver already approved this revision.
    ContractDuplicateApproval = ("E-CONTRACT-011", 409, "this approver already approved this revision"),
    /// Not enough valid approvals to activate.
    ContractInsufficientApprovals = ("E-CONTRACT-012", 409, "not enough distinct, unexpired approvals"),
    /// Only published revisions can be approved or activated.
    ContractNotPublished = ("E-CONTRACT-006", 409, "only published revisions can be approved or activated"),
    /// A referenced artifact is not registered with the same hash.
    ContractArtifactMissing = ("E-CONTRACT-013", 409, "a referenced artifact is not registered with that hash"),
    /// The approver is not allowed to approve by the project's ACL.
    ContractApproverNotAllowed = ("E-CONTRACT-014", 403, "approver not listed in the project's approver ACL"),
    /// The revision is already the active one.
    ContractAlreadyActive = ("E-CONTRACT-015", 409, "this revision is already active"),
    /// The revisions are too large to diff on the server.
    ContractDiffTooLarge = ("E-CONTRACT-016", 413, "revisions too large to diff on the server (2 MiB each)"),
    /// A migration-state change skips a step without being forced.
    MigrationIllegalStep = ("E-MIGRATION-001", 409, "migration mode can only move one step unless forced"),
    /// A forced migration-state change has no reason.
    MigrationReasonRequired = ("E-MIGRATION-002", 422, "a forced migration-mode change needs a reason"),
    /// Artifact content does not match its declared hash, or is malformed.
    ArtifactInvalid = ("E-ARTIFACT-001", 422, "artifact content does not match its hash or is malformed"),
    /// Run not found (or belongs to another project: indistinguishable on purpose).
    RunNotFound = ("E-RUN-001", 404, "run not found"),
    /// Illegal run state transition.
    RunIllegalTransition = ("E-RUN-002", 409, "illegal run state transition"),
    /// Idempotency key reused with a different request.
    RunIdempotencyConflict = ("E-RUN-003", 409, "idempotency key already used with a different request"),
    /// Idempotency key malformed.
    RunIdempotencyKeyInvalid = ("E-RUN-004", 422, "Idempotency-Key must match [A-Za-z0-9._:-]{1,128}"),
    /// Lease lost more often than the run's max attempts.
    RunAttemptsExhausted = ("E-RUN-005", 409, "run lost its lease more often than max_attempts (recorded on the run)"),
    /// The run passed its hard deadline.
    RunDeadlineExceeded = ("E-RUN-006", 409, "run passed its hard deadline (state timed_out)"),
    /// Unknown agent, or the agent has no active revision.
    RunAgentInactive = ("E-RUN-007", 422, "unknown agent or agent without an active revision"),
    /// Run input larger than the runtime contract allows.
    RunInputTooLarge = ("E-RUN-008", 413, "run input exceeds the runtime contract's max_input_bytes"),
    /// The traceparent header is malformed.
    RunBadTraceparent = ("E-RUN-009", 422, "traceparent header is not a valid W3C trace context"),
    /// The requested mode exceeds the project's migration mode.
    RunModeNotAllowed = ("E-RUN-010", 409, "requested mode exceeds the project's migration mode"),
    /// A step of the run failed.
    RunStepFailed = ("E-RUN-011", 409, "a step of the run failed (recorded on the run and its journal)"),
    /// The run was cancelled.
    RunCancelled = ("E-RUN-012", 409, "the run was cancelled"),
    /// A tool call was blocked at the platform boundary (mode forbids its risk class).
    RunToolBlocked = ("E-RUN-013", 409, "tool call blocked at the platform boundary: mode forbids its risk class"),
    /// Shadow runs never send outbound messages.
    RunShadowOutbound = ("E-RUN-014", 409, "shadow runs never send outbound messages (enforced by PostgreSQL)"),
    /// Pre-flight budget reservation refused: the call's worst case would pass a limit.
    BudgetExceeded = ("E-BUDGET-001", 429, "budget reservation refused: the call's worst case would pass a limit"),
    /// A streamed model call exhausted its reservation and was aborted.
    BudgetStreamAborted = ("E-BUDGET-002", 429, "a streamed model call exhausted its reservation and was aborted"),
    /// The project's model breaker is open (period hard limit reached or anomaly threshold).
    BudgetBreakerOpen = ("E-BUDGET-003", 429, "project model breaker open (period hard limit or anomaly threshold reached)"),
    /// The run reached its agent's `max_tokens_per_run` ceiling.
    BudgetRunCeiling = ("E-BUDGET-004", 429, "the run reached its agent's max_tokens_per_run ceiling"),
    /// No usable Policy/Routing contract or route for this agent.
    ModelRouteNotFound = ("E-MODEL-001", 422, "no active Policy/Routing contract or no route for this agent"),
    /// No provider on the route may receive the run's data class.
    ModelPrivacyBlocked = ("E-MODEL-002", 422, "no provider on the route may receive the run's data class"),
    /// Every target of the route failed (timeouts, 429, 5xx, open circuit breakers).
    ModelProviderUnavailable = ("E-MODEL-003", 502, "every route target failed (timeout, 429, 5xx or open circuit breaker)"),
    /// The provider answered with something that is not a valid response or stream.
    ModelBadResponse = ("E-MODEL-004", 502, "provider response or stream is malformed or truncated"),
    /// The model asked for a tool with malformed arguments or a tool the agent does not have.
    ModelBadToolCall = ("E-MODEL-005", 409, "model tool call has malformed arguments or names an unknown tool"),
    /// A provider API key reference cannot be resolved.
    ModelCredential = ("E-MODEL-006", 500, "a provider API key reference cannot be resolved"),
    /// The run reached its step limit without a final answer.
    ModelStepLimit = ("E-MODEL-007", 409, "the run reached its step limit without a final answer"),
    /// The provider rejected the request (4xx other than 408/429).
    ModelProviderRejected = ("E-MODEL-008", 502, "the provider rejected the request (4xx other than 408/429)"),
    /// An LLM run passed its agent's `safety.timeout_seconds`.
    ModelRunTimeout = ("E-MODEL-009", 409, "the LLM run passed its agent's safety.timeout_seconds"),
    /// Unknown, disabled or unregistered tool.
    McpGateUnknownTool = ("E-MCP-GATE-001", 404, "MCP gate 3: tool unknown, disabled or not registered"),
    /// The agent has no active contract listing the tool, no grant, or the tool exceeds its ceiling.
    McpGateGrantMissing = ("E-MCP-GATE-002", 403, "MCP gate 2: agent inactive, tool not in its contract or grants, or above its ceiling"),
    /// The call's environment is not one the grant and the tool name.
    McpGateEnvironment = ("E-MCP-GATE-003", 403, "MCP gate 4: the call's environment is not granted for this tool"),
    /// The tool's risk class is blocked by the mode or by the project's destructive-tools flag.
    McpGateRiskBlocked = ("E-MCP-GATE-004", 403, "MCP gate 3: risk class blocked by the mode (shadow/canary/read_only: read-only only) or destructive tools disabled"),
    /// The tool needs an approval token and none was presented.
    McpGateApprovalMissing = ("E-MCP-GATE-005", 403, "MCP gate 5: write/execute tools need an approval token"),
    /// The approval token is malformed, forged, expired or bound to another call.
    McpGateApprovalInvalid = ("E-MCP-GATE-006", 401, "MCP gate 5: approval token malformed, forged, expired or bound to another call"),
    /// The approval token was already used.
    McpGateApprovalReplayed = ("E-MCP-GATE-007", 409, "MCP gate 5: approval token already used (jti)"),
    /// The arguments violate the tool's input schema.
    McpGateArgumentsInvalid = ("E-MCP-GATE-008", 422, "tool arguments violate the tool's input schema"),
    /// Rate limit exceeded.
    McpGateRateLimited = ("E-MCP-GATE-009", 429, "tool-call rate limit of the agent exceeded; retry later"),
    /// A write/execute/destructive tool is not enabled for this mode by the MCP Gateway contract.
    McpGateWriteDisabled = ("E-MCP-GATE-010", 403, "MCP gate 3: write/execute/destructive tools are blocked unless the MCP Gateway contract enables them for this mode (enabled_in_modes)"),
    /// The tool declares a dry-run companion and no successful dry run with these arguments was recorded in this run.
    McpGateDryRunMissing = ("E-MCP-GATE-011", 409, "MCP gate 5: the tool needs a successful dry run with the same argument hash in the same run first"),
    /// Malformed JSON-RPC or MCP request, or unsupported protocol version.
    McpProtocol = ("E-MCP-001", 400, "malformed JSON-RPC/MCP request or unsupported protocol version"),
    /// Unknown, forged or expired MCP session (re-initialize).
    McpSession = ("E-MCP-002", 404, "unknown, forged or expired Mcp-Session-Id: initialize again"),
    /// The upstream tool server failed or is unreachable.
    McpUpstream = ("E-MCP-003", 502, "the upstream tool server failed or is unreachable"),
    /// The upstream tool server did not answer in time.
    McpUpstreamTimeout = ("E-MCP-004", 504, "the upstream tool server did not answer in time"),
    /// A credential ref could not be resolved for this project.
    McpCredential = ("E-MCP-005", 502, "a credential ref could not be resolved for this project"),
    // --- platform policy (awooop-platform): stdio catalog, egress allow-list ---
    /// A contract names a stdio catalog entry that is not registered, or injects a credential
    /// into a variable the entry does not allow.
    CatalogUnknownEntry = ("E-CATALOG-001", 422, "a stdio provider names no registered catalog entry, or injects a credential into a variable the entry does not allow"),
    /// A stdio catalog entry given by the administrator is malformed.
    CatalogInvalid = ("E-CATALOG-002", 422, "stdio catalog entry malformed (name, command, arguments, env names)"),
    /// The egress policy does not allow this destination (URL shape, host or address).
    EgressDenied = ("E-EGRESS-001", 403, "the egress policy refuses this destination (URL shape, host not allowed, or a loopback/private/metadata address)"),
    /// An egress rule given by the administrator is malformed.
    EgressRuleInvalid = ("E-EGRESS-002", 422, "egress rule malformed (host must be a DNS name, *.suffix or CIDR)"),
    // --- context firewall (contracts' context domains) and run events ---
    /// A tool (or credential) of one context domain was granted to, listed for or called by an
    /// agent that may not read that domain.
    ContextToolForeignDomain = ("E-CONTEXT-001", 403, "context firewall: the tool belongs to a context domain this agent may not read"),
    /// Prompt assembly refused a context item (tool result, conversation event, artifact) of a
    /// domain the agent may not read.
    ContextItemForeignDomain = ("E-CONTEXT-002", 403, "context firewall: a context item of a foreign domain was refused at prompt assembly"),
    /// The project declares context domains, but the agent's domain or a tool's domain is not
    /// one of them, or a tool carries no domain (fail closed).
    ContextDomainUndeclared = ("E-CONTEXT-003", 403, "context firewall: the project declares domains and this agent or tool has none of them"),
    /// The Last-Event-ID of a run event stream is malformed.
    EventsBadCursor = ("E-EVENTS-001", 422, "Last-Event-ID must be a non-negative integer event id of this run"),
    // --- channel hub (awooop-channels) ---
    /// Unknown project or channel, or no active Channel contract names it (indistinguishable).
    ChannelNotFound = ("E-CHANNEL-001", 404, "unknown project or channel, or no active Channel contract names it"),
    /// The webhook's verification header is missing.
    ChannelSignatureMissing = ("E-CHANNEL-002", 401, "webhook verification header missing (X-Telegram-Bot-Api-Secret-Token, X-Line-Signature, X-Slack-Signature/-Request-Timestamp)"),
    /// The webhook's signature or secret token does not verify.
    ChannelSignatureInvalid = ("E-CHANNEL-003", 401, "webhook signature or secret token does not verify (nothing of the body is stored)"),
    /// The Slack request timestamp is outside the 300 s window.
    ChannelTimestampStale = ("E-CHANNEL-004", 401, "Slack request timestamp malformed or outside the 300 s window (replay protection)"),
    /// The webhook body exceeds the size limit.
    ChannelBodyTooLarge = ("E-CHANNEL-005", 413, "webhook body exceeds the channel size limit"),
    /// A verified webhook body is not valid UTF-8 JSON of the provider's shape.
    ChannelMalformed = ("E-CHANNEL-006", 400, "verified webhook body is not valid UTF-8/JSON of the provider's format"),
    /// A verified event of a type the hub does not handle.
    ChannelUnsupportedEvent = ("E-CHANNEL-007", 422, "event type not handled by the hub (acknowledged to webhooks with 200 so the provider does not retry; nothing stored)"),
    /// The sender or chat is not in the channel's allowed_senders.
    ChannelSenderNotAllowed = ("E-CHANNEL-008", 403, "sender/chat not in the channel's allowed_senders (webhooks are acknowledged with 200; nothing stored)"),
    /// An outbound message could not be delivered within its retry bound.
    ChannelDeliveryFailed = ("E-CHANNEL-009", 502, "outbound message not delivered: provider rejected it or the retry bound was reached"),
    /// Mirror mode: the existing handler (forward_to) failed; the event is stored.
    ChannelForwardFailed = ("E-CHANNEL-010", 502, "mirror mode: forwarding to the existing handler failed (the event is stored; the provider retries)"),
    /// A channel's verification or send credential cannot be resolved.
    ChannelCredential = ("E-CHANNEL-011", 500, "a channel's verification or send credential ref cannot be resolved"),
    /// The channel may not send (outbound off, or not selected for canary).
    ChannelOutboundDisabled = ("E-CHANNEL-012", 409, "channel may not send: outbound is off, or the chat is not selected for canary"),
    /// A contract file's header or name is malformed, or its kind/name cannot be determined.
    ApplyBadFile = ("E-APPLY-001", 422, "contract file malformed: bad `# awooop:` header, body not JSON, or kind/name unknown"),
    /// A contract file names another project, kind or name than the one asked for.
    ApplyConflict = ("E-APPLY-002", 422, "contract file names another project, kind or name than asked for (or a Project contract not named after its project)"),
    /// Nothing to apply, or an onboarding folder without its Project contract.
    ApplyNothing = ("E-APPLY-003", 422, "no contract file found, or the onboarding folder has no Project contract"),
    /// An artifact file beside the contract files (e.g. `prompts/x.md`) has another hash than
    /// the contract that references it names.
    ApplyArtifactMismatch = ("E-APPLY-004", 422, "an artifact file beside the contract files has another sha256 than the contract names"),
    // --- approvals and controlled write paths (docs/approvals.md) ---
    /// An approver rejected the pending tool call (the run fails with who and why).
    ApprovalRejected = ("E-APPROVAL-001", 409, "the approval request was rejected (the run fails; the message names who and why)"),
    /// Nobody reached the quorum before the request expired (the reaper fails the run).
    ApprovalExpired = ("E-APPROVAL-002", 409, "the approval request expired before reaching its quorum (the run fails)"),
    /// The caller is not an eligible approver of this project (acl.approvers, chat mapping).
    ApprovalNotEligible = ("E-APPROVAL-003", 403, "not an eligible approver: not in the Project contract's acl.approvers or chat user not mapped to one"),
    /// The request was already decided or expired: a late decision changes nothing.
    ApprovalAlreadyDecided = ("E-APPROVAL-004", 409, "the approval request was already decided or has expired; the decision changes nothing"),
    /// No approval request with this id in the project.
    ApprovalNotFound = ("E-APPROVAL-005", 404, "approval request not found"),
    /// The approval machinery cannot mint tokens in this process (no gateway key).
    ApprovalUnavailable = ("E-APPROVAL-006", 503, "approvals cannot be decided here: no approval-token key is configured in this process"),
    // --- tool results ---
    /// The tool answered with `isError: true`: the step failed.
    ToolError = ("E-TOOL-001", 409, "the tool reported an error (isError: true); the step failed unless the step or agent continues on tool errors"),
    /// The database is unreachable or overloaded.
    Unavailable = ("E-UNAVAILABLE-001", 503, "database unavailable; retry later"),
    /// Anything else: details only in the server log.
    Internal = ("E-INTERNAL-001", 500, "internal error; see server logs by trace id"),
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
    /// The error of a load shared by several waiters ([`crate::cache::TtlCache`]), for one of
    /// them: the error itself for the last holder, else a copy without the internal cause.
    pub fn unshare(e: std::sync::Arc<Error>) -> Error {
        std::sync::Arc::try_unwrap(e).unwrap_or_else(|e| Error {
            details: e.details.clone(),
            ..Error::new(e.code, e.message.clone())
        })
    }

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

/// PostgreSQL errors become platform errors: the triggers' own SQLSTATEs and RLS refusals get
/// their stable codes, connection trouble is `Unavailable`, the rest `Internal`. Behind the
/// `sqlx` feature (enabled by the store crate) so the core builds without a database driver;
/// it must live here because `?` needs `From<sqlx::Error> for Error` and the orphan rule puts
/// that impl in this crate or in sqlx.
#[cfg(feature = "sqlx")]
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
                Some("AW004") => {
                    return Error::new(
                        ErrorCode::ApprovalAlreadyDecided,
                        "the approval request was already decided",
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
                // character_not_in_repertoire (U+0000 in text) / untranslatable_character
                // (`\u0000` in jsonb): client input PostgreSQL cannot store. The HTTP guards
                // refuse it earlier; this is the backstop for any path they miss.
                Some("22021") | Some("22P05") => {
                    return Error::new(
                        ErrorCode::ReqMalformed,
                        "input contains a character that cannot be stored (U+0000)",
                    )
                    .with_source(e);
                }
                // The server ended the session (admin_shutdown 57P01 from pg_terminate_backend
                // or a fast shutdown, crash_shutdown 57P02, cannot_connect_now 57P03) or the
                // connection broke (class 08): nothing was committed, so the client may retry.
                Some(c) if is_connection_sqlstate(c) => {
                    return Error::new(ErrorCode::Unavailable, "database unavailable")
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

/// SQLSTATEs that mean "the database went away", not "the request was wrong": class 08
/// (connection exception) and 57P01/57P02/57P03 (the server terminated or refuses sessions).
pub fn is_connection_sqlstate(code: &str) -> bool {
    code.starts_with("08") || matches!(code, "57P01" | "57P02" | "57P03")
}

#[cfg(feature = "axum")]
#[derive(serde::Serialize)]
struct Body<'a> {
    code: &'static str,
    message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    details: Option<&'a Value>,
}

/// The one HTTP mapping of errors (behind the `axum` feature, enabled by the http crate; same
/// orphan-rule reason as the sqlx mapping).
#[cfg(feature = "axum")]
impl axum::response::IntoResponse for Error {
    fn into_response(self) -> axum::response::Response {
        let status = axum::http::StatusCode::from_u16(self.code.http_status())
            .unwrap_or(axum::http::StatusCode::INTERNAL_SERVER_ERROR);
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
            c.http_status(),
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
    fn connection_sqlstates_are_unavailable_others_are_not() {
        for c in [
            "57P01", "57P02", "57P03", "08000", "08003", "08006", "08001",
        ] {
            assert!(is_connection_sqlstate(c), "{c}");
        }
        for c in ["57014", "23505", "42501", "40001", "AW001"] {
            assert!(!is_connection_sqlstate(c), "{c}");
        }
    }

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
