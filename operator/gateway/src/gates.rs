//! The five gates, as one pure decision: project AND agent AND tool AND environment AND
//! approval. Deny by default: a missing fact (no project row, no active agent, no grant, no
//! registered tool) is a denial, never a pass.
//!
//! Gate order is fixed and each denial has its own stable code: (1) the project exists and is
//! active; then the tool is registered and enabled (`E-MCP-GATE-001`); (2) the agent has an
//! active Agent contract listing the tool, a grant naming it, and the tool's risk is within
//! the agent's safety ceiling (`E-MCP-GATE-002`); (3) the risk class is allowed in the
//! effective mode (shadow, canary and read_only: read-only tools only) and destructive tools
//! only when the project allows them (`E-MCP-GATE-004`); (4) the call's environment is named by
//! both the grant and the tool (`E-MCP-GATE-003`); (5) the decision says whether an approval
//! token is needed; verifying it (signature, bindings, replay) is [`super::approval`]'s job.
//! `tools/list` uses the same function, so a listed tool is exactly a callable one (up to the
//! approval token, which is per call).

use std::collections::HashSet;

use super::registry::{Registry, ToolEntry};
use awooop_contracts::RiskClass;
use awooop_control::MigrationMode;
use awooop_core::context::ContextFirewall;
use awooop_core::error::ErrorCode;

/// What the gates know about the project.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProjectState {
    pub active: bool,
    pub mode: MigrationMode,
    pub allow_destructive: bool,
    /// The context domains the active Project contract declares (legacy regime if none).
    pub firewall: ContextFirewall,
}

/// What the gates know about the calling agent's active contract.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentState {
    pub tools: HashSet<String>,
    pub max_risk: RiskClass,
    /// The agent's `context_domain`.
    pub domain: String,
}

/// The caller as fixed by its credential.
#[derive(Debug, Clone, Copy)]
pub struct CallerView<'a> {
    pub agent: &'a str,
    pub environment: &'a str,
    /// The mode the credential was minted for (a run's mode); `None`: the project's mode.
    pub mode: Option<MigrationMode>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Denial {
    pub gate: u8,
    pub code: ErrorCode,
    pub reason: &'static str,
}

fn deny(gate: u8, code: ErrorCode, reason: &'static str) -> Denial {
    Denial { gate, code, reason }
}

/// A passed decision: the tool, the effective mode, and whether an approval token is needed.
#[derive(Debug)]
pub struct Allowed<'r> {
    pub tool: &'r ToolEntry,
    pub mode: MigrationMode,
    pub needs_approval: bool,
}

/// The effective mode never exceeds the project's: a run minted in a later mode cannot
/// outlive a step back.
pub fn effective_mode(project: MigrationMode, credential: Option<MigrationMode>) -> MigrationMode {
    credential.map_or(project, |m| m.min(project))
}

/// Modes in which only read-only tools may be called.
pub fn read_only_mode(m: MigrationMode) -> bool {
    matches!(
        m,
        MigrationMode::Shadow | MigrationMode::Canary | MigrationMode::ReadOnly
    )
}

