//! Adversarial suite, part B (issue 11, items 3–6): each test is an attack a hostile tenant (or
//! an outsider with a stolen or over-broad credential) tried, driven through the platform's
//! public interfaces where they exist (the HTTP API and `/mcp` in-process through
//! `oneshot`, the control plane, the gateway's `call_tool` with a hostile upstream speaking
//! `CallToolResult`), against the real PostgreSQL. Each failed on the code before the fix.
//!
//! * cross-tenant denial of service: a tenant's breaker thresholds open only its own circuit
//!   (and only for a capped cooldown); tenant JSON Schema patterns compile with a linear-time
//!   engine (look-around and back-references refused at publish); contract diff is bounded;
//! * credentials: runner keys bound to agents and environments, approval tokens bound to
//!   agent and environment, run tokens with a maximum lifetime that die with their run,
//!   Kubernetes Secret values with the file rule, exact-value redaction of encoded and split
//!   credentials;
//! * smaller leaks: `/metrics` needs the admin token, McpGrant names unique across projects;
//! * bad input: U+0000 anywhere and non-JSON media types give coded 4xx, never 500; the
//!   OpenAPI document covers every route of docs/api.md with the 401/422 answers.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use base64::Engine;
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;
use uuid::Uuid;

use awooop::auth::AdminToken;
use awooop::contracts::ContractKind;
use awooop::control::{ControlPlane, MigrationMode};
use awooop::coord::Coord;
use awooop::gateway::audit::CallAudit;
use awooop::gateway::credentials::{CredentialResolver, LocalPolicy, MemorySecrets};
use awooop::gateway::keys::GatewayKeys;
use awooop::gateway::service::{UpstreamCall, UpstreamError};
use awooop::gateway::{Caller, Gateway, GatewayConfig, ToolUpstream, approval, tokens};
use awooop::http::{AppState, app};
use awooop::runtime::{CreateRun, RunService, TraceContext};
use awooop::tenancy::{self, ProjectId};

use crate::support::*;

const ADMIN: &str = "awa.b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0";
const MASTER: &str = "adversarial-b-gateway-master-key-0123456789";

// ---------------------------------------------------------------------------------------------
// HTTP helpers

struct Api {
    router: axum::Router,
}

impl Api {
    fn new(t: &TestDb) -> Self {
        Self {
            router: app(AppState {
                control: t.control(Coord::none()),
                admin: Some(AdminToken::new(ADMIN)),
                max_body_bytes: 1 << 20,
                metrics: awooop::metrics::Metrics::new(),
                approvals: None,
            }),
        }
    }

    /// A request with raw headers and body; returns status and parsed JSON (or text).
    async fn raw(
        &self,
        method: &str,
        uri: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> (StatusCode, Value) {
        let mut req = Request::builder().method(method).uri(uri);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = self
            .router
            .clone()
            .oneshot(req.body(Body::from(body)).unwrap())
            .await
            .unwrap();
        let status = resp.status();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        let v = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()));
        (status, v)
    }

    /// A JSON request (raw JSON text, so it can carry `\u0000`) with a bearer token.
    async fn json(&self, method: &str, uri: &str, token: &str, body: &str) -> (StatusCode, Value) {
        let auth = format!("Bearer {token}");
        self.raw(
            method,
            uri,
            &[
                ("authorization", &auth),
                ("content-type", "application/json"),
                ("x-awooop-project", "alpha"),
            ],
            body.as_bytes().to_vec(),
        )
        .await
    }
}

#[track_caller]
fn coded_4xx(res: &(StatusCode, Value), what: &str) {
    assert!(
        res.0.is_client_error(),
        "{what}: expected a coded 4xx, got {} {}",
        res.0,
        res.1
    );
    let code = res.1["code"].as_str().unwrap_or_default();
    assert!(
        code.starts_with("E-") && code != "E-INTERNAL-001",
        "{what}: {}",
        res.1
    );
}

async fn runner_key(
    cp: &ControlPlane,
    project: &ProjectId,
    agents: &[&str],
    envs: &[&str],
) -> String {
    cp.create_api_key_bound(
        &admin(),
        project,
        "bot",
        vec![awooop::auth::Role::Runner, awooop::auth::Role::Reader],
        Some(awooop::auth::KeyBinding {
            agents: agents.iter().map(|s| s.to_string()).collect(),
            environments: envs.iter().map(|s| s.to_string()).collect(),
        }),
    )
    .await
    .unwrap()
    .token
}

