//! The EwoooC example tenant (`docs/examples/ewoooc/`), onboarded by `awooop up` beside the
//! seeded `awoooi` so a first-time user sees two tenants.
//!
//! `up` onboards it through exactly the path a user takes, `awooop project onboard --from
//! DIR` ([`crate::apply::onboard_local`]): the folder shipped in this binary is written to
//! `STATE/examples/ewoooc/` (refreshed at every start, so it is always the example of this
//! version) and onboarded from there. What `up` adds is the platform administrator's part,
//! which no tenant folder can do: the stdio catalog entry `market-mcp` that starts the market
//! server (the tenant's MCP Gateway contract can only name it). The project stays in `shadow`
//! (the seed's migration path: shadow, then canary, read-only only); `awooop mode set canary`
//! moves it on.

use std::path::Path;

use crate::apply::Onboarded;
use crate::platform::Platform;
use crate::tenancy::Db;

pub const PROJECT: &str = "ewoooc";
/// The catalog entry the example's MCP Gateway contract names.
pub const CATALOG_ENTRY: &str = "market-mcp";

/// `docs/examples/ewoooc/` as shipped: path inside the folder, content.
pub const FILES: &[(&str, &str)] = &[
    (
        "project.json",
        include_str!("../../docs/examples/ewoooc/project.json"),
    ),
    (
        "runtime.json",
        include_str!("../../docs/examples/ewoooc/runtime.json"),
    ),
    (
        "policy.json",
        include_str!("../../docs/examples/ewoooc/policy.json"),
    ),
    (
        "agent-openclaw-biz.json",
        include_str!("../../docs/examples/ewoooc/agent-openclaw-biz.json"),
    ),
    (
        "mcp-gateway.json",
        include_str!("../../docs/examples/ewoooc/mcp-gateway.json"),
    ),
    (
        "channel.json",
        include_str!("../../docs/examples/ewoooc/channel.json"),
    ),
    (
        "prompts/openclaw-biz.md",
        include_str!("../../docs/examples/ewoooc/prompts/openclaw-biz.md"),
    ),
];

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

/// Put `entry` in the administrator's stdio catalog unless it is there as it is. True when
/// it was written.
pub async fn ensure_catalog(
    db: &Db,
    actor: &str,
    entry: &awooop_policy::catalog::CatalogEntry,
) -> crate::error::Result<bool> {
    let existing = awooop_policy::catalog_list(db, actor).await?;
    if existing
        .iter()
        .any(|e| e.name == entry.name && e.command == entry.command && e.args == entry.args)
    {
        return Ok(false);
    }
    awooop_policy::catalog_put(db, actor, entry).await?;
    Ok(true)
}

/// Write the shipped folder into `dir`, each file only when its content differs.
pub fn write_folder(dir: &Path) -> std::io::Result<()> {
    for (name, text) in FILES {
        let path = dir.join(name);
        if std::fs::read_to_string(&path).is_ok_and(|t| t == *text) {
            continue;
        }
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&path, text)?;
    }
    Ok(())
}

/// What `awooop up` does for the example: the catalog entry (as this binary's hidden
/// `market-mcp` command), the folder written to `STATE/examples/ewoooc/`, and the onboarding
/// of that folder with the local key and approvers. Returns whether the catalog entry was
/// written, the folder, and what the onboarding did.
pub async fn onboard_for_up(
    p: &Platform,
    keyring_file: &Path,
) -> anyhow::Result<(bool, std::path::PathBuf, Onboarded)> {
    let exe = std::env::current_exe()?;
    let market = catalog_entry(&exe.to_string_lossy(), &["market-mcp"]);
    let catalog = ensure_catalog(p.control.db(), "awooop-up", &market).await?;
    let dir = p.state_dir.join("examples").join(PROJECT);
    write_folder(&dir)?;
    let done = crate::apply::onboard_local(p, keyring_file, &dir).await?;
    Ok((catalog, dir, done))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contracts::{self, Contract};

    fn folder() -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/examples/ewoooc")
    }

    #[test]
    fn the_shipped_copy_is_the_whole_folder() {
        let mut on_disk = Vec::new();
        for sub in ["", "prompts"] {
            for e in std::fs::read_dir(folder().join(sub)).unwrap() {
                let p = e.unwrap().path();
                if p.is_file() {
                    let rel = p.strip_prefix(folder()).unwrap();
                    on_disk.push(rel.to_string_lossy().into_owned());
                }
            }
        }
        on_disk.sort();
        let mut shipped: Vec<String> = FILES.iter().map(|(n, _)| n.to_string()).collect();
        shipped.sort();
        assert_eq!(shipped, on_disk, "add the new file to example::FILES");
    }

    #[test]
    fn every_example_contract_has_its_header_validates_and_names_the_prompt_it_ships() {
        let prompt = FILES
            .iter()
            .find(|(n, _)| *n == "prompts/openclaw-biz.md")
            .unwrap()
            .1;
        let none = crate::control::apply::Header::default();
        let mut kinds = Vec::new();
        for (name, text) in FILES.iter().filter(|(n, _)| n.ends_with(".json")) {
            let (header, body) = crate::control::apply::parse_file(name, text).unwrap();
            assert_eq!(header.project.as_deref(), Some(PROJECT), "{name}");
            let doc = crate::control::apply::resolve(name, name, header, &none, body).unwrap();
            let c = contracts::validate(doc.kind, &doc.body)
                .unwrap_or_else(|v| panic!("{name}: {v:?}"));
            if let Contract::Agent(a) = c {
                assert_eq!(
                    a.prompt.unwrap().sha256,
                    contracts::canonical::sha256_ref(prompt.as_bytes())
                );
            }
            kinds.push(doc.kind);
        }
        kinds.sort_by_key(|k| *k as u8);
        let mut all = contracts::ContractKind::ALL.to_vec();
        all.sort_by_key(|k| *k as u8);
        assert_eq!(kinds, all, "the six contracts");
    }
}
