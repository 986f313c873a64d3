//! The run path's guarantees under batching (issue 18, "Runs"): one completion batch mixing
//! current and stale attempts lands only the current ones, each with its journal row, its one
//! `run.finish` audit row and its events numbered 1, 2, 3, ... without a gap; the run events
//! written per statement (migration 0060) announce every run's last event; a killed worker's
//! whole batch of runs is finished exactly once by another worker.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use awooop::contracts::ContractKind;
use awooop::control::ControlPlane;
use awooop::coord::Coord;
use awooop::runtime::executor::{
    Executor, GuardedGateway, Journal, NoGateway, Outcome, RunContext, ScriptedExecutor,
};
use awooop::runtime::repo::{self, Completion, PendingStep};
use awooop::runtime::worker::{Worker, WorkerConfig, shutdown_channel};
use awooop::runtime::{CreateRun, RunService, RunState};
use awooop::tenancy::{self, ProjectId};
use serde_json::json;
use uuid::Uuid;

use crate::support::*;

async fn echo_project(cp: &ControlPlane, id: &str) -> ProjectId {
    let p = project(cp, id, 1).await;
    tenancy::scope(p.clone(), async {
        let body = json!({
            "display_name": "Echo", "context_domain": "demo",
            "safety": {"max_risk": "read_only", "max_steps": 4, "max_tokens_per_run": 1, "timeout_seconds": 60},
            "executor": {"type": "scripted", "steps": [{"type": "output", "key": "echo", "template": "hello {{input.name}}"}]}
        });
        let r = publish(cp, ContractKind::Agent, "echo", body).await;
        approve_and_activate(cp, r, 1).await;
    })
    .await;
    p
}

/// A run request for the echo agent.
fn echo_req(input: serde_json::Value) -> CreateRun {
    CreateRun {
        agent: "echo".into(),
        input,
        mode: None,
        reply_to: None,
    }
}

async fn create(cp: &ControlPlane, p: &ProjectId, n: usize) -> Vec<Uuid> {
    let runs = RunService::new(cp.clone());
    let mut ids = Vec::new();
    for i in 0..n {
        let req = echo_req(json!({"name": i}));
        let v = tenancy::scope(p.clone(), runs.create(&admin(), req, None, None))
            .await
            .unwrap();
        ids.push(v.run_id);
    }
    ids
}

fn succeeded(c: &repo::Claimed) -> Completion {
    let trace = awooop::runtime::trace::TraceContext {
        trace_id: c.trace_id.clone(),
        span_id: c.span_id.clone(),
        sampled: true,
    };
    Completion {
        run_id: c.run_id,
        attempt: c.attempt,
        state: RunState::Succeeded,
        output: Some(json!({"result": format!("attempt {}", c.attempt)})),
        error: None,
        steps: vec![PendingStep {
            index: 0,
            key: "echo".into(),
            step_type: "output".into(),
            input_hash: "sha256:test".into(),
            status: "succeeded".into(),
            output: Some(json!("x")),
            error_code: None,
            trace: trace.clone(),
            started_at: chrono::Utc::now(),
        }],
        reply: None,
        approval: None,
        trace_id: c.trace_id.clone(),
    }
}

async fn complete(cp: &ControlPlane, p: &ProjectId, items: &[Completion]) -> Vec<bool> {
    tenancy::scope(p.clone(), async {
        let mut tx = cp.db().tenant().await.unwrap();
        let landed = repo::complete_batch(&mut tx, p.as_str(), items)
            .await
            .unwrap();
        tx.commit().await.unwrap();
        landed
    })
    .await
}

/// Per run: (state, attempt, event_seq, journal rows, run.finish audit rows, event seqs, kinds).
type RunFacts = (String, i32, i64, i64, i64, Vec<i64>, Vec<String>);

async fn facts(t: &TestDb, project: &str, id: Uuid) -> RunFacts {
    let mut tx = scoped_tx(&t.app, project).await;
    let (state, attempt, seq, steps, audits): (String, i32, i64, i64, i64) = sqlx::query_as(
        "SELECT state, attempt, event_seq, \
                (SELECT count(*) FROM run_steps s WHERE s.run_id = r.run_id), \
                (SELECT count(*) FROM audit_log a WHERE a.action = 'run.finish' AND a.target = r.run_id::text) \
         FROM runs r WHERE run_id = $1",
    )
    .bind(id)
    .fetch_one(&mut *tx)
    .await
    .unwrap();
    let evs: Vec<(i64, String)> =
        sqlx::query_as("SELECT seq, kind FROM run_events WHERE run_id = $1 ORDER BY seq")
            .bind(id)
            .fetch_all(&mut *tx)
            .await
            .unwrap();
    tx.rollback().await.unwrap();
    let (seqs, kinds) = evs.into_iter().unzip();
    (state, attempt, seq, steps, audits, seqs, kinds)
}

#[track_caller]
fn assert_gapless(f: &RunFacts) {
    let want: Vec<i64> = (1..=f.2).collect();
    assert_eq!(f.5, want, "events must be numbered 1..=event_seq: {f:?}");
}

#[tokio::test]
async fn a_completion_batch_lands_only_current_attempts_with_journal_audit_and_events() {
    let t = TestDb::new().await;
    let cp = t.control(Coord::none());
    let p = echo_project(&cp, "alpha").await;
    let ids = create(&cp, &p, 6).await;

    let first = repo::worker_claim(&t.app, "w1", 10, 30.0).await.unwrap();
    assert_eq!(first.len(), 6);
    let by_id: HashMap<Uuid, repo::Claimed> = first.iter().map(|c| (c.run_id, c.clone())).collect();
    // Runs 0 and 1 lose their lease: released, then claimed again by w2 (attempt 2).
    let lost = [ids[0], ids[1]];
    let released = repo::worker_release(&t.app, "w1", &[(lost[0], 1), (lost[1], 1)])
        .await
        .unwrap();
    assert_eq!(released, 2);
    let second = repo::worker_claim(&t.app, "w2", 10, 30.0).await.unwrap();
    assert_eq!(second.len(), 2);
    assert!(
        second
            .iter()
            .all(|c| c.attempt == 2 && lost.contains(&c.run_id))
    );

    // Listen for run-event notices before the batch commits.
    let mut listener = sqlx::postgres::PgListener::connect_with(&t.app)
        .await
        .unwrap();
    listener.listen("awooop_run_events").await.unwrap();

    // One batch with all six first attempts: the two stale ones must not land.
    let batch: Vec<Completion> = ids.iter().map(|id| succeeded(&by_id[id])).collect();
    let landed = complete(&cp, &p, &batch).await;
    assert_eq!(landed, vec![false, false, true, true, true, true]);

    for id in &ids[2..] {
        let f = facts(&t, "alpha", *id).await;
        assert_eq!(
            (f.0.as_str(), f.1, f.3, f.4),
            ("succeeded", 1, 1, 1),
            "{f:?}"
        );
        assert_gapless(&f);
        // The journal's event comes before the final state's, in the order things happened
        // (migration 0074: the completion writes its journal rows first).
        assert_eq!(
            f.6,
            ["created", "state", "step", "state", "output"],
            "{f:?}"
        );
    }
    for id in &lost {
        // Still held by attempt 2: no journal row, no audit row, no event from the stale write.
        let f = facts(&t, "alpha", *id).await;
        assert_eq!((f.0.as_str(), f.1, f.3, f.4), ("running", 2, 0, 0), "{f:?}");
        assert_gapless(&f);
        assert_eq!(f.6, ["created", "state", "state", "state"], "{f:?}");
    }

    // Every landed run's last event is announced (listeners wake for it and read back from
    // their cursor); nothing is announced for the runs that did not land.
    let mut last: HashMap<Uuid, i64> = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while ids[2..].iter().any(|id| last.get(id) != Some(&5)) {
        assert!(Instant::now() < deadline, "notices so far: {last:?}");
        let n = tokio::time::timeout(Duration::from_secs(10), listener.recv())
            .await
            .expect("a notice")
            .unwrap();
        // '{project} {run} {seq}' (store::events::Notice).
        let parts: Vec<&str> = n.payload().split(' ').collect();
        assert_eq!(parts.len(), 3, "{}", n.payload());
        assert_eq!(parts[0], "alpha");
        let run: Uuid = parts[1].parse().unwrap();
        let seq: i64 = parts[2].parse().unwrap();
        if seq == 1 {
            // A creation's notice: sent after its COMMIT by the creator's notifier (migration
            // 0071), so it may reach this listener after the LISTEN above; not the batch's.
            continue;
        }
        let e = last.entry(run).or_default();
        *e = (*e).max(seq);
    }
    assert!(lost.iter().all(|id| !last.contains_key(id)), "{last:?}");
    // The listener holds a connection of the pool: give it back, or closing the pool waits.
    drop(listener);

    // The current attempts of the two lost runs land in the next batch.
    let batch: Vec<Completion> = second.iter().map(succeeded).collect();
    assert_eq!(complete(&cp, &p, &batch).await, vec![true, true]);
    for id in &lost {
        let f = facts(&t, "alpha", *id).await;
        assert_eq!(
            (f.0.as_str(), f.1, f.3, f.4),
            ("succeeded", 2, 1, 1),
            "{f:?}"
        );
        assert_gapless(&f);
    }
    // The same batch again (a retried write) changes nothing.
    assert_eq!(complete(&cp, &p, &batch).await, vec![false, false]);
    let f = facts(&t, "alpha", lost[0]).await;
    assert_eq!((f.3, f.4, f.2), (1, 1, 7), "{f:?}");
    t.cleanup().await;
}

/// The completion turns the journal's deferred numbering (migration 0074) on and off inside
/// its own statements (session 33: `STEPS_SQL` sets it, `COMPLETE_SQL` resets it; they were two
/// `SET LOCAL` round trips). Left on, a journal row written later in the same transaction would
/// be numbered without moving the run's counter, and its event would sit past `event_seq`.
#[tokio::test]
async fn a_journal_row_after_a_completion_in_its_transaction_moves_the_counter() {
    let t = TestDb::new().await;
    let cp = t.control(Coord::none());
    let p = echo_project(&cp, "alpha").await;
    create(&cp, &p, 2).await;
    let claimed = repo::worker_claim(&t.app, "w1", 10, 30.0).await.unwrap();
    assert_eq!(claimed.len(), 2);
    let late = claimed[0].clone();
    tenancy::scope(p.clone(), async {
        let mut tx = cp.db().tenant().await.unwrap();
        let batch: Vec<Completion> = claimed.iter().map(succeeded).collect();
        let landed = repo::complete_batch(&mut tx, p.as_str(), &batch)
            .await
            .unwrap();
        assert_eq!(landed, vec![true, true]);
        let mode: String =
            sqlx::query_scalar("SELECT coalesce(current_setting('awooop.step_seq', true), '')")
                .fetch_one(&mut *tx)
                .await
                .unwrap();
        assert_eq!(mode, "", "deferred numbering left on after the completion");
        sqlx::query(
            "INSERT INTO run_steps (project_id, run_id, step_index, attempt, step_key, step_type, \
             input_hash, status, output, trace_id, span_id, started_at) \
             VALUES ($1, $2, 1, $3, 'late', 'output', 'sha256:late', 'succeeded', '\"y\"', $4, $5, now())",
        )
        .bind(p.as_str())
        .bind(late.run_id)
        .bind(late.attempt)
        .bind(&late.trace_id)
        .bind(&late.span_id)
        .execute(&mut *tx)
        .await
        .unwrap();
        tx.commit().await.unwrap();
    })
    .await;
    let f = facts(&t, "alpha", late.run_id).await;
    assert_eq!((f.0.as_str(), f.3, f.4), ("succeeded", 2, 1), "{f:?}");
    assert_eq!(f.2, 6, "the late step moved the counter: {f:?}");
    assert_gapless(&f);
    let other = facts(&t, "alpha", claimed[1].run_id).await;
    assert_eq!((other.2, other.3, other.4), (5, 1, 1), "{other:?}");
    assert_gapless(&other);
    t.cleanup().await;
}

/// Hangs on every first attempt (the worker that holds them is the one killed).
struct HangFirst(ScriptedExecutor);

#[async_trait]
impl Executor for HangFirst {
    async fn execute(
        &self,
        ctx: &RunContext,
        journal: &mut Journal,
    ) -> awooop::error::Result<Outcome> {
        if ctx.attempt == 1 {
            std::future::pending::<()>().await;
        }
        self.0.execute(ctx, journal).await
    }
}

