//! The model path against real PostgreSQL and the local provider double (which speaks the
//! OpenAI, Anthropic and Ollama wire formats): budget reservations under concurrency, calls
//! killed mid-stream, in-flight aborts, fallback and circuit breakers, bad provider output,
//! and whole LLM runs through the worker with tools behind the guarded gateway.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use awooop::contracts::{BudgetPeriod, ContractKind, CredentialSource, DataClass, ProviderApi};
use awooop::control::ControlPlane;
use awooop::coord::Coord;
use awooop::model::breaker::{AnomalyConfig, AnomalyCounter, Breakers, Clock};
use awooop::model::budget::{Budget, ReserveRequest};
use awooop::model::executor::{AgentExecutor, LlmExecutor};
use awooop::model::policy::{BreakerPolicy, BudgetPolicy, EffectivePolicy, ScopeLimit, Target};
use awooop::model::proxy::{CallMeta, ModelCall, ProviderProxy};
use awooop::model::wire::{self, ChatMessage, ChatRequest, ToolSpec};
use awooop::runtime::executor::{
    Executor, GuardedGateway, Journal, Outcome, RunContext, ScriptedExecutor, ToolCall, ToolGateway,
};
use awooop::runtime::trace::TraceContext;
use awooop::runtime::worker::{Worker, WorkerConfig, shutdown_channel};
use awooop::runtime::{CreateRun, RunService, repo};
use awooop::tenancy::{self, ProjectId};
use awooop_testkit::double::{ProviderDouble, Reply};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::support::*;

fn target(double: &ProviderDouble, api: ProviderApi, provider: &str, max_out: u32) -> Target {
    Target {
        provider: provider.into(),
        api,
        base_url: double.base_url(),
        api_key: None,
        model: "double-model".into(),
        max_output_tokens: max_out,
        timeout_ms: 5_000,
        input_micros_per_mtok: 1_000_000,
        output_micros_per_mtok: 2_000_000,
    }
}

fn policy(targets: Vec<Target>, token_limit: u64) -> EffectivePolicy {
    EffectivePolicy {
        agent: "bot".into(),
        route: "default".into(),
        data_class: DataClass::Internal,
        targets,
        gated_out: vec![],
        retries: 0,
        budget: BudgetPolicy {
            period: BudgetPeriod::Day,
            project: ScopeLimit {
                token_limit,
                currency_limit_micros: None,
            },
            agent: None,
        },
        breaker: None,
        max_steps: 10,
        max_tokens_per_run: 1_000_000,
        timeout_seconds: 60,
    }
}

fn request() -> ChatRequest {
    ChatRequest {
        system: Some("You are terse.".into()),
        messages: vec![ChatMessage::User {
            content: "How many pods?".into(),
        }],
        tools: vec![ToolSpec {
            name: "k8s__get_pods".into(),
            description: "list pods".into(),
            parameters: json!({"type": "object"}),
        }],
    }
}

fn meta() -> CallMeta {
    CallMeta {
        run_id: None,
        agent: "bot".into(),
        trace: TraceContext::generate(),
    }
}

/// Folder of file credentials: project P's provider keys live under `CREDS/P/` (the gateway's
/// project-bound rules, which the model path shares).
fn creds_dir() -> std::path::PathBuf {
    std::env::temp_dir().join("awooop-model-creds")
}

fn creds() -> Arc<awooop::gateway::credentials::CredentialResolver> {
    use awooop::gateway::credentials::{CredentialResolver, LocalPolicy};
    std::fs::create_dir_all(creds_dir()).unwrap();
    Arc::new(CredentialResolver::new(
        None,
        LocalPolicy::parse(None, Some(&creds_dir())).unwrap(),
        Duration::ZERO,
    ))
}

/// The provider double listens on 127.0.0.1: allowed explicitly, as `awooop up` does.
fn loopback(px: ProviderProxy, t: &TestDb) -> ProviderProxy {
    px.with_egress(awooop::policy::PolicySource::from_db(t.db()).allow_loopback())
}

fn proxy(t: &TestDb) -> Arc<ProviderProxy> {
    let anomalies = AnomalyCounter::new(t.db(), Coord::none(), AnomalyConfig::default());
    Arc::new(loopback(
        ProviderProxy::new(t.db(), anomalies, creds()).unwrap(),
        t,
    ))
}

async fn ledger_of(t: &TestDb, p: &ProjectId) -> (i64, i64, bool) {
    let rows = tenancy::scope(p.clone(), Budget::new(t.db()).ledger(BudgetPeriod::Day))
        .await
        .unwrap();
    let r = rows
        .iter()
        .find(|r| r.scope == "project")
        .expect("project row");
    (r.reserved_tokens, r.spent_tokens, r.tripped)
}

async fn open_reservations(t: &TestDb, p: &ProjectId) -> i64 {
    tenancy::scope(p.clone(), Budget::new(t.db()).open_reservations())
        .await
        .unwrap()
}

async fn audit_actions(t: &TestDb, p: &str) -> Vec<(String, String)> {
    let mut tx = scoped_tx(&t.app, p).await;
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SELECT action, details::text FROM audit_log WHERE project_id = $1 ORDER BY audit_id",
    )
    .bind(p)
    .fetch_all(&mut *tx)
    .await
    .unwrap();
    tx.commit().await.unwrap();
    rows
}

/// 50 concurrent calls against a budget that admits exactly 10 worst cases. The double
/// reports usage equal to each call's reservation, so any admission past the limit would show
/// as spend above it.
#[tokio::test]
async fn budget_fifty_concurrent_calls_never_spend_past_the_limit() {
    let t = TestDb::new().await;
    let cp = t.control(Coord::none());
    let p = project(&cp, "budget-conc", 1).await;
    let double = ProviderDouble::start().await.unwrap();
    let max_out = 200u32;
    let req = request();
    let bound = wire::prompt_token_bound(&req);
    let worst = bound + u64::from(max_out);
    let limit = 10 * worst;
    double.script((0..50).map(|_| Reply::WithUsage {
        input: bound,
        output: u64::from(max_out),
        reply: Box::new(Reply::Delay(
            Duration::from_millis(50),
            Box::new(Reply::Text("fine".into())),
        )),
    }));
    let mut pol = policy(
        vec![target(&double, ProviderApi::OpenaiChat, "vllm", max_out)],
        limit,
    );
    // Two ledger scopes (project and agent) locked by every call: also exercises lock order.
    pol.budget.agent = Some(ScopeLimit {
        token_limit: limit,
        currency_limit_micros: None,
    });
    let pol = Arc::new(pol);
    let px = proxy(&t);
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let (px, pol, req, p) = (px.clone(), pol.clone(), req.clone(), p.clone());
        tasks.push(tokio::spawn(tenancy::scope(p, async move {
            px.chat(&pol, &meta(), &req, None).await
        })));
    }
    let mut ok = 0;
    let mut refused = 0;
    for h in tasks {
        match h.await.unwrap() {
            Ok(c) => {
                ok += 1;
                assert_eq!(
                    c.envelope.usage.input_tokens + c.envelope.usage.output_tokens,
                    worst
                );
            }
            Err(e) => {
                assert!(
                    matches!(e.code.as_str(), "E-BUDGET-001" | "E-BUDGET-003"),
                    "{e}"
                );
                refused += 1;
            }
        }
    }
    assert_eq!(ok, 10, "exactly the ten worst cases that fit were admitted");
    assert_eq!(refused, 40);
    let (reserved, spent, tripped) = ledger_of(&t, &p).await;
    assert_eq!(reserved, 0, "nothing left reserved");
    assert!(spent as u64 <= limit, "spent {spent} > limit {limit}");
    assert_eq!(spent as u64, limit);
    assert!(tripped, "the hard limit trips the project breaker");
    // The trip is audited, and from now on every call is refused by the breaker.
    let actions = audit_actions(&t, "budget-conc").await;
    assert!(actions.iter().any(|(a, _)| a == "budget.breaker.trip"));
    let again = tenancy::scope(p.clone(), px.chat(&pol, &meta(), &req, None)).await;
    assert_code(again, "E-BUDGET-003");
    // Raising the limit (a new policy revision) clears the breaker.
    let mut raised = (*pol).clone();
    raised.budget.project.token_limit = limit * 2;
    raised.budget.agent = None;
    let c = tenancy::scope(p.clone(), px.chat(&raised, &meta(), &req, None)).await;
    assert!(c.is_ok(), "{c:?}");
    t.cleanup().await;
}

