//! `awooop bench runs`: throughput of the runtime (claim, journal one step, complete), pickup
//! latency at low load, and recovery time after a worker is killed.
//!
//! Throughput is measured twice: `runs_per_sec` with runs created through the platform's own
//! create path (`RunService::create`) under the default runtime limits (64 concurrent runs per
//! project), and `runs_per_sec_bulk_uncapped` with runs bulk-inserted in one statement without
//! the per-project cap (the workers' own ceiling). With `--projects T` a third drain spreads the
//! same number of bulk-inserted runs over T projects capped at 64 each
//! (`runs_per_sec_tenants`): the multi-tenant shape, where every claim meets several backlogs;
//! a fourth drains the same again with one worker bound to each project
//! (`runs_per_sec_tenants_bound`), as `awooop worker --project` deployments do.
//! Pickup latency uses the create path too.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde_json::json;

use super::{drop_scratch, percentile_ms, scratch_database};
use crate::auth::Actor;
use crate::config::BenchArgs;
use crate::contracts::ContractKind;
use crate::platform::Platform;
use crate::runtime::executor::{
    Executor, GuardedGateway, Journal, NoGateway, Outcome, RunContext, ScriptedExecutor,
};
use crate::runtime::worker::{Worker, WorkerConfig, shutdown_channel};
use crate::runtime::{CreateRun, RunService};
use crate::tenancy::{self, ProjectId};

pub async fn run(args: &BenchArgs) -> anyhow::Result<()> {
    let n = args.runs.unwrap_or(if args.quick { 5_000 } else { 20_000 });
    let workers = args.concurrency.unwrap_or(4);
    let base = args
        .db
        .database_url
        .clone()
        .unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let scratch = scratch_database(&base, "runs").await?;
    let held = if args.held_snapshot {
        Some(hold_snapshot(&base).await?)
    } else {
        None
    };
    let res = bench(&scratch, n, workers, args.quick, args.projects).await;
    drop_scratch(&base, &scratch).await;
    let r = res?;
    let mut line = format!(
        "runs_per_sec={:.0} runs_per_sec_bulk_uncapped={:.0} creates_per_sec={:.0} pickup_p50_ms={:.2} pickup_p95_ms={:.2} pickup_p99_ms={:.2} pickup_call_p50_ms={:.2} pickup_call_p99_ms={:.2} recovery_s={:.2} capped_peak_running={} cap=64 runs={n} workers={workers}",
        r.rps,
        r.rps_raw,
        r.creates_per_sec,
        r.pickup[0],
        r.pickup[1],
        r.pickup[2],
        r.pickup_call[0],
        r.pickup_call[1],
        r.recovery,
        r.capped_peak
    );
    if args.held_snapshot {
        line.push_str(" held_snapshot=1");
    }
    // Transport, for like-for-like comparisons: sqlx negotiates TLS when the server offers it
    // (`sslmode=prefer`), node-postgres (the peer) does not unless told to, so the peer is told
    // to match; TLS on a loopback connection cost this benchmark 2-17 % (docs/benchmarks.md,
    // "Session 22").
    let tls = on_off(connection_tls(&base).await?);
    line.push_str(&format!(" db_tls={tls}"));
    if let Some(t) = r.rps_tenants {
        line.push_str(&format!(
            " runs_per_sec_tenants={t:.0} tenants={}",
            args.projects.unwrap_or(1)
        ));
    }
    if let Some(t) = r.rps_tenants_bound {
        line.push_str(&format!(" runs_per_sec_tenants_bound={t:.0}"));
    }
    if args.peer {
        // The peer drains the same number of jobs right after ours, on the same server, so
        // both figures see the same machine load.
        let (peer, peer_tls) = peer_jobs_per_sec(&base, n, tls == "on").await?;
        if peer_tls != tls {
            eprintln!(
                "note: this benchmark's connections use TLS {tls}, the peer's {peer_tls} \
                 although it was told to match: the ratio is not like for like \
                 (?sslmode=disable in DATABASE_URL puts both in plain text)"
            );
        }
        line.push_str(&format!(
            " peer=graphile-worker@0.17.3 peer_jobs_per_sec={peer:.0} peer_tls={peer_tls} ratio={:.2} ratio_bulk_uncapped={:.2}",
            r.rps / peer,
            r.rps_raw / peer
        ));
    }
    if let Some(conn) = held {
        // Closing the connection ends its transaction.
        sqlx::Connection::close(conn).await?;
    }
    println!("{line}");
    Ok(())
}

