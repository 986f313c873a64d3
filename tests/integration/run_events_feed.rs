//! The shared run-event feed (one reader per run and process, fanned out; see
//! `awooop_runtime::events::feed`) against the real server and PostgreSQL: many subscribers,
//! one resuming mid-stream with Last-Event-ID, each get every event exactly once and in order;
//! a subscriber that falls behind the broadcast re-reads from the database and loses nothing;
//! another project's subscriber is refused even while the run's feed is live.

use std::time::Duration;

use futures::StreamExt;
use serde_json::json;
use uuid::Uuid;

use awooop::auth::{Actor, AdminToken};
use awooop::contracts::ContractKind;
use awooop::control::ControlPlane;
use awooop::coord::Coord;
use awooop::http::{AppState, app};
use awooop::runtime::events::feed::{self, RunFeeds};
use awooop::runtime::{CreateRun, RunService};
use awooop::tenancy::{self, ProjectId};
use awooop_client::{Client, RunEvent};

use crate::support::*;

const ADMIN: &str = "awa.feed0123456789abcdef0123456789abcdef0123456789abcdef0123456789ab";

async fn serve(cp: ControlPlane) -> String {
    awooop::tls::install_crypto_provider();
    let state = AppState {
        control: cp,
        admin: Some(AdminToken::new(ADMIN)),
        max_body_bytes: 1 << 20,
        metrics: awooop::metrics::Metrics::new(),
        approvals: None,
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app(state)).await });
    format!("http://{addr}")
}

