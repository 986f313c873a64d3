//! One `LISTEN` connection per process and database for the wake-up channels.
//!
//! A worker process listened on three connections of its own: its claim loop on `awooop_runs`,
//! its delivery loop on `awooop_outbound`, its gateway's snapshot cache on `awooop_activation`
//! (and a channel hub's cache on that again where one runs). PostgreSQL 15 signals every
//! backend that listens on anything in the database at every commit that notified, whatever
//! the channel (async.c, `SignalBackends`), and each such backend then reads the notice queue:
//! with one worker pod per tenant, every run created anywhere cost every idle pod three
//! backends' wake-ups, and each pod held three connections for it (docs/benchmarks.md,
//! "Session 31": `awooop bench idle`, the traffic window). Now a process's subscribers share one
//! connection ([`crate::tenancy::Db::listener`]).
//!
//! A subscriber gets [`Signal`]s: [`Signal::Listening`] once the connection listens on its
//! channel (after every (re)connection), [`Signal::Lost`] when the connection failed or could
//! not be made (notices sent until the next `Listening` are lost: poll, or drop what a notice
//! would have invalidated), and each notice's payload. The connection's one statement is a
//! single `LISTEN` of every channel subscribed so far, so `pg_stat_activity` shows which
//! channels it serves. A subscription to a channel the connection does not listen on yet
//! (a process's components subscribe as they start) makes a new connection that listens on
//! all of them; the others get `Lost` and `Listening` around it.
//!
//! The high-volume run-event channel keeps its own listener ([`crate::events::RunEventHub`]).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::{PgListener, PgPoolOptions};
use tokio::sync::{Notify, mpsc};

/// What a subscription hears.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Signal {
    /// The connection listens on the channel: from now on no notice is missed.
    Listening,
    /// The connection failed, or could not be made: notices may be missed until `Listening`.
    Lost,
    /// A notice on the channel, with its payload.
    Notice(String),
}

/// A subscription to one channel ([`Listener::subscribe`]). Dropping it unsubscribes.
#[derive(Debug)]
pub struct Subscription {
    rx: mpsc::UnboundedReceiver<Signal>,
}

impl Subscription {
    /// The next signal; `None` once the listener is gone (its database handle dropped).
    pub async fn recv(&mut self) -> Option<Signal> {
        self.rx.recv().await
    }
}

impl Subscription {
    /// Turn this subscription into wake-ups of a loop that waits for notices while `listening`
    /// and polls otherwise: `listening` follows the connection, `wake` is notified at each
    /// change of it (the loop then looks once: notices sent in a gap are lost) and at each
    /// notice whose payload `concerns` the loop. Runs until the listener is gone or the
    /// returned task is aborted.
    pub fn wake(
        mut self,
        wake: Arc<Notify>,
        listening: Arc<AtomicBool>,
        concerns: impl Fn(&str) -> bool + Send + 'static,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            while let Some(signal) = self.recv().await {
                match signal {
                    Signal::Listening => {
                        listening.store(true, Ordering::Release);
                        wake.notify_one();
                    }
                    Signal::Lost => {
                        if listening.swap(false, Ordering::AcqRel) {
                            // A loop waiting for notices goes back to its poll.
                            wake.notify_one();
                        }
                    }
                    Signal::Notice(payload) => {
                        if concerns(&payload) {
                            wake.notify_one();
                        }
                    }
                }
            }
        })
    }
}

type Subscribe = (String, mpsc::UnboundedSender<Signal>);

/// The process's shared listener for one database (see the module docs).
#[derive(Debug)]
pub struct Listener {
    tx: mpsc::UnboundedSender<Subscribe>,
}

/// How long to wait before connecting again after a failed attempt.
const RETRY: Duration = Duration::from_millis(500);

impl Listener {
    /// Start the listener's task, which connects with `pool`'s options once something is
    /// subscribed and ends when the last handle is dropped or `pool` is closed.
    ///
    /// The connection comes from a pool of its own, of one connection: it never takes one the
    /// process's work would use (each listener held one of a worker's pooled connections), and
    /// a reconnection for a new channel gets the same server session back once the old
    /// listener has run its `UNLISTEN *` (from the shared pool it opened a new one each time,
    /// and the old ones stayed in that pool, idle, for its idle timeout).
    pub fn start(pool: PgPool) -> Arc<Self> {
        let own = PgPoolOptions::new()
            .max_connections(1)
            .min_connections(0)
            .acquire_timeout(pool.options().get_acquire_timeout())
            .connect_lazy_with(pool.connect_options().as_ref().clone());
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(pool, own, rx));
        Arc::new(Self { tx })
    }

    /// Subscribe to `channel`: [`Signal::Listening`] follows once it is listened on.
    pub fn subscribe(&self, channel: &str) -> Subscription {
        let (tx, rx) = mpsc::unbounded_channel();
        let _ = self.tx.send((channel.to_string(), tx));
        Subscription { rx }
    }
}

