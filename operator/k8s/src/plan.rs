//! The pure "plan" step: compare the desired projected objects with those in the cluster and
//! decide, per object, what to send. PostgreSQL wins: an object that differs from the desired
//! one under the *same* revision was edited by someone (drift, restored and reported); one
//! that differs under another revision is simply an activation (update).
//!
//! Objects carry the finalizer [`FINALIZER`]: a retired object is deleted, its dependents are
//! cleaned up, then the finalizer is released. An object someone deletes while its revision is
//! still active is released and re-created (drift).

use kube::Resource;

use super::Why;
use super::crd::{AgentProject, AgentProjectSpec, McpGrant, McpGrantSpec};
use super::project::MANAGER;

pub const FINALIZER: &str = "awooop.dev/cleanup";

/// The kinds the controller projects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    AgentProject,
    McpGrant,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::AgentProject => "AgentProject",
            Kind::McpGrant => "McpGrant",
        }
    }
}

/// One thing to send to the API server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Server-side apply the desired object.
    Apply { name: String, why: Why },
    /// Delete an object that is no longer active (it stays until released).
    Delete { name: String },
    /// Clean up and remove our finalizer; `remaining` are the other finalizers to keep.
    Release {
        name: String,
        remaining: Vec<String>,
        resource_version: Option<String>,
    },
}

/// A projected custom resource.
pub trait Projected: Resource<DynamicType = ()> + Clone {
    type Spec: PartialEq;
    const KIND: Kind;
    fn spec(&self) -> &Self::Spec;
}

impl Projected for AgentProject {
    type Spec = AgentProjectSpec;
    const KIND: Kind = Kind::AgentProject;
    fn spec(&self) -> &AgentProjectSpec {
        &self.spec
    }
}

impl Projected for McpGrant {
    type Spec = McpGrantSpec;
    const KIND: Kind = Kind::McpGrant;
    fn spec(&self) -> &McpGrantSpec {
        &self.spec
    }
}

/// Add our finalizer to a desired object.
pub fn with_finalizer<K: Projected>(mut obj: K) -> K {
    obj.meta_mut().finalizers = Some(vec![FINALIZER.to_string()]);
    obj
}

fn revision_of<K: Projected>(o: &K) -> Option<&String> {
    o.meta()
        .annotations
        .as_ref()
        .and_then(|a| a.get("awooop.dev/revision-id"))
}

fn has_finalizer<K: Projected>(o: &K) -> bool {
    o.meta()
        .finalizers
        .as_ref()
        .is_some_and(|f| f.iter().any(|x| x == FINALIZER))
}

/// Our labels and annotations are all present with our values (others may add their own).
fn meta_holds<K: Projected>(existing: &K, desired: &K) -> bool {
    let sub = |want: &Option<std::collections::BTreeMap<String, String>>,
               have: &Option<std::collections::BTreeMap<String, String>>| {
        want.iter()
            .flatten()
            .all(|(k, v)| have.as_ref().and_then(|h| h.get(k)) == Some(v))
    };
    sub(&desired.meta().labels, &existing.meta().labels)
        && sub(&desired.meta().annotations, &existing.meta().annotations)
}

/// Why an existing object must be applied, or `None` if it already matches.
pub fn why<K: Projected>(existing: &K, desired: &K) -> Option<Why> {
    if existing.meta().deletion_timestamp.is_some() {
        return Some(Why::Recreate);
    }
    let matches = existing.spec() == desired.spec()
        && meta_holds(existing, desired)
        && has_finalizer(existing);
    if matches {
        return None;
    }
    if revision_of(existing) == revision_of(desired) {
        Some(Why::Drift)
    } else {
        Some(Why::Update)
    }
}