/// Two projects, each with an active scripted agent `echo`; a queued run in the first.
async fn setup(t: &TestDb) -> (ControlPlane, ProjectId, Uuid) {
    let cp = t.control(Coord::none());
    let mut first = None;
    for id in ["feed-a", "feed-b"] {
        let p = project(&cp, id, 1).await;
        tenancy::scope(p.clone(), async {
            let r = publish(
                &cp,
                ContractKind::Agent,
                "echo",
                json!({
                    "display_name": "Echo", "context_domain": "business",
                    "safety": {"max_risk": "read_only", "max_steps": 4, "max_tokens_per_run": 1, "timeout_seconds": 60},
                    "executor": {"type": "scripted", "steps": [{"type": "output", "key": "o", "template": "x"}]}
                }),
            )
            .await;
            approve_and_activate(&cp, r, 1).await;
        })
        .await;
        first.get_or_insert(p);
    }
    let p = first.unwrap();
    let run = tenancy::scope(p.clone(), async {
        RunService::new(cp.clone())
            .create(
                &Actor::cli("test"),
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
            .unwrap()
    })
    .await
    .run_id;
    (cp, p, run)
}

/// One journal step of `run`, committed in its own transaction: one event (seq `index + 2`,
/// after `created`), written by the trigger and announced on commit.
async fn step(cp: &ControlPlane, p: &ProjectId, run: Uuid, index: i32) {
    tenancy::scope(p.clone(), async {
        let mut tx = cp.db().tenant().await.unwrap();
        sqlx::query(
            "INSERT INTO run_steps (project_id, run_id, step_index, attempt, step_key, step_type, \
             input_hash, status, trace_id, span_id, started_at) \
             VALUES (awooop_current_project(), $1, $2, 1, 's', 'test', 'sha256:0', 'failed', \
             '0123456789abcdef0123456789abcdef', '0123456789abcdef', now())",
        )
        .bind(run)
        .bind(index)
        .execute(&mut *tx)
        .await
        .unwrap();
        tx.commit().await.unwrap();
    })
    .await;
}

async fn cancel(cp: &ControlPlane, p: &ProjectId, run: Uuid) {
    tenancy::scope(p.clone(), async {
        RunService::new(cp.clone())
            .cancel(&Actor::cli("test"), run)
            .await
            .unwrap();
    })
    .await;
}

#[track_caller]
fn assert_exactly(seqs: &[i64], from: i64, to: i64, who: &str) {
    assert_eq!(
        seqs,
        (from..=to).collect::<Vec<_>>(),
        "{who}: every event once, in order"
    );
}

#[tokio::test]
async fn many_subscribers_and_a_resumed_one_get_every_event_once_and_in_order() {
    const SUBS: usize = 12;
    const STEPS: i32 = 60;
    let t = TestDb::new().await;
    let (cp, p, run) = setup(&t).await;
    let base = serve(cp.clone()).await;
    let a = Client::admin(&base, ADMIN, "feed-a");
    let b = Client::admin(&base, ADMIN, "feed-b");

    let follow = |c: Client, after: Option<i64>| {
        tokio::spawn(async move {
            let mut s = c.events(run, after).await.expect("subscribe");
            let mut out: Vec<RunEvent> = Vec::new();
            let all = async {
                while let Some(e) = s.next().await {
                    out.push(e.expect("event"));
                }
            };
            tokio::time::timeout(Duration::from_secs(60), all)
                .await
                .expect("the stream ends after the run's final state");
            out.iter().map(|e| e.seq).collect::<Vec<i64>>()
        })
    };
    let mut subs: Vec<_> = (0..SUBS).map(|_| follow(a.clone(), None)).collect();
    for i in 0..STEPS / 2 {
        step(&cp, &p, run, i).await;
    }
    // Mid-stream: one subscriber resumes after seq 10 (reads 11..=31 as history, then live),
    // and another project's subscriber is refused although the run's feed is live.
    let resumed = follow(a.clone(), Some(10));
    let e = b.events(run, None).await.map(|_| ()).unwrap_err();
    assert_eq!(e.code(), Some("E-RUN-001"), "{e}");
    let e = b.events(run, Some(10)).await.map(|_| ()).unwrap_err();
    assert_eq!(e.code(), Some("E-RUN-001"), "{e}");
    for i in STEPS / 2..STEPS {
        step(&cp, &p, run, i).await;
    }
    cancel(&cp, &p, run).await;
    // created (1), STEPS steps (2..=STEPS+1), cancelled (STEPS+2).
    let last = STEPS as i64 + 2;
    subs.push(resumed);
    let n = subs.len();
    for (i, s) in subs.into_iter().enumerate() {
        let seqs = s.await.unwrap();
        if i + 1 == n {
            assert_exactly(&seqs, 11, last, "the resumed subscriber");
        } else {
            assert_exactly(&seqs, 1, last, &format!("subscriber {i}"));
        }
    }
    t.cleanup().await;
}

#[tokio::test]
async fn a_subscriber_that_falls_behind_the_broadcast_rereads_and_loses_nothing() {
    let t = TestDb::new().await;
    let (cp, p, run) = setup(&t).await;
    let db = cp.db().clone();
    let mut fast = feed::subscribe(&db, p.clone(), run, 0).await.unwrap();
    let mut slow = feed::subscribe(&db, p.clone(), run, 0).await.unwrap();
    assert_eq!(db.shared::<RunFeeds>().live(), 1, "one feed for the run");
    step(&cp, &p, run, 0).await;
    // Both are live (history read, joined, caught up) before the slow one stops reading.
    let mut slow_seqs = Vec::new();
    for s in [&mut fast, &mut slow] {
        for want in [1, 2] {
            let e = tokio::time::timeout(Duration::from_secs(30), s.next())
                .await
                .unwrap()
                .unwrap();
            assert_eq!(e.seq, want);
        }
    }
    slow_seqs.extend([1, 2]);
    // Each step is read by the feed (the fast subscriber receives it) before the next one is
    // written, so each is its own broadcast batch: the slow subscriber, not polled now, falls
    // more than the broadcast buffer behind.
    let steps = feed::BUFFER as i32 + 40;
    for i in 1..steps {
        step(&cp, &p, run, i).await;
        let e = tokio::time::timeout(Duration::from_secs(30), fast.next())
            .await
            .expect("the fast subscriber keeps up")
            .unwrap();
        assert_eq!(e.seq, i as i64 + 2);
    }
    cancel(&cp, &p, run).await;
    let mut seqs = slow_seqs;
    let all = async {
        while let Some(e) = slow.next().await {
            seqs.push(e.seq);
        }
    };
    tokio::time::timeout(Duration::from_secs(60), all)
        .await
        .expect("the slow stream ends after the run's final state");
    assert!(
        slow.rereads() >= 1,
        "the slow subscriber lagged the broadcast"
    );
    assert_exactly(&seqs, 1, steps as i64 + 2, "the slow subscriber");
    assert_eq!(fast.rereads(), 0);

    // The tenant check runs per subscriber, before any feed is shared: the other project is
    // refused while this run's feed is live.
    let e = feed::subscribe(&db, ProjectId::parse("feed-b").unwrap(), run, 0)
        .await
        .err()
        .expect("refused");
    assert_eq!(e.code.as_str(), "E-RUN-001");
    // The feed stops with its last subscriber.
    drop(fast);
    drop(slow);
    assert_eq!(db.shared::<RunFeeds>().live(), 0);
    t.cleanup().await;
}
