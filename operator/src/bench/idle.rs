//! `awooop bench idle`: what project-bound worker processes cost while they have nothing to do.
//!
//! The operator runs one worker Deployment per project (`awooop worker --project P`), so a
//! platform with many tenants runs many worker processes, most of them idle most of the time.
//! Each one keeps polling the queue, reaping expired leases, expiring approvals and looking for
//! outbound messages whether or not its tenant has work: PostgreSQL CPU that grows with the
//! number of tenants, not with the work. This benchmark starts K real worker processes (this
//! binary's `worker --project tenant-i`, the production settings: nothing shortened) on a
//! scratch database, lets them settle, and measures over a window in which nothing is queued:
//!
//! - `pg_cpu_us_per_worker_s`: the CPU time of the scratch database's backends (the workers'
//!   connections; from `/proc/<pid>/task/*/schedstat`, nanoseconds) per worker and second;
//! - `worker_cpu_us_per_worker_s`: the worker processes' own CPU, the same way;
//! - `xacts_per_worker_s`: transactions the database counted (`pg_stat_database`, which a
//!   backend reports at most once a second: approximate at the window's edges);
//! - `backends_per_worker`: connections held per worker process;
//! - `pg_cpu_us_per_worker_s_backlog`: the first figure again in a second window, after a
//!   project no worker here serves (`tenant-{K+1}`) got a backlog of queued runs (20,000 quick,
//!   50,000 full): what one tenant's backlog costs every other tenant's idle workers;
//! - `pg_cpu_us_per_worker_s_traffic`, `worker_cpu_us_per_worker_s_traffic`: both CPU figures
//!   in a third window, while that neighbour gets new runs at a steady rate (`traffic_runs_s`,
//!   one `RunService::create` at a time from this process): what another tenant's work costs
//!   idle workers that cannot take it (their wake-ups);
//!
//! and then how soon an idle worker starts a run: one run at a time, each after a second of
//! quiet, created through `RunService::create`, from the creating transaction's start to the
//! claim (the database's clock): first one in each of a few tenants (`pickup_first_p50_ms`:
//! the worker's first run, with its caches and its connections' statements cold), then one
//! more in each of them (`pickup_p50_ms`, `pickup_p99_ms`: an idle, warm worker); then the
//! connections each worker holds (`backends_per_worker_end`, `elapsed_s` after the start).
//!
//! Each worker process holds up to about five connections (its pool of four, its listeners), so K is
//! bounded by the server's `max_connections`: the default K is 16.
//!
//! The PostgreSQL figures count the backends of the worker processes' own connections (matched
//! by their TCP ports, from `/proc`), not this process's. PostgreSQL must run on this machine
//! for the CPU figures (they read `/proc`); elsewhere they print as NaN and the rest still
//! measures.

use std::time::{Duration, Instant};

use serde_json::json;

use super::runs::{Setup, setup, tenant_projects};
use super::{drop_scratch, percentile_ms, scratch_database};
use crate::auth::Actor;
use crate::config::BenchArgs;
use crate::runtime::{CreateRun, RunService};
use crate::tenancy;

pub async fn run(args: &BenchArgs) -> anyhow::Result<()> {
    let k = args.projects.unwrap_or(16).max(1);
    let window = Duration::from_secs(if args.quick { 6 } else { 30 });
    let backlog = if args.quick { 20_000 } else { 50_000 };
    // Past the workers' start-up: their first claims, reaps and passes, and the first use of
    // each pooled connection (a session's first statements are planned, its PL/pgSQL compiled).
    let settle = Duration::from_secs(if args.quick { 4 } else { 10 });
    let pickups = if args.quick { 3 } else { 10 };
    let traffic = TRAFFIC_RUNS_S;
    let base = args
        .db
        .database_url
        .clone()
        .unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let started = Instant::now();
    let scratch = scratch_database(&base, "idle").await?;
    let res = bench(&base, &scratch, k, (window, settle), backlog, pickups).await;
    drop_scratch(&base, &scratch).await;
    let f = res?;
    let per = |x: f64| x / k as f64 / window.as_secs_f64();
    println!(
        "idle_workers={k} window_s={} pg_cpu_us_per_worker_s={:.0} worker_cpu_us_per_worker_s={:.0} \
         xacts_per_worker_s={:.2} backends_per_worker={:.1} backlog={backlog} pg_cpu_us_per_worker_s_backlog={:.0} \
         traffic_runs_s={traffic} pg_cpu_us_per_worker_s_traffic={:.0} worker_cpu_us_per_worker_s_traffic={:.0} \
         pickup_first_p50_ms={:.2} pickup_p50_ms={:.2} pickup_p99_ms={:.2} backends_per_worker_end={:.1} elapsed_s={:.0}",
        window.as_secs(),
        per(f.pg_cpu_us),
        per(f.worker_cpu_us),
        per(f.xacts),
        f.backends as f64 / k as f64,
        per(f.pg_cpu_us_backlog),
        per(f.traffic.pg_cpu_us),
        per(f.traffic.worker_cpu_us),
        f.pickup_first,
        f.pickup[0],
        f.pickup[1],
        f.backends_end as f64 / k as f64,
        started.elapsed().as_secs_f64(),
    );
    Ok(())
}