#[tokio::test]
async fn a_killed_workers_whole_batch_finishes_exactly_once_elsewhere() {
    let t = TestDb::new().await;
    let cp = t.control(Coord::none());
    let p = echo_project(&cp, "alpha").await;
    let n = 40;
    let ids = create(&cp, &p, n).await;

    // The victim has its own pool: killing it drops its connections too.
    let vpool = awooop::db::connect_app(&t.url, 4).await.unwrap();
    let vcp = ControlPlane::new(
        tenancy::Db::new(vpool.clone()),
        Coord::none(),
        test_keyring(),
    );
    let exec = Arc::new(HangFirst(ScriptedExecutor::new(GuardedGateway::new(
        vcp.clone(),
        Arc::new(NoGateway),
    ))));
    let mut cfg = WorkerConfig::new("victim");
    cfg.slots = 64;
    cfg.lease = Duration::from_millis(800);
    cfg.heartbeat = Duration::from_millis(200);
    cfg.poll = Duration::from_millis(50);
    let victim = Arc::new(Worker::new(vpool.clone(), vcp, exec, cfg));
    let (_vs, vrx) = shutdown_channel();
    let vh = tokio::spawn(victim.clone().run(vrx));
    let deadline = Instant::now() + Duration::from_secs(20);
    while (victim.stats.claimed.load(Ordering::Relaxed) as usize) < n {
        assert!(Instant::now() < deadline, "victim never claimed every run");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    vh.abort();
    vpool.close().await;

    let mut cfg = WorkerConfig::new("rescuer");
    cfg.slots = 16;
    cfg.lease = Duration::from_secs(5);
    cfg.heartbeat = Duration::from_secs(1);
    cfg.poll = Duration::from_millis(50);
    cfg.reap_every = Duration::from_millis(100);
    let exec = Arc::new(ScriptedExecutor::new(GuardedGateway::new(
        cp.clone(),
        Arc::new(NoGateway),
    )));
    let rescuer = Arc::new(Worker::new(t.app.clone(), cp.clone(), exec, cfg));
    let (stop, rx) = shutdown_channel();
    let rh = tokio::spawn(rescuer.clone().run(rx));
    let deadline = Instant::now() + Duration::from_secs(60);
    while (rescuer.stats.succeeded.load(Ordering::Relaxed) as usize) < n {
        assert!(
            Instant::now() < deadline,
            "the killed worker's runs were not finished"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.send(true).unwrap();
    rh.await.unwrap().unwrap();

    // The victim's late batch (every first attempt) lands nothing.
    let late: Vec<Completion> = ids
        .iter()
        .map(|id| {
            succeeded(&repo::Claimed {
                project_id: "alpha".into(),
                run_id: *id,
                agent: "echo".into(),
                mode: "shadow".into(),
                input: json!({}),
                agent_revision_id: Uuid::nil(),
                trace_id: "0".repeat(32),
                span_id: "0".repeat(16),
                attempt: 1,
                created_at: chrono::Utc::now(),
                reply_to: None,
            })
        })
        .collect();
    assert!(complete(&cp, &p, &late).await.iter().all(|l| !l));

    for id in &ids {
        let f = facts(&t, "alpha", *id).await;
        // Succeeded once, on the second attempt, with one journal row and one audit row.
        assert_eq!(
            (f.0.as_str(), f.1, f.3, f.4),
            ("succeeded", 2, 1, 1),
            "{f:?}"
        );
        assert_gapless(&f);
    }
    assert_eq!(rescuer.stats.succeeded.load(Ordering::Relaxed) as usize, n);
    t.cleanup().await;
}

/// Index entries of the indexes of running runs (`runs_leased`: every running run;
/// `runs_running_project`, migration 0076: a project's) this backend has read and not yet
/// reported: PostgreSQL 15 keeps counting across transactions until it flushes its statistics,
/// which it does only between transactions, so callers read it before and after a statement in
/// one transaction and take the difference.
async fn leased_entries_read(tx: &mut sqlx::PgConnection) -> i64 {
    sqlx::query_scalar(
        "SELECT (pg_stat_get_xact_tuples_returned('runs_leased'::regclass) \
          + coalesce(pg_stat_get_xact_tuples_returned(to_regclass('runs_running_project')), 0))::bigint",
    )
    .fetch_one(tx)
    .await
    .unwrap()
}

/// Entries of the queue index (`runs_claimable_project`: every project's queued runs) this
/// backend has read and not yet reported (see [`leased_entries_read`]).
async fn queue_entries_read(tx: &mut sqlx::PgConnection) -> i64 {
    sqlx::query_scalar(
        "SELECT pg_stat_get_xact_tuples_returned(to_regclass('runs_claimable_project'))::bigint",
    )
    .fetch_one(tx)
    .await
    .unwrap()
}

/// A project-bound worker's claim reads its own project's queue, not the other tenants'
/// (migration 0083). Its generic plan could not use `(only_project IS NULL OR project_id =
/// only_project)` as an index condition, so a bound worker with nothing queued read every other
/// tenant's queued runs at each claim, twice a second while idle: 2,000 here, 50,000 in the
/// measurement of docs/benchmarks.md ("Session 30", 10 ms per idle claim). The claims return what
/// they returned: nothing for the idle project, the other project's room for an unbound worker.
#[tokio::test]
async fn a_bound_claim_reads_only_its_own_projects_queue() {
    let t = TestDb::new().await;
    let cp = t.control(Coord::none());
    echo_project(&cp, "alpha").await;
    echo_project(&cp, "beta").await;
    let mut su = t.superuser().await;
    sqlx::query(
        "INSERT INTO runs (project_id, run_id, agent, mode, input, input_hash, agent_revision_id, agent_body_hash, \
         trace_id, span_id, max_attempts, deadline_at, max_concurrent) \
         SELECT 'beta', gen_random_uuid(), 'echo', 'shadow', '{}'::jsonb, 'sha256:' || repeat('0', 64), gen_random_uuid(), \
         'sha256:x', md5(g::text), substr(md5(g::text), 1, 16), 3, now() + interval '1 hour', 8 \
         FROM generate_series(1, 2000) g",
    )
    .execute(&mut su)
    .await
    .unwrap();
    sqlx::query("ANALYZE runs").execute(&mut su).await.unwrap();
    // Several rounds: the claim's transaction plans generically, and the function's own plans
    // are cached per session after the first executions.
    for _ in 0..7 {
        let mut tx = repo::claim_tx(&t.app).await.unwrap();
        let before = queue_entries_read(&mut tx).await;
        let round = repo::claim_round_in(&mut tx, "bound", 16, 30.0, Some("alpha"))
            .await
            .unwrap();
        let read = queue_entries_read(&mut tx).await - before;
        tx.rollback().await.unwrap();
        assert!(round.runs.is_empty());
        assert_eq!(round.queued, 0, "alpha has nothing queued");
        assert!(
            read < 10,
            "an idle bound claim read {read} entries of the queue index (2,000 of another project)"
        );
    }
    let mut tx = repo::claim_tx(&t.app).await.unwrap();
    let round = repo::claim_round_in(&mut tx, "shared", 16, 30.0, None)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(round.runs.len(), 8, "beta's room");
    assert_eq!(round.queued, 1, "one project, beta, has queued runs");
    let mut tx = repo::claim_tx(&t.app).await.unwrap();
    let round = repo::claim_round_in(&mut tx, "bound-beta", 16, 30.0, Some("beta"))
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert!(round.runs.is_empty(), "beta is at its cap of 8");
    assert_eq!(
        round.queued, 1,
        "beta's queue, claimable or not, keeps its worker polling"
    );
    t.cleanup().await;
}

/// The completion and heartbeat fences probe runs by id whatever the planner's statistics say
/// (issue 18, docs/benchmarks.md "drain (session 7)"). With statistics taken while nothing ran
/// (a queue analysed while idle, as `awooop bench runs` does before each drain), a literal
/// `state = 'running'` in the fence made the planner read every running run of every project
/// from `runs_leased` for each completion batch and each heartbeat: O(running) per batch, and
/// O(running x batch) comparisons with the generic plan.
#[tokio::test]
async fn completion_and_heartbeat_read_only_their_own_runs_whatever_the_statistics() {
    let t = TestDb::new().await;
    let cp = t.control(Coord::none());
    let p = echo_project(&cp, "alpha").await;
    let mut su = t.superuser().await;
    sqlx::query(
        "INSERT INTO runs (project_id, run_id, agent, mode, input, input_hash, agent_revision_id, agent_body_hash, \
         trace_id, span_id, max_attempts, deadline_at, max_concurrent) \
         SELECT 'alpha', gen_random_uuid(), 'echo', 'shadow', '{}'::jsonb, 'sha256:' || repeat('0', 64), gen_random_uuid(), \
         'sha256:x', md5(g::text), substr(md5(g::text), 1, 16), 3, now() + interval '1 hour', 100000 \
         FROM generate_series(1, 601) g",
    )
    .execute(&mut su)
    .await
    .unwrap();
    // Statistics from an idle moment: no run is running.
    sqlx::query("ANALYZE runs").execute(&mut su).await.unwrap();
    let claimed = repo::worker_claim(&t.app, "w1", 600, 30.0).await.unwrap();
    assert_eq!(claimed.len(), 600);

    // Seven batches of 8 (custom plans first, then the generic one sqlx's prepared statement
    // settles on): each lands, and reads none of the other 592 running runs.
    for chunk in claimed.chunks(8).take(7) {
        let items: Vec<Completion> = chunk.iter().map(succeeded).collect();
        let read = tenancy::scope(p.clone(), async {
            let mut tx = cp.db().tenant().await.unwrap();
            let before = leased_entries_read(&mut tx).await;
            let landed = repo::complete_batch(&mut tx, p.as_str(), &items)
                .await
                .unwrap();
            assert!(landed.iter().all(|l| *l), "{landed:?}");
            let read = leased_entries_read(&mut tx).await - before;
            tx.commit().await.unwrap();
            read
        })
        .await;
        assert!(
            read < 100,
            "a completion batch of 8 read {read} entries of runs_leased (544+ running)"
        );
    }
    // A heartbeat of 256 held runs reads neither the other running runs.
    let held: Vec<(Uuid, i32)> = claimed[56..312]
        .iter()
        .map(|c| (c.run_id, c.attempt))
        .collect();
    for _ in 0..7 {
        let mut tx = repo::worker_tx(&t.app).await.unwrap();
        let before = leased_entries_read(&mut tx).await;
        let beaten = repo::heartbeat_in(&mut tx, "w1", &held, 30.0)
            .await
            .unwrap();
        assert_eq!(beaten, 256);
        let read = leased_entries_read(&mut tx).await - before;
        tx.commit().await.unwrap();
        assert!(
            read < 100,
            "a heartbeat of 256 read {read} entries of runs_leased (544 running)"
        );
    }
    // A journalled step of the run claimed last (its lease the latest, so the last entry of
    // runs_leased) checks its own run by id, not every running run.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let last = repo::worker_claim(&t.app, "w2", 10, 30.0).await.unwrap();
    assert_eq!(last.len(), 1);
    let c = &last[0];
    let trace = awooop::runtime::trace::TraceContext {
        trace_id: c.trace_id.clone(),
        span_id: c.span_id.clone(),
        sampled: true,
    };
    for index in 0..7 {
        let read = tenancy::scope(p.clone(), async {
            let mut tx = cp.db().tenant().await.unwrap();
            let before = leased_entries_read(&mut tx).await;
            let rec = repo::StepRecord {
                project: p.as_str(),
                run_id: c.run_id,
                attempt: c.attempt,
                step_index: index,
                step_key: "echo",
                step_type: "output",
                input_hash: "sha256:test",
                status: "succeeded",
                output: None,
                error_code: None,
                trace: &trace,
                started_at: chrono::Utc::now(),
            };
            assert!(repo::journal_step(&mut tx, &rec).await.unwrap());
            let read = leased_entries_read(&mut tx).await - before;
            tx.commit().await.unwrap();
            read
        })
        .await;
        assert!(
            read < 100,
            "journalling one step read {read} entries of runs_leased (545 running)"
        );
    }
    drop(su);
    t.cleanup().await;
}

/// The next notice on `l` within `wait`, as (channel, payload), or None.
async fn next_notice(
    l: &mut sqlx::postgres::PgListener,
    wait: Duration,
) -> Option<(String, String)> {
    match tokio::time::timeout(wait, l.recv()).await {
        Ok(n) => {
            let n = n.unwrap();
            Some((n.channel().to_string(), n.payload().to_string()))
        }
        Err(_) => None,
    }
}

/// The next two notices on `l`, sorted.
async fn two_notices(l: &mut sqlx::postgres::PgListener) -> Vec<(String, String)> {
    let mut got = Vec::new();
    for _ in 0..2 {
        got.push(
            next_notice(l, Duration::from_secs(10))
                .await
                .expect("a notice"),
        );
    }
    got.sort();
    got
}

/// Run creation's wake-ups leave the writing transaction (migration 0071, store::notify): a
/// transaction that has called NOTIFY commits under PostgreSQL's cluster-wide NOTIFY lock,
/// held through its WAL flush, so the hot writers (the hub's group commits, API creations)
/// committed one at a time. A deferred transaction's triggers still write the `created`
/// event but send nothing; the writer's notifier announces the same wake-ups after COMMIT; an
/// ordinary transaction still notifies from its triggers.
#[tokio::test]
async fn run_creation_commits_without_notify_and_is_announced_after_its_commit() {
    let t = TestDb::new().await;
    let cp = t.control(Coord::none());
    let p = echo_project(&cp, "alpha").await;
    let runs = RunService::new(cp.clone());
    let db = cp.db().clone();
    let mut l = sqlx::postgres::PgListener::connect_with(&t.app)
        .await
        .unwrap();
    l.listen_all(["awooop_runs", "awooop_run_events"])
        .await
        .unwrap();
    let prepare = |i: i64| {
        let (runs, p) = (runs.clone(), p.clone());
        async move {
            let req = echo_req(json!({"name": i}));
            tenancy::scope(
                p,
                runs.prepare(
                    &admin(),
                    req,
                    None,
                    awooop::runtime::TraceContext::generate(),
                ),
            )
            .await
            .unwrap()
        }
    };
    let insert = |deferred: bool, prepared: awooop::runtime::PreparedRun| {
        let (db, p) = (db.clone(), p.clone());
        tenancy::scope(p, async move {
            let mut tx = if deferred {
                db.tenant_deferred().await.unwrap()
            } else {
                db.tenant().await.unwrap()
            };
            let v = RunService::insert_prepared_many(&mut tx, &[&prepared])
                .await
                .unwrap()
                .unwrap();
            tx.commit().await.unwrap();
            v[0].run_id
        })
    };
    // The triggers' `awooop_runs` notice names the project, the notifier's also carries its
    // token (its own process's workers, woken directly, ignore it).
    let token = format!("alpha {}", db.notifier().runs_token());
    let expect_both = |run: Uuid, runs_payload: &str| {
        let mut want = vec![
            ("awooop_run_events".to_string(), format!("alpha {run} 1")),
            ("awooop_runs".to_string(), runs_payload.to_string()),
        ];
        want.sort();
        want
    };

    // 1. A deferred transaction: its run and `created` event are written, nothing is sent.
    let run = insert(true, prepare(1).await).await;
    assert_eq!(
        next_notice(&mut l, Duration::from_millis(500)).await,
        None,
        "a deferred transaction must not NOTIFY (its commit would take the NOTIFY lock)"
    );
    let f = facts(&t, "alpha", run).await;
    assert_eq!(
        (f.0.as_str(), f.5.clone(), f.6.clone()),
        ("queued", vec![1], vec!["created".to_string()])
    );
    // Its writer announces the same wake-ups after the commit.
    db.notifier().runs_created("alpha", [run]);
    let got = two_notices(&mut l).await;
    assert_eq!(got, expect_both(run, &token));

    // 2. An ordinary transaction still notifies from its triggers (every other writer).
    let run = insert(false, prepare(2).await).await;
    let got = two_notices(&mut l).await;
    assert_eq!(got, expect_both(run, "alpha"));

    // 3. The API's creation path defers and announces.
    let v = tenancy::scope(
        p.clone(),
        runs.create(&admin(), echo_req(json!({"name": 3})), None, None),
    )
    .await
    .unwrap();
    let got = two_notices(&mut l).await;
    assert_eq!(got, expect_both(v.run_id, &token));
    assert_eq!(next_notice(&mut l, Duration::from_millis(200)).await, None);
    drop(l);
    t.cleanup().await;
}

/// Index entries of the idempotency keys' primary key this backend has read in the current
/// transaction (see [`leased_entries_read`] for why within one transaction).
async fn key_entries_read(tx: &mut sqlx::PgConnection) -> i64 {
    sqlx::query_scalar("SELECT pg_stat_get_xact_tuples_returned('idempotency_keys_pkey'::regclass)")
        .fetch_one(tx)
        .await
        .unwrap()
}

/// The group insert's "is one of these keys taken" check probes each key by (project, key)
/// whatever the planner's statistics say (issue 16, docs/benchmarks.md "channels (session 8)").
/// With statistics from when the project had almost no keys (a new project, a burst faster
/// than autovacuum's ANALYZE), `key = ANY($keys)` made the generic plan read every key of the
/// project and filter them: 23,376 keys, ~5 ms of PostgreSQL CPU per inbound group commit in
/// `awooop bench channels`, growing with every event the project had ever received.
#[tokio::test]
async fn the_idempotency_check_probes_its_own_keys_whatever_the_statistics() {
    let t = TestDb::new().await;
    let cp = t.control(Coord::none());
    let p = echo_project(&cp, "alpha").await;
    let mut su = t.superuser().await;
    // Statistics from when the project had no key, then 3,000 keys.
    sqlx::query("ANALYZE idempotency_keys")
        .execute(&mut su)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO idempotency_keys (project_id, key, request_hash, run_id, expires_at) \
         SELECT 'alpha', 'old.' || g, 'sha256:x', gen_random_uuid(), now() + interval '1 day' \
         FROM generate_series(1, 3000) g",
    )
    .execute(&mut su)
    .await
    .unwrap();
    let runs = RunService::new(cp.clone());
    // Seven batches of two keyed runs (custom plans first, then the generic one sqlx's
    // prepared statement settles on): each is written, reading a handful of key entries.
    for b in 0..7 {
        let mut prepared = Vec::new();
        for i in 0..2 {
            let req = echo_req(json!({"name": b * 2 + i}));
            let key = format!("new.{b}.{i}");
            prepared.push(
                tenancy::scope(
                    p.clone(),
                    runs.prepare(
                        &admin(),
                        req,
                        Some(&key),
                        awooop::runtime::TraceContext::generate(),
                    ),
                )
                .await
                .unwrap(),
            );
        }
        let read = tenancy::scope(p.clone(), async {
            let mut tx = cp.db().tenant().await.unwrap();
            let before = key_entries_read(&mut tx).await;
            let refs: Vec<&awooop::runtime::PreparedRun> = prepared.iter().collect();
            let written = RunService::insert_prepared_many(&mut tx, &refs)
                .await
                .unwrap();
            assert_eq!(written.map(|v| v.len()), Some(2), "batch {b}");
            let taken = repo::idempotency_keys_taken(&mut tx, &["old.7", "nope"])
                .await
                .unwrap();
            assert!(taken, "an existing key is found");
            let read = key_entries_read(&mut tx).await - before;
            tx.commit().await.unwrap();
            read
        })
        .await;
        assert!(
            read < 50,
            "batch {b}: checking 2 + 2 keys read {read} entries of idempotency_keys_pkey (3,000+ keys)"
        );
    }
    // A taken key still sends the batch to the one-by-one path (nothing written by it).
    let req = echo_req(json!({"name": "again"}));
    let again = tenancy::scope(
        p.clone(),
        runs.prepare(
            &admin(),
            req,
            Some("old.42"),
            awooop::runtime::TraceContext::generate(),
        ),
    )
    .await
    .unwrap();
    let written = tenancy::scope(p.clone(), async {
        let mut tx = cp.db().tenant().await.unwrap();
        let w = RunService::insert_prepared_many(&mut tx, &[&again])
            .await
            .unwrap();
        tx.rollback().await.unwrap();
        w
    })
    .await;
    assert!(written.is_none(), "a taken key writes nothing in the batch");
    drop(su);
    t.cleanup().await;
}

/// Row versions of `runs` this backend has written and not yet reported to the shared
/// statistics. PostgreSQL 15 reports a backend's counts at most once a second, so the "xact"
/// counter can include earlier transactions of a pooled connection: callers take a difference
/// within one transaction, where nothing is reported.
async fn runs_updated(tx: &mut sqlx::PgConnection) -> i64 {
    sqlx::query_scalar("SELECT pg_stat_get_xact_tuples_updated('runs'::regclass)")
        .fetch_one(&mut *tx)
        .await
        .unwrap()
}

/// A completion writes one new version of each run it lands (migration 0074): its journal
/// events are numbered under the row lock its fence took, not by a second `UPDATE runs` for the
/// counter (two versions per run before, each with its index entries). The events stay whole:
/// numbered after every earlier event of the run (here a journalled tool intent and a tool call
/// of the gateway, both written before the completion), gapless, with the counter caught up.
#[tokio::test]
async fn a_completion_updates_each_run_once_and_numbers_its_journal_after_earlier_events() {
    let t = TestDb::new().await;
    let cp = t.control(Coord::none());
    let p = echo_project(&cp, "alpha").await;
    let ids = create(&cp, &p, 4).await;
    let claimed = repo::worker_claim(&t.app, "w1", 10, 30.0).await.unwrap();
    assert_eq!(claimed.len(), 4);
    // Run 0 already has a journalled step (an intent flushed before a tool call) and a tool
    // call's audit row: both moved its counter the ordinary way.
    let first = claimed.iter().find(|c| c.run_id == ids[0]).unwrap();
    tenancy::scope(p.clone(), async {
        let mut tx = cp.db().tenant().await.unwrap();
        sqlx::query(
            "INSERT INTO run_steps (project_id, run_id, step_index, attempt, step_key, step_type, input_hash, status, trace_id, span_id, started_at) \
             VALUES ('alpha', $1, 5, $2, 'call', 'tool', 'sha256:i', 'intent', $3, $4, now())",
        )
        .bind(first.run_id)
        .bind(first.attempt)
        .bind(&first.trace_id)
        .bind(&first.span_id)
        .execute(&mut *tx)
        .await
        .unwrap();
        sqlx::query(
            "INSERT INTO mcp_call_audit (project_id, call_id, at, trace_id, run_id, agent, tool, environment, mode, decision, result_status, latency_us, bytes_in, bytes_out) \
             VALUES ('alpha', gen_random_uuid(), now(), $1, $2, 'echo', 'fx__blob', 'dev', 'shadow', 'allowed', 'ok', 1, 1, 1)",
        )
        .bind(&first.trace_id)
        .bind(first.run_id)
        .execute(&mut *tx)
        .await
        .unwrap();
        tx.commit().await.unwrap();
    })
    .await;

    let batch: Vec<Completion> = claimed.iter().map(succeeded).collect();
    let updated: i64 = tenancy::scope(p.clone(), async {
        let mut tx = cp.db().tenant().await.unwrap();
        let before = runs_updated(&mut tx).await;
        let landed = repo::complete_batch(&mut tx, "alpha", &batch)
            .await
            .unwrap();
        assert!(landed.iter().all(|l| *l), "{landed:?}");
        let n = runs_updated(&mut tx).await - before;
        tx.commit().await.unwrap();
        n
    })
    .await;
    assert_eq!(updated, 4, "one new version per completed run");

    for (i, id) in ids.iter().enumerate() {
        let f = facts(&t, "alpha", *id).await;
        assert_gapless(&f);
        assert_eq!(f.0, "succeeded", "{f:?}");
        if i == 0 {
            assert_eq!(
                f.3, 2,
                "the earlier intent and the completion's step: {f:?}"
            );
            assert_eq!(
                f.6,
                [
                    "created",
                    "state",
                    "step",
                    "tool_call",
                    "step",
                    "state",
                    "output"
                ],
                "{f:?}"
            );
        } else {
            assert_eq!(
                f.6,
                ["created", "state", "step", "state", "output"],
                "{f:?}"
            );
        }
    }
}

/// The gateway's audit batch moves a run's event counter once per statement, not once per call
/// (migration 0075): five calls of one run and three calls without a run in one INSERT update
/// the run once, and its five `tool_call` events are numbered gaplessly in the order the calls
/// started, whatever order the batch listed them in.
#[tokio::test]
async fn a_batch_of_tool_calls_moves_its_runs_counter_once() {
    let t = TestDb::new().await;
    let cp = t.control(Coord::none());
    let p = echo_project(&cp, "alpha").await;
    let ids = create(&cp, &p, 1).await;
    let claimed = repo::worker_claim(&t.app, "w1", 10, 30.0).await.unwrap();
    let run = &claimed[0];
    let updated: i64 = tenancy::scope(p.clone(), async {
        let mut tx = cp.db().tenant().await.unwrap();
        let before = runs_updated(&mut tx).await;
        // Listed newest first: the events must still follow `at`.
        sqlx::query(
            "INSERT INTO mcp_call_audit (project_id, call_id, at, trace_id, run_id, agent, tool, environment, mode, decision, result_status, latency_us, bytes_in, bytes_out) \
             SELECT 'alpha', gen_random_uuid(), now() - make_interval(secs => g), $1, \
                    CASE WHEN g <= 5 THEN $2::uuid END, 'echo', 'fx__t' || g, 'dev', 'shadow', 'allowed', 'ok', g, 1, 1 \
             FROM generate_series(1, 8) g",
        )
        .bind(&run.trace_id)
        .bind(run.run_id)
        .execute(&mut *tx)
        .await
        .unwrap();
        let n = runs_updated(&mut tx).await - before;
        tx.commit().await.unwrap();
        n
    })
    .await;
    assert_eq!(updated, 1, "one counter move for the batch's one run");
    let f = facts(&t, "alpha", ids[0]).await;
    assert_gapless(&f);
    assert_eq!(
        f.6,
        [
            "created",
            "state",
            "tool_call",
            "tool_call",
            "tool_call",
            "tool_call",
            "tool_call"
        ],
        "{f:?}"
    );
    let tools: Vec<String> = tenancy::scope(p.clone(), async {
        let mut tx = cp.db().tenant().await.unwrap();
        let v = sqlx::query_scalar(
            "SELECT data->>'tool' FROM run_events WHERE run_id = $1 AND kind = 'tool_call' ORDER BY seq",
        )
        .bind(ids[0])
        .fetch_all(&mut *tx)
        .await
        .unwrap();
        tx.commit().await.unwrap();
        v
    })
    .await;
    assert_eq!(tools, ["fx__t5", "fx__t4", "fx__t3", "fx__t2", "fx__t1"]);
}

/// The claim's prepared-statement counters on this session: (generic plans, custom plans).
async fn claim_plans(conn: &mut sqlx::PgConnection) -> (i64, i64) {
    sqlx::query_as(
        "SELECT coalesce(sum(generic_plans), 0)::bigint, coalesce(sum(custom_plans), 0)::bigint \
         FROM pg_prepared_statements \
         WHERE statement LIKE 'WITH room AS%' OR statement LIKE 'SELECT locked, busy, passed_over, queued FROM%'",
    )
    .fetch_one(conn)
    .await
    .unwrap()
}

/// Every claim batch runs the claim on its generic plan: under the server's default
/// `plan_cache_mode = auto` the statement was planned afresh at every execution (its generic
/// estimate never looked cheaper than a custom plan), 0.6 ms of backend CPU per claim
/// (docs/benchmarks.md, "Session 15"). Counted by the session's own prepared-statement
/// statistics, for the claim loop's transaction and for the completion writer's refill.
#[tokio::test]
async fn every_claim_runs_on_the_generic_plan_without_replanning() {
    let t = TestDb::new().await;
    let cp = t.control(Coord::none());
    let p = echo_project(&cp, "alpha").await;
    create(&cp, &p, 24).await;
    // One connection, so the counters read below are the claims' session's.
    let one = awooop::db::connect_app(&t.url, 1).await.unwrap();
    let mut got = 0;
    for _ in 0..8 {
        got += repo::worker_claim(&one, "w1", 2, 30.0).await.unwrap().len();
    }
    assert_eq!(got, 16);
    // The completion writer's refill: a tenant transaction turned into worker scope.
    for _ in 0..3 {
        let next = tenancy::scope(p.clone(), async {
            let mut tx = awooop::tenancy::Db::new(one.clone())
                .tenant()
                .await
                .unwrap();
            repo::enter_worker_scope(&mut tx).await.unwrap();
            let next = repo::claim_in(&mut tx, "w1", 2, 30.0, None).await.unwrap();
            tx.commit().await.unwrap();
            next
        })
        .await;
        got += next.len();
    }
    assert_eq!(got, 22);
    let mut conn = one.acquire().await.unwrap();
    let (generic, custom) = claim_plans(&mut conn).await;
    // Two statements per claim since migration 0077: the project lock and the claim.
    assert_eq!(
        (generic, custom),
        (22, 0),
        "claims on generic plans, custom plans (each custom plan is a fresh planning)"
    );
    drop(conn);
    one.close().await;
    t.cleanup().await;
}

/// Run creations write on the insert's generic plan from its first execution on a
/// connection (issue 18, session 25): under the server's default `plan_cache_mode = auto`
/// every connection planned the statement afresh at its first five executions (and after,
/// whenever the generic estimate looked dearer), and the pool hands out its least recently
/// used connection, so at low load nearly every creation was planned again: 1.2 ms median in
/// its `Bind` on the 2-core machine against 0.12 ms on the cached plan (docs/benchmarks.md,
/// "Session 25"). Counted by the session's own prepared-statement statistics, for creations
/// without a key (the group commit) and with one (the one-by-one path).
#[tokio::test]
async fn run_creations_write_on_the_generic_plan_without_replanning() {
    let t = TestDb::new().await;
    let p = echo_project(&t.control(Coord::none()), "alpha").await;
    // One connection, so the counters read below are the creations' session's.
    let one = awooop::db::connect_app(&t.url, 1).await.unwrap();
    let cp = ControlPlane::new(
        awooop::tenancy::Db::new(one.clone()),
        Coord::none(),
        test_keyring(),
    );
    let keyless = create(&cp, &p, 8).await;
    let runs = RunService::new(cp.clone());
    for i in 0..3 {
        let req = echo_req(json!({"keyed": i}));
        let key = format!("plan-{i}");
        tenancy::scope(p.clone(), runs.create(&admin(), req, Some(&key), None))
            .await
            .unwrap();
    }
    assert_eq!(keyless.len(), 8);
    let mut conn = one.acquire().await.unwrap();
    let (generic, custom): (i64, i64) = sqlx::query_as(
        "SELECT coalesce(sum(generic_plans), 0)::bigint, coalesce(sum(custom_plans), 0)::bigint \
         FROM pg_prepared_statements \
         WHERE statement LIKE 'WITH taken AS%' OR statement LIKE 'INSERT INTO runs (%'",
    )
    .fetch_one(&mut *conn)
    .await
    .unwrap();
    assert_eq!(
        (generic, custom),
        (11, 0),
        "creations' inserts on generic plans, custom plans (each custom plan is a fresh planning)"
    );
    drop(conn);
    one.close().await;
    t.cleanup().await;
}

/// A claim counts the running runs of the projects it claims for, not every tenant's: the
/// count behind `max_concurrent` read every running run of the table (`runs_leased`) and
/// fetched each to see its project, so one tenant's work in flight made every other tenant's
/// claims slower (twice the claim cost with 10,000 running, docs/benchmarks.md "Session 15").
/// Migration 0076.
#[tokio::test]
async fn a_claim_reads_only_the_running_runs_of_the_projects_it_claims_for() {
    let t = TestDb::new().await;
    let mut su = t.superuser().await;
    add_projects(&mut su, &["alpha", "beta"]).await;
    let insert = |project: &str, n: i64| {
        format!(
            "INSERT INTO runs (project_id, run_id, agent, mode, input, input_hash, agent_revision_id, \
             agent_body_hash, trace_id, span_id, max_attempts, deadline_at, max_concurrent) \
             SELECT '{project}', gen_random_uuid(), 'echo', 'shadow', '{{}}'::jsonb, 'sha256:' || repeat('0', 64), \
             gen_random_uuid(), 'sha256:x', md5(g::text), substr(md5(g::text), 1, 16), 3, \
             now() + interval '1 hour', 100000 FROM generate_series(1, {n}) g"
        )
    };
    // History (a table the planner reads through its indexes), then alpha's 400 runs in
    // flight, claimed by its own worker; statistics from before they ran.
    for sql in [
        insert("alpha", 20_000),
        "UPDATE runs SET state = 'running', attempt = 1, worker_id = 'old', \
         lease_expires_at = now() + interval '1 minute'"
            .into(),
        "UPDATE runs SET state = 'succeeded', finished_at = now(), worker_id = NULL, \
         lease_expires_at = NULL"
            .into(),
        insert("alpha", 400),
        "VACUUM ANALYZE runs".into(),
    ] {
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(&mut su)
            .await
            .unwrap();
    }
    let alphas = repo::worker_claim_for(&t.app, "wa", 400, 30.0, Some("alpha"))
        .await
        .unwrap();
    assert_eq!(alphas.len(), 400);
    sqlx::raw_sql(sqlx::AssertSqlSafe(insert("beta", 12)))
        .execute(&mut su)
        .await
        .unwrap();
    // Beta's claims, as the claim loop issues them.
    let mut got = 0;
    for _ in 0..4 {
        let mut tx = repo::claim_tx(&t.app).await.unwrap();
        let before = leased_entries_read(&mut tx).await;
        let claimed = repo::claim_in(&mut tx, "wb", 3, 30.0, None).await.unwrap();
        let read = leased_entries_read(&mut tx).await - before;
        tx.commit().await.unwrap();
        assert!(
            claimed.iter().all(|c| c.project_id == "beta"),
            "{claimed:?}"
        );
        got += claimed.len();
        assert!(
            read < 50,
            "a claim of 3 of beta's runs read {read} index entries of running runs (alpha: 400)"
        );
    }
    assert_eq!(got, 12);
    drop(su);
    t.cleanup().await;
}

/// While any session holds a snapshot older than the queue's recent claims (a pg_dump, a
/// report, a session idle in a transaction), the entries the claimed runs left in the queue
/// index cannot be marked dead, and every probe of a project's oldest queued run walks them,
/// one heap fetch each. A claim walks them twice (migration 0085): the scan that finds the
/// project and its head, and the claim statement's one probe of head and max_concurrent; its
/// claim scan starts at the head (in index order: bitmap scans are off in the claim's
/// transaction). Before, six walks for a claim of all projects (3,612 entries here) and four
/// for a bound one (2,455): one 70-second snapshot held during `bench runs` cut the capped
/// drain by more than half (docs/benchmarks.md, "Session 32").
#[tokio::test]
async fn a_claim_walks_the_runs_claimed_under_a_held_snapshot_at_most_twice() {
    let t = TestDb::new().await;
    let mut su = t.superuser().await;
    add_projects(&mut su, &["alpha", "beta"]).await;
    queue(&mut su, "'alpha'", "100000", 1000).await;
    // Another project, newer: the claim of all projects finds it and starts with alpha.
    queue(&mut su, "'beta'", "100000", 10).await;
    sqlx::query(
        "UPDATE runs SET created_at = created_at + interval '1 day' WHERE project_id = 'beta'",
    )
    .execute(&mut su)
    .await
    .unwrap();
    sqlx::query("VACUUM ANALYZE runs")
        .execute(&mut su)
        .await
        .unwrap();
    // One connection, its plans made before the snapshot: planning a statement probes the
    // index's ends (the planner's actual-range lookup) and would walk the entries once more.
    let one = awooop::db::connect_app(&t.url, 1).await.unwrap();
    for bound in [None, Some("alpha")] {
        let mut tx = repo::claim_tx(&one).await.unwrap();
        assert_eq!(
            repo::claim_in(&mut tx, "w0", 1, 30.0, bound)
                .await
                .unwrap()
                .len(),
            1
        );
        tx.commit().await.unwrap();
    }
    let mut held = t.superuser().await;
    sqlx::raw_sql("BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT 1")
        .execute(&mut held)
        .await
        .unwrap();
    // Alpha's 600 oldest runs claimed and finished after the snapshot was taken (the two above
    // with them).
    for _ in 0..6 {
        let got = repo::worker_claim_for(&t.app, "w1", 100, 30.0, Some("alpha"))
            .await
            .unwrap();
        assert_eq!(got.len(), 100);
        sqlx::query(
            "UPDATE runs SET state = 'succeeded', finished_at = now(), worker_id = NULL, \
             lease_expires_at = NULL WHERE state = 'running'",
        )
        .execute(&mut su)
        .await
        .unwrap();
    }
    for (scope, bound) in [("all projects", None), ("alpha", Some("alpha"))] {
        let mut tx = repo::claim_tx(&one).await.unwrap();
        let before = queue_entries_read(&mut tx).await;
        let claimed = repo::claim_in(&mut tx, "w2", 4, 30.0, bound).await.unwrap();
        let read = queue_entries_read(&mut tx).await - before;
        tx.commit().await.unwrap();
        assert_eq!(claimed.len(), 4, "{scope}");
        assert!(claimed.iter().all(|c| c.project_id == "alpha"), "{scope}");
        // Still the oldest first: nothing of alpha's queue is older than what was claimed.
        let oldest = claimed.iter().map(|c| c.created_at).min().unwrap();
        let older: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM runs WHERE project_id = 'alpha' AND state = 'queued' \
             AND created_at < $1",
        )
        .bind(oldest)
        .fetch_one(&mut su)
        .await
        .unwrap();
        assert_eq!(older, 0, "{scope}");
        assert!(
            read <= 2 * 600 + 50,
            "a claim of 4 runs ({scope}) read {read} entries of the queue index; 600 claimed \
             runs are still in it behind a held snapshot"
        );
    }
    sqlx::raw_sql("ROLLBACK").execute(&mut held).await.unwrap();
    drop(held);
    one.close().await;
    drop(su);
    t.cleanup().await;
}

/// Insert the projects (tenants) `ids` as the superuser.
async fn add_projects(su: &mut sqlx::PgConnection, ids: &[&str]) {
    sqlx::query(
        "INSERT INTO projects (project_id, display_name) SELECT id, id FROM unnest($1::text[]) id",
    )
    .bind(ids)
    .execute(su)
    .await
    .unwrap();
}

/// Queue `n` runs straight into `runs` as the superuser, numbered `g` = 0 .. n-1 and created a
/// second apart (an hour ago, in the order of `g`): `project` and `cap` are SQL expressions of
/// `g` (the run's project and its `max_concurrent`).
async fn queue(su: &mut sqlx::PgConnection, project: &str, cap: &str, n: i64) {
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO runs (project_id, run_id, agent, mode, input, input_hash, agent_revision_id, agent_body_hash, \
         trace_id, span_id, max_attempts, deadline_at, max_concurrent, created_at) \
         SELECT {project}, gen_random_uuid(), 'echo', 'shadow', '{{}}'::jsonb, \
         'sha256:' || repeat('0', 64), gen_random_uuid(), 'sha256:x', md5(g::text), substr(md5(g::text), 1, 16), 3, \
         now() + interval '1 hour', {cap}, now() - interval '1 hour' + g * interval '1 second' \
         FROM generate_series(0, $1 - 1) g"
    )))
    .bind(n)
    .execute(su)
    .await
    .unwrap();
}

