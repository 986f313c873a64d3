//! The in-cluster projection controller (`awooop operator` without `--out`).
//!
//! PostgreSQL is the source of truth. For each project the reconcile reads like its summary:
//!
//! 1. **fetch**: the project's state and active revisions from PostgreSQL (and its queue depth),
//!    and its projected objects and labelled Secrets from the cluster (LIST by label);
//! 2. **build** (pure): the desired AgentProject and McpGrants ([`super::project`]), replicas
//!    from the queue depth ([`super::workers`]);
//! 3. **plan** (pure): what to apply, delete or release ([`super::plan`]);
//! 4. **apply**: server-side apply with the one field manager `awooop-operator`; drift (someone
//!    edited or deleted a projected object) is restored, with an audit row written *before* the
//!    restore (so a failed audit write retries the whole step) and a Kubernetes Event after it;
//! 5. **status** (pure, then one write): conditions Ready, Projected, SecretsResolved,
//!    WorkersReady; no write when only timestamps would change.
//!
//! Triggers: LISTEN `awooop_activation` (the control plane notifies on every activation), a
//! watch of the projected objects (drift shows up at once), and a periodic full resync, so a
//! missed notification only delays. Reconciles run one at a time, so two never race on the same
//! objects. Error policy: an invalid revision waits for a change; everything else is retried
//! with exponential backoff; each error variant has a stable [`ReconcileError::label`] used in
//! metrics, Events and logs. Secret values are read only to learn which keys exist and are
//! dropped at once: they never reach a CR, a status, an Event, a log line or an error.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ObjectReference, Secret};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::{Client, Resource};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use serde_json::json;

use super::Why;
use super::crd::{AgentProject, McpGrant, SecretKeyRef};
use super::plan::{self, Kind, Projected, Step};
use super::project::{self, MANAGER, Revision};
use super::status::{self, WorkersObserved};
use super::workers::{self, WorkerSettings};
use awooop_contracts::{Contract, ContractKind, McpGatewayContract, ProjectContract};
use awooop_control::ControlPlane;
use awooop_core::error::ErrorCode;
use awooop_store::audit::{self, Entry};
use awooop_store::tenancy::{self, ProjectId};

/// Label naming the project of a projected object, and the label a Secret must carry (with the
/// project's id) to be usable by that project.
pub const PROJECT_LABEL: &str = "awooop.dev/project";
/// Selector of everything this controller manages.
pub const MANAGED_SELECTOR: &str = "app.kubernetes.io/managed-by=awooop-operator";
/// `reportingController` of our Events.
pub const REPORTER: &str = "awooop.dev/operator";

/// Failures of one reconcile. Messages name what failed, never a Secret value.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("failed to read project {project} from PostgreSQL ({code})")]
    Database {
        project: String,
        code: &'static str,
        #[source]
        source: awooop_core::error::Error,
    },
    #[error(
        "the active {kind} revision of project {project} is invalid ({code}); waiting for a new activation"
    )]
    InvalidRevision {
        project: String,
        kind: &'static str,
        code: &'static str,
    },
    #[error("failed to {verb} {kind} {name}: {source}")]
    Kube {
        verb: &'static str,
        kind: &'static str,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("failed to write the drift audit record of project {project} ({code})")]
    Audit { project: String, code: &'static str },
}

/// What the error policy does with a failed reconcile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// Retry with exponential backoff.
    Retry,
    /// Nothing will change by retrying: wait for the next activation (or resync).
    WaitForChange,
}

impl ReconcileError {
    /// Stable label of the variant (metrics `error` label, Event reason suffix, logs).
    pub fn label(&self) -> &'static str {
        match self {
            ReconcileError::Database { .. } => "database",
            ReconcileError::InvalidRevision { .. } => "invalid_revision",
            ReconcileError::Kube { source, .. } => match source {
                kube::Error::Api(s) if s.is_conflict() => "kube_conflict",
                kube::Error::Api(s) if s.is_forbidden() => "kube_forbidden",
                kube::Error::Api(_) => "kube_api",
                _ => "kube_transport",
            },
            ReconcileError::Audit { .. } => "audit",
        }
    }

    pub fn policy(&self) -> Policy {
        match self {
            ReconcileError::InvalidRevision { .. } => Policy::WaitForChange,
            _ => Policy::Retry,
        }
    }
}

/// Backoff of the n-th consecutive failure: 1 s, 2 s, 4 s … capped at 5 minutes.
pub fn backoff(failures: u32) -> Duration {
    Duration::from_secs(1u64 << failures.min(8)).min(Duration::from_secs(300))
}

