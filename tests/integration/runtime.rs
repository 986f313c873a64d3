//! The durable run runtime against real PostgreSQL: the state machine in SQL, idempotency,
//! workers claiming with SKIP LOCKED, exactly-once completion, reaping a killed worker, fenced
//! late writes, approvals, and shadow mode enforced at the tool boundary.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use awooop::auth::Actor;
use awooop::contracts::ContractKind;
use awooop::control::{ControlPlane, MigrationMode};
use awooop::coord::Coord;
use awooop::runtime::executor::{
    Executor, GuardedGateway, Journal, Outcome, RunContext, ScriptedExecutor, ToolCall, ToolGateway,
};
use awooop::runtime::worker::{Worker, WorkerConfig, shutdown_channel};
use awooop::runtime::{CreateRun, RunService, repo};
use awooop::tenancy::{self, ProjectId};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::support::*;

fn echo_agent() -> Value {
    json!({
        "display_name": "Echo", "context_domain": "demo",
        "safety": {"max_risk": "read_only", "max_steps": 4, "max_tokens_per_run": 1, "timeout_seconds": 60},
        "executor": {"type": "scripted", "steps": [{"type": "output", "key": "echo", "template": "hello {{input.name}}"}]}
    })
}

fn gateway_contract() -> Value {
    let obj = json!({"type": "object"});
    json!({
        "providers": [{"name": "k8s", "transport": {"type": "streamable_http", "url": "http://127.0.0.1:1/mcp"}}],
        "tools": [
            {"provider": "k8s", "name": "get_pods", "risk": "read_only", "environments": ["dev"], "input_schema": obj},
            {"provider": "k8s", "name": "restart", "risk": "write", "environments": ["dev"], "enabled_in_modes": ["suggest", "auto_remediate"], "input_schema": obj}
        ]
    })
}

/// A project with an active echo agent (and an MCP gateway contract), ready for runs.
async fn runnable_project(cp: &ControlPlane, id: &str) -> ProjectId {
    let p = project(cp, id, 1).await;
    tenancy::scope(p.clone(), async {
        let r = publish(cp, ContractKind::Agent, "echo", echo_agent()).await;
        approve_and_activate(cp, r, 1).await;
        let r = publish(cp, ContractKind::McpGateway, "default", gateway_contract()).await;
        approve_and_activate(cp, r, 1).await;
    })
    .await;
    p
}

/// Start a run of `agent` in project `p` (no idempotency key, no traceparent).
async fn start(runs: &RunService, p: &ProjectId, agent: &str, input: Value) -> Uuid {
    tenancy::scope(
        p.clone(),
        runs.create(&runner(), req(agent, input), None, None),
    )
    .await
    .unwrap()
    .run_id
}

fn runner() -> Actor {
    Actor::cli("runner")
}

fn req(agent: &str, input: Value) -> CreateRun {
    CreateRun {
        agent: agent.into(),
        input,
        mode: None,
        reply_to: None,
    }
}

/// Records calls; stands in for the upstream MCP server behind the boundary.
#[derive(Default)]
struct RecordingUpstream {
    calls: AtomicUsize,
}

#[async_trait]
impl ToolGateway for RecordingUpstream {
    async fn call_tool(&self, call: &ToolCall) -> awooop::error::Result<Value> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        Ok(json!({"tool": call.tool, "count": 3}))
    }
}

fn worker(
    t: &TestDb,
    cp: &ControlPlane,
    id: &str,
    upstream: Arc<dyn ToolGateway>,
    lease_ms: u64,
) -> Arc<Worker> {
    let exec = Arc::new(ScriptedExecutor::new(GuardedGateway::new(
        cp.clone(),
        upstream,
    )));
    worker_with(t, cp, id, exec, lease_ms)
}

fn worker_with(
    t: &TestDb,
    cp: &ControlPlane,
    id: &str,
    exec: Arc<dyn Executor>,
    lease_ms: u64,
) -> Arc<Worker> {
    worker_cfg(t, cp, exec, test_config(id, lease_ms))
}

fn test_config(id: &str, lease_ms: u64) -> WorkerConfig {
    let mut cfg = WorkerConfig::new(id);
    cfg.slots = 8;
    cfg.lease = Duration::from_millis(lease_ms);
    cfg.heartbeat = Duration::from_millis(lease_ms / 4);
    cfg.poll = Duration::from_millis(50);
    cfg.reap_every = Duration::from_millis(100);
    cfg.grace = Duration::from_secs(2);
    cfg
}

fn worker_cfg(
    t: &TestDb,
    cp: &ControlPlane,
    exec: Arc<dyn Executor>,
    cfg: WorkerConfig,
) -> Arc<Worker> {
    Arc::new(Worker::new(t.app.clone(), cp.clone(), exec, cfg))
}