/// The completion writer's refill (`repo::refill_in`) starts successors of its project without
/// the project's lock. What keeps the cap: it starts no more runs than its own transaction
/// ended, and no more than the cap minus the running runs its snapshot shows. Here a refill and a
/// locked claim run at the same time on a project at 2 of 3: the claim still sees the ended run
/// as running and takes the one free place, the refill takes the ended run's place; together
/// exactly 3. A refill bounded by the room its snapshot shows (2 here) instead would make 4.
/// Then the cap is lowered below the running count: a refill after one completion starts none.
#[tokio::test]
async fn a_refill_never_raises_its_projects_running_count() {
    refill_keeps_the_cap(false).await;
}

/// The same for a project-bound worker's refill (`awooop worker --project`), which counts its
/// project's running runs without the fairness probe.
#[tokio::test]
async fn a_project_bound_refill_never_raises_its_projects_running_count() {
    refill_keeps_the_cap(true).await;
}

async fn refill_keeps_the_cap(bound: bool) {
    let t = TestDb::new().await;
    let mut su = t.superuser().await;
    add_projects(&mut su, &["capped"]).await;
    queue(&mut su, "'capped'", "3", 20).await;
    let running = || {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM runs WHERE project_id = 'capped' AND state = 'running'",
        )
    };
    let db = t.db();
    let p = ProjectId::parse("capped").unwrap();
    let done = |c: &repo::Claimed| Completion {
        steps: vec![],
        ..succeeded(c)
    };
    // Complete `c` and refill in one transaction, left open.
    let complete_and_refill = |c: repo::Claimed, worker: &'static str| {
        let (db, p) = (db.clone(), p.clone());
        tenancy::scope(p.clone(), async move {
            let mut tx = db.tenant().await.unwrap();
            let landed = repo::complete_batch(&mut tx, p.as_str(), &[done(&c)])
                .await
                .unwrap();
            assert_eq!(landed, vec![true]);
            repo::enter_worker_scope(&mut tx).await.unwrap();
            let refilled = repo::refill_in(&mut tx, worker, p.as_str(), 1, 30.0, bound)
                .await
                .unwrap();
            (tx, refilled)
        })
    };

    let mut a = repo::claim_tx(&t.app).await.unwrap();
    let first = repo::claim_in(&mut a, "a", 2, 30.0, None).await.unwrap();
    a.commit().await.unwrap();
    assert_eq!(first.len(), 2);
    let (refill_tx, refilled) = complete_and_refill(first[0].clone(), "a").await;
    assert_eq!(
        refilled.len(),
        1,
        "the refill started more runs than it ended"
    );
    let mut b = repo::claim_tx(&t.app).await.unwrap();
    let second = repo::claim_in(&mut b, "b", 8, 30.0, None).await.unwrap();
    b.commit().await.unwrap();
    refill_tx.commit().await.unwrap();
    assert_eq!(second.len(), 1, "{second:?}");
    assert_eq!(running().fetch_one(&mut su).await.unwrap(), 3);

    // The cap lowered to 2 with 3 running: a completion gets no successor until the project
    // is under its new cap.
    sqlx::query("UPDATE runs SET max_concurrent = 2 WHERE state IN ('queued', 'retrying')")
        .execute(&mut su)
        .await
        .unwrap();
    let (tx, refilled) = complete_and_refill(second[0].clone(), "b").await;
    tx.commit().await.unwrap();
    assert!(refilled.is_empty(), "{refilled:?}");
    assert_eq!(running().fetch_one(&mut su).await.unwrap(), 2);
    drop(su);
    t.cleanup().await;
}