pub fn decide<'r>(
    caller: CallerView<'_>,
    project: Option<&ProjectState>,
    agent: Option<&AgentState>,
    registry: &'r Registry,
    tool: &str,
) -> Result<Allowed<'r>, Denial> {
    // Gate 1: project.
    let p = match project {
        Some(p) if p.active => p,
        _ => {
            return Err(deny(
                1,
                ErrorCode::ProjectNotFound,
                "project does not exist or is not active",
            ));
        }
    };
    let mode = effective_mode(p.mode, caller.mode);
    // Registry lookup (gate 3's first half): an unknown or disabled tool does not exist.
    let t = match registry.tool(tool) {
        Some(t) if t.enabled => t,
        _ => {
            return Err(deny(3, ErrorCode::McpGateUnknownTool, "unknown tool"));
        }
    };
    // Gate 2: agent.
    let Some(a) = agent else {
        return Err(deny(
            2,
            ErrorCode::McpGateGrantMissing,
            "the agent has no active contract",
        ));
    };
    // Gate 2, context firewall first: a tool of a domain the agent may not read is refused
    // with its own code even when a contract or grant (wrongly) names it.
    if let Err(r) = p
        .firewall
        .may_read(caller.agent, &a.domain, t.context_domain.as_deref())
    {
        return Err(deny(
            2,
            r.tool_code(),
            "the tool belongs to a context domain this agent may not read",
        ));
    }
    if !a.tools.contains(tool) {
        return Err(deny(
            2,
            ErrorCode::McpGateGrantMissing,
            "the agent's contract does not list this tool",
        ));
    }
    let Some(grant_envs) = registry.grant(caller.agent, tool) else {
        return Err(deny(
            2,
            ErrorCode::McpGateGrantMissing,
            "no grant gives this tool to the agent",
        ));
    };
    if t.risk > a.max_risk {
        return Err(deny(
            2,
            ErrorCode::McpGateGrantMissing,
            "the tool's risk exceeds the agent's safety ceiling",
        ));
    }
    // Gate 3: risk class against mode and project policy.
    if t.risk != RiskClass::ReadOnly && read_only_mode(mode) {
        return Err(deny(
            3,
            ErrorCode::McpGateRiskBlocked,
            "this mode allows read-only tools only",
        ));
    }
    if t.risk == RiskClass::Destructive && !p.allow_destructive {
        return Err(deny(
            3,
            ErrorCode::McpGateRiskBlocked,
            "destructive tools are disabled for this project",
        ));
    }
    // Gate 3, feature flag: write, execute and destructive tools are blocked in every mode
    // unless the MCP Gateway contract enables them for this one (`enabled_in_modes`).
    if t.risk != RiskClass::ReadOnly && !t.enabled_in_modes.contains(&mode) {
        return Err(deny(
            3,
            ErrorCode::McpGateWriteDisabled,
            "this write tool is not enabled for this mode by the MCP Gateway contract",
        ));
    }
    // Gate 4: environment, named by the grant and allowed by the tool.
    if !grant_envs.contains(caller.environment) || !t.environments.contains(caller.environment) {
        return Err(deny(
            4,
            ErrorCode::McpGateEnvironment,
            "the tool is not granted in this environment",
        ));
    }
    // Gate 5: approval (verified by the caller of this function when needed).
    Ok(Allowed {
        tool: t,
        mode,
        needs_approval: t.needs_approval(),
    })
}