async fn wait_state(runs: &RunService, p: &ProjectId, id: Uuid, want: &str, secs: u64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let d = tenancy::scope(p.clone(), runs.get(id)).await.unwrap();
        if d.run.state == want {
            return serde_json::to_value(d).unwrap();
        }
        assert!(
            Instant::now() < deadline,
            "run {id} is {} (wanted {want}): {:?}",
            d.run.state,
            d.run.error_code
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test]
async fn run_creation_rejects_bad_input_and_honours_idempotency() {
    let t = TestDb::new().await;
    let cp = t.control(Coord::none());
    let p = runnable_project(&cp, "alpha").await;
    let runs = RunService::new(cp.clone());
    tenancy::scope(p.clone(), async {
        assert_code(
            runs.create(&runner(), req("ghost", json!({})), None, None)
                .await,
            "E-RUN-007",
        );
        assert_code(
            runs.create(&runner(), req("echo", json!({})), Some("bad key!"), None)
                .await,
            "E-RUN-004",
        );
        assert_code(
            runs.create(&runner(), req("echo", json!({})), None, Some("00-zz-yy-01"))
                .await,
            "E-RUN-009",
        );
        assert_code(
            runs.create(
                &runner(),
                req("echo", json!({"pad": "x".repeat(300_000)})),
                None,
                None,
            )
            .await,
            "E-RUN-008",
        );
        let mut r = req("echo", json!({}));
        r.mode = Some("auto_remediate".into());
        assert_code(runs.create(&runner(), r, None, None).await, "E-RUN-010");
        assert_code(
            runs.create(
                &Actor {
                    principal: "r".into(),
                    roles: vec![awooop::auth::Role::Reader],
                    admin: false,
                },
                req("echo", json!({})),
                None,
                None,
            )
            .await,
            "E-AUTH-003",
        );
        // Nothing was written by the rejected requests.
        assert!(runs.list(Default::default()).await.unwrap().runs.is_empty());

        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let a = runs
            .create(
                &runner(),
                req("echo", json!({"name": "x"})),
                Some("k-1"),
                Some(tp),
            )
            .await
            .unwrap();
        assert_eq!(a.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(a.mode, "shadow");
        assert_eq!(a.run_id.get_version_num(), 7);
        let b = runs
            .create(
                &runner(),
                req("echo", json!({"name": "x"})),
                Some("k-1"),
                None,
            )
            .await
            .unwrap();
        assert_eq!(a.run_id, b.run_id);
        assert!(b.replayed);
        assert_code(
            runs.create(
                &runner(),
                req("echo", json!({"name": "y"})),
                Some("k-1"),
                None,
            )
            .await,
            "E-RUN-003",
        );
        let d = runs.get(a.run_id).await.unwrap();
        assert_eq!(d.run.state, "queued");
        let active = cp.active(ContractKind::Agent, "echo").await.unwrap();
        assert_eq!(d.run.agent_revision_id, active.pointer.revision_id);
        assert_eq!(d.run.agent_body_hash, active.pointer.body_hash);
        assert_eq!(runs.list(Default::default()).await.unwrap().runs.len(), 1);
    })
    .await;
    // Another project cannot see the run: not found, like a missing one.
    let other = runnable_project(&cp, "beta").await;
    let any = tenancy::scope(p.clone(), runs.list(Default::default()))
        .await
        .unwrap()
        .runs[0]
        .run_id;
    assert_code(
        tenancy::scope(other.clone(), runs.get(any)).await,
        "E-RUN-001",
    );
    assert_code(
        tenancy::scope(other, runs.cancel(&runner(), any)).await,
        "E-RUN-001",
    );
    t.cleanup().await;
}

#[tokio::test]
async fn database_rejects_illegal_state_transitions() {
    let t = TestDb::new().await;
    let cp = t.control(Coord::none());
    let p = runnable_project(&cp, "alpha").await;
    let runs = RunService::new(cp.clone());
    let id = start(&runs, &p, "echo", json!({})).await;
    let mut tx = scoped_tx(&t.app, "alpha").await;
    let err = sqlx::query("UPDATE runs SET state = 'succeeded' WHERE run_id = $1")
        .bind(id)
        .execute(&mut *tx)
        .await
        .unwrap_err();
    assert_eq!(
        err.as_database_error().unwrap().code().as_deref(),
        Some("AW002")
    );
    tx.rollback().await.unwrap();
    tenancy::scope(p, async {
        runs.cancel(&runner(), id).await.unwrap();
        // Terminal: cancelling again is an illegal transition, in code.
        assert_code(runs.cancel(&runner(), id).await, "E-RUN-002");
    })
    .await;
    t.cleanup().await;
}

#[tokio::test]
async fn four_workers_complete_2000_runs_exactly_once() {
    let t = TestDb::new().await;
    let cp = t.control(Coord::none());
    let p = runnable_project(&cp, "alpha").await;
    let runs = RunService::new(cp.clone());
    tenancy::scope(p.clone(), async {
        for i in 0..2000 {
            runs.create(&runner(), req("echo", json!({"name": i})), None, None)
                .await
                .unwrap();
        }
    })
    .await;
    let (stop, rx) = shutdown_channel();
    let upstream: Arc<dyn ToolGateway> = Arc::new(RecordingUpstream::default());
    // Two workers claim successors in their completion transactions (`refill_on_complete`,
    // off by default since session 9), two only from their claim loops: both paths race here.
    let workers: Vec<_> = (0..4)
        .map(|i| {
            let mut cfg = test_config(&format!("w{i}"), 10_000);
            cfg.refill_on_complete = i < 2;
            let exec = Arc::new(ScriptedExecutor::new(GuardedGateway::new(
                cp.clone(),
                upstream.clone(),
            )));
            worker_cfg(&t, &cp, exec, cfg)
        })
        .collect();
    let handles: Vec<_> = workers
        .iter()
        .map(|w| tokio::spawn(w.clone().run(rx.clone())))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let mut tx = scoped_tx(&t.app, "alpha").await;
        let done: i64 = sqlx::query_scalar("SELECT count(*) FROM runs WHERE state = 'succeeded'")
            .fetch_one(&mut *tx)
            .await
            .unwrap();
        tx.rollback().await.unwrap();
        if done == 2000 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {done} of 2000 runs finished"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.send(true).unwrap();
    for h in handles {
        h.await.unwrap().unwrap();
    }
    let mut tx = scoped_tx(&t.app, "alpha").await;
    let (runs_n, attempts_max, steps, distinct): (i64, i32, i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM runs), (SELECT max(attempt) FROM runs), \
         (SELECT count(*) FROM run_steps), (SELECT count(DISTINCT run_id) FROM run_steps)",
    )
    .fetch_one(&mut *tx)
    .await
    .unwrap();
    assert_eq!(
        (runs_n, attempts_max, steps, distinct),
        (2000, 1, 2000, 2000)
    );
    let claimed: u64 = workers
        .iter()
        .map(|w| w.stats.claimed.load(Ordering::Relaxed))
        .sum();
    let succeeded: u64 = workers
        .iter()
        .map(|w| w.stats.succeeded.load(Ordering::Relaxed))
        .sum();
    assert_eq!((claimed, succeeded), (2000, 2000));
    // Outputs are the rendered templates, and the trace id follows the run into its steps.
    let bad: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM runs r JOIN run_steps s USING (project_id, run_id) \
         WHERE r.output->>'result' <> 'hello ' || (r.input->>'name') OR s.trace_id <> r.trace_id",
    )
    .fetch_one(&mut *tx)
    .await
    .unwrap();
    assert_eq!(bad, 0);
    tx.rollback().await.unwrap();
    t.cleanup().await;
}

/// Blocks forever on the first attempt of every run (a hung or dying worker); later attempts
/// run the real scripted executor.
struct HangFirstAttempt {
    inner: ScriptedExecutor,
}

#[async_trait]
impl Executor for HangFirstAttempt {
    async fn execute(
        &self,
        ctx: &RunContext,
        journal: &mut Journal,
    ) -> awooop::error::Result<Outcome> {
        if ctx.attempt == 1 {
            std::future::pending::<()>().await;
        }
        self.inner.execute(ctx, journal).await
    }
}

