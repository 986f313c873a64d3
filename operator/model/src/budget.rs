//! The token/currency budget ledger: pre-flight reservation, settlement and the project
//! breaker. PostgreSQL is the authority (migrations/0006_model_budget.sql).
//!
//! * **Reserve**: one tenant transaction sweeps the project's expired reservations, upserts
//!   the period's ledger rows with the current limits, then, scope by scope in a fixed order
//!   (project, then agent), runs a conditional `UPDATE … WHERE spent + reserved + want <=
//!   limit AND tripped_at IS NULL`. Concurrent reservations serialise on the row lock, so the
//!   admitted worst cases never add up past a limit. A refused scope rolls everything back:
//!   `E-BUDGET-001` (or `E-BUDGET-003` when the breaker is open).
//! * **Settle**: the reservation row flips from `reserved` to `settled` (once: a second
//!   settlement or one after the sweeper finds nothing to do) and the ledger trades the
//!   reservation for the actual usage. When spend reaches a hard limit the row's `tripped_at`
//!   is set and audited: every later reservation of that period is refused until the period
//!   rolls over or the limit is raised (the upsert clears the trip when the new limit is above
//!   the spend).
//! * **Expiry**: every reservation has an `expires_at`; the sweep (run at every reservation of
//!   the project, and by [`Budget::sweep_expired`]) charges an expired reservation in full
//!   (fail closed: the provider may have billed it) and frees it. A dropped call future
//!   settles through [`ReservationGuard`]'s `Drop` at the usage counted so far.
//! * **Leases** ([`lease`], opt-in with [`Budget::with_leases`]): a process leases a slice of
//!   a row's remaining budget and reserves within it in memory, so most reservations never
//!   touch the hot ledger row; the cap stays in PostgreSQL (a lease is part of `reserved`).

pub mod lease;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use chrono::{DateTime, Datelike, TimeZone, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sqlx::PgConnection;
use uuid::Uuid;

use super::policy::{BudgetPolicy, ScopeLimit};
use awooop_contracts::BudgetPeriod;
use awooop_core::error::{Error, ErrorCode, Result};
use awooop_store::audit::{self, Entry};
use awooop_store::tenancy::{self, Db, ProjectId};

/// Start of the budget period containing `now` (UTC boundaries).
pub fn period_start(period: BudgetPeriod, now: DateTime<Utc>) -> DateTime<Utc> {
    let d = now.date_naive();
    let day = match period {
        BudgetPeriod::Day => d,
        BudgetPeriod::Month => d.with_day(1).expect("day 1 exists"),
    };
    Utc.from_utc_datetime(&day.and_hms_opt(0, 0, 0).expect("midnight exists"))
}

/// Cost in micro-units for a token count at a per-million price, rounded up (a budget never
/// under-counts).
pub fn cost_micros(tokens: u64, micros_per_mtok: u64) -> u64 {
    let p = u128::from(tokens) * u128::from(micros_per_mtok);
    p.div_ceil(1_000_000).min(u128::from(u64::MAX)) as u64
}

/// Whether a reservation of `want` fits: the check the SQL performs, stated once in Rust for
/// tests and docs.
pub fn admits(spent: u64, reserved: u64, want: u64, limit: u64) -> bool {
    spent
        .checked_add(reserved)
        .and_then(|x| x.checked_add(want))
        .is_some_and(|total| total <= limit)
}

pub fn agent_scope(agent: &str) -> String {
    format!("agent:{agent}")
}

/// What a call wants to reserve.
#[derive(Debug, Clone)]
pub struct ReserveRequest {
    pub run_id: Option<Uuid>,
    pub agent: String,
    pub provider: String,
    pub model: String,
    pub tokens: u64,
    pub micros: u64,
    /// How long the reservation lives before the sweep charges and frees it.
    pub ttl: Duration,
}

/// An admitted reservation.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Reservation {
    pub id: Uuid,
    pub tokens: u64,
    pub micros: u64,
    /// Admitted inside a budget lease of this process (settled in memory, journalled at the
    /// lease's next flush) rather than by its own ledger transaction.
    #[serde(default)]
    pub leased: bool,
}

/// One ledger row, for tests, the bench and operators.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct LedgerRow {
    pub scope: String,
    pub token_limit: i64,
    pub reserved_tokens: i64,
    pub spent_tokens: i64,
    pub reserved_micros: i64,
    pub spent_micros: i64,
    pub tripped: bool,
}