/// Start a model call against `double`'s endless stream, wait until the stream is flowing (its
/// request sent and its reservation held), then drop the call (its task aborted, as a run's
/// timeout or an aborted run drops it).
async fn drop_mid_stream(
    t: &TestDb,
    pol: &EffectivePolicy,
    p: &ProjectId,
    double: &ProviderDouble,
) {
    let px = proxy(t);
    let task = {
        let (pol, p) = (pol.clone(), p.clone());
        tokio::spawn(tenancy::scope(p, async move {
            px.chat(&pol, &meta(), &request(), None).await
        }))
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while double.requests().is_empty() || open_reservations(t, p).await == 0 {
        assert!(Instant::now() < deadline, "the call never started");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    task.abort();
    assert!(task.await.unwrap_err().is_cancelled());
}

#[tokio::test]
async fn budget_a_call_dropped_mid_stream_is_settled_and_expired_reservations_are_swept() {
    let t = TestDb::new().await;
    let cp = t.control(Coord::none());
    let p = project(&cp, "budget-drop", 1).await;
    let double = ProviderDouble::start().await.unwrap();
    double.script([Reply::Endless(Duration::from_millis(5))]);
    let pol = policy(
        vec![target(
            &double,
            ProviderApi::AnthropicMessages,
            "cloud",
            100_000,
        )],
        10_000_000,
    );
    drop_mid_stream(&t, &pol, &p, &double).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while open_reservations(&t, &p).await > 0 {
        assert!(
            Instant::now() < deadline,
            "the dropped call's reservation was never settled"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (reserved, spent, _) = ledger_of(&t, &p).await;
    assert_eq!(reserved, 0);
    assert!(spent > 0, "what was sent and streamed is charged");
    assert!((spent as u64) < wire::prompt_token_bound(&request()) + 100_000);

    // A reservation whose holder vanished (no guard ran) expires and is charged in full.
    let budget = Budget::new(t.db());
    let r = tenancy::scope(
        p.clone(),
        budget.reserve(
            &pol.budget,
            &ReserveRequest {
                run_id: None,
                agent: "bot".into(),
                provider: "cloud".into(),
                model: "m".into(),
                tokens: 777,
                micros: 0,
                ttl: Duration::from_millis(1),
            },
        ),
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(
        tenancy::scope(p.clone(), budget.sweep_expired())
            .await
            .unwrap(),
        1
    );
    let (reserved2, spent2, _) = ledger_of(&t, &p).await;
    assert_eq!(reserved2, 0);
    assert_eq!(spent2, spent + 777);
    // A late settlement of the swept reservation changes nothing.
    assert!(
        !tenancy::scope(p.clone(), budget.settle(&r, 1, 0))
            .await
            .unwrap()
    );
    assert_eq!(ledger_of(&t, &p).await.1, spent2);
    t.cleanup().await;
}

#[tokio::test]
async fn budget_a_stream_exhausting_its_reservation_is_aborted() {
    let t = TestDb::new().await;
    let cp = t.control(Coord::none());
    let p = project(&cp, "budget-abort", 1).await;
    let double = ProviderDouble::start().await.unwrap();
    let px = proxy(&t);
    for api in [
        ProviderApi::OpenaiChat,
        ProviderApi::AnthropicMessages,
        ProviderApi::OllamaChat,
    ] {
        double.script([Reply::Endless(Duration::from_millis(1))]);
        let pol = policy(vec![target(&double, api, "p", 40)], 10_000_000);
        let res = tenancy::scope(p.clone(), px.chat(&pol, &meta(), &request(), None)).await;
        assert_code(res, "E-BUDGET-002");
    }
    let (reserved, spent, _) = ledger_of(&t, &p).await;
    assert_eq!(reserved, 0);
    let worst = wire::prompt_token_bound(&request()) + 40;
    assert!(
        spent as u64 <= 3 * worst,
        "charged at most the reservations"
    );
    assert_eq!(open_reservations(&t, &p).await, 0);
    t.cleanup().await;
}

#[tokio::test]
async fn proxy_speaks_each_wire_format_with_tool_calls_and_keeps_keys_out_of_records() {
    let t = TestDb::new().await;
    let cp = t.control(Coord::none());
    let p = project(&cp, "wire-formats", 1).await;
    let double = ProviderDouble::start().await.unwrap();
    let px = proxy(&t);
    std::fs::create_dir_all(creds_dir().join("wire-formats")).unwrap();
    let key_file = creds_dir().join(format!("wire-formats/key-{}", Uuid::new_v4()));
    let secret = format!("sk-test-{}", Uuid::new_v4().simple());
    std::fs::write(&key_file, &secret).unwrap();
    for api in [
        ProviderApi::OpenaiChat,
        ProviderApi::AnthropicMessages,
        ProviderApi::OllamaChat,
    ] {
        let mut tg = target(&double, api, "p", 500);
        // The double accepts only this key, in the API's own header (x-api-key for
        // Anthropic, Bearer for the others): a wrong header or key is a 401.
        double.require_key(&secret);
        tg.api_key = Some(CredentialSource::File {
            path: key_file.to_string_lossy().into(),
        });
        let pol = policy(vec![tg], 10_000_000);
        double.script([
            Reply::ToolCalls(vec![("k8s__get_pods".into(), json!({"namespace": "prod"}))]),
            Reply::Text("There are 3 pods.".into()),
        ]);
        let first: ModelCall = tenancy::scope(p.clone(), px.chat(&pol, &meta(), &request(), None))
            .await
            .unwrap();
        assert_eq!(first.response.tool_calls.len(), 1, "{api:?}");
        assert_eq!(first.response.tool_calls[0].name, "k8s__get_pods");
        assert_eq!(
            first.response.tool_calls[0].arguments,
            json!({"namespace": "prod"})
        );
        assert!(first.envelope.usage.reported && first.envelope.usage.output_tokens > 0);
        assert!(first.envelope.cost_micros > 0);
        let second = tenancy::scope(p.clone(), px.chat(&pol, &meta(), &request(), None))
            .await
            .unwrap();
        assert_eq!(second.response.text, "There are 3 pods.", "{api:?}");
        assert!(second.response.tool_calls.is_empty());
        let env = serde_json::to_string(&second.envelope).unwrap();
        assert!(!env.contains(&secret));
    }
    let reqs = double.requests();
    let paths: Vec<&str> = reqs.iter().map(|r| r.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "/v1/chat/completions",
            "/v1/chat/completions",
            "/v1/messages",
            "/v1/messages",
            "/api/chat",
            "/api/chat"
        ]
    );
    assert!(
        reqs.iter()
            .all(|r| r.has_api_key && r.body["stream"] == true)
    );
    assert!(reqs.iter().all(|r| !r.body.to_string().contains(&secret)));
    // Every call is audited with its envelope; no key anywhere in the audit log.
    let actions = audit_actions(&t, "wire-formats").await;
    assert_eq!(actions.iter().filter(|(a, _)| a == "model.call").count(), 6);
    assert!(actions.iter().all(|(_, d)| !d.contains(&secret)));
    // A key reference that cannot be resolved for this project fails clearly, before anything
    // is sent: a missing file, another project's key file, a file outside the credential
    // folder, and a process environment variable that is not allow-listed for the project
    // (a Policy contract must never be able to ship the platform's own secrets, such as
    // DATABASE_URL, to a base_url it chose).
    std::fs::create_dir_all(creds_dir().join("other-project")).unwrap();
    let foreign = creds_dir().join(format!("other-project/key-{}", Uuid::new_v4()));
    std::fs::write(&foreign, "sk-foreign").unwrap();
    for src in [
        CredentialSource::File {
            path: creds_dir()
                .join("wire-formats/missing")
                .to_string_lossy()
                .into(),
        },
        CredentialSource::File {
            path: foreign.to_string_lossy().into(),
        },
        CredentialSource::File {
            path: "/etc/hostname".into(),
        },
        CredentialSource::Env {
            var: "DATABASE_URL".into(),
        },
    ] {
        let mut tg = target(&double, ProviderApi::OpenaiChat, "p", 500);
        tg.api_key = Some(src.clone());
        let res = tenancy::scope(
            p.clone(),
            px.chat(&policy(vec![tg], 10_000_000), &meta(), &request(), None),
        )
        .await;
        assert_code(res, "E-MODEL-006");
        assert_eq!(double.requests().len(), 6, "{src:?} reached the provider");
    }
    let _ = std::fs::remove_file(foreign);
    assert_eq!(open_reservations(&t, &p).await, 0);
    let _ = std::fs::remove_file(key_file);
    t.cleanup().await;
}

#[tokio::test]
async fn proxy_falls_back_on_429_5xx_and_timeouts_and_opens_the_circuit() {
    let t = TestDb::new().await;
    let cp = t.control(Coord::none());
    let p = project(&cp, "fallback", 1).await;
    let double = ProviderDouble::start().await.unwrap();
    let second = ProviderDouble::start().await.unwrap();
    let px = proxy(&t);
    let mut primary = target(&double, ProviderApi::OpenaiChat, "primary", 100);
    primary.timeout_ms = 300;
    let mut pol = policy(
        vec![
            primary,
            target(&second, ProviderApi::AnthropicMessages, "secondary", 100),
        ],
        10_000_000,
    );
    pol.retries = 1;
    pol.breaker = Some(BreakerPolicy {
        failure_threshold: 3,
        cooldown_seconds: 60,
    });
    // Primary: 429, then 503 (retry exhausted) → secondary answers.
    double.script([Reply::Status(429), Reply::Status(503)]);
    second.script([Reply::Text("from secondary".into())]);
    let c = tenancy::scope(p.clone(), px.chat(&pol, &meta(), &request(), None))
        .await
        .unwrap();
    assert_eq!(c.response.text, "from secondary");
    assert_eq!(c.envelope.provider, "secondary");
    assert_eq!(c.envelope.decision.target_index, 1);
    assert_eq!(
        c.envelope.decision.fallbacks,
        ["primary: HTTP 429", "primary: HTTP 503"]
    );
    // A timeout is the third consecutive failure: the primary's circuit opens (audited)...
    double.script([Reply::Delay(
        Duration::from_secs(3),
        Box::new(Reply::Text("late".into())),
    )]);
    second.script([Reply::Text("secondary again".into())]);
    let c = tenancy::scope(p.clone(), px.chat(&pol, &meta(), &request(), None))
        .await
        .unwrap();
    assert_eq!(c.response.text, "secondary again");
    assert_eq!(c.envelope.decision.fallbacks, ["primary: timeout"]);
    assert!(
        tenancy::scope(
            p.clone(),
            Breakers::new(t.db()).provider_open(&double.base_url())
        )
        .await
        .unwrap()
    );
    // ...so the next call skips it without sending anything there.
    let before = double.requests().len();
    second.script([Reply::Text("straight to secondary".into())]);
    let c = tenancy::scope(p.clone(), px.chat(&pol, &meta(), &request(), None))
        .await
        .unwrap();
    assert_eq!(c.envelope.decision.fallbacks, ["primary: circuit open"]);
    assert_eq!(double.requests().len(), before);
    // The circuit is kept per (project, endpoint): another project using the same endpoint
    // (through another process's cache) still reaches the primary; one tenant's thresholds
    // never switch a provider off for another.
    let q = project(&cp, "fallback-b", 1).await;
    double.script([Reply::Text("for b".into())]);
    let c = tenancy::scope(q.clone(), proxy(&t).chat(&pol, &meta(), &request(), None))
        .await
        .unwrap();
    assert!(c.envelope.decision.fallbacks.is_empty());
    assert_eq!(c.envelope.provider, "primary");
    assert_eq!(double.requests().len(), before + 1);
    // ...while this project's circuit is still open.
    assert!(
        tenancy::scope(
            p.clone(),
            Breakers::new(t.db()).provider_open(&double.base_url())
        )
        .await
        .unwrap()
    );
    let mut tx = t.app.begin().await.unwrap();
    sqlx::query("SELECT set_config('awooop.scope', 'platform', true)")
        .execute(&mut *tx)
        .await
        .unwrap();
    let failures: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM platform_audit WHERE action = 'model.breaker.failure'",
    )
    .fetch_one(&mut *tx)
    .await
    .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(
        failures, 3,
        "every write of the platform resource is audited"
    );
    // Everything failing: E-MODEL-003, with every reservation settled.
    second.script((0..4).map(|_| Reply::Status(500)));
    assert_code(
        tenancy::scope(p.clone(), px.chat(&pol, &meta(), &request(), None)).await,
        "E-MODEL-003",
    );
    let actions = audit_actions(&t, "fallback").await;
    assert!(actions.iter().any(|(a, _)| a == "provider.breaker.open"));
    let mut tx = scoped_tx(&t.app, "fallback").await;
    let codes: Vec<Option<String>> = sqlx::query_scalar(
        "SELECT code FROM audit_log WHERE action = 'model.call' AND outcome = 'error'",
    )
    .fetch_all(&mut *tx)
    .await
    .unwrap();
    tx.commit().await.unwrap();
    assert!(!codes.is_empty());
    assert!(
        codes.iter().all(|c| c.as_deref() == Some("E-MODEL-003")),
        "{codes:?}"
    );
    assert_eq!(open_reservations(&t, &p).await, 0);
    assert_eq!(ledger_of(&t, &p).await.0, 0);
    t.cleanup().await;
}

#[tokio::test]
async fn proxy_bad_provider_output_gets_clear_codes_and_nothing_stays_reserved() {
    let t = TestDb::new().await;
    let cp = t.control(Coord::none());
    let p = project(&cp, "bad-output", 1).await;
    let double = ProviderDouble::start().await.unwrap();
    let px = proxy(&t);
    let cases: Vec<(ProviderApi, Reply, &str)> = vec![
        (ProviderApi::OpenaiChat, Reply::Garbage, "E-MODEL-004"),
        (ProviderApi::OllamaChat, Reply::Garbage, "E-MODEL-004"),
        (
            ProviderApi::OpenaiChat,
            Reply::Truncated(Box::new(Reply::Text("a long answer that is cut".into()))),
            "E-MODEL-004",
        ),
        (
            ProviderApi::AnthropicMessages,
            Reply::Truncated(Box::new(Reply::Text("a long answer that is cut".into()))),
            "E-MODEL-004",
        ),
        (
            ProviderApi::OllamaChat,
            Reply::Truncated(Box::new(Reply::Text("a long answer that is cut".into()))),
            "E-MODEL-004",
        ),
        (
            ProviderApi::OpenaiChat,
            Reply::RawToolCall("k8s__get_pods".into(), "{\"namespace\": ".into()),
            "E-MODEL-005",
        ),
        (
            ProviderApi::AnthropicMessages,
            Reply::RawToolCall("k8s__get_pods".into(), "[1, 2]".into()),
            "E-MODEL-005",
        ),
        (ProviderApi::OpenaiChat, Reply::Status(400), "E-MODEL-008"),
        (
            ProviderApi::AnthropicMessages,
            Reply::Status(401),
            "E-MODEL-008",
        ),
        (ProviderApi::OllamaChat, Reply::Status(429), "E-MODEL-003"),
    ];
    for (api, reply, code) in cases {
        double.script([reply.clone()]);
        let pol = policy(vec![target(&double, api, "p", 100)], 10_000_000);
        let res = tenancy::scope(p.clone(), px.chat(&pol, &meta(), &request(), None)).await;
        match res {
            Ok(c) => panic!("{api:?} {reply:?}: expected {code}, got {:?}", c.response),
            Err(e) => assert_eq!(e.code.as_str(), code, "{api:?} {reply:?}: {e}"),
        }
    }
    assert_eq!(open_reservations(&t, &p).await, 0);
    assert_eq!(ledger_of(&t, &p).await.0, 0);
    t.cleanup().await;
}

// ---------------------------------------------------------------------------------------------
// Whole runs.

/// Stands in for the MCP upstream behind the guarded gateway; counts calls.
#[derive(Default)]
struct PodsUpstream {
    calls: AtomicUsize,
}

#[async_trait]
impl ToolGateway for PodsUpstream {
    async fn call_tool(&self, call: &ToolCall) -> awooop::error::Result<Value> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        Ok(json!({"tool": call.tool, "namespace": call.arguments["namespace"], "pods": 3}))
    }
}

const OUTPUT_SCHEMA: &str = r#"{"type":"object","required":["answer"],"properties":{"answer":{"type":"string"}},"additionalProperties":false}"#;

/// A project with an active LLM agent `llm-bot` (output schema, one read-only tool), a
/// Policy/Routing contract pointing at the double, a project contract and an MCP gateway
/// contract.
async fn llm_project(cp: &ControlPlane, id: &str, double: &ProviderDouble) -> ProjectId {
    let p = project(cp, id, 1).await;
    tenancy::scope(p.clone(), async {
        let schema_hash = cp
            .put_artifact(&admin(), "schemas/answer", "schema", "application/json", OUTPUT_SCHEMA.as_bytes())
            .await
            .unwrap()
            .sha256;
        let mut project_body: Value = serde_json::from_str(
            &std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/contracts/project/valid/minimal.json")).unwrap(),
        )
        .unwrap();
        project_body["budget"]["token_limit"] = json!(10_000_000);
        let r = publish(cp, ContractKind::Project, id, project_body).await;
        approve_and_activate(cp, r, 1).await;
        let r = publish(
            cp,
            ContractKind::Policy,
            "default",
            json!({
                "providers": [{"name": "double", "api": "openai_chat", "base_url": double.base_url(), "self_hosted": true, "privacy_classes": ["internal"]}],
                "routes": [{"name": "main", "targets": [{"provider": "double", "model": "m", "max_output_tokens": 500, "timeout_ms": 5000}]}]
            }),
        )
        .await;
        approve_and_activate(cp, r, 1).await;
        let obj = json!({"type": "object", "properties": {"namespace": {"type": "string"}}});
        let r = publish(
            cp,
            ContractKind::McpGateway,
            "default",
            json!({
                "providers": [{"name": "k8s", "transport": {"type": "streamable_http", "url": "http://127.0.0.1:1/mcp"}}],
                "tools": [{"provider": "k8s", "name": "get_pods", "description": "List pods", "risk": "read_only", "environments": ["dev"], "input_schema": obj}]
            }),
        )
        .await;
        approve_and_activate(cp, r, 1).await;
        let r = publish(
            cp,
            ContractKind::Agent,
            "llm-bot",
            json!({
                "display_name": "LLM bot", "context_domain": "infra",
                "output_schema": {"ref": "schemas/answer", "sha256": schema_hash},
                "tools": ["k8s__get_pods"],
                "safety": {"max_risk": "read_only", "max_steps": 8, "max_tokens_per_run": 100000, "timeout_seconds": 60},
                "executor": {"type": "llm", "route": "main"}
            }),
        )
        .await;
        approve_and_activate(cp, r, 1).await;
    })
    .await;
    p
}

fn llm_executor(
    t: &TestDb,
    cp: &ControlPlane,
    upstream: Arc<dyn ToolGateway>,
) -> Arc<AgentExecutor> {
    let anomalies = AnomalyCounter::new(t.db(), Coord::none(), AnomalyConfig::default());
    let px = Arc::new(loopback(
        ProviderProxy::new(t.db(), anomalies.clone(), creds()).unwrap(),
        t,
    ));
    Arc::new(AgentExecutor::new(
        ScriptedExecutor::new(GuardedGateway::new(cp.clone(), upstream.clone())),
        Some(LlmExecutor::new(
            cp.clone(),
            GuardedGateway::new(cp.clone(), upstream),
            px,
            anomalies,
        )),
    ))
}

async fn run_to_end(
    t: &TestDb,
    cp: &ControlPlane,
    p: &ProjectId,
    exec: Arc<AgentExecutor>,
    input: Value,
) -> Value {
    let agent = input["agent"].as_str().unwrap_or("llm-bot").to_string();
    let runs = RunService::new(cp.clone());
    let id = tenancy::scope(
        p.clone(),
        runs.create(
            &awooop::auth::Actor::cli("runner"),
            CreateRun {
                agent,
                input,
                mode: None,
                reply_to: None,
            },
            None,
            None,
        ),
    )
    .await
    .unwrap()
    .run_id;
    let mut cfg = WorkerConfig::new(format!("model-{}", Uuid::new_v4()));
    cfg.slots = 2;
    cfg.poll = Duration::from_millis(50);
    let w = Arc::new(Worker::new(t.app.clone(), cp.clone(), exec, cfg));
    let (stop, rx) = shutdown_channel();
    let task = tokio::spawn(w.run(rx));
    let deadline = Instant::now() + Duration::from_secs(30);
    let view = loop {
        let d = tenancy::scope(p.clone(), runs.get(id)).await.unwrap();
        if matches!(d.run.state.as_str(), "succeeded" | "failed") {
            break serde_json::to_value(d).unwrap();
        }
        assert!(Instant::now() < deadline, "run stuck in {}", d.run.state);
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    let _ = stop.send(true);
    task.await.unwrap().unwrap();
    view
}

fn step_types(view: &Value) -> Vec<String> {
    view["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            format!(
                "{}:{}",
                s["step_type"].as_str().unwrap(),
                s["status"].as_str().unwrap()
            )
        })
        .collect()
}

#[tokio::test]
async fn llm_run_calls_tools_through_the_gateway_and_validates_its_output() {
    let t = TestDb::new().await;
    let cp = t.control(Coord::none());
    let double = ProviderDouble::start().await.unwrap();
    let p = llm_project(&cp, "llm-run", &double).await;
    let upstream = Arc::new(PodsUpstream::default());
    let exec = llm_executor(&t, &cp, upstream.clone());
    // tool call → invalid answer (re-asked with the violations) → valid answer.
    double.script([
        Reply::ToolCalls(vec![(
            "k8s__get_pods".into(),
            json!({"namespace": "default"}),
        )]),
        Reply::Text("three pods".into()),
        Reply::Text("{\"answer\": \"3 pods in default\"}".into()),
    ]);
    let view = run_to_end(
        &t,
        &cp,
        &p,
        exec.clone(),
        json!({"message": "How many pods?"}),
    )
    .await;
    assert_eq!(view["state"], "succeeded", "{view}");
    assert_eq!(
        view["output"]["result"],
        json!({"answer": "3 pods in default"})
    );
    assert_eq!(upstream.calls.load(Ordering::SeqCst), 1);
    assert_eq!(
        step_types(&view),
        [
            "policy:succeeded",
            "model_call:succeeded",
            "tool_call:intent",
            "tool_call:succeeded",
            "model_call:succeeded",
            "model_call:succeeded"
        ]
    );
    // The policy step records the resolved policy and the revisions it came from.
    let steps = view["steps"].as_array().unwrap();
    assert_eq!(steps[0]["output"]["policy"]["route"], "main");
    assert!(steps[0]["output"]["revisions"]["policy"]["revision_id"].is_string());
    // Each model call step carries its envelope.
    assert_eq!(steps[1]["output"]["envelope"]["provider"], "double");
    assert_eq!(steps[1]["output"]["envelope"]["run_id"], view["run_id"]);
    // What the model saw: the tool result, then the validation errors.
    let reqs = double.requests();
    assert_eq!(reqs.len(), 3);
    let second = reqs[1].body["messages"].to_string();
    assert!(second.contains("\\\"pods\\\":3"), "{second}");
    let third = reqs[2].body["messages"].to_string();
    assert!(
        third.contains("does not satisfy the required output JSON Schema"),
        "{third}"
    );
    assert_eq!(
        reqs[0].body["tools"][0]["function"]["description"],
        "List pods"
    );

    // Three invalid answers: E-SCHEMA-001.
    double.script([
        Reply::Text("no".into()),
        Reply::Text("{\"answer\": 1}".into()),
        Reply::Text("{\"answer\": \"x\", \"extra\": 1}".into()),
    ]);
    let view = run_to_end(&t, &cp, &p, exec.clone(), json!({"message": "again"})).await;
    assert_eq!(view["state"], "failed");
    assert_eq!(view["error_code"], "E-SCHEMA-001");

    // A tool the agent does not have: E-MODEL-005, never reaches the upstream.
    double.script([Reply::ToolCalls(vec![(
        "k8s__delete_all".into(),
        json!({}),
    )])]);
    let view = run_to_end(&t, &cp, &p, exec.clone(), json!({"message": "x"})).await;
    assert_eq!(view["error_code"], "E-MODEL-005");
    assert_eq!(upstream.calls.load(Ordering::SeqCst), 1);

    // Confidential input: outside this project's data boundary, no model is called.
    let before = double.requests().len();
    let view = run_to_end(
        &t,
        &cp,
        &p,
        exec.clone(),
        json!({"message": "x", "data_class": "confidential"}),
    )
    .await;
    assert_eq!(view["error_code"], "E-MODEL-002");
    assert_eq!(double.requests().len(), before);

    // A model that never stops calling tools: the step limit (8) ends the run.
    double.script(
        (0..10)
            .map(|_| Reply::ToolCalls(vec![("k8s__get_pods".into(), json!({"namespace": "a"}))])),
    );
    let view = run_to_end(&t, &cp, &p, exec.clone(), json!({"message": "loop"})).await;
    assert_eq!(view["error_code"], "E-MODEL-007");
    assert_eq!(open_reservations(&t, &p).await, 0);
    t.cleanup().await;
}

/// A run whose first attempt died after a tool call resumes from the journal: the completed
/// model call and tool call are not repeated.
#[tokio::test]
async fn llm_run_resumes_without_repeating_completed_steps() {
    let t = TestDb::new().await;
    let cp = t.control(Coord::none());
    let double = ProviderDouble::start().await.unwrap();
    let p = llm_project(&cp, "llm-resume", &double).await;
    let upstream = Arc::new(PodsUpstream::default());
    let exec = llm_executor(&t, &cp, upstream.clone());
    let runs = RunService::new(cp.clone());
    let id = tenancy::scope(
        p.clone(),
        runs.create(
            &awooop::auth::Actor::cli("runner"),
            CreateRun {
                agent: "llm-bot".into(),
                input: json!({"message": "pods?"}),
                mode: None,
                reply_to: None,
            },
            None,
            None,
        ),
    )
    .await
    .unwrap()
    .run_id;
    let attempt = |n: i32| {
        let (cp, p) = (cp.clone(), p.clone());
        let exec = exec.clone();
        async move {
            let claimed = repo::worker_claim(cp.db().pool_for_health(), "w1", 1, 30.0)
                .await
                .unwrap();
            assert_eq!(claimed.len(), 1);
            let c = &claimed[0];
            assert_eq!(c.attempt, n);
            let rev = tenancy::scope(p.clone(), cp.revision_by_id(c.agent_revision_id))
                .await
                .unwrap();
            let contract =
                match awooop::contracts::validate(ContractKind::Agent, &rev.body).unwrap() {
                    awooop::contracts::Contract::Agent(a) => Arc::new(a),
                    _ => unreachable!(),
                };
            let ctx = RunContext {
                project: p.clone(),
                run_id: c.run_id,
                attempt: c.attempt,
                agent: c.agent.clone(),
                contract,
                mode: awooop::control::MigrationMode::parse(&c.mode).unwrap(),
                input: c.input.clone(),
                trace: TraceContext::generate(),
            };
            tenancy::scope(p.clone(), async {
                let mut j = Journal::load(cp.db(), &p, c.run_id, c.attempt)
                    .await
                    .unwrap();
                exec.execute(&ctx, &mut j).await.unwrap()
            })
            .await
        }
    };
    // Attempt 1: tool call, then the provider rejects the next call (the attempt ends).
    double.script([
        Reply::ToolCalls(vec![(
            "k8s__get_pods".into(),
            json!({"namespace": "default"}),
        )]),
        Reply::Status(400),
    ]);
    let out = attempt(1).await;
    assert!(
        matches!(out, Outcome::Failed { ref code, .. } if code == "E-MODEL-008"),
        "{out:?}"
    );
    assert_eq!(upstream.calls.load(Ordering::SeqCst), 1);
    assert_eq!(double.requests().len(), 2);
    // The worker lost it (released to the queue); attempt 2 resumes.
    repo::worker_release(&t.app, "w1", &[(id, 1)])
        .await
        .unwrap();
    double.script([Reply::Text("{\"answer\": \"3\"}".into())]);
    let out = attempt(2).await;
    assert_eq!(
        out,
        Outcome::Succeeded(
            json!({"result": {"answer": "3"}, "model_calls": 2, "tokens": match &out { Outcome::Succeeded(v) => v["tokens"].clone(), _ => json!(null) }, "route": "main"})
        )
    );
    assert_eq!(
        upstream.calls.load(Ordering::SeqCst),
        1,
        "the tool call was not repeated"
    );
    assert_eq!(
        double.requests().len(),
        3,
        "only the failed model call was repeated"
    );
    t.cleanup().await;
}

/// The anomaly counter opens the project breaker at its threshold, with Redis and without
/// (PostgreSQL fallback); while open every model call of the project is refused.
#[tokio::test]
async fn anomalies_trip_the_project_breaker_with_and_without_redis() {
    let t = TestDb::new().await;
    let cp = t.control(Coord::none());
    let double = ProviderDouble::start().await.unwrap();
    for coord in [Coord::none(), Coord::connect(&redis_url()).unwrap()] {
        // Unique per run: other engineers' tests share this Redis.
        let id = format!("anomaly-{}", &Uuid::new_v4().simple().to_string()[..10]);
        let p = project(&cp, &id, 1).await;
        // A clock in the middle of an hour window, moved by the test only: the count cannot
        // roll over into a new window halfway through, whenever the test runs.
        let now = Arc::new(std::sync::atomic::AtomicI64::new(
            1_900_000_000 - 1_900_000_000 % 3600 + 1800,
        ));
        let clock = {
            let now = now.clone();
            Clock::new(move || now.load(Ordering::SeqCst))
        };
        let counter = AnomalyCounter::new(
            t.db(),
            coord.clone(),
            AnomalyConfig {
                window: Duration::from_secs(3600),
                threshold: 3,
            },
        )
        .with_clock(clock);
        let px = Arc::new(loopback(
            ProviderProxy::new(t.db(), counter.clone(), creds()).unwrap(),
            &t,
        ));
        let pol = policy(
            vec![target(&double, ProviderApi::OpenaiChat, "p", 50)],
            10_000_000,
        );
        // The two calls that get through (before the trip and after the close).
        double.script([Reply::Text("one".into()), Reply::Text("two".into())]);
        tenancy::scope(p.clone(), async {
            use awooop::model::breaker::Anomaly;
            assert!(!counter.record(Anomaly::SchemaFailure).await.unwrap());
            assert!(!counter.record(Anomaly::Denial).await.unwrap());
            assert!(!counter.record(Anomaly::Denial).await.unwrap());
            // Kinds are counted apart: the third denial trips, not the third event.
            assert!(px.chat(&pol, &meta(), &request(), None).await.is_ok());
            assert!(counter.record(Anomaly::Denial).await.unwrap());
            assert_code(
                px.chat(&pol, &meta(), &request(), None).await,
                "E-BUDGET-003",
            );
            Breakers::new(t.db()).close_project().await.unwrap();
            assert!(px.chat(&pol, &meta(), &request(), None).await.is_ok());
            // Windows are fixed: in the next one the count starts again.
            now.fetch_add(3600, Ordering::SeqCst);
            assert!(!counter.record(Anomaly::Denial).await.unwrap());
            assert!(!counter.record(Anomaly::Denial).await.unwrap());
            assert!(counter.record(Anomaly::Denial).await.unwrap());
            Breakers::new(t.db()).close_project().await.unwrap();
        })
        .await;
        let actions = audit_actions(&t, &id).await;
        assert!(
            actions
                .iter()
                .any(|(a, d)| a == "project.breaker.open" && d.contains("denial")),
            "{actions:?}"
        );
        assert!(actions.iter().any(|(a, _)| a == "project.breaker.close"));
        // Where the count lived: Redis when configured, else the PostgreSQL table.
        let mut tx = scoped_tx(&t.app, &id).await;
        let pg: i64 =
            sqlx::query_scalar("SELECT coalesce(sum(count), 0)::bigint FROM model_anomalies")
                .fetch_one(&mut *tx)
                .await
                .unwrap();
        tx.commit().await.unwrap();
        // One schema failure, three denials, the refused call (a denial too), and three
        // denials in the next window.
        assert_eq!(pg, if coord.is_configured() { 0 } else { 8 });
    }
    t.cleanup().await;
}

/// An agent's own budget is a second ledger scope inside the project's, and currency limits
/// use the contract's per-model prices.
#[tokio::test]
async fn budget_agent_scope_and_currency_limits_are_enforced() {
    let t = TestDb::new().await;
    let cp = t.control(Coord::none());
    let p = project(&cp, "budget-scopes", 1).await;
    let double = ProviderDouble::start().await.unwrap();
    let px = proxy(&t);
    // The two calls that pass the budget; the refused ones never reach the provider.
    double.script([Reply::Text("first".into()), Reply::Text("second".into())]);
    let req = request();
    let worst = wire::prompt_token_bound(&req) + 100;
    let mut pol = policy(
        vec![target(&double, ProviderApi::OllamaChat, "p", 100)],
        1_000_000,
    );
    pol.budget.agent = Some(ScopeLimit {
        token_limit: 2 * worst,
        currency_limit_micros: None,
    });
    tenancy::scope(p.clone(), async {
        // The agent's scope admits two worst cases at once, not three.
        let b = Budget::new(t.db());
        let rr = |tokens| ReserveRequest {
            run_id: None,
            agent: "bot".into(),
            provider: "p".into(),
            model: "m".into(),
            tokens,
            micros: 0,
            ttl: Duration::from_secs(60),
        };
        let r1 = b.reserve(&pol.budget, &rr(worst)).await.unwrap();
        let r2 = b.reserve(&pol.budget, &rr(worst)).await.unwrap();
        assert_code(b.reserve(&pol.budget, &rr(worst)).await, "E-BUDGET-001");
        // A refused reservation took nothing from the project scope either.
        let rows = b.ledger(BudgetPeriod::Day).await.unwrap();
        let proj = rows.iter().find(|r| r.scope == "project").unwrap();
        let agent = rows.iter().find(|r| r.scope == "agent:bot").unwrap();
        assert_eq!(proj.reserved_tokens as u64, 2 * worst);
        assert_eq!(agent.reserved_tokens as u64, 2 * worst);
        b.settle(&r1, 10, 0).await.unwrap();
        b.settle(&r2, 10, 0).await.unwrap();
        assert!(px.chat(&pol, &meta(), &req, None).await.is_ok());
        // Another agent is not limited by bot's scope.
        let mut other = pol.clone();
        other.agent = "other".into();
        other.budget.agent = None; // "other" has no entry in agent_budgets
        let o = b
            .reserve(
                &other.budget,
                &ReserveRequest {
                    agent: "other".into(),
                    ..rr(3 * worst)
                },
            )
            .await
            .unwrap();
        b.settle(&o, 0, 0).await.unwrap();
        // Currency: a price that makes one worst case cost more than the limit.
        let mut pricey = pol.clone();
        pricey.budget.agent = None;
        pricey.budget.project.currency_limit_micros = Some(1_000);
        pricey.targets[0].input_micros_per_mtok = 1_000_000_000;
        assert_code(px.chat(&pricey, &meta(), &req, None).await, "E-BUDGET-001");
        pricey.targets[0].input_micros_per_mtok = 1;
        pricey.targets[0].output_micros_per_mtok = 1;
        let c = px.chat(&pricey, &meta(), &req, None).await.unwrap();
        assert!(c.envelope.cost_micros >= 1);
    })
    .await;
    t.cleanup().await;
}

/// The output schema is enforced on every successful run, scripted ones included, and only
/// validated output reaches the outbound path.
#[tokio::test]
async fn output_schema_gates_the_outbound_path_for_scripted_agents_too() {
    let t = TestDb::new().await;
    let cp = t.control(Coord::none());
    let p = project(&cp, "schema-gate", 1).await;
    tenancy::scope(p.clone(), async {
        let schema = br#"{"type": "string", "pattern": "^ok"}"#;
        let h = cp
            .put_artifact(&admin(), "schemas/ok", "schema", "application/json", schema)
            .await
            .unwrap()
            .sha256;
        let r = publish(
            &cp,
            ContractKind::Agent,
            "llm-bot",
            json!({
                "display_name": "Echo", "context_domain": "demo",
                "output_schema": {"ref": "schemas/ok", "sha256": h},
                "safety": {"max_risk": "read_only", "max_steps": 4, "max_tokens_per_run": 1, "timeout_seconds": 60},
                "executor": {"type": "scripted", "steps": [{"type": "output", "key": "echo", "template": "{{input.word}} there"}]}
            }),
        )
        .await;
        approve_and_activate(&cp, r, 1).await;
    })
    .await;
    let exec = llm_executor(&t, &cp, Arc::new(PodsUpstream::default()));
    let reply = || {
        Some(awooop::runtime::outbound::ReplyTo {
            channel: "api".into(),
            conversation: "c1".into(),
        })
    };
    let runs = RunService::new(cp.clone());
    let mut ids = Vec::new();
    for word in ["ok", "bad"] {
        let id = tenancy::scope(
            p.clone(),
            runs.create(
                &awooop::auth::Actor::cli("runner"),
                CreateRun {
                    agent: "llm-bot".into(),
                    input: json!({"word": word}),
                    mode: None,
                    reply_to: reply(),
                },
                None,
                None,
            ),
        )
        .await
        .unwrap()
        .run_id;
        ids.push(id);
    }
    let mut cfg = WorkerConfig::new("schema-gate");
    cfg.poll = Duration::from_millis(50);
    let w = Arc::new(Worker::new(t.app.clone(), cp.clone(), exec, cfg));
    let (stop, rx) = shutdown_channel();
    let task = tokio::spawn(w.run(rx));
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut states = Vec::new();
    for id in &ids {
        loop {
            let d = tenancy::scope(p.clone(), runs.get(*id)).await.unwrap();
            if d.run.state == "succeeded" || d.run.state == "failed" {
                states.push((d.run.state.clone(), d.run.error_code.clone()));
                break;
            }
            assert!(Instant::now() < deadline);
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
    let _ = stop.send(true);
    task.await.unwrap().unwrap();
    assert_eq!(states[0], ("succeeded".into(), None));
    assert_eq!(states[1], ("failed".into(), Some("E-SCHEMA-001".into())));
    // Shadow mode: the valid reply reached the outbound path (and was suppressed there, as
    // shadow replies are); the invalid one never got there.
    let actions = audit_actions(&t, "schema-gate").await;
    let suppressed: Vec<&String> = actions
        .iter()
        .filter(|(a, _)| a == "outbound.suppressed")
        .map(|(_, d)| d)
        .collect();
    assert_eq!(suppressed.len(), 1, "{actions:?}");
    t.cleanup().await;
}

/// The agent's `timeout_seconds` ends a run whose model never answers; the cut-off call's
/// reservation is settled.
#[tokio::test]
async fn llm_run_past_its_agent_timeout_fails_and_releases_its_reservation() {
    let t = TestDb::new().await;
    let cp = t.control(Coord::none());
    let double = ProviderDouble::start().await.unwrap();
    let p = llm_project(&cp, "llm-timeout", &double).await;
    tenancy::scope(p.clone(), async {
        let r = publish(
            &cp,
            ContractKind::Agent,
            "llm-slow",
            json!({
                "display_name": "Slow", "context_domain": "infra",
                "safety": {"max_risk": "read_only", "max_steps": 4, "max_tokens_per_run": 100000, "timeout_seconds": 1},
                "executor": {"type": "llm", "route": "main"}
            }),
        )
        .await;
        approve_and_activate(&cp, r, 1).await;
    })
    .await;
    let exec = llm_executor(&t, &cp, Arc::new(PodsUpstream::default()));
    double.script([Reply::Endless(Duration::from_millis(200))]);
    let view = run_to_end(
        &t,
        &cp,
        &p,
        exec,
        json!({"agent": "llm-slow", "message": "hi"}),
    )
    .await;
    assert_eq!(view["state"], "failed");
    assert_eq!(view["error_code"], "E-MODEL-009");
    let deadline = Instant::now() + Duration::from_secs(10);
    while open_reservations(&t, &p).await > 0 {
        assert!(Instant::now() < deadline, "reservation left open");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(ledger_of(&t, &p).await.0, 0);
    t.cleanup().await;
}

/// The sweep commits on its own: a reservation refused right after it (here because the
/// expired reservation, charged in full, used the whole budget) does not undo it.
#[tokio::test]
async fn budget_sweep_survives_a_refused_reservation() {
    let t = TestDb::new().await;
    let cp = t.control(Coord::none());
    let p = project(&cp, "budget-sweep", 1).await;
    let b = Budget::new(t.db());
    let limits = BudgetPolicy {
        period: BudgetPeriod::Day,
        project: ScopeLimit {
            token_limit: 1000,
            currency_limit_micros: None,
        },
        agent: None,
    };
    let rr = |tokens, ttl| ReserveRequest {
        run_id: None,
        agent: "bot".into(),
        provider: "p".into(),
        model: "m".into(),
        tokens,
        micros: 0,
        ttl,
    };
    tenancy::scope(p.clone(), async {
        b.reserve(&limits, &rr(1000, Duration::from_millis(1)))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_code(
            b.reserve(&limits, &rr(10, Duration::from_secs(60))).await,
            "E-BUDGET-003",
        );
        assert_eq!(b.open_reservations().await.unwrap(), 0);
    })
    .await;
    let (reserved, spent, tripped) = ledger_of(&t, &p).await;
    assert_eq!((reserved, spent, tripped), (0, 1000, true));
    let actions = audit_actions(&t, "budget-sweep").await;
    assert!(
        actions
            .iter()
            .any(|(a, d)| a == "budget.breaker.trip" && d.contains("expired")),
        "{actions:?}"
    );
    t.cleanup().await;
}

/// The double also answers non-streaming requests in each API's JSON shape.
#[tokio::test]
async fn double_answers_non_streaming_requests_in_each_format() {
    let double = ProviderDouble::start().await.unwrap();
    awooop::tls::install_crypto_provider();
    let http = reqwest::Client::new();
    for (path, api) in [
        ("/v1/chat/completions", ProviderApi::OpenaiChat),
        ("/v1/messages", ProviderApi::AnthropicMessages),
        ("/api/chat", ProviderApi::OllamaChat),
    ] {
        double.script([
            Reply::ToolCalls(vec![("k8s__get_pods".into(), json!({"namespace": "a"}))]),
            Reply::Status(429),
        ]);
        let mut body = wire::request_body(api, "m", 10, &request());
        body["stream"] = json!(false);
        let v: Value = http
            .post(format!("{}{path}", double.base_url()))
            .header("anthropic-version", "2023-06-01")
            .json(&body)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let (name, args) = match api {
            ProviderApi::OpenaiChat => (
                v["choices"][0]["message"]["tool_calls"][0]["function"]["name"].clone(),
                serde_json::from_str::<Value>(
                    v["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"]
                        .as_str()
                        .unwrap(),
                )
                .unwrap(),
            ),
            ProviderApi::AnthropicMessages => (
                v["content"][0]["name"].clone(),
                v["content"][0]["input"].clone(),
            ),
            ProviderApi::OllamaChat => (
                v["message"]["tool_calls"][0]["function"]["name"].clone(),
                v["message"]["tool_calls"][0]["function"]["arguments"].clone(),
            ),
        };
        assert_eq!(name, "k8s__get_pods", "{api:?}: {v}");
        assert_eq!(args, json!({"namespace": "a"}));
        let r = http
            .post(format!("{}{path}", double.base_url()))
            .header("anthropic-version", "2023-06-01")
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 429);
    }
}

/// The double is as strict as the real APIs: the other provider's auth header or a wrong key
/// is a 401 in that provider's error format, Anthropic wants its version header, an OpenAI
/// stream carries usage only when asked, and a call nothing was scripted for is recorded as a
/// violation (which fails the test that made it when the double is dropped).
#[tokio::test]
async fn double_is_as_strict_as_the_real_providers() {
    let double = ProviderDouble::start().await.unwrap();
    awooop::tls::install_crypto_provider();
    let http = reqwest::Client::new();
    let url = |path: &str| format!("{}{path}", double.base_url());
    let openai = wire::request_body(ProviderApi::OpenaiChat, "m", 10, &request());
    let anthropic = wire::request_body(ProviderApi::AnthropicMessages, "m", 10, &request());
    double.require_key("sk-right");
    let send = |path: &str, body: &Value, headers: &[(&str, &str)]| {
        let mut rb = http.post(url(path)).json(body);
        for (k, v) in headers {
            rb = rb.header(*k, *v);
        }
        async move {
            let r = rb.send().await.unwrap();
            let status = r.status().as_u16();
            (status, r.text().await.unwrap())
        }
    };
    // Wrong header kind, no key, wrong key: 401 in each provider's own error format.
    for headers in [
        vec![("x-api-key", "sk-right")],
        vec![],
        vec![("authorization", "Bearer sk-wrong")],
    ] {
        let (status, text) = send("/v1/chat/completions", &openai, &headers).await;
        assert_eq!(status, 401, "{headers:?}: {text}");
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["error"]["code"], "invalid_api_key", "{v}");
    }
    for headers in [
        vec![
            ("authorization", "Bearer sk-right"),
            ("anthropic-version", "2023-06-01"),
        ],
        vec![("anthropic-version", "2023-06-01")],
        vec![
            ("x-api-key", "sk-wrong"),
            ("anthropic-version", "2023-06-01"),
        ],
    ] {
        let (status, text) = send("/v1/messages", &anthropic, &headers).await;
        assert_eq!(status, 401, "{headers:?}: {text}");
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["type"], "error", "{v}");
        assert_eq!(v["error"]["type"], "authentication_error", "{v}");
    }
    let (status, text) = send("/v1/messages", &anthropic, &[("x-api-key", "sk-right")]).await;
    assert_eq!(status, 400, "no anthropic-version: {text}");
    // Usage in an OpenAI stream only when the request asks for it.
    let bearer = [("authorization", "Bearer sk-right")];
    assert_eq!(openai["stream_options"]["include_usage"], true);
    double.script([Reply::Text("counted".into())]);
    let (status, text) = send("/v1/chat/completions", &openai, &bearer).await;
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("\"usage\""), "{text}");
    let mut silent = openai.clone();
    silent.as_object_mut().unwrap().remove("stream_options");
    double.script([Reply::Text("uncounted".into())]);
    let (status, text) = send("/v1/chat/completions", &silent, &bearer).await;
    assert_eq!(status, 200, "{text}");
    assert!(
        !text.contains("\"usage\""),
        "usage nobody asked for: {text}"
    );
    assert!(text.contains("[DONE]"));
    // Nothing scripted: a provider-format 500 and a recorded violation.
    assert!(double.take_violations().is_empty());
    let (status, text) = send("/v1/chat/completions", &openai, &bearer).await;
    assert_eq!(status, 500, "{text}");
    let violations = double.take_violations();
    assert_eq!(violations.len(), 1, "{violations:?}");
    // A standing reply is an explicit script for any number of calls.
    double.always(Reply::Text("again".into()));
    for _ in 0..2 {
        assert_eq!(send("/v1/chat/completions", &openai, &bearer).await.0, 200);
    }
    assert!(double.take_violations().is_empty());
}

