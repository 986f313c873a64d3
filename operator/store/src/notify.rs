//! Wake-ups announced after a commit, instead of by NOTIFY inside the writing transaction.
//!
//! PostgreSQL serialises the commits of every transaction that has called NOTIFY: at commit
//! such a transaction takes one cluster-wide lock and keeps it until its commit is over, WAL
//! flush included (async.c, `PreCommit_Notify`). Run creation used to notify from its triggers
//! (`awooop_runs` for the workers, `awooop_run_events` for the event streams), so the hot
//! writers (the channel hub's group commits, API run creation) committed one at a time and
//! could never share a WAL flush (migration 0071 has the figures).
//!
//! A hot writer now opens its transaction with [`DEFER_SQL`] (in the same simple query as its
//! `BEGIN`, no extra round trip): the creation triggers then write their rows but send no
//! NOTIFY. Once COMMIT has returned, the writer hands the same notices to this process's
//! [`Notifier`], which sends whatever has accumulated in one autocommit statement on a
//! connection of its own with `synchronous_commit = off`: that transaction writes nothing but
//! its notices, so its commit does not wait for a WAL flush and holds the lock only for
//! microseconds. Listeners see no difference: PostgreSQL delivered the in-transaction notices
//! at commit too.
//!
//! The notifier also wakes this process's own listeners on the same database directly: the
//! workers registered with [`Notifier::wake_on_runs`] and the run-event hub, if started (so an
//! in-process worker picks a new run up without waiting for PostgreSQL to deliver the notice
//! back; duplicates are harmless, a wake-up only makes a listener look). The `awooop_runs`
//! notices this notifier sends carry its token ([`Notifier::runs_token`]), so those workers
//! ignore the notice PostgreSQL delivers back after the direct wake-up they already had.
//!
//! Notices stay wake-ups, never data: a notice that is lost (the notifier's connection is
//! down, the process dies between its COMMIT and the send) leaves the run to the workers' and
//! event streams' fallback polls, late but never lost, exactly as a listener's reconnect did.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, PgConnection, PgPool};
use tokio::sync::{Notify, mpsc};
use uuid::Uuid;

use crate::events::{self, RunEventHub, Wake};

/// Appended to a transaction's `BEGIN`: the run-creation triggers of this transaction leave
/// their notices to the writer (migration 0071, `awooop_notify_deferred()`).
pub const DEFER_SQL: &str = "SET LOCAL awooop.defer_notify = 'on'";

/// The workers' wake-up channel (migration 0003). Its payload names the project whose runs
/// became claimable (migration 0084): `{project}` from the triggers, `{project} {token}` from a
/// [`Notifier`] ([`Notifier::runs_token`]). See [`runs_notice_wakes`].
pub const RUNS_CHANNEL: &str = "awooop_runs";

/// The delivery workers' wake-up channel (migration 0082): a new outbound message or progress
/// row. Its payload is the project (migration 0084; see [`project_notice_wakes`]).
pub const OUTBOUND_CHANNEL: &str = "awooop_outbound";

/// Whether an `awooop_runs` notice should wake a worker whose notifier's token is `own` and
/// which claims only `bound`'s runs (`None`: every project's).
///
/// A notice its own notifier sent followed a direct wake-up the worker already had
/// ([`Notifier::runs_token`]). A bound worker ignores other projects' notices: before
/// migration 0084 every run created anywhere woke every tenant's worker pods, each for a claim
/// that could find nothing. A notice without a project (an empty payload, as every notice was
/// before that migration) wakes every worker.
pub fn runs_notice_wakes(payload: &str, own: &str, bound: Option<&str>) -> bool {
    let (project, token) = payload.split_once(' ').unwrap_or((payload, ""));
    if !token.is_empty() && token == own {
        return false;
    }
    project_notice_wakes(project, bound)
}

/// Whether a notice naming `project` (empty: any) concerns a listener bound to `bound`
/// (`None`: every project).
pub fn project_notice_wakes(project: &str, bound: Option<&str>) -> bool {
    match bound {
        Some(b) => project.is_empty() || project == b,
        None => true,
    }
}

/// Most notices sent in one statement; more wait for the next one.
const MAX_BATCH: usize = 4096;