#[tokio::test]
async fn a_killed_worker_is_reaped_and_its_late_write_discarded() {
    let t = TestDb::new().await;
    let cp = t.control(Coord::none());
    let p = runnable_project(&cp, "alpha").await;
    let runs = RunService::new(cp.clone());
    let id = start(&runs, &p, "echo", json!({"name": "z"})).await;

    // The victim has its own pool so that killing it also drops its connections.
    let victim_pool = awooop::db::connect_app(&t.url, 4).await.unwrap();
    let victim_cp = ControlPlane::new(
        tenancy::Db::new(victim_pool.clone()),
        Coord::none(),
        test_keyring(),
    );
    let hang = Arc::new(HangFirstAttempt {
        inner: ScriptedExecutor::new(GuardedGateway::new(
            victim_cp.clone(),
            Arc::new(RecordingUpstream::default()),
        )),
    });
    let mut cfg = WorkerConfig::new("victim");
    cfg.lease = Duration::from_millis(600);
    cfg.heartbeat = Duration::from_millis(150);
    cfg.poll = Duration::from_millis(50);
    let victim = Arc::new(Worker::new(victim_pool.clone(), victim_cp, hang, cfg));
    let (_vstop, vrx) = shutdown_channel();
    let vh = tokio::spawn(victim.clone().run(vrx));
    // Wait until the victim holds the run, then kill it: task aborted, connections closed.
    let deadline = Instant::now() + Duration::from_secs(10);
    while victim.stats.claimed.load(Ordering::Relaxed) == 0 {
        assert!(Instant::now() < deadline, "victim never claimed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    vh.abort();
    victim_pool.close().await;

    let rescuer = worker(
        &t,
        &cp,
        "rescuer",
        Arc::new(RecordingUpstream::default()),
        2_000,
    );
    let (stop, rx) = shutdown_channel();
    let rh = tokio::spawn(rescuer.clone().run(rx));
    let done = wait_state(&runs, &p, id, "succeeded", 20).await;
    assert_eq!(done["attempt"], 2);
    assert_eq!(done["output"]["result"], "hello z");
    assert!(rescuer.stats.reaped.load(Ordering::Relaxed) >= 1);
    // The dead attempt's late result changes nothing.
    let landed = tenancy::scope(p.clone(), async {
        let mut tx = cp.db().tenant().await.unwrap();
        let l = repo::finish(
            &mut tx,
            id,
            Some(1),
            awooop::runtime::RunState::Failed,
            None,
            Some(("E-X", "late")),
        )
        .await
        .unwrap();
        tx.commit().await.unwrap();
        l
    })
    .await;
    assert!(!landed);
    assert_eq!(
        tenancy::scope(p.clone(), runs.get(id))
            .await
            .unwrap()
            .run
            .state,
        "succeeded"
    );
    stop.send(true).unwrap();
    rh.await.unwrap().unwrap();
    t.cleanup().await;
}

#[tokio::test]
async fn shadow_runs_never_reach_write_tools_but_read_only_calls_pass() {
    let t = TestDb::new().await;
    let cp = t.control(Coord::none());
    let p = runnable_project(&cp, "alpha").await;
    let agent = |tool: &str, risk: &str| {
        json!({
            "display_name": "Tools", "context_domain": "infra", "tools": [tool],
            "safety": {"max_risk": risk, "max_steps": 4, "max_tokens_per_run": 1, "timeout_seconds": 60},
            "executor": {"type": "scripted", "steps": [
                {"type": "tool_call", "key": "call", "tool": tool, "arguments": {"ns": "{{input.ns}}"}},
                {"type": "output", "key": "out", "template": "{{steps.call.count}} pods"}
            ]}
        })
    };
    tenancy::scope(p.clone(), async {
        for (name, body) in [
            ("reader", agent("k8s__get_pods", "read_only")),
            ("writer", agent("k8s__restart", "write")),
        ] {
            let r = publish(&cp, ContractKind::Agent, name, body).await;
            approve_and_activate(&cp, r, 1).await;
        }
    })
    .await;
    let runs = RunService::new(cp.clone());
    let (r1, r2) = tenancy::scope(p.clone(), async {
        (
            runs.create(&runner(), req("reader", json!({"ns": "prod"})), None, None)
                .await
                .unwrap()
                .run_id,
            runs.create(&runner(), req("writer", json!({"ns": "prod"})), None, None)
                .await
                .unwrap()
                .run_id,
        )
    })
    .await;
    let upstream = Arc::new(RecordingUpstream::default());
    let w = worker(&t, &cp, "w", upstream.clone(), 5_000);
    let (stop, rx) = shutdown_channel();
    let h = tokio::spawn(w.run(rx));
    let ok = wait_state(&runs, &p, r1, "succeeded", 20).await;
    assert_eq!(ok["output"]["result"], "3 pods");
    let blocked = wait_state(&runs, &p, r2, "failed", 20).await;
    assert_eq!(blocked["error_code"], "E-RUN-013");
    // Exactly one upstream call: the read-only one. The write never left the platform.
    assert_eq!(upstream.calls.load(Ordering::SeqCst), 1);
    let audit = tenancy::scope(p.clone(), cp.audit(200)).await.unwrap();
    assert!(audit.iter().any(|a| a.action == "tool.call"
        && a.outcome == "denied"
        && a.target.as_deref() == Some("k8s__restart")));
    // In auto_remediate the same write call still needs the agent's ceiling: it passes now.
    tenancy::scope(p.clone(), async {
        cp.set_mode(&admin(), MigrationMode::AutoRemediate, true, Some("test"))
            .await
            .unwrap();
        let mut r = req("writer", json!({"ns": "dev"}));
        r.mode = Some("auto_remediate".into());
        let id = runs.create(&runner(), r, None, None).await.unwrap().run_id;
        wait_state(&runs, &p, id, "succeeded", 20).await;
    })
    .await;
    assert_eq!(upstream.calls.load(Ordering::SeqCst), 2);
    stop.send(true).unwrap();
    h.await.unwrap().unwrap();
    t.cleanup().await;
}

#[tokio::test]
async fn waiting_approval_resumes_without_repeating_completed_steps() {
    let t = TestDb::new().await;
    let cp = t.control(Coord::none());
    let p = runnable_project(&cp, "alpha").await;
    let body = json!({
        "display_name": "Gate", "context_domain": "infra", "tools": ["k8s__get_pods"],
        "safety": {"max_risk": "read_only", "max_steps": 4, "max_tokens_per_run": 1, "timeout_seconds": 60},
        "executor": {"type": "scripted", "steps": [
            {"type": "tool_call", "key": "look", "tool": "k8s__get_pods"},
            {"type": "wait_approval", "key": "ok", "reason": "go ahead?"},
            {"type": "output", "key": "done", "template": "approved by {{steps.ok.approved_by}}"}
        ]}
    });
    tenancy::scope(p.clone(), async {
        let r = publish(&cp, ContractKind::Agent, "gate", body).await;
        approve_and_activate(&cp, r, 1).await;
    })
    .await;
    let runs = RunService::new(cp.clone());
    let id = start(&runs, &p, "gate", json!({})).await;
    let upstream = Arc::new(RecordingUpstream::default());
    let w = worker(&t, &cp, "w", upstream.clone(), 5_000);
    let (stop, rx) = shutdown_channel();
    let h = tokio::spawn(w.run(rx));
    let waiting = wait_state(&runs, &p, id, "waiting_approval", 20).await;
    assert_eq!(waiting["output"]["reason"], "go ahead?");
    tenancy::scope(p.clone(), runs.approve(&Actor::cli("carol"), id, true))
        .await
        .unwrap();
    let done = wait_state(&runs, &p, id, "succeeded", 20).await;
    assert_eq!(done["output"]["result"], "approved by carol");
    // The tool call before the approval ran once, not again on resume.
    assert_eq!(upstream.calls.load(Ordering::SeqCst), 1);
    let succeeded_steps = done["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["status"] == "succeeded")
        .count();
    assert_eq!(succeeded_steps, 3);
    // A rejected approval fails with a structured code.
    let id2 = start(&runs, &p, "gate", json!({})).await;
    wait_state(&runs, &p, id2, "waiting_approval", 20).await;
    tenancy::scope(p.clone(), runs.approve(&Actor::cli("carol"), id2, false))
        .await
        .unwrap();
    let rejected = wait_state(&runs, &p, id2, "failed", 5).await;
    assert_eq!(rejected["error_code"], "E-RUN-011");
    stop.send(true).unwrap();
    h.await.unwrap().unwrap();
    t.cleanup().await;
}

#[tokio::test]
async fn shadow_runs_never_write_outbound_messages() {
    let t = TestDb::new().await;
    let cp = t.control(Coord::none());
    let p = runnable_project(&cp, "alpha").await;
    let runs = RunService::new(cp.clone());
    let reply = awooop::runtime::outbound::ReplyTo {
        channel: "ops-telegram".into(),
        conversation: "-100123".into(),
    };
    let mk = |mode: Option<&str>| CreateRun {
        agent: "echo".into(),
        input: json!({"name": "ops"}),
        mode: mode.map(Into::into),
        reply_to: Some(reply.clone()),
    };
    let shadow = tenancy::scope(p.clone(), runs.create(&runner(), mk(None), None, None))
        .await
        .unwrap();
    assert_eq!(shadow.mode, "shadow");
    let w = worker(&t, &cp, "w", Arc::new(RecordingUpstream::default()), 5_000);
    let (stop, rx) = shutdown_channel();
    let h = tokio::spawn(w.run(rx));
    wait_state(&runs, &p, shadow.run_id, "succeeded", 20).await;
    // Canary: the reply is queued.
    tenancy::scope(
        p.clone(),
        cp.set_mode(&admin(), MigrationMode::Canary, false, None),
    )
    .await
    .unwrap();
    let canary = tenancy::scope(p.clone(), runs.create(&runner(), mk(None), None, None))
        .await
        .unwrap();
    assert_eq!(canary.mode, "canary");
    wait_state(&runs, &p, canary.run_id, "succeeded", 20).await;
    // A shadow-mode run requested explicitly in a canary project is still refused outbound.
    let explicit = tenancy::scope(
        p.clone(),
        runs.create(&runner(), mk(Some("shadow")), None, None),
    )
    .await
    .unwrap();
    wait_state(&runs, &p, explicit.run_id, "succeeded", 20).await;
    stop.send(true).unwrap();
    h.await.unwrap().unwrap();

    let mut tx = scoped_tx(&t.app, "alpha").await;
    let rows: Vec<(Uuid, Value)> = sqlx::query_as("SELECT run_id, body FROM outbound_messages")
        .fetch_all(&mut *tx)
        .await
        .unwrap();
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0].0, canary.run_id);
    assert_eq!(rows[0].1["result"], "hello ops");
    // The database itself refuses a shadow run's message, whoever writes it.
    let err = sqlx::query(
        "INSERT INTO outbound_messages (project_id, message_id, run_id, channel, conversation, kind, body, trace_id) \
         VALUES ('alpha', gen_random_uuid(), $1, 'x', 'y', 'progress', '{}', 't')",
    )
    .bind(shadow.run_id)
    .execute(&mut *tx)
    .await
    .unwrap_err();
    assert_eq!(
        err.as_database_error().unwrap().code().as_deref(),
        Some("AW003")
    );
    tx.rollback().await.unwrap();
    let audit = tenancy::scope(p.clone(), cp.audit(500)).await.unwrap();
    let suppressed: Vec<_> = audit
        .iter()
        .filter(|a| a.action == "outbound.suppressed")
        .collect();
    assert_eq!(suppressed.len(), 2);
    assert!(suppressed.iter().all(|a| a.trace_id.is_some()));
    t.cleanup().await;
}

#[tokio::test]
async fn retention_removes_old_finished_runs_and_expired_keys_only() {
    let t = TestDb::new().await;
    let cp = t.control(Coord::none());
    let p = runnable_project(&cp, "alpha").await;
    let runs = RunService::new(cp.clone());
    let (old, fresh, queued) = tenancy::scope(p.clone(), async {
        (
            runs.create(
                &runner(),
                req("echo", json!({"name": 1})),
                Some("old-key"),
                None,
            )
            .await
            .unwrap()
            .run_id,
            runs.create(&runner(), req("echo", json!({"name": 2})), None, None)
                .await
                .unwrap()
                .run_id,
            runs.create(&runner(), req("echo", json!({"name": 3})), None, None)
                .await
                .unwrap()
                .run_id,
        )
    })
    .await;
    let w = worker(&t, &cp, "w", Arc::new(RecordingUpstream::default()), 5_000);
    let (stop, rx) = shutdown_channel();
    let h = tokio::spawn(w.clone().run(rx));
    wait_state(&runs, &p, old, "succeeded", 20).await;
    wait_state(&runs, &p, fresh, "succeeded", 20).await;
    wait_state(&runs, &p, queued, "succeeded", 20).await;
    stop.send(true).unwrap();
    h.await.unwrap().unwrap();
    // Age one run past the retention window and expire its key (as the owner).
    let mut tx = scoped_tx(&t.owner, "alpha").await;
    sqlx::query("UPDATE runs SET finished_at = now() - interval '40 days' WHERE run_id = $1")
        .bind(old)
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::query("UPDATE idempotency_keys SET expires_at = now() - interval '1 second'")
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let (r, k) = w.retention_pass().await.unwrap();
    assert_eq!((r, k), (1, 1));
    assert_code(tenancy::scope(p.clone(), runs.get(old)).await, "E-RUN-001");
    assert!(tenancy::scope(p.clone(), runs.get(fresh)).await.is_ok());
    let mut tx = scoped_tx(&t.app, "alpha").await;
    let steps: i64 = sqlx::query_scalar("SELECT count(*) FROM run_steps WHERE run_id = $1")
        .bind(old)
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    assert_eq!(steps, 0, "journal rows cascade");
    // Its events go too (migration 0080's trigger; before, the foreign key's cascade), the
    // kept run's stay.
    let events: (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM run_events WHERE run_id = $1), \
                (SELECT count(*) FROM run_events WHERE run_id = $2)",
    )
    .bind(old)
    .bind(fresh)
    .fetch_one(&mut *tx)
    .await
    .unwrap();
    assert_eq!(events.0, 0, "events go with their run");
    assert!(events.1 >= 4, "the kept run's events stay: {events:?}");
    tx.rollback().await.unwrap();
    t.cleanup().await;
}

