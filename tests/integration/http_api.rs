//! The HTTP API driven in-process (`app(state).oneshot(..)`): the whole lifecycle with two
//! approver keys, and bad input answered with stable codes while nothing is written.

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;

use awooop::auth::AdminToken;
use awooop::contracts::signing;
use awooop::coord::Coord;
use awooop::http::{AppState, app};

use crate::support::*;

const ADMIN: &str = "awa.0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

struct Api {
    router: axum::Router,
}

impl Api {
    fn new(t: &TestDb, max_body_bytes: usize) -> Self {
        let state = AppState {
            control: t.control(Coord::none()),
            admin: Some(AdminToken::new(ADMIN)),
            max_body_bytes,
            metrics: awooop::metrics::Metrics::new(),
            approvals: None,
        };
        Self { router: app(state) }
    }

    async fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        project: Option<&str>,
        body: Option<Vec<u8>>,
    ) -> (StatusCode, Value) {
        let mut req = Request::builder().method(method).uri(path);
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        if let Some(p) = project {
            req = req.header("x-awooop-project", p);
        }
        let req = req
            .header("content-type", "application/json")
            .body(body.map(Body::from).unwrap_or_else(Body::empty))
            .unwrap();
        let resp = self.router.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        let v = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or(Value::String(String::from_utf8_lossy(&bytes).into()))
        };
        (status, v)
    }

    async fn json(
        &self,
        method: &str,
        path: &str,
        token: &str,
        body: Value,
    ) -> (StatusCode, Value) {
        self.call(
            method,
            path,
            Some(token),
            None,
            Some(serde_json::to_vec(&body).unwrap()),
        )
        .await
    }
}

#[track_caller]
fn expect(res: &(StatusCode, Value), status: u16, code: &str) {
    assert_eq!(res.0.as_u16(), status, "{:?}", res.1);
    assert_eq!(res.1["code"], code, "{:?}", res.1);
}

