//! A keyed cache of values read from the database, kept for at most a TTL, with single-flight
//! loads and refresh-ahead (the channel hub's resolved channels and run bases; the rule
//! [`freshness`] is also the gateway's for its project snapshots).
//!
//! * A value is **never served once `ttl` has passed since its load started** (what it holds
//!   was read at some point after that instant, so its staleness is bounded by `ttl` plus
//!   nothing): [`freshness`] says [`Freshness::Expired`] and the caller waits for a load.
//! * In the last quarter of its TTL ([`Freshness::RefreshAhead`]) the first caller starts a
//!   reload in the background and every caller, that one included, keeps the still-valid
//!   value: under steady traffic no request waits for a reload.
//! * One load per key at a time (single flight): callers that find the value expired or
//!   missing while a load runs wait for that load and share its result, an error included
//!   (errors are not kept: the next caller after the load loads again). Before, every request
//!   arriving while an entry was expired read the database itself: a burst of identical reads
//!   once per TTL, in the p99 under load.
//! * [`TtlCache::invalidate`] drops the matching values at once and detaches the loads in
//!   flight: later callers start a new load instead of joining one that began before the
//!   invalidation, and a load that began before it never installs its result.
//! * A load runs in a task of its own: a caller that goes away (a client hanging up) does not
//!   cancel the load other callers wait for.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, PoisonError, RwLock, Weak};
use std::time::{Duration, Instant};

use futures::future::{BoxFuture, FutureExt, Shared};

/// How usable a cached value of age `age` is under `ttl`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Freshness {
    Fresh,
    /// Still valid, in the last quarter of its TTL: one caller reloads it (ahead).
    RefreshAhead,
    /// Never served: callers wait for the (one) reload.
    Expired,
}

/// The freshness of a value whose load started `age` ago. A zero TTL never serves a value.
pub fn freshness(age: Duration, ttl: Duration) -> Freshness {
    if age >= ttl {
        Freshness::Expired
    } else if age >= ttl - ttl / 4 {
        Freshness::RefreshAhead
    } else {
        Freshness::Fresh
    }
}

/// The shared result of one load.
type Flight<V, E> = Shared<BoxFuture<'static, Result<Arc<V>, Arc<E>>>>;

struct State<K, V, E> {
    /// Value and the instant its load started.
    entries: HashMap<K, (Instant, Arc<V>)>,
    /// The load in flight per key, with its id.
    flights: HashMap<K, (u64, Flight<V, E>)>,
    /// Bumped by every invalidation: a load started under an older generation installs
    /// nothing.
    generation: u64,
    next_flight: u64,
}

struct Inner<K, V, E> {
    ttl: Duration,
    /// When an insert finds this many values, the expired ones are dropped first, and all of
    /// them if that is not enough (keys that keep coming, such as run ids, never pile up).
    max_entries: usize,
    state: RwLock<State<K, V, E>>,
}

/// See the module documentation. Cheap to clone (shared).
pub struct TtlCache<K, V, E> {
    inner: Arc<Inner<K, V, E>>,
}

impl<K, V, E> Clone for TtlCache<K, V, E> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

enum Found<V, E> {
    Value(Arc<V>),
    Flight(Flight<V, E>),
    /// Refresh-ahead found a load already running (or the value already refreshed).
    Nothing,
}

