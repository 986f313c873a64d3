//! The gateway pipeline: identity → five gates → argument validation → approval → credentials
//! → upstream → redaction and truncation → audit. Used by the `/mcp` endpoint and, in process,
//! by the runtime's [`awooop_runtime::executor::ToolGateway`].
//!
//! Hot path: the facts the gates need (project status and mode, destructive flag, the compiled
//! registry of the active MCP Gateway revision, the active Agent contracts) are one snapshot
//! per project, loaded in one tenant transaction and cached for `cache_ttl` in a
//! [`TtlCache`] (every change of its inputs invalidates it through `LISTEN awooop_activation`,
//! and a gap in listening drops every snapshot: see [`Gateway::spawn_invalidation`]; in the last
//! quarter of the TTL one reload starts in the background while every caller keeps the valid
//! snapshot, so no caller waits for a reload while a valid snapshot exists); the compiled
//! registry (with its JSON
//! Schema validators) is reused as long as the active revision id is unchanged. Audit rows are
//! batched off the request path ([`super::audit`]).

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::approval;
use super::audit::{CallAudit, CallRecord};
use super::credentials::{CredentialResolver, SecretValue};
use super::gates::{self, AgentState, CallerView, ProjectState};
use super::keys::GatewayKeys;
use super::registry::Registry;
use super::sanitize;
use awooop_contracts::{self as contracts, ContractKind, Injection, McpProvider};
use awooop_control::MigrationMode;
use awooop_control::invalidation::Invalidation;
// The snapshot cache is the channel hub's (single flight, refresh ahead in the background in
// the last quarter of the TTL, never served past it, invalidation detaches loads in flight).
use awooop_core::cache::TtlCache;
use awooop_core::context::ContextFirewall;
use awooop_core::error::{Error, ErrorCode, Result};
use awooop_core::ratelimit::KeyedLimiter;
use awooop_core::redact::ExactSecrets;
use awooop_runtime::TraceContext;
use awooop_store::auth::{self, Role};
use awooop_store::coord::Coord;
use awooop_store::tenancy::{self, Db, ProjectId};

/// The identity of a caller, fixed by its credential.
#[derive(Debug, Clone, PartialEq)]
pub struct Caller {
    pub project: ProjectId,
    pub agent: String,
    pub run_id: Option<Uuid>,
    pub environment: String,
    /// The run's mode (per-run tokens); `None`: the project's mode.
    pub mode: Option<MigrationMode>,
}

/// A credential resolved for one call: the ref's name (audited), where it goes, its value.
#[derive(Clone)]
pub struct ResolvedCredential {
    pub name: String,
    pub inject: Injection,
    pub value: SecretValue,
}

/// A credential value resolved for one call, and where it goes (header or child env var).
/// `Debug` prints `<redacted>`; the value is never logged.
#[derive(Clone)]
pub struct Injected {
    pub inject: Injection,
    pub value: String,
}

impl std::fmt::Debug for Injected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Injected")
            .field("inject", &self.inject)
            .field("value", &"<redacted>")
            .finish()
    }
}

pub struct CallRequest<'a, C = Injected> {
    pub project: &'a ProjectId,
    /// The provider entry of the project's active MCP Gateway contract (transport config).
    pub provider: &'a McpProvider,
    /// The upstream's own tool name (not the exposed `{provider}__{tool}`).
    pub tool: &'a str,
    pub arguments: &'a serde_json::Map<String, serde_json::Value>,
    /// [`Injected`] (values exposed) for the upstream client, [`ResolvedCredential`]
    /// (values still wrapped) on the gateway core's side of the port.
    pub credentials: &'a [C],
    /// W3C traceparent to forward upstream (HTTP header `traceparent`; `_meta` for stdio).
    pub traceparent: Option<&'a str>,
    /// Stable per run step: every attempt of the same step sends the same key.
    pub idempotency_key: Option<&'a str>,
    pub timeout: Duration,
}

/// The upstream's MCP `CallToolResult` as JSON (`content`, `structuredContent`, `isError`),
/// unmodified: redaction and truncation are the gateway core's job.
pub type CallResult = serde_json::Value;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum UpstreamError {
    #[error("upstream timed out")]
    Timeout,
    #[error("upstream unavailable: {0}")]
    Unavailable(String),
    #[error("upstream protocol error: {0}")]
    Protocol(String),
    /// A JSON-RPC error returned by the upstream. Its message may echo secrets: the gateway
    /// core redacts it before it goes anywhere.
    #[error("upstream error {code}: {message}")]
    Rpc { code: i64, message: String },
    /// The platform policy refuses the upstream (egress policy, stdio catalog). The message
    /// names only the tenant's own configuration.
    #[error("{message}")]
    Refused { code: ErrorCode, message: String },
}

/// One upstream call as the gateway core hands it to the port: credentials not yet exposed.
pub type UpstreamCall<'a> = CallRequest<'a, ResolvedCredential>;

