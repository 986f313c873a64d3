//! The six contracts as typed Rust structs.
//!
//! Every struct rejects unknown fields (`deny_unknown_fields`, which also becomes
//! `additionalProperties: false` in the generated JSON Schema). Field doc comments become schema
//! descriptions. Rules that a JSON Schema cannot express (cross references, uniqueness of names,
//! min <= max) live in [`super::rules`] and report JSON pointers like the schema does.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Pattern of a lowercase slug: project, agent, provider, environment and channel names.
pub const SLUG: &str = r"^[a-z][a-z0-9-]{0,62}$";
/// Pattern of an exposed tool name: `{provider}__{tool}`.
pub const TOOL_NAME: &str = r"^[a-z][a-z0-9-]{0,62}__[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$";
/// Pattern of a principal (user or service account) name.
pub const PRINCIPAL: &str = r"^[A-Za-z0-9._@-]{1,128}$";

/// A content-addressed artifact: a reference plus the SHA-256 of its bytes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ArtifactRef {
    /// Where the artifact is registered (`artifact_refs.artifact_ref`), e.g. `prompts/sre-triage`.
    #[serde(rename = "ref")]
    #[schemars(length(min = 1, max = 512))]
    pub reference: String,
    /// `sha256:` followed by 64 lowercase hex digits.
    #[schemars(pattern(r"^sha256:[0-9a-f]{64}$"))]
    pub sha256: String,
}

/// Where a credential value comes from. Contracts only ever hold references, never values.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum CredentialSource {
    /// A key of a Kubernetes Secret in the platform's namespace.
    KubernetesSecret {
        /// Secret name.
        #[schemars(pattern(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$"))]
        name: String,
        /// Key inside the Secret's data.
        #[schemars(pattern(r"^[-._a-zA-Z0-9]{1,253}$"))]
        key: String,
    },
    /// An environment variable of the gateway process (local runs).
    Env {
        /// Variable name.
        #[schemars(pattern(r"^[A-Z_][A-Z0-9_]{0,127}$"))]
        var: String,
    },
    /// A file readable by the gateway process (local runs, mounted Secrets).
    File {
        /// Absolute path.
        #[schemars(pattern(r"^/.{1,4095}$"))]
        path: String,
    },
}

/// Risk class of a tool, ordered from least to most dangerous.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum RiskClass {
    ReadOnly,
    Write,
    Execute,
    Destructive,
}

/// Data classification, ordered from least to most sensitive.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum DataClass {
    Public,
    Internal,
    Confidential,
    Restricted,
}

// ---------------------------------------------------------------------------------------------
// Project / Tenant

/// Project / Tenant contract: identity, data boundary, budget, ACL, channels and approval gates.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProjectContract {
    /// Human-readable name.
    #[schemars(length(min = 1, max = 200))]
    pub display_name: String,
    /// Free-text description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2000))]
    pub description: Option<String>,
    /// Which data classes the project may process and the default for unlabelled data.
    pub data_boundary: DataBoundary,
    /// Hard token/currency ceilings per period.
    pub budget: ProjectBudget,
    /// Who may publish and approve contracts of this project.
    pub acl: Acl,
    /// Activation approval policy (M of N distinct approvers within a TTL).
    pub approval: ApprovalPolicy,
    /// Environments tool grants may name (e.g. dev, staging, prod).
    #[schemars(length(min = 1, max = 16))]
    pub environments: Vec<Slug>,
    /// Names of channels (from the Channel contract) this project uses.
    #[serde(default)]
    pub channels: Vec<Slug>,
    /// Worker pool sizing for the operator's autoscaling.
    pub workers: WorkerScaling,
    /// Whether destructive tools may ever be called (still behind approval). Default false.
    #[serde(default)]
    pub allow_destructive_tools: bool,
    /// The context firewall: which context domains exist and who reads them. Absent: each
    /// agent reads its own domain and unlabelled context only (see docs/security.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<ContextPolicy>,
}

