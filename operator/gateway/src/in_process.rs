//! The runtime's [`ToolGateway`], backed by the gateway pipeline in process (the module was
//! called `runtime`, a third meaning of that word beside the crate and the contract kind).
//!
//! Identity comes from the run being executed (project, agent, run id, the run's mode) and the
//! environment this process's workers run in; the same five gates, argument validation,
//! credential injection, redaction, truncation and audit apply as on `/mcp`. Scripted runs
//! cannot present approval tokens, so write/execute tools fail with `E-MCP-GATE-005` here.

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
            .call_tool(
                &caller,
                &call.tool,
                Some(call.arguments.clone()),
                None,
                &call.trace,
            )
            .await
    }
}
