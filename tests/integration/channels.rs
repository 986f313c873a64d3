//! The channel hub against real PostgreSQL: webhooks signed by the providers' official SDKs
//! (`python-telegram-bot` builds Updates, `line-bot-sdk` and `slack_sdk` sign), verification
//! failures with codes and nothing stored, idempotency under concurrent redelivery, mirror mode
//! to an existing handler, cross-tenant isolation, and the outbound path (formatting, 429
//! retries, delivery audit, progress messages) against in-process provider doubles.
//!
//! Without a Python that has the SDKs (tests/channels/requirements.txt) the SDK-signed tests
//! are skipped locally and fail under `CI=true`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;

use awooop::channels::delivery::{DeliveryConfig, DeliveryWorker};
use awooop::channels::{ChannelSecrets, Hub, HubConfig, Secret, StaticSecrets};
use awooop::contracts::{ContractKind, CredentialSource};
use awooop::control::{ControlPlane, MigrationMode};
use awooop::coord::Coord;
use awooop::runtime::executor::{
    Executor, GuardedGateway, Journal, NoGateway, Outcome, RunContext, ScriptedExecutor,
};
use awooop::runtime::worker::{Worker, WorkerConfig, shutdown_channel};
use awooop::tenancy::{self, ProjectId};
use awooop_testkit::channels::{Fault, ProviderDouble};

use crate::support::*;

const TG_SECRET: &str = "tg-webhook-secret-0123456789";
const LINE_SECRET: &str = "line-channel-secret-abcdef";
const SLACK_SECRET: &str = "slack-signing-secret-xyz";
const TG_TOKEN: &str = "123456:bot-token-value";

fn env_ref(var: &str) -> CredentialSource {
    CredentialSource::Env { var: var.into() }
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Python with the provider SDKs: `AWOOOP_TEST_PYTHON`, else `.tools/venv`.
fn python() -> Option<PathBuf> {
    let p = std::env::var_os("AWOOOP_TEST_PYTHON")
        .map(PathBuf::from)
        .or_else(|| Some(repo().join(".tools/venv/bin/python")).filter(|p| p.exists()));
    let ok = p.as_ref().is_some_and(|p| {
        std::process::Command::new(p)
            .args(["-c", "import linebot.v3, slack_sdk, telegram"])
            .status()
            .is_ok_and(|s| s.success())
    });
    if ok {
        return p;
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "no Python with line-bot-sdk, slack_sdk and python-telegram-bot: run scripts/test.sh"
    );
    eprintln!("skipping: no Python with the provider SDKs (tests/channels/requirements.txt)");
    None
}

/// A signed request: headers and body, as the SDK produced them.
#[derive(Debug, Clone)]
struct Signed {
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

/// Build signed webhook requests with the official SDKs (tests/channels/sdk_fixtures.py).
fn sdk(py: &PathBuf, specs: Value) -> Vec<Signed> {
    use std::io::Write;
    let mut child = std::process::Command::new(py)
        .arg(repo().join("tests/channels/sdk_fixtures.py"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("start sdk_fixtures.py");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(specs.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "sdk_fixtures.py failed");
    let v: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    v.into_iter()
        .map(|x| Signed {
            headers: x["headers"]
                .as_object()
                .unwrap()
                .iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
                .collect(),
            body: x["body"].as_str().unwrap().as_bytes().to_vec(),
        })
        .collect()
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

fn echo_agent() -> Value {
    json!({
        "display_name": "Echo", "context_domain": "demo",
        "safety": {"max_risk": "read_only", "max_steps": 4, "max_tokens_per_run": 1, "timeout_seconds": 60},
        "executor": {"type": "scripted", "steps": [{"type": "output", "key": "echo", "template": "you said: {{input.text}}"}]}
    })
}

fn channels_contract(
    forward_to: Option<&str>,
    progress: u32,
    allowed: &[&str],
    canary: Option<Value>,
) -> Value {
    let mut tg = json!({
        "name": "tg", "provider": "telegram", "agent": "echo",
        "verify_secret": {"env": {"var": "TG_SECRET"}},
        "send_credential": {"env": {"var": "TG_TOKEN"}},
        "progress_interval_seconds": progress, "outbound": true,
        "allowed_senders": allowed,
    });
    if let Some(f) = forward_to {
        tg["forward_to"] = json!(f);
    }
    if let Some(c) = canary {
        tg["canary"] = c;
    }
    json!({"channels": [
        tg,
        {"name": "line", "provider": "line", "agent": "echo",
         "verify_secret": {"env": {"var": "LINE_SECRET"}}, "send_credential": {"env": {"var": "LINE_TOKEN"}},
         "outbound": true, "canary": {"conversations": []}},
        {"name": "slack", "provider": "slack", "agent": "echo",
         "verify_secret": {"env": {"var": "SLACK_SECRET"}}, "send_credential": {"env": {"var": "SLACK_TOKEN"}},
         "outbound": true, "canary": {"conversations": []}},
        {"name": "api", "provider": "api", "agent": "echo"}
    ]})
}

/// One project with an echo agent and a Channel contract, and a hub on a provider double.
struct Env {
    t: TestDb,
    cp: ControlPlane,
    hub: Hub,
    router: axum::Router,
    double: ProviderDouble,
    secrets: Arc<StaticSecrets>,
}

async fn setup_project(
    cp: &ControlPlane,
    secrets: &StaticSecrets,
    id: &str,
    contract: Value,
    tg_secret: &str,
) -> ProjectId {
    let p = project(cp, id, 1).await;
    tenancy::scope(p.clone(), async {
        let r = publish(cp, ContractKind::Agent, "echo", echo_agent()).await;
        approve_and_activate(cp, r, 1).await;
        let r = publish(cp, ContractKind::Channel, "default", contract).await;
        approve_and_activate(cp, r, 1).await;
    })
    .await;
    put_credentials(secrets, id, tg_secret);
    p
}

/// Project `id`'s channel credentials (what `setup_project` gives it) in `secrets`.
fn put_credentials(secrets: &StaticSecrets, id: &str, tg_secret: &str) {
    secrets.put(id, &env_ref("TG_SECRET"), tg_secret);
    secrets.put(id, &env_ref("TG_TOKEN"), TG_TOKEN);
    secrets.put(id, &env_ref("LINE_SECRET"), LINE_SECRET);
    secrets.put(id, &env_ref("LINE_TOKEN"), "line-access-token");
    secrets.put(id, &env_ref("SLACK_SECRET"), SLACK_SECRET);
    secrets.put(id, &env_ref("SLACK_TOKEN"), "xoxb-slack-bot-token");
}

impl Env {
    /// The hub with an explicit loopback allowance in its egress policy (the doubles and the
    /// existing-handler double listen on 127.0.0.1), as `awooop up` has.
    async fn new(contract: Value) -> (Self, ProjectId) {
        Self::with_loopback(contract, true).await
    }

    async fn with_loopback(contract: Value, loopback: bool) -> (Self, ProjectId) {
        Self::build(contract, loopback, Duration::ZERO).await
    }

    /// `cache_ttl`: how long the hub keeps a resolved channel and a run basis (zero: every
    /// webhook loads them, so tests see every change at once).
    async fn build(contract: Value, loopback: bool, cache_ttl: Duration) -> (Self, ProjectId) {
        let t = TestDb::new().await;
        let cp = t.control(Coord::none());
        let double = ProviderDouble::start().await.unwrap();
        let secrets = Arc::new(StaticSecrets::default());
        let p = setup_project(&cp, &secrets, "chan-a", contract, TG_SECRET).await;
        let hub = hub_on(&t, &cp, &double, secrets.clone(), loopback, cache_ttl);
        let router = awooop::channels::routes(hub.clone());
        (
            Self {
                t,
                cp,
                hub,
                router,
                double,
                secrets,
            },
            p,
        )
    }

    /// Another hub on the same database and doubles that resolves only `secrets`: the hub
    /// of another process, such as a project's worker pod with its own credentials mounted.
    fn hub_with(&self, secrets: Arc<StaticSecrets>) -> Hub {
        hub_on(
            &self.t,
            &self.cp,
            &self.double,
            secrets,
            true,
            Duration::ZERO,
        )
    }

    async fn post(&self, path: &str, s: &Signed) -> (StatusCode, Value) {
        post_to(&self.router, path, s).await
    }

    /// A count in the project's tenant scope (owner pool, RLS applies).
    async fn count(&self, project: &str, sql: &str) -> i64 {
        let mut tx = scoped_tx(&self.t.owner, project).await;
        let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_string()))
            .fetch_one(&mut *tx)
            .await
            .unwrap();
        tx.commit().await.unwrap();
        n
    }

    async fn rows(&self, project: &str, sql: &str) -> Vec<Value> {
        let mut tx = scoped_tx(&self.t.owner, project).await;
        let v: Vec<Value> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT to_jsonb(x) FROM ({sql}) x"
        )))
        .fetch_all(&mut *tx)
        .await
        .unwrap();
        tx.commit().await.unwrap();
        v
    }

    fn delivery(&self) -> Arc<DeliveryWorker> {
        DeliveryWorker::new(
            self.hub.clone(),
            DeliveryConfig {
                chat_min_interval: Duration::ZERO,
                ..DeliveryConfig::default()
            },
        )
    }

    fn worker(&self, exec: Arc<dyn Executor>) -> Arc<Worker> {
        let mut cfg = WorkerConfig::new("chan-worker");
        cfg.slots = 4;
        cfg.poll = Duration::from_millis(20);
        Arc::new(Worker::new(self.t.app.clone(), self.cp.clone(), exec, cfg))
    }

    fn scripted(&self) -> Arc<dyn Executor> {
        Arc::new(ScriptedExecutor::new(GuardedGateway::new(
            self.cp.clone(),
            Arc::new(NoGateway),
        )))
    }
}

/// A hub on the test's database and provider doubles with `secrets` (the loopback allowance:
/// the doubles listen on 127.0.0.1, as `awooop up` allows).
fn hub_on(
    t: &TestDb,
    cp: &ControlPlane,
    double: &ProviderDouble,
    secrets: Arc<StaticSecrets>,
    loopback: bool,
    cache_ttl: Duration,
) -> Hub {
    let hub = Hub::new(
        cp.clone(),
        secrets,
        HubConfig {
            max_body_bytes: 16 * 1024,
            urls: double.urls(),
            cache_ttl,
            allow_insecure_forward: true,
            // Every refusal audited here; the rate limit has its own test.
            refusal_audit_window: Duration::ZERO,
            ..HubConfig::default()
        },
    );
    let policy = awooop::policy::PolicySource::from_db(t.db());
    hub.with_egress(if loopback {
        policy.allow_loopback()
    } else {
        policy
    })
}

