//! Group commit of verified inbound events.
//!
//! A webhook hands its normalized events (with their runs already prepared, no I/O) to the
//! writer and waits for the commit. A few writer tasks each take every job queued at that
//! moment (up to [`MAX_BATCH_EVENTS`]) and write them per project in one tenant transaction,
//! with one statement per table: the events (`INSERT … ON CONFLICT DO NOTHING RETURNING`: the
//! unique index still decides idempotency), the runs, their idempotency keys, the event → run
//! links and the audit rows. Under load a transaction carries many webhooks, so PostgreSQL
//! does a handful of statements and one WAL flush for them; idle, a job is written alone at
//! once (no timer: a batch is what piled up while the previous one was written).
//!
//! Correctness does not depend on the batching:
//! * the run basis (mode, active revisions) the runs were prepared on is re-read inside the
//!   transaction; if it changed, nothing is written and the callers prepare again
//!   ([`WriteError::Stale`]);
//! * events are written in (channel, external id) order, so two batches holding redeliveries
//!   of the same events wait for each other instead of deadlocking;
//! * when a batch of several jobs fails, each job is written again alone, so one bad event
//!   cannot fail its neighbours' webhooks.
//!
//! A writer keeps its pool connection from one batch to the next while jobs are waiting
//! (session 7): acquiring from the pool costs a health-check round trip each time
//! (`test_before_acquire`), i.e. one of five round trips per group commit. The transaction is
//! the same tenant transaction ([`tenancy::tenant_on`] is `Db::tenant` on a held connection);
//! the connection goes back to the pool when the queue runs empty and after any failed
//! transaction, so a broken connection is never reused; one found dead at `BEGIN` is replaced
//! at once ([`write_held`]).

use std::collections::HashSet;
use std::sync::Arc;

use serde_json::{Value, json};
use sqlx::Postgres;
use sqlx::pool::PoolConnection;
use tokio::sync::{Mutex, mpsc, oneshot};
use uuid::Uuid;

use super::normalize::Normalized;
use super::{Route, store};
use awooop_core::error::{Error, ErrorCode};
use awooop_runtime::{PreparedRun, RunBasis, RunService, TraceContext};
use awooop_store::audit::{self, Entry};
use awooop_store::notify::Notifier;
use awooop_store::tenancy::{self, Db, ProjectId};

/// Largest number of events written in one transaction.
pub const MAX_BATCH_EVENTS: usize = 256;
/// Jobs waiting for a writer before webhooks wait to enqueue (back-pressure).
const QUEUE: usize = 4096;

/// One verified event, its run prepared (or why not).
pub(crate) struct Item {
    pub event: Normalized,
    pub event_id: Uuid,
    pub trace: TraceContext,
    pub text: Option<String>,
    pub route: Route,
    /// Write a progress row with the run (the run may send and the channel wants progress).
    pub progress: bool,
    pub prepared: Option<PreparedRun>,
    pub prepare_error: Option<Error>,
}

/// The events of one webhook request.
pub(crate) struct Job {
    pub project: ProjectId,
    pub channel: String,
    pub provider: &'static str,
    pub progress_interval: u32,
    pub actor: String,
    pub body_sha256: String,
    pub mirrored: bool,
    /// What the runs were prepared on; re-checked in the transaction.
    pub basis: Option<Arc<RunBasis>>,
    pub items: Vec<Item>,
    /// Refused events of the request (unsupported type, sender not allowed): audited.
    pub denials: Vec<(ErrorCode, Value)>,
}

/// What happened to one item.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct ItemOutcome {
    /// False: the provider delivered this event before (the unique index said so).
    pub inserted: bool,
    pub run_id: Option<Uuid>,
}

#[derive(Debug)]
pub(crate) enum WriteError {
    /// The mode or an active revision changed since the runs were prepared: prepare again.
    Stale,
    Failed(Error),
}

impl From<Error> for WriteError {
    fn from(e: Error) -> Self {
        Self::Failed(e)
    }
}

type Reply = oneshot::Sender<std::result::Result<Vec<ItemOutcome>, WriteError>>;

