//! The audit of every tool call, written in batches off the request path.
//!
//! Contract: [`CallAudit::record`] hands a row to a background writer through a bounded
//! channel; when the channel is full the caller waits (back-pressure) rather than dropping a
//! row. The writer groups rows by project and inserts each group in one statement inside that
//! project's RLS scope; a failed write is retried with backoff and the rows are kept, so a
//! PostgreSQL outage delays audit rows but never loses them while the process lives.
//! [`CallAudit::flush`] waits until everything recorded before it is durable (tests and
//! graceful shutdown). Rows never hold a credential value or a result body (layer-2 redaction
//! also runs over `details`).

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use awooop_core::backoff::Backoff;
use awooop_core::error::ErrorCode;
use awooop_core::redact::Redactor;
use awooop_store::tenancy::{self, Db, ProjectId};

/// One audited call.
#[derive(Debug, Clone)]
pub struct CallRecord {
    pub project: ProjectId,
    pub call_id: Uuid,
    pub at: DateTime<Utc>,
    pub trace_id: String,
    pub run_id: Option<Uuid>,
    pub agent: String,
    pub tool: String,
    pub environment: String,
    /// The effective migration mode, or `unknown`.
    pub mode: &'static str,
    pub credential_refs: Vec<String>,
    /// `allowed` or `denied`.
    pub decision: &'static str,
    pub code: Option<&'static str>,
    /// `ok`, `tool_error`, `upstream_error` or `denied`.
    pub result_status: &'static str,
    pub latency_us: i64,
    pub bytes_in: i64,
    pub bytes_out: i64,
    pub truncated: bool,
    pub details: Value,
}

enum Msg {
    Row(Box<CallRecord>),
    Flush(oneshot::Sender<()>),
}

#[derive(Clone)]
pub struct CallAudit {
    tx: mpsc::Sender<Msg>,
}

/// Rows buffered before a write is forced.
const BATCH: usize = 512;

/// Default of the longest a row waits for its batch (`--gateway-audit-flush-ms`).
///
/// Why 10 ms and not more: on a machine where PostgreSQL shares the gateway's cores, each
/// write is a burst of backend CPU proportional to its rows (about 20 µs per row), and calls
/// that arrive during it wait for a core. At 3,000 calls/s a 50 ms interval made 150-row
/// bursts of about 3 ms and a p99 overhead of 2.6 ms (median of 12 runs); 10 ms, 30-row
/// bursts, 1.24 ms (15 runs). Why not less: every write is a transaction of its own, so
/// PostgreSQL's CPU for the audit grows as batches shrink (over `bench gateway --quick`: +10 %
/// at 10 ms, +30 % at 5 ms, +55 % at 2 ms against 50 ms), while the tail it buys back exists
/// only where PostgreSQL shares the gateway's cores (docs/benchmarks.md, "Session 23").
pub const DEFAULT_FLUSH_INTERVAL: Duration = Duration::from_millis(10);

impl CallAudit {
    /// Start the writer with [`DEFAULT_FLUSH_INTERVAL`]. It stops (after writing everything)
    /// when every handle is dropped.
    pub fn spawn(db: Db) -> (Self, tokio::task::JoinHandle<()>) {
        Self::spawn_with(db, DEFAULT_FLUSH_INTERVAL)
    }

    /// Start the writer: a row waits at most `interval` after it reaches an empty buffer
    /// before its batch is written (less when the batch fills or a flush is asked for).
    /// A zero interval is raised to 1 ms.
    pub fn spawn_with(db: Db, interval: Duration) -> (Self, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(16_384);
        let interval = interval.max(Duration::from_millis(1));
        let task = tokio::spawn(writer(db, rx, interval));
        (Self { tx }, task)
    }

    pub async fn record(&self, r: CallRecord) {
        if self.tx.send(Msg::Row(redacted(r))).await.is_err() {
            tracing::error!("call audit writer has stopped; a row could not be queued");
        }
    }

    /// [`CallAudit::record`] without waiting, for a `Drop` (a call whose caller went away): the
    /// row is queued at once, or by a task of its own while the channel is full.
    pub fn record_detached(&self, r: CallRecord) {
        match self.tx.try_send(Msg::Row(redacted(r))) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(row)) => {
                let tx = self.tx.clone();
                if let Ok(h) = tokio::runtime::Handle::try_current() {
                    h.spawn(async move {
                        if tx.send(row).await.is_err() {
                            tracing::error!(
                                "call audit writer has stopped; a row could not be queued"
                            );
                        }
                    });
                }
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                tracing::error!("call audit writer has stopped; a row could not be queued");
            }
        }
    }

    /// Wait until every row recorded before this call is written.
    pub async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Msg::Flush(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }
}

/// Layer 2: the caller chose the tool name and influenced the details.
fn redacted(mut r: CallRecord) -> Box<CallRecord> {
    let redactor = Redactor::global();
    redactor.redact_json(&mut r.details);
    if let std::borrow::Cow::Owned(t) = redactor.redact_str(&r.tool) {
        r.tool = t;
    }
    Box::new(r)
}