/// Runs a second created in the neighbour's project during the traffic window.
const TRAFFIC_RUNS_S: u32 = 100;

struct Figures {
    /// CPU of the scratch database's backends over the window, microseconds.
    pg_cpu_us: f64,
    /// The same in the second window, with another project's backlog queued.
    pg_cpu_us_backlog: f64,
    /// The third window: the neighbour gets new runs.
    traffic: Window,
    /// CPU of the worker processes over the window, microseconds.
    worker_cpu_us: f64,
    /// Transactions committed or rolled back in the scratch database over the window.
    xacts: f64,
    /// The workers' backends at the quiet window's end.
    backends: usize,
    /// The same after the pickups.
    backends_end: usize,
    /// A worker's first run (p50).
    pickup_first: f64,
    /// An idle, warm worker's run (p50, p99).
    pickup: [f64; 2],
}

async fn bench(
    base: &str,
    url: &str,
    k: usize,
    (window, settle): (Duration, Duration),
    backlog: i64,
    pickups: usize,
) -> anyhow::Result<Figures> {
    use sqlx::Connection;
    let mut admin = sqlx::PgConnection::connect(base).await?;
    let max: i64 = sqlx::query_scalar("SELECT current_setting('max_connections')::bigint")
        .fetch_one(&mut admin)
        .await?;
    anyhow::ensure!(
        (k as i64) * 5 + 10 <= max,
        "{k} worker processes need about {} connections; the server allows {max} \
         (max_connections): ask for fewer with --projects",
        k * 5 + 10
    );
    let s = setup(url).await?;
    // One more project than workers: the neighbour whose backlog no worker here serves.
    let mut tenants = tenant_projects(&s, k + 1).await?;
    let neighbour = tenants.pop().expect("k + 1 projects");
    let db = super::database_name(url);
    let exe = std::env::current_exe()?;
    let mut children = Vec::with_capacity(k);
    for p in &tenants {
        children.push(
            tokio::process::Command::new(&exe)
                .args(["worker", "--project", p.as_str(), "--database-url", url])
                .args(["--db-max-connections", "4"])
                .env("RUST_LOG", "error")
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .kill_on_drop(true)
                .spawn()?,
        );
    }
    let res = measure(
        &s,
        &mut admin,
        &db,
        &mut children,
        (window, settle),
        (&neighbour, backlog),
        (&tenants, pickups),
    )
    .await;
    for c in &mut children {
        let _ = c.start_kill();
    }
    for c in &mut children {
        let _ = c.wait().await;
    }
    res
}