/// Whether a connection to `url`, made as the platform makes its own, uses TLS.
async fn connection_tls(url: &str) -> anyhow::Result<bool> {
    use sqlx::Connection;
    let mut c = sqlx::PgConnection::connect(url).await?;
    let tls: bool = sqlx::query_scalar(
        "SELECT coalesce((SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()), false)",
    )
    .fetch_one(&mut c)
    .await?;
    c.close().await?;
    Ok(tls)
}

fn on_off(b: bool) -> &'static str {
    if b { "on" } else { "off" }
}

/// Run scripts/bench-runs-peer.sh (graphile-worker 0.17.3, local queue 500, batched
/// completion, 10 concurrent, `n` no-op jobs) against `base`'s server; its jobs per second
/// and whether its connections used TLS ("on"/"off"). `tls`: ours do, so the peer's should too
/// (node-postgres uses TLS only when told to; without certificate checks, as `sslmode=prefer`).
async fn peer_jobs_per_sec(base: &str, n: usize, tls: bool) -> anyhow::Result<(f64, String)> {
    // From the repository root (the usual place to run benchmarks), else next to the sources.
    let script = [
        std::path::PathBuf::from("scripts/bench-runs-peer.sh"),
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/bench-runs-peer.sh"),
    ]
    .into_iter()
    .find(|p| p.exists())
    .ok_or_else(|| {
        anyhow::anyhow!("scripts/bench-runs-peer.sh not found: run from the repository root")
    })?;
    let out = tokio::process::Command::new("bash")
        .arg(&script)
        .arg(n.to_string())
        .arg("10")
        .env("DATABASE_URL", base)
        .env("PEER_SSLMODE", if tls { "no-verify" } else { "disable" })
        .stderr(std::process::Stdio::inherit())
        .output()
        .await?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    anyhow::ensure!(out.status.success(), "peer benchmark failed: {stdout}");
    eprintln!("{}", stdout.trim());
    parse_peer_line(&stdout)
}

/// The peer's `key=value` line: its jobs per second (positive) and its transport ("on"/"off").
fn parse_peer_line(stdout: &str) -> anyhow::Result<(f64, String)> {
    let field = |k: &str| {
        stdout
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix(k).and_then(|v| v.strip_prefix('=')))
    };
    let rate = field("peer_jobs_per_sec")
        .and_then(|v| v.parse::<f64>().ok())
        .filter(|v| *v > 0.0)
        .ok_or_else(|| anyhow::anyhow!("peer benchmark printed no peer_jobs_per_sec: {stdout}"))?;
    let tls = field("peer_tls")
        .filter(|v| matches!(*v, "on" | "off"))
        .ok_or_else(|| anyhow::anyhow!("peer benchmark printed no peer_tls: {stdout}"))?;
    Ok((rate, tls.to_string()))
}

struct Figures {
    /// Runs created through `RunService::create` with the default limits, drained.
    rps: f64,
    /// Runs bulk-inserted with no per-project concurrency cap, drained.
    rps_raw: f64,
    /// (`--projects T`) The same number of runs over T projects capped at 64 each, drained.
    rps_tenants: Option<f64>,
    /// (`--projects T`) The same again, drained by one worker bound to each project.
    rps_tenants_bound: Option<f64>,
    /// The most runs of one project seen running at once in the capped drains (cap 64).
    capped_peak: i64,
    creates_per_sec: f64,
    /// Created-at to started-at (the database's clock), p50/p95/p99.
    pickup: [f64; 3],
    /// The caller's call of `RunService::create` to started-at, p50/p99.
    pickup_call: [f64; 2],
    recovery: f64,
}

pub(super) struct Setup {
    pub(super) p: Platform,
    project: ProjectId,
    state: std::path::PathBuf,
}

