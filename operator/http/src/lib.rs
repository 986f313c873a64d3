//! The HTTP API (axum). `app(state)` builds the router without a socket so tests drive it with
//! `tower::ServiceExt::oneshot`; `serve` binds it with graceful shutdown.
//!
//! Layers: router (this module) → handlers ([`control`]) → service ([`awooop_control`]) →
//! repository ([`awooop_control::repo`]). Errors become JSON `{code, message, details}` in
//! exactly one place ([`awooop_core::error::Error`]'s `IntoResponse`).

pub mod control;
pub mod events;
pub mod extract;
pub mod guard;
pub mod mcp;
pub mod openapi;
pub mod runs;

use std::net::SocketAddr;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use serde_json::json;

use awooop_control::ControlPlane;
use awooop_store::auth::AdminToken;

/// Everything handlers need, passed explicitly.
#[derive(Clone)]
pub struct AppState {
    pub control: ControlPlane,
    pub admin: Option<AdminToken>,
    /// Largest accepted request body, in bytes.
    pub max_body_bytes: usize,
    /// The registry `/metrics` serves (shared with the workers of this process).
    pub metrics: std::sync::Arc<awooop_runtime::metrics::Metrics>,
}

/// The HTTP status of an error code (the table lives with the codes in `awooop_core::error`).
pub fn status_of(code: awooop_core::error::ErrorCode) -> StatusCode {
    StatusCode::from_u16(code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

pub fn app(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi_json))
        .nest("/v1/control", control::router())
        .nest("/v1/platform", runs::router().merge(events::router()))
        .fallback(not_found)
        // A known path with the wrong method gets the platform's JSON error, not axum's bare
        // 405. Registered last: it applies to every route added before it.
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn(guard::reject_nul_in_uri))
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .with_state(state)
}

async fn healthz() -> impl IntoResponse {
    axum::Json(json!({"status": "ok"}))
}

/// Ready when PostgreSQL answers. Redis is optional and only reported.
async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    let db_ok = sqlx::query("SELECT 1")
        .execute(state.control.db().pool_for_health())
        .await
        .is_ok();
    let redis = match state.control.coord().ping().await {
        None => "not_configured",
        Some(true) => "ok",
        Some(false) => "unavailable",
    };
    let status = if db_ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        axum::Json(json!({"postgres": if db_ok {"ok"} else {"unavailable"}, "redis": redis})),
    )
}

/// `/metrics` on the API port carries every project's labels (queue depths, budgets, gateway
/// denials), so it needs the platform admin token as a bearer credential; a Prometheus
/// ServiceMonitor sends it from the admin Secret (chart `serviceMonitor`). Project API keys
/// are refused: one tenant must not read another's figures.
async fn metrics(
    State(state): State<AppState>,
    headers: axum::http::HeaderMap,
) -> Result<impl IntoResponse, awooop_core::error::Error> {
    use awooop_core::error::{Error, ErrorCode};
    let token = headers
        .get(axum::http::header::AUTHORIZATION)
        .ok_or_else(|| Error::new(ErrorCode::AuthMissing, "missing Authorization header"))?
        .to_str()
        .ok()
        .and_then(|h| h.strip_prefix("Bearer "))
        .map(str::trim)
        .ok_or_else(|| {
            Error::new(
                ErrorCode::AuthInvalid,
                "expected 'Authorization: Bearer <admin token>'",
            )
        })?;
    if !state.admin.as_ref().is_some_and(|a| a.matches(token)) {
        return Err(Error::new(
            ErrorCode::AuthInvalid,
            "/metrics needs the platform admin token",
        ));
    }
    let body = state
        .metrics
        .render(state.control.db().pool_for_health())
        .await;
    Ok((
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        body,
    ))
}

async fn openapi_json() -> impl IntoResponse {
    axum::Json(openapi::document())
}

async fn not_found() -> awooop_core::error::Error {
    awooop_core::error::Error::new(
        awooop_core::error::ErrorCode::ReqInvalidParam,
        "no such endpoint",
    )
}

async fn method_not_allowed() -> awooop_core::error::Error {
    awooop_core::error::Error::new(
        awooop_core::error::ErrorCode::ReqMethodNotAllowed,
        "this endpoint does not accept this method",
    )
}

/// Serve until `shutdown` resolves; in-flight requests finish first.
pub async fn serve(
    addr: SocketAddr,
    router: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, "HTTP API listening");
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await?;
    Ok(())
}
