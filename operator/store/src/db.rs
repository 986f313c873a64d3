//! PostgreSQL connections and migrations.
//!
//! Two privilege levels: the *owner* URL runs migrations; the runtime pool always works as the
//! `awooop_app` role. When no separate runtime URL is configured the runtime pool connects with
//! the owner URL and executes `SET ROLE awooop_app` on every new connection, so application code
//! never holds owner privileges either way.

use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, Executor, PgPool};

use awooop_core::error::{Error, ErrorCode, Result};

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations");

/// Apply pending migrations with the owner URL. Idempotent.
pub async fn migrate(owner_url: &str) -> Result<()> {
    let opts = parse_url(owner_url)?;
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_secs(10))
        .connect_with(opts)
        .await
        .map_err(unavailable)?;
    // Serialise concurrent migrators of the same database (several replicas starting at once).
    MIGRATOR.run(&pool).await.map_err(|e| {
        Error::new(ErrorCode::Internal, format!("migration failed: {e}")).with_source(e)
    })?;
    pool.close().await;
    Ok(())
}

/// How long a pooled connection may sit idle before an acquire checks it with a round trip.
///
/// sqlx checks every idle connection it hands out (`test_before_acquire`): one more round trip
/// per transaction, before the `BEGIN`, on every path (a run's claim and completion, a
/// gateway snapshot load, a channel group commit), paid in latency by the caller and in a
/// wake-up by the PostgreSQL backend. A connection used within the last second came back to
/// the pool through sqlx's release check (another round trip, off the caller's path), so it
/// was live a moment ago; the check only pays for connections that sat long enough for the
/// server, a proxy or the network to have dropped them. The check never closed the race
/// either way (a connection can die between the check and the statement): a caller whose
/// connection died gets the statement's error, and the release check then discards it.
pub const PING_IF_IDLE_FOR: Duration = Duration::from_secs(1);

/// The runtime pool (role `awooop_app`).
///
/// Its sessions run with JIT compilation off (set once per connection, after the role; not as
/// a startup option, which connection poolers such as PgBouncer refuse). The platform's
/// statements are short; but the estimated cost of a generic plan (sqlx prepares every
/// statement) can pass `jit_above_cost` whatever the real work, and then every execution pays
/// the compilation: the per-project claim (migration 0073) estimated 134,799 for a 0.2 ms plan
/// and spent 50–70 ms in LLVM per claim (docs/benchmarks.md, "Nagle (session 9)").
///
/// An idle connection is checked with a round trip before it is handed out only when it sat
/// idle for [`PING_IF_IDLE_FOR`] or longer (sqlx's default checks every acquire): see there.
pub async fn connect_app(url: &str, max_connections: u32) -> Result<PgPool> {
    let opts = parse_url(url)?.application_name("awooop");
    PgPoolOptions::new()
        .max_connections(max_connections)
        .min_connections(1)
        .acquire_timeout(Duration::from_secs(10))
        // A connection nobody took for this long is closed. The pool hands out the connection
        // released last (sqlx-core, patched: operator/vendor/README.md), so what a burst opened
        // and the load no longer needs does go idle, and an idle worker pod holds one pooled
        // connection instead of every one it ever opened (docs/benchmarks.md, "Session 31").
        .idle_timeout(Duration::from_secs(60))
        .test_before_acquire(false)
        .before_acquire(|conn, meta| {
            Box::pin(async move {
                if meta.idle_for >= PING_IF_IDLE_FOR {
                    // An error discards this connection and the acquire takes (or opens)
                    // another one, as with sqlx's own check.
                    conn.ping().await?;
                }
                Ok(true)
            })
        })
        .after_connect(|conn, _meta| {
            Box::pin(async move {
                conn.execute("SET ROLE awooop_app").await?;
                conn.execute("SET jit = off").await?;
                Ok(())
            })
        })
        .connect_with(opts)
        .await
        .map_err(unavailable)
}

/// An owner pool, for maintenance commands and tests that must act as the owner.
pub async fn connect_owner(url: &str, max_connections: u32) -> Result<PgPool> {
    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(10))
        .connect_with(parse_url(url)?)
        .await
        .map_err(unavailable)
}

pub fn parse_url(url: &str) -> Result<PgConnectOptions> {
    url.parse::<PgConnectOptions>()
        .map(|o| o.log_statements(tracing::log::LevelFilter::Trace))
        .map_err(|_| {
            // The URL may contain a password: never echo it.
            Error::new(
                ErrorCode::ReqInvalidParam,
                "DATABASE_URL is not a valid postgres:// URL",
            )
        })
}

fn unavailable(e: sqlx::Error) -> Error {
    Error::new(ErrorCode::Unavailable, "cannot connect to PostgreSQL").with_source(e)
}

/// Create database `name` on the server of `admin_url` if it does not exist. Returns the URL of
/// the database.
pub async fn ensure_database(admin_url: &str, name: &str) -> Result<String> {
    let opts = parse_url(admin_url)?;
    let mut conn = opts.connect().await.map_err(unavailable)?;
    let exists: Option<i32> = sqlx::query_scalar("SELECT 1 FROM pg_database WHERE datname = $1")
        .bind(name)
        .fetch_optional(&mut conn)
        .await?;
    if exists.is_none() {
        // Identifiers cannot be bound; `name` is ours ([a-z0-9_]) and quoted anyway.
        let sql = format!("CREATE DATABASE \"{}\"", name.replace('"', ""));
        if let Err(e) = sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(&mut conn)
            .await
        {
            // Lost a race with another creator: fine.
            let dup =
                matches!(&e, sqlx::Error::Database(d) if d.code().as_deref() == Some("42P04"));
            if !dup {
                return Err(e.into());
            }
        }
    }
    Ok(with_database(admin_url, name))
}

/// Replace the database path of a postgres URL.
pub fn with_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    // postgres://user@host:port/db → keep everything up to the slash after the authority.
    let after_scheme = base.find("://").map(|i| i + 3).unwrap_or(0);
    let base = match base[after_scheme..].find('/') {
        Some(i) => &base[..after_scheme + i],
        None => base,
    };
    match query {
        Some(q) => format!("{base}/{name}?{q}"),
        None => format!("{base}/{name}"),
    }
}

#[cfg(test)]
mod tests {
    use super::with_database;

    #[test]
    fn replaces_database_path() {
        assert_eq!(
            with_database("postgres://u@h:5432/postgres", "x"),
            "postgres://u@h:5432/x"
        );
        assert_eq!(with_database("postgres://u@h", "x"), "postgres://u@h/x");
        assert_eq!(
            with_database("postgres://u:p@h/a?sslmode=disable", "x"),
            "postgres://u:p@h/x?sslmode=disable"
        );
    }
}