/// A refill takes its own project's runs only when that project's oldest queued run is the
/// oldest of all: here another tenant's runs have waited longer, so the refill starts nothing
/// and leaves the choice to the locked claim, which visits projects oldest first. Without that
/// check a tenant with a deep backlog would keep every slot its runs free.
#[tokio::test]
async fn a_refill_yields_to_another_tenants_older_runs() {
    let t = TestDb::new().await;
    let mut su = t.superuser().await;
    add_projects(&mut su, &["busy", "waiting"]).await;
    queue(&mut su, "'busy'", "64", 10).await;
    let mut a = repo::claim_tx(&t.app).await.unwrap();
    let first = repo::claim_in(&mut a, "a", 1, 30.0, None).await.unwrap();
    a.commit().await.unwrap();
    assert_eq!(first.len(), 1);
    // Another tenant's runs, queued before every queued run of 'busy'.
    queue(&mut su, "'waiting'", "64", 3).await;
    sqlx::query(
        "UPDATE runs SET created_at = created_at - interval '1 day' WHERE project_id = 'waiting'",
    )
    .execute(&mut su)
    .await
    .unwrap();
    let refill = |c: repo::Claimed, bound: bool| {
        let db = t.db();
        let p = ProjectId::parse("busy").unwrap();
        tenancy::scope(p.clone(), async move {
            let mut tx = db.tenant().await.unwrap();
            let done = Completion {
                steps: vec![],
                ..succeeded(&c)
            };
            repo::complete_batch(&mut tx, p.as_str(), &[done])
                .await
                .unwrap();
            repo::enter_worker_scope(&mut tx).await.unwrap();
            let r = repo::refill_in(&mut tx, "a", p.as_str(), 1, 30.0, bound)
                .await
                .unwrap();
            tx.commit().await.unwrap();
            r
        })
    };
    let refilled = refill(first[0].clone(), false).await;
    assert!(refilled.is_empty(), "{refilled:?}");
    // A worker bound to 'busy' (`awooop worker --project busy`) cannot start 'waiting''s runs,
    // so its refill does not yield to them: it takes its own project's next run.
    let mut a = repo::claim_tx(&t.app).await.unwrap();
    let bound_first = repo::claim_in(&mut a, "a", 1, 30.0, Some("busy"))
        .await
        .unwrap();
    a.commit().await.unwrap();
    let refilled = refill(bound_first[0].clone(), true).await;
    assert_eq!(
        refilled.len(),
        1,
        "a bound refill yielded to runs it cannot claim"
    );
    assert_eq!(refilled[0].project_id, "busy");
    // With no older run elsewhere, the same refill takes its own project's next run.
    sqlx::query("DELETE FROM runs WHERE project_id = 'waiting'")
        .execute(&mut su)
        .await
        .unwrap();
    let mut b = repo::claim_tx(&t.app).await.unwrap();
    let second = repo::claim_in(&mut b, "a", 1, 30.0, None).await.unwrap();
    b.commit().await.unwrap();
    let refilled = refill(second[0].clone(), false).await;
    assert_eq!(refilled.len(), 1);
    assert_eq!(refilled[0].project_id, "busy");
    drop(su);
    t.cleanup().await;
}