/// The MCP client toward upstream tool servers (implemented by `gateway::upstream`).
#[async_trait]
pub trait ToolUpstream: Send + Sync {
    async fn call_tool(&self, call: UpstreamCall<'_>) -> std::result::Result<Value, UpstreamError>;
}

#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// How long a project snapshot (status, mode, registry, agents) is reused. Every change of
    /// its inputs notifies and drops it at once (see [`Gateway::spawn_invalidation`]), so this
    /// only bounds staleness when the listener's connection hangs without failing.
    pub cache_ttl: Duration,
    /// How long `/mcp` reuses a run's liveness for a token bound to it: a run that ends stops
    /// its token within it (a run's end is not notified to the gateway).
    pub run_liveness_ttl: Duration,
    pub upstream_timeout: Duration,
    /// Tool calls per minute per (project, agent); 0 disables the limit.
    pub rate_per_minute: u32,
    /// The environment of runs executed by this process's workers.
    pub runtime_environment: String,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            cache_ttl: Duration::from_secs(30),
            run_liveness_ttl: Duration::from_secs(1),
            upstream_timeout: Duration::from_secs(30),
            rate_per_minute: 60_000,
            runtime_environment: "dev".into(),
        }
    }
}

struct Snapshot {
    project: Option<ProjectState>,
    registry: Arc<Registry>,
    agents: HashMap<String, AgentState>,
}

/// API keys verified and held at most (more keys than this in one TTL: all dropped).
const MAX_CACHED_KEYS: usize = 100_000;

pub struct Gateway {
    db: Db,
    coord: Coord,
    keys: GatewayKeys,
    creds: CredentialResolver,
    upstream: Arc<dyn ToolUpstream>,
    audit: CallAudit,
    config: GatewayConfig,
    snapshots: TtlCache<ProjectId, Snapshot, Error>,
    /// API keys verified: (project named in the key, SHA-256 of the key) → its runner binding,
    /// if it is a runner key. Same rules as the snapshots: a revocation (or the project's
    /// status change) notifies and drops the project's verdicts at once.
    api_keys: TtlCache<(ProjectId, [u8; 32]), Option<auth::KeyBinding>, Error>,
    /// Tool calls per (project, agent) per minute (idle keys evicted).
    rate: KeyedLimiter<(ProjectId, String)>,
    /// Digest of a call's credential values → their compiled exact-value redactor.
    exact: RwLock<HashMap<[u8; 32], Arc<ExactSecrets>>>,
    /// Run tokens and session ids already verified with `keys` (see its contract).
    verified: super::tokens::VerifiedTokens,
}

/// A sanitized result as the caller asked for it.
enum Out {
    Value(Value),
    /// The result's JSON text inside its [`Frame`].
    Json(String),
}

/// The text around a result [`Gateway::call_tool_json`] writes: `head`, the result's JSON
/// text, `tail`.
#[derive(Clone, Copy)]
pub struct Frame<'a> {
    pub head: &'a str,
    pub tail: &'a str,
}

/// `_meta` key carrying an approval token in `tools/call`.
pub const APPROVAL_META_KEY: &str = "awooop.dev/approval";

struct Attempt<'a> {
    caller: &'a Caller,
    /// The tool as audited: its exposed name when registered; otherwise only a digest of what
    /// the caller sent (free text chosen by a caller never lands in the audit).
    tool: String,
    trace: &'a TraceContext,
    started: Instant,
    bytes_in: i64,
}

impl Gateway {
    pub fn new(
        db: Db,
        coord: Coord,
        keys: GatewayKeys,
        creds: CredentialResolver,
        upstream: Arc<dyn ToolUpstream>,
        audit: CallAudit,
        config: GatewayConfig,
    ) -> Self {
        let rate = KeyedLimiter::per_minute(config.rate_per_minute);
        let verified = super::tokens::VerifiedTokens::new(&keys);
        let snapshots = TtlCache::new(config.cache_ttl);
        let api_keys = TtlCache::bounded(config.cache_ttl, MAX_CACHED_KEYS);
        Self {
            api_keys,
            verified,
            db,
            coord,
            keys,
            creds,
            upstream,
            audit,
            config,
            snapshots,
            rate,
            exact: RwLock::new(HashMap::new()),
        }
    }

    pub fn keys(&self) -> &GatewayKeys {
        &self.keys
    }

    /// Caller credentials (run tokens, session ids) verified with this gateway's keys.
    pub fn verified(&self) -> &super::tokens::VerifiedTokens {
        &self.verified
    }

    pub fn db(&self) -> &Db {
        &self.db
    }

    pub fn config(&self) -> &GatewayConfig {
        &self.config
    }

    pub fn audit(&self) -> &CallAudit {
        &self.audit
    }

    pub fn credentials(&self) -> &CredentialResolver {
        &self.creds
    }

