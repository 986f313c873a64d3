//! The EwoooC example tenant (`docs/examples/ewoooc/`), onboarded by `awooop up` beside the
//! seeded `awoooi` so a first-time user sees two tenants, and by the integration tests.
//!
//! [`seed_ewoooc`] is idempotent and resumable: it creates the project if missing, registers
//! the prompt artifact and the stdio catalog entry of the market MCP server, then drafts,
//! signs, publishes, approves (as the two approvers the Project contract lists) and activates
//! each contract whose active revision differs from the file, and reports each step. The
//! project stays in `shadow` (the seed's migration path: shadow, then canary, read-only only);
//! `awooop migration set canary` moves it on.

use serde_json::Value;

use crate::auth::Actor;
use crate::contracts::{self, ContractKind};
use crate::control::{ControlPlane, NewProject};
use crate::error::{ErrorCode, Result};
use crate::tenancy::{self, ProjectId};

pub const PROJECT: &str = "ewoooc";
/// The catalog entry the example's MCP Gateway contract names.
pub const CATALOG_ENTRY: &str = "market-mcp";
/// The approvers of `docs/examples/ewoooc/project.json`.
pub const APPROVERS: [&str; 2] = ["pm-lee", "cto-chen"];

const PROMPT_REF: &str = "prompts/openclaw-biz";
const PROMPT: &str = include_str!("../../docs/examples/ewoooc/prompts/openclaw-biz.md");

/// The six contracts, in the order they are activated: the Project first (its ACL and context
/// domains govern the rest), the agent before the gateway (so the grant-time context check
/// sees the agent's domain).
pub fn contracts() -> Vec<(ContractKind, &'static str, &'static str)> {
    vec![
        (
            ContractKind::Project,
            PROJECT,
            include_str!("../../docs/examples/ewoooc/project.json"),
        ),
        (
            ContractKind::Runtime,
            "default",
            include_str!("../../docs/examples/ewoooc/runtime.json"),
        ),
        (
            ContractKind::Policy,
            "default",
            include_str!("../../docs/examples/ewoooc/policy.json"),
        ),
        (
            ContractKind::Agent,
            "openclaw-biz",
            include_str!("../../docs/examples/ewoooc/agent-openclaw-biz.json"),
        ),
        (
            ContractKind::McpGateway,
            "default",
            include_str!("../../docs/examples/ewoooc/mcp-gateway.json"),
        ),
        (
            ContractKind::Channel,
            "default",
            include_str!("../../docs/examples/ewoooc/channel.json"),
        ),
    ]
}

/// The stdio catalog entry that starts the market server: `command args…`.
pub fn catalog_entry(command: &str, args: &[&str]) -> awooop_policy::catalog::CatalogEntry {
    awooop_policy::catalog::CatalogEntry {
        name: CATALOG_ENTRY.into(),
        command: command.into(),
        args: args.iter().map(|a| a.to_string()).collect(),
        env_allow: vec![],
        description: "EwoooC example: market-intelligence MCP server (read-only, bundled data)"
            .into(),
    }
}

/// Onboard EwoooC; `key_id` must be in the control plane's keyring (it is registered for the
/// project here). Returns one line per step taken (empty when everything was already there).
pub async fn seed_ewoooc(
    cp: &ControlPlane,
    key_id: &str,
    market: &awooop_policy::catalog::CatalogEntry,
) -> Result<Vec<String>> {
    let admin = Actor::cli("awooop-up");
    let mut did = Vec::new();
    match cp
        .create_project(
            &admin,
            NewProject {
                project_id: PROJECT.into(),
                display_name: "EwoooC (e-commerce market intelligence)".into(),
                required_approvals: Some(2),
            },
        )
        .await
    {
        Ok(_) => did.push(format!("created project {PROJECT}")),
        Err(e) if e.code == ErrorCode::ProjectExists => {}
        Err(e) => return Err(e),
    }
    let existing = awooop_policy::catalog_list(cp.db(), "awooop-up").await?;
    if !existing
        .iter()
        .any(|e| e.name == market.name && e.command == market.command && e.args == market.args)
    {
        awooop_policy::catalog_put(cp.db(), "awooop-up", market).await?;
        did.push(format!("stdio catalog entry {} registered", market.name));
    }
    let project = ProjectId::parse(PROJECT)?;
    tenancy::scope(project, async {
        let mut tx = cp.db().tenant().await?;
        let has_key: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM signing_keys WHERE key_id = $1)")
                .bind(key_id)
                .fetch_one(&mut *tx)
                .await?;
        tx.commit().await?;
        if !has_key {
            cp.register_signing_key(&admin, key_id).await?;
            did.push(format!("signing key {key_id} registered"));
        }
        let hash = contracts::canonical::sha256_ref(PROMPT.as_bytes());
        if cp.artifact(PROMPT_REF, &hash).await.is_err() {
            cp.put_artifact(
                &admin,
                PROMPT_REF,
                "prompt",
                "text/markdown",
                PROMPT.as_bytes(),
            )
            .await?;
            did.push(format!("artifact {PROMPT_REF} registered"));
        }
        for (kind, name, text) in contracts() {
            let body: Value = serde_json::from_str(text).map_err(crate::error::Error::internal)?;
            let hash = contracts::canonical::body_hash(&body);
            if let Ok((row, _)) = cp.active_typed(kind, name).await
                && row.body_hash == hash
            {
                continue;
            }
            let d = cp.create_draft(&admin, kind, name, body).await?;
            let req = cp.sign_draft(d.draft.draft_id, key_id).await?;
            let rev = cp.publish(&admin, d.draft.draft_id, req).await?.revision_id;
            for a in APPROVERS {
                cp.approve(&Actor::cli(a), rev).await?;
            }
            cp.activate(&admin, rev).await?;
            did.push(format!("{} {name} activated", kind.as_str()));
        }
        Ok::<(), crate::error::Error>(())
    })
    .await?;
    Ok(did)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_example_contract_validates_and_names_the_prompt_it_ships() {
        for (kind, name, text) in contracts() {
            let body: Value = serde_json::from_str(text).unwrap();
            contracts::validate(kind, &body)
                .unwrap_or_else(|v| panic!("{} {name}: {v:?}", kind.as_str()));
        }
        let agent: Value = serde_json::from_str(contracts()[3].2).unwrap();
        assert_eq!(
            agent["prompt"]["sha256"],
            contracts::canonical::sha256_ref(PROMPT.as_bytes())
        );
    }
}