pub(super) async fn setup(url: &str) -> anyhow::Result<Setup> {
    let (p, project, state) = super::bench_project(url, "runs", 24).await?;
    publish_noop(&p, &project).await?;
    Ok(Setup { p, project, state })
}

/// The no-op agent (one output step), published and active in `project`.
async fn publish_noop(p: &Platform, project: &ProjectId) -> anyhow::Result<()> {
    let admin = Actor::cli("bench");
    tenancy::scope(project.clone(), async {
        let body = json!({"display_name": "noop", "context_domain": "bench",
            "safety": {"max_risk": "read_only", "max_steps": 1, "max_tokens_per_run": 1, "timeout_seconds": 600},
            "executor": {"type": "scripted", "steps": [{"type": "output", "key": "done", "template": "ok"}]}});
        let d = p.control.create_draft(&admin, ContractKind::Agent, "noop", body).await?;
        let req = p.control.sign_draft(d.draft.draft_id, "bench").await?;
        let rev = p.control.publish(&admin, d.draft.draft_id, req).await?;
        p.control.approve(&Actor::cli("a"), rev.revision_id).await?;
        p.control.activate(&admin, rev.revision_id).await?;
        Ok::<_, crate::error::Error>(())
    })
    .await?;
    Ok(())
}

/// Create `n` runs of the no-op agent through the platform's own path
/// ([`RunService::create`]: role check, active revisions, the runtime contract's limits,
/// input size, insert and audit), 16 callers at a time. Returns creates per second.
async fn create_runs(s: &Setup, n: usize) -> anyhow::Result<f64> {
    let runs = RunService::new(s.p.control.clone());
    let callers = 16.min(n.max(1));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..callers {
        let each = n / callers + usize::from(c < n % callers);
        let (runs, project) = (runs.clone(), s.project.clone());
        tasks.push(tokio::spawn(tenancy::scope(project, async move {
            for i in 0..each {
                let req = CreateRun {
                    agent: "noop".into(),
                    input: json!({"c": c, "i": i}),
                    mode: None,
                    reply_to: None,
                };
                runs.create(&Actor::cli("bench"), req, None, None).await?;
            }
            Ok::<_, crate::error::Error>(())
        })));
    }
    for t in tasks {
        t.await??;
    }
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

/// Seconds since the Unix epoch on the machine's wall clock (the clock PostgreSQL's `now()`
/// reads on the same machine).
fn epoch_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// `--held-snapshot`: a session of the `postgres` database that holds a snapshot (and a
/// transaction id) until it is closed. PostgreSQL's horizon for removing dead row versions
/// and for marking dead index entries is server-wide for a transaction holding an id, so this
/// stands for any long transaction on the server (a pg_dump, a report, a session idle in a
/// transaction).
async fn hold_snapshot(base_url: &str) -> anyhow::Result<sqlx::PgConnection> {
    let admin = crate::db::with_database(base_url, "postgres");
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&admin).await?;
    sqlx::raw_sql("BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT txid_current()")
        .execute(&mut conn)
        .await?;
    eprintln!("holding a snapshot (and a transaction id) in the postgres database");
    Ok(conn)
}

/// Insert `n` queued runs of the no-op agent in one statement, bypassing the create path, with
/// `max_concurrent = 100000` (no per-project concurrency cap): the runtime's ceiling.
async fn enqueue(s: &Setup, n: i64) -> anyhow::Result<()> {
    enqueue_in(s, &s.project, n, 100_000).await
}

/// Run ids for [`enqueue_in`], made as the platform makes them: UUIDv7, in creation order
/// (`RunService::create` and the channel hub use `Uuid::now_v7`). The seed used
/// `gen_random_uuid()` (v4) until session 33: every index led by the run id (`runs`' two keys,
/// `run_events`, `run_steps`) then took each run's entries at a random leaf, which no
/// deployment does, and the bulk drain measured 13-19 % lower (docs/benchmarks.md,
/// "Session 33").
fn seed_run_ids(n: i64) -> Vec<uuid::Uuid> {
    (0..n).map(|_| uuid::Uuid::now_v7()).collect()
}