/// A refill's fairness probe reads the heads of the projects' queues, not the queues: the first
/// version sorted every queued run of every tenant to find the oldest (no index orders the
/// whole queue by age), 4.7 ms per completion with 18,555 queued runs (docs/benchmarks.md,
/// "Session 20"). Here two tenants have 2,000 queued runs each; the refill of the one whose
/// head is older takes its next run and reads a few index entries. Ties on age go to the
/// smaller project id, as the claim orders.
#[tokio::test]
async fn a_refills_fairness_probe_reads_only_the_heads_of_the_queues() {
    let t = TestDb::new().await;
    let mut su = t.superuser().await;
    add_projects(&mut su, &["busy", "other"]).await;
    queue(&mut su, "'busy'", "64", 2_000).await;
    queue(&mut su, "'other'", "64", 2_000).await;
    sqlx::raw_sql("ANALYZE runs")
        .execute(&mut su)
        .await
        .unwrap();
    let mut a = repo::claim_tx(&t.app).await.unwrap();
    let first = repo::claim_in(&mut a, "a", 1, 30.0, None).await.unwrap();
    a.commit().await.unwrap();
    // 'busy' was queued first (by a few microseconds), so its run went first.
    assert_eq!(first[0].project_id, "busy", "{first:?}");
    // Now 'other''s head as old as 'busy''s, to the microsecond: a tie, which goes to 'busy'.
    sqlx::query(
        "UPDATE runs SET created_at = created_at \
           + ((SELECT min(created_at) FROM runs WHERE project_id = 'busy' AND state = 'queued') \
              - (SELECT min(created_at) FROM runs WHERE project_id = 'other')) \
         WHERE project_id = 'other'",
    )
    .execute(&mut su)
    .await
    .unwrap();
    let db = t.db();
    let p = ProjectId::parse("busy").unwrap();
    let (read, refilled) = tenancy::scope(p.clone(), async move {
        let mut tx = db.tenant().await.unwrap();
        let done = Completion {
            steps: vec![],
            ..succeeded(&first[0])
        };
        repo::complete_batch(&mut tx, p.as_str(), &[done])
            .await
            .unwrap();
        repo::enter_worker_scope(&mut tx).await.unwrap();
        let before = runs_entries_read(&mut tx).await;
        let r = repo::refill_in(&mut tx, "a", p.as_str(), 1, 30.0, false)
            .await
            .unwrap();
        let read = runs_entries_read(&mut tx).await - before;
        tx.commit().await.unwrap();
        (read, r)
    })
    .await;
    assert_eq!(refilled.len(), 1, "the tie went to 'other'");
    assert_eq!(refilled[0].project_id, "busy");
    assert!(
        read < 100,
        "a refill read {read} index entries and rows of runs (4,000 queued)"
    );
    drop(su);
    t.cleanup().await;
}