/// POST a signed request to a hub's router.
async fn post_to(router: &axum::Router, path: &str, s: &Signed) -> (StatusCode, Value) {
    let mut req = Request::builder().method("POST").uri(path);
    for (k, v) in &s.headers {
        req = req.header(k.as_str(), v.as_str());
    }
    let resp = router
        .clone()
        .oneshot(req.body(Body::from(s.body.clone())).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let v = serde_json::from_slice(&bytes)
        .unwrap_or(Value::String(String::from_utf8_lossy(&bytes).into()));
    (status, v)
}

async fn set_mode(cp: &ControlPlane, p: &ProjectId, to: MigrationMode) {
    tenancy::scope(p.clone(), cp.set_mode(&admin(), to, true, Some("test")))
        .await
        .unwrap();
}

/// Poll a condition until it holds (bounded; not a timing assertion).
async fn eventually<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(20);
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

fn tg_update(id: i64, text: &str, chat: i64) -> Value {
    json!({"provider": "telegram", "secret": TG_SECRET, "update": {"update_id": id, "text": text, "chat_id": chat, "user_id": 42}})
}

#[tokio::test]
async fn sdk_signed_webhooks_store_normalized_events_and_start_one_run_each() {
    let Some(py) = python() else { return };
    let (env, _p) = Env::new(channels_contract(None, 30, &[], None)).await;
    let signed = sdk(
        &py,
        json!([
            tg_update(1001, "deploy status? key AKIAABCDEFGHIJKLMNOP", -100),
            {"provider": "line", "secret": LINE_SECRET, "events": [
                {"webhook_event_id": "01LINEEVENT1", "text": "hello line", "user_id": "U1", "reply_token": "rt-1"},
                {"webhook_event_id": "01LINEEVENT2", "kind": "postback", "data": "approve=1", "user_id": "U1"}
            ]},
            {"provider": "slack", "secret": SLACK_SECRET, "timestamp": now(), "body": {
                "type": "event_callback", "event_id": "Ev0001", "team_id": "T1",
                "event": {"type": "message", "user": "U7", "channel": "C9", "text": "hi <slack>", "ts": "1.2"}}},
            {"provider": "slack", "secret": SLACK_SECRET, "timestamp": now(), "body": {
                "type": "url_verification", "challenge": "challenge-token-abc"}},
            {"provider": "telegram", "secret": TG_SECRET, "update": {"update_id": 1002, "kind": "callback_query", "data": "approve:9"}}
        ]),
    );
    let (s, v) = env.post("/v1/webhooks/chan-a/tg", &signed[0]).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let run_id = v["events"][0]["run_id"].as_str().unwrap().to_string();
    let (s, v) = env.post("/v1/webhooks/chan-a/line", &signed[1]).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["events"].as_array().unwrap().len(), 2);
    assert!(v["events"][0]["run_id"].is_string());
    // A postback is stored and routed to the handler, not run.
    assert!(v["events"][1]["run_id"].is_null());
    let (s, v) = env.post("/v1/webhooks/chan-a/slack", &signed[2]).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, v) = env.post("/v1/webhooks/chan-a/slack", &signed[3]).await;
    assert_eq!(
        (s, v["challenge"].as_str()),
        (StatusCode::OK, Some("challenge-token-abc"))
    );
    let (s, _) = env.post("/v1/webhooks/chan-a/tg", &signed[4]).await;
    assert_eq!(s, StatusCode::OK);

    let events = env
        .rows("chan-a", "SELECT channel, provider, external_id, conversation, sender, kind, text, body_sha256, reply_token, run_id, trace_id FROM conversation_events ORDER BY received_at")
        .await;
    assert_eq!(events.len(), 5, "{events:?}");
    let tg = &events[0];
    assert_eq!(tg["external_id"], "1001");
    assert_eq!(tg["conversation"], "-100");
    assert_eq!(tg["sender"], "42");
    assert_eq!(tg["kind"], "message");
    // The text is redacted; the raw body is never stored, only its hash.
    let text = tg["text"].as_str().unwrap();
    assert!(
        !text.contains("AKIAABCDEFGHIJKLMNOP") && text.contains("[REDACTED"),
        "{text}"
    );
    let sha = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&signed[0].body));
    assert_eq!(tg["body_sha256"], sha);
    assert_eq!(events[1]["reply_token"], "rt-1");
    assert_eq!(events[2]["kind"], "postback");
    assert_eq!(events[3]["conversation"], "C9");
    assert_eq!(events[4]["kind"], "postback");
    assert_eq!(events[4]["text"], "approve:9");
    // One run per message, with reply_to, the event's trace id and an idempotency key from
    // the external id; the agent sees the redacted text.
    let runs = env
        .rows("chan-a", "SELECT run_id, reply_to, idempotency_key, trace_id, input, mode FROM runs ORDER BY created_at")
        .await;
    assert_eq!(runs.len(), 3, "{runs:?}");
    assert_eq!(runs[0]["run_id"], run_id.as_str());
    assert_eq!(
        runs[0]["reply_to"],
        json!({"channel": "tg", "conversation": "-100"})
    );
    assert_eq!(runs[0]["idempotency_key"], "ch.tg.1001");
    assert_eq!(runs[0]["trace_id"], tg["trace_id"]);
    assert_eq!(runs[0]["mode"], "shadow");
    assert!(
        !runs[0]["input"]
            .to_string()
            .contains("AKIAABCDEFGHIJKLMNOP")
    );
    assert_eq!(
        runs[2]["reply_to"],
        json!({"channel": "slack", "conversation": "C9"})
    );
    env.t.cleanup().await;
}

async fn audit_codes(env: &Env, project: &str) -> Vec<String> {
    env.rows(
        project,
        "SELECT code FROM audit_log WHERE action LIKE 'channel.%' ORDER BY at, audit_id",
    )
    .await
    .into_iter()
    .map(|v| v["code"].as_str().unwrap_or("").to_string())
    .collect()
}

