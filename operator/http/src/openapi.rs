//! The OpenAPI 3.1 document, generated from the code: request and response schemas come from
//! the Rust types (schemars, JSON Schema 2020-12 as OpenAPI 3.1 uses), error codes from
//! [`ErrorCode`], and the operation table below sits next to the routers it describes (a test
//! calls every documented path and fails on an undocumented 404).

use schemars::JsonSchema;
use schemars::generate::{SchemaGenerator, SchemaSettings};
use serde_json::{Map, Value, json};

use awooop_control::{NewProject, PublishRequest};
use awooop_core::error::ErrorCode;
use awooop_runtime::approvals::{ApprovalView, DecisionResult};
use awooop_runtime::{CreateRun, RunAccepted, RunDetail, RunPage, RunView};

/// The JSON body of every error response.
#[derive(schemars::JsonSchema)]
#[allow(dead_code)]
struct ErrorBody {
    /// Stable error code (see docs/errors.md).
    code: String,
    message: String,
    details: Option<Value>,
}

pub struct Op {
    pub method: &'static str,
    pub path: &'static str,
    pub summary: &'static str,
    pub status: u16,
    request: Option<fn(&mut SchemaGenerator) -> Value>,
    response: Option<fn(&mut SchemaGenerator) -> Value>,
    /// Query parameters: (name, JSON Schema type).
    pub query: &'static [(&'static str, &'static str)],
    /// Operation-specific error codes; [`Op::all_errors`] adds the ones every route can give.
    pub errors: &'static [ErrorCode],
    /// Needs no credential (`/healthz`, `/readyz`, `/openapi.json`).
    pub public: bool,
    /// Media type of the success body (`application/json` unless said otherwise).
    pub media: &'static str,
}

impl Op {
    /// Every code this operation can answer with: its own, plus 401/403 for any credentialed
    /// route, 422 (`E-REQ-003`: a path or query parameter is invalid, e.g. U+0000) for every
    /// route, and 413/415/422 (`E-REQ-002`, `E-REQ-004`, `E-REQ-001`) for every JSON body.
    pub fn all_errors(&self) -> Vec<ErrorCode> {
        let mut v: Vec<ErrorCode> = self.errors.to_vec();
        let mut add = |e: ErrorCode| {
            if !v.contains(&e) {
                v.push(e);
            }
        };
        add(E::ReqInvalidParam);
        if !self.public {
            add(E::AuthMissing);
            add(E::AuthInvalid);
            add(E::AuthForbidden);
        }
        if self.request.is_some() {
            add(E::ReqMalformed);
            add(E::ReqTooLarge);
            add(E::ReqUnsupportedMediaType);
        }
        v
    }
}

fn s<T: JsonSchema>(g: &mut SchemaGenerator) -> Value {
    g.subschema_for::<T>().to_value()
}

fn any(_: &mut SchemaGenerator) -> Value {
    json!({"type": "object"})
}

fn array(_: &mut SchemaGenerator) -> Value {
    json!({"type": "array", "items": {"type": "object"}})
}

fn text(_: &mut SchemaGenerator) -> Value {
    json!({"type": "string"})
}

fn new_api_key(_: &mut SchemaGenerator) -> Value {
    json!({"type": "object", "additionalProperties": false, "required": ["principal", "roles"],
        "properties": {"principal": {"type": "string"},
            "roles": {"type": "array", "items": {"type": "string",
                "enum": ["reader", "author", "publisher", "approver", "activator", "runner"]}},
            "agents": {"type": "array", "items": {"type": "string"},
                "description": "runner keys: agents the key may act for (\"*\": any)"},
            "environments": {"type": "array", "items": {"type": "string"},
                "description": "runner keys: environments the key may act in (\"*\": any)"}}})
}

fn register_key(_: &mut SchemaGenerator) -> Value {
    json!({"type": "object", "additionalProperties": false, "required": ["key_id"],
        "properties": {"key_id": {"type": "string"}}})
}

fn put_artifact(_: &mut SchemaGenerator) -> Value {
    json!({"type": "object", "additionalProperties": false,
        "required": ["ref", "kind", "content_base64"],
        "properties": {"ref": {"type": "string"},
            "kind": {"type": "string", "enum": ["prompt", "schema", "eval", "replay", "other"]},
            "media_type": {"type": "string"}, "content_base64": {"type": "string"}}})
}

fn validate_req(_: &mut SchemaGenerator) -> Value {
    json!({"type": "object", "additionalProperties": false, "required": ["kind", "body"],
        "properties": {"kind": {"type": "string"}, "body": {}}})
}

