//! Following a run's events: one shared reader per run and process, fanned out to every
//! subscriber of that run.
//!
//! Before, every subscriber re-read `run_events` on every NOTIFY, so one event cost one query
//! per subscriber (100 followers of a run: 100 queries per event, and the p99 delivery latency
//! was the queue behind them). Now a run's [`Feed`] owns one reader task that reads the rows
//! after its last `seq` once per wake-up and broadcasts each batch; subscribers take from the
//! broadcast. The database stays the only source, and each subscriber still guarantees its own
//! stream is gapless and duplicate-free, whatever the feed does:
//!
//! 1. [`subscribe`] reads the first page after the client's cursor **in the subscriber's own
//!    tenant scope**: this is the tenant check (a foreign or unknown run is `E-RUN-001` before
//!    anything is shared), and the history of a resumed stream (`Last-Event-ID`).
//! 2. It joins the run's feed (created if absent), then reads once more from where its history
//!    ended: an event committed between the two is caught by that read, and every later one is
//!    read by the feed after the join, so it arrives on the broadcast.
//! 3. From the broadcast it takes exactly the events with `seq = seen + 1, seen + 2, …`
//!    ([`take`]): older ones are duplicates and skipped; a jump (a batch that starts past
//!    `seen + 1`), a `Lagged` broadcast (the subscriber fell more than [`BUFFER`] batches
//!    behind) or a quiet [`POLL`] makes it re-read from the database after `seen`, as in 1.
//!
//! Seqs of a run are committed in order (they are counted on the run's row, under its row
//! lock, migration 0050), so "every row after `seen`" never misses a row committed later with
//! a smaller `seq`.
//!
//! Feeds are keyed by (project, run): a feed reads in the scope of the project whose
//! subscriber passed the tenant check in step 1, and only subscribers of that project ever
//! join it. A feed lives while it has subscribers; the last one leaving stops its reader.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::broadcast;
use tokio::sync::broadcast::error::RecvError;
use tokio::task::JoinHandle;
use uuid::Uuid;

use awooop_api::{RunEvent, TERMINAL_STATES};
use awooop_core::error::Result;
use awooop_store::events::Wake;
use awooop_store::tenancy::{self, Db, ProjectId};

/// Events read per query.
const PAGE: i64 = 500;
/// Safety-net poll when no notice arrives (a lost NOTIFY costs at most this much latency).
pub const POLL: Duration = Duration::from_secs(5);
/// How long a finished run's stream stays open for late events (tool-call audit is batched
/// every 50 ms).
pub const LINGER: Duration = Duration::from_millis(300);
/// Batches a subscriber may fall behind before it sees `Lagged` and re-reads from the
/// database. A batch is one read (often one event); 256 of them are a few seconds of a busy
/// run, and a subscriber that slow costs one extra query, not a lost event.
pub const BUFFER: usize = 256;

/// One read of the feed: the new events (possibly none) and whether the run had ended.
#[derive(Debug, Clone)]
struct Batch {
    events: Arc<[RunEvent]>,
    terminal: bool,
}

/// What a subscriber at `seen` takes from a batch.
#[derive(Debug, PartialEq)]
pub struct Take {
    /// The events that continue its stream (`seen + 1`, `seen + 2`, … in order).
    pub events: Vec<RunEvent>,
    /// The batch skipped past `seen + 1`: something is missing, re-read from the database.
    pub gap: bool,
}

/// The pure decision of step 3: take the contiguous continuation of `seen`, skip duplicates,
/// report a gap. `batch` is in `seq` order (one read, `ORDER BY seq`).
pub fn take(seen: i64, batch: &[RunEvent]) -> Take {
    let mut next = seen + 1;
    let mut events = Vec::new();
    for e in batch {
        if e.seq < next {
            continue;
        }
        if e.seq > next {
            return Take { events, gap: true };
        }
        events.push(e.clone());
        next += 1;
    }
    Take { events, gap: false }
}

/// The feeds of one database in this process ([`Db::shared`]).
#[derive(Default)]
pub struct RunFeeds {
    feeds: Mutex<HashMap<(ProjectId, Uuid), Weak<Feed>>>,
}

/// One run's shared reader. Dropping the last handle stops the reader task.
#[derive(Debug)]
struct Feed {
    tx: broadcast::Sender<Batch>,
    task: JoinHandle<()>,
}