#[tokio::test]
async fn bad_webhooks_get_coded_errors_an_audit_row_and_nothing_stored() {
    let Some(py) = python() else { return };
    let (env, _p) = Env::new(channels_contract(None, 30, &["-100"], None)).await;
    let marker = "MARKER-body-content-7731";
    let signed = sdk(
        &py,
        json!([
            tg_update(2001, marker, -100),
            {"provider": "telegram", "secret": "not-the-secret", "update": {"update_id": 2002, "text": marker, "chat_id": -100}},
            {"provider": "line", "secret": LINE_SECRET, "events": [{"webhook_event_id": "01BAD", "text": marker}]},
            {"provider": "slack", "secret": SLACK_SECRET, "timestamp": now() - 301, "body": {"type": "event_callback", "event_id": "EvStale", "event": {"type": "message", "user": "U1", "channel": "C1", "text": marker}}},
            {"provider": "slack", "secret": "wrong-signing-secret", "timestamp": now(), "body": {"type": "event_callback", "event_id": "EvWrong", "event": {"type": "message", "user": "U1", "channel": "C1", "text": marker}}},
            {"provider": "telegram", "secret": TG_SECRET, "update": {"update_id": 2003, "kind": "unknown"}},
            tg_update(2004, marker, -555)
        ]),
    );
    let mut cases: Vec<(&str, Signed, StatusCode, &str)> = Vec::new();
    // Tampered body (valid LINE signature over another body).
    let mut tampered = signed[2].clone();
    tampered.body = String::from_utf8(tampered.body)
        .unwrap()
        .replace("01BAD", "01BAE")
        .into_bytes();
    cases.push((
        "/v1/webhooks/chan-a/line",
        tampered,
        StatusCode::UNAUTHORIZED,
        "E-CHANNEL-003",
    ));
    cases.push((
        "/v1/webhooks/chan-a/tg",
        signed[1].clone(),
        StatusCode::UNAUTHORIZED,
        "E-CHANNEL-003",
    ));
    cases.push((
        "/v1/webhooks/chan-a/slack",
        signed[3].clone(),
        StatusCode::UNAUTHORIZED,
        "E-CHANNEL-004",
    ));
    cases.push((
        "/v1/webhooks/chan-a/slack",
        signed[4].clone(),
        StatusCode::UNAUTHORIZED,
        "E-CHANNEL-003",
    ));
    let mut no_header = signed[0].clone();
    no_header
        .headers
        .retain(|(k, _)| !k.eq_ignore_ascii_case("x-telegram-bot-api-secret-token"));
    cases.push((
        "/v1/webhooks/chan-a/tg",
        no_header,
        StatusCode::UNAUTHORIZED,
        "E-CHANNEL-002",
    ));
    let mut big = signed[0].clone();
    big.body = format!(
        "{{\"update_id\": 2005, \"pad\": \"{}{marker}\"}}",
        "x".repeat(20_000)
    )
    .into_bytes();
    cases.push((
        "/v1/webhooks/chan-a/tg",
        big,
        StatusCode::PAYLOAD_TOO_LARGE,
        "E-CHANNEL-005",
    ));
    let mut bad_utf8 = signed[0].clone();
    bad_utf8.body =
        b"{\"update_id\": 2006, \"message\": {\"text\": \"\xff\xfe MARKER-body-content-7731\"}}"
            .to_vec();
    cases.push((
        "/v1/webhooks/chan-a/tg",
        bad_utf8,
        StatusCode::BAD_REQUEST,
        "E-CHANNEL-006",
    ));
    let mut expected_codes = Vec::new();
    for (path, s, status, code) in cases {
        let (got, v) = env.post(path, &s).await;
        assert_eq!(
            (got, v["code"].as_str()),
            (status, Some(code)),
            "{path}: {v}"
        );
        expected_codes.push(code.to_string());
    }
    // Unknown event types and senders outside allowed_senders: acknowledged (so the provider
    // stops retrying), coded, audited, nothing stored.
    let (s, v) = env.post("/v1/webhooks/chan-a/tg", &signed[5]).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["ignored"][0]["code"], "E-CHANNEL-007", "{v}");
    expected_codes.push("E-CHANNEL-007".into());
    let (s, v) = env.post("/v1/webhooks/chan-a/tg", &signed[6]).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["ignored"][0]["code"], "E-CHANNEL-008", "{v}");
    expected_codes.push("E-CHANNEL-008".into());
    // Unknown channel and unknown project: 404, indistinguishable.
    let (s, v) = env.post("/v1/webhooks/chan-a/nope", &signed[0]).await;
    assert_eq!(
        (s, v["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("E-CHANNEL-001"))
    );
    let (s, v) = env
        .post("/v1/webhooks/no-such-project/tg", &signed[0])
        .await;
    assert_eq!(
        (s, v["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("E-CHANNEL-001"))
    );

    assert_eq!(
        env.count("chan-a", "SELECT count(*) FROM conversation_events")
            .await,
        0
    );
    assert_eq!(env.count("chan-a", "SELECT count(*) FROM runs").await, 0);
    let mut codes = audit_codes(&env, "chan-a").await;
    codes.sort();
    expected_codes.sort();
    assert_eq!(codes, expected_codes);
    // Nothing of any body reached the audit log.
    let audit = env.rows("chan-a", "SELECT * FROM audit_log").await;
    assert!(!serde_json::to_string(&audit).unwrap().contains(marker));
    // The refusals are counted by provider and code, and reach the platform's /metrics.
    let platform = awooop::metrics::Metrics::new();
    platform.register_part("channel", |r| env.hub.metrics().register(r));
    let text = platform.render(&env.t.app).await;
    for line in [
        "awooop_channel_verification_failures_total{provider=\"telegram\",code=\"E-CHANNEL-003\"} 1",
        "awooop_channel_verification_failures_total{provider=\"slack\",code=\"E-CHANNEL-004\"} 1",
        "awooop_channel_verification_failures_total{provider=\"telegram\",code=\"E-CHANNEL-005\"} 1",
        "awooop_channel_inbound_events_total{provider=\"telegram\",result=\"ignored\"} 2",
    ] {
        assert!(text.contains(line), "missing {line} in\n{text}");
    }
    assert_eq!(text.matches("# EOF").count(), 1);
    assert!(text.trim_end().ends_with("# EOF"));
    // The accepted message still works after all that.
    let (s, _) = env.post("/v1/webhooks/chan-a/tg", &signed[0]).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        env.count("chan-a", "SELECT count(*) FROM conversation_events")
            .await,
        1
    );
    env.t.cleanup().await;
}

#[tokio::test]
async fn redelivery_sequential_and_20_concurrent_makes_one_event_and_one_run() {
    let Some(py) = python() else { return };
    let (env, _p) = Env::new(channels_contract(None, 30, &[], None)).await;
    let signed = sdk(
        &py,
        json!([
            tg_update(3001, "once", 7),
            {"provider": "line", "secret": LINE_SECRET, "events": [{"webhook_event_id": "01CONCURRENT", "text": "many", "redelivery": true}]},
            {"provider": "slack", "secret": SLACK_SECRET, "timestamp": now(), "retry_num": 1, "body": {"type": "event_callback", "event_id": "EvRetry", "event": {"type": "message", "user": "U1", "channel": "C1", "text": "x"}}}
        ]),
    );
    for _ in 0..3 {
        let (s, _) = env.post("/v1/webhooks/chan-a/tg", &signed[0]).await;
        assert_eq!(s, StatusCode::OK);
        let (s, _) = env.post("/v1/webhooks/chan-a/slack", &signed[2]).await;
        assert_eq!(s, StatusCode::OK);
    }
    let env = Arc::new(env);
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let env = env.clone();
        let s = signed[1].clone();
        tasks.push(tokio::spawn(async move {
            env.post("/v1/webhooks/chan-a/line", &s).await
        }));
    }
    let mut fresh = 0;
    for t in tasks {
        let (s, v) = t.await.unwrap();
        assert_eq!(s, StatusCode::OK, "{v}");
        if v["events"][0]["duplicate"] == json!(false) {
            fresh += 1;
        }
    }
    assert_eq!(fresh, 1, "exactly one delivery is the original");
    for (channel, n) in [("tg", 1), ("line", 1), ("slack", 1)] {
        assert_eq!(
            env.count(
                "chan-a",
                &format!("SELECT count(*) FROM conversation_events WHERE channel = '{channel}'")
            )
            .await,
            n
        );
    }
    assert_eq!(env.count("chan-a", "SELECT count(*) FROM runs").await, 3);
    let env = Arc::try_unwrap(env).ok().expect("no other owner");
    env.t.cleanup().await;
}

#[tokio::test]
async fn shadow_mirror_forwards_to_the_existing_handler_and_never_sends() {
    let Some(py) = python() else { return };
    let double = ProviderDouble::start().await.unwrap();
    let (env, p) = Env::new(channels_contract(Some(&double.legacy_url()), 1, &[], None)).await;
    let signed = sdk(
        &py,
        json!([
            tg_update(4001, "mirror me", 5),
            tg_update(4002, "second", 5)
        ]),
    );
    let (s, v) = env.post("/v1/webhooks/chan-a/tg", &signed[0]).await;
    // The existing handler's answer goes back to Telegram unchanged.
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["text"], "handled by the existing bot", "{v}");
    let legacy = double.calls("legacy", "webhook");
    assert_eq!(legacy.len(), 1);
    assert_eq!(
        legacy[0].body,
        serde_json::from_slice::<Value>(&signed[0].body).unwrap()
    );
    assert_eq!(
        legacy[0].header("x-telegram-bot-api-secret-token"),
        Some(TG_SECRET)
    );
    let ev = env
        .rows("chan-a", "SELECT mirrored, run_id FROM conversation_events")
        .await;
    assert_eq!(ev[0]["mirrored"], true);
    // The shadow run executes, and nothing is sent: no outbound row, no progress row.
    let worker = env.worker(env.scripted());
    let (stop, rx) = shutdown_channel();
    let w = tokio::spawn(worker.clone().run(rx));
    eventually("the shadow run finishes", || async {
        env.count(
            "chan-a",
            "SELECT count(*) FROM runs WHERE state = 'succeeded'",
        )
        .await
            == 1
    })
    .await;
    assert_eq!(
        env.count("chan-a", "SELECT count(*) FROM runs WHERE mode = 'shadow'")
            .await,
        1
    );
    assert_eq!(
        env.count("chan-a", "SELECT count(*) FROM outbound_messages")
            .await,
        0
    );
    assert_eq!(
        env.count("chan-a", "SELECT count(*) FROM channel_progress")
            .await,
        0
    );
    let d = env.delivery();
    assert_eq!(d.tick().await.unwrap(), 0);
    assert!(
        env.double.requests().is_empty(),
        "a shadow project sent something"
    );
    // A failing existing handler: 502 with a code, and the mirrored event is kept.
    double.legacy_status(500);
    let (s, v) = env.post("/v1/webhooks/chan-a/tg", &signed[1]).await;
    assert_eq!(
        (s, v["code"].as_str()),
        (StatusCode::BAD_GATEWAY, Some("E-CHANNEL-010"))
    );
    assert_eq!(
        env.count("chan-a", "SELECT count(*) FROM conversation_events")
            .await,
        2
    );
    assert!(
        audit_codes(&env, "chan-a")
            .await
            .contains(&"E-CHANNEL-010".to_string())
    );
    let _ = stop.send(true);
    let _ = w.await;
    let _ = p;
    env.t.cleanup().await;
}

/// Mirror mode's `forward_to` is a URL the tenant chose: without an administrator's
/// allowance a loopback (or private, link-local, metadata) handler is never reached. The
/// mirrored event is still kept, and the refusal is audited with the egress reason.
#[tokio::test]
async fn mirror_forward_to_is_held_to_the_egress_policy() {
    let Some(py) = python() else { return };
    let double = ProviderDouble::start().await.unwrap();
    let (env, _p) = Env::with_loopback(
        channels_contract(Some(&double.legacy_url()), 1, &[], None),
        false,
    )
    .await;
    let signed = sdk(
        &py,
        json!([tg_update(4101, "reach the internal handler", 5)]),
    );
    let (s, v) = env.post("/v1/webhooks/chan-a/tg", &signed[0]).await;
    assert_eq!(
        (s, v["code"].as_str()),
        (StatusCode::BAD_GATEWAY, Some("E-CHANNEL-010")),
        "{v}"
    );
    assert!(
        double.calls("legacy", "webhook").is_empty(),
        "a tenant's forward_to reached a loopback address"
    );
    assert_eq!(
        env.count("chan-a", "SELECT count(*) FROM conversation_events")
            .await,
        1
    );
    let reasons = env
        .rows(
            "chan-a",
            "SELECT details FROM audit_log WHERE action = 'channel.forward'",
        )
        .await;
    assert!(
        reasons.iter().any(|r| r["details"]["reason"]
            .as_str()
            .is_some_and(|x| x.contains("egress policy"))),
        "{reasons:?}"
    );
    env.t.cleanup().await;
}

#[tokio::test]
async fn a_webhook_for_project_a_cannot_create_anything_in_project_b() {
    let Some(py) = python() else { return };
    let (env, _a) = Env::new(channels_contract(None, 30, &[], None)).await;
    let _b = setup_project(
        &env.cp,
        &env.secrets,
        "chan-b",
        channels_contract(None, 30, &[], None),
        "tg-secret-of-project-b-000",
    )
    .await;
    let signed = sdk(&py, json!([tg_update(5001, "for a", 1)]));
    // A's correctly signed update sent to B's webhook: B's secret does not match.
    let (s, v) = env.post("/v1/webhooks/chan-b/tg", &signed[0]).await;
    assert_eq!(
        (s, v["code"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("E-CHANNEL-003"))
    );
    assert_eq!(
        env.count("chan-b", "SELECT count(*) FROM conversation_events")
            .await,
        0
    );
    assert_eq!(
        env.count("chan-a", "SELECT count(*) FROM conversation_events")
            .await,
        0
    );
    // The refusal is audited in B (whose URL it was), not in A.
    assert_eq!(
        audit_codes(&env, "chan-b").await,
        vec!["E-CHANNEL-003".to_string()]
    );
    assert!(audit_codes(&env, "chan-a").await.is_empty());
    // Sent to A it lands in A only.
    let (s, _) = env.post("/v1/webhooks/chan-a/tg", &signed[0]).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        env.count("chan-a", "SELECT count(*) FROM conversation_events")
            .await,
        1
    );
    assert_eq!(
        env.count("chan-b", "SELECT count(*) FROM conversation_events")
            .await,
        0
    );
    assert_eq!(env.count("chan-b", "SELECT count(*) FROM runs").await, 0);
    env.t.cleanup().await;
}

#[tokio::test]
async fn api_channel_takes_events_with_a_project_api_key() {
    let (env, p) = Env::new(channels_contract(None, 30, &[], None)).await;
    let bound = |agent: &str| awooop::auth::KeyBinding {
        agents: vec![agent.to_string()],
        environments: vec!["*".to_string()],
    };
    let key = env
        .cp
        .create_api_key_bound(
            &admin(),
            &p,
            "bot",
            vec![awooop::auth::Role::Runner],
            Some(bound("echo")),
        )
        .await
        .unwrap()
        .token;
    // A runner key bound to another agent cannot start the channel's agent through it.
    let other = env
        .cp
        .create_api_key_bound(
            &admin(),
            &p,
            "other-bot",
            vec![awooop::auth::Role::Runner],
            Some(bound("triage")),
        )
        .await
        .unwrap()
        .token;
    let body = json!({"event_id": "api-1", "conversation": "c1", "sender": "s1", "text": "hi"})
        .to_string();
    let req = |auth: Option<&str>, path: &str| {
        let mut r = Request::builder()
            .method("POST")
            .uri(path)
            .header("content-type", "application/json");
        if let Some(a) = auth {
            r = r.header("authorization", format!("Bearer {a}"));
        }
        r.body(Body::from(body.clone())).unwrap()
    };
    let resp = env
        .router
        .clone()
        .oneshot(req(None, "/v1/platform/conversations/api/events"))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    // A webhook channel is not an API channel.
    let resp = env
        .router
        .clone()
        .oneshot(req(Some(&key), "/v1/platform/conversations/tg/events"))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    let resp = env
        .router
        .clone()
        .oneshot(req(Some(&other), "/v1/platform/conversations/api/events"))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    assert_eq!(env.count("chan-a", "SELECT count(*) FROM runs").await, 0);
    for _ in 0..2 {
        let resp = env
            .router
            .clone()
            .oneshot(req(Some(&key), "/v1/platform/conversations/api/events"))
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::ACCEPTED);
    }
    assert_eq!(
        env.count(
            "chan-a",
            "SELECT count(*) FROM conversation_events WHERE provider = 'api'"
        )
        .await,
        1
    );
    assert_eq!(env.count("chan-a", "SELECT count(*) FROM runs").await, 1);
    env.t.cleanup().await;
}

