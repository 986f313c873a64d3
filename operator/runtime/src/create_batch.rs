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
//! The run basis (the project's mode and its active Runtime, Agent and Project revisions) a
//! creation is prepared on is kept per project and agent for [`BASIS_TTL`]
//! ([`CreateWriter::basis`]), so a creation no longer reads it in a transaction of its own
//! (three round trips and a transaction's work in PostgreSQL). Each distinct basis of a batch is checked inside the writing transaction (the
//! first by the writing statement itself, `RunBasis::check_sql`; any other by
//! `RunBasis::still_current`), and creations prepared on a basis that changed are not
//! written: their callers read the basis afresh, prepare again and are written without the
//! cache (as the channel hub does). So a run can never be written against a revision that was
//! no longer active, or a mode that was no longer the project's, when its statement wrote it:
//! before, the basis was read in one transaction and the run written in the next.
//!
//! Creations with an idempotency key keep the one-by-one path: it serialises on the key,
//! then replays, refuses or inserts.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::sync::{Mutex, mpsc, oneshot};

use awooop_core::cache::TtlCache;
use awooop_core::error::{Error, ErrorCode, Result};
use awooop_store::tenancy::{self, Db, ProjectId};

use crate::{PreparedRun, RunAccepted, RunBasis, RunService};

/// How long a run basis is reused for new creations (every use is checked in the writing
/// transaction, so this bounds only how often a changed basis costs a retry).
pub const BASIS_TTL: Duration = Duration::from_secs(1);
/// Most (project, agent) bases kept: only bases that loaded (an existing, active agent).
const BASES: usize = 4096;

/// Most creations written in one transaction.
pub const MAX_BATCH: usize = 64;
/// Writer tasks per database: while one commits, the next takes what queued meanwhile.
const WRITERS: usize = 2;
/// Creations waiting for a writer before callers wait to enqueue (back-pressure).
const QUEUE: usize = 4096;

/// Why a creation was not written.
pub(crate) enum Refusal {
    /// The basis it was prepared on is no longer current: prepare again on a fresh one.
    Stale,
    Failed(Error),
}

impl From<Error> for Refusal {
    fn from(e: Error) -> Self {
        Refusal::Failed(e)
    }
}

type Answer = std::result::Result<RunAccepted, Refusal>;

struct Job {
    prepared: PreparedRun,
    /// The cached basis it was prepared on, checked in the writing transaction (`None`: read
    /// afresh by the caller, written as before).
    basis: Option<Arc<RunBasis>>,
    reply: oneshot::Sender<Answer>,
}

/// The group-commit queue of one database and its cached run bases (kept per `Db` through
/// `Db::shared`, so every `RunService` of the process on that database shares them).
pub(crate) struct CreateWriter {
    queue: OnceLock<mpsc::Sender<Job>>,
    bases: TtlCache<(ProjectId, String), RunBasis, Error>,
}

impl Default for CreateWriter {
    fn default() -> Self {
        Self {
            queue: OnceLock::new(),
            bases: TtlCache::bounded(BASIS_TTL, BASES),
        }
    }
}

impl CreateWriter {
    /// The run basis of `agent` in the current project, reused for [`BASIS_TTL`].
    pub(crate) async fn basis(&self, runs: &RunService, agent: &str) -> Result<Arc<RunBasis>> {
        let project = tenancy::require()?;
        let key = (project.clone(), agent.to_string());
        self.bases
            .get(&key, || {
                let (runs, agent) = (runs.clone(), agent.to_string());
                // The load runs in a task of its own: it carries the tenant scope itself.
                tenancy::scope(project, async move { runs.basis(&agent).await })
            })
            .await
            .map_err(Error::unshare)
    }

    /// Forget the cached basis of `agent` in `project` (it was found stale).
    pub(crate) fn forget(&self, project: &ProjectId, agent: &str) {
        self.bases
            .invalidate(|(p, a)| p == project && a.as_str() == agent);
    }

