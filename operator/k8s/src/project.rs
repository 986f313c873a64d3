//! The pure "build" step of the projection: from a project's active revisions (read from
//! PostgreSQL by the caller) to the desired `AgentProject` and `McpGrant` objects. No I/O, so
//! every rule here is table-tested without a cluster.

use std::collections::{BTreeMap, BTreeSet};

use kube::api::ObjectMeta;

use super::crd::{
    AgentProject, AgentProjectSpec, McpGrant, McpGrantSpec, SecretKeyRef, WorkerBounds,
};
use awooop_contracts::{CredentialSource, McpGatewayContract, ProjectContract};

/// Field manager and managed-by label of everything the operator writes.
pub const MANAGER: &str = "awooop-operator";

/// An active revision as the projection needs it.
#[derive(Debug, Clone, PartialEq)]
pub struct Revision<T> {
    pub revision_id: String,
    pub revision: i32,
    pub body_hash: String,
    pub body: T,
}

fn meta(name: String, namespace: &str, project: &str, rev_id: &str, hash: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: Some(namespace.to_string()),
        labels: Some(BTreeMap::from([
            (
                "app.kubernetes.io/managed-by".to_string(),
                MANAGER.to_string(),
            ),
            (
                "app.kubernetes.io/part-of".to_string(),
                "awooop".to_string(),
            ),
            ("awooop.dev/project".to_string(), project.to_string()),
        ])),
        annotations: Some(BTreeMap::from([
            ("awooop.dev/revision-id".to_string(), rev_id.to_string()),
            ("awooop.dev/body-hash".to_string(), hash.to_string()),
        ])),
        ..Default::default()
    }
}

/// The desired AgentProject of a project.
pub fn agent_project(
    namespace: &str,
    project: &str,
    mode: &str,
    rev: &Revision<ProjectContract>,
) -> AgentProject {
    let w = &rev.body.workers;
    AgentProject {
        metadata: meta(
            project.to_string(),
            namespace,
            project,
            &rev.revision_id,
            &rev.body_hash,
        ),
        spec: AgentProjectSpec {
            project_id: project.to_string(),
            revision_id: rev.revision_id.clone(),
            revision: rev.revision,
            body_hash: rev.body_hash.clone(),
            mode: mode.to_string(),
            workers: WorkerBounds {
                min_replicas: i32::from(w.min_replicas),
                max_replicas: i32::from(w.max_replicas),
                runs_per_replica: w.runs_per_replica as i32,
            },
        },
        status: None,
    }
}

/// Name of a project's McpGrant for one agent: `{project}.{agent}`. Project ids and agent
/// names are both `[a-z0-9-]` slugs, so a `-` separator let two projects collide (project
/// `a-b` with agent `c` and project `a` with agent `b-c` both gave `a-b-c`, and the second
/// projection overwrote the first tenant's grant); `.` appears in neither, so the name is
/// unique across projects, and it is still a valid object name (DNS subdomain, ≤ 127 chars).
pub fn grant_name(project: &str, agent: &str) -> String {
    format!("{project}.{agent}")
}

