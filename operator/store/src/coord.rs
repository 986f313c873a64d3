//! Optional Redis: cache, counters and coordination, never the source of truth.
//!
//! Every method degrades to "no answer" when Redis is not configured or not reachable; callers
//! must be correct without it (PostgreSQL decides). Keys come from [`crate::tenancy::redis_key`].

use std::time::Duration;

use redis::AsyncCommands;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

/// A handle that may or may not have Redis behind it. Cloning is cheap.
#[derive(Clone, Default)]
pub struct Coord {
    conn: Option<ConnectionManager>,
}

impl std::fmt::Debug for Coord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Coord")
            .field("configured", &self.conn.is_some())
            .finish()
    }
}

impl Coord {
    /// No Redis.
    pub fn none() -> Self {
        Self { conn: None }
    }

    /// Connect lazily: start-up does not wait for (or fail on) Redis. Short timeouts keep a
    /// hung Redis from stalling requests; the manager reconnects by itself after a restart.
    pub fn connect(url: &str) -> Result<Self, redis::RedisError> {
        let client = redis::Client::open(url)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_millis(500)))
            .set_response_timeout(Some(Duration::from_millis(500)))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        Ok(Self {
            conn: Some(ConnectionManager::new_lazy_with_config(client, config)?),
        })
    }

    pub fn is_configured(&self) -> bool {
        self.conn.is_some()
    }

    /// `SET key 1 NX EX ttl`. `Some(true)`: we set it; `Some(false)`: it existed; `None`: no
    /// Redis answer.
    pub async fn set_nx(&self, key: &str, ttl: Duration) -> Option<bool> {
        let mut c = self.conn.clone()?;
        let res: redis::RedisResult<Option<String>> = redis::cmd("SET")
            .arg(key)
            .arg(1)
            .arg("NX")
            .arg("EX")
            .arg(ttl.as_secs().max(1))
            .query_async(&mut c)
            .await;
        match res {
            Ok(v) => Some(v.is_some()),
            Err(e) => {
                tracing::warn!(error = %e, "redis unavailable; continuing with PostgreSQL only");
                None
            }
        }
    }

    pub async fn del(&self, keys: &[String]) {
        let Some(mut c) = self.conn.clone() else {
            return;
        };
        if keys.is_empty() {
            return;
        }
        let res: redis::RedisResult<i64> = c.del(keys).await;
        if let Err(e) = res {
            tracing::warn!(error = %e, "redis unavailable; key cleanup skipped");
        }
    }

    /// PING, for readiness reporting (Redis is optional, so this never gates readiness).
    pub async fn ping(&self) -> Option<bool> {
        let mut c = self.conn.clone()?;
        Some(
            redis::cmd("PING")
                .query_async::<String>(&mut c)
                .await
                .is_ok(),
        )
    }

    pub fn manager(&self) -> Option<ConnectionManager> {
        self.conn.clone()
    }
}