/// Context domains of a project. Declaring them turns the firewall's fail-closed regime on:
/// every agent's domain and every tool's domain must then be one of them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ContextPolicy {
    #[schemars(length(min = 1, max = 32))]
    pub domains: Vec<ContextDomain>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ContextDomain {
    /// Domain name (the `context_domain` of agents and MCP providers).
    pub name: Slug,
    /// Agents of other domains that may also read this domain's context (an agent always
    /// reads its own domain). Empty: nobody else.
    #[serde(default)]
    #[schemars(length(max = 64))]
    pub readers: Vec<Slug>,
}

impl ProjectContract {
    /// The firewall this contract declares (legacy regime when it declares none).
    pub fn firewall(&self) -> awooop_core::context::ContextFirewall {
        match &self.context {
            None => awooop_core::context::ContextFirewall::legacy(),
            Some(c) => awooop_core::context::ContextFirewall::declared(c.domains.iter().map(|d| {
                (
                    d.name.0.clone(),
                    d.readers.iter().map(|r| r.0.clone()).collect::<Vec<_>>(),
                )
            })),
        }
    }
}

/// A lowercase slug.
#[derive(
    Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(transparent)]
pub struct Slug(#[schemars(pattern(r"^[a-z][a-z0-9-]{0,62}$"))] pub String);

impl Slug {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DataBoundary {
    /// Classification applied to data that carries no label.
    pub default_class: DataClass,
    /// Classes the project may process at all.
    #[schemars(length(min = 1))]
    pub allowed_classes: Vec<DataClass>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum BudgetPeriod {
    Day,
    Month,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProjectBudget {
    /// Budget period; ledgers reset at its UTC boundary.
    pub period: BudgetPeriod,
    /// Hard ceiling of model tokens (prompt + output) per period.
    #[schemars(range(min = 1))]
    pub token_limit: u64,
    /// Hard ceiling of spend per period, in millionths of `currency`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub currency_limit_micros: Option<u64>,
    /// ISO 4217 currency code of `currency_limit_micros`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(r"^[A-Z]{3}$"))]
    pub currency: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Acl {
    /// Principals allowed to publish revisions (empty: any key with the publisher role).
    #[serde(default)]
    pub publishers: Vec<Principal>,
    /// Principals allowed to approve activations and tool-call approval requests (empty: any
    /// key with the approver role).
    #[serde(default)]
    pub approvers: Vec<Principal>,
    /// Chat users who act as an approver principal when they click Approve/Reject in a
    /// channel. A chat user not listed here never counts, whatever the chat says.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub chat_approvers: Vec<ChatApprover>,
}

/// A chat identity mapped to an approver principal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ChatApprover {
    /// Channel name (from the Channel contract).
    pub channel: Slug,
    /// The provider's user id (Telegram `from.id`, LINE `userId`, Slack `user.id`).
    #[schemars(length(min = 1, max = 256))]
    pub user: String,
    /// The principal the clicks count for (must also be in `approvers` when that is not empty).
    pub principal: Principal,
}

/// A principal name (user or service account).
#[derive(
    Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(transparent)]
pub struct Principal(#[schemars(pattern(r"^[A-Za-z0-9._@-]{1,128}$"))] pub String);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ApprovalPolicy {
    /// Distinct approvers needed to activate a revision (M of N).
    #[schemars(range(min = 1, max = 10))]
    pub required_approvals: u8,
    /// How long an approval stays valid, in seconds.
    #[schemars(range(min = 60, max = 2592000))]
    pub ttl_seconds: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkerScaling {
    /// Lower bound of worker replicas.
    #[schemars(range(max = 100))]
    pub min_replicas: u16,
    /// Upper bound of worker replicas.
    #[schemars(range(min = 1, max = 100))]
    pub max_replicas: u16,
    /// Queued runs per replica the autoscaler aims for.
    #[schemars(range(min = 1, max = 100000))]
    pub runs_per_replica: u32,
}

// ---------------------------------------------------------------------------------------------
// Agent

/// Agent contract: a versioned capability module with its I/O schemas, context domain, tools
/// and safety ceiling.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AgentContract {
    #[schemars(length(min = 1, max = 200))]
    pub display_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2000))]
    pub description: Option<String>,
    /// Context domain (e.g. `infra`, `business`): context of one domain is never given to an
    /// agent of another.
    pub context_domain: Slug,
    /// System prompt artifact.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt: Option<ArtifactRef>,
    /// JSON Schema artifact the run input must satisfy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_schema: Option<ArtifactRef>,
    /// JSON Schema artifact the final output must satisfy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_schema: Option<ArtifactRef>,
    /// Evaluation suites that gate promotion.
    #[serde(default)]
    pub evals: Vec<ArtifactRef>,
    /// Tools this agent may call, as exposed names `{provider}__{tool}`.
    #[serde(default)]
    pub tools: Vec<ToolName>,
    /// The safety ceiling: nothing the agent does may exceed it.
    pub safety: Safety,
    /// How runs of this agent are executed.
    pub executor: Executor,
}

