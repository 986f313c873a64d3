//! The projection controller against a mocked Kubernetes API server, driven by real PostgreSQL
//! state. The transport is a `tower-test` mock pair (as kube-rs recommends); the server side
//! answers with `awooop_testkit::fake::FakeApiServer`, which speaks the API server's wire format
//! and records every request, so each scenario asserts the exact requests the controller sent:
//! methods, paths, field manager, `force`, content types, SSA bodies, status bodies,
//! finalizers and Deployment specs.

use std::time::Duration;

use awooop::contracts::ContractKind;
use awooop::coord::Coord;
use awooop::k8s::controller::{self, Context, ControllerMetrics};
use awooop::k8s::lease::{Elector, LeaseConfig};
use awooop::k8s::workers::WorkerSettings;
use awooop::runtime::{CreateRun, RunService, repo};
use awooop::tenancy::{self, ProjectId};
use awooop_testkit::fake::{FakeApiServer, Recorded};
use serde_json::{Value, json};

use crate::support::*;

const NS: &str = "awooop";
const AP: &str = "/apis/awooop.dev/v1alpha1/namespaces/awooop/agentprojects";
const MG: &str = "/apis/awooop.dev/v1alpha1/namespaces/awooop/mcpgrants";
const DEP: &str = "/apis/apps/v1/namespaces/awooop/deployments";
const SEC: &str = "/api/v1/namespaces/awooop/secrets";
const EV: &str = "/apis/events.k8s.io/v1/namespaces/awooop/events";
const SECRET_VALUE: &str = "s3cr3t-token-value-never-copied";

/// A kube client over a tower-test mock pair whose server side is the fake API server.
fn mocked_client(fake: &FakeApiServer) -> kube::Client {
    let (svc, mut handle) = tower_test::mock::pair::<
        http::Request<kube::client::Body>,
        http::Response<kube::client::Body>,
    >();
    let fake = fake.clone();
    tokio::spawn(async move {
        while let Some((req, send)) = handle.next_request().await {
            send.send_response(fake.handle(req).await);
        }
    });
    kube::Client::new(svc, NS)
}

fn context(t: &TestDb, fake: &FakeApiServer, workers: bool) -> Context {
    Context {
        client: mocked_client(fake),
        control: t.control(Coord::none()),
        namespace: NS.into(),
        workers: workers.then(|| WorkerSettings {
            image: "ghcr.io/awooop/awooop:test".into(),
            db_secret: "awooop-database".into(),
            limits: Default::default(),
        }),
        identity: "operator-0".into(),
        metrics: ControllerMetrics::new(&awooop::metrics::Metrics::new()),
    }
}

fn project_body(max_replicas: u16) -> Value {
    json!({
        "display_name": "Alpha",
        "data_boundary": {"default_class": "internal", "allowed_classes": ["internal"]},
        "budget": {"period": "day", "token_limit": 1000}, "acl": {},
        "approval": {"required_approvals": 1, "ttl_seconds": 3600}, "environments": ["prod"],
        "workers": {"min_replicas": 1, "max_replicas": max_replicas, "runs_per_replica": 2}
    })
}

fn gateway(agents: &[&str]) -> Value {
    json!({
        "credential_refs": [{"name": "tok", "source": {"kubernetes_secret": {"name": "k8s-mcp", "key": "token"}}}],
        "providers": [{"name": "k8s", "transport": {"type": "streamable_http", "url": "http://k8s/mcp"},
            "credentials": [{"credential": "tok", "inject": {"type": "header", "name": "Authorization"}}]}],
        "tools": [{"provider": "k8s", "name": "get_pods", "risk": "read_only", "environments": ["prod"], "input_schema": {"type": "object"}}],
        "grants": agents.iter().map(|a| json!({"agent": a, "tools": ["k8s__get_pods"], "environments": ["prod"]})).collect::<Vec<_>>()
    })
}

async fn activate(
    cp: &awooop::control::ControlPlane,
    p: &ProjectId,
    kind: ContractKind,
    name: &str,
    body: Value,
) -> String {
    tenancy::scope(p.clone(), async {
        let r = publish(cp, kind, name, body).await;
        approve_and_activate(cp, r, 1).await;
        r.to_string()
    })
    .await
}

fn secret(project: &str) -> Value {
    use base64::Engine;
    json!({"apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "k8s-mcp", "namespace": NS, "labels": {"awooop.dev/project": project}},
        "data": {"token": base64::engine::general_purpose::STANDARD.encode(SECRET_VALUE)}})
}

/// Reconcile with a timeout, so a missing answer fails instead of hanging.
async fn reconcile(ctx: &Context, p: &ProjectId) -> controller::Outcome {
    tokio::time::timeout(
        Duration::from_secs(10),
        controller::reconcile_project(ctx, p),
    )
    .await
    .expect("reconcile finished")
    .expect("reconcile succeeded")
}

fn lines(log: &[Recorded]) -> Vec<String> {
    log.iter().map(Recorded::line).collect()
}

fn lists() -> Vec<String> {
    vec![
        format!("GET {AP}"),
        format!("GET {MG}"),
        format!("GET {DEP}"),
        format!("GET {SEC}"),
    ]
}

fn seq(parts: &[&[String]]) -> Vec<String> {
    parts.iter().flat_map(|p| p.iter().cloned()).collect()
}

#[track_caller]
fn assert_ssa(r: &Recorded) {
    assert_eq!(r.method, http::Method::PATCH, "{}", r.line());
    assert_eq!(
        r.query.get("fieldManager").map(String::as_str),
        Some("awooop-operator"),
        "{}",
        r.line()
    );
    assert_eq!(
        r.query.get("force").map(String::as_str),
        Some("true"),
        "{}",
        r.line()
    );
    assert!(
        r.content_type
            .as_deref()
            .is_some_and(|c| c.starts_with("application/apply-patch")),
        "{}: {:?}",
        r.line(),
        r.content_type
    );
}

fn condition<'a>(status: &'a Value, ty: &str) -> &'a Value {
    status["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == ty)
        .unwrap_or_else(|| panic!("no {ty} condition in {status}"))
}

