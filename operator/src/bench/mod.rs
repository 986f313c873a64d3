//! `awooop bench <area>`: benchmarks against the real PostgreSQL (and Redis when configured).
//!
//! Benchmarks that write run in a scratch database created next to DATABASE_URL's and dropped
//! afterwards (published revisions are immutable by design, so they cannot be cleaned up in
//! place). The last line printed is `key=value` pairs.

mod approvals;
mod budget;
mod channels;
mod contracts;
mod events;
mod gateway;
mod idle;
mod projection;
mod redact;
mod runs;

use std::path::PathBuf;
use std::time::Duration;

use crate::auth::Actor;
use crate::config::{BenchArgs, DbArgs, KeyringArgs};
use crate::control::NewProject;
use crate::platform::Platform;
use crate::tenancy::ProjectId;

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    match args.area.as_str() {
        "contracts" => contracts::run(&args).await,
        "runs" => runs::run(&args).await,
        "budget" => budget::run(&args).await,
        "projection" => projection::run(&args).await,
        "gateway" => gateway::run(&args).await,
        "channels" => channels::run(&args).await,
        "approvals" => approvals::run(&args).await,
        "events" => events::run(&args).await,
        "idle" => idle::run(&args).await,
        "redact" => redact::run(&args).await,
        other => anyhow::bail!("unknown bench area {other}"),
    }
}

/// Percentile (0..=100) of a sorted slice of durations, in milliseconds.
pub fn percentile_ms(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)].as_secs_f64() * 1000.0
}

/// A scratch database on the server of `base_url`, dropped by `drop_scratch`.
pub async fn scratch_database(base_url: &str, tag: &str) -> anyhow::Result<String> {
    let name = format!("awooop_bench_{tag}_{}", std::process::id());
    let url = crate::db::ensure_database(base_url, &name)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    crate::db::migrate(&url)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    // An experiment on the schema (docs/benchmarks.md, "Bisecting"): SQL run as the owner on the
    // scratch database after the migrations, e.g. a trigger dropped or an older one put back,
    // to measure what one database object costs without rebuilding the binary. Never on
    // anything but the scratch database.
    if let Ok(path) = std::env::var("AWOOOP_BENCH_SCRATCH_SQL") {
        let sql = std::fs::read_to_string(&path)
            .map_err(|e| anyhow::anyhow!("AWOOOP_BENCH_SCRATCH_SQL {path}: {e}"))?;
        let owner = crate::db::connect_owner(&url, 1)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(&owner)
            .await
            .map_err(|e| anyhow::anyhow!("AWOOOP_BENCH_SCRATCH_SQL {path}: {e}"))?;
        owner.close().await;
        eprintln!("scratch database {name}: applied {path}");
    }
    Ok(url)
}

/// The database name of a connection URL (its last path segment, without the query).
pub fn database_name(url: &str) -> String {
    url.rsplit('/')
        .next()
        .unwrap_or_default()
        .split('?')
        .next()
        .unwrap_or_default()
        .to_string()
}

pub async fn drop_scratch(base_url: &str, scratch_url: &str) {
    let name = database_name(scratch_url);
    if !name.starts_with("awooop_bench_") {
        return;
    }
    // For a look at what a benchmark wrote (its runs' timings, its plans) after it ended.
    if std::env::var_os("AWOOOP_BENCH_KEEP_SCRATCH").is_some() {
        eprintln!("scratch database {name} kept (AWOOOP_BENCH_KEEP_SCRATCH)");
        return;
    }
    let admin = crate::db::with_database(base_url, "postgres");
    if let Ok(mut conn) = <sqlx::PgConnection as sqlx::Connection>::connect(&admin).await {
        let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"
        )))
        .execute(&mut conn)
        .await;
    }
}

/// The platform on a (scratch) database with one project `bench` (one approval needed) and a
/// signing key `bench` in a keyring under a temporary state folder: the common start of the
/// benchmarks that publish contracts.
pub async fn bench_project(
    url: &str,
    tag: &str,
    db_max_connections: u32,
) -> anyhow::Result<(Platform, ProjectId, PathBuf)> {
    let state = std::env::temp_dir().join(format!("awooop-bench-{tag}-{}", std::process::id()));
    let dbargs = DbArgs {
        database_url: Some(url.into()),
        app_database_url: None,
        db_max_connections,
        state_dir: state.clone(),
    };
    let keyring = KeyringArgs {
        keyring: Some(state.join("keyring")),
    };
    let p = Platform::connect(&dbargs, None, Some(&keyring)).await?;
    p.control
        .create_project(
            &Actor::cli("bench"),
            NewProject {
                project_id: "bench".into(),
                display_name: "bench".into(),
                required_approvals: Some(1),
            },
        )
        .await?;
    let project = ProjectId::parse("bench")?;
    crate::platform::create_signing_key(&p, &state.join("keyring"), &project, "bench").await?;
    Ok((p, project, state))
}