/// The queue in front of the writer tasks.
pub(crate) struct Writer {
    tx: mpsc::Sender<(Job, Reply)>,
}

impl Writer {
    /// Start `writers` tasks on the current runtime; they end when the writer is dropped.
    pub fn start(db: Db, writers: usize) -> Self {
        let (tx, rx) = mpsc::channel::<(Job, Reply)>(QUEUE);
        let rx = Arc::new(Mutex::new(rx));
        for _ in 0..writers.max(1) {
            let rx = rx.clone();
            let db = db.clone();
            tokio::spawn(async move {
                // The connection this writer keeps while it has work: consecutive batches
                // skip the pool's health-check round trip of each acquire. It goes back to the
                // pool when the queue is empty or another writer has it (so the writers never
                // hold more connections than before: one each while writing) and after any
                // failed transaction (the pool's check then catches a broken one).
                let mut conn: Option<PoolConnection<Postgres>> = None;
                loop {
                    let batch = {
                        // Another writer has the queue (waiting for work or taking it): wait
                        // for it without holding a connection.
                        let mut rx = match rx.try_lock() {
                            Ok(rx) => rx,
                            Err(_) => {
                                conn = None;
                                rx.lock().await
                            }
                        };
                        let first = match rx.try_recv() {
                            Ok(j) => j,
                            Err(mpsc::error::TryRecvError::Disconnected) => return,
                            Err(mpsc::error::TryRecvError::Empty) => {
                                conn = None;
                                let Some(j) = rx.recv().await else { return };
                                j
                            }
                        };
                        let mut n = first.0.items.len();
                        let mut batch = vec![first];
                        while n < MAX_BATCH_EVENTS {
                            match rx.try_recv() {
                                Ok(j) => {
                                    n += j.0.items.len();
                                    batch.push(j);
                                }
                                Err(_) => break,
                            }
                        }
                        batch
                    };
                    write_batch(&db, &mut conn, batch).await;
                }
            });
        }
        Self { tx }
    }

    /// Queue a job and wait for its commit.
    pub async fn submit(&self, job: Job) -> std::result::Result<Vec<ItemOutcome>, WriteError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send((job, reply))
            .await
            .map_err(|_| Error::new(ErrorCode::Unavailable, "the event writer stopped"))?;
        rx.await
            .map_err(|_| Error::new(ErrorCode::Unavailable, "the event writer stopped"))?
    }
}

/// Write a batch on the held connection `held`; after a failed transaction the connection is
/// dropped (back to the pool, whose check catches a broken one) rather than kept.
async fn write_batch(
    db: &Db,
    held: &mut Option<PoolConnection<Postgres>>,
    batch: Vec<(Job, Reply)>,
) {
    let notifier = db.notifier();
    // Per project, in arrival order.
    let mut groups: Vec<(ProjectId, Vec<(Job, Reply)>)> = Vec::new();
    for (job, reply) in batch {
        match groups.iter_mut().find(|(p, _)| *p == job.project) {
            Some((_, g)) => g.push((job, reply)),
            None => groups.push((job.project.clone(), vec![(job, reply)])),
        }
    }
    for (project, group) in groups {
        tenancy::scope(project, async {
            let (jobs, replies): (Vec<Job>, Vec<Reply>) = group.into_iter().unzip();
            let res = write_held(db, held, &notifier, &jobs).await;
            if matches!(res, Err(WriteError::Failed(_))) {
                *held = None;
            }
            match res {
                Ok(outs) => {
                    for (reply, out) in replies.into_iter().zip(outs) {
                        let _ = reply.send(Ok(out));
                    }
                }
                Err(WriteError::Failed(e)) if jobs.len() > 1 => {
                    tracing::debug!(
                        code = e.code.as_str(),
                        jobs = jobs.len(),
                        "inbound batch failed; writing its jobs one by one"
                    );
                    // Each on a connection of its own from the pool (the held one, which may
                    // be what failed, was dropped above), as before.
                    for (job, reply) in jobs.iter().zip(replies) {
                        let res =
                            write_held(db, &mut None, &notifier, std::slice::from_ref(job)).await;
                        let _ = reply.send(res.map(|mut v| v.pop().unwrap_or_default()));
                    }
                }
                Err(e) => {
                    for reply in replies {
                        let _ = reply.send(Err(match &e {
                            WriteError::Stale => WriteError::Stale,
                            WriteError::Failed(e) => {
                                WriteError::Failed(Error::new(e.code, e.message.clone()))
                            }
                        }));
                    }
                }
            }
        })
        .await;
    }
}

