//! Budget leases: reservations off the hot ledger row (migration 0062, docs/model.md "Budget
//! leases").
//!
//! Every reservation of the plain ledger is a commit on the project's one ledger row, so a
//! busy project is bounded by that row's commit rate. Here a process leases a *slice* of the
//! row's remaining budget in one tenant transaction and admits reservations inside it in
//! memory (one mutex per process): most reservations never touch PostgreSQL.
//!
//! The hard cap stays in PostgreSQL. A slice is taken under the row lock and is part of the
//! row's `reserved_*` until it is spent or returned, so `spent + reserved (reservations and
//! leases) <= limit` holds at every admission exactly as before; a process only admits what
//! its own slice still holds. Settlements are counted in memory and *flushed* (every
//! `flush_interval`, on shutdown, and at once when usage passes a reservation): one
//! transaction moves the settled spend from the lease to `spent_*`, renews the lease, writes
//! the settled reservations into `budget_reservations` (one statement for the batch), trips
//! the breaker when the spend reached the limit, and tops the slice up or gives it back.
//!
//! Stranding and fairness: a slice is at most a quarter (`share_divisor`) of what the row has
//! left, and is the reservation's exact size while the row is *scarce* (a recall in the last
//! `scarce_window`). A caller that cannot get a slice while other processes hold leases flags
//! a *recall* on the row; every holder gives its unused part back at its next flush and
//! acknowledges; the caller retries and is refused (`E-BUDGET-001`) only once every other
//! lease has acknowledged the recall (or `recall_wait` passed): then the budget is truly
//! spent or held by calls in flight, the same answer as the plain ledger's.
//!
//! Failure: a lease lives `ttl` from its last renewal. A holder that died is reaped by the
//! next transaction on the project: its lease is charged in full (fail closed, like an expired
//! reservation: calls admitted inside it may have been billed). A holder only admits while
//! its local deadline (taken before the renewing transaction began, so never later than the
//! row's `expires_at`) has not passed, and a flush that finds its lease reaped drops it: its
//! open reservations were charged with it and settle as "nothing to do" (false).

// Tokens and micros are `[u64; 2]` arrays updated in lockstep (`d` = 0 tokens, 1 micros):
// indexing several arrays by one dimension reads clearer than zipped iterators.
#![allow(clippy::needless_range_loop)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde_json::json;
use sqlx::PgConnection;
use uuid::Uuid;

use super::{
    Reservation, ReserveRequest, agent_scope, apply, audit_trips_in, i64_of, period_start,
    sort_scopes, sweep, trip, upsert_limits,
};
use crate::policy::{BudgetPolicy, ScopeLimit};
use awooop_contracts::BudgetPeriod;
use awooop_core::error::{Error, ErrorCode, Result};
use awooop_store::tenancy::{self, Db, ProjectId};

/// Tuning of the lease path. The defaults suit a model proxy; the bench and tests shorten
/// `ttl` to show reaping.
#[derive(Debug, Clone)]
pub struct LeaseConfig {
    /// A lease not renewed for this long is reaped (charged in full).
    pub ttl: Duration,
    /// How often settled spend is flushed, leases renewed and recalls answered. It bounds how
    /// long a recall waits and how stale the project breaker may be seen.
    pub flush_interval: Duration,
    /// A lease without reservations for this long is given back whole.
    pub idle_return: Duration,
    /// A slice covers at least this many reservations of the size that asked for it…
    pub min_slice: u64,
    /// …and at most 1/share_divisor of what the row has left (plus the need itself).
    pub share_divisor: u64,
    /// How long a refused caller waits for other holders to answer its recall.
    pub recall_wait: Duration,
    /// After a recall, slices are exact-size and unused parts are returned at every flush.
    pub scarce_window: Duration,
}

