//! Step 2, **build** (pure): from a project's PostgreSQL state to the objects it should have
//! (AgentProject and McpGrants from [`crate::project`], replicas from [`crate::workers`]), and
//! which credential references do not resolve.

use std::collections::BTreeMap;

use super::fetch::{DbProject, SecretInfo};
use crate::crd::{AgentProject, McpGrant, SecretKeyRef};
use crate::{plan, project, workers};

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

/// The credential references of a project's grants that do resolve for it (each once, in
/// name/key order): what its worker pods may mount ([`crate::workers::deployment`]).
pub fn resolved_refs(
    grants: &[McpGrant],
    secrets: &BTreeMap<String, SecretInfo>,
    project: &str,
) -> Vec<SecretKeyRef> {
    let mut all: Vec<SecretKeyRef> = grants
        .iter()
        .flat_map(|g| g.spec.credential_refs.iter().cloned())
        .collect();
    all.sort_by(|a, b| (&a.name, &a.key).cmp(&(&b.name, &b.key)));
    all.dedup();
    let missing = missing_refs(&all, secrets, project);
    all.retain(|r| !missing.contains(r));
    all
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

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
}
