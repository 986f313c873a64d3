//! Cross-field rules of the six contracts: what JSON Schema cannot say (uniqueness of names,
//! references between sections, ordering of bounds). Pure; each violation names a JSON pointer.

use std::collections::{BTreeSet, HashMap, HashSet};

use super::{Contract, Violation, types::*};
use awooop_core::error::ErrorCode;

struct Out(Vec<Violation>);

impl Out {
    fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(Violation {
            path: path.into(),
            code: ErrorCode::ContractSemantic.as_str(),
            message: message.into(),
        });
    }

    /// Report every later duplicate of a name in a list.
    fn unique<'a>(&mut self, base: &str, field: &str, names: impl Iterator<Item = &'a str>) {
        let mut seen = HashSet::new();
        for (i, n) in names.enumerate() {
            if !seen.insert(n) {
                let path = if field.is_empty() {
                    format!("{base}/{i}")
                } else {
                    format!("{base}/{i}/{field}")
                };
                self.push(path, format!("duplicate name '{n}'"));
            }
        }
    }
}

/// Check the cross-field rules of a typed contract.
pub fn check(contract: &Contract) -> Vec<Violation> {
    let mut out = Out(Vec::new());
    match contract {
        Contract::Project(p) => project(p, &mut out),
        Contract::Agent(a) => agent(a, &mut out),
        Contract::McpGateway(g) => gateway(g, &mut out),
        Contract::Policy(p) => policy(p, &mut out),
        Contract::Runtime(r) => runtime(r, &mut out),
        Contract::Channel(c) => channel(c, &mut out),
    }
    out.0
}

fn project(p: &ProjectContract, out: &mut Out) {
    if let Some(c) = &p.context {
        out.unique(
            "/context/domains",
            "name",
            c.domains.iter().map(|d| d.name.as_str()),
        );
    }
    if !p
        .data_boundary
        .allowed_classes
        .contains(&p.data_boundary.default_class)
    {
        out.push(
            "/data_boundary/default_class",
            "default_class must be one of allowed_classes",
        );
    }
    if p.workers.min_replicas > p.workers.max_replicas {
        out.push(
            "/workers/min_replicas",
            "min_replicas must not exceed max_replicas",
        );
    }
    if p.budget.currency_limit_micros.is_some() != p.budget.currency.is_some() {
        out.push(
            "/budget/currency",
            "currency and currency_limit_micros go together",
        );
    }
    out.unique("/environments", "", p.environments.iter().map(Slug::as_str));
    out.unique("/channels", "", p.channels.iter().map(Slug::as_str));
    out.unique(
        "/acl/approvers",
        "",
        p.acl.approvers.iter().map(|x| x.0.as_str()),
    );
    for (i, c) in p.acl.chat_approvers.iter().enumerate() {
        if !p.acl.approvers.is_empty() && !p.acl.approvers.contains(&c.principal) {
            out.push(
                format!("/acl/chat_approvers/{i}/principal"),
                "a chat approver must map to a principal listed in acl.approvers",
            );
        }
    }
    if !p.acl.approvers.is_empty()
        && p.acl.approvers.len() < usize::from(p.approval.required_approvals)
    {
        out.push(
            "/approval/required_approvals",
            "required_approvals exceeds the number of listed approvers: activation would be impossible",
        );
    }
}

fn agent(a: &AgentContract, out: &mut Out) {
    out.unique("/tools", "", a.tools.iter().map(|t| t.0.as_str()));
    if let Executor::Scripted { steps } = &a.executor {
        out.unique(
            "/executor/steps",
            "key",
            steps.iter().map(|s| s.key().as_str()),
        );
        if steps.len() > usize::from(a.safety.max_steps) {
            out.push(
                "/executor/steps",
                "more scripted steps than safety.max_steps",
            );
        }
        for (i, s) in steps.iter().enumerate() {
            if let ScriptStep::ToolCall { tool, .. } = s
                && !a.tools.contains(tool)
            {
                out.push(
                    format!("/executor/steps/{i}/tool"),
                    format!("tool '{}' is not listed in the agent's tools", tool.0),
                );
            }
        }
    }
}