/// [`write_jobs`] on the held connection, or on a new one from the pool kept in `held`.
///
/// The pool hands out a connection used within the last second unchecked
/// (`awooop_store::db::PING_IF_IDLE_FOR`), and the writer keeps its connection between
/// batches: after the server ended its sessions (a restart, a failover), the `BEGIN` is where
/// a dead connection shows. Nothing ran on it, so the write begins again on another connection
/// (at most the pool's size of times) instead of failing the webhooks of the batch. A
/// connection that breaks after its `BEGIN` fails the write as any other error does.
async fn write_held(
    db: &Db,
    held: &mut Option<PoolConnection<Postgres>>,
    notifier: &Notifier,
    jobs: &[Job],
) -> std::result::Result<Vec<Vec<ItemOutcome>>, WriteError> {
    let mut retries = db.pool_for_health().options().get_max_connections();
    loop {
        let conn = match held {
            Some(c) => c,
            None => held.insert(db.connection().await?),
        };
        let e = match tenancy::tenant_deferred_on(conn).await {
            Ok(tx) => return write_jobs(tx, notifier, jobs).await,
            Err(e) => e,
        };
        // At `BEGIN` on a held connection, `Unavailable` means the connection is gone.
        if e.code != ErrorCode::Unavailable || retries == 0 {
            return Err(e.into());
        }
        tracing::debug!(error = %e, "the writer's connection was dead at BEGIN; beginning on another");
        *held = None;
        retries -= 1;
    }
}