/// One notice: a channel and its payload.
type Notice = (&'static str, String);

/// The process's post-commit notice sender for one database (see the module docs). Cloning
/// the `Arc` is cheap; sending never waits.
#[derive(Debug)]
pub struct Notifier {
    tx: mpsc::UnboundedSender<Notice>,
    /// The payload of this notifier's `awooop_runs` notices ([`Notifier::runs_token`]).
    token: String,
    /// This process's own listeners on the same database, woken directly (no round trip):
    /// workers' wake-ups ([`Notifier::wake_on_runs`], with the project each is bound to) and
    /// the run-event hub, if started.
    local_runs: Mutex<Vec<(Weak<Notify>, Option<String>)>>,
    events: Arc<OnceLock<Arc<RunEventHub>>>,
}

impl Notifier {
    /// Start the notifier and its sender task, which connects with the pool's options (not
    /// from the pool: its session setting must not reach other users of the pool) and ends
    /// when the last handle is dropped.
    pub fn start(pool: PgPool, events: Arc<OnceLock<Arc<RunEventHub>>>) -> Arc<Self> {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(send_loop(pool.connect_options().as_ref().clone(), rx));
        Arc::new(Self {
            tx,
            token: Uuid::new_v4().simple().to_string(),
            local_runs: Mutex::new(Vec::new()),
            events,
        })
    }

    /// Wake `n` (`notify_one`) whenever this process announces new runs, without waiting for
    /// PostgreSQL to deliver the `awooop_runs` notice back (a worker in the same process as the
    /// creator picks a run up one round trip sooner). Other processes still get the notice.
    /// `bound`: only for that project's runs (`None`: every project's). Held weakly: a dropped
    /// waiter is forgotten.
    pub fn wake_on_runs(&self, n: &Arc<Notify>, bound: Option<&str>) {
        let mut l = self.local_runs.lock().unwrap_or_else(|e| e.into_inner());
        l.retain(|(w, _)| w.strong_count() > 0);
        l.push((Arc::downgrade(n), bound.map(str::to_string)));
    }

    /// The token in the `awooop_runs` notices this notifier sends, after the project (random per
    /// notifier; the creation triggers send the project alone). Every such notice follows a direct wake-up of
    /// the workers registered here ([`Notifier::wake_on_runs`]), so those workers ignore it
    /// when PostgreSQL delivers it back: before, each of them claimed twice per announcement,
    /// once per wake-up, and at low load that was most of the claims PostgreSQL ran (about
    /// twelve claim statements per run created, docs/benchmarks.md "Session 25"). Workers of
    /// other processes, or registered with another notifier, still wake on it.
    pub fn runs_token(&self) -> &str {
        &self.token
    }

    /// Announce runs whose creation committed with [`DEFER_SQL`]: what the creation triggers
    /// would have sent (the workers' wake-up once, and each run's `created` event, seq 1).
    pub fn runs_created(&self, project: &str, runs: impl IntoIterator<Item = Uuid>) {
        let hub = self.events.get();
        let mut any = false;
        for run in runs {
            any = true;
            if let Some(h) = hub {
                h.publish(Wake::Event(events::Notice {
                    project: project.to_string(),
                    run,
                    seq: 1,
                }));
            }
            let _ = self
                .tx
                .send((events::CHANNEL, format!("{project} {run} 1")));
        }
        if any {
            let _ = self
                .tx
                .send((RUNS_CHANNEL, format!("{project} {}", self.token)));
            let l = self.local_runs.lock().unwrap_or_else(|e| e.into_inner());
            for (n, bound) in l.iter() {
                if project_notice_wakes(project, bound.as_deref())
                    && let Some(n) = n.upgrade()
                {
                    n.notify_one();
                }
            }
        }
    }
}

impl Notifier {
    /// Announce progress rows whose insert committed (the channel hub's group commit, which
    /// keeps NOTIFY out of its transactions: migration 0071): the delivery workers then wait
    /// for their first status update exactly instead of until their idle bound.
    pub fn outbound(&self, project: &str) {
        let _ = self.tx.send((OUTBOUND_CHANNEL, project.to_string()));
    }
}

async fn send_loop(opts: PgConnectOptions, mut rx: mpsc::UnboundedReceiver<Notice>) {
    let mut conn: Option<PgConnection> = None;
    let mut batch: Vec<Notice> = Vec::new();
    let mut resent = false;
    loop {
        if batch.is_empty() {
            match rx.recv().await {
                Some(n) => batch.push(n),
                None => return,
            }
        }
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(n) => batch.push(n),
                Err(_) => break,
            }
        }
        // Duplicates carry nothing more (PostgreSQL would fold them within one transaction).
        let mut seen = HashSet::with_capacity(batch.len());
        batch.retain(|n| seen.insert(n.clone()));
        let c = match conn.as_mut() {
            Some(c) => c,
            None => match connect(&opts).await {
                Ok(c) => conn.insert(c),
                Err(e) => {
                    // Lost notices fall back to the listeners' polls; try again shortly.
                    tracing::debug!(error = %e, dropped = batch.len(), "notifier connect failed");
                    batch.clear();
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            },
        };
        let (channels, payloads): (Vec<&str>, Vec<&str>) =
            batch.iter().map(|(c, p)| (*c, p.as_str())).unzip();
        let res = sqlx::query(
            "SELECT count(pg_notify(c, p)) FROM unnest($1::text[], $2::text[]) AS n(c, p)",
        )
        .bind(&channels)
        .bind(&payloads)
        .execute(&mut *c)
        .await;
        match res {
            Ok(_) => {
                batch.clear();
                resent = false;
            }
            // A connection that broke (the server restarted it, a proxy dropped it) gets the
            // batch again once on a new one: idle workers wait for these notices up to their
            // idle bound, so one reset should not cost them that.
            Err(e) if !resent => {
                tracing::debug!(error = %e, "notifier send failed; resending once");
                conn = None;
                resent = true;
            }
            Err(e) => {
                tracing::debug!(error = %e, dropped = batch.len(), "notifier send failed");
                conn = None;
                batch.clear();
                resent = false;
            }
        }
    }
}

