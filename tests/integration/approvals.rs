//! Approvals and controlled write paths (issue 12) on real PostgreSQL and Redis, the model
//! double, the MCP fixture upstream and the Telegram double: a remediator agent (LLM executor)
//! reaches a write tool → `waiting_approval` with an approval request → Approve clicks in
//! Telegram (one approver twice, a replayed callback, an unmapped chat user) → quorum → the
//! run resumes from the journal and the upstream sees the approved call exactly once with the
//! approved arguments and a stable idempotency key. Reject and expiry codes, late clicks,
//! suggest-mode proposals, write tools without their feature flag, the dry-run gate, and a
//! worker killed between approval and execution.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;
use uuid::Uuid;

use awooop::channels::approvals::ApprovalActions;
use awooop::channels::delivery::{DeliveryConfig, DeliveryWorker};
use awooop::channels::{Hub, HubConfig, StaticSecrets};
use awooop::contracts::{ContractKind, CredentialSource};
use awooop::control::{ControlPlane, MigrationMode};
use awooop::coord::Coord;
use awooop::gateway::audit::CallAudit;
use awooop::gateway::credentials::{CredentialResolver, LocalPolicy};
use awooop::gateway::in_process::{InProcessGateway, KeyMinter};
use awooop::gateway::keys::GatewayKeys;
use awooop::gateway::{Gateway, GatewayConfig};
use awooop::model::breaker::{AnomalyConfig, AnomalyCounter};
use awooop::model::executor::{AgentExecutor, LlmExecutor};
use awooop::model::proxy::ProviderProxy;
use awooop::runtime::approvals::{ApprovalService, Decision, TokenMinter};
use awooop::runtime::executor::{GuardedGateway, ScriptedExecutor};
use awooop::runtime::outbound::ReplyTo;
use awooop::runtime::worker::{Worker, WorkerConfig, shutdown_channel};
use awooop::runtime::{CreateRun, RunService};
use awooop::tenancy::{self, ProjectId};
use awooop_testkit::channels::ProviderDouble as ChatDouble;
use awooop_testkit::double::{ProviderDouble, Reply};
use awooop_testkit::fixture::{FixtureOptions, FixtureServer};

use crate::support::*;

const TG_SECRET: &str = "tg-approvals-secret-0123456789";
const TG_TOKEN: &str = "123456:approvals-bot-token";
const LINE_SECRET: &str = "line-approvals-channel-secret";
const SLACK_SECRET: &str = "slack-approvals-signing-secret";
const MASTER: &str = "approvals-test-gateway-master-key-0123456789";
const CHAT: &str = "4242";

fn env_ref(var: &str) -> CredentialSource {
    CredentialSource::Env { var: var.into() }
}

struct Env {
    t: TestDb,
    cp: ControlPlane,
    p: ProjectId,
    model: ProviderDouble,
    up: FixtureServer,
    chat: ChatDouble,
    hub: Hub,
    router: axum::Router,
    exec: Arc<AgentExecutor>,
    svc: ApprovalService,
    update: std::sync::atomic::AtomicI64,
}

fn minter() -> Arc<dyn TokenMinter> {
    Arc::new(KeyMinter::new(&GatewayKeys::derive(MASTER), "dev"))
}

/// A project in `mode` with an LLM remediator (tools: a write tool with its feature flag, a
/// write tool without it, a dry-run pair), a Telegram channel and a Project contract asking
/// 2 of alice/bob/carol (Telegram users 111 → alice, 222 → bob; 333 is nobody).
async fn env(id: &str, mode: MigrationMode, ttl_seconds: u32) -> Env {
    let t = TestDb::new().await;
    let cp = t.control(Coord::none());
    let model = ProviderDouble::start().await.unwrap();
    let up = FixtureServer::start(FixtureOptions::default())
        .await
        .unwrap();
    let chat = ChatDouble::start().await.unwrap();
    let p = project(&cp, id, 1).await;
    tenancy::scope(p.clone(), async {
        cp.set_mode(&admin(), mode, true, Some("approvals test"))
            .await
            .unwrap();
        let r = publish(
            &cp,
            ContractKind::Policy,
            "default",
            json!({
                "providers": [{"name": "double", "api": "openai_chat", "base_url": model.base_url(), "self_hosted": true, "privacy_classes": ["internal"]}],
                "routes": [{"name": "main", "targets": [{"provider": "double", "model": "m", "max_output_tokens": 500, "timeout_ms": 5000}]}]
            }),
        )
        .await;
        approve_and_activate(&cp, r, 1).await;
        let obj = json!({"type": "object"});
        let r = publish(
            &cp,
            ContractKind::McpGateway,
            "default",
            json!({
                "providers": [{"name": "fx", "transport": {"type": "streamable_http", "url": up.url()}}],
                "tools": [
                    {"provider": "fx", "name": "echo", "description": "Scale a deployment", "risk": "write", "environments": ["dev"],
                     "enabled_in_modes": ["suggest", "auto_remediate"], "input_schema": obj},
                    {"provider": "fx", "name": "blob", "risk": "write", "environments": ["dev"], "input_schema": obj},
                    {"provider": "fx", "name": "pid", "risk": "read_only", "environments": ["dev"], "input_schema": obj},
                    {"provider": "fx", "name": "fail", "risk": "read_only", "environments": ["dev"], "input_schema": obj},
                    {"provider": "fx", "name": "sleep", "risk": "write", "environments": ["dev"],
                     "enabled_in_modes": ["auto_remediate"], "input_schema": obj,
                     "dry_run": {"type": "tool", "tool": "fx__pid"}, "rollback_tool": "fx__echo"}
                ],
                "grants": [{"agent": "remediator", "tools": ["fx__echo", "fx__blob", "fx__pid", "fx__sleep", "fx__fail"], "environments": ["dev"]},
                           {"agent": "scripter", "tools": ["fx__fail"], "environments": ["dev"]}]
            }),
        )
        .await;
        approve_and_activate(&cp, r, 1).await;
        let r = publish(
            &cp,
            ContractKind::Agent,
            "remediator",
            json!({
                "display_name": "Remediator", "context_domain": "infra",
                "tools": ["fx__echo", "fx__blob", "fx__pid", "fx__sleep", "fx__fail"],
                "safety": {"max_risk": "write", "max_steps": 10, "max_tokens_per_run": 100000, "timeout_seconds": 60},
                "executor": {"type": "llm", "route": "main"}
            }),
        )
        .await;
        approve_and_activate(&cp, r, 1).await;
        let r = publish(
            &cp,
            ContractKind::Agent,
            "scripter",
            json!({
                "display_name": "Scripter", "context_domain": "infra", "tools": ["fx__fail"],
                "safety": {"max_risk": "read_only", "max_steps": 4, "max_tokens_per_run": 1, "timeout_seconds": 60},
                "executor": {"type": "scripted", "steps": [
                    {"type": "tool_call", "key": "tolerated", "tool": "fx__fail", "arguments": {"mode": "soft"}, "continue_on_error": true},
                    {"type": "tool_call", "key": "fatal", "tool": "fx__fail", "arguments": {"mode": "soft"}},
                    {"type": "output", "key": "never", "template": "unreachable"}
                ]}
            }),
        )
        .await;
        approve_and_activate(&cp, r, 1).await;
        let r = publish(
            &cp,
            ContractKind::Channel,
            "default",
            json!({"channels": [{"name": "tg", "provider": "telegram", "agent": "remediator",
                "verify_secret": {"env": {"var": "TG_SECRET"}}, "send_credential": {"env": {"var": "TG_TOKEN"}},
                "outbound": true},
                {"name": "line", "provider": "line", "agent": "remediator",
                "verify_secret": {"env": {"var": "LINE_SECRET"}}, "send_credential": {"env": {"var": "LINE_TOKEN"}},
                "outbound": true},
                {"name": "slack", "provider": "slack", "agent": "remediator",
                "verify_secret": {"env": {"var": "SLACK_SECRET"}}, "send_credential": {"env": {"var": "SLACK_TOKEN"}},
                "outbound": true}]}),
        )
        .await;
        approve_and_activate(&cp, r, 1).await;
        // The Project contract last: from its activation on, activations need its approvers.
        let mut body: Value = serde_json::from_str(
            &std::fs::read_to_string(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../tests/fixtures/contracts/project/valid/minimal.json"
            ))
            .unwrap(),
        )
        .unwrap();
        body["budget"]["token_limit"] = json!(10_000_000);
        body["acl"] = json!({
            "approvers": ["alice", "bob", "carol"],
            "chat_approvers": [
                {"channel": "tg", "user": "111", "principal": "alice"},
                {"channel": "tg", "user": "222", "principal": "bob"},
                {"channel": "line", "user": "Ualice", "principal": "alice"},
                {"channel": "line", "user": "Ubob", "principal": "bob"},
                {"channel": "slack", "user": "UALICE", "principal": "alice"},
                {"channel": "slack", "user": "UBOB", "principal": "bob"}
            ]
        });
        body["approval"] = json!({"required_approvals": 2, "ttl_seconds": ttl_seconds});
        body["channels"] = json!(["tg", "line", "slack"]);
        let r = publish(&cp, ContractKind::Project, id, body).await;
        approve_and_activate(&cp, r, 1).await;
    })
    .await;
    let secrets = Arc::new(StaticSecrets::default());
    secrets.put(id, &env_ref("TG_SECRET"), TG_SECRET);
    secrets.put(id, &env_ref("TG_TOKEN"), TG_TOKEN);
    secrets.put(id, &env_ref("LINE_SECRET"), LINE_SECRET);
    secrets.put(id, &env_ref("LINE_TOKEN"), "line-approvals-access-token");
    secrets.put(id, &env_ref("SLACK_SECRET"), SLACK_SECRET);
    secrets.put(id, &env_ref("SLACK_TOKEN"), "xoxb-approvals-bot-token");
    let svc = ApprovalService::new(cp.clone(), Some(minter()));
    let hub = Hub::new(
        cp.clone(),
        secrets,
        HubConfig {
            urls: chat.urls(),
            cache_ttl: Duration::ZERO,
            ..HubConfig::default()
        },
    )
    .with_egress(awooop::policy::PolicySource::from_db(t.db()).allow_loopback())
    .with_actions(Arc::new(ApprovalActions::new(svc.clone())));
    let router = awooop::channels::routes(hub.clone());
    let coord = Coord::connect(&redis_url()).unwrap();
    let (audit, _writer) = CallAudit::spawn(t.db());
    let gw = Arc::new(Gateway::new(
        t.db(),
        coord,
        GatewayKeys::derive(MASTER),
        CredentialResolver::new(
            None,
            LocalPolicy::parse(None, None).unwrap(),
            Duration::ZERO,
        ),
        Arc::new(crate::mcp_support::test_upstreams(
            crate::mcp_support::test_config(),
        )),
        audit,
        GatewayConfig {
            cache_ttl: Duration::ZERO,
            run_liveness_ttl: Duration::ZERO,
            ..GatewayConfig::default()
        },
    ));
    let tools = Arc::new(InProcessGateway::new(gw));
    let anomalies = AnomalyCounter::new(t.db(), Coord::none(), AnomalyConfig::default());
    let px = Arc::new(
        ProviderProxy::new(
            t.db(),
            anomalies.clone(),
            Arc::new(CredentialResolver::new(
                None,
                LocalPolicy::parse(None, None).unwrap(),
                Duration::ZERO,
            )),
        )
        .unwrap()
        .with_egress(awooop::policy::PolicySource::from_db(t.db()).allow_loopback()),
    );
    let exec = Arc::new(AgentExecutor::new(
        ScriptedExecutor::new(GuardedGateway::new(cp.clone(), tools.clone())),
        Some(LlmExecutor::new(
            cp.clone(),
            GuardedGateway::new(cp.clone(), tools),
            px,
            anomalies,
        )),
    ));
    Env {
        t,
        cp,
        p,
        model,
        up,
        chat,
        hub,
        router,
        exec,
        svc,
        update: std::sync::atomic::AtomicI64::new(1000),
    }
}

