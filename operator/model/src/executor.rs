//! The LLM tool-calling executor, and [`AgentExecutor`], which picks the executor an Agent
//! contract asks for.
//!
//! A run of an LLM agent:
//! 1. Step 0 (`policy`): resolve the [`EffectivePolicy`] from the active Policy/Routing
//!    contract (`default`), the project's contract and the agent's; journaled with the
//!    revisions it came from, so a resumed run keeps its first attempt's policy.
//! 2. Then model calls and tool calls, one journaled step each (`model_call` carries the
//!    response and its [`super::proxy::PlatformEnvelope`]; `tool_call` the tool result). Each
//!    is flushed to the journal before the next side effect, so a resumed run replays
//!    completed steps from the journal instead of repeating them.
//! 3. Tools go only through the [`GuardedGateway`] (the platform boundary), and only tools
//!    listed in the Agent contract (`E-MODEL-005` otherwise).
//! 4. A final answer (no tool calls) is checked against the agent's output schema; on failure
//!    the model is re-asked with the violations, up to 3 answers, then `E-SCHEMA-001`.
//! 5. `safety.max_steps` bounds model + tool calls (`E-MODEL-007`); `max_tokens_per_run`
//!    bounds the run's tokens (`E-BUDGET-004`), and caps each call's output.

use std::sync::Arc;

use async_trait::async_trait;
use chrono::Utc;
use serde_json::{Value, json};

use super::breaker::{Anomaly, AnomalyCounter};
use super::context::PromptFirewall;
use super::policy::{self, EffectivePolicy, PolicyInputs};
use super::proxy::{CallMeta, ModelCall, ProviderProxy};
use super::validate::{OutputSchema, SchemaCache};
use super::wire::{ChatMessage, ChatRequest, ToolSpec};
use awooop_contracts::{self as contracts, Contract, ContractKind};
use awooop_control::ControlPlane;
use awooop_core::error::{Error, ErrorCode, Result};
use awooop_core::trace::TraceContext;
use awooop_runtime::executor::{
    Executor, GuardedGateway, Journal, Outcome, PendingStep, RunContext, ScriptedExecutor,
    ToolCall, idempotency_key, is_lease_lost, needs_approval, waiting_output,
};

/// Answers checked against the output schema before the run fails with `E-SCHEMA-001`.
pub const SCHEMA_ATTEMPTS: usize = 3;

pub struct LlmExecutor {
    control: ControlPlane,
    gateway: GuardedGateway,
    proxy: Arc<ProviderProxy>,
    schemas: SchemaCache,
    anomalies: AnomalyCounter,
}

impl LlmExecutor {
    pub fn new(
        control: ControlPlane,
        gateway: GuardedGateway,
        proxy: Arc<ProviderProxy>,
        anomalies: AnomalyCounter,
    ) -> Self {
        Self {
            control,
            gateway,
            proxy,
            schemas: SchemaCache::default(),
            anomalies,
        }
    }

    /// Resolve the run's policy; returns it with the record journaled at step 0.
    async fn resolve(&self, ctx: &RunContext) -> Result<(EffectivePolicy, Value)> {
        let (prow, pol) = match self
            .control
            .active_typed(ContractKind::Policy, "default")
            .await
        {
            Ok((row, Contract::Policy(p))) => (row, p),
            Ok(_) => return Err(route_missing()),
            Err(e) if e.code == ErrorCode::ContractNotFound => return Err(route_missing()),
            Err(e) => return Err(e),
        };
        let (jrow, proj) = match self
            .control
            .active_typed(ContractKind::Project, ctx.project.as_str())
            .await?
        {
            (row, Contract::Project(p)) => (row, p),
            _ => {
                return Err(Error::new(
                    ErrorCode::Internal,
                    "project contract unreadable",
                ));
            }
        };
        let eff = policy::resolve(&PolicyInputs {
            agent_name: &ctx.agent,
            agent: &ctx.contract,
            project: &proj,
            policy: &pol,
            input: &ctx.input,
        })?;
        let record = json!({
            "policy": eff,
            "revisions": {
                "policy": {"revision_id": prow.revision_id, "revision": prow.revision, "body_hash": prow.body_hash},
                "project": {"revision_id": jrow.revision_id, "revision": jrow.revision, "body_hash": jrow.body_hash},
            }
        });
        Ok((eff, record))
    }

