//! `awooop-client` against the real server (axum on a loopback port, real PostgreSQL): create
//! with an idempotency key, get, list, cancel, the run event stream (live, then resumed with
//! Last-Event-ID), its tenant check and its coded errors.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use serde_json::json;

use awooop::auth::AdminToken;
use awooop::contracts::ContractKind;
use awooop::coord::Coord;
use awooop::http::{AppState, app};
use awooop::runtime::executor::{GuardedGateway, NoGateway, ScriptedExecutor};
use awooop::runtime::worker::{Worker, WorkerConfig, shutdown_channel};
use awooop::tenancy;
use awooop_client::{Client, CreateRun, ListRuns, RunEvent, RunEventKind};

use crate::support::*;

const ADMIN: &str = "awa.0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

async fn serve(t: &TestDb) -> String {
    awooop::tls::install_crypto_provider();
    let state = AppState {
        control: t.control(Coord::none()),
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

fn echo() -> serde_json::Value {
    json!({
        "display_name": "Echo", "context_domain": "business",
        "safety": {"max_risk": "read_only", "max_steps": 4, "max_tokens_per_run": 1, "timeout_seconds": 60},
        "executor": {"type": "scripted", "steps": [{"type": "output", "key": "echo", "template": "you said: {{input.text}}"}]}
    })
}

async fn collect(
    mut s: std::pin::Pin<Box<dyn futures::Stream<Item = awooop_client::Result<RunEvent>> + Send>>,
) -> Vec<RunEvent> {
    let mut out = Vec::new();
    let all = async {
        while let Some(e) = s.next().await {
            out.push(e.unwrap());
        }
    };
    tokio::time::timeout(Duration::from_secs(30), all)
        .await
        .expect("the stream ends after the run's final state");
    out
}

#[tokio::test]
async fn client_drives_runs_and_streams_their_events_against_the_real_server() {
    let t = TestDb::new().await;
    let cp = t.control(Coord::none());
    for id in ["cli-a", "cli-b"] {
        let p = project(&cp, id, 1).await;
        tenancy::scope(p, async {
            let r = publish(&cp, ContractKind::Agent, "echo", echo()).await;
            approve_and_activate(&cp, r, 1).await;
        })
        .await;
    }
    let base = serve(&t).await;
    let a = Client::admin(&base, ADMIN, "cli-a");
    let b = Client::admin(&base, ADMIN, "cli-b");

    let req = CreateRun {
        agent: "echo".into(),
        input: json!({"text": "hi"}),
        mode: None,
        reply_to: None,
    };
    let first = a.create_run(&req, Some("order-4711")).await.unwrap();
    assert!(!first.replayed);
    let again = a.create_run(&req, Some("order-4711")).await.unwrap();
    assert!(again.replayed);
    assert_eq!(first.run_id, again.run_id);
    let other = CreateRun {
        input: json!({"text": "different"}),
        ..req.clone()
    };
    let e = a.create_run(&other, Some("order-4711")).await.unwrap_err();
    assert_eq!(e.code(), Some("E-RUN-003"));

    // Subscribe while the run is queued: the stream starts with the stored events and
    // continues live once a worker picks the run up.
    let live = a.events(first.run_id, None).await.unwrap();
    let mut cfg = WorkerConfig::new("client-test");
    cfg.poll = Duration::from_millis(20);
    let w = Arc::new(Worker::new(
        t.app.clone(),
        cp.clone(),
        Arc::new(ScriptedExecutor::new(GuardedGateway::new(
            cp.clone(),
            Arc::new(NoGateway),
        ))),
        cfg,
    ));
    let (stop, rx) = shutdown_channel();
    let task = tokio::spawn(w.run(rx));
    let events = collect(live).await;
    let kinds: Vec<RunEventKind> = events.iter().map(|e| e.kind).collect();
    assert_eq!(kinds.first(), Some(&RunEventKind::Created), "{kinds:?}");
    assert!(kinds.contains(&RunEventKind::Step), "{kinds:?}");
    // The completion writer records the final state and the journal in one transaction, so
    // the last step may follow the output: the stream carries both before it ends.
    assert!(kinds.contains(&RunEventKind::Output), "{kinds:?}");
    let states: Vec<&str> = events
        .iter()
        .filter(|e| e.kind == RunEventKind::State)
        .map(|e| e.data["state"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["running", "succeeded"]);
    let output = events
        .iter()
        .find(|e| e.kind == RunEventKind::Output)
        .unwrap();
    assert!(
        output.data["output"].to_string().contains("you said: hi"),
        "{events:?}"
    );
    let seqs: Vec<i64> = events.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=events.len() as i64).collect::<Vec<_>>());

    // Resume after seq 2: exactly the rest.
    let resumed = collect(a.events(first.run_id, Some(2)).await.unwrap()).await;
    assert_eq!(resumed, events[2..].to_vec());

    // get / list
    let d = a.get_run(first.run_id).await.unwrap();
    assert_eq!(d.run.state, "succeeded");
    assert!(!d.steps.is_empty());
    let page = a
        .list_runs(&ListRuns {
            limit: Some(10),
            ..ListRuns::default()
        })
        .await
        .unwrap();
    assert!(page.runs.iter().any(|r| r.run_id == first.run_id));

    // cancel a queued run (the worker is stopped first).
    let _ = stop.send(true);
    task.await.unwrap().unwrap();
    let queued = a.create_run(&req, None).await.unwrap();
    let cancelled = a.cancel_run(queued.run_id).await.unwrap();
    assert_eq!(cancelled.state, "cancelled");
    let ev = collect(a.events(queued.run_id, None).await.unwrap()).await;
    assert_eq!(
        ev.iter().map(|e| e.kind).collect::<Vec<_>>(),
        [RunEventKind::Created, RunEventKind::State]
    );

    // Another project sees neither the run nor its events.
    for e in [
        b.events(first.run_id, None).await.map(|_| ()).unwrap_err(),
        b.get_run(first.run_id).await.map(|_| ()).unwrap_err(),
        b.cancel_run(queued.run_id).await.map(|_| ()).unwrap_err(),
    ] {
        assert_eq!(e.code(), Some("E-RUN-001"), "{e}");
    }
    let page = b.list_runs(&ListRuns::default()).await.unwrap();
    assert!(page.runs.is_empty());

    // A malformed Last-Event-ID is a coded error, not a silent restart.
    let resp = reqwest::Client::new()
        .get(format!("{base}/v1/platform/runs/{}/events", first.run_id))
        .bearer_auth(ADMIN)
        .header("X-Awooop-Project", "cli-a")
        .header("Last-Event-ID", "-3")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 422);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["code"], "E-EVENTS-001");
    // No credential: 401.
    let e = Client::new(&base, "awk.cli-a.nope.nope")
        .events(first.run_id, None)
        .await
        .map(|_| ())
        .unwrap_err();
    assert_eq!(e.code(), Some("E-AUTH-002"));
    t.cleanup().await;
}

