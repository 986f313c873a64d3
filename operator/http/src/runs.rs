//! `/v1/platform/runs`: create (202), get, list with cursor, cancel, approve/reject.

use axum::Json;
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use serde::Deserialize;
use uuid::Uuid;

use super::AppState;
use super::extract::{ApiJson, Read, Tenant, Write};
use awooop_core::error::{Error, ErrorCode, Result};
use awooop_runtime::{CreateRun, ListQuery, RunService};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/runs", post(create).get(list))
        .route("/runs/{id}", get(get_run))
        .route("/runs/{id}/cancel", post(cancel))
        .route("/runs/{id}/approval", post(approval))
}

fn run_id(s: &str) -> Result<Uuid> {
    // Anything that is not a run id of this project is simply not found.
    Uuid::parse_str(s).map_err(|_| Error::new(ErrorCode::RunNotFound, "run not found"))
}

fn header<'a>(h: &'a HeaderMap, name: &str) -> Result<Option<&'a str>> {
    match h.get(name) {
        None => Ok(None),
        Some(v) => v.to_str().map(Some).map_err(|_| {
            Error::new(
                ErrorCode::ReqInvalidParam,
                format!("{name} header is not valid text"),
            )
        }),
    }
}

async fn create(
    State(s): State<AppState>,
    t: Tenant<Write>,
    headers: HeaderMap,
    ApiJson(req): ApiJson<CreateRun>,
) -> Result<impl IntoResponse> {
    // A runner key starts runs only for the agents it is bound to.
    t.require_agent(&req.agent)?;
    let idem = header(&headers, "idempotency-key")?;
    let tp = header(&headers, "traceparent")?;
    let runs = RunService::new(s.control.clone());
    let accepted = t.run(runs.create(&t.actor, req, idem, tp)).await?;
    let mut resp_headers = HeaderMap::new();
    if let Ok(v) = accepted.traceparent.parse() {
        resp_headers.insert("traceparent", v);
    }
    Ok((StatusCode::ACCEPTED, resp_headers, Json(accepted)))
}

async fn get_run(
    State(s): State<AppState>,
    t: Tenant<Read>,
    Path(id): Path<String>,
) -> Result<impl IntoResponse> {
    let runs = RunService::new(s.control.clone());
    Ok(Json(t.run(runs.get(run_id(&id)?)).await?))
}

async fn list(
    State(s): State<AppState>,
    t: Tenant<Read>,
    q: std::result::Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<impl IntoResponse> {
    let Query(q) = q.map_err(|_| {
        Error::new(
            ErrorCode::ReqInvalidParam,
            "expected ?state=&agent=&limit=&cursor=",
        )
    })?;
    let runs = RunService::new(s.control.clone());
    Ok(Json(t.run(runs.list(q)).await?))
}

async fn cancel(
    State(s): State<AppState>,
    t: Tenant<Write>,
    Path(id): Path<String>,
) -> Result<impl IntoResponse> {
    let runs = RunService::new(s.control.clone());
    Ok(Json(t.run(runs.cancel(&t.actor, run_id(&id)?)).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Approval {
    approved: bool,
}

async fn approval(
    State(s): State<AppState>,
    t: Tenant<Write>,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<Approval>,
) -> Result<impl IntoResponse> {
    let runs = RunService::new(s.control.clone());
    Ok(Json(
        t.run(runs.approve(&t.actor, run_id(&id)?, req.approved))
            .await?,
    ))
}