async fn api_key(api: &Api, project: &str, principal: &str, roles: &[&str]) -> String {
    let (s, v) = api
        .call(
            "POST",
            &format!("/v1/control/projects/{project}/api-keys"),
            Some(ADMIN),
            None,
            Some(
                serde_json::to_vec(&if roles.contains(&"runner") {
                    json!({"principal": principal, "roles": roles, "agents": ["*"], "environments": ["*"]})
                } else {
                    json!({"principal": principal, "roles": roles})
                })
                .unwrap(),
            ),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    v["token"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn full_lifecycle_over_http_with_two_approver_keys() {
    let t = TestDb::new().await;
    let api = Api::new(&t, 1 << 20);
    let (s, v) = api
        .json(
            "POST",
            "/v1/control/projects",
            ADMIN,
            json!({"project_id": "ewoooc", "display_name": "EwoooC"}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(v["mode"], "shadow");
    let (s, _) = api
        .call(
            "POST",
            "/v1/control/signing-keys",
            Some(ADMIN),
            Some("ewoooc"),
            Some(br#"{"key_id":"test-key"}"#.to_vec()),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let author = api_key(
        &api,
        "ewoooc",
        "ci-bot",
        &["reader", "author", "publisher", "activator"],
    )
    .await;
    let alice = api_key(&api, "ewoooc", "alice", &["approver", "reader"]).await;
    let bob = api_key(&api, "ewoooc", "bob", &["approver"]).await;

    let (s, d) = api
        .json(
            "POST",
            "/v1/control/drafts",
            &author,
            json!({"kind": "runtime", "name": "default", "body": runtime_body(5)}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{d}");
    assert_eq!(d["next_revision"], 1);
    let msg = d["signing_message"].as_str().unwrap();
    assert!(msg.starts_with("awooop-publish-v1\newoooc\nruntime\ndefault\n1\nsha256:"));
    let sig = signing::sign(&test_key(), msg);
    let draft_id = d["draft_id"].as_str().unwrap();
    let (s, r) = api
        .json(
            "POST",
            &format!("/v1/control/drafts/{draft_id}/publish"),
            &author,
            json!({"revision": 1, "key_id": KEY_ID, "signature": sig, "body_hash": d["body_hash"]}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{r}");
    let rev = r["revision_id"].as_str().unwrap();

    // The author cannot approve (no role); alice and bob can, once each.
    expect(
        &api.json(
            "POST",
            &format!("/v1/control/revisions/{rev}/approvals"),
            &author,
            json!(null),
        )
        .await,
        403,
        "E-AUTH-003",
    );
    let (s, a) = api
        .call(
            "POST",
            &format!("/v1/control/revisions/{rev}/approvals"),
            Some(&alice),
            None,
            None,
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{a}");
    expect(
        &api.call(
            "POST",
            &format!("/v1/control/revisions/{rev}/approvals"),
            Some(&alice),
            None,
            None,
        )
        .await,
        409,
        "E-CONTRACT-011",
    );
    expect(
        &api.call(
            "POST",
            &format!("/v1/control/revisions/{rev}/activate"),
            Some(&author),
            None,
            None,
        )
        .await,
        409,
        "E-CONTRACT-012",
    );
    api.call(
        "POST",
        &format!("/v1/control/revisions/{rev}/approvals"),
        Some(&bob),
        None,
        None,
    )
    .await;
    let (s, act) = api
        .call(
            "POST",
            &format!("/v1/control/revisions/{rev}/activate"),
            Some(&author),
            None,
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{act}");
    let (s, active) = api
        .call(
            "GET",
            "/v1/control/active/runtime/default",
            Some(&alice),
            None,
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{active}");
    assert_eq!(active["revision_id"], rev);
    assert_eq!(active["body"], runtime_body(5));
    let (s, h) = api
        .call(
            "GET",
            "/v1/control/contracts/runtime/default/history",
            Some(&alice),
            None,
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(h["activations"][0]["approvers"], json!(["alice", "bob"]));

    // Another project's key sees nothing of this one (404, not 403: existence is not leaked).
    let (s, _) = api
        .json(
            "POST",
            "/v1/control/projects",
            ADMIN,
            json!({"project_id": "other", "display_name": "Other"}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let stranger = api_key(&api, "other", "eve", &["reader", "approver"]).await;
    expect(
        &api.call(
            "GET",
            "/v1/control/active/runtime/default",
            Some(&stranger),
            None,
            None,
        )
        .await,
        404,
        "E-CONTRACT-004",
    );
    expect(
        &api.call(
            "POST",
            &format!("/v1/control/revisions/{rev}/approvals"),
            Some(&stranger),
            None,
            None,
        )
        .await,
        404,
        "E-CONTRACT-004",
    );
    // ...and cannot point itself at it with the project header.
    expect(
        &api.call(
            "GET",
            "/v1/control/active/runtime/default",
            Some(&stranger),
            Some("ewoooc"),
            None,
        )
        .await,
        403,
        "E-AUTH-003",
    );

    // Audit rows exist and hold no API key material.
    let (_, audit) = api
        .call(
            "GET",
            "/v1/control/audit?limit=100",
            Some(&alice),
            None,
            None,
        )
        .await;
    let text = audit.to_string();
    assert!(text.contains("revision.activate"));
    for secret in [&author, &alice, &bob] {
        let s = secret.rsplit('.').next().unwrap();
        assert!(!text.contains(s));
    }
    t.cleanup().await;
}

#[tokio::test]
async fn bad_input_gets_stable_codes_and_writes_nothing() {
    let t = TestDb::new().await;
    let api = Api::new(&t, 4096);
    let (s, _) = api
        .json(
            "POST",
            "/v1/control/projects",
            ADMIN,
            json!({"project_id": "alpha", "display_name": "A"}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let key = api_key(&api, "alpha", "ci", &["reader", "author"]).await;

    expect(
        &api.call("GET", "/v1/control/drafts", None, None, None)
            .await,
        401,
        "E-AUTH-001",
    );
    expect(
        &api.call("GET", "/v1/control/drafts", Some("nonsense"), None, None)
            .await,
        401,
        "E-AUTH-002",
    );
    let forged = format!(
        "{}{}",
        &key[..key.len() - 1],
        if key.ends_with('0') { "1" } else { "0" }
    );
    expect(
        &api.call("GET", "/v1/control/drafts", Some(&forged), None, None)
            .await,
        401,
        "E-AUTH-002",
    );
    expect(
        &api.call("GET", "/v1/control/projects", Some(&key), None, None)
            .await,
        403,
        "E-AUTH-003",
    );
    expect(
        &api.call(
            "POST",
            "/v1/control/drafts",
            Some(&key),
            None,
            Some(b"{not json".to_vec()),
        )
        .await,
        422,
        "E-REQ-001",
    );
    expect(
        &api.json(
            "POST",
            "/v1/control/drafts",
            &key,
            json!({"kind": "runtime", "name": "default", "body": runtime_body(1), "extra": 1}),
        )
        .await,
        422,
        "E-REQ-001",
    );
    expect(
        &api.json(
            "POST",
            "/v1/control/drafts",
            &key,
            json!({"kind": "runtime", "name": 7, "body": {}}),
        )
        .await,
        422,
        "E-REQ-001",
    );
    expect(
        &api.json(
            "POST",
            "/v1/control/drafts",
            &key,
            json!({"kind": "spaceship", "name": "x", "body": {}}),
        )
        .await,
        422,
        "E-CONTRACT-001",
    );
    let big = json!({"kind": "runtime", "name": "default", "body": {"pad": "x".repeat(5000)}});
    expect(
        &api.json("POST", "/v1/control/drafts", &key, big).await,
        413,
        "E-REQ-002",
    );
    let mut wrong_type = runtime_body(1);
    wrong_type["max_attempts"] = json!("three");
    let res = api
        .json(
            "POST",
            "/v1/control/drafts",
            &key,
            json!({"kind": "runtime", "name": "default", "body": wrong_type}),
        )
        .await;
    expect(&res, 422, "E-SCHEMA-001");
    assert_eq!(res.1["details"]["violations"][0]["path"], "/max_attempts");
    expect(
        &api.call(
            "GET",
            "/v1/control/drafts/not-a-uuid",
            Some(&key),
            None,
            None,
        )
        .await,
        422,
        "E-REQ-003",
    );
    expect(
        &api.call(
            "POST",
            "/v1/control/drafts/00000000-0000-7000-8000-000000000000/publish",
            Some(&key),
            None,
            Some(
                serde_json::to_vec(&json!({"revision": 1, "key_id": "k", "signature": "00"}))
                    .unwrap(),
            ),
        )
        .await,
        403,
        "E-AUTH-003",
    );
    expect(
        &api.json(
            "POST",
            "/v1/control/projects",
            ADMIN,
            json!({"project_id": "alpha", "display_name": "dup"}),
        )
        .await,
        409,
        "E-PROJECT-002",
    );
    expect(
        &api.json(
            "POST",
            "/v1/control/projects",
            ADMIN,
            json!({"project_id": "Bad_Id", "display_name": "x"}),
        )
        .await,
        422,
        "E-PROJECT-003",
    );
    expect(
        &api.call("GET", "/v1/control/nope", Some(&key), None, None)
            .await,
        404,
        "E-REQ-006",
    );

    // Nothing was written by any rejected request.
    let (s, drafts) = api
        .call("GET", "/v1/control/drafts", Some(&key), None, None)
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(drafts, json!([]));
    t.cleanup().await;
}

#[tokio::test]
async fn validate_endpoint_reports_every_violation_with_paths() {
    let t = TestDb::new().await;
    let api = Api::new(&t, 1 << 20);
    let mut body = agent_body();
    body["safety"]["max_steps"] = json!(0);
    body["prompt"] = json!({"ref": "p", "sha256": "sha256:ABC"});
    let (s, v) = api
        .call(
            "POST",
            "/v1/control/contracts/validate",
            Some(ADMIN),
            None,
            Some(serde_json::to_vec(&json!({"kind": "agent", "body": body})).unwrap()),
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    let violations = v["violations"].as_array().unwrap();
    let pairs: Vec<(String, String)> = violations
        .iter()
        .map(|x| {
            (
                x["path"].as_str().unwrap().to_string(),
                x["code"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert!(
        pairs.contains(&("/safety/max_steps".into(), "E-SCHEMA-001".into())),
        "{pairs:?}"
    );
    assert!(
        pairs.contains(&("/prompt/sha256".into(), "E-CONTRACT-002".into())),
        "{pairs:?}"
    );
    let (s, v) = api
        .call(
            "POST",
            "/v1/control/contracts/validate",
            Some(ADMIN),
            None,
            Some(serde_json::to_vec(&json!({"kind": "agent", "body": agent_body()})).unwrap()),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        v["body_hash"],
        awooop::contracts::canonical::body_hash(&agent_body())
    );
    t.cleanup().await;
}

#[tokio::test]
async fn runs_api_and_metrics() {
    let t = TestDb::new().await;
    let api = Api::new(&t, 1 << 20);
    let (s, _) = api
        .json(
            "POST",
            "/v1/control/projects",
            ADMIN,
            json!({"project_id": "alpha", "display_name": "A"}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let key = api_key(&api, "alpha", "svc", &["reader", "runner"]).await;
    // No active agent yet.
    expect(
        &api.json(
            "POST",
            "/v1/platform/runs",
            &key,
            json!({"agent": "echo", "input": {}}),
        )
        .await,
        422,
        "E-RUN-007",
    );
    let cp = t.control(Coord::none());
    let p = pid("alpha");
    awooop::tenancy::scope(p.clone(), async {
        cp.register_signing_key(&admin(), KEY_ID).await.unwrap();
        let body = json!({"display_name": "Echo", "context_domain": "demo",
            "safety": {"max_risk": "read_only", "max_steps": 1, "max_tokens_per_run": 1, "timeout_seconds": 60},
            "executor": {"type": "scripted", "steps": [{"type": "output", "key": "o", "template": "x"}]}});
        let r = publish(&cp, awooop::contracts::ContractKind::Agent, "echo", body).await;
        approve_and_activate(&cp, r, 2).await;
    })
    .await;
    let mut req = Request::builder()
        .method("POST")
        .uri("/v1/platform/runs")
        .header("authorization", format!("Bearer {key}"))
        .header("idempotency-key", "order-42")
        .header(
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        )
        .body(Body::from(
            serde_json::to_vec(&json!({"agent": "echo", "input": {"q": 1}})).unwrap(),
        ))
        .unwrap();
    req.headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    let resp = api.router.clone().oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let tp = resp
        .headers()
        .get("traceparent")
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    assert!(tp.starts_with("00-0af7651916cd43dd8448eb211c80319c-"));
    let body: Value =
        serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
    let run_id = body["run_id"].as_str().unwrap().to_string();
    assert_eq!(body["trace_id"], "0af7651916cd43dd8448eb211c80319c");
    let (s, run) = api
        .call(
            "GET",
            &format!("/v1/platform/runs/{run_id}"),
            Some(&key),
            None,
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(run["state"], "queued");
    expect(
        &api.call("GET", "/v1/platform/runs/not-a-run", Some(&key), None, None)
            .await,
        404,
        "E-RUN-001",
    );
    let (s, page) = api
        .call(
            "GET",
            "/v1/platform/runs?limit=1&state=queued",
            Some(&key),
            None,
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(page["runs"].as_array().unwrap().len(), 1);
    expect(
        &api.call(
            "GET",
            "/v1/platform/runs?cursor=zzz",
            Some(&key),
            None,
            None,
        )
        .await,
        422,
        "E-REQ-003",
    );
    let (s, c) = api
        .call(
            "POST",
            &format!("/v1/platform/runs/{run_id}/cancel"),
            Some(&key),
            None,
            None,
        )
        .await;
    assert_eq!(
        (s, c["state"].as_str()),
        (StatusCode::OK, Some("cancelled"))
    );
    expect(
        &api.call(
            "POST",
            &format!("/v1/platform/runs/{run_id}/cancel"),
            Some(&key),
            None,
            None,
        )
        .await,
        409,
        "E-RUN-002",
    );
    // Queue depth is read from PostgreSQL at scrape time.
    for _ in 0..2 {
        let (s, _) = api
            .json("POST", "/v1/platform/runs", &key, json!({"agent": "echo"}))
            .await;
        assert_eq!(s, StatusCode::ACCEPTED);
    }
    let (s, m) = api.call("GET", "/metrics", Some(ADMIN), None, None).await;
    assert_eq!(s, StatusCode::OK);
    let text = m.as_str().unwrap();
    assert!(text.contains("awooop_claim_duration_seconds"), "{text}");
    assert!(
        text.contains("awooop_queue_depth{project=\"alpha\"} 2"),
        "{text}"
    );
    t.cleanup().await;
}

#[tokio::test]
async fn openapi_document_covers_routes_that_exist() {
    let t = TestDb::new().await;
    let api = Api::new(&t, 1 << 20);
    let (s, doc) = api.call("GET", "/openapi.json", None, None, None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(doc["openapi"], "3.1.0");
    assert!(
        doc["components"]["schemas"]["CreateRun"].is_object(),
        "{}",
        doc["components"]["schemas"]
    );
    assert!(doc["paths"]["/v1/platform/runs"]["post"]["responses"]["202"].is_object());
    let ops = awooop::http::openapi::operations();
    assert!(ops.len() >= 20);
    // `/mcp` is the gateway's router and the channel routes are the channel hub's
    // (`awooop_channels::routes`), merged beside `app(state)` by `awooop up`/`serve`; the
    // channel routes are driven through that router in `channels.rs`.
    let merged_beside = |p: &str| {
        p == "/mcp"
            || p.starts_with("/v1/webhooks/")
            || p.starts_with("/v1/platform/conversations/")
    };
    for op in ops.into_iter().filter(|op| !merged_beside(op.path)) {
        let path = op
            .path
            .replace("{id}", "00000000-0000-7000-8000-000000000000")
            .replace("{project}", "awoooi")
            .replace("{kind}", "agent")
            .replace("{name}", "x")
            .replace("{n}", "1");
        let (status, body) = api
            .call(
                &op.method.to_uppercase(),
                &path,
                Some(ADMIN),
                Some("awoooi"),
                Some(b"{}".to_vec()),
            )
            .await;
        assert_ne!(
            body["message"], "no such endpoint",
            "{} {} is documented but not routed",
            op.method, op.path
        );
        assert!(
            status != StatusCode::METHOD_NOT_ALLOWED && body["code"] != "E-REQ-005",
            "{} {} is documented but its path does not take that method: {status} {body}",
            op.method,
            op.path
        );
        // Every documented error code exists in the error table.
        for e in op.errors {
            assert!(awooop::error::markdown_table().contains(e.as_str()));
        }
    }
    t.cleanup().await;
}

/// Read permission is decided once, by the `Tenant<Read>` extractor: every documented GET
/// route under `/v1` refuses a key without the `reader` role (a runner-only key) before any
/// handler code runs, so a new read handler cannot forget the check.
#[tokio::test]
async fn every_read_route_needs_the_reader_role() {
    let t = TestDb::new().await;
    let api = Api::new(&t, 1 << 20);
    let (s, _) = api
        .json(
            "POST",
            "/v1/control/projects",
            ADMIN,
            json!({"project_id": "alpha", "display_name": "A"}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let runner = api_key(&api, "alpha", "bot", &["runner"]).await;
    let reader = api_key(&api, "alpha", "viewer", &["reader"]).await;
    let mut checked = 0;
    for op in awooop::http::openapi::operations() {
        if op.method != "get"
            || !op.path.starts_with("/v1/")
            || op.path.starts_with("/v1/platform/conversations/")
        {
            continue;
        }
        let path = op
            .path
            .replace("{id}", "00000000-0000-7000-8000-000000000000")
            .replace("{kind}", "agent")
            .replace("{name}", "x")
            .replace("{n}", "1");
        let path = if path.contains("/diff") {
            format!("{path}?from=1&to=2")
        } else {
            path
        };
        let res = api.call("GET", &path, Some(&runner), None, None).await;
        expect(&res, 403, "E-AUTH-003");
        // The same route with the reader role gets past the permission check.
        let (status, body) = api.call("GET", &path, Some(&reader), None, None).await;
        assert!(
            !(status == StatusCode::FORBIDDEN && path != "/v1/control/projects"),
            "GET {path} refused a reader: {body}"
        );
        checked += 1;
    }
    assert!(checked >= 10, "only {checked} read routes found");
    t.cleanup().await;
}

/// A known path with a method it does not take: 405 with the platform's JSON error and code
/// (not axum's empty 405), for top-level and nested routes.
#[tokio::test]
async fn a_wrong_method_gets_a_coded_405() {
    let t = TestDb::new().await;
    let api = Api::new(&t, 1 << 20);
    for (method, path) in [
        ("DELETE", "/healthz"),
        ("POST", "/openapi.json"),
        ("PUT", "/v1/control/projects"),
        ("PATCH", "/v1/platform/runs"),
    ] {
        let (s, body) = api.call(method, path, Some(ADMIN), None, None).await;
        assert_eq!(s, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}: {body}");
        assert_eq!(body["code"], "E-REQ-005", "{method} {path}: {body}");
        assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    // An unknown path is still the not-found answer, not a 405.
    let (s, body) = api
        .call("DELETE", "/v1/nowhere", Some(ADMIN), None, None)
        .await;
    assert_ne!(s, StatusCode::METHOD_NOT_ALLOWED, "{body}");
    t.cleanup().await;
}

#[tokio::test]
async fn revoked_keys_stop_working() {
    let t = TestDb::new().await;
    let api = Api::new(&t, 1 << 20);
    let (s, _) = api
        .json(
            "POST",
            "/v1/control/projects",
            ADMIN,
            json!({"project_id": "alpha", "display_name": "A"}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let key = api_key(&api, "alpha", "ci", &["reader", "author", "publisher"]).await;
    let key_id = key.split('.').nth(2).unwrap().to_string();
    let (s, _) = api
        .call("GET", "/v1/control/drafts", Some(&key), None, None)
        .await;
    assert_eq!(s, StatusCode::OK);
    // Only the admin may revoke.
    expect(
        &api.call(
            "POST",
            &format!("/v1/control/api-keys/{key_id}/revoke"),
            Some(&key),
            None,
            None,
        )
        .await,
        403,
        "E-AUTH-003",
    );
    let (s, _) = api
        .call(
            "POST",
            &format!("/v1/control/api-keys/{key_id}/revoke"),
            Some(ADMIN),
            Some("alpha"),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    expect(
        &api.call("GET", "/v1/control/drafts", Some(&key), None, None)
            .await,
        401,
        "E-AUTH-002",
    );
    expect(
        &api.call(
            "POST",
            &format!("/v1/control/api-keys/{key_id}/revoke"),
            Some(ADMIN),
            Some("alpha"),
            None,
        )
        .await,
        404,
        "E-CONTRACT-004",
    );

    // A revoked signing key can no longer publish.
    let (s, _) = api
        .call(
            "POST",
            "/v1/control/signing-keys",
            Some(ADMIN),
            Some("alpha"),
            Some(br#"{"key_id":"test-key"}"#.to_vec()),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let (_, d) = api
        .call(
            "POST",
            "/v1/control/drafts",
            Some(ADMIN),
            Some("alpha"),
            Some(
                serde_json::to_vec(
                    &json!({"kind": "runtime", "name": "default", "body": runtime_body(1)}),
                )
                .unwrap(),
            ),
        )
        .await;
    let sig = signing::sign(&test_key(), d["signing_message"].as_str().unwrap());
    let (s, _) = api
        .call(
            "POST",
            "/v1/control/signing-keys/test-key/revoke",
            Some(ADMIN),
            Some("alpha"),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let body =
        serde_json::to_vec(&json!({"revision": 1, "key_id": KEY_ID, "signature": sig})).unwrap();
    expect(
        &api.call(
            "POST",
            &format!(
                "/v1/control/drafts/{}/publish",
                d["draft_id"].as_str().unwrap()
            ),
            Some(ADMIN),
            Some("alpha"),
            Some(body),
        )
        .await,
        401,
        "E-CONTRACT-010",
    );
    t.cleanup().await;
}
