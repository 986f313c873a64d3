//! The runtime's [`ToolGateway`], backed by the gateway pipeline in process (the module was
//! called `runtime`, a third meaning of that word beside the crate and the contract kind).
//!
//! Identity comes from the run being executed (project, agent, run id, the run's mode) and the
//! environment this process's workers run in; the same five gates, argument validation,
//! credential injection, redaction, truncation and audit apply as on `/mcp`. A call that needs
//! approval fails with `E-MCP-GATE-005` the first time (the executor parks the run and an
//! approval request is created); once the request reaches its quorum the token minted by
//! [`KeyMinter`] rides along on the resumed call, with the step's idempotency key.

use std::sync::Arc;

use async_trait::async_trait;
use serde_json::Value;

use super::service::{Caller, Gateway};
use super::tokens::{self, RunTokenClaims};
use awooop_core::error::Result;
use awooop_runtime::executor::{ToolCall, ToolGateway};

pub struct InProcessGateway {
    gw: Arc<Gateway>,
}

impl InProcessGateway {
    pub fn new(gw: Arc<Gateway>) -> Self {
        Self { gw }
    }

    /// A per-run bearer token for an agent process executing this run out of process.
    pub fn mint_run_token(&self, call: &ToolCall, ttl_seconds: i64) -> Result<String> {
        let now = chrono::Utc::now().timestamp();
        tokens::mint_run_token(
            &self.gw.keys().run_token,
            &RunTokenClaims {
                project: call.project.as_str().into(),
                agent: call.agent.clone(),
                run_id: Some(call.run_id),
                environment: self.gw.config().runtime_environment.clone(),
                mode: Some(call.mode),
                iat: now,
                exp: now + ttl_seconds,
            },
        )
    }
}

#[async_trait]
impl ToolGateway for InProcessGateway {
    async fn call_tool(&self, call: &ToolCall) -> Result<Value> {
        let caller = Caller {
            project: call.project.clone(),
            agent: call.agent.clone(),
            run_id: Some(call.run_id),
            environment: self.gw.config().runtime_environment.clone(),
            mode: Some(call.mode),
        };
        self.gw
            .call_tool_with(
                &caller,
                &call.tool,
                Some(call.arguments.clone()),
                call.approval.as_deref(),
                call.idempotency_key.as_deref(),
                &call.trace,
            )
            .await
    }
}

/// Mints approval tokens when a request reaches its quorum: bound to project, agent, the
/// environment runs execute in, run, tool and argument hash; the approvers joined by commas;
/// a fresh `jti` (spent once by the gateway).
pub struct KeyMinter {
    key: [u8; 32],
    environment: String,
}

impl KeyMinter {
    pub fn new(keys: &super::keys::GatewayKeys, environment: impl Into<String>) -> Self {
        Self {
            key: keys.approval,
            environment: environment.into(),
        }
    }
}

impl awooop_runtime::approvals::TokenMinter for KeyMinter {
    fn mint(&self, r: &awooop_runtime::approvals::MintRequest<'_>) -> Result<String> {
        use super::approval;
        let run = r.run_id.to_string();
        let claims = approval::claims(
            approval::Expected {
                project: r.project,
                agent: r.agent,
                environment: &self.environment,
                run_id: Some(&run),
                tool: r.tool,
                args_sha256: r.args_sha256,
            },
            &r.approvers.join(","),
            chrono::Utc::now().timestamp(),
            r.ttl_seconds.clamp(60, approval::MAX_TTL_SECONDS),
        );
        Ok(approval::mint(&self.key, &claims))
    }
}