async fn measure(
    s: &Setup,
    admin: &mut sqlx::PgConnection,
    db: &str,
    children: &mut [tokio::process::Child],
    (window, settle): (Duration, Duration),
    (neighbour, backlog): (&tenancy::ProjectId, i64),
    (tenants, pickups): (&[tenancy::ProjectId], usize),
) -> anyhow::Result<Figures> {
    // Every worker has connected and listens (its queue listener, the gateway's snapshot
    // listener) before the window opens.
    let started = Instant::now();
    loop {
        let listening: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND query ILIKE 'LISTEN%awooop_runs%'",
        )
        .bind(db)
        .fetch_one(&mut *admin)
        .await?;
        if listening as usize >= children.len() {
            break;
        }
        for (i, c) in children.iter_mut().enumerate() {
            if let Some(status) = c.try_wait()? {
                anyhow::bail!("worker process {i} exited before the window: {status}");
            }
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(60),
            "only {listening} of {} workers listen after 60 s",
            children.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(settle).await;

    let workers: Vec<u32> = children.iter().filter_map(|c| c.id()).collect();
    let quiet = cpu_window(admin, db, &workers, window).await?;
    eprintln!(
        "{} workers idle for {:.0} s: PostgreSQL backends {:.1} ms CPU, worker processes {:.1} ms, {} transactions",
        children.len(),
        window.as_secs_f64(),
        quiet.pg_cpu_us / 1e3,
        quiet.worker_cpu_us / 1e3,
        quiet.xacts
    );
    // A neighbour's backlog: queued runs of a project none of these workers serves.
    super::runs::enqueue_in(s, neighbour, backlog, 64).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let busy = cpu_window(admin, db, &workers, window).await?;
    eprintln!(
        "the same with {backlog} runs queued in {neighbour}: PostgreSQL backends {:.1} ms CPU, {} transactions",
        busy.pg_cpu_us / 1e3,
        busy.xacts
    );
    // The neighbour's new runs, one at a time at a steady rate, while the window runs.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let creator = tokio::spawn(create_steadily(s, neighbour.clone(), stop.clone()));
    let traffic = cpu_window(admin, db, &workers, window).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let created = creator.await??;
    let traffic = traffic?;
    eprintln!(
        "while {neighbour} got {created} new runs ({TRAFFIC_RUNS_S}/s): PostgreSQL backends {:.1} ms CPU, worker processes {:.1} ms",
        traffic.pg_cpu_us / 1e3,
        traffic.worker_cpu_us / 1e3,
    );

    // Pickup by an idle worker: one run at a time after a quiet second, first in each of
    // `pickups` tenants (each worker's first run), then again in each of them.
    let runs = RunService::new(s.p.control.clone());
    let pickups = pickups.min(tenants.len());
    let mut waits = Vec::with_capacity(pickups * 2);
    for i in 0..pickups * 2 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let project = tenants[i % pickups].clone();
        let req = CreateRun {
            agent: "noop".into(),
            input: json!({"idle": i}),
            mode: None,
            reply_to: None,
        };
        let a = tenancy::scope(
            project.clone(),
            runs.create(&Actor::cli("bench"), req, None, None),
        )
        .await?;
        let deadline = Instant::now() + Duration::from_secs(10);
        let wait = loop {
            let row: Option<(f64,)> = tenancy::scope(project.clone(), async {
                let mut tx = s.p.control.db().tenant().await?;
                let row = sqlx::query_as(
                    "SELECT extract(epoch FROM started_at - created_at)::float8 FROM runs \
                     WHERE run_id = $1 AND started_at IS NOT NULL",
                )
                .bind(a.run_id)
                .fetch_optional(&mut *tx)
                .await?;
                tx.commit().await?;
                Ok::<_, crate::error::Error>(row)
            })
            .await?;
            if let Some((secs,)) = row {
                break Duration::from_secs_f64(secs.max(0.0));
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "run {} of {project} did not start within 10 s",
                a.run_id
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        };
        waits.push(wait);
    }
    // Connections held once the pickups are over (more than a minute after the start on a
    // full run: the pool's idle timeout has closed what the start-up opened and nothing used).
    let backends_end = backends(admin, db, &workers).await?.len();
    let mut warm = waits.split_off(pickups);
    waits.sort();
    warm.sort();
    Ok(Figures {
        pg_cpu_us: quiet.pg_cpu_us,
        pg_cpu_us_backlog: busy.pg_cpu_us,
        traffic,
        worker_cpu_us: quiet.worker_cpu_us,
        xacts: quiet.xacts as f64,
        backends: quiet.backends,
        backends_end,
        pickup_first: percentile_ms(&waits, 50.0),
        pickup: [percentile_ms(&warm, 50.0), percentile_ms(&warm, 99.0)],
    })
}

/// Create runs of `project` through the platform's path, [`TRAFFIC_RUNS_S`] a second, one at
/// a time, until `stop`; returns how many.
fn create_steadily(
    s: &Setup,
    project: tenancy::ProjectId,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> impl std::future::Future<Output = anyhow::Result<u64>> + Send + 'static {
    let runs = RunService::new(s.p.control.clone());
    async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1) / TRAFFIC_RUNS_S.max(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut n = 0u64;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            tick.tick().await;
            let req = CreateRun {
                agent: "noop".into(),
                input: json!({"traffic": n}),
                mode: None,
                reply_to: None,
            };
            tenancy::scope(
                project.clone(),
                runs.create(&Actor::cli("bench"), req, None, None),
            )
            .await?;
            n += 1;
        }
        Ok(n)
    }
}

