//! The process's one listener for run events: `LISTEN awooop_run_events`, fanned out to every
//! subscriber in this process (SSE streams, the console, the channel hub's progress feedback).
//!
//! PostgreSQL is the source: the rows are written by triggers in the transaction that changes
//! the run (migration 0050), and the NOTIFY is delivered only when that transaction commits.
//! A notice carries `(project, run, seq)` and nothing else; a subscriber reads the events
//! themselves in the run's tenant scope. Notices can be lost (listener reconnect, a slow
//! subscriber lagging the broadcast buffer), so subscribers treat them as a wake-up and keep a
//! slow poll as a safety net: an event is never lost, at worst late. Redis plays no part.
//!
//! One hub per [`super::tenancy::Db`] (created lazily on the first subscription), one LISTEN
//! connection per hub.

use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio::sync::broadcast;
use uuid::Uuid;

/// The NOTIFY channel the run-event triggers use.
pub const CHANNEL: &str = "awooop_run_events";

/// Broadcast buffer: notices a subscriber may fall behind before it sees `Lagged` (and then
/// re-reads from its cursor, losing nothing). 4096 notices are ~100 KB.
const BUFFER: usize = 4096;

/// One committed run event, as announced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    pub project: String,
    pub run: Uuid,
    pub seq: i64,
}

impl Notice {
    /// Parse `'{project} {run} {seq}'`.
    pub fn parse(payload: &str) -> Option<Self> {
        let mut it = payload.split(' ');
        let n = Notice {
            project: it.next()?.to_string(),
            run: Uuid::parse_str(it.next()?).ok()?,
            seq: it.next()?.parse().ok()?,
        };
        it.next().is_none().then_some(n)
    }
}

/// What a subscriber receives: a notice, or "you may have missed some, re-read".
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Wake {
    Event(Notice),
    Resync,
}

#[derive(Debug)]
pub struct RunEventHub {
    tx: broadcast::Sender<Wake>,
}

impl RunEventHub {
    /// Start the hub and its listener task (the task ends when the pool is closed).
    pub fn start(pool: PgPool) -> Arc<Self> {
        let (tx, _) = broadcast::channel(BUFFER);
        let hub = Arc::new(Self { tx });
        let weak = Arc::downgrade(&hub);
        tokio::spawn(async move {
            loop {
                if pool.is_closed() {
                    return;
                }
                match PgListener::connect_with(&pool).await {
                    Ok(mut l) => {
                        if l.listen(CHANNEL).await.is_ok() {
                            // Anything committed while no one listened is read on resync.
                            match weak.upgrade() {
                                Some(h) => {
                                    let _ = h.tx.send(Wake::Resync);
                                }
                                None => return,
                            }
                            while let Ok(n) = l.recv().await {
                                let Some(h) = weak.upgrade() else { return };
                                if let Some(notice) = Notice::parse(n.payload()) {
                                    let _ = h.tx.send(Wake::Event(notice));
                                }
                            }
                        }
                    }
                    Err(e) => tracing::debug!(error = %e, "run events LISTEN failed; retrying"),
                }
                if weak.strong_count() == 0 {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
        hub
    }

    /// Fan a wake-up out to this process's subscribers directly (the post-commit notifier's
    /// local path, [`crate::notify`]).
    pub(crate) fn publish(&self, w: Wake) {
        let _ = self.tx.send(w);
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Wake> {
        self.tx.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_only_well_formed_notices() {
        let run = Uuid::now_v7();
        assert_eq!(
            Notice::parse(&format!("ewoooc {run} 7")),
            Some(Notice {
                project: "ewoooc".into(),
                run,
                seq: 7
            })
        );
        assert_eq!(Notice::parse("ewoooc x 7"), None);
        assert_eq!(Notice::parse(&format!("ewoooc {run} 7 8")), None);
        assert_eq!(Notice::parse(&format!("ewoooc {run}")), None);
    }
}
