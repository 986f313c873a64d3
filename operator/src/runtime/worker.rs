//! Workers: claim runnable runs in batches sized to free slots (`FOR UPDATE SKIP LOCKED`),
//! wake on LISTEN/NOTIFY with a fallback poll, heartbeat their leases, execute through the
//! [`Executor`] inside the run's tenant scope, and write results fenced by the attempt number.
//! Every worker also reaps: expired leases go back to the queue, runs past their deadline
//! time out. A worker that cannot heartbeat stops claiming until it can again.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;
use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio::sync::{Notify, watch};
use uuid::Uuid;

use super::executor::{Executor, Journal, Outcome, RunContext};
use super::repo::{self, Claimed};
use super::state::RunState;
use super::trace::TraceContext;
use crate::audit::{self, Entry};
use crate::contracts::{self, Contract, ContractKind};
use crate::control::{ControlPlane, MigrationMode};
use crate::error::Result;
use crate::metrics::Metrics;
use crate::tenancy::{self, ProjectId};

#[derive(Debug, Clone)]
pub struct WorkerConfig {
    pub id: String,
    /// Runs executed at once.
    pub slots: usize,
    pub lease: Duration,
    pub heartbeat: Duration,
    /// Fallback poll when no notification arrives.
    pub poll: Duration,
    pub reap_every: Duration,
    /// How long shutdown waits for in-flight runs before releasing them.
    pub grace: Duration,
}

impl WorkerConfig {
    pub fn new(id: impl Into<String>) -> Self {
        Self {
            id: id.into(),
            slots: 16,
            lease: Duration::from_secs(30),
            heartbeat: Duration::from_secs(5),
            poll: Duration::from_millis(500),
            reap_every: Duration::from_secs(2),
            grace: Duration::from_secs(20),
        }
    }
}

/// Counters exported as metrics and used by tests.
#[derive(Debug, Default)]
pub struct WorkerStats {
    pub claimed: AtomicU64,
    pub succeeded: AtomicU64,
    pub failed: AtomicU64,
    pub discarded: AtomicU64,
    pub reaped: AtomicU64,
}

tokio::task_local! {
    /// When the current attempt started executing (for the run-duration histogram).
    static RUN_STARTED: std::time::Instant;
}

fn observe_finish(metrics: &Metrics, state: RunState) {
    let took = RUN_STARTED.try_with(|t| t.elapsed()).unwrap_or_default();
    metrics.finished(state.as_str(), took);
}

pub struct Worker {
    pool: PgPool,
    control: ControlPlane,
    executor: Arc<dyn Executor>,
    cfg: WorkerConfig,
    /// run id → attempt, for heartbeats and release at shutdown.
    held: Arc<Mutex<HashMap<Uuid, i32>>>,
    healthy: Arc<AtomicBool>,
    pub stats: Arc<WorkerStats>,
    metrics: Arc<Metrics>,
}

impl Worker {
    pub fn new(
        pool: PgPool,
        control: ControlPlane,
        executor: Arc<dyn Executor>,
        cfg: WorkerConfig,
    ) -> Self {
        Self {
            pool,
            control,
            executor,
            cfg,
            held: Arc::default(),
            healthy: Arc::new(AtomicBool::new(true)),
            stats: Arc::default(),
            metrics: Metrics::new(),
        }
    }