/// A whole LLM run through the real MCP gateway (five gates, credential injection, redaction,
/// call audit) to a real MCP server over Streamable HTTP: the upstream answers only with the
/// injected credential and echoes it back; the model never sees it, nor do the journal and the
/// audit. A tool the agent lists but the gateway does not grant is denied by gate 2.
#[tokio::test]
async fn llm_run_calls_a_real_mcp_upstream_through_the_gateway() {
    use awooop::gateway::audit::CallAudit;
    use awooop::gateway::credentials::{CredentialResolver, LocalPolicy};
    use awooop::gateway::in_process::InProcessGateway;
    use awooop::gateway::keys::GatewayKeys;
    use awooop::gateway::{Gateway, GatewayConfig};
    use awooop_testkit::fixture::{FixtureOptions, FixtureServer};

    let t = TestDb::new().await;
    let cp = t.control(Coord::none());
    let double = ProviderDouble::start().await.unwrap();
    let secret = format!("zqM-{}/+=Kp", &Uuid::new_v4().simple().to_string()[..16]);
    let upstream = FixtureServer::start(FixtureOptions {
        require_header: Some(("x-key".into(), secret.clone())),
        ..Default::default()
    })
    .await
    .unwrap();
    let dir = std::env::temp_dir().join(format!("awooop-model-gw-{}", Uuid::new_v4()));
    std::fs::create_dir_all(dir.join("llm-gw")).unwrap();
    std::fs::write(dir.join("llm-gw/key"), &secret).unwrap();

    let p = llm_project(&cp, "llm-gw", &double).await;
    let name_arg = json!({"type": "object", "properties": {"name": {"type": "string"}}});
    tenancy::scope(p.clone(), async {
        let r = publish(
            &cp,
            ContractKind::McpGateway,
            "default",
            json!({
                "credential_refs": [{"name": "key", "source": {"file": {"path": dir.join("llm-gw/key").display().to_string()}}}],
                "providers": [{"name": "fx", "transport": {"type": "streamable_http", "url": upstream.url()},
                               "credentials": [{"credential": "key", "inject": {"type": "header", "name": "X-Key", "prefix": ""}}]}],
                "tools": [
                    {"provider": "fx", "name": "leak_structured", "description": "Cluster facts", "risk": "read_only", "environments": ["dev"], "input_schema": name_arg},
                    {"provider": "fx", "name": "headers", "risk": "read_only", "environments": ["dev"], "input_schema": {"type": "object"}}
                ],
                "grants": [{"agent": "llm-bot", "tools": ["fx__leak_structured"], "environments": ["dev"]}]
            }),
        )
        .await;
        approve_and_activate(&cp, r, 1).await;
        // The output schema artifact llm_project registered.
        let schema_hash = {
            use sha2::Digest;
            format!("sha256:{}", hex::encode(sha2::Sha256::digest(OUTPUT_SCHEMA.as_bytes())))
        };
        let r = publish(
            &cp,
            ContractKind::Agent,
            "llm-bot",
            json!({
                "display_name": "LLM bot", "context_domain": "infra",
                "output_schema": {"ref": "schemas/answer", "sha256": schema_hash},
                "tools": ["fx__leak_structured", "fx__headers"],
                "safety": {"max_risk": "read_only", "max_steps": 8, "max_tokens_per_run": 100000, "timeout_seconds": 60},
                "executor": {"type": "llm", "route": "main"}
            }),
        )
        .await;
        approve_and_activate(&cp, r, 1).await;
    })
    .await;

    let (audit, _writer) = CallAudit::spawn(t.db());
    let gw = Arc::new(Gateway::new(
        t.db(),
        Coord::none(),
        GatewayKeys::derive("model-e2e-gateway-master-key-0123456789"),
        CredentialResolver::new(
            None,
            LocalPolicy::parse(None, Some(&dir)).unwrap(),
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
    let exec = llm_executor(&t, &cp, Arc::new(InProcessGateway::new(gw.clone())));

    // tool call through the gateway → final answer.
    double.script([
        Reply::ToolCalls(vec![(
            "fx__leak_structured".into(),
            json!({"name": "x-key"}),
        )]),
        Reply::Text("{\"answer\": \"facts read\"}".into()),
    ]);
    let view = run_to_end(&t, &cp, &p, exec.clone(), json!({"message": "facts?"})).await;
    assert_eq!(view["state"], "succeeded", "{view}");
    assert_eq!(view["output"]["result"], json!({"answer": "facts read"}));
    assert_eq!(
        step_types(&view),
        [
            "policy:succeeded",
            "model_call:succeeded",
            "tool_call:intent",
            "tool_call:succeeded",
            "model_call:succeeded"
        ]
    );
    // The upstream answered (it refuses calls without the injected credential) and echoed the
    // secret; what the model saw next has it redacted.
    let reqs = double.requests();
    let seen = reqs[1].body["messages"].to_string();
    assert!(seen.contains("token"), "{seen}");
    assert!(
        !seen.contains(&secret),
        "credential reached the model: {seen}"
    );
    assert!(
        !view.to_string().contains(&secret),
        "credential in the journal"
    );
    gw.audit().flush().await;
    let mut tx = scoped_tx(&t.app, "llm-gw").await;
    let rows: Vec<Value> =
        sqlx::query_scalar("SELECT to_jsonb(a) FROM mcp_call_audit a WHERE run_id = $1")
            .bind(view["run_id"].as_str().unwrap().parse::<Uuid>().unwrap())
            .fetch_all(&mut *tx)
            .await
            .unwrap();
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert!(rows[0].to_string().contains("fx__leak_structured"));
    assert!(
        !rows[0].to_string().contains(&secret),
        "credential in the audit"
    );
    drop(tx);

    // A tool the agent lists but the gateway does not grant: gate 2, nothing goes upstream.
    double.script([Reply::ToolCalls(vec![("fx__headers".into(), json!({}))])]);
    let view = run_to_end(&t, &cp, &p, exec.clone(), json!({"message": "headers?"})).await;
    assert_eq!(view["state"], "failed", "{view}");
    assert_eq!(view["error_code"], "E-MCP-GATE-002", "{view}");
    assert_eq!(open_reservations(&t, &p).await, 0);
    let _ = std::fs::remove_dir_all(&dir);
    t.cleanup().await;
}

// --- budget leases (model::budget::lease, migration 0062) ---

fn lease_limits(project: u64, agent: Option<u64>) -> BudgetPolicy {
    BudgetPolicy {
        period: BudgetPeriod::Day,
        project: ScopeLimit {
            token_limit: project,
            currency_limit_micros: None,
        },
        agent: agent.map(|a| ScopeLimit {
            token_limit: a,
            currency_limit_micros: None,
        }),
    }
}

fn lease_request(tokens: u64) -> ReserveRequest {
    ReserveRequest {
        run_id: None,
        agent: "bot".into(),
        provider: "p".into(),
        model: "m".into(),
        tokens,
        micros: 0,
        ttl: Duration::from_secs(60),
    }
}

/// Starts `processes` `awooop bench budget --worker` processes racing from the same instant;
/// returns the summed (admitted, refused).
async fn race_workers(
    t: &TestDb,
    project: &str,
    processes: usize,
    callers_each: usize,
    tokens: u64,
    limit: u64,
    extra: &[&str],
) -> (u64, u64) {
    let start = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        + Duration::from_millis(1_500);
    let mut children = Vec::new();
    for _ in 0..processes {
        children.push(
            tokio::process::Command::new(env!("CARGO_BIN_EXE_awooop"))
                .args(["bench", "budget", "--worker", "--worker-project", project])
                .args(["--worker-callers", &callers_each.to_string()])
                .args(["--worker-tokens", &tokens.to_string()])
                .args(["--worker-limit", &limit.to_string()])
                .args(["--worker-start-ms", &start.as_millis().to_string()])
                .args(["--database-url", &t.url])
                .args(extra)
                .stdout(std::process::Stdio::piped())
                .kill_on_drop(true)
                .spawn()
                .unwrap(),
        );
    }
    let (mut admitted, mut refused) = (0, 0);
    for c in children {
        let out = c.wait_with_output().await.unwrap();
        assert!(out.status.success(), "worker failed: {}", out.status);
        let v: Value = serde_json::from_str(
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .last()
                .expect("a worker prints its outcome"),
        )
        .unwrap();
        admitted += v["admitted"].as_u64().unwrap();
        refused += v["refused"].as_u64().unwrap();
    }
    (admitted, refused)
}

async fn lease_rows(t: &TestDb, p: &str) -> Vec<(String, i64)> {
    let mut tx = scoped_tx(&t.app, p).await;
    let rows = sqlx::query_as("SELECT state, tokens FROM budget_leases ORDER BY created_at")
        .fetch_all(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    rows
}

/// Four processes, 120 callers, a budget of exactly 25 worst cases; every admitted caller
/// spends its whole reservation. Leases are taken and reserved within in separate processes,
/// so only PostgreSQL's conditional slice keeps the cap, and only the recall keeps budget from
/// being stranded in another process's lease: exactly 25 are admitted (none refused while
/// budget was left), the spend is exactly the limit, nothing stays leased, and every admitted
/// reservation is journalled with its lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn budget_leases_racing_processes_never_pass_the_cap_nor_strand_budget() {
    let t = TestDb::new().await;
    let cp = t.control(Coord::none());
    let p = project(&cp, "lease-race", 1).await;
    let (admitted, refused) = race_workers(&t, "lease-race", 4, 30, 1_000, 25_000, &[]).await;
    assert_eq!((admitted, refused), (25, 95));
    let (reserved, spent, tripped) = ledger_of(&t, &p).await;
    assert_eq!((reserved, spent, tripped), (0, 25_000, true));
    let leases = lease_rows(&t, "lease-race").await;
    assert!(!leases.is_empty());
    assert!(
        leases.iter().all(|(s, tok)| s == "returned" && *tok == 0),
        "{leases:?}"
    );
    let mut tx = scoped_tx(&t.app, "lease-race").await;
    let journalled: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM budget_reservations WHERE state = 'settled' AND actual_tokens = 1000 AND lease_id IS NOT NULL",
    )
    .fetch_one(&mut *tx)
    .await
    .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(journalled, 25);
    t.cleanup().await;
}

/// A process that dies holding a lease: its slice stays reserved on the ledger (nobody else
/// can spend it) until the lease expires; the next acquisition reaps it, charged in full (fail
/// closed: its calls may have been billed), and the cap still holds for the survivors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn budget_lease_of_a_crashed_process_is_reaped_and_charged_in_full() {
    let t = TestDb::new().await;
    let cp = t.control(Coord::none());
    let p = project(&cp, "lease-crash", 1).await;
    let (admitted, _) = race_workers(
        &t,
        "lease-crash",
        1,
        3,
        1_000,
        10_000,
        &["--worker-crash", "--worker-lease-ttl-ms", "1000"],
    )
    .await;
    assert_eq!(admitted, 3);
    let (held, spent, _) = ledger_of(&t, &p).await;
    assert!(held >= 3_000 && spent == 0, "held {held}, spent {spent}");
    tokio::time::sleep(Duration::from_millis(1_300)).await;
    let b = Budget::with_leases(t.db(), Default::default());
    let limits = lease_limits(10_000, None);
    tenancy::scope(p.clone(), async {
        // What is left after the dead lease is charged in full.
        let left = 10_000 - held as u64;
        let r = b.reserve(&limits, &lease_request(left)).await.unwrap();
        assert_code(b.reserve(&limits, &lease_request(1)).await, "E-BUDGET-001");
        assert!(b.settle(&r, left, 0).await.unwrap());
        b.shutdown().await.unwrap();
    })
    .await;
    let (reserved, spent, tripped) = ledger_of(&t, &p).await;
    assert_eq!((reserved, spent, tripped), (0, 10_000, true));
    let leases = lease_rows(&t, "lease-crash").await;
    assert_eq!(leases[0], ("expired".to_string(), held));
    t.cleanup().await;
}

/// In one process: settle-once, refusals with the plain path's codes per scope, usage above a
/// reservation recorded at once (and tripping the breaker), and everything on the ledger and
/// in the journal after the flush.
#[tokio::test]
async fn budget_leased_reservations_keep_the_ledgers_semantics() {
    let t = TestDb::new().await;
    let cp = t.control(Coord::none());
    let p = project(&cp, "lease-local", 1).await;
    let b = Budget::with_leases(t.db(), Default::default());
    let limits = lease_limits(100_000, Some(3_000));
    tenancy::scope(p.clone(), async {
        let r1 = b.reserve(&limits, &lease_request(1_000)).await.unwrap();
        let r2 = b.reserve(&limits, &lease_request(1_000)).await.unwrap();
        let _r3 = b.reserve(&limits, &lease_request(1_000)).await.unwrap();
        assert!(r1.leased);
        // The agent scope (3 worst cases) is full while the project has room.
        assert_code(
            b.reserve(&limits, &lease_request(1_000)).await,
            "E-BUDGET-001",
        );
        assert!(b.settle(&r1, 600, 0).await.unwrap());
        assert!(!b.settle(&r1, 600, 0).await.unwrap(), "settled twice");
        // 400 were freed, not 1000: a 1000 call still does not fit, a 400 call does.
        assert_code(
            b.reserve(&limits, &lease_request(1_000)).await,
            "E-BUDGET-001",
        );
        let r4 = b.reserve(&limits, &lease_request(400)).await.unwrap();
        // Usage above the reservation: recorded as it is, at once.
        assert!(b.settle(&r2, 5_000, 0).await.unwrap());
        let rows = b.ledger(BudgetPeriod::Day).await.unwrap();
        let agent = rows.iter().find(|r| r.scope == "agent:bot").unwrap();
        assert_eq!(agent.spent_tokens, 5_600);
        assert!(agent.tripped);
        assert_code(b.reserve(&limits, &lease_request(1)).await, "E-BUDGET-003");
        assert!(b.settle(&r4, 400, 0).await.unwrap());
        b.shutdown().await.unwrap();
    })
    .await;
    let rows = tenancy::scope(p.clone(), Budget::new(t.db()).ledger(BudgetPeriod::Day))
        .await
        .unwrap();
    let project_row = rows.iter().find(|r| r.scope == "project").unwrap();
    let agent_row = rows.iter().find(|r| r.scope == "agent:bot").unwrap();
    // r3 is still open: its 1000 stay reserved on both rows until it settles or expires.
    assert_eq!(
        (project_row.spent_tokens, project_row.reserved_tokens),
        (6_000, 1_000)
    );
    assert_eq!(
        (agent_row.spent_tokens, agent_row.reserved_tokens),
        (6_000, 1_000)
    );
    let mut tx = scoped_tx(&t.app, "lease-local").await;
    let journal: Vec<(String, i64)> = sqlx::query_as(
        "SELECT state, actual_tokens FROM budget_reservations WHERE lease_id IS NOT NULL ORDER BY created_at",
    )
    .fetch_all(&mut *tx)
    .await
    .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(
        journal,
        [
            ("settled".into(), 600),
            ("settled".into(), 5_000),
            ("settled".into(), 400)
        ]
    );
    let audit = audit_actions(&t, "lease-local").await;
    assert!(
        audit.iter().any(|(a, _)| a == "budget.breaker.trip"),
        "{audit:?}"
    );
    t.cleanup().await;
}

/// `awooop worker --budget-leases`, composed as the command does (`awooop up` uses the same
/// `worker_for`): the worker's model budget leases a slice (8 calls' worth) on its first
/// reservation; stopping the worker gracefully (its shutdown channel, as on SIGTERM) flushes
/// the spend to the ledger and gives the unused slice back, so nothing stays leased. Without
/// that the slice stays reserved after the process exits and is charged in full once the
/// lease expires. The idle return is set far off so only the shutdown can return the slice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn budget_leases_of_a_worker_are_returned_when_it_stops_gracefully() {
    use clap::Parser;
    let t = TestDb::new().await;
    let cp = t.control(Coord::none());
    let p = project(&cp, "lease-stop", 1).await;
    let state = std::env::temp_dir().join(format!("awooop-lease-stop-{}", t.name));
    let cli = awooop::config::Cli::try_parse_from([
        "awooop",
        "worker",
        "--database-url",
        &t.url,
        "--state-dir",
        &state.to_string_lossy(),
        "--db-max-connections",
        "4",
        "--project",
        "lease-stop",
        "--budget-leases",
        "--budget-lease-idle-return-ms",
        "600000",
    ])
    .unwrap();
    let awooop::config::Command::Worker(args) = cli.command else {
        panic!("parsed as the worker command");
    };
    let platform = awooop::platform::Platform::connect(&args.db, None, None)
        .await
        .unwrap();
    let process = awooop::platform::worker_for_project(
        &platform,
        &args.worker,
        awooop::metrics::Metrics::new(),
        args.project.clone(),
    );
    let budget = process.budget().expect("the model proxy's budget").clone();
    assert!(budget.leases().is_some(), "--budget-leases wires leases in");
    let (stop, rx) = shutdown_channel();
    let running = tokio::spawn(process.run(rx));
    let limits = lease_limits(100_000, None);
    tenancy::scope(p.clone(), async {
        let r = budget
            .reserve(&limits, &lease_request(1_000))
            .await
            .unwrap();
        assert!(r.leased);
        assert!(budget.settle(&r, 600, 0).await.unwrap());
    })
    .await;
    let held = lease_rows(&t, "lease-stop").await;
    assert!(
        held.iter().any(|(s, tok)| s == "active" && *tok > 1_000),
        "{held:?}"
    );
    stop.send(true).unwrap();
    running.await.unwrap().unwrap();
    drop(budget);
    drop(platform);
    let leases = lease_rows(&t, "lease-stop").await;
    assert!(
        !leases.is_empty() && leases.iter().all(|(s, tok)| s == "returned" && *tok == 0),
        "{leases:?}"
    );
    let (reserved, spent, tripped) = ledger_of(&t, &p).await;
    assert_eq!((reserved, spent, tripped), (0, 600, false));
    let mut tx = scoped_tx(&t.app, "lease-stop").await;
    let journal: Vec<(String, i64)> = sqlx::query_as(
        "SELECT state, actual_tokens FROM budget_reservations WHERE lease_id IS NOT NULL",
    )
    .fetch_all(&mut *tx)
    .await
    .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(journal, [("settled".to_string(), 600)]);
    let _ = std::fs::remove_dir_all(&state);
    t.cleanup().await;
}

