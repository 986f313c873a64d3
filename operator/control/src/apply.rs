//! `apply`: put a contract document in force the way `kubectl apply` does: draft, publish
//! (signed with a keyring key), approve as the approvers the caller holds, activate. Used by
//! `awooop apply`, `awooop project onboard` and the local seeding of `awooop up`.
//!
//! Idempotent and resumable: the document's canonical hash decides. A body equal to the active
//! revision changes nothing; a body equal to an earlier published revision re-activates that
//! revision (no new revision: publishing the same body twice would only add noise to the
//! immutable history); anything else is published as the next revision. A run interrupted
//! after publishing continues at approval on the next apply; a leftover draft with the same
//! body is reused instead of piling up.
//!
//! Contract files may name what they are in a small header, so a folder can be applied at once:
//!
//! ```text
//! # awooop: project=ewoooc kind=agent name=openclaw-biz
//! { "display_name": "OpenClaw", ... }
//! ```
//!
//! Lines starting with `#` before the JSON are comments; the one starting with `# awooop:` is
//! the header (`project`, `kind`, `name`; each optional). Without a header, a file name
//! `KIND.NAME.json` (or `KIND.json`) gives kind and name. A Project contract is always named
//! after its project (that is the one the platform reads).

use serde::Serialize;
use serde_json::Value;
use uuid::Uuid;

use awooop_contracts::{self as contracts, Contract, ContractKind};
use awooop_core::error::{Error, ErrorCode, Result};
use awooop_store::auth::Actor;
use awooop_store::tenancy::{self, ProjectId};

use crate::{ControlPlane, repo};

/// One contract document to apply, with where it came from (for messages).
#[derive(Debug, Clone)]
pub struct ContractDoc {
    pub source: String,
    /// The project the file names (header), if any.
    pub project: Option<String>,
    pub kind: ContractKind,
    pub name: String,
    pub body: Value,
}

/// What the header and file name of a contract file say, before flags fill the gaps.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Header {
    pub project: Option<String>,
    pub kind: Option<String>,
    pub name: Option<String>,
}

fn header_error(source: &str, msg: impl std::fmt::Display) -> Error {
    Error::new(ErrorCode::ApplyBadFile, format!("{source}: {msg}"))
}

/// Split a contract file into its header (leading `#` lines) and its JSON body. Pure.
pub fn parse_file(source: &str, text: &str) -> Result<(Header, Value)> {
    let mut header = Header::default();
    let mut body_start = 0;
    let mut seen_header = false;
    for line in text.split_inclusive('\n') {
        let t = line.trim();
        if t.is_empty() {
            body_start += line.len();
            continue;
        }
        let Some(comment) = t.strip_prefix('#') else {
            break;
        };
        body_start += line.len();
        let Some(fields) = comment.trim_start().strip_prefix("awooop:") else {
            continue;
        };
        if seen_header {
            return Err(header_error(
                source,
                "more than one `# awooop:` header line",
            ));
        }
        seen_header = true;
        for pair in fields.split_whitespace() {
            let (k, v) = pair.split_once('=').ok_or_else(|| {
                header_error(source, format!("header field `{pair}` is not key=value"))
            })?;
            let slot = match k {
                "project" => &mut header.project,
                "kind" => &mut header.kind,
                "name" => &mut header.name,
                _ => {
                    return Err(header_error(
                        source,
                        format!("unknown header field `{k}` (project, kind, name)"),
                    ));
                }
            };
            if slot.replace(v.to_string()).is_some() {
                return Err(header_error(source, format!("header names `{k}` twice")));
            }
        }
    }
    let body: Value = serde_json::from_str(&text[body_start..])
        .map_err(|e| header_error(source, format!("body is not valid JSON: {e}")))?;
    Ok((header, body))
}

