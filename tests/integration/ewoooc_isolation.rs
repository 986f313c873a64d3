//! EwoooC and AWOOOI side by side (issue 17): neither tenant ever sees the other's runs, audit
//! rows, budget, breakers, tools or tool calls, through the CLI (`awooop run list`, `audit
//! tail`, `budget show`, each run with one project's scope), `/mcp` (each project's runner key: `tools/list` shows only its own
//! tools, `tools/call` of the other's tool is refused before any upstream sees it) and
//! `/metrics`.
//!
//! The `/metrics` contract, decided here: it is the platform operator's view, so it needs the
//! platform admin token and refuses every project key (no project can read another's figures,
//! and there is no per-project scoped view); its per-project series carry exactly one
//! `project` label with that project's own figure; tool names, agent names and run ids never
//! appear in it (they are tenant data, and unbounded label values).

use std::process::Command;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;

use awooop::auth::{AdminToken, KeyBinding, Role};
use awooop::contracts::{BudgetPeriod, ContractKind};
use awooop::coord::Coord;
use awooop::gateway::audit::CallAudit;
use awooop::gateway::credentials::{CredentialResolver, LocalPolicy};
use awooop::gateway::keys::GatewayKeys;
use awooop::gateway::upstream::Upstreams;
use awooop::gateway::{Gateway, GatewayConfig};
use awooop::model::breaker::Breakers;
use awooop::model::budget::{Budget, ReserveRequest};
use awooop::model::policy::{BudgetPolicy, ScopeLimit};
use awooop::policy::PolicySource;
use awooop::runtime::{CreateRun, RunService};
use awooop::tenancy::{self, ProjectId};
use awooop_testkit::fixture::{FixtureOptions, FixtureServer};

use crate::mcp_support::{AWOOOP_BIN, test_config};
use crate::support::*;

const ADMIN: &str = "awa.iso00123456789abcdef0123456789abcdef0123456789abcdef0123456789ab";

/// One MCP session over the real `/mcp` router.
struct Mcp {
    router: axum::Router,
    auth: Vec<(String, String)>,
    session: Option<String>,
}

impl Mcp {
    async fn open(router: axum::Router, key: &str, agent: &str, env: &str) -> Self {
        let mut m = Self {
            router,
            auth: vec![
                ("authorization".into(), format!("Bearer {key}")),
                ("x-awooop-agent".into(), agent.into()),
                ("x-awooop-environment".into(), env.into()),
            ],
            session: None,
        };
        let (s, h, body) = m
            .post(json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
                "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}))
            .await;
        assert_eq!(s, StatusCode::OK, "{body}");
        m.session = Some(h["mcp-session-id"].to_str().unwrap().to_string());
        m
    }

    async fn post(&self, body: Value) -> (StatusCode, axum::http::HeaderMap, Value) {
        let mut req = Request::builder()
            .method("POST")
            .uri("/mcp")
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream");
        for (k, v) in &self.auth {
            req = req.header(k.as_str(), v.as_str());
        }
        if let Some(s) = &self.session {
            req = req.header("mcp-session-id", s.as_str());
        }
        let resp = self
            .router
            .clone()
            .oneshot(req.body(Body::from(body.to_string())).unwrap())
            .await
            .unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        let v = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        (status, headers, v)
    }

    async fn tools(&self) -> Vec<String> {
        let (s, _, r) = self
            .post(json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}))
            .await;
        assert_eq!(s, StatusCode::OK, "{r}");
        r["result"]["tools"]
            .as_array()
            .unwrap_or_else(|| panic!("{r}"))
            .iter()
            .map(|t| t["name"].as_str().unwrap().to_string())
            .collect()
    }

    async fn call(&self, name: &str, args: Value) -> Value {
        self.post(json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call",
            "params": {"name": name, "arguments": args}}))
            .await
            .2
    }
}

/// A refused call: a JSON-RPC error or a tool error, carrying one of the gateway's codes.
#[track_caller]
fn assert_refused(r: &Value) {
    let text = r.to_string();
    assert!(
        text.contains("E-MCP-GATE-001") || text.contains("E-MCP-GATE-002"),
        "expected an unknown-tool or missing-grant refusal: {r}"
    );
}

