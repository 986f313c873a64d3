//! SQL of the hub: conversation events, progress rows, outbound claims and the delivery audit.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::{PgConnection, PgPool, Postgres, Transaction};
use uuid::Uuid;

use super::normalize::Normalized;
use awooop_core::error::Result;
use awooop_runtime::RunBasis;

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
    /// The run the event starts, when known at insert time (batched writes).
    pub run_id: Option<Uuid>,
}

/// Insert events in one statement; returns the ids of those inserted. The others were delivered
/// before: the unique index on (project, channel, external id) decides, also between
/// concurrent transactions (the second insert waits for the first to commit, then does
/// nothing).
///
/// With `guard`, the statement first checks that the run basis the events' runs were prepared
/// on is still current ([`RunBasis::check_sql`]) and inserts nothing when it is not: `None`
/// is returned then (the caller prepares again). The check costs no round trip of its own.
pub async fn insert_events(
    conn: &mut PgConnection,
    rows: &[NewEvent<'_>],
    guard: Option<&RunBasis>,
) -> Result<Option<std::collections::HashSet<Uuid>>> {
    if rows.is_empty() {
        return Ok(match guard {
            Some(b) => b.still_current(conn).await?.then(Default::default),
            None => Some(Default::default()),
        });
    }
    let mut project = None;
    let mut ids = Vec::with_capacity(rows.len());
    let mut channels = Vec::with_capacity(rows.len());
    let mut providers = Vec::with_capacity(rows.len());
    let mut externals = Vec::with_capacity(rows.len());
    let mut conversations = Vec::with_capacity(rows.len());
    let mut senders = Vec::with_capacity(rows.len());
    let mut kinds = Vec::with_capacity(rows.len());
    let mut texts = Vec::with_capacity(rows.len());
    let mut hashes = Vec::with_capacity(rows.len());
    let mut tokens = Vec::with_capacity(rows.len());
    let mut traces = Vec::with_capacity(rows.len());
    let mut mirrored = Vec::with_capacity(rows.len());
    let mut runs = Vec::with_capacity(rows.len());
    for e in rows {
        project = Some(e.project);
        ids.push(e.event_id);
        channels.push(e.channel);
        providers.push(e.provider);
        externals.push(e.event.external_id.as_str());
        conversations.push(e.event.conversation.as_str());
        senders.push(e.event.sender.as_deref());
        kinds.push(e.event.kind.as_str());
        texts.push(e.text);
        hashes.push(e.body_sha256);
        tokens.push(e.event.reply_token.as_deref());
        traces.push(e.trace_id);
        mirrored.push(e.mirrored);
        runs.push(e.run_id);
    }
    // Without a guard the check is a constant true (one statement text either way).
    let check = match guard {
        Some(_) => RunBasis::check_sql(15),
        None => "($15::text IS NULL)".to_string(),
    };
    let sql = format!(
        "WITH current AS (SELECT {check} AS ok), \
         ins AS (INSERT INTO conversation_events (project_id, event_id, channel, provider, external_id, conversation, \
           sender, kind, text, body_sha256, reply_token, trace_id, mirrored, run_id) \
         SELECT $1, u.* FROM unnest($2::uuid[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], \
           $8::text[], $9::text[], $10::text[], $11::text[], $12::text[], $13::bool[], $14::uuid[]) AS u \
         WHERE (SELECT ok FROM current) \
         ON CONFLICT (project_id, channel, external_id) DO NOTHING RETURNING event_id) \
         SELECT (SELECT ok FROM current), coalesce((SELECT array_agg(event_id) FROM ins), '{{}}'::uuid[])"
    );
    let q = sqlx::query_as::<_, (bool, Vec<Uuid>)>(sqlx::AssertSqlSafe(sql))
        .bind(project)
        .bind(&ids)
        .bind(&channels)
        .bind(&providers)
        .bind(&externals)
        .bind(&conversations)
        .bind(&senders)
        .bind(&kinds)
        .bind(&texts)
        .bind(&hashes)
        .bind(&tokens)
        .bind(&traces)
        .bind(&mirrored)
        .bind(&runs);
    let q = match guard {
        Some(b) => {
            let (mode, runtime, agent, agent_rev, project_name, project_rev) = b.check_params();
            q.bind(mode)
                .bind(runtime)
                .bind(agent)
                .bind(agent_rev)
                .bind(project_name)
                .bind(project_rev)
        }
        None => q.bind(None::<&str>),
    };
    let (ok, inserted) = q.fetch_one(conn).await?;
    Ok(ok.then(|| inserted.into_iter().collect()))
}

/// Link events to the runs they started (event id, run id), in one statement.
pub async fn set_event_runs(conn: &mut PgConnection, links: &[(Uuid, Uuid)]) -> Result<()> {
    if links.is_empty() {
        return Ok(());
    }
    let events: Vec<Uuid> = links.iter().map(|l| l.0).collect();
    let runs: Vec<Uuid> = links.iter().map(|l| l.1).collect();
    sqlx::query(
        "UPDATE conversation_events e SET run_id = l.r FROM unnest($1::uuid[], $2::uuid[]) AS l(e, r) \
         WHERE e.event_id = l.e",
    )
    .bind(&events)
    .bind(&runs)
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

/// Progress rows of many runs in one statement (the group commit): (run, conversation,
/// trace id); the shadow guard refuses shadow runs as for [`insert_progress`].
pub async fn insert_progress_many(
    conn: &mut PgConnection,
    project: &str,
    channel_of: &[&str],
    rows: &[(Uuid, &str, &str)],
    interval_seconds: &[i32],
) -> Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    let runs: Vec<Uuid> = rows.iter().map(|r| r.0).collect();
    let conversations: Vec<&str> = rows.iter().map(|r| r.1).collect();
    let traces: Vec<&str> = rows.iter().map(|r| r.2).collect();
    sqlx::query(
        "INSERT INTO channel_progress (project_id, run_id, channel, conversation, trace_id, interval_seconds, next_at) \
         SELECT $1, r, c, v, t, i, now() + make_interval(secs => i) \
         FROM unnest($2::uuid[], $3::text[], $4::text[], $5::text[], $6::int4[]) AS x(r, c, v, t, i)",
    )
    .bind(project)
    .bind(&runs)
    .bind(channel_of)
    .bind(&conversations)
    .bind(&traces)
    .bind(interval_seconds)
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
    awooop_store::tenancy::begin(pool, "BEGIN; SET LOCAL awooop.scope = 'delivery'").await
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
/// crashed sender's messages come back, attempt counted. Which projects' messages the
/// transaction sees decides whose are claimed: every project's in a [`delivery_tx`], one
/// project's in that project's tenant transaction (row-level security).
pub async fn claim(conn: &mut PgConnection, n: i64, lease_seconds: f64) -> Result<Vec<Claimed>> {
    Ok(sqlx::query_as(
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
    .fetch_all(conn)
    .await?)
}

/// Pending messages (the queue-depth metric): of every project in a `delivery` transaction,
/// of the scope's project in a tenant one.
pub async fn queue_depth(conn: &mut PgConnection) -> Result<i64> {
    Ok(
        sqlx::query_scalar("SELECT count(*) FROM outbound_messages WHERE status = 'pending'")
            .fetch_one(conn)
            .await?,
    )
}

/// Seconds until the next pending message or progress row this transaction sees falls due: a
/// message at its `next_attempt_at`, or when its lease runs out while another sender holds it;
/// a progress row at its `next_at`. Zero or less: one is due now. `None`: nothing is pending.
pub async fn next_due(conn: &mut PgConnection) -> Result<Option<f64>> {
    Ok(sqlx::query_scalar(
        "SELECT extract(epoch FROM least( \
            (SELECT min(next_attempt_at) FROM outbound_messages \
             WHERE status = 'pending' AND (lease_until IS NULL OR lease_until < now())), \
            (SELECT min(lease_until) FROM outbound_messages \
             WHERE status = 'pending' AND lease_until >= now()), \
            (SELECT min(next_at) FROM channel_progress WHERE NOT done)) - now())::float8",
    )
    .fetch_one(conn)
    .await?)
}

/// Status of an outbound message (`outbound_messages.status`, migration 0004's CHECK); the
/// SQL of this file also names `pending` and `sent` in its statements.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, strum::IntoStaticStr, strum::EnumString, strum::VariantArray,
)]
#[strum(serialize_all = "snake_case")]
pub enum MessageStatus {
    /// Waiting for (another) delivery attempt.
    Pending,
    Sent,
    /// Given up (or refused before sending); `error_code` says why.
    Failed,
}

impl MessageStatus {
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

/// Result of one delivery attempt (`channel_deliveries.status`, migration 0016's CHECK).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, strum::IntoStaticStr, strum::EnumString, strum::VariantArray,
)]
#[strum(serialize_all = "snake_case")]
pub enum AttemptStatus {
    Sent,
    /// Failed for now; the message is tried again.
    Retry,
    Failed,
    /// Not sent because outbound messages are disabled for the channel or the mode.
    Suppressed,
}