    /// Forget cached snapshots and API key verdicts (of one project, or all).
    pub fn invalidate(&self, project: Option<&ProjectId>) {
        match project {
            Some(p) => {
                self.snapshots.invalidate(|k| k == p);
                self.api_keys.invalidate(|(k, _)| k == p);
            }
            None => {
                self.snapshots.clear();
                self.api_keys.clear();
            }
        }
    }

    /// An API key's project and, for a runner key, its binding (`None`: not a runner key).
    /// Verified against PostgreSQL once per key at a time and cached like the snapshots; a
    /// revocation takes effect when its notice arrives (migration 0079), or within the TTL if
    /// the listener's connection hangs. Invalid keys are not kept.
    pub async fn api_key(&self, token: &str) -> Result<(ProjectId, Option<auth::KeyBinding>)> {
        let project = auth::parse_api_key(token)?.project;
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let verdict = self
            .api_keys
            .get(&(project.clone(), digest), || {
                let (db, token) = (self.db.clone(), token.to_string());
                async move {
                    let (_, actor, binding) = auth::verify_api_key_bound(&db, &token).await?;
                    // Only keys with the runner role carry a binding.
                    Ok(binding.filter(|_| actor.require(Role::Runner).is_ok()))
                }
            })
            .await
            .map_err(Error::unshare)?;
        Ok((project, (*verdict).clone()))
    }

    /// Invalidate snapshots on every activation, mode change or project status change
    /// (`LISTEN awooop_activation`), and all of them whenever the listener was not listening
    /// ([`awooop_control::invalidation::follow`]); the TTL bounds staleness only if its
    /// connection hangs without failing.
    pub fn spawn_invalidation(
        self: &Arc<Self>,
        db: &awooop_store::tenancy::Db,
    ) -> tokio::task::JoinHandle<()> {
        let gw = Arc::downgrade(self);
        awooop_control::invalidation::follow(db, move |inv| {
            let Some(gw) = gw.upgrade() else {
                return false;
            };
            gw.apply(&inv);
            true
        })
    }

    /// Drop what an invalidation names: one project's snapshot and key verdicts, or all.
    pub fn apply(&self, inv: &Invalidation) {
        match inv {
            Invalidation::Project(p) => self.invalidate(Some(p)),
            Invalidation::All => self.invalidate(None),
        }
    }

    /// The project's snapshot: cached while valid; else the one load in flight for the project,
    /// else a new one. In the last quarter of the TTL the reload runs in the background and
    /// this caller keeps the valid snapshot (before, the first caller to see it there reloaded
    /// it in its own request: one call per TTL per project paid a tenant transaction, 5–17 ms,
    /// seen as the longest requests of warm runs). The load runs in a task of its own, so the
    /// tool call's future holds only the cache's handle on it (`the_tool_call_future_stays_small`).
    async fn snapshot(&self, project: &ProjectId) -> Result<Arc<Snapshot>> {
        self.snapshots
            .get(project, || {
                // Called under the cache's lock: only build the future (which peeks).
                let (db, cache, p) = (self.db.clone(), self.snapshots.clone(), project.clone());
                tenancy::scope(project.clone(), async move {
                    // A compiled registry whose revision is still active is reused.
                    let previous = cache.peek(&p).map(|s| s.registry.clone());
                    // A reload ahead of expiry has no caller to see its error: log it (the
                    // valid snapshot stays in use and the next caller in the window retries).
                    load_snapshot(db, previous).await.inspect_err(|e| {
                        tracing::warn!(code = e.code.as_str(), "snapshot load failed")
                    })
                })
            })
            .await
            .map_err(Error::unshare)
    }
}

/// One tenant transaction: project row, mode, active gateway and agent revisions.
async fn load_snapshot(db: Db, previous: Option<Arc<Registry>>) -> Result<Snapshot> {
    let mut tx = db.tenant().await?;
    let row: Option<(String, bool, Option<String>)> = sqlx::query_as(
        "SELECT p.status, p.allow_destructive, m.mode FROM projects p \
             LEFT JOIN project_migration_state m USING (project_id)",
    )
    .fetch_optional(&mut *tx)
    .await?;
    let revisions: Vec<(String, String, Uuid, Value)> = sqlx::query_as(
            "SELECT a.kind, a.name, a.revision_id, r.body FROM active_revisions a \
             JOIN contract_revisions r USING (project_id, revision_id) \
             WHERE (a.kind = 'mcp_gateway' AND a.name = 'default') OR a.kind IN ('agent', 'project')",
        )
        .fetch_all(&mut *tx)
        .await?;
    tx.commit().await?;
    let project = match row {
        Some((status, allow_destructive, mode)) => Some(ProjectState {
            active: status == "active",
            // A project without a recorded mode is treated as shadow: the safest mode.
            mode: mode
                .as_deref()
                .map(MigrationMode::parse)
                .transpose()?
                .unwrap_or(MigrationMode::Shadow),
            allow_destructive,
            firewall: ContextFirewall::legacy(),
        }),
        None => None,
    };
    let mut registry = None;
    let mut agents = HashMap::new();
    let mut firewall = ContextFirewall::legacy();
    for (kind, name, revision_id, body) in revisions {
        let kind = ContractKind::parse(&kind)?;
        let parsed = contracts::validate(kind, &body).map_err(contracts::violations_error)?;
        match parsed {
            contracts::Contract::McpGateway(g) => {
                registry = Some(match &previous {
                    Some(r) if r.revision_id == Some(revision_id) => r.clone(),
                    _ => Arc::new(Registry::compile(Some(revision_id), &g)?),
                });
            }
            contracts::Contract::Agent(a) => {
                agents.insert(
                    name,
                    AgentState {
                        tools: a.tools.into_iter().map(|t| t.0).collect(),
                        max_risk: a.safety.max_risk,
                        domain: a.context_domain.0,
                    },
                );
            }
            contracts::Contract::Project(p) => firewall = p.firewall(),
            _ => {}
        }
    }
    let project = project.map(|p| ProjectState { firewall, ..p });
    Ok(Snapshot {
        project,
        registry: registry.unwrap_or_else(|| Arc::new(Registry::empty())),
        agents,
    })
}

