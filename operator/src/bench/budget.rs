//! `awooop bench budget`: the budget ledger and the provider proxy.
//!
//! * Reservation + settlement pairs per second on one project, with 1 and 64 concurrent
//!   callers (every pair is two tenant transactions on the same ledger row: the contention a
//!   busy project produces).
//! * The concurrency run: 50 concurrent proxy calls against a budget that admits 10 worst
//!   cases, the provider double reporting usage equal to each reservation; `overshoot_tokens`
//!   is the spend above the limit (must be 0).
//! * Proxy overhead: p50 of a model call through the proxy (policy, breaker, reservation,
//!   settlement, audit) minus p50 of the same streamed request sent to the double directly,
//!   the two paths alternating which goes first. Both include the double's own pacing (2 ms
//!   between stream chunks, ~16 ms for the short answer), so only the difference is the
//!   proxy's cost.
//! * `refused` counts only budget refusals (E-BUDGET-001); any other error fails the run.
//! * Leases (model::budget::lease): `reservations_per_sec` is reservation + settlement pairs
//!   per second with 64 callers in one process through budget leases, timed until everything
//!   is flushed (spend on the ledger, every reservation journalled) and checked against the
//!   ledger afterwards; `ledger_reservations_per_sec` is the plain ledger path's figure of the
//!   same run (`reserve_settle_per_sec_64`), `lease_speedup` their ratio.
//! * `overshoot_50` / `overshoot_500`: 50 and 500 callers spread over 4 worker *processes*
//!   (`awooop bench budget --worker`, racing from the same start instant) against a budget of
//!   10 and 100 worst cases, usage equal to each reservation: spend above the limit (must be
//!   0), and `admitted_*` against `expected_*` (lower means a caller was refused needlessly,
//!   budget stranded in another process's lease).

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{drop_scratch, percentile_ms, scratch_database};
use crate::auth::Actor;
use crate::config::BenchArgs;
use crate::contracts::{BudgetPeriod, DataClass, ProviderApi};
use crate::control::{ControlPlane, NewProject};
use crate::coord::Coord;
use crate::model::breaker::{AnomalyConfig, AnomalyCounter};
use crate::model::budget::lease::LeaseConfig;
use crate::model::budget::{Budget, ReserveRequest};
use crate::model::policy::{BudgetPolicy, EffectivePolicy, ScopeLimit, Target};
use crate::model::proxy::{CallMeta, ProviderProxy};
use crate::model::wire::{self, ChatMessage, ChatRequest, Decoder};
use crate::runtime::trace::TraceContext;
use crate::tenancy::{self, Db, ProjectId};
use awooop_testkit::double::{ProviderDouble, Reply};

pub async fn run(args: &BenchArgs) -> anyhow::Result<()> {
    if args.budget_worker.worker {
        return worker(args).await;
    }
    let base = args
        .db
        .database_url
        .clone()
        .unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let scratch = scratch_database(&base, "budget").await?;
    let res = bench(&scratch, args.quick).await;
    drop_scratch(&base, &scratch).await;
    let r = res?;
    let load = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "unknown".into());
    println!(
        "reservations_per_sec={:.0} ledger_reservations_per_sec={:.0} lease_speedup={:.1} lease_pairs={} overshoot_50={} admitted_50={} expected_50={} overshoot_500={} admitted_500={} expected_500={} processes={} load1={} \
         reserve_settle_per_sec_1={:.0} reserve_settle_per_sec_64={:.0} overshoot_tokens={} admitted={} refused={} limit_tokens={} direct_p50_ms={:.2} proxy_p50_ms={:.2} proxy_overhead_ms={:.2} proxy_calls={}",
        r.leased_per_sec,
        r.per_sec_64,
        r.leased_per_sec / r.per_sec_64,
        r.leased_pairs,
        r.race_50.overshoot,
        r.race_50.admitted,
        r.race_50.expected,
        r.race_500.overshoot,
        r.race_500.admitted,
        r.race_500.expected,
        RACE_PROCESSES,
        load,
        r.per_sec_1,
        r.per_sec_64,
        r.overshoot,
        r.admitted,
        r.refused,
        r.limit,
        r.direct_p50,
        r.proxy_p50,
        r.proxy_p50 - r.direct_p50,
        r.proxy_calls
    );
    Ok(())
}

