//! `/v1/platform/approvals`: list approval requests, decide one (approve/reject with an
//! optional comment). The decision itself is `awooop_runtime::approvals::ApprovalService`;
//! who may decide is [`approver`], the one place that turns a credential into an approver
//! principal (the Project contract's `acl.approvers` is checked by the service).

use axum::Json;
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::AppState;
use super::extract::{Access, ApiJson, Need, Tenant};
use awooop_core::error::{Error, ErrorCode, Result};
use awooop_runtime::approvals::{ApprovalService, ApprovalView, Decision};
use awooop_store::auth::Role;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/approvals", get(list))
        .route("/approvals/{id}", get(get_one))
        .route("/approvals/{id}/decisions", post(decide))
}

/// `GET /v1/platform/approvals` query.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListApprovals {
    /// pending, approved, rejected or expired; all when absent.
    #[serde(default)]
    pub state: Option<String>,
    #[serde(default)]
    pub limit: Option<i64>,
}

/// `GET /v1/platform/approvals` response.
#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct ApprovalList {
    /// Newest first.
    pub approvals: Vec<ApprovalView>,
}

/// `POST /v1/platform/approvals/{id}/decisions` body.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DecisionRequest {
    /// `approve` or `reject`.
    pub decision: Decision,
    /// Why (shown on the run, in the audit log and in the chat; required in spirit for rejects).
    #[serde(default)]
    pub comment: Option<String>,
}

/// Readers and approvers may list and read requests (an approver must see what to decide).
pub struct ReadApprovals;
impl Access for ReadApprovals {
    const NEED: Need = Need::ReadOr(Role::Approver);
}

/// Deciding needs the approver role: an API key bound to its principal, or the admin
/// credential naming a project (the Project contract's `acl.approvers` is checked by the
/// service).
pub struct DecideApprovals;
impl Access for DecideApprovals {
    const NEED: Need = Need::Role(Role::Approver);
}

fn request_id(s: &str) -> Result<Uuid> {
    Uuid::parse_str(s)
        .map_err(|_| Error::new(ErrorCode::ApprovalNotFound, "approval request not found"))
}

fn service(s: &AppState) -> ApprovalService {
    ApprovalService::new(s.control.clone(), s.approvals.clone())
}

async fn list(
    State(s): State<AppState>,
    t: Tenant<ReadApprovals>,
    q: std::result::Result<Query<ListApprovals>, axum::extract::rejection::QueryRejection>,
) -> Result<impl IntoResponse> {
    let Query(q) =
        q.map_err(|_| Error::new(ErrorCode::ReqInvalidParam, "expected ?state=&limit="))?;
    let svc = service(&s);
    let approvals = t
        .run(svc.list(q.state.as_deref(), q.limit.unwrap_or(100)))
        .await?;
    Ok(Json(ApprovalList { approvals }))
}

async fn get_one(
    State(s): State<AppState>,
    t: Tenant<ReadApprovals>,
    Path(id): Path<String>,
) -> Result<impl IntoResponse> {
    let svc = service(&s);
    Ok(Json(t.run(svc.get(request_id(&id)?)).await?))
}

async fn decide(
    State(s): State<AppState>,
    t: Tenant<DecideApprovals>,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<DecisionRequest>,
) -> Result<impl IntoResponse> {
    let svc = service(&s);
    let id = request_id(&id)?;
    let principal = t.actor.principal.clone();
    Ok(Json(
        t.run(svc.decide(&principal, "http", id, req.decision, req.comment.as_deref()))
            .await?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The client's body (`awooop_api::ApprovalDecision`) is what this route accepts: the
    /// route refuses unknown fields, so a drifted field name would be a 422 for every client.
    #[test]
    fn the_shared_decision_body_is_accepted() {
        let body = awooop_api::ApprovalDecision {
            decision: "reject".into(),
            comment: Some("not at peak hours".into()),
        };
        let r: DecisionRequest =
            serde_json::from_value(serde_json::to_value(&body).unwrap()).unwrap();
        assert_eq!(r.comment.as_deref(), Some("not at peak hours"));
        assert!(matches!(r.decision, Decision::Reject));
        // What the client sent before (`reason`) is refused: the field name is the contract.
        let old = serde_json::json!({"decision": "reject", "reason": "not at peak hours"});
        assert!(serde_json::from_value::<DecisionRequest>(old).is_err());
    }
}