/// An exposed tool name `{provider}__{tool}`.
#[derive(
    Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(transparent)]
pub struct ToolName(
    #[schemars(pattern(r"^[a-z][a-z0-9-]{0,62}__[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"))] pub String,
);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Safety {
    /// Highest risk class of tool the agent may ever call.
    pub max_risk: RiskClass,
    /// Maximum number of steps (model calls + tool calls) per run.
    #[schemars(range(min = 1, max = 1000))]
    pub max_steps: u16,
    /// Token ceiling per run.
    #[schemars(range(min = 1))]
    pub max_tokens_per_run: u64,
    /// Wall-clock ceiling per run, in seconds.
    #[schemars(range(min = 1, max = 86400))]
    pub timeout_seconds: u32,
}

/// How a run of the agent executes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Executor {
    /// A deterministic script of steps.
    Scripted {
        /// The steps, executed in order.
        #[schemars(length(min = 1, max = 1000))]
        steps: Vec<ScriptStep>,
    },
    /// Model-driven tool calling through the Policy/Routing contract's route.
    Llm {
        /// Route name in the active Policy/Routing contract.
        route: Slug,
    },
}

/// One step of a scripted agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ScriptStep {
    /// Produce output from a template (`{{input.field}}`, `{{steps.key.field}}`).
    Output {
        key: Slug,
        #[schemars(length(max = 65536))]
        template: String,
    },
    /// Call a tool through the MCP gateway.
    ToolCall {
        key: Slug,
        tool: ToolName,
        /// Arguments; string values may use templates.
        #[serde(default)]
        arguments: serde_json::Map<String, Value>,
        /// Keep going when the tool reports an error (`isError: true`); its result becomes the
        /// step's output. Default: the step fails with `E-TOOL-001`.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        continue_on_error: bool,
    },
    /// Pause in `waiting_approval` until an approval token arrives.
    WaitApproval {
        key: Slug,
        #[schemars(length(min = 1, max = 2000))]
        reason: String,
    },
}

