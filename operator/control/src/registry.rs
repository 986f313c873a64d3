//! The tool registry of one project: the active MCP Gateway contract compiled for the hot path.
//!
//! Contract: tools are exposed as `{provider}__{tool}` (provider names never contain `__`, so
//! the split is unambiguous) and looked up by exact name; two tools exposing the same name are
//! rejected when the registry is compiled (and already when the contract is published). Every
//! tool's input schema is compiled once into a validator per revision; the registry is cached
//! by revision id, so a new activation yields a new registry and nothing else invalidates one.
//!
//! [`materialize`] projects the same revision into the `mcp_tools`, `mcp_grants` and
//! `mcp_credential_refs` tables inside the activating transaction.

use std::collections::{BTreeSet, HashMap};

use serde_json::{Map, Value, json};
use sqlx::PgConnection;
use uuid::Uuid;

use awooop_contracts::{CredentialSource, McpGatewayContract, McpProvider, RiskClass};
use awooop_core::error::{Error, ErrorCode, Result};
use awooop_core::migration::MigrationMode;

/// Default truncation limit of tool results, in characters.
pub const DEFAULT_MAX_RESULT_CHARS: usize = 16_384;

/// The exposed name of an upstream tool.
pub fn exposed_name(provider: &str, tool: &str) -> String {
    format!("{provider}__{tool}")
}

/// Split an exposed name into (provider, upstream tool). Providers never contain `__`, so the
/// first occurrence separates them.
pub fn split_exposed(name: &str) -> Option<(&str, &str)> {
    let (p, t) = name.split_once("__")?;
    (!p.is_empty() && !t.is_empty()).then_some((p, t))
}

/// One registered tool, compiled.
pub struct ToolEntry {
    pub exposed: String,
    /// Index into [`Registry::providers`].
    pub provider: usize,
    pub upstream_name: String,
    pub risk: RiskClass,
    pub environments: BTreeSet<String>,
    pub requires_approval: bool,
    pub enabled: bool,
    /// Modes in which a write/execute/destructive tool may be called (its feature flag);
    /// empty: none.
    pub enabled_in_modes: BTreeSet<MigrationMode>,
    /// The dry-run companion the real call needs evidence from.
    pub dry_run: Option<awooop_contracts::DryRun>,
    /// The exposed name of the tool that undoes this one.
    pub rollback_tool: Option<String>,
    pub max_result_chars: usize,
    pub input_schema: Value,
    /// The context domain of the tool's provider (`None`: unlabelled).
    pub context_domain: Option<String>,
    validator: jsonschema::Validator,
    /// The `tools/list` entry, built once.
    pub list_entry: Value,
}

impl std::fmt::Debug for ToolEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ToolEntry")
            .field("exposed", &self.exposed)
            .field("risk", &self.risk)
            .finish_non_exhaustive()
    }
}

impl ToolEntry {
    /// Validate arguments against the input schema; the violations as (JSON pointer, message).
    pub fn validate(&self, arguments: &Value) -> std::result::Result<(), Vec<(String, String)>> {
        if self.validator.is_valid(arguments) {
            return Ok(());
        }
        Err(self
            .validator
            .iter_errors(arguments)
            .take(20)
            .map(|e| (e.instance_path().to_string(), e.to_string()))
            .collect())
    }

    /// Whether the call needs an approval token: write and execute always (destructive too,
    /// when the project allows destructive tools at all), or when the tool says so.
    pub fn needs_approval(&self) -> bool {
        self.requires_approval || self.risk > RiskClass::ReadOnly
    }
}

/// The compiled registry of one MCP Gateway revision.
#[derive(Debug, Default)]
pub struct Registry {
    pub revision_id: Option<Uuid>,
    pub providers: Vec<McpProvider>,
    tools: HashMap<String, ToolEntry>,
    /// agent → exposed tool → environments (union of the agent's grants).
    grants: HashMap<String, HashMap<String, BTreeSet<String>>>,
    credential_refs: HashMap<String, CredentialSource>,
}

impl Registry {
    /// A registry with nothing registered: every call is denied (no active contract).
    pub fn empty() -> Self {
        Self::default()
    }