/// Budget stranded in another process's lease is recalled, not refused: process A leases a
/// slice (a quarter of 10 worst cases) for its one caller, which holds its reservation 3 s;
/// process B then asks for 8 worst cases. Without the recall B's eighth caller would be
/// refused although A's unused part covers it (A gives it back on its own only after 1 s
/// idle); with it, B gets all 8 and the spend is exactly 9 worst cases, within the cap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn budget_lease_recall_hands_budget_held_by_another_process_to_the_one_that_needs_it() {
    let t = TestDb::new().await;
    let cp = t.control(Coord::none());
    let p = project(&cp, "lease-recall", 1).await;
    let start = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        + Duration::from_millis(1_500);
    let spawn = |callers: usize, offset_ms: u64, hold_ms: u64| {
        tokio::process::Command::new(env!("CARGO_BIN_EXE_awooop"))
            .args([
                "bench",
                "budget",
                "--worker",
                "--worker-project",
                "lease-recall",
            ])
            .args(["--worker-callers", &callers.to_string()])
            .args(["--worker-tokens", "1000", "--worker-limit", "10000"])
            .args([
                "--worker-start-ms",
                &(start.as_millis() + u128::from(offset_ms)).to_string(),
            ])
            .args(["--worker-hold-ms", &hold_ms.to_string()])
            .args(["--database-url", &t.url])
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap()
    };
    let a = spawn(1, 0, 3_000);
    let b = spawn(8, 400, 20);
    let mut admitted = Vec::new();
    for c in [a, b] {
        let out = c.wait_with_output().await.unwrap();
        assert!(out.status.success());
        let v: Value =
            serde_json::from_str(String::from_utf8_lossy(&out.stdout).lines().last().unwrap())
                .unwrap();
        admitted.push(v["admitted"].as_u64().unwrap());
    }
    assert_eq!(admitted, [1, 8], "A's unused slice was stranded");
    let (reserved, spent, _) = ledger_of(&t, &p).await;
    assert_eq!((reserved, spent), (0, 9_000));
    t.cleanup().await;
}

