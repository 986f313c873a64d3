//! Breakers and the anomaly counter, kept in PostgreSQL (`model_breakers`) so every worker
//! sees the same state.
//!
//! * Provider circuit breaker (`provider:<name>`): consecutive failures (timeouts, 429, 5xx)
//!   of a provider within a project; at the Policy/Routing contract's `failure_threshold` it
//!   opens for `cooldown_seconds` and the proxy skips the provider (falls back). A success
//!   resets the count. Opening is audited.
//! * Project breaker (`project`): opened by the anomaly counter; while open every model call
//!   of the project is refused with `E-BUDGET-003` (checked in the reservation transaction).
//!   The budget's own hard-limit trip lives on the ledger row (see [`super::budget`]).
//! * Anomaly counter: denials, schema failures and provider errors per fixed window, in Redis
//!   (`INCR` + `EXPIRE` on `awooop:{project}:anomaly:{kind}:{window}`) when configured, else in
//!   `model_anomalies`. A count reaching the threshold opens the project breaker for one
//!   window, audited.

use std::time::Duration;

use chrono::Utc;
use serde_json::json;

use super::policy::BreakerPolicy;
use crate::audit::{self, Entry};
use crate::coord::Coord;
use crate::error::{ErrorCode, Result};
use crate::tenancy::{self, Db};

#[derive(Clone, Debug)]
pub struct Breakers {
    db: Db,
}

impl Breakers {
    pub fn new(db: Db) -> Self {
        Self { db }
    }

    /// Whether the provider's circuit is open (skip it).
    pub async fn provider_open(&self, provider: &str) -> Result<bool> {
        let project = tenancy::require()?;
        let mut tx = self.db.tenant().await?;
        let open: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM model_breakers WHERE project_id = $1 AND breaker = $2 AND open_until > now())",
        )
        .bind(project.as_str())
        .bind(format!("provider:{provider}"))
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(open)
    }

    /// Count a failure; returns true when this failure opened the circuit.
    pub async fn provider_failure(&self, provider: &str, cfg: &BreakerPolicy) -> Result<bool> {
        let project = tenancy::require()?;
        let mut tx = self.db.tenant().await?;
        let (failures,): (i32,) = sqlx::query_as(
            "INSERT INTO model_breakers (project_id, breaker, failures) VALUES ($1, $2, 1) \
             ON CONFLICT (project_id, breaker) DO UPDATE SET failures = model_breakers.failures + 1, updated_at = now() \
             RETURNING failures",
        )
        .bind(project.as_str())
        .bind(format!("provider:{provider}"))
        .fetch_one(&mut *tx)
        .await?;
        let opened = failures as u32 >= cfg.failure_threshold;
        if opened {
            sqlx::query(
                "UPDATE model_breakers SET failures = 0, open_until = now() + make_interval(secs => $3), reason = 'consecutive failures', updated_at = now() \
                 WHERE project_id = $1 AND breaker = $2",
            )
            .bind(project.as_str())
            .bind(format!("provider:{provider}"))
            .bind(f64::from(cfg.cooldown_seconds))
            .execute(&mut *tx)
            .await?;
            audit::record(
                &mut tx,
                Entry::denied(
                    "model",
                    "provider.breaker.open",
                    provider.to_string(),
                    ErrorCode::ModelProviderUnavailable.as_str(),
                    json!({"failures": failures, "cooldown_seconds": cfg.cooldown_seconds}),
                ),
            )
            .await?;
        }
        tx.commit().await?;
        Ok(opened)
    }

    pub async fn provider_success(&self, provider: &str) -> Result<()> {
        let project = tenancy::require()?;
        let mut tx = self.db.tenant().await?;
        sqlx::query(
            "UPDATE model_breakers SET failures = 0, updated_at = now() WHERE project_id = $1 AND breaker = $2 AND failures > 0",
        )
        .bind(project.as_str())
        .bind(format!("provider:{provider}"))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Anomaly {
    Denial,
    SchemaFailure,
    ProviderError,
}

impl Anomaly {
    pub fn as_str(self) -> &'static str {
        match self {
            Anomaly::Denial => "denial",
            Anomaly::SchemaFailure => "schema_failure",
            Anomaly::ProviderError => "provider_error",
        }
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

#[derive(Clone, Debug)]
pub struct AnomalyCounter {
    db: Db,
    coord: Coord,
    breakers: Breakers,
    cfg: AnomalyConfig,
}

impl AnomalyCounter {
    pub fn new(db: Db, coord: Coord, cfg: AnomalyConfig) -> Self {
        Self {
            breakers: Breakers::new(db.clone()),
            db,
            coord,
            cfg,
        }
    }

    /// Count one event; returns true when it opened the project breaker.
    pub async fn record(&self, kind: Anomaly) -> Result<bool> {
        let start = window_start(Utc::now().timestamp(), self.cfg.window);
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
    fn windows() {
        let w = Duration::from_secs(300);
        for (now, want) in [(0, 0), (299, 0), (300, 300), (1_000_000, 999_900)] {
            assert_eq!(window_start(now, w), want, "{now}");
        }
    }
}