/// Kind and name from a file name `KIND.NAME.json` / `KIND.json` (only when the first part is
/// a contract kind, so `notes.json` does not become one).
pub fn from_file_name(file_name: &str) -> (Option<String>, Option<String>) {
    let stem = file_name.strip_suffix(".json").unwrap_or(file_name);
    let (kind, name) = match stem.split_once('.') {
        Some((k, n)) => (k, Some(n.to_string())),
        None => (stem, None),
    };
    if ContractKind::parse(kind).is_ok() {
        (Some(kind.to_string()), name)
    } else {
        (None, None)
    }
}

/// Settle a file's project, kind and name from (in order) the header, the flags, the file name;
/// any two that disagree are an error, never a silent choice. Pure.
pub fn resolve(
    source: &str,
    file_name: &str,
    header: Header,
    flags: &Header,
    body: Value,
) -> Result<ContractDoc> {
    fn pick(
        source: &str,
        what: &str,
        a: &Option<String>,
        b: &Option<String>,
    ) -> Result<Option<String>> {
        match (a, b) {
            (Some(x), Some(y)) if x != y => Err(Error::new(
                ErrorCode::ApplyConflict,
                format!("{source}: the file says {what} `{x}` but `{y}` was asked for"),
            )),
            (Some(x), _) | (None, Some(x)) => Ok(Some(x.clone())),
            (None, None) => Ok(None),
        }
    }
    let (fn_kind, fn_name) = from_file_name(file_name);
    let project = pick(source, "project", &header.project, &flags.project)?;
    let kind = pick(source, "kind", &header.kind, &flags.kind)?
        .or(fn_kind)
        .ok_or_else(|| {
            header_error(
                source,
                "no kind: add `# awooop: kind=K name=N` or name the file KIND.NAME.json",
            )
        })?;
    let kind = ContractKind::parse(&kind).map_err(|e| header_error(source, e.message))?;
    let mut name = pick(source, "name", &header.name, &flags.name)?;
    if name.is_none() && header.kind.is_none() {
        name = fn_name;
    }
    // The platform reads the Project contract named after the project only: another name
    // would be accepted and then silently ignored (an empty manifests folder, no ACL).
    if kind == ContractKind::Project {
        match (&name, &project) {
            (Some(n), Some(p)) if n != p => {
                return Err(Error::new(
                    ErrorCode::ApplyConflict,
                    format!(
                        "{source}: a Project contract must be named after its project (`{p}`), not `{n}`"
                    ),
                ));
            }
            (None, Some(p)) => name = Some(p.clone()),
            _ => {}
        }
    }
    let name = name.ok_or_else(|| {
        header_error(
            source,
            "no name: add `# awooop: name=N` or name the file KIND.NAME.json",
        )
    })?;
    if let Some(p) = &project {
        ProjectId::parse(p).map_err(|e| header_error(source, e.message))?;
    }
    Ok(ContractDoc {
        source: source.to_string(),
        project,
        kind,
        name,
        body,
    })
}

/// The order a folder is applied in: the Project contract first (it sets the approval policy
/// and ACL the others are approved under and declares the context domains), the agent before
/// the MCP Gateway contract (whose activation checks each grant against the domain of the
/// agents active then: a gateway activated first would be checked against no agent at all),
/// the channel (which starts runs of agents) last.
pub fn apply_order(kind: ContractKind) -> u8 {
    match kind {
        ContractKind::Project => 0,
        ContractKind::Runtime => 1,
        ContractKind::Policy => 2,
        ContractKind::Agent => 3,
        ContractKind::McpGateway => 4,
        ContractKind::Channel => 5,
    }
}

/// What an apply must do, decided from hashes alone. Pure.
#[derive(Debug, Clone, PartialEq)]
pub enum Plan {
    /// The active revision has this body.
    Unchanged { revision_id: Uuid, revision: i32 },
    /// A published revision has this body: approve and activate it (resumption or rollback).
    Existing { revision_id: Uuid, revision: i32 },
    /// Publish a new revision.
    Publish,
}