#[tokio::test]
async fn operator_activation_applies_objects_by_ssa_then_a_second_reconcile_sends_nothing() {
    let t = TestDb::new().await;
    let fake = FakeApiServer::new();
    fake.insert(SEC, secret("alpha"));
    let ctx = context(&t, &fake, true);
    let p = project(&ctx.control, "alpha", 1).await;
    let rev = activate(
        &ctx.control,
        &p,
        ContractKind::Project,
        "alpha",
        project_body(4),
    )
    .await;
    let grev = activate(
        &ctx.control,
        &p,
        ContractKind::McpGateway,
        "default",
        gateway(&["triage"]),
    )
    .await;

    let out = reconcile(&ctx, &p).await;
    assert_eq!(
        (out.applied, out.status_writes, out.drift),
        (3, 2, 0),
        "{out:?}"
    );
    let log = fake.take_log();
    assert_eq!(
        lines(&log),
        seq(&[
            &lists(),
            &[
                format!("PATCH {AP}/alpha"),
                format!("PATCH {MG}/alpha.triage"),
                format!("PATCH {DEP}/awooop-worker-alpha"),
                format!("PATCH {MG}/alpha.triage/status"),
                format!("PATCH {AP}/alpha/status"),
            ]
        ])
    );
    // LISTs select by project and managed-by; Secrets by the project label only.
    assert_eq!(
        log[0].query["labelSelector"],
        "awooop.dev/project=alpha,app.kubernetes.io/managed-by=awooop-operator"
    );
    assert_eq!(log[3].query["labelSelector"], "awooop.dev/project=alpha");
    for r in &log[4..] {
        assert_ssa(r);
    }
    let ap = log[4].body.as_ref().unwrap();
    assert_eq!(ap["kind"], "AgentProject");
    assert_eq!(ap["spec"]["revisionId"], rev);
    assert_eq!(ap["spec"]["workers"]["maxReplicas"], 4);
    assert_eq!(ap["metadata"]["finalizers"], json!(["awooop.dev/cleanup"]));
    assert_eq!(ap["metadata"]["labels"]["awooop.dev/project"], "alpha");
    assert_eq!(ap["metadata"]["annotations"]["awooop.dev/revision-id"], rev);
    let mg = log[5].body.as_ref().unwrap();
    assert_eq!(mg["spec"]["revisionId"], grev);
    assert_eq!(
        mg["spec"]["credentialRefs"],
        json!([{"name": "k8s-mcp", "key": "token"}])
    );
    // The worker Deployment: owned by the AgentProject, min replicas with an empty queue,
    // hardened, database URL from the Secret.
    let dep = log[6].body.as_ref().unwrap();
    let ap_uid = fake.get(AP, "alpha").unwrap()["metadata"]["uid"].clone();
    assert_eq!(dep["metadata"]["ownerReferences"][0]["uid"], ap_uid);
    assert_eq!(
        dep["metadata"]["ownerReferences"][0]["kind"],
        "AgentProject"
    );
    assert_eq!(dep["spec"]["replicas"], 1);
    let c = &dep["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(c["args"], json!(["worker", "--project", "alpha"]));
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(c["securityContext"]["capabilities"]["drop"], json!(["ALL"]));
    assert_eq!(
        dep["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"],
        true
    );
    // Status: the whole status object by SSA, with observedGeneration and conditions.
    let st = &log[8].body.as_ref().unwrap()["status"];
    assert_eq!(st["observedGeneration"], 1);
    assert_eq!(st["projectedRevisionId"], rev);
    assert_eq!(condition(st, "Projected")["status"], "True");
    assert_eq!(condition(st, "SecretsResolved")["status"], "True");
    // No pod is ready in the fake: workers are not ready, so neither is the project.
    assert_eq!(
        condition(st, "WorkersReady")["reason"],
        "WorkersUnavailable"
    );
    assert_eq!(condition(st, "Ready")["status"], "False");
    assert_eq!(
        condition(&log[7].body.as_ref().unwrap()["status"], "Ready")["status"],
        "True"
    );
    // Nothing carries the Secret's value.
    let all = serde_json::to_string(&log.iter().map(|r| &r.body).collect::<Vec<_>>()).unwrap();
    assert!(!all.contains(SECRET_VALUE));

    // Unchanged: four LISTs, no write (not even status).
    let out = reconcile(&ctx, &p).await;
    assert_eq!(out, controller::Outcome::default());
    assert_eq!(lines(&fake.take_log()), lists());

    // A new activation updates the projected objects; no drift Event for an activation.
    let rev2 = activate(
        &ctx.control,
        &p,
        ContractKind::Project,
        "alpha",
        project_body(6),
    )
    .await;
    let out = reconcile(&ctx, &p).await;
    assert_eq!((out.applied, out.drift), (2, 0), "{out:?}");
    let log = fake.take_log();
    assert_eq!(
        lines(&log),
        seq(&[
            &lists(),
            &[
                format!("PATCH {AP}/alpha"),
                format!("PATCH {DEP}/awooop-worker-alpha"),
                format!("PATCH {AP}/alpha/status"),
            ]
        ])
    );
    assert_eq!(log[4].body.as_ref().unwrap()["spec"]["revisionId"], rev2);
    let st = &log[6].body.as_ref().unwrap()["status"];
    assert_eq!(st["observedGeneration"], 2);
    assert_eq!(st["projectedRevisionId"], rev2);
    t.cleanup().await;
}

#[tokio::test]
async fn operator_retired_grant_and_project_are_deleted_cleaned_up_and_released() {
    let t = TestDb::new().await;
    let fake = FakeApiServer::new();
    fake.insert(SEC, secret("alpha"));
    let ctx = context(&t, &fake, true);
    let p = project(&ctx.control, "alpha", 1).await;
    activate(
        &ctx.control,
        &p,
        ContractKind::Project,
        "alpha",
        project_body(4),
    )
    .await;
    activate(
        &ctx.control,
        &p,
        ContractKind::McpGateway,
        "default",
        gateway(&["triage", "reporter"]),
    )
    .await;
    reconcile(&ctx, &p).await;
    assert_eq!(fake.names(MG), vec!["alpha.reporter", "alpha.triage"]);
    fake.take_log();

    // The reporter grant is retired by a new gateway revision.
    activate(
        &ctx.control,
        &p,
        ContractKind::McpGateway,
        "default",
        gateway(&["triage"]),
    )
    .await;
    let out = reconcile(&ctx, &p).await;
    assert_eq!((out.deleted, out.released), (1, 1), "{out:?}");
    let log = fake.take_log();
    // The remaining grant moves to the new revision; the retired one is deleted, then released.
    assert_eq!(
        lines(&log)[4..7],
        [
            format!("PATCH {MG}/alpha.triage"),
            format!("DELETE {MG}/alpha.reporter"),
            format!("PATCH {MG}/alpha.reporter"),
        ]
    );
    // The release is a merge patch of the finalizers, fenced by the resourceVersion the
    // deletion returned.
    let rel = &log[6];
    assert!(rel.content_type.as_deref().unwrap().contains("merge-patch"));
    assert_eq!(
        rel.body.as_ref().unwrap()["metadata"]["finalizers"],
        json!([])
    );
    assert!(rel.body.as_ref().unwrap()["metadata"]["resourceVersion"].is_string());
    assert_eq!(fake.names(MG), vec!["alpha.triage"]);

    // The project is retired: everything goes, workers first.
    // (No lifecycle endpoint retires projects yet: the platform scope writes it directly.)
    let mut tx = t.owner.begin().await.unwrap();
    sqlx::query("SELECT set_config('awooop.scope', 'platform', true)")
        .execute(&mut *tx)
        .await
        .unwrap();
    let n = sqlx::query("UPDATE projects SET status = 'retired' WHERE project_id = 'alpha'")
        .execute(&mut *tx)
        .await
        .unwrap()
        .rows_affected();
    tx.commit().await.unwrap();
    assert_eq!(n, 1);
    let out = reconcile(&ctx, &p).await;
    assert_eq!(
        (out.deleted, out.released, out.applied),
        (2, 2, 0),
        "{out:?}"
    );
    assert_eq!(
        lines(&fake.take_log()),
        seq(&[
            &lists(),
            &[
                format!("DELETE {AP}/alpha"),
                format!("DELETE {DEP}/awooop-worker-alpha"),
                format!("PATCH {AP}/alpha"),
                format!("DELETE {MG}/alpha.triage"),
                format!("PATCH {MG}/alpha.triage"),
            ]
        ])
    );
    assert!(fake.names(AP).is_empty() && fake.names(MG).is_empty() && fake.names(DEP).is_empty());
    t.cleanup().await;
}

async fn drift_rows(t: &TestDb) -> Vec<(String, Value)> {
    let mut tx = scoped_tx(&t.app, "alpha").await;
    let rows: Vec<(String, Value)> = sqlx::query_as(
        "SELECT target, details FROM audit_log WHERE action = 'projection.drift_restored' ORDER BY at, audit_id",
    )
    .fetch_all(&mut *tx)
    .await
    .unwrap();
    tx.commit().await.unwrap();
    rows
}

#[tokio::test]
async fn operator_drift_is_restored_with_an_event_and_an_audit_row() {
    let t = TestDb::new().await;
    let fake = FakeApiServer::new();
    fake.insert(SEC, secret("alpha"));
    let ctx = context(&t, &fake, true);
    let p = project(&ctx.control, "alpha", 1).await;
    let rev = activate(
        &ctx.control,
        &p,
        ContractKind::Project,
        "alpha",
        project_body(4),
    )
    .await;
    activate(
        &ctx.control,
        &p,
        ContractKind::McpGateway,
        "default",
        gateway(&["triage"]),
    )
    .await;
    reconcile(&ctx, &p).await;
    fake.take_log();

    // Someone edits the AgentProject (same revision): PostgreSQL wins.
    let mut edited = fake.get(AP, "alpha").unwrap();
    edited["spec"]["mode"] = json!("auto_remediate");
    fake.insert(AP, edited);
    let out = reconcile(&ctx, &p).await;
    assert_eq!(out.drift, 1, "{out:?}");
    let log = fake.take_log();
    assert_eq!(
        lines(&log)[4..6],
        [format!("PATCH {AP}/alpha"), format!("POST {EV}")]
    );
    assert_ssa(&log[4]);
    assert_eq!(log[4].body.as_ref().unwrap()["spec"]["mode"], "shadow");
    let ev = log[5].body.as_ref().unwrap();
    assert_eq!(ev["reason"], "DriftRestored");
    assert_eq!(ev["type"], "Warning");
    assert_eq!(ev["reportingController"], "awooop.dev/operator");
    assert_eq!(ev["regarding"]["kind"], "AgentProject");
    assert_eq!(ev["regarding"]["name"], "alpha");
    assert_eq!(fake.get(AP, "alpha").unwrap()["spec"]["mode"], "shadow");

    // Someone deletes the McpGrant: released, re-created, reported.
    let mut deleting = fake.get(MG, "alpha.triage").unwrap();
    deleting["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
    fake.insert(MG, deleting);
    let out = reconcile(&ctx, &p).await;
    assert_eq!(out.drift, 1, "{out:?}");
    let log = fake.take_log();
    assert_eq!(
        lines(&log)[4..7],
        [
            format!("PATCH {MG}/alpha.triage"),
            format!("PATCH {MG}/alpha.triage"),
            format!("POST {EV}")
        ]
    );
    assert!(
        log[4]
            .content_type
            .as_deref()
            .unwrap()
            .contains("merge-patch")
    );
    assert_ssa(&log[5]);
    let recreated = fake.get(MG, "alpha.triage").unwrap();
    assert!(recreated["metadata"]["deletionTimestamp"].is_null());

    // Someone scales the worker Deployment by hand.
    let mut scaled = fake.get(DEP, "awooop-worker-alpha").unwrap();
    scaled["spec"]["replicas"] = json!(9);
    fake.insert(DEP, scaled);
    let out = reconcile(&ctx, &p).await;
    assert_eq!(out.drift, 1, "{out:?}");
    assert_eq!(
        fake.get(DEP, "awooop-worker-alpha").unwrap()["spec"]["replicas"],
        1
    );

    let rows = drift_rows(&t).await;
    let targets: Vec<&str> = rows.iter().map(|r| r.0.as_str()).collect();
    assert_eq!(
        targets,
        [
            "AgentProject/alpha",
            "McpGrant/alpha.triage",
            "Deployment/awooop-worker-alpha"
        ]
    );
    assert_eq!(rows[0].1["drift"], "modified");
    assert_eq!(rows[0].1["revision_id"], rev);
    assert_eq!(rows[1].1["drift"], "deleted");
    let m = ctx.metrics.render();
    assert!(
        m.contains("awooop_operator_drift_restored_total{kind=\"AgentProject\"} 1"),
        "{m}"
    );
    t.cleanup().await;
}

/// The operator's metrics port serves the platform's one registry: the controller's
/// `awooop_operator_*` series beside the platform's own families, in one exposition, and
/// without the per-project queue depth (that port has no admin token in front of it).
#[tokio::test]
async fn operator_metrics_port_serves_the_one_platform_registry() {
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    let t = TestDb::new().await;
    let fake = FakeApiServer::new();
    fake.insert(SEC, secret("alpha"));
    let platform = awooop::metrics::Metrics::new();
    let ctx = Context {
        metrics: ControllerMetrics::new(&platform),
        ..context(&t, &fake, false)
    };
    let p = project(&ctx.control, "alpha", 1).await;
    activate(
        &ctx.control,
        &p,
        ContractKind::Project,
        "alpha",
        project_body(4),
    )
    .await;
    activate(&ctx.control, &p, ContractKind::Agent, "echo", echo_agent()).await;
    queue(&ctx.control, &p, 2).await;
    reconcile(&ctx, &p).await;

    let router = awooop::in_cluster::metrics_router(
        platform.clone(),
        awooop::http::health::Health::of(&ctx.control),
    );
    let req = axum::http::Request::get("/metrics")
        .body(axum::body::Body::empty())
        .unwrap();
    let resp = router.oneshot(req).await.unwrap();
    assert_eq!(resp.status(), axum::http::StatusCode::OK);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let text = String::from_utf8(body.to_vec()).unwrap();
    for line in [
        "awooop_operator_reconciliations_total{result=\"ok\"} 1",
        "awooop_operator_reconcile_duration_seconds_count 1",
        // The platform's own metrics: the same registry, not a second one. (Families without
        // a series, such as the queue depth here, are not encoded at all.)
        "# TYPE awooop_claim_duration_seconds histogram",
        "# TYPE awooop_pickup_latency_seconds histogram",
    ] {
        assert!(text.contains(line), "missing {line:?} in:\n{text}");
    }
    assert_eq!(text.matches("# EOF").count(), 1, "{text}");
    // Two runs are queued for alpha, but this port never reads the queue: no project ids.
    assert!(!text.contains("alpha"), "{text}");
    assert!(!text.contains("awooop_queue_depth{"), "{text}");
    // The same text the platform registry encodes (one exposition).
    assert_eq!(text, platform.encode());
    t.cleanup().await;
}

#[tokio::test]
async fn operator_missing_secret_sets_secrets_resolved_false_naming_the_ref_only() {
    let t = TestDb::new().await;
    let fake = FakeApiServer::new();
    // The Secret exists but is labelled for another project: not usable by alpha.
    fake.insert(SEC, secret("beta"));
    let ctx = context(&t, &fake, false);
    let p = project(&ctx.control, "alpha", 1).await;
    activate(
        &ctx.control,
        &p,
        ContractKind::Project,
        "alpha",
        project_body(4),
    )
    .await;
    activate(
        &ctx.control,
        &p,
        ContractKind::McpGateway,
        "default",
        gateway(&["triage"]),
    )
    .await;
    reconcile(&ctx, &p).await;
    let log = fake.take_log();
    // No worker image: no Deployment.
    assert!(!lines(&log).iter().any(|l| l.contains("/deployments/")));
    let grant = &log
        .iter()
        .find(|r| r.path == format!("{MG}/alpha.triage/status"))
        .unwrap()
        .body
        .as_ref()
        .unwrap()["status"];
    assert_eq!(
        grant["missingSecretRefs"],
        json!([{"name": "k8s-mcp", "key": "token"}])
    );
    let sr = condition(grant, "SecretsResolved");
    assert_eq!(
        (sr["status"].as_str(), sr["reason"].as_str()),
        (Some("False"), Some("SecretsMissing"))
    );
    assert!(sr["message"].as_str().unwrap().contains("k8s-mcp/token"));
    let ap = &log
        .iter()
        .find(|r| r.path == format!("{AP}/alpha/status"))
        .unwrap()
        .body
        .as_ref()
        .unwrap()["status"];
    assert_eq!(condition(ap, "SecretsResolved")["status"], "False");
    assert_eq!(condition(ap, "WorkersReady")["reason"], "WorkersNotManaged");
    assert_eq!(condition(ap, "Ready")["status"], "False");
    let all = serde_json::to_string(&log.iter().map(|r| &r.body).collect::<Vec<_>>()).unwrap();
    assert!(
        !all.contains(SECRET_VALUE),
        "a Secret value leaked into a request"
    );

    // The right Secret appears: both statuses turn True.
    fake.insert(SEC, secret("alpha"));
    reconcile(&ctx, &p).await;
    let log = fake.take_log();
    assert_eq!(
        lines(&log)[4..],
        [
            format!("PATCH {MG}/alpha.triage/status"),
            format!("PATCH {AP}/alpha/status")
        ]
    );
    let ap = &log[5].body.as_ref().unwrap()["status"];
    assert_eq!(condition(ap, "SecretsResolved")["reason"], "SecretsFound");
    assert_eq!(condition(ap, "Ready")["status"], "True");
    t.cleanup().await;
}

fn echo_agent() -> Value {
    json!({
        "display_name": "Echo", "context_domain": "demo",
        "safety": {"max_risk": "read_only", "max_steps": 4, "max_tokens_per_run": 1, "timeout_seconds": 60},
        "executor": {"type": "scripted", "steps": [{"type": "output", "key": "echo", "template": "hi"}]}
    })
}

async fn queue(cp: &awooop::control::ControlPlane, p: &ProjectId, n: usize) {
    let runs = RunService::new(cp.clone());
    tenancy::scope(p.clone(), async {
        for i in 0..n {
            runs.create(
                &awooop::auth::Actor::cli("runner"),
                CreateRun {
                    agent: "echo".into(),
                    input: json!({"i": i}),
                    mode: None,
                    reply_to: None,
                },
                None,
                None,
            )
            .await
            .unwrap();
        }
    })
    .await;
}

#[tokio::test]
async fn operator_queue_depth_scales_worker_replicas_and_project_workers_claim_only_their_runs() {
    let t = TestDb::new().await;
    let fake = FakeApiServer::new();
    fake.insert(SEC, secret("alpha"));
    let ctx = context(&t, &fake, true);
    let p = project(&ctx.control, "alpha", 1).await;
    let q = project(&ctx.control, "beta", 1).await;
    activate(
        &ctx.control,
        &p,
        ContractKind::Project,
        "alpha",
        project_body(4),
    )
    .await;
    for x in [&p, &q] {
        activate(&ctx.control, x, ContractKind::Agent, "echo", echo_agent()).await;
        activate(
            &ctx.control,
            x,
            ContractKind::McpGateway,
            "default",
            gateway(&["triage"]),
        )
        .await;
    }
    reconcile(&ctx, &p).await;
    assert_eq!(
        fake.get(DEP, "awooop-worker-alpha").unwrap()["spec"]["replicas"],
        1
    );
    // 5 queued runs at 2 per replica: 3 replicas. Another project's queue does not count.
    queue(&ctx.control, &p, 5).await;
    queue(&ctx.control, &q, 7).await;
    fake.take_log();
    reconcile(&ctx, &p).await;
    let log = fake.take_log();
    let dep = log
        .iter()
        .find(|r| r.path == format!("{DEP}/awooop-worker-alpha"))
        .expect("Deployment applied");
    assert_eq!(dep.body.as_ref().unwrap()["spec"]["replicas"], 3);
    let st = &log
        .iter()
        .find(|r| r.path == format!("{AP}/alpha/status"))
        .unwrap()
        .body
        .as_ref()
        .unwrap()["status"];
    assert_eq!(st["workerReplicas"], 3);
    assert_eq!(
        condition(st, "WorkersReady")["message"],
        "0/3 worker replicas ready"
    );
    // 20 queued: capped at max_replicas 4.
    queue(&ctx.control, &p, 15).await;
    reconcile(&ctx, &p).await;
    assert_eq!(
        fake.get(DEP, "awooop-worker-alpha").unwrap()["spec"]["replicas"],
        4
    );
    // Pods become ready (the Deployment controller's status): WorkersReady turns True.
    let mut ready = fake.get(DEP, "awooop-worker-alpha").unwrap();
    ready["status"] = json!({"replicas": 4, "readyReplicas": 4});
    fake.insert(DEP, ready);
    fake.take_log();
    reconcile(&ctx, &p).await;
    let log = fake.take_log();
    assert_eq!(lines(&log)[4..], [format!("PATCH {AP}/alpha/status")]);
    let st = &log[4].body.as_ref().unwrap()["status"];
    assert_eq!(condition(st, "WorkersReady")["status"], "True");

    // `awooop worker --project alpha` claims only alpha's runs.
    let claimed = repo::worker_claim_for(&t.app, "w-alpha", 100, 30.0, Some("alpha"))
        .await
        .unwrap();
    assert_eq!(claimed.len(), 20);
    assert!(claimed.iter().all(|c| c.project_id == "alpha"));
    let rest = repo::worker_claim(&t.app, "w-any", 100, 30.0)
        .await
        .unwrap();
    assert!(rest.iter().all(|c| c.project_id == "beta") && rest.len() == 7);
    t.cleanup().await;
}

#[tokio::test]
async fn operator_resync_projects_every_project_with_four_lists_when_nothing_changed() {
    let t = TestDb::new().await;
    let fake = FakeApiServer::new();
    let ctx = context(&t, &fake, false);
    for id in ["alpha", "beta"] {
        let p = project(&ctx.control, id, 1).await;
        activate(&ctx.control, &p, ContractKind::Project, id, project_body(2)).await;
    }
    // An object of a project PostgreSQL does not know is removed.
    let mut stray = serde_json::to_value(awooop::k8s::crd::AgentProject::new(
        "ghost",
        awooop::k8s::crd::AgentProjectSpec {
            project_id: "ghost".into(),
            revision_id: "r0".into(),
            revision: 1,
            body_hash: "sha256:00".into(),
            mode: "shadow".into(),
            workers: awooop::k8s::crd::WorkerBounds {
                min_replicas: 0,
                max_replicas: 1,
                runs_per_replica: 1,
            },
        },
    ))
    .unwrap();
    stray["metadata"]["labels"] =
        json!({"awooop.dev/project": "ghost", "app.kubernetes.io/managed-by": "awooop-operator"});
    fake.insert(AP, stray);
    let r = tokio::time::timeout(Duration::from_secs(10), controller::resync(&ctx))
        .await
        .unwrap()
        .unwrap();
    assert!(r.failed.is_empty(), "{:?}", r.failed);
    // alpha, beta, the seeded awoooi (no active Project revision: nothing to project) and ghost.
    assert_eq!(r.projects, 4);
    assert_eq!(fake.names(AP), vec!["alpha", "beta"]);
    fake.take_log();
    let r = controller::resync(&ctx).await.unwrap();
    assert_eq!(r.outcome, controller::Outcome::default());
    assert_eq!(fake.take_log().len(), 4, "one LIST per kind, nothing else");
    t.cleanup().await;
}

/// Every SQL statement sqlx sends while the guard lives (its `sqlx::query` trace events, the
/// driver's own record of what went to PostgreSQL), on this thread: `#[tokio::test]` runs the
/// test's futures, and with them every query, on one thread.
#[derive(Clone, Default)]
struct Statements(std::sync::Arc<std::sync::Mutex<Vec<String>>>);

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Statements {
    fn on_event(&self, ev: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        #[derive(Default)]
        struct Sql {
            summary: String,
            statement: String,
        }
        impl tracing::field::Visit for Sql {
            fn record_str(&mut self, f: &tracing::field::Field, v: &str) {
                match f.name() {
                    "summary" => self.summary = v.trim().to_string(),
                    // The whole text, when `summary` (four words) cut it short.
                    "db.statement" => self.statement = v.trim().to_string(),
                    _ => {}
                }
            }
            fn record_debug(&mut self, _: &tracing::field::Field, _: &dyn std::fmt::Debug) {}
        }
        if ev.metadata().target() == "sqlx::query" {
            let mut sql = Sql::default();
            ev.record(&mut sql);
            let text = if sql.statement.is_empty() {
                sql.summary
            } else {
                sql.statement
            };
            self.0.lock().unwrap().push(text);
        }
    }
}

impl Statements {
    fn capture(&self) -> tracing::subscriber::DefaultGuard {
        use tracing_subscriber::layer::SubscriberExt;
        tracing::subscriber::set_default(tracing_subscriber::registry().with(self.clone()))
    }

    fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

#[tokio::test]
async fn operator_resync_reads_every_project_with_one_query_equal_to_the_per_project_reads() {
    let t = TestDb::new().await;
    let fake = FakeApiServer::new();
    let ctx = context(&t, &fake, false);
    // Six projects in every state the read distinguishes: Project and gateway revisions, a
    // Project revision only, a later revision (the active one is the second), another mode,
    // no revision at all, and a retired project.
    let ids = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta"];
    for (i, id) in ids.iter().enumerate() {
        let p = project(&ctx.control, id, 1).await;
        if *id != "epsilon" {
            activate(
                &ctx.control,
                &p,
                ContractKind::Project,
                id,
                project_body(2 + i as u16),
            )
            .await;
        }
        if matches!(*id, "alpha" | "gamma" | "zeta") {
            activate(
                &ctx.control,
                &p,
                ContractKind::McpGateway,
                "default",
                gateway(&["triage"]),
            )
            .await;
        }
    }
    let gamma = pid("gamma");
    activate(
        &ctx.control,
        &gamma,
        ContractKind::Project,
        "gamma",
        project_body(9),
    )
    .await;
    tenancy::scope(pid("delta"), async {
        ctx.control
            .set_mode(
                &admin(),
                awooop::control::MigrationMode::Canary,
                false,
                None,
            )
            .await
            .unwrap()
    })
    .await;
    let beta = pid("beta");
    activate(
        &ctx.control,
        &beta,
        ContractKind::Agent,
        "echo",
        echo_agent(),
    )
    .await;
    queue(&ctx.control, &beta, 3).await;
    let mut tx = t.owner.begin().await.unwrap();
    sqlx::query("SELECT set_config('awooop.scope', 'platform', true)")
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::query("UPDATE projects SET status = 'retired' WHERE project_id = 'zeta'")
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();

    // The same answer as the per-project path, project by project.
    let depths = controller::queue_depths(&ctx.control, None).await.unwrap();
    assert_eq!(depths.get("beta"), Some(&3));
    let all = controller::fetch_all_db(&ctx.control, &depths)
        .await
        .unwrap();
    for id in ids.iter().chain(&["awoooi"]) {
        let one = controller::fetch_db(&ctx.control, &pid(id), None)
            .await
            .unwrap();
        let got = all
            .get(*id)
            .map(|r| r.as_ref().expect("valid revisions").clone());
        assert_eq!(
            got, one,
            "{id}: the one-query read differs from the per-project read"
        );
    }
    assert!(!all.contains_key("zeta"), "a retired project is not read");
    let delta = all["delta"].as_ref().unwrap();
    assert_eq!(delta.mode, "canary");
    let g = all["gamma"].as_ref().unwrap();
    assert_eq!(g.project_rev.as_ref().map(|r| r.revision), Some(2));
    assert!(g.gateway_rev.is_some() && all["beta"].as_ref().unwrap().gateway_rev.is_none());
    assert_eq!(all["beta"].as_ref().unwrap().queue_depth, 3);

    // A full resync reads PostgreSQL with one query for all projects' active revisions and a
    // fixed number of statements, not three transactions per project.
    let statements = Statements::default();
    let guard = statements.capture();
    let r = tokio::time::timeout(Duration::from_secs(10), controller::resync(&ctx))
        .await
        .unwrap()
        .unwrap();
    drop(guard);
    assert!(r.failed.is_empty(), "{:?}", r.failed);
    // alpha … epsilon and the seeded awoooi; zeta (retired) has no objects to remove.
    assert_eq!(r.projects, 6);
    let sql = statements.take();
    let reads: Vec<&String> = sql
        .iter()
        .filter(|s| s.contains("active_revisions"))
        .collect();
    assert_eq!(
        reads.len(),
        1,
        "one query for every project's active revisions: {sql:#?}"
    );
    assert!(
        sql.len() <= 8,
        "a resync of 6 projects sent {} statements (expected a fixed handful): {sql:#?}",
        sql.len()
    );
    t.cleanup().await;
}

#[tokio::test]
async fn operator_scope_reads_only_active_projection_inputs_and_widens_no_tenant() {
    let t = TestDb::new().await;
    let fake = FakeApiServer::new();
    let ctx = context(&t, &fake, false);
    for id in ["alpha", "beta"] {
        let p = project(&ctx.control, id, 1).await;
        activate(&ctx.control, &p, ContractKind::Project, id, project_body(2)).await;
        activate(&ctx.control, &p, ContractKind::Project, id, project_body(3)).await;
        activate(
            &ctx.control,
            &p,
            ContractKind::McpGateway,
            "default",
            gateway(&["echo"]),
        )
        .await;
        activate(&ctx.control, &p, ContractKind::Agent, "echo", echo_agent()).await;
        queue(&ctx.control, &p, 1).await;
        tenancy::scope(p.clone(), async {
            ctx.control
                .create_draft(&admin(), ContractKind::Agent, "drafted", echo_agent())
                .await
                .unwrap()
        })
        .await;
    }
    let count = |sql: &'static str, scope: Option<&'static str>, project: Option<&'static str>| {
        let pool = t.app.clone();
        async move {
            let mut tx = pool.begin().await.unwrap();
            if let Some(s) = scope {
                sqlx::query("SELECT set_config('awooop.scope', $1, true)")
                    .bind(s)
                    .execute(&mut *tx)
                    .await
                    .unwrap();
            }
            if let Some(p) = project {
                sqlx::query("SELECT set_config('awooop.project_id', $1, true)")
                    .bind(p)
                    .execute(&mut *tx)
                    .await
                    .unwrap();
            }
            let n: i64 = sqlx::query_scalar(sql).fetch_one(&mut *tx).await.unwrap();
            tx.rollback().await.unwrap();
            n
        }
    };
    let op = Some("operator");
    // Operator scope: both projects' projection inputs (and the seeded awoooi), only those.
    assert_eq!(count("SELECT count(*) FROM projects", op, None).await, 3);
    assert_eq!(
        count("SELECT count(*) FROM project_migration_state", op, None).await,
        3
    );
    assert_eq!(
        count("SELECT count(*) FROM active_revisions", op, None).await,
        4,
        "the project and gateway pointers of alpha and beta, no agent pointer"
    );
    assert_eq!(
        count("SELECT count(*) FROM contract_revisions", op, None).await,
        4,
        "the four active revisions, not the earlier project revisions nor the agents"
    );
    for table in [
        "contract_drafts",
        "activation_history",
        "activation_approvals",
        "publish_signatures",
        "signing_keys",
        "audit_log",
        "runs",
        "platform_audit",
    ] {
        let sql: &'static str = format!("SELECT count(*) FROM {table}").leak();
        // The fixture has rows there (platform_audit: seen in platform scope), so a zero in
        // operator scope is the policy's doing.
        let populated = if table == "platform_audit" {
            count(sql, Some("platform"), None).await
        } else {
            count(sql, None, Some("alpha")).await
        };
        assert!(populated > 0, "{table}: the fixture must put rows here");
        assert_eq!(
            count(sql, op, None).await,
            0,
            "{table} answers in operator scope"
        );
    }
    // Read-only: no write is accepted in operator scope.
    let mut tx = t.app.begin().await.unwrap();
    sqlx::query("SELECT set_config('awooop.scope', 'operator', true)")
        .execute(&mut *tx)
        .await
        .unwrap();
    let n = sqlx::query("UPDATE active_revisions SET activated_by = 'x'")
        .execute(&mut *tx)
        .await
        .unwrap()
        .rows_affected();
    assert_eq!(n, 0, "operator scope updated an active pointer");
    let n = sqlx::query("UPDATE projects SET display_name = 'x'")
        .execute(&mut *tx)
        .await
        .unwrap()
        .rows_affected();
    assert_eq!(n, 0, "operator scope updated a project");
    tx.rollback().await.unwrap();
    // A tenant transaction is not widened: alpha sees its own pointers (all three), never beta's.
    let alpha = Some("alpha");
    assert_eq!(count("SELECT count(*) FROM projects", None, alpha).await, 1);
    assert_eq!(
        count("SELECT count(*) FROM active_revisions", None, alpha).await,
        3
    );
    assert_eq!(
        count(
            "SELECT count(*) FROM active_revisions WHERE project_id = 'beta'",
            None,
            alpha
        )
        .await,
        0
    );
    assert_eq!(
        count(
            "SELECT count(*) FROM contract_revisions WHERE project_id <> 'alpha'",
            None,
            alpha
        )
        .await,
        0
    );
    // The store's tenant transaction (the only one tenant code gets) cannot reach beta either.
    let seen: Vec<String> = tenancy::scope(pid("alpha"), async {
        let mut tx = ctx.control.db().tenant().await.unwrap();
        let rows: Vec<String> =
            sqlx::query_scalar("SELECT DISTINCT project_id FROM active_revisions")
                .fetch_all(&mut *tx)
                .await
                .unwrap();
        tx.rollback().await.unwrap();
        rows
    })
    .await;
    assert_eq!(seen, vec!["alpha".to_string()]);
    // No scope at all: nothing.
    assert_eq!(
        count("SELECT count(*) FROM active_revisions", None, None).await,
        0
    );
    t.cleanup().await;
}

#[tokio::test]
async fn operator_lease_admits_one_leader_and_a_lost_lease_stops_the_work() {
    let fake = FakeApiServer::new();
    let cfg = |id: &str| {
        let mut c = LeaseConfig::new("awooop-operator", NS, id);
        c.renew_every = Duration::from_millis(20);
        c
    };
    let a = Elector::new(mocked_client(&fake), cfg("operator-a"));
    let b = Elector::new(mocked_client(&fake), cfg("operator-b"));
    assert_eq!(a.try_acquire().await.unwrap(), Ok(()));
    assert_eq!(
        b.try_acquire().await.unwrap(),
        Err("operator-a".to_string())
    );
    let lease = fake
        .get(
            "/apis/coordination.k8s.io/v1/namespaces/awooop/leases",
            "awooop-operator",
        )
        .unwrap();
    assert_eq!(lease["spec"]["holderIdentity"], "operator-a");
    // Renewal keeps it.
    assert_eq!(a.try_acquire().await.unwrap(), Ok(()));
    // A graceful shutdown gives it up: the follower takes over at once, and the old leader's
    // release no longer touches a lease it does not hold.
    a.release().await.unwrap();
    assert_eq!(b.try_acquire().await.unwrap(), Ok(()));
    a.release().await.unwrap();
    assert_eq!(
        a.try_acquire().await.unwrap(),
        Err("operator-b".to_string()),
        "a release by a non-holder changes nothing"
    );
    b.release().await.unwrap();
    assert_eq!(a.try_acquire().await.unwrap(), Ok(()));
    let lease = fake
        .get(
            "/apis/coordination.k8s.io/v1/namespaces/awooop/leases",
            "awooop-operator",
        )
        .unwrap();
    assert_eq!(lease["spec"]["holderIdentity"], "operator-a");

    // Another replica takes over (its renewTime is fresh): the leader's work is stopped.
    let mut taken = lease.clone();
    taken["spec"]["holderIdentity"] = json!("operator-b");
    taken["spec"]["renewTime"] = json!(k8s_openapi::jiff::Timestamp::now().to_string());
    fake.insert(
        "/apis/coordination.k8s.io/v1/namespaces/awooop/leases",
        taken,
    );
    let work = std::future::pending::<()>();
    let res = tokio::time::timeout(Duration::from_secs(5), a.lead(work))
        .await
        .expect("lead returned");
    let lost = res.expect_err("the lease was lost");
    assert_eq!(lost.holder, "operator-b");
}

#[tokio::test]
async fn operator_kube_secrets_cache_returns_labelled_values_only() {
    let fake = FakeApiServer::new();
    fake.insert(SEC, secret("alpha"));
    let mut unlabelled = secret("alpha");
    unlabelled["metadata"] = json!({"name": "plain", "namespace": NS});
    fake.insert(SEC, unlabelled);
    let cache = awooop::k8s::secrets::KubeSecrets::start(fake.client(NS), NS);
    tokio::time::timeout(Duration::from_secs(5), cache.ready())
        .await
        .unwrap()
        .unwrap();
    let e = cache.get("k8s-mcp", "token").await.unwrap().expect("found");
    assert_eq!(e.value, SECRET_VALUE);
    assert_eq!(e.project_label.as_deref(), Some("alpha"));
    assert!(!e.resource_version.is_empty());
    assert!(
        !format!("{e:?}").contains(SECRET_VALUE),
        "Debug hides the value"
    );
    assert!(cache.get("k8s-mcp", "nope").await.unwrap().is_none());
    assert!(
        cache.get("plain", "token").await.unwrap().is_none(),
        "unlabelled Secrets are not cached"
    );
    assert!(cache.get("gone", "token").await.unwrap().is_none());
    // The cache was filled by a LIST selecting the project label.
    let log = fake.take_log();
    assert_eq!(log[0].path, SEC);
    assert_eq!(log[0].query["labelSelector"], "awooop.dev/project");
}

const BIN: &str = env!("CARGO_BIN_EXE_awooop");

async fn get_status(port: u16, path: &str, token: &str) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nAuthorization: Bearer {token}\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.unwrap();
    String::from_utf8_lossy(&buf)
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap()
}

/// `awooop serve` (the API alone) and `awooop operator` without `--out` through the binary.
#[tokio::test]
async fn operator_serve_and_in_cluster_commands_start_only_when_configured() {
    use std::process::{Command, Stdio};
    let t = TestDb::new().await;
    let state = std::env::temp_dir().join(format!("awooop-serve-{}", t.name));
    let token = "t".repeat(40);
    // Without DATABASE_URL serve refuses (it never starts an embedded database).
    let out = Command::new(BIN)
        .args(["serve"])
        .env_remove("DATABASE_URL")
        .env("AWOOOP_ADMIN_TOKEN", &token)
        .env("AWOOOP_STATE_DIR", &state)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("DATABASE_URL"));
    // Without an admin token too.
    let out = Command::new(BIN)
        .args(["serve"])
        .env("DATABASE_URL", &t.url)
        .env_remove("AWOOOP_ADMIN_TOKEN")
        .env("AWOOOP_STATE_DIR", &state)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("AWOOOP_ADMIN_TOKEN"));
    // Without a gateway key too (tokens and sessions must verify on every replica).
    let gateway_key = "g".repeat(40);
    let out = Command::new(BIN)
        .args(["serve"])
        .env("DATABASE_URL", &t.url)
        .env("AWOOOP_ADMIN_TOKEN", &token)
        .env_remove("AWOOOP_GATEWAY_KEY")
        .env("AWOOOP_STATE_DIR", &state)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("AWOOOP_GATEWAY_KEY"));

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = Command::new(BIN)
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .env("DATABASE_URL", &t.url)
        .env("AWOOOP_ADMIN_TOKEN", &token)
        .env("AWOOOP_GATEWAY_KEY", &gateway_key)
        .env("AWOOOP_STATE_DIR", &state)
        .env("HOME", &state)
        .env("KUBECONFIG", state.join("no-such-kubeconfig"))
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env_remove("REDIS_URL")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(std::time::Instant::now() < deadline, "serve did not listen");
        assert!(child.try_wait().unwrap().is_none(), "serve exited early");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(get_status(port, "/readyz", &token).await, 200);
    assert_eq!(get_status(port, "/v1/control/projects", &token).await, 200);
    assert_eq!(get_status(port, "/v1/control/projects", "wrong").await, 401);
    // The MCP gateway is served too (POST only: GET has no server-initiated stream here).
    assert_eq!(get_status(port, "/mcp", &token).await, 405);
    assert!(
        !state.join("admin-token").exists(),
        "serve never generates a token"
    );
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(std::time::Instant::now() < deadline, "serve did not stop");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "{status:?}");

    // The in-cluster controller fails closed without Kubernetes API configuration.
    let out = Command::new(BIN)
        .args(["operator"])
        .env("DATABASE_URL", &t.url)
        .env("AWOOOP_STATE_DIR", &state)
        .env("HOME", &state)
        .env("KUBECONFIG", state.join("no-such-kubeconfig"))
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env("AWOOOP_METRICS_LISTEN", "127.0.0.1:0")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no Kubernetes API configuration"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = std::fs::remove_dir_all(&state);
    t.cleanup().await;
}