impl Gateway {
    fn view<'a>(caller: &'a Caller) -> CallerView<'a> {
        CallerView {
            agent: &caller.agent,
            environment: &caller.environment,
            mode: caller.mode,
        }
    }

    /// `tools/list`: the tools the five gates would let this caller call.
    pub async fn list_tools(&self, caller: &Caller) -> Result<Vec<Value>> {
        let s = self.snapshot(&caller.project).await?;
        Ok(gates::visible(
            Self::view(caller),
            s.project.as_ref(),
            s.agents.get(&caller.agent),
            &s.registry,
        )
        .into_iter()
        .map(|t| t.list_entry.clone())
        .collect())
    }

    fn rate_ok(&self, caller: &Caller) -> bool {
        self.rate
            .check(&(caller.project.clone(), caller.agent.clone()))
    }

    async fn audit_row(
        &self,
        a: &Attempt<'_>,
        mode: Option<MigrationMode>,
        refs: Vec<String>,
        outcome: Outcome,
    ) {
        self.audit
            .record(Self::call_record(a, mode, refs, outcome))
            .await;
    }

    fn call_record(
        a: &Attempt<'_>,
        mode: Option<MigrationMode>,
        refs: Vec<String>,
        outcome: Outcome,
    ) -> CallRecord {
        let Outcome {
            code,
            status,
            bytes_out,
            truncated,
            details,
        } = outcome;
        let denied = status == "denied";
        CallRecord {
            project: a.caller.project.clone(),
            call_id: Uuid::now_v7(),
            at: chrono::Utc::now(),
            trace_id: a.trace.trace_id.clone(),
            run_id: a.caller.run_id,
            agent: a.caller.agent.clone(),
            tool: a.tool.clone(),
            environment: a.caller.environment.clone(),
            mode: mode.or(a.caller.mode).map_or("unknown", |m| m.as_str()),
            credential_refs: refs,
            decision: if denied { "denied" } else { "allowed" },
            code: code.map(|c| c.as_str()),
            result_status: status,
            latency_us: a.started.elapsed().as_micros() as i64,
            bytes_in: a.bytes_in,
            bytes_out: bytes_out as i64,
            truncated,
            details,
        }
    }

    async fn deny(&self, a: &Attempt<'_>, mode: Option<MigrationMode>, e: Error) -> Error {
        self.audit_row(a, mode, vec![], Outcome::denied(&e)).await;
        e
    }

    /// `tools/call` through every gate. Returns the sanitized `CallToolResult`.
    pub async fn call_tool(
        &self,
        caller: &Caller,
        tool: &str,
        arguments: Option<Value>,
        approval_token: Option<&str>,
        trace: &TraceContext,
    ) -> Result<Value> {
        self.call_tool_with(caller, tool, arguments, approval_token, None, trace)
            .await
    }

    /// [`Self::call_tool`] with the call's idempotency key: sent upstream (`_meta` and the
    /// `Idempotency-Key` header), and the one intent an approval token may be spent on (a
    /// re-send of the same intent after a crash is not a replay).
    pub async fn call_tool_with(
        &self,
        caller: &Caller,
        tool: &str,
        arguments: Option<Value>,
        approval_token: Option<&str>,
        idempotency_key: Option<&str>,
        trace: &TraceContext,
    ) -> Result<Value> {
        let out = self
            .call_tool_out(
                caller,
                tool,
                arguments,
                approval_token,
                idempotency_key,
                trace,
                None,
            )
            .await?;
        Ok(match out {
            Out::Value(v) => v,
            Out::Json(s) => serde_json::from_str(&s).map_err(Error::internal)?,
        })
    }

    /// [`Self::call_tool_with`] returning the sanitized `CallToolResult` as compact JSON text
    /// inside `frame` (`/mcp`'s JSON-RPC envelope), which is sent as is: the result is
    /// serialised once, straight into the response's buffer, and the audited `bytes_out` is
    /// the result's text length without the frame (the same number [`json_len`] counts).
    #[allow(clippy::too_many_arguments)]
    pub async fn call_tool_json(
        &self,
        caller: &Caller,
        tool: &str,
        arguments: Option<Value>,
        approval_token: Option<&str>,
        idempotency_key: Option<&str>,
        trace: &TraceContext,
        frame: Frame<'_>,
    ) -> Result<String> {
        let out = self
            .call_tool_out(
                caller,
                tool,
                arguments,
                approval_token,
                idempotency_key,
                trace,
                Some(frame),
            )
            .await?;
        Ok(match out {
            Out::Json(s) => s,
            Out::Value(v) => format!("{}{v}{}", frame.head, frame.tail),
        })
    }

    #[allow(clippy::too_many_arguments)]
    async fn call_tool_out(
        &self,
        caller: &Caller,
        tool: &str,
        arguments: Option<Value>,
        approval_token: Option<&str>,
        idempotency_key: Option<&str>,
        trace: &TraceContext,
        as_json: Option<Frame<'_>>,
    ) -> Result<Out> {
        let arguments = arguments.unwrap_or_else(|| json!({}));
        let s = self.snapshot(&caller.project).await?;
        let audited_tool = if s.registry.tool(tool).is_some() {
            tool.to_string()
        } else {
            use sha2::{Digest, Sha256};
            format!(
                "unregistered:sha256:{}",
                &hex::encode(Sha256::digest(tool.as_bytes()))[..16]
            )
        };
        let a = Attempt {
            caller,
            tool: audited_tool,
            trace,
            started: Instant::now(),
            bytes_in: json_len(&arguments) as i64,
        };
        let allowed = match gates::decide(
            Self::view(caller),
            s.project.as_ref(),
            s.agents.get(&caller.agent),
            &s.registry,
            tool,
        ) {
            Ok(x) => x,
            Err(d) if s.project.is_none() => {
                // No such project: there is no tenant to write an audit row into (its audit
                // table is keyed by existing projects); the refusal goes to the log.
                tracing::info!(code = d.code.as_str(), trace_id = %trace.trace_id, "tool call for an unknown project refused");
                return Err(Error::new(d.code, d.reason));
            }
            Err(d) => {
                let mode = s
                    .project
                    .as_ref()
                    .map(|p| gates::effective_mode(p.mode, caller.mode));
                return Err(self.deny(&a, mode, Error::new(d.code, d.reason)).await);
            }
        };
        let mode = Some(allowed.mode);
        let t = allowed.tool;
        if !self.rate_ok(caller) {
            let e = Error::new(
                ErrorCode::McpGateRateLimited,
                "tool-call rate limit exceeded",
            );
            return Err(self.deny(&a, mode, e).await);
        }
        // Arguments are validated before anything goes upstream.
        let violations = t.validate(&arguments).err();
        let args = match arguments {
            Value::Object(m) if violations.is_none() => m,
            _ => {
                let violations = violations.unwrap_or_default();
                let details: Vec<Value> = violations
                    .iter()
                    .map(|(path, msg)| {
                        json!({"path": path, "message": awooop_core::redact::Redactor::global().redact_str(msg)})
                    })
                    .collect();
                let e = Error::new(
                    ErrorCode::McpGateArgumentsInvalid,
                    "arguments do not match the tool's input schema",
                )
                .with_details(json!({"violations": details}));
                return Err(self.deny(&a, mode, e).await);
            }
        };
        // Dry-run evidence: a tool with a dry-run companion needs a successful dry run with the
        // same argument hash in the same run before the real call (and before an approval is
        // even asked for, so approvers see the dry run's result).
        let need = super::evidence::needed(t, &args);
        // A dry run through the tool's own dry-run argument changes nothing by the tool's
        // contract: it needs no approval (the real call will, with this evidence shown).
        let is_dry_run = need == super::evidence::Need::IsDryRun;
        let evidence = match need {
            super::evidence::Need::None | super::evidence::Need::IsDryRun => None,
            super::evidence::Need::Evidence { args_sha256 } => {
                match Box::pin(self.dry_run_evidence(caller, t, &args_sha256)).await {
                    Ok(Some(ev)) => Some(ev),
                    Ok(None) => {
                        let e = Error::new(
                            ErrorCode::McpGateDryRunMissing,
                            "no successful dry run with these arguments was recorded in this run",
                        )
                        .with_details(json!({"args_sha256": args_sha256}));
                        return Err(self.deny(&a, mode, e).await);
                    }
                    Err(e) => return Err(e),
                }
            }
        };
        // Gate 5: approval, last, so a token is only consumed by a call that will go upstream.
        let mut approver = None;
        if allowed.needs_approval && !is_dry_run {
            let Some(token) = approval_token else {
                // What an approval request shows: the argument hash, the dry-run evidence and
                // the rollback plan.
                let e = Error::new(
                    ErrorCode::McpGateApprovalMissing,
                    "this tool needs an approval token (_meta \"awooop.dev/approval\")",
                )
                .with_details(json!({
                    "args_sha256": approval::arguments_hash(&Value::Object(args.clone())),
                    "dry_run": evidence,
                    "rollback_tool": t.rollback_tool,
                    "risk": format!("{:?}", t.risk).to_lowercase(),
                }));
                return Err(self.deny(&a, mode, e).await);
            };
            match Box::pin(self.check_approval(caller, tool, &args, token, idempotency_key)).await {
                Ok(who) => approver = Some(who),
                Err(e) => return Err(self.deny(&a, mode, e).await),
            }
        }
        // Credentials: resolved now, injected only into the upstream request.
        let provider = s.registry.provider(t);
        let mut creds = Vec::with_capacity(provider.credentials.len());
        let refs: Vec<String> = provider
            .credentials
            .iter()
            .map(|c| c.credential.0.clone())
            .collect();
        for c in &provider.credentials {
            let resolved = match s.registry.credential_ref(c.credential.as_str()) {
                Some(src) => self.creds.resolve(&caller.project, src).await,
                None => Err(Error::new(
                    ErrorCode::McpCredential,
                    "a credential of this tool could not be resolved for this project",
                )),
            };
            match resolved {
                Ok(v) => creds.push(ResolvedCredential {
                    name: c.credential.0.clone(),
                    inject: c.inject.clone(),
                    value: v,
                }),
                Err(e) => {
                    self.audit_row(&a, mode, refs, Outcome::failed(e.code))
                        .await;
                    return Err(e);
                }
            }
        }
        let exact = self.exact_secrets(&creds);
        let traceparent = trace.traceparent();
        // From here until its row is queued the call is audited even if its caller goes away
        // (a `/mcp` client hanging up drops this future, as does a run's timeout): the request
        // may already have reached the upstream, and a tool call without an audit row is what
        // a hostile caller would aim for.
        let unaudited = Unaudited {
            audit: &self.audit,
            a: &a,
            mode,
            refs: refs.clone(),
            armed: true,
        };
        let res = self
            .upstream
            .call_tool(UpstreamCall {
                project: &caller.project,
                provider,
                tool: &t.upstream_name,
                arguments: &args,
                credentials: &creds,
                traceparent: Some(&traceparent),
                idempotency_key,
                timeout: self.config.upstream_timeout,
            })
            .await;
        let raw = match res {
            Ok(v) => v,
            Err(f) => {
                let (code, message) = match &f {
                    UpstreamError::Timeout => (
                        ErrorCode::McpUpstreamTimeout,
                        "the upstream tool server did not answer in time".to_string(),
                    ),
                    UpstreamError::Rpc { code, message } => {
                        let mut m = sanitize::redact_text(message, &exact);
                        sanitize::truncate_chars(&mut m, 1000);
                        (
                            ErrorCode::McpUpstream,
                            format!("upstream error {code}: {m}"),
                        )
                    }
                    UpstreamError::Refused { code, message } => (*code, message.clone()),
                    UpstreamError::Unavailable(_) | UpstreamError::Protocol(_) => (
                        ErrorCode::McpUpstream,
                        "the upstream tool server failed or is unreachable".to_string(),
                    ),
                };
                // The cause may name upstream configuration or echo a credential: it goes to
                // the server log only, redacted.
                tracing::warn!(
                    tool = %t.exposed,
                    trace_id = %trace.trace_id,
                    cause = %sanitize::redact_text(&f.to_string(), &exact),
                    "upstream call failed"
                );
                self.audit_row(&a, mode, refs, Outcome::failed(code)).await;
                unaudited.disarm();
                return Err(Error::new(code, message));
            }
        };
        let out = sanitize::sanitize_result(raw, &exact, t.max_result_chars);
        if !out.is_error {
            // A successful dry run is evidence for the tool it dry-runs (same run, same hash).
            // Best effort: evidence that could not be recorded only means the real call will
            // be refused later (fail closed), never that this call's result is lost.
            if let Err(e) = self
                .record_dry_runs(caller, &s.registry, t, &args, &out.result)
                .await
            {
                tracing::warn!(code = e.code.as_str(), tool = %t.exposed, "dry-run evidence not recorded");
            }
        }
        let (bytes_out, text) = if let Some(frame) = as_json {
            // `serde_json::to_string`'s text, escaped a block at a time (a 16 KiB result's
            // bytes were each looked up in an escape table), written inside its frame.
            let text = awooop_core::json_text::framed(frame.head, &out.result, frame.tail);
            (text.len() - frame.head.len() - frame.tail.len(), Some(text))
        } else {
            (json_len(&out.result), None)
        };
        let mut details = json!({});
        if let Some(who) = approver {
            details["approver"] = json!(who);
        }
        if out.truncated_chars > 0 {
            details["truncated_chars"] = json!(out.truncated_chars);
        }
        let outcome = Outcome {
            code: None,
            status: if out.is_error { "tool_error" } else { "ok" },
            bytes_out,
            truncated: out.truncated_chars > 0,
            details,
        };
        self.audit_row(&a, mode, refs, outcome).await;
        unaudited.disarm();
        Ok(match text {
            Some(t) => Out::Json(t),
            None => Out::Value(out.result),
        })
    }

    /// The exact-value redactor of a set of credential values. Compiling it is the costliest
    /// step of sanitizing, so it is cached by a digest of the values (a rotated value yields
    /// a new entry; the map is cleared when it grows large).
    fn exact_secrets(&self, creds: &[ResolvedCredential]) -> Arc<ExactSecrets> {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        for c in creds {
            h.update((c.value.expose().len() as u64).to_be_bytes());
            h.update(c.value.expose().as_bytes());
        }
        let key: [u8; 32] = h.finalize().into();
        if let Some(e) = self.exact.read().expect("exact lock").get(&key) {
            return e.clone();
        }
        let e = Arc::new(ExactSecrets::new(creds.iter().map(|c| c.value.expose())));
        let mut m = self.exact.write().expect("exact lock");
        if m.len() >= 1024 {
            m.clear();
        }
        m.insert(key, e.clone());
        e
    }

    /// Verify an approval token for this exact call and consume its `jti` once.
    async fn check_approval(
        &self,
        caller: &Caller,
        tool: &str,
        args: &Map<String, Value>,
        token: &str,
        idempotency_key: Option<&str>,
    ) -> Result<String> {
        let args_hash = approval::arguments_hash(&Value::Object(args.clone()));
        let run = caller.run_id.map(|r| r.to_string());
        let now = chrono::Utc::now().timestamp();
        let claims = approval::verify(
            &self.keys.approval,
            token,
            approval::Expected {
                project: caller.project.as_str(),
                agent: &caller.agent,
                environment: &caller.environment,
                run_id: run.as_deref(),
                tool,
                args_sha256: &args_hash,
            },
            now,
        )?;
        let replayed = || {
            Error::new(
                ErrorCode::McpGateApprovalReplayed,
                "this approval token was already used",
            )
        };
        let ttl = Duration::from_secs((claims.exp - now).max(1) as u64);
        let key = tenancy::scope(caller.project.clone(), async {
            tenancy::redis_key("approval-jti", &claims.jti)
        })
        .await?;
        // Redis answers the common replay fast; PostgreSQL decides. A call with an idempotency
        // key always asks PostgreSQL: the same intent re-sent after a crash may spend its
        // token again (the upstream deduplicates by the key), any other call may not.
        if self.coord.set_nx(&key, ttl).await == Some(false) && idempotency_key.is_none() {
            return Err(replayed());
        }
        let spent_by_same_intent = tenancy::scope(caller.project.clone(), async {
            let mut tx = self.db.tenant().await?;
            let n = sqlx::query(
                "INSERT INTO mcp_approval_uses (project_id, jti, run_id, tool, approver, expires_at, idempotency_key) \
                 VALUES ($1, $2, $3, $4, $5, to_timestamp($6), $7) ON CONFLICT DO NOTHING",
            )
            .bind(caller.project.as_str())
            .bind(&claims.jti)
            .bind(caller.run_id)
            .bind(tool)
            .bind(&claims.approver)
            .bind(claims.exp as f64)
            .bind(idempotency_key)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            let ok = if n == 1 {
                true
            } else {
                let prior: Option<Option<String>> = sqlx::query_scalar(
                    "SELECT idempotency_key FROM mcp_approval_uses WHERE jti = $1",
                )
                .bind(&claims.jti)
                .fetch_optional(&mut *tx)
                .await?;
                matches!((prior.flatten(), idempotency_key), (Some(p), Some(k)) if p == k)
            };
            tx.commit().await?;
            Ok::<_, Error>(ok)
        })
        .await?;
        if !spent_by_same_intent {
            return Err(replayed());
        }
        Ok(claims.approver)
    }
}