#[tokio::test]
async fn replies_are_escaped_split_retried_after_429_and_audited_per_attempt() {
    let Some(py) = python() else { return };
    let (env, p) = Env::new(channels_contract(
        None,
        0,
        &[],
        Some(json!({"conversations": ["77"]})),
    ))
    .await;
    set_mode(&env.cp, &p, MigrationMode::Canary).await;
    let long = format!("<b>&{}", "y".repeat(5000));
    let signed = sdk(
        &py,
        json!([
            tg_update(6001, &long, 77),
            tg_update(6002, "not selected", 88)
        ]),
    );
    for s in &signed {
        let (st, v) = env.post("/v1/webhooks/chan-a/tg", s).await;
        assert_eq!(st, StatusCode::OK, "{v}");
    }
    // Chat 88 is not selected for canary: its run is a shadow run.
    assert_eq!(
        env.count("chan-a", "SELECT count(*) FROM runs WHERE mode = 'shadow'")
            .await,
        1
    );
    let worker = env.worker(env.scripted());
    let (stop, rx) = shutdown_channel();
    let w = tokio::spawn(worker.clone().run(rx));
    eventually("both runs finish", || async {
        env.count(
            "chan-a",
            "SELECT count(*) FROM runs WHERE state = 'succeeded'",
        )
        .await
            == 2
    })
    .await;
    assert_eq!(
        env.count("chan-a", "SELECT count(*) FROM outbound_messages")
            .await,
        1
    );
    env.double.fault("telegram", [Fault::RateLimited(30)]);
    let d = env.delivery();
    assert_eq!(d.tick().await.unwrap(), 1);
    // The 429 is honoured: the message waits retry_after (30 s) and is not due now.
    let wait: f64 = {
        let r = env.rows("chan-a", "SELECT extract(epoch FROM next_attempt_at - now())::float8 AS w, status FROM outbound_messages").await;
        assert_eq!(r[0]["status"], "pending");
        r[0]["w"].as_f64().unwrap()
    };
    assert!(wait > 25.0, "retry_after not honoured: {wait}");
    assert_eq!(d.tick().await.unwrap(), 0);
    // Time passes (the test moves the clock instead of sleeping).
    let mut tx = scoped_tx(&env.t.owner, "chan-a").await;
    sqlx::query("UPDATE outbound_messages SET next_attempt_at = now()")
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(d.tick().await.unwrap(), 1);
    let sends = env.double.calls("telegram", "sendMessage");
    // One rate-limited attempt, then the two parts of the split reply: no duplicate.
    assert_eq!(sends.len(), 3, "{sends:?}");
    assert_eq!(sends[0].body, sends[1].body);
    assert_eq!(sends[1].token.as_deref(), Some(TG_TOKEN));
    assert_eq!(sends[1].body["chat_id"], "77");
    assert_eq!(sends[1].body["parse_mode"], "HTML");
    let first = sends[1].body["text"].as_str().unwrap();
    assert!(first.starts_with("you said: &lt;b&gt;&amp;y"), "{first}");
    assert!(first.encode_utf16().count() <= 4096);
    let joined = format!("{first}{}", sends[2].body["text"].as_str().unwrap());
    assert_eq!(
        joined,
        format!("you said: &lt;b&gt;&amp;{}", "y".repeat(5000))
    );
    let attempts = env
        .rows("chan-a", "SELECT attempt, part, status, http_status, provider_message_id, code FROM channel_deliveries ORDER BY at, delivery_id")
        .await;
    assert_eq!(attempts.len(), 3, "{attempts:?}");
    assert_eq!(
        (
            attempts[0]["status"].as_str(),
            attempts[0]["http_status"].as_i64()
        ),
        (Some("retry"), Some(429))
    );
    assert_eq!(attempts[0]["code"], "E-CHANNEL-009");
    assert_eq!(
        (attempts[1]["status"].as_str(), attempts[1]["part"].as_i64()),
        (Some("sent"), Some(0))
    );
    assert_eq!(
        (attempts[2]["status"].as_str(), attempts[2]["part"].as_i64()),
        (Some("sent"), Some(1))
    );
    assert!(attempts[1]["provider_message_id"].is_string());
    let m = env
        .rows(
            "chan-a",
            "SELECT status, parts_sent, attempts FROM outbound_messages",
        )
        .await;
    assert_eq!(
        m[0],
        json!({"status": "sent", "parts_sent": 2, "attempts": 2})
    );
    // Nothing more to send, nothing sent twice, nothing for the shadow chat.
    assert_eq!(d.tick().await.unwrap(), 0);
    assert_eq!(env.double.calls("telegram", "sendMessage").len(), 3);
    assert!(
        env.double
            .requests()
            .iter()
            .all(|r| r.body["chat_id"] != "88")
    );
    let _ = stop.send(true);
    let _ = w.await;
    env.t.cleanup().await;
}

/// An executor that holds the run until released, so a run stays "running".
/// Holds every run until the test opens the gate. A watch channel, not `Notify`: a run whose
/// executor reaches the gate after it opened must pass too (`notify_waiters` wakes only the
/// tasks already waiting, so a run still loading its journal when the test released the others
/// waited forever).
struct Gated {
    release: tokio::sync::watch::Receiver<bool>,
}

#[async_trait]
impl Executor for Gated {
    async fn execute(
        &self,
        ctx: &RunContext,
        _journal: &mut Journal,
    ) -> awooop::error::Result<Outcome> {
        let mut gate = self.release.clone();
        let _ = gate.wait_for(|open| *open).await;
        Ok(Outcome::Succeeded(
            json!({"text": format!("done: {}", ctx.input["text"].as_str().unwrap_or(""))}),
        ))
    }
}

#[tokio::test]
async fn a_long_run_gets_a_status_message_edited_in_place_then_the_reply_and_nothing_after() {
    let Some(py) = python() else { return };
    let (env, p) = Env::new(channels_contract(
        None,
        30,
        &[],
        Some(json!({"conversations": []})),
    ))
    .await;
    set_mode(&env.cp, &p, MigrationMode::Canary).await;
    let signed = sdk(&py, json!([tg_update(7001, "slow one", 99)]));
    let (s, v) = env.post("/v1/webhooks/chan-a/tg", &signed[0]).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (release, gate) = tokio::sync::watch::channel(false);
    let worker = env.worker(Arc::new(Gated { release: gate }));
    let (stop, rx) = shutdown_channel();
    let w = tokio::spawn(worker.clone().run(rx));
    eventually("the run is running", || async {
        env.count(
            "chan-a",
            "SELECT count(*) FROM runs WHERE state = 'running'",
        )
        .await
            == 1
    })
    .await;
    let d = env.delivery();
    // Not due before progress_interval_seconds.
    assert_eq!(d.progress_tick().await.unwrap(), 0);
    let advance = || async {
        let mut tx = scoped_tx(&env.t.owner, "chan-a").await;
        sqlx::query("UPDATE channel_progress SET next_at = now()")
            .execute(&mut *tx)
            .await
            .unwrap();
        tx.commit().await.unwrap();
    };
    for _ in 0..3 {
        advance().await;
        assert_eq!(d.progress_tick().await.unwrap(), 1);
    }
    let sends = env.double.calls("telegram", "sendMessage");
    let edits = env.double.calls("telegram", "editMessageText");
    assert_eq!(sends.len(), 1, "one status message");
    assert_eq!(edits.len(), 2, "edited in place at each interval");
    assert!(
        sends[0].body["text"]
            .as_str()
            .unwrap()
            .contains("Still on it")
    );
    let status_id = sends[0].body["chat_id"].clone();
    assert_eq!(edits[0].body["chat_id"], status_id);
    assert!(edits.iter().all(|e| e.body["message_id"].is_number()));
    // The run ends: the reply goes out, and no status message follows it.
    release.send_replace(true);
    eventually("the run succeeds", || async {
        env.count(
            "chan-a",
            "SELECT count(*) FROM runs WHERE state = 'succeeded'",
        )
        .await
            == 1
    })
    .await;
    assert_eq!(d.tick().await.unwrap(), 1);
    advance().await;
    assert_eq!(d.progress_tick().await.unwrap(), 0);
    let tg: Vec<_> = env
        .double
        .requests()
        .into_iter()
        .filter(|r| r.api == "telegram")
        .collect();
    assert_eq!(tg.len(), 4, "{tg:?}");
    assert_eq!(tg.last().unwrap().method, "sendMessage");
    assert_eq!(tg.last().unwrap().body["text"], "done: slow one");
    assert_eq!(
        env.count("chan-a", "SELECT count(*) FROM channel_progress WHERE done")
            .await,
        1
    );
    let _ = stop.send(true);
    let _ = w.await;
    env.t.cleanup().await;
}