// ---------------------------------------------------------------------------------------------
// Item 6: bad input never becomes a 500

/// U+0000 in every place a client can put text that PostgreSQL stores (run agent, input and
/// reply_to, `?agent=`, contract names in paths, migration reason, draft bodies, project
/// display_name, revoke paths): PostgreSQL cannot store it (SQLSTATE 22021/22P05) and the old
/// code answered 500 `E-INTERNAL-001`. Now: a coded 4xx, and nothing written.
#[tokio::test]
async fn nul_characters_anywhere_are_a_coded_4xx_never_a_500() {
    let t = TestDb::new().await;
    let cp = t.control(Coord::none());
    let p = project(&cp, "alpha", 1).await;
    tenancy::scope(p.clone(), async {
        let r = publish(&cp, ContractKind::Agent, "triage", agent_body()).await;
        approve_and_activate(&cp, r, 1).await;
    })
    .await;
    let api = Api::new(&t);
    let key = runner_key(&cp, &p, &["*"], &["*"]).await;
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "POST",
            "/v1/platform/runs".into(),
            r#"{"agent":"tri\u0000age"}"#,
        ),
        (
            "POST",
            "/v1/platform/runs".into(),
            r#"{"agent":"triage","input":{"q":"a\u0000b"}}"#,
        ),
        (
            "POST",
            "/v1/platform/runs".into(),
            r#"{"agent":"triage","input":{"k\u0000":1}}"#,
        ),
        (
            "POST",
            "/v1/platform/runs".into(),
            r#"{"agent":"triage","reply_to":{"channel":"c\u0000","conversation":"x"}}"#,
        ),
        ("GET", "/v1/platform/runs?agent=tri%00age".into(), ""),
        ("GET", "/v1/control/active/agent/tri%00age".into(), ""),
        (
            "GET",
            "/v1/control/contracts/agent/tri%00age/history".into(),
            "",
        ),
        (
            "GET",
            "/v1/control/contracts/agent/tri%00age/revisions/1".into(),
            "",
        ),
        (
            "GET",
            "/v1/control/contracts/agent/tri%00age/diff?from=1&to=2".into(),
            "",
        ),
        (
            "POST",
            "/v1/control/migration".into(),
            r#"{"mode":"auto_remediate","force":true,"reason":"why\u0000"}"#,
        ),
        (
            "POST",
            "/v1/control/drafts".into(),
            r#"{"kind":"agent","name":"x","body":{"display_name":"a\u0000"}}"#,
        ),
        (
            "POST",
            "/v1/control/projects".into(),
            r#"{"project_id":"beta","display_name":"B\u0000"}"#,
        ),
        ("POST", "/v1/control/api-keys/abc%00def/revoke".into(), ""),
        ("POST", "/v1/control/signing-keys/k%00/revoke".into(), ""),
    ];
    for (method, uri, body) in &cases {
        let token = if uri.contains("/runs") {
            key.as_str()
        } else {
            ADMIN
        };
        let res = api.json(method, uri, token, body).await;
        coded_4xx(&res, &format!("{method} {uri} {body}"));
    }
    // A draft can also be replaced with a NUL-carrying body (PUT /drafts/{id}).
    let (s, d) = api
        .json(
            "POST",
            "/v1/control/drafts",
            ADMIN,
            &json!({"kind": "agent", "name": "other", "body": agent_body()}).to_string(),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{d}");
    let id = d["draft_id"].as_str().unwrap().to_string();
    let res = api
        .json(
            "PUT",
            &format!("/v1/control/drafts/{id}"),
            ADMIN,
            r#"{"body":{"display_name":"\u0000"}}"#,
        )
        .await;
    coded_4xx(&res, "PUT draft");
    // Nothing was written by any refused request.
    let mut tx = scoped_tx(&t.app, "alpha").await;
    let runs: i64 = sqlx::query_scalar("SELECT count(*) FROM runs")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(runs, 0);
    let (s, _) = api.json("GET", "/v1/control/projects", ADMIN, "").await;
    assert_eq!(s, StatusCode::OK);
    // The backstop below the HTTP guards: a NUL reaching PostgreSQL maps to a coded 422.
    let err = cp
        .create_project(
            &admin(),
            awooop::control::NewProject {
                project_id: "gamma".into(),
                display_name: "G\0".into(),
                required_approvals: None,
            },
        )
        .await
        .unwrap_err();
    assert_eq!(err.code.as_str(), "E-REQ-001", "{err}");
    t.cleanup().await;
}