// ---------------------------------------------------------------------------------------------
// Cancellation: a future dropped at an await (a run's `timeout_seconds`, a cancelled or aborted
// run, shutdown) must not leave the budget or the breaker half-written. Each test stops the
// operation inside its transaction with a lock the test holds, drops it there, then releases
// the lock.

/// A lease acquisition dropped mid-flight keeps the spend settled before it. Before the fix the
/// acquisition's `sync` had taken the settled 600 out of memory when its transaction was
/// rolled back by the drop, and nothing put them back: they never reached the ledger (spent 0
/// after the shutdown flush), so the hard limit admitted 600 more than it should.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn budget_lease_acquisition_dropped_mid_flight_keeps_the_settled_spend() {
    use awooop::model::budget::lease::LeaseConfig;
    let t = TestDb::new().await;
    let cp = t.control(Coord::none());
    let p = project(&cp, "lease-dropped", 1).await;
    // No periodic flush or idle return: only the dropped acquisition and the shutdown sync.
    let b = Budget::with_leases(
        t.db(),
        LeaseConfig {
            flush_interval: Duration::from_secs(3600),
            idle_return: Duration::from_secs(3600),
            ..Default::default()
        },
    );
    let limits = lease_limits(100_000, None);
    tenancy::scope(p.clone(), async {
        let r = b.reserve(&limits, &lease_request(1_000)).await.unwrap();
        assert!(r.leased);
        // Settled in memory: flushed with the lease's next sync.
        assert!(b.settle(&r, 600, 0).await.unwrap());
    })
    .await;
    // The lease row held by the test: the next sync stops inside its transaction, after it
    // planned (and took the settled spend out of memory). More than the slice holds: an
    // acquisition.
    let (b2, l2) = (b.clone(), limits.clone());
    t.drop_while_blocked(
        "SELECT 1 FROM budget_leases FOR UPDATE",
        "UPDATE budget_leases",
        tenancy::scope(p.clone(), async move {
            b2.reserve(&l2, &lease_request(50_000)).await
        }),
    )
    .await;
    tenancy::scope(p.clone(), b.shutdown()).await.unwrap();
    let (reserved, spent, _) = ledger_of(&t, &p).await;
    assert_eq!(
        (reserved, spent),
        (0, 600),
        "the settled spend reaches the ledger and nothing stays reserved"
    );
    let mut tx = scoped_tx(&t.app, "lease-dropped").await;
    let journal: Vec<(String, i64)> = sqlx::query_as(
        "SELECT state, actual_tokens FROM budget_reservations WHERE lease_id IS NOT NULL ORDER BY created_at",
    )
    .fetch_all(&mut *tx)
    .await
    .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(
        journal.first(),
        Some(&("settled".to_string(), 600)),
        "{journal:?}"
    );
    t.cleanup().await;
}

