//! Test support: a fresh, migrated database per test on the real PostgreSQL, private Redis
//! servers that tests may stop and restart, and prose-like builders for contracts.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use awooop::auth::Actor;
use awooop::contracts::ContractKind;
use awooop::contracts::signing::Keyring;
use awooop::control::{ControlPlane, NewProject};
use awooop::coord::Coord;
use awooop::tenancy::{self, Db, ProjectId};
use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;

pub fn base_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

pub fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A fresh database with all migrations applied. Dropped by [`TestDb::cleanup`]; databases
/// leaked by panicking tests are removed by later runs once they are an hour old.
pub struct TestDb {
    pub name: String,
    pub url: String,
    /// Runtime role pool (`SET ROLE awooop_app`), what the platform uses.
    pub app: PgPool,
    /// Owner pool, for tests that must act as the owner.
    pub owner: PgPool,
    dropped: bool,
}

impl TestDb {
    pub async fn new() -> Self {
        let base = base_url();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        reap_old_databases(&base, now).await;
        // `AWOOOP_TEST_RUN` (set by scripts/test.sh) tags this run's databases, so the script
        // can check that the run left none behind while other runs share the server.
        let run = std::env::var("AWOOOP_TEST_RUN")
            .map(|r| {
                format!(
                    "_r{}",
                    r.chars()
                        .filter(char::is_ascii_alphanumeric)
                        .collect::<String>()
                )
            })
            .unwrap_or_default();
        let name = format!(
            "awt_{now}_{}_{}{run}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let url = create_owned_database(&base, &name).await;
        awooop::db::migrate(&url).await.expect("migrate");
        let app = awooop::db::connect_app(&url, 8).await.expect("app pool");
        let owner = awooop::db::connect_owner(&url, 2)
            .await
            .expect("owner pool");
        Self {
            name,
            url,
            app,
            owner,
            dropped: false,
        }
    }

    pub fn db(&self) -> Db {
        Db::new(self.app.clone())
    }

    pub fn control(&self, coord: Coord) -> ControlPlane {
        ControlPlane::new(self.db(), coord, test_keyring())
    }

    /// A superuser connection to this database, for tests that must step around the rules
    /// the platform's roles live under (e.g. to remove a row and see who else remembers it).
    pub async fn superuser(&self) -> sqlx::PgConnection {
        let opts: sqlx::postgres::PgConnectOptions = base_url().parse().unwrap();
        <sqlx::PgConnection as sqlx::Connection>::connect_with(&opts.database(&self.name))
            .await
            .expect("connect to the test database as the superuser")
    }

    /// End the server session `pid` (`pg_terminate_backend`, as a restart or a failover would).
    pub async fn terminate_backend(&self, pid: i32) {
        let mut su = self.superuser().await;
        let killed: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
            .bind(pid)
            .fetch_one(&mut su)
            .await
            .unwrap();
        assert!(killed, "no session {pid} to terminate");
    }

    /// End every session of the platform's pools on this database (`application_name` awooop;
    /// not the superuser's, not the notifier's), as a restart or a failover would, and wait
    /// until they are gone (their FATAL sent). Returns how many were ended.
    pub async fn end_app_sessions(&self) -> i64 {
        let mut su = self.superuser().await;
        let ended: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = $1 AND application_name = 'awooop') x",
        )
        .bind(&self.name)
        .fetch_one(&mut su)
        .await
        .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND application_name = 'awooop'",
            )
            .bind(&self.name)
            .fetch_one(&mut su)
            .await
            .unwrap();
            if left == 0 {
                return ended;
            }
            assert!(
                Instant::now() < deadline,
                "{left} ended sessions still there"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// Wait until a session of this database is blocked on a lock (a row or table another
    /// transaction of the test holds) while running a statement that starts with `prefix`:
    /// the moment a future awaiting that statement can be dropped mid-flight, for the
    /// cancellation tests.
    pub async fn wait_for_blocked(&self, prefix: &str) {
        self.wait_for_session(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 \
             AND wait_event_type = 'Lock' AND starts_with(ltrim(query), $2)",
            prefix,
            Duration::from_secs(20),
            &format!("no session blocked in `{prefix}…`"),
        )
        .await;
    }

    /// Drop `fut` while it waits in a statement starting with `blocked`: hold what `hold`
    /// locks (statements run after `BEGIN` on a superuser session), run `fut` in a task, wait
    /// until a session is blocked in `blocked…` ([`Self::wait_for_blocked`]), abort the task
    /// (its future is dropped there, mid-statement) and roll the hold back. What the dropped
    /// future left behind is the caller's to check.
    pub async fn drop_while_blocked<F>(&self, hold: &str, blocked: &str, fut: F)
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let mut su = self.superuser().await;
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("BEGIN; {hold}")))
            .execute(&mut su)
            .await
            .unwrap();
        let call = tokio::spawn(fut);
        self.wait_for_blocked(blocked).await;
        call.abort();
        match call.await {
            Err(e) if e.is_cancelled() => {}
            _ => panic!("the call in `{blocked}…` finished before it was dropped"),
        }
        sqlx::raw_sql("ROLLBACK").execute(&mut su).await.unwrap();
    }

    /// Wait until a session of this database has completed `LISTEN channel` (it shows as an
    /// idle backend whose last statement was that LISTEN), so a NOTIFY sent now reaches it.
    pub async fn wait_for_listener(&self, channel: &str) {
        self.wait_for_session(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND state = 'idle' \
             AND query ILIKE 'LISTEN%' AND position($2 in query) > 0",
            channel,
            Duration::from_secs(30),
            &format!("no session LISTENs on {channel}"),
        )
        .await;
    }

    /// Poll `pg_stat_activity` with `count` (`$1` this database, `$2` bound to `arg`) until it
    /// finds a session, failing with `what` after `within`.
    async fn wait_for_session(&self, count: &'static str, arg: &str, within: Duration, what: &str) {
        let mut c = <sqlx::PgConnection as sqlx::Connection>::connect(&base_url())
            .await
            .unwrap();
        let deadline = Instant::now() + within;
        loop {
            let n: i64 = sqlx::query_scalar(count)
                .bind(&self.name)
                .bind(arg)
                .fetch_one(&mut c)
                .await
                .unwrap();
            if n > 0 {
                return;
            }
            assert!(Instant::now() < deadline, "{what} after {within:?}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub async fn cleanup(mut self) {
        self.app.close().await;
        self.owner.close().await;
        drop_database(&base_url(), &self.name).await;
        self.dropped = true;
    }
}

/// A test that forgets [`TestDb::cleanup`] or panics before it still drops its database
/// (`WITH (FORCE)` ends the pools' connections), on a thread of its own because `Drop` cannot
/// await inside the test's runtime.
impl Drop for TestDb {
    fn drop(&mut self) {
        if self.dropped {
            return;
        }
        let name = self.name.clone();
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime to drop the test database");
            rt.block_on(drop_database(&base_url(), &name));
        })
        .join();
    }
}