pub fn plan(
    active: Option<(Uuid, i32, &str)>,
    published: &[(Uuid, i32, &str)],
    hash: &str,
) -> Plan {
    if let Some((revision_id, revision, h)) = active
        && h == hash
    {
        return Plan::Unchanged {
            revision_id,
            revision,
        };
    }
    match published
        .iter()
        .filter(|(_, _, h)| *h == hash)
        .max_by_key(|(_, n, _)| *n)
    {
        Some((revision_id, revision, _)) => Plan::Existing {
            revision_id: *revision_id,
            revision: *revision,
        },
        None => Plan::Publish,
    }
}

/// Whose approvals an apply may give.
#[derive(Debug, Clone)]
pub enum Approvals {
    /// None: publish and stop; approvers approve elsewhere.
    None,
    /// These principals (`--approve-as a,b`).
    As(Vec<String>),
    /// The local platform's own (`awooop up` on this machine, whose keyring the caller holds):
    /// the approvers the active Project contract lists, else `local-approver-N`.
    Local,
}

#[derive(Debug, Clone)]
pub struct ApplyOptions {
    /// Principal recorded as author, publisher and activator.
    pub actor: String,
    /// Keyring key publishes are signed with.
    pub key_id: String,
    pub approvals: Approvals,
}

/// What happened to one contract.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Same body as the active revision: nothing written.
    Unchanged,
    /// A new revision was published and activated.
    Activated,
    /// An earlier published revision with this body was activated again (no new revision).
    Reactivated,
    /// Published (or already published) but not active: approvals are missing.
    AwaitingApprovals,
}

#[derive(Debug, Clone, Serialize)]
pub struct Applied {
    pub source: String,
    pub project: String,
    pub kind: String,
    pub name: String,
    pub action: Action,
    pub revision_id: Uuid,
    pub revision: i32,
    /// The revision active before, when this apply changed it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub previous_revision: Option<i32>,
    pub approvals: usize,
    pub required: usize,
    pub body_hash: String,
}

impl Applied {
    /// `kind/name@revision`: the `-o name` form.
    pub fn reference(&self) -> String {
        format!("{}/{}@{}", self.kind, self.name, self.revision)
    }

    /// One human line: what changed.
    pub fn summary(&self) -> String {
        let what = format!("{}/{}/{}", self.project, self.kind, self.name);
        match self.action {
            Action::Unchanged => format!("{what}: unchanged (revision {})", self.revision),
            Action::Activated => match self.previous_revision {
                Some(p) => format!(
                    "{what}: revision {} published and activated (was {p})",
                    self.revision
                ),
                None => format!("{what}: revision {} published and activated", self.revision),
            },
            Action::Reactivated => format!(
                "{what}: revision {} activated again (same body; was {})",
                self.revision,
                self.previous_revision
                    .map_or_else(|| "none".to_string(), |p| p.to_string())
            ),
            Action::AwaitingApprovals => format!(
                "{what}: revision {} published, {} of {} approvals: approve it, then `awooop contract activate --project {} --revision {}`",
                self.revision, self.approvals, self.required, self.project, self.revision_id
            ),
        }
    }
}