/// A call dropped while its settlement is in flight is still settled. Before the fix the guard
/// marked itself settled before the settlement ran, so its `Drop` did nothing and the
/// reservation stayed `reserved` until it expired, then was charged in full.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn budget_a_call_dropped_while_settling_is_still_settled() {
    use awooop::model::budget::ReservationGuard;
    let t = TestDb::new().await;
    let cp = t.control(Coord::none());
    let p = project(&cp, "settle-dropped", 1).await;
    let budget = Budget::new(t.db());
    let limits = lease_limits(100_000, None);
    let r = tenancy::scope(p.clone(), budget.reserve(&limits, &lease_request(1_000)))
        .await
        .unwrap();
    let guard = ReservationGuard::new(budget.clone(), p.clone(), r);
    t.drop_while_blocked(
        "SELECT 1 FROM budget_reservations FOR UPDATE",
        "UPDATE budget_reservations",
        tenancy::scope(p.clone(), async move { guard.settle(500, 0).await }),
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while open_reservations(&t, &p).await > 0 {
        assert!(
            Instant::now() < deadline,
            "the reservation of a call dropped while settling stays held"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(ledger_of(&t, &p).await, (0, 500, false));
    t.cleanup().await;
}

/// A reservation whose `COMMIT` was in flight when its call was dropped is released at once.
/// The commit lands after the caller went away, so nobody holds the reservation to settle it
/// (the call never reached the provider): before the fix it stayed `reserved` until it expired
/// (here a minute) and was then charged in full, a minute of budget held for nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn budget_a_reservation_committed_after_its_call_was_dropped_is_released() {
    let t = TestDb::new().await;
    let cp = t.control(Coord::none());
    let p = project(&cp, "reserve-dropped", 1).await;
    let budget = Budget::new(t.db());
    let limits = lease_limits(100_000, None);
    // The reservation's COMMIT waits for a lock the test holds: a deferred constraint trigger
    // runs at commit time.
    let mut su = t.superuser().await;
    sqlx::raw_sql(
        "CREATE FUNCTION test_commit_gate() RETURNS trigger LANGUAGE plpgsql AS \
           $$ BEGIN PERFORM pg_advisory_xact_lock(774411); RETURN NULL; END $$; \
         GRANT EXECUTE ON FUNCTION test_commit_gate() TO PUBLIC; \
         CREATE CONSTRAINT TRIGGER test_commit_gate AFTER INSERT ON budget_reservations \
           DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION test_commit_gate()",
    )
    .execute(&mut su)
    .await
    .unwrap();
    let (b2, l2) = (budget.clone(), limits.clone());
    t.drop_while_blocked(
        "SELECT pg_advisory_xact_lock(774411)",
        "COMMIT",
        tenancy::scope(p.clone(), async move {
            b2.reserve(&l2, &lease_request(1_000)).await
        }),
    )
    .await;
    // The commit lands now: the reservation exists (the test is about a committed one) ...
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let n: i64 =
            sqlx::query_scalar("SELECT count(*) FROM budget_reservations WHERE project_id = $1")
                .bind(p.as_str())
                .fetch_one(&mut su)
                .await
                .unwrap();
        if n == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "the reservation never committed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(su);
    // ... and it is released, not held for its minute.
    while open_reservations(&t, &p).await > 0 {
        assert!(
            Instant::now() < deadline,
            "a reservation committed after its call went away stays held"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(ledger_of(&t, &p).await, (0, 0, false));
    t.cleanup().await;
}

/// The anomaly that reaches the threshold opens the breaker even when its caller is dropped
/// after the count and before the opening. Before the fix the count stayed at the threshold
/// with the breaker closed, and the next anomalies counted past it (the breaker opens on the
/// threshold exactly), so it stayed closed for the rest of the window.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_anomaly_dropped_between_its_count_and_the_breaker_still_opens_it() {
    use awooop::model::breaker::Anomaly;
    let t = TestDb::new().await;
    let cp = t.control(Coord::none());
    let p = project(&cp, "anomaly-dropped", 1).await;
    let now = 1_900_000_000 - 1_900_000_000 % 3600 + 1800;
    let counter = AnomalyCounter::new(
        t.db(),
        Coord::none(),
        AnomalyConfig {
            window: Duration::from_secs(3600),
            threshold: 2,
        },
    )
    .with_clock(Clock::new(move || now));
    assert!(
        !tenancy::scope(p.clone(), counter.record(Anomaly::Denial))
            .await
            .unwrap()
    );
    // The breaker table held by the test: the opening waits, the count (another table) not.
    let c2 = counter.clone();
    t.drop_while_blocked(
        "LOCK TABLE model_breakers IN SHARE ROW EXCLUSIVE MODE",
        "INSERT INTO model_breakers",
        tenancy::scope(p.clone(), async move { c2.record(Anomaly::Denial).await }),
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !breaker_open(&t, "anomaly-dropped").await {
        assert!(
            Instant::now() < deadline,
            "the anomaly that reached the threshold never opened the breaker"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    t.cleanup().await;
}

async fn breaker_open(t: &TestDb, project: &str) -> bool {
    let mut tx = scoped_tx(&t.app, project).await;
    let n: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM model_breakers WHERE breaker = 'project' AND open_until > now()",
    )
    .fetch_one(&mut *tx)
    .await
    .unwrap();
    tx.commit().await.unwrap();
    n == 1
}

/// A model call dropped mid-stream (a run's `timeout_seconds`, an aborted run) is audited: its
/// request reached the provider, which may bill it. Before the fix its envelope was audited
/// only when the call ended, so the drop left no `model.call` row (only the ledger's
/// reservation).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_call_dropped_mid_stream_is_audited() {
    let t = TestDb::new().await;
    let cp = t.control(Coord::none());
    let p = project(&cp, "call-dropped", 1).await;
    let double = ProviderDouble::start().await.unwrap();
    double.script([Reply::Endless(Duration::from_millis(5))]);
    let pol = policy(
        vec![target(&double, ProviderApi::OpenaiChat, "cloud", 100_000)],
        10_000_000,
    );
    drop_mid_stream(&t, &pol, &p, &double).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let row = loop {
        let calls: Vec<String> = audit_actions(&t, "call-dropped")
            .await
            .into_iter()
            .filter(|(a, _)| a == "model.call")
            .map(|(_, d)| d)
            .collect();
        if let Some(d) = calls.first() {
            assert_eq!(calls.len(), 1, "{calls:?}");
            break serde_json::from_str::<Value>(d).unwrap();
        }
        assert!(
            Instant::now() < deadline,
            "the dropped call was never audited"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(row["outcome"], "dropped", "{row}");
    assert_eq!(row["provider"], "cloud");
    assert!(row["usage"]["output_tokens"].as_u64().unwrap() > 0, "{row}");
    // The guard settled the reservation at the same count.
    let deadline = Instant::now() + Duration::from_secs(10);
    while open_reservations(&t, &p).await > 0 {
        assert!(Instant::now() < deadline, "never settled");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    t.cleanup().await;
}