/// The role that owns test databases and runs their migrations: a plain, non-superuser role
/// as in production (superusers bypass row-level security even when it is forced, so testing
/// as one would prove nothing about the owner).
pub const OWNER_ROLE: &str = "awooop_test_owner";
const OWNER_PASSWORD: &str = "awooop-test-owner";

async fn create_owned_database(base: &str, name: &str) -> String {
    let mut c = <sqlx::PgConnection as sqlx::Connection>::connect(base)
        .await
        .expect("connect as the PostgreSQL superuser (DATABASE_URL)");
    let create_role = format!(
        "DO $$ BEGIN CREATE ROLE {OWNER_ROLE} LOGIN CREATEROLE NOSUPERUSER NOBYPASSRLS PASSWORD '{OWNER_PASSWORD}'; \
         EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END $$"
    );
    sqlx::raw_sql(sqlx::AssertSqlSafe(create_role))
        .execute(&mut c)
        .await
        .expect("owner role");
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "CREATE DATABASE \"{name}\" OWNER {OWNER_ROLE}"
    )))
    .execute(&mut c)
    .await
    .expect("create test database");
    let opts: sqlx::postgres::PgConnectOptions = base.parse().unwrap();
    format!(
        "postgres://{OWNER_ROLE}:{OWNER_PASSWORD}@{}:{}/{name}",
        opts.get_host(),
        opts.get_port()
    )
}

async fn drop_database(base: &str, name: &str) {
    if let Ok(mut c) = <sqlx::PgConnection as sqlx::Connection>::connect(base).await {
        let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"
        )))
        .execute(&mut c)
        .await;
    }
}

