//! `awooop bench contracts`: validation+hashing throughput of a typical Agent contract on one
//! core, and activation latency (approve ×2 then activate; the activation is timed) on the
//! local PostgreSQL.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::{drop_scratch, percentile_ms, scratch_database};
use crate::auth::Actor;
use crate::config::{BenchArgs, DbArgs, KeyringArgs};
use crate::contracts::{self, ContractKind};
use crate::control::NewProject;
use crate::platform::Platform;
use crate::tenancy::{self, ProjectId};

/// A typical Agent contract: scripted executor, tools, artifacts, safety ceiling (~1.3 KB).
pub fn typical_agent() -> Value {
    json!({
        "display_name": "SRE triage",
        "description": "Triage alerts: read metrics and logs, summarise, propose a remediation.",
        "context_domain": "infra",
        "prompt": {"ref": "prompts/sre-triage", "sha256": format!("sha256:{}", "ab".repeat(32))},
        "output_schema": {"ref": "schemas/triage-output", "sha256": format!("sha256:{}", "cd".repeat(32))},
        "evals": [{"ref": "evals/triage-golden", "sha256": format!("sha256:{}", "ef".repeat(32))}],
        "tools": ["k8s__get_pods", "k8s__get_events", "prom__query", "loki__query_range"],
        "safety": {"max_risk": "read_only", "max_steps": 24, "max_tokens_per_run": 200000, "timeout_seconds": 600},
        "executor": {"type": "scripted", "steps": [
            {"type": "tool_call", "key": "pods", "tool": "k8s__get_pods", "arguments": {"namespace": "{{input.namespace}}"}},
            {"type": "tool_call", "key": "events", "tool": "k8s__get_events", "arguments": {"namespace": "{{input.namespace}}", "limit": 50}},
            {"type": "tool_call", "key": "cpu", "tool": "prom__query", "arguments": {"query": "sum(rate(container_cpu_usage_seconds_total[5m]))"}},
            {"type": "output", "key": "summary", "template": "Pods: {{steps.pods.count}}; events: {{steps.events.count}}"}
        ]}
    })
}

pub async fn run(args: &BenchArgs) -> anyhow::Result<()> {
    let (validate_secs, activations) = if args.quick { (3.0, 60) } else { (10.0, 300) };

    // 1. Validation + canonical hashing, one core.
    let doc = typical_agent();
    contracts::validate_and_hash(ContractKind::Agent, &doc).map_err(|e| anyhow::anyhow!("{e}"))?;
    let start = Instant::now();
    let mut n: u64 = 0;
    while start.elapsed().as_secs_f64() < validate_secs {
        for _ in 0..1000 {
            let v = contracts::validate_and_hash(ContractKind::Agent, std::hint::black_box(&doc))
                .expect("valid");
            std::hint::black_box(v.body_hash);
        }
        n += 1000;
    }
    let vps = n as f64 / start.elapsed().as_secs_f64();
    eprintln!("validate+hash: {n} documents, {vps:.0}/s on one core");

    // 2. Activation latency on a scratch database.
    let base = match &args.db.database_url {
        Some(u) => u.clone(),
        None => "postgres://postgres@127.0.0.1:5432/postgres".into(),
    };
    let scratch = scratch_database(&base, "contracts").await?;
    let result = activation_latency(&scratch, args, activations).await;
    drop_scratch(&base, &scratch).await;
    let (lat, approve_lat) = result?;
    let p50 = percentile_ms(&lat, 50.0);
    let p99 = percentile_ms(&lat, 99.0);
    let a50 = percentile_ms(&approve_lat, 50.0);
    eprintln!(
        "activation: {} samples, p50 {p50:.2} ms, p99 {p99:.2} ms (approve p50 {a50:.2} ms)",
        lat.len()
    );
    println!(
        "validations_per_sec={vps:.0} activation_p50_ms={p50:.2} activation_p99_ms={p99:.2} approve_p50_ms={a50:.2} activations={} redis={}",
        lat.len(),
        args.redis.redis_url.is_some()
    );
    Ok(())
}

async fn activation_latency(
    url: &str,
    args: &BenchArgs,
    count: usize,
) -> anyhow::Result<(Vec<Duration>, Vec<Duration>)> {
    let state = std::env::temp_dir().join(format!("awooop-bench-{}", std::process::id()));
    let dbargs = DbArgs {
        database_url: Some(url.to_string()),
        app_database_url: None,
        db_max_connections: 4,
        state_dir: state.clone(),
    };
    let keyring = KeyringArgs {
        keyring: Some(state.join("keyring")),
    };
    let p = Platform::connect(&dbargs, Some(&args.redis), Some(&keyring)).await?;
    let admin = Actor::cli("bench");
    let project = ProjectId::parse("bench")?;
    p.control
        .create_project(
            &admin,
            NewProject {
                project_id: "bench".into(),
                display_name: "bench".into(),
                required_approvals: Some(2),
            },
        )
        .await?;
    crate::platform::create_signing_key(&p, &state.join("keyring"), &project, "bench").await?;
    let out = tenancy::scope(project, async {
        let mut lat = Vec::with_capacity(count);
        let mut approve_lat = Vec::with_capacity(count * 2);
        let base = json!({"max_attempts": 3, "lease_seconds": 30, "heartbeat_seconds": 5, "run_deadline_seconds": 600,
            "idempotency_ttl_seconds": 86400, "retention_days": 7, "max_concurrent_runs": 100, "max_input_bytes": 65536});
        for i in 0..count {
            let mut body = base.clone();
            body["max_concurrent_runs"] = json!(100 + i);
            let d = p.control.create_draft(&admin, ContractKind::Runtime, "default", body).await?;
            let req = p.control.sign_draft(d.draft.draft_id, "bench").await?;
            let rev = p.control.publish(&admin, d.draft.draft_id, req).await?;
            for who in ["alice", "bob"] {
                let t = Instant::now();
                p.control.approve(&Actor::cli(who), rev.revision_id).await?;
                approve_lat.push(t.elapsed());
            }
            let t = Instant::now();
            p.control.activate(&admin, rev.revision_id).await?;
            lat.push(t.elapsed());
        }
        Ok::<_, crate::error::Error>((lat, approve_lat))
    })
    .await;
    drop(p);
    let _ = std::fs::remove_dir_all(&state);
    let (mut lat, mut approve_lat) = out.map_err(|e| anyhow::anyhow!("{e}"))?;
    lat.sort();
    approve_lat.sort();
    Ok((lat, approve_lat))
}