    async fn system_prompt(&self, ctx: &RunContext) -> Result<Option<String>> {
        let Some(p) = &ctx.contract.prompt else {
            return Ok(None);
        };
        let bytes = self.control.artifact(&p.reference, &p.sha256).await?;
        String::from_utf8(bytes)
            .map(Some)
            .map_err(|_| Error::new(ErrorCode::ArtifactInvalid, "prompt artifact is not UTF-8"))
    }

    /// The agent's tools with descriptions and argument schemas from the MCP Gateway contract,
    /// and the run's [`PromptFirewall`] (which has already admitted those tools and the input).
    async fn tools(&self, ctx: &RunContext) -> Result<(Vec<ToolSpec>, PromptFirewall)> {
        let gw = match self
            .control
            .active_typed(ContractKind::McpGateway, "default")
            .await
        {
            Ok((_, Contract::McpGateway(g))) => Some(g),
            Ok(_) => None,
            Err(e) if e.code == ErrorCode::ContractNotFound => None,
            Err(e) => return Err(e),
        };
        let project = match self
            .control
            .active_typed(ContractKind::Project, ctx.project.as_str())
            .await
        {
            Ok((_, Contract::Project(p))) => Some(p),
            Ok(_) => None,
            Err(e) if e.code == ErrorCode::ContractNotFound => None,
            Err(e) => return Err(e),
        };
        let firewall = PromptFirewall::new(
            &ctx.agent,
            ctx.contract.context_domain.as_str(),
            project.as_ref(),
            gw.as_ref(),
        );
        for t in &ctx.contract.tools {
            firewall.offer_tool(&t.0)?;
        }
        firewall.admit_input(&ctx.input)?;
        let specs = ctx
            .contract
            .tools
            .iter()
            .map(|t| {
                let found = gw.as_ref().and_then(|g| {
                    g.tools
                        .iter()
                        .find(|x| format!("{}__{}", x.provider.as_str(), x.name) == t.0)
                });
                ToolSpec {
                    name: t.0.clone(),
                    description: found
                        .and_then(|x| x.description.clone())
                        .unwrap_or_default(),
                    parameters: found
                        .map(|x| Value::Object(x.input_schema.clone()))
                        .unwrap_or_else(|| json!({"type": "object"})),
                }
            })
            .collect();
        Ok((specs, firewall))
    }
}

fn route_missing() -> Error {
    Error::new(
        ErrorCode::ModelRouteNotFound,
        "the project has no active Policy/Routing contract named default",
    )
}

/// Database trouble and lost leases end the attempt (the run is retried); everything else is
/// the run's own failure.
fn is_transient(e: &Error) -> bool {
    is_lease_lost(e) || e.code == ErrorCode::Unavailable
}

fn failed(e: &Error) -> Outcome {
    Outcome::Failed {
        code: e.code.as_str().into(),
        message: e.message.clone(),
    }
}

fn pending(
    index: i32,
    key: String,
    step_type: &str,
    input: &Value,
    ok: std::result::Result<Value, &Error>,
    trace: &TraceContext,
    started: chrono::DateTime<Utc>,
) -> PendingStep {
    let (status, output, code) = match ok {
        Ok(v) => ("succeeded", Some(v), None),
        Err(e) => ("failed", None, Some(e.code.as_str().to_string())),
    };
    PendingStep {
        index,
        key,
        step_type: step_type.into(),
        input_hash: contracts::canonical::body_hash(input),
        status: status.into(),
        output,
        error_code: code,
        trace: trace.clone(),
        started_at: started,
    }
}

