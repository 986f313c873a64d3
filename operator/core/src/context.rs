//! The context firewall's one decision: may an agent read a context item of a domain?
//!
//! Every piece of context (a tool and its results, the credentials injected for it, a
//! conversation event, a run result) carries the context domain of what produced it. The
//! gateway (tool grants and calls), the model path (prompt assembly) and the channel hub
//! (conversation history) all ask [`ContextFirewall::may_read`]; the rule lives here once.
//!
//! Two regimes, chosen by the project's contract:
//! - **declared** (the Project contract lists its domains): fail closed. The agent's own domain
//!   and the item's domain must both be declared, an unlabelled item is refused, and an agent
//!   reads its own domain plus the domains that name it as a reader.
//! - **legacy** (no declaration; every contract written before the firewall): an agent reads
//!   its own domain and unlabelled items (which is what every item was before domains were
//!   enforced), never a labelled item of another domain. Labelling a tool `infra` therefore
//!   already keeps business agents away from it without touching the Project contract.

use std::collections::{BTreeMap, BTreeSet};

/// Why an item was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The item belongs to a domain the agent may not read.
    ForeignDomain,
    /// Declared regime: the agent's or the item's domain is not declared, or the item has none.
    Undeclared,
}

impl Refusal {
    /// The code for a tool (grant, listing, call): `E-CONTEXT-001` / `E-CONTEXT-003`.
    pub fn tool_code(self) -> crate::error::ErrorCode {
        match self {
            Refusal::ForeignDomain => crate::error::ErrorCode::ContextToolForeignDomain,
            Refusal::Undeclared => crate::error::ErrorCode::ContextDomainUndeclared,
        }
    }

    /// The code for any other context item at prompt assembly: `E-CONTEXT-002` / `-003`.
    pub fn item_code(self) -> crate::error::ErrorCode {
        match self {
            Refusal::ForeignDomain => crate::error::ErrorCode::ContextItemForeignDomain,
            Refusal::Undeclared => crate::error::ErrorCode::ContextDomainUndeclared,
        }
    }
}

/// The domains of one project and who reads them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContextFirewall {
    /// `None`: legacy regime. `Some`: domain → agents of other domains that may read it.
    declared: Option<BTreeMap<String, BTreeSet<String>>>,
}

impl ContextFirewall {
    /// The regime of a project that declares no domains.
    pub fn legacy() -> Self {
        Self { declared: None }
    }

    /// The declared regime: each domain with the agents (of other domains) that may read it.
    pub fn declared<D, R, A>(domains: D) -> Self
    where
        D: IntoIterator<Item = (String, R)>,
        R: IntoIterator<Item = A>,
        A: Into<String>,
    {
        Self {
            declared: Some(
                domains
                    .into_iter()
                    .map(|(d, r)| (d, r.into_iter().map(Into::into).collect()))
                    .collect(),
            ),
        }
    }

    pub fn is_declared(&self) -> bool {
        self.declared.is_some()
    }

    /// May `agent`, whose own domain is `agent_domain`, read an item of `item_domain`
    /// (`None`: an unlabelled item)?
    pub fn may_read(
        &self,
        agent: &str,
        agent_domain: &str,
        item_domain: Option<&str>,
    ) -> Result<(), Refusal> {
        let Some(domains) = &self.declared else {
            return match item_domain {
                None => Ok(()),
                Some(d) if d == agent_domain => Ok(()),
                Some(_) => Err(Refusal::ForeignDomain),
            };
        };
        if !domains.contains_key(agent_domain) {
            return Err(Refusal::Undeclared);
        }
        let Some(item) = item_domain else {
            return Err(Refusal::Undeclared);
        };
        let Some(readers) = domains.get(item) else {
            return Err(Refusal::Undeclared);
        };
        if item == agent_domain || readers.contains(agent) {
            Ok(())
        } else {
            Err(Refusal::ForeignDomain)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn legacy_reads_own_and_unlabelled_only() {
        let f = ContextFirewall::legacy();
        assert_eq!(f.may_read("a", "infra", None), Ok(()));
        assert_eq!(f.may_read("a", "infra", Some("infra")), Ok(()));
        assert_eq!(
            f.may_read("biz", "business", Some("infra")),
            Err(Refusal::ForeignDomain)
        );
    }

    #[test]
    fn declared_fails_closed_and_honours_readers() {
        let f = ContextFirewall::declared([
            ("business".to_string(), vec![]),
            ("infra".to_string(), vec!["auditor"]),
        ]);
        type Case<'a> = (&'a str, &'a str, Option<&'a str>, Result<(), Refusal>);
        let cases: &[Case] = &[
            ("biz", "business", Some("business"), Ok(())),
            (
                "biz",
                "business",
                Some("infra"),
                Err(Refusal::ForeignDomain),
            ),
            (
                "sre",
                "infra",
                Some("business"),
                Err(Refusal::ForeignDomain),
            ),
            ("auditor", "business", Some("infra"), Ok(())),
            ("biz", "business", None, Err(Refusal::Undeclared)),
            ("biz", "business", Some("hr"), Err(Refusal::Undeclared)),
            ("x", "hr", Some("hr"), Err(Refusal::Undeclared)),
        ];
        for (agent, own, item, want) in cases {
            assert_eq!(
                f.may_read(agent, own, *item),
                *want,
                "{agent} {own} {item:?}"
            );
        }
        assert_eq!(Refusal::ForeignDomain.tool_code().as_str(), "E-CONTEXT-001");
        assert_eq!(Refusal::ForeignDomain.item_code().as_str(), "E-CONTEXT-002");
        assert_eq!(Refusal::Undeclared.item_code().as_str(), "E-CONTEXT-003");
    }
}