async fn writer(db: Db, mut rx: mpsc::Receiver<Msg>, interval: Duration) {
    let mut buf: Vec<CallRecord> = Vec::new();
    let mut waiters: Vec<oneshot::Sender<()>> = Vec::new();
    let mut open = true;
    while open || !buf.is_empty() {
        // Idle: sleep until something arrives (no timer ticking while nothing is audited), so
        // the interval below counts from the batch's first row.
        if buf.is_empty() && waiters.is_empty() && open {
            match rx.recv().await {
                Some(Msg::Row(r)) => buf.push(*r),
                Some(Msg::Flush(w)) => waiters.push(w),
                None => open = false,
            }
        }
        // Collect until the batch is full, the interval passes, a flush is asked for, or the
        // channel closes.
        let deadline = tokio::time::Instant::now() + interval;
        while open && buf.len() < BATCH && waiters.is_empty() {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(Msg::Row(r))) => buf.push(*r),
                Ok(Some(Msg::Flush(w))) => waiters.push(w),
                Ok(None) => open = false,
                Err(_) => break,
            }
        }
        // Retry `n` of a write PostgreSQL could not take (50 ms doubling, at most 5 s).
        let backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(5));
        let mut retry = 0u32;
        while !buf.is_empty() {
            match write(&db, &buf).await {
                Ok(()) => buf.clear(),
                Err(e) if e.code == ErrorCode::Unavailable => {
                    // PostgreSQL is away: keep the rows and try again.
                    tracing::warn!(
                        code = e.code.as_str(),
                        rows = buf.len(),
                        "call audit write failed; retrying"
                    );
                    tokio::time::sleep(backoff.delay(retry)).await;
                    retry = retry.saturating_add(1);
                }
                Err(_) => {
                    // A row the database refuses for good (e.g. its project was removed) must
                    // not block the others: write them one by one and report the refused ones.
                    let mut keep = Vec::new();
                    for r in buf.drain(..) {
                        match write(&db, std::slice::from_ref(&r)).await {
                            Ok(()) => {}
                            Err(e) if e.code == ErrorCode::Unavailable => keep.push(r),
                            Err(e) => tracing::error!(
                                code = e.code.as_str(),
                                project = %r.project,
                                call_id = %r.call_id,
                                "call audit row refused by the database"
                            ),
                        }
                    }
                    buf = keep;
                }
            }
        }
        for w in waiters.drain(..) {
            let _ = w.send(());
        }
    }
}

async fn write(db: &Db, rows: &[CallRecord]) -> awooop_core::error::Result<()> {
    let mut by_project: HashMap<&ProjectId, Vec<&CallRecord>> = HashMap::new();
    for r in rows {
        by_project.entry(&r.project).or_default().push(r);
    }
    // One connection for the whole batch, one tenant transaction per project on it: each
    // `Db::tenant` would acquire from the pool, whose check of an idle connection is a round
    // trip per transaction (with a short interval and many tenants, most of them).
    let mut conn = db.connection().await?;
    for (project, rows) in by_project {
        tenancy::scope(project.clone(), insert(&mut conn, project, rows)).await?;
    }
    Ok(())
}

async fn insert(
    conn: &mut sqlx::PgConnection,
    project: &ProjectId,
    rows: Vec<&CallRecord>,
) -> awooop_core::error::Result<()> {
    let mut tx = tenancy::tenant_on(conn).await?;
    // The trace id is the caller's when it sends `traceparent`: the table's trace index stays
    // a B-tree, which a repeated key does not degrade (a hash index did: docs/benchmarks.md,
    // "Session 23").
    // Columns are bound as borrowed slices of the batch (no copy of every string per row).
    sqlx::query(
        "INSERT INTO mcp_call_audit (project_id, call_id, at, trace_id, run_id, agent, tool, environment, mode, \
         credential_refs, decision, code, result_status, latency_us, bytes_in, bytes_out, truncated, details) \
         SELECT $1, u.call_id, u.at, u.trace_id, u.run_id, u.agent, u.tool, u.environment, u.mode, \
         ARRAY(SELECT jsonb_array_elements_text(u.refs)), u.decision, u.code, u.status, u.latency, u.bin, u.bout, u.trunc, u.details \
         FROM unnest($2::uuid[], $3::timestamptz[], $4::text[], $5::uuid[], $6::text[], $7::text[], $8::text[], $9::text[], \
         $10::jsonb[], $11::text[], $12::text[], $13::text[], $14::int8[], $15::int8[], $16::int8[], $17::bool[], $18::jsonb[]) \
         AS u(call_id, at, trace_id, run_id, agent, tool, environment, mode, refs, decision, code, status, latency, bin, bout, trunc, details) \
         ON CONFLICT DO NOTHING",
    )
    .bind(project.as_str())
    .bind(rows.iter().map(|r| r.call_id).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.at).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.trace_id.as_str()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.run_id).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.agent.as_str()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.tool.as_str()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.environment.as_str()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.mode).collect::<Vec<_>>())
    .bind(
        rows.iter()
            .map(|r| serde_json::json!(r.credential_refs))
            .collect::<Vec<_>>(),
    )
    .bind(rows.iter().map(|r| r.decision).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.code).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.result_status).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.latency_us).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.bytes_in).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.bytes_out).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.truncated).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| &r.details).collect::<Vec<_>>())
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}