struct Running {
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<awooop::error::Result<()>>,
}

impl Env {
    fn worker(&self) -> Running {
        let mut cfg = WorkerConfig::new(format!("apr-{}", Uuid::new_v4()));
        cfg.slots = 2;
        cfg.poll = Duration::from_millis(50);
        cfg.reap_every = Duration::from_millis(200);
        let w = Arc::new(Worker::new(
            self.t.app.clone(),
            self.cp.clone(),
            self.exec.clone(),
            cfg,
        ));
        let (stop, rx) = shutdown_channel();
        Running {
            stop,
            task: tokio::spawn(w.run(rx)),
        }
    }

    /// A worker whose fallback poll (60 s) never fires within a test: whatever it runs, a
    /// NOTIFY woke it. Returned with its counters.
    fn notify_only_worker(&self) -> (Arc<Worker>, Running) {
        let mut cfg = WorkerConfig::new(format!("apr-notify-{}", Uuid::new_v4()));
        cfg.slots = 2;
        cfg.poll = Duration::from_secs(60);
        let w = Arc::new(Worker::new(
            self.t.app.clone(),
            self.cp.clone(),
            self.exec.clone(),
            cfg,
        ));
        let (stop, rx) = shutdown_channel();
        let task = tokio::spawn(w.clone().run(rx));
        (w, Running { stop, task })
    }

    async fn start_run(&self, message: &str) -> Uuid {
        self.start_agent("remediator", message).await
    }

    async fn start_agent(&self, agent: &str, message: &str) -> Uuid {
        tenancy::scope(
            self.p.clone(),
            RunService::new(self.cp.clone()).create(
                &awooop::auth::Actor::cli("runner"),
                CreateRun {
                    agent: agent.into(),
                    input: json!({"message": message}),
                    mode: None,
                    reply_to: Some(ReplyTo {
                        channel: "tg".into(),
                        conversation: CHAT.into(),
                    }),
                },
                None,
                None,
            ),
        )
        .await
        .unwrap()
        .run_id
    }

    async fn run(&self, id: Uuid) -> Value {
        let d = tenancy::scope(self.p.clone(), RunService::new(self.cp.clone()).get(id))
            .await
            .unwrap();
        serde_json::to_value(d).unwrap()
    }

    async fn wait_state(&self, id: Uuid, states: &[&str]) -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let v = self.run(id).await;
            if states.contains(&v["state"].as_str().unwrap()) {
                return v;
            }
            assert!(Instant::now() < deadline, "run stuck: {v}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn requests(&self, state: Option<&str>) -> Vec<Value> {
        tenancy::scope(self.p.clone(), self.svc.list(state, 100))
            .await
            .unwrap()
            .into_iter()
            .map(|r| serde_json::to_value(r).unwrap())
            .collect()
    }

    /// A Telegram callback_query from `user` with `data`, through the verified webhook.
    async fn click(&self, user: i64, data: &str, update_id: Option<i64>) -> (StatusCode, Value) {
        let req = self.click_request(user, data, update_id);
        let resp = self.router.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    /// The webhook request of [`Env::click`].
    fn click_request(&self, user: i64, data: &str, update_id: Option<i64>) -> Request<Body> {
        let id = update_id.unwrap_or_else(|| {
            self.update
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst)
        });
        let body = json!({"update_id": id, "callback_query": {"id": format!("q{id}"),
            "from": {"id": user, "is_bot": false, "first_name": "u"},
            "message": {"message_id": 1, "date": 0, "chat": {"id": CHAT.parse::<i64>().unwrap(), "type": "private"}},
            "chat_instance": "ci", "data": data}});
        Request::builder()
            .method("POST")
            .uri(format!("/v1/webhooks/{}/tg", self.p.as_str()))
            .header("content-type", "application/json")
            .header("x-telegram-bot-api-secret-token", TG_SECRET)
            .body(Body::from(body.to_string()))
            .unwrap()
    }