    /// Write `prepared` (no idempotency key) in the next group commit of `db`; returns when
    /// it has committed. Starts the writers on first use (needs a tokio runtime).
    pub(crate) async fn create(
        &self,
        db: &Db,
        prepared: PreparedRun,
        basis: Option<Arc<RunBasis>>,
    ) -> Answer {
        let queue = self.queue.get_or_init(|| start(db.clone())).clone();
        let (reply, answer) = oneshot::channel();
        queue
            .send(Job {
                prepared,
                basis,
                reply,
            })
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
        let all: Vec<&Job> = jobs.iter().collect();
        tenancy::scope(project.clone(), write(db, &all)).await
    };
    match result {
        Ok(written) => {
            db.notifier()
                .runs_created(project.as_str(), written.iter().flatten().map(|a| a.run_id));
            for (job, w) in jobs.into_iter().zip(written) {
                let _ = job.reply.send(w.ok_or(Refusal::Stale));
            }
        }
        Err(e) if jobs.len() == 1 => {
            let job = jobs.into_iter().next().expect("one job");
            let _ = job.reply.send(Err(Refusal::Failed(e)));
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
                let r = tenancy::scope(project.clone(), write(db, &[&job])).await;
                let answer = match r {
                    Ok(mut w) => match w.pop().flatten() {
                        Some(a) => {
                            db.notifier().runs_created(project.as_str(), [a.run_id]);
                            Ok(a)
                        }
                        None => Err(Refusal::Stale),
                    },
                    Err(e) => Err(Refusal::Failed(e)),
                };
                let _ = job.reply.send(answer);
            }
        }
    }
}

/// One tenant transaction (wake-ups deferred to after the commit) writing `jobs`: the
/// creations prepared on a basis that is no longer current are left out (`None` in their
/// place), the others' runs, events and audit rows go in one statement. The first basis is
/// checked by that statement itself (no round trip of its own: the usual batch has one basis,
/// its project's one agent); a batch with several checks the others first.
async fn write(db: &Db, jobs: &[&Job]) -> Result<Vec<Option<RunAccepted>>> {
    let mut tx = db.tenant_deferred().await?;
    let mut bases: Vec<&Arc<RunBasis>> = Vec::new();
    for b in jobs.iter().filter_map(|j| j.basis.as_ref()) {
        if !bases.iter().any(|c| Arc::ptr_eq(c, b)) {
            bases.push(b);
        }
    }
    let mut stale: Vec<&Arc<RunBasis>> = Vec::new();
    for b in bases.iter().skip(1) {
        if !b.still_current(&mut tx).await? {
            stale.push(b);
        }
    }
    let accepted = loop {
        let is_stale = |j: &Job| {
            j.basis
                .as_ref()
                .is_some_and(|b| stale.iter().any(|s| Arc::ptr_eq(s, b)))
        };
        let runs: Vec<&PreparedRun> = jobs
            .iter()
            .filter(|j| !is_stale(j))
            .map(|j| &j.prepared)
            .collect();
        let guard = bases
            .first()
            .filter(|b| !stale.iter().any(|s| Arc::ptr_eq(s, b)));
        match RunService::insert_prepared_many_guarded(&mut tx, &runs, guard.map(|b| &***b)).await?
        {
            Some(v) if v.len() == runs.len() => break v,
            // Nothing was written: keyless runs have no key to find taken, so the guard's
            // basis changed. The same statement again without that basis's creations.
            None if !runs.is_empty() && guard.is_some() => stale.push(bases[0]),
            _ => {
                return Err(Error::new(
                    ErrorCode::Internal,
                    "a run without a key was not written",
                ));
            }
        }
    };
    tx.commit().await?;
    let is_stale = |j: &Job| {
        j.basis
            .as_ref()
            .is_some_and(|b| stale.iter().any(|s| Arc::ptr_eq(s, b)))
    };
    let mut accepted = accepted.into_iter();
    Ok(jobs
        .iter()
        .map(|j| if is_stale(j) { None } else { accepted.next() })
        .collect())
}