/// The delivery loop (what `awooop up` and `awooop worker` run) waits for notices and due times,
/// not for a poll: with its poll and idle bound both an hour it still retries a reply a 429
/// deferred by a second (the due time its pass read), sends a long run's status message when
/// the progress row the group commit announced falls due, and sends the reply its run's
/// completion announced. Before, the loop only polled (every 500 ms by default), so with an
/// hour nothing after its first pass would have been sent.
#[tokio::test]
async fn the_delivery_loop_sends_on_notices_and_due_times_without_polling() {
    let Some(py) = python() else { return };
    // chan-a without progress messages (its only request to the provider is the reply the 429
    // meets), chan-b with a status message after 1 s.
    let canary = || Some(json!({"conversations": ["77"]}));
    let (env, a) = Env::new(channels_contract(None, 0, &[], canary())).await;
    let b = setup_project(
        &env.cp,
        &env.secrets,
        "chan-b",
        channels_contract(None, 1, &[], canary()),
        TG_SECRET,
    )
    .await;
    for p in [&a, &b] {
        set_mode(&env.cp, p, MigrationMode::Canary).await;
    }
    let hour = Duration::from_secs(3600);
    let d = DeliveryWorker::new(
        env.hub.clone(),
        DeliveryConfig {
            poll: hour,
            idle: hour,
            chat_min_interval: Duration::ZERO,
            ..DeliveryConfig::default()
        },
    );
    let (stop_d, rx_d) = shutdown_channel();
    let dl = tokio::spawn(d.run(rx_d));
    let (release, gate) = tokio::sync::watch::channel(true);
    let worker = env.worker(Arc::new(Gated { release: gate }));
    let (stop, rx) = shutdown_channel();
    let w = tokio::spawn(worker.clone().run(rx));
    let texts = || {
        env.double
            .calls("telegram", "sendMessage")
            .into_iter()
            .filter_map(|r| r.body["text"].as_str().map(str::to_string))
            .collect::<Vec<_>>()
    };
    let signed = sdk(
        &py,
        json!([tg_update(9201, "quick", 77), tg_update(9202, "slow", 77)]),
    );

    // 1. A reply the provider defers by a second (429, retry_after 1) goes out a second later.
    env.double.fault("telegram", [Fault::RateLimited(1)]);
    let (st, v) = env.post("/v1/webhooks/chan-a/tg", &signed[0]).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    eventually("the deferred reply is sent", || async {
        env.count(
            "chan-a",
            "SELECT count(*) FROM outbound_messages WHERE status = 'sent'",
        )
        .await
            == 1
    })
    .await;
    assert_eq!(
        env.count(
            "chan-a",
            "SELECT count(*) FROM channel_deliveries WHERE status = 'retry'"
        )
        .await,
        1,
        "the first attempt met the 429"
    );
    let tries = texts().iter().filter(|t| *t == "done: quick").count();
    assert_eq!(tries, 2, "the 429'd request and the one a second later");

    // 2. A long run: its status message when its progress row falls due (1 s), then its reply.
    release.send_replace(false);
    let (st, v) = env.post("/v1/webhooks/chan-b/tg", &signed[1]).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    eventually("the long run's status message", || async {
        texts().iter().any(|t| t.contains("Still on it"))
    })
    .await;
    release.send_replace(true);
    eventually("the long run's reply", || async {
        texts().iter().any(|t| t == "done: slow")
    })
    .await;
    let _ = stop.send(true);
    let _ = w.await;
    let _ = stop_d.send(true);
    let _ = dl.await;
    env.t.cleanup().await;
}

/// Run the queued runs of the project to completion with the scripted executor.
async fn run_all(env: &Env, n: i64) {
    let worker = env.worker(env.scripted());
    let (stop, rx) = shutdown_channel();
    let w = tokio::spawn(worker.clone().run(rx));
    eventually("the runs finish", || async {
        env.count(
            "chan-a",
            "SELECT count(*) FROM runs WHERE state = 'succeeded'",
        )
        .await
            == n
    })
    .await;
    let _ = stop.send(true);
    let _ = w.await;
}

async fn make_due(env: &Env) {
    let mut tx = scoped_tx(&env.t.owner, "chan-a").await;
    sqlx::query("UPDATE outbound_messages SET next_attempt_at = now() WHERE status = 'pending'")
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
}

#[tokio::test]
async fn line_replies_with_the_reply_token_while_valid_then_pushes_with_an_idempotent_retry_key() {
    let Some(py) = python() else { return };
    let (env, p) = Env::new(channels_contract(None, 0, &[], None)).await;
    set_mode(&env.cp, &p, MigrationMode::Canary).await;
    let signed = sdk(
        &py,
        json!([
            {"provider": "line", "secret": LINE_SECRET, "events": [
                {"webhook_event_id": "01LINEFRESH1", "text": "fresh", "user_id": "Ufresh", "reply_token": "rt-fresh"}]},
            {"provider": "line", "secret": LINE_SECRET, "events": [
                {"webhook_event_id": "01LINELATE01", "text": "late", "user_id": "Ulate", "reply_token": "rt-late"}]}
        ]),
    );
    let d = env.delivery();
    // 1. Answered within the reply token's life: the reply API, with that token.
    let (s, v) = env.post("/v1/webhooks/chan-a/line", &signed[0]).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    run_all(&env, 1).await;
    assert_eq!(d.tick().await.unwrap(), 1);
    let replies = env.double.calls("line", "message/reply");
    assert_eq!(replies.len(), 1, "{replies:?}");
    assert_eq!(replies[0].body["replyToken"], "rt-fresh");
    assert_eq!(replies[0].body["messages"][0]["text"], "you said: fresh");
    assert_eq!(replies[0].token.as_deref(), Some("line-access-token"));
    assert!(env.double.calls("line", "message/push").is_empty());

    // 2. The token has expired (LINE: about a minute) when the reply is ready: a push to the
    // user, with X-Line-Retry-Key. LINE carries the first push out but its answer is lost;
    // the retry carries the same key, LINE answers 409, and the user got one message.
    let (s, v) = env.post("/v1/webhooks/chan-a/line", &signed[1]).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let mut tx = scoped_tx(&env.t.owner, "chan-a").await;
    sqlx::query("UPDATE conversation_events SET received_at = now() - interval '2 minutes' WHERE external_id = '01LINELATE01'")
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    run_all(&env, 2).await;
    env.double.fault("line", [Fault::LostAnswer]);
    assert_eq!(d.tick().await.unwrap(), 1);
    make_due(&env).await;
    assert_eq!(d.tick().await.unwrap(), 1);
    assert_eq!(env.double.calls("line", "message/reply").len(), 1);
    let pushes = env.double.calls("line", "message/push");
    assert_eq!(pushes.len(), 2, "{pushes:?}");
    assert_eq!(pushes[0].body["to"], "Ulate");
    assert_eq!(pushes[0].body["messages"][0]["text"], "you said: late");
    let key = pushes[0].header("x-line-retry-key").expect("retry key");
    assert!(uuid::Uuid::parse_str(key).is_ok(), "{key}");
    assert_eq!(pushes[1].header("x-line-retry-key"), Some(key));
    let delivered_pushes = env
        .double
        .delivered("line")
        .into_iter()
        .filter(|r| r.method == "message/push")
        .count();
    assert_eq!(delivered_pushes, 1, "the user got the message once");
    let attempts = env
        .rows("chan-a", "SELECT d.attempt, d.status, d.http_status FROM channel_deliveries d JOIN outbound_messages m USING (project_id, message_id) WHERE m.conversation = 'Ulate' ORDER BY d.at, d.delivery_id")
        .await;
    assert_eq!(
        attempts,
        vec![
            json!({"attempt": 1, "status": "retry", "http_status": 500}),
            json!({"attempt": 2, "status": "sent", "http_status": 409})
        ]
    );
    assert_eq!(
        env.count(
            "chan-a",
            "SELECT count(*) FROM outbound_messages WHERE status = 'sent'"
        )
        .await,
        2
    );
    env.t.cleanup().await;
}

#[tokio::test]
async fn long_runs_show_progress_with_line_loading_animation_and_slack_chat_update() {
    let Some(py) = python() else { return };
    // LINE and Slack channels keep the default progress interval (30 s).
    let (env, p) = Env::new(channels_contract(None, 0, &[], None)).await;
    set_mode(&env.cp, &p, MigrationMode::Canary).await;
    let signed = sdk(
        &py,
        json!([
            {"provider": "line", "secret": LINE_SECRET, "events": [
                {"webhook_event_id": "01LINESLOW01", "text": "slow line", "user_id": "Uslow", "reply_token": "rt-slow"}]},
            {"provider": "slack", "secret": SLACK_SECRET, "timestamp": now(), "body": {
                "type": "event_callback", "event_id": "EvSlow1", "team_id": "T1",
                "event": {"type": "message", "user": "U7", "channel": "Cslow", "text": "slow slack", "ts": "1.2"}}}
        ]),
    );
    for (path, s) in [
        ("/v1/webhooks/chan-a/line", &signed[0]),
        ("/v1/webhooks/chan-a/slack", &signed[1]),
    ] {
        let (st, v) = env.post(path, s).await;
        assert_eq!(st, StatusCode::OK, "{v}");
    }
    let (release, gate) = tokio::sync::watch::channel(false);
    let worker = env.worker(Arc::new(Gated { release: gate }));
    let (stop, rx) = shutdown_channel();
    let w = tokio::spawn(worker.clone().run(rx));
    eventually("both runs are running", || async {
        env.count(
            "chan-a",
            "SELECT count(*) FROM runs WHERE state = 'running'",
        )
        .await
            == 2
    })
    .await;
    let d = env.delivery();
    assert_eq!(d.progress_tick().await.unwrap(), 0, "not due yet");
    let advance = || async {
        let mut tx = scoped_tx(&env.t.owner, "chan-a").await;
        sqlx::query("UPDATE channel_progress SET next_at = now() WHERE NOT done")
            .execute(&mut *tx)
            .await
            .unwrap();
        tx.commit().await.unwrap();
    };
    // 30 s, 60 s: LINE shows the loading animation; Slack posts a status and edits it.
    for _ in 0..2 {
        advance().await;
        assert_eq!(d.progress_tick().await.unwrap(), 2);
    }
    let loading = env.double.calls("line", "chat/loading/start");
    assert_eq!(loading.len(), 2, "{loading:?}");
    assert_eq!(loading[0].body["chatId"], "Uslow");
    let secs = loading[0].body["loadingSeconds"].as_u64().unwrap();
    assert!((5..=60).contains(&secs) && secs % 5 == 0, "{secs}");
    assert!(env.double.calls("line", "message/push").is_empty());
    let posts = env.double.calls("slack", "chat.postMessage");
    let updates = env.double.calls("slack", "chat.update");
    assert_eq!((posts.len(), updates.len()), (1, 1));
    assert!(
        posts[0].body["text"]
            .as_str()
            .unwrap()
            .contains("Still on it")
    );
    assert_eq!(posts[0].body["channel"], "Cslow");
    assert_eq!(updates[0].body["channel"], "Cslow");
    assert!(
        updates[0].body["ts"]
            .as_str()
            .unwrap()
            .starts_with("1764288000.")
    );
    // 90 s: the animation has run out: LINE gets one status push; Slack another edit.
    advance().await;
    assert_eq!(d.progress_tick().await.unwrap(), 2);
    let pushes = env.double.calls("line", "message/push");
    assert_eq!(pushes.len(), 1);
    assert!(
        pushes[0].body["messages"][0]["text"]
            .as_str()
            .unwrap()
            .contains("Still on it")
    );
    assert_eq!(env.double.calls("slack", "chat.update").len(), 2);
    // 120 s: LINE has no edit, so no second status message; Slack edits again.
    advance().await;
    assert_eq!(d.progress_tick().await.unwrap(), 1);
    assert_eq!(env.double.calls("line", "message/push").len(), 1);
    assert_eq!(env.double.calls("slack", "chat.update").len(), 3);
    // The runs end: the replies go out and nothing follows them.
    release.send_replace(true);
    eventually("the runs succeed", || async {
        env.count(
            "chan-a",
            "SELECT count(*) FROM runs WHERE state = 'succeeded'",
        )
        .await
            == 2
    })
    .await;
    assert_eq!(d.tick().await.unwrap(), 2);
    let before = env.double.requests().len();
    advance().await;
    assert_eq!(d.progress_tick().await.unwrap(), 0);
    assert_eq!(env.double.requests().len(), before);
    let slack_last = env.double.calls("slack", "chat.postMessage");
    assert_eq!(slack_last.len(), 2);
    assert_eq!(slack_last[1].body["text"], "done: slow slack");
    assert_eq!(
        env.count("chan-a", "SELECT count(*) FROM channel_progress WHERE done")
            .await,
        2
    );
    let _ = stop.send(true);
    let _ = w.await;
    env.t.cleanup().await;
}

