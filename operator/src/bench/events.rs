//! `awooop bench events`: the run event stream (`GET /v1/platform/runs/{id}/events`) to 100
//! concurrent subscribers.
//!
//! One queued run; 100 clients (`awooop-client`, Server-Sent Events over loopback HTTP) follow
//! it while one writer records journal steps for it, each in its own transaction (every step is
//! an event written by the trigger and announced by NOTIFY on commit). Then the run is
//! cancelled, which ends every stream.
//!
//! * `events_per_sec`: events delivered to subscribers per second (sum over subscribers).
//! * `delivery_p50_ms` / `delivery_p99_ms`: from just before the writer's COMMIT to the
//!   event's arrival at a subscriber, over every (event, subscriber) pair. The aim is
//!   p99 < 50 ms.
//! * `notify_p50_ms` / `notify_p99_ms`, the peer figure of the same run: from the same instant
//!   to the arrival of the event's NOTIFY at this process's listener, the floor under any
//!   stream (PostgreSQL commit + notification + the listener task), under the same load.
//! * `load_avg_1m`: the machine's 1-minute load average at the end (the machine is shared).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::json;

use super::{bench_project, drop_scratch, percentile_ms, scratch_database};
use crate::auth::{Actor, AdminToken};
use crate::config::BenchArgs;
use crate::contracts::ContractKind;
use crate::runtime::{CreateRun, RunService};
use crate::tenancy;

const SUBSCRIBERS: usize = 100;
const ADMIN: &str = "awa.bench0events0000000000000000000000000000000000000000000000000000";

pub async fn run(args: &BenchArgs) -> anyhow::Result<()> {
    let base = args
        .db
        .database_url
        .clone()
        .unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let scratch = scratch_database(&base, "events").await?;
    let res = bench(&scratch, if args.quick { 300 } else { 2000 }).await;
    drop_scratch(&base, &scratch).await;
    let r = res?;
    let load = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "unknown".into());
    println!(
        "load_avg_1m={load} subscribers={} events={} delivered={} notify_p50_ms={:.2} notify_p99_ms={:.2} events_per_sec={:.0} delivery_p50_ms={:.2} delivery_p99_ms={:.2}",
        SUBSCRIBERS, r.events, r.delivered, r.n50, r.n99, r.per_sec, r.p50, r.p99
    );
    Ok(())
}

struct Figures {
    events: usize,
    delivered: usize,
    per_sec: f64,
    p50: f64,
    p99: f64,
    n50: f64,
    n99: f64,
}