async fn reap_old_databases(base: &str, now: u64) {
    static ONCE: std::sync::Once = std::sync::Once::new();
    let mut first = false;
    ONCE.call_once(|| first = true);
    if !first {
        return;
    }
    let Ok(mut c) = <sqlx::PgConnection as sqlx::Connection>::connect(base).await else {
        return;
    };
    let names: Vec<String> =
        sqlx::query_scalar("SELECT datname FROM pg_database WHERE datname LIKE 'awt\\_%'")
            .fetch_all(&mut c)
            .await
            .unwrap_or_default();
    for n in names {
        let ts: Option<u64> = n.split('_').nth(1).and_then(|t| t.parse().ok());
        if ts.is_some_and(|t| now.saturating_sub(t) > 3600) {
            drop_database(base, &n).await;
        }
    }
}

/// A raw transaction on `pool` inside `project`'s RLS scope, for tests that check what the
/// database itself allows.
///
/// Begun as the platform begins its transactions (`tenancy::begin`): tests that end the pool's
/// sessions read their results through the same pool right after.
pub async fn scoped_tx(pool: &PgPool, project: &str) -> sqlx::Transaction<'static, sqlx::Postgres> {
    let mut tx = awooop::tenancy::begin(pool, "BEGIN").await.unwrap();
    sqlx::query("SELECT set_config('awooop.project_id', $1, true)")
        .bind(project)
        .execute(&mut *tx)
        .await
        .unwrap();
    tx
}

pub const KEY_ID: &str = "test-key";

pub fn test_key() -> Vec<u8> {
    vec![0x42; 32]
}

pub fn test_keyring() -> Keyring {
    let mut k = Keyring::default();
    k.insert(KEY_ID, test_key());
    k
}

pub fn admin() -> Actor {
    Actor::cli("admin")
}

pub fn pid(s: &str) -> ProjectId {
    ProjectId::parse(s).unwrap()
}

/// Create a project with a registered signing key.
pub async fn project(cp: &ControlPlane, id: &str, required_approvals: i32) -> ProjectId {
    cp.create_project(
        &admin(),
        NewProject {
            project_id: id.into(),
            display_name: format!("Project {id}"),
            required_approvals: Some(required_approvals),
        },
    )
    .await
    .expect("create project");
    let p = pid(id);
    tenancy::scope(p.clone(), cp.register_signing_key(&admin(), KEY_ID))
        .await
        .expect("register key");
    p
}

pub fn runtime_body(max_concurrent_runs: u32) -> Value {
    json!({
        "max_attempts": 3, "lease_seconds": 30, "heartbeat_seconds": 5,
        "run_deadline_seconds": 600, "idempotency_ttl_seconds": 86400,
        "retention_days": 7, "max_concurrent_runs": max_concurrent_runs, "max_input_bytes": 65536
    })
}

pub fn agent_body() -> Value {
    json!({
        "display_name": "Triage",
        "context_domain": "infra",
        "tools": ["k8s__get_pods"],
        "safety": {"max_risk": "read_only", "max_steps": 8, "max_tokens_per_run": 10000, "timeout_seconds": 60},
        "executor": {"type": "scripted", "steps": [
            {"type": "tool_call", "key": "pods", "tool": "k8s__get_pods", "arguments": {"namespace": "default"}},
            {"type": "output", "key": "summary", "template": "{{steps.pods}}"}
        ]}
    })
}

/// Draft + sign + publish in the current tenant scope; returns the revision id.
pub async fn publish(cp: &ControlPlane, kind: ContractKind, name: &str, body: Value) -> Uuid {
    let d = cp
        .create_draft(&admin(), kind, name, body)
        .await
        .expect("draft");
    let req = cp.sign_draft(d.draft.draft_id, KEY_ID).await.expect("sign");
    cp.publish(&admin(), d.draft.draft_id, req)
        .await
        .expect("publish")
        .revision_id
}

/// Approve by `n` distinct approvers and activate.
pub async fn approve_and_activate(cp: &ControlPlane, rev: Uuid, n: usize) {
    for i in 0..n {
        cp.approve(&Actor::cli(&format!("approver{i}")), rev)
            .await
            .expect("approve");
    }
    cp.activate(&admin(), rev).await.expect("activate");
}

#[track_caller]
pub fn assert_code<T: std::fmt::Debug>(res: Result<T, awooop::error::Error>, code: &str) {
    match res {
        Ok(v) => panic!("expected {code}, got Ok({v:?})"),
        Err(e) => assert_eq!(e.code.as_str(), code, "{e}"),
    }
}

/// A private redis-server on a free port, for tests that stop and restart Redis.
pub struct PrivateRedis {
    pub port: u16,
    child: Option<Child>,
    dir: PathBuf,
}