/// The final answer as JSON: the text parsed as JSON when a schema expects structure (a
/// fenced ```json block is unwrapped), else the text itself.
pub fn parse_answer(text: &str, structured: bool) -> Value {
    if !structured {
        return Value::String(text.to_string());
    }
    let t = text.trim();
    let t = t
        .strip_prefix("```json")
        .or_else(|| t.strip_prefix("```"))
        .and_then(|x| x.strip_suffix("```"))
        .unwrap_or(t)
        .trim();
    serde_json::from_str(t).unwrap_or_else(|_| Value::String(text.to_string()))
}

fn user_text(input: &Value) -> String {
    match input.get("message").and_then(Value::as_str) {
        Some(m) => m.to_string(),
        None => input.to_string(),
    }
}

#[async_trait]
impl Executor for LlmExecutor {
    /// The agent's `safety.timeout_seconds` bounds the whole attempt (`E-MODEL-009`); a model
    /// call cut off by it settles its reservation through the guard.
    async fn execute(&self, ctx: &RunContext, journal: &mut Journal) -> Result<Outcome> {
        let limit = std::time::Duration::from_secs(u64::from(ctx.contract.safety.timeout_seconds));
        match tokio::time::timeout(limit, self.run(ctx, journal)).await {
            Ok(r) => r,
            Err(_) => Ok(failed(&Error::new(
                ErrorCode::ModelRunTimeout,
                "the run passed its agent's timeout_seconds",
            ))),
        }
    }
}