/// The steps for one kind: desired objects first (in name order), then retired ones.
pub fn plan<K: Projected>(desired: &[K], existing: &[K]) -> Vec<Step> {
    let name = |o: &K| o.meta().name.clone().unwrap_or_default();
    let mut steps = Vec::new();
    for d in desired {
        let n = name(d);
        match existing.iter().find(|e| name(e) == n) {
            None => steps.push(Step::Apply {
                name: n,
                why: Why::Create,
            }),
            Some(e) => match why(e, d) {
                None => {}
                Some(Why::Recreate) => {
                    if let Some(r) = release(e) {
                        steps.push(r);
                    }
                    steps.push(Step::Apply {
                        name: n,
                        why: Why::Recreate,
                    });
                }
                Some(w) => steps.push(Step::Apply { name: n, why: w }),
            },
        }
    }
    for e in existing {
        let n = name(e);
        if desired.iter().any(|d| name(d) == n) {
            continue;
        }
        // Only objects we manage are ours to delete.
        let ours = e
            .meta()
            .labels
            .as_ref()
            .and_then(|l| l.get("app.kubernetes.io/managed-by"))
            .is_some_and(|m| m == MANAGER);
        if !ours {
            continue;
        }
        if e.meta().deletion_timestamp.is_none() {
            steps.push(Step::Delete { name: n });
        }
        if let Some(r) = release(e) {
            steps.push(r);
        }
    }
    steps
}

fn release<K: Projected>(e: &K) -> Option<Step> {
    has_finalizer(e).then(|| Step::Release {
        name: e.meta().name.clone().unwrap_or_default(),
        remaining: e
            .meta()
            .finalizers
            .iter()
            .flatten()
            .filter(|f| *f != FINALIZER)
            .cloned()
            .collect(),
        resource_version: e.meta().resource_version.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::WorkerBounds;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use std::collections::BTreeMap;

    fn ap(name: &str, rev: &str, mode: &str) -> AgentProject {
        let mut a = AgentProject::new(
            name,
            AgentProjectSpec {
                project_id: name.into(),
                revision_id: rev.into(),
                revision: 1,
                body_hash: "sha256:00".into(),
                mode: mode.into(),
                workers: WorkerBounds {
                    min_replicas: 1,
                    max_replicas: 2,
                    runs_per_replica: 10,
                },
            },
        );
        a.metadata.labels = Some(BTreeMap::from([(
            "app.kubernetes.io/managed-by".to_string(),
            MANAGER.to_string(),
        )]));
        a.metadata.annotations = Some(BTreeMap::from([(
            "awooop.dev/revision-id".to_string(),
            rev.to_string(),
        )]));
        with_finalizer(a)
    }

    fn deleted(mut a: AgentProject) -> AgentProject {
        a.metadata.deletion_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH));
        a
    }

    fn apply(n: &str, why: Why) -> Step {
        Step::Apply {
            name: n.into(),
            why,
        }
    }

    fn release(n: &str) -> Step {
        Step::Release {
            name: n.into(),
            remaining: vec![],
            resource_version: None,
        }
    }

    #[test]
    fn plans_create_update_drift_retire_and_recreate() {
        let mut foreign = ap("x", "r1", "shadow");
        foreign.metadata.labels = None;
        for (name, desired, existing, want) in [
            (
                "create",
                vec![ap("a", "r1", "shadow")],
                vec![],
                vec![apply("a", Why::Create)],
            ),
            (
                "unchanged",
                vec![ap("a", "r1", "shadow")],
                vec![ap("a", "r1", "shadow")],
                vec![],
            ),
            (
                "activation",
                vec![ap("a", "r2", "shadow")],
                vec![ap("a", "r1", "shadow")],
                vec![apply("a", Why::Update)],
            ),
            (
                "edited by hand",
                vec![ap("a", "r1", "shadow")],
                vec![ap("a", "r1", "auto_remediate")],
                vec![apply("a", Why::Drift)],
            ),
            (
                "finalizer removed by hand",
                vec![ap("a", "r1", "shadow")],
                vec![{
                    let mut a = ap("a", "r1", "shadow");
                    a.metadata.finalizers = None;
                    a
                }],
                vec![apply("a", Why::Drift)],
            ),
            (
                "deleted by hand",
                vec![ap("a", "r1", "shadow")],
                vec![deleted(ap("a", "r1", "shadow"))],
                vec![release("a"), apply("a", Why::Recreate)],
            ),
            (
                "retired",
                vec![],
                vec![ap("a", "r1", "shadow")],
                vec![Step::Delete { name: "a".into() }, release("a")],
            ),
            (
                "retired, deletion pending",
                vec![],
                vec![deleted(ap("a", "r1", "shadow"))],
                vec![release("a")],
            ),
            ("not ours", vec![], vec![foreign], vec![]),
        ] {
            assert_eq!(plan(&desired, &existing), want, "{name}");
        }
    }
}