impl Default for LeaseConfig {
    fn default() -> Self {
        Self {
            ttl: Duration::from_secs(30),
            flush_interval: Duration::from_millis(25),
            idle_return: Duration::from_secs(1),
            min_slice: 8,
            share_divisor: 4,
            recall_wait: Duration::from_secs(3),
            scarce_window: Duration::from_secs(2),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Pure decisions (table-tested below).

/// The free part a lease should hold after an acquisition, or `None` (refuse): `available`
/// is what the row has left plus the lease's own free part, `need` the reservation, `want`
/// the slice its recent demand asks for.
pub fn slice(available: u64, need: u64, want: u64, divisor: u64, scarce: bool) -> Option<u64> {
    if available < need {
        return None;
    }
    if scarce {
        return Some(need);
    }
    Some(want.min(available / divisor.max(1)).max(need))
}

/// The part of a lease that settled spend uses up: never more than what does not back open
/// reservations (usage above a reservation is spend beyond the lease: overshoot, recorded as
/// it is).
pub fn consumed(settled: u64, cap: u64, out: u64) -> u64 {
    settled.min(cap.saturating_sub(out))
}

/// What the row has left (may be negative after a limit was lowered), with the spend about to
/// be flushed (`settled`, of which `used` came out of this lease) counted.
pub fn remaining(limit: Option<u64>, spent: i64, reserved: i64, settled: u64, used: u64) -> i128 {
    match limit {
        // No limit on this dimension (currency): plenty, but finite for the arithmetic.
        None => i128::from(i64::MAX),
        Some(l) => {
            i128::from(l)
                - (i128::from(spent) + i128::from(settled))
                - (i128::from(reserved) - i128::from(used))
        }
    }
}

// ---------------------------------------------------------------------------------------
// Local state.

type Key = (String, DateTime<Utc>);

/// A ledger row as read under its lock: token limit, currency limit, spent and reserved
/// tokens, spent and reserved micros, tripped, the last recall, and whether it is recent.
type LedgerLock = (
    i64,
    Option<i64>,
    i64,
    i64,
    i64,
    i64,
    bool,
    Option<DateTime<Utc>>,
    bool,
);

/// One lease of this process on one ledger row. `[tokens, micros]` in every array.
#[derive(Debug)]
struct ScopeLease {
    lease_id: Uuid,
    limit: ScopeLimit,
    /// What the lease holds on the ledger row.
    cap: [u64; 2],
    /// Worst cases of the open reservations admitted inside it.
    out: [u64; 2],
    /// Actual usage settled in memory, not flushed yet.
    settled: [u64; 2],
    /// Reserved since the last flush, and in the flush interval before.
    demand: [u64; 2],
    last_demand: [u64; 2],
    in_db: bool,
    /// No admission at or after this instant without a renewal.
    deadline: Instant,
    last_used: Instant,
    acked: Option<DateTime<Utc>>,
    tripped: bool,
    scarce: bool,
}

impl ScopeLease {
    fn new(limit: ScopeLimit, now: Instant) -> Self {
        Self {
            lease_id: Uuid::now_v7(),
            limit,
            cap: [0; 2],
            out: [0; 2],
            settled: [0; 2],
            demand: [0; 2],
            last_demand: [0; 2],
            in_db: false,
            deadline: now,
            last_used: now,
            acked: None,
            tripped: false,
            scarce: false,
        }
    }

    fn free(&self, d: usize) -> u64 {
        self.cap[d].saturating_sub(self.out[d].saturating_add(self.settled[d]))
    }
}

#[derive(Debug)]
struct Held {
    leases: Vec<(Key, Uuid)>,
    amount: [u64; 2],
    expires: Instant,
    row: JournalRow,
}

#[derive(Debug, Clone)]
struct JournalRow {
    id: Uuid,
    run_id: Option<Uuid>,
    agent: String,
    provider: String,
    model: String,
    period: DateTime<Utc>,
    scopes: String,
    tokens: i64,
    micros: i64,
    state: &'static str,
    actual: [i64; 2],
    created: DateTime<Utc>,
    expires: DateTime<Utc>,
    lease_id: Uuid,
}

#[derive(Debug, Default)]
struct ProjectState {
    leases: HashMap<Key, ScopeLease>,
    held: HashMap<Uuid, Held>,
    journal: Vec<JournalRow>,
    /// The project breaker as last read, and when.
    breaker: Option<(String, Instant)>,
    gate: Arc<tokio::sync::Mutex<()>>,
}

struct Inner {
    db: Db,
    cfg: LeaseConfig,
    holder: String,
    state: Mutex<HashMap<String, ProjectState>>,
    stopped: AtomicBool,
}

/// This process's budget leases. Cloning is cheap; the flusher task ends when the last clone
/// is dropped or [`LeasedBudget::shutdown`] ran.
#[derive(Clone)]
pub struct LeasedBudget {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for LeasedBudget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeasedBudget")
            .field("holder", &self.inner.holder)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Flush,
    Acquire,
    Shutdown,
}

/// A needed scope could not be leased.
#[derive(Debug)]
enum Refusal {
    Tripped(String),
    Exceeded {
        scope: String,
        others_unacked: i64,
        recall_at: Option<DateTime<Utc>>,
    },
    /// The lease was reaped under us: try again with a new one.
    Lost,
}

#[derive(Default)]
struct SyncOutcome {
    reservation: Option<Reservation>,
    refused: Option<Refusal>,
    breaker: Option<String>,
}

struct Need<'a> {
    scopes: &'a [(String, ScopeLimit)],
    period: DateTime<Utc>,
    kind: BudgetPeriod,
    req: &'a ReserveRequest,
    recall: Option<DateTime<Utc>>,
}

/// A [`Need`] owned by the task that syncs for it ([`Inner::sync_detached`]).
struct OwnedNeed {
    scopes: Vec<(String, ScopeLimit)>,
    period: DateTime<Utc>,
    kind: BudgetPeriod,
    req: ReserveRequest,
    recall: Option<DateTime<Utc>>,
}

impl OwnedNeed {
    fn borrow(&self) -> Need<'_> {
        Need {
            scopes: &self.scopes,
            period: self.period,
            kind: self.kind,
            req: &self.req,
            recall: self.recall,
        }
    }
}

/// The answer of a sync in its task ([`Inner::sync_detached`]). Dropped unread (the caller
/// went away after the task answered), the reservation it carries is settled at zero.
struct Unanswered {
    rx: tokio::sync::oneshot::Receiver<Result<SyncOutcome>>,
    inner: Arc<Inner>,
    project: ProjectId,
}

impl Drop for Unanswered {
    fn drop(&mut self) {
        if let Ok(Ok(SyncOutcome {
            reservation: Some(r),
            ..
        })) = self.rx.try_recv()
        {
            self.inner.settle_local(&self.project, &r, 0, 0);
        }
    }
}

/// A key's planned change, kept to undo the local side when the transaction fails.
struct Plan {
    key: Key,
    lease_id: Uuid,
    settled: [u64; 2],
    used: [u64; 2],
    /// Signed change of the free part (> 0: granted, applied after commit).
    delta: [i128; 2],
    end: bool,
    lost: bool,
    ack: bool,
    /// The lease row's `acked_at` after this transaction (database clock).
    acked_at: Option<DateTime<Utc>>,
    tripped: bool,
    scarce: bool,
    limit: ScopeLimit,
}

fn scopes_of(limits: &BudgetPolicy, req: &ReserveRequest) -> Vec<(String, ScopeLimit)> {
    let mut v = vec![("project".to_string(), limits.project.clone())];
    if let Some(a) = &limits.agent {
        v.push((agent_scope(&req.agent), a.clone()));
    }
    v
}

fn breaker_error(reason: &str) -> Error {
    Error::new(
        ErrorCode::BudgetBreakerOpen,
        "the project's model breaker is open",
    )
    .with_details(json!({"reason": reason}))
}

fn clamp_i64(v: i128) -> i64 {
    v.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64
}

impl LeasedBudget {
    pub fn new(db: Db, cfg: LeaseConfig) -> Self {
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "local".into());
        let inner = Arc::new(Inner {
            db,
            cfg,
            holder: format!("{host}:{}:{}", std::process::id(), Uuid::now_v7()),
            state: Mutex::default(),
            stopped: AtomicBool::new(false),
        });
        spawn_flusher(Arc::downgrade(&inner));
        Self { inner }
    }

