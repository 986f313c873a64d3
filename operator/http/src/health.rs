//! `/healthz` and `/readyz`: the one implementation, mounted by the API router ([`crate::app`])
//! and by the operator's metrics port (`awooop operator`, `operator/src/in_cluster.rs`).
//!
//! * `/healthz`: the process answers (`{"status":"ok"}`), nothing else is asked.
//! * `/readyz`: 200 when PostgreSQL answers `SELECT 1`, else 503; Redis is optional and only
//!   reported (`ok`, `unavailable`, `not_configured`).

use axum::Router;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use serde_json::json;
use sqlx::PgPool;

use awooop_control::ControlPlane;
use awooop_store::coord::Coord;

/// What readiness asks.
#[derive(Clone)]
pub struct Health {
    pool: PgPool,
    coord: Coord,
}

impl Health {
    pub fn new(pool: PgPool, coord: Coord) -> Self {
        Self { pool, coord }
    }

    /// The database and Redis of a control plane.
    pub fn of(control: &ControlPlane) -> Self {
        Self::new(
            control.db().pool_for_health().clone(),
            control.coord().clone(),
        )
    }

    /// The two routes, for any router state.
    pub fn routes<S: Clone + Send + Sync + 'static>(self) -> Router<S> {
        Router::new()
            .route("/healthz", get(healthz))
            .route("/readyz", get(move || readyz(self.clone())))
    }
}

async fn healthz() -> impl IntoResponse {
    axum::Json(json!({"status": "ok"}))
}

async fn readyz(h: Health) -> impl IntoResponse {
    let db_ok = sqlx::query("SELECT 1").execute(&h.pool).await.is_ok();
    let redis = match h.coord.ping().await {
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
