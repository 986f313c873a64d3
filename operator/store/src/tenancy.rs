//! Tenant context: the one way to reach tenant rows.
//!
//! * [`ProjectId`] is a validated project id.
//! * The current project is a tokio task-local ([`scope`]); background tasks inherit it only
//!   through [`spawn`], so a task started without context has none and fails closed.
//! * [`Db::tenant`] opens a transaction that first sets `awooop.project_id` (transaction-local)
//!   from the task-local. PostgreSQL's forced row-level security does the rest: with no setting
//!   a session sees zero rows and every write is rejected.
//! * [`Db::platform`] opens a platform-scoped transaction (shared platform tables, creating and
//!   listing tenants) and writes a `platform_audit` row in the same transaction, so every access
//!   to platform resources is audited or does not happen.
//! * [`worker_tx`] and [`operator_tx`] open the two cross-tenant read scopes: `runs` for the
//!   workers, active projection inputs for the Kubernetes operator (each table answers only
//!   what its scope's policy lets through).
//! * [`redis_key`] builds every Redis key: `awooop:{project}:{kind}:{id}`.

use std::borrow::Cow;
use std::future::Future;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sqlx::{PgPool, Postgres, Transaction};
use uuid::Uuid;

use awooop_core::error::{Error, ErrorCode, Result};

/// A validated project id: `^[a-z][a-z0-9-]{1,62}$`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ProjectId(String);

impl ProjectId {
    pub fn parse(s: &str) -> Result<Self> {
        let ok = s.len() >= 2
            && s.len() <= 63
            && s.as_bytes()[0].is_ascii_lowercase()
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if ok {
            Ok(Self(s.to_string()))
        } else {
            Err(Error::new(
                ErrorCode::ProjectInvalid,
                "project id must match ^[a-z][a-z0-9-]{1,62}$",
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for ProjectId {
    type Error = Error;
    fn try_from(s: String) -> Result<Self> {
        Self::parse(&s)
    }
}

impl From<ProjectId> for String {
    fn from(p: ProjectId) -> String {
        p.0
    }
}

impl std::fmt::Display for ProjectId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

tokio::task_local! {
    static CURRENT_PROJECT: ProjectId;
}

/// Run `fut` with `project` as the tenant context.
pub async fn scope<F: Future>(project: ProjectId, fut: F) -> F::Output {
    CURRENT_PROJECT.scope(project, fut).await
}

/// The current tenant, if any.
pub fn current() -> Option<ProjectId> {
    CURRENT_PROJECT.try_with(Clone::clone).ok()
}

/// The current tenant, or `E-TENANT-001`.
pub fn require() -> Result<ProjectId> {
    current().ok_or_else(|| {
        Error::new(
            ErrorCode::TenantMissing,
            "no tenant context: tenant data cannot be reached",
        )
    })
}

/// Spawn a background task that inherits the caller's tenant context (or none) and its
/// tracing span.
pub fn spawn<F>(fut: F) -> tokio::task::JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    use tracing::Instrument;
    match current() {
        Some(p) => tokio::spawn(CURRENT_PROJECT.scope(p, fut).in_current_span()),
        None => tokio::spawn(fut.in_current_span()),
    }
}

/// Spawn a task that runs in `project`'s tenant context and under the caller's tracing span.
///
/// For work moved into a task of its own so that a dropped caller cannot cut it in half (a
/// settlement, an audit row, a stored webhook): the task outlives the caller's future, but
/// what it logs (a failed write, a slow statement) still belongs to the caller's run or
/// request, so it keeps the caller's span (`run{run_id, trace_id, …}`) rather than logging
/// under none. A plain `tokio::spawn` starts with no span and no tenant.
pub fn spawn_in<F>(project: ProjectId, fut: F) -> tokio::task::JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    use tracing::Instrument;
    tokio::spawn(CURRENT_PROJECT.scope(project, fut).in_current_span())
}

/// Build a Redis key. The project comes from the tenant context, never from the caller, so
/// one tenant cannot address another's keys.
pub fn redis_key(kind: &str, id: &str) -> Result<String> {
    let p = require()?;
    Ok(format!("awooop:{}:{kind}:{id}", p.as_str()))
}

/// Key for platform-wide Redis state. `_platform` cannot collide with a project id (ids start
/// with a letter).
pub fn platform_redis_key(kind: &str, id: &str) -> String {
    format!("awooop:_platform:{kind}:{id}")
}

/// A worker-scoped transaction: sees `runs` of every project (and nothing else).
///
/// The scope is set in the same simple-query message as `BEGIN` (one round trip instead of
/// two: the run path opens one such transaction per claim batch). sqlx checks that the
/// connection is inside a transaction afterwards; a failing `SET LOCAL` aborts it, so the
/// begin fails rather than handing out a transaction without its scope.
pub async fn worker_tx(pool: &PgPool) -> Result<Transaction<'static, Postgres>> {
    begin(pool, "BEGIN; SET LOCAL awooop.scope = 'worker'").await
}

/// A transaction begun on `pool` with `sql` (`BEGIN` and the transaction's settings, one
/// message); every transaction of the runtime pool starts here.
///
/// The pool hands out a connection used within [`crate::db::PING_IF_IDLE_FOR`] without a
/// check, so after the server ended sessions (a restart, a failover, `pg_terminate_backend`)
/// the next transactions may each be handed one of the dead connections, and their `BEGIN`
/// fails with 57P01 or an I/O error. Nothing ran on such a connection, so beginning again is
/// safe: the failed connection is discarded (sqlx's release check) and the next attempt takes
/// another one or opens a new one. Bounded by the pool's size (at most that many idle
/// connections can be dead); any other error, and a connection failure after the `BEGIN`,
/// reaches the caller unchanged.
pub async fn begin(
    pool: &PgPool,
    sql: impl Into<Cow<'static, str>>,
) -> Result<Transaction<'static, Postgres>> {
    let sql = sql.into();
    let mut retries = pool.options().get_max_connections();
    loop {
        match pool.begin_with(sqlx::AssertSqlSafe(sql.clone())).await {
            Err(e) if retries > 0 && connection_lost(&e) => {
                retries -= 1;
                tracing::debug!(error = %e, "a pooled connection was dead at BEGIN; beginning on another");
            }
            r => return Ok(r?),
        }
    }
}

/// The connection was gone before the statement ran: the server ended the session or the
/// socket broke (not a refusal of the statement itself).
fn connection_lost(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_) => true,
        sqlx::Error::Database(d) => d
            .code()
            .is_some_and(|c| awooop_core::error::is_connection_sqlstate(&c)),
        _ => false,
    }
}