/// The flags the Helm chart sets: namespace resolution and leader election.
#[test]
fn operator_flags_resolve_the_namespace_and_leader_election() {
    use awooop::config::{Cli, Command};
    use clap::Parser;
    let parse = |args: &[&str]| match Cli::try_parse_from(args).unwrap().command {
        Command::Operator(a) => a,
        other => panic!("{other:?}"),
    };
    if std::env::var_os("AWOOOP_NAMESPACE").is_none() && std::env::var_os("POD_NAMESPACE").is_none()
    {
        let a = parse(&["awooop", "operator"]);
        assert_eq!(a.namespace(), "awooop");
        assert!(a.leader_election);
        assert_eq!(a.lease_name, "awooop-operator");
        assert_eq!(a.resync_seconds, 60);
        assert!(a.out.is_none());
    }
    let a = parse(&["awooop", "operator", "--pod-namespace", "from-pod"]);
    assert_eq!(a.namespace(), "from-pod");
    let a = parse(&[
        "awooop",
        "operator",
        "--pod-namespace",
        "from-pod",
        "--namespace",
        "explicit",
    ]);
    assert_eq!(a.namespace(), "explicit");
    let a = parse(&[
        "awooop",
        "operator",
        "--leader-election",
        "false",
        "--resync-seconds",
        "0",
    ]);
    assert!(!a.leader_election);
    assert!(
        a.validate()
            .unwrap_err()
            .to_string()
            .contains("AWOOOP_RESYNC_SECONDS")
    );
}
