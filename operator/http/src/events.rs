//! `GET /v1/platform/runs/{id}/events`: a run's progress as Server-Sent Events.
//!
//! Each message is one [`RunEvent`]: `id:` its `seq`, `event:` its kind, `data:` the event as
//! JSON. A client that reconnects with `Last-Event-ID: n` gets every event after `n` and then
//! the live ones; nothing is skipped because every message is read from `run_events` (the
//! NOTIFY only wakes the stream, see [`awooop_store::events`]). The run is looked up in the
//! caller's tenant scope before the stream starts, so another project's run is a plain 404
//! (`E-RUN-001`). The stream ends after the run's terminal state and its output, once late
//! events (batched tool-call audit) had a moment to arrive.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::sync::broadcast::error::RecvError;
use uuid::Uuid;

use super::AppState;
use super::extract::{Read, Tenant};
use awooop_api::{RunEvent, TERMINAL_STATES};
use awooop_core::error::{Error, ErrorCode, Result};
use awooop_runtime::events;
use awooop_store::events::Wake;
use awooop_store::tenancy::{self, Db, ProjectId};

/// Events read per query.
const PAGE: i64 = 500;
/// Safety-net poll when no notice arrives (a lost NOTIFY costs at most this much latency).
const POLL: Duration = Duration::from_secs(5);
/// How long a finished run's stream stays open for late events (tool-call audit is batched
/// every 50 ms).
const LINGER: Duration = Duration::from_millis(300);

pub fn router() -> Router<AppState> {
    Router::new().route("/runs/{id}/events", get(stream))
}

struct Cursor {
    db: Db,
    project: ProjectId,
    run: Uuid,
    after: i64,
    queue: VecDeque<RunEvent>,
    terminal: bool,
    wake: tokio::sync::broadcast::Receiver<Wake>,
    linger_until: Option<tokio::time::Instant>,
}

impl Cursor {
    async fn read(&mut self) -> Result<()> {
        let (state, evs) = tenancy::scope(
            self.project.clone(),
            events::read(&self.db, self.run, self.after, PAGE),
        )
        .await?;
        self.terminal = TERMINAL_STATES.contains(&state.as_str());
        self.queue.extend(evs);
        Ok(())
    }

    /// Wait until something for this run may have happened (or the poll interval passed).
    async fn wait(&mut self, limit: Duration) -> bool {
        let sleep = tokio::time::sleep(limit);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                w = self.wake.recv() => match w {
                    Ok(Wake::Event(n)) if n.run == self.run && n.seq > self.after => return true,
                    Ok(Wake::Event(_)) => continue,
                    Ok(Wake::Resync) | Err(RecvError::Lagged(_)) => return true,
                    Err(RecvError::Closed) => { (&mut sleep).await; return true; }
                },
                _ = &mut sleep => return false,
            }
        }
    }

    async fn next(mut self) -> Option<(std::result::Result<Event, Infallible>, Self)> {
        loop {
            if let Some(e) = self.queue.pop_front() {
                self.after = e.seq;
                let ev = Event::default()
                    .id(e.seq.to_string())
                    .event(e.kind.as_str())
                    .json_data(&e)
                    .unwrap_or_else(|_| Event::default().comment("unserialisable event"));
                return Some((Ok(ev), self));
            }
            if self.terminal {
                let until = *self
                    .linger_until
                    .get_or_insert_with(|| tokio::time::Instant::now() + LINGER);
                let left = until.saturating_duration_since(tokio::time::Instant::now());
                if left.is_zero() {
                    return None;
                }
                self.wait(left).await;
            } else {
                self.wait(POLL).await;
            }
            if let Err(e) = self.read().await {
                tracing::debug!(error = %e, run = %self.run, "run event stream ends");
                return None;
            }
        }
    }
}

async fn stream(
    State(s): State<AppState>,
    t: Tenant<Read>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response> {
    // The stream outlives this handler, so its cursor keeps the project and enters the tenant
    // scope for each page it reads.
    let project = t.project.clone();
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
    let db = s.control.db().clone();
    // Subscribe before the first read: an event committed in between is then both read and
    // announced (harmless), never neither.
    let wake = db.run_events().subscribe();
    let mut cursor = Cursor {
        db,
        project,
        run,
        after,
        queue: VecDeque::new(),
        terminal: false,
        wake,
        linger_until: None,
    };
    // The tenant check: an unknown or foreign run fails here, as a JSON error response.
    cursor.read().await?;
    let stream = futures::stream::unfold(cursor, Cursor::next);
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response())
}
