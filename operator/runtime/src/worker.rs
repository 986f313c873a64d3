//! Workers: claim runnable runs in batches sized to free slots (`FOR NO KEY UPDATE SKIP LOCKED`),
//! wake on LISTEN/NOTIFY with a fallback poll, heartbeat their leases, execute through the
//! [`Executor`] inside the run's tenant scope, and write results fenced by the attempt number.
//! Every worker also reaps: expired leases go back to the queue, runs past their deadline
//! time out. A worker that cannot heartbeat stops claiming until it can again.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;
use sqlx::PgPool;
use tokio::sync::{Notify, mpsc, oneshot, watch};
use uuid::Uuid;

use super::executor::{Executor, Journal, Outcome, RunContext};
use super::repo::{self, Claimed};
use super::state::RunState;
use super::trace::TraceContext;
use crate::metrics::Metrics;
use awooop_contracts::{self as contracts, AgentContract, Contract, ContractKind};
use awooop_control::{ControlPlane, MigrationMode};
use awooop_core::error::Result;
use awooop_store::notify;
use awooop_store::tenancy::{self, ProjectId};

#[derive(Debug, Clone)]
pub struct WorkerConfig {
    pub id: String,
    /// Runs executed at once.
    pub slots: usize,
    pub lease: Duration,
    pub heartbeat: Duration,
    /// Fallback poll when no notification arrives.
    pub poll: Duration,
    /// The longest wait after a claim found nothing queued at all, while the listener is up:
    /// every way a run becomes claimable then announces itself (migration 0084), so an idle
    /// worker waits for a notice instead of claiming at every `poll`. A notice lost anyway (a
    /// notifier that could not reach the database twice in a row) costs at most this long.
    pub idle: Duration,
    pub reap_every: Duration,
    /// How often finished runs and expired idempotency keys are cleaned up.
    pub retention_every: Duration,
    /// How long shutdown waits for in-flight runs before releasing them.
    pub grace: Duration,
    /// Claim only this project's runs (`awooop worker --project P`); `None`: every project.
    pub project: Option<String>,
    /// The completion writer claims successors in the transaction that completes a batch (one
    /// commit per cycle instead of two): first runs of its own project without the project's
    /// lock (`repo::refill_in`, when that project's queue head is the oldest), then through the
    /// locked claim. Off by default since session 9, when it made the capped drain 35–60 %
    /// slower; the lock-free, fair refill of session 21 is a wash on a CPU-bound machine (a few
    /// per cent faster with one project, about 10 % slower with eight, where most refills find
    /// another tenant's head older and fall back to the locked claim: docs/benchmarks.md,
    /// "Session 21"). A worker bound to one project (`project`) refills without that probe
    /// and `awooop worker --project` turns this on ("Session 28": +9 % capped, +13 % uncapped
    /// with one project on one machine, a few per cent on another). Measure with
    /// `AWOOOP_BENCH_REFILL=1 awooop bench runs`.
    pub refill_on_complete: bool,
}