/// Handle on the ledger. Cloning is cheap.
#[derive(Clone, Debug)]
pub struct Budget {
    db: Db,
    leases: Option<lease::LeasedBudget>,
}

impl Budget {
    pub fn new(db: Db) -> Self {
        Self { db, leases: None }
    }

    /// Reservations through budget leases of this process (docs/model.md, "Budget leases").
    /// Needs a Tokio runtime (the lease flusher is a task).
    pub fn with_leases(db: Db, config: lease::LeaseConfig) -> Self {
        let leases = lease::LeasedBudget::new(db.clone(), config);
        Self {
            db,
            leases: Some(leases),
        }
    }

    pub fn leases(&self) -> Option<&lease::LeasedBudget> {
        self.leases.as_ref()
    }

    /// Flush settled spend and give every lease's unused part back (graceful shutdown).
    pub async fn shutdown(&self) -> Result<()> {
        match &self.leases {
            Some(l) => l.shutdown().await,
            None => Ok(()),
        }
    }

    pub fn db(&self) -> &Db {
        &self.db
    }

    /// Reserve the worst case of one call in the current tenant.
    pub async fn reserve(
        &self,
        limits: &BudgetPolicy,
        req: &ReserveRequest,
    ) -> Result<Reservation> {
        if let Some(l) = &self.leases {
            return l.reserve(limits, req).await;
        }
        let project = tenancy::require()?;
        // In a task of its own: a caller dropped while the reservation's `COMMIT` is in flight
        // (a run's timeout, a cancelled run) cannot know whether it landed, and one that did
        // would be held by nobody until it expired and then charged in full. The task sees
        // that its answer has no taker and releases what it reserved at zero: the call it was
        // for never reached the provider.
        let (answer, answered) = tokio::sync::oneshot::channel();
        let (this, limits, req) = (self.clone(), limits.clone(), req.clone());
        tenancy::spawn_in(project.clone(), async move {
            if answer.is_closed() {
                return;
            }
            let out = this.reserve_in_ledger(&project, &limits, &req).await;
            if let Err(Ok(r)) = answer.send(out)
                && let Err(e) = this.settle(&r, 0, 0).await
            {
                tracing::warn!(
                    code = e.code.as_str(),
                    "a reservation whose caller went away was not released; it expires"
                );
            }
        });
        answered.await.unwrap_or_else(|_| {
            Err(Error::new(
                ErrorCode::Internal,
                "a budget reservation task stopped before it answered",
            ))
        })
    }

