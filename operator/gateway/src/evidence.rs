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

#[cfg(test)]
mod tests {
    use super::*;

    fn registry() -> Registry {
        let c = serde_json::from_value(json!({
            "providers": [{"name": "k8s", "transport": {"type": "streamable_http", "url": "http://127.0.0.1:1/mcp"}}],
            "tools": [
                {"provider": "k8s", "name": "plan", "risk": "read_only", "environments": ["dev"], "input_schema": {"type": "object"}},
                {"provider": "k8s", "name": "scale", "risk": "write", "environments": ["dev"], "input_schema": {"type": "object"},
                 "dry_run": {"type": "tool", "tool": "k8s__plan"}, "rollback_tool": "k8s__plan"},
                {"provider": "k8s", "name": "apply", "risk": "write", "environments": ["dev"], "input_schema": {"type": "object"},
                 "dry_run": {"type": "argument", "name": "dry_run"}},
                {"provider": "k8s", "name": "free", "risk": "write", "environments": ["dev"], "input_schema": {"type": "object"}}
            ]
        }))
        .unwrap();
        Registry::compile(None, &c).unwrap()
    }

    fn args(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn dry_runs_are_evidence_for_the_same_arguments_only() {
        let r = registry();
        let h = |v: Value| awooop_core::canonical::body_hash(&v);
        let scale = r.tool("k8s__scale").unwrap();
        let plan = r.tool("k8s__plan").unwrap();
        let apply = r.tool("k8s__apply").unwrap();
        assert_eq!(
            needed(r.tool("k8s__free").unwrap(), &args(json!({}))),
            Need::None
        );
        assert_eq!(
            needed(scale, &args(json!({"n": 3}))),
            Need::Evidence {
                args_sha256: h(json!({"n": 3}))
            }
        );
        // A companion tool's call is evidence for the tool it dry-runs, with its arguments.
        assert_eq!(
            dry_run_targets(&r, plan, &args(json!({"n": 3}))),
            vec![("k8s__scale".to_string(), h(json!({"n": 3})))]
        );
        // The dry-run argument: the call with it is the dry run; the hash leaves it out.
        assert_eq!(
            needed(apply, &args(json!({"n": 1, "dry_run": true}))),
            Need::IsDryRun
        );
        assert_eq!(
            dry_run_targets(&r, apply, &args(json!({"n": 1, "dry_run": true}))),
            vec![("k8s__apply".to_string(), h(json!({"n": 1})))]
        );
        assert_eq!(
            needed(apply, &args(json!({"n": 1, "dry_run": false}))),
            Need::Evidence {
                args_sha256: h(json!({"n": 1}))
            }
        );
        assert_eq!(
            needed(apply, &args(json!({"n": 1}))),
            Need::Evidence {
                args_sha256: h(json!({"n": 1}))
            }
        );
        // The real call is no evidence for itself.
        assert!(dry_run_targets(&r, scale, &args(json!({"n": 3}))).is_empty());
    }
}
