//! Wiring of the in-cluster controller (`awooop operator` without `--out`): Kubernetes client,
//! leader election, the controller loop, and the metrics/health endpoint, with one shutdown.
//! The process exits with an error when it loses the lease, so a replica that is no longer the
//! leader can never keep projecting (Kubernetes restarts it as a follower).

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::get;

use crate::config::OperatorArgs;
use crate::control::ControlPlane;
use crate::k8s::controller::{self, Context, ControllerMetrics};
use crate::k8s::lease::{Elector, LeaseConfig};
use crate::k8s::workers::WorkerSettings;
use crate::metrics::Metrics;

/// This replica's identity: POD_NAME, else the host name and process id.
pub fn identity(args: &OperatorArgs) -> String {
    args.pod_name.clone().unwrap_or_else(|| {
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "awooop-operator".into());
        format!("{host}-{}", std::process::id())
    })
}

/// The operator's metrics port: `/metrics` is the process's one registry (the controller's
/// `awooop_operator_*` families registered into the platform's [`Metrics`]), encoded without
/// reading PostgreSQL; plus `/healthz` and `/readyz`.
pub fn metrics_router(metrics: Arc<Metrics>, health: crate::http::health::Health) -> Router {
    Router::new()
        .route(
            "/metrics",
            get(move || {
                let m = metrics.clone();
                async move {
                    (
                        [(
                            axum::http::header::CONTENT_TYPE,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        // Not `render`: this port has no admin token in front of it, and the
                        // queue-depth refresh would put every project's id on it.
                        m.encode(),
                    )
                }
            }),
        )
        .merge(health.routes())
}

/// Run the controller in the cluster until SIGTERM (Ok) or the lease is lost (Err).
pub async fn run_in_cluster(control: ControlPlane, args: &OperatorArgs) -> anyhow::Result<()> {
    crate::tls::install_crypto_provider();
    let client = kube::Client::try_default().await.map_err(|e| {
        anyhow::anyhow!(
            "no Kubernetes API configuration (in-cluster service account or kubeconfig): {e}; \
             use `awooop operator --out DIR` without a cluster"
        )
    })?;
    let namespace = args.namespace();
    let identity = identity(args);
    let platform = Metrics::new();
    let metrics = ControllerMetrics::new(&platform);
    let health = crate::http::health::Health::of(&control);
    let listener = tokio::net::TcpListener::bind(args.metrics_listen).await?;
    let router = metrics_router(platform, health);
    tokio::spawn(async move {
        if let Err(e) = axum::serve(crate::http::nodelay(listener), router).await {
            tracing::warn!(error = %e, "metrics endpoint stopped");
        }
    });
    let ctx = Arc::new(Context {
        client: client.clone(),
        control,
        namespace: namespace.clone(),
        workers: args.worker_image.clone().map(|image| WorkerSettings {
            image,
            db_secret: args.worker_db_secret.clone(),
            limits: awooop_k8s::workers::WorkerLimits {
                max_replicas: args.worker_max_replicas,
                slots: args.worker_pod_slots,
                db_max_connections: args.worker_db_max_connections,
                cpu_request: args.worker_cpu_request.clone(),
                cpu_limit: args.worker_cpu_limit.clone(),
                memory_request: args.worker_memory_request.clone(),
                memory_limit: args.worker_memory_limit.clone(),
            },
        }),
        identity: identity.clone(),
        metrics,
    });
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        awooop_core::shutdown::shutdown_signal().await;
        let _ = stop_tx.send(true);
    });
    let resync = Duration::from_secs(args.resync_seconds);
    tracing::info!(%namespace, %identity, leader_election = args.leader_election, "operator starting");
    if !args.leader_election {
        return controller::run(ctx, resync, stop_rx).await;
    }
    let elector = Elector::new(
        client,
        LeaseConfig::new(&args.lease_name, &namespace, &identity),
    );
    let mut waiting_stop = stop_rx.clone();
    tokio::select! {
        _ = elector.acquire() => {},
        _ = waiting_stop.changed() => return Ok(()),
    }
    match elector.lead(controller::run(ctx, resync, stop_rx)).await {
        Ok(res) => {
            if let Err(e) = elector.release().await {
                tracing::warn!(error = %e, "failed to release the lease; it expires on its own");
            }
            res
        }
        Err(lost) => Err(anyhow::anyhow!(
            "{lost}; exiting so that only the leader projects"
        )),
    }
}
