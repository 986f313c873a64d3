//! Step 5, **status**: the conditions of the applied objects (pure, [`crate::status`]), then one
//! server-side apply of the whole status object per object, skipped when only timestamps would
//! change. Grants first: their missing references feed the project's SecretsResolved.

use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;

use super::apply::Applied;
use super::build::{Desired, missing_refs};
use super::error::{ReconcileError, kube_err};
use super::fetch::Cluster;
use super::{Context, Outcome};
use crate::crd::{AgentProject, McpGrant};
use crate::project::MANAGER;
use crate::status as conditions;
use awooop_store::tenancy::ProjectId;

/// Write the status of every applied object of the project whose status changed.
pub async fn write(
    ctx: &Context,
    id: &ProjectId,
    want: &Desired,
    cluster: &Cluster,
    applied: &Applied,
    out: &mut Outcome,
) -> Result<(), ReconcileError> {
    let (Some(ap_want), Some(workers_seen)) = (&want.project, applied.workers) else {
        return Ok(());
    };
    let Some(ap) = applied
        .projects
        .get(ap_want.metadata.name.as_deref().unwrap_or_default())
    else {
        return Ok(());
    };
    let now = Timestamp::now();
    let mut all_missing = Vec::new();
    let grant_api = Api::<McpGrant>::namespaced(ctx.client.clone(), &ctx.namespace);
    for g in &want.grants {
        let name = g.metadata.name.clone().unwrap_or_default();
        let Some(current) = applied.grants.get(&name) else {
            continue;
        };
        let missing = missing_refs(&g.spec.credential_refs, &cluster.secrets, id.as_str());
        let st = conditions::grant_status(
            current.metadata.generation,
            &g.spec.body_hash,
            &missing,
            current.status.as_ref(),
            now,
        );
        if !conditions::same_grant_status(current.status.as_ref(), &st) {
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
    let st = conditions::agent_project_status(
        ap.metadata.generation,
        &ap_want.spec.revision_id,
        &ap_want.spec.body_hash,
        &all_missing,
        workers_seen,
        ap.status.as_ref(),
        now,
    );
    if !conditions::same_project_status(ap.status.as_ref(), &st) {
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
    Ok(())
}