impl WorkerConfig {
    pub fn new(id: impl Into<String>) -> Self {
        Self {
            id: id.into(),
            slots: 16,
            lease: Duration::from_secs(20),
            heartbeat: Duration::from_secs(5),
            poll: Duration::from_millis(500),
            idle: Duration::from_secs(10),
            reap_every: Duration::from_secs(2),
            retention_every: Duration::from_secs(600),
            grace: Duration::from_secs(20),
            project: None,
            refill_on_complete: false,
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
    /// Claims that returned (with or without runs): tests use it to know a worker has looked
    /// at the queue and is idle.
    pub claim_rounds: AtomicU64,
    /// Completion transactions written (one per project per batch).
    pub completion_batches: AtomicU64,
    /// Claims that passed over a project another claim held at that instant (migration 0077).
    pub claims_passed_over: AtomicU64,
    /// Runs the completion writer started as successors of the runs it completed, without the
    /// project's lock (`repo::refill_in`; with `refill_on_complete`). Counted in `claimed` too.
    pub refilled: AtomicU64,
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
    contracts: Mutex<HashMap<Uuid, Arc<AgentContract>>>,
    completions: mpsc::Sender<Pending>,
    completions_rx: Mutex<Option<mpsc::Receiver<Pending>>>,
    /// Runs the completion writer claimed in a completion's transaction, for the claim loop to
    /// start (they are in `held` from their commit on, so they are heartbeated while queued).
    refills: mpsc::UnboundedSender<Vec<Claimed>>,
    refills_rx: Mutex<Option<mpsc::UnboundedReceiver<Vec<Claimed>>>>,
    /// Slots promised to refills not yet started: the claim loop counts them as taken, so the
    /// two claimers together never hold more runs than there are slots.
    reserved: AtomicUsize,
    /// Set when the claim loop stops: the writer then claims nothing more.
    stopping: AtomicBool,
    /// Agents' output schemas (enforced on every successful run's result).
    schemas: crate::validate::SchemaCache,
}

impl Worker {
    pub fn new(
        pool: PgPool,
        control: ControlPlane,
        executor: Arc<dyn Executor>,
        cfg: WorkerConfig,
    ) -> Self {
        // Bounded by the slots: at most one pending completion per run in flight.
        let (tx, rx) = mpsc::channel(cfg.slots.max(1) * 2);
        let (refills, refills_rx) = mpsc::unbounded_channel();
        Self {
            pool,
            control,
            executor,
            cfg,
            held: Arc::default(),
            healthy: Arc::new(AtomicBool::new(true)),
            stats: Arc::default(),
            metrics: Metrics::new(),
            contracts: Mutex::default(),
            completions: tx,
            completions_rx: Mutex::new(Some(rx)),
            refills,
            refills_rx: Mutex::new(Some(refills_rx)),
            reserved: AtomicUsize::new(0),
            stopping: AtomicBool::new(false),
            schemas: crate::validate::SchemaCache::default(),
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
        // Runs created by this process (API, channel hub) wake this worker directly, one round
        // trip before PostgreSQL's notice arrives (awooop_store::notify).
        self.control
            .db()
            .notifier()
            .wake_on_runs(&wake, self.cfg.project.as_deref());
        // Whether the listener is listening: only then can an idle worker wait for notices.
        let listening = Arc::new(AtomicBool::new(false));
        let rx = self
            .completions_rx
            .lock()
            .expect("completion receiver")
            .take()
            .ok_or_else(|| {
                awooop_core::error::Error::new(
                    awooop_core::error::ErrorCode::Internal,
                    "a worker runs once",
                )
            })?;
        let mut refills = self
            .refills_rx
            .lock()
            .expect("refill receiver")
            .take()
            .ok_or_else(|| {
                awooop_core::error::Error::new(
                    awooop_core::error::ErrorCode::Internal,
                    "a worker runs once",
                )
            })?;
        let _background = AbortOnDrop(vec![
            self.clone().spawn_listener(wake.clone(), listening.clone()),
            self.clone().spawn_heartbeat(),
            self.clone().spawn_reaper(),
            self.clone().spawn_retention(),
            tokio::spawn(self.clone().write_completions(rx)),
        ]);
        let slots = Arc::new(tokio::sync::Semaphore::new(self.cfg.slots));
        let mut tasks = tokio::task::JoinSet::new();
        // After a claim that came back short because another claim held a project's lock:
        // how soon to look again (see below).
        let mut retry: Option<Duration> = None;
        loop {
            // Whether this round's claim found nothing queued in its scope (see below).
            let mut empty = false;
            if *shutdown.borrow() {
                break;
            }
            while tasks.try_join_next().is_some() {}
            while let Ok(batch) = refills.try_recv() {
                self.start_refills(batch, &slots, &mut tasks).await;
            }
            // Permits freed by completions whose transaction also claimed their successors
            // belong to those successors.
            let free = slots
                .available_permits()
                .saturating_sub(self.reserved.load(Ordering::Acquire));
            let mut claimed_full = false;
            let mut passed_over = false;
            // Claim in batches: wait until a quarter of the slots are free (or all of them)
            // rather than issuing one claim per finished run.
            let worth_claiming =
                free > 0 && (free >= (self.cfg.slots / 4).max(1) || free == self.cfg.slots);
            if worth_claiming && self.healthy.load(Ordering::Relaxed) {
                match repo::worker_claim_round(
                    &self.pool,
                    &self.cfg.id,
                    free as i64,
                    self.cfg.lease.as_secs_f64(),
                    self.cfg.project.as_deref(),
                )
                .await
                {
                    Ok(round) => {
                        let batch = round.runs;
                        self.stats.claim_rounds.fetch_add(1, Ordering::Relaxed);
                        empty = round.queued == 0;
                        claimed_full = batch.len() == free;
                        if round.passed_over > 0 {
                            self.stats
                                .claims_passed_over
                                .fetch_add(1, Ordering::Relaxed);
                            passed_over = !claimed_full;
                        }
                        self.stats
                            .claimed
                            .fetch_add(batch.len() as u64, Ordering::Relaxed);
                        for c in batch {
                            self.held
                                .lock()
                                .expect("held lock")
                                .insert(c.run_id, c.attempt);
                            self.spawn_run(c, &slots, &mut tasks).await;
                        }
                    }
                    Err(e) => tracing::warn!(code = e.code.as_str(), "claim failed"),
                }
            }
            if claimed_full {
                retry = None;
                continue;
            }
            // A claim that passed over a project because another claim was starting its runs
            // looks again shortly: that claim holds the project's lock only until its commit,
            // and what it leaves of the room would otherwise wait for this worker's next
            // wake-up (a finished run of its own, a notice, or the fallback poll). Backing off
            // (1, 2, 4 ms ... up to the poll) bounds the retries while a claim is slow.
            retry = passed_over.then(|| {
                retry
                    .map_or(Duration::from_millis(1), |d| d * 2)
                    .min(self.cfg.poll)
            });
            // Nothing queued in this worker's scope and the listener up: what can make a run
            // claimable now announces itself (a new run, a re-queue, a re-lock: migration 0084),
            // and a queued run that is not claimable yet (a future run_after, a project at its
            // cap) keeps `queued` above zero and this worker on its poll. So an idle worker
            // claims on notices, not twice a second (docs/benchmarks.md, "Session 31").
            let wait = match retry {
                Some(r) => r,
                None if empty && listening.load(Ordering::Acquire) => self.cfg.idle,
                None => self.cfg.poll,
            };
            tokio::select! {
                Some(batch) = refills.recv() => self.start_refills(batch, &slots, &mut tasks).await,
                _ = wake.notified() => {},
                _ = tokio::time::sleep(wait) => {},
                _ = shutdown.changed() => {},
                Some(_) = tasks.join_next(), if !tasks.is_empty() => {},
            }
        }
        // Graceful shutdown. Refills already claimed stay in `held` and are released below.
        self.stopping.store(true, Ordering::Release);
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
        Ok(())
    }

    async fn spawn_run(
        self: &Arc<Self>,
        c: Claimed,
        slots: &Arc<tokio::sync::Semaphore>,
        tasks: &mut tokio::task::JoinSet<()>,
    ) {
        let permit = slots.clone().acquire_owned().await.expect("semaphore open");
        let me = self.clone();
        tasks.spawn(async move {
            me.execute(c).await;
            drop(permit);
        });
    }

    /// Start runs the completion writer claimed. Their permits come from the runs whose
    /// completion freed them (released as those tasks end, right after the commit).
    async fn start_refills(
        self: &Arc<Self>,
        batch: Vec<Claimed>,
        slots: &Arc<tokio::sync::Semaphore>,
        tasks: &mut tokio::task::JoinSet<()>,
    ) {
        for c in batch {
            self.spawn_run(c, slots, tasks).await;
            self.reserved.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// Wake the claim loop on the `awooop_runs` notices that concern this worker
    /// ([`notify::runs_notice_wakes`]), and once after each (re)connection and each loss of it:
    /// notices sent while it was down are lost, and the loop polls while `listening` is false.
    /// The process's components share one listening connection ([`awooop_store::listen`]).
    fn spawn_listener(
        self: Arc<Self>,
        wake: Arc<Notify>,
        listening: Arc<AtomicBool>,
    ) -> tokio::task::JoinHandle<()> {
        // The notices of this worker's own notifier follow a direct wake-up it already got
        // (`Notifier::runs_token`).
        let own = self.control.db().notifier().runs_token().to_string();
        let bound = self.cfg.project.clone();
        self.control
            .db()
            .listener()
            .subscribe(notify::RUNS_CHANNEL)
            .wake(wake, listening, move |payload| {
                notify::runs_notice_wakes(payload, &own, bound.as_deref())
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
                // Nothing held and healthy: there is no lease to keep, and the next claim is a
                // round trip of its own (an idle worker ran `SELECT 1` every heartbeat; session
                // 31). An unhealthy worker still probes, to claim again once it answers.
                if held.is_empty() && self.healthy.load(Ordering::Relaxed) {
                    continue;
                }
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

    /// Keep finished runs from bloating the table: each project's finished runs older than its
    /// Runtime contract's `retention_days` are deleted (journal rows and messages cascade),
    /// with its expired idempotency keys.
    fn spawn_retention(self: Arc<Self>) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(self.cfg.retention_every);
            loop {
                tick.tick().await;
                if let Err(e) = self.retention_pass().await {
                    tracing::debug!(code = e.code.as_str(), "retention pass failed");
                }
            }
        })
    }

    pub async fn retention_pass(&self) -> Result<(u64, u64)> {
        let mut tx = repo::worker_tx(&self.pool).await?;
        let projects: Vec<String> = sqlx::query_scalar(
            "SELECT DISTINCT project_id FROM runs WHERE finished_at IS NOT NULL",
        )
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        let runs = super::RunService::new(self.control.clone());
        let (mut deleted_runs, mut deleted_keys) = (0, 0);
        for p in projects {
            let Ok(project) = ProjectId::parse(&p) else {
                continue;
            };
            let (r, k) = tenancy::scope(project, async {
                let days = runs.runtime_settings().await?.retention_days;
                let mut tx = self.control.db().tenant().await?;
                let out = repo::retention(&mut tx, i64::from(days)).await?;
                tx.commit().await?;
                Ok::<_, awooop_core::error::Error>(out)
            })
            .await?;
            deleted_runs += r;
            deleted_keys += k;
        }
        if deleted_runs + deleted_keys > 0 {
            tracing::info!(deleted_runs, deleted_keys, "retention");
        }
        Ok((deleted_runs, deleted_keys))
    }

    fn spawn_reaper(self: Arc<Self>) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(self.cfg.reap_every);
            loop {
                tick.tick().await;
                // Most ticks find nothing: one probe decides what to run (repo::reap_due).
                let due = match repo::reap_due(&self.pool).await {
                    Ok(d) => d,
                    Err(e) => {
                        tracing::debug!(code = e.code.as_str(), "reap check failed");
                        continue;
                    }
                };
                if due.runs {
                    self.reap().await;
                }
                if due.approvals {
                    self.expire_approvals().await;
                }
            }
        })
    }

    /// Requeue, fail or time out the runs [`repo::worker_reap`] finds.
    async fn reap(&self) {
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

    /// Approval requests past their expiry fail their runs with E-APPROVAL-002.
    async fn expire_approvals(&self) {
        match crate::approvals::expire_due(&self.pool, &self.control).await {
            Ok(n) if n > 0 => {
                self.metrics.reaped("approval_expired", n);
                tracing::info!(expired = n, "approval requests expired");
            }
            Ok(_) => {}
            Err(e) => tracing::debug!(code = e.code.as_str(), "approval expiry failed"),
        }
    }

    /// Execute one claimed run inside its own `run` span. The span is attached with
    /// `Instrument` (entered on every poll, left at every `.await`), never with an
    /// `enter()` guard held across an await: such a guard stays entered on the worker thread
    /// while the task is suspended, so every other task polled there (other runs, the reaper,
    /// the completion writer) logged under a growing chain of unrelated `run{…}` spans.
    async fn execute(self: Arc<Self>, c: Claimed) {
        use tracing::Instrument;
        let span = tracing::info_span!(
            "run",
            run_id = %c.run_id,
            trace_id = %c.trace_id,
            project = %c.project_id,
            attempt = c.attempt
        );
        self.execute_run(c).instrument(span).await
    }

    async fn execute_run(self: Arc<Self>, c: Claimed) {
        let run_id = c.run_id;
        let attempt = c.attempt;
        let started = std::time::Instant::now();
        let Ok(project) = ProjectId::parse(&c.project_id) else {
            return;
        };
        let trace = TraceContext {
            trace_id: c.trace_id.clone(),
            span_id: c.span_id.clone(),
            sampled: true,
        };
        tracing::info!(agent = %c.agent, mode = %c.mode, "run started");
        let completion =
            tenancy::scope(project.clone(), self.execute_in_scope(&project, c, trace)).await;
        let res = match completion {
            Ok(Some(done)) => {
                let state = done.state;
                let (tx, rx) = oneshot::channel();
                if self
                    .completions
                    .send((project.clone(), done, tx))
                    .await
                    .is_err()
                {
                    Err(awooop_core::error::Error::new(
                        awooop_core::error::ErrorCode::Unavailable,
                        "completion writer stopped",
                    ))
                } else {
                    match rx.await {
                        Ok(r) => r.map(|landed| landed.then_some(state)),
                        Err(_) => Err(awooop_core::error::Error::new(
                            awooop_core::error::ErrorCode::Unavailable,
                            "completion writer stopped",
                        )),
                    }
                }
            }
            Ok(None) => Ok(None),
            Err(e) => Err(e),
        };
        {
            // Only this attempt's entry: an approved run can be re-queued and claimed again
            // (a new attempt, same run id) before this task got here.
            let mut held = self.held.lock().expect("held lock");
            if held.get(&run_id) == Some(&attempt) {
                held.remove(&run_id);
            }
        }
        match res {
            Ok(Some(state)) => {
                tracing::info!(
                    state = state.as_str(),
                    latency_ms = started.elapsed().as_millis() as u64,
                    "run finished"
                );
                self.metrics.finished(state.as_str(), started.elapsed());
                match state {
                    RunState::Succeeded => self.stats.succeeded.fetch_add(1, Ordering::Relaxed),
                    RunState::Failed => self.stats.failed.fetch_add(1, Ordering::Relaxed),
                    _ => 0,
                };
            }
            Ok(None) => {
                self.stats.discarded.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                // Transient (database) trouble: leave the run to its lease; the reaper will
                // hand it to another attempt.
                tracing::warn!(%run_id, attempt, code = e.code.as_str(), "run execution interrupted");
            }
        }
    }

    /// The agent contract of a revision. Published revisions are immutable, so they are cached
    /// by revision id for the life of the process.
    async fn agent_contract(&self, revision_id: Uuid) -> Result<Option<Arc<AgentContract>>> {
        if let Some(c) = self
            .contracts
            .lock()
            .expect("contract cache")
            .get(&revision_id)
        {
            return Ok(Some(c.clone()));
        }
        // Boxed, as every await below that only a cache miss or a rare outcome reaches: an
        // unboxed control-plane read sits inline in every run task's future (docs/benchmarks.md,
        // "Session 15": 37.6 KB per task, allocated from fresh pages at each spawn).
        let rev = Box::pin(self.control.revision_by_id(revision_id)).await?;
        let Ok(Contract::Agent(a)) = contracts::validate(ContractKind::Agent, &rev.body) else {
            return Ok(None);
        };
        let a = Arc::new(a);
        self.contracts
            .lock()
            .expect("contract cache")
            .insert(revision_id, a.clone());
        Ok(Some(a))
    }

    /// Execute one attempt; `Ok(None)` when the attempt lost the run mid-way (discarded).
    async fn execute_in_scope(
        &self,
        project: &ProjectId,
        c: Claimed,
        trace: TraceContext,
    ) -> Result<Option<repo::Completion>> {
        let completion = |state, output, error: Option<(&str, &str)>, steps| repo::Completion {
            run_id: c.run_id,
            attempt: c.attempt,
            state,
            output,
            error: error.map(|(a, b)| (a.to_string(), b.to_string())),
            steps,
            reply: None,
            approval: None,
            trace_id: trace.trace_id.clone(),
        };
        let Some(contract) = self.agent_contract(c.agent_revision_id).await? else {
            return Ok(Some(completion(
                RunState::Failed,
                None,
                Some(("E-RUN-011", "agent revision is unreadable")),
                vec![],
            )));
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
        // A first attempt has nothing to resume: no read, and no read's future in this one.
        let mut journal = if c.attempt > 1 {
            Box::pin(Journal::load(
                self.control.db(),
                project,
                c.run_id,
                c.attempt,
            ))
            .await?
        } else {
            Journal::fresh(self.control.db(), project, c.run_id, c.attempt)
        };
        let outcome = match self.executor.execute(&ctx, &mut journal).await {
            Ok(o) => o,
            Err(e) if super::executor::is_lease_lost(&e) => return Ok(None),
            Err(e) => return Err(e),
        };
        let steps = journal.take_pending();
        Ok(Some(match outcome {
            // The agent's output schema is enforced on every run's `result`, whatever the
            // executor; only validated output can become a reply.
            Outcome::Succeeded(out) => match self
                .schemas
                .for_agent(&self.control, &ctx.contract)
                .await
                .and_then(|s| {
                    s.validate_run_output(out)
                        .map_err(|errs| crate::validate::schema_error(&errs))
                }) {
                Ok(valid) => {
                    let mut done = completion(
                        RunState::Succeeded,
                        Some(valid.value().clone()),
                        None,
                        steps,
                    );
                    done.reply = c.reply_to.as_ref().and_then(|r| {
                        serde_json::from_value::<super::outbound::ReplyTo>(r.clone())
                            .ok()
                            .map(|r| (r, valid))
                    });
                    done
                }
                Err(e) if e.code == awooop_core::error::ErrorCode::Unavailable => return Err(e),
                Err(e) => completion(
                    RunState::Failed,
                    None,
                    Some((e.code.as_str(), &e.message)),
                    steps,
                ),
            },
            Outcome::Failed { code, message } => {
                completion(RunState::Failed, None, Some((&code, &message)), steps)
            }
            Outcome::WaitingApproval {
                step_key,
                reason,
                request,
            } => {
                let mut done = completion(
                    RunState::WaitingApproval,
                    Some(json!({"waiting_for": step_key, "reason": reason})),
                    None,
                    steps,
                );
                if let Some(need) = request {
                    // The request lands with the waiting state, in the completion's
                    // transaction: quorum and approvers from the active Project contract.
                    let policy =
                        Box::pin(crate::approvals::ApprovalService::policy(&self.control)).await?;
                    if need.kind == crate::approvals::RequestKind::Proposal {
                        // Suggest mode: the proposal is the run's output while it waits.
                        done.output = Some(json!({
                            "waiting_for": step_key,
                            "proposal": {
                                "tool": need.tool,
                                "args_sha256": need.args_sha256,
                                "arguments": crate::executor::waiting_output(&need)["preview"],
                                "evidence": need.evidence,
                            }
                        }));
                    }
                    done.approval = Some(repo::PendingApproval {
                        need,
                        policy,
                        agent: c.agent.clone(),
                        reply_to: c.reply_to.as_ref().and_then(|r| {
                            serde_json::from_value::<super::outbound::ReplyTo>(r.clone()).ok()
                        }),
                    });
                }
                done
            }
        }))
    }

    /// The completion writer: drains finished attempts and writes them in batches, one
    /// transaction per project per batch (the fenced update, journal rows, replies, audit).
    async fn write_completions(self: Arc<Self>, mut rx: mpsc::Receiver<Pending>) {
        while let Some(first) = rx.recv().await {
            let mut batch = vec![first];
            while batch.len() < 512 {
                match rx.try_recv() {
                    Ok(x) => batch.push(x),
                    Err(_) => break,
                }
            }
            let mut by_project: HashMap<ProjectId, Vec<Waiting>> = HashMap::new();
            for (p, c, tx) in batch {
                by_project.entry(p).or_default().push((c, tx));
            }
            let groups = by_project.len();
            // The last project's transaction claims as many successors as its completions free
            // slots (the slots of earlier groups are acknowledged first; the claim loop refills
            // those).
            for (g, (project, group)) in by_project.into_iter().enumerate() {
                let (items, senders): (Vec<_>, Vec<_>) = group.into_iter().unzip();
                self.stats
                    .completion_batches
                    .fetch_add(1, Ordering::Relaxed);
                let last = g + 1 == groups;
                // Transient failures (deadlock, serialization, a dropped connection) are
                // retried: the batch is one transaction, so a retry cannot half-apply it.
                let mut attempt = 0;
                let res = loop {
                    attempt += 1;
                    // A retry claims nothing: a failing claim must never hold completions back.
                    let claim = last && attempt == 1 && self.cfg.refill_on_complete;
                    let r = tenancy::scope(project.clone(), async {
                        let mut tx = self.control.db().tenant().await?;
                        let landed =
                            repo::complete_batch(&mut tx, project.as_str(), &items).await?;
                        let n = landed.iter().filter(|l| **l).count();
                        // The runs of this project this transaction moved out of `running`.
                        let freed = items
                            .iter()
                            .zip(&landed)
                            .filter(|(c, l)| **l && c.state != RunState::Running)
                            .count();
                        let mut next = Vec::new();
                        if claim
                            && n > 0
                            && !self.stopping.load(Ordering::Acquire)
                            && self.healthy.load(Ordering::Relaxed)
                        {
                            repo::enter_worker_scope(&mut tx).await?;
                            let want = n.min(self.cfg.slots);
                            // Successors of the same project first, without its lock (see
                            // `repo::refill_in` for why the cap holds), when its queue head is
                            // the oldest; the rest (or all, when another project's head is
                            // older) through the locked claim, in its usual order.
                            next = repo::refill_in(
                                &mut tx,
                                &self.cfg.id,
                                project.as_str(),
                                freed.min(want) as i64,
                                self.cfg.lease.as_secs_f64(),
                                self.cfg.project.as_deref() == Some(project.as_str()),
                            )
                            .await?;
                            self.stats
                                .refilled
                                .fetch_add(next.len() as u64, Ordering::Relaxed);
                            if next.len() < want {
                                let more = repo::claim_in(
                                    &mut tx,
                                    &self.cfg.id,
                                    (want - next.len()) as i64,
                                    self.cfg.lease.as_secs_f64(),
                                    self.cfg.project.as_deref(),
                                )
                                .await?;
                                next.extend(more);
                            }
                        }
                        tx.commit().await?;
                        Ok::<_, awooop_core::error::Error>((landed, next))
                    })
                    .await;
                    match r {
                        Err(e) if attempt < 4 => {
                            tracing::warn!(code = e.code.as_str(), error = ?e.source, attempt, "completion batch failed; retrying");
                            tokio::time::sleep(Duration::from_millis(10 * attempt)).await;
                        }
                        other => break other,
                    }
                };
                match res {
                    Ok((landed, next)) => {
                        if !next.is_empty() {
                            // Before the completions are acknowledged (their tasks then free
                            // the permits): reserve the permits, hold the runs, hand them over.
                            self.stats
                                .claimed
                                .fetch_add(next.len() as u64, Ordering::Relaxed);
                            self.reserved.fetch_add(next.len(), Ordering::AcqRel);
                            {
                                let mut held = self.held.lock().expect("held lock");
                                for c in &next {
                                    held.insert(c.run_id, c.attempt);
                                }
                            }
                            if let Err(mpsc::error::SendError(lost)) = self.refills.send(next) {
                                // The claim loop is gone: the runs go back with its release.
                                self.reserved.fetch_sub(lost.len(), Ordering::AcqRel);
                            }
                        }
                        for (s, l) in senders.into_iter().zip(landed) {
                            let _ = s.send(Ok(l));
                        }
                    }
                    Err(e) => {
                        for s in senders {
                            let _ = s.send(Err(awooop_core::error::Error::new(
                                e.code,
                                e.message.clone(),
                            )));
                        }
                    }
                }
            }
        }
    }
}

type Pending = (ProjectId, repo::Completion, oneshot::Sender<Result<bool>>);
type Waiting = (repo::Completion, oneshot::Sender<Result<bool>>);

/// Aborts the worker's background tasks when the worker's `run` future ends or is dropped
/// (a killed worker must also stop heartbeating, or its leases would never expire).
struct AbortOnDrop(Vec<tokio::task::JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        for h in &self.0 {
            h.abort();
        }
    }
}

/// Convenience for tests and `awooop up`: a shutdown channel.
pub fn shutdown_channel() -> (watch::Sender<bool>, watch::Receiver<bool>) {
    watch::channel(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The size of the future `f` returns, without calling it.
    fn future_size<A, B, Fut>(_: impl FnOnce(A, B) -> Fut) -> usize {
        std::mem::size_of::<Fut>()
    }

    /// Every claimed run is a task whose future is allocated at its spawn: with the cold
    /// paths' control-plane reads inline (revision and schema cache misses, a resumed
    /// attempt's journal, the approval policy) it was 37,624 bytes in a release build (16,448
    /// in a test build), and a drain of 1,024 runs in flight allocated them from fresh pages
    /// (`perf`: a third of the benchmark process's samples zeroing them). Those awaits are
    /// boxed (docs/benchmarks.md, "Session 15"); release build now 7,736 bytes.
    #[test]
    fn the_run_task_future_stays_small() {
        let n = future_size(Worker::execute);
        assert!(n <= 8 * 1024, "the run task future is {n} bytes");
    }
}
