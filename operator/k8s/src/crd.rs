//! The custom resources the operator projects from PostgreSQL: `AgentProject` (one per
//! project, from its active Project revision) and `McpGrant` (one per grant of the active MCP
//! Gateway revision). PostgreSQL stays the source of truth; these objects are read-only
//! projections that carry the revision id and body hash they came from.
//!
//! The YAML in `crds/` is generated from these types (`awooop crdgen`) and checked for drift
//! by a test. Field doc comments become schema descriptions.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Desired state of a projected project.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "awooop.dev",
    version = "v1alpha1",
    kind = "AgentProject",
    namespaced,
    status = "AgentProjectStatus",
    shortname = "ap",
    category = "awooop",
    printcolumn = r#"{"name":"Revision","type":"integer","jsonPath":".spec.revision"}"#,
    printcolumn = r#"{"name":"Hash","type":"string","jsonPath":".status.hashPrefix"}"#,
    printcolumn = r#"{"name":"Mode","type":"string","jsonPath":".spec.mode"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct AgentProjectSpec {
    /// Project id (tenant) in AwoooP.
    pub project_id: String,
    /// Id of the active Project contract revision this object projects.
    pub revision_id: String,
    /// Revision number of that revision.
    pub revision: i32,
    /// `sha256:` hash of the revision's canonical body.
    pub body_hash: String,
    /// The project's migration mode (shadow, canary, read_only, suggest, auto_remediate).
    pub mode: String,
    /// Worker pool bounds for this project.
    pub workers: WorkerBounds,
}

/// Worker replicas are scaled between these bounds by the project's queue depth.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkerBounds {
    pub min_replicas: i32,
    pub max_replicas: i32,
    /// Queued runs per replica the autoscaler aims for.
    pub runs_per_replica: i32,
}

/// Observed state of a projected project.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AgentProjectStatus {
    /// Ready, Projected, SecretsResolved, WorkersReady.
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// The `metadata.generation` these conditions describe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Revision id last projected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub projected_revision_id: Option<String>,
    /// First 12 hex digits of the projected body hash (for printing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash_prefix: Option<String>,
    /// Worker replicas currently desired.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker_replicas: Option<i32>,
}

/// Desired state of a projected MCP grant: which agent may call which tools, where, with which
/// credential references (names of Secrets and keys, never values).
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "awooop.dev",
    version = "v1alpha1",
    kind = "McpGrant",
    namespaced,
    status = "McpGrantStatus",
    shortname = "mg",
    category = "awooop",
    printcolumn = r#"{"name":"Agent","type":"string","jsonPath":".spec.agent"}"#,
    printcolumn = r#"{"name":"Revision","type":"integer","jsonPath":".spec.revision"}"#,
    printcolumn = r#"{"name":"Hash","type":"string","jsonPath":".status.hashPrefix"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct McpGrantSpec {
    pub project_id: String,
    /// Agent the grant is for.
    pub agent: String,
    /// Exposed tool names `{provider}__{tool}`.
    pub tools: Vec<String>,
    /// Environments the grant is valid in.
    pub environments: Vec<String>,
    /// Secret references the gateway resolves for these tools.
    #[serde(default)]
    pub credential_refs: Vec<SecretKeyRef>,
    /// Id of the active MCP Gateway contract revision this grant comes from.
    pub revision_id: String,
    pub revision: i32,
    /// `sha256:` hash of that revision's canonical body.
    pub body_hash: String,
}

/// A key of a Secret in the operator's namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    pub name: String,
    pub key: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct McpGrantStatus {
    #[serde(default)]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash_prefix: Option<String>,
    /// Secret references that do not exist (names only, never values).
    #[serde(default)]
    pub missing_secret_refs: Vec<SecretKeyRef>,
}

/// The generated CRDs as YAML documents, by file name.
pub fn crd_files() -> Vec<(&'static str, String)> {
    use kube::CustomResourceExt;
    vec![
        (
            "agentprojects.awooop.dev.yaml",
            to_yaml(&AgentProject::crd()),
        ),
        ("mcpgrants.awooop.dev.yaml", to_yaml(&McpGrant::crd())),
    ]
}

fn to_yaml<T: Serialize>(v: &T) -> String {
    let body = serde_saphyr::to_string(v).expect("CRDs serialise to YAML");
    format!("# Generated by `awooop crdgen` from operator/k8s/src/crd.rs. Do not edit.\n{body}")
}