impl Gateway {
    /// The recorded successful dry run of `t` with this argument hash in the caller's run.
    async fn dry_run_evidence(
        &self,
        caller: &Caller,
        t: &super::registry::ToolEntry,
        args_sha256: &str,
    ) -> Result<Option<Value>> {
        let Some(run) = caller.run_id else {
            // Outside a run there is no "same run" to have dry-run in: fail closed.
            return Ok(None);
        };
        tenancy::scope(caller.project.clone(), async {
            let mut tx = self.db.tenant().await?;
            let row = super::evidence::find(&mut tx, run, &t.exposed, args_sha256).await?;
            tx.commit().await?;
            Ok(row)
        })
        .await
    }

    /// After a successful call: record it as dry-run evidence for every tool it dry-runs.
    async fn record_dry_runs(
        &self,
        caller: &Caller,
        registry: &Registry,
        t: &super::registry::ToolEntry,
        args: &Map<String, Value>,
        result: &Value,
    ) -> Result<()> {
        let Some(run) = caller.run_id else {
            return Ok(());
        };
        let targets = super::evidence::dry_run_targets(registry, t, args);
        if targets.is_empty() {
            return Ok(());
        }
        Box::pin(tenancy::scope(caller.project.clone(), async {
            let mut tx = self.db.tenant().await?;
            for (target, hash) in &targets {
                super::evidence::record(
                    &mut tx,
                    caller.project.as_str(),
                    run,
                    target,
                    hash,
                    &t.exposed,
                    result,
                )
                .await?;
            }
            tx.commit().await?;
            Ok(())
        }))
        .await
    }
}