    /// Reserve the worst case of one call in the current tenant, inside this process's lease
    /// when it has room, else after leasing a fresh slice.
    pub async fn reserve(
        &self,
        limits: &BudgetPolicy,
        req: &ReserveRequest,
    ) -> Result<Reservation> {
        let project = tenancy::require()?;
        let period = period_start(limits.period, Utc::now());
        let scopes = scopes_of(limits, req);
        let started = Instant::now();
        let mut recall = None;
        loop {
            if let Some(r) = self.inner.try_local(&project, &scopes, period, req)? {
                return Ok(r);
            }
            let gate = self.inner.gate(&project).lock_owned().await;
            // Another caller may have leased while this one waited.
            if let Some(r) = self.inner.try_local(&project, &scopes, period, req)? {
                return Ok(r);
            }
            let need = OwnedNeed {
                scopes: scopes.clone(),
                period,
                kind: limits.period,
                req: req.clone(),
                recall,
            };
            let out = self
                .inner
                .sync_detached(&project, gate, Mode::Acquire, Some(need))
                .await?;
            if let Some(r) = out.reservation {
                return Ok(r);
            }
            if let Some(reason) = out.breaker {
                return Err(breaker_error(&reason));
            }
            match out.refused {
                None | Some(Refusal::Lost) => continue,
                Some(Refusal::Tripped(scope)) => {
                    return Err(Error::new(
                        ErrorCode::BudgetBreakerOpen,
                        "the period's hard limit was reached: model calls are blocked",
                    )
                    .with_details(json!({"scope": scope})));
                }
                Some(Refusal::Exceeded {
                    scope,
                    others_unacked,
                    recall_at,
                }) => {
                    if others_unacked == 0 || started.elapsed() >= self.inner.cfg.recall_wait {
                        return Err(Error::new(
                            ErrorCode::BudgetExceeded,
                            "the call's worst case would exceed the budget",
                        )
                        .with_details(json!({
                            "scope": scope, "wanted_tokens": req.tokens, "wanted_micros": req.micros
                        })));
                    }
                    // Other holders answer the recall at their next flush (the gate was
                    // released when the sync ended).
                    recall = recall.or(recall_at);
                    tokio::time::sleep(self.inner.cfg.flush_interval / 2).await;
                }
            }
        }
    }

    /// Replace a leased reservation by the actual usage (in memory; flushed with the lease).
    /// False when it was already settled, expired, or its lease was reaped (charged in full).
    pub async fn settle(&self, r: &Reservation, tokens: u64, micros: u64) -> Result<bool> {
        let project = tenancy::require()?;
        let Some((alive, overshoot)) = self.inner.settle_local(&project, r, tokens, micros) else {
            return Ok(false);
        };
        if overshoot {
            // Usage above the reservation is recorded now, not at the next flush: the ledger
            // shows it (and trips) as the plain path would.
            let gate = self.inner.gate(&project).lock_owned().await;
            self.inner
                .sync_detached(&project, gate, Mode::Flush, None)
                .await?;
        }
        Ok(alive)
    }

    /// Flush every project now (settled spend, journal, renewals, recalls).
    pub async fn flush(&self) -> Result<()> {
        self.inner.sync_all(Mode::Flush, true).await
    }

    /// Flush and give every unused part back; leases with calls still open keep what backs
    /// them (reaped and charged in full if those calls never settle). Stops the flusher.
    pub async fn shutdown(&self) -> Result<()> {
        self.inner.stopped.store(true, Ordering::SeqCst);
        self.inner.sync_all(Mode::Shutdown, true).await
    }

    /// Reservations of the current project admitted in memory and not settled yet.
    pub fn open_local(&self) -> usize {
        let Some(p) = tenancy::current() else {
            return 0;
        };
        self.inner
            .lock()
            .get(p.as_str())
            .map_or(0, |st| st.held.len())
    }
}

fn spawn_flusher(weak: Weak<Inner>) {
    let Ok(handle) = tokio::runtime::Handle::try_current() else {
        return;
    };
    handle.spawn(async move {
        loop {
            let interval = match weak.upgrade() {
                Some(i) => i.cfg.flush_interval,
                None => return,
            };
            tokio::time::sleep(interval).await;
            let Some(inner) = weak.upgrade() else {
                return;
            };
            if inner.stopped.load(Ordering::SeqCst) {
                return;
            }
            if let Err(e) = inner.sync_all(Mode::Flush, false).await {
                tracing::warn!(
                    code = e.code.as_str(),
                    "budget lease flush failed; retried at the next interval"
                );
            }
        }
    });
}