fn kube_err(
    verb: &'static str,
    kind: &'static str,
    name: &str,
) -> impl FnOnce(kube::Error) -> ReconcileError {
    let name = name.to_string();
    move |source| ReconcileError::Kube {
        verb,
        kind,
        name,
        source,
    }
}

// ----------------------------------------------------------------------------------------------
// Metrics

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabel {
    pub error: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: String,
}

/// Metrics of the controller: reconciliations by result, errors by stable label, drift
/// restored by kind, reconcile duration.
pub struct ControllerMetrics {
    registry: Registry,
    pub reconciliations: Family<ResultLabel, Counter>,
    pub errors: Family<ErrorLabel, Counter>,
    pub drift: Family<KindLabel, Counter>,
    pub duration: Histogram,
}

impl ControllerMetrics {
    pub fn new() -> Arc<Self> {
        let mut registry = Registry::with_prefix("awooop_operator");
        let reconciliations = Family::<ResultLabel, Counter>::default();
        let errors = Family::<ErrorLabel, Counter>::default();
        let drift = Family::<KindLabel, Counter>::default();
        let duration = Histogram::new(exponential_buckets(0.001, 2.0, 16));
        registry.register(
            "reconciliations",
            "Project reconciliations by result",
            reconciliations.clone(),
        );
        registry.register(
            "reconcile_errors",
            "Failed reconciliations by stable error label",
            errors.clone(),
        );
        registry.register(
            "drift_restored",
            "Projected objects restored after someone changed or deleted them",
            drift.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Duration of one project reconcile",
            duration.clone(),
        );
        Arc::new(Self {
            registry,
            reconciliations,
            errors,
            drift,
            duration,
        })
    }

    fn result(&self, r: &str) {
        self.reconciliations
            .get_or_create(&ResultLabel { result: r.into() })
            .inc();
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("encoding to a String cannot fail");
        out
    }
}

// ----------------------------------------------------------------------------------------------
// Context

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

// ----------------------------------------------------------------------------------------------
// Fetch: PostgreSQL

/// A project as PostgreSQL has it; `None` from [`fetch_db`] means retired or unknown.
#[derive(Debug, Clone)]
pub struct DbProject {
    pub id: ProjectId,
    pub mode: String,
    pub project_rev: Option<Revision<ProjectContract>>,
    pub gateway_rev: Option<Revision<McpGatewayContract>>,
    pub queue_depth: i64,
}

fn db_err(project: &ProjectId) -> impl FnOnce(awooop_core::error::Error) -> ReconcileError {
    let project = project.to_string();
    move |source| ReconcileError::Database {
        project,
        code: source.code.as_str(),
        source,
    }
}

async fn active(
    control: &ControlPlane,
    id: &ProjectId,
    kind: ContractKind,
    name: &str,
) -> Result<Option<(awooop_control::repo::ActiveRow, Contract)>, ReconcileError> {
    match control.active_typed(kind, name).await {
        Ok(x) => Ok(Some(x)),
        Err(e) if e.code == ErrorCode::ContractNotFound => Ok(None),
        Err(e)
            if matches!(
                e.code,
                ErrorCode::SchemaViolation | ErrorCode::ContractSemantic
            ) =>
        {
            Err(ReconcileError::InvalidRevision {
                project: id.to_string(),
                kind: kind.as_str(),
                code: e.code.as_str(),
            })
        }
        Err(e) => Err(db_err(id)(e)),
    }
}

/// Read one project's state (active revisions, mode, queue depth) from PostgreSQL.
pub async fn fetch_db(
    control: &ControlPlane,
    id: &ProjectId,
    queue_depth: Option<i64>,
) -> Result<Option<DbProject>, ReconcileError> {
    tenancy::scope(id.clone(), async {
        let view = match control.project().await {
            Ok(v) => v,
            Err(e) if e.code == ErrorCode::ProjectNotFound => return Ok(None),
            Err(e) => return Err(db_err(id)(e)),
        };
        if view.project.status != "active" {
            return Ok(None);
        }
        let project_rev = match active(control, id, ContractKind::Project, id.as_str()).await? {
            Some((ptr, Contract::Project(body))) => Some(Revision {
                revision_id: ptr.revision_id.to_string(),
                revision: ptr.revision,
                body_hash: ptr.body_hash,
                body,
            }),
            _ => None,
        };
        let gateway_rev = match active(control, id, ContractKind::McpGateway, "default").await? {
            Some((ptr, Contract::McpGateway(body))) => Some(Revision {
                revision_id: ptr.revision_id.to_string(),
                revision: ptr.revision,
                body_hash: ptr.body_hash,
                body,
            }),
            _ => None,
        };
        let queue_depth = match queue_depth {
            Some(n) => n,
            None => queue_depths(control, Some(id))
                .await?
                .remove(id.as_str())
                .unwrap_or(0),
        };
        Ok(Some(DbProject {
            id: id.clone(),
            mode: view.mode,
            project_rev,
            gateway_rev,
            queue_depth,
        }))
    })
    .await
}