    /// [`Self::reserve`] on the ledger (no lease), in `project`'s tenant scope.
    async fn reserve_in_ledger(
        &self,
        project: &ProjectId,
        limits: &BudgetPolicy,
        req: &ReserveRequest,
    ) -> Result<Reservation> {
        let period = period_start(limits.period, Utc::now());
        let mut scopes = vec![("project".to_string(), &limits.project)];
        if let Some(a) = &limits.agent {
            scopes.push((agent_scope(&req.agent), a));
        }
        let mut tx = self.db.tenant().await?;
        // Expired reservations are freed first, in their own commit when there are any, so a
        // refused reservation (rolled back below) never undoes the sweep.
        let tripped = sweep(&mut tx, project.as_str()).await?;
        if let Some(tripped) = tripped {
            audit_trips_in(&mut tx, &tripped, "expired reservations").await?;
            tx.commit().await?;
            tx = self.db.tenant().await?;
        }
        let breaker_open: Option<String> = sqlx::query_scalar(
            "SELECT coalesce(reason, 'open') FROM model_breakers WHERE project_id = $1 AND breaker = 'project' AND open_until > now()",
        )
        .bind(project.as_str())
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(reason) = breaker_open {
            tx.commit().await?;
            return Err(Error::new(
                ErrorCode::BudgetBreakerOpen,
                "the project's model breaker is open",
            )
            .with_details(json!({"reason": reason})));
        }
        // Fixed order (project, then agent): every transaction locks the project row first.
        for (scope, limit) in &scopes {
            // Fast path: the row exists with these limits and the worst case fits.
            if reserve_row(&mut tx, project.as_str(), scope, period, req, Some(limit)).await? {
                continue;
            }
            // New period, changed limits, tripped or full: bring the row up to date (raising a
            // limit above the spend clears the trip), then try once more.
            upsert_limits(
                &mut tx,
                project.as_str(),
                scope,
                period,
                limits.period,
                limit,
            )
            .await?;
            if reserve_row(&mut tx, project.as_str(), scope, period, req, None).await? {
                continue;
            }
            let is_tripped: bool = sqlx::query_scalar(
                "SELECT tripped_at IS NOT NULL FROM budget_ledger WHERE project_id = $1 AND scope = $2 AND period_start = $3",
            )
            .bind(project.as_str())
            .bind(scope)
            .bind(period)
            .fetch_one(&mut *tx)
            .await?;
            tx.rollback().await?;
            let (code, msg) = if is_tripped {
                (
                    ErrorCode::BudgetBreakerOpen,
                    "the period's hard limit was reached: model calls are blocked",
                )
            } else {
                (
                    ErrorCode::BudgetExceeded,
                    "the call's worst case would exceed the budget",
                )
            };
            return Err(Error::new(code, msg).with_details(json!({
                "scope": scope, "wanted_tokens": req.tokens, "wanted_micros": req.micros
            })));
        }
        let id = Uuid::now_v7();
        let scope_names: Vec<&str> = scopes.iter().map(|(s, _)| s.as_str()).collect();
        sqlx::query(
            "INSERT INTO budget_reservations (project_id, reservation_id, run_id, agent, provider, model, period_start, scopes, tokens, micros, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, now() + make_interval(secs => $11))",
        )
        .bind(project.as_str())
        .bind(id)
        .bind(req.run_id)
        .bind(&req.agent)
        .bind(&req.provider)
        .bind(&req.model)
        .bind(period)
        .bind(&scope_names)
        .bind(i64_of(req.tokens))
        .bind(i64_of(req.micros))
        .bind(req.ttl.as_secs_f64())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Reservation {
            id,
            tokens: req.tokens,
            micros: req.micros,
            leased: false,
        })
    }

    /// Replace a reservation by the actual usage. Returns false when the reservation was
    /// already settled or expired (nothing changed). Usage above the reservation is recorded
    /// as it is (the ledger never lies), which is the "overshoot" the bench reports.
    pub async fn settle(&self, r: &Reservation, tokens: u64, micros: u64) -> Result<bool> {
        if r.leased {
            return match &self.leases {
                Some(l) => l.settle(r, tokens, micros).await,
                // Only a leased handle mints leased reservations.
                None => Err(Error::new(
                    ErrorCode::Internal,
                    "a leased reservation was settled through a handle without leases",
                )),
            };
        }
        let project = tenancy::require()?;
        let mut tx = self.db.tenant().await?;
        let row: Option<(Vec<String>, DateTime<Utc>, i64, i64)> = sqlx::query_as(
            "UPDATE budget_reservations SET state = 'settled', actual_tokens = $3, actual_micros = $4, settled_at = now() \
             WHERE project_id = $1 AND reservation_id = $2 AND state = 'reserved' \
             RETURNING scopes, period_start, tokens, micros",
        )
        .bind(project.as_str())
        .bind(r.id)
        .bind(i64_of(tokens))
        .bind(i64_of(micros))
        .fetch_optional(&mut *tx)
        .await?;
        let Some((mut scopes, period, held_t, held_m)) = row else {
            tx.commit().await?;
            return Ok(false);
        };
        sort_scopes(&mut scopes);
        for scope in &scopes {
            apply(
                &mut tx,
                project.as_str(),
                scope,
                period,
                [held_t, i64_of(tokens), held_m, i64_of(micros)],
            )
            .await?;
        }
        let tripped = trip(&mut tx, project.as_str(), period, &scopes).await?;
        audit_trips_in(&mut tx, &tripped, "settlement").await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Charge and free the current project's expired reservations. Returns how many.
    pub async fn sweep_expired(&self) -> Result<u64> {
        let project = tenancy::require()?;
        let mut tx = self.db.tenant().await?;
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM budget_reservations WHERE project_id = $1 AND state = 'reserved' AND expires_at < now()",
        )
        .bind(project.as_str())
        .fetch_one(&mut *tx)
        .await?;
        if let Some(tripped) = sweep(&mut tx, project.as_str()).await? {
            audit_trips_in(&mut tx, &tripped, "expired reservations").await?;
        }
        tx.commit().await?;
        Ok(n as u64)
    }

    /// The current period's ledger rows of the current project.
    pub async fn ledger(&self, period: BudgetPeriod) -> Result<Vec<LedgerRow>> {
        let project = tenancy::require()?;
        let mut tx = self.db.tenant().await?;
        let rows = sqlx::query_as::<_, LedgerRow>(
            "SELECT scope, token_limit, reserved_tokens, spent_tokens, reserved_micros, spent_micros, tripped_at IS NOT NULL AS tripped \
             FROM budget_ledger WHERE project_id = $1 AND period_start = $2 ORDER BY scope",
        )
        .bind(project.as_str())
        .bind(period_start(period, Utc::now()))
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(rows)
    }

    /// Reservations of the current project still held.
    pub async fn open_reservations(&self) -> Result<i64> {
        let project = tenancy::require()?;
        let mut tx = self.db.tenant().await?;
        let n = sqlx::query_scalar(
            "SELECT count(*) FROM budget_reservations WHERE project_id = $1 AND state = 'reserved'",
        )
        .bind(project.as_str())
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(n)
    }
}