fn new_draft(_: &mut SchemaGenerator) -> Value {
    json!({"type": "object", "additionalProperties": false, "required": ["kind", "name", "body"],
        "properties": {"kind": {"type": "string"}, "name": {"type": "string"}, "body": {}}})
}

fn update_draft(_: &mut SchemaGenerator) -> Value {
    json!({"type": "object", "additionalProperties": false, "required": ["body"],
        "properties": {"body": {}}})
}

fn set_mode(_: &mut SchemaGenerator) -> Value {
    json!({"type": "object", "additionalProperties": false, "required": ["mode"],
        "properties": {"mode": {"type": "string",
            "enum": ["shadow", "canary", "read_only", "suggest", "auto_remediate"]},
            "force": {"type": "boolean"}, "reason": {"type": ["string", "null"]}}})
}

fn run_approval(_: &mut SchemaGenerator) -> Value {
    json!({"type": "object", "additionalProperties": false, "required": ["approved"],
        "properties": {"approved": {"type": "boolean"}}})
}

fn api_event(_: &mut SchemaGenerator) -> Value {
    json!({"type": "object", "required": ["event_id", "conversation"], "properties": {
        "event_id": {"type": "string"}, "conversation": {"type": "string"},
        "sender": {"type": "string"}, "kind": {"type": "string"}, "text": {"type": "string"}}})
}

fn json_rpc(_: &mut SchemaGenerator) -> Value {
    json!({"type": "object", "description": "One JSON-RPC 2.0 message (MCP Streamable HTTP)",
        "required": ["jsonrpc"], "properties": {"jsonrpc": {"const": "2.0"},
            "id": {"type": ["string", "integer"]}, "method": {"type": "string"},
            "params": {"type": "object"}}})
}

use ErrorCode as E;

const JSON: &str = "application/json";

