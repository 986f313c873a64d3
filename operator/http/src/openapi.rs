//! The OpenAPI 3.1 document, generated from the code: request and response schemas come from
//! the Rust types (schemars, JSON Schema 2020-12 as OpenAPI 3.1 uses), error codes from
//! [`ErrorCode`], and the operation table below sits next to the routers it describes (a test
//! calls every documented path and fails on an undocumented 404).

use schemars::JsonSchema;
use schemars::generate::{SchemaGenerator, SchemaSettings};
use serde_json::{Map, Value, json};

use awooop_control::{NewProject, PublishRequest};
use awooop_core::error::ErrorCode;
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
    pub errors: &'static [ErrorCode],
}

fn s<T: JsonSchema>(g: &mut SchemaGenerator) -> Value {
    g.subschema_for::<T>().to_value()
}

fn any(_: &mut SchemaGenerator) -> Value {
    json!({"type": "object"})
}

use ErrorCode as E;

/// Every documented operation.
pub fn operations() -> Vec<Op> {
    let auth: &[ErrorCode] = &[E::AuthMissing, E::AuthInvalid, E::AuthForbidden];
    let _ = auth;
    vec![
        Op {
            method: "post",
            path: "/v1/platform/runs",
            summary: "Start a run (Idempotency-Key and traceparent headers honoured)",
            status: 202,
            request: Some(s::<CreateRun>),
            response: Some(s::<RunAccepted>),
            errors: &[
                E::ReqMalformed,
                E::ReqTooLarge,
                E::RunAgentInactive,
                E::RunInputTooLarge,
                E::RunBadTraceparent,
                E::RunIdempotencyKeyInvalid,
                E::RunIdempotencyConflict,
                E::RunModeNotAllowed,
                E::AuthMissing,
                E::AuthInvalid,
                E::AuthForbidden,
            ],
        },
        Op {
            method: "get",
            path: "/v1/platform/runs",
            summary: "List runs (?state=&agent=&limit=&cursor=)",
            status: 200,
            request: None,
            response: Some(s::<RunPage>),
            errors: &[E::ReqInvalidParam, E::AuthMissing, E::AuthInvalid],
        },
        Op {
            method: "get",
            path: "/v1/platform/runs/{id}",
            summary: "A run with its steps and timings",
            status: 200,
            request: None,
            response: Some(s::<RunDetail>),
            errors: &[E::RunNotFound, E::AuthMissing, E::AuthInvalid],
        },
        Op {
            method: "post",
            path: "/v1/platform/runs/{id}/cancel",
            summary: "Cancel an unfinished run",
            status: 200,
            request: None,
            response: Some(s::<RunView>),
            errors: &[E::RunNotFound, E::RunIllegalTransition],
        },
        Op {
            method: "post",
            path: "/v1/platform/runs/{id}/approval",
            summary: "Approve or reject a run waiting for approval ({\"approved\": bool})",
            status: 200,
            request: Some(any),
            response: Some(s::<RunView>),
            errors: &[E::RunNotFound, E::RunIllegalTransition],
        },
        Op {
            method: "get",
            path: "/v1/control/projects",
            summary: "List projects (admin)",
            status: 200,
            request: None,
            response: Some(any),
            errors: &[E::AuthForbidden],
        },
        Op {
            method: "post",
            path: "/v1/control/projects",
            summary: "Create a project (admin)",
            status: 201,
            request: Some(s::<NewProject>),
            response: Some(any),
            errors: &[E::ProjectExists, E::ProjectInvalid, E::AuthForbidden],
        },
        Op {
            method: "post",
            path: "/v1/control/projects/{project}/api-keys",
            summary: "Mint an API key (admin; shown once)",
            status: 201,
            request: Some(any),
            response: Some(any),
            errors: &[E::AuthForbidden, E::ReqInvalidParam],
        },
        Op {
            method: "get",
            path: "/v1/control/project",
            summary: "The caller's project",
            status: 200,
            request: None,
            response: Some(any),
            errors: &[E::ProjectNotFound],
        },
        Op {
            method: "post",
            path: "/v1/control/signing-keys",
            summary: "Register a keyring key's fingerprint (admin)",
            status: 201,
            request: Some(any),
            response: Some(any),
            errors: &[E::ContractSigningKey],
        },
        Op {
            method: "post",
            path: "/v1/control/artifacts",
            summary: "Register an artifact by content",
            status: 201,
            request: Some(any),
            response: Some(any),
            errors: &[E::ArtifactInvalid],
        },
        Op {
            method: "post",
            path: "/v1/control/contracts/validate",
            summary: "Validate a contract body",
            status: 200,
            request: Some(any),
            response: Some(any),
            errors: &[E::ContractUnknownKind],
        },
        Op {
            method: "get",
            path: "/v1/control/drafts",
            summary: "List drafts",
            status: 200,
            request: None,
            response: Some(any),
            errors: &[],
        },
        Op {
            method: "post",
            path: "/v1/control/drafts",
            summary: "Create a draft",
            status: 201,
            request: Some(any),
            response: Some(any),
            errors: &[E::SchemaViolation, E::ContractBadHash, E::ContractSemantic],
        },
        Op {
            method: "get",
            path: "/v1/control/drafts/{id}",
            summary: "A draft with its signing message",
            status: 200,
            request: None,
            response: Some(any),
            errors: &[E::ContractNotFound],
        },
        Op {
            method: "post",
            path: "/v1/control/drafts/{id}/publish",
            summary: "Publish a signed draft",
            status: 201,
            request: Some(s::<PublishRequest>),
            response: Some(any),
            errors: &[
                E::ContractBadSignature,
                E::ContractSignatureReplay,
                E::ContractSigningKey,
                E::ContractRevisionConflict,
                E::ContractArtifactMissing,
            ],
        },
        Op {
            method: "post",
            path: "/v1/control/revisions/{id}/approvals",
            summary: "Approve a published revision",
            status: 201,
            request: None,
            response: Some(any),
            errors: &[
                E::ContractDuplicateApproval,
                E::ContractNotPublished,
                E::ContractApproverNotAllowed,
            ],
        },
        Op {
            method: "post",
            path: "/v1/control/revisions/{id}/activate",
            summary: "Activate (or roll back to) a revision",
            status: 200,
            request: None,
            response: Some(any),
            errors: &[
                E::ContractInsufficientApprovals,
                E::ContractAlreadyActive,
                E::ContractNotPublished,
            ],
        },
        Op {
            method: "get",
            path: "/v1/control/active/{kind}/{name}",
            summary: "The active revision of a contract",
            status: 200,
            request: None,
            response: Some(any),
            errors: &[E::ContractNotFound],
        },
        Op {
            method: "get",
            path: "/v1/control/contracts/{kind}/{name}/history",
            summary: "Revisions and activations",
            status: 200,
            request: None,
            response: Some(any),
            errors: &[E::ContractNotFound],
        },
        Op {
            method: "get",
            path: "/v1/control/migration",
            summary: "Migration mode and history",
            status: 200,
            request: None,
            response: Some(any),
            errors: &[],
        },
        Op {
            method: "post",
            path: "/v1/control/migration",
            summary: "Change migration mode",
            status: 200,
            request: Some(any),
            response: Some(any),
            errors: &[E::MigrationIllegalStep, E::MigrationReasonRequired],
        },
        Op {
            method: "get",
            path: "/v1/control/audit",
            summary: "Newest audit rows",
            status: 200,
            request: None,
            response: Some(any),
            errors: &[],
        },
    ]
}