#[tokio::test]
async fn refused_webhooks_write_one_audit_row_per_channel_and_code_per_window() {
    let (env, _p) = Env::new(channels_contract(None, 0, &[], None)).await;
    // The platform default: one row per (channel, code) per minute.
    let hub = Hub::new(
        env.cp.clone(),
        env.secrets.clone(),
        HubConfig {
            urls: env.double.urls(),
            cache_ttl: Duration::ZERO,
            ..HubConfig::default()
        },
    );
    let router = awooop::channels::routes(hub.clone());
    let send = |secret: Option<&'static str>, path: &'static str| {
        let router = router.clone();
        async move {
            let mut req = Request::builder()
                .method("POST")
                .uri(path)
                .header("content-type", "application/json");
            if let Some(s) = secret {
                req = req.header("x-telegram-bot-api-secret-token", s);
            }
            router
                .oneshot(req.body(Body::from(r#"{"update_id": 1}"#)).unwrap())
                .await
                .unwrap()
                .status()
        }
    };
    for _ in 0..5 {
        assert_eq!(
            send(Some("wrong-secret"), "/v1/webhooks/chan-a/tg").await,
            StatusCode::UNAUTHORIZED
        );
    }
    for _ in 0..3 {
        assert_eq!(
            send(None, "/v1/webhooks/chan-a/tg").await,
            StatusCode::UNAUTHORIZED
        );
    }
    // Another channel has its own allowance.
    assert_eq!(
        send(Some("wrong-secret"), "/v1/webhooks/chan-a/line").await,
        StatusCode::UNAUTHORIZED
    );
    let mut codes = audit_codes(&env, "chan-a").await;
    codes.sort();
    assert_eq!(
        codes,
        vec!["E-CHANNEL-002", "E-CHANNEL-002", "E-CHANNEL-003"]
    );
    let rows = env
        .rows("chan-a", "SELECT target, code FROM audit_log WHERE action = 'channel.webhook' ORDER BY target, code")
        .await;
    assert_eq!(
        rows,
        vec![
            json!({"target": "line", "code": "E-CHANNEL-002"}),
            json!({"target": "tg", "code": "E-CHANNEL-002"}),
            json!({"target": "tg", "code": "E-CHANNEL-003"})
        ]
    );
    // Every refusal is counted; those without a row also as unaudited.
    let platform = awooop::metrics::Metrics::new();
    platform.register_part("channel", |r| hub.metrics().register(r));
    let m = platform.encode();
    assert!(
        m.contains(r#"awooop_channel_verification_failures_total{provider="telegram",code="E-CHANNEL-003"} 5"#),
        "{m}"
    );
    assert!(
        m.contains(
            r#"awooop_channel_refusals_unaudited_total{provider="telegram",code="E-CHANNEL-003"} 4"#
        ),
        "{m}"
    );
    assert!(
        m.contains(
            r#"awooop_channel_refusals_unaudited_total{provider="telegram",code="E-CHANNEL-002"} 2"#
        ),
        "{m}"
    );
    env.t.cleanup().await;
}

#[tokio::test]
async fn messages_to_one_chat_are_held_to_the_per_chat_rate_limit() {
    let Some(py) = python() else { return };
    let (env, p) = Env::new(channels_contract(
        None,
        0,
        &[],
        Some(json!({"conversations": []})),
    ))
    .await;
    set_mode(&env.cp, &p, MigrationMode::Canary).await;
    // A reply of two parts to chat 55, and a reply to chat 66.
    let signed = sdk(
        &py,
        json!([
            tg_update(8001, &"z".repeat(5000), 55),
            tg_update(8002, "other chat", 66)
        ]),
    );
    for s in &signed {
        let (st, v) = env.post("/v1/webhooks/chan-a/tg", s).await;
        assert_eq!(st, StatusCode::OK, "{v}");
    }
    run_all(&env, 2).await;
    let d = DeliveryWorker::new(
        env.hub.clone(),
        DeliveryConfig {
            chat_min_interval: Duration::from_secs(1),
            ..DeliveryConfig::default()
        },
    );
    assert_eq!(d.tick().await.unwrap(), 2);
    let sends = env.double.calls("telegram", "sendMessage");
    assert_eq!(sends.len(), 3, "{sends:?}");
    let to_55: Vec<_> = sends.iter().filter(|r| r.body["chat_id"] == "55").collect();
    assert_eq!(to_55.len(), 2);
    // Telegram allows about one message per second per chat: the second part waited.
    let gap = to_55[1].at.duration_since(to_55[0].at);
    assert!(gap >= Duration::from_millis(950), "{gap:?}");
    env.t.cleanup().await;
}

/// A project's worker pod (`awooop worker --project`) holds only that project's credentials,
/// so its delivery worker must leave other projects' messages alone: before, it claimed every
/// project's, and another tenant's reply failed there for want of that tenant's send credential
/// (lost, `failed`), after its text had passed through the wrong tenant's pod.
#[tokio::test]
async fn a_project_bound_delivery_worker_sends_only_its_own_projects_messages() {
    let Some(py) = python() else { return };
    let contract = || channels_contract(None, 0, &[], Some(json!({"conversations": ["77"]})));
    let (env, a) = Env::new(contract()).await;
    let b = setup_project(&env.cp, &env.secrets, "chan-b", contract(), TG_SECRET).await;
    for p in [&a, &b] {
        set_mode(&env.cp, p, MigrationMode::Canary).await;
    }
    let signed = sdk(
        &py,
        json!([tg_update(9101, "for a", 77), tg_update(9102, "for b", 77)]),
    );
    for (s, project) in signed.iter().zip(["chan-a", "chan-b"]) {
        let (st, v) = env.post(&format!("/v1/webhooks/{project}/tg"), s).await;
        assert_eq!(st, StatusCode::OK, "{v}");
    }
    let worker = env.worker(env.scripted());
    let (stop, rx) = shutdown_channel();
    let w = tokio::spawn(worker.clone().run(rx));
    for project in ["chan-a", "chan-b"] {
        eventually(
            "each project's run finishes with a reply queued",
            || async {
                env.count(project, "SELECT count(*) FROM outbound_messages")
                    .await
                    == 1
            },
        )
        .await;
    }
    let _ = stop.send(true);
    let _ = w.await;

    // Each pod's hub resolves only its own project's credentials.
    let pod = |project: &ProjectId| {
        let secrets = Arc::new(StaticSecrets::default());
        put_credentials(&secrets, project.as_str(), TG_SECRET);
        DeliveryWorker::for_project(
            env.hub_with(secrets),
            DeliveryConfig {
                chat_min_interval: Duration::ZERO,
                ..DeliveryConfig::default()
            },
            Some(project.clone()),
        )
    };
    let message = |project: &'static str| {
        let env = &env;
        async move {
            env.rows(
                project,
                "SELECT status, attempts, (SELECT count(*) FROM channel_deliveries) AS tries FROM outbound_messages",
            )
            .await
            .remove(0)
        }
    };
    let pod_a = pod(&a);
    assert_eq!(
        pod_a.tick().await.unwrap(),
        1,
        "pod a claims only its message"
    );
    assert_eq!(message("chan-a").await["status"], "sent");
    let untouched = message("chan-b").await;
    assert_eq!(untouched["status"], "pending", "{untouched}");
    assert_eq!(untouched["attempts"], 0, "{untouched}");
    assert_eq!(untouched["tries"], 0, "{untouched}");
    assert_eq!(pod_a.tick().await.unwrap(), 0);
    assert_eq!(pod(&b).tick().await.unwrap(), 1);
    assert_eq!(message("chan-b").await["status"], "sent");
    let sends = env.double.calls("telegram", "sendMessage");
    let texts: Vec<&str> = sends
        .iter()
        .filter_map(|r| r.body["text"].as_str())
        .collect();
    assert_eq!(sends.len(), 2, "{texts:?}");
    env.t.cleanup().await;
}

#[tokio::test]
async fn channel_register_sets_the_telegram_webhook_with_a_generated_secret_and_channel_test_sends()
{
    let t = TestDb::new().await;
    let cp = t.control(Coord::none());
    let double = ProviderDouble::start().await.unwrap();
    let creds = std::env::temp_dir().join(format!("awooop-chan-creds-{}", t.name));
    let secret_file = creds.join("chan-r").join("tg-webhook-secret");
    let contract = json!({"channels": [
        {"name": "tg", "provider": "telegram", "agent": "echo",
         "verify_secret": {"file": {"path": secret_file.to_str().unwrap()}},
         "send_credential": {"env": {"var": "CHAN_R_TG_TOKEN"}}, "outbound": true},
        {"name": "line", "provider": "line", "agent": "echo",
         "verify_secret": {"env": {"var": "CHAN_R_LINE_SECRET"}},
         "send_credential": {"env": {"var": "CHAN_R_LINE_TOKEN"}}, "outbound": true}
    ]});
    setup_project(
        &cp,
        &StaticSecrets::default(),
        "chan-r",
        contract,
        TG_SECRET,
    )
    .await;
    let state = std::env::temp_dir().join(format!("awooop-chan-state-{}", t.name));
    let urls = double.urls();
    let run = |args: Vec<&str>| {
        let mut c = tokio::process::Command::new(env!("CARGO_BIN_EXE_awooop"));
        c.args(args)
            .args([
                "--telegram-api-url",
                &urls.telegram,
                "--line-api-url",
                &urls.line,
                "--slack-api-url",
                &urls.slack,
            ])
            .env("DATABASE_URL", &t.url)
            .env("AWOOOP_STATE_DIR", &state)
            .env("HOME", &state)
            .env("AWOOOP_GATEWAY_CREDENTIAL_DIR", &creds)
            .env(
                "AWOOOP_GATEWAY_ENV_CREDENTIALS",
                "chan-r:CHAN_R_TG_TOKEN,chan-r:CHAN_R_LINE_SECRET,chan-r:CHAN_R_LINE_TOKEN",
            )
            .env("CHAN_R_TG_TOKEN", TG_TOKEN)
            .env("CHAN_R_LINE_SECRET", LINE_SECRET)
            .env("CHAN_R_LINE_TOKEN", "line-access-token")
            .env_remove("REDIS_URL")
            .env_remove("KUBECONFIG");
        async move {
            let out = c.output().await.unwrap();
            (
                out.status.code().unwrap_or(-1),
                String::from_utf8_lossy(&out.stdout).to_string(),
                String::from_utf8_lossy(&out.stderr).to_string(),
            )
        }
    };
    let base = [
        "channel",
        "register",
        "--project",
        "chan-r",
        "--public-url",
        "https://hooks.example.com/",
    ];
    let (code, out, err) = run([&base[..], &["--channel", "tg"]].concat()).await;
    assert_eq!(code, 0, "{out}{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        v["webhook"],
        "https://hooks.example.com/v1/webhooks/chan-r/tg"
    );
    // A secret token was generated into the channel's verify_secret file (owner-only) and
    // given to setWebhook; it is not printed.
    let secret = std::fs::read_to_string(&secret_file).unwrap();
    assert_eq!(secret.len(), 64, "{secret}");
    assert!(!out.contains(&secret) && !err.contains(&secret));
    assert!(!out.contains(TG_TOKEN) && !err.contains(TG_TOKEN));
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&secret_file)
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o077, 0, "{mode:o}");
    let set = double.calls("telegram", "setWebhook");
    assert_eq!(set.len(), 1, "{set:?}");
    assert_eq!(set[0].token.as_deref(), Some(TG_TOKEN));
    assert_eq!(
        set[0].body["url"],
        "https://hooks.example.com/v1/webhooks/chan-r/tg"
    );
    assert_eq!(set[0].body["secret_token"], secret.as_str());
    // Registering again keeps the secret the provider already has.
    let (code, _, err) = run([&base[..], &["--channel", "tg"]].concat()).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(std::fs::read_to_string(&secret_file).unwrap(), secret);
    let set = double.calls("telegram", "setWebhook");
    assert_eq!(set[1].body["secret_token"], secret.as_str());
    // LINE: nothing to call, what to configure is printed.
    let (code, out, err) = run([&base[..], &["--channel", "line"]].concat()).await;
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        v["webhook"],
        "https://hooks.example.com/v1/webhooks/chan-r/line"
    );
    assert!(v["configure"].as_str().unwrap().contains("Webhook URL"));
    assert!(!out.contains(LINE_SECRET));
    // A plain-HTTP public URL is refused.
    let (code, _, _) = run(vec![
        "channel",
        "register",
        "--project",
        "chan-r",
        "--channel",
        "tg",
        "--public-url",
        "http://hooks.example.com",
    ])
    .await;
    assert_ne!(code, 0);

    // channel test: one message through the channel's send credential.
    let (code, out, err) = run(vec![
        "channel",
        "test",
        "--project",
        "chan-r",
        "--channel",
        "tg",
        "--conversation",
        "4242",
        "--text",
        "ping <ok>",
    ])
    .await;
    assert_eq!(code, 0, "{out}{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["sent"], true);
    let sends = double.calls("telegram", "sendMessage");
    assert_eq!(sends.len(), 1);
    assert_eq!(sends[0].body["chat_id"], "4242");
    assert_eq!(sends[0].body["text"], "ping &lt;ok&gt;");
    let (code, _, err) = run(vec![
        "channel",
        "test",
        "--project",
        "chan-r",
        "--channel",
        "line",
        "--conversation",
        "Uline",
    ])
    .await;
    assert_eq!(code, 0, "{err}");
    let pushes = double.calls("line", "message/push");
    assert_eq!(pushes.len(), 1);
    assert_eq!(pushes[0].body["to"], "Uline");
    assert!(pushes[0].header("x-line-retry-key").is_some());
    // Another project's channel cannot be used with this project's name.
    let (code, _, _) = run(vec![
        "channel",
        "test",
        "--project",
        "chan-x",
        "--channel",
        "tg",
        "--conversation",
        "1",
    ])
    .await;
    assert_ne!(code, 0);
    assert_eq!(double.calls("telegram", "sendMessage").len(), 1);
    let _ = std::fs::remove_dir_all(&creds);
    let _ = std::fs::remove_dir_all(&state);
    t.cleanup().await;
}

/// A Telegram update as Telegram posts it (the `setWebhook` secret in its header), built here
/// rather than by the SDK: what these tests check starts after verification.
fn tg_plain(update_id: i64, text: &str) -> Signed {
    Signed {
        headers: vec![
            ("content-type".into(), "application/json".into()),
            ("x-telegram-bot-api-secret-token".into(), TG_SECRET.into()),
        ],
        body: json!({"update_id": update_id, "message": {
            "message_id": update_id, "date": 1764288000, "text": text,
            "chat": {"id": -100, "type": "group", "title": "ops"},
            "from": {"id": 42, "is_bot": false, "first_name": "Ops"}}})
        .to_string()
        .into_bytes(),
    }
}

/// Secrets that count their resolutions (one per load of a resolved channel) and take a
/// while, so that concurrent webhooks overlap a load.
struct CountingSecrets {
    inner: Arc<StaticSecrets>,
    n: std::sync::atomic::AtomicUsize,
}

#[async_trait]
impl ChannelSecrets for CountingSecrets {
    async fn resolve(
        &self,
        project: &ProjectId,
        source: &CredentialSource,
    ) -> awooop::error::Result<Secret> {
        self.n.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(30)).await;
        self.inner.resolve(project, source).await
    }
}

