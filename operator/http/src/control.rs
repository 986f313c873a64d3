//! `/v1/control/...`: the control plane over HTTP. Handlers are thin: the extractor
//! ([`Tenant`], [`Platform`]) authenticates and authorises, [`Tenant::run`] enters the caller's
//! tenant scope, the handler calls the shared service and serialises.

use axum::Json;
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use base64::Engine;
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

use super::AppState;
use super::extract::{Admin, ApiJson, Caller, Platform, Read, Tenant, Write};
use awooop_contracts::ContractKind;
use awooop_control::{MigrationMode, NewProject, PublishRequest};
use awooop_core::error::{Error, ErrorCode, Result};
use awooop_store::auth::Role;
use awooop_store::tenancy::ProjectId;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/projects", get(list_projects).post(create_project))
        .route("/projects/{project}/api-keys", post(create_api_key))
        .route("/project", get(project))
        .route("/signing-keys", post(register_signing_key))
        .route("/signing-keys/{id}/revoke", post(revoke_signing_key))
        .route("/api-keys/{id}/revoke", post(revoke_api_key))
        .route("/artifacts", post(put_artifact))
        .route("/contracts/validate", post(validate))
        .route("/drafts", get(list_drafts).post(create_draft))
        .route(
            "/drafts/{id}",
            get(get_draft).put(update_draft).delete(delete_draft),
        )
        .route("/drafts/{id}/publish", post(publish))
        .route("/revisions/{id}", get(revision_by_id))
        .route("/revisions/{id}/approvals", post(approve))
        .route("/revisions/{id}/activate", post(activate))
        .route("/active", get(active_list))
        .route("/active/{kind}/{name}", get(active))
        .route("/contracts/{kind}/{name}/history", get(history))
        .route("/contracts/{kind}/{name}/revisions/{n}", get(revision))
        .route("/contracts/{kind}/{name}/diff", get(diff))
        .route("/migration", get(migration).post(set_mode))
        .route("/audit", get(audit))
}

fn uuid(s: &str) -> Result<Uuid> {
    Uuid::parse_str(s).map_err(|_| Error::new(ErrorCode::ReqInvalidParam, "id must be a UUID"))
}

fn kind(s: &str) -> Result<ContractKind> {
    ContractKind::parse(s)
}

async fn list_projects(State(s): State<AppState>, p: Platform) -> Result<impl IntoResponse> {
    Ok(Json(s.control.list_projects(&p.actor).await?))
}