/// `BEGIN` plus the transaction-local tenant setting, as one statement string. The project id
/// is validated (`^[a-z][a-z0-9-]{1,62}$`: no quote, backslash or semicolon can occur), which
/// is what makes it safe to place inside the literal; `debug_assert` keeps that visible.
fn begin_tenant_sql(project: &ProjectId) -> Result<String> {
    // The id is spliced into the SQL only because `ProjectId` admits `[a-z0-9-]` alone; checked
    // again here (not just debug-asserted), so a future change of that rule fails closed instead
    // of opening an injection.
    let id = project.as_str();
    if !id
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err(Error::new(
            ErrorCode::ProjectInvalid,
            "project id must match ^[a-z][a-z0-9-]{1,62}$",
        ));
    }
    Ok(format!("BEGIN; SET LOCAL awooop.project_id = '{id}'"))
}

/// [`Db::tenant`] on a connection the caller holds ([`Db::connection`]): `BEGIN` and the
/// transaction-local tenant setting in one round trip, scoped to the current tenant (from the
/// task-local) exactly as [`Db::tenant`].
pub async fn tenant_on(conn: &mut sqlx::PgConnection) -> Result<Transaction<'_, Postgres>> {
    let project = require()?;
    Ok(
        sqlx::Connection::begin_with(conn, sqlx::AssertSqlSafe(begin_tenant_sql(&project)?))
            .await?,
    )
}

/// [`tenant_on`] with the run-creation notices deferred to the writer, as
/// [`Db::tenant_deferred`].
pub async fn tenant_deferred_on(
    conn: &mut sqlx::PgConnection,
) -> Result<Transaction<'_, Postgres>> {
    let project = require()?;
    let sql = format!(
        "{}; {}",
        begin_tenant_sql(&project)?,
        crate::notify::DEFER_SQL
    );
    Ok(sqlx::Connection::begin_with(conn, sqlx::AssertSqlSafe(sql)).await?)
}

/// An operator-scoped, read-only transaction: sees the active projects, their migration mode
/// and the two active contracts the Kubernetes projection is built from (project and MCP
/// gateway), of every project, and nothing else (migration 0067). The operator's full resync
/// reads all projects with one query in it instead of one tenant transaction per project.
pub async fn operator_tx(pool: &PgPool) -> Result<Transaction<'static, Postgres>> {
    begin(pool, "BEGIN; SET LOCAL awooop.scope = 'operator'").await
}

