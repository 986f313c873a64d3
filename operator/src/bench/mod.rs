//! `awooop bench <area>`: benchmarks against the real PostgreSQL (and Redis when configured).
//!
//! Benchmarks that write run in a scratch database created next to DATABASE_URL's and dropped
//! afterwards (published revisions are immutable by design, so they cannot be cleaned up in
//! place). The last line printed is `key=value` pairs.

mod budget;
mod contracts;
mod gateway;
mod projection;
mod runs;

use std::time::Duration;

use crate::config::BenchArgs;

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    match args.area.as_str() {
        "contracts" => contracts::run(&args).await,
        "runs" => runs::run(&args).await,
        "budget" => budget::run(&args).await,
        "projection" => projection::run(&args).await,
        "gateway" => gateway::run(&args).await,
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
    Ok(url)
}

pub async fn drop_scratch(base_url: &str, scratch_url: &str) {
    let name = scratch_url
        .rsplit('/')
        .next()
        .unwrap_or_default()
        .split('?')
        .next()
        .unwrap_or_default()
        .to_string();
    if !name.starts_with("awooop_bench_") {
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
