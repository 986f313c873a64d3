//! `awooop bench projection`: the projection controller against the in-process fake API
//! server (`awooop_testkit::fake`, the API server's wire format through a real `kube::Client`)
//! and the real PostgreSQL; with `--apiserver`, against a real kube-apiserver and etcd started
//! from `KUBEBUILDER_ASSETS` (`awooop_testkit::envtest`, the administrator's token).
//!
//! * a full resync of N projects × 10 grants (default 1,000 × 10 = 10,000 McpGrants, plus one
//!   AgentProject and one worker Deployment per project), cold (everything created) and warm
//!   (nothing changed): time and API requests sent;
//! * activation → applied object with LISTEN/NOTIFY: the controller loop (`controller::run`,
//!   as in the cluster, reconciling from its watched caches) runs; each sample activates a new
//!   Project revision and waits until the API server holds the AgentProject with that revision
//!   (the fake: read directly; the real server: seen by a watch). Timed from just before the
//!   activation call (so it includes the activation's own transaction) to the applied object.
//!   Samples go to every project in turn, so with N projects the reconciles read from caches
//!   holding all N projects' objects.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::{drop_scratch, percentile_ms, scratch_database};
use crate::auth::Actor;
use crate::config::{BenchArgs, DbArgs, KeyringArgs};
use crate::contracts::ContractKind;
use crate::control::{ControlPlane, NewProject};
use crate::k8s::controller::{self, Context, ControllerMetrics};
use crate::k8s::workers::WorkerSettings;
use crate::platform::Platform;
use crate::tenancy::{self, ProjectId};
use awooop_testkit::envtest::KubeEnv;
use awooop_testkit::fake::FakeApiServer;

/// The API server the bench talks to.
enum Server {
    Fake(FakeApiServer),
    Real {
        env: Box<KubeEnv>,
        /// AgentProjects as a watch sees them (the "applied" check).
        seen: kube::runtime::reflector::Store<crate::k8s::crd::AgentProject>,
        _watch: tokio::task::JoinHandle<()>,
    },
}

impl Server {
    fn name(&self) -> &'static str {
        match self {
            Server::Fake(_) => "fake",
            Server::Real { .. } => "kube-apiserver",
        }
    }

    fn client(&self) -> kube::Client {
        match self {
            Server::Fake(f) => f.client(NS),
            Server::Real { env, .. } => env.admin.clone(),
        }
    }

    async fn add_secret(&self, obj: Value) -> anyhow::Result<()> {
        match self {
            Server::Fake(f) => f.insert(&format!("/api/v1/namespaces/{NS}/secrets"), obj),
            Server::Real { env, .. } => {
                env.apply(&obj).await;
            }
        }
        Ok(())
    }

    /// Requests sent since the last call (the fake records them; the real server: unknown).
    fn take_requests(&self) -> Option<usize> {
        match self {
            Server::Fake(f) => Some(f.take_log().len()),
            Server::Real { .. } => None,
        }
    }

    async fn grants(&self) -> anyhow::Result<usize> {
        Ok(match self {
            Server::Fake(f) => f
                .names(&format!(
                    "/apis/awooop.dev/v1alpha1/namespaces/{NS}/mcpgrants"
                ))
                .len(),
            Server::Real { env, .. } => {
                kube::Api::<crate::k8s::crd::McpGrant>::namespaced(env.admin.clone(), NS)
                    .list_metadata(&Default::default())
                    .await?
                    .items
                    .len()
            }
        })
    }

    fn applied(&self, project: &str, revision_id: &str) -> bool {
        match self {
            Server::Fake(f) => f
                .get(
                    &format!("/apis/awooop.dev/v1alpha1/namespaces/{NS}/agentprojects"),
                    project,
                )
                .is_some_and(|o| o["spec"]["revisionId"] == revision_id),
            Server::Real { seen, .. } => seen
                .get(&kube::runtime::reflector::ObjectRef::new(project).within(NS))
                .is_some_and(|o| o.spec.revision_id == revision_id),
        }
    }
}

async fn server(real: bool) -> anyhow::Result<Server> {
    if !real {
        return Ok(Server::Fake(FakeApiServer::new()));
    }
    let Some(assets) = awooop_testkit::envtest::assets() else {
        anyhow::bail!(
            "--apiserver needs KUBEBUILDER_ASSETS: a folder with kube-apiserver and etcd (see docs/kubernetes.md)"
        );
    };
    let env = KubeEnv::start(&assets, None).await;
    use futures::StreamExt;
    use kube::runtime::{WatchStreamExt, reflector, watcher};
    let (seen, writer) = reflector::store();
    let api = kube::Api::<crate::k8s::crd::AgentProject>::namespaced(env.admin.clone(), NS);
    let stream = reflector::reflector(writer, watcher(api, watcher::Config::default()))
        .default_backoff()
        .touched_objects();
    let watch = tokio::spawn(async move {
        futures::pin_mut!(stream);
        while stream.next().await.is_some() {}
    });
    seen.wait_until_ready().await?;
    Ok(Server::Real {
        env: Box::new(env),
        seen,
        _watch: watch,
    })
}