impl PrivateRedis {
    pub fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = std::env::temp_dir().join(format!("awooop-redis-{port}"));
        std::fs::create_dir_all(&dir).unwrap();
        let mut r = Self {
            port,
            child: None,
            dir,
        };
        r.restart();
        r
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Start (again) with empty memory, as after a crash without persistence.
    pub fn restart(&mut self) {
        self.stop();
        let child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
            ])
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed (scripts/test.sh installs it)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Whether a missing external tool must fail the test rather than skip it: under
/// `scripts/test.sh` (which exports `AWOOOP_REQUIRE_TOOLS=1` after installing every tool) and
/// in CI (`CI=true`).
pub fn tools_required() -> bool {
    std::env::var("AWOOOP_REQUIRE_TOOLS").as_deref() == Ok("1")
        || std::env::var("CI").as_deref() == Ok("true")
}

/// The file every skipped test appends one line to (`test<TAB>tool<TAB>hint`):
/// `target/awooop-test-skips.log`, next to the test binary's own `target/<profile>/deps/`.
/// `scripts/test.sh` empties it before the suite and prints `skipped: N` from it afterwards.
pub fn skip_log() -> PathBuf {
    if let Ok(p) = std::env::var("AWOOOP_SKIP_LOG") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("the test binary's path");
    // target/<profile>/deps/integration-HASH → target/
    let target = exe
        .ancestors()
        .nth(3)
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    target.join("awooop-test-skips.log")
}

/// The one path for "this test requires tool X". `found` is what the caller located (`None`:
/// not installed). With the tool, returns it. Without it: under `scripts/test.sh` or CI
/// ([`tools_required`]) the test fails; elsewhere the skip is recorded in [`skip_log`] (which
/// the suite's summary prints) and on stderr, and `None` tells the test to return.
#[track_caller]
pub fn require_tool<T>(tool: &str, hint: &str, found: Option<T>) -> Option<T> {
    if found.is_some() {
        return found;
    }
    if tools_required() {
        panic!("this test needs {tool}, which is missing: {hint}");
    }
    let test = std::thread::current()
        .name()
        .unwrap_or("unknown test")
        .to_string();
    let line = format!("{test}\t{tool}\t{hint}\n");
    let path = skip_log();
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    use std::io::Write;
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .and_then(|mut f| f.write_all(line.as_bytes()))
        .unwrap_or_else(|e| panic!("record the skip of {test} in {}: {e}", path.display()));
    eprintln!("SKIPPED {test}: needs {tool} ({hint})");
    None
}

/// Keys matching `pattern` in the Redis at `url` (tests use private servers or keys unique to
/// the test, so a KEYS scan is small).
pub async fn redis_keys(url: &str, pattern: &str) -> Vec<String> {
    let client = redis::Client::open(url).unwrap();
    let mut c = client
        .get_multiplexed_async_connection()
        .await
        .expect("connect to Redis");
    let mut keys: Vec<String> = redis::cmd("KEYS")
        .arg(pattern)
        .query_async(&mut c)
        .await
        .unwrap();
    keys.sort();
    keys
}

/// `TTL key` in seconds (-2: no such key, -1: no expiry).
pub async fn redis_ttl(url: &str, key: &str) -> i64 {
    let client = redis::Client::open(url).unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    redis::cmd("TTL")
        .arg(key)
        .query_async(&mut c)
        .await
        .unwrap()
}

/// Wait until `coord` answers PING again (after a Redis restart its connection manager
/// reconnects on its own schedule).
pub async fn wait_for_redis(coord: &Coord) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while coord.ping().await != Some(true) {
        assert!(
            Instant::now() < deadline,
            "Redis did not answer through the coordinator within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// An HTTP server on 127.0.0.1 that answers everything with `307` to `target` + the path.
pub struct Redirector {
    pub base_url: String,
    hits: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl Redirector {
    pub async fn start(target: &str) -> Self {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (h, target) = (hits.clone(), target.trim_end_matches('/').to_string());
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                h.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let target = target.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 65536];
                    let n = s.read(&mut buf).await.unwrap_or(0);
                    let req = String::from_utf8_lossy(&buf[..n]);
                    let path = req.split(' ').nth(1).unwrap_or("/").to_string();
                    let resp = format!(
                        "HTTP/1.1 307 Temporary Redirect\r\nLocation: {target}{path}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                    );
                    let _ = s.write_all(resp.as_bytes()).await;
                });
            }
        });
        Self {
            base_url: format!("http://{addr}"),
            hits,
        }
    }

    pub fn hits(&self) -> usize {
        self.hits.load(std::sync::atomic::Ordering::SeqCst)
    }
}
