//! The executor interface and the deterministic scripted executor.
//!
//! Every executor (scripted now, LLM tool-calling later) gets a [`RunContext`] and a
//! [`Journal`]: completed steps are skipped on resume, every step attempt is journaled with
//! the attempt fence, and tool calls go through a [`ToolGateway`]. The gateway given to
//! executors is always wrapped in [`GuardedGateway`], the platform boundary that blocks
//! write/execute/destructive tools in shadow, canary and read_only modes whatever the
//! executor asks for.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use chrono::Utc;
use serde_json::{Map, Value, json};
use uuid::Uuid;

use super::repo;
use super::trace::TraceContext;
use awooop_contracts::{
    self as contracts, AgentContract, Contract, ContractKind, RiskClass, ScriptStep,
};
use awooop_control::{ControlPlane, MigrationMode};
use awooop_core::error::{Error, ErrorCode, Result};
use awooop_store::audit::{self, Entry};
use awooop_store::tenancy::{Db, ProjectId};

/// Everything an executor knows about the run it executes.
#[derive(Debug, Clone)]
pub struct RunContext {
    pub project: ProjectId,
    pub run_id: Uuid,
    pub attempt: i32,
    pub agent: String,
    pub contract: Arc<AgentContract>,
    pub mode: MigrationMode,
    pub input: Value,
    pub trace: TraceContext,
}

/// How an execution ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Succeeded(Value),
    WaitingApproval {
        step_key: String,
        reason: String,
        /// The tool call that waits (a gate asked for approval); `None` for scripted
        /// `wait_approval` steps, which are approved through the runs API.
        request: Option<crate::approvals::NeedsApproval>,
    },
    Failed {
        code: String,
        message: String,
    },
}

const LEASE_LOST: &str = "lease lost: result discarded";

/// Raised when the attempt lost its lease mid-run: its results are discarded.
pub fn lease_lost() -> Error {
    Error::new(ErrorCode::RunAttemptsExhausted, LEASE_LOST)
}

pub fn is_lease_lost(e: &Error) -> bool {
    e.code == ErrorCode::RunAttemptsExhausted && e.message == LEASE_LOST
}

#[async_trait]
pub trait Executor: Send + Sync {
    async fn execute(&self, ctx: &RunContext, journal: &mut Journal) -> Result<Outcome>;
}

/// One tool call leaving the platform.
#[derive(Debug, Clone)]
pub struct ToolCall {
    pub project: ProjectId,
    pub agent: String,
    pub run_id: Uuid,
    pub mode: MigrationMode,
    pub trace: TraceContext,
    pub tool: String,
    pub arguments: Value,
    /// The approval token minted when this call's approval request reached its quorum.
    pub approval: Option<String>,
    /// Stable for every attempt of the same run step (`{run_id}:{step_index}`): sent upstream
    /// in `_meta` and as the `Idempotency-Key` header, journaled as the step's intent.
    pub idempotency_key: Option<String>,
}

/// The idempotency key of a run step's tool call: the same for every attempt of the step.
pub fn idempotency_key(run_id: Uuid, step_index: i32) -> String {
    format!("{run_id}:{step_index}")
}

#[async_trait]
pub trait ToolGateway: Send + Sync {
    async fn call_tool(&self, call: &ToolCall) -> Result<Value>;
}

/// Used until an MCP gateway is configured: every call fails clearly.
pub struct NoGateway;

#[async_trait]
impl ToolGateway for NoGateway {
    async fn call_tool(&self, _call: &ToolCall) -> Result<Value> {
        Err(Error::new(
            ErrorCode::RunToolBlocked,
            "no MCP gateway is configured for tool calls",
        ))
    }
}

/// The platform boundary for tool calls: looks the tool's risk class up in the project's
/// active MCP Gateway contract (`default`) and refuses anything but read-only tools in
/// shadow, canary and read_only modes, and anything above the agent's safety ceiling. Refusals
/// are audited and never reach the inner gateway.
pub struct GuardedGateway {
    control: ControlPlane,
    inner: Arc<dyn ToolGateway>,
}