async fn create_project(
    State(s): State<AppState>,
    p: Platform,
    ApiJson(req): ApiJson<NewProject>,
) -> Result<impl IntoResponse> {
    let p = s.control.create_project(&p.actor, req).await?;
    Ok((StatusCode::CREATED, Json(p)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewApiKey {
    principal: String,
    roles: Vec<String>,
    /// Runner keys only: the agents and environments the key may act for (`*`: any).
    #[serde(default)]
    agents: Option<Vec<String>>,
    #[serde(default)]
    environments: Option<Vec<String>>,
}

async fn create_api_key(
    State(s): State<AppState>,
    p: Platform,
    Path(project): Path<String>,
    ApiJson(req): ApiJson<NewApiKey>,
) -> Result<impl IntoResponse> {
    let project = ProjectId::parse(&project)?;
    let roles = req
        .roles
        .iter()
        .map(|r| Role::parse(r))
        .collect::<Result<Vec<_>>>()?;
    let binding = match (req.agents, req.environments) {
        (None, None) => None,
        (agents, environments) => Some(awooop_store::auth::KeyBinding {
            agents: agents.unwrap_or_default(),
            environments: environments.unwrap_or_default(),
        }),
    };
    let k = s
        .control
        .create_api_key_bound(&p.actor, &project, &req.principal, roles, binding)
        .await?;
    Ok((StatusCode::CREATED, Json(k)))
}

async fn project(State(s): State<AppState>, t: Tenant<Read>) -> Result<impl IntoResponse> {
    Ok(Json(t.run(s.control.project()).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RegisterKey {
    key_id: String,
}

async fn register_signing_key(
    State(s): State<AppState>,
    t: Tenant<Admin>,
    ApiJson(req): ApiJson<RegisterKey>,
) -> Result<impl IntoResponse> {
    let v = t
        .run(s.control.register_signing_key(&t.actor, &req.key_id))
        .await?;
    Ok((StatusCode::CREATED, Json(v)))
}

async fn revoke_api_key(
    State(s): State<AppState>,
    t: Tenant<Admin>,
    Path(key_id): Path<String>,
) -> Result<impl IntoResponse> {
    t.run(s.control.revoke_api_key(&t.actor, &key_id)).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn revoke_signing_key(
    State(s): State<AppState>,
    t: Tenant<Admin>,
    Path(key_id): Path<String>,
) -> Result<impl IntoResponse> {
    t.run(s.control.revoke_signing_key(&t.actor, &key_id))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PutArtifact {
    #[serde(rename = "ref")]
    reference: String,
    kind: String,
    #[serde(default = "octet")]
    media_type: String,
    content_base64: String,
}

fn octet() -> String {
    "application/octet-stream".into()
}

async fn put_artifact(
    State(s): State<AppState>,
    t: Tenant<Write>,
    ApiJson(req): ApiJson<PutArtifact>,
) -> Result<impl IntoResponse> {
    let content = base64::engine::general_purpose::STANDARD
        .decode(req.content_base64.as_bytes())
        .map_err(|_| {
            Error::new(
                ErrorCode::ArtifactInvalid,
                "content_base64 is not valid base64",
            )
        })?;
    let v = t
        .run(s.control.put_artifact(
            &t.actor,
            &req.reference,
            &req.kind,
            &req.media_type,
            &content,
        ))
        .await?;
    Ok((StatusCode::CREATED, Json(v)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ValidateReq {
    kind: String,
    body: Value,
}

/// Validation is pure and needs no tenant; it still needs a credential.
async fn validate(
    State(s): State<AppState>,
    _c: Caller,
    ApiJson(req): ApiJson<ValidateReq>,
) -> Result<impl IntoResponse> {
    let report = s.control.validate(kind(&req.kind)?, &req.body);
    let status = if report.valid {
        StatusCode::OK
    } else {
        StatusCode::UNPROCESSABLE_ENTITY
    };
    Ok((status, Json(report)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewDraft {
    kind: String,
    name: String,
    body: Value,
}

async fn create_draft(
    State(s): State<AppState>,
    t: Tenant<Write>,
    ApiJson(req): ApiJson<NewDraft>,
) -> Result<impl IntoResponse> {
    let k = kind(&req.kind)?;
    let d = t
        .run(s.control.create_draft(&t.actor, k, &req.name, req.body))
        .await?;
    Ok((StatusCode::CREATED, Json(d)))
}

async fn list_drafts(State(s): State<AppState>, t: Tenant<Read>) -> Result<impl IntoResponse> {
    Ok(Json(t.run(s.control.list_drafts()).await?))
}

async fn get_draft(
    State(s): State<AppState>,
    t: Tenant<Read>,
    Path(id): Path<String>,
) -> Result<impl IntoResponse> {
    Ok(Json(t.run(s.control.get_draft(uuid(&id)?)).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdateDraft {
    body: Value,
}

async fn update_draft(
    State(s): State<AppState>,
    t: Tenant<Write>,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<UpdateDraft>,
) -> Result<impl IntoResponse> {
    let id = uuid(&id)?;
    Ok(Json(
        t.run(s.control.update_draft(&t.actor, id, req.body))
            .await?,
    ))
}

async fn delete_draft(
    State(s): State<AppState>,
    t: Tenant<Write>,
    Path(id): Path<String>,
) -> Result<impl IntoResponse> {
    let id = uuid(&id)?;
    t.run(s.control.delete_draft(&t.actor, id)).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn publish(
    State(s): State<AppState>,
    t: Tenant<Write>,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<PublishRequest>,
) -> Result<impl IntoResponse> {
    let id = uuid(&id)?;
    let r = t.run(s.control.publish(&t.actor, id, req)).await?;
    Ok((StatusCode::CREATED, Json(r)))
}

async fn revision_by_id(
    State(s): State<AppState>,
    t: Tenant<Read>,
    Path(id): Path<String>,
) -> Result<impl IntoResponse> {
    Ok(Json(t.run(s.control.revision_by_id(uuid(&id)?)).await?))
}

async fn approve(
    State(s): State<AppState>,
    t: Tenant<Write>,
    Path(id): Path<String>,
) -> Result<impl IntoResponse> {
    let id = uuid(&id)?;
    let a = t.run(s.control.approve(&t.actor, id)).await?;
    Ok((StatusCode::CREATED, Json(a)))
}

async fn activate(
    State(s): State<AppState>,
    t: Tenant<Write>,
    Path(id): Path<String>,
) -> Result<impl IntoResponse> {
    let id = uuid(&id)?;
    Ok(Json(t.run(s.control.activate(&t.actor, id)).await?))
}

async fn active_list(State(s): State<AppState>, t: Tenant<Read>) -> Result<impl IntoResponse> {
    Ok(Json(t.run(s.control.active_list()).await?))
}

async fn active(
    State(s): State<AppState>,
    t: Tenant<Read>,
    Path((k, name)): Path<(String, String)>,
) -> Result<impl IntoResponse> {
    let k = kind(&k)?;
    Ok(Json(t.run(s.control.active(k, &name)).await?))
}

async fn history(
    State(s): State<AppState>,
    t: Tenant<Read>,
    Path((k, name)): Path<(String, String)>,
) -> Result<impl IntoResponse> {
    let k = kind(&k)?;
    Ok(Json(t.run(s.control.history(k, &name)).await?))
}

async fn revision(
    State(s): State<AppState>,
    t: Tenant<Read>,
    Path((k, name, n)): Path<(String, String, String)>,
) -> Result<impl IntoResponse> {
    let k = kind(&k)?;
    let n: i32 = n
        .parse()
        .map_err(|_| Error::new(ErrorCode::ReqInvalidParam, "revision must be an integer"))?;
    Ok(Json(t.run(s.control.revision(k, &name, n)).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DiffQuery {
    from: i32,
    to: i32,
}

async fn diff(
    State(s): State<AppState>,
    t: Tenant<Read>,
    Path((k, name)): Path<(String, String)>,
    q: std::result::Result<Query<DiffQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<impl IntoResponse> {
    let Query(q) =
        q.map_err(|_| Error::new(ErrorCode::ReqInvalidParam, "expected ?from=N&to=M"))?;
    let k = kind(&k)?;
    let d = t.run(s.control.diff(k, &name, q.from, q.to)).await?;
    Ok(Json(json!({"diff": d})))
}

async fn migration(State(s): State<AppState>, t: Tenant<Read>) -> Result<impl IntoResponse> {
    Ok(Json(t.run(s.control.migration()).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SetMode {
    mode: String,
    #[serde(default)]
    force: bool,
    #[serde(default)]
    reason: Option<String>,
}

async fn set_mode(
    State(s): State<AppState>,
    t: Tenant<Write>,
    ApiJson(req): ApiJson<SetMode>,
) -> Result<impl IntoResponse> {
    let to = MigrationMode::parse(&req.mode)?;
    Ok(Json(
        t.run(
            s.control
                .set_mode(&t.actor, to, req.force, req.reason.as_deref()),
        )
        .await?,
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AuditQuery {
    #[serde(default = "default_limit")]
    limit: i64,
}

fn default_limit() -> i64 {
    100
}

async fn audit(
    State(s): State<AppState>,
    t: Tenant<Read>,
    q: std::result::Result<Query<AuditQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<impl IntoResponse> {
    let Query(q) = q.map_err(|_| Error::new(ErrorCode::ReqInvalidParam, "expected ?limit=N"))?;
    Ok(Json(t.run(s.control.audit(q.limit)).await?))
}