#[tokio::test]
async fn graceful_shutdown_releases_in_flight_runs_to_the_queue() {
    let t = TestDb::new().await;
    let cp = t.control(Coord::none());
    let p = runnable_project(&cp, "alpha").await;
    let runs = RunService::new(cp.clone());
    let id = start(&runs, &p, "echo", json!({"name": "g"})).await;
    let hang = Arc::new(HangFirstAttempt {
        inner: ScriptedExecutor::new(GuardedGateway::new(
            cp.clone(),
            Arc::new(RecordingUpstream::default()),
        )),
    });
    let mut cfg = WorkerConfig::new("leaving");
    cfg.poll = Duration::from_millis(50);
    cfg.grace = Duration::from_millis(300);
    let w = Arc::new(Worker::new(t.app.clone(), cp.clone(), hang, cfg));
    let (stop, rx) = shutdown_channel();
    let h = tokio::spawn(w.clone().run(rx));
    wait_state(&runs, &p, id, "running", 10).await;
    stop.send(true).unwrap();
    h.await.unwrap().unwrap();
    // Released at once (not left to the lease), ready for the next worker.
    let d = tenancy::scope(p.clone(), runs.get(id)).await.unwrap();
    assert_eq!((d.run.state.as_str(), d.run.attempt), ("retrying", 1));
    let next = worker(
        &t,
        &cp,
        "next",
        Arc::new(RecordingUpstream::default()),
        5_000,
    );
    let (stop, rx) = shutdown_channel();
    let h = tokio::spawn(next.run(rx));
    let done = wait_state(&runs, &p, id, "succeeded", 20).await;
    assert_eq!(done["attempt"], 2);
    stop.send(true).unwrap();
    h.await.unwrap().unwrap();
    t.cleanup().await;
}

