//! Breakers and the anomaly counter, kept in PostgreSQL so every worker sees the same state.
//!
//! * Provider circuit breaker: consecutive failures (timeouts, 429, 5xx) of a provider
//!   endpoint *as seen by one project*, kept as a platform resource keyed by (project,
//!   endpoint); at the Policy/Routing contract's `failure_threshold` it opens for
//!   `cooldown_seconds` (capped at [`MAX_COOLDOWN_SECONDS`]) and the proxy skips the provider
//!   (falls back). A success resets the count. Every access is in `platform_audit`; opening is
//!   also audited in the calling project's log. The key includes the project because the
//!   thresholds come from a tenant's contract: with one shared state per endpoint, a tenant with
//!   `failure_threshold: 1, cooldown_seconds: 86400` and a failing request could switch a shared
//!   provider off for every other tenant for a day.
//! * Project breaker (`project`): opened by the anomaly counter; while open every model call
//!   of the project is refused with `E-BUDGET-003` (checked in the reservation transaction).
//!   The budget's own hard-limit trip lives on the ledger row (see [`super::budget`]).
//! * Anomaly counter: denials, schema failures and provider errors per fixed window, in Redis
//!   (`INCR` + `EXPIRE` on `awooop:{project}:anomaly:{kind}:{window}`) when configured, else in
//!   `model_anomalies`. A count reaching the threshold opens the project breaker for one
//!   window, audited.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::policy::BreakerPolicy;
use awooop_core::error::{Error, ErrorCode, Result};
use awooop_store::audit::{self, Entry};
use awooop_store::coord::Coord;
use awooop_store::tenancy::{self, Db};

/// Breakers. Provider circuit state is a platform resource (`platform_resources`, kind
/// `model_provider_breaker`, keyed by [`provider_key`]: project and endpoint URL), so one
/// tenant's thresholds and failures never open the circuit of another tenant using the same
/// provider; every access is a platform transaction with its `platform_audit` row.
/// Reads are cached for [`BREAKER_CACHE`] per process so the audit trail is not one row per
/// model call.
#[derive(Clone, Debug)]
pub struct Breakers {
    db: Db,
    cache: Arc<Mutex<HashMap<String, (Instant, ProviderState)>>>,
}

/// How long a read of a provider's circuit state is reused.
pub const BREAKER_CACHE: Duration = Duration::from_secs(1);
const PROVIDER_KIND: &str = "model_provider_breaker";
/// Platform cap on a tenant's `cooldown_seconds` (the schema allows up to a day): a
/// misconfigured contract cannot switch a provider off for the project for longer than this.
pub const MAX_COOLDOWN_SECONDS: u32 = 900;