/// What one measurement window cost.
struct Window {
    /// CPU of the database's backends, microseconds (NaN when they are not on this machine).
    pg_cpu_us: f64,
    /// CPU of the worker processes, microseconds.
    worker_cpu_us: f64,
    /// Transactions the database counted.
    xacts: i64,
    /// The database's backends at the window's end.
    backends: usize,
}

/// Measure `window` of database `db` and the processes `workers`: the CPU of the backends
/// serving the workers' connections (all of the database's backends when the workers' ports
/// cannot be read), and of the workers themselves.
async fn cpu_window(
    admin: &mut sqlx::PgConnection,
    db: &str,
    workers: &[u32],
    window: Duration,
) -> anyhow::Result<Window> {
    let pg0: std::collections::HashMap<i32, u64> = backends(admin, db, workers)
        .await?
        .into_iter()
        .filter_map(|p| cpu_ns(p as u32).map(|c| (p, c)))
        .collect();
    let w0: u64 = workers.iter().filter_map(|p| cpu_ns(*p)).sum();
    let x0 = xacts(admin, db).await?;
    tokio::time::sleep(window).await;
    let x1 = xacts(admin, db).await?;
    let w1: u64 = workers.iter().filter_map(|p| cpu_ns(*p)).sum();
    let end = backends(admin, db, workers).await?;
    let mut pg = 0u64;
    let mut seen = 0usize;
    for p in &end {
        if let Some(c) = cpu_ns(*p as u32) {
            seen += 1;
            pg += c.saturating_sub(pg0.get(p).copied().unwrap_or(0));
        }
    }
    Ok(Window {
        pg_cpu_us: if seen == 0 { f64::NAN } else { pg as f64 / 1e3 },
        worker_cpu_us: if workers.is_empty() {
            f64::NAN
        } else {
            w1.saturating_sub(w0) as f64 / 1e3
        },
        xacts: x1 - x0,
        backends: end.len(),
    })
}

/// The backends connected to database `db` from the processes `workers` (every backend of `db`
/// when none of their ports can be read).
async fn backends(
    admin: &mut sqlx::PgConnection,
    db: &str,
    workers: &[u32],
) -> sqlx::Result<Vec<i32>> {
    let all: Vec<(i32, Option<i32>)> =
        sqlx::query_as("SELECT pid, client_port FROM pg_stat_activity WHERE datname = $1")
            .bind(db)
            .fetch_all(admin)
            .await?;
    let ports = local_ports(workers);
    if ports.is_empty() {
        return Ok(all.into_iter().map(|(pid, _)| pid).collect());
    }
    Ok(all
        .into_iter()
        .filter(|(_, port)| port.is_some_and(|p| ports.contains(&(p as u16))))
        .map(|(pid, _)| pid)
        .collect())
}

/// The local TCP ports of the sockets processes `pids` hold open (their file descriptors'
/// socket inodes, looked up in `/proc/net/tcp` and `tcp6`); empty off Linux.
fn local_ports(pids: &[u32]) -> std::collections::HashSet<u16> {
    let mut inodes = std::collections::HashSet::new();
    for pid in pids {
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if let Ok(target) = std::fs::read_link(fd.path()) {
                let t = target.to_string_lossy();
                if let Some(inode) = t.strip_prefix("socket:[").and_then(|r| r.strip_suffix(']')) {
                    inodes.insert(inode.to_string());
                }
            }
        }
    }
    let mut ports = std::collections::HashSet::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        // `sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode ...`
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            if cols.len() > 9 && inodes.contains(cols[9]) {
                let port = cols[1]
                    .rsplit_once(':')
                    .and_then(|(_, p)| u16::from_str_radix(p, 16).ok());
                ports.extend(port);
            }
        }
    }
    ports
}

/// Transactions committed or rolled back in database `db` so far (as its backends reported).
async fn xacts(admin: &mut sqlx::PgConnection, db: &str) -> sqlx::Result<i64> {
    sqlx::query_scalar(
        "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = $1",
    )
    .bind(db)
    .fetch_one(admin)
    .await
}

/// CPU time of every thread of process `pid` so far, in nanoseconds (the first field of each
/// `/proc/<pid>/task/<tid>/schedstat`); `None` when the process is not on this machine.
fn cpu_ns(pid: u32) -> Option<u64> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    let mut total = 0u64;
    for t in tasks.flatten() {
        let stat = std::fs::read_to_string(t.path().join("schedstat")).ok()?;
        total += stat.split_whitespace().next()?.parse::<u64>().ok()?;
    }
    Some(total)
}
