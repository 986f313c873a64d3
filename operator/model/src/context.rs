//! Prompt assembly under the context firewall: what may enter an LLM agent's model call.
//!
//! Every item that goes into a model request carries the context domain of what produced it:
//! the tools the model is offered (their provider's domain), each tool result (the same), and
//! the run input's labelled parts: `input.context_domain` (the domain of the channel or caller
//! that started the run) and `input.history[*].context_domain` (earlier conversation events a
//! caller passes along). [`PromptFirewall`] admits an item only when
//! [`awooop_core::context::ContextFirewall::may_read`] says the agent may read its domain; a
//! refused item fails the run before the model sees anything of it: `E-CONTEXT-001` for a tool
//! offered to the model, `E-CONTEXT-002` for any other item, `E-CONTEXT-003` when the project
//! declares domains and the item has none of them. The gateway refuses foreign tools on its
//! own (gate 2); this is the second wall, at the last point before data leaves for a provider.

use std::collections::HashMap;

use serde_json::{Value, json};

use awooop_contracts::{McpGatewayContract, ProjectContract};
use awooop_core::context::ContextFirewall;
use awooop_core::error::{Error, Result};

/// The firewall of one run: the agent, its domain, and the domain of each exposed tool.
#[derive(Debug, Clone)]
pub struct PromptFirewall {
    firewall: ContextFirewall,
    agent: String,
    domain: String,
    tool_domains: HashMap<String, Option<String>>,
}

impl PromptFirewall {
    pub fn new(
        agent: &str,
        agent_domain: &str,
        project: Option<&ProjectContract>,
        gateway: Option<&McpGatewayContract>,
    ) -> Self {
        let mut tool_domains = HashMap::new();
        if let Some(g) = gateway {
            let providers: HashMap<&str, Option<String>> = g
                .providers
                .iter()
                .map(|p| {
                    (
                        p.name.as_str(),
                        p.context_domain.as_ref().map(|d| d.0.clone()),
                    )
                })
                .collect();
            for t in &g.tools {
                let d = providers.get(t.provider.as_str()).cloned().flatten();
                tool_domains.insert(format!("{}__{}", t.provider.as_str(), t.name), d);
            }
        }
        Self {
            firewall: project.map(|p| p.firewall()).unwrap_or_default(),
            agent: agent.to_string(),
            domain: agent_domain.to_string(),
            tool_domains,
        }
    }

    fn tool_domain(&self, tool: &str) -> Option<&str> {
        self.tool_domains.get(tool).and_then(|d| d.as_deref())
    }

    /// A tool offered to the model (its name, description and schema are context too).
    pub fn offer_tool(&self, tool: &str) -> Result<()> {
        let d = self.tool_domain(tool);
        self.firewall
            .may_read(&self.agent, &self.domain, d)
            .map_err(|r| {
                Error::new(
                    r.tool_code(),
                    "the agent's contract lists a tool of a context domain it may not read",
                )
                .with_details(json!({"tool": tool, "tool_domain": d, "agent_domain": self.domain}))
            })
    }

    /// A tool result about to be appended to the conversation.
    pub fn admit_tool_result(&self, tool: &str) -> Result<()> {
        let d = self.tool_domain(tool);
        self.admit(d, "tool_result")
            .map_err(|e| e.with_details(json!({"tool": tool, "item_domain": d})))
    }

    /// The run input's labelled parts: its own domain and each history event's.
    pub fn admit_input(&self, input: &Value) -> Result<()> {
        if let Some(d) = input.get("context_domain") {
            let d = d.as_str();
            self.admit(d, "input")
                .map_err(|e| e.with_details(json!({"item": "input", "item_domain": d})))?;
        }
        if let Some(events) = input.get("history").and_then(Value::as_array) {
            for (i, ev) in events.iter().enumerate() {
                let d = ev.get("context_domain").and_then(Value::as_str);
                self.admit(d, "conversation_event").map_err(|e| {
                    e.with_details(json!({"item": format!("/history/{i}"), "item_domain": d}))
                })?;
            }
        }
        Ok(())
    }

    /// An earlier conversation event of the domain `item_domain` (its channel's agent's).
    pub fn admit_history(&self, item_domain: Option<&str>) -> Result<()> {
        self.admit(item_domain, "conversation_event")
    }

    fn admit(&self, item_domain: Option<&str>, what: &str) -> Result<()> {
        self.firewall
            .may_read(&self.agent, &self.domain, item_domain)
            .map_err(|r| {
                Error::new(
                    r.item_code(),
                    format!("a {what} of a context domain this agent may not read was refused"),
                )
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gateway() -> McpGatewayContract {
        serde_json::from_value(json!({
            "providers": [
                {"name": "k8s", "transport": {"type": "stdio", "entry": "k8s"}, "context_domain": "infra"},
                {"name": "market", "transport": {"type": "stdio", "entry": "market"}, "context_domain": "business"}
            ],
            "tools": [
                {"provider": "k8s", "name": "logs", "risk": "read_only", "environments": ["dev"], "input_schema": {"type": "object"}},
                {"provider": "market", "name": "search_products", "risk": "read_only", "environments": ["dev"], "input_schema": {"type": "object"}}
            ]
        }))
        .unwrap()
    }

    #[test]
    fn business_agent_never_admits_infra_items() {
        let g = gateway();
        let f = PromptFirewall::new("openclaw-biz", "business", None, Some(&g));
        assert!(f.offer_tool("market__search_products").is_ok());
        assert_eq!(
            f.offer_tool("k8s__logs").unwrap_err().code.as_str(),
            "E-CONTEXT-001"
        );
        assert!(f.admit_tool_result("market__search_products").is_ok());
        assert_eq!(
            f.admit_tool_result("k8s__logs").unwrap_err().code.as_str(),
            "E-CONTEXT-002"
        );
        assert!(f.admit_input(&json!({"message": "hi"})).is_ok());
        assert!(
            f.admit_input(&json!({"context_domain": "business", "history": [{"context_domain": "business", "text": "x"}]}))
                .is_ok()
        );
        let e = f
            .admit_input(&json!({"history": [{"context_domain": "business"}, {"context_domain": "infra", "text": "pod crashloop"}]}))
            .unwrap_err();
        assert_eq!(e.code.as_str(), "E-CONTEXT-002");
        assert_eq!(e.details.unwrap()["item"], "/history/1");
        assert_eq!(
            f.admit_input(&json!({"context_domain": "infra"}))
                .unwrap_err()
                .code
                .as_str(),
            "E-CONTEXT-002"
        );
    }
}
