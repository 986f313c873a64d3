//! SQL of the control plane. Every function takes a connection that is already inside a
//! tenant (or platform) transaction opened by [`awooop_store::tenancy::Db`]; none opens its own.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use sqlx::{FromRow, PgConnection};
use uuid::Uuid;

use awooop_contracts::ContractKind;
use awooop_core::error::Result;

#[derive(Debug, Clone, Serialize, FromRow)]
pub struct ProjectRow {
    pub project_id: String,
    pub display_name: String,
    pub status: String,
    pub required_approvals: i32,
    pub approval_ttl_seconds: i32,
    pub allow_destructive: bool,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, FromRow)]
pub struct DraftRow {
    pub draft_id: Uuid,
    pub kind: String,
    pub name: String,
    pub body: Value,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, FromRow)]
pub struct RevisionRow {
    pub revision_id: Uuid,
    pub kind: String,
    pub name: String,
    pub revision: i32,
    pub body_hash: String,
    pub body: Value,
    pub published_by: String,
    pub published_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, FromRow)]
pub struct ActiveRow {
    pub kind: String,
    pub name: String,
    pub revision_id: Uuid,
    pub revision: i32,
    pub body_hash: String,
    pub activation_id: Uuid,
    pub activated_by: String,
    pub activated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, FromRow)]
pub struct ActivationRow {
    pub activation_id: Uuid,
    pub revision_id: Uuid,
    pub revision: i32,
    pub body_hash: String,
    pub previous_revision_id: Option<Uuid>,
    pub is_rollback: bool,
    pub approvers: Vec<String>,
    pub activated_by: String,
    pub activated_at: DateTime<Utc>,
}

pub async fn project(conn: &mut PgConnection) -> Result<Option<ProjectRow>> {
    Ok(sqlx::query_as(
        "SELECT project_id, display_name, status, required_approvals, approval_ttl_seconds, \
         allow_destructive, created_at FROM projects WHERE project_id = awooop_current_project()",
    )
    .fetch_optional(conn)
    .await?)
}

pub async fn draft(conn: &mut PgConnection, id: Uuid, lock: bool) -> Result<Option<DraftRow>> {
    let sql = if lock {
        "SELECT draft_id, kind, name, body, created_by, created_at, updated_at \
         FROM contract_drafts WHERE draft_id = $1 FOR UPDATE"
    } else {
        "SELECT draft_id, kind, name, body, created_by, created_at, updated_at \
         FROM contract_drafts WHERE draft_id = $1"
    };
    Ok(sqlx::query_as(sql).bind(id).fetch_optional(conn).await?)
}

pub async fn drafts(conn: &mut PgConnection) -> Result<Vec<DraftRow>> {
    Ok(sqlx::query_as(
        "SELECT draft_id, kind, name, body, created_by, created_at, updated_at \
         FROM contract_drafts ORDER BY updated_at DESC LIMIT 500",
    )
    .fetch_all(conn)
    .await?)
}

