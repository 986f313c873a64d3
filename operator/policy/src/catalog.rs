//! The stdio catalog: the only programs the MCP gateway starts.
//!
//! A tenant's MCP Gateway contract names an entry (`{"type": "stdio", "entry": "NAME"}`); the
//! command, its arguments and which environment variables credentials may be injected into
//! are the platform administrator's (`awooop catalog add|list|remove`, platform scope,
//! audited). Publishing a contract that names an unknown entry, or injects a credential into a
//! variable the entry does not allow, is refused with `E-CATALOG-001`.

use serde::{Deserialize, Serialize};

use awooop_contracts::{Injection, McpGatewayContract, McpTransport};
use awooop_core::error::{Error, ErrorCode};

/// One catalog entry as stored (`platform_stdio_catalog`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CatalogEntry {
    pub name: String,
    /// Program to start (an absolute path, or a name looked up in the platform's PATH).
    pub command: String,
    #[serde(default)]
    pub args: Vec<String>,
    /// Environment variables a contract may inject credentials into.
    #[serde(default)]
    pub env_allow: Vec<String>,
    #[serde(default)]
    pub description: String,
}

fn slug_ok(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_lowercase()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
}

fn env_name_ok(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_uppercase() || b[0] == b'_')
        && b.iter()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == b'_')
}

/// Variables the platform sets itself or that change how a program is loaded: never
/// injectable, whatever the entry says.
const RESERVED_ENV: &[&str] = &[
    "PATH",
    "HOME",
    "LANG",
    "LC_ALL",
    "TZ",
    "TMPDIR",
    "LD_PRELOAD",
    "LD_LIBRARY_PATH",
    "LD_AUDIT",
    "PYTHONPATH",
    "PYTHONSTARTUP",
    "PYTHONHOME",
    "NODE_OPTIONS",
    "NODE_PATH",
    "PERL5LIB",
    "PERL5OPT",
    "RUBYOPT",
    "RUBYLIB",
    "BASH_ENV",
    "ENV",
    "IFS",
];

impl CatalogEntry {
    /// Check an administrator's entry (`E-CATALOG-002`).
    pub fn validate(&self) -> Result<(), Error> {
        let bad = |m: String| Err(Error::new(ErrorCode::CatalogInvalid, m));
        if !slug_ok(&self.name) {
            return bad(format!(
                "catalog entry name {:?} must match ^[a-z][a-z0-9-]{{0,62}}$",
                self.name
            ));
        }
        if self.command.is_empty() || self.command.len() > 4096 || self.command.contains('\0') {
            return bad("the command must be 1..=4096 characters without NUL".into());
        }
        if self.args.len() > 256 || self.args.iter().any(|a| a.len() > 4096 || a.contains('\0')) {
            return bad("at most 256 arguments of at most 4096 characters, without NUL".into());
        }
        for v in &self.env_allow {
            if !env_name_ok(v) {
                return bad(format!(
                    "{v:?} is not an environment variable name ([A-Z_][A-Z0-9_]*)"
                ));
            }
            if RESERVED_ENV.contains(&v.as_str())
                || v.starts_with("LD_")
                || v.starts_with("AWOOOP_")
            {
                return bad(format!("{v} cannot be injected into a child (reserved)"));
            }
        }
        if self.description.len() > 1000 {
            return bad("the description is at most 1000 characters".into());
        }
        Ok(())
    }
}

/// Every stdio catalog reference of a contract, and the env vars its credentials go into.
pub fn stdio_references(c: &McpGatewayContract) -> Vec<(String, Vec<String>)> {
    c.providers
        .iter()
        .filter_map(|p| match &p.transport {
            McpTransport::Stdio { entry } => Some((
                entry.as_str().to_string(),
                p.credentials
                    .iter()
                    .filter_map(|c| match &c.inject {
                        Injection::Env { var } => Some(var.clone()),
                        Injection::Header { .. } => None,
                    })
                    .collect(),
            )),
            McpTransport::StreamableHttp { .. } => None,
        })
        .collect()
}

/// Check a contract's references against the catalog (`E-CATALOG-001`). Pure.
pub fn check_references(
    c: &McpGatewayContract,
    lookup: impl Fn(&str) -> Option<CatalogEntry>,
) -> Result<(), Error> {
    for (i, (name, vars)) in stdio_references(c).into_iter().enumerate() {
        let Some(entry) = lookup(&name) else {
            return Err(Error::new(
                ErrorCode::CatalogUnknownEntry,
                format!(
                    "stdio catalog entry {name:?} is not registered by the platform administrator"
                ),
            )
            .with_details(serde_json::json!({"entry": name, "provider_index": i})));
        };
        for v in vars {
            if !entry.env_allow.contains(&v) {
                return Err(Error::new(
                    ErrorCode::CatalogUnknownEntry,
                    format!("stdio catalog entry {name:?} does not allow credentials in {v}"),
                )
                .with_details(serde_json::json!({"entry": name, "var": v})));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str, env: &[&str]) -> CatalogEntry {
        CatalogEntry {
            name: name.into(),
            command: "/usr/bin/prom-mcp".into(),
            args: vec!["--read-only".into()],
            env_allow: env.iter().map(|s| s.to_string()).collect(),
            description: String::new(),
        }
    }

    #[test]
    fn entries_validate() {
        assert!(entry("prom", &["PROM_TOKEN"]).validate().is_ok());
        for bad in [
            entry("Prom", &[]),
            entry("prom", &["path"]),
            entry("prom", &["LD_PRELOAD"]),
            entry("prom", &["PYTHONPATH"]),
            entry("prom", &["AWOOOP_GATEWAY_KEY"]),
            CatalogEntry {
                command: String::new(),
                ..entry("prom", &[])
            },
        ] {
            let e = bad.validate().unwrap_err();
            assert_eq!(e.code, ErrorCode::CatalogInvalid, "{bad:?}");
        }
    }

    #[test]
    fn references_must_exist_and_allow_their_env_vars() {
        let c: McpGatewayContract = serde_json::from_value(serde_json::json!({
            "credential_refs": [{"name": "tok", "source": {"env": {"var": "X"}}}],
            "providers": [{"name": "prom", "transport": {"type": "stdio", "entry": "prom"},
                           "credentials": [{"credential": "tok", "inject": {"type": "env", "var": "PROM_TOKEN"}}]}]
        }))
        .unwrap();
        let known =
            |env: &'static [&'static str]| move |n: &str| (n == "prom").then(|| entry("prom", env));
        assert!(check_references(&c, known(&["PROM_TOKEN"])).is_ok());
        let e = check_references(&c, known(&[])).unwrap_err();
        assert_eq!(e.code, ErrorCode::CatalogUnknownEntry);
        let e = check_references(&c, |_| None).unwrap_err();
        assert_eq!(e.code, ErrorCode::CatalogUnknownEntry);
        assert!(e.message.contains("not registered"), "{}", e.message);
    }
}