fn gateway(g: &McpGatewayContract, out: &mut Out) {
    out.unique(
        "/credential_refs",
        "name",
        g.credential_refs.iter().map(|c| c.name.as_str()),
    );
    out.unique(
        "/providers",
        "name",
        g.providers.iter().map(|p| p.name.as_str()),
    );
    let creds: HashSet<&str> = g.credential_refs.iter().map(|c| c.name.as_str()).collect();
    let providers: HashMap<&str, &McpProvider> =
        g.providers.iter().map(|p| (p.name.as_str(), p)).collect();
    for (i, p) in g.providers.iter().enumerate() {
        if p.name.as_str().contains("__") {
            out.push(
                format!("/providers/{i}/name"),
                "provider names must not contain '__' (it separates provider and tool)",
            );
        }
        for (j, c) in p.credentials.iter().enumerate() {
            if !creds.contains(c.credential.as_str()) {
                out.push(
                    format!("/providers/{i}/credentials/{j}/credential"),
                    format!("unknown credential ref '{}'", c.credential.as_str()),
                );
            }
            let wrong = match (&p.transport, &c.inject) {
                (McpTransport::StreamableHttp { .. }, Injection::Env { .. }) => {
                    Some("an HTTP provider takes credentials in headers")
                }
                (McpTransport::Stdio { .. }, Injection::Header { .. }) => {
                    Some("a stdio provider takes credentials in environment variables")
                }
                _ => None,
            };
            if let Some(msg) = wrong {
                out.push(format!("/providers/{i}/credentials/{j}/inject"), msg);
            }
        }
    }
    let mut exposed = HashSet::new();
    for (i, t) in g.tools.iter().enumerate() {
        if !providers.contains_key(t.provider.as_str()) {
            out.push(
                format!("/tools/{i}/provider"),
                format!("unknown provider '{}'", t.provider.as_str()),
            );
        }
        let name = format!("{}__{}", t.provider.as_str(), t.name);
        if !exposed.insert(name.clone()) {
            out.push(
                format!("/tools/{i}/name"),
                format!("exposed tool name '{name}' collides with an earlier tool"),
            );
        }
        let schema = serde_json::Value::Object(t.input_schema.clone());
        if let Err(why) = super::tenant_schema::compile(&schema) {
            out.push(
                format!("/tools/{i}/input_schema"),
                format!("input_schema {why}"),
            );
        }
        if t.input_schema.get("type").and_then(|v| v.as_str()) != Some("object") {
            out.push(
                format!("/tools/{i}/input_schema/type"),
                "tool arguments are a JSON object: input_schema.type must be \"object\"",
            );
        }
    }
    // Dry-run companions and rollback tools must be tools of this contract (and not the tool
    // itself: a dry run that is the real call would be no evidence at all).
    let names: HashSet<String> = g
        .tools
        .iter()
        .map(|t| format!("{}__{}", t.provider.as_str(), t.name))
        .collect();
    for (i, t) in g.tools.iter().enumerate() {
        let me = format!("{}__{}", t.provider.as_str(), t.name);
        if let Some(DryRun::Tool { tool }) = &t.dry_run
            && (!names.contains(&tool.0) || tool.0 == me)
        {
            out.push(
                format!("/tools/{i}/dry_run/tool"),
                format!(
                    "dry-run tool '{}' is not another tool of this contract",
                    tool.0
                ),
            );
        }
        if let Some(r) = &t.rollback_tool
            && !names.contains(&r.0)
        {
            out.push(
                format!("/tools/{i}/rollback_tool"),
                format!("rollback tool '{}' is not a tool of this contract", r.0),
            );
        }
    }
    let tool_envs: HashMap<String, BTreeSet<&str>> = g
        .tools
        .iter()
        .map(|t| {
            (
                format!("{}__{}", t.provider.as_str(), t.name),
                t.environments.iter().map(Slug::as_str).collect(),
            )
        })
        .collect();
    for (i, gr) in g.grants.iter().enumerate() {
        out.unique(
            &format!("/grants/{i}/tools"),
            "",
            gr.tools.iter().map(|t| t.0.as_str()),
        );
        for (j, t) in gr.tools.iter().enumerate() {
            match tool_envs.get(&t.0) {
                None => out.push(
                    format!("/grants/{i}/tools/{j}"),
                    format!("grant names unknown tool '{}'", t.0),
                ),
                Some(envs) => {
                    for (k, e) in gr.environments.iter().enumerate() {
                        if !envs.contains(e.as_str()) {
                            out.push(
                                format!("/grants/{i}/environments/{k}"),
                                format!(
                                    "tool '{}' is not allowed in environment '{}'",
                                    t.0,
                                    e.as_str()
                                ),
                            );
                        }
                    }
                }
            }
        }
    }
}