/// Runnable runs per project (one project, or all), read in the worker scope that sees every
/// project's queue (as the metrics endpoint does).
pub async fn queue_depths(
    control: &ControlPlane,
    only: Option<&ProjectId>,
) -> Result<HashMap<String, i64>, ReconcileError> {
    let pool = control.db().pool_for_health();
    let run = async {
        let mut tx = awooop_runtime::repo::worker_tx(pool).await?;
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT project_id, count(*) FROM runs WHERE state IN ('queued', 'retrying') \
             AND ($1::text IS NULL OR project_id = $1) GROUP BY project_id",
        )
        .bind(only.map(|p| p.as_str()))
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok::<_, awooop_core::error::Error>(rows.into_iter().collect())
    };
    let platform = ProjectId::parse("platform").expect("valid id");
    run.await.map_err(db_err(only.unwrap_or(&platform)))
}

// ----------------------------------------------------------------------------------------------
// Fetch: the cluster

/// Which keys a labelled Secret has (never its values).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretInfo {
    pub project: Option<String>,
    pub keys: BTreeSet<String>,
}

impl SecretInfo {
    /// Keep the key names, drop the values.
    pub fn of(s: &Secret) -> Self {
        let mut keys: BTreeSet<String> = s.data.iter().flatten().map(|(k, _)| k.clone()).collect();
        keys.extend(s.string_data.iter().flatten().map(|(k, _)| k.clone()));
        Self {
            project: s
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(PROJECT_LABEL).cloned()),
            keys,
        }
    }
}

/// The projected objects and labelled Secrets in the cluster.
#[derive(Debug, Default, Clone)]
pub struct Cluster {
    pub projects: Vec<AgentProject>,
    pub grants: Vec<McpGrant>,
    pub deployments: Vec<Deployment>,
    pub secrets: BTreeMap<String, SecretInfo>,
}

fn project_of(meta: &ObjectMeta) -> Option<&str> {
    meta.labels
        .as_ref()
        .and_then(|l| l.get(PROJECT_LABEL))
        .map(String::as_str)
}

impl Cluster {
    /// Split a whole-namespace snapshot by project, in one pass (a per-project filter over
    /// the whole snapshot would make a resync quadratic in the number of projects).
    pub fn partition(&self) -> BTreeMap<String, Cluster> {
        let mut out: BTreeMap<String, Cluster> = BTreeMap::new();
        for o in &self.projects {
            if let Some(p) = project_of(&o.metadata) {
                out.entry(p.to_string())
                    .or_default()
                    .projects
                    .push(o.clone());
            }
        }
        for o in &self.grants {
            if let Some(p) = project_of(&o.metadata) {
                out.entry(p.to_string()).or_default().grants.push(o.clone());
            }
        }
        for o in &self.deployments {
            if let Some(p) = project_of(&o.metadata) {
                out.entry(p.to_string())
                    .or_default()
                    .deployments
                    .push(o.clone());
            }
        }
        for (name, s) in &self.secrets {
            if let Some(p) = &s.project {
                out.entry(p.clone())
                    .or_default()
                    .secrets
                    .insert(name.clone(), s.clone());
            }
        }
        out
    }

    /// Every project that has objects here.
    pub fn project_ids(&self) -> BTreeSet<String> {
        self.projects
            .iter()
            .map(|o| &o.metadata)
            .chain(self.grants.iter().map(|o| &o.metadata))
            .chain(self.deployments.iter().map(|o| &o.metadata))
            .filter_map(project_of)
            .map(str::to_string)
            .collect()
    }
}

