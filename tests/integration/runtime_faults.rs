//! Faults the runtime must survive: a worker process killed with SIGKILL while it holds runs,
//! and PostgreSQL connections terminated under the workers' feet.

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use awooop::contracts::ContractKind;
use awooop::coord::Coord;
use awooop::runtime::executor::{GuardedGateway, NoGateway, ScriptedExecutor};
use awooop::runtime::worker::{Worker, WorkerConfig, shutdown_channel};
use awooop::tenancy;
use serde_json::json;

use crate::support::*;

const BIN: &str = env!("CARGO_BIN_EXE_awooop");

async fn setup(t: &TestDb, runs: i64) -> awooop::control::ControlPlane {
    let cp = t.control(Coord::none());
    let p = project(&cp, "alpha", 1).await;
    let body = json!({"display_name": "Echo", "context_domain": "demo",
        "safety": {"max_risk": "read_only", "max_steps": 1, "max_tokens_per_run": 1, "timeout_seconds": 600},
        "executor": {"type": "scripted", "steps": [{"type": "output", "key": "o", "template": "{{input.n}}"}]}});
    tenancy::scope(p.clone(), async {
        let r = publish(&cp, ContractKind::Agent, "echo", body).await;
        approve_and_activate(&cp, r, 1).await;
        let active = cp.active(ContractKind::Agent, "echo").await.unwrap();
        let mut tx = cp.db().tenant().await.unwrap();
        sqlx::query(
            "INSERT INTO runs (project_id, run_id, agent, mode, input, input_hash, agent_revision_id, agent_body_hash, \
             trace_id, span_id, max_attempts, deadline_at) \
             SELECT 'alpha', gen_random_uuid(), 'echo', 'shadow', jsonb_build_object('n', g), $1, $2, $3, \
             md5(g::text), substr(md5(g::text), 1, 16), 5, now() + interval '1 hour' FROM generate_series(1, $4) g",
        )
        .bind(format!("sha256:{}", "0".repeat(64)))
        .bind(active.pointer.revision_id)
        .bind(&active.pointer.body_hash)
        .bind(runs)
        .execute(&mut *tx)
        .await
        .unwrap();
        tx.commit().await.unwrap();
    })
    .await;
    cp
}

async fn count(t: &TestDb, sql: &str) -> i64 {
    let mut tx = scoped_tx(&t.app, "alpha").await;
    let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_string()))
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    n
}

/// A worker with a short lease and fast reaping, for fault tests.
fn fast_worker(t: &TestDb, cp: &awooop::control::ControlPlane, name: &str) -> Arc<Worker> {
    let mut cfg = WorkerConfig::new(name);
    cfg.slots = 8;
    cfg.lease = Duration::from_secs(2);
    cfg.heartbeat = Duration::from_millis(500);
    cfg.poll = Duration::from_millis(50);
    cfg.reap_every = Duration::from_millis(200);
    let exec = Arc::new(ScriptedExecutor::new(GuardedGateway::new(
        cp.clone(),
        Arc::new(NoGateway),
    )));
    Arc::new(Worker::new(t.app.clone(), cp.clone(), exec, cfg))
}

async fn wait_all_succeeded(t: &TestDb, n: i64, secs: u64) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let done = count(t, "SELECT count(*) FROM runs WHERE state = 'succeeded'").await;
        if done == n {
            return;
        }
        assert!(Instant::now() < deadline, "{done} of {n} runs succeeded");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn runs_held_by_a_sigkilled_worker_process_are_finished_by_another() {
    let t = TestDb::new().await;
    let cp = setup(&t, 40).await;
    // Hold completions (they insert journal rows) so the process keeps its runs in `running`.
    let mut gate = t.owner.begin().await.unwrap();
    sqlx::query("LOCK TABLE run_steps IN SHARE MODE")
        .execute(&mut *gate)
        .await
        .unwrap();
    let state = std::env::temp_dir().join(format!("awooop-kill-{}", t.name));
    let mut child = Command::new(BIN)
        .args([
            "worker",
            "--worker-slots",
            "16",
            "--lease-seconds",
            "2",
            "--heartbeat-seconds",
            "1",
            "--poll-ms",
            "50",
        ])
        .env("DATABASE_URL", &t.url)
        .env("AWOOOP_STATE_DIR", &state)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let held = count(&t, "SELECT count(*) FROM runs WHERE state = 'running'").await;
        if held >= 8 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the worker process never held runs"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Command::new("kill")
        .args(["-KILL", &child.id().to_string()])
        .status()
        .unwrap();
    let _ = child.wait();
    gate.commit().await.unwrap();
    assert_eq!(
        count(&t, "SELECT count(*) FROM runs WHERE state = 'succeeded'").await,
        0
    );

    let w = fast_worker(&t, &cp, "rescuer");
    let (stop, rx) = shutdown_channel();
    let h = tokio::spawn(w.clone().run(rx));
    wait_all_succeeded(&t, 40, 30).await;
    stop.send(true).unwrap();
    h.await.unwrap().unwrap();
    // Exactly once: one completed journal row per run; the killed attempts left nothing.
    assert_eq!(
        count(
            &t,
            "SELECT count(*) FROM run_steps WHERE status = 'succeeded'"
        )
        .await,
        40
    );
    assert!(count(&t, "SELECT count(*) FROM runs WHERE attempt >= 2").await >= 8);
    let _ = std::fs::remove_dir_all(&state);
    t.cleanup().await;
}