    /// Report into a shared registry (the one `/metrics` serves).
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = metrics;
        self
    }

    /// Run until `shutdown` turns true; then stop claiming, wait up to the grace period for
    /// in-flight runs and release the rest to the queue.
    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) -> Result<()> {
        let wake = Arc::new(Notify::new());
        let listener = self.clone().spawn_listener(wake.clone());
        let heartbeat = self.clone().spawn_heartbeat();
        let reaper = self.clone().spawn_reaper();
        let slots = Arc::new(tokio::sync::Semaphore::new(self.cfg.slots));
        let mut tasks = tokio::task::JoinSet::new();
        loop {
            if *shutdown.borrow() {
                break;
            }
            while tasks.try_join_next().is_some() {}
            let free = slots.available_permits();
            let mut claimed_full = false;
            if free > 0 && self.healthy.load(Ordering::Relaxed) {
                match repo::worker_claim(
                    &self.pool,
                    &self.cfg.id,
                    free as i64,
                    self.cfg.lease.as_secs_f64(),
                )
                .await
                {
                    Ok(batch) => {
                        claimed_full = batch.len() == free;
                        self.stats
                            .claimed
                            .fetch_add(batch.len() as u64, Ordering::Relaxed);
                        for c in batch {
                            let permit =
                                slots.clone().acquire_owned().await.expect("semaphore open");
                            self.held
                                .lock()
                                .expect("held lock")
                                .insert(c.run_id, c.attempt);
                            let me = self.clone();
                            tasks.spawn(async move {
                                me.execute(c).await;
                                drop(permit);
                            });
                        }
                    }
                    Err(e) => tracing::warn!(code = e.code.as_str(), "claim failed"),
                }
            }
            if claimed_full {
                continue;
            }
            tokio::select! {
                _ = wake.notified() => {},
                _ = tokio::time::sleep(self.cfg.poll) => {},
                _ = shutdown.changed() => {},
                Some(_) = tasks.join_next(), if !tasks.is_empty() => {},
            }
        }
        // Graceful shutdown.
        let deadline = tokio::time::Instant::now() + self.cfg.grace;
        while !tasks.is_empty() {
            if tokio::time::timeout_at(deadline, tasks.join_next())
                .await
                .is_err()
            {
                break;
            }
        }
        tasks.abort_all();
        let held: Vec<(Uuid, i32)> = self
            .held
            .lock()
            .expect("held lock")
            .iter()
            .map(|(k, v)| (*k, *v))
            .collect();
        let released = repo::worker_release(&self.pool, &self.cfg.id, &held)
            .await
            .unwrap_or(0);
        if released > 0 {
            tracing::info!(released, "released in-flight runs to the queue");
        }
        listener.abort();
        heartbeat.abort();
        reaper.abort();
        Ok(())
    }

    fn spawn_listener(self: Arc<Self>, wake: Arc<Notify>) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            loop {
                match PgListener::connect_with(&self.pool).await {
                    Ok(mut l) => {
                        if l.listen("awooop_runs").await.is_ok() {
                            wake.notify_one();
                            while l.recv().await.is_ok() {
                                wake.notify_one();
                            }
                        }
                    }
                    Err(e) => tracing::debug!(error = %e, "LISTEN connection failed; polling"),
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    }

    fn spawn_heartbeat(self: Arc<Self>) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(self.cfg.heartbeat);
            loop {
                tick.tick().await;
                let held: Vec<(Uuid, i32)> = self
                    .held
                    .lock()
                    .expect("held lock")
                    .iter()
                    .map(|(k, v)| (*k, *v))
                    .collect();
                match repo::worker_heartbeat(
                    &self.pool,
                    &self.cfg.id,
                    &held,
                    self.cfg.lease.as_secs_f64(),
                )
                .await
                {
                    Ok(_) => self.healthy.store(true, Ordering::Relaxed),
                    Err(e) => {
                        // Without heartbeats our leases will expire: stop taking new work.
                        self.healthy.store(false, Ordering::Relaxed);
                        tracing::warn!(code = e.code.as_str(), "heartbeat failed; not claiming");
                    }
                }
            }
        })
    }

    fn spawn_reaper(self: Arc<Self>) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(self.cfg.reap_every);
            loop {
                tick.tick().await;
                match repo::worker_reap(&self.pool).await {
                    Ok(r) => {
                        self.metrics.reaped("requeued", r.requeued);
                        self.metrics.reaped("failed", r.failed);
                        self.metrics.reaped("timed_out", r.timed_out);
                        let n = r.requeued + r.failed + r.timed_out;
                        if n > 0 {
                            self.stats.reaped.fetch_add(n, Ordering::Relaxed);
                            tracing::info!(
                                requeued = r.requeued,
                                failed = r.failed,
                                timed_out = r.timed_out,
                                "reaper"
                            );
                        }
                    }
                    Err(e) => tracing::debug!(code = e.code.as_str(), "reap failed"),
                }
            }
        })
    }

    async fn execute(self: Arc<Self>, c: Claimed) {
        let run_id = c.run_id;
        let attempt = c.attempt;
        let project = match ProjectId::parse(&c.project_id) {
            Ok(p) => p,
            Err(_) => return,
        };
        let trace = TraceContext {
            trace_id: c.trace_id.clone(),
            span_id: c.span_id.clone(),
            sampled: true,
        };
        let span = tracing::info_span!("run", %run_id, trace_id = %trace.trace_id, project = %project, attempt);
        let res = RUN_STARTED
            .scope(
                std::time::Instant::now(),
                tenancy::scope(project.clone(), async {
                    let _e = span.enter();
                    self.execute_in_scope(&project, c, trace).await
                }),
            )
            .await;
        self.held.lock().expect("held lock").remove(&run_id);
        match res {
            Ok(true) => {}
            Ok(false) => {
                self.stats.discarded.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                // Transient (database) trouble: leave the run to its lease; the reaper will
                // hand it to another attempt.
                tracing::warn!(%run_id, attempt, code = e.code.as_str(), "run execution interrupted");
            }
        }
    }

    /// Returns Ok(false) when the result was discarded (the attempt lost the run).
    async fn execute_in_scope(
        &self,
        project: &ProjectId,
        c: Claimed,
        trace: TraceContext,
    ) -> Result<bool> {
        let db = self.control.db();
        let rev = self.control.revision_by_id(c.agent_revision_id).await?;
        let contract = match contracts::validate(ContractKind::Agent, &rev.body) {
            Ok(Contract::Agent(a)) => a,
            _ => {
                return self
                    .finish(
                        c.run_id,
                        c.attempt,
                        RunState::Failed,
                        None,
                        Some(("E-RUN-011", "agent revision is unreadable")),
                        &trace,
                    )
                    .await;
            }
        };
        let ctx = RunContext {
            project: project.clone(),
            run_id: c.run_id,
            attempt: c.attempt,
            agent: c.agent.clone(),
            contract,
            mode: MigrationMode::parse(&c.mode)?,
            input: c.input.clone(),
            trace: trace.clone(),
        };
        let mut journal = Journal::load(db, project, c.run_id, c.attempt).await?;
        let outcome = match self.executor.execute(&ctx, &mut journal).await {
            Ok(o) => o,
            Err(e) if super::executor::is_lease_lost(&e) => return Ok(false),
            Err(e) => return Err(e),
        };
        match outcome {
            Outcome::Succeeded(out) => {
                let reply = c.reply_to.as_ref().and_then(|r| {
                    serde_json::from_value::<super::outbound::ReplyTo>(r.clone()).ok()
                });
                self.finish_with_reply(c.run_id, c.attempt, &out, reply.as_ref(), &trace)
                    .await
            }
            Outcome::Failed { code, message } => {
                self.finish(
                    c.run_id,
                    c.attempt,
                    RunState::Failed,
                    None,
                    Some((&code, &message)),
                    &trace,
                )
                .await
            }
            Outcome::WaitingApproval { step_key, reason } => {
                let out = json!({"waiting_for": step_key, "reason": reason});
                self.finish(
                    c.run_id,
                    c.attempt,
                    RunState::WaitingApproval,
                    Some(&out),
                    None,
                    &trace,
                )
                .await
            }
        }
    }

    /// Succeed the run and queue its reply in the same transaction (fenced: a discarded
    /// attempt sends nothing).
    async fn finish_with_reply(
        &self,
        run_id: Uuid,
        attempt: i32,
        output: &serde_json::Value,
        reply: Option<&super::outbound::ReplyTo>,
        trace: &TraceContext,
    ) -> Result<bool> {
        let project = tenancy::require()?;
        let mut tx = self.control.db().tenant().await?;
        let landed = repo::finish(
            &mut tx,
            run_id,
            Some(attempt),
            RunState::Succeeded,
            Some(output),
            None,
        )
        .await?;
        if landed {
            if let Some(r) = reply {
                super::outbound::deliver_reply(
                    &mut tx,
                    project.as_str(),
                    run_id,
                    r,
                    output,
                    &trace.trace_id,
                )
                .await?;
            }
            audit::record(
                &mut tx,
                Entry {
                    trace_id: Some(trace.trace_id.clone()),
                    ..Entry::ok(
                        "worker",
                        "run.finish",
                        run_id.to_string(),
                        json!({"state": "succeeded", "attempt": attempt}),
                    )
                },
            )
            .await?;
        }
        tx.commit().await?;
        if landed {
            self.stats.succeeded.fetch_add(1, Ordering::Relaxed);
            observe_finish(&self.metrics, RunState::Succeeded);
        }
        Ok(landed)
    }

    async fn finish(
        &self,
        run_id: Uuid,
        attempt: i32,
        to: RunState,
        output: Option<&serde_json::Value>,
        error: Option<(&str, &str)>,
        trace: &TraceContext,
    ) -> Result<bool> {
        let mut tx = self.control.db().tenant().await?;
        let landed = repo::finish(&mut tx, run_id, Some(attempt), to, output, error).await?;
        if landed {
            audit::record(
                &mut tx,
                Entry {
                    trace_id: Some(trace.trace_id.clone()),
                    ..Entry::ok("worker", "run.finish", run_id.to_string(), json!({"state": to.as_str(), "attempt": attempt, "error_code": error.map(|e| e.0)}))
                },
            )
            .await?;
        }
        tx.commit().await?;
        if landed {
            observe_finish(&self.metrics, to);
            match to {
                RunState::Succeeded => self.stats.succeeded.fetch_add(1, Ordering::Relaxed),
                RunState::Failed => self.stats.failed.fetch_add(1, Ordering::Relaxed),
                _ => 0,
            };
        }
        Ok(landed)
    }
}

/// Convenience for tests and `awooop up`: a shutdown channel.
pub fn shutdown_channel() -> (watch::Sender<bool>, watch::Receiver<bool>) {
    watch::channel(false)
}
