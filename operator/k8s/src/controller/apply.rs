//! Step 4, **apply**: send what the plan ([`crate::plan`], pure) decided, by server-side apply
//! with the one field manager `awooop-operator`. Drift (someone edited or deleted a projected
//! object) is restored with an audit row written *before* the restore (a failed audit write
//! retries the whole step) and a Kubernetes Event after it. Retired objects are deleted, their
//! workers stopped, and our finalizer released.
//!
//! The result is an [`Applied`] set: the objects as they now are, which only the status step
//! consumes, so a status can never describe objects that were not applied first.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::Deployment;
use kube::Resource;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use serde_json::json;

use super::build::{Desired, resolved_refs};
use super::error::{ReconcileError, kube_err};
use super::events;
use super::fetch::Cluster;
use super::{Context, Outcome};
use crate::Why;
use crate::crd::{AgentProject, McpGrant};
use crate::plan::{self, Kind, Projected, Step};
use crate::project::MANAGER;
use crate::status::WorkersObserved;
use crate::workers;
use awooop_store::audit::{self, Entry};
use awooop_store::tenancy::{self, ProjectId};

/// Step 3, **plan** (pure, [`crate::plan`]): what to send for the custom resources. The worker
/// Deployment is decided in the apply step, because it needs the applied AgentProject's uid.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Steps {
    pub projects: Vec<Step>,
    pub grants: Vec<Step>,
}

impl Steps {
    pub fn of(want: &Desired, cluster: &Cluster) -> Self {
        Self {
            projects: plan::plan(want.project.as_slice(), &cluster.projects),
            grants: plan::plan(&want.grants, &cluster.grants),
        }
    }
}

/// The objects of one project as they are after the apply step.
#[derive(Debug, Default)]
pub struct Applied {
    pub projects: BTreeMap<String, AgentProject>,
    pub grants: BTreeMap<String, McpGrant>,
    /// The worker side, when the project has an AgentProject.
    pub workers: Option<WorkersObserved>,
}

/// Apply the desired objects of one project against its slice of the cluster.
pub async fn apply(
    ctx: &Context,
    id: &ProjectId,
    want: &Desired,
    steps: &Steps,
    cluster: &Cluster,
    out: &mut Outcome,
) -> Result<Applied, ReconcileError> {
    let fresh = !cluster.from_cache;
    let projects = apply_kind(
        ctx,
        id,
        want.project.as_slice(),
        &cluster.projects,
        &steps.projects,
        fresh,
        out,
    )
    .await?;
    let grants = apply_kind(
        ctx,
        id,
        &want.grants,
        &cluster.grants,
        &steps.grants,
        fresh,
        out,
    )
    .await?;
    let mut applied = Applied {
        projects,
        grants,
        workers: None,
    };
    let (Some(ap_want), Some(replicas)) = (&want.project, want.replicas) else {
        return Ok(applied);
    };
    let Some(ap) = applied
        .projects
        .get(ap_want.metadata.name.as_deref().unwrap_or_default())
    else {
        return Ok(applied);
    };
    let seen = match (&ctx.workers, &ap.metadata.uid) {
        (Some(settings), Some(uid)) => {
            let credentials = resolved_refs(&want.grants, &cluster.secrets, id.as_str());
            let d = workers::deployment(
                &ctx.namespace,
                ap_want,
                uid,
                settings,
                replicas,
                &credentials,
            );
            let current = apply_workers(ctx, id, &d, cluster, out).await?;
            WorkersObserved::Replicas {
                desired: replicas,
                ready: current.as_ref().map(workers::ready_replicas).unwrap_or(0),
            }
        }
        _ => WorkersObserved::NotManaged,
    };
    applied.workers = Some(seen);
    Ok(applied)
}

/// The worker Deployment: applied when our desired state changed or someone changed it.
async fn apply_workers(
    ctx: &Context,
    id: &ProjectId,
    d: &Deployment,
    cluster: &Cluster,
    out: &mut Outcome,
) -> Result<Option<Deployment>, ReconcileError> {
    let name = workers::deployment_name(id.as_str());
    let api = Api::<Deployment>::namespaced(ctx.client.clone(), &ctx.namespace);
    let mut existing = by_name(&cluster.deployments, &name).cloned();
    let mut why = workers::needs_apply(existing.as_ref(), d);
    if why == Some(Why::Drift) && cluster.from_cache {
        // The cache may not have seen our own last write yet: confirm with the server.
        existing = api
            .get_opt(&name)
            .await
            .map_err(kube_err("get", "Deployment", &name))?;
        why = workers::needs_apply(existing.as_ref(), d);
    }
    let Some(why) = why else {
        return Ok(existing);
    };
    if why.is_drift() {
        audit_drift(ctx, id, "Deployment", &name, why, &revision_id(d)).await?;
    }
    let applied = api
        .patch(
            &name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(d),
        )
        .await
        .map_err(kube_err("apply", "Deployment", &name))?;
    out.applied += 1;
    if why.is_drift() {
        out.drift += 1;
        events::drift(ctx, &applied, why).await;
    }
    Ok(Some(applied))
}

pub(crate) fn by_name<'a, K: Resource>(items: &'a [K], name: &str) -> Option<&'a K> {
    items
        .iter()
        .find(|o| o.meta().name.as_deref() == Some(name))
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

/// Apply the steps of one kind; returns the objects as they now are, by name. `fresh` says
/// whether `existing` was just listed; from a cache, drift is confirmed with a GET first.
async fn apply_kind<K>(
    ctx: &Context,
    project: &ProjectId,
    desired: &[K],
    existing: &[K],
    steps: &[Step],
    fresh: bool,
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
    for step in steps.iter().cloned() {
        match step {
            Step::Apply { name, why } => {
                let obj = by_name(desired, &name).expect("planned from desired");
                let why = if why == Why::Drift && !fresh {
                    // The cache may lag our own last write by one watch event: ask the server
                    // before restoring (and reporting) an edit that is not there. (Recreate
                    // needs no check: the deletion was seen, and our release just removed it.)
                    let live = api
                        .get_opt(&name)
                        .await
                        .map_err(kube_err("get", kind, &name))?;
                    match live {
                        None => Why::Create,
                        Some(live) => match plan::why(&live, obj) {
                            None => {
                                now.insert(name, live);
                                continue;
                            }
                            Some(w) => w,
                        },
                    }
                } else {
                    why
                };
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
                    events::drift(ctx, &applied, why).await;
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