/// Index entries read from every index of `runs` and rows read by sequential scans of it, in
/// this transaction so far.
async fn runs_entries_read(tx: &mut sqlx::PgConnection) -> i64 {
    sqlx::query_scalar(
        "SELECT (sum(pg_stat_get_xact_tuples_returned(i.indexrelid)) \
          + pg_stat_get_xact_tuples_returned('runs'::regclass))::bigint \
         FROM pg_index i WHERE i.indrelid = 'runs'::regclass",
    )
    .fetch_one(tx)
    .await
    .unwrap()
}

/// A claim locks only the runs it starts, however many tenants have a backlog. Each project
/// with room locked up to `n` of its oldest runs and a sort then kept the `n` oldest of all: with
/// twelve backlogged tenants a claim of 4 locked 48 rows (each lock a row write and WAL) and
/// released 44 at its commit; with 50 tenants, 800 for a claim of 16 (docs/benchmarks.md,
/// "Session 15"). Projects are now visited in the order of their oldest queued run.
#[tokio::test]
async fn a_claim_locks_only_the_runs_it_starts_whatever_the_number_of_backlogs() {
    let t = TestDb::new().await;
    let mut su = t.superuser().await;
    sqlx::query(
        "INSERT INTO projects (project_id, display_name) \
         SELECT 'tenant-' || lpad(i::text, 2, '0'), 'tenant' FROM generate_series(0, 11) i",
    )
    .execute(&mut su)
    .await
    .unwrap();
    // Six queued runs per tenant, interleaved in time: tenant-00's first run is the oldest.
    queue(
        &mut su,
        "'tenant-' || lpad((g % 12)::text, 2, '0')",
        "64",
        72,
    )
    .await;
    sqlx::query("ANALYZE runs").execute(&mut su).await.unwrap();
    let oldest: Uuid = sqlx::query_scalar("SELECT run_id FROM runs ORDER BY created_at LIMIT 1")
        .fetch_one(&mut su)
        .await
        .unwrap();
    for round in 0..3 {
        let mut tx = repo::claim_tx(&t.app).await.unwrap();
        let claimed = repo::claim_in(&mut tx, "w", 4, 30.0, None).await.unwrap();
        // Rows this transaction locked and left queued: locked for nothing.
        let idle_locks: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM runs WHERE state IN ('queued', 'retrying') \
             AND xmax::text = txid_current()::text",
        )
        .fetch_one(&mut *tx)
        .await
        .unwrap();
        tx.commit().await.unwrap();
        assert_eq!(claimed.len(), 4, "round {round}");
        assert_eq!(
            idle_locks, 0,
            "round {round}: a claim of 4 locked {idle_locks} runs it did not start (12 tenants)"
        );
        if round == 0 {
            assert!(claimed.iter().any(|c| c.run_id == oldest), "{claimed:?}");
        }
    }
    drop(su);
    t.cleanup().await;
}

/// Two claims of one project at the same instant start no more than its `max_concurrent`
/// between them. Each counted the project's running runs from its own snapshot, neither saw
/// the other's uncommitted runs, and SKIP LOCKED passed over the other's rows without waiting:
/// each started the whole room (here 4 + 4 of a cap of 4; up to 256 of a cap of 64 in `awooop
/// bench runs`, docs/benchmarks.md "Session 16"). The second claim now passes over the project
/// the first is claiming from (migration 0077), without waiting, and takes another project's
/// runs instead.
#[tokio::test]
async fn two_claims_at_once_start_no_more_than_the_projects_cap() {
    let t = TestDb::new().await;
    let mut su = t.superuser().await;
    add_projects(&mut su, &["capped", "other"]).await;
    // 'capped': 20 queued runs, at most 4 at once, older than 'other''s 20 (cap 64).
    queue(
        &mut su,
        "CASE WHEN g < 20 THEN 'capped' ELSE 'other' END",
        "CASE WHEN g < 20 THEN 4 ELSE 64 END",
        40,
    )
    .await;
    let running = |project: &'static str| {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM runs WHERE project_id = $1 AND state = 'running'",
        )
        .bind(project)
    };
    let per_project = |claimed: &[repo::Claimed], project: &str| {
        claimed.iter().filter(|c| c.project_id == project).count()
    };

    let mut a = repo::claim_tx(&t.app).await.unwrap();
    let first = repo::claim_in(&mut a, "a", 4, 30.0, None).await.unwrap();
    assert_eq!(per_project(&first, "capped"), 4, "{first:?}");
    // The second claim runs while the first is uncommitted; it must not wait for it either.
    let mut b = repo::claim_tx(&t.app).await.unwrap();
    let second = tokio::time::timeout(
        Duration::from_secs(10),
        repo::claim_in(&mut b, "b", 16, 30.0, None),
    )
    .await
    .expect("a claim waited for another claim's transaction")
    .unwrap();
    a.commit().await.unwrap();
    b.commit().await.unwrap();
    assert_eq!(
        running("capped").fetch_one(&mut su).await.unwrap(),
        4,
        "two claims at once started {} + {} runs of a project capped at 4",
        per_project(&first, "capped"),
        per_project(&second, "capped")
    );
    assert_eq!(per_project(&second, "other"), 16, "{second:?}");

    // Committed, the cap is simply full; a run finishing frees exactly one place.
    let mut c = repo::claim_tx(&t.app).await.unwrap();
    assert!(
        repo::claim_in(&mut c, "c", 16, 30.0, Some("capped"))
            .await
            .unwrap()
            .is_empty()
    );
    c.commit().await.unwrap();
    sqlx::query(
        "UPDATE runs SET state = 'succeeded', finished_at = now(), worker_id = NULL, lease_expires_at = NULL \
         WHERE run_id = $1",
    )
    .bind(first[0].run_id)
    .execute(&mut su)
    .await
    .unwrap();
    let mut d = repo::claim_tx(&t.app).await.unwrap();
    let next = repo::claim_in(&mut d, "d", 16, 30.0, Some("capped"))
        .await
        .unwrap();
    d.commit().await.unwrap();
    assert_eq!(next.len(), 1, "{next:?}");
    assert_eq!(running("capped").fetch_one(&mut su).await.unwrap(), 4);
    drop(su);
    t.cleanup().await;
}

/// Counts the executions in flight and the most seen at once.
struct Overlap {
    now: std::sync::atomic::AtomicUsize,
    peak: std::sync::atomic::AtomicUsize,
    inner: ScriptedExecutor,
}

#[async_trait]
impl Executor for Overlap {
    async fn execute(
        &self,
        ctx: &RunContext,
        journal: &mut Journal,
    ) -> awooop::error::Result<Outcome> {
        let now = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.peak.fetch_max(now, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(15)).await;
        self.now.fetch_sub(1, Ordering::SeqCst);
        self.inner.execute(ctx, journal).await
    }
}

/// Four workers draining one project capped at 3 never execute more than 3 of its runs at
/// once. Before migration 0077 the workers' claims, woken together, each saw the same running
/// count and each started up to the whole room.
#[tokio::test]
async fn four_workers_never_run_more_of_a_project_than_its_cap() {
    cap_holds(false, false).await;
}

/// The same with the completion writers refilling in their completion transactions, where a
/// refill starts successors of its own project without the project's lock
/// (`repo::refill_in`): it starts no more runs than its transaction ended, so four writers
/// refilling at once still never exceed the cap. (A refill that took the room its own snapshot
/// showed instead, as a claim without the lock would, exceeds it.)
#[tokio::test]
async fn four_workers_refilling_on_completion_never_run_more_of_a_project_than_its_cap() {
    cap_holds(true, false).await;
}

/// The same with the four workers bound to the project (`awooop worker --project alpha`, which
/// refills by default) while another tenant's runs have waited longer: those runs are not
/// theirs to claim, so the refills do not yield to them (before, every refill yielded and fell
/// back to the locked claim: no run was started by a refill), and the cap still holds.
#[tokio::test]
async fn project_bound_workers_refill_past_another_tenants_older_runs() {
    cap_holds(true, true).await;
}

/// `bound`: the workers claim only `alpha`'s runs, and `beta` has three runs queued a day
/// before every run of `alpha`.
async fn cap_holds(refill: bool, bound: bool) {
    let t = TestDb::new().await;
    let cp = t.control(Coord::none());
    let p = echo_project(&cp, "alpha").await;
    let n = 48;
    create(&cp, &p, n).await;
    let mut su = t.superuser().await;
    if bound {
        let beta = echo_project(&cp, "beta").await;
        create(&cp, &beta, 3).await;
        sqlx::query(
            "UPDATE runs SET created_at = created_at - interval '1 day' WHERE project_id = 'beta'",
        )
        .execute(&mut su)
        .await
        .unwrap();
    }
    sqlx::query("UPDATE runs SET max_concurrent = 3")
        .execute(&mut su)
        .await
        .unwrap();
    let exec = Arc::new(Overlap {
        now: Default::default(),
        peak: Default::default(),
        inner: ScriptedExecutor::new(GuardedGateway::new(cp.clone(), Arc::new(NoGateway))),
    });
    let (stop, rx) = shutdown_channel();
    let workers: Vec<_> = (0..4)
        .map(|i| {
            let mut cfg = WorkerConfig::new(format!("w{i}"));
            cfg.slots = 8;
            cfg.poll = Duration::from_millis(20);
            cfg.refill_on_complete = refill;
            cfg.project = bound.then(|| "alpha".to_string());
            Arc::new(Worker::new(t.app.clone(), cp.clone(), exec.clone(), cfg))
        })
        .collect();
    let handles: Vec<_> = workers
        .iter()
        .map(|w| tokio::spawn(w.clone().run(rx.clone())))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let done: u64 = workers
            .iter()
            .map(|w| w.stats.succeeded.load(Ordering::Relaxed))
            .sum();
        if done as usize >= n {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {done} of {n} runs finished"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.send(true).unwrap();
    for h in handles {
        h.await.unwrap().unwrap();
    }
    let peak = exec.peak.load(Ordering::SeqCst);
    assert!(
        peak <= 3,
        "{peak} runs of a project capped at 3 ran at once"
    );
    // And the cap was used, not just respected.
    assert!(peak >= 2, "{peak}");
    let refilled: u64 = workers
        .iter()
        .map(|w| w.stats.refilled.load(Ordering::Relaxed))
        .sum();
    if refill {
        assert!(refilled > 0, "no run was started by a refill");
    } else {
        assert_eq!(refilled, 0);
    }
    let succeeded: i64 = sqlx::query_scalar("SELECT count(*) FROM runs WHERE state = 'succeeded'")
        .fetch_one(&mut su)
        .await
        .unwrap();
    assert_eq!(succeeded as usize, n);
    if bound {
        let beta: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM runs WHERE project_id = 'beta' AND state = 'queued'",
        )
        .fetch_one(&mut su)
        .await
        .unwrap();
        assert_eq!(beta, 3, "a worker bound to alpha started beta's runs");
    }
    drop(su);
    t.cleanup().await;
}