#[tokio::test]
async fn ewoooc_and_awoooi_never_see_each_other_through_the_cli_mcp_and_metrics() {
    let t = TestDb::new().await;
    let cp = t.control(Coord::none());
    // Onboarded from docs/examples/ewoooc through `awooop project onboard`.
    let ew = crate::ewoooc::onboard_example(&t, &cp).await;
    // AWOOOI (seeded by migration 0002): an infra agent with a tool of the fixture upstream.
    let ai = pid("awoooi");
    let up = FixtureServer::start(FixtureOptions::default())
        .await
        .unwrap();
    tenancy::scope(ai.clone(), async {
        cp.register_signing_key(&admin(), KEY_ID).await.unwrap();
        let r = publish(
            &cp,
            ContractKind::Agent,
            "triage",
            json!({
                "display_name": "Triage", "context_domain": "infra", "tools": ["fx__pid"],
                "safety": {"max_risk": "read_only", "max_steps": 4, "max_tokens_per_run": 1, "timeout_seconds": 60},
                "executor": {"type": "scripted", "steps": [
                    {"type": "tool_call", "key": "pid", "tool": "fx__pid", "arguments": {}},
                    {"type": "output", "key": "o", "template": "done"}
                ]}
            }),
        )
        .await;
        approve_and_activate(&cp, r, 2).await;
        let r = publish(
            &cp,
            ContractKind::McpGateway,
            "default",
            json!({
                "providers": [{"name": "fx", "transport": {"type": "streamable_http", "url": up.url()}}],
                "tools": [{"provider": "fx", "name": "pid", "risk": "read_only", "environments": ["dev"],
                           "input_schema": {"type": "object"}}],
                "grants": [{"agent": "triage", "tools": ["fx__pid"], "environments": ["dev"]}]
            }),
        )
        .await;
        approve_and_activate(&cp, r, 2).await;
    })
    .await;

    // One queued run in each project (no worker: they stay queued).
    let runs = RunService::new(cp.clone());
    let mut run_ids = Vec::new();
    for (p, agent, n) in [(&ew, "openclaw-biz", 2), (&ai, "triage", 1)] {
        for _ in 0..n {
            let r = tenancy::scope(
                p.clone(),
                runs.create(
                    &admin(),
                    CreateRun {
                        agent: agent.into(),
                        input: json!({"message": "hello"}),
                        mode: None,
                        reply_to: None,
                    },
                    None,
                    None,
                ),
            )
            .await
            .unwrap();
            run_ids.push((p.clone(), r.run_id));
        }
    }

    // /mcp: each project's runner key, bound to its own agent.
    let (audit, _writer) = CallAudit::spawn(t.db());
    let gw = std::sync::Arc::new(Gateway::new(
        t.db(),
        Coord::none(),
        GatewayKeys::derive("ewoooc-isolation-gateway-master-key-0123"),
        CredentialResolver::new(
            None,
            LocalPolicy::parse(None, None).unwrap(),
            Duration::ZERO,
        ),
        std::sync::Arc::new(Upstreams::guarded(
            test_config(),
            PolicySource::from_db(t.db()).allow_loopback(),
        )),
        audit,
        GatewayConfig {
            cache_ttl: Duration::ZERO,
            run_liveness_ttl: Duration::ZERO,
            ..GatewayConfig::default()
        },
    ));
    let router = awooop::http::mcp::router(awooop::http::mcp::McpState::new(
        gw.clone(),
        t.db(),
        1 << 20,
    ));
    let runner = |p: ProjectId, agent: &'static str| {
        let cp = cp.clone();
        async move {
            cp.create_api_key_bound(
                &admin(),
                &p,
                "bot",
                vec![Role::Runner],
                Some(KeyBinding {
                    agents: vec![agent.into()],
                    environments: vec!["*".into()],
                }),
            )
            .await
            .unwrap()
            .token
        }
    };
    let ew_key = runner(ew.clone(), "openclaw-biz").await;
    let ai_key = runner(ai.clone(), "triage").await;
    let ew_mcp = Mcp::open(router.clone(), &ew_key, "openclaw-biz", "prod").await;
    let ai_mcp = Mcp::open(router.clone(), &ai_key, "triage", "dev").await;

    let ew_tools = ew_mcp.tools().await;
    assert_eq!(ew_tools.len(), 4, "{ew_tools:?}");
    assert!(
        ew_tools.iter().all(|t| t.starts_with("market__")),
        "{ew_tools:?}"
    );
    let ai_tools = ai_mcp.tools().await;
    assert_eq!(ai_tools, ["fx__pid"]);
    // Each session reaches its own tools …
    let r = ew_mcp
        .call("market__search_products", json!({"query": "headphones"}))
        .await;
    assert_eq!(r["result"]["isError"], false, "{r}");
    let r = ai_mcp.call("fx__pid", json!({})).await;
    assert_eq!(r["result"]["isError"], false, "{r}");
    assert_eq!(up.calls(), 1);
    // … and never the other's, even by name and with the other's agent header: the key's
    // project decides, and a key bound to one agent cannot speak for another.
    assert_refused(&ew_mcp.call("fx__pid", json!({})).await);
    assert_refused(
        &ai_mcp
            .call("market__search_products", json!({"query": "headphones"}))
            .await,
    );
    assert_eq!(up.calls(), 1, "AWOOOI's upstream saw no EwoooC call");
    let (s, _, body) = Mcp {
        router: router.clone(),
        auth: vec![
            ("authorization".into(), format!("Bearer {ew_key}")),
            ("x-awooop-agent".into(), "triage".into()),
            ("x-awooop-environment".into(), "dev".into()),
        ],
        session: None,
    }
    .post(json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}))
    .await;
    assert!(
        s == StatusCode::FORBIDDEN || s == StatusCode::UNAUTHORIZED,
        "EwoooC's key cannot speak for AWOOOI's agent: {s} {body}"
    );
    gw.audit().flush().await;

    // The tool-call audit rows of each project name only its own tools.
    for (p, own, foreign) in [(&ew, "market__", "fx__"), (&ai, "fx__", "market__")] {
        let tools: Vec<String> = tenancy::scope(p.clone(), async {
            let mut tx = cp.db().tenant().await.unwrap();
            let v = sqlx::query_scalar("SELECT tool FROM mcp_call_audit ORDER BY 1")
                .fetch_all(&mut *tx)
                .await
                .unwrap();
            tx.commit().await.unwrap();
            v
        })
        .await;
        assert!(!tools.is_empty(), "{p}: its own calls are audited");
        assert!(
            tools.iter().all(|t| !t.starts_with(foreign)),
            "{p} sees a foreign tool call: {tools:?}"
        );
        assert!(tools.iter().any(|t| t.starts_with(own)), "{tools:?}");
    }

    // Budget use and a tripped breaker in each project: a reservation of its agent on its own
    // provider (ledger rows for the project and the agent scope) and its project breaker open
    // with a reason naming it.
    for (p, agent, provider, reason) in [
        (&ew, "openclaw-biz", "ew-local-llm", "ewoooc-anomaly-burst"),
        (&ai, "triage", "ai-cloud-llm", "awoooi-anomaly-burst"),
    ] {
        tenancy::scope(p.clone(), async {
            let limit = ScopeLimit {
                token_limit: 1_000_000,
                currency_limit_micros: None,
            };
            Budget::new(t.db())
                .reserve(
                    &BudgetPolicy {
                        period: BudgetPeriod::Day,
                        project: limit.clone(),
                        agent: Some(limit),
                    },
                    &ReserveRequest {
                        run_id: None,
                        agent: agent.into(),
                        provider: provider.into(),
                        model: "m".into(),
                        tokens: 1234,
                        micros: 0,
                        ttl: Duration::from_secs(600),
                    },
                )
                .await
                .unwrap();
            Breakers::new(t.db())
                .open_project(reason, Duration::from_secs(600))
                .await
                .unwrap();
        })
        .await;
    }

    // The CLI, with one project's scope at a time.
    let state = std::env::temp_dir().join(format!("awooop-iso-{}", t.name));
    let cli = |args: &[&str]| -> String {
        let out = Command::new(AWOOOP_BIN)
            .args(args)
            .env("DATABASE_URL", &t.url)
            .env("AWOOOP_STATE_DIR", &state)
            .env_remove("REDIS_URL")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    for (p, own_agent, n, foreign) in [
        ("ewoooc", "openclaw-biz", 2, ["triage", "fx__", "awoooi"]),
        (
            "awoooi",
            "triage",
            1,
            ["openclaw-biz", "market__", "ewoooc"],
        ),
    ] {
        let page: Value =
            serde_json::from_str(&cli(&["run", "list", "--project", p, "--limit", "50"])).unwrap();
        let listed = page["runs"].as_array().unwrap_or_else(|| panic!("{page}"));
        assert_eq!(listed.len(), n, "{p}: {page}");
        assert!(listed.iter().all(|r| r["agent"] == own_agent), "{page}");
        for (owner, id) in &run_ids {
            let text = page.to_string();
            assert_eq!(
                text.contains(&id.to_string()),
                owner.as_str() == p,
                "{p} lists exactly its own runs: {text}"
            );
            // Another project's run is not found, exactly like an unknown one.
            if owner.as_str() != p {
                let out = Command::new(AWOOOP_BIN)
                    .args(["run", "get", "--project", p, &id.to_string()])
                    .env("DATABASE_URL", &t.url)
                    .env("AWOOOP_STATE_DIR", &state)
                    .env_remove("REDIS_URL")
                    .output()
                    .unwrap();
                assert!(!out.status.success());
                let err = String::from_utf8_lossy(&out.stderr);
                assert!(err.contains("E-RUN-001"), "{err}");
            }
        }
        let audit = cli(&["audit", "tail", "--project", p, "-n", "500", "--json"]);
        let rows: Vec<Value> = audit
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert!(!rows.is_empty(), "{p}: its own actions are audited");
        for f in foreign {
            assert!(!audit.contains(f), "{p}'s audit mentions {f}: {audit}");
        }
        let approvals = cli(&["approval", "list", "--project", p]);
        for f in foreign {
            assert!(!approvals.contains(f), "{p}'s approvals mention {f}");
        }
        // Budget and breakers: its own ledger rows, reservation and open breaker, nothing of
        // the other's.
        let budget: Value =
            serde_json::from_str(&cli(&["budget", "show", "--project", p])).unwrap();
        let text = budget.to_string();
        let scopes: Vec<&str> = budget["ledger"]
            .as_array()
            .unwrap_or_else(|| panic!("{budget}"))
            .iter()
            .map(|r| r["scope"].as_str().unwrap())
            .collect();
        assert_eq!(
            scopes.len(),
            2,
            "{p}: the project and its agent's scope: {budget}"
        );
        assert!(
            scopes.contains(&format!("agent:{own_agent}").as_str()),
            "{budget}"
        );
        assert_eq!(budget["recent"][0]["agent"], own_agent, "{budget}");
        assert_eq!(budget["recent"].as_array().unwrap().len(), 1, "{budget}");
        let breakers = budget["breakers"].as_array().unwrap();
        assert_eq!(breakers.len(), 1, "{budget}");
        assert_eq!(breakers[0]["open"], true, "{budget}");
        assert_eq!(
            breakers[0]["reason"],
            format!("{p}-anomaly-burst"),
            "{budget}"
        );
        for f in foreign.into_iter().chain(if p == "ewoooc" {
            ["ai-cloud-llm"]
        } else {
            ["ew-local-llm"]
        }) {
            assert!(!text.contains(f), "{p}'s budget mentions {f}: {text}");
        }
    }

    // /metrics: the operator's view only.
    let app = awooop::http::app(awooop::http::AppState {
        control: cp.clone(),
        admin: Some(AdminToken::new(ADMIN)),
        max_body_bytes: 1 << 20,
        metrics: awooop::metrics::Metrics::new(),
        approvals: None,
    });
    let scrape = |token: String| {
        let app = app.clone();
        async move {
            let resp = app
                .oneshot(
                    Request::builder()
                        .uri("/metrics")
                        .header("authorization", format!("Bearer {token}"))
                        .body(Body::empty())
                        .unwrap(),
                )
                .await
                .unwrap();
            let s = resp.status();
            let b = resp.into_body().collect().await.unwrap().to_bytes();
            (s, String::from_utf8_lossy(&b).to_string())
        }
    };
    for (p, key) in [(&ew, ew_key.clone()), (&ai, ai_key.clone())] {
        let reader = cp
            .create_api_key(&admin(), p, "ro", vec![Role::Reader])
            .await
            .unwrap()
            .token;
        for token in [key, reader] {
            let (s, body) = scrape(token).await;
            assert_eq!(s, StatusCode::UNAUTHORIZED, "{p}: {body}");
            assert!(body.contains("E-AUTH-"), "{body}");
        }
    }
    let (s, body) = scrape(ADMIN.into()).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let series = |project: &str| -> Vec<String> {
        body.lines()
            .filter(|l| !l.starts_with('#') && l.contains(&format!("project=\"{project}\"")))
            .map(str::to_string)
            .collect()
    };
    let ew_series = series("ewoooc");
    let ai_series = series("awoooi");
    assert!(
        ew_series
            .iter()
            .any(|l| l.contains("queue_depth") && l.ends_with(" 2")),
        "EwoooC's own queue depth: {body}"
    );
    assert!(
        ai_series
            .iter()
            .any(|l| l.contains("queue_depth") && l.ends_with(" 1")),
        "AWOOOI's own queue depth: {body}"
    );
    for l in body.lines().filter(|l| l.contains("project=")) {
        assert_eq!(
            l.matches("project=").count(),
            1,
            "one project per series: {l}"
        );
    }
    for leak in ["market__", "fx__", "openclaw-biz", "triage"]
        .into_iter()
        .map(String::from)
        .chain(run_ids.iter().map(|(_, id)| id.to_string()))
    {
        assert!(!body.contains(&leak), "/metrics carries {leak}: {body}");
    }
    let _ = std::fs::remove_dir_all(&state);
    t.cleanup().await;
}