/// LIST the projected objects (of one project, or all) and the labelled Secrets: four requests.
pub async fn fetch_cluster(
    ctx: &Context,
    project: Option<&str>,
) -> Result<Cluster, ReconcileError> {
    let (managed, secrets_sel) = match project {
        Some(p) => (
            format!("{PROJECT_LABEL}={p},{MANAGED_SELECTOR}"),
            format!("{PROJECT_LABEL}={p}"),
        ),
        None => (MANAGED_SELECTOR.to_string(), PROJECT_LABEL.to_string()),
    };
    let lp = ListParams::default().labels(&managed);
    let ns = &ctx.namespace;
    let projects = Api::<AgentProject>::namespaced(ctx.client.clone(), ns)
        .list(&lp)
        .await
        .map_err(kube_err("list", "AgentProject", "*"))?
        .items;
    let grants = Api::<McpGrant>::namespaced(ctx.client.clone(), ns)
        .list(&lp)
        .await
        .map_err(kube_err("list", "McpGrant", "*"))?
        .items;
    let deployments = Api::<Deployment>::namespaced(ctx.client.clone(), ns)
        .list(&lp)
        .await
        .map_err(kube_err("list", "Deployment", "*"))?
        .items;
    let secrets = Api::<Secret>::namespaced(ctx.client.clone(), ns)
        .list(&ListParams::default().labels(&secrets_sel))
        .await
        .map_err(kube_err("list", "Secret", "*"))?
        .items
        .iter()
        .map(|s| {
            (
                s.metadata.name.clone().unwrap_or_default(),
                SecretInfo::of(s),
            )
        })
        .collect();
    Ok(Cluster {
        projects,
        grants,
        deployments,
        secrets,
    })
}

// ----------------------------------------------------------------------------------------------
// Build (pure)

/// The desired objects of a project (nothing when it is retired or has no active Project
/// revision).
#[derive(Debug, Clone, Default)]
pub struct Desired {
    pub project: Option<AgentProject>,
    pub grants: Vec<McpGrant>,
    pub replicas: Option<i32>,
}

pub fn desired(namespace: &str, db: Option<&DbProject>) -> Desired {
    let Some(db) = db else {
        return Desired::default();
    };
    let Some(rev) = &db.project_rev else {
        return Desired::default();
    };
    let ap = plan::with_finalizer(project::agent_project(
        namespace,
        db.id.as_str(),
        &db.mode,
        rev,
    ));
    let replicas = workers::desired_replicas(&ap.spec.workers, db.queue_depth);
    let grants = db
        .gateway_rev
        .as_ref()
        .map(|g| {
            project::mcp_grants(namespace, db.id.as_str(), g)
                .into_iter()
                .map(plan::with_finalizer)
                .collect()
        })
        .unwrap_or_default();
    Desired {
        project: Some(ap),
        grants,
        replicas: Some(replicas),
    }
}

/// References that do not resolve for `project`: no such Secret, Secret not labelled for the
/// project, or no such key.
pub fn missing_refs(
    refs: &[SecretKeyRef],
    secrets: &BTreeMap<String, SecretInfo>,
    project: &str,
) -> Vec<SecretKeyRef> {
    refs.iter()
        .filter(|r| {
            !secrets
                .get(&r.name)
                .is_some_and(|s| s.project.as_deref() == Some(project) && s.keys.contains(&r.key))
        })
        .cloned()
        .collect()
}

// ----------------------------------------------------------------------------------------------
// Apply

fn by_name<'a, K: Resource>(items: &'a [K], name: &str) -> Option<&'a K> {
    items
        .iter()
        .find(|o| o.meta().name.as_deref() == Some(name))
}

fn object_ref<K: Resource<DynamicType = ()>>(o: &K) -> ObjectReference {
    ObjectReference {
        api_version: Some(K::api_version(&()).into_owned()),
        kind: Some(K::kind(&()).into_owned()),
        name: o.meta().name.clone(),
        namespace: o.meta().namespace.clone(),
        uid: o.meta().uid.clone(),
        ..Default::default()
    }
}

/// Write the drift audit row (before restoring, so a failed write retries the restore too).
async fn audit_drift(
    ctx: &Context,
    project: &ProjectId,
    kind: &str,
    name: &str,
    why: Why,
    revision_id: &str,
) -> Result<(), ReconcileError> {
    let db = ctx.control.db().clone();
    let res = tenancy::scope(project.clone(), async {
        let mut tx = db.tenant().await?;
        audit::record(
            &mut tx,
            Entry::ok(
                MANAGER,
                "projection.drift_restored",
                format!("{kind}/{name}"),
                json!({"kind": kind, "name": name, "drift": why.as_str(), "revision_id": revision_id}),
            ),
        )
        .await?;
        tx.commit().await?;
        Ok::<_, awooop_core::error::Error>(())
    })
    .await;
    res.map_err(|e| ReconcileError::Audit {
        project: project.to_string(),
        code: e.code.as_str(),
    })
}