/// Every documented operation (docs/api.md lists the same routes; a test keeps them in step).
pub fn operations() -> Vec<Op> {
    let op = |method, path, summary, status| Op {
        method,
        path,
        summary,
        status,
        request: None,
        response: Some(any as fn(&mut SchemaGenerator) -> Value),
        query: &[],
        errors: &[],
        public: false,
        media: JSON,
    };
    vec![
        Op {
            public: true,
            ..op("get", "/healthz", "Liveness", 200)
        },
        Op {
            public: true,
            errors: &[E::Unavailable],
            ..op(
                "get",
                "/readyz",
                "Ready when PostgreSQL answers; reports Redis",
                200,
            )
        },
        Op {
            response: Some(text),
            media: "application/openmetrics-text",
            ..op(
                "get",
                "/metrics",
                "OpenMetrics (platform admin token only)",
                200,
            )
        },
        Op {
            public: true,
            ..op("get", "/openapi.json", "This document", 200)
        },
        Op {
            request: Some(json_rpc),
            errors: &[E::McpProtocol, E::McpSession],
            ..op(
                "post",
                "/mcp",
                "MCP gateway (Streamable HTTP): one JSON-RPC message; notifications answer 202",
                200,
            )
        },
        Op {
            request: Some(api_event),
            response: Some(any),
            errors: &[
                E::ChannelNotFound,
                E::ChannelBodyTooLarge,
                E::ChannelMalformed,
                E::ChannelSenderNotAllowed,
            ],
            ..op(
                "post",
                "/v1/platform/conversations/{channel}/events",
                "Post an event to an API channel of the active Channel contract (a run per new event_id)",
                202,
            )
        },
        Op {
            request: Some(any),
            response: Some(any),
            errors: &[
                E::ChannelNotFound,
                E::ChannelSignatureMissing,
                E::ChannelSignatureInvalid,
                E::ChannelTimestampStale,
                E::ChannelBodyTooLarge,
                E::ChannelMalformed,
                E::ChannelForwardFailed,
            ],
            // Authenticated by the provider's signature (verified before the body is parsed),
            // not by a bearer credential.
            public: true,
            ..op(
                "post",
                "/v1/webhooks/{project}/{channel}",
                "Provider webhook (Telegram, LINE, Slack), served by the channel hub (awooop-channels)",
                200,
            )
        },
        Op {
            request: Some(s::<CreateRun>),
            response: Some(s::<RunAccepted>),
            errors: &[
                E::RunAgentInactive,
                E::RunInputTooLarge,
                E::RunBadTraceparent,
                E::RunIdempotencyKeyInvalid,
                E::RunIdempotencyConflict,
                E::RunModeNotAllowed,
            ],
            ..op(
                "post",
                "/v1/platform/runs",
                "Start a run (Idempotency-Key and traceparent headers honoured)",
                202,
            )
        },
        Op {
            response: Some(s::<RunPage>),
            query: &[
                ("state", "string"),
                ("agent", "string"),
                ("limit", "integer"),
                ("cursor", "string"),
            ],
            ..op("get", "/v1/platform/runs", "List runs", 200)
        },
        Op {
            response: Some(s::<RunDetail>),
            errors: &[E::RunNotFound],
            ..op(
                "get",
                "/v1/platform/runs/{id}",
                "A run with its steps and timings",
                200,
            )
        },
        Op {
            response: Some(s::<RunView>),
            errors: &[E::RunNotFound, E::RunIllegalTransition],
            ..op(
                "post",
                "/v1/platform/runs/{id}/cancel",
                "Cancel an unfinished run",
                200,
            )
        },
        Op {
            response: Some(s::<awooop_api::RunEvent>),
            errors: &[E::RunNotFound, E::EventsBadCursor],
            media: "text/event-stream",
            ..op(
                "get",
                "/v1/platform/runs/{id}/events",
                "Server-Sent Events of a run's progress (each data: one RunEvent; id: its seq; resume with Last-Event-ID)",
                200,
            )
        },
        Op {
            request: Some(run_approval),
            response: Some(s::<RunView>),
            errors: &[E::RunNotFound, E::RunIllegalTransition],
            ..op(
                "post",
                "/v1/platform/runs/{id}/approval",
                "Approve or reject a run waiting for approval",
                200,
            )
        },
        Op {
            errors: &[E::RunNotFound],
            ..op(
                "get",
                "/v1/platform/runs/{id}/timeline",
                "A run's timeline under its trace id: state changes, steps, model calls, tool calls, approvals, messages",
                200,
            )
        },
        op(
            "get",
            "/v1/platform/gateway",
            "The active gateway's tools by provider with risk and grants; recent calls; denials by code",
            200,
        ),
        op(
            "get",
            "/v1/platform/budgets",
            "Budget ledger (spend against limits), model breakers, recent reservations",
            200,
        ),
        op(
            "get",
            "/v1/platform/channels",
            "Recent channel events and deliveries",
            200,
        ),
        op(
            "get",
            "/v1/control/contracts",
            "Every contract with its latest and active revision and the approvals still outstanding",
            200,
        ),
        Op {
            response: Some(s::<super::approvals::ApprovalList>),
            query: &[("state", "string"), ("limit", "integer")],
            ..op(
                "get",
                "/v1/platform/approvals",
                "List approval requests (newest first; ?state=pending|approved|rejected|expired)",
                200,
            )
        },
        Op {
            response: Some(s::<ApprovalView>),
            errors: &[E::ApprovalNotFound],
            ..op(
                "get",
                "/v1/platform/approvals/{id}",
                "One approval request with its decisions",
                200,
            )
        },
        Op {
            request: Some(s::<super::approvals::DecisionRequest>),
            response: Some(s::<DecisionResult>),
            errors: &[
                E::ApprovalNotFound,
                E::ApprovalNotEligible,
                E::ApprovalAlreadyDecided,
                E::ApprovalUnavailable,
            ],
            ..op(
                "post",
                "/v1/platform/approvals/{id}/decisions",
                "Approve or reject an approval request (approver role; M-of-N; one reject rejects)",
                200,
            )
        },
        Op {
            response: Some(array),
            ..op("get", "/v1/control/projects", "List projects (admin)", 200)
        },
        Op {
            request: Some(s::<NewProject>),
            errors: &[E::ProjectExists, E::ProjectInvalid],
            ..op(
                "post",
                "/v1/control/projects",
                "Create a project (admin)",
                201,
            )
        },
        Op {
            request: Some(new_api_key),
            errors: &[E::ProjectNotFound, E::ProjectInvalid],
            ..op(
                "post",
                "/v1/control/projects/{project}/api-keys",
                "Mint an API key (admin; shown once)",
                201,
            )
        },
        Op {
            response: None,
            errors: &[E::ContractNotFound],
            ..op(
                "post",
                "/v1/control/api-keys/{id}/revoke",
                "Revoke an API key (admin)",
                204,
            )
        },
        Op {
            errors: &[E::ProjectNotFound],
            ..op("get", "/v1/control/project", "The caller's project", 200)
        },
        Op {
            request: Some(register_key),
            errors: &[E::ContractSigningKey],
            ..op(
                "post",
                "/v1/control/signing-keys",
                "Register a keyring key's fingerprint (admin)",
                201,
            )
        },
        Op {
            response: None,
            errors: &[E::ContractSigningKey, E::ContractNotFound],
            ..op(
                "post",
                "/v1/control/signing-keys/{id}/revoke",
                "Revoke a signing key (admin)",
                204,
            )
        },
        Op {
            request: Some(put_artifact),
            errors: &[E::ArtifactInvalid],
            ..op(
                "post",
                "/v1/control/artifacts",
                "Register an artifact by content",
                201,
            )
        },
        Op {
            request: Some(validate_req),
            errors: &[E::ContractUnknownKind, E::SchemaViolation],
            ..op(
                "post",
                "/v1/control/contracts/validate",
                "Validate a contract body (422 with the violations when invalid)",
                200,
            )
        },
        Op {
            response: Some(array),
            ..op("get", "/v1/control/drafts", "List drafts", 200)
        },
        Op {
            request: Some(new_draft),
            errors: &[
                E::ContractUnknownKind,
                E::SchemaViolation,
                E::ContractBadHash,
                E::ContractSemantic,
            ],
            ..op("post", "/v1/control/drafts", "Create a draft", 201)
        },
        Op {
            errors: &[E::ContractNotFound],
            ..op(
                "get",
                "/v1/control/drafts/{id}",
                "A draft with its signing message",
                200,
            )
        },
        Op {
            request: Some(update_draft),
            errors: &[
                E::ContractNotFound,
                E::SchemaViolation,
                E::ContractBadHash,
                E::ContractSemantic,
            ],
            ..op(
                "put",
                "/v1/control/drafts/{id}",
                "Replace a draft's body",
                200,
            )
        },
        Op {
            response: None,
            errors: &[E::ContractNotFound],
            ..op("delete", "/v1/control/drafts/{id}", "Delete a draft", 204)
        },
        Op {
            request: Some(s::<PublishRequest>),
            errors: &[
                E::ContractNotFound,
                E::ContractBadSignature,
                E::ContractSignatureReplay,
                E::ContractSigningKey,
                E::ContractRevisionConflict,
                E::ContractArtifactMissing,
            ],
            ..op(
                "post",
                "/v1/control/drafts/{id}/publish",
                "Publish a signed draft",
                201,
            )
        },
        Op {
            errors: &[E::ContractNotFound],
            ..op(
                "get",
                "/v1/control/revisions/{id}",
                "A published revision",
                200,
            )
        },
        Op {
            errors: &[
                E::ContractNotFound,
                E::ContractDuplicateApproval,
                E::ContractNotPublished,
                E::ContractApproverNotAllowed,
            ],
            ..op(
                "post",
                "/v1/control/revisions/{id}/approvals",
                "Approve a published revision",
                201,
            )
        },
        Op {
            errors: &[
                E::ContractNotFound,
                E::ContractInsufficientApprovals,
                E::ContractAlreadyActive,
                E::ContractNotPublished,
            ],
            ..op(
                "post",
                "/v1/control/revisions/{id}/activate",
                "Activate (or roll back to) a revision",
                200,
            )
        },
        Op {
            response: Some(array),
            ..op("get", "/v1/control/active", "All active pointers", 200)
        },
        Op {
            errors: &[E::ContractUnknownKind, E::ContractNotFound],
            ..op(
                "get",
                "/v1/control/active/{kind}/{name}",
                "The active revision of a contract",
                200,
            )
        },
        Op {
            errors: &[E::ContractUnknownKind, E::ContractNotFound],
            ..op(
                "get",
                "/v1/control/contracts/{kind}/{name}/history",
                "Revisions and activations",
                200,
            )
        },
        Op {
            errors: &[E::ContractUnknownKind, E::ContractNotFound],
            ..op(
                "get",
                "/v1/control/contracts/{kind}/{name}/revisions/{n}",
                "Revision n of a contract",
                200,
            )
        },
        Op {
            query: &[("from", "integer"), ("to", "integer")],
            errors: &[
                E::ContractUnknownKind,
                E::ContractNotFound,
                E::ContractDiffTooLarge,
            ],
            ..op(
                "get",
                "/v1/control/contracts/{kind}/{name}/diff",
                "Unified diff of two revisions ({\"diff\": text})",
                200,
            )
        },
        Op {
            ..op(
                "get",
                "/v1/control/migration",
                "Migration mode and history",
                200,
            )
        },
        Op {
            request: Some(set_mode),
            errors: &[E::MigrationIllegalStep, E::MigrationReasonRequired],
            ..op(
                "post",
                "/v1/control/migration",
                "Change migration mode",
                200,
            )
        },
        Op {
            response: Some(array),
            query: &[("limit", "integer")],
            ..op("get", "/v1/control/audit", "Newest audit rows", 200)
        },
    ]
}