/// Database handle for the runtime role. Cloning is cheap.
#[derive(Clone, Debug)]
pub struct Db {
    pool: PgPool,
    /// The run-event listener of this pool, started on first use ([`Db::run_events`]).
    events: Arc<std::sync::OnceLock<Arc<crate::events::RunEventHub>>>,
    /// The post-commit notice sender of this pool, started on first use ([`Db::notifier`]).
    notifier: Arc<std::sync::OnceLock<Arc<crate::notify::Notifier>>>,
    /// The wake-up listener of this pool, started on first use ([`Db::listener`]).
    listener: Arc<std::sync::OnceLock<Arc<crate::listen::Listener>>>,
    /// Process-wide state that higher crates keep per database (one value per type), e.g. the
    /// runtime's shared run-event readers: it must live exactly as long as the pool it reads,
    /// and this crate cannot name those types.
    shared: Arc<std::sync::Mutex<SharedMap>>,
}

type SharedMap = std::collections::HashMap<std::any::TypeId, Arc<dyn std::any::Any + Send + Sync>>;

impl Db {
    pub fn new(pool: PgPool) -> Self {
        Self {
            pool,
            events: Arc::default(),
            notifier: Arc::default(),
            listener: Arc::default(),
            shared: Arc::default(),
        }
    }

    /// This database's one `T` in this process (created with `T::default()` on first use and
    /// shared by every clone of this handle).
    pub fn shared<T: std::any::Any + Send + Sync + Default>(&self) -> Arc<T> {
        // A panic while holding this lock cannot leave the map half-updated (one insert).
        let mut m = self.shared.lock().unwrap_or_else(|e| e.into_inner());
        let any = m
            .entry(std::any::TypeId::of::<T>())
            .or_insert_with(|| Arc::new(T::default()))
            .clone();
        match any.downcast::<T>() {
            Ok(t) => t,
            // Unreachable: the entry is keyed by its own type. Replace rather than panic.
            Err(_) => {
                let t = Arc::new(T::default());
                m.insert(std::any::TypeId::of::<T>(), t.clone());
                t
            }
        }
    }

    /// The process's run-event hub for this database (one LISTEN connection, shared by every
    /// clone of this handle). Needs a tokio runtime on first call.
    pub fn run_events(&self) -> Arc<crate::events::RunEventHub> {
        self.events
            .get_or_init(|| crate::events::RunEventHub::start(self.pool.clone()))
            .clone()
    }

    /// The process's post-commit notice sender for this database (one connection, shared by
    /// every clone of this handle; [`crate::notify`]). Needs a tokio runtime on first call.
    pub fn notifier(&self) -> Arc<crate::notify::Notifier> {
        self.notifier
            .get_or_init(|| crate::notify::Notifier::start(self.pool.clone(), self.events.clone()))
            .clone()
    }

    /// The process's one `LISTEN` connection for this database's wake-up channels (shared by
    /// every clone of this handle; [`crate::listen`]). Needs a tokio runtime on first call.
    pub fn listener(&self) -> Arc<crate::listen::Listener> {
        self.listener
            .get_or_init(|| crate::listen::Listener::start(self.pool.clone()))
            .clone()
    }

    pub fn pool_for_health(&self) -> &PgPool {
        &self.pool
    }