#[tokio::test]
async fn heartbeats_never_wait_for_rows_locked_by_a_completion() {
    // Regression: a heartbeat blocking on a row its own completion writer had locked (in
    // another order) deadlocked and stalled whole batches until their leases expired.
    let t = TestDb::new().await;
    let cp = t.control(Coord::none());
    let p = runnable_project(&cp, "alpha").await;
    let runs = RunService::new(cp.clone());
    let id = start(&runs, &p, "echo", json!({})).await;
    let claimed = repo::worker_claim(&t.app, "hb", 1, 30.0).await.unwrap();
    assert_eq!(claimed[0].run_id, id);
    let mut lock = scoped_tx(&t.app, "alpha").await;
    sqlx::query("SELECT 1 FROM runs WHERE run_id = $1 FOR UPDATE")
        .bind(id)
        .execute(&mut *lock)
        .await
        .unwrap();
    let extended = tokio::time::timeout(
        Duration::from_secs(3),
        repo::worker_heartbeat(&t.app, "hb", &[(id, 1)], 30.0),
    )
    .await
    .expect("the heartbeat waited for a locked row")
    .unwrap();
    assert_eq!(extended, 0);
    lock.rollback().await.unwrap();
    assert_eq!(
        repo::worker_heartbeat(&t.app, "hb", &[(id, 1)], 30.0)
            .await
            .unwrap(),
        1
    );
    // A heartbeat for an attempt the worker no longer holds extends nothing.
    assert_eq!(
        repo::worker_heartbeat(&t.app, "hb", &[(id, 2)], 30.0)
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        repo::worker_heartbeat(&t.app, "other", &[(id, 1)], 30.0)
            .await
            .unwrap(),
        0
    );
    t.cleanup().await;
}

#[tokio::test]
async fn sql_trigger_and_code_agree_on_every_transition() {
    use awooop::runtime::RunState;
    let t = TestDb::new().await;
    let cp = t.control(Coord::none());
    let p = runnable_project(&cp, "alpha").await;
    let runs = RunService::new(cp.clone());
    let template = start(&runs, &p, "echo", json!({})).await;
    for from in RunState::ALL {
        for to in RunState::ALL {
            if from == to {
                continue;
            }
            let mut tx = scoped_tx(&t.owner, "alpha").await;
            // A copy of the template run in state `from` (INSERT is not a transition).
            let id = Uuid::now_v7();
            sqlx::query(
                "INSERT INTO runs (project_id, run_id, agent, mode, state, input, input_hash, agent_revision_id, agent_body_hash, \
                 trace_id, span_id, max_attempts, deadline_at, worker_id, lease_expires_at) \
                 SELECT project_id, $2, agent, mode, $3, input, input_hash, agent_revision_id, agent_body_hash, trace_id, span_id, \
                 max_attempts, deadline_at, 'w', now() FROM runs WHERE run_id = $1",
            )
            .bind(template)
            .bind(id)
            .bind(from.as_str())
            .execute(&mut *tx)
            .await
            .unwrap();
            let res = sqlx::query("UPDATE runs SET state = $2 WHERE run_id = $1")
                .bind(id)
                .bind(to.as_str())
                .execute(&mut *tx)
                .await;
            let sql_allows = match &res {
                Ok(_) => true,
                Err(e) => {
                    assert_eq!(
                        e.as_database_error().unwrap().code().as_deref(),
                        Some("AW002"),
                        "{from:?} -> {to:?}"
                    );
                    false
                }
            };
            assert_eq!(
                sql_allows,
                from.can_move_to(to),
                "{from:?} -> {to:?}: trigger and code disagree"
            );
            tx.rollback().await.unwrap();
        }
    }
    t.cleanup().await;
}

#[tokio::test]
async fn reaper_fails_runs_out_of_attempts_and_times_out_runs_past_their_deadline() {
    let t = TestDb::new().await;
    let cp = t.control(Coord::none());
    let p = runnable_project(&cp, "alpha").await;
    let runs = RunService::new(cp.clone());
    let (a, b, c) = tenancy::scope(p.clone(), async {
        (
            runs.create(&runner(), req("echo", json!({"n": 1})), None, None)
                .await
                .unwrap()
                .run_id,
            runs.create(&runner(), req("echo", json!({"n": 2})), None, None)
                .await
                .unwrap()
                .run_id,
            runs.create(&runner(), req("echo", json!({"n": 3})), None, None)
                .await
                .unwrap()
                .run_id,
        )
    })
    .await;
    let claimed = repo::worker_claim(&t.app, "dead", 3, 30.0).await.unwrap();
    assert_eq!(claimed.len(), 3);
    let mut tx = scoped_tx(&t.owner, "alpha").await;
    // a: lease expired on its last allowed attempt; b: lease expired with attempts left;
    // c: alive (lease valid) but past its hard deadline.
    sqlx::query("UPDATE runs SET max_attempts = 1, lease_expires_at = now() - interval '1 second' WHERE run_id = $1").bind(a).execute(&mut *tx).await.unwrap();
    sqlx::query("UPDATE runs SET lease_expires_at = now() - interval '1 second' WHERE run_id = $1")
        .bind(b)
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::query("UPDATE runs SET deadline_at = now() - interval '1 second' WHERE run_id = $1")
        .bind(c)
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let r = repo::worker_reap(&t.app).await.unwrap();
    assert_eq!((r.failed, r.requeued, r.timed_out), (1, 1, 1));
    tenancy::scope(p.clone(), async {
        let ra = runs.get(a).await.unwrap().run;
        assert_eq!(
            (ra.state.as_str(), ra.error_code.as_deref()),
            ("failed", Some("E-RUN-005"))
        );
        let rb = runs.get(b).await.unwrap().run;
        assert_eq!((rb.state.as_str(), rb.attempt), ("retrying", 1));
        let rc = runs.get(c).await.unwrap().run;
        assert_eq!(
            (rc.state.as_str(), rc.error_code.as_deref()),
            ("timed_out", Some("E-RUN-006"))
        );
    })
    .await;
    // Nothing more to reap.
    assert_eq!(
        repo::worker_reap(&t.app).await.unwrap(),
        repo::Reaped::default()
    );
    t.cleanup().await;
}

/// An idle reaper tick reads and writes nothing: the reaper runs in every worker process every
/// two seconds whether or not anything expired, and each of its three UPDATEs fired the run
/// event triggers even when it changed no row (three UPDATE statements and two transactions
/// per tick). One probe (`repo::reap_due`) now decides; a lease that expires is still reaped.
#[tokio::test]
async fn an_idle_reaper_runs_no_update_and_still_reaps_an_expired_lease() {
    let t = TestDb::new().await;
    let cp = t.control(Coord::none());
    let p = runnable_project(&cp, "alpha").await;
    let runs = RunService::new(cp.clone());
    // Counts UPDATE statements on runs: a statement trigger fires even when no row changes.
    sqlx::raw_sql(
        "CREATE TABLE runs_update_statements (n bigint NOT NULL); \
         INSERT INTO runs_update_statements VALUES (0); \
         CREATE FUNCTION count_runs_updates() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER \
           AS $$ BEGIN UPDATE runs_update_statements SET n = n + 1; RETURN NULL; END $$; \
         CREATE TRIGGER count_runs_updates AFTER UPDATE ON runs \
           FOR EACH STATEMENT EXECUTE FUNCTION count_runs_updates();",
    )
    .execute(&t.owner)
    .await
    .unwrap();
    let updates = || async {
        sqlx::query_scalar::<_, i64>("SELECT n FROM runs_update_statements")
            .fetch_one(&t.owner)
            .await
            .unwrap()
    };
    // Bound to another project, so it claims none of alpha's runs; its reaper sees every run.
    let mut cfg = test_config("reaper", 30_000);
    cfg.project = Some("elsewhere".into());
    cfg.poll = Duration::from_secs(3600);
    cfg.reap_every = Duration::from_millis(20);
    let exec = Arc::new(ScriptedExecutor::new(GuardedGateway::new(
        cp.clone(),
        Arc::new(RecordingUpstream::default()),
    )));
    let w = worker_cfg(&t, &cp, exec, cfg);
    let (stop, rx) = shutdown_channel();
    let h = tokio::spawn(w.clone().run(rx));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle = updates().await;
    assert_eq!(
        idle, 0,
        "idle reaper ticks ran {idle} UPDATE statements on runs"
    );

    let id = start(&runs, &p, "echo", json!({"n": 1})).await;
    assert_eq!(
        repo::worker_claim(&t.app, "dead", 1, 30.0)
            .await
            .unwrap()
            .len(),
        1
    );
    let mut tx = scoped_tx(&t.owner, "alpha").await;
    sqlx::query("UPDATE runs SET lease_expires_at = now() - interval '1 second' WHERE run_id = $1")
        .bind(id)
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    wait_state(&runs, &p, id, "retrying", 10).await;
    assert!(w.stats.reaped.load(Ordering::Relaxed) >= 1);
    let _ = stop.send(true);
    let _ = h.await;
    t.cleanup().await;
}