impl Inner {
    /// The in-memory part of [`LeasedBudget::settle`]: `None` when the reservation is not
    /// held here (already settled, expired, or its lease reaped), else (its lease is alive,
    /// the usage passed the reservation).
    fn settle_local(
        &self,
        project: &ProjectId,
        r: &Reservation,
        tokens: u64,
        micros: u64,
    ) -> Option<(bool, bool)> {
        let mut all = self.lock();
        let st = all.get_mut(project.as_str())?;
        let mut held = st.held.remove(&r.id)?;
        let actual = [tokens, micros];
        let mut alive = true;
        for (key, id) in &held.leases {
            match st.leases.get_mut(key) {
                Some(l) if l.lease_id == *id => {
                    for d in 0..2 {
                        l.out[d] = l.out[d].saturating_sub(held.amount[d]);
                        l.settled[d] = l.settled[d].saturating_add(actual[d]);
                    }
                }
                _ => alive = false,
            }
        }
        held.row.state = "settled";
        held.row.actual = [i64_of(tokens), i64_of(micros)];
        st.journal.push(held.row);
        Some((alive, tokens > held.amount[0] || micros > held.amount[1]))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, ProjectState>> {
        // A panic while holding the lock leaves counters that may be off: fail closed by
        // continuing with them (they only ever over-count what is held).
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn gate(&self, project: &ProjectId) -> Arc<tokio::sync::Mutex<()>> {
        self.lock()
            .entry(project.as_str().to_string())
            .or_default()
            .gate
            .clone()
    }

    /// Admit in memory when every scope's lease is current and has room.
    fn try_local(
        &self,
        project: &ProjectId,
        scopes: &[(String, ScopeLimit)],
        period: DateTime<Utc>,
        req: &ReserveRequest,
    ) -> Result<Option<Reservation>> {
        let now = Instant::now();
        let mut all = self.lock();
        let Some(st) = all.get_mut(project.as_str()) else {
            return Ok(None);
        };
        if let Some((reason, seen)) = &st.breaker
            && now.duration_since(*seen) < self.cfg.flush_interval * 4
        {
            return Err(breaker_error(reason));
        }
        let amount = [req.tokens, req.micros];
        for (scope, limit) in scopes {
            let Some(l) = st.leases.get(&(scope.clone(), period)) else {
                return Ok(None);
            };
            if l.limit != *limit
                || l.tripped
                || now >= l.deadline
                || l.free(0) < amount[0]
                || l.free(1) < amount[1]
            {
                return Ok(None);
            }
        }
        Ok(Some(self.admit(st, scopes, period, req, now)))
    }

    /// Take `req` out of the leases of `scopes` (checked by the caller).
    fn admit(
        &self,
        st: &mut ProjectState,
        scopes: &[(String, ScopeLimit)],
        period: DateTime<Utc>,
        req: &ReserveRequest,
        now: Instant,
    ) -> Reservation {
        let amount = [req.tokens, req.micros];
        let mut leases = Vec::with_capacity(scopes.len());
        for (scope, _) in scopes {
            let key = (scope.clone(), period);
            let l = st.leases.get_mut(&key).expect("checked by the caller");
            for d in 0..2 {
                l.out[d] = l.out[d].saturating_add(amount[d]);
                l.demand[d] = l.demand[d].saturating_add(amount[d]);
            }
            l.last_used = now;
            leases.push((key, l.lease_id));
        }
        let id = Uuid::now_v7();
        let created = Utc::now();
        let ttl = chrono::Duration::from_std(req.ttl).unwrap_or(chrono::Duration::MAX);
        let row = JournalRow {
            id,
            run_id: req.run_id,
            agent: req.agent.clone(),
            provider: req.provider.clone(),
            model: req.model.clone(),
            period,
            scopes: scopes
                .iter()
                .map(|(s, _)| s.as_str())
                .collect::<Vec<_>>()
                .join(","),
            tokens: i64_of(req.tokens),
            micros: i64_of(req.micros),
            state: "reserved",
            actual: [0; 2],
            created,
            expires: created.checked_add_signed(ttl).unwrap_or(created),
            lease_id: leases[0].1,
        };
        st.held.insert(
            id,
            Held {
                leases,
                amount,
                expires: now + req.ttl,
                row,
            },
        );
        Reservation {
            id,
            tokens: req.tokens,
            micros: req.micros,
            leased: true,
        }
    }

    async fn sync_all(self: &Arc<Self>, mode: Mode, wait: bool) -> Result<()> {
        let projects: Vec<String> = self
            .lock()
            .iter()
            .filter(|(_, st)| {
                !st.leases.is_empty() || !st.journal.is_empty() || !st.held.is_empty()
            })
            .map(|(p, _)| p.clone())
            .collect();
        let mut first_err = None;
        for p in projects {
            let project = ProjectId::parse(&p)?;
            let gate = self.gate(&project);
            // The periodic flush skips a project whose acquirer is busy: that acquisition
            // flushes it anyway.
            let gate = if wait {
                gate.lock_owned().await
            } else {
                match gate.try_lock_owned() {
                    Ok(g) => g,
                    Err(_) => continue,
                }
            };
            if let Err(e) = self.sync_detached(&project, gate, mode, None).await {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    /// [`Inner::sync`] in a task of its own, holding the project's gate (`gate`) until it ends.
    ///
    /// Why a task: `sync` takes the settled spend and the journal out of this process's
    /// memory before its transaction commits, and puts them back only when the transaction
    /// *fails*. A caller dropped at one of its awaits (a run's `timeout_seconds`, a cancelled
    /// or aborted run, shutdown) rolled the transaction back and lost both: spend that never
    /// reached the ledger, so the hard limit admitted more than it should, and settled
    /// reservations never journaled. In a task the sync always ends (committed, or rolled back
    /// with the local side put back). A reservation it admitted for a caller that went away
    /// is settled at zero at once (nothing was sent for it), not held until it expires and
    /// charged in full.
    async fn sync_detached(
        self: &Arc<Self>,
        project: &ProjectId,
        gate: tokio::sync::OwnedMutexGuard<()>,
        mode: Mode,
        need: Option<OwnedNeed>,
    ) -> Result<SyncOutcome> {
        let (answer, answered) = tokio::sync::oneshot::channel();
        let inner = self.clone();
        let p = project.clone();
        tenancy::spawn_in(project.clone(), async move {
            let out = {
                let need = need.as_ref().map(OwnedNeed::borrow);
                inner.sync(&p, mode, need.as_ref()).await
            };
            // The reservation of a caller that went away is settled before the gate opens: a
            // shutdown waiting for the gate would otherwise sync first, find the slice still
            // out to that reservation and keep it reserved in the ledger for good (seen under
            // load: model::budget_lease_acquisition_dropped_mid_flight_keeps_the_settled_spend
            // found 50,000 reserved after the shutdown).
            if let Err(Ok(SyncOutcome {
                reservation: Some(r),
                ..
            })) = answer.send(out)
            {
                inner.settle_local(&p, &r, 0, 0);
            }
            drop(gate);
        });
        let mut answered = Unanswered {
            rx: answered,
            inner: self.clone(),
            project: project.clone(),
        };
        (&mut answered.rx).await.unwrap_or_else(|_| {
            Err(Error::new(
                ErrorCode::Internal,
                "a budget lease sync task stopped before it answered",
            ))
        })
    }

    /// One tenant transaction over all of `project`'s leases (and the needed scopes): reap
    /// dead leases, flush settled spend, renew, answer recalls, top up or give back, lease for
    /// `need`, journal settled reservations, trip. The caller holds the project's gate.
    async fn sync(
        &self,
        project: &ProjectId,
        mode: Mode,
        need: Option<&Need<'_>>,
    ) -> Result<SyncOutcome> {
        let started = Instant::now();
        // Local expiry: a reservation past its ttl is charged in full (the plain path's sweep).
        let journal = {
            let mut all = self.lock();
            let st = all.entry(project.as_str().to_string()).or_default();
            let expired: Vec<Uuid> = st
                .held
                .iter()
                .filter(|(_, h)| h.expires <= started)
                .map(|(id, _)| *id)
                .collect();
            for id in expired {
                let mut h = st.held.remove(&id).expect("listed above");
                for (key, lid) in &h.leases {
                    if let Some(l) = st.leases.get_mut(key).filter(|l| l.lease_id == *lid) {
                        for d in 0..2 {
                            l.out[d] = l.out[d].saturating_sub(h.amount[d]);
                            l.settled[d] = l.settled[d].saturating_add(h.amount[d]);
                        }
                    }
                }
                h.row.state = "expired";
                h.row.actual = [h.row.tokens, h.row.micros];
                st.journal.push(h.row);
            }
            std::mem::take(&mut st.journal)
        };
        let mut plans: Vec<Plan> = Vec::new();
        let res = self
            .sync_tx(project, mode, need, &journal, &mut plans)
            .await;
        let mut all = self.lock();
        let st = all.entry(project.as_str().to_string()).or_default();
        match res {
            Ok(mut out) => {
                for p in &plans {
                    if p.lost {
                        // Reaped: charged in full by the reaper; its open reservations settle
                        // as "nothing to do".
                        st.leases.remove(&p.key);
                        continue;
                    }
                    let Some(l) = st.leases.get_mut(&p.key) else {
                        continue;
                    };
                    if p.end {
                        st.leases.remove(&p.key);
                        continue;
                    }
                    for d in 0..2 {
                        if p.delta[d] > 0 {
                            l.cap[d] = l.cap[d].saturating_add(p.delta[d] as u64);
                        }
                        l.last_demand[d] = l.demand[d];
                        l.demand[d] = 0;
                    }
                    l.in_db = true;
                    l.deadline = started + self.cfg.ttl.mul_f64(0.9);
                    l.tripped = p.tripped;
                    l.scarce = p.scarce;
                    l.limit = p.limit.clone();
                    l.acked = p.acked_at;
                }
                st.breaker = out.breaker.clone().map(|r| (r, Instant::now()));
                // The acquirer's reservation is admitted under the same lock that published
                // the slice, so no other caller can take it first.
                if let (Some(n), None, None) = (need, &out.refused, &out.breaker) {
                    let amount = [n.req.tokens, n.req.micros];
                    let fits = n.scopes.iter().all(|(s, _)| {
                        st.leases
                            .get(&(s.clone(), n.period))
                            .is_some_and(|l| l.free(0) >= amount[0] && l.free(1) >= amount[1])
                    });
                    if fits {
                        out.reservation =
                            Some(self.admit(st, n.scopes, n.period, n.req, Instant::now()));
                    }
                }
                Ok(out)
            }
            Err(e) => {
                // Nothing was committed: put the local side back.
                for p in &plans {
                    if let Some(l) = st
                        .leases
                        .get_mut(&p.key)
                        .filter(|l| l.lease_id == p.lease_id)
                    {
                        for d in 0..2 {
                            l.settled[d] = l.settled[d].saturating_add(p.settled[d]);
                            l.cap[d] = l.cap[d].saturating_add(p.used[d]);
                            if p.delta[d] < 0 {
                                l.cap[d] = l.cap[d].saturating_add((-p.delta[d]) as u64);
                            }
                        }
                    }
                }
                let mut j = journal;
                j.append(&mut st.journal);
                st.journal = j;
                Err(e)
            }
        }
    }

    async fn sync_tx(
        &self,
        project: &ProjectId,
        mode: Mode,
        need: Option<&Need<'_>>,
        journal: &[JournalRow],
        plans: &mut Vec<Plan>,
    ) -> Result<SyncOutcome> {
        let p = project.as_str();
        let mut out = SyncOutcome::default();
        let mut tx = self.db.tenant().await?;
        if let Some(tripped) = sweep(&mut tx, p).await? {
            audit_trips_in(&mut tx, &tripped, "expired reservations").await?;
        }
        let tripped = reap(&mut tx, p).await?;
        audit_trips_in(&mut tx, &tripped, "expired budget leases").await?;
        out.breaker = sqlx::query_scalar(
            "SELECT coalesce(reason, 'open') FROM model_breakers WHERE project_id = $1 AND breaker = 'project' AND open_until > now()",
        )
        .bind(p)
        .fetch_optional(&mut *tx)
        .await?;

        // Every key to visit: this process's leases and the needed scopes, in lock order
        // (period, then the project row first).
        let mut keys: Vec<Key> = self
            .lock()
            .get(p)
            .map(|st| st.leases.keys().cloned().collect())
            .unwrap_or_default();
        if let Some(n) = need {
            for (s, _) in n.scopes {
                let k = (s.clone(), n.period);
                if !keys.contains(&k) {
                    keys.push(k);
                }
            }
        }
        keys.sort_by(|a, b| (a.1, a.0 != "project", &a.0).cmp(&(b.1, b.0 != "project", &b.0)));
        let now_local = Instant::now();
        let mut refused: Option<Refusal> = None;
        let mut touched: Vec<Key> = Vec::new();

        for key in keys {
            let needed = need.and_then(|n| {
                (n.period == key.1)
                    .then(|| n.scopes.iter().find(|(s, _)| *s == key.0))
                    .flatten()
                    .map(|(_, l)| (n, l))
            });
            // After a refused scope the remaining needed scopes are not leased for nothing.
            let needed = if refused.is_some() { None } else { needed };
            if let Some((n, limit)) = needed {
                upsert_limits(&mut tx, p, &key.0, key.1, n.kind, limit).await?;
            }
            let row: Option<LedgerLock> =
                sqlx::query_as(
                    "SELECT token_limit, currency_limit_micros, spent_tokens, reserved_tokens, spent_micros, reserved_micros, \
                       tripped_at IS NOT NULL, lease_recall_at, coalesce(lease_recall_at > clock_timestamp() - make_interval(secs => $4), false) \
                     FROM budget_ledger WHERE project_id = $1 AND scope = $2 AND period_start = $3 FOR UPDATE",
                )
                .bind(p)
                .bind(&key.0)
                .bind(key.1)
                .bind(self.cfg.scarce_window.as_secs_f64())
                .fetch_optional(&mut *tx)
                .await?;
            let Some((
                t_limit,
                m_limit,
                spent_t,
                res_t,
                spent_m,
                res_m,
                is_tripped,
                recall_at,
                scarce,
            )) = row
            else {
                continue;
            };
            let limits = [
                Some(t_limit.max(0) as u64),
                m_limit.map(|m| m.max(0) as u64),
            ];
            let spent = [spent_t, spent_m];
            let reserved = [res_t, res_m];

            // Snapshot the local side and plan this key's change (under the process lock;
            // the parts being returned stop being admissible right here).
            let plan = {
                let mut all = self.lock();
                let st = all.entry(p.to_string()).or_default();
                let fresh_limit = needed.map(|(_, l)| l.clone());
                if !st.leases.contains_key(&key) {
                    match &fresh_limit {
                        Some(l) => {
                            st.leases
                                .insert(key.clone(), ScopeLease::new(l.clone(), now_local));
                        }
                        None => continue,
                    }
                }
                let l = st.leases.get_mut(&key).expect("inserted above");
                let settled = l.settled;
                l.settled = [0; 2];
                let mut used = [0u64; 2];
                for d in 0..2 {
                    used[d] = consumed(settled[d], l.cap[d], l.out[d]);
                    l.cap[d] -= used[d];
                }
                let idle = needed.is_none()
                    && now_local.duration_since(l.last_used) >= self.cfg.idle_return;
                let recalled = recall_at.is_some_and(|r| l.acked.is_none_or(|a| a < r));
                let give_back = mode == Mode::Shutdown || is_tripped || scarce || recalled || idle;
                let limit = fresh_limit.unwrap_or_else(|| l.limit.clone());
                let mut delta = [0i128; 2];
                let mut refuse_here = false;
                for d in 0..2 {
                    let free = l.free(d);
                    let left = remaining(limits[d], spent[d], reserved[d], settled[d], used[d]);
                    let available = (left + i128::from(free)).clamp(0, i128::from(u64::MAX)) as u64;
                    let target = if let Some((n, _)) = needed {
                        let amount = [n.req.tokens, n.req.micros][d];
                        let want = amount
                            .saturating_mul(self.cfg.min_slice)
                            .max(l.last_demand[d].saturating_mul(4));
                        if is_tripped {
                            refuse_here = true;
                            0
                        } else {
                            match slice(available, amount, want, self.cfg.share_divisor, scarce) {
                                Some(f) => f,
                                None => {
                                    refuse_here = true;
                                    if give_back { 0 } else { free.min(available) }
                                }
                            }
                        }
                    } else if give_back {
                        0
                    } else if free < l.last_demand[d].saturating_mul(2) {
                        // Top up ahead of demand, so callers rarely wait for an acquisition.
                        let want = l.last_demand[d].saturating_mul(4);
                        free.max(
                            slice(available, 0, want, self.cfg.share_divisor, false).unwrap_or(0),
                        )
                        .min(available)
                    } else {
                        free.min(available)
                    };
                    delta[d] = i128::from(target) - i128::from(free);
                    if delta[d] < 0 {
                        l.cap[d] -= (-delta[d]) as u64;
                    }
                }
                if refuse_here {
                    // A refused dimension takes nothing (the other one may still give back).
                    for d in 0..2 {
                        if delta[d] > 0 {
                            delta[d] = 0;
                        }
                    }
                }
                let end = mode != Mode::Acquire
                    && (idle || mode == Mode::Shutdown || is_tripped)
                    && l.out == [0; 2]
                    && l.cap == [0; 2];
                let plan = Plan {
                    key: key.clone(),
                    lease_id: l.lease_id,
                    settled,
                    used,
                    delta,
                    end,
                    lost: false,
                    ack: recalled,
                    acked_at: None,
                    tripped: is_tripped,
                    scarce,
                    limit,
                };
                let in_db = l.in_db;
                if refuse_here && refused.is_none() {
                    refused = Some(if is_tripped {
                        Refusal::Tripped(key.0.clone())
                    } else {
                        Refusal::Exceeded {
                            scope: key.0.clone(),
                            others_unacked: 0,
                            recall_at: None,
                        }
                    });
                }
                (plan, in_db)
            };
            let (mut plan, in_db) = plan;
            let lease_delta = [
                plan.delta[0] - i128::from(plan.used[0]),
                plan.delta[1] - i128::from(plan.used[1]),
            ];
            if !in_db {
                if lease_delta[0] > 0 || lease_delta[1] > 0 {
                    // Created under the row lock, after any recall was read: acknowledged.
                    plan.acked_at = sqlx::query_scalar(
                        "INSERT INTO budget_leases (project_id, lease_id, scope, period_start, holder, tokens, micros, expires_at, acked_at) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, clock_timestamp() + make_interval(secs => $8), clock_timestamp()) \
                         RETURNING acked_at",
                    )
                    .bind(p)
                    .bind(plan.lease_id)
                    .bind(&key.0)
                    .bind(key.1)
                    .bind(&self.holder)
                    .bind(clamp_i64(lease_delta[0]))
                    .bind(clamp_i64(lease_delta[1]))
                    .bind(self.cfg.ttl.as_secs_f64())
                    .fetch_one(&mut *tx)
                    .await?;
                } else {
                    // Nothing leased: no row, and no local lease either.
                    plan.end = true;
                    plans.push(plan);
                    continue;
                }
            } else {
                let row: Option<Option<DateTime<Utc>>> = sqlx::query_scalar(
                    "UPDATE budget_leases SET tokens = tokens + $3, micros = micros + $4, renewed_at = clock_timestamp(), \
                       expires_at = clock_timestamp() + make_interval(secs => $5), \
                       acked_at = CASE WHEN $6 THEN clock_timestamp() ELSE acked_at END, \
                       state = CASE WHEN $7 THEN 'returned' ELSE state END, \
                       ended_at = CASE WHEN $7 THEN clock_timestamp() ELSE ended_at END \
                     WHERE project_id = $1 AND lease_id = $2 AND state = 'active' RETURNING acked_at",
                )
                .bind(p)
                .bind(plan.lease_id)
                .bind(clamp_i64(lease_delta[0]))
                .bind(clamp_i64(lease_delta[1]))
                .bind(self.cfg.ttl.as_secs_f64())
                .bind(plan.ack)
                .bind(plan.end)
                .fetch_optional(&mut *tx)
                .await?;
                if let Some(acked) = row {
                    plan.acked_at = acked;
                } else {
                    plan.lost = true;
                    if needed.is_some() && refused.is_none() {
                        refused = Some(Refusal::Lost);
                    }
                    plans.push(plan);
                    continue;
                }
            }
            let ledger_delta = [
                plan.delta[0] - i128::from(plan.used[0]),
                plan.delta[1] - i128::from(plan.used[1]),
            ];
            if plan.settled != [0; 2] || ledger_delta != [0; 2] {
                // The conditional is the cap itself, checked again by PostgreSQL: a grant
                // (delta > 0) only applies while spend + everything reserved fits the limit.
                let ok = sqlx::query(
                    "UPDATE budget_ledger SET spent_tokens = spent_tokens + $4, reserved_tokens = reserved_tokens + $5, \
                       spent_micros = spent_micros + $6, reserved_micros = reserved_micros + $7, updated_at = now() \
                     WHERE project_id = $1 AND scope = $2 AND period_start = $3 \
                       AND ($8 <= 0 OR spent_tokens + $4 + reserved_tokens + $5 <= token_limit) \
                       AND ($9 <= 0 OR currency_limit_micros IS NULL OR spent_micros + $6 + reserved_micros + $7 <= currency_limit_micros)",
                )
                .bind(p)
                .bind(&key.0)
                .bind(key.1)
                .bind(i64_of(plan.settled[0]))
                .bind(clamp_i64(ledger_delta[0]))
                .bind(i64_of(plan.settled[1]))
                .bind(clamp_i64(ledger_delta[1]))
                .bind(clamp_i64(plan.delta[0]))
                .bind(clamp_i64(plan.delta[1]))
                .execute(&mut *tx)
                .await?
                .rows_affected();
                if ok != 1 {
                    return Err(Error::new(
                        ErrorCode::Internal,
                        "failed to update a budget lease: the ledger refused the planned slice",
                    ));
                }
                touched.push(key.clone());
            }
            plans.push(plan);
        }

        // A refusal while others hold leases: recall their unused parts (or count who has
        // not answered the recall yet).
        if let (
            Some(Refusal::Exceeded {
                scope,
                others_unacked,
                recall_at,
            }),
            Some(n),
        ) = (&mut refused, need)
        {
            let mine = plans
                .iter()
                .find(|pl| pl.key.0 == *scope && pl.key.1 == n.period)
                .map(|pl| pl.lease_id);
            let since = n.recall;
            *others_unacked = sqlx::query_scalar(
                "SELECT count(*) FROM budget_leases WHERE project_id = $1 AND scope = $2 AND period_start = $3 \
                   AND state = 'active' AND lease_id IS DISTINCT FROM $4 AND tokens + micros > 0 AND expires_at > clock_timestamp() \
                   AND ($5::timestamptz IS NULL OR acked_at IS NULL OR acked_at < $5)",
            )
            .bind(p)
            .bind(&*scope)
            .bind(n.period)
            .bind(mine)
            .bind(since)
            .fetch_one(&mut *tx)
            .await?;
            if since.is_none() && *others_unacked > 0 {
                *recall_at = sqlx::query_scalar(
                    "UPDATE budget_ledger SET lease_recall_at = clock_timestamp() \
                     WHERE project_id = $1 AND scope = $2 AND period_start = $3 RETURNING lease_recall_at",
                )
                .bind(p)
                .bind(&*scope)
                .bind(n.period)
                .fetch_optional(&mut *tx)
                .await?;
            }
        }

        // Trips (spend reached a hard limit), per period.
        let mut periods: Vec<DateTime<Utc>> = touched.iter().map(|k| k.1).collect();
        periods.sort();
        periods.dedup();
        for period in periods {
            let mut scopes: Vec<String> = touched
                .iter()
                .filter(|k| k.1 == period)
                .map(|k| k.0.clone())
                .collect();
            sort_scopes(&mut scopes);
            let t = trip(&mut tx, p, period, &scopes).await?;
            audit_trips_in(&mut tx, &t, "settlement").await?;
            // This process stops admitting in the tripped leases at once; other processes
            // see the trip at their next flush.
            for pl in plans
                .iter_mut()
                .filter(|pl| pl.key.1 == period && t.contains(&pl.key.0))
            {
                pl.tripped = true;
            }
        }
        write_journal(&mut tx, p, journal).await?;
        tx.commit().await?;
        out.refused = refused;
        Ok(out)
    }
}

/// Charge the project's expired leases in full and end them. Locks each period's project
/// ledger row first (the lock order of every ledger transaction). Returns tripped scopes.
async fn reap(conn: &mut PgConnection, project: &str) -> Result<Vec<String>> {
    let expired: Vec<(Uuid, String, DateTime<Utc>)> = sqlx::query_as(
        "SELECT lease_id, scope, period_start FROM budget_leases \
         WHERE project_id = $1 AND state = 'active' AND expires_at < clock_timestamp()",
    )
    .bind(project)
    .fetch_all(&mut *conn)
    .await?;
    if expired.is_empty() {
        return Ok(Vec::new());
    }
    let mut by_period: std::collections::BTreeMap<DateTime<Utc>, Vec<(String, Uuid)>> =
        Default::default();
    for (id, scope, period) in expired {
        by_period.entry(period).or_default().push((scope, id));
    }
    let mut tripped = Vec::new();
    for (period, mut leases) in by_period {
        leases.sort_by(|a, b| (a.0 != "project", &a.0).cmp(&(b.0 != "project", &b.0)));
        sqlx::query(
            "SELECT 1 FROM budget_ledger WHERE project_id = $1 AND scope = 'project' AND period_start = $2 FOR UPDATE",
        )
        .bind(project)
        .bind(period)
        .execute(&mut *conn)
        .await?;
        let mut scopes = Vec::new();
        for (scope, id) in leases {
            // Checked again under the lock: a renewal may have won the race.
            let held: Option<(i64, i64)> = sqlx::query_as(
                "UPDATE budget_leases SET state = 'expired', ended_at = clock_timestamp() \
                 WHERE project_id = $1 AND lease_id = $2 AND state = 'active' AND expires_at < clock_timestamp() \
                 RETURNING tokens, micros",
            )
            .bind(project)
            .bind(id)
            .fetch_optional(&mut *conn)
            .await?;
            if let Some((t, m)) = held {
                apply(conn, project, &scope, period, [t, t, m, m]).await?;
                scopes.push(scope);
            }
        }
        tripped.extend(trip(conn, project, period, &scopes).await?);
    }
    Ok(tripped)
}

/// The settled (or expired) reservations of leases, one statement per batch.
async fn write_journal(conn: &mut PgConnection, project: &str, rows: &[JournalRow]) -> Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    let col = |f: fn(&JournalRow) -> String| rows.iter().map(f).collect::<Vec<_>>();
    sqlx::query(
        "INSERT INTO budget_reservations (project_id, reservation_id, run_id, agent, provider, model, period_start, scopes, \
           tokens, micros, state, actual_tokens, actual_micros, created_at, expires_at, settled_at, lease_id) \
         SELECT $1, r.id, r.run_id, r.agent, r.provider, r.model, r.period, string_to_array(r.scopes, ','), \
           r.tokens, r.micros, r.state, r.at, r.am, r.created, r.expires, now(), r.lease \
         FROM unnest($2::uuid[], $3::uuid[], $4::text[], $5::text[], $6::text[], $7::timestamptz[], $8::text[], \
           $9::int8[], $10::int8[], $11::text[], $12::int8[], $13::int8[], $14::timestamptz[], $15::timestamptz[], $16::uuid[]) \
           AS r(id, run_id, agent, provider, model, period, scopes, tokens, micros, state, at, am, created, expires, lease)",
    )
    .bind(project)
    .bind(rows.iter().map(|r| r.id).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.run_id).collect::<Vec<_>>())
    .bind(col(|r| r.agent.clone()))
    .bind(col(|r| r.provider.clone()))
    .bind(col(|r| r.model.clone()))
    .bind(rows.iter().map(|r| r.period).collect::<Vec<_>>())
    .bind(col(|r| r.scopes.clone()))
    .bind(rows.iter().map(|r| r.tokens).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.micros).collect::<Vec<_>>())
    .bind(col(|r| r.state.to_string()))
    .bind(rows.iter().map(|r| r.actual[0]).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.actual[1]).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.created).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.expires).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.lease_id).collect::<Vec<_>>())
    .execute(&mut *conn)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slices_are_bounded_by_the_share_and_exact_when_scarce() {
        // (available, need, want, divisor, scarce, expected)
        for (a, n, w, div, sc, want) in [
            (1_000, 10, 80, 4, false, Some(80)), // the demand's slice fits a quarter
            (100, 10, 80, 4, false, Some(25)),   // at most a quarter of what is left…
            (30, 10, 80, 4, false, Some(10)),    // …but never less than the need
            (10, 10, 80, 4, false, Some(10)),    // the last units go to who needs them
            (9, 10, 80, 4, false, None),         // truly insufficient: refuse
            (1_000, 10, 80, 4, true, Some(10)),  // scarce: exact size, nothing parked
            (0, 0, 0, 4, false, Some(0)),        // a zero-cost call needs nothing
            (u64::MAX, 1, u64::MAX, 0, false, Some(u64::MAX)), // divisor 0 treated as 1
        ] {
            assert_eq!(slice(a, n, w, div, sc), want, "{a} {n} {w} {div} {sc}");
        }
    }

    #[test]
    fn settled_spend_uses_up_only_the_unbacked_part_of_a_lease() {
        // (settled, cap, out, used)
        for (s, c, o, u) in [
            (40, 100, 50, 40), // usage within the reservations
            (60, 100, 50, 50), // usage above the reservation: 10 beyond the lease
            (0, 100, 100, 0),
            (10, 0, 0, 0), // the lease is gone
        ] {
            assert_eq!(consumed(s, c, o), u, "{s} {c} {o}");
        }
    }

    #[test]
    fn remaining_counts_the_spend_being_flushed_once() {
        // limit 1000, spent 100, reserved 500 of which 300 is this lease; 200 settled of
        // which 200 came out of the lease: left = 1000 - 300 - 300 = 400.
        assert_eq!(remaining(Some(1_000), 100, 500, 200, 200), 400);
        // A lowered limit leaves a negative remainder (returns are then forced).
        assert_eq!(remaining(Some(100), 100, 500, 0, 0), -500);
        assert_eq!(remaining(None, 100, 500, 0, 0), i128::from(i64::MAX));
    }
}