    /// A transaction scoped to the current tenant (from the task-local).
    pub async fn tenant(&self) -> Result<Transaction<'static, Postgres>> {
        let project = require()?;
        // One round trip: every tenant transaction of the run path (completions, journal
        // flushes) pays this once.
        begin(&self.pool, begin_tenant_sql(&project)?).await
    }

    /// [`Db::tenant`] for a writer that creates runs and announces them itself after its
    /// COMMIT ([`crate::notify`]): the run-creation triggers of this transaction send no
    /// NOTIFY, so its commit is not serialised with every other notifying commit of the
    /// cluster. Same single round trip. The caller must pass the runs it created to
    /// [`Db::notifier`] once the commit returned (else they wait for the workers' poll).
    ///
    /// Its statements are planned generically from their first execution on a connection
    /// (`plan_cache_mode = force_generic_plan`, for this transaction only). The run insert is
    /// one statement of arrays whatever the runs (its plan probes indexes by key, kind and
    /// name, never by how many rows match), so PostgreSQL's default of five custom plans per
    /// connection first only re-plans it: the pool hands out its least recently used
    /// connection, each with its own prepared statements, so at low load almost every
    /// creation was a first five on its connection and its `Bind` planned the statement
    /// afresh (1.2 ms median of `log_min_duration_statement` on the 2-core machine, against
    /// 0.12 ms with the cached plan; docs/benchmarks.md, "Session 25").
    pub async fn tenant_deferred(&self) -> Result<Transaction<'static, Postgres>> {
        let project = require()?;
        let sql = format!(
            "{}; {}; SET LOCAL plan_cache_mode = force_generic_plan",
            begin_tenant_sql(&project)?,
            crate::notify::DEFER_SQL
        );
        begin(&self.pool, sql).await
    }

    /// A connection of the runtime pool for a caller that runs several transactions in a row
    /// on it ([`tenant_on`]): each `Db::tenant` acquires from the pool, and the pool checks an
    /// idle connection with a round trip (`test_before_acquire`) before handing it out. A
    /// batch writer that keeps its connection while it has work skips that round trip per
    /// transaction. Dropping it returns it to the pool, whose check then catches a broken one.
    pub async fn connection(&self) -> Result<sqlx::pool::PoolConnection<Postgres>> {
        Ok(self.pool.acquire().await?)
    }

    /// A platform-scoped transaction; writes the `platform_audit` row first.
    pub async fn platform(
        &self,
        actor: &str,
        action: &str,
        details: serde_json::Value,
    ) -> Result<Transaction<'static, Postgres>> {
        let mut tx = begin(&self.pool, "BEGIN; SET LOCAL awooop.scope = 'platform'").await?;
        let mut details = details;
        awooop_core::redact::Redactor::global().redact_json(&mut details);
        sqlx::query(
            "INSERT INTO platform_audit (audit_id, actor, action, details) VALUES ($1, $2, $3, $4)",
        )
        .bind(Uuid::now_v7())
        .bind(actor)
        .bind(action)
        .bind(details)
        .execute(&mut *tx)
        .await?;
        Ok(tx)
    }

    /// Inside a platform transaction, additionally enter a tenant (to create its first rows).
    pub async fn enter_project(
        tx: &mut Transaction<'static, Postgres>,
        project: &ProjectId,
    ) -> Result<()> {
        sqlx::query("SELECT set_config('awooop.project_id', $1, true)")
            .bind(project.as_str())
            .execute(&mut **tx)
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn project_ids() {
        for ok in ["awoooi", "ewoooc", "a1", "tenant-42"] {
            assert!(ProjectId::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "a",
            "A1",
            "1abc",
            "_platform",
            "a_b",
            "a b",
            &"a".repeat(64),
        ] {
            assert!(ProjectId::parse(bad).is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn context_is_inherited_only_through_spawn() {
        assert!(require().is_err());
        assert!(redis_key("session", "1").is_err());
        let p = ProjectId::parse("awoooi").unwrap();
        scope(p.clone(), async {
            assert_eq!(
                redis_key("session", "1").unwrap(),
                "awooop:awoooi:session:1"
            );
            let inherited = spawn(async { current() }).await.unwrap();
            assert_eq!(inherited, Some(ProjectId::parse("awoooi").unwrap()));
            // a plain tokio::spawn does not inherit: fail closed
            let plain = tokio::spawn(async { current() }).await.unwrap();
            assert_eq!(plain, None);
        })
        .await;
    }

    /// Where a spawned task stands: its innermost span's name and its tenant.
    fn seen() -> (Option<&'static str>, Option<ProjectId>) {
        (
            tracing::Span::current().metadata().map(|m| m.name()),
            current(),
        )
    }

    #[tokio::test]
    async fn spawned_tasks_keep_the_callers_span() {
        use tracing::Instrument;
        // A current-thread runtime polls every task on this thread, so a thread-local
        // subscriber sees them all.
        let _subscriber = tracing::subscriber::set_default(tracing_subscriber::registry());
        let p = ProjectId::parse("awoooi").unwrap();
        let (detached, inherited, plain) = async {
            let detached = spawn_in(p.clone(), async { seen() }).await.unwrap();
            let inherited =
                scope(p.clone(), async { spawn(async { seen() }).await.unwrap() }).await;
            let plain = tokio::spawn(async { seen() }).await.unwrap();
            (detached, inherited, plain)
        }
        .instrument(tracing::info_span!("run"))
        .await;
        assert_eq!(detached, (Some("run"), Some(p.clone())));
        assert_eq!(inherited, (Some("run"), Some(p)));
        // the control: a plain spawn starts with neither
        assert_eq!(plain, (None, None));
    }
}