/// How a call ended, as its audit row records it.
struct Outcome {
    code: Option<ErrorCode>,
    /// `denied`, `upstream_error`, `tool_error` or `ok`.
    status: &'static str,
    /// The result's length as sent (0 when none was).
    bytes_out: usize,
    truncated: bool,
    details: Value,
}

impl Outcome {
    /// Refused by a gate; the reason goes into the row.
    fn denied(e: &Error) -> Self {
        Self {
            code: Some(e.code),
            status: "denied",
            details: json!({"reason": e.message}),
            ..Self::failed_uncoded()
        }
    }

    /// Passed the gates, failed before a result (a credential, the upstream).
    fn failed(code: ErrorCode) -> Self {
        Self {
            code: Some(code),
            ..Self::failed_uncoded()
        }
    }

    fn failed_uncoded() -> Self {
        Self {
            code: None,
            status: "upstream_error",
            bytes_out: 0,
            truncated: false,
            details: json!({}),
        }
    }
}

/// Queues the audit row of a call that passed the gates and was handed to the upstream, when
/// the call's future is dropped before its own row was queued (see `call_tool_out`): status
/// `upstream_error`, no code, `details.cancelled` saying the upstream may have run it.
struct Unaudited<'a> {
    audit: &'a CallAudit,
    a: &'a Attempt<'a>,
    mode: Option<MigrationMode>,
    refs: Vec<String>,
    armed: bool,
}

