//! EffectivePolicy: what one model-using run may do, resolved by a pure function from the
//! active Policy/Routing contract, the project's contract (data boundary, budget) and the
//! agent's contract (its route override and safety ceiling).
//!
//! Resolution rules (table-tested below):
//! * Route: the agent's `executor.route` when the agent is an LLM agent, else the first route
//!   listing the agent in `agents`, else the first route with an empty `agents` list (the
//!   project's default). None: `E-MODEL-001`.
//! * Data class: the project's `default_class`, raised (never lowered) by a `data_class` label
//!   on the run input. A class outside the project's `allowed_classes` is refused
//!   (`E-MODEL-002`).
//! * Privacy gate: targets whose provider does not list the data class in `privacy_classes`
//!   are dropped, keeping the route's order; none left: `E-MODEL-002`.
//! * Budget: the project's period, token and currency limits, plus the agent's entry in
//!   `agent_budgets` if any; per-target prices from `prices` (missing price: cost 0).
//!
//! The result is serialisable: it is journaled as the run's first step, so a resumed run uses
//! exactly the policy its first attempt resolved.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use awooop_contracts::{
    AgentContract, BudgetPeriod, CredentialSource, DataClass, Executor, PolicyContract,
    ProjectContract, ProviderApi,
};
use awooop_core::error::{Error, ErrorCode, Result};

/// One resolved route target: the provider's connection data plus model limits and price.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Target {
    pub provider: String,
    pub api: ProviderApi,
    pub base_url: String,
    pub api_key: Option<CredentialSource>,
    pub model: String,
    pub max_output_tokens: u32,
    pub timeout_ms: u32,
    pub input_micros_per_mtok: u64,
    pub output_micros_per_mtok: u64,
}

/// Hard limits of one ledger scope.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScopeLimit {
    pub token_limit: u64,
    pub currency_limit_micros: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BudgetPolicy {
    pub period: BudgetPeriod,
    pub project: ScopeLimit,
    pub agent: Option<ScopeLimit>,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct BreakerPolicy {
    pub failure_threshold: u32,
    pub cooldown_seconds: u32,
}

/// The policy one run executes under.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EffectivePolicy {
    pub agent: String,
    pub route: String,
    pub data_class: DataClass,
    /// Ordered: primary first, then fallbacks (privacy-gated).
    pub targets: Vec<Target>,
    /// Targets the privacy gate removed (provider names), for the record.
    pub gated_out: Vec<String>,
    pub retries: u8,
    pub budget: BudgetPolicy,
    pub breaker: Option<BreakerPolicy>,
    pub max_steps: u16,
    pub max_tokens_per_run: u64,
    pub timeout_seconds: u32,
}

/// Inputs of [`resolve`].
pub struct PolicyInputs<'a> {
    pub agent_name: &'a str,
    pub agent: &'a AgentContract,
    pub project: &'a ProjectContract,
    pub policy: &'a PolicyContract,
    /// The run input (its optional `data_class` label is read).
    pub input: &'a Value,
}

/// The data class label of a run input, if any.
pub fn input_label(input: &Value) -> Result<Option<DataClass>> {
    match input.get("data_class") {
        None => Ok(None),
        Some(v) => serde_json::from_value(v.clone()).map(Some).map_err(|_| {
            Error::new(
                ErrorCode::ModelPrivacyBlocked,
                "input data_class label must be public, internal, confidential or restricted",
            )
        }),
    }
}