/// Publish an Event (best effort: an Event that cannot be written must not undo the restore).
pub async fn publish_event(
    ctx: &Context,
    regarding: ObjectReference,
    type_: &str,
    reason: &str,
    action: &str,
    note: String,
) {
    let name = regarding.name.clone().unwrap_or_else(|| "awooop".into());
    let ev = Event {
        metadata: ObjectMeta {
            generate_name: Some(format!("{name}.")),
            namespace: Some(ctx.namespace.clone()),
            ..Default::default()
        },
        event_time: Some(MicroTime(Timestamp::now())),
        reporting_controller: Some(REPORTER.into()),
        reporting_instance: Some(ctx.identity.clone()),
        action: Some(action.into()),
        reason: Some(reason.into()),
        type_: Some(type_.into()),
        note: Some(note),
        regarding: Some(regarding),
        ..Default::default()
    };
    let api = Api::<Event>::namespaced(ctx.client.clone(), &ctx.namespace);
    if let Err(e) = api.create(&PostParams::default(), &ev).await {
        tracing::warn!(error = %e, reason, "failed to publish Event");
    }
}

async fn drift_event<K: Resource<DynamicType = ()>>(ctx: &Context, obj: &K, why: Why) {
    ctx.metrics
        .drift
        .get_or_create(&KindLabel {
            kind: K::kind(&()).into_owned(),
        })
        .inc();
    let note = format!(
        "{} {} was {} in the cluster; restored from PostgreSQL (the source of truth)",
        K::kind(&()),
        obj.meta().name.as_deref().unwrap_or_default(),
        why.as_str()
    );
    publish_event(
        ctx,
        object_ref(obj),
        "Warning",
        "DriftRestored",
        "Restore",
        note,
    )
    .await;
}

/// Remove our finalizer (merge patch, fenced by resourceVersion).
async fn release<K>(
    api: &Api<K>,
    name: &str,
    remaining: &[String],
    rv: Option<&str>,
) -> Result<(), ReconcileError>
where
    K: Projected + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let patch = json!({"metadata": {"finalizers": remaining, "resourceVersion": rv}});
    match api
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => Ok(()),
        // Gone already: nothing to release.
        Err(kube::Error::Api(s)) if s.is_not_found() => Ok(()),
        Err(e) => Err(kube_err("release", K::KIND.as_str(), name)(e)),
    }
}

/// Delete; returns the object's new resourceVersion while finalizers hold it.
async fn delete_quietly<K>(
    api: &Api<K>,
    kind: &'static str,
    name: &str,
) -> Result<Option<String>, ReconcileError>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match api.delete(name, &DeleteParams::default()).await {
        Ok(either) => Ok(either
            .left()
            .and_then(|o| o.meta().resource_version.clone())),
        Err(kube::Error::Api(s)) if s.is_not_found() => Ok(None),
        Err(e) => Err(kube_err("delete", kind, name)(e)),
    }
}

fn revision_id<K: Resource>(o: &K) -> String {
    o.meta()
        .annotations
        .as_ref()
        .and_then(|a| a.get("awooop.dev/revision-id").cloned())
        .unwrap_or_default()
}