/// Write the jobs of the current project in the transaction `tx` (begun by [`write_held`]:
/// the current tenant's, with run wake-ups deferred) and commit it. The transaction defers
/// its runs' wake-ups (`awooop_store::notify`): they go to `notifier` once COMMIT returned, so
/// concurrent group commits are not serialised on PostgreSQL's NOTIFY lock and share WAL
/// flushes.
async fn write_jobs(
    mut tx: sqlx::Transaction<'_, Postgres>,
    notifier: &Notifier,
    jobs: &[Job],
) -> std::result::Result<Vec<Vec<ItemOutcome>>, WriteError> {
    let project = tenancy::require()?;
    // The bases the runs were prepared on, each once. The first is checked by the event
    // insert itself (no round trip of its own); a batch holding several agents' events checks
    // the others first. Stale: nothing is written (the transaction is dropped).
    let mut bases: Vec<&Arc<RunBasis>> = Vec::new();
    for b in jobs.iter().filter_map(|j| j.basis.as_ref()) {
        if !bases.iter().any(|c| Arc::ptr_eq(c, b)) {
            bases.push(b);
        }
    }
    for b in bases.iter().skip(1) {
        if !b.still_current(&mut tx).await? {
            return Err(WriteError::Stale);
        }
    }

    // 1. Events, in (channel, external id) order.
    let mut order: Vec<(usize, usize)> = jobs
        .iter()
        .enumerate()
        .flat_map(|(j, job)| (0..job.items.len()).map(move |i| (j, i)))
        .collect();
    order.sort_by(|a, b| {
        let (x, y) = (&jobs[a.0], &jobs[b.0]);
        (&x.channel, &x.items[a.1].event.external_id)
            .cmp(&(&y.channel, &y.items[b.1].event.external_id))
    });
    let rows: Vec<store::NewEvent<'_>> = order
        .iter()
        .map(|&(j, i)| {
            let (job, it) = (&jobs[j], &jobs[j].items[i]);
            store::NewEvent {
                project: project.as_str(),
                event_id: it.event_id,
                channel: &job.channel,
                provider: job.provider,
                event: &it.event,
                text: it.text.as_deref(),
                body_sha256: &job.body_sha256,
                trace_id: &it.trace.trace_id,
                mirrored: job.mirrored,
                run_id: it.prepared.as_ref().map(PreparedRun::run_id),
            }
        })
        .collect();
    let inserted: HashSet<Uuid> =
        match store::insert_events(&mut tx, &rows, bases.first().map(|b| &***b)).await? {
            Some(i) => i,
            None => return Err(WriteError::Stale),
        };
    let mut outs: Vec<Vec<ItemOutcome>> = jobs
        .iter()
        .map(|job| {
            job.items
                .iter()
                .map(|it| ItemOutcome {
                    inserted: inserted.contains(&it.event_id),
                    run_id: None,
                })
                .collect()
        })
        .collect();

    // 2. Runs of the new events (one statement per table; one by one when a key is taken).
    let with_run: Vec<(usize, usize)> = order
        .iter()
        .copied()
        .filter(|&(j, i)| outs[j][i].inserted && jobs[j].items[i].prepared.is_some())
        .collect();
    let prepared: Vec<&PreparedRun> = with_run
        .iter()
        .filter_map(|&(j, i)| jobs[j].items[i].prepared.as_ref())
        .collect();
    let accepted = match RunService::insert_prepared_many(&mut tx, &prepared).await? {
        Some(a) => a,
        None => {
            let mut v = Vec::with_capacity(prepared.len());
            for p in &prepared {
                v.push(RunService::insert_prepared(&mut tx, p).await?);
            }
            v
        }
    };
    // The event rows already name the prepared run ids; only a replayed key differs.
    let mut links: Vec<(Uuid, Uuid)> = Vec::new();
    // Progress rows of the whole batch in one statement (not one per run).
    let mut progress_channels: Vec<&str> = Vec::new();
    let mut progress_rows: Vec<(Uuid, &str, &str)> = Vec::new();
    let mut progress_intervals: Vec<i32> = Vec::new();
    for (&(j, i), run) in with_run.iter().zip(&accepted) {
        outs[j][i].run_id = Some(run.run_id);
        let (job, it) = (&jobs[j], &jobs[j].items[i]);
        if it.prepared.as_ref().map(PreparedRun::run_id) != Some(run.run_id) {
            links.push((it.event_id, run.run_id));
        }
        if it.progress && job.progress_interval > 0 {
            progress_channels.push(&job.channel);
            progress_rows.push((run.run_id, &it.event.conversation, &run.trace_id));
            progress_intervals.push(job.progress_interval as i32);
        }
    }
    store::insert_progress_many(
        &mut tx,
        project.as_str(),
        &progress_channels,
        &progress_rows,
        &progress_intervals,
    )
    .await?;
    store::set_event_runs(&mut tx, &links).await?;

    // 3. Audit: events stored without a run (configuration problem) and refused events.
    let mut entries: Vec<Entry<'_>> = Vec::new();
    for (j, job) in jobs.iter().enumerate() {
        for (i, it) in job.items.iter().enumerate() {
            if let (true, Some(e)) = (outs[j][i].inserted, &it.prepare_error) {
                entries.push(Entry {
                    trace_id: Some(it.trace.trace_id.clone()),
                    ..Entry::denied(
                        &job.actor,
                        "channel.route",
                        it.event_id.to_string(),
                        e.code.as_str(),
                        json!({"provider": job.provider, "reason": e.message}),
                    )
                });
            }
        }
        for (code, details) in &job.denials {
            entries.push(Entry::denied(
                &job.actor,
                "channel.webhook",
                job.channel.clone(),
                code.as_str(),
                details.clone(),
            ));
        }
    }
    audit::record_many(&mut tx, entries).await?;
    tx.commit().await.map_err(Error::from)?;
    // Every run the statement wrote (a replayed key's run gets a harmless extra wake-up).
    notifier.runs_created(project.as_str(), accepted.iter().map(|r| r.run_id));
    if !progress_rows.is_empty() {
        notifier.outbound(project.as_str());
    }
    Ok(outs)
}