/// The whole document.
pub fn document() -> Value {
    let mut generator = SchemaSettings::draft2020_12()
        .with(|s| s.definitions_path = "/components/schemas/".into())
        .into_generator();
    let error = s::<ErrorBody>(&mut generator);
    let mut paths = Map::new();
    for op in operations() {
        let mut responses = Map::new();
        let ok = op.response.map(|f| f(&mut generator)).unwrap_or(json!({}));
        responses.insert(
            op.status.to_string(),
            json!({"description": "OK", "content": {"application/json": {"schema": ok}}}),
        );
        let mut by_status: std::collections::BTreeMap<u16, Vec<&str>> = Default::default();
        for e in op.errors {
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
        let mut operation = json!({"summary": op.summary, "responses": responses});
        let params: Vec<Value> = op
            .path
            .split('/')
            .filter_map(|seg| seg.strip_prefix('{').and_then(|x| x.strip_suffix('}')))
            .map(|name| json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}}))
            .collect();
        if !params.is_empty() {
            operation["parameters"] = Value::Array(params);
        }
        if let Some(f) = op.request {
            operation["requestBody"] = json!({"required": true, "content": {"application/json": {"schema": f(&mut generator)}}});
        }
        paths
            .entry(op.path.to_string())
            .or_insert_with(|| json!({}))
            .as_object_mut()
            .expect("path item is an object")
            .insert(op.method.to_string(), operation);
    }
    let schemas: Map<String, Value> = generator.take_definitions(true).into_iter().collect();
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
