//! The HTTP API (axum). `app(state)` builds the router without a socket so tests drive it with
//! `tower::ServiceExt::oneshot`; `serve` binds it with graceful shutdown.
//!
//! Layers: router (this module) → handlers ([`control`]) → service ([`awooop_control`]) →
//! repository ([`awooop_control::repo`]). Errors become JSON `{code, message, details}` in
//! exactly one place ([`awooop_core::error::Error`]'s `IntoResponse`).

pub mod access_log;
pub mod approvals;
pub mod console;
pub mod control;
pub mod events;
pub mod extract;
pub mod guard;
pub mod health;
pub mod mcp;
pub mod openapi;
pub mod runs;
pub mod views;

use std::net::SocketAddr;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;

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
    /// Mints approval tokens when an approval request reaches its quorum (the gateway's
    /// approval key); `None`: decisions that would reach a quorum fail with `E-APPROVAL-006`.
    pub approvals: Option<std::sync::Arc<dyn awooop_runtime::approvals::TokenMinter>>,
}

/// The HTTP status of an error code (the table lives with the codes in `awooop_core::error`).
pub fn status_of(code: awooop_core::error::ErrorCode) -> StatusCode {
    StatusCode::from_u16(code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

pub fn app(state: AppState) -> Router {
    Router::new()
        .merge(health::Health::of(&state.control).routes())
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi_json))
        .nest("/v1/control", control::router())
        .nest(
            "/v1/platform",
            runs::router()
                .merge(approvals::router())
                .merge(events::router()),
        )
        .route("/v1/control/contracts", get(views::contracts))
        .route("/v1/platform/runs/{id}/timeline", get(views::run_timeline))
        .route("/v1/platform/gateway", get(views::gateway))
        .route("/v1/platform/budgets", get(views::budgets))
        .route("/v1/platform/channels", get(views::channels))
        .merge(console::router())
        .fallback(not_found)
        // A known path with the wrong method gets the platform's JSON error, not axum's bare
        // 405. Registered last: it applies to every route added before it.
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn(guard::reject_nul_in_uri))
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .with_state(state)
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
        awooop_core::error::ErrorCode::ReqNotFound,
        "no such endpoint",
    )
}

async fn method_not_allowed() -> awooop_core::error::Error {
    awooop_core::error::Error::new(
        awooop_core::error::ErrorCode::ReqMethodNotAllowed,
        "this endpoint does not accept this method",
    )
}

/// Bind the API's address. A taken port is the common first-run mistake (a second `awooop
/// up`): the message names the address and what to do instead of the OS's bare "Address
/// already in use".
pub async fn bind(addr: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| bind_error(addr, &e))
}

/// The message for a failed bind of `addr` (pure, so it is tested without a socket).
pub fn bind_error(addr: SocketAddr, e: &std::io::Error) -> anyhow::Error {
    match e.kind() {
        std::io::ErrorKind::AddrInUse => anyhow::anyhow!(
            "cannot listen on {addr}: the address is already in use (is another `awooop up` or \
             `awooop serve` running?); stop it or choose another address with --listen \
             (AWOOOP_LISTEN)"
        ),
        std::io::ErrorKind::PermissionDenied => anyhow::anyhow!(
            "cannot listen on {addr}: permission denied (ports below 1024 need privileges); \
             choose another address with --listen (AWOOOP_LISTEN)"
        ),
        _ => anyhow::anyhow!("cannot listen on {addr}: {e}"),
    }
}

/// Serve until `shutdown` resolves; in-flight requests finish first. Every request gets one
/// access-log line ([`access_log`]).
pub async fn serve(
    addr: SocketAddr,
    router: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    serve_on(bind(addr).await?, router, shutdown).await
}

/// [`serve`] on a listener bound earlier with [`bind`] (`awooop up` binds before it starts
/// anything, so a taken port fails at once).
pub async fn serve_on(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let addr = listener.local_addr()?;
    tracing::info!(%addr, "HTTP API listening");
    axum::serve(nodelay(listener), with_access_log(router))
        .with_graceful_shutdown(shutdown)
        .await?;
    Ok(())
}

/// Accepted connections with Nagle's algorithm off (TCP_NODELAY). axum does not set it: a
/// response or stream chunk written while an earlier segment is unacknowledged would otherwise
/// wait for the client's delayed ACK (up to 40 ms on Linux), e.g. the second event of an SSE
/// stream. Our peers (the MCP fixture, the provider doubles) set it too.
pub fn nodelay(
    listener: tokio::net::TcpListener,
) -> impl axum::serve::Listener<Io = tokio::net::TcpStream, Addr = SocketAddr> {
    use axum::serve::ListenerExt;
    listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "TCP_NODELAY on an accepted connection");
        }
    })
}

/// The router with the per-request log line (what [`serve`] runs; tests use it with
/// `oneshot`).
pub fn with_access_log(router: Router) -> Router {
    router.layer(axum::middleware::from_fn(access_log::access_log))
}

#[cfg(test)]
mod tests {
    use axum::serve::Listener;

    /// What [`serve_on`] accepts has Nagle's algorithm off; a plain listener's socket has it on
    /// (so the check can fail).
    #[tokio::test]
    async fn accepted_connections_disable_nagle() {
        for (tapped, expect) in [(false, false), (true, true)] {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let client = tokio::spawn(tokio::net::TcpStream::connect(addr));
            let io = if tapped {
                Listener::accept(&mut super::nodelay(listener)).await.0
            } else {
                Listener::accept(&mut { listener }).await.0
            };
            assert_eq!(io.nodelay().unwrap(), expect, "tapped: {tapped}");
            drop(client.await.unwrap().unwrap());
        }
    }
}