/// Apply the steps of one kind; returns the objects as they now are, by name.
async fn apply_kind<K>(
    ctx: &Context,
    project: &ProjectId,
    desired: &[K],
    existing: &[K],
    out: &mut Outcome,
) -> Result<BTreeMap<String, K>, ReconcileError>
where
    K: Projected
        + serde::Serialize
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + kube::Resource<Scope = kube::core::NamespaceResourceScope>,
{
    let api = Api::<K>::namespaced(ctx.client.clone(), &ctx.namespace);
    let pp = PatchParams::apply(MANAGER).force();
    let kind = K::KIND.as_str();
    let mut now: BTreeMap<String, K> = existing
        .iter()
        .filter(|o| desired.iter().any(|d| d.meta().name == o.meta().name))
        .map(|o| (o.meta().name.clone().unwrap_or_default(), o.clone()))
        .collect();
    let mut versions: BTreeMap<String, String> = BTreeMap::new();
    for step in plan::plan(desired, existing) {
        match step {
            Step::Apply { name, why } => {
                let obj = by_name(desired, &name).expect("planned from desired");
                if why.is_drift() {
                    audit_drift(ctx, project, kind, &name, why, &revision_id(obj)).await?;
                }
                let applied = api
                    .patch(&name, &pp, &Patch::Apply(obj))
                    .await
                    .map_err(kube_err("apply", kind, &name))?;
                out.applied += 1;
                if why.is_drift() {
                    out.drift += 1;
                    drift_event(ctx, &applied, why).await;
                }
                now.insert(name, applied);
            }
            Step::Delete { name } => {
                // The deletion bumps resourceVersion: the release that follows must use the new
                // one, or its precondition fails.
                if let Some(rv) = delete_quietly(&api, kind, &name).await? {
                    versions.insert(name, rv);
                }
                out.deleted += 1;
            }
            Step::Release {
                name,
                remaining,
                resource_version,
            } => {
                // Cleanup before the object may go: a retired project's workers stop.
                if K::KIND == Kind::AgentProject && desired.is_empty() {
                    let deployments =
                        Api::<Deployment>::namespaced(ctx.client.clone(), &ctx.namespace);
                    delete_quietly(
                        &deployments,
                        "Deployment",
                        &workers::deployment_name(project.as_str()),
                    )
                    .await?;
                }
                let rv = versions.get(&name).cloned().or(resource_version);
                release(&api, &name, &remaining, rv.as_deref()).await?;
                out.released += 1;
            }
        }
    }
    Ok(now)
}

/// Reconcile one project from its PostgreSQL state and its slice of the cluster.
pub async fn reconcile_with(
    ctx: &Context,
    id: &ProjectId,
    db: Option<&DbProject>,
    cluster: &Cluster,
) -> Result<Outcome, ReconcileError> {
    let want = desired(&ctx.namespace, db);
    let mut out = Outcome::default();
    let projects = apply_kind(
        ctx,
        id,
        want.project.as_slice(),
        &cluster.projects,
        &mut out,
    )
    .await?;
    let grants = apply_kind(ctx, id, &want.grants, &cluster.grants, &mut out).await?;
    let (Some(ap_want), Some(replicas)) = (&want.project, want.replicas) else {
        return Ok(out);
    };
    let Some(ap) = projects.get(ap_want.metadata.name.as_deref().unwrap_or_default()) else {
        return Ok(out);
    };

    // Workers.
    let workers_seen = match (&ctx.workers, &ap.metadata.uid) {
        (Some(settings), Some(uid)) => {
            let d = workers::deployment(&ctx.namespace, ap_want, uid, settings, replicas);
            let name = workers::deployment_name(id.as_str());
            let existing = by_name(&cluster.deployments, &name);
            let current = match workers::needs_apply(existing, &d) {
                None => existing.cloned(),
                Some(why) => {
                    if why.is_drift() {
                        audit_drift(ctx, id, "Deployment", &name, why, &revision_id(&d)).await?;
                    }
                    let api = Api::<Deployment>::namespaced(ctx.client.clone(), &ctx.namespace);
                    let applied = api
                        .patch(
                            &name,
                            &PatchParams::apply(MANAGER).force(),
                            &Patch::Apply(&d),
                        )
                        .await
                        .map_err(kube_err("apply", "Deployment", &name))?;
                    out.applied += 1;
                    if why.is_drift() {
                        out.drift += 1;
                        drift_event(ctx, &applied, why).await;
                    }
                    Some(applied)
                }
            };
            WorkersObserved::Replicas {
                desired: replicas,
                ready: current.as_ref().map(workers::ready_replicas).unwrap_or(0),
            }
        }
        _ => WorkersObserved::NotManaged,
    };

    // Status: grants first (their missing refs feed the project's SecretsResolved).
    let now = Timestamp::now();
    let project_label = id.as_str();
    let mut all_missing = Vec::new();
    let grant_api = Api::<McpGrant>::namespaced(ctx.client.clone(), &ctx.namespace);
    for g in &want.grants {
        let name = g.metadata.name.clone().unwrap_or_default();
        let Some(current) = grants.get(&name) else {
            continue;
        };
        let missing = missing_refs(&g.spec.credential_refs, &cluster.secrets, project_label);
        let st = status::grant_status(
            current.metadata.generation,
            &g.spec.body_hash,
            &missing,
            current.status.as_ref(),
            now,
        );
        if !status::same_grant_status(current.status.as_ref(), &st) {
            let body =
                json!({"apiVersion": "awooop.dev/v1alpha1", "kind": "McpGrant", "status": st});
            grant_api
                .patch_status(
                    &name,
                    &PatchParams::apply(MANAGER).force(),
                    &Patch::Apply(&body),
                )
                .await
                .map_err(kube_err("write status of", "McpGrant", &name))?;
            out.status_writes += 1;
        }
        for m in missing {
            if !all_missing.contains(&m) {
                all_missing.push(m);
            }
        }
    }
    let st = status::agent_project_status(
        ap.metadata.generation,
        &ap_want.spec.revision_id,
        &ap_want.spec.body_hash,
        &all_missing,
        workers_seen,
        ap.status.as_ref(),
        now,
    );
    if !status::same_project_status(ap.status.as_ref(), &st) {
        let name = ap.metadata.name.clone().unwrap_or_default();
        let body =
            json!({"apiVersion": "awooop.dev/v1alpha1", "kind": "AgentProject", "status": st});
        Api::<AgentProject>::namespaced(ctx.client.clone(), &ctx.namespace)
            .patch_status(
                &name,
                &PatchParams::apply(MANAGER).force(),
                &Patch::Apply(&body),
            )
            .await
            .map_err(kube_err("write status of", "AgentProject", &name))?;
        out.status_writes += 1;
    }
    Ok(out)
}