/// Serialise publishers and activators of one contract name (transaction-scoped lock).
pub async fn lock_contract(conn: &mut PgConnection, kind: ContractKind, name: &str) -> Result<()> {
    sqlx::query(
        "SELECT pg_advisory_xact_lock(hashtextextended(awooop_current_project() || '/' || $1 || '/' || $2, 0))",
    )
    .bind(kind.as_str())
    .bind(name)
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn next_revision(conn: &mut PgConnection, kind: ContractKind, name: &str) -> Result<i32> {
    let max: Option<i32> = sqlx::query_scalar(
        "SELECT max(revision) FROM contract_revisions WHERE kind = $1 AND name = $2",
    )
    .bind(kind.as_str())
    .bind(name)
    .fetch_one(conn)
    .await?;
    Ok(max.unwrap_or(0) + 1)
}

pub async fn revision_by_id(conn: &mut PgConnection, id: Uuid) -> Result<Option<RevisionRow>> {
    Ok(sqlx::query_as(
        "SELECT revision_id, kind, name, revision, body_hash, body, published_by, published_at \
         FROM contract_revisions WHERE revision_id = $1",
    )
    .bind(id)
    .fetch_optional(conn)
    .await?)
}

pub async fn revision_by_number(
    conn: &mut PgConnection,
    kind: ContractKind,
    name: &str,
    revision: i32,
) -> Result<Option<RevisionRow>> {
    Ok(sqlx::query_as(
        "SELECT revision_id, kind, name, revision, body_hash, body, published_by, published_at \
         FROM contract_revisions WHERE kind = $1 AND name = $2 AND revision = $3",
    )
    .bind(kind.as_str())
    .bind(name)
    .bind(revision)
    .fetch_optional(conn)
    .await?)
}

pub async fn revisions(
    conn: &mut PgConnection,
    kind: ContractKind,
    name: &str,
) -> Result<Vec<RevisionRow>> {
    Ok(sqlx::query_as(
        "SELECT revision_id, kind, name, revision, body_hash, body, published_by, published_at \
         FROM contract_revisions WHERE kind = $1 AND name = $2 ORDER BY revision",
    )
    .bind(kind.as_str())
    .bind(name)
    .fetch_all(conn)
    .await?)
}

pub async fn active(
    conn: &mut PgConnection,
    kind: ContractKind,
    name: &str,
) -> Result<Option<ActiveRow>> {
    Ok(sqlx::query_as(
        "SELECT kind, name, revision_id, revision, body_hash, activation_id, activated_by, activated_at \
         FROM active_revisions WHERE kind = $1 AND name = $2",
    )
    .bind(kind.as_str())
    .bind(name)
    .fetch_optional(conn)
    .await?)
}

pub async fn active_all(conn: &mut PgConnection) -> Result<Vec<ActiveRow>> {
    Ok(sqlx::query_as(
        "SELECT kind, name, revision_id, revision, body_hash, activation_id, activated_by, activated_at \
         FROM active_revisions ORDER BY kind, name",
    )
    .fetch_all(conn)
    .await?)
}

/// The active body of a contract, joined through the pointer (never a draft).
pub async fn active_body(
    conn: &mut PgConnection,
    kind: ContractKind,
    name: &str,
) -> Result<Option<(ActiveRow, Value)>> {
    #[derive(FromRow)]
    struct Row {
        kind: String,
        name: String,
        revision_id: Uuid,
        revision: i32,
        body_hash: String,
        activation_id: Uuid,
        activated_by: String,
        activated_at: DateTime<Utc>,
        body: Value,
    }
    let row: Option<Row> = sqlx::query_as(
        "SELECT a.kind, a.name, a.revision_id, a.revision, a.body_hash, a.activation_id, a.activated_by, a.activated_at, r.body \
         FROM active_revisions a JOIN contract_revisions r USING (project_id, revision_id) \
         WHERE a.kind = $1 AND a.name = $2",
    )
    .bind(kind.as_str())
    .bind(name)
    .fetch_optional(conn)
    .await?;
    Ok(row.map(|r| {
        (
            ActiveRow {
                kind: r.kind,
                name: r.name,
                revision_id: r.revision_id,
                revision: r.revision,
                body_hash: r.body_hash,
                activation_id: r.activation_id,
                activated_by: r.activated_by,
                activated_at: r.activated_at,
            },
            r.body,
        )
    }))
}

/// The project's migration mode and the active revisions of several contracts, read with one
/// statement in the caller's tenant transaction (one snapshot, one round trip): what a run is
/// prepared against. `wanted` is (kind, name, with body); a contract without an active
/// revision is `None` at its place. Bodies are only sent for the contracts that ask for them.
pub async fn mode_and_active(
    conn: &mut PgConnection,
    wanted: &[(ContractKind, &str, bool)],
) -> Result<(Option<String>, Vec<Option<(ActiveRow, Option<Value>)>>)> {
    #[derive(FromRow)]
    struct Row {
        mode: Option<String>,
        i: Option<i32>,
        kind: Option<String>,
        name: Option<String>,
        revision_id: Option<Uuid>,
        revision: Option<i32>,
        body_hash: Option<String>,
        activation_id: Option<Uuid>,
        activated_by: Option<String>,
        activated_at: Option<DateTime<Utc>>,
        body: Option<Value>,
    }
    let kinds: Vec<&str> = wanted.iter().map(|w| w.0.as_str()).collect();
    let names: Vec<&str> = wanted.iter().map(|w| w.1).collect();
    let bodies: Vec<bool> = wanted.iter().map(|w| w.2).collect();
    // The one-row `one` keeps the mode when no contract is active.
    let rows: Vec<Row> = sqlx::query_as(
        "WITH w AS (SELECT * FROM unnest($1::text[], $2::text[], $3::bool[]) WITH ORDINALITY AS w(kind, name, with_body, i)), \
         found AS (SELECT w.i::int4 AS i, a.kind, a.name, a.revision_id, a.revision, a.body_hash, a.activation_id, \
             a.activated_by, a.activated_at, CASE WHEN w.with_body THEN r.body END AS body \
           FROM w JOIN active_revisions a ON a.kind = w.kind AND a.name = w.name \
           JOIN contract_revisions r ON r.project_id = a.project_id AND r.revision_id = a.revision_id) \
         SELECT (SELECT mode FROM project_migration_state) AS mode, f.* \
         FROM (SELECT 1) one LEFT JOIN found f ON true",
    )
    .bind(&kinds)
    .bind(&names)
    .bind(&bodies)
    .fetch_all(conn)
    .await?;
    let mode = rows.first().and_then(|r| r.mode.clone());
    let mut out: Vec<Option<(ActiveRow, Option<Value>)>> = vec![None; wanted.len()];
    for r in rows {
        let (
            Some(i),
            Some(kind),
            Some(name),
            Some(revision_id),
            Some(revision),
            Some(body_hash),
            Some(activation_id),
            Some(activated_by),
            Some(activated_at),
        ) = (
            r.i,
            r.kind,
            r.name,
            r.revision_id,
            r.revision,
            r.body_hash,
            r.activation_id,
            r.activated_by,
            r.activated_at,
        )
        else {
            continue;
        };
        if let Some(slot) = usize::try_from(i - 1).ok().and_then(|i| out.get_mut(i)) {
            *slot = Some((
                ActiveRow {
                    kind,
                    name,
                    revision_id,
                    revision,
                    body_hash,
                    activation_id,
                    activated_by,
                    activated_at,
                },
                r.body,
            ));
        }
    }
    Ok((mode, out))
}

pub async fn activations(
    conn: &mut PgConnection,
    kind: ContractKind,
    name: &str,
) -> Result<Vec<ActivationRow>> {
    Ok(sqlx::query_as(
        "SELECT activation_id, revision_id, revision, body_hash, previous_revision_id, is_rollback, \
         approvers, activated_by, activated_at FROM activation_history \
         WHERE kind = $1 AND name = $2 ORDER BY activated_at, activation_id",
    )
    .bind(kind.as_str())
    .bind(name)
    .fetch_all(conn)
    .await?)
}

/// Void expired open approvals of a revision (so they neither count nor block re-approval).
pub async fn void_expired_approvals(conn: &mut PgConnection, revision_id: Uuid) -> Result<()> {
    sqlx::query(
        "UPDATE activation_approvals SET void_reason = 'expired' \
         WHERE revision_id = $1 AND consumed_by IS NULL AND void_reason IS NULL AND expires_at <= now()",
    )
    .bind(revision_id)
    .execute(conn)
    .await?;
    Ok(())
}

/// Open, unexpired approvers of a revision.
pub async fn open_approvers(conn: &mut PgConnection, revision_id: Uuid) -> Result<Vec<String>> {
    Ok(sqlx::query_scalar(
        "SELECT approver FROM activation_approvals \
         WHERE revision_id = $1 AND consumed_by IS NULL AND void_reason IS NULL AND expires_at > now() \
         ORDER BY approved_at, approver",
    )
    .bind(revision_id)
    .fetch_all(conn)
    .await?)
}