const NS: &str = "awooop";
const AGENTS: usize = 10;

fn project_body(max_replicas: u32) -> Value {
    json!({
        "display_name": "Bench",
        "data_boundary": {"default_class": "internal", "allowed_classes": ["internal"]},
        "budget": {"period": "day", "token_limit": 1000}, "acl": {},
        "approval": {"required_approvals": 1, "ttl_seconds": 3600}, "environments": ["prod"],
        "workers": {"min_replicas": 1, "max_replicas": max_replicas, "runs_per_replica": 10}
    })
}

fn gateway(secret: &str) -> Value {
    let agents: Vec<Value> = (0..AGENTS)
        .map(|i| json!({"agent": format!("agent{i}"), "tools": ["k8s__get_pods"], "environments": ["prod"]}))
        .collect();
    json!({
        "credential_refs": [{"name": "tok", "source": {"kubernetes_secret": {"name": secret, "key": "token"}}}],
        "providers": [{"name": "k8s", "transport": {"type": "streamable_http", "url": "http://k8s/mcp"},
            "credentials": [{"credential": "tok", "inject": {"type": "header", "name": "Authorization"}}]}],
        "tools": [{"provider": "k8s", "name": "get_pods", "risk": "read_only", "environments": ["prod"], "input_schema": {"type": "object"}}],
        "grants": agents
    })
}

async fn activate(
    cp: &ControlPlane,
    kind: ContractKind,
    name: &str,
    body: Value,
) -> crate::error::Result<()> {
    let admin = Actor::cli("bench");
    let d = cp.create_draft(&admin, kind, name, body).await?;
    let req = cp.sign_draft(d.draft.draft_id, "bench").await?;
    let rev = cp.publish(&admin, d.draft.draft_id, req).await?;
    cp.approve(&Actor::cli("approver"), rev.revision_id).await?;
    cp.activate(&admin, rev.revision_id).await?;
    Ok(())
}

fn count(n: Option<usize>) -> String {
    n.map_or_else(|| "na".to_string(), |n| n.to_string())
}

pub async fn run(args: &BenchArgs) -> anyhow::Result<()> {
    let projects = args.projects.unwrap_or(if args.quick { 40 } else { 1000 });
    let samples = if args.quick { 40 } else { 200 };
    let base = match &args.db.database_url {
        Some(u) => u.clone(),
        None => "postgres://postgres@127.0.0.1:5432/postgres".into(),
    };
    let scratch = scratch_database(&base, "projection").await?;
    let res = bench(&scratch, projects, samples, args.apiserver).await;
    drop_scratch(&base, &scratch).await;
    let line = res?;
    println!("{line}");
    Ok(())
}