/// Reconcile one project: fetch its state from PostgreSQL and the cluster, then apply.
pub async fn reconcile_project(ctx: &Context, id: &ProjectId) -> Result<Outcome, ReconcileError> {
    let started = Instant::now();
    let res = async {
        let db = fetch_db(&ctx.control, id, None).await?;
        let cluster = fetch_cluster(ctx, Some(id.as_str())).await?;
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
/// cluster. The cluster is read once (four LIST requests), not per project.
pub async fn resync(ctx: &Context) -> Result<Resync, ReconcileError> {
    let platform = ProjectId::parse("platform").expect("valid id");
    let projects = ctx
        .control
        .list_projects(&awooop_store::auth::Actor::cli(MANAGER))
        .await
        .map_err(db_err(&platform))?;
    let depths = queue_depths(&ctx.control, None).await?;
    let cluster = fetch_cluster(ctx, None).await?;
    let mut ids: BTreeSet<String> = projects
        .iter()
        .filter(|p| p.project.status == "active")
        .map(|p| p.project.project_id.clone())
        .collect();
    ids.extend(cluster.project_ids());
    let parts = cluster.partition();
    let empty = Cluster::default();
    let mut r = Resync::default();
    for raw in ids {
        let Ok(id) = ProjectId::parse(&raw) else {
            continue;
        };
        let started = Instant::now();
        let res = async {
            let depth = depths.get(id.as_str()).copied().unwrap_or(0);
            let db = fetch_db(&ctx.control, &id, Some(depth)).await?;
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

// ----------------------------------------------------------------------------------------------
// The loop

/// Record a failed reconcile as an Event on the project's AgentProject (reason
/// `ReconcileFailed`, note with the stable label) and log it.
async fn report_error(ctx: &Context, id: &ProjectId, e: &ReconcileError) {
    tracing::warn!(project = %id, error = e.label(), "reconcile failed: {e}");
    let regarding = ObjectReference {
        api_version: Some("awooop.dev/v1alpha1".into()),
        kind: Some("AgentProject".into()),
        name: Some(id.to_string()),
        namespace: Some(ctx.namespace.clone()),
        ..Default::default()
    };
    publish_event(
        ctx,
        regarding,
        "Warning",
        "ReconcileFailed",
        "Reconcile",
        format!("reconcile failed: {}", e.label()),
    )
    .await;
}

/// Run the controller until `shutdown` fires: LISTEN for activations, watch the projected
/// objects, resync every `resync`, retry failures with backoff.
pub async fn run(
    ctx: Arc<Context>,
    resync_every: Duration,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let pool = ctx.control.db().pool_for_health().clone();
    let mut listener = sqlx::postgres::PgListener::connect_with(&pool).await?;
    listener.listen(awooop_control::ACTIVATION_CHANNEL).await?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<ProjectId>();
    spawn_watch::<AgentProject>(&ctx, tx.clone());
    spawn_watch::<McpGrant>(&ctx, tx.clone());
    spawn_watch::<Deployment>(&ctx, tx.clone());
    let mut failures: HashMap<ProjectId, u32> = HashMap::new();
    let mut tick = tokio::time::interval(resync_every);
    loop {
        let target = tokio::select! {
            _ = tick.tick() => None,
            n = listener.recv() => match n {
                Ok(n) => {
                    let v: serde_json::Value = serde_json::from_str(n.payload()).unwrap_or_default();
                    match v["project_id"].as_str().map(ProjectId::parse) {
                        Some(Ok(p)) => Some(p),
                        _ => continue,
                    }
                }
                Err(e) => {
                    // sqlx reconnects on the next recv; the resync covers what we missed.
                    tracing::warn!(error = %e, "activation listener failed");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            },
            Some(p) = rx.recv() => Some(p),
            _ = shutdown.changed() => return Ok(()),
        };
        let results: Vec<(ProjectId, Result<Outcome, ReconcileError>)> = match target {
            Some(p) => {
                // Coalesce triggers that queued up meanwhile: one reconcile per project.
                let mut batch = BTreeSet::from([p]);
                while let Ok(more) = rx.try_recv() {
                    batch.insert(more);
                }
                let mut out = Vec::with_capacity(batch.len());
                for p in batch {
                    let r = reconcile_project(&ctx, &p).await;
                    out.push((p, r));
                }
                out
            }
            None => match resync(&ctx).await {
                Ok(r) => {
                    tracing::debug!(
                        projects = r.projects,
                        applied = r.outcome.applied,
                        "resync done"
                    );
                    r.failed.into_iter().map(|(p, e)| (p, Err(e))).collect()
                }
                Err(e) => {
                    tracing::warn!(error = e.label(), "resync failed: {e}");
                    vec![]
                }
            },
        };
        for (p, r) in results {
            match r {
                Ok(_) => {
                    failures.remove(&p);
                }
                Err(e) => {
                    report_error(&ctx, &p, &e).await;
                    if e.policy() == Policy::Retry {
                        let n = failures.entry(p.clone()).or_insert(0);
                        let delay = backoff(*n);
                        *n += 1;
                        let tx = tx.clone();
                        tokio::spawn(async move {
                            tokio::time::sleep(delay).await;
                            let _ = tx.send(p);
                        });
                    }
                }
            }
        }
    }
}

/// Watch one kind of projected object and trigger its project's reconcile on every change,
/// so drift is restored at once rather than at the next resync.
fn spawn_watch<K>(ctx: &Context, tx: tokio::sync::mpsc::UnboundedSender<ProjectId>)
where
    K: Resource<DynamicType = (), Scope = kube::core::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + 'static,
{
    use kube::runtime::{WatchStreamExt, watcher};
    let api = Api::<K>::namespaced(ctx.client.clone(), &ctx.namespace);
    tokio::spawn(async move {
        let stream =
            watcher(api, watcher::Config::default().labels(MANAGED_SELECTOR)).default_backoff();
        futures::pin_mut!(stream);
        while let Some(ev) = stream.next().await {
            // Only changes after the initial listing: the periodic resync already covers what
            // exists at start, and re-listing must not trigger one reconcile per object.
            let obj = match ev {
                Ok(watcher::Event::Apply(o) | watcher::Event::Delete(o)) => o,
                _ => continue,
            };
            if let Some(Ok(p)) = project_of(obj.meta()).map(ProjectId::parse)
                && tx.send(p).is_err()
            {
                return;
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refs_resolve_only_with_the_key_and_the_projects_label() {
        let secrets = BTreeMap::from([
            (
                "ok".to_string(),
                SecretInfo {
                    project: Some("alpha".into()),
                    keys: BTreeSet::from(["token".to_string()]),
                },
            ),
            (
                "other".to_string(),
                SecretInfo {
                    project: Some("beta".into()),
                    keys: BTreeSet::from(["token".to_string()]),
                },
            ),
        ]);
        let r = |n: &str, k: &str| SecretKeyRef {
            name: n.into(),
            key: k.into(),
        };
        let refs = vec![
            r("ok", "token"),
            r("ok", "nope"),
            r("other", "token"),
            r("gone", "token"),
        ];
        assert_eq!(
            missing_refs(&refs, &secrets, "alpha"),
            vec![r("ok", "nope"), r("other", "token"), r("gone", "token")]
        );
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        assert_eq!(backoff(0), Duration::from_secs(1));
        assert_eq!(backoff(3), Duration::from_secs(8));
        assert_eq!(backoff(30), Duration::from_secs(256));
        assert!(backoff(30) <= Duration::from_secs(300));
    }
}