impl ScriptStep {
    pub fn key(&self) -> &Slug {
        match self {
            ScriptStep::Output { key, .. }
            | ScriptStep::ToolCall { key, .. }
            | ScriptStep::WaitApproval { key, .. } => key,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// MCP Gateway

/// MCP Gateway contract: upstream providers, their tools, grants to agents and credential refs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct McpGatewayContract {
    /// Named credential references (values are resolved by the gateway at call time).
    #[serde(default)]
    pub credential_refs: Vec<CredentialRef>,
    /// Upstream MCP servers.
    #[serde(default)]
    pub providers: Vec<McpProvider>,
    /// Tools exposed as `{provider}__{tool}`.
    #[serde(default)]
    pub tools: Vec<McpTool>,
    /// Which agent may call which tools in which environments.
    #[serde(default)]
    pub grants: Vec<McpGrant>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CredentialRef {
    /// Name grants and providers use to refer to this credential.
    pub name: Slug,
    /// Where the value lives.
    pub source: CredentialSource,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct McpProvider {
    /// Provider name; the prefix of its exposed tools. Must not contain `__`.
    pub name: Slug,
    /// How to reach the upstream server.
    pub transport: McpTransport,
    /// Credentials injected into upstream requests.
    #[serde(default)]
    pub credentials: Vec<CredentialInjection>,
    /// Context domain of everything this provider produces: its tools, their results and the
    /// credentials injected for it. Agents of other domains can neither be granted nor call
    /// its tools (`E-CONTEXT-001`). Absent: unlabelled (refused when the project declares
    /// domains).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context_domain: Option<Slug>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum McpTransport {
    /// MCP Streamable HTTP. The URL carries no user information, query or fragment; the
    /// platform connects only where the administrator's egress policy allows.
    StreamableHttp {
        #[schemars(pattern(r"^https?://[^\s@?#\\]+$"))]
        url: String,
    },
    /// A child process speaking MCP over stdio: an entry of the platform's stdio catalog
    /// (command, arguments and allowed environment variables are the administrator's).
    Stdio {
        /// Catalog entry name (`awooop catalog list`).
        entry: Slug,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CredentialInjection {
    /// Name of a `credential_refs` entry.
    pub credential: Slug,
    /// Where the value goes in the upstream request.
    pub inject: Injection,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Injection {
    /// An HTTP header, optionally prefixed (e.g. `Bearer `).
    Header {
        #[schemars(pattern(r"^[A-Za-z0-9-]{1,128}$"))]
        name: String,
        #[serde(default)]
        #[schemars(length(max = 64))]
        prefix: String,
    },
    /// An environment variable of the stdio child process.
    Env {
        #[schemars(pattern(r"^[A-Z_][A-Z0-9_]{0,127}$"))]
        var: String,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct McpTool {
    /// Provider name.
    pub provider: Slug,
    /// Tool name as the upstream server knows it.
    #[schemars(pattern(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"))]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 4000))]
    pub description: Option<String>,
    /// Risk class, checked against the run's mode and the agent's ceiling.
    pub risk: RiskClass,
    /// Environments the tool may run in.
    #[schemars(length(min = 1))]
    pub environments: Vec<Slug>,
    /// Whether a call needs an approval token even when its risk class would not.
    #[serde(default)]
    pub requires_approval: bool,
    /// JSON Schema of the arguments (validated before anything goes upstream).
    pub input_schema: serde_json::Map<String, Value>,
    /// Truncation limit for results, in characters (default 16384).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 256, max = 1048576))]
    pub max_result_chars: Option<u32>,
    /// Disabled tools are invisible and uncallable.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Feature flag of write, execute and destructive tools: the migration modes in which the
    /// tool may be called at all. Empty (the default): blocked in every mode. Ignored for
    /// read-only tools. Turning a tool on is a contract change (publish + M-of-N activation).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub enabled_in_modes: Vec<ModeName>,
    /// A dry-run companion: the real call is refused unless a successful dry run with the same
    /// argument hash was recorded in the same run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dry_run: Option<DryRun>,
    /// The exposed name of the tool that undoes this one (shown in approval requests).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback_tool: Option<ToolName>,
}

/// A migration mode name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ModeName {
    Shadow,
    Canary,
    ReadOnly,
    Suggest,
    AutoRemediate,
}

impl ModeName {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Shadow => "shadow",
            Self::Canary => "canary",
            Self::ReadOnly => "read_only",
            Self::Suggest => "suggest",
            Self::AutoRemediate => "auto_remediate",
        }
    }
}

/// How a write tool is dry-run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum DryRun {
    /// Another tool (exposed name) called with the same arguments.
    Tool { tool: ToolName },
    /// The same tool called with this boolean argument set to true (the hash is taken over
    /// the arguments without it).
    Argument {
        #[schemars(pattern(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$"))]
        name: String,
    },
}

fn default_true() -> bool {
    true
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct McpGrant {
    /// Agent name (an Agent contract of the same project).
    pub agent: Slug,
    /// Exposed tool names granted.
    #[schemars(length(min = 1))]
    pub tools: Vec<ToolName>,
    /// Environments the grant is valid in.
    #[schemars(length(min = 1))]
    pub environments: Vec<Slug>,
}

// ---------------------------------------------------------------------------------------------
// Policy / Routing

/// Policy / Routing contract: model providers, routes with fallback, privacy gates and prices.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PolicyContract {
    #[schemars(length(min = 1))]
    pub providers: Vec<ModelProvider>,
    #[schemars(length(min = 1))]
    pub routes: Vec<Route>,
    /// Per-model prices, used for currency budgets.
    #[serde(default)]
    pub prices: Vec<ModelPrice>,
    /// Per-agent budget ceilings (inside the project's).
    #[serde(default)]
    pub agent_budgets: Vec<AgentBudget>,
    /// Circuit breaker per provider.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub circuit_breaker: Option<CircuitBreaker>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ProviderApi {
    /// OpenAI-compatible Chat Completions (also vLLM, LiteLLM, Ollama's compatible endpoint).
    OpenaiChat,
    /// Anthropic Messages API.
    AnthropicMessages,
    /// Ollama's native chat API.
    OllamaChat,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ModelProvider {
    pub name: Slug,
    pub api: ProviderApi,
    /// No user information, query or fragment; reachable only where the administrator's
    /// egress policy allows.
    #[schemars(pattern(r"^https?://[^\s@?#\\]+$"))]
    pub base_url: String,
    /// API key reference, if the provider needs one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key: Option<CredentialSource>,
    /// Whether the provider runs on infrastructure the operator controls.
    #[serde(default)]
    pub self_hosted: bool,
    /// Data classes this provider may receive.
    #[schemars(length(min = 1))]
    pub privacy_classes: Vec<DataClass>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Route {
    pub name: Slug,
    /// Agents using this route by default (empty: the project's default route).
    #[serde(default)]
    pub agents: Vec<Slug>,
    /// Ordered targets: the first is primary, the rest are fallbacks.
    #[schemars(length(min = 1, max = 16))]
    pub targets: Vec<RouteTarget>,
    /// Retries per target before falling back.
    #[serde(default)]
    #[schemars(range(max = 10))]
    pub retries: u8,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteTarget {
    pub provider: Slug,
    #[schemars(length(min = 1, max = 200))]
    pub model: String,
    #[schemars(range(min = 1, max = 1000000))]
    pub max_output_tokens: u32,
    #[schemars(range(min = 100, max = 600000))]
    pub timeout_ms: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ModelPrice {
    pub provider: Slug,
    #[schemars(length(min = 1, max = 200))]
    pub model: String,
    /// Price per million input tokens, in micro-units of the project's currency.
    pub input_micros_per_mtok: u64,
    /// Price per million output tokens, in micro-units of the project's currency.
    pub output_micros_per_mtok: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AgentBudget {
    pub agent: Slug,
    #[schemars(range(min = 1))]
    pub token_limit: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub currency_limit_micros: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CircuitBreaker {
    #[schemars(range(min = 1, max = 1000))]
    pub failure_threshold: u32,
    #[schemars(range(min = 1, max = 86400))]
    pub cooldown_seconds: u32,
}

// ---------------------------------------------------------------------------------------------
// Runtime / Run State

/// Runtime / Run State contract: leases, attempts, deadlines, idempotency and retention.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RuntimeContract {
    /// Attempts before a run fails for good.
    #[schemars(range(min = 1, max = 20))]
    pub max_attempts: u8,
    /// Lease length; a worker that misses heartbeats this long loses the run.
    #[schemars(range(min = 2, max = 3600))]
    pub lease_seconds: u32,
    /// Heartbeat interval (must be shorter than the lease).
    #[schemars(range(min = 1, max = 3600))]
    pub heartbeat_seconds: u32,
    /// Hard deadline of one run, even for a worker that still heartbeats.
    #[schemars(range(min = 1, max = 604800))]
    pub run_deadline_seconds: u32,
    /// How long idempotency keys are remembered.
    #[schemars(range(min = 60, max = 2592000))]
    pub idempotency_ttl_seconds: u32,
    /// Days finished runs are kept.
    #[schemars(range(min = 1, max = 3650))]
    pub retention_days: u16,
    /// Runs of this project executing at once, across workers.
    #[schemars(range(min = 1, max = 100000))]
    pub max_concurrent_runs: u32,
    /// Largest accepted run input, in bytes.
    #[schemars(range(min = 1, max = 10485760))]
    pub max_input_bytes: u32,
}

// ---------------------------------------------------------------------------------------------
// Communication / Channel Event

/// Communication / Channel Event contract: channels, their verification secrets and behaviour.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ChannelContract {
    #[schemars(length(min = 1, max = 64))]
    pub channels: Vec<Channel>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
#[derive(strum::IntoStaticStr, strum::EnumString, strum::VariantArray)]
#[strum(serialize_all = "snake_case")]
pub enum ChannelProvider {
    Telegram,
    Line,
    Slack,
    Email,
    Api,
}

impl ChannelProvider {
    /// The provider's name as the contract spells it (metrics `provider` label, logs).
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Channel {
    pub name: Slug,
    pub provider: ChannelProvider,
    /// Agent that handles inbound events.
    pub agent: Slug,
    /// Webhook verification secret (required for every provider except `api`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify_secret: Option<CredentialSource>,
    /// Outbound credential (bot token etc.).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub send_credential: Option<CredentialSource>,
    /// Seconds between progress updates of a long run (0 disables them).
    #[serde(default = "default_progress")]
    #[schemars(range(max = 3600))]
    pub progress_interval_seconds: u32,
    /// Chats/users allowed to talk to the agent (empty: everyone the provider verifies).
    #[serde(default)]
    pub allowed_senders: Vec<String>,
    /// Whether the platform may send messages to this channel at all.
    #[serde(default)]
    pub outbound: bool,
    /// Mirror mode (strangler fig): the existing bot handler's webhook URL. While the project
    /// is in shadow mode the hub forwards each verified webhook to it unchanged and returns its
    /// answer to the provider; the event is also mirrored into a shadow run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 8, max = 2048), pattern(r"^https?://[^\s]+$"))]
    pub forward_to: Option<String>,
    /// Which conversations get real messages while the project is in canary mode. Absent: none
    /// (the channel stays with the existing handler); present with no conversations: all of
    /// this channel's conversations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<ChannelCanary>,
    /// How many earlier events of the conversation (its messages and the replies sent, on
    /// this project's channels) an LLM agent started from this channel gets before the new
    /// message (0, the default: none). The context firewall applies: events of a channel whose
    /// agent is of a domain this agent may not read are never read for it.
    #[serde(default, skip_serializing_if = "is_zero_u16")]
    #[schemars(range(max = 50))]
    pub history_events: u16,
}

fn is_zero_u16(n: &u16) -> bool {
    *n == 0
}

/// Canary selection of a channel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ChannelCanary {
    /// Conversation/chat ids that get replies in canary mode (empty: every conversation).
    #[serde(default)]
    #[schemars(length(max = 1000))]
    pub conversations: Vec<String>,
}

fn default_progress() -> u32 {
    30
}
