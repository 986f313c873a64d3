//! `awooop bench approvals`: how long an approved write waits, and what resuming costs.
//!
//! A scripted agent in `auto_remediate` reaches a write tool (`fx__echo`, enabled for the
//! mode) through the real gateway to the Rust MCP fixture; the run parks in
//! `waiting_approval`; the benchmark decides the request through `ApprovalService` (quorum 1:
//! no Project contract) and measures from the moment the decision committed (quorum reached,
//! token minted, run re-queued) to the moment the fixture received the approved `tools/call`
//! (its own receive timestamp, matched by the call's idempotency key). One worker with
//! LISTEN/NOTIFY, its fallback poll raised to 5 s so that only the NOTIFY path is measured and
//! a missed wake-up cannot pass for a slow resume: it is counted in `missed_wakeups` (resumes
//! that took 4 s or more). With the default 500 ms poll, about 1 resume in 25 used to take
//! ~520 ms: the claim woken by the re-queue skipped the run while the call audit held its row
//! lock (migration 0063).
//!
//! Two agents: one whose write is step 1, one with 50 journaled steps before it. Resuming
//! replays nothing (completed steps are read from the journal, not executed), so the second
//! figure must stay close to the first: `resume_50_steps_p50_ms` against `resume_p50_ms`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use uuid::Uuid;

use super::{drop_scratch, percentile_ms, scratch_database};
use crate::auth::Actor;
use crate::config::BenchArgs;
use crate::contracts::ContractKind;
use crate::control::MigrationMode;
use crate::gateway::audit::CallAudit;
use crate::gateway::credentials::{CredentialResolver, LocalPolicy};
use crate::gateway::in_process::{InProcessGateway, KeyMinter};
use crate::gateway::keys::GatewayKeys;
use crate::gateway::upstream::{UpstreamConfig, Upstreams};
use crate::gateway::{Gateway, GatewayConfig};
use crate::runtime::approvals::{ApprovalService, Decision};
use crate::runtime::executor::{GuardedGateway, ScriptedExecutor};
use crate::runtime::worker::{Worker, WorkerConfig, shutdown_channel};
use crate::runtime::{CreateRun, RunService};
use crate::tenancy::{self, ProjectId};
use awooop_testkit::fixture::{FixtureOptions, FixtureServer};

const MASTER: &str = "bench-approvals-master-key-0123456789abcdef";
/// The worker's fallback poll here (the default is 500 ms): see the module docs.
const POLL: Duration = Duration::from_secs(5);

pub async fn run(args: &BenchArgs) -> anyhow::Result<()> {
    let base = args
        .db
        .database_url
        .clone()
        .unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let scratch = scratch_database(&base, "approvals").await?;
    let res = bench(&scratch, args.quick, args.runs).await;
    drop_scratch(&base, &scratch).await;
    println!("{}", res?);
    Ok(())
}

fn agent(pre_steps: usize) -> Value {
    let mut steps: Vec<Value> = (0..pre_steps)
        .map(|i| json!({"type": "output", "key": format!("s{i}"), "template": "step {{input.n}}"}))
        .collect();
    steps.push(
        json!({"type": "tool_call", "key": "write", "tool": "fx__echo",
                      "arguments": {"name": "web", "replicas": "{{input.n}}"}}),
    );
    json!({"display_name": "writer", "context_domain": "bench", "tools": ["fx__echo"],
           "safety": {"max_risk": "write", "max_steps": 60, "max_tokens_per_run": 1, "timeout_seconds": 600},
           "executor": {"type": "scripted", "steps": steps}})
}