/// The whole document.
/// Replace the boolean subschema `true` (schemars' "any JSON value", e.g. for a
/// `serde_json::Value` field) by its equivalent `{}`: JSON Schema 2020-12 allows both, but
/// common OpenAPI client generators (openapi-python-client among them) accept only objects.
fn no_boolean_subschemas(v: &mut Value) {
    match v {
        Value::Object(m) => {
            for (k, child) in m.iter_mut() {
                let holds_schemas = matches!(
                    k.as_str(),
                    "properties" | "$defs" | "patternProperties" | "schemas"
                );
                if holds_schemas && let Value::Object(props) = child {
                    for p in props.values_mut() {
                        if *p == Value::Bool(true) {
                            *p = json!({});
                        }
                    }
                }
                if matches!(k.as_str(), "items" | "additionalProperties" | "schema")
                    && *child == Value::Bool(true)
                {
                    *child = json!({});
                }
                no_boolean_subschemas(child);
            }
        }
        Value::Array(a) => a.iter_mut().for_each(no_boolean_subschemas),
        _ => {}
    }
}

/// A stable operation id from method and path (`get /v1/platform/runs/{id}` →
/// `get_v1_platform_runs_id`): client generators name their functions after it.
pub fn operation_id(method: &str, path: &str) -> String {
    let mut id = method.to_string();
    for seg in path.split('/').filter(|s| !s.is_empty()) {
        id.push('_');
        id.extend(
            seg.trim_matches(|c| c == '{' || c == '}')
                .chars()
                .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }),
        );
    }
    id
}