fn trip_entry<'a>(scope: &str, cause: &str) -> Entry<'a> {
    Entry::denied(
        "model",
        "budget.breaker.trip",
        scope.to_string(),
        ErrorCode::BudgetBreakerOpen.as_str(),
        json!({"scope": scope, "cause": cause}),
    )
}

async fn audit_trips_in(conn: &mut PgConnection, tripped: &[String], cause: &str) -> Result<()> {
    for scope in tripped {
        audit::record(conn, trip_entry(scope, cause)).await?;
    }
    Ok(())
}

fn i64_of(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Bring a ledger row up to date with the contract's limits (creating it for a new period);
/// raising a limit above the spend clears the trip.
async fn upsert_limits(
    conn: &mut PgConnection,
    project: &str,
    scope: &str,
    period: DateTime<Utc>,
    kind: BudgetPeriod,
    limit: &ScopeLimit,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO budget_ledger (project_id, scope, period_start, period, token_limit, currency_limit_micros) \
         VALUES ($1, $2, $3, $4, $5, $6) \
         ON CONFLICT (project_id, scope, period_start) DO UPDATE SET \
           token_limit = EXCLUDED.token_limit, currency_limit_micros = EXCLUDED.currency_limit_micros, \
           tripped_at = CASE WHEN EXCLUDED.token_limit > budget_ledger.spent_tokens \
                AND (EXCLUDED.currency_limit_micros IS NULL OR EXCLUDED.currency_limit_micros > budget_ledger.spent_micros) \
                THEN NULL ELSE budget_ledger.tripped_at END, \
           updated_at = now() \
         WHERE budget_ledger.token_limit IS DISTINCT FROM EXCLUDED.token_limit \
            OR budget_ledger.currency_limit_micros IS DISTINCT FROM EXCLUDED.currency_limit_micros",
    )
    .bind(project)
    .bind(scope)
    .bind(period)
    .bind(match kind {
        BudgetPeriod::Day => "day",
        BudgetPeriod::Month => "month",
    })
    .bind(i64_of(limit.token_limit))
    .bind(limit.currency_limit_micros.map(i64_of))
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Lock order of ledger rows: `project` first, then agent scopes by name. Every transaction
/// that touches ledger rows touches the project row first, so they serialise on it and
/// cannot deadlock on the agent rows.
fn sort_scopes(scopes: &mut [String]) {
    scopes.sort_by(|a, b| (a != "project", a).cmp(&(b != "project", b)));
}

/// Trade `held` reserved tokens/micros of one row for `spent` ones:
/// `[reserved_tokens, spent_tokens, reserved_micros, spent_micros]`.
async fn apply(
    conn: &mut PgConnection,
    project: &str,
    scope: &str,
    period: DateTime<Utc>,
    [held_t, spent_t, held_m, spent_m]: [i64; 4],
) -> Result<()> {
    sqlx::query(
        "UPDATE budget_ledger SET reserved_tokens = reserved_tokens - $4, spent_tokens = spent_tokens + $5, \
           reserved_micros = reserved_micros - $6, spent_micros = spent_micros + $7, updated_at = now() \
         WHERE project_id = $1 AND scope = $2 AND period_start = $3",
    )
    .bind(project)
    .bind(scope)
    .bind(period)
    .bind(held_t)
    .bind(spent_t)
    .bind(held_m)
    .bind(spent_m)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Charge expired reservations in full and free them. `None`: there were none; else the
/// newly tripped scopes.
async fn sweep(conn: &mut PgConnection, project: &str) -> Result<Option<Vec<String>>> {
    let expired: Vec<(Vec<String>, DateTime<Utc>, i64, i64)> = sqlx::query_as(
        "UPDATE budget_reservations SET state = 'expired', actual_tokens = tokens, actual_micros = micros, settled_at = now() \
         WHERE project_id = $1 AND state = 'reserved' AND expires_at < now() \
         RETURNING scopes, period_start, tokens, micros",
    )
    .bind(project)
    .fetch_all(&mut *conn)
    .await?;
    if expired.is_empty() {
        return Ok(None);
    }
    let mut sums: std::collections::BTreeMap<(DateTime<Utc>, String), (i64, i64)> =
        Default::default();
    for (scopes, period, t, m) in expired {
        for sc in scopes {
            let e = sums.entry((period, sc)).or_default();
            e.0 += t;
            e.1 += m;
        }
    }
    let mut tripped = Vec::new();
    let periods: std::collections::BTreeSet<DateTime<Utc>> = sums.keys().map(|k| k.0).collect();
    for period in periods {
        let mut scopes: Vec<String> = sums
            .keys()
            .filter(|k| k.0 == period)
            .map(|k| k.1.clone())
            .collect();
        sort_scopes(&mut scopes);
        for sc in &scopes {
            let (t, m) = sums[&(period, sc.clone())];
            apply(conn, project, sc, period, [t, t, m, m]).await?;
        }
        tripped.extend(trip(conn, project, period, &scopes).await?);
    }
    Ok(Some(tripped))
}

/// The conditional reservation of one ledger row. With `expect`, it only applies when the row
/// already carries exactly these limits (the fast path).
async fn reserve_row(
    conn: &mut PgConnection,
    project: &str,
    scope: &str,
    period: DateTime<Utc>,
    req: &ReserveRequest,
    expect: Option<&ScopeLimit>,
) -> Result<bool> {
    Ok(sqlx::query(
        "UPDATE budget_ledger SET reserved_tokens = reserved_tokens + $4, reserved_micros = reserved_micros + $5, updated_at = now() \
         WHERE project_id = $1 AND scope = $2 AND period_start = $3 AND tripped_at IS NULL \
           AND spent_tokens + reserved_tokens + $4 <= token_limit \
           AND (currency_limit_micros IS NULL OR spent_micros + reserved_micros + $5 <= currency_limit_micros) \
           AND ($6 OR (token_limit = $7 AND currency_limit_micros IS NOT DISTINCT FROM $8))",
    )
    .bind(project)
    .bind(scope)
    .bind(period)
    .bind(i64_of(req.tokens))
    .bind(i64_of(req.micros))
    .bind(expect.is_none())
    .bind(expect.map_or(0, |l| i64_of(l.token_limit)))
    .bind(expect.and_then(|l| l.currency_limit_micros).map(i64_of))
    .execute(&mut *conn)
    .await?
    .rows_affected()
        == 1)
}

/// Trip the given rows whose spend reached their hard limit; returns their scopes.
async fn trip(
    conn: &mut PgConnection,
    project: &str,
    period: DateTime<Utc>,
    scopes: &[String],
) -> Result<Vec<String>> {
    Ok(sqlx::query_scalar(
        "UPDATE budget_ledger SET tripped_at = now() \
         WHERE project_id = $1 AND period_start = $2 AND scope = ANY($3) AND tripped_at IS NULL \
           AND (spent_tokens >= token_limit OR (currency_limit_micros IS NOT NULL AND spent_micros >= currency_limit_micros)) \
         RETURNING scope",
    )
    .bind(project)
    .bind(period)
    .bind(scopes)
    .fetch_all(&mut *conn)
    .await?)
}

/// A reservation being used by one call. Tracks the usage counted so far; settles explicitly
/// through [`ReservationGuard::settle`], or, when the call future is dropped (cancelled,
/// killed mid-stream), settles at the counted usage from its `Drop` on a spawned task, so no
/// reservation outlives its call (the sweep is the backstop if the process dies).
pub struct ReservationGuard {
    budget: Budget,
    project: ProjectId,
    pub reservation: Reservation,
    /// Tokens counted so far (prompt bound once the request is sent, plus streamed output).
    pub consumed_tokens: Arc<AtomicU64>,
    /// Micro-units counted so far.
    pub consumed_micros: Arc<AtomicU64>,
    settled: AtomicBool,
}

impl ReservationGuard {
    pub fn new(budget: Budget, project: ProjectId, reservation: Reservation) -> Self {
        Self {
            budget,
            project,
            reservation,
            consumed_tokens: Arc::default(),
            consumed_micros: Arc::default(),
            settled: AtomicBool::new(false),
        }
    }

    pub async fn settle(&self, tokens: u64, micros: u64) -> Result<bool> {
        self.settled.store(true, Ordering::SeqCst);
        // In a task of its own: from here on `Drop` leaves the reservation to this settlement,
        // so a caller dropped while it is in flight (a run's timeout, a cancelled or aborted
        // run) must not take it along; the reservation would stay held until it expired and
        // then be charged in full (and could trip the breaker).
        let (budget, r) = (self.budget.clone(), self.reservation.clone());
        tenancy::spawn_in(self.project.clone(), async move {
            budget.settle(&r, tokens, micros).await
        })
        .await
        .unwrap_or_else(|_| {
            Err(Error::new(
                ErrorCode::Internal,
                "a budget settlement task stopped before it answered",
            ))
        })
    }

    /// Settle at what was counted so far.
    pub async fn settle_counted(&self) -> Result<bool> {
        let t = self.consumed_tokens.load(Ordering::SeqCst);
        let m = self.consumed_micros.load(Ordering::SeqCst);
        self.settle(t, m).await
    }
}

impl Drop for ReservationGuard {
    fn drop(&mut self) {
        if self.settled.load(Ordering::SeqCst) {
            return;
        }
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let budget = self.budget.clone();
        let r = self.reservation.clone();
        let t = self.consumed_tokens.load(Ordering::SeqCst);
        let m = self.consumed_micros.load(Ordering::SeqCst);
        let project = self.project.clone();
        handle.spawn(tenancy::scope(project, async move {
            if let Err(e) = budget.settle(&r, t, m).await {
                tracing::warn!(code = e.code.as_str(), reservation = %r.id, "settling a dropped call failed; the sweep will free it");
            }
        }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periods_start_at_utc_boundaries() {
        let t = Utc.with_ymd_and_hms(2026, 11, 25, 13, 45, 10).unwrap();
        assert_eq!(
            period_start(BudgetPeriod::Day, t),
            Utc.with_ymd_and_hms(2026, 11, 25, 0, 0, 0).unwrap()
        );
        assert_eq!(
            period_start(BudgetPeriod::Month, t),
            Utc.with_ymd_and_hms(2026, 11, 1, 0, 0, 0).unwrap()
        );
        let first = Utc.with_ymd_and_hms(2026, 12, 1, 0, 0, 0).unwrap();
        assert_eq!(period_start(BudgetPeriod::Month, first), first);
    }

    #[test]
    fn ledger_rows_lock_project_first() {
        let mut s: Vec<String> = ["agent:zed", "project", "agent:abe"]
            .map(String::from)
            .to_vec();
        sort_scopes(&mut s);
        assert_eq!(s, ["project", "agent:abe", "agent:zed"]);
    }

    #[test]
    fn arithmetic() {
        // (tokens, price per Mtok, expected micros): rounded up, never down.
        for (t, p, want) in [
            (0, 3_000_000, 0),
            (1, 3_000_000, 3),
            (1, 1, 1),
            (999_999, 1, 1),
            (1_000_000, 15_000_000, 15_000_000),
            (u64::MAX, u64::MAX, u64::MAX),
        ] {
            assert_eq!(cost_micros(t, p), want, "{t} x {p}");
        }
        // (spent, reserved, want, limit, admitted)
        for (s, r, w, l, ok) in [
            (0, 0, 10, 10, true),
            (0, 0, 11, 10, false),
            (5, 4, 1, 10, true),
            (5, 5, 1, 10, false),
            (u64::MAX, 1, 1, u64::MAX, false),
        ] {
            assert_eq!(admits(s, r, w, l), ok, "{s}+{r}+{w}<={l}");
        }
    }
}