impl Drop for Feed {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl RunFeeds {
    /// The run's feed (started at `from` if it does not exist yet) and a receiver on it.
    fn join(
        &self,
        db: &Db,
        project: &ProjectId,
        run: Uuid,
        from: i64,
    ) -> (Arc<Feed>, broadcast::Receiver<Batch>) {
        let mut feeds = self.feeds.lock().unwrap_or_else(|e| e.into_inner());
        let key = (project.clone(), run);
        if let Some(f) = feeds.get(&key).and_then(Weak::upgrade) {
            let rx = f.tx.subscribe();
            return (f, rx);
        }
        // Forget feeds whose subscribers all left (their readers are already stopped).
        feeds.retain(|_, f| f.strong_count() > 0);
        let (tx, rx) = broadcast::channel(BUFFER);
        // The wake-up receiver exists before the reader's first read, so nothing committed
        // after that read goes unannounced to it.
        let wake = db.run_events().subscribe();
        let task = tokio::spawn(pump(
            db.clone(),
            project.clone(),
            run,
            from,
            tx.clone(),
            wake,
        ));
        let f = Arc::new(Feed { tx, task });
        feeds.insert(key, Arc::downgrade(&f));
        (f, rx)
    }

    /// Feeds with at least one subscriber (for tests and diagnostics).
    pub fn live(&self) -> usize {
        let feeds = self.feeds.lock().unwrap_or_else(|e| e.into_inner());
        feeds.values().filter(|f| f.strong_count() > 0).count()
    }
}

/// The reader task of one feed: read after `last` on every wake-up for this run (or every
/// [`POLL`]), broadcast what it read.
async fn pump(
    db: Db,
    project: ProjectId,
    run: Uuid,
    mut last: i64,
    tx: broadcast::Sender<Batch>,
    mut wake: broadcast::Receiver<Wake>,
) {
    let mut terminal = false;
    loop {
        // Read until a short page: a burst larger than a page is read in one go.
        loop {
            match tenancy::scope(project.clone(), super::read(&db, run, last, PAGE)).await {
                Ok((state, evs)) => {
                    let ended = TERMINAL_STATES.contains(&state.as_str());
                    let full = evs.len() as i64 == PAGE;
                    if let Some(e) = evs.last() {
                        last = e.seq;
                    }
                    // An empty batch is sent once, to tell subscribers the run ended.
                    if !evs.is_empty() || ended != terminal {
                        terminal = ended;
                        let _ = tx.send(Batch {
                            events: evs.into(),
                            terminal,
                        });
                    }
                    if !full {
                        break;
                    }
                }
                Err(e) => {
                    // Subscribers notice nothing new and re-read themselves after POLL; a run
                    // that is gone ends their streams there.
                    tracing::debug!(error = %e, %run, "run event feed read failed");
                    break;
                }
            }
        }
        wait(&mut wake, &project, run, last, POLL).await;
    }
}

/// Wait until something for this run may have happened (or `limit` passed).
async fn wait(
    wake: &mut broadcast::Receiver<Wake>,
    project: &ProjectId,
    run: Uuid,
    after: i64,
    limit: Duration,
) {
    let sleep = tokio::time::sleep(limit);
    tokio::pin!(sleep);
    loop {
        tokio::select! {
            w = wake.recv() => match w {
                Ok(Wake::Event(n)) if n.run == run && n.seq > after
                    && n.project == project.as_str() => return,
                Ok(Wake::Event(_)) => continue,
                Ok(Wake::Resync) | Err(RecvError::Lagged(_)) => return,
                Err(RecvError::Closed) => { (&mut sleep).await; return; }
            },
            _ = &mut sleep => return,
        }
    }
}

/// One subscriber's stream of a run's events: gapless, duplicate-free, after its cursor.
pub struct Subscription {
    db: Db,
    project: ProjectId,
    run: Uuid,
    /// The last `seq` queued (or delivered).
    seen: i64,
    queue: VecDeque<RunEvent>,
    terminal: bool,
    /// Re-read from the database before waiting again.
    stale: bool,
    linger_until: Option<tokio::time::Instant>,
    rx: broadcast::Receiver<Batch>,
    rereads: u64,
    _feed: Arc<Feed>,
}

/// Follow `run` after `after` in `project`'s scope. Fails (before any stream exists) when the
/// run is not this project's (`E-RUN-001`) or the database fails.
pub async fn subscribe(db: &Db, project: ProjectId, run: Uuid, after: i64) -> Result<Subscription> {
    // 1. The tenant check and the first page of history, in the subscriber's own scope.
    let (state, evs) = tenancy::scope(project.clone(), super::read(db, run, after, PAGE)).await?;
    let seen = evs.last().map_or(after, |e| e.seq);
    // 2. Join the feed; the next read closes the window between the read above and the join.
    let (feed, rx) = db.shared::<RunFeeds>().join(db, &project, run, seen);
    Ok(Subscription {
        db: db.clone(),
        project,
        run,
        seen,
        queue: evs.into(),
        terminal: TERMINAL_STATES.contains(&state.as_str()),
        stale: true,
        linger_until: None,
        rx,
        rereads: 0,
        _feed: feed,
    })
}

impl Subscription {
    /// The next event, or `None` when the run has ended (and lingered) or a read failed.
    pub async fn next(&mut self) -> Option<RunEvent> {
        loop {
            if let Some(e) = self.queue.pop_front() {
                return Some(e);
            }
            if self.stale {
                if let Err(e) = self.reread().await {
                    tracing::debug!(error = %e, run = %self.run, "run event stream ends");
                    return None;
                }
                continue;
            }
            let limit = if self.terminal {
                let until = *self
                    .linger_until
                    .get_or_insert_with(|| tokio::time::Instant::now() + LINGER);
                let left = until.saturating_duration_since(tokio::time::Instant::now());
                if left.is_zero() {
                    return None;
                }
                left
            } else {
                POLL
            };
            match tokio::time::timeout(limit, self.rx.recv()).await {
                Ok(Ok(b)) => {
                    let t = take(self.seen, &b.events);
                    if let Some(e) = t.events.last() {
                        self.seen = e.seq;
                    }
                    self.queue.extend(t.events);
                    self.stale = t.gap;
                    self.terminal |= b.terminal;
                }
                // Fell behind the broadcast: the database still has everything.
                Ok(Err(RecvError::Lagged(_))) => {
                    self.rereads += 1;
                    self.stale = true;
                }
                // The feed outlives its subscribers, so this cannot happen; read anyway.
                Ok(Err(RecvError::Closed)) => {
                    tokio::time::sleep(limit).await;
                    self.stale = true;
                }
                // Quiet for the whole poll (or the linger ended): one last look.
                Err(_) => self.stale = true,
            }
        }
    }