struct Figures {
    leased_per_sec: f64,
    leased_pairs: usize,
    race_50: Race,
    race_500: Race,
    per_sec_1: f64,
    per_sec_64: f64,
    overshoot: i64,
    admitted: usize,
    refused: usize,
    limit: u64,
    direct_p50: f64,
    proxy_p50: f64,
    proxy_calls: usize,
}

fn limits(tokens: u64) -> BudgetPolicy {
    BudgetPolicy {
        period: BudgetPeriod::Day,
        project: ScopeLimit {
            token_limit: tokens,
            currency_limit_micros: None,
        },
        agent: None,
    }
}

fn policy(double: &ProviderDouble, tokens: u64, max_out: u32) -> EffectivePolicy {
    EffectivePolicy {
        agent: "bench".into(),
        route: "bench".into(),
        data_class: DataClass::Internal,
        targets: vec![Target {
            provider: "double".into(),
            api: ProviderApi::OpenaiChat,
            base_url: double.base_url(),
            api_key: None,
            model: "double".into(),
            max_output_tokens: max_out,
            timeout_ms: 10_000,
            input_micros_per_mtok: 0,
            output_micros_per_mtok: 0,
        }],
        gated_out: vec![],
        retries: 0,
        budget: limits(tokens),
        breaker: None,
        max_steps: 10,
        max_tokens_per_run: u64::MAX / 4,
        timeout_seconds: 60,
    }
}

fn request() -> ChatRequest {
    ChatRequest {
        system: Some("bench".into()),
        messages: vec![ChatMessage::User {
            content: "How many pods are running?".into(),
        }],
        tools: vec![],
    }
}

fn meta() -> CallMeta {
    CallMeta {
        run_id: None,
        agent: "bench".into(),
        trace: TraceContext::generate(),
    }
}

async fn reserve_settle_loop(
    budget: Budget,
    project: ProjectId,
    n: usize,
) -> crate::error::Result<()> {
    tenancy::scope(project, async move {
        let l = limits(u64::MAX / 4);
        for _ in 0..n {
            let r = budget
                .reserve(
                    &l,
                    &ReserveRequest {
                        run_id: None,
                        agent: "bench".into(),
                        provider: "double".into(),
                        model: "double".into(),
                        tokens: 1000,
                        micros: 0,
                        ttl: Duration::from_secs(60),
                    },
                )
                .await?;
            budget.settle(&r, 400, 0).await?;
        }
        Ok(())
    })
    .await
}