impl LlmExecutor {
    async fn run(&self, ctx: &RunContext, journal: &mut Journal) -> Result<Outcome> {
        // Step 0: the policy this run executes under.
        let policy: EffectivePolicy = match journal.completed(0) {
            Some(v) => serde_json::from_value(v["policy"].clone()).map_err(Error::internal)?,
            None => {
                let started = Utc::now();
                let span = ctx.trace.child();
                match self.resolve(ctx).await {
                    Ok((p, record)) => {
                        journal.record(pending(
                            0,
                            "policy".into(),
                            "policy",
                            &json!({"agent": ctx.agent}),
                            Ok(record),
                            &span,
                            started,
                        ));
                        p
                    }
                    Err(e) if is_transient(&e) => return Err(e),
                    Err(e) => {
                        journal.record(pending(
                            0,
                            "policy".into(),
                            "policy",
                            &json!({"agent": ctx.agent}),
                            Err(&e),
                            &span,
                            started,
                        ));
                        return Ok(failed(&e));
                    }
                }
            }
        };
        let schema = match self.schemas.for_agent(&self.control, &ctx.contract).await {
            Ok(s) => s,
            Err(e) if is_transient(&e) => return Err(e),
            Err(e) => return Ok(failed(&e)),
        };
        let (system, (tools, firewall)) =
            match (self.system_prompt(ctx).await, self.tools(ctx).await) {
                (Ok(s), Ok((t, f))) => (s, (t, f)),
                (Err(e), _) | (_, Err(e)) if is_transient(&e) => return Err(e),
                (Err(e), _) | (_, Err(e)) => return Ok(failed(&e)),
            };
        // A channel's conversation history, read only from channels of domains this agent
        // may read (the channel hub's side of the context firewall).
        let mut messages =
            match super::history::assemble(&self.control, ctx.run_id, &firewall).await {
                Ok(h) => h,
                Err(e) if is_transient(&e) => return Err(e),
                Err(e) => return Ok(failed(&e)),
            };
        messages.push(ChatMessage::User {
            content: user_text(&ctx.input),
        });
        let mut req = ChatRequest {
            system,
            messages,
            tools,
        };
        let max_steps = i32::from(policy.max_steps);
        let mut idx: i32 = 1;
        let mut used: u64 = 0;
        let mut answers = 0usize;
        let mut calls = 0u32;
        let step_limit = || {
            Error::new(
                ErrorCode::ModelStepLimit,
                "the run reached its step limit without a final answer",
            )
        };
        loop {
            if idx > max_steps {
                return Ok(failed(&step_limit()));
            }
            // A model call.
            let call: ModelCall = match journal.completed(idx) {
                Some(v) => serde_json::from_value(v.clone()).map_err(Error::internal)?,
                None => {
                    if used >= policy.max_tokens_per_run {
                        return Ok(failed(&Error::new(
                            ErrorCode::BudgetRunCeiling,
                            "the run used its max_tokens_per_run",
                        )));
                    }
                    let span = ctx.trace.child();
                    let started = Utc::now();
                    let input =
                        json!({"messages": req.messages.len(), "last": req.messages.last()});
                    journal.flush().await?;
                    let meta = CallMeta {
                        run_id: Some(ctx.run_id),
                        agent: ctx.agent.clone(),
                        trace: span.clone(),
                    };
                    match self
                        .proxy
                        .chat(&policy, &meta, &req, Some(policy.max_tokens_per_run - used))
                        .await
                    {
                        Ok(c) => {
                            journal.record(pending(
                                idx,
                                format!("model-{idx}"),
                                "model_call",
                                &input,
                                Ok(serde_json::to_value(&c).map_err(Error::internal)?),
                                &span,
                                started,
                            ));
                            journal.flush().await?;
                            c
                        }
                        Err(e) if is_transient(&e) => return Err(e),
                        Err(e) => {
                            journal.record(pending(
                                idx,
                                format!("model-{idx}"),
                                "model_call",
                                &input,
                                Err(&e),
                                &span,
                                started,
                            ));
                            return Ok(failed(&e));
                        }
                    }
                }
            };
            calls += 1;
            used += call.envelope.usage.input_tokens + call.envelope.usage.output_tokens;
            idx += 1;
            let resp = call.response;
            req.messages.push(ChatMessage::Assistant {
                content: resp.text.clone(),
                tool_calls: resp.tool_calls.clone(),
            });
            if resp.tool_calls.is_empty() {
                let answer = parse_answer(&resp.text, schema.is_present());
                match validate_result(&schema, answer) {
                    Ok(result) => {
                        return Ok(Outcome::Succeeded(json!({
                            "result": result,
                            "model_calls": calls,
                            "tokens": used,
                            "route": policy.route,
                        })));
                    }
                    Err(errors) => {
                        answers += 1;
                        let _ = self.anomalies.record(Anomaly::SchemaFailure).await;
                        if answers >= SCHEMA_ATTEMPTS {
                            return Ok(failed(&super::validate::schema_error(&errors)));
                        }
                        req.messages.push(ChatMessage::User {
                            content: format!(
                                "Your answer does not satisfy the required output JSON Schema:\n- {}\nReply again with only a JSON document that satisfies the schema.",
                                errors.join("\n- ")
                            ),
                        });
                        continue;
                    }
                }
            }
            for tc in resp.tool_calls {
                if idx > max_steps {
                    return Ok(failed(&step_limit()));
                }
                let result = match journal.completed(idx) {
                    Some(v) => v.clone(),
                    None => {
                        let span = ctx.trace.child();
                        let started = Utc::now();
                        let input = json!({"tool": tc.name, "arguments": tc.arguments});
                        let res = if !ctx.contract.tools.iter().any(|t| t.0 == tc.name) {
                            Err(Error::new(
                                ErrorCode::ModelBadToolCall,
                                "the model called a tool the agent does not have",
                            )
                            .with_details(json!({"tool": tc.name})))
                        } else {
                            let call = ToolCall {
                                project: ctx.project.clone(),
                                agent: ctx.agent.clone(),
                                run_id: ctx.run_id,
                                mode: ctx.mode,
                                trace: span.clone(),
                                tool: tc.name.clone(),
                                arguments: tc.arguments.clone(),
                                approval: journal.approval(idx).map(str::to_string),
                                idempotency_key: Some(idempotency_key(ctx.run_id, idx)),
                            };
                            // The intent (with its idempotency key) is durable before the call.
                            journal.intent(idx, &format!("tool-{idx}"), &call, started);
                            journal.flush().await?;
                            match self.gateway.call(ctx.contract.safety.max_risk, &call).await {
                                Err(e) if e.code == ErrorCode::McpGateApprovalMissing => {
                                    // Park the run: the model's text is the call's rationale.
                                    let need = needs_approval(
                                        ctx,
                                        idx,
                                        &call,
                                        &e,
                                        Some(resp.text.as_str()),
                                    );
                                    journal.record(PendingStep {
                                        status: "waiting".into(),
                                        output: Some(waiting_output(&need)),
                                        error_code: Some(e.code.as_str().into()),
                                        ..pending(
                                            idx,
                                            format!("tool-{idx}"),
                                            "tool_call",
                                            &input,
                                            Err(&e),
                                            &span,
                                            started,
                                        )
                                    });
                                    return Ok(Outcome::WaitingApproval {
                                        step_key: format!("tool-{idx}"),
                                        reason: need.reason.clone(),
                                        request: Some(need),
                                    });
                                }
                                Err(e) if e.code == ErrorCode::ToolError => {
                                    // A tool error goes back to the model as the tool's
                                    // result (journaled with its code, never re-executed);
                                    // the step limit still bounds the run.
                                    Ok(json!({
                                        "isError": true,
                                        "error_code": e.code.as_str(),
                                        "result": e.details.as_ref().and_then(|d| d.get("result")).cloned(),
                                    }))
                                }
                                other => other,
                            }
                        };
                        match res {
                            Ok(out) => {
                                let tool_error = out.get("isError") == Some(&Value::Bool(true))
                                    && out.get("error_code").is_some();
                                journal.record(PendingStep {
                                    error_code: tool_error
                                        .then(|| ErrorCode::ToolError.as_str().to_string()),
                                    ..pending(
                                        idx,
                                        format!("tool-{idx}"),
                                        "tool_call",
                                        &input,
                                        Ok(out.clone()),
                                        &span,
                                        started,
                                    )
                                });
                                journal.flush().await?;
                                out
                            }
                            Err(e) if is_transient(&e) => return Err(e),
                            Err(e) => {
                                if e.code == ErrorCode::RunToolBlocked {
                                    let _ = self.anomalies.record(Anomaly::Denial).await;
                                }
                                journal.record(pending(
                                    idx,
                                    format!("tool-{idx}"),
                                    "tool_call",
                                    &input,
                                    Err(&e),
                                    &span,
                                    started,
                                ));
                                return Ok(failed(&e));
                            }
                        }
                    }
                };
                // The second wall: a result of a foreign domain never reaches the model, even
                // if a gateway let it through.
                if let Err(e) = firewall.admit_tool_result(&tc.name) {
                    return Ok(failed(&e));
                }
                req.messages.push(ChatMessage::Tool {
                    call_id: tc.id,
                    name: tc.name,
                    content: match result {
                        Value::String(s) => s,
                        other => other.to_string(),
                    },
                });
                idx += 1;
            }
        }
    }
}