/// [`enqueue`] into `project` with its runs capped at `max_concurrent` (one statement: the
/// runs share their `created_at`, so projects filled one after the other queue in that order).
pub(super) async fn enqueue_in(
    s: &Setup,
    project: &ProjectId,
    n: i64,
    max_concurrent: i32,
) -> anyhow::Result<()> {
    tenancy::scope(project.clone(), async {
        let active = s.p.control.active(ContractKind::Agent, "noop").await?;
        let ids = seed_run_ids(n);
        let mut tx = s.p.control.db().tenant().await?;
        sqlx::query(
            "INSERT INTO runs (project_id, run_id, agent, mode, input, input_hash, agent_revision_id, agent_body_hash, \
             trace_id, span_id, max_attempts, deadline_at, max_concurrent) \
             SELECT $5, ($7::uuid[])[g], 'noop', 'shadow', '{}'::jsonb, $1, $2, $3, \
             md5(random()::text || g::text), substr(md5(g::text), 1, 16), 3, now() + interval '1 hour', $6 \
             FROM generate_series(1, $4) g",
        )
        .bind(crate::contracts::canonical::body_hash(&json!({})))
        .bind(active.pointer.revision_id)
        .bind(&active.pointer.body_hash)
        .bind(n)
        .bind(project.as_str())
        .bind(max_concurrent)
        .bind(&ids)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok::<_, crate::error::Error>(())
    })
    .await?;
    Ok(())
}

async fn count(s: &Setup, state: &str) -> anyhow::Result<i64> {
    count_in(s, &s.project, state).await
}