/// The hub's caches (resolved channel, run basis) are loaded once per key when many webhooks
/// arrive while an entry is missing or expired (single flight), not once per webhook, and an
/// entry is never used past its TTL (a rotated verification secret is in force after it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_webhooks_on_an_expired_cache_load_the_channel_and_basis_once() {
    let (env, _p) = Env::new(channels_contract(None, 0, &[], None)).await;
    let secrets = Arc::new(CountingSecrets {
        inner: env.secrets.clone(),
        n: Default::default(),
    });
    let ttl = Duration::from_millis(1500);
    let hub = Hub::new(
        env.cp.clone(),
        secrets.clone(),
        HubConfig {
            urls: env.double.urls(),
            cache_ttl: ttl,
            ..HubConfig::default()
        },
    );
    let router = awooop::channels::routes(hub.clone());
    let burst = |from: i64| {
        let router = router.clone();
        async move {
            let tasks: Vec<_> = (0..32)
                .map(|i| {
                    let router = router.clone();
                    tokio::spawn(async move {
                        post_to(&router, "/v1/webhooks/chan-a/tg", &tg_plain(from + i, "hi")).await
                    })
                })
                .collect();
            for t in tasks {
                let (s, v) = t.await.unwrap();
                assert_eq!(s, StatusCode::OK, "{v}");
            }
        }
    };
    let resolves = || secrets.n.load(std::sync::atomic::Ordering::SeqCst);

    // 1. 32 concurrent webhooks on an empty cache: one load of each.
    burst(8000).await;
    assert_eq!(resolves(), 1, "the channel was loaded once per webhook");
    assert_eq!(hub.metrics().cache_loads("channel"), 1);
    assert_eq!(hub.metrics().cache_loads("basis"), 1);

    // 2. Expired: again one load of each for 32 concurrent webhooks.
    tokio::time::sleep(ttl + Duration::from_millis(100)).await;
    burst(8100).await;
    assert_eq!(
        resolves(),
        2,
        "the expired channel was reloaded once per webhook"
    );
    assert_eq!(hub.metrics().cache_loads("channel"), 2);
    assert_eq!(hub.metrics().cache_loads("basis"), 2);
    assert_eq!(
        env.count("chan-a", "SELECT count(*) FROM conversation_events")
            .await,
        64
    );

    // 3. Never past the TTL: the verification secret is rotated; once the TTL has passed, a
    // webhook signed with the old one is refused and one signed with the new one accepted.
    env.secrets
        .put("chan-a", &env_ref("TG_SECRET"), "rotated-secret-0123456789");
    tokio::time::sleep(ttl + Duration::from_millis(100)).await;
    let (s, v) = post_to(&router, "/v1/webhooks/chan-a/tg", &tg_plain(8200, "old")).await;
    assert!(
        s == StatusCode::UNAUTHORIZED || s == StatusCode::FORBIDDEN,
        "the old secret was used past the TTL: {s} {v}"
    );
    let mut new = tg_plain(8201, "new");
    new.headers[1].1 = "rotated-secret-0123456789".into();
    let (s, v) = post_to(&router, "/v1/webhooks/chan-a/tg", &new).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    env.t.cleanup().await;
}

/// The inbound fast path prepares runs on a cached basis (mode, active revisions). When the
/// activation's NOTIFY is missed (here: a hub that never listens, with an hour of cache), the
/// write transaction's re-check must refuse the stale basis, and the run is prepared again on
/// the fresh one: the new agent revision and the new mode, never the cached ones.
#[tokio::test]
async fn a_stale_cached_run_basis_is_refused_by_the_write_and_the_run_prepared_again() {
    let (env, p) = Env::new(channels_contract(
        None,
        0,
        &[],
        Some(json!({"conversations": []})),
    ))
    .await;
    let hub = Hub::new(
        env.cp.clone(),
        env.secrets.clone(),
        HubConfig {
            urls: env.double.urls(),
            cache_ttl: Duration::from_secs(3600),
            ..HubConfig::default()
        },
    );
    let router = awooop::channels::routes(hub);
    let run_of = |v: &Value| v["events"][0]["run_id"].as_str().unwrap().to_string();
    let basis_of = |run: String| {
        let env = &env;
        async move {
            env.rows(
                "chan-a",
                &format!(
                    "SELECT agent_revision_id::text AS rev, mode FROM runs WHERE run_id = '{run}'"
                ),
            )
            .await
            .pop()
            .unwrap()
        }
    };

    // 1. The first webhook caches the basis: shadow mode, agent revision 1.
    let (s, v) = post_to(&router, "/v1/webhooks/chan-a/tg", &tg_plain(5001, "first")).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let first = basis_of(run_of(&v)).await;
    assert_eq!(first["mode"], "shadow");

    // 2. A new agent revision is activated and the project goes to canary; the hub hears
    // nothing of it (no listener, cache TTL an hour).
    let mut v2 = echo_agent();
    v2["executor"]["steps"][0]["template"] = json!("second revision: {{input.text}}");
    let rev2 = tenancy::scope(p.clone(), async {
        let r = publish(&env.cp, ContractKind::Agent, "echo", v2).await;
        approve_and_activate(&env.cp, r, 1).await;
        r
    })
    .await;
    set_mode(&env.cp, &p, MigrationMode::Canary).await;
    assert_ne!(first["rev"], json!(rev2.to_string()));

    // 3. The next webhook's run is written on the fresh basis.
    let (s, v) = post_to(&router, "/v1/webhooks/chan-a/tg", &tg_plain(5002, "second")).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let second = basis_of(run_of(&v)).await;
    assert_eq!(
        second,
        json!({"rev": rev2.to_string(), "mode": "canary"}),
        "the run was written on the stale cached basis {first}"
    );
    // One event and one run per webhook: the refused attempt wrote nothing.
    assert_eq!(
        env.count("chan-a", "SELECT count(*) FROM conversation_events")
            .await,
        2
    );
    assert_eq!(env.count("chan-a", "SELECT count(*) FROM runs").await, 2);
    env.t.cleanup().await;
}