async fn bench(url: &str, quick: bool) -> anyhow::Result<Figures> {
    let pool = crate::db::connect_app(url, 32)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let db = Db::new(pool.clone());
    let cp = ControlPlane::new(db.clone(), Coord::none(), Default::default());
    let admin = Actor::cli("bench");
    for id in ["bench", "bench-conc"] {
        cp.create_project(
            &admin,
            NewProject {
                project_id: id.into(),
                display_name: id.into(),
                required_approvals: Some(1),
            },
        )
        .await?;
    }
    let project = ProjectId::parse("bench")?;
    let budget = Budget::new(db.clone());

    // 1 caller.
    let n1 = if quick { 300 } else { 2_000 };
    let t = Instant::now();
    reserve_settle_loop(budget.clone(), project.clone(), n1).await?;
    let per_sec_1 = n1 as f64 / t.elapsed().as_secs_f64();

    // 64 callers on the same project.
    let each = if quick { 15 } else { 100 };
    let t = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..64 {
        tasks.push(tokio::spawn(reserve_settle_loop(
            budget.clone(),
            project.clone(),
            each,
        )));
    }
    for h in tasks {
        h.await??;
    }
    let per_sec_64 = (64 * each) as f64 / t.elapsed().as_secs_f64();

    // The concurrency run: 50 calls, budget for 10 worst cases, usage = reservation.
    let double = ProviderDouble::start().await?;
    let anomalies = AnomalyCounter::new(db.clone(), Coord::none(), AnomalyConfig::default());
    let proxy = Arc::new(
        ProviderProxy::new(
            db.clone(),
            anomalies,
            // The double needs no API key: no credential may resolve.
            Arc::new(crate::gateway::credentials::CredentialResolver::new(
                None,
                Default::default(),
                Duration::ZERO,
            )),
        )?
        // The double listens on 127.0.0.1: allowed explicitly, as `awooop up` does.
        .with_egress(awooop_policy::PolicySource::from_db(db.clone()).allow_loopback()),
    );
    let req = request();
    let max_out = 200u32;
    let bound = wire::prompt_token_bound(&req);
    let worst = bound + u64::from(max_out);
    let limit = 10 * worst;
    double.script((0..50).map(|_| Reply::WithUsage {
        input: bound,
        output: u64::from(max_out),
        reply: Box::new(Reply::Delay(
            Duration::from_millis(20),
            Box::new(Reply::Text("ok".into())),
        )),
    }));
    let conc = ProjectId::parse("bench-conc")?;
    let pol = Arc::new(policy(&double, limit, max_out));
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let (px, pol, req) = (proxy.clone(), pol.clone(), req.clone());
        tasks.push(tokio::spawn(tenancy::scope(conc.clone(), async move {
            px.chat(&pol, &meta(), &req, None).await
        })));
    }
    // `refused` counts budget refusals only (E-BUDGET-001); any other failure is a broken run.
    let (mut admitted, mut refused) = (0, 0);
    for h in tasks {
        match h.await? {
            Ok(_) => admitted += 1,
            Err(e) if e.code == crate::error::ErrorCode::BudgetExceeded => refused += 1,
            Err(e) => anyhow::bail!(
                "a call of the concurrency run failed for another reason than the budget: {} {}",
                e.code.as_str(),
                e.message
            ),
        }
    }
    let spent = tenancy::scope(conc.clone(), budget.ledger(BudgetPeriod::Day))
        .await?
        .into_iter()
        .find(|r| r.scope == "project")
        .map_or(0, |r| r.spent_tokens);
    let overshoot = (spent - limit as i64).max(0);
    double.clear_script(); // the refused calls' replies were never asked for
    // From here on every call gets the same short answer.
    double.always(Reply::Text("ok".into()));

    // Proxy overhead versus the double called directly (same streamed request).
    let calls = if quick { 100 } else { 500 };
    let pol = policy(&double, u64::MAX / 4, 64);
    crate::tls::install_crypto_provider();
    // The same client settings as the proxy's, so the difference is the proxy's own work.
    let http = reqwest::Client::builder().tcp_nodelay(true).build()?;
    let body = wire::request_body(ProviderApi::OpenaiChat, "double", 64, &req);
    let url_direct = wire::endpoint(ProviderApi::OpenaiChat, &double.base_url());
    let mut direct = Vec::with_capacity(calls);
    let mut via = Vec::with_capacity(calls);
    // Alternate which path goes first, so neither always runs on a warmer cache.
    for i in 0..calls {
        for direct_turn in [i % 2 == 0, i % 2 == 1] {
            if direct_turn {
                let t = Instant::now();
                let mut resp = http.post(&url_direct).json(&body).send().await?;
                let mut dec = Decoder::new(ProviderApi::OpenaiChat);
                while let Some(c) = resp.chunk().await? {
                    dec.feed(&c)?;
                }
                dec.finish()?;
                direct.push(t.elapsed());
            } else {
                let t = Instant::now();
                tenancy::scope(project.clone(), proxy.chat(&pol, &meta(), &req, None)).await?;
                via.push(t.elapsed());
            }
        }
    }
    direct.sort();
    via.sort();

    // Leases: 64 callers in one process, timed until everything is on the ledger.
    let (leased_per_sec, leased_pairs) = leased_run(&db, &cp, &admin, quick).await?;
    // Leases across processes: the cap at 50 and 500 concurrent callers.
    let race_50 = race(url, &cp, &admin, "race-50", 50, 10).await?;
    let race_500 = race(url, &cp, &admin, "race-500", 500, 100).await?;
    pool.close().await;
    Ok(Figures {
        leased_per_sec,
        leased_pairs,
        race_50,
        race_500,
        per_sec_1,
        per_sec_64,
        overshoot,
        admitted,
        refused,
        limit,
        direct_p50: percentile_ms(&direct, 50.0),
        proxy_p50: percentile_ms(&via, 50.0),
        proxy_calls: calls,
    })
}