#[tokio::test]
async fn the_runtime_contract_sets_attempts_lease_and_deadline_of_new_runs() {
    let t = TestDb::new().await;
    let cp = t.control(Coord::none());
    let p = runnable_project(&cp, "alpha").await;
    tenancy::scope(p.clone(), async {
        let body = json!({"max_attempts": 7, "lease_seconds": 2, "heartbeat_seconds": 1, "run_deadline_seconds": 120,
            "idempotency_ttl_seconds": 60, "retention_days": 1, "max_concurrent_runs": 4, "max_input_bytes": 64});
        let r = publish(&cp, ContractKind::Runtime, "default", body).await;
        approve_and_activate(&cp, r, 1).await;
    })
    .await;
    let runs = RunService::new(cp.clone());
    let id = tenancy::scope(p.clone(), async {
        assert_code(
            runs.create(
                &runner(),
                req("echo", json!({"pad": "x".repeat(100)})),
                None,
                None,
            )
            .await,
            "E-RUN-008",
        );
        runs.create(&runner(), req("echo", json!({})), None, None)
            .await
            .unwrap()
            .run_id
    })
    .await;
    // The worker allows 30 s; the project's contract says 2 s: the shorter one wins.
    repo::worker_claim(&t.app, "w", 1, 30.0).await.unwrap();
    let mut tx = scoped_tx(&t.app, "alpha").await;
    // Measured against the statement's own clock in the database (the claim sets the lease and
    // heartbeat_at with one now(), creation sets created_at and deadline_at with one now()),
    // so the figures are exact however slow this machine is.
    let (attempts, lease, deadline): (i32, f64, f64) = sqlx::query_as(
        "SELECT max_attempts, extract(epoch FROM lease_expires_at - heartbeat_at)::float8, \
         extract(epoch FROM deadline_at - created_at)::float8 FROM runs WHERE run_id = $1",
    )
    .bind(id)
    .fetch_one(&mut *tx)
    .await
    .unwrap();
    tx.rollback().await.unwrap();
    assert_eq!(attempts, 7);
    assert_eq!(
        lease, 2.0,
        "the contract's 2 s lease, not the worker's 30 s"
    );
    assert_eq!(deadline, 120.0);
    t.cleanup().await;
}

/// Runnable projects "alpha", whose Runtime contract allows 2 concurrent runs, and "beta"
/// (the default 64).
async fn alpha_capped_at_two_and_beta() -> (TestDb, ControlPlane, ProjectId, ProjectId) {
    let t = TestDb::new().await;
    let cp = t.control(Coord::none());
    let p = runnable_project(&cp, "alpha").await;
    let q = runnable_project(&cp, "beta").await;
    tenancy::scope(p.clone(), async {
        let body = json!({"max_attempts": 3, "lease_seconds": 30, "heartbeat_seconds": 5, "run_deadline_seconds": 600,
            "idempotency_ttl_seconds": 60, "retention_days": 1, "max_concurrent_runs": 2, "max_input_bytes": 1024});
        let r = publish(&cp, ContractKind::Runtime, "default", body).await;
        approve_and_activate(&cp, r, 1).await;
    })
    .await;
    (t, cp, p, q)
}

#[tokio::test]
async fn claims_respect_the_projects_max_concurrent_runs() {
    let (t, cp, p, q) = alpha_capped_at_two_and_beta().await;
    let runs = RunService::new(cp.clone());
    for project in [&p, &q] {
        tenancy::scope(project.clone(), async {
            for i in 0..5 {
                runs.create(&runner(), req("echo", json!({"i": i})), None, None)
                    .await
                    .unwrap();
            }
        })
        .await;
    }
    // alpha may run 2 at once; beta (default 64) all 5.
    let first = repo::worker_claim(&t.app, "w", 50, 30.0).await.unwrap();
    let count = |c: &[repo::Claimed], id: &str| c.iter().filter(|x| x.project_id == id).count();
    assert_eq!((count(&first, "alpha"), count(&first, "beta")), (2, 5));
    let second = repo::worker_claim(&t.app, "w", 50, 30.0).await.unwrap();
    assert!(second.is_empty(), "{second:?}");
    // One finishes: one more may start.
    tenancy::scope(p.clone(), async {
        let id = first
            .iter()
            .find(|x| x.project_id == "alpha")
            .unwrap()
            .run_id;
        let mut tx = cp.db().tenant().await.unwrap();
        assert!(
            repo::finish(
                &mut tx,
                id,
                Some(1),
                awooop::runtime::RunState::Succeeded,
                None,
                None
            )
            .await
            .unwrap()
        );
        tx.commit().await.unwrap();
    })
    .await;
    let third = repo::worker_claim(&t.app, "w", 50, 30.0).await.unwrap();
    assert_eq!(count(&third, "alpha"), 1);
    t.cleanup().await;
}

/// A project at its concurrency cap with a deep backlog must not hold other projects' runs
/// back (the claim's window is the oldest queued runs of every project), and a claim must not
/// lock runs it cannot start: before, each claim locked the `n` oldest queued runs, all of the
/// capped project's, started none of them and never reached a newer project's run.
#[tokio::test]
async fn a_capped_projects_backlog_neither_starves_others_nor_is_locked_for_nothing() {
    let (t, cp, p, q) = alpha_capped_at_two_and_beta().await;
    let runs = RunService::new(cp.clone());
    // alpha's backlog first (older), then one beta run.
    tenancy::scope(p.clone(), async {
        for i in 0..12 {
            runs.create(&runner(), req("echo", json!({"i": i})), None, None)
                .await
                .unwrap();
        }
    })
    .await;
    let beta_run = tenancy::scope(q.clone(), async {
        runs.create(&runner(), req("echo", json!({})), None, None)
            .await
            .unwrap()
            .run_id
    })
    .await;
    let count = |c: &[repo::Claimed], id: &str| c.iter().filter(|x| x.project_id == id).count();
    // A claim for 4: alpha may start 2; beta's run is newer than alpha's whole backlog.
    let first = repo::worker_claim(&t.app, "w", 4, 30.0).await.unwrap();
    let second = repo::worker_claim(&t.app, "w", 4, 30.0).await.unwrap();
    let claimed: Vec<_> = first.iter().chain(&second).collect();
    assert_eq!(
        claimed.iter().filter(|c| c.project_id == "alpha").count(),
        2,
        "alpha's cap"
    );
    assert!(
        claimed.iter().any(|c| c.run_id == beta_run),
        "beta's run waited behind alpha's capped backlog: {first:?} / {second:?}"
    );
    assert_eq!(count(&first, "alpha") + count(&second, "alpha"), 2);

    // alpha is at its cap: a claim (held open) locks none of alpha's 10 queued runs.
    let mut tx = t.app.begin().await.unwrap();
    repo::enter_worker_scope(&mut tx).await.unwrap();
    let none = repo::claim_in(&mut tx, "w2", 4, 30.0, None).await.unwrap();
    assert!(none.is_empty(), "{none:?}");
    let mut su = t.superuser().await;
    let lockable: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT 1 FROM runs WHERE project_id = 'alpha' AND state = 'queued' \
         FOR UPDATE SKIP LOCKED) x",
    )
    .fetch_one(&mut su)
    .await
    .unwrap();
    assert_eq!(lockable, 10, "the claim locked runs it could not start");
    tx.rollback().await.unwrap();
    drop(su);
    t.cleanup().await;
}