async fn bench(url: &str, n: usize, samples: usize, real: bool) -> anyhow::Result<String> {
    let state = std::env::temp_dir().join(format!("awooop-bench-proj-{}", std::process::id()));
    let dbargs = DbArgs {
        database_url: Some(url.to_string()),
        app_database_url: None,
        db_max_connections: 8,
        state_dir: state.clone(),
    };
    let keyring = KeyringArgs {
        keyring: Some(state.join("keyring")),
    };
    let p = Platform::connect(&dbargs, None, Some(&keyring)).await?;
    let server = server(real).await?;
    let ids: Vec<ProjectId> = (0..n)
        .map(|i| ProjectId::parse(&format!("p{i:04}")))
        .collect::<Result<_, _>>()?;

    // Setup through the real lifecycle (draft, sign, publish, approve, activate).
    let started = Instant::now();
    for id in &ids {
        p.control
            .create_project(
                &Actor::cli("bench"),
                NewProject {
                    project_id: id.to_string(),
                    display_name: id.to_string(),
                    required_approvals: Some(1),
                },
            )
            .await?;
        crate::platform::create_signing_key(&p, &state.join("keyring"), id, "bench").await?;
        let secret = format!("mcp-{id}");
        tenancy::scope(id.clone(), async {
            activate(
                &p.control,
                ContractKind::Project,
                id.as_str(),
                project_body(4),
            )
            .await?;
            activate(
                &p.control,
                ContractKind::McpGateway,
                "default",
                gateway(&secret),
            )
            .await?;
            Ok::<_, crate::error::Error>(())
        })
        .await?;
        server
            .add_secret(json!({"apiVersion": "v1", "kind": "Secret",
                   "metadata": {"name": secret, "namespace": NS, "labels": {"awooop.dev/project": id.as_str()}},
                   "data": {"token": "dG9rZW4="}}))
            .await?;
    }
    eprintln!(
        "setup: {n} projects × {AGENTS} grants activated in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    let ctx = Arc::new(Context {
        client: server.client(),
        control: p.control.clone(),
        namespace: NS.into(),
        workers: Some(WorkerSettings {
            image: "awooop:bench".into(),
            db_secret: "awooop-database".into(),
            limits: Default::default(),
        }),
        identity: "bench".into(),
        metrics: ControllerMetrics::new(&crate::metrics::Metrics::new()),
    });

    // The resync's PostgreSQL read, both ways in the same run (the peer figure): one
    // operator-scope query for every project, and the per-project path a reconcile of one
    // project takes (three tenant transactions each). Same results, checked.
    let depths = controller::queue_depths(&p.control, None).await?;
    let t = Instant::now();
    let all = controller::fetch_all_db(&p.control, &depths).await?;
    let db_one_ms = t.elapsed().as_secs_f64() * 1000.0;
    let t = Instant::now();
    for id in &ids {
        let depth = depths.get(id.as_str()).copied().unwrap_or(0);
        let one = controller::fetch_db(&p.control, id, Some(depth)).await?;
        let got = all.get(id.as_str()).map(|r| r.as_ref().ok());
        anyhow::ensure!(
            got == Some(one.as_ref()),
            "the one-query read of {id} differs from the per-project read: {:?} vs {one:?}",
            all.get(id.as_str())
        );
    }
    let db_per_project_ms = t.elapsed().as_secs_f64() * 1000.0;
    eprintln!(
        "PostgreSQL read of {n} projects: one query {db_one_ms:.0} ms, per project {db_per_project_ms:.0} ms"
    );

    // Full resync, cold then warm.
    server.take_requests();
    let t = Instant::now();
    let cold = controller::resync(&ctx).await?;
    let cold_ms = t.elapsed().as_secs_f64() * 1000.0;
    let cold_requests = server.take_requests();
    anyhow::ensure!(cold.failed.is_empty(), "resync failed: {:?}", cold.failed);
    let grants = server.grants().await?;
    anyhow::ensure!(
        grants == n * AGENTS,
        "expected {} grants, found {grants}",
        n * AGENTS
    );
    let t = Instant::now();
    let warm = controller::resync(&ctx).await?;
    let warm_ms = t.elapsed().as_secs_f64() * 1000.0;
    let warm_requests = server.take_requests();
    anyhow::ensure!(warm.failed.is_empty(), "resync failed: {:?}", warm.failed);
    eprintln!(
        "resync of {n} projects / {grants} grants: cold {cold_ms:.0} ms ({} requests, {} applied, {} status writes), warm {warm_ms:.0} ms ({} requests)",
        count(cold_requests),
        cold.outcome.applied,
        cold.outcome.status_writes,
        count(warm_requests)
    );

    // Activation → applied, through LISTEN/NOTIFY and the controller loop.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let loop_ctx = ctx.clone();
    let task =
        tokio::spawn(
            async move { controller::run(loop_ctx, Duration::from_secs(3600), stop_rx).await },
        );
    // Wait for the loop's start-up resync (every project reconciled once more).
    let ok = || {
        ctx.metrics
            .reconciliations
            .get_or_create(&controller::ResultLabel {
                result: "ok".into(),
            })
            .get()
    };
    let before = ok();
    let deadline = Instant::now() + Duration::from_secs(120);
    while ok() < before + n as u64 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut lat = Vec::with_capacity(samples);
    for i in 0..samples {
        let id = &ids[i % n];
        let body = project_body(5 + i as u32 % 90);
        let (rev_id, t0) = tenancy::scope(id.clone(), async {
            let admin = Actor::cli("bench");
            let d = p
                .control
                .create_draft(&admin, ContractKind::Project, id.as_str(), body)
                .await?;
            let req = p.control.sign_draft(d.draft.draft_id, "bench").await?;
            let rev = p.control.publish(&admin, d.draft.draft_id, req).await?;
            p.control
                .approve(&Actor::cli("approver"), rev.revision_id)
                .await?;
            let t0 = Instant::now();
            p.control.activate(&admin, rev.revision_id).await?;
            Ok::<_, crate::error::Error>((rev.revision_id.to_string(), t0))
        })
        .await?;
        let deadline = t0 + Duration::from_secs(10);
        loop {
            if server.applied(id.as_str(), &rev_id) {
                lat.push(t0.elapsed());
                break;
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "activation of {id} never applied"
            );
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
    }
    let _ = stop_tx.send(true);
    let _ = task.await;
    drop(p);
    let _ = std::fs::remove_dir_all(&state);
    lat.sort();
    let p50 = percentile_ms(&lat, 50.0);
    let p99 = percentile_ms(&lat, 99.0);
    eprintln!(
        "activation → applied AgentProject: {} samples, p50 {p50:.1} ms, p99 {p99:.1} ms",
        lat.len()
    );
    Ok(format!(
        "api_server={} projects={n} grants={grants} db_read_one_query_ms={db_one_ms:.0} db_read_per_project_ms={db_per_project_ms:.0} cold_resync_ms={cold_ms:.0} cold_requests={} warm_resync_ms={warm_ms:.0} warm_requests={} activation_p50_ms={p50:.1} activation_p99_ms={p99:.1} samples={}",
        server.name(),
        count(cold_requests),
        count(warm_requests),
        lat.len()
    ))
}