/// Worker processes of the cross-process race.
const RACE_PROCESSES: usize = 4;
/// Tokens each racing caller reserves and spends.
const RACE_TOKENS: u64 = 1_000;

fn worker_request(tokens: u64) -> ReserveRequest {
    ReserveRequest {
        run_id: None,
        agent: "bench".into(),
        provider: "double".into(),
        model: "double".into(),
        tokens,
        micros: 0,
        ttl: Duration::from_secs(60),
    }
}

/// Reservation + settlement pairs with 64 callers through leases; afterwards the ledger must
/// hold exactly the settled usage and every reservation must be journalled, so the figure
/// includes all the work the plain path does.
async fn leased_run(
    db: &Db,
    cp: &ControlPlane,
    admin: &Actor,
    quick: bool,
) -> anyhow::Result<(f64, usize)> {
    cp.create_project(
        admin,
        NewProject {
            project_id: "bench-lease".into(),
            display_name: "bench-lease".into(),
            required_approvals: Some(1),
        },
    )
    .await?;
    let project = ProjectId::parse("bench-lease")?;
    let budget = Budget::with_leases(db.clone(), LeaseConfig::default());
    let each = if quick { 500 } else { 3_000 };
    let t = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..64 {
        tasks.push(tokio::spawn(reserve_settle_loop(
            budget.clone(),
            project.clone(),
            each,
        )));
    }
    for h in tasks {
        h.await??;
    }
    budget.shutdown().await?;
    let elapsed = t.elapsed().as_secs_f64();
    let pairs = 64 * each;
    let row = tenancy::scope(project.clone(), budget.ledger(BudgetPeriod::Day))
        .await?
        .into_iter()
        .find(|r| r.scope == "project")
        .ok_or_else(|| anyhow::anyhow!("the leased run left no ledger row"))?;
    let journalled: i64 = tenancy::scope(project.clone(), async {
        let mut tx = db.tenant().await?;
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM budget_reservations WHERE project_id = 'bench-lease' AND state = 'settled' AND lease_id IS NOT NULL",
        )
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok::<i64, crate::error::Error>(n)
    })
    .await?;
    anyhow::ensure!(
        row.spent_tokens == 400 * pairs as i64
            && row.reserved_tokens == 0
            && journalled == pairs as i64,
        "the leased run's ledger is off: spent {} (want {}), reserved {} (want 0), journalled {journalled} (want {pairs})",
        row.spent_tokens,
        400 * pairs,
        row.reserved_tokens
    );
    Ok((pairs as f64 / elapsed, pairs))
}

struct Race {
    overshoot: i64,
    admitted: u64,
    expected: u64,
}

/// `callers` callers over [`RACE_PROCESSES`] worker processes against a budget of
/// `worst_cases` reservations of [`RACE_TOKENS`], every admitted caller spending its whole
/// reservation.
async fn race(
    url: &str,
    cp: &ControlPlane,
    admin: &Actor,
    id: &str,
    callers: usize,
    worst_cases: u64,
) -> anyhow::Result<Race> {
    cp.create_project(
        admin,
        NewProject {
            project_id: id.into(),
            display_name: id.into(),
            required_approvals: Some(1),
        },
    )
    .await?;
    let limit = worst_cases * RACE_TOKENS;
    let outcomes = spawn_workers(url, id, callers, RACE_PROCESSES, RACE_TOKENS, limit).await?;
    let admitted: u64 = outcomes.iter().map(|o| o.admitted).sum();
    let db = Db::new(
        crate::db::connect_app(url, 2)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?,
    );
    let spent = tenancy::scope(
        ProjectId::parse(id)?,
        Budget::new(db).ledger(BudgetPeriod::Day),
    )
    .await?
    .into_iter()
    .find(|r| r.scope == "project")
    .map_or(0, |r| r.spent_tokens);
    Ok(Race {
        overshoot: (spent - limit as i64).max(0),
        admitted,
        expected: worst_cases,
    })
}