impl GuardedGateway {
    pub fn new(control: ControlPlane, inner: Arc<dyn ToolGateway>) -> Self {
        Self { control, inner }
    }

    async fn risk_of(&self, tool: &str) -> Result<Option<RiskClass>> {
        match self
            .control
            .active_typed(ContractKind::McpGateway, "default")
            .await
        {
            Ok((_, Contract::McpGateway(g))) => Ok(g
                .tools
                .iter()
                .find(|t| t.enabled && format!("{}__{}", t.provider.as_str(), t.name) == tool)
                .map(|t| t.risk)),
            Ok(_) => Ok(None),
            Err(e) if e.code == ErrorCode::ContractNotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub async fn call(&self, ceiling: RiskClass, call: &ToolCall) -> Result<Value> {
        let risk = self.risk_of(&call.tool).await?;
        let denial = match risk {
            None => Some("tool is not registered in the active MCP Gateway contract"),
            Some(r) if r > ceiling => Some("tool risk exceeds the agent's safety ceiling"),
            Some(r)
                if r != RiskClass::ReadOnly
                    && matches!(
                        call.mode,
                        MigrationMode::Shadow | MigrationMode::Canary | MigrationMode::ReadOnly
                    ) =>
            {
                Some("this mode allows read-only tools only")
            }
            Some(_) => None,
        };
        if let Some(why) = denial {
            audit::record_detached(
                self.control.db(),
                Entry {
                    trace_id: Some(call.trace.trace_id.clone()),
                    ..Entry::denied(
                        "runtime",
                        "tool.call",
                        call.tool.clone(),
                        ErrorCode::RunToolBlocked.as_str(),
                        json!({"run_id": call.run_id, "mode": call.mode.as_str(), "reason": why}),
                    )
                },
            )
            .await;
            return Err(Error::new(ErrorCode::RunToolBlocked, why));
        }
        let out = self.inner.call_tool(call).await?;
        // A tool that answers `isError: true` failed: the step fails with a code (the
        // executor decides whether the run continues), it is never a succeeded step.
        if out.get("isError") == Some(&Value::Bool(true)) {
            return Err(tool_error(out));
        }
        Ok(out)
    }
}

/// The `E-TOOL-001` error of a tool result with `isError: true`; the (sanitized) result rides
/// in the details so an executor can feed it back to the model.
pub fn tool_error(result: Value) -> Error {
    Error::new(ErrorCode::ToolError, "the tool reported an error")
        .with_details(json!({"result": result}))
}

/// A step attempt not yet written (the type lives with the journal writer in `repo`).
pub use super::repo::PendingStep;

/// The step journal of one attempt: what completed before (skipped on resume) and the step
/// attempts of this one. Pure steps are buffered and written with the run's completion (one
/// transaction); before anything with a side effect the executor calls [`Journal::flush`], so
/// a completed tool call is durable before the next step and never repeats after a crash.
/// Writes are fenced by the attempt: a flush by an attempt that lost the run fails with
/// [`lease_lost`].
pub struct Journal {
    db: Db,
    project: ProjectId,
    run_id: Uuid,
    attempt: i32,
    completed: HashMap<i32, Value>,
    /// Approval tokens minted for waiting steps of this run (step index → token).
    approvals: HashMap<i32, String>,
    pending: Vec<PendingStep>,
}

impl Journal {
    /// Load the completed steps of earlier attempts.
    pub async fn load(db: &Db, project: &ProjectId, run_id: Uuid, attempt: i32) -> Result<Self> {
        let mut j = Self::fresh(db, project, run_id, attempt);
        if attempt > 1 {
            let mut tx = db.tenant().await?;
            j.completed = repo::completed_steps(&mut tx, run_id)
                .await?
                .into_iter()
                .collect();
            j.approvals = crate::approvals::approved_tokens(&mut tx, run_id)
                .await?
                .into_iter()
                .collect();
            tx.commit().await?;
        }
        Ok(j)
    }

    /// A journal for a first attempt: nothing can have completed before it.
    pub fn fresh(db: &Db, project: &ProjectId, run_id: Uuid, attempt: i32) -> Self {
        Self {
            db: db.clone(),
            project: project.clone(),
            run_id,
            attempt,
            completed: HashMap::new(),
            approvals: HashMap::new(),
            pending: Vec::new(),
        }
    }

    pub fn completed(&self, index: i32) -> Option<&Value> {
        self.completed.get(&index)
    }

    /// The approval token minted for step `index` (its request reached its quorum).
    pub fn approval(&self, index: i32) -> Option<&str> {
        self.approvals.get(&index).map(String::as_str)
    }

    /// Journal a tool call's intent (its idempotency key) before the call; it is written by
    /// the flush that precedes every side effect, so a resumed attempt knows which call was
    /// in doubt and re-sends it with the same key.
    pub fn intent(
        &mut self,
        index: i32,
        key: &str,
        call: &ToolCall,
        started: chrono::DateTime<Utc>,
    ) {
        self.pending.push(PendingStep {
            index,
            key: key.to_string(),
            step_type: "tool_call".into(),
            input_hash: contracts::canonical::body_hash(
                &json!({"tool": call.tool, "arguments": call.arguments}),
            ),
            status: "intent".into(),
            output: Some(json!({"idempotency_key": call.idempotency_key, "tool": call.tool})),
            error_code: None,
            trace: call.trace.clone(),
            started_at: started,
        });
    }

    /// Record a step attempt (buffered until [`Journal::flush`] or the run's completion).
    pub fn record(&mut self, step: PendingStep) {
        if step.status == "succeeded" {
            self.completed
                .insert(step.index, step.output.clone().unwrap_or(Value::Null));
        }
        self.pending.push(step);
    }

    /// Write buffered steps now, fenced by the attempt.
    pub async fn flush(&mut self) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let mut tx = self.db.tenant().await?;
        for s in &self.pending {
            let ok = repo::journal_step(
                &mut tx,
                &repo::StepRecord {
                    project: self.project.as_str(),
                    run_id: self.run_id,
                    attempt: self.attempt,
                    step_index: s.index,
                    step_key: &s.key,
                    step_type: &s.step_type,
                    input_hash: &s.input_hash,
                    status: &s.status,
                    output: s.output.as_ref(),
                    error_code: s.error_code.as_deref(),
                    trace: &s.trace,
                    started_at: s.started_at,
                },
            )
            .await?;
            if !ok {
                return Err(lease_lost());
            }
        }
        tx.commit().await?;
        self.pending.clear();
        Ok(())
    }

    /// Steps still to be written (by the completion, in its transaction).
    pub fn take_pending(&mut self) -> Vec<PendingStep> {
        std::mem::take(&mut self.pending)
    }
}

/// The approval request of a tool call a gate refused for want of an approval token. In
/// `suggest` mode it is a proposal (docs/approvals.md).
pub fn needs_approval(
    ctx: &RunContext,
    index: i32,
    call: &ToolCall,
    refusal: &Error,
    rationale: Option<&str>,
) -> crate::approvals::NeedsApproval {
    let details = refusal.details.clone().unwrap_or(Value::Null);
    let args_sha256 = details
        .get("args_sha256")
        .and_then(Value::as_str)
        .map(str::to_string)
        .unwrap_or_else(|| contracts::canonical::body_hash(&call.arguments));
    let kind = if ctx.mode == MigrationMode::Suggest {
        crate::approvals::RequestKind::Proposal
    } else {
        crate::approvals::RequestKind::Approval
    };
    let mut evidence = Map::new();
    for k in ["dry_run", "rollback_tool", "risk"] {
        if let Some(v) = details.get(k).filter(|v| !v.is_null()) {
            evidence.insert(k.into(), v.clone());
        }
    }
    if let Some(r) = rationale.filter(|r| !r.is_empty()) {
        evidence.insert("rationale".into(), json!(r));
    }
    let reason = match kind {
        crate::approvals::RequestKind::Proposal => format!(
            "suggest mode: {} is proposed, not executed, until approved",
            call.tool
        ),
        crate::approvals::RequestKind::Approval => {
            format!("{} needs approval before it runs", call.tool)
        }
    };
    crate::approvals::NeedsApproval {
        kind,
        step_index: index,
        tool: call.tool.clone(),
        arguments: call.arguments.clone(),
        args_sha256,
        reason,
        evidence: (!evidence.is_empty()).then_some(Value::Object(evidence)),
    }
}

/// What a waiting tool step journals: the pending call (the approval request has the rest).
pub fn waiting_output(need: &crate::approvals::NeedsApproval) -> Value {
    let mut preview = need.arguments.clone();
    awooop_core::redact::Redactor::global().redact_json(&mut preview);
    json!({
        "kind": need.kind.as_str(),
        "tool": need.tool,
        "args_sha256": need.args_sha256,
        "preview": preview,
        "reason": need.reason,
        "evidence": need.evidence,
    })
}

#[allow(clippy::too_many_arguments)]
fn step(
    index: i32,
    key: &str,
    step_type: &str,
    input_hash: String,
    status: &str,
    output: Option<Value>,
    error_code: Option<&str>,
    trace: &TraceContext,
    started_at: chrono::DateTime<Utc>,
) -> PendingStep {
    PendingStep {
        index,
        key: key.to_string(),
        step_type: step_type.to_string(),
        input_hash,
        status: status.to_string(),
        output,
        error_code: error_code.map(str::to_string),
        trace: trace.clone(),
        started_at,
    }
}

/// Runs the scripted steps declared in the Agent contract.
pub struct ScriptedExecutor {
    gateway: GuardedGateway,
}

impl ScriptedExecutor {
    pub fn new(gateway: GuardedGateway) -> Self {
        Self { gateway }
    }
}

#[async_trait]
impl Executor for ScriptedExecutor {
    async fn execute(&self, ctx: &RunContext, journal: &mut Journal) -> Result<Outcome> {
        let steps = match &ctx.contract.executor {
            contracts::Executor::Scripted { steps } => steps,
            contracts::Executor::Llm { .. } => {
                return Ok(Outcome::Failed {
                    code: ErrorCode::RunStepFailed.as_str().into(),
                    message: "the LLM executor is not available in this build".into(),
                });
            }
        };
        let mut outputs = Map::new();
        let mut last = Value::Null;
        for (i, s) in steps.iter().enumerate() {
            let index = i as i32;
            let key = s.key().as_str();
            if let Some(out) = journal.completed(index) {
                outputs.insert(key.to_string(), out.clone());
                last = out.clone();
                continue;
            }
            let scope = json!({"input": ctx.input, "steps": outputs});
            let span = ctx.trace.child();
            let started = Utc::now();
            match s {
                ScriptStep::Output { template, .. } => {
                    let out = Value::String(render(template, &scope));
                    let h = contracts::canonical::body_hash(
                        &json!({"template": template, "scope": scope}),
                    );
                    journal.record(step(
                        index,
                        key,
                        "output",
                        h,
                        "succeeded",
                        Some(out.clone()),
                        None,
                        &span,
                        started,
                    ));
                    outputs.insert(key.to_string(), out.clone());
                    last = out;
                }
                ScriptStep::ToolCall {
                    tool,
                    arguments,
                    continue_on_error,
                    ..
                } => {
                    let args = render_value(&Value::Object(arguments.clone()), &scope);
                    let h = contracts::canonical::body_hash(
                        &json!({"tool": tool.0, "arguments": args}),
                    );
                    let call = ToolCall {
                        project: ctx.project.clone(),
                        agent: ctx.agent.clone(),
                        run_id: ctx.run_id,
                        mode: ctx.mode,
                        trace: span.clone(),
                        tool: tool.0.clone(),
                        arguments: args,
                        approval: journal.approval(index).map(str::to_string),
                        idempotency_key: Some(idempotency_key(ctx.run_id, index)),
                    };
                    // Everything before a side effect is durable first (with the call's
                    // intent); so is its result.
                    journal.intent(index, key, &call, started);
                    journal.flush().await?;
                    match self.gateway.call(ctx.contract.safety.max_risk, &call).await {
                        Err(e) if e.code == ErrorCode::McpGateApprovalMissing => {
                            let need = needs_approval(ctx, index, &call, &e, None);
                            journal.record(step(
                                index,
                                key,
                                "tool_call",
                                h,
                                "waiting",
                                Some(waiting_output(&need)),
                                Some(e.code.as_str()),
                                &span,
                                started,
                            ));
                            return Ok(Outcome::WaitingApproval {
                                step_key: key.into(),
                                reason: need.reason.clone(),
                                request: Some(need),
                            });
                        }
                        Err(e) if e.code == ErrorCode::ToolError && *continue_on_error => {
                            // The step says to continue: the error result is its output.
                            let out = e
                                .details
                                .as_ref()
                                .and_then(|d| d.get("result"))
                                .cloned()
                                .unwrap_or(Value::Null);
                            journal.record(step(
                                index,
                                key,
                                "tool_call",
                                h,
                                "succeeded",
                                Some(out.clone()),
                                Some(e.code.as_str()),
                                &span,
                                started,
                            ));
                            journal.flush().await?;
                            outputs.insert(key.to_string(), out.clone());
                            last = out;
                        }
                        Ok(out) => {
                            journal.record(step(
                                index,
                                key,
                                "tool_call",
                                h,
                                "succeeded",
                                Some(out.clone()),
                                None,
                                &span,
                                started,
                            ));
                            journal.flush().await?;
                            outputs.insert(key.to_string(), out.clone());
                            last = out;
                        }
                        Err(e) => {
                            journal.record(step(
                                index,
                                key,
                                "tool_call",
                                h,
                                "failed",
                                None,
                                Some(e.code.as_str()),
                                &span,
                                started,
                            ));
                            return Ok(Outcome::Failed {
                                code: e.code.as_str().into(),
                                message: e.message,
                            });
                        }
                    }
                }
                ScriptStep::WaitApproval { reason, .. } => {
                    let reason = render(reason, &scope);
                    let h = contracts::canonical::body_hash(&json!({"reason": reason}));
                    journal.record(step(
                        index,
                        key,
                        "wait_approval",
                        h,
                        "waiting",
                        Some(json!({"reason": reason})),
                        None,
                        &span,
                        started,
                    ));
                    return Ok(Outcome::WaitingApproval {
                        step_key: key.into(),
                        reason,
                        request: None,
                    });
                }
            }
        }
        Ok(Outcome::Succeeded(
            json!({"result": last, "steps": outputs}),
        ))
    }
}

/// Render `{{input.a.b}}` / `{{steps.key.field}}` placeholders. Strings are inserted as they
/// are, other values as JSON; unknown paths render empty.
pub fn render(template: &str, scope: &Value) -> String {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        match after.find("}}") {
            Some(end) => {
                let path = after[..end].trim();
                let mut v = scope;
                let mut found = true;
                for part in path.split('.') {
                    match v.get(part) {
                        Some(x) => v = x,
                        None => {
                            found = false;
                            break;
                        }
                    }
                }
                if found {
                    match v {
                        Value::String(s) => out.push_str(s),
                        other => out.push_str(&other.to_string()),
                    }
                }
                rest = &after[end + 2..];
            }
            None => {
                out.push_str(&rest[start..]);
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

fn render_value(v: &Value, scope: &Value) -> Value {
    match v {
        Value::String(s) => Value::String(render(s, scope)),
        Value::Array(a) => Value::Array(a.iter().map(|x| render_value(x, scope)).collect()),
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, x)| (k.clone(), render_value(x, scope)))
                .collect(),
        ),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates() {
        let scope = json!({"input": {"ns": "prod", "n": 3}, "steps": {"pods": {"count": 7}}});
        assert_eq!(
            render("ns={{input.ns}} n={{ input.n }}", &scope),
            "ns=prod n=3"
        );
        assert_eq!(render("{{steps.pods.count}} pods", &scope), "7 pods");
        assert_eq!(
            render("{{steps.missing}}|{{input}}", &scope),
            "|{\"ns\":\"prod\",\"n\":3}"
        );
        assert_eq!(
            render("unterminated {{input.ns", &scope),
            "unterminated {{input.ns"
        );
    }
}