/// A worker whose claim passed over a project because another claim held its lock looks again
/// within milliseconds (backing off), not at its next wake-up: here nothing else would wake it
/// for ten seconds (no notice: the runs were queued before it started; a fallback poll of 10 s).
#[tokio::test]
async fn a_claim_that_passed_over_a_held_project_looks_again_soon() {
    let t = TestDb::new().await;
    let cp = t.control(Coord::none());
    let p = echo_project(&cp, "alpha").await;
    create(&cp, &p, 3).await;
    // Another claimer holds alpha's project lock (migration 0077) for half a second.
    let mut holder = t.superuser().await;
    sqlx::query("BEGIN").execute(&mut holder).await.unwrap();
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended('awooop.claim/alpha', 0))")
        .execute(&mut holder)
        .await
        .unwrap();
    let exec = Arc::new(ScriptedExecutor::new(GuardedGateway::new(
        cp.clone(),
        Arc::new(NoGateway),
    )));
    let mut cfg = WorkerConfig::new("w");
    cfg.slots = 8;
    cfg.poll = Duration::from_secs(10);
    let w = Arc::new(Worker::new(t.app.clone(), cp.clone(), exec, cfg));
    let (stop, rx) = shutdown_channel();
    let h = tokio::spawn(w.clone().run(rx));
    let deadline = Instant::now() + Duration::from_secs(5);
    while w.stats.claims_passed_over.load(Ordering::Relaxed) == 0 {
        assert!(
            Instant::now() < deadline,
            "the claim never met the held lock"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(w.stats.claimed.load(Ordering::Relaxed), 0);
    tokio::time::sleep(Duration::from_millis(500)).await;
    sqlx::query("COMMIT").execute(&mut holder).await.unwrap();
    let released = Instant::now();
    while w.stats.succeeded.load(Ordering::Relaxed) < 3 {
        assert!(
            released.elapsed() < Duration::from_secs(3),
            "the runs waited for the fallback poll after the lock was released"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    stop.send(true).unwrap();
    h.await.unwrap().unwrap();
    drop(holder);
    t.cleanup().await;
}

/// A worker claims once per announcement of runs its own process created, not a second time
/// when PostgreSQL delivers that announcement's notice back (issue 18, session 25): the
/// notifier wakes its process's workers directly, and each of them then claimed again on the
/// notice, so at low load most claim statements found nothing (about twelve per run created
/// with four workers, docs/benchmarks.md "Session 25"). Notices of other processes (another
/// token, or the triggers' empty payload) still wake it.
#[tokio::test]
async fn a_worker_ignores_the_notices_of_runs_its_own_process_announced() {
    let t = TestDb::new().await;
    let cp = t.control(Coord::none());
    let p = echo_project(&cp, "alpha").await;
    let exec = Arc::new(ScriptedExecutor::new(GuardedGateway::new(
        cp.clone(),
        Arc::new(NoGateway),
    )));
    let mut cfg = WorkerConfig::new("w");
    cfg.slots = 8;
    // No fallback poll within the test: every claim round below is a wake-up's.
    cfg.poll = Duration::from_secs(60);
    let w = Arc::new(Worker::new(t.app.clone(), cp.clone(), exec, cfg));
    let (stop, rx) = shutdown_channel();
    let h = tokio::spawn(w.clone().run(rx));
    let rounds = || w.stats.claim_rounds.load(Ordering::Relaxed);
    // Settled: the first claim and the listener's wake-up once it listens.
    let mut last = u64::MAX;
    while rounds() != last || last < 1 {
        last = rounds();
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    // Another process's notice wakes it: one claim round.
    let mut su = t.superuser().await;
    sqlx::query("SELECT pg_notify('awooop_runs', 'another-process')")
        .execute(&mut su)
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while rounds() == last {
        assert!(
            Instant::now() < deadline,
            "another process's notice woke nothing"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(rounds(), last + 1);
    // Runs of its own process: the direct wake-up claims the run, the run's end makes it look
    // again; the notice that follows wakes nothing.
    let before = rounds();
    let n = 5;
    for i in 1..=n {
        create(&cp, &p, 1).await;
        let deadline = Instant::now() + Duration::from_secs(5);
        while w.stats.succeeded.load(Ordering::Relaxed) < i {
            assert!(Instant::now() < deadline, "run {i} was not picked up");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // Well past the notice's round trip.
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(
        rounds() - before,
        2 * n,
        "claim rounds for {n} runs created one at a time (two each: the wake-up, the run's end)"
    );
    stop.send(true).unwrap();
    h.await.unwrap().unwrap();
    t.cleanup().await;
}

/// Wait until the worker's claim rounds stop moving (its first claim and the listener's
/// wake-up once it listens are behind it), and return their count.
async fn settled_rounds(w: &Worker) -> u64 {
    let rounds = || w.stats.claim_rounds.load(Ordering::Relaxed);
    let mut last = u64::MAX;
    while rounds() != last || last < 2 {
        last = rounds();
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    last
}

/// Insert `n` queued runs of `project`'s echo agent as another writer would (the creation
/// triggers send the notices), to run after `delay`.
async fn insert_runs(su: &mut sqlx::PgConnection, project: &str, n: i64, delay: Duration) {
    sqlx::query(
        "INSERT INTO runs (project_id, run_id, agent, mode, input, input_hash, agent_revision_id, agent_body_hash, \
         trace_id, span_id, max_attempts, deadline_at, max_concurrent, run_after) \
         SELECT $1, gen_random_uuid(), 'echo', 'shadow', '{}'::jsonb, 'sha256:' || repeat('0', 64), c.revision_id, \
         c.body_hash, md5(g::text), substr(md5(g::text), 1, 16), 1, now() + interval '1 hour', 8, \
         now() + make_interval(secs => $3) \
         FROM generate_series(1, $2) g, \
              (SELECT revision_id, body_hash FROM contract_revisions \
               WHERE project_id = $1 AND kind = 'agent' AND name = 'echo' \
               ORDER BY revision DESC LIMIT 1) c",
    )
    .bind(project)
    .bind(n)
    .bind(delay.as_secs_f64())
    .execute(su)
    .await
    .unwrap();
}

/// A worker bound to one project (`awooop worker --project`, one Deployment per tenant) wakes
/// for its own project's new runs only (issue 18, session 31). The `awooop_runs` notice named
/// no project, so every run created anywhere woke every tenant's workers for a claim that could
/// only find nothing: 16 claims per run created with 16 tenants (`awooop bench idle`). The
/// notices now carry the project, from the triggers and from the notifier alike (migration
/// 0084), and so do the in-process wake-ups.
#[tokio::test]
async fn a_bound_worker_wakes_only_for_its_own_projects_runs() {
    let t = TestDb::new().await;
    let cp = t.control(Coord::none());
    echo_project(&cp, "alpha").await;
    let beta = echo_project(&cp, "beta").await;
    // Another process: its own notifier, so its notices reach this worker through PostgreSQL.
    let other = t.control(Coord::none());
    let exec = Arc::new(ScriptedExecutor::new(GuardedGateway::new(
        cp.clone(),
        Arc::new(NoGateway),
    )));
    let mut cfg = WorkerConfig::new("w-alpha");
    cfg.project = Some("alpha".into());
    // No fallback poll and no idle bound within the test: every claim round is a wake-up's.
    cfg.poll = Duration::from_secs(60);
    cfg.idle = Duration::from_secs(60);
    let w = Arc::new(Worker::new(t.app.clone(), cp.clone(), exec, cfg));
    let (stop, rx) = shutdown_channel();
    let h = tokio::spawn(w.clone().run(rx));
    let rounds = || w.stats.claim_rounds.load(Ordering::Relaxed);
    let before = settled_rounds(&w).await;
    // Beta's runs: created in this process (the direct wake-up), in another (its notifier's
    // notice) and by the triggers (their notice).
    create(&cp, &beta, 2).await;
    create(&other, &beta, 2).await;
    let mut su = t.superuser().await;
    insert_runs(&mut su, "beta", 2, Duration::ZERO).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        rounds(),
        before,
        "beta's runs woke the worker bound to alpha"
    );
    assert_eq!(w.stats.claimed.load(Ordering::Relaxed), 0);
    // Alpha's runs wake it, each way.
    let alpha = ProjectId::parse("alpha").unwrap();
    for (i, how) in ["this process", "another process", "the triggers"]
        .into_iter()
        .enumerate()
    {
        let woken = rounds();
        match i {
            0 => drop(create(&cp, &alpha, 1).await),
            1 => drop(create(&other, &alpha, 1).await),
            _ => insert_runs(&mut su, "alpha", 1, Duration::ZERO).await,
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while w.stats.claimed.load(Ordering::Relaxed) < i as u64 + 1 {
            assert!(
                Instant::now() < deadline,
                "alpha's run created by {how} was not picked up"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(rounds() > woken);
    }
    stop.send(true).unwrap();
    h.await.unwrap().unwrap();
    t.cleanup().await;
}

/// A worker whose claim found nothing queued waits for a notice, not for its fallback poll
/// (issue 18, session 31): an idle worker claimed twice a second, most of what an idle worker
/// pod cost the database (`awooop bench idle`). A queued run that is not claimable yet (a
/// future `run_after`) keeps it polling: nothing announces the moment it falls due.
#[tokio::test]
async fn an_idle_worker_waits_for_notices_and_polls_only_while_runs_are_queued() {
    let t = TestDb::new().await;
    let cp = t.control(Coord::none());
    echo_project(&cp, "alpha").await;
    let exec = Arc::new(ScriptedExecutor::new(GuardedGateway::new(
        cp.clone(),
        Arc::new(NoGateway),
    )));
    let mut cfg = WorkerConfig::new("w");
    cfg.poll = Duration::from_millis(50);
    cfg.idle = Duration::from_secs(60);
    let w = Arc::new(Worker::new(t.app.clone(), cp.clone(), exec, cfg));
    let (stop, rx) = shutdown_channel();
    let h = tokio::spawn(w.clone().run(rx));
    let rounds = || w.stats.claim_rounds.load(Ordering::Relaxed);
    // Settles at all: a 50 ms poll would claim eight times in each of its 400 ms looks.
    let deadline = Instant::now() + Duration::from_secs(10);
    let settle = tokio::time::timeout_at(deadline.into(), settled_rounds(&w)).await;
    let idle = settle.unwrap_or_else(|_| {
        panic!(
            "an idle worker kept claiming at its poll: {} rounds in 10 s",
            rounds()
        )
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(rounds(), idle, "claims while nothing was queued");
    // A run due in 1.5 s: its notice wakes the worker, whose claim finds it queued but not
    // claimable, so it polls until the run falls due.
    let mut su = t.superuser().await;
    let queued_at = Instant::now();
    insert_runs(&mut su, "alpha", 1, Duration::from_millis(1500)).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while w.stats.claimed.load(Ordering::Relaxed) < 1 {
        assert!(
            Instant::now() < deadline,
            "the delayed run waited for the idle bound"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(queued_at.elapsed() >= Duration::from_millis(1400));
    assert!(
        rounds() - idle >= 10,
        "the worker polled while the run waited: {} rounds",
        rounds() - idle
    );
    // Its run ended, nothing is queued: idle again.
    let deadline = Instant::now() + Duration::from_secs(10);
    while w.stats.failed.load(Ordering::Relaxed) + w.stats.succeeded.load(Ordering::Relaxed) < 1 {
        assert!(Instant::now() < deadline, "the run never ended");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let after = tokio::time::timeout(Duration::from_secs(10), settled_rounds(&w))
        .await
        .expect("the worker went back to waiting for notices");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(rounds(), after);
    stop.send(true).unwrap();
    h.await.unwrap().unwrap();
    t.cleanup().await;
}

/// A run whose lease the reaper took back (it goes to `retrying`, due after a backoff) wakes
/// the idle workers (issue 18, session 31): entering `retrying` sent no notice, and the workers
/// found such a run at their next fallback poll, which an idle worker no longer runs (it waits
/// for notices, up to its idle bound: here an hour). `awooop bench runs` saw its recovery after
/// a killed worker go from 3.5 s to 10 s, the idle bound, before the trigger covered it.
#[tokio::test]
async fn a_run_the_reaper_takes_back_wakes_an_idle_worker() {
    let t = TestDb::new().await;
    let cp = t.control(Coord::none());
    let p = echo_project(&cp, "alpha").await;
    let id = create(&cp, &p, 1).await[0];
    // A worker that dies holding it: claimed with a half-second lease, never heartbeated.
    let held = repo::worker_claim(&t.app, "dead", 1, 0.5).await.unwrap();
    assert_eq!(held.len(), 1);
    let exec = Arc::new(ScriptedExecutor::new(GuardedGateway::new(
        cp.clone(),
        Arc::new(NoGateway),
    )));
    let mut cfg = WorkerConfig::new("w");
    cfg.poll = Duration::from_millis(50);
    cfg.idle = Duration::from_secs(3600);
    // The test reaps below, at a moment it knows.
    cfg.reap_every = Duration::from_secs(3600);
    let w = Arc::new(Worker::new(t.app.clone(), cp.clone(), exec, cfg));
    let (stop, rx) = shutdown_channel();
    let h = tokio::spawn(w.clone().run(rx));
    // Idle: nothing queued (the run is running elsewhere).
    let idle = tokio::time::timeout(Duration::from_secs(10), settled_rounds(&w))
        .await
        .expect("the worker settles into waiting for notices");
    tokio::time::sleep(Duration::from_millis(600)).await;
    let reaped = repo::worker_reap(&t.app).await.unwrap();
    assert_eq!(reaped.requeued, 1, "the expired lease is taken back");
    let f = facts(&t, "alpha", id).await;
    assert_eq!(f.0, "retrying");
    // Due after a 0.25 s backoff; the worker is woken, finds it queued, polls and takes it.
    let deadline = Instant::now() + Duration::from_secs(10);
    while w.stats.succeeded.load(Ordering::Relaxed) < 1 {
        assert!(
            Instant::now() < deadline,
            "the reaped run waited for the idle bound ({} claim rounds since idle)",
            w.stats.claim_rounds.load(Ordering::Relaxed) - idle
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    stop.send(true).unwrap();
    h.await.unwrap().unwrap();
    t.cleanup().await;
}

/// Run events carry no foreign key to their run (migration 0080). The key's check ran once per
/// event row, and on a run its transaction had just created it locked the new version
/// (`FOR KEY SHARE`): a lock record in the WAL and a dirtied page for every run created, left
/// behind as the creator's id in `xmax`. (A claim or a completion locks its runs before it
/// updates them, so their new versions carry that lock anyway and the check found it held.)
/// Now a created run's version carries no lock, and a run's events still go with it when it
/// is deleted, in its own tenant's scope only.
#[tokio::test]
async fn a_created_runs_version_carries_no_lock_and_its_events_go_with_it() {
    let t = TestDb::new().await;
    let cp = t.control(Coord::none());
    let p = echo_project(&cp, "alpha").await;
    let ids = create(&cp, &p, 3).await;
    let mut su = t.superuser().await;
    // `xmax` of each run's version: 0 unless a transaction deleted, updated or locked it.
    let xmax: Vec<String> =
        sqlx::query_scalar("SELECT xmax::text FROM runs WHERE run_id = ANY($1) ORDER BY run_id")
            .bind(&ids)
            .fetch_all(&mut su)
            .await
            .unwrap();
    assert_eq!(xmax, vec!["0"; 3]);
    let claimed = repo::worker_claim(&t.app, "w1", 10, 30.0).await.unwrap();
    assert_eq!(claimed.len(), 3);
    let batch: Vec<Completion> = claimed.iter().map(succeeded).collect();
    assert_eq!(complete(&cp, &p, &batch).await, vec![true; 3]);
    for id in &ids {
        let f = facts(&t, "alpha", *id).await;
        assert_gapless(&f);
        assert_eq!(
            f.6,
            ["created", "state", "step", "state", "output"],
            "{f:?}"
        );
    }

    // Outside the run's tenant scope (here the workers'), the delete is refused whole: that
    // scope cannot see the events it would have to delete.
    let mut tx = repo::worker_tx(&t.app).await.unwrap();
    let err = sqlx::query("DELETE FROM runs WHERE run_id = $1")
        .bind(ids[0])
        .execute(&mut *tx)
        .await
        .unwrap_err();
    assert_eq!(
        err.as_database_error().and_then(|e| e.code()).as_deref(),
        Some("42501"),
        "{err}"
    );
    drop(tx);
    assert_eq!(event_count(&t, &ids).await, 15);
    // In its own scope: the run's events go in the same statement, the others' stay.
    let mut tx = scoped_tx(&t.app, "alpha").await;
    let deleted = sqlx::query("DELETE FROM runs WHERE run_id = $1")
        .bind(ids[0])
        .execute(&mut *tx)
        .await
        .unwrap()
        .rows_affected();
    tx.commit().await.unwrap();
    assert_eq!(deleted, 1);
    assert_eq!(event_count(&t, &ids[..1]).await, 0);
    assert_eq!(event_count(&t, &ids[1..]).await, 10);
    t.cleanup().await;
}

/// Events of `ids`, counted past row-level security.
async fn event_count(t: &TestDb, ids: &[Uuid]) -> i64 {
    let mut su = t.superuser().await;
    sqlx::query_scalar("SELECT count(*) FROM run_events WHERE run_id = ANY($1)")
        .bind(ids)
        .fetch_one(&mut su)
        .await
        .unwrap()
}

/// A superuser transaction holding `audit_log` (EXCLUSIVE): every run creation's insert waits
/// on it, so creations started meanwhile queue behind the first ones (the group commit's
/// batching made deterministic).
async fn hold_audit_log(t: &TestDb) -> sqlx::PgConnection {
    let mut su = t.superuser().await;
    sqlx::query("BEGIN").execute(&mut su).await.unwrap();
    sqlx::query("LOCK TABLE audit_log IN EXCLUSIVE MODE")
        .execute(&mut su)
        .await
        .unwrap();
    su
}

/// Let the creations started meanwhile be prepared (a read each) and queue or wait on the
/// lock, then release it.
async fn release_audit_log(mut su: sqlx::PgConnection) {
    tokio::time::sleep(Duration::from_millis(1500)).await;
    sqlx::query("COMMIT").execute(&mut su).await.unwrap();
}

/// Concurrent creations without an idempotency key are group-committed (issue 18, session
/// 24): while a transaction holds the audit table, the first creations wait on it and the
/// rest queue behind them; once it ends they land a project at a time, many in one
/// transaction. Each keeps its own run, `created` event and `run.create` audit row, in its
/// own project only. On the one-transaction-per-creation path every run has a transaction id
/// of its own (24 per project here).
#[tokio::test]
async fn concurrent_creations_share_transactions_and_stay_in_their_projects() {
    let t = TestDb::new().await;
    let cp = t.control(Coord::none());
    let alpha = echo_project(&cp, "alpha").await;
    let beta = echo_project(&cp, "beta").await;
    let runs = RunService::new(cp.clone());
    let su = hold_audit_log(&t).await;
    let per_project = 24;
    let tasks: Vec<_> = (0..2 * per_project)
        .map(|i| {
            let p = if i % 2 == 0 { &alpha } else { &beta }.clone();
            let runs = runs.clone();
            tokio::spawn(async move {
                let req = echo_req(json!({"name": i}));
                let v = tenancy::scope(p.clone(), runs.create(&admin(), req, None, None))
                    .await
                    .unwrap();
                (p, v)
            })
        })
        .collect();
    release_audit_log(su).await;
    let mut created: HashMap<String, Vec<Uuid>> = HashMap::new();
    for task in tasks {
        let (p, v) = task.await.unwrap();
        assert!(!v.replayed);
        assert_eq!(v.state, "queued");
        created
            .entry(p.as_str().to_string())
            .or_default()
            .push(v.run_id);
    }
    for (project, ids) in &created {
        assert_eq!(ids.len(), per_project);
        let mut tx = scoped_tx(&t.app, project).await;
        // Everything the project sees: its own runs only, each with one event and one audit row.
        let (all, mine, xids): (i64, i64, i64) = sqlx::query_as(
            "SELECT count(*), count(*) FILTER (WHERE run_id = ANY($1)), count(DISTINCT xmin::text) \
             FROM runs",
        )
        .bind(ids)
        .fetch_one(&mut *tx)
        .await
        .unwrap();
        let (events, audits): (i64, i64) = sqlx::query_as(
            "SELECT (SELECT count(*) FROM run_events WHERE kind = 'created' AND run_id = ANY($1)), \
                    (SELECT count(*) FROM audit_log WHERE action = 'run.create' \
                        AND target = ANY(SELECT x::text FROM unnest($1::uuid[]) x))",
        )
        .bind(ids)
        .fetch_one(&mut *tx)
        .await
        .unwrap();
        tx.rollback().await.unwrap();
        assert_eq!(
            (all, mine, events, audits),
            (
                per_project as i64,
                per_project as i64,
                per_project as i64,
                per_project as i64
            ),
            "{project}: runs seen, own runs, created events, audit rows"
        );
        assert!(
            xids <= 4,
            "{project}: {per_project} concurrent creations committed in {xids} transactions"
        );
    }
    t.cleanup().await;
}

/// One creation that PostgreSQL refuses (a `\u0000` in its input: valid JSON, not storable in
/// jsonb; the HTTP guards refuse it earlier, other callers reach the database) must not fail
/// the creations group-committed with it: the batch is written again one creation at a time,
/// the refused one gets its own error (`E-REQ-001`) and nothing is written for it, the others
/// get their runs.
#[tokio::test]
async fn a_refused_creation_does_not_fail_the_creations_committed_with_it() {
    let t = TestDb::new().await;
    let cp = t.control(Coord::none());
    let alpha = echo_project(&cp, "alpha").await;
    let runs = RunService::new(cp.clone());
    let su = hold_audit_log(&t).await;
    let n = 12;
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let (p, runs) = (alpha.clone(), runs.clone());
            tokio::spawn(async move {
                let name = if i == n / 2 {
                    json!("nul \u{0} here")
                } else {
                    json!(i)
                };
                tenancy::scope(
                    p,
                    runs.create(&admin(), echo_req(json!({ "name": name })), None, None),
                )
                .await
            })
        })
        .collect();
    release_audit_log(su).await;
    let mut ok = Vec::new();
    let mut refused = Vec::new();
    for task in tasks {
        match task.await.unwrap() {
            Ok(v) => ok.push(v.run_id),
            Err(e) => refused.push(e.code.as_str()),
        }
    }
    assert_eq!(refused, vec!["E-REQ-001"]);
    assert_eq!(ok.len(), n - 1);
    let mut tx = scoped_tx(&t.app, "alpha").await;
    let (all, audits): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM runs), \
                (SELECT count(*) FROM audit_log WHERE action = 'run.create')",
    )
    .fetch_one(&mut *tx)
    .await
    .unwrap();
    tx.rollback().await.unwrap();
    assert_eq!((all, audits), ((n - 1) as i64, (n - 1) as i64));
    t.cleanup().await;
}

/// A creation's run basis (mode, active revisions) is cached for a second and checked where
/// the run is written (issue 18, sessions 24-25): creations right after an activation and
/// right after a mode change, well inside the cache's lifetime, are written against the new
/// revision and in the new mode, never what the cache held (this test failed when the check
/// was left out).
#[tokio::test]
async fn creations_after_an_activation_or_a_mode_change_never_use_the_cached_basis() {
    let t = TestDb::new().await;
    let cp = t.control(Coord::none());
    let alpha = echo_project(&cp, "alpha").await;
    let facts = |id: Uuid| {
        let t = &t;
        async move {
            let mut tx = scoped_tx(&t.app, "alpha").await;
            let row: (Uuid, String) =
                sqlx::query_as("SELECT agent_revision_id, mode FROM runs WHERE run_id = $1")
                    .bind(id)
                    .fetch_one(&mut *tx)
                    .await
                    .unwrap();
            tx.rollback().await.unwrap();
            row
        }
    };
    let first = create(&cp, &alpha, 1).await[0];
    let (old_rev, old_mode) = facts(first).await;
    assert_eq!(old_mode, "shadow");
    let new_rev = tenancy::scope(alpha.clone(), async {
        let body = json!({
            "display_name": "Echo 2", "context_domain": "demo",
            "safety": {"max_risk": "read_only", "max_steps": 4, "max_tokens_per_run": 1, "timeout_seconds": 60},
            "executor": {"type": "scripted", "steps": [{"type": "output", "key": "echo", "template": "bye {{input.name}}"}]}
        });
        let r = publish(&cp, ContractKind::Agent, "echo", body).await;
        approve_and_activate(&cp, r, 1).await;
        r
    })
    .await;
    assert_ne!(new_rev, old_rev);
    let second = create(&cp, &alpha, 1).await[0];
    assert_eq!(facts(second).await, (new_rev, "shadow".to_string()));
    tenancy::scope(
        alpha.clone(),
        cp.set_mode(
            &admin(),
            awooop::control::MigrationMode::Canary,
            false,
            None,
        ),
    )
    .await
    .unwrap();
    let third = create(&cp, &alpha, 1).await[0];
    assert_eq!(facts(third).await, (new_rev, "canary".to_string()));
    // A refusal is never decided on the cached basis either: right after the project moves on
    // to read_only, a run asking for read_only is accepted (the cached basis still says
    // canary, under which it would be `E-RUN-010`), and one asking for more is refused.
    let runs = RunService::new(cp.clone());
    let ask = |mode: &str| {
        let mut r = echo_req(json!({"name": mode}));
        r.mode = Some(mode.to_string());
        let (runs, alpha) = (runs.clone(), alpha.clone());
        async move {
            let who = admin();
            tenancy::scope(alpha, runs.create(&who, r, None, None)).await
        }
    };
    ask("canary").await.unwrap();
    tenancy::scope(
        alpha.clone(),
        cp.set_mode(
            &admin(),
            awooop::control::MigrationMode::ReadOnly,
            false,
            None,
        ),
    )
    .await
    .unwrap();
    let fourth = ask("read_only").await.unwrap().run_id;
    assert_eq!(facts(fourth).await, (new_rev, "read_only".to_string()));
    let refused = ask("suggest").await.unwrap_err();
    assert_eq!(refused.code.as_str(), "E-RUN-010");
    t.cleanup().await;
}