/// `text/plain` (a CORS-simple request a browser sends cross-origin without preflight) and a
/// missing Content-Type were parsed as JSON. Now 415 `E-REQ-004`, on the API and on `/mcp`.
#[tokio::test]
async fn bodies_that_are_not_declared_json_are_refused_with_415() {
    let t = TestDb::new().await;
    let api = Api::new(&t);
    let body = br#"{"project_id":"beta","display_name":"B"}"#.to_vec();
    let auth = format!("Bearer {ADMIN}");
    for headers in [
        vec![
            ("authorization", auth.as_str()),
            ("content-type", "text/plain"),
        ],
        vec![("authorization", auth.as_str())],
        vec![
            ("authorization", auth.as_str()),
            ("content-type", "application/x-www-form-urlencoded"),
        ],
    ] {
        let (s, v) = api
            .raw("POST", "/v1/control/projects", &headers, body.clone())
            .await;
        assert_eq!(s, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{headers:?}: {v}");
        assert_eq!(v["code"], "E-REQ-004");
    }
    let (s, v) = api
        .raw(
            "POST",
            "/v1/control/projects",
            &[
                ("authorization", auth.as_str()),
                ("content-type", "application/json; charset=utf-8"),
            ],
            body,
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    // /mcp: the transport requires application/json too.
    let fx = GwFx::new(&t, &["triage"]).await;
    let token = fx.run_token(None, "dev", 600);
    let resp = fx
        .mcp_router()
        .oneshot(
            Request::builder()
                .method("POST")
                .uri("/mcp")
                .header("authorization", format!("Bearer {token}"))
                .header("content-type", "text/plain")
                .body(Body::from(
                    json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {"protocolVersion": "2025-06-18"}}).to_string(),
                ))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    t.cleanup().await;
}

/// The OpenAPI document omitted 13 routes docs/api.md lists, typed list answers as objects
/// and left out the 401/422 answers every route can give.
#[tokio::test]
async fn openapi_covers_every_route_of_the_api_reference() {
    let t = TestDb::new().await;
    let api = Api::new(&t);
    let (s, doc) = api.raw("GET", "/openapi.json", &[], vec![]).await;
    assert_eq!(s, StatusCode::OK);
    let reference = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/api.md"),
    )
    .unwrap();
    let mut checked = 0;
    for line in reference.lines() {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        if cells.len() < 4 || !cells[2].starts_with('`') {
            continue;
        }
        let path = cells[2]
            .trim_matches('`')
            .split('?')
            .next()
            .unwrap()
            .replace("{p}", "{project}")
            .replace("{key_id}", "{id}");
        for method in cells[1].split('/') {
            let op = &doc["paths"][&path][method.to_lowercase()];
            assert!(op.is_object(), "{method} {path} is not in /openapi.json");
            checked += 1;
            let responses = op["responses"].as_object().unwrap();
            assert!(responses.contains_key("422"), "{method} {path}: no 422");
            let public = ["/healthz", "/readyz", "/openapi.json"].contains(&path.as_str());
            if !public {
                assert!(responses.contains_key("401"), "{method} {path}: no 401");
            }
        }
    }
    assert!(checked >= 36, "only {checked} routes found in docs/api.md");
    let array = |p: &str| {
        doc["paths"][p]["get"]["responses"]["200"]["content"]["application/json"]["schema"]["type"]
            .clone()
    };
    for p in [
        "/v1/control/audit",
        "/v1/control/drafts",
        "/v1/control/projects",
        "/v1/control/active",
    ] {
        assert_eq!(array(p), "array", "{p}");
    }
    t.cleanup().await;
}

// ---------------------------------------------------------------------------------------------
// Item 5: smaller leaks

