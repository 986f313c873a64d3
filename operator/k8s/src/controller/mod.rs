//! The in-cluster projection controller (`awooop operator` without `--out`).
//!
//! PostgreSQL is the source of truth. A project's reconcile ([`reconcile_with`]) reads like its
//! summary, one module per step:
//!
//! 1. [`fetch`]: the project's state and active revisions from PostgreSQL (and its queue
//!    depth), its projected objects and labelled Secrets from the cluster: from the watched
//!    caches ([`cache`]) in the controller loop, by LIST otherwise;
//! 2. [`build`] (pure): the desired AgentProject and McpGrants, replicas from the queue depth;
//! 3. plan (pure, [`apply::Steps`] over [`crate::plan`]): what to apply, delete or release;
//! 4. [`apply`]: server-side apply with the one field manager `awooop-operator`; drift is
//!    restored with an audit row first and an Event after ([`events`]);
//! 5. [`status`] (pure conditions, then one write per object): Ready, Projected,
//!    SecretsResolved, WorkersReady; no write when only timestamps would change.
//!
//! [`lifecycle::run`] drives it: triggers, resync, error policy ([`error`]), metrics
//! ([`metrics`]). Secret values are read only to learn which keys exist and are dropped at
//! once: they never reach a CR, a status, an Event, a log line or an error.

pub mod apply;
pub mod build;
pub mod cache;
pub mod error;
pub mod events;
pub mod fetch;
pub mod lifecycle;
pub mod metrics;
pub mod status;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Instant;

use kube::Client;

use crate::workers::WorkerSettings;
use awooop_control::ControlPlane;
use awooop_store::tenancy::ProjectId;

pub use build::{Desired, desired, missing_refs, resolved_refs};
pub use cache::{Caches, Trigger};
pub use error::{Policy, ReconcileError, backoff};
pub use events::publish as publish_event;
pub use fetch::{
    Cluster, DbProject, SecretInfo, fetch_all_db, fetch_cluster, fetch_db, queue_depths,
};
pub use lifecycle::run;
pub use metrics::{ControllerMetrics, ErrorLabel, KindLabel, ResultLabel};

/// Label naming the project of a projected object, and the label a Secret must carry (with the
/// project's id) to be usable by that project.
pub const PROJECT_LABEL: &str = "awooop.dev/project";
/// Selector of everything this controller manages.
pub const MANAGED_SELECTOR: &str = "app.kubernetes.io/managed-by=awooop-operator";
/// `reportingController` of our Events.
pub const REPORTER: &str = "awooop.dev/operator";

/// Everything a reconcile needs, passed explicitly.
pub struct Context {
    pub client: Client,
    pub control: ControlPlane,
    /// Namespace of the projected objects, the worker Deployments and the Secrets.
    pub namespace: String,
    /// Worker pods; `None` when no worker image is configured.
    pub workers: Option<WorkerSettings>,
    /// This replica's identity (Events' `reportingInstance`, lease holder).
    pub identity: String,
    pub metrics: Arc<ControllerMetrics>,
}

/// What one reconcile sent.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub applied: usize,
    pub deleted: usize,
    pub released: usize,
    pub status_writes: usize,
    pub drift: usize,
}

impl Outcome {
    fn add(&mut self, o: &Outcome) {
        self.applied += o.applied;
        self.deleted += o.deleted;
        self.released += o.released;
        self.status_writes += o.status_writes;
        self.drift += o.drift;
    }
}

/// Reconcile one project from its PostgreSQL state and its slice of the cluster:
/// build → plan → apply → status.
pub async fn reconcile_with(
    ctx: &Context,
    id: &ProjectId,
    db: Option<&DbProject>,
    cluster: &Cluster,
) -> Result<Outcome, ReconcileError> {
    let want = build::desired(&ctx.namespace, db);
    let steps = apply::Steps::of(&want, cluster);
    let mut out = Outcome::default();
    let applied = apply::apply(ctx, id, &want, &steps, cluster, &mut out).await?;
    status::write(ctx, id, &want, cluster, &applied, &mut out).await?;
    Ok(out)
}