/// Python with openapi-python-client (tests/client/requirements.txt).
fn generator_python() -> Option<std::path::PathBuf> {
    let p = std::env::var_os("AWOOOP_TEST_PYTHON")
        .map(std::path::PathBuf::from)
        .or_else(|| {
            Some(std::path::PathBuf::from(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../.tools/venv/bin/python"
            )))
        })
        .filter(|p| p.with_file_name("openapi-python-client").exists());
    require_tool(
        "Python with openapi-python-client",
        "run scripts/test.sh, or set AWOOOP_TEST_PYTHON",
        p,
    )
}

/// A client generated from /openapi.json by a well-known generator (openapi-python-client)
/// creates a run and reads it back: the document is complete enough to be used, not just read.
#[tokio::test]
async fn a_python_client_generated_from_openapi_creates_a_run_and_reads_it_back() {
    let Some(py) = generator_python() else { return };
    let t = TestDb::new().await;
    let cp = t.control(Coord::none());
    let p = project(&cp, "py-a", 1).await;
    tenancy::scope(p, async {
        let r = publish(&cp, ContractKind::Agent, "echo", echo()).await;
        approve_and_activate(&cp, r, 1).await;
    })
    .await;
    let base = serve(&t).await;
    let doc = reqwest::get(format!("{base}/openapi.json"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let spec = std::env::temp_dir().join(format!("awooop-openapi-{}.json", uuid::Uuid::new_v4()));
    std::fs::write(&spec, doc).unwrap();
    let out = tokio::process::Command::new(&py)
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/client/python_client.py"
        ))
        .arg(&spec)
        .arg(&base)
        .arg(ADMIN)
        .arg("py-a")
        .arg("echo")
        .output()
        .await
        .unwrap();
    let _ = std::fs::remove_file(&spec);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["created_state"], "queued", "{v}");
    assert_eq!(v["state"], "queued", "{v}");
    assert_eq!(v["agent"], "echo", "{v}");
    // The run exists in the project, created through the generated client.
    let c = Client::admin(&base, ADMIN, "py-a");
    let d = c
        .get_run(v["run_id"].as_str().unwrap().parse().unwrap())
        .await
        .unwrap();
    assert_eq!(d.run.agent, "echo");
    t.cleanup().await;
}
