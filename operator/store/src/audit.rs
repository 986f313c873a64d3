//! The audit sink: every record is redacted, then appended to the project's `audit_log` (the
//! runtime role may only INSERT and SELECT there).
//!
//! Control-plane changes write their audit row inside the same transaction as the change, so a
//! change without its audit row cannot commit. Denials are recorded in their own transaction
//! (the change itself was rolled back).

pub use awooop_core::redact;

use serde_json::Value;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::tenancy::{self, Db};
use awooop_core::error::Result;

/// One audit record. `details` is redacted before it is stored.
#[derive(Debug, Clone)]
pub struct Entry<'a> {
    pub actor: &'a str,
    pub action: &'a str,
    pub target: Option<String>,
    pub outcome: Outcome,
    pub code: Option<&'static str>,
    pub trace_id: Option<String>,
    pub details: Value,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, strum::IntoStaticStr, strum::EnumString)]
#[strum(serialize_all = "snake_case")]
pub enum Outcome {
    Ok,
    Denied,
    Error,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

impl<'a> Entry<'a> {
    pub fn ok(actor: &'a str, action: &'a str, target: impl Into<String>, details: Value) -> Self {
        Self {
            actor,
            action,
            target: Some(target.into()),
            outcome: Outcome::Ok,
            code: None,
            trace_id: None,
            details,
        }
    }

    pub fn denied(
        actor: &'a str,
        action: &'a str,
        target: impl Into<String>,
        code: &'static str,
        details: Value,
    ) -> Self {
        Self {
            actor,
            action,
            target: Some(target.into()),
            outcome: Outcome::Denied,
            code: Some(code),
            trace_id: None,
            details,
        }
    }
}

/// Append a record inside the caller's tenant transaction.
pub async fn record(conn: &mut PgConnection, entry: Entry<'_>) -> Result<()> {
    let project = tenancy::require()?;
    let mut details = entry.details;
    let r = redact::Redactor::global();
    r.redact_json(&mut details);
    let target = entry.target.map(|t| r.redact_str(&t).into_owned());
    sqlx::query(
        "INSERT INTO audit_log (project_id, audit_id, actor, action, target, outcome, code, trace_id, details) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(project.as_str())
    .bind(Uuid::now_v7())
    .bind(entry.actor)
    .bind(entry.action)
    .bind(target)
    .bind(entry.outcome.as_str())
    .bind(entry.code)
    .bind(entry.trace_id)
    .bind(details)
    .execute(conn)
    .await?;
    Ok(())
}

/// Audit records as the columns of one `INSERT … SELECT FROM unnest(…)`, redacted: for
/// callers that append them inside a larger statement (the channel hub's one-statement run
/// insert). Bind in this order after the project: `ids::uuid[], actors::text[],
/// actions::text[], targets::text[], outcomes::text[], codes::text[], traces::text[],
/// details::jsonb[]`.
#[derive(Debug, Default)]
pub struct Columns {
    pub ids: Vec<Uuid>,
    pub actors: Vec<String>,
    pub actions: Vec<String>,
    pub targets: Vec<Option<String>>,
    pub outcomes: Vec<&'static str>,
    pub codes: Vec<Option<&'static str>>,
    pub traces: Vec<Option<String>>,
    pub details: Vec<Value>,
}

impl Columns {
    pub fn of(entries: Vec<Entry<'_>>) -> Self {
        let r = redact::Redactor::global();
        let mut c = Columns {
            ids: Vec::with_capacity(entries.len()),
            actors: Vec::with_capacity(entries.len()),
            actions: Vec::with_capacity(entries.len()),
            targets: Vec::with_capacity(entries.len()),
            outcomes: Vec::with_capacity(entries.len()),
            codes: Vec::with_capacity(entries.len()),
            traces: Vec::with_capacity(entries.len()),
            details: Vec::with_capacity(entries.len()),
        };
        for e in entries {
            let mut d = e.details;
            r.redact_json(&mut d);
            c.ids.push(Uuid::now_v7());
            c.actors.push(e.actor.to_string());
            c.actions.push(e.action.to_string());
            c.targets
                .push(e.target.map(|t| r.redact_str(&t).into_owned()));
            c.outcomes.push(e.outcome.as_str());
            c.codes.push(e.code);
            c.traces.push(e.trace_id);
            c.details.push(d);
        }
        c
    }
}

/// Append many records in one statement (batched writers: workers completing runs).
pub async fn record_many(conn: &mut PgConnection, entries: Vec<Entry<'_>>) -> Result<()> {
    if entries.is_empty() {
        return Ok(());
    }
    let project = tenancy::require()?;
    let c = Columns::of(entries);
    sqlx::query(
        "INSERT INTO audit_log (project_id, audit_id, actor, action, target, outcome, code, trace_id, details) \
         SELECT $1, * FROM unnest($2::uuid[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[], $9::jsonb[])",
    )
    .bind(project.as_str())
    .bind(&c.ids)
    .bind(&c.actors)
    .bind(&c.actions)
    .bind(&c.targets)
    .bind(&c.outcomes)
    .bind(&c.codes)
    .bind(&c.traces)
    .bind(&c.details)
    .execute(conn)
    .await?;
    Ok(())
}

/// Append a record in its own transaction (for denials, whose change was rolled back). Failing
/// to audit a denial must not turn the denial into success, so errors are only logged.
///
/// The write runs in a task of its own (in the caller's tenant scope): a caller that hangs up
/// right after being refused (a forged webhook, an approval by someone not allowed to give it)
/// drops its handler, and must not take the row of its refusal along with it.
pub async fn record_detached(db: &Db, entry: Entry<'_>) {
    let Some(project) = tenancy::current() else {
        tracing::warn!(
            code = awooop_core::error::ErrorCode::TenantMissing.as_str(),
            "failed to write denial audit record"
        );
        return;
    };
    let db = db.clone();
    let (actor, action) = (entry.actor.to_string(), entry.action.to_string());
    let Entry {
        target,
        outcome,
        code,
        trace_id,
        details,
        ..
    } = entry;
    let task = tenancy::spawn_in(project, async move {
        let entry = Entry {
            actor: &actor,
            action: &action,
            target,
            outcome,
            code,
            trace_id,
            details,
        };
        let mut tx = db.tenant().await?;
        record(&mut tx, entry).await?;
        tx.commit().await?;
        Ok::<_, awooop_core::error::Error>(())
    });
    match task.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(
            code = e.code.as_str(),
            "failed to write denial audit record"
        ),
        Err(_) => tracing::warn!("denial audit record task stopped"),
    }
}