fn policy(p: &PolicyContract, out: &mut Out) {
    out.unique(
        "/providers",
        "name",
        p.providers.iter().map(|x| x.name.as_str()),
    );
    out.unique("/routes", "name", p.routes.iter().map(|x| x.name.as_str()));
    let providers: HashSet<&str> = p.providers.iter().map(|x| x.name.as_str()).collect();
    let defaults = p.routes.iter().filter(|r| r.agents.is_empty()).count();
    if defaults > 1 {
        out.push("/routes", "at most one default route (with no agents)");
    }
    let mut agent_route: HashMap<&str, usize> = HashMap::new();
    for (i, r) in p.routes.iter().enumerate() {
        for (j, t) in r.targets.iter().enumerate() {
            if !providers.contains(t.provider.as_str()) {
                out.push(
                    format!("/routes/{i}/targets/{j}/provider"),
                    format!("unknown provider '{}'", t.provider.as_str()),
                );
            }
        }
        for (j, a) in r.agents.iter().enumerate() {
            if let Some(prev) = agent_route.insert(a.as_str(), i) {
                out.push(
                    format!("/routes/{i}/agents/{j}"),
                    format!("agent '{}' already routed by route {prev}", a.as_str()),
                );
            }
        }
    }
    for (i, pr) in p.prices.iter().enumerate() {
        if !providers.contains(pr.provider.as_str()) {
            out.push(
                format!("/prices/{i}/provider"),
                format!("unknown provider '{}'", pr.provider.as_str()),
            );
        }
    }
    out.unique(
        "/agent_budgets",
        "agent",
        p.agent_budgets.iter().map(|b| b.agent.as_str()),
    );
}

fn runtime(r: &RuntimeContract, out: &mut Out) {
    if r.heartbeat_seconds >= r.lease_seconds {
        out.push(
            "/heartbeat_seconds",
            "heartbeat_seconds must be shorter than lease_seconds",
        );
    }
    if r.lease_seconds > r.run_deadline_seconds {
        out.push(
            "/lease_seconds",
            "lease_seconds must not exceed run_deadline_seconds",
        );
    }
}

fn channel(c: &ChannelContract, out: &mut Out) {
    out.unique(
        "/channels",
        "name",
        c.channels.iter().map(|x| x.name.as_str()),
    );
    for (i, ch) in c.channels.iter().enumerate() {
        if ch.provider != ChannelProvider::Api && ch.verify_secret.is_none() {
            out.push(
                format!("/channels/{i}/verify_secret"),
                "every channel except 'api' needs a verification secret",
            );
        }
        if ch.outbound && ch.provider != ChannelProvider::Api && ch.send_credential.is_none() {
            out.push(
                format!("/channels/{i}/send_credential"),
                "an outbound channel needs a send credential",
            );
        }
        if ch.forward_to.is_some() && ch.provider == ChannelProvider::Api {
            out.push(
                format!("/channels/{i}/forward_to"),
                "only webhook channels (telegram, line, slack) can forward to an existing handler",
            );
        }
    }
}