async fn bench(url: &str, events: usize) -> anyhow::Result<Figures> {
    // Each subscriber holds a pooled connection only while it reads; 100 streams share 20.
    let (p, project, state) = bench_project(url, "events", 24).await?;
    let cp = p.control.clone();
    let run_id = tenancy::scope(project.clone(), async {
        let d = cp
            .create_draft(
                &Actor::cli("bench"),
                ContractKind::Agent,
                "echo",
                json!({"display_name": "Echo", "context_domain": "bench",
                       "safety": {"max_risk": "read_only", "max_steps": 4, "max_tokens_per_run": 1, "timeout_seconds": 60},
                       "executor": {"type": "scripted", "steps": [{"type": "output", "key": "o", "template": "x"}]}}),
            )
            .await?;
        let req = cp.sign_draft(d.draft.draft_id, "bench").await?;
        let rev = cp.publish(&Actor::cli("bench"), d.draft.draft_id, req).await?;
        cp.approve(&Actor::cli("approver"), rev.revision_id).await?;
        cp.activate(&Actor::cli("bench"), rev.revision_id).await?;
        RunService::new(cp.clone())
            .create(
                &Actor::cli("bench"),
                CreateRun {
                    agent: "echo".into(),
                    input: json!({}),
                    mode: None,
                    reply_to: None,
                },
                None,
                None,
            )
            .await
    })
    .await?
    .run_id;
    let state_app = crate::http::AppState {
        control: cp.clone(),
        admin: Some(AdminToken::new(ADMIN)),
        max_body_bytes: 1 << 20,
        metrics: crate::metrics::Metrics::new(),
        approvals: None,
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let server = tokio::spawn(async move {
        axum::serve(crate::http::nodelay(listener), crate::http::app(state_app)).await
    });
    let base = format!("http://{addr}");

    let arrivals: Arc<Mutex<Vec<(i64, Instant)>>> = Arc::default();
    let mut subs = Vec::new();
    let ready = Arc::new(tokio::sync::Barrier::new(SUBSCRIBERS + 1));
    for _ in 0..SUBSCRIBERS {
        let c = awooop_client::Client::admin(&base, ADMIN, "bench");
        let arrivals = arrivals.clone();
        let ready = ready.clone();
        subs.push(tokio::spawn(async move {
            let mut s = c.events(run_id, None).await.expect("subscribe");
            // The `created` event: the stream is live.
            let _ = s.next().await;
            ready.wait().await;
            let mut mine = Vec::new();
            while let Some(e) = s.next().await {
                let Ok(e) = e else { break };
                mine.push((e.seq, Instant::now()));
            }
            arrivals.lock().expect("arrivals").extend(mine);
        }));
    }
    // The peer: this process's NOTIFY listener, the floor under every stream.
    let mut wake = cp.db().run_events().subscribe();
    let notices = tokio::spawn(async move {
        let mut seen = Vec::new();
        loop {
            match wake.recv().await {
                Ok(awooop_store::events::Wake::Event(n)) if n.run == run_id => {
                    seen.push((n.seq, Instant::now()));
                }
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return seen,
            }
            if seen.last().is_some_and(|(seq, _)| *seq > events as i64 + 1) {
                return seen;
            }
        }
    });
    ready.wait().await;
    // The writer: one step per transaction; seq of step i is i + 2 (after `created`).
    let mut sent: HashMap<i64, Instant> = HashMap::new();
    let started = Instant::now();
    let db = cp.db().clone();
    tenancy::scope(project.clone(), async {
        for i in 0..events {
            let mut tx = db.tenant().await?;
            sqlx::query(
                "INSERT INTO run_steps (project_id, run_id, step_index, attempt, step_key, step_type, \
                 input_hash, status, trace_id, span_id, started_at) \
                 VALUES ('bench', $1, $2, 1, 's', 'bench', 'sha256:0', 'failed', \
                 '0123456789abcdef0123456789abcdef', '0123456789abcdef', now())",
            )
            .bind(run_id)
            .bind(i as i32)
            .execute(&mut *tx)
            .await?;
            sent.insert(i as i64 + 2, Instant::now());
            tx.commit().await?;
        }
        // Cancelling ends every stream.
        RunService::new(cp.clone())
            .cancel(&Actor::cli("bench"), run_id)
            .await
            .map(|_| ())
    })
    .await?;
    for s in subs {
        let _ = tokio::time::timeout(Duration::from_secs(60), s).await;
    }
    let elapsed = started.elapsed();
    server.abort();
    let notified = tokio::time::timeout(Duration::from_secs(10), notices)
        .await
        .ok()
        .and_then(|r| r.ok())
        .unwrap_or_default();
    let mut floor: Vec<Duration> = notified
        .iter()
        .filter_map(|(seq, at)| sent.get(seq).map(|s| at.saturating_duration_since(*s)))
        .collect();
    floor.sort();
    let arrivals = arrivals.lock().expect("arrivals").clone();
    let mut lat: Vec<Duration> = arrivals
        .iter()
        .filter_map(|(seq, at)| sent.get(seq).map(|s| at.saturating_duration_since(*s)))
        .collect();
    lat.sort();
    let delivered = lat.len();
    drop(p);
    let _ = std::fs::remove_dir_all(state);
    Ok(Figures {
        events,
        delivered,
        per_sec: delivered as f64 / elapsed.as_secs_f64(),
        p50: percentile_ms(&lat, 50.0),
        p99: percentile_ms(&lat, 99.0),
        n50: percentile_ms(&floor, 50.0),
        n99: percentile_ms(&floor, 99.0),
    })
}