pub fn document() -> Value {
    let mut generator = SchemaSettings::draft2020_12()
        .with(|s| s.definitions_path = "/components/schemas/".into())
        .into_generator();
    let error = s::<ErrorBody>(&mut generator);
    let mut paths = Map::new();
    for op in operations() {
        let mut responses = Map::new();
        let mut ok = match op.response {
            Some(f) => {
                json!({"description": "OK", "content": {op.media: {"schema": f(&mut generator)}}})
            }
            None => json!({"description": "No content"}),
        };
        if op.path == "/mcp" {
            // The trace the call ran under: its audit row's `trace_id` (docs/api.md).
            ok["headers"] = json!({"X-Awooop-Trace-Id": {
                "description": "Trace id of the call (its mcp_call_audit row's trace_id)",
                "schema": {"type": "string", "pattern": "^[0-9a-f]{32}$"}
            }});
        }
        responses.insert(op.status.to_string(), ok);
        if op.path == "/mcp" {
            responses.insert(
                "202".into(),
                json!({"description": "A notification or a client response was accepted"}),
            );
        }
        let mut by_status: std::collections::BTreeMap<u16, Vec<&str>> = Default::default();
        for e in op.all_errors() {
            by_status
                .entry(e.http_status())
                .or_default()
                .push(e.as_str());
        }
        for (status, codes) in by_status {
            responses.insert(
                status.to_string(),
                json!({"description": format!("Error codes: {}", codes.join(", ")), "content": {"application/json": {"schema": error}}}),
            );
        }
        let mut operation = json!({"operationId": operation_id(op.method, op.path),
            "summary": op.summary, "responses": responses});
        let mut params: Vec<Value> = op
            .path
            .split('/')
            .filter_map(|seg| seg.strip_prefix('{').and_then(|x| x.strip_suffix('}')))
            .map(|name| json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}}))
            .collect();
        params.extend(op.query.iter().map(|(name, ty)| {
            json!({"name": name, "in": "query", "required": false, "schema": {"type": ty}})
        }));
        if !params.is_empty() {
            operation["parameters"] = Value::Array(params);
        }
        if let Some(f) = op.request {
            operation["requestBody"] = json!({"required": true, "content": {"application/json": {"schema": f(&mut generator)}}});
        }
        if op.public {
            operation["security"] = json!([]);
        }
        paths
            .entry(op.path.to_string())
            .or_insert_with(|| json!({}))
            .as_object_mut()
            .expect("path item is an object")
            .insert(op.method.to_string(), operation);
    }
    let mut schemas = Value::Object(generator.take_definitions(true).into_iter().collect());
    let mut paths = Value::Object(paths);
    no_boolean_subschemas(&mut schemas);
    no_boolean_subschemas(&mut paths);
    json!({
        "openapi": "3.1.0",
        "info": {"title": "AwoooP", "version": env!("CARGO_PKG_VERSION"),
                 "description": "Multi-tenant agent platform: control plane and runtime APIs."},
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                "description": "A per-project API key (awk.…) or the platform admin token"}}
        },
        "security": [{"bearer": []}]
    })
}