    /// How often this subscriber fell behind the broadcast and re-read from the database.
    pub fn rereads(&self) -> u64 {
        self.rereads
    }

    /// Read a page after `seen` in the subscriber's scope (stays stale while pages are full).
    async fn reread(&mut self) -> Result<()> {
        let (state, evs) = tenancy::scope(
            self.project.clone(),
            super::read(&self.db, self.run, self.seen, PAGE),
        )
        .await?;
        self.stale = evs.len() as i64 == PAGE;
        if let Some(e) = evs.last() {
            self.seen = e.seq;
        }
        self.queue.extend(evs);
        self.terminal = TERMINAL_STATES.contains(&state.as_str());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use awooop_api::RunEventKind;

    fn ev(seq: i64) -> RunEvent {
        RunEvent {
            seq,
            kind: RunEventKind::Step,
            data: serde_json::json!({}),
            at: chrono::Utc::now(),
        }
    }

    fn seqs(t: &Take) -> Vec<i64> {
        t.events.iter().map(|e| e.seq).collect()
    }

    #[test]
    fn takes_the_contiguous_continuation_only() {
        let b: Vec<RunEvent> = [3, 4, 5, 6].map(ev).to_vec();
        // (seen, taken, gap)
        let table: [(i64, &[i64], bool); 5] = [
            (2, &[3, 4, 5, 6], false), // exactly next
            (4, &[5, 6], false),       // duplicates skipped
            (6, &[], false),           // all seen
            (9, &[], false),           // all older than seen
            (1, &[], true),            // 2 is missing: re-read
        ];
        for (seen, taken, gap) in table {
            let t = take(seen, &b);
            assert_eq!(seqs(&t), taken, "seen {seen}");
            assert_eq!(t.gap, gap, "seen {seen}");
        }
        // A hole inside a batch stops at the hole.
        let holed: Vec<RunEvent> = [3, 4, 6].map(ev).to_vec();
        let t = take(2, &holed);
        assert_eq!(seqs(&t), [3, 4]);
        assert!(t.gap);
        assert_eq!(
            take(0, &[]),
            Take {
                events: vec![],
                gap: false
            }
        );
    }
}