    /// POST a webhook to the hub's verified route of `channel`.
    async fn webhook(
        &self,
        channel: &str,
        headers: &[(&str, String)],
        body: String,
    ) -> (StatusCode, Value) {
        let mut req = Request::builder()
            .method("POST")
            .uri(format!("/v1/webhooks/{}/{channel}", self.p.as_str()));
        for (k, v) in headers {
            req = req.header(*k, v);
        }
        let resp = self
            .router
            .clone()
            .oneshot(req.body(Body::from(body)).unwrap())
            .await
            .unwrap();
        let status = resp.status();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    /// Send every queued chat message to the provider double; the request bodies `api`
    /// (`telegram`, `line`, `slack`) received, in order.
    async fn deliver_to(&self, api: &str) -> Vec<Value> {
        let before = self.chat.requests().len();
        let d = DeliveryWorker::new(
            self.hub.clone(),
            DeliveryConfig {
                chat_min_interval: Duration::ZERO,
                ..DeliveryConfig::default()
            },
        );
        for _ in 0..5 {
            if d.tick().await.unwrap() == 0 {
                break;
            }
        }
        self.chat.requests()[before..]
            .iter()
            .filter(|r| r.api == api)
            .map(|r| r.body.clone())
            .collect()
    }

    /// Send every queued chat message to the Telegram double; the texts sent, in order.
    async fn deliver(&self) -> Vec<Value> {
        let before = self.chat.calls("telegram", "sendMessage").len();
        let d = DeliveryWorker::new(
            self.hub.clone(),
            DeliveryConfig {
                chat_min_interval: Duration::ZERO,
                ..DeliveryConfig::default()
            },
        );
        for _ in 0..5 {
            if d.tick().await.unwrap() == 0 {
                break;
            }
        }
        self.chat.calls("telegram", "sendMessage")[before..]
            .iter()
            .map(|c| c.body.clone())
            .collect()
    }

    async fn audit(&self, action: &str) -> Vec<Value> {
        let mut tx = scoped_tx(&self.t.app, self.p.as_str()).await;
        let rows: Vec<Value> =
            sqlx::query_scalar("SELECT to_jsonb(a) FROM audit_log a WHERE action = $1 ORDER BY at")
                .bind(action)
                .fetch_all(&mut *tx)
                .await
                .unwrap();
        tx.commit().await.unwrap();
        rows
    }

    fn upstream_calls(&self, tool: &str) -> Vec<awooop_testkit::fixture::ToolCallSeen> {
        self.up
            .tool_calls()
            .into_iter()
            .filter(|c| c.tool == tool)
            .collect()
    }
}

fn data(request: &Value, d: Decision) -> String {
    awooop::runtime::approvals::chat_data(
        request["request_id"].as_str().unwrap().parse().unwrap(),
        d,
    )
}

#[tokio::test]
async fn remediator_waits_for_two_telegram_approvers_then_calls_the_write_tool_exactly_once() {
    let e = env("apr-main", MigrationMode::AutoRemediate, 3600).await;
    let args = json!({"name": "web", "replicas": 3});
    e.model.script([
        Reply::ToolCalls(vec![("fx__echo".into(), args.clone())]),
        Reply::Text("scaled web to 3".into()),
    ]);
    let w = e.worker();
    let id = e.start_run("web is overloaded").await;
    let view = e.wait_state(id, &["waiting_approval", "failed"]).await;
    assert_eq!(view["state"], "waiting_approval", "{view}");
    assert!(
        e.upstream_calls("echo").is_empty(),
        "nothing ran before approval"
    );
    assert_eq!(e.model.requests().len(), 1);
    let pending = e.requests(Some("pending")).await;
    assert_eq!(pending.len(), 1, "{pending:?}");
    let req = &pending[0];
    assert_eq!(req["tool"], "fx__echo");
    assert_eq!(req["required_approvals"], 2);
    assert_eq!(req["approvers"], json!(["alice", "bob", "carol"]));
    assert_eq!(
        req["args_sha256"],
        awooop::gateway::approval::arguments_hash(&args)
    );
    assert_eq!(req["trace_id"], view["trace_id"]);
    // The chat that started the run gets the request with Approve/Reject buttons.
    let sent = e.deliver().await;
    let ask = sent
        .iter()
        .find(|b| b["reply_markup"].is_object())
        .unwrap_or_else(|| panic!("no buttons in {sent:?}"));
    let buttons = &ask["reply_markup"]["inline_keyboard"][0];
    assert_eq!(buttons[0]["callback_data"], data(req, Decision::Approve));
    assert_eq!(buttons[1]["callback_data"], data(req, Decision::Reject));
    assert!(ask["text"].as_str().unwrap().contains("fx__echo"));

    // A chat user not mapped to an approver: not counted.
    let (s, _) = e.click(333, &data(req, Decision::Approve), None).await;
    assert_eq!(s, StatusCode::OK);
    // Alice clicks Approve twice (two updates), and the first update is replayed.
    let (s, _) = e.click(111, &data(req, Decision::Approve), Some(77)).await;
    assert_eq!(s, StatusCode::OK);
    let (_, replay) = e.click(111, &data(req, Decision::Approve), Some(77)).await;
    assert_eq!(replay["events"][0]["duplicate"], true, "{replay}");
    e.click(111, &data(req, Decision::Approve), None).await;
    let r = &e.requests(None).await[0];
    assert_eq!(r["state"], "pending", "one distinct approver so far: {r}");
    assert_eq!(r["decisions"].as_array().unwrap().len(), 1, "{r}");
    assert_eq!(e.run(id).await["state"], "waiting_approval");
    let answers = e.deliver().await;
    let texts: Vec<&str> = answers.iter().filter_map(|b| b["text"].as_str()).collect();
    assert!(
        texts
            .iter()
            .any(|t| t.contains("not mapped to an approver")),
        "{texts:?}"
    );
    assert!(texts.iter().any(|t| t.contains("counts once")), "{texts:?}");

    // Bob: quorum. The run resumes and the approved call reaches the upstream once.
    let quorum = Instant::now();
    e.click(222, &data(req, Decision::Approve), None).await;
    let done = e.wait_state(id, &["succeeded", "failed"]).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    eprintln!("quorum → succeeded in {:?}", quorum.elapsed());
    let calls = e.upstream_calls("echo");
    assert_eq!(calls.len(), 1, "exactly once: {calls:?}");
    assert_eq!(calls[0].arguments, args, "exactly the approved arguments");
    let key = format!("{id}:2");
    assert_eq!(calls[0].idempotency_header.as_deref(), Some(key.as_str()));
    assert_eq!(
        calls[0].meta.as_ref().unwrap()["awooop.dev/idempotency-key"],
        key
    );
    // The model was asked once before the approval and once after the tool result: the
    // journaled model call was not repeated.
    assert_eq!(e.model.requests().len(), 2);
    let types: Vec<String> = done["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| format!("{}:{}", s["step_type"], s["status"]).replace('"', ""))
        .collect();
    assert_eq!(
        types
            .iter()
            .filter(|t| *t == "model_call:succeeded")
            .count(),
        2,
        "{types:?}"
    );
    assert!(
        types.contains(&"tool_call:waiting".to_string()),
        "{types:?}"
    );
    assert!(types.contains(&"tool_call:intent".to_string()), "{types:?}");
    let r = &e.requests(None).await[0];
    assert_eq!(r["state"], "approved");
    assert_eq!(r["decided_by"], json!(["alice", "bob"]));

    // A late click changes nothing and is answered politely.
    e.click(111, &data(req, Decision::Reject), None).await;
    assert_eq!(e.requests(None).await[0]["state"], "approved");
    let late = e.deliver().await;
    assert!(
        late.iter().any(|b| b["text"]
            .as_str()
            .unwrap_or("")
            .contains("already approved")),
        "{late:?}"
    );
    assert_eq!(e.upstream_calls("echo").len(), 1);
    // Requests and decisions are audited with the run's trace id.
    let asked = e.audit("approval.request").await;
    assert_eq!(asked.len(), 1);
    assert_eq!(asked[0]["trace_id"], done["trace_id"]);
    let decided = e.audit("approval.decide").await;
    assert!(decided.len() >= 3, "{decided:?}");
    assert!(decided.iter().all(|a| a["trace_id"] == done["trace_id"]));
    let _ = w.stop.send(true);
    w.task.await.unwrap().unwrap();
    e.t.cleanup().await;
}

/// A click whose webhook request is dropped while its decision is in flight (the provider's
/// timeout, or a sender hanging up on purpose: hyper drops the handler) still counts. The
/// click's event is committed first, and the provider's redelivery of it is a duplicate that
/// never reaches the approval handler again; before the fix the handler ran inside the request,
/// so the drop lost the decision for good (the request stayed at zero decisions). The test
/// holds the request's row so the decision waits inside its transaction, and drops the
/// webhook there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_click_whose_webhook_is_dropped_mid_decision_still_counts() {
    click_dropped_while_blocked(
        "apr-hangup",
        "SELECT 1 FROM approval_requests FOR UPDATE",
        "SELECT state, approvers",
    )
    .await;
}

/// The same, dropped earlier: while the click's event is being stored. The hub's writer
/// commits a queued event whether or not the request still waits for it, so the drop left a
/// stored click that no handler ever saw (zero decisions) until the storing and the handler
/// moved into one task of their own. The test locks `conversation_events` so the writer's
/// statement waits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_click_whose_webhook_is_dropped_while_it_is_stored_still_counts() {
    click_dropped_while_blocked(
        "apr-hangup-store",
        "LOCK TABLE conversation_events IN SHARE ROW EXCLUSIVE MODE",
        "WITH current AS",
    )
    .await;
}

