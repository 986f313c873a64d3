//! Dry-run evidence: a write tool may declare a dry-run companion (another tool, or a boolean
//! argument of its own). The real call is refused (`E-MCP-GATE-011`) unless a successful dry
//! run with the same argument hash was recorded in the same run; approval requests show that
//! evidence and the rollback tool. Results are stored by SHA-256 (`tool_evidence`), like other
//! artifacts.
//!
//! The decisions are pure ([`needed`], [`dry_run_targets`]); [`find`] and [`record`] are the
//! SQL.

use serde_json::{Map, Value, json};
use sqlx::PgConnection;
use uuid::Uuid;

use super::registry::{Registry, ToolEntry};
use awooop_contracts::DryRun;
use awooop_core::error::Result;

/// What a call of `t` with `args` needs before it may go upstream.
#[derive(Debug, PartialEq, Eq)]
pub enum Need {
    /// No dry-run companion declared.
    None,
    /// This call *is* the dry run (the tool's own `dry_run` argument is `true`).
    IsDryRun,
    /// A recorded dry run with this argument hash.
    Evidence { args_sha256: String },
}

/// The arguments as the dry run and the real call share them: without the dry-run argument.
fn shared_args(t: &ToolEntry, args: &Map<String, Value>) -> Map<String, Value> {
    let mut a = args.clone();
    if let Some(DryRun::Argument { name }) = &t.dry_run {
        a.remove(name);
    }
    a
}

pub fn needed(t: &ToolEntry, args: &Map<String, Value>) -> Need {
    match &t.dry_run {
        None => Need::None,
        Some(DryRun::Argument { name }) if args.get(name) == Some(&Value::Bool(true)) => {
            Need::IsDryRun
        }
        Some(_) => Need::Evidence {
            args_sha256: awooop_core::canonical::body_hash(&Value::Object(shared_args(t, args))),
        },
    }
}

/// The tools a successful call of `called` dry-runs, with the argument hash the evidence is for.
pub fn dry_run_targets(
    registry: &Registry,
    called: &ToolEntry,
    args: &Map<String, Value>,
) -> Vec<(String, String)> {
    let mut out = Vec::new();
    if needed(called, args) == Need::IsDryRun {
        out.push((
            called.exposed.clone(),
            awooop_core::canonical::body_hash(&Value::Object(shared_args(called, args))),
        ));
    }
    for t in registry.tools() {
        if let Some(DryRun::Tool { tool }) = &t.dry_run
            && tool.0 == called.exposed
        {
            out.push((
                t.exposed.clone(),
                awooop_core::canonical::body_hash(&Value::Object(args.clone())),
            ));
        }
    }
    out
}

/// The evidence recorded for (run, tool, argument hash), as approval requests show it.
pub async fn find(
    conn: &mut PgConnection,
    run_id: Uuid,
    tool: &str,
    args_sha256: &str,
) -> Result<Option<Value>> {
    let row: Option<(String, String, Value)> = sqlx::query_as(
        "SELECT dry_run_tool, result_sha256, result FROM tool_evidence \
         WHERE run_id = $1 AND tool = $2 AND args_sha256 = $3",
    )
    .bind(run_id)
    .bind(tool)
    .bind(args_sha256)
    .fetch_optional(conn)
    .await?;
    Ok(row.map(|(dry_run_tool, sha, result)| {
        json!({"tool": dry_run_tool, "args_sha256": args_sha256, "result_sha256": sha, "result": result})
    }))
}

/// Record a successful dry run (the latest one with the same hash wins).
pub async fn record(
    conn: &mut PgConnection,
    project: &str,
    run_id: Uuid,
    tool: &str,
    args_sha256: &str,
    dry_run_tool: &str,
    result: &Value,
) -> Result<()> {
    let sha = awooop_core::canonical::body_hash(result);
    sqlx::query(
        "INSERT INTO tool_evidence (project_id, run_id, tool, args_sha256, dry_run_tool, result_sha256, result) \
         VALUES ($1, $2, $3, $4, $5, $6, $7) \
         ON CONFLICT (project_id, run_id, tool, args_sha256) DO UPDATE \
         SET dry_run_tool = EXCLUDED.dry_run_tool, result_sha256 = EXCLUDED.result_sha256, \
             result = EXCLUDED.result, recorded_at = now()",
    )
    .bind(project)
    .bind(run_id)
    .bind(tool)
    .bind(args_sha256)
    .bind(dry_run_tool)
    .bind(sha)
    .bind(result)
    .execute(conn)
    .await?;
    Ok(())
}