impl ControlPlane {
    /// Apply one document in the current tenant scope (see the module docs).
    pub async fn apply(&self, doc: &ContractDoc, opts: &ApplyOptions) -> Result<Applied> {
        let project = tenancy::require()?;
        if let Some(p) = &doc.project
            && p != project.as_str()
        {
            return Err(Error::new(
                ErrorCode::ApplyConflict,
                format!(
                    "{}: the file names project `{p}`, not `{project}`",
                    doc.source
                ),
            ));
        }
        let validated = contracts::validate_and_hash(doc.kind, &doc.body)?;
        let hash = validated.body_hash.clone();
        let (active, published, drafts, required) = {
            let mut tx = self.db.tenant().await?;
            let p = self.require_active_project(&mut tx).await?;
            let active = repo::active(&mut tx, doc.kind, &doc.name).await?;
            let published = repo::revisions(&mut tx, doc.kind, &doc.name).await?;
            let drafts = repo::drafts(&mut tx).await?;
            tx.commit().await?;
            (active, published, drafts, p.required_approvals as usize)
        };
        let refs: Vec<(Uuid, i32, &str)> = published
            .iter()
            .map(|r| (r.revision_id, r.revision, r.body_hash.as_str()))
            .collect();
        let decided = plan(
            active
                .as_ref()
                .map(|a| (a.revision_id, a.revision, a.body_hash.as_str())),
            &refs,
            &hash,
        );
        let base = |action, revision_id, revision, approvals| Applied {
            source: doc.source.clone(),
            project: project.to_string(),
            kind: doc.kind.as_str().to_string(),
            name: doc.name.clone(),
            action,
            revision_id,
            revision,
            previous_revision: None,
            approvals,
            required,
            body_hash: hash.clone(),
        };
        let actor = Actor::cli(&opts.actor);
        let (revision_id, revision, fresh) = match decided {
            Plan::Unchanged {
                revision_id,
                revision,
            } => return Ok(base(Action::Unchanged, revision_id, revision, 0)),
            Plan::Existing {
                revision_id,
                revision,
            } => (revision_id, revision, false),
            Plan::Publish => {
                // Resume: a draft of this contract with the same body (an apply that stopped
                // before publishing) is published instead of adding another.
                let draft_id = match drafts.iter().find(|d| {
                    d.kind == doc.kind.as_str()
                        && d.name == doc.name
                        && contracts::canonical::body_hash(&d.body) == hash
                }) {
                    Some(d) => d.draft_id,
                    None => {
                        self.create_draft(&actor, doc.kind, &doc.name, doc.body.clone())
                            .await?
                            .draft
                            .draft_id
                    }
                };
                let req = self.sign_draft(draft_id, &opts.key_id).await?;
                let rev = self.publish(&actor, draft_id, req).await?;
                (rev.revision_id, rev.revision, true)
            }
        };
        let approvers = match &opts.approvals {
            Approvals::None => vec![],
            Approvals::As(names) => names.clone(),
            Approvals::Local => self.local_approvers(required).await?,
        };
        let mut approvals = 0;
        for name in &approvers {
            match self.approve(&Actor::cli(name), revision_id).await {
                Ok(s) => approvals = s.approvals,
                // Resuming: this approver's open approval from an earlier apply still counts.
                Err(e) if e.code == ErrorCode::ContractDuplicateApproval => {}
                Err(e) => return Err(e),
            }
        }
        match self.activate(&actor, revision_id).await {
            Ok(a) => {
                let mut out = base(
                    if fresh {
                        Action::Activated
                    } else {
                        Action::Reactivated
                    },
                    revision_id,
                    revision,
                    a.approvers.len(),
                );
                out.previous_revision = active.map(|a| a.revision);
                tracing::info!(project = %project, kind = %doc.kind, name = %doc.name, revision, "applied");
                Ok(out)
            }
            Err(e) if e.code == ErrorCode::ContractInsufficientApprovals => {
                let have = e
                    .details
                    .as_ref()
                    .and_then(|d| d["approvals"].as_u64())
                    .map_or(approvals, |n| n as usize);
                Ok(base(Action::AwaitingApprovals, revision_id, revision, have))
            }
            Err(e) => Err(e),
        }
    }