/// Alice's click, its webhook dropped while a statement starting with `blocked` waits for
/// `lock` (taken by the test); then the decision must still count, once.
async fn click_dropped_while_blocked(id: &str, lock: &str, blocked: &str) {
    let e = env(id, MigrationMode::AutoRemediate, 3600).await;
    let args = json!({"name": "api", "replicas": 2});
    e.model.script([
        Reply::ToolCalls(vec![("fx__echo".into(), args.clone())]),
        Reply::Text("scaled api to 2".into()),
    ]);
    let w = e.worker();
    let run = e.start_run("api is overloaded").await;
    let view = e.wait_state(run, &["waiting_approval", "failed"]).await;
    assert_eq!(view["state"], "waiting_approval", "{view}");
    let req = e.requests(Some("pending")).await.remove(0);
    let hook =
        e.router
            .clone()
            .oneshot(e.click_request(111, &data(&req, Decision::Approve), Some(9001)));
    e.t.drop_while_blocked(lock, blocked, hook).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = &e.requests(None).await[0];
        if r["decisions"].as_array().is_some_and(|d| d.len() == 1) {
            assert_eq!(r["decisions"][0]["approver"], "alice", "{r}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the dropped webhook's click was never decided: {r}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The provider's redelivery is a duplicate and counts nothing more.
    let (_, replay) = e
        .click(111, &data(&req, Decision::Approve), Some(9001))
        .await;
    assert_eq!(replay["events"][0]["duplicate"], true, "{replay}");
    assert_eq!(
        e.requests(None).await[0]["decisions"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    // Bob completes the quorum; the approved call runs once.
    e.click(222, &data(&req, Decision::Approve), None).await;
    let done = e.wait_state(run, &["succeeded", "failed"]).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(e.upstream_calls("echo").len(), 1);
    let _ = w.stop.send(true);
    w.task.await.unwrap().unwrap();
    e.t.cleanup().await;
}

#[tokio::test]
async fn reject_and_expiry_fail_the_run_with_their_codes() {
    let e = env("apr-reject", MigrationMode::AutoRemediate, 60).await;
    e.model.always(Reply::ToolCalls(vec![(
        "fx__echo".into(),
        json!({"name": "db", "replicas": 0}),
    )]));
    let w = e.worker();
    // Reject over HTTP with a comment, by an API key with the approver role (bob).
    let id = e.start_run("scale db to zero").await;
    e.wait_state(id, &["waiting_approval"]).await;
    let req = e.requests(Some("pending")).await[0].clone();
    let api = awooop::http::app(awooop::http::AppState {
        control: e.cp.clone(),
        admin: None,
        max_body_bytes: 1 << 20,
        metrics: awooop::metrics::Metrics::new(),
        approvals: Some(minter()),
    });
    let key = |who: &str| {
        let cp = e.cp.clone();
        let p = e.p.clone();
        let who = who.to_string();
        async move {
            cp.create_api_key(&admin(), &p, &who, vec![awooop::auth::Role::Approver])
                .await
                .unwrap()
                .token
        }
    };
    let post = |token: String, body: Value| {
        let api = api.clone();
        let uri = format!(
            "/v1/platform/approvals/{}/decisions",
            req["request_id"].as_str().unwrap()
        );
        async move {
            let resp = api
                .oneshot(
                    Request::builder()
                        .method("POST")
                        .uri(uri)
                        .header("authorization", format!("Bearer {token}"))
                        .header("content-type", "application/json")
                        .body(Body::from(body.to_string()))
                        .unwrap(),
                )
                .await
                .unwrap();
            let s = resp.status();
            let b = resp.into_body().collect().await.unwrap().to_bytes();
            (s, serde_json::from_slice::<Value>(&b).unwrap())
        }
    };
    // Not an eligible approver (the key's principal is not in acl.approvers).
    let (s, v) = post(key("mallory").await, json!({"decision": "approve"})).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    assert_eq!(v["code"], "E-APPROVAL-003");
    // Listing over HTTP.
    let bob = key("bob").await;
    let resp = api
        .clone()
        .oneshot(
            Request::builder()
                .uri("/v1/platform/approvals?state=pending")
                .header("authorization", format!("Bearer {bob}"))
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let b = resp.into_body().collect().await.unwrap().to_bytes();
    let list: Value = serde_json::from_slice(&b).unwrap();
    assert_eq!(list["approvals"][0]["request_id"], req["request_id"]);
    assert!(
        list.to_string().find("token").is_none(),
        "no token is served"
    );
    let (s, v) = post(
        bob.clone(),
        json!({"decision": "reject", "comment": "not at peak hours"}),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["request"]["state"], "rejected");
    let failed = e.wait_state(id, &["failed"]).await;
    assert_eq!(failed["error_code"], "E-APPROVAL-001");
    let msg = failed["error_message"].as_str().unwrap();
    assert!(
        msg.contains("bob") && msg.contains("not at peak hours"),
        "{msg}"
    );
    // Late decision over HTTP: 409, nothing changes.
    let (s, v) = post(key("alice").await, json!({"decision": "approve"})).await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    assert_eq!(v["code"], "E-APPROVAL-004");
    assert!(e.upstream_calls("echo").is_empty());
    let texts = e.deliver().await;
    assert!(
        texts
            .iter()
            .any(|b| b["text"].as_str().unwrap_or("").contains("Rejected by bob")),
        "{texts:?}"
    );

    // Expiry: the request outlives its TTL; the reaper fails the run with E-APPROVAL-002.
    let id2 = e.start_run("again").await;
    e.wait_state(id2, &["waiting_approval"]).await;
    let mut su = e.t.superuser().await;
    sqlx::query(
        "UPDATE approval_requests SET expires_at = now() - interval '1 second' WHERE run_id = $1",
    )
    .bind(id2)
    .execute(&mut su)
    .await
    .unwrap();
    let expired = e.wait_state(id2, &["failed"]).await;
    assert_eq!(expired["error_code"], "E-APPROVAL-002");
    let r = e
        .requests(Some("expired"))
        .await
        .into_iter()
        .find(|r| r["run_id"] == json!(id2))
        .unwrap();
    // A click after expiry changes nothing.
    e.click(111, &data(&r, Decision::Approve), None).await;
    assert_eq!(
        e.requests(Some("expired"))
            .await
            .iter()
            .filter(|x| x["run_id"] == json!(id2))
            .count(),
        1
    );
    assert_eq!(e.audit("approval.expire").await.len(), 1);
    assert!(e.upstream_calls("echo").is_empty());
    let _ = w.stop.send(true);
    w.task.await.unwrap().unwrap();
    e.t.cleanup().await;
}

#[tokio::test]
async fn suggest_mode_proposes_and_write_tools_without_their_flag_are_refused() {
    let e = env("apr-suggest", MigrationMode::Suggest, 3600).await;
    let w = e.worker();
    // Suggest: the write becomes a proposal (the run's output), nothing reaches the upstream.
    e.model.script([Reply::ToolCalls(vec![(
        "fx__echo".into(),
        json!({"name": "api", "replicas": 5}),
    )])]);
    let id = e.start_run("should we scale api?").await;
    let view = e.wait_state(id, &["waiting_approval", "failed"]).await;
    assert_eq!(view["state"], "waiting_approval", "{view}");
    assert_eq!(view["output"]["proposal"]["tool"], "fx__echo", "{view}");
    let req = e.requests(Some("pending")).await[0].clone();
    assert_eq!(req["kind"], "proposal");
    assert!(e.upstream_calls("echo").is_empty());
    let sent = e.deliver().await;
    assert!(
        sent.iter()
            .any(|b| b["text"].as_str().unwrap_or("").starts_with("Proposal"))
    );

    // A write tool without its feature flag: refused (E-MCP-GATE-010), never asked about.
    e.model.script([Reply::ToolCalls(vec![(
        "fx__blob".into(),
        json!({"size": 1}),
    )])]);
    let id = e.start_run("blob").await;
    let view = e.wait_state(id, &["failed", "waiting_approval"]).await;
    assert_eq!(view["error_code"], "E-MCP-GATE-010", "{view}");
    // And in auto_remediate too.
    tenancy::scope(
        e.p.clone(),
        e.cp.set_mode(&admin(), MigrationMode::AutoRemediate, false, None),
    )
    .await
    .unwrap();
    e.model.script([Reply::ToolCalls(vec![(
        "fx__blob".into(),
        json!({"size": 1}),
    )])]);
    let id = e.start_run("blob").await;
    let view = e.wait_state(id, &["failed", "waiting_approval"]).await;
    assert_eq!(view["error_code"], "E-MCP-GATE-010", "{view}");
    assert!(e.upstream_calls("blob").is_empty());
    assert_eq!(e.requests(None).await.len(), 1, "only the proposal");

    // Approving the proposal executes exactly the proposed call (the run resumes).
    e.model.script([Reply::Text("done".into())]);
    let pid = e.p.clone();
    for who in ["alice", "carol"] {
        tenancy::scope(
            pid.clone(),
            e.svc.decide(
                who,
                "test",
                req["request_id"].as_str().unwrap().parse().unwrap(),
                Decision::Approve,
                None,
            ),
        )
        .await
        .unwrap();
    }
    let first = req["run_id"].as_str().unwrap().parse().unwrap();
    let done = e.wait_state(first, &["succeeded", "failed"]).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    let calls = e.upstream_calls("echo");
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].arguments, json!({"name": "api", "replicas": 5}));
    let _ = w.stop.send(true);
    w.task.await.unwrap().unwrap();
    e.t.cleanup().await;
}

#[tokio::test]
async fn the_dry_run_gate_needs_evidence_for_the_same_arguments() {
    let e = env("apr-dryrun", MigrationMode::AutoRemediate, 3600).await;
    let w = e.worker();
    // Dry run with other arguments: the real call is refused before anyone is asked.
    e.model.script([
        Reply::ToolCalls(vec![("fx__pid".into(), json!({"ms": 1}))]),
        Reply::ToolCalls(vec![("fx__sleep".into(), json!({"ms": 2}))]),
    ]);
    let id = e.start_run("sleep 2").await;
    let view = e.wait_state(id, &["failed", "waiting_approval"]).await;
    assert_eq!(view["error_code"], "E-MCP-GATE-011", "{view}");
    assert!(e.requests(None).await.is_empty());
    // Same arguments: an approval request showing the dry run's result and the rollback tool.
    e.model.script([
        Reply::ToolCalls(vec![("fx__pid".into(), json!({"ms": 3}))]),
        Reply::ToolCalls(vec![("fx__sleep".into(), json!({"ms": 3}))]),
    ]);
    let id = e.start_run("sleep 3").await;
    let view = e.wait_state(id, &["failed", "waiting_approval"]).await;
    assert_eq!(view["state"], "waiting_approval", "{view}");
    let req = e.requests(Some("pending")).await[0].clone();
    assert_eq!(req["evidence"]["rollback_tool"], "fx__echo", "{req}");
    assert_eq!(req["evidence"]["dry_run"]["tool"], "fx__pid", "{req}");
    assert!(
        req["evidence"]["dry_run"]["result_sha256"]
            .as_str()
            .unwrap()
            .starts_with("sha256:")
    );
    assert!(e.upstream_calls("sleep").is_empty());
    let _ = w.stop.send(true);
    w.task.await.unwrap().unwrap();
    e.t.cleanup().await;
}

/// The worker dies after the quorum, before the approved call: the next worker runs the call,
/// exactly once, with the same idempotency key.
#[tokio::test]
async fn a_worker_killed_between_approval_and_execution_still_calls_exactly_once() {
    let e = env("apr-kill", MigrationMode::AutoRemediate, 3600).await;
    let args = json!({"name": "cache", "replicas": 2});
    e.model.script([
        Reply::ToolCalls(vec![("fx__echo".into(), args.clone())]),
        Reply::Text("ok".into()),
    ]);
    let w = e.worker();
    let id = e.start_run("cache").await;
    e.wait_state(id, &["waiting_approval"]).await;
    // The worker is killed (its task aborted: no graceful release, leases just expire).
    w.task.abort();
    let _ = w.task.await;
    let req = e.requests(Some("pending")).await[0].clone();
    for who in ["alice", "bob"] {
        tenancy::scope(
            e.p.clone(),
            e.svc.decide(
                who,
                "test",
                req["request_id"].as_str().unwrap().parse().unwrap(),
                Decision::Approve,
                None,
            ),
        )
        .await
        .unwrap();
    }
    // A claim by a worker that dies before calling (lease short, never heartbeats).
    // The killed worker's connections may still hold a row lock for a moment (their
    // transactions are rolled back when the pool reaps them), and claims SKIP LOCKED rows:
    // poll like a worker does.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let claimed = loop {
        let c = awooop::runtime::repo::worker_claim(&e.t.app, "doomed", 1, 0.2)
            .await
            .unwrap();
        if !c.is_empty() || std::time::Instant::now() > deadline {
            break c;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(claimed.len(), 1);
    assert!(e.upstream_calls("echo").is_empty());
    tokio::time::sleep(Duration::from_millis(400)).await;
    // A new worker reaps the lease and resumes the run.
    let w2 = e.worker();
    let done = e.wait_state(id, &["succeeded", "failed"]).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    let calls = e.upstream_calls("echo");
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert_eq!(calls[0].arguments, args);
    assert_eq!(
        calls[0].idempotency_header.as_deref(),
        Some(format!("{id}:2").as_str())
    );
    let _ = w2.stop.send(true);
    w2.task.await.unwrap().unwrap();
    e.t.cleanup().await;
}

/// A tool result with `isError: true` is a failed step with E-TOOL-001: the LLM executor feeds
/// it back to the model (which then answers), a scripted step fails the run unless it says
/// `continue_on_error`.
#[tokio::test]
async fn tool_errors_are_failed_steps_with_a_code_and_go_back_to_the_model() {
    let e = env("apr-toolerr", MigrationMode::AutoRemediate, 3600).await;
    let w = e.worker();
    e.model.script([
        Reply::ToolCalls(vec![("fx__fail".into(), json!({"mode": "soft"}))]),
        Reply::Text("the tool failed, nothing changed".into()),
    ]);
    let id = e.start_run("try").await;
    let view = e.wait_state(id, &["succeeded", "failed"]).await;
    assert_eq!(view["state"], "succeeded", "{view}");
    let tool = view["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["step_type"] == "tool_call" && s["status"] == "succeeded")
        .unwrap()
        .clone();
    assert_eq!(tool["error_code"], "E-TOOL-001", "{tool}");
    assert_eq!(tool["output"]["isError"], true);
    // The model saw the error as the tool's result.
    let reqs = e.model.requests();
    assert_eq!(reqs.len(), 2);
    assert!(
        reqs[1].body["messages"].to_string().contains("E-TOOL-001"),
        "{}",
        reqs[1].body["messages"]
    );
    // Scripted: the tolerated step continues, the next one fails the run.
    let id = e.start_agent("scripter", "x").await;
    let view = e.wait_state(id, &["succeeded", "failed"]).await;
    assert_eq!(view["state"], "failed", "{view}");
    assert_eq!(view["error_code"], "E-TOOL-001");
    let steps: Vec<(String, String, Value)> = view["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["status"] != "intent")
        .map(|s| {
            (
                s["step_key"].as_str().unwrap().to_string(),
                s["status"].as_str().unwrap().to_string(),
                s["error_code"].clone(),
            )
        })
        .collect();
    assert_eq!(
        steps,
        vec![
            ("tolerated".into(), "succeeded".into(), json!("E-TOOL-001")),
            ("fatal".into(), "failed".into(), json!("E-TOOL-001")),
        ]
    );
    let _ = w.stop.send(true);
    w.task.await.unwrap().unwrap();
    e.t.cleanup().await;
}

/// A run whose lease expired goes back to its original place at the front of the queue, not
/// behind the runs created after it.
#[tokio::test]
async fn a_recovered_run_is_claimed_before_newer_work() {
    use awooop::runtime::repo;
    let e = env("apr-queue", MigrationMode::AutoRemediate, 3600).await;
    let first = e.start_run("first").await;
    let claimed = repo::worker_claim(&e.t.app, "doomed", 1, 0.2)
        .await
        .unwrap();
    assert_eq!(claimed[0].run_id, first);
    let mut later = Vec::new();
    for i in 0..5 {
        later.push(e.start_run(&format!("later {i}")).await);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let reaped = repo::worker_reap(&e.t.app).await.unwrap();
    assert_eq!(reaped.requeued, 1);
    // Past its backoff (0.25 s for a first retry), it is first again.
    tokio::time::sleep(Duration::from_millis(350)).await;
    let next = repo::worker_claim(&e.t.app, "w2", 1, 30.0).await.unwrap();
    assert_eq!(
        next[0].run_id, first,
        "the recovered run waited behind {later:?}"
    );
    e.t.cleanup().await;
}

/// A remediator run that asked for approval and got its quorum (alice, bob) while no worker
/// was listening: it is queued, and the re-queue's NOTIFY reached nobody.
async fn approved_while_no_worker_listens(e: &Env, args: &Value) -> Uuid {
    e.model.script([
        Reply::ToolCalls(vec![("fx__echo".into(), args.clone())]),
        Reply::Text("done".into()),
    ]);
    let w = e.worker();
    let id = e.start_run("scale it").await;
    e.wait_state(id, &["waiting_approval"]).await;
    let _ = w.stop.send(true);
    w.task.await.unwrap().unwrap();
    let req = e.requests(Some("pending")).await[0].clone();
    for who in ["alice", "bob"] {
        tenancy::scope(
            e.p.clone(),
            e.svc.decide(
                who,
                "test",
                req["request_id"].as_str().unwrap().parse().unwrap(),
                Decision::Approve,
                None,
            ),
        )
        .await
        .unwrap();
    }
    assert_eq!(e.run(id).await["state"], "queued");
    id
}

/// Wait (bounded) until `worker` has returned from `n` claims. A fresh worker claims once when
/// it starts and once more when its LISTEN is up (the listener's first wake-up), so after two
/// it is listening and idle in its wait; nothing else wakes it before its 60 s poll.
async fn claimed_rounds(worker: &Worker, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while worker
        .stats
        .claim_rounds
        .load(std::sync::atomic::Ordering::Relaxed)
        < n
    {
        assert!(Instant::now() < deadline, "the worker never claimed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Wait for the run to finish well before the worker's 60 s fallback poll: only a NOTIFY can
/// have woken the worker for it. Not a timing measurement: the bound is generous.
async fn finished_without_the_poll(e: &Env, id: Uuid, what: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let v = e.run(id).await;
        if ["succeeded", "failed"].contains(&v["state"].as_str().unwrap()) {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: the run was never woken (it waits for the 60 s fallback poll): state {}",
            v["state"]
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The approved run's refused call is audited off the request path (the gateway's call audit,
/// up to 50 ms later), and that row's run-event trigger locks the run row to number the event.
/// When it lands just as the re-queued run is claimed, the claim (SKIP LOCKED) passes over it;
/// the audit's commit must wake a worker again, or the run waits for the fallback poll (the
/// 520 ms resumes of `awooop bench approvals`). Here the audit row is held open on purpose
/// across a worker's claims, then committed.
#[tokio::test]
async fn an_approved_run_locked_by_its_call_audit_during_the_claim_is_still_woken() {
    let e = env("apr-wake-audit", MigrationMode::AutoRemediate, 3600).await;
    let args = json!({"name": "web", "replicas": 4});
    let id = approved_while_no_worker_listens(&e, &args).await;
    // What the call audit writer does for the refused call (0050's trigger bumps the run's
    // event counter: a row lock until commit).
    let mut audit = scoped_tx(&e.t.app, e.p.as_str()).await;
    sqlx::query(
        "INSERT INTO mcp_call_audit (project_id, call_id, at, trace_id, run_id, agent, tool, environment, mode, \
         decision, code, result_status, latency_us, bytes_in, bytes_out) \
         VALUES ($1, $2, now(), 'trace', $3, 'remediator', 'fx__echo', 'dev', 'auto_remediate', \
         'denied', 'E-MCP-GATE-005', 'denied', 0, 0, 0)",
    )
    .bind(e.p.as_str())
    .bind(Uuid::now_v7())
    .bind(id)
    .execute(&mut *audit)
    .await
    .unwrap();
    let (worker, running) = e.notify_only_worker();
    claimed_rounds(&worker, 2).await;
    assert_eq!(
        e.run(id).await["state"],
        "queued",
        "the claims passed over the locked run"
    );
    assert!(e.upstream_calls("echo").is_empty());
    audit.commit().await.unwrap();
    let done = finished_without_the_poll(&e, id, "after the audit committed").await;
    assert_eq!(done["state"], "succeeded", "{done}");
    let calls = e.upstream_calls("echo");
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert_eq!(calls[0].arguments, args);
    let _ = running.stop.send(true);
    running.task.await.unwrap().unwrap();
    e.t.cleanup().await;
}

/// A transaction that inserts a row referencing a queued run (here a chat message for it, as a
/// late click's answer is) holds FOR KEY SHARE on the run row until it commits. That must not
/// keep workers from claiming the run: the claim's lock (FOR NO KEY UPDATE) does not conflict
/// with it, so the run is claimed and finishes while that transaction is still open.
#[tokio::test]
async fn a_queued_run_referenced_by_an_open_transaction_is_still_claimed() {
    let e = env("apr-wake-fk", MigrationMode::AutoRemediate, 3600).await;
    let args = json!({"name": "api", "replicas": 5});
    let id = approved_while_no_worker_listens(&e, &args).await;
    let mut answer = scoped_tx(&e.t.app, e.p.as_str()).await;
    sqlx::query(
        "INSERT INTO outbound_messages (project_id, message_id, run_id, channel, conversation, kind, body, trace_id) \
         VALUES ($1, $2, $3, 'tg', $4, 'approval', '{\"text\": \"This request is already approved\"}'::jsonb, 'trace')",
    )
    .bind(e.p.as_str())
    .bind(Uuid::now_v7())
    .bind(id)
    .bind(CHAT)
    .execute(&mut *answer)
    .await
    .unwrap();
    let (_worker, running) = e.notify_only_worker();
    let done =
        finished_without_the_poll(&e, id, "while a chat message for it was being written").await;
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(e.upstream_calls("echo").len(), 1);
    answer.commit().await.unwrap();
    let _ = running.stop.send(true);
    running.task.await.unwrap().unwrap();
    e.t.cleanup().await;
}

// --- LINE and Slack, end to end ------------------------------------------------------------------

fn hmac_sha256(key: &str, msg: &[u8]) -> Vec<u8> {
    use hmac::{Hmac, Mac};
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(key.as_bytes()).unwrap();
    mac.update(msg);
    mac.finalize().into_bytes().to_vec()
}

/// `application/x-www-form-urlencoded`, as Slack encodes its interactivity `payload=`.
fn form_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'*' => {
                (b as char).to_string()
            }
            b' ' => "+".to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The chat providers with buttons besides Telegram, speaking their webhook formats: LINE
/// (events signed with `X-Line-Signature` = base64 HMAC-SHA256 of the body under the channel
/// secret, what line-bot-sdk's `SignatureValidator` checks) and Slack (Events API JSON and
/// form-encoded interactivity `payload=`, signed `v0=` hex HMAC-SHA256 of
/// `v0:{timestamp}:{body}` under the signing secret, as slack_sdk's `SignatureVerifier`).
#[derive(Clone, Copy)]
enum Chat {
    Line,
    Slack,
}

/// The LINE group and the Slack channel the runs start from.
const LINE_GROUP: &str = "Gops0123456789";
const SLACK_CHANNEL: &str = "C0OPS42";

impl Chat {
    fn api(self) -> &'static str {
        match self {
            Chat::Line => "line",
            Chat::Slack => "slack",
        }
    }

    /// The provider's user id of a principal (as mapped in the Project contract), or of
    /// somebody the project does not know.
    fn user(self, who: &str) -> String {
        match (self, who) {
            (Chat::Line, "alice") => "Ualice".into(),
            (Chat::Line, "bob") => "Ubob".into(),
            (Chat::Slack, "alice") => "UALICE".into(),
            (Chat::Slack, "bob") => "UBOB".into(),
            (Chat::Line, other) => format!("U{other}"),
            (Chat::Slack, other) => format!("U{}", other.to_uppercase()),
        }
    }

    async fn line(e: &Env, events: Value) -> (StatusCode, Value) {
        use base64::Engine;
        let body = json!({"destination": "U0123456789abcdef0123456789abcdef", "events": events})
            .to_string();
        let sig = base64::engine::general_purpose::STANDARD
            .encode(hmac_sha256(LINE_SECRET, body.as_bytes()));
        e.webhook(
            "line",
            &[
                ("content-type", "application/json; charset=utf-8".into()),
                ("x-line-signature", sig),
            ],
            body,
        )
        .await
    }

    async fn slack(e: &Env, content_type: &str, body: String) -> (StatusCode, Value) {
        let ts = chrono::Utc::now().timestamp().to_string();
        let sig = format!(
            "v0={}",
            hex::encode(hmac_sha256(
                SLACK_SECRET,
                format!("v0:{ts}:{body}").as_bytes()
            ))
        );
        e.webhook(
            "slack",
            &[
                ("content-type", content_type.into()),
                ("x-slack-request-timestamp", ts),
                ("x-slack-signature", sig),
            ],
            body,
        )
        .await
    }

    /// Alice writes to the bot: the hub starts the channel's agent with a reply address.
    async fn start(self, e: &Env, text: &str) -> Uuid {
        let (status, v) = match self {
            Chat::Line => {
                Self::line(
                    e,
                    json!([{"type": "message", "mode": "active", "timestamp": 1764288000000_i64,
                        "source": {"type": "group", "groupId": LINE_GROUP, "userId": self.user("alice")},
                        "webhookEventId": "01APRSTART000000000000000A", "deliveryContext": {"isRedelivery": false},
                        "replyToken": "rt-start-0123456789",
                        "message": {"type": "text", "id": "100001", "quoteToken": "q1", "text": text}}]),
                )
                .await
            }
            Chat::Slack => {
                let body = json!({"token": "legacy-verification-token", "team_id": "T0TEAM", "api_app_id": "A0APP",
                    "event": {"type": "message", "channel": SLACK_CHANNEL, "user": self.user("alice"), "text": text,
                              "ts": "1764288000.000100", "event_ts": "1764288000.000100", "channel_type": "channel"},
                    "type": "event_callback", "event_id": "Ev0APRSTART", "event_time": 1764288000});
                Self::slack(e, "application/json", body.to_string()).await
            }
        };
        assert_eq!(status, StatusCode::OK, "{v}");
        v["events"][0]["run_id"]
            .as_str()
            .unwrap_or_else(|| panic!("no run started: {v}"))
            .parse()
            .unwrap()
    }

    /// `user` clicks a button carrying `data`; `click_id` identifies the click at the provider
    /// (LINE `webhookEventId`, Slack `trigger_id`): the same id and user give the same bytes,
    /// i.e. a replay.
    async fn click(self, e: &Env, user: &str, data: &str, click_id: &str) -> (StatusCode, Value) {
        match self {
            Chat::Line => {
                Self::line(
                    e,
                    json!([{"type": "postback", "mode": "active", "timestamp": 1764288060000_i64,
                        "source": {"type": "group", "groupId": LINE_GROUP, "userId": user},
                        "webhookEventId": click_id, "deliveryContext": {"isRedelivery": false},
                        "replyToken": format!("rt-{click_id}"),
                        "postback": {"data": data}}]),
                )
                .await
            }
            Chat::Slack => {
                let action = if data.ends_with(":a") {
                    ("awooop-0", "Approve")
                } else {
                    ("awooop-1", "Reject")
                };
                let payload = json!({"type": "block_actions",
                    "user": {"id": user, "username": user.to_lowercase(), "name": user.to_lowercase(), "team_id": "T0TEAM"},
                    "api_app_id": "A0APP", "token": "legacy-verification-token",
                    "container": {"type": "message", "message_ts": "1764288000.000200", "channel_id": SLACK_CHANNEL, "is_ephemeral": false},
                    "trigger_id": click_id, "team": {"id": "T0TEAM", "domain": "ops"}, "enterprise": null,
                    "is_enterprise_install": false, "channel": {"id": SLACK_CHANNEL, "name": "ops"},
                    "state": {"values": {}}, "response_url": "https://hooks.slack.com/actions/T0TEAM/1/abc",
                    "actions": [{"action_id": action.0, "block_id": "awooop", "type": "button",
                                 "text": {"type": "plain_text", "text": action.1, "emoji": true},
                                 "value": data, "action_ts": "1764288060.000300"}]});
                Self::slack(
                    e,
                    "application/x-www-form-urlencoded",
                    format!("payload={}", form_encode(&payload.to_string())),
                )
                .await
            }
        }
    }

    /// The buttons (label, data) of the messages the provider received.
    fn buttons(self, sent: &[Value]) -> Vec<(String, String)> {
        let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
        match self {
            Chat::Line => sent
                .iter()
                .flat_map(|b| b["messages"].as_array().cloned().unwrap_or_default())
                .filter(|m| m["type"] == "template")
                .flat_map(|m| {
                    m["template"]["actions"]
                        .as_array()
                        .cloned()
                        .unwrap_or_default()
                })
                .inspect(|a| assert_eq!(a["type"], "postback", "{a}"))
                .map(|a| (s(&a["label"]), s(&a["data"])))
                .collect(),
            Chat::Slack => sent
                .iter()
                .flat_map(|b| b["blocks"].as_array().cloned().unwrap_or_default())
                .filter(|b| b["type"] == "actions")
                .flat_map(|b| b["elements"].as_array().cloned().unwrap_or_default())
                .inspect(|a| assert_eq!(a["type"], "button", "{a}"))
                .map(|a| (s(&a["text"]["text"]), s(&a["value"])))
                .collect(),
        }
    }

    /// The texts of the messages the provider received, and where they went.
    fn texts(self, sent: &[Value]) -> Vec<String> {
        match self {
            Chat::Line => sent
                .iter()
                .inspect(|b| {
                    // A reply (reply token) or a push to the group the run started from.
                    assert!(b["replyToken"].is_string() || b["to"] == LINE_GROUP, "{b}")
                })
                .flat_map(|b| b["messages"].as_array().cloned().unwrap_or_default())
                .filter_map(|m| m["text"].as_str().map(str::to_string))
                .collect(),
            Chat::Slack => sent
                .iter()
                .inspect(|b| assert_eq!(b["channel"], SLACK_CHANNEL, "{b}"))
                .filter_map(|b| b["text"].as_str().map(str::to_string))
                .collect(),
        }
    }
}

/// A run started from a LINE group (resp. a Slack channel) reaches a write tool; the approval
/// message with Approve/Reject buttons arrives at that chat; clicks come back through the hub's
/// verified webhook: an unmapped user (and Telegram's alice, who is mapped on `tg` only) is not
/// counted, a replayed click is a duplicate, alice and bob make the quorum, the run resumes and
/// the upstream gets the approved call once; a late click is answered politely.
async fn chat_story(chat: Chat, project: &str) {
    let e = env(project, MigrationMode::AutoRemediate, 3600).await;
    let args = json!({"name": "web", "replicas": 6});
    e.model.script([
        Reply::ToolCalls(vec![("fx__echo".into(), args.clone())]),
        Reply::Text("scaled web to 6".into()),
    ]);
    let w = e.worker();
    let id = chat.start(&e, "web is overloaded, scale it").await;
    let view = e.wait_state(id, &["waiting_approval", "failed"]).await;
    assert_eq!(view["state"], "waiting_approval", "{view}");
    assert!(e.upstream_calls("echo").is_empty());
    let req = e.requests(Some("pending")).await[0].clone();

    // The approval message, with its buttons, at the provider of the chat that started the run.
    let sent = e.deliver_to(chat.api()).await;
    assert_eq!(
        chat.buttons(&sent),
        vec![
            ("Approve".to_string(), data(&req, Decision::Approve)),
            ("Reject".to_string(), data(&req, Decision::Reject)),
        ],
        "{sent:?}"
    );
    let texts = chat.texts(&sent);
    assert!(
        texts
            .iter()
            .any(|t| t.contains("fx__echo") && t.contains("Approval needed")),
        "{texts:?}"
    );
    let approve = data(&req, Decision::Approve);

    // Not counted: somebody the project does not know, and a user id mapped on another channel.
    for (n, user) in [chat.user("mallory"), "111".to_string()].iter().enumerate() {
        let (s, v) = chat
            .click(&e, user, &approve, &format!("click-stranger-{n}"))
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
    }
    // Alice approves; the same click arrives again (a replay): a duplicate that reaches nothing.
    let (s, v) = chat
        .click(&e, &chat.user("alice"), &approve, "click-alice-1")
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, replay) = chat
        .click(&e, &chat.user("alice"), &approve, "click-alice-1")
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(replay["events"][0]["duplicate"], true, "{replay}");
    let r = &e.requests(None).await[0];
    assert_eq!(r["state"], "pending", "{r}");
    let decisions = r["decisions"].as_array().unwrap();
    assert_eq!(decisions.len(), 1, "{r}");
    assert_eq!(decisions[0]["approver"], "alice");
    assert_eq!(decisions[0]["via"], format!("chat:{}", chat.api()));
    assert_eq!(e.run(id).await["state"], "waiting_approval");
    let answers = chat.texts(&e.deliver_to(chat.api()).await);
    assert_eq!(
        answers
            .iter()
            .filter(|t| t.contains("not mapped to an approver"))
            .count(),
        2,
        "{answers:?}"
    );
    assert!(
        answers
            .iter()
            .any(|t| t.contains("alice approved (1 of 2 needed)")),
        "{answers:?}"
    );

    // Bob: quorum. The run resumes and the upstream gets exactly the approved call, once.
    let (s, v) = chat
        .click(&e, &chat.user("bob"), &approve, "click-bob-1")
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let done = e.wait_state(id, &["succeeded", "failed"]).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    let calls = e.upstream_calls("echo");
    assert_eq!(calls.len(), 1, "exactly once: {calls:?}");
    assert_eq!(calls[0].arguments, args, "exactly the approved arguments");
    assert!(
        calls[0]
            .idempotency_header
            .as_deref()
            .is_some_and(|k| k.starts_with(&format!("{id}:"))),
        "{calls:?}"
    );
    assert_eq!(
        e.model.requests().len(),
        2,
        "journaled model call not repeated"
    );
    let r = &e.requests(None).await[0];
    assert_eq!(r["state"], "approved");
    assert_eq!(r["decided_by"], json!(["alice", "bob"]));
    let answers = chat.texts(&e.deliver_to(chat.api()).await);
    assert!(
        answers.iter().any(|t| t.contains("Approved by alice, bob")),
        "{answers:?}"
    );
    assert!(
        answers.iter().any(|t| t.contains("scaled web to 6")),
        "the run's answer reaches the chat: {answers:?}"
    );

    // A late click (bob changes his mind) changes nothing and is answered politely.
    let (s, _) = chat
        .click(
            &e,
            &chat.user("bob"),
            &data(&req, Decision::Reject),
            "click-bob-2",
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(e.requests(None).await[0]["state"], "approved");
    let late = chat.texts(&e.deliver_to(chat.api()).await);
    assert!(
        late.iter().any(|t| t.contains("already approved")),
        "{late:?}"
    );
    assert_eq!(e.upstream_calls("echo").len(), 1);
    assert_eq!(e.run(id).await["state"], "succeeded");
    let _ = w.stop.send(true);
    w.task.await.unwrap().unwrap();
    e.t.cleanup().await;
}

/// `awooop-client`'s approvals inbox against the real server (axum on a loopback port, real
/// PostgreSQL, the gateway's token minter): an approver's key lists the pending request, a
/// non-approver is refused with its code, two approvers' decisions reach the quorum and the
/// run resumes, a late decision is a coded conflict, and another project sees nothing.
#[tokio::test]
async fn the_client_lists_and_decides_approvals_against_the_real_server() {
    let e = env("apr-client", MigrationMode::AutoRemediate, 60).await;
    e.model.script(vec![
        Reply::ToolCalls(vec![(
            "fx__echo".into(),
            json!({"name": "web", "replicas": 2}),
        )]),
        Reply::Text("scaled".into()),
    ]);
    let w = e.worker();
    let id = e.start_run("scale web to two").await;
    e.wait_state(id, &["waiting_approval"]).await;
    let other = project(&e.cp, "apr-client-b", 1).await;

    awooop::tls::install_crypto_provider();
    let state = awooop::http::AppState {
        control: e.cp.clone(),
        admin: None,
        max_body_bytes: 1 << 20,
        metrics: awooop::metrics::Metrics::new(),
        approvals: Some(minter()),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, awooop::http::app(state)).await });
    let base = format!("http://{addr}");
    let client = |p: ProjectId, who: &'static str| {
        let cp = e.cp.clone();
        let base = base.clone();
        async move {
            let token = cp
                .create_api_key(&admin(), &p, who, vec![awooop::auth::Role::Approver])
                .await
                .unwrap()
                .token;
            awooop_client::Client::new(&base, &token)
        }
    };
    let alice = client(e.p.clone(), "alice").await;
    let bob = client(e.p.clone(), "bob").await;
    let mallory = client(e.p.clone(), "mallory").await;
    let outsider = client(other, "alice").await;

    let list = alice.list_approvals().await.unwrap();
    let pending = list["approvals"].as_array().unwrap();
    assert_eq!(pending.len(), 1, "{list}");
    assert_eq!(pending[0]["run_id"], id.to_string());
    assert_eq!(pending[0]["state"], "pending");
    assert!(!list.to_string().contains("token"), "no token is served");
    let req = pending[0]["request_id"].as_str().unwrap().to_string();
    // Another project's approver sees no request and cannot decide this one.
    let theirs = outsider.list_approvals().await.unwrap();
    assert_eq!(theirs["approvals"], json!([]), "{theirs}");
    let approve = awooop_client::ApprovalDecision {
        decision: "approve".into(),
        comment: None,
    };
    let err = outsider.decide_approval(&req, &approve).await.unwrap_err();
    assert_eq!(err.code(), Some("E-APPROVAL-005"), "{err}");
    // Not an eligible approver.
    let err = mallory.decide_approval(&req, &approve).await.unwrap_err();
    assert_eq!(err.code(), Some("E-APPROVAL-003"), "{err}");
    // One of two: still pending.
    let v = alice.decide_approval(&req, &approve).await.unwrap();
    assert_eq!(v["request"]["state"], "pending", "{v}");
    let v = bob.decide_approval(&req, &approve).await.unwrap();
    assert_eq!(v["request"]["state"], "approved", "{v}");
    assert_eq!(v["request"]["decided_by"], json!(["alice", "bob"]), "{v}");
    let done = e.wait_state(id, &["succeeded", "failed"]).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(e.upstream_calls("echo").len(), 1);
    // The inbox shows the decision; a late decision (with a comment) is a coded conflict.
    let list = alice.list_approvals().await.unwrap();
    assert_eq!(list["approvals"][0]["state"], "approved", "{list}");
    let reject = awooop_client::ApprovalDecision {
        decision: "reject".into(),
        comment: Some("too late".into()),
    };
    let err = alice.decide_approval(&req, &reject).await.unwrap_err();
    assert_eq!(err.code(), Some("E-APPROVAL-004"), "{err}");
    let _ = w.stop.send(true);
    w.task.await.unwrap().unwrap();
    e.t.cleanup().await;
}

#[tokio::test]
async fn a_run_started_from_line_is_approved_with_postback_buttons() {
    chat_story(Chat::Line, "apr-line").await;
}

#[tokio::test]
async fn a_run_started_from_slack_is_approved_with_block_actions() {
    chat_story(Chat::Slack, "apr-slack").await;
}