impl<K, V, E> TtlCache<K, V, E>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Send + Sync + 'static,
    E: Send + Sync + 'static,
{
    pub fn new(ttl: Duration) -> Self {
        Self {
            inner: Arc::new(Inner {
                ttl,
                max_entries: usize::MAX,
                state: RwLock::new(State {
                    entries: HashMap::new(),
                    flights: HashMap::new(),
                    generation: 0,
                    next_flight: 0,
                }),
            }),
        }
    }

    /// [`TtlCache::new`] holding at most `max_entries` values (see [`Inner::max_entries`]).
    pub fn bounded(ttl: Duration, max_entries: usize) -> Self {
        let c = Self::new(ttl);
        let inner = Arc::into_inner(c.inner).expect("just created");
        Self {
            inner: Arc::new(Inner {
                max_entries: max_entries.max(1),
                ..inner
            }),
        }
    }

    /// How many values are held (expired ones included, until an insert sweeps them).
    pub fn len(&self) -> usize {
        self.inner
            .state
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .entries
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn ttl(&self) -> Duration {
        self.inner.ttl
    }

    /// The value of `key`: cached if still valid, else from the one load in flight for it,
    /// else from `load` (called at most once, under the cache's lock: it must only build the
    /// future; the future runs in a task of its own, so it carries whatever task-local context
    /// it needs itself).
    pub async fn get<F, Fut>(&self, key: &K, load: F) -> Result<Arc<V>, Arc<E>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<V, E>> + Send + 'static,
    {
        {
            let s = self
                .inner
                .state
                .read()
                .unwrap_or_else(PoisonError::into_inner);
            if let Some((at, v)) = s.entries.get(key) {
                match freshness(at.elapsed(), self.inner.ttl) {
                    Freshness::Fresh => return Ok(v.clone()),
                    Freshness::RefreshAhead => {
                        let v = v.clone();
                        if !s.flights.contains_key(key) {
                            drop(s);
                            // Started in the background; this caller keeps the valid value.
                            let _ = self.join_or_start(key, load, true);
                        }
                        return Ok(v);
                    }
                    Freshness::Expired => {}
                }
            }
        }
        match self.join_or_start(key, load, false) {
            Found::Value(v) => Ok(v),
            Found::Flight(f) => f.await,
            Found::Nothing => unreachable!("only refresh-ahead finds nothing to do"),
        }
    }

    /// Under the write lock: the value if another caller loaded it meanwhile, else the load in
    /// flight, else a new one. With `ahead`, only start a load (the caller has a valid value).
    fn join_or_start<F, Fut>(&self, key: &K, load: F, ahead: bool) -> Found<V, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<V, E>> + Send + 'static,
    {
        let mut s = self
            .inner
            .state
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some((at, v)) = s.entries.get(key) {
            match (freshness(at.elapsed(), self.inner.ttl), ahead) {
                (Freshness::Fresh, true) => return Found::Nothing,
                (Freshness::Fresh | Freshness::RefreshAhead, false) => {
                    return Found::Value(v.clone());
                }
                _ => {}
            }
        }
        if let Some((_, f)) = s.flights.get(key) {
            return if ahead {
                Found::Nothing
            } else {
                Found::Flight(f.clone())
            };
        }
        let id = s.next_flight;
        s.next_flight += 1;
        let generation = s.generation;
        let started = Instant::now();
        let cache: Weak<Inner<K, V, E>> = Arc::downgrade(&self.inner);
        let k = key.clone();
        let fut = load();
        let flight: Flight<V, E> = async move {
            let r = fut.await.map(Arc::new).map_err(Arc::new);
            if let Some(c) = cache.upgrade() {
                c.finish(&k, id, generation, started, &r);
            }
            r
        }
        .boxed()
        .shared();
        s.flights.insert(key.clone(), (id, flight.clone()));
        drop(s);
        // Driven to the end even if every caller waiting for it goes away.
        tokio::spawn(flight.clone());
        if ahead {
            Found::Nothing
        } else {
            Found::Flight(flight)
        }
    }

    /// The last value loaded for `key`, whatever its age: for reusing work derived from it in
    /// the next load (the gateway keeps a compiled registry whose revision is unchanged),
    /// never to serve it.
    pub fn peek(&self, key: &K) -> Option<Arc<V>> {
        let s = self
            .inner
            .state
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        s.entries.get(key).map(|(_, v)| v.clone())
    }

    /// Drop the values of the keys `drop` selects, now, and detach their loads in flight
    /// (their callers still get their result; nobody joins them any more and no load that
    /// began before this call installs its result: the generation is global, so a load of
    /// another key in flight is not kept either, which only costs a reload).
    pub fn invalidate(&self, mut drop: impl FnMut(&K) -> bool) {
        let mut s = self
            .inner
            .state
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        s.generation += 1;
        s.entries.retain(|k, _| !drop(k));
        s.flights.retain(|k, _| !drop(k));
    }

    /// Drop every value (and detach every load in flight).
    pub fn clear(&self) {
        self.invalidate(|_| true);
    }
}

impl<K: Hash + Eq + Clone, V, E> Inner<K, V, E> {
    fn finish(
        &self,
        key: &K,
        id: u64,
        generation: u64,
        started: Instant,
        r: &Result<Arc<V>, Arc<E>>,
    ) {
        let mut s = self.state.write().unwrap_or_else(PoisonError::into_inner);
        if s.flights.get(key).is_some_and(|(i, _)| *i == id) {
            s.flights.remove(key);
        }
        if let Ok(v) = r
            && s.generation == generation
        {
            if s.entries.len() >= self.max_entries && !s.entries.contains_key(key) {
                let ttl = self.ttl;
                s.entries.retain(|_, (at, _)| at.elapsed() < ttl);
                if s.entries.len() >= self.max_entries {
                    s.entries.clear();
                }
            }
            // Aged from the start of the load: what it read is at most that old.
            s.entries.insert(key.clone(), (started, v.clone()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn values_are_refreshed_ahead_and_never_served_past_their_ttl() {
        let ms = Duration::from_millis;
        for (age, ttl, want) in [
            (0, 1000, Freshness::Fresh),
            (749, 1000, Freshness::Fresh),
            (750, 1000, Freshness::RefreshAhead),
            (999, 1000, Freshness::RefreshAhead),
            (1000, 1000, Freshness::Expired),
            (1001, 1000, Freshness::Expired),
            (5000, 1000, Freshness::Expired),
            (3749, 5000, Freshness::Fresh),
            (3750, 5000, Freshness::RefreshAhead),
            (4999, 5000, Freshness::RefreshAhead),
            (5000, 5000, Freshness::Expired),
            // A zero TTL (tests that need every change at once) never serves a value.
            (0, 0, Freshness::Expired),
        ] {
            assert_eq!(freshness(ms(age), ms(ttl)), want, "age {age} ttl {ttl}");
        }
    }

    /// A load that counts its calls, takes `delay` and returns the count.
    fn counting(
        n: &Arc<AtomicUsize>,
        delay: Duration,
    ) -> impl FnOnce() -> BoxFuture<'static, Result<usize, String>> + use<> {
        let n = n.clone();
        move || {
            async move {
                let i = n.fetch_add(1, Ordering::SeqCst) + 1;
                tokio::time::sleep(delay).await;
                Ok(i)
            }
            .boxed()
        }
    }

    async fn concurrent(
        c: &TtlCache<&'static str, usize, String>,
        n: &Arc<AtomicUsize>,
        callers: usize,
        delay: Duration,
    ) -> Vec<Result<Arc<usize>, Arc<String>>> {
        let tasks: Vec<_> = (0..callers)
            .map(|_| {
                let (c, n) = (c.clone(), n.clone());
                tokio::spawn(async move { c.get(&"k", counting(&n, delay)).await })
            })
            .collect();
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.unwrap());
        }
        out
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_callers_of_a_missing_or_expired_value_cause_one_load() {
        let ttl = Duration::from_millis(300);
        let c = TtlCache::<&'static str, usize, String>::new(ttl);
        let n = Arc::new(AtomicUsize::new(0));
        let got = concurrent(&c, &n, 64, Duration::from_millis(50)).await;
        assert_eq!(n.load(Ordering::SeqCst), 1, "one load for 64 callers");
        assert!(got.iter().all(|r| **r.as_ref().unwrap() == 1));
        // Expired: again one load, shared by every caller.
        tokio::time::sleep(ttl + Duration::from_millis(20)).await;
        let got = concurrent(&c, &n, 64, Duration::from_millis(50)).await;
        assert_eq!(n.load(Ordering::SeqCst), 2, "one reload for 64 callers");
        assert!(got.iter().all(|r| **r.as_ref().unwrap() == 2));
    }

    #[tokio::test]
    async fn a_bounded_cache_drops_expired_values_first_and_never_grows_past_its_bound() {
        let ttl = Duration::from_millis(200);
        let c = TtlCache::<u32, u32, String>::bounded(ttl, 4);
        let load = |v: u32| move || async move { Ok::<_, String>(v) }.boxed();
        for k in 0..2 {
            c.get(&k, load(k)).await.unwrap();
        }
        tokio::time::sleep(ttl + Duration::from_millis(20)).await;
        for k in 2..4 {
            c.get(&k, load(k)).await.unwrap();
        }
        assert_eq!(c.len(), 4);
        // Full: the two expired values go, the two fresh ones stay.
        c.get(&4, load(4)).await.unwrap();
        assert_eq!(c.len(), 3);
        assert!(c.peek(&0).is_none() && c.peek(&1).is_none());
        assert!(c.peek(&2).is_some() && c.peek(&3).is_some());
        // Full of fresh values: all of them go, the new one stays.
        c.get(&5, load(5)).await.unwrap();
        c.get(&6, load(6)).await.unwrap();
        assert_eq!(c.len(), 1);
        assert_eq!(c.peek(&6).as_deref(), Some(&6));
        // Thousands of keys never hold more than the bound.
        for k in 100..5000 {
            c.get(&k, load(k)).await.unwrap();
            assert!(c.len() <= 4);
        }
    }

    #[tokio::test]
    async fn a_value_is_never_served_past_its_ttl_counted_from_the_start_of_its_load() {
        let ttl = Duration::from_millis(200);
        let c = TtlCache::<&'static str, usize, String>::new(ttl);
        let n = Arc::new(AtomicUsize::new(0));
        // The load takes 120 ms: its value is 120 ms old when it arrives.
        assert_eq!(
            *c.get(&"k", counting(&n, Duration::from_millis(120)))
                .await
                .unwrap(),
            1
        );
        // 100 ms later it is 220 ms old: past the TTL, so it is loaded again (aged from the
        // end of the load, it would still have been served).
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(*c.get(&"k", counting(&n, Duration::ZERO)).await.unwrap(), 2);
        // Fresh: served without a load.
        assert_eq!(*c.get(&"k", counting(&n, Duration::ZERO)).await.unwrap(), 2);
        assert_eq!(n.load(Ordering::SeqCst), 2);
        // A zero TTL loads every time.
        let z = TtlCache::<&'static str, usize, String>::new(Duration::ZERO);
        for want in 3..6 {
            assert_eq!(
                *z.get(&"k", counting(&n, Duration::ZERO)).await.unwrap(),
                want
            );
        }
    }

    #[tokio::test]
    async fn in_the_last_quarter_one_caller_refreshes_ahead_and_nobody_waits() {
        let ttl = Duration::from_millis(2000);
        let c = TtlCache::<&'static str, usize, String>::new(ttl);
        let n = Arc::new(AtomicUsize::new(0));
        c.get(&"k", counting(&n, Duration::ZERO)).await.unwrap();
        // The last quarter is 1,500–2,000 ms (slack for a loaded machine).
        tokio::time::sleep(Duration::from_millis(1600)).await;
        // In the last quarter: the still-valid value at once, although the reload takes 150 ms.
        for _ in 0..10 {
            let t = Instant::now();
            let v = c
                .get(&"k", counting(&n, Duration::from_millis(150)))
                .await
                .unwrap();
            assert_eq!(*v, 1);
            assert!(t.elapsed() < Duration::from_millis(100), "a caller waited");
        }
        // The one reload lands before the old value expires and is served from then on.
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert_eq!(*c.get(&"k", counting(&n, Duration::ZERO)).await.unwrap(), 2);
        assert_eq!(n.load(Ordering::SeqCst), 2, "one refresh for ten callers");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_load_is_shared_by_its_waiters_and_not_kept() {
        let c = TtlCache::<&'static str, usize, String>::new(Duration::from_secs(60));
        let n = Arc::new(AtomicUsize::new(0));
        let failing = |n: &Arc<AtomicUsize>| {
            let n = n.clone();
            move || {
                async move {
                    n.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    Err::<usize, _>("database down".to_string())
                }
                .boxed()
            }
        };
        let tasks: Vec<_> = (0..32)
            .map(|_| {
                let (c, f) = (c.clone(), failing(&n));
                tokio::spawn(async move { c.get(&"k", f).await })
            })
            .collect();
        for t in tasks {
            assert_eq!(*t.await.unwrap().unwrap_err(), "database down");
        }
        assert_eq!(n.load(Ordering::SeqCst), 1);
        // The next caller loads again (the error was not kept).
        assert_eq!(*c.get(&"k", counting(&n, Duration::ZERO)).await.unwrap(), 2);
    }

    #[tokio::test]
    async fn invalidation_drops_values_and_detaches_loads_in_flight() {
        let c = TtlCache::<&'static str, usize, String>::new(Duration::from_secs(60));
        let n = Arc::new(AtomicUsize::new(0));
        c.get(&"k", counting(&n, Duration::ZERO)).await.unwrap();
        c.get(&"other", counting(&n, Duration::ZERO)).await.unwrap();
        c.invalidate(|k| *k == "k");
        // "other" is kept, "k" is loaded again.
        assert_eq!(
            *c.get(&"other", counting(&n, Duration::ZERO)).await.unwrap(),
            2
        );
        assert_eq!(*c.get(&"k", counting(&n, Duration::ZERO)).await.unwrap(), 3);
        // A load in flight when the invalidation comes: its caller gets its result, a caller
        // after the invalidation does not join it, and it does not install its value.
        c.clear();
        let (release, wait) = tokio::sync::oneshot::channel::<()>();
        let slow = {
            let n = n.clone();
            move || {
                async move {
                    let i = n.fetch_add(1, Ordering::SeqCst) + 1;
                    let _ = wait.await;
                    Ok::<_, String>(i)
                }
                .boxed()
            }
        };
        let early = {
            let c = c.clone();
            tokio::spawn(async move { c.get(&"k", slow).await })
        };
        while n.load(Ordering::SeqCst) < 4 {
            tokio::task::yield_now().await;
        }
        c.invalidate(|k| *k == "k");
        let late = c.get(&"k", counting(&n, Duration::ZERO)).await.unwrap();
        assert_eq!(
            *late, 5,
            "a caller after the invalidation started its own load"
        );
        release.send(()).unwrap();
        assert_eq!(*early.await.unwrap().unwrap(), 4);
        // The detached load did not replace the newer value.
        assert_eq!(*c.get(&"k", counting(&n, Duration::ZERO)).await.unwrap(), 5);
    }

    #[tokio::test]
    async fn a_load_continues_when_its_caller_goes_away() {
        let c = TtlCache::<&'static str, usize, String>::new(Duration::from_secs(60));
        let n = Arc::new(AtomicUsize::new(0));
        let gone = tokio::time::timeout(
            Duration::from_millis(10),
            c.get(&"k", counting(&n, Duration::from_millis(100))),
        )
        .await;
        assert!(gone.is_err(), "the caller gave up before the load ended");
        tokio::time::sleep(Duration::from_millis(200)).await;
        // The load finished and installed its value: no second load.
        assert_eq!(*c.get(&"k", counting(&n, Duration::ZERO)).await.unwrap(), 1);
        assert_eq!(n.load(Ordering::SeqCst), 1);
    }
}
