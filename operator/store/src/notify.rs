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
//! Notices stay wake-ups, never data: a notice that is lost (the notifier's connection is
//! down, the process dies between its COMMIT and the send) leaves the run to the workers' and
//! event streams' fallback polls, late but never lost, exactly as a listener's reconnect did.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, PgConnection, PgPool};
use tokio::sync::mpsc;
use uuid::Uuid;

/// Appended to a transaction's `BEGIN`: the run-creation triggers of this transaction leave
/// their notices to the writer (migration 0071, `awooop_notify_deferred()`).
pub const DEFER_SQL: &str = "SET LOCAL awooop.defer_notify = 'on'";

/// The workers' wake-up channel (payload-free; migration 0003).
pub const RUNS_CHANNEL: &str = "awooop_runs";

/// Most notices sent in one statement; more wait for the next one.
const MAX_BATCH: usize = 4096;

/// One notice: a channel and its payload.
type Notice = (&'static str, String);

/// The process's post-commit notice sender for one database (see the module docs). Cloning
/// the `Arc` is cheap; sending never waits.
#[derive(Debug)]
pub struct Notifier {
    tx: mpsc::UnboundedSender<Notice>,
}

impl Notifier {
    /// Start the notifier and its sender task, which connects with the pool's options (not
    /// from the pool: its session setting must not reach other users of the pool) and ends
    /// when the last handle is dropped.
    pub fn start(pool: PgPool) -> Arc<Self> {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(send_loop(pool.connect_options().as_ref().clone(), rx));
        Arc::new(Self { tx })
    }

    /// Announce runs whose creation committed with [`DEFER_SQL`]: what the creation triggers
    /// would have sent (the workers' wake-up once, and each run's `created` event, seq 1).
    pub fn runs_created(&self, project: &str, runs: impl IntoIterator<Item = Uuid>) {
        let mut any = false;
        for run in runs {
            any = true;
            let _ = self
                .tx
                .send((crate::events::CHANNEL, format!("{project} {run} 1")));
        }
        if any {
            let _ = self.tx.send((RUNS_CHANNEL, String::new()));
        }
    }
}

async fn send_loop(opts: PgConnectOptions, mut rx: mpsc::UnboundedReceiver<Notice>) {
    let mut conn: Option<PgConnection> = None;
    let mut batch: Vec<Notice> = Vec::new();
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
        if let Err(e) = res {
            tracing::debug!(error = %e, dropped = batch.len(), "notifier send failed");
            conn = None;
        }
        batch.clear();
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