/// The resource key of a provider breaker: the calling project and the endpoint. Outside a
/// tenant scope (never on the model path) the project part is `-`, which no project id is.
pub fn provider_key(endpoint: &str) -> String {
    let project = tenancy::current()
        .map(|p| p.to_string())
        .unwrap_or_else(|| "-".into());
    format!("{project}|{endpoint}")
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ProviderState {
    pub failures: u32,
    pub open_until: Option<DateTime<Utc>>,
}

impl ProviderState {
    pub fn is_open(&self, now: DateTime<Utc>) -> bool {
        self.open_until.is_some_and(|t| t > now)
    }

    /// The state after one more failure (pure): at the threshold the circuit opens for the
    /// cooldown and the count restarts. Returns whether this failure opened it.
    pub fn fail(&self, cfg: &BreakerPolicy, now: DateTime<Utc>) -> (ProviderState, bool) {
        let failures = self.failures + 1;
        if failures >= cfg.failure_threshold {
            (
                ProviderState {
                    failures: 0,
                    open_until: Some(
                        now + chrono::Duration::seconds(i64::from(
                            cfg.cooldown_seconds.clamp(1, MAX_COOLDOWN_SECONDS),
                        )),
                    ),
                },
                true,
            )
        } else {
            (
                ProviderState {
                    failures,
                    open_until: self.open_until,
                },
                false,
            )
        }
    }
}

impl Breakers {
    pub fn new(db: Db) -> Self {
        Self {
            db,
            cache: Arc::default(),
        }
    }

    fn actor() -> String {
        format!(
            "model:{}",
            tenancy::current()
                .map(|p| p.to_string())
                .unwrap_or_default()
        )
    }

    /// The provider's circuit state (cached for [`BREAKER_CACHE`]).
    pub async fn provider_state(&self, endpoint: &str) -> Result<ProviderState> {
        let key = provider_key(endpoint);
        if let Some((at, st)) = self.cache.lock().expect("breaker cache").get(&key)
            && at.elapsed() < BREAKER_CACHE
        {
            return Ok(st.clone());
        }
        let mut tx = self
            .db
            .platform(
                &Self::actor(),
                "model.breaker.read",
                json!({"endpoint": endpoint}),
            )
            .await?;
        let v: Option<Value> = sqlx::query_scalar(
            "SELECT value FROM platform_resources WHERE resource_kind = $1 AND resource_key = $2",
        )
        .bind(PROVIDER_KIND)
        .bind(&key)
        .fetch_optional(&mut *tx)
        .await?;
        tx.commit().await?;
        let st: ProviderState = v
            .and_then(|v| serde_json::from_value(v).ok())
            .unwrap_or_default();
        self.cache
            .lock()
            .expect("breaker cache")
            .insert(key, (Instant::now(), st.clone()));
        Ok(st)
    }

    /// Whether the provider's circuit is open (skip it).
    pub async fn provider_open(&self, endpoint: &str) -> Result<bool> {
        Ok(self.provider_state(endpoint).await?.is_open(Utc::now()))
    }

    /// Count a failure; returns true when this failure opened the circuit (also recorded in
    /// the calling project's audit log).
    pub async fn provider_failure(
        &self,
        provider: &str,
        endpoint: &str,
        cfg: &BreakerPolicy,
    ) -> Result<bool> {
        let key = provider_key(endpoint);
        let mut tx = self
            .db
            .platform(
                &Self::actor(),
                "model.breaker.failure",
                json!({"endpoint": endpoint, "threshold": cfg.failure_threshold}),
            )
            .await?;
        // The row exists first, then its lock serialises concurrent failures of the same
        // provider (no lost updates, even for the very first failures).
        sqlx::query(
            "INSERT INTO platform_resources (resource_kind, resource_key, value, updated_by) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (resource_kind, resource_key) DO NOTHING",
        )
        .bind(PROVIDER_KIND)
        .bind(&key)
        .bind(serde_json::to_value(ProviderState::default()).map_err(Error::internal)?)
        .bind(Self::actor())
        .execute(&mut *tx)
        .await?;
        let v: Option<Value> = sqlx::query_scalar(
            "SELECT value FROM platform_resources WHERE resource_kind = $1 AND resource_key = $2 FOR UPDATE",
        )
        .bind(PROVIDER_KIND)
        .bind(&key)
        .fetch_optional(&mut *tx)
        .await?;
        let now = Utc::now();
        let cur: ProviderState = v
            .and_then(|v| serde_json::from_value(v).ok())
            .unwrap_or_default();
        let (next, opened) = cur.fail(cfg, now);
        sqlx::query(
            "UPDATE platform_resources SET value = $3, updated_by = $4, updated_at = now() \
             WHERE resource_kind = $1 AND resource_key = $2",
        )
        .bind(PROVIDER_KIND)
        .bind(&key)
        .bind(serde_json::to_value(&next).map_err(Error::internal)?)
        .bind(Self::actor())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        self.cache
            .lock()
            .expect("breaker cache")
            .insert(key, (Instant::now(), next));
        if opened && tenancy::current().is_some() {
            audit::record_detached(
                &self.db,
                Entry::denied(
                    "model",
                    "provider.breaker.open",
                    provider.to_string(),
                    ErrorCode::ModelProviderUnavailable.as_str(),
                    json!({"endpoint": endpoint, "cooldown_seconds": cfg.cooldown_seconds}),
                ),
            )
            .await;
        }
        Ok(opened)
    }

    /// A success resets the failure count (written only when there were failures).
    pub async fn provider_success(&self, endpoint: &str) -> Result<()> {
        let key = provider_key(endpoint);
        if self.provider_state(endpoint).await?.failures == 0 {
            return Ok(());
        }
        let mut tx = self
            .db
            .platform(
                &Self::actor(),
                "model.breaker.success",
                json!({"endpoint": endpoint}),
            )
            .await?;
        sqlx::query(
            "UPDATE platform_resources SET value = jsonb_set(value, '{failures}', '0'), updated_by = $3, updated_at = now() \
             WHERE resource_kind = $1 AND resource_key = $2",
        )
        .bind(PROVIDER_KIND)
        .bind(&key)
        .bind(Self::actor())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        self.cache.lock().expect("breaker cache").remove(&key);
        Ok(())
    }

    /// Open the project breaker for `duration`, audited.
    pub async fn open_project(&self, reason: &str, duration: Duration) -> Result<()> {
        let project = tenancy::require()?;
        let mut tx = self.db.tenant().await?;
        sqlx::query(
            "INSERT INTO model_breakers (project_id, breaker, open_until, reason) VALUES ($1, 'project', now() + make_interval(secs => $2), $3) \
             ON CONFLICT (project_id, breaker) DO UPDATE SET open_until = EXCLUDED.open_until, reason = EXCLUDED.reason, updated_at = now()",
        )
        .bind(project.as_str())
        .bind(duration.as_secs_f64())
        .bind(reason)
        .execute(&mut *tx)
        .await?;
        audit::record(
            &mut tx,
            Entry::denied(
                "model",
                "project.breaker.open",
                project.as_str().to_string(),
                ErrorCode::BudgetBreakerOpen.as_str(),
                json!({"reason": reason, "seconds": duration.as_secs()}),
            ),
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Close the project breaker (an operator's decision), audited.
    pub async fn close_project(&self) -> Result<()> {
        let project = tenancy::require()?;
        let mut tx = self.db.tenant().await?;
        sqlx::query(
            "UPDATE model_breakers SET open_until = NULL, updated_at = now() WHERE project_id = $1 AND breaker = 'project'",
        )
        .bind(project.as_str())
        .execute(&mut *tx)
        .await?;
        audit::record(
            &mut tx,
            Entry::ok(
                "model",
                "project.breaker.close",
                project.as_str().to_string(),
                json!({}),
            ),
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }
}

/// What the anomaly counter counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, strum::IntoStaticStr, strum::EnumString)]
#[strum(serialize_all = "snake_case")]
pub enum Anomaly {
    Denial,
    SchemaFailure,
    ProviderError,
}

impl Anomaly {
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

/// Thresholds of the anomaly counter.
#[derive(Debug, Clone, Copy)]
pub struct AnomalyConfig {
    pub window: Duration,
    /// Events of one kind per window that open the project breaker.
    pub threshold: u64,
}

impl Default for AnomalyConfig {
    fn default() -> Self {
        Self {
            window: Duration::from_secs(300),
            threshold: 50,
        }
    }
}

/// Start (unix seconds) of the fixed window containing `now_secs`.
pub fn window_start(now_secs: i64, window: Duration) -> i64 {
    let w = window.as_secs().max(1) as i64;
    now_secs - now_secs.rem_euclid(w)
}

/// The anomaly counter's clock: unix seconds. The system clock in production; tests inject one
/// so that a fixed window cannot roll over in the middle of a test.
#[derive(Clone)]
pub struct Clock(std::sync::Arc<dyn Fn() -> i64 + Send + Sync>);

impl Clock {
    pub fn system() -> Self {
        Self(std::sync::Arc::new(|| Utc::now().timestamp()))
    }

    pub fn new(now: impl Fn() -> i64 + Send + Sync + 'static) -> Self {
        Self(std::sync::Arc::new(now))
    }

    pub fn now(&self) -> i64 {
        (self.0)()
    }
}

impl std::fmt::Debug for Clock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Clock")
    }
}

#[derive(Clone, Debug)]
pub struct AnomalyCounter {
    db: Db,
    coord: Coord,
    breakers: Breakers,
    cfg: AnomalyConfig,
    clock: Clock,
}

impl AnomalyCounter {
    pub fn new(db: Db, coord: Coord, cfg: AnomalyConfig) -> Self {
        Self {
            breakers: Breakers::new(db.clone()),
            db,
            coord,
            cfg,
            clock: Clock::system(),
        }
    }

    /// The same counter reading time from `clock` (tests).
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// Count one event; returns true when it opened the project breaker.
    ///
    /// The count and the opening run in a task of their own: the breaker opens only on the
    /// event that reaches the threshold exactly, so a caller dropped between the two (a run's
    /// timeout, a cancelled run: the counted increment is durable, the opening is not) would
    /// leave the breaker closed for the rest of the window whatever the count.
    pub async fn record(&self, kind: Anomaly) -> Result<bool> {
        let project = tenancy::require()?;
        let this = self.clone();
        tenancy::spawn_in(project, async move { this.count_and_open(kind).await })
            .await
            .unwrap_or_else(|_| {
                Err(Error::new(
                    ErrorCode::Internal,
                    "an anomaly count task stopped before it answered",
                ))
            })
    }

    async fn count_and_open(&self, kind: Anomaly) -> Result<bool> {
        let start = window_start(self.clock.now(), self.cfg.window);
        let count = match self.redis_incr(kind, start).await? {
            Some(n) => n,
            None => self.pg_incr(kind, start).await?,
        };
        if count == self.cfg.threshold {
            self.breakers
                .open_project(
                    &format!("anomaly threshold: {} {} per window", count, kind.as_str()),
                    self.cfg.window,
                )
                .await?;
            return Ok(true);
        }
        Ok(false)
    }

    async fn redis_incr(&self, kind: Anomaly, start: i64) -> Result<Option<u64>> {
        let Some(mut c) = self.coord.manager() else {
            return Ok(None);
        };
        let key = tenancy::redis_key("anomaly", &format!("{}:{start}", kind.as_str()))?;
        let res: redis::RedisResult<(u64, i64)> = redis::pipe()
            .atomic()
            .cmd("INCR")
            .arg(&key)
            .cmd("EXPIRE")
            .arg(&key)
            .arg(self.cfg.window.as_secs().max(1) * 2)
            .query_async(&mut c)
            .await;
        match res {
            Ok((n, _)) => Ok(Some(n)),
            Err(e) => {
                tracing::warn!(error = %e, "redis unavailable; anomaly counter uses PostgreSQL");
                Ok(None)
            }
        }
    }

    async fn pg_incr(&self, kind: Anomaly, start: i64) -> Result<u64> {
        let project = tenancy::require()?;
        let mut tx = self.db.tenant().await?;
        let n: i64 = sqlx::query_scalar(
            "INSERT INTO model_anomalies (project_id, kind, window_start, count) VALUES ($1, $2, to_timestamp($3), 1) \
             ON CONFLICT (project_id, kind, window_start) DO UPDATE SET count = model_anomalies.count + 1 RETURNING count",
        )
        .bind(project.as_str())
        .bind(kind.as_str())
        .bind(start as f64)
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(n as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provider_state_opens_at_the_threshold() {
        let cfg = BreakerPolicy {
            failure_threshold: 3,
            cooldown_seconds: 30,
        };
        let now = Utc::now();
        let (s1, o1) = ProviderState::default().fail(&cfg, now);
        let (s2, o2) = s1.fail(&cfg, now);
        let (s3, o3) = s2.fail(&cfg, now);
        assert_eq!((o1, o2, o3), (false, false, true));
        assert_eq!(s2.failures, 2);
        assert_eq!(s3.failures, 0);
        assert!(s3.is_open(now));
        assert!(!s3.is_open(now + chrono::Duration::seconds(31)));
        assert!(!s2.is_open(now));
    }

    #[test]
    fn windows() {
        let w = Duration::from_secs(300);
        for (now, want) in [(0, 0), (299, 0), (300, 300), (1_000_000, 999_900)] {
            assert_eq!(window_start(now, w), want, "{now}");
        }
    }
}
