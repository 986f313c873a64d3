//! `GET /v1/platform/runs/{id}/events`: a run's progress as Server-Sent Events.
//!
//! Each message is one [`RunEvent`]: `id:` its `seq`, `event:` its kind, `data:` the event as
//! JSON. A client that reconnects with `Last-Event-ID: n` gets every event after `n` and then
//! the live ones. The stream is a [`feed::Subscription`]: the run's events are read from
//! `run_events` once per process and NOTIFY and fanned out to every stream following the run,
//! each stream checking itself for gaps and duplicates against the database (see
//! [`awooop_runtime::events::feed`]). The run is looked up in the caller's tenant scope before
//! the stream starts, so another project's run is a plain 404 (`E-RUN-001`). The stream ends
//! after the run's terminal state and its output, once late events (batched tool-call audit)
//! had a moment to arrive.

use std::convert::Infallible;
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use uuid::Uuid;

use super::AppState;
use super::extract::{Read, Tenant};
use awooop_core::error::{Error, ErrorCode, Result};
use awooop_runtime::events::{self, feed};

pub fn router() -> Router<AppState> {
    Router::new().route("/runs/{id}/events", get(stream))
}

async fn next(
    mut sub: feed::Subscription,
) -> Option<(std::result::Result<Event, Infallible>, feed::Subscription)> {
    let e = sub.next().await?;
    let ev = Event::default()
        .id(e.seq.to_string())
        .event(e.kind.as_str())
        .json_data(&e)
        .unwrap_or_else(|_| Event::default().comment("unserialisable event"));
    Some((Ok(ev), sub))
}

async fn stream(
    State(s): State<AppState>,
    t: Tenant<Read>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response> {
    let run =
        Uuid::parse_str(&id).map_err(|_| Error::new(ErrorCode::RunNotFound, "run not found"))?;
    let last = match headers.get("last-event-id") {
        None => None,
        Some(v) => Some(v.to_str().map_err(|_| {
            Error::new(
                ErrorCode::EventsBadCursor,
                "Last-Event-ID is not valid text",
            )
        })?),
    };
    let after = events::parse_cursor(last)?;
    // The stream outlives this handler, so the subscription keeps the project and enters the
    // tenant scope for each read. The tenant check: an unknown or foreign run fails here, as a
    // JSON error response.
    let sub = feed::subscribe(s.control.db(), t.project.clone(), run, after).await?;
    let stream = futures::stream::unfold(sub, next);
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response())
}