async fn count_in(s: &Setup, project: &ProjectId, state: &str) -> anyhow::Result<i64> {
    tenancy::scope(project.clone(), async {
        let mut tx = s.p.control.db().tenant().await?;
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM runs WHERE state = $1")
            .bind(state)
            .fetch_one(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok::<_, crate::error::Error>(n)
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e}"))
}

fn worker(
    s: &Setup,
    id: &str,
    exec: Arc<dyn Executor>,
    slots: usize,
    lease: Duration,
) -> Arc<Worker> {
    let mut cfg = bench_config(id, slots, lease);
    // Experiment knob (docs/benchmarks.md): 1 turns the completion writer's claim on.
    cfg.refill_on_complete = std::env::var("AWOOOP_BENCH_REFILL").is_ok_and(|v| v == "1");
    worker_with(s, cfg, exec)
}

/// A worker bound to `project`, configured as `awooop worker --project` configures it (the
/// completion writer refills its project's slots; `platform.rs`). `AWOOOP_BENCH_REFILL=0`
/// turns the refill off here too.
fn bound_worker(s: &Setup, id: &str, project: &ProjectId) -> Arc<Worker> {
    let mut cfg = bench_config(id, 256, Duration::from_secs(30));
    cfg.project = Some(project.to_string());
    cfg.refill_on_complete = std::env::var("AWOOOP_BENCH_REFILL").map_or(true, |v| v != "0");
    worker_with(s, cfg, scripted(s))
}

/// The benchmark's worker settings: short poll, reap and grace so that each phase ends soon.
fn bench_config(id: &str, slots: usize, lease: Duration) -> WorkerConfig {
    let mut cfg = WorkerConfig::new(id);
    cfg.slots = slots;
    cfg.lease = lease;
    cfg.heartbeat = lease / 4;
    cfg.poll = Duration::from_millis(200);
    cfg.reap_every = Duration::from_millis(250);
    cfg.grace = Duration::from_secs(2);
    cfg
}

fn worker_with(s: &Setup, cfg: WorkerConfig, exec: Arc<dyn Executor>) -> Arc<Worker> {
    Arc::new(Worker::new(
        s.p.control.db().pool_for_health().clone(),
        s.p.control.clone(),
        exec,
        cfg,
    ))
}

fn scripted(s: &Setup) -> Arc<dyn Executor> {
    Arc::new(ScriptedExecutor::new(GuardedGateway::new(
        s.p.control.clone(),
        Arc::new(NoGateway),
    )))
}

/// Never finishes its first attempt: the worker that runs it is the one we kill.
struct Stuck;

#[async_trait]
impl Executor for Stuck {
    async fn execute(&self, _: &RunContext, _: &mut Journal) -> crate::error::Result<Outcome> {
        std::future::pending().await
    }
}

/// Let `workers` workers drain the `n` queued runs; runs per second from the first claim to
/// the last completion. Fresh statistics first, as a long-lived table has: right after a bulk
/// insert the planner would otherwise believe the table is empty and scan it for every claim.
/// Succeeded runs of `projects`, together.
async fn succeeded_in(s: &Setup, projects: &[ProjectId]) -> anyhow::Result<i64> {
    let mut n = 0;
    for p in projects {
        n += count_in(s, p, "succeeded").await?;
    }
    Ok(n)
}

/// One drain: `n` runs queued in `projects`, named `what`; `capped` when a per-project cap
/// applies (then the peak is sampled).
struct Drain<'a> {
    projects: &'a [ProjectId],
    n: usize,
    what: &'a str,
    capped: bool,
    /// One worker per project, bound to it (`awooop worker --project`), instead of
    /// `workers` workers serving every project.
    bound: bool,
}

async fn drain(
    url: &str,
    s: &Setup,
    d: Drain<'_>,
    workers: usize,
    quick: bool,
) -> anyhow::Result<Drained> {
    let Drain {
        projects,
        n,
        what,
        capped,
        bound,
    } = d;
    let before = succeeded_in(s, projects).await?;
    let owner = crate::db::connect_owner(url, 1)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    // VACUUM too: the bulk drain follows the create-path drain on the same tables, and without
    // it the claims of the second drain walk the first one's dead queue entries (autovacuum
    // does this on a long-lived table; here it would start in the middle of a drain).
    sqlx::query("VACUUM ANALYZE runs, run_steps, run_events")
        .execute(&owner)
        .await?;
    owner.close().await;
    let (stop, rx) = shutdown_channel();
    let ws: Vec<_> = if bound {
        projects
            .iter()
            .enumerate()
            .map(|(i, p)| bound_worker(s, &format!("bench-bound-{i}"), p))
            .collect()
    } else {
        (0..workers)
            .map(|i| {
                worker(
                    s,
                    &format!("bench-{i}"),
                    scripted(s),
                    256,
                    Duration::from_secs(30),
                )
            })
            .collect()
    };
    let workers = ws.len();
    // Only where a cap applies: the sample is a count of running runs, and with a thousand in
    // flight it costs PostgreSQL enough CPU to move the uncapped figure.
    let sampling = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sampler = capped.then(|| {
        tokio::spawn(peak_running(
            s.p.control.db().pool_for_health().clone(),
            sampling.clone(),
        ))
    });
    let start = Instant::now();
    let handles: Vec<_> = ws
        .iter()
        .map(|w| tokio::spawn(w.clone().run(rx.clone())))
        .collect();
    loop {
        let done: u64 = ws
            .iter()
            .map(|w| w.stats.succeeded.load(Ordering::Relaxed))
            .sum();
        if done as usize >= n {
            break;
        }
        anyhow::ensure!(
            start.elapsed() < Duration::from_secs(if quick { 20 } else { 300 }),
            "only {done} of {n} runs finished"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let elapsed = start.elapsed();
    sampling.store(false, Ordering::Relaxed);
    let peak = match sampler {
        Some(h) => Some(h.await??),
        None => None,
    };
    anyhow::ensure!(
        succeeded_in(s, projects).await? == before + n as i64,
        "not every run succeeded exactly once"
    );
    let rps = n as f64 / elapsed.as_secs_f64();
    // Claim statements issued and what they returned: each claim has a fixed cost in
    // PostgreSQL (the per-project running count, its trigger), so their size matters.
    let total = |f: fn(&crate::runtime::worker::WorkerStats) -> &std::sync::atomic::AtomicU64| {
        ws.iter()
            .map(|w| f(&w.stats).load(Ordering::Relaxed))
            .sum::<u64>()
    };
    let rounds = total(|s| &s.claim_rounds);
    let claimed = total(|s| &s.claimed);
    let batches = total(|s| &s.completion_batches);
    let passed = total(|s| &s.claims_passed_over);
    let refilled = total(|s| &s.refilled);
    eprintln!(
        "throughput ({what}): {n} runs in {:.2} s = {rps:.0} runs/s with {workers} workers; \
         {rounds} claims, {:.1} runs each, {passed} passed over a project another claim held; \
         {refilled} runs started by completion refills without the project's lock; \
         {batches} completion transactions, {:.1} runs each{}",
        elapsed.as_secs_f64(),
        claimed as f64 / rounds.max(1) as f64,
        n as f64 / batches.max(1) as f64,
        peak.map_or(String::new(), |p| format!(
            "; at most {p} runs of one project seen running"
        ))
    );

    stop.send(true)?;
    for h in handles {
        let _ = h.await;
    }
    Ok(Drained { rps, peak })
}

/// What a drain measured.
struct Drained {
    rps: f64,
    /// In a capped drain, the most runs of one project seen running at once (sampled every
    /// 50 ms from committed state): what `max_concurrent` allowed, against its cap.
    peak: Option<i64>,
}

/// Sample the most runs of one project running at once until `sampling` turns false.
async fn peak_running(
    pool: sqlx::PgPool,
    sampling: Arc<std::sync::atomic::AtomicBool>,
) -> anyhow::Result<i64> {
    let mut peak = 0;
    while sampling.load(Ordering::Relaxed) {
        let mut tx = pool.begin().await?;
        // Across projects: the worker scope, as the claim reads them.
        sqlx::query("SET LOCAL awooop.scope = 'worker'")
            .execute(&mut *tx)
            .await?;
        let most: i64 = sqlx::query_scalar(
            "SELECT coalesce(max(c), 0) FROM \
             (SELECT count(*) AS c FROM runs WHERE state = 'running' GROUP BY project_id) x",
        )
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        peak = peak.max(most);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(peak)
}

/// Projects `tenant-1` … `tenant-{t}`, each with the no-op agent active.
pub(super) async fn tenant_projects(s: &Setup, t: usize) -> anyhow::Result<Vec<ProjectId>> {
    let mut ps = Vec::with_capacity(t);
    for i in 1..=t {
        let id = format!("tenant-{i}");
        s.p.control
            .create_project(
                &Actor::cli("bench"),
                crate::control::NewProject {
                    project_id: id.clone(),
                    display_name: id.clone(),
                    required_approvals: Some(1),
                },
            )
            .await?;
        let project = ProjectId::parse(&id)?;
        crate::platform::create_signing_key(&s.p, &s.state.join("keyring"), &project, "bench")
            .await?;
        publish_noop(&s.p, &project).await?;
        ps.push(project);
    }
    Ok(ps)
}

async fn bench(
    url: &str,
    n: usize,
    workers: usize,
    quick: bool,
    tenants: Option<usize>,
) -> anyhow::Result<Figures> {
    let s = setup(url).await?;

    // 1. Throughput, twice: (a) n runs created through the real create path with the default
    //    runtime limits (64 concurrent runs per project), (b) n runs bulk-inserted without the
    //    per-project cap (the runtime's own ceiling). Each time the workers drain them.
    let creates_per_sec = create_runs(&s, n).await?;
    eprintln!("created {n} runs through RunService::create at {creates_per_sec:.0}/s");
    let one = std::slice::from_ref(&s.project);
    let capped = drain(
        url,
        &s,
        Drain {
            projects: one,
            n,
            what: "created, default limits",
            capped: true,
            bound: false,
        },
        workers,
        quick,
    )
    .await?;
    enqueue(&s, n as i64).await?;
    let raw = drain(
        url,
        &s,
        Drain {
            projects: one,
            n,
            what: "bulk-inserted, no concurrency cap",
            capped: false,
            bound: false,
        },
        workers,
        quick,
    )
    .await?;
    // 1c. (--projects T) The multi-tenant shape: the same number of runs spread over T projects
    //     with backlogs, each under the default cap of 64 concurrent runs.
    //     Twice: `workers` workers serving every project (`awooop up`'s shape), then one worker
    //     bound to each project (`awooop worker --project`, one deployment per tenant).
    let (tenanted, tenanted_bound) = match tenants {
        Some(t) if t > 1 => {
            let ps = tenant_projects(&s, t).await?;
            let mut out = Vec::new();
            for bound in [false, true] {
                for p in &ps {
                    enqueue_in(&s, p, (n / t) as i64, 64).await?;
                }
                let what = if bound {
                    format!("bulk-inserted, {t} projects capped at 64 each, a worker bound to each")
                } else {
                    format!("bulk-inserted, {t} projects capped at 64 each")
                };
                let d = Drain {
                    projects: &ps,
                    n: n / t * t,
                    what: &what,
                    capped: true,
                    bound,
                };
                out.push(drain(url, &s, d, workers, quick).await?);
            }
            let bound = out.pop();
            (out.pop(), bound)
        }
        _ => (None, None),
    };
    let (stop, rx) = shutdown_channel();
    let ws: Vec<_> = (0..workers)
        .map(|i| {
            worker(
                &s,
                &format!("bench-pickup-{i}"),
                scripted(&s),
                256,
                Duration::from_secs(30),
            )
        })
        .collect();
    let handles: Vec<_> = ws
        .iter()
        .map(|w| tokio::spawn(w.clone().run(rx.clone())))
        .collect();

    // 2. Pickup latency at low load: one run at a time into idle workers. Two clocks, both the
    //    machine's wall clock: `pickup` from the database's own `created_at` (the creating
    //    transaction's start) to `started_at` (the claiming transaction's start), and
    //    `pickup_call` from the moment the caller called `RunService::create` to `started_at`,
    //    which also counts what the create path does before its transaction (checks, the run
    //    basis, the hand-over to the group commit): the latency a caller sees.
    let samples = if quick { 100 } else { 300 };
    let runs = RunService::new(s.p.control.clone());
    let mut called: Vec<(uuid::Uuid, f64, f64)> = Vec::with_capacity(samples);
    for i in 0..samples {
        let req = CreateRun {
            agent: "noop".into(),
            input: json!({"pickup": i}),
            mode: None,
            reply_to: None,
        };
        let t0 = epoch_now();
        let a = tenancy::scope(
            s.project.clone(),
            runs.create(&Actor::cli("bench"), req, None, None),
        )
        .await?;
        called.push((a.run_id, t0, epoch_now()));
        tokio::time::sleep(Duration::from_millis(if quick { 15 } else { 25 })).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let ids: Vec<uuid::Uuid> = called.iter().map(|c| c.0).collect();
    let rows: Vec<(uuid::Uuid, f64, Option<f64>)> = tenancy::scope(s.project.clone(), async {
        let mut tx = s.p.control.db().tenant().await?;
        let rows = sqlx::query_as(
            "SELECT run_id, extract(epoch FROM created_at)::float8, \
                    extract(epoch FROM started_at)::float8 \
             FROM runs WHERE run_id = ANY($1)",
        )
        .bind(&ids)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok::<_, crate::error::Error>(rows)
    })
    .await?;
    let at: std::collections::HashMap<uuid::Uuid, (f64, Option<f64>)> =
        rows.into_iter().map(|(id, c, st)| (id, (c, st))).collect();
    let secs = |x: f64| Duration::from_secs_f64(x.max(0.0));
    let (mut pickup, mut pickup_call, mut before_tx, mut tx_to_answer) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (id, t0, t1) in &called {
        let Some(&(created, Some(started))) = at.get(id) else {
            anyhow::bail!("pickup run {id} did not start within 300 ms of the last creation");
        };
        pickup.push(secs(started - created));
        pickup_call.push(secs(started - t0));
        before_tx.push(secs(created - t0));
        tx_to_answer.push(secs(t1 - created));
    }
    for v in [&mut pickup_call, &mut before_tx, &mut tx_to_answer] {
        v.sort();
    }
    eprintln!(
        "pickup: p50 call -> transaction start {:.2} ms, transaction start -> answer {:.2} ms, \
         call -> started {:.2} ms",
        percentile_ms(&before_tx, 50.0),
        percentile_ms(&tx_to_answer, 50.0),
        percentile_ms(&pickup_call, 50.0),
    );
    pickup.sort();
    stop.send(true)?;
    for h in handles {
        let _ = h.await;
    }

    // 3. Recovery: a worker holding runs is killed (task aborted); a healthy worker with a
    //    short lease must finish them. Measured from the kill to the last run succeeding.
    let lease = Duration::from_secs(if quick { 3 } else { 5 });
    let stuck_n = 8;
    let before = count(&s, "succeeded").await?;
    enqueue(&s, stuck_n).await?;
    let victim = worker(&s, "victim", Arc::new(Stuck), 16, lease);
    let (_vs, vrx) = shutdown_channel();
    let vh = tokio::spawn(victim.clone().run(vrx));
    while (victim.stats.claimed.load(Ordering::Relaxed) as i64) < stuck_n {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    vh.abort();
    let killed = Instant::now();
    let (stop, rx) = shutdown_channel();
    let rescuer = worker(&s, "rescuer", scripted(&s), 16, lease);
    let rh = tokio::spawn(rescuer.clone().run(rx));
    while count(&s, "succeeded").await? < before + stuck_n {
        anyhow::ensure!(
            killed.elapsed() < Duration::from_secs(60),
            "runs of the killed worker were not recovered"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let recovery = killed.elapsed().as_secs_f64();
    eprintln!(
        "recovery after kill: {recovery:.2} s (lease {} s)",
        lease.as_secs()
    );
    stop.send(true)?;
    let _ = rh.await;
    let _ = std::fs::remove_dir_all(
        std::env::temp_dir().join(format!("awooop-bench-runs-{}", std::process::id())),
    );
    Ok(Figures {
        rps: capped.rps,
        rps_raw: raw.rps,
        rps_tenants: tenanted.as_ref().map(|d| d.rps),
        rps_tenants_bound: tenanted_bound.as_ref().map(|d| d.rps),
        capped_peak: [&tenanted, &tenanted_bound]
            .into_iter()
            .flatten()
            .fold(capped.peak, |m, d| m.max(d.peak))
            .unwrap_or(0),
        creates_per_sec,
        pickup: [
            percentile_ms(&pickup, 50.0),
            percentile_ms(&pickup, 95.0),
            percentile_ms(&pickup, 99.0),
        ],
        pickup_call: [
            percentile_ms(&pickup_call, 50.0),
            percentile_ms(&pickup_call, 99.0),
        ],
        recovery,
    })
}

#[cfg(test)]
mod tests {
    use super::parse_peer_line;

    /// The seeded runs carry ids like the platform's: version 7, ascending in creation order
    /// (a v4 seed spreads every run-keyed index insert over random leaves).
    #[test]
    fn seeded_run_ids_are_the_platforms_ordered_v7_ids() {
        let ids = super::seed_run_ids(5_000);
        assert_eq!(ids.len(), 5_000);
        assert!(ids.iter().all(|u| u.get_version_num() == 7), "not v7");
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "not ascending");
    }

    #[test]
    fn the_peers_line_gives_its_rate_and_transport_or_an_error() {
        let line = "peer=graphile-worker@0.17.3 peer_jobs=20000 peer_concurrency=10 \
                    peer_local_queue=500 peer_tls=off peer_seconds=0.413 peer_jobs_per_sec=48373";
        let (rate, tls) = parse_peer_line(line).unwrap();
        assert_eq!((rate, tls.as_str()), (48373.0, "off"));
        // A key that merely starts like another (`peer_jobs=`) is not taken for it.
        assert!(parse_peer_line("peer_jobs=20000 peer_tls=on").is_err());
        // The transport is required and must be one of the two words: no silent default.
        assert!(parse_peer_line("peer_jobs_per_sec=10").is_err());
        assert!(parse_peer_line("peer_jobs_per_sec=10 peer_tls=maybe").is_err());
        assert!(parse_peer_line("peer_jobs_per_sec=0 peer_tls=on").is_err());
    }
}