type Subscribers = BTreeMap<String, Vec<mpsc::UnboundedSender<Signal>>>;

/// Send `signal` to every subscriber, forgetting those that are gone.
fn broadcast(subs: &mut Subscribers, signal: &Signal) {
    for list in subs.values_mut() {
        list.retain(|tx| tx.send(signal.clone()).is_ok());
    }
}

/// `pool`: the process's pool, whose closing ends the listener; `own`: the listener's own.
async fn run(pool: PgPool, own: PgPool, mut rx: mpsc::UnboundedReceiver<Subscribe>) {
    let mut subs = Subscribers::new();
    let mut conn: Option<PgListener> = None;
    loop {
        let Some(listener) = conn.as_mut() else {
            if subs.is_empty() {
                match rx.recv().await {
                    Some((channel, tx)) => subs.entry(channel).or_default().push(tx),
                    None => return,
                }
            }
            // Everything subscribed by now, on one connection.
            while let Ok((channel, tx)) = rx.try_recv() {
                subs.entry(channel).or_default().push(tx);
            }
            match connect(&own, subs.keys()).await {
                Ok(l) => {
                    conn = Some(l);
                    broadcast(&mut subs, &Signal::Listening);
                }
                Err(e) => {
                    if pool.is_closed() {
                        return;
                    }
                    tracing::debug!(error = %e, "LISTEN connection failed; retrying");
                    broadcast(&mut subs, &Signal::Lost);
                    let retry = tokio::time::sleep(RETRY);
                    tokio::pin!(retry);
                    loop {
                        tokio::select! {
                            _ = &mut retry => break,
                            s = rx.recv() => match s {
                                Some((channel, tx)) => {
                                    let _ = tx.send(Signal::Lost);
                                    subs.entry(channel).or_default().push(tx);
                                }
                                None => return,
                            },
                        }
                    }
                }
            }
            continue;
        };
        tokio::select! {
            biased;
            // The process's pool closed (shutdown, a test's end): so does the listener.
            _ = pool.close_event() => return,
            s = rx.recv() => match s {
                None => return,
                Some((channel, tx)) => match subs.get_mut(&channel) {
                    Some(list) => {
                        if tx.send(Signal::Listening).is_ok() {
                            list.push(tx);
                        }
                    }
                    None => {
                        // A new channel: a new connection listens on all of them (dropping
                        // this one ends the receive this select interrupted with it).
                        subs.entry(channel).or_default().push(tx);
                        conn = None;
                        broadcast(&mut subs, &Signal::Lost);
                    }
                },
            },
            r = listener.try_recv() => match r {
                Ok(Some(n)) => {
                    if let Some(list) = subs.get_mut(n.channel()) {
                        let signal = Signal::Notice(n.payload().to_string());
                        list.retain(|tx| tx.send(signal.clone()).is_ok());
                    }
                }
                Ok(None) | Err(_) => {
                    if pool.is_closed() {
                        return;
                    }
                    tracing::debug!("LISTEN connection lost; reconnecting");
                    conn = None;
                    broadcast(&mut subs, &Signal::Lost);
                }
            },
        }
    }
}

/// A connection that listens on `channels`, in one statement. It does not reconnect by
/// itself: [`run`] reconnects, so that every loss is reported.
async fn connect(
    pool: &PgPool,
    channels: impl IntoIterator<Item = &String>,
) -> sqlx::Result<PgListener> {
    let mut l = PgListener::connect_with(pool).await?;
    l.eager_reconnect(false);
    l.listen_all(channels.into_iter().map(String::as_str))
        .await?;
    Ok(l)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Without a database: every subscriber hears `Lost` after each failed attempt, including
    /// one that subscribes while the listener waits to retry.
    #[tokio::test]
    async fn an_unreachable_database_is_reported_as_lost_to_every_subscriber() {
        let pool = sqlx::postgres::PgPoolOptions::new()
            .acquire_timeout(Duration::from_millis(200))
            .connect_lazy("postgres://nobody@127.0.0.1:1/none")
            .unwrap();
        let l = Listener::start(pool);
        let mut a = l.subscribe("awooop_runs");
        let mut b = l.subscribe("awooop_outbound");
        for s in [&mut a, &mut b] {
            let got = tokio::time::timeout(Duration::from_secs(10), s.recv()).await;
            assert_eq!(got.unwrap(), Some(Signal::Lost));
        }
        let mut c = l.subscribe("awooop_runs");
        let got = tokio::time::timeout(Duration::from_secs(10), c.recv()).await;
        assert_eq!(got.unwrap(), Some(Signal::Lost));
        // The listener ends with its last handle.
        drop(l);
        let end = tokio::time::timeout(Duration::from_secs(10), async {
            while a.recv().await.is_some() {}
        })
        .await;
        assert!(end.is_ok(), "the listener outlived its handle");
    }
}