/// The tools a caller may see in `tools/list`: exactly those [`decide`] lets through.
pub fn visible<'r>(
    caller: CallerView<'_>,
    project: Option<&ProjectState>,
    agent: Option<&AgentState>,
    registry: &'r Registry,
) -> Vec<&'r ToolEntry> {
    let mut out: Vec<&ToolEntry> = registry
        .tools()
        .filter(|t| decide(caller, project, agent, registry, &t.exposed).is_ok())
        .collect();
    out.sort_by(|a, b| a.exposed.cmp(&b.exposed));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn registry() -> Registry {
        let c = serde_json::from_value(json!({
            "providers": [{"name": "k8s", "transport": {"type": "streamable_http", "url": "http://127.0.0.1:1/mcp"}}],
            "tools": [
                {"provider": "k8s", "name": "read", "risk": "read_only", "environments": ["dev", "prod"], "input_schema": {"type": "object"}},
                {"provider": "k8s", "name": "write", "risk": "write", "environments": ["dev"], "enabled_in_modes": ["suggest", "auto_remediate"], "input_schema": {"type": "object"}},
                {"provider": "k8s", "name": "exec", "risk": "execute", "environments": ["dev"], "enabled_in_modes": ["suggest", "auto_remediate"], "input_schema": {"type": "object"}},
                {"provider": "k8s", "name": "nuke", "risk": "destructive", "environments": ["dev"], "enabled_in_modes": ["suggest", "auto_remediate"], "input_schema": {"type": "object"}},
                {"provider": "k8s", "name": "off", "risk": "read_only", "environments": ["dev"], "enabled": false, "input_schema": {"type": "object"}},
                {"provider": "k8s", "name": "gated", "risk": "read_only", "environments": ["dev"], "requires_approval": true, "input_schema": {"type": "object"}},
                {"provider": "k8s", "name": "prodonly", "risk": "read_only", "environments": ["prod"], "input_schema": {"type": "object"}},
                {"provider": "k8s", "name": "flagless", "risk": "write", "environments": ["dev"], "input_schema": {"type": "object"}}
            ],
            "grants": [
                {"agent": "a", "tools": ["k8s__read", "k8s__write", "k8s__exec", "k8s__nuke", "k8s__off", "k8s__gated"], "environments": ["dev"]},
                {"agent": "a", "tools": ["k8s__prodonly", "k8s__flagless"], "environments": ["dev"]}
            ]
        }))
        .unwrap();
        Registry::compile(None, &c).unwrap()
    }

    fn agent(max: RiskClass) -> AgentState {
        AgentState {
            tools: [
                "k8s__read",
                "k8s__write",
                "k8s__exec",
                "k8s__nuke",
                "k8s__off",
                "k8s__gated",
                "k8s__prodonly",
                "k8s__flagless",
            ]
            .into_iter()
            .map(String::from)
            .collect(),
            max_risk: max,
            domain: "infra".into(),
        }
    }

    fn project(mode: MigrationMode, destructive: bool) -> ProjectState {
        ProjectState {
            active: true,
            mode,
            allow_destructive: destructive,
            firewall: ContextFirewall::legacy(),
        }
    }

    fn caller<'a>(agent: &'a str, env: &'a str) -> CallerView<'a> {
        CallerView {
            agent,
            environment: env,
            mode: None,
        }
    }

    /// (caller, project, agent, tool, expected: Ok(needs_approval) or Err(code))
    type Case<'a> = (
        CallerView<'a>,
        Option<ProjectState>,
        Option<AgentState>,
        &'a str,
        Result<bool, ErrorCode>,
    );

    #[test]
    fn each_gate_denies_with_its_code() {
        use ErrorCode::*;
        use MigrationMode::*;
        let r = registry();
        let auto = project(AutoRemediate, false);
        let full = agent(RiskClass::Destructive);
        let inactive = ProjectState {
            active: false,
            ..auto.clone()
        };
        // (caller, project, agent, tool, expected: Ok(needs_approval) or Err(code))
        let cases: Vec<Case> = vec![
            (
                caller("a", "dev"),
                None,
                Some(full.clone()),
                "k8s__read",
                Err(ProjectNotFound),
            ),
            (
                caller("a", "dev"),
                Some(inactive.clone()),
                Some(full.clone()),
                "k8s__read",
                Err(ProjectNotFound),
            ),
            (
                caller("a", "dev"),
                Some(auto.clone()),
                Some(full.clone()),
                "k8s__missing",
                Err(McpGateUnknownTool),
            ),
            (
                caller("a", "dev"),
                Some(auto.clone()),
                Some(full.clone()),
                "k8s__off",
                Err(McpGateUnknownTool),
            ),
            (
                caller("a", "dev"),
                Some(auto.clone()),
                None,
                "k8s__read",
                Err(McpGateGrantMissing),
            ),
            (
                caller("b", "dev"),
                Some(auto.clone()),
                Some(full.clone()),
                "k8s__read",
                Err(McpGateGrantMissing),
            ),
            (
                caller("a", "dev"),
                Some(auto.clone()),
                Some(agent(RiskClass::ReadOnly)),
                "k8s__write",
                Err(McpGateGrantMissing),
            ),
            (
                caller("a", "prod"),
                Some(auto.clone()),
                Some(full.clone()),
                "k8s__read",
                Err(McpGateEnvironment),
            ),
            (
                caller("a", "dev"),
                Some(auto.clone()),
                Some(full.clone()),
                "k8s__prodonly",
                Err(McpGateEnvironment),
            ),
            (
                caller("a", "dev"),
                Some(project(Shadow, true)),
                Some(full.clone()),
                "k8s__write",
                Err(McpGateRiskBlocked),
            ),
            (
                caller("a", "dev"),
                Some(project(Canary, true)),
                Some(full.clone()),
                "k8s__exec",
                Err(McpGateRiskBlocked),
            ),
            (
                caller("a", "dev"),
                Some(project(ReadOnly, true)),
                Some(full.clone()),
                "k8s__write",
                Err(McpGateRiskBlocked),
            ),
            (
                caller("a", "dev"),
                Some(auto.clone()),
                Some(full.clone()),
                "k8s__nuke",
                Err(McpGateRiskBlocked),
            ),
            (
                caller("a", "dev"),
                Some(project(AutoRemediate, true)),
                Some(full.clone()),
                "k8s__nuke",
                Ok(true),
            ),
            (
                caller("a", "dev"),
                Some(project(Shadow, false)),
                Some(full.clone()),
                "k8s__read",
                Ok(false),
            ),
            (
                caller("a", "dev"),
                Some(project(Suggest, false)),
                Some(full.clone()),
                "k8s__write",
                Ok(true),
            ),
            (
                caller("a", "dev"),
                Some(auto.clone()),
                Some(full.clone()),
                "k8s__exec",
                Ok(true),
            ),
            (
                caller("a", "dev"),
                Some(project(Shadow, false)),
                Some(full.clone()),
                "k8s__gated",
                Ok(true),
            ),
        ];
        for (i, (c, p, a, tool, want)) in cases.into_iter().enumerate() {
            let got = decide(c, p.as_ref(), a.as_ref(), &r, tool)
                .map(|ok| ok.needs_approval)
                .map_err(|d| d.code);
            assert_eq!(got, want, "case {i}: {tool}");
        }
    }

    #[test]
    fn a_run_minted_in_a_later_mode_cannot_exceed_the_project() {
        let r = registry();
        let c = CallerView {
            agent: "a",
            environment: "dev",
            mode: Some(MigrationMode::AutoRemediate),
        };
        let p = project(MigrationMode::Shadow, false);
        let d = decide(
            c,
            Some(&p),
            Some(&agent(RiskClass::Write)),
            &r,
            "k8s__write",
        )
        .unwrap_err();
        assert_eq!(d.code, ErrorCode::McpGateRiskBlocked);
        // and a shadow run in an auto_remediate project stays in shadow
        let c = CallerView {
            mode: Some(MigrationMode::Shadow),
            ..c
        };
        let p = project(MigrationMode::AutoRemediate, false);
        let d = decide(
            c,
            Some(&p),
            Some(&agent(RiskClass::Write)),
            &r,
            "k8s__write",
        )
        .unwrap_err();
        assert_eq!(d.code, ErrorCode::McpGateRiskBlocked);
    }

    #[test]
    fn list_is_filtered_by_the_same_gates() {
        let r = registry();
        let full = agent(RiskClass::Destructive);
        let names = |p: &ProjectState, env: &str| {
            visible(caller("a", env), Some(p), Some(&full), &r)
                .iter()
                .map(|t| t.exposed.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(
            names(&project(MigrationMode::Shadow, false), "dev"),
            ["k8s__gated", "k8s__read"]
        );
        assert_eq!(
            names(&project(MigrationMode::AutoRemediate, false), "dev"),
            ["k8s__exec", "k8s__gated", "k8s__read", "k8s__write"]
        );
        assert!(names(&project(MigrationMode::AutoRemediate, true), "prod").is_empty());
        assert!(visible(caller("a", "dev"), None, Some(&full), &r).is_empty());
        assert!(
            visible(
                caller("zz", "dev"),
                Some(&project(MigrationMode::Shadow, false)),
                Some(&full),
                &r
            )
            .is_empty()
        );
    }

    #[test]
    fn write_tools_without_their_feature_flag_are_refused_in_every_mode() {
        let r = registry();
        for mode in MigrationMode::ALL {
            let d = decide(
                caller("a", "dev"),
                Some(&project(mode, true)),
                Some(&agent(RiskClass::Destructive)),
                &r,
                "k8s__flagless",
            )
            .unwrap_err();
            let want = if read_only_mode(mode) {
                ErrorCode::McpGateRiskBlocked
            } else {
                ErrorCode::McpGateWriteDisabled
            };
            assert_eq!(d.code, want, "{mode:?}");
        }
        // The same tool class with its flag passes in the flagged modes only.
        assert!(
            decide(
                caller("a", "dev"),
                Some(&project(MigrationMode::AutoRemediate, true)),
                Some(&agent(RiskClass::Destructive)),
                &r,
                "k8s__write",
            )
            .is_ok()
        );
    }

    /// Two providers in one project, one `infra`, one `business`: a business agent is refused
    /// the infra tool with `E-CONTEXT-001` even though its contract and a grant name it, and
    /// does not see it in `tools/list`; declaring domains makes unlabelled tools fail closed.
    #[test]
    fn context_firewall_is_part_of_gate_two() {
        let c = serde_json::from_value(json!({
            "providers": [
                {"name": "k8s", "transport": {"type": "streamable_http", "url": "http://127.0.0.1:1/mcp"}, "context_domain": "infra"},
                {"name": "market", "transport": {"type": "stdio", "entry": "market"}, "context_domain": "business"},
                {"name": "plain", "transport": {"type": "stdio", "entry": "plain"}}
            ],
            "tools": [
                {"provider": "k8s", "name": "read", "risk": "read_only", "environments": ["dev"], "input_schema": {"type": "object"}},
                {"provider": "market", "name": "search", "risk": "read_only", "environments": ["dev"], "input_schema": {"type": "object"}},
                {"provider": "plain", "name": "x", "risk": "read_only", "environments": ["dev"], "input_schema": {"type": "object"}}
            ],
            "grants": [{"agent": "biz", "tools": ["k8s__read", "market__search", "plain__x"], "environments": ["dev"]}]
        }))
        .unwrap();
        let r = Registry::compile(None, &c).unwrap();
        let biz = AgentState {
            tools: ["k8s__read", "market__search", "plain__x"]
                .into_iter()
                .map(String::from)
                .collect(),
            max_risk: RiskClass::ReadOnly,
            domain: "business".into(),
        };
        let mut p = project(MigrationMode::Canary, false);
        let code = |p: &ProjectState, tool: &str| {
            decide(caller("biz", "dev"), Some(p), Some(&biz), &r, tool)
                .map(|_| ())
                .map_err(|d| d.code)
        };
        assert_eq!(
            code(&p, "k8s__read"),
            Err(ErrorCode::ContextToolForeignDomain)
        );
        assert_eq!(code(&p, "market__search"), Ok(()));
        assert_eq!(code(&p, "plain__x"), Ok(()), "legacy: unlabelled passes");
        let listed: Vec<_> = visible(caller("biz", "dev"), Some(&p), Some(&biz), &r)
            .iter()
            .map(|t| t.exposed.clone())
            .collect();
        assert_eq!(listed, ["market__search", "plain__x"]);
        p.firewall = ContextFirewall::declared([
            ("business".to_string(), Vec::<String>::new()),
            ("infra".to_string(), vec![]),
        ]);
        assert_eq!(
            code(&p, "k8s__read"),
            Err(ErrorCode::ContextToolForeignDomain)
        );
        assert_eq!(code(&p, "market__search"), Ok(()));
        assert_eq!(
            code(&p, "plain__x"),
            Err(ErrorCode::ContextDomainUndeclared)
        );
    }
}
