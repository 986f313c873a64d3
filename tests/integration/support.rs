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
}

impl TestDb {
    pub async fn new() -> Self {
        let base = base_url();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        reap_old_databases(&base, now).await;
        let name = format!(
            "awt_{now}_{}_{}",
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
        }
    }

    pub fn db(&self) -> Db {
        Db::new(self.app.clone())
    }

    pub fn control(&self, coord: Coord) -> ControlPlane {
        ControlPlane::new(self.db(), coord, test_keyring())
    }

    pub async fn cleanup(self) {
        self.app.close().await;
        self.owner.close().await;
        drop_database(&base_url(), &self.name).await;
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
pub async fn scoped_tx(pool: &PgPool, project: &str) -> sqlx::Transaction<'static, sqlx::Postgres> {
    let mut tx = pool.begin().await.unwrap();
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