    /// The approvers of local mode: the first `required` names of the active Project
    /// contract's approver ACL, else generated names (any principal may approve without an
    /// ACL).
    async fn local_approvers(&self, required: usize) -> Result<Vec<String>> {
        let project = tenancy::require()?;
        let acl = match self.active(ContractKind::Project, project.as_str()).await {
            Ok(a) => match contracts::validate(ContractKind::Project, &a.body) {
                Ok(Contract::Project(pc)) => pc.acl.approvers.into_iter().map(|n| n.0).collect(),
                _ => vec![],
            },
            Err(e) if e.code == ErrorCode::ContractNotFound => vec![],
            Err(e) => return Err(e),
        };
        Ok(if acl.is_empty() {
            (1..=required.max(1))
                .map(|i| format!("local-approver-{i}"))
                .collect()
        } else {
            acl.into_iter().take(required.max(1)).collect()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn header_lines_and_comments_are_split_from_the_body() {
        let (h, body) = parse_file(
            "f",
            "# a comment\n# awooop: project=ewoooc kind=agent name=openclaw-biz\n\n{\"a\": 1}\n",
        )
        .unwrap();
        assert_eq!(
            h,
            Header {
                project: Some("ewoooc".into()),
                kind: Some("agent".into()),
                name: Some("openclaw-biz".into())
            }
        );
        assert_eq!(body, json!({"a": 1}));
        let (h, body) = parse_file("f", "{\"b\": true}").unwrap();
        assert_eq!(h, Header::default());
        assert_eq!(body, json!({"b": true}));
    }

    #[test]
    fn malformed_headers_are_refused_with_a_code() {
        for text in [
            "# awooop: kind\n{}",
            "# awooop: colour=red\n{}",
            "# awooop: kind=agent kind=policy\n{}",
            "# awooop: kind=agent\n# awooop: name=x\n{}",
            "# awooop: kind=agent\nnot json",
        ] {
            let e = parse_file("f", text).unwrap_err();
            assert_eq!(e.code, ErrorCode::ApplyBadFile, "{text}");
        }
    }

    #[test]
    fn kind_and_name_come_from_header_flags_or_file_name_and_must_agree() {
        let none = Header::default();
        let d = resolve("f", "agent.echo.json", none.clone(), &none, json!({})).unwrap();
        assert_eq!((d.kind, d.name.as_str()), (ContractKind::Agent, "echo"));
        assert_eq!(from_file_name("notes.json"), (None, None));
        let e = resolve("f", "notes.json", none.clone(), &none, json!({})).unwrap_err();
        assert_eq!(e.code, ErrorCode::ApplyBadFile);
        let header = Header {
            project: Some("a".into()),
            ..Default::default()
        };
        let flags = Header {
            project: Some("b".into()),
            ..Default::default()
        };
        let e = resolve("f", "agent.x.json", header, &flags, json!({})).unwrap_err();
        assert_eq!(e.code, ErrorCode::ApplyConflict);
        // A Project contract takes its project's name, and no other.
        let h = Header {
            project: Some("acme".into()),
            kind: Some("project".into()),
            name: None,
        };
        let d = resolve("f", "p.json", h, &none, json!({})).unwrap();
        assert_eq!(d.name, "acme");
        let h = Header {
            project: Some("acme".into()),
            kind: Some("project".into()),
            name: Some("default".into()),
        };
        let e = resolve("f", "p.json", h, &none, json!({})).unwrap_err();
        assert_eq!(e.code, ErrorCode::ApplyConflict);
    }

    #[test]
    fn the_plan_follows_the_body_hash() {
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        let published = [(a, 1, "h1"), (b, 2, "h2")];
        assert_eq!(
            plan(Some((b, 2, "h2")), &published, "h2"),
            Plan::Unchanged {
                revision_id: b,
                revision: 2
            }
        );
        assert_eq!(
            plan(Some((b, 2, "h2")), &published, "h1"),
            Plan::Existing {
                revision_id: a,
                revision: 1
            }
        );
        assert_eq!(
            plan(None, &published, "h2"),
            Plan::Existing {
                revision_id: b,
                revision: 2
            }
        );
        assert_eq!(plan(Some((b, 2, "h2")), &published, "h3"), Plan::Publish);
        assert_eq!(plan(None, &[], "h3"), Plan::Publish);
    }

    #[test]
    fn project_contracts_go_first_agents_before_their_gateway_and_channels_last() {
        let mut kinds = ContractKind::ALL.to_vec();
        kinds.sort_by_key(|k| apply_order(*k));
        assert_eq!(kinds.first(), Some(&ContractKind::Project));
        assert_eq!(kinds.last(), Some(&ContractKind::Channel));
        assert!(apply_order(ContractKind::Agent) < apply_order(ContractKind::McpGateway));
    }
}