/// What one worker process reports (its last stdout line).
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct WorkerOutcome {
    admitted: u64,
    refused: u64,
}

/// Start `processes` `awooop bench budget --worker` processes sharing `callers`, racing from
/// the same instant, and collect their outcomes.
async fn spawn_workers(
    url: &str,
    project: &str,
    callers: usize,
    processes: usize,
    tokens: u64,
    limit: u64,
) -> anyhow::Result<Vec<WorkerOutcome>> {
    let exe = std::env::current_exe()?;
    let start = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?
        + Duration::from_millis(1_500);
    let mut children = Vec::new();
    for i in 0..processes {
        let share = callers / processes + usize::from(i < callers % processes);
        let child = tokio::process::Command::new(&exe)
            .args(["bench", "budget", "--worker", "--worker-project", project])
            .args(["--worker-callers", &share.to_string()])
            .args(["--worker-tokens", &tokens.to_string()])
            .args(["--worker-limit", &limit.to_string()])
            .args(["--worker-start-ms", &start.as_millis().to_string()])
            .args(["--database-url", url])
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        children.push(child);
    }
    let mut outcomes = Vec::new();
    for c in children {
        let out = c.wait_with_output().await?;
        anyhow::ensure!(
            out.status.success(),
            "a budget worker process failed: {}",
            out.status
        );
        let text = String::from_utf8_lossy(&out.stdout);
        let last = text.lines().last().unwrap_or_default();
        outcomes.push(serde_json::from_str(last)?);
    }
    Ok(outcomes)
}

/// `awooop bench budget --worker`: one racing process. Callers reserve through this process's
/// leases, hold the reservation for a moment, settle at the full reservation; the process then
/// gives its leases back (unless it plays a crash) and prints `{"admitted":…,"refused":…}`.
async fn worker(args: &BenchArgs) -> anyhow::Result<()> {
    let w = args.budget_worker.clone();
    let url = args
        .db
        .database_url
        .clone()
        .ok_or_else(|| anyhow::anyhow!("--worker needs --database-url"))?;
    let pool = crate::db::connect_app(&url, 4)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let budget = Budget::with_leases(
        Db::new(pool),
        LeaseConfig {
            ttl: Duration::from_millis(w.worker_lease_ttl_ms),
            ..LeaseConfig::default()
        },
    );
    let project = ProjectId::parse(&w.worker_project)?;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?;
    let start = Duration::from_millis(w.worker_start_ms);
    if start > now {
        tokio::time::sleep(start - now).await;
    }
    let l = limits(w.worker_limit);
    let mut tasks = Vec::new();
    for _ in 0..w.worker_callers {
        let (budget, l, w) = (budget.clone(), l.clone(), w.clone());
        tasks.push(tokio::spawn(tenancy::scope(project.clone(), async move {
            match budget.reserve(&l, &worker_request(w.worker_tokens)).await {
                Ok(r) => {
                    if !w.worker_crash {
                        tokio::time::sleep(Duration::from_millis(w.worker_hold_ms)).await;
                        budget.settle(&r, w.worker_tokens, 0).await?;
                    }
                    Ok(true)
                }
                // Once the spend reaches the limit the period trips: later callers get
                // E-BUDGET-003 instead of E-BUDGET-001, both budget refusals.
                Err(e)
                    if matches!(
                        e.code,
                        crate::error::ErrorCode::BudgetExceeded
                            | crate::error::ErrorCode::BudgetBreakerOpen
                    ) =>
                {
                    Ok(false)
                }
                Err(e) => Err(e),
            }
        })));
    }
    let (mut admitted, mut refused) = (0, 0);
    for h in tasks {
        if h.await?? {
            admitted += 1;
        } else {
            refused += 1;
        }
    }
    if !w.worker_crash {
        budget.shutdown().await?;
    }
    println!(
        "{}",
        serde_json::to_string(&WorkerOutcome { admitted, refused })?
    );
    if w.worker_crash {
        // No shutdown, no flush: the leases stay until they expire and are reaped.
        std::process::exit(0);
    }
    Ok(())
}