fn validate_result(
    schema: &OutputSchema,
    answer: Value,
) -> std::result::Result<Value, Vec<String>> {
    schema.validate(answer).map(|v| v.into_value())
}

/// Runs each agent with the executor its contract names: scripted steps, or the LLM
/// tool-calling loop (when a model proxy is configured).
pub struct AgentExecutor {
    scripted: ScriptedExecutor,
    llm: Option<LlmExecutor>,
}

impl AgentExecutor {
    pub fn new(scripted: ScriptedExecutor, llm: Option<LlmExecutor>) -> Self {
        Self { scripted, llm }
    }
}

#[async_trait]
impl Executor for AgentExecutor {
    async fn execute(&self, ctx: &RunContext, journal: &mut Journal) -> Result<Outcome> {
        match (&ctx.contract.executor, &self.llm) {
            (contracts::Executor::Llm { .. }, Some(llm)) => llm.execute(ctx, journal).await,
            _ => self.scripted.execute(ctx, journal).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers() {
        assert_eq!(parse_answer("hi", false), json!("hi"));
        assert_eq!(parse_answer("{\"a\":1}", true), json!({"a": 1}));
        assert_eq!(
            parse_answer("```json\n{\"a\":1}\n```", true),
            json!({"a": 1})
        );
        assert_eq!(parse_answer("not json", true), json!("not json"));
        assert_eq!(user_text(&json!({"message": "why?"})), "why?");
        assert_eq!(user_text(&json!({"n": 1})), "{\"n\":1}");
    }
}