/// Migration 0070 rewrote the CHECK constraints of the hot tables (runs, idempotency keys,
/// conversation events, outbound messages) without bounded regex repetition, for speed. They
/// must admit and refuse exactly what the old patterns did: each boundary (length off by one,
/// an upper-case or non-hex character, a trailing newline, the empty string) is tried against
/// the real tables, and a refusal must name the constraint.
#[tokio::test]
async fn hot_path_checks_refuse_what_they_refused() {
    let t = TestDb::new().await;
    let cp = t.control(Coord::none());
    project(&cp, "alpha", 1).await;
    let mut su = t.superuser().await;
    let hex = |n: usize| "0123456789abcdef".repeat(8)[..n].to_string();
    let name = |n: usize| {
        format!("a{}", "b-9".repeat(30))
            .chars()
            .take(n)
            .collect::<String>()
    };
    // A canary run to hang outbound messages on (shadow runs may not have any).
    let run: Uuid = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO runs (project_id, run_id, agent, mode, input, input_hash, agent_revision_id, \
         agent_body_hash, trace_id, span_id, max_attempts, deadline_at) \
         VALUES ('alpha', $1, 'echo', 'canary', '{}', $2, $1, 'x', $3, $4, 3, now() + interval '1 hour')",
    )
    .bind(run)
    .bind(format!("sha256:{}", hex(64)))
    .bind(hex(32))
    .bind(hex(16))
    .execute(&mut su)
    .await
    .unwrap();

    // (constraint, statement with $1 = the value under test, admitted, refused)
    let runs_sql = |col: &str| {
        let v = |c: &str, dflt: &str| {
            if c == col {
                "$1".to_string()
            } else {
                dflt.to_string()
            }
        };
        format!(
            "INSERT INTO runs (project_id, run_id, agent, mode, input, input_hash, agent_revision_id, \
             agent_body_hash, trace_id, span_id, max_attempts, deadline_at) VALUES ('alpha', gen_random_uuid(), \
             {}, 'shadow', '{{}}', {}, gen_random_uuid(), 'x', {}, {}, 3, now() + interval '1 hour')",
            v("agent", "'echo'"),
            v("input_hash", &format!("'sha256:{}'", hex(64))),
            v("trace_id", &format!("'{}'", hex(32))),
            v("span_id", &format!("'{}'", hex(16))),
        )
    };
    let events_sql = |col: &str| {
        let v = |c: &str, dflt: &str| {
            if c == col {
                "$1".to_string()
            } else {
                dflt.to_string()
            }
        };
        format!(
            "INSERT INTO conversation_events (project_id, event_id, channel, provider, external_id, conversation, \
             kind, body_sha256, trace_id) VALUES ('alpha', gen_random_uuid(), {}, 'line', gen_random_uuid()::text, 'c', \
             'message', {}, {})",
            v("channel", "'line'"),
            v("body_sha256", &format!("'{}'", hex(64))),
            v("trace_id", &format!("'{}'", hex(32))),
        )
    };
    let up = |s: &str| s.to_uppercase();
    let cases: Vec<(&str, String, Vec<String>, Vec<String>)> = vec![
        (
            "runs_agent_check",
            runs_sql("agent"),
            vec!["a".into(), name(63), "a-1".into()],
            vec![
                String::new(),
                name(64),
                "1a".into(),
                "-a".into(),
                "aB".into(),
                "a_b".into(),
                "a\n".into(),
            ],
        ),
        (
            "runs_input_hash_check",
            runs_sql("input_hash"),
            vec![format!("sha256:{}", hex(64))],
            vec![
                format!("sha256:{}", hex(63)),
                format!("sha256:{}", hex(65)),
                format!("sha256:{}", up(&hex(64))),
                format!("SHA256:{}", hex(64)),
                format!("sha256:{}g", hex(63)),
                format!("sha256:{}\n", hex(64)),
                hex(64),
                "sha256:".into(),
            ],
        ),
        (
            "runs_trace_id_check",
            runs_sql("trace_id"),
            vec![hex(32)],
            vec![
                hex(31),
                hex(33),
                up(&hex(32)),
                format!("{}\n", hex(32)),
                String::new(),
            ],
        ),
        (
            "runs_span_id_check",
            runs_sql("span_id"),
            vec![hex(16)],
            vec![hex(15), hex(17), format!("{}z", hex(15)), String::new()],
        ),
        // Migration 0081 checks these columns when an INSERT or an UPDATE writes them (not on
        // every update of the run): an update that sets one is refused as the insert is.
        (
            "runs_agent_check",
            format!("UPDATE runs SET agent = $1 WHERE run_id = '{run}'"),
            vec!["a".into(), name(63)],
            vec![String::new(), name(64), "aB".into(), "a\n".into()],
        ),
        (
            "runs_trace_id_check",
            format!("UPDATE runs SET trace_id = $1 WHERE run_id = '{run}'"),
            vec![hex(32)],
            vec![hex(31), up(&hex(32))],
        ),
        (
            "runs_mode_check",
            format!("UPDATE runs SET mode = $1 WHERE run_id = '{run}'"),
            vec!["shadow".into(), "auto_remediate".into()],
            vec!["Shadow".into(), String::new()],
        ),
        (
            "runs_max_concurrent_check",
            format!("UPDATE runs SET max_concurrent = $1::int WHERE run_id = '{run}'"),
            vec!["1".into()],
            vec!["0".into(), "-3".into()],
        ),
        (
            "runs_lease_seconds_check",
            format!(
                "INSERT INTO runs (project_id, run_id, agent, mode, input, input_hash, agent_revision_id, \
                 agent_body_hash, trace_id, span_id, max_attempts, deadline_at, lease_seconds) VALUES ('alpha', \
                 gen_random_uuid(), 'echo', 'shadow', '{{}}', 'sha256:{}', gen_random_uuid(), 'x', '{}', '{}', 3, \
                 now() + interval '1 hour', $1::int)",
                hex(64),
                hex(32),
                hex(16)
            ),
            vec!["1".into(), "3600".into()],
            vec!["0".into(), "3601".into()],
        ),
        (
            "idempotency_keys_key_check",
            "INSERT INTO idempotency_keys (project_id, key, request_hash, run_id, expires_at) \
             VALUES ('alpha', $1, 'h', gen_random_uuid(), now() + interval '1 hour')"
                .into(),
            vec!["k".into(), "A.z_0:9-".into(), "k".repeat(128)],
            vec![
                String::new(),
                "k".repeat(129),
                "a b".into(),
                "a/b".into(),
                "k\n".into(),
                "é".into(),
            ],
        ),
        (
            "conversation_events_channel_check",
            events_sql("channel"),
            vec!["l".into(), name(63)],
            vec![
                String::new(),
                name(64),
                "Line".into(),
                "9line".into(),
                "line\n".into(),
            ],
        ),
        (
            "conversation_events_body_sha256_check",
            events_sql("body_sha256"),
            vec![hex(64)],
            vec![
                hex(63),
                hex(65),
                up(&hex(64)),
                format!("sha256:{}", hex(64)),
            ],
        ),
        (
            "conversation_events_trace_id_check",
            events_sql("trace_id"),
            vec![hex(32)],
            vec![hex(31), hex(33), up(&hex(32))],
        ),
        (
            "outbound_messages_channel_check",
            format!(
                "INSERT INTO outbound_messages (project_id, message_id, run_id, channel, conversation, kind, body, trace_id) \
                 VALUES ('alpha', gen_random_uuid(), '{run}', $1, 'c', 'reply', '\"hi\"', '{}')",
                hex(32)
            ),
            vec!["tg".into(), name(63)],
            vec![String::new(), name(64), "Tg".into(), "tg\n".into()],
        ),
    ];
    for (constraint, sql, admitted, refused) in cases {
        for v in admitted {
            let mut tx = sqlx::Connection::begin(&mut su).await.unwrap();
            if let Err(e) = sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
                .bind(&v)
                .execute(&mut *tx)
                .await
            {
                panic!("{constraint}: {v:?} must be admitted: {e}");
            }
            tx.rollback().await.unwrap();
        }
        for v in refused {
            let mut tx = sqlx::Connection::begin(&mut su).await.unwrap();
            let err = match sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
                .bind(&v)
                .execute(&mut *tx)
                .await
            {
                Ok(_) => panic!("{constraint}: {v:?} must be refused"),
                Err(e) => e,
            };
            let db = err.as_database_error().expect("a database error");
            assert_eq!(
                db.code().as_deref(),
                Some("23514"),
                "{constraint}: {v:?}: {db}"
            );
            assert_eq!(db.constraint(), Some(constraint), "{constraint}: {v:?}");
            tx.rollback().await.unwrap();
        }
    }
    drop(su);
    t.cleanup().await;
}