/// The notifier's own connection: its transactions write nothing but notices, so their
/// commits need not wait for a WAL flush (nothing a guarantee rests on is in them).
async fn connect(opts: &PgConnectOptions) -> sqlx::Result<PgConnection> {
    let mut c =
        PgConnection::connect_with(&opts.clone().application_name("awooop-notifier")).await?;
    sqlx::raw_sql("SET synchronous_commit = off")
        .execute(&mut c)
        .await?;
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// In-process listeners are woken without PostgreSQL (here: none reachable at all).
    #[tokio::test]
    async fn wakes_local_workers_and_the_event_hub_without_a_round_trip() {
        let pool = sqlx::postgres::PgPoolOptions::new()
            .connect_lazy("postgres://nobody@127.0.0.1:1/none")
            .unwrap();
        let events: Arc<OnceLock<Arc<RunEventHub>>> = Arc::default();
        let hub = events
            .get_or_init(|| RunEventHub::start(pool.clone()))
            .clone();
        let mut sub = hub.subscribe();
        let n = Notifier::start(pool, events);
        let (a, gone) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
        let other = Arc::new(Notify::new());
        n.wake_on_runs(&a, None);
        n.wake_on_runs(&gone, None);
        n.wake_on_runs(&other, Some("beta"));
        drop(gone);
        // No run, no wake-up.
        n.runs_created("alpha", []);
        let quiet = tokio::time::timeout(Duration::from_millis(50), a.notified()).await;
        assert!(quiet.is_err(), "woken for nothing");
        let run = Uuid::now_v7();
        n.runs_created("alpha", [run]);
        tokio::time::timeout(Duration::from_secs(5), a.notified())
            .await
            .expect("the local worker is woken");
        let other_woken = tokio::time::timeout(Duration::from_millis(50), other.notified()).await;
        assert!(
            other_woken.is_err(),
            "a worker bound to beta woken by alpha's run"
        );
        n.runs_created("beta", [Uuid::now_v7()]);
        tokio::time::timeout(Duration::from_secs(5), other.notified())
            .await
            .expect("the worker bound to beta is woken by beta's run");
        let seen = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                match sub.recv().await.unwrap() {
                    Wake::Event(e) => return e,
                    Wake::Resync => continue,
                }
            }
        })
        .await
        .expect("the local event hub hears the created event");
        assert_eq!(
            seen,
            events::Notice {
                project: "alpha".into(),
                run,
                seq: 1
            }
        );
        // Held weakly: the dropped waiter is pruned on the next registration.
        assert_eq!(n.local_runs.lock().unwrap().len(), 3);
        n.wake_on_runs(&a, None);
        assert_eq!(n.local_runs.lock().unwrap().len(), 3);
        assert_eq!(
            n.local_runs
                .lock()
                .unwrap()
                .iter()
                .filter(|(w, _)| w.strong_count() > 0)
                .count(),
            3
        );
    }

    #[test]
    fn a_runs_notice_wakes_unbound_workers_and_its_own_projects() {
        let own = "t0k3n";
        // From the triggers: the project alone.
        assert!(runs_notice_wakes("alpha", own, None));
        assert!(runs_notice_wakes("alpha", own, Some("alpha")));
        assert!(!runs_notice_wakes("alpha", own, Some("beta")));
        // From another process's notifier.
        assert!(runs_notice_wakes("alpha other", own, None));
        assert!(runs_notice_wakes("alpha other", own, Some("alpha")));
        assert!(!runs_notice_wakes("alpha other", own, Some("beta")));
        // From this worker's own notifier: it was woken directly already.
        assert!(!runs_notice_wakes("alpha t0k3n", own, None));
        assert!(!runs_notice_wakes("alpha t0k3n", own, Some("alpha")));
        // Without a project (before migration 0084): everybody.
        assert!(runs_notice_wakes("", own, None));
        assert!(runs_notice_wakes("", own, Some("beta")));
        // A project that only starts like the bound one is another project.
        assert!(!runs_notice_wakes("alpha-2", own, Some("alpha")));
        assert!(!project_notice_wakes("alpha-2", Some("alpha")));
        assert!(project_notice_wakes("alpha", Some("alpha")));
        assert!(project_notice_wakes("", Some("alpha")));
        assert!(project_notice_wakes("beta", None));
    }
}