/// Reconcile one project: fetch its state from PostgreSQL and LIST its slice of the cluster.
pub async fn reconcile_project(ctx: &Context, id: &ProjectId) -> Result<Outcome, ReconcileError> {
    let started = Instant::now();
    let res = async {
        let db = fetch::fetch_db(&ctx.control, id, None).await?;
        let cluster = fetch::fetch_cluster(ctx, Some(id.as_str())).await?;
        reconcile_with(ctx, id, db.as_ref(), &cluster).await
    }
    .await;
    observe(ctx, &res, started);
    res
}

/// Reconcile one project with its slice of the cluster read from the watched caches.
pub async fn reconcile_cached(
    ctx: &Context,
    caches: &Caches,
    id: &ProjectId,
) -> Result<Outcome, ReconcileError> {
    let started = Instant::now();
    let res = async {
        let db = fetch::fetch_db(&ctx.control, id, None).await?;
        let cluster = caches.slice(id.as_str());
        reconcile_with(ctx, id, db.as_ref(), &cluster).await
    }
    .await;
    observe(ctx, &res, started);
    res
}

fn observe(ctx: &Context, res: &Result<Outcome, ReconcileError>, started: Instant) {
    ctx.metrics
        .duration
        .observe(started.elapsed().as_secs_f64());
    match res {
        Ok(_) => ctx.metrics.result("ok"),
        Err(e) => {
            ctx.metrics.result("error");
            ctx.metrics
                .errors
                .get_or_create(&ErrorLabel {
                    error: e.label().into(),
                })
                .inc();
        }
    }
}

/// Result of a full resync.
#[derive(Debug, Default)]
pub struct Resync {
    pub projects: usize,
    pub outcome: Outcome,
    pub failed: Vec<(ProjectId, ReconcileError)>,
}

/// Reconcile every project: active ones in PostgreSQL and any that still have objects in the
/// cluster. PostgreSQL is read once (one operator-scope query for every project's state and a
/// queue-depth count, [`fetch::fetch_all_db`]) and the cluster once (four LIST requests, or
/// the watched caches), not per project.
pub async fn resync(ctx: &Context) -> Result<Resync, ReconcileError> {
    resync_from(ctx, None).await
}

/// [`resync`], reading the cluster from the watched caches when given.
pub async fn resync_from(ctx: &Context, caches: Option<&Caches>) -> Result<Resync, ReconcileError> {
    let depths = fetch::queue_depths(&ctx.control, None).await?;
    let mut dbs = fetch::fetch_all_db(&ctx.control, &depths).await?;
    let cluster = match caches {
        Some(c) => c.all(),
        None => fetch::fetch_cluster(ctx, None).await?,
    };
    let mut ids: BTreeSet<String> = dbs.keys().cloned().collect();
    ids.extend(cluster.project_ids());
    let parts = cluster.partition();
    let empty = Cluster {
        from_cache: cluster.from_cache,
        ..Default::default()
    };
    let mut r = Resync::default();
    for raw in ids {
        let Ok(id) = ProjectId::parse(&raw) else {
            continue;
        };
        let started = Instant::now();
        // Not in the map: retired or unknown, so its objects are removed (as `fetch_db`'s None).
        let db = dbs.remove(id.as_str()).transpose();
        let res = async {
            let db = db?;
            let slice = parts.get(id.as_str()).unwrap_or(&empty);
            reconcile_with(ctx, &id, db.as_ref(), slice).await
        }
        .await;
        observe(ctx, &res, started);
        r.projects += 1;
        match res {
            Ok(o) => r.outcome.add(&o),
            Err(e) => r.failed.push((id, e)),
        }
    }
    Ok(r)
}
