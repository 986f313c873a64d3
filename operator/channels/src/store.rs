//! SQL of the hub: conversation events, progress rows, outbound claims and the delivery audit.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::{PgConnection, PgPool, Postgres, Transaction};
use uuid::Uuid;

use super::normalize::Normalized;
use awooop_core::error::Result;

/// One event row to insert.
pub struct NewEvent<'a> {
    pub project: &'a str,
    pub event_id: Uuid,
    pub channel: &'a str,
    pub provider: &'a str,
    pub event: &'a Normalized,
    /// The normalized text after redaction.
    pub text: Option<&'a str>,
    pub body_sha256: &'a str,
    pub trace_id: &'a str,
    pub mirrored: bool,
}

/// Insert an event; `false` when the provider already delivered it (the unique index on
/// (project, channel, external id) decides, also between concurrent transactions: the second
/// insert waits for the first to commit and then does nothing).
pub async fn insert_event(conn: &mut PgConnection, e: &NewEvent<'_>) -> Result<bool> {
    let inserted = sqlx::query(
        "INSERT INTO conversation_events (project_id, event_id, channel, provider, external_id, conversation, \
           sender, kind, text, body_sha256, reply_token, trace_id, mirrored) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) \
         ON CONFLICT (project_id, channel, external_id) DO NOTHING",
    )
    .bind(e.project)
    .bind(e.event_id)
    .bind(e.channel)
    .bind(e.provider)
    .bind(&e.event.external_id)
    .bind(&e.event.conversation)
    .bind(e.event.sender.as_deref())
    .bind(e.event.kind.as_str())
    .bind(e.text)
    .bind(e.body_sha256)
    .bind(e.event.reply_token.as_deref())
    .bind(e.trace_id)
    .bind(e.mirrored)
    .execute(conn)
    .await?
    .rows_affected();
    Ok(inserted == 1)
}

pub async fn set_event_run(conn: &mut PgConnection, event_id: Uuid, run_id: Uuid) -> Result<()> {
    sqlx::query("UPDATE conversation_events SET run_id = $2 WHERE event_id = $1")
        .bind(event_id)
        .bind(run_id)
        .execute(conn)
        .await?;
    Ok(())
}

/// The progress row of a run started from a channel (the shadow guard refuses shadow runs).
pub async fn insert_progress(
    conn: &mut PgConnection,
    project: &str,
    run_id: Uuid,
    channel: &str,
    conversation: &str,
    trace_id: &str,
    interval_seconds: u32,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO channel_progress (project_id, run_id, channel, conversation, trace_id, interval_seconds, next_at) \
         VALUES ($1, $2, $3, $4, $5, $6, now() + make_interval(secs => $6))",
    )
    .bind(project)
    .bind(run_id)
    .bind(channel)
    .bind(conversation)
    .bind(trace_id)
    .bind(interval_seconds as i32)
    .execute(conn)
    .await?;
    Ok(())
}

/// The newest LINE reply token of a run's conversation, if still valid (LINE: one minute; the
/// hub uses 50 s to leave room for the request).
pub async fn reply_token(conn: &mut PgConnection, run_id: Uuid) -> Result<Option<String>> {
    Ok(sqlx::query_scalar(
        "SELECT reply_token FROM conversation_events WHERE run_id = $1 AND reply_token IS NOT NULL \
           AND received_at > now() - interval '50 seconds' ORDER BY received_at DESC LIMIT 1",
    )
    .bind(run_id)
    .fetch_optional(conn)
    .await?)
}

/// A transaction that sees pending outbound messages and due progress rows of every project
/// (policy `delivery_scope`), and nothing else.
pub async fn delivery_tx(pool: &PgPool) -> Result<Transaction<'static, Postgres>> {
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT set_config('awooop.scope', 'delivery', true)")
        .execute(&mut *tx)
        .await?;
    Ok(tx)
}

/// A claimed outbound message.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Claimed {
    pub project_id: String,
    pub message_id: Uuid,
    pub run_id: Uuid,
    pub channel: String,
    pub conversation: String,
    pub kind: String,
    pub body: Value,
    pub trace_id: String,
    pub attempts: i32,
    pub parts_sent: i32,
    pub created_at: DateTime<Utc>,
}