/// One McpGrant per grant of the active MCP Gateway revision, with the Kubernetes Secret
/// references its tools need (names and keys only). Grants of the same agent are merged.
pub fn mcp_grants(
    namespace: &str,
    project: &str,
    rev: &Revision<McpGatewayContract>,
) -> Vec<McpGrant> {
    let g = &rev.body;
    let mut by_agent: BTreeMap<&str, (BTreeSet<String>, BTreeSet<String>)> = BTreeMap::new();
    for grant in &g.grants {
        let e = by_agent.entry(grant.agent.as_str()).or_default();
        e.0.extend(grant.tools.iter().map(|t| t.0.clone()));
        e.1.extend(grant.environments.iter().map(|x| x.as_str().to_string()));
    }
    by_agent
        .into_iter()
        .map(|(agent, (tools, envs))| {
            let providers: BTreeSet<&str> = tools
                .iter()
                .filter_map(|t| t.split_once("__").map(|(p, _)| p))
                .collect();
            let mut refs: Vec<SecretKeyRef> = g
                .providers
                .iter()
                .filter(|p| providers.contains(p.name.as_str()))
                .flat_map(|p| p.credentials.iter())
                .filter_map(|c| g.credential_refs.iter().find(|r| r.name == c.credential))
                .filter_map(|r| match &r.source {
                    CredentialSource::KubernetesSecret { name, key } => Some(SecretKeyRef {
                        name: name.clone(),
                        key: key.clone(),
                    }),
                    _ => None,
                })
                .collect();
            refs.sort_by(|a, b| (&a.name, &a.key).cmp(&(&b.name, &b.key)));
            refs.dedup();
            McpGrant {
                metadata: meta(
                    grant_name(project, agent),
                    namespace,
                    project,
                    &rev.revision_id,
                    &rev.body_hash,
                ),
                spec: McpGrantSpec {
                    project_id: project.to_string(),
                    agent: agent.to_string(),
                    tools: tools.into_iter().collect(),
                    environments: envs.into_iter().collect(),
                    credential_refs: refs,
                    revision_id: rev.revision_id.clone(),
                    revision: rev.revision,
                    body_hash: rev.body_hash.clone(),
                },
                status: None,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn gateway() -> McpGatewayContract {
        serde_json::from_value(json!({
            "credential_refs": [
                {"name": "k8s-token", "source": {"kubernetes_secret": {"name": "awoooi-k8s", "key": "token"}}},
                {"name": "local", "source": {"env": {"var": "PROM_KEY"}}}
            ],
            "providers": [
                {"name": "k8s", "transport": {"type": "streamable_http", "url": "http://k8s/mcp"},
                 "credentials": [{"credential": "k8s-token", "inject": {"type": "header", "name": "Authorization", "prefix": "Bearer "}}]},
                {"name": "prom", "transport": {"type": "stdio", "entry": "prom-mcp"},
                 "credentials": [{"credential": "local", "inject": {"type": "env", "var": "PROM_KEY"}}]}
            ],
            "tools": [
                {"provider": "k8s", "name": "get_pods", "risk": "read_only", "environments": ["prod"], "input_schema": {"type": "object"}},
                {"provider": "prom", "name": "query", "risk": "read_only", "environments": ["prod"], "input_schema": {"type": "object"}}
            ],
            "grants": [
                {"agent": "triage", "tools": ["k8s__get_pods"], "environments": ["prod"]},
                {"agent": "triage", "tools": ["prom__query"], "environments": ["prod"]},
                {"agent": "reporter", "tools": ["prom__query"], "environments": ["prod"]}
            ]
        }))
        .unwrap()
    }

    #[test]
    fn grants_merge_per_agent_and_carry_only_kubernetes_secret_refs() {
        let rev = Revision {
            revision_id: "r1".into(),
            revision: 3,
            body_hash: format!("sha256:{}", "a".repeat(64)),
            body: gateway(),
        };
        let grants = mcp_grants("awooop", "awoooi", &rev);
        assert_eq!(grants.len(), 2);
        let reporter = &grants[0];
        assert_eq!(reporter.metadata.name.as_deref(), Some("awoooi.reporter"));
        assert!(
            reporter.spec.credential_refs.is_empty(),
            "env refs are local-only, never projected"
        );
        let triage = &grants[1];
        assert_eq!(triage.spec.tools, vec!["k8s__get_pods", "prom__query"]);
        assert_eq!(
            triage.spec.credential_refs,
            vec![SecretKeyRef {
                name: "awoooi-k8s".into(),
                key: "token".into()
            }]
        );
        let labels = triage.metadata.labels.as_ref().unwrap();
        assert_eq!(labels["app.kubernetes.io/managed-by"], MANAGER);
        assert_eq!(labels["awooop.dev/project"], "awoooi");
        assert_eq!(
            triage.metadata.annotations.as_ref().unwrap()["awooop.dev/revision-id"],
            "r1"
        );
        assert_eq!(triage.spec.revision, 3);
    }
}