#[tokio::test]
async fn workers_survive_terminated_database_connections() {
    let t = TestDb::new().await;
    let cp = setup(&t, 600).await;
    let workers: Vec<_> = (0..2)
        .map(|i| fast_worker(&t, &cp, &format!("w{i}")))
        .collect();
    let (stop, rx) = shutdown_channel();
    let hs: Vec<_> = workers
        .iter()
        .map(|w| tokio::spawn(w.clone().run(rx.clone())))
        .collect();
    // Three times: hold completions (a SHARE lock on run_steps) until a worker is blocked
    // finishing a run, then kill every application connection to this database. The kill
    // counts only when it hit a run in progress: a backend waiting on that lock while runs
    // were `running`.
    let mut su = t.superuser().await;
    let mut kills = 0;
    let mut mid_run = 0;
    for _ in 0..3 {
        let mut gate = t.owner.begin().await.unwrap();
        sqlx::query("LOCK TABLE run_steps IN SHARE MODE")
            .execute(&mut *gate)
            .await
            .unwrap();
        let gate_pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
            .fetch_one(&mut *gate)
            .await
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            // Waiting on the gate's lock itself: any other lock wait of the moment (a relation
            // extension, the commit-time NOTIFY lock) is over in microseconds, and a round that
            // took one for a worker blocked at a completion killed none (a flake under load).
            let blocked: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity a WHERE a.datname = $1 \
                 AND a.application_name = 'awooop' AND EXISTS (SELECT 1 FROM pg_locks l \
                   WHERE l.pid = a.pid AND NOT l.granted AND l.relation = 'run_steps'::regclass)",
            )
            .bind(&t.name)
            .fetch_one(&mut su)
            .await
            .unwrap();
            if blocked > 0 {
                break;
            }
            assert!(Instant::now() < deadline, "no worker reached a completion");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let running: i64 = sqlx::query_scalar("SELECT count(*) FROM runs WHERE state = 'running'")
            .fetch_one(&mut su)
            .await
            .unwrap();
        let (n, waiting): (i64, i64) = sqlx::query_as(
            "SELECT count(*), count(*) FILTER (WHERE waiting) FROM ( \
               SELECT pg_terminate_backend(pid), waiting FROM ( \
                 SELECT a.pid, EXISTS (SELECT 1 FROM pg_locks l WHERE l.pid = a.pid \
                   AND NOT l.granted AND l.relation = 'run_steps'::regclass) AS waiting \
                 FROM pg_stat_activity a WHERE a.datname = $1 AND a.application_name = 'awooop' \
                 AND a.pid <> $2 AND a.pid <> pg_backend_pid() OFFSET 0) w) x",
        )
        .bind(&t.name)
        .bind(gate_pid)
        .fetch_one(&mut su)
        .await
        .unwrap();
        gate.commit().await.unwrap();
        assert!(running > 0, "no run was in progress at the kill");
        kills += n;
        mid_run += waiting;
    }
    assert!(kills > 0, "no connection was terminated");
    assert!(
        mid_run >= 3,
        "every round killed a worker in the middle of finishing a run: {mid_run}"
    );
    wait_all_succeeded(&t, 600, 60).await;
    stop.send(true).unwrap();
    for h in hs {
        h.await.unwrap().unwrap();
    }
    assert_eq!(
        count(
            &t,
            "SELECT count(*) FROM run_steps WHERE status = 'succeeded'"
        )
        .await,
        600
    );
    assert_eq!(
        count(&t, "SELECT count(*) FROM runs WHERE state <> 'succeeded'").await,
        0
    );
    drop(su);
    t.cleanup().await;
}