    pub fn compile(revision_id: Option<Uuid>, c: &McpGatewayContract) -> Result<Self> {
        let bad = |m: String| Error::new(ErrorCode::ContractSemantic, m);
        let mut providers = Vec::with_capacity(c.providers.len());
        let mut provider_index = HashMap::new();
        for p in &c.providers {
            if p.name.as_str().contains("__") {
                return Err(bad(format!("provider '{}' contains '__'", p.name.as_str())));
            }
            if provider_index
                .insert(p.name.as_str().to_string(), providers.len())
                .is_some()
            {
                return Err(bad(format!(
                    "provider '{}' is declared twice",
                    p.name.as_str()
                )));
            }
            providers.push(p.clone());
        }
        let mut tools = HashMap::with_capacity(c.tools.len());
        for t in &c.tools {
            let Some(&provider) = provider_index.get(t.provider.as_str()) else {
                return Err(bad(format!("tool '{}' names an unknown provider", t.name)));
            };
            let exposed = exposed_name(t.provider.as_str(), &t.name);
            let schema = Value::Object(t.input_schema.clone());
            let validator = awooop_contracts::tenant_schema::compile(&schema)
                .map_err(|_| bad(format!("tool '{exposed}' has an invalid input schema")))?;
            let mut annotations = Map::new();
            annotations.insert("readOnlyHint".into(), json!(t.risk == RiskClass::ReadOnly));
            annotations.insert(
                "destructiveHint".into(),
                json!(t.risk == RiskClass::Destructive),
            );
            let mut entry = Map::new();
            entry.insert("name".into(), json!(exposed));
            if let Some(d) = &t.description {
                entry.insert("description".into(), json!(d));
            }
            entry.insert("inputSchema".into(), schema.clone());
            entry.insert("annotations".into(), Value::Object(annotations));
            let e = ToolEntry {
                exposed: exposed.clone(),
                provider,
                upstream_name: t.name.clone(),
                risk: t.risk,
                environments: t.environments.iter().map(|s| s.0.clone()).collect(),
                requires_approval: t.requires_approval,
                enabled: t.enabled,
                enabled_in_modes: t
                    .enabled_in_modes
                    .iter()
                    .map(|m| MigrationMode::parse(m.as_str()))
                    .collect::<Result<_>>()?,
                dry_run: t.dry_run.clone(),
                rollback_tool: t.rollback_tool.as_ref().map(|r| r.0.clone()),
                max_result_chars: t
                    .max_result_chars
                    .map(|n| n as usize)
                    .unwrap_or(DEFAULT_MAX_RESULT_CHARS),
                input_schema: schema,
                context_domain: c.providers[provider]
                    .context_domain
                    .as_ref()
                    .map(|d| d.0.clone()),
                validator,
                list_entry: Value::Object(entry),
            };
            if tools.insert(exposed.clone(), e).is_some() {
                return Err(bad(format!("exposed tool name '{exposed}' collides")));
            }
        }
        let mut grants: HashMap<String, HashMap<String, BTreeSet<String>>> = HashMap::new();
        for g in &c.grants {
            let per_agent = grants.entry(g.agent.0.clone()).or_default();
            for t in &g.tools {
                per_agent
                    .entry(t.0.clone())
                    .or_default()
                    .extend(g.environments.iter().map(|e| e.0.clone()));
            }
        }
        let credential_refs = c
            .credential_refs
            .iter()
            .map(|r| (r.name.0.clone(), r.source.clone()))
            .collect();
        Ok(Self {
            revision_id,
            providers,
            tools,
            grants,
            credential_refs,
        })
    }

    /// Exact lookup of an exposed name.
    pub fn tool(&self, exposed: &str) -> Option<&ToolEntry> {
        self.tools.get(exposed)
    }

    pub fn tools(&self) -> impl Iterator<Item = &ToolEntry> {
        self.tools.values()
    }

    /// The environments `agent` is granted `tool` in, if any grant names it.
    pub fn grant(&self, agent: &str, exposed: &str) -> Option<&BTreeSet<String>> {
        self.grants.get(agent)?.get(exposed)
    }