impl AttemptStatus {
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

/// One delivery attempt (append-only audit).
pub struct Attempt<'a> {
    pub project: &'a str,
    pub message_id: Uuid,
    pub channel: &'a str,
    pub attempt: i32,
    pub part: i32,
    pub status: AttemptStatus,
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
    .bind(a.status.as_str())
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
    status: MessageStatus,
    code: Option<&str>,
) -> Result<()> {
    sqlx::query(
        "UPDATE outbound_messages SET status = $2, error_code = $3, lease_until = NULL, \
           sent_at = CASE WHEN $2 = 'sent' THEN now() ELSE sent_at END \
         WHERE message_id = $1",
    )
    .bind(message_id)
    .bind(status.as_str())
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

#[cfg(test)]
mod tests {
    //! The hub's string enums are written to and compared with database columns: their
    //! spellings must be exactly the values the migrations' CHECK constraints allow, and the
    //! provider's must be the contract's (serde) spelling.
    use super::{AttemptStatus, MessageStatus};
    use crate::format::TelegramMode;
    use crate::normalize::EventKind;
    use awooop_contracts::ChannelProvider;
    use strum::VariantArray;

    /// The values of `CHECK (<column> IN ('a', 'b', …))` on the line that defines `column`.
    fn check_list(sql: &str, column: &str) -> Vec<String> {
        let needle = format!("CHECK ({column} IN (");
        let line = sql
            .lines()
            .find(|l| l.trim_start().starts_with(column) && l.contains(&needle))
            .unwrap_or_else(|| panic!("no CHECK list for {column}"));
        let rest = &line[line.find(&needle).unwrap() + needle.len()..];
        rest[..rest.find(')').unwrap()]
            .split(',')
            .map(|v| v.trim().trim_matches('\'').to_string())
            .collect()
    }

    fn names<T: Copy>(all: &[T], f: impl Fn(T) -> &'static str) -> Vec<String> {
        all.iter().map(|v| f(*v).to_string()).collect()
    }

    #[test]
    fn string_enums_spell_what_the_migrations_allow() {
        let m0004 = include_str!("../../../migrations/0004_outbound.sql");
        let m0016 = include_str!("../../../migrations/0016_channels.sql");
        assert_eq!(
            names(MessageStatus::VARIANTS, MessageStatus::as_str),
            check_list(m0004, "status")
        );
        assert_eq!(
            names(AttemptStatus::VARIANTS, AttemptStatus::as_str),
            check_list(m0016, "status")
        );
        assert_eq!(
            names(EventKind::VARIANTS, EventKind::as_str),
            check_list(m0016, "kind")
        );
        // The literal spellings, as before the derives.
        assert_eq!(
            names(EventKind::VARIANTS, EventKind::as_str),
            [
                "message",
                "edited_message",
                "command",
                "postback",
                "join",
                "leave"
            ]
        );
        assert_eq!(
            names(AttemptStatus::VARIANTS, AttemptStatus::as_str),
            ["sent", "retry", "failed", "suppressed"]
        );
        // Parsing takes back what is written.
        for k in EventKind::VARIANTS {
            assert_eq!(k.as_str().parse::<EventKind>().unwrap(), *k);
        }
        for s in AttemptStatus::VARIANTS {
            assert_eq!(s.as_str().parse::<AttemptStatus>().unwrap(), *s);
        }
        assert!("Sent".parse::<MessageStatus>().is_err());
    }

    #[test]
    fn provider_and_parse_mode_names_are_unchanged() {
        for p in ChannelProvider::VARIANTS {
            // The metric/log label is the contract's own spelling of the provider.
            assert_eq!(
                serde_json::to_value(p).unwrap(),
                serde_json::Value::from(p.as_str())
            );
            assert_eq!(p.as_str().parse::<ChannelProvider>().unwrap(), *p);
        }
        assert_eq!(
            names(ChannelProvider::VARIANTS, ChannelProvider::as_str),
            ["telegram", "line", "slack", "email", "api"]
        );
        // Telegram's `parse_mode` values are case-sensitive.
        assert_eq!(TelegramMode::Html.parse_mode(), "HTML");
        assert_eq!(TelegramMode::MarkdownV2.parse_mode(), "MarkdownV2");
    }
}