impl Unaudited<'_> {
    /// The call's own row is queued.
    fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for Unaudited<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        self.audit.record_detached(Gateway::call_record(
            self.a,
            self.mode,
            std::mem::take(&mut self.refs),
            Outcome {
                details: json!({"cancelled": "the caller went away before the call finished; the upstream may have run it"}),
                ..Outcome::failed_uncoded()
            },
        ));
    }
}

/// The length of `v` serialized as compact JSON, counted without building the text (the
/// audit records sizes; a 16 KiB result was serialized once only to be measured).
fn json_len(v: &Value) -> usize {
    awooop_core::json_text::len(v)
}

/// Used until an upstream MCP client is wired in: every call that passes the gates fails with
/// `E-MCP-003` (nothing is ever sent anywhere).
pub struct NoUpstream;

#[async_trait]
impl ToolUpstream for NoUpstream {
    async fn call_tool(
        &self,
        _call: UpstreamCall<'_>,
    ) -> std::result::Result<Value, UpstreamError> {
        Err(UpstreamError::Unavailable(
            "no upstream MCP client is configured".into(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The size of the future `f` returns, without calling it.
    #[allow(clippy::type_complexity)]
    fn future_size<A, B, C, D, E, F, G, H, Fut>(
        _: impl FnOnce(A, B, C, D, E, F, G, H) -> Fut,
    ) -> usize {
        std::mem::size_of::<Fut>()
    }

    /// A tool call's future is allocated and moved with every `/mcp` request (see
    /// `awooop_http::mcp`): cold paths with a database transaction (snapshot reload, dry-run
    /// evidence, approval check, credential fetch) are boxed so that it stays small: 2,832
    /// bytes; with them inline 10,904 (test build) and 31,736 (release build).
    #[test]
    fn the_tool_call_future_stays_small() {
        let n = future_size(Gateway::call_tool_json);
        assert!(n <= 6 * 1024, "the tool call future is {n} bytes");
    }

    #[test]
    fn json_len_is_the_length_of_the_compact_serialization() {
        for v in [
            json!({}),
            json!({"content": [{"type": "text", "text": "é漢🙂\"\\\n"}], "isError": false}),
            json!([1, 2.5, null, true, "x".repeat(16 * 1024)]),
        ] {
            assert_eq!(json_len(&v), serde_json::to_vec(&v).unwrap().len(), "{v}");
        }
    }
}