/// Claim up to `n` due messages: `FOR UPDATE SKIP LOCKED`, leased for `lease_seconds` so a
/// crashed sender's messages come back, attempt counted.
pub async fn claim(pool: &PgPool, n: i64, lease_seconds: f64) -> Result<Vec<Claimed>> {
    let mut tx = delivery_tx(pool).await?;
    let rows = sqlx::query_as(
        "WITH c AS ( \
            SELECT project_id, message_id FROM outbound_messages \
            WHERE status = 'pending' AND next_attempt_at <= now() \
              AND (lease_until IS NULL OR lease_until < now()) \
            ORDER BY next_attempt_at LIMIT $1 FOR UPDATE SKIP LOCKED) \
         UPDATE outbound_messages o SET attempts = o.attempts + 1, \
            lease_until = now() + make_interval(secs => $2) \
         FROM c WHERE o.project_id = c.project_id AND o.message_id = c.message_id \
         RETURNING o.project_id, o.message_id, o.run_id, o.channel, o.conversation, o.kind, o.body, \
            o.trace_id, o.attempts, o.parts_sent, o.created_at",
    )
    .bind(n)
    .bind(lease_seconds)
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(rows)
}

/// Pending messages of every project (the queue-depth metric).
pub async fn queue_depth(pool: &PgPool) -> Result<i64> {
    let mut tx = delivery_tx(pool).await?;
    let n = sqlx::query_scalar("SELECT count(*) FROM outbound_messages WHERE status = 'pending'")
        .fetch_one(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(n)
}

/// One delivery attempt (append-only audit).
pub struct Attempt<'a> {
    pub project: &'a str,
    pub message_id: Uuid,
    pub channel: &'a str,
    pub attempt: i32,
    pub part: i32,
    pub status: &'a str,
    pub http_status: Option<u16>,
    pub provider_message_id: Option<&'a str>,
    pub latency_ms: u64,
    pub code: Option<&'a str>,
}

pub async fn record_attempt(conn: &mut PgConnection, a: &Attempt<'_>) -> Result<()> {
    sqlx::query(
        "INSERT INTO channel_deliveries (project_id, delivery_id, message_id, channel, attempt, part, status, \
           http_status, provider_message_id, latency_ms, code) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
    )
    .bind(a.project)
    .bind(Uuid::now_v7())
    .bind(a.message_id)
    .bind(a.channel)
    .bind(a.attempt)
    .bind(a.part)
    .bind(a.status)
    .bind(a.http_status.map(i32::from))
    .bind(a.provider_message_id)
    .bind(a.latency_ms.min(i32::MAX as u64) as i32)
    .bind(a.code)
    .execute(conn)
    .await?;
    Ok(())
}

/// A part was sent: remember it so a retry continues after it (no duplicate parts).
pub async fn part_sent(
    conn: &mut PgConnection,
    message_id: Uuid,
    parts_sent: i32,
    provider_id: Option<&str>,
) -> Result<()> {
    sqlx::query(
        "UPDATE outbound_messages SET parts_sent = $2, provider_message_id = coalesce($3, provider_message_id) \
         WHERE message_id = $1",
    )
    .bind(message_id)
    .bind(parts_sent)
    .bind(provider_id)
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn finish(
    conn: &mut PgConnection,
    message_id: Uuid,
    status: &str,
    code: Option<&str>,
) -> Result<()> {
    sqlx::query(
        "UPDATE outbound_messages SET status = $2, error_code = $3, lease_until = NULL, \
           sent_at = CASE WHEN $2 = 'sent' THEN now() ELSE sent_at END \
         WHERE message_id = $1",
    )
    .bind(message_id)
    .bind(status)
    .bind(code)
    .execute(conn)
    .await?;
    Ok(())
}

/// Try again at `after_ms` from now (lease released).
pub async fn retry_later(
    conn: &mut PgConnection,
    message_id: Uuid,
    after_ms: u64,
    code: &str,
) -> Result<()> {
    sqlx::query(
        "UPDATE outbound_messages SET next_attempt_at = now() + make_interval(secs => $2), \
           lease_until = NULL, error_code = $3 WHERE message_id = $1",
    )
    .bind(message_id)
    .bind(after_ms as f64 / 1000.0)
    .bind(code)
    .execute(conn)
    .await?;
    Ok(())
}