async fn bench(url: &str, quick: bool, runs: Option<usize>) -> anyhow::Result<String> {
    let (p, project, _state) = super::bench_project(url, "approvals", 16).await?;
    let upstream = FixtureServer::start(FixtureOptions::default()).await?;
    let admin = Actor::cli("bench");
    tenancy::scope(project.clone(), async {
        p.control
            .set_mode(&admin, MigrationMode::AutoRemediate, true, Some("bench"))
            .await?;
        let gateway_body = json!({
            "providers": [{"name": "fx", "transport": {"type": "streamable_http", "url": upstream.url()}}],
            "tools": [{"provider": "fx", "name": "echo", "risk": "write", "environments": ["dev"],
                       "enabled_in_modes": ["auto_remediate"], "input_schema": {"type": "object"}}],
            "grants": [{"agent": "short", "tools": ["fx__echo"], "environments": ["dev"]},
                       {"agent": "long", "tools": ["fx__echo"], "environments": ["dev"]}]
        });
        for (kind, name, body) in [
            (ContractKind::McpGateway, "default", gateway_body),
            (ContractKind::Agent, "short", agent(0)),
            (ContractKind::Agent, "long", agent(50)),
        ] {
            let d = p.control.create_draft(&admin, kind, name, body).await?;
            let req = p.control.sign_draft(d.draft.draft_id, "bench").await?;
            let rev = p.control.publish(&admin, d.draft.draft_id, req).await?;
            p.control.approve(&Actor::cli("a"), rev.revision_id).await?;
            p.control.activate(&admin, rev.revision_id).await?;
        }
        Ok::<_, crate::error::Error>(())
    })
    .await?;
    let keys = GatewayKeys::derive(MASTER);
    let (audit, _writer) = CallAudit::spawn(p.control.db().clone());
    let gateway = Arc::new(Gateway::new(
        p.control.db().clone(),
        p.control.coord().clone(),
        GatewayKeys::derive(MASTER),
        CredentialResolver::new(None, LocalPolicy::default(), Duration::from_secs(30)),
        Arc::new(Upstreams::guarded(
            UpstreamConfig::default(),
            awooop_policy::PolicySource::fixed(Vec::new(), &[], true),
        )),
        audit,
        GatewayConfig::default(),
    ));
    let tools = Arc::new(InProcessGateway::new(gateway));
    let exec = Arc::new(ScriptedExecutor::new(GuardedGateway::new(
        p.control.clone(),
        tools,
    )));
    let mut cfg = WorkerConfig::new("bench-approvals");
    cfg.slots = 8;
    cfg.poll = POLL;
    let worker = Arc::new(Worker::new(
        p.control.db().pool_for_health().clone(),
        p.control.clone(),
        exec,
        cfg,
    ));
    let (stop, rx) = shutdown_channel();
    let task = tokio::spawn(worker.run(rx));
    let svc = ApprovalService::new(
        p.control.clone(),
        Some(Arc::new(KeyMinter::new(&keys, "dev"))),
    );
    let n = runs.unwrap_or(if quick { 25 } else { 200 });
    let ctx = Ctx {
        p: &p,
        project: &project,
        svc: &svc,
        upstream: &upstream,
    };
    // Warm-up (connections, caches, the upstream session).
    ctx.one("short", 0, 0).await?;
    let mut short = Vec::with_capacity(n);
    let mut long = Vec::with_capacity(n);
    // Alternate the two agents so neither always runs on a warmer machine.
    for i in 0..n {
        short.push(ctx.one("short", 0, i + 1).await?);
        long.push(ctx.one("long", 50, i + 1).await?);
    }
    let _ = stop.send(true);
    let _ = task.await;
    short.sort();
    long.sort();
    let missed = short
        .iter()
        .chain(&long)
        .filter(|d| **d >= POLL * 4 / 5)
        .count();
    eprintln!(
        "approved → upstream: 1-step run p50 {:.2} p99 {:.2} max {:.2} ms | 50-step run p50 {:.2} p99 {:.2} max {:.2} ms ({n} runs each)",
        percentile_ms(&short, 50.0),
        percentile_ms(&short, 99.0),
        percentile_ms(&short, 100.0),
        percentile_ms(&long, 50.0),
        percentile_ms(&long, 99.0),
        percentile_ms(&long, 100.0),
    );
    Ok(format!(
        "runs={n} resume_p50_ms={:.2} resume_p99_ms={:.2} resume_max_ms={:.2} resume_50_steps_p50_ms={:.2} resume_50_steps_p99_ms={:.2} missed_wakeups={missed}",
        percentile_ms(&short, 50.0),
        percentile_ms(&short, 99.0),
        percentile_ms(&short, 100.0),
        percentile_ms(&long, 50.0),
        percentile_ms(&long, 99.0),
    ))
}

struct Ctx<'a> {
    p: &'a crate::platform::Platform,
    project: &'a ProjectId,
    svc: &'a ApprovalService,
    upstream: &'a FixtureServer,
}

impl Ctx<'_> {
    /// One run of `agent` to its approval, approved; the time from the committed decision to
    /// the upstream receiving the call.
    async fn one(&self, agent: &str, step: i32, i: usize) -> anyhow::Result<Duration> {
        let runs = RunService::new(self.p.control.clone());
        let run_id = tenancy::scope(
            self.project.clone(),
            runs.create(
                &Actor::cli("bench"),
                CreateRun {
                    agent: agent.into(),
                    input: json!({"n": i}),
                    mode: None,
                    reply_to: None,
                },
                None,
                None,
            ),
        )
        .await?
        .run_id;
        let request = self.wait_request(run_id).await?;
        let key = format!("{run_id}:{step}");
        // From before the decision (it includes the decision's own transaction: the quorum,
        // the token, the re-queue) to the upstream's receipt of the call.
        let decided = Instant::now();
        tenancy::scope(
            self.project.clone(),
            self.svc
                .decide("bench-approver", "bench", request, Decision::Approve, None),
        )
        .await?;
        let deadline = decided + Duration::from_secs(10);
        loop {
            if let Some(c) = self
                .upstream
                .tool_calls()
                .into_iter()
                .rev()
                .find(|c| c.idempotency_header.as_deref() == Some(key.as_str()))
            {
                return Ok(c.at.saturating_duration_since(decided));
            }
            anyhow::ensure!(Instant::now() < deadline, "the approved call never arrived");
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
    }

    async fn wait_request(&self, run_id: Uuid) -> anyhow::Result<Uuid> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let found: Option<Uuid> = tenancy::scope(self.project.clone(), async {
                let mut tx = self.p.control.db().tenant().await?;
                let id = sqlx::query_scalar(
                    "SELECT request_id FROM approval_requests WHERE run_id = $1 AND state = 'pending'",
                )
                .bind(run_id)
                .fetch_optional(&mut *tx)
                .await?;
                tx.commit().await?;
                Ok::<_, crate::error::Error>(id)
            })
            .await?;
            if let Some(id) = found {
                return Ok(id);
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "run {run_id} never asked for approval"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
}