/// LINE refuses a reply whose token expired or was used (400 "Invalid reply token"): the same
/// message goes out once as a push, with `X-Line-Retry-Key`, and nothing is sent twice.
#[tokio::test]
async fn a_refused_line_reply_token_falls_back_to_one_push_with_a_retry_key() {
    let Some(py) = python() else { return };
    let (env, p) = Env::new(channels_contract(None, 0, &[], None)).await;
    set_mode(&env.cp, &p, MigrationMode::Canary).await;
    let signed = sdk(
        &py,
        json!([{"provider": "line", "secret": LINE_SECRET, "events": [
            {"webhook_event_id": "01LINEREFUSE", "text": "refused", "user_id": "Urefused", "reply_token": "rt-used"}]}]),
    );
    let (s, v) = env.post("/v1/webhooks/chan-a/line", &signed[0]).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    run_all(&env, 1).await;
    // The token is fresh by the hub's clock, but LINE refuses it.
    env.double.fault("line", [Fault::Reject]);
    let d = env.delivery();
    assert_eq!(d.tick().await.unwrap(), 1);

    let replies = env.double.calls("line", "message/reply");
    assert_eq!(replies.len(), 1, "{replies:?}");
    assert_eq!(replies[0].body["replyToken"], "rt-used");
    let pushes = env.double.calls("line", "message/push");
    assert_eq!(pushes.len(), 1, "{pushes:?}");
    assert_eq!(pushes[0].body["to"], "Urefused");
    assert_eq!(pushes[0].body["messages"][0]["text"], "you said: refused");
    assert_eq!(pushes[0].token.as_deref(), Some("line-access-token"));
    let key = pushes[0].header("x-line-retry-key").expect("retry key");
    assert!(uuid::Uuid::parse_str(key).is_ok(), "{key}");
    let delivered: Vec<String> = env
        .double
        .delivered("line")
        .into_iter()
        .map(|r| r.method)
        .collect();
    assert_eq!(
        delivered,
        vec!["message/push"],
        "the user got the message once"
    );
    let attempts = env
        .rows("chan-a", "SELECT d.attempt, d.part, d.status, d.http_status FROM channel_deliveries d ORDER BY d.at, d.delivery_id")
        .await;
    assert_eq!(
        attempts,
        vec![
            json!({"attempt": 1, "part": 0, "status": "retry", "http_status": 400}),
            json!({"attempt": 1, "part": 0, "status": "sent", "http_status": 200})
        ]
    );
    assert_eq!(
        env.count(
            "chan-a",
            "SELECT count(*) FROM outbound_messages WHERE status = 'sent' AND parts_sent = 1"
        )
        .await,
        1
    );
    // Nothing is left to send: a further tick sends nothing.
    make_due(&env).await;
    assert_eq!(d.tick().await.unwrap(), 0);
    assert_eq!(env.double.calls("line", "message/reply").len(), 1);
    assert_eq!(env.double.calls("line", "message/push").len(), 1);
    env.t.cleanup().await;
}

/// A webhook's group commit defers its runs' wake-ups (migration 0071): its transaction sends
/// no NOTIFY, so concurrent group commits are not serialised on PostgreSQL's NOTIFY lock, and
/// the hub announces each new run after the COMMIT, so workers and event streams still wake
/// at once: every run of a concurrent burst is announced with its `created` event (seq 1) and
/// the workers' channel is notified.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_runs_are_announced_after_their_group_commit() {
    let (env, _p) = Env::new(channels_contract(None, 0, &[], None)).await;
    let mut l = sqlx::postgres::PgListener::connect_with(&env.t.app)
        .await
        .unwrap();
    l.listen_all(["awooop_runs", "awooop_run_events"])
        .await
        .unwrap();
    let tasks: Vec<_> = (0..16)
        .map(|i| {
            let router = env.router.clone();
            tokio::spawn(async move {
                post_to(&router, "/v1/webhooks/chan-a/tg", &tg_plain(9000 + i, "hi")).await
            })
        })
        .collect();
    let mut runs = std::collections::HashSet::new();
    for t in tasks {
        let (s, v) = t.await.unwrap();
        assert_eq!(s, StatusCode::OK, "{v}");
        runs.insert(v["events"][0]["run_id"].as_str().unwrap().to_string());
    }
    assert_eq!(runs.len(), 16);
    let (mut announced, mut woken) = (std::collections::HashSet::new(), false);
    while announced.len() < runs.len() || !woken {
        let n = tokio::time::timeout(Duration::from_secs(10), l.recv())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "missing notices: {} of 16 runs, workers woken {woken}",
                    announced.len()
                )
            })
            .unwrap();
        match n.channel() {
            "awooop_runs" => woken = true,
            _ => {
                let parts: Vec<&str> = n.payload().split(' ').collect();
                assert_eq!((parts[0], parts[2]), ("chan-a", "1"), "{}", n.payload());
                assert!(runs.contains(parts[1]), "{}", n.payload());
                announced.insert(parts[1].to_string());
            }
        }
    }
    drop(l);
    env.t.cleanup().await;
}

/// After the server ended every session (a restart, a failover), webhooks are still stored:
/// the event writer's next connection, taken from the pool unchecked because it was used a
/// moment before it died, fails its `BEGIN`; the writer begins again on another one instead of
/// answering the batch's webhooks with 503. The hub's caches are warm (long TTL), so the
/// writer's transaction is the webhook's only database work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_are_stored_after_the_server_ended_every_session() {
    let (env, _p) = Env::build(
        channels_contract(None, 0, &[], None),
        true,
        Duration::from_secs(3600),
    )
    .await;
    let burst = |from: i64| {
        let tasks: Vec<_> = (from..from + 16)
            .map(|i| {
                let router = env.router.clone();
                tokio::spawn(async move {
                    post_to(&router, "/v1/webhooks/chan-a/tg", &tg_plain(i, "hi")).await
                })
            })
            .collect();
        async move {
            let mut codes = Vec::new();
            for t in tasks {
                let (s, v) = t.await.unwrap();
                codes.push((s, v));
            }
            codes
        }
    };
    for (s, v) in burst(7000).await {
        assert_eq!(s, StatusCode::OK, "{v}");
    }
    assert!(env.t.end_app_sessions().await > 0);
    let after = burst(8000).await;
    let refused: Vec<_> = after.iter().filter(|(s, _)| *s != StatusCode::OK).collect();
    assert!(
        refused.is_empty(),
        "{} of 16 webhooks refused after the sessions ended: {refused:?}",
        refused.len()
    );
    assert_eq!(
        env.count("chan-a", "SELECT count(*) FROM conversation_events")
            .await,
        32
    );
    env.t.cleanup().await;
}

/// Rows of `table` this backend has read in the current transaction (sequential and index
/// scans; PostgreSQL 15 reports them per transaction until it flushes its statistics).
async fn rows_read(tx: &mut sqlx::PgConnection, table: &str) -> i64 {
    sqlx::query_scalar(
        "SELECT pg_stat_get_xact_tuples_returned($1::regclass) + pg_stat_get_xact_tuples_fetched($1::regclass)",
    )
    .bind(table)
    .fetch_one(tx)
    .await
    .unwrap()
}

/// The conversation history of a chat run reads its own conversation's latest messages, not
/// every event and reply its project ever stored (migration 0072): 3,000 events and 3,000
/// replies of another conversation, and the history of a conversation with 12 of each reads a
/// few dozen rows, newest first.
#[tokio::test]
async fn conversation_history_reads_only_its_conversation() {
    let (env, p) = Env::new(channels_contract(None, 0, &[], None)).await;
    let mut su = env.t.superuser().await;
    for (conversation, n) in [("other", 3000), ("mine", 12)] {
        sqlx::query(
            "WITH r AS (INSERT INTO runs (project_id, run_id, agent, mode, input, input_hash, agent_revision_id, \
               agent_body_hash, trace_id, span_id, max_attempts, deadline_at, max_concurrent) \
             SELECT 'chan-a', gen_random_uuid(), 'echo', 'canary', '{}'::jsonb, 'sha256:' || repeat('0', 64), \
               gen_random_uuid(), 'sha256:x', md5(g::text), substr(md5(g::text), 1, 16), 3, now() + interval '1 hour', 100000 \
             FROM generate_series(1, $2) g RETURNING run_id, trace_id), \
             e AS (INSERT INTO conversation_events (project_id, event_id, channel, provider, external_id, conversation, \
               kind, text, body_sha256, received_at, trace_id) \
             SELECT 'chan-a', gen_random_uuid(), 'tg', 'telegram', $1 || '-' || g, $1, 'message', 'question ' || g, \
               repeat('0', 64), now() - interval '1 hour' + g * interval '1 ms', md5(g::text) \
             FROM generate_series(1, $2) g) \
             INSERT INTO outbound_messages (project_id, message_id, run_id, channel, conversation, kind, body, trace_id, created_at) \
             SELECT 'chan-a', gen_random_uuid(), run_id, 'tg', $1, 'reply', '\"answer\"'::jsonb, trace_id, now() - interval '30 minutes' FROM r",
        )
        .bind(conversation)
        .bind(n)
        .execute(&mut su)
        .await
        .unwrap();
    }
    sqlx::query("ANALYZE conversation_events, outbound_messages")
        .execute(&mut su)
        .await
        .unwrap();
    let (rows, events_read, replies_read) = tenancy::scope(p.clone(), async {
        let mut tx = env.cp.db().tenant().await.unwrap();
        let (e0, o0) = (
            rows_read(&mut tx, "conversation_events").await,
            rows_read(&mut tx, "outbound_messages").await,
        );
        let rows = awooop::model::history::recent(
            &mut tx,
            "mine",
            &["tg".to_string()],
            chrono::Utc::now(),
            10,
        )
        .await
        .unwrap();
        let e = rows_read(&mut tx, "conversation_events").await - e0;
        let o = rows_read(&mut tx, "outbound_messages").await - o0;
        tx.commit().await.unwrap();
        (rows, e, o)
    })
    .await;
    // The ten latest of "mine": its 12 replies are newer than its 12 events.
    assert_eq!(rows.len(), 10);
    assert!(rows.iter().all(|r| r.0 == "assistant"), "{rows:?}");
    assert!(
        events_read < 100 && replies_read < 100,
        "the history of a 24-message conversation read {events_read} events and {replies_read} replies (3,000 of each in another conversation)"
    );
    drop(su);
    env.t.cleanup().await;
}
