//! Group commit of run creations without an idempotency key (issue 18, "Runs").
//!
//! Why: a run created alone cost PostgreSQL about 515 µs of backend CPU on the 2-core machine
//! (its own transaction: `BEGIN`, one statement writing the run, its `created` event and its
//! audit row, `COMMIT`), the same rows for 16 runs in one statement about 110 µs each
//! (docs/benchmarks.md, "Session 24"): the per-statement and per-transaction work, not the
//! rows, was most of a creation. [`RunService::create`](crate::RunService::create) hands its
//! prepared run (every check done, no I/O left) to this writer and waits for the commit. A
//! few writer tasks each take every creation queued at that moment (up to [`MAX_BATCH`]) and
//! write them per project in one tenant transaction with one statement
//! ([`RunService::insert_prepared_many`](crate::RunService::insert_prepared_many)). Idle, a
//! creation is written alone at once: there is no timer, a batch is what piled up while the
//! previous one was written (the channel hub's inbound writer works the same way).
//!
//! What stays as it was:
//! * a caller's answer comes after its run, `created` event and audit row have committed;
//! * each project's rows are written in a transaction scoped to that project alone (row-level
//!   security), never next to another tenant's;
//! * wake-ups go out after the commit (`Notifier::runs_created`), as before;
//! * when a batch of several creations fails, each is written again alone, so one bad
//!   creation cannot fail its neighbours; a caller sees its own error only.
//!
//! What changes:
//! * a caller that goes away after handing its run over (a client hanging up) no longer rolls
//!   it back: the run is written with its batch, as a run whose commit beat the hang-up always
//!   was; the client learns nothing of it either way, so a retry without a key may create a
//!   second run (an `Idempotency-Key` is the way to retry safely, as before);
//! * the queue is shared by every project of the database, as the connection pool was: a
//!   tenant creating runs as fast as it can delays the others' creations by what it queued
//!   ahead of them (first in, first written, at most [`MAX_BATCH`] per transaction; the queue
//!   holds [`QUEUE`], then callers wait to enqueue), and a tenant whose batch fails costs the
//!   writer one transaction per creation of its own project's part of that batch only.
//!
//! Creations with an idempotency key keep the one-by-one path: it serialises on the key,
//! then replays, refuses or inserts.

use std::sync::{Arc, OnceLock};

use tokio::sync::{Mutex, mpsc, oneshot};

use awooop_core::error::{Error, ErrorCode, Result};
use awooop_store::tenancy::{self, Db, ProjectId};

use crate::{PreparedRun, RunAccepted, RunService};

/// Most creations written in one transaction.
pub const MAX_BATCH: usize = 64;
/// Writer tasks per database: while one commits, the next takes what queued meanwhile.
const WRITERS: usize = 2;
/// Creations waiting for a writer before callers wait to enqueue (back-pressure).
const QUEUE: usize = 4096;

struct Job {
    prepared: PreparedRun,
    reply: oneshot::Sender<Result<RunAccepted>>,
}

/// The group-commit queue of one database (kept per `Db` through `Db::shared`, so every
/// `RunService` of the process on that database feeds the same writers).
#[derive(Default)]
pub(crate) struct CreateWriter {
    queue: OnceLock<mpsc::Sender<Job>>,
}

impl CreateWriter {
    /// Write `prepared` (no idempotency key) in the next group commit of `db`; returns when
    /// it has committed. Starts the writers on first use (needs a tokio runtime).
    pub(crate) async fn create(&self, db: &Db, prepared: PreparedRun) -> Result<RunAccepted> {
        let queue = self.queue.get_or_init(|| start(db.clone())).clone();
        let (reply, answer) = oneshot::channel();
        queue
            .send(Job { prepared, reply })
            .await
            .map_err(|_| stopped())?;
        // A writer that stopped (its task was aborted with the runtime) answers nothing: the
        // run may or may not have committed, and the caller is told it failed.
        answer.await.map_err(|_| stopped())?
    }
}

fn stopped() -> Error {
    Error::new(ErrorCode::Internal, "the run creation writer stopped")
}

fn start(db: Db) -> mpsc::Sender<Job> {
    let (tx, rx) = mpsc::channel(QUEUE);
    let rx = Arc::new(Mutex::new(rx));
    for _ in 0..WRITERS {
        tokio::spawn(writer(db.clone(), rx.clone()));
    }
    tx
}

async fn writer(db: Db, rx: Arc<Mutex<mpsc::Receiver<Job>>>) {
    loop {
        let jobs = {
            let mut rx = rx.lock().await;
            let Some(first) = rx.recv().await else {
                return;
            };
            let mut jobs = vec![first];
            while jobs.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(j) => jobs.push(j),
                    Err(_) => break,
                }
            }
            jobs
        };
        for (project, group) in by_project(jobs) {
            write_group(&db, project, group).await;
        }
    }
}

/// The jobs grouped by project, each group in arrival order, groups in order of their first
/// job.
fn by_project(jobs: Vec<Job>) -> Vec<(ProjectId, Vec<Job>)> {
    let mut groups: Vec<(ProjectId, Vec<Job>)> = Vec::new();
    for job in jobs {
        match groups.iter_mut().find(|(p, _)| *p == job.prepared.project) {
            Some((_, g)) => g.push(job),
            None => groups.push((job.prepared.project.clone(), vec![job])),
        }
    }
    groups
}

async fn write_group(db: &Db, project: ProjectId, jobs: Vec<Job>) {
    let result = {
        let runs: Vec<&PreparedRun> = jobs.iter().map(|j| &j.prepared).collect();
        tenancy::scope(project.clone(), write(db, &runs)).await
    };
    match result {
        Ok(accepted) => {
            db.notifier()
                .runs_created(project.as_str(), accepted.iter().map(|a| a.run_id));
            for (job, a) in jobs.into_iter().zip(accepted) {
                let _ = job.reply.send(Ok(a));
            }
        }
        Err(e) if jobs.len() == 1 => {
            let job = jobs.into_iter().next().expect("one job");
            let _ = job.reply.send(Err(e));
        }
        Err(e) => {
            // Nothing of the batch was written (one transaction): each creation alone, so the
            // one that failed gets its own error and the others their runs.
            tracing::debug!(
                code = e.code.as_str(),
                n = jobs.len(),
                "run creation batch failed; writing its runs one by one"
            );
            for job in jobs {
                let r = tenancy::scope(project.clone(), write(db, &[&job.prepared])).await;
                let r = r.map(|mut v| {
                    let a = v.pop().expect("one run written");
                    db.notifier().runs_created(project.as_str(), [a.run_id]);
                    a
                });
                let _ = job.reply.send(r);
            }
        }
    }
}

/// One tenant transaction (wake-ups deferred to after the commit) writing `runs`.
async fn write(db: &Db, runs: &[&PreparedRun]) -> Result<Vec<RunAccepted>> {
    let mut tx = db.tenant_deferred().await?;
    let accepted = RunService::insert_prepared_many(&mut tx, runs)
        .await?
        .filter(|v| v.len() == runs.len())
        .ok_or_else(|| Error::new(ErrorCode::Internal, "a run without a key was not written"))?;
    tx.commit().await?;
    Ok(accepted)
}