/// Migration 0081: the eight checks of a run's fixed columns run when a statement writes those
/// columns, not on every update of the run (PostgreSQL evaluates every CHECK constraint on
/// every UPDATE). Shown with the one way to put a row past them, a session with triggers
/// disabled (which disables foreign keys too): the claim's update, which does not name those
/// columns, does not evaluate them, and a statement that writes one does. Before, the CHECK
/// refused this row at its insert, and every claim and completion evaluated all eight.
#[tokio::test]
async fn a_claim_does_not_re_evaluate_the_runs_fixed_columns() {
    let t = TestDb::new().await;
    let cp = t.control(Coord::none());
    project(&cp, "alpha", 1).await;
    let mut su = t.superuser().await;
    let run = Uuid::now_v7();
    sqlx::query("SET session_replication_role = replica")
        .execute(&mut su)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO runs (project_id, run_id, agent, mode, input, input_hash, agent_revision_id, \
         agent_body_hash, trace_id, span_id, max_attempts, deadline_at) \
         VALUES ('alpha', $1, 'echo', 'shadow', '{}', $2, $1, 'x', $3, $4, 3, now() + interval '1 hour')",
    )
    .bind(run)
    .bind(format!("sha256:{}", "0".repeat(64)))
    .bind("ABCDEF01".repeat(4))
    .bind("0".repeat(16))
    .execute(&mut su)
    .await
    .expect("written past the checks (the CHECK constraint refused it)");
    sqlx::query("SET session_replication_role = origin")
        .execute(&mut su)
        .await
        .unwrap();
    let claimed = repo::worker_claim(&t.app, "w1", 10, 30.0).await.unwrap();
    assert_eq!(
        claimed.iter().map(|c| c.run_id).collect::<Vec<_>>(),
        vec![run]
    );
    let err = sqlx::query("UPDATE runs SET trace_id = trace_id WHERE run_id = $1")
        .bind(run)
        .execute(&mut su)
        .await
        .unwrap_err();
    let db = err.as_database_error().expect("a database error");
    assert_eq!(db.code().as_deref(), Some("23514"), "{db}");
    assert_eq!(db.constraint(), Some("runs_trace_id_check"));
    drop(su);
    t.cleanup().await;
}

/// A create without an idempotency key now writes its run and audit row in one statement, on a
/// basis read with one statement: the run still records the active revision and the mode, and
/// it commits with exactly one `run.create` audit row (actor, trace id, input hash) and its
/// `created` event, all or nothing; a create of an inactive agent writes none of them.
#[tokio::test]
async fn a_create_without_a_key_writes_run_audit_row_and_created_event_together() {
    let t = TestDb::new().await;
    let cp = t.control(Coord::none());
    let p = runnable_project(&cp, "alpha").await;
    let runs = RunService::new(cp.clone());
    let id = start(&runs, &p, "echo", json!({"name": "x"})).await;
    let active = tenancy::scope(p.clone(), cp.active(ContractKind::Agent, "echo"))
        .await
        .unwrap();
    let mut tx = scoped_tx(&t.app, "alpha").await;
    let (rev, mode, trace, input_hash): (Uuid, String, String, String) = sqlx::query_as(
        "SELECT agent_revision_id, mode, trace_id, input_hash FROM runs WHERE run_id = $1",
    )
    .bind(id)
    .fetch_one(&mut *tx)
    .await
    .unwrap();
    assert_eq!(rev, active.pointer.revision_id);
    let project_mode = tenancy::scope(p.clone(), cp.mode()).await.unwrap();
    assert_eq!(mode, project_mode.as_str());
    let audit: Vec<(String, String, Option<String>, Value)> = sqlx::query_as(
        "SELECT actor, outcome, trace_id, details FROM audit_log WHERE action = 'run.create' AND target = $1",
    )
    .bind(id.to_string())
    .fetch_all(&mut *tx)
    .await
    .unwrap();
    assert_eq!(audit.len(), 1, "{audit:?}");
    assert_eq!(audit[0].0, "runner");
    assert_eq!(audit[0].1, "ok");
    assert_eq!(audit[0].2.as_deref(), Some(trace.as_str()));
    assert_eq!(audit[0].3["input_hash"], json!(input_hash));
    let created: Vec<(i64, String)> =
        sqlx::query_as("SELECT seq, kind FROM run_events WHERE run_id = $1 ORDER BY seq")
            .bind(id)
            .fetch_all(&mut *tx)
            .await
            .unwrap();
    assert_eq!(created, vec![(1, "created".to_string())]);
    let before: i64 =
        sqlx::query_scalar("SELECT count(*) FROM audit_log WHERE action = 'run.create'")
            .fetch_one(&mut *tx)
            .await
            .unwrap();
    tx.rollback().await.unwrap();
    tenancy::scope(p.clone(), async {
        assert_code(
            runs.create(&runner(), req("nobody", json!({})), None, None)
                .await,
            "E-RUN-007",
        );
    })
    .await;
    let mut tx = scoped_tx(&t.app, "alpha").await;
    let (n_runs, n_audit): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM runs), (SELECT count(*) FROM audit_log WHERE action = 'run.create')",
    )
    .fetch_one(&mut *tx)
    .await
    .unwrap();
    assert_eq!((n_runs, n_audit), (1, before));
    tx.rollback().await.unwrap();
    t.cleanup().await;
}