pub fn resolve(i: &PolicyInputs<'_>) -> Result<EffectivePolicy> {
    let route = match &i.agent.executor {
        Executor::Llm { route } => i.policy.routes.iter().find(|r| r.name == *route),
        Executor::Scripted { .. } => None,
    }
    .or_else(|| {
        i.policy
            .routes
            .iter()
            .find(|r| r.agents.iter().any(|a| a.as_str() == i.agent_name))
    })
    .or_else(|| i.policy.routes.iter().find(|r| r.agents.is_empty()))
    .ok_or_else(|| {
        Error::new(
            ErrorCode::ModelRouteNotFound,
            "no route in the active Policy/Routing contract for this agent",
        )
    })?;

    let default = i.project.data_boundary.default_class;
    let data_class = match input_label(i.input)? {
        Some(l) => l.max(default),
        None => default,
    };
    if !i
        .project
        .data_boundary
        .allowed_classes
        .contains(&data_class)
    {
        return Err(Error::new(
            ErrorCode::ModelPrivacyBlocked,
            "the run's data class is outside the project's data boundary",
        ));
    }

    let mut targets = Vec::new();
    let mut gated_out = Vec::new();
    for t in &route.targets {
        let Some(p) = i.policy.providers.iter().find(|p| p.name == t.provider) else {
            // Contract rules reject unknown providers at publish; skip defensively.
            gated_out.push(t.provider.0.clone());
            continue;
        };
        if !p.privacy_classes.contains(&data_class) {
            gated_out.push(p.name.0.clone());
            continue;
        }
        let price = i
            .policy
            .prices
            .iter()
            .find(|x| x.provider == t.provider && x.model == t.model);
        targets.push(Target {
            provider: p.name.0.clone(),
            api: p.api,
            base_url: p.base_url.clone(),
            api_key: p.api_key.clone(),
            model: t.model.clone(),
            max_output_tokens: t.max_output_tokens,
            timeout_ms: t.timeout_ms,
            input_micros_per_mtok: price.map_or(0, |x| x.input_micros_per_mtok),
            output_micros_per_mtok: price.map_or(0, |x| x.output_micros_per_mtok),
        });
    }
    if targets.is_empty() {
        return Err(Error::new(
            ErrorCode::ModelPrivacyBlocked,
            "no provider on the route may receive the run's data class",
        )
        .with_details(serde_json::json!({"route": route.name.0, "data_class": data_class})));
    }

    let agent_budget = i
        .policy
        .agent_budgets
        .iter()
        .find(|b| b.agent.as_str() == i.agent_name)
        .map(|b| ScopeLimit {
            token_limit: b.token_limit,
            currency_limit_micros: b.currency_limit_micros,
        });
    Ok(EffectivePolicy {
        agent: i.agent_name.to_string(),
        route: route.name.0.clone(),
        data_class,
        targets,
        gated_out,
        retries: route.retries,
        budget: BudgetPolicy {
            period: i.project.budget.period,
            project: ScopeLimit {
                token_limit: i.project.budget.token_limit,
                currency_limit_micros: i.project.budget.currency_limit_micros,
            },
            agent: agent_budget,
        },
        breaker: i.policy.circuit_breaker.as_ref().map(|b| BreakerPolicy {
            failure_threshold: b.failure_threshold,
            cooldown_seconds: b.cooldown_seconds,
        }),
        max_steps: i.agent.safety.max_steps,
        max_tokens_per_run: i.agent.safety.max_tokens_per_run,
        timeout_seconds: i.agent.safety.timeout_seconds,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn policy() -> PolicyContract {
        serde_json::from_value(json!({
            "providers": [
                {"name": "cloud", "api": "anthropic_messages", "base_url": "https://api.example",
                 "api_key": {"env": {"var": "CLOUD_KEY"}}, "privacy_classes": ["public", "internal"]},
                {"name": "local", "api": "ollama_chat", "base_url": "http://ollama:11434",
                 "self_hosted": true, "privacy_classes": ["public", "internal", "confidential", "restricted"]}
            ],
            "routes": [
                {"name": "default", "targets": [
                    {"provider": "cloud", "model": "big", "max_output_tokens": 1000, "timeout_ms": 1000},
                    {"provider": "local", "model": "small", "max_output_tokens": 500, "timeout_ms": 2000}
                ], "retries": 1},
                {"name": "ops", "agents": ["sre"], "targets": [
                    {"provider": "local", "model": "small", "max_output_tokens": 500, "timeout_ms": 2000}
                ]},
                {"name": "cloud-only", "agents": ["x"], "targets": [
                    {"provider": "cloud", "model": "big", "max_output_tokens": 1000, "timeout_ms": 1000}
                ]}
            ],
            "prices": [{"provider": "cloud", "model": "big", "input_micros_per_mtok": 3000000, "output_micros_per_mtok": 15000000}],
            "agent_budgets": [{"agent": "sre", "token_limit": 500, "currency_limit_micros": 70}],
            "circuit_breaker": {"failure_threshold": 3, "cooldown_seconds": 30}
        }))
        .unwrap()
    }

    fn project(default: &str, allowed: &[&str]) -> ProjectContract {
        serde_json::from_value(json!({
            "display_name": "P", "data_boundary": {"default_class": default, "allowed_classes": allowed},
            "budget": {"period": "day", "token_limit": 10000, "currency_limit_micros": 900, "currency": "EUR"},
            "acl": {}, "approval": {"required_approvals": 1, "ttl_seconds": 3600},
            "environments": ["dev"], "workers": {"min_replicas": 0, "max_replicas": 1, "runs_per_replica": 10}
        }))
        .unwrap()
    }

    fn agent(route: Option<&str>) -> AgentContract {
        let executor = match route {
            Some(r) => json!({"type": "llm", "route": r}),
            None => {
                json!({"type": "scripted", "steps": [{"type": "output", "key": "o", "template": "x"}]})
            }
        };
        serde_json::from_value(json!({
            "display_name": "A", "context_domain": "infra",
            "safety": {"max_risk": "read_only", "max_steps": 7, "max_tokens_per_run": 999, "timeout_seconds": 30},
            "executor": executor
        }))
        .unwrap()
    }

    /// (case, agent name, route override, project default class, allowed, input, expected
    /// route or error code, expected providers in order)
    #[test]
    fn resolution_table() {
        let all = ["public", "internal", "confidential", "restricted"];
        type Case<'a> = (
            &'a str,
            &'a str,
            Option<&'a str>,
            &'a str,
            &'a [&'a str],
            Value,
            std::result::Result<&'a str, &'a str>,
            &'a [&'a str],
        );
        let cases: Vec<Case> = vec![
            (
                "default route for unlisted agent",
                "bot",
                None,
                "internal",
                &all,
                json!({}),
                Ok("default"),
                &["cloud", "local"],
            ),
            (
                "agent listed on a route",
                "sre",
                None,
                "internal",
                &all,
                json!({}),
                Ok("ops"),
                &["local"],
            ),
            (
                "llm executor override wins",
                "sre",
                Some("default"),
                "internal",
                &all,
                json!({}),
                Ok("default"),
                &["cloud", "local"],
            ),
            (
                "unknown override falls back to listing",
                "sre",
                Some("nope"),
                "internal",
                &all,
                json!({}),
                Ok("ops"),
                &["local"],
            ),
            (
                "confidential input gates out cloud",
                "bot",
                None,
                "internal",
                &all,
                json!({"data_class": "confidential"}),
                Ok("default"),
                &["local"],
            ),
            (
                "confidential default gates out cloud",
                "bot",
                None,
                "confidential",
                &all,
                json!({}),
                Ok("default"),
                &["local"],
            ),
            (
                "label never lowers the class",
                "bot",
                None,
                "confidential",
                &all,
                json!({"data_class": "public"}),
                Ok("default"),
                &["local"],
            ),
            (
                "cloud-only route with confidential data",
                "x",
                None,
                "confidential",
                &all,
                json!({}),
                Err("E-MODEL-002"),
                &[],
            ),
            (
                "class outside the boundary",
                "bot",
                None,
                "internal",
                &["public", "internal"],
                json!({"data_class": "restricted"}),
                Err("E-MODEL-002"),
                &[],
            ),
            (
                "malformed label",
                "bot",
                None,
                "internal",
                &all,
                json!({"data_class": "secret"}),
                Err("E-MODEL-002"),
                &[],
            ),
        ];
        let pol = policy();
        for (name, agent_name, route, default, allowed, input, want, providers) in cases {
            let pc = project(default, allowed);
            let ac = agent(route);
            let got = resolve(&PolicyInputs {
                agent_name,
                agent: &ac,
                project: &pc,
                policy: &pol,
                input: &input,
            });
            match (want, got) {
                (Ok(r), Ok(p)) => {
                    assert_eq!(p.route, r, "{name}");
                    let names: Vec<&str> = p.targets.iter().map(|t| t.provider.as_str()).collect();
                    assert_eq!(names, providers, "{name}");
                }
                (Err(code), Err(e)) => assert_eq!(e.code.as_str(), code, "{name}"),
                (w, g) => panic!("{name}: wanted {w:?}, got {g:?}"),
            }
        }
    }

    #[test]
    fn budget_prices_and_limits() {
        let pol = policy();
        let pc = project("internal", &["public", "internal"]);
        let ac = agent(None);
        let p = resolve(&PolicyInputs {
            agent_name: "sre",
            agent: &ac,
            project: &pc,
            policy: &pol,
            input: &json!({}),
        })
        .unwrap();
        assert_eq!(p.budget.project.token_limit, 10000);
        assert_eq!(p.budget.project.currency_limit_micros, Some(900));
        assert_eq!(
            p.budget.agent,
            Some(ScopeLimit {
                token_limit: 500,
                currency_limit_micros: Some(70)
            })
        );
        assert_eq!(p.max_steps, 7);
        assert_eq!(p.breaker.unwrap().failure_threshold, 3);
        let q = resolve(&PolicyInputs {
            agent_name: "bot",
            agent: &ac,
            project: &pc,
            policy: &pol,
            input: &json!({}),
        })
        .unwrap();
        assert_eq!(q.budget.agent, None);
        assert_eq!(q.targets[0].input_micros_per_mtok, 3_000_000);
        assert_eq!(q.targets[1].output_micros_per_mtok, 0, "no price: cost 0");
        // Serialisable both ways: it is journaled and read back on resume.
        let back: EffectivePolicy =
            serde_json::from_value(serde_json::to_value(&q).unwrap()).unwrap();
        assert_eq!(back, q);
    }
}