/// `/metrics` on the API port carried every project's labels to anyone who could reach it.
#[tokio::test]
async fn metrics_on_the_api_port_need_the_admin_token() {
    let t = TestDb::new().await;
    let cp = t.control(Coord::none());
    let p = project(&cp, "alpha", 1).await;
    let reader = cp
        .create_api_key(&admin(), &p, "ro", vec![awooop::auth::Role::Reader])
        .await
        .unwrap()
        .token;
    let api = Api::new(&t);
    let (s, v) = api.raw("GET", "/metrics", &[], vec![]).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{v}");
    assert_eq!(v["code"], "E-AUTH-001");
    let bearer = format!("Bearer {reader}");
    let (s, _) = api
        .raw("GET", "/metrics", &[("authorization", &bearer)], vec![])
        .await;
    assert_eq!(
        s,
        StatusCode::UNAUTHORIZED,
        "a tenant's key reads no metrics"
    );
    let admin_bearer = format!("Bearer {ADMIN}");
    let (s, m) = api
        .raw(
            "GET",
            "/metrics",
            &[("authorization", &admin_bearer)],
            vec![],
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    assert!(
        m.as_str()
            .unwrap()
            .contains("awooop_claim_duration_seconds")
    );
    t.cleanup().await;
}

/// Project `a-b` with agent `c` and project `ab` … no: project `team-a` with agent `bot` and
/// project `team` with agent `a-bot` both projected an McpGrant named `team-a-bot`: the later
/// one overwrote the other tenant's grant.
#[test]
fn mcp_grant_names_cannot_collide_across_projects() {
    use awooop::k8s::project::{Revision, mcp_grants};
    let gateway = |agent: &str| -> awooop::contracts::McpGatewayContract {
        serde_json::from_value(json!({
            "credential_refs": [],
            "providers": [{"name": "k8s", "transport": {"type": "streamable_http", "url": "https://k8s.example/mcp"}}],
            "tools": [{"provider": "k8s", "name": "get", "risk": "read_only", "environments": ["dev"], "input_schema": {"type": "object"}}],
            "grants": [{"agent": agent, "tools": ["k8s__get"], "environments": ["dev"]}]
        }))
        .unwrap()
    };
    let rev = |agent: &str| Revision {
        revision_id: "r".into(),
        revision: 1,
        body_hash: "sha256:00".into(),
        body: gateway(agent),
    };
    let a = mcp_grants("ns", "team-a", &rev("bot"));
    let b = mcp_grants("ns", "team", &rev("a-bot"));
    let (na, nb) = (
        a[0].metadata.name.clone().unwrap(),
        b[0].metadata.name.clone().unwrap(),
    );
    assert_ne!(na, nb, "two tenants' grants share the object name {na}");
}

// ---------------------------------------------------------------------------------------------
// Item 3: no cross-tenant denial of service

/// Provider circuit breakers were one platform-wide state per endpoint, opened with the
/// thresholds of whichever tenant's contract saw the failure: `failure_threshold: 1,
/// cooldown_seconds: 86400` and one failing call switched a shared provider off for every
/// tenant for a day.
#[tokio::test]
async fn one_tenants_breaker_never_opens_another_tenants_provider() {
    use awooop::model::breaker::{Breakers, MAX_COOLDOWN_SECONDS};
    use awooop::model::policy::BreakerPolicy;
    let t = TestDb::new().await;
    let cp = t.control(Coord::none());
    let a = project(&cp, "alpha", 1).await;
    let b = project(&cp, "beta", 1).await;
    let endpoint = "https://shared-llm.example/v1";
    let hostile = BreakerPolicy {
        failure_threshold: 1,
        cooldown_seconds: 86_400,
    };
    let opened = tenancy::scope(
        a.clone(),
        Breakers::new(t.db()).provider_failure("shared", endpoint, &hostile),
    )
    .await
    .unwrap();
    assert!(opened);
    let st = tenancy::scope(a.clone(), Breakers::new(t.db()).provider_state(endpoint))
        .await
        .unwrap();
    assert!(st.is_open(chrono::Utc::now()));
    let until = st.open_until.unwrap();
    assert!(
        until <= chrono::Utc::now() + chrono::Duration::seconds(i64::from(MAX_COOLDOWN_SECONDS)),
        "cooldown capped by the platform: {until}"
    );
    // Another tenant (another process: a fresh cache) still reaches the provider.
    let open_for_b = tenancy::scope(b.clone(), Breakers::new(t.db()).provider_open(endpoint))
        .await
        .unwrap();
    assert!(
        !open_for_b,
        "tenant alpha's breaker opened tenant beta's provider"
    );
    t.cleanup().await;
}

/// Tool input schemas (tenant-written) were compiled with a backtracking engine: a pattern
/// with look-around runs in exponential time on a crafted argument, on the gateway's shared
/// threads. Now such patterns are refused when the contract is drafted, and schema artifacts
/// with them are refused at registration.
#[tokio::test]
async fn backtracking_patterns_are_refused_at_publish() {
    let t = TestDb::new().await;
    let cp = t.control(Coord::none());
    let p = project(&cp, "alpha", 1).await;
    let evil = r"^(?=(a+)+b)";
    let body = json!({
        "credential_refs": [],
        "providers": [{"name": "k8s", "transport": {"type": "streamable_http", "url": "https://k8s.example/mcp"}}],
        "tools": [{"provider": "k8s", "name": "get", "risk": "read_only", "environments": ["dev"],
                   "input_schema": {"type": "object", "properties": {"q": {"type": "string", "pattern": evil}}}}],
        "grants": []
    });
    let res = tenancy::scope(
        p.clone(),
        cp.create_draft(&admin(), ContractKind::McpGateway, "default", body),
    )
    .await;
    let err = res.map(|_| ()).unwrap_err();
    assert_eq!(err.code.as_str(), "E-CONTRACT-003", "{err}");
    assert!(err.message.contains("input_schema"), "{err}");
    let schema = json!({"type": "object", "patternProperties": {r"^(\w)\1$": {"type": "string"}}});
    assert_code(
        tenancy::scope(
            p.clone(),
            cp.put_artifact(
                &admin(),
                "schemas/evil",
                "schema",
                "application/json",
                schema.to_string().as_bytes(),
            ),
        )
        .await,
        "E-ARTIFACT-001",
    );
    t.cleanup().await;
}

/// A diff of two huge revisions ran unbounded on an async worker thread. Now the inputs are
/// bounded (413 `E-CONTRACT-016`) and the work runs on the blocking pool with a deadline.
#[test]
fn contract_diff_is_bounded() {
    let big = json!({"x": "y".repeat(awooop::control::MAX_DIFF_INPUT_BYTES)});
    let err = match awooop::control::bounded_diff_json(&big, &json!({}), "a", "b") {
        Ok(d) => panic!("a diff of {} bytes was computed", d.len()),
        Err(e) => e,
    };
    assert_eq!(err.code.as_str(), "E-CONTRACT-016");
    assert_eq!(err.code.http_status(), 413);
    let d =
        awooop::control::bounded_diff_json(&json!({"a": 1}), &json!({"a": 2}), "a", "b").unwrap();
    assert!(
        d.contains("-  \"a\": 1") && d.contains("+  \"a\": 2"),
        "{d}"
    );
}

// ---------------------------------------------------------------------------------------------
// Item 4: credentials bound tighter. A gateway fixture with a hostile upstream.

/// A tool server that returns whatever `reply` says (it knows the credential: the test put
/// its encodings there).
#[derive(Default)]
struct Hostile {
    reply: Mutex<Value>,
    calls: Mutex<usize>,
}

#[async_trait]
impl ToolUpstream for Hostile {
    async fn call_tool(&self, call: UpstreamCall<'_>) -> Result<Value, UpstreamError> {
        *self.calls.lock().unwrap() += 1;
        assert!(!call.credentials.is_empty(), "the credential is injected");
        Ok(self.reply.lock().unwrap().clone())
    }
}

struct GwFx {
    cp: ControlPlane,
    db: awooop::tenancy::Db,
    project: ProjectId,
    secret: String,
    upstream: Arc<Hostile>,
    gw: Arc<Gateway>,
}

impl GwFx {
    /// Project `alpha` in auto_remediate with one provider `leaky` (tools `read`, `scale`),
    /// granted in `dev` to each of `agents`.
    async fn new(t: &TestDb, agents: &[&str]) -> Self {
        let cp = t.control(Coord::none());
        let project = project(&cp, "alpha", 1).await;
        let secret = format!("zq-{}/+=Kp", &Uuid::new_v4().simple().to_string()[..20]);
        let secrets = Arc::new(MemorySecrets::default());
        secrets.put("alpha-secret", "token", &secret, Some("alpha"));
        let grants: Vec<Value> = agents
            .iter()
            .map(|a| json!({"agent": a, "tools": ["leaky__read", "leaky__scale"], "environments": ["dev"]}))
            .collect();
        let body = json!({
            "credential_refs": [{"name": "tok", "source": {"kubernetes_secret": {"name": "alpha-secret", "key": "token"}}}],
            "providers": [{"name": "leaky", "transport": {"type": "streamable_http", "url": "http://127.0.0.1:9/mcp"},
                           "credentials": [{"credential": "tok", "inject": {"type": "header", "name": "Authorization", "prefix": "Bearer "}}]}],
            "tools": [
                {"provider": "leaky", "name": "read", "risk": "read_only", "environments": ["dev"], "input_schema": {"type": "object"}},
                {"provider": "leaky", "name": "scale", "risk": "write", "environments": ["dev"],
                 "enabled_in_modes": ["suggest", "auto_remediate"], "input_schema": {"type": "object", "properties": {"replicas": {"type": "integer"}}}}
            ],
            "grants": grants
        });
        tenancy::scope(project.clone(), async {
            let r = publish(&cp, ContractKind::McpGateway, "default", body).await;
            approve_and_activate(&cp, r, 1).await;
            for a in agents {
                let r = publish(
                    &cp,
                    ContractKind::Agent,
                    a,
                    json!({
                        "display_name": "A", "context_domain": "infra", "tools": ["leaky__read", "leaky__scale"],
                        "safety": {"max_risk": "write", "max_steps": 8, "max_tokens_per_run": 1000, "timeout_seconds": 60},
                        "executor": {"type": "scripted", "steps": [{"type": "output", "key": "o", "template": "hi"}]}
                    }),
                )
                .await;
                approve_and_activate(&cp, r, 1).await;
            }
            cp.set_mode(&admin(), MigrationMode::AutoRemediate, true, Some("adversarial"))
                .await
                .unwrap();
        })
        .await;
        let upstream = Arc::new(Hostile::default());
        let (audit, _task) = CallAudit::spawn(t.db());
        let gw = Arc::new(Gateway::new(
            t.db(),
            Coord::none(),
            GatewayKeys::derive(MASTER),
            CredentialResolver::new(
                Some(secrets.clone()),
                LocalPolicy::default(),
                Duration::ZERO,
            ),
            upstream.clone(),
            audit,
            GatewayConfig {
                cache_ttl: Duration::ZERO,
                run_liveness_ttl: Duration::ZERO,
                ..GatewayConfig::default()
            },
        ));
        Self {
            cp,
            db: t.db(),
            project,
            secret,
            upstream,
            gw,
        }
    }

    fn caller(&self, agent: &str, env: &str) -> Caller {
        Caller {
            project: self.project.clone(),
            agent: agent.into(),
            run_id: None,
            environment: env.into(),
            mode: None,
        }
    }

    fn run_token(&self, run: Option<Uuid>, env: &str, lifetime: i64) -> String {
        let now = chrono::Utc::now().timestamp();
        // Sealed directly with the key (as a forger holding a leaked key, or an old minting
        // tool, would), so the verifier's own checks are what is tested.
        let claims = tokens::RunTokenClaims {
            project: "alpha".into(),
            agent: "triage".into(),
            run_id: run,
            environment: env.into(),
            mode: None,
            iat: now,
            exp: now + lifetime,
        };
        let keys = GatewayKeys::derive(MASTER);
        let body = awooop::gateway::keys::b64(&serde_json::to_vec(&claims).unwrap());
        let signing = format!("{}{body}", tokens::RUN_TOKEN_PREFIX);
        let mac = awooop::gateway::keys::b64(&awooop::gateway::keys::hmac(
            &keys.run_token,
            signing.as_bytes(),
        ));
        format!("{signing}.{mac}")
    }

    fn mcp_router(&self) -> axum::Router {
        awooop::http::mcp::router(awooop::http::mcp::McpState::new(
            self.gw.clone(),
            self.db.clone(),
            1 << 20,
        ))
    }

    /// `initialize` on `/mcp` with these headers; the status.
    async fn initialize(&self, headers: &[(&str, &str)]) -> StatusCode {
        let mut req = Request::builder()
            .method("POST")
            .uri("/mcp")
            .header("content-type", "application/json");
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let body = json!({"jsonrpc": "2.0", "id": 0, "method": "initialize",
            "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}});
        self.mcp_router()
            .oneshot(req.body(Body::from(body.to_string())).unwrap())
            .await
            .unwrap()
            .status()
    }
}

/// `initialize` with a runner key naming an agent and an environment.
async fn init_as(fx: &GwFx, key: &str, agent: &str, env: &str) -> StatusCode {
    let bearer = format!("Bearer {key}");
    fx.initialize(&[
        ("authorization", &bearer),
        ("x-awooop-agent", agent),
        ("x-awooop-environment", env),
    ])
    .await
}

/// Every string of a JSON value (keys included), for searching without JSON escaping.
fn strings(v: &Value, out: &mut String) {
    match v {
        Value::String(s) => {
            out.push_str(s);
            out.push('\n');
        }
        Value::Array(a) => a.iter().for_each(|x| strings(x, out)),
        Value::Object(m) => m.iter().for_each(|(k, x)| {
            out.push_str(k);
            out.push('\n');
            strings(x, out);
        }),
        _ => {}
    }
}

/// A runner API key acted for any agent in any environment its caller named in the `/mcp`
/// headers. Now it is bound to agents and environments when minted; headers only narrow.
#[tokio::test]
async fn runner_keys_only_act_for_their_agents_and_environments() {
    let t = TestDb::new().await;
    let fx = GwFx::new(&t, &["triage", "reporter"]).await;
    let key = runner_key(&fx.cp, &fx.project, &["triage"], &["dev"]).await;
    assert_eq!(init_as(&fx, &key, "triage", "dev").await, StatusCode::OK);
    assert_eq!(
        init_as(&fx, &key, "reporter", "dev").await,
        StatusCode::FORBIDDEN,
        "another agent of the project"
    );
    assert_eq!(
        init_as(&fx, &key, "triage", "prod").await,
        StatusCode::FORBIDDEN,
        "another environment"
    );
    // Minting a runner key without bindings is refused.
    assert_code(
        fx.cp
            .create_api_key(
                &admin(),
                &fx.project,
                "bot2",
                vec![awooop::auth::Role::Runner],
            )
            .await,
        "E-REQ-003",
    );
    // Runs: the key starts runs for its agents only.
    let api = Api::new(&t);
    let res = api
        .json("POST", "/v1/platform/runs", &key, r#"{"agent":"reporter"}"#)
        .await;
    assert_eq!(res.0, StatusCode::FORBIDDEN, "{}", res.1);
    assert_eq!(res.1["code"], "E-AUTH-003");
    let res = api
        .json("POST", "/v1/platform/runs", &key, r#"{"agent":"triage"}"#)
        .await;
    assert_eq!(res.0, StatusCode::ACCEPTED, "{}", res.1);
    t.cleanup().await;
}

/// An approval token for a write call bound project, run, tool and arguments, but not the
/// agent or environment: another agent of the project could spend an approval given to
/// `triage`. Now both are bound.
#[tokio::test]
async fn approval_tokens_bind_agent_and_environment() {
    let t = TestDb::new().await;
    let fx = GwFx::new(&t, &["triage", "reporter"]).await;
    *fx.upstream.reply.lock().unwrap() = json!({"content": [{"type": "text", "text": "scaled"}]});
    let args = json!({"replicas": 3});
    let token = {
        let h = approval::arguments_hash(&args);
        let c = approval::claims(
            approval::Expected {
                project: "alpha",
                agent: "triage",
                environment: "dev",
                run_id: None,
                tool: "leaky__scale",
                args_sha256: &h,
            },
            "alice",
            chrono::Utc::now().timestamp(),
            300,
        );
        approval::mint(&GatewayKeys::derive(MASTER).approval, &c)
    };
    let trace = TraceContext::generate();
    let res = fx
        .gw
        .call_tool(
            &fx.caller("reporter", "dev"),
            "leaky__scale",
            Some(args.clone()),
            Some(&token),
            &trace,
        )
        .await;
    assert_code(res, "E-MCP-GATE-006");
    assert_eq!(*fx.upstream.calls.lock().unwrap(), 0);
    // The agent it was given to can use it (once).
    fx.gw
        .call_tool(
            &fx.caller("triage", "dev"),
            "leaky__scale",
            Some(args),
            Some(&token),
            &trace,
        )
        .await
        .unwrap();
    assert_eq!(*fx.upstream.calls.lock().unwrap(), 1);
    t.cleanup().await;
}

/// Run tokens lived as long as their minter said and outlived their run. Now: at most a day,
/// and a token bound to a run stops working when the run is terminal.
#[tokio::test]
async fn run_tokens_expire_within_a_day_and_die_with_their_run() {
    let t = TestDb::new().await;
    let fx = GwFx::new(&t, &["triage"]).await;
    let auth = |tok: &str| format!("Bearer {tok}");
    let year = fx.run_token(None, "dev", 365 * 24 * 3600);
    assert_eq!(
        fx.initialize(&[("authorization", &auth(&year))]).await,
        StatusCode::UNAUTHORIZED,
        "a year-long token"
    );
    let hour = fx.run_token(None, "dev", 3600);
    assert_eq!(
        fx.initialize(&[("authorization", &auth(&hour))]).await,
        StatusCode::OK
    );
    // A token bound to a live run works; after the run is cancelled it does not.
    let runs = RunService::new(fx.cp.clone());
    let accepted = tenancy::scope(
        fx.project.clone(),
        runs.create(
            &admin(),
            CreateRun {
                agent: "triage".into(),
                input: json!({}),
                mode: None,
                reply_to: None,
            },
            None,
            None,
        ),
    )
    .await
    .unwrap();
    let bound = fx.run_token(Some(accepted.run_id), "dev", 3600);
    assert_eq!(
        fx.initialize(&[("authorization", &auth(&bound))]).await,
        StatusCode::OK
    );
    tenancy::scope(fx.project.clone(), runs.cancel(&admin(), accepted.run_id))
        .await
        .unwrap();
    assert_eq!(
        fx.initialize(&[("authorization", &auth(&bound))]).await,
        StatusCode::UNAUTHORIZED,
        "the run is cancelled"
    );
    let unknown = fx.run_token(Some(Uuid::now_v7()), "dev", 3600);
    assert_eq!(
        fx.initialize(&[("authorization", &auth(&unknown))]).await,
        StatusCode::UNAUTHORIZED,
        "no such run"
    );
    t.cleanup().await;
}

/// A Secret created with `kubectl create secret --from-file` carries the file's trailing
/// newline; the file source removed it, the Kubernetes source did not, so the same bytes gave
/// two different credentials (and a header value with a newline).
#[tokio::test]
async fn kubernetes_secret_values_follow_the_file_rule() {
    let secrets = Arc::new(MemorySecrets::default());
    secrets.put("s", "token", "abc-123\r\n\n", Some("alpha"));
    secrets.put("inner", "token", " a b \n", Some("alpha"));
    let r = CredentialResolver::new(Some(secrets), LocalPolicy::default(), Duration::ZERO);
    let src = |name: &str| awooop::contracts::CredentialSource::KubernetesSecret {
        name: name.into(),
        key: "token".into(),
    };
    let v = r.resolve(&pid("alpha"), &src("s")).await.unwrap();
    assert_eq!(v.expose(), "abc-123");
    let v = r.resolve(&pid("alpha"), &src("inner")).await.unwrap();
    assert_eq!(v.expose(), " a b ", "only trailing line breaks go");
}

/// A hostile tool server returned the credential it was given in encodings exact-value
/// redaction did not know: lower-case percent-encoding, hex, base64 at an offset inside a
/// longer base64 text, JSON `\u` escapes, HTML character references, and split across two
/// content items. None of it may reach the caller.
#[tokio::test]
async fn encoded_and_split_credentials_never_reach_the_caller() {
    let t = TestDb::new().await;
    let fx = GwFx::new(&t, &["triage"]).await;
    let s = fx.secret.clone();
    let pct_lower: String = s.bytes().map(|b| format!("%{b:02x}")).collect();
    let hex = hex::encode(&s);
    let b64_offset =
        base64::engine::general_purpose::STANDARD.encode(format!("Authorization: Bearer {s}\n"));
    let json_escaped: String = s.chars().map(|c| format!("\\u{:04x}", c as u32)).collect();
    let html: String = s.chars().map(|c| format!("&#{};", c as u32)).collect();
    let (half_a, half_b) = s.split_at(s.len() / 2);
    let forms = [
        pct_lower.clone(),
        hex.clone(),
        b64_offset.clone(),
        json_escaped.clone(),
        html.clone(),
    ];
    let mut items: Vec<Value> = forms
        .iter()
        .map(|f| json!({"type": "text", "text": format!("leak: {f}")}))
        .collect();
    items.push(json!({"type": "text", "text": format!("first half {half_a}")}));
    items.push(json!({"type": "text", "text": format!("{half_b} second half")}));
    *fx.upstream.reply.lock().unwrap() = json!({ "content": items });
    let out = fx
        .gw
        .call_tool(
            &fx.caller("triage", "dev"),
            "leaky__read",
            Some(json!({})),
            None,
            &TraceContext::generate(),
        )
        .await
        .unwrap();
    let mut text = String::new();
    strings(&out, &mut text);
    for f in &forms {
        assert!(!text.contains(f.as_str()), "{f} reached the caller: {text}");
    }
    assert!(
        !(text.contains(half_a) && text.contains(half_b)),
        "both halves reached the caller: {text}"
    );
    assert!(text.contains("[REDACTED:credential]"));
    assert!(!text.contains(&s));
    t.cleanup().await;
}