    pub fn provider(&self, t: &ToolEntry) -> &McpProvider {
        &self.providers[t.provider]
    }

    pub fn credential_ref(&self, name: &str) -> Option<&CredentialSource> {
        self.credential_refs.get(name)
    }
}

fn source_kind(s: &CredentialSource) -> &'static str {
    match s {
        CredentialSource::KubernetesSecret { .. } => "kubernetes_secret",
        CredentialSource::Env { .. } => "env",
        CredentialSource::File { .. } => "file",
    }
}

fn risk_str(r: RiskClass) -> &'static str {
    match r {
        RiskClass::ReadOnly => "read_only",
        RiskClass::Write => "write",
        RiskClass::Execute => "execute",
        RiskClass::Destructive => "destructive",
    }
}

/// Project an MCP Gateway revision into the registry tables (inside the caller's tenant
/// transaction; idempotent per revision, so re-activating an old revision is a no-op).
pub async fn materialize(
    conn: &mut PgConnection,
    project: &str,
    revision_id: Uuid,
    c: &McpGatewayContract,
) -> Result<()> {
    check_grant_domains(conn, c).await?;
    for t in &c.tools {
        sqlx::query(
            "INSERT INTO mcp_tools (project_id, revision_id, exposed_name, provider, upstream_name, risk, \
             environments, requires_approval, enabled, max_result_chars, input_schema) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) ON CONFLICT DO NOTHING",
        )
        .bind(project)
        .bind(revision_id)
        .bind(exposed_name(t.provider.as_str(), &t.name))
        .bind(t.provider.as_str())
        .bind(&t.name)
        .bind(risk_str(t.risk))
        .bind(t.environments.iter().map(|e| e.0.clone()).collect::<Vec<_>>())
        .bind(t.requires_approval)
        .bind(t.enabled)
        .bind(
            t.max_result_chars
                .map(|n| n as i32)
                .unwrap_or(DEFAULT_MAX_RESULT_CHARS as i32),
        )
        .bind(Value::Object(t.input_schema.clone()))
        .execute(&mut *conn)
        .await?;
    }
    for g in &c.grants {
        for t in &g.tools {
            sqlx::query(
                "INSERT INTO mcp_grants (project_id, revision_id, agent, exposed_name, environments) \
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
            )
            .bind(project)
            .bind(revision_id)
            .bind(g.agent.as_str())
            .bind(&t.0)
            .bind(g.environments.iter().map(|e| e.0.clone()).collect::<Vec<_>>())
            .execute(&mut *conn)
            .await?;
        }
    }
    for r in &c.credential_refs {
        sqlx::query(
            "INSERT INTO mcp_credential_refs (project_id, revision_id, name, source_kind, source) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
        )
        .bind(project)
        .bind(revision_id)
        .bind(r.name.as_str())
        .bind(source_kind(&r.source))
        .bind(serde_json::to_value(&r.source).map_err(Error::internal)?)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// The context firewall at grant time: no grant may give an agent a tool of a domain it may
/// not read (`E-CONTEXT-001`, or `E-CONTEXT-003` when the project declares domains and the
/// tool or agent has none of them). Checked against the agents active now; an agent activated
/// later is still held by the same rule on every call (the gateway's gate 2).
pub async fn check_grant_domains(conn: &mut PgConnection, c: &McpGatewayContract) -> Result<()> {
    let rows: Vec<(String, String, Value)> = sqlx::query_as(
        "SELECT a.kind, a.name, r.body FROM active_revisions a \
         JOIN contract_revisions r USING (project_id, revision_id) \
         WHERE a.kind IN ('agent', 'project')",
    )
    .fetch_all(&mut *conn)
    .await?;
    let mut firewall = awooop_core::context::ContextFirewall::legacy();
    let mut domains: HashMap<String, String> = HashMap::new();
    for (kind, name, body) in rows {
        if kind == "project" {
            if let Ok(p) = serde_json::from_value::<awooop_contracts::ProjectContract>(body) {
                firewall = p.firewall();
            }
        } else if let Some(d) = body.get("context_domain").and_then(Value::as_str) {
            domains.insert(name, d.to_string());
        }
    }
    let provider_domain: HashMap<&str, Option<&str>> = c
        .providers
        .iter()
        .map(|p| {
            (
                p.name.as_str(),
                p.context_domain.as_ref().map(|d| d.as_str()),
            )
        })
        .collect();
    for g in &c.grants {
        let Some(agent_domain) = domains.get(g.agent.as_str()) else {
            continue;
        };
        for t in &g.tools {
            let Some((provider, _)) = split_exposed(&t.0) else {
                continue;
            };
            let item = provider_domain.get(provider).copied().flatten();
            if let Err(r) = firewall.may_read(g.agent.as_str(), agent_domain, item) {
                return Err(Error::new(
                    r.tool_code(),
                    "a grant gives an agent a tool of a context domain it may not read",
                )
                .with_details(json!({"agent": g.agent.as_str(), "tool": t.0, "agent_domain": agent_domain, "tool_domain": item})));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn contract() -> McpGatewayContract {
        serde_json::from_value(json!({
            "credential_refs": [{"name": "tok", "source": {"env": {"var": "TOK"}}}],
            "providers": [{"name": "k8s", "transport": {"type": "streamable_http", "url": "http://127.0.0.1:1/mcp"},
                           "credentials": [{"credential": "tok", "inject": {"type": "header", "name": "Authorization", "prefix": "Bearer "}}]}],
            "tools": [
                {"provider": "k8s", "name": "get_pods", "risk": "read_only", "environments": ["dev", "prod"],
                 "input_schema": {"type": "object", "properties": {"ns": {"type": "string"}}, "required": ["ns"], "additionalProperties": false}},
                {"provider": "k8s", "name": "a__b", "risk": "write", "environments": ["dev"],
                 "input_schema": {"type": "object"}}
            ],
            "grants": [
                {"agent": "triage", "tools": ["k8s__get_pods"], "environments": ["dev"]},
                {"agent": "triage", "tools": ["k8s__get_pods", "k8s__a__b"], "environments": ["prod"]}
            ]
        }))
        .unwrap()
    }

    #[test]
    fn names_and_reverse_lookup_are_exact() {
        assert_eq!(exposed_name("k8s", "get_pods"), "k8s__get_pods");
        assert_eq!(split_exposed("k8s__a__b"), Some(("k8s", "a__b")));
        assert_eq!(split_exposed("k8s__"), None);
        assert_eq!(split_exposed("nounderscore"), None);
        let r = Registry::compile(None, &contract()).unwrap();
        let t = r.tool("k8s__a__b").unwrap();
        assert_eq!(t.upstream_name, "a__b");
        assert_eq!(r.provider(t).name.as_str(), "k8s");
        assert!(r.tool("K8S__get_pods").is_none());
        assert!(r.tool("k8s__get_pods ").is_none());
        assert!(r.tool("k8s__get").is_none());
    }

    #[test]
    fn grants_union_environments() {
        let r = Registry::compile(None, &contract()).unwrap();
        let envs = r.grant("triage", "k8s__get_pods").unwrap();
        assert_eq!(
            envs.iter().map(String::as_str).collect::<Vec<_>>(),
            ["dev", "prod"]
        );
        assert!(r.grant("other", "k8s__get_pods").is_none());
    }

    #[test]
    fn collisions_and_bad_providers_are_rejected() {
        let mut c = contract();
        c.tools.push(c.tools[0].clone());
        assert!(Registry::compile(None, &c).is_err());
        let mut c = contract();
        c.tools[0].provider = awooop_contracts::Slug("nope".into());
        assert!(Registry::compile(None, &c).is_err());
    }

    #[test]
    fn arguments_are_validated() {
        let r = Registry::compile(None, &contract()).unwrap();
        let t = r.tool("k8s__get_pods").unwrap();
        assert!(t.validate(&json!({"ns": "default"})).is_ok());
        let errs = t.validate(&json!({"ns": 3, "extra": true})).unwrap_err();
        assert!(errs.len() >= 2, "{errs:?}");
        assert!(t.validate(&json!({})).is_err());
        assert!(t.validate(&json!("not an object")).is_err());
    }
}
